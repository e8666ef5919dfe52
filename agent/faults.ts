/**
 * Fault switches for tests, off unless FERRY_FAULTS names them. A switch never touches guest memory on the side
 * that owns the VM: it damages what travels, to prove that verification catches it.
 *
 *   FERRY_FAULTS=corrupt-page:1023     the destination flips one byte of page 1023 the first time it arrives,
 *                                      before checking it, as if the wire had damaged it
 */
import { ErrorCode, FerryError } from '../shared/errors.js';

export interface Faults {
  /** Page number to damage on arrival, once. */
  corruptPage: number | undefined;
}

export function parseFaults(text: string | undefined): Faults {
  const faults: Faults = { corruptPage: undefined };
  for (const item of (text ?? '').split(',').map((part) => part.trim()).filter(Boolean)) {
    const [name, value] = item.split(':');
    if (name === 'corrupt-page' && value !== undefined && /^\d+$/.test(value)) {
      faults.corruptPage = Number(value);
    } else {
      throw new FerryError(ErrorCode.BAD_INPUT, `unknown fault "${item}" in FERRY_FAULTS`, 'known faults: corrupt-page:<page>');
    }
  }
  return faults;
}

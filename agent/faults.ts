/**
 * Fault switches for tests, off unless FERRY_FAULTS names them (comma-separated). A switch never touches guest
 * memory on the side that owns the VM: it damages what travels, or stops the agent, at a chosen point.
 *
 *   corrupt-page:N           the destination flips one byte of page N the first time it arrives, before checking it,
 *                            as if the wire had damaged it
 *   ACTION@POINT             at POINT, the agent that reaches it (source or destination) does ACTION, once:
 *     ACTION  crash          exit at once (SIGKILL itself: no cleanup, like a host that dies)
 *             drop           close the page stream
 *             stall          stop working on the migration (it hangs; timeouts must notice)
 *             delay          hold the migration there for 3 s, then go on (time for a test to kill another party)
 *     POINT   round-N        source: round N's pages are sent, before the round's sync
 *             stop-and-copy  source: the vCPU is paused, before the last pages are sent
 *             after-verify   destination: its verification reply has been sent
 *             after-commit   source: it has committed, before asking for activation
 *             before-activation  destination: asked to activate, before it resumes the vCPU
 *             cold-receiving     cold migration, destination: the first chunk has arrived
 *             cold-registered    cold migration, destination: the VM is registered, before it says so
 *             cold-sent          cold migration, source: the destination registered the VM, before deleting here
 *             image-finishing    image transfer, receiver: image.finish began, before the disk is sized and checked
 *             storage-copying    storage move, or --copy-storage's source: the disk copy has begun (its first
 *                                progress; crash and drop)
 *             disk-receiving     --copy-storage, destination: the first disk write has arrived
 *             postcopy-switched  post-copy, source: the switch was answered, before the push; destination: the
 *                                switch's reply has been sent
 *   full-disk:N              a disk copy's target (storage move) fails with ENOSPC once N bytes are written to it
 *   cut-stream:N             the destination closes a migration's page stream of its own (shared/page-stream.ts) once
 *                            N bytes of page frames have come on it, as a link that fails under it would; its /peer
 *                            WebSocket stays up
 *   cut-postcopy:N           the destination closes a post-copy's page stream and peer WebSocket once N pages have
 *                            arrived after the switch, as a link that breaks would: once in every post-copy it
 *                            receives (the resume then finishes it)
 *
 *   e.g. FERRY_FAULTS=crash@after-commit   or   FERRY_FAULTS=stall@round-2,corrupt-page:7
 */
import { ErrorCode, FerryError } from '../shared/errors.js';
import type { Logger } from '../shared/log.js';

export const faultPoints = ['stop-and-copy', 'after-verify', 'after-commit', 'before-activation', 'cold-receiving', 'cold-registered', 'cold-sent', 'image-finishing', 'storage-copying', 'disk-receiving', 'postcopy-switched'] as const;
export type FaultPoint = (typeof faultPoints)[number] | `round-${number}`;
export type FaultAction = 'crash' | 'drop' | 'stall' | 'delay';

/** How long `delay` holds a migration at its point. */
export const FAULT_DELAY_MS = 3000;

export interface Faults {
  /** Page number to damage on arrival, once. */
  corruptPage: number | undefined;
  /** Bytes a disk copy's target takes before it fails as a full disk would (ENOSPC). */
  fullDiskAfterBytes: number | undefined;
  /** Bytes of page frames after which the destination cuts the page stream, once. */
  cutStreamAfterBytes: number | undefined;
  /** Pages a post-copy's destination takes after the switch before it cuts the link, once a migration. */
  cutPostcopyAfterPages: number | undefined;
  /** Armed actions by point, each fired once. */
  at: Map<string, FaultAction>;
}

export function parseFaults(text: string | undefined): Faults {
  const faults: Faults = { corruptPage: undefined, fullDiskAfterBytes: undefined, cutStreamAfterBytes: undefined, cutPostcopyAfterPages: undefined, at: new Map() };
  for (const item of (text ?? '').split(',').map((part) => part.trim()).filter(Boolean)) {
    const corrupt = /^corrupt-page:(\d+)$/.exec(item);
    const full = /^full-disk:(\d+)$/.exec(item);
    const cut = /^cut-stream:(\d+)$/.exec(item);
    const cutPostcopy = /^cut-postcopy:(\d+)$/.exec(item);
    const action = /^(crash|drop|stall|delay)@(round-\d+|stop-and-copy|after-verify|after-commit|before-activation|cold-receiving|cold-registered|cold-sent|image-finishing|storage-copying|disk-receiving|postcopy-switched)$/.exec(item);
    if (corrupt) faults.corruptPage = Number(corrupt[1]);
    else if (full) faults.fullDiskAfterBytes = Number(full[1]);
    else if (cut) faults.cutStreamAfterBytes = Number(cut[1]);
    else if (cutPostcopy) faults.cutPostcopyAfterPages = Number(cutPostcopy[1]);
    else if (action) faults.at.set(action[2]!, action[1] as FaultAction);
    else {
      throw new FerryError(ErrorCode.BAD_INPUT, `unknown fault "${item}" in FERRY_FAULTS`, 'known: corrupt-page:N, full-disk:N, cut-stream:N, cut-postcopy:N, and crash|drop|stall|delay @ round-N|stop-and-copy|after-verify|after-commit|before-activation|cold-receiving|cold-registered|cold-sent|image-finishing|storage-copying|disk-receiving|postcopy-switched');
    }
  }
  return faults;
}

/**
 * Called by the migration code at each point. Resolves at once unless a fault is armed there: then it crashes the
 * process, closes the stream (`drop`) and resolves, or never resolves (`stall`).
 */
export async function faultPoint(faults: Faults | undefined, point: FaultPoint, log: Logger, drop: () => void): Promise<void> {
  const action = faults?.at.get(point);
  if (!action) return;
  faults!.at.delete(point);
  log.warn(`fault: ${action} at ${point}`);
  switch (action) {
    case 'crash':
      process.kill(process.pid, 'SIGKILL');
      return new Promise<void>(() => undefined);
    case 'drop':
      drop();
      return;
    case 'stall':
      return new Promise<void>(() => undefined);
    case 'delay':
      return new Promise<void>((resolve) => setTimeout(resolve, FAULT_DELAY_MS));
    default: {
      const unreachable: never = action;
      return unreachable;
    }
  }
}

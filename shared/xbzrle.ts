/**
 * XBZRLE (QEMU's "XOR-based zero run-length encoding", migration/xbzrle.c): a page sent again travels as the
 * difference from the copy sent before, when that difference is small.
 *
 * The delta is new XOR old. Its zero runs (bytes the page kept) are skipped; its non-zero runs carry the new page's
 * bytes there, so that the decoder copies them over the old copy without XOR-ing anything:
 *
 *   encoding = (zrun nzrun byte x nzrun)*        the last zero run, up to the page's end, is left out
 *   zrun     = ULEB128 length, 0..4095: bytes unchanged; 0 only in the first pair (the page starts changed)
 *   nzrun    = ULEB128 length, 1..4096: bytes changed, followed by that many bytes of the new page
 *
 * A ULEB128 here is one or two bytes (7 bits each, low first; the high bit of the first says a second follows, the
 * second's must be clear): at most 16,383, enough for a page. The empty encoding says the page did not change.
 *
 * What the decoder refuses, before it writes a byte of the page (a PROTOCOL error, as any malformed frame): a length
 * that needs a third byte, a length cut off by the end of the encoding, a zero run of 0 after the first pair, an
 * empty non-zero run, a run that ends past the page, and literal bytes past the end of the encoding. It checks the
 * whole encoding first and applies it second, so a refused delta leaves the page as it was.
 */
import { PAGE_SIZE } from './constants.js';
import { ErrorCode, FerryError } from './errors.js';

/**
 * A delta longer than this goes as the whole page instead. QEMU's limit is the page itself; three quarters of it
 * keeps a delta that saves little from costing the destination a decode for it.
 */
export const XBZRLE_MAX_DELTA_BYTES = (PAGE_SIZE * 3) / 4;
/** A ULEB128 length of ours is at most two bytes. */
const MAX_SMALL_ULEB = 0x3fff;

function putLength(out: Uint8Array, at: number, length: number): number {
  if (length < 0x80) {
    out[at] = length;
    return at + 1;
  }
  out[at] = (length & 0x7f) | 0x80;
  out[at + 1] = length >>> 7;
  return at + 2;
}

/**
 * Encodes `current` against `previous` (both PAGE_SIZE bytes) into `out` and returns the encoding's length, or -1
 * when it would be longer than `limit` bytes (`out` must hold at least `limit` bytes; its bytes past the returned
 * length, or all of them for -1, are scratch). 0: the page did not change.
 */
export function encodeDelta(previous: Uint8Array, current: Uint8Array, out: Uint8Array, limit = XBZRLE_MAX_DELTA_BYTES): number {
  // Words where both pages are 4-aligned (guest memory and the cache always are): the zero runs are most of a page.
  const aligned = previous.byteOffset % 4 === 0 && current.byteOffset % 4 === 0;
  const oldWords = aligned ? new Uint32Array(previous.buffer, previous.byteOffset, PAGE_SIZE / 4) : undefined;
  const newWords = aligned ? new Uint32Array(current.buffer, current.byteOffset, PAGE_SIZE / 4) : undefined;
  let at = 0;
  let i = 0;
  while (i < PAGE_SIZE) {
    const zeroStart = i;
    if (oldWords && newWords) {
      while (i % 4 !== 0 && previous[i] === current[i]) i += 1;
      if (i % 4 === 0) {
        while (i < PAGE_SIZE && oldWords[i >>> 2] === newWords[i >>> 2]) i += 4;
      }
    }
    while (i < PAGE_SIZE && previous[i] === current[i]) i += 1;
    if (i === PAGE_SIZE) return at; // the last zero run is left out (all of the page: 0, unchanged)
    const changedStart = i;
    // Give up as soon as the encoding cannot fit: an all-changed page costs no more than `limit` bytes of scanning.
    const room = limit - at - lengthBytes(changedStart - zeroStart);
    while (i < PAGE_SIZE && previous[i] !== current[i]) {
      i += 1;
      if (lengthBytes(i - changedStart) + i - changedStart > room) return -1;
    }
    const changed = i - changedStart;
    at = putLength(out, at, changedStart - zeroStart);
    at = putLength(out, at, changed);
    out.set(current.subarray(changedStart, i), at);
    at += changed;
  }
  return at;
}

const lengthBytes = (length: number): number => (length < 0x80 ? 1 : 2);

function bad(why: string): never {
  throw new FerryError(ErrorCode.PROTOCOL, `bad XBZRLE delta: ${why}`, 'the peer is not a compatible ferry-agent');
}

/**
 * Reads a length at `at` of `encoding` into `into[0]` and returns where the next field starts; refuses a length cut
 * off by the encoding's end or one that needs more than two bytes.
 */
function readLength(encoding: Uint8Array, at: number, into: number[]): number {
  if (at >= encoding.length) bad(`a run length is cut off at byte ${at} of ${encoding.length}`);
  const first = encoding[at]!;
  if ((first & 0x80) === 0) {
    into[0] = first;
    return at + 1;
  }
  if (at + 1 >= encoding.length) bad(`a two-byte run length is cut off at byte ${at} of ${encoding.length}`);
  const second = encoding[at + 1]!;
  if ((second & 0x80) !== 0) bad(`a run length at byte ${at} needs more than two bytes (at most ${MAX_SMALL_ULEB})`);
  into[0] = (first & 0x7f) | (second << 7);
  return at + 2;
}

/**
 * Walks the encoding, checking every field; calls `run(pageOffset, encodingOffset, length)` for each non-zero run.
 * Throws a PROTOCOL error for anything malformed (see the top of this file).
 */
function walk(encoding: Uint8Array, run?: (pageAt: number, from: number, length: number) => void): void {
  const length = [0];
  let at = 0;
  let page = 0;
  while (at < encoding.length) {
    at = readLength(encoding, at, length);
    const zeros = length[0]!;
    if (zeros === 0 && at > 1) bad(`an empty zero run after the first pair, at byte ${at - 1}`);
    page += zeros;
    if (page >= PAGE_SIZE) bad(`a zero run reaches byte ${page} of a ${PAGE_SIZE}-byte page, and a changed run must follow it`);
    at = readLength(encoding, at, length);
    const changed = length[0]!;
    if (changed === 0) bad(`an empty changed run at page byte ${page}`);
    if (page + changed > PAGE_SIZE) bad(`a changed run of ${changed} bytes at page byte ${page} ends past the ${PAGE_SIZE}-byte page`);
    if (at + changed > encoding.length) bad(`a changed run of ${changed} bytes at byte ${at} runs past the ${encoding.length}-byte delta`);
    run?.(page, at, changed);
    page += changed;
    at += changed;
  }
}

/** Checks `encoding` and throws a PROTOCOL error if it is malformed (see the top of this file). */
export function checkDelta(encoding: Uint8Array): void {
  walk(encoding);
}

/**
 * Applies `encoding` to `page` (PAGE_SIZE bytes, holding the copy the encoding was made against) in place. The whole
 * encoding is checked first: a malformed one throws a PROTOCOL error and leaves `page` untouched.
 */
export function applyDelta(encoding: Uint8Array, page: Uint8Array): void {
  if (page.length !== PAGE_SIZE) throw new RangeError(`a delta applies to a ${PAGE_SIZE}-byte page, not ${page.length} bytes`);
  walk(encoding);
  walk(encoding, (pageAt, from, length) => page.set(encoding.subarray(from, from + length), pageAt));
}

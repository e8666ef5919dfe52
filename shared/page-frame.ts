/**
 * Page data on the peer connection: a small binary header message, then one raw data message.
 *
 * Page bytes never go through msgpack (it packs 1 MiB at only 1.8 GB/s here) and are never concatenated with
 * their header: the data message is a view of guest memory, or of a staging buffer, sent as is.
 *
 * Header message (little-endian), 16 + 12 x count + 2 x deltas bytes:
 *
 *   offset        size         field
 *   ------------  -----------  ----------------------------------------------------------------
 *   0             1            magic 0xC1: a byte MessagePack never uses, so a header is never
 *                              mistaken for a control message (those are MessagePack maps)
 *   1             1            frame version (3)
 *   2             2            flags: bit 0 = sent with the vCPU paused (stop-and-copy, and all of
 *                              post-copy); bit 1 = sent after a post-copy switch (the destination takes
 *                              only the pages it still lacks; never delta pages)
 *   4             4            round (1 = the full first pass)
 *   8             4            count: pages in the data message that follows, 1..PAGES_PER_FRAME
 *   12            4            deltas: pages of the frame sent as XBZRLE deltas (shared/xbzrle.ts), 0..count
 *   16            8 x count    XXH3-64 of each page as it is once installed (DESIGN.md "Verified commit"), a
 *                              little-endian uint64
 *   16+8c         4 x count    each page's entry: bits 0-29 its page number; bit 30 set for a delta page;
 *                              bit 31 set for a zero page (never both)
 *   16+12c        2 x deltas   each delta page's encoded length in bytes, in header order: 0..XBZRLE_MAX_DELTA_BYTES
 *
 * Data message: the pages whose entries are not zero pages, in header order: PAGE_SIZE bytes for a whole page, its
 * encoded length for a delta page. A zero page (all 4096 bytes 0) travels as its flag alone, as QEMU sends them: it
 * has no bytes in the data message, and its hash field holds the hash of a zero page (page-hash.ts
 * `ZERO_PAGE_HASH`). A frame of zero pages only has no data message at all.
 *
 * A delta page (`ferry migrate --compress xbzrle`) is the difference between the page now and the copy of it the
 * source sent last, which is exactly what the destination holds: in pre-copy the destination's memory changes only
 * by what arrives. Its hash is still that of the whole new page, checked once the delta is applied.
 */
import { PAGE_SIZE, PAGES_PER_FRAME } from './constants.js';
import { ErrorCode, FerryError } from './errors.js';
import { XBZRLE_MAX_DELTA_BYTES } from './xbzrle.js';

export const PAGE_HEADER_MAGIC = 0xc1;
export const PAGE_FRAME_VERSION = 3;
export const PAGE_FLAG_PAUSED = 1;
export const PAGE_FLAG_POSTCOPY = 2;
/** Bit 31 of a page entry: the page is all zeros and has no bytes in the data message. */
export const ZERO_PAGE_BIT = 0x8000_0000;
/** Bit 30 of a page entry: the page's bytes in the data message are an XBZRLE delta (shared/xbzrle.ts). */
export const DELTA_PAGE_BIT = 0x4000_0000;
/** Page numbers fit in 30 bits: a guest of at most 4 GiB has 2^20 pages. */
const PAGE_NUMBER_MASK = 0x3fff_ffff;
const FIXED_BYTES = 16;

export interface PageHeader {
  round: number;
  flags: number;
  pages: Uint32Array;
  /** 1 where pages[i] is a zero page (no bytes in the data message), else 0. */
  zero: Uint8Array;
  /** Pages that have bytes in the data message: pages.length less the zero pages. */
  dataPages: number;
  /** 1 where pages[i] is a delta page, else 0. */
  delta: Uint8Array;
  /** The encoded length of page i's delta when it is a delta page, else 0. */
  deltaBytes: Uint16Array;
  /** Delta pages in the frame. */
  deltaPages: number;
  /** Bytes of the data message: PAGE_SIZE for each whole page, the encoded length for each delta page. */
  dataBytes: number;
  /** The XXH3-64 of page i as two words, low then high: words 2i and 2i + 1 (page-hash.ts). */
  hashes: Uint32Array;
}

export function pageHeaderBytes(count: number, deltaPages = 0): number {
  return FIXED_BYTES + 12 * count + 2 * deltaPages;
}

/**
 * Writes a header for `count` pages into `target` (which must hold pageHeaderBytes(count, deltaLengths.length)) and
 * returns the view. `entries` are page numbers, a zero page's with ZERO_PAGE_BIT set, a delta page's with
 * DELTA_PAGE_BIT; `deltaLengths` the delta pages' encoded lengths, in header order (one for each DELTA_PAGE_BIT).
 */
export function encodePageHeader(
  target: Buffer,
  round: number,
  flags: number,
  entries: ArrayLike<number>,
  hashes: Uint32Array,
  count: number,
  deltaLengths: ArrayLike<number> = [],
): Buffer {
  const deltaPages = deltaLengths.length;
  const header = target.subarray(0, pageHeaderBytes(count, deltaPages));
  header.writeUInt8(PAGE_HEADER_MAGIC, 0);
  header.writeUInt8(PAGE_FRAME_VERSION, 1);
  header.writeUInt16LE(flags, 2);
  header.writeUInt32LE(round, 4);
  header.writeUInt32LE(count, 8);
  header.writeUInt32LE(deltaPages, 12);
  const lengthsAt = FIXED_BYTES + 12 * count;
  for (let d = 0; d < deltaPages; d++) header.writeUInt16LE(deltaLengths[d]!, lengthsAt + 2 * d);
  const pagesAt = FIXED_BYTES + 8 * count;
  for (let i = 0; i < count; i++) {
    header.writeUInt32LE(hashes[2 * i]!, FIXED_BYTES + 8 * i);
    header.writeUInt32LE(hashes[2 * i + 1]!, FIXED_BYTES + 8 * i + 4);
    header.writeUInt32LE(entries[i]!, pagesAt + 4 * i);
  }
  return header;
}

export function isPageHeader(frame: Buffer): boolean {
  return frame.length > 0 && frame[0] === PAGE_HEADER_MAGIC;
}

/** The size of a header's fixed part: enough to know its length (`headerLength`). */
export const PAGE_HEADER_FIXED_BYTES = FIXED_BYTES;

function bad(why: string): never {
  throw new FerryError(ErrorCode.PROTOCOL, `bad page header: ${why}`, 'the peer is not a compatible ferry-agent');
}

/**
 * Checks a header's fixed part (its first PAGE_HEADER_FIXED_BYTES: magic, version, count, deltas) and returns the
 * whole header's length, so that a reader of a byte stream knows how much to read before it decodes it.
 */
export function headerLength(fixed: Buffer): number {
  if (fixed.length < FIXED_BYTES) bad(`${fixed.length} bytes is shorter than the ${FIXED_BYTES}-byte header`);
  if (fixed[0] !== PAGE_HEADER_MAGIC) bad(`wrong magic byte ${fixed[0]}: not a version ${PAGE_FRAME_VERSION} page header`);
  if (fixed[1] !== PAGE_FRAME_VERSION) bad(`frame version ${fixed[1]} (this agent speaks ${PAGE_FRAME_VERSION}): not a version ${PAGE_FRAME_VERSION} page header`);
  const count = fixed.readUInt32LE(8);
  if (count < 1 || count > PAGES_PER_FRAME) bad(`page count ${count} is outside 1..${PAGES_PER_FRAME}`);
  const deltaPages = fixed.readUInt32LE(12);
  if (deltaPages > count) bad(`${deltaPages} delta pages in a frame of ${count}`);
  return pageHeaderBytes(count, deltaPages);
}

/**
 * Decodes and checks a header: right magic and version, a count in range, page numbers inside the guest, ascending,
 * as many delta entries as the fixed part announced and each delta's length in range.
 */
export function decodePageHeader(frame: Buffer, pageCount: number): PageHeader {
  const length = headerLength(frame);
  const count = frame.readUInt32LE(8);
  const deltaPages = frame.readUInt32LE(12);
  if (frame.length !== length) bad(`${frame.length} bytes for ${count} pages (${deltaPages} of them deltas), expected ${length}`);
  const pages = new Uint32Array(count);
  const zero = new Uint8Array(count);
  const delta = new Uint8Array(count);
  const deltaBytes = new Uint16Array(count);
  const hashes = new Uint32Array(2 * count);
  const pagesAt = FIXED_BYTES + 8 * count;
  const lengthsAt = FIXED_BYTES + 12 * count;
  let zeroPages = 0;
  let deltasSeen = 0;
  let dataBytes = 0;
  for (let i = 0; i < count; i++) {
    const entry = frame.readUInt32LE(pagesAt + 4 * i);
    const page = entry & PAGE_NUMBER_MASK;
    if (page >= pageCount) bad(`page ${page} is outside the guest's ${pageCount} pages`);
    // Ascending, each once: the receiver takes a run of data pages by its first and last page alone.
    if (i > 0 && page <= pages[i - 1]!) bad(`page ${page} follows page ${pages[i - 1]}: page numbers must ascend, each once`);
    pages[i] = page;
    if (entry & ZERO_PAGE_BIT) {
      if (entry & DELTA_PAGE_BIT) bad(`page ${page} is marked both a zero page and a delta`);
      zero[i] = 1;
      zeroPages += 1;
    } else if (entry & DELTA_PAGE_BIT) {
      if (deltasSeen === deltaPages) bad(`more delta pages than the ${deltaPages} the header announced`);
      const bytes = frame.readUInt16LE(lengthsAt + 2 * deltasSeen);
      if (bytes > XBZRLE_MAX_DELTA_BYTES) bad(`page ${page}'s delta is ${bytes} bytes, more than the ${XBZRLE_MAX_DELTA_BYTES} a delta may take`);
      delta[i] = 1;
      deltaBytes[i] = bytes;
      deltasSeen += 1;
      dataBytes += bytes;
    } else {
      dataBytes += PAGE_SIZE;
    }
    hashes[2 * i] = frame.readUInt32LE(FIXED_BYTES + 8 * i);
    hashes[2 * i + 1] = frame.readUInt32LE(FIXED_BYTES + 8 * i + 4);
  }
  if (deltasSeen !== deltaPages) bad(`${deltasSeen} delta pages where the header announced ${deltaPages}`);
  // After a post-copy switch the destination's guest writes its memory: no copy there is what the source sent last.
  if (deltaPages > 0 && (frame.readUInt16LE(2) & PAGE_FLAG_POSTCOPY) !== 0) bad(`a post-copy frame carries ${deltaPages} delta pages`);
  return {
    round: frame.readUInt32LE(4), flags: frame.readUInt16LE(2), pages, zero, dataPages: count - zeroPages, hashes, delta, deltaBytes, deltaPages, dataBytes,
  };
}

/** Bytes of the data message after `header`: 0 when every page is a zero page (no data message follows). */
export function expectedDataBytes(header: PageHeader): number {
  return header.dataBytes;
}

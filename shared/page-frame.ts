/**
 * Page data on the peer connection: a small binary header message, then one raw data message.
 *
 * Page bytes never go through msgpack (it packs 1 MiB at only 1.8 GB/s here) and are never concatenated with
 * their header: the data message is a view of guest memory, or of a staging buffer, sent as is.
 *
 * Header message (little-endian):
 *
 *   offset  size         field
 *   ------  -----------  ----------------------------------------------------------------
 *   0       1            magic 0xC1: a byte MessagePack never uses, so a header is never
 *                        mistaken for a control message (those are MessagePack maps)
 *   1       1            frame version (2)
 *   2       2            flags: bit 0 = sent with the vCPU paused (stop-and-copy, and all of
 *                        post-copy); bit 1 = sent after a post-copy switch (the destination takes
 *                        only the pages it still lacks)
 *   4       4            round (1 = the full first pass)
 *   8       4            count: pages in the data message that follows, 1..PAGES_PER_FRAME
 *   12      4            reserved, 0
 *   16      8 x count    XXH3-64 of each page (DESIGN.md "Verified commit"), a little-endian uint64
 *   16+8c   4 x count    each page's entry: bits 0-30 its page number; bit 31 set for a zero page
 *
 * Data message: the pages whose entries are not zero pages, in header order, PAGE_SIZE bytes each. A zero page
 * (all 4096 bytes 0) travels as its flag alone, as QEMU sends them: it has no bytes in the data message, and its
 * hash field holds the hash of a zero page (page-hash.ts `ZERO_PAGE_HASH`). A frame of zero pages only has no
 * data message at all.
 */
import { PAGE_SIZE, PAGES_PER_FRAME } from './constants.js';
import { ErrorCode, FerryError } from './errors.js';

export const PAGE_HEADER_MAGIC = 0xc1;
export const PAGE_FRAME_VERSION = 2;
export const PAGE_FLAG_PAUSED = 1;
export const PAGE_FLAG_POSTCOPY = 2;
/** Bit 31 of a page entry: the page is all zeros and has no bytes in the data message. */
export const ZERO_PAGE_BIT = 0x8000_0000;
const PAGE_NUMBER_MASK = 0x7fff_ffff;
const FIXED_BYTES = 16;

export interface PageHeader {
  round: number;
  flags: number;
  pages: Uint32Array;
  /** 1 where pages[i] is a zero page (no bytes in the data message), else 0. */
  zero: Uint8Array;
  /** Pages that have bytes in the data message: pages.length less the zero pages. */
  dataPages: number;
  /** The XXH3-64 of page i as two words, low then high: words 2i and 2i + 1 (page-hash.ts). */
  hashes: Uint32Array;
}

export function pageHeaderBytes(count: number): number {
  return FIXED_BYTES + 12 * count;
}

/**
 * Writes a header for `count` pages into `target` (which must hold pageHeaderBytes(count)) and returns the view.
 * `entries` are page numbers, a zero page's with ZERO_PAGE_BIT set.
 */
export function encodePageHeader(
  target: Buffer,
  round: number,
  flags: number,
  entries: ArrayLike<number>,
  hashes: Uint32Array,
  count: number,
): Buffer {
  const header = target.subarray(0, pageHeaderBytes(count));
  header.writeUInt8(PAGE_HEADER_MAGIC, 0);
  header.writeUInt8(PAGE_FRAME_VERSION, 1);
  header.writeUInt16LE(flags, 2);
  header.writeUInt32LE(round, 4);
  header.writeUInt32LE(count, 8);
  header.writeUInt32LE(0, 12);
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

/** The size of a header's fixed part: enough to know its length (`headerPageCount`). */
export const PAGE_HEADER_FIXED_BYTES = FIXED_BYTES;

function bad(why: string): never {
  throw new FerryError(ErrorCode.PROTOCOL, `bad page header: ${why}`, 'the peer is not a compatible ferry-agent');
}

/**
 * Checks a header's fixed part (its first PAGE_HEADER_FIXED_BYTES: magic, version, count) and returns the count, so
 * that a reader of a byte stream knows how long the whole header is before it reads it.
 */
export function headerPageCount(fixed: Buffer): number {
  if (fixed.length < FIXED_BYTES) bad(`${fixed.length} bytes is shorter than the ${FIXED_BYTES}-byte header`);
  if (fixed[0] !== PAGE_HEADER_MAGIC) bad(`wrong magic byte ${fixed[0]}: not a version ${PAGE_FRAME_VERSION} page header`);
  if (fixed[1] !== PAGE_FRAME_VERSION) bad(`frame version ${fixed[1]} (this agent speaks ${PAGE_FRAME_VERSION}): not a version ${PAGE_FRAME_VERSION} page header`);
  const count = fixed.readUInt32LE(8);
  if (count < 1 || count > PAGES_PER_FRAME) bad(`page count ${count} is outside 1..${PAGES_PER_FRAME}`);
  return count;
}

/** Decodes and checks a header: right magic and version, a count in range, page numbers inside the guest. */
export function decodePageHeader(frame: Buffer, pageCount: number): PageHeader {
  const count = headerPageCount(frame);
  if (frame.length !== pageHeaderBytes(count)) bad(`${frame.length} bytes for ${count} pages, expected ${pageHeaderBytes(count)}`);
  const pages = new Uint32Array(count);
  const zero = new Uint8Array(count);
  const hashes = new Uint32Array(2 * count);
  const pagesAt = FIXED_BYTES + 8 * count;
  let zeroPages = 0;
  for (let i = 0; i < count; i++) {
    const entry = frame.readUInt32LE(pagesAt + 4 * i);
    const page = entry & PAGE_NUMBER_MASK;
    if (page >= pageCount) bad(`page ${page} is outside the guest's ${pageCount} pages`);
    // Ascending, each once: the receiver takes a run of data pages by its first and last page alone.
    if (i > 0 && page <= pages[i - 1]!) bad(`page ${page} follows page ${pages[i - 1]}: page numbers must ascend, each once`);
    pages[i] = page;
    if (entry & ZERO_PAGE_BIT) {
      zero[i] = 1;
      zeroPages += 1;
    }
    hashes[2 * i] = frame.readUInt32LE(FIXED_BYTES + 8 * i);
    hashes[2 * i + 1] = frame.readUInt32LE(FIXED_BYTES + 8 * i + 4);
  }
  return { round: frame.readUInt32LE(4), flags: frame.readUInt16LE(2), pages, zero, dataPages: count - zeroPages, hashes };
}

/** Bytes of the data message after `header`: 0 when every page is a zero page (no data message follows). */
export function expectedDataBytes(header: PageHeader): number {
  return header.dataPages * PAGE_SIZE;
}

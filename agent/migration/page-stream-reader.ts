/**
 * Reads page frames (page-frame.ts) off a page stream (shared/page-stream.ts) into guest memory, choosing the buffer
 * of every socket read:
 *
 * - a header is read in two steps: its 16 fixed bytes, then the 12 bytes a page its count announces, into one
 *   buffer kept for the stream's life; it is decoded and checked before any page byte is read;
 * - the data pages of a frame whose pages lie in a few runs (all of round 1 is one run of 256 pages) are read
 *   straight into their place in guest memory, a run per read at most: no copy in JavaScript at all;
 * - a frame of scattered pages (later rounds) is read whole into a staging buffer, then copied page by page, as
 *   over the WebSocket: one read for the frame rather than one per page; so is a frame of a post-copy's second half
 *   some of whose pages are present and in the guest's use already (the sink's `inPlace`);
 * - and so is a frame with delta pages (`--compress xbzrle`, shared/xbzrle.ts): a delta is not the page, and is
 *   decoded from the staging buffer into its place in guest memory, checked before a byte of the page is written.
 *
 * Each frame, once all its bytes are in, goes to `onFrame` with the staging buffer, or none when its pages are in
 * place already. A frame that does not check out throws from `took`: the stream is closed with that error.
 */
import { PAGE_SIZE, PAGES_PER_FRAME } from '../../shared/constants.js';
import { PAGE_HEADER_FIXED_BYTES as FIXED_BYTES, decodePageHeader, headerLength, pageHeaderBytes, type PageHeader } from '../../shared/page-frame.js';
import type { StreamConsumer } from '../../shared/page-stream.js';

/** More runs than this in a frame and it is read into the staging buffer rather than run by run. */
const MAX_RUNS_IN_PLACE = 8;

export interface PageStreamSink {
  readonly pageCount: number;
  readonly memory: Uint8Array;
  /** A header is decoded, before any of its page bytes is read: may throw to refuse the frame (the stream closes). */
  onHeader?(header: PageHeader): void;
  /**
   * Whether a frame of few runs may be read straight into guest memory (default: yes). A post-copy's says no when
   * some of its pages are present already (in the guest's use), and otherwise claims them until the frame is in.
   */
  inPlace?(header: PageHeader): boolean;
  /** A frame's bytes are all in: in `staged` (data pages in header order), or in place in guest memory when undefined. */
  onFrame(header: PageHeader, staged: Buffer | undefined, bytes: number): void;
}

export class PageStreamReader implements StreamConsumer {
  private readonly sink: PageStreamSink;
  private readonly headerBuffer = Buffer.alloc(pageHeaderBytes(PAGES_PER_FRAME, PAGES_PER_FRAME));
  private staging: Buffer | undefined;
  /** Where the header being read ends: FIXED_BYTES until its count is known. */
  private headerEnd = FIXED_BYTES;
  private headerAt = 0;
  private header: PageHeader | undefined;
  /** The frame's data as [byte offset in guest memory or staging, length] pairs, and how far reading has got. */
  private readonly runs: number[] = [];
  private inStaging = false;
  private run = 0;
  private runAt = 0;
  private frameBytes = 0;

  constructor(sink: PageStreamSink) {
    this.sink = sink;
  }

  /** Whether a frame is part-read: its header, or some of its data, is in but not all of it. */
  get midFrame(): boolean {
    return this.headerAt > 0;
  }

  next(): Uint8Array {
    if (!this.header) return this.headerBuffer.subarray(this.headerAt, this.headerEnd);
    const offset = this.runs[2 * this.run]! + this.runAt;
    const length = this.runs[2 * this.run + 1]! - this.runAt;
    if (this.inStaging) return this.staging!.subarray(offset, offset + length);
    const { memory } = this.sink;
    return Buffer.from(memory.buffer, memory.byteOffset + offset, length);
  }

  took(bytes: number): void {
    if (!this.header) {
      this.headerAt += bytes;
      if (this.headerAt < this.headerEnd) return;
      if (this.headerEnd === FIXED_BYTES) {
        this.headerEnd = headerLength(this.headerBuffer.subarray(0, FIXED_BYTES));
        return;
      }
      const header = decodePageHeader(this.headerBuffer.subarray(0, this.headerEnd), this.sink.pageCount);
      this.sink.onHeader?.(header);
      this.header = header;
      this.plan(header);
      if (this.header.dataBytes === 0) this.finish();
      return;
    }
    this.runAt += bytes;
    if (this.runAt < this.runs[2 * this.run + 1]!) return;
    this.run += 1;
    this.runAt = 0;
    if (2 * this.run === this.runs.length) this.finish();
  }

  /** Lays out where the frame's data pages go: their runs in guest memory, or the staging buffer. */
  private plan(header: PageHeader): void {
    const { pages, zero } = header;
    this.runs.length = 0;
    this.run = 0;
    this.runAt = 0;
    this.frameBytes = this.headerEnd + header.dataBytes;
    let runStart = -1;
    let runEnd = -1;
    for (let i = 0; i < pages.length; i++) {
      if (zero[i]) continue;
      const page = pages[i]!;
      if (page === runEnd) {
        runEnd += 1;
        continue;
      }
      if (runStart >= 0) this.runs.push(runStart * PAGE_SIZE, (runEnd - runStart) * PAGE_SIZE);
      runStart = page;
      runEnd = page + 1;
    }
    if (runStart >= 0) this.runs.push(runStart * PAGE_SIZE, (runEnd - runStart) * PAGE_SIZE);
    // A frame with deltas is staged whole: its data message holds no run that is a page (and is smaller than one
    // of whole pages, PAGES_PER_FRAME x PAGE_SIZE at most, as each delta is shorter than a page). The sink is asked
    // (and a post-copy's claims pages) only for a frame that would be read in place; a post-copy frame has no deltas.
    this.inStaging = header.deltaPages > 0 || this.runs.length / 2 > MAX_RUNS_IN_PLACE || this.sink.inPlace?.(header) === false;
    if (this.inStaging) {
      this.staging ??= Buffer.allocUnsafe(PAGES_PER_FRAME * PAGE_SIZE);
      this.runs.length = 0;
      this.runs.push(0, header.dataBytes);
    }
  }

  private finish(): void {
    const header = this.header!;
    const staged = this.inStaging ? this.staging!.subarray(0, header.dataBytes) : undefined;
    const bytes = this.frameBytes;
    this.header = undefined;
    this.headerAt = 0;
    this.headerEnd = FIXED_BYTES;
    this.sink.onFrame(header, staged, bytes);
  }
}

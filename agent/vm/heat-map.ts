/**
 * The heat map of a VM's memory (`ferry ui`): one cell per page, or per group of pages for a large guest, each with
 * how recently the guest wrote it and, while a live migration sends it from here, how much of it the destination
 * holds as it is now.
 *
 * Sampling reads and never writes: the write stamps (write-stamps.ts), the dirty log's words with Atomics.load (never
 * `exchange`: a cleared bit would be a page pre-copy never resends), and the page sender's table of what it sent. So
 * what migration sees in the dirty log is the same whether a heat map is drawn or not; test/unit/heat-map.test.ts
 * checks it.
 *
 * A page's contents are at the destination when the sender has sent the page (its hash in the sender's table is set),
 * its dirty bit is clear (not written since it was harvested), and it is not among the pages harvested for the round
 * under way that the sender has not reached yet (their bits are clear, but what the destination has is older).
 */
import type { DirtyLog } from './dirty-log.js';
import type { WriteStamps } from './write-stamps.js';

/** What a live migration's page sender has sent of a VM (page-sender.ts keeps it). */
export interface SentPages {
  /** The sender's page-hash table, two words a page: both 0 for a page it never sent. */
  readonly hashes: Uint32Array;
  /** The round under way: its harvested pages, and how many of them the sender has sent so far. */
  readonly pending: { pages: Uint32Array; next: number } | undefined;
}

/** What the heat map reads of a VM. */
export interface HeatSource {
  readonly pageCount: number;
  readonly dirtyLog: DirtyLog;
  readonly writeStamps: WriteStamps;
  readonly sending: SentPages | undefined;
  /** Register n: writes done. */
  writes(): number;
}

export interface HeatFrame {
  pageCount: number;
  pagesPerCell: number;
  /**
   * Per cell, its most recently written page: 0 never written here, 1 not within the horizon, 2 to 255 the more
   * recent the higher (255: in the last sample).
   */
  recency: Uint8Array<ArrayBuffer>;
  /** Per cell, the share of its pages whose current contents the destination holds, 0 to 255; null when none is sent. */
  current: Uint8Array<ArrayBuffer> | null;
  /** Register n at the sample, and the guest's writes per second over the horizon. */
  writes: number;
  writesPerSec: number;
}

/** The most cells a frame may have: a 128 x 128 picture. */
export const MAX_HEAT_CELLS = 16384;

export class HeatMap {
  private readonly maxCells: number;
  private readonly horizonMs: number;
  /** (writes, time) pairs over the horizon: how fast the guest writes, to turn a stamp's age in writes into time. */
  private readonly history: { writes: number; atMs: number }[] = [];
  private pendingMarks = new Uint8Array(0);

  constructor(maxCells: number, horizonMs = 10_000) {
    this.maxCells = Math.max(1, Math.min(MAX_HEAT_CELLS, Math.floor(maxCells)));
    this.horizonMs = horizonMs;
  }

  sample(source: HeatSource, nowMs: number): HeatFrame {
    const { pageCount } = source;
    const pagesPerCell = Math.ceil(pageCount / this.maxCells);
    const cellCount = Math.ceil(pageCount / pagesPerCell);
    const writes = source.writes();
    const writesPerSec = this.rate(writes, nowMs);
    const recency = new Uint8Array(cellCount);
    const stamps = source.writeStamps.stamps;
    const latest = writes >>> 0;
    const writesInHorizon = (writesPerSec * this.horizonMs) / 1000;
    for (let page = 0; page < pageCount; page++) {
      const stamp = stamps[page]!;
      if (stamp === 0) continue;
      const age = (latest - stamp) >>> 0; // writes since; unsigned, so the low bits' wrap-around is harmless
      const level = writesInHorizon <= 0 || age >= writesInHorizon ? 1 : 2 + Math.floor(253 * (1 - age / writesInHorizon));
      const cell = Math.floor(page / pagesPerCell);
      if (level > recency[cell]!) recency[cell] = level;
    }
    const sending = source.sending;
    return { pageCount, pagesPerCell, recency, current: sending ? this.current(source, sending, pagesPerCell, cellCount) : null, writes, writesPerSec };
  }

  private current(source: HeatSource, sending: SentPages, pagesPerCell: number, cellCount: number): Uint8Array<ArrayBuffer> {
    const { pageCount } = source;
    if (this.pendingMarks.length !== pageCount) this.pendingMarks = new Uint8Array(pageCount);
    const marks = this.pendingMarks;
    marks.fill(0);
    const pending = sending.pending;
    if (pending) for (let index = pending.next; index < pending.pages.length; index++) marks[pending.pages[index]!] = 1;
    const counts = new Uint32Array(cellCount);
    const words = source.dirtyLog.words;
    const { hashes } = sending;
    for (let page = 0; page < pageCount; page++) {
      // A load, never an exchange: the dirty log stays exactly as migration left it.
      const dirty = (Atomics.load(words, page >>> 5) & (1 << (page & 31))) !== 0;
      const sent = (hashes[2 * page]! | hashes[2 * page + 1]!) !== 0;
      if (sent && !dirty && marks[page] === 0) counts[Math.floor(page / pagesPerCell)]! += 1;
    }
    const current = new Uint8Array(cellCount);
    for (let cell = 0; cell < cellCount; cell++) {
      const pages = Math.min(pagesPerCell, pageCount - cell * pagesPerCell);
      current[cell] = Math.round((255 * counts[cell]!) / pages);
    }
    return current;
  }

  /** Writes per second over the horizon (0 until two samples are a tenth of a second apart). */
  private rate(writes: number, nowMs: number): number {
    const { history } = this;
    history.push({ writes, atMs: nowMs });
    while (history.length > 2 && nowMs - history[1]!.atMs >= this.horizonMs) history.shift();
    const oldest = history[0]!;
    const spanMs = nowMs - oldest.atMs;
    return spanMs < 100 ? 0 : ((writes - oldest.writes) * 1000) / spanMs;
  }
}

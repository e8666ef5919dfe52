/**
 * The dirty log: one bit per guest page (layout.ts draws it).
 *
 * THE ordering that makes pre-copy correct (DESIGN.md):
 *   vCPU:   write the page, THEN set its bit            (mark)
 *   sender: clear the bit (Atomics.exchange), THEN read the page   (harvest, then read)
 * A write that lands after the clear sets the bit again, so the page is sent again in a later round or in
 * stop-and-copy. Never read a page before clearing its bit, and never set a bit before the write is finished.
 */
import { dirtyLogWords } from './layout.js';

export class DirtyLog {
  readonly words: Int32Array;
  readonly pageCount: number;

  constructor(buffer: SharedArrayBuffer, pageCount: number) {
    this.words = new Int32Array(buffer);
    this.pageCount = pageCount;
    if (this.words.length < dirtyLogWords(pageCount)) throw new RangeError('dirty log buffer too small');
  }

  static allocate(pageCount: number): DirtyLog {
    return new DirtyLog(new SharedArrayBuffer(dirtyLogWords(pageCount) * 4), pageCount);
  }

  /** vCPU side: called after the page write is complete. */
  mark(page: number): void {
    Atomics.or(this.words, page >>> 5, 1 << (page & 31));
  }

  /**
   * Sender side: clears every set bit and returns the pages they named, in ascending order. The caller reads
   * those pages only after this returns.
   */
  harvest(): Uint32Array {
    const into = new Uint32Array(this.pageCount);
    return into.slice(0, this.harvestInto(into));
  }

  /**
   * As `harvest`, into `into` (at least pageCount long), allocating nothing: returns how many pages it wrote. For the
   * pause, where an allocation could be the one that starts a garbage collection.
   */
  harvestInto(into: Uint32Array): number {
    const { words } = this;
    let found = 0;
    for (let w = 0; w < words.length; w++) {
      if (Atomics.load(words, w) === 0) continue;
      let bits = Atomics.exchange(words, w, 0);
      const base = w << 5;
      while (bits !== 0) {
        const low = bits & -bits;
        into[found++] = base + 31 - Math.clz32(low);
        bits ^= low;
      }
    }
    return found;
  }

  /** Clears every bit and returns how many were set: the start of round 1, which sends every page anyway. */
  clearAll(): number {
    let cleared = 0;
    for (let w = 0; w < this.words.length; w++) cleared += popcount(Atomics.exchange(this.words, w, 0));
    return cleared;
  }

  /** Pages dirty right now, without clearing them. */
  count(): number {
    let total = 0;
    for (let w = 0; w < this.words.length; w++) total += popcount(Atomics.load(this.words, w));
    return total;
  }

  isDirty(page: number): boolean {
    return (Atomics.load(this.words, page >>> 5) & (1 << (page & 31))) !== 0;
  }
}

function popcount(value: number): number {
  let v = value >>> 0;
  v -= (v >>> 1) & 0x55555555;
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24;
}

/**
 * Which guest pages are in this host's memory: one bit a page, over a SharedArrayBuffer that the main thread and the
 * vCPU worker both see (layout.ts, POSTCOPY). It matters only during a post-copy's second half, on the destination:
 * the VM runs while some of its pages are still at the source, and the vCPU must never touch one of those.
 *
 *   bit (p & 31) of Int32 word (p >>> 5) is page p; 1 = present
 *
 * The one ordering that makes it correct: the main thread writes a page's bytes into guest memory, THEN sets its bit
 * (Atomics.or) and notifies the word; the vCPU reads the bit (Atomics.load) before it touches the page. Atomics are
 * sequentially consistent, so a vCPU that sees the bit sees the bytes written before it. The bit is never cleared
 * while the vCPU may run: a page once present stays so (later copies of it are ignored, never installed over it).
 *
 * On the wire (peer.postcopy, peer.postcopy-state) the same set travels inverted and byte-wise: bit (p & 7) of byte
 * (p >>> 3) set for a page still missing (protocol.ts, pageBitmapSchema).
 */
import { ErrorCode, FerryError } from '../../shared/errors.js';

export class PresentMap {
  readonly words: Int32Array;
  readonly pageCount: number;

  constructor(buffer: SharedArrayBuffer, pageCount: number) {
    this.words = new Int32Array(buffer);
    this.pageCount = pageCount;
  }

  static allocate(pageCount: number): PresentMap {
    return new PresentMap(new SharedArrayBuffer(Math.ceil(pageCount / 32) * 4), pageCount);
  }

  has(page: number): boolean {
    return (Atomics.load(this.words, page >>> 5) & (1 << (page & 31))) !== 0;
  }

  /** Marks the page present (its bytes are in place already) and wakes a vCPU waiting for it. */
  set(page: number): void {
    const word = page >>> 5;
    Atomics.or(this.words, word, 1 << (page & 31));
    Atomics.notify(this.words, word);
  }

  /** Blocks this thread (a worker's: the vCPU) until page's word changes or `timeoutMs` passes. */
  wait(page: number, timeoutMs: number): void {
    const word = page >>> 5;
    const value = Atomics.load(this.words, word);
    if ((value & (1 << (page & 31))) !== 0) return;
    Atomics.wait(this.words, word, value, timeoutMs);
  }

  /** Every page present (the state outside a post-copy). */
  fill(): void {
    for (let word = 0; word < this.words.length; word++) Atomics.store(this.words, word, -1);
  }

  /** Present = every page not set in `missing` (the wire's bitmap); returns how many are missing. Only while no vCPU waits. */
  loadMissing(missing: Uint8Array): number {
    const expected = Math.ceil(this.pageCount / 8);
    if (missing.length !== expected) {
      throw new FerryError(ErrorCode.PROTOCOL, `a bitmap of ${missing.length} bytes for a guest of ${this.pageCount} pages (expected ${expected})`, 'the peer is not a compatible ferry-agent');
    }
    // Word by word: a word's 32 bits are the four bytes of the bitmap that cover its pages, inverted.
    let count = 0;
    for (let word = 0; word < this.words.length; word++) {
      const at = word * 4;
      let bits = (missing[at] ?? 0) | ((missing[at + 1] ?? 0) << 8) | ((missing[at + 2] ?? 0) << 16) | ((missing[at + 3] ?? 0) << 24);
      // Bits past the last page (the bitmap's padding) name no page: never missing.
      const pagesInWord = this.pageCount - word * 32;
      if (pagesInWord < 32) bits &= (1 << pagesInWord) - 1;
      count += popcount(bits);
      Atomics.store(this.words, word, ~bits);
    }
    return count;
  }

  /** The wire's bitmap of the pages not present. */
  missingBitmap(): Uint8Array<ArrayBuffer> {
    const bits = new Uint8Array(Math.ceil(this.pageCount / 8));
    for (let page = 0; page < this.pageCount; page++) if (!this.has(page)) bits[page >>> 3]! |= 1 << (page & 7);
    return bits;
  }

  /** Pages not present. */
  missingCount(): number {
    let count = 0;
    for (let page = 0; page < this.pageCount; page++) if (!this.has(page)) count += 1;
    return count;
  }
}

function popcount(value: number): number {
  let v = value - ((value >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24);
}

/** Pages set in a wire bitmap (missing pages), ascending. */
export function bitmapPages(bits: Uint8Array, pageCount: number): Uint32Array {
  const pages: number[] = [];
  for (let page = 0; page < pageCount; page++) if ((bits[page >>> 3]! & (1 << (page & 7))) !== 0) pages.push(page);
  return Uint32Array.from(pages);
}

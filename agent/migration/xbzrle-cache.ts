/**
 * The source's XBZRLE cache (QEMU migration/page_cache.c): each page's contents as last sent, for the pages it holds,
 * so that the next send of the page can be the difference from them (shared/xbzrle.ts).
 *
 * Direct-mapped by page number, as QEMU's: page p can live only in slot p mod slots. A slot holds its page and the
 * round it was last sent in (its age). A page that is not cached takes its slot when the slot is empty or its page
 * has not been sent for CACHED_PAGE_LIFETIME rounds; a slot sent in more recently keeps its page (QEMU: "the page in
 * cache will not be replaced in two cycles"). So round 1, which sends every page in order, fills each slot with the
 * first page that maps to it and leaves the rest uncached, and a working set that keeps being dirtied keeps its
 * slots.
 *
 *   memory (shared wasm memory, so that the page hasher reads it in place):
 *   +-----------+-----------+-----+-----------------+-----------+
 *   | slot 0    | slot 1    | ... | slot slots - 1  | scratch   |   4 KiB each
 *   +-----------+-----------+-----+-----------------+-----------+
 *   slotPage[s]: the page slot s holds, -1 for none;  slotAge[s]: the round it was last sent in
 *
 * The bound: slots x 4 KiB of page copies (at most the --xbzrle-cache size, and no more than the guest), one scratch
 * page, and 8 bytes of bookkeeping a slot.
 */
import { PAGE_SIZE } from '../../shared/constants.js';
import { PageHasher, allocateGuestMemory } from '../../shared/page-hash.js';

/** A slot sent in within this many rounds keeps its page against another that maps to it. */
export const CACHED_PAGE_LIFETIME = 2;

export class XbzrleCache {
  /** Pages the cache holds at most. */
  readonly slots: number;
  /** The page copies, then the scratch page (at slot index `slots`). */
  readonly data: Uint8Array;
  /** Hashes a slot (or the scratch page) where it lies. */
  readonly hasher: PageHasher;
  private readonly slotPage: Int32Array;
  private readonly slotAge: Uint32Array;

  /** A cache of at most `cacheBytes` of page copies (at least one page) for a guest of `guestPages` pages. */
  constructor(cacheBytes: number, guestPages: number) {
    this.slots = Math.max(1, Math.min(Math.floor(cacheBytes / PAGE_SIZE), guestPages));
    const memory = allocateGuestMemory((this.slots + 1) * PAGE_SIZE);
    this.data = new Uint8Array(memory.buffer, 0, (this.slots + 1) * PAGE_SIZE);
    this.hasher = new PageHasher(memory);
    this.slotPage = new Int32Array(this.slots).fill(-1);
    this.slotAge = new Uint32Array(this.slots);
  }

  /** Bytes of page copies the cache holds at most. */
  get bytes(): number {
    return this.slots * PAGE_SIZE;
  }

  /** The slot index of the scratch page: a page being sent is copied there before it is compared with its copy. */
  get scratch(): number {
    return this.slots;
  }

  slotOf(page: number): number {
    return page % this.slots;
  }

  /** Whether `page` is cached: its last-sent copy is in slot `slotOf(page)`. */
  holds(page: number): boolean {
    return this.slotPage[this.slotOf(page)] === page;
  }

  /** Whether `page` may have its slot in `round`: it holds the page already, none, or one unsent for long enough. */
  mayTake(page: number, round: number): boolean {
    const slot = this.slotOf(page);
    const holder = this.slotPage[slot];
    return holder === page || holder === -1 || this.slotAge[slot]! + CACHED_PAGE_LIFETIME <= round;
  }

  /** Records that `page`'s copy in its slot is the one sent in `round` (the caller has written it there). */
  sent(page: number, round: number): void {
    const slot = this.slotOf(page);
    this.slotPage[slot] = page;
    this.slotAge[slot] = round;
  }

  /** Slot `slot`'s 4 KiB (or the scratch page's, at `scratch`). */
  view(slot: number): Uint8Array {
    return this.data.subarray(slot * PAGE_SIZE, (slot + 1) * PAGE_SIZE);
  }

  /** Pages cached now. */
  get cachedPages(): number {
    let cached = 0;
    for (let slot = 0; slot < this.slots; slot++) if (this.slotPage[slot] !== -1) cached += 1;
    return cached;
  }
}

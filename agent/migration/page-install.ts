/**
 * The receiving end of the page stream (page-frame.ts), for a migration's destination (target.ts) and a link
 * measurement (peer/link-probe.ts): each frame's pages go into guest memory, then each is hashed where it now lies
 * and compared with the hash it travelled with; the hashes make the destination's page-hash table, whose digest
 * the commit compares with the source's.
 *
 * A zero page has no bytes on the wire. Memory given to a reservation is all zeros, and the installer knows which
 * pages it has written since: a zero page over a page never written costs nothing (its memory is left alone, so
 * the OS keeps it unbacked if it was), over a written one it is cleared. Either way the page holds zeros, so its
 * table entry is the zero page's hash, and the hash it came with must be that too.
 *
 * A delta page (`--compress xbzrle`, shared/xbzrle.ts) is decoded onto the page as it lies here, which is exactly
 * the copy the source encoded it against: in pre-copy nothing but arriving pages changes this memory. The delta is
 * checked whole before any of its bytes is written, and only ever writes inside its page; the page is then hashed
 * and checked like any other, so a delta applied to the wrong copy shows as a mismatch.
 */
import { PAGE_SIZE } from '../../shared/constants.js';
import type { PageHeader } from '../../shared/page-frame.js';
import type { PageHasher } from '../../shared/page-hash.js';
import { ZERO_PAGE_HASH } from '../../shared/zero-page.js';
import { applyDelta } from '../../shared/xbzrle.js';
import type { PresentMap } from '../vm/present-map.js';

export class PageInstaller {
  /** XXH3-64 of each page as installed, two words a page (page-hash.ts). */
  readonly table: Uint32Array;
  private readonly memory: Uint8Array;
  private readonly hasher: PageHasher;
  /** 1 where the page may hold bytes other than zero: written by this installer and not cleared since. */
  private readonly written: Uint8Array;
  /** Time spent decoding delta pages, ms. */
  decodeMs = 0;

  constructor(memory: Uint8Array, hasher: PageHasher, pageCount: number) {
    this.memory = memory;
    this.hasher = hasher;
    this.table = new Uint32Array(2 * pageCount);
    this.written = new Uint8Array(pageCount);
  }

  /**
   * Installs the pages of `header`, their bytes in `data` (empty when every page is a zero page; the caller has
   * checked its length), and returns how many did not match the hash they came with.
   */
  install(header: PageHeader, data: Buffer): number {
    const { pages, zero, dataPages } = header;
    const { memory, written } = this;
    const count = pages.length;
    // The data pages in one copy when they are a run of whole pages (all of round 1 for a filled guest), else one by
    // one; a delta page is decoded in place.
    if (dataPages > 0) {
      let firstData = -1;
      let lastData = -1;
      for (let i = 0; i < count; i++) {
        if (zero[i]) continue;
        if (firstData < 0) firstData = pages[i]!;
        lastData = pages[i]!;
      }
      if (header.deltaPages === 0 && lastData - firstData === dataPages - 1) {
        memory.set(data, firstData * PAGE_SIZE);
        written.fill(1, firstData, lastData + 1);
      } else {
        const startedMs = header.deltaPages > 0 ? performance.now() : 0;
        const { delta, deltaBytes } = header;
        let at = 0;
        for (let i = 0; i < count; i++) {
          if (zero[i]) continue;
          const page = pages[i]!;
          if (delta[i]) {
            const bytes = deltaBytes[i]!;
            applyDelta(data.subarray(at, at + bytes), memory.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE));
            at += bytes;
          } else {
            memory.set(data.subarray(at, at + PAGE_SIZE), page * PAGE_SIZE);
            at += PAGE_SIZE;
          }
          written[page] = 1;
        }
        if (header.deltaPages > 0) this.decodeMs += performance.now() - startedMs;
      }
    }
    return this.settle(header);
  }

  /**
   * Takes the pages of `header` whose bytes a page stream read straight into their place in guest memory
   * (page-stream-reader.ts), and returns how many did not match the hash they came with.
   */
  installInPlace(header: PageHeader): number {
    const { pages, zero } = header;
    for (let i = 0; i < pages.length; i++) if (!zero[i]) this.written[pages[i]!] = 1;
    return this.settle(header);
  }

  /**
   * A post-copy's frame (postcopy-target.ts): only the pages still missing are taken, each checked as it lands, and
   * marked present once it matches its hash, which wakes a vCPU waiting for it. A page already present is skipped: the
   * guest may have written it since, and every copy of a page sent after the switch is the same (the source's vCPU is
   * paused). A page that does not match stays missing, its bytes unseen by the guest, and goes to `damaged` to be
   * asked for again. Returns how many pages became present.
   */
  installMissing(header: PageHeader, data: Buffer, present: PresentMap, damaged: (page: number) => void, claimed?: Uint8Array): number {
    const { pages, zero, hashes } = header;
    const { memory, table, written } = this;
    let at = 0;
    let installed = 0;
    for (let i = 0; i < pages.length; i++) {
      const page = pages[i]!;
      const from = at;
      if (!zero[i]) at += PAGE_SIZE;
      // Present: the guest's now. Claimed: a page-stream frame is being read into it; that copy decides.
      if (present.has(page) || claimed?.[page]) continue;
      if (!zero[i]) {
        memory.set(data.subarray(from, from + PAGE_SIZE), page * PAGE_SIZE);
        written[page] = 1;
      }
      if (!this.check(page, zero[i] === 1, hashes, i)) {
        damaged(page);
        continue;
      }
      present.set(page); // after the bytes: a vCPU that sees the bit sees them (present-map.ts)
      installed += 1;
    }
    return installed;
  }

  /**
   * A post-copy frame read straight into guest memory (page-receiver.ts `claimInPlace`: every page of it was missing
   * and claimed, so nothing else wrote them meanwhile): each page checked where it lies, then marked present, or left
   * missing and asked for again. Returns how many pages became present.
   */
  installMissingInPlace(header: PageHeader, present: PresentMap, damaged: (page: number) => void): number {
    const { pages, zero, hashes } = header;
    const { memory, table, written } = this;
    let installed = 0;
    for (let i = 0; i < pages.length; i++) {
      const page = pages[i]!;
      if (!zero[i]) this.written[page] = 1;
      if (!this.check(page, zero[i] === 1, hashes, i)) {
        damaged(page);
        continue;
      }
      present.set(page);
      installed += 1;
    }
    return installed;
  }

  /** Clears zero pages, hashes the others where they lie into the table, and counts those that do not match. */
  private settle(header: PageHeader): number {
    const { pages, zero, hashes } = header;
    let mismatches = 0;
    for (let i = 0; i < pages.length; i++) if (!this.check(pages[i]!, zero[i] === 1, hashes, i)) mismatches += 1;
    return mismatches;
  }

  /**
   * Takes page `page` as it now lies into the table (a zero page: cleared if this installer wrote it, and the zero
   * page's hash; any other: hashed where it lies), and says whether it matches hash `i` of `hashes`.
   */
  private check(page: number, zero: boolean, hashes: Uint32Array, i: number): boolean {
    const { memory, table, written } = this;
    if (zero) {
      if (written[page]) {
        memory.fill(0, page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
        written[page] = 0;
      }
      table[2 * page] = ZERO_PAGE_HASH[0]!;
      table[2 * page + 1] = ZERO_PAGE_HASH[1]!;
    } else {
      this.hasher.hashInto(page, table, page);
    }
    return table[2 * page] === hashes[2 * i] && table[2 * page + 1] === hashes[2 * i + 1];
  }
}

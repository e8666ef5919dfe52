/**
 * `ferry migrate --compress xbzrle` on the source: packs a frame of pages (page-frame.ts) against the XBZRLE cache
 * (xbzrle-cache.ts), as QEMU's save_xbzrle_page does: a cached page goes as its delta from the copy last sent
 * (shared/xbzrle.ts) when that is at most XBZRLE_MAX_DELTA_BYTES, else whole; either way its slot then holds what
 * was sent.
 *
 * The one thing that must stay true: a cached copy is exactly the bytes the destination holds for that page, or a
 * delta would be applied there to something else. Sending views of live guest memory (page-sender.ts) does not give
 * that (the vCPU may write a page between its hash and the socket's read), so a page that is or becomes cached is
 * first copied out of guest memory (into its slot, or the scratch page), and the hash, the zero test, the delta and
 * the bytes sent are all made from that copy: the vCPU's later writes reach none of them. Any such write set the
 * page's dirty bit again (after the harvest that cleared it), so the page goes again, as ever.
 *
 * A page that is neither cached nor may take its slot goes as it would without compression; a frame of such pages
 * only (most of round 1 when the guest is larger than the cache) is left to the page sender's own path (`pack`
 * returns undefined), views of guest memory and all.
 */
import { PAGE_SIZE } from '../../shared/constants.js';
import { DELTA_PAGE_BIT, ZERO_PAGE_BIT } from '../../shared/page-frame.js';
import type { PageHasher } from '../../shared/page-hash.js';
import type { SourceReport } from '../../shared/protocol.js';
import { encodeDelta } from '../../shared/xbzrle.js';
import { hasZeroPageHash, isZeroPage } from '../../shared/zero-page.js';
import type { XbzrleCache } from './xbzrle-cache.js';

/** The length field a delta page adds to its header. */
const DELTA_LENGTH_BYTES = 2;

export interface PackedFrame {
  zeroPages: number;
  /** Bytes of the data message, written at the start of the staging buffer given. */
  dataBytes: number;
  /** The delta pages' encoded lengths, in header order. */
  deltaLengths: number[];
}

export type CompressionReport = NonNullable<SourceReport['compression']>;

export class XbzrleEncoder {
  private readonly cache: XbzrleCache;
  private readonly memory: Uint8Array;
  private readonly hasher: PageHasher;
  private readonly stats = { cacheHits: 0, cacheMisses: 0, deltaPages: 0, bytesSaved: 0, encodeMs: 0 };

  /** `memory` and `hasher` are the guest's. */
  constructor(cache: XbzrleCache, memory: Uint8Array, hasher: PageHasher) {
    this.cache = cache;
    this.memory = memory;
    this.hasher = hasher;
  }

  /**
   * Packs `batch` (ascending pages whose dirty bits were cleared) for `round`: fills `frameHashes` and `entries` as the
   * page sender does and writes the data message into `staging` (room for batch.length whole pages). Returns
   * undefined, having touched nothing, when no page of the batch is cached or may be: the caller sends it as usual.
   */
  pack(batch: Uint32Array, round: number, frameHashes: Uint32Array, entries: Uint32Array, staging: Uint8Array): PackedFrame | undefined {
    const { cache, memory, stats } = this;
    const count = batch.length;
    let touches = false;
    for (let i = 0; i < count && !touches; i++) touches = cache.holds(batch[i]!) || cache.mayTake(batch[i]!, round);
    if (!touches) {
      // A page sent again that the cache does not hold is a miss (round 1 sends every page a first time).
      if (round > 1) stats.cacheMisses += count;
      return undefined;
    }
    const startedMs = performance.now();
    const deltaLengths: number[] = [];
    const scratch = cache.view(cache.scratch);
    let zeroPages = 0;
    let at = 0;
    for (let i = 0; i < count; i++) {
      const page = batch[i]!;
      const guestPage = memory.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
      const slot = cache.slotOf(page);
      if (cache.holds(page)) {
        stats.cacheHits += 1;
        scratch.set(guestPage); // the page as it is now, out of the vCPU's reach
        cache.hasher.hashInto(cache.scratch, frameHashes, i);
        const copy = cache.view(slot);
        if (hasZeroPageHash(frameHashes, i) && isZeroPage(cache.data, cache.scratch)) {
          entries[i] = (page | ZERO_PAGE_BIT) >>> 0;
          zeroPages += 1;
        } else {
          const encoded = encodeDelta(copy, scratch, staging.subarray(at));
          if (encoded >= 0) {
            entries[i] = (page | DELTA_PAGE_BIT) >>> 0;
            deltaLengths.push(encoded);
            at += encoded;
            stats.deltaPages += 1;
            stats.bytesSaved += PAGE_SIZE - encoded - DELTA_LENGTH_BYTES;
          } else {
            entries[i] = page;
            staging.set(scratch, at);
            at += PAGE_SIZE;
          }
        }
        copy.set(scratch); // the destination holds this now, a zero page's zeros included
        cache.sent(page, round);
        continue;
      }
      if (round > 1) stats.cacheMisses += 1;
      // Not cached: copied into its slot when it may take it (hashed and sent from there), else sent from guest memory.
      const takes = cache.mayTake(page, round);
      let source: Uint8Array;
      if (takes) {
        source = cache.view(slot);
        source.set(guestPage);
        cache.hasher.hashInto(slot, frameHashes, i);
        cache.sent(page, round);
      } else {
        source = guestPage;
        this.hasher.hashInto(page, frameHashes, i);
      }
      if (hasZeroPageHash(frameHashes, i) && isZeroPage(source, 0)) {
        entries[i] = (page | ZERO_PAGE_BIT) >>> 0;
        zeroPages += 1;
      } else {
        entries[i] = page;
        staging.set(source, at);
        at += PAGE_SIZE;
      }
    }
    stats.encodeMs += performance.now() - startedMs;
    return { zeroPages, dataBytes: at, deltaLengths };
  }

  /** The figures for the source report; `decodeMs` is the destination's, when it said. */
  report(decodeMs: number | undefined): CompressionReport {
    return {
      kind: 'xbzrle',
      cacheBytes: this.cache.bytes,
      ...this.stats,
      ...(decodeMs !== undefined ? { decodeMs } : {}),
    };
  }
}

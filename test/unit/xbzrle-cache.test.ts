/**
 * The source's XBZRLE cache (agent/migration/xbzrle-cache.ts): bounded by its size in pages, direct-mapped, and a
 * slot sent in recently keeps its page (QEMU's page_cache.c rule).
 */
import { describe, expect, it } from 'vitest';
import { PAGE_SIZE } from '../../shared/constants.js';
import { CACHED_PAGE_LIFETIME, XbzrleCache } from '../../agent/migration/xbzrle-cache.js';

describe('XBZRLE cache', () => {
  it('holds no more pages than its size, and no more than the guest has', () => {
    const cache = new XbzrleCache(64 * PAGE_SIZE + 100, 1000);
    expect(cache.slots).toBe(64);
    expect(cache.bytes).toBe(64 * PAGE_SIZE);
    // The copies and one scratch page: nothing else of page size.
    expect(cache.data.length).toBe(65 * PAGE_SIZE);
    for (let page = 0; page < 1000; page++) if (cache.mayTake(page, 1)) cache.sent(page, 1);
    expect(cache.cachedPages).toBe(64);
    expect(new XbzrleCache(64 * 1024 * 1024, 16).slots).toBe(16);
    expect(new XbzrleCache(1, 16).slots).toBe(1);
  });

  it('keeps the first page of each slot through round 1, and the rest go uncached', () => {
    const cache = new XbzrleCache(8 * PAGE_SIZE, 32);
    for (let page = 0; page < 32; page++) if (cache.mayTake(page, 1)) cache.sent(page, 1);
    for (let page = 0; page < 32; page++) expect(cache.holds(page)).toBe(page < 8);
  });

  it('lets another page take a slot only once its page has gone unsent for two rounds', () => {
    const cache = new XbzrleCache(8 * PAGE_SIZE, 32);
    cache.sent(3, 1);
    expect(cache.mayTake(11, 2)).toBe(false);
    expect(cache.mayTake(11, 1 + CACHED_PAGE_LIFETIME)).toBe(true);
    cache.sent(3, 2); // sent again in round 2: fresh again
    expect(cache.mayTake(11, 3)).toBe(false);
    expect(cache.mayTake(3, 3)).toBe(true); // its own page always may
    cache.sent(11, 4);
    expect(cache.holds(3)).toBe(false);
    expect(cache.holds(11)).toBe(true);
  });

  it('gives each slot and the scratch page their own 4 KiB', () => {
    const cache = new XbzrleCache(4 * PAGE_SIZE, 100);
    cache.view(cache.scratch).fill(9);
    cache.view(cache.slotOf(6)).fill(6);
    expect(cache.view(cache.slotOf(6)).length).toBe(PAGE_SIZE);
    expect(cache.data.subarray(2 * PAGE_SIZE, 3 * PAGE_SIZE).every((byte) => byte === 6)).toBe(true);
    expect(cache.data.subarray(4 * PAGE_SIZE).every((byte) => byte === 9)).toBe(true);
    expect(cache.data.subarray(0, 2 * PAGE_SIZE).every((byte) => byte === 0)).toBe(true);
  });
});

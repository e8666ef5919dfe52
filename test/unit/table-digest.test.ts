import { beforeAll, describe, expect, it } from 'vitest';
import { initChecksums } from '../../shared/checksum.js';
import { TABLE_CHUNK_PAGES, TableDigest, digestTableFromScratch } from '../../shared/table-digest.js';

/** xorshift32: the same arbitrary updates every run. */
function random(seed: number): () => number {
  let x = seed;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

describe('the incremental page-table digest', () => {
  beforeAll(async () => {
    await initChecksums();
  });

  it('equals a from-scratch digest after arbitrary updates, for tables of whole and partial chunks', () => {
    for (const pageCount of [1, TABLE_CHUNK_PAGES - 1, TABLE_CHUNK_PAGES, 5 * TABLE_CHUNK_PAGES + 17]) {
      const next = random(pageCount + 1);
      const table = new Uint32Array(2 * pageCount);
      const digest = new TableDigest(table);
      expect(digest.digest()).toBe(digestTableFromScratch(table));
      for (let round = 0; round < 20; round++) {
        const touched: number[] = [];
        const updates = 1 + (next() % 40);
        for (let i = 0; i < updates; i++) {
          const page = next() % pageCount;
          table[2 * page] = next();
          table[2 * page + 1] = next();
          touched.push(page);
        }
        // Some rounds say which pages one at a time, some in a batch (unsorted); some refresh before the digest.
        if (round % 2 === 0) for (const page of touched) digest.touch(page);
        else digest.touchAll(touched);
        if (round % 3 === 0) digest.refresh();
        expect(digest.digest()).toBe(digestTableFromScratch(table));
      }
    }
  });

  it('rehashes only the chunks touched since the last refresh', () => {
    const pageCount = 8 * TABLE_CHUNK_PAGES;
    const table = new Uint32Array(2 * pageCount);
    const digest = new TableDigest(table);
    expect(digest.refresh()).toBe(8); // all of it, the first time
    table[2 * 3] = 1;
    table[2 * (TABLE_CHUNK_PAGES + 5)] = 2;
    table[2 * (TABLE_CHUNK_PAGES + 6)] = 3;
    digest.touchAll([3, TABLE_CHUNK_PAGES + 5, TABLE_CHUNK_PAGES + 6]);
    expect(digest.staleChunks).toBe(2);
    expect(digest.refresh()).toBe(2);
    expect(digest.refresh()).toBe(0);
    expect(digest.digest()).toBe(digestTableFromScratch(table));
  });

  it('covers every page: a change to any one page changes the digest', () => {
    const pageCount = 3 * TABLE_CHUNK_PAGES;
    const table = new Uint32Array(2 * pageCount);
    const before = digestTableFromScratch(table);
    for (const page of [0, TABLE_CHUNK_PAGES - 1, TABLE_CHUNK_PAGES, pageCount - 1]) {
      const changed = table.slice();
      changed[2 * page + 1] = 1;
      expect(digestTableFromScratch(changed)).not.toBe(before);
    }
  });

  it('misses a change that nobody touched: the callers must say which pages they change', () => {
    const table = new Uint32Array(2 * TABLE_CHUNK_PAGES * 2);
    const digest = new TableDigest(table);
    const first = digest.digest();
    table[0] = 7;
    expect(digest.digest()).toBe(first);
    digest.touch(0);
    expect(digest.digest()).not.toBe(first);
    expect(digest.digest()).toBe(digestTableFromScratch(table));
  });
});

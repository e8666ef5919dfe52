import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { DirtyLog } from '../../agent/vm/dirty-log.js';

describe('DirtyLog', () => {
  it('harvests marked pages in ascending order and clears them', () => {
    const log = DirtyLog.allocate(1000);
    for (const page of [999, 3, 64, 31, 32, 0, 500]) log.mark(page);
    expect([...log.harvest()]).toEqual([0, 3, 31, 32, 64, 500, 999]);
    expect([...log.harvest()]).toEqual([]);
    expect(log.count()).toBe(0);
    expect(log.isDirty(3)).toBe(false);
  });

  it('reports each page once however often it was marked', () => {
    const log = DirtyLog.allocate(64);
    for (let i = 0; i < 5; i++) log.mark(40);
    expect(log.count()).toBe(1);
    expect([...log.harvest()]).toEqual([40]);
  });

  it('counts dirty pages without clearing them', () => {
    const log = DirtyLog.allocate(256);
    for (const page of [1, 2, 3, 100, 255]) log.mark(page);
    expect(log.count()).toBe(5);
    expect(log.count()).toBe(5);
    expect(log.isDirty(100)).toBe(true);
    expect(log.isDirty(101)).toBe(false);
    expect(log.harvest().length).toBe(5);
  });

  it('clearAll clears every bit and says how many were set', () => {
    const log = DirtyLog.allocate(4096);
    for (let page = 0; page < 4096; page += 3) log.mark(page);
    expect(log.clearAll()).toBe(Math.ceil(4096 / 3));
    expect(log.count()).toBe(0);
    expect([...log.harvest()]).toEqual([]);
    expect(log.clearAll()).toBe(0);
  });

  it('shows a page marked after a harvest in the next harvest', () => {
    const log = DirtyLog.allocate(128);
    log.mark(7);
    log.mark(70);
    expect([...log.harvest()]).toEqual([7, 70]);
    log.mark(70);
    log.mark(8);
    expect([...log.harvest()]).toEqual([8, 70]);
    log.mark(7);
    expect([...log.harvest()]).toEqual([7]);
  });

  it('handles bit 31 of a word (the int32 sign bit)', () => {
    const log = DirtyLog.allocate(96);
    log.mark(31);
    log.mark(63);
    expect(log.words[0]).toBe(-2147483648);
    expect(log.count()).toBe(2);
    expect(log.isDirty(31)).toBe(true);
    expect([...log.harvest()]).toEqual([31, 63]);
    // a full word: all 32 bits, sign bit included
    for (let page = 32; page < 64; page++) log.mark(page);
    expect(log.words[1]).toBe(-1);
    expect(log.count()).toBe(32);
    expect([...log.harvest()]).toEqual(Array.from({ length: 32 }, (_, i) => 32 + i));
    expect(log.words[1]).toBe(0);
  });

  it('works when the page count is not a multiple of 32', () => {
    const log = DirtyLog.allocate(100);
    expect(log.words.length).toBe(4);
    for (let page = 0; page < 100; page++) log.mark(page);
    expect(log.count()).toBe(100);
    const pages = [...log.harvest()];
    expect(pages).toEqual(Array.from({ length: 100 }, (_, i) => i));
    expect(log.count()).toBe(0);
  });

  it('refuses a buffer too small for its page count', () => {
    expect(() => new DirtyLog(new SharedArrayBuffer(8), 65)).toThrow(RangeError);
  });

  it('two views over one buffer see each other: marks through one are harvested through the other', () => {
    const a = DirtyLog.allocate(200);
    const b = new DirtyLog(a.words.buffer as SharedArrayBuffer, 200);
    a.mark(150);
    expect([...b.harvest()]).toEqual([150]);
    expect(a.isDirty(150)).toBe(false);
  });
});

/**
 * A worker marks pages with Atomics.or, exactly as the vCPU does, while the main thread harvests as fast as it
 * can. Plain JavaScript in a string: tsx cannot start a .ts worker on Node 20 (DESIGN.md).
 *
 * mode 'random': `marks` pseudo-random pages, repeats allowed; the worker reports the set it marked.
 * mode 'once':   every page exactly once, in a scrambled order; every page must then appear in exactly one harvest.
 */
const workerCode = `
const { workerData, parentPort } = require('node:worker_threads');
const { log, flags, pageCount, marks, mode } = workerData;
const words = new Int32Array(log);
// flag[0]: main -> worker "go"; flag[1]: worker -> main "done"; flag[2]: harvests the main thread has finished
const flag = new Int32Array(flags);
while (Atomics.load(flag, 0) === 0) Atomics.wait(flag, 0, 0, 50);
let x = 2463534242;
const next = () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x; };
const marked = new Uint8Array(pageCount);
let done = 0;
const mark = (page) => {
  Atomics.or(words, page >>> 5, 1 << (page & 31));
  marked[page] = 1;
  // Every 997 marks, wait until a harvest has both started and finished after this point, so the marks are spread
  // over many harvests whatever the scheduler does (the main thread keeps harvesting while the worker marks).
  if (++done % 997 === 0) {
    const target = Atomics.load(flag, 2) + 2;
    while (Atomics.load(flag, 2) < target) {}
  }
};
if (mode === 'once') {
  const order = Array.from({ length: pageCount }, (_, i) => i);
  for (let i = pageCount - 1; i > 0; i--) { const j = next() % (i + 1); const t = order[i]; order[i] = order[j]; order[j] = t; }
  for (let i = 0; i < pageCount; i++) mark(order[i]);
} else {
  for (let i = 0; i < marks; i++) mark(next() % pageCount);
}
Atomics.store(flag, 1, 1);
parentPort.postMessage(marked);
`;

interface Harvested {
  harvests: Uint32Array[];
  marked: Uint8Array;
}

async function harvestWhileMarking(pageCount: number, mode: 'random' | 'once', marks: number): Promise<Harvested> {
  const log = DirtyLog.allocate(pageCount);
  const flags = new Int32Array(new SharedArrayBuffer(12));
  const worker = new Worker(workerCode, { eval: true, workerData: { log: log.words.buffer, flags: flags.buffer, pageCount, marks, mode } });
  try {
    const reported = new Promise<Uint8Array>((resolve, reject) => {
      worker.once('message', (marked: Uint8Array) => resolve(marked));
      worker.once('error', reject);
    });
    await new Promise<void>((resolve) => worker.once('online', () => resolve()));
    Atomics.store(flags, 0, 1);
    Atomics.notify(flags, 0);
    const harvests: Uint32Array[] = [];
    // Harvest continuously until the worker says it has finished marking, then once more.
    while (Atomics.load(flags, 1) === 0) {
      harvests.push(log.harvest());
      Atomics.add(flags, 2, 1);
    }
    harvests.push(log.harvest());
    return { harvests, marked: await reported };
  } finally {
    await worker.terminate();
  }
}

describe('DirtyLog under a concurrent marker (worker thread)', () => {
  it('loses no mark: the union of all harvests equals the pages the worker marked', async () => {
    const pageCount = 40_001; // not a multiple of 32
    const marks = 30_000; // about half the pages, many of them more than once
    const { harvests, marked } = await harvestWhileMarking(pageCount, 'random', marks);
    const union = new Uint8Array(pageCount);
    let ascending = true;
    for (const harvest of harvests) {
      for (let i = 1; i < harvest.length; i++) if (harvest[i]! <= harvest[i - 1]!) ascending = false;
      for (const page of harvest) union[page] = 1;
    }
    expect(ascending).toBe(true);
    const markedPages = [...marked.keys()].filter((page) => marked[page] === 1);
    const harvestedPages = [...union.keys()].filter((page) => union[page] === 1);
    expect(markedPages.length).toBeGreaterThan(pageCount / 3);
    expect(markedPages.length).toBeLessThan(marks);
    expect(harvestedPages).toEqual(markedPages);
    // the marks really were spread over many harvests
    expect(harvests.filter((h) => h.length > 0).length).toBeGreaterThanOrEqual(Math.floor(marks / 997));
  });

  it('a page marked exactly once turns up in exactly one harvest', async () => {
    const pageCount = 50_003;
    const { harvests } = await harvestWhileMarking(pageCount, 'once', 0);
    const seen = new Uint8Array(pageCount);
    let total = 0;
    let duplicates = 0;
    for (const harvest of harvests) {
      for (const page of harvest) {
        if (seen[page] === 1) duplicates += 1;
        seen[page] = 1;
        total += 1;
      }
    }
    expect(duplicates).toBe(0);
    expect(total).toBe(pageCount);
    expect(seen.every((bit) => bit === 1)).toBe(true);
    expect(harvests.filter((h) => h.length > 0).length).toBeGreaterThanOrEqual(Math.floor(pageCount / 997));
  });
});

import { describe, expect, it } from 'vitest';
import { DirtyLog } from '../../agent/vm/dirty-log.js';
import { HeatMap, type HeatSource, type SentPages } from '../../agent/vm/heat-map.js';
import { WriteStamps } from '../../agent/vm/write-stamps.js';

/** A guest of `pageCount` pages whose writes the test makes itself, as the vCPU does: write, mark, stamp. */
function guest(pageCount: number): HeatSource & { write(page: number): void; sending: SentPages | undefined } {
  const dirtyLog = DirtyLog.allocate(pageCount);
  const writeStamps = WriteStamps.allocate(pageCount);
  let writes = 0;
  return {
    pageCount, dirtyLog, writeStamps, sending: undefined,
    writes: () => writes,
    write(page: number) {
      writes += 1;
      dirtyLog.mark(page);
      writeStamps.record(page, writes);
    },
  };
}

describe('heat map', () => {
  it('leaves every dirty bit as it found it', () => {
    const vm = guest(256);
    for (const page of [0, 5, 31, 32, 100, 255]) vm.write(page);
    vm.sending = { hashes: new Uint32Array(2 * 256).fill(1), pending: { pages: Uint32Array.of(7, 8), next: 0 } };
    const before = Array.from(vm.dirtyLog.words);
    const map = new HeatMap(64);
    map.sample(vm, 0);
    map.sample(vm, 500);
    expect(Array.from(vm.dirtyLog.words)).toEqual(before);
    expect(vm.dirtyLog.harvest()).toEqual(Uint32Array.of(0, 5, 31, 32, 100, 255));
  });

  it('shows pages never written as 0, recent writes hotter than old ones, and groups pages into cells', () => {
    const vm = guest(1024);
    const map = new HeatMap(256); // 4 pages a cell
    map.sample(vm, 0);
    for (let i = 0; i < 1000; i++) vm.write(100); // an old write to page 100 ... many writes meanwhile
    vm.write(4); // then page 4 (cell 1), the latest
    const frame = map.sample(vm, 1000);
    expect(frame.pagesPerCell).toBe(4);
    expect(frame.recency.length).toBe(256);
    expect(frame.recency[0]).toBe(0);
    expect(frame.recency[1]).toBe(255);
    expect(frame.recency[25]).toBeGreaterThan(1);
    expect(frame.current).toBeNull();
  });

  it('counts a page as at the destination only when sent, not dirty since, and not waiting in the round under way', () => {
    const vm = guest(8);
    const hashes = new Uint32Array(16);
    for (const page of [0, 1, 2, 3]) hashes[2 * page] = 1; // sent: 0 to 3
    vm.write(1); // dirtied since it was sent
    vm.sending = { hashes, pending: { pages: Uint32Array.of(2, 3, 6), next: 1 } }; // 2 sent in this round; 3 and 6 wait
    const frame = new HeatMap(8).sample(vm, 0);
    expect(Array.from(frame.current ?? [])).toEqual([255, 0, 255, 0, 0, 0, 0, 0]);
  });
});

/**
 * `ferry vm check`: is this memory image exactly what the `pattern` (or `counters`, or `replay`) workload's registers say it should be?
 * Replays n writes from the seed (DESIGN.md), notes the last write to each page, and compares every page; a torn
 * page, a lost round, a wrong register or a page from the wrong moment all show. A VM that writes its disk has
 * that checked the same way: replay m disk writes from the seed and compare every block of the image. A `counters`
 * VM's writes change a record of a page each, so its working set is replayed whole, write by write, from the filled
 * image it starts as (DESIGN.md, "The counters workload").
 */
import { NET_REGION_PAGES, PAGE_SIZE } from '../shared/constants.js';
import type { VmInfo } from '../shared/protocol.js';
import {
  BLOCK_BYTES, WORDS_PER_BLOCK, WORDS_PER_PAGE, diskStep, fillBlock, fillInitialPages, fillPage, initialDiskY, startsFilled, workloadStep, writeCounter,
  type DiskRegisters, type WorkloadRegisters,
} from '../shared/workloads.js';

export interface PatternCheck {
  ok: boolean;
  writesReplayed: number;
  pagesWritten: number;
  pagesChecked: number;
  /** The first few pages that differ from replay. */
  badPages: number[];
  registersMatch: boolean;
}

export function checkPattern(info: VmInfo, image: Uint8Array): PatternCheck {
  const { seed, wssPages } = info.workload;
  // An addressed VM's network device takes the top of its memory (agent/vm/net/device.ts): its rings are no
  // pattern's business, and the working set stays below them, so only the pages below are checked.
  const pageCount = info.memoryBytes / PAGE_SIZE - (info.address ? NET_REGION_PAGES : 0);
  const lastWrite = new Float64Array(pageCount); // 0 = never written
  const registers: WorkloadRegisters = { x: seed, n: 0 };
  const counters = info.workload.kind === 'counters';
  // A replay VM's writes follow its trace (DESIGN.md, "The replay workload"); others are pattern's, or counters'.
  const next = workloadStep(info.workload.kind === 'replay' ? info.workload : { ...info.workload, kind: counters ? 'counters' : 'pattern' });
  // counters: the working set as the writes leave it, replayed whole (each write changes part of a page).
  const replayed = counters ? new Uint32Array(Math.min(wssPages, pageCount) * WORDS_PER_PAGE) : undefined;
  if (replayed) fillInitialPages(new Uint8Array(replayed.buffer), 0, replayed.length / WORDS_PER_PAGE);
  for (let i = 0; i < info.cpu.n; i++) {
    const page = next(registers);
    lastWrite[page] = registers.n;
    if (replayed) writeCounter(replayed, page, registers);
  }
  let pagesWritten = 0;

  const expected = new Uint32Array(WORDS_PER_PAGE);
  const actual = new Uint32Array(WORDS_PER_PAGE);
  const bytes = new Uint8Array(actual.buffer);
  const badPages: number[] = [];
  for (let page = 0; page < pageCount; page++) {
    const n = lastWrite[page]!;
    if (n > 0) pagesWritten += 1;
    if (replayed && page < replayed.length / WORDS_PER_PAGE) {
      expected.set(replayed.subarray(page * WORDS_PER_PAGE, (page + 1) * WORDS_PER_PAGE));
    } else if (n > 0) {
      fillPage(expected, 0, n);
      expected[2] = page;
    } else if (startsFilled(info.workload)) {
      // A filled guest's page that was never written is still as write 0 left it (shared/workloads.ts).
      fillPage(expected, 0, 0);
      expected[2] = page;
    } else {
      expected.fill(0);
    }
    bytes.set(image.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE));
    let same = true;
    for (let k = 0; k < WORDS_PER_PAGE; k++) {
      if (actual[k] !== expected[k]) {
        same = false;
        break;
      }
    }
    if (!same && badPages.length < 10) badPages.push(page);
  }
  const registersMatch = registers.x === info.cpu.x && wssPages > 0;
  return { ok: badPages.length === 0 && registersMatch, writesReplayed: info.cpu.n, pagesWritten, pagesChecked: pageCount, badPages, registersMatch };
}

/** What a check of a pattern VM's first disk found (DESIGN.md, "Disk writes: disks anyone can check"). */
export interface DiskPatternCheck {
  ok: boolean;
  writesReplayed: number;
  blocksWritten: number;
  blocksChecked: number;
  /** The first few blocks that differ from replay. */
  badBlocks: number[];
  /** How many blocks differ in all. */
  badBlockCount: number;
  /** Register y agrees with a replay of m disk writes. */
  registersMatch: boolean;
}

/**
 * Checks a disk image against a replay of the VM's disk writes, as its chunks arrive (in any order; a chunk that
 * never arrives is zeros, as a hole of a sparse image is). Every block is compared: `finish` compares those that
 * did not arrive against zero.
 */
export class DiskPatternChecker {
  private readonly blockCount: number;
  private readonly lastWrite: Float64Array;
  private readonly seen: Uint8Array;
  private readonly expected = new Uint32Array(WORDS_PER_BLOCK);
  private readonly actual = new Uint32Array(WORDS_PER_BLOCK);
  private readonly writesReplayed: number;
  private readonly registersMatch: boolean;
  private blocksWritten = 0;
  private readonly bad: number[] = [];
  private badCount = 0;

  constructor(info: VmInfo, sizeBytes: number) {
    this.blockCount = Math.floor(sizeBytes / BLOCK_BYTES);
    this.lastWrite = new Float64Array(this.blockCount); // 0 = never written
    this.seen = new Uint8Array(this.blockCount);
    const wss = Math.min(info.workload.diskWssBlocks ?? this.blockCount, this.blockCount);
    const m = info.cpu.m ?? 0;
    const registers: DiskRegisters = { y: initialDiskY(info.workload.seed), m: 0 };
    for (let i = 0; i < m; i++) this.lastWrite[diskStep(registers, wss)] = registers.m;
    for (let block = 0; block < this.blockCount; block++) if (this.lastWrite[block]! > 0) this.blocksWritten += 1;
    this.writesReplayed = m;
    this.registersMatch = info.cpu.y === undefined ? m === 0 : registers.y === info.cpu.y;
  }

  /** Bytes of the image from `offset` (a multiple of 4 KiB). */
  chunk(offset: number, data: Uint8Array): void {
    const first = Math.floor(offset / BLOCK_BYTES);
    const bytes = new Uint8Array(this.actual.buffer);
    for (let i = 0; i * BLOCK_BYTES < data.length && first + i < this.blockCount; i++) {
      const block = first + i;
      this.seen[block] = 1;
      bytes.fill(0);
      bytes.set(data.subarray(i * BLOCK_BYTES, Math.min((i + 1) * BLOCK_BYTES, data.length)));
      this.compare(block);
    }
  }

  finish(): DiskPatternCheck {
    this.actual.fill(0);
    for (let block = 0; block < this.blockCount; block++) if (!this.seen[block]) this.compare(block);
    return {
      ok: this.badCount === 0 && this.registersMatch,
      writesReplayed: this.writesReplayed,
      blocksWritten: this.blocksWritten,
      blocksChecked: this.blockCount,
      badBlocks: [...this.bad].sort((a, b) => a - b),
      badBlockCount: this.badCount,
      registersMatch: this.registersMatch,
    };
  }

  private compare(block: number): void {
    const m = this.lastWrite[block]!;
    if (m > 0) fillBlock(this.expected, 0, block, m);
    else this.expected.fill(0);
    for (let k = 0; k < WORDS_PER_BLOCK; k++) {
      if (this.actual[k] !== this.expected[k]) {
        this.badCount += 1;
        if (this.bad.length < 10) this.bad.push(block);
        return;
      }
    }
  }
}

/** The whole disk image in one buffer, checked. */
export function checkDiskPattern(info: VmInfo, image: Uint8Array): DiskPatternCheck {
  const checker = new DiskPatternChecker(info, image.length);
  checker.chunk(0, image);
  return checker.finish();
}

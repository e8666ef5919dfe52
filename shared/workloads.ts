/**
 * What the vCPU runs: each workload turns its registers into the next page write.
 *
 * pattern (DESIGN.md, "The pattern workload"), exactly:
 *   n = n + 1; x ^= x << 13; x ^= x >>> 17; x ^= x << 5 (uint32); p = x % wssPages;
 *   page p := 1024 little-endian uint32 words, w[0] = n mod 2^32, w[1] = floor(n / 2^32), w[2] = p,
 *   w[k] = w[0] XOR (k * 0x9E3779B1 mod 2^32) for k = 3..1023.
 * hotset: the same page contents; with probability 7/8 (x's low 3 bits not all set) the page is in the hot region
 *   (the first hotPages pages of the working set), otherwise anywhere in the working set.
 * sequential: a scanner: p = (n - 1) mod wssPages, in order; x is unused and stays at the seed.
 * idle: writes nothing.
 * kv: writes no pages of its own: it serves its table over the network (agent/vm/net/kv-table.ts); x and n stay.
 * replay: reproduces a dirty-page trace (shared/trace.ts; DESIGN.md, "The replay workload"), exactly: the trace's
 *   samples, each one's pages ascending, laid end to end are the sequence P of length L; write n (from 1) goes to
 *   page P[(n - 1) mod L], filled as above with n. Write n is due at trace time T(n) = k*S*I + i*I + j*I/c_i, where
 *   (n - 1) = k*L + (position in P), that position is the j-th (from 0) of sample i's c_i pages, S the samples and
 *   I the interval: each interval's pages spread evenly over it, the trace looped. x is unused and stays at the seed.
 * Every workload above writes whole pages with the same fill, so any memory image can be told apart by write.
 *
 * counters (DESIGN.md, "The counters workload"), exactly: counters in a page, as real guests keep them: each write
 * changes one 16-byte record of a page and leaves the rest of it as it was.
 *   n = n + 1; x = xorshift32(x); p = x % wssPages; c = x >>> 24 (the record, 0..255);
 *   words 4c..4c+3 of page p := n mod 2^32, floor(n / 2^32), (that word + 1) mod 2^32, x.
 * Its memory always starts filled (below), whatever `filled` says: no page is zero, so zero pages cannot stand in
 * for what delta compression saves.
 *
 * A filled guest (workload `filled`) starts with every page as write 0 leaves it (fillPage with n = 0: w[0] = w[1]
 * = 0, w[2] = p, w[k] = k * 0x9E3779B1 for k = 3..1023) instead of zeros: no page of it is zero, so a migration
 * must move every byte of it, as it would a guest that has run a while.
 */
import { PAGE_SIZE } from './constants.js';
import type { WorkloadSpec } from './protocol.js';
import type { ReplayTrace } from './trace.js';
import { pagesInSample, traceExtentPages } from './trace-runs.js';

export const WORDS_PER_PAGE = PAGE_SIZE / 4;
const GOLDEN = 0x9e3779b1;

export interface WorkloadRegisters {
  x: number;
  n: number;
}

export function xorshift32(value: number): number {
  let x = value >>> 0;
  x ^= x << 13;
  x >>>= 0;
  x ^= x >>> 17;
  x ^= x << 5;
  return x >>> 0;
}

/** Fills page `page` as write number `n` leaves it. `words` is a Uint32Array over all guest memory. */
export function fillPage(words: Uint32Array, page: number, n: number): void {
  const base = page * WORDS_PER_PAGE;
  const low = n >>> 0;
  words[base] = low;
  words[base + 1] = Math.floor(n / 2 ** 32);
  words[base + 2] = page;
  for (let k = 3; k < WORDS_PER_PAGE; k++) words[base + k] = (low ^ Math.imul(k, GOLDEN)) >>> 0;
}

/**
 * Fills pages [from, to) as a filled guest starts (see above): one copy of a template page each. Page p goes at
 * (p - firstInMemory) x 4 KiB of `memory`: 0 when `memory` is all of guest memory, `from` for a buffer of those pages.
 */
export function fillInitialPages(memory: Uint8Array, from: number, to: number, firstInMemory = 0): void {
  const template = new Uint32Array(WORDS_PER_PAGE);
  fillPage(template, 0, 0);
  const templateBytes = new Uint8Array(template.buffer);
  const words = new Uint32Array(memory.buffer, memory.byteOffset, memory.length >>> 2);
  for (let page = from; page < to; page++) {
    const at = page - firstInMemory;
    memory.set(templateBytes, at * PAGE_SIZE);
    words[at * WORDS_PER_PAGE + 2] = page;
  }
}

/** Whether a workload's memory starts filled rather than zero (see the top of this file). */
export function startsFilled(spec: WorkloadSpec): boolean {
  return spec.filled === true || spec.kind === 'counters';
}

/** Words in a counters record: the write's n (two words), the record's own count of writes, and x. */
export const COUNTER_RECORD_WORDS = 4;

/** One counters write to page `page` (see the top of this file), with the registers just advanced by `workloadStep`. */
export function writeCounter(words: Uint32Array, page: number, registers: WorkloadRegisters): void {
  const at = page * WORDS_PER_PAGE + (registers.x >>> 24) * COUNTER_RECORD_WORDS;
  words[at] = registers.n >>> 0;
  words[at + 1] = Math.floor(registers.n / 2 ** 32);
  words[at + 2] = (words[at + 2]! + 1) >>> 0;
  words[at + 3] = registers.x;
}

/** What one write does to its page: `fillPage` for every workload but counters, which changes one record. */
export type PageWrite = (words: Uint32Array, page: number, registers: WorkloadRegisters) => void;

export function pageWrite(spec: WorkloadSpec): PageWrite {
  if (spec.kind === 'counters') return writeCounter;
  return (words, page, registers) => fillPage(words, page, registers.n);
}

/**
 * Advances the registers by one write and returns the page that write goes to, or -1 for a workload that does not
 * write. The caller then writes the page with `pageWrite(spec)`.
 */
export type NextPage = (registers: WorkloadRegisters) => number;

export function workloadStep(spec: WorkloadSpec): NextPage {
  const wss = spec.wssPages;
  switch (spec.kind) {
    case 'idle':
    case 'kv':
      return () => -1;
    case 'pattern':
    case 'counters':
      return (registers) => {
        registers.n += 1;
        registers.x = xorshift32(registers.x);
        return registers.x % wss;
      };
    case 'hotset': {
      const hot = Math.min(spec.hotPages ?? Math.max(1, Math.floor(wss / 8)), wss);
      return (registers) => {
        registers.n += 1;
        registers.x = xorshift32(registers.x);
        const x = registers.x;
        return (x & 7) !== 7 ? (x >>> 3) % hot : (x >>> 3) % wss;
      };
    }
    case 'sequential':
      return (registers) => {
        registers.n += 1;
        return (registers.n - 1) % wss;
      };
    case 'replay': {
      const plan = replayPlan(spec);
      return (registers) => {
        registers.n += 1;
        return plan.pageOf(registers.n);
      };
    }
    default: {
      const unreachable: never = spec.kind;
      throw new Error(`unknown workload ${String(unreachable)}`);
    }
  }
}

/**
 * How many writes are due `elapsedMs` of guest time after the vCPU's pacing (re)started with `startN` writes done.
 * A constant rate for every workload but replay, whose trace sets its own (above). The vCPU passes elapsed time
 * scaled by auto-converge's throttle, so a throttled replay runs its trace slower, as a throttled guest would.
 */
export type WritesDue = (startN: number, elapsedMs: number) => number;

export function workloadPacing(spec: WorkloadSpec): WritesDue {
  if (spec.kind === 'replay') {
    const plan = replayPlan(spec);
    return (startN, elapsedMs) => plan.writesBefore(plan.dueAtMs(startN + 1) + elapsedMs) - startN;
  }
  const rate = spec.kind === 'idle' || spec.kind === 'kv' ? 0 : spec.rate;
  return (_startN, elapsedMs) => Math.floor((elapsedMs * rate) / 1000);
}

/** A replay trace, indexed for the vCPU and for the check: the page and the due time of any write number. */
export class ReplayPlan {
  /** L: pages in one pass of the trace. */
  readonly length: number;
  /** S x I: one pass's length in trace time. */
  readonly loopMs: number;
  readonly intervalMs: number;
  /** Pages before sample i in a pass (S + 1 entries). */
  private readonly sampleStart: Float64Array;
  /** Each run's first page, and the pages before it in a pass (runs + 1 entries). */
  private readonly runPage: Uint32Array;
  private readonly runStart: Float64Array;
  /** The last run looked up: consecutive writes walk the runs without a search. */
  private cursor = 0;

  constructor(trace: ReplayTrace) {
    const runs = trace.samples.reduce((total, sample) => total + sample.length / 2, 0);
    this.intervalMs = trace.intervalMs;
    this.loopMs = trace.samples.length * trace.intervalMs;
    this.sampleStart = new Float64Array(trace.samples.length + 1);
    this.runPage = new Uint32Array(runs);
    this.runStart = new Float64Array(runs + 1);
    let position = 0;
    let run = 0;
    trace.samples.forEach((sample, i) => {
      this.sampleStart[i] = position;
      let page = 0;
      for (let k = 0; k < sample.length; k += 2) {
        page += sample[k]!;
        this.runPage[run] = page;
        this.runStart[run] = position;
        run += 1;
        page += sample[k + 1]!;
        position += sample[k + 1]!;
      }
    });
    this.sampleStart[trace.samples.length] = position;
    this.runStart[runs] = position;
    this.length = position;
  }

  /** The page write number `n` (from 1) goes to. */
  pageOf(n: number): number {
    const position = (n - 1) % this.length;
    let run = this.cursor;
    if (!(this.runStart[run]! <= position && position < this.runStart[run + 1]!)) {
      run = run + 1 < this.runPage.length && this.runStart[run + 1] === position ? run + 1 : lastAtMost(this.runStart, position);
      this.cursor = run;
    }
    return this.runPage[run]! + (position - this.runStart[run]!);
  }

  /** T(n): when write `n` (from 1) is due, in ms of trace time from the start of the first pass. */
  dueAtMs(n: number): number {
    const loop = Math.floor((n - 1) / this.length);
    const position = n - 1 - loop * this.length;
    const sample = lastAtMost(this.sampleStart, position);
    const inSample = this.sampleStart[sample + 1]! - this.sampleStart[sample]!;
    return loop * this.loopMs + sample * this.intervalMs + ((position - this.sampleStart[sample]!) * this.intervalMs) / inSample;
  }

  /** How many writes are due strictly before trace time `atMs`. */
  writesBefore(atMs: number): number {
    if (atMs <= 0) return 0;
    const loop = Math.floor(atMs / this.loopMs);
    const intoLoop = atMs - loop * this.loopMs;
    const sample = Math.min(Math.floor(intoLoop / this.intervalMs), this.sampleStart.length - 2);
    const inSample = this.sampleStart[sample + 1]! - this.sampleStart[sample]!;
    const intoSample = intoLoop - sample * this.intervalMs;
    return loop * this.length + this.sampleStart[sample]! + Math.min(inSample, Math.ceil((intoSample * inSample) / this.intervalMs));
  }
}

/** The last index i with values[i] <= target (values ascending, values[0] <= target). */
function lastAtMost(values: Float64Array, target: number): number {
  let low = 0;
  let high = values.length - 1;
  while (low < high) {
    const middle = (low + high + 1) >>> 1;
    if (values[middle]! <= target) low = middle;
    else high = middle - 1;
  }
  return low;
}

/**
 * The workload that replays `trace`: its working set reaches the highest page the trace names, and its `rate` is
 * the trace's busiest interval as page writes per second (the vCPU's pacing follows the trace's own timing; the rate
 * tells it how far behind is "more than a second behind", past which it does not burst to catch up).
 */
export function replayWorkload(trace: ReplayTrace): WorkloadSpec {
  const busiest = trace.samples.reduce((most, sample) => Math.max(most, pagesInSample(sample)), 0);
  return { kind: 'replay', rate: Math.max(1, Math.ceil((busiest * 1000) / trace.intervalMs)), wssPages: traceExtentPages(trace.samples), seed: 1, trace };
}

const plans = new WeakMap<ReplayTrace, ReplayPlan>();

/** The plan of a replay VM's trace, made once per trace. */
export function replayPlan(spec: WorkloadSpec): ReplayPlan {
  if (!spec.trace) throw new RangeError('a replay workload carries its trace');
  let plan = plans.get(spec.trace);
  if (!plan) plans.set(spec.trace, (plan = new ReplayPlan(spec.trace)));
  return plan;
}

/**
 * Disk writes of the `pattern` workload (DESIGN.md, "Disk writes: disks anyone can check"), exactly:
 *   m = m + 1; y = xorshift32(y); q = y % diskWssBlocks;
 *   block q := 1024 little-endian uint32 words, v[0] = m mod 2^32, v[1] = floor(m / 2^32), v[2] = q,
 *   v[k] = v[0] XOR (k * 0x85EBCA6B mod 2^32) for k = 3..1023.
 * y starts at seed XOR 0xA5A5A5A5 (1 if that is 0); m at 0. A block never written is zero.
 */
export const BLOCK_BYTES = 4096;
export const WORDS_PER_BLOCK = BLOCK_BYTES / 4;
const DISK_MULTIPLIER = 0x85ebca6b;

export interface DiskRegisters {
  y: number;
  m: number;
}

/** Register y before the first disk write. */
export function initialDiskY(seed: number): number {
  const y = ((seed >>> 0) ^ 0xa5a5a5a5) >>> 0;
  return y === 0 ? 1 : y;
}

/** Whether a workload writes its first disk. */
export function writesDisk(spec: WorkloadSpec): boolean {
  return spec.kind === 'pattern' && (spec.diskRate ?? 0) > 0;
}

/** Fills block `block` as disk write number `m` leaves it, at word `base` of `words`. */
export function fillBlock(words: Uint32Array, base: number, block: number, m: number): void {
  const low = m >>> 0;
  words[base] = low;
  words[base + 1] = Math.floor(m / 2 ** 32);
  words[base + 2] = block;
  for (let k = 3; k < WORDS_PER_BLOCK; k++) words[base + k] = (low ^ Math.imul(k, DISK_MULTIPLIER)) >>> 0;
}

/** Advances the disk registers by one write and returns the block it goes to. */
export function diskStep(registers: DiskRegisters, wssBlocks: number): number {
  registers.m += 1;
  registers.y = xorshift32(registers.y);
  return registers.y % wssBlocks;
}

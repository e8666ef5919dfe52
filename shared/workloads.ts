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
    default: {
      const unreachable: never = spec.kind;
      throw new Error(`unknown workload ${String(unreachable)}`);
    }
  }
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

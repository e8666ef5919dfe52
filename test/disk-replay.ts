/**
 * An independent checker for the disk writes of the `pattern` workload, written from DESIGN.md ("Disk writes: disks
 * anyone can check") and deliberately NOT from shared/workloads.ts or coordinator/pattern-check.ts: if the product
 * and this file disagree, one of them misreads the design.
 *
 * The design, restated:
 * - registers: y (uint32, starts at seed XOR 0xA5A5A5A5, or 1 if that is 0) and m (disk writes done, from 0);
 * - one disk write: m = m + 1; y ^= y << 13; y ^= y >>> 17; y ^= y << 5 (uint32); q = y % diskWssBlocks;
 *   block q (4 KiB from the start of the disk) becomes 1024 little-endian uint32 words: v[0] = m mod 2^32,
 *   v[1] = floor(m / 2^32), v[2] = q, v[k] = v[0] XOR (k * 0x85EBCA6B mod 2^32) for k >= 3;
 * - a block never written is zero.
 * To check an image with registers (y, m): replay m disk writes and compare every block.
 */
import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';

const BLOCK = 4096;
const WORDS = BLOCK / 4;
const MULTIPLIER = 0x85ebca6b;

export interface DiskState {
  seed: number;
  /** Blocks the writes go to, from block 0; absent: the whole image. */
  diskWssBlocks?: number | undefined;
  y: number;
  m: number;
}

export interface DiskReplayResult {
  ok: boolean;
  writesReplayed: number;
  blocksWritten: number;
  /** The lowest up to 10 blocks that differ. */
  badBlocks: number[];
  registersMatch: boolean;
}

export function startY(seed: number): number {
  const y = ((seed >>> 0) ^ 0xa5a5a5a5) >>> 0;
  return y === 0 ? 1 : y;
}

function step(y: number): number {
  let v = y >>> 0;
  v = (v ^ (v << 13)) >>> 0;
  v = (v ^ (v >>> 17)) >>> 0;
  v = (v ^ (v << 5)) >>> 0;
  return v;
}

/** Word k of block q as write m leaves it. */
export function expectedWord(q: number, m: number, k: number): number {
  const low = m % 2 ** 32;
  if (k === 0) return low;
  if (k === 1) return Math.floor(m / 2 ** 32);
  if (k === 2) return q;
  return (low ^ Number((BigInt(k) * BigInt(MULTIPLIER)) % 2n ** 32n)) >>> 0;
}

/** The last write to each block after m writes (0: never), and y after them. */
export function replayDisk(state: Omit<DiskState, 'y'>, blockCount: number): { last: Float64Array; y: number } {
  const wss = state.diskWssBlocks ?? blockCount;
  const last = new Float64Array(blockCount);
  let y = startY(state.seed);
  for (let m = 1; m <= state.m; m++) {
    y = step(y);
    last[y % wss] = m;
  }
  return { last, y };
}

/** Checks a whole image held in memory. */
export function checkDiskImage(image: Uint8Array, state: DiskState): DiskReplayResult {
  return checkBlocks(image.length / BLOCK, state, (q) => new DataView(image.buffer, image.byteOffset + q * BLOCK, BLOCK));
}

/** Checks an image file (as the agent left it on disk), block by block. */
export function checkDiskFile(file: string, state: DiskState): DiskReplayResult {
  const fd = openSync(file, 'r');
  try {
    const blockCount = Math.floor(fstatSync(fd).size / BLOCK);
    const buffer = Buffer.alloc(BLOCK);
    return checkBlocks(blockCount, state, (q) => {
      buffer.fill(0);
      readSync(fd, buffer, 0, BLOCK, q * BLOCK);
      return new DataView(buffer.buffer, buffer.byteOffset, BLOCK);
    });
  } finally {
    closeSync(fd);
  }
}

function checkBlocks(blockCount: number, state: DiskState, read: (q: number) => DataView): DiskReplayResult {
  const { last, y } = replayDisk(state, blockCount);
  const badBlocks: number[] = [];
  let blocksWritten = 0;
  for (let q = 0; q < blockCount; q++) {
    const m = last[q]!;
    if (m > 0) blocksWritten += 1;
    const view = read(q);
    for (let k = 0; k < WORDS; k++) {
      const want = m > 0 ? expectedWord(q, m, k) : 0;
      if (view.getUint32(k * 4, true) !== want) {
        if (badBlocks.length < 10) badBlocks.push(q);
        break;
      }
    }
  }
  const registersMatch = y === state.y;
  return { ok: badBlocks.length === 0 && registersMatch, writesReplayed: state.m, blocksWritten, badBlocks, registersMatch };
}

/**
 * A disk left by a guest that stopped without saying where it was (its host died): the highest write found in it is
 * m, and the image must be exactly what replaying m writes from the start gives (writes land in order, each whole).
 */
export function checkAbandonedDisk(file: string, seed = 1): { m: number; ok: boolean } {
  const image = readFileSync(file);
  let m = 0;
  for (let offset = 0; offset < image.length; offset += 4096) m = Math.max(m, image.readUInt32LE(offset) + image.readUInt32LE(offset + 4) * 2 ** 32);
  const { y } = replayDisk({ seed, m }, image.length / 4096);
  return { m, ok: checkDiskFile(file, { seed, y, m }).ok };
}

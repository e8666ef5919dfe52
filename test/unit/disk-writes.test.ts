/**
 * Disk writes of the pattern workload: the replay (the design's word formula, zero blocks) by the independent
 * checker (test/disk-replay.ts) against the product's (shared/workloads.ts, coordinator/pattern-check.ts), and the
 * block layer: a guest write lands in the image and marks its block, the mirror sees each write before the guest
 * sees it done, a rejecting mirror is dropped and the guest goes on.
 */
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BLOCK_SIZE, BlockBackend } from '../../agent/vm/disk/block-backend.js';
import { BlockMailbox, MailboxSlot } from '../../agent/vm/disk/mailbox.js';
import { DiskPatternChecker, checkDiskPattern } from '../../coordinator/pattern-check.js';
import { createLogger } from '../../shared/log.js';
import type { VmInfo } from '../../shared/protocol.js';
import { diskStep, fillBlock, initialDiskY, type DiskRegisters } from '../../shared/workloads.js';
import { checkDiskImage, expectedWord, startY } from '../disk-replay.js';

/** A disk image as the product's workload leaves it after `m` writes into `blocks` blocks (the first `wss`). */
function productImage(seed: number, blocks: number, m: number, wss = blocks): { image: Uint8Array; y: number } {
  const words = new Uint32Array(blocks * 1024);
  const registers: DiskRegisters = { y: initialDiskY(seed), m: 0 };
  for (let i = 0; i < m; i++) {
    const q = diskStep(registers, wss);
    fillBlock(words, q * 1024, q, registers.m);
  }
  return { image: new Uint8Array(words.buffer), y: registers.y };
}

function infoFor(seed: number, y: number, m: number, diskWssBlocks?: number): VmInfo {
  return {
    name: 'd', host: 'h', state: 'paused', memoryBytes: 4096 * 1024, epoch: 1, cpuModel: { model: 'baseline', flags: [] },
    workload: { kind: 'pattern', rate: 0, wssPages: 1, seed, diskRate: 1, ...(diskWssBlocks ? { diskWssBlocks } : {}) },
    cpu: { x: seed, n: 0, y, m }, lastBlackoutMs: 0, createdAt: '',
  };
}

describe('disk replay', () => {
  it('follows the design: y starts at seed XOR 0xA5A5A5A5 (1 for 0), and the words of a block', () => {
    expect(initialDiskY(7)).toBe((7 ^ 0xa5a5a5a5) >>> 0);
    expect(initialDiskY(0xa5a5a5a5)).toBe(1);
    expect(startY(0xa5a5a5a5)).toBe(1);
    const words = new Uint32Array(1024);
    const m = 2 ** 32 + 5; // past 32 bits: v[1] carries the high part
    fillBlock(words, 0, 77, m);
    for (let k = 0; k < 1024; k++) expect(words[k], `word ${k}`).toBe(expectedWord(77, m, k));
    expect([words[0], words[1], words[2], words[3]]).toEqual([5, 1, 77, (5 ^ Math.imul(3, 0x85ebca6b)) >>> 0]);
  });

  it('passes an image the workload wrote, and both checkers agree, over part of the disk or all of it', () => {
    for (const wss of [64, 16]) {
      const { image, y } = productImage(9, 64, 300, wss);
      const independent = checkDiskImage(image, { seed: 9, diskWssBlocks: wss, y, m: 300 });
      expect(independent).toMatchObject({ ok: true, writesReplayed: 300, registersMatch: true });
      const product = checkDiskPattern(infoFor(9, y, 300, wss === 64 ? undefined : wss), image);
      expect(product).toMatchObject({ ok: true, blocksChecked: 64, blocksWritten: independent.blocksWritten, badBlocks: [] });
      if (wss === 16) expect(independent.blocksWritten).toBeLessThanOrEqual(16);
    }
  });

  it('finds a dirty never-written block, a block from the wrong moment and a wrong register, and says which blocks', () => {
    const { image, y } = productImage(3, 32, 20, 8); // blocks 8.. are never written
    const state = { seed: 3, diskWssBlocks: 8, y, m: 20 };
    const dirtyZero = image.slice();
    dirtyZero[20 * 4096 + 100] = 1;
    expect(checkDiskImage(dirtyZero, state)).toMatchObject({ ok: false, badBlocks: [20] });
    expect(checkDiskPattern(infoFor(3, y, 20, 8), dirtyZero)).toMatchObject({ ok: false, badBlocks: [20], badBlockCount: 1 });
    // The image after 20 writes is not the image after 19: a block is one write ahead.
    expect(checkDiskImage(image, { ...state, m: 19, y: startY(3) }).ok).toBe(false);
    const behind = checkDiskPattern(infoFor(3, y, 19, 8), image);
    expect(behind.ok).toBe(false);
    expect(behind.registersMatch).toBe(false);
    expect(behind.badBlocks.length).toBe(1);
  });

  it('checks a streamed image with holes: what does not arrive is zero, and is checked as such', () => {
    const { image, y } = productImage(5, 512, 40);
    const checker = new DiskPatternChecker(infoFor(5, y, 40), image.length);
    const chunk = 64 * 4096;
    const zero = new Uint8Array(chunk);
    for (let offset = 0; offset < image.length; offset += chunk) {
      const data = image.subarray(offset, offset + chunk);
      if (!Buffer.from(data).equals(Buffer.from(zero))) checker.chunk(offset, data);
    }
    expect(checker.finish()).toMatchObject({ ok: true, blocksChecked: 512 });
    // A chunk left out that held writes is found.
    const lossy = new DiskPatternChecker(infoFor(5, y, 40), image.length);
    expect(lossy.finish().ok).toBe(false);
  });
});

/** The guest's side of one write, without blocking the test's thread: the mailbox's ordering, awaited. */
async function guestWrite(mailbox: BlockMailbox, block: number, m: number): Promise<number> {
  fillBlock(mailbox.words, 0, block, m);
  const { header } = mailbox;
  Atomics.store(header, MailboxSlot.BLOCK, block);
  const request = (Atomics.load(header, MailboxSlot.REQ_SEQ) + 1) | 0;
  Atomics.store(header, MailboxSlot.REQ_SEQ, request);
  Atomics.notify(header, MailboxSlot.REQ_SEQ);
  for (;;) {
    const done = Atomics.load(header, MailboxSlot.DONE_SEQ);
    if (done === request) return Atomics.load(header, MailboxSlot.STATUS);
    const waiting = Atomics.waitAsync(header, MailboxSlot.DONE_SEQ, done, 5000);
    if (waiting.async) await waiting.value;
  }
}

describe('block layer', () => {
  let dir: string;
  let backend: BlockBackend | undefined;
  const log = createLogger('test', 'error', () => undefined);
  const BLOCKS = 64;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-disk-'));
    for (const name of ['a.img', 'b.img']) {
      await writeFile(path.join(dir, name), '');
      await truncate(path.join(dir, name), BLOCKS * BLOCK_SIZE);
    }
  });
  afterEach(async () => {
    await backend?.stop();
    backend = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  it('puts a guest write into the image at block x 4096 and marks the block, then says done', async () => {
    const mailbox = BlockMailbox.allocate();
    expect(mailbox.blockCount).toBe(0);
    backend = await BlockBackend.start(mailbox, path.join(dir, 'a.img'), BLOCKS, log);
    expect(mailbox.blockCount).toBe(BLOCKS);
    expect(backend.file).toBe(path.join(dir, 'a.img'));
    expect(await guestWrite(mailbox, 5, 1)).toBe(0);
    const image = await readFile(path.join(dir, 'a.img'));
    const words = new Uint32Array(image.buffer, image.byteOffset, image.length / 4);
    expect([words[5 * 1024], words[5 * 1024 + 1], words[5 * 1024 + 2]]).toEqual([1, 0, 5]);
    expect(words.subarray(0, 5 * 1024).every((word) => word === 0)).toBe(true);
    expect(backend.dirty.harvest()).toEqual(Uint32Array.from([5]));
    // A block past the disk is refused, and nothing is marked.
    expect(await guestWrite(mailbox, BLOCKS, 2)).toBe(1);
    expect(backend.dirty.count()).toBe(0);
  });

  it('gives the mirror each write before the guest sees it done; a rejecting mirror is dropped once and the guest goes on', async () => {
    const mailbox = BlockMailbox.allocate();
    backend = await BlockBackend.start(mailbox, path.join(dir, 'a.img'), BLOCKS, log);
    const seen: { block: number; m: number; doneBefore: boolean }[] = [];
    backend.setMirror(async (block, data) => {
      const request = Atomics.load(mailbox.header, MailboxSlot.REQ_SEQ);
      seen.push({ block, m: new Uint32Array(data.buffer, data.byteOffset, 1)[0]!, doneBefore: Atomics.load(mailbox.header, MailboxSlot.DONE_SEQ) === request });
      await new Promise((resolve) => setTimeout(resolve, 5));
    });
    await guestWrite(mailbox, 1, 1);
    await guestWrite(mailbox, 2, 2);
    expect(seen).toEqual([{ block: 1, m: 1, doneBefore: false }, { block: 2, m: 2, doneBefore: false }]);

    const errors: unknown[] = [];
    let calls = 0;
    backend.setMirror(async () => {
      calls += 1;
      throw new Error('mirror gone');
    }, (error) => errors.push(error));
    expect(await guestWrite(mailbox, 3, 3)).toBe(0);
    expect(await guestWrite(mailbox, 4, 4)).toBe(0);
    expect(calls).toBe(1);
    expect(errors).toHaveLength(1);
    expect(String(errors[0])).toContain('mirror gone');
    expect(backend.dirty.harvest()).toEqual(Uint32Array.from([1, 2, 3, 4]));
  });

  it('retargets to another image while no write is in flight, and stops with the disk unserved', async () => {
    const mailbox = BlockMailbox.allocate();
    backend = await BlockBackend.start(mailbox, path.join(dir, 'a.img'), BLOCKS, log);
    await guestWrite(mailbox, 7, 1);
    await backend.retarget(path.join(dir, 'b.img'));
    expect(backend.file).toBe(path.join(dir, 'b.img'));
    await guestWrite(mailbox, 8, 2);
    const a = await readFile(path.join(dir, 'a.img'));
    const b = await readFile(path.join(dir, 'b.img'));
    expect(a.readUInt32LE(7 * 4096)).toBe(1);
    expect(a.readUInt32LE(8 * 4096)).toBe(0);
    expect(b.readUInt32LE(8 * 4096)).toBe(2);
    await backend.stop();
    expect(mailbox.blockCount).toBe(0);
    backend = undefined;
  });

  it('serves a guest thread that waits with Atomics.wait, and reports its write latency', async () => {
    const mailbox = BlockMailbox.allocate();
    backend = await BlockBackend.start(mailbox, path.join(dir, 'a.img'), BLOCKS, log);
    expect(backend.latency()).toEqual({ count: 0, p50Ms: 0, p99Ms: 0, maxMs: 0 });
    const mailboxUrl = new URL('../../dist/agent/vm/disk/mailbox.js', import.meta.url).href;
    const guest = new Worker(`
      const { workerData, parentPort } = require('node:worker_threads');
      import(${JSON.stringify(mailboxUrl)}).then(({ BlockMailbox }) => {
        const mailbox = new BlockMailbox(workerData);
        const results = [];
        for (let i = 0; i < 20; i++) {
          mailbox.words.fill(i + 1);
          results.push(mailbox.submit(i, () => false));
        }
        parentPort.postMessage(results);
      });`, { eval: true, workerData: mailbox.buffer });
    try {
      const results = await new Promise<boolean[]>((resolve, reject) => {
        guest.once('message', resolve);
        guest.once('error', reject);
      });
      expect(results).toEqual(Array(20).fill(true));
    } finally {
      await guest.terminate();
    }
    const image = await readFile(path.join(dir, 'a.img'));
    for (let i = 0; i < 20; i++) expect(image.readUInt32LE(i * 4096 + 4092)).toBe(i + 1);
    const latency = backend.latency(true);
    expect(latency.count).toBe(20);
    expect(latency.p50Ms).toBeGreaterThan(0);
    expect(latency.p99Ms).toBeGreaterThanOrEqual(latency.p50Ms);
    expect(latency.maxMs).toBeGreaterThanOrEqual(latency.p99Ms - 0.001);
    expect(backend.latency().count).toBe(0);
  });
});

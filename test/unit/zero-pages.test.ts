/**
 * Zero pages as a flag (page-frame.ts, zero-page.ts): the sender sends no bytes for an all-zero page, the
 * installer (page-install.ts) leaves a never-written page alone and clears a written one, and either way the
 * destination's memory and page-hash table come out exactly as the source's. A real VirtualMachine (vCPU parked)
 * sends over both kinds of FrameSocket.
 */
import { describe, expect, it, onTestFinished } from 'vitest';
import { PageInstaller } from '../../agent/migration/page-install.js';
import { PageSender } from '../../agent/migration/page-sender.js';
import { VirtualMachine } from '../../agent/vm/vm.js';
import { PAGE_SIZE } from '../../shared/constants.js';
import type { FrameSocket } from '../../shared/frame-socket.js';
import {
  ZERO_PAGE_BIT, decodePageHeader, encodePageHeader, expectedDataBytes, pageHeaderBytes, type PageHeader,
} from '../../shared/page-frame.js';
import { PageHasher, allocateGuestMemory } from '../../shared/page-hash.js';
import { ZERO_PAGE_HASH, isZeroPage } from '../../shared/zero-page.js';
import { bothPairs, type PairFactory } from '../socket-pairs.js';

const MEMORY_BYTES = 8 * 1024 * 1024;

/** Pages 0-99 zero, 100-299 data, then every third page zero: runs and scattered pages of both kinds. */
function isDataPage(page: number): boolean {
  if (page < 100) return false;
  if (page < 300) return true;
  return page % 3 !== 0;
}

async function createGuest(): Promise<VirtualMachine> {
  const vm = await VirtualMachine.create({ name: 'zeros', memoryBytes: MEMORY_BYTES, workload: { kind: 'idle', rate: 0, wssPages: 1, seed: 1 } }, 'running');
  const words = new Uint32Array(vm.memory.buffer, 0, MEMORY_BYTES / 4);
  for (let page = 0; page < vm.pageCount; page++) {
    if (!isDataPage(page)) continue;
    // Only the last word of the page is non-zero in some: a page "nearly" zero must still travel with its bytes.
    if (page % 5 === 0) words[page * 1024 + 1023] = 1;
    else for (let k = 0; k < 1024; k++) words[page * 1024 + k] = (Math.imul(page * 1024 + k, 0x9e3779b1) | 1) >>> 0;
  }
  return vm;
}

interface Receiver {
  memory: Uint8Array;
  installer: PageInstaller;
  dataBytes: number;
  /** Frames installed. */
  frames: number;
  mismatches: number;
}

/** A destination as target.ts is one: fresh zero memory, headers decoded, frames installed in order. */
function receive(socket: FrameSocket, pageCount: number): Receiver {
  const wasm = allocateGuestMemory(pageCount * PAGE_SIZE);
  const memory = new Uint8Array(wasm.buffer, 0, pageCount * PAGE_SIZE);
  const receiver: Receiver = { memory, installer: new PageInstaller(memory, new PageHasher(wasm), pageCount), dataBytes: 0, frames: 0, mismatches: 0 };
  let pending: PageHeader | undefined;
  socket.onMessage((frame) => {
    if (pending) {
      expect(frame.length).toBe(expectedDataBytes(pending));
      receiver.dataBytes += frame.length;
      receiver.mismatches += receiver.installer.install(pending, frame);
      receiver.frames += 1;
      pending = undefined;
      return;
    }
    const header = decodePageHeader(frame, pageCount);
    if (header.dataPages > 0) {
      pending = header;
      return;
    }
    receiver.mismatches += receiver.installer.install(header, Buffer.alloc(0));
    receiver.frames += 1;
  });
  return receiver;
}

/** Waits until `frames` frames are installed (the sender has handed every byte to the socket already). */
async function installed(receiver: Receiver, frames: number): Promise<void> {
  for (let i = 0; i < 3000 && receiver.frames < frames; i++) await new Promise((resolve) => setTimeout(resolve, 10));
  expect(receiver.frames).toBe(frames);
}

describe.each(bothPairs)('zero pages over $name', (factory: PairFactory) => {
  it('travel as flags with no bytes, and the destination ends with the source\'s memory and page-hash table', async () => {
    const vm = await createGuest();
    onTestFinished(() => vm.destroy());
    const pair = await factory.open();
    onTestFinished(() => pair.destroy());
    const receiver = receive(pair.b, vm.pageCount);
    const sender = new PageSender(pair.a, vm, { maxBandwidthBytesPerSec: 0, signal: new AbortController().signal, now: () => performance.now() });

    const all = Uint32Array.from({ length: vm.pageCount }, (_, page) => page);
    const dataPages = all.filter(isDataPage).length;
    const first = await sender.send(all, 1, 0);
    await installed(receiver, Math.ceil(vm.pageCount / 256));
    expect(first).toEqual({ pagesSent: vm.pageCount, bytesSent: dataPages * PAGE_SIZE, zeroPages: vm.pageCount - dataPages });
    expect(receiver.dataBytes).toBe(dataPages * PAGE_SIZE);
    expect(receiver.mismatches).toBe(0);
    expect(Buffer.compare(receiver.memory, vm.memory)).toBe(0);
    expect([...receiver.installer.table]).toEqual([...sender.hashes]);

    // A later round: some data pages became zero (the installer must clear them), some zero pages got data.
    const words = new Uint32Array(vm.memory.buffer, 0, MEMORY_BYTES / 4);
    const changed = [5, 6, 150, 151, 152, 400, 401, 1200];
    for (const page of changed) {
      if (isDataPage(page)) words.fill(0, page * 1024, (page + 1) * 1024);
      else words[page * 1024 + 7] = 0xabcdef;
    }
    const before = receiver.frames;
    const second = await sender.send(Uint32Array.from(changed), 2, 0);
    await installed(receiver, before + 1);
    expect(second.zeroPages).toBe(changed.filter(isDataPage).length);
    expect(receiver.mismatches).toBe(0);
    expect(Buffer.compare(receiver.memory, vm.memory)).toBe(0);
    expect([...receiver.installer.table]).toEqual([...sender.hashes]);
  });
});

describe('the zero-page flag', () => {
  it('is bit 31 of a page entry: decoded as the page number and a zero mark, with no data bytes for it', () => {
    const entries = [3, (4 | ZERO_PAGE_BIT) >>> 0, 9];
    const hashes = new Uint32Array([1, 2, ZERO_PAGE_HASH[0]!, ZERO_PAGE_HASH[1]!, 5, 6]);
    const header = decodePageHeader(encodePageHeader(Buffer.alloc(pageHeaderBytes(3)), 2, 0, entries, hashes, 3), 16);
    expect([...header.pages]).toEqual([3, 4, 9]);
    expect([...header.zero]).toEqual([0, 1, 0]);
    expect(header.dataPages).toBe(2);
    expect(expectedDataBytes(header)).toBe(2 * PAGE_SIZE);
  });

  it('still range-checks a zero page\'s number', () => {
    const frame = encodePageHeader(Buffer.alloc(pageHeaderBytes(1)), 1, 0, [(20 | ZERO_PAGE_BIT) >>> 0], new Uint32Array(2), 1);
    expect(() => decodePageHeader(frame, 16)).toThrow(/page 20 is outside/);
  });

  it('counts a zero page that came with another page\'s hash as a mismatch', () => {
    const wasm = allocateGuestMemory(4 * PAGE_SIZE);
    const memory = new Uint8Array(wasm.buffer, 0, 4 * PAGE_SIZE);
    const installer = new PageInstaller(memory, new PageHasher(wasm), 4);
    const frame = encodePageHeader(Buffer.alloc(pageHeaderBytes(1)), 1, 0, [(2 | ZERO_PAGE_BIT) >>> 0], new Uint32Array([7, 7]), 1);
    expect(installer.install(decodePageHeader(frame, 4), Buffer.alloc(0))).toBe(1);
    expect(isZeroPage(memory, 2)).toBe(true);
  });
});

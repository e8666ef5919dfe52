/**
 * Delta pages end to end without sockets: the real page sender with an XBZRLE encoder (agent/migration/
 * xbzrle-encoder.ts) packs rounds of a real guest's pages, and both readers take them: the page stream's reader
 * (page-stream-reader.ts) fed in reads of any size, and the WebSocket path's receiver (page-receiver.ts) message by
 * message. The destination must end with the source's memory and page-hash table, with no mismatch; a delta that
 * does not check out is a protocol error that writes nothing outside its page.
 */
import { describe, expect, it, onTestFinished } from 'vitest';
import { PageReceiver } from '../../agent/migration/page-receiver.js';
import { PageInstaller } from '../../agent/migration/page-install.js';
import { PageSender } from '../../agent/migration/page-sender.js';
import { PageStreamReader } from '../../agent/migration/page-stream-reader.js';
import { feedStream as feed } from '../stream-feed.js';
import { XbzrleCache } from '../../agent/migration/xbzrle-cache.js';
import { XbzrleEncoder } from '../../agent/migration/xbzrle-encoder.js';
import { VirtualMachine } from '../../agent/vm/vm.js';
import { PAGE_SIZE } from '../../shared/constants.js';
import { FerryError } from '../../shared/errors.js';
import type { FrameSocket } from '../../shared/frame-socket.js';
import { DELTA_PAGE_BIT, PAGE_FLAG_PAUSED, PAGE_FLAG_POSTCOPY, ZERO_PAGE_BIT, decodePageHeader, encodePageHeader, isPageHeader, pageHeaderBytes } from '../../shared/page-frame.js';
import { PageHasher, allocateGuestMemory } from '../../shared/page-hash.js';
import { XBZRLE_MAX_DELTA_BYTES } from '../../shared/xbzrle.js';
import { fillInitialPages } from '../../shared/workloads.js';

const PAGE_COUNT = 1024;
const CACHE_PAGES = 300;

/** A FrameSocket that keeps a copy of every message, as the wire would carry it, and takes each at once. */
function recordingSocket(): { socket: FrameSocket; messages: Buffer[] } {
  const messages: Buffer[] = [];
  const socket: FrameSocket = {
    send: (data, callback) => {
      messages.push(Buffer.from(data));
      setImmediate(() => callback?.());
    },
    close: () => undefined,
    onMessage: () => undefined,
    onClose: () => undefined,
  };
  return { socket, messages };
}

function destinationMemory(): { memory: Uint8Array; hasher: PageHasher } {
  const wasm = allocateGuestMemory(PAGE_COUNT * PAGE_SIZE);
  return { memory: new Uint8Array(wasm.buffer, 0, PAGE_COUNT * PAGE_SIZE), hasher: new PageHasher(wasm) };
}

/** A filled guest (vCPU idle), a sender with a 300-page cache, and three rounds of small and large changes. */
async function sendRounds(): Promise<{ vm: VirtualMachine; sender: PageSender; encoder: XbzrleEncoder; rounds: Buffer[][] }> {
  const vm = await VirtualMachine.create({ name: 'deltas', memoryBytes: PAGE_COUNT * PAGE_SIZE, workload: { kind: 'idle', rate: 0, wssPages: 1, seed: 1 } }, 'running');
  onTestFinished(() => vm.destroy());
  fillInitialPages(vm.memory, 0, PAGE_COUNT);
  const encoder = new XbzrleEncoder(new XbzrleCache(CACHE_PAGES * PAGE_SIZE, PAGE_COUNT), vm.memory, vm.hasher);
  const { socket, messages } = recordingSocket();
  const sender = new PageSender(socket, vm, { maxBandwidthBytesPerSec: 0, signal: new AbortController().signal, now: () => performance.now(), xbzrle: encoder });
  const words = new Uint32Array(vm.memory.buffer, 0, (PAGE_COUNT * PAGE_SIZE) / 4);
  const rounds: Buffer[][] = [];
  const take = (): Buffer[] => messages.splice(0);

  await sender.send(Uint32Array.from({ length: PAGE_COUNT }, (_, page) => page), 1, 0);
  rounds.push(take());
  // Round 2: a counter bumped in cached pages and in uncached ones; one cached page rewritten whole; one zeroed.
  const round2 = [0, 1, 5, 17, 18, 19, 150, 299, 300, 301, 640, 1023];
  for (const page of round2) words[page * 1024 + ((page * 37) % 1024)]! += 1;
  for (let k = 0; k < 1024; k++) words[150 * 1024 + k] = Math.imul(k + 1, 0x85ebca6b) >>> 0;
  words.fill(0, 17 * 1024, 18 * 1024);
  await sender.send(Uint32Array.from(round2), 2, 0);
  rounds.push(take());
  // Round 3 (paused): the zeroed page comes back with one word, an unchanged page goes as an empty delta, first and last bytes.
  const round3 = [0, 5, 17, 18, 299];
  words[17 * 1024 + 3] = 77;
  vm.memory[18 * PAGE_SIZE]! ^= 0xff;
  vm.memory[19 * PAGE_SIZE - 1]! ^= 0xff;
  vm.memory[299 * PAGE_SIZE + 4095]! ^= 1;
  await sender.send(Uint32Array.from(round3), 3, PAGE_FLAG_PAUSED);
  rounds.push(take());
  return { vm, sender, encoder, rounds };
}

describe('XBZRLE delta pages', () => {
  it('reach the page stream\'s reader in reads of any size and leave the source\'s memory, verified', async () => {
    const { vm, sender, encoder, rounds } = await sendRounds();
    const stats = encoder.report(undefined);
    // Round 2: 0, 1, 5, 18, 19, 150, 299 were cached (17 too, now zero); 300, 301, 640, 1023 were not.
    expect(stats.cacheHits).toBe(8 + 5);
    expect(stats.cacheMisses).toBe(4);
    expect(stats.deltaPages).toBeGreaterThanOrEqual(6 + 4);
    expect(stats.bytesSaved).toBeGreaterThan(10 * (PAGE_SIZE - 64));
    const headers = rounds.flat().filter(isPageHeader).map((message) => decodePageHeader(message, PAGE_COUNT));
    // Page 150, rewritten whole, went whole; page 17 went as a zero page; page 5 in round 3, unchanged, as an empty delta.
    const round2 = headers.find((header) => header.round === 2)!;
    expect(round2.delta[round2.pages.indexOf(150)]).toBe(0);
    expect(round2.zero[round2.pages.indexOf(17)]).toBe(1);
    const round3 = headers.find((header) => header.round === 3)!;
    expect(round3.deltaBytes[round3.pages.indexOf(5)]).toBe(0);
    expect(round3.delta[round3.pages.indexOf(5)]).toBe(1);

    for (const seed of [1, 2, 3]) {
      const dest = destinationMemory();
      const installer = new PageInstaller(dest.memory, dest.hasher, PAGE_COUNT);
      let mismatches = 0;
      let stagedDeltaFrames = 0;
      const reader = new PageStreamReader({
        pageCount: PAGE_COUNT,
        memory: dest.memory,
        onFrame: (header, staged) => {
          if (header.deltaPages > 0 && staged) stagedDeltaFrames += 1;
          mismatches += staged ? installer.install(header, staged) : installer.installInPlace(header);
        },
      });
      for (const round of rounds) feed(reader, Buffer.concat(round), seed);
      expect(reader.midFrame).toBe(false);
      expect(mismatches).toBe(0);
      expect(stagedDeltaFrames).toBe(2);
      expect(Buffer.compare(dest.memory, vm.memory)).toBe(0);
      expect([...installer.table]).toEqual([...sender.hashes]);
      expect(installer.decodeMs).toBeGreaterThan(0);
    }
  });

  it('are never packed after a post-copy switch: those frames carry whole pages', async () => {
    const { vm, sender, encoder } = await sendRounds();
    const before = encoder.report(undefined);
    const { socket, messages } = recordingSocket();
    const postcopy = new PageSender(socket, vm, { maxBandwidthBytesPerSec: 0, signal: new AbortController().signal, now: () => performance.now(), xbzrle: encoder, hashes: sender.hashes });
    vm.memory[5 * PAGE_SIZE]! ^= 0x10;
    await postcopy.send(Uint32Array.from([0, 5, 299]), 4, PAGE_FLAG_PAUSED | PAGE_FLAG_POSTCOPY);
    const header = decodePageHeader(messages.find(isPageHeader)!, PAGE_COUNT);
    expect(header.deltaPages).toBe(0);
    expect(header.dataBytes).toBe(3 * PAGE_SIZE);
    expect(encoder.report(undefined)).toEqual(before);
  });

  it('reach the WebSocket path\'s receiver message by message, with the same result', async () => {
    const { vm, sender, rounds } = await sendRounds();
    const dest = destinationMemory();
    let mismatches = 0;
    const receiver = new PageReceiver(dest.memory, dest.hasher, PAGE_COUNT, { afterInstall: (_header, count) => void (mismatches += count) });
    for (const message of rounds.flat()) expect(receiver.takeMessage(message)).toBe(true);
    expect(receiver.midFrame).toBe(false);
    expect(mismatches).toBe(0);
    expect(Buffer.compare(dest.memory, vm.memory)).toBe(0);
    expect([...receiver.installer.table]).toEqual([...sender.hashes]);
    expect(receiver.bytes).toBe(sender.streamBytes);
  });

  it('refuse a delta that runs past its page, writing nothing outside it, on either path', async () => {
    const dest = destinationMemory();
    dest.memory.fill(0x5a);
    const hashes = new Uint32Array(4);
    // Page 8 whole, then page 9 as a delta whose changed run of 4000 bytes starts at byte 200: past the page.
    const delta = Buffer.from([0xc8, 0x01, 0xa0, 0x1f, ...new Array<number>(100).fill(1)]);
    const header = encodePageHeader(Buffer.alloc(pageHeaderBytes(2, 1)), 2, 0, [8, (9 | DELTA_PAGE_BIT) >>> 0], hashes, 2, [delta.length]);
    const data = Buffer.concat([Buffer.alloc(PAGE_SIZE, 3), delta]);
    const before = Buffer.from(dest.memory);

    const reader = new PageStreamReader({ pageCount: PAGE_COUNT, memory: dest.memory, onFrame: (frame, staged) => void new PageInstaller(dest.memory, dest.hasher, PAGE_COUNT).install(frame, staged!) });
    expect(() => feed(reader, Buffer.concat([header, data]), 9)).toThrow(/bad XBZRLE delta.*ends past/);
    // Page 8 (whole, before it) may be in; nothing else changed, page 9 included.
    expect(Buffer.compare(dest.memory.subarray(9 * PAGE_SIZE), before.subarray(9 * PAGE_SIZE))).toBe(0);
    expect(Buffer.compare(dest.memory.subarray(0, 8 * PAGE_SIZE), before.subarray(0, 8 * PAGE_SIZE))).toBe(0);

    const receiver = new PageReceiver(dest.memory, dest.hasher, PAGE_COUNT);
    receiver.takeMessage(header);
    let caught: unknown;
    try {
      receiver.takeMessage(data);
    } catch (error) {
      caught = error;
    }
    expect((caught as FerryError).code).toBe('FERRY_ERR_PROTOCOL');
    expect(Buffer.compare(dest.memory.subarray(9 * PAGE_SIZE), before.subarray(9 * PAGE_SIZE))).toBe(0);
  });

  it('refuse a header whose delta entries do not add up, before a page byte is read', () => {
    const hashes = new Uint32Array(4);
    const cases: [string, Buffer, RegExp][] = [
      ['more deltas announced than pages', (() => {
        const bytes = encodePageHeader(Buffer.alloc(pageHeaderBytes(2, 2)), 2, 0, [1, (2 | DELTA_PAGE_BIT) >>> 0], hashes, 2, [10, 10]);
        bytes.writeUInt32LE(3, 12);
        return bytes;
      })(), /3 delta pages in a frame of 2/],
      ['fewer delta entries than announced', encodePageHeader(Buffer.alloc(pageHeaderBytes(2, 2)), 2, 0, [1, (2 | DELTA_PAGE_BIT) >>> 0], hashes, 2, [10, 10]), /1 delta pages where the header announced 2/],
      ['more delta entries than announced', encodePageHeader(Buffer.alloc(pageHeaderBytes(2, 1)), 2, 0, [(1 | DELTA_PAGE_BIT) >>> 0, (2 | DELTA_PAGE_BIT) >>> 0], hashes, 2, [10]), /more delta pages than the 1/],
      ['a delta longer than a delta may be', encodePageHeader(Buffer.alloc(pageHeaderBytes(1, 1)), 2, 0, [(1 | DELTA_PAGE_BIT) >>> 0], hashes, 1, [XBZRLE_MAX_DELTA_BYTES + 1]), /more than the 3072/],
      ['a page both zero and delta', encodePageHeader(Buffer.alloc(pageHeaderBytes(1, 1)), 2, 0, [(1 | DELTA_PAGE_BIT | ZERO_PAGE_BIT) >>> 0], hashes, 1, [4]), /both a zero page and a delta/],
      ['delta pages after a post-copy switch', encodePageHeader(Buffer.alloc(pageHeaderBytes(1, 1)), 2, PAGE_FLAG_PAUSED | PAGE_FLAG_POSTCOPY, [(1 | DELTA_PAGE_BIT) >>> 0], hashes, 1, [4]), /a post-copy frame carries 1 delta pages/],
    ];
    for (const [what, bytes, message] of cases) {
      const dest = destinationMemory();
      const reader = new PageStreamReader({ pageCount: PAGE_COUNT, memory: dest.memory, onFrame: () => undefined });
      let caught: unknown;
      try {
        feed(reader, Buffer.concat([bytes, Buffer.alloc(64 * 1024, 7)]), 11);
      } catch (error) {
        caught = error;
      }
      expect(caught, what).toBeInstanceOf(FerryError);
      expect((caught as FerryError).message, what).toMatch(message);
      expect(dest.memory.every((byte) => byte === 0), what).toBe(true);
    }
  });
});

/**
 * The page stream's reader (agent/migration/page-stream-reader.ts), fed as a socket would feed it: each read fills
 * part of the buffer the reader chose, in pieces of any size. Frames of every kind (a run, a few runs, scattered
 * pages, zero pages) must land where they belong, installed and hashed by the real installer; a header that does not
 * check out must throw before any page byte is read.
 */
import { describe, expect, it } from 'vitest';
import { PAGE_FLAG_PAUSED, ZERO_PAGE_BIT, encodePageHeader, pageHeaderBytes, type PageHeader } from '../../shared/page-frame.js';
import { PAGE_SIZE } from '../../shared/constants.js';
import { FerryError } from '../../shared/errors.js';
import { PageHasher, allocateGuestMemory } from '../../shared/page-hash.js';
import { PageInstaller } from '../../agent/migration/page-install.js';
import { PageStreamReader } from '../../agent/migration/page-stream-reader.js';
import { feedStream as feed } from '../stream-feed.js';

const PAGE_COUNT = 2048;

/** A source guest whose page p is filled with bytes that name it, and some pages zero. */
function sourceGuest(zeroPages: Set<number>): { memory: Uint8Array; hasher: PageHasher } {
  const wasm = allocateGuestMemory(PAGE_COUNT * PAGE_SIZE);
  const memory = new Uint8Array(wasm.buffer);
  for (let page = 0; page < PAGE_COUNT; page++) {
    if (zeroPages.has(page)) continue;
    for (let i = 0; i < PAGE_SIZE; i += 4) new DataView(wasm.buffer).setUint32(page * PAGE_SIZE + i, page * 7919 + i + 1, true);
  }
  return { memory, hasher: new PageHasher(wasm) };
}

/** The bytes of one frame of `pages` (ascending) as the source sends it: header, then the non-zero pages' bytes. */
function frame(source: { memory: Uint8Array; hasher: PageHasher }, pages: number[], zero: Set<number>, flags = 0): Buffer {
  const hashes = new Uint32Array(2 * pages.length);
  const entries = pages.map((page, i) => {
    source.hasher.hashInto(page, hashes, i);
    return zero.has(page) ? (page | ZERO_PAGE_BIT) >>> 0 : page;
  });
  const header = encodePageHeader(Buffer.alloc(pageHeaderBytes(pages.length)), 3, flags, entries, hashes, pages.length);
  const data = pages.filter((page) => !zero.has(page)).map((page) => Buffer.from(source.memory.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE)));
  return Buffer.concat([header, ...data]);
}

function destination(): { memory: Uint8Array; installer: PageInstaller; frames: { header: PageHeader; staged: boolean; bytes: number; mismatches: number }[]; reader: PageStreamReader } {
  const wasm = allocateGuestMemory(PAGE_COUNT * PAGE_SIZE);
  const memory = new Uint8Array(wasm.buffer);
  // A page written earlier that now arrives as zero must be cleared: dirty one up front, marked written by an install.
  const installer = new PageInstaller(memory, new PageHasher(wasm), PAGE_COUNT);
  const frames: { header: PageHeader; staged: boolean; bytes: number; mismatches: number }[] = [];
  const reader = new PageStreamReader({
    pageCount: PAGE_COUNT,
    memory,
    onFrame: (header, staged, bytes) => {
      const mismatches = staged ? installer.install(header, staged) : installer.installInPlace(header);
      frames.push({ header, staged: staged !== undefined, bytes, mismatches });
    },
  });
  return { memory, installer, frames, reader };
}

describe('page stream reader', () => {
  it('puts every kind of frame where it belongs, whatever sizes the reads come in', () => {
    const zero = new Set([700, 701, 702, 1500, 1502]);
    const source = sourceGuest(zero);
    const run = Array.from({ length: 256 }, (_, i) => i);
    const threeRuns = [...Array.from({ length: 10 }, (_, i) => 300 + i), ...Array.from({ length: 5 }, (_, i) => 400 + i), ...Array.from({ length: 7 }, (_, i) => 500 + i)];
    const scattered = Array.from({ length: 40 }, (_, i) => 1000 + 3 * i);
    const zerosOnly = [700, 701, 702];
    const mixed = [1499, 1500, 1501, 1502, 1503];
    const frames = [run, threeRuns, scattered, zerosOnly, mixed];
    const stream = Buffer.concat(frames.map((pages, i) => frame(source, pages, zero, i === frames.length - 1 ? PAGE_FLAG_PAUSED : 0)));

    for (const seed of [1, 2, 3]) {
      const dest = destination();
      feed(dest.reader, stream, seed);
      expect(dest.reader.midFrame).toBe(false);
      expect(dest.frames.map((taken) => Array.from(taken.header.pages))).toEqual(frames);
      // A run and three runs are read in place; forty scattered pages through the staging buffer.
      expect(dest.frames.map((taken) => taken.staged)).toEqual([false, false, true, false, false]);
      expect(dest.frames.every((taken) => taken.mismatches === 0)).toBe(true);
      expect(dest.frames.reduce((total, taken) => total + taken.bytes, 0)).toBe(stream.length);
      expect(dest.frames.at(-1)!.header.flags).toBe(PAGE_FLAG_PAUSED);
      for (const page of frames.flat()) {
        expect(Buffer.compare(dest.memory.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE), source.memory.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE)), `page ${page}`).toBe(0);
      }
      // Pages no frame named were never written.
      expect(dest.memory.subarray(256 * PAGE_SIZE, 300 * PAGE_SIZE).every((byte) => byte === 0)).toBe(true);
    }
  });

  it('clears a page it wrote before when it comes again as a zero page', () => {
    const source = sourceGuest(new Set());
    const dest = destination();
    feed(dest.reader, frame(source, [5, 6, 7], new Set()), 4);
    expect(dest.memory.subarray(6 * PAGE_SIZE, 7 * PAGE_SIZE).some((byte) => byte !== 0)).toBe(true);
    const zeroSource = sourceGuest(new Set([6]));
    feed(dest.reader, frame(zeroSource, [6], new Set([6])), 5);
    expect(dest.memory.subarray(6 * PAGE_SIZE, 7 * PAGE_SIZE).every((byte) => byte === 0)).toBe(true);
    expect(dest.frames.at(-1)!.mismatches).toBe(0);
  });

  it('counts a page whose bytes do not match the hash it came with', () => {
    const source = sourceGuest(new Set());
    const bytes = frame(source, [10, 11], new Set());
    bytes[pageHeaderBytes(2) + PAGE_SIZE + 100]! ^= 0xff; // page 11's bytes, damaged on the way
    const dest = destination();
    feed(dest.reader, bytes, 6);
    expect(dest.frames[0]!.mismatches).toBe(1);
  });

  it('throws a protocol error on a header that does not check out, before reading a page byte', () => {
    const source = sourceGuest(new Set());
    const good = frame(source, [1, 2], new Set());
    const cases: [string, (bytes: Buffer) => void, RegExp][] = [
      ['wrong magic', (bytes) => void (bytes[0] = 0x82), /not a version 3 page header/],
      ['wrong version', (bytes) => void (bytes[1] = 9), /not a version 3 page header/],
      ['count 0', (bytes) => bytes.writeUInt32LE(0, 8), /page count 0/],
      ['count too large', (bytes) => bytes.writeUInt32LE(257, 8), /page count 257/],
      ['page outside the guest', (bytes) => bytes.writeUInt32LE(PAGE_COUNT, pageHeaderBytes(2) - 4), /outside the guest/],
      ['pages out of order', (bytes) => bytes.writeUInt32LE(1, pageHeaderBytes(2) - 4), /must ascend/],
    ];
    for (const [what, spoil, message] of cases) {
      const bytes = Buffer.from(good);
      spoil(bytes);
      const dest = destination();
      let caught: unknown;
      try {
        feed(dest.reader, bytes, 7);
      } catch (error) {
        caught = error;
      }
      expect(caught, what).toBeInstanceOf(FerryError);
      expect((caught as FerryError).code, what).toBe('FERRY_ERR_PROTOCOL');
      expect((caught as FerryError).message, what).toMatch(message);
      expect(dest.frames, what).toEqual([]);
      expect(dest.memory.subarray(0, 4 * PAGE_SIZE).every((byte) => byte === 0), what).toBe(true);
    }
  });
});

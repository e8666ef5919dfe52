import { describe, expect, it } from 'vitest';
import { PAGES_PER_FRAME, PAGE_SIZE } from '../../shared/constants.js';
import { FerryError } from '../../shared/errors.js';
import {
  PAGE_FLAG_PAUSED, PAGE_FRAME_VERSION, PAGE_HEADER_MAGIC, decodePageHeader, encodePageHeader, expectedDataBytes, isPageHeader, pageHeaderBytes,
} from '../../shared/page-frame.js';
import { encodeMessage } from '../../shared/rpc.js';

const PAGE_COUNT = 1024;

/** 64-bit hashes as the two little-endian words a page that page-hash.ts keeps them in. */
function toWords(hashes: bigint[]): Uint32Array {
  const words = new Uint32Array(2 * hashes.length);
  hashes.forEach((hash, i) => {
    words[2 * i] = Number(hash & 0xffffffffn);
    words[2 * i + 1] = Number(hash >> 32n);
  });
  return words;
}

function fromWords(words: Uint32Array): bigint[] {
  return Array.from({ length: words.length / 2 }, (_, i) => (BigInt(words[2 * i + 1]!) << 32n) | BigInt(words[2 * i]!));
}

function encode(pages: number[], hashes: bigint[], round = 7, flags = PAGE_FLAG_PAUSED): Buffer {
  const target = Buffer.alloc(pageHeaderBytes(pages.length) + 64, 0xee);
  return Buffer.from(encodePageHeader(target, round, flags, pages, toWords(hashes), pages.length));
}

function protocolError(frame: Buffer, pageCount: number, message: RegExp): void {
  let caught: unknown;
  try {
    decodePageHeader(frame, pageCount);
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(FerryError);
  expect((caught as FerryError).code).toBe('FERRY_ERR_PROTOCOL');
  expect((caught as FerryError).message).toMatch(message);
}

describe('page frame header', () => {
  it('round-trips round, flags, page numbers and 64-bit hashes', () => {
    const pages = [0, 5, 17, 1023];
    const hashes = [0n, 0xffffffffffffffffn, 0x0123456789abcdefn, 42n];
    const frame = encode(pages, hashes, 123456, PAGE_FLAG_PAUSED);
    expect(frame.length).toBe(pageHeaderBytes(4));
    const header = decodePageHeader(frame, PAGE_COUNT);
    expect(header.round).toBe(123456);
    expect(header.flags).toBe(PAGE_FLAG_PAUSED);
    expect([...header.pages]).toEqual(pages);
    expect(fromWords(header.hashes)).toEqual(hashes);
    expect(expectedDataBytes(header)).toBe(4 * PAGE_SIZE);
  });

  it('round-trips a full frame of PAGES_PER_FRAME pages with no flags', () => {
    const pages = Array.from({ length: PAGES_PER_FRAME }, (_, i) => PAGE_COUNT - PAGES_PER_FRAME + i);
    const hashes = pages.map((p) => BigInt(p) * 0x1_0000_0001n);
    const header = decodePageHeader(encode(pages, hashes, 1, 0), PAGE_COUNT);
    expect(header.round).toBe(1);
    expect(header.flags).toBe(0);
    expect([...header.pages]).toEqual(pages);
    expect(fromWords(header.hashes)).toEqual(hashes);
  });

  it('writes the documented fixed layout: magic, version, flags, round, count, reserved', () => {
    const frame = encode([3], [9n], 0x01020304, 1);
    expect(frame[0]).toBe(PAGE_HEADER_MAGIC);
    expect(frame[1]).toBe(PAGE_FRAME_VERSION);
    expect(frame.readUInt16LE(2)).toBe(1);
    expect(frame.readUInt32LE(4)).toBe(0x01020304);
    expect(frame.readUInt32LE(8)).toBe(1);
    expect(frame.readUInt32LE(12)).toBe(0);
    expect(frame.readBigUInt64LE(16)).toBe(9n);
    expect(frame.readUInt32LE(24)).toBe(3);
  });

  it('is told apart from MessagePack control messages by its first byte', () => {
    expect(isPageHeader(encode([1], [1n]))).toBe(true);
    expect(isPageHeader(encodeMessage({ t: 'req', id: 1, op: 'host.info', body: {} }))).toBe(false);
    expect(isPageHeader(Buffer.alloc(0))).toBe(false);
  });

  it('rejects a wrong magic byte', () => {
    const frame = encode([1, 2], [1n, 2n]);
    frame[0] = 0x82;
    protocolError(frame, PAGE_COUNT, /magic/);
  });

  it('rejects another frame version', () => {
    const frame = encode([1, 2], [1n, 2n]);
    frame[1] = PAGE_FRAME_VERSION + 1;
    protocolError(frame, PAGE_COUNT, /version/);
  });

  it('rejects a count of 0', () => {
    const frame = encode([], []);
    expect(frame.length).toBe(pageHeaderBytes(0));
    protocolError(frame, PAGE_COUNT, /count 0/);
  });

  it('rejects a count above PAGES_PER_FRAME even when the length matches it', () => {
    const count = PAGES_PER_FRAME + 1;
    const pages = Array.from({ length: count }, (_, i) => i);
    const frame = encode(pages, pages.map(BigInt));
    expect(frame.length).toBe(pageHeaderBytes(count));
    protocolError(frame, PAGE_COUNT, new RegExp(`count ${count}`));
  });

  it('rejects a header whose length does not match its count, longer or shorter', () => {
    const frame = encode([1, 2, 3], [1n, 2n, 3n]);
    protocolError(Buffer.concat([frame, Buffer.alloc(1)]), PAGE_COUNT, /expected/);
    protocolError(frame.subarray(0, frame.length - 4), PAGE_COUNT, /expected/);
    const claimsMore = Buffer.from(frame);
    claimsMore.writeUInt32LE(4, 8);
    protocolError(claimsMore, PAGE_COUNT, /expected/);
  });

  it('rejects a frame shorter than the fixed header', () => {
    protocolError(encode([1], [1n]).subarray(0, 15), PAGE_COUNT, /shorter/);
  });

  it('rejects a page number at or beyond the guest size, and accepts the last page', () => {
    const frame = encode([0, PAGE_COUNT - 1], [0n, 0n]);
    expect([...decodePageHeader(frame, PAGE_COUNT).pages]).toEqual([0, PAGE_COUNT - 1]);
    protocolError(frame, PAGE_COUNT - 1, new RegExp(`page ${PAGE_COUNT - 1} is outside`));
    protocolError(encode([0xffffffff], [0n]), PAGE_COUNT, /outside/);
  });

  it('rejects page numbers that do not ascend, or name a page twice: a run is taken by its first and last page', () => {
    protocolError(encode([3, 3, 5], [0n, 0n, 0n]), PAGE_COUNT, /page 3 follows page 3/);
    protocolError(encode([3, 5, 4], [0n, 0n, 0n]), PAGE_COUNT, /page 4 follows page 5/);
  });
});

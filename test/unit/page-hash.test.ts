/**
 * The in-place page hasher is XXH3-64 (seed 0, the default secret): it gives the published algorithm's values on
 * known pages (computed with xxHash's own library, libxxhash 0.8.1), agrees with a plain BigInt implementation of the
 * spec below and, where this machine has libxxhash, with the library itself on random pages, wherever the page lies;
 * and the committed modules are what their .wat sources assemble to.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import xxhash from 'xxhash-wasm';
import { XXH3_PAGE_WASM } from '../../shared/xxh3-page.wasm.js';
import { XXH64_PAGE_WASM } from '../../shared/xxh64-page.wasm.js';
import { PageHasher, allocateGuestMemory } from '../../shared/page-hash.js';
// @ts-expect-error: a plain .mjs build script without type declarations
import { MODULES, assemble } from '../../scripts/build-wasm.mjs';

const PAGE = 4096;

function hashOf(words: Uint32Array, slot: number): bigint {
  return (BigInt(words[2 * slot + 1]!) << 32n) | BigInt(words[2 * slot]!);
}

function hex(hash: bigint): string {
  return hash.toString(16).padStart(16, '0');
}

// ---- XXH3-64 of inputs longer than 240 bytes, seed 0, default secret: the spec's steps, one 64-bit word at a time.

const MASK = (1n << 64n) - 1n;
const SECRET = Buffer.from(
  'b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671fcb79e64eccc0e578825ad07dccff7221'
  + 'b8084674f743248ee03590e6813a264c3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8'
  + 'a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364eac5ac8334d3ebc3c581a0fffa1363eb'
  + '170ddd51b7f0da49d316552629d4689e2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e',
  'hex',
);
const PRIME32_1 = 0x9e3779b1n;
const PRIME64_1 = 0x9e3779b185ebca87n;

function referenceXxh3(input: Uint8Array): bigint {
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  const secret = (offset: number): bigint => SECRET.readBigUInt64LE(offset);
  const acc = [0xc2b2ae3dn, PRIME64_1, 0xc2b2ae3d27d4eb4fn, 0x165667b19e3779f9n, 0x85ebca77c2b2ae63n, 0x85ebca77n, 0x27d4eb2f165667c5n, PRIME32_1];
  const accumulate512 = (at: number, secretOffset: number): void => {
    for (let i = 0; i < 8; i++) {
      const data = view.getBigUint64(at + 8 * i, true);
      const key = data ^ secret(secretOffset + 8 * i);
      acc[i ^ 1] = (acc[i ^ 1]! + data) & MASK;
      acc[i] = (acc[i]! + (key & 0xffffffffn) * (key >> 32n)) & MASK;
    }
  };
  const stripesPerBlock = (SECRET.length - 64) / 8;
  const blockBytes = 64 * stripesPerBlock;
  const blocks = Math.floor((input.length - 1) / blockBytes);
  for (let block = 0; block < blocks; block++) {
    for (let stripe = 0; stripe < stripesPerBlock; stripe++) accumulate512(block * blockBytes + 64 * stripe, 8 * stripe);
    for (let i = 0; i < 8; i++) {
      const a = acc[i]!;
      acc[i] = ((a ^ (a >> 47n) ^ secret(SECRET.length - 64 + 8 * i)) * PRIME32_1) & MASK;
    }
  }
  const lastStripes = Math.floor((input.length - 1 - blocks * blockBytes) / 64);
  for (let stripe = 0; stripe < lastStripes; stripe++) accumulate512(blocks * blockBytes + 64 * stripe, 8 * stripe);
  accumulate512(input.length - 64, SECRET.length - 64 - 7);
  let h = (BigInt(input.length) * PRIME64_1) & MASK;
  for (let i = 0; i < 4; i++) {
    const product = (acc[2 * i]! ^ secret(11 + 16 * i)) * (acc[2 * i + 1]! ^ secret(11 + 16 * i + 8));
    h = (h + ((product & MASK) ^ (product >> 64n))) & MASK;
  }
  h ^= h >> 37n;
  h = (h * 0x165667919e3779f9n) & MASK;
  return h ^ (h >> 32n);
}

/** XXH3-64 of each 4 KiB page of `bytes` by xxHash's own library, if this machine has python3 and libxxhash. */
function libxxhash(bytes: Uint8Array): string[] | undefined {
  const script = [
    'import ctypes, sys',
    "lib = ctypes.CDLL('libxxhash.so.0')",
    'lib.XXH3_64bits.restype = ctypes.c_uint64',
    'lib.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]',
    'data = sys.stdin.buffer.read()',
    "print('\\n'.join('%016x' % lib.XXH3_64bits(data[i:i + 4096], 4096) for i in range(0, len(data), 4096)))",
  ].join('\n');
  const run = spawnSync('python3', ['-c', script], { input: bytes, maxBuffer: 1 << 24 });
  if (run.status !== 0) return undefined;
  return run.stdout.toString().trim().split('\n');
}

function lcgPage(seed: number): Uint8Array {
  return Uint8Array.from({ length: PAGE }, () => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed >>> 24;
  });
}

function pageWithByte(offset: number, value: number): Uint8Array {
  const page = new Uint8Array(PAGE);
  page[offset] = value;
  return page;
}

/** XXH3_64bits(page, 4096) by libxxhash 0.8.1 (xxHash's reference library), written down. */
const KNOWN: [string, Uint8Array, string][] = [
  ['zeros', new Uint8Array(PAGE), '93d76fe148c689ba'],
  ['all 0xFF', new Uint8Array(PAGE).fill(0xff), '074cfac273851dd6'],
  ['byte i = i mod 251', Uint8Array.from({ length: PAGE }, (_, i) => i % 251), '7135ffa504f1bc71'],
  ['byte i = 7 i mod 256', Uint8Array.from({ length: PAGE }, (_, i) => (i * 7) & 255), '8fb047a89e810965'],
  ['pseudo-random (LCG seed 12345)', lcgPage(12345), '60b3961a0e0b6512'],
  ['zeros but bit 0 of byte 0', pageWithByte(0, 0x01), '50a0592e032b738c'],
  ['zeros but bit 7 of byte 4095 (only in the last stripe)', pageWithByte(4095, 0x80), '2c4ffc1263801f66'],
  ['zeros but byte 3071 (the end of the third block)', pageWithByte(3071, 0x01), '0d5a2b768e9f2459'],
  ['zeros but byte 4031 (the fourth block, before the last stripe)', pageWithByte(4031, 0x01), 'a40d9ed8254bc240'],
];

describe('in-place page hasher (XXH3-64)', () => {
  it('gives xxHash\'s values on known pages, and so does the reference implementation here', () => {
    const memory = allocateGuestMemory(KNOWN.length * PAGE);
    const bytes = new Uint8Array(memory.buffer);
    KNOWN.forEach(([, page], i) => bytes.set(page, i * PAGE));
    const hasher = new PageHasher(memory);
    const table = new Uint32Array(2 * KNOWN.length);
    KNOWN.forEach(([what, page, expected], i) => {
      hasher.hashInto(i, table, i);
      expect(hex(hashOf(table, i)), what).toBe(expected);
      expect(hex(referenceXxh3(page)), what).toBe(expected);
    });
  });

  it('uses the default secret: XXH3-64 of the empty input from it is the published 0x2D06800538D394C2', () => {
    // Empty input (XXH3_len_0to16_64b): XXH64's avalanche of secret words at bytes 56 and 64, xored.
    let h = SECRET.readBigUInt64LE(56) ^ SECRET.readBigUInt64LE(64);
    h ^= h >> 33n;
    h = (h * 0xc2b2ae3d27d4eb4fn) & MASK;
    h ^= h >> 29n;
    h = (h * 0x165667b19e3779f9n) & MASK;
    h ^= h >> 32n;
    expect(hex(h)).toBe('2d06800538d394c2');
  });

  it('agrees with the reference implementation on random pages, wherever they lie in memory', () => {
    const count = 200;
    const memory = allocateGuestMemory(count * PAGE);
    const bytes = new Uint8Array(memory.buffer, 0, count * PAGE);
    let seed = 987654321;
    for (let i = 0; i < bytes.length; i++) {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
      bytes[i] = seed >>> 24;
    }
    // Some sparse pages too: a few random bytes in zeros, the shape of a lightly used guest page.
    for (let page = 150; page < count; page++) {
      bytes.fill(0, page * PAGE, (page + 1) * PAGE);
      for (let k = 0; k < 4; k++) bytes[page * PAGE + ((page * 977 + k * 1553) % PAGE)] = (page + k) & 255 || 1;
    }
    const hasher = new PageHasher(memory);
    const table = new Uint32Array(2 * count);
    for (let page = 0; page < count; page++) {
      hasher.hashInto(page, table, page);
      expect(hashOf(table, page), `page ${page}`).toBe(referenceXxh3(bytes.subarray(page * PAGE, (page + 1) * PAGE)));
    }
    // A one-bit change anywhere changes the hash.
    for (const offset of [0, 1000, 3071, 3072, 4031, 4032, 4095]) {
      const before = hashOf(table, 5);
      bytes[5 * PAGE + offset]! ^= 1;
      hasher.hashInto(5, table, 5);
      expect(hashOf(table, 5), `bit flipped at ${offset}`).not.toBe(before);
    }
  });

  const crossCheck = libxxhash(new Uint8Array(PAGE));
  it.skipIf(crossCheck === undefined)('agrees with libxxhash on random pages (where python3 and libxxhash are installed)', () => {
    const count = 512;
    const memory = allocateGuestMemory(count * PAGE);
    const bytes = new Uint8Array(memory.buffer, 0, count * PAGE);
    for (let i = 0; i < bytes.length; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
    const expected = libxxhash(bytes)!;
    const hasher = new PageHasher(memory);
    const table = new Uint32Array(2 * count);
    for (let page = 0; page < count; page++) {
      hasher.hashInto(page, table, page);
      expect(hex(hashOf(table, page)), `page ${page}`).toBe(expected[page]);
    }
  });

  it('hashes the last page of a 4 GiB guest without wrapping its address', () => {
    const memory = allocateGuestMemory(4 * 1024 ** 3);
    const bytes = new Uint8Array(memory.buffer);
    const last = bytes.length / PAGE - 1;
    for (let i = 0; i < PAGE; i++) bytes[last * PAGE + i] = (i * 7) & 255;
    const table = new Uint32Array(2);
    new PageHasher(memory).hashInto(last, table, 0);
    expect(hex(hashOf(table, 0))).toBe('8fb047a89e810965');
  });
});

describe('xxh64 page module (the baseline bench/probes/page-costs.mjs measures)', () => {
  it('agrees with xxhash-wasm', async () => {
    const { h64Raw } = await xxhash();
    const memory = allocateGuestMemory(8 * PAGE);
    const bytes = new Uint8Array(memory.buffer);
    bytes.set(lcgPage(12345), PAGE);
    bytes.fill(0xff, 2 * PAGE, 3 * PAGE);
    const instance = new WebAssembly.Instance(new WebAssembly.Module(Buffer.from(XXH64_PAGE_WASM, 'base64')), { env: { memory } });
    const { hashPage, lo, hi } = instance.exports as { hashPage: (offset: number) => void; lo: WebAssembly.Global; hi: WebAssembly.Global };
    for (let page = 0; page < 8; page++) {
      hashPage(page * PAGE);
      expect((BigInt((hi.value as number) >>> 0) << 32n) | BigInt((lo.value as number) >>> 0)).toBe(h64Raw(bytes.subarray(page * PAGE, (page + 1) * PAGE)));
    }
  });
});

describe('page-hash modules', () => {
  it('are built from their .wat sources: each committed module is what its source assembles to', async () => {
    const committed: Record<string, string> = { XXH3_PAGE_WASM, XXH64_PAGE_WASM };
    for (const { name, constant } of MODULES as { name: string; constant: string }[]) {
      const source = new URL(`../../shared/${name}.wat`, import.meta.url);
      const assembled: Buffer = await assemble(source.pathname);
      expect(assembled.toString('base64'), name).toBe(committed[constant]);
      expect(readFileSync(source, 'utf8'), name).toContain('hashPage');
    }
  });
});

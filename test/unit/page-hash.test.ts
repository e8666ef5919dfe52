/**
 * The in-place page hasher is xxh64: it agrees with xxhash-wasm on every page it is given, wherever the page lies,
 * and the committed module is what the .wat source assembles to.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import xxhash from 'xxhash-wasm';
import { XXH64_PAGE_WASM } from '../../shared/xxh64-page.wasm.js';
import { PageHasher, allocateGuestMemory } from '../../shared/page-hash.js';
// @ts-expect-error: a plain .mjs build script without type declarations
import { assemble } from '../../scripts/build-wasm.mjs';

const PAGE = 4096;

function hashOf(words: Uint32Array, slot: number): bigint {
  return (BigInt(words[2 * slot + 1]!) << 32n) | BigInt(words[2 * slot]!);
}

describe('in-place page hasher', () => {
  it('agrees with xxhash-wasm on zero, constant, random and patterned pages', async () => {
    const { h64Raw } = await xxhash();
    const memory = allocateGuestMemory(64 * PAGE);
    const bytes = new Uint8Array(memory.buffer, 0, 64 * PAGE);
    bytes.fill(0xff, PAGE, 2 * PAGE);
    let seed = 12345;
    for (let i = 2 * PAGE; i < 48 * PAGE; i++) {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      bytes[i] = seed >>> 24;
    }
    for (let i = 48 * PAGE; i < 64 * PAGE; i++) bytes[i] = i % 251;
    const hasher = new PageHasher(memory);
    const table = new Uint32Array(2 * 64);
    for (let page = 0; page < 64; page++) {
      hasher.hashInto(page, table, page);
      expect(hashOf(table, page)).toBe(h64Raw(bytes.subarray(page * PAGE, (page + 1) * PAGE)));
    }
    // A one-bit change changes the hash.
    bytes[5 * PAGE + 100]! ^= 1;
    const before = hashOf(table, 5);
    hasher.hashInto(5, table, 5);
    expect(hashOf(table, 5)).not.toBe(before);
  });

  it('hashes the last page of a 4 GiB guest without wrapping its address', async () => {
    const { h64Raw } = await xxhash();
    const memory = allocateGuestMemory(4 * 1024 ** 3);
    const bytes = new Uint8Array(memory.buffer);
    const last = bytes.length / PAGE - 1;
    for (let i = 0; i < PAGE; i++) bytes[last * PAGE + i] = (i * 7) & 255;
    const table = new Uint32Array(2);
    new PageHasher(memory).hashInto(last, table, 0);
    expect(hashOf(table, 0)).toBe(h64Raw(bytes.subarray(last * PAGE)));
  });

  it('is built from xxh64-page.wat: the committed module is what the source assembles to', async () => {
    const assembled: Buffer = await assemble(new URL('../../shared/xxh64-page.wat', import.meta.url).pathname);
    expect(assembled.toString('base64')).toBe(XXH64_PAGE_WASM);
    expect(readFileSync(new URL('../../shared/xxh64-page.wat', import.meta.url), 'utf8')).toContain('hashPage');
  });
});

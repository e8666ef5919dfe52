import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { VmInfo, WorkloadSpec } from '../../shared/protocol.js';
import { checkPattern } from '../../coordinator/pattern-check.js';
import { WORDS_PER_PAGE, fillInitialPages, fillPage, workloadStep, xorshift32, type WorkloadRegisters } from '../../shared/workloads.js';
import { checkDump, checkPatternImage, readDump } from '../replay.js';

const PAGE = 4096;

/** xorshift32 as DESIGN.md writes it, in BigInt so that no JavaScript int32 coercion can hide a mistake. */
function referenceXorshift(value: number): number {
  const mask = 0xffffffffn;
  let x = BigInt(value) & mask;
  x = (x ^ (x << 13n)) & mask;
  x = x ^ (x >> 17n);
  x = (x ^ (x << 5n)) & mask;
  return Number(x);
}

function flip(bytes: Uint8Array, index: number, mask: number): void {
  bytes[index] = bytes[index]! ^ mask;
}

function golden(k: number): number {
  return Number((BigInt(k) * 0x9e3779b1n) % 2n ** 32n);
}

/** Runs the product's pattern workload (workloadStep + fillPage) for `writes` writes into a fresh image. */
function runPattern(pageCount: number, spec: WorkloadSpec, writes: number, registers?: WorkloadRegisters) {
  const image = new Uint8Array(pageCount * PAGE);
  const words = new Uint32Array(image.buffer);
  const regs = registers ?? { x: spec.seed, n: 0 };
  const next = workloadStep(spec);
  const touched = new Set<number>();
  for (let i = 0; i < writes; i++) {
    const page = next(regs);
    fillPage(words, page, regs.n);
    touched.add(page);
  }
  return { image, words, regs, touched };
}

describe('xorshift32', () => {
  it('maps 1 to 270369, as the DESIGN formula does by hand', () => {
    // x = 1; x ^= 1 << 13 -> 8193; x ^= 8193 >>> 17 (= 0) -> 8193; x ^= 8193 << 5 (= 262176) -> 270369
    expect(xorshift32(1)).toBe(270369);
  });

  it('agrees with a BigInt reference for values that exercise the sign bit and the top bits', () => {
    for (const value of [1, 2, 0x1234, 270369, 0x7fffffff, 0x80000000, 0x80000001, 0xdeadbeef, 0xffffffff, 2463534242]) {
      expect(xorshift32(value)).toBe(referenceXorshift(value));
    }
  });

  it('returns uint32 values (never negative) along a long sequence', () => {
    let x = 2463534242;
    for (let i = 0; i < 10_000; i++) {
      const next = xorshift32(x);
      expect(next).toBe(referenceXorshift(x));
      expect(next).toBeGreaterThanOrEqual(0);
      x = next;
    }
  });
});

describe('fillPage', () => {
  it('writes n low, n high, the page number and w0 XOR k*0x9E3779B1 into exactly one page', () => {
    const words = new Uint32Array(3 * WORDS_PER_PAGE);
    const n = 2 ** 32 * 3 + 0xfffffff5; // high word 3, low word 0xfffffff5
    fillPage(words, 1, n);
    const base = WORDS_PER_PAGE;
    expect(words[base]).toBe(0xfffffff5);
    expect(words[base + 1]).toBe(3);
    expect(words[base + 2]).toBe(1);
    for (let k = 3; k < WORDS_PER_PAGE; k++) {
      expect(words[base + k]).toBe(Number(BigInt(0xfffffff5) ^ BigInt(golden(k))));
    }
    // the neighbours are untouched
    expect(words.subarray(0, WORDS_PER_PAGE).every((w) => w === 0)).toBe(true);
    expect(words.subarray(2 * WORDS_PER_PAGE).every((w) => w === 0)).toBe(true);
  });

  it('stores little-endian words, so byte 0 of a page is the low byte of n', () => {
    const image = new Uint8Array(PAGE);
    fillPage(new Uint32Array(image.buffer), 0, 0x01020304);
    expect([...image.subarray(0, 4)]).toEqual([4, 3, 2, 1]);
    expect([...image.subarray(4, 12)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
  });

  it('writes a high word of 0 for n below 2^32', () => {
    const words = new Uint32Array(WORDS_PER_PAGE);
    words.fill(0xaaaaaaaa);
    fillPage(words, 0, 0xffffffff);
    expect(words[0]).toBe(0xffffffff);
    expect(words[1]).toBe(0);
    expect(words[2]).toBe(0);
    expect(words[WORDS_PER_PAGE - 1]).toBe(Number(0xffffffffn ^ BigInt(golden(WORDS_PER_PAGE - 1))));
  });
});

describe('workloadStep pattern', () => {
  it('increments n, advances x by xorshift32 and picks page x % wssPages', () => {
    const next = workloadStep({ kind: 'pattern', rate: 1, wssPages: 1000, seed: 1 });
    const regs = { x: 1, n: 0 };
    expect(next(regs)).toBe(270369 % 1000);
    expect(regs).toEqual({ x: 270369, n: 1 });
    const page = next(regs);
    expect(regs.n).toBe(2);
    expect(regs.x).toBe(referenceXorshift(270369));
    expect(page).toBe(referenceXorshift(270369) % 1000);
  });
});

describe('the product pattern workload checked by the independent replay (test/replay.ts)', () => {
  const spec: WorkloadSpec = { kind: 'pattern', rate: 1000, wssPages: 200, seed: 0xc0ffee };
  const pageCount = 256; // pages 200..255 lie outside the working set and must stay zero
  const writes = 5000;

  it('accepts the image and registers the product produced', () => {
    const { image, regs, touched } = runPattern(pageCount, spec, writes);
    const result = checkPatternImage(image, { seed: spec.seed, wssPages: spec.wssPages, x: regs.x, n: regs.n });
    expect(result.reason).toBeUndefined();
    expect(result).toMatchObject({ ok: true, writesReplayed: writes, registersMatch: true, badPages: [] });
    expect(result.pagesWritten).toBe(touched.size);
    expect(Math.max(...touched)).toBeLessThan(spec.wssPages);
  });

  it('rejects an image with one flipped byte and names that page', () => {
    const { image, regs, touched } = runPattern(pageCount, spec, writes);
    const page = [...touched].sort((a, b) => a - b)[7]!;
    flip(image, page * PAGE + 1234, 0x40);
    const result = checkPatternImage(image, { seed: spec.seed, wssPages: spec.wssPages, x: regs.x, n: regs.n });
    expect(result.ok).toBe(false);
    expect(result.badPages).toEqual([page]);
    expect(result.registersMatch).toBe(true);
    expect(result.reason).toMatch(/1 of 256 pages/);
  });

  it('rejects a non-zero byte in a page the workload never writes', () => {
    const { image, regs } = runPattern(pageCount, spec, writes);
    image[250 * PAGE + 4095] = 1;
    const result = checkPatternImage(image, { seed: spec.seed, wssPages: spec.wssPages, x: regs.x, n: regs.n });
    expect(result.ok).toBe(false);
    expect(result.badPages).toEqual([250]);
  });

  it('rejects a wrong n, smaller or larger, even with the matching x', () => {
    const { image, regs } = runPattern(pageCount, spec, writes);
    for (const n of [regs.n - 1, regs.n + 1]) {
      const result = checkPatternImage(image, { seed: spec.seed, wssPages: spec.wssPages, x: regs.x, n });
      expect(result.ok).toBe(false);
      expect(result.badPages.length).toBeGreaterThan(0);
    }
  });

  it('rejects a wrong x with every page correct', () => {
    const { image, regs } = runPattern(pageCount, spec, writes);
    const result = checkPatternImage(image, { seed: spec.seed, wssPages: spec.wssPages, x: (regs.x ^ 1) >>> 0, n: regs.n });
    expect(result.ok).toBe(false);
    expect(result.registersMatch).toBe(false);
    expect(result.badPages).toEqual([]);
    expect(result.reason).toMatch(/register x/);
  });

  it('rejects a wrong seed or working set', () => {
    const { image, regs } = runPattern(pageCount, spec, writes);
    expect(checkPatternImage(image, { seed: spec.seed + 1, wssPages: spec.wssPages, x: regs.x, n: regs.n }).ok).toBe(false);
    expect(checkPatternImage(image, { seed: spec.seed, wssPages: spec.wssPages - 1, x: regs.x, n: regs.n }).ok).toBe(false);
  });

  it('rejects a page from the wrong moment (an older copy of one page)', () => {
    const before = runPattern(pageCount, spec, writes - 300);
    const after = runPattern(pageCount, spec, 300, { ...before.regs });
    // after.image only holds the last 300 writes; lay them over a copy of the older image to get the full image
    const image = before.image.slice();
    for (const page of after.touched) image.set(after.image.subarray(page * PAGE, (page + 1) * PAGE), page * PAGE);
    const state = { seed: spec.seed, wssPages: spec.wssPages, x: after.regs.x, n: after.regs.n };
    expect(checkPatternImage(image, state).ok).toBe(true);

    const stale = [...after.touched].find((page) => before.touched.has(page))!;
    image.set(before.image.subarray(stale * PAGE, (stale + 1) * PAGE), stale * PAGE);
    const result = checkPatternImage(image, state);
    expect(result.ok).toBe(false);
    expect(result.badPages).toEqual([stale]);
  });

  it('rejects a torn page: the first half from one write, the second half from an earlier one', () => {
    const { image, regs } = runPattern(pageCount, spec, writes);
    const page = regs.x % spec.wssPages; // the page of the last write
    const words = new Uint32Array(image.buffer);
    const older = new Uint32Array(WORDS_PER_PAGE);
    fillPage(older, 0, regs.n - 1);
    words.set(older.subarray(WORDS_PER_PAGE / 2), page * WORDS_PER_PAGE + WORDS_PER_PAGE / 2);
    const result = checkPatternImage(image, { seed: spec.seed, wssPages: spec.wssPages, x: regs.x, n: regs.n });
    expect(result.ok).toBe(false);
    expect(result.badPages).toEqual([page]);
  });

  it('lists at most 10 bad pages, lowest first', () => {
    const { image, regs } = runPattern(pageCount, spec, writes);
    for (let page = 0; page < 30; page++) flip(image, page * PAGE + 8, 0xff);
    const result = checkPatternImage(image, { seed: spec.seed, wssPages: spec.wssPages, x: regs.x, n: regs.n });
    expect(result.badPages).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(result.reason).toMatch(/30 of 256 pages/);
  });

  it('checks an image whose byteOffset is not 4-aligned the same way', () => {
    const { image, regs } = runPattern(pageCount, spec, writes);
    const backing = new Uint8Array(image.byteLength + 1);
    backing.set(image, 1);
    const unaligned = backing.subarray(1);
    const state = { seed: spec.seed, wssPages: spec.wssPages, x: regs.x, n: regs.n };
    expect(checkPatternImage(unaligned, state).ok).toBe(true);
    flip(unaligned, 77 * PAGE + 3, 1);
    const result = checkPatternImage(unaligned, state);
    expect(result.ok).toBe(false);
    expect(result.badPages).toEqual([77]);
  });

  it('accepts an all-zero image at n = 0 with x = seed, and rejects any write in it', () => {
    const image = new Uint8Array(16 * PAGE);
    const state = { seed: 7, wssPages: 16, x: 7, n: 0 };
    expect(checkPatternImage(image, state)).toMatchObject({ ok: true, pagesWritten: 0, writesReplayed: 0 });
    image[5 * PAGE] = 1;
    expect(checkPatternImage(image, state)).toMatchObject({ ok: false, badPages: [5] });
  });

  it('refuses an image that is not a whole number of pages, a zero seed and a working set larger than the image', () => {
    expect(checkPatternImage(new Uint8Array(PAGE + 1), { seed: 1, wssPages: 1, x: 1, n: 0 }).ok).toBe(false);
    expect(checkPatternImage(new Uint8Array(PAGE), { seed: 0, wssPages: 1, x: 0, n: 0 }).ok).toBe(false);
    expect(checkPatternImage(new Uint8Array(PAGE), { seed: 1, wssPages: 2, x: 1, n: 0 }).ok).toBe(false);
  });

  it('checks a 256 MiB image after 300,000 writes', () => {
    const big: WorkloadSpec = { kind: 'pattern', rate: 1000, wssPages: 50_000, seed: 99 };
    const { image, regs } = runPattern(65_536, big, 300_000);
    const state = { seed: big.seed, wssPages: big.wssPages, x: regs.x, n: regs.n };
    const good = checkPatternImage(image, state);
    expect(good.ok).toBe(true);
    expect(good.writesReplayed).toBe(300_000);
    image[65_535 * PAGE] = 9;
    expect(checkPatternImage(image, state).badPages).toEqual([65_535]);
  });
});

describe('readDump and checkDump', () => {
  let dir: string | undefined;
  afterEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  function writeDump(image: Uint8Array, meta: unknown): string {
    dir = mkdtempSync(join(tmpdir(), 'ferry-replay-'));
    const file = join(dir, 'vm.img');
    writeFileSync(file, image);
    writeFileSync(`${file}.json`, JSON.stringify(meta));
    return file;
  }

  const spec: WorkloadSpec = { kind: 'pattern', rate: 500, wssPages: 100, seed: 4242 };

  it('reads the image and metadata that ferry vm dump writes, and accepts a correct dump', () => {
    const { image, regs } = runPattern(128, spec, 2000);
    const meta = {
      vm: 'web1', host: 'host-a', memoryBytes: image.byteLength, pageSize: PAGE,
      workload: { kind: 'pattern', seed: spec.seed, wssPages: spec.wssPages, rate: spec.rate },
      cpu: { x: regs.x, n: regs.n }, takenAt: new Date(0).toISOString(),
    };
    const file = writeDump(image, meta);
    const read = readDump(file);
    expect(read.meta).toEqual(meta);
    expect(Buffer.from(read.image).equals(Buffer.from(image))).toBe(true);
    expect(checkDump(file)).toMatchObject({ ok: true, writesReplayed: 2000 });
  });

  it('rejects a dump whose registers are off by one write, or whose workload is not pattern', () => {
    const { image, regs } = runPattern(128, spec, 2000);
    const meta = {
      vm: 'web1', memoryBytes: image.byteLength, pageSize: PAGE,
      workload: { kind: 'pattern', seed: spec.seed, wssPages: spec.wssPages, rate: spec.rate },
      cpu: { x: regs.x, n: regs.n + 1 },
    };
    expect(checkDump(writeDump(image, meta)).ok).toBe(false);
    rmSync(dir!, { recursive: true, force: true });
    const hotset = { ...meta, workload: { ...meta.workload, kind: 'hotset' }, cpu: { x: regs.x, n: regs.n } };
    expect(checkDump(writeDump(image, hotset))).toMatchObject({ ok: false, reason: expect.stringMatching(/not pattern/) });
  });

  it('rejects a dump whose image is shorter than its metadata says', () => {
    const { image, regs } = runPattern(128, spec, 2000);
    const meta = {
      vm: 'web1', memoryBytes: image.byteLength, pageSize: PAGE,
      workload: { kind: 'pattern', seed: spec.seed, wssPages: spec.wssPages, rate: spec.rate },
      cpu: { x: regs.x, n: regs.n },
    };
    expect(checkDump(writeDump(image.subarray(0, 127 * PAGE), meta)).ok).toBe(false);
  });
});

describe('a filled guest (vm create --filled)', () => {
  const spec: WorkloadSpec = { kind: 'pattern', rate: 1000, wssPages: 100, seed: 77, filled: true };
  const pageCount = 128;

  function filledImage(): { image: Uint8Array; regs: WorkloadRegisters } {
    const image = new Uint8Array(pageCount * PAGE);
    fillInitialPages(image, 0, pageCount);
    const words = new Uint32Array(image.buffer);
    const regs = { x: spec.seed, n: 0 };
    const next = workloadStep(spec);
    for (let i = 0; i < 300; i++) fillPage(words, next(regs), regs.n);
    return { image, regs };
  }

  it('starts with no zero page, and the independent replay accepts it only as a filled image', () => {
    const { image, regs } = filledImage();
    for (let page = 0; page < pageCount; page++) expect(image.subarray(page * PAGE, (page + 1) * PAGE).some((byte) => byte !== 0)).toBe(true);
    expect(checkPatternImage(image, { seed: spec.seed, wssPages: spec.wssPages, x: regs.x, n: regs.n, filled: true }).ok).toBe(true);
    expect(checkPatternImage(image, { seed: spec.seed, wssPages: spec.wssPages, x: regs.x, n: regs.n }).ok).toBe(false);
  });

  it('is what the product\'s own check (ferry vm check) expects too, page for page', () => {
    const { image, regs } = filledImage();
    const info = { memoryBytes: pageCount * PAGE, workload: spec, cpu: { x: regs.x, n: regs.n } } as unknown as VmInfo;
    expect(checkPattern(info, image)).toMatchObject({ ok: true, badPages: [] });
    image[(pageCount - 1) * PAGE + 8] = 0; // w[2] of the last page, never written: it must read as its page number
    expect(checkPattern(info, image).badPages).toEqual([pageCount - 1]);
  });
});

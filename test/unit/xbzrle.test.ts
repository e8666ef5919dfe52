/**
 * XBZRLE deltas (shared/xbzrle.ts): what the encoder makes, the decoder restores exactly; what the decoder is given
 * from the network it checks whole before writing, and it never writes outside the page.
 */
import { describe, expect, it } from 'vitest';
import { PAGE_SIZE } from '../../shared/constants.js';
import { FerryError } from '../../shared/errors.js';
import { XBZRLE_MAX_DELTA_BYTES, applyDelta, checkDelta, encodeDelta } from '../../shared/xbzrle.js';
import { xorshift32 } from '../../shared/workloads.js';

/** A deterministic generator (xorshift32), so a failure can be replayed. */
function random(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => (x = xorshift32(x));
}

function randomPage(next: () => number): Uint8Array {
  const page = new Uint8Array(PAGE_SIZE);
  for (let i = 0; i < PAGE_SIZE; i++) page[i] = next() & 0xff;
  return page;
}

/** Encodes `current` against `previous`, applies it to a copy of `previous`, and returns the encoding's length. */
function roundTrip(previous: Uint8Array, current: Uint8Array, limit = PAGE_SIZE * 2): number {
  const out = new Uint8Array(limit);
  const length = encodeDelta(previous, current, out, limit);
  expect(length).toBeGreaterThanOrEqual(0);
  const restored = previous.slice();
  applyDelta(out.subarray(0, length), restored);
  expect(Buffer.from(restored).equals(Buffer.from(current))).toBe(true);
  return length;
}

/** A page in a buffer with a guard byte pattern on both sides, to see writes outside it. */
function guarded(page: Uint8Array): { buffer: Uint8Array; page: Uint8Array } {
  const buffer = new Uint8Array(PAGE_SIZE * 3).fill(0x5a);
  buffer.set(page, PAGE_SIZE);
  return { buffer, page: buffer.subarray(PAGE_SIZE, 2 * PAGE_SIZE) };
}

describe('XBZRLE encoding', () => {
  it('encodes an unchanged page as nothing', () => {
    const page = randomPage(random(1));
    expect(encodeDelta(page, page.slice(), new Uint8Array(XBZRLE_MAX_DELTA_BYTES))).toBe(0);
    const restored = page.slice();
    applyDelta(new Uint8Array(0), restored);
    expect(restored).toEqual(page);
  });

  it('restores a page with a few changed words in a few bytes', () => {
    const previous = randomPage(random(2));
    const current = previous.slice();
    for (const at of [16, 1000, 2048, 4000]) current[at] = (current[at]! + 1) & 0xff;
    const length = roundTrip(previous, current);
    // Four changed bytes: a zero run, a changed run of one and the byte, each.
    expect(length).toBeLessThanOrEqual(4 * 4);
  });

  it('restores changes at the very first and very last byte', () => {
    const previous = randomPage(random(3));
    const current = previous.slice();
    current[0] = previous[0]! ^ 0xff;
    current[PAGE_SIZE - 1] = previous[PAGE_SIZE - 1]! ^ 0xff;
    const length = roundTrip(previous, current);
    // A zero run of 0 first, then one of 4094 (two bytes), each with one changed byte.
    expect(length).toBe(1 + 1 + 1 + 2 + 1 + 1);
  });

  it('restores a page changed only at its end, and one changed only at its start', () => {
    const previous = randomPage(random(4));
    const atEnd = previous.slice();
    for (let i = PAGE_SIZE - 10; i < PAGE_SIZE; i++) atEnd[i] = previous[i]! ^ 0x80;
    roundTrip(previous, atEnd);
    const atStart = previous.slice();
    for (let i = 0; i < 10; i++) atStart[i] = previous[i]! ^ 0x01;
    roundTrip(previous, atStart);
  });

  it('gives up on a page that changed everywhere, and restores it when allowed the room', () => {
    const previous = new Uint8Array(PAGE_SIZE);
    const current = new Uint8Array(PAGE_SIZE).fill(1);
    expect(encodeDelta(previous, current, new Uint8Array(XBZRLE_MAX_DELTA_BYTES))).toBe(-1);
    expect(roundTrip(previous, current, PAGE_SIZE + 3)).toBe(1 + 2 + PAGE_SIZE); // a zero run of 0, a changed run of 4096
  });

  it('gives up on alternate changed bytes, which cost more than the page', () => {
    const previous = new Uint8Array(PAGE_SIZE);
    const current = new Uint8Array(PAGE_SIZE);
    for (let i = 0; i < PAGE_SIZE; i += 2) current[i] = 1;
    expect(encodeDelta(previous, current, new Uint8Array(PAGE_SIZE), PAGE_SIZE)).toBe(-1);
    roundTrip(previous, current, 3 * PAGE_SIZE);
  });

  it('round-trips random pages with random changes of every density, aligned or not', () => {
    const next = random(5);
    for (let trial = 0; trial < 300; trial++) {
      const previous = randomPage(next);
      const current = previous.slice();
      const changes = next() % (trial % 3 === 0 ? 2000 : 60);
      for (let c = 0; c < changes; c++) {
        const at = next() % PAGE_SIZE;
        const span = 1 + (next() % 24);
        for (let i = at; i < Math.min(PAGE_SIZE, at + span); i++) current[i] = next() & 0xff;
      }
      // Unaligned views too: the encoder's word loop must not assume them.
      const offset = trial % 4;
      const shiftedOld = new Uint8Array(PAGE_SIZE + 4).subarray(offset, offset + PAGE_SIZE);
      const shiftedNew = new Uint8Array(PAGE_SIZE + 4).subarray(offset, offset + PAGE_SIZE);
      shiftedOld.set(previous);
      shiftedNew.set(current);
      roundTrip(shiftedOld, shiftedNew, 3 * PAGE_SIZE);
    }
  });

  it('never returns more than its limit, and -1 only when the encoding would not fit', () => {
    const next = random(6);
    for (let trial = 0; trial < 100; trial++) {
      const previous = randomPage(next);
      const current = previous.slice();
      for (let c = next() % 900; c > 0; c--) current[next() % PAGE_SIZE] = next() & 0xff;
      const limit = XBZRLE_MAX_DELTA_BYTES;
      const bounded = encodeDelta(previous, current, new Uint8Array(limit), limit);
      const unbounded = encodeDelta(previous, current, new Uint8Array(3 * PAGE_SIZE), 3 * PAGE_SIZE);
      if (unbounded <= limit) expect(bounded).toBe(unbounded);
      else expect(bounded).toBe(-1);
    }
  });
});

describe('XBZRLE decoding refuses what it cannot trust', () => {
  const refusals: [string, number[]][] = [
    ['a three-byte length', [0x80, 0x80, 0x01, 1, 0]],
    ['a length cut off', [0x85]],
    ['a zero run with no changed run', [5]],
    ['an empty changed run', [0, 0]],
    ['an empty zero run after the first pair', [0, 1, 9, 0, 1, 9]],
    ['literal bytes past the end of the delta', [0, 5, 1, 2]],
    ['a zero run past the page', [0x80, 0x20, 1, 7]], // 4096
    ['a changed run past the page', [0xff, 0x1f, 2, 1, 2]], // 4095 + 2
    ['a changed run longer than the page', [0, 0x81, 0x20, 1]], // 4097
  ];
  for (const [what, bytes] of refusals) {
    it(`refuses ${what} and leaves the page as it was`, () => {
      const original = randomPage(random(7));
      const { buffer, page } = guarded(original);
      const before = buffer.slice();
      expect(() => applyDelta(Uint8Array.from(bytes), page)).toThrow(FerryError);
      expect(() => checkDelta(Uint8Array.from(bytes))).toThrow(/bad XBZRLE delta/);
      expect(buffer).toEqual(before);
    });
  }

  it('refuses or applies random bytes, and never writes outside the page', () => {
    const next = random(8);
    let applied = 0;
    for (let trial = 0; trial < 3000; trial++) {
      const length = 1 + (next() % 40);
      const bytes = new Uint8Array(length);
      // Small lengths most of the time, so that some of these are well formed.
      for (let i = 0; i < length; i++) bytes[i] = next() % 4 === 0 ? next() & 0xff : next() % 20;
      const { buffer, page } = guarded(new Uint8Array(PAGE_SIZE));
      try {
        applyDelta(bytes, page);
        applied += 1;
      } catch (error) {
        expect((error as FerryError).code).toBe('FERRY_ERR_PROTOCOL');
        expect(page.every((byte) => byte === 0)).toBe(true);
      }
      expect(buffer.subarray(0, PAGE_SIZE).every((byte) => byte === 0x5a)).toBe(true);
      expect(buffer.subarray(2 * PAGE_SIZE).every((byte) => byte === 0x5a)).toBe(true);
    }
    expect(applied).toBeGreaterThan(0);
  });

  it('refuses every cut of a good delta short of its end', () => {
    const previous = randomPage(random(9));
    const current = previous.slice();
    for (const at of [3, 200, 201, 3000]) current[at] = previous[at]! ^ 0x11;
    const out = new Uint8Array(PAGE_SIZE);
    const length = encodeDelta(previous, current, out);
    for (let cut = 1; cut < length; cut++) {
      const { buffer, page } = guarded(previous);
      const before = buffer.slice();
      let threw = false;
      try {
        applyDelta(out.subarray(0, cut), page);
      } catch {
        threw = true;
      }
      // A cut just after a whole pair is a well-formed, shorter delta; anything else is refused untouched.
      if (threw) expect(buffer).toEqual(before);
      expect(buffer.subarray(0, PAGE_SIZE).every((byte) => byte === 0x5a)).toBe(true);
    }
  });
});

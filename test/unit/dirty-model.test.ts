import { describe, expect, it } from 'vitest';
import { fitDirtyCurve, uniquePagesDirtied, type DirtyCurve } from '../../shared/dirty-model.js';

const CHECKPOINTS = [100, 250, 500, 1000];

/** What a sampling window would count for `curve`, at the sampler's checkpoints. */
function window(curve: DirtyCurve): { ms: number; pages: number }[] {
  return CHECKPOINTS.map((ms) => ({ ms, pages: Math.round(uniquePagesDirtied(curve, ms)) }));
}

/** Random writes over a working set, simulated write by write: a second route to U(t), independent of the formula. */
function simulatedRandomWindow(ratePagesPerSec: number, wssPages: number, seed = 12345): { ms: number; pages: number }[] {
  const seen = new Uint8Array(wssPages);
  let x = seed;
  let unique = 0;
  let written = 0;
  return CHECKPOINTS.map((ms) => {
    const due = Math.floor((ratePagesPerSec * ms) / 1000);
    for (; written < due; written++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      const page = (x >>> 0) % wssPages;
      if (seen[page] === 0) {
        seen[page] = 1;
        unique += 1;
      }
    }
    return { ms, pages: unique };
  });
}

describe('uniquePagesDirtied', () => {
  it('levels off at the working set for random writes, and is linear until it for a scanner', () => {
    const random: DirtyCurve = { model: 'random', ratePagesPerSec: 20_000, wssPages: 16_384 };
    expect(uniquePagesDirtied(random, 10)).toBeCloseTo(200, -1);
    expect(uniquePagesDirtied(random, 60_000)).toBeCloseTo(16_384, 0);
    const scan: DirtyCurve = { model: 'sequential', ratePagesPerSec: 20_000, wssPages: 16_384 };
    expect(uniquePagesDirtied(scan, 500)).toBe(10_000);
    expect(uniquePagesDirtied(scan, 1000)).toBe(16_384);
  });

  it('is 0 without writes or time', () => {
    expect(uniquePagesDirtied({ model: 'random', ratePagesPerSec: 0, wssPages: 100 }, 1000)).toBe(0);
    expect(uniquePagesDirtied({ model: 'random', ratePagesPerSec: 100, wssPages: 100 }, 0)).toBe(0);
  });
});

describe('fitDirtyCurve', () => {
  it('finds the rate and working set of simulated random writes', () => {
    const fitted = fitDirtyCurve(simulatedRandomWindow(20_000, 16_384), 65_536);
    expect(fitted.model).toBe('random');
    expect(fitted.ratePagesPerSec).toBeGreaterThan(19_000);
    expect(fitted.ratePagesPerSec).toBeLessThan(21_000);
    expect(fitted.wssPages).toBeGreaterThan(15_500);
    expect(fitted.wssPages).toBeLessThan(17_300);
  });

  it('finds the rate of writes that all but fill their working set within the window', () => {
    // 100,000 writes a second into 16,384 pages: the last checkpoints are within a few pages of W.
    const fitted = fitDirtyCurve(simulatedRandomWindow(100_000, 16_384).map((point) => ({ ...point, pages: point.pages + 40 })), 65_536);
    expect(fitted.ratePagesPerSec).toBeGreaterThan(90_000);
    expect(fitted.ratePagesPerSec).toBeLessThan(110_000);
    expect(fitted.wssPages).toBeGreaterThan(16_000);
    expect(fitted.wssPages).toBeLessThan(17_000);
  });

  it('tells a scanner from random writes', () => {
    const fitted = fitDirtyCurve(window({ model: 'sequential', ratePagesPerSec: 40_000, wssPages: 16_384 }), 65_536);
    expect(fitted.model).toBe('sequential');
    expect(fitted.ratePagesPerSec).toBeCloseTo(40_000, -2);
    expect(fitted.wssPages).toBeCloseTo(16_384, -1);
  });

  it('gives the whole memory as the working set when the window never saw the curve level off', () => {
    const fitted = fitDirtyCurve(simulatedRandomWindow(1000, 1_000_000), 65_536);
    expect(fitted.ratePagesPerSec).toBeGreaterThan(950);
    expect(fitted.ratePagesPerSec).toBeLessThan(1050);
    expect(fitted.wssPages).toBeGreaterThan(30_000);
    expect(fitted.wssPages).toBeLessThanOrEqual(65_536);
  });

  it('reports nothing written as a rate of 0', () => {
    expect(fitDirtyCurve(CHECKPOINTS.map((ms) => ({ ms, pages: 0 })), 4096)).toEqual({ model: 'random', ratePagesPerSec: 0, wssPages: 0 });
  });
});

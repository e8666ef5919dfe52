import { describe, expect, it } from 'vitest';
import { decideStop, expectedDowntimeMs, switchToPostcopy, type RoundFacts } from '../../shared/stop-rules.js';

const GiB = 1024 ** 3;

/**
 * A round that is paying off: 1 GiB guest, round 3 of 30, half the previous dirty set left (100,000 pages, about
 * 390 MiB: far from fitting 300 ms at 1 GB/s), 1.5 GiB sent so far.
 */
function facts(overrides: Partial<RoundFacts> = {}): RoundFacts {
  return {
    round: 3,
    pagesSent: 200_000,
    dirtyPagesAfter: 100_000,
    bytesSentTotal: 1.5 * GiB,
    memoryBytes: 1 * GiB,
    bandwidthBytesPerSec: 1e9,
    maxDowntimeMs: 300,
    maxRounds: 30,
    ...overrides,
  };
}

describe('expectedDowntimeMs', () => {
  it('is the time to send the pages at the measured bandwidth', () => {
    expect(expectedDowntimeMs(256, 1024 * 1024)).toBeCloseTo(1000, 9); // 1 MiB at 1 MiB/s
    expect(expectedDowntimeMs(25_000, 1e9)).toBeCloseTo(102.4, 9);
  });

  it('is 0 for no pages and infinite without bandwidth', () => {
    expect(expectedDowntimeMs(0, 0)).toBe(0);
    expect(expectedDowntimeMs(1, 0)).toBe(Number.POSITIVE_INFINITY);
  });
});

describe('decideStop', () => {
  it('goes on while rounds still shrink the dirty set a lot and many pages are dirty', () => {
    expect(decideStop(facts())).toBeUndefined();
  });

  it('goes on while rounds still shrink a lot even when the rest would already fit the downtime limit (unlike QEMU)', () => {
    // 5,000 pages = 20 MB, 20 ms at 1 GB/s: fits 300 ms, but the round halved the dirty set
    expect(decideStop(facts({ pagesSent: 10_000, dirtyPagesAfter: 5_000 }))).toBeUndefined();
  });

  it('stops with few-dirty-pages below 50 dirty pages (Xen), and not at 50', () => {
    expect(decideStop(facts({ dirtyPagesAfter: 49 }))).toBe('few-dirty-pages');
    expect(decideStop(facts({ dirtyPagesAfter: 0 }))).toBe('few-dirty-pages');
    expect(decideStop(facts({ pagesSent: 10_000, dirtyPagesAfter: 50 }))).toBeUndefined();
  });

  it('stops with max-rounds once the round cap is reached', () => {
    expect(decideStop(facts({ round: 30 }))).toBe('max-rounds');
    expect(decideStop(facts({ round: 29 }))).toBeUndefined();
    expect(decideStop(facts({ round: 5, maxRounds: 5 }))).toBe('max-rounds');
  });

  it('stops with max-bytes once 3 x guest memory has been sent (Xen)', () => {
    expect(decideStop(facts({ bytesSentTotal: 3 * GiB }))).toBe('max-bytes');
    expect(decideStop(facts({ bytesSentTotal: 3 * GiB - 4096 }))).toBeUndefined();
  });

  it('stops with converged-within-downtime when a round shrank the set by under 10 % and the rest fits the limit', () => {
    // 9,500 of 10,000 pages still dirty (5 % shrink); 9,500 pages = 38.9 MB, 39 ms at 1 GB/s
    expect(decideStop(facts({ pagesSent: 10_000, dirtyPagesAfter: 9_500 }))).toBe('converged-within-downtime');
    // the dirty set grew: no shrink at all
    expect(decideStop(facts({ pagesSent: 10_000, dirtyPagesAfter: 12_000 }))).toBe('converged-within-downtime');
  });

  it('does not count a shrink of exactly 10 % as stalled', () => {
    expect(decideStop(facts({ pagesSent: 10_000, dirtyPagesAfter: 9_000, bandwidthBytesPerSec: 1e12 }))).toBeUndefined();
    expect(decideStop(facts({ pagesSent: 10_000, dirtyPagesAfter: 9_001, bandwidthBytesPerSec: 1e12 }))).toBe('converged-within-downtime');
  });

  it('does not stop on a stalled round whose rest does not fit the downtime limit', () => {
    // 95,000 pages = 389 MB: 389 ms at 1 GB/s, over 300 ms
    expect(decideStop(facts({ pagesSent: 100_000, dirtyPagesAfter: 95_000 }))).toBeUndefined();
    // a shrink above 10 % is still paying off, even though the rest fits
    expect(decideStop(facts({ pagesSent: 10_000, dirtyPagesAfter: 8_900 }))).toBeUndefined();
    // no bandwidth measured: nothing fits
    expect(decideStop(facts({ pagesSent: 10_000, dirtyPagesAfter: 9_900, bandwidthBytesPerSec: 0 }))).toBeUndefined();
  });

  it('uses the measured bandwidth and the downtime limit to judge "fits"', () => {
    const stalled = { pagesSent: 10_000, dirtyPagesAfter: 9_500 }; // 38.9 MB
    expect(decideStop(facts({ ...stalled, bandwidthBytesPerSec: 100e6 }))).toBeUndefined(); // 389 ms > 300 ms
    expect(decideStop(facts({ ...stalled, bandwidthBytesPerSec: 100e6, maxDowntimeMs: 400 }))).toBe('converged-within-downtime');
  });

  it('prefers few-dirty-pages over both caps', () => {
    expect(decideStop(facts({ dirtyPagesAfter: 10, round: 30, bytesSentTotal: 10 * GiB }))).toBe('few-dirty-pages');
    expect(decideStop(facts({ dirtyPagesAfter: 10, round: 30 }))).toBe('few-dirty-pages');
    expect(decideStop(facts({ dirtyPagesAfter: 10, bytesSentTotal: 10 * GiB }))).toBe('few-dirty-pages');
  });

  it('reports a cap rather than convergence when both hold, so the report can say the cap forced the stop', () => {
    expect(decideStop(facts({ pagesSent: 10_000, dirtyPagesAfter: 9_500, round: 30 }))).toBe('max-rounds');
    expect(decideStop(facts({ pagesSent: 10_000, dirtyPagesAfter: 9_500, bytesSentTotal: 3 * GiB }))).toBe('max-bytes');
  });
});

describe('switchToPostcopy', () => {
  const asked = { maxDowntimeMs: 300 };
  it('switches --postcopy auto after round 1 when the forecast said pre-copy would not converge and round 1 agrees, and never once it has', () => {
    const told = { ...asked, postcopy: { mode: 'auto' as const, forecastConverges: false } };
    expect(switchToPostcopy(told, 0, undefined, false, 301)).toBeUndefined();
    expect(switchToPostcopy(told, 1, undefined, false, 301)).toBe('forecast');
    // Round 1 left a dirty set whose stop-and-copy fits the limit: pre-copy is about to converge, whatever the forecast said.
    expect(switchToPostcopy(told, 1, undefined, false, 299)).toBeUndefined();
    expect(switchToPostcopy(told, 1, 'few-dirty-pages', false, 301)).toBeUndefined();
    expect(switchToPostcopy(told, 2, 'converged-within-downtime', true, 301)).toBeUndefined();
  });

  it('leaves --postcopy auto to the rounds when the forecast expected pre-copy to converge, or made none', () => {
    for (const postcopy of [{ mode: 'auto' as const, forecastConverges: true }, { mode: 'auto' as const }]) {
      const options = { ...asked, postcopy };
      expect(switchToPostcopy(options, 1, undefined, false, 1)).toBeUndefined();
      expect(switchToPostcopy(options, 3, undefined, true, 301)).toBe('not converging');
      expect(switchToPostcopy(options, 30, 'max-rounds', true, 1)).toBe('not converging');
    }
  });
});

import { describe, expect, it } from 'vitest';
import { forecaster, predictMigration, withForecastVerdict, type ForecastInput } from '../../coordinator/forecast.js';
import type { Forecaster } from '../../coordinator/fleet/fleet-store.js';
import { PAGE_SIZE } from '../../shared/constants.js';
import type { MigrationOptions } from '../../shared/protocol.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

const options: MigrationOptions = { maxDowntimeMs: 300, maxBandwidthBytesPerSec: 0, maxRounds: 30, verify: 'pages', autoConverge: false };
const overheadMs = { setupMs: 100, perRoundMs: 1, pausedMs: 8, tailMs: 5 };

/** A 1 GiB guest writing 64 MiB at `rate` page writes a second, over a 1 GiB/s link. */
function input(rate: number, overrides: Partial<ForecastInput> = {}): ForecastInput {
  return {
    memoryPages: GiB / PAGE_SIZE,
    stats: { dirtyPagesPerSec: rate, wssPages: (64 * MiB) / PAGE_SIZE, model: 'random' },
    link: { bytesPerSec: GiB, rttMs: 1 },
    options,
    overheadMs,
    ...overrides,
  };
}

describe('predictMigration with post-copy', () => {
  it('--postcopy-after 0: no rounds, the switch alone as downtime, every page pushed once, and the risk said', () => {
    const rate = (1.5 * GiB) / PAGE_SIZE;
    const forecast = predictMigration(input(rate, { options: { ...options, postcopy: { mode: 'after', afterRounds: 0 } } }));
    expect(forecast.rounds).toBe(0);
    expect(forecast.postcopy).toEqual({ afterRounds: 0, missingPages: GiB / PAGE_SIZE, durationMs: 1000 });
    expect(forecast.converges).toBe(true);
    expect(forecast.downtimeMs).toBeCloseTo(8, 6);
    expect(forecast.bytes).toBe(GiB);
    // setup + the switch + 1 s of push + the tail
    expect(forecast.totalTimeMs).toBeCloseTo(100 + 8 + 1000 + 5, 6);
    expect(forecast.advice.join(' ')).toMatch(/a crash of either host LOSES THE VM/);
  });

  it('--postcopy: one round, then the pages dirtied meanwhile follow the switch', () => {
    const rate = (0.25 * GiB) / PAGE_SIZE;
    const forecast = predictMigration(input(rate, { options: { ...options, postcopy: { mode: 'after', afterRounds: 1 } } }));
    expect(forecast.rounds).toBe(1);
    expect(forecast.postcopy?.afterRounds).toBe(1);
    expect(forecast.postcopy?.missingPages).toBe(forecast.roundsDetail[0]!.dirtyPagesAfter);
    expect(forecast.downtimeMs).toBeCloseTo(8, 6);
  });

  it('--postcopy auto switches only when pre-copy will not converge, and a guest that outruns the link is told post-copy would end it', () => {
    const idle = predictMigration(input(0, { options: { ...options, postcopy: { mode: 'auto' } } }));
    expect(idle.postcopy).toBeUndefined();
    // Delta compression is not modelled, and the forecast says so.
    expect(predictMigration(input(0, { options: { ...options, compress: 'xbzrle' } })).advice.join(' ')).toMatch(/--compress xbzrle: rounds 2 on are counted as whole pages here, an upper bound/);
    expect(predictMigration(input(0)).advice.join(' ')).not.toMatch(/xbzrle/);
    // No switch expected, and still the risk said: the rounds may switch after all.
    expect(idle.advice.join(' ')).toMatch(/not expected to be needed.*LOSES THE VM/);
    expect(idle.stopReason).toBe('few-dirty-pages');
    const fast = (1.5 * GiB) / PAGE_SIZE;
    const tight = { ...options, maxDowntimeMs: 5 };
    const auto = predictMigration(input(fast, { options: { ...tight, postcopy: { mode: 'auto' } } }));
    expect(auto.postcopy).toBeDefined();
    expect(auto.converges).toBe(true);
    const plain = predictMigration(input(fast, { options: tight }));
    expect(plain.converges).toBe(false);
    expect(plain.advice.some((line) => /--postcopy would end it in one pass/.test(line))).toBe(true);
  });

  it('--postcopy auto: a forecast that expects pre-copy not to converge switches after round 1, and the source is told so', () => {
    const fast = (1.5 * GiB) / PAGE_SIZE;
    // A limit above the pause's fixed cost (8 ms) that round 1's 64 MiB of dirty pages overrun.
    const tight = { ...options, maxDowntimeMs: 15, postcopy: { mode: 'auto' as const } };
    const auto = predictMigration(input(fast, { options: tight }));
    expect(auto.precopyConverges).toBe(false);
    expect(auto.postcopy?.afterRounds).toBe(1);
    expect(withForecastVerdict(tight, auto).postcopy).toEqual({ mode: 'auto', forecastConverges: false });
    const idle = predictMigration(input(0, { options: { ...options, postcopy: { mode: 'auto' } } }));
    expect(idle.precopyConverges).toBe(true);
    expect(idle.postcopy).toBeUndefined();
    // Nothing else changes: a forecast that expects convergence, none at all, or no --postcopy auto.
    const idleAuto = { ...options, postcopy: { mode: 'auto' as const } };
    expect(withForecastVerdict(idleAuto, idle)).toBe(idleAuto);
    expect(withForecastVerdict(tight, undefined)).toBe(tight);
    expect(withForecastVerdict(options, auto)).toBe(options);
  });

  it('--postcopy auto: a limit below the pause\'s fixed cost is no reason to switch, since post-copy pauses as long', () => {
    // pausedMs 8 against a 5 ms limit: pre-copy cannot meet it, and neither can a switch.
    const moderate = predictMigration(input(5000, { options: { ...options, maxDowntimeMs: 5, postcopy: { mode: 'auto' } } }));
    expect(moderate.precopyConverges).toBe(true);
    expect(moderate.postcopy).toBeUndefined();
  });
});

describe('predictMigration', () => {
  it('an idle guest: one round, the fixed costs and nothing more', () => {
    const forecast = predictMigration(input(0));
    expect(forecast.rounds).toBe(1);
    expect(forecast.stopReason).toBe('few-dirty-pages');
    expect(forecast.converges).toBe(true);
    expect(forecast.bytes).toBe(GiB);
    // setup + 1 s of round 1 + its sync + the pause's fixed cost + the tail
    expect(forecast.totalTimeMs).toBeCloseTo(100 + 1000 + 1 + 8 + 5, 6);
    expect(forecast.downtimeMs).toBeCloseTo(8, 6);
    expect(forecast.advice).toEqual([]);
  });

  it('a guest that dirties a tenth of the link converges in a few shrinking rounds, downtime near the floor', () => {
    const rate = (0.1 * GiB) / PAGE_SIZE;
    const forecast = predictMigration(input(rate));
    expect(forecast.converges).toBe(true);
    expect(forecast.rounds).toBeGreaterThan(1);
    for (let i = 1; i < forecast.roundsDetail.length; i++) {
      expect(forecast.roundsDetail[i]!.pages).toBeLessThan(forecast.roundsDetail[i - 1]!.pages);
    }
    expect(forecast.downtimeMs).toBeLessThan(options.maxDowntimeMs);
    expect(forecast.bytes).toBeGreaterThan(GiB);
  });

  it('a guest that outruns the link does not converge under a tight limit, and says what would', () => {
    const rate = (1.5 * GiB) / PAGE_SIZE;
    // Its 64 MiB working set stays about 40 % dirty whatever the rounds do: about 40 ms to send at 1 GiB/s.
    const forecast = predictMigration(input(rate, { options: { ...options, maxDowntimeMs: 30 }, overheadMs: { ...overheadMs, pausedMs: 0 } }));
    expect(forecast.converges).toBe(false);
    expect(forecast.stopReason).toBe('max-rounds');
    expect(forecast.downtimeMs).toBeGreaterThan(30);
    expect(forecast.advice.some((line) => /page stream of .* or more/.test(line))).toBe(true);
    expect(forecast.advice.some((line) => line.includes('--auto-converge'))).toBe(true);
    expect(forecast.advice.some((line) => /--max-downtime \d+ms would accept/.test(line))).toBe(true);
  });

  it('auto-converge throttles the guest round by round until it converges', () => {
    const rate = (1.5 * GiB) / PAGE_SIZE;
    const tight = { ...options, maxDowntimeMs: 30 };
    // No fixed pause cost here: the source's stop rule does not count it, so a throttled dirty set that just fits the
    // limit would be over it by that much, and this test is about the throttle.
    const pause = { overheadMs: { ...overheadMs, pausedMs: 0 } };
    const without = predictMigration(input(rate, { options: tight, ...pause }));
    const throttled = predictMigration(input(rate, { options: { ...tight, autoConverge: true }, ...pause }));
    expect(without.converges).toBe(false);
    expect(throttled.converges).toBe(true);
    expect(throttled.throttlePct).toBeGreaterThanOrEqual(20);
    const steps = throttled.roundsDetail.map((round) => round.throttlePct);
    expect(steps[0]).toBe(0);
    expect(steps).toEqual([...steps].sort((a, b) => a - b)); // it only ever tightens
  });

  it('--max-bandwidth caps the rounds below the link, and the advice names the cap', () => {
    const rate = (0.5 * GiB) / PAGE_SIZE;
    const capped = { ...options, maxBandwidthBytesPerSec: 256 * MiB, maxDowntimeMs: 50 };
    const forecast = predictMigration(input(rate, { options: capped }));
    expect(forecast.bandwidthBytesPerSec).toBe(256 * MiB);
    expect(forecast.roundsDetail[0]!.ms).toBeCloseTo(4000 + 1, 6); // 1 GiB at 256 MiB/s, and the sync
    expect(forecast.converges).toBe(false);
    expect(forecast.advice.some((line) => line.includes('--max-bandwidth caps it'))).toBe(true);
    const free = predictMigration(input(rate, { options: { ...capped, maxBandwidthBytesPerSec: 0 } }));
    expect(free.totalTimeMs).toBeLessThan(forecast.totalTimeMs);
  });

  it('scattered dirty pages go at the scattered pace: later rounds and the pause take longer than round 1\'s rate says', () => {
    const rate = (0.1 * GiB) / PAGE_SIZE;
    const even = predictMigration(input(rate));
    const slow = predictMigration(input(rate, { link: { bytesPerSec: GiB, rttMs: 1, scatteredBytesPerSec: GiB / 2 } }));
    expect(slow.roundsDetail[0]!.ms).toBe(even.roundsDetail[0]!.ms);
    const second = slow.roundsDetail[1]!;
    expect(second.ms).toBeCloseTo(((second.pages * PAGE_SIZE) / (GiB / 2)) * 1000 + 1, 6);
    expect(slow.totalTimeMs).toBeGreaterThan(even.totalTimeMs);
  });

  it('with --copy-storage, the disk copy comes first and the advice gives its time', () => {
    const forecast = predictMigration(input(0, { options: { ...options, copyStorage: true }, disks: [{ file: 'disk0.img', bytes: 2 * GiB }] }));
    expect(forecast.storageMs).toBeCloseTo(2000, 6);
    expect(forecast.totalTimeMs).toBeCloseTo(100 + 2000 + 1000 + 1 + 8 + 5, 6);
    expect(forecast.advice.some((line) => line.startsWith('--copy-storage: copying 2 GiB'))).toBe(true);
  });

  it('a pause that costs more than the limit by itself is named as the reason', () => {
    const forecast = predictMigration(input(0, { options: { ...options, maxDowntimeMs: 5 } }));
    expect(forecast.converges).toBe(false);
    expect(forecast.advice[0]).toMatch(/fixed cost alone/);
  });
});

describe('forecaster', () => {
  it('is what drain and balance take as their Forecaster', () => {
    const made: Forecaster = forecaster({ hosts: [] });
    expect(typeof made).toBe('function');
  });
});

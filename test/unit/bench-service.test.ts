/**
 * The benchmark's service scenarios without processes: how a scenario file declares them, and how migrations under
 * the probe add up to the summary's figures and targets and to rows of runs.csv.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { toCsv } from '../../coordinator/bench/output.js';
import { loadScenarios, type Scenario } from '../../coordinator/bench/scenarios.js';
import { gapSpanning, type ServiceMigration, type ServiceRun, type SteadySample } from '../../coordinator/bench/service.js';
import type { ProbeResult } from '../../coordinator/probe.js';
import { servedRate, summarizeService } from '../../coordinator/bench/summary.js';
import { removeScenarioFiles, scenarioFile } from '../scenario-file.js';

afterEach(removeScenarioFiles);

const migration = (index: number, outageMs: number, downtimeMs: number, extra: Partial<ServiceMigration> = {}): ServiceMigration => ({
  index, from: index % 2 ? 'host-a' : 'host-b', to: index % 2 ? 'host-b' : 'host-a', outcome: 'committed', outageMs, outageAtMs: 500, pauseAtMs: 495, downtimeMs, guestBlackoutMs: downtimeMs - 2,
  servingAfterPauseMs: 6, forwarded: 5, totalTimeMs: 900, sent: 4000, answered: 4000, unanswered: 0, lostWrites: 0, retries: 3, p99Ms: 1.5, ...extra,
});

const steady = (rate: number, answeredPerSec: number, unanswered = 0, p99Ms = 1): SteadySample => ({
  rate, durationMs: 3000, sent: rate * 3, answered: answeredPerSec * 3, answeredPerSec, unanswered, retries: 0, lostWrites: 0, p50Ms: 0.3, p99Ms, p999Ms: 3, maxMs: 5,
});

describe('bench service scenarios', () => {
  it('takes a service part on a kv scenario, with defaults, and refuses one on any other workload', async () => {
    const kv = { name: 'kv-x', description: 'kv', memory: '64MiB', workload: 'kv', service: { rate: 1000, migrations: 3 } };
    const [loaded] = loadScenarios(await scenarioFile([kv]));
    expect(loaded!.service).toEqual({ rate: 1000, migrations: 3, margin: '1.5s' });
    const file = await scenarioFile([{ ...kv, workload: 'pattern', rate: 10 }]);
    expect(() => loadScenarios(file)).toThrow(/has a service but runs pattern/);
  });

  it('sums migrations into medians, outage over downtime, totals and targets; each migration a row of runs.csv', () => {
    const scenario = { name: 'kv-x', description: 'kv', link: 'loopback', service: { rate: 1000, migrations: 3, margin: '1.5s' } } as Scenario;
    const run: ServiceRun = {
      scenario: 'kv-x', repeat: 1, link: 'loopback', memoryBytes: 256 * 1024 ** 2, rate: 1000, address: '127.100.0.50:7777',
      migrations: [migration(1, 14, 10), migration(2, 30, 20, { unanswered: 1 }), migration(3, 12, 9)],
      steady: [steady(1000, 1000, 0, 0.8), steady(20000, 19990), steady(30000, 21000)],
    };
    const summary = summarizeService(scenario, [run]);
    expect(summary).toMatchObject({ migrations: 3, committed: 3, unanswered: 1, lostWrites: 0 });
    expect(summary.outageMs.median).toBe(14);
    expect(summary.outageOverDowntimeMs).toMatchObject({ median: 4, min: 3, max: 10 });
    const met = Object.fromEntries(summary.targets.map((target) => [target.what.split(',')[0], target.met]));
    expect(met).toMatchObject({ 'client-observed outage - host downtime': true, 'client-observed outage': true, 'requests never answered': false, 'acknowledged writes lost': true });
    // 30,000/s asked, 21,000/s answered: it did not keep up; 20,000/s is the rate served.
    expect(servedRate(run.steady)?.rate).toBe(20000);

    const csv = toCsv([], [run]).trim().split('\n');
    expect(csv).toHaveLength(4);
    const header = csv[0]!.split(',');
    const second = Object.fromEntries(csv[2]!.split(',').map((cell, i) => [header[i], cell]));
    expect(second).toMatchObject({ scenario: 'kv-x', migration: '2', from: 'host-b', to: 'host-a', outage_ms: '30.000', downtime_ms: '20.000', requests_unanswered: '1', round1_throughput_bytes_per_sec: '' });
  });

  it('finds the gap between replies that spans the pause, apart from the longest gap elsewhere', () => {
    const probe = { startedAtEpochMs: 1_000_000, longGaps: [{ atMs: 300, gapMs: 22 }, { atMs: 1490, gapMs: 9 }, { atMs: 2000, gapMs: 6 }] } as unknown as ProbeResult;
    expect(gapSpanning(probe, 1_000_000 + 1495)).toBe(9); // inside the second gap: the switchover's
    expect(gapSpanning(probe, 1_000_000 + 1489.5)).toBe(9); // a clock's rounding before it still counts
    expect(gapSpanning(probe, 1_000_000 + 1700)).toBe(0); // replies never stopped for 5 ms there
  });
});

/**
 * The benchmark runs end to end and writes well-formed results. Nothing here looks at its timings.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { runFerry, runFerryGroup, type CliResult } from '../harness.js';

let dir: string | undefined;
const groups: { stop(): void }[] = [];
afterEach(async () => {
  for (const group of groups.splice(0)) group.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

/** `ferry bench ARGS`, with everything it starts stopped after the test even when the test fails. */
function bench(args: string[]): Promise<CliResult> {
  const group = runFerryGroup(['bench', ...args]);
  groups.push(group);
  return group.result;
}

/** `ferry bench --scenario SCENARIO --repeat N --out DIR --json` into a fresh folder; it must exit 0. */
async function benchScenario(scenario: string, repeat = 1): Promise<{ result: CliResult; results: any; out: string }> {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-bench-test-'));
  const out = path.join(dir, 'results');
  const result = await bench(['--scenario', scenario, '--repeat', String(repeat), '--out', out, '--json']);
  expect(result.code, result.stderr).toBe(0);
  return { result, results: result.json(), out };
}

describe('ferry bench', () => {
  it('runs the smoke scenario and writes JSON, CSV, Markdown and charts that agree with each other', async () => {
    const { result, results, out } = await benchScenario('smoke', 2);
    expect(JSON.parse(readFileSync(path.join(out, 'results.json'), 'utf8'))).toEqual(results);

    expect(results.environment).toMatchObject({ cores: os.cpus().length, node: process.version, link: 'loopback' });
    expect(Object.keys(results.environment.libraries)).toEqual(expect.arrayContaining(['ws', 'msgpackr', 'xxhash-wasm']));
    expect(results.baselines.loopback.bytesPerSec).toBeGreaterThan(0);
    expect(results.baselines.loopback.cpuMsPerGiB).toBeGreaterThan(0);

    expect(results.runs).toHaveLength(2);
    for (const run of results.runs) {
      expect(run).toMatchObject({ scenario: 'smoke', link: 'loopback', outcome: 'committed', replayMatches: true, memoryBytes: 16 * 1024 * 1024 });
      expect(run.verification).toMatchObject({ mode: 'full', match: true });
      expect(run.rounds.length).toBeGreaterThanOrEqual(1);
      expect(run.round1ThroughputBytesPerSec).toBeGreaterThan(0);
      expect(run.fractionOfRawTcp).toBeCloseTo(run.round1ThroughputBytesPerSec / run.rawTcpBytesPerSec, 6);
      expect(run.cpu.sourceMs).toBeGreaterThan(0);
      expect(run.cpu.destinationMs).toBeGreaterThan(0);
      expect(run.prediction.rounds.length).toBeGreaterThanOrEqual(1);
      expect(Number.isFinite(run.predictionError.totalTime)).toBe(true);
    }
    expect(results.summaries).toHaveLength(1);
    expect(results.summaries[0]).toMatchObject({ scenario: 'smoke', runs: 2, committed: 2, allVerified: true, allReplayMatched: true });

    const csv = readFileSync(path.join(out, 'runs.csv'), 'utf8').trim().split('\n');
    expect(csv).toHaveLength(3);
    expect(csv[0]).toContain('round1_throughput_bytes_per_sec');
    const markdown = readFileSync(path.join(out, 'summary.md'), 'utf8');
    expect(markdown).toContain('| smoke | loopback |');
    expect(markdown).toContain('Raw TCP on loopback');
    for (const chart of results.charts) {
      const svg = readFileSync(path.join(out, 'charts', chart), 'utf8');
      expect(svg.startsWith('<svg')).toBe(true);
      expect(markdown).toContain(`charts/${chart}`);
    }
    expect(results.charts).toEqual(expect.arrayContaining(['bytes-per-round.svg', 'throughput-vs-raw-tcp.svg', 'measured-vs-predicted.svg']));
    expect(existsSync(path.join(out, 'charts', 'bytes-per-round.png'))).toBe(true);
  });

  it('runs the smoke-sized service scenario: a kv VM migrated back and forth under a probe, with its outage, table and chart', async () => {
    const { result, results, out } = await benchScenario('kv-smoke');
    expect(results.runs).toEqual([]);
    expect(results.services).toHaveLength(1);
    const [run] = results.services;
    expect(run).toMatchObject({ scenario: 'kv-smoke', repeat: 1, link: 'loopback', memoryBytes: 32 * 1024 * 1024, rate: 200, address: '127.100.0.50:7777' });
    expect(run.migrations.map((m: { from: string; to: string }) => `${m.from}>${m.to}`)).toEqual(['host-a>host-b', 'host-b>host-a']);
    for (const migration of run.migrations) {
      expect(migration.outcome).toBe('committed');
      for (const field of ['outageMs', 'downtimeMs', 'guestBlackoutMs', 'unanswered', 'lostWrites', 'retries', 'p99Ms', 'forwarded']) {
        expect(typeof migration[field], field).toBe('number');
      }
      expect(migration.sent).toBeGreaterThan(0);
      expect(migration.answered + migration.unanswered).toBe(migration.sent);
    }
    expect(run.steady.map((sample: { rate: number }) => sample.rate)).toEqual([200, 1000]);
    expect(results.serviceSummaries[0]).toMatchObject({ scenario: 'kv-smoke', migrations: 2, committed: 2 });
    expect(results.serviceSummaries[0].targets.length).toBeGreaterThanOrEqual(4);
    // Every migration is printed as it finishes.
    expect(result.stderr).toContain('kv-smoke #1 migration 2/2 host-b -> host-a: committed');

    const csv = readFileSync(path.join(out, 'runs.csv'), 'utf8').trim().split('\n');
    expect(csv).toHaveLength(3);
    expect(csv[0]).toContain('outage_ms');
    const markdown = readFileSync(path.join(out, 'summary.md'), 'utf8');
    expect(markdown).toContain('## Service');
    expect(markdown).toContain('| kv-smoke | loopback |');
    expect(markdown).toContain('### Outside migration');
    expect(results.charts).toContain('service-outage.svg');
    expect(readFileSync(path.join(out, 'charts', 'service-outage.svg'), 'utf8').startsWith('<svg')).toBe(true);
    expect(existsSync(path.join(out, 'charts', 'service-outage.png'))).toBe(true);
  });

  it('runs the smoke-sized soak: migrations back and forth between the same agents beside other VMs, the downtime tail, memory checked', async () => {
    const { results, out } = await benchScenario('soak-smoke');
    expect(results.runs).toEqual([]);
    expect(results.soaks).toHaveLength(1);
    const [run] = results.soaks;
    expect(run).toMatchObject({ scenario: 'soak-smoke', repeat: 1, memoryBytes: 32 * 1024 * 1024, prealloc: false, others: 1, committed: 4, replayMatches: true });
    expect(run.migrations.map((m: { from: string; to: string }) => `${m.from}>${m.to}`)).toEqual(['host-a>host-b', 'host-b>host-a', 'host-a>host-b', 'host-b>host-a']);
    const downtimes = run.migrations.map((m: { downtimeMs: number }) => m.downtimeMs).sort((a: number, b: number) => a - b);
    expect(run.downtimeMs.max).toBe(downtimes.at(-1));
    expect(run.downtimeMs.median).toBeGreaterThanOrEqual(downtimes[0]);
    expect(run.downtimeMs.p95).toBeLessThanOrEqual(run.downtimeMs.max);
    const markdown = readFileSync(path.join(out, 'summary.md'), 'utf8');
    expect(markdown).toContain('## Soak: as a user runs ferry');
    expect(markdown).toContain('| soak-smoke | 1 | 32 MiB | no | 1 | 4 (4) |');
  });

  it('runs the smoke-sized storage scenario: a disk moved back and forth in both modes while the guest writes it, checked, with its table and chart', async () => {
    const { result, results, out } = await benchScenario('storage-smoke');
    expect(results.runs).toEqual([]);
    expect(results.rawDisk.bytesPerSec).toBeGreaterThan(0);
    expect(results.storage).toHaveLength(1);
    const [run] = results.storage;
    expect(run).toMatchObject({ scenario: 'storage-smoke', repeat: 1, diskBytes: 64 * 1024 * 1024, filled: false, diskRate: 2000 });
    expect(run.moves.map((m: { mode: string; from: string; to: string }) => `${m.mode} ${m.from}>${m.to}`))
      .toEqual(['mirror shared>local', 'mirror local>shared', 'iterate shared>local', 'iterate local>shared']);
    for (const move of run.moves) {
      expect(move, JSON.stringify(move)).toMatchObject({ outcome: 'moved', verified: true });
      for (const field of ['pauseMs', 'readyAfterMs', 'throughputBytesPerSec', 'imageBytesPerSec', 'achievedDiskRate']) expect(typeof move[field], field).toBe('number');
      expect(move.writeLatency.during.count).toBeGreaterThanOrEqual(0);
    }
    expect(run.moves.filter((m: { mode: string }) => m.mode === 'mirror').some((m: { mirroredWrites: number }) => m.mirroredWrites > 0)).toBe(true);
    expect(run.moves.filter((m: { mode: string }) => m.mode === 'iterate').every((m: { mirroredWrites: number }) => m.mirroredWrites === 0)).toBe(true);
    expect(run.diskCheck).toMatchObject({ checked: true, ok: true });
    expect(results.storageSummaries.map((s: { mode: string; moved: number; diskCheck: string }) => [s.mode, s.moved, s.diskCheck]))
      .toEqual([['mirror', 2, 'matched'], ['iterate', 2, 'matched']]);
    // Every move is printed as it finishes.
    expect(result.stderr).toContain('storage-smoke #1 iterate move 2/2 local -> shared: pause');

    const csv = readFileSync(path.join(out, 'runs.csv'), 'utf8').trim().split('\n');
    expect(csv).toHaveLength(5);
    expect(csv[0]).toContain('storage_mode');
    const markdown = readFileSync(path.join(out, 'summary.md'), 'utf8');
    expect(markdown).toContain('## Storage');
    expect(markdown).toContain('| storage-smoke | mirror |');
    expect(markdown).toContain('Raw disk writes');
    expect(results.charts).toContain('storage-pause-vs-disk-rate.svg');
    expect(readFileSync(path.join(out, 'charts', 'storage-pause-vs-disk-rate.svg'), 'utf8').startsWith('<svg')).toBe(true);
    expect(existsSync(path.join(out, 'charts', 'storage-pause-vs-disk-rate.png'))).toBe(true);
  });

  it('refuses an unknown scenario with exit 2 and lists the known ones', async () => {
    const result = await runFerry(['bench', '--scenario', 'warp-speed']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('no scenario named warp-speed');
    expect(result.stderr).toContain('idle-1g');
  });
});

/**
 * The policy bake-off end to end (`ferry bench --trace FILE --policies ...`): real agents, a replay VM per policy,
 * real migrations, and the table, chart and recommendation written.
 */
describe('ferry bench --trace', () => {
  it('migrates a replay VM of the trace with each policy, checks it by replay, and writes the table, chart and recommendation', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-bakeoff-test-'));
    const traceFile = path.join(dir, 'small.trace.json');
    // 8 MiB, four 50 ms intervals: a block of pages, scattered ones, nothing, a block again.
    writeFileSync(traceFile, JSON.stringify({
      format: 'ferry-trace', version: 1, vm: 'small', host: 'host-a', recordedAt: new Date().toISOString(), memoryBytes: 8 * 1024 * 1024,
      pageSize: 4096, intervalMs: 50, complete: true, samples: [[0, 64], [100, 1, 50, 1, 50, 1], [], [1000, 32]],
    }));
    const out = path.join(dir, 'results');
    const policies = ['precopy', 'postcopy', 'hybrid', 'auto-converge', 'xbzrle'];
    const result = await bench(['--trace', traceFile, '--policies', policies.join(','), '--repeat', '1', '--warmup', '200ms', '--out', out, '--json']);
    expect(result.code, result.stderr).toBe(0);
    const results = result.json();
    expect(JSON.parse(readFileSync(path.join(out, 'results.json'), 'utf8'))).toEqual(results);
    expect(results).toMatchObject({ memoryBytes: 8 * 1024 * 1024, link: 'loopback', repeat: 1, trace: { vm: 'small', samples: 4, distinctPages: 99 } });
    expect(results.policies.map((policy: { policy: string }) => policy.policy)).toEqual(policies);

    // Every policy ran for real: committed, its memory matching replay at the destination.
    for (const name of policies) {
      const summary = results.policies.find((policy: { policy: string }) => policy.policy === name);
      expect(summary, name).toMatchObject({ runs: 1, committed: 1, replayMatches: true });
      expect(summary.notRun, name).toBeUndefined();
      for (const measure of ['downtimeMs', 'totalTimeMs', 'bytesSent', 'slowdownPct']) expect(summary[measure].median, `${name} ${measure}`).toBeGreaterThanOrEqual(0);
    }
    const byName = (name: string): Record<string, unknown> => results.policies.find((policy: { policy: string }) => policy.policy === name);
    expect(byName('auto-converge').options).toEqual({ autoConverge: true });
    // Post-copy switched before round 1 (its faults and stalls are reported); hybrid ran round 1 first, after which this
    // small guest's pre-copy may already have converged (a converged pre-copy never switches); the others never switch.
    expect(byName('postcopy').postcopy).toMatchObject({ faults: { median: expect.any(Number) } });
    for (const name of ['precopy', 'auto-converge', 'xbzrle']) expect(byName(name).postcopy, name).toBeUndefined();
    const run = (name: string): Record<string, unknown> => results.runs.find((entry: { policy: string }) => entry.policy === name);
    expect(run('postcopy').rounds).toBe(0);
    expect(run('hybrid').rounds).toBeGreaterThanOrEqual(1);
    // xbzrle's cache figures are reported, and only for it.
    expect(byName('xbzrle').compression).toMatchObject({ cacheHits: { median: expect.any(Number) }, bytesSaved: { median: expect.any(Number) }, encodeMs: { median: expect.any(Number) } });
    for (const name of ['precopy', 'postcopy', 'hybrid', 'auto-converge']) expect(byName(name).compression, name).toBeUndefined();
    for (const run of results.runs.filter((entry: { outcome: string }) => entry.outcome === 'committed')) {
      expect(run.writesAsked).toBeGreaterThan(0);
      expect(run.writesMade).toBeGreaterThan(0);
    }
    expect(policies).toContain(results.recommendation.policy);
    expect(results.recommendation.rule).toMatch(/least median downtime/);

    const summary = readFileSync(path.join(out, 'summary.md'), 'utf8');
    expect(summary).toContain('| policy | options | committed | downtime (ms) | total time (ms) | sent (MiB) | guest slowdown (%) | memory matches replay |');
    expect(summary).toMatch(/^\| precopy \| defaults \| 1\/1 \|/m);
    expect(summary).toMatch(/^\| auto-converge \| `\{"autoConverge":true\}` \| 1\/1 \|/m);
    expect(summary).toMatch(/^\| xbzrle \| .* \| 1\/1 \|/m);
    expect(summary).toMatch(/^\| postcopy \| .* \| 1\/1 \|/m);
    expect(summary).toMatch(/^\| hybrid \| .* \| 1\/1 \|/m);
    expect(summary).toMatch(/^xbzrle, its cache: [\d,]+ hit\(s\) and [\d,]+ miss\(es\) among the pages sent again; the deltas saved [\d.]+ MiB, for [\d.]+ ms of the source's CPU\.$/m);
    expect(summary).toContain(`**Recommendation: ${results.recommendation.policy}.**`);
    expect(result.stdout).not.toContain('# ferry policy bake-off'); // --json: the Markdown goes to the file only
    expect(readFileSync(path.join(out, 'runs.csv'), 'utf8').trim().split('\n')).toHaveLength(1 + results.runs.length);
    expect(results.charts).toEqual(['policy-bakeoff.svg']);
    expect(readFileSync(path.join(out, 'charts', 'policy-bakeoff.svg'), 'utf8')).toContain('<svg');
  });

  it('refuses an unknown policy, and bake-off options without a trace, before starting anything', async () => {
    const refused = await bench(['--trace', 'nowhere.json', '--policies', 'precopy,teleport']);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/no policy called teleport/);
    const alone = await bench(['--policies', 'precopy']);
    expect(alone.code).toBe(2);
    expect(alone.stderr).toMatch(/--policies is for a policy bake-off/);
  });
});

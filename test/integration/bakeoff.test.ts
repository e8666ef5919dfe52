/**
 * The policy bake-off end to end (`ferry bench --trace FILE --policies ...`): real agents, a replay VM per policy,
 * real migrations, and the table, chart and recommendation written. Nothing here looks at its timings.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { runFerryGroup } from '../harness.js';

let dir: string | undefined;
const groups: { stop(): void }[] = [];
afterEach(async () => {
  for (const group of groups.splice(0)) group.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

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
    // xbzrle's options come with delta compression: an agent without it refuses them, and the bake-off goes on.
    const group = runFerryGroup(['bench', '--trace', traceFile, '--policies', 'precopy,auto-converge,xbzrle', '--repeat', '1', '--warmup', '200ms', '--out', out, '--json']);
    groups.push(group);
    const result = await group.result;
    expect(result.code, result.stderr).toBe(0);
    const results = result.json();
    expect(JSON.parse(readFileSync(path.join(out, 'results.json'), 'utf8'))).toEqual(results);
    expect(results).toMatchObject({ memoryBytes: 8 * 1024 * 1024, link: 'loopback', repeat: 1, trace: { vm: 'small', samples: 4, distinctPages: 99 } });
    expect(results.policies.map((policy: { policy: string }) => policy.policy)).toEqual(['precopy', 'auto-converge', 'xbzrle']);

    for (const name of ['precopy', 'auto-converge']) {
      const summary = results.policies.find((policy: { policy: string }) => policy.policy === name);
      expect(summary).toMatchObject({ runs: 1, committed: 1, replayMatches: true });
      expect(summary.notRun).toBeUndefined();
      for (const measure of ['downtimeMs', 'totalTimeMs', 'bytesSent', 'slowdownPct']) expect(summary[measure], `${name} ${measure}`).toBeGreaterThanOrEqual(0);
    }
    expect(results.policies[1].options).toEqual({ autoConverge: true });
    // Either the agents know xbzrle and it ran like the others, or they refused it, saying why.
    const xbzrle = results.policies[2];
    if (xbzrle.notRun !== undefined) {
      expect(xbzrle).toMatchObject({ committed: 0 });
      expect(xbzrle.notRun).toMatch(/FERRY_ERR_BAD_INPUT.*compress/);
    } else {
      expect(xbzrle).toMatchObject({ runs: 1, committed: 1, replayMatches: true });
    }
    for (const run of results.runs.filter((entry: { outcome: string }) => entry.outcome === 'committed')) {
      expect(run.writesAsked).toBeGreaterThan(0);
      expect(run.writesMade).toBeGreaterThan(0);
    }
    expect(['precopy', 'auto-converge', 'xbzrle']).toContain(results.recommendation.policy);
    expect(results.recommendation.rule).toMatch(/least median downtime/);

    const summary = readFileSync(path.join(out, 'summary.md'), 'utf8');
    expect(summary).toContain('| policy | options | committed | downtime (ms) | total time (ms) | sent (MiB) | guest slowdown | memory matches replay |');
    expect(summary).toMatch(/^\| precopy \| defaults \| 1\/1 \|/m);
    expect(summary).toMatch(/^\| auto-converge \| `\{"autoConverge":true\}` \| 1\/1 \|/m);
    expect(summary).toMatch(/^\| xbzrle \|/m);
    expect(summary).toContain(`**Recommendation: ${results.recommendation.policy}.**`);
    expect(result.stdout).not.toContain('# ferry policy bake-off'); // --json: the Markdown goes to the file only
    expect(readFileSync(path.join(out, 'runs.csv'), 'utf8').trim().split('\n')).toHaveLength(1 + results.runs.length);
    expect(results.charts).toEqual(['policy-bakeoff.svg']);
    expect(readFileSync(path.join(out, 'charts', 'policy-bakeoff.svg'), 'utf8')).toContain('<svg');
  });

  it('refuses an unknown policy, and bake-off options without a trace, before starting anything', async () => {
    const unknown = runFerryGroup(['bench', '--trace', 'nowhere.json', '--policies', 'precopy,teleport']);
    groups.push(unknown);
    const refused = await unknown.result;
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/no policy called teleport/);
    const stray = runFerryGroup(['bench', '--policies', 'precopy']);
    groups.push(stray);
    const alone = await stray.result;
    expect(alone.code).toBe(2);
    expect(alone.stderr).toMatch(/--policies is for a policy bake-off/);
  });
});

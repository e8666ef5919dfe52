/**
 * Forecasts with two real agents: `vm info` measures a running guest, `migrate --plan` predicts without moving it,
 * and a real migration's report sets its forecast beside what happened.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { patiently, startCluster, vmInfo, type TestCluster } from '../harness.js';

let cluster: TestCluster;
beforeAll(async () => {
  cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
  const created = await cluster.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '64MiB', '--workload', 'pattern', '--rate', '5000', '--wss', '16MiB', '--seed', '3');
  expect(created.code, created.stderr).toBe(0);
});
afterAll(async () => {
  await cluster?.stop();
});

interface StatsJson {
  cpuPercent: number;
  dirtyPagesPerSec: number;
  wssPages: number;
  curve: { ms: number; pages: number }[];
}

describe('forecasts with two agent processes', () => {
  it('vm info reports a running guest\'s busy fraction, dirty rate and working set', async () => {
    const stats = await vi.waitFor(async () => {
      const result = await cluster.ferry('vm', 'info', 'web1', '--json');
      expect(result.code, result.stderr).toBe(0);
      const found = result.json<{ stats?: StatsJson }>().stats;
      expect(found).toBeDefined();
      return found!;
    }, patiently);
    expect(stats.curve.length).toBeGreaterThan(0);
    // A guest that writes sees a rate and a working set within its memory; the exact figures depend on the machine.
    expect(stats.dirtyPagesPerSec).toBeGreaterThan(0);
    expect(stats.wssPages).toBeGreaterThan(0);
    expect(stats.wssPages).toBeLessThanOrEqual(16_384);
    expect(stats.cpuPercent).toBeGreaterThanOrEqual(0);
    expect(stats.cpuPercent).toBeLessThanOrEqual(100);
  });

  it('migrate --plan --json forecasts the move and moves nothing', async () => {
    const before = await vmInfo(cluster, 'web1');
    const planned = await cluster.ferry('migrate', 'web1', '--to', 'host-b', '--plan', '--json');
    expect(planned.code, planned.stderr).toBe(0);
    const plan = planned.json();
    expect(plan).toMatchObject({ vm: 'web1', from: 'host-a', to: 'host-b' });
    for (const field of ['totalTimeMs', 'downtimeMs', 'bytes', 'rounds']) expect(plan.forecast[field], field).toBeGreaterThan(0);
    expect(typeof plan.forecast.converges).toBe('boolean');
    expect(Array.isArray(plan.forecast.advice)).toBe(true);
    expect(plan.forecast.bytes).toBeGreaterThanOrEqual(64 * 1024 * 1024);
    expect(plan.link.bytesPerSec).toBeGreaterThan(0);
    expect(plan.link.mismatches).toBe(0);
    // Measured on the path a migration's pages take: a page stream host-b dialled back to host-a.
    expect(plan.link.pageStream).toBe('tcp');
    expect(plan.link.pageStreamFallback).toBeUndefined();
    const text = await cluster.ferry('migrate', 'web1', '--to', 'host-b', '--plan');
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/page stream \([^)]*, on a TCP stream of its own\)/);

    const after = await vmInfo(cluster, 'web1');
    expect(after.host).toBe('host-a');
    expect(after.state).toBe('running');
    expect(after.cpu.n).toBeGreaterThanOrEqual(before.cpu.n);
    const listed = await cluster.ferry('vm', 'list', '--json');
    expect(listed.json<{ name: string; host: string }[]>().filter((vm) => vm.name === 'web1').map((vm) => vm.host)).toEqual(['host-a']);
  });

  it('a migration\'s report sets the forecast it made beside what happened', async () => {
    const migrated = await cluster.ferry('migrate', 'web1', '--to', 'host-b', '--json');
    expect(migrated.code, migrated.stderr).toBe(0);
    const report = migrated.json();
    expect(report.outcome).toBe('committed');
    expect(report.forecast).toMatchObject({ converges: expect.any(Boolean), rounds: expect.any(Number) });
    expect(report.forecast.totalTimeMs).toBeGreaterThan(0);
    expect(report.forecast.tookMs).toBeGreaterThan(0);
    const text = await cluster.ferry('migrate', 'web1', '--to', 'host-a', '--quiet');
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain('forecast beside what happened');
  });
});

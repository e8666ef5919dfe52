/**
 * Fleet operations with real agents: a drain whose first destination dies mid-way, a VM no host can take, health
 * flags, and balancing a cluster whose VMs all start on one host.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { patiently, startCluster, waitForWrites, type TestCluster } from '../harness.js';

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

interface Listed { name: string; host: string; state: string }
interface HostJson { name: string; reachable: boolean; vms: string[]; maintenance: { since: string } | null; health: { state: string; reasons: { source: string; reason: string }[] } | null; load: { memoryPercent: number } | null }

const list = async (c: TestCluster): Promise<Listed[]> => (await c.ferry('vm', 'list', '--json')).json<Listed[]>();
const hosts = async (c: TestCluster): Promise<HostJson[]> => (await c.ferry('hosts', '--json')).json<HostJson[]>();

describe('host drain', () => {
  it('empties a host whose first destination dies mid-way: the VM stays on exactly one host, matches replay, and moves elsewhere', async () => {
    // host-b has the most room, so it is the first choice; host-a holds round 1 of its first migration for 3 s, in
    // which the test kills host-b: the page stream breaks before the commit.
    cluster = await startCluster([
      { name: 'host-a', capacity: '512MiB', env: { FERRY_FAULTS: 'delay@round-1' } },
      { name: 'host-b', capacity: '1GiB' },
      { name: 'host-c', capacity: '512MiB' },
    ]);
    const c = cluster;
    // web2 has a disk in host-a's datastore: it moves with its disk (--copy-storage).
    for (const [name, memory, seed, ...extra] of [['web1', '32MiB', '3'], ['web2', '16MiB', '4', '--disk', '8MiB'], ['off1', '16MiB', '5']] as const) {
      const created = await c.ferry('vm', 'create', name, '--on', 'host-a', '--memory', memory, '--rate', '2000', '--seed', seed, ...extra);
      expect(created.code, created.stderr).toBe(0);
    }
    expect((await c.ferry('vm', 'stop', 'off1')).code).toBe(0);
    await waitForWrites(c, 'web1', 500);

    const drain = c.ferry('host', 'drain', 'host-a', '--parallel', '1', '--json');
    await vi.waitFor(async () => {
      const b = (await hosts(c)).find((host) => host.name === 'host-b');
      expect(b?.vms).toContain('web1');
    }, patiently);
    await c.agent('host-b').stop(0);
    const result = await drain;
    expect(result.code, result.stderr).toBe(0);
    const report = result.json<{ host: string; moved: { vm: string; to: string; mode: string; attempts: number }[]; failed: unknown[] }>();
    expect(report.failed).toEqual([]);
    expect(report.moved.map((move) => [move.vm, move.to, move.mode]).sort()).toEqual([['off1', 'host-c', 'cold'], ['web1', 'host-c', 'live'], ['web2', 'host-c', 'live']]);
    expect(report.moved.find((move) => move.vm === 'web1')?.attempts).toBe(2);

    // Exactly one copy of each, on host-c, and web1's memory is what replaying its writes gives.
    const listed = (await list(c)).map((vm) => [vm.name, vm.host]).sort();
    expect(listed).toEqual([['off1', 'host-c'], ['web1', 'host-c'], ['web2', 'host-c']]);
    const check = await c.ferry('vm', 'check', 'web1', '--json');
    expect(check.code, check.stdout + check.stderr).toBe(0);
    expect(check.json()).toMatchObject({ host: 'host-c', ok: true });
    const web2 = (await c.ferry('vm', 'info', 'web2', '--json')).json<{ host: string; disks: { file: string; sizeBytes: number; shared?: boolean }[] }>();
    expect(web2).toMatchObject({ host: 'host-c', disks: [{ file: 'disk0.img', sizeBytes: 8 * 1024 * 1024 }] });
    expect(web2.disks[0]!.shared).toBeFalsy();

    // In maintenance: no new VMs; running the drain again has nothing to do; undrain opens it again.
    expect((await hosts(c)).find((host) => host.name === 'host-a')?.maintenance).toBeTruthy();
    const refused = await c.ferry('vm', 'create', 'late', '--on', 'host-a', '--memory', '16MiB');
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('FERRY_ERR_HOST_UNAVAILABLE');
    const again = await c.ferry('host', 'drain', 'host-a', '--json');
    expect(again.code, again.stderr).toBe(0);
    expect(again.json()).toMatchObject({ moved: [], failed: [] });
    expect((await c.ferry('host', 'undrain', 'host-a')).code).toBe(0);
    expect((await c.ferry('vm', 'create', 'late', '--on', 'host-a', '--memory', '16MiB')).code).toBe(0);
  });

  it('lists a VM that no host can take with every host\'s reason, without looping; health flags keep VMs away', async () => {
    cluster = await startCluster([{ name: 'host-a', capacity: '512MiB' }, { name: 'host-b', capacity: '64MiB' }, { name: 'host-c', capacity: '512MiB' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'big1', '--on', 'host-a', '--memory', '128MiB', '--rate', '1000')).code).toBe(0);
    const marked = await c.ferry('host', 'health', 'host-c', '--degraded', 'fan failure predicted', '--json');
    expect(marked.code, marked.stderr).toBe(0);
    expect(marked.json()).toMatchObject({ health: { state: 'degraded', reasons: [{ source: 'operator', reason: 'fan failure predicted' }] } });
    const create = await c.ferry('vm', 'create', 'x', '--on', 'host-c', '--memory', '16MiB');
    expect(create.stderr).toContain('FERRY_ERR_HOST_UNAVAILABLE');

    const result = await c.ferry('host', 'drain', 'host-a', '--json');
    expect(result.code).toBe(1);
    const report = result.json<{ moved: unknown[]; failed: { vm: string; reason: string }[] }>();
    expect(report.moved).toEqual([]);
    expect(report.failed).toHaveLength(1);
    expect(report.failed[0]!.vm).toBe('big1');
    expect(report.failed[0]!.reason).toMatch(/host-b no room/);
    expect(report.failed[0]!.reason).toMatch(/host-c degraded: fan failure predicted/);
    expect((await list(c))).toEqual([expect.objectContaining({ name: 'big1', host: 'host-a', state: 'running' })]);

    // Healthy again, host-c takes it.
    expect((await c.ferry('host', 'health', 'host-c', '--healthy')).code).toBe(0);
    const retried = await c.ferry('host', 'drain', 'host-a', '--json');
    expect(retried.code, retried.stderr).toBe(0);
    expect(retried.json().moved).toEqual([expect.objectContaining({ vm: 'big1', to: 'host-c', outcome: 'committed' })]);

    // A host that stops answering still shows the flags its operators set, as the cluster store keeps them.
    expect((await c.ferry('host', 'health', 'host-b', '--degraded', 'psu alarm')).code).toBe(0);
    await c.agent('host-b').stop(0);
    const down = (await c.ferry('hosts', '--json')).json<{ name: string; reachable: boolean; recordedFlags?: { degraded?: { reason: string } } }[]>().find((host) => host.name === 'host-b');
    expect(down).toMatchObject({ reachable: false, recordedFlags: { degraded: { reason: 'psu alarm' } } });
    expect((await c.ferry('hosts')).stdout).toMatch(/host-b .*down \(FERRY_ERR_UNREACHABLE\), degraded/);
  });
});

describe('balance', () => {
  it('plans without moving, applies the plan to bring the deviation under the threshold; --watch empties a degraded host, then finds nothing to do', async () => {
    cluster = await startCluster([{ name: 'host-a', capacity: '256MiB' }, { name: 'host-b', capacity: '256MiB' }, { name: 'host-c', capacity: '256MiB' }]);
    const c = cluster;
    for (let i = 1; i <= 6; i++) {
      expect((await c.ferry('vm', 'create', `vm${i}`, '--on', 'host-a', '--memory', '16MiB', '--rate', '500', '--seed', String(i))).code).toBe(0);
    }
    const planned = await c.ferry('balance', '--metric', 'memory', '--json');
    expect(planned.code, planned.stderr).toBe(0);
    const plan = planned.json<{ imbalanceBefore: number; imbalanceAfter: number; moves: { vm: string; from: string; to: string }[]; applied: unknown[] }>();
    expect(plan.imbalanceBefore).toBeGreaterThan(0.1);
    expect(plan.imbalanceAfter).toBeLessThanOrEqual(0.1);
    expect(plan.moves.length).toBeGreaterThan(0);
    expect(plan.applied).toEqual([]);
    expect((await list(c)).every((vm) => vm.host === 'host-a')).toBe(true);

    const applied = await c.ferry('balance', '--metric', 'memory', '--apply', '--json');
    expect(applied.code, applied.stderr).toBe(0);
    const done = applied.json<{ moves: { vm: string; to: string }[]; applied: { vm: string; to: string; outcome: string }[]; imbalanceAfter: number }>();
    expect(done.applied.map((move) => move.outcome)).toEqual(done.moves.map(() => 'committed'));
    for (const move of done.moves) expect((await list(c)).find((vm) => vm.name === move.vm)?.host).toBe(move.to);

    // host-b says it is failing: --watch empties it first, then finds the rest balanced, round after round.
    const onB = (await list(c)).filter((vm) => vm.host === 'host-b').map((vm) => vm.name);
    expect(onB.length).toBeGreaterThan(0);
    expect((await c.ferry('host', 'health', 'host-b', '--degraded', 'disk errors')).code).toBe(0);
    const watched = await c.ferry('balance', '--metric', 'memory', '--apply', '--watch', '100ms', '--rounds', '3', '--json');
    expect(watched.code, watched.stderr).toBe(0);
    const rounds = watched.stdout.trim().split('\n').map((line) => JSON.parse(line) as { round: number; evacuated: { host: string; moved: number; failed: number }[]; moves: unknown[]; imbalanceAfter: number });
    expect(rounds.map((round) => round.round)).toEqual([1, 2, 3]);
    expect(rounds[0]!.evacuated).toEqual([{ host: 'host-b', moved: onB.length, failed: 0 }]);
    expect((await list(c)).filter((vm) => vm.host === 'host-b')).toEqual([]);
    for (const round of rounds.slice(1)) {
      expect(round.evacuated).toEqual([]);
      expect(round.moves).toEqual([]);
      expect(round.imbalanceAfter).toBeLessThanOrEqual(0.1);
    }
  });
});

/**
 * CPU models in a mixed cluster on one machine: host-a offers every flag of this CPU, host-b runs with `--cpu-mask`
 * set to every flag of it outside x86-64-v2, as an older host would. A VM may only run where every flag of its model
 * is: live migration, resuming, and cold migration of a suspended VM check; a powered-off VM boots fresh.
 *
 * The flag sets are computed here from /proc/cpuinfo and the psABI's level list written out below, not taken from
 * the agent, so a host that misreports its flags shows up.
 */
import { readFileSync, writeFileSync, existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it, type TestContext } from 'vitest';
import { startLocalAgent } from '../../coordinator/local-agent.js';
import { LEVEL_FLAGS } from '../../shared/cpu.js';
import { LINUX_SYNTHETIC_FLAGS } from '../../agent/host-cpu.js';
import { checkDump } from '../replay.js';
import { startCluster, vmFolder, vmInfo, waitForWrites, type TestCluster } from '../harness.js';

/** Each test has its own agents, so the tests run three at a time; they stop when the test ends, however it ends. */
async function clusterFor(context: TestContext, starting: Promise<TestCluster>): Promise<TestCluster> {
  const cluster = await starting;
  context.onTestFinished(() => cluster.stop());
  return cluster;
}

/** x86-64-v2, v1 included (checked against the psABI in test/unit/cpu.test.ts), and what x86-64-v3 adds. */
const V2 = [...LEVEL_FLAGS['x86-64-v2']];
const V3_ADDS = LEVEL_FLAGS['x86-64-v3'].filter((flag) => !V2.includes(flag));

/** This machine's CPU flags, and why the mixed cluster cannot be built here if it cannot. */
function machine(): { flags: string[]; skip?: string } {
  if (process.arch !== 'x64') return { flags: [], skip: `the mixed cluster masks a host to x86-64-v2, and this machine is ${process.arch}, not x86-64` };
  const line = readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((text) => text.startsWith('flags'));
  // What the agent offers: the CPU's flags less those Linux makes up (agent/host-cpu.ts says why).
  const flags = [...new Set((line?.split(':')[1] ?? '').trim().split(/\s+/).filter(Boolean))].filter((flag) => !LINUX_SYNTHETIC_FLAGS.has(flag)).sort();
  const lacking = V2.filter((flag) => !flags.includes(flag));
  if (lacking.length > 0) return { flags, skip: `this CPU does not meet x86-64-v2 (it lacks ${lacking.join(' ')})` };
  if (flags.every((flag) => V2.includes(flag))) return { flags, skip: 'this CPU has no flag outside x86-64-v2, so masking leaves the two hosts alike' };
  return { flags };
}

const here = machine();
/** What host-b hides: every flag of this machine outside x86-64-v2. */
const mask = here.flags.filter((flag) => !V2.includes(flag));
/** What host-b offers: this machine's flags inside x86-64-v2, which is all of it. */
const hostBFlags = here.flags.filter((flag) => V2.includes(flag));
const meetsV3 = V3_ADDS.every((flag) => here.flags.includes(flag));

const mixedCluster = (options: { capacityA?: string; capacityB?: string } = {}): Promise<TestCluster> => startCluster([
  { name: 'host-a', ...(options.capacityA ? { capacity: options.capacityA } : {}) },
  { name: 'host-b', extraArgs: ['--cpu-mask', mask.join(',')], ...(options.capacityB ? { capacity: options.capacityB } : {}) },
]);

interface CpuInfoJson { host: string; state: string; cpuModel: { model: string; flags: string[] }; cpu: { x: number; n: number } }
const info = async (c: TestCluster, name: string): Promise<CpuInfoJson> => (await vmInfo(c, name)) as unknown as CpuInfoJson;

/** Dumps VM `name` and checks every page against a replay of its workload (test/replay.ts). */
async function memoryMatchesReplay(c: TestCluster, name: string): Promise<void> {
  const file = path.join(c.dir, `${name}-${Date.now()}.bin`);
  const dumped = await c.ferry('vm', 'dump', name, '--out', file);
  expect(dumped.code, dumped.stderr).toBe(0);
  expect(checkDump(file)).toMatchObject({ ok: true });
}

describe.skipIf(here.skip !== undefined)(`a mixed cluster: host-b masked to x86-64-v2${here.skip ? ` (skipped: ${here.skip})` : ''}`, { concurrent: true }, () => {
  it('shows each host\'s level, and computes the baseline from both: x86-64-v2', async (context) => {
    const { expect } = context;
    const cluster = await clusterFor(context, mixedCluster());
    const c = cluster;
    const hosts = (await c.ferry('hosts', '--json')).json<{ name: string; hostCpu: { level: string; flags: string[]; masked: string[] } }[]>();
    expect(hosts.find((host) => host.name === 'host-a')?.hostCpu).toMatchObject({ flags: here.flags, masked: [] });
    expect(hosts.find((host) => host.name === 'host-b')?.hostCpu).toMatchObject({ level: 'x86-64-v2', flags: hostBFlags, masked: mask });
    const table = await c.ferry('hosts');
    expect(table.stdout).toMatch(new RegExp(`host-b\\s.*\\sx86-64-v2 \\(masked ${mask.length}\\)`));
    const baseline = await c.ferry('cpu', 'baseline', '--json');
    expect(baseline.code, baseline.stderr).toBe(0);
    expect(baseline.json()).toEqual({ flags: hostBFlags, level: 'x86-64-v2', hosts: ['host-a', 'host-b'], unreachable: [] });
    expect((await c.ferry('cpu', 'baseline')).stdout).toMatch(/level\s+x86-64-v2/);
  });

  it('refuses to move a --cpu host VM live to host-b, naming the flags host-b lacks; it keeps running on host-a, its memory intact', async (context) => {
    const { expect } = context;
    const cluster = await clusterFor(context, mixedCluster());
    const c = cluster;
    const created = await c.ferry('vm', 'create', 'fast1', '--on', 'host-a', '--cpu', 'host', '--memory', '32MiB', '--rate', '3000', '--wss', '8MiB', '--seed', '11');
    expect(created.code, created.stderr).toBe(0);
    expect((await info(c, 'fast1')).cpuModel).toEqual({ model: 'host', flags: here.flags });
    const before = await waitForWrites(c, 'fast1', 1000);

    const refused = await c.ferry('migrate', 'fast1', '--to', 'host-b', '--json');
    expect(refused.code).toBe(1);
    const report = refused.json();
    expect(report.outcome).toBe('failed');
    expect(report.error.code).toBe('FERRY_ERR_CPU_INCOMPATIBLE');
    expect(report.error.message).toContain(`host-b lacks ${mask.length} CPU flag`);
    expect(report.error.message).toContain(`: ${mask.join(' ')};`); // every one of them, and only those
    expect(report.error.hint).toContain('--cpu baseline');
    expect(report.error.hint).toContain('ferry migrate fast1 --to host-b --cold');
    expect(report.bytesSent).toBe(0);

    const after = await waitForWrites(c, 'fast1', before.cpu.n);
    expect(after).toMatchObject({ host: 'host-a', state: 'running' });
    const hostB = (await c.ferry('hosts', '--json')).json<{ name: string; vms: string[]; freeBytes: number; capacityBytes: number }[]>().find((host) => host.name === 'host-b')!;
    expect(hostB).toMatchObject({ vms: [], freeBytes: hostB.capacityBytes }); // no reservation left behind
    await memoryMatchesReplay(c, 'fast1');
  });

  it('moves a VM of the default model, baseline, live to host-b', async (context) => {
    const { expect } = context;
    const cluster = await clusterFor(context, mixedCluster());
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '32MiB', '--rate', '3000', '--wss', '8MiB', '--seed', '5')).code).toBe(0);
    expect((await info(c, 'web1')).cpuModel).toEqual({ model: 'baseline', flags: hostBFlags });
    await waitForWrites(c, 'web1', 1000);
    const moved = await c.ferry('migrate', 'web1', '--to', 'host-b', '--verify', 'full', '--json');
    expect(moved.code, moved.stdout + moved.stderr).toBe(0);
    expect(moved.json().outcome).toBe('committed');
    const arrived = await waitForWrites(c, 'web1', moved.json().cpu.n);
    expect(arrived).toMatchObject({ host: 'host-b', state: 'running' });
    expect((arrived as unknown as CpuInfoJson).cpuModel).toEqual({ model: 'baseline', flags: hostBFlags });
    await memoryMatchesReplay(c, 'web1');
  });

  it('cold-migrates a powered-off --cpu host VM to host-b, where it starts with host-b\'s flags', async (context) => {
    const { expect } = context;
    const cluster = await clusterFor(context, mixedCluster());
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'fast1', '--on', 'host-a', '--cpu', 'host', '--memory', '16MiB', '--rate', '1000', '--seed', '3')).code).toBe(0);
    expect((await c.ferry('vm', 'stop', 'fast1')).code).toBe(0);
    const moved = await c.ferry('migrate', 'fast1', '--to', 'host-b', '--cold', '--json');
    expect(moved.code, moved.stdout + moved.stderr).toBe(0);
    expect((await info(c, 'fast1')).cpuModel).toEqual({ model: 'host', flags: here.flags }); // until it boots again
    const started = await c.ferry('vm', 'start', 'fast1');
    expect(started.code, started.stderr).toBe(0);
    expect(await info(c, 'fast1')).toMatchObject({ host: 'host-b', state: 'running', cpuModel: { model: 'host', flags: hostBFlags } });
    const config = JSON.parse(readFileSync(path.join(vmFolder(c, 'host-b', 'fast1'), 'config.json'), 'utf8'));
    expect(config.cpuModel).toEqual({ model: 'host', flags: hostBFlags });
    await waitForWrites(c, 'fast1', 100);
    await memoryMatchesReplay(c, 'fast1');
  });

  it('refuses to cold-migrate a suspended --cpu host VM to host-b; it stays suspended on host-a and resumes there exactly', async (context) => {
    const { expect } = context;
    const cluster = await clusterFor(context, mixedCluster());
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'fast1', '--on', 'host-a', '--cpu', 'host', '--memory', '16MiB', '--rate', '3000', '--wss', '4MiB', '--seed', '9')).code).toBe(0);
    await waitForWrites(c, 'fast1', 1000);
    const suspended = (await c.ferry('vm', 'suspend', 'fast1', '--json')).json();
    const refused = await c.ferry('migrate', 'fast1', '--to', 'host-b', '--cold', '--json');
    expect(refused.code).toBe(1);
    const { error } = refused.json();
    expect(error.code).toBe('FERRY_ERR_CPU_INCOMPATIBLE');
    expect(error.message).toContain(`fast1 was suspended running with ${mask.length} CPU flag`);
    expect(error.message).toContain(`: ${mask.join(' ')};`);
    expect(await info(c, 'fast1')).toMatchObject({ host: 'host-a', state: 'suspended', cpu: suspended.cpu });
    expect(existsSync(vmFolder(c, 'host-b', 'fast1'))).toBe(false);
    const staging = path.join(c.dir, 'host-b', 'staging');
    expect(existsSync(staging) ? readdirSync(staging) : []).toEqual([]);
    expect((await c.ferry('vm', 'start', 'fast1')).code).toBe(0);
    await waitForWrites(c, 'fast1', suspended.cpu.n);
    await memoryMatchesReplay(c, 'fast1');
  });

  it('does not resume a suspended --cpu host VM on its own host restarted with fewer flags, and does once they are back', async (context) => {
    const { expect } = context;
    const cluster = await clusterFor(context, mixedCluster());
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'fast1', '--on', 'host-a', '--cpu', 'host', '--memory', '16MiB', '--rate', '3000', '--wss', '4MiB', '--seed', '21')).code).toBe(0);
    await waitForWrites(c, 'fast1', 1000);
    const suspended = (await c.ferry('vm', 'suspend', 'fast1', '--json')).json();
    await c.restartAgent('host-a', ['--cpu-mask', mask.join(',')]);
    const refused = await c.ferry('vm', 'start', 'fast1', '--json');
    expect(refused.code).toBe(1);
    expect(refused.json().error).toMatchObject({ code: 'FERRY_ERR_CPU_INCOMPATIBLE' });
    expect(refused.json().error.message).toContain(`: ${mask.join(' ')};`);
    expect(refused.json().error.hint).toContain('--cold');
    expect(await info(c, 'fast1')).toMatchObject({ host: 'host-a', state: 'suspended', cpu: suspended.cpu });
    await c.restartAgent('host-a');
    expect((await c.ferry('vm', 'start', 'fast1')).code).toBe(0);
    await waitForWrites(c, 'fast1', suspended.cpu.n);
    await memoryMatchesReplay(c, 'fast1');
  });

  it.skipIf(!meetsV3)(`moves a powered-off x86-64-v3 VM cold to host-b, which then refuses to start it, naming the v3 flags${meetsV3 ? '' : ' (skipped: this CPU does not meet x86-64-v3)'}`, async (context) => {
    const { expect } = context;
    const cluster = await clusterFor(context, mixedCluster());
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'v3vm', '--on', 'host-a', '--cpu', 'x86-64-v3', '--memory', '16MiB', '--rate', '100')).code).toBe(0);
    expect((await c.ferry('vm', 'stop', 'v3vm')).code).toBe(0);
    expect((await c.ferry('migrate', 'v3vm', '--to', 'host-b', '--cold')).code).toBe(0);
    const refused = await c.ferry('vm', 'start', 'v3vm', '--json');
    expect(refused.code).toBe(1);
    expect(refused.json().error.code).toBe('FERRY_ERR_CPU_INCOMPATIBLE');
    expect(refused.json().error.message).toContain(`host-b lacks 9 CPU flags of v3vm's CPU model x86-64-v3: ${[...V3_ADDS].sort().join(' ')}`);
    expect(await info(c, 'v3vm')).toMatchObject({ host: 'host-b', state: 'defined' });
    // Back where its flags are, it starts.
    expect((await c.ferry('migrate', 'v3vm', '--to', 'host-a', '--cold')).code).toBe(0);
    expect((await c.ferry('vm', 'start', 'v3vm')).code).toBe(0);
  });

  it.skipIf(!meetsV3)(`provisions an x86-64-v3 VM on host-a only, though host-b has more room, and says it skipped host-b and why${meetsV3 ? '' : ' (skipped: this CPU does not meet x86-64-v3)'}`, async (context) => {
    const { expect } = context;
    const cluster = await clusterFor(context, mixedCluster({ capacityA: '512MiB', capacityB: '2GiB' }));
    const c = cluster;
    const v3 = await c.ferry('provision', 'app1', '--template', 'small', '--cpu', 'x86-64-v3');
    expect(v3.code, v3.stderr).toBe(0);
    expect(v3.stdout).toContain('provisioned app1 on host-a: the most free memory of the 1 host(s) with room that can run CPU model x86-64-v3');
    expect(v3.stdout).toContain(`skipped host-b: cannot run CPU model x86-64-v3: lacks 9 CPU flags: ${[...V3_ADDS].sort().join(' ')}`);
    expect((await info(c, 'app1')).cpuModel.model).toBe('x86-64-v3');

    const asked = await c.ferry('provision', 'app2', '--template', 'small', '--cpu', 'x86-64-v3', '--on', 'host-b', '--json');
    expect(asked.code).toBe(1);
    expect(asked.json().error).toMatchObject({ code: 'FERRY_ERR_CPU_INCOMPATIBLE' });

    // A host VM runs wherever it starts, so nothing is skipped: it goes to host-b, the most free memory, with its flags.
    const host = (await c.ferry('provision', 'app3', '--template', 'small', '--cpu', 'host', '--json')).json();
    expect(host).toMatchObject({ host: 'host-b', skipped: [], cpuModel: { model: 'host', flags: hostBFlags } });
  });
});

describe('CPU models on any machine', { concurrent: true }, () => {
  it('loads a VM whose config.json predates CPU models as baseline with its host\'s flags; it starts and runs', async (context) => {
    const { expect } = context;
    const cluster = await clusterFor(context, startCluster([{ name: 'host-a' }]));
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'old1', '--on', 'host-a', '--memory', '16MiB', '--rate', '2000', '--seed', '4')).code).toBe(0);
    expect((await c.ferry('vm', 'stop', 'old1')).code).toBe(0);
    const hostFlags = (await c.ferry('hosts', '--json')).json()[0].hostCpu.flags as string[];
    // As an older ferry wrote it: no cpuModel.
    const file = path.join(vmFolder(c, 'host-a', 'old1'), 'config.json');
    const { cpuModel: _dropped, ...older } = JSON.parse(readFileSync(file, 'utf8'));
    writeFileSync(file, JSON.stringify(older));
    await c.restartAgent('host-a');
    expect(await info(c, 'old1')).toMatchObject({ state: 'defined', cpuModel: { model: 'baseline', flags: hostFlags } });
    const started = await c.ferry('vm', 'start', 'old1');
    expect(started.code, started.stderr).toBe(0);
    await waitForWrites(c, 'old1', 100);
    await memoryMatchesReplay(c, 'old1');
  });

  it('refuses a --cpu-mask that names no CPU flag with FERRY_ERR_BAD_INPUT, and starts no agent', async (context) => {
    const { expect } = context;
    const cluster = await clusterFor(context, startCluster([]));
    const datastore = path.join(cluster.dir, 'host-x');
    for (const bad of ['AVX2', 'avx2,,sse', 'avx2;rm', '../x']) {
      const failure = await startLocalAgent({ name: 'host-x', datastore, token: cluster.token, extraArgs: ['--cpu-mask', bad], readyTimeoutMs: 10_000 }).then(
        async (agent) => {
          await agent.stop();
          return 'started';
        },
        (error: Error & { hint?: string }) => `${error.message}\n${error.hint ?? ''}`,
      );
      expect(failure, bad).toContain('exited (code 2)');
      expect(failure, bad).toContain('--cpu-mask');
      expect(failure, bad).toContain('FERRY_ERR_BAD_INPUT');
    }
  });
});

/**
 * Faults at each point of a migration, in each party, checked by replaying the pattern workload: the VM ends on
 * exactly one host (or on none only where the host holding it was killed), its memory matches replay, and a later
 * migration of it succeeds. The agents crash (SIGKILL themselves) or drop the page stream at the exact point named
 * by FERRY_FAULTS (agent/faults.ts); a crashed host is then started again, as a host that rebooted, where the test
 * needs it back.
 */
import path from 'node:path';
import { describe, it, vi, type TestContext } from 'vitest';
import { checkDump } from '../replay.js';
import { patiently, spawnFerry, startCluster, vmInfo, waitForWrites, type TestCluster } from '../harness.js';

/**
 * Each case has its own two agents, so the cases run three at a time (most of a case is waiting: for round 2, for a
 * crashed agent to restart, for the agents to settle). Its agents stop when the case ends, however it ends.
 */
async function clusterFor(context: TestContext, specs: Parameters<typeof startCluster>[0]): Promise<TestCluster> {
  const cluster = await startCluster(specs);
  context.onTestFinished(() => cluster.stop());
  return cluster;
}

type Party = 'source' | 'destination';
interface Case {
  fault: string;
  party: Party;
  /** Where the VM must end up: a host, or nowhere (the host holding it died with it). */
  endsOn: 'host-a' | 'host-b' | 'none';
  /** Restart this host (it crashed) before checking. */
  restart?: 'host-a' | 'host-b';
  /**
   * `--verify full`: verification and activation in two round trips (source.ts), where the default (`pages`) takes
   * the switchover, one round trip; the points after verification fall in different places of the two.
   */
  verify?: 'full';
}

const cases: Case[] = [
  { fault: 'crash@round-2', party: 'source', endsOn: 'none' },
  { fault: 'crash@stop-and-copy', party: 'source', endsOn: 'none' },
  { fault: 'crash@after-commit', party: 'source', endsOn: 'host-b', restart: 'host-a' },
  { fault: 'crash@round-2', party: 'destination', endsOn: 'host-a', restart: 'host-b' },
  { fault: 'crash@after-verify', party: 'destination', endsOn: 'host-a', restart: 'host-b' },
  { fault: 'crash@before-activation', party: 'destination', endsOn: 'host-a', restart: 'host-b' },
  { fault: 'drop@round-2', party: 'source', endsOn: 'host-a' },
  { fault: 'drop@stop-and-copy', party: 'source', endsOn: 'host-a' },
  { fault: 'drop@after-verify', party: 'destination', endsOn: 'host-b' },
  { fault: 'drop@after-commit', party: 'source', endsOn: 'host-b' },
  { fault: 'drop@before-activation', party: 'destination', endsOn: 'host-b' },
  { fault: 'crash@after-commit', party: 'source', endsOn: 'host-b', restart: 'host-a', verify: 'full' },
  { fault: 'drop@after-verify', party: 'destination', endsOn: 'host-b', verify: 'full' },
  { fault: 'crash@before-activation', party: 'destination', endsOn: 'host-a', restart: 'host-b', verify: 'full' },
];

interface Listed { name: string; host: string; state: string; epoch: number }

describe.concurrent('fault matrix', () => {
  for (const c of cases) {
    it(`${c.fault} in the ${c.party}${c.verify ? ` (--verify ${c.verify})` : ''}: the VM ends ${c.endsOn === 'none' ? 'nowhere (its host died with it)' : `running on ${c.endsOn} only`}, matching replay`, async (context) => {
      const { expect } = context;
      const faulty = { env: { FERRY_FAULTS: c.fault } };
      const t = await clusterFor(context, [
        { name: 'host-a', ...(c.party === 'source' ? faulty : {}) },
        { name: 'host-b', ...(c.party === 'destination' ? faulty : {}) },
      ]);
      expect((await t.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '32MiB', '--filled', '--rate', '5000', '--wss', '8MiB', '--seed', '61')).code).toBe(0);
      await waitForWrites(t, 'web1', 1000);
      // 64 MiB/s makes round 1 take half a second, so there is always a round 2.
      const migrated = await t.ferry('migrate', 'web1', '--to', 'host-b', '--max-bandwidth', '64MiB/s', '--json', ...(c.verify ? ['--verify', c.verify] : []));
      expect(migrated.code).not.toBe(0);
      expect(t.agent(c.party === 'source' ? 'host-a' : 'host-b').log()).toContain(`fault: ${c.fault.replace('@', ' at ')}`);
      if (c.restart) await t.restartAgent(c.restart);

      // Settled: exactly one copy, running, where it should be (the agents settle on their own within seconds).
      const listed = await vi.waitFor(async () => {
        const vms = (await t.ferry('vm', 'list', '--json')).json<Listed[]>().filter((vm) => vm.name === 'web1');
        const settled = c.endsOn === 'none' ? [] : [expect.objectContaining({ host: c.endsOn, state: 'running' })];
        expect(vms, `web1 settled ${c.endsOn === 'none' ? 'nowhere' : `on ${c.endsOn}`}`).toEqual(settled);
        return vms;
      }, { ...patiently, timeout: 30_000 });
      if (c.endsOn === 'none') return;
      expect(listed[0]!.epoch).toBe(c.endsOn === 'host-b' ? 2 : 1);

      const info = await vmInfo(t, 'web1');
      await waitForWrites(t, 'web1', info.cpu.n);
      const file = path.join(t.dir, 'settled.bin');
      expect((await t.ferry('vm', 'dump', 'web1', '--out', file)).code).toBe(0);
      expect(checkDump(file)).toMatchObject({ ok: true, badPages: [] });

      // Nothing stale is left: it migrates again, to the other host.
      const again = await t.ferry('migrate', 'web1', '--to', c.endsOn === 'host-a' ? 'host-b' : 'host-a', '--json');
      expect(again.code, again.stderr).toBe(0);
      expect(again.json().outcome).toBe('committed');
    });
  }
});

/**
 * The coordinator killed at each point. An agent is held at the point for 3 s (`delay@POINT`) so that the
 * coordinator's SIGKILL lands there. Before the commit its disconnection rolls the migration back; from the commit
 * on, the agents finish without it.
 */
const coordinatorCases: { point: string; holder: 'host-a' | 'host-b'; endsOn: 'host-a' | 'host-b' }[] = [
  { point: 'round-2', holder: 'host-a', endsOn: 'host-a' },
  { point: 'stop-and-copy', holder: 'host-a', endsOn: 'host-a' },
  { point: 'after-verify', holder: 'host-b', endsOn: 'host-b' },
  { point: 'after-commit', holder: 'host-a', endsOn: 'host-b' },
  { point: 'before-activation', holder: 'host-b', endsOn: 'host-b' },
];

describe.concurrent('fault matrix: the coordinator killed', () => {
  for (const c of coordinatorCases) {
    it(`at ${c.point}: the VM ends running on ${c.endsOn} only, matching replay`, async (context) => {
      const { expect } = context;
      const delayed = { env: { FERRY_FAULTS: `delay@${c.point}` } };
      const t = await clusterFor(context, [
        { name: 'host-a', ...(c.holder === 'host-a' ? delayed : {}) },
        { name: 'host-b', ...(c.holder === 'host-b' ? delayed : {}) },
      ]);
      expect((await t.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '32MiB', '--filled', '--rate', '5000', '--wss', '8MiB', '--seed', '67')).code).toBe(0);
      await waitForWrites(t, 'web1', 1000);
      const coordinator = spawnFerry(['--cluster', t.clusterFile, 'migrate', 'web1', '--to', 'host-b', '--max-bandwidth', '64MiB/s', '--json'], { FERRY_TOKEN: t.token });
      const exited = new Promise((resolve) => coordinator.once('exit', resolve));
      try {
        await vi.waitFor(() => expect(t.agent(c.holder).log(), `${c.holder}'s log`).toContain(`fault: delay at ${c.point}`), patiently);
      } finally {
        coordinator.kill('SIGKILL');
        await exited;
      }
      await vi.waitFor(async () => {
        const vms = (await t.ferry('vm', 'list', '--json')).json<Listed[]>().filter((vm) => vm.name === 'web1');
        expect(vms, `web1 settled on ${c.endsOn}`).toEqual([expect.objectContaining({ host: c.endsOn, state: 'running' })]);
      }, { ...patiently, timeout: 30_000 });
      const file = path.join(t.dir, 'settled.bin');
      expect((await t.ferry('vm', 'dump', 'web1', '--out', file)).code).toBe(0);
      expect(checkDump(file)).toMatchObject({ ok: true, badPages: [] });
      const again = await t.ferry('migrate', 'web1', '--to', c.endsOn === 'host-a' ? 'host-b' : 'host-a', '--json');
      expect(again.code, again.stderr).toBe(0);
    });
  }
});

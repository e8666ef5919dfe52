/**
 * Whatever goes wrong before the commit, the VM keeps running on its source with its memory intact.
 */
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { checkDump } from '../replay.js';
import { patiently, spawnFerry, startCluster, vmInfo, waitForWrites, type TestCluster } from '../harness.js';

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

async function expectRunningOnSourceWithIntactMemory(c: TestCluster, name: string, host: string): Promise<void> {
  const info = await vmInfo(c, name);
  expect(info).toMatchObject({ host, state: 'running' });
  await waitForWrites(c, name, info.cpu.n); // still running: n keeps growing
  const file = path.join(c.dir, `${name}-${Date.now()}.bin`);
  const dump = await c.ferry('vm', 'dump', name, '--out', file);
  expect(dump.code, dump.stderr).toBe(0);
  expect(checkDump(file)).toMatchObject({ ok: true, badPages: [] });
  const listed = (await c.ferry('vm', 'list', '--json')).json<{ name: string; host: string }[]>();
  expect(listed.filter((vm) => vm.name === name)).toEqual([expect.objectContaining({ host })]);
}

describe('failures before the commit', () => {
  it('a page corrupted in transit fails verification, and the VM keeps running on the source with memory that matches replay', async () => {
    // 16 MiB guest writing only its first 8 MiB: page 4095 is sent once, in round 1, and never again, so its
    // damage cannot be healed by a resend; only the verified commit can catch it. Filled, so that the page travels
    // with its bytes (a zero page has none to damage).
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b', env: { FERRY_FAULTS: 'corrupt-page:4095' } }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '16MiB', '--filled', '--rate', '10000', '--wss', '8MiB', '--seed', '11')).code).toBe(0);
    await waitForWrites(c, 'web1', 2000);

    const migrated = await c.ferry('migrate', 'web1', '--to', 'host-b', '--json');
    expect(migrated.code).toBe(1);
    const report = migrated.json();
    expect(report.outcome).toBe('rolled-back');
    expect(report.error.code).toBe('FERRY_ERR_CHECKSUM_MISMATCH');
    expect(report.verification.match).toBe(false);
    expect(report.verification.sourceDigest).not.toBe(report.verification.destDigest);
    expect(c.agent('host-b').log()).toContain('corrupted a page in transit');

    await expectRunningOnSourceWithIntactMemory(c, 'web1', 'host-a');
    const hostB = (await c.ferry('hosts', '--json')).json<{ name: string; vms: string[]; freeBytes: number; capacityBytes: number }[]>().find((host) => host.name === 'host-b')!;
    expect(hostB.vms).toEqual([]);
    expect(hostB.freeBytes).toBe(hostB.capacityBytes);

    // Nothing stale is left: the same VM migrates at once (the fault fires only once).
    const again = await c.ferry('migrate', 'web1', '--to', 'host-b', '--json');
    expect(again.code, again.stderr).toBe(0);
    expect(again.json().outcome).toBe('committed');
  });

  it('a VM too big for the destination is refused at reservation with a clear error and keeps running on the source', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b', capacity: '64MiB' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'big1', '--on', 'host-a', '--memory', '128MiB', '--rate', '5000', '--seed', '2')).code).toBe(0);
    const migrated = await c.ferry('migrate', 'big1', '--to', 'host-b', '--json');
    expect(migrated.code).toBe(1);
    const report = migrated.json();
    expect(report.outcome).toBe('failed');
    expect(report.error.code).toBe('FERRY_ERR_CAPACITY');
    expect(report.error.message).toContain('host-b has 64 MiB free');
    expect(report.error.message).toContain('128 MiB');
    expect(report.error.hint).toMatch(/free memory on host-b|pick another host/);
    expect(report.stages.map((stage: { stage: number }) => stage.stage)).toEqual([0, 1]);
    expect(report.bytesSent).toBe(0);
    await expectRunningOnSourceWithIntactMemory(c, 'big1', 'host-a');
  });

  it('a destination killed during pre-copy leaves the VM running on the source with memory that matches replay', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '64MiB', '--rate', '10000', '--wss', '16MiB', '--seed', '5')).code).toBe(0);
    // At 16 MiB/s round 1 alone takes 4 s: the kill lands in the middle of it.
    const migrating = c.ferry('migrate', 'web1', '--to', 'host-b', '--max-bandwidth', '16MiB/s', '--json');
    await vi.waitFor(async () => expect((await vmInfo(c, 'web1')).state, 'web1 migrating').toBe('migrating-out'), patiently);
    await delay(500);
    c.agent('host-b').child.kill('SIGKILL');
    const migrated = await migrating;
    expect(migrated.code).toBe(1);
    const report = migrated.json();
    expect(report.outcome).toBe('rolled-back');
    expect(['FERRY_ERR_CONNECTION_LOST', 'FERRY_ERR_CANCELLED']).toContain(report.error.code);
    await expectRunningOnSourceWithIntactMemory(c, 'web1', 'host-a');
  });

  it('a coordinator killed during pre-copy does not strand the VM: the source resumes it and the destination drops its reservation', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '64MiB', '--rate', '10000', '--wss', '16MiB', '--seed', '8')).code).toBe(0);
    const coordinator = spawnFerry(['--cluster', c.clusterFile, 'migrate', 'web1', '--to', 'host-b', '--max-bandwidth', '16MiB/s', '--json'], { FERRY_TOKEN: c.token });
    const exited = new Promise((resolve) => coordinator.once('exit', resolve));
    try {
      await vi.waitFor(async () => expect((await vmInfo(c, 'web1')).state, 'web1 migrating').toBe('migrating-out'), patiently);
      await delay(500);
    } finally {
      coordinator.kill('SIGKILL');
      await exited;
    }
    await vi.waitFor(async () => expect((await vmInfo(c, 'web1')).state, 'web1 on the source').toBe('running'), patiently);
    await vi.waitFor(async () => {
      const hostB = (await c.ferry('hosts', '--json')).json<{ name: string; vms: string[] }[]>().find((host) => host.name === 'host-b')!;
      expect(hostB.vms, 'reservations left on host-b').toEqual([]);
    }, patiently);
    await expectRunningOnSourceWithIntactMemory(c, 'web1', 'host-a');
    const again = await c.ferry('migrate', 'web1', '--to', 'host-b', '--json');
    expect(again.code, again.stderr).toBe(0);
  });

  it('rolls back a migration that runs past --timeout, and the VM keeps running on its source', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '64MiB', '--filled', '--rate', '5000', '--wss', '16MiB', '--seed', '41')).code).toBe(0);
    // 64 MiB (filled: every byte travels) at 8 MiB/s takes eight seconds; the timeout is two, well after stages 0-1
    // (tens of ms) even on a loaded machine, and well before the last page.
    const migrated = await c.ferry('migrate', 'web1', '--to', 'host-b', '--max-bandwidth', '8MiB/s', '--timeout', '2s', '--json');
    expect(migrated.code).toBe(1);
    const report = migrated.json();
    expect(report).toMatchObject({ outcome: 'rolled-back', error: { code: 'FERRY_ERR_TIMEOUT' } });
    await expectRunningOnSourceWithIntactMemory(c, 'web1', 'host-a');
    const hostB = (await c.ferry('hosts', '--json')).json<{ name: string; vms: string[] }[]>().find((host) => host.name === 'host-b')!;
    expect(hostB.vms).toEqual([]);
  });

  for (const how of ['ferry migrate --cancel from another terminal', 'Ctrl-C'] as const) {
    it(`rolls back a migration cancelled with ${how}`, async () => {
      cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
      const c = cluster;
      expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '64MiB', '--rate', '5000', '--wss', '16MiB', '--seed', '43')).code).toBe(0);
      const migrating = spawnFerry(['--cluster', c.clusterFile, 'migrate', 'web1', '--to', 'host-b', '--max-bandwidth', '16MiB/s', '--json'], { FERRY_TOKEN: c.token });
      let stdout = '';
      migrating.stdout!.setEncoding('utf8').on('data', (text: string) => (stdout += text));
      const exited = new Promise<number | null>((resolve) => migrating.once('exit', resolve));
      try {
        await vi.waitFor(async () => expect((await vmInfo(c, 'web1')).state, 'web1 migrating').toBe('migrating-out'), patiently);
        if (how === 'Ctrl-C') {
          migrating.kill('SIGINT');
        } else {
          const cancelled = await c.ferry('migrate', 'web1', '--cancel');
          expect(cancelled.code, cancelled.stderr).toBe(0);
          expect(cancelled.stdout).toContain('cancelling the migration of web1 from host-a');
        }
        expect(await exited).toBe(1);
      } finally {
        migrating.kill('SIGKILL');
      }
      const report = JSON.parse(stdout);
      expect(report).toMatchObject({ outcome: 'rolled-back', error: { code: 'FERRY_ERR_CANCELLED' } });
      await expectRunningOnSourceWithIntactMemory(c, 'web1', 'host-a');
      // Nothing stale: it migrates again at once.
      const again = await c.ferry('migrate', 'web1', '--to', 'host-b', '--json');
      expect(again.code, again.stderr).toBe(0);
    });
  }

  it('says so when asked to cancel a migration that is not under way', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '8MiB', '--rate', '100', '--seed', '47')).code).toBe(0);
    const cancelled = await c.ferry('migrate', 'web1', '--cancel', '--json');
    expect(cancelled.code).toBe(1);
    expect(cancelled.json().error.code).toBe('FERRY_ERR_VM_STATE');
  });

  it('refuses a migration to the host the VM is already on, or to an unknown host, touching nothing', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '8MiB', '--rate', '1000', '--seed', '4')).code).toBe(0);
    const same = await c.ferry('migrate', 'web1', '--to', 'host-a', '--json');
    expect(same.code).toBe(2);
    expect(same.json().error.code).toBe('FERRY_ERR_BAD_INPUT');
    const unknown = await c.ferry('migrate', 'web1', '--to', 'host-z', '--json');
    expect(unknown.code).toBe(2);
    expect(unknown.json().error).toMatchObject({ code: 'FERRY_ERR_HOST_NOT_FOUND' });
    expect(unknown.json().error.message).toContain('host-a, host-b');
    await expectRunningOnSourceWithIntactMemory(c, 'web1', 'host-a');
  });
});

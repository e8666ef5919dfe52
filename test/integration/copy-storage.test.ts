/**
 * `ferry migrate --copy-storage`: shared-nothing live migration of a VM whose guest writes its local disk. Both modes
 * move it and its disk, checked against replay on the destination; a full destination disk, a destination that dies
 * while receiving, and a coordinator that goes away all leave it running on its source with its disk, and leave
 * nothing staged on the destination.
 */
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { checkAbandonedDisk } from '../disk-replay.js';
import { patiently, spawnFerry, startCluster, vmInfo, type TestCluster } from '../harness.js';

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

async function writingVm(c: TestCluster, name: string, disk = '64MiB'): Promise<void> {
  const created = await c.ferry('vm', 'create', name, '--on', 'host-a', '--memory', '32MiB', '--rate', '2000', '--disk', disk, '--disk-rate', '2000', '--json');
  expect(created.code, created.stderr).toBe(0);
  await vi.waitFor(async () => expect((await vmInfo(c, name)).cpu.m ?? 0).toBeGreaterThan(500), patiently);
}

async function checked(c: TestCluster, name: string, host: string): Promise<void> {
  const check = await c.ferry('vm', 'check', name, '--json');
  expect(check.code, check.stdout + check.stderr).toBe(0);
  expect(check.json()).toMatchObject({ host, ok: true, disk: { ok: true } });
}

/** Waits until the agents have settled a migration left in doubt: exactly one copy of `name`, running on `host`. */
async function settledOn(c: TestCluster, name: string, host: string): Promise<void> {
  await vi.waitFor(async () => {
    const listed = (await c.ferry('vm', 'list', '--json')).json<{ name: string; host: string; state: string }[]>().filter((vm) => vm.name === name);
    expect(listed).toEqual([expect.objectContaining({ host, state: 'running' })]);
  }, { ...patiently, timeout: 30_000 });
}

const diskOf = (c: TestCluster, host: string, vm: string): string => path.join(c.dir, host, 'vms', vm, 'disk0.img');
const staged = (c: TestCluster, host: string): string[] => {
  const folder = path.join(c.dir, host, 'staging');
  return existsSync(folder) ? readdirSync(folder) : [];
};

describe('live migration with --copy-storage', () => {
  it('moves a running VM and its local disk to another host and back, mirror then iterate with full verification; memory and disk match replay each time', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    await writingVm(c, 'db1');

    const refused = await c.ferry('migrate', 'db1', '--to', 'host-b', '--json');
    expect(refused.code).not.toBe(0);
    expect(refused.json().error.hint).toContain('--copy-storage');

    const there = await c.ferry('migrate', 'db1', '--to', 'host-b', '--copy-storage', '--json');
    expect(there.code, there.stderr).toBe(0);
    const mirrored = there.json();
    expect(mirrored.outcome).toBe('committed');
    expect(mirrored.storage).toMatchObject({ mode: 'mirror', verification: [{ file: 'disk0.img', match: true }] });
    expect(mirrored.storage.disks[0].mirroredWrites).toBeGreaterThan(0);
    expect(mirrored.stages.map((stage: { name: string }) => stage.name)).toContain('storage copy');
    expect(existsSync(diskOf(c, 'host-b', 'db1'))).toBe(true);
    await vi.waitFor(() => expect(existsSync(path.join(c.dir, 'host-a', 'vms', 'db1')), 'the source\'s copy is deleted').toBe(false), patiently);
    expect(staged(c, 'host-b')).toEqual([]);
    await checked(c, 'db1', 'host-b');

    const back = await c.ferry('migrate', 'db1', '--to', 'host-a', '--copy-storage', '--storage-mode', 'iterate', '--verify', 'full', '--json');
    expect(back.code, back.stderr).toBe(0);
    const iterated = back.json();
    expect(iterated.storage.mode).toBe('iterate');
    expect(iterated.storage.verification[0].match).toBe(true);
    expect(iterated.storage.verification[0].sourceImageDigest).toBe(iterated.storage.verification[0].destImageDigest);
    expect(iterated.storage.disks[0].mirroredWrites).toBe(0);
    await checked(c, 'db1', 'host-a');
  }, 90_000);

  it('rolls back when the destination\'s disk fills up: the VM runs on the source with its disk, nothing staged is left', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b', env: { FERRY_FAULTS: `full-disk:${4 * 1024 * 1024}` } }]);
    const c = cluster;
    await writingVm(c, 'db2');
    const full = await c.ferry('migrate', 'db2', '--to', 'host-b', '--copy-storage', '--json');
    expect(full.code).not.toBe(0);
    expect(full.json().outcome).toBe('rolled-back');
    expect(JSON.stringify(full.json().error)).toMatch(/ENOSPC|no space/);
    expect((await vmInfo(c, 'db2')).host).toBe('host-a');
    expect((await vmInfo(c, 'db2')).state).toBe('running');
    await vi.waitFor(() => expect(staged(c, 'host-b')).toEqual([]), patiently);
    await checked(c, 'db2', 'host-a');
  }, 60_000);

  it('rolls back when the destination dies while the disk arrives', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b', env: { FERRY_FAULTS: 'crash@disk-receiving' } }]);
    const c = cluster;
    await writingVm(c, 'db3');
    const died = await c.ferry('migrate', 'db3', '--to', 'host-b', '--copy-storage', '--json');
    expect(died.code).not.toBe(0);
    expect(died.json().outcome).toBe('rolled-back');
    expect((await vmInfo(c, 'db3')).state).toBe('running');
    await checked(c, 'db3', 'host-a');
    await c.restartAgent('host-b');
    expect(staged(c, 'host-b')).toEqual([]);
    expect(existsSync(path.join(c.dir, 'host-b', 'vms', 'db3'))).toBe(false);
  }, 60_000);

  it('rolls back when the coordinator goes away during the disk copy', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    await writingVm(c, 'db4', '512MiB');
    const migrate = spawnFerry(['--cluster', c.clusterFile, 'migrate', 'db4', '--to', 'host-b', '--copy-storage', '--json'], { FERRY_TOKEN: c.token });
    try {
      // Killed once the disk copy has begun on the destination: its staging folder exists.
      await vi.waitFor(() => expect(staged(c, 'host-b').length).toBeGreaterThan(0), patiently);
    } finally {
      migrate.kill('SIGKILL');
    }
    await vi.waitFor(async () => expect((await vmInfo(c, 'db4')).state).toBe('running'), patiently);
    expect((await vmInfo(c, 'db4')).host).toBe('host-a');
    await vi.waitFor(() => expect(staged(c, 'host-b')).toEqual([]), patiently);
    await checked(c, 'db4', 'host-a');
  }, 60_000);

  it('a source that dies during the disk copy takes the VM with it; the destination keeps nothing, and the source comes back with the VM powered off and its disk whole', async () => {
    cluster = await startCluster([{ name: 'host-a', env: { FERRY_FAULTS: 'crash@storage-copying' } }, { name: 'host-b' }]);
    const c = cluster;
    await writingVm(c, 'db5');
    const died = await c.ferry('migrate', 'db5', '--to', 'host-b', '--copy-storage', '--json');
    expect(died.code).not.toBe(0);
    await c.agent('host-a').exited;
    await vi.waitFor(() => expect(staged(c, 'host-b')).toEqual([]), patiently);
    expect(existsSync(path.join(c.dir, 'host-b', 'vms', 'db5'))).toBe(false);
    await c.restartAgent('host-a');
    expect((await vmInfo(c, 'db5'))).toMatchObject({ host: 'host-a', state: 'defined' });
    const disk = checkAbandonedDisk(diskOf(c, 'host-a', 'db5'));
    expect(disk.m).toBeGreaterThan(500);
    expect(disk.ok).toBe(true);
  }, 60_000);

  it('a source that dies right after the commit: the destination activates the VM with the disk it verified, and the source keeps no copy', async () => {
    cluster = await startCluster([{ name: 'host-a', env: { FERRY_FAULTS: 'crash@after-commit' } }, { name: 'host-b' }]);
    const c = cluster;
    await writingVm(c, 'db6');
    const committed = await c.ferry('migrate', 'db6', '--to', 'host-b', '--copy-storage', '--json');
    expect(committed.code).not.toBe(0);
    await c.agent('host-a').exited;
    await c.restartAgent('host-a');
    await settledOn(c, 'db6', 'host-b');
    await checked(c, 'db6', 'host-b');
    expect(staged(c, 'host-b')).toEqual([]);
    expect(existsSync(path.join(c.dir, 'host-a', 'vms', 'db6'))).toBe(false);
  }, 60_000);

  it('a destination that dies after the commit, before activating: the source, which kept its disk, runs the VM on once they settle', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b', env: { FERRY_FAULTS: 'crash@before-activation' } }]);
    const c = cluster;
    await writingVm(c, 'db7');
    const doubtful = await c.ferry('migrate', 'db7', '--to', 'host-b', '--copy-storage', '--json');
    expect(doubtful.code).not.toBe(0);
    await c.agent('host-b').exited;
    await c.restartAgent('host-b');
    await settledOn(c, 'db7', 'host-a');
    await checked(c, 'db7', 'host-a');
    expect(staged(c, 'host-b')).toEqual([]);
    expect(existsSync(path.join(c.dir, 'host-b', 'vms', 'db7'))).toBe(false);
  }, 60_000);
});

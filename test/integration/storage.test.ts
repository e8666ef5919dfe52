/**
 * `ferry storage move`: a running VM whose guest writes its disk moves the disk between the agent's datastore and its
 * shared storage, in both modes, and the disk still matches a replay of the guest's writes; a full target disk and an
 * agent that dies mid-copy leave the disk where it was.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { checkAbandonedDisk } from '../disk-replay.js';
import { patiently, startCluster, vmInfo, type TestCluster } from '../harness.js';

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

const DISK = 32 * 1024 * 1024;

async function writingVm(c: TestCluster, name: string): Promise<void> {
  const created = await c.ferry('vm', 'create', name, '--on', 'host-a', '--memory', '16MiB', '--rate', '1000', '--disk', '32MiB', '--disk-rate', '2000', '--json');
  expect(created.code, created.stderr).toBe(0);
  // The guest has written its disk for a while before anything moves.
  await vi.waitFor(async () => expect((await vmInfo(c, name)).cpu.m ?? 0).toBeGreaterThan(500), patiently);
}

async function checked(c: TestCluster, name: string): Promise<void> {
  const check = await c.ferry('vm', 'check', name, '--json');
  expect(check.code, check.stdout + check.stderr).toBe(0);
}

describe('storage move', () => {
  it('moves a running VM\'s disk to local storage and back to shared, mirror then iterate, while the guest writes it; the disk matches replay each time', async () => {
    cluster = await startCluster([]);
    const c = cluster;
    const shared = path.join(c.dir, 'shared');
    await c.addAgent({ name: 'host-a', extraArgs: ['--shared-storage', shared] });
    await writingVm(c, 'web1');
    const onShared = path.join(shared, 'web1', 'disk0.img');
    const onLocal = path.join(c.dir, 'host-a', 'vms', 'web1', 'disk0.img');
    expect(existsSync(onShared)).toBe(true);

    const toLocal = await c.ferry('storage', 'move', 'web1', '--to', 'local', '--json');
    expect(toLocal.code, toLocal.stderr).toBe(0);
    const mirrored = toLocal.json();
    expect(mirrored).toMatchObject({ vm: 'web1', from: 'shared', to: 'local', mode: 'mirror', verification: { mode: 'pages', match: true } });
    expect(mirrored.disks[0].mirroredWrites).toBeGreaterThan(0);
    expect(mirrored.writeLatency.during.count).toBeGreaterThan(0);
    expect(existsSync(onLocal)).toBe(true);
    expect(existsSync(onShared)).toBe(false);
    expect(statSync(onLocal).size).toBe(DISK);
    expect((await vmInfo(c, 'web1')).state).toBe('running');
    await checked(c, 'web1');

    const toShared = await c.ferry('storage', 'move', 'web1', '--to', 'shared', '--storage-mode', 'iterate', '--verify', 'full', '--json');
    expect(toShared.code, toShared.stderr).toBe(0);
    const iterated = toShared.json();
    expect(iterated).toMatchObject({ from: 'local', to: 'shared', mode: 'iterate', verification: { mode: 'full', match: true } });
    expect(iterated.verification.sourceImageDigest).toBe(iterated.verification.destImageDigest);
    expect(iterated.disks[0].mirroredWrites).toBe(0);
    expect(existsSync(onShared)).toBe(true);
    expect(existsSync(onLocal)).toBe(false);
    await checked(c, 'web1');

    // Already there: refused with a reason, nothing touched.
    const again = await c.ferry('storage', 'move', 'web1', '--to', 'shared', '--json');
    expect(again.code).not.toBe(0);
    expect(again.stderr + again.stdout).toContain('FERRY_ERR_VM_STATE');
    await checked(c, 'web1');
  }, 60_000);

  it('leaves the disk where it was when the target disk fills up, removes the partial copy, and the VM runs on', async () => {
    cluster = await startCluster([]);
    const c = cluster;
    const shared = path.join(c.dir, 'shared');
    await c.addAgent({ name: 'host-a', extraArgs: ['--shared-storage', shared], env: { FERRY_FAULTS: `full-disk:${4 * 1024 * 1024}` } });
    await writingVm(c, 'db1');
    const full = await c.ferry('storage', 'move', 'db1', '--to', 'local', '--json');
    expect(full.code).not.toBe(0);
    expect(full.stderr + full.stdout).toMatch(/ENOSPC|no space/);
    expect(existsSync(path.join(shared, 'db1', 'disk0.img'))).toBe(true);
    expect(readdirSync(path.join(c.dir, 'host-a', 'vms', 'db1')).filter((file) => file.startsWith('disk0.img'))).toEqual([]);
    const info = await vmInfo(c, 'db1');
    expect(info.state).toBe('running');
    const m = info.cpu.m ?? 0;
    await vi.waitFor(async () => expect((await vmInfo(c, 'db1')).cpu.m ?? 0).toBeGreaterThan(m), patiently);
    await checked(c, 'db1');
  }, 60_000);

  it('an agent that dies mid-copy comes back with the disk where it was, whole, and no partial copy; the VM starts', async () => {
    cluster = await startCluster([]);
    const c = cluster;
    const shared = path.join(c.dir, 'shared');
    await c.addAgent({ name: 'host-a', extraArgs: ['--shared-storage', shared], env: { FERRY_FAULTS: 'crash@storage-copying' } });
    await writingVm(c, 'app1');
    const crashed = await c.ferry('storage', 'move', 'app1', '--to', 'local', '--json');
    expect(crashed.code).not.toBe(0);
    await c.agent('host-a').exited;
    await c.restartAgent('host-a', ['--shared-storage', shared]);
    const disk = path.join(shared, 'app1', 'disk0.img');
    expect(existsSync(disk)).toBe(true);
    expect(readdirSync(path.join(shared, 'app1')).filter((file) => file.endsWith('.tmp'))).toEqual([]);
    expect(readdirSync(path.join(c.dir, 'host-a', 'vms', 'app1')).filter((file) => file.startsWith('disk0.img'))).toEqual([]);
    const abandoned = checkAbandonedDisk(disk);
    expect(abandoned.m).toBeGreaterThan(500);
    expect(abandoned.ok).toBe(true);
    expect((await vmInfo(c, 'app1')).state).toBe('defined');
    expect((await c.ferry('vm', 'start', 'app1')).code).toBe(0);
  }, 60_000);
});

/**
 * A VM's life on disk: its folder in the host's datastore, powered off and on, suspended and resumed exactly, found
 * again by an agent that restarts, and carried along by live migration.
 */
import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { checkDump } from '../replay.js';
import { patiently, startCluster, vmFolder, vmInfo, waitForWrites, type TestCluster } from '../harness.js';

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

const MiB = 1024 * 1024;

async function expectReplay(c: TestCluster, name: string): Promise<void> {
  const file = path.join(c.dir, `${name}-${Date.now()}.bin`);
  expect((await c.ferry('vm', 'dump', name, '--out', file)).code).toBe(0);
  expect(checkDump(file)).toMatchObject({ ok: true, badPages: [] });
}

describe('VM lifecycle on disk', () => {
  it('keeps a folder per VM: config.json, a checked nvram.bin, vm.log and a sparse disk', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '16MiB', '--rate', '1000', '--seed', '3', '--disk', '1GiB')).code).toBe(0);
    const folder = vmFolder(c, 'host-a', 'web1');
    expect(readdirSync(folder).sort()).toEqual(['config.json', 'disk0.img', 'nvram.bin', 'vm.log']);
    const config = JSON.parse(readFileSync(path.join(folder, 'config.json'), 'utf8'));
    expect(config).toMatchObject({ name: 'web1', memoryBytes: 16 * MiB, epoch: 1, disks: [{ file: 'disk0.img', sizeBytes: 1024 * MiB }], workload: { kind: 'pattern', seed: 3 } });
    const nvram = readFileSync(path.join(folder, 'nvram.bin'));
    expect(nvram.length).toBe(64);
    expect(nvram.toString('ascii', 0, 8)).toBe('FERRYNV1');
    const disk = statSync(path.join(folder, 'disk0.img'));
    expect(disk.size).toBe(1024 * MiB);
    expect(disk.blocks * 512).toBeLessThan(MiB); // sparse
    expect(readFileSync(path.join(folder, 'vm.log'), 'utf8')).toMatch(/created on host-a[\s\S]*started/);
  });

  it('stops (memory discarded, files kept), starts fresh, and logs every change, shown by vm info', async () => {
    cluster = await startCluster([{ name: 'host-a', capacity: '256MiB' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '64MiB', '--rate', '2000', '--seed', '5')).code).toBe(0);
    await waitForWrites(c, 'web1', 500);
    const stopped = await c.ferry('vm', 'stop', 'web1', '--json');
    expect(stopped.code, stopped.stderr).toBe(0);
    expect(stopped.json()).toMatchObject({ state: 'defined' });
    const hosts = (await c.ferry('hosts', '--json')).json();
    expect(hosts[0].freeBytes).toBe(256 * MiB); // a powered-off VM holds no memory
    expect((await c.ferry('vm', 'pause', 'web1')).code).toBe(1);
    const started = await c.ferry('vm', 'start', 'web1', '--json');
    expect(started.json()).toMatchObject({ state: 'running' });
    await waitForWrites(c, 'web1', 100);
    const info = await c.ferry('vm', 'info', 'web1');
    expect(info.stdout).toMatch(/log \(latest last\):[\s\S]*created on host-a[\s\S]*started[\s\S]*stopped \(powered off; memory discarded\)[\s\S]*started \(powered on\)/);
    await expectReplay(c, 'web1');
  });

  it('suspends to disk and, after the agent restarts, resumes exactly where it was: memory matches replay', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '32MiB', '--rate', '5000', '--wss', '8MiB', '--seed', '9')).code).toBe(0);
    await waitForWrites(c, 'web1', 2000);
    const suspended = (await c.ferry('vm', 'suspend', 'web1', '--json')).json();
    expect(suspended.state).toBe('suspended');
    expect(existsSync(path.join(vmFolder(c, 'host-a', 'web1'), 'suspend.bin'))).toBe(true);

    await c.restartAgent('host-a');
    const found = await vmInfo(c, 'web1');
    expect(found).toMatchObject({ state: 'suspended', cpu: suspended.cpu });

    expect((await c.ferry('vm', 'start', 'web1')).code).toBe(0);
    const resumed = await vmInfo(c, 'web1');
    expect(resumed.state).toBe('running');
    expect(resumed.cpu.n).toBeGreaterThanOrEqual(suspended.cpu.n);
    await waitForWrites(c, 'web1', suspended.cpu.n);
    expect(existsSync(path.join(vmFolder(c, 'host-a', 'web1'), 'suspend.bin'))).toBe(false);
    await expectReplay(c, 'web1');
  });

  it('finds a VM that was running powered off after its agent restarts, and cleans half-written files', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '8MiB', '--rate', '100', '--seed', '2')).code).toBe(0);
    const folder = vmFolder(c, 'host-a', 'web1');
    writeFileSync(path.join(folder, 'config.json.tmp'), '{"half": ');
    c.agent('host-a').child.kill('SIGKILL');
    await c.restartAgent('host-a');
    expect(await vmInfo(c, 'web1')).toMatchObject({ state: 'defined', host: 'host-a' });
    expect(existsSync(path.join(folder, 'config.json.tmp'))).toBe(false);
    expect((await c.ferry('vm', 'start', 'web1')).code).toBe(0);
  });

  it('asks for --yes before destroying a VM with disks, then removes its folder', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'db1', '--on', 'host-a', '--memory', '8MiB', '--rate', '100', '--disk', '64MiB')).code).toBe(0);
    const refused = await c.ferry('vm', 'destroy', 'db1');
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('would delete its disks (disk0.img)');
    expect(refused.stderr).toContain('--yes');
    expect((await vmInfo(c, 'db1')).state).toBe('running');
    expect((await c.ferry('vm', 'destroy', 'db1', '--yes')).code).toBe(0);
    expect(existsSync(vmFolder(c, 'host-a', 'db1'))).toBe(false);
  });

  it('carries a VM\'s files along with a live migration, and refuses one whose disks are local', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '16MiB', '--rate', '2000', '--seed', '13')).code).toBe(0);
    expect((await c.ferry('migrate', 'web1', '--to', 'host-b', '--json')).code).toBe(0);
    expect(existsSync(vmFolder(c, 'host-a', 'web1'))).toBe(false);
    const moved = vmFolder(c, 'host-b', 'web1');
    // The destination writes the VM's files once the VM runs there, just after it answers: wait for them.
    await vi.waitFor(() => expect(existsSync(path.join(c.dir, 'host-b', 'vms', 'web1', 'config.json')), 'the files on host-b').toBe(true), patiently);
    expect(JSON.parse(readFileSync(path.join(moved, 'config.json'), 'utf8'))).toMatchObject({ name: 'web1', epoch: 2 });
    expect(readFileSync(path.join(moved, 'vm.log'), 'utf8')).toMatch(/created on host-a[\s\S]*migrating to host-b[\s\S]*arrived on host-b/);
    expect(readFileSync(path.join(moved, 'nvram.bin')).toString('ascii', 0, 8)).toBe('FERRYNV1');

    expect((await c.ferry('vm', 'create', 'db1', '--on', 'host-a', '--memory', '16MiB', '--rate', '100', '--disk', '64MiB')).code).toBe(0);
    const refused = await c.ferry('migrate', 'db1', '--to', 'host-b', '--json');
    expect(refused.code).toBe(1);
    expect(refused.json().error).toMatchObject({ code: 'FERRY_ERR_VM_STATE' });
    expect(refused.json().error.message).toContain('live migration moves memory, not local disks');
    expect(refused.json().error.hint).toContain('ferry migrate db1 --to host-b --copy-storage');
    expect(refused.json().error.hint).toContain('--cold');
    expect((await vmInfo(c, 'db1'))).toMatchObject({ host: 'host-a', state: 'running' });
  });
});

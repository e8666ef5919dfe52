/**
 * Disks on storage every host mounts (--shared-storage) stay put while their VM migrates live; a host that does not
 * mount that storage is refused.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { patiently, startCluster, vmInfo, type TestCluster } from '../harness.js';

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

describe('shared storage', () => {
  it('live-migrates a VM whose disk is on shared storage, the disk staying where it is, and refuses a host without it', async () => {
    cluster = await startCluster([]);
    const c = cluster;
    const shared = path.join(c.dir, 'shared');
    await c.addAgent({ name: 'host-a', extraArgs: ['--shared-storage', shared] });
    await c.addAgent({ name: 'host-b', extraArgs: ['--shared-storage', shared] });
    await c.addAgent({ name: 'host-c' });
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '16MiB', '--rate', '1000', '--disk', '256MiB')).code).toBe(0);
    const disk = path.join(shared, 'web1', 'disk0.img');
    expect(statSync(disk).size).toBe(256 * 1024 * 1024);
    expect(existsSync(path.join(c.dir, 'host-a', 'vms', 'web1', 'disk0.img'))).toBe(false);

    const refused = await c.ferry('migrate', 'web1', '--to', 'host-c', '--json');
    expect(refused.code).toBe(1);
    expect(refused.json().error).toMatchObject({ code: 'FERRY_ERR_VM_STATE' });
    expect(refused.json().error.message).toContain('does not mount');
    expect((await vmInfo(c, 'web1')).host).toBe('host-a');

    const moved = await c.ferry('migrate', 'web1', '--to', 'host-b', '--json');
    expect(moved.code, moved.stderr).toBe(0);
    expect(existsSync(disk)).toBe(true);
    // The destination writes the VM's files once the VM runs there, just after it answers: wait for them.
    await vi.waitFor(() => expect(existsSync(path.join(c.dir, 'host-b', 'vms', 'web1', 'config.json')), 'the files on host-b').toBe(true), patiently);
    const config = JSON.parse(readFileSync(path.join(c.dir, 'host-b', 'vms', 'web1', 'config.json'), 'utf8'));
    expect(config.disks).toEqual([{ file: 'disk0.img', sizeBytes: 256 * 1024 * 1024, shared: true }]);
    expect(existsSync(path.join(c.dir, 'host-a', 'vms', 'web1'))).toBe(false);

    expect((await c.ferry('vm', 'destroy', 'web1', '--yes')).code).toBe(0);
    expect(existsSync(disk)).toBe(false);
  });
});

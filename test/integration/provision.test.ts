/**
 * Provisioning from templates onto a host with room, with addresses from the cluster's pool, and leases.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { patiently, startCluster, vmInfo, type TestCluster } from '../harness.js';

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

function addPool(c: TestCluster, pool: string): void {
  const file = JSON.parse(readFileSync(c.clusterFile, 'utf8'));
  file.network = { pool, prefix: 24, gateway: '10.9.0.1' };
  writeFileSync(c.clusterFile, JSON.stringify(file));
}

describe('templates and provisioning', () => {
  it('lists the built-in templates and the user\'s own, which may replace one', async () => {
    cluster = await startCluster([]);
    const c = cluster;
    writeFileSync(path.join(c.dir, 'ferry.templates.json'), JSON.stringify({ templates: [
      { name: 'tiny', memory: '16MiB', disk: '64MiB', workload: 'idle' },
      { name: 'small', memory: '32MiB', disk: '128MiB', workload: 'pattern', rate: 500 },
    ] }));
    const listed = (await c.ferry('template', 'list', '--json')).json<{ name: string; memory: string; source: string }[]>();
    expect(listed.map((t) => t.name).sort()).toEqual(['large', 'medium', 'small', 'tiny']);
    expect(listed.find((t) => t.name === 'small')).toMatchObject({ memory: '32MiB' });
    expect(listed.find((t) => t.name === 'large')).toMatchObject({ source: 'built-in' });
    const table = await c.ferry('template', 'list');
    expect(table.stdout).toMatch(/tiny\s+16MiB\s+64MiB\s+idle/);
  });

  it('puts a VM on the host with the most free memory, says why, and gives addresses from the pool, never twice', async () => {
    cluster = await startCluster([{ name: 'host-a', capacity: '512MiB' }, { name: 'host-b', capacity: '2GiB' }]);
    const c = cluster;
    addPool(c, '10.9.0.10-10.9.0.12');
    const first = await c.ferry('provision', 'web1', '--template', 'small', '--ip', 'auto');
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toMatch(/provisioned web1 on host-b: the most free memory of the 2 host\(s\) with room/);
    expect(first.stdout).toContain('network 10.9.0.10/24 via 10.9.0.1');
    const second = (await c.ferry('provision', 'web2', '--template', 'small', '--ip', 'auto', '--on', 'host-a', '--json')).json();
    expect(second).toMatchObject({ host: 'host-a', network: { ip: '10.9.0.11', prefix: 24 } });
    expect(second.network.mac).toMatch(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    const taken = await c.ferry('provision', 'web3', '--template', 'small', '--ip', '10.9.0.10/24');
    expect(taken.code).toBe(2);
    expect(taken.stderr).toContain('10.9.0.10 is already used by web1');
    expect((await c.ferry('provision', 'web3', '--template', 'small', '--ip', 'auto', '--json')).json().network.ip).toBe('10.9.0.12');
    const exhausted = await c.ferry('provision', 'web4', '--template', 'small', '--ip', 'auto');
    expect(exhausted.stderr).toContain('the address pool 10.9.0.10-10.9.0.12 is used up');
    const config = JSON.parse(readFileSync(path.join(c.dir, 'host-b', 'vms', 'web1', 'config.json'), 'utf8'));
    expect(config.network).toMatchObject({ ip: '10.9.0.10', prefix: 24, gateway: '10.9.0.1' });
    expect(config.disks).toEqual([{ file: 'disk0.img', sizeBytes: 2 * 1024 ** 3 }]);
  });

  it('never hands one address to two provisions run at once: the last free one goes to exactly one of them', async () => {
    cluster = await startCluster([{ name: 'host-a', capacity: '512MiB' }, { name: 'host-b', capacity: '512MiB' }]);
    const c = cluster;
    addPool(c, '10.9.0.10-10.9.0.11');
    expect((await c.ferry('provision', 'web0', '--template', 'small', '--ip', 'auto')).code).toBe(0); // takes 10.9.0.10
    // A host that holds every connection for a while, then drops it: each provision's survey of the cluster lasts
    // that long, so two provisions started together would both see the last address free but for the lock.
    const slowHost = createServer((socket) => {
      setTimeout(() => socket.destroy(), 1500);
    });
    await new Promise<void>((resolve) => slowHost.listen(0, '127.0.0.1', resolve));
    try {
      expect((await c.ferry('hosts', 'add', 'host-slow', `ws://127.0.0.1:${(slowHost.address() as AddressInfo).port}`)).code).toBe(0);
      const results = await Promise.all(['web1', 'web2'].map((name) => c.ferry('provision', name, '--template', 'small', '--ip', 'auto', '--json')));
      const provisioned = results.filter((result) => result.code === 0).map((result) => result.json());
      expect(provisioned.map((info) => info.network.ip)).toEqual(['10.9.0.11']);
      const [refused] = results.filter((result) => result.code !== 0);
      expect(refused?.json().error.code, refused?.stderr).toBe('FERRY_ERR_CAPACITY');
      expect(refused?.stderr).toContain('the address pool 10.9.0.10-10.9.0.11 is used up');
    } finally {
      await new Promise((resolve) => slowHost.close(resolve));
    }
    const vms = (await c.ferry('vm', 'list', '--json')).json<{ name: string; ip?: string }[]>();
    expect(vms.map((vm) => vm.ip).sort()).toEqual(['10.9.0.10', '10.9.0.11']);
  });

  it('refuses a request that fits nowhere with each host\'s free capacity in the message; --ip auto without a pool takes a loopback address', async () => {
    cluster = await startCluster([{ name: 'host-a', capacity: '512MiB' }, { name: 'host-b', capacity: '1GiB' }]);
    const c = cluster;
    const refused = await c.ferry('provision', 'db1', '--template', 'large', '--json');
    expect(refused.code).toBe(1);
    const error = refused.json().error;
    expect(error.code).toBe('FERRY_ERR_CAPACITY');
    expect(error.message).toMatch(/no host has room for db1 \(template large: 4 GiB memory, 32 GiB disk\): host-a has 512 MiB memory and .* disk free; host-b has 1 GiB memory and .* disk free/);
    expect((await c.ferry('vm', 'list', '--json')).json()).toEqual([]);
    // Without a pool in the cluster file, --ip auto draws from 127.100.0.0/16, which loopback mode serves.
    const defaultPool = await c.ferry('provision', 'web1', '--template', 'small', '--ip', 'auto', '--json');
    expect(defaultPool.code, defaultPool.stderr).toBe(0);
    expect(defaultPool.json()).toMatchObject({ network: { ip: '127.100.0.2', prefix: 16 }, address: '127.100.0.2:7777' });
  });

  it('releases a VM when its lease ends: gone from its host, files and all', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    const leased = await c.ferry('provision', 'tmp1', '--template', 'small', '--lease', '2s');
    expect(leased.code, leased.stderr).toBe(0);
    expect(leased.stdout).toContain('leased until');
    expect((await vmInfo(c, 'tmp1')).state).toBe('running');
    await vi.waitFor(async () => expect((await c.ferry('vm', 'list', '--json')).json<unknown[]>(), 'VMs left after the lease').toEqual([]), { ...patiently, timeout: 15_000 });
    expect(existsSync(path.join(c.dir, 'host-a', 'vms', 'tmp1'))).toBe(false);
  });
});

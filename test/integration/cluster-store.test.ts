/**
 * The CLI against a shared cluster store in a real etcd (test/etcd.ts): a cluster file imported into it, twenty
 * provisions from separate coordinator processes at once, and one operation per VM across coordinators.
 */
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openStore, type ClusterStore } from '../../coordinator/store/store.js';
import { startEtcd, type TestEtcd } from '../etcd.js';
import { startCluster, type CliResult, type TestCluster } from '../harness.js';

const ferryEntry = fileURLToPath(new URL('../../dist/coordinator/main.js', import.meta.url));
const storeModule = fileURLToPath(new URL('../../dist/coordinator/store/store.js', import.meta.url));
const provisionModule = fileURLToPath(new URL('../../dist/coordinator/provision.js', import.meta.url));
const clusterModule = fileURLToPath(new URL('../../dist/coordinator/cluster.js', import.meta.url));

let etcd: TestEtcd;
let cluster: TestCluster | undefined;
let store: ClusterStore | undefined;
beforeAll(async () => {
  etcd = await startEtcd();
});
afterEach(async () => {
  await store?.close();
  store = undefined;
  await cluster?.stop();
  cluster = undefined;
});
afterAll(async () => {
  await etcd?.stop();
});

/** The CLI in the cluster's folder (where ferry.templates.json is), with the store given by `--cluster` or by env. */
function ferry(c: TestCluster, args: string[], via: 'option' | 'env' = 'option'): Promise<CliResult> {
  const argv = via === 'option' ? ['--cluster', etcd.url, ...args] : args;
  const env = { ...process.env, FERRY_TOKEN: c.token, ...(via === 'env' ? { FERRY_CLUSTER: etcd.url } : {}) };
  return new Promise((resolve) => {
    execFile(process.execPath, [ferryEntry, ...argv], { cwd: c.dir, env, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout, stderr, json: () => JSON.parse(stdout) });
    });
  });
}

/** Agents in a cluster file, imported into etcd with an address pool; a tiny idle template beside it. */
async function etcdCluster(): Promise<TestCluster> {
  cluster = await startCluster([{ name: 'host-a', capacity: '1GiB' }, { name: 'host-b', capacity: '1GiB' }]);
  const file = JSON.parse(readFileSync(cluster.clusterFile, 'utf8'));
  file.network = { pool: '10.77.0.10-10.77.0.250', prefix: 24, gateway: '10.77.0.1' };
  writeFileSync(cluster.clusterFile, JSON.stringify(file));
  writeFileSync(path.join(cluster.dir, 'ferry.templates.json'), JSON.stringify({ templates: [{ name: 'tiny', memory: '8MiB', disk: '16MiB', workload: 'idle' }] }));
  // A fresh etcd prefix for each test: what an earlier test left is removed first.
  const fresh = await openStore(etcd.url);
  await fresh.update((current) => ({ ...current, hosts: [] }));
  await fresh.close();
  const imported = await ferry(cluster, ['cluster', 'import', cluster.clusterFile]);
  expect(imported.code, imported.stderr).toBe(0);
  expect(imported.stdout).toContain(`imported 2 host(s), the address pool from ${cluster.clusterFile} into ${etcd.url}`);
  return cluster;
}

describe('a cluster store in etcd', () => {
  it('gives twenty VMs provisioned at once by two coordinator processes twenty distinct addresses', async () => {
    const c = await etcdCluster();
    // Each coordinator provisions ten at once, as a fleet's automation would: both share only etcd.
    const coordinator = (first: number): Promise<CliResult> => new Promise((resolve) => {
      execFile(process.execPath, ['--input-type=module', '-e', `
        const { openStore } = await import(${JSON.stringify(storeModule)});
        const { provision } = await import(${JSON.stringify(provisionModule)});
        const { withCredentials } = await import(${JSON.stringify(clusterModule)});
        const store = await openStore(${JSON.stringify(etcd.url)});
        const cluster = await withCredentials(await store.load(), store.localFile, undefined);
        const names = Array.from({ length: 10 }, (_, index) => 'vm' + (${first} + index));
        const results = await Promise.allSettled(names.map((name) => provision(store, cluster, { name, template: 'tiny', ip: 'auto' })));
        console.log(JSON.stringify(results.map((result) => result.status === 'fulfilled' ? result.value.info : { error: String(result.reason?.message) })));
        await store.close();
      `], { cwd: c.dir, env: { ...process.env, FERRY_TOKEN: c.token } }, (error, stdout, stderr) => {
        resolve({ code: error ? 1 : 0, stdout, stderr, json: () => JSON.parse(stdout) });
      });
    });
    const results = await Promise.all([coordinator(0), coordinator(10)]);
    const infos = results.flatMap((result) => {
      expect(result.code, result.stderr).toBe(0);
      return result.json<{ name?: string; network?: { ip: string }; error?: string }[]>();
    });
    expect(infos.filter((info) => info.error)).toEqual([]);
    const addresses = infos.map((info) => info.network!.ip);
    expect(new Set(addresses).size).toBe(20);
    for (const address of addresses) expect(address).toMatch(/^10\.77\.0\.\d+$/);
    const listed = (await ferry(c, ['vm', 'list', '--json'])).json<{ name: string; ip?: string }[]>();
    expect(listed.map((vm) => vm.name).sort()).toEqual(Array.from({ length: 20 }, (_, index) => `vm${index}`).sort());
    // Every reservation ended with its provision, and the next one, through the CLI, takes an address none has.
    store = await openStore(etcd.url);
    expect(await store.reservedAddresses()).toEqual(new Set());
    const next = await ferry(c, ['provision', 'vm20', '--template', 'tiny', '--ip', 'auto', '--json', '--quiet'], 'env');
    expect(next.code, next.stderr).toBe(0);
    expect(addresses).not.toContain(next.json().network.ip);
  });

  it('keeps hosts in etcd through the CLI, exports them as a cluster file, and holds a VM for one operation at a time', async () => {
    const c = await etcdCluster();
    const listed = (await ferry(c, ['hosts', '--json'])).json<{ name: string; reachable: boolean }[]>();
    expect(listed.map((host) => [host.name, host.reachable])).toEqual([['host-a', true], ['host-b', true]]);
    expect((await ferry(c, ['hosts', 'add', 'host-z', 'ws://127.0.0.1:9'])).stdout).toContain(`added host-z (ws://127.0.0.1:9) to ${etcd.url}`);
    expect((await ferry(c, ['hosts', 'add', 'host-z', 'ws://127.0.0.1:9'])).code).toBe(2);
    expect((await ferry(c, ['hosts', 'rm', 'host-z'])).code).toBe(0);
    const exported = (await ferry(c, ['cluster', 'export'])).json();
    expect(exported).toMatchObject({ hosts: [{ name: 'host-a' }, { name: 'host-b' }], network: { pool: '10.77.0.10-10.77.0.250' } });

    expect((await ferry(c, ['vm', 'create', 'web1', '--on', 'host-a', '--memory', '8MiB', '--workload', 'idle'])).code).toBe(0);
    // Another coordinator holds web1: a migration, a cold migration and a storage move are refused, naming it.
    store = await openStore(etcd.url);
    const held = await store.lockVm('web1', 'drain', 'bob@ops pid 42');
    const refusals = await Promise.all([['migrate', 'web1', '--to', 'host-b'], ['migrate', 'web1', '--to', 'host-b', '--cold'], ['storage', 'move', 'web1', '--to', 'local']]
      .map((args) => ferry(c, [...args, '--json', '--quiet'])));
    for (const refused of refusals) {
      expect(refused.code, refused.stderr).toBe(1);
      expect(refused.json().error ?? refused.json()).toMatchObject({ code: 'FERRY_ERR_VM_BUSY' });
      expect(refused.stdout + refused.stderr).toContain('bob@ops pid 42 holds it for a drain');
    }
    await held.release();
    const moved = await ferry(c, ['migrate', 'web1', '--to', 'host-b', '--json', '--quiet']);
    expect(moved.code, moved.stderr).toBe(0);
    expect((await store.recentMoves(60_000)).map((move) => [move.vm, move.from, move.to])).toEqual([['web1', 'host-a', 'host-b']]);
    // The migration's hold ended with it.
    await (await store.lockVm('web1', 'check')).release();
  });

  it('says fast, with exit 3 and a hint, when etcd does not answer', async () => {
    cluster = await startCluster([]);
    const started = Date.now();
    const result = await ferry(cluster, ['--cluster', 'etcd://127.0.0.1:9', 'hosts'], 'env');
    expect(result.code).toBe(3);
    expect(result.stderr).toContain('FERRY_ERR_UNREACHABLE');
    expect(result.stderr).toContain('is etcd running at etcd://127.0.0.1:9?');
    // Not grpc's own minutes of retries: the connect timeout is a few seconds (bounded loosely, for a loaded machine).
    expect(Date.now() - started).toBeLessThan(30_000);
  });
});

describe('fleet operations on a cluster store in etcd', () => {
  /** A coordinator process that runs until it ends or is killed; its lease lasts 2 s. */
  function spawnFerry(c: TestCluster, args: string[]): { result: Promise<CliResult>; kill(): void } {
    let child: ReturnType<typeof execFile> | undefined;
    const result = new Promise<CliResult>((resolve) => {
      child = execFile(process.execPath, [ferryEntry, '--cluster', etcd.url, ...args], { cwd: c.dir, env: { ...process.env, FERRY_TOKEN: c.token, FERRY_ETCD_LEASE_TTL: '2' }, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
        resolve({ code, stdout, stderr, json: () => JSON.parse(stdout) });
      });
    });
    return { result, kill: () => child?.kill('SIGKILL') };
  }

  it('a drain whose coordinator is killed mid-way leaves nothing held once its lease ends, and running it again completes it', async () => {
    // host-a holds round 1 of its first migration for 3 s: time to kill the coordinator while a VM is on its way.
    cluster = await startCluster([{ name: 'host-a', capacity: '256MiB', env: { FERRY_FAULTS: 'delay@round-1' } }, { name: 'host-b', capacity: '256MiB' }, { name: 'host-c', capacity: '256MiB' }]);
    const c = cluster;
    const fresh = await openStore(etcd.url);
    await fresh.update((current) => ({ ...current, hosts: [] }));
    await fresh.close();
    expect((await ferry(c, ['cluster', 'import', c.clusterFile])).code).toBe(0);
    for (const [name, seed] of [['web1', '3'], ['web2', '4']] as const) {
      expect((await ferry(c, ['vm', 'create', name, '--on', 'host-a', '--memory', '16MiB', '--rate', '1000', '--seed', seed])).code).toBe(0);
    }

    const drain = spawnFerry(c, ['host', 'drain', 'host-a', '--parallel', '1', '--json']);
    let moving = '';
    await expect.poll(async () => {
      moving = (await ferry(c, ['hosts', '--json'])).json<{ name: string; vms: string[] }[]>()
        .find((host) => host.name !== 'host-a' && host.vms.length > 0)?.vms[0] ?? '';
      return moving;
    }, { timeout: 20_000, interval: 100 }).not.toBe('');
    // The drain holds the VM on its way (host-a keeps its round 1 for 3 s): another coordinator cannot take it.
    store = await openStore(etcd.url);
    await expect(store.lockVm(moving, 'check')).rejects.toMatchObject({ code: 'FERRY_ERR_VM_BUSY' });
    drain.kill();
    expect((await drain.result).code).not.toBe(0);

    // Its holds end with its lease: another coordinator can take each VM.
    for (const vm of ['web1', 'web2']) {
      await expect.poll(async () => {
        try {
          await (await store!.lockVm(vm, 'check')).release();
          return 'free';
        } catch (error) {
          return (error as { code?: string }).code;
        }
      }, { timeout: 20_000, interval: 250 }).toBe('free');
    }
    // The host stays in maintenance (the store keeps the flag too); the drain run again finishes the job.
    expect((await store.hostFlags())['host-a']?.maintenance).toBeTruthy();
    const again = await ferry(c, ['host', 'drain', 'host-a', '--json']);
    expect(again.code, again.stderr).toBe(0);
    const listed = (await ferry(c, ['vm', 'list', '--json'])).json<{ name: string; host: string; state: string }[]>();
    expect(listed.map((vm) => vm.name).sort()).toEqual(['web1', 'web2']);
    expect(listed.every((vm) => vm.host !== 'host-a' && vm.state === 'running')).toBe(true);
    const check = await ferry(c, ['vm', 'check', 'web1', '--json']);
    expect(check.code, check.stdout + check.stderr).toBe(0);

    // Two balancers watching at once: one leads at a time, so their rounds never overlap.
    const balancers = [0, 1].map(() => spawnFerry(c, ['balance', '--metric', 'memory', '--apply', '--watch', '200ms', '--rounds', '3', '--json']));
    const outputs = await Promise.all(balancers.map((balancer) => balancer.result));
    const spans = outputs.map((output) => {
      expect(output.code, output.stderr).toBe(0);
      const rounds = output.stdout.trim().split('\n').map((line) => JSON.parse(line) as { round: number; at: string; endedAt: string; leader: string });
      expect(rounds.map((round) => round.round)).toEqual([1, 2, 3]);
      return { leader: rounds[0]!.leader, from: Date.parse(rounds[0]!.at), to: Date.parse(rounds.at(-1)!.endedAt) };
    });
    expect(spans[0]!.leader).not.toBe(spans[1]!.leader);
    const [first, second] = [...spans].sort((a, b) => a.from - b.from);
    expect(first!.to).toBeLessThanOrEqual(second!.from);
  });
});

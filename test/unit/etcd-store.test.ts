/**
 * The etcd cluster store against a real etcd (test/etcd.ts): hosts, flags, moves, address reservations, VM locks,
 * withLock and elections, between stores in this process and in coordinator processes killed with SIGKILL, whose
 * holds end with their lease.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore, type ClusterStore } from '../../coordinator/store/store.js';
import { FerryError } from '../../shared/errors.js';
import { startEtcd, type TestEtcd } from '../etcd.js';

const TTL_SECONDS = 2;
let etcd: TestEtcd;
const stores: ClusterStore[] = [];

beforeAll(async () => {
  process.env.FERRY_ETCD_LEASE_TTL = String(TTL_SECONDS);
  etcd = await startEtcd();
});
afterAll(async () => {
  await Promise.all(stores.map((store) => store.close()));
  await etcd?.stop();
});

async function store(): Promise<ClusterStore> {
  const opened = await openStore(etcd.url);
  stores.push(opened);
  return opened;
}

async function refusal(promise: Promise<unknown>): Promise<FerryError> {
  const error = await promise.then(() => undefined, (thrown: unknown) => thrown);
  expect(error).toBeInstanceOf(FerryError);
  return error as FerryError;
}

const storeModule = fileURLToPath(new URL('../../dist/coordinator/store/store.js', import.meta.url));

/** A coordinator process that opens the store, runs `body` (with `store` in scope), prints `ready`, and waits. */
function coordinator(body: string): { child: ChildProcess; ready: Promise<void> } {
  const child = spawn(process.execPath, ['--input-type=module', '-e', `
    const { openStore } = await import(${JSON.stringify(storeModule)});
    const store = await openStore(${JSON.stringify(etcd.url)});
    ${body}
    console.log('ready');
    setInterval(() => {}, 1000);
  `], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, FERRY_ETCD_LEASE_TTL: String(TTL_SECONDS) } });
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      if (chunk.toString().includes('ready')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`the coordinator exited (${code}) before it was ready`)));
  });
  return { child, ready };
}

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

describe('etcd cluster store', () => {
  it('keeps hosts, pool and token file, in the order added, through atomic updates from two stores', async () => {
    const a = await store();
    const b = await store();
    expect(a.kind).toBe('etcd');
    expect(await a.load()).toEqual({ hosts: [] });
    await Promise.all(['host-b', 'host-a', 'host-c'].map((name, index) => (index % 2 === 0 ? a : b).update((cluster) => ({
      ...cluster, hosts: [...cluster.hosts, { name, url: `ws://127.0.0.1:${7001 + index}` }],
    }))));
    await a.update((cluster) => ({ ...cluster, network: { pool: '10.0.0.10-10.0.0.20', prefix: 24, gateway: '10.0.0.1' }, tokenFile: 'token' }));
    const loaded = await b.load();
    expect(loaded.hosts.map((host) => host.name).sort()).toEqual(['host-a', 'host-b', 'host-c']);
    expect(loaded.network).toEqual({ pool: '10.0.0.10-10.0.0.20', prefix: 24, gateway: '10.0.0.1' });
    expect(loaded.tokenFile).toBe('token');
    await b.update((cluster) => ({ ...cluster, hosts: cluster.hosts.filter((host) => host.name !== 'host-b') }));
    expect((await a.load()).hosts.map((host) => host.name).sort()).toEqual(['host-a', 'host-c']);
    const duplicate = await refusal(a.update((cluster) => ({ ...cluster, hosts: [...cluster.hosts, { name: 'host-a', url: 'ws://127.0.0.1:1' }] })));
    expect(duplicate.code).toBe('FERRY_ERR_HOST_EXISTS');
    // Tokens are never stored.
    await a.update((cluster) => ({ ...cluster, hosts: cluster.hosts.map((host) => ({ ...host, token: 'secret' })) }));
    expect((await b.load()).hosts.every((host) => host.token === undefined)).toBe(true);
  });

  it('keeps host flags and recent moves', async () => {
    const a = await store();
    await a.setHostFlags('host-a', { maintenance: { since: '2026-01-01T00:00:00.000Z', by: 'ops' } });
    await a.setHostFlags('host-b', { degraded: { reason: 'disk nearly full', since: '2026-01-01T00:00:00.000Z' } });
    expect(await (await store()).hostFlags()).toEqual({
      'host-a': { maintenance: { since: '2026-01-01T00:00:00.000Z', by: 'ops' } },
      'host-b': { degraded: { reason: 'disk nearly full', since: '2026-01-01T00:00:00.000Z' } },
    });
    await a.setHostFlags('host-a', { maintenance: undefined });
    expect(Object.keys(await a.hostFlags())).toEqual(['host-b']);
    // A flag set leaves the host's other flags alone, also when two coordinators set them at once.
    await Promise.all([
      a.setHostFlags('host-b', { maintenance: { since: '2026-01-02T00:00:00.000Z' } }),
      (await store()).setHostFlags('host-c', { maintenance: { since: '2026-01-02T00:00:00.000Z' } }),
    ]);
    expect((await a.hostFlags())['host-b']).toEqual({ degraded: { reason: 'disk nearly full', since: '2026-01-01T00:00:00.000Z' }, maintenance: { since: '2026-01-02T00:00:00.000Z' } });
    const now = Date.now();
    await a.recordMove({ vm: 'old', from: 'host-a', to: 'host-b', at: new Date(now - 3600_000).toISOString(), by: 'x' });
    await a.recordMove({ vm: 'web1', from: 'host-a', to: 'host-b', at: new Date(now - 1000).toISOString(), by: 'x' });
    await a.recordMove({ vm: 'web2', from: 'host-b', to: 'host-a', at: new Date(now).toISOString(), by: 'y' });
    expect((await a.recentMoves(60_000)).map((move) => move.vm)).toEqual(['web1', 'web2']);
    expect((await a.recentMoves(2 * 3600_000)).map((move) => move.vm)).toEqual(['old', 'web1', 'web2']);
  });

  it('gives a VM to one operation at a time, naming the holder to the others', async () => {
    const a = await store();
    const b = await store();
    const held = await a.lockVm('web1', 'migrate', 'alice@one pid 1');
    const busy = await refusal(b.lockVm('web1', 'storage move'));
    expect(busy.code).toBe('FERRY_ERR_VM_BUSY');
    expect(busy.message).toContain('alice@one pid 1');
    expect(busy.message).toContain('a migrate');
    expect(busy.hint).toMatch(/wait for it/);
    // Another VM is free meanwhile.
    await (await b.lockVm('web2', 'migrate')).release();
    await held.release();
    await (await b.lockVm('web1', 'storage move')).release();
  });

  it('reserves an address for one coordinator at a time and lists the reservations', async () => {
    const a = await store();
    const b = await store();
    const reservation = await a.reserveAddress('10.0.0.7', 'a');
    expect(reservation).toBeDefined();
    expect(await b.reserveAddress('10.0.0.7', 'b')).toBeUndefined();
    expect(await b.reservedAddresses()).toEqual(new Set(['10.0.0.7']));
    await reservation!.release();
    expect(await b.reservedAddresses()).toEqual(new Set());
    const again = await b.reserveAddress('10.0.0.7', 'b');
    expect(again).toBeDefined();
    await again!.release();
  });

  it('runs withLock holders one after the other, and gives up after the wait with a hint', async () => {
    const a = await store();
    const b = await store();
    const events: string[] = [];
    const run = (holder: ClusterStore, name: string): Promise<void> => holder.withLock('provision', async () => {
      events.push(`${name} in`);
      await new Promise((resolve) => setTimeout(resolve, 200));
      events.push(`${name} out`);
    });
    await Promise.all([run(a, 'a'), run(b, 'b')]);
    expect([['a in', 'a out', 'b in', 'b out'], ['b in', 'b out', 'a in', 'a out']]).toContainEqual(events);
    let release!: () => void;
    const holding = a.withLock('provision', () => new Promise<void>((resolve) => {
      release = resolve;
    }));
    await new Promise((resolve) => setTimeout(resolve, 200));
    const refused = await refusal(b.withLock('provision', async () => 'never', { waitMs: 300 }));
    expect(refused.code).toBe('FERRY_ERR_VM_STATE');
    expect(refused.message).toContain('another ferry provision holds');
    release();
    await holding;
  });

  it('elects one leader at a time: the second campaign leads only once the first resigns', async () => {
    const a = await store();
    const b = await store();
    const first = await a.campaign('balance', 'a');
    let secondLeads = false;
    const second = b.campaign('balance', 'b').then((leadership) => {
      secondLeads = true;
      return leadership;
    });
    await new Promise((resolve) => setTimeout(resolve, 700));
    expect(secondLeads).toBe(false);
    await first.resign();
    const leadership = await second;
    expect(secondLeads).toBe(true);
    // A third that gives up waiting is not left campaigning.
    const waiting = new AbortController();
    const third = a.campaign('balance', 'c', { signal: waiting.signal });
    setTimeout(() => waiting.abort(), 300);
    expect((await refusal(third)).code).toBe('FERRY_ERR_CANCELLED');
    await leadership.resign();
    await (await a.campaign('balance', 'd')).resign();
  });

  it('frees what a coordinator killed with SIGKILL held once its lease expires: a VM lock, a reservation, a leadership', async () => {
    const survivor = await store();
    const { child, ready } = coordinator(`
      await store.lockVm('db1', 'migrate');
      await store.reserveAddress('10.0.0.9', 'doomed');
      await store.campaign('drain', 'doomed');
    `);
    try {
      await ready;
      const busy = await refusal(survivor.lockVm('db1', 'migrate'));
      expect(busy.code).toBe('FERRY_ERR_VM_BUSY');
      expect(busy.message).toContain(`pid ${child.pid}`);
      expect(await survivor.reservedAddresses()).toContain('10.0.0.9');
      let leads = false;
      const campaign = survivor.campaign('drain', 'survivor').then((leadership) => {
        leads = true;
        return leadership;
      });
      await kill(child);
      const killedAt = Date.now();
      expect(leads).toBe(false);
      // Within the lease's TTL (and etcd's check of it, every 500 ms) the holds are gone.
      let lock;
      while (!lock) {
        lock = await survivor.lockVm('db1', 'migrate').catch(() => undefined);
        if (!lock) await new Promise((resolve) => setTimeout(resolve, 100));
        expect(Date.now() - killedAt).toBeLessThan((TTL_SECONDS + 5) * 1000);
      }
      expect(await survivor.reservedAddresses()).not.toContain('10.0.0.9');
      await (await campaign).resign();
      await lock.release();
    } finally {
      await kill(child);
    }
  });

  it('says fast, with a hint, when etcd does not answer', async () => {
    const started = Date.now();
    const error = await refusal(openStore('etcd://127.0.0.1:9'));
    expect(error.code).toBe('FERRY_ERR_UNREACHABLE');
    expect(error.hint).toContain('is etcd running at etcd://127.0.0.1:9?');
    expect(Date.now() - started).toBeLessThan(8000);
  });
});

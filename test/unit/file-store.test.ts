/**
 * The file cluster store, on real files: the cluster file keeps its hosts and gains host flags and moves (older
 * files still load), a VM is held for one operation at a time, addresses are reserved, elections have one leader,
 * and what a process killed with SIGKILL held is taken over once stale.
 */
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadCluster } from '../../coordinator/cluster.js';
import { FileStore } from '../../coordinator/store/file-store.js';
import { openStore } from '../../coordinator/store/store.js';
import { FerryError } from '../../shared/errors.js';

let dir: string;
let file: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-file-store-'));
  file = path.join(dir, 'ferry.cluster.json');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function refusal(promise: Promise<unknown>): Promise<FerryError> {
  const error = await promise.then(() => undefined, (thrown: unknown) => thrown);
  expect(error).toBeInstanceOf(FerryError);
  return error as FerryError;
}

describe('file cluster store', () => {
  it('is what --cluster PATH, $FERRY_CLUSTER or ./ferry.cluster.json names', async () => {
    const store = await openStore(file);
    expect(store.kind).toBe('file');
    expect(store.location).toBe(file);
    expect(store.localFile).toBe(file);
    await store.close();
  });

  it('loads an older cluster file, and keeps flags and moves through host edits', async () => {
    writeFileSync(file, JSON.stringify({ tokenFile: 'token', hosts: [{ name: 'host-a', url: 'ws://127.0.0.1:7001' }] }));
    const store = new FileStore(file);
    expect(await store.load()).toEqual({ tokenFile: 'token', hosts: [{ name: 'host-a', url: 'ws://127.0.0.1:7001' }] });
    await store.setHostFlags('host-a', { maintenance: { since: '2026-01-01T00:00:00.000Z', by: 'ops' } });
    const at = new Date().toISOString();
    await store.recordMove({ vm: 'web1', from: 'host-a', to: 'host-b', at, by: 'ops' });
    await store.recordMove({ vm: 'old', from: 'host-a', to: 'host-b', at: new Date(Date.now() - 3600_000).toISOString(), by: 'ops' });
    await store.update((cluster) => ({ ...cluster, hosts: [...cluster.hosts, { name: 'host-b', url: 'ws://127.0.0.1:7002', token: 'secret' }] }));
    expect(await store.load()).toEqual({ tokenFile: 'token', hosts: [{ name: 'host-a', url: 'ws://127.0.0.1:7001' }, { name: 'host-b', url: 'ws://127.0.0.1:7002' }] });
    expect(await store.hostFlags()).toEqual({ 'host-a': { maintenance: { since: '2026-01-01T00:00:00.000Z', by: 'ops' } } });
    expect((await store.recentMoves(60_000)).map((move) => move.vm)).toEqual(['web1']);
    // The file itself: flags and moves in it, no token.
    const stored = await loadCluster(file);
    expect(stored.moves).toHaveLength(2);
    expect(readFileSync(file, 'utf8')).not.toContain('secret');
    await store.setHostFlags('host-a', { degraded: { reason: 'fan', since: '2026-01-02T00:00:00.000Z' } });
    expect(await store.hostFlags()).toEqual({ 'host-a': { maintenance: { since: '2026-01-01T00:00:00.000Z', by: 'ops' }, degraded: { reason: 'fan', since: '2026-01-02T00:00:00.000Z' } } });
    await store.setHostFlags('host-a', { maintenance: undefined, degraded: undefined });
    expect(await store.hostFlags()).toEqual({});
  });

  it('applies updates from many writers at once, losing none', async () => {
    const store = new FileStore(file);
    await Promise.all(Array.from({ length: 8 }, (_, index) => new FileStore(file).update((cluster) => ({
      ...cluster, hosts: [...cluster.hosts, { name: `host-${index}`, url: `ws://127.0.0.1:${7000 + index}` }],
    }))));
    expect((await store.load()).hosts.map((host) => host.name).sort()).toEqual(Array.from({ length: 8 }, (_, index) => `host-${index}`));
  });

  it('gives a VM to one operation at a time, naming the holder to the others', async () => {
    const store = new FileStore(file);
    const held = await store.lockVm('web1', 'migration', 'alice@one pid 1');
    const busy = await refusal(new FileStore(file).lockVm('web1', 'storage move'));
    expect(busy.code).toBe('FERRY_ERR_VM_BUSY');
    expect(busy.message).toContain('alice@one pid 1 holds it for a migration');
    expect(busy.hint).toMatch(/wait for it/);
    await (await store.lockVm('web2', 'migration')).release();
    await held.release();
    await (await store.lockVm('web1', 'storage move')).release();
  });

  it('does not take over at once a lock whose holder ran on another machine', async () => {
    const holder = new FileStore(file, { staleMs: 2000 });
    const held = await holder.lockVm('web1', 'migration');
    // As if it ran elsewhere, and stopped refreshing its lock: this machine cannot tell whether it still runs.
    const holderFile = `${file}.vm-web1.holder`;
    writeFileSync(holderFile, JSON.stringify({ ...JSON.parse(readFileSync(holderFile, 'utf8')), machine: 'elsewhere', pid: 999_999 }));
    const store = new FileStore(file, { staleMs: 2000 });
    expect((await refusal(store.lockVm('web1', 'storage move'))).code).toBe('FERRY_ERR_VM_BUSY');
    await held.release();
  });

  it('reserves an address for one holder at a time and lists the reservations', async () => {
    const store = new FileStore(file);
    const reservation = await store.reserveAddress('10.0.0.7', 'a');
    expect(reservation).toBeDefined();
    expect(await new FileStore(file).reserveAddress('10.0.0.7', 'b')).toBeUndefined();
    expect(await store.reservedAddresses()).toEqual(new Set(['10.0.0.7']));
    await reservation!.release();
    expect(await store.reservedAddresses()).toEqual(new Set());
  });

  it('elects one leader at a time, and a campaign that gives up is not left waiting', async () => {
    const store = new FileStore(file);
    const first = await store.campaign('balance', 'a');
    let secondLeads = false;
    const second = new FileStore(file).campaign('balance', 'b').then((leadership) => {
      secondLeads = true;
      return leadership;
    });
    await new Promise((resolve) => setTimeout(resolve, 600));
    expect(secondLeads).toBe(false);
    await first.resign();
    const leadership = await second;
    const waiting = new AbortController();
    const third = store.campaign('balance', 'c', { signal: waiting.signal });
    setTimeout(() => waiting.abort(), 300);
    expect((await refusal(third)).code).toBe('FERRY_ERR_CANCELLED');
    await leadership.resign();
    await (await store.campaign('balance', 'd')).resign();
  });

  it('takes over at once what a process of this machine killed with SIGKILL held: a VM lock, a reservation, a leadership', async () => {
    const module = fileURLToPath(new URL('../../dist/coordinator/store/file-store.js', import.meta.url));
    const holder = spawn(process.execPath, ['--input-type=module', '-e', `
      const { FileStore } = await import(${JSON.stringify(module)});
      const store = new FileStore(${JSON.stringify(file)}, { staleMs: 2000 });
      await store.lockVm('db1', 'migration');
      await store.reserveAddress('10.0.0.9', 'doomed');
      await store.campaign('drain', 'doomed');
      console.log('ready');
      setInterval(() => {}, 1000);
    `], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout.on('data', (chunk: Buffer) => {
          if (chunk.toString().includes('ready')) resolve();
        });
        holder.once('exit', (code) => reject(new Error(`the holder exited (${code}) before it was ready`)));
      });
      const store = new FileStore(file, { staleMs: 2000 });
      const busy = await refusal(store.lockVm('db1', 'migration'));
      expect(busy.message).toContain(`pid ${holder.pid}`);
      expect(await store.reservedAddresses()).toContain('10.0.0.9');
      holder.kill('SIGKILL');
      await new Promise((resolve) => holder.once('exit', resolve));
      // Its pid is gone: no need to wait until its locks go stale (2 s here).
      const killedAt = Date.now();
      expect(await store.reservedAddresses()).not.toContain('10.0.0.9');
      const lock = await store.lockVm('db1', 'migration');
      const leadership = await store.campaign('drain', 'survivor');
      expect(Date.now() - killedAt).toBeLessThan(1500);
      await lock.release();
      await leadership.resign();
    } finally {
      if (holder.exitCode === null && holder.signalCode === null) holder.kill('SIGKILL');
    }
  });
});

/**
 * The cluster file's lock (proper-lockfile underneath), on real files: a second holder waits, then gives up with a
 * FerryError that says what to do; a lock left by a process killed with SIGKILL is taken over once stale.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { clusterLockPath, withClusterLock } from '../../coordinator/cluster-lock.js';
import { FerryError } from '../../shared/errors.js';

let dir: string;
let clusterFile: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-lock-test-'));
  clusterFile = path.join(dir, 'ferry.cluster.json');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((done) => {
    resolve = done;
  });
  return { promise, resolve };
}

describe('cluster lock', () => {
  it('refuses a second holder with a stable code and a hint once the wait is over, and lets the first finish', async () => {
    const holding = deferred();
    const entered = deferred();
    const first = withClusterLock(clusterFile, 'provision', async () => {
      entered.resolve();
      await holding.promise;
      return 'first';
    });
    await entered.promise;
    let refused: unknown;
    await withClusterLock(clusterFile, 'provision', async () => 'second', { waitMs: 300 }).catch((error: unknown) => {
      refused = error;
    });
    expect(refused).toBeInstanceOf(FerryError);
    const error = refused as FerryError;
    expect(error.code).toBe('FERRY_ERR_VM_STATE');
    expect(error.message).toContain('another ferry provision holds');
    expect(error.message).toContain(clusterLockPath(clusterFile, 'provision'));
    expect(error.hint).toMatch(/wait for it/);
    holding.resolve();
    expect(await first).toBe('first');
    expect(existsSync(clusterLockPath(clusterFile, 'provision'))).toBe(false);
  });

  it('runs holders one after the other, never together, when the first finishes within the wait', async () => {
    const events: string[] = [];
    const run = (name: string) => withClusterLock(clusterFile, 'provision', async () => {
      events.push(`${name} in`);
      await new Promise((resolve) => setTimeout(resolve, 150));
      events.push(`${name} out`);
    }, { waitMs: 5000 });
    await Promise.all([run('a'), run('b')]);
    expect([['a in', 'a out', 'b in', 'b out'], ['b in', 'b out', 'a in', 'a out']]).toContainEqual(events);
  });

  it('releases the lock when the action throws, and passes the error on', async () => {
    await expect(withClusterLock(clusterFile, 'provision', async () => {
      throw new Error('the host refused');
    })).rejects.toThrow('the host refused');
    expect(existsSync(clusterLockPath(clusterFile, 'provision'))).toBe(false);
    expect(await withClusterLock(clusterFile, 'provision', async () => 'again', { waitMs: 0 })).toBe('again');
  });

  it('takes over a lock left by a ferry that was killed, once it is stale', async () => {
    const lockPath = clusterLockPath(clusterFile, 'provision');
    const root = fileURLToPath(new URL('../..', import.meta.url));
    const holder = spawn(process.execPath, ['--input-type=commonjs', '-e', `
      require('proper-lockfile').lock(${JSON.stringify(clusterFile)}, { lockfilePath: ${JSON.stringify(lockPath)}, realpath: false, stale: 2000 })
        .then(() => console.log('locked'));
      setInterval(() => {}, 1000);
    `], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout.on('data', (chunk: Buffer) => {
          if (chunk.toString().includes('locked')) resolve();
        });
        holder.once('exit', (code) => reject(new Error(`the lock holder exited (${code}) before it locked`)));
      });
      holder.kill('SIGKILL');
      await new Promise((resolve) => holder.once('exit', resolve));
      expect(existsSync(lockPath)).toBe(true); // SIGKILL leaves no chance to clean up
      expect(await withClusterLock(clusterFile, 'provision', async () => 'taken over', { staleMs: 2000, waitMs: 10_000 })).toBe('taken over');
    } finally {
      if (holder.exitCode === null && holder.signalCode === null) holder.kill('SIGKILL');
    }
  });
});

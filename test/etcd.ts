/**
 * A real etcd for tests: `etcd` (Debian's etcd-server; .ci/run installs it) on free ports with a fresh data folder.
 * `stop()` kills it and removes the folder; call it from afterAll or a finally so that it runs when a test fails.
 * A test that cannot find etcd fails, saying how to install it, rather than skipping: CI always has it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';

export interface TestEtcd {
  /** etcd://127.0.0.1:PORT, what `--cluster` takes. */
  url: string;
  /** http://127.0.0.1:PORT */
  endpoint: string;
  stop(): Promise<void>;
}

function etcdBinary(): string {
  const candidates = [process.env.FERRY_TEST_ETCD, '/usr/bin/etcd', '/usr/local/bin/etcd', ...(process.env.PATH ?? '').split(':').map((dir) => path.join(dir, 'etcd'))];
  const found = candidates.find((candidate): candidate is string => candidate !== undefined && candidate !== '' && existsSync(candidate));
  if (!found) throw new Error('these tests need etcd: install it (Debian: `apt-get install etcd-server`; .ci/run does), or set FERRY_TEST_ETCD to its path');
  return found;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export async function startEtcd(): Promise<TestEtcd> {
  const binary = etcdBinary();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-etcd-'));
  const clientPort = await freePort();
  const peerPort = await freePort();
  const endpoint = `http://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  const child = spawn(binary, [
    '--name', 'ferry-test', '--data-dir', path.join(dir, 'data'),
    '--listen-client-urls', endpoint, '--advertise-client-urls', endpoint,
    '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `ferry-test=${peer}`,
    '--log-level', 'error',
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  running.add(child);
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (text: string) => {
    stderr = (stderr + text).slice(-4000);
  });
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    }
    running.delete(child);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`etcd exited (${child.exitCode}) before it was ready:\n${stderr}`);
      const healthy = await fetch(`${endpoint}/health`).then(async (response) => (await response.json() as { health?: string }).health === 'true').catch(() => false);
      if (healthy) break;
      if (Date.now() > deadline) throw new Error(`etcd did not become healthy at ${endpoint} within 20 s:\n${stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return { url: `etcd://127.0.0.1:${clientPort}`, endpoint, stop };
}

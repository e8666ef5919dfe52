/**
 * Integration-test harness: real ferry-agent processes on OS-picked ports, and the real `ferry` CLI run as a
 * process against a cluster file in a fresh temporary folder. Everything started is stopped by `stop()`, which
 * the tests register right after creating the cluster, so it runs even when a test fails.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, vi } from 'vitest';
import { startLocalAgent, type LocalAgent, type LocalAgentOptions } from '../coordinator/local-agent.js';
import { checkDump } from './replay.js';

const ferryEntry = fileURLToPath(new URL('../dist/coordinator/main.js', import.meta.url));

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON (for --json runs). */
  json<T = any>(): T;
}

export interface TestCluster {
  dir: string;
  /** The shared secret every agent of this cluster was given; the CLI runs with it as FERRY_TOKEN. */
  token: string;
  clusterFile: string;
  agents: Map<string, LocalAgent>;
  agent(name: string): LocalAgent;
  ferry(...args: string[]): Promise<CliResult>;
  /** Starts one more agent and adds it to the cluster file through the CLI. */
  addAgent(options: LocalAgentOptions): Promise<LocalAgent>;
  /**
   * Starts agent `name` again, after it died, on the same port and datastore (a host that rebooted), without the
   * fault switches it had; `extraArgs` are command-line arguments for the new process (e.g. `--cpu-mask`).
   */
  restartAgent(name: string, extraArgs?: string[]): Promise<LocalAgent>;
  stop(): Promise<void>;
}

/** Runs the real CLI to completion; in network namespace `netns` when given (`ip netns exec`, needs root). */
export function runFerry(args: string[], env: Record<string, string> = {}, netns?: string): Promise<CliResult> {
  const [command, commandArgs] = netns ? ['ip', ['netns', 'exec', netns, process.execPath, ferryEntry, ...args]] : [process.execPath, [ferryEntry, ...args]];
  return new Promise((resolve) => {
    execFile(command, commandArgs, { env: { ...process.env, ...env }, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({
        code,
        stdout,
        stderr,
        json: () => {
          try {
            return JSON.parse(stdout);
          } catch {
            throw new Error(`ferry ${args.join(' ')} printed no JSON (exit ${code}):\n${stdout}\n${stderr}`);
          }
        },
      });
    });
  });
}

/**
 * Runs the CLI as the leader of a process group of its own, for commands that start processes of their own
 * (`ferry bench`: agents, raw-TCP ends, probes). `stop()` kills the whole group, whatever is left of it: a test that
 * fails or times out leaves nothing running.
 */
export function runFerryGroup(args: string[], env: Record<string, string> = {}): { result: Promise<CliResult>; stop(): void } {
  const child = spawn(process.execPath, [ferryEntry, ...args], { stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (text: string) => (stdout += text));
  child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  const result = new Promise<CliResult>((resolve) => {
    child.once('close', (code) => resolve({
      code: code ?? 1,
      stdout,
      stderr,
      json: () => JSON.parse(stdout),
    }));
  });
  return {
    result,
    stop: () => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // the group is gone already
      }
    },
  };
}

/** Starts the CLI without waiting for it, for tests that kill it midway. */
export function spawnFerry(args: string[], env: Record<string, string> = {}): ChildProcess {
  return spawn(process.execPath, [ferryEntry, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
}

export async function startCluster(agents: LocalAgentOptions[]): Promise<TestCluster> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-test-'));
  const clusterFile = path.join(dir, 'ferry.cluster.json');
  const running = new Map<string, LocalAgent>();
  const token = randomBytes(24).toString('hex');
  const ferry = (...args: string[]): Promise<CliResult> => runFerry(['--cluster', clusterFile, ...args], { FERRY_TOKEN: token });
  const cluster: TestCluster = {
    dir,
    token,
    clusterFile,
    agents: running,
    agent: (name) => {
      const found = running.get(name);
      if (!found) throw new Error(`no agent ${name}`);
      return found;
    },
    ferry,
    addAgent: async (options) => {
      const agent = await startLocalAgent({ datastore: path.join(dir, options.name), logLevel: 'warn', token, ...options });
      running.set(options.name, agent);
      const added = await ferry('hosts', 'add', options.name, agent.url);
      if (added.code !== 0) throw new Error(`hosts add failed: ${added.stderr}`);
      return agent;
    },
    restartAgent: async (name, extraArgs) => {
      const old = running.get(name);
      if (!old) throw new Error(`no agent ${name}`);
      await old.stop(2000);
      const port = Number(new URL(old.url).port);
      const agent = await startLocalAgent({ name, port, datastore: path.join(dir, name), logLevel: 'warn', token, ...(extraArgs ? { extraArgs } : {}) });
      running.set(name, agent);
      return agent;
    },
    stop: async () => {
      await Promise.all([...running.values()].map((agent) => agent.stop(2000)));
      await rm(dir, { recursive: true, force: true });
    },
  };
  try {
    for (const options of agents) await cluster.addAgent(options);
  } catch (error) {
    await cluster.stop();
    throw error;
  }
  return cluster;
}

/** Where agent `host` of this cluster keeps VM `vm`'s files (the harness gives each agent `<dir>/<host>` as datastore). */
export function vmFolder(cluster: TestCluster, host: string, vm: string): string {
  return path.join(cluster.dir, host, 'vms', vm);
}

/**
 * How integration tests wait for something to happen: `vi.waitFor(check, patiently)` retries `check` until it stops
 * throwing. 20 s, because agents are real processes on a machine shared with other work; a wait that passes returns
 * as soon as its check does.
 */
export const patiently = { timeout: 20_000, interval: 100 } as const;

export interface VmInfoJson {
  name: string;
  host: string;
  state: string;
  memoryBytes: number;
  workload: { kind: string; rate: number; wssPages: number; seed: number };
  cpu: { x: number; n: number; y?: number; m?: number };
}

/** `ferry vm info NAME --json`, failing the test if it fails. */
export async function vmInfo(cluster: TestCluster, name: string): Promise<VmInfoJson> {
  const result = await cluster.ferry('vm', 'info', name, '--json');
  if (result.code !== 0) throw new Error(`vm info ${name} failed (${result.code}): ${result.stderr}`);
  return result.json<VmInfoJson>();
}

/** Waits until the VM's write count has grown past `n`. */
export function waitForWrites(cluster: TestCluster, name: string, n: number): Promise<VmInfoJson> {
  return vi.waitFor(async () => {
    const info = await vmInfo(cluster, name);
    expect(info.cpu.n, `${name}'s write count`).toBeGreaterThan(n);
    return info;
  }, patiently);
}

/** Dumps VM `name` with the real CLI and checks the image by replay (test/replay.ts): every page and the registers. */
export async function expectMemoryMatchesReplay(cluster: TestCluster, name: string): Promise<void> {
  const file = path.join(cluster.dir, `${name}-${Date.now()}.bin`);
  const dump = await cluster.ferry('vm', 'dump', name, '--out', file, '--json');
  expect(dump.code, dump.stderr).toBe(0);
  const result = checkDump(file);
  expect(result.badPages).toEqual([]);
  expect(result.registersMatch).toBe(true);
  expect(result.ok).toBe(true);
}

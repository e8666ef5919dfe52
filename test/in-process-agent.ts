/**
 * A real agent in this process: a real datastore in a fresh temporary folder, real VMs with vCPU threads, and a
 * control connection to it over the in-memory socket pair. For tests that reach inside the agent (its catalog, its
 * loops) or slow one of its real steps; tests of the product as users run it start agent processes (harness.ts).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { afterEach, vi } from 'vitest';
import os from 'node:os';
import path from 'node:path';
import { Agent } from '../agent/agent.js';
import { Datastore } from '../agent/datastore/datastore.js';
import { parseFaults } from '../agent/faults.js';
import { initChecksums } from '../shared/checksum.js';
import { createSocketPair } from '../shared/frame-socket.js';
import { createLogger } from '../shared/log.js';
import { controlOps } from '../shared/protocol.js';
import { RpcConnection } from '../shared/rpc.js';

export interface InProcessAgent {
  agent: Agent;
  files: Datastore;
  dir: string;
  /** Every line the agent logged (debug and up), parsed. */
  lines: { msg: string; level: string; [field: string]: unknown }[];
  control: RpcConnection<Record<never, never>, typeof controlOps>;
  /** Stops the agent and removes its folder; register it right after creation. */
  stop(): Promise<void>;
}

export async function startInProcessAgent(): Promise<InProcessAgent> {
  await initChecksums();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-in-process-'));
  const lines: InProcessAgent['lines'] = [];
  const files = new Datastore(dir);
  const agent = new Agent({
    name: 'host-a', capacityBytes: 64 * 1024 * 1024, faults: parseFaults(undefined), token: 'in-process-test-token-0123456789',
    log: createLogger('host-a', 'debug', (line) => void lines.push(JSON.parse(line))),
    datastore: files,
  });
  const [coordinatorEnd, agentEnd] = createSocketPair();
  agent.serveControl(new RpcConnection(agentEnd, controlOps, {}));
  const control = new RpcConnection(coordinatorEnd, {}, controlOps);
  const stop = async (): Promise<void> => {
    control.close();
    await agent.shutdown();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await agent.loadDatastore();
  } catch (error) {
    await stop();
    throw error;
  }
  return { agent, files, dir, lines, control, stop };
}

/**
 * For a test file: returns a `start` that makes an in-process agent, each stopped (and every mock restored) after the
 * test that made it, even when the test fails.
 */
export function useInProcessAgents(): () => Promise<InProcessAgent> {
  const running: InProcessAgent[] = [];
  afterEach(async () => {
    for (const started of running.splice(0).reverse()) await started.stop();
    vi.restoreAllMocks();
  });
  return async () => {
    const started = await startInProcessAgent();
    running.push(started);
    return started;
  };
}

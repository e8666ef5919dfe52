/**
 * A cold migration's stream that closes at a bad moment, from a raw peer speaking the real protocol to a live agent:
 * whatever the moment, afterwards the VM is either registered and listed, or gone without a trace (no folder, no
 * staging, its name free). Never a folder the agent does not list, nor a name held by nothing.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { defaultNvram } from '../../agent/datastore/nvram.js';
import { formatDigest, hashBytes, initChecksums } from '../../shared/checksum.js';
import { dialAgent } from '../../shared/dial.js';
import { peerOps } from '../../shared/protocol.js';
import { patiently, startCluster, type TestCluster } from '../harness.js';

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

const MiB = 1024 * 1024;

/** The files of a powered-off VM called `name`: what a source would send. */
function vmFiles(name: string): Map<string, Buffer> {
  const config = {
    name, memoryBytes: MiB, workload: { kind: 'idle', rate: 0, wssPages: 1, seed: 1 }, epoch: 1,
    disks: [{ file: 'disk0.img', sizeBytes: 8 * MiB }], network: null, leaseUntil: null, createdAt: new Date().toISOString(),
  };
  return new Map([
    ['config.json', Buffer.from(JSON.stringify(config))],
    ['nvram.bin', defaultNvram()],
    ['vm.log', Buffer.from('created\n')],
    ['disk0.img', randomBytes(8 * MiB)],
  ]);
}

describe('a cold migration stream that closes at a bad moment', () => {
  it('leaves a VM either registered and listed or gone without a trace, whenever the stream closes', async () => {
    await initChecksums();
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    const datastore = path.join(c.dir, 'host-a');
    const url = c.agent('host-a').url;
    const outcomes: string[] = [];
    // Moments: right after cold.begin is sent, then after cold.finish is sent, 0 to 40 ms in.
    const moments: { after: 'begin' | 'finish'; ms: number }[] = [
      ...[0, 0, 1, 2].map((ms) => ({ after: 'begin' as const, ms })),
      ...[0, 2, 5, 10, 15, 20, 30, 40].map((ms) => ({ after: 'finish' as const, ms })),
    ];
    for (const [index, moment] of moments.entries()) {
      const name = `race${index}`;
      const peer = await dialAgent({ url, path: '/peer', token: c.token }, peerOps);
      const pending: Promise<unknown>[] = [];
      const send = (promise: Promise<unknown>): void => void pending.push(promise.catch(() => undefined));
      send(peer.request('cold.begin', { migrationId: randomUUID(), name, epoch: 1, sourceUrl: 'ws://127.0.0.1:9', cpuModel: { model: 'baseline', flags: [] }, suspended: false }, { timeoutMs: 10_000 }));
      if (moment.after === 'finish') {
        const files = vmFiles(name);
        for (const [file, data] of files) {
          for (let offset = 0; offset < data.length; offset += MiB) {
            const part = data.subarray(offset, offset + MiB);
            send(peer.request('cold.chunk', { file, offset, data: Uint8Array.from(part), xxh64: formatDigest(hashBytes(part)) }, { timeoutMs: 10_000 }));
          }
        }
        await Promise.all(pending);
        const manifest = [...files].map(([file, data]) => ({ file, bytes: data.length, xxh64: formatDigest(hashBytes(data)) }));
        send(peer.request('cold.finish', { manifest }, { timeoutMs: 10_000 }));
      }
      if (moment.ms > 0) await delay(moment.ms);
      peer.close();
      await Promise.all(pending);
      // Once the agent is done with it: listed with its folder, or neither, and nothing staging.
      const outcome = await vi.waitFor(async () => {
        const listed = (await c.ferry('vm', 'list', '--json')).json<{ name: string }[]>().some((vm) => vm.name === name);
        const folder = existsSync(path.join(datastore, 'vms', name));
        const staging = existsSync(path.join(datastore, 'staging')) ? readdirSync(path.join(datastore, 'staging')) : [];
        expect({ name, listed, staging }).toEqual({ name, listed: folder, staging: [] });
        const info = await c.ferry('vm', 'info', name, '--json');
        // Its name is held by the VM when listed, and free (not found) otherwise.
        expect(listed ? info.code : info.json().error.code).toBe(listed ? 0 : 'FERRY_ERR_VM_NOT_FOUND');
        return listed ? 'registered' : 'gone';
      }, patiently);
      outcomes.push(`${moment.after}+${moment.ms}ms: ${outcome}`);
    }
    // The stream closed before any file was sent: those cannot have been registered.
    expect(outcomes.slice(0, 4).every((line) => line.endsWith('gone'))).toBe(true);
  });
});

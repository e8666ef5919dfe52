/**
 * A live agent hosting a running pattern VM takes 10,000 random and mutated frames on both of its endpoints and
 * stays up, answering, with the VM's memory exactly what replay says.
 */
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { Packr } from 'msgpackr';
import WebSocket from 'ws';
import { afterEach, describe, expect, it } from 'vitest';
import { checkDump } from '../replay.js';
import { startCluster, vmInfo, waitForWrites, type TestCluster } from '../harness.js';

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

/** xorshift32: a seeded generator, so a failing run can be replayed. */
function generator(seed: number): { next(): number; int(below: number): number; pick<T>(items: readonly T[]): T } {
  let x = seed >>> 0 || 1;
  const next = (): number => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  return { next, int: (below) => next() % below, pick: (items) => items[next() % items.length]! };
}

const packr = new Packr({ useRecords: false });
/** Ops that cannot change the VM under test even when well formed (no destroy, pause, resume or migrate). */
const harmlessOps = ['host.info', 'vm.info', 'vm.create', 'migrate.reserve', 'migrate.release', 'peer.hello', 'peer.sync', 'peer.verify', 'peer.activate', 'peer.abort', 'nope', ''];

function randomValue(random: ReturnType<typeof generator>, depth = 0): unknown {
  switch (random.int(depth > 2 ? 6 : 9)) {
    case 0: return random.next() - 2 ** 31;
    case 1: return random.pick([0, -1, 2 ** 53, Number.NaN, Infinity, 1e308, 0.5]);
    case 2: return random.pick(['', 'web1', 'x'.repeat(300), '../../etc', 'pattern', '\u0000', 'FERRY']);
    case 3: return random.pick([true, false, null]);
    case 4: return Buffer.alloc(random.int(64), random.int(256));
    case 5: return undefined;
    case 6: return Array.from({ length: random.int(4) }, () => randomValue(random, depth + 1));
    default: {
      const keys = ['name', 'memoryBytes', 'workload', 'kind', 'rate', 'wssPages', 'seed', 'migrationId', 'registers', 'x', 'n', 'mode', '__proto__', 'constructor'];
      return Object.fromEntries(Array.from({ length: random.int(5) }, () => [random.pick(keys), randomValue(random, depth + 1)]));
    }
  }
}

function randomFrame(random: ReturnType<typeof generator>): Buffer {
  const kind = random.int(6);
  if (kind === 0) return Buffer.from(Array.from({ length: random.int(200) }, () => random.int(256)));
  if (kind === 1) {
    // a page header with random fields, sometimes followed by data
    const header = Buffer.alloc(16 + 12 * random.int(4));
    for (let i = 0; i < header.length; i++) header[i] = random.int(256);
    header[0] = 0xc1;
    if (random.int(2) === 0) header[1] = 1;
    return header;
  }
  const message = {
    t: random.pick(['req', 'req', 'req', 'res', 'evt', 'zzz']),
    id: random.pick([random.int(1000), -1, 1.5, 'x', 2 ** 40]),
    op: random.pick(harmlessOps),
    body: randomValue(random),
  };
  const encoded: Buffer = packr.pack(message);
  if (kind === 2 && encoded.length > 0) encoded[random.int(encoded.length)] = random.int(256); // one byte flipped
  if (kind === 3) return encoded.subarray(0, random.int(encoded.length + 1)); // truncated
  return encoded;
}

describe('fuzzing a live agent', () => {
  it('survives 10,000 random and mutated frames on /control and /peer, and its running VM is untouched', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '16MiB', '--rate', '5000', '--wss', '8MiB', '--seed', '31')).code).toBe(0);
    const url = c.agent('host-a').url;
    const random = generator(20261125);
    let sent = 0;
    let replies = 0;
    let reconnects = 0;
    const total = 10_000;
    for (const endpoint of ['/control', '/peer']) {
      let remaining = total / 2;
      while (remaining > 0) {
        const socket = new WebSocket(`${url}${endpoint}`, { headers: { authorization: `Bearer ${c.token}` } });
        socket.on('message', () => void (replies += 1));
        socket.on('error', () => undefined);
        await new Promise<void>((resolve, reject) => {
          socket.once('open', () => resolve());
          socket.once('error', reject);
        });
        // Send in bursts until the agent closes the connection (it may, for an oversized or broken stream).
        while (remaining > 0 && socket.readyState === WebSocket.OPEN) {
          const burst = Math.min(remaining, 50);
          for (let i = 0; i < burst; i++) socket.send(randomFrame(random));
          sent += burst;
          remaining -= burst;
          await delay(2);
        }
        await delay(50);
        socket.terminate();
        reconnects += 1;
      }
    }
    expect(sent).toBe(total);
    expect(replies).toBeGreaterThan(total / 4); // the agent answered bad frames with errors, it did not go silent
    expect(c.agent('host-a').child.exitCode).toBeNull();

    const info = await vmInfo(c, 'web1');
    expect(info).toMatchObject({ host: 'host-a', state: 'running' });
    await waitForWrites(c, 'web1', info.cpu.n);
    const file = path.join(c.dir, 'after-fuzz.bin');
    expect((await c.ferry('vm', 'dump', 'web1', '--out', file)).code).toBe(0);
    expect(checkDump(file)).toMatchObject({ ok: true, badPages: [] });
    expect(reconnects).toBeGreaterThanOrEqual(2);
  });
});

/**
 * A live agent hosting a running pattern VM takes 10,000 random and mutated frames on both of its endpoints and
 * stays up, answering, with the VM's memory exactly what replay says.
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { Packr } from 'msgpackr';
import WebSocket from 'ws';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { dialAgent } from '../../shared/dial.js';
import { peerOps } from '../../shared/protocol.js';
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
const harmlessOps = [
  'host.info', 'vm.info', 'vm.create', 'migrate.reserve', 'migrate.release', 'peer.hello', 'peer.sync', 'peer.verify', 'peer.activate', 'peer.abort',
  'cold.begin', 'cold.chunk', 'cold.finish', 'peer.settle', 'peer.holds', 'peer.forget', 'nope', '',
];

function randomValue(random: ReturnType<typeof generator>, depth = 0): unknown {
  switch (random.int(depth > 2 ? 6 : 9)) {
    case 0: return random.next() - 2 ** 31;
    case 1: return random.pick([0, -1, 2 ** 53, Number.NaN, Infinity, 1e308, 0.5]);
    case 2: return random.pick(['', 'web1', 'x'.repeat(300), '../../etc', '../../victim', '/tmp', 'a/b', 'pattern', '\u0000', 'FERRY', 'config.json', 'disk0.img', 'ws://127.0.0.1:1', '0b9c2d4e-8f1a-4c3b-9d2e-7a6b5c4d3e2f']);
    case 3: return random.pick([true, false, null]);
    case 4: return Buffer.alloc(random.int(64), random.int(256));
    case 5: return undefined;
    case 6: return Array.from({ length: random.int(4) }, () => randomValue(random, depth + 1));
    default: {
      const keys = [
        'name', 'memoryBytes', 'workload', 'kind', 'rate', 'wssPages', 'seed', 'migrationId', 'registers', 'x', 'n', 'mode', '__proto__', 'constructor',
        'file', 'offset', 'data', 'xxh64', 'manifest', 'bytes', 'epoch', 'sourceUrl', 'resume',
      ];
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
    // What a cold.begin with migrationId "../../victim" would have removed, once.
    mkdirSync(path.join(c.dir, 'victim'));
    writeFileSync(path.join(c.dir, 'victim', 'keep.txt'), 'precious');
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
        // Let the agent answer what it has read before the connection goes: wait until its replies stop coming
        // (however slow the machine), at most 10 s.
        let seen = -1;
        for (let waited = 0; seen !== replies && waited < 10_000; waited += 200) {
          seen = replies;
          await delay(200);
        }
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
    expect(readFileSync(path.join(c.dir, 'victim', 'keep.txt'), 'utf8')).toBe('precious');
  });
});

/** Every path under `root`, with sizes, except under `skip`: what a test compares to see nothing was touched. */
function tree(root: string, skip: string): string[] {
  const found: string[] = [];
  const walk = (folder: string): void => {
    for (const entry of readdirSync(folder, { withFileTypes: true })) {
      const full = path.join(folder, entry.name);
      if (full === skip || full.startsWith(`${skip}${path.sep}`)) continue;
      if (entry.isDirectory()) walk(full);
      else found.push(`${path.relative(root, full)} ${statSync(full).size}`);
    }
  };
  walk(root);
  return found.sort();
}

describe('names from the network never become paths outside the datastore', () => {
  it('refuses traversal in cold-migration and settlement requests with FERRY_ERR_BAD_INPUT, and touches nothing outside staging', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    const datastore = path.join(c.dir, 'host-a');
    // Folders a traversal would reach: beside the datastore, and inside it next to staging.
    for (const victim of [path.join(c.dir, 'victim'), path.join(datastore, 'victim')]) {
      mkdirSync(victim, { recursive: true });
      writeFileSync(path.join(victim, 'keep.txt'), 'precious');
    }
    const before = tree(c.dir, path.join(datastore, 'staging'));
    const peer = await dialAgent({ url: c.agent('host-a').url, path: '/peer', token: c.token }, peerOps);
    const codeOf = async (op: string, body: unknown): Promise<string> => {
      try {
        await peer.request(op as 'cold.begin', body as never, { timeoutMs: 10_000 });
        return 'accepted';
      } catch (error) {
        return (error as { code: string }).code;
      }
    };
    const hostile = ['..', '../..', '../../victim', '../victim', path.join(c.dir, 'victim'), '/tmp', 'a/b', 'x\u0000y', '', '.'];
    const begin = (fields: Record<string, unknown>): Record<string, unknown> => ({ migrationId: randomUUID(), name: 'web9', epoch: 1, sourceUrl: 'ws://127.0.0.1:9', cpuModel: { model: 'baseline', flags: [] }, suspended: false, ...fields });
    for (const bad of hostile) {
      expect(await codeOf('cold.begin', begin({ migrationId: bad })), `migrationId ${JSON.stringify(bad)}`).toBe('FERRY_ERR_BAD_INPUT');
      expect(await codeOf('cold.begin', begin({ name: bad })), `name ${JSON.stringify(bad)}`).toBe('FERRY_ERR_BAD_INPUT');
      expect(await codeOf('peer.settle', { migrationId: bad, resume: true }), `settle ${JSON.stringify(bad)}`).toBe('FERRY_ERR_BAD_INPUT');
      expect(await codeOf('peer.holds', { migrationId: bad, name: 'web9' }), `holds ${JSON.stringify(bad)}`).toBe('FERRY_ERR_BAD_INPUT');
      expect(await codeOf('peer.forget', { name: bad, epoch: 5 }), `forget ${JSON.stringify(bad)}`).toBe('FERRY_ERR_BAD_INPUT');
    }
    for (const url of ['file:///etc/passwd', 'http://127.0.0.1:1', 'not a url', `ws://127.0.0.1:1/${'x'.repeat(3000)}`]) {
      expect(await codeOf('cold.begin', begin({ sourceUrl: url })), `sourceUrl ${url}`).toBe('FERRY_ERR_BAD_INPUT');
    }
    // A well-formed migration, then file names that try to leave its staging folder, in chunks and in the manifest.
    expect(await codeOf('cold.begin', begin({}))).toBe('accepted');
    const data = Buffer.from('not a config');
    const chunk = (file: string): Record<string, unknown> => ({ file, offset: 0, data, xxh64: '0000000000000000' });
    for (const bad of [...hostile, '../victim/keep.txt', '../../victim/keep.txt', 'config.json/../../x']) {
      expect(await codeOf('cold.chunk', chunk(bad)), `chunk ${JSON.stringify(bad)}`).toBe('FERRY_ERR_BAD_INPUT');
      expect(await codeOf('cold.finish', { manifest: [{ file: bad, bytes: 0, xxh64: '0000000000000000' }] }), `manifest ${JSON.stringify(bad)}`).toBe('FERRY_ERR_BAD_INPUT');
    }
    peer.close();
    // The agent is still up, and every file outside its staging folder is as it was.
    await vi.waitFor(async () => expect((await c.ferry('hosts', '--json')).json()[0]).toMatchObject({ reachable: true }), { timeout: 20_000, interval: 100 });
    expect(tree(c.dir, path.join(datastore, 'staging'))).toEqual(before);
    expect(readFileSync(path.join(c.dir, 'victim', 'keep.txt'), 'utf8')).toBe('precious');
  });
});

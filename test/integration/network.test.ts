/**
 * The guest network against real agents: a VM's address answers the guest service protocol (DESIGN.md), moves with
 * the VM, loses no datagram in the switchover, stays where it was when a migration rolls back, and survives fuzz.
 *
 * One cluster for the file, three agents: host-a delays its first stop-and-copy by 3 s (time for datagrams to reach
 * it after the pause: they must be forwarded), host-b drops its first page stream at stop-and-copy (after the pause:
 * a rollback), host-c has no faults. Addresses are drawn at random in 127.0.0.0/8 so that runs side by side do not meet.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvTable } from '../../agent/vm/net/kv-table.js';
import { spawnFerry, startCluster, type TestCluster } from '../harness.js';
import { guestClient, steadyPings, type GuestClient } from '../udp-client.js';

let cluster: TestCluster;
const clients: GuestClient[] = [];

beforeAll(async () => {
  cluster = await startCluster([
    { name: 'host-a', env: { FERRY_FAULTS: 'delay@stop-and-copy' } },
    { name: 'host-b', env: { FERRY_FAULTS: 'drop@stop-and-copy' } },
    { name: 'host-c' },
    // Damages page 0 (the device's rings, written by every kv guest) the first time it arrives: a switchover that fails.
    { name: 'host-d', env: { FERRY_FAULTS: 'corrupt-page:0' } },
  ]);
}, 60_000);
afterAll(async () => {
  for (const client of clients) client.close();
  await cluster?.stop();
});

const base = `127.${101 + Math.floor(Math.random() * 100)}.${Math.floor(Math.random() * 256)}`;
let nextHost = 10 + Math.floor(Math.random() * 100);
const freshIp = (): string => `${base}.${nextHost++}`;

async function client(address: string): Promise<GuestClient> {
  const made = await guestClient(address);
  clients.push(made);
  return made;
}

async function createKv(name: string, host: string, ip: string, memory = '32MiB'): Promise<string> {
  const created = await cluster.ferry('vm', 'create', name, '--on', host, '--memory', memory, '--workload', 'kv', '--ip', ip, '--json');
  expect(created.code, created.stderr).toBe(0);
  const info = created.json<{ address: string }>();
  expect(info.address).toBe(`${ip}:7777`);
  return info.address;
}

/** The agents' processes that have a UDP socket bound to `address`, by the OS's own account. */
function boundBy(address: string): string[] {
  const pids = new Map([...cluster.agents.values()].map((agent) => [agent.pid, agent.name]));
  const out = execFileSync('ss', ['-H', '-u', '-a', '-n', '-p', 'src', address], { encoding: 'utf8' });
  return [...out.matchAll(/pid=(\d+)/g)].map((match) => pids.get(Number(match[1])) ?? `pid ${match[1]}`);
}

const validReply = /^\d{1,20} (PONG|OK|NOTFOUND|VALUE [!-~]{1,200}|ERROR (badverb|badkey|badvalue|full|toolong))$/;

describe('guest network', () => {
  it('serves PING and the kv protocol from a real agent; a pattern VM with an address answers PING only, and its memory still matches replay', async () => {
    const address = await createKv('kv1', 'host-c', freshIp());
    const guest = await client(address);
    expect(await guest.ask('1 PING')).toBe('1 PONG');
    expect(await guest.ask('2 PUT colour blue')).toBe('2 OK');
    expect(await guest.ask('3 GET colour')).toBe('3 VALUE blue');
    expect(await guest.ask('4 DEL colour')).toBe('4 OK');
    expect(await guest.ask('5 GET colour')).toBe('5 NOTFOUND');
    expect(await guest.ask('6 FLY away')).toBe('6 ERROR badverb');

    const patternIp = freshIp();
    const pattern = await cluster.ferry('vm', 'create', 'pat1', '--on', 'host-c', '--memory', '16MiB', '--rate', '5000', '--seed', '9', '--ip', patternIp, '--json');
    expect(pattern.code, pattern.stderr).toBe(0);
    const patternGuest = await client(`${patternIp}:7777`);
    expect(await patternGuest.ask('7 PING')).toBe('7 PONG');
    expect(await patternGuest.ask('8 GET colour')).toBe('8 ERROR badverb');
    const checked = await cluster.ferry('vm', 'check', 'pat1', '--json');
    expect(checked.code, checked.stdout + checked.stderr).toBe(0);
    expect((await cluster.ferry('vm', 'destroy', 'pat1')).code).toBe(0);

    // What cannot be made is refused, with the reason.
    const noAddress = await cluster.ferry('vm', 'create', 'kv0', '--on', 'host-c', '--memory', '16MiB', '--workload', 'kv');
    expect(noAddress.code).not.toBe(0);
    expect(noAddress.stderr).toMatch(/needs an address/);
    const overlap = await cluster.ferry('vm', 'create', 'kv0', '--on', 'host-c', '--memory', '16MiB', '--wss', '16MiB', '--workload', 'kv', '--ip', freshIp());
    expect(overlap.code).not.toBe(0);
    expect(overlap.stderr).toMatch(/reaches into the network device/);
  }, 60_000);

  it('answers fuzzed datagrams with ERROR where they carry an id and not at all otherwise; the guest still serves and its table is intact', async () => {
    const guest = await client((await cluster.ferry('vm', 'info', 'kv1', '--json')).json<{ address: string }>().address);
    const keys = 200;
    await guest.send(Array.from({ length: keys }, (_, k) => `${100 + k} PUT key${k} value-${k}`), 300);
    let seed = 12345;
    const random = (below: number): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % below;
    };
    const verbs = ['PING', 'PUT', 'GET', 'DEL', 'put', 'FOO', '', 'PUTT', 'GET\n'];
    const junk = (length: number): Buffer => Buffer.from(Array.from({ length }, () => random(256)));
    const fuzz: Buffer[] = [];
    for (let i = 0; i < 1500; i++) {
      const id = String(10_000 + i);
      switch (random(6)) {
        case 0: fuzz.push(junk(random(1600))); break; // garbage, some of it longer than a ring slot
        case 1: fuzz.push(Buffer.concat([Buffer.from(`${id} `), junk(random(700))])); break; // an id, then garbage
        case 2: fuzz.push(Buffer.from(`${id} ${verbs[random(verbs.length)]} ${'k'.repeat(random(80))}${random(2) ? '/' : ''} ${'v'.repeat(random(230))}`)); break;
        case 3: fuzz.push(Buffer.from(`${id} PUT ${'x'.repeat(1 + random(70))} ${'y'.repeat(random(600))}`)); break; // too long, bad key, bad value
        case 4: fuzz.push(Buffer.from(`${'9'.repeat(15 + random(10))} PING`)); break; // ids too long to be ids
        default: fuzz.push(Buffer.from(`${id}  ${verbs[random(verbs.length)]}`)); break; // two spaces
      }
    }
    const fuzzReplies = await guest.send(fuzz, 1000);
    for (const reply of fuzzReplies.values()) expect(reply).toMatch(validReply);
    // Exactly the datagrams that start with an id (1-20 digits, then a space or the end) are answered.
    const withId = new Set(fuzz.map((datagram) => /^(\d{1,20})(?: |$)/.exec(datagram.toString('latin1'))?.[1]).filter((id): id is string => id !== undefined));
    expect(new Set(fuzzReplies.keys())).toEqual(withId);
    expect(withId.size).toBeGreaterThan(500);

    expect(await guest.ask('99 PING')).toBe('99 PONG');
    const readBack = await guest.send(Array.from({ length: keys }, (_, k) => `${1000 + k} GET key${k}`), 500);
    for (let k = 0; k < keys; k++) expect(readBack.get(String(1000 + k))).toBe(`${1000 + k} VALUE value-${k}`);

    // The table's own invariants, checked on a dump of guest memory (a second route, not through the guest).
    const file = path.join(cluster.dir, 'kv1.bin');
    const dumped = await cluster.ferry('vm', 'dump', 'kv1', '--out', file, '--json');
    expect(dumped.code, dumped.stderr).toBe(0);
    const image = readFileSync(file);
    const wssPages = dumped.json<{ workload: { wssPages: number } }>().workload.wssPages;
    const table = new KvTable(image.buffer.slice(image.byteOffset, image.byteOffset + image.byteLength), wssPages, { mark: () => undefined });
    const checked = table.check();
    expect(checked.ok, JSON.stringify(checked)).toBe(true);
    expect(checked.live).toBeGreaterThanOrEqual(keys);
  }, 60_000);

  it('keeps its table and its address across a suspend and resume', async () => {
    const address = (await cluster.ferry('vm', 'info', 'kv1', '--json')).json<{ address: string }>().address;
    const guest = await client(address);
    expect((await cluster.ferry('vm', 'suspend', 'kv1')).code).toBe(0);
    expect((await guest.send(['1 PING'], 200)).size).toBe(0); // nothing serves it while it is on disk
    const started = await cluster.ferry('vm', 'start', 'kv1', '--json');
    expect(started.code, started.stderr).toBe(0);
    expect(started.json<{ address: string }>().address).toBe(address);
    expect(await guest.ask('2 GET key7')).toBe('2 VALUE value-7');
  }, 60_000);

  it('forwards the datagrams that reach the source during the switchover, answers every one, and serves the address from the new host only', async () => {
    const address = await createKv('kv2', 'host-a', freshIp());
    const guest = await client(address);
    expect(await guest.ask('1 PUT before move')).toBe('1 OK');
    const pings = steadyPings(guest, 200);
    await delay(300);
    // host-a holds stop-and-copy for 3 s with the guest paused: what arrives meanwhile is kept, then forwarded.
    const migrated = await cluster.ferry('migrate', 'kv2', '--to', 'host-c', '--json');
    await delay(300);
    const { sent, answered, missing } = await pings.stop();
    expect(migrated.code, migrated.stderr).toBe(0);
    const report = migrated.json<{ outcome: string; downtimeMs: number; network: { address: string; servingAfterPauseMs: number; forwarded: number } }>();
    expect(report.outcome).toBe('committed');
    expect(report.network.address).toBe(address);
    expect(report.network.forwarded).toBeGreaterThan(0);
    expect(report.network.servingAfterPauseMs).toBeGreaterThan(0);
    expect(report.network.servingAfterPauseMs).toBeLessThanOrEqual(report.downtimeMs);
    // Each PING was sent once, never retried: every one answered means none was lost.
    expect(missing).toEqual([]);
    expect(answered).toBe(sent);

    expect(boundBy(address)).toEqual(['host-c']);
    expect(await guest.ask('2 GET before')).toBe('2 VALUE move');
  }, 60_000);

  it('keeps serving from the source when a migration rolls back after the pause, losing nothing', async () => {
    const address = await createKv('kv3', 'host-b', freshIp());
    const guest = await client(address);
    expect(await guest.ask('1 PUT stays here')).toBe('1 OK');
    const pings = steadyPings(guest, 200);
    await delay(300);
    const migrated = await cluster.ferry('migrate', 'kv3', '--to', 'host-c', '--json');
    await delay(300);
    const { sent, answered, missing } = await pings.stop();
    expect(migrated.json<{ outcome: string }>().outcome).toBe('rolled-back');
    expect(missing).toEqual([]);
    expect(answered).toBe(sent);
    expect(boundBy(address)).toEqual(['host-b']);
    expect(await guest.ask('2 GET stays')).toBe('2 VALUE here');
    expect((await cluster.ferry('vm', 'info', 'kv3', '--json')).json<{ host: string }>().host).toBe('host-b');
  }, 60_000);

  it('serves its address from the source again when a switchover finds the images differ and the migration rolls back', async () => {
    const address = await createKv('kv7', 'host-c', freshIp());
    const guest = await client(address);
    expect(await guest.ask('1 PUT survives mismatch')).toBe('1 OK');
    const migrated = await cluster.ferry('migrate', 'kv7', '--to', 'host-d', '--json', '--no-forecast');
    expect(migrated.code).not.toBe(0);
    expect(migrated.json<{ outcome: string; error: { code: string } }>()).toMatchObject({ outcome: 'rolled-back', error: { code: 'FERRY_ERR_CHECKSUM_MISMATCH' } });
    // The datagrams forwarded ahead of the switchover are lost with the destination's image; the guest answers
    // requests sent now, from the source, its table intact.
    expect(boundBy(address)).toEqual(['host-c']);
    expect(await guest.ask('2 GET survives')).toBe('2 VALUE mismatch');
    expect(await guest.ask('3 PING')).toBe('3 PONG');
    expect((await cluster.ferry('vm', 'info', 'kv7', '--json')).json<{ host: string; state: string }>()).toMatchObject({ host: 'host-c', state: 'running' });
  }, 60_000);

  it('answers, from the destination, the requests that sat in the RX ring when the guest was paused', async () => {
    const address = await createKv('kv4', 'host-c', freshIp());
    const guest = await client(address);
    expect((await cluster.ferry('vm', 'pause', 'kv4')).code).toBe(0);
    // Sent once each, to a paused guest: they wait in its RX ring, in guest memory.
    const waiting = Array.from({ length: 20 }, (_, k) => `${500 + k} PUT ring${k} waited-${k}`);
    expect((await guest.send(waiting, 300)).size).toBe(0);
    const migrated = await cluster.ferry('migrate', 'kv4', '--to', 'host-a', '--json');
    expect(migrated.code, migrated.stderr).toBe(0);
    expect(boundBy(address)).toEqual(['host-a']); // the source no longer holds the address
    const before = guest.replies.length;
    expect((await cluster.ferry('vm', 'resume', 'kv4')).code).toBe(0);
    await delay(300);
    expect(guest.replies.slice(before).sort()).toEqual(Array.from({ length: 20 }, (_, k) => `${500 + k} OK`).sort());
    expect(await guest.ask('600 GET ring19')).toBe('600 VALUE waited-19');
  }, 60_000);

  it('a probe across a migration sees every request answered and every acknowledged write read back', async () => {
    const probe = spawnFerry(['--cluster', cluster.clusterFile, 'vm', 'probe', 'kv2', '--rate', '500', '--duration', '3s', '--json'], { FERRY_TOKEN: cluster.token });
    let output = '';
    probe.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    const exited = new Promise<number | null>((resolve) => probe.on('exit', resolve));
    await delay(1200);
    const migrated = await cluster.ferry('migrate', 'kv2', '--to', 'host-b', '--json'); // host-b's drop fault is spent
    expect(migrated.code, migrated.stderr).toBe(0);
    expect(await exited).toBe(0);
    const result = JSON.parse(output) as { sent: number; answered: number; unanswered: number; writes: { checked: number; lost: number } };
    expect(result.sent).toBeGreaterThan(1000);
    expect(result.unanswered).toBe(0);
    expect(result.answered).toBe(result.sent);
    expect(result.writes.checked).toBeGreaterThan(0);
    expect(result.writes.lost).toBe(0);
  }, 60_000);
});

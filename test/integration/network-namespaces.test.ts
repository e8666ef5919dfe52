/**
 * Namespaces mode on a real layer-2 segment (agent/vm/net/namespace.ts): two agents in their own network namespaces
 * on one Linux bridge, a client in a third (coordinator/bench/bridge.ts). The VM's IP is on the source's interface,
 * leaves it at the pause, lands on the destination's at activation, and the destination tells the segment with
 * gratuitous ARP; a rolled-back migration puts it back on the source. A real client (`ferry vm probe`, run in the
 * client namespace) sends through all of it and must lose nothing.
 *
 * The client's neighbour entries are kept REACHABLE for an hour (base_reachable_time_ms), so the client never asks
 * ARP again on its own, and the agents' interfaces ask ARP from their own address (arp_announce=2), so a reply the new
 * host sends from the VM's address cannot teach the client either: after a migration the client can only reach the
 * new host because the new host announced itself.
 *
 * Needs root (namespaces, addresses) and arping (iputils-arping), as CI has; skipped when not root.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { buildBridge, type Bridge } from '../../coordinator/bench/bridge.js';
import { startLocalAgent, type LocalAgent } from '../../coordinator/local-agent.js';
import type { ProbeResult } from '../../coordinator/probe.js';
import { patiently, runFerry, type CliResult } from '../harness.js';

const asRoot = process.getuid?.() === 0;
const ferryEntry = fileURLToPath(new URL('../../dist/coordinator/main.js', import.meta.url));

let bridge: Bridge | undefined;
let dir: string;
const agents: LocalAgent[] = [];
const token = randomBytes(24).toString('hex');
const probes: ChildProcess[] = [];

const ferry = (...args: string[]): Promise<CliResult> => runFerry(['--cluster', path.join(dir, 'cluster.json'), ...args], { FERRY_TOKEN: token });

function sh(args: string[]): string {
  return execFileSync(args[0]!, args.slice(1), { encoding: 'utf8' });
}

function macOf(namespace: string, device: string): string {
  return /link\/ether ([0-9a-f:]{17})/.exec(sh(['ip', '-n', namespace, 'link', 'show', device]))![1]!;
}

/** The MAC the client would send the VM's datagrams to now. */
function clientNeighbour(ip: string): string | undefined {
  return /lladdr ([0-9a-f:]{17})/.exec(sh(['ip', '-n', bridge!.namespaces.client, 'neigh', 'show', ip]))?.[1];
}

function holds(namespace: string, device: string, ip: string): boolean {
  return sh(['ip', '-n', namespace, '-4', 'addr', 'show', 'dev', device]).includes(` ${ip}/32 `);
}

/** `ferry vm probe` in the client namespace, resolving with its JSON result. */
function probe(address: string, durationS: number): Promise<ProbeResult> {
  const child = spawn('ip', ['netns', 'exec', bridge!.namespaces.client, process.execPath, ferryEntry, 'vm', 'probe', address, '--rate', '500', '--duration', `${durationS}s`, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  probes.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve, reject) => {
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(stdout) as ProbeResult) : reject(new Error(`probe exited ${code}: ${stderr}`))));
  });
}

beforeAll(async () => {
  if (!asRoot) return;
  dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-netns-'));
  bridge = buildBridge({ prefix: `ft${randomBytes(2).toString('hex')}`, octet: 150 + Math.floor(Math.random() * 50) });
  const clientDevice = sh(['ip', '-n', bridge.namespaces.client, '-o', 'link', 'show']).match(/\d+: (\S+?)@/)![1]!;
  sh(['ip', 'netns', 'exec', bridge.namespaces.client, 'sysctl', '-q', '-w', `net.ipv4.neigh.${clientDevice}.base_reachable_time_ms=3600000`]);
  const sides = [
    { name: 'host-a', netns: bridge.namespaces.a, device: bridge.devices.a, control: bridge.control.a, data: bridge.data.a, env: { FERRY_FAULTS: 'drop@stop-and-copy' } },
    { name: 'host-b', netns: bridge.namespaces.b, device: bridge.devices.b, control: bridge.control.b, data: bridge.data.b, env: {} as Record<string, string> },
  ];
  for (const side of sides) {
    sh(['ip', 'netns', 'exec', side.netns, 'sysctl', '-q', '-w', `net.ipv4.conf.${side.device}.arp_announce=2`]);
    const agent = await startLocalAgent({
      name: side.name, host: '0.0.0.0', netns: side.netns, datastore: path.join(dir, side.name), logLevel: 'warn', token, env: side.env,
      extraArgs: ['--net-mode', 'namespaces', '--net-device', side.device],
    });
    agents.push(agent);
    const port = new URL(agent.url).port;
    const added = await ferry('hosts', 'add', side.name, `ws://${side.control}:${port}`, '--migration-url', `ws://${side.data}:${port}`);
    expect(added.code, added.stderr).toBe(0);
  }
}, 60_000);

afterAll(async () => {
  for (const child of probes) child.kill('SIGKILL');
  await Promise.all(agents.map((agent) => agent.stop(2000)));
  bridge?.teardown();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe.skipIf(!asRoot)('guest network, namespaces mode', () => {
  it('moves the address between hosts on a bridge, announces it with gratuitous ARP, keeps it on a rollback, and the client loses nothing', async () => {
    const { namespaces, devices } = bridge!;
    const ip = bridge!.vmAddress(0);
    const created = await ferry('vm', 'create', 'kv1', '--on', 'host-a', '--memory', '32MiB', '--workload', 'kv', '--ip', ip, '--json');
    expect(created.code, created.stderr).toBe(0);
    expect(created.json<{ address: string }>().address).toBe(`${ip}:7777`);
    expect(holds(namespaces.a, devices.a, ip)).toBe(true);
    expect(holds(namespaces.b, devices.b, ip)).toBe(false);
    const hosts = await ferry('hosts', '--json');
    expect(hosts.json<{ addressMode?: { name: string; device?: string } }[]>().map((host) => host.addressMode)).toEqual([
      { name: 'namespaces', device: devices.a }, { name: 'namespaces', device: devices.b },
    ]);

    const client = probe(`${ip}:7777`, 9);
    const macA = macOf(namespaces.a, devices.a);
    const macB = macOf(namespaces.b, devices.b);
    await vi.waitFor(() => expect(clientNeighbour(ip)).toBe(macA), patiently); // the client has found host-a
    await delay(500);

    // host-a drops its page stream at its first stop-and-copy, after the pause took the address off its interface:
    // the rollback must put it back, and the client must find the VM where it was.
    const failed = await ferry('migrate', 'kv1', '--to', 'host-b', '--json');
    expect(failed.code).not.toBe(0);
    expect(failed.json<{ outcome: string }>().outcome).toBe('rolled-back');
    expect(holds(namespaces.a, devices.a, ip)).toBe(true);
    expect(holds(namespaces.b, devices.b, ip)).toBe(false);
    await delay(1000);

    const moved = await ferry('migrate', 'kv1', '--to', 'host-b', '--json');
    expect(moved.code, moved.stderr).toBe(0);
    const report = moved.json<{ outcome: string; network: { address: string; servingAfterPauseMs?: number; announcements: number } }>();
    expect(report.outcome).toBe('committed');
    expect(report.network.address).toBe(`${ip}:7777`);
    expect(report.network.announcements).toBe(5);
    expect(report.network.servingAfterPauseMs).toBeGreaterThan(0);
    expect(holds(namespaces.b, devices.b, ip)).toBe(true);
    expect(holds(namespaces.a, devices.a, ip)).toBe(false);
    // Only the announcement can have told the client: its entry stays REACHABLE without asking again.
    await vi.waitFor(() => expect(clientNeighbour(ip)).toBe(macB), patiently);

    const result = await client;
    expect(result.answered).toBeGreaterThan(0);
    expect(result.unanswered).toBe(0);
    expect(result.writes.lost).toBe(0);
    expect(result.writes.checked).toBeGreaterThan(0);
  }, 90_000);
});

/**
 * The migration logic over the in-memory twin of the network (test/memory-network.ts): real agents, real VMs and
 * vCPU threads, the real coordinator driver, in-memory sockets. Guest memory is checked by replay.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { DEFAULT_MAX_DOWNTIME_MS } from '../../shared/constants.js';
import type { MigrationEvent, MigrationOptions } from '../../shared/protocol.js';
import { migrateLive } from '../../coordinator/migrate.js';
import { decodeMessage } from '../../shared/rpc.js';
import { isPageHeader } from '../../shared/page-frame.js';
import { createMemoryNetwork, type MemoryNetwork } from '../memory-network.js';
import { checkPatternImage } from '../replay.js';

const MiB = 1024 * 1024;
const defaults: MigrationOptions = { maxDowntimeMs: DEFAULT_MAX_DOWNTIME_MS, maxBandwidthBytesPerSec: 0, maxRounds: 30, verify: 'pages', autoConverge: false };

let network: MemoryNetwork | undefined;
afterEach(async () => {
  await network?.shutdown();
  network = undefined;
});

async function createVm(net: MemoryNetwork, host: string, name: string, memoryBytes: number, rate: number, wssPages: number, seed: number, filled = false): Promise<void> {
  const client = await net.connect(net.cluster.hosts.find((entry) => entry.name === host)!);
  try {
    await client.request('vm.create', { name, memoryBytes, workload: { kind: 'pattern', rate, wssPages, seed, ...(filled ? { filled } : {}) } });
  } finally {
    client.close();
  }
}

function expectReplayMatches(net: MemoryNetwork, host: string, name: string): void {
  const vm = net.agents.get(host)!.catalog.machine(name);
  const { x, n } = vm.registers();
  const result = checkPatternImage(vm.memory, { seed: vm.workload.seed, wssPages: vm.workload.wssPages, x, n, filled: vm.workload.filled === true });
  expect(result.badPages).toEqual([]);
  expect(result.ok).toBe(true);
}

/** How these tests wait for the agents to settle something on their own. */
const patiently = { timeout: 10_000, interval: 50 } as const;

describe('migration over the in-memory network', () => {
  it('commits a running pattern VM, hands over its registers, and frees the source', async () => {
    network = await createMemoryNetwork([{ name: 'host-a' }, { name: 'host-b' }]);
    await createVm(network, 'host-a', 'web1', 16 * MiB, 20_000, 2048, 7);
    await delay(200);
    const events: MigrationEvent[] = [];
    const collections = [vi.spyOn(network.agents.get('host-a')!, 'collectGarbage'), vi.spyOn(network.agents.get('host-b')!, 'collectGarbage')];
    const report = await migrateLive(network.cluster, { vm: 'web1', to: 'host-b', options: { ...defaults, maxBandwidthBytesPerSec: 64 * MiB } }, { connect: network.connect, onEvent: (event) => events.push(event) });
    expect(report.error).toBeUndefined();
    expect(report.outcome).toBe('committed');
    // Both sides collected their garbage once, before the pause (never inside it).
    for (const collected of collections) expect(collected).toHaveBeenCalledTimes(1);
    expect(report.rounds.length).toBeGreaterThanOrEqual(2);
    expect(report.verification?.match).toBe(true);
    expect(events.filter((event) => event.kind === 'stage').map((event) => (event as { stage: number }).stage)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(events.filter((event) => event.kind === 'round')).toHaveLength(report.rounds.length);

    expect(network.agents.get('host-a')!.catalog.machines()).toEqual([]);
    const moved = network.agents.get('host-b')!.catalog.machine('web1');
    expect(moved.state).toBe('running');
    expect(moved.registers().n).toBeGreaterThanOrEqual(report.cpu!.n);
    await delay(100);
    expect(moved.registers().n).toBeGreaterThan(report.cpu!.n);
    await moved.pause();
    expectReplayMatches(network, 'host-b', 'web1');
  });

  it('rolls back to the source when the page stream is cut in round 1', async () => {
    network = await createMemoryNetwork([{ name: 'host-a' }, { name: 'host-b' }]);
    await createVm(network, 'host-a', 'web1', 32 * MiB, 10_000, 4096, 3);
    const net = network;
    // 32 MiB at 16 MiB/s: round 1 takes two seconds; cut the link after a quarter of it.
    const migrating = migrateLive(net.cluster, { vm: 'web1', to: 'host-b', options: { ...defaults, maxBandwidthBytesPerSec: 16 * MiB } }, { connect: net.connect });
    await delay(500);
    expect(net.peerLinks).toHaveLength(1);
    net.peerLinks[0]![0]!.close();
    const report = await migrating;
    expect(report.outcome).toBe('rolled-back');
    expect(report.error?.code).toMatch(/FERRY_ERR_(CONNECTION_LOST|CANCELLED)/);

    const source = net.agents.get('host-a')!.catalog.machine('web1');
    expect(source.state).toBe('running');
    expect(net.agents.get('host-b')!.catalog.machines()).toEqual([]);
    const before = source.registers().n;
    await delay(100);
    expect(source.registers().n).toBeGreaterThan(before);
    await source.pause();
    expectReplayMatches(net, 'host-a', 'web1');
  });

  it('ends pre-copy at the round cap when the guest dirties memory faster than rounds can send it, and still commits', async () => {
    network = await createMemoryNetwork([{ name: 'host-a' }, { name: 'host-b' }]);
    // A 4 MiB working set rewritten 50,000 times a second against a 8 MiB/s link never shrinks below 50 pages.
    await createVm(network, 'host-a', 'hot1', 8 * MiB, 50_000, 1024, 5);
    const collected = vi.spyOn(network.agents.get('host-a')!, 'collectGarbage');
    const report = await migrateLive(network.cluster, { vm: 'hot1', to: 'host-b', options: { ...defaults, maxBandwidthBytesPerSec: 8 * MiB, maxRounds: 3, maxDowntimeMs: 1 } }, { connect: network.connect });
    expect(report.outcome).toBe('committed');
    expect(report.stopReason).toBe('max-rounds');
    // A cap is not extended: no collection before the pause, and so no round after it.
    expect(collected).not.toHaveBeenCalled();
    expect(report.rounds).toHaveLength(3);
    expect(report.downtimeLimitExceededMs).toBeGreaterThan(0);
    const moved = network.agents.get('host-b')!.catalog.machine('hot1');
    await moved.pause();
    expectReplayMatches(network, 'host-b', 'hot1');
  });

  it('does not collect (nor add a round) past the round cap when few-dirty-pages ends pre-copy on the last round it allows', async () => {
    network = await createMemoryNetwork([{ name: 'host-a' }, { name: 'host-b' }]);
    // An idle guest: round 1 leaves no page dirty, so few-dirty-pages ends pre-copy, on the one round --max-rounds allows.
    await createVm(network, 'host-a', 'idle1', 8 * MiB, 0, 1024, 5);
    const collected = vi.spyOn(network.agents.get('host-a')!, 'collectGarbage');
    const report = await migrateLive(network.cluster, { vm: 'idle1', to: 'host-b', options: { ...defaults, maxRounds: 1 } }, { connect: network.connect });
    expect(report.outcome).toBe('committed');
    expect(report.stopReason).toBe('few-dirty-pages');
    expect(collected).not.toHaveBeenCalled();
    expect(report.rounds).toHaveLength(1);
  });

  it('refuses a second migration of a VM that is already migrating, and the first one commits', async () => {
    network = await createMemoryNetwork([{ name: 'host-a' }, { name: 'host-b' }, { name: 'host-c' }]);
    await createVm(network, 'host-a', 'web1', 16 * MiB, 5000, 1024, 13);
    const options = { ...defaults, maxBandwidthBytesPerSec: 32 * MiB };
    const [first, second] = await Promise.all([
      migrateLive(network.cluster, { vm: 'web1', to: 'host-b', options }, { connect: network.connect }),
      migrateLive(network.cluster, { vm: 'web1', to: 'host-c', options }, { connect: network.connect }),
    ]);
    const outcomes = [first.outcome, second.outcome].sort();
    expect(outcomes).toEqual(['committed', 'failed']);
    const refused = first.outcome === 'failed' ? first : second;
    expect(refused.error?.code).toBe('FERRY_ERR_VM_STATE');
    const holders = ['host-a', 'host-b', 'host-c'].filter((host) => network!.agents.get(host)!.catalog.has('web1'));
    expect(holders).toEqual([first.outcome === 'committed' ? 'host-b' : 'host-c']);
  });

  it('refuses a dump, pause, resume or destroy of a VM while it migrates, and serves them again after', async () => {
    network = await createMemoryNetwork([{ name: 'host-a' }, { name: 'host-b' }]);
    await createVm(network, 'host-a', 'web1', 32 * MiB, 500, 4096, 17, true);
    const net = network;
    // 32 MiB (filled: every byte travels) at 16 MiB/s: two seconds of pre-copy to knock on.
    const migrating = migrateLive(net.cluster, { vm: 'web1', to: 'host-b', options: { ...defaults, maxBandwidthBytesPerSec: 16 * MiB } }, { connect: net.connect });
    await delay(300);
    const client = await net.connect(net.cluster.hosts[0]!);
    for (const op of ['vm.dump', 'vm.pause', 'vm.resume', 'vm.destroy'] as const) {
      await expect(client.request(op, { name: 'web1' })).rejects.toMatchObject({ code: 'FERRY_ERR_VM_STATE' });
    }
    client.close();
    expect((await migrating).outcome).toBe('committed');
    const onB = await net.connect(net.cluster.hosts[1]!);
    expect((await onB.request('vm.pause', { name: 'web1' })).state).toBe('paused');
    onB.close();
    expectReplayMatches(net, 'host-b', 'web1');
  });

  it('keeps a dump and a migration started during it consistent: the dump image and the migrated guest both match replay', async () => {
    network = await createMemoryNetwork([{ name: 'host-a' }, { name: 'host-b' }]);
    await createVm(network, 'host-a', 'web1', 128 * MiB, 5000, 4096, 29);
    const net = network;
    const client = await net.connect(net.cluster.hosts[0]!);
    const image = new Uint8Array(128 * MiB);
    let migrating: ReturnType<typeof migrateLive> | undefined;
    const dumped = await client.request('vm.dump', { name: 'web1' }, {
      onEvent: (body) => {
        const { offset, data } = body as { offset: number; data: Uint8Array };
        image.set(data, offset);
        migrating ??= migrateLive(net.cluster, { vm: 'web1', to: 'host-b', options: defaults }, { connect: net.connect });
      },
    });
    client.close();
    const report = await migrating!;
    // Whichever came second was refused, or ran after the first had finished; never both at once.
    if (report.outcome !== 'committed') expect(report.error?.code).toBe('FERRY_ERR_VM_STATE');
    const { seed, wssPages } = dumped.info.workload;
    expect(checkPatternImage(image, { seed, wssPages, ...dumped.info.cpu }).ok).toBe(true);
    const host = report.outcome === 'committed' ? 'host-b' : 'host-a';
    const vm = net.agents.get(host)!.catalog.machine('web1');
    expect(vm.state).toBe('running');
    await vm.pause();
    expectReplayMatches(net, host, 'web1');
  });

  /** True for a control message (not page data) that satisfies `test`. */
  const message = (data: Buffer, test: (envelope: ReturnType<typeof decodeMessage>) => boolean): boolean => {
    if (isPageHeader(data) || data.length > 64 * 1024) return false;
    try {
      return test(decodeMessage(data));
    } catch {
      return false;
    }
  };

  // --verify full verifies and activates in two round trips (source.ts); the default, a switchover, in one.
  const twoSteps: MigrationOptions = { ...defaults, verify: 'full' };

  it('settles a commit whose activation request was lost (two round trips): the destination activates, the source frees its copy', async () => {
    network = await createMemoryNetwork([{ name: 'host-a' }, { name: 'host-b' }]);
    const net = network;
    await createVm(net, 'host-a', 'web1', 8 * MiB, 2000, 512, 19);
    net.peerCut = (fromDestination, data) => !fromDestination && message(data, (envelope) => envelope.t === 'req' && envelope.op === 'peer.activate');
    const report = await migrateLive(net.cluster, { vm: 'web1', to: 'host-b', options: twoSteps }, { connect: net.connect });
    net.peerCut = undefined;
    expect(report.outcome).toBe('failed');
    expect(report.verification?.match).toBe(true);
    expect(report.error?.message).toContain('committed');
    // Never two running copies meanwhile; then the agents settle it on their own.
    const source = net.agents.get('host-a')!.catalog.machine('web1');
    expect(source.vcpuRunning).toBe(false);
    await vi.waitFor(() => expect(net.agents.get('host-a')!.catalog.has('web1'), 'web1 still on host-a').toBe(false), patiently);
    const destination = net.agents.get('host-b')!.catalog.machine('web1');
    expect(destination.state).toBe('running');
    expect(destination.epoch).toBe(2);
    await destination.pause();
    expectReplayMatches(net, 'host-b', 'web1');
  });

  it('settles a commit whose activation reply was lost: one copy runs throughout, the source frees its copy', async () => {
    network = await createMemoryNetwork([{ name: 'host-a' }, { name: 'host-b' }]);
    const net = network;
    await createVm(net, 'host-a', 'web1', 8 * MiB, 2000, 512, 23);
    net.peerCut = (fromDestination, data) => fromDestination && message(data, (envelope) => envelope.t === 'res' && envelope.ok && typeof (envelope.body as { guestBlackoutMs?: unknown }).guestBlackoutMs === 'number');
    const report = await migrateLive(net.cluster, { vm: 'web1', to: 'host-b', options: defaults }, { connect: net.connect });
    net.peerCut = undefined;
    expect(report.outcome).toBe('failed');
    const destination = net.agents.get('host-b')!.catalog.machine('web1');
    expect(destination.vcpuRunning).toBe(true);
    expect(net.agents.get('host-a')!.catalog.machine('web1').vcpuRunning).toBe(false);
    await vi.waitFor(() => expect(net.agents.get('host-a')!.catalog.has('web1'), 'web1 still on host-a').toBe(false), patiently);
    expect(destination.state).toBe('running');
  });

  it('keeps the source suspended when a switchover request is lost, then resumes it once settlement finds the destination never ran the VM', async () => {
    network = await createMemoryNetwork([{ name: 'host-a' }, { name: 'host-b' }]);
    const net = network;
    await createVm(net, 'host-a', 'web1', 8 * MiB, 2000, 512, 29);
    // The request leaves the source (committed from then on) and never arrives; the link breaks with it.
    net.peerCut = (fromDestination, data) => !fromDestination && message(data, (envelope) => envelope.t === 'req' && envelope.op === 'peer.switchover');
    const report = await migrateLive(net.cluster, { vm: 'web1', to: 'host-b', options: defaults }, { connect: net.connect });
    net.peerCut = undefined;
    expect(report.outcome).toBe('failed');
    expect(report.error?.message).toContain('committed');
    // Settled on its own: the destination dropped its reservation when the link broke, and never ran the VM.
    const source = net.agents.get('host-a')!.catalog.machine('web1');
    await vi.waitFor(() => expect(source.state, 'web1 resumed on host-a').toBe('running'), patiently);
    expect(source.epoch).toBe(1);
    expect(net.agents.get('host-b')!.catalog.has('web1')).toBe(false);
    await source.pause();
    expectReplayMatches(net, 'host-a', 'web1');
  });

  it('rolls back when a switchover finds the images differ: the destination drops its image and says so', async () => {
    network = await createMemoryNetwork([{ name: 'host-a' }, { name: 'host-b' }]);
    const net = network;
    await createVm(net, 'host-a', 'web1', 8 * MiB, 2000, 512, 31, true);
    // A page the guest never writes again (outside its 512-page working set; filled, so it travels with its bytes) is
    // damaged on arrival in round 1: the destination's digest no longer matches the source's.
    net.agents.get('host-b')!.faults.corruptPage = 2000;
    const report = await migrateLive(net.cluster, { vm: 'web1', to: 'host-b', options: defaults }, { connect: net.connect });
    expect(report.outcome).toBe('rolled-back');
    expect(report.error?.code).toBe('FERRY_ERR_CHECKSUM_MISMATCH');
    const source = net.agents.get('host-a')!.catalog.machine('web1');
    expect(source.state).toBe('running');
    expect(net.agents.get('host-b')!.catalog.has('web1')).toBe(false);
    await source.pause();
    expectReplayMatches(net, 'host-a', 'web1');
  });

  it('resumes the source copy when the destination lost the image before activating it (two round trips)', async () => {
    network = await createMemoryNetwork([{ name: 'host-a' }, { name: 'host-b' }]);
    const net = network;
    await createVm(net, 'host-a', 'web1', 8 * MiB, 2000, 512, 53);
    // Lose the activation, and every settlement attempt until the destination has lost its image too, as a
    // destination that crashed and restarted before activating would have.
    const settling = ['peer.activate', 'peer.settle', 'peer.holds'];
    net.peerCut = (_fromDestination, data) => message(data, (envelope) => envelope.t === 'req' && settling.includes(envelope.op));
    const report = await migrateLive(net.cluster, { vm: 'web1', to: 'host-b', options: twoSteps }, { connect: net.connect });
    expect(report.outcome).toBe('failed');
    const parked = net.agents.get('host-b')!.catalog.machine('web1');
    await net.agents.get('host-b')!.catalog.release(parked);
    (net.agents.get('host-b') as unknown as { incoming: Map<string, unknown> }).incoming.clear();
    net.peerCut = undefined;
    const client = await net.connect(net.cluster.hosts[0]!);
    const resolved = await client.request('vm.resolve', { name: 'web1' });
    client.close();
    expect(resolved.detail).toContain('never ran it');
    const source = net.agents.get('host-a')!.catalog.machine('web1');
    expect(source.state).toBe('running');
    expect(source.epoch).toBe(1);
    await source.pause();
    expectReplayMatches(net, 'host-a', 'web1');
  });

  it('converges with --auto-converge where the same guest otherwise runs into the round cap, its memory intact', async () => {
    network = await createMemoryNetwork([{ name: 'host-a' }, { name: 'host-b' }]);
    const net = network;
    // 50,000 page writes a second into 2 MiB (512 pages) against a 32 MiB/s link: every round leaves the whole
    // working set dirty again, and 10 ms of downtime is never enough for it.
    const options = { ...defaults, maxBandwidthBytesPerSec: 32 * MiB, maxRounds: 20, maxDowntimeMs: 10 };
    await createVm(net, 'host-a', 'hot1', 32 * MiB, 50_000, 512, 37);
    const capped = await migrateLive(net.cluster, { vm: 'hot1', to: 'host-b', options }, { connect: net.connect });
    expect(capped.outcome).toBe('committed');
    expect(capped.stopReason).toBe('max-rounds');
    expect(capped.throttlePct).toBe(0);

    const events: MigrationEvent[] = [];
    const converged = await migrateLive(net.cluster, { vm: 'hot1', to: 'host-a', options: { ...options, autoConverge: true } }, { connect: net.connect, onEvent: (event) => events.push(event) });
    expect(converged.outcome).toBe('committed');
    expect(['few-dirty-pages', 'converged-within-downtime']).toContain(converged.stopReason);
    expect(converged.rounds.length).toBeLessThan(20);
    expect(converged.throttlePct).toBeGreaterThanOrEqual(20);
    const steps = events.filter((event) => event.kind === 'throttle').map((event) => (event as { pct: number }).pct);
    expect(steps[0]).toBe(20);
    for (let i = 1; i < steps.length; i++) expect(steps[i]).toBe(Math.min(99, steps[i - 1]! + 10));
    // The throttle was the migration's: the guest runs at full rate on its new host.
    const moved = net.agents.get('host-a')!.catalog.machine('hot1');
    expect(moved.throttlePct).toBe(0);
    await moved.pause();
    expectReplayMatches(net, 'host-a', 'hot1');
  });

  it('refuses at reservation when the destination lacks memory, and the VM runs on untouched', async () => {
    network = await createMemoryNetwork([{ name: 'host-a' }, { name: 'host-b', capacityBytes: 4 * MiB }]);
    await createVm(network, 'host-a', 'web1', 8 * MiB, 1000, 512, 9);
    const report = await migrateLive(network.cluster, { vm: 'web1', to: 'host-b', options: defaults }, { connect: network.connect });
    expect(report.outcome).toBe('failed');
    expect(report.error).toMatchObject({ code: 'FERRY_ERR_CAPACITY' });
    expect(report.error!.message).toContain('host-b has 4 MiB free of 4 MiB, and web1 needs 8 MiB');
    expect(network.agents.get('host-a')!.catalog.machine('web1').state).toBe('running');
  });
});

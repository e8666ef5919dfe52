/**
 * Live migration between two real ferry-agent processes, driven by the real ferry CLI.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { expectMemoryMatchesReplay, patiently, startCluster, type TestCluster, vmInfo, waitForWrites } from '../harness.js';

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

describe('live migration between two agent processes', () => {
  it('moves a pattern VM through at least three pre-copy rounds, commits, and the guest runs on with memory that matches replay', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    const created = await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '64MiB', '--filled', '--workload', 'pattern', '--rate', '20000', '--wss', '32MiB', '--seed', '7');
    expect(created.code, created.stderr).toBe(0);
    await waitForWrites(c, 'web1', 5000);

    // The bandwidth cap makes round 1 (64 MiB, filled) take a known time (~0.3 s), so the guest dirties enough for
    // later rounds.
    const migrated = await c.ferry('migrate', 'web1', '--to', 'host-b', '--max-bandwidth', '200MiB/s', '--verify', 'full', '--json');
    expect(migrated.code, migrated.stderr).toBe(0);
    const report = migrated.json();
    expect(report).toMatchObject({ vm: 'web1', from: 'host-a', to: 'host-b', mode: 'live', outcome: 'committed', memoryBytes: 64 * 1024 * 1024 });
    expect(report.error).toBeUndefined();
    expect(report.rounds.length).toBeGreaterThanOrEqual(3);
    expect(report.rounds[0].pages).toBe(16384);
    // Filled: no page is zero, so every page of round 1 travels with its bytes.
    expect(report.rounds[0]).toMatchObject({ zeroPages: 0, bytes: 64 * 1024 * 1024 });
    for (const [i, round] of report.rounds.entries()) {
      expect(round).toMatchObject({ round: i + 1 });
      expect(Object.keys(round).sort()).toEqual(['bytes', 'dirtyPagesAfter', 'durationMs', 'pages', 'round', 'throughputBytesPerSec', 'zeroPages']);
      expect(round.bytes).toBe((round.pages - round.zeroPages) * 4096);
    }
    expect(['few-dirty-pages', 'converged-within-downtime', 'max-rounds', 'max-bytes']).toContain(report.stopReason);
    expect(report.stages.map((stage: { stage: number }) => stage.stage)).toEqual([0, 1, 2, 3, 4, 5]);
    for (const stage of report.stages) expect(stage.endMs).toBeGreaterThanOrEqual(stage.startMs);
    expect(report.downtimeMs).toBeGreaterThan(0);
    expect(report.guestBlackoutMs).toBeGreaterThan(0);
    expect(report.totalTimeMs).toBeGreaterThan(report.downtimeMs);
    expect(report.bytesSent).toBeGreaterThan(report.memoryBytes);
    expect(report.throughputBytesPerSec).toBeGreaterThan(0);
    // The destination made the VM's memory real at reservation, and says how long that took.
    expect(report.reservationPopulateMs).toBeGreaterThan(0);
    expect(report.reservationPopulateMs).toBeLessThan(report.totalTimeMs);
    expect(report.verification).toMatchObject({ mode: 'full', match: true });
    expect(report.verification.sourceDigest).toBe(report.verification.destDigest);
    expect(report.verification.sourceMemoryDigest).toBe(report.verification.destMemoryDigest);

    // The guest continues on host-b from the registers it left host-a with.
    const after = await vmInfo(c, 'web1');
    expect(after.host).toBe('host-b');
    expect(after.state).toBe('running');
    expect(after.cpu.n).toBeGreaterThanOrEqual(report.cpu.n);
    await waitForWrites(c, 'web1', after.cpu.n);

    // The source no longer lists it; exactly one copy exists.
    const listed = (await c.ferry('vm', 'list', '--json')).json<{ name: string; host: string }[]>();
    expect(listed).toEqual([{ name: 'web1', host: 'host-b', state: 'running', memoryBytes: 64 * 1024 * 1024, epoch: 2 }]);
    const hosts = (await c.ferry('hosts', '--json')).json<{ name: string; vms: string[]; freeBytes: number; capacityBytes: number }[]>();
    const hostA = hosts.find((host) => host.name === 'host-a')!;
    expect(hostA.vms).toEqual([]);
    expect(hostA.freeBytes).toBe(hostA.capacityBytes);

    await expectMemoryMatchesReplay(c, 'web1');
  });

  it('migrates back and forth, each time committing with memory that matches replay, and the host left gives the memory back', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    // 256 MiB, all of it resident from the start and none of it zero (--filled), so that the host it leaves has that
    // much to give back, and every page travels with its bytes.
    expect((await c.ferry('vm', 'create', 'db1', '--on', 'host-a', '--memory', '256MiB', '--filled', '--rate', '5000', '--wss', '8MiB', '--seed', '99')).code).toBe(0);
    const resident = async (host: string): Promise<number> => (await c.ferry('hosts', '--json')).json<{ name: string; load: { residentBytes: number } }[]>()
      .find((entry) => entry.name === host)!.load.residentBytes;
    const MiB = 1024 * 1024;
    for (const [from, to] of [['host-a', 'host-b'], ['host-b', 'host-a'], ['host-a', 'host-b']] as const) {
      const holding = await resident(from);
      expect(holding).toBeGreaterThan(256 * MiB);
      const migrated = await c.ferry('migrate', 'db1', '--to', to, '--json', '--no-forecast');
      expect(migrated.code, migrated.stderr).toBe(0);
      expect(migrated.json().outcome).toBe('committed');
      expect(migrated.json().rounds[0]).toMatchObject({ pages: 65536, zeroPages: 0, bytes: 256 * MiB });
      expect((await vmInfo(c, 'db1')).host).toBe(to);
      // The departed guest's pages go back to the OS (agent/memory-return.ts), not when some collection happens to run.
      await vi.waitFor(async () => expect(await resident(from)).toBeLessThan(holding - 192 * MiB), patiently);
    }
    await expectMemoryMatchesReplay(c, 'db1');
  });

  it('keeps a paused VM paused on the destination, its memory and registers unchanged', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'cold1', '--on', 'host-a', '--memory', '16MiB', '--rate', '5000', '--seed', '3')).code).toBe(0);
    await waitForWrites(c, 'cold1', 1000);
    const paused = (await c.ferry('vm', 'pause', 'cold1', '--json')).json<{ cpu: { n: number } }>();
    const migrated = await c.ferry('migrate', 'cold1', '--to', 'host-b', '--json');
    expect(migrated.code, migrated.stderr).toBe(0);
    // Not filled: the pages its writes have not reached are zero and go as flags, with no bytes; replay (below)
    // checks that they arrive as zeros all the same.
    const [round1] = migrated.json().rounds;
    expect(round1.zeroPages).toBeGreaterThan(0);
    expect(round1.bytes).toBe((4096 - round1.zeroPages) * 4096);
    const after = await vmInfo(c, 'cold1');
    expect(after).toMatchObject({ host: 'host-b', state: 'paused', cpu: paused.cpu });
    await expectMemoryMatchesReplay(c, 'cold1');
  });

  it('prints a readable report with the stage timeline, rounds, downtime and verification', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web2', '--on', 'host-a', '--memory', '16MiB', '--rate', '2000', '--seed', '5')).code).toBe(0);
    const migrated = await c.ferry('migrate', 'web2', '--to', 'host-b');
    expect(migrated.code, migrated.stderr).toBe(0);
    expect(migrated.stdout).toContain('live migration of web2: host-a -> host-b   COMMITTED');
    expect(migrated.stdout).toMatch(/stage timeline[\s\S]*iterative pre-copy[\s\S]*stop-and-copy[\s\S]*commitment[\s\S]*activation/);
    expect(migrated.stdout).toMatch(/the reservation made 16 MiB of memory real on host-b in [\d.]+ (µs|ms|s) \(page faults\)/);
    expect(migrated.stdout).toMatch(/downtime\s+\d/);
    expect(migrated.stdout).toMatch(/verification\s+pages: source [0-9a-f]{16}, destination [0-9a-f]{16}: match/);
    expect(migrated.stderr).toContain('stage 2: iterative pre-copy');
  });

  it('reports the downtime timeline with --trace: each side\'s marks from the pause to the guest running, in order', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web3', '--on', 'host-a', '--memory', '16MiB', '--rate', '2000', '--seed', '9')).code).toBe(0);
    await waitForWrites(c, 'web3', 500);
    const there = await c.ferry('migrate', 'web3', '--to', 'host-b', '--trace', '--json');
    expect(there.code, there.stderr).toBe(0);
    const { timeline } = there.json<{ timeline: { source: { event: string; atMs: number }[]; destination: { event: string; atMs: number }[]; sourceGc: unknown[]; destinationGc: unknown[] } }>();
    // --verify pages: verification and activation in one round trip, the switchover.
    expect(timeline.source.map((mark) => mark.event)).toEqual([
      'pause requested', 'vCPU paused', 'dirty log harvested', 'last pages sent', 'source digest done', 'switchover asked',
      'switchover answered',
    ]);
    // The pages travel on a stream of their own, so the last frame may be taken just after the switchover request
    // arrived (the destination then verifies once it is in): either way the marks come in time order.
    const destinationEvents = timeline.destination.map((mark) => mark.event);
    expect([0, 1]).toContain(destinationEvents.indexOf('last frame taken'));
    expect(destinationEvents.filter((event) => event !== 'last frame taken')).toEqual([
      'switchover received', 'registers set', 'digest done', 'digests match',
      'activation recorded', 'network attached', 'disk attached', 'vCPU resumed', 'activate reply ready',
    ]);
    // Each side's marks are on its own monotonic clock, in the order things happened there.
    for (const side of [timeline.source, timeline.destination]) {
      for (let i = 1; i < side.length; i++) expect(side[i]!.atMs).toBeGreaterThanOrEqual(side[i - 1]!.atMs);
    }
    expect(timeline.source[0]!.atMs).toBeGreaterThanOrEqual(0);
    expect(timeline.destination.find((mark) => mark.event === 'switchover received')!.atMs).toBe(0);
    expect(Array.isArray(timeline.sourceGc) && Array.isArray(timeline.destinationGc)).toBe(true);

    // And back with --verify full, which takes the classic two steps, printed: the table names both sides, the
    // destination's marks between the source's asks and answers.
    const back = await c.ferry('migrate', 'web3', '--to', 'host-a', '--trace', '--verify', 'full');
    expect(back.code, back.stderr).toBe(0);
    expect(back.stdout).toContain('downtime timeline');
    expect(back.stdout).toMatch(/source\s+verify asked[\s\S]*destination\s+verify received[\s\S]*source\s+verify answered[\s\S]*source\s+activate asked[\s\S]*destination\s+vCPU resumed[\s\S]*source\s+activate answered/);
    expect(back.stdout).toContain('garbage collection in the switchover:');
    // Without --trace the readable report leaves the timeline out.
    const plain = await c.ferry('migrate', 'web3', '--to', 'host-b');
    expect(plain.code, plain.stderr).toBe(0);
    expect(plain.stdout).not.toContain('downtime timeline');
    // A switchover, printed: the destination's marks, from verification to the vCPU running, inside its round trip.
    const switched = await c.ferry('migrate', 'web3', '--to', 'host-a', '--trace');
    expect(switched.code, switched.stderr).toBe(0);
    expect(switched.stdout).toMatch(/source\s+switchover asked[\s\S]*destination\s+switchover received[\s\S]*destination\s+digests match[\s\S]*destination\s+vCPU resumed[\s\S]*source\s+switchover answered/);
  });
});

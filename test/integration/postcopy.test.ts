/**
 * Post-copy between real agent processes (agent/migration/postcopy-source.ts, postcopy-target.ts): the VM runs at the
 * destination from the switch while its missing pages follow, those it touches first; a broken link leaves both sides
 * waiting until `ferry migrate --resume`; a crash of either side after the switch loses the VM, and ferry says so.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { describe, expect, it, vi, type TestContext } from 'vitest';
import { expectMemoryMatchesReplay, patiently, startCluster, type TestCluster, vmInfo, waitForWrites } from '../harness.js';

/** Each test has its own two agents, so the tests run side by side; its agents stop when it ends, however it ends. */
async function clusterFor(context: TestContext, specs: Parameters<typeof startCluster>[0]): Promise<TestCluster> {
  const cluster = await startCluster(specs);
  context.onTestFinished(() => cluster.stop());
  return cluster;
}

interface PostcopyJson {
  afterRounds: number;
  reason: string;
  missingPages: number;
  pushedPages: number;
  requestedPages: number;
  faults: number;
  stallMs?: { p50: number; p99: number; max: number; totalMs: number };
  complete: boolean;
  resumes: number;
}

/** `ferry vm list --json`: every copy of `name`, with its host and state. */
async function copiesOf(c: TestCluster, name: string): Promise<{ host: string; state: string }[]> {
  const listed = await c.ferry('vm', 'list', '--json');
  expect(listed.code, listed.stderr).toBe(0);
  return listed.json<{ name: string; host: string; state: string }[]>().filter((vm) => vm.name === name);
}

describe.concurrent('post-copy', () => {
  it('runs the VM at the destination from the switch, fetches the pages it touches first, and ends with memory that matches replay', async (context) => {
    const { expect } = context;
    const c = await clusterFor(context, [{ name: 'host-a' }, { name: 'host-b' }]);
    // A hot set written fast: after the switch the guest touches pages the push has not reached yet.
    expect((await c.ferry('vm', 'create', 'pc1', '--on', 'host-a', '--memory', '16MiB', '--wss', '4MiB', '--filled', '--rate', '20000', '--seed', '21')).code).toBe(0);
    await waitForWrites(c, 'pc1', 2000);

    // Before any round: every page is missing at the switch, and the push is held to 16 MiB/s so that faults must come.
    const first = await c.ferry('migrate', 'pc1', '--to', 'host-b', '--postcopy-after', '0', '--max-bandwidth', '16MiB/s', '--json', '--no-forecast');
    expect(first.code, first.stderr).toBe(0);
    const report = first.json<{ outcome: string; rounds: unknown[]; postcopy: PostcopyJson; verification: { match: boolean }; downtimeMs: number }>();
    expect(report.outcome).toBe('committed');
    expect(report.rounds).toEqual([]);
    expect(report.verification.match).toBe(true);
    expect(report.postcopy).toMatchObject({ afterRounds: 0, reason: 'asked', complete: true, resumes: 0 });
    // Every page was missing, and each went once: pushed, or sent ahead when the guest asked.
    expect(report.postcopy.missingPages).toBe(4096);
    expect(report.postcopy.pushedPages + report.postcopy.requestedPages).toBeGreaterThanOrEqual(4096);
    expect(report.postcopy.faults).toBeGreaterThan(0);
    expect(report.postcopy.requestedPages).toBeGreaterThan(0);
    expect(report.postcopy.stallMs?.p99).toBeGreaterThan(0);
    expect((await vmInfo(c, 'pc1')).host).toBe('host-b');
    expect(await copiesOf(c, 'pc1')).toEqual([expect.objectContaining({ host: 'host-b', state: 'running' })]);
    await expectMemoryMatchesReplay(c, 'pc1');

    // --postcopy: one round of pre-copy first; the pages over the peer WebSocket this time. The guest writes on.
    await waitForWrites(c, 'pc1', (await vmInfo(c, 'pc1')).cpu.n + 2000);
    const back = await c.ferry('migrate', 'pc1', '--to', 'host-a', '--postcopy', '--page-stream', 'ws', '--no-forecast');
    expect(back.code, back.stdout + back.stderr).toBe(0);
    expect(back.stdout).toMatch(/post-copy\s+switched after 1 pre-copy round\(s\) \(as asked\)/);
    expect(back.stdout).toMatch(/page faults/);
    expect((await vmInfo(c, 'pc1')).host).toBe('host-a');
    await expectMemoryMatchesReplay(c, 'pc1');
  });

  it('refuses what it cannot move: a kv VM, --verify full, a bad --postcopy mode', async (context) => {
    const { expect } = context;
    const c = await clusterFor(context, [{ name: 'host-a' }, { name: 'host-b' }]);
    expect((await c.ferry('vm', 'create', 'pc2', '--on', 'host-a', '--memory', '16MiB', '--rate', '1000', '--seed', '22')).code).toBe(0);
    const full = await c.ferry('migrate', 'pc2', '--to', 'host-b', '--postcopy', '--verify', 'full', '--no-forecast');
    expect(full.code).toBe(2);
    expect(full.stdout + full.stderr).toMatch(/FERRY_ERR_BAD_INPUT.*--verify full/s);
    const mode = await c.ferry('migrate', 'pc2', '--to', 'host-b', '--postcopy', 'sometimes', '--no-forecast');
    expect(mode.code).toBe(2);
    expect(mode.stderr).toMatch(/--postcopy sometimes is not a post-copy mode/);
    const both = await c.ferry('migrate', 'pc2', '--to', 'host-b', '--postcopy', '--postcopy-after', '2', '--no-forecast');
    expect(both.code).toBe(2);
    const kvMade = await c.ferry('vm', 'create', 'kv2', '--on', 'host-a', '--memory', '16MiB', '--workload', 'kv', '--ip', '127.77.0.26');
    expect(kvMade.code, kvMade.stderr).toBe(0);
    const kv = await c.ferry('migrate', 'kv2', '--to', 'host-b', '--postcopy', '--no-forecast');
    expect(kv.code).toBe(2);
    expect(kv.stdout + kv.stderr).toMatch(/post-copy cannot move kv2: its kv table/);
    expect(await copiesOf(c, 'kv2')).toEqual([expect.objectContaining({ host: 'host-a', state: 'running' })]);
    expect((await vmInfo(c, 'pc2')).host).toBe('host-a');
    expect(await copiesOf(c, 'pc2')).toEqual([expect.objectContaining({ host: 'host-a', state: 'running' })]);
  });

  it('survives a link that breaks mid-push: both sides wait, and --resume finishes it with memory that matches replay', async (context) => {
    const { expect } = context;
    const c = await clusterFor(context, [{ name: 'host-a' }, { name: 'host-b', env: { FERRY_FAULTS: 'cut-postcopy:2000' } }]);
    // A working set of 4,096 pages, twice the 2,000 that arrive before the cut: the guest runs into a missing page.
    expect((await c.ferry('vm', 'create', 'pc3', '--on', 'host-a', '--memory', '32MiB', '--wss', '16MiB', '--filled', '--rate', '20000', '--seed', '23')).code).toBe(0);
    await waitForWrites(c, 'pc3', 2000);
    const cut = await c.ferry('migrate', 'pc3', '--to', 'host-b', '--postcopy-after', '0', '--max-bandwidth', '32MiB/s', '--json', '--no-forecast');
    expect(cut.code).toBe(1);
    const report = cut.json<{ outcome: string; postcopy: PostcopyJson; error: { code: string; hint: string } }>();
    expect(report.outcome).toBe('postcopy-paused');
    expect(report.error.hint).toMatch(/ferry migrate pc3 --resume/);
    expect(report.postcopy.complete).toBe(false);
    // The VM runs at host-b (its vCPU waits on its next missing page); host-a keeps the rest, paused.
    const copies = await copiesOf(c, 'pc3');
    expect(copies).toEqual(expect.arrayContaining([
      expect.objectContaining({ host: 'host-a', state: 'postcopy-out' }),
      expect.objectContaining({ host: 'host-b', state: 'running' }),
    ]));
    // Nothing else may act on either copy meanwhile.
    const dump = await c.ferry('vm', 'pause', 'pc3');
    expect(dump.code).not.toBe(0);
    // The guest at host-b waits on a page the cut left at host-a: its write count stands still until the resume.
    const waiting = await vmInfo(c, 'pc3');
    expect(waiting.host).toBe('host-b');
    await delay(300);
    expect((await vmInfo(c, 'pc3')).cpu.n, 'writes while a page it needs is cut off').toBe(waiting.cpu.n);

    const resumed = await c.ferry('migrate', 'pc3', '--resume', '--json');
    expect(resumed.code, resumed.stdout + resumed.stderr).toBe(0);
    const after = resumed.json<{ outcome: string; postcopy: PostcopyJson; verification: { match: boolean } }>();
    expect(after).toMatchObject({ outcome: 'committed', verification: { match: true }, postcopy: { complete: true, resumes: 1 } });
    expect(await copiesOf(c, 'pc3')).toEqual([expect.objectContaining({ host: 'host-b', state: 'running' })]);
    await waitForWrites(c, 'pc3', waiting.cpu.n); // and it runs on once the page is in
    await expectMemoryMatchesReplay(c, 'pc3');
  });

  it('loses the VM when the source crashes after the switch, and says so; the lost copy can be destroyed', async (context) => {
    const { expect } = context;
    const c = await clusterFor(context, [{ name: 'host-a', env: { FERRY_FAULTS: 'crash@postcopy-switched' } }, { name: 'host-b' }]);
    expect((await c.ferry('vm', 'create', 'pc4', '--on', 'host-a', '--memory', '16MiB', '--wss', '2MiB', '--filled', '--rate', '5000', '--seed', '24')).code).toBe(0);
    await waitForWrites(c, 'pc4', 500);
    const crashed = await c.ferry('migrate', 'pc4', '--to', 'host-b', '--postcopy-after', '0', '--json', '--no-forecast');
    expect(crashed.code).not.toBe(0);
    // host-a is gone: the resume cannot tell a crash from a cut, and changes nothing.
    const unreachable = await c.ferry('migrate', 'pc4', '--resume');
    expect(unreachable.code).toBe(3);
    expect(unreachable.stdout + unreachable.stderr).toMatch(/FERRY_ERR_UNREACHABLE.*if it crashed, pc4 is lost/s);
    // host-a back without the pages: now it is certain.
    await c.restartAgent('host-a');
    const lost = await c.ferry('migrate', 'pc4', '--resume');
    expect(lost.code).toBe(1);
    expect(lost.stdout + lost.stderr).toMatch(/FERRY_ERR_POSTCOPY_LOST.*pc4 was lost in post-copy/s);
    await vi.waitFor(async () => {
      expect(await copiesOf(c, 'pc4')).toEqual(expect.arrayContaining([expect.objectContaining({ host: 'host-b', state: 'lost' })]));
    }, patiently);
    const destroyed = await c.ferry('vm', 'destroy', 'pc4', '--yes');
    expect(destroyed.code, destroyed.stderr).toBe(0);
  });

  it('loses the VM when the destination crashes after the switch, and says so', async (context) => {
    const { expect } = context;
    const c = await clusterFor(context, [{ name: 'host-a' }, { name: 'host-b', env: { FERRY_FAULTS: 'crash@postcopy-switched' } }]);
    expect((await c.ferry('vm', 'create', 'pc5', '--on', 'host-a', '--memory', '16MiB', '--wss', '2MiB', '--filled', '--rate', '5000', '--seed', '25')).code).toBe(0);
    await waitForWrites(c, 'pc5', 500);
    const crashed = await c.ferry('migrate', 'pc5', '--to', 'host-b', '--postcopy-after', '0', '--json', '--no-forecast');
    expect(crashed.code).toBe(1);
    expect(crashed.json<{ outcome: string }>().outcome).toBe('postcopy-paused');
    await c.restartAgent('host-b');
    const lost = await c.ferry('migrate', 'pc5', '--resume');
    expect(lost.code).toBe(1);
    expect(lost.stdout + lost.stderr).toMatch(/FERRY_ERR_POSTCOPY_LOST.*pc5 was lost in post-copy/s);
    expect(await copiesOf(c, 'pc5')).toEqual(expect.arrayContaining([expect.objectContaining({ host: 'host-a', state: 'lost' })]));
  });
});

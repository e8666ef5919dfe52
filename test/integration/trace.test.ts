/**
 * Traces against real agents, through the real CLI: `ferry trace record` samples a VM's dirty log, refuses a VM that
 * is migrating and gives way to a migration that starts meanwhile; a `replay` VM writes what its trace says and
 * matches a replay of it after a live migration.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { forEachPage, parseTraceFile } from '../../shared/trace.js';
import { workloadStep } from '../../shared/workloads.js';
import { expectMemoryMatchesReplay, patiently, spawnFerry, startCluster, vmInfo, waitForWrites, type TestCluster } from '../harness.js';

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

/** The pages the pattern workload writes in writes (fromN, toN]. */
function patternPages(seed: number, wssPages: number, fromN: number, toN: number): Set<number> {
  const next = workloadStep({ kind: 'pattern', rate: 1, wssPages, seed });
  const registers = { x: seed, n: 0 };
  const pages = new Set<number>();
  for (let i = 0; i < toN; i++) {
    const page = next(registers);
    if (registers.n > fromN) pages.add(page);
  }
  return pages;
}

function tracePages(file: string): Set<number> {
  const trace = parseTraceFile(readFileSync(file, 'utf8'), file);
  const pages = new Set<number>();
  for (const sample of trace.samples) forEachPage(sample, (page) => pages.add(page));
  return pages;
}

/** Waits for a line on a spawned CLI's stderr that matches `pattern`. */
function stderrLine(child: ReturnType<typeof spawnFerry>, pattern: RegExp): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const onData = (text: Buffer): void => {
      seen += text.toString();
      if (pattern.test(seen)) {
        child.stderr!.off('data', onData);
        resolve();
      }
    };
    child.stderr!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`ferry exited (${code}) before printing ${pattern}: ${seen}`)));
  });
}

function exitOf(child: ReturnType<typeof spawnFerry>): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (text: Buffer) => (stdout += text.toString()));
  child.stderr!.on('data', (text: Buffer) => (stderr += text.toString()));
  return new Promise((resolve) => child.once('close', (code) => resolve({ code: code ?? 1, stdout, stderr })));
}

describe('ferry trace record', () => {
  it('writes a trace holding exactly the pages a pattern VM wrote while it recorded', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    const created = await c.ferry('vm', 'create', 'src', '--on', 'host-a', '--memory', '8MiB', '--rate', '2000', '--wss', '4MiB', '--seed', '7');
    expect(created.code, created.stderr).toBe(0);
    await waitForWrites(c, 'src', 100);

    const file = path.join(c.dir, 'src.trace.json');
    const recorded = await c.ferry('trace', 'record', 'src', '--duration', '600ms', '--interval', '100ms', '--out', file, '--json');
    expect(recorded.code, recorded.stderr).toBe(0);
    const summary = recorded.json();
    expect(summary).toMatchObject({ vm: 'src', host: 'host-a', complete: true, samples: 6, intervalMs: 100, memoryBytes: 8 * 1024 * 1024 });
    const { fromN, toN } = summary.vcpuWrites as { fromN: number; toN: number };
    expect(toN).toBeGreaterThan(fromN);

    // Every page in the trace is one the workload wrote while it recorded, and every page it wrote then is in the
    // trace. The registers are read beside the log, so a write or two at either end may fall on either side.
    const inTrace = tracePages(file);
    const slack = 2;
    const maybeWritten = patternPages(7, 1024, Math.max(0, fromN - slack), toN + slack);
    const surelyWritten = patternPages(7, 1024, fromN + slack, toN - slack);
    for (const page of inTrace) expect(maybeWritten.has(page), `page ${page} is in the trace`).toBe(true);
    for (const page of surelyWritten) expect(inTrace.has(page), `page ${page} was written`).toBe(true);
    expect(summary.distinctPages).toBe(inTrace.size);

    const info = await c.ferry('trace', 'info', file, '--json');
    expect(info.code, info.stderr).toBe(0);
    expect(info.json()).toMatchObject({ samples: 6, distinctPages: inTrace.size, complete: true });
  });

  it('refuses to record a VM that is migrating, and a migration that starts while it records stops it at a whole sample', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    const created = await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '32MiB', '--filled', '--rate', '2000', '--wss', '8MiB', '--seed', '3');
    expect(created.code, created.stderr).toBe(0);
    await waitForWrites(c, 'web1', 100);

    // A migration held to 16 MiB/s takes about 2 s for 32 MiB: long enough to ask for a recording meanwhile.
    const migration = spawnFerry(['--cluster', c.clusterFile, 'migrate', 'web1', '--to', 'host-b', '--max-bandwidth', '16MiB/s', '--no-forecast', '--quiet', '--json'], { FERRY_TOKEN: c.token });
    const migrated = exitOf(migration);
    await vi.waitFor(async () => expect((await vmInfo(c, 'web1')).state).toBe('migrating-out'), patiently);
    const refused = await c.ferry('trace', 'record', 'web1', '--duration', '1s', '--out', path.join(c.dir, 'refused.json'));
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/FERRY_ERR_VM_STATE/);
    expect(refused.stderr).toMatch(/cannot record a trace of web1: it is migrating/);
    expect(refused.stderr).toMatch(/once the migration has ended/);
    const first = await migrated;
    expect(first.code, first.stderr).toBe(0);

    // Now the other way round: recording on host-b, then a migration back to host-a.
    const file = path.join(c.dir, 'web1.trace.json');
    const recording = spawnFerry(['--cluster', c.clusterFile, 'trace', 'record', 'web1', '--duration', '12s', '--interval', '20ms', '--out', file, '--json'], { FERRY_TOKEN: c.token });
    const recorded = exitOf(recording);
    // Off a terminal, progress says each tenth: the first (60 samples) is proof the recording holds the VM.
    await stderrLine(recording, /60\/600 samples/);
    const back = await c.ferry('migrate', 'web1', '--to', 'host-a', '--no-forecast', '--json');
    expect(back.code, back.stderr).toBe(0);
    expect(back.json()).toMatchObject({ outcome: 'committed' });

    const result = await recorded;
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toMatch(/stopped after \d+ of 600 samples \(a migration of it began\)/);
    const summary = JSON.parse(result.stdout);
    expect(summary).toMatchObject({ complete: false, stoppedBy: 'migration' });
    expect(summary.samples).toBeGreaterThanOrEqual(60);
    expect(summary.samples).toBeLessThan(600);
    expect(parseTraceFile(readFileSync(file, 'utf8'), file)).toMatchObject({ complete: false, samples: expect.any(Array) });
    // The migration lost nothing to the recording's harvests: its memory matches a replay of the pattern.
    await expectMemoryMatchesReplay(c, 'web1');
  });
});

describe('the replay workload', () => {
  it('writes the pages its trace names, and a replay VM migrated live matches a replay of its trace', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    // 4 MiB (1,024 pages), 50 ms intervals: a run of 40 pages, an empty interval, scattered pages, a page at the top.
    const samples = [[10, 40], [], [0, 1, 99, 1, 99, 1, 99, 1], [1023, 1], [500, 20, 100, 30]];
    const file = path.join(c.dir, 'synthetic.trace.json');
    writeFileSync(file, JSON.stringify({
      format: 'ferry-trace', version: 1, vm: 'synthetic', host: 'nowhere', recordedAt: new Date().toISOString(), memoryBytes: 4 * 1024 * 1024,
      pageSize: 4096, intervalMs: 50, complete: true, samples,
    }));
    const created = await c.ferry('vm', 'create', 'rep', '--on', 'host-a', '--workload', 'replay', '--trace', file, '--json');
    expect(created.code, created.stderr).toBe(0);
    expect(created.json()).toMatchObject({ memoryBytes: 4 * 1024 * 1024, workload: { kind: 'replay', wssPages: 1024, trace: { intervalMs: 50, samples } } });
    // More than one pass of the trace (95 pages), so the loop is exercised.
    await waitForWrites(c, 'rep', 200);
    const checked = await c.ferry('vm', 'check', 'rep', '--json');
    expect(checked.code, checked.stdout).toBe(0);
    expect(checked.json()).toMatchObject({ ok: true, pagesWritten: 95 });

    const migrated = await c.ferry('migrate', 'rep', '--to', 'host-b', '--verify', 'full', '--no-forecast', '--json');
    expect(migrated.code, migrated.stderr).toBe(0);
    const before = (await vmInfo(c, 'rep')).cpu.n;
    await waitForWrites(c, 'rep', before + 100);
    // The independent check (test/replay.ts, from DESIGN.md) and the product's.
    await expectMemoryMatchesReplay(c, 'rep');
    const after = await c.ferry('vm', 'check', 'rep', '--json');
    expect(after.code, after.stdout).toBe(0);
    expect(after.json()).toMatchObject({ ok: true, host: 'host-b' });
  });

  it('refuses a trace that does not fit the VM, or a replay without a trace, before anything is made', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    const file = path.join(c.dir, 'big.trace.json');
    writeFileSync(file, JSON.stringify({
      format: 'ferry-trace', version: 1, vm: 'big', host: 'h', recordedAt: 'now', memoryBytes: 16 * 1024 * 1024, pageSize: 4096, intervalMs: 100, complete: true, samples: [[4000, 10]],
    }));
    const small = await c.ferry('vm', 'create', 'rep', '--on', 'host-a', '--workload', 'replay', '--trace', file, '--memory', '8MiB');
    expect(small.code).toBe(2);
    expect(small.stderr).toMatch(/recorded from a VM of 16 MiB/);
    const none = await c.ferry('vm', 'create', 'rep', '--on', 'host-a', '--workload', 'replay');
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/--workload replay needs the trace/);
    const bad = path.join(c.dir, 'bad.trace.json');
    writeFileSync(bad, JSON.stringify({ format: 'ferry-trace', version: 1, memoryBytes: 4096 }));
    const invalid = await c.ferry('vm', 'create', 'rep', '--on', 'host-a', '--workload', 'replay', '--trace', bad);
    expect(invalid.code).toBe(2);
    expect(invalid.stderr).toMatch(/is not a ferry trace/);
  });
});

/**
 * The QEMU peer of `ferry bench`: a real QEMU live migration between two local qemu-system-x86_64 processes, run
 * only where QEMU is installed (it is optional, and CI does not install it); and the bench going on without it
 * where it is not. Nothing here looks at timings.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { findQemu, migrateQemuGuest } from '../../coordinator/bench/qemu-peer.js';
import { runFerryGroup, type CliResult } from '../harness.js';
import { removeScenarioFiles, scenarioFile } from '../scenario-file.js';

const qemu = findQemu();
let dir: string | undefined;
const groups: { stop(): void }[] = [];
afterEach(async () => {
  for (const group of groups.splice(0)) group.stop();
  await removeScenarioFiles();
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

/** `ferry bench ARGS`, with everything it starts stopped after the test even when the test fails. */
function bench(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const group = runFerryGroup(['bench', ...args], env);
  groups.push(group);
  return group.result;
}

/** QEMU processes whose parent is this process. */
function ourQemus(): number[] {
  return readdirSync('/proc').filter((entry) => /^\d+$/.test(entry)).filter((pid) => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return Number(fields[1]) === process.pid && stat.includes('(qemu-system');
    } catch {
      return false;
    }
  }).map(Number);
}

const tiny = { name: 'idle-tiny', description: 'idle 32 MiB VM', memory: '32MiB', workload: 'idle', warmup: '300ms', smoke: true };

describe.skipIf(!qemu.available)('QEMU peer (qemu-system-x86_64 installed)', () => {
  it('migrates a 64 MiB guest filled with non-zero data: completed, every page sent, the destination\'s memory the source\'s', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-qemu-peer-'));
    const memoryBytes = 64 * 1024 ** 2;
    const run = await migrateQemuGuest('test', 1, { memoryBytes, workdir: dir, downtimeLimitMs: 5, warmupMs: 300 });
    expect(run.status, run.error).toBe('completed');
    // Nearly every page holds the fill (non-zero), so is sent whole: what QEMU sent covers them.
    expect(run.normalPages * 4096).toBeGreaterThanOrEqual(run.verification!.pagesMatchingFill * 4096);
    expect(run.transferredBytes).toBeGreaterThanOrEqual(run.normalPages * 4096);
    expect(run.transferredBytes).toBeGreaterThanOrEqual(memoryBytes * 0.99);
    expect(run.dirtySyncCount).toBeGreaterThanOrEqual(1);
    expect(run.cpu.totalMs).toBeGreaterThanOrEqual(0);
    const check = run.verification!;
    expect(check.pagesCompared).toBe((memoryBytes - 1024 ** 2) / 4096);
    expect(check.match).toBe(true);
    expect(check.pagesMatchingSource).toBe(check.pagesCompared);
    // The firmware writes a few tables above 1 MiB too: all but those still hold the fill.
    expect(check.pagesMatchingFill).toBeGreaterThan(check.pagesCompared * 0.99);
    // Nothing left behind: both processes stopped, the image and the dumps deleted.
    expect(ourQemus()).toEqual([]);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('runs beside ferry in `ferry bench --peer qemu`, in results.json and a section of summary.md', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-qemu-peer-'));
    const out = path.join(dir, 'results');
    const file = await scenarioFile([tiny]);
    const result = await bench(['--scenarios', file, '--scenario', 'idle-tiny', '--repeat', '1', '--peer', 'qemu', '--out', out, '--json']);
    expect(result.code, result.stderr).toBe(0);
    const results = result.json();
    expect(results.peer).toMatchObject({ peer: 'qemu', available: true, downtimeLimitMs: 5 });
    expect(results.peers).toHaveLength(1);
    expect(results.peers[0]).toMatchObject({ peer: 'qemu', scenario: 'idle-tiny', link: 'loopback', memoryBytes: 32 * 1024 ** 2 });
    expect(results.peers[0].runs).toHaveLength(1);
    expect(results.peers[0].runs[0]).toMatchObject({ status: 'completed', verification: { match: true } });
    const markdown = readFileSync(path.join(out, 'summary.md'), 'utf8');
    expect(markdown).toContain('## QEMU beside ferry');
    expect(markdown).toMatch(/\| idle-tiny \| ferry \| 1 \(1\) \|/);
    expect(markdown).toMatch(/\| idle-tiny \| qemu \| 1 \(1\) \|/);
  });
});

describe('QEMU peer failures', () => {
  it('refuses a guest size QEMU cannot take, and cleans up after a QEMU that exits at start', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-qemu-peer-'));
    const broken = { available: true as const, binary: '/bin/false', version: 'none' };
    await expect(migrateQemuGuest('test', 1, { memoryBytes: 1024 ** 2 + 4096, workdir: dir, downtimeLimitMs: 5 }, broken)).rejects.toMatchObject({ code: 'FERRY_ERR_BAD_INPUT' });
    await expect(migrateQemuGuest('test', 1, { memoryBytes: 16 * 1024 ** 2, workdir: dir, downtimeLimitMs: 5 }, broken)).rejects.toThrow(/exited at start/);
    expect(readdirSync(dir)).toEqual([]);
  });
});

describe('ferry bench --peer qemu without QEMU', () => {
  it('refuses an unknown peer with exit 2 and names the known one', async () => {
    const result = await bench(['--scenario', 'smoke', '--peer', 'xen']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('FERRY_ERR_BAD_INPUT');
    expect(result.stderr).toMatch(/--peer xen: no such peer[\s\S]*hint: known: qemu/);
  });

  it('says the peer is unavailable and why, and the bench goes on', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-qemu-peer-'));
    const out = path.join(dir, 'results');
    const file = await scenarioFile([tiny]);
    const result = await bench(['--scenarios', file, '--scenario', 'idle-tiny', '--repeat', '1', '--peer', 'qemu', '--out', out, '--json'], { FERRY_QEMU: path.join(dir, 'no-qemu-here') });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toMatch(/peer unavailable: .*not installed.*the bench goes on without it/);
    const results = result.json();
    expect(results.runs).toHaveLength(1);
    expect(results.runs[0].outcome).toBe('committed');
    expect(results.peer).toMatchObject({ peer: 'qemu', available: false, reason: expect.stringMatching(/^peer unavailable: /) });
    expect(results.peers[0]).toMatchObject({ scenario: 'idle-tiny', runs: [], skipped: expect.stringMatching(/^peer unavailable/) });
    expect(readFileSync(path.join(out, 'summary.md'), 'utf8')).toContain('QEMU did not run: peer unavailable');
    expect(existsSync(path.join(out, 'results.json'))).toBe(true);
  });
});

/**
 * Storage scenarios: one agent with `--shared-storage` (a storage move runs on one host: no link is crossed), one
 * pattern VM writing its disk, and its disk moved back and forth between the shared storage and the agent's
 * datastore (shared -> local -> shared ...) `moves` times in each mode, every move's report kept. At the end the
 * disk is checked against a replay of the guest's writes, except on a filled disk: that one starts as an image of
 * random bytes (so skipping zero blocks cannot stand in for copying), which a replay cannot reproduce.
 *
 * Beside them, the raw disk write speed of the same file system: what the copy throughput is judged against.
 */
import { randomBytes, randomFillSync } from 'node:crypto';
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import type { StopReason, StorageMoveReport } from '../../shared/protocol.js';
import { formatRate, parseDuration, parseRate, parseSize } from '../../shared/units.js';
import type { HostEntry } from '../cluster.js';
import { withHost } from '../connect.js';
import { fetchDisk } from '../dump.js';
import { importImage } from '../images.js';
import { startLocalAgent } from '../local-agent.js';
import { DiskPatternChecker } from '../pattern-check.js';
import { moveStorage } from '../storage-move.js';
import { toVmRequest } from '../vm-spec.js';
import type { BenchContext } from './runner.js';
import { filledGuest, type Scenario, type StorageModeName, type StorageSpec } from './scenarios.js';
import { spread, type Spread } from './stats.js';

const MiB = 1024 ** 2;
const IMAGE = 'bench-filled';

export interface LatencySample { count: number; p50Ms: number; p99Ms: number }

export interface StorageMoveResult {
  mode: StorageModeName;
  /** 1, 2, ... within the mode. */
  index: number;
  from: 'shared' | 'local';
  to: 'shared' | 'local';
  outcome: 'moved' | 'failed';
  error?: string;
  pauseMs: number;
  totalTimeMs: number;
  readyAfterMs: number;
  bytesSent: number;
  zeroBlocksSkipped: number;
  throughputBytesPerSec: number;
  imageBytesPerSec: number;
  mirroredWrites: number;
  rounds: number;
  pausedBlocks: number;
  stopReason?: StopReason;
  verified: boolean;
  writeLatency?: { before: LatencySample; during: LatencySample };
  /** Guest block writes a second over the move (register m before and after it). */
  achievedDiskRate: number;
}

export interface StorageRun {
  scenario: string;
  repeat: number;
  /** Always one host: the disk moves between two places on it. */
  link: 'one host';
  diskBytes: number;
  diskWssBytes: number;
  filled: boolean;
  maxDowntimeMs: number;
  /** The scenario's `maxBandwidth`: a cap on the copy's own sends, bytes per second; 0: none. */
  maxBandwidthBytesPerSec: number;
  /** Block writes a second asked of the guest, and what it achieved during the warm-up (before any move). */
  diskRate: number;
  achievedDiskRateBefore: number;
  /** The filled disk's image: how long it took to import it to the agent and clone it into the VM's disk. */
  imageSetupMs?: number;
  moves: StorageMoveResult[];
  /** The disk against a replay of the guest's writes, after the last move; skipped for a filled disk. */
  diskCheck: { checked: true; ok: boolean; blocksChecked: number; writesReplayed: number } | { checked: false; reason: string };
}

export interface RawDiskResult {
  /** The folder written in (the benchmark's work folder, where the datastore and the shared storage live). */
  dir: string;
  bytes: number;
  /** Median of the samples: bytes written (1 MiB writes of random data, then fsync) over the time to the fsync's end. */
  bytesPerSec: number;
  samplesBytesPerSec: number[];
}

/**
 * Raw disk write speed on `dir`'s file system: `bytes` of random (non-zero) data in 1 MiB writes to a temporary file,
 * then fsync, `samples` times; the median.
 */
export async function measureRawDisk(dir: string, bytes: number, samples: number): Promise<RawDiskResult> {
  await mkdir(dir, { recursive: true });
  const buffer = Buffer.alloc(MiB);
  const results: number[] = [];
  for (let sample = 0; sample < samples; sample++) {
    const file = path.join(dir, `raw-disk-${sample}.tmp`);
    const fd = openSync(file, 'w');
    try {
      randomFillSync(buffer);
      const started = performance.now();
      for (let written = 0; written < bytes; written += MiB) {
        // A fresh first word per MiB: no two writes the same, none zero.
        buffer.writeUInt32LE(written / MiB + 1, 0);
        writeSync(fd, buffer, 0, MiB);
      }
      fsyncSync(fd);
      results.push((bytes / (performance.now() - started)) * 1000);
    } finally {
      closeSync(fd);
      await rm(file, { force: true });
    }
  }
  return { dir, bytes, bytesPerSec: spread(results).median, samplesBytesPerSec: results };
}

/** A file of `bytes` random bytes (every 4 KiB block non-zero), written 1 MiB at a time. */
function writeRandomImage(file: string, bytes: number): void {
  const fd = openSync(file, 'w');
  try {
    const buffer = Buffer.alloc(MiB);
    for (let written = 0; written < bytes; written += MiB) {
      randomFillSync(buffer);
      writeSync(fd, buffer, 0, Math.min(MiB, bytes - written));
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export function storageOf(scenario: Scenario): StorageSpec {
  if (!scenario.storage) throw new FerryError(ErrorCode.INTERNAL, `scenario ${scenario.name} has no storage part`);
  return scenario.storage;
}

/** Progress steps of a storage run: the setup and warm-up, then every move. */
export function storageSteps(scenario: Scenario): number {
  const storage = storageOf(scenario);
  return 1 + storage.modes.length * storage.moves;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function diskWrites(host: HostEntry): Promise<{ m: number; atMs: number }> {
  const info = await withHost(host, (client) => client.request('vm.info', { name: 'bench' }));
  return { m: info.cpu.m ?? 0, atMs: performance.now() };
}

export function toMoveResult(mode: StorageModeName, index: number, from: 'shared' | 'local', to: 'shared' | 'local', report: StorageMoveReport | undefined, error: unknown, achievedDiskRate: number): StorageMoveResult {
  const disk = report?.disks[0];
  return {
    mode, index, from, to,
    outcome: report ? 'moved' : 'failed',
    ...(error ? { error: error instanceof FerryError ? `${error.code}: ${error.message}` : String(error) } : {}),
    pauseMs: report?.pauseMs ?? Number.NaN,
    totalTimeMs: report?.totalTimeMs ?? Number.NaN,
    readyAfterMs: disk?.readyAfterMs ?? Number.NaN,
    bytesSent: disk?.bytesSent ?? 0,
    zeroBlocksSkipped: disk?.zeroBlocksSkipped ?? 0,
    throughputBytesPerSec: disk?.throughputBytesPerSec ?? Number.NaN,
    imageBytesPerSec: disk?.imageBytesPerSec ?? Number.NaN,
    mirroredWrites: disk?.mirroredWrites ?? 0,
    rounds: disk?.rounds ?? 0,
    pausedBlocks: disk?.pausedBlocks ?? 0,
    ...(disk?.stopReason ? { stopReason: disk.stopReason } : {}),
    verified: report?.verification.match ?? false,
    ...(report ? { writeLatency: report.writeLatency } : {}),
    achievedDiskRate,
  };
}

export function describeMove(scenario: string, repeat: number, total: number, move: StorageMoveResult): string {
  const ms = (value: number): string => (Number.isFinite(value) ? `${value.toFixed(1)} ms` : '-');
  if (move.outcome === 'failed') return `${scenario} #${repeat} ${move.mode} move ${move.index}/${total} ${move.from} -> ${move.to}: FAILED (${move.error})`;
  const detail = move.mode === 'mirror' ? `${move.mirroredWrites} mirrored writes` : `${move.rounds} rounds (${move.stopReason ?? '-'}), ${move.pausedBlocks} blocks paused`;
  const latency = move.writeLatency ? `, write p99 ${move.writeLatency.before.p99Ms.toFixed(2)} -> ${move.writeLatency.during.p99Ms.toFixed(2)} ms` : '';
  return `${scenario} #${repeat} ${move.mode} move ${move.index}/${total} ${move.from} -> ${move.to}: pause ${ms(move.pauseMs)}, ready after ${ms(move.readyAfterMs)}, ` +
    `${formatRate(move.throughputBytesPerSec)} sent (${formatRate(move.imageBytesPerSec)} of image), ${detail}, guest ${Math.round(move.achievedDiskRate)} writes/s${latency}`;
}

export async function runStorageScenario(scenario: Scenario, repeat: number, context: BenchContext): Promise<StorageRun> {
  const storage = storageOf(scenario);
  const label = `${scenario.name} #${repeat}`;
  const diskBytes = parseSize(storage.disk);
  const maxDowntimeMs = parseDuration(scenario.maxDowntime);
  const maxBandwidthBytesPerSec = scenario.maxBandwidth ? parseRate(scenario.maxBandwidth) : 0;
  const workdir = path.join(context.workdir, `${scenario.name}-${repeat}`);
  await mkdir(workdir, { recursive: true });
  const token = randomBytes(32).toString('hex');
  context.onStep?.(`${label} setup and warm-up`);
  const agent = await startLocalAgent({
    name: 'host-a', host: '127.0.0.1', capacity: `${Math.ceil((parseSize(scenario.memory) * 1.5) / MiB)}MiB`,
    datastore: path.join(workdir, 'host-a'), logLevel: 'warn', token, extraArgs: ['--shared-storage', path.join(workdir, 'shared')],
  });
  try {
    const host: HostEntry = { name: agent.name, url: agent.url, token };
    const cluster = { hosts: [host] };
    let imageSetupMs: number | undefined;
    let image: string | undefined;
    if (storage.filled) {
      const startedMs = performance.now();
      const file = path.join(workdir, 'filled.img');
      writeRandomImage(file, diskBytes);
      const imported = await importImage(cluster, { file, name: IMAGE, holds: 'random bytes (benchmark)', on: [host.name] });
      await rm(file, { force: true });
      const failed = imported.hosts.find((entry) => entry.outcome === 'failed');
      if (failed) throw new FerryError(ErrorCode.IO, `could not import the filled image: ${JSON.stringify(failed.error)}`);
      image = IMAGE;
      imageSetupMs = performance.now() - startedMs; // the clone is added below
    }
    const request = toVmRequest('bench', {
      memory: scenario.memory, workload: 'pattern', rate: String(scenario.rate ?? 0), seed: String(scenario.seed),
      ...(scenario.wss ? { wss: scenario.wss } : {}), prealloc: scenario.prealloc, filled: filledGuest(scenario),
      disk: storage.disk, diskRate: String(storage.diskRate), ...(storage.diskWss ? { diskWss: storage.diskWss } : {}),
    });
    const createdAtMs = performance.now();
    await withHost(host, (client) => client.request('vm.create', { ...request, ...(image ? { image } : {}) }));
    if (imageSetupMs !== undefined) imageSetupMs += performance.now() - createdAtMs;
    const first = await diskWrites(host);
    await sleep(parseDuration(scenario.warmup));
    const warm = await diskWrites(host);
    const achievedDiskRateBefore = ((warm.m - first.m) / Math.max(warm.atMs - first.atMs, 1)) * 1000;

    const moves: StorageMoveResult[] = [];
    // A disk made on an agent with shared storage is made there.
    let at: 'shared' | 'local' = 'shared';
    for (const mode of storage.modes) {
      for (let index = 1; index <= storage.moves; index++) {
        const to: 'shared' | 'local' = at === 'shared' ? 'local' : 'shared';
        context.onStep?.(`${label} ${mode} move ${index}/${storage.moves} ${at} -> ${to}`);
        const before = await diskWrites(host);
        let report: StorageMoveReport | undefined;
        let error: unknown;
        try {
          report = await moveStorage(cluster, { vm: 'bench', to, mode, verify: 'pages', maxDowntimeMs, maxBandwidthBytesPerSec });
        } catch (caught) {
          error = caught;
        }
        const after = await diskWrites(host);
        const move = toMoveResult(mode, index, at, to, report, error, ((after.m - before.m) / Math.max(after.atMs - before.atMs, 1)) * 1000);
        moves.push(move);
        context.onNote?.(describeMove(scenario.name, repeat, storage.moves, move));
        if (report) at = to;
      }
    }

    let diskCheck: StorageRun['diskCheck'];
    if (storage.filled) {
      diskCheck = { checked: false, reason: 'filled disk: it started as an image of random bytes, which a replay of the guest\'s writes cannot reproduce' };
    } else {
      diskCheck = await withHost(host, async (client) => {
        let checker: DiskPatternChecker | undefined;
        const fetched = await fetchDisk(client, 'bench', (paused, sizeBytes) => {
          checker = new DiskPatternChecker(paused, sizeBytes);
        }, (offset, data) => checker!.chunk(offset, data));
        checker ??= new DiskPatternChecker(fetched.info, fetched.sizeBytes);
        const result = checker.finish();
        return { checked: true as const, ok: result.ok, blocksChecked: result.blocksChecked, writesReplayed: result.writesReplayed };
      });
    }
    return {
      scenario: scenario.name, repeat, link: 'one host', diskBytes,
      diskWssBytes: storage.diskWss ? parseSize(storage.diskWss) : diskBytes,
      filled: storage.filled, maxDowntimeMs, maxBandwidthBytesPerSec, diskRate: storage.diskRate, achievedDiskRateBefore,
      ...(imageSetupMs !== undefined ? { imageSetupMs } : {}),
      moves, diskCheck,
    };
  } finally {
    await agent.stop();
    await rm(workdir, { recursive: true, force: true });
  }
}

/** One mode of a storage scenario over its runs: every move of every repeat counts as one sample. */
export interface StorageSummary {
  scenario: string;
  description: string;
  mode: StorageModeName;
  diskBytes: number;
  diskWssBytes: number;
  filled: boolean;
  maxDowntimeMs: number;
  maxBandwidthBytesPerSec: number;
  diskRate: number;
  achievedDiskRateBefore: Spread;
  achievedDiskRateDuring: Spread;
  moves: number;
  moved: number;
  pauseMs: Spread;
  readyAfterMs: Spread;
  throughputBytesPerSec: Spread;
  imageBytesPerSec: Spread;
  bytesSent: Spread;
  latencyBeforeP50Ms: Spread;
  latencyBeforeP99Ms: Spread;
  latencyDuringP50Ms: Spread;
  latencyDuringP99Ms: Spread;
  rounds: Spread;
  pausedBlocks: Spread;
  mirroredWrites: Spread;
  stopReasons: Partial<Record<StopReason, number>>;
  /** 'matched', 'MISMATCH', or why it was skipped. */
  diskCheck: string;
}

export function summarizeStorage(scenario: Scenario, runs: StorageRun[]): StorageSummary[] {
  const storage = storageOf(scenario);
  return storage.modes.map((mode) => {
    const moves = runs.flatMap((run) => run.moves.filter((move) => move.mode === mode));
    const done = moves.filter((move) => move.outcome === 'moved');
    const of = (pick: (move: StorageMoveResult) => number | undefined): Spread => spread(done.map((move) => pick(move) ?? Number.NaN));
    const stopReasons: Partial<Record<StopReason, number>> = {};
    for (const move of done) if (move.stopReason) stopReasons[move.stopReason] = (stopReasons[move.stopReason] ?? 0) + 1;
    const checks = runs.map((run) => run.diskCheck);
    const diskCheck = checks.every((check) => !check.checked)
      ? 'skipped (filled image)'
      : checks.every((check) => check.checked && check.ok) ? 'matched' : 'MISMATCH';
    return {
      scenario: scenario.name,
      description: scenario.description,
      mode,
      diskBytes: runs[0]?.diskBytes ?? parseSize(storage.disk),
      diskWssBytes: runs[0]?.diskWssBytes ?? 0,
      filled: storage.filled,
      maxDowntimeMs: runs[0]?.maxDowntimeMs ?? parseDuration(scenario.maxDowntime),
      maxBandwidthBytesPerSec: runs[0]?.maxBandwidthBytesPerSec ?? 0,
      diskRate: storage.diskRate,
      achievedDiskRateBefore: spread(runs.map((run) => run.achievedDiskRateBefore)),
      achievedDiskRateDuring: of((move) => move.achievedDiskRate),
      moves: moves.length,
      moved: done.length,
      pauseMs: of((move) => move.pauseMs),
      readyAfterMs: of((move) => move.readyAfterMs),
      throughputBytesPerSec: of((move) => move.throughputBytesPerSec),
      imageBytesPerSec: of((move) => move.imageBytesPerSec),
      bytesSent: of((move) => move.bytesSent),
      latencyBeforeP50Ms: of((move) => move.writeLatency?.before.p50Ms),
      latencyBeforeP99Ms: of((move) => move.writeLatency?.before.p99Ms),
      latencyDuringP50Ms: of((move) => move.writeLatency?.during.p50Ms),
      latencyDuringP99Ms: of((move) => move.writeLatency?.during.p99Ms),
      rounds: of((move) => move.rounds),
      pausedBlocks: of((move) => move.pausedBlocks),
      mirroredWrites: of((move) => move.mirroredWrites),
      stopReasons,
      diskCheck,
    };
  });
}

export interface StorageTargetCheck {
  what: string;
  target: string;
  measured: string;
  met: boolean;
}

/** The share of min(raw disk, link) the copy must reach; a one-host move crosses no link, so it is the raw disk. */
export const STORAGE_THROUGHPUT_TARGET = 0.8;

/** The storage targets, judged on medians, for the scenarios that ran. */
export function checkStorageTargets(summaries: StorageSummary[], rawDisk: RawDiskResult | undefined): StorageTargetCheck[] {
  const checks: StorageTargetCheck[] = [];
  const pct = (value: number): string => `${(value * 100).toFixed(1)} %`;
  if (rawDisk) {
    for (const s of summaries.filter((summary) => summary.filled)) {
      const fraction = s.throughputBytesPerSec.median / rawDisk.bytesPerSec;
      checks.push({
        what: `copy throughput, ${s.scenario} ${s.mode} (filled disk)`,
        target: `>= ${STORAGE_THROUGHPUT_TARGET * 100} % of min(raw disk, link) = raw disk ${formatRate(rawDisk.bytesPerSec)} (one host: no link)`,
        measured: `${formatRate(s.throughputBytesPerSec.median)} = ${pct(fraction)}`,
        met: fraction >= STORAGE_THROUGHPUT_TARGET,
      });
    }
  }
  const mirror = summaries.filter((summary) => summary.mode === 'mirror');
  if (mirror.length > 0) {
    const moves = mirror.reduce((total, s) => total + s.moves, 0);
    const moved = mirror.reduce((total, s) => total + s.moved, 0);
    const rates = mirror.map((s) => s.achievedDiskRateBefore.median).filter(Number.isFinite);
    checks.push({
      what: `mirror converges (guest writing up to ${Math.round(Math.max(0, ...rates))} blocks/s achieved)`,
      target: 'every move reaches ready and switches',
      measured: `${moved}/${moves} moved`,
      met: moved === moves,
    });
  }
  // Iterate failing to converge where mirror succeeds: any scenario run in both modes where it happened; else the
  // one where the guest wrote fastest, to say how far it was.
  const pairs = summaries.filter((s) => s.mode === 'iterate' && !s.filled)
    .map((iterate) => ({ iterate, mirror: summaries.find((s) => s.scenario === iterate.scenario && s.mode === 'mirror') }))
    .filter((pair): pair is { iterate: StorageSummary; mirror: StorageSummary } => pair.mirror !== undefined)
    .map((pair) => {
      const capped = (pair.iterate.stopReasons['max-rounds'] ?? 0) + (pair.iterate.stopReasons['max-bytes'] ?? 0);
      const iterateFails = capped > 0 || pair.iterate.moved < pair.iterate.moves || pair.iterate.pauseMs.median > pair.iterate.maxDowntimeMs;
      const mirrorHolds = pair.mirror.moved === pair.mirror.moves && pair.mirror.pauseMs.median <= pair.mirror.maxDowntimeMs;
      return { ...pair, met: iterateFails && mirrorHolds };
    });
  const shown = pairs.find((pair) => pair.met) ?? pairs.sort((a, b) => b.iterate.achievedDiskRateBefore.median - a.iterate.achievedDiskRateBefore.median)[0];
  if (shown) {
    const { iterate, mirror } = shown;
    const cap = iterate.maxBandwidthBytesPerSec > 0 ? `, copy capped at ${formatRate(iterate.maxBandwidthBytesPerSec)}` : '';
    checks.push({
      what: `iterate fails to converge where mirror succeeds (${iterate.scenario}: ${Math.round(iterate.achievedDiskRateBefore.median)} blocks/s achieved before${cap})`,
      target: `iterate ended by a cap, failed, or paused > ${iterate.maxDowntimeMs} ms; mirror moved every time within it`,
      measured: `iterate: ${Object.entries(iterate.stopReasons).map(([reason, count]) => `${reason} ×${count}`).join(', ') || '-'}, pause ${iterate.pauseMs.median.toFixed(1)} ms, ${iterate.pausedBlocks.median.toFixed(0)} blocks paused; mirror: ${mirror.moved}/${mirror.moves} moved, pause ${mirror.pauseMs.median.toFixed(1)} ms`,
      met: shown.met,
    });
  }
  return checks;
}

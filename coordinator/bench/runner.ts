/**
 * Runs benchmark scenarios: for every run, two fresh agent processes, one VM, one live migration, and the
 * measurements of it, beside the raw-TCP baseline measured over the same endpoints before the migrations.
 */
import { mkdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PAGE_SIZE, STOP_RULES } from '../../shared/constants.js';
import type { HostInfo, PostcopyReport, SourceReport, StopReason, Verification, WorkloadSpec } from '../../shared/protocol.js';
import { parseDuration, parseRate, parseSize } from '../../shared/units.js';
import type { HostEntry } from '../cluster.js';
import { withHost } from '../connect.js';
import { readMemory } from '../dump.js';
import { migrateLive } from '../migrate.js';
import { forecastMigration, withForecastVerdict } from '../forecast.js';
import { checkPattern } from '../pattern-check.js';
import type { MigrationReport } from '../report.js';
import { measureRawTcp, type RawTcpResult } from './baseline.js';
import type { BenchAgents, Link } from './link.js';
import { predictPreCopy, type ModelPrediction } from './model.js';
import { filledGuest, type Scenario } from './scenarios.js';

const GiB = 1024 ** 3;

export interface RunResult {
  scenario: string;
  repeat: number;
  link: string;
  outcome: MigrationReport['outcome'];
  error?: string;
  memoryBytes: number;
  /** Page writes per second asked of the vCPU, and what it achieved during pre-copy. */
  dirtyRatePagesPerSec: number;
  achievedDirtyRatePagesPerSec: number;
  /** The link rate the scenario's dirty rate is a fraction of. */
  linkRateBytesPerSec: number;
  rawTcpBytesPerSec: number;
  round1ThroughputBytesPerSec: number;
  fractionOfRawTcp: number;
  totalTimeMs: number;
  downtimeMs: number;
  guestBlackoutMs: number;
  rounds: { round: number; pages: number; bytes: number; durationMs: number; dirtyPagesAfter: number }[];
  stopAndCopyPages: number;
  stopReason?: StopReason;
  bytesSentOverMemory: number;
  /** Page bytes sent after round 1: the later rounds and the stop-and-copy (what delta compression cuts). */
  bytesAfterRound1: number;
  /** `compress` scenarios: the cache's hits and misses, the delta pages, the bytes saved and the CPU (source report). */
  compression?: SourceReport['compression'];
  cpu: { sourceMs: number; destinationMs: number; totalMs: number; msPerGiB: number };
  verification?: Verification;
  /** Guest memory on the destination checked against a replay of the pattern workload (pattern VMs only). */
  replayMatches?: boolean;
  /** Post-copy's figures, when the migration switched to it: faults, their stalls, pages pushed and asked for. */
  postcopy?: PostcopyReport;
  /** Memory over the link's measured page rate (the forecast's measurement): the time of one pass over memory. */
  onePassMs?: number;
  /** Stages 0-1: the checks and the reservation (the destination's memory made real), before any page moves. */
  setupMs: number;
  /** Of stage 1, how long the destination took to make the VM's memory real (its page faults; the report's figure). */
  reservationPopulateMs?: number;
  /** The model's pre-copy and stop-and-copy (stages 2-3), from round-1 throughput and the achieved dirty rate. */
  prediction: ModelPrediction;
  /** Stages 2-3 as measured, the span the model predicts. */
  transferTimeMs: number;
  /**
   * The model's transfer time plus the stages it does not model (0-1: checks and reservation; 4-5: commit and
   * activation), taken as measured in this run.
   */
  predictedTotalTimeMs: number;
  predictionError: { transferTime: number; totalTime: number; downtime: number; rounds: number };
  /**
   * The forecast made before the migration (coordinator/forecast.ts: the VM's measured stats, a fresh link
   * measurement), against what happened: relative error of the total time, and the downtime's error in ms.
   */
  forecast?: {
    totalTimeMs: number; downtimeMs: number; rounds: number; bytes: number; converges: boolean; stopReason: StopReason; tookMs: number;
    linkBytesPerSec: number; scatteredBytesPerSec: number; dirtyPagesPerSec: number; wssPages: number; overheadMs: { setupMs: number; perRoundMs: number; pausedMs: number; tailMs: number };
  };
  forecastError?: { totalTime: number; downtimeMs: number; downtime: number };
}

export interface BenchContext {
  link: Link;
  rawTcp: RawTcpResult;
  workdir: string;
  /** A step of a run under way (a migration of a service scenario), for the progress display. */
  onStep?: (label: string) => void;
  /** A line about a finished step, for the progress display. */
  onNote?: (line: string) => void;
}

export function linkRateFor(scenario: Scenario, link: Link, rawTcp: RawTcpResult): number {
  if (scenario.maxBandwidth) return parseRate(scenario.maxBandwidth);
  return link.shapedBytesPerSec ?? rawTcp.bytesPerSec;
}

export function workloadFor(scenario: Scenario, linkRateBytesPerSec: number): WorkloadSpec {
  const memoryBytes = parseSize(scenario.memory);
  const wssPages = Math.floor((scenario.wss ? parseSize(scenario.wss) : memoryBytes) / PAGE_SIZE);
  const rate = scenario.workload === 'idle'
    ? 0
    : scenario.rate ?? Math.round(((scenario.dirtyRateOfLink ?? 0) * linkRateBytesPerSec) / PAGE_SIZE);
  return {
    kind: scenario.workload,
    rate,
    wssPages,
    seed: scenario.seed,
    ...(scenario.hot ? { hotPages: Math.floor(parseSize(scenario.hot) / PAGE_SIZE) } : {}),
    ...(filledGuest(scenario) ? { filled: true } : {}),
  };
}

async function cpuOf(host: HostEntry): Promise<HostInfo['cpu']> {
  return withHost(host, async (_client, info) => info.cpu);
}

const relativeError = (measured: number, predicted: number): number => (predicted > 0 ? (measured - predicted) / predicted : Number.NaN);

/** Two fresh agents with room for the scenario's VM, for the length of `body`; stopped and their files gone after. */
/** `memoryBytes`: what one agent may hold at once, when more than the scenario's VM (a soak's other VMs). */
export async function withRunAgents<T>(scenario: Scenario, repeat: number, context: BenchContext, body: (bench: BenchAgents, hosts: [HostEntry, HostEntry]) => Promise<T>, memoryBytes = parseSize(scenario.memory)): Promise<T> {
  const workdir = path.join(context.workdir, `${scenario.name}-${repeat}`);
  await mkdir(workdir, { recursive: true });
  const capacity = `${Math.ceil((Math.max(parseSize(scenario.memory), memoryBytes) * 1.5) / 1024 ** 2)}MiB`;
  const bench = await context.link.startAgents(capacity, workdir);
  try {
    return await body(bench, bench.cluster.hosts as [HostEntry, HostEntry]);
  } finally {
    await bench.stop();
    await rm(workdir, { recursive: true, force: true });
  }
}

export async function runScenario(scenario: Scenario, repeat: number, context: BenchContext): Promise<RunResult> {
  const { link, rawTcp } = context;
  const memoryBytes = parseSize(scenario.memory);
  const linkRate = linkRateFor(scenario, link, rawTcp);
  const workload = workloadFor(scenario, linkRate);
  return withRunAgents(scenario, repeat, context, async (bench, [hostA, hostB]) => {
    await withHost(hostA, (client) => client.request('vm.create', { name: 'bench', memoryBytes, workload, prealloc: scenario.prealloc }));
    await new Promise((resolve) => setTimeout(resolve, parseDuration(scenario.warmup)));

    const options = {
      maxDowntimeMs: parseDuration(scenario.maxDowntime),
      maxBandwidthBytesPerSec: scenario.maxBandwidth ? parseRate(scenario.maxBandwidth) : 0,
      maxRounds: STOP_RULES.maxRounds,
      verify: scenario.verify,
      autoConverge: false,
      ...(scenario.pageStream === 'ws' ? { pageStream: 'ws' as const } : {}),
      ...(scenario.compress ? { compress: scenario.compress, ...(scenario.xbzrleCache ? { xbzrleCacheBytes: parseSize(scenario.xbzrleCache) } : {}) } : {}),
      ...(scenario.postcopy ? { postcopy: scenario.postcopy } : {}),
    };
    const forecastStartedMs = performance.now();
    const planned = await forecastMigration(bench.cluster, { vm: 'bench', to: 'host-b', options }).catch((error: unknown) => {
      context.onNote?.(`${scenario.name}: no forecast: ${(error as Error).message}`);
      return undefined;
    });
    const forecastTookMs = performance.now() - forecastStartedMs;
    // The migration's CPU only: the forecast before it measures the link by sending up to half the VM's memory, which
    // is no part of moving it (`ferry migrate`'s own forecast sends a short sample).
    const cpuBefore = [await cpuOf(hostA), await cpuOf(hostB)];
    const before = await withHost(hostA, (client) => client.request('vm.info', { name: 'bench' }));
    const report = await migrateLive(bench.cluster, { vm: 'bench', to: 'host-b', options: withForecastVerdict(options, planned?.forecast) });
    const cpuAfter = [await cpuOf(hostA), await cpuOf(hostB)];
    const cpuSpent = cpuAfter.map((after, i) => after.userMs + after.systemMs - (cpuBefore[i]!.userMs + cpuBefore[i]!.systemMs));

    // The vCPU's achieved rate: writes from just before the migration to the pause (the start of stage 3, on the
    // report's clock, which starts when migrateLive is called, right after `before` was read).
    const pausedAtMs = report.stages.find((stage) => stage.stage === 3)?.startMs ?? report.totalTimeMs;
    const achieved = report.cpu ? ((report.cpu.n - before.cpu.n) / Math.max(pausedAtMs, 1)) * 1000 : 0;

    let replayMatches: boolean | undefined;
    if (report.outcome === 'committed' && (workload.kind === 'pattern' || workload.kind === 'counters')) {
      const { info, image } = await withHost(hostB, (client) => readMemory(client, 'bench'));
      replayMatches = checkPattern(info, image).ok;
    }

    const round1 = report.rounds[0]?.throughputBytesPerSec ?? 0;
    const prediction = predictPreCopy({
      memoryBytes,
      wssPages: workload.wssPages,
      dirtyPagesPerSec: achieved,
      linkBytesPerSec: round1 > 0 ? round1 : linkRate,
      maxDowntimeMs: options.maxDowntimeMs,
      maxRounds: options.maxRounds,
    });
    const downtimeMs = report.downtimeMs ?? Number.NaN;
    // A stage may come in parts (--copy-storage's storage copy is stage 2 too): the sum of them.
    const stageMs = (stage: number): number => report.stages.filter((entry) => entry.stage === stage).reduce((total, entry) => total + entry.endMs - entry.startMs, 0);
    const transferTimeMs = stageMs(2) + stageMs(3);
    const unmodelledMs = stageMs(0) + stageMs(1) + stageMs(4) + stageMs(5);
    // The model is of pre-copy: a run that switched to post-copy is none of its business (the forecast beside it models
    // post-copy), and its error would only blur the model's own.
    const modelled = report.postcopy === undefined;
    const predictedTotalTimeMs = modelled ? prediction.totalTimeMs + unmodelledMs : Number.NaN;
    return {
      scenario: scenario.name,
      repeat,
      link: link.name,
      outcome: report.outcome,
      ...(report.error ? { error: `${report.error.code}: ${report.error.message}` } : {}),
      memoryBytes,
      dirtyRatePagesPerSec: workload.rate,
      achievedDirtyRatePagesPerSec: achieved,
      linkRateBytesPerSec: linkRate,
      rawTcpBytesPerSec: rawTcp.bytesPerSec,
      round1ThroughputBytesPerSec: round1,
      fractionOfRawTcp: round1 / rawTcp.bytesPerSec,
      totalTimeMs: report.totalTimeMs,
      downtimeMs,
      guestBlackoutMs: report.guestBlackoutMs ?? Number.NaN,
      rounds: report.rounds.map(({ round, pages, bytes, durationMs, dirtyPagesAfter }) => ({ round, pages, bytes, durationMs, dirtyPagesAfter })),
      stopAndCopyPages: report.stopAndCopy?.pages ?? 0,
      ...(report.stopReason ? { stopReason: report.stopReason } : {}),
      bytesSentOverMemory: report.bytesSent / memoryBytes,
      bytesAfterRound1: report.bytesSent - (report.rounds[0]?.bytes ?? 0),
      ...(report.compression ? { compression: report.compression } : {}),
      cpu: {
        sourceMs: cpuSpent[0]!,
        destinationMs: cpuSpent[1]!,
        totalMs: cpuSpent[0]! + cpuSpent[1]!,
        msPerGiB: report.bytesSent > 0 ? ((cpuSpent[0]! + cpuSpent[1]!) / report.bytesSent) * GiB : Number.NaN,
      },
      ...(report.verification ? { verification: report.verification } : {}),
      ...(replayMatches !== undefined ? { replayMatches } : {}),
      ...(report.postcopy ? { postcopy: report.postcopy } : {}),
      // One pass at the rate the forecast's rounds run at: the link's page rate, or --max-bandwidth where that is lower.
      ...(planned && planned.forecast.bandwidthBytesPerSec > 0 ? { onePassMs: (memoryBytes / planned.forecast.bandwidthBytesPerSec) * 1000 } : {}),
      setupMs: stageMs(0) + stageMs(1),
      ...(report.reservationPopulateMs !== undefined ? { reservationPopulateMs: report.reservationPopulateMs } : {}),
      prediction,
      transferTimeMs,
      predictedTotalTimeMs,
      predictionError: modelled ? {
        transferTime: relativeError(transferTimeMs, prediction.totalTimeMs),
        totalTime: relativeError(report.totalTimeMs, predictedTotalTimeMs),
        downtime: relativeError(downtimeMs, prediction.downtimeMs),
        rounds: report.rounds.length - prediction.rounds.length,
      } : { transferTime: Number.NaN, totalTime: Number.NaN, downtime: Number.NaN, rounds: Number.NaN },
      ...(planned ? {
        forecast: {
          totalTimeMs: planned.forecast.totalTimeMs, downtimeMs: planned.forecast.downtimeMs, rounds: planned.forecast.rounds,
          bytes: planned.forecast.bytes, converges: planned.forecast.converges, stopReason: planned.forecast.stopReason, tookMs: forecastTookMs,
          linkBytesPerSec: planned.link.bytesPerSec, scatteredBytesPerSec: planned.link.scatteredBytesPerSec, dirtyPagesPerSec: planned.stats?.dirtyPagesPerSec ?? 0, wssPages: planned.stats?.wssPages ?? 0,
          overheadMs: planned.forecast.overheadMs,
        },
        forecastError: {
          totalTime: relativeError(planned.forecast.totalTimeMs, report.totalTimeMs),
          downtimeMs: planned.forecast.downtimeMs - downtimeMs,
          downtime: relativeError(planned.forecast.downtimeMs, downtimeMs),
        },
      } : {}),
    };
  });
}

export async function measureBaseline(link: Link, smoke: boolean): Promise<RawTcpResult> {
  return measureRawTcp(link.endpoints, smoke ? 64 * 1024 ** 2 : GiB, smoke ? 1 : 3);
}

export function benchWorkdir(): string {
  return path.join(os.tmpdir(), `ferry-bench-${process.pid}`);
}

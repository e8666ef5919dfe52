/**
 * The policy bake-off (`ferry bench --trace FILE --policies ...`): the user's own guest, as a dirty-page trace, run
 * for real under each migration policy, so the policies can be compared on that guest before one is chosen.
 *
 * For each policy, and each repeat: two fresh agents (the bench's link: loopback, or namespaces), a fresh VM running
 * the `replay` workload of the trace (shared/workloads.ts) for a warm-up, its memory filled at the start (every page
 * non-zero, as a guest's that has run a while: no page of round 1 travels as a zero flag), a live migration with the policy's options
 * (policies.ts), and then its memory on the destination checked page by page against a replay of the trace.
 * Measured: downtime and total time (the migration report), bytes sent, and the guest's slowdown: how many of the
 * writes the trace's timing asks for in the migration window the guest did not make (register n read just before
 * and just after the migration), as a percent of them. Pauses, throttling and page faults all show there.
 *
 * A policy an agent refuses (its `migrate.start` schema does not know the options: FERRY_ERR_BAD_INPUT) is not run:
 * the table says so with the agent's error, and the bake-off goes on with the others.
 */
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { DEFAULT_MAX_DOWNTIME_MS, STOP_RULES } from '../../shared/constants.js';
import { ErrorCode } from '../../shared/errors.js';
import type { MigrationOptions, VmInfo, WorkloadSpec } from '../../shared/protocol.js';
import { summarizeTrace, type ReplayTrace, type TraceFile, type TraceSummary } from '../../shared/trace.js';
import { replayWorkload, workloadPacing } from '../../shared/workloads.js';
import type { HostEntry } from '../cluster.js';
import { withHost } from '../connect.js';
import { readMemory } from '../dump.js';
import { migrateLive } from '../migrate.js';
import type { MigrationReport } from '../report.js';
import { checkPattern } from '../pattern-check.js';
import type { Link } from './link.js';
import { POLICIES, policyOptions, type PolicyName } from './policies.js';
import { spread, type Spread } from './stats.js';

const VM = 'bakeoff';

/**
 * The recommendation's rule, stated with the result: among the policies that committed every run with memory
 * matching replay, those whose median total time and bytes sent are each within BOUND times the best of them and
 * whose guest slowdown is within SLOWDOWN_POINTS of the least; of those, the least median downtime (ties: fewer bytes).
 */
export const RECOMMENDATION = { bound: 1.5, slowdownPoints: 10 } as const;

export interface BakeoffRequest {
  trace: TraceFile;
  /** The trace as the replay VM carries it (replayTraceOf: checked against the limits of a workload spec). */
  replay: ReplayTrace;
  policies: PolicyName[];
  repeat: number;
  warmupMs: number;
  /** The base options every policy starts from: the stop rules' defaults, `--max-downtime`, `--max-bandwidth`. */
  base: MigrationOptions;
  link: Link;
  workdir: string;
  onStep?: (label: string) => void;
  onNote?: (line: string) => void;
}

export interface PolicyRun {
  policy: PolicyName;
  repeat: number;
  /** The migration's outcome, or `not-run` when the agent refused the policy's options. */
  outcome: MigrationReport['outcome'] | 'not-run';
  /** `CODE: message` of a failure, or of the agent's refusal of a policy it does not know. */
  error?: string;
  downtimeMs?: number;
  totalTimeMs?: number;
  bytesSent?: number;
  /** The migration window, from the write count read before to the one read after (the midpoints of the two requests). */
  windowMs?: number;
  /** Writes the trace's timing asks for in the window, and the writes the guest made. */
  writesAsked?: number;
  writesMade?: number;
  /** (asked - made) / asked, percent; 0 when the guest kept up. */
  slowdownPct?: number;
  throttlePct?: number;
  rounds?: number;
  /** The stop rule that ended pre-copy (DESIGN.md, "When pre-copy stops"). */
  stopReason?: string;
  /** Post-copy: faults the destination's vCPU took on missing pages, and the time they held it (all, and p99). */
  postcopy?: { faults: number; stallTotalMs: number; stallP99Ms: number };
  /** `--compress xbzrle`: the cache's hits and misses, the bytes its deltas saved, and the source's CPU for them. */
  compression?: { cacheHits: number; cacheMisses: number; bytesSaved: number; encodeMs: number };
  /** The destination's memory against a replay of the trace (committed runs). */
  replayMatches?: boolean;
}

export interface PolicySummary {
  policy: PolicyName;
  description: string;
  options: Record<string, unknown>;
  runs: number;
  committed: number;
  /** Set when an agent refused the policy: its error. */
  notRun?: string;
  /** Over the committed runs: median, min, max. */
  downtimeMs?: Spread;
  totalTimeMs?: Spread;
  bytesSent?: Spread;
  slowdownPct?: Spread;
  /** Every committed run's memory matched replay. */
  replayMatches?: boolean;
  /** Post-copy's faults and stalls, over the committed runs that switched to it. */
  postcopy?: { faults: Spread; stallTotalMs: Spread; stallP99Ms: Spread };
  /** Delta compression's figures, over the committed runs that used it. */
  compression?: { cacheHits: Spread; cacheMisses: Spread; bytesSaved: Spread; encodeMs: Spread };
}

export interface Recommendation {
  policy?: PolicyName;
  rule: string;
  reason: string;
}

export interface BakeoffResults {
  trace: TraceSummary & { vm: string; host: string; recordedAt: string };
  memoryBytes: number;
  link: string;
  repeat: number;
  warmupMs: number;
  baseOptions: MigrationOptions;
  policies: PolicySummary[];
  runs: PolicyRun[];
  recommendation: Recommendation;
}

/** The base options of a bake-off: what `ferry migrate` would use, with the caps given. */
export function baseOptions(maxDowntimeMs = DEFAULT_MAX_DOWNTIME_MS, maxBandwidthBytesPerSec = 0): MigrationOptions {
  return { maxDowntimeMs, maxBandwidthBytesPerSec, maxRounds: STOP_RULES.maxRounds, verify: 'pages', autoConverge: false };
}

/**
 * The guest's slowdown over the migration's window: the share of the writes its pacing asked for that it did not make
 * (a pause, throttling, page faults), in percent. A guest a little ahead of its pacing (it catches up after a stall)
 * counts as not slowed, never as negative.
 */
export function guestSlowdownPct(writesAsked: number, writesMade: number): number {
  return writesAsked > 0 ? (100 * Math.max(0, writesAsked - writesMade)) / writesAsked : 0;
}

/** The guest's register n and when it was read: the midpoint of the request that read it. */
async function writeCount(host: HostEntry): Promise<{ n: number; atMs: number; info: VmInfo }> {
  const sentMs = performance.now();
  const info = await withHost(host, (client) => client.request('vm.info', { name: VM }));
  return { n: info.cpu.n, atMs: (sentMs + performance.now()) / 2, info };
}

async function runPolicy(request: BakeoffRequest, workload: WorkloadSpec, policy: PolicyName, repeat: number): Promise<PolicyRun> {
  const workdir = path.join(request.workdir, `${policy}-${repeat}`);
  await mkdir(workdir, { recursive: true });
  const capacity = `${Math.ceil((request.trace.memoryBytes * 1.5) / 1024 ** 2)}MiB`;
  const bench = await request.link.startAgents(capacity, workdir);
  try {
    const [source, destination] = bench.cluster.hosts as [HostEntry, HostEntry];
    await withHost(source, (client) => client.request('vm.create', { name: VM, memoryBytes: request.trace.memoryBytes, workload }));
    await new Promise((resolve) => setTimeout(resolve, request.warmupMs));
    const before = await writeCount(source);
    const report = await migrateLive(bench.cluster, { vm: VM, to: destination.name, options: policyOptions(policy, request.base) });
    const error = report.error ? `${report.error.code}: ${report.error.message}` : undefined;
    // Refused before anything moved: the agent does not know the policy's options.
    if (report.outcome === 'failed' && report.error?.code === ErrorCode.BAD_INPUT) return { policy, repeat, outcome: 'not-run', ...(error ? { error } : {}) };
    // After a post-copy's switch the guest runs at the destination, even when its page push was cut (postcopy-paused).
    const holder = report.outcome === 'committed' || report.outcome === 'postcopy-paused' ? destination : source;
    const after = await writeCount(holder);
    const windowMs = after.atMs - before.atMs;
    const writesAsked = workloadPacing(workload)(before.n, windowMs);
    const writesMade = after.n - before.n;
    let replayMatches: boolean | undefined;
    if (report.outcome === 'committed') {
      const { info, image } = await withHost(destination, (client) => readMemory(client, VM));
      replayMatches = checkPattern(info, image).ok;
    }
    return {
      policy, repeat, outcome: report.outcome, ...(error ? { error } : {}),
      ...(report.downtimeMs !== undefined ? { downtimeMs: report.downtimeMs } : {}),
      totalTimeMs: report.totalTimeMs, bytesSent: report.bytesSent, windowMs, writesAsked, writesMade,
      slowdownPct: guestSlowdownPct(writesAsked, writesMade),
      throttlePct: report.throttlePct, rounds: report.rounds.length, ...(report.stopReason ? { stopReason: report.stopReason } : {}),
      ...(report.postcopy ? { postcopy: { faults: report.postcopy.faults, stallTotalMs: report.postcopy.stallMs?.totalMs ?? 0, stallP99Ms: report.postcopy.stallMs?.p99 ?? 0 } } : {}),
      ...(report.compression ? {
        compression: { cacheHits: report.compression.cacheHits, cacheMisses: report.compression.cacheMisses, bytesSaved: report.compression.bytesSaved, encodeMs: report.compression.encodeMs },
      } : {}),
      ...(replayMatches !== undefined ? { replayMatches } : {}),
    };
  } finally {
    await bench.stop();
    await rm(workdir, { recursive: true, force: true });
  }
}

export function summarizePolicy(policy: PolicyName, runs: PolicyRun[]): PolicySummary {
  const committed = runs.filter((run) => run.outcome === 'committed');
  const notRun = runs.find((run) => run.outcome === 'not-run');
  const switched = committed.filter((run) => run.postcopy !== undefined);
  const compressed = committed.filter((run) => run.compression !== undefined);
  const of = (pick: (run: PolicyRun) => number | undefined): Spread | undefined => {
    const values = committed.map(pick).filter((value): value is number => value !== undefined);
    return values.length > 0 ? spread(values) : undefined;
  };
  const medians = { downtimeMs: of((run) => run.downtimeMs), totalTimeMs: of((run) => run.totalTimeMs), bytesSent: of((run) => run.bytesSent), slowdownPct: of((run) => run.slowdownPct) };
  return {
    policy, description: POLICIES[policy].description, options: POLICIES[policy].options, runs: runs.length, committed: committed.length,
    ...(notRun ? { notRun: notRun.error ?? 'refused' } : {}),
    ...Object.fromEntries(Object.entries(medians).filter(([, value]) => value !== undefined)),
    ...(committed.length > 0 ? { replayMatches: committed.every((run) => run.replayMatches === true) } : {}),
    ...(switched.length > 0 ? {
      postcopy: {
        faults: spread(switched.map((run) => run.postcopy!.faults)), stallTotalMs: spread(switched.map((run) => run.postcopy!.stallTotalMs)),
        stallP99Ms: spread(switched.map((run) => run.postcopy!.stallP99Ms)),
      },
    } : {}),
    ...(compressed.length > 0 ? {
      compression: {
        cacheHits: spread(compressed.map((run) => run.compression!.cacheHits)), cacheMisses: spread(compressed.map((run) => run.compression!.cacheMisses)),
        bytesSaved: spread(compressed.map((run) => run.compression!.bytesSaved)), encodeMs: spread(compressed.map((run) => run.compression!.encodeMs)),
      },
    } : {}),
  };
}

/** The recommendation under RECOMMENDATION's rule (stated in `rule`), and why; on the medians. */
export function recommend(summaries: PolicySummary[]): Recommendation {
  const { bound, slowdownPoints } = RECOMMENDATION;
  const rule = `the least median downtime among the policies that committed every run with memory matching replay, whose median total time and bytes sent are each within ${bound}x the best of those and whose median guest slowdown is within ${slowdownPoints} points of the least (ties: fewer bytes)`;
  const sound = summaries.flatMap((summary) => {
    const { downtimeMs, totalTimeMs, bytesSent, slowdownPct } = summary;
    const ok = summary.runs > 0 && summary.committed === summary.runs && summary.replayMatches === true && downtimeMs && totalTimeMs && bytesSent && slowdownPct;
    return ok ? [{ policy: summary.policy, downtime: downtimeMs.median, range: downtimeMs, time: totalTimeMs.median, bytes: bytesSent.median, slowdown: slowdownPct.median }] : [];
  });
  if (sound.length === 0) return { rule, reason: 'no policy committed every run with memory matching replay' };
  const bestTime = Math.min(...sound.map((entry) => entry.time));
  const bestBytes = Math.min(...sound.map((entry) => entry.bytes));
  const leastSlowdown = Math.min(...sound.map((entry) => entry.slowdown));
  const within = sound.filter((entry) => entry.time <= bound * bestTime && entry.bytes <= bound * bestBytes && entry.slowdown <= leastSlowdown + slowdownPoints);
  const chosen = [...within].sort((a, b) => a.downtime - b.downtime || a.bytes - b.bytes)[0]!;
  const left = sound.filter((entry) => !within.includes(entry)).map((entry) => entry.policy);
  // A lead that the runs' own spread covers is no lead: say so rather than let a median decide alone.
  const overlapping = within.filter((entry) => entry !== chosen && entry.range.min <= chosen.range.max && chosen.range.min <= entry.range.max).map((entry) => entry.policy);
  return {
    policy: chosen.policy,
    rule,
    reason: `${chosen.policy}: ${chosen.downtime.toFixed(1)} ms of downtime, the least of ${within.map((entry) => entry.policy).join(', ')}${left.length > 0 ? ` (${left.join(', ')} out of bounds)` : ''}`
      + (overlapping.length > 0 ? `; its downtimes overlap ${overlapping.join(', ')}'s, so the lead is within run-to-run variation` : ''),
  };
}

export async function runBakeoff(request: BakeoffRequest): Promise<BakeoffResults> {
  // Filled: memory starts non-zero, as a guest's that has run a while, so round 1 moves every byte of it.
  const workload: WorkloadSpec = { ...replayWorkload(request.replay), filled: true };
  const runs: PolicyRun[] = [];
  const policies: PolicySummary[] = [];
  for (const policy of request.policies) {
    const policyRuns: PolicyRun[] = [];
    for (let repeat = 1; repeat <= request.repeat; repeat++) {
      request.onStep?.(`${policy} #${repeat}`);
      const run = await runPolicy(request, workload, policy, repeat);
      policyRuns.push(run);
      if (run.outcome === 'not-run') {
        // The same agents refuse it every time: say so once and go on with the next policy.
        request.onNote?.(`${policy}: not run: ${run.error ?? 'refused'}`);
        break;
      }
      request.onNote?.(`${policy} #${repeat}: ${run.outcome}${run.downtimeMs !== undefined ? `, downtime ${run.downtimeMs.toFixed(1)} ms` : ''}${run.error ? ` (${run.error})` : ''}`);
    }
    runs.push(...policyRuns);
    policies.push(summarizePolicy(policy, policyRuns));
  }
  const { vm, host, recordedAt } = request.trace;
  return {
    trace: { ...summarizeTrace(request.trace), vm, host, recordedAt },
    memoryBytes: request.trace.memoryBytes,
    link: request.link.name,
    repeat: request.repeat,
    warmupMs: request.warmupMs,
    baseOptions: request.base,
    policies,
    runs,
    recommendation: recommend(policies),
  };
}

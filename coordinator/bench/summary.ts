/**
 * What the runs add up to: per scenario, medians and spread over the repeats; and the targets of the benchmark,
 * each judged on those medians.
 */
import type { StopReason } from '../../shared/protocol.js';
import type { RawTcpResult } from './baseline.js';
import type { RunResult } from './runner.js';
import type { Scenario } from './scenarios.js';
import { spread, type Spread } from './stats.js';

export interface ScenarioSummary {
  scenario: string;
  description: string;
  link: string;
  runs: number;
  committed: number;
  dirtyRateOfLink?: number;
  /** Page writes per second asked of the vCPU. */
  dirtyRatePagesPerSec: number;
  achievedDirtyRateOfLink: Spread;
  round1ThroughputBytesPerSec: Spread;
  fractionOfRawTcp: Spread;
  totalTimeMs: Spread;
  downtimeMs: Spread;
  guestBlackoutMs: Spread;
  rounds: Spread;
  stopReasons: Partial<Record<StopReason, number>>;
  bytesSentOverMemory: Spread;
  cpuMsPerGiB: Spread;
  cpuVersusRawTcp: Spread;
  predictedTotalTimeMs: Spread;
  modelErrorTotalTime: Spread;
  modelErrorTransferTime: Spread;
  predictedDowntimeMs: Spread;
  /** Memory size over round-1 throughput: the time the geometric bound is stated in. */
  memoryOverRound1Ms: Spread;
  linkRateBytesPerSec: number;
  allVerified: boolean;
  allReplayMatched: boolean | undefined;
}

export function summarize(scenario: Scenario, runs: RunResult[], rawTcp: RawTcpResult): ScenarioSummary {
  const of = (pick: (run: RunResult) => number): Spread => spread(runs.map(pick));
  const stopReasons: Partial<Record<StopReason, number>> = {};
  for (const run of runs) if (run.stopReason) stopReasons[run.stopReason] = (stopReasons[run.stopReason] ?? 0) + 1;
  const replayed = runs.filter((run) => run.replayMatches !== undefined);
  return {
    scenario: scenario.name,
    description: scenario.description,
    link: runs[0]?.link ?? scenario.link,
    runs: runs.length,
    committed: runs.filter((run) => run.outcome === 'committed').length,
    ...(scenario.dirtyRateOfLink !== undefined ? { dirtyRateOfLink: scenario.dirtyRateOfLink } : {}),
    dirtyRatePagesPerSec: spread(runs.map((run) => run.dirtyRatePagesPerSec)).median,
    achievedDirtyRateOfLink: of((run) => (run.achievedDirtyRatePagesPerSec * 4096) / run.linkRateBytesPerSec),
    round1ThroughputBytesPerSec: of((run) => run.round1ThroughputBytesPerSec),
    fractionOfRawTcp: of((run) => run.fractionOfRawTcp),
    totalTimeMs: of((run) => run.totalTimeMs),
    downtimeMs: of((run) => run.downtimeMs),
    guestBlackoutMs: of((run) => run.guestBlackoutMs),
    rounds: of((run) => run.rounds.length),
    stopReasons,
    bytesSentOverMemory: of((run) => run.bytesSentOverMemory),
    cpuMsPerGiB: of((run) => run.cpu.msPerGiB),
    cpuVersusRawTcp: of((run) => run.cpu.msPerGiB / rawTcp.cpuMsPerGiB),
    predictedTotalTimeMs: of((run) => run.predictedTotalTimeMs),
    modelErrorTotalTime: of((run) => run.predictionError.totalTime),
    modelErrorTransferTime: of((run) => run.predictionError.transferTime),
    predictedDowntimeMs: of((run) => run.prediction.downtimeMs),
    memoryOverRound1Ms: of((run) => (run.memoryBytes / run.round1ThroughputBytesPerSec) * 1000),
    linkRateBytesPerSec: spread(runs.map((run) => run.linkRateBytesPerSec)).median,
    allVerified: runs.every((run) => run.outcome !== 'committed' || run.verification?.match === true),
    allReplayMatched: replayed.length > 0 ? replayed.every((run) => run.replayMatches) : undefined,
  };
}

export interface TargetCheck {
  what: string;
  target: string;
  measured: string;
  met: boolean;
}

const pct = (value: number): string => `${(value * 100).toFixed(1)} %`;
const ms = (value: number): string => `${value.toFixed(2)} ms`;

/** The targets of the benchmark, for the scenarios that ran; a target whose scenarios did not run is left out. */
export function checkTargets(summaries: ScenarioSummary[]): TargetCheck[] {
  const find = (name: string): ScenarioSummary | undefined => summaries.find((summary) => summary.scenario === name);
  const checks: TargetCheck[] = [];
  const idle1g = find('idle-1g');
  if (idle1g) {
    checks.push({ what: 'round-1 throughput, idle 1 GiB', target: '>= 40 % of raw TCP', measured: pct(idle1g.fractionOfRawTcp.median), met: idle1g.fractionOfRawTcp.median >= 0.4 });
    checks.push({ what: 'CPU per GiB migrated, idle 1 GiB', target: '<= 3 x raw TCP', measured: `${idle1g.cpuVersusRawTcp.median.toFixed(2)} x`, met: idle1g.cpuVersusRawTcp.median <= 3 });
    checks.push({ what: 'downtime, idle 1 GiB', target: '<= 5 ms', measured: ms(idle1g.downtimeMs.median), met: idle1g.downtimeMs.median <= 5 });
  }
  for (const shaped of summaries.filter((summary) => summary.link !== 'loopback')) {
    const fraction = shaped.round1ThroughputBytesPerSec.median / shaped.linkRateBytesPerSec;
    checks.push({ what: `throughput on the ${shaped.link} shaped link (${shaped.scenario})`, target: '>= 95 % of the link rate', measured: pct(fraction), met: fraction >= 0.95 });
  }
  const hot25 = find('hot-1g-25');
  if (hot25) checks.push({ what: 'downtime, 1 GiB with 64 MiB hot set at 25 % of the link', target: '<= 15 ms', measured: ms(hot25.downtimeMs.median), met: hot25.downtimeMs.median <= 15 });
  const idle256 = find('idle-256m');
  const idle4g = find('idle-4g');
  if (idle256 && idle4g) {
    const growth = idle4g.downtimeMs.median / idle256.downtimeMs.median;
    checks.push({ what: 'downtime growth, idle 256 MiB -> 4 GiB', target: '<= 1.5 x', measured: `${growth.toFixed(2)} x`, met: growth <= 1.5 });
  }
  for (const summary of summaries.filter((entry) => entry.dirtyRateOfLink !== undefined && entry.dirtyRateOfLink <= 0.2)) {
    const ratio = summary.totalTimeMs.median / summary.memoryOverRound1Ms.median;
    checks.push({ what: `total time, ${summary.scenario}`, target: '<= 1.25 x memory / round-1 throughput', measured: `${ratio.toFixed(2)} x`, met: ratio <= 1.25 });
  }
  const modelled = summaries.filter((summary) => Number.isFinite(summary.modelErrorTotalTime.median));
  if (modelled.length > 0) {
    const worst = Math.max(...modelled.map((summary) => Math.abs(summary.modelErrorTotalTime.median)));
    checks.push({ what: 'model error on total time (worst scenario median; stages 0-1 and 4-5 as measured)', target: '<= 10 %', measured: pct(worst), met: worst <= 0.1 });
  }
  const over = find('over-link');
  if (over) {
    const capped = (over.stopReasons['max-rounds'] ?? 0) + (over.stopReasons['max-bytes'] ?? 0);
    checks.push({ what: 'dirty rate above the link', target: 'ends within the caps and says why', measured: `${over.committed}/${over.runs} committed, ${capped} ended by a cap`, met: over.committed === over.runs && capped === over.runs });
  }
  return checks;
}

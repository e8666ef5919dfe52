/**
 * The benchmark's results for machines (JSON, CSV) and for people (a Markdown report).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { formatBytes, formatRate } from '../../shared/units.js';
import type { RawTcpResult } from './baseline.js';
import type { Environment } from './environment.js';
import type { RunResult } from './runner.js';
import type { ScenarioSummary, TargetCheck } from './summary.js';
import type { Spread } from './stats.js';

export interface BenchResults {
  environment: Environment;
  command: string;
  repeat: number;
  /** The raw-TCP baseline of each link the runs used, measured before its migrations. */
  baselines: Record<string, RawTcpResult>;
  summaries: ScenarioSummary[];
  targets: TargetCheck[];
  runs: RunResult[];
  charts: string[];
}

const csvColumns: [string, (run: RunResult) => string | number | undefined][] = [
  ['scenario', (run) => run.scenario],
  ['repeat', (run) => run.repeat],
  ['link', (run) => run.link],
  ['outcome', (run) => run.outcome],
  ['memory_bytes', (run) => run.memoryBytes],
  ['dirty_rate_pages_per_sec', (run) => run.dirtyRatePagesPerSec],
  ['achieved_dirty_rate_pages_per_sec', (run) => Math.round(run.achievedDirtyRatePagesPerSec)],
  ['link_rate_bytes_per_sec', (run) => Math.round(run.linkRateBytesPerSec)],
  ['raw_tcp_bytes_per_sec', (run) => Math.round(run.rawTcpBytesPerSec)],
  ['round1_throughput_bytes_per_sec', (run) => Math.round(run.round1ThroughputBytesPerSec)],
  ['fraction_of_raw_tcp', (run) => run.fractionOfRawTcp.toFixed(4)],
  ['total_time_ms', (run) => run.totalTimeMs.toFixed(2)],
  ['downtime_ms', (run) => run.downtimeMs.toFixed(3)],
  ['guest_blackout_ms', (run) => run.guestBlackoutMs.toFixed(3)],
  ['rounds', (run) => run.rounds.length],
  ['round_pages', (run) => run.rounds.map((round) => round.pages).join(' ')],
  ['stop_and_copy_pages', (run) => run.stopAndCopyPages],
  ['stop_reason', (run) => run.stopReason],
  ['bytes_sent_over_memory', (run) => run.bytesSentOverMemory.toFixed(4)],
  ['cpu_source_ms', (run) => run.cpu.sourceMs.toFixed(1)],
  ['cpu_destination_ms', (run) => run.cpu.destinationMs.toFixed(1)],
  ['cpu_ms_per_gib', (run) => run.cpu.msPerGiB.toFixed(1)],
  ['verified', (run) => String(run.verification?.match ?? false)],
  ['replay_matches', (run) => (run.replayMatches === undefined ? '' : String(run.replayMatches))],
  ['transfer_time_ms', (run) => run.transferTimeMs.toFixed(2)],
  ['predicted_transfer_time_ms', (run) => run.prediction.totalTimeMs.toFixed(2)],
  ['predicted_total_time_ms', (run) => run.predictedTotalTimeMs.toFixed(2)],
  ['predicted_downtime_ms', (run) => run.prediction.downtimeMs.toFixed(3)],
  ['predicted_rounds', (run) => run.prediction.rounds.length],
  ['model_error_transfer_time', (run) => run.predictionError.transferTime.toFixed(4)],
  ['model_error_total_time', (run) => run.predictionError.totalTime.toFixed(4)],
  ['error', (run) => run.error],
];

function csvCell(value: string | number | undefined): string {
  const text = value === undefined ? '' : String(value);
  return /[",\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

export function toCsv(runs: RunResult[]): string {
  const header = csvColumns.map(([name]) => name).join(',');
  return [header, ...runs.map((run) => csvColumns.map(([, pick]) => csvCell(pick(run))).join(','))].join('\n') + '\n';
}

const num = (value: number, digits = 1): string => (Number.isFinite(value) ? value.toFixed(digits) : '-');
const withSpread = (value: Spread, digits = 1, unit = ''): string =>
  value.n > 1 ? `${num(value.median, digits)}${unit} (${num(value.min, digits)}–${num(value.max, digits)})` : `${num(value.median, digits)}${unit}`;

export function toMarkdown(results: BenchResults): string {
  const { environment: env } = results;
  const lines: string[] = [];
  lines.push('# ferry benchmark results', '');
  lines.push(`Measured ${env.date} on ${env.cores} cores (${env.cpuModel}), ${formatBytes(env.memoryBytes)}, ${env.os}, Node ${env.node}; ` +
    `ferry ${env.ferry}, ${Object.entries(env.libraries).map(([name, version]) => `${name} ${version}`).join(', ')}. Link: ${env.link}.`, '');
  lines.push(`Command: \`${results.command}\``, '');
  for (const [link, rawTcp] of Object.entries(results.baselines)) {
    lines.push(`Raw TCP on ${link}, between the same endpoints as the agents, 1 MiB writes, separate processes: **${formatRate(rawTcp.bytesPerSec)}** ` +
      `(median of ${rawTcp.samplesBytesPerSec.length}: ${rawTcp.samplesBytesPerSec.map((value) => formatRate(value)).join(', ')}), ` +
      `${num(rawTcp.cpuMsPerGiB)} ms of CPU per GiB (both ends)` +
      (rawTcp.iperf3BitsPerSec ? `; iperf3: ${(rawTcp.iperf3BitsPerSec / 1e9).toFixed(2)} Gbit/s.` : '; iperf3 not installed.'), '');
  }
  lines.push(`Medians over ${results.repeat} runs per scenario, (min–max) beside them. Every run starts two fresh agent processes. ` +
    'The model column is the pre-copy model (coordinator/bench/model.ts) given round-1 throughput and the dirty rate the vCPU achieved; ' +
    'it predicts stages 2-3, and the stages it does not model (checks, reservation, commit, activation) are added as measured. ' +
    'Its error on stages 2-3 alone is the last figure.', '');

  lines.push('| scenario | link | dirty rate, % of link (achieved) | round-1 throughput MiB/s (% raw TCP) | total time ms | downtime ms | guest blackout ms | rounds | stop | sent / memory | CPU ms/GiB (x raw TCP) | model: total ms (error; stages 2-3 error) | verified |');
  lines.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const s of results.summaries) {
    const dirty = s.dirtyRateOfLink !== undefined
      ? `${num(s.dirtyRateOfLink * 100, 0)} % (${num(s.achievedDirtyRateOfLink.median * 100, 1)} %)`
      : s.dirtyRatePagesPerSec > 0 ? `${s.dirtyRatePagesPerSec} writes/s (${num(s.achievedDirtyRateOfLink.median * 100, 1)} %)` : 'idle';
    const stops = Object.entries(s.stopReasons).map(([reason, count]) => `${reason}${count === s.runs ? '' : ` ×${count}`}`).join(', ');
    const verified = `${s.allVerified ? 'yes' : 'NO'}${s.allReplayMatched === undefined ? '' : s.allReplayMatched ? ', replay ok' : ', REPLAY MISMATCH'}`;
    lines.push(`| ${s.scenario} | ${s.link} | ${dirty} | ${num(s.round1ThroughputBytesPerSec.median / 1024 ** 2, 0)} (${num(s.fractionOfRawTcp.median * 100, 1)} %) | ${withSpread(s.totalTimeMs, 0)} | ${withSpread(s.downtimeMs, 2)} | ${withSpread(s.guestBlackoutMs, 2)} | ${withSpread(s.rounds, 0)} | ${stops || '-'} | ${num(s.bytesSentOverMemory.median, 2)} | ${num(s.cpuMsPerGiB.median, 0)} (${num(s.cpuVersusRawTcp.median, 2)} x) | ${num(s.predictedTotalTimeMs.median, 0)} (${num(s.modelErrorTotalTime.median * 100, 1)} %; ${num(s.modelErrorTransferTime.median * 100, 1)} %) | ${verified}${s.committed < s.runs ? `, ${s.runs - s.committed} not committed` : ''} |`);
  }
  lines.push('');
  if (results.targets.length > 0) {
    lines.push('## Targets', '', '| what | target | measured (median) | met |', '|---|---|---|---|');
    for (const target of results.targets) lines.push(`| ${target.what} | ${target.target} | ${target.measured} | ${target.met ? 'yes' : '**no**'} |`);
    lines.push('');
  }
  if (results.charts.length > 0) {
    lines.push('## Charts', '');
    for (const chart of results.charts) lines.push(`![${chart}](charts/${chart})`, '');
  }
  return lines.join('\n');
}

export async function writeResults(dir: string, results: BenchResults): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  await writeFile(path.join(dir, 'runs.csv'), toCsv(results.runs));
  await writeFile(path.join(dir, 'summary.md'), toMarkdown(results));
}

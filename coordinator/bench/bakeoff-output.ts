/**
 * A bake-off's results (bakeoff.ts) for people and for the eye: results.json, summary.md with the table and the
 * recommendation, runs.csv, and one chart of downtime, total time, bytes and guest slowdown per policy.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { TopLevelSpec } from 'vega-lite';
import { formatBytes } from '../../shared/units.js';
import type { Environment } from './environment.js';
import type { BakeoffResults, PolicyRun, PolicySummary } from './bakeoff.js';
import type { Spread } from './stats.js';

const MiB = 1024 ** 2;

export interface BakeoffOutput extends BakeoffResults {
  environment: Environment;
  command: string;
  traceFile: string;
  charts: string[];
}

/** A median, with min-max beside it when there was more than one run. */
const figure = (value: Spread | undefined, digits = 1, scale = 1): string => {
  if (!value) return '-';
  const at = (x: number): string => (x / scale).toFixed(digits);
  return value.n > 1 ? `${at(value.median)} (${at(value.min)}-${at(value.max)})` : at(value.median);
};
const int = (value: number): string => Math.round(value).toLocaleString('en-US');
const optionsText = (options: Record<string, unknown>): string => (Object.keys(options).length === 0 ? 'defaults' : `\`${JSON.stringify(options)}\``);

function policyRow(summary: PolicySummary): string {
  if (summary.notRun !== undefined) return `| ${summary.policy} | ${optionsText(summary.options)} | 0 | not run: ${summary.notRun.replaceAll('|', '\\|')} | | | | |`;
  const replay = summary.replayMatches === undefined ? '-' : summary.replayMatches ? 'yes' : '**no**';
  return `| ${summary.policy} | ${optionsText(summary.options)} | ${summary.committed}/${summary.runs} | ${figure(summary.downtimeMs)} | ${figure(summary.totalTimeMs, 0)} | ${figure(summary.bytesSent, 1, MiB)} | ${figure(summary.slowdownPct)} | ${replay} |`;
}

/** The table and the recommendation, as Markdown (also what `ferry bench --trace` prints). */
export function bakeoffMarkdown(results: BakeoffOutput): string {
  const { trace, environment: env } = results;
  const lines = [
    '# ferry policy bake-off', '',
    `Measured ${env.date} on ${env.cores} cores (${env.cpuModel}), Node ${env.node}, ferry ${env.ferry}. Link: ${results.link}.`, '',
    `Command: \`${results.command}\``, '',
    `Trace: ${results.traceFile} (${trace.vm} on ${trace.host}, recorded ${trace.recordedAt}): ${formatBytes(results.memoryBytes)} of memory, ` +
      `${int(trace.samples)} samples of ${trace.intervalMs} ms, ${int(trace.meanDirtyPagesPerSec)} page writes/s on average (at most ${int((trace.peakPagesPerSample * 1000) / trace.intervalMs)}/s in one interval), ` +
      `${int(trace.distinctPages)} distinct pages, a working set of ${int(trace.workingSetPages)} pages (${formatBytes(trace.workingSetPages * 4096)}).`, '',
    `Each run: two fresh agents, a fresh VM replaying the trace with its memory filled (no page zero), ${results.warmupMs} ms of warm-up, one live migration with the policy's options on top of ` +
      `${optionsText(results.baseOptions as unknown as Record<string, unknown>)}, then the destination's memory checked against a replay of the trace. ` +
      `${results.repeat} run(s) per policy; medians of the committed runs, min-max in brackets.`, '',
    '| policy | options | committed | downtime (ms) | total time (ms) | sent (MiB) | guest slowdown (%) | memory matches replay |',
    '|---|---|---|---|---|---|---|---|',
    ...results.policies.map(policyRow),
    '',
    'Guest slowdown: of the page writes the trace\'s timing asks for between the write counts read just before and just after the migration, the share the guest did not make.', '',
    ...results.policies.filter((summary) => summary.postcopy).map((summary) => `${summary.policy}, after the switch: ${figure(summary.postcopy!.faults, 0)} faults on missing pages, holding the vCPU ${figure(summary.postcopy!.stallTotalMs)} ms in all (p99 of one: ${figure(summary.postcopy!.stallP99Ms, 2)} ms).`),
    ...results.policies.filter((summary) => summary.compression).map((summary) => `${summary.policy}, its cache: ${figure(summary.compression!.cacheHits, 0)} hit(s) and ${figure(summary.compression!.cacheMisses, 0)} miss(es) among the pages sent again; the deltas saved ${figure(summary.compression!.bytesSaved, 1, MiB)} MiB, for ${figure(summary.compression!.encodeMs)} ms of the source's CPU.`),
    ...(results.policies.some((summary) => summary.postcopy || summary.compression) ? [''] : []),
    `**Recommendation: ${results.recommendation.policy ?? 'none'}.** ${results.recommendation.reason}.`, '',
    `Rule: ${results.recommendation.rule}.`, '',
  ];
  if (results.charts.length > 0) lines.push(...results.charts.map((chart) => `![${chart}](charts/${chart})`), '');
  return lines.join('\n');
}

const CSV_COLUMNS: [string, (run: PolicyRun) => string | number | undefined][] = [
  ['policy', (run) => run.policy], ['repeat', (run) => run.repeat], ['outcome', (run) => run.outcome], ['error', (run) => run.error],
  ['downtime_ms', (run) => run.downtimeMs?.toFixed(3)], ['total_time_ms', (run) => run.totalTimeMs?.toFixed(1)], ['bytes_sent', (run) => run.bytesSent],
  ['window_ms', (run) => run.windowMs?.toFixed(1)], ['writes_asked', (run) => run.writesAsked], ['writes_made', (run) => run.writesMade],
  ['slowdown_pct', (run) => run.slowdownPct?.toFixed(2)], ['throttle_pct', (run) => run.throttlePct], ['rounds', (run) => run.rounds], ['stop_reason', (run) => run.stopReason],
  ['postcopy_faults', (run) => run.postcopy?.faults], ['postcopy_stall_ms', (run) => run.postcopy?.stallTotalMs.toFixed(2)],
  ['postcopy_stall_p99_ms', (run) => run.postcopy?.stallP99Ms.toFixed(3)],
  ['xbzrle_cache_hits', (run) => run.compression?.cacheHits], ['xbzrle_cache_misses', (run) => run.compression?.cacheMisses],
  ['xbzrle_bytes_saved', (run) => run.compression?.bytesSaved], ['xbzrle_encode_ms', (run) => run.compression?.encodeMs.toFixed(2)],
  ['replay_matches', (run) => (run.replayMatches === undefined ? undefined : String(run.replayMatches))],
];

function csv(runs: PolicyRun[]): string {
  const cell = (value: string | number | undefined): string => (value === undefined ? '' : /[",\n]/.test(String(value)) ? `"${String(value).replaceAll('"', '""')}"` : String(value));
  return `${[CSV_COLUMNS.map(([name]) => name).join(','), ...runs.map((run) => CSV_COLUMNS.map(([, pick]) => cell(pick(run))).join(','))].join('\n')}\n`;
}

/** One chart, four panels: each measure per policy (the policies that ran). */
export function bakeoffChart(results: BakeoffResults): TopLevelSpec | undefined {
  const ran = results.policies.filter((summary) => summary.committed > 0);
  if (ran.length === 0) return undefined;
  const measures: [string, (summary: PolicySummary) => number | undefined][] = [
    ['downtime (ms)', (summary) => summary.downtimeMs?.median],
    ['total time (ms)', (summary) => summary.totalTimeMs?.median],
    ['sent (MiB)', (summary) => (summary.bytesSent === undefined ? undefined : summary.bytesSent.median / MiB)],
    ['guest slowdown (%)', (summary) => summary.slowdownPct?.median],
  ];
  const values = ran.flatMap((summary) => measures.map(([measure, pick]) => ({ policy: summary.policy, measure, value: pick(summary) ?? 0, recommended: summary.policy === results.recommendation.policy ? 'recommended' : 'other' })));
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    background: 'white',
    title: `Policy bake-off on ${results.trace.vm}'s trace (medians of ${results.repeat} run(s) each)`,
    data: { values },
    facet: { field: 'measure', type: 'nominal', title: null, sort: measures.map(([measure]) => measure) },
    columns: 2,
    spec: {
      width: 240,
      height: 160,
      mark: 'bar',
      encoding: {
        x: { field: 'policy', type: 'nominal', sort: ran.map((summary) => summary.policy), title: null },
        y: { field: 'value', type: 'quantitative', title: null },
        color: { field: 'recommended', type: 'nominal', title: null, scale: { domain: ['recommended', 'other'], range: ['#2ca02c', '#7f7f7f'] } },
      },
    },
    resolve: { scale: { y: 'independent' } },
  };
}

export async function writeBakeoff(dir: string, results: BakeoffOutput): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  await writeFile(path.join(dir, 'runs.csv'), csv(results.runs));
  await writeFile(path.join(dir, 'summary.md'), bakeoffMarkdown(results));
}

/**
 * Charts of a benchmark, as SVG (and PNG beside each, where the renderer loads). Specified in Vega-Lite and
 * rendered by Vega without a browser; @resvg/resvg-js turns the SVG into PNG.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import type { RawTcpResult } from './baseline.js';
import type { RunResult } from './runner.js';
import type { ServiceRun } from './service.js';
import type { StorageRun, StorageSummary } from './storage.js';
import type { ScenarioSummary } from './summary.js';

const MiB = 1024 ** 2;
const base = { $schema: 'https://vega.github.io/schema/vega-lite/v6.json', width: 520, height: 300, background: 'white' } as const;

async function render(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  return svg;
}

async function toPng(svg: string): Promise<Buffer | undefined> {
  try {
    const { Resvg } = await import('@resvg/resvg-js');
    return new Resvg(svg, { background: 'white', fitTo: { mode: 'width', value: 1040 } }).render().asPng();
  } catch {
    return undefined; // no renderer for this platform: the SVG stands alone
  }
}

/** The charts this set of runs supports, by file name (without extension). */
function specs(runs: RunResult[], summaries: ScenarioSummary[], rawTcp: RawTcpResult): Record<string, TopLevelSpec> {
  const charts: Record<string, TopLevelSpec> = {};

  // Bytes per round for one migration: the committed run with the most rounds.
  const showcase = [...runs].filter((run) => run.outcome === 'committed').sort((a, b) => b.rounds.length - a.rounds.length)[0];
  if (showcase) {
    const values = [
      ...showcase.rounds.map((round) => ({ round: String(round.round), MiB: round.bytes / MiB, kind: 'pre-copy' })),
      { round: 'stop+copy', MiB: (showcase.stopAndCopyPages * 4096) / MiB, kind: 'stop-and-copy' },
    ];
    charts['bytes-per-round'] = {
      ...base,
      title: `Bytes per round: ${showcase.scenario}, run ${showcase.repeat}`,
      data: { values },
      mark: 'bar',
      encoding: {
        x: { field: 'round', type: 'ordinal', sort: null, title: 'round' },
        y: { field: 'MiB', type: 'quantitative', scale: { type: 'symlog' }, title: 'MiB sent (symlog scale)' },
        color: { field: 'kind', type: 'nominal', title: null },
      },
    };
  }

  // Downtime against dirty rate, for the scenarios that sweep it.
  const sweep = summaries.filter((summary) => summary.dirtyRateOfLink !== undefined && summary.link === 'loopback' && summary.scenario.startsWith('hot-'));
  if (sweep.length > 1) {
    const values = sweep.flatMap((summary) => [
      { dirty: summary.dirtyRateOfLink! * 100, ms: summary.downtimeMs.median, low: summary.downtimeMs.min, high: summary.downtimeMs.max, series: 'measured (median, min-max)' },
      { dirty: summary.dirtyRateOfLink! * 100, ms: summary.predictedDowntimeMs.median, low: summary.predictedDowntimeMs.median, high: summary.predictedDowntimeMs.median, series: 'model' },
    ]);
    charts['downtime-vs-dirty-rate'] = {
      ...base,
      title: 'Downtime against dirty rate (1 GiB, 64 MiB working set)',
      data: { values },
      layer: [
        { mark: { type: 'line', point: true }, encoding: { x: { field: 'dirty', type: 'quantitative', title: 'dirty rate, % of link rate' }, y: { field: 'ms', type: 'quantitative', scale: { type: 'symlog' }, title: 'downtime, ms (symlog)' }, color: { field: 'series', type: 'nominal', title: null } } },
        { mark: 'errorbar', encoding: { x: { field: 'dirty', type: 'quantitative' }, y: { field: 'low', type: 'quantitative' }, y2: { field: 'high' }, color: { field: 'series', type: 'nominal' } } },
      ],
    };
  }

  // Round-1 throughput of each scenario against the raw-TCP line.
  if (summaries.length > 0) {
    const values = summaries.map((summary) => ({ scenario: summary.scenario, MiBs: summary.round1ThroughputBytesPerSec.median / MiB }));
    charts['throughput-vs-raw-tcp'] = {
      ...base,
      title: `Round-1 throughput against raw TCP (${(rawTcp.bytesPerSec / MiB).toFixed(0)} MiB/s)`,
      layer: [
        { data: { values }, mark: 'bar', encoding: { x: { field: 'scenario', type: 'nominal', sort: null, title: null }, y: { field: 'MiBs', type: 'quantitative', title: 'MiB/s' } } },
        { data: { values: [{ y: rawTcp.bytesPerSec / MiB, label: 'raw TCP' }, { y: (0.4 * rawTcp.bytesPerSec) / MiB, label: '40 % of raw TCP' }] }, mark: { type: 'rule', strokeDash: [4, 3] }, encoding: { y: { field: 'y', type: 'quantitative' }, color: { field: 'label', type: 'nominal', title: null } } },
      ],
    };
  }

  // Measured against predicted total time, one point per run.
  const modelled = runs.filter((run) => run.outcome === 'committed' && Number.isFinite(run.predictedTotalTimeMs));
  if (modelled.length > 0) {
    const values = modelled.map((run) => ({ scenario: run.scenario, predicted: run.predictedTotalTimeMs, measured: run.totalTimeMs }));
    const top = Math.max(...values.flatMap((value) => [value.predicted, value.measured])) * 1.05;
    charts['measured-vs-predicted'] = {
      ...base,
      title: 'Total time: measured against the pre-copy model',
      layer: [
        { data: { values: [{ x: 0, y: 0 }, { x: top, y: top }] }, mark: { type: 'line', color: 'gray', strokeDash: [4, 3] }, encoding: { x: { field: 'x', type: 'quantitative' }, y: { field: 'y', type: 'quantitative' } } },
        { data: { values }, mark: { type: 'point', filled: true }, encoding: { x: { field: 'predicted', type: 'quantitative', title: 'predicted total time, ms' }, y: { field: 'measured', type: 'quantitative', title: 'measured total time, ms' }, color: { field: 'scenario', type: 'nominal' } } },
      ],
    };
  }
  return charts;
}

/**
 * Service runs: per migration, the client-observed outage (the longest gap, and the gap spanning the pause) beside the
 * host downtime and the guest blackout, grouped; one panel per scenario, migrations numbered across its repeats.
 */
function serviceSpecs(services: ServiceRun[]): Record<string, TopLevelSpec> {
  const series = ['client-observed outage (longest gap)', 'gap spanning the pause', 'host downtime', 'guest blackout'];
  const values = services.flatMap((run) => run.migrations.flatMap((migration) => {
    const label = `${run.repeat}.${migration.index}`;
    return [migration.outageMs, migration.switchoverGapMs ?? Number.NaN, migration.downtimeMs, migration.guestBlackoutMs]
      .map((ms, i) => ({ scenario: run.scenario, migration: label, series: series[i], ms }))
      .filter((value) => Number.isFinite(value.ms));
  }));
  if (values.length === 0) return {};
  return {
    'service-outage': {
      $schema: base.$schema,
      background: base.background,
      title: 'Per migration: client-observed outage (longest gap; gap spanning the pause), host downtime, guest blackout',
      data: { values },
      facet: { row: { field: 'scenario', type: 'nominal', title: null } },
      spec: {
        // A step per bar (three to a migration), not a fixed width: the bars stay readable however many migrations.
        width: { step: 16 },
        height: 200,
        mark: 'bar',
        encoding: {
          x: { field: 'migration', type: 'ordinal', sort: null, title: 'migration (run.migration)', axis: { labelAngle: 0 } },
          xOffset: { field: 'series', type: 'nominal', sort: series },
          y: { field: 'ms', type: 'quantitative', title: 'ms' },
          color: { field: 'series', type: 'nominal', sort: series, title: null, legend: { labelLimit: 300 } },
        },
      },
      resolve: { scale: { x: 'independent' } },
    },
  };
}

/**
 * Storage moves: the pause against the guest's disk write rate, one line per mode, median with min-max; the disks
 * that start empty (a filled disk's pause says more about its size than its writes). The rate is the one asked: what
 * the guest achieves depends on the mode (a mirror holds each write back) and is in the table beside.
 */
function storageSpecs(summaries: StorageSummary[], runs: StorageRun[]): Record<string, TopLevelSpec> {
  const charts: Record<string, TopLevelSpec> = {};
  // A copy capped below the guest's write rate: each move's pause and how it ended, by mode, against max downtime.
  const capped = runs.filter((run) => run.maxBandwidthBytesPerSec > 0 && !run.filled);
  if (capped.length > 0) {
    const values = capped.flatMap((run) => run.moves.filter((move) => move.outcome === 'moved').map((move) => ({
      move: `${run.repeat}.${move.index}`, ms: move.pauseMs,
      how: move.mode === 'mirror' ? 'mirror' : `iterate (ended by ${move.stopReason ?? '-'})`,
    })));
    const limit = capped[0]!.maxDowntimeMs;
    charts['storage-capped-pause'] = {
      ...base,
      title: `${capped[0]!.scenario}: the copy capped at ${(capped[0]!.maxBandwidthBytesPerSec / MiB).toFixed(0)} MiB/s, below the guest's write rate; pause per move`,
      layer: [
        { data: { values }, mark: 'bar', encoding: { x: { field: 'move', type: 'ordinal', sort: null, title: 'move (run.move, per mode)', axis: { labelAngle: 0 } }, xOffset: { field: 'how', type: 'nominal' }, y: { field: 'ms', type: 'quantitative', scale: { type: 'symlog' }, title: 'pause, ms (symlog)' }, color: { field: 'how', type: 'nominal', title: null, legend: { labelLimit: 400 } } } },
        { data: { values: [{ y: limit, label: `max downtime ${limit} ms` }] }, mark: { type: 'rule', strokeDash: [4, 3] }, encoding: { y: { field: 'y', type: 'quantitative' }, color: { field: 'label', type: 'nominal', title: null } } },
      ],
    };
  }
  const points = summaries.filter((summary) => !summary.filled && summary.maxBandwidthBytesPerSec === 0 && summary.moved > 0 && Number.isFinite(summary.pauseMs.median));
  if (points.length === 0) return charts;
  const values = points.map((summary) => ({
    scenario: summary.scenario, mode: summary.mode, rate: summary.diskRate,
    ms: summary.pauseMs.median, low: summary.pauseMs.min, high: summary.pauseMs.max,
  }));
  const x = { field: 'rate', type: 'quantitative', scale: { type: 'log' }, title: 'guest disk writes/s asked (4 KiB blocks, log)' } as const;
  charts['storage-pause-vs-disk-rate'] = {
    ...base,
    title: 'Storage move: pause against the guest\'s disk write rate, by mode',
    data: { values },
    layer: [
      { mark: { type: 'line', point: true }, encoding: { x, y: { field: 'ms', type: 'quantitative', scale: { type: 'log' }, title: 'pause, ms (log; median, min-max)' }, color: { field: 'mode', type: 'nominal', title: 'mode' } } },
      { mark: 'errorbar', encoding: { x, y: { field: 'low', type: 'quantitative', title: null }, y2: { field: 'high' }, color: { field: 'mode', type: 'nominal' } } },
    ],
  };
  return charts;
}

/** Writes DIR/charts/NAME.svg (and .png) for each spec; returns the file names written, for the report to link. */
export async function writeChartSpecs(dir: string, charts: Record<string, TopLevelSpec>): Promise<string[]> {
  const folder = path.join(dir, 'charts');
  await mkdir(folder, { recursive: true });
  const written: string[] = [];
  for (const [name, spec] of Object.entries(charts)) {
    const svg = await render(spec);
    await writeFile(path.join(folder, `${name}.svg`), svg);
    written.push(`${name}.svg`);
    const png = await toPng(svg);
    if (png) await writeFile(path.join(folder, `${name}.png`), png);
  }
  return written;
}

/** The benchmark's charts, written as writeChartSpecs does. */
export async function writeCharts(dir: string, runs: RunResult[], summaries: ScenarioSummary[], rawTcp: RawTcpResult, services: ServiceRun[] = [], storage: StorageSummary[] = [], storageRuns: StorageRun[] = []): Promise<string[]> {
  return writeChartSpecs(dir, { ...specs(runs, summaries, rawTcp), ...serviceSpecs(services), ...storageSpecs(storage, storageRuns) });
}

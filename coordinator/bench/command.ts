/**
 * `ferry bench`: runs the scenarios, each run with fresh agent processes, and writes the results (JSON, CSV,
 * Markdown, charts) to a folder.
 */
import os from 'node:os';
import path from 'node:path';
import { rm } from 'node:fs/promises';
import { formatRate } from '../../shared/units.js';
import { runProgress, type ProgressStream } from '../progress.js';
import type { RawTcpResult } from './baseline.js';
import { describeEnvironment } from './environment.js';
import { loopbackLink, namespacesLink, type Link } from './link.js';
import { writeResults, type BenchResults } from './output.js';
import { peerRuns, peerStatus, runPeerScenario, type PeerRequest, type PeerScenario } from './peer.js';
import { benchWorkdir, measureBaseline, runScenario, type BenchContext, type RunResult } from './runner.js';
import { defaultScenarioFile, loadScenarios, selectScenarios, type Scenario } from './scenarios.js';
import { runServiceScenario, stepsOf, type ServiceRun } from './service.js';
import { checkStorageTargets, measureRawDisk, runStorageScenario, storageSteps, summarizeStorage, type RawDiskResult, type StorageRun, type StorageSummary } from './storage.js';
import { runSoakScenario, soakSteps, type SoakRun } from './soak.js';
import { baseOptions, runBakeoff } from './bakeoff.js';
import { bakeoffChart, writeBakeoff, type BakeoffOutput } from './bakeoff-output.js';
import type { PolicyName } from './policies.js';
import { readTraceFile } from '../trace/file.js';
import { replayTraceOf } from '../../shared/trace.js';
import { checkTargets, summarize, summarizeService, type ServiceSummary } from './summary.js';

export interface BenchOptions {
  scenarios?: string[];
  scenarioFile?: string;
  repeat: number;
  out?: string;
  /** Run every scenario over this link instead of its own: `namespaces`, or a shaped rate such as `1gbit`. */
  link?: string;
  command: string;
  /** Also migrate a guest of the same size with this peer (QEMU) after ferry's runs of each plain memory scenario. */
  peer?: PeerRequest;
  /** Where progress and notes go (stderr in the CLI): through one display, so a note never lands on a redrawn line. */
  stream?: ProgressStream;
}

export async function runBench(options: BenchOptions): Promise<BenchResults> {
  const all = loadScenarios(options.scenarioFile ?? defaultScenarioFile());
  const selected = selectScenarios(all, options.scenarios);
  // A storage move runs on one host: it crosses no link, and runs on loopback whatever --link says.
  const linkOf = (scenario: Scenario): string => (scenario.storage ? 'loopback' : options.link ?? scenario.link);
  const linkNames = [...new Set(selected.map(linkOf))];

  const runs: RunResult[] = [];
  const baselines: Record<string, RawTcpResult> = {};
  const summaries: BenchResults['summaries'] = [];
  const services: ServiceRun[] = [];
  const serviceSummaries: ServiceSummary[] = [];
  const storageRuns: StorageRun[] = [];
  const storageSummaries: StorageSummary[] = [];
  const soaks: SoakRun[] = [];
  let rawDisk: RawDiskResult | undefined;
  const workdir = benchWorkdir();
  const stream = options.stream ?? process.stderr;
  const status = options.peer ? peerStatus(options.peer) : undefined;
  // The machine's 1-minute load average when the bench began and ended: others' work on it moves every figure.
  const loadAtStart = os.loadavg()[0]!;
  const peers: PeerScenario[] = [];
  const peerSteps = status?.available ? selected.filter((scenario) => peerRuns(scenario, linkOf(scenario))).length : 0;
  const progress = runProgress((selected.reduce((total, scenario) => total + (scenario.storage ? storageSteps(scenario) : scenario.soak ? soakSteps(scenario) : stepsOf(scenario)), 0) + peerSteps) * options.repeat, stream);
  if (status && !status.available) progress.log(`${status.reason}; the bench goes on without it`);
  try {
    for (const wanted of linkNames) {
      let link: Link;
      try {
        link = wanted === 'loopback' ? loopbackLink() : namespacesLink(wanted);
      } catch (error) {
        progress.log(`link ${wanted} is not available here (${(error as Error).message}); running its scenarios on loopback`);
        link = loopbackLink();
      }
      try {
        const smoke = selected.every((scenario) => scenario.smoke);
        progress.log(`measuring raw TCP on ${link.name} ...`);
        const rawTcp = await measureBaseline(link, smoke);
        baselines[link.name] = rawTcp;
        progress.log(`raw TCP on ${link.name}: ${formatRate(rawTcp.bytesPerSec)}`);
        const context: BenchContext = { link, rawTcp, workdir, onStep: (label) => progress.step(label), onNote: (line) => progress.log(line) };
        for (const scenario of selected.filter((entry) => linkOf(entry) === wanted)) {
          if (scenario.storage) {
            if (!rawDisk) {
              // On the file system of the datastores and the shared storage (both under the work folder).
              progress.log(`measuring raw disk writes in ${workdir} ...`);
              rawDisk = await measureRawDisk(workdir, smoke ? 64 * 1024 ** 2 : 1024 ** 3, smoke ? 1 : 3);
              progress.log(`raw disk writes (1 MiB writes, then fsync): ${formatRate(rawDisk.bytesPerSec)}`);
            }
            const scenarioRuns: StorageRun[] = [];
            for (let repeat = 1; repeat <= options.repeat; repeat++) scenarioRuns.push(await runStorageScenario(scenario, repeat, context));
            storageRuns.push(...scenarioRuns);
            storageSummaries.push(...summarizeStorage(scenario, scenarioRuns));
            continue;
          }
          if (scenario.soak) {
            for (let repeat = 1; repeat <= options.repeat; repeat++) soaks.push(await runSoakScenario(scenario, repeat, context));
            continue;
          }
          if (scenario.service) {
            const scenarioRuns: ServiceRun[] = [];
            for (let repeat = 1; repeat <= options.repeat; repeat++) scenarioRuns.push(await runServiceScenario(scenario, repeat, context));
            services.push(...scenarioRuns);
            serviceSummaries.push(summarizeService(scenario, scenarioRuns));
            continue;
          }
          const scenarioRuns: RunResult[] = [];
          for (let repeat = 1; repeat <= options.repeat; repeat++) {
            progress.step(`${scenario.name} #${repeat}`);
            scenarioRuns.push(await runScenario(scenario, repeat, context));
          }
          runs.push(...scenarioRuns);
          summaries.push(summarize(scenario, scenarioRuns, rawTcp));
          if (status) {
            peers.push(await runPeerScenario(scenario, options.repeat, {
              status, workdir, rawTcp, link: link.name, onStep: (label) => progress.step(label), onNote: (line) => progress.log(line),
            }));
          }
        }
      } finally {
        link.teardown();
      }
    }
  } finally {
    progress.finish();
    await rm(workdir, { recursive: true, force: true });
  }

  const results: BenchResults = {
    environment: describeEnvironment([...new Set([...runs, ...services, ...storageRuns, ...soaks].map((run) => run.link))].join(', ')),
    command: options.command,
    repeat: options.repeat,
    baselines,
    summaries,
    targets: checkTargets(summaries),
    runs,
    services,
    serviceSummaries,
    ...(rawDisk ? { rawDisk } : {}),
    storage: storageRuns,
    storageSummaries,
    storageTargets: checkStorageTargets(storageSummaries, rawDisk),
    soaks,
    ...(status ? { peer: { peer: status.peer, available: status.available, downtimeLimitMs: status.downtimeLimitMs, ...(status.version ? { version: status.version } : {}), ...(status.binary ? { binary: status.binary } : {}), ...(status.reason ? { reason: status.reason } : {}), loadAverage: { start: loadAtStart, end: os.loadavg()[0]! } }, peers } : {}),
    charts: [],
  };
  const out = options.out ?? path.join(process.cwd(), 'bench-results', new Date().toISOString().replace(/[:.]/g, '-'));
  const loopbackBaseline = baselines.loopback ?? Object.values(baselines)[0];
  if (loopbackBaseline) {
    // Loaded here, not at start: Vega is a third of every `ferry` command's start-up, and only the benchmark draws.
    const { writeCharts } = await import('./charts.js');
    results.charts = await writeCharts(out, runs, summaries, loopbackBaseline, services, storageSummaries, storageRuns);
  }
  await writeResults(out, results);
  stream.write(`results in ${out}${os.EOL}${os.EOL}`);
  return results;
}

export interface BakeoffCommandOptions {
  traceFile: string;
  policies: PolicyName[];
  repeat: number;
  warmupMs: number;
  maxDowntimeMs?: number;
  maxBandwidthBytesPerSec?: number;
  out?: string;
  link?: string;
  command: string;
  stream?: ProgressStream;
}

/** `ferry bench --trace FILE --policies ...`: the policy bake-off (bakeoff.ts), written to a folder. */
export async function runBakeoffCommand(options: BakeoffCommandOptions): Promise<BakeoffOutput> {
  const trace = await readTraceFile(options.traceFile);
  const replay = replayTraceOf(trace, options.traceFile);
  const stream = options.stream ?? process.stderr;
  const progress = runProgress(options.policies.length * options.repeat, stream);
  const workdir = benchWorkdir();
  let link: Link;
  try {
    link = options.link === undefined || options.link === 'loopback' ? loopbackLink() : namespacesLink(options.link);
  } catch (error) {
    progress.log(`link ${options.link ?? ''} is not available here (${(error as Error).message}); running on loopback`);
    link = loopbackLink();
  }
  let results;
  try {
    results = await runBakeoff({
      trace, replay, policies: options.policies, repeat: options.repeat, warmupMs: options.warmupMs,
      base: baseOptions(options.maxDowntimeMs, options.maxBandwidthBytesPerSec), link, workdir,
      onStep: (label) => progress.step(label), onNote: (line) => progress.log(line),
    });
  } finally {
    link.teardown();
    progress.finish();
    await rm(workdir, { recursive: true, force: true });
  }
  const out = options.out ?? path.join(process.cwd(), 'bench-results', `bakeoff-${new Date().toISOString().replace(/[:.]/g, '-')}`);
  const chart = bakeoffChart(results);
  // Loaded here, as for the main bench: Vega is slow to load and only the benchmark draws.
  const charts = chart ? await (await import('./charts.js')).writeChartSpecs(out, { 'policy-bakeoff': chart }) : [];
  const output: BakeoffOutput = { ...results, environment: describeEnvironment(link.name), command: options.command, traceFile: options.traceFile, charts };
  await writeBakeoff(out, output);
  stream.write(`results in ${out}${os.EOL}${os.EOL}`);
  return output;
}

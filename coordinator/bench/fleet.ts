/**
 * `ferry bench-fleet`: fleet operations measured on real agents, all on this machine.
 *
 *   drain      N agents and M small pattern VMs, one host holding `drainVms` of them. The host is drained with each
 *              --parallel in turn; between two drains its VMs come back one migration at a time, and those single
 *              migrations are the baseline a drain's time is set against (their sum).
 *   balance    the same VMs started on 3 hosts only; one `balance --apply`: deviation before and after, the moves it
 *              made, and the fewest moves that reach the threshold (the same greedy plan by gain alone: with VMs of
 *              one size, no plan reaches it in fewer).
 *   steady     rounds of balance on the balanced cluster, with the default metric: the moves they make (none wanted).
 *   fault      a drain whose first destination is killed while the page stream runs: where the VM ends up (exactly one
 *              host), whether its memory matches replay, and whether the drain finished elsewhere.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import type { MigrationOptions } from '../../shared/protocol.js';
import { formatDuration } from '../../shared/units.js';
import type { Cluster, HostEntry } from '../cluster.js';
import { withHost } from '../connect.js';
import { readMemory } from '../dump.js';
import { balanceOnce, planBalance, runningVms, type BalanceOptions } from '../fleet/balance.js';
import { drainHost, undrainHost, type DrainReport } from '../fleet/drain.js';
import { forecaster } from '../forecast.js';
import { allVms, surveyHosts } from '../inventory.js';
import { startLocalAgent, type LocalAgent } from '../local-agent.js';
import { migrateLive } from '../migrate.js';
import { checkPattern } from '../pattern-check.js';
import { toVmRequest } from '../vm-spec.js';
import { DEFAULT_MAX_DOWNTIME_MS, STOP_RULES } from '../../shared/constants.js';
import { benchWorkdir } from './runner.js';
import { percentile } from './stats.js';

export interface FleetBenchOptions {
  agents: number;
  vms: number;
  drainVms: number;
  parallel: number[];
  memory: string;
  rate: number;
  steadyRounds: number;
  out: string;
  /** Drain and balance with forecasts (link measurements and all), as the commands do by default. */
  forecast: boolean;
  onNote?: (line: string) => void;
}

export interface DrainRun {
  parallel: number;
  totalTimeMs: number;
  /** The same VMs moved back one at a time: the sum of their migrations' times. */
  sumOfSinglesMs: number;
  speedup: number;
  downtimeMs: { median: number; p95: number; max: number };
  moved: number;
  failed: number;
}

export interface FleetBenchResults {
  when: string;
  agents: number;
  vms: number;
  memory: string;
  rate: number;
  drains: DrainRun[];
  balance: { metric: string; threshold: number; deviationBefore: number; deviationAfter: number; moves: number; committed: number; fewestMoves: number; timeMs: number };
  steady: { metric: string; rounds: number; moves: number; deviations: number[] };
  fault: { vm: string; killed: string; endedOn: string[]; attempts: number; replayMatches: boolean; drainFinished: boolean; movedTo: string };
}

const migration = (): MigrationOptions => ({ maxDowntimeMs: DEFAULT_MAX_DOWNTIME_MS, maxBandwidthBytesPerSec: 0, maxRounds: STOP_RULES.maxRounds, verify: 'pages', autoConverge: false });

export async function runFleetBench(options: FleetBenchOptions): Promise<FleetBenchResults> {
  const note = options.onNote ?? (() => undefined);
  const workdir = path.join(benchWorkdir(), `fleet-${process.pid}`);
  await mkdir(workdir, { recursive: true });
  const token = randomBytes(24).toString('hex');
  const agents: LocalAgent[] = [];
  const memoryBytes = toVmRequest('probe', { memory: options.memory, workload: 'pattern', rate: String(options.rate), seed: '1' }).memoryBytes;
  // Room for every VM on 3 hosts (the balance phase), and a little over.
  const capacityBytes = Math.ceil(options.vms / 3 + 2) * memoryBytes;
  const start = async (name: string, env: Record<string, string> = {}): Promise<HostEntry> => {
    const agent = await startLocalAgent({ name, datastore: path.join(workdir, name), capacity: String(capacityBytes), logLevel: 'warn', token, env });
    agents.push(agent);
    return { name, url: agent.url, token };
  };
  try {
    const names = Array.from({ length: options.agents }, (_, index) => `host-${String(index + 1).padStart(2, '0')}`);
    note(`starting ${options.agents} agents ...`);
    const cluster: Cluster = { hosts: await Promise.all(names.map((name) => start(name))) };
    const forecast = options.forecast ? forecaster(cluster) : undefined;
    const create = async (vm: string, host: string, seed: number): Promise<void> => {
      const request = toVmRequest(vm, { memory: options.memory, workload: 'pattern', rate: String(options.rate), seed: String(seed), wss: options.memory });
      await withHost(cluster.hosts.find((entry) => entry.name === host)!, (client) => client.request('vm.create', { ...request, cpuModel: { model: 'host' } }));
    };

    // Drain: `drainVms` on the first host, the rest spread over the others.
    const drained = names[0]!;
    note(`creating ${options.vms} VMs of ${options.memory} ...`);
    for (let i = 0; i < options.vms; i++) {
      const host = i < options.drainVms ? drained : names[1 + ((i - options.drainVms) % (names.length - 1))]!;
      await create(`vm${String(i + 1).padStart(2, '0')}`, host, i + 1);
    }
    const drains: DrainRun[] = [];
    for (const parallel of options.parallel) {
      note(`drain of ${drained} with --parallel ${parallel} ...`);
      const report = await drainHost(cluster, drained, { parallel, stopped: 'cold', attempts: 3, deadlineMs: 5 * 60_000, migration: migration(), by: 'bench' }, { forecast });
      await undrainHost(cluster, drained);
      // Back one at a time: the single migrations the drain is set against.
      let sumOfSinglesMs = 0;
      for (const move of report.moved) {
        const back = await migrateLive(cluster, { vm: move.vm, to: drained, options: migration() });
        if (back.outcome !== 'committed') throw new FerryError(ErrorCode.INTERNAL, `${move.vm} did not come back to ${drained}: ${back.error?.message ?? back.outcome}`);
        sumOfSinglesMs += back.totalTimeMs;
      }
      drains.push(summarizeDrain(parallel, report, sumOfSinglesMs));
      note(`  ${formatDuration(report.totalTimeMs)} for ${report.moved.length} VMs (sum of single migrations ${formatDuration(sumOfSinglesMs)}), downtime median ${drains.at(-1)!.downtimeMs.median.toFixed(1)} ms`);
    }

    // Balance: every VM on the first 3 hosts.
    note('moving every VM onto 3 hosts ...');
    const crowded = names.slice(0, 3);
    for (const vm of allVms(await surveyHosts(cluster))) {
      const index = Number(vm.name.slice(2)) - 1;
      const to = crowded[index % 3]!;
      if (vm.host !== to) {
        const moved = await migrateLive(cluster, { vm: vm.name, to, options: migration() });
        if (moved.outcome !== 'committed') throw new FerryError(ErrorCode.INTERNAL, `${vm.name} did not move to ${to}: ${moved.error?.message ?? moved.outcome}`);
      }
    }
    const balanceOptions: BalanceOptions = { metric: 'memory', threshold: 0.1, maxMoves: options.vms, cooldownMs: 10 * 60_000, migration: migration() };
    const surveys = await surveyHosts(cluster);
    const fewest = planBalance({ surveys, vms: await runningVms(surveys), options: balanceOptions, frozen: new Map(), refused: new Map(), cost: () => 1000 });
    note('balance --apply ...');
    const balanceStart = performance.now();
    const balanced = await balanceOnce(cluster, balanceOptions, true, { forecast });
    const balance = {
      metric: balanceOptions.metric, threshold: balanceOptions.threshold,
      deviationBefore: balanced.imbalanceBefore, deviationAfter: balanced.imbalanceAfter,
      moves: balanced.moves.length, committed: balanced.applied.filter((move) => move.outcome === 'committed').length,
      fewestMoves: fewest.moves.length, timeMs: performance.now() - balanceStart,
    };
    note(`  deviation ${balance.deviationBefore.toFixed(3)} → ${balance.deviationAfter.toFixed(3)} in ${balance.moves} moves (fewest: ${balance.fewestMoves})`);

    // Steady: rounds of the default balance (both metrics) on the balanced cluster, a second apart.
    const steadyOptions: BalanceOptions = { ...balanceOptions, metric: 'both', maxMoves: 10 };
    const deviations: number[] = [];
    let steadyMoves = 0;
    for (let round = 0; round < options.steadyRounds; round++) {
      const result = await balanceOnce(cluster, steadyOptions, true, { forecast });
      deviations.push(result.imbalanceBefore);
      steadyMoves += result.applied.length;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    note(`  ${options.steadyRounds} steady rounds: ${steadyMoves} moves`);

    // Fault: a host whose first drain destination dies while the pages stream (the source holds round 1 for 3 s).
    note('drain with its destination killed mid-way ...');
    const faulty = await start('host-fault', { FERRY_FAULTS: 'delay@round-1' });
    cluster.hosts.push(faulty);
    await create('victim', 'host-fault', 99);
    await new Promise((resolve) => setTimeout(resolve, 500));
    let killed = '';
    const draining = drainHost(cluster, 'host-fault', { parallel: 1, stopped: 'cold', attempts: 3, deadlineMs: 5 * 60_000, migration: migration() }, { forecast });
    for (let waited = 0; waited < 20_000 && !killed; waited += 100) {
      const arriving = (await surveyHosts(cluster)).find((survey) => survey.host.name !== 'host-fault' && survey.info?.vms.some((vm) => vm.name === 'victim'));
      if (arriving) {
        killed = arriving.host.name;
        await agents.find((agent) => agent.name === killed)!.stop(0);
      } else {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
    const faultReport = await draining;
    const holders = allVms(await surveyHosts(cluster)).filter((vm) => vm.name === 'victim');
    let replayMatches = false;
    if (holders.length === 1) {
      const { info, image } = await withHost(cluster.hosts.find((entry) => entry.name === holders[0]!.host)!, (client) => readMemory(client, 'victim'));
      replayMatches = checkPattern(info, image).ok;
    }
    const fault = {
      vm: 'victim', killed, endedOn: holders.map((vm) => vm.host),
      attempts: faultReport.moved[0]?.attempts ?? faultReport.failed[0]?.attempts.length ?? 0,
      replayMatches, drainFinished: faultReport.failed.length === 0 && faultReport.moved.length === 1, movedTo: faultReport.moved[0]?.to ?? '-',
    };
    note(`  killed ${killed}; the VM is on ${fault.endedOn.join(', ')}; replay ${replayMatches ? 'matches' : 'DIFFERS'}`);

    const results: FleetBenchResults = {
      when: new Date().toISOString(), agents: options.agents, vms: options.vms, memory: options.memory, rate: options.rate,
      drains, balance, steady: { metric: steadyOptions.metric, rounds: options.steadyRounds, moves: steadyMoves, deviations }, fault,
    };
    await mkdir(options.out, { recursive: true });
    await writeFile(path.join(options.out, 'fleet.json'), `${JSON.stringify(results, null, 2)}\n`);
    await writeFile(path.join(options.out, 'fleet.md'), fleetMarkdown(results));
    return results;
  } finally {
    await Promise.all(agents.map((agent) => agent.stop(2000)));
    await rm(workdir, { recursive: true, force: true });
  }
}

function summarizeDrain(parallel: number, report: DrainReport, sumOfSinglesMs: number): DrainRun {
  const downtimes = report.moved.map((move) => move.downtimeMs).filter((value): value is number => value !== undefined).sort((a, b) => a - b);
  return {
    parallel,
    totalTimeMs: report.totalTimeMs,
    sumOfSinglesMs,
    speedup: report.totalTimeMs > 0 ? sumOfSinglesMs / report.totalTimeMs : 0,
    downtimeMs: { median: percentile(downtimes, 0.5), p95: percentile(downtimes, 0.95), max: downtimes.at(-1) ?? 0 },
    moved: report.moved.length,
    failed: report.failed.length,
  };
}

export function fleetMarkdown(results: FleetBenchResults): string {
  const lines = [
    `# Fleet benchmark (${results.when})`,
    '',
    `${results.agents} agents on this machine, ${results.vms} pattern VMs of ${results.memory} writing ${results.rate} pages/s each.`,
    '',
    '## Drain of one host',
    '',
    '| --parallel | VMs moved | drain time | sum of single migrations | speed-up | downtime median | p95 | max |',
    '|---|---|---|---|---|---|---|---|',
    ...results.drains.map((run) => `| ${run.parallel} | ${run.moved}${run.failed > 0 ? ` (${run.failed} failed)` : ''} | ${formatDuration(run.totalTimeMs)} | ${formatDuration(run.sumOfSinglesMs)} | ${run.speedup.toFixed(2)}× | ${run.downtimeMs.median.toFixed(1)} ms | ${run.downtimeMs.p95.toFixed(1)} ms | ${run.downtimeMs.max.toFixed(1)} ms |`),
    '',
    '## Balance of a cluster whose VMs all start on 3 hosts',
    '',
    `By ${results.balance.metric}, threshold ${results.balance.threshold}: deviation ${results.balance.deviationBefore.toFixed(3)} → ${results.balance.deviationAfter.toFixed(3)}, ${results.balance.moves} moves planned, ${results.balance.committed} committed, in ${formatDuration(results.balance.timeMs)}; the fewest moves that reach the threshold: ${results.balance.fewestMoves}.`,
    '',
    `Then ${results.steady.rounds} rounds of balance --apply (metric ${results.steady.metric}) on the balanced cluster: ${results.steady.moves} moves; deviation per round ${results.steady.deviations.map((value) => value.toFixed(3)).join(', ')}.`,
    '',
    '## Destination killed mid-drain',
    '',
    `${results.fault.vm}'s first destination (${results.fault.killed}) was killed during its pre-copy: the VM ended on ${results.fault.endedOn.join(', ')} (${results.fault.endedOn.length === 1 ? 'exactly one host' : 'NOT exactly one host'}), after ${results.fault.attempts} attempts; its memory ${results.fault.replayMatches ? 'matches' : 'does NOT match'} replay; the drain ${results.fault.drainFinished ? `finished (to ${results.fault.movedTo})` : 'did NOT finish'}.`,
    '',
  ];
  return lines.join('\n');
}

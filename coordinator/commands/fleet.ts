/**
 * `ferry host drain|undrain|health` and `ferry balance`: the fleet's command line (coordinator/fleet/ does the work).
 */
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import { Option, type Command } from 'commander';
import { DEFAULT_MAX_DOWNTIME_MS, STOP_RULES } from '../../shared/constants.js';
import { ErrorCode, FerryError, toFerryError } from '../../shared/errors.js';
import { formatDuration, parseCount, parseDuration } from '../../shared/units.js';
import { findHost, type Cluster } from '../cluster.js';
import { withHost } from '../connect.js';
import { balanceOnce, checkBalanceOptions, type BalanceOptions, type BalancePlan, type AppliedMove, type Metric } from '../fleet/balance.js';
import { drainHost, undrainHost, type DrainEvent, type DrainReport } from '../fleet/drain.js';
import type { FleetStore, Forecaster } from '../fleet/fleet-store.js';
import { fleetMarkdown, runFleetBench } from '../bench/fleet.js';
import { surveyHosts } from '../inventory.js';
import { migrationOptions } from '../migrate-options.js';
import { ExitCode, formatTable, printJson } from '../output.js';
import { sleepUnlessAborted } from '../../shared/sleep.js';

export interface FleetContext {
  cluster: Cluster;
  store?: FleetStore | undefined;
  forecast?: Forecaster | undefined;
}

/** `--no-forecast`: the context without its forecaster. */
function withoutForecast(context: FleetContext, forecast: boolean): FleetContext {
  return forecast ? context : { ...context, forecast: undefined };
}

/** Who acts, for the records a drain or a balance leaves: user@machine. */
export function actor(): string {
  return `${os.userInfo().username}@${os.hostname()}`;
}

const migrationFlags = (command: Command): Command => command
  .option('--max-downtime <duration>', 'each live migration\'s downtime goal (as `ferry migrate`)', `${DEFAULT_MAX_DOWNTIME_MS}ms`)
  .option('--max-bandwidth <rate>', 'cap on each page stream, e.g. 1GiB/s (default: none)')
  .option('--max-rounds <n>', 'cap on pre-copy rounds', String(STOP_RULES.maxRounds))
  .option('--auto-converge', 'throttle vCPUs that outrun the link (as `ferry migrate --auto-converge`)');

interface MigrationFlags { maxDowntime: string; maxBandwidth?: string; maxRounds: string; autoConverge?: boolean }

const options = (raw: MigrationFlags) => migrationOptions({ maxDowntime: raw.maxDowntime, maxBandwidth: raw.maxBandwidth, maxRounds: raw.maxRounds, verify: 'pages', autoConverge: raw.autoConverge });

export function addFleetCommands(program: Command, contextOf: (command: Command) => Promise<FleetContext>): void {
  const host = program.command('host').description('one host\'s standing: maintenance (drain, undrain) and health');

  migrationFlags(host.command('drain <host>'))
    .description('maintenance mode: the host takes no new VMs, and every VM on it moves to the best other host')
    .option('--parallel <n>', 'VMs moving at once (at most 2 arrive on any one host at a time)', '2')
    .addOption(new Option('--stopped <what>', 'powered-off and suspended VMs: cold-migrate them, or leave them (stay)').choices(['cold', 'stay']).default('cold'))
    .option('--attempts <n>', 'tries per VM, each to another host', '3')
    .option('--deadline <duration>', 'how long one VM may take, its tries together (a live migration past it is rolled back)', '5m')
    .option('--no-forecast', 'choose destinations by room and load only, without forecasting each move (no link measurements)')
    .option('--json', 'print the report as JSON')
    .option('--quiet', 'no progress on stderr')
    .addHelpText('after', `
Running VMs move live (with --copy-storage when their disks are local); powered-off and suspended ones move cold.
Each goes to the host with room, its CPU flags, the least load, and a forecast that converges. A VM no host can take is
listed with every host's reason; nothing loops: tries and a deadline bound each VM. Run it again to resume; the host
stays in maintenance until \`ferry host undrain HOST\`.
Exit status: 0 when the host is empty (but for VMs left by --stopped stay), 1 when some VM could not move.`)
    .action(async (name: string, raw: MigrationFlags & { parallel: string; stopped: 'cold' | 'stay'; attempts: string; deadline: string; forecast: boolean; json?: boolean; quiet?: boolean }, command: Command) => {
      const context = withoutForecast(await contextOf(command), raw.forecast);
      const report = await drainHost(context.cluster, name, {
        parallel: parseCount(raw.parallel, '--parallel'),
        stopped: raw.stopped,
        attempts: parseCount(raw.attempts, '--attempts'),
        deadlineMs: parseDuration(raw.deadline),
        migration: options(raw),
        by: actor(),
      }, {
        store: context.store,
        forecast: context.forecast,
        ...(raw.quiet || raw.json ? {} : { onEvent: (event: DrainEvent) => process.stderr.write(`${drainEventLine(event)}\n`) }),
      });
      if (raw.json) printJson(report);
      else process.stdout.write(`${formatDrainReport(report)}\n`);
      process.exitCode = report.failed.length === 0 ? ExitCode.OK : ExitCode.FAILED;
    });

  host.command('undrain <host>')
    .description('end maintenance: the host takes new VMs again (VMs that left do not come back by themselves)')
    .option('--json', 'print JSON')
    .action(async (name: string, raw: { json?: boolean }, command: Command) => {
      const context = await contextOf(command);
      const info = await undrainHost(context.cluster, name, { store: context.store });
      if (raw.json) printJson({ host: name, maintenance: info.maintenance ?? null, health: info.health });
      else process.stdout.write(`${name} is out of maintenance: it takes new VMs and incoming migrations again\n`);
    });

  host.command('health <host>')
    .description('mark a host degraded (it gets no new VMs; `balance --watch` empties it) or healthy; without a flag, show its health')
    .option('--degraded <reason>', 'why, in words (e.g. "fan failure predicted")')
    .option('--healthy', 'clear an operator\'s degraded mark (the host\'s own signals stay until they pass)')
    .option('--json', 'print JSON')
    .action(async (name: string, raw: { degraded?: string; healthy?: boolean; json?: boolean }, command: Command) => {
      if (raw.degraded !== undefined && raw.healthy) throw new FerryError(ErrorCode.BAD_INPUT, '--degraded and --healthy contradict each other', 'give one of them');
      if (raw.degraded !== undefined && raw.degraded.trim() === '') throw new FerryError(ErrorCode.BAD_INPUT, '--degraded needs a reason', 'e.g. --degraded "disk errors on sdb"');
      const context = await contextOf(command);
      const entry = findHost(context.cluster, name);
      const change = raw.degraded !== undefined ? { degraded: raw.degraded } : raw.healthy ? { degraded: null } : {};
      const info = await withHost(entry, (client) => (Object.keys(change).length > 0 ? client.request('host.state', change) : client.request('host.info', {})));
      if (raw.degraded !== undefined || raw.healthy) {
        await context.store?.setHostFlags(name, { degraded: raw.degraded !== undefined ? { reason: raw.degraded, since: new Date().toISOString() } : undefined });
      }
      const health = info.health ?? { state: 'healthy' as const, reasons: [] };
      if (raw.json) {
        printJson({ host: name, health, maintenance: info.maintenance ?? null });
        return;
      }
      process.stdout.write(`${name}: ${health.state}${info.maintenance ? ', in maintenance' : ''}\n`);
      for (const reason of health.reasons) process.stdout.write(`  ${reason.source}: ${reason.reason} (since ${reason.since})\n`);
    });

  migrationFlags(program.command('balance'))
    .description('spread load over the hosts: plan moves that bring the deviation of host loads under a threshold, and with --apply make them')
    .addOption(new Option('--metric <metric>', 'what load is: memory held ÷ capacity, vCPU time ÷ cores, or the mean of both').choices(['cpu', 'memory', 'both']).default('both'))
    .option('--threshold <deviation>', 'the standard deviation of host loads to reach (0-1)', '0.1')
    .option('--max-moves <n>', 'moves per round at most', '10')
    .option('--cooldown <duration>', 'a VM moved within this long stays put (no ping-pong)', '10m')
    .option('--apply', 'make the moves (without it, only print the plan)')
    .option('--watch <interval>', 'run a round every interval until Ctrl-C; also empties hosts that report themselves degraded (with --apply). One balancer acts at a time (the cluster store elects it)')
    .option('--rounds <n>', 'with --watch: stop after this many rounds')
    .option('--no-forecast', 'rank moves per GiB of memory and check none with a forecast (no link measurements)')
    .option('--json', 'print JSON (with --watch, one line per round)')
    .addHelpText('after', `
Host load is normalised by capacity (VMware DRS); the imbalance is the standard deviation of the loads of the hosts
that are up, not in maintenance and not degraded. Each move is chosen for the imbalance it removes per second of its
forecast (or per GiB of memory where no forecast is made); a move whose forecast downtime breaks --max-downtime, or
that would not converge, is dropped.
Exit status: 0 when the plan was made (and applied, with --apply), 1 when an applied move failed.`)
    .action(async (raw: MigrationFlags & { metric: Metric; threshold: string; maxMoves: string; cooldown: string; apply?: boolean; watch?: string; rounds?: string; forecast: boolean; json?: boolean }, command: Command) => {
      const context = withoutForecast(await contextOf(command), raw.forecast);
      const balance = checkBalanceOptions({
        metric: raw.metric,
        threshold: Number(raw.threshold),
        maxMoves: parseCount(raw.maxMoves, '--max-moves'),
        cooldownMs: parseDuration(raw.cooldown),
        migration: options(raw),
      });
      if (raw.rounds !== undefined && raw.watch === undefined) throw new FerryError(ErrorCode.BAD_INPUT, '--rounds goes with --watch', 'e.g. --watch 30s --rounds 10');
      const hooks = {
        store: context.store,
        forecast: context.forecast,
        by: actor(),
        ...(raw.json ? {} : { onEvent: (event: { kind: 'applying'; move: { vm: string; from: string; to: string } } | { kind: 'applied'; applied: AppliedMove }) => {
          if (event.kind === 'applied') process.stderr.write(`${appliedLine(event.applied)}\n`);
        } }),
      };
      if (raw.watch === undefined) {
        const result = await balanceOnce(context.cluster, balance, raw.apply ?? false, hooks);
        if (raw.json) printJson(result);
        else process.stdout.write(`${formatPlan(result, raw.apply ?? false)}\n`);
        process.exitCode = result.applied.every((move) => move.outcome === 'committed') ? ExitCode.OK : ExitCode.FAILED;
        return;
      }
      await watch(context, balance, {
        intervalMs: parseDuration(raw.watch),
        rounds: raw.rounds === undefined ? Infinity : parseCount(raw.rounds, '--rounds'),
        apply: raw.apply ?? false,
        json: raw.json ?? false,
      }, hooks);
    });
}

export function addFleetBenchCommand(program: Command): void {
  program.command('bench-fleet')
    .description('measure fleet operations on real agents on this machine: drains at several --parallel, a balance, steady rounds, a drain whose destination dies')
    .option('--agents <n>', 'agents to start', '12')
    .option('--vms <n>', 'pattern VMs in all', '48')
    .option('--drain-vms <n>', 'VMs on the host that is drained', '8')
    .option('--parallel <list>', 'the drain\'s --parallel values to measure, comma-separated', '1,2,4')
    .option('--memory <size>', 'each VM\'s memory', '32MiB')
    .option('--rate <writes>', 'each VM\'s page writes per second', '500')
    .option('--steady-rounds <n>', 'balance rounds on the balanced cluster', '10')
    .option('--no-forecast', 'drain and balance without forecasts')
    .option('--out <dir>', 'where to write fleet.json and fleet.md', `bench-results/fleet-${new Date().toISOString().replace(/[:.]/g, '-')}`)
    .option('--json', 'print the results as JSON')
    .action(async (raw: { agents: string; vms: string; drainVms: string; parallel: string; memory: string; rate: string; steadyRounds: string; forecast: boolean; out: string; json?: boolean }) => {
      const agents = parseCount(raw.agents, '--agents');
      const vms = parseCount(raw.vms, '--vms');
      const drainVms = parseCount(raw.drainVms, '--drain-vms');
      if (agents < 4) throw new FerryError(ErrorCode.BAD_INPUT, '--agents must be at least 4', 'the balance phase crowds 3 hosts and needs others to spread to');
      if (drainVms > vms) throw new FerryError(ErrorCode.BAD_INPUT, '--drain-vms is more than --vms', 'e.g. --vms 48 --drain-vms 8');
      const results = await runFleetBench({
        agents, vms, drainVms,
        parallel: raw.parallel.split(',').map((value) => parseCount(value.trim(), '--parallel')),
        memory: raw.memory, rate: parseCount(raw.rate, '--rate'), steadyRounds: parseCount(raw.steadyRounds, '--steady-rounds'), out: raw.out,
        forecast: raw.forecast, onNote: (line) => process.stderr.write(`${line}\n`),
      });
      if (raw.json) printJson(results);
      else process.stdout.write(fleetMarkdown(results));
      process.exitCode = results.fault.replayMatches && results.fault.drainFinished && results.drains.every((run) => run.failed === 0) ? ExitCode.OK : ExitCode.FAILED;
    });
}

/**
 * `balance --watch`: a round every interval, acting only while this balancer leads (the store's election: with etcd,
 * one balancer in the whole fleet; with the cluster file, one per cluster file). Degraded hosts are emptied first.
 */
async function watch(context: FleetContext, balance: BalanceOptions, run: { intervalMs: number; rounds: number; apply: boolean; json: boolean }, hooks: Parameters<typeof balanceOnce>[3]): Promise<void> {
  const stop = new AbortController();
  const onSigint = (): void => stop.abort(new FerryError(ErrorCode.CANCELLED, 'balance --watch stopped (Ctrl-C)'));
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigint);
  const id = `${actor()}/${process.pid}/${randomUUID().slice(0, 8)}`;
  const say = (line: string): void => {
    if (!run.json) process.stderr.write(`${line}\n`);
  };
  let failures = 0;
  type Leadership = Awaited<ReturnType<FleetStore['campaign']>>;
  // Only a balancer that acts needs to lead: one that prints plans (no --apply) keeps no other from acting.
  const leads = run.apply && context.store !== undefined;
  let leadership: Leadership | undefined;
  /** Aborted when this balancer stops leading (or is stopped): a round under way makes no further move. */
  let acting: AbortController | undefined;
  try {
    for (let round = 1; round <= run.rounds && !stop.signal.aborted; round++) {
      if (leads && !leadership) {
        say(`balancer ${id}: waiting to lead (another balancer may be acting)`);
        leadership = await context.store!.campaign('balance', id, { signal: stop.signal }).catch((error: unknown) => {
          if (stop.signal.aborted) return undefined;
          throw error;
        });
        if (!leadership) break;
        say(`balancer ${id}: leading`);
        const held = leadership;
        const controller = new AbortController();
        acting = controller;
        void held.lost.then(() => {
          controller.abort(new FerryError(ErrorCode.CANCELLED, `balancer ${id} lost the lead: it makes no further move`, 'another balancer leads now'));
          if (leadership === held) leadership = undefined;
          say(`balancer ${id}: lost the lead`);
        });
      }
      const signal = acting ? AbortSignal.any([stop.signal, acting.signal]) : stop.signal;
      const startedAt = new Date().toISOString();
      // A round that fails (a host or the store not answering) is said, and the next round tries again.
      try {
        const evacuated = run.apply ? await evacuateDegraded(context, balance, hooks, signal) : [];
        const result = await balanceOnce(context.cluster, balance, run.apply, { ...hooks, signal });
        failures += result.applied.filter((move) => move.outcome !== 'committed').length + evacuated.reduce((sum, entry) => sum + entry.failed, 0);
        if (run.json) process.stdout.write(`${JSON.stringify({ round, at: startedAt, endedAt: new Date().toISOString(), leader: leads ? id : null, evacuated, ...result })}\n`);
        else process.stdout.write(`round ${round} (${startedAt}): ${summaryLine(result, run.apply)}${evacuated.length > 0 ? `; evacuated ${evacuated.map((entry) => `${entry.host} (${entry.moved} moved, ${entry.failed} failed)`).join(', ')}` : ''}\n`);
      } catch (error) {
        failures += 1;
        const failure = toFerryError(error);
        if (run.json) process.stdout.write(`${JSON.stringify({ round, at: startedAt, endedAt: new Date().toISOString(), leader: leads ? id : null, error: failure.toPayload() })}\n`);
        else process.stdout.write(`round ${round} (${startedAt}): failed: ${failure.message}\n`);
      }
      if (round < run.rounds) await sleepUnlessAborted(run.intervalMs, stop.signal);
    }
  } finally {
    await leadership?.resign().catch(() => undefined);
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigint);
  }
  process.exitCode = failures === 0 ? ExitCode.OK : ExitCode.FAILED;
}

/** Hosts that report themselves degraded (and are not already in maintenance): their running VMs move off. */
async function evacuateDegraded(context: FleetContext, balance: BalanceOptions, hooks: Parameters<typeof balanceOnce>[3], signal: AbortSignal): Promise<{ host: string; moved: number; failed: number; error?: string }[]> {
  const surveys = await surveyHosts(context.cluster);
  const degraded = surveys.filter((survey) => survey.info?.health?.state === 'degraded' && !survey.info.maintenance && survey.info.vms.some((vm) => vm.state === 'running' || vm.state === 'paused'));
  const done = [];
  for (const survey of degraded) {
    if (signal.aborted) break;
    try {
      const report = await drainHost(context.cluster, survey.host.name, {
        parallel: 2, stopped: 'stay', attempts: 3, deadlineMs: 5 * 60_000, migration: balance.migration, maintenance: false, ...(hooks?.by ? { by: hooks.by } : {}),
      }, { store: context.store, forecast: context.forecast, signal });
      done.push({ host: survey.host.name, moved: report.moved.length, failed: report.failed.length });
    } catch (error) {
      // The degraded host stopped answering (as failing hosts do): said, and tried again next round.
      done.push({ host: survey.host.name, moved: 0, failed: 1, error: toFerryError(error).message });
    }
  }
  return done;
}


const pct = (value: number): string => `${(value * 100).toFixed(1)} %`;

function summaryLine(plan: BalancePlan & { applied: AppliedMove[] }, apply: boolean): string {
  const moves = plan.moves.length;
  const state = plan.imbalanceBefore <= plan.threshold
    ? `balanced (deviation ${pct(plan.imbalanceBefore)} ≤ ${pct(plan.threshold)}), no move`
    : moves === 0
      ? `deviation ${pct(plan.imbalanceBefore)}, over ${pct(plan.threshold)}, but no move can lower it now (why: below)`
      : `deviation ${pct(plan.imbalanceBefore)} → ${pct(plan.imbalanceAfter)} with ${moves} move${moves === 1 ? '' : 's'}`;
  if (!apply || moves === 0) return state;
  const committed = plan.applied.filter((move) => move.outcome === 'committed').length;
  return `${state}; ${committed} of ${plan.applied.length} applied`;
}

export function appliedLine(move: AppliedMove): string {
  return `  ${move.vm}: ${move.from} → ${move.to} ${move.outcome}${move.outcome === 'committed' ? ` in ${formatDuration(move.totalTimeMs)}${move.downtimeMs !== undefined ? `, downtime ${formatDuration(move.downtimeMs)}` : ''}` : `: ${move.error ?? ''}`}`;
}

export function formatPlan(plan: BalancePlan & { applied: AppliedMove[] }, apply: boolean): string {
  const lines = [`balance by ${plan.metric}: ${summaryLine(plan, apply)}`];
  lines.push(formatTable([
    ['HOST', 'LOAD', 'AFTER'],
    ...plan.hosts.map((entry) => [entry.host, pct(entry.loadBefore), pct(entry.loadAfter)]),
  ], [1, 2]).split('\n').map((line) => `  ${line}`).join('\n'));
  if (plan.moves.length > 0) {
    lines.push(`${apply ? 'moves' : 'planned moves (nothing moved; add --apply)'}:`);
    lines.push(formatTable([
      ['VM', 'FROM', 'TO', 'GAIN', 'FORECAST TIME', 'FORECAST DOWNTIME', ...(apply ? ['OUTCOME'] : [])],
      ...plan.moves.map((move) => {
        const applied = plan.applied.find((entry) => entry.vm === move.vm);
        return [
          move.vm, move.from, move.to, pct(move.gain),
          move.forecast ? formatDuration(move.forecast.totalTimeMs) : '-', move.forecast ? formatDuration(move.forecast.downtimeMs) : '-',
          ...(apply ? [applied ? `${applied.outcome}${applied.downtimeMs !== undefined ? ` (${formatDuration(applied.downtimeMs)} down)` : ''}` : 'not tried'] : []),
        ];
      }),
    ], [3, 4, 5]).split('\n').map((line) => `  ${line}`).join('\n'));
  }
  for (const skip of plan.skipped) lines.push(`  left: ${skip.vm}${skip.to ? ` → ${skip.to}` : ''}: ${skip.reason}`);
  for (const entry of plan.excluded) lines.push(`  not balanced: ${entry.host} (${entry.reason})`);
  return lines.join('\n');
}

export function drainEventLine(event: DrainEvent): string {
  switch (event.kind) {
    case 'plan':
      return `draining: ${event.vms} VM${event.vms === 1 ? '' : 's'} (${event.live} live, ${event.cold} cold${event.stay > 0 ? `, ${event.stay} left in place` : ''})`;
    case 'start':
      return `  ${event.vm} → ${event.to} (${event.mode}${event.attempt > 1 ? `, try ${event.attempt}` : ''}${event.forecast ? `, forecast ${formatDuration(event.forecast.totalTimeMs)}, ${formatDuration(event.forecast.downtimeMs)} down` : ''})`;
    case 'moved':
      return `  ${event.move.vm} on ${event.move.to} (${formatDuration(event.move.totalTimeMs)}${event.move.downtimeMs !== undefined ? `, downtime ${formatDuration(event.move.downtimeMs)}` : ''})`;
    case 'retry':
      return `  ${event.vm} did not move to ${event.to}: ${event.error}; trying another host`;
    case 'failed':
      return `  ${event.failure.vm} NOT MOVED: ${event.failure.reason}`;
  }
}

export function formatDrainReport(report: DrainReport): string {
  const rows = [['VM', 'TO', 'MODE', 'OUTCOME', 'TIME', 'DOWNTIME']];
  for (const move of report.moved) rows.push([move.vm, move.to, move.mode, move.outcome, formatDuration(move.totalTimeMs), move.downtimeMs !== undefined ? formatDuration(move.downtimeMs) : '-']);
  for (const failure of report.failed) rows.push([failure.vm, '-', '-', 'not moved', '-', '-']);
  for (const stay of report.stayed) rows.push([stay.vm, '-', '-', `stayed (${stay.state})`, '-', '-']);
  const lines = [`drain of ${report.host}: ${report.moved.length} moved, ${report.failed.length} not moved${report.stayed.length > 0 ? `, ${report.stayed.length} left in place` : ''}, in ${formatDuration(report.totalTimeMs)}`];
  if (rows.length > 1) lines.push(formatTable(rows, [4, 5]).split('\n').map((line) => `  ${line}`).join('\n'));
  for (const failure of report.failed) {
    lines.push(`  ${failure.vm}: ${failure.reason}`);
    for (const attempt of failure.attempts) lines.push(`    tried ${attempt.to}: ${attempt.error}`);
  }
  lines.push(report.failed.length === 0
    ? `${report.host} is empty${report.stayed.length > 0 ? ' of running VMs' : ''} and stays in maintenance until \`ferry host undrain ${report.host}\``
    : `run \`ferry host drain ${report.host}\` again to retry what is left; it stays in maintenance until \`ferry host undrain ${report.host}\``);
  return lines.join('\n');
}

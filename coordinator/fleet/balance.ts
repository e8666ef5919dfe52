/**
 * `ferry balance`: spread load over the hosts, as VMware DRS does. Each host's load is normalised by its capacity
 * (memory held ÷ --capacity; its VMs' vCPU time ÷ its cores; or the mean of both), the imbalance is the standard
 * deviation of those loads, and while it is above the threshold moves are planned greedily: each time the move that
 * removes the most imbalance per unit of its cost (the forecast's total time where there is one, else the memory
 * to copy). Moves whose forecast breaks --max-downtime, or does not converge, are dropped; a VM moved within the
 * cool-down is left where it is, so that two rounds never bounce it between two hosts.
 *
 * planBalance is pure (the tests give it hosts and VMs); balanceOnce surveys the cluster, plans, checks each planned
 * move with a real forecast, and applies the plan when asked.
 */
import type { MigrationReport } from '../report.js';
import { ErrorCode, FerryError, toFerryError } from '../../shared/errors.js';
import type { HostInfo, MigrationOptions, VmInfo } from '../../shared/protocol.js';
import type { Cluster } from '../cluster.js';
import { connectAgent, withHost, type Connector } from '../connect.js';
import { surveyHosts, type HostSurvey } from '../inventory.js';
import { migrateLive } from '../migrate.js';
import { migrationFor } from './drain.js';
import type { FleetStore, ForecastSummary, Forecaster } from './fleet-store.js';
import { PAGE_SIZE } from '../../shared/constants.js';
import { predictMigration } from '../forecast.js';
import { measureLink } from '../link-measure.js';
import { memoryShare, refusalOf, type Pending } from './placement.js';

export type Metric = 'cpu' | 'memory' | 'both';

export interface BalanceOptions {
  metric: Metric;
  /** Stop planning once the deviation of host loads is at or under this. */
  threshold: number;
  maxMoves: number;
  /** A VM moved within this long is not moved again. */
  cooldownMs: number;
  migration: MigrationOptions;
}

export interface PlannedMove {
  vm: string;
  from: string;
  to: string;
  /** How much imbalance this move removes. */
  gain: number;
  forecast?: { totalTimeMs: number; downtimeMs: number; converges: boolean };
}

export interface BalancePlan {
  metric: Metric;
  threshold: number;
  imbalanceBefore: number;
  imbalanceAfter: number;
  hosts: { host: string; loadBefore: number; loadAfter: number }[];
  moves: PlannedMove[];
  /** VMs or moves left out, each with why (cool-down, the forecast). */
  skipped: { vm: string; to?: string; reason: string }[];
  /** Hosts left out of the balance, with why (maintenance, degraded, unreachable). */
  excluded: { host: string; reason: string }[];
}

export interface AppliedMove {
  vm: string;
  from: string;
  to: string;
  outcome: MigrationReport['outcome'];
  downtimeMs?: number;
  totalTimeMs: number;
  error?: string;
}

/** The population standard deviation: DRS's imbalance. */
export function deviation(values: number[]): number {
  if (values.length === 0) return 0;
  const mean = values.reduce((sum, value) => sum + value, 0) / values.length;
  return Math.sqrt(values.reduce((sum, value) => sum + (value - mean) ** 2, 0) / values.length);
}

/** A VM's share of a host's CPU: its vCPU busy percent over the host's cores. */
function cpuShare(vm: VmInfo, host: HostInfo): number {
  return (vm.stats?.cpuPercent ?? 0) / 100 / Math.max(1, host.load?.cores ?? 1);
}

function loadOf(metric: Metric, memory: number, cpu: number): number {
  return metric === 'memory' ? memory : metric === 'cpu' ? cpu : (memory + cpu) / 2;
}

export interface PlanInput {
  surveys: HostSurvey[];
  /** The running and paused VMs of every host, with their stats. */
  vms: VmInfo[];
  options: BalanceOptions;
  /** VMs not to move now, with why (cool-down). */
  frozen: Map<string, string>;
  /** Moves not to plan (vm → hosts), e.g. those whose forecast failed. */
  refused: Map<string, Set<string>>;
  /** The cost of a move in milliseconds, where it can be told without asking the hosts; else the memory is. */
  cost?: (vm: VmInfo, from: string, to: string) => number | undefined;
}

export function planBalance(input: PlanInput): BalancePlan {
  const { options } = input;
  const excluded: BalancePlan['excluded'] = [];
  const hosts = input.surveys.filter((survey) => {
    if (!survey.info) excluded.push({ host: survey.host.name, reason: `did not answer (${survey.error?.code ?? 'unknown error'})` });
    else if (survey.info.maintenance) excluded.push({ host: survey.host.name, reason: 'in maintenance' });
    else if (survey.info.health?.state === 'degraded') excluded.push({ host: survey.host.name, reason: `degraded: ${survey.info.health.reasons.map((reason) => reason.reason).join('; ')}` });
    else return true;
    return false;
  });
  const infoOf = new Map(hosts.map((survey) => [survey.host.name, survey.info!]));
  const memory = new Map<string, number>();
  const cpu = new Map<string, number>();
  for (const [name, info] of infoOf) {
    memory.set(name, info.capacityBytes > 0 ? info.usedBytes / info.capacityBytes : 1);
    cpu.set(name, 0);
  }
  const vms = input.vms.filter((vm) => infoOf.has(vm.host));
  for (const vm of vms) cpu.set(vm.host, cpu.get(vm.host)! + cpuShare(vm, infoOf.get(vm.host)!));
  const names = [...infoOf.keys()];
  const loads = (): Map<string, number> => new Map(names.map((name) => [name, loadOf(options.metric, memory.get(name)!, cpu.get(name)!)]));
  const before = loads();
  const imbalanceBefore = deviation([...before.values()]);

  const skipped: BalancePlan['skipped'] = [];
  const movable = vms.filter((vm) => {
    const why = input.frozen.get(vm.name);
    if (why) skipped.push({ vm: vm.name, reason: why });
    return !why;
  });
  const pending = new Map<string, Pending>();
  const where = new Map(vms.map((vm) => [vm.name, vm.host]));
  const moved = new Set<string>();
  const moves: PlannedMove[] = [];
  let current = imbalanceBefore;
  // The smallest gain worth a migration: a move must take off at least a hundredth of the threshold.
  const minGain = Math.max(1e-9, options.threshold / 100);

  while (moves.length < options.maxMoves && current > options.threshold) {
    let best: { vm: VmInfo; to: string; gain: number; score: number } | undefined;
    for (const vm of movable) {
      if (moved.has(vm.name)) continue;
      const from = where.get(vm.name)!;
      const memoryShare = vm.memoryBytes / infoOf.get(from)!.capacityBytes;
      const cpuFrom = cpuShare(vm, infoOf.get(from)!);
      for (const to of names) {
        if (to === from || input.refused.get(vm.name)?.has(to)) continue;
        const target = hosts.find((survey) => survey.host.name === to)!;
        if (refusalOf(vm, 'live', infoOf.get(from), target, pending.get(to))) continue;
        const trial = loads();
        const memoryTo = vm.memoryBytes / infoOf.get(to)!.capacityBytes;
        const cpuTo = cpuShare(vm, infoOf.get(to)!);
        trial.set(from, loadOf(options.metric, memory.get(from)! - memoryShare, cpu.get(from)! - cpuFrom));
        trial.set(to, loadOf(options.metric, memory.get(to)! + memoryTo, cpu.get(to)! + cpuTo));
        const gain = current - deviation([...trial.values()]);
        if (gain < minGain) continue;
        const costMs = input.cost?.(vm, from, to);
        // Per unit of cost: seconds of migration where the forecast tells them, else GiB of memory to copy.
        const score = gain / (costMs !== undefined ? Math.max(1, costMs) / 1000 : vm.memoryBytes / 2 ** 30);
        if (!best || score > best.score || (score === best.score && (vm.name < best.vm.name || (vm.name === best.vm.name && to < best.to)))) {
          best = { vm, to, gain, score };
        }
      }
    }
    if (!best) break;
    const { vm, to } = best;
    const from = where.get(vm.name)!;
    memory.set(from, memory.get(from)! - vm.memoryBytes / infoOf.get(from)!.capacityBytes);
    memory.set(to, memory.get(to)! + vm.memoryBytes / infoOf.get(to)!.capacityBytes);
    cpu.set(from, cpu.get(from)! - cpuShare(vm, infoOf.get(from)!));
    cpu.set(to, cpu.get(to)! + cpuShare(vm, infoOf.get(to)!));
    const pend = pending.get(to) ?? { memoryBytes: 0, diskBytes: 0 };
    pending.set(to, { memoryBytes: pend.memoryBytes + vm.memoryBytes, diskBytes: pend.diskBytes });
    where.set(vm.name, to);
    moved.add(vm.name);
    const after = deviation([...loads().values()]);
    moves.push({ vm: vm.name, from, to, gain: current - after });
    current = after;
  }
  const after = loads();
  return {
    metric: options.metric,
    threshold: options.threshold,
    imbalanceBefore,
    imbalanceAfter: current,
    hosts: names.map((name) => ({ host: name, loadBefore: before.get(name)!, loadAfter: after.get(name)! })),
    moves,
    skipped,
    excluded,
  };
}

export interface BalanceHooks {
  connect?: Connector;
  store?: FleetStore | undefined;
  forecast?: Forecaster | undefined;
  onEvent?: (event: { kind: 'applying'; move: PlannedMove } | { kind: 'applied'; applied: AppliedMove }) => void;
  signal?: AbortSignal;
  by?: string;
}

/** The running and paused VMs of every host that answered, each with its stats. */
export async function runningVms(surveys: HostSurvey[], connect: Connector = connectAgent): Promise<VmInfo[]> {
  const perHost = await Promise.all(surveys.filter((survey) => survey.info).map((survey) => withHost(survey.host, async (client, info) => {
    const found: VmInfo[] = [];
    for (const vm of info.vms.filter((entry) => entry.state === 'running' || entry.state === 'paused')) {
      const full = await client.request('vm.info', { name: vm.name }).catch(() => undefined);
      if (full) found.push(full);
    }
    return found;
  }, connect).catch(() => [] as VmInfo[])));
  return perHost.flat();
}

/**
 * One round: survey, plan, check each planned move's forecast (replanning without the moves it refuses), and with
 * `apply` carry the plan out, one migration at a time.
 */
export async function balanceOnce(cluster: Cluster, options: BalanceOptions, apply: boolean, hooks: BalanceHooks = {}): Promise<BalancePlan & { applied: AppliedMove[] }> {
  const connect = hooks.connect ?? connectAgent;
  const surveys = await surveyHosts(cluster, connect);
  const vms = await runningVms(surveys, connect);
  const frozen = new Map<string, string>();
  for (const move of (await hooks.store?.recentMoves(options.cooldownMs)) ?? []) {
    const agoS = Math.round((Date.now() - Date.parse(move.at)) / 1000);
    frozen.set(move.vm, `moved ${move.from} → ${move.to} ${agoS} s ago, within the ${Math.round(options.cooldownMs / 1000)} s cool-down`);
  }
  const refused = new Map<string, Set<string>>();
  const forecastSkips: BalancePlan['skipped'] = [];
  const forecasts = new Map<string, ForecastSummary>();
  const cost = hooks.forecast ? await rankingCost(surveys, options, connect) : undefined;
  let plan = planBalance({ surveys, vms, options, frozen, refused, ...(cost ? { cost } : {}) });
  // Every planned move is forecast; one the forecast refuses is taken out and the plan made again without it.
  for (let pass = 0; hooks.forecast && pass < 10; pass++) {
    let changed = false;
    for (const move of plan.moves) {
      const key = `${move.vm}→${move.to}`;
      let forecast = forecasts.get(key);
      if (!forecast) {
        const vm = vms.find((entry) => entry.name === move.vm)!;
        forecast = await hooks.forecast(vm, move.from, move.to, migrationFor(vm, options.migration)).catch(() => undefined);
        if (!forecast) continue;
        forecasts.set(key, forecast);
      }
      move.forecast = { totalTimeMs: forecast.totalTimeMs, downtimeMs: forecast.downtimeMs, converges: forecast.converges };
      if (!forecast.converges || forecast.downtimeMs > options.migration.maxDowntimeMs) {
        const reason = forecast.converges
          ? `forecast downtime ${forecast.downtimeMs.toFixed(1)} ms is over --max-downtime ${options.migration.maxDowntimeMs} ms`
          : 'the forecast says it would not converge';
        forecastSkips.push({ vm: move.vm, to: move.to, reason });
        const set = refused.get(move.vm) ?? new Set<string>();
        set.add(move.to);
        refused.set(move.vm, set);
        changed = true;
      }
    }
    if (!changed) break;
    plan = planBalance({ surveys, vms, options, frozen, refused, ...(cost ? { cost } : {}) });
  }
  plan.skipped.push(...forecastSkips);
  for (const move of plan.moves) {
    const forecast = forecasts.get(`${move.vm}→${move.to}`);
    if (forecast) move.forecast = { totalTimeMs: forecast.totalTimeMs, downtimeMs: forecast.downtimeMs, converges: forecast.converges };
  }
  // With forecasts, a move is made only if its forecast was made and accepted (not one the last replan added, nor
  // one whose forecast failed).
  if (hooks.forecast) {
    const accepted = (move: PlannedMove): boolean => move.forecast !== undefined && move.forecast.converges && move.forecast.downtimeMs <= options.migration.maxDowntimeMs;
    for (const move of plan.moves.filter((entry) => !accepted(entry))) {
      plan.skipped.push({ vm: move.vm, to: move.to, reason: move.forecast ? 'its forecast was refused' : 'no forecast could be made for it' });
    }
    plan.moves = plan.moves.filter(accepted);
  }

  const applied: AppliedMove[] = [];
  if (apply) {
    for (const move of plan.moves) {
      if (hooks.signal?.aborted) break;
      hooks.onEvent?.({ kind: 'applying', move });
      const vm = vms.find((entry) => entry.name === move.vm)!;
      const result = await applyMove(cluster, vm, move, options, hooks, connect);
      applied.push(result);
      hooks.onEvent?.({ kind: 'applied', applied: result });
    }
  }
  return { ...plan, applied };
}

/**
 * The cost the planner ranks moves by: each VM's forecast total time (its own dirty curve, its memory) on one link
 * measured now, from the most loaded host to the least (16 MiB; a minute's measurement of that pair is reused). The
 * moves it then plans are each forecast on their own link.
 */
async function rankingCost(surveys: HostSurvey[], options: BalanceOptions, connect: Connector): Promise<PlanInput['cost'] | undefined> {
  const up = surveys.filter((survey) => survey.info && !survey.info.maintenance && survey.info.health?.state !== 'degraded');
  if (up.length < 2) return undefined;
  const byShare = [...up].sort((a, b) => memoryShare(a.info!, 0) - memoryShare(b.info!, 0));
  const from = byShare.at(-1)!.host;
  const to = byShare[0]!.host;
  const link = await withHost(from, (client) => measureLink(client, from, { name: to.name, url: to.migrationUrl ?? to.url }, RANKING_LINK_BYTES), connect).catch(() => undefined);
  if (!link) return undefined;
  return (vm) => predictMigration({
    memoryPages: vm.memoryBytes / PAGE_SIZE,
    stats: vm.stats ?? { dirtyPagesPerSec: 0, wssPages: 0 },
    link,
    options: migrationFor(vm, options.migration),
  }).totalTimeMs;
}

const RANKING_LINK_BYTES = 16 * 1024 * 1024;

/** One move of a plan, under the VM's lock; recorded in the store for the cool-down when it commits. */
export async function applyMove(cluster: Cluster, vm: VmInfo, move: { from: string; to: string }, options: BalanceOptions, hooks: BalanceHooks, connect: Connector): Promise<AppliedMove> {
  const base = { vm: vm.name, from: move.from, to: move.to };
  let lock: { release(): Promise<void> } | undefined;
  try {
    lock = await hooks.store?.lockVm(vm.name, 'balance');
  } catch (error) {
    return { ...base, outcome: 'failed', totalTimeMs: 0, error: toFerryError(error).message };
  }
  try {
    const report = await migrateLive(cluster, { vm: vm.name, from: move.from, to: move.to, options: migrationFor(vm, options.migration) }, { connect, ...(hooks.signal ? { signal: hooks.signal } : {}) });
    if (report.outcome === 'committed') {
      await hooks.store?.recordMove({ vm: vm.name, from: move.from, to: move.to, at: new Date().toISOString(), by: hooks.by ?? 'balance' }).catch(() => undefined);
    }
    return {
      ...base, outcome: report.outcome, totalTimeMs: report.totalTimeMs,
      ...(report.downtimeMs !== undefined ? { downtimeMs: report.downtimeMs } : {}),
      ...(report.error ? { error: report.error.message } : {}),
    };
  } finally {
    await lock?.release().catch(() => undefined);
  }
}

export function checkBalanceOptions(options: BalanceOptions): BalanceOptions {
  if (!(options.threshold >= 0 && options.threshold < 1)) throw new FerryError(ErrorCode.BAD_INPUT, `--threshold ${options.threshold} is not a deviation between 0 and 1`, 'e.g. --threshold 0.1 (DRS-like) or 0.2 (Watcher\'s workload_stabilization)');
  if (!Number.isInteger(options.maxMoves) || options.maxMoves < 0) throw new FerryError(ErrorCode.BAD_INPUT, `--max-moves ${options.maxMoves} is not a count`, 'e.g. --max-moves 5');
  return options;
}

/**
 * `ferry host drain`: maintenance mode. The host is told to refuse new VMs and incoming migrations, then every VM
 * on it leaves: running and paused ones live (with their local disks, `--copy-storage`), powered-off and suspended
 * ones cold (unless `--stopped stay`), each to the best host for it (placement.ts; the forecast where there is one).
 *
 * Never a loop without end: each VM has a number of attempts and a deadline, a destination that failed it is not
 * tried again for it, and a VM no host can take is listed with every host's reason. Several VMs move at once
 * (`--parallel`), at most two arriving on any one host at a time (KubeVirt's per-node limit). Running the drain again
 * resumes it: it moves what is still there.
 */
import { ErrorCode, FerryError, toFerryError } from '../../shared/errors.js';
import type { HostInfo, MigrationOptions, VmInfo } from '../../shared/protocol.js';
import { findHost, type Cluster, type HostEntry } from '../cluster.js';
import { connectAgent, withHost, type Connector } from '../connect.js';
import { surveyHosts, type HostSurvey } from '../inventory.js';
import { migrateCold } from '../migrate-cold.js';
import { migrateLive } from '../migrate.js';
import type { FleetStore, Forecaster } from './fleet-store.js';
import { describeRefusals, localDiskBytes, rankTargets, refusalOf, type MoveMode, type Pending } from './placement.js';

/** KubeVirt's default: at most this many migrations arriving on one host at once. */
export const PER_HOST_INCOMING = 2;

export interface DrainOptions {
  /** VMs moving at once. */
  parallel: number;
  /** Powered-off and suspended VMs: moved cold, or left where they are. */
  stopped: 'cold' | 'stay';
  /** Attempts per VM, each to another host. */
  attempts: number;
  /** How long one VM may take, all its attempts together. */
  deadlineMs: number;
  /** The live migrations' options (`--copy-storage` is added for VMs with local disks). */
  migration: MigrationOptions;
  /** Who drains, for the host's record. */
  by?: string | undefined;
  /** Put the host in maintenance first (a drain); false only empties it (`balance --watch` evacuating a degraded host). */
  maintenance?: boolean;
}

export interface DrainMove {
  vm: string;
  to: string;
  mode: MoveMode;
  outcome: 'committed';
  downtimeMs?: number;
  totalTimeMs: number;
  attempts: number;
}

export interface DrainFailure {
  vm: string;
  reason: string;
  attempts: { to: string; error: string }[];
}

export interface DrainReport {
  host: string;
  moved: DrainMove[];
  failed: DrainFailure[];
  /** Powered-off or suspended VMs left in place by `--stopped stay`. */
  stayed: { vm: string; state: string }[];
  totalTimeMs: number;
}

export type DrainEvent =
  | { kind: 'plan'; vms: number; live: number; cold: number; stay: number }
  | { kind: 'start'; vm: string; to: string; mode: MoveMode; attempt: number; forecast?: { totalTimeMs: number; downtimeMs: number } }
  | { kind: 'moved'; move: DrainMove }
  | { kind: 'retry'; vm: string; to: string; error: string }
  | { kind: 'failed'; failure: DrainFailure };

export interface DrainHooks {
  connect?: Connector;
  store?: FleetStore | undefined;
  forecast?: Forecaster | undefined;
  onEvent?: (event: DrainEvent) => void;
  signal?: AbortSignal;
}

/** A VM's state that a drain moves live, moves cold, or waits for. */
function modeOf(vm: VmInfo): MoveMode | 'busy' {
  if (vm.state === 'running' || vm.state === 'paused') return 'live';
  if (vm.state === 'defined' || vm.state === 'suspended') return 'cold';
  return 'busy';
}

/** How long to wait before looking again at a VM that another operation holds. */
const BUSY_RETRY_MS = 500;

export async function drainHost(cluster: Cluster, hostName: string, options: DrainOptions, hooks: DrainHooks = {}): Promise<DrainReport> {
  const startedMs = performance.now();
  const connect = hooks.connect ?? connectAgent;
  const host = findHost(cluster, hostName);
  if (!Number.isInteger(options.parallel) || options.parallel < 1) throw new FerryError(ErrorCode.BAD_INPUT, `--parallel ${options.parallel} is not a count of 1 or more`, 'e.g. --parallel 2');
  if (!Number.isInteger(options.attempts) || options.attempts < 1) throw new FerryError(ErrorCode.BAD_INPUT, `--attempts ${options.attempts} is not a count of 1 or more`, 'e.g. --attempts 3');

  // Maintenance first, so that nothing new arrives while the host empties; the store keeps a copy for operators.
  if (options.maintenance !== false) {
    const since = await withHost(host, async (client) => {
      const info = await client.request('host.state', { maintenance: true, ...(options.by ? { by: options.by } : {}) });
      return info.maintenance?.since ?? new Date().toISOString();
    }, connect);
    await hooks.store?.setHostFlags(hostName, { maintenance: { since, ...(options.by ? { by: options.by } : {}) } });
  }

  const report: DrainReport = { host: hostName, moved: [], failed: [], stayed: [], totalTimeMs: 0 };
  const vms = await vmsOn(host, connect);
  const queue: VmInfo[] = [];
  for (const vm of vms) {
    const mode = modeOf(vm);
    if (mode === 'cold' && options.stopped === 'stay') report.stayed.push({ vm: vm.name, state: vm.state });
    else queue.push(vm);
  }
  // Largest first: they have the fewest hosts with room, and the most to gain from the emptiest.
  queue.sort((a, b) => b.memoryBytes - a.memoryBytes || a.name.localeCompare(b.name));
  hooks.onEvent?.({
    kind: 'plan', vms: vms.length, live: queue.filter((vm) => modeOf(vm) === 'live').length,
    cold: queue.filter((vm) => modeOf(vm) === 'cold').length, stay: report.stayed.length,
  });

  const pending = new Map<string, Pending>();
  const arriving = new Map<string, number>();
  let slotFreed: () => void = () => undefined;
  let slotWait = new Promise<void>((resolve) => { slotFreed = resolve; });
  const freeSlot = (): void => {
    const wake = slotFreed;
    slotWait = new Promise<void>((resolve) => { slotFreed = resolve; });
    wake();
  };

  const inFlight = (): number => [...arriving.values()].reduce((sum, count) => sum + count, 0);
  /** Waits until a move in flight ends, or the deadline: not an attempt. */
  const waitForSlot = (deadline: number): Promise<unknown> => Promise.race([slotWait, sleep(Math.max(0, deadline - Date.now()))]);

  const moveOne = async (first: VmInfo): Promise<void> => {
    const deadline = Date.now() + options.deadlineMs;
    const tried = new Set<string>();
    const attempts: DrainFailure['attempts'] = [];
    let busyRefusals = 0;
    const fail = (reason: string): void => {
      const failure = { vm: first.name, reason, attempts };
      report.failed.push(failure);
      hooks.onEvent?.({ kind: 'failed', failure });
    };
    // Another coordinator's operation on the VM (a balance, a migration by hand): wait for it, up to the deadline.
    let lock: { release(): Promise<void> } | undefined;
    for (;;) {
      try {
        lock = await hooks.store?.lockVm(first.name, `drain of ${hostName}`);
        break;
      } catch (error) {
        const refusal = toFerryError(error);
        if (refusal.code !== ErrorCode.VM_BUSY || Date.now() + BUSY_RETRY_MS >= deadline || hooks.signal?.aborted) return fail(refusal.message);
        await sleep(BUSY_RETRY_MS);
      }
    }
    try {
      while (attempts.length < options.attempts) {
        if (hooks.signal?.aborted) return fail('the drain was cancelled');
        if (Date.now() >= deadline) return fail(`not moved within the deadline (${Math.round(options.deadlineMs / 1000)} s)`);
        // Look again each time: the VM may have changed state, or left; hosts fill up and fail. One survey of every
        // host says both (its CPU model and disks do not change: they come from the first look).
        const surveys = await surveyHosts(cluster, connect);
        const source = surveys.find((survey) => survey.host.name === hostName)?.info;
        if (!source) return fail(`${hostName} did not answer`);
        const summary = source.vms.find((entry) => entry.name === first.name);
        if (!summary) return; // gone from the host (moved or destroyed by someone else): nothing left to do
        const vm: VmInfo = { ...first, state: summary.state, epoch: summary.epoch };
        const mode = modeOf(vm);
        if (mode === 'busy') {
          if (Date.now() + BUSY_RETRY_MS >= deadline) return fail(`${vm.name} stayed ${vm.state} until the deadline`);
          await sleep(BUSY_RETRY_MS);
          continue;
        }
        if (mode === 'cold' && options.stopped === 'stay') {
          report.stayed.push({ vm: vm.name, state: vm.state });
          return;
        }
        const ranked = rankTargets(vm, mode, source, surveys, pending, tried);
        const isOpen = (name: string): boolean => (arriving.get(name) ?? 0) < PER_HOST_INCOMING;
        const open = ranked.fits.filter((survey) => isOpen(survey.host.name));
        if (ranked.fits.length === 0) {
          // Refused only for what is on its way there now (the survey may count a reservation that `pending` also
          // holds): wait for those moves, then look again.
          if (inFlight() > 0 && rankTargets(vm, mode, source, surveys, new Map(), tried).fits.length > 0) {
            await waitForSlot(deadline);
            continue;
          }
          return fail(`no host can take it: ${describeRefusals(ranked.refused)}`);
        }
        if (open.length === 0) {
          // Every host that fits has its arrivals full: wait for one to finish (not an attempt).
          await waitForSlot(deadline);
          continue;
        }
        const choice = await choose(vm, mode, source, open, hooks.forecast, options.migration);
        const to = choice.survey.host.name;
        // The forecasts took time, and another worker may have sent a VM there meanwhile: check again, with no await
        // between the check and taking the slot.
        if (!isOpen(to) || refusalOf(vm, mode, source, choice.survey, pending.get(to))) continue;
        const need = { memoryBytes: mode === 'live' ? vm.memoryBytes : 0, diskBytes: localDiskBytes(vm) };
        addPending(pending, to, need, 1);
        arriving.set(to, (arriving.get(to) ?? 0) + 1);
        hooks.onEvent?.({ kind: 'start', vm: vm.name, to, mode, attempt: attempts.length + 1, ...(choice.forecast ? { forecast: choice.forecast } : {}) });
        let error: FerryError | undefined;
        let move: DrainMove | undefined;
        try {
          const result = await moveTo(cluster, vm, hostName, to, mode, options, deadline, hooks, connect);
          if (result.committed) {
            move = { vm: vm.name, to, mode, outcome: 'committed', ...(result.downtimeMs !== undefined ? { downtimeMs: result.downtimeMs } : {}), totalTimeMs: result.totalTimeMs, attempts: attempts.length + 1 };
          } else {
            error = result.error;
          }
        } catch (thrown) {
          error = toFerryError(thrown);
        } finally {
          addPending(pending, to, need, -1);
          arriving.set(to, (arriving.get(to) ?? 1) - 1);
          freeSlot();
        }
        if (move) {
          report.moved.push(move);
          hooks.onEvent?.({ kind: 'moved', move });
          await hooks.store?.recordMove({ vm: vm.name, from: hostName, to, at: new Date().toISOString(), by: options.by ?? 'drain' }).catch(() => undefined);
          return;
        }
        const message = error?.message ?? 'not committed';
        // Gone from the host between the survey and the migration: someone else moved or destroyed it.
        if (error?.code === ErrorCode.VM_NOT_FOUND) return;
        // The VM itself was busy (a dump, another operation): wait, without counting it against the destination; the
        // same refusal a third time in a row is the destination's (VM_STATE also says, e.g., storage it lacks).
        if ((error?.code === ErrorCode.VM_STATE || error?.code === ErrorCode.VM_BUSY) && ++busyRefusals < 3) {
          if (Date.now() + BUSY_RETRY_MS >= deadline) return fail(message);
          await sleep(BUSY_RETRY_MS);
          continue;
        }
        busyRefusals = 0;
        attempts.push({ to, error: `${error?.code ?? ErrorCode.INTERNAL}: ${message}` });
        if (error?.code === ErrorCode.CANCELLED) return fail(message);
        tried.add(to);
        hooks.onEvent?.({ kind: 'retry', vm: vm.name, to, error: message });
      }
      fail(`${attempts.length} attempt${attempts.length === 1 ? '' : 's'} failed`);
    } finally {
      await lock?.release().catch(() => undefined);
    }
  };

  // A pool of `parallel` workers over the queue.
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < queue.length) {
      const vm = queue[next++]!;
      await moveOne(vm);
    }
  };
  await Promise.all(Array.from({ length: Math.min(options.parallel, Math.max(1, queue.length)) }, () => worker()));

  // Whatever is still on the host and neither failed nor stayed (it arrived, or was leaving for another operation,
  // meanwhile) is said: the host is not empty until it is gone.
  const accounted = new Set([...report.failed.map((entry) => entry.vm), ...report.stayed.map((entry) => entry.vm)]);
  try {
    for (const vm of await vmsOn(host, connect)) {
      if (accounted.has(vm.name)) continue;
      report.failed.push({ vm: vm.name, reason: `still on ${hostName} (${vm.state}); run the drain again`, attempts: [] });
    }
  } catch (error) {
    report.failed.push({ vm: '*', reason: `${hostName} could not be checked again after the moves (${toFerryError(error).message}); run the drain again to see what is left`, attempts: [] });
  }
  report.totalTimeMs = performance.now() - startedMs;
  return report;
}

/** Ends maintenance: the host takes VMs again. */
export async function undrainHost(cluster: Cluster, hostName: string, hooks: { connect?: Connector; store?: FleetStore | undefined } = {}): Promise<HostInfo> {
  const host = findHost(cluster, hostName);
  const info = await withHost(host, (client) => client.request('host.state', { maintenance: false }), hooks.connect ?? connectAgent);
  await hooks.store?.setHostFlags(hostName, { maintenance: undefined });
  return info;
}

async function vmsOn(host: HostEntry, connect: Connector): Promise<VmInfo[]> {
  return withHost(host, async (client, info) => {
    const found: VmInfo[] = [];
    for (const summary of info.vms) {
      // A VM that went between the list and its info is simply not there.
      const vm = await client.request('vm.info', { name: summary.name }).catch(() => undefined);
      if (vm) found.push(vm);
    }
    return found;
  }, connect);
}

function addPending(pending: Map<string, Pending>, host: string, need: Pending, sign: 1 | -1): void {
  const current = pending.get(host) ?? { memoryBytes: 0, diskBytes: 0 };
  pending.set(host, { memoryBytes: current.memoryBytes + sign * need.memoryBytes, diskBytes: current.diskBytes + sign * need.diskBytes });
}

/** The host to try: the least loaded, unless the forecast says a move there would not converge and another would. */
async function choose(vm: VmInfo, mode: MoveMode, source: HostInfo | undefined, open: HostSurvey[], forecast: Forecaster | undefined, migration: MigrationOptions): Promise<{ survey: HostSurvey; forecast?: { totalTimeMs: number; downtimeMs: number } }> {
  if (mode !== 'live' || !forecast || !source) return { survey: open[0]! };
  // The three least loaded, forecast; the first that converges within --max-downtime wins.
  const forecasts = [];
  for (const survey of open.slice(0, 3)) {
    const predicted = await forecast(vm, source.name, survey.host.name, migrationFor(vm, migration)).catch(() => undefined);
    if (predicted?.converges) return { survey, forecast: { totalTimeMs: predicted.totalTimeMs, downtimeMs: predicted.downtimeMs } };
    forecasts.push({ survey, predicted });
  }
  const first = forecasts[0]!;
  return { survey: first.survey, ...(first.predicted ? { forecast: { totalTimeMs: first.predicted.totalTimeMs, downtimeMs: first.predicted.downtimeMs } } : {}) };
}

/** A VM with local disks takes them along (`--copy-storage`); shared ones stay where every host sees them. */
export function migrationFor(vm: VmInfo, migration: MigrationOptions): MigrationOptions {
  return localDiskBytes(vm) > 0 ? { ...migration, copyStorage: true, storageMode: migration.storageMode ?? 'mirror' } : migration;
}

async function moveTo(cluster: Cluster, vm: VmInfo, from: string, to: string, mode: MoveMode, options: DrainOptions, deadline: number, hooks: DrainHooks, connect: Connector): Promise<{ committed: boolean; error?: FerryError; downtimeMs?: number; totalTimeMs: number }> {
  if (mode === 'cold') {
    const report = await migrateCold(cluster, { vm: vm.name, to });
    return { committed: report.outcome === 'committed', ...(report.error ? { error: FerryError.fromPayload(report.error) } : {}), totalTimeMs: report.totalTimeMs };
  }
  // The deadline cancels the migration as `--timeout` does: rolled back unless it already committed.
  const cancel = new AbortController();
  const timer = setTimeout(() => cancel.abort(new FerryError(ErrorCode.TIMEOUT, `${vm.name} did not move within the drain's deadline`, 'give the drain a longer --deadline')), Math.max(1, deadline - Date.now()));
  const onAbort = (): void => cancel.abort(hooks.signal?.reason);
  hooks.signal?.addEventListener('abort', onAbort, { once: true });
  const report = await migrateLive(cluster, { vm: vm.name, from, to, options: migrationFor(vm, options.migration) }, { signal: cancel.signal, connect })
    .finally(() => {
      clearTimeout(timer);
      hooks.signal?.removeEventListener('abort', onAbort);
    });
  return {
    committed: report.outcome === 'committed',
    ...(report.error ? { error: FerryError.fromPayload(report.error) } : report.outcome !== 'committed' ? { error: new FerryError(ErrorCode.VM_STATE, `the migration to ${to} ${report.outcome}`) } : {}),
    ...(report.downtimeMs !== undefined ? { downtimeMs: report.downtimeMs } : {}),
    totalTimeMs: report.totalTimeMs,
  };
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => { setTimeout(resolve, ms).unref(); });

/**
 * The coordinator's side of a live migration: stage 0 (check both hosts and the VM) and stage 1 (reserve the
 * destination), then it asks the source to run stages 2-5 with the destination and relays their progress.
 * Pages never pass through here.
 */
import { randomUUID } from 'node:crypto';
import { ErrorCode, FerryError, abortReason, toFerryError } from '../shared/errors.js';
import { migrationEventSchema, type MigrationEvent, type MigrationOptions, type StageReport } from '../shared/protocol.js';
import { findHost, type Cluster } from './cluster.js';
import { connectAgent, openHost, type AgentClient, type Connector } from './connect.js';
import { locateVm, surveyHosts } from './inventory.js';
import type { MigrationReport } from './report.js';
import { ownerName, type ClusterStore, type VmLock } from './store/store.js';

export interface MigrateRequest {
  vm: string;
  to: string;
  options: MigrationOptions;
  /** The host the caller knows holds the VM (a drain): asked alone, instead of surveying every host. */
  from?: string | undefined;
}

export interface MigrateHooks {
  onEvent?: (event: MigrationEvent) => void;
  signal?: AbortSignal;
  now?: () => number;
  /** How to reach the agents; WebSockets by default. */
  connect?: Connector;
  /**
   * The cluster store: the VM is held in it for the migration (another operation on it is refused, here or on
   * another coordinator, and this one is refused while another holds it), and a committed move is recorded there.
   */
  store?: ClusterStore;
}

export async function migrateLive(cluster: Cluster, request: MigrateRequest, hooks: MigrateHooks = {}): Promise<MigrationReport> {
  const now = hooks.now ?? (() => performance.now());
  const connect = hooks.connect ?? connectAgent;
  const startedMs = now();
  const stages: StageReport[] = [];
  const enter = (stage: number, name: string): void => {
    const atMs = now() - startedMs;
    const previous = stages.at(-1);
    if (previous) previous.endMs = atMs;
    stages.push({ stage, name, startMs: atMs, endMs: atMs });
    hooks.onEvent?.({ kind: 'stage', stage, name, atMs });
  };

  const base = {
    vm: request.vm, to: request.to, mode: 'live' as const, rounds: [], stages, bytesSent: 0,
    maxDowntimeMs: request.options.maxDowntimeMs, throughputBytesPerSec: 0, throttlePct: 0,
  };
  const failed = (from: string, memoryBytes: number, error: unknown): MigrationReport => {
    const last = stages.at(-1);
    if (last) last.endMs = now() - startedMs;
    return { ...base, from, memoryBytes, outcome: 'failed', error: toFerryError(error).toPayload(), totalTimeMs: now() - startedMs };
  };

  // Stage 0: pre-migration. Find the VM, reach both hosts, check they speak our protocol.
  enter(0, 'pre-migration');
  let source: AgentClient | undefined;
  let destination: AgentClient | undefined;
  let from = '?';
  let memoryBytes = 0;
  const migrationId = randomUUID();
  let vmLock: VmLock | undefined;
  let destinationOpening: ReturnType<typeof openHost> | undefined;
  try {
    vmLock = await hooks.store?.lockVm(request.vm, 'migration');
    const destinationHost = findHost(cluster, request.to);
    // The destination is dialled while the VM is found: the two are independent, and each waits on connections.
    destinationOpening = openHost(destinationHost, connect);
    destinationOpening.catch(() => undefined); // awaited below, after the VM is found (its errors come first)
    let opened: Awaited<ReturnType<typeof openHost>>;
    let located: Awaited<ReturnType<typeof locateVm>>;
    if (request.from !== undefined) {
      const host = findHost(cluster, request.from);
      opened = await openHost(host, connect);
      source = opened.client;
      const summary = opened.info.vms.find((entry) => entry.name === request.vm);
      if (!summary) throw new FerryError(ErrorCode.VM_NOT_FOUND, `${request.vm} is not on ${request.from}`, 'run `ferry vm list` to see where it is');
      located = { host, vm: summary };
    } else {
      located = await locateVm(cluster, request.vm, connect);
      opened = await openHost(located.host, connect);
      source = opened.client;
    }
    from = located.host.name;
    memoryBytes = located.vm.memoryBytes;
    if (from === request.to) {
      throw new FerryError(ErrorCode.BAD_INPUT, `${request.vm} is already on ${request.to}`, 'pick another destination with --to');
    }
    if (located.vm.state !== 'running' && located.vm.state !== 'paused') {
      throw new FerryError(ErrorCode.VM_STATE, `${request.vm} is ${located.vm.state} on ${from}`, 'wait for its current migration to finish');
    }
    destination = (await destinationOpening).client;
    const vm = await source.request('vm.info', { name: request.vm });

    // Stage 1: reservation. The destination checks it has every CPU flag of the VM's model, and capacity, and
    // allocates a container of the same size.
    enter(1, 'reservation');
    const reserved = await destination.request('migrate.reserve', {
      migrationId, name: vm.name, memoryBytes: vm.memoryBytes, workload: vm.workload, epoch: vm.epoch, cpuModel: vm.cpuModel,
      sourceUrl: located.host.migrationUrl ?? located.host.url,
      ...(vm.disks?.some((disk) => disk.shared) && opened.info.sharedStorageId ? { sharedStorageId: opened.info.sharedStorageId } : {}),
    }, { signal: hooks.signal });

    // Stages 2-5 run between the two agents; the source reports them. Cancelling now asks the source to stop, and
    // its report (rolled back, or committed if the cancel came too late) is still awaited and returned.
    const offsetMs = now() - startedMs;
    if (hooks.signal?.aborted) throw abortReason(hooks.signal, 'migration cancelled');
    const sourceClient = source;
    const onCancel = (): void => {
      const reason = hooks.signal?.reason instanceof FerryError && hooks.signal.reason.code === ErrorCode.TIMEOUT ? 'timeout' : 'cancelled';
      void sourceClient.request('migrate.cancel', { name: request.vm, reason }, { timeoutMs: 5000 }).catch(() => undefined);
    };
    hooks.signal?.addEventListener('abort', onCancel, { once: true });
    const sourceReport = await source.request(
      'migrate.start',
      { migrationId, name: request.vm, destination: { name: destinationHost.name, url: destinationHost.migrationUrl ?? destinationHost.url }, options: request.options },
      {
        onEvent: (body) => {
          const parsed = migrationEventSchema.safeParse(body);
          if (!parsed.success) return;
          const event = parsed.data;
          hooks.onEvent?.(event.kind === 'stage' ? { ...event, atMs: event.atMs + offsetMs } : event);
        },
      },
    ).finally(() => hooks.signal?.removeEventListener('abort', onCancel));
    const last = stages.at(-1);
    if (last) last.endMs = offsetMs;
    stages.push(...sourceReport.stages.map((stage) => ({ ...stage, startMs: stage.startMs + offsetMs, endMs: stage.endMs + offsetMs })));
    if (!sourceReport.committed) {
      await destination.request('migrate.release', { migrationId }, { timeoutMs: 5000 }).catch(() => undefined);
    }
    const exceeded = sourceReport.downtimeMs !== undefined
      && (sourceReport.stopReason === 'max-rounds' || sourceReport.stopReason === 'max-bytes')
      && sourceReport.downtimeMs > request.options.maxDowntimeMs;
    const report: MigrationReport = {
      ...base,
      from,
      memoryBytes,
      outcome: sourceReport.outcome,
      ...(sourceReport.error ? { error: sourceReport.error } : {}),
      ...(sourceReport.stopReason ? { stopReason: sourceReport.stopReason } : {}),
      rounds: sourceReport.rounds,
      ...(sourceReport.stopAndCopy ? { stopAndCopy: sourceReport.stopAndCopy } : {}),
      totalTimeMs: now() - startedMs,
      ...(sourceReport.downtimeMs !== undefined ? { downtimeMs: sourceReport.downtimeMs } : {}),
      ...(sourceReport.guestBlackoutMs !== undefined ? { guestBlackoutMs: sourceReport.guestBlackoutMs } : {}),
      ...(sourceReport.expectedDowntimeMs !== undefined ? { expectedDowntimeMs: sourceReport.expectedDowntimeMs } : {}),
      ...(exceeded ? { downtimeLimitExceededMs: sourceReport.downtimeMs! - request.options.maxDowntimeMs } : {}),
      bytesSent: sourceReport.bytesSent,
      throttlePct: sourceReport.throttlePct,
      ...(sourceReport.network ? { network: sourceReport.network } : {}),
      ...(sourceReport.storage ? { storage: sourceReport.storage } : {}),
      ...(sourceReport.pageStream ? { pageStream: sourceReport.pageStream } : {}),
      ...(sourceReport.compression ? { compression: sourceReport.compression } : {}),
      throughputBytesPerSec: sourceReport.rounds[0]?.throughputBytesPerSec ?? 0,
      ...(reserved.populateMs !== undefined ? { reservationPopulateMs: reserved.populateMs } : {}),
      ...(sourceReport.verification ? { verification: sourceReport.verification } : {}),
      ...(sourceReport.registers ? { cpu: { x: sourceReport.registers.x, n: sourceReport.registers.n } } : {}),
      ...(sourceReport.timeline ? { timeline: sourceReport.timeline } : {}),
      ...(sourceReport.postcopy ? { postcopy: sourceReport.postcopy } : {}),
    };
    if (report.outcome === 'committed') {
      // What balancing reads to leave a VM moved lately alone; the move stands whether or not this is written.
      await hooks.store?.recordMove({ vm: request.vm, from, to: request.to, at: new Date().toISOString(), by: ownerName() }).catch(() => undefined);
    }
    return report;
  } catch (error) {
    // Whatever failed before the source reported, the destination must not keep a reservation.
    await destination?.request('migrate.release', { migrationId }, { timeoutMs: 5000 }).catch(() => undefined);
    return failed(from, memoryBytes, error);
  } finally {
    source?.close();
    // Closed once open, also when the migration failed before it was awaited.
    void destinationOpening?.then((opened) => opened.client.close(), () => undefined);
    await vmLock?.release().catch(() => undefined);
  }
}

/**
 * `ferry migrate NAME --resume`: takes up a post-copy whose link broke. The host that holds the paused copy
 * (`postcopy-out`) reconnects to the destination and sends what it still lacks; when no host holds one, the host that
 * runs the VM asks its source, and says the VM is lost if the source no longer has the pages (it crashed).
 */
export async function resumeLive(cluster: Cluster, name: string, hooks: MigrateHooks = {}): Promise<MigrationReport> {
  const now = hooks.now ?? (() => performance.now());
  const connect = hooks.connect ?? connectAgent;
  const startedMs = now();
  const surveys = await surveyHosts(cluster, connect);
  const copies = surveys.flatMap((survey) => (survey.info?.vms ?? []).filter((vm) => vm.name === name).map((vm) => ({ host: survey.host, vm })));
  const parked = copies.find((copy) => copy.vm.state === 'postcopy-out');
  const running = [...copies].sort((a, b) => b.vm.epoch - a.vm.epoch).find((copy) => copy.vm.state === 'running' || copy.vm.state === 'paused');
  const asked = parked ?? running;
  if (!asked) {
    const down = surveys.filter((survey) => survey.error).map((survey) => survey.host.name);
    throw new FerryError(ErrorCode.VM_NOT_FOUND, `no host holds a post-copy of ${name} to resume${down.length > 0 ? ` (${down.join(', ')} did not answer)` : ''}`, 'run `ferry vm list` to see where it is');
  }
  const client = (await openHost(asked.host, connect)).client;
  const base = {
    vm: name, from: parked ? asked.host.name : '?', to: parked ? (running?.host.name ?? '?') : asked.host.name, mode: 'live' as const, rounds: [],
    maxDowntimeMs: 0, throughputBytesPerSec: 0, throttlePct: 0, memoryBytes: asked.vm.memoryBytes, resumed: true,
  };
  try {
    const sourceReport = await client.request('migrate.resume', { name }, {
      onEvent: (body) => {
        const parsed = migrationEventSchema.safeParse(body);
        if (parsed.success) hooks.onEvent?.(parsed.data);
      },
      ...(hooks.signal ? { signal: hooks.signal } : {}),
    });
    const report: MigrationReport = {
      ...base,
      outcome: sourceReport.outcome,
      ...(sourceReport.error ? { error: sourceReport.error } : {}),
      stages: sourceReport.stages,
      totalTimeMs: now() - startedMs,
      bytesSent: sourceReport.bytesSent,
      ...(sourceReport.pageStream ? { pageStream: sourceReport.pageStream } : {}),
      ...(sourceReport.verification ? { verification: sourceReport.verification } : {}),
      ...(sourceReport.postcopy ? { postcopy: sourceReport.postcopy } : {}),
    };
    if (report.outcome === 'committed') {
      await hooks.store?.recordMove({ vm: name, from: base.from, to: base.to, at: new Date().toISOString(), by: ownerName() }).catch(() => undefined);
    }
    return report;
  } catch (error) {
    return { ...base, stages: [], bytesSent: 0, outcome: 'failed', error: toFerryError(error).toPayload(), totalTimeMs: now() - startedMs };
  } finally {
    client.close();
  }
}

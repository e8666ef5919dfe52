/**
 * The coordinator's requests that move VMs: a live migration's reservation here (stage 1) and its run from here as
 * the source (stages 2-5, migration/source.ts), its cancel, and a cold migration of a powered-off VM's files.
 */
import { PEER_REPLY_TIMEOUT_MS } from '../../shared/constants.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import type { Agent, ControlServer } from '../agent.js';
import { vmConfigSchema, type VmConfig } from '../datastore/config.js';
import type { Datastore } from '../datastore/datastore.js';
import { configDriveText, parseConfigDrive } from '../datastore/config-drive.js';
import { faultPoint } from '../faults.js';
import { sendColdCopy } from '../migration/cold.js';
import { finishPostcopy, postcopyPausedError, runSource, type SourceContext } from '../migration/source.js';
import { pushPostcopy } from '../migration/postcopy-source.js';
import { NET_REGION_PAGES } from '../../shared/constants.js';
import type { FrameSocket } from '../../shared/frame-socket.js';
import type { SourceReport } from '../../shared/protocol.js';
import { toFerryError } from '../../shared/errors.js';
import { openPageStream } from '../migration/page-stream-source.js';
import { fromStreamSocket } from '../../shared/page-stream.js';
import { MigrationTarget } from '../migration/target.js';
import { TRACE_RECORDING } from './trace.js';
import { requireCpu } from '../vm/cpu-model.js';
import { attachNetwork } from '../vm/net/attach.js';
import { attachDisk } from '../vm/disk/attach.js';
import type { LocalDisk } from '../storage/live-storage.js';
import type { VirtualMachine } from '../vm/vm.js';
import { hashFile } from '../../shared/file-chunks.js';
import { FileSink } from '../storage/file-sink.js';
import { syncPath } from '../datastore/durable.js';
import { mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';

/** The small files a live migration carries: config, NVRAM, log, and the config drive when the VM has one. */
async function smallFiles(files: Datastore, config: VmConfig): Promise<NonNullable<SourceContext['files']>> {
  const configDrive = await files.readConfigDriveText(config.name);
  return {
    config: JSON.stringify(config), nvram: new Uint8Array(await files.readNvram(config.name)), log: await files.readLog(config.name),
    ...(configDrive !== undefined ? { configDrive } : {}),
  };
}

/** The local disks a `--copy-storage` migration copies: the first disk, through its block backend. */
function localDisks(vm: VirtualMachine, local: VirtualMachine['disks']): LocalDisk[] {
  if (local.length > 1 || local[0] !== vm.disks[0]) {
    throw new FerryError(ErrorCode.VM_STATE, `${vm.name} has local disks other than its first (${local.map((disk) => disk.file).join(', ')}); --copy-storage copies a VM's first disk`, 'move the others to shared storage, or migrate cold');
  }
  if (!vm.disk0) throw new FerryError(ErrorCode.VM_STATE, `${vm.name}'s disk has no block backend here`, 'a VM copies its disk live while it runs or is paused on a host with a datastore');
  const disk = local[0]!;
  return [{ file: disk.file, sizeBytes: disk.sizeBytes, backend: vm.disk0 }];
}

export function serveMigrateControl(connection: ControlServer, agent: Agent): void {
  const { catalog, log } = agent;

  connection.handle('migrate.reserve', async ({ migrationId, name, memoryBytes, workload, epoch, sourceUrl, sharedStorageId, cpuModel }) => {
    agent.requireOpen('incoming migrations', name);
    // Stage 1 refuses what the destination cannot run: the guest goes on using every flag it was started with.
    requireCpu(agent.name, agent.hostCpu, { name, cpu: cpuModel }, 'receive-live');
    await agent.requireSharedStorage(name, sharedStorageId);
    if (agent.incoming.has(migrationId)) {
      throw new FerryError(ErrorCode.VM_STATE, `migration ${migrationId} already has a reservation here`, 'start a new migration');
    }
    const vm = await catalog.allocate({ name, memoryBytes, workload }, 'migrating-in', 'receive it');
    if (agent.incoming.has(migrationId)) {
      // Another reservation under the same id got here first while memory was allocated.
      await catalog.release(vm);
      throw new FerryError(ErrorCode.VM_STATE, `migration ${migrationId} already has a reservation here`, 'start a new migration');
    }
    vm.cpuModel = { model: cpuModel.model, flags: [...cpuModel.flags] };
    const target = new MigrationTarget(migrationId, vm, catalog, agent.faults, log, { epoch, url: sourceUrl }, agent.activations);
    // Called as the VM starts running here; it takes the VM at once (before any other request can), so nothing acts
    // on it until its files are written.
    target.registerFiles = (files, newEpoch) => catalog.exclusive(name, 'file registration', async () => {
      if (!agent.files) return;
      // The VM is held from here; the work (parsing, checking, writing) waits a turn, so the activation's reply,
      // which is downtime, goes first.
      await new Promise<void>((resolve) => setImmediate(resolve));
      const config = vmConfigSchema.parse({ ...JSON.parse(files.config), epoch: newEpoch });
      if (config.name !== name) throw new FerryError(ErrorCode.BAD_INPUT, `the config that arrived names ${config.name}, the migration ${name}`);
      vm.network = config.network;
      vm.disks = config.disks;
      vm.leaseUntil = config.leaseUntil;
      vm.image = config.image;
      // The config drive is checked before it is written: it becomes a file here, and a guest reads it at its next boot.
      const configDrive = files.configDrive === undefined ? undefined : configDriveText(parseConfigDrive(files.configDrive));
      // With --copy-storage the folder exists already, the copied disks in it (placed at activation): sync them, fill it.
      if (target.disksPlaced) for (const disk of config.disks.filter((entry) => !entry.shared)) await syncPath(agent.files.diskPath(name, disk));
      await agent.files[target.disksPlaced ? 'fill' : 'create'](config, Buffer.from(files.nvram), `${files.log}${new Date().toISOString()} arrived on ${agent.name} (migration ${migrationId}, epoch ${newEpoch})\n`, configDrive);
    });
    target.attachNetwork = (earlier) => attachNetwork(vm, { mode: agent.addressMode, log, fresh: false, earlier });
    // Live migration moves VMs whose disks are on shared storage: the destination opens the same image.
    // The config is read once, when verification brings it (prepareDisk, after the reply), not in the activation; a
    // switchover activates in the same request, so only its disks are read and checked there (the whole config is
    // checked when the VM's files are registered, after the activation).
    let parsed: { config: string; disks: VirtualMachine['disks'] } | undefined;
    const disksOf = (config: string): VirtualMachine['disks'] => {
      if (parsed?.config !== config) parsed = { config, disks: vmConfigSchema.shape.disks.parse((JSON.parse(config) as { disks?: unknown }).disks) };
      return parsed.disks;
    };
    target.prepareDisk = (config) => {
      if (config !== undefined) disksOf(config);
    };
    target.attachDisk = async (config) => {
      if (config === undefined) return;
      vm.disks = disksOf(config);
      await attachDisk(vm, agent.files, log);
    };
    const files = agent.files;
    if (files) {
      target.diskStaging = {
        create: async (disks) => {
          await mkdir(files.stagingFolder(migrationId), { recursive: true });
          const sinks: FileSink[] = [];
          for (const disk of disks) sinks.push(await FileSink.create(files.stagingFile(migrationId, disk.file), disk.sizeBytes, agent.faults.fullDiskAfterBytes));
          return sinks;
        },
        imageDigest: async (sink) => (await hashFile(sink.file)).xxh64,
        place: async (sinks) => {
          await files.makeFolder(name);
          for (const sink of sinks) {
            await sink.close();
            await rename(sink.file, files.diskPath(name, { file: path.basename(sink.file) }));
          }
          await rm(files.stagingFolder(migrationId), { recursive: true, force: true });
        },
        remove: async (sinks) => {
          for (const sink of sinks) await sink.close().catch(() => undefined);
          await rm(files.stagingFolder(migrationId), { recursive: true, force: true });
        },
      };
    }
    target.onFinished = () => agent.incoming.delete(migrationId);
    target.onSourceUnconfirmed = () => agent.settlements.confirmRelease({ migrationId, name, epoch: target.vm.epoch, sourceUrl });
    agent.incoming.set(migrationId, target);
    log.info('reserved', { vm: name, memoryBytes, migration: migrationId });
    return { freeBytesAfter: catalog.freeBytes, ...(vm.populateMs !== undefined ? { populateMs: vm.populateMs } : {}) };
  });

  connection.handle('migrate.release', async ({ migrationId }) => {
    // A verified image is kept: its source may have committed (target.ts says why).
    await agent.incoming.get(migrationId)?.drop('released by the coordinator', { keepVerified: true });
    return {};
  });

  connection.handle('migrate.start', async ({ migrationId, name, destination, options }, context) => {
    if (destination.name === agent.name) {
      throw new FerryError(ErrorCode.BAD_INPUT, `${name} is already on ${agent.name}`, 'pick another destination');
    }
    const arrivedMs = performance.now();
    // A trace recording gives way to a migration (control/trace.ts says why): it ends at its last whole sample.
    if (await catalog.preempt(name, TRACE_RECORDING, new FerryError(ErrorCode.CANCELLED, `a migration of ${name} to ${destination.name} began`))) {
      log.info('trace recording stopped for a migration', { vm: name, migration: migrationId });
    }
    return catalog.exclusive(name, 'migration', async (vm, cancelled) => {
      const local = vm.disks.filter((disk) => !disk.shared);
      if (local.length > 0 && !options.copyStorage) {
        throw new FerryError(
          ErrorCode.VM_STATE,
          `${name} has disks on ${agent.name}'s local storage only (${local.map((disk) => disk.file).join(', ')}): live migration moves memory, not local disks`,
          `copy them too, live: \`ferry migrate ${name} --to ${destination.name} --copy-storage\`; or stop it and move it cold (\`--cold\`); or keep its disks on storage both hosts mount (ferry-agent --shared-storage, \`ferry storage move ${name} --to shared\`)`,
        );
      }
      if (options.postcopy) requirePostcopyFits(vm, options);
      const storage = options.copyStorage && local.length > 0 ? localDisks(vm, local) : undefined;
      log.info('migration starting', { vm: name, to: destination.name, migration: migrationId });
      await agent.logEvent(name, `migrating to ${destination.name} (migration ${migrationId})`);
      const files = agent.files ? await smallFiles(agent.files, agent.configOf(vm)) : undefined;
      const wasRunning = vm.state === 'running';
      vm.state = 'migrating-out';
      let peer;
      try {
        peer = await agent.dialPeer(destination.url, migrationId, agent.name, context.signal, agent.token);
      } catch (error) {
        vm.state = wasRunning ? 'running' : 'paused';
        throw error;
      }
      // Pages on a stream of their own unless asked not to (or it cannot be opened): shared/page-stream.ts.
      let pageStream: SourceContext['pageStream'];
      // An agent that listens nowhere (the in-memory network of the tests) has no page stream to offer.
      if (options.pageStream !== 'ws' && agent.pageStreams.listening) {
        try {
          const opened = await openPageStream(agent.pageStreams, (ticket) => peer.request('peer.stream', { ticket }, { timeoutMs: PEER_REPLY_TIMEOUT_MS, signal: context.signal }), log);
          if (opened.socket) {
            pageStream = { socket: fromStreamSocket(opened.socket) };
          } else {
            pageStream = { fallback: opened.fallback };
            log.warn('no page stream of its own; pages go over the peer WebSocket', { vm: name, reason: opened.fallback });
          }
        } catch (error) {
          peer.close();
          vm.state = wasRunning ? 'running' : 'paused';
          throw error;
        }
      }
      // Cancelled by `migrate.cancel` (through the catalog), or by the coordinator's connection closing.
      const cancel = new AbortController();
      const onCancelled = (): void => cancel.abort(cancelled.reason);
      const onClosed = (): void => cancel.abort(new FerryError(ErrorCode.CANCELLED, 'the coordinator disconnected'));
      cancelled.addEventListener('abort', onCancelled, { once: true });
      context.signal.addEventListener('abort', onClosed, { once: true });
      const startupMs = performance.now() - arrivedMs;
      const report = await runSource({
        ...(files ? { files } : {}),
        forgetFiles: (vmName) => agent.forgetFiles(vmName),
        faults: agent.faults,
        vm,
        wasRunning,
        catalog,
        peer,
        options,
        signal: cancel.signal,
        now: () => performance.now(),
        emit: (event) => {
          void context.event(event);
          agent.events.publish({ kind: 'migration', name, migrationId, to: destination.name, event });
        },
        log,
        collectGarbage: () => agent.collectGarbage(),
        onInDoubt: (doubtful, resume) => agent.settlements.add({ migrationId, vm: doubtful, destinationUrl: destination.url, resume }),
        ...(storage ? { storage } : {}),
        ...(pageStream ? { pageStream } : {}),
        migration: { id: migrationId, destination: destination.name },
        onPostcopyParked: (parked) => agent.postcopiesOut.set(name, { ...parked, migrationId, destination, resuming: false }),
      }).catch((error: unknown) => {
        agent.events.publish({ kind: 'migration-end', name, migrationId, to: destination.name, error: toFerryError(error).toPayload() });
        throw error;
      }).finally(() => {
        cancelled.removeEventListener('abort', onCancelled);
        context.signal.removeEventListener('abort', onClosed);
      });
      agent.events.publish({ kind: 'migration-end', name, migrationId, to: destination.name, report });
      log.info('migration finished', { vm: name, outcome: report.outcome, migration: migrationId });
      agent.migrationHistory.record(destination.name, startupMs, report, options.maxBandwidthBytesPerSec > 0);
      if (report.outcome === 'rolled-back') await agent.logEvent(name, `migration to ${destination.name} rolled back: ${report.error?.message ?? ''}`);
      return report;
    });
  });

  connection.handle('migrate.resume', async ({ name }, context) => {
    const parked = agent.postcopiesOut.get(name);
    if (parked) return resumePostcopy(agent, name, parked, context);
    const target = [...agent.incoming.values()].find((incoming) => incoming.vm.name === name && incoming.state === 'postcopy');
    if (target) return checkPostcopySource(agent, target);
    throw new FerryError(ErrorCode.VM_STATE, `${agent.name} has no post-copy of ${name} to resume`, 'a post-copy is resumed on the host that holds the paused copy (`postcopy-out` in `ferry vm list`)');
  });

  connection.handle('migrate.cancel', async ({ name, reason }) => {
    const why = reason === 'timeout'
      ? new FerryError(ErrorCode.TIMEOUT, `the migration of ${name} ran past its --timeout`, 'give it a longer --timeout, a faster link, or --max-rounds')
      : new FerryError(ErrorCode.CANCELLED, `the migration of ${name} was cancelled`, 'the VM runs on its source as before');
    if (!catalog.cancel(name, 'migration', why)) {
      throw new FerryError(ErrorCode.VM_STATE, `${agent.name} is not migrating ${name}`, 'run `ferry vm list` to see where it is and what it is doing');
    }
    log.info('migration cancel asked', { vm: name, reason });
    return { cancelling: true };
  });

  connection.handle('cold.start', async ({ migrationId, name, destination, sourceUrl }, context) => {
    const files = agent.files;
    if (!files) throw new FerryError(ErrorCode.VM_STATE, `${agent.name} keeps no files`, 'run the agent with --datastore');
    return catalog.holdStored(name, 'cold migration', async (stored) => {
      const startedMs = performance.now();
      try {
        await agent.logEvent(name, `cold migration to ${destination.name} (migration ${migrationId})`);
        const peer = await agent.dial(destination.url, context.signal);
        let sent;
        try {
          const sharedStorageId = stored.config.disks.some((disk) => disk.shared) ? await files.sharedStorageId() : undefined;
          sent = await sendColdCopy(files, stored.config, stored.suspended, migrationId, sourceUrl, peer, sharedStorageId, (progress) => void context.event(progress));
        } finally {
          peer.close();
        }
        // Registered there: this copy goes.
        await faultPoint(agent.faults, 'cold-sent', log, () => undefined);
        await files.remove(name);
        catalog.forgetStored(name);
        log.info('cold migration finished', { vm: name, to: destination.name, bytes: sent.bytesSent });
        return {
          files: sent.manifest,
          bytesSent: sent.bytesSent,
          bytesSkipped: sent.bytesSkipped,
          durationMs: performance.now() - startedMs,
        };
      } catch (error) {
        await agent.logEvent(name, `cold migration to ${destination.name} failed: ${(error as Error).message}`);
        throw error;
      }
    });
  });
}

/**
 * Post-copy needs every access to guest memory to go through the vCPU's check of the present map (vcpu-worker.ts).
 * The kv workload's table and a disk copied live do not, and `--verify full` hashes all of memory at a moment when
 * part of it is still at the source: those are refused before anything starts.
 */
function requirePostcopyFits(vm: VirtualMachine, options: { verify: string; copyStorage?: boolean | undefined }): void {
  const refuse = (why: string, hint: string): never => {
    throw new FerryError(ErrorCode.BAD_INPUT, `post-copy cannot move ${vm.name}: ${why}`, hint);
  };
  if (vm.workload.kind === 'kv') refuse('its kv table is read and written outside the vCPU\'s page checks', 'migrate it with pre-copy (leave out --postcopy)');
  if (options.verify === 'full') refuse('--verify full hashes all of memory at the switch, when part of it is still on the source', 'use --verify pages: every page is checked against its hash as it arrives');
  if (options.copyStorage) refuse('--copy-storage is done with pre-copy only', 'move the disk first (`ferry storage move`), then migrate with --postcopy');
  if (vm.pageCount <= NET_REGION_PAGES) refuse(`it has ${vm.pageCount} pages, no more than its network device's`, 'give it more memory, or leave out --postcopy');
}

type ParkedEntry = Agent['postcopiesOut'] extends Map<string, infer T> ? T : never;

/**
 * `migrate.resume` on the source: reconnects to the destination and sends the pages it still lacks. A destination
 * that no longer knows the migration either never ran the VM (no activation record: this copy is the VM, and runs on
 * here) or ran it and lost what it had (it crashed: the VM is lost, FERRY_ERR_POSTCOPY_LOST).
 */
async function resumePostcopy(agent: Agent, name: string, parked: ParkedEntry, context: { signal: AbortSignal; event: (body: unknown) => void }): Promise<SourceReport> {
  const { log } = agent;
  const { vm, stats, destination, migrationId } = parked;
  if (parked.resuming) throw new FerryError(ErrorCode.VM_STATE, `a resume of ${name}'s post-copy is under way`, 'wait for it to finish');
  parked.resuming = true;
  const startedMs = performance.now();
  const base = (outcome: SourceReport['outcome'], error?: FerryError): SourceReport => ({
    outcome, committed: outcome !== 'rolled-back', throttlePct: 0, rounds: [], bytesSent: stats.bytesSent, postcopy: stats,
    stages: [{ stage: 6, name: 'post-copy', startMs: 0, endMs: performance.now() - startedMs }],
    pageStream: { kind: parked.pageStreamKind },
    ...(error ? { error: error.toPayload() } : {}),
  });
  try {
    let peer;
    try {
      peer = await agent.dialPeer(destination.url, migrationId, agent.name, context.signal, agent.token, true);
    } catch (caught) {
      const error = toFerryError(caught);
      if (error.code !== ErrorCode.VM_NOT_FOUND) throw error;
      return await settleForgotten(agent, name, parked, base);
    }
    let pushSocket: FrameSocket | undefined;
    if (parked.pageStreamKind === 'tcp' && agent.pageStreams.listening) {
      const opened = await openPageStream(agent.pageStreams, (ticket) => peer.request('peer.stream', { ticket }, { timeoutMs: PEER_REPLY_TIMEOUT_MS, signal: context.signal }), log);
      if (opened.socket) pushSocket = fromStreamSocket(opened.socket);
    }
    const state = await peer.request('peer.postcopy-state', {}, { timeoutMs: PEER_REPLY_TIMEOUT_MS, signal: context.signal });
    const linkedPeer = peer;
    if (vm.postcopy) vm.postcopy = { ...vm.postcopy, linked: () => !linkedPeer.signal.aborted };
    stats.resumes += 1;
    stats.faults = state.faults;
    log.info('post-copy resumed', { vm: name, migration: migrationId, resumes: stats.resumes });
    const emit = (event: Parameters<typeof context.event>[0]): void => context.event(event);
    let ended;
    try {
      ended = await pushPostcopy({
        vm, peer, pushSocket, hashes: parked.hashes, tableDigest: parked.tableDigest, missing: state.missing, round: parked.round,
        maxBandwidthBytesPerSec: 0, signal: context.signal, now: () => performance.now(), emit, log, stats,
      });
    } catch (caught) {
      peer.close();
      pushSocket?.close();
      const error = postcopyPausedError(name, toFerryError(caught));
      log.warn('post-copy link lost again', { vm: name, error: error.message });
      return base('postcopy-paused', error);
    }
    pushSocket?.close();
    agent.postcopiesOut.delete(name);
    await finishPostcopy({ forgetFiles: (vmName) => agent.forgetFiles(vmName), catalog: agent.catalog }, vm, peer);
    return {
      ...base('committed'),
      verification: { mode: 'pages', sourceDigest: ended.sourceDigest, destDigest: ended.answer.destDigest, match: ended.answer.match, pageMismatches: stats.refetched },
    };
  } finally {
    parked.resuming = false;
  }
}

/** The destination no longer knows the post-copy: did it ever run the VM? Its activation record says (settlement.ts). */
async function settleForgotten(agent: Agent, name: string, parked: ParkedEntry, base: (outcome: SourceReport['outcome'], error?: FerryError) => SourceReport): Promise<SourceReport> {
  const { vm, destination, migrationId } = parked;
  const peer = await agent.dial(destination.url);
  let phase;
  try {
    ({ phase } = await peer.request('peer.settle', { migrationId, resume: false }, { timeoutMs: PEER_REPLY_TIMEOUT_MS }));
  } finally {
    peer.close();
  }
  if (phase === 'pending') throw new FerryError(ErrorCode.VM_STATE, `${destination.name} is still deciding about ${name}`, 'retry in a moment');
  agent.postcopiesOut.delete(name);
  vm.postcopy = undefined;
  if (phase === 'unknown') {
    // It never ran there: this copy, complete and paused since the switch, is the VM.
    if (parked.wasRunning) await vm.resume();
    vm.state = parked.wasRunning ? 'running' : 'paused';
    agent.log.warn('post-copy never ran at the destination; the VM runs here again', { vm: name, migration: migrationId });
    await agent.logEvent(name, `post-copy to ${destination.name} never started there; running here again (migration ${migrationId})`);
    return base('rolled-back', new FerryError(ErrorCode.CONNECTION_LOST, `${destination.name} never ran ${name}: the switch did not reach it`, 'the VM runs on the source as before'));
  }
  vm.state = 'lost';
  agent.log.error('post-copy lost: the destination ran the VM and no longer has it', { vm: name, migration: migrationId });
  await agent.logEvent(name, `lost in post-copy: ${destination.name} ran it and no longer has it (migration ${migrationId})`);
  throw new FerryError(ErrorCode.POSTCOPY_LOST, `${name} was lost in post-copy: ${destination.name} ran it, then lost what it held (it crashed or restarted)`, `the copy here is stale (the guest ran on there); destroy it: \`ferry vm destroy ${name}\``);
}

/**
 * `migrate.resume` on the destination, when no host holds a paused copy: asks the source whether it still holds the
 * pages this VM lacks. It does: resume from there. It does not (it crashed or restarted): the VM is lost here too.
 */
async function checkPostcopySource(agent: Agent, target: MigrationTarget): Promise<SourceReport> {
  const { name } = target.vm;
  const source = target.sourceName || target.sourceUrl;
  let peer;
  try {
    peer = await agent.dial(target.sourceUrl);
  } catch (error) {
    throw new FerryError(ErrorCode.UNREACHABLE, `${source}, which holds ${target.postcopy?.missing ?? 'the'} page(s) ${name} lacks, cannot be reached: ${toFerryError(error).message}`, `if it crashed, ${name} is lost; if it is only cut off, run \`ferry migrate ${name} --resume\` again once it is back`);
  }
  let state;
  try {
    ({ state } = await peer.request('peer.holds', { migrationId: target.migrationId, name }, { timeoutMs: PEER_REPLY_TIMEOUT_MS }));
  } finally {
    peer.close();
  }
  if (state === 'pending' || state === 'committed') {
    throw new FerryError(ErrorCode.VM_STATE, `${source} still holds the pages ${name} lacks`, `resume it there: \`ferry migrate ${name} --resume\` finds it`);
  }
  const missing = target.postcopy?.missing ?? 0;
  await target.losePostcopy();
  await agent.logEvent(name, `lost in post-copy: ${source} no longer holds the ${missing} page(s) it lacked (migration ${target.migrationId})`);
  throw new FerryError(ErrorCode.POSTCOPY_LOST, `${name} was lost in post-copy: ${source} no longer holds the ${missing} page(s) it lacked (it crashed or restarted)`, `destroy it here (\`ferry vm destroy ${name}\`); a definition left on ${source} starts fresh, without what was in memory`);
}

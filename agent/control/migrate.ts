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
import { runSource, type SourceContext } from '../migration/source.js';
import { openPageStream } from '../migration/page-stream-source.js';
import { fromStreamSocket } from '../../shared/page-stream.js';
import { MigrationTarget } from '../migration/target.js';
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
    return { freeBytesAfter: catalog.freeBytes };
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
    return catalog.exclusive(name, 'migration', async (vm, cancelled) => {
      const local = vm.disks.filter((disk) => !disk.shared);
      if (local.length > 0 && !options.copyStorage) {
        throw new FerryError(
          ErrorCode.VM_STATE,
          `${name} has disks on ${agent.name}'s local storage only (${local.map((disk) => disk.file).join(', ')}): live migration moves memory, not local disks`,
          `copy them too, live: \`ferry migrate ${name} --to ${destination.name} --copy-storage\`; or stop it and move it cold (\`--cold\`); or keep its disks on storage both hosts mount (ferry-agent --shared-storage, \`ferry storage move ${name} --to shared\`)`,
        );
      }
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
        emit: (event) => void context.event(event),
        log,
        collectGarbage: () => agent.collectGarbage(),
        onInDoubt: (doubtful, resume) => agent.settlements.add({ migrationId, vm: doubtful, destinationUrl: destination.url, resume }),
        ...(storage ? { storage } : {}),
        ...(pageStream ? { pageStream } : {}),
      }).finally(() => {
        cancelled.removeEventListener('abort', onCancelled);
        context.signal.removeEventListener('abort', onClosed);
      });
      log.info('migration finished', { vm: name, outcome: report.outcome, migration: migrationId });
      agent.migrationHistory.record(destination.name, startupMs, report, options.maxBandwidthBytesPerSec > 0);
      if (report.outcome === 'rolled-back') await agent.logEvent(name, `migration to ${destination.name} rolled back: ${report.error?.message ?? ''}`);
      return report;
    });
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

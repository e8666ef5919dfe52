/**
 * A host agent: the authority on the VMs of its host. Serves the coordinator's control requests and the peer
 * requests of migrations coming in from other agents.
 */
import { PROTOCOL_VERSION } from '../shared/constants.js';
import { ErrorCode, FerryError } from '../shared/errors.js';
import type { Logger } from '../shared/log.js';
import { controlOps, peerOps, type HostInfo, type VmInfo } from '../shared/protocol.js';
import { RpcConnection } from '../shared/rpc.js';
import { faultPoint, type Faults } from './faults.js';
import { Datastore, randomMac, vmConfigSchema, type StoredVm, type VmConfig } from './datastore.js';
import { ActivationLog } from './migration/activation-log.js';
import { ColdTarget, sendColdCopy } from './migration/cold.js';
import { Settlements } from './migration/settlement.js';
import { connectToDestination, dialPeerAgent, runSource, type PeerClient } from './migration/source.js';
import { MigrationTarget } from './migration/target.js';
import { Registry } from './registry.js';
import type { VirtualMachine } from './vm/vm.js';

export type ControlServer = RpcConnection<typeof controlOps, Record<never, never>>;
export type PeerServer = RpcConnection<typeof peerOps, Record<never, never>>;

/** Dump chunks: 1 MiB, the size ws moves at full speed. */
const DUMP_CHUNK_BYTES = 1024 * 1024;

export interface AgentSettings {
  name: string;
  capacityBytes: number;
  faults: Faults;
  log: Logger;
  /** The cluster's shared secret, which this agent also presents to other agents. */
  token: string;
  /** Opens the page stream to a destination agent; WebSockets unless a test gives an in-memory network. */
  dialPeer?: typeof connectToDestination;
  /** Opens an unbound peer connection, for settling a migration in doubt; WebSockets unless a test says otherwise. */
  dialAgent?: (url: string, token: string) => Promise<PeerClient>;
  /** Where the activation log lives (datastore/migrations); in memory when undefined. */
  activationFolder?: string;
  /** The VMs' files (datastore.ts); none in the in-memory test network, whose VMs live in memory only. */
  datastore?: Datastore;
}

/** How often leases are checked: a VM outlives its lease by at most this. */
const LEASE_CHECK_MS = 1000;

function cpuTime(): { userMs: number; systemMs: number } {
  const usage = process.cpuUsage();
  return { userMs: usage.user / 1000, systemMs: usage.system / 1000 };
}

export class Agent {
  readonly name: string;
  readonly registry: Registry;
  private readonly faults: Faults;
  private readonly log: Logger;
  private readonly incoming = new Map<string, MigrationTarget>();
  /** Migrations this agent is the source of, by VM name: how to cancel each. */
  private readonly outgoing = new Map<string, AbortController>();
  private readonly dialPeer: typeof connectToDestination;
  private readonly token: string;
  private readonly activations: ActivationLog;
  readonly settlements: Settlements;
  private readonly files: Datastore | undefined;
  /** VMs that exist here only as files: powered off (defined) or suspended to disk. */
  private readonly stored = new Map<string, StoredVm>();
  private readonly leases: NodeJS.Timeout;
  private readonly dialAgent: (url: string, token: string) => Promise<PeerClient>;
  /** Powered-off VMs whose files are being sent away right now. */
  private readonly coldBusy = new Set<string>();

  constructor(settings: AgentSettings) {
    this.name = settings.name;
    this.registry = new Registry(settings.name, settings.capacityBytes);
    this.faults = settings.faults;
    this.log = settings.log;
    this.dialPeer = settings.dialPeer ?? connectToDestination;
    this.token = settings.token;
    this.activations = new ActivationLog(settings.activationFolder);
    this.files = settings.datastore;
    const dialAgent = settings.dialAgent ?? dialPeerAgent;
    this.dialAgent = dialAgent;
    this.settlements = new Settlements({
      registry: this.registry,
      incoming: this.incoming,
      log: this.log,
      dial: (url) => dialAgent(url, this.token),
      forgetFiles: (name) => this.forgetFiles(name),
    });
    this.leases = setInterval(() => void this.releaseExpired().then(() => this.settleColdMarks()), LEASE_CHECK_MS);
    this.leases.unref();
  }

  /** Finds the VMs in the datastore, powered off or suspended: what an agent that restarts comes back to. */
  async loadDatastore(): Promise<number> {
    if (!this.files) return 0;
    for (const found of await this.files.scan()) {
      this.stored.set(found.config.name, found);
      this.registry.stored.add(found.config.name);
      await this.files.log(found.config.name, `agent ${this.name} started: found ${found.suspended ? 'suspended' : 'powered off'}`);
    }
    return this.stored.size;
  }

  /** A VM whose disks are on shared storage can come here only if this agent mounts the same storage. */
  private async requireSharedStorage(name: string, wanted: string | undefined): Promise<void> {
    if (wanted === undefined) return;
    const mine = await this.files?.sharedStorageId();
    if (mine !== wanted) {
      throw new FerryError(ErrorCode.VM_STATE, `${name}'s disks are on shared storage that ${this.name} does not mount`, 'start this agent with the same --shared-storage as the source, or pick a host that mounts it');
    }
  }

  private async forgetFiles(name: string): Promise<void> {
    await this.files?.remove(name);
  }

  private async logEvent(name: string, event: string): Promise<void> {
    await this.files?.log(name, event).catch(() => undefined);
  }

  /** VM info for a VM with memory here, or one that exists only as files; with the tail of its log. */
  private async vmInfo(name: string): Promise<VmInfo> {
    const tail = async (): Promise<string[]> => ((await this.files?.readLog(name)) ?? '').trim().split('\n').filter(Boolean).slice(-20);
    const entry = this.stored.get(name);
    if (entry && !this.registry.hasMachine(name)) {
      const { config } = entry;
      return {
        name, host: this.name, state: entry.suspended ? 'suspended' : 'defined', memoryBytes: config.memoryBytes, epoch: config.epoch,
        workload: config.workload, disks: config.disks, network: config.network, leaseUntil: config.leaseUntil,
        cpu: entry.registers ? { x: entry.registers.x, n: entry.registers.n } : { x: config.workload.seed, n: 0 },
        lastBlackoutMs: 0, createdAt: config.createdAt, log: await tail(),
      };
    }
    return { ...this.registry.get(name).info(this.name), log: await tail() };
  }

  private configOf(vm: VirtualMachine): VmConfig {
    return {
      name: vm.name, memoryBytes: vm.memoryBytes, workload: vm.workload, epoch: vm.epoch, disks: vm.disks,
      network: vm.network, leaseUntil: vm.leaseUntil, createdAt: vm.createdAt.toISOString(),
    };
  }

  /**
   * For each VM that arrived by cold migration and is still marked: tell its source to forget its older copy (it may
   * have crashed before deleting it), then drop the mark. Unreachable sources are asked again next time.
   */
  private async settleColdMarks(): Promise<void> {
    for (const [name, entry] of [...this.stored]) {
      const mark = entry.config.coldFrom;
      if (!mark || !this.files) continue;
      try {
        const peer = await this.dialAgent(mark.sourceUrl, this.token);
        try {
          await peer.request('peer.forget', { name, epoch: entry.config.epoch }, { timeoutMs: 5000 });
        } finally {
          peer.close();
        }
        const { coldFrom: _settled, ...config } = entry.config;
        await this.files.writeConfig(config);
        this.stored.set(name, { ...entry, config });
      } catch {
        // the source is unreachable: ask again next tick
      }
    }
  }

  /** Releases every VM whose lease has ended: destroyed, files and disks with it (they were provisioned so). */
  private async releaseExpired(): Promise<void> {
    const now = Date.now();
    const expired = (lease: string | null | undefined): boolean => lease !== null && lease !== undefined && Date.parse(lease) <= now;
    for (const vm of this.registry.list()) {
      if (!expired(vm.leaseUntil) || (vm.state !== 'running' && vm.state !== 'paused') || vm.busy) continue;
      await this.exclusive(vm.name, 'release', async (held) => this.registry.release(held)).catch(() => undefined);
      await this.files?.remove(vm.name);
      this.log.info('lease ended: VM released', { vm: vm.name });
    }
    for (const [name, entry] of [...this.stored]) {
      if (!expired(entry.config.leaseUntil) || this.registry.hasMachine(name)) continue;
      this.stored.delete(name);
      this.registry.stored.delete(name);
      await this.files?.remove(name);
      this.log.info('lease ended: VM released', { vm: name });
    }
  }

  async hostInfo(): Promise<HostInfo> {
    return {
      name: this.name,
      version: PROTOCOL_VERSION,
      capacityBytes: this.registry.capacityBytes,
      usedBytes: this.registry.usedBytes,
      freeBytes: this.registry.freeBytes,
      vms: [
        ...this.registry.list().map((vm) => ({ name: vm.name, host: this.name, state: vm.state, memoryBytes: vm.memoryBytes, epoch: vm.epoch, ...(vm.network ? { ip: vm.network.ip } : {}) })),
        ...[...this.stored.values()]
          .filter((entry) => !this.registry.hasMachine(entry.config.name))
          .map(({ config, suspended }) => ({ name: config.name, host: this.name, state: suspended ? 'suspended' as const : 'defined' as const, memoryBytes: config.memoryBytes, epoch: config.epoch, ...(config.network ? { ip: config.network.ip } : {}) })),
      ],
      diskFreeBytes: this.files ? await this.files.freeBytes() : 0,
      ...(this.files?.shared ? { sharedStorageId: await this.files.sharedStorageId() } : {}),
      cpu: cpuTime(),
    };
  }

  /**
   * Runs `operation` with VM `name` to itself. Only a running or paused VM that no other operation holds may be
   * acted on: a dump, a pause or a migration never interleave on one VM (a migration that began while a dump had the
   * guest paused would take the dump's pause for the guest's own).
   */
  private async exclusive<T>(name: string, action: string, operation: (vm: VirtualMachine) => Promise<T>): Promise<T> {
    const vm = this.registry.get(name);
    if (vm.state !== 'running' && vm.state !== 'paused') {
      throw new FerryError(ErrorCode.VM_STATE, `cannot ${action} ${name}: it is ${vm.state}`, 'wait for its migration to finish, then retry');
    }
    if (vm.busy) {
      throw new FerryError(ErrorCode.VM_STATE, `cannot ${action} ${name}: a ${vm.busy} of it is under way`, 'wait for it to finish, then retry');
    }
    vm.busy = action;
    try {
      return await operation(vm);
    } finally {
      vm.busy = undefined;
    }
  }

  serveControl(connection: ControlServer): void {
    connection.handle('host.info', () => this.hostInfo());

    connection.handle('vm.create', async ({ name, memoryBytes, workload, prealloc, diskBytes, network, leaseUntil }) => {
      const vm = await this.registry.allocate({ name, memoryBytes, workload }, 'paused', 'be created', prealloc ?? false);
      try {
        if (diskBytes) vm.disks = [{ file: 'disk0.img', sizeBytes: diskBytes, ...(this.files?.shared ? { shared: true } : {}) }];
        if (network) vm.network = { ...network, mac: randomMac() };
        if (leaseUntil) vm.leaseUntil = leaseUntil;
        await this.files?.create(this.configOf(vm), undefined, '');
        await this.logEvent(name, `created on ${this.name}: ${memoryBytes} bytes of memory, ${workload.kind} workload${diskBytes ? `, disk0.img of ${diskBytes} bytes` : ''}${vm.network ? `, ${vm.network.ip}/${vm.network.prefix} (${vm.network.mac})` : ''}${leaseUntil ? `, leased until ${leaseUntil}` : ''}`);
      } catch (error) {
        await this.registry.release(vm);
        throw error;
      }
      await vm.resume();
      vm.state = 'running';
      await this.logEvent(name, 'started');
      this.log.info('vm created', { vm: name, memoryBytes, workload: workload.kind });
      return this.vmInfo(name);
    });

    connection.handle('vm.info', async ({ name }) => {
      if (!this.registry.has(name)) this.registry.get(name); // throws VM_NOT_FOUND with its hint
      return this.vmInfo(name);
    });

    connection.handle('vm.start', async ({ name }) => {
      if (this.coldBusy.has(name)) throw new FerryError(ErrorCode.VM_STATE, `cannot start ${name}: a cold migration of it is under way`, 'wait for it to finish');
      const entry = this.stored.get(name);
      if (!entry || this.registry.hasMachine(name)) {
        const vm = this.registry.get(name);
        throw new FerryError(ErrorCode.VM_STATE, `${name} is already ${vm.state} on ${this.name}`, 'start is for a VM that is powered off or suspended');
      }
      const { config } = entry;
      this.registry.stored.delete(name);
      let vm: VirtualMachine;
      try {
        vm = await this.registry.allocate({ name, memoryBytes: config.memoryBytes, workload: config.workload }, 'paused', 'start');
      } catch (error) {
        this.registry.stored.add(name);
        throw error;
      }
      vm.epoch = config.epoch;
      vm.disks = config.disks;
      vm.network = config.network;
      vm.leaseUntil = config.leaseUntil;
      try {
        if (entry.suspended && this.files) {
          // Exactly where it was: memory and registers as saved (checked against their digest).
          vm.setRegisters(await this.files.loadSuspend(name, vm.memory));
        }
      } catch (error) {
        await this.registry.release(vm);
        this.registry.stored.add(name);
        throw error;
      }
      this.stored.delete(name);
      await vm.resume();
      vm.state = 'running';
      if (entry.suspended) await this.files?.dropSuspend(name);
      await this.logEvent(name, entry.suspended ? 'resumed from suspend' : 'started (powered on)');
      return this.vmInfo(name);
    });

    connection.handle('vm.stop', async ({ name }) => this.exclusive(name, 'stop', async (vm) => {
      const config = this.configOf(vm);
      await this.registry.release(vm);
      this.stored.set(name, { config, suspended: false });
      this.registry.stored.add(name);
      await this.logEvent(name, 'stopped (powered off; memory discarded)');
      return this.vmInfo(name);
    }));

    connection.handle('vm.suspend', async ({ name }) => this.exclusive(name, 'suspend', async (vm) => {
      if (!this.files) throw new FerryError(ErrorCode.VM_STATE, `${this.name} has no datastore to suspend ${name} to`, 'run the agent with --datastore');
      const wasRunning = vm.state === 'running';
      if (wasRunning) await vm.pause();
      const registers = vm.registers();
      try {
        await this.files.saveSuspend(name, vm.memory, registers);
      } catch (error) {
        if (wasRunning) await vm.resume();
        throw error;
      }
      const config = this.configOf(vm);
      await this.registry.release(vm);
      this.stored.set(name, { config, suspended: true, registers });
      this.registry.stored.add(name);
      await this.logEvent(name, `suspended to disk at n=${registers.n}`);
      return this.vmInfo(name);
    }));

    connection.handle('vm.pause', async ({ name }) => this.exclusive(name, 'pause', async (vm) => {
      if (vm.state === 'running') {
        await vm.pause();
        vm.state = 'paused';
        await this.logEvent(name, 'paused');
      }
      return this.vmInfo(name);
    }));

    connection.handle('vm.resume', async ({ name }) => this.exclusive(name, 'resume', async (vm) => {
      if (vm.state === 'paused') {
        await vm.resume();
        vm.state = 'running';
        await this.logEvent(name, 'resumed');
      }
      return this.vmInfo(name);
    }));

    connection.handle('vm.destroy', async ({ name, deleteDisks }) => {
      if (this.coldBusy.has(name)) throw new FerryError(ErrorCode.VM_STATE, `cannot destroy ${name}: a cold migration of it is under way`, 'wait for it to finish');
      const disks = this.stored.get(name)?.config.disks ?? (this.registry.hasMachine(name) ? this.registry.get(name).disks : []);
      if (disks.length > 0 && !deleteDisks) {
        throw new FerryError(ErrorCode.BAD_INPUT, `destroying ${name} would delete its disks (${disks.map((disk) => disk.file).join(', ')})`, `add --yes to delete them: \`ferry vm destroy ${name} --yes\``);
      }
      if (this.registry.hasMachine(name)) {
        await this.exclusive(name, 'destroy', async (vm) => this.registry.release(vm));
      } else if (this.stored.has(name)) {
        this.stored.delete(name);
        this.registry.stored.delete(name);
      } else {
        this.registry.get(name); // VM_NOT_FOUND
      }
      await this.files?.remove(name, true);
      this.log.info('vm destroyed', { vm: name });
      return {};
    });

    connection.handle('vm.dump', async ({ name }, context) => this.exclusive(name, 'dump', async (vm) => {
      const wasRunning = vm.state === 'running';
      if (wasRunning) await vm.pause();
      vm.state = 'paused';
      try {
        const info: VmInfo = vm.info(this.name);
        for (let offset = 0; offset < vm.memoryBytes && !context.signal.aborted; offset += DUMP_CHUNK_BYTES) {
          const length = Math.min(DUMP_CHUNK_BYTES, vm.memoryBytes - offset);
          await context.event({ offset, data: Buffer.from(vm.memory.buffer, offset, length) });
        }
        return { info, wasRunning };
      } finally {
        if (wasRunning) {
          await vm.resume();
          vm.state = 'running';
        }
      }
    }));

    connection.handle('migrate.reserve', async ({ migrationId, name, memoryBytes, workload, epoch, sourceUrl, sharedStorageId }) => {
      await this.requireSharedStorage(name, sharedStorageId);
      if (this.incoming.has(migrationId)) {
        throw new FerryError(ErrorCode.VM_STATE, `migration ${migrationId} already has a reservation here`, 'start a new migration');
      }
      const vm = await this.registry.allocate({ name, memoryBytes, workload }, 'migrating-in', 'receive it');
      const target = new MigrationTarget(migrationId, vm, this.registry, this.faults, this.log, { epoch, url: sourceUrl }, this.activations);
      target.registerFiles = async (files, newEpoch) => {
        if (!this.files) return;
        const config = vmConfigSchema.parse({ ...JSON.parse(files.config), epoch: newEpoch });
        vm.network = config.network;
        vm.leaseUntil = config.leaseUntil;
        await this.files.create(config, Buffer.from(files.nvram), `${files.log}${new Date().toISOString()} arrived on ${this.name} (migration ${migrationId}, epoch ${newEpoch})\n`);
      };
      target.onFinished = () => this.incoming.delete(migrationId);
      this.incoming.set(migrationId, target);
      this.log.info('reserved', { vm: name, memoryBytes, migration: migrationId });
      return { freeBytesAfter: this.registry.freeBytes };
    });

    connection.handle('migrate.release', async ({ migrationId }) => {
      // A verified image is kept: its source may have committed (target.ts says why).
      await this.incoming.get(migrationId)?.drop('released by the coordinator', { keepVerified: true });
      return {};
    });

    connection.handle('migrate.start', async ({ migrationId, name, destination, options }, context) => {
      if (destination.name === this.name) {
        throw new FerryError(ErrorCode.BAD_INPUT, `${name} is already on ${this.name}`, 'pick another destination');
      }
      return this.exclusive(name, 'migration', async (vm) => {
        const local = vm.disks.filter((disk) => !disk.shared);
        if (local.length > 0) {
          throw new FerryError(
            ErrorCode.VM_STATE,
            `${name} has disks on ${this.name}'s local storage only (${local.map((disk) => disk.file).join(', ')}): live migration moves memory, not local disks`,
            `stop it and move it cold (\`ferry vm stop ${name}\`, then \`ferry migrate ${name} --to ${destination.name} --cold\`), or keep its disks on storage both hosts mount (ferry-agent --shared-storage)`,
          );
        }
        this.log.info('migration starting', { vm: name, to: destination.name, migration: migrationId });
        await this.logEvent(name, `migrating to ${destination.name} (migration ${migrationId})`);
        const files = this.files
          ? { config: JSON.stringify(this.configOf(vm)), nvram: new Uint8Array(await this.files.readNvram(name)), log: await this.files.readLog(name) }
          : undefined;
        const wasRunning = vm.state === 'running';
        vm.state = 'migrating-out';
        let peer;
        try {
          peer = await this.dialPeer(destination.url, migrationId, this.name, context.signal, this.token);
        } catch (error) {
          vm.state = wasRunning ? 'running' : 'paused';
          throw error;
        }
        // Cancelled by `migrate.cancel`, or by the coordinator's connection closing.
        const cancel = new AbortController();
        const onClosed = (): void => cancel.abort(new FerryError(ErrorCode.CANCELLED, 'the coordinator disconnected'));
        context.signal.addEventListener('abort', onClosed, { once: true });
        this.outgoing.set(name, cancel);
        const report = await runSource({
          ...(files ? { files } : {}),
          forgetFiles: (vmName) => this.forgetFiles(vmName),
          faults: this.faults,
          vm,
          wasRunning,
          registry: this.registry,
          peer,
          options,
          signal: cancel.signal,
          now: () => performance.now(),
          emit: (event) => void context.event(event),
          log: this.log,
          onInDoubt: (doubtful, resume) => this.settlements.add({ migrationId, vm: doubtful, destinationUrl: destination.url, resume }),
        }).finally(() => {
          this.outgoing.delete(name);
          context.signal.removeEventListener('abort', onClosed);
        });
        this.log.info('migration finished', { vm: name, outcome: report.outcome, migration: migrationId });
        if (report.outcome === 'rolled-back') await this.logEvent(name, `migration to ${destination.name} rolled back: ${report.error?.message ?? ''}`);
        return report;
      });
    });

    connection.handle('vm.resolve', async ({ name }) => {
      if (this.settlements.inDoubt.has(name)) {
        const detail = await this.settlements.settleSource(name);
        return { state: this.registry.has(name) ? this.registry.get(name).state : 'gone', detail };
      }
      const parked = [...this.incoming.values()].find((target) => target.vm.name === name && target.state === 'verified');
      if (parked) {
        const detail = await this.settlements.settleParked(parked);
        return { state: this.registry.has(name) ? this.registry.get(name).state : 'gone', detail };
      }
      const vm = this.registry.get(name);
      return { state: vm.state, detail: 'nothing in doubt here' };
    });

    connection.handle('cold.start', async ({ migrationId, name, destination, sourceUrl }, context) => {
      const entry = this.stored.get(name);
      if (!entry || this.registry.hasMachine(name)) {
        const vm = this.registry.get(name);
        throw new FerryError(ErrorCode.VM_STATE, `${name} is ${vm.state}: cold migration moves a VM that is powered off or suspended`, `stop or suspend it first (\`ferry vm stop ${name}\`), or migrate it live`);
      }
      if (!this.files) throw new FerryError(ErrorCode.VM_STATE, `${this.name} keeps no files`, 'run the agent with --datastore');
      if (this.coldBusy.has(name)) throw new FerryError(ErrorCode.VM_STATE, `a cold migration of ${name} is under way`, 'wait for it to finish');
      this.coldBusy.add(name);
      const startedMs = performance.now();
      try {
        await this.logEvent(name, `cold migration to ${destination.name} (migration ${migrationId})`);
        const peer = await this.dialAgent(destination.url, this.token);
        let sent;
        try {
          const sharedStorageId = entry.config.disks.some((disk) => disk.shared) ? await this.files.sharedStorageId() : undefined;
          sent = await sendColdCopy(this.files, entry.config, migrationId, sourceUrl, peer, sharedStorageId, (progress) => void context.event(progress));
        } finally {
          peer.close();
        }
        // Registered there: this copy goes.
        await faultPoint(this.faults, 'cold-sent', this.log, () => undefined);
        this.stored.delete(name);
        this.registry.stored.delete(name);
        await this.files.remove(name);
        this.log.info('cold migration finished', { vm: name, to: destination.name, bytes: sent.bytesSent });
        return {
          files: sent.manifest,
          bytesSent: sent.bytesSent,
          bytesSkipped: sent.bytesSkipped,
          durationMs: performance.now() - startedMs,
        };
      } catch (error) {
        await this.logEvent(name, `cold migration to ${destination.name} failed: ${(error as Error).message}`);
        throw error;
      } finally {
        this.coldBusy.delete(name);
      }
    });

    connection.handle('migrate.cancel', async ({ name, reason }) => {
      const cancel = this.outgoing.get(name);
      if (!cancel) {
        throw new FerryError(ErrorCode.VM_STATE, `${this.name} is not migrating ${name}`, 'run `ferry vm list` to see where it is and what it is doing');
      }
      this.log.info('migration cancel asked', { vm: name, reason });
      cancel.abort(reason === 'timeout'
        ? new FerryError(ErrorCode.TIMEOUT, `the migration of ${name} ran past its --timeout`, 'give it a longer --timeout, a faster link, or --max-rounds')
        : new FerryError(ErrorCode.CANCELLED, `the migration of ${name} was cancelled`, 'the VM runs on its source as before'));
      return { cancelling: true };
    });
  }

  servePeer(connection: PeerServer): void {
    let target: MigrationTarget | undefined;
    connection.rawFrameHook = (frame) => {
      if (!target) return false;
      try {
        return target.takeFrame(frame);
      } catch (error) {
        this.log.warn('bad page frame; closing the page stream', { error: (error as Error).message });
        connection.close(1008, 'bad page frame');
        return true;
      }
    };
    connection.signal.addEventListener('abort', () => target?.connectionClosed(), { once: true });

    connection.handle('peer.hello', async ({ migrationId, version }) => {
      if (version !== PROTOCOL_VERSION) {
        throw new FerryError(ErrorCode.PROTOCOL_VERSION, `the source speaks protocol ${version}, ${this.name} speaks ${PROTOCOL_VERSION}`, 'run the same ferry version on every host');
      }
      if (target) throw new FerryError(ErrorCode.PROTOCOL, 'this page stream already belongs to a migration', 'open a new connection per migration');
      const found = this.incoming.get(migrationId);
      if (!found) {
        throw new FerryError(ErrorCode.VM_NOT_FOUND, `no reservation for migration ${migrationId} on ${this.name}`, 'the reservation expired or was released; start the migration again');
      }
      found.attach();
      found.closeStream = () => connection.close(1001, 'reservation expired');
      target = found;
      return { name: this.name };
    });
    const current = (): MigrationTarget => {
      if (!target) throw new FerryError(ErrorCode.PROTOCOL, 'peer.hello must come first', 'the peer is not a compatible ferry-agent');
      return target;
    };
    connection.handle('peer.sync', async ({ round }) => {
      const reply = current().sync();
      await faultPoint(this.faults, `round-${round}`, this.log, () => connection.close());
      return reply;
    });
    connection.handle('peer.verify', async (request) => {
      const startedMs = performance.now();
      const reply = current().verify(request);
      this.log.debug('verified', { tookMs: performance.now() - startedMs });
      // 'after-verify' fires once the reply is on its way.
      setImmediate(() => void faultPoint(this.faults, 'after-verify', this.log, () => connection.close()));
      return reply;
    });
    connection.handle('peer.activate', async ({ resume }) => {
      const startedMs = performance.now();
      await faultPoint(this.faults, 'before-activation', this.log, () => connection.close());
      const reply = await current().activate(resume);
      this.log.debug('activated', { tookMs: performance.now() - startedMs });
      return reply;
    });
    connection.handle('peer.settle', async ({ migrationId, resume }) => {
      const found = this.incoming.get(migrationId);
      if (found?.state === 'verified') {
        await found.activate(resume);
        return { phase: 'active' as const };
      }
      if (found) return { phase: found.state === 'active' ? 'active' as const : 'pending' as const };
      return { phase: this.activations.activated(migrationId) ? 'active' as const : 'unknown' as const };
    });
    connection.handle('peer.holds', async ({ migrationId, name }) => ({ state: this.settlements.holds(migrationId, name) }));
    let cold: ColdTarget | undefined;
    connection.signal.addEventListener('abort', () => void cold?.abandon(), { once: true });
    connection.handle('cold.begin', async (request) => {
      await this.requireSharedStorage(request.name, request.sharedStorageId);
      if (!this.files) throw new FerryError(ErrorCode.VM_STATE, `${this.name} keeps no files`, 'run the agent with --datastore');
      if (cold) throw new FerryError(ErrorCode.PROTOCOL, 'this connection already carries a cold migration', 'open a new connection per migration');
      if (this.registry.has(request.name)) {
        throw new FerryError(ErrorCode.VM_EXISTS, `${this.name} already has a VM named ${request.name}`, 'destroy it there first, or pick another host');
      }
      cold = new ColdTarget(this.files, request);
      await cold.begin();
      return {};
    });
    const coldTarget = (): ColdTarget => {
      if (!cold) throw new FerryError(ErrorCode.PROTOCOL, 'cold.begin must come first', 'the peer is not a compatible ferry-agent');
      return cold;
    };
    connection.handle('cold.chunk', async (request) => {
      await faultPoint(this.faults, 'cold-receiving', this.log, () => connection.close());
      await coldTarget().chunk(request);
      return {};
    });
    connection.handle('cold.finish', async ({ manifest }) => {
      const target = coldTarget();
      const reply = await target.finish(manifest);
      const arrived = (await this.files!.scan()).find((found) => found.config.name === target.name);
      if (arrived) {
        this.stored.set(target.name, arrived);
        this.registry.stored.add(target.name);
        await this.logEvent(target.name, `arrived on ${this.name} by cold migration (epoch ${arrived.config.epoch})`);
      }
      await faultPoint(this.faults, 'cold-registered', this.log, () => connection.close());
      return reply;
    });
    connection.handle('peer.forget', async ({ name, epoch }) => {
      const entry = this.stored.get(name);
      if (!entry || this.registry.hasMachine(name) || entry.config.epoch >= epoch) return { forgot: false };
      this.stored.delete(name);
      this.registry.stored.delete(name);
      await this.files?.remove(name);
      this.log.info('forgot a stale definition: the VM runs elsewhere at a later epoch', { vm: name, epoch });
      return { forgot: true };
    });
    connection.handle('peer.abort', async ({ reason }) => {
      await current().drop(`the source aborted: ${reason}`, { keepVerified: false });
      return {};
    });
  }

  async shutdown(): Promise<void> {
    this.settlements.stop();
    clearInterval(this.leases);
    await this.registry.releaseAll();
  }
}

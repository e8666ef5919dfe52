/**
 * A host agent: the authority on the VMs of its host. This file wires its parts together; each part lives in its own:
 *
 *   catalog.ts              the one owner of the host's VMs (machines, files-only VMs, claims) and what each is busy with
 *   control/host.ts         the coordinator's requests about the host
 *   control/vm.ts           ... about one VM's life: create, info, power, pause, dump, destroy, resolve
 *   control/migrate.ts      ... that start, reserve, cancel live and cold migrations
 *   control/image.ts        ... about the images this host holds: list, capture, verify, remove, send to another
 *   peer/live-target.ts     another agent's page stream into a reservation here
 *   peer/settlement.ts      another agent asking how a migration in doubt ended, or telling this one to forget a VM
 *   peer/cold-target.ts     another agent's cold migration into this datastore, and settling what arrived
 *   peer/image-target.ts    an image arriving, from another agent or imported by the coordinator (both connections)
 *   memory-return.ts        giving a departed VM's memory back to the OS
 *   host-state.ts           maintenance and health flags, the host's own signals, its load
 *   leases.ts               releasing VMs whose lease has ended (periodic.ts runs the background loops)
 *   vm-stats/sampler.ts     each running VM's busy fraction, dirty rate and working set (vm info's `stats`)
 *   control/events.ts       watchers (`ferry ui`): this host's events pushed as they happen, and heat-map frames
 *   events.ts               the events watchers are sent: VM log lines, outgoing migrations
 *   control/link.ts         measuring the page stream's throughput to another agent (link.measure)
 *   host-cpu.ts             the host's CPU as guests see it
 *   datastore/              the VMs' files and the host's images
 *   migration/              the migration algorithms themselves (source, target, settlement, cold)
 *   vm/                     a VM: guest memory, dirty log, control block, vCPU worker, CPU model
 *   vm/net/                 a VM's network device (rings in guest memory), its host backend, who serves its address
 */
import { initialDiskY } from '../shared/workloads.js';
import type { HostCpu } from '../shared/cpu.js';
import type { Logger } from '../shared/log.js';
import type { ConfigDrive, controlOps, peerOps, VmInfo } from '../shared/protocol.js';
import type { RpcConnection } from '../shared/rpc.js';
import { Catalog } from './catalog.js';
import { serveHostControl } from './control/host.js';
import { serveImageControl } from './control/image.js';
import { serveMigrateControl } from './control/migrate.js';
import { serveStorageControl } from './control/storage.js';
import { serveVmControl } from './control/vm.js';
import { serveEventsControl } from './control/events.js';
import { AgentEvents } from './events.js';
import type { VmConfig } from './datastore/config.js';
import type { Datastore } from './datastore/datastore.js';
import type { Faults } from './faults.js';
import { HostState } from './host-state.js';
import { MemoryReturn, collectGarbageNow } from './memory-return.js';
import { Leases } from './leases.js';
import { ActivationLog } from './migration/activation-log.js';
import { connectToDestination, dialPeerAgent, type PeerClient } from './migration/peer-client.js';
import { PageStreamTickets } from './migration/page-stream-source.js';
import { Settlements } from './migration/settlement.js';
import type { MigrationTarget } from './migration/target.js';
import type { ParkedPostcopy } from './migration/source.js';
import { ColdMarks, serveColdTarget } from './peer/cold-target.js';
import { serveImageReceiver } from './peer/image-target.js';
import { serveLiveTarget } from './peer/live-target.js';
import { serveSettlementPeer } from './peer/settlement.js';
import { ErrorCode, FerryError } from '../shared/errors.js';
import type { VirtualMachine } from './vm/vm.js';
import { loopbackMode, type AddressMode } from './vm/net/address.js';
import { every, type Periodic } from './periodic.js';
import { STATS_TICK_MS, VmStatsSampler } from './vm-stats/sampler.js';
import { MigrationHistory } from './migration/history.js';
import { serveLinkControl } from './control/link.js';
import { serveTraceControl } from './control/trace.js';
import { serveLinkProbe } from './peer/link-probe.js';

export type ControlServer = RpcConnection<typeof controlOps, Record<never, never>>;
export type PeerServer = RpcConnection<typeof peerOps, Record<never, never>>;

export interface AgentSettings {
  name: string;
  capacityBytes: number;
  faults: Faults;
  log: Logger;
  /** The cluster's shared secret, which this agent also presents to other agents. */
  token: string;
  /** Opens the page stream to a destination agent; WebSockets unless a test gives an in-memory network. */
  dialPeer?: typeof connectToDestination;
  /** Opens an unbound peer connection (settlement, cold migration); WebSockets unless a test says otherwise. */
  dialAgent?: (url: string, token: string, signal?: AbortSignal) => Promise<PeerClient>;
  /** Where the activation log lives (datastore/migrations); in memory when undefined. */
  activationFolder?: string;
  /** The VMs' files; none in the in-memory test network, whose VMs live in memory only. */
  datastore?: Datastore;
  /** This host's CPU as read at start (host-cpu.ts); a host that gave none offers no flags. */
  hostCpu?: HostCpu;
  /** Who serves VMs' addresses on this host (vm/net/address.ts); loopback unless said otherwise. */
  addressMode?: AddressMode;
  /** Free datastore space under which the host calls itself degraded (default 1 GiB). */
  diskReserveBytes?: number;
  /** Mean event-loop lag over which the host calls itself degraded (default 250 ms). */
  lagThresholdMs?: number;
}

export const DEFAULT_DISK_RESERVE_BYTES = 1024 ** 3;
export const DEFAULT_LAG_THRESHOLD_MS = 250;

/** The CPU of a host that reported none: no flags, so it runs only VMs that need none. */
const UNKNOWN_CPU: HostCpu = { vendor: 'unknown', model: 'unknown', flags: [], level: null, masked: [] };

export class Agent {
  readonly name: string;
  readonly catalog: Catalog;
  readonly faults: Faults;
  readonly log: Logger;
  readonly token: string;
  readonly files: Datastore | undefined;
  /** This host's CPU: the flags it offers guests, read once at start. */
  readonly hostCpu: HostCpu;
  /** Live migrations coming in: their reservations, by migration id. */
  readonly incoming = new Map<string, MigrationTarget>();
  /**
   * Post-copies whose link broke after the switch, by VM name: this (source) agent keeps the paused copy and the
   * pages its destination lacks until `migrate.resume` sends them (control/migrate.ts).
   */
  readonly postcopiesOut = new Map<string, ParkedPostcopy & { migrationId: string; destination: { name: string; url: string }; resuming: boolean }>();
  readonly activations: ActivationLog;
  readonly settlements: Settlements;
  readonly dialPeer: typeof connectToDestination;
  /** An unbound peer connection to the agent at `url`, with this cluster's token. */
  readonly dial: (url: string, signal?: AbortSignal) => Promise<PeerClient>;
  readonly leases: Leases;
  /** How this host serves VMs' addresses: loopback (address.ts) or namespaces (namespace.ts). */
  readonly addressMode: AddressMode;
  /** Maintenance and health: whether this host takes new VMs, and how it is doing. */
  readonly state: HostState;
  /** Gives released guest memory back to the OS. */
  readonly memoryReturn: MemoryReturn;
  private readonly coldMarks: ColdMarks;
  /** Each running VM's measured load (vm info's `stats`), sampled by one loop. */
  readonly vmStats: VmStatsSampler;
  private readonly vmStatsLoop: Periodic;
  /** The fixed costs of the last live migrations this host sent, by destination: link.measure reports them. */
  readonly migrationHistory = new MigrationHistory();
  /** Page streams this host's outgoing migrations wait for (migration/page-stream-source.ts); server.ts hands them over. */
  readonly pageStreams = new PageStreamTickets();
  /** What watchers are pushed (control/events.ts): VM log lines, outgoing migrations' events. */
  readonly events = new AgentEvents();

  constructor(settings: AgentSettings) {
    this.name = settings.name;
    this.catalog = new Catalog(settings.name, settings.capacityBytes);
    this.faults = settings.faults;
    this.log = settings.log;
    this.token = settings.token;
    this.files = settings.datastore;
    this.hostCpu = settings.hostCpu ?? UNKNOWN_CPU;
    this.addressMode = settings.addressMode ?? loopbackMode;
    this.dialPeer = settings.dialPeer ?? connectToDestination;
    const dialAgent = settings.dialAgent ?? dialPeerAgent;
    this.dial = (url, signal) => dialAgent(url, this.token, signal);
    this.activations = new ActivationLog(settings.activationFolder);
    this.settlements = new Settlements({
      catalog: this.catalog,
      incoming: this.incoming,
      log: this.log,
      dial: this.dial,
      forgetFiles: (name) => this.forgetFiles(name),
    });
    this.leases = new Leases(this);
    this.coldMarks = new ColdMarks(this);
    this.vmStats = new VmStatsSampler(this.catalog, { log: this.log });
    this.vmStatsLoop = every(STATS_TICK_MS, 'vm stats', this.log, () => this.vmStats.tick());
    this.memoryReturn = new MemoryReturn(() => this.incoming.size > 0 || this.catalog.anyBusyWith('migration'), this.log);
    this.catalog.onMemoryReleased = () => this.memoryReturn.released();
    this.state = new HostState({
      folder: settings.datastore?.root,
      diskReserveBytes: settings.diskReserveBytes ?? DEFAULT_DISK_RESERVE_BYTES,
      lagThresholdMs: settings.lagThresholdMs ?? DEFAULT_LAG_THRESHOLD_MS,
      log: this.log,
    });
  }

  /** Refuses a new VM or an incoming migration while the host is in maintenance or marked degraded. */
  requireOpen(what: 'new VMs' | 'incoming migrations', vm: string): void {
    const refusal = this.state.refusal(what, vm);
    if (refusal) throw refusal;
  }

  /** Finds the VMs in the datastore, powered off or suspended: what an agent that restarts comes back to. */
  async loadDatastore(): Promise<number> {
    if (!this.files) return 0;
    const { vms, unreadable } = await this.files.recover();
    for (const stored of vms) {
      this.catalog.addStored(stored);
      await this.logEvent(stored.config.name, `agent ${this.name} started: found ${stored.suspended ? 'suspended' : 'powered off'}`);
    }
    for (const { name, error } of unreadable) {
      this.log.warn('a VM folder in the datastore could not be read; its files stay for a person to look at', { vm: name, error });
    }
    return vms.length;
  }

  /** A VM whose disks are on shared storage can come here only if this agent mounts the same storage. */
  async requireSharedStorage(name: string, wanted: string | undefined): Promise<void> {
    if (wanted === undefined) return;
    const mine = await this.files?.sharedStorageId();
    if (mine !== wanted) {
      throw new FerryError(ErrorCode.VM_STATE, `${name}'s disks are on shared storage that ${this.name} does not mount`, 'start this agent with the same --shared-storage as the source, or pick a host that mounts it');
    }
  }

  async forgetFiles(name: string): Promise<void> {
    await this.files?.remove(name);
  }

  /** Appends to the VM's log. A log line that cannot be written is said in the agent's own log; the operation goes on. */
  async logEvent(name: string, event: string): Promise<void> {
    this.events.publish({ kind: 'log', name, line: `${new Date().toISOString()} ${event}` });
    await this.files?.log(name, event).catch((error: unknown) => {
      this.log.warn('could not append to the VM\'s log', { vm: name, event, error: String(error) });
    });
  }

  /** VM info for a VM with memory here, or one that exists only as files; with the tail of its log. */
  async vmInfo(name: string): Promise<VmInfo> {
    const tail = async (): Promise<string[]> => ((await this.files?.readLog(name)) ?? '').trim().split('\n').filter(Boolean).slice(-20);
    const configDrive = await this.readConfigDrive(name);
    const drive = configDrive ? { configDrive } : {};
    const stored = this.catalog.findStored(name);
    if (stored) {
      const { config } = stored;
      return {
        name, host: this.name, state: stored.suspended ? 'suspended' : 'defined', memoryBytes: config.memoryBytes, epoch: config.epoch,
        workload: config.workload, disks: config.disks, network: config.network, address: null, leaseUntil: config.leaseUntil,
        cpu: stored.registers
          ? { x: stored.registers.x, n: stored.registers.n, y: stored.registers.y || initialDiskY(config.workload.seed), m: stored.registers.m }
          : { x: config.workload.seed, n: 0, y: initialDiskY(config.workload.seed), m: 0 },
        cpuModel: config.cpuModel,
        lastBlackoutMs: 0, createdAt: config.createdAt, log: await tail(), ...(config.image ? { image: config.image } : {}), ...drive,
      };
    }
    const machine = this.catalog.machine(name);
    const stats = machine.state === 'running' ? this.vmStats.stats(machine) : undefined;
    return { ...machine.info(this.name), log: await tail(), ...drive, ...(stats ? { stats } : {}) };
  }

  /** The VM's config drive; one that cannot be read is said in the log, and shown as none. */
  private async readConfigDrive(name: string): Promise<ConfigDrive | undefined> {
    try {
      return await this.files?.readConfigDrive(name);
    } catch (error) {
      this.log.warn('the VM\'s config drive (cidata.json) cannot be read', { vm: name, error: String(error) });
      return undefined;
    }
  }

  configOf(vm: VirtualMachine): VmConfig {
    return {
      name: vm.name, memoryBytes: vm.memoryBytes, workload: vm.workload, epoch: vm.epoch, disks: vm.disks,
      network: vm.network, leaseUntil: vm.leaseUntil, createdAt: vm.createdAt.toISOString(), cpuModel: vm.cpuModel,
      ...(vm.image ? { image: vm.image } : {}),
      ...(vm.diskRegisters ? { diskRegisters: vm.diskRegisters } : {}),
    };
  }

  serveControl(connection: ControlServer): void {
    serveHostControl(connection, this);
    serveVmControl(connection, this);
    serveMigrateControl(connection, this);
    serveStorageControl(connection, this);
    serveImageControl(connection, this);
    serveImageReceiver(connection, this);
    serveLinkControl(connection, this);
    serveEventsControl(connection, this);
    serveTraceControl(connection, this);
  }

  servePeer(connection: PeerServer): void {
    serveLiveTarget(connection, this);
    serveSettlementPeer(connection, this);
    serveColdTarget(connection, this);
    serveImageReceiver(connection, this);
    serveLinkProbe(connection, this);
  }

  /** A full garbage collection now (a migration's, just before its pause: memory-return.ts). Returns how long it took. */
  collectGarbage(): number {
    return collectGarbageNow();
  }

  async shutdown(): Promise<void> {
    this.state.stop();
    this.memoryReturn.stop();
    this.settlements.stop();
    this.leases.stop();
    this.coldMarks.stop();
    this.vmStatsLoop.stop();
    await this.catalog.releaseAll();
  }
}

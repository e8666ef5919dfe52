/**
 * One VM inside an agent: guest memory, dirty log and control block (layout.ts), its vCPU worker, and its state.
 */
import { PAGE_SIZE } from '../../shared/constants.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { PageHasher, allocateGuestMemory } from '../../shared/page-hash.js';
import type { VmCpuModel } from '../../shared/cpu.js';
import type { GuestFacts, Network, Registers, VmInfo, VmState, WorkloadSpec } from '../../shared/protocol.js';
import { DirtyLog } from './dirty-log.js';
import {
  CONTROL_BYTES, ControlFloatSlot, ControlSlot, VcpuState, controlViews, readRegisterM, readRegisterN, writeRegisterM, writeRegisterN,
  type ControlViews,
} from './layout.js';
import { initialDiskY } from '../../shared/workloads.js';
import type { BlockBackend } from './disk/block-backend.js';
import { BlockMailbox } from './disk/mailbox.js';
import { Vcpu } from './vcpu.js';
import type { NetBackend } from './net/backend.js';
import { NetDevice } from './net/device.js';
import { PresentMap } from './present-map.js';
import { WriteStamps } from './write-stamps.js';
import type { SentPages } from './heat-map.js';
import type { VcpuFaultMessage } from './vcpu-worker.js';

export interface VmSpec {
  name: string;
  memoryBytes: number;
  workload: WorkloadSpec;
  /** Its config drive's text, read by the guest at boot; none for a migration's destination (its guest is running). */
  configDrive?: string | undefined;
}

export class VirtualMachine {
  readonly name: string;
  readonly memoryBytes: number;
  readonly pageCount: number;
  readonly workload: WorkloadSpec;
  /** All of guest memory, as bytes. Never hand `memory.buffer` itself to a socket: pass views (DESIGN.md). */
  readonly memory: Uint8Array;
  /** Hashes guest pages where they lie (guest memory is shared wasm memory for it). */
  readonly hasher: PageHasher;
  readonly dirtyLog: DirtyLog;
  /** Which pages are in memory here: all of them, except on a post-copy's destination until the last arrives. */
  readonly present: PresentMap;
  /** When each page was last written (write-stamps.ts): the heat map's, never migration's. */
  readonly writeStamps: WriteStamps;
  /**
   * While a live migration sends this VM's pages from here: what its page sender has sent (page-sender.ts), which the
   * heat map reads to tell pages whose current contents the destination has.
   */
  sending: SentPages | undefined;
  readonly createdAt = new Date();
  state: VmState;
  /** Ownership epoch: 1 at creation, one more with each committed migration (protocol.ts, vmSummarySchema). */
  epoch = 1;
  /** How long making its memory real took here, when it was (a reservation, or `vm create --prealloc`). */
  populateMs: number | undefined;
  /** Disk images in the VM's datastore folder (config.json's `disks`). */
  disks: { file: string; sizeBytes: number; shared?: boolean }[] = [];
  network: Network | null = null;
  /** Released at this time (ISO 8601), when provisioned with a lease. */
  leaseUntil: string | null = null;
  /**
   * Its CPU model and the flags its guest was started with (agent/vm/cpu-model.ts). Set by whoever makes the VM
   * (creation, a reservation, a power-on); a VM made without one needs no flags.
   */
  cpuModel: VmCpuModel = { model: 'baseline', flags: [] };
  /** The disk registers saved at the last power-off (config.json's `diskRegisters`): a fresh boot goes on from them. */
  diskRegisters: { y: number; m: number } | undefined;
  /** The image disk0 was cloned from (config.json's `image`). */
  image: VmInfo['image'];
  /**
   * What the guest took from its config drive at boot: guest state, like the registers, so a live migration carries
   * it and a suspend keeps it; a fresh boot reads the drive again.
   */
  guest: GuestFacts | undefined;
  /**
   * A post-copy under way (vmInfoSchema `postcopy`): this VM runs here and waits for pages (`destination`), or is the
   * paused source copy that holds them (`source`).
   */
  postcopy: { role: 'source' | 'destination'; migrationId: string; peer: string; missingPages: () => number; linked: () => boolean } | undefined;
  /** The network device's host side, while the VM serves its address on this host (net/attach.ts). */
  net: NetBackend | undefined;
  /** The block mailbox of its first disk, between the vCPU and `disk0` (disk/mailbox.ts). */
  readonly diskMailbox: BlockMailbox;
  /**
   * The block layer of its first disk (disk/block-backend.ts): set whenever the VM has memory here and a first disk
   * this agent can open (disk/attach.ts), whatever its disk rate; stopped with the VM (destroy).
   */
  disk0: BlockBackend | undefined;
  private readonly control: ControlViews;
  private readonly vcpu: Vcpu;

  private constructor(spec: VmSpec, memory: WebAssembly.Memory, dirtyLog: DirtyLog, present: PresentMap, stamps: WriteStamps, control: SharedArrayBuffer, mailbox: BlockMailbox, vcpu: Vcpu, state: VmState) {
    this.present = present;
    this.writeStamps = stamps;
    this.diskMailbox = mailbox;
    this.name = spec.name;
    this.memoryBytes = spec.memoryBytes;
    this.pageCount = spec.memoryBytes / PAGE_SIZE;
    this.workload = spec.workload;
    this.memory = new Uint8Array(memory.buffer, 0, spec.memoryBytes);
    this.hasher = new PageHasher(memory);
    this.dirtyLog = dirtyLog;
    this.control = controlViews(control);
    this.vcpu = vcpu;
    this.state = state;
    this.guest = vcpu.guest;
  }

  /**
   * Allocates memory (all zeros, as a new guest's is) and starts the vCPU parked. `state` says what the VM is
   * meanwhile; call `resume()` to run it. `whileBooting` runs on the memory while the vCPU's worker boots (it touches
   * no guest memory until it first runs): a reservation's page faults, which then hide its 30-60 ms start.
   */
  static async create(spec: VmSpec, state: VmState, whileBooting?: (memory: Uint8Array) => Promise<void>): Promise<VirtualMachine> {
    const pageCount = spec.memoryBytes / PAGE_SIZE;
    const memory = allocateGuestMemory(spec.memoryBytes);
    const dirtyLog = DirtyLog.allocate(pageCount);
    const control = new SharedArrayBuffer(CONTROL_BYTES);
    const { ints } = controlViews(control);
    Atomics.store(ints, ControlSlot.REG_X, spec.workload.seed | 0);
    writeRegisterN(ints, 0);
    Atomics.store(ints, ControlSlot.REG_Y, initialDiskY(spec.workload.seed) | 0);
    writeRegisterM(ints, 0);
    const mailbox = BlockMailbox.allocate();
    const present = PresentMap.allocate(pageCount);
    present.fill();
    const stamps = WriteStamps.allocate(pageCount);
    const starting = Vcpu.start({
      memory: memory.buffer as SharedArrayBuffer, dirtyLog: dirtyLog.words.buffer as SharedArrayBuffer, control, pageCount, workload: spec.workload,
      diskMailbox: mailbox.buffer, present: present.words.buffer as SharedArrayBuffer, writeStamps: stamps.stamps.buffer as SharedArrayBuffer,
      ...(spec.configDrive !== undefined ? { configDrive: spec.configDrive } : {}),
    });
    starting.catch(() => undefined); // awaited below
    if (whileBooting) {
      try {
        await whileBooting(new Uint8Array(memory.buffer, 0, spec.memoryBytes));
      } catch (error) {
        await (await starting.catch(() => undefined))?.stop();
        throw error;
      }
    }
    const vcpu = await starting;
    return new VirtualMachine(spec, memory, dirtyLog, present, stamps, control, mailbox, vcpu, state);
  }

  get vcpuRunning(): boolean {
    return this.vcpu.state === VcpuState.RUNNING;
  }

  /** `quick`: a migration's pause or resume, which is downtime (vcpu.ts, QUICK_WAIT_MS). */
  async pause(options: { quick?: boolean } = {}): Promise<void> {
    await this.vcpu.pause(options);
  }

  async resume(options: { quick?: boolean } = {}): Promise<void> {
    await this.vcpu.resume(options);
  }

  async destroy(): Promise<void> {
    const net = this.net;
    this.net = undefined;
    await net?.stop();
    // The vCPU first: it finishes a disk write in flight (the block layer still serves it), then the block layer.
    await this.vcpu.stop();
    const disk = this.disk0;
    this.disk0 = undefined;
    await disk?.stop();
  }

  /** The rings of its network device, over its guest memory (net/device.ts). */
  netDevice(): NetDevice {
    return new NetDevice(this.memory.buffer as SharedArrayBuffer, this.pageCount, this.dirtyLog);
  }

  /** Whether the vCPU serves the device; only while it is paused (layout.ts, NET_PRESENT). */
  setNetPresent(present: boolean): void {
    if (this.vcpuRunning) throw new FerryError(ErrorCode.INTERNAL, `cannot change ${this.name}'s network device while its vCPU runs`);
    this.vcpu.setNetPresent(present);
  }

  /** Wakes the vCPU: a request waits in its RX ring. */
  ringDoorbell(): void {
    this.vcpu.ring();
  }

  /** "IP:PORT" while it serves an address here, else null. */
  get address(): string | null {
    return this.net?.address ?? null;
  }

  /** The registers; exact while the vCPU is paused, a recent finished write while it runs. */
  registers(): Registers {
    const { ints, floats } = this.control;
    return {
      x: Atomics.load(ints, ControlSlot.REG_X) >>> 0,
      n: readRegisterN(ints),
      y: Atomics.load(ints, ControlSlot.REG_Y) >>> 0,
      m: readRegisterM(ints),
      heartbeatMs: floats[ControlFloatSlot.HEARTBEAT_MS] ?? 0,
    };
  }

  /** Loads registers from elsewhere (a migration's source). Only while the vCPU is paused: it reloads on resume. */
  setRegisters(registers: Registers): void {
    if (this.vcpuRunning) {
      throw new FerryError(ErrorCode.INTERNAL, `cannot load registers into ${this.name} while its vCPU runs`);
    }
    const { ints, floats } = this.control;
    Atomics.store(ints, ControlSlot.REG_X, registers.x | 0);
    writeRegisterN(ints, registers.n);
    // Registers saved before disk writes existed carry y = 0 (protocol.ts): the start value, with m = 0.
    const y = registers.y ?? 0;
    Atomics.store(ints, ControlSlot.REG_Y, (y === 0 ? initialDiskY(this.workload.seed) : y) | 0);
    writeRegisterM(ints, registers.m ?? 0);
    floats[ControlFloatSlot.HEARTBEAT_MS] = registers.heartbeatMs;
  }

  /**
   * Post-copy on this side (the destination): the vCPU checks the present map before each page write and waits for a
   * missing page, telling `onFault` (null: stop checking, every page is here).
   */
  setPostcopy(onFault: ((message: VcpuFaultMessage) => void) | null): void {
    this.vcpu.onFault = onFault ?? undefined;
    this.vcpu.setPostcopy(onFault !== null);
  }

  /** Holds the vCPU to (100 - percent) % of its rate: auto-converge's throttle; 0 lifts it. */
  setThrottle(percent: number): void {
    Atomics.store(this.control.ints, ControlSlot.THROTTLE_PCT, Math.max(0, Math.min(99, Math.round(percent))));
  }

  get throttlePct(): number {
    return Atomics.load(this.control.ints, ControlSlot.THROTTLE_PCT);
  }

  /** Milliseconds the vCPU has spent busy (outside its waits) since it started (layout.ts, BUSY_MS). */
  cpuBusyMs(): number {
    return this.control.floats[ControlFloatSlot.BUSY_MS] ?? 0;
  }

  /** Gap in the guest's heartbeat across its last resume. */
  lastBlackoutMs(): number {
    return this.control.floats[ControlFloatSlot.BLACKOUT_MS] ?? 0;
  }

  /** A view of `count` pages from `firstPage`, over guest memory itself (no copy). */
  pageView(firstPage: number, count = 1): Buffer {
    return Buffer.from(this.memory.buffer, firstPage * PAGE_SIZE, count * PAGE_SIZE);
  }

  info(host: string): VmInfo {
    const { x, n, y, m } = this.registers();
    return {
      name: this.name,
      host,
      state: this.state,
      memoryBytes: this.memoryBytes,
      epoch: this.epoch,
      workload: this.workload,
      disks: this.disks,
      network: this.network,
      address: this.address,
      leaseUntil: this.leaseUntil,
      cpu: { x, n, y, m },
      cpuModel: this.cpuModel,
      lastBlackoutMs: this.lastBlackoutMs(),
      createdAt: this.createdAt.toISOString(),
      ...(this.image ? { image: this.image } : {}),
      ...(this.guest ? { guest: this.guest } : {}),
      ...(this.postcopy ? {
        postcopy: {
          role: this.postcopy.role, migrationId: this.postcopy.migrationId, peer: this.postcopy.peer,
          missingPages: this.postcopy.missingPages(), linked: this.postcopy.linked(),
        },
      } : {}),
    };
  }
}

/**
 * The one owner of this host's VMs: what the host has, in what form, and what each is busy with. Every other part
 * of the agent asks it; none keeps a list of its own.
 *
 *   name ──▶ entry
 *            ├─ machine  a VirtualMachine: guest memory and vCPU here (running, paused, or in a live migration)
 *            ├─ stored   files only, in the datastore (powered off, or suspended to disk)
 *            └─ claim    the name and its memory, taken while memory is being allocated (creation, a migration's
 *                        reservation, powering on); remembers the stored entry it came from, to fall back to
 *
 * What stays true:
 * - one entry per name: a VM is a machine, or files, or being allocated, never two of these at once;
 * - memory promised (machines + claims) never exceeds the capacity;
 * - an entry's `busy` names the one operation that has the VM to itself (a dump, a migration, a cold copy, a
 *   suspend); no second one starts until it ends, so a migration never takes a dump's pause for the guest's own;
 * - a VM's setup (files written, suspend image loaded, vCPU resumed) happens under its claim, so nothing can act
 *   on a VM that is half made.
 *
 * Migrations keep their own indexes (reservations by migration id, copies in doubt: agent.ts, settlement.ts), each
 * pointing at a VM that lives here.
 */
import { NET_REGION_PAGES, PAGE_SIZE } from '../shared/constants.js';
import { ErrorCode, FerryError } from '../shared/errors.js';
import { fillInitialPages, startsFilled } from '../shared/workloads.js';
import type { VmState, VmSummary, WorkloadSpec } from '../shared/protocol.js';
import { traceExtentPages } from '../shared/trace.js';
import { formatBytes } from '../shared/units.js';
import type { StoredVm } from './datastore/config.js';
import { VirtualMachine, type VmSpec } from './vm/vm.js';

interface MachineEntry {
  kind: 'machine';
  vm: VirtualMachine;
  busy?: string | undefined;
  /** How to stop the operation that holds it, when that operation can be cancelled (a live migration). */
  cancel?: AbortController | undefined;
  /** Settles when the operation that holds it ends. */
  idle?: Promise<void> | undefined;
}

/**
 * Holds so short that a request arriving during one waits for it rather than being refused: a migrated VM's files
 * are written just after it starts running here, and a `vm dump` or `vm info` sent the moment `ferry migrate`
 * returns must not fail because of it.
 */
const BRIEF_HOLDS = new Set(['file registration']);

interface StoredEntry {
  kind: 'stored';
  stored: StoredVm;
  busy?: string | undefined;
}
interface ClaimEntry {
  kind: 'claim';
  bytes: number;
  busy: string;
  /** Powering on: the files-only entry to put back if the allocation fails. */
  was?: StoredEntry;
}
type Entry = MachineEntry | StoredEntry | ClaimEntry;

/** Bytes touched per event-loop turn while populating memory, so the agent keeps answering meanwhile. */
const POPULATE_SLICE_BYTES = 64 * 1024 * 1024;

/** Makes the OS back every page of `memory` now (a write per 4 KiB page faults it in; the value stays 0). */
export async function populate(memory: Uint8Array): Promise<void> {
  for (let start = 0; start < memory.length; start += POPULATE_SLICE_BYTES) {
    const end = Math.min(start + POPULATE_SLICE_BYTES, memory.length);
    for (let offset = start; offset < end; offset += 4096) memory[offset] = 0;
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/**
 * Fills a filled guest's memory (a counters guest's always: workloads.ts `startsFilled`) as it starts
 * (`fillInitialPages`), all but the network device's pages at the top of an addressed VM's memory, a slice at a time
 * so the agent keeps answering.
 */
export async function fillGuest(vm: VirtualMachine): Promise<void> {
  if (!startsFilled(vm.workload)) return;
  const pages = vm.pageCount - (vm.network ? NET_REGION_PAGES : 0);
  const slicePages = POPULATE_SLICE_BYTES / PAGE_SIZE;
  for (let from = 0; from < pages; from += slicePages) {
    fillInitialPages(vm.memory, from, Math.min(from + slicePages, pages));
    await new Promise((resolve) => setImmediate(resolve));
  }
}

export class Catalog {
  readonly hostName: string;
  readonly capacityBytes: number;
  private readonly entries = new Map<string, Entry>();

  /** Called when a VM's memory has been let go (agent/memory-return.ts gives it back to the OS). */
  onMemoryReleased: (() => void) | undefined;

  constructor(hostName: string, capacityBytes: number) {
    this.hostName = hostName;
    this.capacityBytes = capacityBytes;
  }

  /** Whether some VM here is held by `action` now (e.g. a live migration out). */
  anyBusyWith(action: string): boolean {
    for (const entry of this.entries.values()) if (entry.busy === action) return true;
    return false;
  }

  /** Stops a VM's vCPU and devices; its memory is then let go. */
  private async dispose(vm: VirtualMachine): Promise<void> {
    try {
      await vm.destroy();
    } finally {
      this.onMemoryReleased?.();
    }
  }

  get usedBytes(): number {
    let used = 0;
    for (const entry of this.entries.values()) {
      if (entry.kind === 'machine') used += entry.vm.memoryBytes;
      else if (entry.kind === 'claim') used += entry.bytes;
    }
    return used;
  }

  get freeBytes(): number {
    return this.capacityBytes - this.usedBytes;
  }

  /** Whether the name is taken here, in any form. */
  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** Every VM with memory here. */
  machines(): VirtualMachine[] {
    const found: VirtualMachine[] = [];
    for (const entry of this.entries.values()) if (entry.kind === 'machine') found.push(entry.vm);
    return found;
  }

  /** Every VM that exists here only as files. */
  storedVms(): StoredVm[] {
    const found: StoredVm[] = [];
    for (const entry of this.entries.values()) if (entry.kind === 'stored') found.push(entry.stored);
    return found;
  }

  /** The VM with memory here called `name`, if there is one. */
  findMachine(name: string): VirtualMachine | undefined {
    const entry = this.entries.get(name);
    return entry?.kind === 'machine' ? entry.vm : undefined;
  }

  /** The files-only VM called `name`, if there is one. */
  findStored(name: string): StoredVm | undefined {
    const entry = this.entries.get(name);
    return entry?.kind === 'stored' ? entry.stored : undefined;
  }

  /** The VM with memory here called `name`; refused with the reason when it is files only, or absent. */
  machine(name: string): VirtualMachine {
    const entry = this.entries.get(name);
    if (entry?.kind === 'machine') return entry.vm;
    if (entry?.kind === 'stored') {
      throw new FerryError(ErrorCode.VM_STATE, `${name} is ${stateOf(entry.stored)} on ${this.hostName}`, `power it on first: \`ferry vm start ${name}\``);
    }
    if (entry?.kind === 'claim') {
      throw new FerryError(ErrorCode.VM_STATE, `${name} is being set up on ${this.hostName} (${entry.busy})`, 'wait a moment, then retry');
    }
    throw this.notFound(name);
  }

  /** Throws VM_NOT_FOUND, with its hint, unless the name is taken here. */
  require(name: string): void {
    if (!this.entries.has(name)) throw this.notFound(name);
  }

  private notFound(name: string): FerryError {
    return new FerryError(ErrorCode.VM_NOT_FOUND, `no VM named ${name} on ${this.hostName}`, 'run `ferry vm list` to see where each VM is');
  }

  /** What operation has VM `name` to itself now, if any. */
  busyWith(name: string): string | undefined {
    return this.entries.get(name)?.busy;
  }

  /** A line per VM for listings; new VMs and reservations being allocated are not listed yet. */
  summaries(): VmSummary[] {
    const summaries: VmSummary[] = [];
    for (const entry of this.entries.values()) {
      if (entry.kind === 'machine') {
        const { vm } = entry;
        summaries.push({ name: vm.name, host: this.hostName, state: vm.state, memoryBytes: vm.memoryBytes, epoch: vm.epoch, ...(vm.network ? { ip: vm.network.ip } : {}) });
      } else {
        // A VM being powered on is listed as it was until it runs (its address stays taken meanwhile).
        const stored = entry.kind === 'stored' ? entry.stored : entry.was?.stored;
        if (!stored) continue;
        const { config } = stored;
        summaries.push({ name: config.name, host: this.hostName, state: stateOf(stored), memoryBytes: config.memoryBytes, epoch: config.epoch, ...(config.network ? { ip: config.network.ip } : {}) });
      }
    }
    return summaries;
  }

  private checkRoom(name: string, memoryBytes: number, purpose: string): void {
    if (memoryBytes > this.freeBytes) {
      throw new FerryError(
        ErrorCode.CAPACITY,
        `${this.hostName} has ${formatBytes(this.freeBytes)} free of ${formatBytes(this.capacityBytes)}, and ${name} needs ${formatBytes(memoryBytes)} to ${purpose}`,
        `free memory on ${this.hostName} (destroy or move a VM) or pick another host`,
      );
    }
  }

  /** Creates the VM's memory and parked vCPU; a migration's destination also backs every page at once. */
  private async build(spec: VmSpec, state: VmState, prealloc: boolean): Promise<VirtualMachine> {
    // A migration's destination will receive every page in round 1: take the memory now, as Xen's reservation
    // does, rather than page-faulting it in under the page stream. It is done while the vCPU's worker boots.
    let populateMs: number | undefined;
    const populating = prealloc || state === 'migrating-in'
      ? async (memory: Uint8Array): Promise<void> => {
        const startedMs = performance.now();
        await populate(memory);
        populateMs = performance.now() - startedMs;
      }
      : undefined;
    const vm = await VirtualMachine.create(spec, state, populating);
    vm.populateMs = populateMs;
    return vm;
  }

  /**
   * A new VM: checks the name is free and the memory fits, claims both (so two requests cannot race), allocates
   * memory, starts the vCPU parked, and runs `setup` (files, first resume) while the name is still claimed.
   * `purpose` names the request in a refusal ("be created", "receive it"). If anything fails, nothing is left.
   */
  async allocate(spec: VmSpec, state: VmState, purpose: string, options: { prealloc?: boolean; setup?: (vm: VirtualMachine) => Promise<void> } = {}): Promise<VirtualMachine> {
    if (spec.workload.filled && spec.workload.kind === 'kv') {
      throw new FerryError(ErrorCode.BAD_INPUT, `${spec.name} cannot be filled: a kv guest's table starts empty`, 'leave out --filled for a kv VM');
    }
    if (spec.workload.wssPages > spec.memoryBytes / 4096 || (spec.workload.hotPages ?? 0) > spec.workload.wssPages) {
      throw new FerryError(ErrorCode.BAD_INPUT, `the working set of ${spec.name} is larger than its memory (or its hot set than its working set)`, 'give --wss at most --memory, and --hot at most --wss');
    }
    const replayRefusal = replayWorkloadRefusal(spec.name, spec.workload);
    if (replayRefusal) throw replayRefusal;
    if (this.entries.has(spec.name)) {
      throw new FerryError(ErrorCode.VM_EXISTS, `${this.hostName} already has a VM named ${spec.name}`, 'pick another name, or destroy the existing VM first');
    }
    this.checkRoom(spec.name, spec.memoryBytes, purpose);
    const claim: ClaimEntry = { kind: 'claim', bytes: spec.memoryBytes, busy: purpose };
    this.entries.set(spec.name, claim);
    let vm: VirtualMachine | undefined;
    try {
      vm = await this.build(spec, state, options.prealloc ?? false);
      await options.setup?.(vm);
    } catch (error) {
      if (vm) await this.dispose(vm);
      if (this.entries.get(spec.name) === claim) this.entries.delete(spec.name);
      throw error;
    }
    this.entries.set(spec.name, { kind: 'machine', vm });
    return vm;
  }

  /**
   * Powers on a files-only VM: its memory is allocated and `setup` fills and starts it (a suspend image, the vCPU
   * resumed) before it becomes a machine, all under its claim; `boot.configDrive` is the config drive a fresh boot
   * reads. If anything fails, the VM is files only again.
   */
  async powerOn(
    name: string,
    setup: (vm: VirtualMachine, stored: StoredVm) => Promise<void>,
    boot: { configDrive?: string | undefined } = {},
  ): Promise<{ vm: VirtualMachine; stored: StoredVm }> {
    const entry = this.entries.get(name);
    if (entry?.kind !== 'stored') {
      if (!entry) throw this.notFound(name);
      const state = entry.kind === 'machine' ? entry.vm.state : 'being set up';
      throw new FerryError(ErrorCode.VM_STATE, `${name} is already ${state} on ${this.hostName}`, 'start is for a VM that is powered off or suspended');
    }
    if (entry.busy) throw busyError(name, 'start', entry.busy);
    const { config } = entry.stored;
    this.checkRoom(name, config.memoryBytes, 'start');
    const claim: ClaimEntry = { kind: 'claim', bytes: config.memoryBytes, busy: 'start', was: entry };
    this.entries.set(name, claim);
    let vm: VirtualMachine | undefined;
    try {
      vm = await this.build({ name, memoryBytes: config.memoryBytes, workload: config.workload, configDrive: boot.configDrive }, 'paused', false);
      vm.epoch = config.epoch;
      vm.disks = config.disks;
      vm.network = config.network;
      vm.leaseUntil = config.leaseUntil;
      vm.cpuModel = config.cpuModel;
      vm.image = config.image;
      vm.diskRegisters = config.diskRegisters;
      await setup(vm, entry.stored);
    } catch (error) {
      if (vm) await this.dispose(vm);
      if (this.entries.get(name) === claim) this.entries.set(name, entry);
      throw error;
    }
    this.entries.set(name, { kind: 'machine', vm });
    return { vm, stored: entry.stored };
  }

  /** Powers a machine off: its vCPU stops, its memory goes, and the VM is files only (`stored`) from now on. */
  async powerOff(vm: VirtualMachine, stored: StoredVm): Promise<void> {
    const entry = this.entries.get(vm.name);
    if (entry?.kind !== 'machine' || entry.vm !== vm) throw new FerryError(ErrorCode.INTERNAL, `${vm.name} is not a machine of ${this.hostName}`);
    this.entries.set(vm.name, { kind: 'stored', stored });
    await this.dispose(vm);
  }

  /** Forgets the machine and stops its vCPU; its memory goes when the last view of it does. */
  async release(vm: VirtualMachine): Promise<void> {
    const entry = this.entries.get(vm.name);
    if (entry?.kind === 'machine' && entry.vm === vm) this.entries.delete(vm.name);
    await this.dispose(vm);
  }

  /**
   * Takes a name, without memory, for a VM whose files are arriving (a cold migration): nothing else may take the
   * name meanwhile. `settle` makes it a files-only VM once its files are registered; `drop` frees the name.
   */
  claimName(name: string, purpose: string): { settle(stored: StoredVm): void; drop(): void } {
    if (this.entries.has(name)) {
      throw new FerryError(ErrorCode.VM_EXISTS, `${this.hostName} already has a VM named ${name}`, 'destroy it there first, or pick another host');
    }
    const claim: ClaimEntry = { kind: 'claim', bytes: 0, busy: purpose };
    this.entries.set(name, claim);
    const ours = (): boolean => this.entries.get(name) === claim;
    return {
      settle: (stored) => {
        if (ours()) this.entries.set(name, { kind: 'stored', stored });
      },
      drop: () => {
        if (ours()) this.entries.delete(name);
      },
    };
  }

  /** A VM that exists here as files only: found at startup. */
  addStored(stored: StoredVm): void {
    const { name } = stored.config;
    if (this.entries.has(name)) {
      throw new FerryError(ErrorCode.VM_EXISTS, `${this.hostName} already has a VM named ${name}`, 'destroy it there first, or pick another host');
    }
    this.entries.set(name, { kind: 'stored', stored });
  }

  /** New files-only facts about a stored VM (its config was rewritten). */
  updateStored(stored: StoredVm): void {
    const entry = this.entries.get(stored.config.name);
    if (entry?.kind === 'stored') entry.stored = stored;
  }

  /** Forgets a files-only VM (its files are being removed, or it moved away). */
  forgetStored(name: string): boolean {
    const entry = this.entries.get(name);
    if (entry?.kind !== 'stored') return false;
    this.entries.delete(name);
    return true;
  }

  /**
   * Runs `operation` with running or paused VM `name` to itself: nothing else may act on it meanwhile (a dump, a
   * pause or a migration never interleave on one VM). The signal it is given aborts on `cancel(name, ...)`.
   */
  async exclusive<T>(name: string, action: string, operation: (vm: VirtualMachine, signal: AbortSignal) => Promise<T>): Promise<T> {
    let vm = this.machine(name);
    let entry = this.entries.get(name) as MachineEntry;
    while (entry.busy && BRIEF_HOLDS.has(entry.busy) && entry.idle) {
      await entry.idle;
      vm = this.machine(name);
      entry = this.entries.get(name) as MachineEntry;
    }
    // A VM lost in post-copy can only be destroyed (its memory cannot be put together again).
    if (vm.state !== 'running' && vm.state !== 'paused' && !(vm.state === 'lost' && action === 'destroy')) {
      throw new FerryError(ErrorCode.VM_STATE, `cannot ${action} ${name}: it is ${vm.state}`, vm.state === 'postcopy-out'
        ? (vm.postcopy?.linked() ? 'this paused copy is sending the pages the running VM still lacks: wait for its post-copy to finish' : `its post-copy's link broke and this paused copy holds pages the running VM lacks: \`ferry migrate ${name} --resume\``)
        : vm.state === 'lost' ? `it was lost in post-copy; destroy it: \`ferry vm destroy ${name}\`` : 'wait for its migration to finish, then retry');
    }
    if (entry.busy) throw busyError(name, action, entry.busy);
    // Part of a post-copy's memory is still at its source: nothing may read or move it but the post-copy itself.
    if (vm.postcopy?.role === 'destination' && action !== 'file registration') {
      throw new FerryError(ErrorCode.VM_STATE, `cannot ${action} ${name}: its post-copy is under way, ${vm.postcopy.missingPages()} page(s) still on ${vm.postcopy.peer}`, vm.postcopy.linked() ? 'wait for it to finish' : `its link broke: \`ferry migrate ${name} --resume\``);
    }
    const cancel = new AbortController();
    let settle: () => void = () => undefined;
    entry.busy = action;
    entry.cancel = cancel;
    entry.idle = new Promise<void>((resolve) => { settle = resolve; });
    try {
      return await operation(vm, cancel.signal);
    } finally {
      entry.busy = undefined;
      entry.cancel = undefined;
      entry.idle = undefined;
      settle();
    }
  }

  /** Cancels the `action` that holds VM `name` (a live migration), with `reason`; false when none does. */
  cancel(name: string, action: string, reason: Error): boolean {
    const entry = this.entries.get(name);
    if (entry?.kind !== 'machine' || entry.busy !== action || !entry.cancel) return false;
    entry.cancel.abort(reason);
    return true;
  }

  /**
   * Ends the `action` that holds VM `name` (one that gives way to another: a trace recording to a migration) and
   * waits until it has let the VM go; false when no such action held it.
   */
  async preempt(name: string, action: string, reason: Error): Promise<boolean> {
    const entry = this.entries.get(name);
    if (entry?.kind !== 'machine' || entry.busy !== action || !entry.cancel) return false;
    const idle = entry.idle;
    entry.cancel.abort(reason);
    await idle;
    return true;
  }

  /** Runs `operation` with files-only VM `name` to itself (a cold copy of its files). */
  async holdStored<T>(name: string, action: string, operation: (stored: StoredVm) => Promise<T>): Promise<T> {
    const entry = this.entries.get(name);
    if (entry?.kind !== 'stored') {
      if (entry?.kind === 'machine') {
        throw new FerryError(ErrorCode.VM_STATE, `${name} is ${entry.vm.state}: ${action} is for a VM that is powered off or suspended`, `stop or suspend it first (\`ferry vm stop ${name}\`), or migrate it live`);
      }
      if (entry) throw busyError(name, action, entry.busy);
      throw this.notFound(name);
    }
    if (entry.busy) throw busyError(name, action, entry.busy);
    entry.busy = action;
    try {
      return await operation(entry.stored);
    } finally {
      entry.busy = undefined;
    }
  }

  async releaseAll(): Promise<void> {
    await Promise.all(this.machines().map((vm) => this.release(vm)));
  }
}

/** Why a workload's trace cannot be replayed in its working set (every page it writes must be inside), if it cannot. */
function replayWorkloadRefusal(name: string, workload: WorkloadSpec): FerryError | undefined {
  if (workload.kind !== 'replay' && workload.trace === undefined) return undefined;
  if (workload.kind !== 'replay' || !workload.trace) {
    return new FerryError(ErrorCode.BAD_INPUT, `${name}: a trace goes with the replay workload, and the replay workload with a trace`, 'ferry vm create NAME --workload replay --trace FILE');
  }
  const extent = traceExtentPages(workload.trace.samples);
  if (extent > workload.wssPages) {
    return new FerryError(ErrorCode.BAD_INPUT, `${name}'s trace writes pages up to ${extent - 1}, past its working set of ${workload.wssPages} pages`, 'give the VM at least the memory of the VM the trace was recorded from');
  }
  return undefined;
}

function stateOf(stored: StoredVm): 'suspended' | 'defined' {
  return stored.suspended ? 'suspended' : 'defined';
}

function busyError(name: string, action: string, busy: string): FerryError {
  return new FerryError(ErrorCode.VM_STATE, `cannot ${action} ${name}: a ${busy} of it is under way`, 'wait for it to finish, then retry');
}

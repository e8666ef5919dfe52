/**
 * The VMs an agent holds and the guest memory it has promised: running VMs, VMs being created, and incoming
 * migrations' reservations all count against `--capacity`.
 */
import { ErrorCode, FerryError } from '../shared/errors.js';
import type { VmState } from '../shared/protocol.js';
import { formatBytes } from '../shared/units.js';
import { VirtualMachine, type VmSpec } from './vm/vm.js';

/** Bytes touched per event-loop turn while populating memory, so the agent keeps answering meanwhile. */
const POPULATE_SLICE_BYTES = 64 * 1024 * 1024;

/** Makes the OS back every page of `memory` now (a write per 4 KiB page faults it in; the value stays 0). */
async function populate(memory: Uint8Array): Promise<void> {
  for (let start = 0; start < memory.length; start += POPULATE_SLICE_BYTES) {
    const end = Math.min(start + POPULATE_SLICE_BYTES, memory.length);
    for (let offset = start; offset < end; offset += 4096) memory[offset] = 0;
    await new Promise((resolve) => setImmediate(resolve));
  }
}

export class Registry {
  readonly hostName: string;
  readonly capacityBytes: number;
  private readonly vms = new Map<string, VirtualMachine>();
  /** Names being created right now, with their size: taken before the (async) allocation, so two can't race. */
  private readonly claims = new Map<string, number>();
  /** Names of VMs that exist only as files here (powered off or suspended): taken, though they hold no memory. */
  readonly stored = new Set<string>();

  constructor(hostName: string, capacityBytes: number) {
    this.hostName = hostName;
    this.capacityBytes = capacityBytes;
  }

  get usedBytes(): number {
    let used = 0;
    for (const vm of this.vms.values()) used += vm.memoryBytes;
    for (const bytes of this.claims.values()) used += bytes;
    return used;
  }

  get freeBytes(): number {
    return this.capacityBytes - this.usedBytes;
  }

  list(): VirtualMachine[] {
    return [...this.vms.values()];
  }

  has(name: string): boolean {
    return this.vms.has(name) || this.claims.has(name) || this.stored.has(name);
  }

  /** A VM with memory here (running, paused, or in a migration), as opposed to files only. */
  hasMachine(name: string): boolean {
    return this.vms.has(name);
  }

  get(name: string): VirtualMachine {
    const vm = this.vms.get(name);
    if (!vm) {
      throw new FerryError(ErrorCode.VM_NOT_FOUND, `no VM named ${name} on ${this.hostName}`, 'run `ferry vm list` to see where each VM is');
    }
    return vm;
  }

  /**
   * Allocates a VM's memory and starts its vCPU parked, after checking the name is free and the memory fits.
   * `purpose` names the request in the refusal ("create", "receive").
   */
  async allocate(spec: VmSpec, state: VmState, purpose: string, prealloc = false): Promise<VirtualMachine> {
    if (spec.workload.wssPages > spec.memoryBytes / 4096 || (spec.workload.hotPages ?? 0) > spec.workload.wssPages) {
      throw new FerryError(ErrorCode.BAD_INPUT, `the working set of ${spec.name} is larger than its memory (or its hot set than its working set)`, 'give --wss at most --memory, and --hot at most --wss');
    }
    if (this.has(spec.name)) {
      throw new FerryError(ErrorCode.VM_EXISTS, `${this.hostName} already has a VM named ${spec.name}`, 'pick another name, or destroy the existing VM first');
    }
    if (spec.memoryBytes > this.freeBytes) {
      throw new FerryError(
        ErrorCode.CAPACITY,
        `${this.hostName} has ${formatBytes(this.freeBytes)} free of ${formatBytes(this.capacityBytes)}, and ${spec.name} needs ${formatBytes(spec.memoryBytes)} to ${purpose}`,
        `free memory on ${this.hostName} (destroy or move a VM) or pick another host`,
      );
    }
    this.claims.set(spec.name, spec.memoryBytes);
    try {
      const vm = await VirtualMachine.create(spec, state);
      // A migration's destination will receive every page in round 1: take the memory now, as Xen's reservation
      // does, rather than page-faulting it in under the page stream.
      if (prealloc || state === 'migrating-in') await populate(vm.memory);
      this.vms.set(spec.name, vm);
      return vm;
    } finally {
      this.claims.delete(spec.name);
    }
  }

  /** Forgets the VM and stops its vCPU; its memory goes when the last view of it does. */
  async release(vm: VirtualMachine): Promise<void> {
    if (this.vms.get(vm.name) === vm) this.vms.delete(vm.name);
    await vm.destroy();
  }

  async releaseAll(): Promise<void> {
    await Promise.all(this.list().map((vm) => this.release(vm)));
  }
}

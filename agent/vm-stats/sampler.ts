/**
 * Measures each running VM here: its vCPU's busy fraction, and its dirty rate and writable working set, sampled from
 * the dirty log the way QEMU's `calc-dirty-rate` does in dirty-bitmap mode: clear the log, then count the set bits at
 * checkpoints (100, 250, 500, 1000 ms) without clearing them, which gives U(t), the distinct pages dirtied within t;
 * fit a rate and a working set to it (shared/dirty-model.ts).
 *
 * What must stay true: the sampler never clears the log of a VM that an operation holds. A migration reads the log
 * to know which pages to send again; a clear in the middle of one would lose those pages. So:
 * - the window's only clear happens in the same synchronous run as the check that nothing holds the VM
 *   (`catalog.busyWith` is undefined, the VM is the catalog's and running). Every operation takes the VM
 *   (catalog.exclusive) before it touches the log, synchronously, so none can begin between the check and the clear;
 *   and a migration starts with its own clearAll() and sends every page in round 1, so a clear before it is harmless;
 * - after the clear the sampler only counts (`DirtyLog.count()`): a migration that takes the VM during the window
 *   loses nothing, and the window is discarded (its counts include the migration's own clear);
 * - a window whose VM was paused, left, or taken meanwhile is discarded, never half used.
 *
 * One loop per agent (agent.ts runs `tick` through periodic.ts); a VM gets a window every WINDOW_EVERY_MS at most,
 * and a count is one pass over the log's words (a 4 GiB guest's log is 128 KiB): cheap beside the guest's own work.
 */
import { fitDirtyCurve, type CurvePoint } from '../../shared/dirty-model.js';
import type { Logger } from '../../shared/log.js';
import type { VmState, VmStats } from '../../shared/protocol.js';

/** The checkpoints of a window, ms after the clear. */
export const CHECKPOINTS_MS = [100, 250, 500, 1000] as const;
/** A VM's next window starts at least this long after its last one ended. */
export const WINDOW_EVERY_MS = 3000;
/** How often agent.ts runs the loop. */
export const STATS_TICK_MS = 500;

/** What the sampler needs of a VM (VirtualMachine has all of it). */
export interface SampledVm {
  readonly name: string;
  readonly state: VmState;
  readonly pageCount: number;
  readonly dirtyLog: { clearAll(): number; count(): number };
  cpuBusyMs(): number;
}

/** What it needs of the catalog: the machines, and what holds each. */
export interface SampledCatalog {
  machines(): SampledVm[];
  findMachine(name: string): SampledVm | undefined;
  busyWith(name: string): string | undefined;
}

export interface SamplerOptions {
  checkpointsMs?: readonly number[];
  windowEveryMs?: number;
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
  log?: Logger;
}

interface VmSampling {
  cpu?: { busyMs: number; atMs: number };
  cpuPercent: number;
  windowOpen: boolean;
  lastWindowEndMs: number;
  stats?: VmStats;
}

export class VmStatsSampler {
  private readonly catalog: SampledCatalog;
  private readonly checkpointsMs: readonly number[];
  private readonly windowEveryMs: number;
  private readonly now: () => number;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly log: Logger | undefined;
  /** Keyed by the VM object: a VM that leaves and comes back (a migration) starts afresh. */
  private readonly sampling = new WeakMap<SampledVm, VmSampling>();

  constructor(catalog: SampledCatalog, options: SamplerOptions = {}) {
    this.catalog = catalog;
    this.checkpointsMs = options.checkpointsMs ?? CHECKPOINTS_MS;
    this.windowEveryMs = options.windowEveryMs ?? WINDOW_EVERY_MS;
    this.now = options.now ?? (() => performance.now());
    this.sleep = options.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
    this.log = options.log;
  }

  /** The VM's last measurement, or undefined before its first window has ended. */
  stats(vm: SampledVm): VmStats | undefined {
    const sampling = this.sampling.get(vm);
    if (!sampling?.stats) return undefined;
    return { ...sampling.stats, cpuPercent: sampling.cpuPercent };
  }

  /** One run of the loop: a CPU reading of every VM, and a window for each VM that is due one (all at once). */
  async tick(): Promise<void> {
    const windows: Promise<void>[] = [];
    for (const vm of this.catalog.machines()) {
      const sampling = this.samplingOf(vm);
      this.readCpu(vm, sampling);
      if (!sampling.windowOpen && this.now() - sampling.lastWindowEndMs >= this.windowEveryMs) windows.push(this.window(vm, sampling));
    }
    await Promise.all(windows);
  }

  private samplingOf(vm: SampledVm): VmSampling {
    let sampling = this.sampling.get(vm);
    if (!sampling) {
      sampling = { cpuPercent: 0, windowOpen: false, lastWindowEndMs: Number.NEGATIVE_INFINITY };
      this.sampling.set(vm, sampling);
    }
    return sampling;
  }

  private readCpu(vm: SampledVm, sampling: VmSampling): void {
    const reading = { busyMs: vm.cpuBusyMs(), atMs: this.now() };
    const last = sampling.cpu;
    if (last && reading.atMs > last.atMs) {
      sampling.cpuPercent = Math.max(0, Math.min(100, (100 * (reading.busyMs - last.busyMs)) / (reading.atMs - last.atMs)));
    }
    sampling.cpu = reading;
  }

  /** Whether nothing holds the VM and it runs here: the only condition under which its log may be cleared. */
  private free(vm: SampledVm): boolean {
    return this.catalog.findMachine(vm.name) === vm && this.catalog.busyWith(vm.name) === undefined && vm.state === 'running';
  }

  private async window(vm: SampledVm, sampling: VmSampling): Promise<void> {
    // The check and the clear, in one synchronous run: nothing can take the VM between them (see the top).
    if (!this.free(vm)) return;
    vm.dirtyLog.clearAll();
    const startedMs = this.now();
    sampling.windowOpen = true;
    const curve: CurvePoint[] = [];
    try {
      for (const checkpoint of this.checkpointsMs) {
        const wait = startedMs + checkpoint - this.now();
        if (wait > 0) await this.sleep(wait);
        // Counted only, never cleared; a VM taken, paused or gone meanwhile ends the window unused.
        if (!this.free(vm)) return;
        curve.push({ ms: this.now() - startedMs, pages: vm.dirtyLog.count() });
      }
    } finally {
      sampling.windowOpen = false;
      sampling.lastWindowEndMs = this.now();
    }
    const fitted = fitDirtyCurve(curve, vm.pageCount);
    sampling.stats = {
      cpuPercent: sampling.cpuPercent,
      dirtyPagesPerSec: fitted.ratePagesPerSec,
      wssPages: fitted.wssPages,
      model: fitted.model,
      curve: curve.map((point) => ({ ms: Math.round(point.ms * 10) / 10, pages: point.pages })),
      windowMs: curve.at(-1)?.ms ?? 0,
      sampledAt: new Date().toISOString(),
    };
    this.log?.debug('vm stats', { vm: vm.name, dirtyPagesPerSec: Math.round(fitted.ratePagesPerSec), wssPages: fitted.wssPages, model: fitted.model });
  }
}

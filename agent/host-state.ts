/**
 * The host's standing in the fleet: whether an operator has put it in maintenance or marked it degraded, what the
 * agent sees wrong with itself (a datastore nearly full, an event loop that lags), and how loaded it is.
 *
 * A host in maintenance, or degraded, refuses new VMs and incoming migrations (live and cold); the VMs it holds keep
 * running and may leave. Its own signals only advise: the coordinator places nothing there and `balance --watch`
 * empties it, but the agent does not refuse on a signal that a passing burst of work can raise.
 *
 * The operator's flags are kept in `<datastore>/host-state.json`, so a host in maintenance that restarts is still in
 * maintenance; the cluster store keeps a copy for operators who cannot reach the host.
 */
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import os from 'node:os';
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { ErrorCode, FerryError } from '../shared/errors.js';
import type { HostHealth, HostLoad } from '../shared/protocol.js';
import type { Logger } from '../shared/log.js';
import { writeWhole } from './datastore/durable.js';

const flagsSchema = z.object({
  maintenance: z.object({ since: z.string().max(64), by: z.string().max(200).optional() }).nullable().default(null),
  degraded: z.object({ reason: z.string().max(500), since: z.string().max(64) }).nullable().default(null),
});
export type OperatorFlags = z.infer<typeof flagsSchema>;

export interface HostStateSettings {
  /** Where the flags are kept; in memory only without. */
  folder?: string | undefined;
  /** Free datastore space below this is a signal. */
  diskReserveBytes: number;
  /** Mean event-loop delay over the last window above this is a signal. */
  lagThresholdMs: number;
  log: Logger;
}

/** The window load and lag are measured over. */
const WINDOW_MS = 5000;
/** Windows in a row the lag must stay over the threshold before it is a signal. */
const LAGGING_WINDOWS = 3;
/** The event-loop delay histogram's timer: each sample is this plus the lag. */
const LAG_RESOLUTION_MS = 20;

export class HostState {
  private flags: OperatorFlags = { maintenance: null, degraded: null };
  /** The changes of the flags, one after another: each builds on the last one written. */
  private changes: Promise<void> = Promise.resolve();
  /** Windows in a row whose mean lag was over the threshold. */
  private laggingWindows = 0;
  private readonly settings: HostStateSettings;
  private readonly lag: IntervalHistogram;
  private readonly timer: NodeJS.Timeout;
  /** The last full window's figures, and the start of the current one. */
  private lagMeanMs = 0;
  private cpuPercent = 0;
  private windowCpu = process.cpuUsage();
  private windowStart = performance.now();
  private lagSince: string | undefined;
  private diskSince: string | undefined;

  constructor(settings: HostStateSettings) {
    this.settings = settings;
    this.lag = monitorEventLoopDelay({ resolution: LAG_RESOLUTION_MS });
    this.lag.enable();
    this.timer = setInterval(() => this.closeWindow(), WINDOW_MS);
    this.timer.unref();
  }

  private get file(): string | undefined {
    return this.settings.folder ? path.join(this.settings.folder, 'host-state.json') : undefined;
  }

  /** Reads the flags an earlier run left; a file that cannot be read is said, and the host starts without flags. */
  async restore(): Promise<void> {
    if (!this.file) return;
    try {
      this.flags = flagsSchema.parse(JSON.parse(await readFile(this.file, 'utf8')));
      if (this.flags.maintenance) this.settings.log.warn('this host is in maintenance (from before it restarted): it takes no new VMs until `ferry host undrain`');
      if (this.flags.degraded) this.settings.log.warn('this host is marked degraded (from before it restarted)', { reason: this.flags.degraded.reason });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      this.settings.log.warn('host-state.json cannot be read; starting with no maintenance or health flags', { error: String(error) });
    }
  }

  stop(): void {
    clearInterval(this.timer);
    this.lag.disable();
  }

  get maintenance(): OperatorFlags['maintenance'] {
    return this.flags.maintenance;
  }

  /** Sets or clears the operator's flags (undefined leaves one as it is), and keeps them; one change at a time. */
  set(change: { maintenance?: boolean | undefined; by?: string | undefined; degraded?: string | null | undefined }): Promise<void> {
    const run = this.changes.then(() => this.apply(change));
    this.changes = run.catch(() => undefined);
    return run;
  }

  private async apply(change: { maintenance?: boolean | undefined; by?: string | undefined; degraded?: string | null | undefined }): Promise<void> {
    const now = new Date().toISOString();
    const next: OperatorFlags = { ...this.flags };
    if (change.maintenance === true) next.maintenance = this.flags.maintenance ?? { since: now, ...(change.by ? { by: change.by } : {}) };
    if (change.maintenance === false) next.maintenance = null;
    if (typeof change.degraded === 'string') next.degraded = { reason: change.degraded, since: this.flags.degraded?.reason === change.degraded ? this.flags.degraded.since : now };
    if (change.degraded === null) next.degraded = null;
    if (this.file) await writeWhole(this.file, `${JSON.stringify(next, null, 2)}\n`);
    this.flags = next;
    this.settings.log.info('host flags changed', { maintenance: next.maintenance !== null, degraded: next.degraded?.reason ?? null });
  }

  private closeWindow(): void {
    const now = performance.now();
    const used = process.cpuUsage(this.windowCpu);
    const elapsedMs = now - this.windowStart;
    this.cpuPercent = elapsedMs > 0 ? ((used.user + used.system) / 1000 / elapsedMs / os.availableParallelism()) * 100 : 0;
    // The histogram counts the extra delay beyond its resolution; its mean over the window is the lag.
    this.lagMeanMs = Number.isFinite(this.lag.mean) ? Math.max(0, this.lag.mean / 1e6 - LAG_RESOLUTION_MS) : 0;
    this.lag.reset();
    this.windowCpu = process.cpuUsage();
    this.windowStart = now;
    // A signal only when it lasts: three windows in a row (15 s), not one burst of work (a migration arriving).
    this.laggingWindows = this.lagMeanMs > this.settings.lagThresholdMs ? this.laggingWindows + 1 : 0;
    this.lagSince = this.laggingWindows >= LAGGING_WINDOWS ? (this.lagSince ?? new Date().toISOString()) : undefined;
  }

  /** The host's health: the operator's flag and the agent's own signals, each with why and since when. */
  health(diskFreeBytes: number | undefined): HostHealth {
    const reasons: HostHealth['reasons'] = [];
    if (this.flags.degraded) reasons.push({ source: 'operator', reason: this.flags.degraded.reason, since: this.flags.degraded.since });
    const diskLow = diskFreeBytes !== undefined && diskFreeBytes < this.settings.diskReserveBytes;
    this.diskSince = diskLow ? (this.diskSince ?? new Date().toISOString()) : undefined;
    if (diskLow && this.diskSince) {
      reasons.push({ source: 'datastore', reason: `the datastore has ${(diskFreeBytes / 2 ** 20).toFixed(0)} MiB free, under the ${(this.settings.diskReserveBytes / 2 ** 20).toFixed(0)} MiB reserve`, since: this.diskSince });
    }
    if (this.lagSince) {
      reasons.push({ source: 'event-loop', reason: `the agent's event loop lags ${this.lagMeanMs.toFixed(0)} ms on average, over the ${this.settings.lagThresholdMs} ms threshold`, since: this.lagSince });
    }
    return { state: reasons.length > 0 ? 'degraded' : 'healthy', reasons };
  }

  /** The agent's CPU over the last window (its vCPUs included), as a share of all the machine's cores. */
  load(usedBytes: number, capacityBytes: number, vms: number): HostLoad {
    return {
      cpuPercent: Math.round(this.cpuPercent * 10) / 10,
      memoryPercent: capacityBytes > 0 ? Math.round((usedBytes / capacityBytes) * 1000) / 10 : 0,
      cores: os.availableParallelism(),
      vms,
      eventLoopLagMs: Math.round(this.lagMeanMs * 10) / 10,
      residentBytes: process.memoryUsage.rss(),
    };
  }

  /**
   * Why this host takes no new VM (`what`: "new VMs", "incoming migrations"), if it takes none: in maintenance, or
   * marked degraded by an operator.
   */
  refusal(what: string, vm: string): FerryError | undefined {
    if (this.flags.maintenance) {
      return new FerryError(ErrorCode.HOST_UNAVAILABLE, `this host is in maintenance (since ${this.flags.maintenance.since}) and takes no ${what}: ${vm} cannot come here`, 'pick another host, or end maintenance with `ferry host undrain HOST`');
    }
    if (this.flags.degraded) {
      return new FerryError(ErrorCode.HOST_UNAVAILABLE, `this host is marked degraded (${this.flags.degraded.reason}) and takes no ${what}: ${vm} cannot come here`, 'pick another host, or mark it healthy with `ferry host health HOST --healthy`');
    }
    return undefined;
  }
}

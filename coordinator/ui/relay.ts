/**
 * The ui server's view of the cluster, kept by what the agents push (`events.watch`): one watch per host, held open
 * and taken up again when it breaks, and for each VM someone is looking at, a heat-map watch on every host (the VM's
 * frames come from whichever host holds its memory, before, during and after a migration). Nothing here asks an
 * agent the same question again and again: a migrating agent is sent no requests by the ui at all.
 *
 * It keeps what a page that opens needs at once (each host's last `host` event, each VM's recent log lines and the
 * migrations under way or just ended) and hands every event on to the pages that are open (server.ts).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { toFerryError } from '../../shared/errors.js';
import { watchEventSchema, type HostInfo, type MigrationEvent, type SourceReport, type VmInfo, type WatchEvent } from '../../shared/protocol.js';
import type { Cluster, HostEntry } from '../cluster.js';
import { connectAgent, openHost, type AgentClient, type Connector } from '../connect.js';

/** How long a broken watch waits before it is taken up again. */
const REWATCH_MS = 2000;
/** Heat-map frames: at most this many cells, this often. */
export const HEAT_CELLS = 4096;
export const HEAT_INTERVAL_MS = 250;
const LOG_LINES = 20;
/** Events kept of one migration for a page that opens while it runs (about 100 s of progress). */
const MIGRATION_EVENTS = 1000;

type HeatEvent = Extract<WatchEvent, { kind: 'heat' }>;

/** What the pages are sent (server.ts, as server-sent events). */
export type UiEvent =
  | { kind: 'host'; host: string; info: HostInfo; vms: VmInfo[] }
  | { kind: 'host-down'; host: string; error: string }
  | { kind: 'log'; host: string; name: string; line: string }
  | { kind: 'migration'; host: string; name: string; migrationId: string; to: string; event: MigrationEvent }
  | { kind: 'migration-end'; host: string; name: string; migrationId: string; to: string; report?: SourceReport | undefined; error?: { code: string; message: string; hint?: string | undefined } | undefined }
  | (Omit<HeatEvent, 'recency' | 'current'> & { host: string; recency: string; current: string | null })
  | { kind: 'notice'; level: 'info' | 'error'; text: string; detail?: unknown };

export interface MigrationView {
  name: string;
  migrationId: string;
  from: string;
  to: string;
  events: MigrationEvent[];
  end?: Extract<UiEvent, { kind: 'migration-end' }>;
}

export class Relay {
  private readonly cluster: Cluster;
  private readonly connect: Connector;
  private readonly stopped = new AbortController();
  private readonly listeners = new Set<(event: UiEvent) => void>();
  readonly hosts = new Map<string, Extract<UiEvent, { kind: 'host' | 'host-down' }>>();
  readonly logs = new Map<string, string[]>();
  readonly migrations = new Map<string, MigrationView>();
  private readonly heatWatches = new Map<string, { viewers: number; stop: AbortController }>();
  private readonly running: Promise<void>[] = [];

  constructor(cluster: Cluster, connect: Connector = connectAgent) {
    this.cluster = cluster;
    this.connect = connect;
  }

  start(): void {
    for (const host of this.cluster.hosts) this.running.push(this.watch(host, {}, this.stopped.signal, (event) => this.take(host.name, event)));
  }

  subscribe(listener: (event: UiEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  publish(event: UiEvent): void {
    for (const listener of this.listeners) listener(event);
  }

  /** What a page that opens now is sent first. */
  snapshot(): UiEvent[] {
    const events: UiEvent[] = [...this.hosts.values()];
    for (const [key, lines] of this.logs) {
      const [host, name] = key.split('\u0000') as [string, string];
      for (const line of lines) events.push({ kind: 'log', host, name, line });
    }
    for (const view of this.migrations.values()) {
      for (const event of view.events) events.push({ kind: 'migration', host: view.from, name: view.name, migrationId: view.migrationId, to: view.to, event });
      if (view.end) events.push(view.end);
    }
    return events;
  }

  /** Heat-map frames of VM `name` while someone looks: returns the function that says they stopped. */
  watchHeat(name: string): () => void {
    let watch = this.heatWatches.get(name);
    if (!watch) {
      const stop = new AbortController();
      const signal = AbortSignal.any([stop.signal, this.stopped.signal]);
      watch = { viewers: 0, stop };
      this.heatWatches.set(name, watch);
      for (const host of this.cluster.hosts) {
        this.running.push(this.watch(host, { hostIntervalMs: 60_000, heat: { name, cells: HEAT_CELLS, intervalMs: HEAT_INTERVAL_MS } }, signal, (event) => {
          if (event.kind !== 'heat') return;
          this.publish({ ...event, host: host.name, recency: Buffer.from(event.recency).toString('base64'), current: event.current ? Buffer.from(event.current).toString('base64') : null });
        }));
      }
    }
    const held = watch;
    held.viewers += 1;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      held.viewers -= 1;
      if (held.viewers === 0) {
        held.stop.abort();
        this.heatWatches.delete(name);
      }
    };
  }

  async close(): Promise<void> {
    this.stopped.abort();
    await Promise.allSettled(this.running);
  }

  private take(host: string, event: WatchEvent): void {
    switch (event.kind) {
      case 'host':
        this.hosts.set(host, { kind: 'host', host, info: event.info, vms: event.vms });
        this.publish({ kind: 'host', host, info: event.info, vms: event.vms });
        return;
      case 'log': {
        const key = `${host}\u0000${event.name}`;
        const lines = this.logs.get(key) ?? [];
        lines.push(event.line);
        this.logs.set(key, lines.slice(-LOG_LINES));
        this.publish({ kind: 'log', host, name: event.name, line: event.line });
        return;
      }
      case 'migration': {
        let view = this.migrations.get(event.name);
        if (view?.migrationId !== event.migrationId) {
          view = { name: event.name, migrationId: event.migrationId, from: host, to: event.to, events: [] };
          this.migrations.set(event.name, view);
        }
        if (view.events.length < MIGRATION_EVENTS) view.events.push(event.event);
        this.publish({ kind: 'migration', host, name: event.name, migrationId: event.migrationId, to: event.to, event: event.event });
        return;
      }
      case 'migration-end': {
        const end = { kind: 'migration-end' as const, host, name: event.name, migrationId: event.migrationId, to: event.to, report: event.report, error: event.error };
        const view = this.migrations.get(event.name);
        if (view?.migrationId === event.migrationId) view.end = end;
        this.publish(end);
        return;
      }
      case 'heat':
        return;
      default: {
        const unknown: never = event;
        throw new Error(`unknown watch event ${String(unknown)}`);
      }
    }
  }

  /** Watches `host` until `signal`, taking the watch up again whenever it breaks. */
  private async watch(host: HostEntry, request: { hostIntervalMs?: number; heat?: { name: string; cells: number; intervalMs: number } }, signal: AbortSignal, onEvent: (event: WatchEvent) => void): Promise<void> {
    const isMain = request.heat === undefined;
    while (!signal.aborted) {
      let client: AgentClient | undefined;
      try {
        ({ client } = await openHost(host, this.connect));
        const open = client;
        const closeOnStop = (): void => open.close();
        signal.addEventListener('abort', closeOnStop, { once: true });
        try {
          await open.request('events.watch', request, {
            signal,
            onEvent: (body) => {
              const parsed = watchEventSchema.safeParse(body);
              if (parsed.success) onEvent(parsed.data);
            },
          });
        } finally {
          signal.removeEventListener('abort', closeOnStop);
        }
      } catch (error) {
        if (signal.aborted) break;
        if (isMain) {
          const down = { kind: 'host-down' as const, host: host.name, error: toFerryError(error).message };
          this.hosts.set(host.name, down);
          this.publish(down);
        }
      } finally {
        client?.close();
      }
      // Rejects only when `signal` aborts, which ends the loop.
      await sleep(REWATCH_MS, undefined, { signal }).catch(() => undefined);
    }
  }
}

/**
 * The agent's events for watchers (`events.watch`, control/events.ts): lines its VMs' logs gain, and its outgoing
 * migrations' events and endings. Publishing costs nothing when nobody watches; a watcher that throws is dropped
 * from nothing else (each listener is called on its own).
 */
import type { WatchEvent } from '../shared/protocol.js';

export type AgentEvent = Extract<WatchEvent, { kind: 'log' | 'migration' | 'migration-end' }>;

export class AgentEvents {
  private readonly listeners = new Set<(event: AgentEvent) => void>();

  /** Calls `listener` with every event from now on; returns the function that stops it. */
  subscribe(listener: (event: AgentEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  publish(event: AgentEvent): void {
    for (const listener of this.listeners) listener(event);
  }

  get watchers(): number {
    return this.listeners.size;
  }
}

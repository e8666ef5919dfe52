/**
 * Guest memory goes back to the OS when a VM leaves this host (migrated away, destroyed, released, a reservation
 * dropped). A VM's memory is a shared WebAssembly.Memory, and V8 returns its pages only when a full garbage
 * collection finds it unreachable; the agent's own heap is small and gives V8 no reason to collect soon, so a departed
 * 1 GiB guest stayed resident (1.1 GB between long-lived agents holding no VM) until some unrelated collection ran.
 *
 * So, once a VM's memory is released, the agent asks V8 for a full collection itself: within 200 ms, one for any
 * number of releases together. A collection stops the agent's thread for a few milliseconds, so it waits while a
 * live migration runs here (out of this host or into it) and runs as soon as none does.
 */
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Logger } from '../shared/log.js';

/** How soon after a release the collection runs: releases close together share one. */
const SETTLE_MS = 200;
/** How often a collection that waits for migrations to end looks again. */
const RETRY_MS = 250;

let collect: (() => void) | undefined;

/** V8's `gc`, exposed once for this process (the flag must be set before the context that takes it is made). */
function collector(): () => void {
  if (!collect) {
    v8.setFlagsFromString('--expose-gc');
    collect = runInNewContext('gc') as () => void;
  }
  return collect;
}

/**
 * A full collection now, whatever runs (a migration's last moment before its pause: a collection that would have fallen
 * inside the pause runs here instead, while the guest still runs). Returns how long it took.
 */
export function collectGarbageNow(): number {
  const startedMs = performance.now();
  collector()();
  return performance.now() - startedMs;
}

export class MemoryReturn {
  private timer: NodeJS.Timeout | undefined;
  private readonly migrating: () => boolean;
  private readonly log: Logger;
  /** Collections run so far (the tests count them). */
  collections = 0;

  constructor(migrating: () => boolean, log: Logger) {
    this.migrating = migrating;
    this.log = log;
  }

  /** A VM's memory was released: collect soon. */
  released(): void {
    if (this.timer) return;
    this.schedule(SETTLE_MS);
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private schedule(ms: number): void {
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.migrating()) {
        this.schedule(RETRY_MS);
        return;
      }
      const before = process.memoryUsage.rss();
      const startedMs = performance.now();
      collector()();
      this.collections += 1;
      this.log.debug('guest memory returned to the OS', { freedBytes: before - process.memoryUsage.rss(), ms: performance.now() - startedMs });
    }, ms);
    this.timer.unref();
  }
}

/**
 * The agent's recent garbage collections (perf_hooks 'gc' entries), kept so that a migration's timeline can say which
 * of them fell inside its switchover. Observing costs a callback per collection; the last GC_KEPT are kept.
 */
import { PerformanceObserver, type PerformanceEntry } from 'node:perf_hooks';
import type { GcPause } from '../shared/protocol.js';

const GC_KEPT = 256;

/** perf_hooks' `detail.kind` values (NODE_PERFORMANCE_GC_*), by name. */
const gcKinds: Record<number, string> = { 1: 'major', 2: 'minor', 4: 'incremental', 8: 'weakcb' };

interface Collection { startMs: number; durationMs: number; kind: string }

const recent: Collection[] = [];
let observer: PerformanceObserver | undefined;

/** Starts observing (once per process; later calls do nothing). */
export function watchGarbageCollection(): void {
  if (observer) return;
  observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) remember(entry);
  });
  observer.observe({ entryTypes: ['gc'] });
}

function remember(entry: PerformanceEntry): void {
  const kind = (entry as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind;
  recent.push({ startMs: entry.startTime, durationMs: entry.duration, kind: gcKinds[kind ?? 0] ?? `kind ${kind}` });
  if (recent.length > GC_KEPT) recent.splice(0, recent.length - GC_KEPT);
}

/**
 * Collections that overlapped [fromMs, toMs] (performance.now() times), their start in ms from `anchorMs`. The
 * observer's callback runs a turn after each collection, so one that ended a moment ago may be missing yet.
 */
export function collectionsWithin(fromMs: number, toMs: number, anchorMs = fromMs): GcPause[] {
  return recent
    .filter((gc) => gc.startMs <= toMs && gc.startMs + gc.durationMs >= fromMs)
    .map((gc) => ({ kind: gc.kind, startMs: gc.startMs - anchorMs, durationMs: gc.durationMs }));
}

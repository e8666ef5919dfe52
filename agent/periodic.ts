/**
 * The agent's background loops (leases, settlement, cold-migration marks) run through this: a task every so often,
 * never two runs of it at once (a slow run is not stacked on), on a timer that does not keep the process alive, and
 * an error no task caught is logged with the loop's name rather than lost.
 */
import type { Logger } from '../shared/log.js';

export interface Periodic {
  stop(): void;
}

export function every(intervalMs: number, name: string, log: Logger, task: () => Promise<void>): Periodic {
  let running = false;
  const timer = setInterval(() => {
    if (running) return;
    running = true;
    task()
      .catch((error: unknown) => log.error(`${name}: a run failed`, { error: String(error) }))
      .finally(() => {
        running = false;
      });
  }, intervalMs);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}

/**
 * `trace.record`: a VM's dirty pages over time, sampled from its dirty log (`ferry trace record`, shared/trace.ts).
 *
 * Each sample harvests the log (`DirtyLog.harvest`: clear, then read the bits), so a sample holds exactly the pages
 * the vCPU dirtied since the one before. Harvesting clears the log, and a migration relies on the log to know what
 * to send again, so the recording has the VM to itself (catalog.exclusive, as 'trace recording'), which keeps the
 * other clearer away too: the stats sampler (vm-stats/sampler.ts) clears a log only when nothing holds its VM.
 *
 * - A VM that is migrating is refused, with FERRY_ERR_VM_STATE and a hint to record once it has landed.
 * - A migration that starts while a recording runs does not wait for it: it stops the recording
 *   (catalog.preempt, agent/control/migrate.ts) and takes the VM once the recording has let it go. The recording
 *   ends at its last whole sample and says so (`complete: false, stoppedBy: "migration"`); the pages dirtied after
 *   that sample stay marked in the log, and the migration's round 1 sends every page anyway. A migration is the
 *   operator's business and a trace can be taken again; holding a migration for up to an hour of recording is not.
 *
 * Samples go out as events as they are taken, so the reply stays small whatever the length, and the coordinator
 * shows progress; the reply counts them, so a coordinator can tell a lost one.
 */
import { ErrorCode, FerryError } from '../../shared/errors.js';
import type { TraceRecordReply, TraceSampleEvent } from '../../shared/protocol.js';
import { pagesToRuns } from '../../shared/trace.js';
import type { Agent, ControlServer } from '../agent.js';
import type { VirtualMachine } from '../vm/vm.js';

/** The catalog's name for a recording's hold on a VM: migrate.ts preempts it by this name. */
export const TRACE_RECORDING = 'trace recording';

/** States in which a VM's dirty log belongs to a migration (postcopy-out: the source of a post-copy whose push was cut). */
const MIGRATING = new Set(['migrating-out', 'handing-over', 'migrating-in', 'postcopy-out']);

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, ms));
    signal.addEventListener('abort', done, { once: true });
  });
}

export function serveTraceControl(connection: ControlServer, agent: Agent): void {
  const { catalog, log } = agent;

  connection.handle('trace.record', async ({ name, intervalMs, durationMs }, context) => {
    const found = catalog.machine(name);
    // A post-copy's destination runs the VM while its last pages arrive: still migrating.
    if (MIGRATING.has(found.state) || found.postcopy !== undefined || catalog.busyWith(name) === 'migration') {
      throw new FerryError(
        ErrorCode.VM_STATE,
        `cannot record a trace of ${name}: it is migrating (${found.postcopy ? `post-copy, ${found.postcopy.role}` : found.state}), and its migration reads the dirty log a recording would clear`,
        `record it once the migration has ended: \`ferry trace record ${name}\` finds it on its new host`,
      );
    }
    return catalog.exclusive(name, TRACE_RECORDING, async (vm, preempted): Promise<TraceRecordReply> => {
      const wanted = Math.max(1, Math.floor(durationMs / intervalMs));
      log.info('trace recording', { vm: name, intervalMs, samples: wanted });
      const pages = new Uint32Array(vm.pageCount);
      // From here each harvest holds what the vCPU dirtied since the one before.
      vm.dirtyLog.clearAll();
      const startN = vm.registers().n;
      const startedMs = performance.now();
      const startedAt = new Date().toISOString();
      let taken = 0;
      let stoppedBy: TraceRecordReply['stoppedBy'];
      while (taken < wanted) {
        // Each sample is due at a whole number of intervals from the start, so timer lateness does not add up.
        await sleep(startedMs + (taken + 1) * intervalMs - performance.now(), AbortSignal.any([preempted, context.signal]));
        if (preempted.aborted) {
          stoppedBy = 'migration';
          break;
        }
        if (context.signal.aborted) break; // the coordinator is gone: nobody to send samples to
        if (!stillHere(agent, vm)) {
          stoppedBy = 'vm-gone';
          break;
        }
        const count = vm.dirtyLog.harvestInto(pages);
        const event: TraceSampleEvent = { sample: taken, runs: pagesToRuns(pages, count), pages: count, n: vm.registers().n };
        taken += 1;
        await context.event(event);
      }
      const ended = performance.now();
      log.info('trace recorded', { vm: name, samples: taken, ...(stoppedBy ? { stoppedBy } : {}) });
      return {
        name, host: agent.name, memoryBytes: vm.memoryBytes, intervalMs, samples: taken, startedAt, startN,
        durationMs: taken === wanted ? taken * intervalMs : ended - startedMs,
        complete: taken === wanted, ...(stoppedBy ? { stoppedBy } : {}),
      };
    });
  });
}

function stillHere(agent: Agent, vm: VirtualMachine): boolean {
  return agent.catalog.findMachine(vm.name) === vm;
}

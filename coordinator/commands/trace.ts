/**
 * `ferry trace ...`: record a VM's dirty pages over time into a trace file, and describe one (the format:
 * shared/trace.ts; `ferry vm create --workload replay --trace FILE` and `ferry bench --trace FILE` use it).
 */
import type { Command } from 'commander';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { TRACE_LIMITS, summarizeTrace, type TraceFile, type TraceSummary } from '../../shared/trace.js';
import { formatBytes, formatDuration, parseDuration } from '../../shared/units.js';
import type { Cluster } from '../cluster.js';
import { withHost } from '../connect.js';
import { locateVm } from '../inventory.js';
import { formatTable, printJson } from '../output.js';
import { createProgressLine, progressBar } from '../progress.js';
import { checkVmName } from '../vm-spec.js';
import { readTraceFile, writeTraceFile } from '../trace/file.js';
import { recordTrace } from '../trace/record.js';

const int = (value: number): string => Math.round(value).toLocaleString('en-US');

export function formatTraceSummary(summary: TraceSummary, vcpuWrites?: { fromN: number; toN: number }): string {
  return formatTable([
    ['  samples', `${int(summary.samples)} of ${formatDuration(summary.intervalMs)} (${formatDuration(summary.durationMs)}), ${int(summary.runs)} runs`],
    ['  page writes', `${int(summary.pageWrites)}: ${int(summary.meanDirtyPagesPerSec)} pages/s on average, at most ${int(summary.peakPagesPerSample)} in one interval`],
    ['  distinct pages', `${int(summary.distinctPages)} (${formatBytes(summary.distinctPages * 4096)} of ${formatBytes(summary.memoryBytes)})`],
    ['  working set', `${int(summary.workingSetPages)} pages (${formatBytes(summary.workingSetPages * 4096)}) dirtied in two intervals or more`],
    ...(vcpuWrites ? [['  vCPU writes', `${int(vcpuWrites.toN - vcpuWrites.fromN)} (n ${int(vcpuWrites.fromN)} to ${int(vcpuWrites.toN)}), repeats within an interval included`]] : []),
  ]);
}

function durationOption(text: string, option: string, min: number, max: number): number {
  const ms = parseDuration(text);
  if (!(ms >= min && ms <= max)) {
    throw new FerryError(ErrorCode.BAD_INPUT, `${option} ${text} must be ${formatDuration(min)} to ${formatDuration(max)}`, `e.g. ${option === '--interval' ? '--interval 100ms' : '--duration 10s'}`);
  }
  return ms;
}

/** Adds `ferry trace` to `program`; `clusterOf` gives the cluster, with tokens, for a command. */
export function addTraceCommands(program: Command, clusterOf: (command: Command) => Promise<{ cluster: Cluster }>): void {
  const trace = program.command('trace').description('dirty-page traces: record a VM\'s, describe a file; replay one with `vm create --workload replay` or `bench --trace`');

  trace.command('record <name>')
    .description('record which pages a running VM dirties, interval by interval, sampled from its dirty log by its agent, into a trace file')
    .requiredOption('--out <file>', 'the trace file to write (JSON, format ferry-trace version 1)')
    .option('--duration <time>', 'how long to record', '10s')
    .option('--interval <time>', 'one sample per interval', '100ms')
    .option('--json', 'print a summary as JSON: samples, distinct pages, mean dirty rate, working set')
    .option('--quiet', 'no progress on stderr')
    .addHelpText('after', `
The VM's agent harvests its dirty log once per interval (which clears it) and sends the pages as runs; the file holds
the VM's memory size, the interval, and per interval the pages dirtied in it (docs/DESIGN.md, "Dirty-page traces").

Harvesting clears the log a migration relies on, so:
  - a VM that is migrating is refused (FERRY_ERR_VM_STATE): record it once it has landed;
  - a migration that starts while a recording runs stops the recording at its last whole sample: the file is
    written with what was recorded, marked "complete": false, and a warning says so (exit status 0: it is a valid,
    shorter trace);
  - while it records, the VM takes no other request that needs it to itself (pause, stop, dump, storage move).

Limits: --interval ${TRACE_LIMITS.minIntervalMs}ms to ${TRACE_LIMITS.maxIntervalMs / 1000}s, --duration up to 1h and ${int(TRACE_LIMITS.maxSamples)} samples.
A trace to replay carries at most ${int(TRACE_LIMITS.maxReplayRuns)} runs: a random writer makes about one run per page it dirties, so
record such a guest shorter, or coarser (a longer --interval joins more of its pages into runs).

Examples:
  ferry trace record web1 --duration 10s --out web1.trace.json
  ferry trace info web1.trace.json
  ferry bench --trace web1.trace.json --policies precopy,auto-converge`)
    .action(async (name: string, options: { out: string; duration: string; interval: string; json?: boolean; quiet?: boolean }, command: Command) => {
      const intervalMs = durationOption(options.interval, '--interval', TRACE_LIMITS.minIntervalMs, TRACE_LIMITS.maxIntervalMs);
      const durationMs = durationOption(options.duration, '--duration', intervalMs, TRACE_LIMITS.maxDurationMs);
      const wanted = Math.floor(durationMs / intervalMs);
      if (wanted > TRACE_LIMITS.maxSamples) throw new FerryError(ErrorCode.BAD_INPUT, `${int(wanted)} samples: a trace holds at most ${int(TRACE_LIMITS.maxSamples)}`, 'a longer --interval, or a shorter --duration');
      const { cluster } = await clusterOf(command);
      const { host } = await locateVm(cluster, checkVmName(name));
      const progress = options.quiet ? undefined : createProgressLine();
      progress?.log(`recording ${name} on ${host.name}: ${int(wanted)} samples of ${formatDuration(intervalMs)}`);
      let lastTenth = 0;
      const recorded = await withHost(host, (client) => recordTrace(client, { name, intervalMs: Math.round(intervalMs), durationMs: Math.round(durationMs) }, (event) => {
        const done = event.sample + 1;
        progress?.redraw(`${progressBar(done / wanted)} ${int(done)}/${int(wanted)} samples, ${int(event.pages)} pages in the last one`);
        // Off a terminal, a line at each tenth: enough to see it move in a log.
        const tenth = Math.floor((10 * done) / wanted);
        if (progress && !progress.live && tenth > lastTenth) {
          lastTenth = tenth;
          progress.log(`  ${int(done)}/${int(wanted)} samples`);
        }
      })).finally(() => progress?.finish());
      await writeTraceFile(options.out, recorded.trace);
      const summary = summarizeTrace(recorded.trace);
      if (!recorded.trace.complete) {
        process.stderr.write(`ferry: the recording of ${name} stopped after ${int(summary.samples)} of ${int(wanted)} samples (${recorded.reply.stoppedBy === 'migration' ? 'a migration of it began' : 'the VM stopped or left its host'}); ${options.out} holds those\n`);
      }
      if (options.json) {
        printJson({
          file: options.out, vm: recorded.trace.vm, host: recorded.trace.host, complete: recorded.trace.complete,
          ...(recorded.reply.stoppedBy ? { stoppedBy: recorded.reply.stoppedBy } : {}), ...summary, vcpuWrites: recorded.vcpuWrites,
        });
      } else {
        process.stdout.write(`recorded ${name} on ${recorded.trace.host} into ${options.out}\n${formatTraceSummary(summary, recorded.vcpuWrites)}\n`);
      }
    });

  trace.command('info <file>')
    .description('check a trace file and describe it: samples, page writes, mean dirty rate, distinct pages, working set')
    .option('--json', 'print JSON')
    .action(async (file: string, options: { json?: boolean }) => {
      const loaded: TraceFile = await readTraceFile(file);
      const summary = summarizeTrace(loaded);
      if (options.json) printJson({ file, vm: loaded.vm, host: loaded.host, recordedAt: loaded.recordedAt, complete: loaded.complete, ...summary });
      else process.stdout.write(`${file}: ${loaded.vm} on ${loaded.host}, recorded ${loaded.recordedAt}${loaded.complete ? '' : ' (stopped early)'}\n${formatTraceSummary(summary)}\n`);
    });
}

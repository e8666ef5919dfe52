/**
 * A dirty-page trace: which pages a VM dirtied in each interval of a recording (`ferry trace record`), and the
 * input of the `replay` workload (shared/workloads.ts) that reproduces it in a real guest.
 *
 * One representation everywhere, in the trace file, in `trace.record`'s events and in a replay VM's workload spec:
 * a sample is a flat array of runs `[gap, length, gap, length, ...]`. The first run starts at page `gap`; each later
 * run starts `gap` pages after the end of the one before it. So the pages of a sample are distinct and ascending by
 * construction, and the numbers stay small (MessagePack packs a number below 128 in one byte): a run of a random
 * writer costs two or three bytes, which is what lets a trace ride in one control message.
 *
 * The file (docs/DESIGN.md, "Dirty-page traces"), JSON:
 *   {"format": "ferry-trace", "version": 1, "vm", "host", "recordedAt", "memoryBytes", "pageSize": 4096,
 *    "intervalMs", "complete", "samples": [[gap, length, ...], ...]}
 * It is input from the user: `parseTraceFile` checks it against `traceFileSchema` before anything uses it.
 */
import { z } from 'zod';
import { MAX_MEMORY_BYTES, MIN_MEMORY_BYTES, PAGE_SIZE } from './constants.js';
import { ErrorCode, FerryError } from './errors.js';
import { forEachPage, pagesIn, pagesInSample, type TraceSample } from './trace-runs.js';

export { forEachPage, pagesIn, pagesInSample, pagesToRuns, traceExtentPages } from './trace-runs.js';

export const TRACE_FORMAT = 'ferry-trace';
export const TRACE_VERSION = 1;

export const TRACE_LIMITS = {
  /** Sampling intervals: finer than 10 ms is timer noise on a busy host; coarser than 10 s says little of a round. */
  minIntervalMs: 10,
  maxIntervalMs: 10_000,
  /** A recording lasts at most an hour. */
  maxDurationMs: 3_600_000,
  /** An hour at the finest interval would be 360,000 samples; a file holds at most this many. */
  maxSamples: 36_000,
  /** Runs in a trace file, all samples together. */
  maxRuns: 2_000_000,
  /** The file itself, before it is parsed. */
  maxFileBytes: 64 * 1024 * 1024,
  /**
   * What a replay VM's workload spec may carry: it travels in `vm.create` and `migrate.reserve`, whose frames an agent
   * takes up to 1 MiB + 64 KiB (agent/server.ts). A run packs in at most 4 bytes but for the few whose gap passes
   * 65,535 pages (at most 16 a sample in 4 GiB), so 200,000 runs and 6,000 samples stay well inside one frame.
   */
  maxReplayRuns: 200_000,
  maxReplaySamples: 6_000,
} as const;

const MAX_PAGES = MAX_MEMORY_BYTES / PAGE_SIZE;

/** A sample: runs as `[gap, length, ...]` (above). */
export const traceSampleSchema = z.array(z.number().int().min(0).max(MAX_PAGES)).max(2 * MAX_PAGES);
export type { TraceSample } from './trace-runs.js';

/**
 * Why `samples` are not a valid trace of a memory of `pageCount` pages, or undefined when they are: each sample an
 * even number of numbers, every length at least 1, every page inside memory, at most `maxRuns` runs in all.
 */
export function sampleProblem(samples: readonly TraceSample[], pageCount: number, maxRuns: number): string | undefined {
  let runs = 0;
  for (let i = 0; i < samples.length; i++) {
    const sample = samples[i]!;
    if (sample.length % 2 !== 0) return `sample ${i} has ${sample.length} numbers: runs are pairs of gap and length`;
    runs += sample.length / 2;
    if (runs > maxRuns) return `more than ${maxRuns.toLocaleString('en-US')} runs`;
    let end = 0;
    for (let k = 0; k < sample.length; k += 2) {
      const length = sample[k + 1]!;
      if (length < 1) return `sample ${i}, run ${k / 2}: a run is at least one page long`;
      end += sample[k]! + length;
      if (end > pageCount) return `sample ${i}, run ${k / 2}: pages up to ${end - 1}, past the memory's ${pageCount} pages`;
    }
  }
  return undefined;
}

/** What a replay VM carries of its trace (in its workload spec): the interval and the samples. */
export const replayTraceSchema = z.object({
  intervalMs: z.number().int().min(TRACE_LIMITS.minIntervalMs).max(TRACE_LIMITS.maxIntervalMs),
  samples: z.array(traceSampleSchema).min(1).max(TRACE_LIMITS.maxReplaySamples),
}).strict().superRefine((trace, context) => {
  const problem = sampleProblem(trace.samples, MAX_PAGES, TRACE_LIMITS.maxReplayRuns);
  if (problem) context.addIssue({ code: 'custom', message: problem });
  else if (pagesIn(trace.samples) === 0) context.addIssue({ code: 'custom', message: 'the trace dirties no page: there is nothing to replay' });
});
export type ReplayTrace = z.infer<typeof replayTraceSchema>;

export const traceFileSchema = z.object({
  format: z.literal(TRACE_FORMAT),
  version: z.literal(TRACE_VERSION),
  vm: z.string().max(64),
  host: z.string().max(64),
  recordedAt: z.string().max(64),
  memoryBytes: z.number().int().min(MIN_MEMORY_BYTES).max(MAX_MEMORY_BYTES).refine((n) => n % PAGE_SIZE === 0, 'memory is a whole number of 4 KiB pages'),
  pageSize: z.literal(PAGE_SIZE),
  intervalMs: z.number().int().min(TRACE_LIMITS.minIntervalMs).max(TRACE_LIMITS.maxIntervalMs),
  /** False when the recording ended before its duration (a migration of the VM began: agent/control/trace.ts). */
  complete: z.boolean(),
  samples: z.array(traceSampleSchema).min(1).max(TRACE_LIMITS.maxSamples),
}).strict().superRefine((trace, context) => {
  const problem = sampleProblem(trace.samples, trace.memoryBytes / PAGE_SIZE, TRACE_LIMITS.maxRuns);
  if (problem) context.addIssue({ code: 'custom', path: ['samples'], message: problem });
});
export type TraceFile = z.infer<typeof traceFileSchema>;

export interface TraceSummary {
  samples: number;
  intervalMs: number;
  durationMs: number;
  memoryBytes: number;
  runs: number;
  /** Page writes in the trace: each sample's dirty pages, summed (a page dirtied twice in one interval counts once). */
  pageWrites: number;
  /** Pages dirtied at least once. */
  distinctPages: number;
  /** Page writes per second over the whole trace. */
  meanDirtyPagesPerSec: number;
  /** The writable working set: pages dirtied in two samples or more (pre-copy sends them again). */
  workingSetPages: number;
  /** The most pages dirtied in one interval. */
  peakPagesPerSample: number;
}

export function summarizeTrace(trace: { memoryBytes: number; intervalMs: number; samples: readonly TraceSample[] }): TraceSummary {
  const seen = new Uint8Array(trace.memoryBytes / PAGE_SIZE); // samples that dirtied each page, up to 2
  let runs = 0;
  let peak = 0;
  let distinct = 0;
  let rewritten = 0;
  for (const sample of trace.samples) {
    runs += sample.length / 2;
    peak = Math.max(peak, pagesInSample(sample));
    forEachPage(sample, (page) => {
      const times = seen[page]!;
      if (times === 0) distinct += 1;
      else if (times === 1) rewritten += 1;
      if (times < 2) seen[page] = times + 1;
    });
  }
  const pageWrites = pagesIn(trace.samples);
  const durationMs = trace.samples.length * trace.intervalMs;
  return {
    samples: trace.samples.length, intervalMs: trace.intervalMs, durationMs, memoryBytes: trace.memoryBytes, runs, pageWrites,
    distinctPages: distinct, meanDirtyPagesPerSec: durationMs > 0 ? (pageWrites * 1000) / durationMs : 0, workingSetPages: rewritten,
    peakPagesPerSample: peak,
  };
}

/** A trace file's text (its size checked by the reader: coordinator/trace/file.ts), checked: anything that is not a valid trace is FERRY_ERR_BAD_INPUT, saying what and where. */
export function parseTraceFile(text: string, file: string): TraceFile {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new FerryError(ErrorCode.BAD_INPUT, `${file} is not JSON: ${(error as Error).message}`, 'give a file written by `ferry trace record`');
  }
  const parsed = traceFileSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const where = issue.path.length > 0 ? ` (at ${issue.path.join('.')})` : '';
    throw new FerryError(ErrorCode.BAD_INPUT, `${file} is not a ferry trace (format ${TRACE_FORMAT}, version ${TRACE_VERSION}): ${issue.message}${where}`, 'give a file written by `ferry trace record`, or fix the field named');
  }
  return parsed.data;
}

/**
 * What a replay VM carries of a trace, refused with the reason when the trace is too large to travel in a workload
 * spec (TRACE_LIMITS.maxReplayRuns, maxReplaySamples) or dirties no page.
 */
export function replayTraceOf(trace: TraceFile, file: string): ReplayTrace {
  const runs = trace.samples.reduce((total, sample) => total + sample.length / 2, 0);
  if (trace.samples.length > TRACE_LIMITS.maxReplaySamples || runs > TRACE_LIMITS.maxReplayRuns) {
    throw new FerryError(
      ErrorCode.BAD_INPUT,
      `${file} has ${trace.samples.length.toLocaleString('en-US')} samples and ${runs.toLocaleString('en-US')} runs; a replay carries at most ${TRACE_LIMITS.maxReplaySamples.toLocaleString('en-US')} samples and ${TRACE_LIMITS.maxReplayRuns.toLocaleString('en-US')} runs`,
      'record a shorter trace (--duration), or a coarser one (--interval 500ms: more of each interval\'s pages join into runs)',
    );
  }
  if (pagesIn(trace.samples) === 0) {
    throw new FerryError(ErrorCode.BAD_INPUT, `${file} dirties no page: there is nothing to replay`, 'record a VM while its guest writes memory');
  }
  return { intervalMs: trace.intervalMs, samples: trace.samples };
}

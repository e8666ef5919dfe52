/**
 * The trace file and its runs (shared/trace.ts): what a valid file is, what is refused and why, and the summary.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readTraceFile, traceFileText } from '../../coordinator/trace/file.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import {
  TRACE_LIMITS, forEachPage, pagesToRuns, parseTraceFile, replayTraceOf, summarizeTrace, traceExtentPages, type TraceFile,
} from '../../shared/trace.js';

const MiB = 1024 * 1024;

function trace(samples: number[][], overrides: Partial<TraceFile> = {}): TraceFile {
  return {
    format: 'ferry-trace', version: 1, vm: 'web1', host: 'host-a', recordedAt: '2026-11-26T09:00:00.000Z', memoryBytes: 1 * MiB,
    pageSize: 4096, intervalMs: 100, complete: true, samples, ...overrides,
  };
}

function refusal(text: string): FerryError {
  try {
    parseTraceFile(text, 'the.trace.json');
  } catch (error) {
    return error as FerryError;
  }
  throw new Error('the trace was accepted');
}

describe('runs of pages', () => {
  it('encodes ascending pages as gaps and lengths, and decodes them back', () => {
    const pages = [0, 1, 2, 7, 9, 10, 255];
    const runs = pagesToRuns(pages);
    expect(runs).toEqual([0, 3, 4, 1, 1, 2, 244, 1]);
    const back: number[] = [];
    forEachPage(runs, (page) => back.push(page));
    expect(back).toEqual(pages);
    expect(traceExtentPages([runs, [3, 1]])).toBe(256);
  });

  it('takes only the first `count` pages of a harvest buffer', () => {
    expect(pagesToRuns(new Uint32Array([5, 6, 99, 99]), 2)).toEqual([5, 2]);
    expect(pagesToRuns([])).toEqual([]);
  });
});

describe('the trace file', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ferry-trace-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('accepts a file as trace record writes it, and reads it back the same', async () => {
    const written = trace([[0, 3, 4, 1], [], [255, 1]], { complete: false });
    const file = path.join(dir, 'good.json');
    writeFileSync(file, traceFileText(written));
    expect(await readTraceFile(file)).toEqual(written);
  });

  it.each([
    ['not JSON', '{"format":', /is not JSON/],
    ['another format', JSON.stringify({ ...trace([[0, 1]]), format: 'pcap' }), /format/],
    ['a later version', JSON.stringify({ ...trace([[0, 1]]), version: 2 }), /version/],
    ['an unknown field', JSON.stringify({ ...trace([[0, 1]]), extra: 1 }), /extra/],
    ['a page past memory', JSON.stringify(trace([[250, 10]])), /past the memory's 256 pages/],
    ['an odd number in a sample', JSON.stringify(trace([[0, 1, 2]])), /pairs of gap and length/],
    ['a run of no pages', JSON.stringify(trace([[0, 0]])), /at least one page/],
    ['a negative page', JSON.stringify(trace([[-1, 2]])), /samples/],
    ['a fractional page', JSON.stringify(trace([[1.5, 2]])), /samples/],
    ['an interval below the floor', JSON.stringify(trace([[0, 1]], { intervalMs: 1 })), /intervalMs/],
    ['memory that is not whole pages', JSON.stringify(trace([[0, 1]], { memoryBytes: MiB + 1 })), /memoryBytes/],
    ['no samples', JSON.stringify(trace([])), /samples/],
  ])('refuses %s with FERRY_ERR_BAD_INPUT, saying why', (_what, text, why) => {
    const error = refusal(text);
    expect(error).toBeInstanceOf(FerryError);
    expect(error.code).toBe(ErrorCode.BAD_INPUT);
    expect(error.message).toMatch(why);
    expect(error.hint).toBeTruthy();
  });

  it('refuses more samples than a file may hold', () => {
    const error = refusal(JSON.stringify(trace(Array.from({ length: TRACE_LIMITS.maxSamples + 1 }, () => [0, 1]))));
    expect(error.code).toBe(ErrorCode.BAD_INPUT);
  });

  it('refuses a file that does not exist, with a hint to record one', async () => {
    await expect(readTraceFile(path.join(dir, 'missing.json'))).rejects.toMatchObject({ code: ErrorCode.BAD_INPUT, hint: expect.stringMatching(/trace record/) });
  });

  it('refuses to replay a trace larger than a workload spec may carry, or one that dirties nothing', () => {
    const wide = trace(Array.from({ length: 3 }, () => Array.from({ length: 2 * 70_000 }, (_, i) => (i % 2 === 0 ? (i === 0 ? 0 : 1) : 1))), { memoryBytes: 4 * 1024 * MiB });
    expect(() => replayTraceOf(wide, 'wide.json')).toThrow(/210,000 runs; a replay carries at most 6,000 samples and 200,000 runs/);
    expect(() => replayTraceOf(trace([[], []]), 'empty.json')).toThrow(/dirties no page/);
    expect(replayTraceOf(trace([[0, 2]]), 'ok.json')).toEqual({ intervalMs: 100, samples: [[0, 2]] });
  });
});

describe('summarizeTrace', () => {
  it('counts page writes, distinct pages, the working set (pages in two samples or more) and the mean rate', () => {
    // Pages: {0,1,2}, {2,3}, {}, {2, 200}: 7 writes in 400 ms, 5 distinct, only page 2 in two samples or more.
    const summary = summarizeTrace(trace([[0, 3], [2, 2], [], [2, 1, 197, 1]]));
    expect(summary).toMatchObject({
      samples: 4, durationMs: 400, pageWrites: 7, distinctPages: 5, workingSetPages: 1, peakPagesPerSample: 3, runs: 4,
    });
    expect(summary.meanDirtyPagesPerSec).toBeCloseTo(17.5);
  });
});

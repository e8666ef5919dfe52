/**
 * The replay workload (shared/workloads.ts; DESIGN.md, "The replay workload"): which page each write goes to, when
 * each is due, and that what it writes passes both the product's check and the independent one in test/replay.ts.
 */
import { describe, expect, it } from 'vitest';
import { checkPattern } from '../../coordinator/pattern-check.js';
import type { VmInfo, WorkloadSpec } from '../../shared/protocol.js';
import { fillPage, replayWorkload, workloadPacing, workloadStep, type WorkloadRegisters } from '../../shared/workloads.js';
import { checkReplayImage } from '../replay.js';

const PAGE = 4096;

/** Samples [1, 2] and [0, 4]: the sequence P = 1, 2, 0, 4. */
const trace = { intervalMs: 100, samples: [[1, 2], [0, 1, 3, 1]] };

function run(spec: WorkloadSpec, pageCount: number, writes: number): { image: Uint8Array; registers: WorkloadRegisters; pages: number[] } {
  const image = new Uint8Array(pageCount * PAGE);
  const words = new Uint32Array(image.buffer);
  const registers = { x: spec.seed, n: 0 };
  const next = workloadStep(spec);
  const pages: number[] = [];
  for (let i = 0; i < writes; i++) {
    const page = next(registers);
    fillPage(words, page, registers.n);
    pages.push(page);
  }
  return { image, registers, pages };
}

function infoOf(spec: WorkloadSpec, pageCount: number, registers: WorkloadRegisters): VmInfo {
  return { workload: spec, memoryBytes: pageCount * PAGE, cpu: { x: registers.x, n: registers.n } } as VmInfo;
}

describe('the replay workload', () => {
  const spec = replayWorkload(trace);

  it('is paced by the trace: the working set reaches its highest page, the rate is its busiest interval', () => {
    expect(spec).toMatchObject({ kind: 'replay', wssPages: 5, rate: 20, seed: 1 });
  });

  it('writes the trace\'s pages in order, sample after sample, looping, and leaves x at the seed', () => {
    const { pages, registers } = run(spec, 8, 10);
    expect(pages).toEqual([1, 2, 0, 4, 1, 2, 0, 4, 1, 2]);
    expect(registers).toEqual({ x: 1, n: 10 });
  });

  it('goes on from any write count, as after a migration or a resume', () => {
    const next = workloadStep(spec);
    expect(next({ x: 1, n: 5 })).toBe(2); // write 6 is P[5 mod 4] = P[1]
    expect(next({ x: 1, n: 1 })).toBe(2);
    expect(next({ x: 1, n: 403 })).toBe(4); // write 404: P[3]
  });

  it('spreads each interval\'s pages evenly over it, and counts due writes from where the pacing restarted', () => {
    const due = workloadPacing(spec);
    // Writes due at 0, 50 (sample 0), 100, 150 (sample 1), then 200, 250, ... (the next pass).
    expect([0, 1, 50, 51, 100, 101, 199, 201].map((ms) => due(0, ms))).toEqual([0, 1, 1, 2, 2, 3, 4, 5]);
    // Two writes done: the third is due at 100 ms of trace time, the pacing counts from there.
    expect([0, 1, 51].map((ms) => due(2, ms))).toEqual([0, 1, 2]);
  });

  it('lets an interval with no pages pass with no writes', () => {
    const due = workloadPacing(replayWorkload({ intervalMs: 100, samples: [[0, 1], [], [6, 1]] }));
    expect([1, 150, 199, 201].map((ms) => due(0, ms))).toEqual([1, 1, 1, 2]);
    expect(due(1, 0)).toBe(0);
    expect(due(1, 1)).toBe(1);
  });

  it('leaves memory that the independent checker and ferry vm check both find to match, and both tell a damaged page', () => {
    const pageCount = 8;
    const { image, registers } = run(spec, pageCount, 7);
    expect(checkReplayImage(image, { samples: trace.samples, seed: 1, x: registers.x, n: registers.n })).toMatchObject({ ok: true, pagesWritten: 4 });
    expect(checkPattern(infoOf(spec, pageCount, registers), image)).toMatchObject({ ok: true, pagesWritten: 4 });

    // One write too few: page 0 (write 7) would be as write 3 left it.
    expect(checkReplayImage(image, { samples: trace.samples, seed: 1, x: 1, n: 6 }).ok).toBe(false);
    expect(checkPattern(infoOf(spec, pageCount, { x: 1, n: 6 }), image).ok).toBe(false);

    image[4 * PAGE + 100] = image[4 * PAGE + 100]! ^ 1;
    expect(checkReplayImage(image, { samples: trace.samples, seed: 1, x: registers.x, n: registers.n })).toMatchObject({ ok: false, badPages: [4] });
    expect(checkPattern(infoOf(spec, pageCount, registers), image)).toMatchObject({ ok: false, badPages: [4] });
  });
});

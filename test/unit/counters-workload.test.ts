/**
 * The counters workload (shared/workloads.ts, DESIGN.md "The counters workload"): each write changes one 16-byte
 * record of a page and nothing else, memory starts filled, and both replays (the independent test/replay.ts and the
 * product's `ferry vm check`, coordinator/pattern-check.ts) accept exactly the image the workload makes.
 */
import { describe, expect, it } from 'vitest';
import type { VmInfo, WorkloadSpec } from '../../shared/protocol.js';
import { checkPattern } from '../../coordinator/pattern-check.js';
import { fillInitialPages, pageWrite, startsFilled, workloadStep, xorshift32, type WorkloadRegisters } from '../../shared/workloads.js';
import { checkCountersImage } from '../replay.js';

const PAGE = 4096;
const spec: WorkloadSpec = { kind: 'counters', rate: 1000, wssPages: 48, seed: 0xbeef };
const PAGE_COUNT = 64; // pages 48..63 lie outside the working set and stay as filled

/** Runs the product's counters workload for `writes` writes over a filled image. */
function runCounters(writes: number): { image: Uint8Array; regs: WorkloadRegisters } {
  const image = new Uint8Array(PAGE_COUNT * PAGE);
  fillInitialPages(image, 0, PAGE_COUNT);
  const words = new Uint32Array(image.buffer);
  const next = workloadStep(spec);
  const write = pageWrite(spec);
  const regs = { x: spec.seed, n: 0 };
  for (let i = 0; i < writes; i++) {
    const page = next(regs);
    write(words, page, regs);
  }
  return { image, regs };
}

function vmInfo(regs: WorkloadRegisters): VmInfo {
  return { name: 'c', host: 'h', memoryBytes: PAGE_COUNT * PAGE, workload: { ...spec, filled: true }, cpu: { x: regs.x, n: regs.n } } as unknown as VmInfo;
}

describe('counters workload', () => {
  it('starts filled whatever --filled says', () => {
    expect(startsFilled(spec)).toBe(true);
    expect(startsFilled({ ...spec, kind: 'pattern' })).toBe(false);
  });

  it('writes one 16-byte record of the page the registers pick, as DESIGN.md says, and nothing else', () => {
    const before = runCounters(0).image;
    const { image, regs } = runCounters(1);
    const x = xorshift32(spec.seed);
    expect(regs).toEqual({ x, n: 1 });
    const page = x % spec.wssPages;
    const record = x >>> 24;
    const at = page * PAGE + record * 16;
    const changed: number[] = [];
    for (let i = 0; i < image.length; i++) if (image[i] !== before[i]) changed.push(i);
    expect(changed.every((i) => i >= at && i < at + 16)).toBe(true);
    const view = new DataView(image.buffer);
    const was = new DataView(before.buffer);
    expect(view.getUint32(at, true)).toBe(1);
    expect(view.getUint32(at + 4, true)).toBe(0);
    expect(view.getUint32(at + 8, true)).toBe((was.getUint32(at + 8, true) + 1) >>> 0);
    expect(view.getUint32(at + 12, true)).toBe(x);
  });

  it('is accepted by the independent replay and by ferry vm check after many writes', () => {
    const { image, regs } = runCounters(20_000);
    const independent = checkCountersImage(image, { seed: spec.seed, wssPages: spec.wssPages, x: regs.x, n: regs.n });
    expect(independent.reason).toBeUndefined();
    expect(independent).toMatchObject({ ok: true, pagesWritten: spec.wssPages, registersMatch: true });
    expect(checkPattern(vmInfo(regs), image)).toMatchObject({ ok: true, badPages: [], registersMatch: true });
  });

  it('is refused by both when a record, a page outside the working set, or a register is wrong', () => {
    const { image, regs } = runCounters(5000);
    const spoiled = (at: number): Uint8Array => {
      const copy = image.slice();
      copy[at]! ^= 0x01;
      return copy;
    };
    for (const at of [3 * PAGE + 8, 10 * PAGE + 4095, 50 * PAGE + 100]) {
      const page = Math.floor(at / PAGE);
      const bad = spoiled(at);
      expect(checkCountersImage(bad, { seed: spec.seed, wssPages: spec.wssPages, x: regs.x, n: regs.n }).badPages).toEqual([page]);
      expect(checkPattern(vmInfo(regs), bad).badPages).toEqual([page]);
    }
    expect(checkCountersImage(image, { seed: spec.seed, wssPages: spec.wssPages, x: regs.x, n: regs.n - 1 }).ok).toBe(false);
    expect(checkPattern(vmInfo({ x: regs.x, n: regs.n - 1 }), image).ok).toBe(false);
  });
});

/**
 * `ferry vm check`: is this memory image exactly what the `pattern` workload's registers say it should be?
 * Replays n writes from the seed (DESIGN.md), notes the last write to each page, and compares every page; a torn
 * page, a lost round, a wrong register or a page from the wrong moment all show.
 */
import { NET_REGION_PAGES, PAGE_SIZE } from '../shared/constants.js';
import type { VmInfo } from '../shared/protocol.js';
import { WORDS_PER_PAGE, fillPage, workloadStep, type WorkloadRegisters } from '../shared/workloads.js';

export interface PatternCheck {
  ok: boolean;
  writesReplayed: number;
  pagesWritten: number;
  pagesChecked: number;
  /** The first few pages that differ from replay. */
  badPages: number[];
  registersMatch: boolean;
}

export function checkPattern(info: VmInfo, image: Uint8Array): PatternCheck {
  const { seed, wssPages } = info.workload;
  // An addressed VM's network device takes the top of its memory (agent/vm/net/device.ts): its rings are no
  // pattern's business, and the working set stays below them, so only the pages below are checked.
  const pageCount = info.memoryBytes / PAGE_SIZE - (info.address ? NET_REGION_PAGES : 0);
  const lastWrite = new Float64Array(pageCount); // 0 = never written
  const registers: WorkloadRegisters = { x: seed, n: 0 };
  const next = workloadStep({ ...info.workload, kind: 'pattern' });
  for (let i = 0; i < info.cpu.n; i++) lastWrite[next(registers)] = registers.n;
  let pagesWritten = 0;

  const expected = new Uint32Array(WORDS_PER_PAGE);
  const actual = new Uint32Array(WORDS_PER_PAGE);
  const bytes = new Uint8Array(actual.buffer);
  const badPages: number[] = [];
  for (let page = 0; page < pageCount; page++) {
    const n = lastWrite[page]!;
    if (n > 0) {
      pagesWritten += 1;
      fillPage(expected, 0, n);
      expected[2] = page;
    } else {
      expected.fill(0);
    }
    bytes.set(image.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE));
    let same = true;
    for (let k = 0; k < WORDS_PER_PAGE; k++) {
      if (actual[k] !== expected[k]) {
        same = false;
        break;
      }
    }
    if (!same && badPages.length < 10) badPages.push(page);
  }
  const registersMatch = registers.x === info.cpu.x && wssPages > 0;
  return { ok: badPages.length === 0 && registersMatch, writesReplayed: info.cpu.n, pagesWritten, pagesChecked: pageCount, badPages, registersMatch };
}

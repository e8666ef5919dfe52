/**
 * A trace sample's runs of pages (shared/trace.ts says what a sample is), and what is worked out from them. Apart
 * from the trace's schema because the vCPU's worker needs these (a replay guest, shared/workloads.ts) and a worker
 * that loads a schema library starts tens of milliseconds later: a migration's reservation waits for that start.
 */

/** A sample: `[gap, length, gap, length, ...]` (shared/trace.ts). */
export type TraceSample = number[];

/** The runs of ascending, distinct pages `pages[0..count)`. */
export function pagesToRuns(pages: ArrayLike<number>, count = pages.length): TraceSample {
  const runs: number[] = [];
  let end = 0; // one past the last run's last page
  for (let i = 0; i < count; ) {
    const start = pages[i]!;
    let length = 1;
    while (i + length < count && pages[i + length] === start + length) length += 1;
    runs.push(start - end, length);
    end = start + length;
    i += length;
  }
  return runs;
}

/** Calls `visit` with each page of a sample, ascending. */
export function forEachPage(sample: TraceSample, visit: (page: number) => void): void {
  let page = 0;
  for (let k = 0; k < sample.length; k += 2) {
    page += sample[k]!;
    const end = page + sample[k + 1]!;
    for (; page < end; page++) visit(page);
  }
}

/** One past the highest page the samples name: the working set a replay of them needs. */
export function traceExtentPages(samples: readonly TraceSample[]): number {
  let extent = 0;
  for (const sample of samples) {
    let end = 0;
    for (const value of sample) end += value;
    extent = Math.max(extent, end);
  }
  return extent;
}

/** Pages in one sample. */
export function pagesInSample(sample: TraceSample): number {
  let pages = 0;
  for (let k = 1; k < sample.length; k += 2) pages += sample[k]!;
  return pages;
}

/** Pages in all samples together, repeats counted: the page writes one pass of a replay makes. */
export function pagesIn(samples: readonly TraceSample[]): number {
  let pages = 0;
  for (const sample of samples) pages += pagesInSample(sample);
  return pages;
}

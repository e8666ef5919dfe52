/**
 * An independent checker for the `pattern` workload (and `counters`, at the end), written from DESIGN.md ("The
 * pattern workload: memory anyone can check") and deliberately NOT from shared/workloads.ts: if the product's workload and this file disagree, one
 * of them misreads the design, and the tests that use this file say so.
 *
 * The design, restated:
 * - registers: x (uint32, starts at the seed, never 0) and n (writes done, starts at 0);
 * - one write: n = n + 1; x ^= x << 13; x ^= x >>> 17; x ^= x << 5 (uint32 throughout); p = x % wssPages;
 *   page p becomes 1024 little-endian uint32 words: w[0] = n mod 2^32, w[1] = floor(n / 2^32), w[2] = p,
 *   w[k] = w[0] XOR (k * 0x9E3779B1 mod 2^32) for k = 3..1023;
 * - a page never written is all zeros; in a VM created --filled, it is as write 0 leaves it (the fill above with
 *   n = 0: w[0] = w[1] = 0, w[2] = p).
 *
 * To check an image: replay n writes from the seed, keeping only the last write index of each page (one number per
 * page, so the replay costs O(n + pages) and never touches page contents), then compare every page of the image
 * against the fill its last write (or no write) implies, computed on the fly.
 */
import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';

const PAGE_BYTES = 4096;
const WORDS = PAGE_BYTES / 4;
const TWO_32 = 2 ** 32;
const MAX_BAD_PAGES = 10;

export interface PatternState {
  seed: number;
  wssPages: number;
  x: number;
  n: number;
  /** The VM was created --filled: a page never written holds write 0's fill, not zeros. */
  filled?: boolean;
}

export interface ReplayResult {
  ok: boolean;
  writesReplayed: number;
  pagesWritten: number;
  /** The first (lowest) up to 10 pages whose contents are not what the replay expects. */
  badPages: number[];
  registersMatch: boolean;
  reason?: string;
}

/** k * 0x9E3779B1 mod 2^32 for k = 0..1023. k * 0x9E3779B1 < 2^42, so the product is exact in a double. */
const GOLDEN_MULTIPLES = (() => {
  const table = new Uint32Array(WORDS);
  for (let k = 0; k < WORDS; k++) table[k] = (k * 0x9e3779b1) % TWO_32;
  return table;
})();

const hostIsLittleEndian = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** One xorshift32 step as DESIGN.md writes it, every intermediate reduced to uint32. */
function xorshift(value: number): number {
  let x = value >>> 0;
  x = (x ^ (x << 13)) >>> 0;
  x = (x ^ (x >>> 17)) >>> 0;
  x = (x ^ (x << 5)) >>> 0;
  return x;
}

function fail(result: Omit<ReplayResult, 'ok'>, reason: string): ReplayResult {
  return { ...result, ok: false, reason };
}

/**
 * Does page `page`, whose first word is words[base], hold exactly what write number `last` (0: never written)
 * leaves there? `words` are the page's little-endian uint32 words as this host reads them.
 */
function pageMatches(words: Uint32Array, base: number, page: number, last: number, filled: boolean): boolean {
  if (last === 0 && !filled) {
    for (let k = 0; k < WORDS; k++) if (words[base + k] !== 0) return false;
    return true;
  }
  const low = last % TWO_32;
  const high = Math.floor(last / TWO_32);
  if (words[base] !== low || words[base + 1] !== high || words[base + 2] !== page) return false;
  for (let k = 3; k < WORDS; k++) {
    if (words[base + k] !== ((low ^ GOLDEN_MULTIPLES[k]!) >>> 0)) return false;
  }
  return true;
}

/**
 * Compares every page of `image` with the fill its last write implies (`last[p]`, 0: never written; pages past
 * `last` were never written). The first up to 10 bad pages, and how many in all.
 */
function compareImage(image: Uint8Array, last: Float64Array, filled: boolean): { badPages: number[]; badCount: number } {
  const pageCount = image.byteLength / PAGE_BYTES;
  // Compare every page. A Uint32Array view over the image when it is 4-aligned and this host is little-endian;
  // otherwise each page is copied into a scratch page in little-endian word order first.
  const badPages: number[] = [];
  let badCount = 0;
  const direct = hostIsLittleEndian && image.byteOffset % 4 === 0;
  const view = direct ? new Uint32Array(image.buffer, image.byteOffset, image.byteLength / 4) : undefined;
  const scratch = new Uint32Array(WORDS);
  const scratchBytes = new Uint8Array(scratch.buffer);
  for (let page = 0; page < pageCount; page++) {
    const lastWrite = page < last.length ? last[page]! : 0;
    let matches: boolean;
    if (view) {
      matches = pageMatches(view, page * WORDS, page, lastWrite, filled);
    } else {
      const bytes = image.subarray(page * PAGE_BYTES, (page + 1) * PAGE_BYTES);
      if (hostIsLittleEndian) {
        scratchBytes.set(bytes);
      } else {
        const data = new DataView(bytes.buffer, bytes.byteOffset, PAGE_BYTES);
        for (let k = 0; k < WORDS; k++) scratch[k] = data.getUint32(4 * k, true);
      }
      matches = pageMatches(scratch, 0, page, lastWrite, filled);
    }
    if (!matches) {
      badCount += 1;
      if (badPages.length < MAX_BAD_PAGES) badPages.push(page);
    }
  }

  return { badPages, badCount };
}

/** Replays n writes from seed over wssPages and compares every page of `image` (length a multiple of 4096; pages never written must be zero) and that the replayed x equals state.x. */
export function checkPatternImage(image: Uint8Array, state: PatternState): ReplayResult {
  const { seed, wssPages, n } = state;
  const empty = { writesReplayed: 0, pagesWritten: 0, badPages: [] as number[], registersMatch: false };
  if (image.byteLength % PAGE_BYTES !== 0) {
    return fail(empty, `image is ${image.byteLength} bytes, not a whole number of ${PAGE_BYTES}-byte pages`);
  }
  if (!Number.isInteger(seed) || seed < 1 || seed > 0xffffffff) return fail(empty, `seed ${seed} is not a uint32 other than 0`);
  if (!Number.isInteger(wssPages) || wssPages < 1) return fail(empty, `wssPages ${wssPages} is not a positive integer`);
  if (!Number.isSafeInteger(n) || n < 0) return fail(empty, `n ${n} is not a whole number of writes below 2^53`);
  const pageCount = image.byteLength / PAGE_BYTES;
  if (wssPages > pageCount) {
    return fail(empty, `the working set (${wssPages} pages) is larger than the image (${pageCount} pages)`);
  }

  // Replay: last[p] is the number of the last write to page p (writes count from 1), or 0 if none.
  // Float64Array holds write numbers exactly up to 2^53.
  const last = new Float64Array(wssPages);
  let x = seed >>> 0;
  let pagesWritten = 0;
  for (let i = 1; i <= n; i++) {
    x = xorshift(x);
    const p = x % wssPages;
    if (last[p] === 0) pagesWritten += 1;
    last[p] = i;
  }
  const registersMatch = state.x === x;

  const { badPages, badCount } = compareImage(image, last, state.filled === true);

  const result = { writesReplayed: n, pagesWritten, badPages, registersMatch };
  const reasons: string[] = [];
  if (badCount > 0) reasons.push(`${badCount} of ${pageCount} pages differ from the replay (first: ${badPages.join(', ')})`);
  if (!registersMatch) reasons.push(`register x is ${state.x}, the replay of ${n} writes ends at ${x}`);
  if (reasons.length > 0) return fail(result, reasons.join('; '));
  return { ...result, ok: true };
}

/**
 * The replay workload (DESIGN.md, "The replay workload"), restated from the design alone:
 * - a sample is a flat list of runs [gap, length, gap, length, ...]; the first run starts at page `gap`, each later
 *   one `gap` pages after the end of the run before it;
 * - the samples' pages, sample after sample, each sample's ascending, are the sequence P (length L);
 * - write n (from 1) fills page P[(n - 1) mod L] as the pattern workload's write n fills a page; x stays at the seed.
 */
export interface ReplayState {
  samples: number[][];
  seed: number;
  x: number;
  n: number;
  /** The VM was created --filled: a page never written holds write 0's fill, not zeros. */
  filled?: boolean;
}

/** Checks an image against a replay of `n` writes of a trace: each page as its last write left it, or as it started. */
export function checkReplayImage(image: Uint8Array, state: ReplayState): ReplayResult {
  const empty = { writesReplayed: 0, pagesWritten: 0, badPages: [] as number[], registersMatch: false };
  if (image.byteLength % PAGE_BYTES !== 0) return fail(empty, `image is ${image.byteLength} bytes, not a whole number of ${PAGE_BYTES}-byte pages`);
  if (!Number.isSafeInteger(state.n) || state.n < 0) return fail(empty, `n ${state.n} is not a whole number of writes below 2^53`);
  const sequence: number[] = [];
  for (const sample of state.samples) {
    let end = 0;
    for (let k = 0; k + 1 < sample.length; k += 2) {
      const start = end + sample[k]!;
      for (let page = start; page < start + sample[k + 1]!; page++) sequence.push(page);
      end = start + sample[k + 1]!;
    }
  }
  if (sequence.length === 0) return fail(empty, 'the trace names no page');
  const pageCount = image.byteLength / PAGE_BYTES;
  const last = new Float64Array(pageCount);
  // Without walking all n writes: `loops` whole passes, then `rest` writes of the next; a page's last write is its
  // last place in the sequence within the partial pass, else within the last whole pass.
  const length = sequence.length;
  const loops = Math.floor(state.n / length);
  const rest = state.n - loops * length;
  for (let i = 0; i < length; i++) {
    const page = sequence[i]!;
    if (page >= pageCount) return fail(empty, `the trace names page ${page}, past the image's ${pageCount} pages`);
    const write = i < rest ? loops * length + i + 1 : loops > 0 ? (loops - 1) * length + i + 1 : 0;
    if (write > last[page]!) last[page] = write;
  }
  let pagesWritten = 0;
  for (let page = 0; page < pageCount; page++) if (last[page]! > 0) pagesWritten += 1;
  const { badPages, badCount } = compareImage(image, last, state.filled === true);
  const registersMatch = state.x === state.seed;
  const result = { writesReplayed: state.n, pagesWritten, badPages, registersMatch };
  const reasons: string[] = [];
  if (badCount > 0) reasons.push(`${badCount} of ${pageCount} pages differ from the replay (first: ${badPages.join(', ')})`);
  if (!registersMatch) reasons.push(`register x is ${state.x}; a replay VM leaves it at its seed ${state.seed}`);
  if (reasons.length > 0) return fail(result, reasons.join('; '));
  return { ...result, ok: true };
}

/** Reads a whole file into one Uint8Array, in chunks (readFileSync refuses files over 2 GiB). */
function readWhole(file: string): Uint8Array {
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    const image = new Uint8Array(size);
    const CHUNK = 1 << 30;
    let offset = 0;
    while (offset < size) {
      const read = readSync(fd, image, offset, Math.min(CHUNK, size - offset), offset);
      if (read === 0) throw new Error(`${file}: unexpected end of file at byte ${offset} of ${size}`);
      offset += read;
    }
    return image;
  } finally {
    closeSync(fd);
  }
}

/** Reads FILE (the memory image) and FILE.json (its metadata) as `ferry vm dump` writes them. */
export function readDump(file: string): { image: Uint8Array; meta: any } {
  const meta: unknown = JSON.parse(readFileSync(`${file}.json`, 'utf8'));
  return { image: readWhole(file), meta };
}

/**
 * Reads a dump and checks it with checkPatternImage (checkCountersImage for a counters VM, checkReplayImage for a
 * replay VM); a dump of another workload, or inconsistent, fails.
 */
export function checkDump(file: string): ReplayResult {
  const { image, meta } = readDump(file);
  const empty = { writesReplayed: 0, pagesWritten: 0, badPages: [] as number[], registersMatch: false };
  const kind = meta?.workload?.kind;
  if (kind === 'replay') {
    const { x, n } = (meta.cpu ?? {}) as { x: number; n: number };
    return checkReplayImage(image, { samples: meta.workload.trace.samples as number[][], seed: meta.workload.seed as number, x, n, filled: meta.workload.filled === true });
  }
  if (kind !== 'pattern' && kind !== 'counters') return fail(empty, `the dump's workload is ${String(kind)}, not pattern, counters or replay`);
  if (meta.pageSize !== undefined && meta.pageSize !== PAGE_BYTES) return fail(empty, `the dump's page size is ${meta.pageSize}, not ${PAGE_BYTES}`);
  if (meta.memoryBytes !== undefined && meta.memoryBytes !== image.byteLength) {
    return fail(empty, `the metadata says ${meta.memoryBytes} bytes, the image has ${image.byteLength}`);
  }
  const { seed, wssPages, filled } = meta.workload as { seed: number; wssPages: number; filled?: boolean };
  const { x, n } = (meta.cpu ?? {}) as { x: number; n: number };
  if (kind === 'counters') return checkCountersImage(image, { seed, wssPages, x, n });
  return checkPatternImage(image, { seed, wssPages, x, n, filled: filled === true });
}

export interface CountersState {
  seed: number;
  wssPages: number;
  x: number;
  n: number;
}

/**
 * The `counters` workload, checked from DESIGN.md ("The counters workload") and not from shared/workloads.ts:
 * registers advance as pattern's; write n hits record c = x >>> 24 of page p = x % wssPages, whose words 4c..4c+3
 * become n mod 2^32, floor(n / 2^32), (that word + 1) mod 2^32, x; memory starts filled (pattern write 0's fill).
 * Per page and record it keeps the last write's number and x and how many writes hit it, then compares every word.
 */
export function checkCountersImage(image: Uint8Array, state: CountersState): ReplayResult {
  const { seed, wssPages, n } = state;
  const empty = { writesReplayed: 0, pagesWritten: 0, badPages: [] as number[], registersMatch: false };
  if (image.byteLength % PAGE_BYTES !== 0) return fail(empty, `image is ${image.byteLength} bytes, not a whole number of pages`);
  if (!Number.isInteger(seed) || seed < 1 || seed > 0xffffffff) return fail(empty, `seed ${seed} is not a uint32 other than 0`);
  const pageCount = image.byteLength / PAGE_BYTES;
  if (!Number.isInteger(wssPages) || wssPages < 1 || wssPages > pageCount) return fail(empty, `wssPages ${wssPages} does not fit the image's ${pageCount} pages`);
  if (!Number.isSafeInteger(n) || n < 0) return fail(empty, `n ${n} is not a whole number of writes below 2^53`);
  const RECORDS = 256;
  const lastWrite = new Float64Array(wssPages * RECORDS);
  const lastX = new Uint32Array(wssPages * RECORDS);
  const hits = new Float64Array(wssPages * RECORDS);
  const pageHit = new Uint8Array(wssPages);
  let x = seed >>> 0;
  for (let i = 1; i <= n; i++) {
    x = xorshift(x);
    const p = x % wssPages;
    const record = p * RECORDS + Math.floor(x / 2 ** 24);
    lastWrite[record] = i;
    lastX[record] = x;
    hits[record]! += 1;
    pageHit[p] = 1;
  }
  const data = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const filledWord = (page: number, k: number): number => (k < 2 ? 0 : k === 2 ? page : GOLDEN_MULTIPLES[k]!);
  const badPages: number[] = [];
  let badCount = 0;
  for (let page = 0; page < pageCount; page++) {
    let same = true;
    for (let k = 0; k < WORDS && same; k++) {
      const record = page < wssPages ? page * RECORDS + (k >>> 2) : -1;
      let expected = filledWord(page, k);
      if (record >= 0 && hits[record]! > 0) {
        const last = lastWrite[record]!;
        const word = k & 3;
        expected = word === 0 ? last % TWO_32 : word === 1 ? Math.floor(last / TWO_32) : word === 2 ? (expected + hits[record]!) % TWO_32 : lastX[record]!;
      }
      same = data.getUint32(page * PAGE_BYTES + 4 * k, true) === expected;
    }
    if (!same) {
      badCount += 1;
      if (badPages.length < MAX_BAD_PAGES) badPages.push(page);
    }
  }
  const registersMatch = state.x === x;
  const result = { writesReplayed: n, pagesWritten: pageHit.reduce((total, hit) => total + hit, 0), badPages, registersMatch };
  const reasons: string[] = [];
  if (badCount > 0) reasons.push(`${badCount} of ${pageCount} pages differ from the replay (first: ${badPages.join(', ')})`);
  if (!registersMatch) reasons.push(`register x is ${state.x}, the replay of ${n} writes ends at ${x}`);
  if (reasons.length > 0) return fail(result, reasons.join('; '));
  return { ...result, ok: true };
}

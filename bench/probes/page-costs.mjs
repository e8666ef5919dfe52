// What one pass over a GiB of guest memory costs here, single-threaded: the per-page costs of ferry's data path.
// Run from the repository root after `npm run build`: node bench/probes/page-costs.mjs
import xxhash from 'xxhash-wasm';
import { PageHasher, allocateGuestMemory } from '../../dist/shared/page-hash.js';
import { XXH64_PAGE_WASM } from '../../dist/shared/xxh64-page.wasm.js';
import { isZeroPage } from '../../dist/shared/zero-page.js';
import { DirtyLog } from '../../dist/agent/vm/dirty-log.js';

const GiB = 1 << 30;
const PAGES = GiB / 4096;
// `rounds` > 1: the best of that many passes (the first also pays for compiling the wasm's optimized code).
const time = (what, work, rounds = 1) => {
  let best = Infinity;
  for (let round = 0; round < rounds; round++) {
    const started = performance.now();
    work();
    best = Math.min(best, performance.now() - started);
  }
  console.log(`${what.padEnd(60)} ${best.toFixed(0).padStart(5)} ms per GiB`);
};

const guest = allocateGuestMemory(GiB);
const memory = new Uint8Array(guest.buffer, 0, GiB);
const source = Buffer.alloc(1 << 20, 7);
time('copy into fresh memory (first touch: page faults)', () => { for (let o = 0; o < GiB; o += 1 << 20) memory.set(source, o); });
time('copy into the same memory again (no faults)', () => { for (let o = 0; o < GiB; o += 1 << 20) memory.set(source, o); });
const { h64Raw } = await xxhash();
time('xxh64 per page, xxhash-wasm (copies into wasm memory)', () => { for (let p = 0; p < PAGES; p++) h64Raw(memory.subarray(p * 4096, (p + 1) * 4096)); });
const table = new Uint32Array(2 * PAGES);
// The page hash before protocol 3: xxh64 in place (shared/xxh64-page.wat), its result read from two globals.
const xxh64 = new WebAssembly.Instance(new WebAssembly.Module(Buffer.from(XXH64_PAGE_WASM, 'base64')), { env: { memory: guest } }).exports;
// The page hash ferry uses: XXH3-64 in place with SIMD (shared/xxh3-page.wat), through PageHasher.
const hasher = new PageHasher(guest);
time('xxh64 per page, in place (shared/xxh64-page.wat)', () => {
  for (let p = 0; p < PAGES; p++) {
    xxh64.hashPage(p * 4096);
    table[2 * p] = xxh64.lo.value;
    table[2 * p + 1] = xxh64.hi.value;
  }
}, 3);
time('XXH3-64 per page, in place, SIMD (shared/xxh3-page.wat)', () => { for (let p = 0; p < PAGES; p++) hasher.hashInto(p, table, p); }, 3);
// A zero page's extra cost on the source (shared/zero-page.ts): its hash is the zero page's, then one compare with
// zeros. Every other page pays only the two-word compare of its hash, already in the line above.
const zeros = allocateGuestMemory(GiB);
const zeroMemory = new Uint8Array(zeros.buffer, 0, GiB);
for (let o = 0; o < GiB; o += 4096) zeroMemory[o] = 0; // backed, as a preallocated guest's memory is
time('zero-page check per page (compare with zeros), all-zero GiB', () => { for (let p = 0; p < PAGES; p++) isZeroPage(zeroMemory, p); }, 3);
// The dirty log of a 1 GiB guest is 8,192 words: a harvest of an all-dirty log, and the scan of a clean one.
const dirtyLog = DirtyLog.allocate(PAGES);
time('dirty-log harvest, every page dirty (262,144 pages)', () => { dirtyLog.words.fill(-1); dirtyLog.harvest(); }, 3);
time('dirty-log scan, no page dirty', () => { dirtyLog.harvest(); }, 3);

// What one pass over a GiB of guest memory costs here, single-threaded: the per-page costs of ferry's data path.
// Run from the repository root after `npm run build`: node bench/probes/page-costs.mjs
import xxhash from 'xxhash-wasm';
import { PageHasher, allocateGuestMemory } from '../../dist/shared/page-hash.js';

const GiB = 1 << 30;
const PAGES = GiB / 4096;
const time = (what, work) => {
  const started = performance.now();
  work();
  console.log(`${what.padEnd(52)} ${(performance.now() - started).toFixed(0).padStart(5)} ms per GiB`);
};

const guest = allocateGuestMemory(GiB);
const memory = new Uint8Array(guest.buffer, 0, GiB);
const source = Buffer.alloc(1 << 20, 7);
time('copy into fresh memory (first touch: page faults)', () => { for (let o = 0; o < GiB; o += 1 << 20) memory.set(source, o); });
time('copy into the same memory again (no faults)', () => { for (let o = 0; o < GiB; o += 1 << 20) memory.set(source, o); });
const { h64Raw } = await xxhash();
time('xxh64 per page, xxhash-wasm (copies into wasm memory)', () => { for (let p = 0; p < PAGES; p++) h64Raw(memory.subarray(p * 4096, (p + 1) * 4096)); });
const hasher = new PageHasher(guest);
const table = new Uint32Array(2 * PAGES);
time('xxh64 per page, in place (shared/xxh64-page.wat)', () => { for (let p = 0; p < PAGES; p++) hasher.hashInto(p, table, p); });

/**
 * XXH3-64 of 4 KiB pages, computed in place in guest memory by a small SIMD wasm module (xxh3-page.wat), with no copy
 * and no BigInt: each page's hash lands in a Uint32Array table as two little-endian words (low, high), which is
 * exactly the byte layout of a little-endian uint64, so the table's bytes are the "page-hash table" whose digest
 * the commit compares.
 *
 * Guest memory must be a shared WebAssembly.Memory for the module to read it; `allocateGuestMemory` makes one.
 */
import { PAGE_SIZE } from './constants.js';
import { XXH3_PAGE_WASM } from './xxh3-page.wasm.js';

const WASM_PAGE_BYTES = 64 * 1024;
const compiled = new WebAssembly.Module(Buffer.from(XXH3_PAGE_WASM, 'base64'));

/** Guest memory of `bytes` (a multiple of 4 KiB, at most 4 GiB) as shared wasm memory, all zeros. */
export function allocateGuestMemory(bytes: number): WebAssembly.Memory {
  const pages = Math.ceil(bytes / WASM_PAGE_BYTES);
  return new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
}

export class PageHasher {
  /** Hashes the page at `offset`; returns the low 32 bits of its hash and leaves the high 32 bits in `hi`. */
  private readonly hashPageAt: (offset: number) => number;
  private readonly hi: WebAssembly.Global;

  constructor(memory: WebAssembly.Memory) {
    const instance = new WebAssembly.Instance(compiled, { env: { memory } });
    const exports = instance.exports as { hashPage: (offset: number) => number; hi: WebAssembly.Global };
    this.hashPageAt = exports.hashPage;
    this.hi = exports.hi;
  }

  /** Hashes guest page `page` where it lies and writes its XXH3-64 into `table` at `slot` (words 2 slot, 2 slot + 1). */
  hashInto(page: number, table: Uint32Array, slot: number): void {
    table[2 * slot] = this.hashPageAt(page * PAGE_SIZE);
    table[2 * slot + 1] = this.hi.value as number;
  }
}

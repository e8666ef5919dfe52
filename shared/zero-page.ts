/**
 * Zero pages: a page whose 4096 bytes are all 0 travels as a flag (page-frame.ts), as QEMU sends them.
 *
 * The sender finds them without another pass over each page: it hashes every page anyway, and only a page whose
 * hash equals the zero page's is then compared with zeros (one memcmp, paid by zero pages and by nothing else).
 */
import { PAGE_SIZE } from './constants.js';
import { PageHasher, allocateGuestMemory } from './page-hash.js';

const ZEROS = new Uint8Array(PAGE_SIZE);

function hashOfZeroPage(): Uint32Array {
  const table = new Uint32Array(2);
  new PageHasher(allocateGuestMemory(PAGE_SIZE)).hashInto(0, table, 0);
  return table;
}

/** The page hash of a zero page, as two words (low, high), as PageHasher writes it. */
export const ZERO_PAGE_HASH: Readonly<Uint32Array> = hashOfZeroPage();

/** Whether the hash in `table` at `slot` is the zero page's. */
export function hasZeroPageHash(table: Uint32Array, slot: number): boolean {
  return table[2 * slot] === ZERO_PAGE_HASH[0] && table[2 * slot + 1] === ZERO_PAGE_HASH[1];
}

/** Whether page `page` of `memory` is all zeros. */
export function isZeroPage(memory: Uint8Array, page: number): boolean {
  const from = page * PAGE_SIZE;
  return Buffer.compare(memory.subarray(from, from + PAGE_SIZE), ZEROS) === 0;
}

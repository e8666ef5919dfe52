/**
 * The page-table digest that the commit compares, kept current while pages arrive, so that the pause hashes only the
 * last round's part of the table.
 *
 * The digest is a two-level xxh64: the page-hash table (two uint32 words a page, page-hash.ts) is cut into chunks of
 * TABLE_CHUNK_PAGES pages; each chunk has its xxh64; the digest is the xxh64 of the vector of chunk digests, in order.
 * It covers every page's hash as the flat digest did: a page whose hash differs changes its chunk's digest (up to an
 * xxh64 collision), and that changes the vector's digest.
 *
 *   table   | p0 p1 ... p255 | p256 ... p511 | ... |        (8 bytes a page)
 *              xxh64 │           xxh64 │
 *   vector  |   c0    |    c1    | ... |                   (8 bytes a chunk)
 *                  xxh64 │
 *   digest
 *
 * Whoever changes the table says which pages (`touch`); their chunks are marked stale and rehashed at the next
 * `refresh` (each side calls it at the end of every pre-copy round) or `digest`. `digestTableFromScratch` (below)
 * computes the same value from scratch; test/unit/table-digest.test.ts holds the two equal.
 *
 * Chunk size: 256 pages is 2 KiB of table: a stop-and-copy of a few hundred scattered pages rehashes at most that many
 * 2 KiB chunks, and a 4 GiB guest has a vector of 4,096 chunks (32 KiB), hashed in one call.
 */
import { hashBytes } from './checksum.js';

export const TABLE_CHUNK_PAGES = 256;
const WORDS_PER_PAGE = 2;

export class TableDigest {
  private readonly table: Uint32Array;
  private readonly tableBytes: Uint8Array;
  private readonly pageCount: number;
  /** Chunk digests, two uint32 words each (low, high), little-endian as the table's own words. */
  private readonly vector: Uint32Array;
  private readonly vectorBytes: Uint8Array;
  /** 1 where the chunk changed since it was last hashed. */
  private readonly stale: Uint8Array;
  /** The stale chunks' numbers, stale.length at most (each appears once). */
  private readonly staleList: Uint32Array;
  private staleCount = 0;

  constructor(table: Uint32Array) {
    this.table = table;
    this.tableBytes = new Uint8Array(table.buffer, table.byteOffset, table.byteLength);
    this.pageCount = table.length / WORDS_PER_PAGE;
    const chunks = chunkCount(this.pageCount);
    this.vector = new Uint32Array(2 * chunks);
    this.vectorBytes = new Uint8Array(this.vector.buffer);
    this.stale = new Uint8Array(chunks);
    this.staleList = new Uint32Array(chunks);
    for (let chunk = 0; chunk < chunks; chunk++) this.markStale(chunk);
  }

  /** The table's entry for `page` changed (or will, before the next refresh). */
  touch(page: number): void {
    this.markStale((page / TABLE_CHUNK_PAGES) | 0);
  }

  /** As `touch`, for each page of `pages` (ascending or not). */
  touchAll(pages: ArrayLike<number>): void {
    let last = -1;
    for (let i = 0; i < pages.length; i++) {
      const chunk = (pages[i]! / TABLE_CHUNK_PAGES) | 0;
      if (chunk !== last) this.markStale(chunk);
      last = chunk;
    }
  }

  /** Rehashes the stale chunks; returns how many there were. */
  refresh(): number {
    const count = this.staleCount;
    for (let i = 0; i < count; i++) {
      const chunk = this.staleList[i]!;
      const digest = hashChunk(this.tableBytes, this.pageCount, chunk);
      this.vector[2 * chunk] = Number(digest & 0xffffffffn);
      this.vector[2 * chunk + 1] = Number(digest >> 32n);
      this.stale[chunk] = 0;
    }
    this.staleCount = 0;
    return count;
  }

  /** Chunks that the next refresh will rehash. */
  get staleChunks(): number {
    return this.staleCount;
  }

  /** The digest of the table as it is now: stale chunks rehashed, then the vector hashed. */
  digest(): bigint {
    this.refresh();
    return hashBytes(this.vectorBytes);
  }

  private markStale(chunk: number): void {
    if (this.stale[chunk] === 1) return;
    this.stale[chunk] = 1;
    this.staleList[this.staleCount++] = chunk;
  }
}

function chunkCount(pageCount: number): number {
  return Math.ceil(pageCount / TABLE_CHUNK_PAGES);
}

function hashChunk(tableBytes: Uint8Array, pageCount: number, chunk: number): bigint {
  const bytesPerPage = 4 * WORDS_PER_PAGE;
  const first = chunk * TABLE_CHUNK_PAGES;
  const end = Math.min(first + TABLE_CHUNK_PAGES, pageCount);
  return hashBytes(tableBytes.subarray(first * bytesPerPage, end * bytesPerPage));
}

/** The same digest as TableDigest's, computed from scratch over the whole table. */
export function digestTableFromScratch(table: Uint32Array): bigint {
  const pageCount = table.length / WORDS_PER_PAGE;
  const tableBytes = new Uint8Array(table.buffer, table.byteOffset, table.byteLength);
  const chunks = chunkCount(pageCount);
  const vector = new Uint32Array(2 * chunks);
  for (let chunk = 0; chunk < chunks; chunk++) {
    const digest = hashChunk(tableBytes, pageCount, chunk);
    vector[2 * chunk] = Number(digest & 0xffffffffn);
    vector[2 * chunk + 1] = Number(digest >> 32n);
  }
  return hashBytes(new Uint8Array(vector.buffer));
}

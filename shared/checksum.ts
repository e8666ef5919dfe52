/**
 * xxh64 over disk blocks and file chunks, page-hash tables and whole memory images (guest pages themselves are
 * hashed with XXH3-64 in place, page-hash.ts).
 *
 * xxhash-wasm copies every input into its wasm memory, which grows to the largest input it has seen and never
 * shrinks (DESIGN.md, data-path facts). So nothing here hashes more than HASH_CHUNK_BYTES in one call: a page, a
 * chunk of a table, a chunk of memory.
 */
import xxhash, { type XXHashAPI } from 'xxhash-wasm';

export const HASH_CHUNK_BYTES = 1024 * 1024;

let api: XXHashAPI | undefined;

/** Loads the wasm module once per thread; every other function here needs it done first. */
export async function initChecksums(): Promise<void> {
  if (api) return;
  api = await xxhash();
  // Warm up: the first streaming digest of a large input pays for compiling and growing wasm memory (about 2 ms
  // for a 2 MiB table). Pay it now, not inside a migration's downtime.
  digestChunks(new Uint8Array(2 * HASH_CHUNK_BYTES));
  hashBytes(new Uint8Array(4096));
}

function hasher(): XXHashAPI {
  if (!api) throw new Error('initChecksums() must finish before hashing');
  return api;
}

/** xxh64 of one page (or any input of at most HASH_CHUNK_BYTES). */
export function hashBytes(bytes: Uint8Array): bigint {
  return hasher().h64Raw(bytes);
}

function digestChunks(bytes: Uint8Array): bigint {
  const stream = hasher().create64();
  for (let offset = 0; offset < bytes.byteLength; offset += HASH_CHUNK_BYTES) {
    stream.update(bytes.subarray(offset, offset + HASH_CHUNK_BYTES));
  }
  return stream.digest();
}


/** xxh64 of all of memory, streamed in chunks (`--verify full`, about 0.2 s per GiB here). */
export function digestMemory(memory: Uint8Array): bigint {
  return digestChunks(memory);
}

/** An xxh64 fed in pieces (a file read in chunks); pieces of at most HASH_CHUNK_BYTES. */
export function streamingHash(): { update(bytes: Uint8Array): void; digest(): bigint } {
  const stream = hasher().create64();
  return {
    update: (bytes) => void stream.update(bytes),
    digest: () => stream.digest(),
  };
}

/** Digests travel and print as 16 hex digits. */
export function formatDigest(digest: bigint): string {
  return digest.toString(16).padStart(16, '0');
}

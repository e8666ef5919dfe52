/**
 * Files in checked chunks: the one way a file travels between ferry's processes (a cold migration's VM files, an
 * image imported from the coordinator or sent from one agent to another).
 *
 *   sender                                              receiver
 *   read 1 MiB ── all zeros? ── yes: skip (a hole) ─┐
 *        │                                          │   (nothing arrives for it)
 *        └─ no: {offset, data, xxh64} ──────────────┼─▶ checkChunk: xxh64 of data == xxh64, else refused;
 *                                                   │   positional write (chunks may land in any order)
 *   whole-file xxh64 over every byte read, zeros too│
 *   ─────────────── {bytes, xxh64} at the end ─────────▶ sealFile: truncate to `bytes` (the holes), re-read,
 *                                                       sync, whole-file xxh64 == the sender's, else refused
 *
 * What stays true: a hole is never sent, and still counts in the whole-file digest, so a receiver that lost a chunk
 * or holds one at the wrong offset fails the final check; the digest is over the bytes as they lie on the
 * receiver's disk after the sync, not over what arrived.
 */
import { open, stat, truncate } from 'node:fs/promises';
import { formatDigest, hashBytes, streamingHash } from './checksum.js';
import { MAX_DISK_BYTES } from './constants.js';
import { ErrorCode, FerryError } from './errors.js';

/** 1 MiB: the frame size ws moves at full speed (DESIGN.md, data-path facts), and xxhash-wasm's largest input here. */
export const CHUNK_BYTES = 1024 * 1024;
/** Chunks a sender keeps in flight, so the stream is not a round trip per MiB. */
export const CHUNK_WINDOW = 8;

const ZEROS = Buffer.alloc(CHUNK_BYTES);

export interface FileChunk {
  offset: number;
  data: Uint8Array<ArrayBuffer>;
  xxh64: string;
}

/** What one file's stream amounted to. */
export interface SentFile {
  bytes: number;
  xxh64: string;
  /** Bytes that travelled. */
  bytesSent: number;
  /** Bytes of zeros that did not travel (holes). */
  bytesSkipped: number;
}

/** The chunk requests of one stream that are in flight; shared by the files of one stream. */
export class ChunkWindow {
  private readonly size: number;
  private readonly inFlight: Promise<unknown>[] = [];

  constructor(size = CHUNK_WINDOW) {
    this.size = size;
  }

  /** Adds a request; waits for the oldest once the window is full. */
  async add(sending: Promise<unknown>): Promise<void> {
    sending.catch(() => undefined); // awaited in turn; never an unhandled rejection while another is awaited
    this.inFlight.push(sending);
    if (this.inFlight.length >= this.size) await this.inFlight.shift();
  }

  /** Waits for every request still in flight; throws the first failure. */
  async drain(): Promise<void> {
    await Promise.all(this.inFlight.splice(0));
  }
}

/**
 * Reads `file` in chunks and hands every chunk that is not all zeros to `send` (a copy: the read buffer is reused),
 * through `window`. `onProgress` hears the bytes of the file read so far. Resolves once every chunk was handed over;
 * drain the window to know they arrived.
 */
export async function sendFileChunks(
  file: string,
  send: (chunk: FileChunk) => Promise<unknown>,
  window: ChunkWindow,
  onProgress?: (bytesDone: number) => void,
  signal?: AbortSignal,
): Promise<SentFile> {
  const handle = await open(file, 'r');
  try {
    const { size } = await handle.stat();
    const whole = streamingHash();
    const buffer = Buffer.alloc(CHUNK_BYTES);
    let bytesSent = 0;
    let bytesSkipped = 0;
    for (let offset = 0; offset < size; offset += CHUNK_BYTES) {
      signal?.throwIfAborted();
      const length = Math.min(CHUNK_BYTES, size - offset);
      const { bytesRead } = await handle.read(buffer, 0, length, offset);
      if (bytesRead !== length) throw new FerryError(ErrorCode.IO, `${file} shrank while it was read (${offset + bytesRead} of ${size} bytes)`, 'leave the file alone while it is sent, then retry');
      const chunk = buffer.subarray(0, length);
      whole.update(chunk);
      if (chunk.equals(ZEROS.subarray(0, length))) {
        bytesSkipped += length; // a hole, or zeros: the receiver's file gets its full size at the end
      } else {
        await window.add(send({ offset, data: Uint8Array.from(chunk), xxh64: formatDigest(hashBytes(chunk)) }));
        bytesSent += length;
      }
      onProgress?.(offset + length);
    }
    return { bytes: size, xxh64: formatDigest(whole.digest()), bytesSent, bytesSkipped };
  } finally {
    await handle.close();
  }
}

/**
 * Refuses a chunk larger than CHUNK_BYTES, one that ends past the largest file ferry makes (MAX_DISK_BYTES), or one
 * whose bytes do not match the digest it travelled with.
 */
export function checkChunk(chunk: FileChunk, what: string, hint: string): void {
  if (chunk.data.length > CHUNK_BYTES) throw new FerryError(ErrorCode.PROTOCOL, `a chunk of ${chunk.data.length} bytes is larger than ${CHUNK_BYTES}`, hint);
  if (chunk.offset + chunk.data.length > MAX_DISK_BYTES) throw new FerryError(ErrorCode.BAD_INPUT, `a chunk of ${what} ends past ${MAX_DISK_BYTES} bytes`, 'no file ferry moves is that large');
  if (formatDigest(hashBytes(chunk.data)) !== chunk.xxh64) {
    throw new FerryError(ErrorCode.CHECKSUM_MISMATCH, `a chunk of ${what} at ${chunk.offset} arrived damaged`, hint);
  }
}

/** xxh64 of a whole file as it lies on disk, read in chunks. */
export async function hashFile(file: string, signal?: AbortSignal): Promise<{ bytes: number; xxh64: string }> {
  const handle = await open(file, 'r');
  try {
    const { size } = await handle.stat();
    const whole = streamingHash();
    const buffer = Buffer.alloc(CHUNK_BYTES);
    for (let offset = 0; offset < size; offset += CHUNK_BYTES) {
      signal?.throwIfAborted();
      const length = Math.min(CHUNK_BYTES, size - offset);
      await handle.read(buffer, 0, length, offset);
      whole.update(buffer.subarray(0, length));
    }
    return { bytes: size, xxh64: formatDigest(whole.digest()) };
  } finally {
    await handle.close();
  }
}

/**
 * The receiver's last step for one file: gives it its full size (the holes at the end), syncs it, and checks its
 * whole-file digest against the sender's. Throws CHECKSUM_MISMATCH with `hint` when it differs. Stops (with the
 * signal's reason) when `signal` aborts: re-reading a large disk takes seconds, and nobody waits for it once the
 * sender's connection closed.
 */
export async function sealFile(file: string, expected: { bytes: number; xxh64: string }, what: string, hint: string, signal?: AbortSignal): Promise<void> {
  signal?.throwIfAborted();
  const { size } = await stat(file);
  if (size > expected.bytes) {
    throw new FerryError(ErrorCode.CHECKSUM_MISMATCH, `${what} is ${size} bytes, more than the ${expected.bytes} announced`, hint);
  }
  if (size !== expected.bytes) await truncate(file, expected.bytes);
  const handle = await open(file, 'r+');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
  const { xxh64 } = await hashFile(file, signal);
  if (xxh64 !== expected.xxh64) {
    throw new FerryError(ErrorCode.CHECKSUM_MISMATCH, `${what} does not match the sender's digest (xxh64 ${xxh64}, expected ${expected.xxh64})`, hint);
  }
}

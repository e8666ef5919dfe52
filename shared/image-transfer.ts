/**
 * Sending an image in checked chunks (file-chunks.ts) to an agent that stages it, checks it and registers it: from
 * the coordinator over /control (`ferry image import`), and from one agent to another over /peer (`image.send`). One
 * sender for both, so both are checked the same way.
 *
 *   image.begin {transferId, image, xxh64?}  the receiver stages the image (IMAGE_EXISTS if it has another of that name)
 *   image.chunk {transferId, offset, data, xxh64}  ...  for every chunk that is not all zeros
 *   image.finish {transferId, xxh64}    the receiver sizes, syncs and re-hashes the disk, then registers it
 *
 * Closing the connection before `image.finish` has answered drops the staged image on the receiver.
 */
import { randomUUID } from 'node:crypto';
import { PEER_REPLY_TIMEOUT_MS } from './constants.js';
import { ErrorCode, FerryError } from './errors.js';
import { ChunkWindow, sendFileChunks } from './file-chunks.js';
import type { ImageManifest, ImageReceiveOps, ReplyOf, RequestOf } from './protocol.js';
import type { RequestOptions } from './rpc.js';

/** The receiving end: an RpcConnection to an agent whose ops include the image receive ops (/control or /peer). */
export interface ImageSink {
  request<K extends keyof ImageReceiveOps & string>(op: K, body: RequestOf<ImageReceiveOps, K>, options?: RequestOptions): Promise<ReplyOf<ImageReceiveOps, K>>;
}

export interface ImageTransferProgress {
  bytesDone: number;
  bytesTotal: number;
}

export interface SentImage {
  image: ImageManifest;
  bytesSent: number;
  bytesSkipped: number;
  durationMs: number;
}

/**
 * Sends `file` as image `image` through `sink`. With `expectedXxh64` (an agent sending an image it holds), a file
 * that no longer matches it is not registered anywhere: the transfer stops before `image.finish`, and the caller
 * closes the connection, which drops what was staged.
 */
export async function sendImage(
  sink: ImageSink,
  file: string,
  image: Omit<ImageManifest, 'xxh64'>,
  options: { expectedXxh64?: string; onProgress?: (progress: ImageTransferProgress) => void; signal?: AbortSignal } = {},
): Promise<SentImage> {
  const startedMs = performance.now();
  const transferId = randomUUID();
  const timeout = { timeoutMs: PEER_REPLY_TIMEOUT_MS, ...(options.signal ? { signal: options.signal } : {}) };
  await sink.request('image.begin', { transferId, image, ...(options.expectedXxh64 !== undefined ? { xxh64: options.expectedXxh64 } : {}) }, timeout);
  const window = new ChunkWindow();
  let lastProgressMs = 0;
  const sent = await sendFileChunks(file, (chunk) => sink.request('image.chunk', { transferId, ...chunk }, timeout), window, (bytesDone) => {
    if (options.onProgress && performance.now() - lastProgressMs > 100) {
      lastProgressMs = performance.now();
      options.onProgress({ bytesDone, bytesTotal: image.bytes });
    }
  }, options.signal);
  await window.drain();
  if (sent.bytes !== image.bytes) {
    throw new FerryError(ErrorCode.IO, `${file} is ${sent.bytes} bytes now, ${image.bytes} when the transfer began`, 'leave the file alone while it is sent, then retry');
  }
  if (options.expectedXxh64 !== undefined && sent.xxh64 !== options.expectedXxh64) {
    throw new FerryError(
      ErrorCode.CHECKSUM_MISMATCH,
      `image ${image.name}'s disk no longer matches its manifest (xxh64 ${sent.xxh64}, expected ${options.expectedXxh64}); not sent`,
      `remove this copy (\`ferry image rm ${image.name} --on HOST\`) and send one that passes \`ferry image list --verify\``,
    );
  }
  options.onProgress?.({ bytesDone: sent.bytes, bytesTotal: image.bytes });
  const finished = await sink.request('image.finish', { transferId, xxh64: sent.xxh64 }, { ...timeout, timeoutMs: 5 * PEER_REPLY_TIMEOUT_MS });
  return { image: finished.image, bytesSent: sent.bytesSent, bytesSkipped: sent.bytesSkipped, durationMs: performance.now() - startedMs };
}

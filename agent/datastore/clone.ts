/**
 * Copies of disk files inside one agent: an image cloned into a new VM's disk, a VM's disk captured as an image.
 *
 * A clone is a reflink where the file system has them (btrfs, XFS with reflink=1, bcachefs, OCFS2): `copyFile` with
 * COPYFILE_FICLONE_FORCE shares the image's blocks with the new disk, copy on write, in milliseconds whatever the size.
 * Elsewhere (ext4, tmpfs, across file systems) the kernel refuses with one of `REFLINK_UNSUPPORTED`, and the clone is
 * a sparse copy: read in 1 MiB chunks, chunks of zeros skipped (they stay holes), the size set by truncate, synced,
 * and the copy's digest compared with the image's manifest on the way (the read is paid anyway). Any other error
 * (no space, no permission) is a failure, not a reason to fall back.
 */
import { constants } from 'node:fs';
import { copyFile, open, rm, truncate } from 'node:fs/promises';
import { formatDigest, streamingHash } from '../../shared/checksum.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { CHUNK_BYTES } from '../../shared/file-chunks.js';
import type { CloneMethod } from '../../shared/protocol.js';
import { syncPath } from './durable.js';

/**
 * What the kernel answers FICLONE when the file system cannot share blocks between these two files: EOPNOTSUPP
 * (ENOTSUP on Linux; ext4, tmpfs), EXDEV (two file systems), EINVAL (a file system that knows FICLONE but not for
 * these files, e.g. XFS without reflink), ENOSYS/ENOTTY (no such ioctl at all).
 */
export const REFLINK_UNSUPPORTED = new Set(['ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'EINVAL', 'ENOSYS', 'ENOTTY']);

export function reflinkUnsupported(error: unknown): boolean {
  return REFLINK_UNSUPPORTED.has(String((error as NodeJS.ErrnoException | undefined)?.code));
}

const ZEROS = Buffer.alloc(CHUNK_BYTES);

/** Copies `source` to `target` (made or truncated), writing only chunks that are not all zeros; synced. */
export async function sparseCopy(source: string, target: string, signal?: AbortSignal): Promise<{ bytes: number; bytesWritten: number; xxh64: string }> {
  const input = await open(source, 'r');
  const output = await open(target, 'w', 0o600);
  try {
    const { size } = await input.stat();
    const whole = streamingHash();
    const buffer = Buffer.alloc(CHUNK_BYTES);
    let bytesWritten = 0;
    for (let offset = 0; offset < size; offset += CHUNK_BYTES) {
      signal?.throwIfAborted();
      const length = Math.min(CHUNK_BYTES, size - offset);
      const { bytesRead } = await input.read(buffer, 0, length, offset);
      if (bytesRead !== length) throw new FerryError(ErrorCode.IO, `${source} shrank while it was copied`, 'retry once nothing else writes it');
      const chunk = buffer.subarray(0, length);
      whole.update(chunk);
      if (!chunk.equals(ZEROS.subarray(0, length))) {
        await output.write(chunk, 0, length, offset);
        bytesWritten += length;
      }
    }
    await output.truncate(size); // the holes at the end
    await output.sync();
    return { bytes: size, bytesWritten, xxh64: formatDigest(whole.digest()) };
  } finally {
    await output.close();
    await input.close();
  }
}

export interface Cloned {
  method: CloneMethod;
  durationMs: number;
  /** Why the reflink was not used, when it was not (the kernel's error code). */
  reflinkRefused?: string;
}

/**
 * Clones image disk `source` (whose manifest says `expected`) into `target`, a reflink if the file system can, else a
 * sparse copy checked against `expected.xxh64`; then grows it to `sizeBytes` when that is larger (zeros, a hole).
 * `copy` is `fs.copyFile`, passed in so that tests can play a file system with reflinks.
 */
export async function cloneDisk(
  source: string,
  target: string,
  expected: { name: string; bytes: number; xxh64: string },
  sizeBytes: number,
  copy: (source: string, target: string, mode: number) => Promise<void> = copyFile,
): Promise<Cloned> {
  const startedMs = performance.now();
  let cloned: Omit<Cloned, 'durationMs'>;
  try {
    await copy(source, target, constants.COPYFILE_FICLONE_FORCE);
    await syncPath(target);
    cloned = { method: 'reflink' };
  } catch (error) {
    if (!reflinkUnsupported(error)) throw error;
    await rm(target, { force: true });
    const copied = await sparseCopy(source, target);
    if (copied.bytes !== expected.bytes || copied.xxh64 !== expected.xxh64) {
      await rm(target, { force: true });
      throw new FerryError(
        ErrorCode.CHECKSUM_MISMATCH,
        `image ${expected.name}'s disk no longer matches its manifest (${copied.bytes} bytes, xxh64 ${copied.xxh64}; expected ${expected.bytes} bytes, ${expected.xxh64})`,
        `remove it here (\`ferry image rm ${expected.name} --on HOST\`) and send it again from a host whose copy passes \`ferry image list --verify\``,
      );
    }
    cloned = { method: 'sparse-copy', reflinkRefused: String((error as NodeJS.ErrnoException).code) };
  }
  if (sizeBytes > expected.bytes) {
    await truncate(target, sizeBytes);
    await syncPath(target);
  }
  return { ...cloned, durationMs: performance.now() - startedMs };
}

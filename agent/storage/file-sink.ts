/**
 * A BlockSink that writes into an image file on this host: the other end of `ferry storage move`, and the
 * destination's end of `--copy-storage` once blocks have crossed the network. The file starts as a hole of the
 * disk's full size, so blocks never written (zero blocks are never sent) stay holes.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { hashBytes } from '../../shared/checksum.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { BLOCK_SIZE, type BlockSink } from './disk-copy.js';

export class FileSink implements BlockSink {
  readonly file: string;
  private readonly handle: FileHandle;
  private readonly hashes: BigUint64Array;
  /** The writes, one after another: the order they were given in is the order they land in. */
  private chain: Promise<void> = Promise.resolve();
  private failure: unknown;
  bytesWritten = 0;

  /** A test's full disk (FERRY_FAULTS=full-disk:N): writes past this many bytes fail with ENOSPC. */
  private readonly failAfterBytes: number | undefined;

  private constructor(file: string, handle: FileHandle, blockCount: number, failAfterBytes: number | undefined) {
    this.file = file;
    this.handle = handle;
    this.failAfterBytes = failAfterBytes;
    this.hashes = new BigUint64Array(blockCount);
  }

  /** Creates (or empties) `file` as a hole of `sizeBytes`. */
  static async create(file: string, sizeBytes: number, failAfterBytes?: number): Promise<FileSink> {
    const handle = await open(file, 'w');
    try {
      await handle.truncate(sizeBytes);
    } catch (error) {
      await handle.close();
      throw error;
    }
    return new FileSink(file, handle, Math.ceil(sizeBytes / BLOCK_SIZE), failAfterBytes);
  }

  write(first: number, data: Uint8Array): Promise<void> {
    const blocks = data.byteLength / BLOCK_SIZE;
    if (!Number.isInteger(blocks) || first < 0 || first + blocks > this.hashes.length) {
      return Promise.reject(new FerryError(ErrorCode.BAD_INPUT, `blocks ${first}+${blocks} are outside a disk of ${this.hashes.length} blocks`));
    }
    const copy = Buffer.from(data);
    for (let i = 0; i < blocks; i++) this.hashes[first + i] = hashBytes(copy.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE));
    const written = this.chain.then(async () => {
      if (this.failure !== undefined) throw this.failure;
      if (this.failAfterBytes !== undefined && this.bytesWritten + copy.length > this.failAfterBytes) {
        throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      }
      await this.handle.write(copy, 0, copy.length, first * BLOCK_SIZE);
      this.bytesWritten += copy.length;
    });
    this.chain = written.catch((error: unknown) => {
      this.failure ??= error;
    });
    return written;
  }

  async flush(): Promise<void> {
    await this.chain;
    if (this.failure !== undefined) {
      throw new FerryError(ErrorCode.IO, `writing ${this.file} failed: ${String((this.failure as Error).message ?? this.failure)}`, 'check the space and permissions where the disk is going');
    }
  }

  /** Everything written so far, on stable storage. */
  async sync(): Promise<void> {
    await this.flush();
    await this.handle.sync();
  }

  async tableDigest(): Promise<bigint> {
    await this.chain;
    return hashBytes(new Uint8Array(this.hashes.buffer));
  }

  async close(): Promise<void> {
    await this.chain;
    await this.handle.close();
  }
}

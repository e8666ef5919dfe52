/**
 * Copying a running VM's disk image to another place while the guest writes it: the engine of `ferry storage move`
 * (one host) and of `ferry migrate --copy-storage` (to another host). Where the blocks go is a `BlockSink`.
 *
 *   mirror (default)   the mirror hook goes on first: from then every guest write also goes to the sink before the
 *                      guest sees it complete (QEMU's write-blocking mode). Then one bulk pass reads the image and
 *                      sends every block that is not zero. The copy converges by construction; "ready" is the end
 *                      of the bulk pass, once the sink has written everything.
 *   iterate            no hook. The dirty-block bitmap is cleared, the bulk pass sends everything, then rounds send
 *                      the blocks written meanwhile, like memory's pre-copy and with its stop rules and caps
 *                      (shared/stop-rules.ts); the blocks still dirty go while the vCPU is paused.
 *
 * Why the mirror needs no second pass: the sink applies what it is given in the order it is given (a FIFO), the
 * bulk pass reads each chunk with a synchronous read and hands its blocks to the sink in the same turn of the event
 * loop, and the block backend calls the hook only after the guest's write has landed in the image. So for any block,
 * whatever the bulk pass read (old data, or even a half-written block) reaches the sink before the data of every
 * guest write that completes after the read, and the last thing the sink writes is the guest's last write. A guest
 * write that completed before the read is in what the read saw. (An asynchronous read would break this: a guest
 * write could complete, and be mirrored, between the read and its callback.)
 *
 * In iterate mode the same ordering as memory's holds: the backend marks a block after the write lands; a round
 * clears the marks before it reads. A block written after its read is marked and goes again.
 *
 * Zero blocks never travel: the sink's image starts as a hole of the full size, so holes stay holes. Each block
 * sent is hashed (xxh64); the sink hashes what it writes; the tables are compared at the commit (per-block digests),
 * and `verify: full` also hashes both whole images.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { hashBytes } from '../../shared/checksum.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { STOP_RULES } from '../../shared/constants.js';
import { decideStop } from '../../shared/stop-rules.js';
import type { StopReason } from '../../shared/protocol.js';

export const BLOCK_SIZE = 4096;
/**
 * Blocks read per synchronous read, and the longest run the sink is given in one write: 1 MiB. (QEMU's mirror
 * tracks 64 KiB granules; ferry tracks 4 KiB blocks and reads and writes in 1 MiB runs: measured on a filled 1 GiB
 * disk, 64 KiB writes moved 300-450 MB/s, 1 MiB writes up to 990 MB/s.)
 */
export const CHUNK_BLOCKS = 256;
/** Chunks read per turn of the event loop: the pass yields between them so the agent goes on serving. */
const CHUNKS_PER_TURN = 2;
/**
 * Bytes the copy lets the sink hold unwritten before it waits. QEMU's mirror allows 16 MiB in flight; a mirrored guest
 * write queues behind whatever is in flight (the sink is a FIFO), so ferry keeps 4 MiB: less in flight is less added
 * to each guest write while the copy runs.
 */
export const MAX_IN_FLIGHT_BYTES = 4 * 1024 * 1024;
/** Iterate mode: the most rounds `catchUp` makes just before the pause. */
const CATCH_UP_ROUNDS = 5;

/** What the copy needs of the disk's block backend (agent/vm/disk/block-backend.ts). */
export interface CopiedDisk {
  readonly blockCount: number;
  readonly file: string;
  readonly dirty: { harvest(): Uint32Array; clearAll(): number; count(): number };
  setMirror(mirror: ((block: number, data: Uint8Array) => Promise<void>) | undefined, onMirrorError?: (error: unknown) => void): void;
}

/** Where copied blocks go, in order. */
export interface BlockSink {
  /**
   * Writes `data` (whole blocks) at block `first`; resolves once it is written. Calls are applied in call order, and
   * `data` is copied before the call returns (the caller reuses its buffer).
   */
  write(first: number, data: Uint8Array): Promise<void>;
  /** Resolves once everything written so far is written. */
  flush(): Promise<void>;
}

export type StorageMode = 'mirror' | 'iterate';

export interface DiskCopyOptions {
  mode: StorageMode;
  /** Iterate mode: stop when the blocks left would take at most this long to send. */
  maxDowntimeMs: number;
  maxRounds: number;
  /** A cap on the copy's own sends (bulk and rounds), bytes per second; 0 or absent: none. */
  maxBandwidthBytesPerSec?: number;
  onProgress?: (progress: DiskCopyProgress) => void;
  signal?: AbortSignal;
}

export interface DiskCopyProgress {
  phase: 'bulk' | 'round' | 'ready' | 'paused';
  round: number;
  blocksDone: number;
  blocksTotal: number;
  bytesSent: number;
}

export interface DiskCopyReport {
  mode: StorageMode;
  bytes: number;
  /** Bytes of non-zero blocks sent by the copy (bulk pass and rounds), not counting mirrored guest writes. */
  bytesSent: number;
  zeroBlocksSkipped: number;
  /** Mirror mode: guest writes that went to both copies. */
  mirroredWrites: number;
  /** Iterate mode: the rounds after the bulk pass, and the blocks sent while paused. */
  rounds: number;
  pausedBlocks: number;
  stopReason?: StopReason;
  readyAfterMs: number;
  /** Bytes sent by the copy per second, to ready. */
  throughputBytesPerSec: number;
  /** Bytes of image covered per second, to ready (zero blocks are read and skipped, not sent). */
  imageBytesPerSec: number;
}

/** A block of zeros, to compare with (a memcmp). */
const ZERO_BLOCK = Buffer.alloc(BLOCK_SIZE);

export class DiskCopy {
  private readonly disk: CopiedDisk;
  private readonly sink: BlockSink;
  private readonly options: DiskCopyOptions;
  private readonly started = performance.now();
  private readonly sourceHashes: BigUint64Array;
  private readonly chunk = Buffer.alloc(CHUNK_BLOCKS * BLOCK_SIZE);
  private fd: number | undefined;
  private mirrorFailure: unknown;
  private bytesSent = 0;
  private zeroBlocksSkipped = 0;
  private mirroredWrites = 0;
  private rounds = 0;
  private pausedBlocks = 0;
  private stopReason: StopReason | undefined;
  private readyAfterMs = 0;
  private readyBytes = 0;
  private inFlightBytes = 0;
  private wakeWhenDrained: (() => void) | undefined;

  constructor(disk: CopiedDisk, sink: BlockSink, options: DiskCopyOptions) {
    this.disk = disk;
    this.sink = sink;
    this.options = options;
    this.sourceHashes = new BigUint64Array(disk.blockCount);
  }

  /** The bulk pass and, in iterate mode, the rounds: resolves when the copy is ready for the cut-over. */
  async toReady(): Promise<void> {
    this.fd = openSync(this.disk.file, 'r');
    const { blockCount } = this.disk;
    if (this.options.mode === 'mirror') {
      this.disk.setMirror(async (block, data) => {
        this.mirroredWrites += 1;
        this.sourceHashes[block] = hashBytes(data);
        await this.sink.write(block, data);
      }, (error) => (this.mirrorFailure = error));
    } else {
      this.disk.dirty.clearAll();
    }
    await this.sendBlocks(rangeOf(blockCount), 'bulk');
    if (this.options.mode === 'iterate') await this.iterate();
    await this.sink.flush();
    this.throwIfMirrorFailed();
    this.readyAfterMs = performance.now() - this.started;
    this.readyBytes = this.bytesSent;
    this.report('ready', this.rounds, blockCount, blockCount);
  }

  /**
   * Iterate mode, just before the pause: one more round of the blocks written since ready (a live migration's memory
   * pre-copy runs in between), so the pause carries only what the guest writes during that round. Mirror: nothing.
   */
  async catchUp(): Promise<void> {
    if (this.options.mode !== 'iterate') return;
    // Rounds until few blocks are dirty (memory's threshold), at most CATCH_UP_ROUNDS: each carries what the guest
    // wrote during the one before, which shrinks as the rounds do.
    for (let round = 0; round < CATCH_UP_ROUNDS; round++) {
      const blocks = this.disk.dirty.harvest();
      if (blocks.length === 0) return;
      this.rounds += 1;
      await this.sendBlocks(blocks, 'round');
      await this.sink.flush();
      if (this.disk.dirty.count() < STOP_RULES.fewDirtyPages) return;
    }
  }

  /**
   * The vCPU is paused: send what is still dirty (iterate mode), wait for the sink, and stop mirroring (the guest
   * writes nothing while paused). After this the two images are the same, if the sink's digest agrees.
   */
  async finishPaused(): Promise<void> {
    if (this.options.mode === 'iterate') {
      const last = this.disk.dirty.harvest();
      this.pausedBlocks = last.length;
      await this.sendBlocks(last, 'paused');
    }
    await this.sink.flush();
    this.throwIfMirrorFailed();
    this.disk.setMirror(undefined);
  }

  /** Per-block verification: the digest of the table of what was sent, to compare with the sink's. */
  sourceTableDigest(): bigint {
    return hashBytes(new Uint8Array(this.sourceHashes.buffer));
  }

  /** Stops the copy: no more mirroring, the image closed. Safe to call at any point, more than once. */
  close(): void {
    this.disk.setMirror(undefined);
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  result(): DiskCopyReport {
    return {
      mode: this.options.mode,
      bytes: this.disk.blockCount * BLOCK_SIZE,
      bytesSent: this.bytesSent,
      zeroBlocksSkipped: this.zeroBlocksSkipped,
      mirroredWrites: this.mirroredWrites,
      rounds: this.rounds,
      pausedBlocks: this.pausedBlocks,
      ...(this.stopReason ? { stopReason: this.stopReason } : {}),
      readyAfterMs: this.readyAfterMs,
      throughputBytesPerSec: this.readyAfterMs > 0 ? (this.readyBytes / this.readyAfterMs) * 1000 : 0,
      imageBytesPerSec: this.readyAfterMs > 0 ? ((this.disk.blockCount * BLOCK_SIZE) / this.readyAfterMs) * 1000 : 0,
    };
  }

  private throwIfMirrorFailed(): void {
    if (this.mirrorFailure !== undefined) {
      throw new FerryError(ErrorCode.IO, `mirroring the guest's writes failed: ${String(this.mirrorFailure)}`, 'the VM keeps its disk where it was; check the destination\'s storage and retry');
    }
  }

  /** Dirty-block rounds until a stop rule says the rest fits in the pause (memory's rules, blocks for pages). */
  private async iterate(): Promise<void> {
    const bulkMs = Math.max(performance.now() - this.started, 1);
    const bandwidth = (this.bytesSent / bulkMs) * 1000 || 1;
    let sent = this.disk.blockCount;
    for (let round = 1; ; round++) {
      const dirtyAfter = this.disk.dirty.count();
      this.stopReason = decideStop({
        round, pagesSent: sent, dirtyPagesAfter: dirtyAfter, bytesSentTotal: this.bytesSent,
        memoryBytes: this.disk.blockCount * BLOCK_SIZE, bandwidthBytesPerSec: bandwidth,
        maxDowntimeMs: this.options.maxDowntimeMs, maxRounds: this.options.maxRounds,
      });
      if (this.stopReason) return;
      const blocks = this.disk.dirty.harvest();
      this.rounds = round;
      sent = blocks.length;
      await this.sendBlocks(blocks, 'round');
    }
  }

  /** Reads the blocks (ascending), sends the non-zero ones, a chunk of adjacent blocks per read. */
  private async sendBlocks(blocks: ArrayLike<number>, phase: DiskCopyProgress['phase']): Promise<void> {
    let index = 0;
    let chunks = 0;
    while (index < blocks.length) {
      this.options.signal?.throwIfAborted();
      // A run of adjacent blocks, at most CHUNK_BLOCKS long.
      const first = blocks[index]!;
      let count = 1;
      while (count < CHUNK_BLOCKS && index + count < blocks.length && blocks[index + count] === first + count) count += 1;
      this.readAndSend(first, count);
      index += count;
      chunks += 1;
      if (chunks % CHUNKS_PER_TURN === 0 || this.inFlightBytes > MAX_IN_FLIGHT_BYTES) {
        this.report(phase, this.rounds, index, blocks.length);
        await new Promise((resolve) => setImmediate(resolve));
        const cap = this.options.maxBandwidthBytesPerSec ?? 0;
        const aheadMs = cap > 0 ? (this.bytesSent / cap) * 1000 - (performance.now() - this.started) : 0;
        if (aheadMs > 1) await new Promise((resolve) => setTimeout(resolve, aheadMs));
        while (this.inFlightBytes > MAX_IN_FLIGHT_BYTES) await new Promise<void>((resolve) => (this.wakeWhenDrained = resolve));
        this.wakeWhenDrained = undefined;
        this.throwIfMirrorFailed();
      }
    }
    this.report(phase, this.rounds, blocks.length, blocks.length);
  }

  /** One synchronous read and its sends, in one turn (the mirror's ordering argument above depends on it). */
  private readAndSend(first: number, count: number): void {
    const bytes = count * BLOCK_SIZE;
    const read = readSync(this.fd!, this.chunk, 0, bytes, first * BLOCK_SIZE);
    if (read < bytes) this.chunk.fill(0, read, bytes); // past the end of a short file: a hole
    let runStart = -1;
    const sendRun = (end: number): void => {
      if (runStart < 0) return;
      // The sink copies the data before it returns (BlockSink.write's contract): the chunk buffer is reused.
      const bytes = (end - runStart) * BLOCK_SIZE;
      this.inFlightBytes += bytes;
      void this.sink.write(first + runStart, this.chunk.subarray(runStart * BLOCK_SIZE, end * BLOCK_SIZE))
        .catch(() => undefined) // a failure surfaces at flush
        .finally(() => {
          this.inFlightBytes -= bytes;
          if (this.inFlightBytes <= MAX_IN_FLIGHT_BYTES) this.wakeWhenDrained?.();
        });
      this.bytesSent += bytes;
      runStart = -1;
    };
    for (let i = 0; i < count; i++) {
      const block = this.chunk.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE);
      if (block.equals(ZERO_BLOCK)) {
        sendRun(i);
        this.sourceHashes[first + i] = 0n;
        this.zeroBlocksSkipped += 1;
        continue;
      }
      this.sourceHashes[first + i] = hashBytes(block);
      if (runStart < 0) runStart = i;
    }
    sendRun(count);
  }

  private report(phase: DiskCopyProgress['phase'], round: number, done: number, total: number): void {
    this.options.onProgress?.({ phase, round, blocksDone: done, blocksTotal: total, bytesSent: this.bytesSent });
  }
}

function rangeOf(count: number): Uint32Array {
  const blocks = new Uint32Array(count);
  for (let i = 0; i < count; i++) blocks[i] = i;
  return blocks;
}

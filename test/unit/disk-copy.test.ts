/**
 * The storage copy engine (agent/storage/disk-copy.ts) against real image files, with a stand-in for the block
 * backend that writes the guest's blocks to the image the way the real one does (write, then mark, then mirror) while
 * the copy runs. Both modes must end with two identical images; iterate mode under writes it cannot outrun must end by
 * a cap and say which.
 */
import { mkdtemp, open, readFile, rm, stat, type FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DirtyLog } from '../../agent/vm/dirty-log.js';
import { BLOCK_SIZE, DiskCopy, type CopiedDisk, type StorageMode } from '../../agent/storage/disk-copy.js';
import { FileSink } from '../../agent/storage/file-sink.js';
import { initChecksums } from '../../shared/checksum.js';

let dir: string;
const handles: FileHandle[] = [];
beforeAll(async () => {
  await initChecksums();
});
afterEach(async () => {
  for (const handle of handles.splice(0)) await handle.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

class StandInDisk implements CopiedDisk {
  readonly blockCount: number;
  readonly file: string;
  readonly dirty: DirtyLog;
  private readonly handle: FileHandle;
  private mirror: ((block: number, data: Uint8Array) => Promise<void>) | undefined;
  private onMirrorError: ((error: unknown) => void) | undefined;
  writes = 0;

  constructor(file: string, handle: FileHandle, blockCount: number) {
    this.file = file;
    this.handle = handle;
    this.blockCount = blockCount;
    this.dirty = DirtyLog.allocate(blockCount);
  }

  setMirror(mirror: ((block: number, data: Uint8Array) => Promise<void>) | undefined, onMirrorError?: (error: unknown) => void): void {
    this.mirror = mirror;
    this.onMirrorError = onMirrorError;
  }

  /** One guest write: into the image, then marked, then mirrored; the guest waits for all three. */
  async write(block: number): Promise<void> {
    this.writes += 1;
    const data = Buffer.alloc(BLOCK_SIZE, (this.writes % 250) + 1);
    data.writeUInt32LE(this.writes, 0);
    await this.handle.write(data, 0, BLOCK_SIZE, block * BLOCK_SIZE);
    this.dirty.mark(block);
    if (this.mirror) {
      await this.mirror(block, data).catch((error: unknown) => {
        this.mirror = undefined;
        this.onMirrorError?.(error);
      });
    }
  }
}

/** A guest writing blocks of the first `span` blocks, one after another, until stopped. */
function guest(disk: StandInDisk, span: number): { stop: () => Promise<void> } {
  let running = true;
  let seed = 12345;
  const loop = (async () => {
    while (running) {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; // imul: a float product would lose the low bits
      await disk.write(seed % span);
    }
  })();
  return { stop: async () => { running = false; await loop; } };
}

async function imageWithData(blockCount: number): Promise<StandInDisk> {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-disk-copy-'));
  const file = path.join(dir, 'disk0.img');
  const handle = await open(file, 'w+');
  handles.push(handle);
  await handle.truncate(blockCount * BLOCK_SIZE);
  const disk = new StandInDisk(file, handle, blockCount);
  for (let block = 0; block < blockCount; block += 3) await disk.write(block); // every third block written, the rest holes
  return disk;
}

async function copyUnderWrites(mode: StorageMode, blockCount: number, span: number, limits: { maxRounds?: number; maxBandwidthBytesPerSec?: number } = {}): Promise<{ disk: StandInDisk; copy: DiskCopy; target: string; sink: FileSink }> {
  const disk = await imageWithData(blockCount);
  const target = path.join(dir, 'moved.img');
  const sink = await FileSink.create(target, blockCount * BLOCK_SIZE);
  const copy = new DiskCopy(disk, sink, { mode, maxDowntimeMs: 300, maxRounds: limits.maxRounds ?? 30, maxBandwidthBytesPerSec: limits.maxBandwidthBytesPerSec ?? 0 });
  const writer = guest(disk, span);
  try {
    await copy.toReady();
  } finally {
    await writer.stop(); // the pause: the guest writes nothing more
  }
  await copy.finishPaused();
  copy.close();
  await sink.close();
  return { disk, copy, target, sink };
}

describe('storage copy', () => {
  for (const mode of ['mirror', 'iterate'] as const) {
    it(`${mode}: copies an image the guest writes throughout into an identical one, zero blocks as holes, and the per-block digests agree`, async () => {
      const { disk, copy, target, sink } = await copyUnderWrites(mode, 4096, 4096);
      expect(disk.writes).toBeGreaterThan(1366); // the guest wrote during the copy
      expect(Buffer.compare(await readFile(target), await readFile(disk.file))).toBe(0);
      expect(await sink.tableDigest()).toBe(copy.sourceTableDigest());
      const result = copy.result();
      expect(result.zeroBlocksSkipped).toBeGreaterThan(0);
      expect(result.bytesSent).toBeLessThan(4096 * BLOCK_SIZE);
      if (mode === 'mirror') expect(result.mirroredWrites).toBeGreaterThan(0);
      else expect(result.mirroredWrites).toBe(0);
      // Holes stay holes: the copy takes no more space than the blocks written.
      expect((await stat(target)).blocks * 512).toBeLessThan(4096 * BLOCK_SIZE);
    });
  }

  it('iterate: a guest rewriting a small hot set faster than rounds can chase it ends by a stop rule, says which, and still copies exactly', async () => {
    const { disk, copy, target } = await copyUnderWrites('iterate', 2048, 64);
    expect(copy.result().stopReason).toBeDefined();
    expect(Buffer.compare(await readFile(target), await readFile(disk.file))).toBe(0);
  });

  it('iterate: a guest that writes faster than the capped copy sends is chased until the round cap, which the result names; mirror converges under the same cap', async () => {
    const capped = { maxRounds: 2, maxBandwidthBytesPerSec: 1024 * 1024 };
    const iterated = await copyUnderWrites('iterate', 256, 256, capped);
    expect(iterated.copy.result(), `${iterated.disk.writes} writes`).toMatchObject({ stopReason: 'max-rounds' });
    expect(iterated.copy.result().pausedBlocks).toBeGreaterThan(50); // the pause carries what the rounds could not catch
    expect(Buffer.compare(await readFile(iterated.target), await readFile(iterated.disk.file))).toBe(0);
    await rm(dir, { recursive: true, force: true });
    const mirrored = await copyUnderWrites('mirror', 256, 256, capped);
    expect(mirrored.copy.result()).toMatchObject({ pausedBlocks: 0 });
    expect(mirrored.copy.result().stopReason).toBeUndefined();
    expect(Buffer.compare(await readFile(mirrored.target), await readFile(mirrored.disk.file))).toBe(0);
  });

  it('mirror: a mirror that fails stops the copy with an error, and the source image is untouched by it', async () => {
    const disk = await imageWithData(512);
    const before = await readFile(disk.file);
    const failing = {
      write: async () => { throw new Error('disk full'); },
      flush: async () => { throw new Error('disk full'); },
      tableDigest: async () => 0n,
    };
    const copy = new DiskCopy(disk, failing, { mode: 'mirror', maxDowntimeMs: 300, maxRounds: 30 });
    await expect(copy.toReady()).rejects.toThrow(/disk full/);
    copy.close();
    expect(Buffer.compare(await readFile(disk.file), before)).toBe(0);
  });
});

/**
 * The storage copy engine (agent/storage/disk-copy.ts) against real image files, with a stand-in for the block
 * backend that writes the guest's blocks to the image the way the real one does (write, then mark, then mirror) while
 * the copy runs. Both modes must end with two identical images; iterate mode under writes it cannot outrun must end by
 * a cap and say which.
 */
import { writeSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, stat, type FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DirtyLog } from '../../agent/vm/dirty-log.js';
import { BLOCK_SIZE, DiskCopy, type BlockSink, type CopiedDisk, type StorageMode } from '../../agent/storage/disk-copy.js';
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
  private readonly fd: number;
  private mirror: ((block: number, data: Uint8Array) => Promise<void>) | undefined;
  private onMirrorError: ((error: unknown) => void) | undefined;
  writes = 0;

  constructor(file: string, handle: FileHandle, blockCount: number) {
    this.file = file;
    this.handle = handle;
    this.fd = handle.fd;
    this.blockCount = blockCount;
    this.dirty = DirtyLog.allocate(blockCount);
  }

  setMirror(mirror: ((block: number, data: Uint8Array) => Promise<void>) | undefined, onMirrorError?: (error: unknown) => void): void {
    this.mirror = mirror;
    this.onMirrorError = onMirrorError;
  }

  /** One guest write done at once (no mirror): into the image, then marked. */
  writeSync(block: number): void {
    this.writes += 1;
    const data = Buffer.alloc(BLOCK_SIZE, (this.writes % 250) + 1);
    data.writeUInt32LE(this.writes, 0);
    writeSync(this.fd, data, 0, BLOCK_SIZE, block * BLOCK_SIZE);
    this.dirty.mark(block);
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

/**
 * Copies the image while a guest writes it two ways at once: on its own, as fast as it goes (the real interleaving
 * the mirror's ordering must survive), and once in step with every write the copy hands the sink (so that the guest
 * has written during the copy however fast or slow this machine is).
 */
async function copyUnderWrites(mode: StorageMode, blockCount: number, span: number): Promise<{ disk: StandInDisk; copy: DiskCopy; target: string; sink: FileSink }> {
  const disk = await imageWithData(blockCount);
  const target = path.join(dir, 'moved.img');
  const sink = await FileSink.create(target, blockCount * BLOCK_SIZE);
  let paused = false;
  let inStep = false;
  let seed = 777;
  const stepping: BlockSink = {
    write: (first, data) => {
      const written = sink.write(first, data);
      if (paused || inStep) return written; // a mirrored write of the in-step guest's own comes back here
      inStep = true;
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      const guestWrite = disk.write(seed % span).finally(() => (inStep = false));
      return Promise.all([written, guestWrite]).then(() => undefined);
    },
    flush: () => sink.flush(),
  };
  const copy = new DiskCopy(disk, stepping, { mode, maxDowntimeMs: 300, maxRounds: 30 });
  const writer = guest(disk, span);
  try {
    await copy.toReady();
  } finally {
    paused = true;
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

  it('iterate: a guest that dirties blocks faster than the copy sends them is chased until the round cap, which the result names, and the pause carries the rest', async () => {
    const disk = await imageWithData(256);
    const target = path.join(dir, 'moved.img');
    const inner = await FileSink.create(target, 256 * BLOCK_SIZE);
    // The guest writes two blocks for every block the copy sends, in step with it (not in time with it): it outruns
    // any copy, however fast or slow the machine.
    let seed = 4242;
    let paused = false;
    const outrun: BlockSink = {
      write: (first, data) => {
        for (let i = 0; !paused && i < (2 * data.byteLength) / BLOCK_SIZE; i++) {
          seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
          disk.writeSync(seed % 256);
        }
        return inner.write(first, data);
      },
      flush: () => inner.flush(),
    };
    const copy = new DiskCopy(disk, outrun, { mode: 'iterate', maxDowntimeMs: 0.001, maxRounds: 3 });
    await copy.toReady();
    paused = true; // the vCPU pauses: the guest writes nothing more
    await copy.finishPaused();
    copy.close();
    await inner.close();
    expect(copy.result()).toMatchObject({ stopReason: 'max-rounds', rounds: 2 });
    expect(copy.result().pausedBlocks).toBeGreaterThan(50);
    expect(Buffer.compare(await readFile(target), await readFile(disk.file))).toBe(0);
  });

  it('mirror: a mirror that fails stops the copy with an error, and the source image is untouched by it', async () => {
    const disk = await imageWithData(512);
    const before = await readFile(disk.file);
    const failing = {
      write: async () => { throw new Error('disk full'); },
      flush: async () => { throw new Error('disk full'); },
    };
    const copy = new DiskCopy(disk, failing, { mode: 'mirror', maxDowntimeMs: 300, maxRounds: 30 });
    await expect(copy.toReady()).rejects.toThrow(/disk full/);
    copy.close();
    expect(Buffer.compare(await readFile(disk.file), before)).toBe(0);
  });
});

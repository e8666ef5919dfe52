/**
 * The block layer's host side for one VM disk, on the agent's main thread: takes the guest's writes from the
 * mailbox (mailbox.ts draws it and its ordering) and puts them into the disk image.
 *
 * Per write, in this order:
 *   1. the block goes into the image at block x 4096 (a positional write on an fd kept open; no fsync per write:
 *      the page cache holds it, as a guest without FUA/flush gets);
 *   2. its bit is set in the dirty-block bitmap (`dirty`, a DirtyLog over blocks), AFTER the write has landed: a
 *      storage copy that clears a bit and then reads the block reads that write or a later one, never an older one
 *      (the same argument as dirty-log.ts for pages);
 *   3. the mirror hook, when set, is given the block and awaited (write-blocking mirroring: the guest does not see
 *      the write complete until the mirror has it too). A mirror that rejects is dropped: logged, reported once
 *      through onMirrorError, and the guest's write still completes;
 *   4. DONE_SEQ is published and the guest woken.
 *
 * Latency (`latency()`) is measured by the guest, from its request to its seeing the write done, and recorded in
 * the mailbox; this side reads the samples.
 */
import { open, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../../../shared/log.js';
import { DirtyLog } from '../dirty-log.js';
import { BlockMailbox, LATENCY_SAMPLES, MAILBOX_BLOCK_BYTES, MailboxSlot, WriteStatus } from './mailbox.js';

export const BLOCK_SIZE = 4096;
if (BLOCK_SIZE !== MAILBOX_BLOCK_BYTES) throw new Error('the mailbox carries one block');

/** The serve loop's longest sleep: the guest's notify wakes it at once, and stop() notifies too. */
const SERVE_WAIT_MS = 1000;

type Mirror = (block: number, data: Uint8Array) => Promise<void>;

export class BlockBackend {
  readonly blockCount: number;
  /** One bit per block, set after the guest's write is in the image. */
  readonly dirty: DirtyLog;
  private readonly mailbox: BlockMailbox;
  private readonly log: Logger;
  private handle: FileHandle;
  private path: string;
  private mirror: Mirror | undefined;
  private onMirrorError: ((error: unknown) => void) | undefined;
  private stopped = false;
  private serving: Promise<void> | undefined;
  /** The write being served, if any: retarget and stop wait for it. */
  private inFlight: Promise<void> | undefined;
  /** LAT_COUNT at the last reset. */
  private latencyFrom: number;

  private constructor(mailbox: BlockMailbox, handle: FileHandle, file: string, blockCount: number, log: Logger) {
    this.mailbox = mailbox;
    this.handle = handle;
    this.path = file;
    this.blockCount = blockCount;
    this.dirty = DirtyLog.allocate(blockCount);
    this.log = log;
    this.latencyFrom = Atomics.load(mailbox.header, MailboxSlot.LAT_COUNT);
  }

  /**
   * Opens `file` (which must exist: the datastore made it, sparse) and serves the mailbox; `blockCount` blocks of
   * 4 KiB. Only while the vCPU is paused or not yet started (mailbox.ts).
   */
  static async start(mailbox: BlockMailbox, file: string, blockCount: number, log: Logger): Promise<BlockBackend> {
    const absolute = path.resolve(file);
    const handle = await open(absolute, 'r+');
    const backend = new BlockBackend(mailbox, handle, absolute, blockCount, log);
    const { header } = mailbox;
    // A request the guest gave up on (no backend served it) is not served late: the guest did not count it.
    Atomics.store(header, MailboxSlot.DONE_SEQ, Atomics.load(header, MailboxSlot.REQ_SEQ));
    Atomics.store(header, MailboxSlot.BLOCK_COUNT, blockCount);
    backend.serving = backend.serve();
    return backend;
  }

  /** The image the guest writes now (absolute path). */
  get file(): string {
    return this.path;
  }

  /**
   * From now on every guest write also goes to `mirror` before the guest sees it complete (write-blocking);
   * undefined stops. A mirror that rejects fails nothing in the guest: the backend logs it, calls onMirrorError once,
   * and goes on without the mirror.
   */
  setMirror(mirror: Mirror | undefined, onMirrorError?: (error: unknown) => void): void {
    this.mirror = mirror;
    this.onMirrorError = mirror ? onMirrorError : undefined;
  }

  /** Points the guest's writes at another image file (a storage move's cut-over); only while the vCPU is paused. */
  async retarget(file: string): Promise<void> {
    if (this.stopped) throw new Error('the block backend is stopped');
    await this.inFlight;
    const absolute = path.resolve(file);
    const handle = await open(absolute, 'r+');
    const old = this.handle;
    this.handle = handle;
    this.path = absolute;
    await old.close();
    this.log.info('disk retargeted', { file: absolute });
  }

  /**
   * Guest write latency (request to done, as the guest sees it: it records each in the mailbox) since the last
   * reset; p50 and p99 over the most recent LATENCY_SAMPLES writes of those, max over all of them.
   */
  latency(reset = false): { count: number; p50Ms: number; p99Ms: number; maxMs: number } {
    const { header, latencies } = this.mailbox;
    const end = Atomics.load(header, MailboxSlot.LAT_COUNT);
    const count = (end - this.latencyFrom) >>> 0;
    const kept = Math.min(count, LATENCY_SAMPLES);
    const samples = new Float64Array(kept);
    for (let i = 0; i < kept; i++) samples[i] = latencies[((end - kept + i) >>> 0) % LATENCY_SAMPLES]!;
    samples.sort();
    const at = (q: number): number => (kept === 0 ? 0 : samples[Math.min(kept - 1, Math.ceil(q * kept) - 1)]!);
    const maxMs = count === 0 ? 0 : Atomics.load(header, MailboxSlot.LAT_MAX_US) / 1000;
    if (reset) {
      this.latencyFrom = end;
      Atomics.store(header, MailboxSlot.LAT_MAX_US, 0);
    }
    return { count, p50Ms: at(0.5), p99Ms: at(0.99), maxMs };
  }

  /** Waits for any write in progress, then stops serving and closes the file. */
  async stop(): Promise<void> {
    if (this.stopped) {
      await this.serving;
      return;
    }
    this.stopped = true;
    const { header } = this.mailbox;
    Atomics.notify(header, MailboxSlot.REQ_SEQ); // wakes the serve loop's waitAsync
    await this.serving;
    Atomics.store(header, MailboxSlot.BLOCK_COUNT, 0);
    await this.handle.close();
  }

  private async serve(): Promise<void> {
    const { header } = this.mailbox;
    while (!this.stopped) {
      const request = Atomics.load(header, MailboxSlot.REQ_SEQ);
      if (request !== Atomics.load(header, MailboxSlot.DONE_SEQ)) {
        this.inFlight = this.serveOne(request);
        await this.inFlight;
        this.inFlight = undefined;
        continue;
      }
      const waiting = Atomics.waitAsync(header, MailboxSlot.REQ_SEQ, request, SERVE_WAIT_MS);
      if (waiting.async) await waiting.value;
    }
    // A request made as stop() began is still served: the guest is waiting for it.
    const request = Atomics.load(header, MailboxSlot.REQ_SEQ);
    if (request !== Atomics.load(header, MailboxSlot.DONE_SEQ)) await this.serveOne(request);
  }

  private async serveOne(request: number): Promise<void> {
    const { header } = this.mailbox;
    const block = Atomics.load(header, MailboxSlot.BLOCK) >>> 0; // after REQ_SEQ was loaded: BLOCK and DATA are whole
    let status: number = WriteStatus.OK;
    if (block >= this.blockCount) {
      this.log.error('guest disk write beyond the disk', { file: this.path, block, blockCount: this.blockCount });
      status = WriteStatus.FAILED;
    } else {
      // A copy: the guest reuses DATA for its next write as soon as it sees this one done, and a mirror may keep it.
      const data = new Uint8Array(BLOCK_SIZE);
      data.set(this.mailbox.data);
      try {
        await this.handle.write(data, 0, BLOCK_SIZE, block * BLOCK_SIZE);
        this.dirty.mark(block); // after the write has landed
      } catch (error) {
        this.log.error('guest disk write failed', { file: this.path, block, error: String(error) });
        status = WriteStatus.FAILED;
      }
      const mirror = this.mirror;
      if (status === WriteStatus.OK && mirror) {
        try {
          await mirror(block, data);
        } catch (error) {
          if (this.mirror === mirror) {
            const report = this.onMirrorError;
            this.mirror = undefined;
            this.onMirrorError = undefined;
            this.log.warn('disk mirror failed: going on without it', { file: this.path, block, error: String(error) });
            try {
              report?.(error);
            } catch (reportError) {
              this.log.warn('the disk mirror\'s error handler threw', { error: String(reportError) });
            }
          }
        }
      }
    }
    Atomics.store(header, MailboxSlot.STATUS, status);
    Atomics.store(header, MailboxSlot.DONE_SEQ, request); // after STATUS: publishes the outcome
    Atomics.notify(header, MailboxSlot.DONE_SEQ);
  }
}

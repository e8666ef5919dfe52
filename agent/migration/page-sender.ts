/**
 * Sends pages of a running guest to the destination: batches of up to PAGES_PER_FRAME pages, each a header
 * message (page numbers and XXH3-64s, page-frame.ts) followed by one data message.
 *
 * Passes over each byte, on this side:
 * - every page is hashed where it lies in guest memory (page-hash.ts: no copy into the hasher);
 * - a page whose hash is the zero page's is compared with zeros, and if it is all zeros travels as a flag with no
 *   bytes (zero-page.ts): only zero pages pay that compare;
 * - a run of consecutive pages (all of round 1, and runs in later rounds) is then sent as a view of guest memory:
 *   the socket reads the bytes straight from guest memory;
 * - scattered pages are gathered into a staging buffer: one more pass, the copy.
 *
 * Why sending a view is correct (DESIGN.md, "Sending straight from guest memory"): every page here was harvested
 * from the dirty log, i.e. its bit was cleared BEFORE we hash and send it. If the vCPU writes it after the clear,
 * the bytes the socket sends may differ from the hash we computed, but that write also set the page's bit again,
 * so the page is sent again in a later round or in stop-and-copy, with the vCPU paused and nothing moving. The
 * destination treats a mismatch during pre-copy as "will be resent" and only the final digests decide; with the
 * vCPU paused (PAGE_FLAG_PAUSED) a mismatch is damage.
 *
 * With `--compress xbzrle` (xbzrle-encoder.ts) a frame that has cached pages is packed from copies instead: the delta
 * pages, and the whole pages beside them, all in a staging buffer.
 *
 * Buffers given to `send` are referenced until its callback fires: staging buffers return to the pool only then,
 * and at most SEND_WINDOW_BYTES of page data are outstanding (backpressure).
 */
import { PAGE_SIZE, PAGES_PER_FRAME, PEER_REPLY_TIMEOUT_MS, SEND_WINDOW_BYTES } from '../../shared/constants.js';
import { ErrorCode, FerryError, abortReason } from '../../shared/errors.js';
import type { FrameSocket } from '../../shared/frame-socket.js';
import { PAGE_FLAG_POSTCOPY, ZERO_PAGE_BIT, encodePageHeader, pageHeaderBytes } from '../../shared/page-frame.js';
import type { XbzrleEncoder } from './xbzrle-encoder.js';
import { hasZeroPageHash, isZeroPage } from '../../shared/zero-page.js';
import type { VirtualMachine } from '../vm/vm.js';
import { sleepUnlessAborted } from '../../shared/sleep.js';

export interface SendProgress {
  pagesSent: number;
  /** Page bytes handed to the socket: zero pages have none. */
  bytesSent: number;
  /** Pages sent as a zero-page flag (counted in pagesSent too). */
  zeroPages: number;
}

/** Frames the sender hashes between two turns of the event loop at most, when no send window makes it wait. */
const FRAMES_PER_TURN = 32;

export interface PageSenderOptions {
  /** Bytes per second, 0 for no limit. */
  maxBandwidthBytesPerSec: number;
  signal: AbortSignal;
  now: () => number;
  /** Called at most every `progressIntervalMs` with the round's progress so far. */
  onProgress?: (progress: SendProgress) => void;
  progressIntervalMs?: number;
  /**
   * How long the socket may take no page data, while the sender waits on it, before the send fails. Default
   * PEER_REPLY_TIMEOUT_MS; tests shorten it.
   */
  stallTimeoutMs?: number;
  /** `--compress xbzrle`: pages sent again go as deltas against what was sent before, where that is smaller. */
  xbzrle?: XbzrleEncoder;
  /** The page-hash table to keep (`hashes`): another sender's, when two send the same migration's pages (post-copy). */
  hashes?: Uint32Array;
  /**
   * Frames between two turns of the event loop at most (default FRAMES_PER_TURN). A post-copy's push gives a turn
   * after every frame, so that a page the guest waits for is asked for and sent without waiting behind it.
   */
  framesPerTurn?: number;
}

/** What a frame carries besides its header: its data message (none when empty) and the staging buffer holding it. */
interface FrameData {
  zeroPages: number;
  data: Buffer | undefined;
  staging: Buffer | undefined;
  deltaLengths: number[];
}

const NO_DELTAS: number[] = [];

export class PageSender {
  private readonly socket: FrameSocket;
  private readonly vm: VirtualMachine;
  private readonly options: PageSenderOptions;
  /** The source's page-hash table: the XXH3-64 of what it last sent of each page, two words a page (page-hash.ts). */
  readonly hashes: Uint32Array;
  private readonly stagingPool: Buffer[] = [];
  private outstandingBytes = 0;
  /** Page-frame bytes handed to the socket in all, headers and data: the destination is told it (peer.sync, peer.verify). */
  streamBytes = 0;
  private drained: (() => void) | undefined;
  private sendError: FerryError | undefined;
  /**
   * The pages of the `send` under way and how many of them have been sent: the heat map reads it with `hashes`
   * (vm/heat-map.ts, SentPages), to tell a harvested page not yet sent from one the destination has.
   */
  pending: { pages: Uint32Array; next: number } | undefined;

  constructor(socket: FrameSocket, vm: VirtualMachine, options: PageSenderOptions) {
    this.socket = socket;
    this.vm = vm;
    this.options = options;
    this.hashes = options.hashes ?? new Uint32Array(2 * vm.pageCount);
  }

  /**
   * Sends `pages` (ascending page numbers whose dirty bits were already cleared) and resolves once every byte has
   * been handed to the socket; with `flush: false`, once the last frame is queued within the send window (a caller that
   * sends batch after batch flushes once, at the end).
   */
  async send(pages: Uint32Array, round: number, flags: number, { flush = true }: { flush?: boolean } = {}): Promise<SendProgress> {
    const framesPerTurn = this.options.framesPerTurn ?? FRAMES_PER_TURN;
    const { now, maxBandwidthBytesPerSec, signal } = this.options;
    const interval = this.options.progressIntervalMs ?? 100;
    const startedMs = now();
    let lastProgressMs = startedMs;
    const progress: SendProgress = { pagesSent: 0, bytesSent: 0, zeroPages: 0 };
    const frameHashes = new Uint32Array(2 * PAGES_PER_FRAME);
    const entries = new Uint32Array(PAGES_PER_FRAME);
    let framesSinceTurn = 0;
    const pending = { pages, next: 0 };
    this.pending = pending;

    for (let first = 0; first < pages.length; first += PAGES_PER_FRAME) {
      if (signal.aborted) throw abortReason(signal, 'migration cancelled while sending pages');
      if (this.sendError) throw this.sendError;
      const batch = pages.subarray(first, first + PAGES_PER_FRAME);
      const count = batch.length;

      const { zeroPages, data, staging, deltaLengths } = this.pack(batch, round, flags, frameHashes, entries);
      for (let i = 0; i < count; i++) {
        const page = batch[i]!;
        this.hashes[2 * page] = frameHashes[2 * i]!;
        this.hashes[2 * page + 1] = frameHashes[2 * i + 1]!;
      }

      // A fresh header each frame: the socket holds it until written. It is small; the page data is not copied.
      const header = encodePageHeader(Buffer.allocUnsafe(pageHeaderBytes(count, deltaLengths.length)), round, flags, entries, frameHashes, count, deltaLengths);
      this.socket.send(header);
      this.streamBytes += header.length + (data?.length ?? 0);
      if (data) {
        const sent = data;
        this.outstandingBytes += sent.length;
        this.socket.send(sent, (error) => {
          this.outstandingBytes -= sent.length;
          if (staging) this.stagingPool.push(staging);
          if (error && !this.sendError) {
            this.sendError = new FerryError(ErrorCode.CONNECTION_LOST, `connection to the destination lost: ${error.message}`, 'check that the destination agent is still running');
          }
          this.drained?.();
        });
      }

      pending.next = first + count;
      progress.pagesSent += count;
      progress.bytesSent += data?.length ?? 0;
      progress.zeroPages += zeroPages;
      framesSinceTurn += 1;
      if (this.outstandingBytes > SEND_WINDOW_BYTES) {
        await this.waitForDrain();
        framesSinceTurn = 0;
      } else if (this.vm.net || framesSinceTurn >= framesPerTurn) {
        // A VM that serves an address needs this thread too (its device's backend sends the replies,
        // vm/net/backend.ts): give the event loop a turn between frames, or a 32 MiB window of sends holds every
        // reply back for tens of ms. Frames of zero pages fill no window: they get a turn every FRAMES_PER_TURN.
        await new Promise((resolve) => setImmediate(resolve));
        framesSinceTurn = 0;
      }
      if (maxBandwidthBytesPerSec > 0) {
        const aheadMs = (progress.bytesSent / maxBandwidthBytesPerSec) * 1000 - (now() - startedMs);
        if (aheadMs > 1) await sleepUnlessAborted(aheadMs, signal);
      }
      if (this.options.onProgress && now() - lastProgressMs >= interval) {
        lastProgressMs = now();
        this.options.onProgress({ ...progress });
      }
    }
    if (this.pending === pending) this.pending = undefined;
    if (flush) await this.flush();
    return progress;
  }

  /** Hashes a batch's pages, marks its zero pages, and lays out its data message (see the top of this file). */
  private pack(batch: Uint32Array, round: number, flags: number, frameHashes: Uint32Array, entries: Uint32Array): FrameData {
    const count = batch.length;
    const { hasher, memory } = this.vm;
    // Never after a post-copy switch (as QEMU): the destination's guest writes its copies then (page-frame.ts).
    if (this.options.xbzrle && (flags & PAGE_FLAG_POSTCOPY) === 0) {
      const staging = this.stagingPool.pop() ?? Buffer.allocUnsafe(PAGES_PER_FRAME * PAGE_SIZE);
      const packed = this.options.xbzrle.pack(batch, round, frameHashes, entries, staging);
      if (packed && packed.dataBytes > 0) return { zeroPages: packed.zeroPages, data: staging.subarray(0, packed.dataBytes), staging, deltaLengths: packed.deltaLengths };
      this.stagingPool.push(staging);
      if (packed) return { zeroPages: packed.zeroPages, data: undefined, staging: undefined, deltaLengths: packed.deltaLengths };
    }
    // Hash each page where it lies in guest memory (its dirty bit is already clear); a page with the zero page's
    // hash that is all zeros goes as a flag. Then send the other pages' run as a view, or copy scattered ones into
    // a staging buffer. Either way the bytes that leave may be newer than the hash if the vCPU wrote meanwhile;
    // that write set the bit again, so the page goes again (see above). The same holds for a zero-page flag.
    let zeroPages = 0;
    let firstData = -1;
    let lastData = -1;
    for (let i = 0; i < count; i++) {
      const page = batch[i]!;
      hasher.hashInto(page, frameHashes, i);
      if (hasZeroPageHash(frameHashes, i) && isZeroPage(memory, page)) {
        entries[i] = page | ZERO_PAGE_BIT;
        zeroPages += 1;
      } else {
        entries[i] = page;
        if (firstData < 0) firstData = page;
        lastData = page;
      }
    }
    const dataPages = count - zeroPages;
    let data: Buffer | undefined;
    let staging: Buffer | undefined;
    if (dataPages === 0) {
      data = undefined;
    } else if (lastData - firstData === dataPages - 1) {
      data = this.vm.pageView(firstData, dataPages);
    } else {
      staging = this.stagingPool.pop() ?? Buffer.allocUnsafe(PAGES_PER_FRAME * PAGE_SIZE);
      let at = 0;
      for (let i = 0; i < count; i++) {
        if (entries[i]! & ZERO_PAGE_BIT) continue;
        const from = batch[i]! * PAGE_SIZE;
        staging.set(memory.subarray(from, from + PAGE_SIZE), at);
        at += PAGE_SIZE;
      }
      data = staging.subarray(0, at);
    }
    return { zeroPages, data, staging, deltaLengths: NO_DELTAS };
  }

  /** Resolves when every page handed to the socket has been written. */
  async flush(): Promise<void> {
    while (this.outstandingBytes > 0 && !this.sendError && !this.options.signal.aborted) await this.waitForDrain(0);
    if (this.sendError) throw this.sendError;
    if (this.options.signal.aborted) throw abortReason(this.options.signal, 'migration cancelled while sending pages');
  }

  private waitForDrain(threshold = SEND_WINDOW_BYTES / 2): Promise<void> {
    const { signal } = this.options;
    const stallTimeoutMs = this.options.stallTimeoutMs ?? PEER_REPLY_TIMEOUT_MS;
    const done = (): boolean => this.outstandingBytes <= threshold || this.sendError !== undefined || signal.aborted;
    if (done()) return Promise.resolve();
    return new Promise((resolve) => {
      // A destination that stops reading (hung, or stopped) must not hold the guest here forever: if the socket
      // takes nothing for stallTimeoutMs, the send fails and the migration rolls back.
      let stalled = setTimeout(onStall, stallTimeoutMs);
      const sender = this;
      function onStall(): void {
        sender.sendError ??= new FerryError(ErrorCode.TIMEOUT, `the destination took no page data for ${stallTimeoutMs / 1000} s`, 'check that the destination agent is alive and not overloaded');
        finish();
      }
      function finish(): void {
        if (!done()) {
          clearTimeout(stalled);
          stalled = setTimeout(onStall, stallTimeoutMs);
          return;
        }
        clearTimeout(stalled);
        sender.drained = undefined;
        signal.removeEventListener('abort', finish);
        resolve();
      }
      this.drained = finish;
      signal.addEventListener('abort', finish, { once: true });
    });
  }
}


/**
 * The block device's mailbox: how the guest (the vCPU worker) hands one disk write at a time to the block layer on
 * the agent's main thread (block-backend.ts), which writes it into the VM's disk image. The worker never touches the
 * file itself. One mailbox per VM disk, in its own SharedArrayBuffer (not in guest memory: it is the host's side of
 * the device, and a guest write in flight never outlives a pause, so nothing of it needs to migrate).
 *
 *   mailbox        SharedArrayBuffer, MAILBOX_BYTES
 *   Int32 words (Atomics), bytes 0..63
 *   +---------+----------+-------+--------+-------------+-----------+------------+----------+
 *   | REQ_SEQ | DONE_SEQ | BLOCK | STATUS | BLOCK_COUNT | LAT_COUNT | LAT_MAX_US | reserved |
 *   +---------+----------+-------+--------+-------------+-----------+------------+----------+
 *    0         1          2       3        4             5           6            7..15
 *   DATA: the block's 4096 bytes, from byte 64
 *   LATENCY ring: LATENCY_SAMPLES Float64 (ms), from byte 4160; sample i is at index i mod LATENCY_SAMPLES
 *
 * One write outstanding at a time. REQ_SEQ and DONE_SEQ are free-running int32 counters; a request is outstanding
 * while they differ.
 *
 * The one ordering that matters:
 *   guest:    write BLOCK and DATA, THEN store REQ_SEQ + 1 (Atomics.store, notify); wait until DONE_SEQ = REQ_SEQ;
 *             only then read STATUS and update its registers y and m (layout.ts)
 *   backend:  load REQ_SEQ, THEN read BLOCK and DATA; write the image; mark the block dirty; the mirror hook; set
 *             STATUS, THEN store DONE_SEQ = REQ_SEQ (Atomics.store, notify)
 * So the backend never reads a half-filled block, the guest never refills DATA while the backend reads it, and
 * registers y and m never count a write that is not in the image (and in the mirror, when there is one).
 *
 * Other rules:
 * - BLOCK_COUNT is written by the backend only: the disk's size in blocks while a backend serves the mailbox, 0
 *   when none does. The guest issues no disk write while it is 0 (its registers stay).
 * - The guest checks its command (pause, stop) only between whole disk writes, as between page writes: a write
 *   submitted before a pause is done before the vCPU says PAUSED. So a backend is started, stopped or retargeted
 *   only while the vCPU is paused or stopped, and then no request is outstanding.
 * - STATUS 0: the block is in the image; 1: it is not (an I/O error). The guest then leaves its registers as they
 *   were, and the same write is made again at its next turn.
 * - LAT_COUNT, LAT_MAX_US and the LATENCY ring are written by the guest: the time from its REQ_SEQ store until it
 *   saw DONE_SEQ, per write (as the guest sees it). The backend only reads them, and resets LAT_MAX_US to 0.
 */

export const MAILBOX_BLOCK_BYTES = 4096;

export const MailboxSlot = {
  /** Guest -> backend: requests made (int32, wraps). */
  REQ_SEQ: 0,
  /** Backend -> guest: requests done (int32, wraps). */
  DONE_SEQ: 1,
  /** Guest -> backend: the block the request writes. */
  BLOCK: 2,
  /** Backend -> guest: 0 the write is in the image, 1 it failed. */
  STATUS: 3,
  /** Backend -> guest: blocks of the disk while a backend serves the mailbox, else 0. */
  BLOCK_COUNT: 4,
  /** Guest: latency samples recorded (int32, wraps). */
  LAT_COUNT: 5,
  /** Guest: the longest latency since the backend last reset it, in microseconds (the backend stores 0). */
  LAT_MAX_US: 6,
} as const;

const HEADER_BYTES = 64;
const DATA_OFFSET = HEADER_BYTES;
const LATENCY_OFFSET = DATA_OFFSET + MAILBOX_BLOCK_BYTES;
/** Latency samples kept: percentiles are over the most recent ones. */
export const LATENCY_SAMPLES = 4096;
export const MAILBOX_BYTES = LATENCY_OFFSET + LATENCY_SAMPLES * 8;

export const WriteStatus = { OK: 0, FAILED: 1 } as const;

/** The mailbox's views; both threads make one over the same buffer. */
export class BlockMailbox {
  readonly buffer: SharedArrayBuffer;
  readonly header: Int32Array;
  /** The block being written, as bytes and as words. */
  readonly data: Uint8Array;
  readonly words: Uint32Array;
  readonly latencies: Float64Array;

  constructor(buffer: SharedArrayBuffer) {
    if (buffer.byteLength < MAILBOX_BYTES) throw new RangeError('block mailbox buffer too small');
    this.buffer = buffer;
    this.header = new Int32Array(buffer, 0, HEADER_BYTES / 4);
    this.data = new Uint8Array(buffer, DATA_OFFSET, MAILBOX_BLOCK_BYTES);
    this.words = new Uint32Array(buffer, DATA_OFFSET, MAILBOX_BLOCK_BYTES / 4);
    this.latencies = new Float64Array(buffer, LATENCY_OFFSET, LATENCY_SAMPLES);
  }

  static allocate(): BlockMailbox {
    return new BlockMailbox(new SharedArrayBuffer(MAILBOX_BYTES));
  }

  /** The disk's size in blocks while a backend serves it, else 0. */
  get blockCount(): number {
    return Atomics.load(this.header, MailboxSlot.BLOCK_COUNT) >>> 0;
  }

  /**
   * Guest: sends the block in DATA to `block` and waits until the backend says it is done (a synchronous write).
   * Returns whether it is in the image; false also when `giveUp` says so while waiting (the vCPU is told to stop and
   * nobody serves the mailbox any more).
   */
  submit(block: number, giveUp: () => boolean, waitSliceMs = 1000): boolean {
    const { header } = this;
    Atomics.store(header, MailboxSlot.BLOCK, block | 0);
    const started = performance.now();
    const request = (Atomics.load(header, MailboxSlot.REQ_SEQ) + 1) | 0;
    Atomics.store(header, MailboxSlot.REQ_SEQ, request); // after BLOCK and DATA: publishes them
    Atomics.notify(header, MailboxSlot.REQ_SEQ);
    for (;;) {
      const done = Atomics.load(header, MailboxSlot.DONE_SEQ);
      if (done === request) break;
      if (Atomics.wait(header, MailboxSlot.DONE_SEQ, done, waitSliceMs) === 'timed-out' && giveUp()) return false;
    }
    this.recordLatency(performance.now() - started);
    return Atomics.load(header, MailboxSlot.STATUS) === WriteStatus.OK;
  }

  private recordLatency(ms: number): void {
    const { header } = this;
    const count = Atomics.load(header, MailboxSlot.LAT_COUNT);
    this.latencies[(count >>> 0) % LATENCY_SAMPLES] = ms;
    Atomics.store(header, MailboxSlot.LAT_COUNT, (count + 1) | 0);
    const us = Math.min(0x7fffffff, Math.round(ms * 1000));
    for (;;) {
      const max = Atomics.load(header, MailboxSlot.LAT_MAX_US);
      if (us <= max || Atomics.compareExchange(header, MailboxSlot.LAT_MAX_US, max, us) === max) break;
    }
  }
}

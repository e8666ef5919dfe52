/**
 * The shared memory of one VM, as the agent's main thread and the vCPU worker both see it.
 *
 *   guest memory   SharedArrayBuffer, memoryBytes = pageCount x 4096
 *   +---------+---------+---------+-----+-----------------+
 *   | page 0  | page 1  | page 2  | ... | page pageCount-1 |
 *   +---------+---------+---------+-----+-----------------+
 *
 *   dirty log      SharedArrayBuffer, one bit per page, Int32 words (Atomics work on Int32Array)
 *   +----------------------+----------------------+-----+
 *   | word 0: pages 0..31  | word 1: pages 32..63 | ... |   bit (p & 31) of word (p >>> 5) is page p
 *   +----------------------+----------------------+-----+
 *
 *   control block  SharedArrayBuffer, CONTROL_BYTES
 *   Int32 slots (Atomics)
 *   +-----+-------+-------+------+------+----------+----------+-------------+-------+------+------+----------+
 *   | CMD | STATE | REG_X | N_LO | N_HI | THROTTLE | DOORBELL | NET_PRESENT | REG_Y | M_LO | M_HI | POSTCOPY |
 *   +-----+-------+-------+------+------+----------+----------+-------------+-------+------+------+----------+
 *    0     1       2       3      4      5          6          7             8       9      10     11
 *   Float64 slots (plain loads and stores), from byte 48
 *   +--------------+-------------+---------+
 *   | HEARTBEAT_MS | BLACKOUT_MS | BUSY_MS |
 *   +--------------+-------------+---------+
 *    byte 48        byte 56       byte 64
 *
 * What must stay true:
 * - Only the main thread writes CMD; only the vCPU writes STATE. Each side `Atomics.notify`s the slot it wrote.
 * - The vCPU reads CMD only between two whole page writes, so when STATE says PAUSED no page is half written.
 * - REG_Y, REG_M_LO and REG_M_HI are the disk writes' registers (DESIGN.md, "Disk writes"), kept like x and n: they
 *   describe the last disk write the block layer reported done (agent/vm/disk/mailbox.ts), never one in flight.
 * - REG_X, REG_N_LO and REG_N_HI describe the last finished write. The vCPU writes them while running; while the
 *   vCPU is PAUSED (or not yet started) only the main thread writes them, and the vCPU reloads them on resume.
 *   That is how a migration hands the destination's vCPU the source's registers.
 * - The vCPU sleeps on DOORBELL (never on CMD while running): every CMD store is followed by a DOORBELL bump.
 * - HEARTBEAT_MS is the guest clock: the wall-clock time (ms since the epoch) of the vCPU's last loop turn. It is
 *   read by humans and reports, never used for synchronisation, so plain Float64 stores suffice.
 * - BUSY_MS only grows, and only the vCPU writes it: the milliseconds it has spent outside its own Atomics.wait calls
 *   (running its workload, serving its device; a disk write waiting on the block layer counts as busy) since it
 *   started. The agent turns two readings into a busy fraction
 *   (agent/vm-stats/sampler.ts); a torn read is impossible for an aligned Float64 on the platforms Node runs on, and a
 *   stale one only makes one sample a little late.
 */

export const ControlSlot = {
  /** Main thread -> vCPU: what the vCPU should be doing (a VcpuCommand). */
  CMD: 0,
  /** vCPU -> main thread: what the vCPU is doing (a VcpuState). */
  STATE: 1,
  /** Register x: the workload's uint32 state (the xorshift32 value for pattern and hotset), stored as int32. */
  REG_X: 2,
  /** Register n: writes done, low 32 bits (as int32). */
  REG_N_LO: 3,
  /** Register n: writes done, high bits. */
  REG_N_HI: 4,
  /**
   * Main thread -> vCPU: percent of its rate the vCPU holds back (auto-converge), 0 to 99. Read every loop turn;
   * not part of the guest's state, so it never travels with the registers.
   */
  THROTTLE_PCT: 5,
  /**
   * Main thread -> vCPU: bumped (Atomics.add, then notify) whenever the vCPU has something new to look at: a
   * command, or a request put into its network device's RX ring. An idle vCPU sleeps on this slot with the value it
   * read before it last looked, so a bump between its look and its sleep wakes it at once (no lost wake-up).
   */
  DOORBELL: 6,
  /**
   * Main thread -> vCPU: 1 when the VM has a network device (an address) and the vCPU serves its rings
   * (agent/vm/net/device.ts), 0 otherwise. Written only while the vCPU is paused or not yet started.
   */
  NET_PRESENT: 7,
  /** Register y: the disk writes' xorshift32 state, stored as int32 (0 only before the first write: see vm.ts). */
  REG_Y: 8,
  /** Register m: disk writes done, low 32 bits (as int32). */
  REG_M_LO: 9,
  /** Register m: disk writes done, high bits. */
  REG_M_HI: 10,
  /**
   * Main thread -> vCPU: 1 while some guest pages are not in this host's memory (a post-copy's destination): the
   * vCPU checks the present map (present-map.ts) before each page write, and waits for a page that is missing.
   * Set before the vCPU first runs after the switch, cleared once every page is present.
   */
  POSTCOPY: 11,
} as const;

export const INT32_SLOTS = 12;

export const ControlFloatSlot = {
  /** Guest clock: epoch milliseconds of the vCPU's last loop turn. */
  HEARTBEAT_MS: 6,
  /** Gap in the heartbeat across the last resume, in milliseconds. */
  BLACKOUT_MS: 7,
  /** vCPU -> main thread: milliseconds the vCPU has spent busy (not in Atomics.wait) since it started. */
  BUSY_MS: 8,
} as const;

/**
 * Float64 slots start at byte 48 (INT32_SLOTS x 4 = 48), so Float64 index 6 is byte 48; three of
 * them end at byte 72. Nothing else assumes the size: the views are made over the whole buffer (controlViews).
 */
export const CONTROL_BYTES = 72;

export const VcpuCommand = { RUN: 0, PAUSE: 1, STOP: 2 } as const;
export const VcpuState = { STARTING: 0, RUNNING: 1, PAUSED: 2, STOPPED: 3 } as const;

export interface ControlViews {
  ints: Int32Array;
  floats: Float64Array;
}

export function controlViews(buffer: SharedArrayBuffer): ControlViews {
  return { ints: new Int32Array(buffer, 0, INT32_SLOTS), floats: new Float64Array(buffer) };
}

export function dirtyLogWords(pageCount: number): number {
  return Math.ceil(pageCount / 32);
}

/** Register n is split over two int32 slots; it fits in 53 bits, far more writes than any run makes. */
export function readRegisterN(ints: Int32Array): number {
  return (Atomics.load(ints, ControlSlot.REG_N_HI) >>> 0) * 2 ** 32 + (Atomics.load(ints, ControlSlot.REG_N_LO) >>> 0);
}

export function writeRegisterN(ints: Int32Array, n: number): void {
  Atomics.store(ints, ControlSlot.REG_N_LO, n >>> 0);
  Atomics.store(ints, ControlSlot.REG_N_HI, Math.floor(n / 2 ** 32));
}

/** Register m, split like n. */
export function readRegisterM(ints: Int32Array): number {
  return (Atomics.load(ints, ControlSlot.REG_M_HI) >>> 0) * 2 ** 32 + (Atomics.load(ints, ControlSlot.REG_M_LO) >>> 0);
}

export function writeRegisterM(ints: Int32Array, m: number): void {
  Atomics.store(ints, ControlSlot.REG_M_LO, m >>> 0);
  Atomics.store(ints, ControlSlot.REG_M_HI, Math.floor(m / 2 ** 32));
}

/** Guest clock in epoch milliseconds with sub-millisecond resolution, comparable across threads of a machine. */
export function wallClockMs(): number {
  return performance.timeOrigin + performance.now();
}

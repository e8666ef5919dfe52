/**
 * The vCPU: a worker thread that runs the VM's workload at its rate, one whole page write at a time.
 *
 * It reads its command (layout.ts, CMD) between every two page writes, never inside one, so a paused vCPU never
 * leaves a half-written page and its registers always describe a finished write. It waits with Atomics.wait on
 * the CMD slot, both while paused and while ahead of its rate, so a pause request wakes it at once.
 *
 * A `pattern` VM with a disk rate also writes its first disk, between two whole page writes, at its own rate, paced
 * like the page writes: it puts the block into the block mailbox (disk/mailbox.ts) and waits with Atomics.wait until
 * the block layer on the main thread says the write is in the image; only then do registers y and m count it. The
 * command is read between whole disk writes too, so a paused vCPU never has a disk write half done.
 *
 * During a post-copy's second half (layout.ts, POSTCOPY) every page write first checks the present map
 * (present-map.ts). A page still at the source is a fault: the vCPU tells the main thread which page (a `fault`
 * message), then waits on the map's word until the page is in, reading its command every FAULT_WAIT_MS so that a
 * pause or a stop still reaches it. A write given up that way never happened: its registers were not stored, and
 * they are reloaded from the control block before the next one. When the page arrives the vCPU reports how long it
 * waited (a `stall` message) and makes the write.
 *
 * At boot, before its first write, the guest reads its config drive when it has one (agent/datastore/config-drive.ts)
 * and reports what it took (its hostname) to the agent by a message. That is all it does with it: guest memory is not
 * touched, so the `pattern` workload's memory stays a pure function of its seed and write count.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { HEARTBEAT_INTERVAL_MS } from '../../shared/constants.js';
import type { WorkloadSpec } from '../../shared/protocol.js';
import { DirtyLog } from './dirty-log.js';
import {
  ControlFloatSlot, ControlSlot, VcpuCommand, VcpuState, controlViews, readRegisterM, readRegisterN, wallClockMs, writeRegisterM,
  writeRegisterN,
} from './layout.js';
import {
  diskStep, fillBlock, pageWrite, workloadPacing, workloadStep, writesDisk, type DiskRegisters, type WorkloadRegisters,
} from '../../shared/workloads.js';
import { NetDevice } from './net/device.js';
import { serveRequest } from './net/guest-service.js';
import { KvTable } from './net/kv-table.js';
import { BlockMailbox } from './disk/mailbox.js';
import { PresentMap } from './present-map.js';
import { WriteStamps } from './write-stamps.js';

export interface VcpuWorkerData {
  memory: SharedArrayBuffer;
  dirtyLog: SharedArrayBuffer;
  control: SharedArrayBuffer;
  pageCount: number;
  workload: WorkloadSpec;
  /** The first disk's block mailbox (disk/mailbox.ts); served while its BLOCK_COUNT is not 0. */
  diskMailbox: SharedArrayBuffer;
  /** Which pages are in memory here (present-map.ts); read only while POSTCOPY is 1. */
  present: SharedArrayBuffer;
  /** When each page was last written (write-stamps.ts): for the heat map, never for migration. */
  writeStamps: SharedArrayBuffer;
  /** The config drive's text, when the VM boots with one (a fresh power-on); not for a migration's destination. */
  configDrive?: string | undefined;
}

/** What the guest reports after reading its config drive. */
export interface GuestBootMessage {
  kind: 'guest';
  hostname: string | null;
}

/** A post-copy fault: the vCPU waits for `page`; then how long it waited, once the page came. */
export type VcpuFaultMessage = { kind: 'fault'; page: number } | { kind: 'stall'; page: number; ms: number };

/**
 * The guest's side of the config drive, written as a guest would: read the seed, take `meta-data.local-hostname`.
 * A seed it cannot read gives it no hostname; it boots anyway, as cloud-init does without a datasource.
 */
function bootFromConfigDrive(text: string): GuestBootMessage {
  try {
    const seed = JSON.parse(text) as { 'meta-data'?: { 'local-hostname'?: unknown } };
    const hostname = seed['meta-data']?.['local-hostname'];
    return { kind: 'guest', hostname: typeof hostname === 'string' ? hostname : null };
  } catch {
    return { kind: 'guest', hostname: null };
  }
}

/** Never write more than this many pages between two heartbeats, so the guest clock keeps ticking under load. */
const WRITES_PER_TURN = 256;
/** Requests served per loop turn at most, so that page writes and the pause check keep their turn under load. */
const REQUESTS_PER_TURN = 64;
/** Disk writes per loop turn at most (each is a round trip to the main thread). */
const DISK_WRITES_PER_TURN = 64;
/** A vCPU waiting for a missing page reads its command this often (a pause or stop does not notify the map's word). */
const FAULT_WAIT_MS = 10;

function run(data: VcpuWorkerData): void {
  if (data.configDrive !== undefined) parentPort?.postMessage(bootFromConfigDrive(data.configDrive));
  const { ints, floats } = controlViews(data.control);
  const words = new Uint32Array(data.memory);
  const dirtyLog = new DirtyLog(data.dirtyLog, data.pageCount);
  const nextPage = workloadStep(data.workload);
  const writePage = pageWrite(data.workload);
  const writesDue = workloadPacing(data.workload);
  const baseRate = data.workload.kind === 'idle' || data.workload.kind === 'kv' ? 0 : data.workload.rate;
  const registers: WorkloadRegisters = { x: 0, n: 0 };
  const disk: DiskRegisters = { y: 0, m: 0 };
  const mailbox = new BlockMailbox(data.diskMailbox);
  const present = new PresentMap(data.present, data.pageCount);
  const stamps = new WriteStamps(data.writeStamps, data.pageCount);
  const baseDiskRate = writesDisk(data.workload) ? (data.workload.diskRate ?? 0) : 0;
  // The network device and the kv table, made the first time the VM has an address (NET_PRESENT) and served.
  let device: NetDevice | undefined;
  let table: KvTable | undefined;

  /**
   * Serves up to REQUESTS_PER_TURN requests from the RX ring, each whole (device.ts): read, answer (the table's
   * writes), reply into the TX ring, then free the RX slot. Checks the command between two requests, never inside
   * one. Returns how many it served.
   */
  const serveNetwork = (): number => {
    device ??= new NetDevice(data.memory, data.pageCount, dirtyLog);
    if (!device.isValid()) return 0; // no device this build understands: touch nothing
    if (data.workload.kind === 'kv') table ??= new KvTable(data.memory, data.workload.wssPages, dirtyLog);
    let served = 0;
    while (served < REQUESTS_PER_TURN && Atomics.load(ints, ControlSlot.CMD) === VcpuCommand.RUN) {
      const request = device.peekRx();
      if (!request) break;
      const reply = serveRequest(request.data, request.length, table);
      if (reply && !device.pushTx(request.ip, request.port, reply)) break; // TX full: the agent is draining it
      device.takeRx();
      device.countServed();
      served += 1;
    }
    if (served > 0) {
      const { array, index } = device.notifyWords;
      Atomics.notify(array, index);
    }
    return served;
  };

  // Busy time (layout.ts, BUSY_MS): everything outside the waits below. `account` adds the time since the vCPU last
  // woke and publishes the total; call it before each wait and at the end of each turn, and `woke` after each wait.
  let busyMs = 0;
  let awakeSince = performance.now();
  const account = (): void => {
    const now = performance.now();
    busyMs += now - awakeSince;
    awakeSince = now;
    floats[ControlFloatSlot.BUSY_MS] = busyMs;
  };
  const woke = (): void => {
    awakeSince = performance.now();
  };

  const setState = (state: number): void => {
    Atomics.store(ints, ControlSlot.STATE, state);
    Atomics.notify(ints, ControlSlot.STATE);
  };
  /**
   * A post-copy fault on `page`: says so, then waits until the page is in (true), or until the command is no longer
   * RUN (false: the write is given up, and the caller reloads the registers).
   */
  const awaitPage = (page: number): boolean => {
    const startedMs = performance.now();
    parentPort?.postMessage({ kind: 'fault', page } satisfies VcpuFaultMessage);
    account();
    while (!present.has(page)) {
      if (Atomics.load(ints, ControlSlot.CMD) !== VcpuCommand.RUN) {
        woke();
        return false;
      }
      present.wait(page, FAULT_WAIT_MS);
    }
    woke();
    parentPort?.postMessage({ kind: 'stall', page, ms: performance.now() - startedMs } satisfies VcpuFaultMessage);
    return true;
  };

  const loadRegisters = (): void => {
    registers.x = Atomics.load(ints, ControlSlot.REG_X) >>> 0;
    registers.n = readRegisterN(ints);
    disk.y = Atomics.load(ints, ControlSlot.REG_Y) >>> 0;
    disk.m = readRegisterM(ints);
  };

  /**
   * One disk write, whole: the next block into the mailbox, then wait for the block layer (mailbox.ts); the
   * registers count it only once it is in the image. Returns false when no write was done (no disk served, or it
   * failed: the same write is made again next time).
   */
  const diskWrite = (): boolean => {
    const blockCount = mailbox.blockCount;
    if (blockCount === 0) return false;
    const wss = Math.min(data.workload.diskWssBlocks ?? blockCount, blockCount);
    const next: DiskRegisters = { y: disk.y, m: disk.m };
    const block = diskStep(next, wss);
    fillBlock(mailbox.words, 0, block, next.m);
    const done = mailbox.submit(block, () => Atomics.load(ints, ControlSlot.CMD) === VcpuCommand.STOP);
    if (!done) return false;
    disk.y = next.y;
    disk.m = next.m;
    Atomics.store(ints, ControlSlot.REG_Y, disk.y | 0);
    writeRegisterM(ints, disk.m);
    return true;
  };

  // Rate pacing: `written` writes since `paceStart`, when `paceN` were done; a write is due when the workload's
  // pacing says so (a rate, or a replayed trace's timing). Auto-converge slows the guest's clock by THROTTLE_PCT; a
  // change restarts the pacing. Disk writes are paced the same way, on their own.
  let paceStart = performance.now();
  let paceN = 0;
  let written = 0;
  let throttle = 0;
  let rate = baseRate;
  let diskPaceStart = paceStart;
  let diskWritten = 0;
  let diskRate = baseDiskRate;

  for (;;) {
    // Read before looking at anything: a bump after this wakes the sleep below at once (layout.ts, DOORBELL).
    const doorbell = Atomics.load(ints, ControlSlot.DOORBELL);
    const command = Atomics.load(ints, ControlSlot.CMD);
    if (command === VcpuCommand.STOP) break;

    if (command === VcpuCommand.PAUSE) {
      floats[ControlFloatSlot.HEARTBEAT_MS] = wallClockMs();
      setState(VcpuState.PAUSED);
      account();
      while (Atomics.load(ints, ControlSlot.CMD) === VcpuCommand.PAUSE) {
        Atomics.wait(ints, ControlSlot.CMD, VcpuCommand.PAUSE);
      }
      woke();
      if (Atomics.load(ints, ControlSlot.CMD) === VcpuCommand.STOP) break;
      // While paused the main thread may have replaced the registers (a migration's activation): reload them.
      loadRegisters();
      const now = wallClockMs();
      const lastBeat = floats[ControlFloatSlot.HEARTBEAT_MS] ?? 0;
      if (lastBeat > 0) floats[ControlFloatSlot.BLACKOUT_MS] = now - lastBeat;
      floats[ControlFloatSlot.HEARTBEAT_MS] = now;
      paceStart = performance.now();
      paceN = registers.n;
      written = 0;
      diskPaceStart = paceStart;
      diskWritten = 0;
      setState(VcpuState.RUNNING);
      continue;
    }

    const served = Atomics.load(ints, ControlSlot.NET_PRESENT) === 1 ? serveNetwork() : 0;

    const throttleNow = Atomics.load(ints, ControlSlot.THROTTLE_PCT);
    if (throttleNow !== throttle) {
      throttle = throttleNow;
      rate = (baseRate * (100 - throttle)) / 100;
      diskRate = (baseDiskRate * (100 - throttle)) / 100;
      paceStart = performance.now();
      paceN = registers.n;
      written = 0;
      diskPaceStart = paceStart;
      diskWritten = 0;
    }
    const elapsedMs = performance.now() - paceStart;
    const due = rate === 0 ? 0 : writesDue(paceN, (elapsedMs * (100 - throttle)) / 100) - written;
    const diskDue = diskRate === 0 || mailbox.blockCount === 0
      ? 0 : Math.floor(((performance.now() - diskPaceStart) * diskRate) / 1000) - diskWritten;
    if (due <= 0 && diskDue <= 0) {
      // Nothing due: sleep a heartbeat interval (a pause request or a request in the RX ring still wakes us at once).
      // Waking for every single write would cost a futex round trip per page; instead the writes that fall due
      // meanwhile go in one turn.
      floats[ControlFloatSlot.HEARTBEAT_MS] = wallClockMs();
      if (served === 0) {
        account();
        Atomics.wait(ints, ControlSlot.DOORBELL, doorbell, HEARTBEAT_INTERVAL_MS);
        woke();
      }
      continue;
    }

    const turn = Math.max(0, Math.min(due, WRITES_PER_TURN));
    // Read once a turn: POSTCOPY is set only while the vCPU is paused, and a clear seen late costs only a look at a
    // present map whose pages are all in.
    const postcopy = Atomics.load(ints, ControlSlot.POSTCOPY) !== 0;
    for (let i = 0; i < turn; i++) {
      if (Atomics.load(ints, ControlSlot.CMD) !== VcpuCommand.RUN) break;
      const page = nextPage(registers);
      if (page >= 0) {
        if (postcopy && !present.has(page) && !awaitPage(page)) {
          loadRegisters(); // the write was given up: its registers were never stored
          break;
        }
        // Write the page, THEN mark it dirty (dirty-log.ts explains why this order matters).
        writePage(words, page, registers);
        dirtyLog.mark(page);
        stamps.record(page, registers.n);
      }
      Atomics.store(ints, ControlSlot.REG_X, registers.x | 0);
      writeRegisterN(ints, registers.n);
      written += 1;
    }
    // Disk writes, between whole page writes, each whole (the command is read between two of them, never inside one).
    const diskTurn = Math.max(0, Math.min(diskDue, DISK_WRITES_PER_TURN));
    let diskFailed = false;
    for (let i = 0; i < diskTurn; i++) {
      if (Atomics.load(ints, ControlSlot.CMD) !== VcpuCommand.RUN) break;
      if (!diskWrite()) {
        diskFailed = true; // no disk served, or a failed write: the same write again after a heartbeat
        break;
      }
      diskWritten += 1;
    }
    if (diskFailed) {
      account();
      Atomics.wait(ints, ControlSlot.DOORBELL, doorbell, HEARTBEAT_INTERVAL_MS);
      woke();
    }
    account();
    floats[ControlFloatSlot.HEARTBEAT_MS] = wallClockMs();
    // A vCPU that fell more than a second behind (the machine was busy) does not burst to catch up.
    if (due > rate) {
      paceStart = performance.now();
      paceN = registers.n;
      written = 0;
    }
    if (diskDue > diskRate) {
      diskPaceStart = performance.now();
      diskWritten = 0;
    }
  }
  setState(VcpuState.STOPPED);
}

run(workerData as VcpuWorkerData);

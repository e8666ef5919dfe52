/**
 * The main thread's handle on a vCPU worker: start it, pause and resume it through the Atomics handshake on the
 * control block (about 20 µs, where a postMessage round trip to a busy worker takes about 5 ms), stop it.
 * The main thread waits with Atomics.waitAsync, never Atomics.wait, so its event loop keeps serving.
 */
import { existsSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { ControlSlot, VcpuCommand, VcpuState, controlViews } from './layout.js';
import type { GuestFacts } from '../../shared/protocol.js';
import type { GuestBootMessage, VcpuFaultMessage, VcpuWorkerData } from './vcpu-worker.js';

/**
 * The worker's compiled file. Node 20 cannot start a `.ts` worker, so when this module itself runs from the
 * TypeScript sources (the unit tests under vitest), the worker still comes from the build in dist/.
 */
function workerUrl(): URL {
  const beside = new URL('./vcpu-worker.js', import.meta.url);
  return existsSync(beside) ? beside : new URL('../../dist/agent/vm/vcpu-worker.js', import.meta.url);
}
const HANDSHAKE_TIMEOUT_MS = 10_000;
/**
 * How long a `quick` handshake may block the main thread in Atomics.wait before it waits with waitAsync as every other
 * one does. A migration's pause and resume are downtime: the vCPU answers in microseconds, but a waitAsync wake-up is
 * a task on the event loop, behind whatever else is queued there (a millisecond or more on a loaded host). Blocking
 * the loop this long at most, twice a migration, costs the agent's other work less than that costs the guest.
 */
const QUICK_WAIT_MS = 2;

type State = (typeof VcpuState)[keyof typeof VcpuState];

export class Vcpu {
  private readonly ints: Int32Array;
  private readonly worker: Worker;
  private exited = false;
  private failure: Error | undefined;
  /** What the guest took from its config drive at boot, once it has said (vcpu-worker.ts). */
  private readonly booted: Promise<GuestBootMessage>;
  guest: GuestFacts | undefined;
  /** A post-copy fault, and later its stall (vcpu-worker.ts): set by whoever serves the missing pages. */
  onFault: ((message: VcpuFaultMessage) => void) | undefined;

  private constructor(data: VcpuWorkerData) {
    this.ints = controlViews(data.control).ints;
    // The vCPU starts paused: the caller decides when the guest runs (at once, or at a migration's activation).
    Atomics.store(this.ints, ControlSlot.CMD, VcpuCommand.PAUSE);
    Atomics.store(this.ints, ControlSlot.STATE, VcpuState.STARTING);
    this.worker = new Worker(workerUrl(), { workerData: data, name: 'vcpu' });
    this.booted = new Promise((resolve) => {
      this.worker.on('message', (message: GuestBootMessage | VcpuFaultMessage) => {
        if (message.kind === 'guest') resolve(message);
        else this.onFault?.(message);
      });
    });
    this.worker.on('error', (error) => {
      this.failure = error;
    });
    this.worker.on('exit', () => {
      this.exited = true;
      Atomics.store(this.ints, ControlSlot.STATE, VcpuState.STOPPED);
      Atomics.notify(this.ints, ControlSlot.STATE);
    });
  }

  /** Starts the worker and returns once it is parked, paused, before its first write. */
  static async start(data: VcpuWorkerData): Promise<Vcpu> {
    const vcpu = new Vcpu(data);
    await vcpu.reach(VcpuState.PAUSED);
    if (data.configDrive !== undefined) {
      // The worker posts its report before it first parks, so it is on its way by now.
      let timer: NodeJS.Timeout | undefined;
      const report = await Promise.race([
        vcpu.booted,
        new Promise<undefined>((resolve) => {
          timer = setTimeout(() => resolve(undefined), HANDSHAKE_TIMEOUT_MS);
        }),
      ]).finally(() => clearTimeout(timer));
      if (report?.hostname) vcpu.guest = { hostname: report.hostname };
    }
    return vcpu;
  }

  get state(): State {
    return Atomics.load(this.ints, ControlSlot.STATE) as State;
  }

  /**
   * Resolves once the vCPU has finished its current page write and stopped. `quick`: wait for it on this thread first,
   * for QUICK_WAIT_MS at most (a migration's pause).
   */
  async pause({ quick = false }: { quick?: boolean } = {}): Promise<void> {
    this.command(VcpuCommand.PAUSE);
    if (quick) this.waitHere(VcpuState.PAUSED);
    await this.reach(VcpuState.PAUSED);
  }

  /** Resolves once the vCPU runs again, from whatever registers the control block holds now. `quick`: as for pause. */
  async resume({ quick = false }: { quick?: boolean } = {}): Promise<void> {
    this.command(VcpuCommand.RUN);
    if (quick) this.waitHere(VcpuState.RUNNING);
    await this.reach(VcpuState.RUNNING);
  }

  /** Blocks this thread until the vCPU reaches `target`, QUICK_WAIT_MS at most; `reach` then finds it there or waits on. */
  private waitHere(target: State): void {
    const deadline = performance.now() + QUICK_WAIT_MS;
    for (;;) {
      const state = this.state;
      if (state === target || state === VcpuState.STOPPED) return;
      const left = deadline - performance.now();
      if (left <= 0) return;
      Atomics.wait(this.ints, ControlSlot.STATE, state, left);
    }
  }

  async stop(): Promise<void> {
    if (this.exited) return;
    const exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    this.command(VcpuCommand.STOP);
    const timer = setTimeout(() => void this.worker.terminate(), HANDSHAKE_TIMEOUT_MS);
    await exited;
    clearTimeout(timer);
  }

  private command(command: number): void {
    Atomics.store(this.ints, ControlSlot.CMD, command);
    Atomics.notify(this.ints, ControlSlot.CMD); // a paused vCPU sleeps on CMD
    this.ring(); // a running one on DOORBELL
  }

  /** Wakes the vCPU to look again: a request is waiting in its RX ring (layout.ts, DOORBELL). */
  ring(): void {
    Atomics.add(this.ints, ControlSlot.DOORBELL, 1);
    Atomics.notify(this.ints, ControlSlot.DOORBELL);
  }

  /** Says whether the vCPU checks the present map before each page write (layout.ts, POSTCOPY). */
  setPostcopy(on: boolean): void {
    Atomics.store(this.ints, ControlSlot.POSTCOPY, on ? 1 : 0);
  }

  /** Says whether the vCPU serves a network device; only while it is paused or parked (layout.ts, NET_PRESENT). */
  setNetPresent(present: boolean): void {
    Atomics.store(this.ints, ControlSlot.NET_PRESENT, present ? 1 : 0);
  }

  private async reach(target: State): Promise<void> {
    const deadline = performance.now() + HANDSHAKE_TIMEOUT_MS;
    for (;;) {
      const state = this.state;
      if (state === target) return;
      if (this.failure || (state === VcpuState.STOPPED && target !== VcpuState.STOPPED)) {
        throw new FerryError(ErrorCode.INTERNAL, `the vCPU stopped unexpectedly: ${this.failure?.message ?? 'worker exited'}`);
      }
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new FerryError(ErrorCode.TIMEOUT, `the vCPU did not reach state ${target} within ${HANDSHAKE_TIMEOUT_MS} ms`, 'the agent may be overloaded');
      }
      const waiting = Atomics.waitAsync(this.ints, ControlSlot.STATE, state, Math.min(left, 100));
      if (waiting.async) await waiting.value;
    }
  }
}

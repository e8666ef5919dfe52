/**
 * A post-copy's destination after the switch (DESIGN.md, "Post-copy"): the VM runs here while the pages it lacks are
 * still at the source. Three things meet here:
 *
 * - the vCPU's faults (vcpu-worker.ts): a write to a missing page waits for it, and the page is asked for at once, on
 *   the `peer.faults` request the source keeps open, ahead of the background push;
 * - arriving frames (page-receiver.ts `postcopy`): only missing pages are taken, each checked against the hash it
 *   came with, then marked present (which wakes the vCPU); a page that does not match is asked for again;
 * - the link: when it breaks, everything here stays as it is (the vCPU waits on its fault, the pages asked for stay
 *   wanted) until the source reconnects (`ferry migrate NAME --resume`), then every page still wanted is asked again.
 *
 * Once the last page is present the vCPU stops checking the present map, and the VM is an ordinary one.
 */
import type { Logger } from '../../shared/log.js';
import type { VirtualMachine } from '../vm/vm.js';
import type { VcpuFaultMessage } from '../vm/vcpu-worker.js';
import type { PostcopyInstall } from './page-receiver.js';

/** Pages asked for in one `peer.faults` event at most (pageRequestEventSchema). */
const PAGES_PER_EVENT = 4096;

/** Nearest-rank percentile of ascending `sorted`, in ms. */
function percentile(sorted: number[], fraction: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(fraction * sorted.length) - 1))]!;
}

export interface StallSummary {
  p50: number;
  p99: number;
  max: number;
  totalMs: number;
}

export function summarizeStalls(stalls: number[]): StallSummary | undefined {
  if (stalls.length === 0) return undefined;
  const sorted = [...stalls].sort((a, b) => a - b);
  return { p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99), max: sorted.at(-1)!, totalMs: sorted.reduce((sum, ms) => sum + ms, 0) };
}

export class PostcopyTarget implements PostcopyInstall {
  private readonly vm: VirtualMachine;
  private readonly log: Logger;
  /** Pages not yet present. */
  missing: number;
  faults = 0;
  refetched = 0;
  private readonly stalls: number[] = [];
  /** Pages asked for (a fault, or damage) and not present yet: asked again on every new channel. */
  private readonly wanted = new Set<number>();
  /** The open `peer.faults` request's event sender, while the source is connected. */
  private channel: ((pages: number[]) => void) | undefined;
  private closeChannel: (() => void) | undefined;
  private waiters: (() => void)[] = [];

  constructor(vm: VirtualMachine, missing: number, log: Logger) {
    this.vm = vm;
    this.log = log;
    this.missing = missing;
  }

  get present(): VirtualMachine['present'] {
    return this.vm.present;
  }

  get complete(): boolean {
    return this.missing === 0;
  }

  get linked(): boolean {
    return this.channel !== undefined;
  }

  /** The vCPU's messages: a fault asks for its page; its stall is kept for the report. */
  onVcpu(message: VcpuFaultMessage): void {
    if (message.kind === 'stall') {
      this.stalls.push(message.ms);
      return;
    }
    this.faults += 1;
    this.want(message.page);
  }

  stallSummary(): StallSummary | undefined {
    return summarizeStalls(this.stalls);
  }

  private want(page: number): void {
    if (this.present.has(page) || this.wanted.has(page)) return;
    this.wanted.add(page);
    this.channel?.([page]);
  }

  installed(count: number): void {
    if (count === 0) return;
    this.missing -= count;
    if (this.wanted.size > 0) for (const page of this.wanted) if (this.present.has(page)) this.wanted.delete(page);
    if (this.missing <= 0) this.finish();
  }

  damaged(page: number): void {
    this.refetched += 1;
    this.log.warn('a post-copy page arrived damaged; asking for it again', { vm: this.vm.name, page });
    this.wanted.delete(page);
    this.want(page);
  }

  /**
   * The source opened `peer.faults`: pages are asked for through `send` from now on, starting with every page still
   * wanted. Resolves when the post-copy completes or `closed` fires (the connection went).
   */
  openChannel(send: (pages: number[]) => void, closed: AbortSignal): Promise<void> {
    this.closeChannel?.();
    this.channel = send;
    const wanted = [...this.wanted];
    for (let at = 0; at < wanted.length; at += PAGES_PER_EVENT) send(wanted.slice(at, at + PAGES_PER_EVENT));
    return new Promise<void>((resolve) => {
      const end = (): void => {
        closed.removeEventListener('abort', end);
        if (this.channel === send) {
          this.channel = undefined;
          this.closeChannel = undefined;
        }
        resolve();
      };
      this.closeChannel = end;
      if (this.complete || closed.aborted) end();
      else closed.addEventListener('abort', end, { once: true });
      this.waiters.push(end);
    });
  }

  /** Resolves once every page is present, or rejects after `timeoutMs` (or when `signal` aborts). */
  whenComplete(timeoutMs: number, signal: AbortSignal): Promise<boolean> {
    if (this.complete) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => done(false), timeoutMs);
      const done = (value: boolean): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', aborted);
        resolve(value);
      };
      const aborted = (): void => done(false);
      signal.addEventListener('abort', aborted, { once: true });
      this.waiters.push(() => done(true));
    });
  }

  private finish(): void {
    this.missing = 0;
    this.wanted.clear();
    this.vm.setPostcopy(null);
    this.log.info('post-copy complete: every page is here', { vm: this.vm.name, faults: this.faults });
    for (const waiter of this.waiters.splice(0)) waiter();
  }
}

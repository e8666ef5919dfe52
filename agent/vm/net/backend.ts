/**
 * The network device's host side for one VM: datagrams for its address go into the RX ring, replies the guest put
 * into the TX ring go out from the address (device.ts draws the rings).
 *
 *   serving      datagrams -> queue -> RX ring (as room frees); TX ring -> replies sent
 *   holding      a migration has paused the guest: the TX ring was drained, the rings are not touched any more
 *                (the last copy of guest memory is being made); datagrams are kept here, in arrival order
 *   forwarding   the destination owns the VM: kept and new datagrams go to it over the peer connection
 *   stopped      the address is released
 *
 * `hold` and `serve`/`forwardTo` are the migration's switchover (migration/net-handover.ts); a rollback goes from
 * holding back to serving, the kept datagrams first, so none is lost either way.
 */
import type { Logger } from '../../../shared/log.js';
import type { AddressBinding, ClientDatagram } from './address.js';
import type { NetDevice } from './device.js';

/** Datagrams kept on the host while the RX ring is full or the guest is handed over; past this they are dropped. */
const MAX_QUEUED = 4096;
/** The pump's longest sleep: it wakes at once when the guest notifies, this is a safety net. */
const PUMP_WAIT_MS = 50;

type Mode = 'serving' | 'holding' | 'forwarding' | 'stopped';

export class NetBackend {
  private readonly device: NetDevice;
  private readonly binding: AddressBinding;
  private readonly ring: () => void;
  private readonly log: Logger;
  private mode: Mode = 'serving';
  /** Datagrams not yet in the RX ring (serving), or kept during a handover (holding). */
  private queued: ClientDatagram[] = [];
  private forward: ((datagrams: ClientDatagram[]) => void) | undefined;
  forwarded = 0;
  dropped = 0;
  private pumping: Promise<void> | undefined;

  private constructor(device: NetDevice, binding: AddressBinding, ring: () => void, log: Logger) {
    this.device = device;
    this.binding = binding;
    this.ring = ring;
    this.log = log;
  }

  /** Claims the address and starts serving it; `earlier` are datagrams that arrived for the VM before (forwarded). */
  static async start(device: NetDevice, binding: AddressBinding, ring: () => void, log: Logger, earlier: ClientDatagram[] = []): Promise<NetBackend> {
    const backend = new NetBackend(device, binding, ring, log);
    backend.queued.push(...earlier);
    backend.flush();
    await binding.claim((datagram) => backend.deliver(datagram));
    backend.pumping = backend.pump();
    return backend;
  }

  get address(): string {
    return this.binding.address;
  }

  /** Gratuitous ARP announcements scheduled when this host took the address (namespaces mode). */
  get announcements(): number {
    return this.binding.announcements;
  }

  /** A datagram for the VM, from its address here or forwarded by the host it came from. */
  deliver(datagram: ClientDatagram): void {
    switch (this.mode) {
      case 'serving':
      case 'holding':
        if (this.queued.length >= MAX_QUEUED) {
          this.dropped += 1;
          if (this.dropped === 1) this.log.warn('network queue full: dropping datagrams', { address: this.address });
          return;
        }
        this.queued.push(datagram);
        if (this.mode === 'serving') this.flush();
        return;
      case 'forwarding':
        this.forwarded += 1;
        this.forward?.([datagram]);
        return;
      case 'stopped':
        return;
      default: {
        const unreachable: never = this.mode;
        return unreachable;
      }
    }
  }

  /**
   * The guest is paused for a migration's last copy: send the replies it made, then leave the rings alone (keeping
   * what arrives). Synchronous, so nothing touches guest memory between this and the last harvest of the dirty log.
   */
  hold(): void {
    if (this.mode !== 'serving') return;
    this.drainTx();
    this.mode = 'holding';
    this.binding.withdraw();
  }

  /**
   * A commit whose activation went unconfirmed: whether the destination runs the VM is not known yet, so keep what
   * arrives (forwarding into a connection that failed would lose it). Settlement then serves it here or stops.
   */
  keep(): void {
    if (this.mode !== 'forwarding') return;
    this.mode = 'holding';
    this.forward = undefined;
  }

  /** A rolled-back migration, or one settled in the source's favour: the kept datagrams go into the ring first. */
  serve(): void {
    if (this.mode !== 'holding') return;
    this.mode = 'serving';
    this.binding.restore();
    this.flush();
  }

  /** The destination owns the VM: the kept datagrams go to it, in order, and so does everything that comes later. */
  forwardTo(forward: (datagrams: ClientDatagram[]) => void): void {
    const kept = this.queued;
    this.queued = [];
    this.mode = 'forwarding';
    this.forward = forward;
    this.forwarded += kept.length;
    if (kept.length > 0) forward(kept);
  }

  async stop(): Promise<void> {
    if (this.mode === 'stopped') return;
    this.mode = 'stopped';
    this.queued = [];
    await this.binding.release();
    await this.pumping;
  }

  /** Moves queued datagrams into the RX ring while it has room, and wakes the guest. */
  private flush(): void {
    let moved = 0;
    while (moved < this.queued.length) {
      const next = this.queued[moved]!;
      if (!this.device.pushRx(next.ip, next.port, next.data)) break;
      moved += 1;
    }
    if (moved === 0) return;
    this.queued.splice(0, moved);
    this.ring();
  }

  /** Sends every reply in the TX ring; returns the TX_HEAD value it drained up to. */
  private drainTx(): number {
    const { array, index } = this.device.notifyWords;
    const head = Atomics.load(array, index);
    while (this.device.txCount() > 0) {
      const reply = this.device.peekTx();
      if (!reply) break;
      this.binding.send(reply);
      this.device.takeTx();
    }
    return head;
  }

  /**
   * Sends replies as the guest makes them, and refills the RX ring as it frees slots. It sleeps on TX_HEAD with the
   * value it drained up to: a reply put since then, or the guest's notify after serving, wakes it at once.
   */
  private async pump(): Promise<void> {
    const { array, index } = this.device.notifyWords;
    while (this.mode !== 'stopped') {
      let seen = Atomics.load(array, index);
      if (this.mode === 'serving') {
        seen = this.drainTx();
        this.flush();
      }
      const waiting = Atomics.waitAsync(array, index, seen, PUMP_WAIT_MS);
      if (waiting.async) await waiting.value;
    }
  }
}

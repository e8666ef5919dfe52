/**
 * Moving a VM's address with its guest, so that no datagram that reaches a host is lost: the source's part. In
 * namespaces mode the pause also takes the address off the source's interface (address.ts `withdraw`) and the
 * destination announces it where it lands (namespace.ts); the rest is the same in both modes.
 *
 *   pre-copy        source serves (its backend fills the RX ring, sends the TX ring)
 *   pause           source: `hold` — replies made so far are sent, then the rings are left alone and datagrams
 *                   are kept on the host; the last copy of memory carries the rings, requests not yet served
 *                   included, exactly (device.ts: every write is marked dirty after it, and nothing writes now)
 *   commit          source: `commit` — the kept datagrams go to the destination on the peer connection
 *                   (`net.forward`, ordered before `peer.activate`), and so does each new one as it arrives
 *   activation      destination: puts the forwarded datagrams into the RX ring after those that came with memory,
 *                   claims the address (binds IP:7777; on one machine the newest socket receives, address.ts), then
 *                   runs the guest, and only then answers `peer.activate`
 *   after           source: goes on forwarding what still reaches it (datagrams queued on its socket before the
 *                   destination bound) for NET_LINGER_MS, then releases the address
 *   rollback        source: `rollBack` — the kept datagrams go into its own RX ring first; serving goes on
 *
 * Why none is lost: every datagram reaches a socket that is bound (the source's stays bound until after the
 * destination's is), and each socket's owner puts it somewhere it will be served: the ring (source before the pause,
 * destination after activation), the source's keep-list (pause to commit; to the destination at commit, back into
 * its own ring on rollback), or the peer connection (commit to release), which is ordered and lands in the
 * destination's list before activation or its ring after. Forwarding waits for the commit, not the pause, so a
 * rollback never has to fetch anything back. A commit whose activation is not confirmed (the VM stays suspended,
 * settlement.ts) keeps datagrams on the source again: served there if settlement finds the destination never ran
 * the VM, dropped with the copy if it did. What it does not cover: datagrams already forwarded on a connection that
 * then failed, or ahead of a switchover whose digests then differed (source.ts), and those kept when the destination
 * turns out to run the VM.
 */
import type { Logger } from '../../shared/log.js';
import type { SourceReport } from '../../shared/protocol.js';
import type { NetBackend } from '../vm/net/backend.js';
import type { VirtualMachine } from '../vm/vm.js';
import type { PeerClient } from './peer-client.js';
import { PEER_REPLY_TIMEOUT_MS } from '../../shared/constants.js';

/**
 * How long the source keeps the address after the destination serves it. Datagrams that reached the source's
 * socket before the destination bound are read within an event-loop turn or two; this leaves room for a busy host.
 */
export const NET_LINGER_MS = 250;

export class NetHandover {
  private readonly vm: VirtualMachine;
  private readonly peer: PeerClient;
  private readonly log: Logger;
  /** The VM's backend on this host when the migration began (none: the VM serves no address here). */
  private readonly backend: NetBackend | undefined;

  constructor(vm: VirtualMachine, peer: PeerClient, log: Logger) {
    this.vm = vm;
    this.peer = peer;
    this.log = log;
    this.backend = vm.net;
  }

  /** The guest is paused: stop touching its rings before the last harvest of the dirty log. */
  hold(): void {
    this.backend?.hold();
  }

  rollBack(): void {
    this.backend?.serve();
  }

  /** Committed, activation unconfirmed: keep datagrams here until settlement says who has the VM. */
  inDoubt(): void {
    this.backend?.keep();
  }

  /** Committed: what was kept, and everything from now on, goes to the destination. */
  commit(): void {
    this.backend?.forwardTo((datagrams) => {
      this.peer.request('net.forward', { datagrams }, { timeoutMs: PEER_REPLY_TIMEOUT_MS }).catch((error: unknown) => {
        this.log.warn('could not forward datagrams to the destination', { vm: this.vm.name, count: datagrams.length, error: String(error) });
      });
    });
  }

  /** The destination serves: forward stragglers a little longer, then give the address up here. */
  async finish(): Promise<void> {
    const backend = this.backend;
    if (!backend) return;
    await new Promise((resolve) => setTimeout(resolve, NET_LINGER_MS));
    if (this.vm.net === backend) this.vm.net = undefined;
    await backend.stop();
  }

  /** The report's `network` section; `servingAfterPauseMs` once the destination has said when it started serving. */
  report(servingAfterPauseMs: number | undefined, announcements: number): SourceReport['network'] {
    if (!this.backend) return undefined;
    return {
      address: this.backend.address,
      ...(servingAfterPauseMs !== undefined ? { servingAfterPauseMs } : {}),
      forwarded: this.backend.forwarded,
      announcements,
    };
  }
}

/**
 * Who serves a VM's address on this host: the one part of the network that differs between modes, behind one small
 * interface. The device's backend (backend.ts) only claims an address, sends from it, and releases it.
 *
 * - loopback (here): the address is in 127.0.0.0/8, which Linux answers on `lo` without configuration; claiming it
 *   is binding a UDP socket to IP:7777.
 * - namespaces (namespace.ts): claiming adds the IP to the host's interface and announces it with gratuitous ARP;
 *   withdrawing (at a migration's pause) and releasing remove it.
 *
 * Moving an address between two agents on one machine (loopback): both bind IP:7777 with SO_REUSEADDR. For unicast
 * UDP, Linux hands each datagram to the most recently bound of such sockets (the newest is first in the port's
 * hash chain and lookups take the first best match), so from the moment the destination binds, new datagrams reach
 * it and not the source. Datagrams already queued on the source's socket are still read there and forwarded: the
 * source keeps its socket open, forwarding, until well after the destination has said it serves
 * (migration/net-handover.ts), and only then closes it. So no datagram meets a closed port.
 */
import dgram from 'node:dgram';
import { ErrorCode, FerryError } from '../../../shared/errors.js';
import { ipToUint32, uint32ToIp } from './device.js';

export interface ClientDatagram {
  /** The client's IPv4 address as a uint32. */
  ip: number;
  port: number;
  data: Uint8Array<ArrayBuffer>;
}

export interface AddressBinding {
  /** "IP:PORT". */
  readonly address: string;
  /** Starts receiving the address's datagrams on this host. */
  claim(onDatagram: (datagram: ClientDatagram) => void): Promise<void>;
  /** Sends a reply from the address. */
  send(datagram: ClientDatagram): void;
  /**
   * A migration's pause: stop attracting the address's traffic to this host, while still reading what has arrived
   * (loopback: nothing to do, the destination's newer socket takes over; namespaces: the IP leaves the interface).
   */
  withdraw(): void;
  /** Serving here again after `withdraw` (a rollback): attract the traffic again. */
  restore(): void;
  /** Gratuitous ARP announcements this binding has scheduled since its last claim or restore (loopback: 0). */
  readonly announcements: number;
  /** Stops receiving here (and, in other modes, gives the address up). */
  release(): Promise<void>;
}

export interface AddressMode {
  readonly name: 'loopback' | 'namespaces';
  /** The interface addresses are added to (namespaces mode). */
  readonly device?: string;
  /** Why this mode cannot serve `ip` on this host, or undefined when it can. */
  refuses(ip: string): string | undefined;
  bind(ip: string, port: number): AddressBinding;
}

export const loopbackMode: AddressMode = {
  name: 'loopback',
  refuses: (ip) => (ip.startsWith('127.') ? undefined : `loopback mode serves only addresses in 127.0.0.0/8, not ${ip}`),
  bind: (ip, port) => new LoopbackBinding(ip, port),
};

const RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024;

class LoopbackBinding implements AddressBinding {
  readonly address: string;
  readonly announcements = 0;
  private readonly ip: string;
  private readonly port: number;
  private socket: dgram.Socket | undefined;

  constructor(ip: string, port: number) {
    this.ip = ip;
    this.port = port;
    this.address = `${ip}:${port}`;
  }

  async claim(onDatagram: (datagram: ClientDatagram) => void): Promise<void> {
    const socket = dgram.createSocket({ type: 'udp4', reuseAddr: true });
    socket.on('message', (data, remote) => {
      if (remote.family === 'IPv4') onDatagram({ ip: ipToUint32(remote.address), port: remote.port, data: data as Uint8Array<ArrayBuffer> });
    });
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(this.port, this.ip, () => {
        socket.off('error', reject);
        resolve();
      });
    }).catch((error: NodeJS.ErrnoException) => {
      socket.close();
      throw new FerryError(ErrorCode.IO, `cannot serve ${this.address} on this host: ${error.code ?? error.message}`, 'give the VM an address in 127.0.0.0/8 that nothing else uses');
    });
    // A send error (the client's port closed) concerns one reply; the socket goes on.
    socket.on('error', () => undefined);
    // Room for a burst while the guest is busy or paused (the kernel caps this at net.core.rmem_max).
    try {
      socket.setRecvBufferSize(RECEIVE_BUFFER_BYTES);
    } catch {
      // The default buffer serves; only bursts suffer.
    }
    this.socket = socket;
  }

  send(datagram: ClientDatagram): void {
    this.socket?.send(datagram.data, datagram.port, uint32ToIp(datagram.ip));
  }

  withdraw(): void {
    // The destination's socket, bound later, takes the datagrams from the moment it exists.
  }

  restore(): void {
    // Nothing was given up.
  }

  async release(): Promise<void> {
    const socket = this.socket;
    this.socket = undefined;
    if (socket) await new Promise<void>((resolve) => socket.close(() => resolve()));
  }
}

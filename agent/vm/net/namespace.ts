/**
 * Namespaces mode: a VM's address is a real IPv4 address on a real layer-2 segment. The agent runs in a network
 * namespace whose interface (`--net-device`) is attached to a bridge that clients also reach; claiming the address
 * adds it to that interface (`ip addr add IP/32`), so the kernel answers ARP for it and delivers its datagrams to the
 * VM's socket; withdrawing it (at a migration's pause) removes it again. The new host then tells the segment where
 * the address lives with gratuitous ARP, sent by `arping -U` (iputils-arping, from the distribution's packages).
 *
 * The announcement schedule is QEMU's (0, 50, 200, 450, 800 ms after the address moves: repeats that cover an
 * announcement lost on a busy segment), with one change that matters for the outage: the first goes out the moment
 * the address is on the destination's interface, before the guest runs again, rather than after it resumes. Until a
 * client hears it, the client sends to the old host's MAC, which no longer holds the address and drops what it gets;
 * so every millisecond between the address moving and the first announcement is outage. Measured here, iputils'
 * arping has sent its packet 4-13 ms after it starts; Thomas Habets' arping takes 50-65 ms (libnet and pcap set-up),
 * which alone would spend the outage budget, so ferry speaks iputils' flags first and Habets' only as a fallback.
 *
 * Datagrams the source's socket received before the address left are kept and forwarded at the commit exactly as in
 * loopback mode (migration/net-handover.ts); what clients send while no host holds the address is lost on the wire
 * and is theirs to retry (`ferry vm probe` does).
 */
import { execFile, fork, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { ErrorCode, FerryError } from '../../../shared/errors.js';
import type { Logger } from '../../../shared/log.js';
import type { AddressBinding, AddressMode, ClientDatagram } from './address.js';
import { ipToUint32, uint32ToIp } from './device.js';

const run = promisify(execFile);

/** When each gratuitous ARP goes out, in ms after the address is added (QEMU's self-announce schedule). */
export const ANNOUNCE_SCHEDULE_MS = [0, 50, 200, 450, 800] as const;

const RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024;

type ArpingFlavour = 'iputils' | 'habets';

/** Which arping this machine has: iputils' (`-I dev -s ip`) or Thomas Habets' (`-i dev -S ip`). */
async function arpingFlavour(): Promise<ArpingFlavour> {
  const version = await run('arping', ['-V'], { timeout: 5000 }).then(
    ({ stdout, stderr }) => `${stdout}${stderr}`,
    (error: NodeJS.ErrnoException & { stdout?: string; stderr?: string }) => {
      if (error.code === 'ENOENT') {
        throw new FerryError(ErrorCode.BAD_INPUT, 'namespaces mode announces addresses with arping, which is not installed', 'install it from the distribution\'s packages: apt-get install iputils-arping');
      }
      return `${error.stdout ?? ''}${error.stderr ?? ''}`;
    },
  );
  return /iputils/i.test(version) ? 'iputils' : 'habets';
}

function arpingArgs(flavour: ArpingFlavour, device: string, ip: string): string[] {
  // -U: unsolicited ("gratuitous") ARP, sender and target both the moved address; one packet, no reply awaited.
  return flavour === 'iputils' ? ['-U', '-q', '-c', '1', '-I', device, '-s', ip, ip] : ['-U', '-q', '-c', '1', '-i', device, '-S', ip, ip];
}

interface HelperReply {
  id: number;
  code: number;
  stderr: string;
}

/**
 * Runs `ip` and `arping` in net-helper.js, a small process started once, so that no fork copies guest memory's page
 * tables on the pause's or the activation's path (net-helper.ts says why).
 */
class NetHelper {
  private readonly child: ChildProcess;
  private readonly pending = new Map<number, (reply: HelperReply) => void>();
  private nextId = 1;

  constructor(log: Logger) {
    this.child = fork(fileURLToPath(new URL('./net-helper.js', import.meta.url)), [], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    this.child.on('message', (reply: HelperReply) => {
      this.pending.get(reply.id)?.(reply);
      this.pending.delete(reply.id);
    });
    this.child.on('exit', (code, signal) => {
      log.error('the network helper process exited', { code, signal });
      for (const [id, settle] of this.pending) settle({ id, code: 127, stderr: 'the network helper process exited' });
      this.pending.clear();
    });
    // It must not keep an agent that is stopping alive; it exits when the agent's end of the channel closes.
    this.child.unref();
    this.child.channel?.unref();
  }

  run(command: 'ip' | 'arping', args: string[], tag?: string): Promise<HelperReply> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      this.child.send({ id, command, args, ...(tag ? { tag } : {}) });
    });
  }

  cancel(tag: string): void {
    this.child.send({ cancel: tag });
  }
}

/** Runs `ip` with these arguments; `tolerate` is stderr text that means the work was already done. */
async function ip(helper: NetHelper, args: string[], tolerate: RegExp): Promise<void> {
  const { code, stderr } = await helper.run('ip', args);
  if (code === 0 || tolerate.test(stderr)) return;
  throw new FerryError(ErrorCode.IO, `ip ${args.join(' ')} failed: ${stderr.trim() || `exit ${code}`}`, 'namespaces mode needs root (CAP_NET_ADMIN) and iproute2 in the agent\'s namespace');
}

/** The namespaces mode for this agent, on `device`; checks the device and the tools it needs once, at start. */
export async function namespaceMode(device: string, log: Logger): Promise<AddressMode> {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(device)) {
    throw new FerryError(ErrorCode.BAD_INPUT, `--net-device ${JSON.stringify(device)} is not an interface name`, 'name the interface attached to the bridge, e.g. --net-device eth0');
  }
  if (!existsSync(`/sys/class/net/${device}`)) {
    throw new FerryError(ErrorCode.BAD_INPUT, `there is no interface ${device} in this agent's network namespace`, 'run the agent in the namespace that holds it (ip netns exec NS ferry-agent ...), or name another with --net-device');
  }
  const flavour = await arpingFlavour();
  const helper = new NetHelper(log);
  log.info('namespaces mode', { device, arping: flavour, schedule: ANNOUNCE_SCHEDULE_MS });
  return {
    name: 'namespaces',
    device,
    refuses: (address) => (address.startsWith('127.') ? `namespaces mode serves addresses on ${device}, not loopback ones like ${address}` : undefined),
    bind: (address, port) => new NamespaceBinding({ ip: address, port, device, flavour, log, helper }),
  };
}

interface NamespaceSettings {
  ip: string;
  port: number;
  device: string;
  flavour: ArpingFlavour;
  log: Logger;
  helper: NetHelper;
}

class NamespaceBinding implements AddressBinding {
  readonly address: string;
  announcements = 0;
  /** Announcements arping confirmed sent (it exits about a second after sending). */
  private announced = 0;
  private readonly settings: NamespaceSettings;
  private socket: dgram.Socket | undefined;
  /** The address is on the interface, or on its way there / off it: each change waits for the one before. */
  private change: Promise<void> = Promise.resolve();
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(settings: NamespaceSettings) {
    this.settings = settings;
    this.address = `${settings.ip}:${settings.port}`;
  }

  async claim(onDatagram: (datagram: ClientDatagram) => void): Promise<void> {
    await this.addAddress();
    const socket = dgram.createSocket({ type: 'udp4', reuseAddr: true });
    socket.on('message', (data, remote) => {
      if (remote.family === 'IPv4') onDatagram({ ip: ipToUint32(remote.address), port: remote.port, data: data as Uint8Array<ArrayBuffer> });
    });
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('error', reject);
        socket.bind(this.settings.port, this.settings.ip, () => {
          socket.off('error', reject);
          resolve();
        });
      });
    } catch (error) {
      socket.close();
      await this.removeAddress();
      throw new FerryError(ErrorCode.IO, `cannot serve ${this.address} on this host: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, 'give the VM an address that nothing else on this host uses');
    }
    socket.on('error', () => undefined);
    try {
      socket.setRecvBufferSize(RECEIVE_BUFFER_BYTES);
    } catch {
      // The default buffer serves; only bursts suffer.
    }
    this.socket = socket;
    this.announce();
  }

  send(datagram: ClientDatagram): void {
    this.socket?.send(datagram.data, datagram.port, uint32ToIp(datagram.ip));
  }

  /** The pause: the address leaves this host's interface; the socket stays open so what it already holds is read. */
  withdraw(): void {
    this.cancelAnnouncements();
    void this.removeAddress();
  }

  /** Serving here again (a rollback, or settlement in this host's favour): the address comes back and is announced. */
  restore(): void {
    void this.addAddress().then(
      () => this.announce(),
      (error: unknown) => this.settings.log.error('could not take the VM\'s address back', { address: this.address, error: String(error) }),
    );
  }

  async release(): Promise<void> {
    this.cancelAnnouncements();
    const socket = this.socket;
    this.socket = undefined;
    if (socket) await new Promise<void>((resolve) => socket.close(() => resolve()));
    await this.removeAddress();
  }

  private addAddress(): Promise<void> {
    const { ip: address, device, helper } = this.settings;
    this.change = this.change.catch(() => undefined).then(() => ip(helper, ['-4', 'addr', 'add', `${address}/32`, 'dev', device], /File exists/));
    return this.change;
  }

  private removeAddress(): Promise<void> {
    const { ip: address, device, log, helper } = this.settings;
    this.change = this.change.catch(() => undefined).then(() => ip(helper, ['-4', 'addr', 'del', `${address}/32`, 'dev', device], /Cannot assign requested address/));
    return this.change.catch((error: unknown) => log.error('could not remove the VM\'s address from the interface', { address: this.address, error: String(error) }));
  }

  /** Gratuitous ARP on the schedule, each from its own short-lived arping. */
  private announce(): void {
    this.cancelAnnouncements();
    this.announcements = ANNOUNCE_SCHEDULE_MS.length;
    for (const atMs of ANNOUNCE_SCHEDULE_MS) {
      if (atMs === 0) {
        this.announceOnce();
        continue;
      }
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        this.announceOnce();
      }, atMs);
      timer.unref();
      this.timers.add(timer);
    }
  }

  private announceOnce(): void {
    const { flavour, device, ip: address, log, helper } = this.settings;
    void helper.run('arping', arpingArgs(flavour, device, address), this.address).then(({ code, stderr }) => {
      // iputils' arping exits 0 once it has sent an unsolicited ARP; Habets' exits 1 when nobody answers, which
      // nobody does to one. A message on stderr is a failure either way; 128 is a cancelled one.
      if (stderr.trim() === '' && (code === 0 || (flavour === 'habets' && code === 1))) {
        this.announced += 1;
        log.debug('gratuitous ARP sent', { address: this.address, announced: this.announced });
      } else if (code !== 128) {
        log.warn('gratuitous ARP failed', { address: this.address, code, stderr: stderr.trim() });
      }
    });
  }

  private cancelAnnouncements(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.settings.helper.cancel(this.address);
  }
}

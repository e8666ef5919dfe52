/**
 * A small layer-2 network on this machine, for namespaces mode (agent/vm/net/namespace.ts): two agent namespaces
 * and a client namespace on one Linux bridge, so that a VM's address can move between the agents and the client
 * learns where it went from gratuitous ARP, as on a real segment.
 *
 *          this namespace (the coordinator)
 *          PREFIXr-a ──────────── PREFIXc-a   control, unshaped:  10.N.1.1 ↔ 10.N.1.2
 *          PREFIXr-b ──────────── PREFIXc-b   control, unshaped:  10.N.2.1 ↔ 10.N.2.2
 *
 *          bridge PREFIXbr
 *           ├─ PREFIXp-a ──────── PREFIXd-a   in PREFIX-a, 10.N.0.1   (tbf when shaped; VM addresses are added here)
 *           ├─ PREFIXp-b ──────── PREFIXd-b   in PREFIX-b, 10.N.0.2   (tbf when shaped)
 *           └─ PREFIXp-c ──────── PREFIXd-c   in PREFIX-c, 10.N.0.100 (the clients)
 *
 * VM addresses come from 10.N.0.50-99. The coordinator reaches the agents over the control pairs, so its requests
 * never queue behind pages in a shaped link; pages and client datagrams cross the bridge. Needs root and iproute2.
 */
import { spawnSync } from 'node:child_process';
import { ErrorCode, FerryError } from '../../shared/errors.js';

export interface BridgeOptions {
  /** Up to 6 characters, starting every name this topology creates (interface names have 15 at most). */
  prefix: string;
  /** The second octet of its addresses (10.N.x.y): distinct for topologies that live at the same time. */
  octet: number;
  /** Rate-limit each agent's port with tbf at this many bits per second; none: unshaped. */
  rateBitsPerSec?: number;
}

export interface Bridge {
  namespaces: { a: string; b: string; client: string };
  /** The agents' interfaces on the bridge (--net-device). */
  devices: { a: string; b: string };
  /** Addresses on the bridge. */
  data: { a: string; b: string; client: string };
  /** The agents' control addresses, reached from this namespace. */
  control: { a: string; b: string };
  /** The i-th address for a VM (0-49). */
  vmAddress(i: number): string;
  teardown(): void;
}

function run(args: string[]): void {
  const result = spawnSync(args[0]!, args.slice(1), { encoding: 'utf8' });
  if (result.status !== 0) {
    throw new FerryError(ErrorCode.IO, `${args.join(' ')} failed: ${(result.stderr || result.error?.message || '').trim()}`, 'namespaces need root and iproute2 (ip, tc)');
  }
}

function names(prefix: string) {
  return {
    ns: { a: `${prefix}-a`, b: `${prefix}-b`, client: `${prefix}-c` },
    bridge: `${prefix}br`,
  };
}

/** Removes what a topology with this prefix left behind (a crashed run), and nothing else. */
export function removeBridge(prefix: string): void {
  const { ns, bridge } = names(prefix);
  for (const namespace of Object.values(ns)) spawnSync('ip', ['netns', 'del', namespace]);
  // Deleting a namespace deletes its ends of the veth pairs, and with them the ends here; the bridge stays.
  for (const side of ['a', 'b', 'c']) {
    spawnSync('ip', ['link', 'del', `${prefix}r-${side}`]);
    spawnSync('ip', ['link', 'del', `${prefix}p-${side}`]);
  }
  spawnSync('ip', ['link', 'del', bridge]);
}

export function buildBridge({ prefix, octet, rateBitsPerSec }: BridgeOptions): Bridge {
  if (!/^[a-z][a-z0-9]{0,5}$/.test(prefix)) throw new FerryError(ErrorCode.BAD_INPUT, `bridge prefix "${prefix}" must be 1-6 lowercase letters or digits`);
  if (process.getuid?.() !== 0) {
    throw new FerryError(ErrorCode.BAD_INPUT, 'network namespaces need root', 'run as root, or measure on loopback');
  }
  const { ns, bridge } = names(prefix);
  const net = `10.${octet}`;
  const data = { a: `${net}.0.1`, b: `${net}.0.2`, client: `${net}.0.100` };
  const control = { a: `${net}.1.2`, b: `${net}.2.2` };
  const devices = { a: `${prefix}d-a`, b: `${prefix}d-b` };
  removeBridge(prefix);
  try {
    run(['ip', 'link', 'add', bridge, 'type', 'bridge']);
    run(['ip', 'link', 'set', bridge, 'up']);
    const sides = [
      { side: 'a', namespace: ns.a, address: data.a, controlNet: 1 },
      { side: 'b', namespace: ns.b, address: data.b, controlNet: 2 },
      { side: 'c', namespace: ns.client, address: data.client, controlNet: undefined },
    ] as const;
    for (const { side, namespace, address, controlNet } of sides) {
      run(['ip', 'netns', 'add', namespace]);
      run(['ip', '-n', namespace, 'link', 'set', 'lo', 'up']);
      run(['ip', 'link', 'add', `${prefix}p-${side}`, 'type', 'veth', 'peer', 'name', `${prefix}d-${side}`, 'netns', namespace]);
      run(['ip', 'link', 'set', `${prefix}p-${side}`, 'master', bridge, 'up']);
      run(['ip', '-n', namespace, 'addr', 'add', `${address}/24`, 'dev', `${prefix}d-${side}`]);
      run(['ip', '-n', namespace, 'link', 'set', `${prefix}d-${side}`, 'up']);
      if (controlNet === undefined) continue;
      run(['ip', 'link', 'add', `${prefix}r-${side}`, 'type', 'veth', 'peer', 'name', `${prefix}c-${side}`, 'netns', namespace]);
      run(['ip', 'addr', 'add', `${net}.${controlNet}.1/24`, 'dev', `${prefix}r-${side}`]);
      run(['ip', '-n', namespace, 'addr', 'add', `${net}.${controlNet}.2/24`, 'dev', `${prefix}c-${side}`]);
      run(['ip', 'link', 'set', `${prefix}r-${side}`, 'up']);
      run(['ip', '-n', namespace, 'link', 'set', `${prefix}c-${side}`, 'up']);
      if (rateBitsPerSec !== undefined) {
        // tbf: the rate, a burst of at least rate / HZ plus a 64 KiB GSO packet, and 20 ms of queue.
        const burst = Math.max(Math.ceil(rateBitsPerSec / 8 / 250) + 65536, 131072);
        run(['ip', 'netns', 'exec', namespace, 'tc', 'qdisc', 'add', 'dev', `${prefix}d-${side}`, 'root', 'tbf', 'rate', `${rateBitsPerSec}bit`, 'burst', String(burst), 'latency', '20ms']);
      }
    }
  } catch (error) {
    removeBridge(prefix);
    throw error;
  }
  return {
    namespaces: ns,
    devices,
    data,
    control,
    vmAddress: (i) => `${net}.0.${50 + i}`,
    teardown: () => removeBridge(prefix),
  };
}

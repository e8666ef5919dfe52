/**
 * The network the two benchmark agents talk over.
 *
 * - loopback: both agents on 127.0.0.1.
 * - shaped (`--link 1gbit`): each agent in its own network namespace. A veth pair joins the two namespaces and
 *   carries the page stream through `tbf` rate limiting on both ends (this machine's `tc` has tbf but no netem);
 *   a second, unshaped veth pair joins each namespace to this one for the coordinator's control connections, and
 *   the cluster names the shaped addresses as the hosts' migration URLs. Needs root and iproute2.
 *
 * The addresses are private to namespaces this process creates and deletes.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { parseRate } from '../../shared/units.js';
import type { Cluster } from '../cluster.js';
import { startLocalAgent, type LocalAgent } from '../local-agent.js';
import type { Endpoints } from './baseline.js';

export interface BenchAgents {
  agents: [LocalAgent, LocalAgent];
  cluster: Cluster;
  stop(): Promise<void>;
}

export interface Link {
  /** `loopback`, or the shaped rate as written (`1gbit`). */
  name: string;
  /** The shaped rate in bytes per second; undefined on loopback. */
  shapedBytesPerSec: number | undefined;
  endpoints: Endpoints;
  /** The address the benchmark gives a service (kv) VM: one this link's agents serve in their address mode. */
  vmAddress: string;
  /** The network namespace a service's client runs in (undefined: this one). */
  clientNetns: string | undefined;
  startAgents(capacity: string, workdir: string): Promise<BenchAgents>;
  teardown(): void;
}

function portOf(url: string): string {
  return new URL(url).port;
}

/** The shared secret of the benchmark's agents. */
const token = randomBytes(32).toString('hex');

async function startPair(options: { name: string; host: string; netns?: string }[], capacity: string, workdir: string): Promise<[LocalAgent, LocalAgent]> {
  const started: LocalAgent[] = [];
  try {
    for (const option of options) {
      started.push(await startLocalAgent({ ...option, capacity, datastore: `${workdir}/${option.name}`, logLevel: 'warn', token }));
    }
  } catch (error) {
    await Promise.all(started.map((agent) => agent.stop()));
    throw error;
  }
  return started as [LocalAgent, LocalAgent];
}

export function loopbackLink(): Link {
  return {
    name: 'loopback',
    shapedBytesPerSec: undefined,
    endpoints: { receiverHost: '127.0.0.1' },
    vmAddress: '127.100.0.50',
    clientNetns: undefined,
    startAgents: async (capacity, workdir) => {
      const agents = await startPair([{ name: 'host-a', host: '127.0.0.1' }, { name: 'host-b', host: '127.0.0.1' }], capacity, workdir);
      return {
        agents,
        cluster: { hosts: agents.map((agent) => ({ name: agent.name, url: agent.url, token })) },
        stop: async () => void (await Promise.all(agents.map((agent) => agent.stop()))),
      };
    },
    teardown: () => undefined,
  };
}

const NS = ['ferry-bench-a', 'ferry-bench-b'] as const;
const DATA = ['10.213.0.1', '10.213.0.2'] as const;
const CONTROL_ROOT = ['10.213.1.1', '10.213.2.1'] as const;
const CONTROL_NS = ['10.213.1.2', '10.213.2.2'] as const;

function run(args: string[]): void {
  const result = spawnSync(args[0]!, args.slice(1), { encoding: 'utf8' });
  if (result.status !== 0) {
    throw new FerryError(ErrorCode.IO, `${args.join(' ')} failed: ${(result.stderr || result.error?.message || '').trim()}`, 'a shaped link needs root and iproute2 (ip, tc)');
  }
}

function deleteNamespaces(): void {
  for (const ns of NS) spawnSync('ip', ['netns', 'del', ns]);
  spawnSync('ip', ['link', 'del', 'fbr-a']);
  spawnSync('ip', ['link', 'del', 'fbr-b']);
}

/** Builds the two namespaces and their links; throws (after cleaning up) where that is not possible here. */
export function shapedLink(rateText: string): Link {
  const bytesPerSec = parseRate(rateText);
  const bitsPerSec = Math.round(bytesPerSec * 8);
  if (process.getuid?.() !== 0) {
    throw new FerryError(ErrorCode.BAD_INPUT, `--link ${rateText} needs root to create network namespaces`, 'run the benchmark as root, or without --link to measure on loopback');
  }
  deleteNamespaces();
  try {
    for (const ns of NS) run(['ip', 'netns', 'add', ns]);
    // The shaped data path between the two namespaces.
    run(['ip', 'link', 'add', 'fbd-a', 'netns', NS[0], 'type', 'veth', 'peer', 'name', 'fbd-b', 'netns', NS[1]]);
    // Unshaped control paths from this namespace to each.
    run(['ip', 'link', 'add', 'fbr-a', 'type', 'veth', 'peer', 'name', 'fbc-a', 'netns', NS[0]]);
    run(['ip', 'link', 'add', 'fbr-b', 'type', 'veth', 'peer', 'name', 'fbc-b', 'netns', NS[1]]);
    for (const [i, side] of (['a', 'b'] as const).entries()) {
      const ns = NS[i]!;
      run(['ip', '-n', ns, 'addr', 'add', `${DATA[i]}/24`, 'dev', `fbd-${side}`]);
      run(['ip', '-n', ns, 'addr', 'add', `${CONTROL_NS[i]}/24`, 'dev', `fbc-${side}`]);
      run(['ip', 'addr', 'add', `${CONTROL_ROOT[i]}/24`, 'dev', `fbr-${side}`]);
      for (const device of [`fbd-${side}`, `fbc-${side}`, 'lo']) run(['ip', '-n', ns, 'link', 'set', device, 'up']);
      run(['ip', 'link', 'set', `fbr-${side}`, 'up']);
      // tbf: the rate, a burst of at least rate / HZ plus a 64 KiB GSO packet, and 20 ms of queue.
      const burst = Math.max(Math.ceil(bitsPerSec / 8 / 250) + 65536, 131072);
      run(['ip', 'netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', `fbd-${side}`, 'root', 'tbf', 'rate', `${bitsPerSec}bit`, 'burst', String(burst), 'latency', '20ms']);
    }
  } catch (error) {
    deleteNamespaces();
    throw error;
  }
  return {
    name: rateText,
    shapedBytesPerSec: bytesPerSec,
    endpoints: { receiverHost: DATA[1], receiverNetns: NS[1], senderNetns: NS[0] },
    // Namespaces mode comes with the bridge and the client namespace; until then a service VM here is refused.
    vmAddress: '10.213.0.50',
    clientNetns: undefined,
    startAgents: async (capacity, workdir) => {
      const agents = await startPair([{ name: 'host-a', host: '0.0.0.0', netns: NS[0] }, { name: 'host-b', host: '0.0.0.0', netns: NS[1] }], capacity, workdir);
      return {
        agents,
        cluster: {
          hosts: agents.map((agent, i) => ({
            name: agent.name,
            url: `ws://${CONTROL_NS[i]}:${portOf(agent.url)}`,
            migrationUrl: `ws://${DATA[i]}:${portOf(agent.url)}`,
            token,
          })),
        },
        stop: async () => void (await Promise.all(agents.map((agent) => agent.stop()))),
      };
    },
    teardown: deleteNamespaces,
  };
}

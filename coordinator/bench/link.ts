/**
 * The network the two benchmark agents talk over.
 *
 * - loopback: both agents on 127.0.0.1, serving VMs' addresses in loopback mode.
 * - namespaces (`--link namespaces`, or a rate: `--link 1gbit`): each agent in its own network namespace on one
 *   bridge with a client namespace (bridge.ts), serving VMs' addresses in namespaces mode. With a rate, `tbf` shapes
 *   each agent's port (this machine's `tc` has tbf but no netem). The coordinator's control connections take
 *   unshaped veth pairs of their own; the cluster names the bridge addresses as the hosts' migration URLs. Needs
 *   root and iproute2.
 *
 * The addresses are private to namespaces this process creates and deletes.
 */
import { randomBytes } from 'node:crypto';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { parseRate } from '../../shared/units.js';
import type { Cluster } from '../cluster.js';
import { startLocalAgent, type LocalAgent } from '../local-agent.js';
import type { Endpoints } from './baseline.js';
import { buildBridge } from './bridge.js';

export interface BenchAgents {
  agents: [LocalAgent, LocalAgent];
  cluster: Cluster;
  stop(): Promise<void>;
}

export interface Link {
  /** `loopback`, `namespaces`, or the shaped rate as written (`1gbit`). */
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

async function startPair(options: { name: string; host: string; netns?: string; extraArgs?: string[] }[], capacity: string, workdir: string): Promise<[LocalAgent, LocalAgent]> {
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

/** The benchmark's bridge: fixed names, so that a run that crashed is cleaned up by the next. */
const BENCH_BRIDGE = { prefix: 'fbench', octet: 213 } as const;

/**
 * The agents in network namespaces on one bridge (bridge.ts), serving VMs' addresses in namespaces mode, with a
 * client namespace beside them; `namespaces` leaves the link unshaped, a rate (`1gbit`) shapes each agent's port.
 */
export function namespacesLink(rateText: string): Link {
  const bytesPerSec = rateText === 'namespaces' ? undefined : parseRate(rateText);
  if (process.getuid?.() !== 0) {
    throw new FerryError(ErrorCode.BAD_INPUT, `--link ${rateText} needs root to create network namespaces`, 'run the benchmark as root, or without --link to measure on loopback');
  }
  const bridge = buildBridge({ ...BENCH_BRIDGE, ...(bytesPerSec !== undefined ? { rateBitsPerSec: Math.round(bytesPerSec * 8) } : {}) });
  const { namespaces, devices, data, control } = bridge;
  return {
    name: rateText,
    shapedBytesPerSec: bytesPerSec,
    endpoints: { receiverHost: data.b, receiverNetns: namespaces.b, senderNetns: namespaces.a },
    vmAddress: bridge.vmAddress(0),
    clientNetns: namespaces.client,
    startAgents: async (capacity, workdir) => {
      const agents = await startPair([
        { name: 'host-a', host: '0.0.0.0', netns: namespaces.a, extraArgs: ['--net-mode', 'namespaces', '--net-device', devices.a] },
        { name: 'host-b', host: '0.0.0.0', netns: namespaces.b, extraArgs: ['--net-mode', 'namespaces', '--net-device', devices.b] },
      ], capacity, workdir);
      const controls = [control.a, control.b];
      const datas = [data.a, data.b];
      return {
        agents,
        cluster: {
          hosts: agents.map((agent, i) => ({
            name: agent.name,
            url: `ws://${controls[i]}:${portOf(agent.url)}`,
            migrationUrl: `ws://${datas[i]}:${portOf(agent.url)}`,
            token,
          })),
        },
        stop: async () => void (await Promise.all(agents.map((agent) => agent.stop()))),
      };
    },
    teardown: () => bridge.teardown(),
  };
}

/**
 * An in-memory twin of a ferry cluster: real Agent objects with real VMs (SharedArrayBuffer memory, vCPU worker
 * threads), joined by in-memory sockets instead of WebSockets, and driven by the real coordinator code. It runs
 * the same migration logic as the process tests, without processes or ports.
 */
import { Agent } from '../agent/agent.js';
import { greetDestination } from '../agent/migration/peer-client.js';
import { parseFaults } from '../agent/faults.js';
import { initChecksums } from '../shared/checksum.js';
import { createSocketPair, type FrameSocket } from '../shared/frame-socket.js';
import { createLogger } from '../shared/log.js';
import { controlOps, peerOps } from '../shared/protocol.js';
import { RpcConnection } from '../shared/rpc.js';
import type { Cluster } from '../coordinator/cluster.js';
import type { AgentClient, Connector } from '../coordinator/connect.js';

export interface MemoryNetwork {
  agents: Map<string, Agent>;
  cluster: Cluster;
  connect: Connector;
  /** Every peer socket opened so far, source end first: tests close them to cut the link. */
  peerLinks: FrameSocket[][];
  /** Breaks a peer link at the first message this returns true for (see SocketPairOptions.cut). */
  peerCut: ((fromDestination: boolean, data: Buffer) => boolean) | undefined;
  shutdown(): Promise<void>;
}

export async function createMemoryNetwork(hosts: { name: string; capacityBytes?: number; faults?: string }[]): Promise<MemoryNetwork> {
  await initChecksums();
  const agents = new Map<string, Agent>();
  const peerLinks: FrameSocket[][] = [];
  const network = { peerCut: undefined as MemoryNetwork['peerCut'] };
  const log = createLogger('memory', 'error');
  // Agent URLs are checked as ws:// URLs wherever they travel; in-memory hosts get made-up ones that no socket dials.
  const urlOf = (name: string): string => `ws://${name}.memory`;
  const agentAt = (url: string): Agent => {
    const agent = agents.get(url.replace(/^ws:\/\/(.*)\.memory$/, '$1'));
    if (!agent) throw new Error(`nothing at ${url}`);
    return agent;
  };
  for (const host of hosts) {
    agents.set(host.name, new Agent({
      name: host.name,
      capacityBytes: host.capacityBytes ?? 1024 ** 3,
      faults: parseFaults(host.faults),
      log,
      token: 'memory-network-token',
      dialPeer: async (url, migrationId, from, signal, _token, resume) => {
        const [sourceEnd, destinationEnd] = createSocketPair({ cut: (from, data) => network.peerCut?.(from === 1, data) ?? false });
        peerLinks.push([sourceEnd, destinationEnd]);
        agentAt(url).servePeer(new RpcConnection(destinationEnd, peerOps, {}));
        return greetDestination(new RpcConnection(sourceEnd, {}, peerOps), migrationId, from, signal, resume);
      },
      dialAgent: async (url) => {
        const [callerEnd, agentEnd] = createSocketPair({ cut: (from, data) => network.peerCut?.(from === 1, data) ?? false });
        agentAt(url).servePeer(new RpcConnection(agentEnd, peerOps, {}));
        return new RpcConnection(callerEnd, {}, peerOps);
      },
    }));
  }
  const connect: Connector = async (host): Promise<AgentClient> => {
    const [coordinatorEnd, agentEnd] = createSocketPair();
    agentAt(host.url).serveControl(new RpcConnection(agentEnd, controlOps, {}));
    return new RpcConnection(coordinatorEnd, {}, controlOps);
  };
  return Object.assign(network, {
    agents,
    cluster: { hosts: hosts.map((host) => ({ name: host.name, url: urlOf(host.name) })) },
    connect,
    peerLinks,
    shutdown: async () => {
      await Promise.all([...agents.values()].map((agent) => agent.shutdown()));
    },
  });
}

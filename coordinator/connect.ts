/**
 * The coordinator's control connection to one agent.
 */
import { PROTOCOL_VERSION } from '../shared/constants.js';
import { dialAgent, DIAL_TIMEOUT_MS } from '../shared/dial.js';
import { ErrorCode, FerryError } from '../shared/errors.js';
import { controlOps, type ControlOps, type HostInfo } from '../shared/protocol.js';
import type { RpcConnection } from '../shared/rpc.js';
import type { HostEntry } from './cluster.js';

export type AgentClient = RpcConnection<Record<never, never>, ControlOps>;

/** Dumps arrive as 1 MiB chunks inside MessagePack events. */
const MAX_REPLY_BYTES = 8 * 1024 * 1024;

export async function connectAgent(host: HostEntry): Promise<AgentClient> {
  return dialAgent({
    url: host.url,
    path: '/control',
    token: host.token,
    label: host.name,
    maxPayload: MAX_REPLY_BYTES,
    unreachableHint: `is ferry-agent running there? start it with \`ferry-agent --name ${host.name} --port ${portOf(host.url)}\``,
    unauthorizedHint: 'set FERRY_TOKEN, or --token-file, to the agent\'s token (it says where it wrote it when it starts: <datastore>/token)',
  }, controlOps);
}

function portOf(url: string): string {
  try {
    return new URL(url).port || '7001';
  } catch {
    return '7001';
  }
}

/** How the coordinator reaches an agent: WebSockets, or an in-memory network in tests. */
export type Connector = (host: HostEntry) => Promise<AgentClient>;

/** Connects, checks the agent speaks our protocol version, and returns its host info with the connection. */
export async function openHost(host: HostEntry, connect: Connector = connectAgent): Promise<{ client: AgentClient; info: HostInfo }> {
  const client = await connect(host);
  try {
    const info = await client.request('host.info', {}, { timeoutMs: DIAL_TIMEOUT_MS });
    if (info.version !== PROTOCOL_VERSION) {
      throw new FerryError(ErrorCode.PROTOCOL_VERSION, `${host.name} speaks protocol ${info.version}, this ferry speaks ${PROTOCOL_VERSION}`, 'run the same ferry version on every host');
    }
    if (info.name !== host.name) {
      throw new FerryError(ErrorCode.BAD_INPUT, `the agent at ${host.url} calls itself ${info.name}, not ${host.name}`, `fix the cluster file: \`ferry hosts rm ${host.name}\`, then add it under its own name`);
    }
    return { client, info };
  } catch (error) {
    client.close();
    throw error;
  }
}

/** Runs `action` with a connection to `host`, and always closes it. */
export async function withHost<T>(host: HostEntry, action: (client: AgentClient, info: HostInfo) => Promise<T>, connect: Connector = connectAgent): Promise<T> {
  const { client, info } = await openHost(host, connect);
  try {
    return await action(client, info);
  } finally {
    client.close();
  }
}

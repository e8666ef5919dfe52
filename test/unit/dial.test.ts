/**
 * The one dialer (shared/dial.ts), as the coordinator and the agents use it, against a real agent server and against
 * servers that fail in each way: every failure gets its own code, told apart by status and err.code, never by text.
 */
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { Agent } from '../../agent/agent.js';
import { parseFaults } from '../../agent/faults.js';
import { dialPeerAgent } from '../../agent/migration/peer-client.js';
import { startServer, type RunningServer } from '../../agent/server.js';
import { connectAgent } from '../../coordinator/connect.js';
import { dialSocket } from '../../shared/dial.js';
import { createLogger } from '../../shared/log.js';

const token = 'dial-test-token-0123456789abcdef';
let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const step of cleanup.reverse()) await step();
  cleanup = [];
});

async function realAgent(): Promise<RunningServer> {
  const agent = new Agent({ name: 'host-a', capacityBytes: 64 * 1024 * 1024, faults: parseFaults(undefined), log: createLogger('host-a', 'error'), token });
  cleanup.push(() => agent.shutdown());
  const server = await startServer(agent, '127.0.0.1', 0, token);
  cleanup.push(() => server.close());
  return server;
}

/** A plain HTTP server that answers every upgrade with `status`. */
async function answering(status: number): Promise<string> {
  const server = http.createServer();
  server.on('upgrade', (_request, socket) => socket.end(`HTTP/1.1 ${status} Nope\r\nConnection: close\r\n\r\n`));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  cleanup.push(() => new Promise((resolve) => server.close(() => resolve())));
  return `ws://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** A TCP server that takes connections and never says a word. */
async function silent(): Promise<string> {
  const sockets: net.Socket[] = [];
  const server = net.createServer((socket) => void sockets.push(socket));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  cleanup.push(() => new Promise((resolve) => {
    for (const socket of sockets) socket.destroy();
    server.close(() => resolve());
  }));
  return `ws://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

const failure = async (attempt: Promise<unknown>): Promise<{ code: string; message: string; hint?: string }> => {
  try {
    await attempt;
  } catch (error) {
    return error as { code: string; message: string; hint?: string };
  }
  throw new Error('the dial succeeded');
};

describe('dialling an agent', () => {
  it('connects with the cluster token, for the coordinator and for another agent', async () => {
    const { url } = await realAgent();
    const client = await connectAgent({ name: 'host-a', url, token });
    expect((await client.request('host.info', {}, { timeoutMs: 5000 })).name).toBe('host-a');
    client.close();
    const peer = await dialPeerAgent(url, token);
    expect(await peer.request('peer.holds', { migrationId: '0b9c2d4e-8f1a-4c3b-9d2e-7a6b5c4d3e2f', name: 'web1' }, { timeoutMs: 5000 })).toEqual({ state: 'none' });
    peer.close();
  });

  it('tells a refused token from anything else: FERRY_ERR_UNAUTHORIZED, saying whether a token was given', async () => {
    const { url } = await realAgent();
    expect(await failure(connectAgent({ name: 'host-a', url, token: 'wrong-token-0123456789abcdef' }))).toMatchObject({ code: 'FERRY_ERR_UNAUTHORIZED', message: expect.stringContaining('wrong token') });
    expect(await failure(connectAgent({ name: 'host-a', url }))).toMatchObject({ code: 'FERRY_ERR_UNAUTHORIZED', message: expect.stringContaining('no token given'), hint: expect.stringContaining('FERRY_TOKEN') });
    expect(await failure(dialPeerAgent(url, 'wrong-token-0123456789abcdef'))).toMatchObject({ code: 'FERRY_ERR_UNAUTHORIZED' });
  });

  it('calls a refused connection unreachable even when the address has "401" in it', async () => {
    // Nothing listens on port 401 here: "connect ECONNREFUSED 127.0.0.1:401" is not a refused token.
    const refused = await failure(connectAgent({ name: 'host-z', url: 'ws://127.0.0.1:401', token }));
    expect(refused).toMatchObject({ code: 'FERRY_ERR_UNREACHABLE', hint: expect.stringContaining('ferry-agent --name host-z --port 401') });
    expect(await failure(dialPeerAgent('ws://127.0.0.1:401', token))).toMatchObject({ code: 'FERRY_ERR_UNREACHABLE' });
  });

  it('calls another HTTP status at the upgrade unreachable, naming the status', async () => {
    for (const status of [403, 404, 500]) {
      const url = await answering(status);
      expect(await failure(connectAgent({ name: 'host-a', url, token }))).toMatchObject({ code: 'FERRY_ERR_UNREACHABLE', message: expect.stringContaining(`HTTP ${status}`) });
    }
  });

  it('gives up on a server that never answers the upgrade, and on a cancel', async () => {
    const url = await silent();
    expect(await failure(dialSocket({ url, path: '/control', token, timeoutMs: 300 }))).toMatchObject({ code: 'FERRY_ERR_UNREACHABLE', message: expect.stringContaining('did not answer within') });
    const cancel = new AbortController();
    const dialling = dialSocket({ url, path: '/peer', token, signal: cancel.signal });
    cancel.abort();
    expect(await failure(dialling)).toMatchObject({ code: 'FERRY_ERR_CANCELLED' });
  });
});

import type { AddressInfo } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { fromWebSocket } from '../../shared/frame-socket.js';
import { controlOps, peerOps, type HostInfo } from '../../shared/protocol.js';
import { RpcConnection, decodeMessage, encodeMessage } from '../../shared/rpc.js';

const noOps = {} as const;
/** The client may name any op; the server only knows controlOps, so peerOps are unknown to it. */
const clientRemoteOps = { ...controlOps, ...peerOps };

type Server = RpcConnection<typeof controlOps, typeof noOps>;
type Client = RpcConnection<typeof noOps, typeof clientRemoteOps>;

const hostInfo: HostInfo = { name: 'host-a', version: 1, capacityBytes: 8 * 1024 ** 3, usedBytes: 0, freeBytes: 8 * 1024 ** 3, vms: [], diskFreeBytes: 0, cpu: { userMs: 1, systemMs: 2 }, hostCpu: { vendor: 'GenuineIntel', model: 'test', flags: ['sse2'], level: null, masked: [] } };

let wss: WebSocketServer | undefined;
const sockets: WebSocket[] = [];

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.terminate();
  if (wss) {
    for (const client of wss.clients) client.terminate();
    await new Promise<void>((resolve) => wss!.close(() => resolve()));
    wss = undefined;
  }
});

/**
 * A real ws server on 127.0.0.1, port 0; `setup` registers handlers on every connection's RpcConnection and gets
 * the connection's raw WebSocket too.
 */
async function startServer(setup: (server: Server, socket: WebSocket) => void): Promise<{ url: string; servers: Server[] }> {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  wss = server;
  await new Promise<void>((resolve) => server.once('listening', () => resolve()));
  const servers: Server[] = [];
  server.on('connection', (socket) => {
    const rpc: Server = new RpcConnection(fromWebSocket(socket), controlOps, noOps);
    servers.push(rpc);
    setup(rpc, socket);
  });
  return { url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}`, servers };
}

async function openSocket(url: string): Promise<WebSocket> {
  const socket = new WebSocket(url);
  sockets.push(socket);
  await new Promise<void>((resolve, reject) => {
    socket.once('open', () => resolve());
    socket.once('error', reject);
  });
  return socket;
}

async function connect(url: string): Promise<Client> {
  return new RpcConnection(fromWebSocket(await openSocket(url)), noOps, clientRemoteOps);
}

async function rejection(promise: Promise<unknown>): Promise<FerryError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(FerryError);
    return error as FerryError;
  }
  throw new Error('expected the request to fail');
}

function standardHandlers(server: Server): void {
  server.handle('host.info', async () => hostInfo);
  server.handle('vm.info', async ({ name }) => {
    throw new FerryError(ErrorCode.VM_NOT_FOUND, `no VM named ${name} on host-a`, 'list VMs with ferry vm list');
  });
}

describe('RpcConnection over real WebSockets', () => {
  it('answers a request with its reply', async () => {
    const { url } = await startServer(standardHandlers);
    const client = await connect(url);
    expect(await client.request('host.info', {})).toEqual(hostInfo);
  });

  it('passes the request body, checked against its schema, to the handler', async () => {
    const seen: unknown[] = [];
    const { url } = await startServer((server) => {
      server.handle('vm.info', async (body) => {
        seen.push(body);
        throw new FerryError(ErrorCode.VM_NOT_FOUND, 'nope');
      });
    });
    const client = await connect(url);
    await rejection(client.request('vm.info', { name: 'web1' }));
    expect(seen).toEqual([{ name: 'web1' }]);
  });

  it('delivers a FerryError thrown by a handler as a rejected FerryError with the same code, message and hint', async () => {
    const { url } = await startServer(standardHandlers);
    const client = await connect(url);
    const error = await rejection(client.request('vm.info', { name: 'web9' }));
    expect(error.code).toBe('FERRY_ERR_VM_NOT_FOUND');
    expect(error.message).toBe('no VM named web9 on host-a');
    expect(error.hint).toBe('list VMs with ferry vm list');
  });

  it('turns a plain Error thrown by a handler into FERRY_ERR_INTERNAL', async () => {
    const { url } = await startServer((server) => {
      server.handle('host.info', async () => {
        throw new Error('disk on fire');
      });
    });
    const client = await connect(url);
    const error = await rejection(client.request('host.info', {}));
    expect(error.code).toBe('FERRY_ERR_INTERNAL');
    expect(error.message).toContain('disk on fire');
  });

  it('delivers events, in order, before the reply', async () => {
    const { url } = await startServer((server) => {
      server.handle('host.info', async (_body, context) => {
        await context.event({ step: 1 });
        await context.event({ step: 2 });
        await context.event({ step: 3 });
        return hostInfo;
      });
    });
    const client = await connect(url);
    const log: unknown[] = [];
    const reply = client.request('host.info', {}, { onEvent: (body) => log.push(body) }).then((info) => {
      log.push('reply');
      return info;
    });
    expect(await reply).toEqual(hostInfo);
    expect(log).toEqual([{ step: 1 }, { step: 2 }, { step: 3 }, 'reply']);
  });

  it('keeps concurrent requests apart by id', async () => {
    const { url } = await startServer((server) => {
      server.handle('host.info', async () => {
        await delay(30);
        return hostInfo;
      });
      server.handle('vm.info', async ({ name }) => {
        throw new FerryError(ErrorCode.VM_NOT_FOUND, `no ${name}`);
      });
    });
    const client = await connect(url);
    const slow = client.request('host.info', {});
    const fast = rejection(client.request('vm.info', { name: 'a1' }));
    const fast2 = rejection(client.request('vm.info', { name: 'b2' }));
    expect((await fast).message).toBe('no a1');
    expect((await fast2).message).toBe('no b2');
    expect(await slow).toEqual(hostInfo);
  });

  it('answers an op the server does not know with FERRY_ERR_PROTOCOL', async () => {
    const { url } = await startServer(standardHandlers);
    const client = await connect(url);
    const error = await rejection(client.request('peer.abort', { reason: 'testing' }));
    expect(error.code).toBe('FERRY_ERR_PROTOCOL');
    expect(error.message).toContain('peer.abort');
  });

  it('answers an op in the table without a handler with FERRY_ERR_PROTOCOL', async () => {
    const { url } = await startServer(standardHandlers);
    const client = await connect(url);
    const error = await rejection(client.request('vm.pause', { name: 'web1' }));
    expect(error.code).toBe('FERRY_ERR_PROTOCOL');
  });

  it('answers a request body that fails its schema with FERRY_ERR_BAD_INPUT and never calls the handler', async () => {
    let calls = 0;
    const { url } = await startServer((server) => {
      server.handle('vm.info', async () => {
        calls += 1;
        throw new FerryError(ErrorCode.VM_NOT_FOUND, 'handler ran');
      });
    });
    const client = await connect(url);
    const badName = await rejection(client.request('vm.info', { name: '!!not a name' }));
    expect(badName.code).toBe('FERRY_ERR_BAD_INPUT');
    expect(badName.hint).toBeTruthy();
    const extraField = await rejection(client.request('vm.info', { name: 'web1', extra: 1 } as unknown as { name: string }));
    expect(extraField.code).toBe('FERRY_ERR_BAD_INPUT');
    const missing = await rejection(client.request('vm.info', {} as unknown as { name: string }));
    expect(missing.code).toBe('FERRY_ERR_BAD_INPUT');
    expect(calls).toBe(0);
  });

  it('survives garbage frames from a raw client, answers them with FERRY_ERR_PROTOCOL, and keeps serving', async () => {
    const { url } = await startServer(standardHandlers);
    const raw = await openSocket(url);
    const replies: Buffer[] = [];
    raw.on('message', (data) => replies.push(data as Buffer));
    const garbage = [
      Buffer.from([0xc1, 0x00, 0xff]), // 0xC1: never valid MessagePack
      Buffer.from([0x85, 0xa1]), // a truncated map
      Buffer.from('hello, not msgpack'),
      encodeMessage({ t: 'req', id: 1, op: 'host.info', body: {} }).subarray(0, 5),
      Buffer.from([0x81, 0xa1, 0x74, 0xa3, 0x62, 0x61, 0x64]), // {t: "bad"}: valid MessagePack, not an envelope
    ];
    for (const frame of garbage) raw.send(frame);
    raw.send('a text frame');
    // A valid request on the same raw socket still gets its answer after all that.
    raw.send(encodeMessage({ t: 'req', id: 42, op: 'host.info', body: {} }));
    await expect.poll(() => replies.length, { timeout: 5000 }).toBe(garbage.length + 2);
    const decoded = replies.map((frame) => decodeMessage(frame));
    for (const message of decoded.slice(0, -1)) {
      expect(message).toMatchObject({ t: 'res', id: 0, ok: false, error: { code: 'FERRY_ERR_PROTOCOL' } });
    }
    expect(decoded.at(-1)).toMatchObject({ t: 'res', id: 42, ok: true, body: hostInfo });
    expect(raw.readyState).toBe(WebSocket.OPEN);

    // and another connection is served as usual
    const client = await connect(url);
    expect(await client.request('host.info', {})).toEqual(hostInfo);
  });

  it.each([
    ['closes', (socket: WebSocket) => socket.close(1011, 'going away')],
    ['terminates', (socket: WebSocket) => socket.terminate()],
  ])('rejects a pending request with FERRY_ERR_CONNECTION_LOST when the server %s the socket', async (_how, end) => {
    let handlerSignal: AbortSignal | undefined;
    const { url } = await startServer((server, socket) => {
      server.handle('host.info', (_body, context) => {
        handlerSignal = context.signal;
        end(socket);
        return new Promise(() => {}); // never answers
      });
    });
    const client = await connect(url);
    const error = await rejection(client.request('host.info', {}));
    expect(error.code).toBe('FERRY_ERR_CONNECTION_LOST');
    expect(client.signal.aborted).toBe(true);
    // the running handler sees its connection go
    await expect.poll(() => handlerSignal?.aborted, { timeout: 5000 }).toBe(true);
    // and a request made afterwards fails at once, with the same code
    expect((await rejection(client.request('host.info', {}))).code).toBe('FERRY_ERR_CONNECTION_LOST');
  });

  it('rejects with FERRY_ERR_TIMEOUT when no reply comes in time, and ignores the late reply', async () => {
    const { url } = await startServer((server) => {
      server.handle('host.info', async () => {
        await delay(200);
        return hostInfo;
      });
    });
    const client = await connect(url);
    const error = await rejection(client.request('host.info', {}, { timeoutMs: 20 }));
    expect(error.code).toBe('FERRY_ERR_TIMEOUT');
    expect(await client.request('host.info', {})).toEqual(hostInfo);
  });

  it('rejects a reply that does not match its schema with FERRY_ERR_PROTOCOL', async () => {
    const { url } = await startServer((server) => {
      server.handle('host.info', async () => ({ name: 'host-a' }) as unknown as HostInfo);
    });
    const client = await connect(url);
    expect((await rejection(client.request('host.info', {}))).code).toBe('FERRY_ERR_PROTOCOL');
  });
});

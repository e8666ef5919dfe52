/**
 * The agent's network face: one HTTP server that upgrades `/control` (the coordinator) and `/peer` (another agent's
 * migration) to WebSockets, and `/pages` to a page stream an outgoing migration of this host waits for
 * (shared/page-stream.ts). Anything else is refused before the upgrade.
 */
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { WebSocketServer } from 'ws';
import { PAGES_PER_FRAME, PAGE_SIZE } from '../shared/constants.js';
import { controlOps, pageStreamTicketSchema, peerOps } from '../shared/protocol.js';
import { fromWebSocket } from '../shared/frame-socket.js';
import { RpcConnection } from '../shared/rpc.js';
import { isAuthorized } from '../shared/token.js';
import { PAGE_STREAM_PATH, PAGE_STREAM_PROTOCOL, PAGE_STREAM_TICKET_HEADER } from '../shared/page-stream.js';
import type { Agent } from './agent.js';

/** The largest frame any peer may send: one page-data message plus room for a control message. */
export const MAX_FRAME_BYTES = PAGES_PER_FRAME * PAGE_SIZE + 64 * 1024;

export interface RunningServer {
  url: string;
  close(): Promise<void>;
}

export interface TlsFiles {
  cert: Buffer;
  key: Buffer;
}

/**
 * Listens on `host:port`, over TLS (wss://) when `tls` is given. Clients trust the certificate through the system's
 * CAs, or NODE_EXTRA_CA_CERTS for a private CA.
 */
export async function startServer(agent: Agent, host: string, port: number, token: string, tls?: TlsFiles): Promise<RunningServer> {
  // Plain HTTP gets a hint and nothing else.
  const hint = (_request: http.IncomingMessage, response: http.ServerResponse): void => {
    response.writeHead(426, { 'content-type': 'text/plain' }).end('ferry-agent speaks WebSocket on /control and /peer\n');
  };
  const server = tls ? https.createServer({ cert: tls.cert, key: tls.key }, hint) : http.createServer(hint);
  const sockets = new WebSocketServer({ noServer: true, maxPayload: MAX_FRAME_BYTES, perMessageDeflate: false });
  /** Page streams handed to migrations: upgraded sockets the HTTP server no longer tracks, closed with it. */
  const pageStreams = new Set<Socket>();

  server.on('upgrade', (request, socket, head) => {
    // Nothing a client sends before the upgrade may take the agent down: a reset socket or a URL that does not
    // parse is refused, never thrown.
    socket.on('error', () => socket.destroy());
    let path: string;
    try {
      path = new URL(request.url ?? '/', 'ws://agent').pathname;
    } catch {
      path = '';
    }
    if (path !== '/control' && path !== '/peer' && path !== PAGE_STREAM_PATH) {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n');
      return;
    }
    if (!isAuthorized(request.headers.authorization, token)) {
      socket.end('HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nConnection: close\r\n\r\n');
      return;
    }
    if (path === PAGE_STREAM_PATH) {
      // The destination of one of this host's migrations, dialling back with the ticket it was given (peer.stream).
      // It sends nothing after its request until this answers, and then nothing at all.
      const ticket = request.headers[PAGE_STREAM_TICKET_HEADER];
      if (request.headers.upgrade?.toLowerCase() !== PAGE_STREAM_PROTOCOL || typeof ticket !== 'string' || !pageStreamTicketSchema.safeParse(ticket).success || head.length > 0) {
        socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
        return;
      }
      const stream = socket as Socket;
      if (!agent.pageStreams.take(ticket, stream)) {
        socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n');
        return;
      }
      pageStreams.add(stream);
      stream.once('close', () => pageStreams.delete(stream));
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${PAGE_STREAM_PROTOCOL}\r\n\r\n`);
      return;
    }
    sockets.handleUpgrade(request, socket, head, (ws) => {
      const socket = fromWebSocket(ws);
      if (path === '/control') agent.serveControl(new RpcConnection(socket, controlOps, {}));
      else agent.servePeer(new RpcConnection(socket, peerOps, {}));
    });
  });

  server.on('clientError', (_error, socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const address = server.address() as AddressInfo;
  const shownHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;

  return {
    url: `${tls ? 'wss' : 'ws'}://${shownHost}:${address.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const client of sockets.clients) client.terminate();
        for (const stream of pageStreams) stream.destroy();
        sockets.close();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/**
 * `ferry ui`'s HTTP server: the page and its assets (built into dist/ui by `npm run build`), the sign-in (access.ts),
 * the cluster's events as server-sent events (relay.ts), the actions (actions.ts) and bench results
 * (bench-results.ts).
 *
 *   GET  /                      the page (it asks for the cluster token when there is no session)
 *   GET  /signin?code=...       a one-time sign-in link: sets the session cookie and lands on /
 *   GET  /api/session           the session's CSRF token and the cluster's hosts, or 401
 *   POST /api/login             {token}: the cluster token, for a session
 *   POST /api/logout
 *   GET  /api/events?heat=VM    server-sent events: a snapshot, then every event; heat-map frames of VM
 *   GET  /api/vm?name=VM        one VM's info (with its log), asked once when a page opens it
 *   POST /api/action/NAME       an action (actions.ts), with the CSRF header
 *   GET  /api/bench[?dir=DIR]   results folders under --bench, or one folder; /api/bench/chart?dir=&name= a chart
 *
 * The cluster token appears in no URL and no log line: it is only ever read from a POST body.
 */
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ErrorCode, FerryError, toFerryError } from '../../shared/errors.js';
import { vmNameSchema } from '../../shared/protocol.js';
import type { Cluster } from '../cluster.js';
import { connectAgent, withHost, type Connector } from '../connect.js';
import { locateVm } from '../inventory.js';
import type { ClusterStore } from '../store/store.js';
import { Access, CSRF_HEADER, clearedSessionCookie, rightHost, sameOrigin, sessionCookie } from './access.js';
import { Actions } from './actions.js';
import { listBenchFolders, readBenchChart, readBenchFolder } from './bench-results.js';
import { Relay, type UiEvent } from './relay.js';

/** The page's files, as `npm run build` leaves them: dist/ui beside dist/coordinator. */
const ASSETS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../ui');
const ASSET_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.svg': 'image/svg+xml',
};
const ASSET_NAME = /^\/(index\.html|style\.css|[a-z-]+\.js|vendor\/[a-z-]+(\.min)?\.js)$/;
/** Vega compiles its expressions with `new Function`: the page's scripts come from here only, but may eval. */
const PAGE_POLICY = "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
const MAX_BODY_BYTES = 64 * 1024;
/** A page that reads slowly is sent no heat-map frames while this much is unsent to it. */
const SLOW_PAGE_BYTES = 1024 * 1024;

export interface UiServerOptions {
  host: string;
  port: number;
  cluster: Cluster;
  store?: ClusterStore | undefined;
  /** Where `ferry bench` results folders are looked for (default ./bench-results). */
  benchRoot?: string;
  connect?: Connector;
}

export interface UiServer {
  /** http://host:port */
  url: string;
  /** A one-time sign-in link, good for a minute. */
  signInUrl(): string;
  close(): Promise<void>;
}

class HttpError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

function statusOf(error: FerryError): number {
  switch (error.code) {
    case ErrorCode.BAD_INPUT: return 400;
    case ErrorCode.VM_NOT_FOUND: return 404;
    case ErrorCode.UNREACHABLE: return 502;
    default: return 409;
  }
}

async function readBody(request: http.IncomingMessage): Promise<unknown> {
  if (!(request.headers['content-type'] ?? '').startsWith('application/json')) throw new HttpError(415, 'send JSON (content-type: application/json)');
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, 'body too large');
    chunks.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
  } catch {
    throw new HttpError(400, 'the body is not JSON');
  }
}

function sendJson(response: http.ServerResponse, status: number, body: unknown, headers: http.OutgoingHttpHeaders = {}): void {
  response.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', ...headers }).end(JSON.stringify(body));
}

/**
 * The names a browser may use for this server (its Host header), and the one to print. Bound to one address: that
 * address (and `localhost` for loopback). Bound to all (`--host 0.0.0.0`): every address of this machine's interfaces,
 * and its host name, which is what is printed.
 */
function namesOf(address: AddressInfo): { origin: string; hosts: string[] } {
  const bracket = (ip: string, family: string): string => (family === 'IPv6' || family === '6' ? `[${ip}]` : ip);
  const { port } = address;
  if (address.address === '0.0.0.0' || address.address === '::') {
    const ips = Object.values(os.networkInterfaces()).flat().filter((entry) => entry !== undefined)
      .map((entry) => bracket(entry.address, String(entry.family)));
    const names = [os.hostname().toLowerCase(), 'localhost', ...ips];
    return { origin: `http://${os.hostname().toLowerCase()}:${port}`, hosts: names.map((name) => `${name}:${port}`) };
  }
  const shown = bracket(address.address, address.family);
  const loopback = address.address === '127.0.0.1' || address.address === '::1';
  return { origin: `http://${shown}:${port}`, hosts: [`${shown}:${port}`, ...(loopback ? [`localhost:${port}`] : [])] };
}

export async function startUiServer(options: UiServerOptions): Promise<UiServer> {
  const { cluster } = options;
  const connect = options.connect ?? connectAgent;
  const access = new Access(cluster.hosts.map((host) => host.token ?? ''));
  const relay = new Relay(cluster, connect);
  const actions = new Actions(cluster, relay, options.store);
  const benchRoot = options.benchRoot ?? path.join(process.cwd(), 'bench-results');
  const pages = new Set<http.ServerResponse>();
  let origin = '';
  let allowedHosts: string[] = [];
  let origins: string[] = [];

  const serveAsset = async (pathname: string, response: http.ServerResponse): Promise<void> => {
    const name = pathname === '/' ? '/index.html' : pathname;
    if (!ASSET_NAME.test(name)) throw new HttpError(404, 'not found');
    const body = await readFile(path.join(ASSETS, name)).catch(() => {
      throw new HttpError(404, `${name} is not built: run npm run build`);
    });
    response.writeHead(200, {
      'content-type': ASSET_TYPES[path.extname(name)] ?? 'application/octet-stream',
      'content-security-policy': PAGE_POLICY, 'x-content-type-options': 'nosniff', 'referrer-policy': 'no-referrer', 'cache-control': 'no-cache',
    }).end(body);
  };

  const serveEvents = (url: URL, request: http.IncomingMessage, response: http.ServerResponse): void => {
    response.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
    const send = (event: UiEvent): void => {
      if (event.kind === 'heat' && (event.name !== heat || response.writableLength > SLOW_PAGE_BYTES)) return;
      response.write(`data: ${JSON.stringify(event)}\n\n`);
    };
    const wanted = url.searchParams.get('heat');
    const heat = wanted !== null && vmNameSchema.safeParse(wanted).success ? wanted : undefined;
    for (const event of relay.snapshot()) send(event);
    const stop = relay.subscribe(send);
    const stopHeat = heat === undefined ? undefined : relay.watchHeat(heat);
    pages.add(response);
    request.on('close', () => {
      stop();
      stopHeat?.();
      pages.delete(response);
    });
  };

  const route = async (request: http.IncomingMessage, response: http.ServerResponse): Promise<void> => {
    if (!rightHost(request, allowedHosts)) throw new HttpError(421, 'this server answers only to the address ferry ui printed');
    const url = new URL(request.url ?? '/', origin);
    const { pathname } = url;
    const method = request.method ?? 'GET';
    if (method === 'GET' && pathname === '/signin') {
      const session = access.redeem(url.searchParams.get('code') ?? '');
      if (!session) {
        response.writeHead(303, { location: '/?signin=expired', 'cache-control': 'no-store' }).end();
        return;
      }
      response.writeHead(303, { location: '/', 'set-cookie': sessionCookie(session), 'cache-control': 'no-store', 'referrer-policy': 'no-referrer' }).end();
      return;
    }
    if (!pathname.startsWith('/api/')) {
      if (method !== 'GET') throw new HttpError(405, 'method not allowed');
      await serveAsset(pathname, response);
      return;
    }
    if (method === 'POST' && pathname === '/api/login') {
      if (!sameOrigin(request, origins)) throw new HttpError(403, 'cross-site request refused');
      const body = await readBody(request) as { token?: unknown };
      const session = typeof body.token === 'string' ? access.logIn(body.token) : undefined;
      if (!session) throw new HttpError(401, 'that is not the cluster\'s token');
      sendJson(response, 200, { ok: true }, { 'set-cookie': sessionCookie(session) });
      return;
    }
    const session = access.session(request);
    if (!session) throw new HttpError(401, 'sign in: open the link ferry ui printed, or give the cluster token');
    if (method === 'POST') {
      if (!access.mayChange(request, origins)) throw new HttpError(403, `cross-site request refused: a change needs this page's ${CSRF_HEADER} header and origin`);
      if (pathname === '/api/logout') {
        access.logOut(request);
        sendJson(response, 200, { ok: true }, { 'set-cookie': clearedSessionCookie });
        return;
      }
      const action = /^\/api\/action\/([a-z]+)$/.exec(pathname)?.[1];
      if (!action) throw new HttpError(404, 'no such action');
      sendJson(response, 200, await actions.run(action, await readBody(request)));
      return;
    }
    if (method !== 'GET') throw new HttpError(405, 'method not allowed');
    switch (pathname) {
      case '/api/session':
        sendJson(response, 200, { csrf: session.csrf, hosts: cluster.hosts.map((host) => ({ name: host.name, url: host.url })) });
        return;
      case '/api/events':
        serveEvents(url, request, response);
        return;
      case '/api/vm': {
        const name = vmNameSchema.parse(url.searchParams.get('name') ?? '');
        const { host } = await locateVm(cluster, name, connect);
        sendJson(response, 200, await withHost(host, (client) => client.request('vm.info', { name }), connect));
        return;
      }
      case '/api/bench': {
        const dir = url.searchParams.get('dir');
        sendJson(response, 200, dir ? await readBenchFolder(dir) : { root: path.resolve(benchRoot), folders: await listBenchFolders(benchRoot) });
        return;
      }
      case '/api/bench/chart': {
        const svg = await readBenchChart(url.searchParams.get('dir') ?? '', url.searchParams.get('name') ?? '');
        response.writeHead(200, { 'content-type': 'image/svg+xml', 'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; sandbox", 'x-content-type-options': 'nosniff' }).end(svg);
        return;
      }
      default:
        throw new HttpError(404, 'not found');
    }
  };

  const server = http.createServer((request, response) => {
    route(request, response).catch((caught: unknown) => {
      if (response.headersSent) {
        response.destroy();
        return;
      }
      if (caught instanceof HttpError) {
        sendJson(response, caught.status, { error: { code: 'FERRY_ERR_UI', message: caught.message } });
        return;
      }
      const error = toFerryError(caught);
      sendJson(response, statusOf(error), { error: error.toPayload() });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => reject(error.code === 'EADDRINUSE'
      ? new FerryError(ErrorCode.BAD_INPUT, `${options.host}:${options.port} is in use`, 'pick another --port (0: any free one)')
      : error));
    server.listen(options.port, options.host, () => resolve());
  });
  const address = server.address() as AddressInfo;
  ({ origin, hosts: allowedHosts } = namesOf(address));
  origins = allowedHosts.map((host) => `http://${host}`);
  relay.start();

  return {
    url: origin,
    signInUrl: () => `${origin}/signin?code=${access.signInCode()}`,
    close: async () => {
      await actions.close();
      await relay.close();
      for (const page of pages) page.end();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}

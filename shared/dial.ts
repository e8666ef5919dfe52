/**
 * The one way to open a connection to an agent, for the coordinator (`/control`) and for other agents (`/peer`):
 * the token on the upgrade, a zero mask, a deadline, cancellation, TLS trusted through the system's CAs (or
 * NODE_EXTRA_CA_CERTS), and every failure told apart by what the socket reports, never by its message text:
 *
 *   the agent answered the upgrade with an HTTP status (ws's `unexpected-response`):
 *     401                    -> FERRY_ERR_UNAUTHORIZED (the token)
 *     anything else          -> FERRY_ERR_UNREACHABLE, naming the status (not a ferry-agent there, or a proxy)
 *   the connection failed (`error` with `err.code`):
 *     a certificate code     -> FERRY_ERR_UNREACHABLE with the trust hint (NODE_EXTRA_CA_CERTS)
 *     ECONNREFUSED, ENOTFOUND, ... -> FERRY_ERR_UNREACHABLE with the caller's hint
 *   no answer in time        -> FERRY_ERR_UNREACHABLE ("did not answer within 5 s")
 *   the caller's signal      -> FERRY_ERR_CANCELLED
 *
 * The zero mask: the dialling side is the WebSocket client, which must mask every frame; a zero mask makes ws skip
 * the masking pass (and the copy it needs) at both ends. Masking protects browsers' proxies, and there are none
 * between ferry's processes.
 */
import type { IncomingMessage } from 'node:http';
import WebSocket from 'ws';
import { ErrorCode, FerryError } from './errors.js';
import { fromWebSocket } from './frame-socket.js';
import type { OpTable } from './protocol.js';
import { RpcConnection } from './rpc.js';
import { bearer } from './token.js';

export const DIAL_TIMEOUT_MS = 5000;

/** Node's codes for a certificate that cannot be trusted, and for a TLS handshake that failed. */
const CERTIFICATE_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'CERT_UNTRUSTED', 'CERT_REJECTED',
  'CERT_SIGNATURE_FAILURE', 'ERR_TLS_CERT_ALTNAME_INVALID', 'EPROTO',
]);

export function isCertificateError(code: string | undefined): boolean {
  return code !== undefined && (CERTIFICATE_CODES.has(code) || code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_'));
}

export interface DialOptions {
  /** The agent's base URL (ws:// or wss://). */
  url: string;
  path: '/control' | '/peer';
  token?: string | undefined;
  /** How the agent is called in messages: its host name, or "the agent at URL". */
  label?: string | undefined;
  /** What to do when it cannot be reached at all (the caller knows best: start it, check the network). */
  unreachableHint?: string | undefined;
  /** What to do when it refuses the token. */
  unauthorizedHint?: string | undefined;
  timeoutMs?: number | undefined;
  signal?: AbortSignal | undefined;
  /** The largest message accepted from the agent. */
  maxPayload?: number | undefined;
}

/** Opens the connection, or throws a FerryError that says which failure it was (see the table above). */
export async function dialSocket(options: DialOptions): Promise<WebSocket> {
  const label = options.label ?? `the agent at ${options.url}`;
  const timeoutMs = options.timeoutMs ?? DIAL_TIMEOUT_MS;
  if (options.signal?.aborted) throw cancelled(label);
  let socket: WebSocket;
  try {
    socket = new WebSocket(`${options.url.replace(/\/$/, '')}${options.path}`, {
      generateMask: (mask: Buffer) => mask.fill(0),
      ...(options.token ? { headers: bearer(options.token) } : {}),
      perMessageDeflate: false,
      ...(options.maxPayload ? { maxPayload: options.maxPayload } : {}),
    });
  } catch (error) {
    throw new FerryError(ErrorCode.BAD_INPUT, `${options.url} is not an agent URL: ${(error as Error).message}`, 'an agent URL looks like ws://127.0.0.1:7001');
  }
  await new Promise<void>((resolve, reject) => {
    let settled = false;
    const finish = (error?: FerryError): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      if (!error) {
        resolve();
        return;
      }
      socket.removeAllListeners('open');
      socket.on('error', () => undefined); // terminate() may still report the aborted handshake
      socket.terminate();
      reject(error);
    };
    const onAbort = (): void => finish(cancelled(label));
    const timer = setTimeout(() => finish(new FerryError(
      ErrorCode.UNREACHABLE,
      `${label} did not answer within ${timeoutMs / 1000} s`,
      options.unreachableHint ?? 'check that it runs and that this host can reach it',
    )), timeoutMs);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    socket.once('open', () => finish());
    socket.once('unexpected-response', (_request: unknown, response: IncomingMessage) => {
      response.resume();
      finish(refusal(label, options, response.statusCode ?? 0));
    });
    socket.once('error', (error: NodeJS.ErrnoException) => finish(failure(label, options, error)));
  });
  return socket;
}

/** Dials and wraps the connection for requests of `remoteOps`. */
export async function dialAgent<Remote extends OpTable>(options: DialOptions, remoteOps: Remote): Promise<RpcConnection<Record<never, never>, Remote>> {
  return new RpcConnection(fromWebSocket(await dialSocket(options)), {}, remoteOps);
}

function refusal(label: string, options: DialOptions, status: number): FerryError {
  if (status === 401) {
    return new FerryError(
      ErrorCode.UNAUTHORIZED,
      `${label} refused the connection: ${options.token ? 'wrong token' : 'no token given'}`,
      options.unauthorizedHint ?? 'give every agent and ferry the cluster\'s token (--token-file or FERRY_TOKEN)',
    );
  }
  return new FerryError(
    ErrorCode.UNREACHABLE,
    `${label} answered HTTP ${status} instead of a ferry-agent's WebSocket upgrade`,
    'check the URL: is a ferry-agent listening there, and not another server or a proxy?',
  );
}

function failure(label: string, options: DialOptions, error: NodeJS.ErrnoException): FerryError {
  if (isCertificateError(error.code)) {
    return new FerryError(
      ErrorCode.UNREACHABLE,
      `cannot trust ${label}: ${error.message} (${error.code})`,
      'trust the agent\'s certificate: set NODE_EXTRA_CA_CERTS to the PEM of the CA that signed it (or of the certificate itself)',
    );
  }
  return new FerryError(
    ErrorCode.UNREACHABLE,
    `cannot reach ${label}: ${error.message}`,
    options.unreachableHint ?? 'check that it runs and that this host can reach it',
  );
}

function cancelled(label: string): FerryError {
  return new FerryError(ErrorCode.CANCELLED, `the connection to ${label} was cancelled`, 'nothing was changed');
}

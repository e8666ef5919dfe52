/**
 * The page stream's own connection: a plain TCP (or TLS) connection beside the peer WebSocket, carrying page frames
 * (page-frame.ts: each header followed by its data) one after the other as bytes, with no framing of its own.
 *
 * Why a connection of its own: the destination reads it with Node's `onread`, into a buffer it picks for each read,
 * so the pages of a frame are read by the kernel straight into their place in guest memory. Over the WebSocket, ws
 * joins each 1 MiB message from 64 KiB socket reads into a fresh buffer (a copy into memory the OS has to back, and
 * garbage to collect), and the receiver copies it into guest memory again. On this project's 2-core machines
 * (bench/probes/tcp-stream.mjs) 1 GiB of hashed pages moved at 2.5 GiB/s this way, at raw TCP's CPU cost, against
 * 1.2-1.4 GiB/s over ws.
 *
 * `onread` is an option of the side that connects, so the destination dials the source: an HTTP upgrade on the
 * source agent's own port (the same listener as `/control` and `/peer`, and the same TLS):
 *
 *   destination                                    source agent
 *   GET /pages HTTP/1.1
 *   Upgrade: ferry-pages
 *   Authorization: Bearer <cluster token>
 *   Ferry-Ticket: <32 hex digits, from peer.stream>
 *                                                  HTTP/1.1 101 Switching Protocols   (a ticket it handed out)
 *                                                  ... page frames, once peer.stream has been answered ...
 *
 * The source sends nothing on it until the destination has answered `peer.stream` on the peer WebSocket, so the
 * response head is never followed by page bytes in the same read. Everything else of the migration (sync, verify,
 * activate) stays on the WebSocket; `peer.sync` and `peer.verify` say how many bytes the stream has carried so far,
 * and the destination answers them only once it has taken that many (target.ts).
 */
import net from 'node:net';
import tls from 'node:tls';
import { ErrorCode, FerryError } from './errors.js';
import type { FrameSocket } from './frame-socket.js';

export const PAGE_STREAM_PATH = '/pages';
export const PAGE_STREAM_PROTOCOL = 'ferry-pages';
export const PAGE_STREAM_TICKET_HEADER = 'ferry-ticket';

/**
 * What reads a stream: `next` gives the buffer the next socket read fills (at most its length is read), `took` says
 * how many bytes that read put there. `took` may throw: the stream is then closed with that error.
 */
export interface StreamConsumer {
  next(): Uint8Array;
  took(bytes: number): void;
}

/** A read-into-place connection whose consumer can be changed between reads. */
export interface PageStreamConnection {
  readonly socket: net.Socket;
  /** Who reads what arrives next. */
  consume(consumer: StreamConsumer): void;
}

/** Nothing is expected: any byte is an error. */
const NOTHING: StreamConsumer = {
  next: () => Buffer.alloc(64 * 1024),
  took: () => {
    throw new FerryError(ErrorCode.PROTOCOL, 'the page stream sent bytes before it was asked to', 'the peer is not a compatible ferry-agent');
  },
};

/** Reads the HTTP response head (up to the blank line) a byte budget at a time. */
class ResponseHead implements StreamConsumer {
  private readonly buffer = Buffer.alloc(4096);
  private length = 0;
  private readonly done: (head: string) => void;
  constructor(done: (head: string) => void) {
    this.done = done;
  }
  next(): Uint8Array {
    return this.buffer.subarray(this.length);
  }
  took(bytes: number): void {
    this.length += bytes;
    const text = this.buffer.subarray(0, this.length).toString('latin1');
    const end = text.indexOf('\r\n\r\n');
    if (end >= 0) {
      if (end + 4 !== this.length) throw new FerryError(ErrorCode.PROTOCOL, 'the page stream sent bytes after its upgrade before it was asked to', 'the peer is not a compatible ferry-agent');
      this.done(text.slice(0, end));
    } else if (this.length === this.buffer.length) {
      throw new FerryError(ErrorCode.PROTOCOL, 'the answer to the page stream\'s upgrade is longer than 4 KiB', 'the peer is not a compatible ferry-agent');
    }
  }
}

export interface DialPageStreamOptions {
  /** The source agent's URL (ws:// or wss://), as the cluster knows it. */
  url: string;
  token: string;
  ticket: string;
  timeoutMs: number;
}

/**
 * Opens the page stream to the source agent at `url` and completes the upgrade. Throws a FerryError that says what
 * failed (refused, unreachable, not a ferry-agent, too slow); the caller falls back to the WebSocket.
 */
export async function dialPageStream(options: DialPageStreamOptions): Promise<PageStreamConnection> {
  let url: URL;
  try {
    url = new URL(options.url);
  } catch {
    throw new FerryError(ErrorCode.BAD_INPUT, `${options.url} is not an agent URL`, 'an agent URL looks like ws://127.0.0.1:7001');
  }
  const secure = url.protocol === 'wss:';
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = Number(url.port || (secure ? 443 : 80));
  let consumer: StreamConsumer = NOTHING;
  let failed: Error | undefined;
  // Node asks for the next read's buffer right after each read, so a read may land in a buffer of the consumer
  // before the current one (the upgrade's, or the idle one's before `consume`): its bytes are then handed on.
  let supplier: StreamConsumer = NOTHING;
  let supplied: Uint8Array = Buffer.alloc(0);
  const onread = {
    buffer: (): Uint8Array => {
      supplier = consumer;
      supplied = consumer.next();
      return supplied;
    },
    callback: (bytes: number): boolean => {
      if (failed) return false;
      try {
        if (supplier === consumer) consumer.took(bytes);
        else handOn(supplied.subarray(0, bytes));
      } catch (error) {
        failed = error as Error;
        consumer = NOTHING;
        socket.destroy(failed);
        return false;
      }
      return true;
    },
  };
  const handOn = (bytes: Uint8Array): void => {
    let at = 0;
    while (at < bytes.length) {
      const into = consumer.next();
      const length = Math.min(into.length, bytes.length - at);
      into.set(bytes.subarray(at, at + length));
      at += length;
      consumer.took(length);
    }
  };
  const socket: net.Socket = secure
    ? tls.connect({ host, port, servername: net.isIP(host) ? undefined : host, onread } as tls.ConnectionOptions)
    : net.connect({ host, port, onread });
  socket.setNoDelay(true);
  const label = `the page stream to ${options.url}`;
  // The upgrade's own listeners, removed once it is done (only these: a TLS socket has listeners of its own).
  let onError: ((error: Error) => void) | undefined;
  let onClose: (() => void) | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new FerryError(ErrorCode.TIMEOUT, `${label} did not open within ${options.timeoutMs} ms`, 'check that the destination can reach the source at the URL the cluster has for it (ferry hosts add --migration-url)')), options.timeoutMs);
      onError = (error) => {
        clearTimeout(timer);
        reject(error instanceof FerryError ? error : new FerryError(ErrorCode.UNREACHABLE, `cannot open ${label}: ${error.message}`, 'check that the destination can reach the source at the URL the cluster has for it (ferry hosts add --migration-url)'));
      };
      onClose = () => {
        clearTimeout(timer);
        reject(new FerryError(ErrorCode.CONNECTION_LOST, `${label} closed during its upgrade`, 'check that the source is a ferry-agent of this version'));
      };
      socket.once('error', onError);
      socket.once('close', onClose);
      consumer = new ResponseHead((head) => {
        clearTimeout(timer);
        consumer = NOTHING;
        const status = /^HTTP\/1\.1 (\d{3})/.exec(head)?.[1];
        if (status === '101') resolve();
        else reject(new FerryError(status === '401' ? ErrorCode.UNAUTHORIZED : ErrorCode.PROTOCOL, `the source answered the page stream's upgrade with HTTP ${status ?? '(no status)'}`, status === '401' ? 'give every agent of the cluster the same token' : 'run the same ferry version on every host'));
      });
      socket.once(secure ? 'secureConnect' : 'connect', () => {
        socket.write([
          `GET ${PAGE_STREAM_PATH} HTTP/1.1`,
          `Host: ${url.host}`,
          'Connection: Upgrade',
          `Upgrade: ${PAGE_STREAM_PROTOCOL}`,
          `Authorization: Bearer ${options.token}`,
          `Ferry-Ticket: ${options.ticket}`,
          '',
          '',
        ].join('\r\n'));
      });
    });
  } catch (error) {
    socket.on('error', () => undefined); // destroying may still report the failed upgrade
    socket.destroy();
    throw error;
  }
  socket.off('error', onError!);
  socket.off('close', onClose!);
  socket.on('error', () => undefined); // 'close' follows; whoever holds the stream listens for it
  return {
    socket,
    consume(next) {
      consumer = next;
    },
  };
}

/**
 * The sending end of a page stream as the page sender sees it: `send` writes the bytes, its callback fires once the
 * kernel has them (Node's write callback, as ws's). `close` ends the stream; the peer reads what came before it.
 */
export function fromStreamSocket(socket: net.Socket): FrameSocket {
  return {
    send: (data, callback) => {
      if (socket.destroyed || socket.writableEnded) {
        setImmediate(() => callback?.(new Error('page stream closed')));
        return;
      }
      socket.write(data, (error) => callback?.(error ?? undefined));
    },
    close: () => socket.end(),
    onMessage: () => {
      throw new Error('a page stream is read with a StreamConsumer, not by messages');
    },
    onClose: (listener) => {
      socket.once('close', () => listener());
    },
  };
}

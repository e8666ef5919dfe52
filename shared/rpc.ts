/**
 * Requests, replies and events over one WebSocket, in MessagePack, checked against the schemas in protocol.ts
 * on arrival. Used for the coordinator's control connection and for the peer connection between two agents.
 *
 * Invariants:
 * - every request gets exactly one reply; a handler that throws replies with its error's code and hint;
 * - when the socket closes, every pending request fails with FERRY_ERR_CONNECTION_LOST and every running handler
 *   sees its `signal` aborted, so no migration outlives the connection that drives it unnoticed;
 * - a frame that is not valid MessagePack or does not match its schema gets a FERRY_ERR_PROTOCOL reply where it
 *   can be answered, and never reaches a handler.
 */
import { Packr } from 'msgpackr';
import type { z } from 'zod';
import { ErrorCode, FerryError, abortReason, toFerryError } from './errors.js';
import type { FrameSocket } from './frame-socket.js';
import { envelopeSchema, type Envelope, type OpName, type OpTable, type ReplyOf, type RequestOf } from './protocol.js';

const packr = new Packr({ useRecords: false, moreTypes: false });

export function encodeMessage(message: Envelope): Buffer {
  return packr.pack(message);
}

export function decodeMessage(frame: Buffer): Envelope {
  let decoded: unknown;
  try {
    decoded = packr.unpack(frame);
  } catch (error) {
    throw new FerryError(ErrorCode.PROTOCOL, `undecodable message: ${(error as Error).message}`, 'the peer is not a compatible ferry-agent or ferry');
  }
  const parsed = envelopeSchema.safeParse(decoded);
  if (!parsed.success) {
    throw new FerryError(ErrorCode.PROTOCOL, `malformed message: ${parsed.error.issues[0]?.message ?? 'wrong shape'}`, 'the peer is not a compatible ferry-agent or ferry');
  }
  return parsed.data;
}

function parseWith<T extends z.ZodType>(schema: T, value: unknown, what: string): z.infer<T> {
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue && issue.path.length > 0 ? `${issue.path.join('.')}: ` : '';
    throw new FerryError(ErrorCode.BAD_INPUT, `invalid ${what}: ${where}${issue?.message ?? 'wrong shape'}`, 'check the values you passed');
  }
  return parsed.data;
}

export interface HandlerContext {
  /** Aborted when the connection closes. */
  signal: AbortSignal;
  /** Sends an event that belongs to this request; resolves once the socket has taken it (backpressure). */
  event(body: unknown): Promise<void>;
}

export type Handler<T extends OpTable, K extends OpName<T>> = (
  body: RequestOf<T, K>,
  context: HandlerContext,
) => Promise<ReplyOf<T, K>>;

export interface RequestOptions {
  onEvent?: (body: unknown) => void;
  timeoutMs?: number;
  signal?: AbortSignal;
}

interface Pending {
  op: string;
  resolve(body: unknown): void;
  reject(error: FerryError): void;
  onEvent: ((body: unknown) => void) | undefined;
}

export class RpcConnection<Local extends OpTable, Remote extends OpTable> {
  readonly socket: FrameSocket;
  private readonly localOps: Local;
  private readonly remoteOps: Remote;
  private readonly handlers = new Map<string, Handler<Local, OpName<Local>>>();
  private readonly pending = new Map<number, Pending>();
  private readonly closed = new AbortController();
  private nextId = 1;
  /** Frames this hook claims (returns true for) bypass MessagePack: the page stream uses it. */
  rawFrameHook: ((frame: Buffer) => boolean) | undefined;

  constructor(socket: FrameSocket, localOps: Local, remoteOps: Remote) {
    this.socket = socket;
    this.localOps = localOps;
    this.remoteOps = remoteOps;
    socket.onMessage((data) => this.receive(data));
    socket.onClose(() => this.shutdown());
  }

  get signal(): AbortSignal {
    return this.closed.signal;
  }

  handle<K extends OpName<Local>>(op: K, handler: Handler<Local, K>): void {
    this.handlers.set(op, handler as unknown as Handler<Local, OpName<Local>>);
  }

  request<K extends OpName<Remote>>(op: K, body: RequestOf<Remote, K>, options: RequestOptions = {}): Promise<ReplyOf<Remote, K>> {
    if (this.closed.signal.aborted) {
      return Promise.reject(new FerryError(ErrorCode.CONNECTION_LOST, `connection closed before ${op} could be sent`));
    }
    const id = this.nextId++;
    return new Promise<ReplyOf<Remote, K>>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const onAbort = (): void => finish(abortReason(options.signal!, `${op} was cancelled`));
      const finish = (error: FerryError | undefined, reply?: unknown): void => {
        if (!this.pending.delete(id)) return;
        if (timer) clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        if (error) reject(error);
        else resolve(reply as ReplyOf<Remote, K>);
      };
      this.pending.set(id, {
        op,
        resolve: (reply) => finish(undefined, reply),
        reject: (error) => finish(error),
        onEvent: options.onEvent,
      });
      if (options.timeoutMs !== undefined) {
        timer = setTimeout(
          () => finish(new FerryError(ErrorCode.TIMEOUT, `no reply to ${op} within ${options.timeoutMs} ms`, 'check that the host is alive and not overloaded')),
          options.timeoutMs,
        );
      }
      if (options.signal?.aborted) return onAbort();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      this.socket.send(encodeMessage({ t: 'req', id, op, body }), (error) => {
        if (error) finish(new FerryError(ErrorCode.CONNECTION_LOST, `could not send ${op}: ${error.message}`));
      });
    });
  }

  close(code = 1000, reason = ''): void {
    this.socket.close(code, reason);
    this.shutdown();
  }

  private shutdown(): void {
    if (this.closed.signal.aborted) return;
    this.closed.abort();
    for (const pending of [...this.pending.values()]) {
      pending.reject(new FerryError(ErrorCode.CONNECTION_LOST, `connection closed while waiting for ${pending.op}`, 'the other side stopped or the network failed'));
    }
  }

  private receive(frame: Buffer): void {
    if (this.rawFrameHook?.(frame)) return;
    let message: Envelope;
    try {
      message = decodeMessage(frame);
    } catch (error) {
      // No id to answer to: say so once and drop the frame; the agent keeps serving.
      this.sendError(0, toFerryError(error));
      return;
    }
    switch (message.t) {
      case 'req':
        void this.serve(message.id, message.op, message.body);
        return;
      case 'evt':
        this.pending.get(message.id)?.onEvent?.(message.body);
        return;
      case 'res': {
        const pending = this.pending.get(message.id);
        if (!pending) return;
        if (!message.ok) {
          pending.reject(FerryError.fromPayload(message.error));
          return;
        }
        const schema = this.remoteOps[pending.op]?.[1];
        try {
          pending.resolve(schema ? parseWith(schema, message.body, `reply to ${pending.op}`) : message.body);
        } catch (error) {
          pending.reject(new FerryError(ErrorCode.PROTOCOL, toFerryError(error).message));
        }
        return;
      }
      default: {
        const unreachable: never = message;
        return unreachable;
      }
    }
  }

  private async serve(id: number, op: string, body: unknown): Promise<void> {
    const entry = this.localOps[op];
    const handler = this.handlers.get(op);
    if (!entry || !handler) {
      this.sendError(id, new FerryError(ErrorCode.PROTOCOL, `unknown request "${op}"`, 'the peer speaks a different ferry version'));
      return;
    }
    try {
      const request = parseWith(entry[0], body, `${op} request`) as RequestOf<Local, OpName<Local>>;
      const context: HandlerContext = {
        signal: this.closed.signal,
        event: (eventBody) => this.sendEvent(id, eventBody),
      };
      const reply = await handler(request, context);
      this.send({ t: 'res', id, ok: true, body: reply });
    } catch (error) {
      this.sendError(id, toFerryError(error));
    }
  }

  private sendEvent(id: number, body: unknown): Promise<void> {
    return new Promise((resolve) => {
      if (this.closed.signal.aborted) return resolve();
      this.socket.send(encodeMessage({ t: 'evt', id, body }), () => resolve());
    });
  }

  private sendError(id: number, error: FerryError): void {
    this.send({ t: 'res', id, ok: false, error: error.toPayload() });
  }

  private send(message: Envelope): void {
    if (this.closed.signal.aborted) return;
    this.socket.send(encodeMessage(message));
  }
}

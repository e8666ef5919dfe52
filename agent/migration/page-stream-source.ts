/**
 * The source's end of a page stream (shared/page-stream.ts): a one-time ticket per migration (or link measurement),
 * handed to the destination in `peer.stream` (or `link.begin`); the destination dials this agent's `/pages` with it
 * (server.ts), and the socket that arrives with a ticket this agent is waiting on becomes that migration's page stream.
 */
import { randomBytes } from 'node:crypto';
import type net from 'node:net';
import { PAGE_STREAM_DIAL_TIMEOUT_MS, PEER_REPLY_TIMEOUT_MS } from '../../shared/constants.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';

interface Waiting {
  resolve(socket: net.Socket | undefined): void;
  timer: NodeJS.Timeout;
}

export class PageStreamTickets {
  private readonly waiting = new Map<string, Waiting>();
  /** Whether this agent listens where others can dial it (a real server): only then is a page stream offered. */
  listening = false;

  /** A fresh ticket and the socket that will arrive with it, or undefined if none does within `timeoutMs`. */
  expect(timeoutMs: number): { ticket: string; socket: Promise<net.Socket | undefined> } {
    const ticket = randomBytes(16).toString('hex');
    const socket = new Promise<net.Socket | undefined>((resolve) => {
      const timer = setTimeout(() => {
        this.waiting.delete(ticket);
        resolve(undefined);
      }, timeoutMs);
      timer.unref();
      this.waiting.set(ticket, { resolve, timer });
    });
    return { ticket, socket };
  }

  /** A dialled `/pages` presented `ticket` (its token already checked): true if it was awaited, and is now taken. */
  take(ticket: string, socket: net.Socket): boolean {
    const waiting = this.waiting.get(ticket);
    if (!waiting) return false;
    this.waiting.delete(ticket);
    clearTimeout(waiting.timer);
    waiting.resolve(socket);
    return true;
  }

  /** Forgets a ticket that will not be used; a socket that arrives with it later is refused. */
  cancel(ticket: string): void {
    const waiting = this.waiting.get(ticket);
    if (!waiting) return;
    this.waiting.delete(ticket);
    clearTimeout(waiting.timer);
    waiting.resolve(undefined);
  }
}

export type OpenedPageStream = { socket: net.Socket; fallback?: undefined } | { socket?: undefined; fallback: string };

/**
 * Asks the destination to open a page stream back to this agent, and returns it, or why there is none (the pages
 * then go on the peer WebSocket). `ask` makes the request that hands the destination its ticket and says whether it
 * dialled: `peer.stream` for a migration, `link.begin` for a link measurement (control/link.ts). Never throws for a
 * stream that cannot be opened; a request that fails (the peer connection lost) is thrown, ticket cancelled.
 */
export async function openPageStream(tickets: PageStreamTickets, ask: (ticket: string) => Promise<{ open: boolean; reason?: string | undefined }>, log: Logger): Promise<OpenedPageStream> {
  const { ticket, socket } = tickets.expect(PAGE_STREAM_DIAL_TIMEOUT_MS + PEER_REPLY_TIMEOUT_MS);
  // A socket that arrived for a stream that is not used (the request failed, or the destination gave up after it
  // dialled) is closed, never left open.
  const discard = (): void => {
    tickets.cancel(ticket);
    void socket.then((arrived) => arrived?.destroy());
  };
  let answer;
  try {
    answer = await ask(ticket);
  } catch (error) {
    discard();
    throw error;
  }
  if (!answer.open) {
    discard();
    return { fallback: answer.reason ?? 'the destination could not open it' };
  }
  // The upgrade was answered before the destination said `open`: the socket is here already. One that closed as it
  // opened is lost to a destination that has attached it already: the migration fails, as any lost stream does.
  const arrived = await socket;
  if (!arrived || arrived.destroyed) {
    arrived?.destroy();
    throw new FerryError(ErrorCode.CONNECTION_LOST, 'the page stream closed as it opened', 'check the network between the hosts');
  }
  arrived.setNoDelay(true); // a round's last frame leaves at once, not after the peer's delayed ACK
  arrived.on('error', (error) => log.debug('page stream error', { error: error.message }));
  return { socket: arrived };
}

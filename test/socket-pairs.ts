/**
 * Connected FrameSocket pairs for the tests that must hold over every kind of socket: the in-memory pair and real
 * ws WebSockets on loopback. End `a` plays the agent that dials (a ws client with a zero mask, as agents dial their
 * peers, and the side that sends pages); end `b` the agent that accepts.
 */
import type { AddressInfo } from 'node:net';
import { vi } from 'vitest';
import WebSocket, { WebSocketServer, type ServerOptions } from 'ws';
import { createSocketPair, fromWebSocket, type FrameSocket } from '../shared/frame-socket.js';

export interface ConnectedPair {
  a: FrameSocket;
  b: FrameSocket;
  /** Stops and restarts the reading of one end (ws: `pause()`/`resume()`; in memory: the end's own switch). */
  pause(end: 'a' | 'b'): void;
  resume(end: 'a' | 'b'): void;
  /** Tears everything down at once, whatever state it is in. */
  destroy(): Promise<void>;
}

export interface PairOptions {
  /** How long a close waits for the peer to read what was sent before it (both kinds honour it). */
  closeTimeoutMs?: number;
}

export interface PairFactory {
  name: string;
  open(options?: PairOptions): Promise<ConnectedPair>;
}

export const memoryPairs: PairFactory = {
  name: 'the in-memory pair',
  open: async (options = {}) => {
    const [a, b] = createSocketPair(options.closeTimeoutMs === undefined ? {} : { closeTimeoutMs: options.closeTimeoutMs });
    const ends = { a, b };
    return {
      a,
      b,
      pause: (end) => ends[end].pause(),
      resume: (end) => ends[end].resume(),
      destroy: async () => {
        a.close();
        b.close();
      },
    };
  },
};

export const webSocketPairs: PairFactory = {
  name: 'ws WebSockets over loopback',
  open: async (options = {}) => {
    const closeTimeout = options.closeTimeoutMs ?? 30_000;
    // ws 8.23 takes `closeTimeout` on both ends; @types/ws does not list it yet, hence the wider types.
    const serverOptions: ServerOptions & { closeTimeout: number } = { host: '127.0.0.1', port: 0, perMessageDeflate: false, closeTimeout };
    const server = new WebSocketServer(serverOptions);
    let client: WebSocket | undefined;
    const destroy = async (): Promise<void> => {
      client?.terminate();
      for (const socket of server.clients) socket.terminate();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    };
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('listening', resolve);
        server.once('error', reject);
      });
      const accepted = new Promise<WebSocket>((resolve) => server.once('connection', resolve));
      const clientOptions: WebSocket.ClientOptions & { closeTimeout: number } = {
        perMessageDeflate: false,
        generateMask: (mask) => mask.fill(0),
        closeTimeout,
      };
      client = new WebSocket(`ws://127.0.0.1:${(server.address() as AddressInfo).port}`, clientOptions);
      const opened = client;
      await new Promise<void>((resolve, reject) => {
        opened.once('open', resolve);
        opened.once('error', reject);
      });
      const serverEnd = await accepted;
      const raw = { a: opened, b: serverEnd };
      return {
        a: fromWebSocket(opened),
        b: fromWebSocket(serverEnd),
        pause: (end) => raw[end].pause(),
        resume: (end) => raw[end].resume(),
        destroy,
      };
    } catch (error) {
      await destroy();
      throw error;
    }
  },
};

export const bothPairs = [memoryPairs, webSocketPairs];

/**
 * Waits until `read()` gives the same value on two polls `quietMs` apart, and returns it: for "has stopped moving",
 * e.g. callbacks held back by a peer that does not read. A slow machine only makes it wait longer.
 */
export async function settledValue(read: () => number, quietMs = 200, timeoutMs = 20_000): Promise<number> {
  let last = Number.NaN;
  return vi.waitFor(() => {
    const now = read();
    const previous = last;
    last = now;
    if (now !== previous) throw new Error(`still moving: ${previous} then ${now}`);
    return now;
  }, { timeout: timeoutMs, interval: quietMs });
}

/**
 * The one thing ferry's protocol code needs of a connection: ordered binary messages both ways, a callback when a
 * sent message has been taken, and a close. A `ws` WebSocket is one (see `fromWebSocket`); `createSocketPair` is an
 * in-memory twin, so the migration logic can also be tested without sockets, beside the tests over real ones.
 */
import type WebSocket from 'ws';

export interface FrameSocket {
  /** Sends one binary message; `data` is referenced until `callback` fires. */
  send(data: Buffer, callback?: (error?: Error) => void): void;
  close(code?: number, reason?: string): void;
  onMessage(listener: (data: Buffer) => void): void;
  onClose(listener: () => void): void;
}

export function fromWebSocket(socket: WebSocket): FrameSocket {
  return {
    send: (data, callback) => socket.send(data, { binary: true }, callback),
    close: (code, reason) => socket.close(code, reason),
    onMessage: (listener) => socket.on('message', (data) => listener(data as Buffer)),
    onClose: (listener) => {
      socket.on('close', listener);
      socket.on('error', listener);
    },
  };
}

/**
 * Two connected in-memory ends. Like a real socket, a message's bytes are read after `send` returns (on a later
 * turn of the event loop), so code that changes a buffer before its callback fires is caught here too.
 */
export interface SocketPairOptions {
  /**
   * Consulted for every message; returning true loses that message and breaks the link, as a network that fails
   * at exactly that moment would. `from` is 0 for messages the first end sends, 1 for the second's.
   */
  cut?: (from: 0 | 1, data: Buffer) => boolean;
}

export function createSocketPair(options: SocketPairOptions = {}): [FrameSocket, FrameSocket] {
  interface End {
    messageListeners: ((data: Buffer) => void)[];
    closeListeners: (() => void)[];
    closed: boolean;
  }
  const ends: [End, End] = [
    { messageListeners: [], closeListeners: [], closed: false },
    { messageListeners: [], closeListeners: [], closed: false },
  ];
  const closeBoth = (): void => {
    for (const end of ends) {
      if (end.closed) continue;
      end.closed = true;
      for (const listener of end.closeListeners) listener();
    }
  };
  const socket = (self: End, peer: End, from: 0 | 1): FrameSocket => ({
    send(data, callback) {
      if (self.closed) {
        setImmediate(() => callback?.(new Error('socket closed')));
        return;
      }
      if (options.cut?.(from, data)) {
        setImmediate(() => {
          callback?.(new Error('link cut'));
          closeBoth();
        });
        return;
      }
      setImmediate(() => {
        if (peer.closed) {
          callback?.(new Error('socket closed'));
          return;
        }
        const copy = Buffer.from(data); // the "wire": bytes as they were when the socket read them
        callback?.();
        for (const listener of peer.messageListeners) listener(copy);
      });
    },
    close: () => setImmediate(closeBoth),
    onMessage: (listener) => void self.messageListeners.push(listener),
    onClose: (listener) => void self.closeListeners.push(listener),
  });
  return [socket(ends[0], ends[1], 0), socket(ends[1], ends[0], 1)];
}

/**
 * The one thing ferry's protocol code needs of a connection: ordered binary messages both ways, a callback when a
 * sent message has been taken, and a close. A `ws` WebSocket is one (see `fromWebSocket`); `createSocketPair` is an
 * in-memory twin, so the migration logic can also be tested without sockets, beside the tests over real ones.
 * test/unit/frame-socket.test.ts holds both to the same contract.
 */
import type WebSocket from 'ws';

export interface FrameSocket {
  /**
   * Sends one binary message. `data` is referenced, not copied, until `callback` fires: the bytes that leave are
   * the ones `data` holds when the connection takes them, which can be long after `send` returns, so a buffer may
   * be changed or reused only after its callback (DESIGN.md, the data-path table).
   *
   * The callback fires once per message, in send order, never before `send` returns: without an error once the
   * connection has taken the message (ws: written to the kernel; the in-memory pair: copied into the peer's
   * receive buffer), with one if the connection closed first. A peer that stops reading holds callbacks back once
   * the buffers between the two ends are full: the backpressure a sender waits on. Past that point progress comes
   * in steps: Node writes everything queued behind a full socket as one writev, and its callbacks fire together
   * when the last byte is taken, so a sender may hear nothing until a peer has read all it had queued.
   */
  send(data: Buffer, callback?: (error?: Error) => void): void;
  /**
   * Closes after the messages already sent, as ws does: the peer reads them, then both ends' close listeners fire.
   * If the peer does not read them in time (ws's `closeTimeout`), the link is torn down and their callbacks get an
   * error. Sending after `close` fails.
   */
  close(code?: number, reason?: string): void;
  onMessage(listener: (data: Buffer) => void): void;
  /** Fires once, when the connection is closed for whatever reason (a close from either end, an error). */
  onClose(listener: () => void): void;
}

export function fromWebSocket(socket: WebSocket): FrameSocket {
  return {
    send: (data, callback) => socket.send(data, { binary: true }, callback),
    close: (code, reason) => socket.close(code, reason),
    onMessage: (listener) => socket.on('message', (data) => listener(data as Buffer)),
    onClose: (listener) => {
      // ws emits 'error' and then 'close' for a broken connection; the listener hears of it once.
      let told = false;
      const once = (): void => {
        if (told) return;
        told = true;
        listener();
      };
      socket.on('close', once);
      socket.on('error', once);
    },
  };
}

export interface SocketPairOptions {
  /**
   * Consulted for every message as the link takes it; returning true loses that message and breaks the link, as a
   * network that fails at exactly that moment would: its callback gets an error, the peer still reads what was
   * taken before it, then both ends close. `from` is 0 for messages the first end sends, 1 for the second's.
   */
  cut?: (from: 0 | 1, data: Buffer) => boolean;
  /**
   * Bytes each end holds received but not yet read by its listeners: the kernel's socket buffers of a real link.
   * Once a paused end's buffer is full, what its peer sends waits in the peer's own queue and its callbacks stop.
   * A message larger than this is taken alone, into an empty buffer. Default DEFAULT_PAIR_BUDGET_BYTES.
   */
  budgetBytes?: number;
  /** How long a close waits for the peer to read what was sent before it (ws's `closeTimeout`). Default 30 s, as ws. */
  closeTimeoutMs?: number;
}

/** One end of `createSocketPair`: a FrameSocket whose reading a test can stop, as ws's `pause()` and `resume()` do. */
export interface MemoryFrameSocket extends FrameSocket {
  /** Stops handing received messages to this end's listeners; the peer's sends back up once the budget is full. */
  pause(): void;
  resume(): void;
}

/**
 * About what loopback TCP holds between two ws ends when one stops reading: 3.6 MiB each way, measured here with
 * 64 KiB messages (tcp_wmem and tcp_rmem as Linux sets them by default).
 */
export const DEFAULT_PAIR_BUDGET_BYTES = 4 * 1024 * 1024;

/**
 * Two connected in-memory ends.
 *
 *   end 0 send ─▶ [ outbox of end 0 ] ─take─▶ [ inbox of end 1 ≤ budget ] ─read─▶ end 1 listeners
 *   end 0 listeners ◀─read─ [ inbox of end 0 ≤ budget ] ◀─take─ [ outbox of end 1 ] ◀─ end 1 send
 *
 * - An outbox is the sender's own queue (ws's, or Node's writable buffer): unbounded, and it holds the caller's
 *   buffer itself, not a copy.
 * - "Take" copies a message's bytes into the peer's inbox: that copy is the wire, the bytes as they were at that
 *   moment, so a sender that changes a buffer before its callback is caught. It happens on a later turn of the
 *   event loop than `send`, and only while the peer's inbox has room.
 * - Callbacks follow Node's socket writes, which ws sends through. A message the kernel takes at once is a write of
 *   its own, and its callback fires when it is taken. Once one does not fit, everything queued from it on goes out
 *   as one writev, whose callbacks all fire when its last byte is taken (measured here). So here: once a message
 *   does not fit, it and all queued behind it form one batch, and their callbacks fire when the last is taken. A
 *   sender sees progress in steps of up to all it had queued (for the page sender, its window).
 * - "Read" hands inbox messages to the end's listeners in order, unless the end is paused.
 * - A close travels as a mark behind the messages sent before it; the link goes down for both ends when the peer
 *   reads the mark, or after `closeTimeoutMs`. A cut (SocketPairOptions.cut) leaves a mark in place of the lost
 *   message and takes nothing more from that end; the link goes down when the peer reads that mark. Going down
 *   fails every message whose callback has not fired and drops what was taken but not read, as a TCP connection's
 *   teardown would.
 */
export function createSocketPair(options: SocketPairOptions = {}): [MemoryFrameSocket, MemoryFrameSocket] {
  const budgetBytes = options.budgetBytes ?? DEFAULT_PAIR_BUDGET_BYTES;
  const closeTimeoutMs = options.closeTimeoutMs ?? 30_000;
  const CLOSE_MARK = 'close' as const;
  /** Where a cut broke the link: the messages taken before it are still read, then the link goes down. */
  const CUT_MARK = 'cut' as const;
  interface Outgoing {
    data: Buffer;
    callback: ((error?: Error) => void) | undefined;
  }
  interface End {
    readonly index: 0 | 1;
    readonly outbox: (Outgoing | typeof CLOSE_MARK)[];
    /** Outbox entries, from its head, that belong to the batch being taken; 0 when none is. */
    batchLeft: number;
    /** Messages of that batch already taken, their callbacks waiting for the rest of it. */
    readonly batchTaken: Outgoing[];
    readonly inbox: (Buffer | typeof CLOSE_MARK | typeof CUT_MARK)[];
    inboxBytes: number;
    paused: boolean;
    /** close() was called on this end: it sends nothing more. */
    closing: boolean;
    /** A message this end sent was cut: nothing more it sent goes through. */
    cut: boolean;
    readonly messageListeners: ((data: Buffer) => void)[];
    readonly closeListeners: (() => void)[];
  }
  const newEnd = (index: 0 | 1): End => ({
    index, outbox: [], batchLeft: 0, batchTaken: [], inbox: [], inboxBytes: 0, paused: false, closing: false, cut: false,
    messageListeners: [], closeListeners: [],
  });
  const ends: [End, End] = [newEnd(0), newEnd(1)];
  let down = false;
  let closeTimer: NodeJS.Timeout | undefined;
  let scheduled = false;
  /** Whether the current turn of `pump` took or read anything. */
  let moved = false;

  const schedule = (): void => {
    if (scheduled || down) return;
    scheduled = true;
    setImmediate(pump);
  };

  const goDown = (error: Error): void => {
    if (down) return;
    down = true;
    clearTimeout(closeTimer);
    const failed: Outgoing[] = [];
    for (const end of ends) {
      failed.push(...end.batchTaken.splice(0));
      for (const item of end.outbox.splice(0)) if (item !== CLOSE_MARK) failed.push(item);
      end.batchLeft = 0;
      end.inbox.length = 0;
      end.inboxBytes = 0;
    }
    for (const item of failed) item.callback?.(error);
    for (const end of ends) for (const listener of end.closeListeners) listener();
  };

  /** Moves what fits from `writer`'s outbox into `reader`'s inbox, firing send callbacks as described above. */
  const take = (writer: End, reader: End): void => {
    while (!down && !writer.cut && writer.outbox.length > 0) {
      const head = writer.outbox[0]!;
      const bytes = head === CLOSE_MARK ? 0 : head.data.length;
      if (reader.inboxBytes > 0 && reader.inboxBytes + bytes > budgetBytes) {
        if (writer.batchLeft === 0) writer.batchLeft = writer.outbox.length;
        return;
      }
      writer.outbox.shift();
      moved = true;
      const inBatch = writer.batchLeft > 0;
      if (inBatch) writer.batchLeft--;
      if (head === CLOSE_MARK) {
        reader.inbox.push(CLOSE_MARK);
      } else if (options.cut?.(writer.index, head.data)) {
        writer.cut = true;
        reader.inbox.push(CUT_MARK);
        head.callback?.(new Error('link cut'));
        return;
      } else {
        const wire = Buffer.from(head.data);
        reader.inbox.push(wire);
        reader.inboxBytes += wire.length;
        if (inBatch) writer.batchTaken.push(head);
        else head.callback?.();
      }
      if (inBatch && writer.batchLeft === 0) for (const taken of writer.batchTaken.splice(0)) taken.callback?.();
    }
  };

  /** Hands `reader`'s inbox to its listeners until it is empty or paused (a listener may pause it). */
  const read = (reader: End): void => {
    while (!down && !reader.paused && reader.inbox.length > 0) {
      const item = reader.inbox.shift()!;
      moved = true;
      if (item === CLOSE_MARK || item === CUT_MARK) {
        goDown(new Error(item === CUT_MARK ? 'socket closed: link cut' : 'socket closed'));
        return;
      }
      reader.inboxBytes -= item.length;
      for (const listener of reader.messageListeners) listener(item);
    }
  };

  // One turn moves at most about two budgets each way, so a fast sender never holds the event loop for long. A turn
  // that moved nothing schedules no other: only a send, a close or a resume can unblock the pair then.
  function pump(): void {
    scheduled = false;
    moved = false;
    for (const [writer, reader] of [[ends[0], ends[1]], [ends[1], ends[0]]] as const) {
      take(writer, reader);
      read(reader);
      take(writer, reader);
    }
    if (moved) schedule();
  }

  const socket = (self: End): MemoryFrameSocket => ({
    send(data, callback) {
      if (down || self.closing) {
        setImmediate(() => callback?.(new Error('socket closed')));
        return;
      }
      self.outbox.push({ data, callback });
      schedule();
    },
    close() {
      if (down || self.closing) return;
      self.closing = true;
      self.outbox.push(CLOSE_MARK);
      closeTimer ??= setTimeout(() => goDown(new Error(`socket closed: the peer read nothing for ${closeTimeoutMs} ms after close`)), closeTimeoutMs).unref();
      schedule();
    },
    onMessage: (listener) => void self.messageListeners.push(listener),
    onClose: (listener) => void self.closeListeners.push(listener),
    pause() {
      self.paused = true;
    },
    resume() {
      self.paused = false;
      schedule();
    },
  });
  return [socket(ends[0]), socket(ends[1])];
}

/**
 * The FrameSocket contract (shared/frame-socket.ts), held against every kind of socket ferry runs over: the
 * in-memory pair the migration tests use, and real ws WebSockets on loopback with a zero-mask client as agents
 * dial. What the in-memory pair is trusted for in test/unit/migration-memory.test.ts is what this proves it
 * shares with ws.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { createSocketPair, DEFAULT_PAIR_BUDGET_BYTES, type FrameSocket } from '../../shared/frame-socket.js';
import { bothPairs, settledValue, type ConnectedPair, type PairFactory, type PairOptions } from '../socket-pairs.js';

const MiB = 1024 * 1024;
const wait = { timeout: 20_000, interval: 20 };

/** A message that says which it is: its index in the first four bytes, then a byte pattern of that index. */
function numbered(index: number, bytes: number): Buffer {
  const message = Buffer.alloc(bytes, index & 0xff);
  if (bytes >= 4) message.writeUInt32LE(index, 0);
  return message;
}

/** The index of the first message that differs from what was sent, or -1 (without handing megabytes to expect). */
function firstDifference(received: Buffer[], sent: Buffer[]): number {
  const length = Math.max(received.length, sent.length);
  for (let i = 0; i < length; i++) if (!received[i] || !sent[i] || !received[i]!.equals(sent[i]!)) return i;
  return -1;
}

function collect(socket: FrameSocket): Buffer[] {
  const received: Buffer[] = [];
  socket.onMessage((data) => received.push(Buffer.from(data)));
  return received;
}

interface Sent {
  /** How many callbacks fired without an error, and with one. */
  ok: number;
  failed: Error[];
  /** Indexes of the messages whose callback fired, in the order they fired. */
  order: number[];
}

/** Sends `messages` and tracks their callbacks. */
function sendAll(socket: FrameSocket, messages: Buffer[]): Sent {
  const sent: Sent = { ok: 0, failed: [], order: [] };
  messages.forEach((message, index) => {
    socket.send(message, (error) => {
      sent.order.push(index);
      if (error) sent.failed.push(error);
      else sent.ok++;
    });
  });
  return sent;
}

/** Far more than the kernel buffers between two loopback sockets here, or the in-memory budget: 64 MiB. */
const moreThanTheBuffers = (): Buffer[] => Array.from({ length: 64 }, (_, index) => numbered(index, MiB));

describe.each(bothPairs)('FrameSocket over $name', (factory: PairFactory) => {
  async function open(options?: PairOptions): Promise<ConnectedPair> {
    return factory.open(options);
  }

  it('delivers messages in order, both ways at once, byte for byte', async () => {
    const pair = await open();
    onTestFinished(() => pair.destroy());
    const atB = collect(pair.b);
    const atA = collect(pair.a);
    const sizes = Array.from({ length: 200 }, (_, index) => 1 + ((index * 7919) % (96 * 1024)));
    const toB = sizes.map((bytes, index) => numbered(index, bytes));
    const toA = sizes.map((bytes, index) => numbered(1000 + index, bytes)).reverse();
    for (let i = 0; i < sizes.length; i++) {
      pair.a.send(toB[i]!);
      pair.b.send(toA[i]!);
    }
    await vi.waitFor(() => {
      expect(atB.length).toBe(toB.length);
      expect(atA.length).toBe(toA.length);
    }, wait);
    expect(firstDifference(atB, toB)).toBe(-1);
    expect(firstDifference(atA, toA)).toBe(-1);
  });

  it('fires each send callback once, without an error, in send order, and never before send returns', async () => {
    const pair = await open();
    onTestFinished(() => pair.destroy());
    const received = collect(pair.b);
    let sending = true;
    let firedDuringSend = 0;
    const order: number[] = [];
    const failures: Error[] = [];
    for (let index = 0; index < 50; index++) {
      pair.a.send(numbered(index, 64 * 1024), (error) => {
        if (sending) firedDuringSend++;
        if (error) failures.push(error);
        order.push(index);
      });
    }
    sending = false;
    await vi.waitFor(() => expect(received.length).toBe(50), wait);
    await vi.waitFor(() => expect(order.length).toBe(50), wait);
    expect(firedDuringSend).toBe(0);
    expect(failures).toEqual([]);
    expect(order).toEqual(Array.from({ length: 50 }, (_, index) => index));
    await delay(50);
    expect(order.length).toBe(50);
  });

  it('carries a 16 MiB message intact each way, larger than any buffer between the ends', async () => {
    const pair = await open();
    onTestFinished(() => pair.destroy());
    const atB = collect(pair.b);
    const atA = collect(pair.a);
    const large = Buffer.alloc(16 * MiB);
    for (let offset = 0; offset < large.length; offset += 4) large.writeUInt32LE((offset * 2654435761) >>> 0, offset);
    const sent = sendAll(pair.a, [large]);
    pair.b.send(large);
    await vi.waitFor(() => {
      expect(atB.length).toBe(1);
      expect(atA.length).toBe(1);
      expect(sent.ok).toBe(1);
    }, wait);
    expect(atB[0]!.equals(large)).toBe(true);
    expect(atA[0]!.equals(large)).toBe(true);
  });

  it('holds send callbacks back once the buffers fill while the peer does not read, and releases them in order when it reads again', async () => {
    const pair = await open();
    onTestFinished(() => pair.destroy());
    const received = collect(pair.b);
    pair.pause('b');
    const messages = moreThanTheBuffers();
    const sent = sendAll(pair.a, messages);
    const takenWhilePaused = await settledValue(() => sent.ok);
    expect(takenWhilePaused).toBeLessThan(messages.length);
    expect(received.length).toBe(0);

    pair.resume('b');
    await vi.waitFor(() => {
      expect(received.length).toBe(messages.length);
      expect(sent.ok).toBe(messages.length);
    }, wait);
    expect(sent.failed).toEqual([]);
    expect(sent.order).toEqual(messages.map((_, index) => index));
    expect(received.map((message) => message.readUInt32LE(0))).toEqual(messages.map((_, index) => index));
  });

  it('reports progress to a sender in steps: once the buffers fill, what was queued behind them is acknowledged together, when the last of it is taken', async () => {
    const pair = await open();
    onTestFinished(() => pair.destroy());
    let read = 0;
    // A slow reader, once it reads again: one message, then a short pause.
    pair.b.onMessage(() => {
      read++;
      pair.pause('b');
      void delay(5).then(() => pair.resume('b'));
    });
    pair.pause('b');
    const messages = moreThanTheBuffers();
    const sent = sendAll(pair.a, messages);
    const held = await settledValue(() => sent.ok);
    expect(held).toBeLessThan(messages.length / 2);
    pair.resume('b');
    await vi.waitFor(() => expect(read).toBeGreaterThan(messages.length / 2 + 4), wait);
    // The peer has read well past what was taken while it was paused, yet at most the one write that was pending
    // when the buffers filled has been acknowledged (ws writes it alone; the in-memory pair batches it too).
    expect(sent.ok).toBeLessThanOrEqual(held + 1);
    await vi.waitFor(() => {
      expect(sent.ok).toBe(messages.length);
      expect(read).toBe(messages.length);
    }, wait);
  });

  it('takes a message\'s bytes when it takes the message, not at send: a buffer changed before its callback goes out changed, one changed after goes out as sent', async () => {
    const pair = await open();
    onTestFinished(() => pair.destroy());
    const received = collect(pair.b);
    pair.pause('b');
    const filler = moreThanTheBuffers();
    const sent = sendAll(pair.a, filler);
    await settledValue(() => sent.ok);
    // Callbacks fire in order, so while a filler's is still pending, `late` (sent after them) is still held by
    // reference in the sender's queue: what it holds when the connection takes it is what goes out.
    const late = Buffer.alloc(1024, 0x11);
    let lateTaken = false;
    pair.a.send(late, () => (lateTaken = true));
    expect(sent.ok).toBeLessThan(filler.length);
    late.fill(0x22);

    pair.resume('b');
    await vi.waitFor(() => expect(lateTaken).toBe(true), wait);
    const early = Buffer.alloc(1024, 0x33);
    let earlyTaken = false;
    pair.a.send(early, () => (earlyTaken = true));
    await vi.waitFor(() => expect(earlyTaken).toBe(true), wait);
    early.fill(0x44); // its callback has fired: the buffer is the sender's again
    await vi.waitFor(() => expect(received.length).toBe(filler.length + 2), wait);
    expect(received[filler.length]!.equals(Buffer.alloc(1024, 0x22))).toBe(true);
    expect(received[filler.length + 1]!.equals(Buffer.alloc(1024, 0x33))).toBe(true);
  });

  for (const closer of ['a', 'b'] as const) {
    it(`closes both ends when ${closer} closes, after the peer has read what ${closer} sent before it`, async () => {
      const pair = await open();
      onTestFinished(() => pair.destroy());
      const [self, peer] = closer === 'a' ? [pair.a, pair.b] : [pair.b, pair.a];
      const received = collect(peer);
      const closes = { self: 0, peer: 0 };
      let receivedAtPeerClose = -1;
      self.onClose(() => closes.self++);
      peer.onClose(() => {
        closes.peer++;
        receivedAtPeerClose = received.length;
      });
      const sent = sendAll(self, [numbered(0, 1000), numbered(1, MiB), numbered(2, 10)]);
      self.close();
      await vi.waitFor(() => expect(closes).toEqual({ self: 1, peer: 1 }), wait);
      expect(receivedAtPeerClose).toBe(3);
      expect(sent.ok).toBe(3);
      await delay(50);
      expect(closes).toEqual({ self: 1, peer: 1 });
    });
  }

  it('fails a send made after close', async () => {
    const pair = await open();
    onTestFinished(() => pair.destroy());
    pair.a.close();
    let failure: Error | undefined;
    pair.a.send(Buffer.from('too late'), (error) => (failure = error));
    await vi.waitFor(() => expect(failure).toBeInstanceOf(Error), wait);
  });

  it('fails the pending send callbacks when a close cannot be delivered to a peer that does not read', async () => {
    const pair = await open({ closeTimeoutMs: 200 });
    onTestFinished(() => pair.destroy());
    let closedA = false;
    pair.a.onClose(() => (closedA = true));
    pair.pause('b');
    const messages = moreThanTheBuffers();
    const sent = sendAll(pair.a, messages);
    await settledValue(() => sent.ok);
    expect(sent.ok).toBeLessThan(messages.length);
    pair.a.close();
    await vi.waitFor(() => {
      expect(closedA).toBe(true);
      expect(sent.ok + sent.failed.length).toBe(messages.length);
    }, wait);
    expect(sent.failed.length).toBeGreaterThan(0);
    expect(sent.order).toEqual(messages.map((_, index) => index));
  });
});

describe('the in-memory pair', () => {
  it('takes at most its budget into an end that does not read, and a message larger than the budget alone', async () => {
    const [a, b] = createSocketPair({ budgetBytes: 3 * MiB });
    onTestFinished(() => {
      a.close();
      b.close();
    });
    b.pause();
    const sizes = [MiB, MiB, MiB, MiB, 8 * MiB, MiB];
    const sent = sendAll(a, sizes.map((bytes, index) => numbered(index, bytes)));
    expect(await settledValue(() => sent.ok, 50)).toBe(3);
    const received = collect(b);
    b.resume();
    await vi.waitFor(() => expect(received.length).toBe(sizes.length), wait);
    expect(received.map((message) => message.length)).toEqual(sizes);
  });

  it('buffers DEFAULT_PAIR_BUDGET_BYTES when no budget is given', async () => {
    const [a, b] = createSocketPair();
    onTestFinished(() => {
      a.close();
      b.close();
    });
    b.pause();
    const sent = sendAll(a, Array.from({ length: 2 * DEFAULT_PAIR_BUDGET_BYTES / MiB }, (_, index) => numbered(index, MiB)));
    expect(await settledValue(() => sent.ok, 50)).toBe(DEFAULT_PAIR_BUDGET_BYTES / MiB);
  });

  it('loses the message `cut` picks, fails its callback, and closes both ends; what went before arrives', async () => {
    const [a, b] = createSocketPair({ cut: (from, data) => from === 0 && data.readUInt32LE(0) === 2 });
    const received = collect(b);
    let closes = 0;
    a.onClose(() => closes++);
    b.onClose(() => closes++);
    const sent = sendAll(a, [0, 1, 2, 3].map((index) => numbered(index, 16)));
    await vi.waitFor(() => expect(closes).toBe(2), wait);
    expect(received.map((message) => message.readUInt32LE(0))).toEqual([0, 1]);
    expect(sent.ok).toBe(2);
    expect(sent.failed.map((error) => error.message)).toEqual(['link cut', 'socket closed: link cut']);
  });

  it('lets a listener pause its own end, so a test can read one message at a time', async () => {
    const [a, b] = createSocketPair();
    onTestFinished(() => {
      a.close();
      b.close();
    });
    const received: number[] = [];
    b.onMessage((data) => {
      received.push(data.readUInt32LE(0));
      b.pause();
    });
    sendAll(a, [0, 1, 2].map((index) => numbered(index, 16)));
    await vi.waitFor(() => expect(received).toEqual([0]), wait);
    await delay(20);
    expect(received).toEqual([0]);
    b.resume();
    await vi.waitFor(() => expect(received).toEqual([0, 1]), wait);
  });
});

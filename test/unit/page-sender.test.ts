/**
 * The page sender's window and stall handling (agent/migration/page-sender.ts), over both kinds of FrameSocket:
 * a destination that stops reading, one that reads again, one that reads slowly, one that never reads again.
 * The guest is a real VirtualMachine whose vCPU stays parked, so its memory is exactly what the test wrote.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { describe, expect, it, onTestFinished } from 'vitest';
import { PageSender, type PageSenderOptions } from '../../agent/migration/page-sender.js';
import { VirtualMachine } from '../../agent/vm/vm.js';
import { PAGE_SIZE, PAGES_PER_FRAME, SEND_WINDOW_BYTES } from '../../shared/constants.js';
import type { FrameSocket } from '../../shared/frame-socket.js';
import { decodePageHeader, isPageHeader, type PageHeader } from '../../shared/page-frame.js';
import { bothPairs, settledValue, type ConnectedPair, type PairFactory } from '../socket-pairs.js';

const FRAME_BYTES = PAGES_PER_FRAME * PAGE_SIZE;
/** Twice the window: round 1 of this guest cannot fit in the window plus what the buffers between the ends hold. */
const GUEST_BYTES = 2 * SEND_WINDOW_BYTES;

/** A parked guest whose every page holds its own pattern, so a page that arrives wrong or misplaced shows. */
async function createGuest(memoryBytes = GUEST_BYTES): Promise<VirtualMachine> {
  const vm = await VirtualMachine.create({ name: 'web1', memoryBytes, workload: { kind: 'idle', rate: 0, wssPages: 1, seed: 1 } }, 'running');
  const words = new Uint32Array(vm.memory.buffer, 0, memoryBytes / 4);
  for (let i = 0; i < words.length; i++) words[i] = Math.imul(i, 0x9e3779b1) >>> 0;
  return vm;
}

interface WindowWatch {
  socket: FrameSocket;
  /** Page data handed to `send`, and how much of it the connection has taken (its callback fired). */
  sentBytes: number;
  takenBytes: number;
  /** The most page data ever handed to `send` and not yet taken. */
  maxUntakenBytes: number;
}

/** Wraps the sender's socket to watch, independently of the sender's own count, how much page data is in flight. */
function watchWindow(socket: FrameSocket): WindowWatch {
  const watch: WindowWatch = {
    sentBytes: 0,
    takenBytes: 0,
    maxUntakenBytes: 0,
    socket: {
      send(data, callback) {
        if (isPageHeader(data)) {
          socket.send(data, callback);
          return;
        }
        watch.sentBytes += data.length;
        watch.maxUntakenBytes = Math.max(watch.maxUntakenBytes, watch.sentBytes - watch.takenBytes);
        socket.send(data, (error) => {
          watch.takenBytes += data.length;
          callback?.(error);
        });
      },
      close: (code, reason) => socket.close(code, reason),
      onMessage: (listener) => socket.onMessage(listener),
      onClose: (listener) => socket.onClose(listener),
    },
  };
  return watch;
}

interface Destination {
  /** How many times each page arrived. */
  arrivals: Uint8Array;
  /** Pages whose bytes differ from the guest's. */
  wrongPages: number[];
}

/** Reads the page stream at `socket` and checks each page against the guest's memory. */
function receivePages(socket: FrameSocket, vm: VirtualMachine): Destination {
  const destination: Destination = { arrivals: new Uint8Array(vm.pageCount), wrongPages: [] };
  let header: PageHeader | undefined;
  socket.onMessage((frame) => {
    if (!header) {
      header = decodePageHeader(frame, vm.pageCount);
      return;
    }
    header.pages.forEach((page, index) => {
      destination.arrivals[page]!++;
      const sent = frame.subarray(index * PAGE_SIZE, (index + 1) * PAGE_SIZE);
      if (!sent.equals(vm.memory.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE))) destination.wrongPages.push(page);
    });
    header = undefined;
  });
  return destination;
}

function everyPage(vm: VirtualMachine): Uint32Array {
  return Uint32Array.from({ length: vm.pageCount }, (_, page) => page);
}

function senderOptions(extra: Partial<PageSenderOptions> = {}): PageSenderOptions {
  return { maxBandwidthBytesPerSec: 0, signal: new AbortController().signal, now: () => performance.now(), ...extra };
}

describe.each(bothPairs)('the page sender over $name', (factory: PairFactory) => {
  async function setUp(memoryBytes = GUEST_BYTES): Promise<{ vm: VirtualMachine; pair: ConnectedPair; watch: WindowWatch; destination: Destination }> {
    const vm = await createGuest(memoryBytes);
    onTestFinished(() => vm.destroy());
    const pair = await factory.open();
    onTestFinished(() => pair.destroy());
    return { vm, pair, watch: watchWindow(pair.a), destination: receivePages(pair.b, vm) };
  }

  it('stops with the window full while the destination does not read, and sends every page intact once it reads again', async () => {
    const { vm, pair, watch, destination } = await setUp();
    pair.pause('b');
    const sender = new PageSender(watch.socket, vm, senderOptions());
    let settled = false;
    const sending = sender.send(everyPage(vm), 1, 0);
    sending.then(() => (settled = true), () => (settled = true));

    const sentWhilePaused = await settledValue(() => watch.sentBytes);
    expect(settled).toBe(false);
    expect(sentWhilePaused).toBeLessThan(GUEST_BYTES);
    // It filled its window and stopped there: never more than the window (plus the one frame it sends before it
    // checks) untaken, and it waits until half the window has been taken.
    expect(watch.maxUntakenBytes).toBeGreaterThan(SEND_WINDOW_BYTES);
    expect(watch.maxUntakenBytes).toBeLessThanOrEqual(SEND_WINDOW_BYTES + FRAME_BYTES);
    expect(watch.sentBytes - watch.takenBytes).toBeGreaterThan(SEND_WINDOW_BYTES / 2);

    pair.resume('b');
    const progress = await sending;
    expect(progress).toEqual({ pagesSent: vm.pageCount, bytesSent: GUEST_BYTES, zeroPages: 0 });
    expect(watch.takenBytes).toBe(GUEST_BYTES);
    expect(watch.maxUntakenBytes).toBeLessThanOrEqual(SEND_WINDOW_BYTES + FRAME_BYTES);
    // Everything taken has been read by now or soon; each page exactly once, as the guest holds it.
    await expect.poll(() => destination.arrivals.every((count) => count === 1), { timeout: 20_000 }).toBe(true);
    expect(destination.wrongPages).toEqual([]);
  });

  it('keeps sending to a destination that stops now and then, each time for less than the stall timeout, even when the whole send outlasts it', async () => {
    // Over ws a sender hears of progress only when all it had queued is taken (see the FrameSocket suite): up to a
    // window, 33 frames, plus the 4 the buffers hold. So the destination stops once every 40 frames, and no wait
    // for progress spans two of its stops. 160 frames: a stop after every 40, together far longer than one stall
    // timeout.
    const { vm, pair, watch, destination } = await setUp(5 * SEND_WINDOW_BYTES);
    const stallTimeoutMs = 2500;
    const stopMs = 1300;
    let dataMessages = 0;
    pair.b.onMessage((frame) => {
      if (isPageHeader(frame) || ++dataMessages % 40 !== 0) return;
      pair.pause('b');
      void delay(stopMs).then(() => pair.resume('b'));
    });
    const sender = new PageSender(watch.socket, vm, senderOptions({ stallTimeoutMs }));
    const startedMs = performance.now();
    const progress = await sender.send(everyPage(vm), 1, 0);
    expect(performance.now() - startedMs).toBeGreaterThan(stallTimeoutMs);
    expect(progress.bytesSent).toBe(vm.memoryBytes);
    expect(watch.maxUntakenBytes).toBeLessThanOrEqual(SEND_WINDOW_BYTES + FRAME_BYTES);
    await expect.poll(() => destination.arrivals.every((count) => count === 1), { timeout: 20_000 }).toBe(true);
    expect(destination.wrongPages).toEqual([]);
  });

  it('fails the send with FERRY_ERR_TIMEOUT, instead of waiting for ever, when the destination stops reading for good', async () => {
    const { vm, pair, watch } = await setUp();
    pair.pause('b');
    const sender = new PageSender(watch.socket, vm, senderOptions({ stallTimeoutMs: 300 }));
    await expect(sender.send(everyPage(vm), 1, 0)).rejects.toMatchObject({
      code: 'FERRY_ERR_TIMEOUT',
      message: 'the destination took no page data for 0.3 s',
    });
    expect(watch.sentBytes).toBeLessThan(GUEST_BYTES);
    expect(watch.maxUntakenBytes).toBeLessThanOrEqual(SEND_WINDOW_BYTES + FRAME_BYTES);
  });
});

describe('the page sender', () => {
  it('fails the send with FERRY_ERR_CONNECTION_LOST when the connection goes down under it', async () => {
    const vm = await createGuest();
    onTestFinished(() => vm.destroy());
    const pair = await bothPairs[0]!.open({ closeTimeoutMs: 100 });
    onTestFinished(() => pair.destroy());
    pair.pause('b');
    const sender = new PageSender(pair.a, vm, senderOptions());
    const sending = sender.send(everyPage(vm), 1, 0);
    pair.a.close();
    await expect(sending).rejects.toMatchObject({ code: 'FERRY_ERR_CONNECTION_LOST' });
  });
});

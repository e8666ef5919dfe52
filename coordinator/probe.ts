/**
 * `ferry vm probe`: what a client of a VM's service sees (DESIGN.md, "Guest service protocol"). A UDP client sends a
 * steady mix of PUT and GET at a set rate, retries each request unanswered after RETRY_AFTER_MS (same id, same bytes:
 * PUT is idempotent), and reports latency percentiles (first send to first reply, retries included), the longest
 * gap between two replies (the client-observed outage), the requests never answered, and whether every PUT the
 * service acknowledged reads back.
 *
 * Read-back is well defined because a key never has two PUTs outstanding: the service applies a key's PUTs in the
 * order they were sent, so its value must be the last PUT sent to it, or, when that one was never answered (it may
 * or may not have been applied), the last one answered before it.
 *
 * Latency goes into an HdrHistogram (hdr-histogram-js, the JavaScript port of Gil Tene's HdrHistogram that
 * autocannon and clinic use): constant memory, 3 significant digits from 1 µs to a minute, exact percentiles
 * without keeping every sample; pure JavaScript (its WebAssembly build is opt-in), so it runs on Node 20 as is.
 */
import dgram from 'node:dgram';
import { build, type Histogram } from 'hdr-histogram-js';
import { ErrorCode, FerryError } from '../shared/errors.js';

export interface ProbeOptions {
  /** "IP:PORT" of the VM's service. */
  address: string;
  ratePerSec: number;
  durationMs: number;
  /** Distinct keys the probe writes and reads (its own, prefixed by `keyPrefix`). */
  keys?: number;
  keyPrefix?: string;
  /** Called about once a second with the figures so far. */
  onTick?: (figures: { sent: number; answered: number; outstanding: number; longestGapMs: number }) => void;
  signal?: AbortSignal;
}

export interface ProbeResult {
  address: string;
  ratePerSec: number;
  durationMs: number;
  sent: number;
  answered: number;
  retries: number;
  /** Requests that never got a reply, even after retries and the grace period at the end. */
  unanswered: number;
  errors: number;
  latencyMs: { p50: number; p90: number; p99: number; p999: number; max: number; mean: number };
  /** The longest time between two replies while requests were outstanding: the client-observed outage. */
  longestGapMs: number;
  /** When that gap began, in ms from the start of the probe. */
  longestGapAtMs: number;
  /** When the probe started (epoch ms), to set its gaps beside an agent's log. */
  startedAtEpochMs: number;
  /** Every gap between replies longer than LONG_GAP_MS (the first 100): when it began (ms from the start), how long. */
  longGaps: { atMs: number; gapMs: number }[];
  writes: { keys: number; checked: number; lost: number; lostKeys: string[] };
}

/** Gaps between replies longer than this are listed one by one. */
const LONG_GAP_MS = 5;
/**
 * A request unanswered this long is sent again (same id and bytes), then after twice as long each time, up to
 * MAX_RETRY_AFTER_MS: a service that is only slow is not buried under retries.
 */
export const RETRY_AFTER_MS = 20;
const MAX_RETRY_AFTER_MS = 1000;
/** After the last send, how long the probe waits for replies before it counts a request unanswered. */
const GRACE_MS = 2000;
const TICK_MS = 1;
const RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024;

interface Pending {
  id: string;
  payload: Buffer;
  firstSentMs: number;
  lastSentMs: number;
  retryAfterMs: number;
  /** A PUT: its key and value. */
  put?: { key: string; value: string };
  onReply?: (text: string) => void;
}

interface KeyState {
  /** The last PUT sent, and how it was answered (`pending`: not yet, or never). */
  lastSent?: { value: string; status: 'pending' | 'ok' | 'error' };
  /** The value of the last PUT answered OK before `lastSent`. */
  lastAnswered?: string;
  putOutstanding: boolean;
}

export function parseAddress(address: string): { ip: string; port: number } {
  const match = /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$/.exec(address);
  if (!match) throw new FerryError(ErrorCode.BAD_INPUT, `"${address}" is not an IP:PORT address`, 'e.g. 127.100.0.5:7777');
  return { ip: match[1]!, port: Number(match[2]) };
}

/**
 * Where the client socket binds: a loopback service is reached from 127.0.0.1 (the agents serve loopback addresses
 * only to it), anything else from whichever interface routes there (a VM's address in another namespace).
 */
export function bindAddressFor(ip: string): string {
  return ip.startsWith('127.') ? '127.0.0.1' : '0.0.0.0';
}

export async function runProbe(options: ProbeOptions): Promise<ProbeResult> {
  const { ip, port } = parseAddress(options.address);
  const keyCount = options.keys ?? 100;
  const prefix = options.keyPrefix ?? `probe${process.pid}`;
  const socket = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, bindAddressFor(ip), () => resolve()));
  // The replies to everything kept during a switchover come in one burst, more than the default receive buffer holds
  // (208 KiB, about 200 small datagrams): without room, the kernel drops them here and the probe blames the service.
  try {
    socket.setRecvBufferSize(RECEIVE_BUFFER_BYTES);
  } catch {
    // Capped below this by the system (net.core.rmem_max): retries make up for what a burst loses.
  }
  const histogram: Histogram = build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 });
  const pending = new Map<string, Pending>();
  const keys: KeyState[] = Array.from({ length: keyCount }, () => ({ putOutstanding: false }));
  const startMs = performance.now();
  let nextId = 1;
  let sent = 0;
  let answered = 0;
  let retries = 0;
  let errors = 0;
  let lastReplyMs = startMs;
  let longestGapMs = 0;
  let longestGapAtMs = 0;
  let measuringGaps = true;
  const longGaps: ProbeResult['longGaps'] = [];
  const startedAtEpochMs = Date.now();

  const noteReply = (nowMs: number): void => {
    if (!measuringGaps) return;
    const gap = nowMs - lastReplyMs;
    if (gap > LONG_GAP_MS && longGaps.length < 100) longGaps.push({ atMs: lastReplyMs - startMs, gapMs: gap });
    if (gap > longestGapMs) {
      longestGapMs = gap;
      longestGapAtMs = lastReplyMs - startMs;
    }
    lastReplyMs = nowMs;
  };
  socket.on('message', (message) => {
    const text = message.toString('latin1');
    const space = text.indexOf(' ');
    const request = pending.get(space > 0 ? text.slice(0, space) : text);
    if (!request) return; // a reply to a retry already answered
    const nowMs = performance.now();
    pending.delete(request.id);
    answered += 1;
    if (measuringGaps) histogram.recordValue(Math.max(1, Math.round((nowMs - request.firstSentMs) * 1000)));
    noteReply(nowMs);
    const reply = text.slice(space + 1);
    if (reply.startsWith('ERROR')) errors += 1;
    request.onReply?.(reply);
  });
  const send = (request: Pending): void => {
    socket.send(request.payload, port, ip);
  };
  const ask = (body: string, extra: Omit<Pending, 'id' | 'payload' | 'firstSentMs' | 'lastSentMs' | 'retryAfterMs'> = {}): void => {
    const id = String(nextId++);
    const nowMs = performance.now();
    const request: Pending = { id, payload: Buffer.from(`${id} ${body}`, 'latin1'), firstSentMs: nowMs, lastSentMs: nowMs, retryAfterMs: RETRY_AFTER_MS, ...extra };
    pending.set(id, request);
    sent += 1;
    send(request);
  };
  const retry = (nowMs: number): void => {
    for (const request of pending.values()) {
      if (nowMs - request.lastSentMs >= request.retryAfterMs) {
        request.lastSentMs = nowMs;
        request.retryAfterMs = Math.min(2 * request.retryAfterMs, MAX_RETRY_AFTER_MS);
        retries += 1;
        send(request);
      }
    }
  };
  const put = (index: number, value: string): void => {
    const state = keys[index]!;
    if (state.lastSent?.status === 'ok') state.lastAnswered = state.lastSent.value;
    const record: NonNullable<KeyState['lastSent']> = { value, status: 'pending' };
    state.lastSent = record;
    state.putOutstanding = true;
    ask(`PUT ${prefix}-${index} ${value}`, {
      onReply: (reply) => {
        state.putOutstanding = false;
        record.status = reply === 'OK' ? 'ok' : 'error';
      },
    });
  };

  // The steady phase: `rate` requests a second on the keys in turn, half PUT and half GET; which keys get a PUT
  // alternates from one pass over the keys to the next, so every key is written whatever their number.
  let round = 0;
  await new Promise<void>((resolve) => {
    let lastTickMs = startMs;
    const timer = setInterval(() => {
      const nowMs = performance.now();
      const due = Math.floor(((nowMs - startMs) * options.ratePerSec) / 1000) - sent;
      for (let i = 0; i < due && nowMs - startMs < options.durationMs; i++) {
        const index = round % keyCount;
        const state = keys[index]!;
        const putTurn = (round + Math.floor(round / keyCount)) % 2 === 0;
        if (putTurn && !state.putOutstanding) put(index, `v${round}`);
        else ask(`GET ${prefix}-${index}`);
        round += 1;
      }
      retry(nowMs);
      if (nowMs - lastTickMs >= 1000) {
        lastTickMs = nowMs;
        options.onTick?.({ sent, answered, outstanding: pending.size, longestGapMs });
      }
      if (nowMs - startMs >= options.durationMs || options.signal?.aborted) {
        clearInterval(timer);
        resolve();
      }
    }, TICK_MS);
  });
  // Outstanding requests get the grace period (with retries) to be answered.
  const settle = async (): Promise<void> => {
    const deadline = performance.now() + GRACE_MS;
    while (pending.size > 0 && performance.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 5));
      retry(performance.now());
    }
  };
  await settle();
  const unansweredDuringRun = pending.size;
  const steady = { sent, answered, errors };
  pending.clear();
  measuringGaps = false;

  // Read-back: every key the probe wrote, with the same retries.
  const lostKeys: string[] = [];
  let checked = 0;
  for (let index = 0; index < keyCount; index++) {
    const state = keys[index]!;
    const last = state.lastSent;
    if (!last) continue;
    // What the key may hold: the last PUT if it was acknowledged; if it was never answered, it or the one before;
    // if it was refused, the one before. `undefined` stands for no value at all (NOTFOUND).
    const allowed: (string | undefined)[] = last.status === 'ok' ? [last.value] : last.status === 'pending' ? [last.value, state.lastAnswered] : [state.lastAnswered];
    checked += 1;
    ask(`GET ${prefix}-${index}`, {
      onReply: (reply) => {
        const value = reply.startsWith('VALUE ') ? reply.slice(6) : undefined;
        if (!allowed.includes(value)) lostKeys.push(`${prefix}-${index}`);
      },
    });
  }
  await settle();
  const readsUnanswered = pending.size;
  socket.close();
  const ms = (micros: number): number => micros / 1000;
  return {
    address: options.address,
    ratePerSec: options.ratePerSec,
    durationMs: options.durationMs,
    sent: steady.sent,
    answered: steady.answered,
    retries,
    unanswered: unansweredDuringRun,
    errors: steady.errors,
    latencyMs: {
      p50: ms(histogram.getValueAtPercentile(50)),
      p90: ms(histogram.getValueAtPercentile(90)),
      p99: ms(histogram.getValueAtPercentile(99)),
      p999: ms(histogram.getValueAtPercentile(99.9)),
      max: ms(histogram.maxValue),
      mean: ms(histogram.mean),
    },
    longestGapMs,
    longestGapAtMs,
    startedAtEpochMs,
    longGaps,
    writes: { keys: keyCount, checked, lost: lostKeys.length + readsUnanswered, lostKeys: lostKeys.slice(0, 10) },
  };
}

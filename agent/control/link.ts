/**
 * `link.measure`: the page stream's throughput from this host to another, measured on the path a migration takes.
 *
 * Synthetic pages of random bytes (incompressible, should any layer ever compress) are sent by the migration's own
 * page sender (migration/page-sender.ts: each page hashed where it lies, runs sent as views, the same backpressure)
 * on the path a migration's pages take: a page stream of their own, dialled back to this agent by the destination
 * (shared/page-stream.ts), opened as a migration opens it and falling back to the peer WebSocket as it does. The
 * destination installs, hashes, checks and discards them (peer/link-probe.ts). The time runs from the first send
 * until the destination answers `link.end`, having checked every page before it: the same span a round's
 * `peer.sync` closes. The reply says which path was measured: the stream goes at about twice the WebSocket's pace,
 * so a forecast made over the one does not stand for a migration over the other.
 *
 * The destination dials the stream back to the URL the coordinator gives in `from` (this agent does not know how
 * others reach it); without one, or on an agent that listens nowhere, the pages go on the WebSocket.
 *
 * The reply also carries what a forecast needs beside throughput: the connection's round trip, how long the dial took,
 * how fast the destination makes fresh memory real (its reservation's pace), and the fixed costs of the last
 * migrations from here to there (migration/history.ts).
 */
import { randomFillSync } from 'node:crypto';
import { LINK_MEASURE, PAGE_SIZE, PEER_REPLY_TIMEOUT_MS } from '../../shared/constants.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { PageHasher, allocateGuestMemory } from '../../shared/page-hash.js';
import { fromStreamSocket } from '../../shared/page-stream.js';
import type { LinkMeasure } from '../../shared/protocol.js';
import type { Agent, ControlServer } from '../agent.js';
import { PageSender } from '../migration/page-sender.js';
import { openPageStream, type OpenedPageStream } from '../migration/page-stream-source.js';
import type { VirtualMachine } from '../vm/vm.js';

/** Round trips timed for `rttMs`; the shortest is kept (the others include scheduling noise). */
const PINGS = 5;
/** Random bytes drawn per call: crypto's limit on one fill is 2^31 - 1 bytes, and smaller calls keep the loop turning. */
const FILL_SLICE_BYTES = 16 * 1024 * 1024;

type Measured = Omit<LinkMeasure, 'ageMs' | 'recent'>;

/**
 * The last measurement to each agent (by name and URL, and the URL it was to dial back: none measures the
 * WebSocket), for requests that accept one of a given age.
 */
const lastMeasured = new WeakMap<Agent, Map<string, { link: Measured; atMs: number; sampleBytes: number }>>();

export function serveLinkControl(connection: ControlServer, agent: Agent): void {
  connection.handle('link.measure', async ({ to, bytes, maxAgeMs, from }, context) => {
    if (to.name === agent.name) throw new FerryError(ErrorCode.BAD_INPUT, `${agent.name} cannot measure a link to itself`, 'name another host');
    let memo = lastMeasured.get(agent);
    if (!memo) lastMeasured.set(agent, (memo = new Map()));
    const key = `${to.name} ${to.url} ${from?.url ?? ''}`;
    const last = memo.get(key);
    const wanted = bytes ?? LINK_MEASURE.defaultBytes;
    // A smaller sample than asked for does not stand for this one: short transfers go at a short transfer's pace.
    const fresh = last && maxAgeMs !== undefined && performance.now() - last.atMs <= maxAgeMs && last.sampleBytes >= wanted
      ? { link: last.link, ageMs: performance.now() - last.atMs }
      : { link: await measure(agent, to, from, wanted, context.signal), ageMs: 0 };
    if (fresh.ageMs === 0) memo.set(key, { link: fresh.link, atMs: performance.now(), sampleBytes: wanted });
    // The fixed costs are read now, whatever the measurement's age: a migration since then is among them.
    const recent = agent.migrationHistory.recent(to.name);
    return { ...fresh.link, ageMs: fresh.ageMs, ...(recent ? { recent } : {}) };
  });
}

async function measure(agent: Agent, to: { name: string; url: string }, from: { url: string } | undefined, bytes: number, signal: AbortSignal): Promise<Measured> {
  const pageCount = bytes / PAGE_SIZE;
  // The pages to send, made before the clock starts: random bytes in shared wasm memory, where the hasher reads.
  const wasm = allocateGuestMemory(bytes);
  const memory = new Uint8Array(wasm.buffer, 0, bytes);
  for (let offset = 0; offset < bytes; offset += FILL_SLICE_BYTES) {
    randomFillSync(new Uint8Array(wasm.buffer, offset, Math.min(FILL_SLICE_BYTES, bytes - offset)));
    await new Promise((resolve) => setImmediate(resolve));
  }
  const dialStartMs = performance.now();
  const peer = await agent.dial(to.url, signal);
  const dialMs = performance.now() - dialStartMs;
  let opened: OpenedPageStream | undefined;
  try {
    const request = { timeoutMs: PEER_REPLY_TIMEOUT_MS, signal };
    let rttMs = Number.POSITIVE_INFINITY;
    for (let ping = 0; ping < PINGS; ping++) {
      const pingStartMs = performance.now();
      await peer.request('link.ping', {}, request);
      rttMs = Math.min(rttMs, performance.now() - pingStartMs);
    }
    let populateBytesPerSec = 0;
    // As a migration (control/migrate.ts): a page stream of their own, when the destination can dial this agent back.
    if (from && agent.pageStreams.listening) {
      opened = await openPageStream(agent.pageStreams, async (ticket) => {
        const begun = await peer.request('link.begin', { pages: pageCount, stream: { url: from.url, ticket } }, request);
        populateBytesPerSec = begun.populateBytesPerSec;
        return { open: begun.streamOpen, reason: begun.streamReason };
      }, agent.log);
      if (opened.fallback) agent.log.warn('no page stream of its own for the link measurement; pages go over the peer WebSocket', { to: to.name, reason: opened.fallback });
    } else {
      ({ populateBytesPerSec } = await peer.request('link.begin', { pages: pageCount }, request));
    }
    // What the page sender reads of a VM; the synthetic pages stand in for guest memory.
    const source = {
      memory, pageCount, hasher: new PageHasher(wasm), net: undefined,
      pageView: (first: number, count = 1) => Buffer.from(wasm.buffer, first * PAGE_SIZE, count * PAGE_SIZE),
    } as unknown as VirtualMachine;
    const sender = new PageSender(opened?.socket ? fromStreamSocket(opened.socket) : peer.socket, source, { maxBandwidthBytesPerSec: 0, signal: signal, now: () => performance.now() });
    const pages = Uint32Array.from({ length: pageCount }, (_, page) => page);
    const everyOther = (from: number, to: number): Uint32Array => Uint32Array.from({ length: (to - from) >> 1 }, (_, index) => from + 2 * index);
    // Four parts, each ended by a round trip (the destination answers once it has checked every frame sent before it,
    // `streamBytes`, as `peer.sync` ends a round): a warm-up, untimed (a run, then scattered pages: neither side's code
    // nor the sender's staging buffers are measured cold in a fresh agent); then a quarter of the pages as one run, as
    // round 1 sends memory; then every other page of the last half, scattered as the dirty pages of later rounds are
    // (gathered into staging buffers here, installed page by page there).
    const eighth = pageCount >> 3;
    const quarter = pageCount >> 2;
    const half = pageCount >> 1;
    const warmScattered = everyOther(eighth, quarter);
    await sender.send(pages.subarray(0, eighth), 1, 0);
    await sender.send(warmScattered, 2, 0);
    await peer.request('link.ping', { streamBytes: sender.streamBytes }, request);
    const runStartedMs = performance.now();
    const run = await sender.send(pages.subarray(quarter, half), 1, 0);
    await peer.request('link.ping', { streamBytes: sender.streamBytes }, request);
    const ms = Math.max(performance.now() - runStartedMs, 0.001);
    const scatteredPages = everyOther(half, pageCount);
    const scatteredStartedMs = performance.now();
    const scattered = await sender.send(scatteredPages, 2, 0);
    const received = await peer.request('link.end', { streamBytes: sender.streamBytes }, request);
    const scatteredMs = Math.max(performance.now() - scatteredStartedMs, 0.001);
    const pagesSent = eighth + warmScattered.length + (half - quarter) + scatteredPages.length;
    if (received.pagesReceived !== pagesSent) {
      throw new FerryError(ErrorCode.PROTOCOL, `${to.name} received ${received.pagesReceived} of the ${pagesSent} pages sent`, 'check both agents run the same ferry version');
    }
    const pageStream = opened?.socket ? 'tcp' : 'ws';
    agent.log.debug('link measured', { to: to.name, bytes, ms, scatteredMs, rttMs, dialMs, pageStream });
    return {
      from: agent.name, to: to.name, bytes: run.bytesSent, ms, bytesPerSec: (run.bytesSent / ms) * 1000,
      scatteredBytesPerSec: (scattered.bytesSent / scatteredMs) * 1000, rttMs, dialMs, populateBytesPerSec, mismatches: received.mismatches,
      pageStream, ...(opened?.fallback ? { pageStreamFallback: opened.fallback } : {}),
    };
  } finally {
    // Every page was taken before `link.end` was answered: nothing is lost closing the stream at once.
    opened?.socket?.destroy();
    peer.close();
    agent.memoryReturn.released();
  }
}

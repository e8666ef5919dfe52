/**
 * The destination's side of `link.measure` (agent/control/link.ts): fresh memory for the probe's pages, made real as a
 * reservation's is (its pace is what a forecast needs for stage 1), then each page frame installed into it and
 * hashed where it lies, as migration/target.ts does with a migration's pages, and checked against the hash it came
 * with. Nothing is kept: `link.end` frees the memory, and so does the connection closing.
 *
 * The frames come the way a migration's do: on a page stream dialled back to the source when `link.begin` hands
 * over a ticket (shared/page-stream.ts; read straight into the probe's memory), else on this WebSocket. `link.ping`
 * and `link.end` say how many page-frame bytes were sent before them, and are answered once that many have been
 * taken, as `peer.sync` is (target.ts `streamAt`): the source's clock then stops when the pages are in and checked.
 */
import { PAGE_SIZE, PAGE_STREAM_DIAL_TIMEOUT_MS, PEER_REPLY_TIMEOUT_MS } from '../../shared/constants.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { decodePageHeader, expectedDataBytes, isPageHeader, pageHeaderBytes, type PageHeader } from '../../shared/page-frame.js';
import { PageHasher, allocateGuestMemory } from '../../shared/page-hash.js';
import { dialPageStream, type PageStreamConnection } from '../../shared/page-stream.js';
import type { Agent, PeerServer } from '../agent.js';
import { populate } from '../catalog.js';
import { PageInstaller } from '../migration/page-install.js';
import { PageStreamReader } from '../migration/page-stream-reader.js';

interface Probe {
  installer: PageInstaller;
  memory: Uint8Array;
  pageCount: number;
  pending?: PageHeader;
  pagesReceived: number;
  mismatches: number;
  /** Page-frame bytes taken, on either path: `link.ping` and `link.end` wait on it. */
  streamBytes: number;
  waiters: (() => void)[];
  /** The page stream of its own, when the source asked for one and it opened. */
  stream?: PageStreamConnection;
  reader?: PageStreamReader;
  /** `link.end` answered, or the connection closed: the stream closing now is no loss. */
  ended: boolean;
}

export function serveLinkProbe(connection: PeerServer, agent: Agent): void {
  let probe: Probe | undefined;
  // The live target (peer/live-target.ts) has the hook first; frames it does not take, and only those, come here.
  const earlier = connection.rawFrameHook;
  connection.rawFrameHook = (frame) => {
    if (earlier?.(frame)) return true;
    if (!probe) return false;
    try {
      return take(probe, frame);
    } catch (error) {
      agent.log.warn('bad page frame in a link measurement; closing the connection', { error: (error as Error).message });
      connection.close(1008, 'bad page frame');
      return true;
    }
  };
  /** Frees the probe's memory and closes its page stream, once. */
  const end = (ending: Probe): void => {
    if (ending.ended) return;
    ending.ended = true;
    ending.stream?.socket.destroy();
    if (probe === ending) probe = undefined;
    agent.memoryReturn.released();
  };
  connection.signal.addEventListener('abort', () => {
    if (probe) end(probe);
  }, { once: true });

  connection.handle('link.begin', async ({ pages, stream }) => {
    if (probe) throw new FerryError(ErrorCode.PROTOCOL, 'a link measurement is already under way on this connection', 'open a new connection per measurement');
    const wasm = allocateGuestMemory(pages * PAGE_SIZE);
    const memory = new Uint8Array(wasm.buffer, 0, pages * PAGE_SIZE);
    const startedMs = performance.now();
    await populate(memory);
    const populateMs = Math.max(performance.now() - startedMs, 0.001);
    const begun: Probe = {
      installer: new PageInstaller(memory, new PageHasher(wasm), pages), memory, pageCount: pages, pagesReceived: 0, mismatches: 0,
      streamBytes: 0, waiters: [], ended: false,
    };
    probe = begun;
    const populateBytesPerSec = (memory.length / populateMs) * 1000;
    if (!stream) return { populateBytesPerSec, streamOpen: false };
    // As for a migration's `peer.stream`: a stream that cannot be opened is no failure; the source sends on this
    // WebSocket instead, and its reply says so.
    let opened: PageStreamConnection;
    try {
      opened = await dialPageStream({ url: stream.url, token: agent.token, ticket: stream.ticket, timeoutMs: PAGE_STREAM_DIAL_TIMEOUT_MS });
    } catch (error) {
      agent.log.warn('could not open the page stream for a link measurement; pages come over the peer WebSocket', { error: (error as Error).message });
      return { populateBytesPerSec, streamOpen: false, streamReason: (error as Error).message };
    }
    if (connection.signal.aborted || begun.ended) {
      opened.socket.destroy();
      end(begun);
      return { populateBytesPerSec, streamOpen: false, streamReason: 'the peer connection closed' };
    }
    attachStream(begun, opened, (why) => {
      agent.log.warn('page stream of a link measurement lost; closing the peer connection', { error: why });
      connection.close(1011, 'page stream lost');
    });
    return { populateBytesPerSec, streamOpen: true };
  });
  connection.handle('link.ping', async ({ streamBytes }) => {
    await streamAt(probe, streamBytes);
    return {};
  });
  connection.handle('link.end', async ({ streamBytes }) => {
    const ending = probe;
    if (!ending) throw new FerryError(ErrorCode.PROTOCOL, 'link.begin must come first', 'the peer is not a compatible ferry-agent');
    await streamAt(ending, streamBytes);
    if (ending.ended) throw new FerryError(ErrorCode.CONNECTION_LOST, 'the link measurement ended while its last pages were due');
    const { pagesReceived, mismatches } = ending;
    end(ending);
    return { pagesReceived, mismatches };
  });
}

/** A header, or the data message after one, off the WebSocket: installed, hashed, checked. Frames are handled in order, synchronously. */
function take(probe: Probe, frame: Buffer): boolean {
  if (probe.pending) {
    const header = probe.pending;
    probe.pending = undefined;
    const expected = expectedDataBytes(header);
    if (frame.length !== expected) throw new FerryError(ErrorCode.PROTOCOL, `page data is ${frame.length} bytes, its header announced ${expected}`);
    installFrame(probe, header, frame);
    return true;
  }
  if (!isPageHeader(frame)) return false;
  if (probe.stream) throw new FerryError(ErrorCode.PROTOCOL, 'page data arrived on the WebSocket while the link measurement\'s page stream is open');
  const header = decodePageHeader(frame, probe.pageCount);
  // As target.ts: a frame of zero pages only has no data message.
  if (header.dataPages === 0) installFrame(probe, header, Buffer.alloc(0));
  else probe.pending = header;
  return true;
}

/**
 * As target.ts installs a migration's pages (page-install.ts): from `data`, or in place when a page stream read them
 * straight into the probe's memory (undefined).
 */
function installFrame(probe: Probe, header: PageHeader, data: Buffer | undefined, bytes = pageHeaderBytes(header.pages.length) + (data?.length ?? 0)): void {
  probe.mismatches += data ? probe.installer.install(header, data) : probe.installer.installInPlace(header);
  probe.pagesReceived += header.pages.length;
  probe.streamBytes += bytes;
  if (probe.waiters.length > 0) for (const waiter of probe.waiters.splice(0)) waiter();
}

/** The page stream the source opened: frames are read from it into the probe's memory from now on. */
function attachStream(probe: Probe, stream: PageStreamConnection, onLost: (why: string) => void): void {
  probe.stream = stream;
  probe.reader = new PageStreamReader({
    pageCount: probe.pageCount,
    memory: probe.memory,
    onFrame: (header, staged, bytes) => installFrame(probe, header, staged, bytes),
  });
  let error: string | undefined;
  stream.socket.on('error', (cause) => {
    error = cause.message;
  });
  stream.socket.once('close', () => {
    if (!probe.ended) onLost(error ?? 'the page stream closed while pages were due');
    for (const waiter of probe.waiters.splice(0)) waiter();
  });
  stream.consume(probe.reader);
}

/**
 * Resolves once `bytes` of page frames have been taken (modelled on target.ts `streamAt`): what follows on the
 * WebSocket is then answered after every page sent before it, as on one ordered connection. Without `bytes` (the
 * round trips timed before `link.begin`) there is nothing to wait for.
 */
async function streamAt(probe: Probe | undefined, bytes: number | undefined): Promise<void> {
  if (bytes === undefined) return;
  if (!probe) throw new FerryError(ErrorCode.PROTOCOL, 'link.begin must come first', 'the peer is not a compatible ferry-agent');
  const deadline = performance.now() + PEER_REPLY_TIMEOUT_MS;
  for (;;) {
    if (probe.streamBytes > bytes) throw new FerryError(ErrorCode.PROTOCOL, `${probe.streamBytes} bytes of page frames arrived where the source sent ${bytes}`, 'the peer is not a compatible ferry-agent');
    if (probe.streamBytes === bytes && !probe.reader?.midFrame && !probe.pending) return;
    if (!probe.stream) {
      throw new FerryError(ErrorCode.PROTOCOL, `the source says it sent ${bytes} bytes of page frames on this connection, and ${probe.streamBytes} arrived before its request`, 'the peer is not a compatible ferry-agent');
    }
    if (probe.stream.socket.destroyed) {
      throw new FerryError(ErrorCode.CONNECTION_LOST, `the page stream ended after ${probe.streamBytes} of the ${bytes} bytes sent`, 'check the network between the hosts');
    }
    const left = deadline - performance.now();
    if (left <= 0) throw new FerryError(ErrorCode.TIMEOUT, `${bytes - probe.streamBytes} bytes of page frames did not arrive within ${PEER_REPLY_TIMEOUT_MS / 1000} s`, 'check the network between the hosts');
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, left);
      probe.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

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
import { PAGE_SIZE } from '../../shared/constants.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { PageHasher, allocateGuestMemory } from '../../shared/page-hash.js';
import type { Agent, PeerServer } from '../agent.js';
import { populate } from '../catalog.js';
import { PageReceiver } from '../migration/page-receiver.js';
import { dialBack } from './dial-back.js';

interface Probe {
  /** Takes the frames, on either path, into the probe's memory, installed, hashed and checked (page-receiver.ts). */
  receiver: PageReceiver;
  mismatches: number;
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
      return probe.receiver.takeMessage(frame);
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
    ending.receiver.closeStream();
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
    const begun: Probe = { receiver: new PageReceiver(memory, new PageHasher(wasm), pages, { afterInstall: (_header, mismatches) => void (begun.mismatches += mismatches) }), mismatches: 0, ended: false };
    probe = begun;
    const populateBytesPerSec = (memory.length / populateMs) * 1000;
    if (!stream) return { populateBytesPerSec, streamOpen: false };
    // As for a migration's `peer.stream`: a stream that cannot be opened is no failure; the source sends on this
    // WebSocket instead, and its reply says so. (A connection that closed meanwhile has ended the probe already.)
    const dialed = await dialBack(agent, connection, { url: stream.url, ticket: stream.ticket, what: 'a link measurement' }, (opened, onLost) => {
      if (begun.ended) throw new FerryError(ErrorCode.PROTOCOL, 'the link measurement ended while its page stream opened');
      begun.receiver.attachStream(opened, () => begun.ended, onLost);
    });
    return dialed.open ? { populateBytesPerSec, streamOpen: true } : { populateBytesPerSec, streamOpen: false, streamReason: dialed.reason };
  });
  connection.handle('link.ping', async ({ streamBytes }) => {
    if (streamBytes !== undefined && !probe) throw new FerryError(ErrorCode.PROTOCOL, 'link.begin must come first', 'the peer is not a compatible ferry-agent');
    await probe?.receiver.streamAt(streamBytes);
    return {};
  });
  connection.handle('link.end', async ({ streamBytes }) => {
    const ending = probe;
    if (!ending) throw new FerryError(ErrorCode.PROTOCOL, 'link.begin must come first', 'the peer is not a compatible ferry-agent');
    await ending.receiver.streamAt(streamBytes);
    if (ending.ended) throw new FerryError(ErrorCode.CONNECTION_LOST, 'the link measurement ended while its last pages were due');
    const { mismatches } = ending;
    const { pagesReceived } = ending.receiver;
    end(ending);
    return { pagesReceived, mismatches };
  });
}

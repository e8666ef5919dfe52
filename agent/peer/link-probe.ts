/**
 * The destination's side of `link.measure` (agent/control/link.ts): fresh memory for the probe's pages, made real as a
 * reservation's is (its pace is what a forecast needs for stage 1), then each page frame installed into it and
 * hashed where it lies, as migration/target.ts does with a migration's pages, and checked against the hash it came
 * with. Nothing is kept: `link.end` frees the memory, and so does the connection closing.
 */
import { PAGE_SIZE } from '../../shared/constants.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { decodePageHeader, expectedDataBytes, isPageHeader, type PageHeader } from '../../shared/page-frame.js';
import { PageHasher, allocateGuestMemory } from '../../shared/page-hash.js';
import type { Agent, PeerServer } from '../agent.js';
import { populate } from '../catalog.js';

interface Probe {
  memory: Uint8Array;
  hasher: PageHasher;
  pageCount: number;
  table: Uint32Array;
  pending?: PageHeader;
  pagesReceived: number;
  mismatches: number;
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
  connection.signal.addEventListener('abort', () => {
    if (probe) agent.memoryReturn.released();
    probe = undefined;
  }, { once: true });

  connection.handle('link.begin', async ({ pages }) => {
    if (probe) throw new FerryError(ErrorCode.PROTOCOL, 'a link measurement is already under way on this connection', 'open a new connection per measurement');
    const wasm = allocateGuestMemory(pages * PAGE_SIZE);
    const memory = new Uint8Array(wasm.buffer, 0, pages * PAGE_SIZE);
    const startedMs = performance.now();
    await populate(memory);
    const populateMs = Math.max(performance.now() - startedMs, 0.001);
    probe = { memory, hasher: new PageHasher(wasm), pageCount: pages, table: new Uint32Array(2), pagesReceived: 0, mismatches: 0 };
    return { populateBytesPerSec: (memory.length / populateMs) * 1000 };
  });
  connection.handle('link.ping', async () => ({}));
  connection.handle('link.end', async () => {
    if (!probe) throw new FerryError(ErrorCode.PROTOCOL, 'link.begin must come first', 'the peer is not a compatible ferry-agent');
    const { pagesReceived, mismatches } = probe;
    probe = undefined;
    agent.memoryReturn.released();
    return { pagesReceived, mismatches };
  });
}

/** A header, or the data message after one: installed, hashed, checked. Frames are handled in order, synchronously. */
function take(probe: Probe, frame: Buffer): boolean {
  if (probe.pending) {
    const header = probe.pending;
    probe.pending = undefined;
    const expected = expectedDataBytes(header);
    if (frame.length !== expected) throw new FerryError(ErrorCode.PROTOCOL, `page data is ${frame.length} bytes, its header announced ${expected}`);
    const { pages, hashes } = header;
    // As target.ts installs: a run in one copy, scattered pages one by one; then each hashed where it now lies.
    const first = pages[0]!;
    if (pages[pages.length - 1]! - first === pages.length - 1) probe.memory.set(frame, first * PAGE_SIZE);
    else for (let i = 0; i < pages.length; i++) probe.memory.set(frame.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), pages[i]! * PAGE_SIZE);
    for (let i = 0; i < pages.length; i++) {
      const page = pages[i]!;
      probe.hasher.hashInto(page, probe.table, 0);
      if (probe.table[0] !== hashes[2 * i] || probe.table[1] !== hashes[2 * i + 1]) probe.mismatches += 1;
    }
    probe.pagesReceived += pages.length;
    return true;
  }
  if (!isPageHeader(frame)) return false;
  probe.pending = decodePageHeader(frame, probe.pageCount);
  return true;
}

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
import { PageInstaller } from '../migration/page-install.js';

interface Probe {
  installer: PageInstaller;
  pageCount: number;
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
    probe = { installer: new PageInstaller(memory, new PageHasher(wasm), pages), pageCount: pages, pagesReceived: 0, mismatches: 0 };
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
    installFrame(probe, header, frame);
    return true;
  }
  if (!isPageHeader(frame)) return false;
  const header = decodePageHeader(frame, probe.pageCount);
  // As target.ts: a frame of zero pages only has no data message.
  if (header.dataPages === 0) installFrame(probe, header, Buffer.alloc(0));
  else probe.pending = header;
  return true;
}

/** As target.ts installs a migration's pages (page-install.ts). */
function installFrame(probe: Probe, header: PageHeader, data: Buffer): void {
  probe.mismatches += probe.installer.install(header, data);
  probe.pagesReceived += header.pages.length;
}

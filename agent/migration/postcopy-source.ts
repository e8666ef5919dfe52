/**
 * A post-copy's second half on the source (DESIGN.md, "Post-copy"): the VM runs at the destination, and this side,
 * its vCPU paused since the switch, sends the pages the destination still lacks. Two paths at once, as QEMU's
 * post-copy has its preempt channel beside the migration stream:
 *
 * - the background push, in page order from a cursor, on the page stream (or the peer WebSocket when there is none);
 * - pages the destination asks for (`peer.faults` events: a vCPU waiting on a fault, or a page that arrived
 *   damaged), sent at once on the peer WebSocket, ahead of whatever the push has queued; the push then goes on from
 *   just after the last page asked for, where the guest is likely to touch next.
 *
 * Guest memory here no longer changes (the vCPU is paused for good), so every copy of a page sent after the switch is
 * the same, and its hash, kept in the migration's page-hash table, is final. Once every page has been sent the source
 * asks `peer.postcopy-end`: the destination answers when it holds every page, with the digest of its table, which
 * must equal this side's.
 *
 * The link breaking is no failure of the VM: `pushPostcopy` throws, the caller keeps this copy (`postcopy-out`), and
 * `ferry migrate NAME --resume` calls it again with the pages the destination says it still lacks.
 */
import { PAGES_PER_FRAME, PEER_REPLY_TIMEOUT_MS } from '../../shared/constants.js';
import { formatDigest } from '../../shared/checksum.js';
import { ErrorCode, FerryError, abortReason } from '../../shared/errors.js';
import type { FrameSocket } from '../../shared/frame-socket.js';
import type { Logger } from '../../shared/log.js';
import { PAGE_FLAG_PAUSED, PAGE_FLAG_POSTCOPY } from '../../shared/page-frame.js';
import { pageRequestEventSchema, type MigrationEvent, type PeerOps, type PostcopyReport, type ReplyOf } from '../../shared/protocol.js';
import type { TableDigest } from '../../shared/table-digest.js';
import type { VirtualMachine } from '../vm/vm.js';
import { PageSender } from './page-sender.js';
import type { PeerClient } from './peer-client.js';

/** Pages the push hands the sender at a time: the cursor moves to a fault's neighbourhood between two of these. */
const PUSH_BATCH_PAGES = 4 * PAGES_PER_FRAME;
const FLAGS = PAGE_FLAG_PAUSED | PAGE_FLAG_POSTCOPY;
const PROGRESS_INTERVAL_MS = 100;

export interface PostcopyPushContext {
  vm: VirtualMachine;
  peer: PeerClient;
  /** The page stream for the push; none: the push goes on the peer WebSocket too, a batch at a time. */
  pushSocket: FrameSocket | undefined;
  /** The migration's page-hash table and its digest (page-sender.ts, table-digest.ts). */
  hashes: Uint32Array;
  tableDigest: TableDigest;
  /** The pages the destination lacks (protocol.ts, pageBitmapSchema). */
  missing: Uint8Array;
  /** The round number its frames carry. */
  round: number;
  /** The push's cap, bytes per second (0: none); pages asked for are never held back. */
  maxBandwidthBytesPerSec: number;
  signal: AbortSignal;
  now: () => number;
  emit: (event: MigrationEvent) => void;
  log: Logger;
  /** Kept up to date as pages go, over every resume. */
  stats: PostcopyReport;
}

export interface PostcopyEnd {
  sourceDigest: string;
  answer: ReplyOf<PeerOps, 'peer.postcopy-end'>;
}

/** Sends every page set in `missing`, serving the destination's requests first; resolves once it holds them all. */
export async function pushPostcopy(context: PostcopyPushContext): Promise<PostcopyEnd> {
  const { vm, peer, stats, now, log, emit } = context;
  const { pageCount } = vm;
  const unsent = new Uint8Array(pageCount);
  let left = 0;
  for (let page = 0; page < pageCount; page++) {
    if ((context.missing[page >>> 3]! & (1 << (page & 7))) === 0) continue;
    unsent[page] = 1;
    left += 1;
  }
  const startedMs = now();
  const abort = new AbortController();
  const stop = (reason: unknown): void => abort.abort(reason);
  const onCancel = (): void => stop(context.signal.reason);
  const onClosed = (): void => stop(new FerryError(ErrorCode.CONNECTION_LOST, 'the connection to the destination closed during post-copy', 'the VM runs at the destination and waits for its missing pages: `ferry migrate NAME --resume` sends them'));
  context.signal.addEventListener('abort', onCancel, { once: true });
  peer.signal.addEventListener('abort', onClosed, { once: true });
  const signal = abort.signal;
  const push = new PageSender(context.pushSocket ?? peer.socket, vm, {
    maxBandwidthBytesPerSec: context.maxBandwidthBytesPerSec, signal, now, hashes: context.hashes, framesPerTurn: 1,
  });
  const urgent = new PageSender(peer.socket, vm, { maxBandwidthBytesPerSec: 0, signal, now, hashes: context.hashes, framesPerTurn: 1 });

  // Pages asked for: sent by one loop at a time, in page order, each batch as it stands when the last one is handed over.
  const queue = new Set<number>();
  let cursor = 0;
  let urgentBusy = false;
  let urgentIdle: (() => void) | undefined;
  const serveUrgent = (): void => {
    if (urgentBusy || queue.size === 0) return;
    urgentBusy = true;
    void (async () => {
      try {
        while (queue.size > 0) {
          const pages = Uint32Array.from(queue).sort();
          queue.clear();
          context.tableDigest.touchAll(pages);
          const sent = await urgent.send(pages, context.round, FLAGS);
          stats.requestedPages += pages.length;
          stats.bytesSent += sent.bytesSent;
        }
      } catch (error) {
        stop(error);
      } finally {
        urgentBusy = false;
        urgentIdle?.();
      }
    })();
  };
  const asked = (body: unknown): void => {
    const parsed = pageRequestEventSchema.safeParse(body);
    if (!parsed.success || parsed.data.pages.some((page) => page >= pageCount)) {
      log.warn('a post-copy page request that does not check out; ignored', { vm: vm.name });
      return;
    }
    for (const page of parsed.data.pages) {
      queue.add(page);
      if (unsent[page]) {
        unsent[page] = 0;
        left -= 1;
      }
    }
    cursor = (parsed.data.pages.at(-1)! + 1) % pageCount;
    serveUrgent();
  };
  const faults = peer.request('peer.faults', {}, { onEvent: asked, signal });
  faults.catch(() => undefined); // answered at the end, or failed with the connection

  let lastProgressMs = startedMs;
  const progress = (phase: 'progress' | 'complete'): void => {
    emit({ kind: 'postcopy', phase, pagesLeft: left, pushedPages: stats.pushedPages, requestedPages: stats.requestedPages, faults: stats.faults });
  };
  const whenUrgentIdle = async (): Promise<void> => {
    while (urgentBusy) await new Promise<void>((resolve) => { urgentIdle = resolve; });
    urgentIdle = undefined;
  };
  try {
    const batch = new Uint32Array(PUSH_BATCH_PAGES);
    while (left > 0) {
      if (signal.aborted) throw abortReason(signal, 'post-copy stopped');
      // The next batch: unsent pages from the cursor on, ascending (it stops at the end of memory and wraps next time).
      let count = 0;
      let page = cursor;
      for (let scanned = 0; scanned < pageCount && count < PUSH_BATCH_PAGES; scanned++) {
        if (unsent[page]) {
          unsent[page] = 0;
          batch[count++] = page;
        }
        page += 1;
        if (page === pageCount) {
          page = 0;
          if (count > 0) break;
        }
      }
      cursor = page;
      left -= count;
      const pages = batch.subarray(0, count);
      context.tableDigest.touchAll(pages);
      // On the WebSocket, pages asked for queue behind what the push handed over: hand it a batch at a time there.
      const sent = await push.send(pages, context.round, FLAGS, { flush: !context.pushSocket });
      stats.pushedPages += count;
      stats.bytesSent += sent.bytesSent;
      if (now() - lastProgressMs >= PROGRESS_INTERVAL_MS) {
        lastProgressMs = now();
        progress('progress');
      }
    }
    await push.flush();
    await whenUrgentIdle();
    const sourceDigest = formatDigest(context.tableDigest.digest());
    const answer = await peer.request('peer.postcopy-end', { sourceDigest }, { timeoutMs: 2 * PEER_REPLY_TIMEOUT_MS, signal });
    await whenUrgentIdle();
    stats.faults = answer.faults;
    stats.refetched = answer.refetched;
    if (answer.stallMs) stats.stallMs = answer.stallMs;
    stats.complete = true;
    progress('complete');
    return { sourceDigest, answer };
  } catch (error) {
    throw signal.aborted ? abortReason(signal, 'post-copy stopped') : error;
  } finally {
    stats.durationMs += now() - startedMs;
    context.signal.removeEventListener('abort', onCancel);
    peer.signal.removeEventListener('abort', onClosed);
    if (!signal.aborted) abort.abort(new FerryError(ErrorCode.CANCELLED, 'post-copy push over'));
  }
}

/**
 * The source side of a live migration, stages 2 to 5 (DESIGN.md): iterative pre-copy, stop-and-copy, the
 * verified commit and the destination's activation. The coordinator has already done stages 0 and 1 (checked both
 * hosts, reserved the destination).
 *
 * Failure rule: until the commit point below, any failure (destination gone, connection lost, checksum mismatch,
 * timeout, the coordinator gone) ends in `rollBack`: the destination drops its reservation and the VM runs on here
 * as before, its memory untouched (the sender only ever reads guest memory). After the commit point the source
 * never resumes its copy: if the destination's activation cannot be confirmed, the VM stays suspended here.
 */
import { AUTO_CONVERGE, DEFAULT_XBZRLE_CACHE_BYTES, NET_REGION_PAGES, PEER_REPLY_TIMEOUT_MS, STOP_RULES } from '../../shared/constants.js';
import { digestMemory, formatDigest } from '../../shared/checksum.js';
import { TableDigest } from '../../shared/table-digest.js';
import { ErrorCode, FerryError, toFerryError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import { PAGE_FLAG_PAUSED } from '../../shared/page-frame.js';
import {
  type MigrationEvent, type MigrationOptions, type PeerOps, type PostcopyReport, type ReplyOf, type RoundReport, type SourceReport, type StageReport,
  type StopReason, type TimelineMark, type Verification,
} from '../../shared/protocol.js';
import { collectionsWithin } from '../gc-log.js';
import { faultPoint, type Faults } from '../faults.js';
import type { Catalog } from '../catalog.js';
import type { VirtualMachine } from '../vm/vm.js';
import { NetHandover } from './net-handover.js';
import { PageSender } from './page-sender.js';
import { XbzrleCache } from './xbzrle-cache.js';
import { XbzrleEncoder } from './xbzrle-encoder.js';
import type { PeerClient } from './peer-client.js';
import type { FrameSocket } from '../../shared/frame-socket.js';
import { decideStop, expectedDowntimeMs, switchToPostcopy } from '../../shared/stop-rules.js';
import { LiveStorageCopy, type LocalDisk } from '../storage/live-storage.js';
import { pushPostcopy } from './postcopy-source.js';

export interface SourceContext {
  /** The VM's small files to carry to the destination (none in the in-memory network, which has no datastore). */
  files?: { config: string; nvram: Uint8Array<ArrayBuffer>; log: string; configDrive?: string };
  /** Test-only fault switches (faults.ts); undefined in normal runs. */
  faults?: Faults;
  vm: VirtualMachine;
  /** Whether the guest was running when the migration was asked for (a paused one stays paused). */
  wasRunning: boolean;
  /** Frees the VM here once the destination runs it. */
  catalog: Pick<Catalog, 'release'>;
  peer: PeerClient;
  options: MigrationOptions;
  /** Aborted when the migration must stop: cancelled, or the coordinator's connection closed. */
  signal: AbortSignal;
  now: () => number;
  emit: (event: MigrationEvent) => void;
  log: Logger;
  /** Removes the VM's files here once the destination has them and runs the VM. */
  forgetFiles?: (name: string) => Promise<void>;
  /** Called when the commit's acknowledgement is lost: the VM stays suspended until settled (settlement.ts). */
  onInDoubt?: (vm: VirtualMachine, resume: boolean) => void;
  /** `--copy-storage`: the VM's local disks, copied before memory (storage/live-storage.ts). */
  storage?: LocalDisk[];
  /**
   * The page stream of its own (page-stream-source.ts) when one was opened: pages go there rather than on `peer`.
   * `fallback` says why there is none when one was asked for. The migration closes it when it ends.
   */
  pageStream?: { socket?: FrameSocket; fallback?: string };
  /**
   * A full garbage collection, run on both sides just before the pause so that none falls inside it (the agent's;
   * none where there is no agent, as in the in-memory network). Returns how long it took.
   */
  collectGarbage?: () => number;
  /** The migration's id and its destination's name: a post-copy's source says them in its VM's info. */
  migration?: { id: string; destination: string };
  /**
   * A post-copy's link broke after the switch: this copy is kept, paused (`postcopy-out`), holding the pages the
   * destination lacks, until `ferry migrate NAME --resume` sends them (control/migrate.ts keeps it).
   */
  onPostcopyParked?: (parked: ParkedPostcopy) => void;
}

/** What a post-copy whose link broke keeps for its resume: the page-hash table and its digest, the figures so far. */
export interface ParkedPostcopy {
  vm: VirtualMachine;
  hashes: Uint32Array;
  tableDigest: TableDigest;
  round: number;
  stats: PostcopyReport;
  wasRunning: boolean;
  pageStreamKind: 'tcp' | 'ws';
}


const stageNames: Record<number, string> = {
  2: 'iterative pre-copy',
  3: 'stop-and-copy',
  4: 'commitment',
  5: 'activation',
};

/**
 * Every page of a guest, for round 1. Its own small function: a loop this long inside `runSource` made V8 compile all of
 * that function on the stack (on-stack replacement), which on an agent's single thread held it 16-20 ms before round 1
 * or a post-copy switch; `Uint32Array.from` with a mapping function took 10-12 ms for 1 GiB.
 */
function everyPage(count: number): Uint32Array {
  const pages = new Uint32Array(count);
  for (let page = 0; page < count; page++) pages[page] = page;
  return pages;
}

/** Sets `pages[0..count)` in the bitmap `bits`; a function of its own for the reason `everyPage` is (this runs paused). */
function markPages(bits: Uint8Array, pages: Uint32Array, count: number): void {
  for (let i = 0; i < count; i++) bits[pages[i]! >>> 3]! |= 1 << (pages[i]! & 7);
}

export async function runSource(context: SourceContext): Promise<SourceReport> {
  const { vm, peer, options, now, emit, log } = context;
  const startedMs = now();
  const stages: StageReport[] = [];
  const rounds: RoundReport[] = [];
  const { wasRunning } = context;
  let stopReason: StopReason | undefined;
  let stopAndCopy: RoundReport | undefined;
  let verification: Verification | undefined;
  let expectedDowntime: number | undefined;
  let committed = false;
  let throttlePct = 0;
  let pausedAtMs: number | undefined;
  let bytesSent = 0;
  let servingAfterPauseMs: number | undefined;
  let announcements = 0;
  // The switchover's timeline (protocol.ts, downtimeTimelineSchema): our marks from the pause, and the destination's.
  const marks: TimelineMark[] = [];
  const destinationMarks: TimelineMark[] = [];
  let destinationGc: NonNullable<ReplyOf<PeerOps, 'peer.activate'>['gc']> = [];
  let switchoverEndMs: number | undefined;
  let destinationAnchorEpochMs: number | undefined;
  let deltaDecodeMs: number | undefined;
  /** Set at the post-copy switch: from its request on, a broken link parks this copy rather than failing it. */
  let postcopy: PostcopyReport | undefined;
  let postcopyAsked = false;
  const mark = (event: string): void => {
    if (pausedAtMs !== undefined) marks.push({ event, atMs: now() - pausedAtMs });
  };
  const network = new NetHandover(vm, peer, log);

  // The peer connection closing is as fatal as a cancel.
  const abort = new AbortController();
  const onAbort = (): void => abort.abort(context.signal.reason);
  const onPeerClosed = (): void => abort.abort(new FerryError(ErrorCode.CONNECTION_LOST, 'the connection to the destination closed', 'check that the destination agent is still running'));
  context.signal.addEventListener('abort', onAbort, { once: true });
  peer.signal.addEventListener('abort', onPeerClosed, { once: true });
  const signal = abort.signal;

  // Events are held from the pause until the switchover is over (the stages keep their times): each one sent while
  // the VM is paused wakes the coordinator just when the two agents need the cores.
  let heldEvents: MigrationEvent[] | undefined;
  const releaseEvents = (): void => {
    const held = heldEvents ?? [];
    heldEvents = undefined;
    for (const event of held) emit(event);
  };
  const enterStage = (stage: number, name = stageNames[stage] ?? `stage ${stage}`): void => {
    const atMs = now() - startedMs;
    const previous = stages.at(-1);
    if (previous) previous.endMs = atMs;
    stages.push({ stage, name, startMs: atMs, endMs: atMs });
    const event: MigrationEvent = { kind: 'stage', stage, name, atMs };
    if (heldEvents) heldEvents.push(event);
    else emit(event);
  };
  const storage = context.storage?.length
    ? new LiveStorageCopy(peer, context.storage, { mode: options.storageMode ?? 'mirror', maxDowntimeMs: options.maxDowntimeMs, maxRounds: options.maxRounds, maxBandwidthBytesPerSec: options.maxBandwidthBytesPerSec, signal: abort.signal, emit, faults: context.faults, log })
    : undefined;
  let storageVerification: NonNullable<SourceReport['storage']>['verification'] = [];
  const closeStages = (): void => {
    const last = stages.at(-1);
    if (last) last.endMs = now() - startedMs;
  };
  const report = (outcome: SourceReport['outcome'], error?: FerryError): SourceReport => {
    closeStages();
    return {
      outcome,
      committed,
      throttlePct,
      ...(error ? { error: error.toPayload() } : {}),
      ...(stopReason ? { stopReason } : {}),
      rounds,
      ...(stopAndCopy ? { stopAndCopy } : {}),
      stages,
      ...(expectedDowntime !== undefined ? { expectedDowntimeMs: expectedDowntime } : {}),
      bytesSent,
      pageStream: { kind: pageSocket ? 'tcp' : 'ws', ...(context.pageStream?.fallback ? { fallback: context.pageStream.fallback } : {}) },
      ...(verification ? { verification } : {}),
      ...(network.report(servingAfterPauseMs, announcements) ? { network: network.report(servingAfterPauseMs, announcements) } : {}),
      ...(xbzrle ? { compression: xbzrle.report(deltaDecodeMs) } : {}),
      ...(storage ? { storage: storage.report(storageVerification) } : {}),
      ...(postcopy ? { postcopy } : {}),
      ...(pausedAtMs !== undefined ? {
        timeline: {
          source: marks,
          destination: destinationMarks,
          sourceGc: collectionsWithin(pausedAtMs, switchoverEndMs ?? now()),
          destinationGc,
          sourceAnchorEpochMs: performance.timeOrigin + pausedAtMs,
          ...(destinationAnchorEpochMs !== undefined ? { destinationAnchorEpochMs } : {}),
        },
      } : {}),
    };
  };

  // What the progress events describe: the round under way.
  const current = { round: 1, pagesInRound: 0, startMs: 0, bytesBefore: 0 };
  const pageSocket = context.pageStream?.socket;
  const xbzrle = options.compress === 'xbzrle'
    ? new XbzrleEncoder(new XbzrleCache(options.xbzrleCacheBytes ?? DEFAULT_XBZRLE_CACHE_BYTES, vm.pageCount), vm.memory, vm.hasher)
    : undefined;
  const sender = new PageSender(pageSocket ?? peer.socket, vm, {
    ...(xbzrle ? { xbzrle } : {}),
    maxBandwidthBytesPerSec: options.maxBandwidthBytesPerSec,
    signal,
    now,
    onProgress: (progress) => {
      const elapsedMs = Math.max(now() - current.startMs, 0.001);
      const rate = (progress.bytesSent / elapsedMs) * 1000;
      const dirty = vm.dirtyLog.count();
      emit({
        kind: 'progress',
        round: current.round,
        pagesSent: progress.pagesSent,
        pagesInRound: current.pagesInRound,
        bytesSent: current.bytesBefore + progress.bytesSent,
        rateBytesPerSec: rate,
        dirtyPagesPerSec: (dirty / elapsedMs) * 1000,
        expectedDowntimeMs: expectedDowntimeMs(dirty, rate),
      });
    },
  });

  // The page-table digest, kept current round by round (table-digest.ts): the pause rehashes only the last round's part.
  const tableDigest = new TableDigest(sender.hashes);
  vm.sending = sender; // the heat map's view of what the destination holds (vm/heat-map.ts); read only

  /** Stage 3 begins: the vCPU paused, events held, the network held (stop-and-copy, or a post-copy's switch). */
  const pauseGuest = async (stageName?: string): Promise<number> => {
    enterStage(3, stageName);
    heldEvents = [];
    const pausedAt = now();
    pausedAtMs = pausedAt;
    mark('pause requested');
    if (vm.vcpuRunning) await vm.pause({ quick: true });
    mark('vCPU paused');
    // Before the harvest: from here the agent leaves the rings alone, so the last copy carries them exactly.
    network.hold();
    vm.state = 'handing-over';
    await faultPoint(context.faults, 'stop-and-copy', log, () => peer.close());
    return pausedAt;
  };

  try {
    // Stage 2: iterative pre-copy. Round 1 sends every page; each later round the pages dirtied during the last.
    vm.state = 'migrating-out';
    if (storage) {
      // The disks first, to ready: memory's pre-copy starts once they are (a mirror keeps them so meanwhile).
      enterStage(2, 'storage copy');
      await storage.toReady();
      storage.readyAtMs = now() - startedMs;
    }
    enterStage(2);
    let round = 1;
    let collected = false;
    /** Set when the stop rule fired and one more round follows the collection: pre-copy ends after it, for that reason. */
    let stopAfterNextRound: StopReason | undefined;
    vm.dirtyLog.clearAll(); // cleared BEFORE round 1 reads any page: writes from here on are caught
    /** Why pre-copy hands over to post-copy, when it does (switchToPostcopy). */
    let postcopyReason: PostcopyReport['reason'] | undefined = options.postcopy?.mode === 'after' && options.postcopy.afterRounds === 0 ? 'asked' : undefined;
    let pages = postcopyReason === undefined ? everyPage(vm.pageCount) : new Uint32Array(0);
    for (; postcopyReason === undefined;) {
      const roundStartMs = now();
      const inRound = pages.length;
      Object.assign(current, { round, pagesInRound: inRound, startMs: roundStartMs, bytesBefore: bytesSent });
      tableDigest.touchAll(pages);
      const sent = await sender.send(pages, round, 0);
      await faultPoint(context.faults, `round-${round}`, log, () => peer.close());
      const synced = peer.request('peer.sync', { round, streamBytes: sender.streamBytes }, { timeoutMs: PEER_REPLY_TIMEOUT_MS, signal });
      synced.catch(() => undefined); // awaited just below
      tableDigest.refresh(); // while the destination installs the round's last frames
      await synced;
      bytesSent += sent.bytesSent;
      const durationMs = Math.max(now() - roundStartMs, 0.001);
      const dirtyPagesAfter = vm.dirtyLog.count();
      const throughput = (sent.bytesSent / durationMs) * 1000;
      const roundReport: RoundReport = {
        round, pages: inRound, bytes: sent.bytesSent, durationMs, dirtyPagesAfter, throughputBytesPerSec: throughput, zeroPages: sent.zeroPages,
      };
      rounds.push(roundReport);
      emit({ kind: 'round', report: roundReport });
      // Bandwidth: round 1 measures the link best (it is the longest); later small rounds are latency-bound.
      const bandwidth = rounds[0]!.throughputBytesPerSec;
      expectedDowntime = expectedDowntimeMs(dirtyPagesAfter, bandwidth);
      stopReason = decideStop({
        round, pagesSent: inRound, dirtyPagesAfter, bytesSentTotal: bytesSent, memoryBytes: vm.memoryBytes,
        bandwidthBytesPerSec: bandwidth, maxDowntimeMs: options.maxDowntimeMs, maxRounds: options.maxRounds,
      });
      if (stopAfterNextRound) {
        stopReason ??= stopAfterNextRound;
        break;
      }
      const stalled = dirtyPagesAfter > inRound * (1 - STOP_RULES.minShrinkFraction);
      postcopyReason = switchToPostcopy(options, round, stopReason, stalled, expectedDowntime);
      if (postcopyReason) break;
      // A cap is never extended: not when it fired, and not when it would have fired had few-dirty-pages not come
      // first (decideStop checks that rule before the caps).
      const capsLeave = round < options.maxRounds && bytesSent < STOP_RULES.maxBytesFactor * vm.memoryBytes;
      if (stopReason && !collected && context.collectGarbage && capsLeave) {
        // Both sides collect their garbage now, while the guest runs: a collection is most likely due at the end of
        // pre-copy (each page frame sent or received was a buffer), and one that fell inside the pause would be
        // downtime. The guest dirties pages meanwhile; if more than the few-pages rule allows, exactly one more
        // round sends them, so that the pause carries no more than it would have; pre-copy ends after it.
        collected = true;
        const collecting = peer.request('peer.sync', {
          round, beforePause: true, streamBytes: sender.streamBytes, ...(context.files ? { config: context.files.config } : {}),
        }, { timeoutMs: PEER_REPLY_TIMEOUT_MS, signal });
        collecting.catch(() => undefined); // awaited just below
        const tookMs = context.collectGarbage();
        await collecting;
        log.debug('collected before the pause', { vm: vm.name, tookMs });
        if (vm.dirtyLog.count() >= STOP_RULES.fewDirtyPages) {
          stopAfterNextRound = stopReason;
          round += 1;
          pages = vm.dirtyLog.harvest(); // bits cleared here, BEFORE the pages are read by the sender
          continue;
        }
      }
      if (stopReason) break;
      // Auto-converge (QEMU): a round that did not shrink the dirty set by 10 % means the guest dirties memory about
      // as fast as the link carries it; hold the vCPU back, 20 % at first and 10 % more each such round.
      if (options.autoConverge && stalled && throttlePct < AUTO_CONVERGE.maxPct) {
        throttlePct = throttlePct === 0 ? AUTO_CONVERGE.initialPct : Math.min(AUTO_CONVERGE.maxPct, throttlePct + AUTO_CONVERGE.incrementPct);
        vm.setThrottle(throttlePct);
        emit({ kind: 'throttle', round, pct: throttlePct });
        log.info('auto-converge', { vm: vm.name, round, throttlePct });
      }
      round += 1;
      pages = vm.dirtyLog.harvest(); // bits cleared here, BEFORE the pages are read by the sender
      log.debug('pre-copy round', { vm: vm.name, round, pages: pages.length });
    }

    if (postcopyReason) {
      // Post-copy (postcopy-source.ts): pause, send the device's pages, and let the destination run the VM with the
      // list of pages still here; then push them, serving its faults first.
      const lastRound = rounds.length;
      // Both sides collect their garbage first, as before a stop-and-copy (a collection in the switch is downtime),
      // once pages have moved: the page frames are most of the garbage. Switching before round 1 there are none, and
      // the two collections cost 25-30 ms of total time for no shorter pause (10 fresh-agent runs each way: 7.0 ms
      // median with them, 7.2 ms without); the destination skips its own for the same reason (live-target.ts).
      // The request goes either way: the destination readies the activation with the config it carries.
      if (context.collectGarbage) {
        const collecting = peer.request('peer.sync', {
          round: Math.max(lastRound, 1), beforePause: true, streamBytes: sender.streamBytes, ...(context.files ? { config: context.files.config } : {}),
        }, { timeoutMs: PEER_REPLY_TIMEOUT_MS, signal });
        collecting.catch(() => undefined);
        if (sender.streamBytes > 0) context.collectGarbage();
        await collecting;
      }
      const dirtyBuffer = new Uint32Array(vm.pageCount);
      const missing = new Uint8Array(Math.ceil(vm.pageCount / 8));
      pausedAtMs = await pauseGuest('post-copy switch');
      // The destination lacks what pre-copy never sent (all of it, switching before round 1) and what was written since.
      const dirtyCount = vm.dirtyLog.harvestInto(dirtyBuffer);
      let missingPages = lastRound === 0 ? vm.pageCount : dirtyCount;
      if (lastRound === 0) {
        missing.fill(0xff);
        if (vm.pageCount % 8 !== 0) missing[missing.length - 1] = (1 << (vm.pageCount % 8)) - 1;
      } else {
        markPages(missing, dirtyBuffer, dirtyCount);
      }
      mark('dirty log harvested');
      // The network device's rings go now: the agents on both sides touch them outside the vCPU, which alone waits for a page.
      if (vm.net) {
        const devicePages: number[] = [];
        for (let page = vm.pageCount - NET_REGION_PAGES; page < vm.pageCount; page++) {
          if ((missing[page >>> 3]! & (1 << (page & 7))) === 0) continue;
          devicePages.push(page);
          missing[page >>> 3]! &= ~(1 << (page & 7));
          missingPages -= 1;
        }
        const pagesNow = Uint32Array.from(devicePages);
        tableDigest.touchAll(pagesNow);
        const sentNow = await sender.send(pagesNow, lastRound + 1, PAGE_FLAG_PAUSED);
        bytesSent += sentNow.bytesSent;
      }
      mark('missing pages listed');
      postcopy = {
        afterRounds: lastRound, reason: postcopyReason, missingPages, pushedPages: 0, requestedPages: 0, faults: 0, refetched: 0,
        durationMs: 0, resumes: 0, complete: false, bytesSent: 0,
      };
      const registers = vm.registers();
      // COMMIT POINT: once the request leaves, the destination may run the VM; this copy never resumes unless the
      // destination says it did not (activated: false), or a resume finds it never ran it.
      committed = true;
      postcopyAsked = true;
      network.commit();
      const askedAtMs = now();
      const switching = peer.request('peer.postcopy', {
        registers, resume: wasRunning, ...(context.files ? { files: context.files } : {}), ...(vm.guest ? { guest: vm.guest } : {}),
        network: vm.network, streamBytes: sender.streamBytes, missing,
      }, { timeoutMs: PEER_REPLY_TIMEOUT_MS });
      switching.catch(() => undefined);
      mark('switch asked');
      await faultPoint(context.faults, 'after-commit', log, () => peer.close());
      const answer = await switching;
      mark('switch answered');
      destinationMarks.push(...(answer.timeline ?? []));
      destinationAnchorEpochMs = answer.anchorEpochMs;
      if (!answer.activated) {
        committed = false;
        postcopyAsked = false;
        network.inDoubt();
        throw new FerryError(ErrorCode.IO, `the destination could not run ${vm.name} after the post-copy switch, and dropped its image`, 'the VM keeps running on the source; see the destination agent\'s log');
      }
      const switchedAtMs = now();
      switchoverEndMs = switchedAtMs;
      enterStage(5);
      releaseEvents();
      log.info('switched to post-copy', { vm: vm.name, missingPages, afterRounds: lastRound });
      emit({ kind: 'postcopy', phase: 'switched', pagesLeft: missingPages, pushedPages: 0, requestedPages: 0, faults: 0 });
      if (answer.servingAfterMs !== undefined) servingAfterPauseMs = Math.min(askedAtMs - pausedAtMs + answer.servingAfterMs, switchedAtMs - pausedAtMs);
      announcements = answer.announcements ?? 0;
      await network.finish();
      vm.state = 'postcopy-out';
      await faultPoint(context.faults, 'postcopy-switched', log, () => peer.close());
      const stats = postcopy;
      if (context.migration) vm.postcopy = { role: 'source', migrationId: context.migration.id, peer: context.migration.destination, missingPages: () => Math.max(0, stats.missingPages - stats.pushedPages - stats.requestedPages), linked: () => !peer.signal.aborted };
      enterStage(6, 'post-copy');
      let ended;
      try {
        ended = await pushPostcopy({
          vm, peer, pushSocket: pageSocket, hashes: sender.hashes, tableDigest, missing, round: lastRound + 1,
          maxBandwidthBytesPerSec: options.maxBandwidthBytesPerSec, signal, now, emit, log, stats,
        });
      } catch (caught) {
        const error = toFerryError(caught);
        // The VM runs at the destination; the pages it lacks are here. Keep them, paused, for a resume.
        log.warn('post-copy link lost: keeping the pages the destination lacks until `ferry migrate --resume`', { vm: vm.name, error: error.message });
        peer.close();
        bytesSent += stats.bytesSent;
        emit({ kind: 'postcopy', phase: 'paused', pagesLeft: Math.max(0, stats.missingPages - stats.pushedPages - stats.requestedPages), pushedPages: stats.pushedPages, requestedPages: stats.requestedPages, faults: stats.faults });
        context.onPostcopyParked?.({ vm, hashes: sender.hashes, tableDigest, round: lastRound + 1, stats, wasRunning, pageStreamKind: pageSocket ? 'tcp' : 'ws' });
        return { ...report('postcopy-paused', postcopyPausedError(vm.name, error)), downtimeMs: switchedAtMs - pausedAtMs, guestBlackoutMs: answer.guestBlackoutMs, registers };
      }
      bytesSent += stats.bytesSent;
      verification = { mode: 'pages', sourceDigest: ended.sourceDigest, destDigest: ended.answer.destDigest, match: ended.answer.match, pageMismatches: stats.refetched };
      await finishPostcopy(context, vm, peer);
      return { ...report('committed'), downtimeMs: switchedAtMs - pausedAtMs, guestBlackoutMs: answer.guestBlackoutMs, registers };
    }

    await storage?.beforePause();
    // Made before the pause: the pause path allocates as little as it can (a collection there is downtime).
    const lastPagesBuffer = new Uint32Array(vm.pageCount);
    // Stage 3: stop-and-copy. Pause the vCPU, send what is still dirty and the registers.
    pausedAtMs = await pauseGuest();
    const lastPages = lastPagesBuffer.subarray(0, vm.dirtyLog.harvestInto(lastPagesBuffer));
    tableDigest.touchAll(lastPages);
    mark('dirty log harvested');
    const lastStartMs = now();
    const last = await sender.send(lastPages, round + 1, PAGE_FLAG_PAUSED);
    mark('last pages sent');
    bytesSent += last.bytesSent;
    const lastDurationMs = Math.max(now() - lastStartMs, 0.001);
    stopAndCopy = {
      round: round + 1, pages: lastPages.length, bytes: last.bytesSent, durationMs: lastDurationMs,
      dirtyPagesAfter: 0, throughputBytesPerSec: (last.bytesSent / lastDurationMs) * 1000, zeroPages: last.zeroPages,
    };
    await storage?.whilePaused();
    const registers = vm.registers();
    log.debug('stop-and-copy timing', { pauseMs: lastStartMs - pausedAtMs, pages: lastPages.length, sendMs: lastDurationMs });

    const verifyRequest = {
      registers, mode: options.verify, resume: wasRunning, ...(context.files ? { files: context.files } : {}), ...(vm.guest ? { guest: vm.guest } : {}),
      network: vm.network, streamBytes: sender.streamBytes,
    };
    // The switchover: verification and activation in one round trip, for --verify pages without disks to check (a
    // full memory digest, or the disks' digests, are compared here and need the classic two steps). The source
    // sends its own digest with the request and is committed from that moment: the destination compares, and on a
    // match activates at once. Two of the four one-way messages of the classic path go (DESIGN.md, "Verified
    // commit"). The cost: a connection lost after the request leaves the VM suspended here until settled, where
    // before the classic verify's reply it would have resumed here.
    let activated: ReplyOf<PeerOps, 'peer.activate'>;
    let activateStartMs: number;
    if (options.verify === 'pages' && !storage) {
      const sourceDigest = formatDigest(tableDigest.digest());
      mark('source digest done');
      // COMMIT POINT: once the request leaves, the destination may run the VM; this copy is never resumed unless
      // the destination says it did not (a mismatch), or settlement finds it never ran it.
      committed = true;
      network.commit(); // kept datagrams go ahead of the request, on this connection: in the RX ring before the guest runs
      activateStartMs = now();
      const switching = peer.request('peer.switchover', { ...verifyRequest, sourceDigest }, { timeoutMs: PEER_REPLY_TIMEOUT_MS });
      switching.catch(() => undefined); // awaited below
      mark('switchover asked');
      enterStage(4);
      await faultPoint(context.faults, 'after-commit', log, () => peer.close());
      const answer = await switching;
      mark('switchover answered');
      destinationMarks.push(...(answer.timeline ?? []));
      destinationAnchorEpochMs = answer.anchorEpochMs;
      deltaDecodeMs = answer.deltaDecodeMs;
      verification = { mode: 'pages', sourceDigest, destDigest: answer.destDigest, match: answer.match, pageMismatches: answer.pageMismatches };
      if (!answer.activated) {
        // The destination dropped its image, and said so: nothing runs there, and this copy resumes. The network
        // goes back to holding first, so that the rollback serves it here again (what was forwarded is lost).
        committed = false;
        network.inDoubt();
        if (answer.match) {
          throw new FerryError(ErrorCode.IO, `the destination verified ${vm.name} but could not activate it, and dropped its image`, 'the VM keeps running on the source; see the destination agent\'s log');
        }
        throw imageMismatch(vm.name, answer.damagedWhilePaused, `page-table digests differ (source ${sourceDigest}, destination ${answer.destDigest})`);
      }
      activated = { ...answer, guestBlackoutMs: answer.guestBlackoutMs ?? 0 };
      enterStage(5);
      log.info('committed', { vm: vm.name, digest: sourceDigest });
    } else {
      // Stage 4: commitment. The destination checks its image and answers with its digests; we compare.
      // Ask first, then compute our own digest while the destination computes its own; the stage's event after asking.
      const verifyStartMs = now();
      const asked = peer.request('peer.verify', verifyRequest, { timeoutMs: PEER_REPLY_TIMEOUT_MS, signal });
      asked.catch(() => undefined); // awaited below; never an unhandled rejection meanwhile
      mark('verify asked');
      enterStage(4);
      const disksChecked = storage?.verify(options.verify);
      disksChecked?.catch(() => undefined);
      const sourceDigest = formatDigest(tableDigest.digest());
      // --verify full: hash all of memory here while the destination does the same there (the vCPU is paused).
      const sourceMemoryDigest = options.verify === 'full' ? formatDigest(digestMemory(vm.memory)) : undefined;
      const digestMs = now() - verifyStartMs;
      mark('source digest done');
      const answer = await asked;
      mark('verify answered');
      destinationMarks.push(...(answer.timeline ?? []));
      destinationAnchorEpochMs = answer.anchorEpochMs;
      deltaDecodeMs = answer.deltaDecodeMs;
      if (disksChecked) {
        storageVerification = await disksChecked;
        const bad = storageVerification.find((disk) => !disk.match);
        if (bad) {
          throw new FerryError(ErrorCode.CHECKSUM_MISMATCH, `the destination's copy of ${vm.name}'s ${bad.file} does not match (${bad.sourceImageDigest ? `images ${bad.sourceImageDigest} / ${bad.destImageDigest}` : `block digests ${bad.sourceDigest} / ${bad.destDigest}`})`, 'the VM keeps running on the source with its disk; check the destination\'s storage and retry');
        }
      }
      const memoryMatch = sourceMemoryDigest === undefined || sourceMemoryDigest === answer.destMemoryDigest;
      const match = sourceDigest === answer.destDigest && memoryMatch && answer.damagedWhilePaused === 0;
      verification = {
        mode: options.verify, sourceDigest, destDigest: answer.destDigest, match, pageMismatches: answer.pageMismatches,
        ...(sourceMemoryDigest !== undefined ? { sourceMemoryDigest, destMemoryDigest: answer.destMemoryDigest ?? '' } : {}),
      };
      if (!match) {
        throw imageMismatch(vm.name, answer.damagedWhilePaused, !memoryMatch
          ? `memory digests differ (source ${sourceMemoryDigest}, destination ${answer.destMemoryDigest})`
          : `page-table digests differ (source ${sourceDigest}, destination ${answer.destDigest})`);
      }
      // COMMIT POINT: from here the destination's copy is the VM; this one is never resumed.
      committed = true;
      mark('committed');
      // Kept datagrams, and each new one, go to the destination now: on this connection, so before the activation.
      network.commit();
      await faultPoint(context.faults, 'after-commit', log, () => peer.close());
      // Stage 5: activation on the destination, then the source frees its copy. Asked at once: the stage's event is
      // held (above) and the log lines wait for the reply.
      activateStartMs = now();
      mark('activate asked');
      const activating = peer.request('peer.activate', { resume: wasRunning }, { timeoutMs: PEER_REPLY_TIMEOUT_MS });
      activating.catch(() => undefined); // awaited just below
      enterStage(5);
      activated = await activating;
      mark('activate answered');
      // Logged once the guest runs at the destination: a log line is a write that may wake whoever reads this agent's
      // output. A failed activation logs its own line below, which says the VM was committed.
      log.info('committed', { vm: vm.name, digest: sourceDigest });
      log.debug('commit timing', { digestMs, verifyRoundTripMs: activateStartMs - verifyStartMs });
      destinationMarks.push(...(activated.timeline ?? []));
    }
    const activatedAtMs = now();
    switchoverEndMs = activatedAtMs;
    releaseEvents();
    destinationGc = activated.gc ?? [];
    log.debug('activation timing', { activateRoundTripMs: activatedAtMs - activateStartMs });
    // Measured on each side's own clock: pause to asking, then the destination's asked to serving. It leaves out the
    // request's one-way trip, so it may be early by that much; never later than the activation's reply.
    if (activated.servingAfterMs !== undefined) servingAfterPauseMs = Math.min(activateStartMs - pausedAtMs + activated.servingAfterMs, activatedAtMs - pausedAtMs);
    announcements = activated.announcements ?? 0;
    await network.finish();
    // Files first, then the name (catalog.ts): this host keeps listing the VM until nothing of it is left here.
    await context.forgetFiles?.(vm.name);
    await context.catalog.release(vm);
    // Nothing of the VM is left here: a destination that activated in a switchover stops waiting to hear it.
    peer.request('peer.released', {}, { timeoutMs: PEER_REPLY_TIMEOUT_MS }).catch(() => undefined);
    peer.close();
    const result = report('committed');
    return {
      ...result,
      downtimeMs: activatedAtMs - pausedAtMs,
      guestBlackoutMs: activated.guestBlackoutMs,
      registers,
    };
  } catch (caught) {
    releaseEvents();
    const error = toFerryError(caught);
    if (postcopyAsked && postcopy) {
      // The switch was asked and its answer never came: the destination may run the VM. Kept as after a broken push:
      // a resume finds out (it runs there: the push goes on; it never ran there: this copy resumes).
      log.warn('post-copy switch unanswered: keeping the VM paused here until `ferry migrate --resume` finds out how it ended', { vm: vm.name, error: error.message });
      network.inDoubt();
      peer.close();
      vm.state = 'postcopy-out';
      context.onPostcopyParked?.({ vm, hashes: sender.hashes, tableDigest, round: Math.max(rounds.length, 0) + 1, stats: postcopy, wasRunning, pageStreamKind: pageSocket ? 'tcp' : 'ws' });
      return report('postcopy-paused', postcopyPausedError(vm.name, error));
    }
    if (committed) {
      // The destination has a verified image and may be running it: never resume here (no two copies).
      log.error('activation not confirmed after commit; keeping the VM suspended', { vm: vm.name, error: error.message });
      network.inDoubt();
      peer.close();
      context.onInDoubt?.(vm, wasRunning);
      return report('failed', new FerryError(
        error.code,
        `${vm.name} was committed to the destination but its activation was not confirmed: ${error.message}`,
        `the VM stays suspended here, so that it never runs twice, until the destination says how it ended: the agents settle it as soon as they can talk, or run \`ferry vm resolve ${vm.name}\``,
      ));
    }
    storage?.close(); // before the guest runs on: its writes stop going to a destination that will drop them
    await rollBack(context, wasRunning, error, network);
    return report('rolled-back', error);
  } finally {
    vm.sending = undefined;
    releaseEvents();
    // Nothing more goes on the page stream: verified, or given up.
    pageSocket?.close();
    // No mirror outlives the migration, whatever happened.
    storage?.close();
    // The throttle was the migration's, not the guest's: lift it (on the destination it never existed).
    vm.setThrottle(0);
    context.signal.removeEventListener('abort', onAbort);
    peer.signal.removeEventListener('abort', onPeerClosed);
  }
}

/** A post-copy whose link broke: the VM runs at the destination and waits for the pages kept here. */
export function postcopyPausedError(name: string, cause: FerryError): FerryError {
  return new FerryError(
    ErrorCode.CONNECTION_LOST,
    `the link broke during ${name}'s post-copy: ${cause.message}`,
    `the VM runs at the destination and waits for the pages still on the source, which keeps them: run \`ferry migrate ${name} --resume\` once the hosts can reach each other`,
  );
}

/** A post-copy is over: the destination holds every page. The source frees its copy, as after any migration. */
export async function finishPostcopy(context: Pick<SourceContext, 'forgetFiles' | 'catalog'>, vm: VirtualMachine, peer: PeerClient): Promise<void> {
  vm.postcopy = undefined;
  await context.forgetFiles?.(vm.name);
  await context.catalog.release(vm);
  peer.request('peer.released', {}, { timeoutMs: PEER_REPLY_TIMEOUT_MS }).catch(() => undefined);
  peer.close();
}

/** The destination's image does not match: pages damaged while paused, else the digests that differ (`digests`). */
function imageMismatch(vm: string, damagedWhilePaused: number, digests: string): FerryError {
  const what = damagedWhilePaused > 0 ? `${damagedWhilePaused} page(s) arrived damaged during stop-and-copy` : digests;
  return new FerryError(ErrorCode.CHECKSUM_MISMATCH, `the destination's image of ${vm} does not match: ${what}`, 'the VM keeps running on the source; check the network between the hosts and retry');
}

async function rollBack(context: SourceContext, wasRunning: boolean, error: FerryError, network: NetHandover): Promise<void> {
  const { vm, peer, log } = context;
  // Datagrams kept since the pause go into the ring before any new one: the VM serves its address here as before.
  network.rollBack();
  log.warn('rolling back', { vm: vm.name, code: error.code, error: error.message });
  // The destination also drops its reservation when the stream closes; the abort only says why, sooner.
  await peer.request('peer.abort', { reason: error.message }, { timeoutMs: 2000 }).catch((abortError: unknown) => {
    log.debug('the destination did not take the abort; it drops the reservation when the stream closes', { vm: vm.name, error: String(abortError) });
  });
  peer.close();
  try {
    if (wasRunning && !vm.vcpuRunning) await vm.resume();
    vm.state = wasRunning ? 'running' : 'paused';
  } catch (resumeError) {
    // The memory is intact; the vCPU would not restart. Say so, and leave the VM paused rather than 'migrating'.
    vm.state = 'paused';
    log.error('could not resume the vCPU after rolling back', { vm: vm.name, error: (resumeError as Error).message });
  }
}

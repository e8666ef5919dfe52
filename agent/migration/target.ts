/**
 * The destination side of a live migration: a reservation (stage 1) that receives pages (stages 2-3), checks its
 * image (stage 4) and becomes the VM on activation (stage 5).
 *
 * Every arriving page is hashed and checked against the XXH3-64 it travelled with, installed into guest memory,
 * and its hash kept in a per-page table whose digest the commit compares with the source's. A mismatch during
 * pre-copy is not proof of damage (the source sends views of live memory; page-sender.ts explains why the page
 * will come again), so it is counted and the page's own hash is kept: if it never comes again, the digests differ
 * and the commit fails. A mismatch on a page sent with the vCPU paused is damage, and fails the commit outright.
 *
 * Until activation, the reservation is dropped (memory freed, VM forgotten) when the source aborts, or when the
 * peer connection closes before the source asked for verification. After verification and before activation the
 * destination cannot know whether the source committed, so it keeps the image parked, never running, and says so.
 * A switchover (live-target.ts) is the exception: the source committed when it asked, and the switchover itself
 * activates the image on a match or drops it on a mismatch (the source is told, and resumes).
 */
import { PAGE_SIZE } from '../../shared/constants.js';
import { digestMemory, formatDigest } from '../../shared/checksum.js';
import { TableDigest } from '../../shared/table-digest.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import { PAGE_FLAG_PAUSED, type PageHeader } from '../../shared/page-frame.js';
import type { PeerOps, ReplyOf, RequestOf, TimelineMark } from '../../shared/protocol.js';
import { collectionsWithin } from '../gc-log.js';
import type { Faults } from '../faults.js';
import type { Catalog } from '../catalog.js';
import type { ActivationLog } from './activation-log.js';
import type { VirtualMachine } from '../vm/vm.js';
import type { ClientDatagram } from '../vm/net/address.js';
import type { FileSink } from '../storage/file-sink.js';
import { PageReceiver } from './page-receiver.js';
import type { PageStreamConnection } from '../../shared/page-stream.js';
import { PostcopyTarget } from './postcopy-target.js';
import { PEER_REPLY_TIMEOUT_MS } from '../../shared/constants.js';

/**
 * `--copy-storage` on this host (set by the agent, which owns the datastore): staging images for the VM's local
 * disks, moving them into the VM's folder at activation, and removing them with a dropped reservation.
 */
export interface DiskStaging {
  create(disks: { file: string; sizeBytes: number }[]): Promise<FileSink[]>;
  /** Full-image digest of a staged disk (`--verify full`). */
  imageDigest(sink: FileSink): Promise<string>;
  /** The VM's folder, with the staged disks in it (its other files follow in `registerFiles`). */
  place(sinks: FileSink[]): Promise<void>;
  remove(sinks: FileSink[]): Promise<void>;
}

/** Datagrams forwarded before activation that the destination keeps at most (net-handover.ts). */
const MAX_FORWARDED_EARLY = 4096;

/** A reservation whose source stays silent this long (never connects, or stalls mid-stream) is dropped. */
export const RESERVATION_TIMEOUT_MS = 60_000;
const STALL_CHECK_MS = 5_000;

/** `postcopy`: switched to post-copy, the VM running here while some of its pages are still at the source. */
type Phase = 'reserved' | 'receiving' | 'verified' | 'postcopy' | 'active' | 'dropped';

export class MigrationTarget {
  readonly migrationId: string;
  readonly vm: VirtualMachine;
  private readonly catalog: Pick<Catalog, 'release'>;
  private readonly faults: Faults;
  private readonly log: Logger;
  /**
   * Takes arriving pages, on the WebSocket or a page stream of their own, into guest memory and keeps the
   * destination's page-hash table (page-receiver.ts, page-install.ts).
   */
  private readonly receiver: PageReceiver;
  /** The table's digest, kept current round by round (table-digest.ts): the pause rehashes only the last round's part. */
  private readonly tableDigest: TableDigest;
  private phase: Phase = 'reserved';
  private pageMismatches = 0;
  private damagedWhilePaused = 0;
  private readonly watchdog: NodeJS.Timeout;
  private lastHeardMs = performance.now();
  /** The source's host name, from its `peer.hello`. */
  sourceName = '';
  /** The post-copy's second half, from the switch until every page is here. */
  postcopy: PostcopyTarget | undefined;
  /** Pages of post-copy frames taken since the switch, and whether the link was cut (fault `cut-postcopy:N`). */
  private postcopyPages = 0;
  private postcopyCut = false;
  /** Closes the page stream; set once a source has said hello. */
  closeStream: (() => void) | undefined;
  onFinished: (() => void) | undefined;

  /** The source's epoch, and where to reach the source to settle a verified image it went silent on. */
  readonly sourceEpoch: number;
  readonly sourceUrl: string;
  /** Whether the guest was running at the source: the activation resumes it then. Known from verification. */
  resumeOnActivation = true;
  /** The page stream closed while verified: the settlement loop (settlement.ts) takes over. */
  streamClosed = false;
  /**
   * A switchover was asked (live-target.ts): the source is committed from the moment it asked, so the connection
   * closing no longer drops the reservation; the switchover itself decides (verified and activated, or dropped).
   */
  switchoverAsked = false;
  /** Activated by a switchover, and whether the source has said since that it freed its copy (`peer.released`). */
  activatedBySwitchover = false;
  sourceReleased = false;
  /**
   * Called when the connection closes after a switchover activated this copy and before the source said it freed
   * its own: the agent then asks the source what it still holds (settlement.ts `confirmRelease`). Set by the agent.
   */
  onSourceUnconfirmed: (() => void) | undefined;
  /** The VM's small files, from verification; written to this agent's datastore at activation by `registerFiles`. */
  private files: RequestOf<PeerOps, 'peer.verify'>['files'];
  registerFiles: ((files: NonNullable<RequestOf<PeerOps, 'peer.verify'>['files']>, epoch: number) => Promise<void>) | undefined;
  private readonly activations: ActivationLog;
  /** Datagrams the source forwarded before activation, in order: they go into the RX ring at activation. */
  private forwardedEarly: ClientDatagram[] = [];
  /** Serves the VM's address here (vm/net/attach.ts), given what was forwarded early; set by the agent. */
  attachNetwork: ((earlier: ClientDatagram[]) => Promise<boolean>) | undefined;
  /** Serves the VM's first disk here (vm/disk/attach.ts), given the VM's config from verification; set by the agent. */
  attachDisk: ((config: string | undefined) => Promise<void>) | undefined;
  /** Reads what attachDisk will need from the VM's config ahead of the activation; set by the agent. */
  prepareDisk: ((config: string | undefined) => void) | undefined;
  /** `--copy-storage`: where the disks that arrive are staged; set by the agent. */
  diskStaging: DiskStaging | undefined;
  /** The staged disks, by the index the source gives them; placed in the VM's folder at activation. */
  private diskSinks: FileSink[] = [];
  /** Whether the VM's folder exists here already, its disks in it (registerFiles then fills it). */
  disksPlaced = false;
  /** The switchover's marks on this side, ms since peer.verify arrived (protocol.ts, downtimeTimelineSchema). */
  private verifyReceivedMs = 0;
  private marks: TimelineMark[] = [];

  constructor(
    migrationId: string,
    vm: VirtualMachine,
    catalog: Pick<Catalog, 'release'>,
    faults: Faults,
    log: Logger,
    source: { epoch: number; url: string },
    activations: ActivationLog,
  ) {
    this.migrationId = migrationId;
    this.sourceEpoch = source.epoch;
    this.sourceUrl = source.url;
    this.activations = activations;
    try {
      activations.prepare(migrationId);
    } catch (error) {
      // The activation then makes the file itself, as it did before files were prepared: slower, as sound.
      log.warn('could not prepare the activation record', { migration: migrationId, error: String(error) });
    }
    this.vm = vm;
    this.catalog = catalog;
    this.faults = faults;
    this.log = log;
    this.receiver = new PageReceiver(vm.memory, vm.hasher, vm.pageCount, {
      acceptHeader: () => this.checkReceiving(),
      beforeInstall: (header, data) => {
        this.lastHeardMs = performance.now();
        this.checkReceiving();
        this.damageForFault(header, data);
      },
      afterInstall: (header, mismatches) => {
        this.tableDigest.touchAll(header.pages);
        if ((header.flags & PAGE_FLAG_PAUSED) !== 0) this.damagedWhilePaused += mismatches;
        else this.pageMismatches += mismatches;
        const cutPostcopy = this.faults.cutPostcopyAfterPages;
        if (cutPostcopy !== undefined && this.postcopy && this.phase === 'postcopy' && !this.postcopyCut && this.postcopyPagesTaken(header.pages.length) >= cutPostcopy) {
          this.postcopyCut = true; // once a migration: the resume then finishes it
          this.log.warn('fault: cutting the post-copy link', { pages: cutPostcopy });
          this.receiver.closeStream();
          this.closeStream?.();
        }
        const cutAfter = this.faults.cutStreamAfterBytes;
        if (cutAfter !== undefined && this.receiver.hasStream && this.receiver.bytes >= cutAfter) {
          this.faults.cutStreamAfterBytes = undefined;
          this.log.warn('fault: cutting the page stream', { bytes: this.receiver.bytes });
          this.receiver.closeStream();
        }
      },
    });
    this.tableDigest = new TableDigest(this.receiver.installer.table);
    // Before verification nothing can have been committed, so a silent source costs only its reservation.
    this.watchdog = setInterval(() => {
      if ((this.phase === 'reserved' || this.phase === 'receiving') && performance.now() - this.lastHeardMs > RESERVATION_TIMEOUT_MS) {
        this.closeStream?.();
        void this.drop(`nothing heard from the source for ${RESERVATION_TIMEOUT_MS / 1000} s`, { keepVerified: true });
      }
    }, STALL_CHECK_MS);
    this.watchdog.unref();
  }

  get state(): Phase {
    return this.phase;
  }

  /** Peer said hello: the page stream is about to start. `resume`: a post-copy's source, back after its link broke. */
  attach(from: string, resume = false): void {
    if (resume) {
      if (this.phase !== 'postcopy' || this.postcopy?.linked) {
        throw new FerryError(ErrorCode.VM_STATE, `migration ${this.migrationId} has no post-copy waiting for its source here (it is ${this.phase})`, 'only a post-copy whose link broke can be resumed');
      }
      this.receiver.dropPending();
      this.log.info('post-copy source reconnected', { vm: this.vm.name, migration: this.migrationId, missing: this.postcopy?.missing });
      return;
    }
    this.sourceName = from;
    if (this.phase !== 'reserved') {
      throw new FerryError(ErrorCode.VM_STATE, `migration ${this.migrationId} already has a source connected`, 'start a new migration');
    }
    this.phase = 'receiving';
  }

  /**
   * Takes a binary frame off the peer connection if it belongs to the page stream: a page header, or the data
   * message that follows one. Throws on a malformed frame; the caller closes the connection.
   */
  takeFrame(frame: Buffer): boolean {
    this.lastHeardMs = performance.now();
    return this.receiver.takeMessage(frame);
  }

  private checkReceiving(): void {
    // After a post-copy's end, copies of pages still in flight are taken and skipped (every page is present).
    if (this.phase !== 'receiving' && this.phase !== 'postcopy' && !(this.phase === 'active' && this.postcopy)) {
      throw new FerryError(ErrorCode.PROTOCOL, `page data for ${this.vm.name} arrived while the migration is ${this.phase}`);
    }
  }

  /**
   * The source opened a page stream of its own (shared/page-stream.ts): frames arrive there from now on, read
   * straight into guest memory. `onLost` is called if it closes while pages are still due.
   */
  attachStream(stream: PageStreamConnection, onLost: (why: string) => void): void {
    if (this.phase !== 'receiving' && this.phase !== 'postcopy') throw new FerryError(ErrorCode.PROTOCOL, `a page stream for ${this.vm.name} while the migration is ${this.phase}`);
    this.receiver.attachStream(stream, () => this.phase !== 'receiving' && this.phase !== 'postcopy', onLost);
  }

  /**
   * Resolves once `bytes` of page frames have been taken (the source says how many it sent), so that what follows
   * a round or stop-and-copy on the WebSocket is handled after every page sent before it, as on one ordered
   * connection. Without `bytes` (an older request) there is nothing to wait for.
   */
  streamAt(bytes: number | undefined): Promise<void> {
    return this.receiver.streamAt(bytes);
  }

  /** The page stream carries nothing more once the image is verified, active or dropped. */
  private destroyPageStream(): void {
    this.receiver.closeStream();
  }

  /** Test-only: `corrupt-page:N` damages page N the first time it arrives, before it is checked (faults.ts). */
  private damageForFault(header: PageHeader, data: Buffer | undefined): void {
    const faulty = this.faults.corruptPage;
    if (faulty === undefined) return;
    // The page's place in the data message: zero pages have none (a zero page cannot be corrupted in transit).
    let at = 0;
    for (let i = 0; i < header.pages.length; i++) {
      if (header.zero[i]) continue;
      if (header.pages[i] === faulty) {
        this.faults.corruptPage = undefined;
        if (data) data[at * PAGE_SIZE + 17]! ^= 0xff;
        else this.vm.memory[faulty * PAGE_SIZE + 17]! ^= 0xff;
        this.log.warn('fault: corrupted a page in transit', { page: faulty });
        return;
      }
      at += 1;
    }
  }

  /** Every frame before this request has been installed (frames are handled in order, synchronously). */
  sync(): ReplyOf<PeerOps, 'peer.sync'> {
    this.lastHeardMs = performance.now();
    // Test-only: a `round-N` fault fires on the destination here, when round N's pages are all in.
    if (this.phase !== 'receiving') {
      throw new FerryError(ErrorCode.PROTOCOL, `sync for ${this.vm.name} while the migration is ${this.phase}`);
    }
    // The round's pages are all in: bring the digest up to date now, outside the pause.
    this.tableDigest.refresh();
    return { pagesReceived: this.receiver.pagesReceived };
  }

  /** `disk.begin`: an empty sparse image per disk, in the migration's staging folder. */
  async beginDisks(disks: { file: string; sizeBytes: number }[]): Promise<void> {
    this.lastHeardMs = performance.now();
    if (this.phase !== 'receiving') throw new FerryError(ErrorCode.PROTOCOL, `disks for ${this.vm.name} while the migration is ${this.phase}`);
    if (this.diskSinks.length > 0) throw new FerryError(ErrorCode.PROTOCOL, `disks for ${this.vm.name} were begun already`);
    if (!this.diskStaging) throw new FerryError(ErrorCode.VM_STATE, `this host has no datastore to receive ${this.vm.name}'s disks`, 'run the agent with --datastore');
    this.diskSinks = await this.diskStaging.create(disks);
  }

  /** `disk.write`: blocks into a staged disk, in arrival order; resolves once written. */
  writeDisk(index: number, first: number, data: Uint8Array): Promise<void> {
    this.lastHeardMs = performance.now();
    const sink = this.diskSinks[index];
    if (this.phase !== 'receiving' || !sink) return Promise.reject(new FerryError(ErrorCode.PROTOCOL, `a disk write for ${this.vm.name}'s disk ${index}, which is not being received`));
    return sink.write(first, data);
  }

  /**
   * `disk.digest`: every write to disk `index` done; the digest of its per-block digests, and with `full` of the whole
   * image. Not synced here: that would put an fsync of the image in the pause; the disk is synced once the VM runs
   * here (registerFiles), as the activation log is (a process that dies keeps what it wrote; a machine that loses
   * power before then loses the migration's last writes, as it would the guest's own).
   */
  async diskDigest(index: number, full: boolean): Promise<{ tableDigest: string; imageDigest?: string }> {
    this.lastHeardMs = performance.now();
    const sink = this.diskSinks[index];
    if (!sink || !this.diskStaging) throw new FerryError(ErrorCode.PROTOCOL, `a digest of ${this.vm.name}'s disk ${index}, which is not being received`);
    await sink.flush();
    return {
      tableDigest: formatDigest(await sink.tableDigest()),
      ...(full ? { imageDigest: await this.diskStaging.imageDigest(sink) } : {}),
    };
  }

  private mark(event: string, atMs = performance.now()): void {
    this.marks.push({ event, atMs: atMs - this.verifyReceivedMs });
  }

  /** Stage 4: all pages are here (the stream is ordered); load the registers and report our digests. */
  verify(request: RequestOf<PeerOps, 'peer.verify'>, receivedMs = performance.now(), { switchover = false } = {}): ReplyOf<PeerOps, 'peer.verify'> {
    if (this.phase !== 'receiving' || this.receiver.midFrame) {
      throw new FerryError(ErrorCode.PROTOCOL, `verification of ${this.vm.name} asked while ${this.receiver.midFrame ? 'page data is still due' : `the migration is ${this.phase}`}`);
    }
    this.verifyReceivedMs = receivedMs;
    this.marks = [];
    // A page stream of its own may bring its last frame after the request (streamAt waited for it): marks in time order.
    const { lastFrameMs } = this.receiver;
    if (lastFrameMs !== undefined && lastFrameMs <= receivedMs) this.mark('last frame taken', lastFrameMs);
    this.mark(switchover ? 'switchover received' : 'verify received', receivedMs);
    if (lastFrameMs !== undefined && lastFrameMs > receivedMs) this.mark('last frame taken', lastFrameMs);
    this.vm.setRegisters(request.registers);
    this.vm.guest = request.guest;
    if (request.network !== undefined) this.vm.network = request.network;
    this.resumeOnActivation = request.resume;
    this.files = request.files;
    this.phase = 'verified';
    this.mark('registers set');
    const destDigest = formatDigest(this.tableDigest.digest());
    const destMemoryDigest = request.mode === 'full' ? formatDigest(digestMemory(this.vm.memory)) : undefined;
    this.mark('digest done');
    if (!switchover) this.mark('verify reply ready');
    return {
      destDigest,
      ...(destMemoryDigest !== undefined ? { destMemoryDigest } : {}),
      pageMismatches: this.pageMismatches,
      damagedWhilePaused: this.damagedWhilePaused,
      timeline: this.marks.splice(0),
      anchorEpochMs: performance.timeOrigin + receivedMs,
      ...(this.receiver.installer.decodeMs > 0 ? { deltaDecodeMs: this.receiver.installer.decodeMs } : {}),
    };
  }

  /**
   * The work of the activation that can be done before it is asked for (the config read once, here): after the verify
   * reply has gone, while the source compares digests and commits; or, given the config the source sent with its last
   * sync before the pause, before the pause. Nothing here makes the VM run or serve.
   */
  prepareActivation(config = this.files?.config): void {
    if (this.phase !== 'verified' && this.phase !== 'receiving') return;
    try {
      this.prepareDisk?.(config);
    } catch (error) {
      // The activation reads it again and says what is wrong there; nothing is lost by failing here.
      this.log.warn('could not read the VM\'s config ahead of its activation', { vm: this.vm.name, error: String(error) });
    }
  }

  /** Stage 5: the source has committed; this copy is the VM now. */
  async activate(resume: boolean, receivedMs = performance.now(), { switchover = false, postcopy = false } = {}): Promise<ReplyOf<PeerOps, 'peer.activate'>> {
    if (this.phase === 'active') return { guestBlackoutMs: this.vm.lastBlackoutMs() }; // settled twice: same answer
    if (this.phase !== 'verified') {
      throw new FerryError(ErrorCode.PROTOCOL, `activation of ${this.vm.name} asked while the migration is ${this.phase}`);
    }
    // A post-copy with pages still to come keeps its page stream, and is `postcopy` until the last page is here.
    const pagesDue = postcopy && this.postcopy !== undefined && !this.postcopy.complete;
    this.phase = pagesDue ? 'postcopy' : 'active';
    this.activatedBySwitchover = switchover;
    this.mark(switchover ? 'digests match' : 'activate received', receivedMs);
    // Recorded before the vCPU runs: "no record" then proves this copy never ran (settlement.ts relies on it). A record
    // that cannot be written (a full datastore) leaves the image verified and not running, as before the request.
    try {
      this.activations.record(this.migrationId, this.vm.name, this.sourceEpoch + 1);
    } catch (error) {
      this.phase = 'verified';
      this.activatedBySwitchover = false;
      if (postcopy) this.vm.setPostcopy(null);
      throw new FerryError(ErrorCode.IO, `could not record the activation of ${this.vm.name}: ${(error as Error).message}`, 'free space in the destination\'s datastore');
    }
    this.mark('activation recorded');
    if (!pagesDue) setImmediate(() => this.destroyPageStream()); // after the reply: nothing arrives on it any more
    clearInterval(this.watchdog);
    this.vm.epoch = this.sourceEpoch + 1;
    // The address before the guest runs: what was forwarded first, then whatever arrives here.
    const servingStartMs = performance.now();
    let servingAfterMs: number | undefined;
    try {
      const earlier = this.forwardedEarly;
      this.forwardedEarly = [];
      if (await this.attachNetwork?.(earlier)) servingAfterMs = performance.now() - servingStartMs;
    } catch (error) {
      // The VM is committed here: it runs, without its address, rather than not at all. Said loudly.
      this.log.error('could not serve the VM\'s address after activation', { vm: this.vm.name, error: String(error) });
    }
    this.mark('network attached');
    if (this.diskSinks.length > 0) {
      try {
        await this.diskStaging!.place(this.diskSinks);
        this.disksPlaced = true;
      } catch (error) {
        this.log.error('could not place the VM\'s copied disks in its folder after activation', { vm: this.vm.name, error: String(error) });
      }
    }
    try {
      await this.attachDisk?.(this.files?.config);
    } catch (error) {
      // Committed here, as above: it runs without its disk (its vCPU then makes no disk writes), said loudly.
      this.log.error('could not open the VM\'s disk after activation', { vm: this.vm.name, error: String(error) });
    }
    this.mark('disk attached');
    if (resume) {
      await this.vm.resume({ quick: true });
      this.vm.state = 'running';
    } else {
      this.vm.state = 'paused';
    }
    this.mark('vCPU resumed');
    // Logged after the reply has gone: a log line is a write that may wake whoever reads this agent's output.
    const { name, epoch } = this.vm;
    setImmediate(() => this.log.info('activated', { vm: name, migration: this.migrationId, epoch }));
    // The VM's files join this datastore once it runs, started after the reply has gone: writing and syncing them,
    // even the first synchronous steps, are no part of its downtime.
    const files = this.files;
    if (files) {
      setImmediate(() => void this.registerFiles?.(files, epoch).catch((error: unknown) => {
        this.log.error('could not write the VM\'s files into the datastore', { vm: this.vm.name, error: String(error) });
      }));
    }
    if (!pagesDue) this.onFinished?.(); // a post-copy is finished here once its last page is (endedPostcopy)
    const announcements = this.vm.net?.announcements;
    this.mark('activate reply ready');
    return {
      guestBlackoutMs: resume ? this.vm.lastBlackoutMs() : 0,
      ...(servingAfterMs !== undefined ? { servingAfterMs } : {}),
      ...(announcements ? { announcements } : {}),
      timeline: this.marks.splice(0),
      gc: collectionsWithin(this.verifyReceivedMs, performance.now()),
    };
  }

  /**
   * The post-copy switch (`peer.postcopy`): every frame sent before it is in (the caller waited with `streamAt`). Takes
   * the registers and files as verification would, marks the missing pages absent, and runs the VM at once; a vCPU
   * that touches a missing page waits for it (postcopy-target.ts). The source committed when it asked.
   */
  async beginPostcopy(request: RequestOf<PeerOps, 'peer.postcopy'>, receivedMs: number): Promise<ReplyOf<PeerOps, 'peer.postcopy'>> {
    if (this.phase !== 'receiving' || this.receiver.midFrame) {
      throw new FerryError(ErrorCode.PROTOCOL, `a post-copy switch for ${this.vm.name} while ${this.receiver.midFrame ? 'page data is still due' : `the migration is ${this.phase}`}`);
    }
    this.verifyReceivedMs = receivedMs;
    this.marks = [];
    this.mark('postcopy received', receivedMs);
    const missing = this.vm.present.loadMissing(request.missing);
    this.vm.setRegisters(request.registers);
    this.vm.guest = request.guest;
    if (request.network !== undefined) this.vm.network = request.network;
    this.resumeOnActivation = request.resume;
    this.files = request.files;
    const postcopy = new PostcopyTarget(this.vm, missing, this.log);
    this.postcopy = postcopy;
    this.receiver.startPostcopy(postcopy);
    if (missing > 0) {
      this.vm.setPostcopy((message) => postcopy.onVcpu(message));
      this.vm.postcopy = {
        role: 'destination', migrationId: this.migrationId, peer: this.sourceName, missingPages: () => postcopy.missing, linked: () => postcopy.linked,
      };
    }
    this.phase = 'verified';
    this.mark('missing pages marked');
    let activated;
    try {
      activated = await this.activate(request.resume, performance.now(), { postcopy: true });
    } catch (error) {
      this.receiver.postcopy = undefined;
      this.postcopy = undefined;
      this.vm.setPostcopy(null);
      this.vm.postcopy = undefined;
      throw error;
    }
    return { ...activated, activated: true, anchorEpochMs: performance.timeOrigin + receivedMs };
  }

  private postcopyPagesTaken(more: number): number {
    this.postcopyPages += more;
    return this.postcopyPages;
  }

  /** `peer.faults`: pages are asked for on this request's events until the post-copy completes or the connection goes. */
  faultChannel(send: (pages: number[]) => void, closed: AbortSignal): Promise<void> {
    const postcopy = this.postcopy;
    if (!postcopy || (this.phase !== 'postcopy' && this.phase !== 'active')) throw new FerryError(ErrorCode.PROTOCOL, `page requests for ${this.vm.name} while the migration is ${this.phase}`);
    return postcopy.openChannel(send, closed);
  }

  /** `peer.postcopy-state`: what a resumed source must still send. */
  postcopyState(): ReplyOf<PeerOps, 'peer.postcopy-state'> {
    const postcopy = this.postcopy;
    if (!postcopy || this.phase !== 'postcopy') throw new FerryError(ErrorCode.VM_STATE, `${this.vm.name} has no post-copy under way here (the migration is ${this.phase})`);
    return { missing: this.vm.present.missingBitmap(), faults: postcopy.faults };
  }

  /**
   * `peer.postcopy-end`: the source has pushed every missing page. Answered once every page is here, with the digest
   * of the hashes they arrived with, for the source to compare with its own. The VM runs here either way: a page that
   * arrived damaged was asked for again, so a mismatch here means a fault in ferry itself, said loudly.
   */
  async endPostcopy(sourceDigest: string, signal: AbortSignal): Promise<ReplyOf<PeerOps, 'peer.postcopy-end'>> {
    const postcopy = this.postcopy;
    if (!postcopy || (this.phase !== 'postcopy' && this.phase !== 'active')) throw new FerryError(ErrorCode.PROTOCOL, `the end of a post-copy of ${this.vm.name} while the migration is ${this.phase}`);
    if (this.phase === 'postcopy' && !(await postcopy.whenComplete(PEER_REPLY_TIMEOUT_MS, signal))) {
      throw new FerryError(ErrorCode.TIMEOUT, `${postcopy.missing} page(s) of ${this.vm.name} still missing ${PEER_REPLY_TIMEOUT_MS / 1000} s after the push ended`, 'the source sends them when asked; check the link between the hosts');
    }
    this.endedPostcopy(true);
    const destDigest = formatDigest(this.tableDigest.digest());
    const match = destDigest === sourceDigest;
    if (!match) this.log.error('post-copy page tables differ after every page arrived checked', { vm: this.vm.name, sourceDigest, destDigest });
    const stallMs = postcopy.stallSummary();
    return { destDigest, match, faults: postcopy.faults, ...(stallMs ? { stallMs } : {}), refetched: postcopy.refetched };
  }

  /** The post-copy is over here: every page present (`complete`), or the VM lost with its source. */
  private endedPostcopy(complete: boolean): void {
    if (this.phase !== 'postcopy') return;
    this.phase = 'active';
    this.vm.postcopy = undefined;
    setImmediate(() => this.destroyPageStream());
    this.log.info(complete ? 'post-copy finished here' : 'post-copy ended here without its pages', { vm: this.vm.name, migration: this.migrationId });
    this.onFinished?.();
  }

  /** The source is gone with the pages this VM lacks (it said so, or forgot the migration): the VM is lost here. */
  async losePostcopy(): Promise<void> {
    if (this.phase !== 'postcopy') return;
    this.log.error('post-copy lost: the source no longer holds the pages this VM lacks; its vCPU is stopped', { vm: this.vm.name, missing: this.postcopy?.missing });
    await this.vm.pause().catch(() => undefined);
    this.vm.setPostcopy(null);
    this.vm.state = 'lost';
    this.endedPostcopy(false);
  }

  /** Datagrams the source forwarded: kept until activation, then straight to the VM's RX ring. */
  takeForwarded(datagrams: ClientDatagram[]): void {
    this.lastHeardMs = performance.now();
    if (this.phase === 'active' || this.phase === 'postcopy') {
      for (const datagram of datagrams) this.vm.net?.deliver(datagram);
      return;
    }
    if (this.phase !== 'receiving' && this.phase !== 'verified') return;
    const room = MAX_FORWARDED_EARLY - this.forwardedEarly.length;
    if (datagrams.length > room) this.log.warn('too many datagrams forwarded before activation; dropping the rest', { vm: this.vm.name, dropped: datagrams.length - room });
    this.forwardedEarly.push(...datagrams.slice(0, Math.max(room, 0)));
  }

  /**
   * The peer connection closed. Before verification nothing can have been committed: drop the reservation. After
   * it, the source may have committed, so the image stays, parked and never running.
   */
  connectionClosed(): void {
    if (this.phase === 'postcopy') {
      // The VM runs here; the pages it lacks are at the source, which keeps them until it reconnects.
      this.receiver.dropPending();
      this.log.warn('post-copy link lost: the VM runs here and waits for its missing pages until the source reconnects (ferry migrate --resume)', { vm: this.vm.name, missing: this.postcopy?.missing });
      return;
    }
    if (this.switchoverAsked && (this.phase === 'receiving' || this.phase === 'verified')) {
      // The source committed when it asked: the switchover under way verifies and activates, or drops, on its own.
      this.streamClosed = true;
    } else if (this.phase === 'reserved' || this.phase === 'receiving') {
      void this.drop('the page stream closed before the commit', { keepVerified: true });
    } else if (this.phase === 'active') {
      if (this.activatedBySwitchover && !this.sourceReleased) this.onSourceUnconfirmed?.();
    } else if (this.phase === 'verified') {
      this.streamClosed = true;
      this.log.warn('peer connection closed between verification and activation; keeping the image parked until the source says how it ended', { vm: this.vm.name });
    }
  }

  /**
   * Drops the reservation and frees its memory. A verified image is dropped only when its source says it aborted
   * (`keepVerified: false`): the source aborts only before it commits. Anyone else (the coordinator's release, a
   * closed connection) might be racing a commit whose acknowledgement was lost, and dropping then would lose the
   * only committed copy.
   */
  async drop(reason: string, { keepVerified }: { keepVerified: boolean }): Promise<void> {
    if (this.phase === 'active' || this.phase === 'postcopy' || this.phase === 'dropped') return;
    if (keepVerified && (this.phase === 'verified' || this.switchoverAsked)) {
      // A switchover asked means the source committed: the switchover decides, not a closed connection or a release.
      this.log.warn('not dropping a verified image, or one a switchover is deciding: its source may have committed', { vm: this.vm.name, reason });
      return;
    }
    this.phase = 'dropped';
    clearInterval(this.watchdog);
    try {
      this.activations.discard(this.migrationId);
    } catch (error) {
      this.log.warn('could not remove the empty activation record', { migration: this.migrationId, error: String(error) });
    }
    this.destroyPageStream();
    this.log.info('reservation dropped', { vm: this.vm.name, migration: this.migrationId, reason });
    // Partial (or verified but never committed) disks go with the reservation.
    await this.diskStaging?.remove(this.diskSinks).catch((error: unknown) => this.log.warn('could not remove the staged disks', { vm: this.vm.name, error: String(error) }));
    await this.catalog.release(this.vm);
    this.onFinished?.();
  }
}

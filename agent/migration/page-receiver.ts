/**
 * The receiving end of page frames (shared/page-frame.ts), on either path, for a migration's destination (target.ts)
 * and a link measurement (peer/link-probe.ts):
 *
 * - on the peer WebSocket, a header message and then its data message (`takeMessage`);
 * - on a page stream of its own (shared/page-stream.ts), read straight into guest memory (`attachStream`,
 *   page-stream-reader.ts).
 *
 * Either way each frame is installed, hashed and checked by one PageInstaller, and its bytes counted, so that a
 * request on the WebSocket that says how many page-frame bytes were sent before it (`peer.sync`, `peer.verify`,
 * `link.ping`, `link.end`) can wait until they have all been taken (`streamAt`): as on one ordered connection.
 */
import { PEER_REPLY_TIMEOUT_MS } from '../../shared/constants.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { decodePageHeader, expectedDataBytes, isPageHeader, pageHeaderBytes, type PageHeader } from '../../shared/page-frame.js';
import type { PageHasher } from '../../shared/page-hash.js';
import type { PageStreamConnection } from '../../shared/page-stream.js';
import type { PresentMap } from '../vm/present-map.js';
import { PageInstaller } from './page-install.js';
import { PageStreamReader } from './page-stream-reader.js';

const EMPTY = Buffer.alloc(0);

export interface PageReceiverHooks {
  /**
   * A frame's header is in, before any of its page bytes is taken (on a page stream, before they are read into guest
   * memory): may throw to refuse it, when pages are no longer accepted (the connection is then closed).
   */
  acceptHeader?(header: PageHeader): void;
  /**
   * Before a frame is installed, its bytes in `data` or already in place in guest memory (undefined): may throw to
   * refuse it (the connection is then closed), or damage it (a test's fault).
   */
  beforeInstall?(header: PageHeader, data: Buffer | undefined): void;
  /** After a frame is installed: how many of its pages did not match the hash they came with. */
  afterInstall?(header: PageHeader, mismatches: number): void;
}

/** A post-copy's second half (postcopy-target.ts): only missing pages are taken, each marked present as it lands. */
export interface PostcopyInstall {
  present: PresentMap;
  /** Pages that became present with a frame. */
  installed(count: number): void;
  /** A page that did not match its hash: still missing, to be asked for again. */
  damaged(page: number): void;
}

export class PageReceiver {
  readonly installer: PageInstaller;
  /** Pages taken so far, zero pages included. */
  pagesReceived = 0;
  /** Page-frame bytes taken, headers and data, on either path. */
  bytes = 0;
  /** When the last frame was taken (performance.now()). */
  lastFrameMs: number | undefined;
  private readonly memory: Uint8Array;
  private readonly pageCount: number;
  private readonly hooks: PageReceiverHooks;
  /** A header taken off the WebSocket whose data message is due next. */
  private pending: PageHeader | undefined;
  private stream: PageStreamConnection | undefined;
  private reader: PageStreamReader | undefined;
  private waiters: (() => void)[] = [];
  /**
   * Set from a post-copy's switch on (`startPostcopy`): frames may then come on both paths at once (the push on the
   * page stream, pages a fault asked for on the WebSocket), and are installed page by page, never over a page present
   * already.
   */
  postcopy: PostcopyInstall | undefined;
  /**
   * Post-copy: 1 for a page that a page-stream frame is being read straight into (`claimInPlace`). Such a page is
   * not present, and no other copy of it is installed until that frame is in (it then is, or is asked for again).
   */
  private claimed: Uint8Array | undefined;
  private claimedPages: Uint32Array | undefined;

  constructor(memory: Uint8Array, hasher: PageHasher, pageCount: number, hooks: PageReceiverHooks = {}) {
    this.memory = memory;
    this.pageCount = pageCount;
    this.hooks = hooks;
    this.installer = new PageInstaller(memory, hasher, pageCount);
  }

  /** Whether a page stream of its own was attached. */
  get hasStream(): boolean {
    return this.stream !== undefined;
  }

  /** Whether a frame is part-taken: its header is in and some of its bytes are still due. */
  get midFrame(): boolean {
    return this.pending !== undefined || this.reader?.midFrame === true;
  }

  /**
   * Takes a binary message off the WebSocket if it belongs to the page stream: a page header, or the data message
   * that follows one. Throws on a malformed frame; the caller closes the connection.
   */
  takeMessage(frame: Buffer): boolean {
    if (this.pending) {
      const header = this.pending;
      this.pending = undefined;
      const expected = expectedDataBytes(header);
      if (frame.length !== expected) {
        throw new FerryError(ErrorCode.PROTOCOL, `page data is ${frame.length} bytes, its header announced ${expected}`, 'the peer is not a compatible ferry-agent');
      }
      this.install(header, frame, pageHeaderBytes(header.pages.length, header.deltaPages) + frame.length);
      return true;
    }
    if (!isPageHeader(frame)) return false;
    if (this.stream && !this.postcopy) throw new FerryError(ErrorCode.PROTOCOL, 'page data arrived on the WebSocket while a page stream of its own is open', 'the peer is not a compatible ferry-agent');
    const header = decodePageHeader(frame, this.pageCount);
    this.hooks.acceptHeader?.(header);
    // A frame of zero pages (and deltas of unchanged pages) only has no data message.
    if (header.dataBytes === 0) this.install(header, EMPTY, frame.length);
    else this.pending = header;
    return true;
  }

  /**
   * Frames arrive on `stream` from now on, read straight into guest memory. `onLost` is called if it closes while
   * `ended()` says pages may still be due.
   */
  attachStream(stream: PageStreamConnection, ended: () => boolean, onLost: (why: string) => void): void {
    // A post-copy resumed after its link broke opens a new one in place of the closed one.
    if (this.stream && !(this.postcopy && this.stream.socket.destroyed)) throw new FerryError(ErrorCode.PROTOCOL, 'a second page stream for the same pages', 'the peer is not a compatible ferry-agent');
    this.stream = stream;
    this.reader = new PageStreamReader({
      pageCount: this.pageCount,
      memory: this.memory,
      onHeader: (header) => this.hooks.acceptHeader?.(header),
      inPlace: (header) => this.claimInPlace(header),
      onFrame: (header, staged, bytes) => this.install(header, staged, bytes),
    });
    let error: string | undefined;
    stream.socket.on('error', (cause) => {
      error = cause.message;
    });
    stream.socket.once('close', () => {
      if (this.stream !== stream) return; // replaced by a resumed post-copy's stream
      this.releaseClaims(); // a frame cut short: its pages are still missing, and may come another way
      if (!ended()) onLost(error ?? 'the page stream closed while pages were due');
      this.wake();
    });
    stream.consume(this.reader);
  }

  /** Closes the page stream of its own, if there is one: nothing more is due on it. */
  closeStream(): void {
    this.stream?.socket.destroy();
  }

  /**
   * Resolves once `bytes` of page frames have been taken (the sender says how many it sent), so that what follows
   * on the WebSocket is handled after every page sent before it. Without `bytes` there is nothing to wait for.
   */
  async streamAt(bytes: number | undefined): Promise<void> {
    if (bytes === undefined) {
      // Without the count nothing says the stream's last frames are in: a sender with a stream must give it.
      if (this.stream) throw new FerryError(ErrorCode.PROTOCOL, 'a request after page frames on a page stream must say how many bytes were sent (streamBytes)', 'the peer is not a compatible ferry-agent');
      return;
    }
    const deadline = performance.now() + PEER_REPLY_TIMEOUT_MS;
    for (;;) {
      if (this.bytes > bytes) throw new FerryError(ErrorCode.PROTOCOL, `${this.bytes} bytes of page frames arrived where the source sent ${bytes}`, 'the peer is not a compatible ferry-agent');
      if (this.bytes === bytes && !this.midFrame) return;
      if (!this.stream) {
        throw new FerryError(ErrorCode.PROTOCOL, `the source says it sent ${bytes} bytes of page frames on this connection, and ${this.bytes} arrived before its request`, 'the peer is not a compatible ferry-agent');
      }
      if (this.stream.socket.destroyed) {
        throw new FerryError(ErrorCode.CONNECTION_LOST, `the page stream ended after ${this.bytes} of the ${bytes} bytes sent`, 'check the network between the hosts');
      }
      const left = deadline - performance.now();
      if (left <= 0) throw new FerryError(ErrorCode.TIMEOUT, `${bytes - this.bytes} bytes of page frames did not arrive within ${PEER_REPLY_TIMEOUT_MS / 1000} s`, 'check the network between the hosts');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** From a post-copy's switch on: frames are installed by `postcopy`, only where a page is still missing. */
  startPostcopy(postcopy: PostcopyInstall): void {
    this.postcopy = postcopy;
    this.claimed = new Uint8Array(this.pageCount);
  }

  /**
   * Whether a page-stream frame may be read straight into guest memory: always before a post-copy; during one, only
   * when none of its pages is present or claimed, and then its pages are claimed until it is in.
   */
  private claimInPlace(header: PageHeader): boolean {
    const { postcopy, claimed } = this;
    if (!postcopy || !claimed) return true;
    const { pages } = header;
    for (let i = 0; i < pages.length; i++) if (claimed[pages[i]!] || postcopy.present.has(pages[i]!)) return false;
    for (let i = 0; i < pages.length; i++) claimed[pages[i]!] = 1;
    this.claimedPages = pages;
    return true;
  }

  private releaseClaims(): void {
    const { claimed, claimedPages } = this;
    if (!claimed || !claimedPages) return;
    for (let i = 0; i < claimedPages.length; i++) claimed[claimedPages[i]!] = 0;
    this.claimedPages = undefined;
  }

  /** Forgets a WebSocket frame half taken: its data message will never come (a post-copy's link broke). */
  dropPending(): void {
    this.pending = undefined;
  }

  private install(header: PageHeader, data: Buffer | undefined, bytes: number): void {
    this.hooks.beforeInstall?.(header, data);
    const { postcopy } = this;
    if (postcopy) {
      const damaged = (page: number): void => postcopy.damaged(page);
      let installed: number;
      if (data) {
        installed = this.installer.installMissing(header, data, postcopy.present, damaged, this.claimed);
      } else {
        // Read in place, its pages claimed (claimInPlace): each is checked where it lies.
        this.releaseClaims();
        installed = this.installer.installMissingInPlace(header, postcopy.present, damaged);
      }
      postcopy.installed(installed);
      this.pagesReceived += header.pages.length;
      this.bytes += bytes;
      this.lastFrameMs = performance.now();
      this.hooks.afterInstall?.(header, 0);
      return;
    }
    const mismatches = data ? this.installer.install(header, data) : this.installer.installInPlace(header);
    this.pagesReceived += header.pages.length;
    this.bytes += bytes;
    this.lastFrameMs = performance.now();
    this.hooks.afterInstall?.(header, mismatches);
    this.wake();
  }

  private wake(): void {
    if (this.waiters.length > 0) for (const waiter of this.waiters.splice(0)) waiter();
  }
}

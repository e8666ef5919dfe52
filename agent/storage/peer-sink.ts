/**
 * A BlockSink on the other side of a live migration's peer connection (`--copy-storage`): blocks go as `disk.write`
 * requests on the same ordered connection as the pages, and the destination writes them into its staged image
 * (a FileSink there) in the order they arrive. A write resolves when the destination has written it, so a mirrored
 * guest write waits for the destination's disk, as a write-blocking mirror should.
 */
import { PEER_REPLY_TIMEOUT_MS } from '../../shared/constants.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import type { PeerClient } from '../migration/peer-client.js';
import type { BlockSink } from './disk-copy.js';

export class PeerSink implements BlockSink {
  private readonly peer: PeerClient;
  private readonly index: number;
  private readonly signal: AbortSignal | undefined;
  private readonly outstanding = new Set<Promise<unknown>>();
  private failure: unknown;

  constructor(peer: PeerClient, index: number, signal?: AbortSignal) {
    this.peer = peer;
    this.index = index;
    this.signal = signal;
  }

  write(first: number, data: Uint8Array): Promise<void> {
    // The request is encoded (its bytes copied) before `request` returns: the caller may reuse `data` at once.
    const sent = this.peer.request('disk.write', { index: this.index, first, data: data as Uint8Array<ArrayBuffer> }, { timeoutMs: PEER_REPLY_TIMEOUT_MS, ...(this.signal ? { signal: this.signal } : {}) })
      .then(() => undefined, (error: unknown) => {
        this.failure ??= error;
        throw error;
      });
    this.outstanding.add(sent);
    void sent.catch(() => undefined).finally(() => this.outstanding.delete(sent));
    return sent;
  }

  async flush(): Promise<void> {
    while (this.outstanding.size > 0) await Promise.allSettled([...this.outstanding]);
    if (this.failure !== undefined) {
      throw new FerryError(ErrorCode.CONNECTION_LOST, `copying the disk to the destination failed: ${(this.failure as Error).message ?? String(this.failure)}`, 'the VM keeps running on the source with its disk; check the destination\'s storage and the network, and retry');
    }
  }

  /** The destination's digests of its copy (synced first): per-block table, and the whole image with `full`. */
  async digests(full: boolean): Promise<{ tableDigest: string; imageDigest?: string }> {
    await this.flush();
    return this.peer.request('disk.digest', { index: this.index, full }, { timeoutMs: PEER_REPLY_TIMEOUT_MS, ...(this.signal ? { signal: this.signal } : {}) });
  }
}

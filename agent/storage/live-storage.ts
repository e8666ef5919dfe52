/**
 * `ferry migrate --copy-storage`: the source's part for the VM's local disks (stage 2, before memory; the end of
 * stage 3; a check in stage 4). Each disk is copied by a DiskCopy into a PeerSink, so its blocks reach the
 * destination's staged image on the migration's own connection (agent/migration/target.ts stages and places them).
 *
 *   toReady       disk.begin, then every disk to ready (mirror: the write-blocking mirror stays on through memory's
 *                 pre-copy; iterate: dirty-block rounds)
 *   beforePause   iterate: one more round, so the pause carries only what the guest writes during memory's last round
 *   whilePaused   the blocks still dirty (iterate) go, every write is acknowledged, the mirror comes off
 *   verify        the destination's digests of each staged disk (per-block table, and the whole image with `full`)
 *                 against the source's
 *   close         always: no mirror is left on the VM's disk, whatever happened
 */
import { formatDigest } from '../../shared/checksum.js';
import type { MigrationEvent, SourceReport, VerifyMode } from '../../shared/protocol.js';
import type { PeerClient } from '../migration/peer-client.js';
import { PEER_REPLY_TIMEOUT_MS } from '../../shared/constants.js';
import { DiskCopy, type CopiedDisk, type StorageMode } from './disk-copy.js';
import { hashFile } from '../../shared/file-chunks.js';
import { PeerSink } from './peer-sink.js';
import { faultPoint, type Faults } from '../faults.js';
import type { Logger } from '../../shared/log.js';

export interface LocalDisk {
  file: string;
  sizeBytes: number;
  backend: CopiedDisk;
}

type StorageReport = NonNullable<SourceReport['storage']>;

export class LiveStorageCopy {
  private readonly disks: LocalDisk[];
  private readonly copies: { disk: LocalDisk; copy: DiskCopy; sink: PeerSink }[];
  private readonly peer: PeerClient;
  private readonly mode: StorageMode;
  private readonly signal: AbortSignal;
  readyAtMs = 0;

  constructor(peer: PeerClient, disks: LocalDisk[], options: {
    mode: StorageMode; maxDowntimeMs: number; maxRounds: number; maxBandwidthBytesPerSec: number; signal: AbortSignal; emit: (event: MigrationEvent) => void;
    /** Test-only: `crash@storage-copying` fires at the copy's first progress (faults.ts). */
    faults?: Faults | undefined; log: Logger;
  }) {
    this.peer = peer;
    this.disks = disks;
    this.mode = options.mode;
    this.signal = options.signal;
    this.copies = disks.map((disk, index) => {
      const sink = new PeerSink(peer, index, options.signal);
      const copy = new DiskCopy(disk.backend, sink, {
        mode: options.mode, maxDowntimeMs: options.maxDowntimeMs, maxRounds: options.maxRounds, maxBandwidthBytesPerSec: options.maxBandwidthBytesPerSec, signal: options.signal,
        onProgress: (progress) => {
          options.emit({ kind: 'storage', file: disk.file, ...progress });
          // Armed switches fire once (faults.ts): this one at the copy's first progress.
          void faultPoint(options.faults, 'storage-copying', options.log, () => peer.close());
        },
      });
      return { disk, copy, sink };
    });
  }

  async toReady(): Promise<void> {
    await this.peer.request('disk.begin', { disks: this.disks.map(({ file, sizeBytes }) => ({ file, sizeBytes })) }, { timeoutMs: PEER_REPLY_TIMEOUT_MS, signal: this.signal });
    for (const { copy } of this.copies) await copy.toReady();
  }

  async beforePause(): Promise<void> {
    for (const { copy } of this.copies) await copy.catchUp();
  }

  async whilePaused(): Promise<void> {
    for (const { copy } of this.copies) await copy.finishPaused();
  }

  /** Each disk's digests on both sides; `full` also hashes both whole images (the vCPU is paused). */
  async verify(mode: VerifyMode): Promise<StorageReport['verification']> {
    const full = mode === 'full';
    return Promise.all(this.copies.map(async ({ disk, copy, sink }) => {
      const [dest, sourceImageDigest] = await Promise.all([sink.digests(full), full ? hashFile(disk.backend.file).then((hashed) => hashed.xxh64) : Promise.resolve(undefined)]);
      const sourceDigest = formatDigest(copy.sourceTableDigest());
      const match = sourceDigest === dest.tableDigest && (!full || sourceImageDigest === dest.imageDigest);
      return {
        file: disk.file, sourceDigest, destDigest: dest.tableDigest, match,
        ...(full ? { sourceImageDigest: sourceImageDigest!, destImageDigest: dest.imageDigest ?? '' } : {}),
      };
    }));
  }

  close(): void {
    for (const { copy } of this.copies) copy.close();
  }

  report(verification: StorageReport['verification']): StorageReport {
    return {
      mode: this.mode,
      readyAtMs: this.readyAtMs,
      disks: this.copies.map(({ disk, copy }) => ({ file: disk.file, ...copy.result() })),
      verification,
    };
  }
}

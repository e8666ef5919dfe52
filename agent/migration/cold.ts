/**
 * Cold migration of a powered-off or suspended VM, as VMware describes it: move the files, register the VM on the new
 * host, delete it from the old one.
 *
 * The source streams every file of the VM's folder in 1 MiB chunks, each with its xxh64 (checked on arrival); chunks
 * of zeros are not sent, so sparse disks stay sparse (shared/file-chunks.ts, which image transfers use too). The
 * destination writes into a staging folder; at the end it syncs every file, checks sizes and whole-file xxh64s against
 * the source's manifest, and registers the VM with one rename of the staging folder into place. Only then does the
 * source delete its copy.
 *
 * Exactly one host holds the VM whatever crashes where:
 * - before the rename: the destination's staging folder is dropped (when the stream closes, or when it restarts);
 *   the source never deleted anything;
 * - after the rename: the registered copy carries `coldFrom` in its config, and its host keeps telling the source to
 *   forget its older copy (`peer.forget`, epochs decide) until the source says it holds none; then the mark goes.
 */
import { open, readFile, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { PEER_REPLY_TIMEOUT_MS } from '../../shared/constants.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { ChunkWindow, sendFileChunks } from '../../shared/file-chunks.js';
import type { PeerOps, RequestOf, ReplyOf } from '../../shared/protocol.js';
import type { VmCpuModel } from '../../shared/cpu.js';
import { vmConfigSchema, type VmConfig, type VmConfigFile } from '../datastore/config.js';
import type { Datastore } from '../datastore/datastore.js';
import { StagedReceiver } from '../datastore/staged-receiver.js';
import type { PeerClient } from './peer-client.js';

type Manifest = RequestOf<PeerOps, 'cold.finish'>['manifest'];

const RETRY = 'the source keeps the VM; retry the cold migration';

/** Source side: streams the VM's folder to the destination; resolves once the destination has registered it. */
export async function sendColdCopy(
  datastore: Datastore,
  config: VmConfig,
  suspended: boolean,
  migrationId: string,
  sourceUrl: string,
  peer: PeerClient,
  sharedStorageId?: string,
  onProgress?: (progress: { file: string; bytesDone: number; bytesTotal: number }) => void,
): Promise<{ manifest: Manifest; bytesSent: number; bytesSkipped: number }> {
  const folder = datastore.folder(config.name);
  const timeout = { timeoutMs: PEER_REPLY_TIMEOUT_MS };
  await peer.request('cold.begin', {
    migrationId, name: config.name, epoch: config.epoch, sourceUrl, ...(sharedStorageId ? { sharedStorageId } : {}), cpuModel: config.cpuModel, suspended,
  }, timeout);
  const manifest: Manifest = [];
  let bytesSent = 0;
  let bytesSkipped = 0;
  const files = (await readdir(folder)).filter((file) => !file.endsWith('.tmp')).sort();
  let bytesTotal = 0;
  for (const file of files) bytesTotal += (await stat(path.join(folder, file))).size;
  // One window for the whole folder: the chunks of the next file go out while the last ones of this file land.
  const window = new ChunkWindow();
  let bytesBefore = 0;
  let lastProgressMs = 0;
  for (const file of files) {
    const sent = await sendFileChunks(
      path.join(folder, file),
      (chunk) => peer.request('cold.chunk', { file, ...chunk }, timeout),
      window,
      (bytesDone) => {
        if (onProgress && performance.now() - lastProgressMs > 100) {
          lastProgressMs = performance.now();
          onProgress({ file, bytesDone: bytesBefore + bytesDone, bytesTotal });
        }
      },
    );
    bytesBefore += sent.bytes;
    bytesSent += sent.bytesSent;
    bytesSkipped += sent.bytesSkipped;
    manifest.push({ file, bytes: sent.bytes, xxh64: sent.xxh64 });
  }
  await window.drain();
  const { registered } = await peer.request('cold.finish', { manifest }, { timeoutMs: 5 * PEER_REPLY_TIMEOUT_MS });
  if (!registered) throw new FerryError(ErrorCode.INTERNAL, `the destination did not register ${config.name}`);
  return { manifest, bytesSent, bytesSkipped };
}

/**
 * Destination side: one incoming cold migration, from `cold.begin` to `cold.finish`. The staging folder, the chunk
 * writes and the ordering of finish and abandon are the StagedReceiver's (datastore/staged-receiver.ts); this adds
 * the manifest check and the VM's registration.
 */
export class ColdTarget {
  readonly name: string;
  private readonly migrationId: string;
  private readonly epoch: number;
  private readonly sourceUrl: string;
  private readonly cpuModel: VmCpuModel;
  private readonly datastore: Datastore;
  private readonly receiver: StagedReceiver;

  /** `signal` is the stream's: a finish under way stops when it closes. */
  constructor(datastore: Datastore, request: RequestOf<PeerOps, 'cold.begin'>, signal: AbortSignal) {
    this.datastore = datastore;
    this.name = request.name;
    this.migrationId = request.migrationId;
    this.epoch = request.epoch;
    this.sourceUrl = request.sourceUrl;
    this.cpuModel = request.cpuModel;
    this.receiver = new StagedReceiver(datastore, request.migrationId, {
      label: `cold migration of ${request.name}`,
      retryHint: RETRY,
      busy: () => new FerryError(ErrorCode.VM_STATE, `cold migration ${request.migrationId} is already under way here`, 'start a new migration (a new id)'),
    }, signal);
  }

  /** The VM's folder is in place: nothing of it is staging any more. */
  get registered(): boolean {
    return this.receiver.phase === 'registered';
  }

  /** Makes the staging folder; one per migration id, so a second stream can never share (or remove) another's. */
  begin(): Promise<void> {
    return this.receiver.begin();
  }

  async chunk({ file, ...chunk }: RequestOf<PeerOps, 'cold.chunk'>): Promise<void> {
    await this.receiver.write(file, chunk);
  }

  finish(manifest: Manifest): Promise<ReplyOf<PeerOps, 'cold.finish'>> {
    return this.receiver.finish(manifest.map((entry) => entry.file), () => this.checkAndRegister(manifest));
  }

  private async checkAndRegister(manifest: Manifest): Promise<ReplyOf<PeerOps, 'cold.finish'>> {
    const present = (await readdir(this.receiver.folder)).sort();
    const expected = manifest.map((entry) => entry.file).sort();
    if (present.join() !== expected.join()) {
      throw new FerryError(ErrorCode.CHECKSUM_MISMATCH, `files of ${this.name} differ from the manifest: have ${present.join(', ')}, expected ${expected.join(', ')}`, 'retry the cold migration');
    }
    for (const entry of manifest) await this.receiver.seal(entry.file, entry, `${entry.file} of ${this.name}`);
    // The registered copy is one epoch ahead, and marked until its source has forgotten its own copy.
    const configFile = this.receiver.file('config.json');
    const config = vmConfigSchema.parse(JSON.parse(await readFile(configFile, 'utf8')));
    if (config.name !== this.name) {
      throw new FerryError(ErrorCode.BAD_INPUT, `the config that arrived names ${config.name}, the cold migration ${this.name}`, 'the source is not a compatible ferry-agent');
    }
    // A config from before CPU models gets the model the source loaded it with (its host's flags, which a
    // suspended guest was running with), not this host's.
    const registered: VmConfigFile = {
      ...config, cpuModel: config.cpuModel ?? this.cpuModel, epoch: this.epoch + 1, coldFrom: { migrationId: this.migrationId, sourceUrl: this.sourceUrl },
    };
    const handle = await open(configFile, 'w');
    try {
      await handle.writeFile(`${JSON.stringify(registered, null, 2)}\n`);
      await handle.sync(); // before the rename makes it the VM's config
    } finally {
      await handle.close();
    }
    await this.datastore.adopt(this.migrationId, this.name);
    return { registered: true };
  }

  /**
   * The stream closed. A begin or finish under way ends first; then, unless the VM was registered, what arrived is
   * dropped.
   */
  abandon(): Promise<void> {
    return this.receiver.abandon();
  }
}

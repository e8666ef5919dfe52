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
import { constants } from 'node:fs';
import { mkdir, open, readFile, readdir, rm, stat, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { PEER_REPLY_TIMEOUT_MS } from '../../shared/constants.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { ChunkWindow, checkChunk, sealFile, sendFileChunks } from '../../shared/file-chunks.js';
import type { PeerOps, RequestOf, ReplyOf } from '../../shared/protocol.js';
import type { VmCpuModel } from '../../shared/cpu.js';
import { vmConfigSchema, type VmConfig, type VmConfigFile } from '../datastore/config.js';
import type { Datastore } from '../datastore/datastore.js';
import type { PeerClient } from './peer-client.js';

type Manifest = RequestOf<PeerOps, 'cold.finish'>['manifest'];

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

/** Destination side: one incoming cold migration, from `cold.begin` to `cold.finish`. */
export class ColdTarget {
  readonly name: string;
  private readonly migrationId: string;
  private readonly epoch: number;
  private readonly sourceUrl: string;
  private readonly cpuModel: VmCpuModel;
  private readonly datastore: Datastore;
  private phase: 'receiving' | 'finishing' | 'registered' | 'abandoned' = 'receiving';
  /** Whether this connection made the staging folder (and so may remove it). */
  private ownsStaging = false;
  private readonly handles = new Map<string, FileHandle>();
  /** The begin or finish under way: `abandon` waits for it, so it never races a rename or a mkdir. */
  private step: Promise<unknown> = Promise.resolve();
  /** Chunk writes under way: `finish` waits for them, so nothing lands in a file after it was checked. */
  private readonly writing = new Set<Promise<void>>();

  constructor(datastore: Datastore, request: RequestOf<PeerOps, 'cold.begin'>) {
    this.datastore = datastore;
    this.name = request.name;
    this.migrationId = request.migrationId;
    this.epoch = request.epoch;
    this.sourceUrl = request.sourceUrl;
    this.cpuModel = request.cpuModel;
  }

  /** The VM's folder is in place: nothing of it is staging any more. */
  get registered(): boolean {
    return this.phase === 'registered';
  }

  /** Makes the staging folder; one per migration id, so a second stream can never share (or remove) another's. */
  begin(): Promise<void> {
    const begun = this.makeStaging();
    this.step = begun.catch(() => undefined);
    return begun;
  }

  private async makeStaging(): Promise<void> {
    const staging = this.datastore.stagingFolder(this.migrationId);
    await mkdir(path.dirname(staging), { recursive: true });
    try {
      await mkdir(staging);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new FerryError(ErrorCode.VM_STATE, `cold migration ${this.migrationId} is already under way here`, 'start a new migration (a new id)');
      }
      throw error;
    }
    this.ownsStaging = true;
  }

  async chunk({ file, offset, data, xxh64 }: RequestOf<PeerOps, 'cold.chunk'>): Promise<void> {
    if (this.phase !== 'receiving') throw new FerryError(ErrorCode.PROTOCOL, `a chunk of ${file} arrived after the cold migration of ${this.name} finished`);
    checkChunk({ offset, data, xxh64 }, file, 'the source keeps the VM; retry the cold migration');
    const write = (async () => {
      await (await this.handle(file)).write(data, 0, data.length, offset);
    })();
    this.writing.add(write);
    try {
      await write;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EFBIG') {
        throw new FerryError(ErrorCode.BAD_INPUT, `a chunk of ${file} at ${offset} is past the largest file this file system holds`, 'no VM file is that large');
      }
      throw error;
    } finally {
      this.writing.delete(write);
    }
  }

  /** One open handle per file while chunks arrive (chunks of a file may arrive in any order: writes are positional). */
  private async handle(file: string): Promise<FileHandle> {
    let handle = this.handles.get(file);
    if (!handle) {
      handle = await open(this.datastore.stagingFile(this.migrationId, file), constants.O_RDWR | constants.O_CREAT, 0o600);
      this.handles.set(file, handle);
    }
    return handle;
  }

  private async closeHandles(): Promise<void> {
    // A close that fails leaves nothing to do: the file is checked (finish) or removed (abandon) next, and either
    // notices what went wrong.
    for (const handle of this.handles.values()) await handle.close().catch(() => undefined);
    this.handles.clear();
  }

  finish(manifest: Manifest): Promise<ReplyOf<PeerOps, 'cold.finish'>> {
    if (this.phase !== 'receiving') throw new FerryError(ErrorCode.PROTOCOL, `cold.finish for ${this.name} while the migration is ${this.phase}`);
    this.phase = 'finishing';
    const finished = this.checkAndRegister(manifest);
    this.step = finished.catch(() => undefined);
    return finished;
  }

  private async checkAndRegister(manifest: Manifest): Promise<ReplyOf<PeerOps, 'cold.finish'>> {
    await Promise.allSettled([...this.writing]);
    for (const entry of manifest) await this.handle(entry.file); // empty files, and files that are all holes
    await this.closeHandles();
    const present = (await readdir(this.datastore.stagingFolder(this.migrationId))).sort();
    const expected = manifest.map((entry) => entry.file).sort();
    if (present.join() !== expected.join()) {
      throw new FerryError(ErrorCode.CHECKSUM_MISMATCH, `files of ${this.name} differ from the manifest: have ${present.join(', ')}, expected ${expected.join(', ')}`, 'retry the cold migration');
    }
    for (const entry of manifest) {
      await sealFile(this.datastore.stagingFile(this.migrationId, entry.file), entry, `${entry.file} of ${this.name}`, 'the source keeps the VM; retry the cold migration');
    }
    // The registered copy is one epoch ahead, and marked until its source has forgotten its own copy.
    const configFile = this.datastore.stagingFile(this.migrationId, 'config.json');
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
    this.phase = 'registered';
    return { registered: true };
  }

  /**
   * The stream closed. A begin or finish under way ends first; then, unless the VM was registered, what arrived is
   * dropped.
   */
  async abandon(): Promise<void> {
    await this.step;
    if (this.phase === 'registered' || this.phase === 'abandoned') return;
    this.phase = 'abandoned';
    await this.closeHandles();
    if (this.ownsStaging) await rm(this.datastore.stagingFolder(this.migrationId), { recursive: true, force: true });
  }
}

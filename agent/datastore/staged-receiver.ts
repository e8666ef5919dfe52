/**
 * Files arriving in checked chunks (shared/file-chunks.ts) into a staging folder of the datastore, until they are
 * checked and registered (moved into place by one rename) or dropped. One receiver for everything that arrives this
 * way, a cold migration's VM folder (migration/cold.ts) and an image (peer/image-target.ts), so the two keep the same
 * ordering:
 *
 *   begin ──▶ receiving ──finish──▶ finishing ──register resolved──▶ registered
 *                 │                      │
 *                 └──── abandon ─────────┴──(waits for the step under way)──▶ abandoned: the staging folder goes
 *
 * What stays true:
 * - the staging folder is made with an exclusive mkdir: one per id, so a second stream can never share (or remove)
 *   another's;
 * - `abandon` first waits for the begin or finish under way (`step`), so it never removes a folder that a finish is
 *   hashing or renaming; a finish stops early when the connection's signal aborts (sealFile checks it between
 *   chunks), so that wait is short;
 * - chunks are refused once finish began, and finish first waits for the writes under way (`writing`), so nothing
 *   lands in a file after it was checked;
 * - a file system that refuses a write (EFBIG, ENOSPC) gives a FerryError with a hint, not an internal error.
 */
import { constants } from 'node:fs';
import { mkdir, open, rm, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { checkChunk, sealFile, type FileChunk } from '../../shared/file-chunks.js';
import { formatBytes } from '../../shared/units.js';
import type { Datastore } from './datastore.js';

export type StagedPhase = 'receiving' | 'finishing' | 'registered' | 'abandoned';

/** What a receiver says in its errors. */
export interface StagedWhat {
  /** What arrives, in words: "cold migration of web1", "image base". */
  label: string;
  /** What the sender can do when a transfer is refused. */
  retryHint: string;
  /** The refusal when the staging folder of this id is already there. */
  busy: () => FerryError;
}

/**
 * A file system's refusal of a write as a FerryError: EFBIG (past the largest file it holds) and ENOSPC (full) are
 * the sender's or the host's to fix, not bugs. Anything else is returned unchanged.
 */
export function fileSystemRefusal(error: unknown, what: string, bytes?: number): unknown {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'EFBIG') {
    return new FerryError(ErrorCode.BAD_INPUT, `${what}${bytes !== undefined ? ` (${formatBytes(bytes)})` : ''} is larger than the largest file this host's file system holds`, 'no disk ferry moves is that large: check the size the sender announced', { cause: error });
  }
  if (code === 'ENOSPC') {
    return new FerryError(ErrorCode.CAPACITY, `this host's datastore filled up while ${what} arrived`, 'free space in the datastore (`ferry image rm` images no VM needs, destroy VMs), or send it to another host', { cause: error });
  }
  return error;
}

export class StagedReceiver {
  private readonly datastore: Datastore;
  /** The staging folder's name under <datastore>/staging/: a migration or transfer id (a UUID, protocol.ts). */
  readonly stagingId: string;
  private readonly what: StagedWhat;
  /** The connection's signal: a finish stops when it aborts. */
  private readonly signal: AbortSignal;
  private current: StagedPhase = 'receiving';
  /** Whether this receiver made the staging folder (and so may remove it). */
  private ownsStaging = false;
  private readonly handles = new Map<string, FileHandle>();
  /** The begin or finish under way: `abandon` waits for it, so it never races a hash, a rename or a mkdir. */
  private step: Promise<unknown> = Promise.resolve();
  /** Chunk writes under way: `finish` waits for them, so nothing lands in a file after it was checked. */
  private readonly writing = new Set<Promise<void>>();

  constructor(datastore: Datastore, stagingId: string, what: StagedWhat, signal: AbortSignal) {
    this.datastore = datastore;
    this.stagingId = stagingId;
    this.what = what;
    this.signal = signal;
  }

  get phase(): StagedPhase {
    return this.current;
  }

  /** The staging folder. */
  get folder(): string {
    return this.datastore.stagingFolder(this.stagingId);
  }

  /** A file of the staging folder; `file` passed its schema (a plain file name). */
  file(file: string): string {
    return this.datastore.stagingFile(this.stagingId, file);
  }

  /** Makes the staging folder, exclusively. */
  begin(): Promise<void> {
    const begun = this.makeStaging();
    this.step = begun.catch(() => undefined); // the caller hears the failure; abandon only waits for it
    return begun;
  }

  private async makeStaging(): Promise<void> {
    await mkdir(path.dirname(this.folder), { recursive: true });
    try {
      await mkdir(this.folder);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw this.what.busy();
      throw error;
    }
    this.ownsStaging = true;
  }

  /** Checks a chunk of `file` and writes it where it belongs (chunks may arrive in any order: writes are positional). */
  async write(file: string, chunk: FileChunk): Promise<void> {
    if (this.current !== 'receiving') {
      throw new FerryError(ErrorCode.PROTOCOL, `a chunk of ${file} arrived while the ${this.what.label} is ${this.current}`, 'send every chunk before the finish, and none after');
    }
    checkChunk(chunk, `${file} of the ${this.what.label}`, this.what.retryHint);
    const write = (async () => {
      await (await this.handle(file)).write(chunk.data, 0, chunk.data.length, chunk.offset);
    })();
    this.writing.add(write);
    try {
      await write;
    } catch (error) {
      throw fileSystemRefusal(error, `a chunk of ${file} at ${chunk.offset} of the ${this.what.label}`);
    } finally {
      this.writing.delete(write);
    }
  }

  /** One open handle per file while chunks arrive. */
  private async handle(file: string): Promise<FileHandle> {
    let handle = this.handles.get(file);
    if (!handle) {
      handle = await open(this.file(file), constants.O_RDWR | constants.O_CREAT, 0o600);
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

  /**
   * Ends the stream: waits for the writes under way, makes every file of `files` (empty files, and files that are
   * all holes, got no chunk), closes them, and runs `register`, which checks them (`seal`) and moves the folder into
   * place. The receiver is registered once `register` resolves.
   */
  finish<T>(files: readonly string[], register: () => Promise<T>): Promise<T> {
    if (this.current !== 'receiving') {
      throw new FerryError(ErrorCode.PROTOCOL, `a second finish of the ${this.what.label}, while it is ${this.current}`, 'finish a transfer once');
    }
    this.current = 'finishing';
    const finished = (async () => {
      await Promise.allSettled([...this.writing]);
      for (const file of files) await this.handle(file);
      await this.closeHandles();
      this.signal.throwIfAborted();
      const result = await register();
      this.current = 'registered';
      return result;
    })();
    this.step = finished.catch(() => undefined); // the caller hears the failure; abandon only waits for it
    return finished;
  }

  /**
   * sealFile for a staged file: its full size, synced, its whole-file digest checked; stops when the connection
   * closes; a full or refusing file system said as such.
   */
  async seal(file: string, expected: { bytes: number; xxh64: string }, what: string): Promise<void> {
    try {
      await sealFile(this.file(file), expected, what, this.what.retryHint, this.signal);
    } catch (error) {
      throw fileSystemRefusal(error, what, expected.bytes);
    }
  }

  /**
   * The stream closed or was refused. A begin or finish under way ends first; then, unless what arrived was
   * registered, it is dropped. Safe to call more than once.
   */
  async abandon(): Promise<void> {
    await this.step;
    if (this.current === 'registered' || this.current === 'abandoned') return;
    this.current = 'abandoned';
    await this.closeHandles();
    if (this.ownsStaging) await rm(this.folder, { recursive: true, force: true });
  }
}

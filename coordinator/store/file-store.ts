/**
 * The file store: the cluster file, for one operator (or a few sharing one machine's file system). Everything it
 * shares is in the cluster file or beside it:
 *
 * - hosts, network pool, tokenFile, and the host flags and recent moves (`hostFlags`, `moves`): in the cluster
 *   file, each change a read-modify-write under the `update` lock (`ferry.cluster.json.update.lock`);
 * - `withLock(purpose)`: `ferry.cluster.json.<purpose>.lock`, as before (coordinator/cluster-lock.ts);
 * - `lockVm`: `ferry.cluster.json.vm-<name>.lock`, with `...vm-<name>.holder` naming its holder and operation;
 * - `reserveAddress`: `ferry.cluster.json.address-<ip>.lock` (provision also holds its lock from survey to create,
 *   so with one cluster file the reservation only matters to other code that hands out addresses);
 * - `campaign`: `ferry.cluster.json.election-<name>.lock`, held until resign.
 *
 * Every lock is a proper-lockfile folder whose holder refreshes it; one left by a ferry that died goes stale after
 * `staleMs` (10 s) and is taken over, or at once when that ferry ran on this machine (its pid is gone).
 */
import { readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import lockfile from 'proper-lockfile';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { loadCluster, saveCluster, type Cluster } from '../cluster.js';
import { takeLock, withClusterLock, type HeldLock } from '../cluster-lock.js';
import { ownerName, type ClusterStore, type HostFlags, type Leadership, type MoveRecord, type VmLock } from './store.js';

/** Moves older than this, or beyond this many, are dropped from the cluster file as new ones are recorded. */
const KEEP_MOVES_MS = 7 * 24 * 3600_000;
const KEEP_MOVES = 1000;
const CAMPAIGN_RETRY_MS = 200;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The cluster as the store hands it out: without the flags and moves the file also keeps. */
function clusterOnly(stored: Cluster): Cluster {
  const { hostFlags: _flags, moves: _moves, ...cluster } = stored;
  return cluster;
}

export class FileStore implements ClusterStore {
  readonly kind = 'file' as const;
  readonly location: string;
  readonly localFile: string;
  private readonly staleMs: number;

  readonly file: string;

  constructor(file: string, options: { staleMs?: number } = {}) {
    this.file = file;
    this.location = file;
    this.localFile = file;
    this.staleMs = options.staleMs ?? 10_000;
  }

  async load(): Promise<Cluster> {
    return clusterOnly(await loadCluster(this.file));
  }

  /** Changes the whole stored file under the update lock. */
  private async change(edit: (stored: Cluster) => Cluster): Promise<Cluster> {
    return withClusterLock(this.file, 'update', async () => {
      const edited = edit(await loadCluster(this.file));
      await saveCluster(this.file, edited);
      return edited;
    }, { staleMs: this.staleMs });
  }

  async update(change: (cluster: Cluster) => Cluster): Promise<Cluster> {
    const stored = await this.change((current) => {
      const changed = clusterOnly(change(clusterOnly(current)));
      return { ...changed, ...(current.hostFlags ? { hostFlags: current.hostFlags } : {}), ...(current.moves ? { moves: current.moves } : {}) };
    });
    return clusterOnly(stored);
  }

  withLock<T>(purpose: string, action: () => Promise<T>, options: { waitMs?: number } = {}): Promise<T> {
    return withClusterLock(this.file, purpose, action, { staleMs: this.staleMs, ...(options.waitMs !== undefined ? { waitMs: options.waitMs } : {}) });
  }

  private lockPath(name: string): string {
    return `${this.file}.${name}.lock`;
  }

  /**
   * Takes lock `name` at once, writing who holds it beside it (`.holder`: the holder's fields, its pid, machine and
   * the lock folder's inode); undefined when another holds it. A holder that died on this machine (kill -9, a
   * second Ctrl-C) is not waited for until its lock goes stale: its pid is gone, so the lock is taken over now.
   */
  private async tryLock(name: string, holder: object, onCompromised?: () => void): Promise<HeldLock | undefined> {
    const lockPath = this.lockPath(name);
    const holderFile = `${this.file}.${name}.holder`;
    const attempt = (): Promise<HeldLock | undefined> => takeLock(lockPath, { waitMs: 0, staleMs: this.staleMs, ...(onCompromised ? { onCompromised } : {}) }).catch((error: unknown) => {
      if ((error as NodeJS.ErrnoException).code === 'ELOCKED') return undefined;
      throw new FerryError(ErrorCode.IO, `cannot take the lock ${lockPath}: ${(error as Error).message}`, 'check that the cluster file\'s folder is writable');
    });
    let held = await attempt();
    if (!held && await this.heldByTheDead(lockPath, holderFile)) held = await attempt();
    if (!held) return undefined;
    const ino = await stat(lockPath).then((found) => found.ino, () => undefined);
    await writeFile(holderFile, `${JSON.stringify({ ...holder, pid: process.pid, machine: os.hostname(), ino })}\n`).catch(() => undefined);
    const taken = held;
    return {
      get compromised() {
        return taken.compromised;
      },
      release: async () => {
        await rm(holderFile, { force: true }).catch(() => undefined);
        await taken.release();
      },
    };
  }

  /**
   * Whether lock folder `lockPath` is held by a process of this machine that no longer runs: its holder file names
   * this machine, a pid that is gone, and this very folder (its inode: not a folder made since by a live holder that
   * has yet to write its own holder file). If so, the folder's mtime is set far back, so that proper-lockfile takes
   * it over as stale, with its usual care.
   */
  private async heldByTheDead(lockPath: string, holderFile: string): Promise<boolean> {
    const holder = await readFile(holderFile, 'utf8').then((text) => JSON.parse(text) as { pid?: unknown; machine?: unknown; ino?: unknown }, () => undefined);
    if (!holder || holder.machine !== os.hostname() || typeof holder.pid !== 'number' || holder.pid === process.pid || processRuns(holder.pid)) return false;
    const found = await stat(lockPath).catch(() => undefined);
    if (!found || found.ino !== holder.ino) return false;
    await utimes(lockPath, new Date(0), new Date(0)).catch(() => undefined);
    return true;
  }

  async reserveAddress(ip: string, owner: string): Promise<VmLock | undefined> {
    const held = await this.tryLock(`address-${ip}`, { owner, since: new Date().toISOString() });
    return held ? { release: () => held.release() } : undefined;
  }

  async reservedAddresses(): Promise<Set<string>> {
    const prefix = `${path.basename(this.file)}.address-`;
    const names = await readdir(path.dirname(this.file)).catch(() => [] as string[]);
    const reserved = new Set<string>();
    await Promise.all(names.filter((name) => name.startsWith(prefix) && name.endsWith('.lock')).map(async (name) => {
      const lockPath = path.join(path.dirname(this.file), name);
      // A reservation left by a ferry that died no longer counts once stale.
      const live = await lockfile.check(lockPath.replace(/\.lock$/, ''), { lockfilePath: lockPath, realpath: false, stale: this.staleMs }).catch(() => false);
      if (live && !(await this.heldByTheDead(lockPath, lockPath.replace(/\.lock$/, '.holder')))) reserved.add(name.slice(prefix.length, -'.lock'.length));
    }));
    return reserved;
  }

  async lockVm(vm: string, operation: string, owner = ownerName()): Promise<VmLock> {
    const held = await this.tryLock(`vm-${vm}`, { owner, operation, since: new Date().toISOString() });
    if (held) return { release: () => held.release() };
    const holder = await readFile(`${this.file}.vm-${vm}.holder`, 'utf8').then((text) => JSON.parse(text) as { owner?: string; operation?: string; since?: string }).catch(() => undefined);
    throw vmBusy(vm, holder, this.lockPath(`vm-${vm}`), this.staleMs);
  }

  async hostFlags(): Promise<Record<string, HostFlags>> {
    return (await loadCluster(this.file)).hostFlags ?? {};
  }

  async setHostFlags(host: string, flags: HostFlags): Promise<void> {
    await this.change((stored) => {
      const { [host]: old, ...others } = stored.hostFlags ?? {};
      const merged = mergeFlags(old, flags);
      return { ...stored, hostFlags: Object.keys(merged).length > 0 ? { ...others, [host]: merged } : others };
    });
  }

  async recordMove(move: MoveRecord): Promise<void> {
    await this.change((stored) => {
      const oldest = Date.now() - KEEP_MOVES_MS;
      const moves = [...(stored.moves ?? []), move].filter((kept) => Date.parse(kept.at) >= oldest).slice(-KEEP_MOVES);
      return { ...stored, moves };
    });
  }

  async recentMoves(sinceMs: number): Promise<MoveRecord[]> {
    const since = Date.now() - sinceMs;
    return ((await loadCluster(this.file)).moves ?? []).filter((move) => Date.parse(move.at) >= since);
  }

  async campaign(election: string, id: string, options: { signal?: AbortSignal } = {}): Promise<Leadership> {
    const name = `election-${election}`;
    let onLost!: () => void;
    const lost = new Promise<void>((resolve) => {
      onLost = resolve;
    });
    for (;;) {
      if (options.signal?.aborted) throw campaignAborted(election, options.signal);
      const held = await this.tryLock(name, { id, since: new Date().toISOString() }, () => onLost());
      if (held) return { lost, resign: () => held.release() };
      await sleep(CAMPAIGN_RETRY_MS);
    }
  }

  async close(): Promise<void> {
    // Nothing held open: each lock is released by its holder.
  }
}

/** `flags` over `old`: a flag named replaces the old one, named as undefined clears it; the result has no undefined. */
export function mergeFlags(old: HostFlags | undefined, flags: HostFlags): HostFlags {
  const merged: HostFlags = { ...old, ...flags };
  if (merged.maintenance === undefined) delete merged.maintenance;
  if (merged.degraded === undefined) delete merged.degraded;
  return merged;
}

/** Whether process `pid` of this machine runs (one we may not signal runs too). */
function processRuns(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function campaignAborted(election: string, signal: AbortSignal): FerryError {
  return signal.reason instanceof FerryError ? signal.reason : new FerryError(ErrorCode.CANCELLED, `stopped waiting to lead ${election}`);
}

/** FERRY_ERR_VM_BUSY, naming who holds `vm` and for what, as far as known. */
export function vmBusy(vm: string, holder: { owner?: string; operation?: string; since?: string } | undefined, where: string, expiresMs: number): FerryError {
  const who = holder?.owner ? `${holder.owner}` : 'another ferry';
  const what = holder?.operation ? `a ${holder.operation}` : 'an operation';
  return new FerryError(
    ErrorCode.VM_BUSY,
    `${vm} is busy: ${who} holds it for ${what}${holder?.since ? ` since ${holder.since}` : ''} (${where})`,
    `wait for it to finish and run this again; if that ferry died, its hold ends by itself within ${Math.ceil(expiresMs / 1000)} s`,
  );
}

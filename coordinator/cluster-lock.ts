/**
 * A lock beside the cluster file, held while a command decides from a survey of the hosts and then acts on it
 * (`ferry provision` picks a free address, then creates the VM): two such commands at once would both see the same
 * address free.
 *
 * proper-lockfile does the locking: an atomic `mkdir` of the lock folder, whose mtime the holder refreshes every
 * `staleMs / 2`, so a lock left by a ferry that died (kill -9, a power cut) goes stale after `staleMs` and the next
 * command takes it over, while a lock whose holder is alive, however slow its hosts, is never taken from it.
 */
import lockfile from 'proper-lockfile';
import { ErrorCode, FerryError } from '../shared/errors.js';

export interface ClusterLockOptions {
  /** How long to wait for another holder before giving up. */
  waitMs?: number;
  /** A lock not refreshed for this long was left by a ferry that died. proper-lockfile's floor is 2 s. */
  staleMs?: number;
  /** Called if the lock is lost while held (its folder removed or taken over). */
  onCompromised?: (error: Error) => void;
}

const RETRY_EVERY_MS = 100;

export function clusterLockPath(clusterFile: string, purpose: string): string {
  return `${clusterFile}.${purpose}.lock`;
}

/** A lock held: `compromised` says why it was lost meanwhile (its folder taken over or removed), if it was. */
export interface HeldLock {
  release(): Promise<void>;
  readonly compromised: Error | undefined;
}

/**
 * Takes the lock folder `lockPath` (proper-lockfile), retrying every 100 ms for `waitMs`; its errors pass through
 * (`ELOCKED` when another holds it). Each lock has a target of its own (`lockPath` without `.lock`), since
 * proper-lockfile keeps one lock per target in a process.
 */
export async function takeLock(lockPath: string, options: ClusterLockOptions = {}): Promise<HeldLock> {
  const waitMs = options.waitMs ?? 10_000;
  let compromised: Error | undefined;
  const release = await lockfile.lock(lockPath.replace(/\.lock$/, ''), {
    lockfilePath: lockPath,
    // The target need not exist (an empty cluster has no file), and the lock must not need it to.
    realpath: false,
    stale: options.staleMs ?? 10_000,
    retries: { retries: Math.ceil(waitMs / RETRY_EVERY_MS), factor: 1, minTimeout: RETRY_EVERY_MS, maxTimeout: RETRY_EVERY_MS },
    // The default throws from a timer and would kill the process mid-action; the holder is told instead.
    onCompromised: (error) => {
      compromised = error;
      options.onCompromised?.(error);
    },
  });
  return {
    get compromised() {
      return compromised;
    },
    release: async () => {
      // A compromised lock is no longer ours to remove; proper-lockfile has already let go of it.
      if (compromised) return;
      await release().catch((error: unknown) => {
        compromised ??= error as Error;
      });
    },
  };
}

/** Runs `action` while holding the `purpose` lock of the cluster file, so no other ferry runs one at the same time. */
export async function withClusterLock<T>(clusterFile: string, purpose: string, action: () => Promise<T>, options: ClusterLockOptions = {}): Promise<T> {
  const lockPath = clusterLockPath(clusterFile, purpose);
  const waitMs = options.waitMs ?? 10_000;
  let held: HeldLock;
  try {
    held = await takeLock(lockPath, options);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ELOCKED') {
      throw new FerryError(
        ErrorCode.VM_STATE,
        `another ferry ${purpose} holds ${lockPath} and did not finish within ${(waitMs / 1000).toFixed(0)} s`,
        `wait for it to finish and run this again; a lock left by a ferry that died is taken over by itself after ${((options.staleMs ?? 10_000) / 1000).toFixed(0)} s`,
      );
    }
    throw new FerryError(ErrorCode.IO, `cannot take the ${purpose} lock ${lockPath}: ${(error as Error).message}`, 'check that the cluster file\'s folder is writable');
  }
  let result: T;
  try {
    result = await action();
  } finally {
    await held.release();
  }
  if (held.compromised) {
    throw new FerryError(
      ErrorCode.IO,
      `the ${purpose} lock ${lockPath} was lost while this ${purpose} ran (${held.compromised.message}): another ${purpose} may have run at the same time`,
      'check with `ferry vm list --json` that no two VMs share an address',
    );
  }
  return result;
}

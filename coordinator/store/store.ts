/**
 * The cluster store: what coordinators share about the cluster. The hosts, the address pool and the token file's
 * path as before, and what several operators (or several coordinators of one) must agree on: host flags
 * (maintenance, degraded), the moves made lately, addresses being handed out, which VM an operation holds, and
 * who leads an election (`balance --watch`).
 *
 * Two kinds, chosen by `--cluster`, else $FERRY_CLUSTER, else ./ferry.cluster.json:
 *
 * - a file (the default, one operator): the cluster file, with locks beside it (coordinator/store/file-store.ts);
 * - etcd (`etcd://HOST:PORT[,HOST:PORT]`, a fleet): keys under /ferry/, locks bound to the coordinator's lease, so
 *   a coordinator that is killed leaves nothing locked once its lease expires (coordinator/store/etcd-store.ts).
 */
import os from 'node:os';
import path from 'node:path';
import type { Cluster } from '../cluster.js';

export interface HostFlags {
  /** The host is in maintenance: it takes no new VMs and no incoming migrations. */
  maintenance?: { since: string; by?: string } | undefined;
  /** The host reported itself, or was reported, unhealthy: no new VMs; `balance --watch` empties it. */
  degraded?: { reason: string; since: string } | undefined;
}

/** A move made by a coordinator: what balancing reads to leave a VM moved lately alone (no ping-pong). */
export interface MoveRecord {
  vm: string;
  from: string;
  to: string;
  /** ISO 8601. */
  at: string;
  by: string;
}

export interface Leadership {
  /** Settles when leadership is lost without `resign()` (the lease expired, the store went away). */
  readonly lost: Promise<void>;
  resign(): Promise<void>;
}

export interface VmLock {
  release(): Promise<void>;
}

export interface ClusterStore {
  /** The cluster file's path, or etcd://host:port, for messages. */
  readonly location: string;
  readonly kind: 'file' | 'etcd';
  /**
   * A file beside which the coordinator's own files are looked up (templates, a relative `tokenFile`): the cluster
   * file itself, or for etcd ./ferry.cluster.json (which need not exist).
   */
  readonly localFile: string;
  /** The hosts, the network pool, the token file's path. */
  load(): Promise<Cluster>;
  /** Atomic read-modify-write: `change` may run more than once (etcd retries it on a conflict). */
  update(change: (cluster: Cluster) => Cluster): Promise<Cluster>;
  /** Runs `action` while no other coordinator runs one for `purpose`; waits up to `waitMs` (10 s) for it. */
  withLock<T>(purpose: string, action: () => Promise<T>, options?: { waitMs?: number }): Promise<T>;
  /** Reserves an address while it is being given to a VM; undefined when another coordinator holds it. */
  reserveAddress(ip: string, owner: string): Promise<VmLock | undefined>;
  reservedAddresses(): Promise<Set<string>>;
  /** One operation per VM across coordinators: refused at once with FERRY_ERR_VM_BUSY naming the holder. */
  lockVm(vm: string, operation: string, owner?: string): Promise<VmLock>;
  hostFlags(): Promise<Record<string, HostFlags>>;
  /** Each flag named replaces the host's (named as undefined: clears it); flags not named are kept. */
  setHostFlags(host: string, flags: HostFlags): Promise<void>;
  recordMove(move: MoveRecord): Promise<void>;
  /** The moves made at or after `Date.now() - sinceMs`, oldest first. */
  recentMoves(sinceMs: number): Promise<MoveRecord[]>;
  /** Resolves once `id` leads `election`; at most one leader per election at any time. Abort: rejects, not leading. */
  campaign(election: string, id: string, options?: { signal?: AbortSignal }): Promise<Leadership>;
  close(): Promise<void>;
}

/** Who this coordinator is, in messages about what it holds: user@host, pid. */
export function ownerName(): string {
  let user = process.env.USER ?? '';
  try {
    user ||= os.userInfo().username;
  } catch {
    // no passwd entry
  }
  return `${user || 'ferry'}@${os.hostname()} pid ${process.pid}`;
}

/** `etcd://HOST:PORT[,HOST:PORT]` as http:// endpoints; undefined for anything else (a file path). */
export function etcdEndpoints(spec: string): string[] | undefined {
  if (!spec.startsWith('etcd://')) return undefined;
  return spec.slice('etcd://'.length).replace(/\/+$/, '').split(',').filter((host) => host.length > 0).map((host) => `http://${host}`);
}

const open = new Set<ClusterStore>();

/**
 * The store `spec` names (`--cluster`), else $FERRY_CLUSTER, else ./ferry.cluster.json. An etcd store is checked to
 * answer (a few seconds at most) before this returns.
 */
export async function openStore(spec: string | undefined): Promise<ClusterStore> {
  const chosen = spec ?? process.env.FERRY_CLUSTER ?? 'ferry.cluster.json';
  const endpoints = etcdEndpoints(chosen);
  let store: ClusterStore;
  if (endpoints) {
    const { EtcdStore } = await import('./etcd-store.js');
    store = await EtcdStore.connect(chosen, endpoints);
  } else {
    const { FileStore } = await import('./file-store.js');
    store = new FileStore(path.resolve(chosen));
  }
  open.add(store);
  const close = store.close.bind(store);
  store.close = async () => {
    open.delete(store);
    await close();
  };
  return store;
}

/** Closes every store `openStore` opened and nobody closed (the CLI, as it exits): an etcd store revokes its lease. */
export async function closeOpenStores(): Promise<void> {
  await Promise.all([...open].map((store) => store.close().catch(() => undefined)));
}

/** Runs `action` holding `vm` for `operation` in `store` (none: no lock), released however it ends. */
export async function withVmLock<T>(store: ClusterStore | undefined, vm: string, operation: string, action: () => Promise<T>): Promise<T> {
  const lock = await store?.lockVm(vm, operation);
  try {
    return await action();
  } finally {
    await lock?.release().catch(() => undefined);
  }
}

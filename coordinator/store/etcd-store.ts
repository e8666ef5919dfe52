/**
 * The etcd store: the cluster shared by several coordinators through etcd (`--cluster etcd://HOST:PORT`), with the
 * npm client `etcd3`. Keys, all under /ferry/:
 *
 *   hosts/<name>            a host entry (JSON: name, url, migrationUrl?)
 *   network                 the address pool (JSON), when there is one
 *   token-file              the path of the cluster's token file, when there is one
 *   config-version          bumped by every `update`, which commits only if no other update came between
 *   host-flags/<host>       HostFlags (JSON)
 *   moves/<at>/<vm>/<id>    a MoveRecord (JSON), in time order
 *   addresses/<ip>          an address being handed out: {owner, since}, bound to the holder's lease
 *   vm-locks/<vm>           one operation on a VM: {owner, operation, since}, bound to the holder's lease
 *   locks/<purpose>         withLock (etcd3's Lock: a key on a lease of its own)
 *   election/<name>/<lease> campaign (etcd3's Election: the oldest key leads)
 *
 * Each coordinator process has one lease (TTL 10 s, $FERRY_ETCD_LEASE_TTL), kept alive while it runs and revoked by
 * `close()`; a coordinator that is killed leaves its reservations and VM locks to expire with its lease. Lock and
 * Election take leases of their own with the same TTL.
 */
import { randomUUID } from 'node:crypto';
import { Etcd3, EtcdLockFailedError, Range, type Lease, type Namespace } from 'etcd3';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { addHost, type Cluster, type HostEntry } from '../cluster.js';
import { campaignAborted, mergeFlags, vmBusy } from './file-store.js';
import { ownerName, type ClusterStore, type HostFlags, type Leadership, type MoveRecord, type VmLock } from './store.js';

/** How long a call to etcd may take, and how long connecting may: a stopped etcd is reported in seconds. */
const CALL_TIMEOUT_MS = 5000;
const CONNECT_TIMEOUT_MS = 3000;
const LOCK_RETRY_MS = 100;
const CAMPAIGN_RETRY_MS = 500;
const KEEP_MOVES_MS = 7 * 24 * 3600_000;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export function leaseTtlSeconds(): number {
  const text = process.env.FERRY_ETCD_LEASE_TTL;
  if (text === undefined || text === '') return 10;
  const seconds = Number(text);
  if (!Number.isInteger(seconds) || seconds < 2 || seconds > 3600) {
    throw new FerryError(ErrorCode.BAD_INPUT, `FERRY_ETCD_LEASE_TTL=${text} is not a lease TTL`, 'give whole seconds, 2 to 3600 (default 10)');
  }
  return seconds;
}

export class EtcdStore implements ClusterStore {
  readonly kind = 'etcd' as const;
  readonly localFile: string;
  private readonly ns: Namespace;
  private lease: Lease | undefined;
  private leaseId: Promise<string> | undefined;
  private leaseLost: Error | undefined;
  private closed = false;
  /** Elections this coordinator is in: resigned by `close()`, so the next leader need not wait for a lease. */
  private readonly campaigns = new Set<{ resign(): Promise<void> }>();
  readonly ttl: number;

  readonly location: string;
  private readonly client: Etcd3;

  private constructor(location: string, client: Etcd3, localFile: string) {
    this.location = location;
    this.client = client;
    this.ns = client.namespace('/ferry/');
    this.ttl = leaseTtlSeconds();
    this.localFile = localFile;
  }

  /** Connects and checks that etcd answers, within a few seconds. */
  static async connect(location: string, endpoints: string[], localFile = `${process.cwd()}/ferry.cluster.json`): Promise<EtcdStore> {
    const client = new Etcd3({
      hosts: endpoints,
      dialTimeout: CONNECT_TIMEOUT_MS,
      defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + CALL_TIMEOUT_MS }),
    });
    const store = new EtcdStore(location, client, localFile);
    try {
      await store.call('reach', () => store.ns.get('config-version').string(), CONNECT_TIMEOUT_MS + 1000);
    } catch (error) {
      client.close();
      throw error;
    }
    return store;
  }

  /** Runs one etcd call, with its failures as FerryErrors: unreachable (with a hint) or internal. */
  private async call<T>(what: string, action: () => Promise<T>, timeoutMs = CALL_TIMEOUT_MS + 1000): Promise<T> {
    if (this.closed) throw new FerryError(ErrorCode.INTERNAL, `the cluster store ${this.location} is closed`);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new FerryError(ErrorCode.UNREACHABLE, `etcd at ${this.location} did not answer within ${(timeoutMs / 1000).toFixed(0)} s (${what})`, `is etcd running at ${this.location}? (etcdctl --endpoints ${this.endpointsText()} endpoint health)`)), timeoutMs);
    });
    try {
      return await Promise.race([action(), timeout]);
    } catch (error) {
      if (error instanceof FerryError) throw error;
      const message = (error as Error).message ?? String(error);
      const name = (error as Error).name ?? '';
      if (/Unavailable|DeadlineExceeded|ClientClosed|Connect|ECONNREFUSED|No connection/i.test(`${name} ${message}`)) {
        throw new FerryError(ErrorCode.UNREACHABLE, `cannot reach etcd at ${this.location} (${what}): ${message}`, `is etcd running at ${this.location}? (etcdctl --endpoints ${this.endpointsText()} endpoint health)`);
      }
      throw new FerryError(ErrorCode.INTERNAL, `etcd at ${this.location} failed (${what}): ${message}`, undefined, { cause: error });
    } finally {
      clearTimeout(timer);
    }
  }

  private endpointsText(): string {
    return this.location.slice('etcd://'.length);
  }

  /** This coordinator's lease, granted on first use and kept alive until `close()`. */
  private async ourLease(): Promise<string> {
    if (this.leaseLost) {
      throw new FerryError(ErrorCode.UNREACHABLE, `this ferry's lease on etcd at ${this.location} was lost (${this.leaseLost.message})`, `is etcd running at ${this.location}? Run the command again`);
    }
    if (!this.leaseId) {
      const lease = this.ns.lease(this.ttl);
      this.lease = lease;
      lease.on('lost', (error) => {
        this.leaseLost = error;
      });
      this.leaseId = this.call('grant a lease', () => lease.grant());
      this.leaseId.catch(() => {
        this.leaseId = undefined;
      });
    }
    return this.leaseId;
  }

  async load(): Promise<Cluster> {
    return (await this.read()).cluster;
  }

  private async read(): Promise<{ cluster: Cluster; version: string }> {
    return this.call('read the cluster', async () => {
      const [hosts, network, tokenFile, version] = await Promise.all([
        this.ns.getAll().prefix('hosts/').strings(),
        this.ns.get('network').string(),
        this.ns.get('token-file').string(),
        this.ns.get('config-version').exec(),
      ]);
      const entries = Object.values(hosts).map((text) => JSON.parse(text) as HostEntry);
      // In the order they were added (their keys sort by name), as the cluster file keeps them.
      const order = await this.ns.getAll().prefix('hosts/').sort('Create', 'Ascend').keys();
      const byName = new Map(entries.map((entry) => [entry.name, entry]));
      const ordered = order.map((key) => byName.get(key.slice('hosts/'.length))).filter((entry): entry is HostEntry => entry !== undefined);
      const cluster: Cluster = {
        hosts: ordered,
        ...(network ? { network: JSON.parse(network) as NonNullable<Cluster['network']> } : {}),
        ...(tokenFile ? { tokenFile } : {}),
      };
      return { cluster, version: version.kvs[0]?.mod_revision ?? '0' };
    });
  }

  async update(change: (cluster: Cluster) => Cluster): Promise<Cluster> {
    for (let attempt = 0; ; attempt++) {
      const { cluster, version } = await this.read();
      const changed = change(cluster);
      // Rebuilt through addHost, which checks each entry, and without tokens, which are never stored.
      let checked: Cluster = { ...changed, hosts: [] };
      for (const { token: _token, ...host } of changed.hosts) checked = addHost(checked, host);
      const ops = [
        ...cluster.hosts.filter((host) => !checked.hosts.some((kept) => kept.name === host.name)).map((host) => this.ns.delete().key(`hosts/${host.name}`)),
        ...checked.hosts.filter((host) => JSON.stringify(host) !== JSON.stringify(cluster.hosts.find((old) => old.name === host.name))).map((host) => this.ns.put(`hosts/${host.name}`).value(JSON.stringify(host))),
        checked.network ? this.ns.put('network').value(JSON.stringify(checked.network)) : this.ns.delete().key('network'),
        checked.tokenFile ? this.ns.put('token-file').value(checked.tokenFile) : this.ns.delete().key('token-file'),
        this.ns.put('config-version').value(randomUUID()),
      ];
      const committed = await this.call('update the cluster', () => this.ns.if('config-version', 'Mod', '==', version).then(...ops).commit());
      if (committed.succeeded) return checked;
      if (attempt >= 20) throw new FerryError(ErrorCode.TIMEOUT, `the cluster in ${this.location} kept changing under this update`, 'run it again');
      await sleep(20 + Math.random() * 50);
    }
  }

  async withLock<T>(purpose: string, action: () => Promise<T>, options: { waitMs?: number } = {}): Promise<T> {
    const waitMs = options.waitMs ?? 10_000;
    // The wait is for one holder: each time the lock changes hands (its key's revision moves) it starts again, so that
    // a crowd of provisions, each quick, never times out a waiter that is only behind the others.
    let deadline = Date.now() + waitMs;
    let holder: string | undefined;
    const key = `locks/${purpose}`;
    const lock = this.ns.lock(key).ttl(this.ttl);
    for (let attempt = 0; ; attempt++) {
      // While another holds it, only look (a read); each try to take it is three writes to etcd's log (a lease,
      // the key, the lease revoked), which a crowd of waiters would slow everyone with.
      let free = attempt === 0;
      if (!free) {
        const held = await this.call(`look at the ${purpose} lock`, () => this.ns.get(key).exec());
        const revision = held.kvs[0]?.mod_revision;
        free = revision === undefined;
        if (revision !== undefined && revision !== holder) {
          if (holder !== undefined) deadline = Date.now() + waitMs;
          holder = revision;
        }
      }
      try {
        if (!free) throw new EtcdLockFailedError(`${key} is held`);
        await this.call(`take the ${purpose} lock`, () => lock.acquire());
        break;
      } catch (error) {
        if (!(error instanceof EtcdLockFailedError) && !((error as FerryError).cause instanceof EtcdLockFailedError)) throw error;
        if (Date.now() >= deadline) {
          throw new FerryError(
            ErrorCode.VM_STATE,
            `another ferry ${purpose} holds the ${purpose} lock in ${this.location} and did not finish within ${(waitMs / 1000).toFixed(0)} s`,
            `wait for it to finish and run this again; a lock left by a ferry that died ends with its lease, within ${this.ttl} s`,
          );
        }
        await sleep(LOCK_RETRY_MS * (0.5 + Math.random()));
      }
    }
    try {
      return await action();
    } finally {
      await lock.release().catch(() => undefined);
    }
  }

  /** Puts `key` with `value` on this coordinator's lease if no one has it; a VmLock that deletes it, or undefined. */
  private async putIfAbsent(key: string, value: object): Promise<VmLock | undefined> {
    const leaseId = await this.ourLease();
    const text = JSON.stringify({ ...value, token: randomUUID() });
    const result = await this.call(`take ${key}`, () => this.ns.if(key, 'Create', '==', 0).then(this.ns.put(key).value(text).lease(leaseId)).commit());
    if (!result.succeeded) return undefined;
    return {
      release: async () => {
        if (this.closed) return; // the lease's revocation has released it
        await this.call(`release ${key}`, () => this.ns.if(key, 'Value', '==', text).then(this.ns.delete().key(key)).commit());
      },
    };
  }

  reserveAddress(ip: string, owner: string): Promise<VmLock | undefined> {
    return this.putIfAbsent(`addresses/${ip}`, { owner, since: new Date().toISOString() });
  }

  async reservedAddresses(): Promise<Set<string>> {
    const keys = await this.call('read the address reservations', () => this.ns.getAll().prefix('addresses/').keys());
    return new Set(keys.map((key) => key.slice('addresses/'.length)));
  }

  async lockVm(vm: string, operation: string, owner = ownerName()): Promise<VmLock> {
    const key = `vm-locks/${vm}`;
    const lock = await this.putIfAbsent(key, { owner, operation, since: new Date().toISOString() });
    if (lock) return lock;
    const holder = await this.call(`read ${key}`, () => this.ns.get(key).string())
      .then((text) => (text ? JSON.parse(text) as { owner?: string; operation?: string; since?: string } : undefined))
      .catch(() => undefined);
    throw vmBusy(vm, holder, `${this.location}/ferry/${key}`, this.ttl * 1000);
  }

  async hostFlags(): Promise<Record<string, HostFlags>> {
    const all = await this.call('read the host flags', () => this.ns.getAll().prefix('host-flags/').strings());
    return Object.fromEntries(Object.entries(all).map(([key, text]) => [key.slice('host-flags/'.length), JSON.parse(text) as HostFlags]));
  }

  async setHostFlags(host: string, flags: HostFlags): Promise<void> {
    const key = `host-flags/${host}`;
    for (let attempt = 0; ; attempt++) {
      const committed = await this.call(`set ${key}`, async () => {
        const found = await this.ns.get(key).exec();
        const current = found.kvs[0];
        const merged = mergeFlags(current ? JSON.parse(current.value.toString()) as HostFlags : undefined, flags);
        const write = Object.keys(merged).length > 0 ? this.ns.put(key).value(JSON.stringify(merged)) : this.ns.delete().key(key);
        // Only over what was read: two coordinators setting different flags of one host at once both count.
        return (await this.ns.if(key, 'Mod', '==', current?.mod_revision ?? '0').then(write).commit()).succeeded;
      });
      if (committed) return;
      if (attempt >= 20) throw new FerryError(ErrorCode.TIMEOUT, `${host}'s flags in ${this.location} kept changing under this change`, 'run it again');
      await sleep(10 + Math.random() * 40);
    }
  }

  async recordMove(move: MoveRecord): Promise<void> {
    await this.call('record a move', async () => {
      await this.ns.put(`moves/${move.at}/${move.vm}/${randomUUID().slice(0, 8)}`).value(JSON.stringify(move)).exec();
      // Old moves go as new ones come: everything before a week ago.
      await this.ns.delete().range(new Range('moves/', `moves/${new Date(Date.now() - KEEP_MOVES_MS).toISOString()}`)).exec();
    });
  }

  async recentMoves(sinceMs: number): Promise<MoveRecord[]> {
    const since = new Date(Date.now() - sinceMs).toISOString();
    // Keys sort by time: from `since` to the end of the moves/ prefix ('0' follows '/').
    const found = await this.call('read the moves', () => this.ns.getAll().inRange(new Range(`moves/${since}`, 'moves0')).sort('Key', 'Ascend').strings());
    return Object.values(found).map((text) => JSON.parse(text) as MoveRecord).filter((move) => Date.parse(move.at) >= Date.parse(since));
  }

  async campaign(election: string, id: string, options: { signal?: AbortSignal } = {}): Promise<Leadership> {
    const { signal } = options;
    for (;;) {
      if (signal?.aborted) throw campaignAborted(election, signal);
      const campaign = this.ns.election(election, this.ttl).campaign(id);
      this.campaigns.add(campaign);
      let onLost!: () => void;
      const lost = new Promise<void>((resolve) => {
        onLost = resolve;
      });
      let elected = false;
      let failure: Error | undefined;
      const outcome = new Promise<'elected' | 'failed' | 'aborted'>((resolve) => {
        campaign.on('elected', () => resolve('elected'));
        campaign.on('error', (error) => {
          failure = error;
          if (elected) onLost();
          resolve('failed');
        });
        if (signal) {
          if (signal.aborted) resolve('aborted');
          signal.addEventListener('abort', () => resolve('aborted'), { once: true });
        }
      });
      const result = await outcome;
      if (result === 'elected' && !signal?.aborted) {
        elected = true;
        return {
          lost,
          resign: async () => {
            this.campaigns.delete(campaign);
            await this.call(`resign ${election}`, () => campaign.resign()).catch(() => undefined);
          },
        };
      }
      this.campaigns.delete(campaign);
      await campaign.resign().catch(() => undefined);
      if (result === 'aborted' || signal?.aborted) throw campaignAborted(election, signal!);
      // etcd went away meanwhile: say so if it is still away, else campaign again.
      await this.call('reach', () => this.ns.get('config-version').string()).catch((error: unknown) => {
        throw error instanceof FerryError ? error : new FerryError(ErrorCode.UNREACHABLE, `${failure?.message}`, `is etcd running at ${this.location}?`);
      });
      await sleep(CAMPAIGN_RETRY_MS);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    // Resigning and revoking the lease release at once every election, reservation and VM lock this coordinator
    // still holds; an etcd that does not answer gets 2 s, and then the lease expires by itself.
    const releases = [...this.campaigns].map((campaign) => campaign.resign().catch(() => undefined));
    this.campaigns.clear();
    if (this.lease && this.leaseId) releases.push(this.lease.revoke().catch(() => undefined));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(releases), new Promise((resolve) => {
      timer = setTimeout(resolve, 2000);
    })]);
    clearTimeout(timer);
    this.closed = true;
    this.client.close();
  }
}

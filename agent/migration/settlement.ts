/**
 * Settling migrations left in doubt: a commit whose acknowledgement was lost.
 *
 * Two copies of a VM can outlive such a migration, and never more than one may run:
 * - the source's, suspended after its commit point (it never resumes it blindly);
 * - the destination's, verified and parked (it never runs it on its own).
 * Each side asks the other, on a fresh peer connection, every second until it gets an answer (and at once when
 * `ferry vm resolve` asks):
 * - the source asks the destination `peer.settle`: `active` (it runs the VM, or did: the source frees its copy), or
 *   `unknown` (its activation log proves it never ran the VM: the source's copy is the VM, and resumes);
 * - the destination asks the source `peer.holds`: `committed` or `none` (the source committed, or holds no copy at
 *   all, having died: the verified image is the VM, and activates), `running` (the source rolled back: the image is
 *   dropped), or `pending` (ask again).
 * Ownership epochs (1 at creation, +1 per commit) tell the copies apart in listings.
 *
 * A switchover (source.ts) activates the destination within the commit's own round trip, so no parked image waits
 * for its source there. If the source does not say it freed its copy (`peer.released`) before the connection closes,
 * the destination asks it `peer.holds` until it answers (`confirmRelease`): `committed` or `pending` (the source is
 * alive and settles for itself, by `peer.settle`), or `none` (it restarted: it is told to forget its stale
 * definition, `peer.forget`, as after a settled parked image).
 */
import { PEER_REPLY_TIMEOUT_MS } from '../../shared/constants.js';
import { toFerryError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { Catalog } from '../catalog.js';
import { every, type Periodic } from '../periodic.js';
import type { VirtualMachine } from '../vm/vm.js';
import type { PeerClient } from './peer-client.js';
import type { MigrationTarget } from './target.js';

const SETTLE_INTERVAL_MS = 1000;

export interface InDoubt {
  migrationId: string;
  vm: VirtualMachine;
  destinationUrl: string;
  /** Whether the guest was running before the migration: resumed so if its copy turns out to be the VM. */
  resume: boolean;
}

export interface SettlementDeps {
  catalog: Catalog;
  incoming: Map<string, MigrationTarget>;
  log: Logger;
  /** A fresh, unbound peer connection to the agent at `url`. */
  dial: (url: string) => Promise<PeerClient>;
  /** Removes the VM's files from this agent's datastore (its copy moved away for good). */
  forgetFiles: (name: string) => Promise<void>;
}

/** A destination's copy that a switchover activated, whose source did not say it freed its own. */
export interface UnconfirmedRelease {
  migrationId: string;
  name: string;
  /** The epoch the copy here runs at: a stale definition at the source is older. */
  epoch: number;
  sourceUrl: string;
}

export class Settlements {
  /** The source's side: its suspended copies whose destination's outcome is unknown, by VM name. */
  readonly inDoubt = new Map<string, InDoubt>();
  /** The destination's side: switchovers whose source has not confirmed it freed its copy, by migration id. */
  private readonly unconfirmed = new Map<string, UnconfirmedRelease>();
  private readonly deps: SettlementDeps;
  private readonly loop: Periodic;

  constructor(deps: SettlementDeps) {
    this.deps = deps;
    this.loop = every(SETTLE_INTERVAL_MS, 'settlement', deps.log, () => this.settleAll());
  }

  stop(): void {
    this.loop.stop();
  }

  confirmRelease(entry: UnconfirmedRelease): void {
    this.unconfirmed.set(entry.migrationId, entry);
    this.deps.log.info('the source did not confirm it freed its copy; asking it until it answers', { vm: entry.name, migration: entry.migrationId });
  }

  add(entry: InDoubt): void {
    this.inDoubt.set(entry.vm.name, entry);
    this.deps.log.warn('migration in doubt: keeping the VM suspended until the destination says how it ended', { vm: entry.vm.name, migration: entry.migrationId });
  }

  /** The destination's answer to `peer.holds`: what this (source) agent holds of `name` for migration `migrationId`. */
  holds(migrationId: string, name: string): 'committed' | 'running' | 'pending' | 'none' {
    const doubt = this.inDoubt.get(name);
    if (doubt?.migrationId === migrationId) return 'committed';
    // Files alone (a powered-off definition left by a restart) hold no copy of the guest's memory.
    const vm = this.deps.catalog.findMachine(name);
    if (!vm) return 'none';
    const { state } = vm;
    return state === 'running' || state === 'paused' ? 'running' : 'pending';
  }

  private async settleAll(): Promise<void> {
    // An unreachable peer is the expected case here (it is down; ask again next second): said at debug level.
    for (const name of [...this.inDoubt.keys()]) {
      await this.settleSource(name).catch((error: unknown) => {
        this.deps.log.debug('settlement: the destination did not answer yet', { vm: name, error: toFerryError(error).message });
      });
    }
    for (const entry of [...this.unconfirmed.values()]) {
      await this.confirmSource(entry).catch((error: unknown) => {
        this.deps.log.debug('settlement: the source did not answer yet', { vm: entry.name, error: toFerryError(error).message });
      });
    }
    for (const target of [...this.deps.incoming.values()]) {
      if (target.state !== 'verified' || !target.streamClosed) continue;
      const detail = await this.settleParked(target).catch((error: unknown) => `could not settle: ${toFerryError(error).message}`);
      if (target.state === 'verified') this.deps.log.debug('settlement: the image stays parked', { vm: target.vm.name, migration: target.migrationId, detail });
    }
  }

  /** Source side: ask the destination how migration ended; free or resume our copy accordingly. */
  async settleSource(name: string): Promise<string> {
    const doubt = this.inDoubt.get(name);
    if (!doubt) return 'nothing in doubt here';
    const { log, catalog } = this.deps;
    const peer = await this.deps.dial(doubt.destinationUrl);
    try {
      const { phase } = await peer.request('peer.settle', { migrationId: doubt.migrationId, resume: doubt.resume }, { timeoutMs: PEER_REPLY_TIMEOUT_MS });
      if (phase === 'pending') return 'the destination has not decided yet';
      this.inDoubt.delete(name);
      if (phase === 'active') {
        await this.deps.forgetFiles(name);
        await catalog.release(doubt.vm);
        log.info('settled: the destination runs the VM; freed the copy here', { vm: name, migration: doubt.migrationId });
        return 'the destination runs it; the copy here was freed';
      }
      // Its address too: the datagrams kept since the doubt began are served first (net-handover.ts).
      doubt.vm.net?.serve();
      if (doubt.resume) await doubt.vm.resume();
      doubt.vm.state = doubt.resume ? 'running' : 'paused';
      log.info('settled: the destination never ran the VM; resumed the copy here', { vm: name, migration: doubt.migrationId });
      return 'the destination never ran it; resumed here';
    } finally {
      peer.close();
    }
  }

  /** Destination side, after a switchover: what does the source still hold? Forget a stale definition there. */
  private async confirmSource(entry: UnconfirmedRelease): Promise<void> {
    const peer = await this.deps.dial(entry.sourceUrl);
    try {
      const { state } = await peer.request('peer.holds', { migrationId: entry.migrationId, name: entry.name }, { timeoutMs: PEER_REPLY_TIMEOUT_MS });
      if (state === 'pending') return; // still handing over, or about to ask peer.settle: ask again
      this.unconfirmed.delete(entry.migrationId);
      if (state === 'running') {
        // Cannot happen while both keep the rules (the source resumes only when this host never activated): said loudly.
        this.deps.log.error('after a switchover the source says it runs the VM too', { vm: entry.name, migration: entry.migrationId });
        return;
      }
      if (state === 'none') {
        const { forgot } = await peer.request('peer.forget', { name: entry.name, epoch: entry.epoch }, { timeoutMs: PEER_REPLY_TIMEOUT_MS });
        this.deps.log.info('settled: the source holds no copy', { vm: entry.name, migration: entry.migrationId, forgotStaleDefinition: forgot });
      }
      // committed: the source is in doubt and settles for itself (peer.settle answers `active`).
    } finally {
      peer.close();
    }
  }

  /** Destination side: ask the silent source how the migration ended; activate or drop our verified image. */
  async settleParked(target: MigrationTarget): Promise<string> {
    const { log } = this.deps;
    let peer: PeerClient;
    try {
      peer = await this.deps.dial(target.sourceUrl);
    } catch (error) {
      return `the source is unreachable (${toFerryError(error).message}); the image stays parked`;
    }
    try {
      const { state } = await peer.request('peer.holds', { migrationId: target.migrationId, name: target.vm.name }, { timeoutMs: PEER_REPLY_TIMEOUT_MS });
      if (state === 'pending') return 'the source has not decided yet';
      if (state === 'running') {
        await target.drop('the source rolled back and runs the VM', { keepVerified: false });
        log.info('settled: the source runs the VM; dropped the image here', { vm: target.vm.name, migration: target.migrationId });
        return 'the source runs it; the image here was dropped';
      }
      await target.activate(target.resumeOnActivation);
      // A source that restarted may still have the VM's files, powered off, one epoch behind: it can drop them.
      if (state === 'none') {
        await peer.request('peer.forget', { name: target.vm.name, epoch: target.vm.epoch }, { timeoutMs: PEER_REPLY_TIMEOUT_MS }).catch((error: unknown) => {
          // Harmless: the stale definition stays there, one epoch behind, until someone destroys it.
          log.warn('settlement: the source did not drop its stale definition', { vm: target.vm.name, error: toFerryError(error).message });
        });
      }
      log.info(`settled: the source ${state === 'committed' ? 'committed' : 'holds no copy'}; activated the image here`, { vm: target.vm.name, migration: target.migrationId });
      return `the source ${state === 'committed' ? 'had committed' : 'holds no copy'}; activated here`;
    } finally {
      peer.close();
    }
  }
}

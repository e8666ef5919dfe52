/**
 * Leases: a VM provisioned with `--lease` is released (destroyed, files and disks with it: it was provisioned so)
 * once its lease ends, by the agent that holds it, whether or not a coordinator is around. A VM busy with something
 * else (a migration, a dump) is released once that ends; a release that fails is logged and tried again, and its
 * files are never deleted unless the VM itself was released.
 */
import type { Agent } from './agent.js';
import { every, type Periodic } from './periodic.js';

/** How often leases are checked: a VM outlives its lease by at most this (plus a busy operation's length). */
const LEASE_CHECK_MS = 1000;

export class Leases {
  private readonly agent: Agent;
  private readonly loop: Periodic;

  constructor(agent: Agent) {
    this.agent = agent;
    this.loop = every(LEASE_CHECK_MS, 'leases', agent.log, () => this.releaseExpired());
  }

  stop(): void {
    this.loop.stop();
  }

  /** Releases every VM whose lease has ended by `now`. */
  async releaseExpired(now = Date.now()): Promise<void> {
    const { catalog } = this.agent;
    const expired = (lease: string | null | undefined): boolean => lease !== null && lease !== undefined && Date.parse(lease) <= now;
    for (const vm of catalog.machines()) {
      if (!expired(vm.leaseUntil) || (vm.state !== 'running' && vm.state !== 'paused') || catalog.busyWith(vm.name)) continue;
      await this.release(vm.name, () => catalog.exclusive(vm.name, 'release', (held) => catalog.release(held)));
    }
    for (const stored of catalog.storedVms()) {
      const { name } = stored.config;
      if (!expired(stored.config.leaseUntil) || catalog.busyWith(name)) continue;
      await this.release(name, () => catalog.holdStored(name, 'release', async () => {
        await this.agent.files?.remove(name, true);
        catalog.forgetStored(name);
      }));
    }
  }

  /** Releases one VM with `forget`, then deletes its files; a failure is logged and leaves the files in place. */
  private async release(name: string, forget: () => Promise<void>): Promise<void> {
    const { files, log } = this.agent;
    try {
      await forget();
    } catch (error) {
      log.warn('lease ended but the VM could not be released now; trying again', { vm: name, error: String(error) });
      return;
    }
    try {
      await files?.remove(name, true);
    } catch (error) {
      log.error('lease ended and the VM was released, but its files could not be deleted', { vm: name, error: String(error) });
      return;
    }
    log.info('lease ended: VM released', { vm: name });
  }
}

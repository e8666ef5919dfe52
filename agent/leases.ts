/**
 * Leases: a VM provisioned with `--lease` is released (destroyed, files and disks with it: it was provisioned so)
 * once its lease ends, by the agent that holds it, whether or not a coordinator is around. A VM busy with something
 * else (a migration, a dump) is released once that ends. A release that fails is logged and tried again; the VM
 * stays listed until its files are gone, and a VM that cannot be held keeps its files.
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
    const { catalog, files } = this.agent;
    const expired = (lease: string | null | undefined): boolean => lease !== null && lease !== undefined && Date.parse(lease) <= now;
    // Under the VM's hold, files first, then the name: a failure leaves the VM listed, to be tried again.
    for (const vm of catalog.machines()) {
      if (!expired(vm.leaseUntil) || (vm.state !== 'running' && vm.state !== 'paused') || catalog.busyWith(vm.name)) continue;
      await this.release(vm.name, () => catalog.exclusive(vm.name, 'release', async (held) => {
        await files?.remove(held.name, true);
        await catalog.release(held);
      }));
    }
    for (const stored of catalog.storedVms()) {
      const { name } = stored.config;
      if (!expired(stored.config.leaseUntil) || catalog.busyWith(name)) continue;
      await this.release(name, () => catalog.holdStored(name, 'release', async () => {
        await files?.remove(name, true);
        catalog.forgetStored(name);
      }));
    }
  }

  private async release(name: string, retire: () => Promise<void>): Promise<void> {
    try {
      await retire();
    } catch (error) {
      this.agent.log.warn('lease ended but the VM could not be released now; trying again', { vm: name, error: String(error) });
      return;
    }
    this.agent.log.info('lease ended: VM released', { vm: name });
  }
}

/**
 * Other agents settling what a failure left open (migration/settlement.ts has the protocol and why it is safe):
 * a source asking how a migration it committed ended (`peer.settle`), a destination asking what the source still
 * holds (`peer.holds`), and a host that registered a VM at a later epoch telling this one to drop its stale copy
 * (`peer.forget`).
 */
import type { Agent, PeerServer } from '../agent.js';

export function serveSettlementPeer(connection: PeerServer, agent: Agent): void {
  const { catalog, log } = agent;

  connection.handle('peer.settle', async ({ migrationId, resume }) => {
    const found = agent.incoming.get(migrationId);
    if (found?.state === 'verified') {
      await found.activate(resume);
      return { phase: 'active' as const };
    }
    if (found) return { phase: found.state === 'active' ? 'active' as const : 'pending' as const };
    return { phase: agent.activations.activated(migrationId) ? 'active' as const : 'unknown' as const };
  });

  connection.handle('peer.holds', async ({ migrationId, name }) => ({ state: agent.settlements.holds(migrationId, name) }));

  connection.handle('peer.forget', async ({ name, epoch }) => {
    const stored = catalog.findStored(name);
    // Only files, only older, and only when nothing holds them: a running VM, or a newer copy, is never dropped.
    if (!stored || stored.config.epoch >= epoch || catalog.busyWith(name)) return { forgot: false };
    // Files first, then the entry: the VM is listed here until nothing of it is left.
    await catalog.holdStored(name, 'forget', async () => {
      await agent.files?.remove(name);
      catalog.forgetStored(name);
    });
    log.info('forgot a stale definition: the VM runs elsewhere at a later epoch', { vm: name, epoch });
    return { forgot: true };
  });
}

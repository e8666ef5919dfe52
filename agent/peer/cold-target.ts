/**
 * Another agent's cold migration into this datastore (migration/cold.ts has the protocol and why exactly one host
 * ends up with the VM), and the upkeep it leaves: a VM that arrived stays marked `coldFrom` until its source has
 * confirmed it dropped its own copy.
 */
import { PEER_REPLY_TIMEOUT_MS } from '../../shared/constants.js';
import { ErrorCode, FerryError, toFerryError } from '../../shared/errors.js';
import type { Agent, PeerServer } from '../agent.js';
import { faultPoint } from '../faults.js';
import { ColdTarget } from '../migration/cold.js';
import { requireCpu } from '../vm/cpu-model.js';
import { every, type Periodic } from '../periodic.js';

export function serveColdTarget(connection: PeerServer, agent: Agent): void {
  const { catalog, faults, log } = agent;
  let cold: { target: ColdTarget; name: ReturnType<typeof catalog.claimName> } | undefined;
  connection.signal.addEventListener('abort', () => {
    if (!cold) return;
    const { target, name } = cold;
    target.abandon()
      .catch((error: unknown) => log.warn('could not remove an abandoned cold migration\'s staging folder; the agent removes it when it restarts', { vm: target.name, error: String(error) }))
      .finally(() => name.drop()); // no-op once the VM settled into the catalog
  }, { once: true });

  connection.handle('cold.begin', async (request) => {
    await agent.requireSharedStorage(request.name, request.sharedStorageId);
    // A suspended guest resumes with the flags it was saved running with; a powered-off one boots fresh here.
    if (request.suspended) requireCpu(agent.name, agent.hostCpu, { name: request.name, cpu: request.cpuModel }, 'receive-suspended');
    if (!agent.files) throw new FerryError(ErrorCode.VM_STATE, `${agent.name} keeps no files`, 'run the agent with --datastore');
    if (cold) throw new FerryError(ErrorCode.PROTOCOL, 'this connection already carries a cold migration', 'open a new connection per migration');
    const target = new ColdTarget(agent.files, request);
    const name = catalog.claimName(request.name, 'cold migration');
    try {
      await target.begin();
    } catch (error) {
      name.drop();
      throw error;
    }
    cold = { target, name };
    return {};
  });
  const current = (): NonNullable<typeof cold> => {
    if (!cold) throw new FerryError(ErrorCode.PROTOCOL, 'cold.begin must come first', 'the peer is not a compatible ferry-agent');
    return cold;
  };
  connection.handle('cold.chunk', async (request) => {
    await faultPoint(faults, 'cold-receiving', log, () => connection.close());
    await current().target.chunk(request);
    return {};
  });
  connection.handle('cold.finish', async ({ manifest }) => {
    const { target, name } = current();
    const reply = await target.finish(manifest);
    // Only this VM joins the catalog: its folder is read as it now lies (staging folders of other migrations under
    // way, and temporary files of other VMs, are theirs; they are cleaned only when the agent starts).
    const arrived = await agent.files!.readStored(target.name);
    name.settle(arrived);
    await agent.logEvent(target.name, `arrived on ${agent.name} by cold migration (epoch ${arrived.config.epoch})`);
    await faultPoint(faults, 'cold-registered', log, () => connection.close());
    return reply;
  });
}

/** How often VMs that arrived cold ask their source to drop its copy, until it has. */
const COLD_MARK_INTERVAL_MS = 1000;

/**
 * For each VM that arrived by cold migration and is still marked: tell its source to forget its older copy (it may
 * have crashed before deleting it), then drop the mark. Unreachable sources are asked again next time.
 */
export class ColdMarks {
  private readonly agent: Agent;
  private readonly loop: Periodic;

  constructor(agent: Agent) {
    this.agent = agent;
    this.loop = every(COLD_MARK_INTERVAL_MS, 'cold-migration marks', agent.log, () => this.settle());
  }

  stop(): void {
    this.loop.stop();
  }

  private async settle(): Promise<void> {
    const { catalog, files, log } = this.agent;
    if (!files) return;
    for (const stored of catalog.storedVms()) {
      const mark = stored.config.coldFrom;
      if (!mark) continue;
      const { name } = stored.config;
      try {
        const peer = await this.agent.dial(mark.sourceUrl);
        try {
          await peer.request('peer.forget', { name, epoch: stored.config.epoch }, { timeoutMs: PEER_REPLY_TIMEOUT_MS });
        } finally {
          peer.close();
        }
        if (catalog.findStored(name) !== stored) continue; // started, moved or destroyed meanwhile
        const { coldFrom: _settled, ...config } = stored.config;
        await files.writeConfig(config);
        catalog.updateStored({ ...stored, config });
      } catch (error) {
        // Expected while the source is down: it is asked again next second.
        log.debug('the source of a cold migration did not confirm it dropped its copy yet', { vm: name, source: mark.sourceUrl, error: toFerryError(error).message });
      }
    }
  }
}

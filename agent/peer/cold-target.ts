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
  // The stream closed: whatever step is under way ends first (ColdTarget.abandon waits for it); then what arrived
  // goes, and the name is freed, unless the VM was registered.
  connection.signal.addEventListener('abort', () => {
    if (!cold) return;
    const { target, name } = cold;
    void target.abandon()
      .catch((error: unknown) => log.warn('could not remove an abandoned cold migration\'s staging folder; the agent removes it when it restarts', { vm: target.name, error: String(error) }))
      .then(() => {
        if (!target.registered) name.drop();
      });
  }, { once: true });

  connection.handle('cold.begin', async (request) => {
    agent.requireOpen('incoming migrations', request.name);
    await agent.requireSharedStorage(request.name, request.sharedStorageId);
    // A suspended guest resumes with the flags it was saved running with; a powered-off one boots fresh here.
    if (request.suspended) requireCpu(agent.name, agent.hostCpu, { name: request.name, cpu: request.cpuModel }, 'receive-suspended');
    if (!agent.files) throw new FerryError(ErrorCode.VM_STATE, `${agent.name} keeps no files`, 'run the agent with --datastore');
    if (cold) throw new FerryError(ErrorCode.PROTOCOL, 'this connection already carries a cold migration', 'open a new connection per migration');
    // Closed during the awaits above: the close handler has run, and would never hear of this migration.
    connection.signal.throwIfAborted();
    const target = new ColdTarget(agent.files, request, connection.signal);
    const name = catalog.claimName(request.name, 'cold migration');
    // Known to the close handler before the first await: a stream that closes while the staging folder is made
    // still has it removed and its name freed.
    cold = { target, name };
    try {
      await target.begin();
    } catch (error) {
      cold = undefined;
      name.drop();
      throw error;
    }
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
    try {
      name.settle(await agent.files!.readStored(target.name));
    } catch (error) {
      name.drop();
      log.error('a VM arrived by cold migration but its folder could not be read; the agent lists it after a restart if it can', { vm: target.name, error: String(error) });
      throw error;
    }
    await agent.logEvent(target.name, `arrived on ${agent.name} by cold migration (epoch ${catalog.findStored(target.name)?.config.epoch ?? '?'})`);
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

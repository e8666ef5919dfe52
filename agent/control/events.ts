/**
 * `events.watch`: a watcher (`ferry ui`) is pushed this agent's events until its connection closes. Nothing here is
 * asked for again and again: the agent sends what happens (log lines, migration events) as it happens, its host and
 * VMs every `hostIntervalMs`, and heat-map frames of one VM when asked, each sampled here without touching what
 * migration reads (vm/heat-map.ts).
 *
 * A watcher that reads slowly is sent fewer frames, never more memory: while WATCH_WINDOW events are unsent, `host` and
 * `heat` events (each superseded by the next) are skipped; log lines and migration events always go.
 */
import { ErrorCode, FerryError } from '../../shared/errors.js';
import type { VmInfo, WatchEvent } from '../../shared/protocol.js';
import type { Agent, ControlServer } from '../agent.js';
import { HeatMap } from '../vm/heat-map.js';
import type { VirtualMachine } from '../vm/vm.js';
import { hostInfo } from './host.js';

const DEFAULT_HOST_INTERVAL_MS = 2000;
/** Events handed to the socket and not yet written, over which frames that the next one supersedes are skipped. */
const WATCH_WINDOW = 16;

export function serveEventsControl(connection: ControlServer, agent: Agent): void {
  connection.handle('events.watch', async ({ hostIntervalMs, heat }, context) => {
    let unsent = 0;
    const send = (event: WatchEvent): void => {
      if (context.signal.aborted) return;
      if ((event.kind === 'host' || event.kind === 'heat') && unsent >= WATCH_WINDOW) return;
      unsent += 1;
      context.event(event).then(() => {
        unsent -= 1;
      }, (error: unknown) => {
        unsent -= 1;
        agent.log.debug('a watcher\'s event was not sent', { error: String(error) });
      });
    };
    const stop = agent.events.subscribe(send);

    const sendHost = async (): Promise<void> => {
      const info = await hostInfo(agent);
      const vms: VmInfo[] = agent.catalog.machines().map((machine) => {
        const stats = machine.state === 'running' ? agent.vmStats.stats(machine) : undefined;
        return { ...machine.info(agent.name), ...(stats ? { stats } : {}) };
      });
      send({ kind: 'host', info, vms });
    };
    const hostTick = (): void => {
      sendHost().catch((error: unknown) => agent.log.warn('a watcher\'s host event could not be made', { error: String(error) }));
    };
    hostTick();
    const hostTimer = setInterval(hostTick, hostIntervalMs ?? DEFAULT_HOST_INTERVAL_MS);

    let heatTimer: NodeJS.Timeout | undefined;
    if (heat) {
      // A new heat map whenever the VM's memory here is another (it left and came back): its history is that memory's.
      let sampled: { machine: VirtualMachine; map: HeatMap } | undefined;
      heatTimer = setInterval(() => {
        const machine = agent.catalog.findMachine(heat.name);
        // Only the copy that is the VM: not a migration's reservation here (still being filled), nor a post-copy's
        // paused source (the VM runs at its destination).
        if (!machine || machine.state === 'migrating-in' || machine.state === 'postcopy-out') return;
        if (sampled?.machine !== machine) sampled = { machine, map: new HeatMap(heat.cells) };
        const frame = sampled.map.sample({
          pageCount: machine.pageCount, dirtyLog: machine.dirtyLog, writeStamps: machine.writeStamps, sending: machine.sending,
          writes: () => machine.registers().n,
        }, performance.now());
        send({ kind: 'heat', name: heat.name, ...frame, migrating: machine.sending !== undefined });
      }, heat.intervalMs);
    }

    try {
      await new Promise<void>((resolve) => {
        if (context.signal.aborted) resolve();
        else context.signal.addEventListener('abort', () => resolve(), { once: true });
      });
    } finally {
      stop();
      clearInterval(hostTimer);
      if (heatTimer) clearInterval(heatTimer);
    }
    throw new FerryError(ErrorCode.CONNECTION_LOST, 'the watcher disconnected', 'watch again');
  });
}

/**
 * The coordinator's requests about the host itself.
 */
import { PROTOCOL_VERSION } from '../../shared/constants.js';
import type { HostInfo } from '../../shared/protocol.js';
import type { Agent, ControlServer } from '../agent.js';

function cpuTime(): { userMs: number; systemMs: number } {
  const usage = process.cpuUsage();
  return { userMs: usage.user / 1000, systemMs: usage.system / 1000 };
}

export async function hostInfo(agent: Agent): Promise<HostInfo> {
  const { catalog, files } = agent;
  const diskFreeBytes = files ? await files.freeBytes() : undefined;
  const vms = catalog.summaries();
  return {
    name: agent.name,
    version: PROTOCOL_VERSION,
    capacityBytes: catalog.capacityBytes,
    usedBytes: catalog.usedBytes,
    freeBytes: catalog.freeBytes,
    vms,
    diskFreeBytes: diskFreeBytes ?? 0,
    ...(files?.shared ? { sharedStorageId: await files.sharedStorageId() } : {}),
    cpu: cpuTime(),
    hostCpu: agent.hostCpu,
    addressMode: { name: agent.addressMode.name, ...(agent.addressMode.device ? { device: agent.addressMode.device } : {}) },
    load: agent.state.load(catalog.usedBytes, catalog.capacityBytes, vms.length),
    maintenance: agent.state.maintenance,
    health: agent.state.health(diskFreeBytes),
  };
}

export function serveHostControl(connection: ControlServer, agent: Agent): void {
  connection.handle('host.info', () => hostInfo(agent));
  connection.handle('host.state', async ({ maintenance, by, degraded }) => {
    await agent.state.set({ maintenance, by, degraded });
    return hostInfo(agent);
  });
}

/**
 * `ferry storage move`: the coordinator's side of Storage vMotion on one host. It finds the VM and asks its agent to
 * move the disks (agent/control/storage.ts does the work); the report says what moved, how fast, what the pause
 * cost and what the guest's disk writes paid for the mirror.
 */
import { formatBytes, formatDuration, formatRate } from '../shared/units.js';
import type { StorageMoveReport } from '../shared/protocol.js';
import { withHost } from './connect.js';
import type { Cluster } from './cluster.js';
import { locateVm } from './inventory.js';
import { formatTable } from './output.js';
import { withVmLock, type ClusterStore } from './store/store.js';

export interface StorageProgress {
  file: string;
  phase: 'bulk' | 'round' | 'ready' | 'paused';
  round: number;
  blocksDone: number;
  blocksTotal: number;
  bytesSent: number;
}

export interface StorageMoveRequest {
  vm: string;
  to: 'shared' | 'local';
  mode: 'mirror' | 'iterate';
  verify: 'pages' | 'full';
  maxDowntimeMs: number;
  /** A cap on the copy's own sends, bytes per second (0 or absent: none). */
  maxBandwidthBytesPerSec?: number;
}

/** `hooks.store`: the VM is held in the cluster store for the move (FERRY_ERR_VM_BUSY while another holds it). */
export async function moveStorage(cluster: Cluster, request: StorageMoveRequest, onProgress?: (progress: StorageProgress) => void, hooks: { store?: ClusterStore } = {}): Promise<StorageMoveReport> {
  return withVmLock(hooks.store, request.vm, 'storage move', async () => {
    const { host } = await locateVm(cluster, request.vm);
    return withHost(host, (client) => client.request('storage.move', {
      name: request.vm, to: request.to, mode: request.mode, verify: request.verify, maxDowntimeMs: request.maxDowntimeMs,
      ...(request.maxBandwidthBytesPerSec ? { maxBandwidthBytesPerSec: request.maxBandwidthBytesPerSec } : {}),
    }, { onEvent: (body) => onProgress?.(body as StorageProgress) }));
  });
}

const ms = (value: number): string => formatDuration(value);

export function formatStorageReport(report: StorageMoveReport): string {
  const place = (where: 'shared' | 'local'): string => (where === 'shared' ? 'shared storage' : `${report.host}'s datastore`);
  const lines = [`storage move of ${report.vm} on ${report.host}: ${place(report.from)} -> ${place(report.to)}   MOVED`, ''];
  lines.push(...formatTable([
    ['disk', 'size', 'sent', report.mode === 'mirror' ? 'mirrored writes' : 'rounds', 'zero blocks skipped', 'ready after', 'image covered', 'sent'],
    ...report.disks.map((disk) => [
      disk.file, formatBytes(disk.bytes), formatBytes(disk.bytesSent),
      report.mode === 'mirror' ? String(disk.mirroredWrites) : `${disk.rounds}${disk.stopReason ? ` (${disk.stopReason})` : ''}, ${disk.pausedBlocks} blocks paused`,
      String(disk.zeroBlocksSkipped), ms(disk.readyAfterMs), formatRate(disk.imageBytesPerSec), formatRate(disk.throughputBytesPerSec),
    ]),
  ], [1, 2, 4]).split('\n').map((line) => `    ${line}`), '');
  const { verification, writeLatency } = report;
  lines.push(`  mode          ${report.mode}${report.mode === 'mirror' ? ' (every guest write went to both copies once the copy began)' : ' (dirty-block rounds)'}`);
  lines.push(`  pause         ${ms(report.pauseMs)} (vCPU paused to finish, verify and switch)`);
  lines.push(`  verification  ${verification.mode}: ${verification.match ? 'match' : 'MISMATCH'} (${verification.sourceDigest} / ${verification.destDigest})${verification.sourceImageDigest ? `; whole images ${verification.sourceImageDigest} / ${verification.destImageDigest}` : ''}`);
  lines.push(`  disk writes   p50 ${ms(writeLatency.before.p50Ms)}, p99 ${ms(writeLatency.before.p99Ms)} before (${writeLatency.before.count} writes); p50 ${ms(writeLatency.during.p50Ms)}, p99 ${ms(writeLatency.during.p99Ms)} during the copy (${writeLatency.during.count})`);
  lines.push(`  time          ${ms(report.totalTimeMs)}`);
  lines.push(`  ${report.vm}'s config now points to ${place(report.to)}; the copy in ${place(report.from)} is deleted`);
  return lines.join('\n');
}

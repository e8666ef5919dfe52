/**
 * The coordinator's side of a cold migration: find the powered-off or suspended VM, check the destination answers,
 * and ask the source to move the files (agent/migration/cold.ts does the work, agent to agent).
 */
import { randomUUID } from 'node:crypto';
import { ErrorCode, FerryError, toFerryError, type ErrorPayload } from '../shared/errors.js';
import { formatBytes, formatDuration, formatRate } from '../shared/units.js';
import { findHost, type Cluster } from './cluster.js';
import { openHost, type AgentClient } from './connect.js';
import { locateVm } from './inventory.js';
import { formatTable } from './output.js';
import { ownerName, type ClusterStore, type VmLock } from './store/store.js';

export interface ColdMigrationReport {
  vm: string;
  from: string;
  to: string;
  mode: 'cold';
  outcome: 'committed' | 'failed';
  error?: ErrorPayload;
  files: { file: string; bytes: number; xxh64: string }[];
  /** Bytes of the VM's files, sparse holes included. */
  bytes: number;
  /** Bytes that travelled; zeros travel as a length only. */
  bytesSent: number;
  totalTimeMs: number;
  /** File bytes moved per second. */
  throughputBytesPerSec: number;
}

export interface ColdProgress {
  file: string;
  bytesDone: number;
  bytesTotal: number;
}

/** `hooks.store`: the VM is held in the cluster store for the move (FERRY_ERR_VM_BUSY while another holds it). */
export async function migrateCold(cluster: Cluster, request: { vm: string; to: string }, onProgress?: (progress: ColdProgress) => void, hooks: { store?: ClusterStore } = {}): Promise<ColdMigrationReport> {
  const startedMs = performance.now();
  let from = '?';
  let source: AgentClient | undefined;
  let vmLock: VmLock | undefined;
  const base = { vm: request.vm, to: request.to, mode: 'cold' as const, files: [], bytes: 0, bytesSent: 0, throughputBytesPerSec: 0 };
  try {
    vmLock = await hooks.store?.lockVm(request.vm, 'cold migration');
    const destinationHost = findHost(cluster, request.to);
    const located = await locateVm(cluster, request.vm);
    from = located.host.name;
    if (from === request.to) throw new FerryError(ErrorCode.BAD_INPUT, `${request.vm} is already on ${request.to}`, 'pick another destination with --to');
    if (located.vm.state !== 'defined' && located.vm.state !== 'suspended') {
      throw new FerryError(ErrorCode.VM_STATE, `${request.vm} is ${located.vm.state}: cold migration moves a VM that is powered off or suspended`, `stop or suspend it first (\`ferry vm stop ${request.vm}\`), or migrate it live without --cold`);
    }
    (await openHost(destinationHost)).client.close(); // stage 0: the destination answers and speaks our protocol
    source = (await openHost(located.host)).client;
    const result = await source.request('cold.start', {
      migrationId: randomUUID(),
      name: request.vm,
      destination: { name: destinationHost.name, url: destinationHost.migrationUrl ?? destinationHost.url },
      sourceUrl: located.host.migrationUrl ?? located.host.url,
    }, { onEvent: (body) => onProgress?.(body as ColdProgress) });
    const bytes = result.files.reduce((total, file) => total + file.bytes, 0);
    const totalTimeMs = performance.now() - startedMs;
    await hooks.store?.recordMove({ vm: request.vm, from, to: request.to, at: new Date().toISOString(), by: ownerName() }).catch(() => undefined);
    return {
      ...base, from, outcome: 'committed', files: result.files, bytes, bytesSent: result.bytesSent, totalTimeMs,
      throughputBytesPerSec: (bytes / Math.max(result.durationMs, 0.001)) * 1000,
    };
  } catch (error) {
    return { ...base, from, outcome: 'failed', error: toFerryError(error).toPayload(), totalTimeMs: performance.now() - startedMs };
  } finally {
    source?.close();
    await vmLock?.release().catch(() => undefined);
  }
}

export function formatColdReport(report: ColdMigrationReport): string {
  const lines = [`cold migration of ${report.vm}: ${report.from} -> ${report.to}   ${report.outcome === 'committed' ? 'COMMITTED' : 'FAILED'}`];
  if (report.error) {
    lines.push(`  error: ${report.error.code}: ${report.error.message}`);
    if (report.error.hint) lines.push(`  hint:  ${report.error.hint}`);
    return lines.join('\n');
  }
  lines.push('', ...formatTable([['file', 'bytes', 'xxh64'], ...report.files.map((file) => [file.file, formatBytes(file.bytes), file.xxh64])], [1]).split('\n').map((line) => `    ${line}`), '');
  lines.push(`  moved       ${formatBytes(report.bytes)} in ${report.files.length} files (${formatBytes(report.bytesSent)} sent; zeros travel as lengths)`);
  lines.push(`  time        ${formatDuration(report.totalTimeMs)}`);
  lines.push(`  throughput  ${formatRate(report.throughputBytesPerSec)}`);
  lines.push(`  registered on ${report.to} (epoch one higher); deleted from ${report.from}`);
  return lines.join('\n');
}

/**
 * Where a VM that must leave its host can go: the hosts that can take it (they answer, are not in maintenance or
 * degraded, have the room and every CPU flag it runs with, mount its shared storage), best first by the load they
 * would carry with it. `drain` and `balance` both place VMs through here, so they agree on what fits.
 */
import { missingFlags } from '../../shared/cpu.js';
import type { HostInfo, VmInfo } from '../../shared/protocol.js';
import { formatBytes } from '../../shared/units.js';
import type { HostSurvey } from '../inventory.js';

/** What moves on to a host while a plan runs: memory and disk it will need, not yet in its host info. */
export interface Pending {
  memoryBytes: number;
  diskBytes: number;
}

export type MoveMode = 'live' | 'cold';

/** Local disks travel with a live migration (`--copy-storage`) and with a cold one; shared disks stay put. */
export function localDiskBytes(vm: VmInfo): number {
  return (vm.disks ?? []).filter((disk) => !disk.shared).reduce((sum, disk) => sum + disk.sizeBytes, 0);
}

export function hasSharedDisks(vm: VmInfo): boolean {
  return (vm.disks ?? []).some((disk) => disk.shared);
}

/** Why `target` cannot take `vm` now, in a phrase; undefined when it can. */
export function refusalOf(vm: VmInfo, mode: MoveMode, source: HostInfo | undefined, target: HostSurvey, pending: Pending = { memoryBytes: 0, diskBytes: 0 }): string | undefined {
  const { info } = target;
  if (!info) return `did not answer (${target.error?.code ?? 'unknown error'})`;
  if (info.name === vm.host) return 'it is the VM\'s own host';
  if (info.maintenance) return 'in maintenance';
  if (info.health?.state === 'degraded') return `degraded: ${info.health.reasons.map((reason) => reason.reason).join('; ')}`;
  // A live VM needs its memory there; a cold one only its files (memory when it is started).
  if (mode === 'live' && info.freeBytes - pending.memoryBytes < vm.memoryBytes) {
    return `no room: ${formatBytes(Math.max(0, info.freeBytes - pending.memoryBytes))} memory free, ${vm.name} needs ${formatBytes(vm.memoryBytes)}`;
  }
  const diskNeeded = localDiskBytes(vm) + (mode === 'cold' && vm.state === 'suspended' ? vm.memoryBytes : 0);
  if (diskNeeded > 0 && info.diskFreeBytes - pending.diskBytes < diskNeeded) {
    return `no disk room: ${formatBytes(Math.max(0, info.diskFreeBytes - pending.diskBytes))} free, ${vm.name}'s files need ${formatBytes(diskNeeded)}`;
  }
  // A running or suspended guest goes on with every flag it was started with; a powered-off one boots afresh.
  if (mode === 'live' || vm.state === 'suspended') {
    const missing = missingFlags(vm.cpuModel.flags, info.hostCpu.flags);
    if (missing.length > 0) return `lacks ${missing.length} CPU flag${missing.length === 1 ? '' : 's'} ${vm.name} runs with: ${missing.slice(0, 6).join(' ')}${missing.length > 6 ? ' ...' : ''}`;
  }
  if (hasSharedDisks(vm) && source?.sharedStorageId !== undefined && info.sharedStorageId !== source.sharedStorageId) {
    return `does not mount the shared storage ${vm.name}'s disks are on`;
  }
  return undefined;
}

/** The memory a host would hold with `extraBytes` more, as a share of its capacity. */
export function memoryShare(info: HostInfo, extraBytes: number): number {
  return info.capacityBytes > 0 ? (info.usedBytes + extraBytes) / info.capacityBytes : 1;
}

export interface Ranked {
  fits: HostSurvey[];
  refused: { host: string; reason: string }[];
}

/**
 * The hosts that can take `vm`, least loaded first (memory share after the move, then its agent's CPU, then the most
 * free memory), and those that cannot, each with why. `exclude` are hosts already tried for this VM.
 */
export function rankTargets(vm: VmInfo, mode: MoveMode, source: HostInfo | undefined, surveys: HostSurvey[], pending: Map<string, Pending>, exclude: ReadonlySet<string> = new Set()): Ranked {
  const fits: HostSurvey[] = [];
  const refused: Ranked['refused'] = [];
  for (const survey of surveys) {
    if (survey.host.name === vm.host) continue;
    if (exclude.has(survey.host.name)) {
      refused.push({ host: survey.host.name, reason: 'already tried for this VM' });
      continue;
    }
    const reason = refusalOf(vm, mode, source, survey, pending.get(survey.host.name));
    if (reason) refused.push({ host: survey.host.name, reason });
    else fits.push(survey);
  }
  const share = (survey: HostSurvey): number => memoryShare(survey.info!, (pending.get(survey.host.name)?.memoryBytes ?? 0) + (mode === 'live' ? vm.memoryBytes : 0));
  fits.sort((a, b) => share(a) - share(b)
    || (a.info!.load?.cpuPercent ?? 0) - (b.info!.load?.cpuPercent ?? 0)
    || b.info!.freeBytes - a.info!.freeBytes
    || a.host.name.localeCompare(b.host.name));
  return { fits, refused };
}

/** The refusals in one sentence, for a VM that cannot move. */
export function describeRefusals(refused: Ranked['refused']): string {
  return refused.length === 0 ? 'the cluster has no other host' : refused.map((entry) => `${entry.host} ${entry.reason}`).join('; ');
}

/**
 * CPU models seen from the coordinator: the cluster's baseline (the flags every reachable host has now, as
 * `virsh cpu-baseline` computes and VMware EVC applies), the model a `vm create` or `provision` asks an agent for,
 * and which hosts can run it.
 *
 * `baseline` is ferry's default model: a VM created with it can move live to every host that was in the cluster when
 * it was created, which is what a live-migration testbed wants of a VM unless told otherwise. `host` is faster on
 * a newer host and pins the VM to hosts at least as capable; a level sits between the two.
 */
import { LEVEL_FLAGS, baselineFlags, highestLevel, missingFlags, type CpuLevel, type CpuModelName, type CpuModelRequest } from '../shared/cpu.js';
import { ErrorCode, FerryError } from '../shared/errors.js';
import type { HostInfo } from '../shared/protocol.js';
import type { HostSurvey } from './inventory.js';
import { formatTable } from './output.js';

/** The model a VM gets when `--cpu` (or a template's `cpu`) names none. */
export const DEFAULT_CPU_MODEL: CpuModelName = 'baseline';

export interface ClusterBaseline {
  /** The flags every host in `hosts` offers guests. */
  flags: string[];
  /** The highest x86-64 level they meet (null: not even x86-64-v1, or hosts of other architectures). */
  level: CpuLevel | null;
  /** The hosts it was computed from: every host that answered. */
  hosts: string[];
  /** Hosts of the cluster file that did not answer, and so do not count. */
  unreachable: string[];
}

/** The cluster's baseline from a survey of its hosts; refused when no host answered. */
export function clusterBaseline(surveys: HostSurvey[]): ClusterBaseline {
  const reachable = surveys.filter((survey): survey is HostSurvey & { info: HostInfo } => survey.info !== undefined);
  const unreachable = surveys.filter((survey) => !survey.info).map((survey) => survey.host.name);
  if (reachable.length === 0) {
    throw new FerryError(
      ErrorCode.UNREACHABLE,
      surveys.length === 0 ? 'the cluster file has no hosts to compute a CPU baseline from' : `no host answered, so there is no CPU baseline (${unreachable.join(', ')} did not)`,
      surveys.length === 0 ? 'add one with `ferry hosts add host-a ws://127.0.0.1:7001`' : 'start the agents, or check the cluster file with `ferry hosts`',
    );
  }
  const flags = baselineFlags(reachable.map((survey) => survey.info.hostCpu.flags));
  const x86 = reachable.every((survey) => survey.info.hostCpu.level !== null);
  return { flags, level: x86 ? highestLevel(flags) : null, hosts: reachable.map((survey) => survey.host.name), unreachable };
}

/** What to ask an agent for: `baseline` carries the cluster's flags (only the coordinator knows them). */
export function cpuModelRequest(model: CpuModelName, surveys: HostSurvey[]): CpuModelRequest {
  return model === 'baseline' ? { model, flags: clusterBaseline(surveys).flags } : { model };
}

/** The flags `host` lacks to run a VM created with `request` there; none when it can (a `host` VM always can). */
export function flagsMissingOn(request: CpuModelRequest, host: HostInfo): string[] {
  if (request.model === 'host') return [];
  const wanted = request.model === 'baseline' ? request.flags : LEVEL_FLAGS[request.model];
  return missingFlags(wanted, host.hostCpu.flags);
}

/** A host's CPU in a few words: `x86-64-v2 (masked 57)`, for tables. */
export function levelText(cpu: HostInfo['hostCpu']): string {
  return `${cpu.level ?? '-'}${cpu.masked.length > 0 ? ` (masked ${cpu.masked.length})` : ''}`;
}

/** `ferry cpu baseline` for people. */
export function formatBaseline(baseline: ClusterBaseline): string {
  const lines = [
    formatTable([
      ['level', baseline.level ?? '- (below x86-64-v1, or not x86)'],
      ['hosts', `${baseline.hosts.join(', ')}${baseline.unreachable.length > 0 ? ` (not counted, did not answer: ${baseline.unreachable.join(', ')})` : ''}`],
      ['flags', `${baseline.flags.length}`],
    ]),
  ];
  // The flags, wrapped at about 100 columns.
  let line = ' ';
  for (const flag of baseline.flags) {
    if (line.length + flag.length + 1 > 100) {
      lines.push(line);
      line = ' ';
    }
    line += ` ${flag}`;
  }
  if (line.trim() !== '') lines.push(line);
  return lines.join('\n');
}

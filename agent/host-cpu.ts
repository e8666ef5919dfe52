/**
 * This host's CPU, read once when the agent starts: vendor, model name and flags from /proc/cpuinfo, less the flags
 * `--cpu-mask` hides (to pin a host to an older level, as a hypervisor's CPU mask does, or to build a mixed cluster
 * on one machine). What the agent offers guests is this, never the CPU read again later: a VM checked against it
 * at creation or reservation must find the same flags when it resumes.
 */
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import { highestLevel, sortedFlags, type HostCpu } from '../shared/cpu.js';
import type { Logger } from '../shared/log.js';

/** arm64 `CPU implementer` codes (the MIDR's implementer field) of the vendors one meets; others show as hex. */
const ARM_IMPLEMENTERS: Record<string, string> = {
  '0x41': 'ARM', '0x42': 'Broadcom', '0x43': 'Cavium', '0x46': 'Fujitsu', '0x48': 'HiSilicon', '0x4e': 'NVIDIA',
  '0x51': 'Qualcomm', '0x61': 'Apple', '0xc0': 'Ampere',
};

/**
 * Flags Linux makes up itself rather than reads from CPUID (arch/x86/include/asm/cpufeatures.h, word 3, "Linux
 * defined"), and `hypervisor`, which a hypervisor sets: facts about the kernel, the TSC or the machine's virtual
 * hardware, not instructions a guest uses. They differ between kernels, and between bare metal and a VM, on one
 * CPU model; offered to guests they would make identical CPUs refuse each other live. Left out of what a host offers.
 */
export const LINUX_SYNTHETIC_FLAGS: ReadonlySet<string> = new Set([
  'cxmmx', 'k6_mtrr', 'cyrix_arr', 'centaur_mcr', 'k8', 'k7', 'p3', 'p4', 'constant_tsc', 'up', 'art', 'arch_perfmon', 'pebs',
  'bts', 'syscall32', 'sysenter32', 'rep_good', 'amd_lbr_v2', 'acc_power', 'nopl', 'always', 'xtopology', 'tsc_reliable',
  'nonstop_tsc', 'cpuid', 'extd_apicid', 'amd_dcm', 'aperfmperf', 'rapl', 'nonstop_tsc_s3', 'tsc_known_freq', 'hypervisor',
]);

/** The fields of the first processor block of /proc/cpuinfo (every core of a machine reports the same flags). */
function firstProcessor(cpuinfo: string): Map<string, string> {
  const fields = new Map<string, string>();
  for (const line of cpuinfo.split('\n')) {
    if (line.trim() === '') {
      if (fields.size > 0) break;
      continue;
    }
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const key = line.slice(0, colon).trim();
    if (!fields.has(key)) fields.set(key, line.slice(colon + 1).trim());
  }
  return fields;
}

/**
 * The host CPU a /proc/cpuinfo text describes, on architecture `arch` (`process.arch`), with `mask` hidden. Flags
 * come from `flags` on x86 and `Features` on arm64; elsewhere (or without cpuinfo) the set is empty, and
 * `unknownReason` says why. `masked` lists the flags the mask actually hid here. Linux's own synthetic flags are
 * left out (LINUX_SYNTHETIC_FLAGS).
 */
export function describeHostCpu(cpuinfo: string, arch: string, mask: readonly string[], fallbackModel = ''): HostCpu & { unknownReason?: string } {
  const fields = firstProcessor(cpuinfo);
  const x86 = arch === 'x64' || arch === 'ia32';
  const flagLine = x86 ? fields.get('flags') : arch === 'arm64' ? fields.get('Features') : undefined;
  const own = sortedFlags((flagLine ?? '').split(/\s+/).filter((flag) => flag !== '').map((flag) => flag.toLowerCase()))
    .filter((flag) => !LINUX_SYNTHETIC_FLAGS.has(flag));
  const hidden = new Set(mask);
  const flags = own.filter((flag) => !hidden.has(flag));
  const implementer = fields.get('CPU implementer')?.toLowerCase();
  const vendor = fields.get('vendor_id') ?? (implementer ? ARM_IMPLEMENTERS[implementer] ?? implementer : 'unknown');
  const model = fields.get('model name') ?? fields.get('Model') ?? (fallbackModel || 'unknown');
  const described: HostCpu & { unknownReason?: string } = {
    vendor: vendor.slice(0, 200),
    model: model.slice(0, 200),
    flags,
    level: x86 ? highestLevel(flags) : null,
    masked: own.filter((flag) => hidden.has(flag)),
  };
  if (flagLine === undefined) {
    described.unknownReason = x86 || arch === 'arm64'
      ? `no ${x86 ? 'flags' : 'Features'} line in /proc/cpuinfo`
      : `ferry reads CPU flags on x86 and arm64 only, this is ${arch}`;
  }
  return described;
}

/** Reads this machine's CPU once; a host whose flags cannot be read offers none, and says so in its log. */
export async function readHostCpu(mask: readonly string[], log: Logger): Promise<HostCpu> {
  const cpuinfo = await readFile('/proc/cpuinfo', 'utf8').catch((error: unknown) => {
    log.warn('cannot read /proc/cpuinfo: this host reports no CPU flags', { error: String(error) });
    return '';
  });
  const { unknownReason, ...cpu } = describeHostCpu(cpuinfo, process.arch, mask, os.cpus()[0]?.model ?? '');
  if (unknownReason) log.warn('this host reports no CPU flags: only VMs that need none (a baseline of this cluster, or host) run here', { reason: unknownReason });
  const unknownMask = mask.filter((flag) => !cpu.masked.includes(flag));
  if (unknownMask.length > 0) log.info('--cpu-mask names flags this CPU does not have; nothing to hide for them', { flags: unknownMask });
  return cpu;
}

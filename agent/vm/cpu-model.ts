/**
 * A VM's CPU model on this host: what `vm.create` resolves it to, and the one check every way a VM arrives or
 * resumes goes through. A guest that has seen a flag may use it at any moment after, so a VM started (or suspended)
 * with a flag set may only run where every flag of it exists; a VM powered off boots fresh, and a `host` VM then
 * takes the flags of the host it boots on.
 *
 * Refusals are FERRY_ERR_CPU_INCOMPATIBLE, name every missing flag, and give the way out that works for the model.
 */
import { LEVEL_FLAGS, missingFlags, type CpuModelRequest, type HostCpu, type VmCpuModel } from '../../shared/cpu.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';

/**
 * The flags `request` means on this host. No request at all (a client that names no model) is a baseline of this
 * host alone: its own flags, as a VM of a cluster of one host would get.
 */
export function resolveCpuModel(request: CpuModelRequest | undefined, host: HostCpu): VmCpuModel {
  if (!request) return { model: 'baseline', flags: [...host.flags] };
  if (request.model === 'baseline') return { model: 'baseline', flags: [...request.flags].sort() };
  if (request.model === 'host') return { model: 'host', flags: [...host.flags] };
  return { model: request.model, flags: [...LEVEL_FLAGS[request.model]] };
}

/**
 * Why the check is made, which decides the message and the way out:
 * - `create`: a new VM here;
 * - `receive-live`: a live migration's reservation here (the VM runs elsewhere with its flags);
 * - `receive-suspended`: a cold migration of a suspended VM here (it was saved running with its flags);
 * - `resume`: resuming a suspended VM here;
 * - `start`: a fresh start of a VM with a named model (a level, or baseline), whose flags do not change.
 */
export type CpuCheck = 'create' | 'receive-live' | 'receive-suspended' | 'resume' | 'start';

/** Throws FERRY_ERR_CPU_INCOMPATIBLE unless host `hostName` has every flag of `vm`'s CPU model. */
export function requireCpu(hostName: string, host: HostCpu, vm: { name: string; cpu: VmCpuModel }, check: CpuCheck): void {
  const missing = missingFlags(vm.cpu.flags, host.flags);
  if (missing.length === 0) return;
  const { name } = vm;
  const { model } = vm.cpu;
  const lacks = `${missing.length} CPU flag${missing.length === 1 ? '' : 's'}`;
  const list = missing.join(' ');
  const hostLevel = host.level && host.level !== 'x86-64-v1' ? host.level : undefined;
  const movable = `VMs that must move live to ${hostName}: create them with --cpu baseline${hostLevel ? ` or --cpu ${hostLevel}` : ''}`;
  const elsewhere = '`ferry hosts` shows each host\'s CPU level';
  const cold = `\`ferry migrate ${name} --to HOST --cold\` to a host that has them (${elsewhere})`;
  switch (check) {
    case 'create':
      throw new FerryError(
        ErrorCode.CPU_INCOMPATIBLE,
        `${hostName} cannot run CPU model ${model} for ${name}: it lacks ${lacks}: ${list}`,
        `pick a host that has them (${elsewhere}), or a model ${hostName} has: --cpu baseline${hostLevel ? ` or --cpu ${hostLevel}` : ''}`,
      );
    case 'receive-live':
      throw new FerryError(
        ErrorCode.CPU_INCOMPATIBLE,
        `${hostName} lacks ${lacks} that ${name} (cpu ${model}) was started with: ${list}; it cannot receive ${name} live, and ${name} keeps running where it is`,
        model === 'host'
          ? `stop it and move it cold: it takes ${hostName}'s flags at its next start (\`ferry vm stop ${name}\`, then \`ferry migrate ${name} --to ${hostName} --cold\`); ${movable}`
          : `pick a host that has them (${elsewhere}); ${movable}`,
      );
    case 'receive-suspended':
      throw new FerryError(
        ErrorCode.CPU_INCOMPATIBLE,
        `${name} was suspended running with ${lacks} that ${hostName} lacks: ${list}; it could not resume on ${hostName}`,
        model === 'host'
          ? `pick a host that has them (${elsewhere}); or resume and stop it where it is (\`ferry vm start ${name}\`, \`ferry vm stop ${name}\`): powered off, it moves cold and takes ${hostName}'s flags at its next start`
          : `pick a host that has them (${elsewhere})`,
      );
    case 'resume':
      throw new FerryError(
        ErrorCode.CPU_INCOMPATIBLE,
        `${name} was suspended running with ${lacks} that ${hostName} lacks: ${list}; it cannot resume here`,
        `move it cold: ${cold}`,
      );
    case 'start':
      throw new FerryError(
        ErrorCode.CPU_INCOMPATIBLE,
        `${hostName} lacks ${lacks} of ${name}'s CPU model ${model}: ${list}; it cannot start here`,
        `move it cold: ${cold}`,
      );
  }
}

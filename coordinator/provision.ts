/**
 * `ferry provision`: a VM from a template, on a host that has room (memory and disk) and can run its CPU model, with
 * a network address from the cluster's pool that no VM has, and optionally a lease after which its host releases it.
 */
import { ErrorCode, FerryError } from '../shared/errors.js';
import type { CpuModelName } from '../shared/cpu.js';
import type { VmInfo } from '../shared/protocol.js';
import { PAGE_SIZE } from '../shared/constants.js';
import { formatBytes, parseSize } from '../shared/units.js';
import type { Cluster } from './cluster.js';
import { withClusterLock } from './cluster-lock.js';
import { withHost } from './connect.js';
import { allVms, surveyHosts } from './inventory.js';
import { DEFAULT_CPU_MODEL, cpuModelRequest, flagsMissingOn } from './cpu-models.js';
import { loadTemplates } from './templates.js';
import { checkVmName } from './vm-spec.js';

export interface ProvisionRequest {
  name: string;
  template: string;
  on?: string | undefined;
  /** `auto`, or an address with its prefix, e.g. 10.0.0.5/24. */
  ip?: string | undefined;
  leaseMs?: number | undefined;
  /** The CPU model; default the template's, else baseline. */
  cpu?: CpuModelName | undefined;
}

export interface Provisioned {
  info: VmInfo;
  /** How the host was chosen, in a sentence. */
  choice: string;
  /** The hosts that could not take the VM, each with why: down, or without the CPU flags its model needs. */
  skipped: { host: string; reason: string }[];
}

const ipToNumber = (ip: string): number => ip.split('.').reduce((value, part) => value * 256 + Number(part), 0);
const numberToIp = (value: number): string => [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join('.');

function validIp(ip: string): boolean {
  const parts = ip.split('.');
  return parts.length === 4 && parts.every((part) => /^\d{1,3}$/.test(part) && Number(part) <= 255);
}

export async function provision(clusterFile: string, cluster: Cluster, request: ProvisionRequest): Promise<Provisioned> {
  const name = checkVmName(request.name);
  const templates = await loadTemplates(clusterFile);
  const template = templates.find((entry) => entry.name === request.template);
  if (!template) {
    throw new FerryError(ErrorCode.BAD_INPUT, `no template named ${request.template}`, `known: ${templates.map((entry) => entry.name).join(', ')} (ferry template list)`);
  }
  const memoryBytes = parseSize(template.memory);
  const diskBytes = parseSize(template.disk);
  // Held from the survey to the create, so that two provisions never both see one address free.
  return withClusterLock(clusterFile, 'provision', async () => {
    const surveys = await surveyHosts(cluster);
    const vms = allVms(surveys);
    if (vms.some((vm) => vm.name === name)) {
      throw new FerryError(ErrorCode.VM_EXISTS, `a VM named ${name} already exists (on ${vms.find((vm) => vm.name === name)!.host})`, 'pick another name');
    }

    // Which hosts can run the CPU model: a `host` VM runs anywhere (it takes the flags of where it starts); a level
    // or a baseline only where every flag of it is.
    const cpuName = request.cpu ?? template.cpu ?? DEFAULT_CPU_MODEL;
    const cpuModel = cpuModelRequest(cpuName, surveys);
    const down: Provisioned['skipped'] = [];
    const cpuSkipped: Provisioned['skipped'] = [];
    const runnable = surveys.filter((survey) => {
      if (!survey.info) {
        down.push({ host: survey.host.name, reason: `did not answer (${survey.error?.code ?? 'unknown error'})` });
        return false;
      }
      const missing = flagsMissingOn(cpuModel, survey.info);
      if (missing.length > 0) {
        cpuSkipped.push({ host: survey.host.name, reason: `cannot run CPU model ${cpuName}: lacks ${missing.length} CPU flag${missing.length === 1 ? '' : 's'}: ${missing.join(' ')}` });
      }
      return missing.length === 0;
    });
    const skipped = [...cpuSkipped, ...down];
    const unfit = (host: string): { host: string; reason: string } | undefined => cpuSkipped.find((skip) => skip.host === host);
    if (request.on && unfit(request.on)) {
      throw new FerryError(ErrorCode.CPU_INCOMPATIBLE, `${request.on} ${unfit(request.on)!.reason}`, `pick another host (\`ferry hosts\` shows each host's CPU level), or another --cpu: baseline runs on every host`);
    }
    if (runnable.length === 0 && cpuSkipped.length > 0) {
      throw new FerryError(ErrorCode.CPU_INCOMPATIBLE, `no host can run CPU model ${cpuName} for ${name}: ${skipped.map((skip) => `${skip.host} ${skip.reason}`).join('; ')}`, 'pick another --cpu: baseline runs on every host');
    }

    // Where: the host with the most free memory among those with room for the memory and the disk.
    const describe = (survey: (typeof surveys)[number]): string => (survey.info
      ? `${survey.host.name} has ${formatBytes(survey.info.freeBytes)} memory and ${formatBytes(survey.info.diskFreeBytes)} disk free`
      : `${survey.host.name} did not answer`);
    const fits = runnable.filter((survey) => survey.info && survey.info.freeBytes >= memoryBytes && survey.info.diskFreeBytes >= diskBytes);
    const wanted = request.on ? fits.filter((survey) => survey.host.name === request.on) : fits;
    if (wanted.length === 0) {
      const scope = request.on ? surveys.filter((survey) => survey.host.name === request.on) : surveys;
      if (request.on && scope.length === 0) throw new FerryError(ErrorCode.HOST_NOT_FOUND, `no host named ${request.on} in the cluster file`, 'run `ferry hosts`');
      throw new FerryError(
        ErrorCode.CAPACITY,
        `no host has room for ${name} (template ${template.name}: ${formatBytes(memoryBytes)} memory, ${formatBytes(diskBytes)} disk): ${scope.map((survey) => (unfit(survey.host.name) ? `${survey.host.name} ${unfit(survey.host.name)!.reason}` : describe(survey))).join('; ') || 'the cluster has no hosts'}`,
        'free memory or disk on a host, add a host, or pick a smaller template',
      );
    }
    const chosen = [...wanted].sort((a, b) => b.info!.freeBytes - a.info!.freeBytes || b.info!.diskFreeBytes - a.info!.diskFreeBytes)[0]!;
    const choice = request.on
      ? `on ${chosen.host.name} as asked (${describe(chosen)})`
      : `on ${chosen.host.name}: the most free memory of the ${fits.length} host(s) with room${cpuSkipped.length > 0 ? ` that can run CPU model ${cpuName}` : ''} (${describe(chosen)})`;

    // Network: never an address another VM has.
    const used = new Set(vms.map((vm) => vm.ip).filter((ip): ip is string => ip !== undefined));
    let network: { ip: string; prefix: number; gateway: string } | undefined;
    if (request.ip === 'auto') {
      if (!cluster.network) throw new FerryError(ErrorCode.BAD_INPUT, '--ip auto needs an address pool in the cluster file', 'add "network": {"pool": "10.0.0.10-10.0.0.250", "prefix": 24, "gateway": "10.0.0.1"} to it');
      const [first, last] = cluster.network.pool.split('-').map(ipToNumber) as [number, number];
      let free: number | undefined;
      for (let candidate = first; candidate <= last; candidate++) {
        if (!used.has(numberToIp(candidate))) {
          free = candidate;
          break;
        }
      }
      if (free === undefined) throw new FerryError(ErrorCode.CAPACITY, `the address pool ${cluster.network.pool} is used up`, 'widen the pool in the cluster file, or release VMs');
      network = { ip: numberToIp(free), prefix: cluster.network.prefix, gateway: cluster.network.gateway };
    } else if (request.ip) {
      const [ip, prefixText] = request.ip.split('/');
      const prefix = Number(prefixText ?? cluster.network?.prefix ?? 24);
      if (!ip || !validIp(ip) || !Number.isInteger(prefix) || prefix < 0 || prefix > 32) {
        throw new FerryError(ErrorCode.BAD_INPUT, `--ip ${request.ip} is not an address`, 'write it like 10.0.0.5/24, or auto');
      }
      if (used.has(ip)) throw new FerryError(ErrorCode.BAD_INPUT, `${ip} is already used by ${vms.find((vm) => vm.ip === ip)!.name}`, 'pick another address, or --ip auto');
      network = { ip, prefix, gateway: cluster.network?.gateway ?? `${ip.split('.').slice(0, 3).join('.')}.1` };
    }

    const memoryPages = memoryBytes / PAGE_SIZE;
    const wssPages = Math.min(memoryPages, Math.floor((template.wss ? parseSize(template.wss) : memoryBytes) / PAGE_SIZE));
    const info = await withHost(chosen.host, (client) => client.request('vm.create', {
      name,
      memoryBytes,
      workload: { kind: template.workload, rate: template.rate, wssPages, seed: 1 + (ipToNumber(network?.ip ?? '0.0.0.0') % 1_000_000) },
      diskBytes,
      ...(network ? { network } : {}),
      ...(request.leaseMs ? { leaseUntil: new Date(Date.now() + request.leaseMs).toISOString() } : {}),
      cpuModel,
    }));
    return { info, choice, skipped };
  });
}

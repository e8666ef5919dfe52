/**
 * `ferry provision`: a VM from a template, on a host that has room (memory and disk) and can run its CPU model, with
 * a network address from the cluster's pool that no VM has, and optionally a lease after which its host releases it.
 *
 * A template that names an image: the chosen host clones it into the VM's disk0 (a reflink where its file system has
 * them, else a sparse copy). A host with room that lacks the image is sent it first by a host that holds it, agent to
 * agent; with `--only-holders` such hosts are skipped instead. Every provisioned VM gets a config drive (cidata.json:
 * hostname, address, the template's user data) that its guest reads at boot.
 */
import { ErrorCode, FerryError } from '../shared/errors.js';
import type { CpuModelName } from '../shared/cpu.js';
import type { ImageManifest, VmInfo } from '../shared/protocol.js';
import { NET_REGION_PAGES, PAGE_SIZE } from '../shared/constants.js';
import { formatBytes, parseSize } from '../shared/units.js';
import type { Cluster } from './cluster.js';
import { withHost } from './connect.js';
import { sendImageBetween } from './images.js';
import { allVms, surveyHosts, type HostSurvey } from './inventory.js';
import { DEFAULT_CPU_MODEL, cpuModelRequest, flagsMissingOn } from './cpu-models.js';
import { loadTemplates } from './templates.js';
import { checkVmName } from './vm-spec.js';
import { ownerName, type ClusterStore, type VmLock } from './store/store.js';

export interface ProvisionRequest {
  name: string;
  template: string;
  on?: string | undefined;
  /** `auto`, or an address with its prefix, e.g. 10.0.0.5/24. */
  ip?: string | undefined;
  leaseMs?: number | undefined;
  /** The CPU model; default the template's, else baseline. */
  cpu?: CpuModelName | undefined;
  /** Image templates: only hosts that already hold the image, rather than sending it to the one chosen. */
  onlyHolders?: boolean | undefined;
  /** Progress of an image being sent to the chosen host. */
  onImageProgress?: ((host: string, progress: { bytesDone: number; bytesTotal: number }) => void) | undefined;
}

export interface Provisioned {
  info: VmInfo;
  /** How the host was chosen, in a sentence. */
  choice: string;
  /** The hosts that could not take the VM, each with why: down, without the CPU flags its model needs, or (with
   * --only-holders) without the image. */
  skipped: { host: string; reason: string }[];
  /** The image the VM's disk came from: sent to its host first (from where, how long), and how it was cloned. */
  image?: {
    name: string;
    xxh64: string;
    sent?: { from: string; bytes: number; bytesSent: number; durationMs: number };
    cloneMethod: string;
    cloneMs: number;
  };
}

/**
 * The pool `--ip auto` draws from when the cluster file names none: 127.100.0.0/16, which loopback mode serves on any
 * host (agent/vm/net/address.ts); its first address is left out as the gateway.
 */
export const DEFAULT_LOOPBACK_POOL = { pool: '127.100.0.2-127.100.255.254', prefix: 16, gateway: '127.100.0.1' } as const;

const ipToNumber = (ip: string): number => ip.split('.').reduce((value, part) => value * 256 + Number(part), 0);
const numberToIp = (value: number): string => [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join('.');

function validIp(ip: string): boolean {
  const parts = ip.split('.');
  return parts.length === 4 && parts.every((part) => /^\d{1,3}$/.test(part) && Number(part) <= 255);
}

/**
 * Provisions under the store's `provision` lock, from the survey to the create. The address is also reserved in the
 * store from its pick to the create (with etcd, on this coordinator's lease), and an address another coordinator has
 * reserved is never picked: free means no VM has it and no one is handing it out.
 */
export async function provision(store: ClusterStore, cluster: Cluster, request: ProvisionRequest): Promise<Provisioned> {
  const name = checkVmName(request.name);
  const templates = await loadTemplates(store.localFile);
  const template = templates.find((entry) => entry.name === request.template);
  if (!template) {
    throw new FerryError(ErrorCode.BAD_INPUT, `no template named ${request.template}`, `known: ${templates.map((entry) => entry.name).join(', ')} (ferry template list)`);
  }
  const memoryBytes = parseSize(template.memory);
  const templateDiskBytes = template.disk !== undefined ? parseSize(template.disk) : 0;
  // Held from the survey to the create, so that two provisions never both see one address free.
  let reservation: VmLock | undefined;
  return store.withLock('provision', async () => {
    const surveys = await surveyHosts(cluster);
    const holders = template.image !== undefined ? await imageHolders(surveys, template.image) : undefined;
    const image = holders ? [...holders.values()][0] : undefined;
    if (template.image !== undefined && !image) {
      throw new FerryError(ErrorCode.IMAGE_NOT_FOUND, `template ${template.name} names image ${template.image}, and no host that answered holds it`, `import it first: \`ferry image import FILE --name ${template.image}\``);
    }
    if (image && templateDiskBytes > 0 && templateDiskBytes < image.bytes) {
      throw new FerryError(ErrorCode.BAD_INPUT, `template ${template.name}'s disk (${formatBytes(templateDiskBytes)}) is smaller than its image ${image.name} (${formatBytes(image.bytes)})`, 'give the template a disk at least as large as the image, or none');
    }
    const diskBytes = Math.max(templateDiskBytes, image?.bytes ?? 0);
    // A host that lacks the image stores it too before cloning it.
    const diskNeeded = (survey: HostSurvey): number => diskBytes + (image && !holders!.has(survey.host.name) ? image.bytes : 0);
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
      // A host in maintenance or degraded takes no new VMs (`ferry host drain`, `ferry host health`).
      if (survey.info.maintenance || survey.info.health?.state === 'degraded') {
        down.push({ host: survey.host.name, reason: survey.info.maintenance ? 'is in maintenance' : `is degraded (${survey.info.health!.reasons.map((reason) => reason.reason).join('; ')})` });
        return false;
      }
      const missing = flagsMissingOn(cpuModel, survey.info);
      if (missing.length > 0) {
        cpuSkipped.push({ host: survey.host.name, reason: `cannot run CPU model ${cpuName}: lacks ${missing.length} CPU flag${missing.length === 1 ? '' : 's'}: ${missing.join(' ')}` });
      }
      return missing.length === 0;
    });
    const unfit = (host: string): { host: string; reason: string } | undefined => cpuSkipped.find((skip) => skip.host === host);
    if (request.on && unfit(request.on)) {
      throw new FerryError(ErrorCode.CPU_INCOMPATIBLE, `${request.on} ${unfit(request.on)!.reason}`, `pick another host (\`ferry hosts\` shows each host's CPU level), or another --cpu: baseline runs on every host`);
    }
    if (runnable.length === 0 && cpuSkipped.length > 0) {
      throw new FerryError(ErrorCode.CPU_INCOMPATIBLE, `no host can run CPU model ${cpuName} for ${name}: ${[...cpuSkipped, ...down].map((skip) => `${skip.host} ${skip.reason}`).join('; ')}`, 'pick another --cpu: baseline runs on every host');
    }

    // Where: the host with the most free memory among those with room for the memory and the disk.
    const describe = (survey: (typeof surveys)[number]): string => (survey.info
      ? `${survey.host.name} has ${formatBytes(survey.info.freeBytes)} memory and ${formatBytes(survey.info.diskFreeBytes)} disk free`
      : `${survey.host.name} did not answer`);
    const roomy = runnable.filter((survey) => survey.info && survey.info.freeBytes >= memoryBytes && survey.info.diskFreeBytes >= diskNeeded(survey));
    const imageSkipped: Provisioned['skipped'] = request.onlyHolders && image
      ? roomy.filter((survey) => !holders!.has(survey.host.name)).map((survey) => ({ host: survey.host.name, reason: `it does not hold image ${image.name} (--only-holders)` }))
      : [];
    const skipped = [...cpuSkipped, ...imageSkipped, ...down];
    const fits = roomy.filter((survey) => !imageSkipped.some((skip) => skip.host === survey.host.name));
    const wanted = request.on ? fits.filter((survey) => survey.host.name === request.on) : fits;
    if (wanted.length === 0) {
      const scope = request.on ? surveys.filter((survey) => survey.host.name === request.on) : surveys;
      if (request.on && scope.length === 0) throw new FerryError(ErrorCode.HOST_NOT_FOUND, `no host named ${request.on} in the cluster file`, 'run `ferry hosts`');
      if (imageSkipped.length > 0) {
        throw new FerryError(
          ErrorCode.CAPACITY,
          `no host that holds image ${image!.name} has room for ${name}: ${imageSkipped.map((skip) => `${skip.host} has room but ${skip.reason}`).join('; ')}`,
          `drop --only-holders to have the image sent there, or \`ferry image import FILE --name ${image!.name} --on HOST\``,
        );
      }
      throw new FerryError(
        ErrorCode.CAPACITY,
        `no host has room for ${name} (template ${template.name}: ${formatBytes(memoryBytes)} memory, ${formatBytes(diskBytes)} disk${image ? `, plus ${formatBytes(image.bytes)} for image ${image.name} where it is not yet` : ''}): ${scope.map((survey) => {
          const refusal = unfit(survey.host.name) ?? down.find((skip) => skip.host === survey.host.name);
          return refusal ? `${survey.host.name} ${refusal.reason}` : describe(survey);
        }).join('; ') || 'the cluster has no hosts'}`,
        'free memory or disk on a host, add a host, or pick a smaller template',
      );
    }
    const chosen = [...wanted].sort((a, b) => b.info!.freeBytes - a.info!.freeBytes || b.info!.diskFreeBytes - a.info!.diskFreeBytes)[0]!;
    const choice = request.on
      ? `on ${chosen.host.name} as asked (${describe(chosen)})`
      : `on ${chosen.host.name}: the most free memory of the ${fits.length} host(s) with room${cpuSkipped.length > 0 ? ` that can run CPU model ${cpuName}` : ''}${imageSkipped.length > 0 ? ` that hold image ${image!.name}` : ''} (${describe(chosen)})`;

    // Network: never an address another VM has, or another coordinator is handing out.
    const used = new Set(vms.map((vm) => vm.ip).filter((ip): ip is string => ip !== undefined));
    const reserved = await store.reservedAddresses();
    const owner = `${ownerName()}, provisioning ${name}`;
    let network: { ip: string; prefix: number; gateway: string } | undefined;
    if (request.ip === 'auto') {
      // Without a pool of its own, the cluster hands out loopback addresses, which loopback mode serves anywhere.
      const pool = cluster.network ?? DEFAULT_LOOPBACK_POOL;
      const [first, last] = pool.pool.split('-').map(ipToNumber) as [number, number];
      let free: number | undefined;
      for (let candidate = first; candidate <= last; candidate++) {
        const ip = numberToIp(candidate);
        if (used.has(ip) || reserved.has(ip)) continue;
        reservation = await store.reserveAddress(ip, owner);
        if (reservation) {
          free = candidate;
          break;
        }
      }
      if (free === undefined) throw new FerryError(ErrorCode.CAPACITY, `the address pool ${pool.pool} is used up`, 'widen the pool in the cluster file, or release VMs');
      network = { ip: numberToIp(free), prefix: pool.prefix, gateway: pool.gateway };
    } else if (request.ip) {
      const [ip, prefixText] = request.ip.split('/');
      const prefix = Number(prefixText ?? cluster.network?.prefix ?? 24);
      if (!ip || !validIp(ip) || !Number.isInteger(prefix) || prefix < 0 || prefix > 32) {
        throw new FerryError(ErrorCode.BAD_INPUT, `--ip ${request.ip} is not an address`, 'write it like 10.0.0.5/24, or auto');
      }
      if (used.has(ip)) throw new FerryError(ErrorCode.BAD_INPUT, `${ip} is already used by ${vms.find((vm) => vm.ip === ip)!.name}`, 'pick another address, or --ip auto');
      reservation = await store.reserveAddress(ip, owner);
      if (!reservation) throw new FerryError(ErrorCode.BAD_INPUT, `${ip} is being given to another VM by another ferry (reserved in ${store.location})`, 'pick another address, or --ip auto');
      network = { ip, prefix, gateway: cluster.network?.gateway ?? `${ip.split('.').slice(0, 3).join('.')}.1` };
    }

    const memoryPages = memoryBytes / PAGE_SIZE;
    // An address is served by a network device at the top of guest memory: the working set stays below it.
    const roomPages = network ? memoryPages - NET_REGION_PAGES : memoryPages;
    const wssPages = Math.min(roomPages, Math.floor((template.wss ? parseSize(template.wss) : memoryBytes) / PAGE_SIZE));

    // The image onto the chosen host first, from a host that holds it: agent to agent, checked there.
    let sent: NonNullable<Provisioned['image']>['sent'];
    if (image && !holders!.has(chosen.host.name)) {
      const from = surveys.find((survey) => holders!.has(survey.host.name))!.host;
      const result = await sendImageBetween(from, chosen.host, image.name, (progress) => request.onImageProgress?.(chosen.host.name, progress));
      sent = { from: from.name, ...result };
    }
    const info = await withHost(chosen.host, (client) => client.request('vm.create', {
      name,
      memoryBytes,
      workload: { kind: template.workload, rate: template.rate, wssPages, seed: 1 + (ipToNumber(network?.ip ?? '0.0.0.0') % 1_000_000) },
      ...(image ? { image: image.name, ...(templateDiskBytes > image.bytes ? { diskBytes } : {}) } : { diskBytes }),
      ...(network ? { network } : {}),
      ...(request.leaseMs ? { leaseUntil: new Date(Date.now() + request.leaseMs).toISOString() } : {}),
      configDrive: { userData: template.userData ?? '' },
      cpuModel,
    }));
    const cloned = info.image;
    return {
      info,
      choice,
      skipped,
      ...(image && cloned ? { image: { name: image.name, xxh64: image.xxh64, ...(sent ? { sent } : {}), cloneMethod: cloned.cloneMethod, cloneMs: cloned.cloneMs } } : {}),
    };
  }).finally(() => reservation?.release().catch(() => undefined));
}

/**
 * The hosts that answered and hold image `name`, with their manifests. Hosts whose images of that name differ (another
 * digest) would give VMs different disks from one template: refused, naming them.
 */
async function imageHolders(surveys: HostSurvey[], name: string): Promise<Map<string, ImageManifest>> {
  const holders = new Map<string, ImageManifest>();
  await Promise.all(surveys.filter((survey) => survey.info).map(async (survey) => {
    const held = await withHost(survey.host, (client) => client.request('image.list', {}));
    const found = held.images.find((image) => image.name === name);
    if (found) holders.set(survey.host.name, found);
  }));
  const digests = new Set([...holders.values()].map((image) => image.xxh64));
  if (digests.size > 1) {
    throw new FerryError(
      ErrorCode.IMAGE_EXISTS,
      `hosts hold different images named ${name}: ${[...holders.entries()].map(([host, image]) => `${host} ${image.xxh64}`).join(', ')}`,
      `keep one: \`ferry image rm ${name} --on HOST\` where it is wrong (\`ferry image list --verify\` tells which copy is damaged)`,
    );
  }
  // In the cluster file's order, so the host an image is sent from is the same from run to run.
  return new Map(surveys.filter((survey) => holders.has(survey.host.name)).map((survey) => [survey.host.name, holders.get(survey.host.name)!]));
}

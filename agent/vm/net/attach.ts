/**
 * Gives a VM its network device on this host: checks that its working set stays below the device, makes the device
 * (a fresh boot) or finds it in guest memory (a resume, a migration's destination), tells the vCPU to serve it, and
 * claims the address. Called with the vCPU paused, before it runs.
 */
import { ErrorCode, FerryError } from '../../../shared/errors.js';
import type { Logger } from '../../../shared/log.js';
import type { Network, WorkloadSpec } from '../../../shared/protocol.js';
import type { VirtualMachine } from '../vm.js';
import type { AddressMode, ClientDatagram } from './address.js';
import { NetBackend } from './backend.js';
import { NET_SERVICE_PORT, workingSetOverlap } from './device.js';

/**
 * Why a VM of this shape cannot be made, or undefined: an addressed VM's working set must stay below the device,
 * and a `kv` VM serves nothing without an address that this host's mode can serve.
 */
export function networkRefusal(mode: AddressMode, name: string, pageCount: number, workload: WorkloadSpec, network: Pick<Network, 'ip'> | null | undefined): FerryError | undefined {
  const served = network ? mode.refuses(network.ip) === undefined : false;
  if (workload.kind === 'kv' && !served) {
    const why = network ? ` (${mode.refuses(network.ip)})` : '';
    return new FerryError(ErrorCode.BAD_INPUT, `a kv VM serves its table over the network: ${name} needs an address this host can serve${why}`, 'give it one with --ip, e.g. --ip 127.100.0.5, or --ip auto when provisioning');
  }
  if (!served) return undefined;
  const overlap = workingSetOverlap(pageCount, workload.wssPages);
  if (overlap) return new FerryError(ErrorCode.BAD_INPUT, `${name} has an address, and ${overlap}`, 'give a smaller --wss (the CLI\'s default leaves room for the device), or more --memory');
  if (workload.kind === 'kv' && workload.wssPages < 2) {
    return new FerryError(ErrorCode.BAD_INPUT, `${name}'s kv table needs a working set of at least 2 pages`, 'give --wss 1MiB or more');
  }
  return undefined;
}

export interface AttachOptions {
  mode: AddressMode;
  log: Logger;
  /** A fresh boot makes an empty device; otherwise the device must already be in guest memory. */
  fresh: boolean;
  /** Datagrams that arrived for the VM before it could serve (forwarded during a migration's switchover). */
  earlier?: ClientDatagram[];
}

/** Attaches the device when the VM has an address this host serves; returns whether it did. */
export async function attachNetwork(vm: VirtualMachine, { mode, log, fresh, earlier }: AttachOptions): Promise<boolean> {
  const network = vm.network;
  if (!network) return false;
  const refused = mode.refuses(network.ip);
  if (refused !== undefined) {
    log.warn('the VM\'s address is not served on this host', { vm: vm.name, ip: network.ip, reason: refused });
    return false;
  }
  const refusal = networkRefusal(mode, vm.name, vm.pageCount, vm.workload, network);
  if (refusal) throw refusal;
  const device = vm.netDevice();
  if (fresh) device.initialise();
  else if (!device.isValid()) {
    throw new FerryError(ErrorCode.VM_STATE, `${vm.name}'s guest memory holds no network device this agent understands`, 'run the same ferry version on every host');
  }
  vm.setNetPresent(true);
  vm.net = await NetBackend.start(device, mode.bind(network.ip, NET_SERVICE_PORT), () => vm.ringDoorbell(), log, earlier);
  log.info('serving', { vm: vm.name, address: vm.net.address });
  return true;
}

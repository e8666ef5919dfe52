/**
 * A VM's config drive, `cidata.json` in its folder: how provisioning customises a VM, after cloud-init's NoCloud
 * seed. NoCloud reads three files from a volume labelled `cidata` (meta-data, network-config, user-data); ferry keeps
 * them as three keys of one flat file, so that cold and live migration carry it like the VM's other small files.
 *
 *   {"meta-data":      {"instance-id": "iid-...", "local-hostname": "<vm name>"},
 *    "network-config": {"address", "prefix", "gateway", "mac"} | null,
 *    "user-data":      "<the template's userData>"}
 *
 * The guest reads it when it boots (agent/vm/vcpu-worker.ts) and takes its hostname from it.
 */
import { randomBytes } from 'node:crypto';
import { configDriveSchema, type ConfigDrive, type Network } from '../../shared/protocol.js';

export const CONFIG_DRIVE_FILE = 'cidata.json';

/** A new VM's config drive; the instance id is drawn once and stays with the VM wherever it moves. */
export function makeConfigDrive(name: string, network: Network | null, userData: string): ConfigDrive {
  return configDriveSchema.parse({
    'meta-data': { 'instance-id': `iid-${randomBytes(8).toString('hex')}`, 'local-hostname': name },
    'network-config': network ? { address: network.ip, prefix: network.prefix, gateway: network.gateway, mac: network.mac } : null,
    'user-data': userData,
  });
}

/** The file's text, as written and as it travels. */
export function configDriveText(drive: ConfigDrive): string {
  return `${JSON.stringify(drive, null, 2)}\n`;
}

/** A config drive's text as read back (from disk or from a migration's source), checked. */
export function parseConfigDrive(text: string): ConfigDrive {
  return configDriveSchema.parse(JSON.parse(text));
}

/**
 * Gives a VM the block layer of its first disk on this host (block-backend.ts): opens the image where the datastore
 * keeps it and serves the VM's block mailbox. Called with the vCPU paused, before it runs: at creation, at power-on
 * (fresh or from suspend) and at a live migration's activation. The block layer stops with the VM (vm.ts, destroy).
 * A VM with no disk, or on an agent without a datastore, gets none: its vCPU then makes no disk writes.
 */
import type { Logger } from '../../../shared/log.js';
import type { Datastore } from '../../datastore/datastore.js';
import type { VirtualMachine } from '../vm.js';
import { BLOCK_SIZE, BlockBackend } from './block-backend.js';

/** Starts `vm.disk0` when the VM has a first disk here; returns whether it did. */
export async function attachDisk(vm: VirtualMachine, files: Datastore | undefined, log: Logger): Promise<boolean> {
  const disk = vm.disks[0];
  if (!disk || !files || vm.disk0) return false;
  const blockCount = Math.floor(disk.sizeBytes / BLOCK_SIZE);
  if (blockCount === 0) return false;
  vm.disk0 = await BlockBackend.start(vm.diskMailbox, files.diskPath(vm.name, disk), blockCount, log);
  log.debug('disk attached', { vm: vm.name, file: vm.disk0.file, blocks: blockCount });
  return true;
}

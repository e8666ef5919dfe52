/**
 * An agent's datastore: one folder per VM, named after it.
 *
 *   <datastore>/vms/<name>/
 *     config.json   name, memory, vCPU workload, disks, network, ownership epoch (written whole: temp, fsync, rename)
 *     nvram.bin     the VM's BIOS settings: 64 bytes, "FERRYNV1", the boot order, a SHA-256 check (nvramIsValid, below)
 *     vm.log        what happened to the VM, a line per event, appended
 *     disk0.img     a sparse disk image, when the VM has a disk
 *     suspend.bin   guest memory, when suspended (with suspend.json: registers and a digest of the image)
 *
 * A crash never leaves a half-written config.json (write, sync, rename), and a suspend image counts only once its
 * suspend.json, written last, says so. Leftover temporary files are removed when the agent starts.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { appendFile, mkdir, open, readFile, readdir, rename, rm, statfs, truncate } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { ErrorCode, FerryError } from '../shared/errors.js';
import { networkSchema, registersSchema, workloadSpecSchema, type Registers } from '../shared/protocol.js';

export const vmConfigSchema = z.object({
  name: z.string(),
  memoryBytes: z.number().int().positive(),
  workload: workloadSpecSchema,
  epoch: z.number().int().min(1),
  /** Disk images: in the VM's folder, or (`shared`) in the shared storage every agent of the cluster mounts. */
  disks: z.array(z.object({ file: z.string().regex(/^disk\d+\.img$/), sizeBytes: z.number().int().positive(), shared: z.boolean().optional() })),
  network: networkSchema.nullable(),
  leaseUntil: z.string().nullable().default(null),
  /** Set on a VM that arrived by cold migration until its source has dropped its copy (cold.ts). */
  coldFrom: z.object({ migrationId: z.string(), sourceUrl: z.string() }).optional(),
  createdAt: z.string(),
});
export type VmConfig = z.infer<typeof vmConfigSchema>;

const suspendSchema = z.object({ registers: registersSchema, memoryBytes: z.number(), sha256: z.string(), takenAt: z.string() });

export interface StoredVm {
  config: VmConfig;
  suspended: boolean;
  /** A suspended VM's registers, as saved. */
  registers?: Registers;
}

const NVRAM_MAGIC = 'FERRYNV1';

/** BIOS settings: magic, format version, boot order (disk, network), zeros, and a SHA-256 check of the first 32 bytes. */
export function defaultNvram(): Buffer {
  const nvram = Buffer.alloc(64);
  nvram.write(NVRAM_MAGIC, 0, 'ascii');
  nvram.writeUInt16LE(1, 8);
  Buffer.from([1, 2, 0, 0]).copy(nvram, 10); // boot order: 1 = disk, 2 = network
  createHash('sha256').update(nvram.subarray(0, 32)).digest().copy(nvram, 32);
  return nvram;
}

export function nvramIsValid(nvram: Buffer): boolean {
  return nvram.length === 64
    && nvram.toString('ascii', 0, 8) === NVRAM_MAGIC
    && createHash('sha256').update(nvram.subarray(0, 32)).digest().equals(nvram.subarray(32, 64));
}

/** A locally administered, unicast MAC address. */
export function randomMac(): string {
  const bytes = randomBytes(6);
  bytes[0] = (bytes[0]! & 0xfe) | 0x02;
  return [...bytes].map((byte) => byte.toString(16).padStart(2, '0')).join(':');
}

/** Makes a rename in `folder` durable: the folder's own entry list is synced. */
async function syncFolder(folder: string): Promise<void> {
  const handle = await open(folder, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function writeWhole(file: string, data: string | Buffer): Promise<void> {
  const temporary = `${file}.tmp`;
  const handle = await open(temporary, 'w');
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(temporary, file);
  await syncFolder(path.dirname(file));
}

export class Datastore {
  readonly root: string;
  /** Storage every agent of the cluster mounts at the same path (--shared-storage), for disks that stay put. */
  readonly shared: string | undefined;

  constructor(root: string, shared?: string) {
    this.root = root;
    this.shared = shared;
  }

  /** The shared storage's identity: a random id kept in it, the same for every agent that mounts it. */
  async sharedStorageId(): Promise<string | undefined> {
    if (!this.shared) return undefined;
    const file = path.join(this.shared, '.ferry-storage-id');
    try {
      return (await readFile(file, 'utf8')).trim();
    } catch {
      await mkdir(this.shared, { recursive: true });
      const id = randomBytes(16).toString('hex');
      try {
        const handle = await open(file, 'wx');
        await handle.writeFile(`${id}\n`);
        await handle.close();
        return id;
      } catch {
        return (await readFile(file, 'utf8')).trim(); // another agent made it first
      }
    }
  }

  /** Where a disk image lives. */
  diskPath(vm: string, disk: { file: string; shared?: boolean | undefined }): string {
    if (disk.shared) {
      if (!this.shared) throw new FerryError(ErrorCode.IO, `${vm}'s ${disk.file} is on shared storage, and this agent mounts none`, 'start the agent with --shared-storage DIR');
      return path.join(this.shared, vm, disk.file);
    }
    return path.join(this.folder(vm), disk.file);
  }

  folder(name: string): string {
    return path.join(this.root, 'vms', name);
  }

  /** Where a cold migration's files gather before they are registered; emptied when the agent starts. */
  stagingFolder(migrationId: string): string {
    return path.join(this.root, 'staging', migrationId);
  }

  /** Moves a finished staging folder into place as VM `name`'s folder (one rename), and syncs the parent. */
  async adopt(stagingFolder: string, name: string): Promise<void> {
    const target = this.folder(name);
    if (existsSync(target)) throw new FerryError(ErrorCode.VM_EXISTS, `${name} already has a folder in ${this.root}`, 'destroy it first, or migrate under another host');
    await mkdir(path.dirname(target), { recursive: true });
    await rename(stagingFolder, target);
    await syncFolder(path.dirname(target));
  }

  /** Free bytes on the file system that holds the datastore. */
  async freeBytes(): Promise<number> {
    await mkdir(this.root, { recursive: true });
    const stats = await statfs(this.root);
    return stats.bavail * stats.bsize;
  }

  /** Every VM found in the datastore, after removing what a crash may have left half-written. */
  async scan(): Promise<StoredVm[]> {
    const vms = path.join(this.root, 'vms');
    await mkdir(vms, { recursive: true });
    // A cold migration that never finished leaves a staging folder: its source still has the VM.
    await rm(path.join(this.root, 'staging'), { recursive: true, force: true });
    const found: StoredVm[] = [];
    for (const name of await readdir(vms)) {
      const folder = path.join(vms, name);
      for (const file of await readdir(folder).catch(() => [])) {
        if (file.endsWith('.tmp')) await rm(path.join(folder, file), { force: true });
      }
      try {
        const config = vmConfigSchema.parse(JSON.parse(await readFile(path.join(folder, 'config.json'), 'utf8')));
        const suspendFile = path.join(folder, 'suspend.json');
        if (existsSync(suspendFile)) {
          const { registers } = suspendSchema.parse(JSON.parse(await readFile(suspendFile, 'utf8')));
          found.push({ config, suspended: true, registers });
        } else {
          found.push({ config, suspended: false });
        }
      } catch {
        // No whole config: a VM whose creation did not finish. Leave its files for a person to look at.
      }
    }
    return found;
  }

  /** Writes a new VM's folder: config, NVRAM, log, sparse disks. */
  async create(config: VmConfig, nvram: Buffer = defaultNvram(), log = ''): Promise<void> {
    const folder = this.folder(config.name);
    await mkdir(folder, { recursive: true });
    for (const disk of config.disks) {
      const file = this.diskPath(config.name, disk);
      await mkdir(path.dirname(file), { recursive: true });
      if (!existsSync(file)) {
        await (await open(file, 'w')).close();
        await truncate(file, disk.sizeBytes); // sparse: takes no blocks until written
      }
    }
    await writeWhole(path.join(folder, 'nvram.bin'), nvram);
    if (log) await writeWhole(path.join(folder, 'vm.log'), log);
    await this.writeConfig(config);
  }

  async writeConfig(config: VmConfig): Promise<void> {
    await writeWhole(path.join(this.folder(config.name), 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  }

  async log(name: string, event: string): Promise<void> {
    await appendFile(path.join(this.folder(name), 'vm.log'), `${new Date().toISOString()} ${event}\n`);
  }

  async readLog(name: string): Promise<string> {
    return readFile(path.join(this.folder(name), 'vm.log'), 'utf8').catch(() => '');
  }

  async readNvram(name: string): Promise<Buffer> {
    return readFile(path.join(this.folder(name), 'nvram.bin'));
  }

  /** Saves guest memory and registers; the image counts once suspend.json (written last) exists. */
  async saveSuspend(name: string, memory: Uint8Array, registers: Registers): Promise<void> {
    const folder = this.folder(name);
    const image = path.join(folder, 'suspend.bin');
    const hash = createHash('sha256');
    const handle = await open(`${image}.tmp`, 'w');
    try {
      const chunk = 8 * 1024 * 1024;
      for (let offset = 0; offset < memory.length; offset += chunk) {
        const part = memory.subarray(offset, Math.min(offset + chunk, memory.length));
        hash.update(part);
        await handle.write(part);
      }
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(`${image}.tmp`, image);
    await writeWhole(path.join(folder, 'suspend.json'), JSON.stringify({ registers, memoryBytes: memory.length, sha256: hash.digest('hex'), takenAt: new Date().toISOString() }));
  }

  /** Reads a suspend image back into `memory` (checked against its digest) and returns the registers. */
  async loadSuspend(name: string, memory: Uint8Array): Promise<Registers> {
    const folder = this.folder(name);
    const meta = suspendSchema.parse(JSON.parse(await readFile(path.join(folder, 'suspend.json'), 'utf8')));
    if (meta.memoryBytes !== memory.length) {
      throw new FerryError(ErrorCode.IO, `the suspend image of ${name} is ${meta.memoryBytes} bytes, its memory ${memory.length}`, 'the VM\'s files are inconsistent; stop it to discard the image');
    }
    const hash = createHash('sha256');
    const handle = await open(path.join(folder, 'suspend.bin'), 'r');
    try {
      const chunk = 8 * 1024 * 1024;
      for (let offset = 0; offset < memory.length; offset += chunk) {
        const part = memory.subarray(offset, Math.min(offset + chunk, memory.length));
        await handle.read(part, 0, part.length, offset);
        hash.update(part);
      }
    } finally {
      await handle.close();
    }
    if (hash.digest('hex') !== meta.sha256) {
      throw new FerryError(ErrorCode.CHECKSUM_MISMATCH, `the suspend image of ${name} does not match its digest`, 'the image is damaged; stop the VM to discard it');
    }
    return meta.registers;
  }

  async dropSuspend(name: string): Promise<void> {
    const folder = this.folder(name);
    await rm(path.join(folder, 'suspend.json'), { force: true });
    await rm(path.join(folder, 'suspend.bin'), { force: true });
  }

  /** Removes the VM's folder; with `sharedDisks`, its disks on shared storage too (they are not removed otherwise). */
  async remove(name: string, sharedDisks = false): Promise<void> {
    await rm(this.folder(name), { recursive: true, force: true });
    if (sharedDisks && this.shared) await rm(path.join(this.shared, name), { recursive: true, force: true });
  }
}

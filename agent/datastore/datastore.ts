/**
 * An agent's datastore: one folder per VM, named after it.
 *
 *   <datastore>/vms/<name>/
 *     config.json   name, memory, vCPU workload, disks, network, ownership epoch, CPU model (written whole: temp, fsync, rename)
 *     nvram.bin     the VM's BIOS settings: 64 bytes with a SHA-256 check (nvram.ts)
 *     vm.log        what happened to the VM, a line per event, appended
 *     disk0.img     a sparse disk image, when the VM has a disk (cloned from an image when provisioned from one)
 *     cidata.json   its config drive, when provisioned (config-drive.ts)
 *     suspend.bin   guest memory, when suspended (with suspend.json: registers and a digest of the image)
 *   <datastore>/images/<name>/            an image: disk.img and manifest.json (images.ts)
 *   <datastore>/staging/<id>/             a cold migration's files, or an image being received or captured, until
 *                                         they are registered (migration/cold.ts, images.ts)
 *
 * A crash never leaves a half-written config.json (write, sync, rename), and a suspend image counts only once its
 * suspend.json, written last, says so. Leftover temporary files and staging folders are removed when the agent
 * starts (`recover`), and only then: at any other time they belong to work under way.
 *
 * Every path is built by `resolveInside` (paths.ts) from plain names, so no name from the network reaches outside.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { appendFile, mkdir, open, readFile, readdir, rename, rm, statfs, truncate } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import type { ConfigDrive, GuestFacts, ImageManifest, Registers } from '../../shared/protocol.js';
import { suspendSchema, vmConfigSchema, withCpuModel, type StoredVm, type VmConfigFile } from './config.js';
import { CONFIG_DRIVE_FILE, configDriveText, parseConfigDrive } from './config-drive.js';
import { cloneDisk, type Cloned } from './clone.js';
import { ImageStore } from './images.js';
import { defaultNvram } from './nvram.js';
import { resolveInside } from './paths.js';
import { syncPath, writeWhole } from './durable.js';

/** What `recover` found: the VMs, and the folders it could not read (left for a person to look at). */
export interface Recovered {
  vms: StoredVm[];
  unreadable: { name: string; error: string }[];
}

export class Datastore {
  readonly root: string;
  /** Storage every agent of the cluster mounts at the same path (--shared-storage), for disks that stay put. */
  readonly shared: string | undefined;
  /** The flags this host's CPU offers guests: the CPU model of a VM whose config predates CPU models. */
  readonly hostCpuFlags: readonly string[];
  /** The images this agent holds. */
  readonly images: ImageStore;

  constructor(root: string, shared?: string, hostCpuFlags: readonly string[] = []) {
    this.root = root;
    this.shared = shared;
    this.hostCpuFlags = hostCpuFlags;
    this.images = new ImageStore(this);
  }

  /** The shared storage's identity: a random id kept in it, the same for every agent that mounts it. */
  async sharedStorageId(): Promise<string | undefined> {
    if (!this.shared) return undefined;
    const file = path.join(this.shared, '.ferry-storage-id');
    const existing = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return undefined;
      throw error;
    });
    if (existing !== undefined) return existing.trim();
    await mkdir(this.shared, { recursive: true });
    const id = randomBytes(16).toString('hex');
    try {
      const handle = await open(file, 'wx');
      await handle.writeFile(`${id}\n`);
      await handle.close();
      return id;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      return (await readFile(file, 'utf8')).trim(); // another agent made it first
    }
  }

  /** Where a disk image lives. */
  diskPath(vm: string, disk: { file: string; shared?: boolean | undefined }): string {
    if (disk.shared) {
      if (!this.shared) throw new FerryError(ErrorCode.IO, `${vm}'s ${disk.file} is on shared storage, and this agent mounts none`, 'start the agent with --shared-storage DIR');
      return resolveInside(this.shared, vm, disk.file);
    }
    return resolveInside(this.root, 'vms', vm, disk.file);
  }

  folder(name: string): string {
    return resolveInside(this.root, 'vms', name);
  }

  /** A file of VM `name`'s folder. */
  file(name: string, file: string): string {
    return resolveInside(this.root, 'vms', name, file);
  }

  /** Where a cold migration's files gather before they are registered; dropped when the agent starts. */
  stagingFolder(migrationId: string): string {
    return resolveInside(this.root, 'staging', migrationId);
  }

  /** A file of a cold migration's staging folder. */
  stagingFile(migrationId: string, file: string): string {
    return resolveInside(this.root, 'staging', migrationId, file);
  }

  /** Moves a finished staging folder into place as VM `name`'s folder (one rename), and syncs the parent. */
  async adopt(migrationId: string, name: string): Promise<void> {
    const target = this.folder(name);
    if (existsSync(target)) throw new FerryError(ErrorCode.VM_EXISTS, `${name} already has a folder in ${this.root}`, 'destroy it first, or migrate under another host');
    await mkdir(path.dirname(target), { recursive: true });
    await rename(this.stagingFolder(migrationId), target);
    await syncPath(path.dirname(target));
  }

  /**
   * Clones image `image` into VM `name`'s disk (clone.ts: a reflink where the file system can, else a sparse copy),
   * grown to `disk.sizeBytes` if that is larger. Written beside the disk as a `.tmp` file and renamed into place, so a
   * crash leaves no half disk under the disk's name (and `recover` removes the `.tmp`).
   */
  async cloneImage(image: ImageManifest, name: string, disk: { file: string; sizeBytes: number; shared?: boolean | undefined }): Promise<Cloned> {
    const target = this.diskPath(name, disk);
    const temporary = `${target}.tmp`;
    await mkdir(path.dirname(target), { recursive: true });
    try {
      const cloned = await cloneDisk(this.images.diskPath(image.name), temporary, image, disk.sizeBytes);
      await rename(temporary, target);
      await syncPath(path.dirname(target));
      return cloned;
    } catch (error) {
      await rm(temporary, { force: true });
      // The image was looked up before the clone began; `ferry image rm` may have removed it since.
      if ((error as NodeJS.ErrnoException).code === 'ENOENT' && !existsSync(this.images.diskPath(image.name))) {
        throw new FerryError(ErrorCode.IMAGE_NOT_FOUND, `image ${image.name} was removed from this host while a VM was being cloned from it`, `send or import it here again (\`ferry image list\` shows who holds it), then retry`, { cause: error });
      }
      throw error;
    }
  }

  /** Free bytes on the file system that holds the datastore. */
  async freeBytes(): Promise<number> {
    await mkdir(this.root, { recursive: true });
    const stats = await statfs(this.root);
    return stats.bavail * stats.bsize;
  }

  /**
   * At startup only: removes what a crash may have left half-written (temporary files, staging folders of cold
   * migrations that never finished: their sources still have those VMs) and finds every VM. Never while the agent
   * serves: staging folders and temporary files then belong to work under way.
   */
  async recover(): Promise<Recovered> {
    const vms = path.join(this.root, 'vms');
    await mkdir(vms, { recursive: true });
    await rm(path.join(this.root, 'staging'), { recursive: true, force: true });
    const recovered: Recovered = { vms: [], unreadable: [] };
    for (const name of await readdir(vms)) {
      let folder: string;
      try {
        folder = this.folder(name);
      } catch (error) {
        recovered.unreadable.push({ name, error: (error as Error).message });
        continue;
      }
      // An entry of vms/ that is not a folder holds no temporary files; readStored below says what it is.
      for (const file of await readdir(folder).catch(() => [] as string[])) {
        if (file.endsWith('.tmp')) await rm(path.join(folder, file), { force: true });
      }
      try {
        const stored = await this.readStored(name);
        // A storage move to shared storage that died with this agent left its partial copy there.
        if (this.shared) {
          const sharedFolder = resolveInside(this.shared, name);
          for (const file of await readdir(sharedFolder).catch(() => [] as string[])) {
            if (file.endsWith('.tmp')) await rm(path.join(sharedFolder, file), { force: true });
          }
        }
        recovered.vms.push(stored);
      } catch (error) {
        // No whole config: a VM whose creation did not finish. Its files stay for a person to look at.
        recovered.unreadable.push({ name, error: (error as Error).message });
      }
    }
    return recovered;
  }

  /** One VM as its files describe it: its config, and whether it is suspended (with the saved registers). */
  async readStored(name: string): Promise<StoredVm> {
    const config = withCpuModel(vmConfigSchema.parse(JSON.parse(await readFile(this.file(name, 'config.json'), 'utf8'))), this.hostCpuFlags);
    if (config.name !== name) throw new FerryError(ErrorCode.IO, `the folder ${name} holds the config of ${config.name}`, 'rename the folder or fix its config.json');
    const suspendFile = this.file(name, 'suspend.json');
    if (!existsSync(suspendFile)) return { config, suspended: false };
    const { registers } = suspendSchema.parse(JSON.parse(await readFile(suspendFile, 'utf8')));
    return { config, suspended: true, registers };
  }

  /**
   * Makes a new VM's folder, empty. A folder already there (a creation that never finished, left for a person to
   * look at) is refused rather than reused. Whoever made it removes it if the VM is not finished (`remove`).
   */
  async makeFolder(name: string): Promise<void> {
    const folder = this.folder(name);
    await mkdir(path.dirname(folder), { recursive: true });
    try {
      await mkdir(folder);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      throw new FerryError(ErrorCode.VM_EXISTS, `${this.root} already has a folder for ${name}, though no VM of that name`, `look at ${folder} (a creation that never finished?) and remove it, or pick another name`);
    }
  }

  /**
   * Fills a VM folder made by `makeFolder`: config drive, NVRAM, log, sparse disks (a disk already in place, cloned
   * from an image, is kept; so is a disk on shared storage, which is the VM's own arriving live), and config.json
   * last: the VM exists once it does.
   */
  async fill(config: VmConfigFile, nvram: Buffer = defaultNvram(), log = '', configDrive?: string): Promise<void> {
    if (configDrive !== undefined) await writeWhole(this.file(config.name, CONFIG_DRIVE_FILE), configDrive);
    for (const disk of config.disks) {
      const file = this.diskPath(config.name, disk);
      await mkdir(path.dirname(file), { recursive: true });
      if (!existsSync(file)) {
        await (await open(file, 'w')).close();
        await truncate(file, disk.sizeBytes); // sparse: takes no blocks until written
      }
    }
    await writeWhole(this.file(config.name, 'nvram.bin'), nvram);
    if (log) await writeWhole(this.file(config.name, 'vm.log'), log);
    await this.writeConfig(config);
  }

  /** `makeFolder` and `fill` in one: a folder this call made and could not finish is removed. */
  async create(config: VmConfigFile, nvram: Buffer = defaultNvram(), log = '', configDrive?: string): Promise<void> {
    await this.makeFolder(config.name);
    try {
      await this.fill(config, nvram, log, configDrive);
    } catch (error) {
      await rm(this.folder(config.name), { recursive: true, force: true });
      throw error;
    }
  }

  async writeConfig(config: VmConfigFile): Promise<void> {
    await writeWhole(this.file(config.name, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  }

  async log(name: string, event: string): Promise<void> {
    await appendFile(this.file(name, 'vm.log'), `${new Date().toISOString()} ${event}\n`);
  }

  async readLog(name: string): Promise<string> {
    return readFile(this.file(name, 'vm.log'), 'utf8').catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return ''; // a VM without files (no datastore), or one whose log was never written
      throw error;
    });
  }

  /** The VM's config drive as it lies (the text that travels with it), or undefined when it has none. */
  async readConfigDriveText(name: string): Promise<string | undefined> {
    try {
      return await readFile(this.file(name, CONFIG_DRIVE_FILE), 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw error;
    }
  }

  /** The VM's config drive, checked, or undefined when it has none. */
  async readConfigDrive(name: string): Promise<ConfigDrive | undefined> {
    const text = await this.readConfigDriveText(name);
    return text === undefined ? undefined : parseConfigDrive(text);
  }

  async writeConfigDrive(name: string, drive: ConfigDrive): Promise<void> {
    await writeWhole(this.file(name, CONFIG_DRIVE_FILE), configDriveText(drive));
  }

  async readNvram(name: string): Promise<Buffer> {
    return readFile(this.file(name, 'nvram.bin'));
  }

  /** Saves guest memory and registers; the image counts once suspend.json (written last) exists. */
  async saveSuspend(name: string, memory: Uint8Array, registers: Registers, guest?: GuestFacts): Promise<void> {
    const image = this.file(name, 'suspend.bin');
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
    await writeWhole(this.file(name, 'suspend.json'), JSON.stringify({ registers, memoryBytes: memory.length, sha256: hash.digest('hex'), takenAt: new Date().toISOString(), ...(guest ? { guest } : {}) }));
  }

  /** Reads a suspend image back into `memory` (checked against its digest); returns the registers and guest facts. */
  async loadSuspend(name: string, memory: Uint8Array): Promise<{ registers: Registers; guest?: GuestFacts | undefined }> {
    const meta = suspendSchema.parse(JSON.parse(await readFile(this.file(name, 'suspend.json'), 'utf8')));
    if (meta.memoryBytes !== memory.length) {
      throw new FerryError(ErrorCode.IO, `the suspend image of ${name} is ${meta.memoryBytes} bytes, its memory ${memory.length}`, 'the VM\'s files are inconsistent; stop it to discard the image');
    }
    const hash = createHash('sha256');
    const handle = await open(this.file(name, 'suspend.bin'), 'r');
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
    return { registers: meta.registers, guest: meta.guest };
  }

  async dropSuspend(name: string): Promise<void> {
    await rm(this.file(name, 'suspend.json'), { force: true });
    await rm(this.file(name, 'suspend.bin'), { force: true });
  }

  /** Removes the VM's folder; with `sharedDisks`, its disks on shared storage too (they are not removed otherwise). */
  async remove(name: string, sharedDisks = false): Promise<void> {
    await rm(this.folder(name), { recursive: true, force: true });
    if (sharedDisks && this.shared) await rm(resolveInside(this.shared, name), { recursive: true, force: true });
  }
}

/**
 * The images an agent holds: disk files with a manifest, ready to be cloned into new VMs.
 *
 *   <datastore>/images/<name>/
 *     disk.img        the disk, sparse (holes where the image is zeros)
 *     manifest.json   name, bytes, xxh64 of the whole disk, what it holds, where it came from, when it was made
 *
 * An image folder is only ever whole: an image is assembled in a staging folder (<datastore>/staging/<transfer id>/,
 * the one cold migration uses) and registered by one rename; it is removed by one rename back into staging and a
 * delete. So a crash leaves either the image or nothing under images/, and staging leftovers go when the agent
 * starts (Datastore.recover), and only then.
 *
 * The manifest's digest is the one checked on arrival (import, send) or computed on capture; `verify` re-reads the
 * disk to check it again.
 */
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { hashFile } from '../../shared/file-chunks.js';
import { imageManifestSchema, type ImageManifest } from '../../shared/protocol.js';
import type { Datastore } from './datastore.js';
import { resolveInside } from './paths.js';
import { syncPath } from './durable.js';

export const IMAGE_DISK = 'disk.img';
const MANIFEST = 'manifest.json';

/** An image as listed: its manifest, and the bytes its disk takes on this host's file system. */
export interface HeldImage extends ImageManifest {
  allocatedBytes: number;
}

export class ImageStore {
  /** The datastore the images live in (its staging folders are where they are assembled). */
  readonly datastore: Datastore;
  /** Where images live. */
  readonly root: string;

  constructor(datastore: Datastore) {
    this.datastore = datastore;
    this.root = path.join(datastore.root, 'images');
  }

  folder(name: string): string {
    return resolveInside(this.root, name);
  }

  /** The image's disk, to read (clone, send, verify). */
  diskPath(name: string): string {
    return resolveInside(this.root, name, IMAGE_DISK);
  }

  /** Image `name`'s manifest, or undefined when this agent does not hold it. */
  async find(name: string): Promise<ImageManifest | undefined> {
    let text: string;
    try {
      text = await readFile(resolveInside(this.root, name, MANIFEST), 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw error;
    }
    return imageManifestSchema.parse(JSON.parse(text));
  }

  /** Image `name`'s manifest; IMAGE_NOT_FOUND, with the way to get it here, when this agent does not hold it. */
  async get(name: string, host: string): Promise<ImageManifest> {
    const found = await this.find(name);
    if (!found) {
      throw new FerryError(ErrorCode.IMAGE_NOT_FOUND, `${host} holds no image named ${name}`, `run \`ferry image list\` to see which hosts hold it; \`ferry image import FILE --name ${name}\` to add it`);
    }
    return found;
  }

  /** Every image here; a folder whose manifest cannot be read is said in `unreadable` and left alone. */
  async list(): Promise<{ images: HeldImage[]; unreadable: { name: string; error: string }[] }> {
    const images: HeldImage[] = [];
    const unreadable: { name: string; error: string }[] = [];
    const names = existsSync(this.root) ? (await readdir(this.root)).sort() : [];
    for (const name of names) {
      try {
        const manifest = await this.find(name);
        if (!manifest) throw new Error('no manifest.json');
        if (manifest.name !== name) throw new Error(`the manifest names ${manifest.name}`);
        const { blocks } = await stat(this.diskPath(name));
        images.push({ ...manifest, allocatedBytes: blocks * 512 });
      } catch (error) {
        unreadable.push({ name, error: (error as Error).message });
      }
    }
    return { images, unreadable };
  }

  /** A new staging folder for an image being assembled; `transferId` is a UUID (protocol.ts). */
  async stage(transferId: string): Promise<string> {
    const staging = this.datastore.stagingFolder(transferId);
    await mkdir(path.dirname(staging), { recursive: true });
    try {
      await mkdir(staging);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new FerryError(ErrorCode.VM_STATE, `transfer ${transferId} is already under way here`, 'start a new transfer (a new id)');
      }
      throw error;
    }
    return staging;
  }

  /** The staged disk of transfer `transferId`. */
  stagedDisk(transferId: string): string {
    return this.datastore.stagingFile(transferId, IMAGE_DISK);
  }

  /**
   * Registers a staged image: writes its manifest beside the (already synced and checked) disk, syncs, and moves the
   * staging folder into place with one rename. When an image of that name is already here with the same digest, the
   * staged copy is dropped and the one here stands (`kept: false`): two transfers of one image that crossed (an import
   * and a provisioning's send) both succeed. Another digest under that name is IMAGE_EXISTS.
   */
  async register(transferId: string, manifest: ImageManifest): Promise<{ image: ImageManifest; kept: boolean }> {
    const staging = this.datastore.stagingFolder(transferId);
    const held = await this.find(manifest.name);
    if (held) return this.sameOrRefuse(transferId, held, manifest);
    const manifestFile = this.datastore.stagingFile(transferId, MANIFEST);
    const handle = await open(manifestFile, 'w');
    try {
      await handle.writeFile(`${JSON.stringify(imageManifestSchema.parse(manifest), null, 2)}\n`);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await syncPath(staging);
    const target = this.folder(manifest.name);
    await mkdir(this.root, { recursive: true });
    if (existsSync(target)) {
      // Registered meanwhile (a capture, or another transfer that got here first): its manifest is whole, it was
      // written before its rename.
      const meanwhile = await this.find(manifest.name);
      if (meanwhile) return this.sameOrRefuse(transferId, meanwhile, manifest);
      throw this.exists(manifest.name);
    }
    await rename(staging, target);
    await syncPath(this.root);
    return { image: manifest, kept: true };
  }

  private async sameOrRefuse(transferId: string, held: ImageManifest, arrived: ImageManifest): Promise<{ image: ImageManifest; kept: boolean }> {
    if (held.xxh64 !== arrived.xxh64) throw this.exists(arrived.name, held.xxh64, arrived.xxh64);
    await this.unstage(transferId);
    return { image: held, kept: false };
  }

  /** The refusal of a second image of one name; with both digests when they are known to differ. */
  exists(name: string, heldXxh64?: string, arrivedXxh64?: string): FerryError {
    const digests = heldXxh64 && arrivedXxh64 ? ` with other contents (xxh64 ${heldXxh64} here, ${arrivedXxh64} arriving)` : '';
    return new FerryError(ErrorCode.IMAGE_EXISTS, `an image named ${name} is already here${digests}`, `pick another name, or remove the one here first if it is the wrong one (\`ferry image rm ${name} --on HOST\`)`);
  }

  /** Drops a staging folder that will not be registered. */
  async unstage(transferId: string): Promise<void> {
    await rm(this.datastore.stagingFolder(transferId), { recursive: true, force: true });
  }

  /** Removes image `name`: one rename out of images/ (it is gone at once, whole), then the delete. */
  async remove(name: string): Promise<boolean> {
    const folder = this.folder(name);
    if (!existsSync(folder)) return false;
    const doomed = this.datastore.stagingFolder(randomUUID());
    await mkdir(path.dirname(doomed), { recursive: true });
    await rename(folder, doomed);
    await rm(doomed, { recursive: true, force: true });
    return true;
  }

  /** Re-reads image `name`'s disk; whether it still matches its manifest. */
  async verify(name: string, host: string): Promise<{ xxh64: string; match: boolean }> {
    const manifest = await this.get(name, host);
    const { bytes, xxh64 } = await hashFile(this.diskPath(name));
    return { xxh64, match: bytes === manifest.bytes && xxh64 === manifest.xxh64 };
  }
}

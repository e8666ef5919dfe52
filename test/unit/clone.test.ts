/**
 * Cloning an image into a VM's disk: a reflink when the file system makes one, a checked sparse copy when the kernel
 * says it cannot, and a failure (no fallback) for any other error. The reflink is played by a stand-in `copyFile`
 * here, since this machine's file system (ext4) has none; the last test asks the real one.
 */
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, constants, copyFileSync, existsSync, openSync, readFileSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { cloneDisk, reflinkUnsupported } from '../../agent/datastore/clone.js';
import { Datastore } from '../../agent/datastore/datastore.js';
import { ErrorCode, type FerryError } from '../../shared/errors.js';
import { initChecksums } from '../../shared/checksum.js';
import { hashFile } from '../../shared/file-chunks.js';

const MiB = 1024 * 1024;
const sha = (file: string): string => createHash('sha256').update(readFileSync(file)).digest('hex');
const errno = (code: string): NodeJS.ErrnoException => Object.assign(new Error(`${code}: refused`), { code });

let dir: string;
let image: string;
let manifest: { name: string; bytes: number; xxh64: string };

beforeAll(() => initChecksums());
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-clone-'));
  image = path.join(dir, 'disk.img');
  writeFileSync(image, '');
  truncateSync(image, 16 * MiB);
  const fd = openSync(image, 'r+');
  writeSync(fd, randomBytes(MiB), 0, MiB, 5 * MiB);
  writeSync(fd, randomBytes(100), 0, 100, 16 * MiB - 100);
  closeSync(fd);
  manifest = { name: 'base', ...(await hashFile(image)) };
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('cloneDisk', () => {
  it('takes the reflink when the file system makes one', async () => {
    const modes: number[] = [];
    const reflink = async (source: string, target: string, mode: number): Promise<void> => {
      modes.push(mode);
      await copyFile(source, target); // the stand-in shares no blocks, but ends with the same bytes, as a reflink does
    };
    const target = path.join(dir, 'disk0.img');
    const cloned = await cloneDisk(image, target, manifest, manifest.bytes, reflink);
    expect(cloned.method).toBe('reflink');
    expect(cloned.reflinkRefused).toBeUndefined();
    expect(modes).toEqual([constants.COPYFILE_FICLONE_FORCE]); // never a plain copy under the reflink's name
    expect(sha(target)).toBe(sha(image));
  });

  for (const code of ['ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'EINVAL', 'ENOSYS', 'ENOTTY']) {
    it(`falls back to a sparse copy, byte for byte and still sparse, when the kernel answers ${code}`, async () => {
      const target = path.join(dir, 'disk0.img');
      writeFileSync(target, 'a partial reflink the kernel may have left');
      const cloned = await cloneDisk(image, target, manifest, manifest.bytes, async () => {
        throw errno(code);
      });
      expect(cloned).toMatchObject({ method: 'sparse-copy', reflinkRefused: code });
      expect(sha(target)).toBe(sha(image));
      expect(statSync(target).size).toBe(16 * MiB);
      expect(statSync(target).blocks * 512).toBeLessThan(4 * MiB); // the holes stayed holes
    });
  }

  it('does not fall back on any other error: no space is a failure, and nothing is left', async () => {
    const target = path.join(dir, 'disk0.img');
    await expect(cloneDisk(image, target, manifest, manifest.bytes, async () => {
      throw errno('ENOSPC');
    })).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(existsSync(target)).toBe(false);
    expect(reflinkUnsupported(errno('EACCES'))).toBe(false);
  });

  it('refuses an image whose disk no longer matches its manifest, and removes the copy', async () => {
    const target = path.join(dir, 'disk0.img');
    await expect(cloneDisk(image, target, { ...manifest, xxh64: '0000000000000000' }, manifest.bytes, async () => {
      throw errno('ENOTSUP');
    })).rejects.toMatchObject({ code: 'FERRY_ERR_CHECKSUM_MISMATCH' });
    expect(existsSync(target)).toBe(false);
  });

  it('grows the disk past the image with zeros when asked for a larger one', async () => {
    const target = path.join(dir, 'disk0.img');
    await cloneDisk(image, target, manifest, 32 * MiB, async () => {
      throw errno('ENOTSUP');
    });
    expect(statSync(target).size).toBe(32 * MiB);
    const bytes = readFileSync(target);
    expect(createHash('sha256').update(bytes.subarray(0, 16 * MiB)).digest('hex')).toBe(sha(image));
    expect(bytes.subarray(16 * MiB).every((byte) => byte === 0)).toBe(true);
  });

  it('on this machine\'s own file system, takes whichever path the kernel allows', async () => {
    let kernelReflinks: boolean;
    try {
      copyFileSync(image, path.join(dir, 'probe'), constants.COPYFILE_FICLONE_FORCE);
      kernelReflinks = true;
    } catch (error) {
      expect(reflinkUnsupported(error), `the kernel's answer ${(error as NodeJS.ErrnoException).code} is one the clone falls back on`).toBe(true);
      kernelReflinks = false;
    }
    const target = path.join(dir, 'disk0.img');
    const cloned = await cloneDisk(image, target, manifest, manifest.bytes);
    expect(cloned.method).toBe(kernelReflinks ? 'reflink' : 'sparse-copy');
    expect(sha(target)).toBe(sha(image));
  });
});

describe('Datastore.cloneImage', () => {
  it('says IMAGE_NOT_FOUND, not a raw ENOENT, when the image was removed after it was looked up, and leaves no disk', async () => {
    const datastore = new Datastore(path.join(dir, 'datastore'));
    const gone = { ...manifest, holds: '', source: { kind: 'import' as const, file: image }, createdAt: new Date().toISOString() };
    const refused = await datastore.cloneImage(gone, 'web1', { file: 'disk0.img', sizeBytes: manifest.bytes }).then(() => undefined, (error: unknown) => error);
    expect(refused).toMatchObject({ code: ErrorCode.IMAGE_NOT_FOUND });
    expect((refused as FerryError).message).toContain('image base was removed');
    expect((refused as FerryError).hint).toContain('ferry image list');
    expect(existsSync(path.join(dir, 'datastore', 'vms', 'web1', 'disk0.img.tmp'))).toBe(false);
  });
});

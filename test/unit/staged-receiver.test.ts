/**
 * The staged-file receiver that cold migrations and image transfers share: a file system's refusals as FerryErrors
 * with hints, chunks refused once the finish began, an abandon that waits for the finish under way, and a finish that
 * stops when its connection's signal aborts.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Datastore } from '../../agent/datastore/datastore.js';
import { StagedReceiver, fileSystemRefusal } from '../../agent/datastore/staged-receiver.js';
import { formatDigest, hashBytes, initChecksums } from '../../shared/checksum.js';
import { MAX_DISK_BYTES } from '../../shared/constants.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';

const MiB = 1024 * 1024;
const errno = (code: string): NodeJS.ErrnoException => Object.assign(new Error(`${code}: refused`), { code });
const chunkAt = (offset: number) => {
  const data = new Uint8Array(MiB).fill(7);
  return { offset, data, xxh64: formatDigest(hashBytes(data)) };
};

let dir: string;
let datastore: Datastore;
beforeAll(() => initChecksums());
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-staged-'));
  datastore = new Datastore(dir);
});
afterEach(() => rm(dir, { recursive: true, force: true }));

const what = { label: 'image test', retryHint: 'send it again', busy: () => new FerryError(ErrorCode.VM_STATE, 'busy') };

describe('StagedReceiver', () => {
  it('says a full file system (ENOSPC) as CAPACITY and a file too large for it (EFBIG) as BAD_INPUT, with hints', () => {
    const full = fileSystemRefusal(errno('ENOSPC'), 'image base') as FerryError;
    expect(full).toMatchObject({ code: ErrorCode.CAPACITY });
    expect(full.hint).toContain('free space');
    const large = fileSystemRefusal(errno('EFBIG'), 'image base', 2 ** 50) as FerryError;
    expect(large).toMatchObject({ code: ErrorCode.BAD_INPUT });
    expect(large.message).toContain('largest file');
    const other = errno('EIO');
    expect(fileSystemRefusal(other, 'image base')).toBe(other);
  });

  it('refuses a chunk past the largest file this file system holds as BAD_INPUT, not INTERNAL', async () => {
    const receiver = new StagedReceiver(datastore, randomUUID(), what, new AbortController().signal);
    await receiver.begin();
    // ext4 holds files up to 16 TiB; ferry's bound is 1 PiB. On a file system that holds it, the write just works.
    const written = await receiver.write('disk.img', chunkAt(MAX_DISK_BYTES - MiB)).then(() => 'written', (error: FerryError) => error.code);
    expect(['written', ErrorCode.BAD_INPUT]).toContain(written);
    await receiver.abandon();
    expect(existsSync(receiver.folder)).toBe(false);
  });

  it('refuses chunks once the finish began, and abandon waits for the finish, which registers', async () => {
    const receiver = new StagedReceiver(datastore, randomUUID(), what, new AbortController().signal);
    await receiver.begin();
    await receiver.write('disk.img', chunkAt(0));
    let release!: () => void;
    const held = new Promise<void>((resolve) => { release = resolve; });
    const finishing = receiver.finish(['disk.img', 'empty'], async () => {
      await held;
      return 'registered';
    });
    await expect(receiver.write('disk.img', chunkAt(MiB))).rejects.toMatchObject({ code: ErrorCode.PROTOCOL });
    const abandoning = receiver.abandon();
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(existsSync(path.join(receiver.folder, 'empty')), 'the folder stays while the finish runs').toBe(true);
    release();
    expect(await finishing).toBe('registered');
    await abandoning;
    expect(receiver.phase).toBe('registered');
    expect(existsSync(receiver.folder), 'a registered receiver keeps what it registered').toBe(true);
  });

  it('stops a seal when its connection\'s signal aborts, and abandon then removes the folder', async () => {
    const connection = new AbortController();
    const receiver = new StagedReceiver(datastore, randomUUID(), what, connection.signal);
    await receiver.begin();
    const finishing = receiver.finish(['disk.img'], async () => {
      connection.abort(new FerryError(ErrorCode.CONNECTION_LOST, 'the connection closed'));
      await receiver.seal('disk.img', { bytes: 64 * MiB, xxh64: '0000000000000000' }, 'image test');
      return 'registered';
    });
    await expect(finishing).rejects.toMatchObject({ code: ErrorCode.CONNECTION_LOST });
    await receiver.abandon();
    expect(receiver.phase).toBe('abandoned');
    expect(existsSync(receiver.folder)).toBe(false);
  });
});

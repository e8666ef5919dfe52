/**
 * Making writes survive a crash of the machine, not only of the process: a file's bytes are synced before a rename
 * makes it count, and a folder is synced after a rename in it so the new entry itself is on disk.
 */
import { open, rename } from 'node:fs/promises';
import path from 'node:path';

/** Syncs a file's bytes, or a folder's list of entries (after a rename in it). */
export async function syncPath(target: string): Promise<void> {
  const handle = await open(target, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Writes `file` whole: a temporary file, synced, renamed over it, the folder synced. A crash leaves old or new. */
export async function writeWhole(file: string, data: string | Buffer): Promise<void> {
  const temporary = `${file}.tmp`;
  const handle = await open(temporary, 'w');
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(temporary, file);
  await syncPath(path.dirname(file));
}

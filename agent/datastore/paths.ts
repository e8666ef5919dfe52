/**
 * The one way a datastore turns names into paths. Names reach an agent from the network (a VM name, a migration id,
 * a file of a cold migration); schemas in protocol.ts already refuse anything that is not a plain name, and this
 * refuses again, at the root, whatever would resolve outside the folder it must stay in: `..`, an absolute path, a
 * separator, a NUL. Defence in depth: a schema that is loosened later cannot open the disk.
 */
import path from 'node:path';
import { ErrorCode, FerryError } from '../../shared/errors.js';

/** `root` joined with `parts`, resolved; refused unless it lies strictly inside `root`. */
export function resolveInside(root: string, ...parts: string[]): string {
  for (const part of parts) {
    if (part === '' || part.includes('\0') || part.includes('/') || part.includes('\\') || part === '.' || part === '..') {
      throw outside(root, parts);
    }
  }
  const base = path.resolve(root);
  const resolved = path.resolve(base, ...parts);
  const relative = path.relative(base, resolved);
  if (relative === '' || relative.startsWith('..') || path.isAbsolute(relative)) throw outside(root, parts);
  return resolved;
}

function outside(root: string, parts: string[]): FerryError {
  return new FerryError(
    ErrorCode.BAD_INPUT,
    `refused a path outside the datastore: ${JSON.stringify(parts.join('/'))} under ${root}`,
    'names of VMs, migrations and VM files are plain names (no /, no .., no NUL)',
  );
}

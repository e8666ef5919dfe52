/**
 * The shared secret every connection to an agent carries, control and peer alike, as `Authorization: Bearer
 * <token>` on the WebSocket upgrade. Agents compare it in constant time; without it the upgrade is refused.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, FerryError } from './errors.js';

/** Shorter secrets are refused: a token is 128 bits at least. */
export const MIN_TOKEN_LENGTH = 16;

export function checkToken(token: string, where: string): string {
  const trimmed = token.trim();
  if (trimmed.length < MIN_TOKEN_LENGTH || /\s/.test(trimmed)) {
    throw new FerryError(ErrorCode.BAD_INPUT, `the token from ${where} is too short or contains spaces`, `use at least ${MIN_TOKEN_LENGTH} characters without spaces, e.g. \`openssl rand -hex 32\``);
  }
  return trimmed;
}

export async function readTokenFile(file: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new FerryError(ErrorCode.IO, `cannot read the token file ${file}: ${(error as Error).message}`, 'give the path of the file the agent wrote, or set FERRY_TOKEN');
  }
  return checkToken(text, file);
}

/** Makes a new random token in `file` (mode 0600), or reads the one a previous start made there. */
export async function ensureTokenFile(file: string): Promise<{ token: string; created: boolean }> {
  try {
    return { token: await readTokenFile(file), created: false };
  } catch {
    await mkdir(path.dirname(file), { recursive: true });
    const token = randomBytes(32).toString('hex');
    await writeFile(file, `${token}\n`, { mode: 0o600 });
    await chmod(file, 0o600);
    return { token, created: true };
  }
}

export function bearer(token: string): Record<string, string> {
  return { authorization: `Bearer ${token}` };
}

/** Compares the request's `Authorization` header with the token in constant time (over their SHA-256 digests). */
export function isAuthorized(header: string | undefined, token: string): boolean {
  const given = /^Bearer (\S+)$/.exec(header ?? '')?.[1] ?? '';
  const digest = (text: string): Buffer => createHash('sha256').update(text).digest();
  return timingSafeEqual(digest(given), digest(token)) && given.length > 0;
}

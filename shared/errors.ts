/**
 * One error type for all of ferry. Match on `code`, never on the message or on `instanceof`: codes are stable,
 * cross the wire from agent to CLI unchanged, and are what scripts should test.
 */

export const ErrorCode = {
  /** A command-line value or request field is malformed (size, rate, name, workload). */
  BAD_INPUT: 'FERRY_ERR_BAD_INPUT',
  /** The host does not have the room: memory for this VM, datastore space for a file, or another transfer slot. */
  CAPACITY: 'FERRY_ERR_CAPACITY',
  /** No VM by that name where it was looked for. */
  VM_NOT_FOUND: 'FERRY_ERR_VM_NOT_FOUND',
  /** A VM by that name already exists. */
  VM_EXISTS: 'FERRY_ERR_VM_EXISTS',
  /**
   * The host lacks CPU flags the VM's CPU model needs (shared/cpu.ts): at creation, at a live migration's
   * reservation, when a suspended VM would resume there or arrive there cold, or at a fresh start of a named model.
   * The message names the missing flags.
   */
  CPU_INCOMPATIBLE: 'FERRY_ERR_CPU_INCOMPATIBLE',
  /** The VM is in a state that does not allow the request (for example migrating, or already paused). */
  VM_STATE: 'FERRY_ERR_VM_STATE',
  /** No image by that name where it was looked for. */
  IMAGE_NOT_FOUND: 'FERRY_ERR_IMAGE_NOT_FOUND',
  /** An image by that name, with other contents, is already there. */
  IMAGE_EXISTS: 'FERRY_ERR_IMAGE_EXISTS',
  /** No host by that name in the cluster file. */
  HOST_NOT_FOUND: 'FERRY_ERR_HOST_NOT_FOUND',
  /** The host is in maintenance, or marked degraded: it takes no new VMs and no incoming migrations. */
  HOST_UNAVAILABLE: 'FERRY_ERR_HOST_UNAVAILABLE',
  /** A host by that name is already in the cluster file. */
  HOST_EXISTS: 'FERRY_ERR_HOST_EXISTS',
  /** The agent refused the connection: no token, or the wrong one. */
  UNAUTHORIZED: 'FERRY_ERR_UNAUTHORIZED',
  /** A host did not answer, or the connection to it failed. */
  UNREACHABLE: 'FERRY_ERR_UNREACHABLE',
  /** A connection closed while a request or migration depended on it. */
  CONNECTION_LOST: 'FERRY_ERR_CONNECTION_LOST',
  /** A peer spoke another protocol version. */
  PROTOCOL_VERSION: 'FERRY_ERR_PROTOCOL_VERSION',
  /** A message or frame did not decode or did not match its schema. */
  PROTOCOL: 'FERRY_ERR_PROTOCOL',
  /** The destination's image does not match what the source sent. */
  CHECKSUM_MISMATCH: 'FERRY_ERR_CHECKSUM_MISMATCH',
  /**
   * Another operation holds the VM: a migration, a cold migration or a storage move started by another ferry, here
   * or on another coordinator sharing the cluster store. The message names the holder and its operation.
   */
  VM_BUSY: 'FERRY_ERR_VM_BUSY',
  /** A peer did not reply in time. */
  TIMEOUT: 'FERRY_ERR_TIMEOUT',
  /** The migration was cancelled. */
  CANCELLED: 'FERRY_ERR_CANCELLED',
  /** A file could not be read or written. */
  IO: 'FERRY_ERR_IO',
  /**
   * A post-copy migration's other side crashed after the switch: part of the guest's memory was only there, so the
   * VM cannot run again from either copy (as in QEMU without postcopy-recover's pause).
   */
  POSTCOPY_LOST: 'FERRY_ERR_POSTCOPY_LOST',
  /** A bug: something ferry believed impossible happened. */
  INTERNAL: 'FERRY_ERR_INTERNAL',
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export interface ErrorPayload {
  code: ErrorCode;
  message: string;
  hint?: string | undefined;
}

export class FerryError extends Error {
  readonly code: ErrorCode;
  /** What the user can do about it, in one sentence. */
  readonly hint: string | undefined;

  constructor(code: ErrorCode, message: string, hint?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'FerryError';
    this.code = code;
    this.hint = hint;
  }

  toPayload(): ErrorPayload {
    return this.hint === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, hint: this.hint };
  }

  static fromPayload(payload: ErrorPayload): FerryError {
    return new FerryError(payload.code, payload.message, payload.hint);
  }
}

const knownCodes = new Set<string>(Object.values(ErrorCode));

/** Any thrown value as a FerryError: ferry's own pass through, anything else becomes INTERNAL. */
export function toFerryError(error: unknown): FerryError {
  if (error instanceof FerryError) return error;
  if (typeof error === 'object' && error !== null && 'code' in error && knownCodes.has(String(error.code))) {
    const { code, message, hint } = error as { code: ErrorCode; message?: unknown; hint?: unknown };
    return new FerryError(code, String(message ?? code), typeof hint === 'string' ? hint : undefined);
  }
  const message = error instanceof Error ? error.message : String(error);
  return new FerryError(ErrorCode.INTERNAL, message, undefined, { cause: error });
}

/** Why `signal` was aborted, as a FerryError: its own reason when that is one, else `fallback`. */
export function abortReason(signal: AbortSignal, fallback: string): FerryError {
  return signal.reason instanceof FerryError ? signal.reason : new FerryError(ErrorCode.CANCELLED, fallback);
}

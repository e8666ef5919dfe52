/**
 * `ferry vm create` options, as typed, into a VM request an agent accepts.
 */
import { PAGE_SIZE } from '../shared/constants.js';
import { ErrorCode, FerryError } from '../shared/errors.js';
import { memoryBytesSchema, vmNameSchema, workloadKindSchema, type WorkloadSpec } from '../shared/protocol.js';
import { formatBytes, parseCount, parseSize } from '../shared/units.js';

export interface CreateOptions {
  memory: string;
  workload: string;
  rate: string;
  wss?: string | undefined;
  seed: string;
  hot?: string | undefined;
  prealloc?: boolean | undefined;
  disk?: string | undefined;
}

export interface VmRequest {
  name: string;
  memoryBytes: number;
  workload: WorkloadSpec;
  prealloc?: boolean;
  diskBytes?: number;
}

export function checkVmName(name: string): string {
  const parsed = vmNameSchema.safeParse(name);
  if (!parsed.success) {
    throw new FerryError(ErrorCode.BAD_INPUT, `"${name}" is not a valid VM name: ${parsed.error.issues[0]?.message}`, 'for example: web1');
  }
  return parsed.data;
}

export function toVmRequest(name: string, options: CreateOptions): VmRequest {
  const memoryBytes = parseSize(options.memory);
  const memory = memoryBytesSchema.safeParse(memoryBytes);
  if (!memory.success) {
    throw new FerryError(ErrorCode.BAD_INPUT, `--memory ${options.memory} (${formatBytes(memoryBytes)}) is not allowed: ${memory.error.issues[0]?.message}`, 'give 1MiB to 4GiB, a whole number of 4 KiB pages, e.g. 256MiB');
  }
  const kind = workloadKindSchema.safeParse(options.workload);
  if (!kind.success) {
    throw new FerryError(ErrorCode.BAD_INPUT, `unknown workload "${options.workload}"`, `pick one of: ${workloadKindSchema.options.join(', ')}`);
  }
  const wssBytes = options.wss ? parseSize(options.wss) : memoryBytes;
  if (wssBytes < PAGE_SIZE || wssBytes > memoryBytes) {
    throw new FerryError(ErrorCode.BAD_INPUT, `--wss ${options.wss} must be between 4KiB and the VM's memory (${formatBytes(memoryBytes)})`, 'e.g. --memory 256MiB --wss 64MiB');
  }
  const seed = parseCount(options.seed, '--seed');
  if (seed < 1 || seed > 0xffffffff) {
    throw new FerryError(ErrorCode.BAD_INPUT, `--seed ${options.seed} must be 1 to 4294967295`, 'xorshift32 never leaves 0, so the seed cannot be 0');
  }
  const rate = parseCount(options.rate, '--rate');
  if (rate > 10_000_000) throw new FerryError(ErrorCode.BAD_INPUT, `--rate ${options.rate} is above 10,000,000 page writes per second`, 'use a lower rate');
  const workload: WorkloadSpec = { kind: kind.data, rate, wssPages: Math.floor(wssBytes / PAGE_SIZE), seed };
  if (options.hot) {
    const hotPages = Math.floor(parseSize(options.hot) / PAGE_SIZE);
    if (hotPages < 1 || hotPages > workload.wssPages) {
      throw new FerryError(ErrorCode.BAD_INPUT, `--hot ${options.hot} must be between 4KiB and the working set`, 'e.g. --wss 64MiB --hot 8MiB');
    }
    workload.hotPages = hotPages;
  }
  const diskBytes = options.disk ? parseSize(options.disk) : undefined;
  if (diskBytes !== undefined && (diskBytes < PAGE_SIZE || diskBytes > 2 ** 50)) {
    throw new FerryError(ErrorCode.BAD_INPUT, `--disk ${options.disk} is not a disk size ferry can make`, 'e.g. --disk 1GiB (sparse: it takes no space until written)');
  }
  return { name: checkVmName(name), memoryBytes, workload, ...(options.prealloc ? { prealloc: true } : {}), ...(diskBytes ? { diskBytes } : {}) };
}

/**
 * `ferry vm create` options, as typed, into a VM request an agent accepts. The limits are those of the agent's own
 * `vm.create` schema (shared/protocol.ts); only the rules that tie one option to another are checked here.
 */
import type { z } from 'zod';
import { MAX_DISK_BYTES, MAX_MEMORY_BYTES, MIN_MEMORY_BYTES, PAGE_SIZE } from '../shared/constants.js';
import { ErrorCode, FerryError } from '../shared/errors.js';
import { controlOps, vmNameSchema, workloadKindSchema, type WorkloadSpec } from '../shared/protocol.js';
import { formatBytes, parseCount, parseSize } from '../shared/units.js';
import { checkOptions, typedSize, type OptionSource } from './option-check.js';

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

const vmCreateSchema = controlOps['vm.create'][0];
export type VmRequest = z.infer<typeof vmCreateSchema>;

export function checkVmName(name: string): string {
  const parsed = vmNameSchema.safeParse(name);
  if (!parsed.success) {
    throw new FerryError(ErrorCode.BAD_INPUT, `"${name}" is not a valid VM name: ${parsed.error.issues[0]?.message}`, 'for example: web1');
  }
  return parsed.data;
}

export function toVmRequest(name: string, options: CreateOptions): VmRequest {
  const vmName = checkVmName(name);
  const memoryBytes = parseSize(options.memory);
  const wssBytes = options.wss ? parseSize(options.wss) : memoryBytes;
  const workload: WorkloadSpec = {
    kind: options.workload as WorkloadSpec['kind'],
    rate: parseCount(options.rate, '--rate'),
    wssPages: Math.floor(wssBytes / PAGE_SIZE),
    seed: parseCount(options.seed, '--seed'),
    ...(options.hot ? { hotPages: Math.floor(parseSize(options.hot) / PAGE_SIZE) } : {}),
  };
  const diskBytes = options.disk === undefined ? undefined : parseSize(options.disk);
  const sources: Record<string, OptionSource> = {
    memoryBytes: { option: '--memory', typed: options.memory, unit: 'bytes', hint: `give ${typedSize(MIN_MEMORY_BYTES)} to ${typedSize(MAX_MEMORY_BYTES)}, a whole number of 4 KiB pages, e.g. 256MiB` },
    'workload.kind': { option: '--workload', typed: options.workload, unit: 'text', hint: `pick one of: ${workloadKindSchema.options.join(', ')}` },
    'workload.rate': { option: '--rate', typed: options.rate, unit: 'count', hint: 'page writes per second, e.g. 20000' },
    'workload.wssPages': { option: '--wss', typed: options.wss ?? options.memory, unit: 'pages', hint: 'e.g. --memory 256MiB --wss 64MiB' },
    'workload.seed': { option: '--seed', typed: options.seed, unit: 'count', hint: 'xorshift32 never leaves 0, so the seed cannot be 0' },
    'workload.hotPages': { option: '--hot', typed: options.hot ?? '', unit: 'pages', hint: 'e.g. --wss 64MiB --hot 8MiB' },
    diskBytes: { option: '--disk', typed: options.disk ?? '', unit: 'bytes', hint: `give ${typedSize(PAGE_SIZE)} to ${typedSize(MAX_DISK_BYTES)}, e.g. --disk 1GiB (sparse: it takes no space until written)` },
  };
  const request = checkOptions(vmCreateSchema, {
    name: vmName, memoryBytes, workload,
    ...(options.prealloc ? { prealloc: true } : {}),
    ...(diskBytes !== undefined ? { diskBytes } : {}),
  }, sources);

  // Rules between options, which no single field's schema can hold.
  if (wssBytes > memoryBytes) {
    throw new FerryError(ErrorCode.BAD_INPUT, `--wss ${options.wss} must be between 4KiB and the VM's memory (${formatBytes(memoryBytes)})`, 'e.g. --memory 256MiB --wss 64MiB');
  }
  if (request.workload.hotPages !== undefined && request.workload.hotPages > request.workload.wssPages) {
    throw new FerryError(ErrorCode.BAD_INPUT, `--hot ${options.hot} must be between 4KiB and the working set (${formatBytes(request.workload.wssPages * PAGE_SIZE)})`, 'e.g. --wss 64MiB --hot 8MiB');
  }
  return request;
}

/**
 * `ferry vm create` options, as typed, into a VM request an agent accepts. The limits are those of the agent's own
 * `vm.create` schema (shared/protocol.ts); only the rules that tie one option to another are checked here.
 */
import type { z } from 'zod';
import { MAX_DISK_BYTES, MAX_MEMORY_BYTES, MIN_MEMORY_BYTES, NET_REGION_PAGES, PAGE_SIZE } from '../shared/constants.js';
import { ErrorCode, FerryError } from '../shared/errors.js';
import { controlOps, vmNameSchema, workloadKindSchema, type WorkloadSpec } from '../shared/protocol.js';
import { formatBytes, parseCount, parseSize } from '../shared/units.js';
import type { ReplayTrace } from '../shared/trace.js';
import { BLOCK_BYTES as DISK_BLOCK_BYTES, replayWorkload } from '../shared/workloads.js';
import { checkOptions, typedSize, type OptionSource } from './option-check.js';

export interface CreateOptions {
  memory: string;
  workload: string;
  rate: string;
  wss?: string | undefined;
  seed: string;
  hot?: string | undefined;
  prealloc?: boolean | undefined;
  /** Memory starts as pattern write 0 of every page, none of it zero (shared/workloads.ts). */
  filled?: boolean | undefined;
  disk?: string | undefined;
  /** pattern with a disk: block writes per second to its first disk (DESIGN.md, "Disk writes"). */
  diskRate?: string | undefined;
  /** The part of the disk those writes go to, from its start (default: the whole disk). */
  diskWss?: string | undefined;
  /** Its address, `IP` or `IP/PREFIX` (loopback mode: in 127.0.0.0/8). */
  ip?: string | undefined;
  /** replay: the trace to replay, read from `--trace FILE` and checked (shared/trace.ts `replayTraceOf`). */
  trace?: { file: string; trace: ReplayTrace; memoryBytes: number } | undefined;
}

/** The first host address of IP/PREFIX's network: where a gateway usually is. */
function firstHost(octets: number[], prefix: number): string {
  const value = octets.reduce((sum, octet) => sum * 256 + octet, 0);
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  const first = ((value & mask) >>> 0) + (prefix >= 31 ? 0 : 1);
  return [24, 16, 8, 0].map((shift) => (first >>> shift) & 255).join('.');
}

/**
 * `--ip IP[/PREFIX]` as a network configuration; loopback addresses need no gateway, so it is the host itself, and
 * any other has its network's first host as its gateway.
 */
export function parseIpOption(text: string, defaultPrefix = 8): { ip: string; prefix: number; gateway: string } {
  const [ip, prefixText, ...rest] = text.split('/');
  const prefix = Number(prefixText ?? defaultPrefix);
  const parts = (ip ?? '').split('.');
  const valid = rest.length === 0 && parts.length === 4 && parts.every((part) => /^\d{1,3}$/.test(part) && Number(part) <= 255)
    && Number.isInteger(prefix) && prefix >= 0 && prefix <= 32;
  if (!valid) throw new FerryError(ErrorCode.BAD_INPUT, `--ip ${text} is not an address`, 'write it like 127.100.0.5 (or 127.100.0.5/16)');
  return { ip: ip!, prefix, gateway: ip!.startsWith('127.') ? '127.0.0.1' : firstHost(parts.map(Number), prefix) };
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
  // An addressed VM's device takes the top of its memory: the default working set stops below it.
  const network = options.ip === undefined ? undefined : parseIpOption(options.ip);
  const wssBytes = options.wss ? parseSize(options.wss) : network ? Math.max(memoryBytes - NET_REGION_PAGES * PAGE_SIZE, PAGE_SIZE) : memoryBytes;
  if ((options.workload === 'replay') !== (options.trace !== undefined)) {
    throw new FerryError(ErrorCode.BAD_INPUT, options.trace ? `--trace ${options.trace.file} goes with --workload replay, not ${options.workload}` : '--workload replay needs the trace it replays', 'ferry vm create NAME --workload replay --trace FILE (record one with `ferry trace record`)');
  }
  if (options.trace && options.trace.memoryBytes > memoryBytes) {
    throw new FerryError(ErrorCode.BAD_INPUT, `${options.trace.file} was recorded from a VM of ${formatBytes(options.trace.memoryBytes)}; --memory ${options.memory} is smaller`, `give --memory ${options.trace.memoryBytes} or more, or leave it out: a replay VM has its trace's memory by default`);
  }
  const workload: WorkloadSpec = options.trace ? { ...replayWorkload(options.trace.trace), ...(options.filled ? { filled: true } : {}) } : {
    kind: options.workload as WorkloadSpec['kind'],
    rate: parseCount(options.rate, '--rate'),
    wssPages: Math.floor(wssBytes / PAGE_SIZE),
    seed: parseCount(options.seed, '--seed'),
    ...(options.hot ? { hotPages: Math.floor(parseSize(options.hot) / PAGE_SIZE) } : {}),
    // A counters guest always starts filled (shared/workloads.ts): said in its spec too, for whoever reads it.
    ...(options.filled || options.workload === 'counters' ? { filled: true } : {}),
  };
  if (options.filled && options.workload === 'kv') {
    throw new FerryError(ErrorCode.BAD_INPUT, '--filled: a kv guest\'s table starts empty, it cannot start filled', 'leave out --filled, or use another workload');
  }
  const diskBytes = options.disk === undefined ? undefined : parseSize(options.disk);
  // Disk writes: only a pattern VM's, and only into a disk it has.
  if (options.diskRate !== undefined || options.diskWss !== undefined) {
    const flag = options.diskRate !== undefined ? `--disk-rate ${options.diskRate}` : `--disk-wss ${options.diskWss}`;
    if (options.workload !== 'pattern') {
      throw new FerryError(ErrorCode.BAD_INPUT, `${flag}: only the pattern workload writes its disk, and this VM runs ${options.workload}`, 'use --workload pattern, or leave out --disk-rate and --disk-wss');
    }
    if (diskBytes === undefined) throw new FerryError(ErrorCode.BAD_INPUT, `${flag} needs a disk to write`, 'give it one, e.g. --disk 1GiB --disk-rate 2000');
    if (options.diskRate === undefined) throw new FerryError(ErrorCode.BAD_INPUT, `--disk-wss ${options.diskWss} without --disk-rate: nothing would write the disk`, 'add --disk-rate, e.g. --disk-rate 2000');
  }
  const diskRate = options.diskRate === undefined ? undefined : parseCount(options.diskRate, '--disk-rate');
  const diskWssBytes = options.diskWss === undefined ? undefined : parseSize(options.diskWss);
  if (diskWssBytes !== undefined && diskBytes !== undefined && (diskWssBytes < DISK_BLOCK_BYTES || diskWssBytes > diskBytes)) {
    throw new FerryError(ErrorCode.BAD_INPUT, `--disk-wss ${options.diskWss} must be between 4KiB and the disk (${formatBytes(diskBytes)})`, 'e.g. --disk 1GiB --disk-wss 256MiB');
  }
  if (diskRate !== undefined) workload.diskRate = diskRate;
  if (diskWssBytes !== undefined) workload.diskWssBlocks = Math.floor(diskWssBytes / DISK_BLOCK_BYTES);
  const sources: Record<string, OptionSource> = {
    memoryBytes: { option: '--memory', typed: options.memory, unit: 'bytes', hint: `give ${typedSize(MIN_MEMORY_BYTES)} to ${typedSize(MAX_MEMORY_BYTES)}, a whole number of 4 KiB pages, e.g. 256MiB` },
    'workload.kind': { option: '--workload', typed: options.workload, unit: 'text', hint: `pick one of: ${workloadKindSchema.options.join(', ')}` },
    'workload.rate': { option: '--rate', typed: options.rate, unit: 'count', hint: 'page writes per second, e.g. 20000' },
    'workload.wssPages': { option: '--wss', typed: options.wss ?? options.memory, unit: 'pages', hint: 'e.g. --memory 256MiB --wss 64MiB' },
    'workload.trace': { option: '--trace', typed: options.trace?.file ?? '', unit: 'text', hint: 'give a file written by `ferry trace record`' },
    'workload.seed': { option: '--seed', typed: options.seed, unit: 'count', hint: 'xorshift32 never leaves 0, so the seed cannot be 0' },
    'workload.hotPages': { option: '--hot', typed: options.hot ?? '', unit: 'pages', hint: 'e.g. --wss 64MiB --hot 8MiB' },
    'workload.diskRate': { option: '--disk-rate', typed: options.diskRate ?? '', unit: 'count', hint: 'block writes per second, e.g. --disk-rate 2000' },
    'workload.diskWssBlocks': { option: '--disk-wss', typed: options.diskWss ?? '', unit: 'pages', hint: 'e.g. --disk 1GiB --disk-wss 256MiB' },
    diskBytes: { option: '--disk', typed: options.disk ?? '', unit: 'bytes', hint: `give ${typedSize(PAGE_SIZE)} to ${typedSize(MAX_DISK_BYTES)}, e.g. --disk 1GiB (sparse: it takes no space until written)` },
  };
  const request = checkOptions(vmCreateSchema, {
    name: vmName, memoryBytes, workload,
    ...(options.prealloc ? { prealloc: true } : {}),
    ...(diskBytes !== undefined ? { diskBytes } : {}),
    ...(network ? { network } : {}),
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

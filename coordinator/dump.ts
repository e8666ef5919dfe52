/**
 * Guest memory brought to the coordinator: `ferry vm dump` writes it to a file (exactly memoryBytes bytes, and a
 * JSON file beside it with what is needed to check it), `ferry vm check` replays it in memory. The agent pauses the
 * VM while it sends and resumes it after, unless it was paused already.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { rename, rm, writeFile } from 'node:fs/promises';
import { z } from 'zod';
import { PAGE_SIZE } from '../shared/constants.js';
import { ErrorCode, FerryError } from '../shared/errors.js';
import { vmInfoSchema, type VmInfo } from '../shared/protocol.js';
import type { ReplayTrace } from '../shared/trace.js';
import type { AgentClient } from './connect.js';

const chunkSchema = z.object({ offset: z.number().int().nonnegative(), data: z.instanceof(Uint8Array) });

export interface DumpMetadata {
  vm: string;
  host: string;
  memoryBytes: number;
  pageSize: number;
  /** `trace`: a replay VM's, so that the dump can be checked against a replay of it. */
  workload: { kind: string; seed: number; wssPages: number; rate: number; hotPages?: number; filled?: boolean; trace?: ReplayTrace };
  cpu: { x: number; n: number };
  takenAt: string;
}

/** Streams guest memory, chunk by chunk in order, to `sink`; returns the VM as it was while paused. */
export async function fetchMemory(client: AgentClient, name: string, sink: (offset: number, data: Uint8Array) => void): Promise<VmInfo> {
  let received = 0;
  const reply = await client.request('vm.dump', { name }, {
    onEvent: (body) => {
      const chunk = chunkSchema.parse(body);
      sink(chunk.offset, chunk.data);
      received += chunk.data.byteLength;
    },
  });
  if (received !== reply.info.memoryBytes) {
    throw new FerryError(ErrorCode.IO, `memory of ${name}: received ${received} of ${reply.info.memoryBytes} bytes`, 'retry');
  }
  return reply.info;
}

export async function dumpMemory(client: AgentClient, name: string, outFile: string): Promise<DumpMetadata> {
  // Written under a temporary name and renamed when whole, so a failed dump never leaves a plausible image.
  const partial = `${outFile}.partial`;
  let info: VmInfo;
  const fd = openSync(partial, 'w');
  try {
    info = await fetchMemory(client, name, (offset, data) => writeSync(fd, data, 0, data.byteLength, offset));
  } catch (error) {
    closeSync(fd);
    await rm(partial, { force: true });
    throw error;
  }
  closeSync(fd);
  await rename(partial, outFile);
  const metadata: DumpMetadata = {
    vm: info.name,
    host: info.host,
    memoryBytes: info.memoryBytes,
    pageSize: PAGE_SIZE,
    workload: { kind: info.workload.kind, seed: info.workload.seed, wssPages: info.workload.wssPages, rate: info.workload.rate, ...(info.workload.hotPages ? { hotPages: info.workload.hotPages } : {}), ...(info.workload.filled ? { filled: true } : {}), ...(info.workload.trace ? { trace: info.workload.trace } : {}) },
    cpu: info.cpu,
    takenAt: new Date().toISOString(),
  };
  await writeFile(`${outFile}.json`, `${JSON.stringify(metadata, null, 2)}\n`);
  return metadata;
}

/** The whole image in one buffer (at most 4 GiB). */
export async function readMemory(client: AgentClient, name: string): Promise<{ info: VmInfo; image: Uint8Array }> {
  const { memoryBytes } = await client.request('vm.info', { name });
  const image = new Uint8Array(memoryBytes);
  const info = await fetchMemory(client, name, (offset, data) => image.set(data, offset));
  return { info, image };
}

const diskStartSchema = z.object({ info: z.unknown(), sizeBytes: z.number().int().nonnegative() });

/**
 * Streams the VM's first disk, as its image lies on its host: first `onStart` with the VM as it is while paused
 * (its registers y and m describe the image) and the disk's size, then the image chunk by chunk to `sink` (chunks
 * of zeros do not travel: what does not arrive is zeros). Returns the same VM info and size.
 */
export async function fetchDisk(
  client: AgentClient,
  name: string,
  onStart: (info: VmInfo, sizeBytes: number) => void,
  sink: (offset: number, data: Uint8Array) => void,
): Promise<{ info: VmInfo; sizeBytes: number }> {
  let received = 0;
  let started = false;
  const reply = await client.request('vm.disk-dump', { name }, {
    onEvent: (body) => {
      if (!started) {
        const start = diskStartSchema.parse(body);
        started = true;
        onStart(vmInfoSchema.parse(start.info), start.sizeBytes);
        return;
      }
      const chunk = chunkSchema.parse(body);
      sink(chunk.offset, chunk.data);
      received += chunk.data.byteLength;
    },
  });
  if (!started || received !== reply.bytesSent) {
    throw new FerryError(ErrorCode.IO, `disk of ${name}: received ${received} of ${reply.bytesSent} bytes`, 'retry');
  }
  return { info: reply.info, sizeBytes: reply.sizeBytes };
}

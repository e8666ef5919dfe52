/**
 * `ferry vm dump`: the guest memory image, exactly memoryBytes bytes, and a JSON file beside it with what is
 * needed to check it (for `pattern`: the seed, the working set and the registers, DESIGN.md).
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import { z } from 'zod';
import { PAGE_SIZE } from '../shared/constants.js';
import { ErrorCode, FerryError } from '../shared/errors.js';
import type { VmInfo } from '../shared/protocol.js';
import type { AgentClient } from './connect.js';

const chunkSchema = z.object({ offset: z.number().int().nonnegative(), data: z.instanceof(Uint8Array) });

export interface DumpMetadata {
  vm: string;
  host: string;
  memoryBytes: number;
  pageSize: number;
  workload: { kind: string; seed: number; wssPages: number; rate: number; hotPages?: number };
  cpu: { x: number; n: number };
  takenAt: string;
}

export async function dumpMemory(client: AgentClient, name: string, outFile: string): Promise<DumpMetadata> {
  // Written under a temporary name and renamed when whole, so a failed dump never leaves a plausible image.
  const partial = `${outFile}.partial`;
  const fd = openSync(partial, 'w');
  let received = 0;
  let info: VmInfo;
  try {
    const reply = await client.request('vm.dump', { name }, {
      onEvent: (body) => {
        const chunk = chunkSchema.parse(body);
        writeSync(fd, chunk.data, 0, chunk.data.byteLength, chunk.offset);
        received += chunk.data.byteLength;
      },
    });
    info = reply.info;
  } finally {
    closeSync(fd);
  }
  if (received !== info.memoryBytes) {
    throw new FerryError(ErrorCode.IO, `dump of ${name} received ${received} of ${info.memoryBytes} bytes`, 'retry the dump');
  }
  await rename(partial, outFile);
  const metadata: DumpMetadata = {
    vm: info.name,
    host: info.host,
    memoryBytes: info.memoryBytes,
    pageSize: PAGE_SIZE,
    workload: { kind: info.workload.kind, seed: info.workload.seed, wssPages: info.workload.wssPages, rate: info.workload.rate, ...(info.workload.hotPages ? { hotPages: info.workload.hotPages } : {}) },
    cpu: info.cpu,
    takenAt: new Date().toISOString(),
  };
  await writeFile(`${outFile}.json`, `${JSON.stringify(metadata, null, 2)}\n`);
  return metadata;
}

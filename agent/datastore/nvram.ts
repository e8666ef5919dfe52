/**
 * A VM's BIOS settings, `nvram.bin`: 64 bytes.
 *
 *   0       8      10          14                32                                64
 *   +-------+------+-----------+-----------------+--------------------------------+
 *   |FERRYNV1| ver | boot order|   zeros         | SHA-256 of bytes 0..31          |
 *   +-------+------+-----------+-----------------+--------------------------------+
 *
 * Boot order: 1 = disk, 2 = network, 0 = none. The check lets an agent tell a damaged file from a VM's own settings.
 */
import { createHash } from 'node:crypto';

const NVRAM_MAGIC = 'FERRYNV1';
export const NVRAM_BYTES = 64;

export function defaultNvram(): Buffer {
  const nvram = Buffer.alloc(NVRAM_BYTES);
  nvram.write(NVRAM_MAGIC, 0, 'ascii');
  nvram.writeUInt16LE(1, 8);
  Buffer.from([1, 2, 0, 0]).copy(nvram, 10);
  createHash('sha256').update(nvram.subarray(0, 32)).digest().copy(nvram, 32);
  return nvram;
}

export function nvramIsValid(nvram: Buffer): boolean {
  return nvram.length === NVRAM_BYTES
    && nvram.toString('ascii', 0, 8) === NVRAM_MAGIC
    && createHash('sha256').update(nvram.subarray(0, 32)).digest().equals(nvram.subarray(32, 64));
}

/**
 * Write stamps: for each guest page, when the vCPU last wrote it, as the low 32 bits of register n at that write
 * (0: not written since this host made the VM's memory). The heat map reads them (heat-map.ts) to show how recently
 * each page was written.
 *
 *   write stamps   SharedArrayBuffer, one Uint32 per page
 *   +----------------+----------------+-----+
 *   | stamp of page 0 | stamp of page 1 | ... |
 *   +----------------+----------------+-----+
 *
 * What must stay true:
 * - Only the vCPU writes them, after the page write and its dirty bit (vcpu-worker.ts); nothing migration reads
 *   depends on them, and reading them changes nothing, so sampling them never changes what migration sees in the
 *   dirty log (the reason this is an array of its own and not read from the dirty log).
 * - Plain stores and loads: an aligned 32-bit value is never torn, and a reader that sees a stamp a little late
 *   only draws one frame of the heat map a little stale.
 * - They are not guest state: they never travel with a migration (the destination starts with zeros).
 */
export class WriteStamps {
  readonly stamps: Uint32Array;

  constructor(buffer: SharedArrayBuffer, pageCount: number) {
    this.stamps = new Uint32Array(buffer, 0, pageCount);
  }

  static allocate(pageCount: number): WriteStamps {
    return new WriteStamps(new SharedArrayBuffer(pageCount * 4), pageCount);
  }

  /** vCPU side, after the write and its dirty bit: `writes` is register n after the write (1 or more). */
  record(page: number, writes: number): void {
    // 0 means never written; the one write in 2^32 whose low bits are 0 is stamped 1 instead.
    this.stamps[page] = writes >>> 0 || 1;
  }
}

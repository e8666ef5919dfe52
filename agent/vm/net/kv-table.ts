/**
 * The `kv` workload's table, in guest memory: an open-addressing hash table (linear probing, FNV-1a) over the
 * working set, so that it moves with the VM like any other page. Only the vCPU worker touches it.
 *
 *   working set (pages 0 .. wssPages-1)
 *   +-----------------+------------------------------------------------------------+
 *   | page 0: header  | pages 1 ..: slots, 512 bytes each, 8 to a page               |
 *   +-----------------+------------------------------------------------------------+
 *
 *   header, uint32 words             slot, 512 bytes
 *   +-------+-------+------+          +-------+--------+----------+-----------+-------------+
 *   | MAGIC | SLOTS | LIVE |          | STATE | KEYLEN | VALUELEN | KEY (64)  | VALUE (200) |
 *   +-------+-------+------+          +-------+--------+----------+-----------+-------------+
 *    0       1       2                 byte 0  1        2 (u16)    4           68
 *
 * STATE is EMPTY (never used: ends a probe), LIVE, or DELETED (a tombstone: a probe goes on past it, an insert may
 * reuse it). LIVE is held at most 3/4 of SLOTS (`capacity`), so a probe always meets an EMPTY or reusable slot.
 *
 * What must stay true: every write is followed by marking its page dirty (dirty-log.ts), and a request's writes all
 * happen between two pause checks (device.ts), so a paused guest's table is never half updated. A slot is written
 * value first, STATE last, so even a reader in the middle (there is none) would never see a LIVE slot half made.
 */
import { PAGE_SIZE } from '../../../shared/constants.js';
import type { DirtyLog } from '../dirty-log.js';

export const KV_MAGIC = 0x4b565431; // "KVT1"
export const KV_SLOT_BYTES = 512;
export const MAX_KEY_BYTES = 64;
export const MAX_VALUE_BYTES = 200;
const SLOTS_PER_PAGE = PAGE_SIZE / KV_SLOT_BYTES;
const Header = { MAGIC: 0, SLOTS: 1, LIVE: 2 } as const;
const Slot = { STATE: 0, KEYLEN: 1, VALUELEN: 2, KEY: 4, VALUE: 68 } as const;
const State = { EMPTY: 0, LIVE: 1, DELETED: 2 } as const;

/** Keys a table over `wssPages` pages holds: 3/4 of its slots. */
export function kvCapacity(wssPages: number): number {
  return Math.floor(((wssPages - 1) * SLOTS_PER_PAGE * 3) / 4);
}

function fnv1a(bytes: Uint8Array): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) hash = Math.imul(hash ^ bytes[i]!, 0x01000193);
  return hash >>> 0;
}

export type PutResult = 'ok' | 'full';

export class KvTable {
  private readonly bytes: Uint8Array;
  private readonly view: DataView;
  private readonly slots: number;
  readonly capacity: number;
  private readonly dirtyLog: Pick<DirtyLog, 'mark'>;

  /**
   * `memory` is all of guest memory (or a copy of it: a dump, to check); the table takes pages 0 .. wssPages-1 (at
   * least 2).
   */
  constructor(memory: ArrayBufferLike, wssPages: number, dirtyLog: Pick<DirtyLog, 'mark'>) {
    this.bytes = new Uint8Array(memory, 0, wssPages * PAGE_SIZE);
    this.view = new DataView(memory, 0, wssPages * PAGE_SIZE);
    this.slots = (wssPages - 1) * SLOTS_PER_PAGE;
    this.capacity = kvCapacity(wssPages);
    this.dirtyLog = dirtyLog;
    // A new guest's memory is zeros: the table is made on first boot, and found again after a migration or resume.
    if (this.view.getUint32(Header.MAGIC * 4, true) !== KV_MAGIC || this.view.getUint32(Header.SLOTS * 4, true) !== this.slots) {
      this.view.setUint32(Header.SLOTS * 4, this.slots, true);
      this.view.setUint32(Header.LIVE * 4, 0, true);
      this.view.setUint32(Header.MAGIC * 4, KV_MAGIC, true);
      this.dirtyLog.mark(0);
    }
  }

  get live(): number {
    return this.view.getUint32(Header.LIVE * 4, true);
  }

  get(key: Uint8Array): Uint8Array | undefined {
    const found = this.find(key);
    if (found.slot < 0) return undefined;
    const offset = this.offsetOf(found.slot);
    const length = this.view.getUint16(offset + Slot.VALUELEN, true);
    return this.bytes.slice(offset + Slot.VALUE, offset + Slot.VALUE + length);
  }

  put(key: Uint8Array, value: Uint8Array): PutResult {
    const found = this.find(key);
    let slot = found.slot;
    const fresh = slot < 0;
    if (fresh) {
      if (this.live >= this.capacity) return 'full';
      slot = found.free;
      if (slot < 0) return 'full'; // cannot happen below capacity; never write outside the table
    }
    const offset = this.offsetOf(slot);
    this.bytes.set(key, offset + Slot.KEY);
    this.bytes.set(value, offset + Slot.VALUE);
    this.view.setUint8(offset + Slot.KEYLEN, key.length);
    this.view.setUint16(offset + Slot.VALUELEN, value.length, true);
    this.view.setUint8(offset + Slot.STATE, State.LIVE);
    this.dirtyLog.mark(this.pageOf(slot));
    if (fresh) this.setLive(this.live + 1);
    return 'ok';
  }

  /** True when the key was there. */
  delete(key: Uint8Array): boolean {
    const found = this.find(key);
    if (found.slot < 0) return false;
    this.view.setUint8(this.offsetOf(found.slot) + Slot.STATE, State.DELETED);
    this.dirtyLog.mark(this.pageOf(found.slot));
    this.setLive(this.live - 1);
    return true;
  }

  /** Checks the table's own invariants: LIVE matches the live slots, none holds an impossible length. For tests. */
  check(): { ok: boolean; live: number; counted: number } {
    let counted = 0;
    let ok = true;
    for (let slot = 0; slot < this.slots; slot++) {
      const offset = this.offsetOf(slot);
      const state = this.view.getUint8(offset + Slot.STATE);
      if (state > State.DELETED) ok = false;
      if (state !== State.LIVE) continue;
      counted += 1;
      const keyLength = this.view.getUint8(offset + Slot.KEYLEN);
      const valueLength = this.view.getUint16(offset + Slot.VALUELEN, true);
      if (keyLength < 1 || keyLength > MAX_KEY_BYTES || valueLength < 1 || valueLength > MAX_VALUE_BYTES) ok = false;
    }
    return { ok: ok && counted === this.live, live: this.live, counted };
  }

  /** The slot holding `key` (or -1), and the first slot an insert of it may take. */
  private find(key: Uint8Array): { slot: number; free: number } {
    let index = fnv1a(key) % this.slots;
    let free = -1;
    for (let probes = 0; probes < this.slots; probes++) {
      const offset = this.offsetOf(index);
      const state = this.view.getUint8(offset + Slot.STATE);
      if (state === State.EMPTY) return { slot: -1, free: free < 0 ? index : free };
      if (state === State.DELETED) {
        if (free < 0) free = index;
      } else if (this.view.getUint8(offset + Slot.KEYLEN) === key.length && this.sameKey(offset, key)) {
        return { slot: index, free };
      }
      index = index + 1 === this.slots ? 0 : index + 1;
    }
    return { slot: -1, free };
  }

  private sameKey(offset: number, key: Uint8Array): boolean {
    const base = offset + Slot.KEY;
    for (let i = 0; i < key.length; i++) if (this.bytes[base + i] !== key[i]) return false;
    return true;
  }

  private setLive(live: number): void {
    this.view.setUint32(Header.LIVE * 4, live, true);
    this.dirtyLog.mark(0);
  }

  private offsetOf(slot: number): number {
    return PAGE_SIZE + slot * KV_SLOT_BYTES;
  }

  private pageOf(slot: number): number {
    return 1 + Math.floor(slot / SLOTS_PER_PAGE);
  }
}

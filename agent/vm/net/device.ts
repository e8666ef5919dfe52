/**
 * The guest's network device: a receive ring and a transmit ring in guest memory, so that requests in flight are
 * part of the VM's state and move with it (a live migration copies them like any other page).
 *
 * The device region is the last NET_REGION_PAGES pages of guest memory; a workload's working set (pattern pages,
 * the kv table) may not reach into it (`requireWorkingSetBelowDevice`).
 *
 *   guest memory
 *   +------------------------------+--------+----------------------+----------------------+
 *   | working set, and the rest    | header | RX ring: 256 slots   | TX ring: 256 slots   |
 *   | of memory                    | 1 page | 64 pages             | 64 pages             |
 *   +------------------------------+--------+----------------------+----------------------+
 *                                  ^ regionFirstPage = pageCount - NET_REGION_PAGES
 *
 *   header page, Int32 words (Atomics)
 *   +-------+---------+-------+---------+---------+---------+---------+--------+
 *   | MAGIC | VERSION | SLOTS | RX_HEAD | RX_TAIL | TX_HEAD | TX_TAIL | SERVED |
 *   +-------+---------+-------+---------+---------+---------+---------+--------+
 *    0       1         2       3         4         5         6         7
 *
 *   one slot, 1024 bytes (4 to a page)
 *   +------------+------------+-----------+----------+------------------------------+
 *   | LENGTH u32 | CLIENT_IP  | CLIENT_   | reserved | DATA: min(LENGTH, 1012) bytes |
 *   | (as sent)  | u32        | PORT u16  | u16      |                              |
 *   +------------+------------+-----------+----------+------------------------------+
 *    byte 0       4            8           10         12
 *
 * Indices are free-running int32 counters; a ring holds `head - tail` entries (mod 2^32), at most RING_SLOTS.
 *
 * What must stay true:
 * - One writer per index: the agent (the device's host backend, on the main thread) writes RX_HEAD and TX_TAIL; the
 *   guest (the vCPU worker) writes RX_TAIL, TX_HEAD and SERVED. A producer writes the slot, then publishes it by
 *   storing the head (Atomics.store); a consumer reads the slot, then frees it by storing the tail.
 * - Every byte written here, by either thread, is written first and its page marked dirty after (dirty-log.ts):
 *   the slot's page after the slot, the header page after an index. So a migration's last copy, taken with the
 *   vCPU paused and the agent no longer touching the rings, carries every entry and index exactly.
 * - The guest serves a request whole between two pause checks: reading it, its table writes, its reply and the
 *   RX_TAIL store. A paused guest has never half served a request.
 * - Whether a VM has the device at all is not read from memory (a pattern page could hold any word where MAGIC
 *   is): the control block's NET_PRESENT slot says so (layout.ts), set by the agent from the VM's address.
 */
import { NET_REGION_PAGES, NET_SERVICE_PORT, PAGE_SIZE } from '../../../shared/constants.js';
import type { DirtyLog } from '../dirty-log.js';

export { NET_REGION_PAGES, NET_SERVICE_PORT };
/** Largest request the protocol allows; longer ones get `ERROR toolong`. */
export const MAX_REQUEST_BYTES = 512;

export const SLOT_BYTES = 1024;
/** Bytes of a datagram a slot keeps: enough for any valid request, and for the id of a too-long one. */
export const SLOT_DATA_BYTES = SLOT_BYTES - 12;
/**
 * Entries per ring. 256 requests are a quarter of a second at 1,000 requests/s: far more than the guest is ever
 * paused outside a migration, and the host backend queues what does not fit (backend.ts).
 */
export const RING_SLOTS = 256;
const RING_PAGES = (RING_SLOTS * SLOT_BYTES) / PAGE_SIZE;
if (NET_REGION_PAGES !== 1 + 2 * RING_PAGES) throw new Error('NET_REGION_PAGES must be a header page and two rings');
export const NET_REGION_BYTES = NET_REGION_PAGES * PAGE_SIZE;

/** "FNET": the header of an initialised device. */
export const NET_MAGIC = 0x464e4554;
export const NET_VERSION = 1;

export const NetHeaderSlot = {
  MAGIC: 0,
  VERSION: 1,
  /** RING_SLOTS, as the device was made: a guest image from another build is refused rather than misread. */
  SLOTS: 2,
  /** Agent -> guest: entries put into the RX ring. */
  RX_HEAD: 3,
  /** Guest -> agent: entries taken from the RX ring. */
  RX_TAIL: 4,
  /** Guest -> agent: replies put into the TX ring. */
  TX_HEAD: 5,
  /** Agent -> guest: replies taken from the TX ring (sent). */
  TX_TAIL: 6,
  /** Guest: requests served, replies or not (wraps at 2^32). */
  SERVED: 7,
} as const;
const HEADER_WORDS = 8;

const SlotField = { LENGTH: 0, CLIENT_IP: 4, CLIENT_PORT: 8, DATA: 12 } as const;

export interface Datagram {
  /** IPv4 address as a uint32 (a.b.c.d = a << 24 | ...). */
  ip: number;
  port: number;
  /** The bytes as the ring holds them (at most SLOT_DATA_BYTES). */
  data: Uint8Array<ArrayBufferLike>;
  /** The datagram's length as sent, which may exceed data.length. */
  length: number;
}

export function regionFirstPage(pageCount: number): number {
  return pageCount - NET_REGION_PAGES;
}

/** The error text for a working set that would overlap the device, or undefined when it fits below it. */
export function workingSetOverlap(pageCount: number, wssPages: number): string | undefined {
  const room = pageCount - NET_REGION_PAGES;
  if (room < 1) return `the VM's memory (${pageCount} pages) cannot hold the network device (${NET_REGION_PAGES} pages)`;
  if (wssPages > room) return `the working set (${wssPages} pages) reaches into the network device at the top of guest memory (its last ${NET_REGION_PAGES} pages); at most ${room} pages fit below it`;
  return undefined;
}

export function ipToUint32(ip: string): number {
  const parts = ip.split('.').map(Number);
  return (((parts[0] ?? 0) << 24) | ((parts[1] ?? 0) << 16) | ((parts[2] ?? 0) << 8) | (parts[3] ?? 0)) >>> 0;
}

export function uint32ToIp(value: number): string {
  return `${value >>> 24}.${(value >>> 16) & 255}.${(value >>> 8) & 255}.${value & 255}`;
}

/** The rings over one VM's guest memory; both threads make one over the same shared memory. */
export class NetDevice {
  private readonly bytes: Uint8Array;
  private readonly view: DataView;
  private readonly header: Int32Array;
  private readonly firstPage: number;
  private readonly headerOffset: number;
  private readonly dirtyLog: DirtyLog;

  constructor(memory: SharedArrayBuffer, pageCount: number, dirtyLog: DirtyLog) {
    this.dirtyLog = dirtyLog;
    this.firstPage = regionFirstPage(pageCount);
    this.headerOffset = this.firstPage * PAGE_SIZE;
    this.bytes = new Uint8Array(memory, 0, pageCount * PAGE_SIZE);
    this.view = new DataView(memory, this.headerOffset, NET_REGION_BYTES);
    this.header = new Int32Array(memory, this.headerOffset, HEADER_WORDS);
  }

  /** Agent, once, before the guest first runs with an address: an empty device. */
  initialise(): void {
    for (let word = 1; word < HEADER_WORDS; word++) Atomics.store(this.header, word, 0);
    Atomics.store(this.header, NetHeaderSlot.VERSION, NET_VERSION);
    Atomics.store(this.header, NetHeaderSlot.SLOTS, RING_SLOTS);
    Atomics.store(this.header, NetHeaderSlot.MAGIC, NET_MAGIC);
    this.dirtyLog.mark(this.firstPage); // after the words: write, then mark
  }

  /** Whether the header is a device this build understands (a guest image from elsewhere could hold anything). */
  isValid(): boolean {
    return Atomics.load(this.header, NetHeaderSlot.MAGIC) === NET_MAGIC
      && Atomics.load(this.header, NetHeaderSlot.VERSION) === NET_VERSION
      && Atomics.load(this.header, NetHeaderSlot.SLOTS) === RING_SLOTS;
  }

  rxCount(): number {
    return (Atomics.load(this.header, NetHeaderSlot.RX_HEAD) - Atomics.load(this.header, NetHeaderSlot.RX_TAIL)) | 0;
  }

  txCount(): number {
    return (Atomics.load(this.header, NetHeaderSlot.TX_HEAD) - Atomics.load(this.header, NetHeaderSlot.TX_TAIL)) | 0;
  }

  get served(): number {
    return Atomics.load(this.header, NetHeaderSlot.SERVED) >>> 0;
  }

  /** Agent: puts a datagram into the RX ring; false when the ring is full. */
  pushRx(ip: number, port: number, data: Uint8Array): boolean {
    return this.push(NetHeaderSlot.RX_HEAD, NetHeaderSlot.RX_TAIL, 0, ip, port, data, data.length);
  }

  /** Guest: puts a reply into the TX ring; false when the ring is full (the guest then waits for the agent). */
  pushTx(ip: number, port: number, data: Uint8Array): boolean {
    return this.push(NetHeaderSlot.TX_HEAD, NetHeaderSlot.TX_TAIL, RING_SLOTS, ip, port, data, data.length);
  }

  /** Guest: the oldest request, without taking it (it is taken by `takeRx` once served). */
  peekRx(): Datagram | undefined {
    return this.peek(NetHeaderSlot.RX_HEAD, NetHeaderSlot.RX_TAIL, 0);
  }

  takeRx(): void {
    this.take(NetHeaderSlot.RX_TAIL);
  }

  /** Guest: counts a request served (replied to or dropped). */
  countServed(): void {
    Atomics.add(this.header, NetHeaderSlot.SERVED, 1);
    this.dirtyLog.mark(this.firstPage);
  }

  /** Agent: the oldest reply, copied out of guest memory, or undefined; `takeTx` frees it. */
  peekTx(): (Datagram & { data: Uint8Array<ArrayBuffer> }) | undefined {
    const entry = this.peek(NetHeaderSlot.TX_HEAD, NetHeaderSlot.TX_TAIL, RING_SLOTS);
    return entry && { ...entry, data: new Uint8Array(entry.data) };
  }

  takeTx(): void {
    this.take(NetHeaderSlot.TX_TAIL);
  }

  /** The word the guest notifies after putting replies: the agent waits on it (Atomics.waitAsync). */
  get notifyWords(): { array: Int32Array; index: number } {
    return { array: this.header, index: NetHeaderSlot.TX_HEAD };
  }

  private slotOffset(ringBase: number, index: number): number {
    // ringBase is 0 for RX and RING_SLOTS for TX: the TX ring's slots follow the RX ring's.
    return PAGE_SIZE + (ringBase + (index & (RING_SLOTS - 1))) * SLOT_BYTES;
  }

  private push(headSlot: number, tailSlot: number, ringBase: number, ip: number, port: number, data: Uint8Array, length: number): boolean {
    const head = Atomics.load(this.header, headSlot);
    if (((head - Atomics.load(this.header, tailSlot)) | 0) >= RING_SLOTS) return false;
    const offset = this.slotOffset(ringBase, head);
    const kept = Math.min(data.length, SLOT_DATA_BYTES);
    this.view.setUint32(offset + SlotField.LENGTH, length, true);
    this.view.setUint32(offset + SlotField.CLIENT_IP, ip >>> 0, true);
    this.view.setUint16(offset + SlotField.CLIENT_PORT, port, true);
    this.bytes.set(data.subarray(0, kept), this.headerOffset + offset + SlotField.DATA);
    this.dirtyLog.mark(this.firstPage + Math.floor(offset / PAGE_SIZE)); // the slot written, then marked
    Atomics.store(this.header, headSlot, (head + 1) | 0);
    this.dirtyLog.mark(this.firstPage); // the index published, then marked
    return true;
  }

  private peek(headSlot: number, tailSlot: number, ringBase: number): Datagram | undefined {
    const tail = Atomics.load(this.header, tailSlot);
    if (Atomics.load(this.header, headSlot) === tail) return undefined;
    const offset = this.slotOffset(ringBase, tail);
    const length = this.view.getUint32(offset + SlotField.LENGTH, true);
    const start = this.headerOffset + offset + SlotField.DATA;
    return {
      length,
      ip: this.view.getUint32(offset + SlotField.CLIENT_IP, true),
      port: this.view.getUint16(offset + SlotField.CLIENT_PORT, true),
      data: this.bytes.subarray(start, start + Math.min(length, SLOT_DATA_BYTES)),
    };
  }

  private take(tailSlot: number): void {
    Atomics.add(this.header, tailSlot, 1);
    this.dirtyLog.mark(this.firstPage);
  }
}

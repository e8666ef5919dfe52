/**
 * The network device's host side through a migration's switchover, on plain memory with an address binding that
 * records what it is given: where each datagram goes in each mode, and that order is kept across every handover.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { PAGE_SIZE } from '../../shared/constants.js';
import { createLogger } from '../../shared/log.js';
import { DirtyLog } from '../../agent/vm/dirty-log.js';
import type { AddressBinding, ClientDatagram } from '../../agent/vm/net/address.js';
import { NetBackend } from '../../agent/vm/net/backend.js';
import { NetDevice, RING_SLOTS } from '../../agent/vm/net/device.js';

const PAGES = 256;
const backends: NetBackend[] = [];
afterEach(async () => {
  for (const backend of backends.splice(0)) await backend.stop();
});

function datagram(text: string): ClientDatagram {
  return { ip: 0x7f000001, port: 5000, data: Buffer.from(text) as Uint8Array<ArrayBuffer> };
}

async function setUp(earlier: ClientDatagram[] = []): Promise<{ backend: NetBackend; guest: NetDevice; arrive: (text: string) => void; sent: string[]; rings: number; addressMoves: string[] }> {
  const memory = new SharedArrayBuffer(PAGES * PAGE_SIZE);
  const dirty = DirtyLog.allocate(PAGES);
  const host = new NetDevice(memory, PAGES, dirty);
  host.initialise();
  const sent: string[] = [];
  const addressMoves: string[] = [];
  let onDatagram: ((datagram: ClientDatagram) => void) | undefined;
  const binding: AddressBinding = {
    address: '127.100.0.9:7777',
    claim: async (handler) => {
      onDatagram = handler;
    },
    send: (reply) => sent.push(Buffer.from(reply.data).toString()),
    withdraw: () => addressMoves.push('withdraw'),
    restore: () => addressMoves.push('restore'),
    announcements: 0,
    release: async () => {
      onDatagram = undefined;
    },
  };
  const state = { rings: 0 };
  const backend = await NetBackend.start(host, binding, () => (state.rings += 1), createLogger('test', 'error', () => undefined), earlier);
  backends.push(backend);
  return {
    backend, guest: new NetDevice(memory, PAGES, dirty), sent, addressMoves, get rings() { return state.rings; },
    arrive: (text) => onDatagram?.(datagram(text)),
  };
}

/** What the guest finds in its RX ring, taking it. */
function drain(guest: NetDevice): string[] {
  const found: string[] = [];
  for (let request = guest.peekRx(); request; request = guest.peekRx()) {
    found.push(Buffer.from(request.data).toString());
    guest.takeRx();
  }
  return found;
}

describe('network backend', () => {
  it('puts what arrives into the RX ring, after what was forwarded before it could serve, and wakes the guest', async () => {
    const setup = await setUp([datagram('1 PING'), datagram('2 PING')]);
    setup.arrive('3 PING');
    expect(drain(setup.guest)).toEqual(['1 PING', '2 PING', '3 PING']);
    expect(setup.rings).toBeGreaterThan(0);
  });

  it('queues on the host what the full ring cannot take, and fills the ring again as the guest frees it', async () => {
    const { guest, arrive } = await setUp();
    for (let i = 0; i < RING_SLOTS + 10; i++) arrive(`${i} PING`);
    const first = drain(guest);
    expect(first.length).toBe(RING_SLOTS);
    // The guest notifies after serving; the backend's pump refills the ring.
    const { array, index } = guest.notifyWords;
    Atomics.notify(array, index);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(drain(guest)).toEqual(Array.from({ length: 10 }, (_, i) => `${RING_SLOTS + i} PING`));
  });

  it('at the pause sends the replies made and keeps what arrives; a rollback serves the kept ones first, in order', async () => {
    const { backend, guest, arrive, sent, addressMoves } = await setUp();
    guest.pushTx(0x7f000001, 5000, Buffer.from('0 PONG'));
    backend.hold();
    expect(sent).toEqual(['0 PONG']); // sent before the last copy of memory is made
    expect(addressMoves).toEqual(['withdraw']); // the address stops drawing traffic here at the pause
    arrive('1 PING');
    arrive('2 PING');
    expect(guest.peekRx()).toBeUndefined(); // the rings are left alone while held
    backend.serve();
    expect(addressMoves).toEqual(['withdraw', 'restore']);
    arrive('3 PING');
    expect(drain(guest)).toEqual(['1 PING', '2 PING', '3 PING']);
  });

  it('at the commit forwards the kept datagrams, then each new one, in order; in doubt it keeps them again', async () => {
    const { backend, guest, arrive } = await setUp();
    backend.hold();
    arrive('1 PING');
    arrive('2 PING');
    const forwarded: string[][] = [];
    backend.forwardTo((datagrams) => forwarded.push(datagrams.map((d) => Buffer.from(d.data).toString())));
    arrive('3 PING');
    expect(forwarded).toEqual([['1 PING', '2 PING'], ['3 PING']]);
    expect(backend.forwarded).toBe(3);
    backend.keep(); // activation unconfirmed
    arrive('4 PING');
    expect(forwarded.length).toBe(2);
    backend.serve(); // settled: the destination never ran it
    expect(drain(guest)).toEqual(['4 PING']);
  });
});

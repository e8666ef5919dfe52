/**
 * The guest's service, its kv table and its rings, on plain memory: the protocol of DESIGN.md ("Guest service
 * protocol") case by case, the table's capacity, and the write-then-mark rule for every byte they write.
 */
import { describe, expect, it } from 'vitest';
import { PAGE_SIZE } from '../../shared/constants.js';
import { DirtyLog } from '../../agent/vm/dirty-log.js';
import { NET_REGION_PAGES, NetDevice, RING_SLOTS, regionFirstPage, workingSetOverlap } from '../../agent/vm/net/device.js';
import { serveRequest } from '../../agent/vm/net/guest-service.js';
import { KvTable, kvCapacity } from '../../agent/vm/net/kv-table.js';

const text = (bytes: Uint8Array | undefined): string | undefined => (bytes === undefined ? undefined : Buffer.from(bytes).toString('latin1'));

function guest(pages = 64): { memory: SharedArrayBuffer; dirty: DirtyLog; table: KvTable } {
  const memory = new SharedArrayBuffer(pages * PAGE_SIZE);
  const dirty = DirtyLog.allocate(pages);
  return { memory, dirty, table: new KvTable(memory, 16, dirty) };
}

function ask(table: KvTable | undefined, request: string | Uint8Array, length?: number): string | undefined {
  const data = typeof request === 'string' ? Buffer.from(request, 'latin1') : request;
  return text(serveRequest(data, length ?? data.length, table));
}

describe('guest service protocol', () => {
  it('answers PING, PUT, GET and DEL exactly as the design says', () => {
    const { table } = guest();
    expect(ask(table, '1 PING')).toBe('1 PONG');
    expect(ask(table, '2 GET k')).toBe('2 NOTFOUND');
    expect(ask(table, '3 PUT k v1')).toBe('3 OK');
    expect(ask(table, '4 PUT k v2')).toBe('4 OK');
    expect(ask(table, '5 GET k')).toBe('5 VALUE v2');
    expect(ask(table, '6 DEL k')).toBe('6 OK');
    expect(ask(table, '7 DEL k')).toBe('7 NOTFOUND');
    expect(ask(table, '8 GET k')).toBe('8 NOTFOUND');
    expect(ask(table, '00012345678901234567 PING')).toBe('00012345678901234567 PONG');
    expect(ask(table, `9 PUT ${'K'.repeat(64)} ${'~'.repeat(200)}`)).toBe('9 OK');
    expect(ask(table, `10 GET ${'K'.repeat(64)}`)).toBe(`10 VALUE ${'~'.repeat(200)}`);
    expect(ask(table, '11 PUT a.b-c_D9 !"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~')).toBe('11 OK');
  });

  it('names the reason of every bad request that carries an id, and drops the rest', () => {
    const { table } = guest();
    const cases: [string, string | undefined][] = [
      ['1 FOO', '1 ERROR badverb'],
      ['1 ping', '1 ERROR badverb'],
      ['1 PING extra', '1 ERROR badverb'],
      ['1 PING\n', '1 ERROR badverb'],
      ['1', '1 ERROR badverb'],
      ['1 ', '1 ERROR badverb'],
      ['1  PING', '1 ERROR badverb'],
      ['1 GET', '1 ERROR badkey'],
      ['1 GET a b', '1 ERROR badkey'],
      ['1 GET a/b', '1 ERROR badkey'],
      ['1 GET ', '1 ERROR badkey'],
      [`1 GET ${'k'.repeat(65)}`, '1 ERROR badkey'],
      ['1 DEL', '1 ERROR badkey'],
      ['1 PUT', '1 ERROR badkey'],
      ['1 PUT k', '1 ERROR badvalue'],
      ['1 PUT k ', '1 ERROR badvalue'],
      ['1 PUT k a b', '1 ERROR badvalue'],
      ['1 PUT k caf\u00e9', '1 ERROR badvalue'],
      [`1 PUT k ${'v'.repeat(201)}`, '1 ERROR badvalue'],
      [`1 PING ${'x'.repeat(600)}`, '1 ERROR toolong'],
      ['', undefined],
      [' 1 PING', undefined],
      ['PING', undefined],
      ['1x PING', undefined],
      ['123456789012345678901 PING', undefined],
      ['\u0000\u00ff garbage', undefined],
    ];
    for (const [request, reply] of cases) expect(ask(table, request), JSON.stringify(request)).toBe(reply);
    // A datagram longer than a ring slot keeps: the guest sees its start and its full length.
    expect(ask(table, '77 PING', 70_000)).toBe('77 ERROR toolong');
    expect(table.check()).toEqual({ ok: true, live: 0, counted: 0 });
  });

  it('answers only PING on a VM without a table', () => {
    expect(ask(undefined, '5 PING')).toBe('5 PONG');
    expect(ask(undefined, '5 PUT k v')).toBe('5 ERROR badverb');
    expect(ask(undefined, '5 GET k')).toBe('5 ERROR badverb');
  });
});

describe('kv table', () => {
  it('holds at least 10,000 keys in a 64 MiB VM and says full past its capacity, without losing a key', () => {
    const wssPages = (64 * 1024 * 1024) / PAGE_SIZE - NET_REGION_PAGES;
    expect(kvCapacity(wssPages)).toBeGreaterThanOrEqual(10_000);

    const { table } = guest(64);
    const capacity = table.capacity;
    for (let k = 0; k < capacity; k++) expect(ask(table, `${k} PUT key${k} value${k}`)).toBe(`${k} OK`);
    expect(ask(table, '1 PUT one-more v')).toBe('1 ERROR full');
    expect(ask(table, '2 PUT key7 changed')).toBe('2 OK'); // an existing key can still change
    expect(ask(table, '3 DEL key8')).toBe('3 OK');
    expect(ask(table, '4 PUT one-more v')).toBe('4 OK'); // a deleted slot is reused
    for (let k = 0; k < capacity; k++) {
      const expected = k === 7 ? 'changed' : `value${k}`;
      if (k !== 8) expect(ask(table, `${k} GET key${k}`)).toBe(`${k} VALUE ${expected}`);
    }
    expect(table.check()).toEqual({ ok: true, live: capacity, counted: capacity });
  });

  it('marks every page it writes dirty, and finds its table again over the same memory', () => {
    const { memory, dirty, table } = guest();
    dirty.clearAll();
    ask(table, '1 PUT somekey somevalue');
    const marked = Array.from(dirty.harvest());
    expect(marked).toContain(0); // the header: its live count
    expect(marked.length).toBe(2); // and the slot's page
    const again = new KvTable(memory, 16, dirty);
    expect(text(again.get(Buffer.from('somekey')))).toBe('somevalue');
  });
});

describe('network device rings', () => {
  it('carries datagrams in order through wrap-around, refuses a full ring, and marks what it writes', () => {
    const pages = 256;
    const memory = new SharedArrayBuffer(pages * PAGE_SIZE);
    const dirty = DirtyLog.allocate(pages);
    const host = new NetDevice(memory, pages, dirty);
    const vcpu = new NetDevice(memory, pages, dirty); // the worker's view of the same memory
    host.initialise();
    expect(vcpu.isValid()).toBe(true);
    for (let round = 0; round < 3; round++) {
      dirty.clearAll();
      for (let i = 0; i < RING_SLOTS; i++) expect(host.pushRx(0x7f000001, 40000 + i, Buffer.from(`${round}.${i} PING`))).toBe(true);
      expect(host.pushRx(0x7f000001, 1, Buffer.from('x'))).toBe(false);
      expect(dirty.isDirty(regionFirstPage(pages))).toBe(true);
      expect(dirty.count()).toBe(1 + RING_SLOTS / 4); // the header and every RX page
      for (let i = 0; i < RING_SLOTS; i++) {
        const request = vcpu.peekRx()!;
        expect([text(request.data), request.port, request.ip]).toEqual([`${round}.${i} PING`, 40000 + i, 0x7f000001]);
        expect(vcpu.pushTx(request.ip, request.port, Buffer.from(`${round}.${i} PONG`))).toBe(true);
        vcpu.takeRx();
      }
      expect(vcpu.peekRx()).toBeUndefined();
      for (let i = 0; i < RING_SLOTS; i++) {
        expect(text(host.peekTx()!.data)).toBe(`${round}.${i} PONG`);
        host.takeTx();
      }
      expect(host.txCount()).toBe(0);
    }
  });

  it('refuses a working set that reaches into the device', () => {
    expect(workingSetOverlap(1024, 1024 - NET_REGION_PAGES)).toBeUndefined();
    expect(workingSetOverlap(1024, 1024 - NET_REGION_PAGES + 1)).toMatch(/reaches into the network device/);
  });
});

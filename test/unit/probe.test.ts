/**
 * `ferry vm probe` against a service in this process (the guest's own request handler over a table in plain
 * memory) that misbehaves on purpose: the probe must see through lost datagrams with its retries, and must catch an
 * acknowledged write that the service did not keep, or its "no write lost" would prove nothing.
 */
import dgram from 'node:dgram';
import { afterEach, describe, expect, it } from 'vitest';
import { PAGE_SIZE } from '../../shared/constants.js';
import { serveRequest } from '../../agent/vm/net/guest-service.js';
import { KvTable } from '../../agent/vm/net/kv-table.js';
import { bindAddressFor, runProbe } from '../../coordinator/probe.js';

interface Misbehaviour {
  /** Drops the first copy of every Nth request (by id). */
  dropEvery?: number;
  /** Answers OK to every PUT of the key with this suffix, without applying it. */
  forgetKey?: string;
}

const sockets: dgram.Socket[] = [];
afterEach(() => {
  for (const socket of sockets.splice(0)) socket.close();
});

async function service(misbehaviour: Misbehaviour): Promise<string> {
  const table = new KvTable(new SharedArrayBuffer(64 * PAGE_SIZE), 64, { mark: () => undefined });
  const socket = dgram.createSocket('udp4');
  sockets.push(socket);
  const seen = new Set<string>();
  socket.on('message', (message, remote) => {
    const text = message.toString('latin1');
    const id = text.split(' ')[0]!;
    const first = !seen.has(id);
    seen.add(id);
    if (first && misbehaviour.dropEvery && Number(id) % misbehaviour.dropEvery === 0) return;
    if (misbehaviour.forgetKey && text.split(' ')[2]?.endsWith(misbehaviour.forgetKey) && text.includes(' PUT ')) {
      socket.send(`${id} OK`, remote.port, remote.address);
      return;
    }
    const reply = serveRequest(message, message.length, table);
    if (reply) socket.send(reply, remote.port, remote.address);
  });
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', () => resolve()));
  return `127.0.0.1:${socket.address().port}`;
}

describe('vm probe', () => {
  it('retries what goes unanswered, so a lossy service still has every request answered and every write kept', async () => {
    const result = await runProbe({ address: await service({ dropEvery: 7 }), ratePerSec: 400, durationMs: 600, keys: 10 });
    expect(result.sent).toBeGreaterThan(200);
    expect(result.retries).toBeGreaterThan(20);
    expect(result.unanswered).toBe(0);
    expect(result.answered).toBe(result.sent);
    expect(result.writes).toMatchObject({ checked: 10, lost: 0 });
    expect(result.latencyMs.max).toBeGreaterThanOrEqual(result.latencyMs.p50);
  });

  it('catches an acknowledged write that the service did not keep', async () => {
    const result = await runProbe({ address: await service({ forgetKey: '-3' }), ratePerSec: 400, durationMs: 500, keys: 10 });
    expect(result.sent).toBeGreaterThan(150);
    expect(result.unanswered).toBe(0);
    expect(result.writes.lost).toBe(1);
  });

  it('binds its socket to 127.0.0.1 for a loopback service and to every interface for any other', () => {
    expect(bindAddressFor('127.100.0.5')).toBe('127.0.0.1');
    expect(bindAddressFor('10.213.0.50')).toBe('0.0.0.0');
  });
});

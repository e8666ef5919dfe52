/**
 * The page stream of its own (shared/page-stream.ts) between real agent processes: the default path and the
 * WebSocket beside it, the fallback when the destination cannot dial the source back (for a migration and for a link
 * measurement), a stream cut under a migration, and the source agent refusing a `/pages` dial it did not ask for.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { dialPageStream } from '../../shared/page-stream.js';
import { FerryError } from '../../shared/errors.js';
import { expectMemoryMatchesReplay, startCluster, type TestCluster, vmInfo, waitForWrites } from '../harness.js';

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

async function refusal(promise: Promise<unknown>): Promise<FerryError> {
  const caught = await promise.then(() => undefined, (error: unknown) => error);
  expect(caught).toBeInstanceOf(FerryError);
  return caught as FerryError;
}

describe('the page stream', () => {
  it('carries the pages by default, and the peer WebSocket carries them with --page-stream ws; both commit with memory that matches replay', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '32MiB', '--filled', '--rate', '20000', '--wss', '8MiB', '--seed', '11')).code).toBe(0);
    await waitForWrites(c, 'web1', 2000);

    const there = await c.ferry('migrate', 'web1', '--to', 'host-b', '--json', '--no-forecast', '--max-bandwidth', '100MiB/s');
    expect(there.code, there.stderr).toBe(0);
    const tcp = there.json();
    expect(tcp).toMatchObject({ outcome: 'committed', pageStream: { kind: 'tcp' }, verification: { match: true } });
    expect(tcp.pageStream.fallback).toBeUndefined();
    // Several rounds went on it: round 1's run and later rounds' scattered pages, then stop-and-copy's.
    expect(tcp.rounds.length).toBeGreaterThanOrEqual(2);
    expect(tcp.rounds[0]).toMatchObject({ pages: 8192, zeroPages: 0, bytes: 32 * 1024 * 1024 });
    await expectMemoryMatchesReplay(c, 'web1');

    const back = await c.ferry('migrate', 'web1', '--to', 'host-a', '--page-stream', 'ws', '--no-forecast');
    expect(back.code, back.stderr).toBe(0);
    expect(back.stdout).toMatch(/pages over\s+the peer WebSocket\n/);
    expect((await vmInfo(c, 'web1')).host).toBe('host-a');
    await expectMemoryMatchesReplay(c, 'web1');

    const again = await c.ferry('migrate', 'web1', '--to', 'host-b', '--no-forecast');
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/pages over\s+a TCP stream of their own/);
    await expectMemoryMatchesReplay(c, 'web1');

    const bad = await c.ferry('migrate', 'web1', '--to', 'host-a', '--page-stream', 'udp');
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/--page-stream.*udp|udp.*--page-stream|Allowed choices are tcp, ws/);
  });

  it('goes over the peer WebSocket, and the report says why, when the destination cannot dial the source back', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    // host-a's migration URL is a port nothing listens on: host-b reaches host-a there, and cannot.
    expect((await c.ferry('hosts', 'rm', 'host-a')).code).toBe(0);
    expect((await c.ferry('hosts', 'add', 'host-a', c.agent('host-a').url, '--migration-url', 'ws://127.0.0.1:1')).code).toBe(0);
    expect((await c.ferry('vm', 'create', 'web2', '--on', 'host-a', '--memory', '16MiB', '--filled', '--rate', '5000', '--seed', '12')).code).toBe(0);
    await waitForWrites(c, 'web2', 500);
    const migrated = await c.ferry('migrate', 'web2', '--to', 'host-b', '--json', '--no-forecast');
    expect(migrated.code, migrated.stderr).toBe(0);
    const report = migrated.json();
    expect(report).toMatchObject({ outcome: 'committed', pageStream: { kind: 'ws' } });
    expect(report.pageStream.fallback).toMatch(/cannot open the page stream to ws:\/\/127\.0\.0\.1:1/);
    await expectMemoryMatchesReplay(c, 'web2');
  });

  it('carries a link measurement the same way, and the plan says it went over the peer WebSocket, and why, when the destination cannot dial the source back', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web4', '--on', 'host-a', '--memory', '16MiB', '--rate', '1000', '--seed', '14')).code).toBe(0);
    const direct = await c.ferry('migrate', 'web4', '--to', 'host-b', '--plan', '--json');
    expect(direct.code, direct.stderr).toBe(0);
    expect(direct.json().link).toMatchObject({ from: 'host-a', to: 'host-b', pageStream: 'tcp', mismatches: 0 });
    // A migration asked for the WebSocket is forecast on the WebSocket: a measurement of its own, no fallback.
    const overWs = await c.ferry('migrate', 'web4', '--to', 'host-b', '--plan', '--json', '--page-stream', 'ws');
    expect(overWs.code, overWs.stderr).toBe(0);
    expect(overWs.json().link).toMatchObject({ pageStream: 'ws', ageMs: 0, mismatches: 0 });
    expect(overWs.json().link.pageStreamFallback).toBeUndefined();

    // host-a's migration URL is a port nothing listens on: host-b is told to dial back there, and cannot.
    expect((await c.ferry('hosts', 'rm', 'host-a')).code).toBe(0);
    expect((await c.ferry('hosts', 'add', 'host-a', c.agent('host-a').url, '--migration-url', 'ws://127.0.0.1:1')).code).toBe(0);
    const planned = await c.ferry('migrate', 'web4', '--to', 'host-b', '--plan', '--json');
    expect(planned.code, planned.stderr).toBe(0);
    const { link } = planned.json();
    // A fresh measurement (the one over the stream is not taken for this path), with every page checked on arrival.
    expect(link).toMatchObject({ pageStream: 'ws', ageMs: 0, mismatches: 0 });
    expect(link.bytesPerSec).toBeGreaterThan(0);
    expect(link.pageStreamFallback).toMatch(/cannot open the page stream to ws:\/\/127\.0\.0\.1:1/);
    const text = await c.ferry('migrate', 'web4', '--to', 'host-b', '--plan');
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/on the peer WebSocket \(no stream of its own: cannot open the page stream to ws:\/\/127\.0\.0\.1:1/);
    expect((await vmInfo(c, 'web4')).host).toBe('host-a');
  });

  it('rolls the migration back when the stream is cut under it: the VM runs on at its source with its memory, and the destination keeps nothing', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b', env: { FERRY_FAULTS: 'cut-stream:4000000' } }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web3', '--on', 'host-a', '--memory', '32MiB', '--filled', '--rate', '5000', '--seed', '13')).code).toBe(0);
    await waitForWrites(c, 'web3', 500);
    const migrated = await c.ferry('migrate', 'web3', '--to', 'host-b', '--json', '--no-forecast');
    expect(migrated.code).not.toBe(0);
    expect(migrated.json()).toMatchObject({ outcome: 'rolled-back', pageStream: { kind: 'tcp' } });
    const after = await vmInfo(c, 'web3');
    expect(after).toMatchObject({ host: 'host-a', state: 'running' });
    await waitForWrites(c, 'web3', after.cpu.n + 100);
    const listed = (await c.ferry('vm', 'list', '--json')).json<{ name: string; host: string }[]>();
    expect(listed.map((vm) => `${vm.name}@${vm.host}`)).toEqual(['web3@host-a']);
    await expectMemoryMatchesReplay(c, 'web3');
    expect(c.agent('host-b').log()).toContain('fault: cutting the page stream');
    // The fault fired once: the next migration goes through.
    const retried = await c.ferry('migrate', 'web3', '--to', 'host-b', '--json', '--no-forecast');
    expect(retried.code, retried.stderr).toBe(0);
    await expectMemoryMatchesReplay(c, 'web3');
  });

  it('is refused by the source agent without the cluster token, or with a ticket it did not hand out', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const { url } = cluster.agent('host-a');
    const ticket = '0123456789abcdef0123456789abcdef';
    const wrongToken = await refusal(dialPageStream({ url, token: 'not-the-cluster-token', ticket, timeoutMs: 5000 }));
    expect(wrongToken.code).toBe('FERRY_ERR_UNAUTHORIZED');
    const unknownTicket = await refusal(dialPageStream({ url, token: cluster.token, ticket, timeoutMs: 5000 }));
    expect(unknownTicket.message).toMatch(/HTTP 404/);
    const nobody = await refusal(dialPageStream({ url: 'ws://127.0.0.1:1', token: cluster.token, ticket, timeoutMs: 5000 }));
    expect(nobody.code).toBe('FERRY_ERR_UNREACHABLE');
    // The agent is none the worse for it.
    expect((await cluster.ferry('hosts', '--json')).code).toBe(0);
  });
});

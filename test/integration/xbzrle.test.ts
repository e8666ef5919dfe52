/**
 * `ferry migrate --compress xbzrle` between real agent processes: a counters VM (each write changes 16 bytes of a
 * page) moved on the page stream of its own and back on the peer WebSocket, its pages sent again as deltas; it
 * commits, its memory matches a replay of its writes, and the report counts the cache's hits and the bytes saved.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { expectMemoryMatchesReplay, startCluster, type TestCluster, vmInfo, waitForWrites } from '../harness.js';

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

describe('delta compression', () => {
  it('moves a counters VM with --compress xbzrle over the page stream and back over the WebSocket, matching replay, and refuses bad compression options', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'ctr1', '--on', 'host-a', '--memory', '32MiB', '--workload', 'counters', '--rate', '20000', '--wss', '8MiB', '--seed', '21')).code).toBe(0);
    await waitForWrites(c, 'ctr1', 2000);
    // A counters guest starts filled: round 1 moves every byte, no page goes as a zero page.
    expect((await vmInfo(c, 'ctr1')).workload).toMatchObject({ kind: 'counters', filled: true });

    const there = await c.ferry('migrate', 'ctr1', '--to', 'host-b', '--compress', 'xbzrle', '--json', '--no-forecast', '--max-bandwidth', '100MiB/s');
    expect(there.code, there.stderr).toBe(0);
    const tcp = there.json();
    expect(tcp).toMatchObject({ outcome: 'committed', pageStream: { kind: 'tcp' }, verification: { match: true, pageMismatches: 0 } });
    expect(tcp.rounds[0]).toMatchObject({ pages: 8192, zeroPages: 0, bytes: 32 * 1024 * 1024 });
    expect(tcp.compression).toMatchObject({ kind: 'xbzrle', cacheBytes: 32 * 1024 * 1024 });
    expect(tcp.compression.cacheHits).toBeGreaterThan(0);
    expect(tcp.compression.deltaPages).toBeGreaterThan(0);
    expect(tcp.compression.bytesSaved).toBeGreaterThan(0);
    expect(tcp.compression.encodeMs).toBeGreaterThan(0);
    expect(tcp.compression.decodeMs).toBeGreaterThan(0);
    await expectMemoryMatchesReplay(c, 'ctr1');
    const checked = await c.ferry('vm', 'check', 'ctr1');
    expect(checked.code, checked.stdout).toBe(0);
    expect(checked.stdout).toMatch(/all 8,192 pages match a replay/);

    const back = await c.ferry('migrate', 'ctr1', '--to', 'host-a', '--compress', 'xbzrle', '--xbzrle-cache', '4MiB', '--page-stream', 'ws', '--no-forecast', '--max-bandwidth', '100MiB/s');
    expect(back.code, back.stderr).toBe(0);
    expect(back.stdout).toMatch(/pages over\s+the peer WebSocket\n/);
    expect(back.stdout).toMatch(/compression\s+xbzrle, 4 MiB cache: [1-9][\d,]* hit\(s\).*saved/);
    // What it cost: the CPU of encoding on the source, of decoding on the destination.
    expect(back.stdout).toMatch(/encode [\d.]+ (µs|ms|s) of CPU on the source, decode [\d.]+ (µs|ms|s) on the destination/);
    expect((await vmInfo(c, 'ctr1')).host).toBe('host-a');
    await expectMemoryMatchesReplay(c, 'ctr1');

    // Refused before anything moves, with the option, what was typed, and a hint (exit 2, FERRY_ERR_BAD_INPUT).
    const unknown = await c.ferry('migrate', 'ctr1', '--to', 'host-b', '--compress', 'zstd', '--no-forecast');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/--compress zstd is not one of xbzrle/);
    const lonely = await c.ferry('migrate', 'ctr1', '--to', 'host-b', '--xbzrle-cache', '8MiB', '--no-forecast');
    expect(lonely.code).toBe(2);
    expect(lonely.stderr).toMatch(/--xbzrle-cache 8MiB without --compress xbzrle/);
    const tiny = await c.ferry('migrate', 'ctr1', '--to', 'host-b', '--compress', 'xbzrle', '--xbzrle-cache', '100', '--no-forecast');
    expect(tiny.code).toBe(2);
    expect(tiny.stderr).toMatch(/--xbzrle-cache 100 is below 4 KiB/);
    expect((await vmInfo(c, 'ctr1')).host).toBe('host-a');
  });
});

/**
 * Post-copy's parts (agent/vm/present-map.ts, agent/migration/page-install.ts `installMissing`,
 * postcopy-target.ts, coordinator/migrate-options.ts) and the whole of it over the in-memory twin of the network:
 * a page damaged in flight asked for again, and a link cut mid-push taken up by a resume.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_MAX_DOWNTIME_MS, PAGE_SIZE } from '../../shared/constants.js';
import { initChecksums } from '../../shared/checksum.js';
import { PAGE_FLAG_PAUSED, PAGE_FLAG_POSTCOPY, type PageHeader } from '../../shared/page-frame.js';
import { PageHasher, allocateGuestMemory } from '../../shared/page-hash.js';
import type { MigrationOptions } from '../../shared/protocol.js';
import { ZERO_PAGE_HASH } from '../../shared/zero-page.js';
import { PresentMap, bitmapPages } from '../../agent/vm/present-map.js';
import { PageInstaller } from '../../agent/migration/page-install.js';
import { summarizeStalls } from '../../agent/migration/postcopy-target.js';
import { migrationOptions } from '../../coordinator/migrate-options.js';
import { migrateLive, resumeLive } from '../../coordinator/migrate.js';
import { FerryError } from '../../shared/errors.js';
import { isPageHeader } from '../../shared/page-frame.js';
import { createMemoryNetwork, type MemoryNetwork } from '../memory-network.js';
import { checkPatternImage } from '../replay.js';

const MiB = 1024 * 1024;
const defaults: MigrationOptions = { maxDowntimeMs: DEFAULT_MAX_DOWNTIME_MS, maxBandwidthBytesPerSec: 0, maxRounds: 30, verify: 'pages', autoConverge: false };

describe('the present map', () => {
  it('marks exactly the pages a bitmap says are missing, and gives the same bitmap back', () => {
    const present = PresentMap.allocate(100);
    const missing = new Uint8Array(13);
    for (const page of [0, 7, 8, 31, 32, 63, 99]) missing[page >>> 3]! |= 1 << (page & 7);
    expect(present.loadMissing(missing)).toBe(7);
    expect(present.has(0)).toBe(false);
    expect(present.has(1)).toBe(true);
    expect(present.has(99)).toBe(false);
    expect(present.missingCount()).toBe(7);
    expect([...present.missingBitmap()]).toEqual([...missing]);
    expect([...bitmapPages(missing, 100)]).toEqual([0, 7, 8, 31, 32, 63, 99]);
    present.set(32);
    expect(present.has(32)).toBe(true);
    expect(present.missingCount()).toBe(6);
  });

  it('refuses a bitmap of another guest\'s size', () => {
    const present = PresentMap.allocate(100);
    expect(() => present.loadMissing(new Uint8Array(12))).toThrow(FerryError);
    expect(() => present.loadMissing(new Uint8Array(14))).toThrow(/13/);
  });
});

describe('installing a post-copy frame', () => {
  it('takes only missing pages, checks each against its hash, and leaves a damaged one missing for another try', async () => {
    await initChecksums();
    const pageCount = 8;
    const memory = allocateGuestMemory(pageCount * PAGE_SIZE);
    const bytes = new Uint8Array(memory.buffer, 0, pageCount * PAGE_SIZE);
    const hasher = new PageHasher(memory);
    const installer = new PageInstaller(bytes, hasher, pageCount);
    const present = PresentMap.allocate(pageCount);
    const missing = new Uint8Array(1);
    missing[0] = 0b0011_1110; // pages 1 to 5 missing
    present.loadMissing(missing);

    // What the source sends: pages 1, 2, 3 (zero), 4; their hashes computed where the pages lie in a scratch memory.
    const scratch = allocateGuestMemory(pageCount * PAGE_SIZE);
    const scratchBytes = new Uint8Array(scratch.buffer, 0, pageCount * PAGE_SIZE);
    for (const page of [1, 2, 4]) scratchBytes.fill(page, page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
    const scratchHasher = new PageHasher(scratch);
    const pages = Uint32Array.from([1, 2, 3, 4]);
    const hashes = new Uint32Array(8);
    pages.forEach((page, i) => scratchHasher.hashInto(page, hashes, i));
    expect([hashes[4], hashes[5]]).toEqual([ZERO_PAGE_HASH[0], ZERO_PAGE_HASH[1]]);
    const data = Buffer.alloc(3 * PAGE_SIZE);
    data.fill(1, 0, PAGE_SIZE);
    data.fill(2, PAGE_SIZE, 2 * PAGE_SIZE);
    data.fill(4, 2 * PAGE_SIZE);
    data[PAGE_SIZE + 9] = 0xee; // page 2 damaged in flight

    // Page 4 is present already (a fault fetched it) and the guest wrote it since: it must not be overwritten.
    bytes.fill(0x44, 4 * PAGE_SIZE, 5 * PAGE_SIZE);
    present.set(4);
    const header: PageHeader = { round: 2, flags: PAGE_FLAG_PAUSED | PAGE_FLAG_POSTCOPY, pages, zero: Uint8Array.from([0, 0, 1, 0]), dataPages: 3, hashes, delta: new Uint8Array(4), deltaBytes: new Uint16Array(4), deltaPages: 0, dataBytes: 3 * PAGE_SIZE };
    const damaged: number[] = [];
    expect(installer.installMissing(header, data, present, (page) => damaged.push(page))).toBe(2);
    expect(damaged).toEqual([2]);
    expect(present.has(1)).toBe(true);
    expect(present.has(2)).toBe(false);
    expect(present.has(3)).toBe(true);
    expect(bytes[PAGE_SIZE]).toBe(1);
    expect(bytes[4 * PAGE_SIZE]).toBe(0x44);
    expect(present.missingCount()).toBe(2); // 2 (damaged) and 5 (not sent yet)
  });
});

describe('stall times', () => {
  it('are summarized as nearest-rank percentiles', () => {
    expect(summarizeStalls([])).toBeUndefined();
    const stalls = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(summarizeStalls(stalls)).toEqual({ p50: 50, p99: 99, max: 100, totalMs: 5050 });
    expect(summarizeStalls([3])).toEqual({ p50: 3, p99: 3, max: 3, totalMs: 3 });
  });
});

describe('post-copy options', () => {
  const typed = { maxDowntime: '300ms', maxRounds: '30', verify: 'pages' };
  it('reads --postcopy, --postcopy auto and --postcopy-after N, and refuses the rest', () => {
    expect(migrationOptions({ ...typed, postcopy: true }).postcopy).toEqual({ mode: 'after', afterRounds: 1 });
    expect(migrationOptions({ ...typed, postcopy: 'auto' }).postcopy).toEqual({ mode: 'auto' });
    expect(migrationOptions({ ...typed, postcopyAfter: '0' }).postcopy).toEqual({ mode: 'after', afterRounds: 0 });
    expect(migrationOptions(typed).postcopy).toBeUndefined();
    expect(() => migrationOptions({ ...typed, postcopy: 'later' })).toThrow(/--postcopy later is not a post-copy mode/);
    expect(() => migrationOptions({ ...typed, postcopy: true, postcopyAfter: '2' })).toThrow(/say the same thing twice/);
    expect(() => migrationOptions({ ...typed, postcopyAfter: '1001' })).toThrow(/--postcopy-after 1001 is above 1,000/);
    expect(() => migrationOptions({ ...typed, postcopyAfter: 'x' })).toThrow(/not a whole number/);
  });
});

let network: MemoryNetwork | undefined;
afterEach(async () => {
  await network?.shutdown();
  network = undefined;
});

async function createVm(net: MemoryNetwork, name: string, wssPages: number, seed: number): Promise<void> {
  const client = await net.connect(net.cluster.hosts.find((entry) => entry.name === 'host-a')!);
  try {
    await client.request('vm.create', { name, memoryBytes: 16 * MiB, workload: { kind: 'pattern', rate: 20_000, wssPages, seed, filled: true } });
  } finally {
    client.close();
  }
}

function expectReplayMatches(net: MemoryNetwork, host: string, name: string): void {
  const vm = net.agents.get(host)!.catalog.machine(name);
  const { x, n } = vm.registers();
  const result = checkPatternImage(vm.memory, { seed: vm.workload.seed, wssPages: vm.workload.wssPages, x, n, filled: true });
  expect(result.badPages).toEqual([]);
  expect(result.ok).toBe(true);
}

describe('post-copy over the in-memory network', () => {
  it('asks again for a page that arrives damaged, and the VM ends with memory that matches replay', async () => {
    network = await createMemoryNetwork([{ name: 'host-a' }, { name: 'host-b', faults: 'corrupt-page:3000' }]);
    await createVm(network, 'pm1', 1024, 31);
    await delay(100);
    const report = await migrateLive(network.cluster, { vm: 'pm1', to: 'host-b', options: { ...defaults, postcopy: { mode: 'after', afterRounds: 0 } } }, { connect: network.connect });
    expect(report.error).toBeUndefined();
    expect(report.outcome).toBe('committed');
    expect(report.postcopy).toMatchObject({ complete: true, missingPages: 4096, refetched: 1 });
    expect(report.verification?.match).toBe(true);
    const vm = network.agents.get('host-b')!.catalog.machine('pm1');
    await vm.pause();
    expectReplayMatches(network, 'host-b', 'pm1');
  });

  it('switches --postcopy auto after round 1 when the forecast said pre-copy would not converge, and says why', async () => {
    network = await createMemoryNetwork([{ name: 'host-a' }, { name: 'host-b' }]);
    await createVm(network, 'pm3', 1024, 33);
    await delay(100);
    // What `ferry migrate --postcopy auto` sends once its forecast expects pre-copy not to converge (withForecastVerdict),
    // with a downtime limit no stop-and-copy of round 1's dirty pages fits, so that round 1 agrees with the forecast.
    const options: MigrationOptions = { ...defaults, maxDowntimeMs: 0.001, postcopy: { mode: 'auto', forecastConverges: false } };
    const report = await migrateLive(network.cluster, { vm: 'pm3', to: 'host-b', options }, { connect: network.connect });
    expect(report.error).toBeUndefined();
    expect(report.outcome).toBe('committed');
    expect(report.postcopy).toMatchObject({ reason: 'forecast', afterRounds: 1, complete: true });
    const vm = network.agents.get('host-b')!.catalog.machine('pm3');
    await vm.pause();
    expectReplayMatches(network, 'host-b', 'pm3');
  });

  it('keeps both sides when the link is cut mid-push, and a resume finishes it', async () => {
    network = await createMemoryNetwork([{ name: 'host-a' }, { name: 'host-b' }]);
    await createVm(network, 'pm2', 512, 32);
    await delay(100);
    // Cut the link at the 6th page frame after the switch (the frames of one push batch or a fault).
    let frames = 0;
    let switched = false;
    network.peerCut = (fromDestination, data) => {
      if (fromDestination) return false;
      if (!switched && !isPageHeader(data) && data.includes('peer.postcopy')) switched = true;
      if (switched && isPageHeader(data)) frames += 1;
      return frames >= 6;
    };
    const cut = await migrateLive(network.cluster, { vm: 'pm2', to: 'host-b', options: { ...defaults, postcopy: { mode: 'after', afterRounds: 0 } } }, { connect: network.connect });
    expect(cut.outcome).toBe('postcopy-paused');
    expect(cut.postcopy?.complete).toBe(false);
    expect(network.agents.get('host-a')!.catalog.machine('pm2').state).toBe('postcopy-out');
    expect(network.agents.get('host-b')!.catalog.machine('pm2').postcopy?.linked()).toBe(false);
    network.peerCut = undefined;
    const resumed = await resumeLive(network.cluster, 'pm2', { connect: network.connect });
    expect(resumed.error?.message).toBeUndefined();
    expect(resumed).toMatchObject({ outcome: 'committed', resumed: true, from: 'host-a', to: 'host-b', postcopy: { complete: true, resumes: 1 }, verification: { match: true } });
    expect(network.agents.get('host-a')!.catalog.findMachine('pm2')).toBeUndefined();
    const vm = network.agents.get('host-b')!.catalog.machine('pm2');
    expect(vm.postcopy).toBeUndefined();
    await vm.pause();
    expectReplayMatches(network, 'host-b', 'pm2');
  });
});

/**
 * `ferry bench --peer`, without processes: the options checked, which scenarios the QEMU peer runs, the image its
 * guest starts from (ferry's fill), a missing QEMU, and the section of summary.md.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { parsePeerOptions, peerSection, peerSkipReason, summarizePeer } from '../../coordinator/bench/peer.js';
import { findQemu, writeFillImage, type QemuPeerRun } from '../../coordinator/bench/qemu-peer.js';
import { scenarioSchema } from '../../coordinator/bench/scenarios.js';
import { WORDS_PER_PAGE, fillPage } from '../../shared/workloads.js';
import { badInput } from '../bad-input.js';

let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

const scenario = (fields: object) => scenarioSchema.parse({ name: 'x', description: 'x', memory: '256MiB', workload: 'idle', ...fields });

describe('bench --peer', () => {
  it('knows qemu only, takes a downtime limit in whole ms, and wants --peer beside --peer-downtime-limit', () => {
    expect(parsePeerOptions(undefined, undefined)).toBeUndefined();
    expect(parsePeerOptions('qemu', undefined)).toEqual({ peer: 'qemu', downtimeLimitMs: 5 });
    expect(parsePeerOptions('qemu', '300ms')).toEqual({ peer: 'qemu', downtimeLimitMs: 300 });
    expect(badInput(() => parsePeerOptions('xen', undefined)).hint).toMatch(/qemu/);
    expect(badInput(() => parsePeerOptions('qemu', '0.5ms')).message).toMatch(/whole milliseconds/);
    badInput(() => parsePeerOptions('qemu', 'soon'));
    expect(badInput(() => parsePeerOptions(undefined, '5ms')).message).toMatch(/needs --peer/);
  });

  it('runs plain scenarios whose guest writes nothing, on loopback, and says why it skips the others', () => {
    expect(peerSkipReason(scenario({}), 'loopback')).toBeUndefined();
    expect(peerSkipReason(scenario({ workload: 'pattern', dirtyRateOfLink: 0, wss: '64MiB' }), 'loopback')).toBeUndefined();
    expect(peerSkipReason(scenario({ workload: 'pattern', dirtyRateOfLink: 0.25 }), 'loopback')).toMatch(/writes no memory/);
    expect(peerSkipReason(scenario({ workload: 'pattern', rate: 1000 }), 'loopback')).toMatch(/writes no memory/);
    expect(peerSkipReason(scenario({ workload: 'kv', service: { rate: 100, migrations: 1 } }), 'loopback')).toMatch(/not a plain memory scenario/);
    expect(peerSkipReason(scenario({ workload: 'pattern', rate: 0, soak: { migrations: 2 } }), 'loopback')).toMatch(/not a plain memory scenario/);
    expect(peerSkipReason(scenario({}), '1gbit')).toMatch(/loopback only/);
  });

  it('fills the QEMU guest\'s image as ferry fills a page: words 0, 0, p, then k x 0x9E3779B1', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-peer-test-'));
    const file = path.join(dir, 'image');
    const pages = 2048 + 3;
    await writeFillImage(file, pages * 4096);
    const image = readFileSync(file);
    expect(image.length).toBe(pages * 4096);
    const expected = new Uint32Array(pages * WORDS_PER_PAGE);
    for (let page = 0; page < pages; page++) fillPage(expected, page, 0);
    expect(image.equals(Buffer.from(expected.buffer))).toBe(true);
    const words = new Uint32Array(image.buffer, image.byteOffset, image.length / 4);
    expect([words[WORDS_PER_PAGE * 7], words[WORDS_PER_PAGE * 7 + 1], words[WORDS_PER_PAGE * 7 + 2], words[WORDS_PER_PAGE * 7 + 3]]).toEqual([0, 0, 7, (3 * 0x9e3779b1) % 2 ** 32]);
  });

  it('says QEMU is missing, and how to install it, when the binary is not there', () => {
    const missing = findQemu('/nonexistent/qemu-system-x86_64');
    expect(missing.available).toBe(false);
    if (!missing.available) expect(missing.reason).toMatch(/not installed.*apt-get install qemu-system-x86/);
  });

  it('puts the peer beside ferry in summary.md, and says so when it did not run', () => {
    const run: QemuPeerRun = {
      peer: 'qemu', scenario: 'idle-256m', repeat: 1, version: '7.2.22', status: 'completed', memoryBytes: 256 * 1024 ** 2, downtimeLimitMs: 5,
      maxBandwidthBytesPerSec: 100 * 1024 ** 3, destinationPrealloc: true, totalTimeMs: 250, downtimeMs: 2, setupTimeMs: 1, stopToResumeMs: 4,
      transferredBytes: 268e6, throughputBytesPerSec: 1.07e9, normalPages: 65000, duplicatePages: 283, dirtySyncCount: 3, bytesSentOverMemory: 1,
      cpu: { sourceMs: 50, destinationMs: 120, totalMs: 170, msPerGiB: 680 },
      verification: { pagesCompared: 65280, pagesMatchingSource: 65280, pagesMatchingFill: 65215, notFillRanges: ['65504-65535'], match: true },
    };
    const summary = summarizePeer([run, { ...run, repeat: 2, status: 'failed', error: 'boom' }], 2e9);
    expect(summary).toMatchObject({ runs: 2, completed: 1, allMatched: true });
    expect(summary.fractionOfRawTcp.median).toBeCloseTo(0.535, 3);
    const status = { peer: 'qemu' as const, available: true, version: '7.2.22', downtimeLimitMs: 5 };
    const markdown = peerSection(status, [{ peer: 'qemu', scenario: 'idle-256m', link: 'loopback', memoryBytes: run.memoryBytes, rawTcpBytesPerSec: 2e9, runs: [run], summary }], []).join('\n');
    expect(markdown).toContain('## QEMU beside ferry');
    expect(markdown).toContain('| idle-256m | qemu | 2 (1) | 1020 (53.5 %) | 250 | 2.00 | 4.00 | 680 | 1.00 | matches source |');
    const unavailable = peerSection({ peer: 'qemu', available: false, reason: 'peer unavailable: qemu-system-x86_64 is not installed', downtimeLimitMs: 5 }, [], []).join('\n');
    expect(unavailable).toContain('QEMU did not run: peer unavailable: qemu-system-x86_64 is not installed');
    expect(peerSection(status, [], []).join('\n')).toContain('QEMU ran beside no scenario of this run');
  });
});

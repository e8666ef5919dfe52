/**
 * The one progress display behind `ferry migrate`, `ferry migrate --cold`, image transfers and `ferry bench`, checked on a fake
 * stream: what reaches a TTY and what reaches a log, and that nothing follows `finish()`.
 */
import { describe, expect, it } from 'vitest';
import type { MigrationEvent } from '../../shared/protocol.js';
import { coldProgress, createProgressLine, imageProgress, migrationProgress, progressBar, runProgress, type ProgressStream } from '../../coordinator/progress.js';

function fakeStream(isTTY: boolean): ProgressStream & { text(): string } {
  const writes: string[] = [];
  return { isTTY, write: (chunk: string) => writes.push(chunk), text: () => writes.join('') };
}

const CLEAR = '\r\x1b[2K';
const stage = (n: number, name: string, atMs: number): MigrationEvent => ({ kind: 'stage', stage: n, name, atMs });
const progressEvent = (pagesSent: number): MigrationEvent => ({
  kind: 'progress', round: 1, pagesSent, pagesInRound: 1000, bytesSent: pagesSent * 4096, rateBytesPerSec: 1024 ** 3, dirtyPagesPerSec: 1500, expectedDowntimeMs: 4,
});

describe('progress display', () => {
  it('writes nothing once finished, so no progress line can follow the report', () => {
    for (const isTTY of [false, true]) {
      const stream = fakeStream(isTTY);
      const progress = migrationProgress(stream);
      progress.onEvent(stage(0, 'pre-migration', 0.057));
      progress.onEvent(progressEvent(10));
      progress.finish();
      const atFinish = stream.text();
      progress.onEvent(stage(1, 'reservation', 1));
      progress.onEvent(progressEvent(20));
      progress.log('cancelling');
      progress.finish();
      expect(stream.text(), `isTTY ${isTTY}`).toBe(atFinish);
    }
  });

  it('on a TTY redraws one line below the lines that stay, and clears it when finished', () => {
    const stream = fakeStream(true);
    const progress = migrationProgress(stream);
    progress.onEvent(stage(2, 'iterative pre-copy', 5));
    progress.onEvent(progressEvent(250));
    progress.onEvent(progressEvent(500));
    progress.onEvent(stage(3, 'stop-and-copy', 900));
    progress.onEvent(progressEvent(1000));
    progress.finish();
    const text = stream.text();
    expect(text.indexOf('stage 2: iterative pre-copy\n')).toBeLessThan(text.indexOf(' 25%'));
    expect(text).toContain(`${CLEAR}              round 1 ${progressBar(0.5)}  50%  500 pages left`);
    // The redrawn line is wiped before a line that stays, and at the end nothing of it is left.
    expect(text).toMatch(/50%[^\n]*\r\x1b\[2K {2}\[\s*900\.0 ms\] stage 3: stop-and-copy\n/);
    expect(text.endsWith(CLEAR)).toBe(true);
  });

  it('elsewhere writes whole lines only: stages and rounds, no redrawn line, no escape codes', () => {
    const stream = fakeStream(false);
    const progress = migrationProgress(stream);
    progress.onEvent(stage(0, 'pre-migration', 0.057));
    progress.onEvent(progressEvent(500));
    progress.onEvent({ kind: 'round', report: { round: 1, pages: 1000, bytes: 4096000, durationMs: 10, dirtyPagesAfter: 12, throughputBytesPerSec: 1024 ** 3 } });
    progress.onEvent({ kind: 'round', report: { round: 2, pages: 300, bytes: 409600, durationMs: 2, dirtyPagesAfter: 3, throughputBytesPerSec: 1024 ** 3, zeroPages: 200 } });
    progress.finish();
    const text = stream.text();
    expect(text).not.toContain('\r');
    expect(text).not.toContain('\x1b');
    expect(text.split('\n')).toEqual([
      expect.stringMatching(/stage 0: pre-migration$/),
      expect.stringMatching(/round 1: 1,000 pages \([^,)]*\) .* 12 dirtied meanwhile$/),
      expect.stringMatching(/round 2: 300 pages \(.*, 200 of them zero pages sent as flags\) .* 3 dirtied meanwhile$/),
      '',
    ]);
  });

  it('shows a cold migration\'s file and how far on a TTY, and nothing in a log', () => {
    const tty = fakeStream(true);
    const cold = coldProgress(tty, () => 1000);
    cold.onProgress({ file: 'disk0.img', bytesDone: 1024 ** 2, bytesTotal: 4 * 1024 ** 2 });
    cold.finish();
    expect(tty.text()).toContain(`${progressBar(0.25)}  25%  disk0.img  1 MiB of 4 MiB`);
    const log = fakeStream(false);
    const quiet = coldProgress(log);
    quiet.onProgress({ file: 'disk0.img', bytesDone: 1, bytesTotal: 2 });
    quiet.finish();
    expect(log.text()).toBe('');
  });

  it('shows an image transfer by host on a TTY, its rate from when that host began, and nothing in a log', () => {
    let nowMs = 0;
    const tty = fakeStream(true);
    const image = imageProgress(tty, () => nowMs);
    nowMs = 5000; // host-a begins 5 s in: its rate counts from then
    image.onProgress('host-a', { bytesDone: 0, bytesTotal: 4 * 1024 ** 3 });
    nowMs = 6000;
    image.onProgress('host-a', { bytesDone: 1024 ** 3, bytesTotal: 4 * 1024 ** 3 });
    image.finish();
    expect(tty.text()).toContain(`host-a ${progressBar(0.25)}  25%  1 GiB of 4 GiB  1 GiB/s`);
    const log = fakeStream(false);
    const quiet = imageProgress(log);
    quiet.onProgress('host-a', { bytesDone: 1, bytesTotal: 2 });
    quiet.finish();
    expect(log.text()).toBe('');
  });

  it('counts benchmark runs with an estimate of the time left: redrawn on a TTY, a line per run in a log', () => {
    let nowMs = 0;
    const log = fakeStream(false);
    const runs = runProgress(4, log, () => nowMs);
    runs.step('idle #1');
    nowMs = 10_000;
    runs.step('idle #2');
    runs.log('raw TCP on loopback: 3 GiB/s');
    runs.finish();
    expect(log.text().split('\n')).toEqual([
      `${progressBar(0)} 0/4 runs, idle #1, eta ?`,
      `${progressBar(0.25)} 1/4 runs, idle #2, eta 30.00 s`,
      'raw TCP on loopback: 3 GiB/s',
      '',
    ]);
    const tty = fakeStream(true);
    const redrawn = runProgress(2, tty, () => 0);
    redrawn.step('idle #1');
    redrawn.finish();
    expect(tty.text()).toBe(`${CLEAR}${progressBar(0)} 0/2 runs, idle #1, eta ?${CLEAR}`);
  });

  it('draws bars of one width, clamped to empty and full', () => {
    expect(progressBar(-1)).toBe(`[${'.'.repeat(24)}]`);
    expect(progressBar(2)).toBe(`[${'#'.repeat(24)}]`);
    expect(progressBar(0.5)).toHaveLength(26);
    expect(createProgressLine(fakeStream(false)).live).toBe(false);
  });
});

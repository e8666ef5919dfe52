/**
 * Progress on the terminal, for every long command: live migration, cold migration, image transfers and `ferry
 * bench`. Lines that stay (a stage, a finished round, a benchmark run), and on a TTY one line below them that redraws
 * itself (the round under way, the file being copied). Where the stream is not a TTY (a pipe, a file, a CI log) the redrawn
 * line is not written at all, so a log holds whole lines and no escape codes.
 *
 * `finish()` ends the display for good: it clears the redrawn line and everything that arrives later is dropped.
 * Callers finish it before they write a report or an error, on every path, so no progress can land after them.
 *
 * Written by hand rather than with cli-progress: that library redraws from a throttle timer and, off a TTY, prints
 * on an interval, so its output depends on time and another timer has to be stopped on every path; lines that
 * stay above a bar need its multi-bar mode; and our lines carry fields computed per event (dirty rate, downtime
 * now) that would still be formatted here. What is left, one redrawn line and a bar, is a few lines of code whose
 * output a test can check exactly with a fake stream.
 */
import type { MigrationEvent } from '../shared/protocol.js';
import { formatBytes, formatDuration, formatRate } from '../shared/units.js';
import type { StorageProgress } from './storage-move.js';
import type { ColdProgress } from './migrate-cold.js';

/** The part of a stream the display needs; `process.stderr` in the CLI, a fake in tests. */
export interface ProgressStream {
  write(text: string): unknown;
  isTTY?: boolean | undefined;
}

export interface ProgressLine {
  /** True on a TTY: the redrawn line is shown. */
  readonly live: boolean;
  /** A line that stays; on a TTY it is written above the redrawn line. */
  log(line: string): void;
  /** Replaces the redrawn line on a TTY; elsewhere dropped (it changes too often for a log). */
  redraw(line: string): void;
  /** Clears the redrawn line; nothing is written after this. Safe to call twice. */
  finish(): void;
}

const CLEAR_LINE = '\r\x1b[2K';
const BAR_WIDTH = 24;

export function createProgressLine(stream: ProgressStream = process.stderr): ProgressLine {
  const live = stream.isTTY === true;
  let drawn = false;
  let finished = false;
  const clear = (): void => {
    if (drawn) stream.write(CLEAR_LINE);
    drawn = false;
  };
  return {
    live,
    log(line) {
      if (finished) return;
      clear();
      stream.write(`${line}\n`);
    },
    redraw(line) {
      if (finished || !live) return;
      stream.write(`${CLEAR_LINE}${line}`);
      drawn = true;
    },
    finish() {
      clear();
      finished = true;
    },
  };
}

/** `[######..................]`: how far, in a fixed width so the fields after it do not move. */
export function progressBar(fraction: number): string {
  const filled = Math.round(Math.min(Math.max(fraction, 0), 1) * BAR_WIDTH);
  return `[${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}]`;
}

const percent = (fraction: number): string => `${(fraction * 100).toFixed(0).padStart(3)}%`;
const int = (value: number): string => value.toLocaleString('en-US');

export interface MigrationProgress {
  onEvent(event: MigrationEvent): void;
  /** A line of the CLI's own (a cancel notice) among the progress lines. */
  log(line: string): void;
  finish(): void;
}

/**
 * A live migration: a line per stage and per finished round, and the redrawn line with the round under way: how
 * far, how fast, how fast the guest dirties memory, and the downtime a stop-and-copy would cost now.
 */
export function migrationProgress(stream: ProgressStream = process.stderr): MigrationProgress {
  const line = createProgressLine(stream);
  return {
    onEvent(event) {
      switch (event.kind) {
        case 'stage':
          line.log(`  [${formatDuration(event.atMs).padStart(9)}] stage ${event.stage}: ${event.name}`);
          return;
        case 'round': {
          const r = event.report;
          // Zero pages went as flags: they count in the pages, not in the bytes or the rate.
          const zeros = r.zeroPages ? `, ${int(r.zeroPages)} of them zero pages sent as flags` : '';
          line.log(`              round ${r.round}: ${int(r.pages)} pages (${formatBytes(r.bytes)}${zeros}) in ${formatDuration(r.durationMs)} at ${formatRate(r.throughputBytesPerSec)}; ${int(r.dirtyPagesAfter)} dirtied meanwhile`);
          return;
        }
        case 'throttle':
          line.log(`              auto-converge: vCPU held back by ${event.pct} % after round ${event.round}`);
          return;
        case 'storage': {
          const fraction = event.blocksTotal > 0 ? event.blocksDone / event.blocksTotal : 1;
          if (event.phase === 'ready') line.log(`              ${event.file} ready: ${formatBytes(event.bytesSent)} copied`);
          else line.redraw(`              ${event.file} ${storagePhase(event)} ${progressBar(fraction)} ${percent(fraction)}  ${formatBytes(event.bytesSent)} copied`);
          return;
        }
        case 'progress': {
          const fraction = event.pagesInRound > 0 ? event.pagesSent / event.pagesInRound : 0;
          const left = int(event.pagesInRound - event.pagesSent);
          line.redraw(`              round ${event.round} ${progressBar(fraction)} ${percent(fraction)}  ${left} pages left  ${formatRate(event.rateBytesPerSec)}  dirtying ${int(Math.round(event.dirtyPagesPerSec))} pages/s  downtime now ~${formatDuration(event.expectedDowntimeMs)}`);
          return;
        }
        case 'postcopy': {
          const sent = `${int(event.pushedPages)} pushed, ${int(event.requestedPages)} asked for, ${int(event.faults)} fault(s)`;
          if (event.phase === 'progress') line.redraw(`              post-copy: ${int(event.pagesLeft)} pages still at the source  ${sent}`);
          else if (event.phase === 'switched') line.log(`              post-copy: the VM runs at the destination; ${int(event.pagesLeft)} of its pages follow`);
          else if (event.phase === 'paused') line.log(`              post-copy: the link broke with ${int(event.pagesLeft)} pages still at the source (${sent})`);
          else if (event.phase === 'resumed') line.log(`              post-copy resumed: ${int(event.pagesLeft)} pages to send`);
          else line.log(`              post-copy complete: ${sent}`);
          return;
        }
        default: {
          const unreachable: never = event;
          return unreachable;
        }
      }
    },
    log: (text) => line.log(text),
    finish: () => line.finish(),
  };
}

/** A transfer on one redrawn line (on a TTY): how far, what `describe` says of it, how fast since it began. */
function transferProgress<T>(stream: ProgressStream, now: () => number, describe: (progress: T) => { fraction: number; text: string; bytes: number }): { onProgress(progress: T): void; finish(): void } {
  const line = createProgressLine(stream);
  const startedMs = now();
  return {
    onProgress(progress) {
      const { fraction, text, bytes } = describe(progress);
      const rate = (bytes / Math.max(now() - startedMs, 1)) * 1000;
      line.redraw(`  ${progressBar(fraction)} ${percent(fraction)}  ${text}  ${formatRate(rate)}`);
    },
    finish: () => line.finish(),
  };
}

/** A cold migration: how far, which file, how fast. */
export function coldProgress(stream: ProgressStream = process.stderr, now: () => number = () => performance.now()): { onProgress(progress: ColdProgress): void; finish(): void } {
  return transferProgress(stream, now, (progress: ColdProgress) => ({
    fraction: progress.bytesTotal > 0 ? progress.bytesDone / progress.bytesTotal : 1,
    text: `${progress.file}  ${formatBytes(progress.bytesDone)} of ${formatBytes(progress.bytesTotal)}`,
    bytes: progress.bytesDone,
  }));
}

/** A disk copy's phase as the progress line names it: `bulk`, `round 2`, `ready`, `paused`. */
function storagePhase(progress: Pick<StorageProgress, 'phase' | 'round'>): string {
  return progress.phase === 'round' ? `round ${progress.round}` : progress.phase;
}

/** A storage move: the phase, how far, how much sent, how fast. */
export function storageProgress(stream: ProgressStream = process.stderr, now: () => number = () => performance.now()): { onProgress(progress: StorageProgress): void; finish(): void } {
  return transferProgress(stream, now, (progress: StorageProgress) => ({
    fraction: progress.blocksTotal > 0 ? progress.blocksDone / progress.blocksTotal : 1,
    text: `${progress.file} ${storagePhase(progress)}  ${formatBytes(progress.bytesSent)} sent`,
    bytes: progress.bytesSent,
  }));
}

/**
 * An image moving to hosts, one after another (`ferry image import`, or one sent before a provision): on a TTY, the
 * redrawn line with the host it goes to, how far, how fast.
 */
export function imageProgress(stream: ProgressStream = process.stderr, now: () => number = () => performance.now()): { onProgress(host: string, progress: { bytesDone: number; bytesTotal: number }): void; log(line: string): void; finish(): void } {
  const line = createProgressLine(stream);
  let current: { host: string; startedMs: number } | undefined;
  return {
    onProgress(host, progress) {
      if (current?.host !== host) current = { host, startedMs: now() };
      const fraction = progress.bytesTotal > 0 ? progress.bytesDone / progress.bytesTotal : 1;
      const rate = (progress.bytesDone / Math.max(now() - current.startedMs, 1)) * 1000;
      line.redraw(`  ${host} ${progressBar(fraction)} ${percent(fraction)}  ${formatBytes(progress.bytesDone)} of ${formatBytes(progress.bytesTotal)}  ${formatRate(rate)}`);
    },
    log: (text) => line.log(text),
    finish: () => line.finish(),
  };
}

/**
 * `ferry bench`: runs done of all, the one starting, and an estimate of the time left. Redrawn on a TTY; elsewhere
 * a line per run, since a benchmark's log is read afterwards and runs are minutes apart.
 */
export function runProgress(total: number, stream: ProgressStream = process.stderr, now: () => number = () => performance.now()): { step(label: string): void; log(line: string): void; finish(): void } {
  const line = createProgressLine(stream);
  const startedMs = now();
  let done = 0;
  return {
    step(label) {
      const elapsedMs = now() - startedMs;
      const eta = done > 0 ? formatDuration(((total - done) * elapsedMs) / done) : '?';
      const text = `${progressBar(total > 0 ? done / total : 0)} ${done}/${total} runs, ${label}, eta ${eta}`;
      if (line.live) line.redraw(text);
      else line.log(text);
      done += 1;
    },
    log: (text) => line.log(text),
    finish: () => line.finish(),
  };
}

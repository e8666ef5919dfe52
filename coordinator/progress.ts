/**
 * Live progress of a migration on a terminal (stderr): a line per stage and per finished round, and below them
 * one line that redraws itself with the round under way: how far, how fast, how fast the guest dirties memory,
 * and the downtime a stop-and-copy would cost now. Written by hand: it is one redrawn line, and a progress-bar
 * library would still need all of these fields formatted.
 */
import type { MigrationEvent } from '../shared/protocol.js';
import { formatBytes, formatDuration, formatRate } from '../shared/units.js';

const BAR_WIDTH = 24;

export interface ProgressDisplay {
  onEvent(event: MigrationEvent): void;
  /** Clears the redrawn line; call before printing anything else. */
  finish(): void;
}

export function createProgress(stream: NodeJS.WriteStream = process.stderr): ProgressDisplay {
  const live = stream.isTTY === true;
  let drawn = false;
  const clear = (): void => {
    if (drawn) stream.write('\r\x1b[2K');
    drawn = false;
  };
  const print = (line: string): void => {
    clear();
    stream.write(`${line}\n`);
  };
  return {
    onEvent(event) {
      switch (event.kind) {
        case 'stage':
          print(`  [${formatDuration(event.atMs).padStart(9)}] stage ${event.stage}: ${event.name}`);
          return;
        case 'round': {
          const r = event.report;
          print(`              round ${r.round}: ${r.pages.toLocaleString('en-US')} pages (${formatBytes(r.bytes)}) in ${formatDuration(r.durationMs)} at ${formatRate(r.throughputBytesPerSec)}; ${r.dirtyPagesAfter.toLocaleString('en-US')} dirtied meanwhile`);
          return;
        }
        case 'throttle':
          print(`              auto-converge: vCPU held back by ${event.pct} % after round ${event.round}`);
          return;
        case 'progress': {
          if (!live) return;
          const fraction = event.pagesInRound > 0 ? event.pagesSent / event.pagesInRound : 0;
          const filled = Math.round(fraction * BAR_WIDTH);
          const bar = `${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}`;
          const left = (event.pagesInRound - event.pagesSent).toLocaleString('en-US');
          clear();
          stream.write(`              round ${event.round} [${bar}] ${(fraction * 100).toFixed(0).padStart(3)}%  ${left} pages left  ${formatRate(event.rateBytesPerSec)}  dirtying ${Math.round(event.dirtyPagesPerSec).toLocaleString('en-US')} pages/s  downtime now ~${formatDuration(event.expectedDowntimeMs)}`);
          drawn = true;
          return;
        }
        default: {
          const unreachable: never = event;
          return unreachable;
        }
      }
    },
    finish: clear,
  };
}

/**
 * The pre-copy model, to put a prediction beside each measurement.
 *
 * Round 1 sends all M bytes of memory in t1 = M / B. A guest that writes d pages a second, uniformly over a working
 * set of W pages, has dirtied W (1 - e^(-d t / W)) distinct pages after t seconds (each page escapes a write with
 * probability e^(-t d / W)). So round i+1 sends what round i left dirty, in t(i+1) = pages x 4 KiB / B, and rounds
 * shrink while d / B is small. The same stop rules as the agent's (shared/stop-rules.ts) end the rounds; the last
 * dirty set goes with the vCPU paused. The model covers stages 2-3 (pre-copy and stop-and-copy); per-round latencies
 * are not in it. The benchmark adds the stages it does not model (checks and reservation; commit and activation) as
 * measured in the same run, and reports the model's error both on stages 2-3 and on the total.
 */
import { PAGE_SIZE } from '../../shared/constants.js';
import type { StopReason } from '../../shared/protocol.js';
import { decideStop } from '../../shared/stop-rules.js';

export interface ModelInputs {
  memoryBytes: number;
  wssPages: number;
  /** Page writes per second. */
  dirtyPagesPerSec: number;
  /** What the link carries, bytes per second. */
  linkBytesPerSec: number;
  maxDowntimeMs: number;
  maxRounds: number;
}

export interface ModelPrediction {
  rounds: { round: number; pages: number; seconds: number }[];
  stopReason: StopReason;
  stopAndCopyPages: number;
  bytesSent: number;
  totalTimeMs: number;
  downtimeMs: number;
}

/** Distinct pages dirtied in `seconds` by `rate` uniform writes a second over `wssPages` pages. */
export function distinctDirtyPages(wssPages: number, rate: number, seconds: number): number {
  if (rate <= 0 || seconds <= 0) return 0;
  return wssPages * (1 - Math.exp((-rate * seconds) / wssPages));
}

export function predictPreCopy(inputs: ModelInputs): ModelPrediction {
  const { memoryBytes, wssPages, dirtyPagesPerSec, linkBytesPerSec: bandwidth } = inputs;
  const rounds: ModelPrediction['rounds'] = [];
  let pages = memoryBytes / PAGE_SIZE;
  let bytesSent = 0;
  for (let round = 1; ; round++) {
    const seconds = (pages * PAGE_SIZE) / bandwidth;
    rounds.push({ round, pages, seconds });
    bytesSent += pages * PAGE_SIZE;
    const dirty = distinctDirtyPages(wssPages, dirtyPagesPerSec, seconds);
    const stopReason = decideStop({
      round, pagesSent: pages, dirtyPagesAfter: dirty, bytesSentTotal: bytesSent, memoryBytes,
      bandwidthBytesPerSec: bandwidth, maxDowntimeMs: inputs.maxDowntimeMs, maxRounds: inputs.maxRounds,
    });
    if (stopReason) {
      const downtimeMs = ((dirty * PAGE_SIZE) / bandwidth) * 1000;
      const preCopyMs = rounds.reduce((total, entry) => total + entry.seconds, 0) * 1000;
      return { rounds, stopReason, stopAndCopyPages: dirty, bytesSent: bytesSent + dirty * PAGE_SIZE, totalTimeMs: preCopyMs + downtimeMs, downtimeMs };
    }
    pages = dirty;
  }
}

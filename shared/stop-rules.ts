/**
 * When iterative pre-copy stops and stop-and-copy begins (DESIGN.md, "Migration, stage by stage"). Pure: the
 * facts of the round just finished in, a reason to stop (or none) out.
 *
 * Order matters: a cheap stop-and-copy (Xen's rule) wins over everything; then the caps, which end pre-copy
 * whatever it costs; then the judgement that more rounds will not help. Unlike QEMU, ferry does not stop as soon
 * as the remaining bytes fit the downtime limit: while rounds still shrink the dirty set it goes on, which keeps
 * downtime near the floor instead of near the limit.
 */
import { PAGE_SIZE, STOP_RULES } from './constants.js';
import type { MigrationOptions, PostcopyReport, StopReason } from './protocol.js';

export interface RoundFacts {
  /** The round just finished, from 1. */
  round: number;
  /** Pages that round sent: the dirty set it started from. */
  pagesSent: number;
  /** Pages dirty now, to be sent by the next round or by stop-and-copy. */
  dirtyPagesAfter: number;
  /** Bytes sent by all rounds so far. */
  bytesSentTotal: number;
  memoryBytes: number;
  /** The link rate the rounds achieved, bytes per second. */
  bandwidthBytesPerSec: number;
  maxDowntimeMs: number;
  maxRounds: number;
}

/** Time to send `pages` at `bandwidthBytesPerSec`: the downtime a stop-and-copy now would cost. */
export function expectedDowntimeMs(pages: number, bandwidthBytesPerSec: number): number {
  if (pages === 0) return 0;
  if (bandwidthBytesPerSec <= 0) return Number.POSITIVE_INFINITY;
  return ((pages * PAGE_SIZE) / bandwidthBytesPerSec) * 1000;
}

export function decideStop(facts: RoundFacts): StopReason | undefined {
  if (facts.dirtyPagesAfter < STOP_RULES.fewDirtyPages) return 'few-dirty-pages';
  if (facts.round >= facts.maxRounds) return 'max-rounds';
  if (facts.bytesSentTotal >= STOP_RULES.maxBytesFactor * facts.memoryBytes) return 'max-bytes';
  // "shrank by less than 10 %", written without a division so that exactly 10 % is not lost to rounding.
  const stalled = facts.dirtyPagesAfter > facts.pagesSent * (1 - STOP_RULES.minShrinkFraction);
  const fits = expectedDowntimeMs(facts.dirtyPagesAfter, facts.bandwidthBytesPerSec) <= facts.maxDowntimeMs;
  if (stalled && fits) return 'converged-within-downtime';
  return undefined;
}

/**
 * Whether pre-copy switches to post-copy after `round` (options.postcopy; the source and the forecast both ask):
 * `after N` once N rounds are done; `auto`, when the forecast made before the migration said pre-copy would not
 * converge, after the first round (from round 1 on) whose dirty pages would overrun the downtime limit, else when the
 * rounds say so (a cap fired, or a round that barely shrank the dirty set leaves more than the limit allows). Never
 * when pre-copy has converged: a stop-and-copy of a few pages is shorter.
 */
export function switchToPostcopy(
  options: Pick<MigrationOptions, 'postcopy' | 'maxDowntimeMs'>, round: number, stopReason: StopReason | undefined, stalled: boolean, expectedDowntimeMs: number,
): PostcopyReport['reason'] | undefined {
  const { postcopy } = options;
  if (!postcopy || stopReason === 'few-dirty-pages' || stopReason === 'converged-within-downtime') return undefined;
  if (postcopy.mode === 'after') return round >= postcopy.afterRounds ? 'asked' : undefined;
  // The forecast's verdict, checked against round 1's own facts: a dirty set whose stop-and-copy would fit the limit
  // means pre-copy is about to converge whatever the forecast said (its link sample may have read low).
  if (postcopy.forecastConverges === false && round >= 1 && expectedDowntimeMs > options.maxDowntimeMs) return 'forecast';
  if (stopReason === 'max-rounds' || stopReason === 'max-bytes') return 'not converging';
  return stalled && expectedDowntimeMs > options.maxDowntimeMs ? 'not converging' : undefined;
}

/**
 * How many distinct pages a guest dirties in a window of t milliseconds, U(t): the curve QEMU's `calc-dirty-rate`
 * samples from the dirty bitmap, and the one quantity a pre-copy forecast needs (a round that lasts t leaves U(t)
 * pages for the next one). Pure: the agent fits it to what it counted (agent/vm-stats/sampler.ts), the coordinator
 * replays it round by round (coordinator/forecast.ts).
 *
 * Two shapes, from two kinds of writer, each with a rate r (page writes per second, repeats included) and a
 * writable working set W (pages):
 * - random: each write lands on a page of W drawn at random, so a page stays clean with probability
 *   (1 - 1/W)^(r t) ≈ e^(-r t / W), and U(t) = W (1 - e^(-r t / W)): linear at first, levelling off at W;
 * - sequential: a scanner that writes W in order and wraps, U(t) = min(W, r t).
 * A hot set (most writes to a small region) sits between the two; the random shape fitted to it follows its curve
 * over the window it was measured on, which is what the forecast replays.
 */
import type { DirtyModel } from './protocol.js';

export interface DirtyCurve {
  model: DirtyModel;
  /** Page writes per second. */
  ratePagesPerSec: number;
  /** Writable working set, pages. */
  wssPages: number;
}

/** One checkpoint of a sampling window: `pages` distinct pages were dirty `ms` after the log was cleared. */
export interface CurvePoint {
  ms: number;
  pages: number;
}

/** U(t): distinct pages dirtied within `ms` milliseconds. */
export function uniquePagesDirtied(curve: DirtyCurve, ms: number): number {
  const { ratePagesPerSec: rate, wssPages: wss } = curve;
  if (rate <= 0 || wss <= 0 || ms <= 0) return 0;
  const writes = (rate * ms) / 1000;
  if (curve.model === 'sequential') return Math.min(wss, writes);
  return wss * -Math.expm1(-writes / wss);
}

/** Candidate working sets tried per shape: log-spaced from just above the largest count to the whole memory. */
const WSS_STEPS = 160;

/**
 * Fits both shapes to a window's checkpoints and keeps the closer one (relative squared error, so the early small
 * counts weigh as much as the late large ones). `memoryPages` bounds W: a curve that has not begun to level off by
 * the window's end cannot tell its working set from the whole memory, and gets the whole memory (the cautious
 * choice for a forecast: more pages dirty, not fewer).
 */
export function fitDirtyCurve(points: readonly CurvePoint[], memoryPages: number): DirtyCurve {
  const usable = points.filter((point) => point.ms > 0 && point.pages >= 0);
  const largest = Math.max(0, ...usable.map((point) => point.pages));
  if (usable.length === 0 || largest === 0) return { model: 'random', ratePagesPerSec: 0, wssPages: 0 };
  let best: { curve: DirtyCurve; error: number } | undefined;
  const consider = (curve: DirtyCurve): void => {
    if (!(curve.ratePagesPerSec > 0) || !Number.isFinite(curve.ratePagesPerSec)) return;
    let error = 0;
    for (const point of usable) {
      const predicted = uniquePagesDirtied(curve, point.ms);
      error += (predicted - point.pages) ** 2 / Math.max(point.pages, 1);
    }
    // Ties go to the first considered (random), whose extrapolation is the gentler.
    if (!best || error < best.error * (1 - 1e-9)) best = { curve, error };
  };
  const top = Math.max(memoryPages, largest);
  for (let step = 0; step <= WSS_STEPS; step++) {
    // From largest (+1 page, so the random inversion stays finite) up to the whole memory.
    const wss = Math.min(top, (largest + 1) * (top / (largest + 1)) ** (step / WSS_STEPS));
    consider({ model: 'random', wssPages: wss, ratePagesPerSec: randomRate(usable, wss) });
  }
  for (let step = 0; step <= WSS_STEPS; step++) {
    const wss = Math.min(top, largest * (top / largest) ** (step / WSS_STEPS));
    const rising = usable.filter((point) => point.pages < wss * 0.999);
    const slope = (rising.length > 0 ? rising : usable).reduce((sum, point) => sum + point.pages * point.ms, 0)
      / (rising.length > 0 ? rising : usable).reduce((sum, point) => sum + point.ms * point.ms, 0);
    consider({ model: 'sequential', wssPages: wss, ratePagesPerSec: slope * 1000 });
  }
  const found = best!.curve;
  // A curve still straight at the window's end (its last count within 3 % of rate x time) fits a scanner whose working
  // set ends just there as well as any larger one: nothing says where it levels off, so take the bound.
  const last = usable.reduce((latest, point) => (point.ms > latest.ms ? point : latest));
  const straight = last.pages >= 0.97 * (found.ratePagesPerSec * last.ms) / 1000;
  return { model: found.model, ratePagesPerSec: found.ratePagesPerSec, wssPages: Math.round(straight ? top : found.wssPages) };
}

/**
 * For a given W, the rate each point implies under the random shape, averaged. A point counts for more the more
 * pages it saw, and for less the nearer it is to W: there -ln(1 - U/W) turns a small error in W or U into a large one
 * in the rate (a window that has all but filled its working set says little about how fast it filled it).
 */
function randomRate(points: readonly CurvePoint[], wss: number): number {
  let weighted = 0;
  let weights = 0;
  for (const point of points) {
    const fraction = Math.min(point.pages / wss, 1 - 1e-9);
    const rate = (-wss * Math.log1p(-fraction)) / (point.ms / 1000);
    const weight = point.pages * (1 - fraction) ** 2;
    weighted += rate * weight;
    weights += weight;
  }
  return weights > 0 ? weighted / weights : 0;
}

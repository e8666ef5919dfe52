/**
 * The page stream's throughput from one host to another, as the source agent measures it (`link.measure`,
 * agent/control/link.ts), kept for a minute per host pair in this process: a planner that weighs many moves
 * measures each pair once, and a migration right after a `--plan` reuses the plan's measurement.
 */
import { LINK_MEASURE } from '../shared/constants.js';
import type { LinkMeasure } from '../shared/protocol.js';
import type { AgentClient } from './connect.js';

/** How long a measurement may take before the forecast gives up on it (a destination that does not answer). */
export const LINK_TIMEOUT_MS = 30_000;

/** How long a measurement stands for its host pair. */
export const LINK_CACHE_MS = 60_000;

const cache = new Map<string, { link: LinkMeasure; atMs: number; sampleBytes: number }>();

/**
 * The link from `from` (whose agent `client` is connected to) to `to`: cached, or measured now. Keyed by names and
 * URLs both: an agent started again elsewhere under the same name is another link. The measurement goes on the path
 * a migration takes: `to` dials a page stream back to `from` at its migration URL when it has one (as for
 * `migrate.reserve`'s `sourceUrl`), else at its URL; or, for a migration asked for `--page-stream ws`, the peer
 * WebSocket (no URL to dial back).
 */
export async function measureLink(client: AgentClient, from: { name: string; url: string; migrationUrl?: string | undefined }, to: { name: string; url: string }, bytes?: number, timeoutMs = LINK_TIMEOUT_MS, now: () => number = () => performance.now(), pageStream: 'tcp' | 'ws' = 'tcp'): Promise<LinkMeasure> {
  const backUrl = from.migrationUrl ?? from.url;
  const key = [from.name, from.url, backUrl, to.name, to.url, pageStream].join(' ');
  const cached = cache.get(key);
  // A smaller sample than asked for does not stand for this one (agent/control/link.ts says why).
  if (cached && now() - cached.atMs < LINK_CACHE_MS && (bytes === undefined || cached.sampleBytes >= bytes)) return cached.link;
  // The source agent keeps its last measurement too: another ferry process that measured within the minute (a
  // `--plan` before this migration) spares this one the measuring.
  const link = await client.request('link.measure', { to, ...(pageStream === 'tcp' ? { from: { url: backUrl } } : {}), maxAgeMs: LINK_CACHE_MS, ...(bytes !== undefined ? { bytes } : {}) }, { timeoutMs });
  cache.set(key, { link, atMs: now() - link.ageMs, sampleBytes: bytes ?? LINK_MEASURE.defaultBytes });
  return link;
}

/** Forgets every measurement (after a change of network, or between tests). */
export function forgetLinks(): void {
  cache.clear();
}

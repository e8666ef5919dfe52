/**
 * What a live migration will cost, before it starts: rounds, total time, downtime, bytes, and whether it converges
 * under `--max-downtime` (and, when not, what would make it).
 *
 * `predictMigration` is pure. It replays the source's own loop (agent/migration/source.ts) round by round with the
 * same stop rules (shared/stop-rules.ts `decideStop`, the very function the source calls) and the same auto-converge
 * steps, on a model of the two things that decide a pre-copy:
 * - the link: round k sends its pages at the page stream's measured throughput (capped by --max-bandwidth), and
 *   ends with one round trip (`peer.sync`);
 * - the guest: a round that lasts t leaves U(t) pages dirty for the next (shared/dirty-model.ts), with the rate and
 *   working set the agent measured from the dirty log (vm info's `stats`), scaled down by the throttle.
 * and on the fixed costs around them (`overheadMs`): setting up (stage 0, the reservation, the page stream), the
 * pause's own cost beside sending the last pages (pausing, verify and activate round trips, the destination's checks),
 * and the tail after activation. `forecastMigration` measures those (the link, the destination's memory, the
 * source's last migrations: link.measure); the defaults below are only for a caller that measured nothing. When the
 * source has sent whole migrations to the destination lately, their round 1 stands for the link's pace (a sample of
 * 128 MiB in a fresh agent reads 20-40 % below a whole round 1: docs/PERFORMANCE.md, "Forecasts").
 *
 * `forecastMigration` gathers the inputs from the cluster: the VM's stats, and the link from its host to the
 * destination, measured once a minute per host pair in this process (link-measure.ts), so that a planner asking about
 * many moves does not measure each time.
 */
import { AUTO_CONVERGE, LINK_MEASURE, PAGE_SIZE, STOP_RULES } from '../shared/constants.js';
import { uniquePagesDirtied, type DirtyCurve } from '../shared/dirty-model.js';
import { ErrorCode, FerryError } from '../shared/errors.js';
import type { DirtyModel, LinkMeasure, MigrationOptions, StopReason, VmInfo, VmStats } from '../shared/protocol.js';
import { decideStop, switchToPostcopy } from '../shared/stop-rules.js';
import { formatBytes, formatDuration, formatRate } from '../shared/units.js';
import { findHost, type Cluster } from './cluster.js';
import { connectAgent, openHost, type Connector } from './connect.js';
import { locateVm } from './inventory.js';
import { measureLink } from './link-measure.js';

/** The fixed costs of a migration, ms (see the top). */
export interface Overheads {
  /** Before round 1: stage 0, the reservation (the destination's memory made real), the page stream opened. */
  setupMs: number;
  /** Each round's end: the `peer.sync` round trip. */
  perRoundMs: number;
  /** The downtime less the last pages' send: pause, verify and activate round trips, the destination's checks. */
  pausedMs: number;
  /** After activation until the report: the source frees its copy. */
  tailMs: number;
}

/**
 * Model parameters for a caller that measured nothing, from the bench on this project's 2-core machine
 * (docs/PERFORMANCE.md, "Forecasts"). forecastMigration replaces each with a measurement when it has one.
 */
export const DEFAULT_OVERHEADS: Overheads = { setupMs: 60, perRoundMs: 1, pausedMs: 8, tailMs: 5 };

/** Starting a destination's vCPU worker at reservation (a worker thread's start-up): a model parameter, measured here. */
export const VCPU_START_MS = 15;

export interface ForecastInput {
  memoryPages: number;
  /**
   * Pages that are not all zeros, when known. Unused by the live path today (round 1 sends every page, zero or not);
   * kept so that a forecast of a path that skips zero pages needs no new input.
   */
  nonZeroPages?: number;
  /** The guest's measured dirty curve: vm info's `stats` (model defaults to random). */
  stats: { dirtyPagesPerSec: number; wssPages: number; model?: DirtyModel };
  /**
   * The page stream: `bytesPerSec` for a run of pages (round 1, and the stop-and-copy), `scatteredBytesPerSec` for
   * scattered dirty pages (later rounds; default: the same).
   */
  link: { bytesPerSec: number; rttMs: number; scatteredBytesPerSec?: number };
  options: MigrationOptions;
  overheadMs?: Partial<Overheads>;
  /** `--copy-storage`: the local disks to copy first (their size; the copy skips zeros, so this bounds its time). */
  disks?: { file: string; bytes: number }[];
}

export interface ForecastRound {
  round: number;
  pages: number;
  ms: number;
  dirtyPagesAfter: number;
  throttlePct: number;
}

export interface Forecast {
  totalTimeMs: number;
  downtimeMs: number;
  bytes: number;
  /** Pre-copy rounds, as the report counts them (stop-and-copy not included). */
  rounds: number;
  /** Ends by a convergence rule (few dirty pages, or stalled and fits) with downtime within --max-downtime. */
  converges: boolean;
  stopReason: StopReason;
  /** What would make it converge, or what else it costs; empty when there is nothing to say. */
  advice: string[];
  /** With `--postcopy auto`: whether pre-copy alone would converge (false: the source switches after round 1). */
  precopyConverges?: boolean;
  /** The link rate the rounds run at: the measured one, or --max-bandwidth when lower. */
  bandwidthBytesPerSec: number;
  throttlePct: number;
  /** `--copy-storage`: the disks' copy, before memory's rounds (included in totalTimeMs). */
  storageMs?: number;
  overheadMs: Overheads;
  roundsDetail: ForecastRound[];
  /**
   * `--postcopy`: the switch after `afterRounds` rounds with `missingPages` still at the source, and the push of
   * them (`durationMs`, at the run's pace). Downtime is then the switch alone; pre-copy's stop reason does not apply.
   */
  postcopy?: { afterRounds: number; missingPages: number; durationMs: number };
}

/** The simulation itself, without advice. */
function simulate(input: ForecastInput): Omit<Forecast, 'advice'> {
  const overheadMs: Overheads = { ...DEFAULT_OVERHEADS, perRoundMs: Math.max(input.link.rttMs, 0), ...input.overheadMs };
  const { options, memoryPages } = input;
  const cap = options.maxBandwidthBytesPerSec;
  const bandwidth = cap > 0 ? Math.min(cap, input.link.bytesPerSec) : input.link.bytesPerSec;
  const curve = (throttlePct: number): DirtyCurve => ({
    model: input.stats.model ?? 'random',
    ratePagesPerSec: (input.stats.dirtyPagesPerSec * (100 - throttlePct)) / 100,
    wssPages,
  });
  const scatteredMeasured = input.link.scatteredBytesPerSec ?? input.link.bytesPerSec;
  const scattered = cap > 0 ? Math.min(cap, scatteredMeasured) : scatteredMeasured;
  const wssPages = Math.min(input.stats.wssPages, memoryPages);
  const sendMs = (pages: number): number => (bandwidth > 0 ? ((pages * PAGE_SIZE) / bandwidth) * 1000 : Number.POSITIVE_INFINITY);
  // Dirty pages go as a run only when they are all of a working set that is one (ferry's workloads write theirs from
  // page 0); otherwise they are scattered, gathered and installed page by page, at the scattered pace.
  const dirtySendMs = (pages: number): number => {
    if (pages >= wssPages * 0.999) return sendMs(pages);
    return scattered > 0 ? ((pages * PAGE_SIZE) / scattered) * 1000 : Number.POSITIVE_INFINITY;
  };
  const storageMs = options.copyStorage && input.disks?.length ? input.disks.reduce((sum, disk) => sum + sendMs(disk.bytes / PAGE_SIZE), 0) : undefined;

  const roundsDetail: ForecastRound[] = [];
  let elapsedMs = overheadMs.setupMs + (storageMs ?? 0);
  let bytes = 0;
  let throttlePct = 0;
  let pages = memoryPages;
  let round = 1;
  let firstRoundRate = 0;
  let stopReason: StopReason = 'few-dirty-pages';
  let dirtyAfter = memoryPages;
  // Post-copy switches where the source would (stop-rules.ts `switchToPostcopy`): before round 1, or after a round.
  let switched = options.postcopy?.mode === 'after' && options.postcopy.afterRounds === 0;
  for (round = switched ? 0 : 1; !switched; round++) {
    const ms = (round === 1 ? sendMs(pages) : dirtySendMs(pages)) + overheadMs.perRoundMs;
    dirtyAfter = Math.min(memoryPages, Math.round(uniquePagesDirtied(curve(throttlePct), ms)));
    bytes += pages * PAGE_SIZE;
    elapsedMs += ms;
    roundsDetail.push({ round, pages, ms, dirtyPagesAfter: dirtyAfter, throttlePct });
    // As the source: round 1's throughput stands for the link (later small rounds are latency-bound).
    if (round === 1) firstRoundRate = ms > 0 ? ((pages * PAGE_SIZE) / ms) * 1000 : 0;
    const reason = decideStop({
      round, pagesSent: pages, dirtyPagesAfter: dirtyAfter, bytesSentTotal: bytes, memoryBytes: memoryPages * PAGE_SIZE,
      bandwidthBytesPerSec: firstRoundRate, maxDowntimeMs: options.maxDowntimeMs, maxRounds: options.maxRounds,
    });
    const stalled = dirtyAfter > pages * (1 - STOP_RULES.minShrinkFraction);
    if (switchToPostcopy(options, round, reason, stalled, sendMs(dirtyAfter))) {
      switched = true;
      break;
    }
    if (reason) {
      stopReason = reason;
      break;
    }
    if (options.autoConverge && stalled && throttlePct < AUTO_CONVERGE.maxPct) {
      throttlePct = throttlePct === 0 ? AUTO_CONVERGE.initialPct : Math.min(AUTO_CONVERGE.maxPct, throttlePct + AUTO_CONVERGE.incrementPct);
    }
    pages = dirtyAfter;
  }
  if (switched) {
    // The switch pauses for its fixed cost only; every page still dirty (all of them before round 1) follows it once.
    const missingPages = round === 0 ? memoryPages : dirtyAfter;
    const durationMs = sendMs(missingPages);
    const downtimeMs = overheadMs.pausedMs;
    bytes += missingPages * PAGE_SIZE;
    return {
      totalTimeMs: elapsedMs + downtimeMs + durationMs + overheadMs.tailMs, downtimeMs, bytes, rounds: round, converges: true, stopReason,
      bandwidthBytesPerSec: bandwidth, throttlePct, ...(storageMs !== undefined ? { storageMs } : {}), overheadMs, roundsDetail,
      postcopy: { afterRounds: round, missingPages, durationMs },
    };
  }
  // The stop-and-copy goes at the run's pace, scattered or not: with the vCPU paused the sender has the cores the guest
  // had (measured: 370-600 MiB/s for the last pages where the rounds before went at 270-550; docs/PERFORMANCE.md).
  const downtimeMs = sendMs(dirtyAfter) + overheadMs.pausedMs;
  bytes += dirtyAfter * PAGE_SIZE;
  const totalTimeMs = elapsedMs + downtimeMs + overheadMs.tailMs;
  const converges = (stopReason === 'few-dirty-pages' || stopReason === 'converged-within-downtime') && downtimeMs <= options.maxDowntimeMs;
  return {
    totalTimeMs, downtimeMs, bytes, rounds: round, converges, stopReason, bandwidthBytesPerSec: bandwidth, throttlePct,
    ...(storageMs !== undefined ? { storageMs } : {}), overheadMs, roundsDetail,
  };
}

/** The lowest page-stream rate (to 2 %) at which the migration converges, or undefined if none up to 1000 x. */
function bandwidthNeeded(input: ForecastInput): number | undefined {
  // The scattered pace scales with the link's, in the proportion measured.
  const scatteredShare = (input.link.scatteredBytesPerSec ?? input.link.bytesPerSec) / Math.max(input.link.bytesPerSec, 1);
  const at = (bytesPerSec: number): boolean => simulate({
    ...input, link: { ...input.link, bytesPerSec, scatteredBytesPerSec: bytesPerSec * scatteredShare }, options: { ...input.options, maxBandwidthBytesPerSec: 0, autoConverge: false },
  }).converges;
  let low = Math.max(input.link.bytesPerSec, 1);
  let high = low * 1000;
  if (!at(high)) return undefined;
  if (at(low)) return low;
  while (high / low > 1.02) {
    const middle = Math.sqrt(low * high);
    if (at(middle)) high = middle;
    else low = middle;
  }
  return high;
}

export function predictMigration(input: ForecastInput): Forecast {
  // `--postcopy auto`: the forecast's verdict on pre-copy alone is what the source is told (withForecastVerdict), so
  // the simulation switches where the source will.
  let precopyConverges: boolean | undefined;
  if (input.options.postcopy?.mode === 'auto') {
    const { postcopy: _auto, ...precopyOnly } = input.options;
    const precopy = simulate({ ...input, options: precopyOnly });
    // "Will not converge" only where a switch helps: pre-copy ends by a cap, or its stop-and-copy overruns the limit
    // where the switch's own pause fits it (a limit below the pause's fixed cost defeats both alike).
    const switchHelps = precopy.overheadMs.pausedMs <= input.options.maxDowntimeMs && precopy.stopReason !== 'few-dirty-pages';
    precopyConverges = input.options.postcopy.forecastConverges ?? (precopy.converges || !switchHelps);
    input = { ...input, options: { ...input.options, postcopy: { mode: 'auto', forecastConverges: precopyConverges } } };
  }
  const result = simulate(input);
  const advice: string[] = [];
  const { options } = input;
  if (!result.converges) {
    const capped = options.maxBandwidthBytesPerSec > 0 && options.maxBandwidthBytesPerSec < input.link.bytesPerSec;
    if (result.overheadMs.pausedMs > options.maxDowntimeMs) {
      advice.push(`the pause's fixed cost alone (${formatDuration(result.overheadMs.pausedMs)}: pausing, verify and activate round trips) exceeds --max-downtime ${formatDuration(options.maxDowntimeMs)}: raise --max-downtime`);
    } else {
      const needed = bandwidthNeeded(input);
      if (needed !== undefined) {
        advice.push(`it would converge with a page stream of ${formatRate(needed)} or more (${capped ? `--max-bandwidth caps it at ${formatRate(options.maxBandwidthBytesPerSec)}; the link measured ${formatRate(input.link.bytesPerSec)}` : `measured: ${formatRate(input.link.bytesPerSec)}`})`);
      } else {
        advice.push(`no link up to 1000 x the measured ${formatRate(input.link.bytesPerSec)} makes it converge: the guest dirties its ${formatBytes(input.stats.wssPages * PAGE_SIZE)} working set faster than rounds can shrink it`);
      }
      if (!options.autoConverge) {
        const throttled = simulate({ ...input, options: { ...options, autoConverge: true } });
        if (throttled.converges) {
          advice.push(`--auto-converge would make it converge: the vCPU held back by up to ${throttled.throttlePct} %, ${throttled.rounds} round(s), downtime about ${formatDuration(throttled.downtimeMs)}`);
        }
      }
      advice.push(`as it stands pre-copy ends by ${result.stopReason} with about ${formatDuration(result.downtimeMs)} of downtime: --max-downtime ${Math.ceil(result.downtimeMs)}ms would accept that`);
    }
  }
  if (result.postcopy) {
    advice.push(`post-copy: the VM runs at the destination after ${result.postcopy.afterRounds} round(s), with ${result.postcopy.missingPages.toLocaleString('en-US')} page(s) following in about ${formatDuration(result.postcopy.durationMs)}; until they are all there, a crash of either host LOSES THE VM (a broken link only waits for \`ferry migrate --resume\`)`);
  } else if (options.postcopy) {
    // Asked for, but pre-copy is expected to end first: the rounds may still decide otherwise, and the risk is the same.
    advice.push('post-copy: not expected to be needed (pre-copy should end first); if the migration switches after all, a crash of either host after the switch LOSES THE VM until every page is there');
  } else if (!result.converges) {
    const post = simulate({ ...input, options: { ...options, postcopy: { mode: 'after', afterRounds: 1 } } });
    advice.push(`--postcopy would end it in one pass after round 1: downtime about ${formatDuration(post.downtimeMs)}, total about ${formatDuration(post.totalTimeMs)}; but a crash of either host after the switch loses the VM`);
  }
  if (options.compress === 'xbzrle') {
    // What a delta saves depends on how much of each page the guest rewrites between two sends, which the VM's stats do
    // not say: the rounds above count every page sent again whole, an upper bound on the bytes.
    advice.push('--compress xbzrle: rounds 2 on are counted as whole pages here, an upper bound; pages sent again go as deltas where smaller, far fewer bytes for a guest that rewrites a few bytes of each page (docs/PERFORMANCE.md, "Delta compression"), none fewer for one that rewrites whole pages');
  }
  if (result.storageMs !== undefined) {
    const diskBytes = input.disks!.reduce((sum, disk) => sum + disk.bytes, 0);
    advice.push(`--copy-storage: copying ${formatBytes(diskBytes)} of disk at ${formatRate(result.bandwidthBytesPerSec)} takes up to ${formatDuration(result.storageMs)} before memory moves (zero blocks are skipped, so less if the disk is sparse)`);
  }
  return { ...result, advice, ...(precopyConverges !== undefined ? { precopyConverges } : {}) };
}

/**
 * The options a migration runs with once its forecast is made: `--postcopy auto` learns that the forecast expects
 * pre-copy alone not to converge (the source then switches after round 1, if round 1 agrees). Anything else is
 * unchanged, as is everything when there is no forecast or it expects convergence (the rounds decide alone).
 */
export function withForecastVerdict(options: MigrationOptions, forecast: Pick<Forecast, 'precopyConverges'> | undefined): MigrationOptions {
  if (options.postcopy?.mode !== 'auto' || forecast?.precopyConverges !== false) return options;
  return { ...options, postcopy: { mode: 'auto', forecastConverges: false } };
}

/** What `ferry migrate --plan --json` prints. */
/** The link measurement a migration's own forecast makes when none of the last minute is at hand: short, to cost little. */
export const MIGRATE_LINK_BYTES = 16 * 1024 * 1024;
/** ... and how long it may hold the migration up: a destination too slow for it gets a migration without a forecast. */
export const MIGRATE_LINK_TIMEOUT_MS = 5000;

export interface PlannedMigration {
  vm: string;
  from: string;
  to: string;
  forecast: Forecast;
  stats: VmStats | null;
  link: LinkMeasure;
}

export interface ForecastRequest {
  vm: string;
  to: string;
  options: MigrationOptions;
  /** Bytes for the link measurement when none is cached (default: sampleBytesFor the VM's memory). */
  linkBytes?: number;
  /** How long to wait for a running VM's first stats when it has none yet (default 3 s; 0: take what there is). */
  statsWaitMs?: number;
  /** How long the link measurement may take (default 30 s). */
  linkTimeoutMs?: number;
}

/** A vCPU this busy is bound by its core: it cannot keep its rate while the migration takes cores from it. */
const BUSY_VCPU_PCT = 80;

/** How long to wait by default for a running VM's first sampling window (agent/vm-stats/sampler.ts: about 1.5 s after it starts). */
const STATS_WAIT_MS = 3000;

/**
 * Gathers the VM's stats (vm.info; a running VM whose first sampling window has not ended yet is asked again for up
 * to 3 s), measures the link from its host to `to` (or takes this process's measurement of the last minute), and
 * predicts. The time to find the VM and open its host stands in for the migration's own stage 0.
 */
export async function forecastMigration(cluster: Cluster, request: ForecastRequest, connect: Connector = connectAgent): Promise<PlannedMigration> {
  const startedMs = performance.now();
  findHost(cluster, request.to);
  const located = await locateVm(cluster, request.vm, connect);
  if (located.host.name === request.to) throw new FerryError(ErrorCode.BAD_INPUT, `${request.vm} is already on ${request.to}`, 'pick another destination with --to');
  return forecastMove(cluster, { ...request, from: located.host.name, startedMs }, connect);
}

/**
 * How much a link measurement sends for a VM of `memoryBytes`, when the caller does not say: half its memory, within
 * 16 MiB and LINK_MEASURE.maxBytes. A short transfer goes at a short transfer's pace (measured here: 16-128 MiB samples
 * read 200 MB/s to 1.7 GB/s on one link, 512 MiB samples 820-840 MB/s beside a 1 GiB round 1's 770-785 MB/s), so
 * a VM is measured with a sample in proportion to it.
 */
export function sampleBytesFor(memoryBytes: number): number {
  const half = Math.floor(memoryBytes / 2 / PAGE_SIZE) * PAGE_SIZE;
  return Math.min(LINK_MEASURE.maxBytes, Math.max(16 * 1024 * 1024, half));
}

export interface MoveRequest extends ForecastRequest {
  /** The host the VM is on. */
  from: string;
  /** When the asking began (performance.now()): the time until the VM's info is in stands in for stage 0. */
  startedMs?: number;
}

/**
 * The forecast of moving VM `vm` from host `from`, known to hold it, to `to`: for a planner that has surveyed the
 * cluster already (drain, balance) and weighs many moves; the link of each host pair is measured once a minute.
 */
export async function forecastMove(cluster: Cluster, request: MoveRequest, connect: Connector = connectAgent): Promise<PlannedMigration> {
  const startedMs = request.startedMs ?? performance.now();
  const source = findHost(cluster, request.from);
  const destination = findHost(cluster, request.to);
  const from = source.name;
  const { client } = await openHost(source, connect);
  try {
    let info: VmInfo = await client.request('vm.info', { name: request.vm });
    // Stage 0 of a migration also surveys the hosts (to find the VM) and opens the destination: a planner that knew
    // where the VM is spent less than that here, so at least two round trips more are counted below.
    const stageZeroMs = performance.now() - startedMs;
    if (info.state !== 'running' && info.state !== 'paused') {
      throw new FerryError(ErrorCode.VM_STATE, `${request.vm} is ${info.state} on ${from}: a live migration needs it running or paused`, info.state === 'defined' || info.state === 'suspended' ? `move it cold: \`ferry migrate ${request.vm} --to ${request.to} --cold\`` : 'wait for its current migration to finish');
    }
    for (const deadline = performance.now() + (request.statsWaitMs ?? STATS_WAIT_MS); info.state === 'running' && !info.stats && performance.now() < deadline;) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      info = await client.request('vm.info', { name: request.vm });
    }
    // On the path the migration will take: the page stream, or the WebSocket for --page-stream ws.
    const link = await measureLink(client, source, { name: destination.name, url: destination.migrationUrl ?? destination.url }, request.linkBytes ?? sampleBytesFor(info.memoryBytes), request.linkTimeoutMs, undefined, request.options.pageStream ?? 'tcp');
    const stats = info.stats ?? null;
    const memoryPages = info.memoryBytes / PAGE_SIZE;
    const recent = link.recent;
    const overheadMs: Overheads = {
      // Stage 0 as measured just now (and the destination to open: a round trip), the reservation (the destination's
      // memory made real at its measured pace, a vCPU started), and the page stream's opening.
      setupMs: stageZeroMs + (request.startedMs === undefined ? 2 : 1) * link.rttMs + (info.memoryBytes / Math.max(link.populateBytesPerSec, 1)) * 1000 + VCPU_START_MS
        + (recent?.startupMs ?? link.dialMs + 2 * link.rttMs),
      perRoundMs: link.rttMs,
      pausedMs: recent?.pausedOverheadMs ?? DEFAULT_OVERHEADS.pausedMs,
      tailMs: recent?.tailMs ?? DEFAULT_OVERHEADS.tailMs,
    };
    const localDisks = (info.disks ?? []).filter((disk) => !disk.shared).map((disk) => ({ file: disk.file, bytes: disk.sizeBytes }));
    // A whole round 1 on this path, lately, says more of its pace than a sample of it does; the sample still gives the
    // share that scattered pages get.
    const measuredRun = recent?.roundOneBytesPerSec;
    const pace = measuredRun !== undefined
      ? { bytesPerSec: measuredRun, rttMs: link.rttMs, scatteredBytesPerSec: measuredRun * (link.scatteredBytesPerSec / Math.max(link.bytesPerSec, 1)) }
      : link;
    const forecast = predictMigration({
      memoryPages,
      stats: info.state === 'running' && stats ? stats : { dirtyPagesPerSec: 0, wssPages: 0 },
      link: pace,
      options: request.options,
      overheadMs,
      ...(localDisks.length > 0 ? { disks: localDisks } : {}),
    });
    if (info.state === 'running' && stats && stats.cpuPercent >= BUSY_VCPU_PCT) {
      forecast.advice.push(`${request.vm}'s vCPU is ${stats.cpuPercent.toFixed(0)} % busy: where the migration's own threads share its host's cores, it will likely dirty less than the ${Math.round(stats.dirtyPagesPerSec).toLocaleString('en-US')} pages/s measured, and the migration end sooner than forecast`);
    }
    if (info.state === 'running' && !stats) forecast.advice.push(`${request.vm} has no measured dirty rate yet (just started?): the forecast assumes it writes nothing`);
    if (localDisks.length > 0 && !request.options.copyStorage) forecast.advice.push(`${request.vm} has local disks (${localDisks.map((disk) => disk.file).join(', ')}): a live migration needs --copy-storage, or --cold`);
    return { vm: request.vm, from, to: request.to, forecast, stats, link };
  } finally {
    client.close();
  }
}

/**
 * A forecaster for planners (drain, balance): `(vm, from, to, options) => Forecast`, with the VM known to be on
 * `from`. Link measurements are shorter than `--plan`'s (16 MiB by default), kept a minute per host pair, and the
 * VM's stats are taken as they are (no wait).
 */
export function forecaster(cluster: Cluster, settings: { linkBytes?: number; connect?: Connector } = {}): (vm: { name: string }, from: string, to: string, options: MigrationOptions) => Promise<Forecast> {
  return async (vm, from, to, options) => (await forecastMove(cluster, {
    vm: vm.name, from, to, options, linkBytes: settings.linkBytes ?? PLANNER_LINK_BYTES, statsWaitMs: 0,
  }, settings.connect)).forecast;
}

/** A planner's link measurement when none of the last minute is at hand: short, since it may weigh many host pairs. */
const PLANNER_LINK_BYTES = 16 * 1024 * 1024;

/**
 * The migration report: what `ferry migrate --json` prints, and its readable form.
 */
import type { ErrorPayload } from '../shared/errors.js';
import type { DowntimeTimeline, PostcopyReport, RoundReport, SourceReport, StageReport, StopReason, Verification } from '../shared/protocol.js';
import { PAGE_SIZE, STOP_RULES } from '../shared/constants.js';
import { formatBytes, formatDuration, formatRate } from '../shared/units.js';
import type { Forecast } from './forecast.js';
import { formatTable } from './output.js';

export interface MigrationReport {
  vm: string;
  from: string;
  to: string;
  mode: 'live';
  /** postcopy-paused: the post-copy's link broke after the switch (the VM runs at `to`; `ferry migrate --resume`). */
  outcome: 'committed' | 'rolled-back' | 'failed' | 'postcopy-paused';
  error?: ErrorPayload;
  stopReason?: StopReason;
  rounds: RoundReport[];
  stopAndCopy?: RoundReport;
  stages: StageReport[];
  totalTimeMs: number;
  /** vCPU paused on the source to vCPU running on the destination, measured by the source. */
  downtimeMs?: number;
  /** The gap in the guest's own heartbeat across the move. */
  guestBlackoutMs?: number;
  /** The downtime the stop rule expected when it fired. */
  expectedDowntimeMs?: number;
  maxDowntimeMs: number;
  /** Only when a cap forced stop-and-copy: how far the downtime went over --max-downtime. */
  downtimeLimitExceededMs?: number;
  bytesSent: number;
  memoryBytes: number;
  /** Round 1's throughput: the full pass over memory. */
  throughputBytesPerSec: number;
  /** Stage 1's main part: how long the destination took to make the VM's memory real (its page faults). */
  reservationPopulateMs?: number;
  verification?: Verification;
  /** The registers the guest continued from on the destination. */
  cpu?: { x: number; n: number };
  /** Auto-converge: the highest throttle applied to the vCPU, percent of its rate (0: none). */
  throttlePct: number;
  /**
   * The VM's address moving with it: the address, when the destination started serving it (ms from the pause), and
   * the datagrams that reached the source after the pause and were forwarded to the destination.
   */
  network?: SourceReport['network'];
  /** `--copy-storage`: the disks copied before memory, when they were ready, and their verification. */
  storage?: SourceReport['storage'];
  /** How the pages travelled (shared/page-stream.ts), and why not on a stream of their own when one was asked for. */
  pageStream?: SourceReport['pageStream'];
  /** `--compress xbzrle`: cache hits and misses, delta pages, bytes saved, encode and decode CPU time. */
  compression?: SourceReport['compression'];
  /** The forecast made before the migration began (coordinator/forecast.ts), to set beside what happened. */
  forecast?: ReportedForecast;
  /** Why no forecast was made, when the migration went ahead without one. */
  forecastError?: string;
  /** The switchover mark by mark, on both sides' clocks (`--trace` prints it). */
  timeline?: DowntimeTimeline;
  /** Post-copy, when the migration switched to it (agent/migration/postcopy-source.ts). */
  postcopy?: PostcopyReport;
  /** `ferry migrate --resume`: this report is of a post-copy taken up again, not of a whole migration. */
  resumed?: boolean;
}

/** The forecast as a report carries it: the predicted figures, and how long making it took. */
export type ReportedForecast = Pick<Forecast, 'totalTimeMs' | 'downtimeMs' | 'bytes' | 'rounds' | 'converges' | 'stopReason' | 'advice' | 'postcopy'> & {
  /** Gathering stats and measuring the link (0 ms of link when a measurement of the last minute was reused). */
  tookMs: number;
};

export const stopReasonText: Record<StopReason, string> = {
  'few-dirty-pages': `fewer than ${STOP_RULES.fewDirtyPages} pages were dirty (Xen's rule)`,
  'converged-within-downtime': `the last round shrank the dirty set by less than ${STOP_RULES.minShrinkFraction * 100} % and the rest fits --max-downtime (P.Haul's and QEMU's rules)`,
  'max-rounds': 'the round cap was reached (Xen caps pre-copy at 30 rounds)',
  'max-bytes': `${STOP_RULES.maxBytesFactor} x guest memory had been sent (Xen's traffic cap)`,
};

const int = (value: number): string => value.toLocaleString('en-US');

/** `--compress xbzrle` in one line: what the cache held, what the deltas saved of what was sent after round 1, and the CPU. */
function describeCompression(compression: NonNullable<SourceReport['compression']>, rounds: RoundReport[], stopAndCopy: RoundReport | undefined): string {
  const { cacheHits, cacheMisses, deltaPages, bytesSaved, encodeMs, decodeMs, cacheBytes } = compression;
  const afterRound1 = rounds.slice(1).reduce((total, round) => total + round.bytes, 0) + (stopAndCopy?.bytes ?? 0);
  const lookups = cacheHits + cacheMisses;
  const hitRate = lookups > 0 ? ` (${((cacheHits / lookups) * 100).toFixed(1)} %)` : '';
  const factor = afterRound1 > 0 ? `, ${((afterRound1 + bytesSaved) / afterRound1).toFixed(1)} x less after round 1` : '';
  return `xbzrle, ${formatBytes(cacheBytes)} cache: ${int(cacheHits)} hit(s)${hitRate}, ${int(cacheMisses)} miss(es); ${int(deltaPages)} page(s) sent as deltas saved ${formatBytes(bytesSaved)}` +
    `${factor}; encode ${formatDuration(encodeMs)} of CPU on the source${decodeMs !== undefined ? `, decode ${formatDuration(decodeMs)} on the destination` : ''}`;
}

/**
 * A migration refused in stage 0 never learns the VM's size (memoryBytes is 0), and one that failed before round 1
 * sent nothing: neither may divide by zero into "NaN x".
 */
function describeSent(bytesSent: number, memoryBytes: number): string {
  const memory = memoryBytes > 0 ? ` of ${formatBytes(memoryBytes)} of memory` : '';
  if (bytesSent === 0) return `nothing${memory}`;
  const pages = `${int(Math.round(bytesSent / PAGE_SIZE))} pages`;
  if (memoryBytes === 0) return `${formatBytes(bytesSent)} (${pages})`;
  return `${formatBytes(bytesSent)} for ${formatBytes(memoryBytes)} of memory (${(bytesSent / memoryBytes).toFixed(2)} x, ${pages})`;
}

/**
 * The switchover as a table: the source's marks (ms since it asked the vCPU to pause) and the destination's (ms since
 * it received the verify or switchover request, on its own clock), merged in order: the destination's verify marks
 * after the source's `verify asked`, its activation's after `activate asked`; after a switchover, all of them after
 * `switchover asked`. Each side's own offsets are printed as measured.
 * Where both anchors' wall-clock times are known, the destination's marks are also placed on the source's scale
 * (marked ≈): exact on one machine, as good as the hosts' clock agreement otherwise.
 */
export function formatTimeline(timeline: DowntimeTimeline): string[] {
  const ms = (value: number): string => `${value.toFixed(2)} ms`;
  const skewMs = timeline.sourceAnchorEpochMs !== undefined && timeline.destinationAnchorEpochMs !== undefined
    ? timeline.destinationAnchorEpochMs - timeline.sourceAnchorEpochMs
    : undefined;
  const destination = timeline.destination;
  const activationStart = destination.findIndex((mark) => mark.event === 'activate received');
  const verifyPart = activationStart < 0 ? destination : destination.slice(0, activationStart);
  const activatePart = activationStart < 0 ? [] : destination.slice(activationStart);
  const rows: string[][] = [['side', 'event', 'since pause', 'destination clock', 'step']];
  let previous: { side: string; atMs: number } | undefined;
  const push = (side: 'source' | 'destination', event: string, atMs: number): void => {
    const step = previous?.side === side ? ms(atMs - previous.atMs) : '';
    if (side === 'source') rows.push(['source', event, ms(atMs), '', step]);
    else rows.push(['  destination', event, skewMs === undefined ? '' : `≈ ${ms(skewMs + atMs)}`, ms(atMs), step]);
    previous = { side, atMs };
  };
  const pushAll = (marks: { event: string; atMs: number }[]): void => {
    for (const mark of marks) push('destination', mark.event, mark.atMs);
  };
  for (const mark of timeline.source) {
    push('source', mark.event, mark.atMs);
    if (mark.event === 'verify asked') pushAll(verifyPart);
    if (mark.event === 'activate asked') pushAll(activatePart);
    if (mark.event === 'switchover asked') pushAll(destination);
  }
  // A migration that ended before asking: whatever the destination said still shows.
  const asked = (event: string): boolean => timeline.source.some((mark) => mark.event === event);
  if (!asked('switchover asked')) {
    if (!asked('verify asked')) pushAll(verifyPart);
    if (!asked('activate asked')) pushAll(activatePart);
  }
  const lines = formatTable(rows, [2, 3, 4]).split('\n').map((line) => `    ${line}`);
  const gc = [
    ...(timeline.sourceGc ?? []).map((entry) => `source ${entry.kind} at ${ms(entry.startMs)} for ${ms(entry.durationMs)}`),
    ...(timeline.destinationGc ?? []).map((entry) => `destination ${entry.kind} at ${ms(entry.startMs)} (its clock) for ${ms(entry.durationMs)}`),
  ];
  return [
    '  downtime timeline: source marks in ms since it asked the vCPU to pause; destination marks in ms since it received',
    '  the verify or switchover request, on its own clock (≈: placed on the source\'s scale by the hosts\' wall clocks, exact on one machine)',
    ...lines,
    `    garbage collection in the switchover: ${gc.length === 0 ? 'none seen' : gc.join('; ')}`,
  ];
}

/** A post-copy's lines in the report: when it switched, what went how, the faults and how long they held the guest. */
function postcopyFacts(postcopy: PostcopyReport, report: MigrationReport): [string, string][] {
  const facts: [string, string][] = [];
  const why = postcopy.reason === 'asked' ? 'as asked' : postcopy.reason === 'forecast' ? 'the forecast said pre-copy would not converge' : 'pre-copy was not converging';
  facts.push(['post-copy', `switched after ${postcopy.afterRounds} pre-copy round(s) (${why}) with ${int(postcopy.missingPages)} page(s) still on ${report.from}; ${postcopy.complete ? `all at ${report.to} ${formatDuration(postcopy.durationMs)} later` : `${report.to} still lacks some`}`]);
  facts.push(['  pages', `${int(postcopy.pushedPages)} pushed in the background, ${int(postcopy.requestedPages)} sent ahead of it when asked for; ${formatBytes(postcopy.bytesSent)} after the switch${postcopy.refetched > 0 ? `; ${int(postcopy.refetched)} arrived damaged and were sent again` : ''}`]);
  const stall = postcopy.stallMs;
  facts.push(['  page faults', stall
    ? `${int(postcopy.faults)}: the guest waited ${formatDuration(stall.p50)} (p50), ${formatDuration(stall.p99)} (p99), ${formatDuration(stall.max)} at most, ${formatDuration(stall.totalMs)} in all`
    : `${int(postcopy.faults)}`]);
  if (postcopy.resumes > 0) facts.push(['  resumed', `${postcopy.resumes} time(s) after the link broke`]);
  return facts;
}

export function formatReport(report: MigrationReport, options: { trace?: boolean } = {}): string {
  const lines: string[] = [];
  const verdict = { committed: 'COMMITTED', 'rolled-back': 'ROLLED BACK', failed: 'FAILED', 'postcopy-paused': 'POST-COPY PAUSED' }[report.outcome];
  lines.push(`${report.resumed ? 'post-copy resumed' : 'live migration'} of ${report.vm}: ${report.from} -> ${report.to}   ${verdict}`);
  if (report.error) {
    lines.push(`  error: ${report.error.code}: ${report.error.message}`);
    if (report.error.hint) lines.push(`  hint:  ${report.error.hint}`);
    if (report.outcome === 'rolled-back') lines.push(`  ${report.vm} keeps running on ${report.from}, its memory untouched.`);
    if (report.outcome === 'postcopy-paused') lines.push(`  ${report.vm} runs on ${report.to}; ${report.from} keeps the pages it still lacks, paused, until resumed.`);
  }
  if (report.stopReason) lines.push(`  pre-copy ended: ${stopReasonText[report.stopReason]}`);

  if (report.stages.length > 0) {
    lines.push('', '  stage timeline');
    const rows = [['stage', '', 'start', 'end', 'took']];
    for (const stage of report.stages) {
      rows.push([String(stage.stage), stage.name, formatDuration(stage.startMs), formatDuration(stage.endMs), formatDuration(stage.endMs - stage.startMs)]);
    }
    lines.push(...formatTable(rows, [2, 3, 4]).split('\n').map((line) => `    ${line}`));
    if (report.reservationPopulateMs !== undefined) {
      lines.push(`    the reservation made ${formatBytes(report.memoryBytes)} of memory real on ${report.to} in ${formatDuration(report.reservationPopulateMs)} (page faults)`);
    }
  }

  if (report.rounds.length > 0) {
    lines.push('', '  pre-copy rounds');
    // "zero": pages that were all zeros and went as a flag, with no bytes (they are in "pages", not in "sent").
    const rows = [['round', 'pages', 'zero', 'sent', 'took', 'throughput', 'dirty after']];
    for (const round of report.rounds) {
      rows.push([String(round.round), int(round.pages), int(round.zeroPages ?? 0), formatBytes(round.bytes), formatDuration(round.durationMs), formatRate(round.throughputBytesPerSec), int(round.dirtyPagesAfter)]);
    }
    const last = report.stopAndCopy;
    if (last) rows.push(['stop+copy', int(last.pages), int(last.zeroPages ?? 0), formatBytes(last.bytes), formatDuration(last.durationMs), formatRate(last.throughputBytesPerSec), '-']);
    lines.push(...formatTable(rows, [1, 2, 3, 4, 5, 6]).split('\n').map((line) => `    ${line}`));
    if (report.rounds.some((round) => (round.zeroPages ?? 0) > 0)) lines.push('    zero: pages that were all zeros, sent as a flag with no bytes (counted in pages, not in sent)');
  }

  lines.push('');
  const facts: [string, string][] = [];
  if (report.downtimeMs !== undefined) {
    facts.push(['downtime', `${formatDuration(report.downtimeMs)}  (vCPU paused on ${report.from} until running on ${report.to}; limit ${formatDuration(report.maxDowntimeMs)})`]);
  }
  if (report.downtimeLimitExceededMs !== undefined) {
    facts.push(['over the limit', `${formatDuration(report.downtimeLimitExceededMs)}: a cap forced stop-and-copy before the dirty set fit --max-downtime`]);
  }
  if (report.guestBlackoutMs !== undefined) {
    // Two clocks of one pause: a reader should not have to guess why the guest's is the shorter.
    const why = report.downtimeMs !== undefined && report.guestBlackoutMs < report.downtimeMs
      ? `; shorter than downtime, which the source times from asking the vCPU to pause until the destination's "running" reaches it: that reply's trip back, and each side's handling, are in downtime but not in the guest's gap`
      : '';
    facts.push(['guest blackout', `${formatDuration(report.guestBlackoutMs)}  (gap in the guest's own heartbeat${why})`]);
  }
  facts.push(['total time', formatDuration(report.totalTimeMs)]);
  facts.push(['sent', describeSent(report.bytesSent, report.memoryBytes)]);
  if (report.pageStream) {
    const { kind, fallback } = report.pageStream;
    facts.push(['pages over', kind === 'tcp' ? 'a TCP stream of their own, read into guest memory' : `the peer WebSocket${fallback ? ` (no stream of their own: ${fallback})` : ''}`]);
  }
  if (report.throughputBytesPerSec > 0) facts.push(['throughput', `${formatRate(report.throughputBytesPerSec)} (round 1)`]);
  const verification = report.verification;
  if (verification) {
    const mark = verification.match ? 'match' : 'MISMATCH';
    let text = `${verification.mode}: source ${verification.sourceDigest}, destination ${verification.destDigest}: ${mark}`;
    if (verification.sourceMemoryDigest) text += `; memory ${verification.sourceMemoryDigest} / ${verification.destMemoryDigest}`;
    if (verification.pageMismatches > 0) text += ` (${verification.pageMismatches} page(s) changed in flight and were resent or caught)`;
    facts.push(['verification', text]);
  }
  if (report.compression) facts.push(['compression', describeCompression(report.compression, report.rounds, report.stopAndCopy)]);
  if (report.throttlePct > 0) facts.push(['auto-converge', `the vCPU was held back by up to ${report.throttlePct} % of its rate`]);
  if (report.network) {
    const serving = report.network.servingAfterPauseMs !== undefined ? `served from ${report.to} ${formatDuration(report.network.servingAfterPauseMs)} after the pause` : `not confirmed served from ${report.to}`;
    facts.push(['network', `${report.network.address}: ${serving}; ${int(report.network.forwarded)} datagram(s) forwarded from ${report.from} during the switchover${report.network.announcements ? `; ${report.network.announcements} gratuitous ARP(s) from ${report.to}` : ''}`]);
  }
  if (report.storage) {
    const { storage } = report;
    for (const disk of storage.disks) {
      const how = storage.mode === 'mirror'
        ? `mirror: ${int(disk.mirroredWrites)} guest write(s) went to both copies`
        : `iterate: ${disk.rounds} round(s)${disk.stopReason ? ` (${disk.stopReason})` : ''}, ${int(disk.pausedBlocks)} block(s) in the pause`;
      facts.push([`storage ${disk.file}`, `${formatBytes(disk.bytes)}, ${formatBytes(disk.bytesSent)} copied (${int(disk.zeroBlocksSkipped)} zero blocks not sent) at ${formatRate(disk.throughputBytesPerSec)}; ready after ${formatDuration(disk.readyAfterMs)}; ${how}`]);
    }
    for (const check of storage.verification) {
      facts.push([`verified ${check.file}`, `${check.match ? 'match' : 'MISMATCH'}: blocks ${check.sourceDigest} / ${check.destDigest}${check.sourceImageDigest ? `; images ${check.sourceImageDigest} / ${check.destImageDigest}` : ''}`]);
    }
  }
  if (report.postcopy) facts.push(...postcopyFacts(report.postcopy, report));
  if (report.forecastError) facts.push(['forecast', `not made: ${report.forecastError}`]);
  if (report.forecast) facts.push(['forecast', `made in ${formatDuration(report.forecast.tookMs)} before the migration; below, beside what happened`]);
  if (report.cpu) facts.push(['registers', `x=${report.cpu.x} n=${int(report.cpu.n)} handed to ${report.to}`]);
  const width = Math.max(...facts.map(([label]) => label.length));
  lines.push(...facts.map(([label, value]) => `  ${label.padEnd(width)}  ${value}`));
  if (report.forecast && report.outcome === 'committed') lines.push('', ...formatForecastBeside(report, report.forecast));
  if (options.trace) {
    lines.push('', ...(report.timeline ? formatTimeline(report.timeline) : ['  downtime timeline: none (the migration never paused the VM)']));
  }
  return lines.join('\n');
}

/** The forecast against the outcome: total time, downtime, bytes, rounds, and how far off each was. */
function formatForecastBeside(report: MigrationReport, forecast: ReportedForecast): string[] {
  const off = (predicted: number, actual: number): string => (actual > 0 ? `${predicted >= actual ? '+' : ''}${(((predicted - actual) / actual) * 100).toFixed(0)} %` : '-');
  const rows = [['', 'forecast', 'actual', 'off by']];
  rows.push(['total time', formatDuration(forecast.totalTimeMs), formatDuration(report.totalTimeMs), off(forecast.totalTimeMs, report.totalTimeMs)]);
  if (report.downtimeMs !== undefined) rows.push(['downtime', formatDuration(forecast.downtimeMs), formatDuration(report.downtimeMs), `${forecast.downtimeMs >= report.downtimeMs ? '+' : '-'}${formatDuration(Math.abs(forecast.downtimeMs - report.downtimeMs))}`]);
  rows.push(['sent', formatBytes(forecast.bytes), formatBytes(report.bytesSent), off(forecast.bytes, report.bytesSent)]);
  rows.push(['rounds', String(forecast.rounds), String(report.rounds.length), String(forecast.rounds - report.rounds.length)]);
  rows.push(['ended by', forecast.postcopy ? 'post-copy' : forecast.stopReason, report.postcopy ? 'post-copy' : report.stopReason ?? '-', '']);
  return ['  forecast beside what happened', ...formatTable(rows, [1, 2, 3]).split('\n').map((line) => `    ${line}`)];
}

/**
 * `ferry bench --peer qemu`: after ferry's runs of a plain memory scenario, the same migration done by QEMU (a
 * guest of the same size and memory contents, two local QEMU processes), `--repeat` times, and the two side by
 * side in the results. Without QEMU the bench says so and goes on.
 */
import { parseDuration, parseSize } from '../../shared/units.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import type { RawTcpResult } from './baseline.js';
import { KNOWN_PEERS, findQemu, migrateQemuGuest, type PeerName, type QemuPeerRun } from './qemu-peer.js';
import { filledGuest, type Scenario } from './scenarios.js';
import { spread, type Spread } from './stats.js';
import type { ScenarioSummary } from './summary.js';

/** What the bench knows of the peer: found (its version), or not (why). */
export interface PeerStatus {
  peer: PeerName;
  available: boolean;
  version?: string;
  binary?: string;
  /** Why it did not run, when it did not: `peer unavailable: ...`. */
  reason?: string;
  downtimeLimitMs: number;
  /** The machine's 1-minute load average when the bench began and when it ended (results only). */
  loadAverage?: { start: number; end: number };
}

export interface PeerScenario {
  peer: PeerName;
  scenario: string;
  link: string;
  memoryBytes: number;
  /** The raw TCP of the same bench run and link, as for ferry's runs. */
  rawTcpBytesPerSec: number;
  /** Set when the peer did not run this scenario, with why. */
  skipped?: string;
  runs: QemuPeerRun[];
  summary?: PeerSummary;
}

export interface PeerSummary {
  runs: number;
  completed: number;
  throughputBytesPerSec: Spread;
  fractionOfRawTcp: Spread;
  totalTimeMs: Spread;
  downtimeMs: Spread;
  stopToResumeMs: Spread;
  cpuMsPerGiB: Spread;
  bytesSentOverMemory: Spread;
  /** Every completed run's destination memory equals the source's from 1 MiB up. */
  allMatched: boolean;
}

export interface PeerRequest {
  peer: PeerName;
  downtimeLimitMs: number;
}

/** `--peer` and `--peer-downtime-limit` checked: a known peer, a limit from 1 ms to 10 s. */
export function parsePeerOptions(peer: string | undefined, downtimeLimit: string | undefined): PeerRequest | undefined {
  if (peer === undefined) {
    if (downtimeLimit !== undefined) throw new FerryError(ErrorCode.BAD_INPUT, '--peer-downtime-limit needs --peer', 'e.g. --peer qemu --peer-downtime-limit 5ms');
    return undefined;
  }
  if (!(KNOWN_PEERS as readonly string[]).includes(peer)) {
    throw new FerryError(ErrorCode.BAD_INPUT, `--peer ${peer}: no such peer`, `known: ${KNOWN_PEERS.join(', ')} (e.g. --peer qemu)`);
  }
  const downtimeLimitMs = parseDuration(downtimeLimit ?? '5ms');
  if (!Number.isInteger(downtimeLimitMs) || downtimeLimitMs < 1 || downtimeLimitMs > 10_000) {
    throw new FerryError(ErrorCode.BAD_INPUT, `--peer-downtime-limit ${downtimeLimit}: QEMU takes whole milliseconds from 1 ms to 10 s`, 'e.g. --peer-downtime-limit 5ms (the default), or 300ms (QEMU\'s own default)');
  }
  return { peer: peer as PeerName, downtimeLimitMs };
}

/** The peer's status for this bench: QEMU found or not. */
export function peerStatus(request: PeerRequest): PeerStatus & { found?: ReturnType<typeof findQemu> } {
  const found = findQemu();
  return found.available
    ? { peer: request.peer, available: true, version: found.version, binary: found.binary, downtimeLimitMs: request.downtimeLimitMs, found }
    : { peer: request.peer, available: false, reason: `peer unavailable: ${found.reason}`, downtimeLimitMs: request.downtimeLimitMs };
}

/**
 * Why the peer cannot run a scenario like ferry did, or undefined when it can: QEMU's guest here is idle firmware,
 * so only scenarios whose guest writes nothing compare; and it runs on loopback only.
 */
export function peerSkipReason(scenario: Scenario, link: string): string | undefined {
  if (scenario.service || scenario.storage || scenario.soak) return 'not a plain memory scenario';
  if (scenario.workload !== 'idle' && (scenario.rate ?? 0) > 0) return 'the QEMU guest writes no memory; only scenarios whose guest writes nothing compare';
  if (scenario.workload !== 'idle' && (scenario.dirtyRateOfLink ?? 0) > 0) return 'the QEMU guest writes no memory; only scenarios whose guest writes nothing compare';
  if (scenario.maxBandwidth) return 'the scenario caps the bandwidth';
  if (link !== 'loopback') return `the QEMU peer runs on loopback only, this scenario ran on ${link}`;
  return undefined;
}

/** Whether the peer will run this scenario at all (for the progress count). */
export function peerRuns(scenario: Scenario, link: string): boolean {
  return peerSkipReason(scenario, link) === undefined;
}

export interface PeerContext {
  status: PeerStatus & { found?: ReturnType<typeof findQemu> };
  workdir: string;
  rawTcp: RawTcpResult;
  link: string;
  onStep?: (label: string) => void;
  onNote?: (line: string) => void;
}

/** The peer's runs of one scenario; a run that fails is kept as failed, never thrown. */
export async function runPeerScenario(scenario: Scenario, repeat: number, context: PeerContext): Promise<PeerScenario> {
  const memoryBytes = parseSize(scenario.memory);
  const entry: PeerScenario = { peer: context.status.peer, scenario: scenario.name, link: context.link, memoryBytes, rawTcpBytesPerSec: context.rawTcp.bytesPerSec, runs: [] };
  const skipped = !context.status.available ? context.status.reason : peerSkipReason(scenario, context.link);
  if (skipped) return { ...entry, skipped };
  const found = context.status.found;
  for (let run = 1; run <= repeat; run++) {
    context.onStep?.(`${scenario.name} qemu #${run}`);
    try {
      entry.runs.push(await migrateQemuGuest(scenario.name, run, {
        memoryBytes,
        workdir: context.workdir,
        downtimeLimitMs: context.status.downtimeLimitMs,
        destinationPrealloc: scenario.prealloc,
        filled: filledGuest(scenario),
        warmupMs: parseDuration(scenario.warmup),
      }, found?.available ? found : undefined));
    } catch (error) {
      context.onNote?.(`${scenario.name}: the QEMU run #${run} failed: ${(error as Error).message}`);
      entry.runs.push(failedRun(scenario.name, run, memoryBytes, context.status, (error as Error).message, scenario.prealloc));
    }
    const last = entry.runs[entry.runs.length - 1]!;
    if (last.status === 'completed') {
      context.onNote?.(`${scenario.name} qemu #${run}: ${(last.throughputBytesPerSec / 1024 ** 2).toFixed(0)} MiB/s, total ${last.totalTimeMs} ms, downtime ${last.downtimeMs} ms` +
        `${last.verification ? `, memory ${last.verification.match ? 'matches' : 'DIFFERS'}` : ''}`);
    }
  }
  return { ...entry, summary: summarizePeer(entry.runs, context.rawTcp.bytesPerSec) };
}

function failedRun(scenario: string, repeat: number, memoryBytes: number, status: PeerStatus, error: string, prealloc: boolean): QemuPeerRun {
  return {
    peer: 'qemu', scenario, repeat, version: status.version ?? '', status: 'failed', error, memoryBytes,
    downtimeLimitMs: status.downtimeLimitMs, maxBandwidthBytesPerSec: 0, destinationPrealloc: prealloc,
    totalTimeMs: Number.NaN, downtimeMs: Number.NaN, setupTimeMs: Number.NaN, transferredBytes: 0, throughputBytesPerSec: Number.NaN,
    normalPages: 0, duplicatePages: 0, dirtySyncCount: 0, bytesSentOverMemory: Number.NaN,
    cpu: { sourceMs: Number.NaN, destinationMs: Number.NaN, totalMs: Number.NaN, msPerGiB: Number.NaN },
  };
}

export function summarizePeer(runs: QemuPeerRun[], rawTcpBytesPerSec: number): PeerSummary {
  const done = runs.filter((run) => run.status === 'completed');
  return {
    runs: runs.length,
    completed: done.length,
    throughputBytesPerSec: spread(done.map((run) => run.throughputBytesPerSec)),
    fractionOfRawTcp: spread(done.map((run) => run.throughputBytesPerSec / rawTcpBytesPerSec)),
    totalTimeMs: spread(done.map((run) => run.totalTimeMs)),
    downtimeMs: spread(done.map((run) => run.downtimeMs)),
    stopToResumeMs: spread(done.map((run) => run.stopToResumeMs ?? Number.NaN)),
    cpuMsPerGiB: spread(done.map((run) => run.cpu.msPerGiB)),
    bytesSentOverMemory: spread(done.map((run) => run.bytesSentOverMemory)),
    allMatched: done.length > 0 && done.every((run) => run.verification?.match === true),
  };
}

const num = (value: number, digits = 1): string => (Number.isFinite(value) ? value.toFixed(digits) : '-');
const withSpread = (value: Spread, digits = 1): string =>
  value.n > 1 ? `${num(value.median, digits)} (${num(value.min, digits)}–${num(value.max, digits)})` : num(value.median, digits);
const mib = (value: Spread): Spread => ({ ...value, median: value.median / 1024 ** 2, min: value.min / 1024 ** 2, max: value.max / 1024 ** 2 });

/** The Markdown section: ferry's and the peer's figures for each scenario, one row each. */
export function peerSection(status: PeerStatus | undefined, peers: PeerScenario[], summaries: ScenarioSummary[]): string[] {
  if (!status) return [];
  const lines = ['## QEMU beside ferry', ''];
  if (!status.available) {
    lines.push(`QEMU did not run: ${status.reason}.`, '');
    return lines;
  }
  lines.push(`QEMU ${status.version} (TCG, q35, no devices, SeaBIOS with nothing to boot: a running, idle guest), two processes on 127.0.0.1, ` +
    `\`downtime-limit\` ${status.downtimeLimitMs} ms, \`max-bandwidth\` raised out of the way; its guest's memory as the scenario's: filled with non-zero data ` +
    '(page p: words 0, 0, p, then k × 0x9E3779B1), so no page is skipped as zero, or all zeros where the scenario says `"filled": false`. Medians of the runs, (min–max) beside them. ' +
    'Throughput: ferry\'s round 1; QEMU\'s bytes sent over its total time less setup. Downtime: as each reports it (ferry: vCPU paused on the source until running on the destination; ' +
    'QEMU: source stopped until its last byte was sent). Paused → running: the source\'s STOP to the destination\'s RESUME (QMP event times) for QEMU, ferry\'s downtime for ferry. ' +
    'CPU: both processes, per GiB sent. Memory: ferry\'s verification (and replay for pattern guests); QEMU\'s destination saved and compared with its source from 1 MiB up, both paused after the migration.' +
    (status.loadAverage ? ` Load average (1 min) of the machine: ${status.loadAverage.start.toFixed(2)} when the bench began, ${status.loadAverage.end.toFixed(2)} when it ended.` : ''), '');
  if (peers.length === 0) {
    lines.push('QEMU ran beside no scenario of this run: it runs beside plain memory scenarios whose guest writes nothing (idle-256m, idle-1g, idle-4g, hot-1g-0).', '');
    return lines;
  }
  lines.push('| scenario | migrator | runs (done) | throughput MiB/s (% raw TCP) | total time ms | downtime ms | paused → running ms | CPU ms/GiB | sent / memory | memory |');
  lines.push('|---|---|---|---|---|---|---|---|---|---|');
  for (const peer of peers) {
    const ferry = summaries.find((summary) => summary.scenario === peer.scenario);
    if (ferry) {
      lines.push(`| ${peer.scenario} | ferry | ${ferry.runs} (${ferry.committed}) | ${withSpread(mib(ferry.round1ThroughputBytesPerSec), 0)} (${num(ferry.fractionOfRawTcp.median * 100, 1)} %) | ` +
        `${withSpread(ferry.totalTimeMs, 0)} | ${withSpread(ferry.downtimeMs, 2)} | ${withSpread(ferry.downtimeMs, 2)} | ${withSpread(ferry.cpuMsPerGiB, 0)} | ${num(ferry.bytesSentOverMemory.median, 2)} | ` +
        `${ferry.allVerified ? 'verified' : 'NOT VERIFIED'}${ferry.allReplayMatched === undefined ? '' : ferry.allReplayMatched ? ', replay ok' : ', REPLAY MISMATCH'} |`);
    }
    if (peer.skipped || !peer.summary) {
      lines.push(`| ${peer.scenario} | qemu | - | skipped: ${peer.skipped ?? 'no runs'} | | | | | | |`);
      continue;
    }
    const s = peer.summary;
    lines.push(`| ${peer.scenario} | qemu | ${s.runs} (${s.completed}) | ${withSpread(mib(s.throughputBytesPerSec), 0)} (${num(s.fractionOfRawTcp.median * 100, 1)} %) | ` +
      `${withSpread(s.totalTimeMs, 0)} | ${withSpread(s.downtimeMs, 2)} | ${withSpread(s.stopToResumeMs, 2)} | ${withSpread(s.cpuMsPerGiB, 0)} | ${num(s.bytesSentOverMemory.median, 2)} | ` +
      `${s.allMatched ? 'matches source' : '**DIFFERS or unchecked**'} |`);
  }
  lines.push('');
  const failed = peers.flatMap((peer) => peer.runs.filter((run) => run.status !== 'completed'));
  for (const run of failed) lines.push(`- ${run.scenario} qemu #${run.repeat} failed: ${run.error ?? 'no reason given'}`);
  if (failed.length > 0) lines.push('');
  return lines;
}

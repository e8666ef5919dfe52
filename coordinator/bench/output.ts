/**
 * The benchmark's results for machines (JSON, CSV) and for people (a Markdown report).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { formatBytes, formatRate } from '../../shared/units.js';
import type { RawTcpResult } from './baseline.js';
import type { Environment } from './environment.js';
import { peerSection, type PeerScenario, type PeerStatus } from './peer.js';
import type { RunResult } from './runner.js';
import type { ServiceMigration, ServiceRun } from './service.js';
import type { SoakRun } from './soak.js';
import type { RawDiskResult, StorageRun, StorageSummary, StorageTargetCheck } from './storage.js';
import type { ScenarioSummary, ServiceSummary, TargetCheck } from './summary.js';
import type { Spread } from './stats.js';

export interface BenchResults {
  environment: Environment;
  command: string;
  repeat: number;
  /** The raw-TCP baseline of each link the runs used, measured before its migrations. */
  baselines: Record<string, RawTcpResult>;
  summaries: ScenarioSummary[];
  targets: TargetCheck[];
  runs: RunResult[];
  /** Service scenarios: a run per repeat, each with its migrations under the probe and its steady rates. */
  services: ServiceRun[];
  serviceSummaries: ServiceSummary[];
  /** Soaks: migrations back and forth between long-lived agents hosting other VMs (bench/soak.ts). */
  soaks?: SoakRun[];
  /** Raw disk write speed on the work folder's file system, where storage scenarios keep their disks. */
  rawDisk?: RawDiskResult;
  /** Storage scenarios: a run per repeat, each with its moves. */
  storage: StorageRun[];
  storageSummaries: StorageSummary[];
  storageTargets: StorageTargetCheck[];
  /** `--peer qemu`: whether QEMU was found (its version, or why not), and its runs beside ferry's. */
  peer?: PeerStatus;
  peers?: PeerScenario[];
  charts: string[];
}

const csvColumns: [string, (run: RunResult) => string | number | undefined][] = [
  ['scenario', (run) => run.scenario],
  ['repeat', (run) => run.repeat],
  ['link', (run) => run.link],
  ['outcome', (run) => run.outcome],
  ['memory_bytes', (run) => run.memoryBytes],
  ['dirty_rate_pages_per_sec', (run) => run.dirtyRatePagesPerSec],
  ['achieved_dirty_rate_pages_per_sec', (run) => Math.round(run.achievedDirtyRatePagesPerSec)],
  ['link_rate_bytes_per_sec', (run) => Math.round(run.linkRateBytesPerSec)],
  ['raw_tcp_bytes_per_sec', (run) => Math.round(run.rawTcpBytesPerSec)],
  ['round1_throughput_bytes_per_sec', (run) => Math.round(run.round1ThroughputBytesPerSec)],
  ['fraction_of_raw_tcp', (run) => run.fractionOfRawTcp.toFixed(4)],
  ['total_time_ms', (run) => run.totalTimeMs.toFixed(2)],
  ['downtime_ms', (run) => run.downtimeMs.toFixed(3)],
  ['guest_blackout_ms', (run) => run.guestBlackoutMs.toFixed(3)],
  ['rounds', (run) => run.rounds.length],
  ['round_pages', (run) => run.rounds.map((round) => round.pages).join(' ')],
  ['stop_and_copy_pages', (run) => run.stopAndCopyPages],
  ['stop_reason', (run) => run.stopReason],
  ['bytes_sent_over_memory', (run) => run.bytesSentOverMemory.toFixed(4)],
  ['bytes_after_round1', (run) => run.bytesAfterRound1],
  ['xbzrle_cache_hits', (run) => run.compression?.cacheHits],
  ['xbzrle_cache_misses', (run) => run.compression?.cacheMisses],
  ['xbzrle_delta_pages', (run) => run.compression?.deltaPages],
  ['xbzrle_bytes_saved', (run) => run.compression?.bytesSaved],
  ['xbzrle_encode_ms', (run) => run.compression?.encodeMs.toFixed(1)],
  ['xbzrle_decode_ms', (run) => run.compression?.decodeMs?.toFixed(1)],
  ['cpu_source_ms', (run) => run.cpu.sourceMs.toFixed(1)],
  ['cpu_destination_ms', (run) => run.cpu.destinationMs.toFixed(1)],
  ['cpu_ms_per_gib', (run) => run.cpu.msPerGiB.toFixed(1)],
  ['verified', (run) => String(run.verification?.match ?? false)],
  ['replay_matches', (run) => (run.replayMatches === undefined ? '' : String(run.replayMatches))],
  ['transfer_time_ms', (run) => run.transferTimeMs.toFixed(2)],
  ['predicted_transfer_time_ms', (run) => run.prediction.totalTimeMs.toFixed(2)],
  ['predicted_total_time_ms', (run) => run.predictedTotalTimeMs.toFixed(2)],
  ['predicted_downtime_ms', (run) => run.prediction.downtimeMs.toFixed(3)],
  ['predicted_rounds', (run) => run.prediction.rounds.length],
  ['model_error_transfer_time', (run) => run.predictionError.transferTime.toFixed(4)],
  ['model_error_total_time', (run) => run.predictionError.totalTime.toFixed(4)],
  ['error', (run) => run.error],
];

/**
 * A service migration is a row of its own: the columns it shares with a run (scenario to guest blackout, error)
 * filled, the pre-copy ones empty, and these after them; a plain run leaves these empty.
 */
const serviceCsvColumns: [string, (migration: ServiceMigration, run: ServiceRun) => string | number | undefined][] = [
  ['scenario', (_m, run) => run.scenario],
  ['repeat', (_m, run) => run.repeat],
  ['link', (_m, run) => run.link],
  ['outcome', (m) => m.outcome],
  ['memory_bytes', (_m, run) => run.memoryBytes],
  ['total_time_ms', (m) => m.totalTimeMs.toFixed(2)],
  ['downtime_ms', (m) => m.downtimeMs.toFixed(3)],
  ['guest_blackout_ms', (m) => m.guestBlackoutMs.toFixed(3)],
  ['error', (m) => m.error],
  ['migration', (m) => m.index],
  ['from', (m) => m.from],
  ['to', (m) => m.to],
  ['service_rate_per_sec', (_m, run) => run.rate],
  ['outage_ms', (m) => m.outageMs.toFixed(3)],
  ['outage_at_ms', (m) => m.outageAtMs.toFixed(1)],
  ['pause_at_ms', (m) => m.pauseAtMs?.toFixed(1)],
  ['switchover_gap_ms', (m) => m.switchoverGapMs?.toFixed(3)],
  ['serving_after_pause_ms', (m) => m.servingAfterPauseMs?.toFixed(3)],
  ['forwarded', (m) => m.forwarded],
  ['announcements', (m) => m.announcements],
  ['requests_sent', (m) => m.sent],
  ['requests_unanswered', (m) => m.unanswered],
  ['writes_lost', (m) => m.lostWrites],
  ['retries', (m) => m.retries],
  ['p99_ms', (m) => m.p99Ms.toFixed(3)],
];

function csvCell(value: string | number | undefined): string {
  const text = value === undefined ? '' : String(value);
  return /[",\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

export function toCsv(runs: RunResult[], services: ServiceRun[] = [], storage: StorageRun[] = []): string {
  const header = [...new Set([...csvColumns, ...serviceCsvColumns, ...(storage.length > 0 ? storageCsvColumns : [])].map(([name]) => name))];
  const line = (cells: Map<string, string | number | undefined>): string => header.map((name) => csvCell(cells.get(name))).join(',');
  const runLines = runs.map((run) => line(new Map(csvColumns.map(([name, pick]) => [name, pick(run)]))));
  const serviceLines = services.flatMap((run) => run.migrations.map((migration) => line(new Map(serviceCsvColumns.map(([name, pick]) => [name, pick(migration, run)])))));
  const storageLines = storage.flatMap((run) => run.moves.map((move) => line(new Map(storageCsvColumns.map(([name, pick]) => [name, pick(move, run)])))));
  return [header.join(','), ...runLines, ...serviceLines, ...storageLines].join('\n') + '\n';
}

const num = (value: number, digits = 1): string => (Number.isFinite(value) ? value.toFixed(digits) : '-');
const withSpread = (value: Spread, digits = 1, unit = ''): string =>
  value.n > 1 ? `${num(value.median, digits)}${unit} (${num(value.min, digits)}–${num(value.max, digits)})` : `${num(value.median, digits)}${unit}`;

export function toMarkdown(results: BenchResults): string {
  const { environment: env } = results;
  const lines: string[] = [];
  lines.push('# ferry benchmark results', '');
  lines.push(`Measured ${env.date} on ${env.cores} cores (${env.cpuModel}), ${formatBytes(env.memoryBytes)}, ${env.os}, Node ${env.node}; ` +
    `ferry ${env.ferry}, ${Object.entries(env.libraries).map(([name, version]) => `${name} ${version}`).join(', ')}. Link: ${env.link}.`, '');
  lines.push(`Command: \`${results.command}\``, '');
  for (const [link, rawTcp] of Object.entries(results.baselines)) {
    lines.push(`Raw TCP on ${link}, between the same endpoints as the agents, 1 MiB writes, separate processes: **${formatRate(rawTcp.bytesPerSec)}** ` +
      `(median of ${rawTcp.samplesBytesPerSec.length}: ${rawTcp.samplesBytesPerSec.map((value) => formatRate(value)).join(', ')}), ` +
      `${num(rawTcp.cpuMsPerGiB)} ms of CPU per GiB (both ends)` +
      (rawTcp.iperf3BitsPerSec ? `; iperf3: ${(rawTcp.iperf3BitsPerSec / 1e9).toFixed(2)} Gbit/s.` : '; iperf3 not installed.'), '');
  }
  if (results.summaries.length > 0) lines.push(...runTable(results.summaries, results.repeat));
  if (results.summaries.some((summary) => summary.compress !== undefined)) lines.push(...afterRound1Table(results.summaries));
  if (results.targets.length > 0) {
    lines.push('## Targets', '', '| what | target | measured (median) | met |', '|---|---|---|---|');
    for (const target of results.targets) lines.push(targetRow(target));
    lines.push('');
  }
  if (results.peer) lines.push(...peerSection(results.peer, results.peers ?? [], results.summaries));
  if (results.serviceSummaries.length > 0) lines.push(...serviceSection(results.serviceSummaries));
  if (results.storageSummaries.length > 0) lines.push(...storageSection(results));
  const postcopy = results.summaries.filter((summary) => summary.postcopy);
  if (postcopy.length > 0) lines.push(...postcopySection(postcopy));
  if (results.soaks && results.soaks.length > 0) lines.push(...soakSection(results.soaks));
  if (results.charts.length > 0) {
    lines.push('## Charts', '');
    for (const chart of results.charts) lines.push(`![${chart}](charts/${chart})`, '');
  }
  return lines.join('\n');
}

const targetRow = (target: TargetCheck, first = ''): string => `| ${first}${target.what} | ${target.target} | ${target.measured} | ${target.met ? 'yes' : '**no**'} |`;

function runTable(summaries: ScenarioSummary[], repeat: number): string[] {
  const lines: string[] = [];
  lines.push(`Medians over ${repeat} runs per scenario, (min–max) beside them. Every run starts two fresh agent processes. ` +
    'The model column is the pre-copy model (coordinator/bench/model.ts) given round-1 throughput and the dirty rate the vCPU achieved; ' +
    'it predicts stages 2-3, and the stages it does not model (checks, reservation, commit, activation) are added as measured. ' +
    'Its error on stages 2-3 alone is the last figure. Runs that switched to post-copy are not its to predict: "-" (the forecast models them).', '');
  lines.push('| scenario | link | dirty rate, % of link (achieved) | round-1 throughput MiB/s (% raw TCP) | total time ms | downtime ms | guest blackout ms | rounds | stop | sent / memory | CPU ms/GiB (x raw TCP) | model: total ms (error; stages 2-3 error) | verified |');
  lines.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const s of summaries) {
    const dirty = s.dirtyRateOfLink !== undefined
      ? `${num(s.dirtyRateOfLink * 100, 0)} % (${num(s.achievedDirtyRateOfLink.median * 100, 1)} %)`
      : s.dirtyRatePagesPerSec > 0 ? `${s.dirtyRatePagesPerSec} writes/s (${num(s.achievedDirtyRateOfLink.median * 100, 1)} %)` : 'idle';
    const stops = Object.entries(s.stopReasons).map(([reason, count]) => `${reason}${count === s.runs ? '' : ` ×${count}`}`).join(', ');
    const verified = `${s.allVerified ? 'yes' : 'NO'}${s.allReplayMatched === undefined ? '' : s.allReplayMatched ? ', replay ok' : ', REPLAY MISMATCH'}`;
    lines.push(`| ${s.scenario} | ${s.link} | ${dirty} | ${num(s.round1ThroughputBytesPerSec.median / 1024 ** 2, 0)} (${num(s.fractionOfRawTcp.median * 100, 1)} %) | ${withSpread(s.totalTimeMs, 0)} | ${withSpread(s.downtimeMs, 2)} | ${withSpread(s.guestBlackoutMs, 2)} | ${withSpread(s.rounds, 0)} | ${stops || '-'} | ${num(s.bytesSentOverMemory.median, 2)} | ${num(s.cpuMsPerGiB.median, 0)} (${num(s.cpuVersusRawTcp.median, 2)} x) | ${Number.isFinite(s.predictedTotalTimeMs.median) ? `${num(s.predictedTotalTimeMs.median, 0)} (${num(s.modelErrorTotalTime.median * 100, 1)} %; ${num(s.modelErrorTransferTime.median * 100, 1)} %)` : '-'} | ${verified}${s.committed < s.runs ? `, ${s.runs - s.committed} not committed` : ''} |`);
  }
  lines.push('');
  return lines;
}

const int = (value: number): string => (Number.isFinite(value) ? Math.round(value).toLocaleString('en-US') : '-');

/** Bytes sent after round 1, every scenario beside the compressed ones, and what the XBZRLE cache did (`compress`). */
function afterRound1Table(summaries: ScenarioSummary[]): string[] {
  const lines = ['## After round 1: delta compression', '',
    'Page bytes sent after round 1 (later rounds and the stop-and-copy), medians (min–max). With `--compress xbzrle`: the cache\'s hits and misses, ' +
    'pages sent as deltas, bytes saved (a whole page less the delta, each), and CPU ms spent encoding (source) and decoding (destination).', '',
    '| scenario | compress | MiB after round 1 | cache hits | misses | delta pages | MiB saved | encode ms | decode ms |',
    '|---|---|---|---|---|---|---|---|---|'];
  const mib = (value: Spread): Spread => ({ ...value, median: value.median / 1024 ** 2, min: value.min / 1024 ** 2, max: value.max / 1024 ** 2 });
  for (const s of summaries) {
    const c = s.compression;
    lines.push(`| ${s.scenario} | ${s.compress ?? '-'} | ${withSpread(mib(s.bytesAfterRound1), 2)} | ${c ? int(c.cacheHits.median) : '-'} | ${c ? int(c.cacheMisses.median) : '-'} | ${c ? int(c.deltaPages.median) : '-'} | ${c ? withSpread(mib(c.bytesSaved), 1) : '-'} | ${c ? withSpread(c.encodeMs, 0) : '-'} | ${c ? withSpread(c.decodeMs, 0) : '-'} |`);
  }
  lines.push('');
  return lines;
}

function postcopySection(summaries: ScenarioSummary[]): string[] {
  const lines: string[] = ['## Post-copy', ''];
  lines.push('Scenarios that switch to post-copy (`ferry migrate --postcopy-after N`, `--postcopy auto`): the VM runs at the destination ' +
    'from the switch while its missing pages follow, each fetched first when the guest touches it. Downtime is the switch; ' +
    'faults are the destination vCPU\'s waits for a missing page, and their stall the time each held it. One pass: memory over the ' +
    'link\'s page rate as the forecast measured it in the same run (or --max-bandwidth, where that is lower); "moving" leaves out stages 0-1 (the checks and the reservation, which ' +
    'makes the destination\'s memory real before any page moves); "floor" is one pass plus the reservation\'s page faults in the same run, ' +
    'what the machine costs before ferry\'s own work. Medians over the runs, (min–max) beside them.', '');
  lines.push('| scenario | switch | switched | downtime ms | total time ms | total / one pass (moving; floor) | faults | stall p50 ms | stall p99 ms | pages asked for | pages pushed | post-copy ms | sent / memory |');
  lines.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const s of summaries) {
    const p = s.postcopy!;
    lines.push(`| ${s.scenario} | ${p.mode} | ${p.switched}/${s.runs} | ${withSpread(s.downtimeMs, 2)} | ${withSpread(s.totalTimeMs, 0)} | ${num(p.totalOverOnePass.median, 2)} (${num(p.movingOverOnePass.median, 2)}; ${num(p.floorOverOnePass.median, 2)}) | ${withSpread(p.faults, 0)} | ${withSpread(p.stallP50Ms, 2)} | ${withSpread(p.stallP99Ms, 2)} | ${int(p.requestedPages.median)} | ${int(p.pushedPages.median)} | ${withSpread(p.postcopyMs, 0)} | ${num(s.bytesSentOverMemory.median, 2)} |`);
  }
  lines.push('');
  return lines;
}

function serviceSection(summaries: ServiceSummary[]): string[] {
  const lines: string[] = ['## Service', ''];
  lines.push('A kv VM serving its address while it migrates back and forth between the two agents with default options, ' +
    'each migration under a probe (a UDP client in its own process, half PUT, half GET, retrying what goes unanswered) ' +
    'from shortly before to shortly after it. Outage: the longest gap between two replies the client saw. ' +
    'Switchover gap: the gap that spans the pause (0: the replies never stopped for 5 ms there). ' +
    'Downtime: vCPU paused on the source until running on the destination. Blackout: the gap in the guest\'s heartbeat. ' +
    'Medians over every migration, (min–max) beside them; unanswered requests and lost writes are totals.', '');
  lines.push('| scenario | link | memory | requests/s | migrations (committed) | outage ms | switchover gap ms | downtime ms | guest blackout ms | outage − downtime ms | serving after pause ms | forwarded | unanswered | writes lost |');
  lines.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const s of summaries) {
    lines.push(`| ${s.scenario} | ${s.link} | ${formatBytes(s.memoryBytes)} | ${int(s.rate)} | ${s.migrations} (${s.committed}) | ${withSpread(s.outageMs, 2)} | ${withSpread(s.switchoverGapMs, 2)} | ${withSpread(s.downtimeMs, 2)} | ${withSpread(s.guestBlackoutMs, 2)} | ${withSpread(s.outageOverDowntimeMs, 2)} | ${withSpread(s.servingAfterPauseMs, 2)} | ${withSpread(s.forwarded, 0)} | ${s.unanswered} | ${s.lostWrites} |`);
  }
  lines.push('', '### Service targets', '', '| scenario: what | target | measured | met |', '|---|---|---|---|');
  for (const s of summaries) for (const target of s.targets) lines.push(targetRow(target, `${s.scenario}: `));
  lines.push('');
  const steady = summaries.filter((s) => s.steady.length > 0);
  if (steady.length > 0) {
    lines.push('### Outside migration', '', 'The probe at each rate in turn (medians over the runs; the probe shares the machine with the agents).', '');
    lines.push('| scenario | rate asked | sent | answered/s | unanswered | retries | p50 ms | p99 ms | p99.9 ms | max ms |', '|---|---|---|---|---|---|---|---|---|---|');
    for (const s of steady) {
      for (const r of s.steady) lines.push(`| ${s.scenario} | ${int(r.rate)}/s | ${int(r.sent)} | ${int(r.answeredPerSec)} | ${r.unanswered} | ${r.retries} | ${num(r.p50Ms, 3)} | ${num(r.p99Ms, 3)} | ${num(r.p999Ms, 3)} | ${num(r.maxMs, 3)} |`);
    }
    lines.push('');
  }
  return lines;
}

function soakSection(soaks: SoakRun[]): string[] {
  const lines = ['## Soak: as a user runs ferry', '',
    'The same two agents for the whole run, other VMs on each, the VM made as the scenario says (no --prealloc unless ' +
    'it says so), migrated back and forth with default options. Downtime over every committed ' +
    'migration of the run; round 1 throughput its median. Target: downtime <= 3 ms median and <= 10 ms p95.', ''];
  lines.push('| scenario | run | memory | prealloc | other VMs per agent | migrations (committed) | downtime median ms | p95 ms | max ms | round 1 median MB/s | memory matches replay | downtime target met |');
  lines.push('|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const run of soaks) {
    const round1 = [...run.migrations.map((migration) => migration.round1BytesPerSec)].sort((a, b) => a - b)[Math.floor(run.migrations.length / 2)] ?? 0;
    lines.push(`| ${run.scenario} | ${run.repeat} | ${formatBytes(run.memoryBytes)} | ${run.prealloc ? 'yes' : 'no'} | ${run.others} | ${run.migrations.length} (${run.committed}) | ${num(run.downtimeMs.median, 2)} | ${num(run.downtimeMs.p95, 2)} | ${num(run.downtimeMs.max, 2)} | ${mb(round1)} | ${run.replayMatches ? 'yes' : '**no**'} | ${run.downtimeMs.median <= 3 && run.downtimeMs.p95 <= 10 ? 'yes' : '**no**'} |`);
  }
  lines.push('');
  return lines;
}

const mb = (bytesPerSec: number): string => num(bytesPerSec / 1e6, 0);

function storageSection(results: BenchResults): string[] {
  const lines: string[] = ['## Storage', ''];
  lines.push('`ferry storage move` on one agent with `--shared-storage`: a pattern VM writes its disk (4 KiB blocks, synchronous ' +
    'through the agent\'s block layer) while the disk moves back and forth between the shared storage and the datastore ' +
    '(shared → local → shared …), each mode in turn, `--verify pages`. No link is crossed: both places are on this machine. ' +
    'Medians over every move of the mode, (min–max) beside them. Throughput: bytes the copy sent over the time to ready; ' +
    'image rate: the disk\'s size over the same time (zero blocks are read, not sent). Guest writes/s: asked, then ' +
    'achieved before the moves (warm-up) and during them. Write latency: the guest\'s disk writes before the copy and while it ran. ' +
    'A filled disk starts as an image of random bytes, so no block is a hole; its content cannot be replayed, so its disk check is skipped.', '');
  const raw = results.rawDisk;
  if (raw) {
    lines.push(`Raw disk writes in ${raw.dir} (the file system of the datastore and the shared storage), ${formatBytes(raw.bytes)} of random data in 1 MiB writes, then fsync: ` +
      `**${mb(raw.bytesPerSec)} MB/s** (median of ${raw.samplesBytesPerSec.length}: ${raw.samplesBytesPerSec.map((value) => mb(value)).join(', ')} MB/s). ` +
      'The throughput target is 80 % of the slower of this and the link; a move on one host crosses no link, so it is this.', '');
  }
  lines.push('| scenario | mode | disk | guest writes/s asked (achieved before; during) | moves (moved) | pause ms | ready after ms | throughput MB/s | image MB/s | write p50 / p99 ms before | write p50 / p99 ms during | rounds | paused blocks | mirrored writes | stop | disk check |');
  lines.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const s of results.storageSummaries) {
    const disk = `${formatBytes(s.diskBytes)}${s.filled ? ' filled' : `, ${formatBytes(s.diskWssBytes)} written`}${s.maxBandwidthBytesPerSec > 0 ? `, copy capped at ${formatRate(s.maxBandwidthBytesPerSec)}` : ''}`;
    const stops = Object.entries(s.stopReasons).map(([reason, count]) => `${reason} ×${count}`).join(', ');
    lines.push(`| ${s.scenario} | ${s.mode} | ${disk} | ${int(s.diskRate)} (${int(s.achievedDiskRateBefore.median)}; ${int(s.achievedDiskRateDuring.median)}) | ${s.moves} (${s.moved}) | ${withSpread(s.pauseMs, 1)} | ${withSpread(s.readyAfterMs, 0)} | ` +
      `${mb(s.throughputBytesPerSec.median)} (${mb(s.throughputBytesPerSec.min)}–${mb(s.throughputBytesPerSec.max)}) | ${mb(s.imageBytesPerSec.median)} | ` +
      `${num(s.latencyBeforeP50Ms.median, 3)} / ${num(s.latencyBeforeP99Ms.median, 2)} | ${num(s.latencyDuringP50Ms.median, 3)} / ${num(s.latencyDuringP99Ms.median, 2)} | ` +
      `${s.mode === 'iterate' ? withSpread(s.rounds, 0) : '-'} | ${s.mode === 'iterate' ? withSpread(s.pausedBlocks, 0) : '-'} | ${s.mode === 'mirror' ? withSpread(s.mirroredWrites, 0) : '-'} | ${stops || '-'} | ${s.diskCheck} |`);
  }
  if (results.storageTargets.length > 0) {
    lines.push('', '### Storage targets', '', '| what | target | measured (median) | met |', '|---|---|---|---|');
    for (const target of results.storageTargets) lines.push(targetRow(target));
  }
  lines.push('');
  return lines;
}

const storageCsvColumns: [string, (move: StorageRun['moves'][number], run: StorageRun) => string | number | undefined][] = [
  ['scenario', (_m, run) => run.scenario],
  ['repeat', (_m, run) => run.repeat],
  ['link', (_m, run) => run.link],
  ['outcome', (m) => m.outcome],
  ['total_time_ms', (m) => m.totalTimeMs.toFixed(2)],
  ['stop_reason', (m) => m.stopReason],
  ['rounds', (m) => m.rounds],
  ['verified', (m) => String(m.verified)],
  ['error', (m) => m.error],
  ['storage_mode', (m) => m.mode],
  ['move', (m) => m.index],
  ['from', (m) => m.from],
  ['to', (m) => m.to],
  ['disk_bytes', (_m, run) => run.diskBytes],
  ['disk_filled', (_m, run) => String(run.filled)],
  ['disk_rate_per_sec', (_m, run) => run.diskRate],
  ['achieved_disk_rate_before_per_sec', (_m, run) => Math.round(run.achievedDiskRateBefore)],
  ['achieved_disk_rate_during_per_sec', (m) => Math.round(m.achievedDiskRate)],
  ['pause_ms', (m) => m.pauseMs.toFixed(3)],
  ['ready_after_ms', (m) => m.readyAfterMs.toFixed(2)],
  ['disk_bytes_sent', (m) => m.bytesSent],
  ['disk_throughput_bytes_per_sec', (m) => Math.round(m.throughputBytesPerSec)],
  ['image_bytes_per_sec', (m) => Math.round(m.imageBytesPerSec)],
  ['mirrored_writes', (m) => m.mirroredWrites],
  ['paused_blocks', (m) => m.pausedBlocks],
  ['write_p50_ms_before', (m) => m.writeLatency?.before.p50Ms.toFixed(4)],
  ['write_p99_ms_before', (m) => m.writeLatency?.before.p99Ms.toFixed(4)],
  ['write_p50_ms_during', (m) => m.writeLatency?.during.p50Ms.toFixed(4)],
  ['write_p99_ms_during', (m) => m.writeLatency?.during.p99Ms.toFixed(4)],
  ['disk_check', (_m, run) => (run.diskCheck.checked ? String(run.diskCheck.ok) : 'skipped')],
];

export async function writeResults(dir: string, results: BenchResults): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  await writeFile(path.join(dir, 'runs.csv'), toCsv(results.runs, results.services, results.storage));
  await writeFile(path.join(dir, 'summary.md'), toMarkdown(results));
}

/**
 * Service scenarios: what a client of a kv VM sees while the VM migrates. One pair of agents for the whole run; the
 * VM is made on host-a with the link's address, warmed up under a short probe, then migrated back and forth, each
 * migration under a probe (a real UDP client in a process of its own) from a margin before to a margin after it;
 * then, outside migration, probed at rising rates. Replaces scripts/measure-network.sh.
 */
import { DEFAULT_MAX_DOWNTIME_MS, STOP_RULES } from '../../shared/constants.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import type { MigrationOptions } from '../../shared/protocol.js';
import { parseDuration, parseSize } from '../../shared/units.js';
import { withHost } from '../connect.js';
import { migrateLive } from '../migrate.js';
import { migrationOptions } from '../migrate-options.js';
import type { ProbeResult } from '../probe.js';
import type { MigrationReport } from '../report.js';
import { toVmRequest } from '../vm-spec.js';
import type { Link } from './link.js';
import { benchScript, nodeCommand, startJsonLines, type JsonLineProcess } from './processes.js';
import { withRunAgents, type BenchContext } from './runner.js';
import type { Scenario, ServiceSpec } from './scenarios.js';

/** One migration under the probe. */
export interface ServiceMigration {
  /** 1, 2, ... within the run. */
  index: number;
  from: string;
  to: string;
  outcome: MigrationReport['outcome'];
  error?: string;
  /** The probe's longest gap between two replies: the client-observed outage. */
  outageMs: number;
  /**
   * When that gap began and when the vCPU was paused, in ms from the start of the migration: an outage that began
   * far from the pause was not the switchover's (negative: before the migration).
   */
  outageAtMs: number;
  pauseAtMs?: number;
  /**
   * The gap between replies that spans the pause: what the switchover itself cost the client (the longest gap may
   * lie elsewhere, in pre-copy, when the migration's threads and the service share the cores). Under the probe's
   * LONG_GAP_MS (5 ms) when no listed gap spans it; undefined without a pause.
   */
  switchoverGapMs?: number;
  downtimeMs: number;
  guestBlackoutMs: number;
  /** When the destination started serving the address, from the pause. */
  servingAfterPauseMs?: number;
  /** Datagrams the source forwarded to the destination during the switchover. */
  forwarded?: number;
  /** Gratuitous ARPs the destination scheduled for the address (namespaces mode), where the report gives them. */
  announcements?: number;
  totalTimeMs: number;
  sent: number;
  answered: number;
  unanswered: number;
  lostWrites: number;
  retries: number;
  p99Ms: number;
}

/** The probe at one rate outside migration. */
export interface SteadySample {
  rate: number;
  durationMs: number;
  sent: number;
  answered: number;
  answeredPerSec: number;
  unanswered: number;
  retries: number;
  lostWrites: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
}

export interface ServiceRun {
  scenario: string;
  repeat: number;
  link: string;
  memoryBytes: number;
  /** Requests a second during each migration. */
  rate: number;
  /** Where the VM served, IP:PORT. */
  address: string;
  migrations: ServiceMigration[];
  steady: SteadySample[];
}

/** A probe left running stops on its own after this long, should the run lose track of it. */
const PROBE_MAX_MS = 10 * 60_000;
/** After SIGINT the probe waits up to 2 s for replies and 2 s for its read-back. */
const RESULT_TIMEOUT_MS = 30_000;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function startProbe(link: Link, address: string, rate: number, durationMs: number): JsonLineProcess {
  return startJsonLines(...nodeCommand(benchScript('service-probe'), [address, String(rate), String(durationMs)], link.clientNetns));
}

/** The probe for a fixed time. */
async function probeFor(link: Link, address: string, rate: number, durationMs: number): Promise<ProbeResult> {
  const probe = startProbe(link, address, rate, durationMs);
  try {
    return await probe.next<ProbeResult>('result', durationMs + RESULT_TIMEOUT_MS);
  } finally {
    await probe.stop();
  }
}

/** The probe running from `marginMs` before `during` to `marginMs` after it. */
async function probeAround<T>(link: Link, address: string, rate: number, marginMs: number, during: () => Promise<T>): Promise<[ProbeResult, T]> {
  const probe = startProbe(link, address, rate, PROBE_MAX_MS);
  try {
    await probe.next('started', RESULT_TIMEOUT_MS);
    await sleep(marginMs);
    const value = await during();
    await sleep(marginMs);
    probe.child.kill('SIGINT');
    return [await probe.next<ProbeResult>('result', RESULT_TIMEOUT_MS), value];
  } finally {
    await probe.stop();
  }
}

/** `ferry migrate`'s defaults: the service scenarios measure what a user gets without tuning. */
function defaultMigrationOptions(): MigrationOptions {
  return migrationOptions({ maxDowntime: `${DEFAULT_MAX_DOWNTIME_MS}ms`, maxRounds: String(STOP_RULES.maxRounds), verify: 'pages' });
}

/**
 * The probe's gap that contains the instant `epochMs` (the pause), with a millisecond of slack for the two clocks'
 * rounding; 0 when none of its listed gaps does (the replies never stopped for more than its LONG_GAP_MS there).
 */
export function gapSpanning(probe: ProbeResult, epochMs: number): number {
  const atMs = epochMs - probe.startedAtEpochMs;
  const spanning = probe.longGaps.filter((gap) => gap.atMs - 1 <= atMs && atMs <= gap.atMs + gap.gapMs + 1);
  return Math.max(0, ...spanning.map((gap) => gap.gapMs));
}

export function toServiceMigration(index: number, from: string, report: MigrationReport, probe: ProbeResult, migrationStartEpochMs: number): ServiceMigration {
  const announcements = report.network?.announcements;
  const pauseAtMs = report.stages.find((stage) => stage.stage === 3)?.startMs;
  const switchoverGapMs = pauseAtMs === undefined ? undefined : gapSpanning(probe, migrationStartEpochMs + pauseAtMs);
  return {
    index,
    from,
    to: report.to,
    outcome: report.outcome,
    ...(report.error ? { error: `${report.error.code}: ${report.error.message}` } : {}),
    outageMs: probe.longestGapMs,
    outageAtMs: probe.startedAtEpochMs + probe.longestGapAtMs - migrationStartEpochMs,
    ...(pauseAtMs !== undefined ? { pauseAtMs } : {}),
    ...(switchoverGapMs !== undefined ? { switchoverGapMs } : {}),
    downtimeMs: report.downtimeMs ?? Number.NaN,
    guestBlackoutMs: report.guestBlackoutMs ?? Number.NaN,
    ...(report.network?.servingAfterPauseMs !== undefined ? { servingAfterPauseMs: report.network.servingAfterPauseMs } : {}),
    ...(report.network ? { forwarded: report.network.forwarded } : {}),
    ...(announcements !== undefined ? { announcements } : {}),
    totalTimeMs: report.totalTimeMs,
    sent: probe.sent,
    answered: probe.answered,
    unanswered: probe.unanswered,
    lostWrites: probe.writes.lost,
    retries: probe.retries,
    p99Ms: probe.latencyMs.p99,
  };
}

export function toSteadySample(probe: ProbeResult): SteadySample {
  return {
    rate: probe.ratePerSec,
    durationMs: probe.durationMs,
    sent: probe.sent,
    answered: probe.answered,
    answeredPerSec: probe.answered / (probe.durationMs / 1000),
    unanswered: probe.unanswered,
    retries: probe.retries,
    lostWrites: probe.writes.lost,
    p50Ms: probe.latencyMs.p50,
    p99Ms: probe.latencyMs.p99,
    p999Ms: probe.latencyMs.p999,
    maxMs: probe.latencyMs.max,
  };
}

export function describeMigration(scenario: string, repeat: number, total: number, migration: ServiceMigration): string {
  const ms = (value: number | undefined): string => (value !== undefined && Number.isFinite(value) ? `${value.toFixed(1)} ms` : '-');
  return `${scenario} #${repeat} migration ${migration.index}/${total} ${migration.from} -> ${migration.to}: ${migration.outcome}, ` +
    `outage ${ms(migration.outageMs)} (at ${ms(migration.outageAtMs)}; pause at ${ms(migration.pauseAtMs)}; gap spanning it ${ms(migration.switchoverGapMs)}), downtime ${ms(migration.downtimeMs)}, blackout ${ms(migration.guestBlackoutMs)}, ` +
    `${migration.unanswered} unanswered, ${migration.lostWrites} writes lost${migration.error ? ` (${migration.error})` : ''}`;
}

function serviceOf(scenario: Scenario): ServiceSpec {
  if (!scenario.service) throw new FerryError(ErrorCode.INTERNAL, `scenario ${scenario.name} has no service part`);
  return scenario.service;
}

export async function runServiceScenario(scenario: Scenario, repeat: number, context: BenchContext): Promise<ServiceRun> {
  const service = serviceOf(scenario);
  const { link } = context;
  const label = `${scenario.name} #${repeat}`;
  return withRunAgents(scenario, repeat, context, async (bench, [hostA]) => {
    context.onStep?.(`${label} warm-up`);
    const request = toVmRequest('bench', { memory: scenario.memory, workload: 'kv', rate: '0', seed: String(scenario.seed), ip: `${link.vmAddress}/32`, prealloc: scenario.prealloc });
    const info = await withHost(hostA, (client) => client.request('vm.create', request));
    if (!info.address) {
      throw new FerryError(ErrorCode.VM_STATE, `the ${scenario.name} VM serves no address on ${hostA.name}`, `the ${link.name} link's agents must serve ${link.vmAddress}`);
    }
    const address = info.address;
    // The first requests fault in the table's pages and warm the JIT on both ends: not what a migration costs.
    await probeFor(link, address, service.rate, parseDuration(scenario.warmup));

    const options = defaultMigrationOptions();
    const marginMs = parseDuration(service.margin);
    const migrations: ServiceMigration[] = [];
    let at = hostA.name;
    for (let index = 1; index <= service.migrations; index++) {
      // Back and forth; after a migration that did not commit the VM is still where it was, and goes from there.
      const to = at === 'host-a' ? 'host-b' : 'host-a';
      context.onStep?.(`${label} migration ${index}/${service.migrations} ${at} -> ${to}`);
      let startedAtEpochMs = 0;
      const [probe, report] = await probeAround(link, address, service.rate, marginMs, () => {
        startedAtEpochMs = Date.now();
        return migrateLive(bench.cluster, { vm: 'bench', to, options });
      });
      const migration = toServiceMigration(index, at, report, probe, startedAtEpochMs);
      migrations.push(migration);
      context.onNote?.(describeMigration(scenario.name, repeat, service.migrations, migration));
      if (report.outcome === 'committed') at = to;
    }

    const steady: SteadySample[] = [];
    if (service.steady) {
      context.onStep?.(`${label} outside migration`);
      for (const rate of service.steady.rates) steady.push(toSteadySample(await probeFor(link, address, rate, parseDuration(service.steady.duration))));
    }
    return { scenario: scenario.name, repeat, link: link.name, memoryBytes: parseSize(scenario.memory), rate: service.rate, address, migrations, steady };
  });
}

/** Progress steps a run of this scenario takes: one for a plain run; warm-up, each migration and the steady rates for a service. */
export function stepsOf(scenario: Scenario): number {
  return scenario.service ? 1 + scenario.service.migrations + (scenario.service.steady ? 1 : 0) : 1;
}

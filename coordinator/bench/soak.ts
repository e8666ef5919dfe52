/**
 * Soak scenarios: ferry as a user runs it. The same two agents stay up for the whole run and host other VMs beside
 * the one that moves; the VM is made without --prealloc unless the scenario says otherwise; it migrates back and forth
 * `migrations` times with default options. Reported: every migration's
 * downtime and the tail of them (median, p95, max), each round 1's throughput, and at the end whether the VM's memory
 * matches a replay of its writes.
 */
import { DEFAULT_MAX_DOWNTIME_MS, STOP_RULES } from '../../shared/constants.js';
import type { MigrationOptions } from '../../shared/protocol.js';
import { parseDuration, parseSize } from '../../shared/units.js';
import { withHost } from '../connect.js';
import { readMemory } from '../dump.js';
import { migrateLive } from '../migrate.js';
import { checkPattern } from '../pattern-check.js';
import { toVmRequest } from '../vm-spec.js';
import { withRunAgents, type BenchContext } from './runner.js';
import { filledGuest, type Scenario, type SoakSpec } from './scenarios.js';
import { percentile } from './stats.js';

export interface SoakMigration {
  index: number;
  from: string;
  to: string;
  outcome: string;
  error?: string;
  downtimeMs: number;
  guestBlackoutMs: number;
  totalTimeMs: number;
  rounds: number;
  round1BytesPerSec: number;
}

export interface SoakRun {
  scenario: string;
  repeat: number;
  link: string;
  memoryBytes: number;
  prealloc: boolean;
  /** Other VMs on each agent, running all along. */
  others: number;
  migrations: SoakMigration[];
  downtimeMs: { median: number; p95: number; max: number };
  committed: number;
  /** The moving VM's memory against a replay of its writes, after the last migration. */
  replayMatches: boolean;
}

/** Steps in the progress display: one per migration. */
export function soakSteps(scenario: Scenario): number {
  return scenario.soak?.migrations ?? 0;
}

export async function runSoakScenario(scenario: Scenario, repeat: number, context: BenchContext): Promise<SoakRun> {
  const soak = scenario.soak as SoakSpec;
  const memoryBytes = parseSize(scenario.memory);
  const options: MigrationOptions = {
    maxDowntimeMs: scenario.maxDowntime ? parseDuration(scenario.maxDowntime) : DEFAULT_MAX_DOWNTIME_MS,
    maxBandwidthBytesPerSec: 0, maxRounds: STOP_RULES.maxRounds, verify: scenario.verify, autoConverge: false,
  };
  const othersBytes = soak.others * parseSize(soak.othersMemory);
  return withRunAgents(scenario, repeat, context, async (bench, [hostA, hostB]) => {
    const request = toVmRequest('soak', { memory: scenario.memory, workload: scenario.workload, rate: String(scenario.rate ?? 0), seed: String(scenario.seed), ...(scenario.wss ? { wss: scenario.wss } : {}), filled: filledGuest(scenario) });
    await withHost(hostA, (client) => client.request('vm.create', { ...request, prealloc: scenario.prealloc, cpuModel: { model: 'host' } }));
    for (const [index, host] of [hostA, hostB].entries()) {
      for (let other = 1; other <= soak.others; other++) {
        const name = `other-${index === 0 ? 'a' : 'b'}${other}`;
        const spec = toVmRequest(name, { memory: soak.othersMemory, workload: 'pattern', rate: String(soak.othersRate), seed: String(100 + 10 * index + other), filled: true });
        await withHost(host, (client) => client.request('vm.create', { ...spec, cpuModel: { model: 'host' } }));
      }
    }
    await new Promise((resolve) => setTimeout(resolve, parseDuration(scenario.warmup)));
    const migrations: SoakMigration[] = [];
    for (let index = 1; index <= soak.migrations; index++) {
      const [from, to] = index % 2 === 1 ? [hostA, hostB] : [hostB, hostA];
      context.onStep?.(`${scenario.name} #${repeat}: migration ${index} of ${soak.migrations}`);
      const report = await migrateLive(bench.cluster, { vm: 'soak', to: to.name, options });
      migrations.push({
        index, from: from.name, to: to.name, outcome: report.outcome, ...(report.error ? { error: report.error.message } : {}),
        downtimeMs: report.downtimeMs ?? Number.NaN, guestBlackoutMs: report.guestBlackoutMs ?? Number.NaN,
        totalTimeMs: report.totalTimeMs, rounds: report.rounds.length, round1BytesPerSec: report.throughputBytesPerSec,
      });
      if (report.outcome !== 'committed') context.onNote?.(`${scenario.name} #${repeat}: migration ${index} ${report.outcome}: ${report.error?.message ?? ''}`);
    }
    const last = migrations.at(-1);
    const holder = last?.outcome === 'committed' ? (last.to === hostA.name ? hostA : hostB) : (last?.from === hostA.name ? hostA : hostB);
    const replayMatches = scenario.workload === 'pattern'
      ? await withHost(holder, async (client) => {
        const { info, image } = await readMemory(client, 'soak');
        return checkPattern(info, image).ok;
      })
      : true;
    const downtimes = migrations.filter((migration) => migration.outcome === 'committed').map((migration) => migration.downtimeMs);
    return {
      scenario: scenario.name, repeat, link: context.link.name, memoryBytes, prealloc: scenario.prealloc, others: soak.others,
      migrations,
      downtimeMs: { median: percentile(downtimes, 0.5), p95: percentile(downtimes, 0.95), max: percentile(downtimes, 1) },
      committed: downtimes.length,
      replayMatches,
    };
  }, memoryBytes + othersBytes);
}

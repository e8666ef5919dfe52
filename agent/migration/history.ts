/**
 * The fixed costs of the last live migrations this host sent, by destination: what a forecast cannot derive from
 * the link's throughput and the guest's dirty rate (coordinator/forecast.ts), measured rather than guessed.
 *
 * - startupMs: from `migrate.start` arriving to the first round (the VM's small files read, the page stream dialled
 *   and bound to its reservation);
 * - pausedOverheadMs: the downtime less the stop-and-copy's own send: pausing the vCPU, the last harvest, the
 *   verify and activate round trips, the destination's checks and its vCPU resumed;
 * - tailMs: from the activation's reply to the source's report (the source's files removed, its vCPU stopped).
 *
 * In memory only: an agent that restarts starts with none, and the forecast falls back to its defaults.
 */
import type { SourceReport } from '../../shared/protocol.js';

/** Migrations remembered per destination. */
const KEPT = 8;

export interface MigrationCosts {
  startupMs: number;
  pausedOverheadMs: number;
  tailMs: number;
  /** Round 1's throughput, when no --max-bandwidth held it: the path's pace over a whole memory, not a sample. */
  roundOneBytesPerSec?: number;
}

export interface RecentCosts extends Omit<MigrationCosts, 'roundOneBytesPerSec'> {
  /** How many migrations the medians are of. */
  migrations: number;
  /** The median round-1 throughput of those that ran uncapped, if any did. */
  roundOneBytesPerSec?: number;
}

export class MigrationHistory {
  private readonly byDestination = new Map<string, MigrationCosts[]>();

  /** Notes a committed migration's fixed costs; others say nothing of a full migration's costs and are skipped. */
  record(destination: string, startupMs: number, report: SourceReport, capped: boolean): void {
    if (report.outcome !== 'committed' || report.downtimeMs === undefined || !report.stopAndCopy) return;
    const paused = report.stages.find((stage) => stage.stage === 3);
    const end = report.stages.at(-1)?.endMs;
    if (!paused || end === undefined) return;
    const costs: MigrationCosts = {
      startupMs,
      pausedOverheadMs: Math.max(0, report.downtimeMs - report.stopAndCopy.durationMs),
      tailMs: Math.max(0, end - (paused.startMs + report.downtimeMs)),
      ...(!capped && report.rounds[0] ? { roundOneBytesPerSec: report.rounds[0].throughputBytesPerSec } : {}),
    };
    const list = this.byDestination.get(destination) ?? [];
    list.push(costs);
    if (list.length > KEPT) list.shift();
    this.byDestination.set(destination, list);
  }

  /** The medians of the last migrations to `destination`, or undefined when there were none. */
  recent(destination: string): RecentCosts | undefined {
    const list = this.byDestination.get(destination);
    if (!list || list.length === 0) return undefined;
    const median = (values: number[]): number => {
      const sorted = [...values].sort((a, b) => a - b);
      const middle = sorted.length >> 1;
      return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
    };
    const roundOne = list.flatMap((costs) => (costs.roundOneBytesPerSec !== undefined ? [costs.roundOneBytesPerSec] : []));
    return {
      migrations: list.length,
      startupMs: median(list.map((costs) => costs.startupMs)),
      pausedOverheadMs: median(list.map((costs) => costs.pausedOverheadMs)),
      tailMs: median(list.map((costs) => costs.tailMs)),
      ...(roundOne.length > 0 ? { roundOneBytesPerSec: median(roundOne) } : {}),
    };
  }
}

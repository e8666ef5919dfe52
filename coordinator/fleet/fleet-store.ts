/**
 * What fleet operations need from the cluster store and from the forecast, as narrow interfaces: drain and balance
 * run with the file store or etcd alike, and without a forecast where none can be made.
 */
import type { MigrationOptions, VmInfo } from '../../shared/protocol.js';

export interface HostFlagsRecord {
  maintenance?: { since: string; by?: string } | undefined;
  degraded?: { reason: string; since: string } | undefined;
}

export interface MoveRecord {
  vm: string;
  from: string;
  to: string;
  /** ISO time the move committed. */
  at: string;
  by: string;
}

export interface FleetStore {
  setHostFlags(host: string, flags: HostFlagsRecord): Promise<void>;
  /** One operation per VM across coordinators; throws naming the holder. */
  lockVm(vm: string, operation: string): Promise<{ release(): Promise<void> }>;
  recordMove(move: MoveRecord): Promise<void>;
  /** Moves at or after now - `sinceMs`. */
  recentMoves(sinceMs: number): Promise<MoveRecord[]>;
  /** Resolves once `id` leads `election`; at most one leader at a time. */
  campaign(election: string, id: string, options?: { signal?: AbortSignal }): Promise<{ readonly lost: Promise<void>; resign(): Promise<void> }>;
}

export interface ForecastSummary {
  totalTimeMs: number;
  downtimeMs: number;
  converges: boolean;
}

/** The forecast of moving `vm` from host `from` to host `to` with these options. */
export type Forecaster = (vm: VmInfo, from: string, to: string, options: MigrationOptions) => Promise<ForecastSummary>;

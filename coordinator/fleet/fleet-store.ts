/**
 * What fleet operations need from the cluster store and from the forecast, as narrow interfaces: drain and balance
 * run with the file store or etcd alike, and without a forecast where none can be made.
 */
import type { MigrationOptions, VmInfo } from '../../shared/protocol.js';
import type { Forecast } from '../forecast.js';
import type { ClusterStore } from '../store/store.js';

/** What drain and balance use of the cluster store: host flags, VM holds, move records, the balancer's election. */
export type FleetStore = Pick<ClusterStore, 'setHostFlags' | 'lockVm' | 'recordMove' | 'recentMoves' | 'campaign'>;

/** What drain and balance read of a forecast. */
export type ForecastSummary = Pick<Forecast, 'totalTimeMs' | 'downtimeMs' | 'converges'>;

/** The forecast of moving `vm` from host `from` to host `to` with these options. */
export type Forecaster = (vm: VmInfo, from: string, to: string, options: MigrationOptions) => Promise<ForecastSummary>;

/**
 * What the page can do, each the way the command line does it and through the same code: migrate (the forecast
 * first, as `ferry migrate` makes one, then the migration once the person confirms it), cancel, pause and resume,
 * drain and undrain, balance (the plan first, as `ferry balance`, then `--apply`). Every body is checked against a
 * schema before it is used. Long operations run on after the request is answered; their progress reaches the pages
 * through the agents' events, and their outcome as a notice (relay.ts).
 */
import { z } from 'zod';
import { DEFAULT_MAX_DOWNTIME_MS, STOP_RULES } from '../../shared/constants.js';
import { ErrorCode, FerryError, toFerryError } from '../../shared/errors.js';
import { hostNameSchema, vmNameSchema } from '../../shared/protocol.js';
import { findHost, type Cluster } from '../cluster.js';
import { actor, appliedLine, drainEventLine, formatDrainReport, formatPlan as formatBalance } from '../commands/fleet.js';
import { withHost } from '../connect.js';
import { balanceOnce, checkBalanceOptions } from '../fleet/balance.js';
import { drainHost, undrainHost } from '../fleet/drain.js';
import { MIGRATE_LINK_BYTES, MIGRATE_LINK_TIMEOUT_MS, forecastMigration, forecaster } from '../forecast.js';
import { locateVm } from '../inventory.js';
import { migrateLive } from '../migrate.js';
import { migrationOptions } from '../migrate-options.js';
import { formatPlan } from '../plan-output.js';
import { formatReport } from '../report.js';
import type { ClusterStore } from '../store/store.js';
import type { Relay } from './relay.js';

const durationText = z.string().max(32).regex(/^\d+(\.\d+)?(ms|s|m)$/, 'a duration such as 300ms or 2s');
/** As `--max-bandwidth`: parseRate says what it takes. */
const rateText = z.string().max(32);

export const actionSchemas = {
  forecast: z.object({ vm: vmNameSchema, to: hostNameSchema, maxDowntime: durationText.optional(), maxBandwidth: rateText.optional() }).strict(),
  migrate: z.object({ vm: vmNameSchema, to: hostNameSchema, maxDowntime: durationText.optional(), maxBandwidth: rateText.optional() }).strict(),
  cancel: z.object({ vm: vmNameSchema }).strict(),
  pause: z.object({ vm: vmNameSchema }).strict(),
  resume: z.object({ vm: vmNameSchema }).strict(),
  drain: z.object({ host: hostNameSchema }).strict(),
  undrain: z.object({ host: hostNameSchema }).strict(),
  balance: z.object({ apply: z.boolean() }).strict(),
} as const;

export type ActionName = keyof typeof actionSchemas;

const liveOptions = (maxDowntime: string | undefined, maxBandwidth?: string) => migrationOptions({
  maxDowntime: maxDowntime ?? `${DEFAULT_MAX_DOWNTIME_MS}ms`, maxBandwidth, maxRounds: String(STOP_RULES.maxRounds), verify: 'pages',
});

export class Actions {
  private readonly cluster: Cluster;
  private readonly relay: Relay;
  private readonly store: ClusterStore | undefined;
  /** Operations still running after their request was answered: awaited when the server closes. */
  private readonly running = new Set<Promise<void>>();
  private readonly stopped = new AbortController();

  constructor(cluster: Cluster, relay: Relay, store?: ClusterStore) {
    this.cluster = cluster;
    this.relay = relay;
    this.store = store;
  }

  /** Runs action `name` with `body` (unchecked, from the network): its answer for the page. */
  async run(name: string, body: unknown): Promise<unknown> {
    if (!Object.hasOwn(actionSchemas, name)) throw new FerryError(ErrorCode.BAD_INPUT, `no action ${name}`, `one of ${Object.keys(actionSchemas).join(', ')}`);
    const action = name as ActionName;
    const parsed = actionSchemas[action].safeParse(body);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new FerryError(ErrorCode.BAD_INPUT, `invalid ${action}: ${issue?.path.join('.') ?? ''} ${issue?.message ?? ''}`.trim(), 'check the values you gave');
    }
    const input = parsed.data as Record<string, unknown>;
    switch (action) {
      case 'forecast': {
        const { vm, to, maxDowntime, maxBandwidth } = actionSchemas.forecast.parse(input);
        const plan = await forecastMigration(this.cluster, { vm, to, options: liveOptions(maxDowntime, maxBandwidth), linkBytes: MIGRATE_LINK_BYTES, statsWaitMs: 0, linkTimeoutMs: MIGRATE_LINK_TIMEOUT_MS });
        return { plan, text: formatPlan(plan) };
      }
      case 'migrate': {
        const { vm, to, maxDowntime, maxBandwidth } = actionSchemas.migrate.parse(input);
        const options = liveOptions(maxDowntime, maxBandwidth);
        findHost(this.cluster, to);
        this.background(`migration of ${vm} to ${to}`, async () => {
          const report = await migrateLive(this.cluster, { vm, to, options }, { signal: this.stopped.signal, ...(this.store ? { store: this.store } : {}) });
          this.relay.publish({ kind: 'notice', level: report.outcome === 'committed' ? 'info' : 'error', text: formatReport(report), detail: { vm, report } });
        });
        return { started: true };
      }
      case 'cancel': {
        const { vm } = actionSchemas.cancel.parse(input);
        const { host } = await locateVm(this.cluster, vm);
        return withHost(host, (client) => client.request('migrate.cancel', { name: vm, reason: 'cancelled' }));
      }
      case 'pause':
      case 'resume': {
        const { vm } = actionSchemas.pause.parse(input);
        const { host } = await locateVm(this.cluster, vm);
        return withHost(host, (client) => client.request(action === 'pause' ? 'vm.pause' : 'vm.resume', { name: vm }));
      }
      case 'drain': {
        const { host } = actionSchemas.drain.parse(input);
        findHost(this.cluster, host);
        this.background(`drain of ${host}`, async () => {
          const report = await drainHost(this.cluster, host, {
            parallel: 2, stopped: 'cold', attempts: 3, deadlineMs: 5 * 60_000, migration: liveOptions(undefined), by: actor(),
          }, {
            store: this.store, forecast: forecaster(this.cluster), signal: this.stopped.signal,
            onEvent: (event) => this.relay.publish({ kind: 'notice', level: 'info', text: drainEventLine(event) }),
          });
          this.relay.publish({ kind: 'notice', level: report.failed.length === 0 ? 'info' : 'error', text: formatDrainReport(report) });
        });
        return { started: true };
      }
      case 'undrain': {
        const { host } = actionSchemas.undrain.parse(input);
        return undrainHost(this.cluster, host, { store: this.store });
      }
      case 'balance': {
        const { apply } = actionSchemas.balance.parse(input);
        const options = checkBalanceOptions({ metric: 'both', threshold: 0.1, maxMoves: 10, cooldownMs: 10 * 60_000, migration: liveOptions(undefined) });
        const hooks = {
          store: this.store, forecast: forecaster(this.cluster), by: actor(),
          onEvent: (event: { kind: 'applying' | 'applied' } & Record<string, unknown>) => {
            if (event.kind === 'applied') this.relay.publish({ kind: 'notice', level: 'info', text: appliedLine(event.applied as Parameters<typeof appliedLine>[0]) });
          },
        };
        if (!apply) {
          const plan = await balanceOnce(this.cluster, options, false, hooks);
          return { plan, text: formatBalance(plan, false) };
        }
        this.background('balance', async () => {
          const result = await balanceOnce(this.cluster, options, true, hooks);
          this.relay.publish({ kind: 'notice', level: result.applied.every((move) => move.outcome === 'committed') ? 'info' : 'error', text: formatBalance(result, true) });
        });
        return { started: true };
      }
      default: {
        const unknown: never = action;
        throw new FerryError(ErrorCode.BAD_INPUT, `no action ${String(unknown)}`, 'reload the page');
      }
    }
  }

  /** Runs `operation` after the request is answered; its failure is told to the pages, never dropped. */
  private background(what: string, operation: () => Promise<void>): void {
    const done = operation().catch((error: unknown) => {
      const failure = toFerryError(error);
      this.relay.publish({ kind: 'notice', level: 'error', text: `${what} failed: ${failure.message}${failure.hint ? ` (${failure.hint})` : ''}` });
    }).finally(() => this.running.delete(done));
    this.running.add(done);
  }

  /** Cancels what still runs (a migration not committed rolls back) and waits for it. */
  async close(): Promise<void> {
    this.stopped.abort(new FerryError(ErrorCode.CANCELLED, 'ferry ui stopped', 'the VM runs on its source as before'));
    await Promise.allSettled([...this.running]);
  }
}

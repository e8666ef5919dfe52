/**
 * What runs where, asked of every agent in the cluster at once.
 */
import { ErrorCode, FerryError, toFerryError } from '../shared/errors.js';
import type { HostInfo, VmSummary } from '../shared/protocol.js';
import type { Cluster, HostEntry } from './cluster.js';
import { connectAgent, withHost, type Connector } from './connect.js';

export interface HostSurvey {
  host: HostEntry;
  info?: HostInfo;
  error?: FerryError;
}

export async function surveyHosts(cluster: Cluster, connect: Connector = connectAgent): Promise<HostSurvey[]> {
  return Promise.all(
    cluster.hosts.map(async (host): Promise<HostSurvey> => {
      try {
        return { host, info: await withHost(host, async (_client, info) => info, connect) };
      } catch (error) {
        return { host, error: toFerryError(error) };
      }
    }),
  );
}

export function allVms(surveys: HostSurvey[]): VmSummary[] {
  return surveys.flatMap((survey) => survey.info?.vms ?? []);
}

/**
 * The host that holds VM `name`. A VM mid-migration shows on both hosts (leaving one, arriving on the other);
 * the host where it is not arriving is the one that holds it; between two such, the higher ownership epoch.
 */
export async function locateVm(cluster: Cluster, name: string, connect: Connector = connectAgent): Promise<{ host: HostEntry; vm: VmSummary }> {
  if (cluster.hosts.length === 0) {
    throw new FerryError(ErrorCode.HOST_NOT_FOUND, 'the cluster file has no hosts', 'add one with `ferry hosts add host-a ws://127.0.0.1:7001`');
  }
  const surveys = await surveyHosts(cluster, connect);
  const found = surveys.flatMap((survey) =>
    (survey.info?.vms ?? []).filter((vm) => vm.name === name).map((vm) => ({ host: survey.host, vm })),
  );
  // The newest copy that is not still arriving: after a migration in doubt, the higher epoch is the VM.
  const holder = [...found].sort((a, b) => Number(a.vm.state === 'migrating-in') - Number(b.vm.state === 'migrating-in') || b.vm.epoch - a.vm.epoch)[0];
  if (holder) return holder;
  const down = surveys.filter((survey) => survey.error).map((survey) => survey.host.name);
  throw new FerryError(
    ErrorCode.VM_NOT_FOUND,
    `no VM named ${name} on any host${down.length > 0 ? ` that answered (${down.join(', ')} did not)` : ''}`,
    'run `ferry vm list` to see every VM',
  );
}

/**
 * The cluster file: which hosts the coordinator knows, by name and URL. It holds nothing the agents do not also
 * hold: what runs where is always asked of the agents themselves.
 *
 * Found at `--cluster PATH`, else `$FERRY_CLUSTER`, else `./ferry.cluster.json`.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { ErrorCode, FerryError } from '../shared/errors.js';
import { hostNameSchema } from '../shared/protocol.js';


const agentUrlSchema = z.string().regex(/^wss?:\/\/[^\s]+$/, 'a host URL looks like ws://127.0.0.1:7001');

const hostEntrySchema = z.object({
  name: hostNameSchema,
  /** Where the coordinator reaches the agent. */
  url: agentUrlSchema,
  /**
   * Where other agents send it page streams, when that is another network than the coordinator's (a migration
   * network, as vMotion has). Defaults to `url`.
   */
  migrationUrl: agentUrlSchema.optional(),
});
export type HostEntry = z.infer<typeof hostEntrySchema>;

const clusterSchema = z.object({ hosts: z.array(hostEntrySchema) });
export type Cluster = z.infer<typeof clusterSchema>;

export function clusterPath(explicit: string | undefined): string {
  return path.resolve(explicit ?? process.env.FERRY_CLUSTER ?? 'ferry.cluster.json');
}

/** Reads the cluster file; a missing file is an empty cluster. */
export async function loadCluster(file: string): Promise<Cluster> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { hosts: [] };
    throw new FerryError(ErrorCode.IO, `cannot read the cluster file ${file}: ${(error as Error).message}`, 'check its permissions');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new FerryError(ErrorCode.BAD_INPUT, `the cluster file ${file} is not valid JSON`, 'fix it by hand, or remove it and add the hosts again with `ferry hosts add`');
  }
  const parsed = clusterSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new FerryError(ErrorCode.BAD_INPUT, `the cluster file ${file} is malformed at ${issue?.path.join('.') ?? '?'}: ${issue?.message}`, 'it should look like {"hosts":[{"name":"host-a","url":"ws://127.0.0.1:7001"}]}');
  }
  return parsed.data;
}

/** Writes the cluster file whole (write a temporary file, then rename), so a crash never leaves half a file. */
export async function saveCluster(file: string, cluster: Cluster): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const temporary = `${file}.${process.pid}.tmp`;
  await writeFile(temporary, `${JSON.stringify(cluster, null, 2)}\n`);
  await rename(temporary, file);
}

export function findHost(cluster: Cluster, name: string): HostEntry {
  const host = cluster.hosts.find((entry) => entry.name === name);
  if (!host) {
    const known = cluster.hosts.map((entry) => entry.name).join(', ') || 'none yet';
    throw new FerryError(ErrorCode.HOST_NOT_FOUND, `no host named ${name} in the cluster file (known: ${known})`, `add it with \`ferry hosts add ${name} ws://ADDRESS:PORT\``);
  }
  return host;
}

export function addHost(cluster: Cluster, entry: HostEntry): Cluster {
  const parsed = hostEntrySchema.safeParse(entry);
  if (!parsed.success) {
    throw new FerryError(ErrorCode.BAD_INPUT, parsed.error.issues[0]?.message ?? 'bad host', 'for example: ferry hosts add host-a ws://127.0.0.1:7001');
  }
  if (cluster.hosts.some((host) => host.name === entry.name)) {
    throw new FerryError(ErrorCode.HOST_EXISTS, `the cluster already has a host named ${entry.name}`, `remove it first with \`ferry hosts rm ${entry.name}\``);
  }
  return { hosts: [...cluster.hosts, parsed.data] };
}

export function removeHost(cluster: Cluster, name: string): Cluster {
  findHost(cluster, name);
  return { hosts: cluster.hosts.filter((host) => host.name !== name) };
}

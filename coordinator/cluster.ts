/**
 * The cluster file: which hosts the coordinator knows, by name and URL. It holds nothing the agents do not also
 * hold: what runs where is always asked of the agents themselves.
 *
 * Found at `--cluster PATH`, else `$FERRY_CLUSTER`, else `./ferry.cluster.json`. The cluster file is the file kind of
 * cluster store (coordinator/store/): the store also keeps host flags and recent moves in it.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { ErrorCode, FerryError } from '../shared/errors.js';
import { hostNameSchema } from '../shared/protocol.js';
import { checkToken, readTokenFile } from '../shared/token.js';


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
/** A host as the coordinator uses it: its entry, and the token to present to it (never written to the file). */
export type HostEntry = z.infer<typeof hostEntrySchema> & { token?: string };

/** Flags on a host, shared by every coordinator (coordinator/store/store.ts, HostFlags). */
export const hostFlagsSchema = z.object({
  maintenance: z.object({ since: z.string(), by: z.string().optional() }).optional(),
  degraded: z.object({ reason: z.string(), since: z.string() }).optional(),
});

/** A move a coordinator made (coordinator/store/store.ts, MoveRecord). */
export const moveRecordSchema = z.object({ vm: z.string(), from: z.string(), to: z.string(), at: z.string(), by: z.string() });

const clusterSchema = z.object({
  /** The cluster's shared secret, in a file of its own (relative to the cluster file). */
  tokenFile: z.string().optional(),
  /** The address pool that `ferry provision --ip auto` hands out from, e.g. {"pool":"10.0.0.10-10.0.0.250","prefix":24,"gateway":"10.0.0.1"}. */
  network: z.object({
    pool: z.string().regex(/^\d{1,3}(\.\d{1,3}){3}-\d{1,3}(\.\d{1,3}){3}$/, 'a pool looks like 10.0.0.10-10.0.0.250'),
    prefix: z.number().int().min(0).max(32),
    gateway: z.string(),
  }).optional(),
  hosts: z.array(hostEntrySchema),
  /** The file store's host flags, by host name (older files have none). */
  hostFlags: z.record(z.string(), hostFlagsSchema).optional(),
  /** The file store's record of recent moves, oldest first (older files have none). */
  moves: z.array(moveRecordSchema).optional(),
});
export type Cluster = Omit<z.infer<typeof clusterSchema>, 'hosts'> & { hosts: HostEntry[] };

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
  const stored = { ...cluster, hosts: cluster.hosts.map(({ token: _token, ...entry }) => entry) };
  await writeFile(temporary, `${JSON.stringify(stored, null, 2)}\n`);
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

/**
 * Gives every host the token to present: `--token-file`, else $FERRY_TOKEN, else the cluster file's `tokenFile`.
 * None at all is allowed here; the agent then refuses with FERRY_ERR_UNAUTHORIZED and a hint.
 */
export async function withCredentials(cluster: Cluster, clusterFile: string, tokenFileOption: string | undefined): Promise<Cluster> {
  let token: string | undefined;
  if (tokenFileOption) token = await readTokenFile(tokenFileOption);
  else if (process.env.FERRY_TOKEN) token = checkToken(process.env.FERRY_TOKEN, 'FERRY_TOKEN');
  else if (cluster.tokenFile) token = await readTokenFile(path.resolve(path.dirname(clusterFile), cluster.tokenFile));
  return token === undefined ? cluster : { ...cluster, hosts: cluster.hosts.map((host) => ({ ...host, token })) };
}

export function addHost(cluster: Cluster, entry: HostEntry): Cluster {
  const parsed = hostEntrySchema.safeParse(entry);
  if (!parsed.success) {
    throw new FerryError(ErrorCode.BAD_INPUT, parsed.error.issues[0]?.message ?? 'bad host', 'for example: ferry hosts add host-a ws://127.0.0.1:7001');
  }
  if (cluster.hosts.some((host) => host.name === entry.name)) {
    throw new FerryError(ErrorCode.HOST_EXISTS, `the cluster already has a host named ${entry.name}`, `remove it first with \`ferry hosts rm ${entry.name}\``);
  }
  // Spread the cluster so that the fields this edit does not concern (the pool, the token file) survive it.
  return { ...cluster, hosts: [...cluster.hosts, parsed.data] };
}

export function removeHost(cluster: Cluster, name: string): Cluster {
  findHost(cluster, name);
  return { ...cluster, hosts: cluster.hosts.filter((host) => host.name !== name) };
}

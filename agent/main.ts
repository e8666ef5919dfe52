#!/usr/bin/env -S node --single-threaded --no-lazy
/**
 * ferry-agent: the host agent. Prints exactly one JSON line on stdout when it is ready, logs to stderr.
 */
import { mkdir, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { z } from 'zod';
import { initChecksums } from '../shared/checksum.js';
import { watchGarbageCollection } from './gc-log.js';
import { AGENT_NODE_FLAGS, MAX_MEMORY_BYTES } from '../shared/constants.js';
import { ErrorCode, FerryError, toFerryError } from '../shared/errors.js';
import { cpuFlagSchema, cpuFlagsSchema, sortedFlags } from '../shared/cpu.js';
import { hostNameSchema } from '../shared/protocol.js';
import { checkToken, ensureTokenFile, readTokenFile } from '../shared/token.js';
import { createLogger, type Logger, type LogLevel } from '../shared/log.js';
import { parseCount, parseDuration, parseSize } from '../shared/units.js';
import { Agent, DEFAULT_DISK_RESERVE_BYTES, DEFAULT_LAG_THRESHOLD_MS } from './agent.js';
import { Datastore } from './datastore/datastore.js';
import { readHostCpu } from './host-cpu.js';
import { parseFaults } from './faults.js';
import { startServer } from './server.js';
import { loopbackMode } from './vm/net/address.js';
import { warmSwitchover } from './migration/warm.js';
import { namespaceMode } from './vm/net/namespace.js';

export interface AgentOptions {
  name: string;
  host: string;
  port: number;
  datastore: string;
  capacityBytes: number;
  logLevel: LogLevel;
  tokenFile: string | undefined;
  tlsCert: string | undefined;
  tlsKey: string | undefined;
  sharedStorage: string | undefined;
  /** CPU flags to hide from guests (--cpu-mask), as /proc/cpuinfo names them. */
  cpuMask: string[];
  /** How VMs' addresses are served (--net-mode), and on which interface in namespaces mode (--net-device). */
  net: { mode: 'loopback' } | { mode: 'namespaces'; device: string };
  /** Free datastore space under which this host calls itself degraded (--disk-reserve). */
  diskReserveBytes: number;
  /** Mean event-loop lag over which this host calls itself degraded (--lag-threshold). */
  lagThresholdMs: number;
}

/** Every option's default, once: `--help` shows these, and `resolveAgentOptions` applies them. */
const DEFAULTS = { host: '127.0.0.1', port: '7001', logLevel: 'info', netMode: 'loopback' } as const;
const logLevelSchema = z.enum(['debug', 'info', 'warn', 'error']);
const netModeSchema = z.enum(['loopback', 'namespaces']);
const portSchema = z.number().int().max(65535, 'a port is at most 65535 (0 lets the OS pick a free one)');

/** Checks one option with its schema; a refusal names the option and the fix. */
function check<T>(schema: z.ZodType<T>, value: unknown, option: string, hint: string): T {
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  throw new FerryError(ErrorCode.BAD_INPUT, `${option} ${String(value)}: ${parsed.error.issues[0]?.message ?? 'not allowed'}`, hint);
}

/** Every option resolved once, checked with the schemas that also check what travels between hosts. */
export function resolveAgentOptions(raw: Record<string, string | undefined>): AgentOptions {
  const name = check(hostNameSchema, raw.name ?? os.hostname(), '--name', 'for example: --name host-a');
  const port = check(portSchema, parseCount(raw.port ?? DEFAULTS.port, '--port'), '--port', 'use 0 to let the OS pick a free port');
  if ((raw.tlsCert === undefined) !== (raw.tlsKey === undefined)) {
    throw new FerryError(ErrorCode.BAD_INPUT, '--tls-cert and --tls-key go together', 'give both, or neither for plain ws://');
  }
  return {
    name,
    host: raw.host ?? DEFAULTS.host,
    port,
    datastore: path.resolve(raw.datastore ?? path.join(os.homedir(), '.ferry', name)),
    // Half the machine's memory by default: room for guests and for the host itself.
    capacityBytes: raw.capacity ? parseSize(raw.capacity) : Math.floor(os.totalmem() / 2),
    logLevel: check(logLevelSchema, raw.logLevel ?? DEFAULTS.logLevel, '--log-level', `one of ${logLevelSchema.options.join(', ')}; the default is ${DEFAULTS.logLevel}`),
    tokenFile: raw.tokenFile,
    tlsCert: raw.tlsCert,
    tlsKey: raw.tlsKey,
    sharedStorage: raw.sharedStorage,
    cpuMask: raw.cpuMask === undefined ? [] : parseCpuMask(raw.cpuMask),
    net: resolveNet(raw.netMode, raw.netDevice),
    diskReserveBytes: raw.diskReserve === undefined ? DEFAULT_DISK_RESERVE_BYTES : parseSize(raw.diskReserve),
    lagThresholdMs: raw.lagThreshold === undefined ? DEFAULT_LAG_THRESHOLD_MS : parseDuration(raw.lagThreshold),
  };
}

function resolveNet(modeText: string | undefined, device: string | undefined): AgentOptions['net'] {
  const mode = check(netModeSchema, modeText ?? DEFAULTS.netMode, '--net-mode', `one of ${netModeSchema.options.join(', ')}; the default is ${DEFAULTS.netMode}`);
  if (mode === 'loopback') {
    if (device !== undefined) throw new FerryError(ErrorCode.BAD_INPUT, '--net-device goes with --net-mode namespaces', 'loopback mode serves 127.0.0.0/8 on lo: leave --net-device out, or add --net-mode namespaces');
    return { mode };
  }
  if (device === undefined) throw new FerryError(ErrorCode.BAD_INPUT, '--net-mode namespaces needs --net-device', 'name the interface attached to the bridge the clients reach, e.g. --net-device eth0');
  return { mode, device };
}

/** `--cpu-mask avx512f,avx2`: flag names as /proc/cpuinfo writes them, comma-separated. */
function parseCpuMask(text: string): string[] {
  const flags = text.split(',').map((flag) => flag.trim());
  const hint = 'name flags as /proc/cpuinfo writes them, comma-separated, e.g. --cpu-mask avx512f,avx512bw';
  if (flags.some((flag) => flag === '')) throw new FerryError(ErrorCode.BAD_INPUT, `--cpu-mask ${JSON.stringify(text)} has an empty flag name`, hint);
  for (const flag of flags) check(cpuFlagSchema, flag, '--cpu-mask', hint);
  check(cpuFlagsSchema, flags, '--cpu-mask', hint);
  return sortedFlags(flags);
}

/** The token: --token-file, else FERRY_TOKEN, else one made (once) in the datastore. Never none. */
async function resolveToken(options: AgentOptions, log: Logger): Promise<{ token: string; tokenFile?: string }> {
  if (options.tokenFile) return { token: await readTokenFile(options.tokenFile), tokenFile: path.resolve(options.tokenFile) };
  if (process.env.FERRY_TOKEN) return { token: checkToken(process.env.FERRY_TOKEN, 'FERRY_TOKEN') };
  const file = path.join(options.datastore, 'token');
  const { token, created } = await ensureTokenFile(file);
  // A token made here must reach the other hosts by hand: said at warn level, so that any --log-level shows it.
  const say = created ? log.warn : log.info;
  say(`${created ? 'made a new token' : 'using the token'} in ${file}: give it to \`ferry\` (FERRY_TOKEN or --token-file) and to the other agents`, { tokenFile: file });
  return { token, tokenFile: file };
}

async function main(): Promise<void> {
  const program = new Command('ferry-agent')
    .description('Host agent for ferry: holds VMs (guest memory, vCPU worker) and sends and receives live migrations.')
    .option('--name <name>', 'this host\'s name in the cluster (default: the machine\'s host name)')
    .option('--host <address>', `address to listen on (default: ${DEFAULTS.host})`)
    .option('--port <port>', `port to listen on; 0 picks a free one (default: ${DEFAULTS.port})`)
    .option('--datastore <dir>', 'folder for this host\'s VM files (default ~/.ferry/<name>)')
    .option('--capacity <size>', 'guest memory this host will hold in total, e.g. 4GiB (default: half of RAM)')
    .option('--token-file <file>', 'the cluster\'s shared secret (default: $FERRY_TOKEN, else one made in <datastore>/token)')
    .option('--shared-storage <dir>', 'storage every agent of the cluster mounts at this path: disks made here stay put when their VM migrates live')
    .option('--tls-cert <file>', 'serve wss:// with this certificate (PEM); clients trust it via their CAs or NODE_EXTRA_CA_CERTS')
    .option('--tls-key <file>', 'the certificate\'s private key (PEM)')
    .option('--cpu-mask <flags>', 'CPU flags to hide from guests, comma-separated as /proc/cpuinfo names them (pins this host to an older level, e.g. everything above x86-64-v2)')
    .option('--net-mode <mode>', `how VMs' addresses are served: loopback (127.0.0.0/8, anywhere) or namespaces (real layer 2: each VM's IP is added to --net-device and announced with gratuitous ARP; needs root and arping) (default: ${DEFAULTS.netMode})`)
    .option('--net-device <interface>', 'namespaces mode: the interface attached to the bridge that clients reach')
    .option('--disk-reserve <size>', `free datastore space under which this host reports itself degraded: the coordinator places nothing here and \`balance --watch\` empties it (default: ${DEFAULT_DISK_RESERVE_BYTES / 1024 ** 3}GiB)`)
    .option('--lag-threshold <duration>', `mean event-loop lag over 5 s above which this host reports itself degraded (default: ${DEFAULT_LAG_THRESHOLD_MS}ms)`)
    .option('--log-level <level>', `${logLevelSchema.options.join(', ')} (default: ${DEFAULTS.logLevel})`)
    .addHelpText('after', `
Prints one line on stdout when ready:
  {"event":"ready","name":"host-a","url":"ws://127.0.0.1:7001",...}
Every connection, from the coordinator or another agent, must carry the token (Authorization: Bearer).
Without --token-file or FERRY_TOKEN the agent makes one, writes it to <datastore>/token and says so.
Logs go to stderr, one JSON object per line. SIGINT or SIGTERM stops the agent and its VMs.

Example:
  ferry-agent --name host-a --port 7001 --capacity 4GiB
  ferry-agent --name host-b --port 7002 --cpu-mask avx,avx2,fma    # hide flags: an older host for a mixed cluster
  ip netns exec ns-a ferry-agent --name host-a --host 0.0.0.0 --net-mode namespaces --net-device veth-a`)
    .parse();

  const options = resolveAgentOptions(program.opts());
  const log = createLogger(options.name, options.logLevel);
  // Started as `node dist/agent/main.js` rather than through its #! line: it runs, with longer pauses (constants.ts).
  const missingFlags = AGENT_NODE_FLAGS.filter((flag) => !process.execArgv.includes(flag));
  if (missingFlags.length > 0) {
    log.warn('started without the Node.js options ferry-agent runs with: its migrations will pause the guest longer', {
      missing: missingFlags, hint: `start it as ferry-agent, or as node ${AGENT_NODE_FLAGS.join(' ')} ${process.argv[1] ?? 'dist/agent/main.js'}`,
    });
  }
  if (options.capacityBytes > os.totalmem()) {
    log.warn('--capacity is more than this machine\'s memory', { capacityBytes: options.capacityBytes, totalBytes: os.totalmem() });
  }
  const faults = parseFaults(process.env.FERRY_FAULTS);
  await initChecksums();
  // Which collections fall inside a migration's switchover: its timeline reports them.
  watchGarbageCollection();
  await mkdir(options.datastore, { recursive: true });

  const { token, tokenFile } = await resolveToken(options, log);
  const hostCpu = await readHostCpu(options.cpuMask, log);
  log.info('host cpu', { vendor: hostCpu.vendor, model: hostCpu.model, level: hostCpu.level, flagCount: hostCpu.flags.length, masked: hostCpu.masked });
  const addressMode = options.net.mode === 'namespaces' ? await namespaceMode(options.net.device, log) : loopbackMode;
  const agent = new Agent({
    name: options.name, capacityBytes: options.capacityBytes, faults, log, token, hostCpu, addressMode,
    activationFolder: path.join(options.datastore, 'migrations'),
    datastore: new Datastore(options.datastore, options.sharedStorage ? path.resolve(options.sharedStorage) : undefined, hostCpu.flags),
    diskReserveBytes: options.diskReserveBytes, lagThresholdMs: options.lagThresholdMs,
  });
  await agent.state.restore();
  const found = await agent.loadDatastore();
  if (found > 0) log.info('found VMs in the datastore, powered off or suspended', { count: found });
  const readPem = async (file: string, what: string): Promise<Buffer> => readFile(file).catch((error: Error) => {
    throw new FerryError(ErrorCode.IO, `cannot read the TLS ${what} ${file}: ${error.message}`, 'give PEM files that this user can read');
  });
  const tls = options.tlsCert && options.tlsKey
    ? { cert: await readPem(options.tlsCert, 'certificate'), key: await readPem(options.tlsKey, 'key') }
    : undefined;
  const server = await startServer(agent, options.host, options.port, token, tls);
  agent.pageStreams.listening = true;
  // Before the agent says it is ready: a fresh agent's first switchover then builds no parser in its pause.
  warmSwitchover();
  let stopping = false;
  const stop = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info('stopping', { signal });
    await server.close();
    await agent.shutdown();
    process.exit(0);
  };
  // A promise nobody awaited must not take the host's VMs down with the agent: say so loudly and go on.
  process.on('unhandledRejection', (reason) => log.error('unhandled rejection (a bug in ferry-agent)', { reason: String(reason) }));
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.stdout.write(`${JSON.stringify({
    event: 'ready', name: options.name, url: server.url, pid: process.pid,
    capacityBytes: options.capacityBytes, maxVmBytes: MAX_MEMORY_BYTES, datastore: options.datastore,
    ...(tokenFile ? { tokenFile } : {}),
  })}\n`);
  log.info('ready', { url: server.url, capacity: options.capacityBytes });
}

main().catch((error: unknown) => {
  const failure = toFerryError(error);
  process.stderr.write(`ferry-agent: ${failure.message}${failure.hint ? `\n  hint: ${failure.hint}` : ''}\n  code: ${failure.code}\n`);
  process.exit(failure.code === ErrorCode.BAD_INPUT ? 2 : 1);
});

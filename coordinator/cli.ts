/**
 * The `ferry` command line: every command, its options, defaults and help, in one place.
 */
import path from 'node:path';
import { Command, Option } from 'commander';
import { DEFAULT_MAX_DOWNTIME_MS, DEFAULT_XBZRLE_CACHE_BYTES, MAX_MEMORY_BYTES, MIN_MEMORY_BYTES, STOP_RULES } from '../shared/constants.js';
import { cpuModelNameSchema, highestLevel, type CpuModelName } from '../shared/cpu.js';
import { ErrorCode, FerryError } from '../shared/errors.js';
import { verifyModeSchema, workloadKindSchema, type ConfigDrive, type HostInfo, type VmInfo, type VmSummary } from '../shared/protocol.js';
import { formatBytes, formatDuration, parseCount, parseDuration, parseRate } from '../shared/units.js';
import { runBakeoffCommand, runBench } from './bench/command.js';
import { bakeoffMarkdown } from './bench/bakeoff-output.js';
import { POLICIES, POLICY_NAMES, parsePolicies } from './bench/policies.js';
import { toMarkdown } from './bench/output.js';
import { parsePeerOptions } from './bench/peer.js';
import { defaultScenarioFile, loadScenarios } from './bench/scenarios.js';
import { addHost, findHost, loadCluster, removeHost, withCredentials, type Cluster } from './cluster.js';
import { openStore, type ClusterStore } from './store/store.js';
import { addFleetBenchCommand, addFleetCommands } from './commands/fleet.js';
import { addImageCommands } from './commands/image.js';
import { addUiCommand } from './commands/ui.js';
import { addTraceCommands } from './commands/trace.js';
import { readTraceFile } from './trace/file.js';
import { pagesIn, replayTraceOf, type ReplayTrace } from '../shared/trace.js';
import { withHost } from './connect.js';
import { dumpMemory, fetchDisk, readMemory } from './dump.js';
import { allVms, locateVm, surveyHosts } from './inventory.js';
import { formatColdReport, migrateCold } from './migrate-cold.js';
import { migrateLive, resumeLive } from './migrate.js';
import { migrationOptions } from './migrate-options.js';
import { typedSize } from './option-check.js';
import { ExitCode, exitCodeFor, formatTable, printJson } from './output.js';
import { DiskPatternChecker, checkPattern } from './pattern-check.js';
import { writesDisk } from '../shared/workloads.js';
import { coldProgress, imageProgress, migrationProgress, storageProgress } from './progress.js';
import { formatStorageReport, moveStorage } from './storage-move.js';
import { provision } from './provision.js';
import { loadTemplates } from './templates.js';
import { formatReport } from './report.js';
import { MIGRATE_LINK_BYTES, MIGRATE_LINK_TIMEOUT_MS, forecastMigration, forecaster, withForecastVerdict, type PlannedMigration } from './forecast.js';
import { formatPlan } from './plan-output.js';
import { checkVmName, toVmRequest } from './vm-spec.js';
import type { ProbeResult } from './probe.js';
import { DEFAULT_CPU_MODEL, clusterBaseline, cpuModelRequest, formatBaseline, levelText } from './cpu-models.js';

interface Global {
  cluster?: string;
  tokenFile?: string;
}

/**
 * The cluster store (`--cluster`: a file, or etcd://HOST:PORT), and the cluster as stored (for editing it). `file` is
 * the store's location, for messages. main.ts closes the store as the command ends.
 */
async function clusterFile(command: Command): Promise<{ file: string; cluster: Cluster; store: ClusterStore }> {
  const store = await openStore((command.optsWithGlobals() as Global).cluster);
  return { file: store.location, cluster: await store.load(), store };
}

/** The cluster with the token each host expects (for talking to the hosts). */
async function cluster(command: Command): Promise<{ file: string; cluster: Cluster; store: ClusterStore }> {
  const { file, cluster: stored, store } = await clusterFile(command);
  return { file, cluster: await withCredentials(stored, store.localFile, (command.optsWithGlobals() as Global).tokenFile), store };
}

const int = (value: number): string => value.toLocaleString('en-US');


function describeVm(info: VmInfo): string {
  const w = info.workload;
  const workload = w.kind === 'idle'
    ? 'idle'
    : w.kind === 'kv' ? `kv: a key-value table over ${formatBytes(w.wssPages * 4096)} (${int(w.wssPages)} pages), served on the network`
    : w.kind === 'replay' && w.trace ? describeReplay(w.trace)
    : `${w.kind}, ${int(w.rate)} page writes/s over ${formatBytes(w.wssPages * 4096)} (${int(w.wssPages)} pages), seed ${w.seed}${w.hotPages ? `, hot ${formatBytes(w.hotPages * 4096)}` : ''}`;
  return formatTable([
    [`${info.name}`, `on ${info.host}, ${info.state}`],
    ['  memory', formatBytes(info.memoryBytes)],
    ['  workload', workload],
    ['  registers', `x=${info.cpu.x} n=${int(info.cpu.n)}${info.cpu.y !== undefined ? ` y=${info.cpu.y} m=${int(info.cpu.m ?? 0)}` : ''}`],
    ['  cpu model', `${info.cpuModel.model}: ${info.cpuModel.flags.length} flags${highestLevel(info.cpuModel.flags) ? `, ${highestLevel(info.cpuModel.flags)}` : ''}`],
    ['  last blackout', info.lastBlackoutMs > 0 ? formatDuration(info.lastBlackoutMs) : '-'],
    ...(info.stats ? [['  measured', `vCPU ${info.stats.cpuPercent.toFixed(0)} % busy; ${int(Math.round(info.stats.dirtyPagesPerSec))} page writes/s over a working set of ${formatBytes(info.stats.wssPages * 4096)} (${info.stats.model}, from the dirty log at ${info.stats.sampledAt})`]] : []),
    ['  created', info.createdAt],
    ...(info.disks && info.disks.length > 0 ? [['  disks', info.disks.map((disk) => `${disk.file} (${formatBytes(disk.sizeBytes)})`).join(', ')]] : []),
    ...(info.network ? [['  network', `${info.network.ip}/${info.network.prefix} via ${info.network.gateway}, MAC ${info.network.mac}`]] : []),
    ...(info.address ? [['  address', `${info.address} (UDP)`]] : []),
    ...(info.leaseUntil ? [['  lease', `until ${info.leaseUntil}`]] : []),
    ...(info.image ? [['  image', `disk0.img cloned from ${info.image.name} (xxh64 ${info.image.xxh64}) by ${describeClone(info.image.cloneMethod)} in ${formatDuration(info.image.cloneMs)}`]] : []),
    ...(info.configDrive ? [['  config drive', describeConfigDrive(info.configDrive)]] : []),
    ...(info.guest ? [['  guest', `hostname ${info.guest.hostname} (read from its config drive at boot)`]] : []),
  ]) + (info.log && info.log.length > 0 ? `\n  log (latest last):\n${info.log.map((line) => `    ${line}`).join('\n')}` : '');
}

function describeReplay(trace: ReplayTrace): string {
  const pages = pagesIn(trace.samples);
  const loopMs = trace.samples.length * trace.intervalMs;
  return `replay of a trace: ${int(trace.samples.length)} samples of ${formatDuration(trace.intervalMs)}, ${int(pages)} page writes a pass (${int(Math.round((pages * 1000) / loopMs))} a second on average), looped`;
}

function describeProbe(result: ProbeResult): string {
  const { latencyMs: l, writes } = result;
  return formatTable([
    ['requests', `${int(result.sent)} sent, ${int(result.answered)} answered, ${int(result.retries)} retries, ${int(result.unanswered)} never answered, ${int(result.errors)} ERROR replies`],
    ['latency', `p50 ${l.p50.toFixed(3)} ms, p90 ${l.p90.toFixed(3)} ms, p99 ${l.p99.toFixed(3)} ms, p99.9 ${l.p999.toFixed(3)} ms, max ${l.max.toFixed(3)} ms`],
    ['longest gap', `${result.longestGapMs.toFixed(1)} ms between two replies (client-observed outage), ${(result.longestGapAtMs / 1000).toFixed(2)} s in`],
    ['writes', `${int(writes.checked)} keys read back: ${writes.lost === 0 ? 'every acknowledged PUT is there' : `${int(writes.lost)} lost (${writes.lostKeys.join(', ')})`}`],
  ]);
}

/** `--cpu MODEL` for vm create and provision; provision leaves it unset so that a template's `cpu` can apply. */
function cpuOption(fromTemplate = false): Option {
  const option = new Option('--cpu <model>', `CPU model: host (every flag of its host: fastest, moves only to hosts that have them all), a level, or baseline (the flags every host has now: moves live anywhere in the cluster)${fromTemplate ? '; default: the template\'s, else baseline' : ''}`)
    .choices(cpuModelNameSchema.options);
  return fromTemplate ? option : option.default(DEFAULT_CPU_MODEL);
}

function describeClone(method: string): string {
  return method === 'reflink' ? 'reflink (blocks shared, copy on write)' : 'sparse copy (zeros skipped; no reflink on this file system)';
}

function describeConfigDrive(drive: ConfigDrive): string {
  const network = drive['network-config'];
  return `cidata.json: hostname ${drive['meta-data']['local-hostname']}, instance ${drive['meta-data']['instance-id']}`
    + `${network ? `, ${network.address}/${network.prefix} via ${network.gateway} (${network.mac})` : ', no network'}`
    + `, user-data ${Buffer.byteLength(drive['user-data'])} bytes`;
}

function vmRows(vms: VmSummary[]): string {
  return formatTable([['NAME', 'HOST', 'STATE', 'MEMORY'], ...vms.map((vm) => [vm.name, vm.host, vm.state, formatBytes(vm.memoryBytes)])], [3]);
}

/** Runs `action` on the host holding VM `name`. */
async function onVmHost<T>(command: Command, name: string, action: (client: Parameters<Parameters<typeof withHost>[1]>[0]) => Promise<T>): Promise<T> {
  const { cluster: hosts } = await cluster(command);
  const { host } = await locateVm(hosts, checkVmName(name));
  return withHost(host, (client) => action(client));
}

/** `IP:PORT`, as `ferry vm probe` takes it in place of a VM's name. */
const isAddress = (text: string): boolean => /^\d{1,3}(\.\d{1,3}){3}:\d{1,5}$/.test(text);

/** The address of the kv service VM `name` serves, from its host. */
async function serviceAddress(command: Command, name: string): Promise<string> {
  const info = await onVmHost(command, name, (client) => client.request('vm.info', { name }));
  if (!info.address) throw new FerryError(ErrorCode.VM_STATE, `${name} serves no address`, 'give a VM an address when making it: `ferry vm create NAME --workload kv --ip 127.100.0.5` or `ferry provision NAME --ip auto`');
  if (info.workload.kind !== 'kv') throw new FerryError(ErrorCode.VM_STATE, `${name} runs the ${info.workload.kind} workload, which answers only PING`, 'probe a VM made with --workload kv');
  return info.address;
}

/** `ferry cluster import FILE` and `ferry cluster export`: a cluster file's hosts into a store (etcd), and back out. */
function addClusterCommands(program: Command): void {
  const clusterCommand = program.command('cluster').description('the cluster store: copy a cluster file into it (e.g. into etcd), or print it as a cluster file');
  clusterCommand.command('import <file>')
    .description('add the hosts of a cluster file to the store (--cluster), with its address pool, token file and host flags; hosts of the same name are replaced')
    .action(async (file: string, _options: unknown, command: Command) => {
      const source = path.resolve(file);
      const imported = await loadCluster(source);
      const { store } = await clusterFile(command);
      if (store.kind === 'file' && path.resolve(store.location) === source) throw new FerryError(ErrorCode.BAD_INPUT, `${source} is the store itself`, 'name a store with --cluster, e.g. --cluster etcd://127.0.0.1:2379');
      await store.update((current) => ({
        ...current,
        hosts: [...current.hosts.filter((host) => !imported.hosts.some((entry) => entry.name === host.name)), ...imported.hosts],
        ...(imported.network ? { network: imported.network } : {}),
        // A relative token file is relative to the file it came from.
        ...(imported.tokenFile ? { tokenFile: path.resolve(path.dirname(source), imported.tokenFile) } : {}),
      }));
      for (const [host, flags] of Object.entries(imported.hostFlags ?? {})) await store.setHostFlags(host, flags);
      process.stdout.write(`imported ${imported.hosts.length} host(s)${imported.network ? ', the address pool' : ''}${imported.tokenFile ? ', the token file\'s path' : ''} from ${source} into ${store.location}\n`);
    });
  clusterCommand.command('export')
    .description('print the store (--cluster) as a cluster file: hosts, address pool, token file, host flags')
    .action(async (_options: unknown, command: Command) => {
      const { cluster: stored, store } = await clusterFile(command);
      const hostFlags = await store.hostFlags();
      printJson({ ...stored, ...(Object.keys(hostFlags).length > 0 ? { hostFlags } : {}) });
    });
}

export function buildProgram(): Command {
  const program = new Command('ferry')
    // Set before any subcommand exists, so they all inherit it: usage errors throw, main.ts turns them into exit 2.
    .exitOverride()
    .description('Live-migrate VMs between ferry-agent hosts: pre-copy rounds, stop-and-copy, a verified commit.')
    .option('--cluster <path>', 'cluster file, or a shared store in etcd: etcd://HOST:PORT[,HOST:PORT] (default: $FERRY_CLUSTER, else ./ferry.cluster.json)')
    .option('--token-file <file>', 'the agents\' shared secret (default: $FERRY_TOKEN, else the cluster file\'s tokenFile)')
    .showHelpAfterError('(run with --help for usage)')
    .addHelpText('after', `
Quick start (two agents on this machine, sharing one token):
  export FERRY_TOKEN=$(openssl rand -hex 32)
  ferry-agent --name host-a --port 7001 &
  ferry-agent --name host-b --port 7002 &
  ferry hosts add host-a ws://127.0.0.1:7001
  ferry hosts add host-b ws://127.0.0.1:7002
  ferry vm create web1 --on host-a --memory 256MiB --workload pattern --rate 20000 --wss 64MiB --seed 7
  ferry migrate web1 --to host-b

Exit codes: 0 done, 1 failed (e.g. a migration rolled back), 2 bad input (nothing changed), 3 host unreachable.`);

  const hosts = program.command('hosts').description('the hosts in the cluster file');
  hosts
    .command('list', { isDefault: true })
    .description('each host: whether it answers, its capacity, what is free, its VMs')
    .option('--json', 'print JSON')
    .action(async (options: { json?: boolean }, command: Command) => {
      const { file, cluster: hosts, store } = await cluster(command);
      const surveys = await surveyHosts(hosts);
      // A host that does not answer still has the flags its operators set, as the store keeps them.
      const recorded = surveys.some((s) => !s.info) ? await store.hostFlags().catch(() => ({} as Awaited<ReturnType<typeof store.hostFlags>>)) : {};
      if (options.json) {
        printJson(surveys.map((s) => ({
          name: s.host.name, url: s.host.url, reachable: s.info !== undefined,
          ...(s.info ? {
            capacityBytes: s.info.capacityBytes, freeBytes: s.info.freeBytes, vms: s.info.vms.map((vm) => vm.name), hostCpu: s.info.hostCpu,
            ...(s.info.addressMode ? { addressMode: s.info.addressMode } : {}),
            load: s.info.load ?? null, maintenance: s.info.maintenance ?? null, health: s.info.health ?? null,
          } : { error: s.error?.toPayload(), recordedFlags: recorded[s.host.name] ?? {} }),
        })));
        return;
      }
      if (surveys.length === 0) {
        process.stdout.write(`no hosts in ${file} yet: add one with \`ferry hosts add host-a ws://127.0.0.1:7001\`\n`);
        return;
      }
      const rows = [['NAME', 'URL', 'STATUS', 'CAPACITY', 'FREE', 'RESIDENT', 'LOAD', 'LEVEL', 'CPU', 'VMS']];
      const notes: string[] = [];
      for (const s of surveys) {
        const info: HostInfo | undefined = s.info;
        const flags = recorded[s.host.name];
        const status = !info
          ? `down (${s.error?.code ?? '?'})${flags?.maintenance ? ', in maintenance' : ''}${flags?.degraded ? ', degraded' : ''}`
          : info.maintenance ? 'maintenance' : info.health?.state === 'degraded' ? 'degraded' : 'up';
        if (!info && flags?.degraded) notes.push(`${s.host.name} degraded (operator, as the store records it): ${flags.degraded.reason}`);
        if (info?.health?.state === 'degraded') notes.push(...info.health.reasons.map((reason) => `${s.host.name} degraded (${reason.source}): ${reason.reason}`));
        rows.push(info
          ? [s.host.name, s.host.url, status, formatBytes(info.capacityBytes), formatBytes(info.freeBytes), info.load?.residentBytes !== undefined ? formatBytes(info.load.residentBytes) : '-', info.load ? `cpu ${info.load.cpuPercent.toFixed(0)} %, mem ${info.load.memoryPercent.toFixed(0)} %` : '-', levelText(info.hostCpu), `${info.hostCpu.vendor} ${info.hostCpu.model}`, info.vms.map((vm) => vm.name).join(', ') || '-']
          : [s.host.name, s.host.url, status, '-', '-', '-', '-', '-', '-', '-']);
      }
      process.stdout.write(`${formatTable(rows, [3, 4, 5])}\n${notes.map((note) => `${note}\n`).join('')}`);
    });
  hosts
    .command('add <name> <url>')
    .description('add a host (creates the cluster file if there is none)')
    .option('--migration-url <url>', 'where other agents reach this host for migrations (pages sent here, and page streams dialled back from a destination), if not <url> (a separate migration network)')
    .action(async (name: string, url: string, options: { migrationUrl?: string }, command: Command) => {
      const { file, store } = await clusterFile(command);
      await store.update((current) => addHost(current, { name, url, ...(options.migrationUrl ? { migrationUrl: options.migrationUrl } : {}) }));
      process.stdout.write(`added ${name} (${url}${options.migrationUrl ? `, migrations via ${options.migrationUrl}` : ''}) to ${file}\n`);
    });
  hosts
    .command('rm <name>')
    .description('remove a host from the cluster file (its agent and VMs are not touched)')
    .action(async (name: string, _options: unknown, command: Command) => {
      const { file, store } = await clusterFile(command);
      await store.update((current) => removeHost(current, name));
      process.stdout.write(`removed ${name} from ${file}\n`);
    });

  addClusterCommands(program);

  const vm = program.command('vm').description('create, inspect and control VMs');
  vm.command('create <name>')
    .description('create a VM on a host and start it')
    .requiredOption('--on <host>', 'the host to create it on')
    .option('--memory <size>', `guest memory, ${typedSize(MIN_MEMORY_BYTES)} to ${typedSize(MAX_MEMORY_BYTES)}`, '256MiB')
    .addOption(new Option('--workload <kind>', 'what the vCPU runs: pattern (whole pages at random in --wss), hotset (7 of 8 writes in --hot), sequential (a scan), idle, kv (serves a table at --ip), counters (one 16-byte record of a page per write, as real guests keep counters: what --compress xbzrle saves on; starts filled), replay (--trace)').choices(workloadKindSchema.options).default('pattern'))
    .option('--rate <writes>', 'page writes per second', '20000')
    .option('--wss <size>', 'working set the workload writes into (default: all memory)')
    .option('--seed <n>', 'xorshift32 seed for pattern, hotset and counters, not 0', '1')
    .option('--hot <size>', 'hotset: the hot region that takes 7 of 8 writes (default: wss / 8)')
    .option('--prealloc', 'back all guest memory with real pages now, not on first touch (like QEMU -mem-prealloc)')
    .option('--filled', 'start memory non-zero (every page as pattern write 0), as a guest that has run a while: a migration moves every byte, none goes as a zero page')
    .option('--disk <size>', 'give it a sparse disk image (disk0.img) of this size in the host\'s datastore')
    .option('--disk-rate <writes>', 'pattern with --disk: 4 KiB block writes per second to its disk (default 0: none)')
    .option('--disk-wss <size>', 'the part of the disk, from its start, those writes go to (default: the whole disk)')
    .option('--ip <address>', 'its address, served on UDP port 7777 (loopback mode: in 127.0.0.0/8, e.g. 127.100.0.5)')
    .option('--trace <file>', 'replay: the trace file it reproduces (`ferry trace record`), looped at the trace\'s own timing; --memory defaults to the trace\'s, --rate, --wss, --seed and --hot do not apply')
    .addOption(cpuOption())
    .option('--json', 'print JSON')
    .action(async (name: string, options: { on: string; memory: string; workload: string; rate: string; wss?: string; seed: string; hot?: string; prealloc?: boolean; filled?: boolean; disk?: string; diskRate?: string; diskWss?: string; ip?: string; trace?: string; cpu: CpuModelName; json?: boolean }, command: Command) => {
      const traceFile = options.trace === undefined ? undefined : await readTraceFile(options.trace);
      const trace = traceFile && options.trace !== undefined ? { file: options.trace, trace: replayTraceOf(traceFile, options.trace), memoryBytes: traceFile.memoryBytes } : undefined;
      // A replay VM has its trace's memory unless --memory says otherwise.
      const memory = trace && command.getOptionValueSource('memory') !== 'cli' ? String(trace.memoryBytes) : options.memory;
      const request = toVmRequest(name, { ...options, memory, trace });
      const { cluster: hosts } = await cluster(command);
      const host = findHost(hosts, options.on);
      if (request.network) {
        const holder = allVms(await surveyHosts(hosts)).find((other) => other.ip === request.network!.ip);
        if (holder) throw new FerryError(ErrorCode.BAD_INPUT, `${request.network.ip} is already used by ${holder.name} on ${holder.host}`, 'pick another address, or provision with --ip auto');
      }
      // Only a baseline needs the other hosts: it is what they all have now.
      const cpuModel = cpuModelRequest(options.cpu, options.cpu === 'baseline' ? await surveyHosts(hosts) : []);
      const info = await withHost(host, (client) => client.request('vm.create', { ...request, cpuModel }));
      if (options.json) printJson(info);
      else process.stdout.write(`created ${info.name} on ${info.host}: ${formatBytes(info.memoryBytes)}, ${info.workload.kind}, cpu ${info.cpuModel.model} (${info.cpuModel.flags.length} flags)${info.address ? `, serving ${info.address}` : ''}, running\n`);
    });

  vm.command('list')
    .description('every VM on every host that answers')
    .option('--json', 'print JSON: [{"name","host","state","memoryBytes"}]')
    .action(async (options: { json?: boolean }, command: Command) => {
      const { cluster: hosts } = await cluster(command);
      const surveys = await surveyHosts(hosts);
      const vms = allVms(surveys);
      if (options.json) printJson(vms);
      else process.stdout.write(vms.length > 0 ? `${vmRows(vms)}\n` : 'no VMs\n');
      for (const down of surveys.filter((s) => s.error)) process.stderr.write(`ferry: ${down.host.name} did not answer: ${down.error?.message}\n`);
    });

  vm.command('info <name>')
    .description('state, workload and vCPU registers of a VM')
    .option('--json', 'print JSON: {"name","host","state","memoryBytes","workload","cpu":{"x","n"}}')
    .action(async (name: string, options: { json?: boolean }, command: Command) => {
      const info = await onVmHost(command, name, (client) => client.request('vm.info', { name }));
      if (options.json) printJson(info);
      else process.stdout.write(`${describeVm(info)}\n`);
    });

  for (const [verb, text] of [['pause', 'pause the vCPU (between two page writes)'], ['resume', 'resume a paused vCPU']] as const) {
    vm.command(`${verb} <name>`)
      .description(text)
      .option('--json', 'print JSON')
      .action(async (name: string, options: { json?: boolean }, command: Command) => {
        const info = await onVmHost(command, name, (client) => client.request(verb === 'pause' ? 'vm.pause' : 'vm.resume', { name }));
        if (options.json) printJson(info);
        else process.stdout.write(`${info.name} on ${info.host}: ${info.state}\n`);
      });
  }

  for (const [verb, text] of [
    ['start', 'power on a VM that is powered off, or resume a suspended one exactly where it was'],
    ['stop', 'power a VM off: its memory is discarded, its files stay'],
    ['suspend', 'save a VM\'s memory and registers to its host\'s datastore and free its memory'],
  ] as const) {
    vm.command(`${verb} <name>`)
      .description(text)
      .option('--json', 'print JSON')
      .action(async (name: string, options: { json?: boolean }, command: Command) => {
        const op = verb === 'start' ? 'vm.start' : verb === 'stop' ? 'vm.stop' : 'vm.suspend';
        const info = await onVmHost(command, name, (client) => client.request(op, { name }));
        if (options.json) printJson(info);
        else process.stdout.write(`${info.name} on ${info.host}: ${info.state}\n`);
      });
  }

  vm.command('probe <vm>')
    .description('be a client of the VM\'s service: a steady mix of PUT and GET over UDP, with retries; latency, outage, lost writes')
    .option('--rate <requests>', 'requests per second', '1000')
    .option('--duration <time>', 'how long to send, e.g. 10s', '10s')
    .option('--json', 'print JSON')
    .addHelpText('after', `
<vm> is a VM's name (its address is looked up in the cluster), or an address IP:PORT to probe directly, without
the cluster: for a client on another network, e.g. in the client namespace of \`ferry bench --link namespaces\`:
  ip netns exec fbench-c ferry vm probe 10.213.0.50:7777 --duration 5s`)
    .action(async (target: string, options: { rate: string; duration: string; json?: boolean }, command: Command) => {
      const ratePerSec = parseCount(options.rate, '--rate');
      const durationMs = parseDuration(options.duration);
      if (ratePerSec < 1 || ratePerSec > 200_000) throw new FerryError(ErrorCode.BAD_INPUT, `--rate ${options.rate} must be 1 to 200,000 requests a second`, 'e.g. --rate 1000');
      const address = isAddress(target) ? target : await serviceAddress(command, target);
      if (!options.json) process.stdout.write(`probing ${target === address ? address : `${target} at ${address}`}: ${int(ratePerSec)} requests/s for ${formatDuration(durationMs)}\n`);
      const { runProbe } = await import('./probe.js'); // its histogram library loads only for `ferry probe`
      const result = await runProbe({
        address, ratePerSec, durationMs,
        ...(options.json ? {} : { onTick: (tick) => process.stdout.write(`  sent ${int(tick.sent)}, answered ${int(tick.answered)}, outstanding ${int(tick.outstanding)}, longest gap ${formatDuration(tick.longestGapMs)}\n`) }),
      });
      if (options.json) printJson(result);
      else process.stdout.write(`${describeProbe(result)}\n`);
    });

  vm.command('destroy <name>')
    .description('remove a VM: its memory, and its files on the host (disks only with --yes)')
    .option('--yes', 'also delete its disk images')
    .action(async (name: string, options: { yes?: boolean }, command: Command) => {
      await onVmHost(command, name, (client) => client.request('vm.destroy', { name, deleteDisks: options.yes ?? false }));
      process.stdout.write(`destroyed ${name}\n`);
    });

  vm.command('dump <name>')
    .description('write the guest memory image to a file here, and FILE.json beside it (pauses the VM meanwhile)')
    .requiredOption('--out <file>', 'where to write the image')
    .option('--json', 'print the metadata as JSON')
    .action(async (name: string, options: { out: string; json?: boolean }, command: Command) => {
      const metadata = await onVmHost(command, name, (client) => dumpMemory(client, name, options.out));
      if (options.json) printJson(metadata);
      else process.stdout.write(`wrote ${formatBytes(metadata.memoryBytes)} of ${name} to ${options.out} (n=${int(metadata.cpu.n)}), metadata in ${options.out}.json\n`);
    });

  vm.command('resolve <name>')
    .description('settle a migration of this VM left in doubt (a lost commit acknowledgement) now, and say where it runs')
    .option('--json', 'print JSON')
    .action(async (name: string, options: { json?: boolean }, command: Command) => {
      const { cluster: hosts } = await cluster(command);
      const surveys = await surveyHosts(hosts);
      const holders = surveys.filter((survey) => survey.info?.vms.some((vm) => vm.name === checkVmName(name)));
      if (holders.length === 0) throw new FerryError(ErrorCode.VM_NOT_FOUND, `no host that answered holds ${name}`, 'run `ferry vm list`');
      const results = [];
      for (const holder of holders) {
        const result = await withHost(holder.host, (client) => client.request('vm.resolve', { name }));
        results.push({ host: holder.host.name, ...result });
      }
      if (options.json) printJson(results);
      else for (const result of results) process.stdout.write(`${name} on ${result.host}: ${result.state} (${result.detail})\n`);
    });

  vm.command('check <name>')
    .description('pattern, counters and replay VMs: check every page of guest memory, and every block of a disk it writes, against a replay of the workload from its seed (or its trace)')
    .option('--json', 'print JSON')
    .action(async (name: string, options: { json?: boolean }, command: Command) => {
      const { info, image, disk } = await onVmHost(command, name, async (client) => {
        const found = await client.request('vm.info', { name });
        if (found.workload.kind !== 'pattern' && found.workload.kind !== 'counters' && found.workload.kind !== 'replay') {
          throw new FerryError(ErrorCode.BAD_INPUT, `${name} runs ${found.workload.kind}; only pattern, counters and replay memory can be checked by replay`, 'create the VM with --workload pattern or --workload counters, or --workload replay --trace FILE');
        }
        const memory = await readMemory(client, name);
        if (!writesDisk(found.workload) || !found.disks?.length) return { ...memory, disk: undefined };
        // The disk separately, with its own pause: its registers y and m come first, then the image, checked as it arrives.
        let checker: DiskPatternChecker | undefined;
        const fetched = await fetchDisk(client, name, (paused, sizeBytes) => {
          checker = new DiskPatternChecker(paused, sizeBytes);
        }, (offset, data) => checker!.chunk(offset, data));
        checker ??= new DiskPatternChecker(fetched.info, fetched.sizeBytes);
        return { ...memory, disk: { info: fetched.info, result: checker.finish() } };
      });
      const result = checkPattern(info, image);
      const ok = result.ok && (disk?.result.ok ?? true);
      if (options.json) {
        printJson({ vm: info.name, host: info.host, cpu: info.cpu, ...result, ok, ...(disk ? { disk: { cpu: disk.info.cpu, ...disk.result } } : {}) });
      } else {
        if (result.ok) process.stdout.write(`${name} on ${info.host}: all ${int(result.pagesChecked)} pages match a replay of ${int(result.writesReplayed)} writes (${int(result.pagesWritten)} pages written), registers agree\n`);
        else process.stdout.write(`${name} on ${info.host}: MEMORY DIFFERS from replay of ${int(result.writesReplayed)} writes: pages ${result.badPages.join(', ')}${result.registersMatch ? '' : '; register x disagrees'}\n`);
        if (disk) {
          const d = disk.result;
          if (d.ok) process.stdout.write(`${name} disk0: all ${int(d.blocksChecked)} blocks match a replay of ${int(d.writesReplayed)} disk writes (${int(d.blocksWritten)} blocks written), register y agrees\n`);
          else process.stdout.write(`${name} disk0: DISK DIFFERS from replay of ${int(d.writesReplayed)} disk writes: ${int(d.badBlockCount)} blocks${d.badBlocks.length > 0 ? ` (${d.badBlocks.join(', ')}${d.badBlockCount > d.badBlocks.length ? ', ...' : ''})` : ''}${d.registersMatch ? '' : '; register y disagrees'}\n`);
        }
      }
      process.exitCode = ok ? ExitCode.OK : ExitCode.FAILED;
    });

  program
    .command('migrate <name>')
    .description('live-migrate a VM to another host, or cancel a migration under way')
    .option('--to <host>', 'destination host (required unless --cancel)')
    .option('--max-downtime <duration>', 'downtime the stop rule aims to stay under', `${DEFAULT_MAX_DOWNTIME_MS}ms`)
    .option('--max-bandwidth <rate>', 'cap on the page stream, e.g. 1GiB/s or 1gbit (default: none)')
    .option('--max-rounds <n>', 'cap on pre-copy rounds', String(STOP_RULES.maxRounds))
    .addOption(new Option('--verify <mode>', 'pages: compare page-hash digests; full: also hash all memory while paused').choices(verifyModeSchema.options).default('pages'))
    .option('--auto-converge', 'throttle the vCPU while it dirties memory faster than the link carries it (QEMU: 20 %, +10 % a round, at most 99 %)')
    .option('--timeout <duration>', 'give up (and roll back) if not committed by then, e.g. 2m')
    .option('--cancel', 'cancel the migration of this VM that is under way (from any terminal); it keeps running on its source')
    .option('--cold', 'move a powered-off or suspended VM: its files, checked, registered on the destination, deleted here')
    .option('--copy-storage', 'also copy its local disks, live (shared-nothing): the disks first, to ready, then memory; verified at the commit with memory')
    .addOption(new Option('--storage-mode <mode>', 'with --copy-storage: mirror (every guest write goes to both copies once the copy begins: converges at any write rate below the copy\'s) or iterate (dirty-block rounds, like memory)').choices(['mirror', 'iterate']).default('mirror'))
    .option('--postcopy [mode]', 'switch to post-copy after the first pre-copy round (the VM runs at the destination at once; its last pages follow, each fetched first when the guest touches it); `auto`: only when pre-copy would not converge (after round 1 if the forecast made first says so, else when the rounds do). A crash of either host after the switch loses the VM')
    .option('--postcopy-after <n>', 'switch to post-copy after N pre-copy rounds (0: before any)')
    .option('--resume', 'take up a post-copy whose link broke: the source sends the pages the destination still lacks')
    .addOption(new Option('--page-stream <path>', 'how pages travel: tcp (a connection of their own that the destination dials back to the source and reads straight into guest memory; if it cannot, the pages go on ws and the report says why) or ws (on the peer WebSocket)').choices(['tcp', 'ws']).default('tcp'))
    .option('--compress <method>', 'xbzrle: pages sent again (round 2 on, and the stop-and-copy) go as XOR run-length deltas against the copy sent before, where that is smaller (QEMU\'s XBZRLE)')
    .option('--xbzrle-cache <size>', `with --compress xbzrle: the source's cache of pages as last sent (default ${DEFAULT_XBZRLE_CACHE_BYTES / 1024 ** 2}MiB)`)
    .option('--plan', 'forecast the migration (rounds, total time, downtime, bytes, whether it converges, and what would make it) and move nothing')
    .option('--no-forecast', 'skip the forecast a live migration makes first (its report shows it beside what happened; with --postcopy auto, a forecast that says pre-copy will not converge switches after round 1)')
    .option('--json', 'print the report as JSON on stdout')
    .option('--trace', 'also print the downtime timeline: each side\'s marks from the pause to the guest running at the destination (the JSON report always has it)')
    .option('--quiet', 'no progress on stderr')
    .addHelpText('after', `
--plan samples the VM (its dirty rate and working set, measured by its agent), measures the page stream from its host
to --to (synthetic pages over the real path; reused for a minute), and replays the source's rounds and stop rules.
Pre-copy ends when fewer than ${STOP_RULES.fewDirtyPages} pages are dirty; or when a round shrinks the dirty set by
less than ${STOP_RULES.minShrinkFraction * 100} % and the rest fits --max-downtime; or at a cap (--max-rounds, ${STOP_RULES.maxBytesFactor} x memory sent).
With --copy-storage the disk is copied to ready before memory moves; the stop-and-copy carries its last blocks and the
commit checks it with memory; after the commit the source deletes its copy.
Until the commit, any failure leaves the VM running on its source. Ctrl-C, --timeout and
\`ferry migrate NAME --cancel\` roll the migration back unless it has already committed.

Post-copy (--postcopy, --postcopy-after N, --postcopy auto) commits at the switch: the VM runs at the destination
from then on while the pages it lacks come from the source, the ones it touches first. If the link breaks, both
hosts keep what they have (the guest waits on its next missing page) and \`ferry migrate NAME --resume\` finishes
it. If either HOST CRASHES after the switch, THE VM IS LOST: part of its memory was only on the host that died (as
in QEMU). Post-copy is never chosen unless asked for. It cannot move a kv VM, nor go with --verify full or
--copy-storage.
Exit status is 0 only when committed; a post-copy whose link broke exits 1 and says how to resume it.`)
    .action(async (name: string, raw: { to?: string; maxDowntime: string; maxBandwidth?: string; maxRounds: string; verify: string; autoConverge?: boolean; copyStorage?: boolean; storageMode?: string; pageStream?: string; postcopy?: boolean | string; postcopyAfter?: string; compress?: string; xbzrleCache?: string; resume?: boolean; timeout?: string; cancel?: boolean; cold?: boolean; plan?: boolean; forecast: boolean; json?: boolean; trace?: boolean; quiet?: boolean }, command: Command) => {
      const { cluster: hosts, store } = await cluster(command);
      if (raw.resume) {
        const progress = raw.quiet ? undefined : migrationProgress();
        const report = await resumeLive(hosts, checkVmName(name), { onEvent: (event) => progress?.onEvent(event), store }).finally(() => progress?.finish());
        if (raw.json) printJson(report);
        else process.stdout.write(`${formatReport(report)}\n`);
        process.exitCode = report.outcome === 'committed' ? ExitCode.OK : report.outcome === 'failed' && report.error ? exitCodeFor(FerryError.fromPayload(report.error)) : ExitCode.FAILED;
        return;
      }
      if (raw.cold) {
        if (!raw.to) throw new FerryError(ErrorCode.BAD_INPUT, 'migrate needs --to <host>', 'for example: ferry migrate web1 --to host-b --cold');
        const progress = raw.quiet ? undefined : coldProgress();
        // Finished in `finally` so that not even a throw can leave a progress line to follow the report or error.
        const report = await migrateCold(hosts, { vm: checkVmName(name), to: raw.to }, (event) => progress?.onProgress(event), { store })
          .finally(() => progress?.finish());
        if (raw.json) printJson(report);
        else process.stdout.write(`${formatColdReport(report)}\n`);
        process.exitCode = report.outcome === 'committed' ? ExitCode.OK : report.error ? exitCodeFor(FerryError.fromPayload(report.error)) : ExitCode.FAILED;
        return;
      }
      if (raw.cancel) {
        const { host } = await locateVm(hosts, checkVmName(name));
        await withHost(host, (client) => client.request('migrate.cancel', { name, reason: 'cancelled' }));
        if (raw.json) printJson({ vm: name, host: host.name, cancelling: true });
        else process.stdout.write(`cancelling the migration of ${name} from ${host.name}; unless it had already committed, it keeps running there\n`);
        return;
      }
      if (!raw.to) throw new FerryError(ErrorCode.BAD_INPUT, 'migrate needs --to <host>', 'for example: ferry migrate web1 --to host-b');
      const options = migrationOptions(raw);
      if (raw.plan) {
        const plan = await forecastMigration(hosts, { vm: checkVmName(name), to: raw.to, options });
        if (raw.json) printJson(plan);
        else process.stdout.write(`${formatPlan(plan)}\n`);
        return;
      }
      const timeoutMs = raw.timeout ? parseDuration(raw.timeout) : undefined;
      // The forecast first, cheaply (a short link measurement, or the last minute's), to set beside the outcome. A
      // forecast that cannot be made never stops the migration: the migration says for itself what is wrong.
      let planned: PlannedMigration | undefined;
      let forecastError: string | undefined;
      const forecastStartedMs = performance.now();
      if (raw.forecast) {
        planned = await forecastMigration(hosts, { vm: checkVmName(name), to: raw.to, options, linkBytes: MIGRATE_LINK_BYTES, statsWaitMs: 0, linkTimeoutMs: MIGRATE_LINK_TIMEOUT_MS }).catch((error: unknown) => {
          forecastError = (error as Error).message;
          return undefined;
        });
      }
      const forecastTookMs = performance.now() - forecastStartedMs;
      const progress = raw.quiet ? undefined : migrationProgress();
      const cancel = new AbortController();
      let interrupts = 0;
      const onSigint = (): void => {
        interrupts += 1;
        if (interrupts > 1) process.exit(130);
        const notice = 'cancelling: the VM stays on its source unless the migration already committed (Ctrl-C again to stop waiting)';
        if (progress) progress.log(notice);
        else process.stderr.write(`${notice}\n`);
        cancel.abort(new FerryError(ErrorCode.CANCELLED, `the migration of ${name} was cancelled (Ctrl-C)`, 'the VM runs on its source as before'));
      };
      process.on('SIGINT', onSigint);
      const timer = timeoutMs === undefined ? undefined : setTimeout(() => {
        cancel.abort(new FerryError(ErrorCode.TIMEOUT, `the migration of ${name} did not commit within ${raw.timeout}`, 'give it a longer --timeout, a faster link, or --max-rounds'));
      }, timeoutMs);
      const report = await migrateLive(hosts, { vm: checkVmName(name), to: raw.to, options: withForecastVerdict(options, planned?.forecast) }, { onEvent: (event) => progress?.onEvent(event), signal: cancel.signal, store })
        .finally(() => {
          process.off('SIGINT', onSigint);
          if (timer) clearTimeout(timer);
          // Every outcome (committed, failed, rolled back, cancelled, thrown) ends the progress before the report.
          progress?.finish();
        });
      if (planned) {
        const { totalTimeMs, downtimeMs, bytes, rounds, converges, stopReason, advice, postcopy } = planned.forecast;
        report.forecast = { totalTimeMs, downtimeMs, bytes, rounds, converges, stopReason, advice, ...(postcopy ? { postcopy } : {}), tookMs: forecastTookMs };
      } else if (forecastError !== undefined && report.outcome === 'committed') {
        report.forecastError = forecastError;
      }
      if (raw.json) printJson(report);
      else process.stdout.write(`${formatReport(report, { trace: raw.trace ?? false })}\n`);
      // A migration that was refused before it began says why in its exit code (2 bad input, 3 unreachable);
      // one that began and was undone exits 1.
      process.exitCode = report.outcome === 'committed'
        ? ExitCode.OK
        : report.outcome === 'failed' && report.error
          ? exitCodeFor(FerryError.fromPayload(report.error))
          : ExitCode.FAILED;
    });

  addImageCommands(program, cluster);
  addUiCommand(program, cluster);
  addTraceCommands(program, cluster);
  addFleetCommands(program, async (command) => {
    const { cluster: hosts, store } = await cluster(command);
    return { cluster: hosts, store, forecast: forecaster(hosts) };
  });
  addFleetBenchCommand(program);

  const templates = program.command('template').description('VM templates: built in, and yours in ferry.templates.json beside the cluster file');
  templates
    .command('list', { isDefault: true })
    .description('every template: memory, disk, workload')
    .option('--json', 'print JSON')
    .action(async (options: { json?: boolean }, command: Command) => {
      const { store } = await clusterFile(command);
      const all = await loadTemplates(store.localFile);
      if (options.json) {
        printJson(all);
        return;
      }
      process.stdout.write(`${formatTable([['NAME', 'MEMORY', 'DISK', 'WORKLOAD', 'IMAGE', 'FROM'], ...all.map((t) => [t.name, t.memory, t.disk ?? '(image)', `${t.workload}${t.rate ? ` ${t.rate}/s` : ''}`, t.image ?? '-', t.source])])}\n`);
    });

  program
    .command('provision <name>')
    .description('create a VM from a template on a host with room, give it an address, start it')
    .requiredOption('--template <name>', 'which template (ferry template list)')
    .option('--on <host>', 'this host rather than the one with the most free memory')
    .option('--ip <address>', 'auto (from the cluster file\'s pool), or an address like 10.0.0.5/24')
    .option('--lease <duration>', 'release the VM (destroy it with its files) after this long, e.g. 2h')
    .addOption(cpuOption(true))
    .option('--only-holders', 'image templates: only hosts that hold the image already (default: send it to the host chosen)')
    .option('--json', 'print JSON')
    .option('--quiet', 'no progress on stderr')
    .action(async (name: string, options: { template: string; on?: string; ip?: string; lease?: string; cpu?: CpuModelName; onlyHolders?: boolean; json?: boolean; quiet?: boolean }, command: Command) => {
      const { cluster: hosts, store } = await cluster(command);
      const leaseMs = options.lease ? parseDuration(options.lease) : undefined;
      if (leaseMs !== undefined && leaseMs <= 0) throw new FerryError(ErrorCode.BAD_INPUT, '--lease must be longer than zero', 'e.g. --lease 2h');
      const progress = options.quiet ? undefined : imageProgress();
      const provisioned = await provision(store, hosts, {
        name, template: options.template, on: options.on, ip: options.ip, leaseMs, cpu: options.cpu, onlyHolders: options.onlyHolders,
        onImageProgress: (host, event) => progress?.onProgress(host, event),
      }).finally(() => progress?.finish());
      const { info, choice, skipped, image } = provisioned;
      if (options.json) {
        printJson({ ...info, choice, skipped, ...(image?.sent ? { imageSent: image.sent } : {}) });
        return;
      }
      process.stdout.write(`provisioned ${info.name} ${choice}\n`);
      for (const skip of skipped) process.stdout.write(`  skipped ${skip.host}: ${skip.reason}\n`);
      process.stdout.write(`  cpu ${info.cpuModel.model} (${info.cpuModel.flags.length} flags)\n`);
      if (image?.sent) process.stdout.write(`  image ${image.name} sent to ${info.host} from ${image.sent.from} first: ${formatBytes(image.sent.bytes)} (${formatBytes(image.sent.bytesSent)} sent, zeros as holes) in ${formatDuration(image.sent.durationMs)}\n`);
      if (image) process.stdout.write(`  disk0.img cloned from image ${image.name} by ${describeClone(image.cloneMethod)} in ${formatDuration(image.cloneMs)}\n`);
      if (info.configDrive) process.stdout.write(`  config drive ${describeConfigDrive(info.configDrive)}\n`);
      if (info.network) process.stdout.write(`  network ${info.network.ip}/${info.network.prefix} via ${info.network.gateway}, MAC ${info.network.mac}\n`);
      if (info.leaseUntil) process.stdout.write(`  leased until ${info.leaseUntil}\n`);
    });

  const cpu = program.command('cpu').description('CPU models: what the hosts of the cluster have in common');
  cpu.command('baseline')
    .description('the CPU flags every reachable host has now, and their x86-64 level: what --cpu baseline gives a new VM')
    .option('--json', 'print JSON: {"level","flags","hosts","unreachable"}')
    .action(async (options: { json?: boolean }, command: Command) => {
      const { cluster: hosts } = await cluster(command);
      const baseline = clusterBaseline(await surveyHosts(hosts));
      if (options.json) printJson(baseline);
      else process.stdout.write(`${formatBaseline(baseline)}\n`);
    });

  program
    .command('bench')
    .description('measure live migration: fresh agents per run, raw TCP beside every figure, the pre-copy model beside every run')
    .option('--scenario <name...>', 'scenarios to run (a name also selects its family: hot-1g runs hot-1g-0 ... hot-1g-150); default: all but smoke')
    .option('--repeat <n>', 'runs per scenario', '5')
    .option('--out <dir>', 'where to write results.json, runs.csv, summary.md and charts/ (default: ./bench-results/<time>)')
    .option('--link <link>', 'run every scenario with the agents in network namespaces on a bridge, with a client namespace and VMs\' addresses in namespaces mode: `namespaces` (unshaped) or a rate that shapes it, e.g. 1gbit (needs root)')
    .option('--scenarios <file>', 'scenario file', undefined)
    .option('--list', 'list the scenarios and exit')
    .option('--peer <name>', 'also migrate a guest of the same size and memory contents with QEMU (qemu-system-x86_64, two local processes) after ferry\'s runs of each scenario whose guest writes nothing, and show both: qemu')
    .option('--peer-downtime-limit <time>', 'QEMU\'s downtime-limit for --peer qemu (its own default is 300ms)', '5ms')
    .option('--trace <file>', 'a policy bake-off on this dirty-page trace (`ferry trace record`) instead of the scenarios: each of --policies migrates a fresh VM replaying it')
    .option('--policies <list>', `with --trace: the policies to compare, comma-separated, from ${POLICY_NAMES.join(', ')}`, POLICY_NAMES.join(','))
    .option('--warmup <time>', 'with --trace: how long each replay VM runs before its migration', '2s')
    .option('--max-downtime <time>', 'with --trace: every policy\'s downtime limit', `${DEFAULT_MAX_DOWNTIME_MS}ms`)
    .option('--max-bandwidth <rate>', 'with --trace: a cap on every migration\'s page stream, as a slower link would be, e.g. 200MiB/s (default: none)')
    .option('--json', 'print the results as JSON on stdout')
    .addHelpText('after', `
Scenarios are data: bench/scenarios.json. Each run starts two ferry-agent processes, creates the VM, lets it run,
migrates it live, reads both agents' CPU time, and for pattern VMs checks the destination's memory by replay.
Before the migrations, raw TCP is measured between the same endpoints (1 MiB writes, separate processes).
Service scenarios (kv-*) migrate a kv VM back and forth under a UDP client: its outage beside downtime and blackout.
--peer qemu runs QEMU (TCG, an idle SeaBIOS guest, memory filled with non-zero data) on 127.0.0.1 the same
number of times after ferry's runs of each scenario whose guest writes nothing (idle-*, hot-1g-0), and puts QEMU's throughput, total time, downtime,
CPU per GiB and bytes sent beside ferry's in summary.md ("QEMU beside ferry") and results.json (peers). Where
qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86) the bench says so and goes on;
FERRY_QEMU names another QEMU binary.

Examples:
  ferry bench --scenario smoke --repeat 1
  ferry bench --scenario idle-1g hot-1g --repeat 5 --out docs/bench
  ferry bench --scenario kv-256m --repeat 1
  ferry bench --scenario idle-256m idle-1g --repeat 3 --peer qemu

A policy bake-off on your own guest (--trace): record its dirty pages, then compare the policies on a replay of them.
Each run starts two fresh agents, creates a VM of the trace's memory running the replay workload (the trace's pages,
interval by interval, at its timing, looped), lets it run --warmup, migrates it with the policy, and checks the
destination's memory against a replay of the trace. The table gives, per policy, the medians of downtime, total time,
bytes sent and guest slowdown (the share of the writes the trace's timing asks for during the migration that the
guest did not make), and a recommendation under a stated rule. The policies, as migration options:
${POLICY_NAMES.map((name) => `  ${name.padEnd(14)} ${POLICIES[name].description}`).join('\n')}
An agent that does not know a policy's options refuses them (FERRY_ERR_BAD_INPUT): the table shows that policy as
not run, with the agent's error, and the bake-off goes on with the others.
  ferry trace record web1 --duration 10s --out web1.trace.json
  ferry bench --trace web1.trace.json --policies precopy,auto-converge,xbzrle --repeat 3 --max-bandwidth 200MiB/s`)
    .action(async (raw: { scenario?: string[]; repeat: string; out?: string; link?: string; scenarios?: string; list?: boolean; json?: boolean; peer?: string; peerDowntimeLimit?: string; trace?: string; policies: string; warmup: string; maxDowntime: string; maxBandwidth?: string }, command: Command) => {
      const given = (option: string): boolean => command.getOptionValueSource(option) === 'cli';
      const repeat = parseCount(raw.repeat, '--repeat');
      if (repeat < 1) throw new FerryError(ErrorCode.BAD_INPUT, '--repeat must be at least 1', 'medians need 5 or more');
      if (raw.trace === undefined) {
        const stray = ['policies', 'warmup', 'maxDowntime', 'maxBandwidth'].find(given);
        if (stray) throw new FerryError(ErrorCode.BAD_INPUT, `--${stray.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} is for a policy bake-off`, 'give the trace to replay: --trace FILE');
      } else {
        if (raw.scenario || raw.peer || raw.list) throw new FerryError(ErrorCode.BAD_INPUT, '--trace runs a policy bake-off, not scenarios', 'leave out --scenario, --peer and --list, or --trace');
        const warmupMs = parseDuration(raw.warmup);
        const maxDowntimeMs = parseDuration(raw.maxDowntime);
        if (!(maxDowntimeMs > 0)) throw new FerryError(ErrorCode.BAD_INPUT, `--max-downtime ${raw.maxDowntime} must be above zero`, 'e.g. --max-downtime 300ms');
        const results = await runBakeoffCommand({
          traceFile: raw.trace, policies: parsePolicies(raw.policies), repeat, warmupMs, maxDowntimeMs,
          ...(raw.maxBandwidth ? { maxBandwidthBytesPerSec: parseRate(raw.maxBandwidth) } : {}),
          ...(raw.out ? { out: raw.out } : {}), ...(raw.link ? { link: raw.link } : {}),
          command: `ferry ${process.argv.slice(2).join(' ')}`,
        });
        if (raw.json) printJson(results);
        else process.stdout.write(bakeoffMarkdown(results));
        // Policies the agents do not know are no failure of the bake-off; a policy that ran and failed, or whose
        // memory does not match replay, is.
        const ran = results.runs.filter((run) => run.outcome !== 'not-run');
        process.exitCode = ran.length > 0 && ran.every((run) => run.outcome === 'committed' && run.replayMatches === true) ? ExitCode.OK : ExitCode.FAILED;
        return;
      }
      if (raw.list) {
        for (const scenario of loadScenarios(raw.scenarios ?? defaultScenarioFile())) {
          process.stdout.write(`${scenario.name.padEnd(18)} ${scenario.description}${scenario.smoke ? ' (smoke)' : ''}\n`);
        }
        return;
      }
      if (raw.link && raw.link !== 'namespaces') parseRate(raw.link);
      // The limit's default applies only with --peer: given by hand without it, it is a mistake worth saying.
      const limitGiven = command.getOptionValueSource('peerDowntimeLimit') === 'cli';
      const peer = parsePeerOptions(raw.peer, raw.peer !== undefined || limitGiven ? raw.peerDowntimeLimit : undefined);
      const results = await runBench({
        ...(peer ? { peer } : {}),
        ...(raw.scenario ? { scenarios: raw.scenario } : {}),
        ...(raw.scenarios ? { scenarioFile: raw.scenarios } : {}),
        ...(raw.out ? { out: raw.out } : {}),
        ...(raw.link ? { link: raw.link } : {}),
        repeat,
        command: `ferry ${process.argv.slice(2).join(' ')}`,
      });
      if (raw.json) printJson(results);
      else process.stdout.write(toMarkdown(results));
      const sound = results.runs.every((run) => run.outcome === 'committed' && run.verification?.match === true && run.replayMatches !== false)
        && results.services.every((run) => run.migrations.every((migration) => migration.outcome === 'committed'))
        && (results.soaks ?? []).every((run) => run.committed === run.migrations.length && run.replayMatches);
      process.exitCode = sound ? ExitCode.OK : ExitCode.FAILED;
    });

  const storage = program.command('storage').description('where a VM\'s disks live');
  storage.command('move <name>')
    .description('move a running VM\'s disks between its host\'s datastore and the shared storage, while it runs (Storage vMotion)')
    .requiredOption('--to <place>', 'shared (the agent\'s --shared-storage) or local (its datastore)')
    .option('--storage-mode <mode>', 'mirror: every guest write goes to both copies once the copy begins, so it converges at any write rate (QEMU\'s write-blocking mirror); iterate: dirty-block rounds, like memory\'s pre-copy', 'mirror')
    .option('--verify <mode>', 'pages: per-block digests of what was copied; full: also hash both whole images', 'pages')
    .option('--max-downtime <time>', 'iterate mode: stop the rounds when the blocks left fit in this pause', '300ms')
    .option('--max-bandwidth <rate>', 'cap on the copy\'s own sends (not the guest\'s mirrored writes), e.g. 100MiB/s (default: none)')
    .option('--json', 'print the report as JSON')
    .option('--quiet', 'no progress display')
    .addHelpText('after', `
The VM keeps running throughout but for a short pause at the end, in which the last blocks are copied, the copy is
verified and the VM's config is pointed at the new place. Until then its disks stay where they were, and any failure
(a full disk, a digest that does not match, the agent stopping) leaves them there and deletes the partial copy.
A disk on shared storage lets the VM migrate live to any host that mounts the same storage without copying disks.

Examples:
  ferry storage move web1 --to shared
  ferry storage move web1 --to local --storage-mode iterate --verify full`)
    .action(async (name: string, raw: { to: string; storageMode: string; verify: string; maxDowntime: string; maxBandwidth?: string; json?: boolean; quiet?: boolean }, command: Command) => {
      if (raw.to !== 'shared' && raw.to !== 'local') throw new FerryError(ErrorCode.BAD_INPUT, `--to ${raw.to}: a disk moves to shared or local`, 'e.g. --to shared');
      if (raw.storageMode !== 'mirror' && raw.storageMode !== 'iterate') throw new FerryError(ErrorCode.BAD_INPUT, `--storage-mode ${raw.storageMode}: mirror or iterate`, 'mirror (the default) converges at any write rate below the copy\'s');
      if (raw.verify !== 'pages' && raw.verify !== 'full') throw new FerryError(ErrorCode.BAD_INPUT, `--verify ${raw.verify}: pages or full`, 'pages (the default) compares per-block digests; full hashes both images');
      const maxDowntimeMs = parseDuration(raw.maxDowntime);
      const maxBandwidthBytesPerSec = raw.maxBandwidth === undefined ? 0 : parseRate(raw.maxBandwidth);
      const { cluster: hosts, store } = await cluster(command);
      const progress = raw.quiet || raw.json ? undefined : storageProgress();
      try {
        const report = await moveStorage(hosts, { vm: checkVmName(name), to: raw.to, mode: raw.storageMode, verify: raw.verify, maxDowntimeMs, maxBandwidthBytesPerSec }, progress?.onProgress, { store });
        progress?.finish();
        if (raw.json) printJson(report);
        else process.stdout.write(`${formatStorageReport(report)}\n`);
      } finally {
        progress?.finish();
      }
    });

  return program;
}

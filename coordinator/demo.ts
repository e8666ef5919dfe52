/**
 * `npm start`: the tour. Two agents on this machine, a 256 MiB VM running `pattern`, a live migration with its
 * progress and report, the guest carrying on at its new host, and its memory checked against a replay of the
 * workload. Everything it starts, it stops.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { styleText } from 'node:util';
import { initChecksums } from '../shared/checksum.js';
import { DEFAULT_MAX_DOWNTIME_MS, STOP_RULES } from '../shared/constants.js';
import { toFerryError } from '../shared/errors.js';
import { formatBytes, formatDuration } from '../shared/units.js';
import { addHost, saveCluster, type Cluster } from './cluster.js';
import { withHost } from './connect.js';
import { readMemory } from './dump.js';
import { startLocalAgent, type LocalAgent } from './local-agent.js';
import { migrateLive } from './migrate.js';
import { printError } from './output.js';
import { checkPattern } from './pattern-check.js';
import { migrationProgress } from './progress.js';
import { formatReport } from './report.js';
import { toVmRequest } from './vm-spec.js';

const tty = process.stdout.isTTY === true;
const bold = (text: string): string => (tty ? styleText('bold', text) : text);
const dim = (text: string): string => (tty ? styleText('dim', text) : text);
const say = (text = ''): void => void process.stdout.write(`${text}\n`);
const command = (text: string): void => say(dim(`   $ ${text}`));
const int = (value: number): string => value.toLocaleString('en-US');
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function demo(): Promise<boolean> {
  const workdir = await mkdtemp(path.join(os.tmpdir(), 'ferry-demo-'));
  const agents: LocalAgent[] = [];
  const stopAll = async (): Promise<void> => {
    await Promise.all(agents.map((agent) => agent.stop()));
    await rm(workdir, { recursive: true, force: true });
  };
  process.once('SIGINT', () => void stopAll().then(() => process.exit(130)));

  try {
    say(bold('ferry: a live migration between two host agents on this machine'));
    say();
    say(bold('1. Two host agents, each its own process, on ports the OS picked'));
    // Every connection to an agent carries the cluster's shared secret.
    const token = randomBytes(32).toString('hex');
    command('export FERRY_TOKEN=$(openssl rand -hex 32)');
    for (const name of ['host-a', 'host-b']) {
      agents.push(await startLocalAgent({ name, capacity: '2GiB', datastore: path.join(workdir, name), logLevel: 'warn', token }));
    }
    let cluster: Cluster = { hosts: [] };
    for (const agent of agents) {
      cluster = addHost(cluster, { name: agent.name, url: agent.url });
      command(`ferry-agent --name ${agent.name} --port 0 --capacity 2GiB    # ${agent.url}, pid ${agent.pid}`);
    }
    cluster = { ...cluster, hosts: cluster.hosts.map((host) => ({ ...host, token })) };
    const clusterFile = path.join(workdir, 'ferry.cluster.json');
    await saveCluster(clusterFile, cluster);
    const [hostA, hostB] = cluster.hosts as [Cluster['hosts'][number], Cluster['hosts'][number]];

    say();
    say(bold('2. A VM on host-a: 256 MiB of guest memory, a vCPU thread writing 20,000 pages a second'));
    command('ferry vm create web1 --on host-a --memory 256MiB --workload pattern --rate 20000 --wss 64MiB --seed 7');
    const request = toVmRequest('web1', { memory: '256MiB', workload: 'pattern', rate: '20000', wss: '64MiB', seed: '7' });
    await withHost(hostA, (client) => client.request('vm.create', request));
    say(`   The guest's memory is a pure function of its seed and its write count n (DESIGN.md, "pattern"), so anyone can check it.`);
    for (let i = 0; i < 4; i++) {
      await sleep(500);
      const info = await withHost(hostA, (client) => client.request('vm.info', { name: 'web1' }));
      say(`   web1 on host-a: n = ${int(info.cpu.n)} page writes`);
    }

    say();
    say(bold('3. Live migration to host-b: pre-copy rounds while the guest runs, then a short stop-and-copy'));
    command('ferry migrate web1 --to host-b');
    const progress = migrationProgress(process.stdout);
    const report = await migrateLive(cluster, {
      vm: 'web1', to: 'host-b',
      options: { maxDowntimeMs: DEFAULT_MAX_DOWNTIME_MS, maxBandwidthBytesPerSec: 0, maxRounds: STOP_RULES.maxRounds, verify: 'pages', autoConverge: false },
    }, { onEvent: (event) => progress.onEvent(event) });
    progress.finish();
    say();
    say(formatReport(report).split('\n').map((line) => `   ${line}`).join('\n'));
    if (report.outcome !== 'committed') return false;

    say();
    say(bold('4. The guest carries on at host-b from the registers it left host-a with'));
    command('ferry vm info web1');
    for (let i = 0; i < 3; i++) {
      const info = await withHost(hostB, (client) => client.request('vm.info', { name: 'web1' }));
      say(`   web1 on ${info.host}, ${info.state}: n = ${int(info.cpu.n)} (it left host-a at n = ${int(report.cpu?.n ?? 0)})`);
      await sleep(500);
    }
    const left = await withHost(hostA, async (_client, info) => info.vms.map((vm) => vm.name));
    say(`   host-a now holds: ${left.length > 0 ? left.join(', ') : 'nothing'}; its copy of web1 is freed.`);

    say();
    say(bold('5. Guest memory on host-b, checked page by page against a replay of the workload'));
    command('ferry vm check web1');
    await initChecksums();
    const { info, image } = await withHost(hostB, (client) => readMemory(client, 'web1'));
    const check = checkPattern(info, image);
    say(check.ok
      ? `   all ${int(check.pagesChecked)} pages (${formatBytes(info.memoryBytes)}) match a replay of ${int(check.writesReplayed)} writes from seed 7`
      : `   MISMATCH: pages ${check.badPages.join(', ')} differ from replay`);

    say();
    say(bold('Summary'));
    say(`   downtime ${formatDuration(report.downtimeMs ?? 0)}, guest blackout ${formatDuration(report.guestBlackoutMs ?? 0)}, ` +
      `${report.rounds.length} pre-copy rounds, ${formatBytes(report.bytesSent)} sent, verified: ${report.verification?.match ? 'yes' : 'no'}, memory matches replay: ${check.ok ? 'yes' : 'no'}`);
    say(dim('   Try it yourself: export FERRY_TOKEN, start two agents with ferry-agent, add them with `ferry hosts add`, and run the commands above (README.md, ferry --help).'));
    return check.ok;
  } finally {
    await stopAll();
  }
}

demo().then(
  (ok) => {
    process.exitCode = ok ? 0 : 1;
  },
  (error: unknown) => {
    printError(toFerryError(error), false);
    process.exitCode = 1;
  },
);

#!/usr/bin/env node
/**
 * Post-copy's broken link, over and over: two ferry-agent processes whose every incoming post-copy is cut once
 * (FERRY_FAULTS=cut-postcopy:N: the destination drops the page stream and the peer WebSocket N pages after the switch),
 * a `pattern` VM migrated back and forth with --postcopy-after 0, each migration left `postcopy-paused`, taken up with
 * `ferry migrate NAME --resume`, and the VM's memory checked against a replay of its writes (`ferry vm check`).
 *
 *   node scripts/postcopy-cuts.mjs [--times 10] [--memory 256MiB] [--rate 20000] [--wss 16MiB] [--out FILE]
 *
 * Prints a line per migration and a summary; exits 1 unless every migration was cut, resumed, committed and matched.
 * Run `npm run build` first: it runs the built CLI and agent.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { startLocalAgent } from '../dist/coordinator/local-agent.js';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const { values } = parseArgs({
  options: {
    times: { type: 'string', default: '10' },
    memory: { type: 'string', default: '256MiB' },
    rate: { type: 'string', default: '20000' },
    wss: { type: 'string', default: '16MiB' },
    out: { type: 'string' },
  },
});
const times = Number(values.times);
const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-postcopy-cuts-'));
const token = randomBytes(24).toString('hex');
const clusterFile = path.join(dir, 'ferry.cluster.json');

function ferry(...args) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(root, 'dist/coordinator/main.js'), '--cluster', clusterFile, ...args], {
      env: { ...process.env, FERRY_TOKEN: token }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => { stdout += chunk; });
    child.stderr.on('data', (chunk) => { stderr += chunk; });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const agents = [];
const results = [];
try {
  // A different cut point on each side, so the link breaks at different places going and coming back.
  for (const [name, cut] of [['host-a', 1500], ['host-b', 4000]]) {
    const agent = await startLocalAgent({ name, datastore: path.join(dir, name), logLevel: 'warn', token, env: { FERRY_FAULTS: `cut-postcopy:${cut}` } });
    agents.push(agent);
    const added = await ferry('hosts', 'add', name, agent.url);
    if (added.code !== 0) throw new Error(`hosts add ${name}: ${added.stderr}`);
  }
  const created = await ferry('vm', 'create', 'cuts', '--on', 'host-a', '--memory', values.memory, '--filled', '--rate', values.rate, '--wss', values.wss, '--seed', '41');
  if (created.code !== 0) throw new Error(`vm create: ${created.stderr}`);
  await new Promise((resolve) => setTimeout(resolve, 1000));
  for (let i = 1; i <= times; i++) {
    const to = i % 2 === 1 ? 'host-b' : 'host-a';
    const migrated = await ferry('migrate', 'cuts', '--to', to, '--postcopy-after', '0', '--no-forecast', '--json', '--quiet');
    const first = JSON.parse(migrated.stdout);
    const resumed = await ferry('migrate', 'cuts', '--resume', '--json', '--quiet');
    const second = JSON.parse(resumed.stdout);
    const checked = await ferry('vm', 'check', 'cuts', '--json');
    const check = checked.code === 0 || checked.code === 1 ? JSON.parse(checked.stdout) : { ok: false };
    const result = {
      migration: i, to,
      cut: first.outcome === 'postcopy-paused',
      pushedBeforeCut: first.postcopy?.pushedPages ?? 0,
      resumed: second.outcome,
      resumes: second.postcopy?.resumes ?? 0,
      faults: second.postcopy?.faults ?? 0,
      verified: second.verification?.match === true,
      replayMatches: check.ok === true,
      downtimeMs: first.downtimeMs,
    };
    results.push(result);
    process.stdout.write(`${i}/${times} -> ${to}: ${result.cut ? `cut after ${result.pushedBeforeCut} pushed page(s)` : `NOT CUT (${first.outcome})`}; resume ${result.resumed}; `
      + `${result.faults} fault(s); verification ${result.verified ? 'match' : 'MISMATCH'}; replay ${result.replayMatches ? 'matches' : 'DIFFERS'}; switch ${result.downtimeMs?.toFixed(2)} ms\n`);
  }
} finally {
  await Promise.all(agents.map((agent) => agent.stop(2000)));
  await rm(dir, { recursive: true, force: true });
}
const good = results.filter((result) => result.cut && result.resumed === 'committed' && result.verified && result.replayMatches).length;
process.stdout.write(`\n${good} of ${times} post-copies were cut, resumed, committed, and matched replay\n`);
if (values.out) await writeFile(values.out, `${JSON.stringify({ times, memory: values.memory, rate: Number(values.rate), wss: values.wss, results }, null, 2)}\n`);
process.exitCode = good === times ? 0 : 1;

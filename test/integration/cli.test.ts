/**
 * The ferry CLI and ferry-agent as a user meets them: help, the cluster file, VM lifecycle, and clear refusals
 * of bad input with stable codes and meaningful exit statuses.
 */
import { spawn } from 'node:child_process';
import { chmodSync, closeSync, existsSync, openSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import WebSocket from 'ws';
import { connect, createServer } from 'node:net';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { startLocalAgent } from '../../coordinator/local-agent.js';
import { AGENT_NODE_FLAGS } from '../../shared/constants.js';
import { runFerry, startCluster, vmInfo, waitForWrites, type TestCluster } from '../harness.js';

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

/**
 * Runs the real CLI with stdout and stderr on one file, as a terminal shows them, so that the order of progress
 * and report is observable. Waits for it to exit; the exit code is returned with the combined output.
 */
async function ferryInterleaved(c: TestCluster, args: string[]): Promise<{ code: number | null; output: string }> {
  const file = path.join(c.dir, `interleaved-${Date.now()}.txt`);
  const fd = openSync(file, 'w');
  try {
    const child = spawn(process.execPath, [fileURLToPath(new URL('../../dist/coordinator/main.js', import.meta.url)), '--cluster', c.clusterFile, ...args], {
      stdio: ['ignore', fd, fd],
      env: { ...process.env, FERRY_TOKEN: c.token },
    });
    const code = await new Promise<number | null>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', resolve);
    });
    return { code, output: readFileSync(file, 'utf8') };
  } finally {
    closeSync(fd);
  }
}

/** A port nothing listens on: bound by the OS, then released. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe('ferry CLI', () => {
  it('teaches with --help, and exits 2 on an unknown command', async () => {
    const help = await runFerry(['--help']);
    expect(help.code).toBe(0);
    for (const word of ['hosts', 'vm', 'migrate', 'Exit codes']) expect(help.stdout).toContain(word);
    const migrateHelp = await runFerry(['migrate', '--help']);
    expect(migrateHelp.stdout).toContain('--max-downtime');
    expect(migrateHelp.stdout).toContain('--verify');
    // Post-copy's options, and its one risk said plainly where the flag is chosen.
    for (const word of ['--postcopy [mode]', '--postcopy-after <n>', '--resume', '--compress <method>', '--xbzrle-cache <size>']) expect(migrateHelp.stdout).toContain(word);
    expect(migrateHelp.stdout.replace(/\s+/g, ' ')).toContain('If either HOST CRASHES after the switch, THE VM IS LOST');
    const benchHelp = await runFerry(['bench', '--help']);
    for (const word of ['--trace <file>', '--policies <list>']) expect(benchHelp.stdout).toContain(word);
    const unknown = await runFerry(['teleport']);
    expect(unknown.code).toBe(2);
  });

  it('keeps the cluster file: add creates it, duplicates and bad URLs are refused, rm removes', async () => {
    cluster = await startCluster([]);
    const c = cluster;
    expect(existsSync(c.clusterFile)).toBe(false);
    const added = await c.ferry('hosts', 'add', 'host-a', 'ws://127.0.0.1:7001');
    expect(added.code).toBe(0);
    expect(JSON.parse(readFileSync(c.clusterFile, 'utf8'))).toEqual({ hosts: [{ name: 'host-a', url: 'ws://127.0.0.1:7001' }] });
    const duplicate = await c.ferry('hosts', 'add', 'host-a', 'ws://127.0.0.1:7002');
    expect(duplicate.code).toBe(2);
    expect(duplicate.stderr).toContain('FERRY_ERR_HOST_EXISTS');
    const badUrl = await c.ferry('hosts', 'add', 'host-b', 'http//nowhere');
    expect(badUrl.code).toBe(2);
    expect(badUrl.stderr).toContain('ws://127.0.0.1:7001');
    const removed = await c.ferry('hosts', 'rm', 'host-a');
    expect(removed.code).toBe(0);
    expect(JSON.parse(readFileSync(c.clusterFile, 'utf8'))).toEqual({ hosts: [] });
    const missing = await c.ferry('hosts', 'rm', 'host-a');
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('FERRY_ERR_HOST_NOT_FOUND');
  });

  it('keeps the address pool and the token file when hosts are added and removed', async () => {
    cluster = await startCluster([]);
    const c = cluster;
    const network = { pool: '10.9.0.10-10.9.0.20', prefix: 24, gateway: '10.9.0.1' };
    writeFileSync(c.clusterFile, JSON.stringify({ tokenFile: 'ferry.token', network, hosts: [{ name: 'host-a', url: 'ws://127.0.0.1:7001' }] }));
    const added = await c.ferry('hosts', 'add', 'host-b', 'ws://127.0.0.1:7002');
    expect(added.code, added.stderr).toBe(0);
    expect(JSON.parse(readFileSync(c.clusterFile, 'utf8'))).toEqual({
      tokenFile: 'ferry.token', network, hosts: [{ name: 'host-a', url: 'ws://127.0.0.1:7001' }, { name: 'host-b', url: 'ws://127.0.0.1:7002' }],
    });
    const removed = await c.ferry('hosts', 'rm', 'host-a');
    expect(removed.code, removed.stderr).toBe(0);
    expect(JSON.parse(readFileSync(c.clusterFile, 'utf8'))).toEqual({ tokenFile: 'ferry.token', network, hosts: [{ name: 'host-b', url: 'ws://127.0.0.1:7002' }] });
  });

  it('finds the cluster file through FERRY_CLUSTER', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const listed = await runFerry(['hosts', '--json'], { FERRY_CLUSTER: cluster.clusterFile, FERRY_TOKEN: cluster.token });
    expect(listed.code).toBe(0);
    expect(listed.json()).toEqual([expect.objectContaining({ name: 'host-a', reachable: true })]);
  });

  it('lists hosts with whether they answer, capacity, free memory and VMs', async () => {
    cluster = await startCluster([{ name: 'host-a', capacity: '1GiB' }]);
    const c = cluster;
    expect((await c.ferry('hosts', 'add', 'host-down', `ws://127.0.0.1:${await closedPort()}`)).code).toBe(0);
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '256MiB', '--workload', 'idle')).code).toBe(0);
    const hosts = (await c.ferry('hosts', '--json')).json();
    expect(hosts).toEqual([
      expect.objectContaining({ name: 'host-a', reachable: true, capacityBytes: 1024 ** 3, freeBytes: 768 * 1024 ** 2, vms: ['web1'] }),
      expect.objectContaining({ name: 'host-down', reachable: false, error: expect.objectContaining({ code: 'FERRY_ERR_UNREACHABLE' }) }),
    ]);
    const table = await c.ferry('hosts');
    expect(table.stdout).toMatch(/host-a\s+ws:\S+\s+up\s+1 GiB\s+768 MiB\s+.+\s+web1/); // CPU level and model between
    expect(table.stdout).toMatch(/host-down\s+ws:\S+\s+down/);
  });

  it('rejects bad sizes, rates, seeds and names with exit 2, the expected form, and no VM created', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    const cases: [string[], RegExp][] = [
      [['--memory', 'lots'], /256MiB/],
      [['--memory', '8GiB'], /1MiB to 4GiB/],
      [['--memory', '1000000'], /4 KiB pages/],
      [['--rate', 'fast'], /whole number/],
      [['--seed', '0'], /cannot be 0/],
      [['--wss', '1GiB'], /between 4KiB and the VM's memory/],
      [['--rate', '10000001'], /--rate 10000001 is above 10,000,000/],
      [['--disk', '0'], /--disk 0 is below 4 KiB/],
    ];
    for (const [args, expected] of cases) {
      const result = await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '64MiB', ...args, '--json');
      expect(result.code, args.join(' ')).toBe(2);
      expect(result.stderr).toMatch(expected);
      expect(result.stderr).toContain('hint:');
      expect(result.json().error.code).toBe('FERRY_ERR_BAD_INPUT');
    }
    const badName = await c.ferry('vm', 'create', 'no spaces!', '--on', 'host-a');
    expect(badName.code).toBe(2);
    expect(badName.stderr).toContain('not a valid VM name');
    const badWorkload = await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--workload', 'crypto');
    expect(badWorkload.code).toBe(2);
    const badDowntime = await c.ferry('migrate', 'web1', '--to', 'host-a', '--max-downtime', 'soon');
    expect(badDowntime.code).toBe(2);
    expect(badDowntime.stderr).toContain('300ms');
    const badRounds = await c.ferry('migrate', 'web1', '--to', 'host-a', '--max-rounds', '0', '--json');
    expect(badRounds.code).toBe(2);
    expect(badRounds.stderr).toContain('--max-rounds 0 is below 1');
    expect(badRounds.json().error.code).toBe('FERRY_ERR_BAD_INPUT');
    expect((await c.ferry('vm', 'list', '--json')).json()).toEqual([]);
  });

  it('refuses a VM that does not fit the host, and a second VM of the same name', async () => {
    cluster = await startCluster([{ name: 'host-a', capacity: '96MiB' }]);
    const c = cluster;
    const tooBig = await c.ferry('vm', 'create', 'big', '--on', 'host-a', '--memory', '128MiB', '--json');
    expect(tooBig.code).toBe(1);
    expect(tooBig.json().error).toMatchObject({ code: 'FERRY_ERR_CAPACITY' });
    expect(tooBig.stderr).toContain('host-a has 96 MiB free');
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '64MiB')).code).toBe(0);
    const again = await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '16MiB', '--json');
    expect(again.code).toBe(1);
    expect(again.json().error.code).toBe('FERRY_ERR_VM_EXISTS');
    const noRoom = await c.ferry('vm', 'create', 'web2', '--on', 'host-a', '--memory', '64MiB', '--json');
    expect(noRoom.json().error.code).toBe('FERRY_ERR_CAPACITY');
  });

  it('says which host is unreachable (exit 3) and which VM is unknown (exit 1)', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    expect((await c.ferry('hosts', 'add', 'host-down', `ws://127.0.0.1:${await closedPort()}`)).code).toBe(0);
    const unreachable = await c.ferry('vm', 'create', 'web1', '--on', 'host-down', '--json');
    expect(unreachable.code).toBe(3);
    expect(unreachable.json().error.code).toBe('FERRY_ERR_UNREACHABLE');
    expect(unreachable.stderr).toContain('ferry-agent --name host-down');
    const unknown = await c.ferry('vm', 'info', 'ghost', '--json');
    expect(unknown.code).toBe(1);
    expect(unknown.json().error.code).toBe('FERRY_ERR_VM_NOT_FOUND');
    expect(unknown.stderr).toContain('host-down did not');
  });

  it('pauses and resumes a VM between whole page writes, and destroys it', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '16MiB', '--rate', '5000', '--seed', '9')).code).toBe(0);
    await waitForWrites(c, 'web1', 500);
    const paused = (await c.ferry('vm', 'pause', 'web1', '--json')).json();
    expect(paused.state).toBe('paused');
    await delay(300);
    expect((await vmInfo(c, 'web1')).cpu).toEqual(paused.cpu);
    expect((await c.ferry('vm', 'resume', 'web1', '--json')).json().state).toBe('running');
    await waitForWrites(c, 'web1', paused.cpu.n);
    const check = await c.ferry('vm', 'check', 'web1', '--json');
    expect(check.code, check.stderr).toBe(0);
    expect(check.json()).toMatchObject({ ok: true, badPages: [] });
    expect((await c.ferry('vm', 'destroy', 'web1')).code).toBe(0);
    expect((await c.ferry('vm', 'list', '--json')).json()).toEqual([]);
    expect((await c.ferry('hosts', '--json')).json()[0].freeBytes).toBe((await c.ferry('hosts', '--json')).json()[0].capacityBytes);
  });

  it('dumps exactly memoryBytes of guest memory and the metadata beside it', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '8MiB', '--rate', '2000', '--wss', '4MiB', '--seed', '21')).code).toBe(0);
    const file = path.join(c.dir, 'mem.bin');
    const dumped = await c.ferry('vm', 'dump', 'web1', '--out', file);
    expect(dumped.code, dumped.stderr).toBe(0);
    expect(readFileSync(file).length).toBe(8 * 1024 * 1024);
    const meta = JSON.parse(readFileSync(`${file}.json`, 'utf8'));
    expect(meta).toMatchObject({ vm: 'web1', memoryBytes: 8 * 1024 * 1024, pageSize: 4096, workload: { kind: 'pattern', seed: 21, wssPages: 1024, rate: 2000 } });
    expect(meta.cpu.n).toBeGreaterThan(0);
    expect((await vmInfo(c, 'web1')).state).toBe('running'); // resumed after the dump
  });
});

describe('ferry migrate output', () => {
  it('ends its progress before the report when a migration is refused at reservation', async () => {
    cluster = await startCluster([{ name: 'host-a', capacity: '256MiB' }, { name: 'host-b', capacity: '32MiB' }]);
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '64MiB', '--workload', 'idle')).code).toBe(0);
    const { code, output } = await ferryInterleaved(c, ['migrate', 'web1', '--to', 'host-b']);
    expect(code, output).toBe(1);
    const lines = output.split('\n');
    const reportStart = lines.findIndex((line) => line.startsWith('live migration of web1: host-a -> host-b'));
    expect(reportStart, output).toBeGreaterThan(0);
    const progressLines = lines.flatMap((line, index) => (/^\s+\[\s*[\d.]+ \S+\] stage \d/.test(line) ? [index] : []));
    expect(progressLines.length, output).toBeGreaterThanOrEqual(2); // stage 0 and stage 1
    expect(Math.max(...progressLines), output).toBeLessThan(reportStart);
    expect(output).toContain('FERRY_ERR_CAPACITY');
    expect(output).not.toMatch(/NaN/);
  });

  it('ends its progress before the report when the destination is not in the cluster file', async () => {
    cluster = await startCluster([]);
    const { code, output } = await ferryInterleaved(cluster, ['migrate', 'x', '--to', 'y']);
    expect(code, output).toBe(2);
    const lines = output.split('\n');
    const stageLine = lines.findIndex((line) => /stage 0: pre-migration$/.test(line));
    const reportStart = lines.findIndex((line) => line.startsWith('live migration of x'));
    expect(stageLine, output).toBeGreaterThanOrEqual(0);
    expect(stageLine, output).toBeLessThan(reportStart);
    expect(output).not.toMatch(/NaN/);
  });
});

describe('ferry-agent', () => {
  it('prints exactly one JSON ready line with its name and URL, and stops cleanly on SIGTERM', async () => {
    const datastore = await mkdtemp(path.join(os.tmpdir(), 'ferry-agent-test-'));
    const agent = await startLocalAgent({ name: 'host-x', datastore, env: { FERRY_TOKEN: '' } });
    try {
      expect(agent.url).toMatch(/^ws:\/\/127\.0\.0\.1:\d+$/);
      // Started with the Node.js options every agent runs with (constants.ts), so it says nothing about them.
      const commandLine = readFileSync(`/proc/${agent.pid}/cmdline`, 'utf8').split('\0');
      for (const flag of AGENT_NODE_FLAGS) expect(commandLine).toContain(flag);
      expect(agent.log()).not.toContain('started without the Node.js options');
    } finally {
      await agent.stop();
      await rm(datastore, { recursive: true, force: true });
    }
    expect(await agent.exited).toBe(0);
  });

  it('never runs open: without a token it makes one, says where, and refuses connections that lack it', async () => {
    const datastore = await mkdtemp(path.join(os.tmpdir(), 'ferry-agent-test-'));
    const agent = await startLocalAgent({ name: 'host-x', datastore, env: { FERRY_TOKEN: '' } });
    try {
      const tokenFile = path.join(datastore, 'token');
      expect(agent.log()).toContain(`made a new token in ${tokenFile}`);
      const token = readFileSync(tokenFile, 'utf8').trim();
      expect(token).toMatch(/^[0-9a-f]{64}$/);
      expect(statSync(tokenFile).mode & 0o777).toBe(0o600);
      const clusterFile = path.join(datastore, 'cluster.json');
      expect((await runFerry(['--cluster', clusterFile, 'hosts', 'add', 'host-x', agent.url])).code).toBe(0);
      const without = await runFerry(['--cluster', clusterFile, 'hosts', '--json'], { FERRY_TOKEN: '' });
      expect(without.json()[0]).toMatchObject({ reachable: false, error: { code: 'FERRY_ERR_UNAUTHORIZED' } });
      const wrong = await runFerry(['--cluster', clusterFile, 'vm', 'list', '--json'], { FERRY_TOKEN: 'f'.repeat(64) });
      expect(wrong.stderr).toContain('wrong token');
      const right = await runFerry(['--cluster', clusterFile, '--token-file', tokenFile, 'hosts', '--json'], { FERRY_TOKEN: '' });
      expect(right.json()[0]).toMatchObject({ name: 'host-x', reachable: true });
      // A raw upgrade without the header is refused before any WebSocket exists, on both endpoints.
      for (const endpoint of ['/control', '/peer']) {
        const status = await new Promise<number | undefined>((resolve) => {
          const socket = new WebSocket(`${agent.url}${endpoint}`);
          socket.on('unexpected-response', (_request, response) => resolve(response.statusCode));
          socket.on('open', () => resolve(101));
          socket.on('error', () => resolve(undefined));
        });
        expect(status).toBe(401);
      }
    } finally {
      await agent.stop();
      await rm(datastore, { recursive: true, force: true });
    }
  });

  it('survives malformed upgrade requests and reset connections, and keeps serving', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    const { port } = new URL(c.agent('host-a').url);
    const upgrade = (path: string) => `GET ${path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`;
    for (const request of [upgrade('//'), upgrade('/nowhere'), upgrade('http://[bad'), 'garbage\r\n\r\n']) {
      await new Promise<void>((resolve) => {
        const socket = connect(Number(port), '127.0.0.1', () => {
          socket.write(request);
          setTimeout(() => socket.resetAndDestroy(), 50);
        });
        socket.on('error', () => undefined);
        socket.on('close', () => resolve());
      });
    }
    expect(c.agent('host-a').child.exitCode).toBeNull();
    const hosts = await c.ferry('hosts', '--json');
    expect(hosts.json()[0]).toMatchObject({ name: 'host-a', reachable: true });
  });

  it('runs with its Node.js options from its #! line, and says so when started without them', async () => {
    const entry = fileURLToPath(new URL('../../dist/agent/main.js', import.meta.url));
    expect(readFileSync(entry, 'utf8').split('\n')[0]).toBe(`#!/usr/bin/env -S node ${AGENT_NODE_FLAGS.join(' ')}`);
    chmodSync(entry, 0o755); // as npm makes a package's bin when it links it
    const datastore = await mkdtemp(path.join(os.tmpdir(), 'ferry-agent-test-'));
    /** Starts the agent (the file itself, or through `node`), waits for its ready line; its stderr and command line. */
    const start = async (command: string, args: string[], name: string): Promise<{ stderr: string; commandLine: string[] }> => {
      const child = spawn(command, [...args, '--name', name, '--port', '0', '--datastore', path.join(datastore, name)], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FERRY_TOKEN: 'a'.repeat(64) } });
      try {
        let stderr = '';
        child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
        await new Promise<void>((resolve, reject) => {
          child.stdout.setEncoding('utf8').on('data', (chunk: string) => chunk.includes('"ready"') && resolve());
          child.once('exit', (code) => reject(new Error(`exited ${code}: ${stderr}`)));
        });
        const commandLine = readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').split('\0');
        // A warning is written (synchronously) before the ready line; its pipe may be read a moment later.
        for (let waited = 0; !stderr.includes('started without') && waited < 1000; waited += 50) await delay(50);
        return { stderr, commandLine };
      } finally {
        child.kill('SIGKILL');
        if (child.exitCode === null && child.signalCode === null) await new Promise((resolve) => child.once('exit', resolve));
      }
    };
    try {
      const own = await start(entry, [], 'host-y');
      for (const flag of AGENT_NODE_FLAGS) expect(own.commandLine).toContain(flag);
      expect(own.stderr).not.toContain('started without');
      const plain = await start(process.execPath, [entry], 'host-z');
      expect(plain.stderr).toContain('started without the Node.js options ferry-agent runs with');
      expect(plain.stderr).toContain(`node ${AGENT_NODE_FLAGS.join(' ')}`);
    } finally {
      await rm(datastore, { recursive: true, force: true });
    }
  });

  it('refuses a bad --capacity with exit 2 and a message that says what it expected', async () => {
    const entry = fileURLToPath(new URL('../../dist/agent/main.js', import.meta.url));
    const child = spawn(process.execPath, [entry, '--name', 'host-x', '--port', '0', '--capacity', 'plenty'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    expect(code).toBe(2);
    expect(stderr).toContain('256MiB');
  });
});

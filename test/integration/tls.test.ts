/**
 * Agents across machines speak wss://: with a certificate made here, the coordinator and the agents (which dial
 * each other for the page stream) trust it through NODE_EXTRA_CA_CERTS, and a migration commits over TLS.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { startLocalAgent, type LocalAgent } from '../../coordinator/local-agent.js';
import { checkDump } from '../replay.js';
import { runFerry } from '../harness.js';

let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const step of cleanup.reverse()) await step();
  cleanup = [];
});

describe('TLS', () => {
  it('migrates over wss:// with a certificate the agents and ferry are told to trust, and refuses one they are not', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-tls-'));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const cert = path.join(dir, 'cert.pem');
    const key = path.join(dir, 'key.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1',
      '-subj', '/CN=ferry-test', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
    const token = randomBytes(24).toString('hex');
    const trust = { NODE_EXTRA_CA_CERTS: cert };
    const agents: LocalAgent[] = [];
    for (const name of ['host-a', 'host-b']) {
      const agent = await startLocalAgent({ name, token, datastore: path.join(dir, name), logLevel: 'warn', env: trust, extraArgs: ['--tls-cert', cert, '--tls-key', key] });
      cleanup.push(() => agent.stop());
      agents.push(agent);
    }
    for (const agent of agents) expect(agent.url).toMatch(/^wss:\/\/127\.0\.0\.1:\d+$/);

    const clusterFile = path.join(dir, 'cluster.json');
    const ferry = (args: string[], env: Record<string, string> = trust) => runFerry(['--cluster', clusterFile, ...args], { FERRY_TOKEN: token, ...env });
    for (const agent of agents) expect((await ferry(['hosts', 'add', agent.name, agent.url])).code).toBe(0);

    const untrusted = await ferry(['hosts', '--json'], { NODE_EXTRA_CA_CERTS: '' });
    expect(untrusted.json()[0]).toMatchObject({ reachable: false, error: { code: 'FERRY_ERR_UNREACHABLE' } });
    expect(untrusted.json()[0].error.hint).toContain('NODE_EXTRA_CA_CERTS');

    expect((await ferry(['vm', 'create', 'web1', '--on', 'host-a', '--memory', '16MiB', '--rate', '3000', '--wss', '4MiB', '--seed', '71'])).code).toBe(0);
    const migrated = await ferry(['migrate', 'web1', '--to', 'host-b', '--json']);
    expect(migrated.code, migrated.stderr).toBe(0);
    // The pages went on a page stream of their own, dialled back over TLS too.
    expect(migrated.json()).toMatchObject({ outcome: 'committed', verification: { match: true }, pageStream: { kind: 'tcp' } });
    const file = path.join(dir, 'web1.bin');
    expect((await ferry(['vm', 'dump', 'web1', '--out', file])).code).toBe(0);
    expect(checkDump(file)).toMatchObject({ ok: true });
  });
});

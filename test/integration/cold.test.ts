/**
 * Cold migration: a powered-off or suspended VM's files move, checked, to another host, which registers the VM;
 * then the source deletes its copy. Whatever crashes where, the VM is registered on exactly one host afterwards and
 * no file is lost.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, openSync, readFileSync, readdirSync, statSync, writeSync, closeSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it, vi, type TestContext } from 'vitest';
import { migrateCold } from '../../coordinator/migrate-cold.js';
import { checkDump } from '../replay.js';
import { patiently, startCluster, vmFolder, vmInfo, waitForWrites, type TestCluster } from '../harness.js';

/** Each test has its own agents, so the tests run three at a time; they stop when the test ends, however it ends. */
async function clusterFor(context: TestContext, starting: Promise<TestCluster>): Promise<TestCluster> {
  const cluster = await starting;
  context.onTestFinished(() => cluster.stop());
  return cluster;
}

const MiB = 1024 * 1024;
const sha = (file: string): string => createHash('sha256').update(readFileSync(file)).digest('hex');

/** Writes `bytes` of random data into the VM's disk at `offset`: a disk with something on it, and holes. */
function scribble(file: string, offset: number, bytes: number): void {
  const fd = openSync(file, 'r+');
  writeSync(fd, randomBytes(bytes), 0, bytes, offset);
  closeSync(fd);
}

interface Listed { name: string; host: string; state: string; epoch: number }
const listed = async (c: TestCluster): Promise<Listed[]> => (await c.ferry('vm', 'list', '--json')).json<Listed[]>();

describe('cold migration', { concurrent: true }, () => {
  it('moves a stopped VM\'s files (a 1 GiB sparse disk among them) checked, registers it there, deletes it here', async (context) => {
    const { expect } = context;
    const cluster = await clusterFor(context, startCluster([{ name: 'host-a' }, { name: 'host-b' }]));
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '16MiB', '--rate', '500', '--disk', '1GiB')).code).toBe(0);
    expect((await c.ferry('vm', 'stop', 'web1')).code).toBe(0);
    const source = vmFolder(c, 'host-a', 'web1');
    scribble(path.join(source, 'disk0.img'), 100 * MiB, 8 * MiB);
    const before = Object.fromEntries(readdirSync(source).map((file) => [file, file === 'config.json' || file === 'vm.log' ? null : sha(path.join(source, file))]));

    const moved = await c.ferry('migrate', 'web1', '--to', 'host-b', '--cold', '--json');
    expect(moved.code, moved.stderr).toBe(0);
    const report = moved.json();
    expect(report).toMatchObject({ vm: 'web1', from: 'host-a', to: 'host-b', mode: 'cold', outcome: 'committed' });
    expect(report.files.map((file: { file: string }) => file.file)).toEqual(['config.json', 'disk0.img', 'nvram.bin', 'vm.log']);
    expect(report.bytes).toBeGreaterThan(1024 * MiB);
    expect(report.bytesSent).toBeLessThan(16 * MiB); // the holes did not travel
    expect(report.throughputBytesPerSec).toBeGreaterThan(0);

    expect(existsSync(source)).toBe(false);
    const arrived = vmFolder(c, 'host-b', 'web1');
    for (const [file, digest] of Object.entries(before)) if (digest) expect(sha(path.join(arrived, file))).toBe(digest);
    const disk = statSync(path.join(arrived, 'disk0.img'));
    expect(disk.size).toBe(1024 * MiB);
    expect(disk.blocks * 512).toBeLessThan(64 * MiB); // still sparse
    expect(readFileSync(path.join(arrived, 'vm.log'), 'utf8')).toMatch(/cold migration to host-b[\s\S]*arrived on host-b by cold migration/);
    expect(await listed(c)).toEqual([expect.objectContaining({ name: 'web1', host: 'host-b', state: 'defined', epoch: 2 })]);
    expect((await c.ferry('vm', 'start', 'web1')).code).toBe(0);
  });

  it('reports progress while the files move', async (context) => {
    const { expect } = context;
    const cluster = await clusterFor(context, startCluster([{ name: 'host-a' }, { name: 'host-b' }]));
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'db1', '--on', 'host-a', '--memory', '8MiB', '--rate', '100', '--disk', '256MiB')).code).toBe(0);
    expect((await c.ferry('vm', 'stop', 'db1')).code).toBe(0);
    scribble(path.join(vmFolder(c, 'host-a', 'db1'), 'disk0.img'), 0, 128 * MiB);
    const hosts = (JSON.parse(readFileSync(c.clusterFile, 'utf8')) as { hosts: { name: string; url: string }[] }).hosts.map((host) => ({ ...host, token: c.token }));
    const progress: { file: string; bytesDone: number; bytesTotal: number }[] = [];
    const report = await migrateCold({ hosts }, { vm: 'db1', to: 'host-b' }, (event) => progress.push(event));
    expect(report.outcome).toBe('committed');
    expect(progress.length).toBeGreaterThan(0);
    expect(progress.every((event) => event.bytesTotal === report.bytes && event.bytesDone <= event.bytesTotal)).toBe(true);
    expect(progress.map((event) => event.bytesDone)).toEqual([...progress.map((event) => event.bytesDone)].sort((a, b) => a - b));
  });

  it('moves a suspended VM, which then resumes on the new host exactly where it was', async (context) => {
    const { expect } = context;
    const cluster = await clusterFor(context, startCluster([{ name: 'host-a' }, { name: 'host-b' }]));
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '32MiB', '--rate', '5000', '--wss', '8MiB', '--seed', '17')).code).toBe(0);
    await waitForWrites(c, 'web1', 2000);
    const suspended = (await c.ferry('vm', 'suspend', 'web1', '--json')).json();
    expect((await c.ferry('migrate', 'web1', '--to', 'host-b', '--cold')).code).toBe(0);
    expect(await vmInfo(c, 'web1')).toMatchObject({ host: 'host-b', state: 'suspended', cpu: suspended.cpu });
    expect((await c.ferry('vm', 'start', 'web1')).code).toBe(0);
    await waitForWrites(c, 'web1', suspended.cpu.n);
    const file = path.join(c.dir, 'web1.bin');
    expect((await c.ferry('vm', 'dump', 'web1', '--out', file)).code).toBe(0);
    expect(checkDump(file)).toMatchObject({ ok: true });
  });

  it('refuses a running VM, pointing to stop or live migration', async (context) => {
    const { expect } = context;
    const cluster = await clusterFor(context, startCluster([{ name: 'host-a' }, { name: 'host-b' }]));
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '8MiB', '--rate', '100')).code).toBe(0);
    const refused = await c.ferry('migrate', 'web1', '--to', 'host-b', '--cold', '--json');
    expect(refused.code).toBe(1);
    expect(refused.json().error).toMatchObject({ code: 'FERRY_ERR_VM_STATE' });
    expect(refused.json().error.hint).toContain('ferry vm stop web1');
  });

  const crashes: { fault: string; party: 'host-a' | 'host-b'; endsOn: 'host-a' | 'host-b' }[] = [
    { fault: 'crash@cold-registered', party: 'host-b', endsOn: 'host-b' },
    { fault: 'crash@cold-sent', party: 'host-a', endsOn: 'host-b' },
  ];
  for (const crash of crashes) {
    it(`${crash.fault} in ${crash.party}: after a restart the VM is registered on ${crash.endsOn} only, its files whole`, async (context) => {
      const { expect } = context;
      const cluster = await clusterFor(context, startCluster([
        { name: 'host-a', ...(crash.party === 'host-a' ? { env: { FERRY_FAULTS: crash.fault } } : {}) },
        { name: 'host-b', ...(crash.party === 'host-b' ? { env: { FERRY_FAULTS: crash.fault } } : {}) },
      ]));
      const c = cluster;
      expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '8MiB', '--rate', '100', '--disk', '64MiB')).code).toBe(0);
      expect((await c.ferry('vm', 'stop', 'web1')).code).toBe(0);
      scribble(path.join(vmFolder(c, 'host-a', 'web1'), 'disk0.img'), 0, 4 * MiB);
      const disk = sha(path.join(vmFolder(c, 'host-a', 'web1'), 'disk0.img'));
      expect((await c.ferry('migrate', 'web1', '--to', 'host-b', '--cold')).code).not.toBe(0);
      await c.restartAgent(crash.party);
      const settled = await vi.waitFor(async () => {
        const vms = (await listed(c)).filter((vm) => vm.name === 'web1');
        expect(vms, `web1 registered on ${crash.endsOn} only`).toEqual([expect.objectContaining({ host: crash.endsOn })]);
        return vms;
      }, patiently);
      expect(settled[0]!.state).toBe('defined');
      expect(sha(path.join(vmFolder(c, crash.endsOn, 'web1'), 'disk0.img'))).toBe(disk);
      expect(existsSync(vmFolder(c, crash.endsOn === 'host-a' ? 'host-b' : 'host-a', 'web1'))).toBe(false);
      // Nothing left staging (the empty staging folder itself may stay: another migration may be about to use it).
      const staging = path.join(c.dir, 'host-b', 'staging');
      expect(existsSync(staging) ? readdirSync(staging) : []).toEqual([]);
    });
  }

  it('a source killed mid-stream keeps the VM: the destination drops what arrived, and the restarted source still has it', async (context) => {
    const { expect } = context;
    const cluster = await clusterFor(context, startCluster([{ name: 'host-a' }, { name: 'host-b', env: { FERRY_FAULTS: 'stall@cold-receiving' } }]));
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '8MiB', '--rate', '100', '--disk', '64MiB')).code).toBe(0);
    expect((await c.ferry('vm', 'stop', 'web1')).code).toBe(0);
    scribble(path.join(vmFolder(c, 'host-a', 'web1'), 'disk0.img'), 0, 16 * MiB);
    const disk = sha(path.join(vmFolder(c, 'host-a', 'web1'), 'disk0.img'));
    const moving = c.ferry('migrate', 'web1', '--to', 'host-b', '--cold');
    await vi.waitFor(() => expect(c.agent('host-b').log(), "host-b's log").toContain('fault: stall at cold-receiving'), patiently);
    c.agent('host-a').child.kill('SIGKILL');
    expect((await moving).code).not.toBe(0);
    await vi.waitFor(() => {
      const staging = path.join(c.dir, 'host-b', 'staging');
      expect(existsSync(staging) ? readdirSync(staging) : [], "host-b's staging folder").toEqual([]);
    }, patiently);
    await c.restartAgent('host-a');
    expect(await listed(c)).toEqual([expect.objectContaining({ name: 'web1', host: 'host-a', state: 'defined', epoch: 1 })]);
    expect(sha(path.join(vmFolder(c, 'host-a', 'web1'), 'disk0.img'))).toBe(disk);
  });

  it('a destination killed mid-stream leaves the VM on the source, no staging left after it restarts, and it moves again', async (context) => {
    const { expect } = context;
    // The destination stalls at its first chunk: the kill lands mid-stream, however slow the machine.
    const cluster = await clusterFor(context, startCluster([{ name: 'host-a' }, { name: 'host-b', env: { FERRY_FAULTS: 'stall@cold-receiving' } }]));
    const c = cluster;
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '8MiB', '--rate', '100', '--disk', '512MiB')).code).toBe(0);
    expect((await c.ferry('vm', 'stop', 'web1')).code).toBe(0);
    scribble(path.join(vmFolder(c, 'host-a', 'web1'), 'disk0.img'), 0, 64 * MiB);
    const moving = c.ferry('migrate', 'web1', '--to', 'host-b', '--cold');
    await vi.waitFor(() => expect(c.agent('host-b').log(), "host-b's log").toContain('fault: stall at cold-receiving'), patiently);
    expect(existsSync(path.join(c.dir, 'host-b', 'staging'))).toBe(true);
    c.agent('host-b').child.kill('SIGKILL');
    const result = await moving;
    expect(result.code).not.toBe(0);
    expect(c.agent('host-a').child.exitCode).toBeNull(); // the source survives its destination's death
    expect(await listed(c)).toEqual([expect.objectContaining({ name: 'web1', host: 'host-a', state: 'defined', epoch: 1 })]);
    await c.restartAgent('host-b');
    expect(existsSync(path.join(c.dir, 'host-b', 'staging'))).toBe(false);
    const again = await c.ferry('migrate', 'web1', '--to', 'host-b', '--cold', '--json');
    expect(again.code, again.stderr).toBe(0);
    expect(await listed(c)).toEqual([expect.objectContaining({ name: 'web1', host: 'host-b', epoch: 2 })]);
  });

  it('takes two cold migrations into one destination at once: both register, neither loses a file', async (context) => {
    const { expect } = context;
    // host-b holds the first stream at its first chunk for 3 s; the second runs and finishes meanwhile.
    const cluster = await clusterFor(context, startCluster([{ name: 'host-a' }, { name: 'host-b', env: { FERRY_FAULTS: 'delay@cold-receiving' } }]));
    const c = cluster;
    const digests: Record<string, string> = {};
    for (const name of ['web1', 'web2']) {
      expect((await c.ferry('vm', 'create', name, '--on', 'host-a', '--memory', '8MiB', '--rate', '100', '--disk', '64MiB')).code).toBe(0);
      expect((await c.ferry('vm', 'stop', name)).code).toBe(0);
      scribble(path.join(vmFolder(c, 'host-a', name), 'disk0.img'), 0, 2 * MiB);
      digests[name] = sha(path.join(vmFolder(c, 'host-a', name), 'disk0.img'));
    }
    const first = c.ferry('migrate', 'web1', '--to', 'host-b', '--cold', '--json');
    await vi.waitFor(() => expect(c.agent('host-b').log(), "host-b's log").toContain('fault: delay at cold-receiving'), patiently);
    const second = await c.ferry('migrate', 'web2', '--to', 'host-b', '--cold', '--json');
    expect(second.code, second.stderr).toBe(0);
    const firstDone = await first;
    expect(firstDone.code, firstDone.stderr).toBe(0);
    expect((await listed(c)).map((vm) => `${vm.name}@${vm.host}`).sort()).toEqual(['web1@host-b', 'web2@host-b']);
    for (const name of ['web1', 'web2']) expect(sha(path.join(vmFolder(c, 'host-b', name), 'disk0.img'))).toBe(digests[name]);
  });
});

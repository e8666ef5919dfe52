/**
 * A pattern VM that writes its disk through the agent's block layer: registers y and m grow, `vm check` compares
 * every block of the image with a replay (and so does the independent checker, test/disk-replay.ts, reading the
 * image file itself while the VM is paused), across pause/resume, suspend and start, and a live migration with
 * the disk on shared storage.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { patiently, startCluster, vmFolder, type TestCluster } from '../harness.js';
import { checkDiskFile } from '../disk-replay.js';

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

interface DiskInfo {
  host: string;
  state: string;
  workload: { seed: number; diskRate?: number; diskWssBlocks?: number };
  cpu: { x: number; n: number; y: number; m: number };
}

async function info(c: TestCluster, name: string): Promise<DiskInfo> {
  const result = await c.ferry('vm', 'info', name, '--json');
  expect(result.code, result.stderr).toBe(0);
  return result.json<DiskInfo>();
}

/** Waits until the VM's disk write count has passed `m`. */
function waitForDiskWrites(c: TestCluster, name: string, m: number): Promise<DiskInfo> {
  return vi.waitFor(async () => {
    const found = await info(c, name);
    expect(found.cpu.m, `${name}'s disk writes`).toBeGreaterThan(m);
    return found;
  }, patiently);
}

async function check(c: TestCluster, name: string): Promise<any> {
  const result = await c.ferry('vm', 'check', name, '--json');
  expect(result.code, `${result.stdout}${result.stderr}`).toBe(0);
  const json = result.json();
  expect(json).toMatchObject({ ok: true, disk: { ok: true, badBlocks: [], registersMatch: true } });
  return json;
}

/** The image file itself, read while the VM is paused, against the independent replay. */
async function checkFile(c: TestCluster, name: string, file: string): Promise<void> {
  expect((await c.ferry('vm', 'pause', name)).code).toBe(0);
  const paused = await info(c, name);
  const result = checkDiskFile(file, { seed: paused.workload.seed, diskWssBlocks: paused.workload.diskWssBlocks, y: paused.cpu.y, m: paused.cpu.m });
  expect(result, `the image of ${name} at m=${paused.cpu.m}`).toMatchObject({ ok: true, badBlocks: [] });
  expect(result.blocksWritten).toBeGreaterThan(0);
  expect((await c.ferry('vm', 'resume', name)).code).toBe(0);
}

describe('disk writes', () => {
  it('writes a checkable disk: y and m grow, vm check passes, after pause/resume and after suspend and start', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    const refusedNoDisk = await c.ferry('vm', 'create', 'x1', '--on', 'host-a', '--memory', '16MiB', '--disk-rate', '100', '--json');
    expect(refusedNoDisk.code).not.toBe(0);
    expect(refusedNoDisk.json().error).toMatchObject({ code: 'FERRY_ERR_BAD_INPUT' });
    expect(refusedNoDisk.json().error.hint).toContain('--disk');
    const refusedKind = await c.ferry('vm', 'create', 'x1', '--on', 'host-a', '--memory', '16MiB', '--workload', 'hotset', '--disk', '1MiB', '--disk-rate', '100', '--json');
    expect(refusedKind.code).not.toBe(0);
    expect(refusedKind.json().error).toMatchObject({ code: 'FERRY_ERR_BAD_INPUT' });
    expect(refusedKind.json().error.message).toContain('pattern');

    const created = await c.ferry('vm', 'create', 'd1', '--on', 'host-a', '--memory', '16MiB', '--rate', '1000', '--seed', '11', '--disk', '64MiB', '--disk-rate', '2000', '--json');
    expect(created.code, created.stderr).toBe(0);
    expect(created.json().workload).toMatchObject({ diskRate: 2000 });
    const first = await waitForDiskWrites(c, 'd1', 0);
    expect(first.cpu.y).toBeGreaterThan(0);
    const later = await waitForDiskWrites(c, 'd1', first.cpu.m + 100);
    expect(later.cpu.y).not.toBe(first.cpu.y);
    const image = path.join(vmFolder(c, 'host-a', 'd1'), 'disk0.img');
    await check(c, 'd1');
    await checkFile(c, 'd1', image);

    // Paused, nothing is written; resumed, it goes on from where it was.
    expect((await c.ferry('vm', 'pause', 'd1')).code).toBe(0);
    const paused = await info(c, 'd1');
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect((await info(c, 'd1')).cpu).toEqual(paused.cpu);
    await check(c, 'd1');
    expect((await c.ferry('vm', 'resume', 'd1')).code).toBe(0);
    await waitForDiskWrites(c, 'd1', paused.cpu.m);
    await check(c, 'd1');

    // Suspended: y and m are saved with the memory; started again, it goes on from them.
    const suspended = await c.ferry('vm', 'suspend', 'd1', '--json');
    expect(suspended.code, suspended.stderr).toBe(0);
    const saved = suspended.json<DiskInfo>();
    expect(saved.state).toBe('suspended');
    expect(saved.cpu.m).toBeGreaterThan(later.cpu.m);
    expect((await info(c, 'd1')).cpu).toMatchObject({ y: saved.cpu.y, m: saved.cpu.m });
    expect(checkDiskFile(image, { seed: 11, y: saved.cpu.y, m: saved.cpu.m }).ok).toBe(true);
    const started = await c.ferry('vm', 'start', 'd1', '--json');
    expect(started.code, started.stderr).toBe(0);
    await waitForDiskWrites(c, 'd1', saved.cpu.m);
    await check(c, 'd1');

    // Powered off and on: memory starts over, the disk does not; the guest writes on from where the disk was left.
    expect((await c.ferry('vm', 'stop', 'd1')).code).toBe(0);
    const off = JSON.parse(readFileSync(path.join(vmFolder(c, 'host-a', 'd1'), 'config.json'), 'utf8')) as { diskRegisters?: { y: number; m: number } };
    expect(off.diskRegisters?.m).toBeGreaterThan(saved.cpu.m);
    expect(checkDiskFile(image, { seed: 11, ...off.diskRegisters! }).ok).toBe(true);
    expect((await c.ferry('vm', 'start', 'd1')).code).toBe(0);
    const rebooted = await info(c, 'd1');
    expect(rebooted.cpu.m).toBeGreaterThanOrEqual(off.diskRegisters!.m);
    await waitForDiskWrites(c, 'd1', off.diskRegisters!.m);
    await check(c, 'd1');
  });

  it('keeps the disk checkable across a live migration with the disk on shared storage (y and m carried)', async () => {
    cluster = await startCluster([]);
    const c = cluster;
    const shared = path.join(c.dir, 'shared');
    await c.addAgent({ name: 'host-a', extraArgs: ['--shared-storage', shared] });
    await c.addAgent({ name: 'host-b', extraArgs: ['--shared-storage', shared] });
    const created = await c.ferry('vm', 'create', 'd2', '--on', 'host-a', '--memory', '16MiB', '--rate', '1000', '--disk', '64MiB', '--disk-rate', '2000', '--disk-wss', '8MiB');
    expect(created.code, created.stderr).toBe(0);
    const before = await waitForDiskWrites(c, 'd2', 200);
    const moved = await c.ferry('migrate', 'd2', '--to', 'host-b', '--verify', 'full', '--json');
    expect(moved.code, `${moved.stdout}${moved.stderr}`).toBe(0);
    const after = await info(c, 'd2');
    expect(after.host).toBe('host-b');
    expect(after.cpu.m).toBeGreaterThanOrEqual(before.cpu.m);
    await waitForDiskWrites(c, 'd2', after.cpu.m);
    const checked = await check(c, 'd2');
    expect(checked.host).toBe('host-b');
    await checkFile(c, 'd2', path.join(shared, 'd2', 'disk0.img'));
  });
});

/**
 * Software images: imported to hosts in checked chunks (holes do not travel), captured from a stopped VM, listed
 * with their holders and verified; cloned into provisioned VMs whose disks match them byte for byte, sent first to a
 * host that lacks them (or that host skipped); the config drive each provisioned VM gets, read by its guest, carried
 * by cold and live migration; and bad input refused with nothing left behind.
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { closeSync, constants, copyFileSync, existsSync, openSync, readFileSync, readSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { formatDigest, hashBytes, initChecksums, streamingHash } from '../../shared/checksum.js';
import { dialAgent } from '../../shared/dial.js';
import { controlOps } from '../../shared/protocol.js';
import { patiently, startCluster, vmFolder, vmInfo, type TestCluster } from '../harness.js';

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});
beforeAll(() => initChecksums());

const MiB = 1024 * 1024;
const sha = (file: string): string => createHash('sha256').update(readFileSync(file)).digest('hex');

/** A 64 MiB disk image: random data at 0, 20 and 50 MiB (1 MiB, 2 MiB, 1.5 MiB), holes everywhere else. */
function makeImageFile(file: string): void {
  writeFileSync(file, '');
  truncateSync(file, 64 * MiB);
  const fd = openSync(file, 'r+');
  for (const [offset, bytes] of [[0, MiB], [20 * MiB, 2 * MiB], [50 * MiB, 1.5 * MiB]] as const) writeSync(fd, randomBytes(bytes), 0, bytes, offset);
  closeSync(fd);
}

const imageDisk = (c: TestCluster, host: string, image: string): string => path.join(c.dir, host, 'images', image, 'disk.img');
/** What an agent keeps staging, and the images it holds: both empty when a refused transfer left nothing behind. */
const leftovers = (c: TestCluster, host: string): string[] => ['staging', 'images']
  .map((folder) => path.join(c.dir, host, folder))
  .flatMap((folder) => (existsSync(folder) ? readdirSync(folder).map((entry) => `${path.basename(folder)}/${entry}`) : []));

/** Whether this file system makes reflinks, asked the way the agent asks (a FICLONE that is refused or not). */
function reflinksHere(folder: string): boolean {
  const probe = path.join(folder, 'reflink-probe');
  writeFileSync(probe, randomBytes(4096));
  try {
    copyFileSync(probe, `${probe}.clone`, constants.COPYFILE_FICLONE_FORCE);
    return true;
  } catch {
    return false;
  } finally {
    rmSync(probe, { force: true });
    rmSync(`${probe}.clone`, { force: true });
  }
}

function writeTemplates(c: TestCluster, templates: object[]): void {
  writeFileSync(path.join(c.dir, 'ferry.templates.json'), JSON.stringify({ templates }));
}

describe('images', () => {
  it('imports an image to two hosts, checked and sparse; skips a host that has it; captures one from a stopped VM; lists holders and verifies', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    const file = path.join(c.dir, 'base.img');
    makeImageFile(file);
    const digest = sha(file);

    const imported = await c.ferry('image', 'import', file, '--name', 'base', '--holds', 'Debian 12, nginx', '--json');
    expect(imported.code, imported.stderr).toBe(0);
    const report = imported.json();
    expect(report).toMatchObject({ image: 'base', bytes: 64 * MiB, holds: 'Debian 12, nginx' });
    expect(report.hosts.map((host: { host: string; outcome: string }) => `${host.host}:${host.outcome}`)).toEqual(['host-a:imported', 'host-b:imported']);
    for (const host of report.hosts) {
      expect(host.bytesSent).toBe(5 * MiB); // only the 1 MiB chunks with data travelled: 1 + 2 + 2 (1.5 MiB spans two)
      expect(host.throughputBytesPerSec).toBeGreaterThan(0);
    }
    for (const host of ['host-a', 'host-b']) {
      const disk = imageDisk(c, host, 'base');
      expect(sha(disk), `${host}'s copy`).toBe(digest);
      expect(statSync(disk).blocks * 512, `${host}'s copy takes only its data`).toBeLessThan(8 * MiB);
      expect(JSON.parse(readFileSync(path.join(path.dirname(disk), 'manifest.json'), 'utf8'))).toMatchObject({
        name: 'base', bytes: 64 * MiB, xxh64: report.xxh64, holds: 'Debian 12, nginx', source: { kind: 'import', file },
      });
    }

    const again = await c.ferry('image', 'import', file, '--name', 'base');
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain(`host-a: skipped, already holds base with the same xxh64 (${report.xxh64})`);
    expect(again.stdout).toContain('host-b: skipped');

    // Capture: refused while the VM runs, made once it is stopped, its disk byte for byte.
    expect((await c.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '8MiB', '--rate', '100', '--disk', '16MiB')).code).toBe(0);
    const running = await c.ferry('image', 'capture', 'web1', '--name', 'web1-disk', '--json');
    expect(running.code).toBe(1);
    expect(running.json().error).toMatchObject({ code: 'FERRY_ERR_VM_STATE' });
    expect(running.json().error.hint).toContain('ferry vm stop web1');
    expect((await c.ferry('vm', 'stop', 'web1')).code).toBe(0);
    const vmDisk = path.join(vmFolder(c, 'host-a', 'web1'), 'disk0.img');
    const fd = openSync(vmDisk, 'r+');
    writeSync(fd, randomBytes(MiB), 0, MiB, 3 * MiB);
    closeSync(fd);
    const captured = await c.ferry('image', 'capture', 'web1', '--name', 'web1-disk', '--holds', 'web1 as built', '--json');
    expect(captured.code, captured.stderr).toBe(0);
    expect(captured.json()).toMatchObject({ host: 'host-a', image: { name: 'web1-disk', bytes: 16 * MiB, source: { kind: 'capture', vm: 'web1', host: 'host-a' } } });
    expect(sha(imageDisk(c, 'host-a', 'web1-disk'))).toBe(sha(vmDisk));

    const listed = (await c.ferry('image', 'list', '--json')).json<{ images: { name: string; xxh64: string; hosts: { host: string }[] }[] }>().images;
    expect(listed.map((image) => [image.name, image.hosts.map((held) => held.host)])).toEqual([['base', ['host-a', 'host-b']], ['web1-disk', ['host-a']]]);
    const table = await c.ferry('image', 'list');
    expect(table.stdout).toMatch(/base\s+64 MiB\s+[0-9a-f]{16}\s+host-a, host-b\s+Debian 12, nginx/);
    expect(table.stdout).toContain('checked when it was imported, sent or captured');

    const verified = await c.ferry('image', 'list', '--verify', '--json');
    expect(verified.code).toBe(0);
    expect(verified.json().images.flatMap((image: { hosts: { verified: { match: boolean } }[] }) => image.hosts.map((held) => held.verified.match))).toEqual([true, true, true]);
    // A copy damaged on disk is found by --verify, and only that one.
    const damaged = openSync(imageDisk(c, 'host-b', 'base'), 'r+');
    writeSync(damaged, Buffer.from('rot'), 0, 3, 20 * MiB + 7);
    closeSync(damaged);
    const found = await c.ferry('image', 'list', '--verify');
    expect(found.code).toBe(1);
    expect(found.stdout).toContain('host-a (verified), host-b (DAMAGED)');

    const removed = await c.ferry('image', 'rm', 'web1-disk');
    expect(removed.stdout).toContain('removed image web1-disk from host-a');
    expect(existsSync(path.join(c.dir, 'host-a', 'images', 'web1-disk'))).toBe(false);
    expect((await c.ferry('image', 'rm', 'web1-disk', '--json')).json().error.code).toBe('FERRY_ERR_IMAGE_NOT_FOUND');
  });

  it('provisions from an image: disk0 matches it byte for byte, a host without it is sent it first (or skipped with --only-holders), and the guest reads its config drive', async () => {
    cluster = await startCluster([{ name: 'host-a', capacity: '256MiB' }, { name: 'host-b', capacity: '1GiB' }]);
    const c = cluster;
    const file = path.join(c.dir, 'base.img');
    makeImageFile(file);
    expect((await c.ferry('image', 'import', file, '--name', 'base', '--on', 'host-a', '--quiet')).code).toBe(0);
    const userData = '#cloud-config\npackages: [nginx]\n';
    writeTemplates(c, [{ name: 'web', memory: '16MiB', workload: 'pattern', rate: 500, image: 'base', userData }]);

    // host-b has the most free memory, but does not hold the image: skipped when only holders will do.
    const holders = await c.ferry('provision', 'web0', '--template', 'web', '--only-holders', '--json');
    expect(holders.code, holders.stderr).toBe(0);
    expect(holders.json()).toMatchObject({ host: 'host-a', skipped: [{ host: 'host-b', reason: 'it does not hold image base (--only-holders)' }] });
    expect(holders.json().imageSent).toBeUndefined();
    expect(existsSync(imageDisk(c, 'host-b', 'base'))).toBe(false);

    const provisioned = await c.ferry('provision', 'web1', '--template', 'web', '--ip', '10.9.0.5/24', '--json');
    expect(provisioned.code, provisioned.stderr).toBe(0);
    const info = provisioned.json();
    expect(info).toMatchObject({ name: 'web1', host: 'host-b', skipped: [], imageSent: { from: 'host-a', bytes: 64 * MiB, bytesSent: 5 * MiB } });
    expect(info.image).toMatchObject({ name: 'base', cloneMethod: reflinksHere(c.dir) ? 'reflink' : 'sparse-copy' });
    expect(info.image.cloneMs).toBeGreaterThan(0);
    const disk = path.join(vmFolder(c, 'host-b', 'web1'), 'disk0.img');
    expect(sha(disk), 'disk0.img against the imported file').toBe(sha(file));
    expect(sha(imageDisk(c, 'host-b', 'base')), 'the copy sent to host-b').toBe(sha(file));

    // The config drive: one flat file in the VM's folder, shown by vm info, read by the guest at boot.
    const drive = JSON.parse(readFileSync(path.join(vmFolder(c, 'host-b', 'web1'), 'cidata.json'), 'utf8'));
    expect(drive).toEqual({
      'meta-data': { 'instance-id': expect.stringMatching(/^iid-[0-9a-f]{16}$/), 'local-hostname': 'web1' },
      'network-config': { address: '10.9.0.5', prefix: 24, gateway: info.network.gateway, mac: info.network.mac },
      'user-data': userData,
    });
    const shown = await vmInfo(c, 'web1') as unknown as Record<string, unknown>;
    expect(shown).toMatchObject({ configDrive: drive, guest: { hostname: 'web1' }, image: { name: 'base' } });
    const text = await c.ferry('vm', 'info', 'web1');
    expect(text.stdout).toMatch(/config drive\s+cidata\.json: hostname web1, instance iid-[0-9a-f]{16}, 10\.9\.0\.5\/24/);
    expect(text.stdout).toMatch(/image\s+disk0\.img cloned from base .* by (sparse copy|reflink)/);
    expect(text.stdout).toMatch(/guest\s+hostname web1 \(read from its config drive at boot\)/);

    const human = await c.ferry('provision', 'web2', '--template', 'web', '--quiet');
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout).toMatch(/disk0\.img cloned from image base by (sparse copy|reflink)/);
    expect(human.stdout).not.toContain('sent to'); // both hosts hold it now

    const missing = await c.ferry('provision', 'web3', '--template', 'nothing', '--json');
    expect(missing.code).toBe(2);
    writeTemplates(c, [{ name: 'ghost', memory: '16MiB', workload: 'idle', image: 'no-such-image' }]);
    const ghost = await c.ferry('provision', 'web3', '--template', 'ghost', '--json');
    expect(ghost.json().error).toMatchObject({ code: 'FERRY_ERR_IMAGE_NOT_FOUND' });
    expect(ghost.json().error.hint).toContain('ferry image import FILE --name no-such-image');
  });

  it('carries the config drive and what the guest took from it through a live and a cold migration and a suspend; guest memory still matches replay', async () => {
    cluster = await startCluster([]);
    const c = cluster;
    const shared = path.join(c.dir, 'shared');
    await c.addAgent({ name: 'host-a', extraArgs: ['--shared-storage', shared] });
    await c.addAgent({ name: 'host-b', extraArgs: ['--shared-storage', shared] });
    const file = path.join(c.dir, 'base.img');
    makeImageFile(file);
    expect((await c.ferry('image', 'import', file, '--name', 'base', '--on', 'host-a', '--quiet')).code).toBe(0);
    writeTemplates(c, [{ name: 'web', memory: '16MiB', workload: 'pattern', rate: 2000, image: 'base', userData: 'hello' }]);
    expect((await c.ferry('provision', 'web1', '--template', 'web', '--on', 'host-a', '--ip', '10.9.0.7/24', '--quiet')).code).toBe(0);
    // Disks on shared storage stay put, so the VM can move live.
    expect(sha(path.join(shared, 'web1', 'disk0.img'))).toBe(sha(file));
    const drive = readFileSync(path.join(vmFolder(c, 'host-a', 'web1'), 'cidata.json'), 'utf8');

    const live = await c.ferry('migrate', 'web1', '--to', 'host-b', '--verify', 'full', '--json');
    expect(live.code, live.stderr).toBe(0);
    await vi.waitFor(() => expect(existsSync(path.join(vmFolder(c, 'host-b', 'web1'), 'cidata.json')), 'cidata.json on host-b').toBe(true), patiently);
    expect(readFileSync(path.join(vmFolder(c, 'host-b', 'web1'), 'cidata.json'), 'utf8')).toBe(drive);
    expect(await vmInfo(c, 'web1')).toMatchObject({ host: 'host-b', guest: { hostname: 'web1' }, configDrive: JSON.parse(drive) });
    const checked = await c.ferry('vm', 'check', 'web1', '--json');
    expect(checked.json(), checked.stderr).toMatchObject({ ok: true });

    expect((await c.ferry('vm', 'stop', 'web1')).code).toBe(0);
    const cold = await c.ferry('migrate', 'web1', '--to', 'host-a', '--cold', '--json');
    expect(cold.code, cold.stderr).toBe(0);
    expect(cold.json().files.map((entry: { file: string }) => entry.file)).toContain('cidata.json');
    expect(readFileSync(path.join(vmFolder(c, 'host-a', 'web1'), 'cidata.json'), 'utf8')).toBe(drive);
    expect((await c.ferry('vm', 'start', 'web1')).code).toBe(0);
    expect(await vmInfo(c, 'web1')).toMatchObject({ host: 'host-a', state: 'running', guest: { hostname: 'web1' } });
    // A suspended guest does not boot again: what it took from the drive is kept with its saved state.
    expect((await c.ferry('vm', 'suspend', 'web1')).code).toBe(0);
    expect(JSON.parse(readFileSync(path.join(vmFolder(c, 'host-a', 'web1'), 'suspend.json'), 'utf8')).guest).toEqual({ hostname: 'web1' });
    expect((await c.ferry('vm', 'start', 'web1')).code).toBe(0);
    expect(await vmInfo(c, 'web1')).toMatchObject({ state: 'running', guest: { hostname: 'web1' } });
  });

  it('names the holder when it dies while it sends the image during a provision, and the destination keeps nothing', async () => {
    cluster = await startCluster([
      { name: 'host-a', capacity: '256MiB' },
      { name: 'host-b', capacity: '1GiB', env: { FERRY_FAULTS: 'delay@image-finishing' } },
    ]);
    const c = cluster;
    const file = path.join(c.dir, 'small.img');
    writeFileSync(file, randomBytes(2 * MiB));
    expect((await c.ferry('image', 'import', file, '--name', 'base', '--on', 'host-a', '--quiet')).code).toBe(0);
    writeTemplates(c, [{ name: 'web', memory: '16MiB', workload: 'pattern', rate: 500, image: 'base' }]);

    const provisioning = c.ferry('provision', 'web1', '--template', 'web', '--json');
    // host-b holds its finish; the holder dies meanwhile.
    await vi.waitFor(() => expect(c.agent('host-b').log(), "host-b's log").toContain('fault: delay at image-finishing'), patiently);
    c.agent('host-a').child.kill('SIGKILL');
    const failed = await provisioning;
    expect(failed.code, failed.stderr).toBe(3);
    const { error } = failed.json();
    expect(error.code).toBe('FERRY_ERR_CONNECTION_LOST');
    expect(error.message).toContain('sending image base from host-a, which holds it, to host-b');
    expect(error.hint).toContain('host-a stopped answering');
    await vi.waitFor(() => expect(leftovers(c, 'host-b'), "host-b's staging and images").toEqual([]), patiently);
  });

  it('with a host down: rm removes the image from the others and names the host it could not, list --json names it, an import report claims checks only where they were made', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    const file = path.join(c.dir, 'small.img');
    writeFileSync(file, randomBytes(2 * MiB));
    for (const name of ['base', 'other']) expect((await c.ferry('image', 'import', file, '--name', name, '--quiet')).code).toBe(0);
    await c.agent('host-b').stop(2000);

    const listed = await c.ferry('image', 'list', '--json');
    expect(listed.code, 'a host down is said, and the listing of the others stands').toBe(0);
    expect(listed.json().images.map((image: { name: string; hosts: { host: string }[] }) => [image.name, image.hosts.map((held) => held.host)])).toEqual([['base', ['host-a']], ['other', ['host-a']]]);
    expect(listed.json().unreachable).toEqual([{ host: 'host-b', error: expect.objectContaining({ code: 'FERRY_ERR_UNREACHABLE' }) }]);
    expect(listed.stderr).toContain('host-b did not answer');

    const again = await c.ferry('image', 'import', file, '--name', 'base', '--quiet');
    expect(again.stdout).toContain('host-a: skipped');
    expect(again.stdout).toContain('host-b: FERRY_ERR_UNREACHABLE');
    expect(again.stdout, 'no host checked anything').not.toContain('checked each chunk');
    const third = await c.ferry('image', 'import', file, '--name', 'third', '--quiet');
    expect(third.stdout).toContain('host-a checked each chunk and the whole file');
    expect(third.stdout).not.toContain('every host');

    const removed = await c.ferry('image', 'rm', 'base');
    expect(removed.code, removed.stderr).toBe(3);
    expect(removed.stdout).toContain('removed image base from host-a');
    expect(removed.stdout).toContain('could not remove image base from host-b: FERRY_ERR_UNREACHABLE');
    expect(existsSync(path.join(c.dir, 'host-a', 'images', 'base'))).toBe(false);
    const removedJson = await c.ferry('image', 'rm', 'other', '--json');
    expect(removedJson.code).toBe(3);
    expect(removedJson.json()).toMatchObject({ image: 'other', removedFrom: ['host-a'], failed: [{ host: 'host-b', error: { code: 'FERRY_ERR_UNREACHABLE' } }] });
  });

  it('refuses bad names, damaged chunks, chunks past the end and truncated imports, leaving nothing behind', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    const file = path.join(c.dir, 'base.img');
    makeImageFile(file);
    for (const name of ['../escape', 'a/b', '..']) {
      const refused = await c.ferry('image', 'import', file, '--name', name, '--json');
      expect(refused.code, name).toBe(2);
      expect(refused.json().error.code).toBe('FERRY_ERR_BAD_INPUT');
    }
    expect(leftovers(c, 'host-a')).toEqual([]);

    // A raw client on /control, speaking the image ops directly.
    const client = await dialAgent({ url: c.agent('host-a').url, path: '/control', token: c.token }, controlOps);
    try {
      const image = { name: 'base', bytes: 2 * MiB, holds: '', source: { kind: 'import' as const, file: 'x' }, createdAt: new Date().toISOString() };
      const refusal = (promise: Promise<unknown>): Promise<unknown> => promise.then(() => 'accepted', (error: { code: string }) => error.code);
      const data = new Uint8Array(randomBytes(MiB));
      const good = formatDigest(hashBytes(data));
      const whole = streamingHash();
      whole.update(data);
      whole.update(data);
      const twice = formatDigest(whole.digest()); // of a 2 MiB file holding `data` twice

      expect(await refusal(client.request('image.begin', { transferId: randomUUID(), image: { ...image, name: '..' } }))).toBe('FERRY_ERR_BAD_INPUT');
      expect(await refusal(client.request('image.begin', { transferId: '../../etc', image }))).toBe('FERRY_ERR_BAD_INPUT');

      const damaged = randomUUID();
      expect(await refusal(client.request('image.begin', { transferId: damaged, image }))).toBe('accepted');
      expect(leftovers(c, 'host-a')).toEqual([`staging/${damaged}`]);
      expect(await refusal(client.request('image.chunk', { transferId: damaged, offset: 0, data, xxh64: good.replace(/^./, (d) => (d === '0' ? '1' : '0')) }))).toBe('FERRY_ERR_CHECKSUM_MISMATCH');
      expect(leftovers(c, 'host-a')).toEqual([]);

      const pastEnd = randomUUID();
      await client.request('image.begin', { transferId: pastEnd, image });
      expect(await refusal(client.request('image.chunk', { transferId: pastEnd, offset: 1.5 * MiB, data, xxh64: good }))).toBe('FERRY_ERR_BAD_INPUT');
      expect(leftovers(c, 'host-a')).toEqual([]);

      // Truncated: the second half never sent, then a finish with the whole file's digest.
      const truncated = randomUUID();
      await client.request('image.begin', { transferId: truncated, image });
      await client.request('image.chunk', { transferId: truncated, offset: 0, data, xxh64: good });
      expect(await refusal(client.request('image.finish', { transferId: truncated, xxh64: twice }))).toBe('FERRY_ERR_CHECKSUM_MISMATCH');
      expect(leftovers(c, 'host-a')).toEqual([]);

      // The same transfer, whole, is registered: the refusals above were about the bytes, not the requests.
      const whole2 = randomUUID();
      await client.request('image.begin', { transferId: whole2, image });
      await client.request('image.chunk', { transferId: whole2, offset: 0, data, xxh64: good });
      await client.request('image.chunk', { transferId: whole2, offset: MiB, data, xxh64: good });
      expect((await client.request('image.finish', { transferId: whole2, xxh64: twice })).image).toMatchObject({ name: 'base', xxh64: twice });
      expect(leftovers(c, 'host-a')).toEqual(['images/base']);

      // A connection that closes mid-transfer leaves nothing staged.
      const cut = randomUUID();
      await client.request('image.begin', { transferId: cut, image: { ...image, name: 'cut' } });
      await client.request('image.chunk', { transferId: cut, offset: 0, data, xxh64: good });
      expect(leftovers(c, 'host-a')).toEqual([`staging/${cut}`, 'images/base']);
    } finally {
      client.close();
    }
    await vi.waitFor(() => expect(leftovers(c, 'host-a'), 'after the connection closed').toEqual(['images/base']), patiently);
  });
});

/** The xxh64 of `bytes` zeros, computed here in the test (a disk that is all holes). */
function zerosDigest(bytes: number): string {
  const whole = streamingHash();
  const zeros = new Uint8Array(MiB);
  for (let offset = 0; offset < bytes; offset += MiB) whole.update(zeros.subarray(0, Math.min(MiB, bytes - offset)));
  return formatDigest(whole.digest());
}

describe('the image receiver', () => {
  const refusal = (promise: Promise<unknown>): Promise<unknown> => promise.then(() => 'accepted', (error: { code: string }) => error.code);
  const manifest = (name: string, bytes: number) => ({ name, bytes, holds: '', source: { kind: 'import' as const, file: 'x' }, createdAt: new Date().toISOString() });
  /** An image of holes: its finish re-reads all of it, which a closed connection should cut short. */
  const BIG = 256 * MiB;
  /** The finish held for 3 s before it sizes and checks the disk (agent/faults.ts), so a test acts while it runs. */
  const holdFinish = { env: { FERRY_FAULTS: 'delay@image-finishing' } };
  const finishHeld = (c: TestCluster): Promise<void> => vi.waitFor(() => expect(c.agent('host-a').log(), "host-a's log").toContain('fault: delay at image-finishing'), patiently);

  it('refuses a chunk sent during image.finish as a protocol error, and the finish goes on to register the image', async () => {
    cluster = await startCluster([{ name: 'host-a', ...holdFinish }]);
    const c = cluster;
    const client = await dialAgent({ url: c.agent('host-a').url, path: '/control', token: c.token }, controlOps);
    try {
      const transferId = randomUUID();
      await client.request('image.begin', { transferId, image: manifest('holes', BIG) });
      const finishing = client.request('image.finish', { transferId, xxh64: zerosDigest(BIG) });
      finishing.catch(() => undefined); // awaited below; a failure before that is the test's, not unhandled
      await finishHeld(c);
      const data = new Uint8Array(randomBytes(MiB));
      const late = await client.request('image.chunk', { transferId, offset: 0, data, xxh64: formatDigest(hashBytes(data)) }).then(() => undefined, (error: { code: string; message: string }) => error);
      expect(late, 'the late chunk').toMatchObject({ code: 'FERRY_ERR_PROTOCOL' });
      expect((await finishing).image).toMatchObject({ name: 'holes', bytes: BIG });
      expect(leftovers(c, 'host-a')).toEqual(['images/holes']);
      const first = Buffer.alloc(MiB);
      const fd = openSync(imageDisk(c, 'host-a', 'holes'), 'r');
      readSync(fd, first, 0, MiB, 0);
      closeSync(fd);
      expect(first.equals(Buffer.alloc(MiB)), 'the late chunk did not land').toBe(true);
    } finally {
      client.close();
    }
  });

  it('stops a finish whose connection closes, removes its staging folder only then, registers nothing, and logs it', async () => {
    cluster = await startCluster([{ name: 'host-a', logLevel: 'info', ...holdFinish }]);
    const c = cluster;
    const client = await dialAgent({ url: c.agent('host-a').url, path: '/control', token: c.token }, controlOps);
    try {
      const transferId = randomUUID();
      await client.request('image.begin', { transferId, image: manifest('cut', BIG) });
      // The right digest: had the finish gone on past the close, it would have registered the image.
      const finishing = client.request('image.finish', { transferId, xxh64: zerosDigest(BIG) });
      finishing.catch(() => undefined); // the connection closes under it
      await finishHeld(c);
    } finally {
      client.close();
    }
    // While the finish is held, its staging folder stays: nothing is removed under a step under way.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(leftovers(c, 'host-a'), 'while the finish is held').toHaveLength(1);
    // The line comes once the finish has stopped and the folder is gone.
    await vi.waitFor(() => expect(c.agent('host-a').log(), 'host-a\'s log').toMatch(/"image":"cut".*"msg":"image transfer abandoned: its connection closed/), patiently);
    expect(leftovers(c, 'host-a')).toEqual([]);
    expect(c.agent('host-a').log()).not.toContain('refused');
  });

  it('refuses at begin an image larger than the datastore\'s free space, and a fifth transfer on one connection', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    const client = await dialAgent({ url: c.agent('host-a').url, path: '/control', token: c.token }, controlOps);
    try {
      const huge = await client.request('image.begin', { transferId: randomUUID(), image: manifest('huge', 2 ** 50) }).then(() => undefined, (error: { code: string; message: string; hint?: string }) => error);
      expect(huge).toMatchObject({ code: 'FERRY_ERR_CAPACITY' });
      expect(huge!.message).toMatch(/host-a has .* free in its datastore, and image huge is 1024 TiB/);
      expect(huge!.hint).toContain('ferry image rm');
      expect(leftovers(c, 'host-a')).toEqual([]);

      const ids = [randomUUID(), randomUUID(), randomUUID(), randomUUID()];
      for (const [index, transferId] of ids.entries()) await client.request('image.begin', { transferId, image: manifest(`open${index}`, MiB) });
      const fifth = await client.request('image.begin', { transferId: randomUUID(), image: manifest('open4', MiB) }).then(() => undefined, (error: { code: string; message: string }) => error);
      expect(fifth).toMatchObject({ code: 'FERRY_ERR_CAPACITY' });
      expect(fifth!.message).toContain('already has 4 image transfers under way');
      expect(leftovers(c, 'host-a').sort()).toEqual(ids.map((id) => `staging/${id}`).sort());
    } finally {
      client.close();
    }
    await vi.waitFor(() => expect(leftovers(c, 'host-a'), 'after the connection closed').toEqual([]), patiently);
  });

  it('registers an image that arrived meanwhile under the same name and digest once, and refuses another digest', async () => {
    cluster = await startCluster([{ name: 'host-a' }]);
    const c = cluster;
    const client = await dialAgent({ url: c.agent('host-a').url, path: '/control', token: c.token }, controlOps);
    try {
      const data = new Uint8Array(randomBytes(MiB));
      const chunk = { offset: 0, data, xxh64: formatDigest(hashBytes(data)) };
      const digest = formatDigest(hashBytes(data)); // of a 1 MiB file holding `data`
      // Two transfers of one image that cross: an import and a provisioning's send.
      const [first, second] = [randomUUID(), randomUUID()];
      await client.request('image.begin', { transferId: first, image: manifest('base', MiB) });
      await client.request('image.begin', { transferId: second, image: manifest('base', MiB) });
      for (const transferId of [first, second]) await client.request('image.chunk', { transferId, ...chunk });
      const registered = (await client.request('image.finish', { transferId: first, xxh64: digest })).image;
      expect((await client.request('image.finish', { transferId: second, xxh64: digest })).image).toEqual(registered);
      expect(leftovers(c, 'host-a')).toEqual(['images/base']);

      // Begun once it is here: accepted when the sender says it is the same digest, refused otherwise.
      const same = randomUUID();
      expect(await refusal(client.request('image.begin', { transferId: same, image: manifest('base', MiB), xxh64: digest }))).toBe('accepted');
      await client.request('image.chunk', { transferId: same, ...chunk });
      expect((await client.request('image.finish', { transferId: same, xxh64: digest })).image).toEqual(registered);
      const other = await client.request('image.begin', { transferId: randomUUID(), image: manifest('base', MiB), xxh64: '0123456789abcdef' }).then(() => undefined, (error: { code: string; message: string }) => error);
      expect(other).toMatchObject({ code: 'FERRY_ERR_IMAGE_EXISTS' });
      expect(other!.message).toContain(`xxh64 ${digest} here, 0123456789abcdef arriving`);
      expect(await refusal(client.request('image.begin', { transferId: randomUUID(), image: manifest('base', MiB) }))).toBe('FERRY_ERR_IMAGE_EXISTS');

      // Crossing with another digest: the second finish is refused, the first image stands.
      const [third, fourth] = [randomUUID(), randomUUID()];
      await client.request('image.begin', { transferId: third, image: manifest('next', MiB) });
      await client.request('image.begin', { transferId: fourth, image: manifest('next', MiB) });
      await client.request('image.chunk', { transferId: third, ...chunk });
      await client.request('image.finish', { transferId: third, xxh64: digest });
      expect(await refusal(client.request('image.finish', { transferId: fourth, xxh64: zerosDigest(MiB) }))).toBe('FERRY_ERR_IMAGE_EXISTS');
      expect(leftovers(c, 'host-a').sort()).toEqual(['images/base', 'images/next']);
    } finally {
      client.close();
    }
  });
});

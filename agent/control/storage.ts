/**
 * `storage.move`: Storage vMotion on this host. A running (or paused) VM's disk moves between the datastore and the
 * shared storage while the guest writes it (agent/storage/disk-copy.ts copies it through the disk's block backend):
 *
 *   copy      the target is made as a hole of the disk's size, beside where it will live (`<file>.tmp`); the copy
 *             runs to ready (mirror: a write-blocking mirror and one bulk pass; iterate: dirty-block rounds)
 *   pause     the vCPU pauses; the last blocks go (iterate); the sink is synced; per-block digests are compared
 *             (and, with `verify: full`, both whole images hashed)
 *   switch    the target is renamed into place, the backend writes there from now on, config.json says where the
 *             disk is; the vCPU resumes; then the old copy is deleted
 *
 * Until the switch the disk is where it was and the guest writes it there; any failure removes the partial copy and
 * resumes the vCPU, so the VM runs on as before.
 */
import { mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { formatDigest } from '../../shared/checksum.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import type { StorageMoveReport } from '../../shared/protocol.js';
import type { Agent, ControlServer } from '../agent.js';
import { DiskCopy } from '../storage/disk-copy.js';
import { faultPoint } from '../faults.js';
import { hashFile } from '../../shared/file-chunks.js';
import { FileSink } from '../storage/file-sink.js';

export function serveStorageControl(connection: ControlServer, agent: Agent): void {
  connection.handle('storage.move', async ({ name, to, mode, verify, maxDowntimeMs, maxBandwidthBytesPerSec }, context) => {
    const files = agent.files;
    if (!files?.shared) {
      throw new FerryError(ErrorCode.BAD_INPUT, `${agent.name} mounts no shared storage to move disks to or from`, 'start the agent with --shared-storage DIR (the same path on every host)');
    }
    return agent.catalog.exclusive(name, 'storage move', async (vm, cancelled): Promise<StorageMoveReport> => {
      const startedMs = performance.now();
      const disk = vm.disks[0];
      if (!disk) throw new FerryError(ErrorCode.VM_STATE, `${name} has no disk`, 'give a VM a disk when making it: --disk 1GiB');
      const from = disk.shared ? 'shared' : 'local';
      if (from === to) throw new FerryError(ErrorCode.VM_STATE, `${name}'s ${disk.file} is already on ${to === 'shared' ? 'shared storage' : `${agent.name}'s datastore`}`, `nothing to move; \`ferry storage move ${name} --to ${to === 'shared' ? 'local' : 'shared'}\` moves it back`);
      if (vm.disks.length > 1) throw new FerryError(ErrorCode.VM_STATE, `${name} has ${vm.disks.length} disks; storage move moves a VM with one`, 'move it cold instead');
      const backend = vm.disk0;
      if (!backend) throw new FerryError(ErrorCode.VM_STATE, `${name}'s disk has no block backend on ${agent.name}`, 'start the VM first: a powered-off VM\'s files move cold');

      const source = backend.file;
      const target = files.diskPath(name, { file: disk.file, shared: to === 'shared' });
      // `.tmp`: what an agent that died mid-copy finds at its start is removed (Datastore.recover).
      const staging = `${target}.tmp`;
      await mkdir(path.dirname(target), { recursive: true });
      const before = backend.latency(true);
      const sink = await FileSink.create(staging, disk.sizeBytes, agent.faults?.fullDiskAfterBytes);
      const copy = new DiskCopy(backend, sink, {
        mode, maxDowntimeMs, maxRounds: 30, maxBandwidthBytesPerSec: maxBandwidthBytesPerSec ?? 0, signal: cancelled,
        onProgress: (progress) => {
          void context.event({ file: disk.file, ...progress });
          // Armed switches fire once (faults.ts): this one at the copy's first progress.
          void faultPoint(agent.faults, 'storage-copying', agent.log, () => undefined);
        },
      });
      const wasRunning = vm.state === 'running';
      let paused = false;
      let switched = false;
      let pauseMs = 0;
      try {
        await agent.logEvent(name, `storage move of ${disk.file} to ${to} (${mode}) started`);
        await copy.toReady();
        // Most of the copy reaches stable storage before the pause, so the pause syncs only its last blocks; iterate
        // mode then catches up with what the guest wrote during that sync.
        await sink.sync();
        await copy.catchUp();
        const during = backend.latency(true);
        const pausedAtMs = performance.now();
        if (wasRunning) {
          await vm.pause();
          paused = true;
        }
        await copy.finishPaused();
        await sink.sync();
        const sourceDigest = formatDigest(copy.sourceTableDigest());
        const destDigest = formatDigest(await sink.tableDigest());
        await sink.close();
        const images = verify === 'full' ? { sourceImageDigest: (await hashFile(source)).xxh64, destImageDigest: (await hashFile(staging)).xxh64 } : undefined;
        const match = sourceDigest === destDigest && (!images || images.sourceImageDigest === images.destImageDigest);
        if (!match) {
          throw new FerryError(ErrorCode.CHECKSUM_MISMATCH, `the copy of ${name}'s ${disk.file} does not match (${images ? `images ${images.sourceImageDigest} / ${images.destImageDigest}` : `block digests ${sourceDigest} / ${destDigest}`})`, 'the disk stays where it was; check the storage and retry');
        }
        // The switch: the file in place, the guest's writes going there, the config saying so.
        await rename(staging, target);
        await backend.retarget(target);
        disk.shared = to === 'shared' ? true : undefined;
        switched = true;
        await files.writeConfig(agent.configOf(vm));
        if (paused) await vm.resume();
        paused = false;
        pauseMs = performance.now() - pausedAtMs;
        copy.close();
        await rm(source, { force: true });
        const result = copy.result();
        await agent.logEvent(name, `storage move of ${disk.file} to ${to} done: ${result.bytesSent} bytes copied, paused ${pauseMs.toFixed(1)} ms`);
        return {
          vm: name, host: agent.name, from, to, mode,
          disks: [{ file: disk.file, ...result }],
          verification: { mode: verify, match, sourceDigest, destDigest, ...(images ?? {}) },
          pauseMs,
          totalTimeMs: performance.now() - startedMs,
          writeLatency: {
            before: { count: before.count, p50Ms: before.p50Ms, p99Ms: before.p99Ms },
            during: { count: during.count, p50Ms: during.p50Ms, p99Ms: during.p99Ms },
          },
        };
      } catch (error) {
        copy.close();
        if (!switched) {
          await sink.close().catch(() => undefined);
          await rm(staging, { force: true });
          await agent.logEvent(name, `storage move of ${disk.file} to ${to} failed, the disk stays where it was: ${(error as Error).message}`);
        }
        throw error;
      } finally {
        if (paused) await vm.resume();
      }
    });
  });
}

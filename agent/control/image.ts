/**
 * The coordinator's requests about the images this agent holds (datastore/images.ts): list, capture from a
 * powered-off VM's disk, verify, remove, and send one to another agent. Receiving one (an import, or another agent's
 * send) is peer/image-target.ts, on both kinds of connection.
 */
import { randomUUID } from 'node:crypto';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { hashFile } from '../../shared/file-chunks.js';
import { sendImage } from '../../shared/image-transfer.js';
import type { ImageManifest } from '../../shared/protocol.js';
import type { Agent, ControlServer } from '../agent.js';
import { sparseCopy } from '../datastore/clone.js';
import type { Datastore } from '../datastore/datastore.js';

function datastoreOf(agent: Agent): Datastore {
  if (!agent.files) throw new FerryError(ErrorCode.VM_STATE, `${agent.name} keeps no files, and so no images`, 'run the agent with --datastore');
  return agent.files;
}

export function serveImageControl(connection: ControlServer, agent: Agent): void {
  const { catalog, log } = agent;

  connection.handle('image.list', async () => {
    const { images, unreadable } = await datastoreOf(agent).images.list();
    for (const { name, error } of unreadable) log.warn('an image folder cannot be read; it is left for a person to look at', { image: name, error });
    return { images };
  });

  connection.handle('image.capture', async ({ vm, name, holds }) => {
    const files = datastoreOf(agent);
    const running = catalog.findMachine(vm);
    if (running) {
      throw new FerryError(ErrorCode.VM_STATE, `${vm} is ${running.state}: an image is captured from a powered-off VM, whose disk nothing writes`, `stop it first: \`ferry vm stop ${vm}\``);
    }
    return catalog.holdStored(vm, 'image capture', async (stored) => {
      if (stored.suspended) {
        throw new FerryError(ErrorCode.VM_STATE, `${vm} is suspended: its guest was stopped mid-run, with its disk in whatever state it left it`, `power it on and off first: \`ferry vm start ${vm}\`, then \`ferry vm stop ${vm}\``);
      }
      const disk = stored.config.disks[0];
      if (!disk) throw new FerryError(ErrorCode.BAD_INPUT, `${vm} has no disk to capture`, 'capture a VM created with a disk (--disk, or a template)');
      if (await files.images.find(name)) throw files.images.exists(name);
      const startedMs = performance.now();
      const transferId = randomUUID();
      await files.images.stage(transferId);
      let image: ImageManifest;
      try {
        const copied = await sparseCopy(files.diskPath(vm, disk), files.images.stagedDisk(transferId));
        image = {
          name, bytes: copied.bytes, xxh64: copied.xxh64, holds: holds ?? `the disk of ${vm}`,
          source: { kind: 'capture', vm, host: agent.name }, createdAt: new Date().toISOString(),
        };
        await files.images.register(transferId, image);
      } catch (error) {
        await files.images.unstage(transferId);
        throw error;
      }
      await agent.logEvent(vm, `${disk.file} captured as image ${name} (xxh64 ${image.xxh64})`);
      log.info('image captured', { image: name, vm, bytes: image.bytes });
      return { image, durationMs: performance.now() - startedMs };
    });
  });

  connection.handle('image.verify', async ({ name }) => {
    const files = datastoreOf(agent);
    const startedMs = performance.now();
    const manifest = await files.images.get(name, agent.name);
    const { bytes, xxh64 } = await hashFile(files.images.diskPath(name));
    return { xxh64, match: bytes === manifest.bytes && xxh64 === manifest.xxh64, durationMs: performance.now() - startedMs };
  });

  connection.handle('image.remove', async ({ name }) => {
    const removed = await datastoreOf(agent).images.remove(name);
    if (removed) log.info('image removed', { image: name });
    return { removed };
  });

  connection.handle('image.send', async ({ name, destination }, context) => {
    const files = datastoreOf(agent);
    if (destination.name === agent.name) throw new FerryError(ErrorCode.BAD_INPUT, `${agent.name} cannot send ${name} to itself`, 'pick another destination');
    const { xxh64, ...image } = await files.images.get(name, agent.name);
    const peer = await agent.dial(destination.url);
    try {
      const sent = await sendImage(peer, files.images.diskPath(name), image, {
        expectedXxh64: xxh64,
        onProgress: (progress) => void context.event(progress),
        signal: context.signal,
      });
      log.info('image sent', { image: name, to: destination.name, bytesSent: sent.bytesSent, durationMs: sent.durationMs });
      return { bytes: image.bytes, bytesSent: sent.bytesSent, durationMs: sent.durationMs };
    } finally {
      peer.close();
    }
  });
}

/**
 * Receiving an image (shared/image-transfer.ts has the sender and the three requests): from another agent on /peer,
 * and from the coordinator's `ferry image import` on /control, with the same handlers, so an import is checked the
 * way an agent-to-agent transfer is.
 *
 * What stays true: nothing is registered under images/ until its whole-file digest matched; a transfer that fails
 * (a damaged chunk, a chunk outside the image, a short or wrong file, a closed connection) removes its staging folder
 * at once, so it leaves nothing behind; leftovers of a crash go when the agent restarts (Datastore.recover).
 */
import { ErrorCode, FerryError, toFerryError } from '../../shared/errors.js';
import type { ImageManifest, ImageReceiveOps, ReplyOf, RequestOf } from '../../shared/protocol.js';
import type { Handler } from '../../shared/rpc.js';
import { formatBytes } from '../../shared/units.js';
import type { Agent } from '../agent.js';
import { faultPoint } from '../faults.js';
import { IMAGE_DISK, type ImageStore } from '../datastore/images.js';
import { StagedReceiver } from '../datastore/staged-receiver.js';

/** The part of a /control or /peer connection this needs. */
export interface ImageReceiverConnection {
  readonly signal: AbortSignal;
  close(): void;
  handle<K extends keyof ImageReceiveOps & string>(op: K, handler: Handler<ImageReceiveOps, K>): void;
}

const RETRY = 'nothing was kept; send the image again';

/**
 * Image transfers one connection may have open at once. A sender needs one (the coordinator and image.send send one
 * image at a time); a few allow for pipelining, and the cap keeps a peer from opening staging folders without end.
 */
export const MAX_TRANSFERS_PER_CONNECTION = 4;

/** One image arriving, from `image.begin` to `image.finish`: a StagedReceiver of one file, the image's disk. */
class ImageTransfer {
  readonly id: string;
  readonly image: Omit<ImageManifest, 'xxh64'>;
  readonly receiver: StagedReceiver;
  private readonly images: ImageStore;

  constructor(images: ImageStore, id: string, image: Omit<ImageManifest, 'xxh64'>, signal: AbortSignal) {
    this.images = images;
    this.id = id;
    this.image = image;
    this.receiver = new StagedReceiver(images.datastore, id, {
      label: `image ${image.name}`,
      retryHint: RETRY,
      busy: () => new FerryError(ErrorCode.VM_STATE, `transfer ${id} is already under way here`, 'start a new transfer (a new id)'),
    }, signal);
  }

  async chunk({ offset, data, xxh64 }: RequestOf<ImageReceiveOps, 'image.chunk'>): Promise<void> {
    if (offset + data.length > this.image.bytes) {
      throw new FerryError(ErrorCode.BAD_INPUT, `a chunk of image ${this.image.name} at ${offset} (${data.length} bytes) ends past its ${this.image.bytes} bytes`, RETRY);
    }
    await this.receiver.write(IMAGE_DISK, { offset, data, xxh64 });
  }

  /** `beforeSeal` runs once the finish began (a fault point for tests). */
  finish(xxh64: string, beforeSeal: () => Promise<void>): Promise<{ image: ImageManifest; kept: boolean }> {
    return this.receiver.finish([IMAGE_DISK], async () => {
      await beforeSeal();
      await this.receiver.seal(IMAGE_DISK, { bytes: this.image.bytes, xxh64 }, `image ${this.image.name}`);
      return this.images.register(this.id, { ...this.image, xxh64 });
    });
  }
}

export function serveImageReceiver(connection: ImageReceiverConnection, agent: Agent): void {
  const { log } = agent;
  const transfers = new Map<string, ImageTransfer>();

  const find = (id: string): ImageTransfer => {
    const transfer = transfers.get(id);
    if (!transfer) throw new FerryError(ErrorCode.PROTOCOL, `no image transfer ${id} under way on this connection (it failed, finished, or never began)`, 'begin a new transfer with image.begin');
    return transfer;
  };

  /** Ends a transfer that was refused: what it staged goes (once a finish under way has ended). */
  const refuse = async (transfer: ImageTransfer, error: unknown): Promise<void> => {
    transfers.delete(transfer.id);
    if (connection.signal.aborted) return; // the close handler abandons it, and says so
    log.warn('image transfer refused; its staging folder is removed', { image: transfer.image.name, transfer: transfer.id, error: toFerryError(error).message });
    await transfer.receiver.abandon();
  };

  connection.signal.addEventListener('abort', () => {
    for (const transfer of transfers.values()) {
      // Waits for a finish under way (which stops, its signal aborted) before removing anything.
      transfer.receiver.abandon().then(
        () => {
          if (transfer.receiver.phase === 'abandoned') log.info('image transfer abandoned: its connection closed; its staging folder is removed', { image: transfer.image.name, transfer: transfer.id });
        },
        (error: unknown) => log.warn('could not remove an abandoned image transfer\'s staging folder; the agent removes it when it restarts', { image: transfer.image.name, transfer: transfer.id, error: String(error) }),
      );
    }
    transfers.clear();
  }, { once: true });

  connection.handle('image.begin', async ({ transferId, image, xxh64 }) => {
    const files = agent.files;
    if (!files) throw new FerryError(ErrorCode.VM_STATE, `${agent.name} keeps no files`, 'run the agent with --datastore');
    if (transfers.has(transferId)) throw new FerryError(ErrorCode.PROTOCOL, `image transfer ${transferId} is already under way`, 'begin a new transfer (a new id)');
    if (transfers.size >= MAX_TRANSFERS_PER_CONNECTION) {
      throw new FerryError(ErrorCode.CAPACITY, `this connection already has ${transfers.size} image transfers under way, the most one may have`, 'finish one before beginning another, or open another connection');
    }
    // The disk may be sparse, but nothing from the network says how sparse: room for all of it, or no transfer.
    const freeBytes = await files.freeBytes();
    if (image.bytes > freeBytes) {
      throw new FerryError(
        ErrorCode.CAPACITY,
        `${agent.name} has ${formatBytes(freeBytes)} free in its datastore, and image ${image.name} is ${formatBytes(image.bytes)}`,
        'free space there (`ferry image rm` images no VM needs, destroy VMs), or send the image to another host (--on)',
      );
    }
    const held = await files.images.find(image.name);
    // Same name, same digest: the transfer goes ahead and its copy is dropped at registration (ImageStore.register).
    if (held && held.xxh64 !== xxh64) throw files.images.exists(image.name, held.xxh64, xxh64);
    // Closed during the awaits above: the close handler has run, and would never hear of this transfer.
    connection.signal.throwIfAborted();
    const transfer = new ImageTransfer(files.images, transferId, image, connection.signal);
    // Known to the close handler before the first await: a connection that closes while the staging folder is made
    // still has it removed.
    transfers.set(transferId, transfer);
    try {
      await transfer.receiver.begin();
    } catch (error) {
      transfers.delete(transferId);
      await transfer.receiver.abandon();
      throw error;
    }
    log.info('receiving an image', { image: image.name, bytes: image.bytes, transfer: transferId });
    return {};
  });

  connection.handle('image.chunk', async (request) => {
    const transfer = find(request.transferId);
    try {
      await transfer.chunk(request);
    } catch (error) {
      // A chunk after the finish began is refused, and the finish goes on: it is the finish that decides.
      if (transfer.receiver.phase === 'receiving') await refuse(transfer, error);
      throw error;
    }
    return {};
  });

  connection.handle('image.finish', async ({ transferId, xxh64 }): Promise<ReplyOf<ImageReceiveOps, 'image.finish'>> => {
    const transfer = find(transferId);
    if (transfer.receiver.phase !== 'receiving') {
      throw new FerryError(ErrorCode.PROTOCOL, `image transfer ${transferId} is already ${transfer.receiver.phase}`, 'finish a transfer once');
    }
    let registered: { image: ImageManifest; kept: boolean };
    try {
      registered = await transfer.finish(xxh64, () => faultPoint(agent.faults, 'image-finishing', log, () => connection.close()));
    } catch (error) {
      await refuse(transfer, error);
      throw error;
    }
    transfers.delete(transferId);
    log.info(registered.kept ? 'image registered' : 'image arrived, and the same image (name and xxh64) was already here: the copy that arrived is dropped', { image: registered.image.name, bytes: registered.image.bytes, xxh64 });
    return { image: registered.image };
  });
}

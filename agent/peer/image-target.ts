/**
 * Receiving an image (shared/image-transfer.ts has the sender and the three requests): from another agent on /peer,
 * and from the coordinator's `ferry image import` on /control, with the same handlers, so an import is checked the
 * way an agent-to-agent transfer is.
 *
 * What stays true: nothing is registered under images/ until its whole-file digest matched; a transfer that fails
 * (a damaged chunk, a chunk outside the image, a short or wrong file, a closed connection) removes its staging folder
 * at once, so it leaves nothing behind; leftovers of a crash go when the agent restarts (Datastore.recover).
 */
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { checkChunk, sealFile } from '../../shared/file-chunks.js';
import type { ImageManifest, ImageReceiveOps, ReplyOf, RequestOf } from '../../shared/protocol.js';
import type { Handler } from '../../shared/rpc.js';
import type { Agent } from '../agent.js';
import type { ImageStore } from '../datastore/images.js';

/** The part of a /control or /peer connection this needs. */
export interface ImageReceiverConnection {
  readonly signal: AbortSignal;
  handle<K extends keyof ImageReceiveOps & string>(op: K, handler: Handler<ImageReceiveOps, K>): void;
}

const RETRY = 'nothing was kept; send the image again';

/** One image arriving, from `image.begin` to `image.finish`. */
class ImageTransfer {
  readonly id: string;
  readonly image: Omit<ImageManifest, 'xxh64'>;
  private readonly images: ImageStore;
  private disk: FileHandle | undefined;
  /** Whether this transfer made its staging folder (and so may remove it). */
  private staged = false;

  constructor(images: ImageStore, id: string, image: Omit<ImageManifest, 'xxh64'>) {
    this.images = images;
    this.id = id;
    this.image = image;
  }

  async begin(): Promise<void> {
    if (await this.images.find(this.image.name)) throw this.images.exists(this.image.name);
    await this.images.stage(this.id);
    this.staged = true;
    this.disk = await open(this.images.stagedDisk(this.id), constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o600);
  }

  async chunk({ offset, data, xxh64 }: RequestOf<ImageReceiveOps, 'image.chunk'>): Promise<void> {
    if (offset + data.length > this.image.bytes) {
      throw new FerryError(ErrorCode.BAD_INPUT, `a chunk of image ${this.image.name} at ${offset} (${data.length} bytes) ends past its ${this.image.bytes} bytes`, RETRY);
    }
    checkChunk({ offset, data, xxh64 }, `image ${this.image.name}`, RETRY);
    await this.disk!.write(data, 0, data.length, offset);
  }

  async finish(xxh64: string): Promise<ImageManifest> {
    await this.disk?.close();
    this.disk = undefined;
    await sealFile(this.images.stagedDisk(this.id), { bytes: this.image.bytes, xxh64 }, `image ${this.image.name}`, RETRY);
    const manifest: ImageManifest = { ...this.image, xxh64 };
    await this.images.register(this.id, manifest);
    return manifest;
  }

  async abandon(): Promise<void> {
    await this.disk?.close().catch(() => undefined); // already closed by a finish that failed: nothing to release
    this.disk = undefined;
    if (this.staged) await this.images.unstage(this.id);
  }
}

export function serveImageReceiver(connection: ImageReceiverConnection, agent: Agent): void {
  const { log } = agent;
  const transfers = new Map<string, ImageTransfer>();

  /** Runs a step of transfer `id`; a step that fails ends the transfer and removes what it staged. */
  const step = async <T>(id: string, action: (transfer: ImageTransfer) => Promise<T>): Promise<T> => {
    const transfer = transfers.get(id);
    if (!transfer) throw new FerryError(ErrorCode.PROTOCOL, `no image transfer ${id} under way on this connection (it failed, finished, or never began)`, 'begin a new transfer with image.begin');
    try {
      return await action(transfer);
    } catch (error) {
      transfers.delete(id);
      await transfer.abandon();
      log.warn('image transfer refused; its staging folder is removed', { image: transfer.image.name, transfer: id, error: (error as Error).message });
      throw error;
    }
  };

  connection.signal.addEventListener('abort', () => {
    for (const transfer of transfers.values()) {
      transfer.abandon().catch((error: unknown) => log.warn('could not remove an abandoned image transfer\'s staging folder; the agent removes it when it restarts', { image: transfer.image.name, error: String(error) }));
    }
    transfers.clear();
  }, { once: true });

  connection.handle('image.begin', async ({ transferId, image }) => {
    const files = agent.files;
    if (!files) throw new FerryError(ErrorCode.VM_STATE, `${agent.name} keeps no files`, 'run the agent with --datastore');
    if (transfers.has(transferId)) throw new FerryError(ErrorCode.PROTOCOL, `image transfer ${transferId} is already under way`, 'begin a new transfer (a new id)');
    const transfer = new ImageTransfer(files.images, transferId, image);
    try {
      await transfer.begin();
    } catch (error) {
      await transfer.abandon();
      throw error;
    }
    transfers.set(transferId, transfer);
    log.info('receiving an image', { image: image.name, bytes: image.bytes, transfer: transferId });
    return {};
  });

  connection.handle('image.chunk', async (request) => {
    await step(request.transferId, (transfer) => transfer.chunk(request));
    return {};
  });

  connection.handle('image.finish', async ({ transferId, xxh64 }): Promise<ReplyOf<ImageReceiveOps, 'image.finish'>> => {
    const image = await step(transferId, (transfer) => transfer.finish(xxh64));
    transfers.delete(transferId);
    log.info('image registered', { image: image.name, bytes: image.bytes, xxh64 });
    return { image };
  });
}

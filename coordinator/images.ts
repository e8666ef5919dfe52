/**
 * The coordinator's side of images: import a file to every host (or some), capture one from a powered-off VM, list
 * which hosts hold which (checked again with --verify), remove, and have a host that holds one send it to a host
 * that lacks it. The bytes go coordinator -> agent only for an import (a file that is only here); otherwise agent ->
 * agent (shared/image-transfer.ts on both paths).
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { initChecksums } from '../shared/checksum.js';
import { MAX_DISK_BYTES } from '../shared/constants.js';
import { ErrorCode, FerryError, toFerryError, type ErrorPayload } from '../shared/errors.js';
import { hashFile } from '../shared/file-chunks.js';
import { sendImage, type ImageTransferProgress } from '../shared/image-transfer.js';
import { imageNameSchema, type ImageManifest } from '../shared/protocol.js';
import { formatBytes, formatDuration, formatRate } from '../shared/units.js';
import { findHost, type Cluster, type HostEntry } from './cluster.js';
import { openHost, withHost, type AgentClient } from './connect.js';
import { locateVm } from './inventory.js';
import { formatTable } from './output.js';
import { checkVmName } from './vm-spec.js';

export function checkImageName(name: string): string {
  const parsed = imageNameSchema.safeParse(name);
  if (!parsed.success) {
    throw new FerryError(ErrorCode.BAD_INPUT, `"${name}" is not a valid image name: ${parsed.error.issues[0]?.message}`, 'for example: --name ubuntu-24.04');
  }
  return parsed.data;
}

/** The hosts named by --on, else every host of the cluster. */
function targetHosts(cluster: Cluster, on: string[] | undefined): HostEntry[] {
  const hosts = on && on.length > 0 ? on.map((name) => findHost(cluster, name)) : cluster.hosts;
  if (hosts.length === 0) throw new FerryError(ErrorCode.HOST_NOT_FOUND, 'the cluster file has no hosts', 'add one with `ferry hosts add host-a ws://127.0.0.1:7001`');
  return hosts;
}

export interface ImageHostResult {
  host: string;
  outcome: 'imported' | 'skipped' | 'failed';
  /** Why it was skipped, in words. */
  reason?: string;
  error?: ErrorPayload;
  /** Bytes of the image, holes included. */
  bytes: number;
  /** Bytes that travelled; chunks of zeros do not. */
  bytesSent: number;
  durationMs: number;
  /** Image bytes moved per second. */
  throughputBytesPerSec: number;
}

export interface ImportReport {
  image: string;
  file: string;
  bytes: number;
  /** The whole-file digest every host checked (undefined if no host got the image). */
  xxh64?: string;
  holds: string;
  hosts: ImageHostResult[];
}

/**
 * `ferry image import`: sends `file` to each host in turn, in checked chunks over the control connection. A host that
 * already holds an image of that name with the same digest is skipped; one whose image of that name differs is
 * refused (IMAGE_EXISTS). One host failing does not stop the others; the report says which.
 */
export async function importImage(
  cluster: Cluster,
  request: { file: string; name: string; holds?: string | undefined; on?: string[] | undefined },
  onProgress?: (host: string, progress: ImageTransferProgress) => void,
): Promise<ImportReport> {
  const name = checkImageName(request.name);
  const file = path.resolve(request.file);
  const facts = await stat(file).catch((error: NodeJS.ErrnoException) => {
    throw new FerryError(ErrorCode.BAD_INPUT, `cannot read ${file}: ${error.code ?? error.message}`, 'give the path of a disk image file');
  });
  if (!facts.isFile()) throw new FerryError(ErrorCode.BAD_INPUT, `${file} is not a regular file`, 'give the path of a disk image file');
  if (facts.size === 0 || facts.size > MAX_DISK_BYTES) {
    throw new FerryError(ErrorCode.BAD_INPUT, `${file} is ${formatBytes(facts.size)}: an image is 1 byte to ${formatBytes(MAX_DISK_BYTES)}`, 'give the path of a disk image file');
  }
  const holds = request.holds ?? '';
  const hosts = targetHosts(cluster, request.on);
  await initChecksums();
  const image: Omit<ImageManifest, 'xxh64'> = { name, bytes: facts.size, holds, source: { kind: 'import', file }, createdAt: new Date().toISOString() };
  const report: ImportReport = { image: name, file, bytes: facts.size, holds, hosts: [] };
  const base = { bytes: facts.size, bytesSent: 0, durationMs: 0, throughputBytesPerSec: 0 };
  // The file's digest, needed before sending only to tell whether a host that has an image of this name has this one.
  let digest: string | undefined;
  for (const host of hosts) {
    const startedMs = performance.now();
    let client: AgentClient | undefined;
    try {
      client = (await openHost(host)).client;
      const held = (await client.request('image.list', {})).images.find((entry) => entry.name === name);
      if (held) {
        digest ??= (await hashFile(file)).xxh64;
        if (held.xxh64 === digest) {
          report.hosts.push({ host: host.name, outcome: 'skipped', reason: `already holds ${name} with the same xxh64 (${digest})`, ...base });
          continue;
        }
        throw new FerryError(ErrorCode.IMAGE_EXISTS, `${host.name} holds another image named ${name} (xxh64 ${held.xxh64}, this file's is ${digest})`, `remove it there first (\`ferry image rm ${name} --on ${host.name}\`), or import under another --name`);
      }
      const sent = await sendImage(client, file, image, { onProgress: (progress) => onProgress?.(host.name, progress) });
      digest ??= sent.image.xxh64;
      report.hosts.push({
        host: host.name, outcome: 'imported', bytes: facts.size, bytesSent: sent.bytesSent, durationMs: sent.durationMs,
        throughputBytesPerSec: (facts.size / Math.max(sent.durationMs, 0.001)) * 1000,
      });
    } catch (error) {
      report.hosts.push({ host: host.name, outcome: 'failed', error: toFerryError(error).toPayload(), ...base, durationMs: performance.now() - startedMs });
    } finally {
      client?.close();
    }
  }
  if (digest !== undefined) report.xxh64 = digest;
  return report;
}

export function formatImportReport(report: ImportReport): string {
  const lines = [`image ${report.image}: ${formatBytes(report.bytes)} from ${report.file}${report.xxh64 ? ` (xxh64 ${report.xxh64})` : ''}`];
  if (report.holds) lines.push(`  holds: ${report.holds}`);
  const rows = [['HOST', 'OUTCOME', 'BYTES', 'SENT', 'TIME', 'THROUGHPUT']];
  for (const result of report.hosts) {
    if (result.outcome === 'imported') {
      rows.push([result.host, 'imported, checked', formatBytes(result.bytes), formatBytes(result.bytesSent), formatDuration(result.durationMs), formatRate(result.throughputBytesPerSec)]);
    } else {
      rows.push([result.host, result.outcome, '-', '-', '-', '-']);
    }
  }
  lines.push('', ...formatTable(rows, [2, 3, 4, 5]).split('\n').map((line) => `  ${line}`), '');
  for (const result of report.hosts) {
    if (result.outcome === 'skipped') lines.push(`  ${result.host}: skipped, ${result.reason}`);
    if (result.error) lines.push(`  ${result.host}: ${result.error.code}: ${result.error.message}${result.error.hint ? `\n    hint: ${result.error.hint}` : ''}`);
  }
  // Said of the hosts that got the image, and only when some did: a skipped or failed host checked nothing.
  const imported = report.hosts.filter((result) => result.outcome === 'imported').map((result) => result.host);
  if (imported.length === report.hosts.length) {
    lines.push('  chunks of zeros were not sent (they are holes on each host); every host checked each chunk and the whole file');
  } else if (imported.length > 0) {
    lines.push(`  chunks of zeros were not sent (they are holes there); ${imported.join(', ')} checked each chunk and the whole file`);
  }
  return lines.join('\n');
}

/** `ferry image capture`: image `name` from powered-off VM `vm`'s first disk, on the VM's host. */
export async function captureImage(cluster: Cluster, request: { vm: string; name: string; holds?: string | undefined }): Promise<{ host: string; image: ImageManifest; durationMs: number }> {
  const name = checkImageName(request.name);
  const { host } = await locateVm(cluster, checkVmName(request.vm));
  const captured = await withHost(host, (client) => client.request('image.capture', { vm: request.vm, name, ...(request.holds !== undefined ? { holds: request.holds } : {}) }));
  return { host: host.name, ...captured };
}

export interface ListedImage {
  name: string;
  bytes: number;
  xxh64: string;
  holds: string;
  source: ImageManifest['source'];
  createdAt: string;
  /** The hosts that hold this image (this name with this digest); with --verify, what re-reading each copy found. */
  hosts: { host: string; allocatedBytes: number; verified?: { match: boolean; xxh64: string; durationMs: number } }[];
}

/**
 * Every image of every host that answers, one entry per name and digest (two hosts whose images share a name but
 * not a digest give two entries). With `verify`, each host re-reads each of its copies against its manifest.
 */
/** A host that did not answer, and why. */
export interface UnreachableHost {
  host: string;
  error: ErrorPayload;
}

export async function listImages(cluster: Cluster, verify: boolean): Promise<{ images: ListedImage[]; unreachable: UnreachableHost[] }> {
  const images = new Map<string, ListedImage>();
  const unreachable: UnreachableHost[] = [];
  await Promise.all(cluster.hosts.map(async (host) => {
    try {
      await withHost(host, async (client) => {
        const held = (await client.request('image.list', {})).images;
        for (const image of held) {
          const verified = verify ? await client.request('image.verify', { name: image.name }) : undefined;
          const key = `${image.name}\0${image.xxh64}`;
          const entry = images.get(key) ?? {
            name: image.name, bytes: image.bytes, xxh64: image.xxh64, holds: image.holds, source: image.source, createdAt: image.createdAt, hosts: [],
          };
          entry.hosts.push({ host: host.name, allocatedBytes: image.allocatedBytes, ...(verified ? { verified } : {}) });
          images.set(key, entry);
        }
      });
    } catch (error) {
      unreachable.push({ host: host.name, error: toFerryError(error).toPayload() });
    }
  }));
  const order = cluster.hosts.map((host) => host.name);
  const listed = [...images.values()].sort((a, b) => a.name.localeCompare(b.name) || a.xxh64.localeCompare(b.xxh64));
  for (const image of listed) image.hosts.sort((a, b) => order.indexOf(a.host) - order.indexOf(b.host));
  unreachable.sort((a, b) => order.indexOf(a.host) - order.indexOf(b.host));
  return { images: listed, unreachable };
}

export function formatImageList(images: ListedImage[], verify: boolean): string {
  if (images.length === 0) return 'no images: add one with `ferry image import FILE --name NAME`';
  const names = new Map<string, number>();
  for (const image of images) names.set(image.name, (names.get(image.name) ?? 0) + 1);
  const rows = [['NAME', 'SIZE', 'XXH64', 'HOSTS', 'HOLDS']];
  for (const image of images) {
    const hosts = image.hosts.map((held) => `${held.host}${held.verified ? (held.verified.match ? ' (verified)' : ' (DAMAGED)') : ''}`).join(', ');
    rows.push([`${image.name}${(names.get(image.name) ?? 0) > 1 ? ' (differs between hosts)' : ''}`, formatBytes(image.bytes), image.xxh64, hosts, image.holds || '-']);
  }
  const note = verify
    ? 'every copy was re-read and its xxh64 compared with its manifest'
    : 'each copy was checked when it was imported, sent or captured; --verify re-reads them';
  return `${formatTable(rows, [1])}\n${note}`;
}

export interface RemovalReport {
  image: string;
  /** Hosts that held the image and no longer do. */
  removedFrom: string[];
  /** Hosts that were asked and did not hold it. */
  notHeldBy: string[];
  /** Hosts that could not be asked, or refused. */
  failed: UnreachableHost[];
}

/**
 * `ferry image rm`: removes image `name` from the hosts named (default: every host that holds it). Each host is
 * asked in turn, and one that fails does not stop the others: the report says where it went and where it could not
 * be removed. IMAGE_NOT_FOUND only when every host answered and none held it.
 */
export async function removeImage(cluster: Cluster, name: string, on: string[] | undefined): Promise<RemovalReport> {
  checkImageName(name);
  const hosts = targetHosts(cluster, on);
  const report: RemovalReport = { image: name, removedFrom: [], notHeldBy: [], failed: [] };
  for (const host of hosts) {
    try {
      const { removed } = await withHost(host, (client) => client.request('image.remove', { name }));
      (removed ? report.removedFrom : report.notHeldBy).push(host.name);
    } catch (error) {
      report.failed.push({ host: host.name, error: toFerryError(error).toPayload() });
    }
  }
  if (report.removedFrom.length === 0 && report.failed.length === 0) {
    throw new FerryError(ErrorCode.IMAGE_NOT_FOUND, `no image named ${name} on ${hosts.map((host) => host.name).join(', ')}`, 'run `ferry image list` to see which hosts hold which images');
  }
  return report;
}

export function formatRemovalReport(report: RemovalReport): string {
  const lines: string[] = [];
  if (report.removedFrom.length > 0) lines.push(`removed image ${report.image} from ${report.removedFrom.join(', ')}`);
  for (const { host, error } of report.failed) {
    lines.push(`could not remove image ${report.image} from ${host}: ${error.code}: ${error.message}${error.hint ? `\n  hint: ${error.hint}` : ''}`);
  }
  if (report.failed.length > 0) lines.push(`run \`ferry image rm ${report.image} --on ${report.failed.map((failed) => failed.host).join(' ')}\` again once ${report.failed.length > 1 ? 'they answer' : 'it answers'}`);
  return lines.join('\n');
}

/**
 * Has `from`, which holds image `name`, send it to `to`; resolves once `to` has checked and registered it. A failure
 * names both hosts: the coordinator speaks only to `from`, so an error about its connection would otherwise not say
 * which host stopped.
 */
export async function sendImageBetween(from: HostEntry, to: HostEntry, name: string, onProgress?: (progress: ImageTransferProgress) => void): Promise<{ bytes: number; bytesSent: number; durationMs: number }> {
  try {
    return await withHost(from, (client) => client.request(
      'image.send',
      { name, destination: { name: to.name, url: to.migrationUrl ?? to.url } },
      { onEvent: (body) => onProgress?.(body as ImageTransferProgress) },
    ));
  } catch (error) {
    const failure = toFerryError(error);
    const holderLost = failure.code === ErrorCode.UNREACHABLE || failure.code === ErrorCode.CONNECTION_LOST || failure.code === ErrorCode.TIMEOUT;
    throw new FerryError(
      failure.code,
      `sending image ${name} from ${from.name}, which holds it, to ${to.name}: ${failure.message}`,
      holderLost
        ? `${from.name} stopped answering, and ${to.name} kept nothing of the transfer: try again once ${from.name} is back, or import the image to ${to.name} (\`ferry image import FILE --name ${name} --on ${to.name}\`)`
        : failure.hint,
      { cause: error },
    );
  }
}

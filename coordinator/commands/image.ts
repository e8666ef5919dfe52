/**
 * `ferry image ...`: the command line of images (coordinator/images.ts does the work).
 */
import type { Command } from 'commander';
import { FerryError } from '../../shared/errors.js';
import { formatBytes, formatDuration } from '../../shared/units.js';
import type { Cluster } from '../cluster.js';
import { captureImage, formatImageList, formatImportReport, formatRemovalReport, importImage, listImages, removeImage } from '../images.js';
import { ExitCode, exitCodeFor, printJson } from '../output.js';
import { imageProgress } from '../progress.js';

/** Adds `ferry image` to `program`; `clusterOf` gives the cluster, with tokens, for a command. */
export function addImageCommands(program: Command, clusterOf: (command: Command) => Promise<{ cluster: Cluster }>): void {
  const image = program.command('image').description('disk images with a manifest, held by each host, cloned into VMs by provisioning');

  image.command('import <file>')
    .description('send a disk image file to every host (or --on some): checked 1 MiB chunks, zeros as holes, a whole-file digest at the end')
    .requiredOption('--name <name>', 'the image\'s name (1-63 letters, digits, dots, dashes, underscores)')
    .option('--holds <text>', 'what it holds, in words: operating system, drivers, middleware, applications')
    .option('--on <host...>', 'only these hosts (default: every host of the cluster)')
    .option('--json', 'print the report as JSON')
    .option('--quiet', 'no progress on stderr')
    .action(async (file: string, options: { name: string; holds?: string; on?: string[]; json?: boolean; quiet?: boolean }, command: Command) => {
      const { cluster } = await clusterOf(command);
      const progress = options.quiet ? undefined : imageProgress();
      const report = await importImage(cluster, { file, name: options.name, holds: options.holds, on: options.on }, (host, event) => progress?.onProgress(host, event))
        .finally(() => progress?.finish());
      if (options.json) printJson(report);
      else process.stdout.write(`${formatImportReport(report)}\n`);
      const failed = report.hosts.find((host) => host.outcome === 'failed');
      process.exitCode = failed?.error ? exitCodeFor(FerryError.fromPayload(failed.error)) : ExitCode.OK;
    });

  image.command('capture <vm>')
    .description('make an image from a powered-off VM\'s first disk, on that VM\'s host')
    .requiredOption('--name <name>', 'the image\'s name')
    .option('--holds <text>', 'what it holds, in words')
    .option('--json', 'print JSON')
    .action(async (vm: string, options: { name: string; holds?: string; json?: boolean }, command: Command) => {
      const { cluster } = await clusterOf(command);
      const captured = await captureImage(cluster, { vm, name: options.name, holds: options.holds });
      if (options.json) printJson(captured);
      else process.stdout.write(`captured ${vm}'s disk as image ${captured.image.name} on ${captured.host}: ${formatBytes(captured.image.bytes)}, xxh64 ${captured.image.xxh64}, in ${formatDuration(captured.durationMs)}\n`);
    });

  image.command('list', { isDefault: true })
    .description('every image, its size and digest, and which hosts hold it. Hosts that do not answer are named on stderr '
      + '(and, with --json, in `unreachable`); the listing of the others stands, so the exit status stays 0 for them: '
      + 'it is non-zero only when --verify finds a damaged copy')
    .option('--verify', 're-read every host\'s copy and compare its xxh64 with its manifest')
    .option('--json', 'print JSON')
    .action(async (options: { verify?: boolean; json?: boolean }, command: Command) => {
      const { cluster } = await clusterOf(command);
      const { images, unreachable } = await listImages(cluster, options.verify ?? false);
      if (options.json) printJson({ images, unreachable });
      else process.stdout.write(`${formatImageList(images, options.verify ?? false)}\n`);
      for (const host of unreachable) process.stderr.write(`ferry: ${host.host} did not answer, its images are not listed: ${host.error.message}\n`);
      const damaged = images.some((entry) => entry.hosts.some((held) => held.verified && !held.verified.match));
      process.exitCode = damaged ? ExitCode.FAILED : ExitCode.OK;
    });

  image.command('rm <name>')
    .description('remove an image from every host that holds it, or from --on hosts (VMs cloned from it keep their disks). '
      + 'Each host is handled on its own: the report says where it was removed and where it could not be, and the exit '
      + 'status is non-zero if any host failed')
    .option('--on <host...>', 'only these hosts')
    .option('--json', 'print JSON')
    .action(async (name: string, options: { on?: string[]; json?: boolean }, command: Command) => {
      const { cluster } = await clusterOf(command);
      const report = await removeImage(cluster, name, options.on);
      if (options.json) printJson(report);
      else process.stdout.write(`${formatRemovalReport(report)}\n`);
      const failed = report.failed[0];
      process.exitCode = failed ? exitCodeFor(FerryError.fromPayload(failed.error)) : ExitCode.OK;
    });
}

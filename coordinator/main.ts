#!/usr/bin/env node
/**
 * ferry: the coordinator CLI.
 */
import { CommanderError } from 'commander';
import { toFerryError } from '../shared/errors.js';
import { buildProgram } from './cli.js';
import { ExitCode, exitCodeFor, printError } from './output.js';
import { closeOpenStores } from './store/store.js';

const program = buildProgram();

// A reader that stops early (`ferry bench --help | head`) closes the pipe: what is left unread is not an error.
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code !== 'EPIPE') throw error;
  process.exit(process.exitCode ?? ExitCode.OK);
});

try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof CommanderError) {
    // Commander has printed its own message (usage errors, --help, --version).
    process.exitCode = error.exitCode === 0 ? ExitCode.OK : ExitCode.BAD_INPUT;
  } else {
    const failure = toFerryError(error);
    printError(failure, process.argv.includes('--json'));
    process.exitCode = exitCodeFor(failure);
  }
} finally {
  // An etcd store's lease is revoked here: what this command still held is released at once.
  await closeOpenStores();
}

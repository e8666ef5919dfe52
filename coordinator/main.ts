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

// A reader that stops early (`ferry bench --help | head`) closes the pipe: what is left unread is not an error. The
// command still finishes (releasing what it holds) and sets its own exit code; its later output goes nowhere.
let readerGone = false;
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (readerGone || error.code === 'EPIPE') {
    readerGone = true;
    return;
  }
  throw error;
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

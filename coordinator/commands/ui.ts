/**
 * `ferry ui`: a web page for the cluster this command line sees (coordinator/ui/ does the work), served until Ctrl-C.
 */
import type { Command } from 'commander';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import type { Cluster } from '../cluster.js';
import type { ClusterStore } from '../store/store.js';
import { SIGN_IN_TTL_MS } from '../ui/access.js';
import { startUiServer } from '../ui/server.js';

function port(text: string): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 0 || value > 65535) throw new FerryError(ErrorCode.BAD_INPUT, `--port ${text} is not a port`, 'give 0 to 65535 (0: any free port)');
  return value;
}

export function addUiCommand(program: Command, clusterOf: (command: Command) => Promise<{ cluster: Cluster; store: ClusterStore }>): void {
  program.command('ui')
    .description('serve a web page for the cluster: hosts, VMs, live migrations as they run (with a heat map of guest memory), bench results, actions')
    .option('--port <port>', 'port to listen on (0: any free one)', '8080')
    .option('--host <address>', 'address to listen on; anything but loopback lets other machines ask for the page', '127.0.0.1')
    .option('--bench <folder>', 'where the page looks for `ferry bench` results folders', 'bench-results')
    .addHelpText('after', `
It prints a sign-in link: open it within ${SIGN_IN_TTL_MS / 1000} s, once; it sets a session cookie for that browser. A
browser without it is asked for the cluster token (FERRY_TOKEN), which travels only in a request body, never in a
URL or a log. Every change the page makes (migrate, pause, resume, drain, undrain, balance) needs the session and a
token only this page holds, so another site cannot make one. The page shows what the agents push (events.watch):
the ui never polls an agent. A new sign-in link: press Enter. Stop with Ctrl-C.`)
    .action(async (raw: { port: string; host: string; bench: string }, command: Command) => {
      const { cluster, store } = await clusterOf(command);
      if (cluster.hosts.length === 0) throw new FerryError(ErrorCode.BAD_INPUT, 'the cluster has no hosts', 'add one first: ferry hosts add NAME ws://HOST:PORT');
      const server = await startUiServer({ host: raw.host, port: port(raw.port), cluster, store, benchRoot: raw.bench });
      process.stdout.write(`ferry ui: ${server.url} (${cluster.hosts.length} host${cluster.hosts.length === 1 ? '' : 's'})\n`);
      process.stdout.write(`sign in (once, within ${SIGN_IN_TTL_MS / 1000} s): ${server.signInUrl()}\n`);
      const onLine = (): void => {
        process.stdout.write(`sign in (once, within ${SIGN_IN_TTL_MS / 1000} s): ${server.signInUrl()}\n`);
      };
      if (process.stdin.isTTY) process.stdin.on('data', onLine);
      await new Promise<void>((resolve) => {
        const stop = (): void => resolve();
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
      process.stdin.off('data', onLine);
      process.stdin.pause();
      await server.close();
    });
}

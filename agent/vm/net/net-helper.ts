/**
 * The namespaces mode's hands: a small process, started with the agent, that runs `ip` and `arping` for it.
 *
 * Why a process of its own: starting a program from the agent means forking the agent, and a fork copies the page
 * tables of all guest memory the agent maps. Measured here, a spawn from a process that maps 512 MiB takes 25-50 ms
 * against 2-4 ms from a small one, and the fork holds the agent's main thread meanwhile: at the pause it would stall
 * the last pages, at activation the address. This process maps no guest memory, so its forks stay cheap.
 *
 * Protocol (Node IPC, one JSON message each way): {id, command, args} runs `command` (only `ip` and `arping`) and
 * answers {id, code, stderr} when it exits; {cancel: tag} kills the running programs started with that tag.
 * It exits when the agent goes (its IPC channel closes).
 */
import { spawn, type ChildProcess } from 'node:child_process';

interface Request {
  id: number;
  command: 'ip' | 'arping';
  args: string[];
  tag?: string;
}

const running = new Map<ChildProcess, string | undefined>();

process.on('message', (message: Request | { cancel: string }) => {
  if ('cancel' in message) {
    for (const [child, tag] of running) if (tag === message.cancel) child.kill();
    return;
  }
  const { id, command, args, tag } = message;
  if (command !== 'ip' && command !== 'arping') {
    process.send?.({ id, code: 127, stderr: `not a command this helper runs: ${String(command)}` });
    return;
  }
  const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  running.set(child, tag);
  let stderr = '';
  let answered = false;
  const answer = (code: number, text: string): void => {
    running.delete(child);
    if (answered) return;
    answered = true;
    process.send?.({ id, code, stderr: text });
  };
  child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  child.on('error', (error) => answer(127, error.message));
  child.on('close', (code, signal) => answer(code ?? (signal ? 128 : 1), stderr));
});
process.on('disconnect', () => {
  for (const child of running.keys()) child.kill();
  process.exit(0);
});

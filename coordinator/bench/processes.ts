/**
 * Child processes for the benchmark: run a node script (optionally inside a network namespace) and read the JSON
 * lines it prints.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { projectRoot } from './scenarios.js';

export interface JsonLineProcess {
  child: ChildProcess;
  /** Resolves with the first JSON line whose `event` is `event` (also one printed just before the child exited). */
  next<T>(event: string, timeoutMs?: number): Promise<T>;
  stop(): Promise<void>;
}

/** The compiled benchmark helper `name` (tcp-probe, service-probe), run as a script of its own. */
export function benchScript(name: string): string {
  return path.join(projectRoot(), 'dist', 'coordinator', 'bench', `${name}.js`);
}

/** `ip netns exec NS node ...` when `netns` is given, else `node ...`. */
export function nodeCommand(script: string, args: string[], netns?: string): [string, string[]] {
  return netns ? ['ip', ['netns', 'exec', netns, process.execPath, script, ...args]] : [process.execPath, [script, ...args]];
}

export function startJsonLines(command: string, args: string[]): JsonLineProcess {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: Record<string, unknown>[] = [];
  const waiters: (() => void)[] = [];
  let stderr = '';
  let buffered = '';
  child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  child.stdout!.setEncoding('utf8').on('data', (text: string) => {
    buffered += text;
    let newline: number;
    while ((newline = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      try {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // not ours: ignore
      }
      for (const wake of waiters.splice(0)) wake();
    }
  });
  // 'close', not 'exit': a child's last lines may still be in its stdout pipe when it exits.
  let closed = false;
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  void exited.then(() => {
    closed = true;
    for (const wake of waiters.splice(0)) wake();
  });
  return {
    child,
    next: async <T>(event: string, timeoutMs = 120_000): Promise<T> => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = lines.find((line) => line.event === event);
        if (found) return found as T;
        if (closed) {
          throw new FerryError(ErrorCode.INTERNAL, `${command} ${args.join(' ')} exited before "${event}": ${stderr.trim()}`);
        }
        if (Date.now() > deadline) throw new FerryError(ErrorCode.TIMEOUT, `no "${event}" from ${args.join(' ')} within ${timeoutMs} ms`);
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 200);
        });
      }
    },
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

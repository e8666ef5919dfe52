/**
 * Starts ferry-agent processes on this machine, on ports the OS picks: for the demo, the benchmark and the tests.
 * An agent is ready when it prints its JSON `ready` line; that is raced against its early exit and a timeout, so
 * a broken agent fails fast with its own stderr in the error.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { AGENT_NODE_FLAGS } from '../shared/constants.js';
import { ErrorCode, FerryError } from '../shared/errors.js';

/** The compiled agent: beside this file when it runs from dist/, under dist/ when it runs from source (tests). */
function agentEntry(): string {
  const compiled = fileURLToPath(new URL('../agent/main.js', import.meta.url));
  if (existsSync(compiled)) return compiled;
  const fromSource = fileURLToPath(new URL('../dist/agent/main.js', import.meta.url));
  if (existsSync(fromSource)) return fromSource;
  throw new FerryError(ErrorCode.IO, 'the compiled agent was not found', 'run `npm run build` first');
}

export interface LocalAgentOptions {
  name: string;
  capacity?: string;
  datastore?: string;
  logLevel?: string;
  /** Address to bind (default 127.0.0.1). */
  host?: string;
  /** Port to listen on (default 0: the OS picks one). */
  port?: number;
  /** Run the agent inside this network namespace (`ip netns exec`; needs root). */
  netns?: string;
  /** More command-line arguments, e.g. --tls-cert and --tls-key. */
  extraArgs?: string[];
  /** The cluster's shared secret, given to the agent as FERRY_TOKEN. */
  token?: string;
  /** Extra environment, e.g. FERRY_FAULTS. */
  env?: Record<string, string>;
  readyTimeoutMs?: number;
}

export interface LocalAgent {
  name: string;
  url: string;
  pid: number;
  child: ChildProcess;
  /** What the agent has written to stderr so far (its log). */
  log(): string;
  /** SIGTERM, then SIGKILL if it has not exited after `graceMs`. Resolves once it has exited. */
  stop(graceMs?: number): Promise<void>;
  exited: Promise<number | null>;
}

export async function startLocalAgent(options: LocalAgentOptions): Promise<LocalAgent> {
  const args = [...AGENT_NODE_FLAGS, agentEntry(), '--name', options.name, '--port', String(options.port ?? 0), '--host', options.host ?? '127.0.0.1'];
  if (options.capacity) args.push('--capacity', options.capacity);
  if (options.datastore) args.push('--datastore', options.datastore);
  if (options.logLevel) args.push('--log-level', options.logLevel);
  if (options.extraArgs) args.push(...options.extraArgs);
  const [command, commandArgs] = options.netns ? ['ip', ['netns', 'exec', options.netns, process.execPath, ...args]] : [process.execPath, args];
  const child = spawn(command, commandArgs, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...(options.token ? { FERRY_TOKEN: options.token } : {}), ...options.env } });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));

  const url = await new Promise<string>((resolve, reject) => {
    let stdout = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new FerryError(ErrorCode.TIMEOUT, `agent ${options.name} was not ready within ${options.readyTimeoutMs ?? 15_000} ms`, stderr.trim()));
    }, options.readyTimeoutMs ?? 15_000);
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
      const newline = stdout.indexOf('\n');
      if (newline < 0) return;
      clearTimeout(timer);
      try {
        const ready = JSON.parse(stdout.slice(0, newline)) as { event?: string; url?: string };
        if (ready.event === 'ready' && ready.url) resolve(ready.url);
        else throw new Error(`unexpected first line: ${stdout.slice(0, newline)}`);
      } catch (error) {
        child.kill('SIGKILL');
        reject(new FerryError(ErrorCode.INTERNAL, `agent ${options.name} said something other than ready: ${(error as Error).message}`));
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new FerryError(ErrorCode.INTERNAL, `agent ${options.name} exited (code ${code}) before it was ready`, stderr.trim()));
    });
  });

  return {
    name: options.name,
    url,
    pid: child.pid!,
    child,
    log: () => stderr,
    exited,
    stop: async (graceMs = 5000) => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}

import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createLogger, type LogLevel } from '../../shared/log.js';

/** A logger whose lines are collected, each parsed as JSON (a line that is not JSON fails the test). */
function collect(minimum: LogLevel = 'debug'): { log: ReturnType<typeof createLogger>; lines: () => Record<string, unknown>[]; raw: string[] } {
  const raw: string[] = [];
  const log = createLogger('host-a', minimum, (line) => { raw.push(line); });
  return { log, raw, lines: () => raw.map((line) => JSON.parse(line) as Record<string, unknown>) };
}

describe('agent log', () => {
  it('writes one JSON object per line with the host, level, time, message and fields', () => {
    const { log, raw, lines } = collect();
    log.info('found VMs in the datastore, powered off or suspended', { count: 2 });
    expect(raw).toHaveLength(1);
    expect(raw[0]!.endsWith('\n')).toBe(true);
    expect(raw[0]!.slice(0, -1)).not.toContain('\n');
    const [line] = lines();
    expect(line).toMatchObject({ host: 'host-a', level: 'info', msg: 'found VMs in the datastore, powered off or suspended', count: 2 });
    expect(new Date(line!.time as string).toISOString()).toBe(line!.time);
  });

  it('keeps a field value with spaces, quotes, newlines and other control characters intact', () => {
    const { log, raw, lines } = collect();
    const awkward = 'a "quoted" value with spaces,\nnewlines\r\n, tabs\t, a backslash \\ and key=value pairs';
    log.warn('peer said', { reason: awkward, nested: { list: [1, 'two words'], none: null }, ok: false });
    expect(raw).toHaveLength(1);
    expect(raw[0]!.slice(0, -1)).not.toMatch(/[\n\r]/);
    expect(lines()[0]).toMatchObject({ level: 'warn', reason: awkward, nested: { list: [1, 'two words'], none: null }, ok: false });
  });

  it('keeps message text as written, so that a test can find it in the raw log', () => {
    const { log, raw, lines } = collect();
    log.warn('fault: delay at round-2');
    log.info('100%s done %d', { vm: 'web1' });
    expect(raw.join('')).toContain('fault: delay at round-2');
    expect(lines().map((line) => line.msg)).toEqual(['fault: delay at round-2', '100%s done %d']);
  });

  it('writes an Error in an error field as its message and stack', () => {
    const { log, lines } = collect();
    log.error('could not write the VM\'s files', { error: new Error('ENOSPC: no space left on device') });
    const error = lines()[0]!.error as Record<string, unknown>;
    expect(error.message).toBe('ENOSPC: no space left on device');
    expect(error.type).toBe('Error');
    expect(String(error.stack)).toContain('ENOSPC');
  });

  it('drops the levels below the minimum', () => {
    const { log, lines } = collect('warn');
    log.debug('d');
    log.info('i');
    log.warn('w');
    log.error('e');
    expect(lines().map((line) => [line.level, line.msg])).toEqual([['warn', 'w'], ['error', 'e']]);
  });

  // The agent's real destination: the built code (npm test builds dist/ first) in a child process, as the agent runs it.
  it('writes to stderr, never stdout, and every line is out even when the process is killed right after', async () => {
    const logModule = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../dist/shared/log.js');
    const script = `import(${JSON.stringify(logModule)}).then(({ createLogger }) => {
      const log = createLogger('host-a', 'info');
      for (let i = 0; i < 2000; i += 1) log.info('line', { i, pad: 'x'.repeat(200) });
      process.kill(process.pid, 'SIGKILL'); // no exit handler runs: only lines already written survive

    });`;
    const { stdout, stderr } = await new Promise<{ stdout: string; stderr: string }>((resolve, reject) => {
      execFile(process.execPath, ['-e', script], { maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
        if (error?.signal !== 'SIGKILL') reject(error ?? new Error('the child was meant to be killed'));
        else resolve({ stdout, stderr });
      });
    });
    expect(stdout).toBe('');
    const lines = stderr.trimEnd().split('\n').map((line) => JSON.parse(line) as { host: string; i: number });
    expect(lines).toHaveLength(2000);
    expect(lines.map((line) => line.i)).toEqual(Array.from({ length: 2000 }, (_, i) => i));
    expect(lines[0]!.host).toBe('host-a');
  });
});

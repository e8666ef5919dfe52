/**
 * QEMU beside ferry: the same live migration done by QEMU. Two local qemu-system-x86_64 processes (TCG, q35, no
 * devices, no network), the source's guest memory filled as ferry's filled guest is (every page p: words 0, 0, p,
 * then k * 0x9E3779B1 for k = 3..1023, little-endian), the destination waiting with `-incoming defer`; driven over
 * QMP (a JSON line protocol on a unix socket): `migrate-incoming` on 127.0.0.1 port 0, `migrate`, `query-migrate`
 * until it completes or fails. After it, both guests are paused and their memory saved (`pmemsave`) and compared.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, open, rm } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { fillInitialPages } from '../../shared/workloads.js';

const PAGE = 4096;
/** The longest a QMP command may take to answer: a `pmemsave` of a 4 GiB guest on a busy machine, with room. */
const QMP_COMMAND_TIMEOUT_MS = 180_000;
const GiB = 1024 ** 3;
/** SeaBIOS writes the first MiB (and a few tables it places higher): compare from here up. */
const LOW_BYTES = 1024 ** 2;

export const KNOWN_PEERS = ['qemu'] as const;
export type PeerName = (typeof KNOWN_PEERS)[number];

export interface QemuFound {
  available: true;
  binary: string;
  version: string;
}
export interface QemuMissing {
  available: false;
  reason: string;
}

/** qemu-system-x86_64 on PATH (or `binary`), with its version; or why it cannot be used. */
export function findQemu(binary = process.env.FERRY_QEMU ?? 'qemu-system-x86_64'): QemuFound | QemuMissing {
  const probe = spawnSync(binary, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  if (probe.error) {
    const missing = (probe.error as NodeJS.ErrnoException).code === 'ENOENT';
    return {
      available: false,
      reason: missing ? `${binary} is not installed (Debian: apt-get install qemu-system-x86)` : `${binary} --version failed: ${probe.error.message}`,
    };
  }
  if (probe.status !== 0) return { available: false, reason: `${binary} --version exited with ${probe.status}: ${probe.stderr.trim()}` };
  const version = /version (\S+)/.exec(probe.stdout)?.[1] ?? probe.stdout.split('\n')[0]!.trim();
  return { available: true, binary, version };
}

export interface QemuPeerOptions {
  memoryBytes: number;
  /** A folder for the QMP sockets, the memory image and the memory dumps; emptied of them afterwards. */
  workdir: string;
  /** QEMU's `downtime-limit`, ms. */
  downtimeLimitMs: number;
  /** QEMU's `max-bandwidth`, bytes/s (QEMU 7.2's default, 128 MiB/s, would cap loopback). */
  maxBandwidthBytesPerSec?: number;
  /** How long the source guest runs before the migration starts. */
  warmupMs?: number;
  /**
   * Back the destination's guest memory with real pages when it starts (`prealloc=on`, QEMU's -mem-prealloc), as a
   * ferry destination does at reservation for a scenario with `prealloc` (the default). Default true.
   */
  destinationPrealloc?: boolean;
  /**
   * The source's memory starts as ferry's filled guest does (default true); false: zeros, preallocated (the zero-page
   * scenario's guest).
   */
  filled?: boolean;
  /** Save both guests' memory after the migration and compare them (default true). */
  verify?: boolean;
  binary?: string;
  /** Give up on the migration after this long. */
  timeoutMs?: number;
}

export interface QemuVerification {
  /** Pages from 1 MiB up (SeaBIOS's low memory left out), as compared. */
  pagesCompared: number;
  /** Of those, pages of the destination equal to the source's, both paused after the migration. */
  pagesMatchingSource: number;
  /** Of those, pages of the destination still holding the fill (the rest the firmware wrote, on both sides). */
  pagesMatchingFill: number;
  /** Page ranges (first-last) that differ from the fill, at most 20. */
  notFillRanges: string[];
  /** Every compared page equals the source's. */
  match: boolean;
}

export interface QemuPeerRun {
  peer: 'qemu';
  scenario: string;
  repeat: number;
  version: string;
  status: 'completed' | 'failed';
  error?: string;
  memoryBytes: number;
  downtimeLimitMs: number;
  maxBandwidthBytesPerSec: number;
  destinationPrealloc: boolean;
  /** QEMU's own figures (query-migrate, on the source). */
  totalTimeMs: number;
  /** Source guest stopped until the last byte was sent, as QEMU measures it. */
  downtimeMs: number;
  setupTimeMs: number;
  /**
   * From the source's STOP event to the destination's RESUME event (QMP event timestamps, one host clock): the
   * guest not running anywhere, as ferry's downtime is measured.
   */
  stopToResumeMs?: number;
  transferredBytes: number;
  /** transferred / (total time - setup time): what QEMU's `mbps` is, in bytes. */
  throughputBytesPerSec: number;
  normalPages: number;
  /** Pages QEMU found zero and sent as a flag. */
  duplicatePages: number;
  dirtySyncCount: number;
  bytesSentOverMemory: number;
  cpu: { sourceMs: number; destinationMs: number; totalMs: number; msPerGiB: number };
  verification?: QemuVerification;
}

/** Writes the filled image of `bytes` to `file`. */
export async function writeFillImage(file: string, bytes: number): Promise<void> {
  const chunkPages = 1024;
  const chunk = Buffer.alloc(chunkPages * PAGE);
  const handle = await open(file, 'w');
  try {
    for (let page = 0; page < bytes / PAGE; page += chunkPages) {
      const pages = Math.min(chunkPages, bytes / PAGE - page);
      fillInitialPages(chunk, page, page + pages, page);
      await handle.write(chunk, 0, pages * PAGE);
    }
  } finally {
    await handle.close();
  }
}

interface QmpEvent {
  event: string;
  timestamp: { seconds: number; microseconds: number };
  data?: unknown;
}

/** A QMP connection: commands one at a time, answers in order, events kept with their timestamps. */
class Qmp {
  private buffered = '';
  private readonly waiting: { resolve(value: unknown): void; reject(error: Error): void; command: string }[] = [];
  readonly events: QmpEvent[] = [];
  private closedError?: Error;

  private readonly socket: net.Socket;
  private readonly name: string;

  private constructor(socket: net.Socket, name: string) {
    this.socket = socket;
    this.name = name;
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => {
      this.buffered += text;
      let newline: number;
      while ((newline = this.buffered.indexOf('\n')) >= 0) {
        const line = this.buffered.slice(0, newline).trim();
        this.buffered = this.buffered.slice(newline + 1);
        if (line) this.onMessage(JSON.parse(line) as Record<string, unknown>);
      }
    });
    const fail = (error: Error): void => {
      this.closedError ??= error;
      for (const waiter of this.waiting.splice(0)) waiter.reject(new FerryError(ErrorCode.CONNECTION_LOST, `QMP of ${name} closed during ${waiter.command}: ${error.message}`));
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('connection closed')));
  }

  private greeted?: () => void;

  private onMessage(message: Record<string, unknown>): void {
    if ('QMP' in message) {
      this.greeted?.();
      return;
    }
    if ('event' in message) {
      this.events.push(message as unknown as QmpEvent);
      return;
    }
    const waiter = this.waiting.shift();
    if (!waiter) return;
    if ('error' in message) {
      const error = message.error as { class?: string; desc?: string };
      waiter.reject(new FerryError(ErrorCode.INTERNAL, `QEMU (${this.name}) refused ${waiter.command}: ${error.desc ?? error.class}`));
    } else waiter.resolve(message.return);
  }

  /** Connects to `socketPath` (retrying while QEMU starts), reads the greeting, enters command mode. */
  static async connect(socketPath: string, name: string, child: ChildProcess, stderr: () => string, timeoutMs = 120_000): Promise<Qmp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new FerryError(ErrorCode.INTERNAL, `qemu (${name}) exited at start: ${stderr().trim() || `code ${child.exitCode ?? child.signalCode}`}`);
      }
      const socket = await new Promise<net.Socket | undefined>((resolve) => {
        const attempt = net.createConnection(socketPath);
        attempt.once('connect', () => resolve(attempt));
        attempt.once('error', () => resolve(undefined));
      });
      if (socket) {
        const qmp = new Qmp(socket, name);
        // The socket listens before QEMU has finished starting (preallocating a GiB takes seconds on a busy
        // machine): the greeting comes once it has, within what is left of the deadline.
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => reject(new FerryError(ErrorCode.TIMEOUT, `no QMP greeting from qemu (${name}) within ${timeoutMs} ms of starting it`)), Math.max(deadline - Date.now(), 1000));
          const exited = (): void => reject(new FerryError(ErrorCode.INTERNAL, `qemu (${name}) exited at start: ${stderr().trim() || `code ${child.exitCode ?? child.signalCode}`}`));
          child.once('exit', exited);
          qmp.greeted = () => {
            clearTimeout(timer);
            child.off('exit', exited);
            resolve();
          };
        }).catch((error: unknown) => {
          qmp.close();
          throw error;
        });
        await qmp.execute('qmp_capabilities');
        return qmp;
      }
      if (Date.now() > deadline) throw new FerryError(ErrorCode.TIMEOUT, `qemu (${name}) did not open its QMP socket within ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  /**
   * Runs `command` and resolves with its answer. A QEMU that does not answer within `timeoutMs` is taken as wedged:
   * the command fails with FERRY_ERR_TIMEOUT and the connection closes (answers come in order, so no later one could
   * be matched), which fails whatever else waits on it; the run then stops the process.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = QMP_COMMAND_TIMEOUT_MS): Promise<T> {
    if (this.closedError) return Promise.reject(new FerryError(ErrorCode.CONNECTION_LOST, `QMP of ${this.name} is closed: ${this.closedError.message}`));
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new FerryError(ErrorCode.TIMEOUT, `QEMU (${this.name}) did not answer ${command} within ${timeoutMs / 1000} s`, 'the QEMU process may be wedged; the run stops it'));
        this.socket.destroy();
      }, timeoutMs);
      const settle = <V>(done: (value: V) => void) => (value: V): void => {
        clearTimeout(timer);
        done(value);
      };
      this.waiting.push({ resolve: settle(resolve as (value: unknown) => void), reject: settle(reject), command });
      this.socket.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    });
  }

  /** The first event named `name` (already received or still to come), or undefined after `timeoutMs`. */
  async event(name: string, timeoutMs: number): Promise<QmpEvent | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.events.find((entry) => entry.event === name);
      if (found || Date.now() > deadline || this.closedError) return found;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  close(): void {
    this.socket.destroy();
  }
}

interface QemuProcess {
  child: ChildProcess;
  qmp: Qmp;
  stop(): Promise<void>;
}

/** Every QEMU this process started and has not stopped: killed if ferry exits first, or is told to stop. */
const running = new Set<ChildProcess>();
let exitHookInstalled = false;
function killAllOnExit(): void {
  for (const child of running) child.kill('SIGKILL');
}
/**
 * SIGTERM or SIGHUP would end ferry without its `exit` event: the QEMU processes go first, then the signal is raised
 * again, its handler gone, to end ferry as it would have.
 */
function killAllOnSignal(signal: NodeJS.Signals): void {
  killAllOnExit();
  process.kill(process.pid, signal);
}

async function startQemu(binary: string, name: string, workdir: string, memoryBytes: number, extra: string[]): Promise<QemuProcess> {
  const socketPath = path.join(workdir, `${name}.qmp`);
  await rm(socketPath, { force: true });
  const mib = memoryBytes / 1024 ** 2;
  const args = [
    '-accel', 'tcg', '-machine', 'q35,memory-backend=ram0', '-nodefaults', '-display', 'none', '-m', `${mib}M`,
    '-qmp', `unix:${socketPath},server=on,wait=off`, '-name', `ferry-peer-${name}`, ...extra,
  ];
  const child = spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  running.add(child);
  if (!exitHookInstalled) {
    process.once('exit', killAllOnExit);
    process.once('SIGTERM', killAllOnSignal);
    process.once('SIGHUP', killAllOnSignal);
    exitHookInstalled = true;
  }
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  const spawnFailed = new Promise<never>((_resolve, reject) => child.once('error', (error) => reject(new FerryError(ErrorCode.INTERNAL, `cannot start ${binary}: ${error.message}`))));
  // Only the start waits on it: an error after that (a failed kill) must not become an unhandled rejection.
  spawnFailed.catch(() => undefined);
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
    running.delete(child);
    await rm(socketPath, { force: true });
  };
  try {
    const qmp = await Promise.race([Qmp.connect(socketPath, name, child, () => stderr), spawnFailed]);
    return { child, qmp, stop: async () => { qmp.close(); await stop(); } };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** user + system CPU of a process so far, ms (from /proc/PID/stat). */
let ticksPerSecond: number | undefined;
function cpuMsOf(pid: number): number {
  ticksPerSecond ??= Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) is in parentheses and may hold spaces: count fields after its closing one.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  return ((utime + stime) / ticksPerSecond) * 1000;
}

interface MigrateInfo {
  status: string;
  'error-desc'?: string;
  'total-time'?: number;
  downtime?: number;
  'setup-time'?: number;
  ram?: { transferred: number; normal: number; duplicate: number; 'dirty-sync-count': number; mbps: number };
  'socket-address'?: { port: string; host: string }[];
}

/** Compares the two memory dumps from 1 MiB up, page by page, with each other and with the fill. */
async function compareDumps(sourceFile: string, destinationFile: string, memoryBytes: number, filled: boolean): Promise<QemuVerification> {
  const chunkPages = 1024;
  const source = await open(sourceFile, 'r');
  const destination = await open(destinationFile, 'r');
  const a = Buffer.alloc(chunkPages * PAGE);
  const b = Buffer.alloc(chunkPages * PAGE);
  const fill = Buffer.alloc(chunkPages * PAGE);
  let pagesCompared = 0;
  let pagesMatchingSource = 0;
  let pagesMatchingFill = 0;
  const ranges: [number, number][] = [];
  try {
    const totalPages = memoryBytes / PAGE;
    for (let first = LOW_BYTES / PAGE; first < totalPages; first += chunkPages) {
      const pages = Math.min(chunkPages, totalPages - first);
      const bytes = pages * PAGE;
      const readA = await source.read(a, 0, bytes, first * PAGE);
      const readB = await destination.read(b, 0, bytes, first * PAGE);
      if (readA.bytesRead !== bytes || readB.bytesRead !== bytes) throw new FerryError(ErrorCode.IO, `a memory dump is short at page ${first}`);
      if (filled) fillInitialPages(fill, first, first + pages, first); // else it stays zeros
      for (let i = 0; i < pages; i++) {
        const start = i * PAGE;
        const end = start + PAGE;
        pagesCompared++;
        if (b.compare(a, start, end, start, end) === 0) pagesMatchingSource++;
        if (b.compare(fill, start, end, start, end) === 0) pagesMatchingFill++;
        else {
          const page = first + i;
          const last = ranges[ranges.length - 1];
          if (last && last[1] === page - 1) last[1] = page;
          else ranges.push([page, page]);
        }
      }
    }
  } finally {
    await source.close();
    await destination.close();
  }
  return {
    pagesCompared,
    pagesMatchingSource,
    pagesMatchingFill,
    notFillRanges: ranges.slice(0, 20).map(([from, to]) => (from === to ? `${from}` : `${from}-${to}`)),
    match: pagesMatchingSource === pagesCompared,
  };
}

/**
 * One QEMU live migration of a guest of `memoryBytes` between two fresh local QEMU processes, measured. Both are
 * stopped and every file made for it deleted before this returns, whatever happened.
 */
export async function migrateQemuGuest(scenario: string, repeat: number, options: QemuPeerOptions, found?: QemuFound): Promise<QemuPeerRun> {
  const qemu = found ?? findQemu(options.binary);
  if (!qemu.available) throw new FerryError(ErrorCode.BAD_INPUT, `the qemu peer cannot run: ${qemu.reason}`, 'install qemu-system-x86, or leave out --peer qemu');
  const { memoryBytes } = options;
  if (memoryBytes % (1024 ** 2) !== 0 || memoryBytes < 16 * 1024 ** 2) {
    throw new FerryError(ErrorCode.BAD_INPUT, `a QEMU guest of ${memoryBytes} bytes: it needs whole MiB, at least 16 MiB`, 'give the scenario a memory size such as 256MiB');
  }
  const maxBandwidth = options.maxBandwidthBytesPerSec ?? 100 * GiB;
  const destinationPrealloc = options.destinationPrealloc ?? true;
  const filled = options.filled ?? true;
  const workdir = path.join(options.workdir, `qemu-${scenario}-${repeat}`);
  await mkdir(workdir, { recursive: true });
  const image = path.join(workdir, 'memory.img');
  const dumps = [path.join(workdir, 'source.mem'), path.join(workdir, 'destination.mem')] as const;
  const started: QemuProcess[] = [];
  try {
    if (filled) await writeFillImage(image, memoryBytes);
    const source = await startQemu(qemu.binary, 'source', workdir, memoryBytes, [
      '-object', filled
        ? `memory-backend-file,id=ram0,size=${memoryBytes},mem-path=${image},share=off,prealloc=on`
        : `memory-backend-ram,id=ram0,size=${memoryBytes},prealloc=on`,
    ]);
    started.push(source);
    // The guest's memory is now QEMU's own (private, preallocated: every page copied from the image).
    await rm(image, { force: true });
    const destination = await startQemu(qemu.binary, 'destination', workdir, memoryBytes, [
      '-object', `memory-backend-ram,id=ram0,size=${memoryBytes}${destinationPrealloc ? ',prealloc=on' : ''}`, '-incoming', 'defer',
    ]);
    started.push(destination);

    await destination.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    const incoming = await destination.qmp.execute<MigrateInfo>('query-migrate');
    const port = incoming['socket-address']?.[0]?.port;
    if (!port) throw new FerryError(ErrorCode.INTERNAL, `QEMU did not say which port it listens on: ${JSON.stringify(incoming)}`);
    await source.qmp.execute('migrate-set-parameters', { 'downtime-limit': options.downtimeLimitMs, 'max-bandwidth': maxBandwidth });
    const status = await source.qmp.execute<{ status: string }>('query-status');
    if (status.status !== 'running') throw new FerryError(ErrorCode.INTERNAL, `the source guest is ${status.status}, not running`);
    await new Promise((resolve) => setTimeout(resolve, options.warmupMs ?? 1000));

    const pids = [source.child.pid!, destination.child.pid!];
    const cpuBefore = pids.map(cpuMsOf);
    await source.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
    const deadline = Date.now() + (options.timeoutMs ?? 10 * 60_000);
    let info: MigrateInfo;
    for (;;) {
      info = await source.qmp.execute<MigrateInfo>('query-migrate');
      if (info.status === 'completed' || info.status === 'failed' || info.status === 'cancelled') break;
      if (Date.now() > deadline) {
        await source.qmp.execute('migrate_cancel').catch(() => undefined);
        throw new FerryError(ErrorCode.TIMEOUT, `QEMU's migration did not end within ${options.timeoutMs ?? 600_000} ms (last status ${info.status})`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const completed = info.status === 'completed';
    const resumed = completed ? await destination.qmp.event('RESUME', 10_000) : undefined;
    const cpuAfter = pids.map(cpuMsOf);
    const stopped = source.qmp.events.find((entry) => entry.event === 'STOP');
    const at = (event: QmpEvent): number => event.timestamp.seconds * 1000 + event.timestamp.microseconds / 1000;

    const ram = info.ram ?? { transferred: 0, normal: 0, duplicate: 0, 'dirty-sync-count': 0, mbps: 0 };
    const totalTimeMs = info['total-time'] ?? Number.NaN;
    const setupTimeMs = info['setup-time'] ?? 0;
    const cpu = { sourceMs: cpuAfter[0]! - cpuBefore[0]!, destinationMs: cpuAfter[1]! - cpuBefore[1]! };

    let verification: QemuVerification | undefined;
    if (completed && options.verify !== false) {
      // Both guests paused (the source is since the migration), then each one's whole memory saved.
      await destination.qmp.execute('stop');
      await source.qmp.execute('pmemsave', { val: 0, size: memoryBytes, filename: dumps[0] });
      await destination.qmp.execute('pmemsave', { val: 0, size: memoryBytes, filename: dumps[1] });
      verification = await compareDumps(dumps[0], dumps[1], memoryBytes, filled);
    }
    return {
      peer: 'qemu',
      scenario,
      repeat,
      version: qemu.version,
      status: completed ? 'completed' : 'failed',
      ...(completed ? {} : { error: info['error-desc'] ?? `migration ${info.status}` }),
      memoryBytes,
      downtimeLimitMs: options.downtimeLimitMs,
      maxBandwidthBytesPerSec: maxBandwidth,
      destinationPrealloc,
      totalTimeMs,
      downtimeMs: info.downtime ?? Number.NaN,
      setupTimeMs,
      ...(stopped && resumed ? { stopToResumeMs: at(resumed) - at(stopped) } : {}),
      transferredBytes: ram.transferred,
      throughputBytesPerSec: totalTimeMs - setupTimeMs > 0 ? ram.transferred / ((totalTimeMs - setupTimeMs) / 1000) : Number.NaN,
      normalPages: ram.normal,
      duplicatePages: ram.duplicate,
      dirtySyncCount: ram['dirty-sync-count'],
      bytesSentOverMemory: ram.transferred / memoryBytes,
      cpu: { ...cpu, totalMs: cpu.sourceMs + cpu.destinationMs, msPerGiB: ram.transferred > 0 ? ((cpu.sourceMs + cpu.destinationMs) / ram.transferred) * GiB : Number.NaN },
      ...(verification ? { verification } : {}),
    };
  } finally {
    for (const qemuProcess of started.reverse()) await qemuProcess.stop();
    await rm(workdir, { recursive: true, force: true });
  }
}

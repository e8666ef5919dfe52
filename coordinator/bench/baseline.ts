/**
 * The physical limit to quote beside every throughput: raw TCP between the same two endpoints the agents use,
 * a plain socket sending 1 MiB writes (ferry's page-frame size), sender and receiver in separate processes. And
 * iperf3's figure too where iperf3 is installed.
 */
import { spawnSync } from 'node:child_process';
import { PAGES_PER_FRAME, PAGE_SIZE } from '../../shared/constants.js';
import { benchScript, nodeCommand, startJsonLines } from './processes.js';
import { median } from './stats.js';

export interface Endpoints {
  /** Address the receiver binds and the sender dials. */
  receiverHost: string;
  receiverNetns?: string;
  senderNetns?: string;
}

export interface RawTcpResult {
  bytesPerSec: number;
  /** CPU (user + system) of both processes per GiB moved, in milliseconds. */
  cpuMsPerGiB: number;
  samplesBytesPerSec: number[];
  bytesPerSample: number;
  writeBytes: number;
  iperf3BitsPerSec?: number;
}

const GiB = 1024 ** 3;

async function sample(endpoints: Endpoints, bytes: number, writeBytes: number): Promise<{ bytesPerSec: number; cpuMs: number }> {
  const script = benchScript('tcp-probe');
  const receiver = startJsonLines(...nodeCommand(script, ['serve', endpoints.receiverHost], endpoints.receiverNetns));
  try {
    const { port } = await receiver.next<{ port: number }>('ready');
    const sender = startJsonLines(...nodeCommand(script, ['send', endpoints.receiverHost, String(port), String(bytes), String(writeBytes)], endpoints.senderNetns));
    try {
      const sent = await sender.next<{ bytes: number; seconds: number; cpuMs: number }>('sent');
      const received = await receiver.next<{ bytes: number; cpuMs: number }>('received');
      return { bytesPerSec: received.bytes / sent.seconds, cpuMs: sent.cpuMs + received.cpuMs };
    } finally {
      await sender.stop();
    }
  } finally {
    await receiver.stop();
  }
}

export async function measureRawTcp(endpoints: Endpoints, bytesPerSample: number, samples = 3): Promise<RawTcpResult> {
  const writeBytes = PAGES_PER_FRAME * PAGE_SIZE;
  const results: { bytesPerSec: number; cpuMs: number }[] = [];
  for (let i = 0; i < samples; i++) results.push(await sample(endpoints, bytesPerSample, writeBytes));
  const iperf3 = measureIperf3(endpoints);
  return {
    bytesPerSec: median(results.map((result) => result.bytesPerSec)),
    cpuMsPerGiB: median(results.map((result) => (result.cpuMs / bytesPerSample) * GiB)),
    samplesBytesPerSec: results.map((result) => result.bytesPerSec),
    bytesPerSample,
    writeBytes,
    ...(iperf3 !== undefined ? { iperf3BitsPerSec: iperf3 } : {}),
  };
}

/** iperf3's TCP throughput in bits per second, or undefined where iperf3 is not installed. */
function measureIperf3(endpoints: Endpoints): number | undefined {
  if (spawnSync('iperf3', ['--version']).status !== 0) return undefined;
  const wrap = (netns: string | undefined, args: string[]): [string, string[]] => (netns ? ['ip', ['netns', 'exec', netns, 'iperf3', ...args]] : ['iperf3', args]);
  const [serverCommand, serverArgs] = wrap(endpoints.receiverNetns, ['-s', '-1', '-B', endpoints.receiverHost, '-p', '5299']);
  const server = startJsonLines(serverCommand, serverArgs);
  try {
    spawnSync('sleep', ['0.3']);
    const [clientCommand, clientArgs] = wrap(endpoints.senderNetns, ['-c', endpoints.receiverHost, '-p', '5299', '-t', '3', '-J']);
    const client = spawnSync(clientCommand, clientArgs, { encoding: 'utf8', timeout: 20_000 });
    const parsed = JSON.parse(client.stdout) as { end?: { sum_received?: { bits_per_second?: number } } };
    return parsed.end?.sum_received?.bits_per_second;
  } catch {
    return undefined;
  } finally {
    void server.stop();
  }
}

/**
 * The benchmark's client of a service VM, in a process of its own (and, on a namespaced link, in the client's
 * namespace), so that its timing is not at the mercy of the coordinator's event loop:
 * `service-probe IP:PORT RATE MAX_DURATION_MS` prints `{"event":"started"}`, probes until MAX_DURATION_MS has passed
 * or it gets SIGINT, whichever comes first, then prints `{"event":"result", ...ProbeResult}`. Run by service.ts.
 */
import { runProbe } from '../probe.js';

const print = (line: Record<string, unknown>): void => void process.stdout.write(`${JSON.stringify(line)}\n`);

async function main(address: string, ratePerSec: number, durationMs: number): Promise<void> {
  // SIGINT ends the steady phase early; the probe still waits for stragglers and reads its writes back.
  const stop = new AbortController();
  process.once('SIGINT', () => stop.abort());
  print({ event: 'started' });
  const result = await runProbe({ address, ratePerSec, durationMs, signal: stop.signal });
  print({ event: 'result', ...result });
}

const [address, rate, duration] = process.argv.slice(2);
if (!address || !(Number(rate) > 0) || !(Number(duration) > 0)) {
  process.stderr.write('usage: service-probe IP:PORT RATE MAX_DURATION_MS\n');
  process.exit(2);
}
main(address, Number(rate), Number(duration)).catch((error: unknown) => {
  process.stderr.write(`${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});

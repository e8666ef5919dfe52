/**
 * The raw-TCP baseline, one end per process: `serve HOST` accepts one connection, reads it to the end, and prints
 * what it read and the CPU it spent; `send HOST PORT BYTES WRITE_BYTES` writes BYTES in writes of WRITE_BYTES
 * (the size of ferry's page frames), waits until the receiver has closed (everything arrived), and prints the
 * time it took and its CPU. Each prints one JSON line. Run by baseline.ts, possibly inside network namespaces.
 */
import net from 'node:net';

function cpuMs(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1000;
}

function serve(host: string): void {
  const server = net.createServer((socket) => {
    const cpuBefore = cpuMs();
    let bytes = 0;
    socket.on('data', (chunk) => {
      bytes += chunk.length;
    });
    socket.on('end', () => {
      socket.end();
      process.stdout.write(`${JSON.stringify({ event: 'received', bytes, cpuMs: cpuMs() - cpuBefore })}\n`);
      server.close();
    });
  });
  server.listen(0, host, () => {
    const address = server.address() as net.AddressInfo;
    process.stdout.write(`${JSON.stringify({ event: 'ready', port: address.port })}\n`);
  });
}

function send(host: string, port: number, total: number, writeBytes: number): void {
  const chunk = Buffer.alloc(writeBytes, 0x5a);
  const socket = net.connect({ host, port, noDelay: true }, () => {
    const cpuBefore = cpuMs();
    const started = performance.now();
    let sent = 0;
    const pump = (): void => {
      while (sent < total) {
        sent += chunk.length;
        if (!socket.write(chunk)) {
          socket.once('drain', pump);
          return;
        }
      }
      socket.end();
    };
    socket.on('close', () => {
      const seconds = (performance.now() - started) / 1000;
      process.stdout.write(`${JSON.stringify({ event: 'sent', bytes: sent, seconds, cpuMs: cpuMs() - cpuBefore })}\n`);
    });
    socket.resume();
    pump();
  });
}

const [mode, ...args] = process.argv.slice(2);
if (mode === 'serve') serve(args[0] ?? '127.0.0.1');
else if (mode === 'send') send(args[0] ?? '127.0.0.1', Number(args[1]), Number(args[2]), Number(args[3]));
else {
  process.stderr.write('usage: tcp-probe serve HOST | send HOST PORT BYTES WRITE_BYTES\n');
  process.exit(2);
}

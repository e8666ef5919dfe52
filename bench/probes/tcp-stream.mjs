// ferry's page stream over a plain TCP connection instead of a WebSocket: 1 GiB from a sender process's shared
// memory to a receiver process's, in frames of a header (as page-frame.ts: 16 bytes and 12 per page) and 256 pages
// (1 MiB) of data, each page hashed on both sides with ferry's page hasher (XXH3-64, in place). Two receivers:
//   data:   Node's 'data' events (a fresh buffer per socket read), each chunk copied into guest memory
//   onread: the socket reads straight into guest memory (net.connect's `onread`, a buffer chosen per read: the
//           header into a small buffer, the pages into a view of where they go), no copy in JavaScript at all
// The receiver dials and the sender listens, as `onread` is an option of the connecting side.
// Run from the repository root after `npm run build`: node bench/probes/tcp-stream.mjs
import { fork } from 'node:child_process';
import net from 'node:net';
import { PageHasher, allocateGuestMemory } from '../../dist/shared/page-hash.js';

const GiB = 1 << 30;
const MiB = 1 << 20;
const PAGE = 4096;
const PAGES_PER_FRAME = 256;
const HEADER = 16 + 12 * PAGES_PER_FRAME;
const [role, mode, port] = process.argv.slice(2);

function guest(value) {
  const wasm = allocateGuestMemory(GiB);
  const memory = new Uint8Array(wasm.buffer);
  for (let offset = 0; offset < memory.length; offset += PAGE) memory[offset] = value;
  const table = new Uint32Array(2 * (GiB / PAGE));
  const hasher = new PageHasher(wasm);
  return { memory, table, hashPage: (page) => hasher.hashInto(page, table, page) };
}

if (role === 'send') {
  const { memory, hashPage } = guest(1);
  const server = net.createServer((socket) => {
    const started = performance.now();
    const before = process.cpuUsage();
    let outstanding = 0;
    let page = 0;
    const pump = () => {
      while (page < GiB / PAGE && outstanding < 8 * MiB) {
        const header = Buffer.alloc(HEADER);
        header.writeUInt32LE(PAGES_PER_FRAME, 8);
        for (let i = 0; i < PAGES_PER_FRAME; i++) {
          hashPage(page + i);
          header.writeUInt32LE(page + i, 16 + 8 * PAGES_PER_FRAME + 4 * i);
        }
        socket.write(header);
        outstanding += MiB;
        socket.write(Buffer.from(memory.buffer, page * PAGE, MiB), () => {
          outstanding -= MiB;
          if (page < GiB / PAGE) setImmediate(pump);
          else if (outstanding === 0) finish();
        });
        page += PAGES_PER_FRAME;
      }
    };
    const finish = () => {
      const seconds = (performance.now() - started) / 1000;
      const used = process.cpuUsage(before);
      process.send({ gibPerSec: 1 / seconds, cpuMs: (used.user + used.system) / 1000 });
      socket.end();
      server.close();
    };
    pump();
  });
  server.listen(0, '127.0.0.1', () => process.send({ port: server.address().port }));
} else if (role === 'receive') {
  const { memory, hashPage } = guest(0);
  const before = process.cpuUsage();
  const header = Buffer.alloc(HEADER);
  let headerAt = 0;
  let first = -1;
  let dataAt = 0;
  const onFrame = () => {
    for (let i = 0; i < PAGES_PER_FRAME; i++) hashPage(first + i);
    headerAt = 0;
    first = -1;
  };
  const done = () => {
    const used = process.cpuUsage(before);
    process.send({ cpuMs: (used.user + used.system) / 1000 });
    process.exit(0);
  };
  if (mode === 'onread') {
    const next = () => (first < 0
      ? header.subarray(headerAt)
      : Buffer.from(memory.buffer, first * PAGE + dataAt, MiB - dataAt));
    const socket = net.connect({
      port: Number(port),
      host: '127.0.0.1',
      onread: {
        buffer: next,
        callback: (n) => {
          if (first < 0) {
            headerAt += n;
            if (headerAt === HEADER) {
              first = header.readUInt32LE(16 + 8 * PAGES_PER_FRAME);
              dataAt = 0;
            }
          } else {
            dataAt += n;
            if (dataAt === MiB) onFrame();
          }
        },
      },
    });
    socket.on('end', done);
  } else {
    const socket = net.connect({ port: Number(port), host: '127.0.0.1' });
    socket.on('data', (chunk) => {
      let at = 0;
      while (at < chunk.length) {
        if (first < 0) {
          const n = Math.min(HEADER - headerAt, chunk.length - at);
          chunk.copy(header, headerAt, at, at + n);
          headerAt += n;
          at += n;
          if (headerAt === HEADER) {
            first = header.readUInt32LE(16 + 8 * PAGES_PER_FRAME);
            dataAt = 0;
          }
        } else {
          const n = Math.min(MiB - dataAt, chunk.length - at);
          memory.set(chunk.subarray(at, at + n), first * PAGE + dataAt);
          dataAt += n;
          at += n;
          if (dataAt === MiB) onFrame();
        }
      }
    });
    socket.on('end', done);
  }
} else {
  for (const work of ['data', 'onread']) {
    const sender = fork(new URL(import.meta.url), ['send', work]);
    const { port: listening } = await new Promise((resolve) => sender.once('message', resolve));
    const sent = new Promise((resolve) => sender.once('message', resolve));
    const receiver = fork(new URL(import.meta.url), ['receive', work, String(listening)]);
    const received = await new Promise((resolve) => receiver.once('message', resolve));
    const { gibPerSec, cpuMs } = await sent;
    console.log(`${work.padEnd(7)} ${gibPerSec.toFixed(2)} GiB/s, CPU per GiB: sender ${cpuMs.toFixed(0)} ms, receiver ${received.cpuMs.toFixed(0)} ms, both ${(cpuMs + received.cpuMs).toFixed(0)} ms`);
  }
}

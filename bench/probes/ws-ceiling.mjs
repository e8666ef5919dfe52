// The ceiling of ferry's data path on this machine, piece by piece: 1 GiB sent over one WebSocket from a sender
// process to a receiver process in 1 MiB frames from shared memory (as ferry sends pages), with
//   none:  no work on either side (ws and the kernel only)
//   copy:  the receiver copies each frame into its own shared memory (ferry's install)
//   hash:  both sides also xxh64 every 4 KiB page with xxhash-wasm (a copy into wasm memory, then the hash)
// Run from the repository root: node bench/probes/ws-ceiling.mjs
import { fork } from 'node:child_process';
import xxhash from 'xxhash-wasm';
import WebSocket, { WebSocketServer } from 'ws';

const GiB = 1 << 30;
const MiB = 1 << 20;
const [role, mode, port] = process.argv.slice(2);

function touchedMemory(value) {
  const memory = new Uint8Array(new SharedArrayBuffer(GiB));
  for (let offset = 0; offset < memory.length; offset += 4096) memory[offset] = value;
  return memory;
}

if (role === 'receive') {
  const { h64Raw } = await xxhash();
  const memory = touchedMemory(0);
  const server = new WebSocketServer({ port: 0, host: '127.0.0.1', maxPayload: 2 * MiB, perMessageDeflate: false });
  server.on('listening', () => process.send({ port: server.address().port }));
  server.on('connection', (socket) => {
    let offset = 0;
    const before = process.cpuUsage();
    socket.on('message', (data) => {
      if (mode !== 'none') {
        memory.set(data, offset % GiB);
        if (mode === 'hash') for (let i = 0; i < data.length; i += 4096) h64Raw(memory.subarray((offset % GiB) + i, (offset % GiB) + i + 4096));
      }
      offset += data.length;
    });
    socket.on('close', () => {
      const used = process.cpuUsage(before);
      process.send({ cpuMs: (used.user + used.system) / 1000 });
      process.exit(0);
    });
  });
} else if (role === 'send') {
  const { h64Raw } = await xxhash();
  const memory = touchedMemory(1);
  const socket = new WebSocket(`ws://127.0.0.1:${port}`, { generateMask: (mask) => mask.fill(0), perMessageDeflate: false });
  socket.on('open', async () => {
    const started = performance.now();
    const before = process.cpuUsage();
    let outstanding = 0;
    for (let offset = 0; offset < GiB; offset += MiB) {
      const view = Buffer.from(memory.buffer, offset, MiB);
      if (mode === 'hash') for (let i = 0; i < MiB; i += 4096) h64Raw(view.subarray(i, i + 4096));
      outstanding += MiB;
      socket.send(view, { binary: true }, () => { outstanding -= MiB; });
      while (outstanding > 8 * MiB) await new Promise((resolve) => setImmediate(resolve));
    }
    while (outstanding > 0) await new Promise((resolve) => setImmediate(resolve));
    const seconds = (performance.now() - started) / 1000;
    const used = process.cpuUsage(before);
    process.send({ gibPerSec: 1 / seconds, cpuMs: (used.user + used.system) / 1000 });
    socket.close();
  });
} else {
  for (const work of ['none', 'copy', 'hash']) {
    const receiver = fork(new URL(import.meta.url), ['receive', work]);
    const { port: listening } = await new Promise((resolve) => receiver.once('message', resolve));
    const receiverDone = new Promise((resolve) => receiver.on('message', resolve));
    const sender = fork(new URL(import.meta.url), ['send', work, String(listening)]);
    const sent = await new Promise((resolve) => sender.once('message', resolve));
    const received = await receiverDone;
    console.log(`${work.padEnd(5)} ${sent.gibPerSec.toFixed(2)} GiB/s, CPU per GiB: sender ${sent.cpuMs.toFixed(0)} ms, receiver ${received.cpuMs.toFixed(0)} ms`);
    sender.kill();
  }
}

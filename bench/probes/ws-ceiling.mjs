// The ceiling of ferry's data path on this machine, piece by piece: 1 GiB sent over one WebSocket from a sender
// process to a receiver process in 1 MiB frames from shared memory (as ferry sends pages), with
//   none:  no work on either side (ws and the kernel only)
//   copy:  the receiver copies each frame into its own shared memory (ferry's install)
//   xxh64: both sides also hash every 4 KiB page where it lies with xxh64 (shared/xxh64-page.wat), ferry's page hash
//          before protocol 3
//   hash:  both sides also hash every 4 KiB page with ferry's page hasher (shared/page-hash.ts: XXH3-64, in place)
// Run from the repository root after `npm run build`: node bench/probes/ws-ceiling.mjs
import { fork } from 'node:child_process';
import WebSocket, { WebSocketServer } from 'ws';
import { PageHasher, allocateGuestMemory } from '../../dist/shared/page-hash.js';
import { XXH64_PAGE_WASM } from '../../dist/shared/xxh64-page.wasm.js';

const GiB = 1 << 30;
const MiB = 1 << 20;
const [role, mode, port] = process.argv.slice(2);

/** A GiB of guest memory (shared wasm memory, every page touched) and a function that hashes page `page` of it. */
function guest(value) {
  const wasm = allocateGuestMemory(GiB);
  const memory = new Uint8Array(wasm.buffer);
  for (let offset = 0; offset < memory.length; offset += 4096) memory[offset] = value;
  const table = new Uint32Array(2);
  if (mode === 'xxh64') {
    const xxh64 = new WebAssembly.Instance(new WebAssembly.Module(Buffer.from(XXH64_PAGE_WASM, 'base64')), { env: { memory: wasm } }).exports;
    return { memory, hashPage: (page) => { xxh64.hashPage(page * 4096); table[0] = xxh64.lo.value; table[1] = xxh64.hi.value; } };
  }
  const hasher = new PageHasher(wasm);
  return { memory, hashPage: (page) => hasher.hashInto(page, table, 0) };
}
const hashing = mode === 'xxh64' || mode === 'hash';

if (role === 'receive') {
  const { memory, hashPage } = guest(0);
  const server = new WebSocketServer({ port: 0, host: '127.0.0.1', maxPayload: 2 * MiB, perMessageDeflate: false });
  server.on('listening', () => process.send({ port: server.address().port }));
  server.on('connection', (socket) => {
    let offset = 0;
    const before = process.cpuUsage();
    socket.on('message', (data) => {
      if (mode !== 'none') {
        memory.set(data, offset % GiB);
        if (hashing) for (let i = 0; i < data.length; i += 4096) hashPage(((offset % GiB) + i) / 4096);
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
  const { memory, hashPage } = guest(1);
  const socket = new WebSocket(`ws://127.0.0.1:${port}`, { generateMask: (mask) => mask.fill(0), perMessageDeflate: false });
  socket.on('open', async () => {
    const started = performance.now();
    const before = process.cpuUsage();
    let outstanding = 0;
    for (let offset = 0; offset < GiB; offset += MiB) {
      const view = Buffer.from(memory.buffer, offset, MiB);
      if (hashing) for (let i = 0; i < MiB; i += 4096) hashPage((offset + i) / 4096);
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
  for (const work of ['none', 'copy', 'xxh64', 'hash']) {
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

// What a destination pays to make 1 GiB of guest memory real, and whether any arrangement of that work hides it behind
// the transfer on this machine. A receiver process allocates 1 GiB of fresh guest memory (as a reservation does) and
// takes 1 GiB from a sender process over plain TCP, read straight into guest memory with `onread` and every page
// hashed on both sides with ferry's page hasher, as ferry's page stream does. Timed from the allocation to the last
// byte in, three ways:
//   populate-first: a write to every 4 KiB page, then the transfer (ferry's reservation, then round 1)
//   fresh:          no populate: the socket reads fault the pages in as they land
//   worker:         a worker thread populates (an atomic add of 0 per page, which cannot undo a write that landed
//                   first) while the transfer runs, a second core's work on the first core's memory
// and the populate alone, for the cost of the page faults themselves.
// Run from the repository root after `npm run build`: node bench/probes/reservation.mjs [runs]
import { fork } from 'node:child_process';
import net from 'node:net';
import { Worker } from 'node:worker_threads';
import { PageHasher, allocateGuestMemory } from '../../dist/shared/page-hash.js';

const GiB = 1 << 30;
const MiB = 1 << 20;
const PAGE = 4096;
const [role, mode, port] = process.argv.slice(2);

function touchAll(memory) {
  for (let offset = 0; offset < memory.length; offset += PAGE) memory[offset] = 0;
}

function guest() {
  const wasm = allocateGuestMemory(GiB);
  const table = new Uint32Array(2 * (GiB / PAGE));
  const hasher = new PageHasher(wasm);
  return { wasm, memory: new Uint8Array(wasm.buffer, 0, GiB), hashPage: (page) => hasher.hashInto(page, table, page) };
}

if (role === 'send') {
  const { memory, hashPage } = guest();
  for (let offset = 0; offset < memory.length; offset += PAGE) memory[offset] = 1 + ((offset / PAGE) & 0x7f);
  const server = net.createServer((socket) => {
    let outstanding = 0;
    let page = 0;
    const pump = () => {
      while (page < GiB / PAGE && outstanding < 8 * MiB) {
        for (let i = 0; i < 256; i++) hashPage(page + i);
        outstanding += MiB;
        socket.write(Buffer.from(memory.buffer, page * PAGE, MiB), () => {
          outstanding -= MiB;
          if (page < GiB / PAGE) setImmediate(pump);
          else if (outstanding === 0) socket.end();
        });
        page += 256;
      }
    };
    pump();
  });
  server.listen(0, '127.0.0.1', () => process.send({ port: server.address().port }));
  process.on('message', () => process.exit(0));
} else if (role === 'receive') {
  const started = performance.now();
  const { wasm, memory, hashPage } = guest();
  let populatedMs;
  let worker;
  if (mode === 'populate-first' || mode === 'populate-only') {
    touchAll(memory);
    populatedMs = performance.now() - started;
    if (mode === 'populate-only') {
      process.send({ populatedMs, totalMs: populatedMs });
      process.exit(0);
    }
  } else if (mode === 'worker') {
    worker = new Worker(`
      const { workerData, parentPort } = require('node:worker_threads');
      const words = new Int32Array(workerData.buffer, 0, workerData.bytes / 4);
      const started = performance.now();
      for (let i = 0; i < words.length; i += 1024) Atomics.add(words, i, 0);
      parentPort.postMessage(performance.now() - started);`, { eval: true, workerData: { buffer: wasm.buffer, bytes: GiB } });
    worker.once('message', (ms) => (populatedMs = ms));
  }
  const transferStarted = performance.now();
  let at = 0;
  const socket = net.connect({
    port: Number(port),
    host: '127.0.0.1',
    onread: {
      // Past the last byte only the end of the stream can come: a scratch buffer, never one of length 0.
      buffer: () => (at < GiB ? Buffer.from(memory.buffer, at, MiB - (at % MiB)) : Buffer.alloc(16)),
      callback: (n) => {
        at += n;
        if (at % MiB === 0) for (let i = 0; i < 256; i++) hashPage(at / PAGE - 256 + i);
      },
    },
  });
  socket.on('end', async () => {
    const done = performance.now();
    if (worker && populatedMs === undefined) await new Promise((resolve) => worker.once('exit', resolve));
    process.send({ populatedMs, transferMs: done - transferStarted, totalMs: done - started, bytes: at });
    process.exit(0);
  });
} else {
  const runs = Number(role ?? 3);
  const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
  const results = {};
  for (let run = 0; run < runs; run++) {
    for (const arrangement of ['populate-only', 'populate-first', 'fresh', 'worker']) {
      const sender = fork(new URL(import.meta.url), ['send', arrangement]);
      const { port: listening } = await new Promise((resolve) => sender.once('message', resolve));
      const receiver = fork(new URL(import.meta.url), ['receive', arrangement, String(listening)]);
      const result = await new Promise((resolve) => receiver.once('message', resolve));
      sender.send('stop');
      await new Promise((resolve) => sender.once('exit', resolve));
      (results[arrangement] ??= []).push(result);
    }
  }
  const fmt = (ms) => (ms === undefined ? '-' : `${ms.toFixed(0)} ms`);
  for (const [arrangement, list] of Object.entries(results)) {
    const total = median(list.map((r) => r.totalMs));
    const transfer = list[0].transferMs === undefined ? undefined : median(list.map((r) => r.transferMs));
    const populated = list[0].populatedMs === undefined ? undefined : median(list.map((r) => r.populatedMs ?? 0));
    console.log(`${arrangement.padEnd(15)} total ${fmt(total)} (${list.map((r) => r.totalMs.toFixed(0)).join(', ')}), populate ${fmt(populated)}, transfer ${fmt(transfer)}${transfer ? `, ${(1000 / transfer).toFixed(2)} GiB/s` : ''}`);
  }
}

// What one message each way costs between two processes on this machine, over a WebSocket as ferry's switchover
// sends it: a small binary message answered at once by the other process. Measured two ways:
//   busy:  200 round trips back to back (both processes awake, the cores warm)
//   idle:  20 round trips, each after 500 ms in which neither process did anything (as the first message of a
//          migration's pause finds two fresh agents: asleep in the kernel, and the machine's cores perhaps halted)
// Run from the repository root: node bench/probes/wake-latency.mjs
import { fork } from 'node:child_process';
import WebSocket, { WebSocketServer } from 'ws';

const [role, port] = process.argv.slice(2);

if (role === 'echo') {
  const server = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false });
  server.on('listening', () => process.send({ port: server.address().port }));
  server.on('connection', (socket) => socket.on('message', (data) => socket.send(data, { binary: true })));
} else if (role === 'ask') {
  const socket = new WebSocket(`ws://127.0.0.1:${port}`, { generateMask: (mask) => mask.fill(0), perMessageDeflate: false });
  const message = Buffer.alloc(512, 7);
  const roundTrip = () => new Promise((resolve) => {
    const started = performance.now();
    socket.once('message', () => resolve(performance.now() - started));
    socket.send(message, { binary: true });
  });
  const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
  const p90 = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length * 0.9)];
  socket.on('open', async () => {
    for (let i = 0; i < 50; i++) await roundTrip(); // warm the code paths first: only the waking differs below
    const busy = [];
    for (let i = 0; i < 200; i++) busy.push(await roundTrip());
    const idle = [];
    for (let i = 0; i < 20; i++) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      idle.push(await roundTrip());
    }
    console.log(`busy: round trip median ${median(busy).toFixed(3)} ms, p90 ${p90(busy).toFixed(3)} ms (${busy.length})`);
    console.log(`idle: round trip median ${median(idle).toFixed(3)} ms, p90 ${p90(idle).toFixed(3)} ms (${idle.length}, each after 500 ms idle)`);
    socket.close();
    process.exit(0);
  });
} else {
  const echo = fork(new URL(import.meta.url), ['echo']);
  const { port: listening } = await new Promise((resolve) => echo.once('message', resolve));
  const ask = fork(new URL(import.meta.url), ['ask', String(listening)]);
  await new Promise((resolve) => ask.once('exit', resolve));
  echo.kill();
}

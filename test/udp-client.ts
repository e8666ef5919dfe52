/**
 * A raw UDP client of a VM's guest service for integration tests (DESIGN.md, "Guest service protocol"): sends
 * datagrams, collects replies by id, and can retry what is unanswered. Only to 127.0.0.0/8.
 */
import dgram from 'node:dgram';

export interface GuestClient {
  /**
   * Sends each request once, 25 at a time with a pause between (a burst larger than a socket's receive buffer would
   * be dropped by the kernel, which is no test of the guest); resolves with the replies (by id) that came within
   * `waitMs` of the last.
   */
  send(requests: (string | Buffer)[], waitMs?: number): Promise<Map<string, string>>;
  /** Sends `request` (which must carry an id), retrying every `retryMs` until answered or `timeoutMs` passes. */
  ask(request: string, options?: { retryMs?: number; timeoutMs?: number }): Promise<string | undefined>;
  /** Every reply received so far, in order. */
  readonly replies: string[];
  close(): void;
}

const CLIENT_RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024;

export async function guestClient(address: string): Promise<GuestClient> {
  const [ip, portText] = address.split(':');
  if (!ip?.startsWith('127.')) throw new Error(`test traffic goes only to 127.0.0.0/8, not ${address}`);
  const port = Number(portText);
  const socket = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', () => resolve()));
  // After a switchover the destination answers everything kept and forwarded at once: hundreds of replies in a burst,
  // more than the default receive buffer (208 KiB, about 200 small datagrams) holds. The kernel would drop the rest
  // here, in the client, and the test would blame the guest.
  socket.setRecvBufferSize(CLIENT_RECEIVE_BUFFER_BYTES);
  const replies: string[] = [];
  const waiters = new Map<string, (reply: string) => void>();
  socket.on('message', (message) => {
    const reply = message.toString('latin1');
    replies.push(reply);
    const id = reply.split(' ')[0]!;
    waiters.get(id)?.(reply);
  });
  const idOf = (request: string | Buffer): string => Buffer.from(request).toString('latin1').split(' ')[0]!;
  return {
    replies,
    async send(requests, waitMs = 500) {
      const got = new Map<string, string>();
      const before = replies.length;
      for (let index = 0; index < requests.length; index++) {
        const request = requests[index]!;
        socket.send(typeof request === 'string' ? Buffer.from(request, 'latin1') : request, port, ip);
        if (index % 25 === 24) await new Promise((resolve) => setTimeout(resolve, 5));
      }
      await new Promise((resolve) => setTimeout(resolve, waitMs));
      for (const reply of replies.slice(before)) got.set(reply.split(' ')[0]!, reply);
      return got;
    },
    async ask(request, { retryMs = 50, timeoutMs = 5000 } = {}) {
      const id = idOf(request);
      return new Promise<string | undefined>((resolve) => {
        const deadline = setTimeout(() => finish(undefined), timeoutMs);
        const again = setInterval(() => socket.send(Buffer.from(request, 'latin1'), port, ip), retryMs);
        function finish(reply: string | undefined): void {
          clearTimeout(deadline);
          clearInterval(again);
          waiters.delete(id);
          resolve(reply);
        }
        waiters.set(id, finish);
        socket.send(Buffer.from(request, 'latin1'), port, ip);
      });
    },
    close: () => socket.close(),
  };
}

/** Sends PING with fresh ids at `perSecond`, each once, until stopped; `stop` resolves with how many were answered. */
export function steadyPings(client: GuestClient, perSecond: number, firstId = 1_000_000): { stop: () => Promise<{ sent: number; answered: number; missing: string[] }> } {
  let next = firstId;
  const asked: Promise<string | undefined>[] = [];
  const ids: string[] = [];
  const timer = setInterval(() => {
    const id = String(next++);
    ids.push(id);
    // Sent once, never retried: a PING not answered was lost.
    asked.push(client.ask(`${id} PING`, { retryMs: 60_000, timeoutMs: 15_000 }));
  }, 1000 / perSecond);
  return {
    stop: async () => {
      clearInterval(timer);
      const answers = await Promise.all(asked);
      return { sent: ids.length, answered: answers.filter((reply) => reply?.endsWith('PONG')).length, missing: ids.filter((_, index) => answers[index] === undefined) };
    },
  };
}

/**
 * Feeds a byte stream to a StreamConsumer (shared/page-stream.ts) as a socket would: each read fills part of the
 * buffer the consumer chose, in pieces of pseudo-random sizes (1 byte up to 300 KiB, seeded so a failure replays).
 */
import type { StreamConsumer } from '../shared/page-stream.js';

export function feedStream(consumer: StreamConsumer, stream: Buffer, seed: number): void {
  let state = seed;
  let at = 0;
  while (at < stream.length) {
    state = (state * 1103515245 + 12345) >>> 0;
    const into = consumer.next();
    const size = Math.min(into.length, stream.length - at, 1 + (state % (state & 1 ? 300 * 1024 : 100)));
    into.set(stream.subarray(at, at + size));
    at += size;
    consumer.took(size);
  }
}

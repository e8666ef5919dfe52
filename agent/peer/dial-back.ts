/**
 * The destination's half of opening a page stream (shared/page-stream.ts), for a migration (live-target.ts,
 * `peer.stream`) and a link measurement (link-probe.ts, `link.begin`): dial the source back with its ticket and hand
 * the stream to whoever reads it. A stream that cannot be opened is no failure: the source sends on the peer
 * WebSocket instead, and says why. A stream lost later, while pages are due, closes the peer connection.
 */
import { PAGE_STREAM_DIAL_TIMEOUT_MS } from '../../shared/constants.js';
import { dialPageStream, type PageStreamConnection } from '../../shared/page-stream.js';
import type { Agent, PeerServer } from '../agent.js';

export type DialedBack = { open: true } | { open: false; reason: string };

/**
 * Dials `url` with `ticket` and gives the stream to `attach` (which may throw: the stream is then closed, and the
 * error thrown), unless the peer connection closed meanwhile. `what` names the stream in log lines.
 */
export async function dialBack(
  agent: Agent,
  connection: PeerServer,
  request: { url: string; ticket: string; what: string },
  attach: (stream: PageStreamConnection, onLost: (why: string) => void) => void,
): Promise<DialedBack> {
  let stream: PageStreamConnection;
  try {
    stream = await dialPageStream({ url: request.url, token: agent.token, ticket: request.ticket, timeoutMs: PAGE_STREAM_DIAL_TIMEOUT_MS });
  } catch (error) {
    agent.log.warn(`could not open the page stream for ${request.what}; pages come over the peer WebSocket`, { error: (error as Error).message });
    return { open: false, reason: (error as Error).message };
  }
  if (connection.signal.aborted) {
    stream.socket.destroy();
    return { open: false, reason: 'the peer connection closed' };
  }
  try {
    attach(stream, (why) => {
      agent.log.warn(`page stream of ${request.what} lost; closing the peer connection`, { error: why });
      connection.close(1011, 'page stream lost');
    });
  } catch (error) {
    stream.socket.destroy();
    throw error;
  }
  return { open: true };
}

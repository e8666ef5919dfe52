/**
 * This agent as a client of another: a migration's page stream to its destination, and the fresh connections that
 * settlement and cold migration open. All go through the one dialer (shared/dial.ts).
 */
import { PEER_REPLY_TIMEOUT_MS, PROTOCOL_VERSION } from '../../shared/constants.js';
import { dialAgent } from '../../shared/dial.js';
import { peerOps, type PeerOps } from '../../shared/protocol.js';
import type { RpcConnection } from '../../shared/rpc.js';

export type PeerClient = RpcConnection<Record<never, never>, PeerOps>;

/** A fresh, unbound peer connection to the agent at `url`, presenting the cluster's token. */
export function dialPeerAgent(url: string, token: string, signal?: AbortSignal): Promise<PeerClient> {
  return dialAgent({
    url,
    path: '/peer',
    token,
    signal,
    unauthorizedHint: 'give every agent of the cluster the same token (--token-file or FERRY_TOKEN)',
    unreachableHint: 'check that it runs and that this host can reach it (ferry hosts add --migration-url, when agents reach each other at another address)',
  }, peerOps);
}

/** Opens the page stream to the destination: a peer connection bound to this migration's reservation. */
export async function connectToDestination(url: string, migrationId: string, from: string, signal: AbortSignal, token: string, resume = false): Promise<PeerClient> {
  return greetDestination(await dialPeerAgent(url, token, signal), migrationId, from, signal, resume);
}

/**
 * Binds a fresh peer connection to the destination's reservation for this migration; `resume`: to its post-copy,
 * whose link broke.
 */
export async function greetDestination(peer: PeerClient, migrationId: string, from: string, signal: AbortSignal, resume = false): Promise<PeerClient> {
  try {
    await peer.request('peer.hello', { migrationId, from, version: PROTOCOL_VERSION, ...(resume ? { resume: true } : {}) }, { timeoutMs: PEER_REPLY_TIMEOUT_MS, signal });
  } catch (error) {
    peer.close();
    throw error;
  }
  return peer;
}

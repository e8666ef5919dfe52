/**
 * What a switchover runs inside the pause, run once when the agent starts: its messages through the codec and their
 * schemas, the dirty log's harvest, the check of a config's disks; and the same for a post-copy switch (its messages,
 * and the destination marking the missing pages absent).
 *
 * zod builds a schema's parser the first time it is used, and V8 compiles the code that runs it: measured here, the
 * first parse of a switchover request took 2.8-3.0 ms and of its reply 1.2-1.3 ms, the second 0.1 ms and 0.05 ms. In a
 * fresh agent that first parse would fall inside the first migration's pause (the destination parses the request, the
 * source the reply), and a fresh agent's first switchover took 9-10 ms where the next ones took 3-5. Every field is
 * present in the samples, so that no part of either schema is met for the first time in a pause. The same holds for
 * the harvest of a 1 GiB guest's dirty log (2.8 ms the first time, in a pause that had harvested nothing before, and
 * tens of microseconds once compiled) and the check of the disks in the VM's config at activation (1.3 ms).
 *
 * Once is not enough for the messages: code run once stays in V8's interpreter, and a fresh agent's decode and parse of
 * a switchover request still took 0.3-0.4 ms, of its reply 0.24-0.26 ms; after a few hundred runs, 0.16 and 0.04 ms
 * (measured alone, `node` on this machine). So the messages go through `WARM_MESSAGES` times, with values that change
 * so that nothing is folded away: about 60 ms of the agent's start, and 50 ms more for post-copy's switch. For that
 * switch, on fresh agents with a 1 GiB guest (8 first migrations each, --postcopy-after 0), the pause was 3.25-3.83 ms
 * with its messages and the destination's marking of missing pages warmed this way, 3.54-5.79 ms with the messages run
 * 100 times, 3.49-6.79 ms run once; the marking alone went from 1.4-1.5 ms to 0.11 ms.
 */
import { decodeMessage, encodeMessage } from '../../shared/rpc.js';
import { peerOps } from '../../shared/protocol.js';
import { vmConfigSchema } from '../datastore/config.js';
import { DirtyLog } from '../vm/dirty-log.js';
import { PresentMap } from '../vm/present-map.js';

/** Runs of each message through the codec and its schema: enough for V8 to compile them optimized. */
const WARM_MESSAGES = 300;
/** A 1 GiB guest's pages. */
const WARM_PAGES = 262_144;

export function warmSwitchover(): void {
  const sampleRequest = {
    registers: { x: 1, n: 1, y: 1, m: 1, heartbeatMs: 1 },
    mode: 'pages',
    resume: true,
    files: { config: '{}', nvram: new Uint8Array(8), log: '', configDrive: '{}' },
    guest: { hostname: 'warm' },
    network: { ip: '10.0.0.1', prefix: 24, gateway: '10.0.0.254', mac: '02:00:00:00:00:01' },
    streamBytes: 1,
    sourceDigest: '0000000000000000',
  };
  const sampleReply = {
    destDigest: '0000000000000000', destMemoryDigest: '0000000000000000', pageMismatches: 0, damagedWhilePaused: 0,
    timeline: [{ event: 'warm', atMs: 0 }], anchorEpochMs: 0, gc: [{ kind: 'minor', startMs: 0, durationMs: 0 }],
    match: true, activated: true, guestBlackoutMs: 0, servingAfterMs: 0, announcements: 0,
  };
  warmMessages('peer.switchover', sampleRequest, sampleReply);
  // Post-copy's switch: the same, with a bitmap of missing pages instead of a verify mode. 4 KiB of it takes the
  // codec's path for a 1 GiB guest's 32 KiB (MessagePack bin 16) at an eighth of the copying.
  const { mode: _mode, sourceDigest: _digest, ...postcopyBase } = sampleRequest;
  const { destDigest: _d, destMemoryDigest: _m, pageMismatches: _p, damagedWhilePaused: _w, match: _x, ...postcopyReply } = sampleReply;
  warmMessages('peer.postcopy', { ...postcopyBase, missing: new Uint8Array(4096).fill(0xff) }, postcopyReply);
  vmConfigSchema.shape.disks.parse([{ file: 'disk0.img', sizeBytes: 4096, shared: true }]);
  const log = DirtyLog.allocate(WARM_PAGES);
  const into = new Uint32Array(WARM_PAGES);
  for (let pass = 0; pass < 8; pass++) {
    log.mark(pass * 4099);
    log.harvestInto(into);
  }
  // The destination marks the missing pages absent inside the switch: for 1 GiB, 1.4-1.5 ms in a fresh agent's switch
  // even after runs on a plain Uint8Array (the codec gives a Buffer, and code compiled for one type is not for the
  // other), 0.11 ms after runs on a bitmap as the codec gives it.
  const missing = new Uint8Array(WARM_PAGES / 8).fill(0xff);
  const decoded = (decodeMessage(encodeMessage({ t: 'req', id: 0, op: 'peer.postcopy', body: { ...postcopyBase, missing } })) as { body: { missing: Uint8Array } }).body.missing;
  const present = PresentMap.allocate(WARM_PAGES);
  for (let pass = 0; pass < 8; pass++) {
    decoded[pass] = pass;
    present.loadMissing(decoded);
  }
}

/** A request and its reply through the codec and their schemas, WARM_MESSAGES times, with values that change. */
function warmMessages(op: 'peer.switchover' | 'peer.postcopy', sampleRequest: Record<string, unknown>, sampleReply: Record<string, unknown>): void {
  const [request, reply] = peerOps[op];
  const body = (envelope: ReturnType<typeof decodeMessage>): unknown => ('body' in envelope ? envelope.body : undefined);
  // A sample the schema refuses would warm the error path and leave the real one cold: a changed schema fails here.
  const requestOk = request.safeParse(body(decodeMessage(encodeMessage({ t: 'req', id: 0, op, body: sampleRequest })))).success;
  const replyOk = reply.safeParse(body(decodeMessage(encodeMessage({ t: 'res', id: 0, ok: true, body: sampleReply })))).success;
  if (!requestOk || !replyOk) throw new Error(`warm.ts: the ${op} ${requestOk ? 'reply' : 'request'} sample no longer fits its schema`);
  for (let i = 0; i < WARM_MESSAGES; i++) {
    request.safeParse(body(decodeMessage(encodeMessage({ t: 'req', id: i, op, body: { ...sampleRequest, streamBytes: i + 1 } }))));
    reply.safeParse(body(decodeMessage(encodeMessage({ t: 'res', id: i, ok: true, body: { ...sampleReply, anchorEpochMs: i } }))));
  }
}

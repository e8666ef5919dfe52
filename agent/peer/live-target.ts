/**
 * Another agent's live migration into this host: the page stream (binary frames, straight into the reservation's
 * guest memory) and the requests of stages 2-5 on the same connection. The reservation itself was made on the
 * control connection (control/migrate.ts); `peer.hello` binds this connection to it.
 */
import { PROTOCOL_VERSION } from '../../shared/constants.js';
import { dialBack } from './dial-back.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import type { Agent, PeerServer } from '../agent.js';
import { faultPoint } from '../faults.js';
import type { MigrationTarget } from '../migration/target.js';

export function serveLiveTarget(connection: PeerServer, agent: Agent): void {
  const { faults, log } = agent;
  let target: MigrationTarget | undefined;
  connection.rawFrameHook = (frame) => {
    if (!target) return false;
    try {
      return target.takeFrame(frame);
    } catch (error) {
      log.warn('bad page frame; closing the page stream', { error: (error as Error).message });
      connection.close(1008, 'bad page frame');
      return true;
    }
  };
  connection.signal.addEventListener('abort', () => target?.connectionClosed(), { once: true });

  connection.handle('peer.hello', async ({ migrationId, from, version, resume }) => {
    if (version !== PROTOCOL_VERSION) {
      throw new FerryError(ErrorCode.PROTOCOL_VERSION, `the source speaks protocol ${version}, ${agent.name} speaks ${PROTOCOL_VERSION}`, 'run the same ferry version on every host');
    }
    if (target) throw new FerryError(ErrorCode.PROTOCOL, 'this page stream already belongs to a migration', 'open a new connection per migration');
    const found = agent.incoming.get(migrationId);
    if (!found) {
      throw new FerryError(ErrorCode.VM_NOT_FOUND, `no reservation for migration ${migrationId} on ${agent.name}`, 'the reservation expired or was released; start the migration again');
    }
    found.attach(from, resume === true);
    found.closeStream = () => connection.close(1001, 'reservation expired');
    target = found;
    return { name: agent.name };
  });
  const current = (): MigrationTarget => {
    if (!target) throw new FerryError(ErrorCode.PROTOCOL, 'peer.hello must come first', 'the peer is not a compatible ferry-agent');
    return target;
  };
  // The page stream of its own: dialled back to the source, which sends on it once this is answered. A stream that
  // cannot be opened is no failure: the source sends on this WebSocket instead, and says so in its report.
  connection.handle('peer.stream', async ({ ticket }) => {
    const found = current();
    return dialBack(agent, connection, { url: found.sourceUrl, ticket, what: `the migration of ${found.vm.name}` }, (stream, onLost) => found.attachStream(stream, onLost));
  });
  connection.handle('peer.sync', async ({ round, beforePause, streamBytes, config }) => {
    await current().streamAt(streamBytes);
    const reply = current().sync();
    if (beforePause) {
      if (config !== undefined) current().prepareActivation(config);
      // The page frames taken are most of the garbage; with none yet (post-copy from the start) a collection only
      // costs time (source.ts, the post-copy switch).
      if ((streamBytes ?? 0) > 0) {
        const tookMs = agent.collectGarbage();
        log.debug('collected before the pause', { tookMs });
      }
      return reply;
    }
    await faultPoint(faults, `round-${round}`, log, () => connection.close());
    return reply;
  });
  connection.handle('peer.verify', async (request) => {
    const startedMs = performance.now();
    await current().streamAt(request.streamBytes);
    const reply = current().verify(request, startedMs);
    log.debug('verified', { tookMs: performance.now() - startedMs });
    // 'after-verify' fires once the reply is on its way; so does the activation's groundwork.
    setImmediate(() => {
      target?.prepareActivation();
      void faultPoint(faults, 'after-verify', log, () => connection.close());
    });
    return reply;
  });
  // Verification and activation in one round trip (source.ts, "the switchover"). The source is committed from the
  // moment it asked: from here this side decides. A match activates at once; a mismatch, or pages that never all
  // arrive, drops the image, and the source (told, or settling) finds this host never ran the VM.
  connection.handle('peer.switchover', async (request) => {
    const startedMs = performance.now();
    const found = current();
    if (request.mode !== 'pages') throw new FerryError(ErrorCode.PROTOCOL, 'a switchover verifies the page tables only', 'ask peer.verify for --verify full');
    found.switchoverAsked = true;
    // Until the comparison has passed, any failure drops the image: nothing verified it, and the source, told or
    // settling, finds this host never ran the VM.
    let verified;
    try {
      await found.streamAt(request.streamBytes);
      verified = found.verify(request, startedMs, { switchover: true });
    } catch (error) {
      await found.drop(`the switchover failed before its comparison: ${(error as Error).message}`, { keepVerified: false });
      throw error;
    }
    if (verified.destDigest !== request.sourceDigest || verified.damagedWhilePaused > 0) {
      await found.drop('its image does not match the source\'s', { keepVerified: false });
      return { ...verified, match: false, activated: false };
    }
    await faultPoint(faults, 'after-verify', log, () => connection.close());
    await faultPoint(faults, 'before-activation', log, () => connection.close());
    let activated;
    try {
      activated = await found.activate(request.resume, performance.now(), { switchover: true });
    } catch (error) {
      // Refused before the vCPU ran (its activation record could not be written: the image is verified, not active):
      // this copy never ran, so it goes, and the source resumes its own.
      if (found.state !== 'verified') throw error;
      log.error('could not activate after a switchover; dropping the image, the source resumes', { vm: found.vm.name, error: (error as Error).message });
      await found.drop(`could not activate: ${(error as Error).message}`, { keepVerified: false });
      return { ...verified, match: true, activated: false };
    }
    // The connection closed while this ran: the source may never hear how it ended (settlement.ts).
    if (connection.signal.aborted && !found.sourceReleased) found.onSourceUnconfirmed?.();
    log.debug('switched over', { tookMs: performance.now() - startedMs });
    return { ...verified, ...activated, timeline: [...(verified.timeline ?? []), ...(activated.timeline ?? [])], match: true, activated: true };
  });
  // The post-copy switch (source: postcopy-source.ts). As for a switchover, the source is committed from the moment
  // it asked: a failure before the VM runs here drops the image and says so (the source resumes its copy); once it
  // runs here, a closed connection leaves it running and waiting for its missing pages until the source reconnects.
  connection.handle('peer.postcopy', async (request) => {
    const startedMs = performance.now();
    const found = current();
    found.switchoverAsked = true;
    try {
      await found.streamAt(request.streamBytes);
      const reply = await found.beginPostcopy(request, startedMs);
      setImmediate(() => void faultPoint(faults, 'postcopy-switched', log, () => connection.close()));
      log.debug('switched to post-copy', { vm: found.vm.name, missing: found.postcopy?.missing, tookMs: performance.now() - startedMs });
      return { ...reply, activated: true };
    } catch (error) {
      if (found.state !== 'receiving' && found.state !== 'verified') throw error;
      log.error('could not switch to post-copy; dropping the image, the source resumes', { vm: found.vm.name, error: (error as Error).message });
      await found.drop(`the post-copy switch failed: ${(error as Error).message}`, { keepVerified: false });
      return { guestBlackoutMs: 0, activated: false };
    }
  });
  connection.handle('peer.faults', async (_request, context) => {
    await current().faultChannel((pages) => void context.event({ pages }), context.signal);
    return {};
  });
  connection.handle('peer.postcopy-state', async () => current().postcopyState());
  connection.handle('peer.postcopy-end', async ({ sourceDigest }, context) => current().endPostcopy(sourceDigest, context.signal));
  connection.handle('peer.released', async () => {
    current().sourceReleased = true;
    return {};
  });
  connection.handle('peer.activate', async ({ resume }) => {
    const startedMs = performance.now();
    await faultPoint(faults, 'before-activation', log, () => connection.close());
    const reply = await current().activate(resume, startedMs);
    log.debug('activated', { tookMs: performance.now() - startedMs });
    return reply;
  });
  connection.handle('net.forward', async ({ datagrams }) => {
    current().takeForwarded(datagrams);
    return {};
  });
  connection.handle('disk.begin', async ({ disks }) => {
    await current().beginDisks(disks);
    return {};
  });
  // Called in arrival order, and the sink takes each write in call order: blocks land in the order they were sent.
  connection.handle('disk.write', async ({ index, first, data }) => {
    const written = current().writeDisk(index, first, data);
    written.catch(() => undefined);
    await faultPoint(faults, 'disk-receiving', log, () => connection.close());
    await written;
    return {};
  });
  connection.handle('disk.digest', async ({ index, full }) => current().diskDigest(index, full));
  connection.handle('peer.abort', async ({ reason }) => {
    await current().drop(`the source aborted: ${reason}`, { keepVerified: false });
    return {};
  });
}

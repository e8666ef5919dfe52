import { describe, expect, it } from 'vitest';
import { formatReport, stopReasonText, type MigrationReport } from '../../coordinator/report.js';

const MiB = 1024 ** 2;

function round(n: number, pages: number, dirtyPagesAfter: number) {
  return { round: n, pages, bytes: pages * 4096, durationMs: pages / 100, dirtyPagesAfter, throughputBytesPerSec: 400 * MiB };
}

function committed(): MigrationReport {
  return {
    vm: 'web1',
    from: 'host-a',
    to: 'host-b',
    throttlePct: 0,
    mode: 'live',
    outcome: 'committed',
    stopReason: 'few-dirty-pages',
    rounds: [round(1, 262_144, 9_876), round(2, 9_876, 1_234), round(3, 1_234, 37)],
    stopAndCopy: round(4, 37, 0),
    stages: [
      { stage: 0, name: 'pre-migration', startMs: 0, endMs: 2 },
      { stage: 2, name: 'iterative pre-copy', startMs: 5, endMs: 2700 },
      { stage: 3, name: 'stop-and-copy', startMs: 2700, endMs: 2712.5 },
    ],
    totalTimeMs: 2800,
    downtimeMs: 12.5,
    guestBlackoutMs: 13.7,
    expectedDowntimeMs: 0.4,
    maxDowntimeMs: 300,
    bytesSent: 273_291 * 4096,
    memoryBytes: 1024 * MiB,
    throughputBytesPerSec: 400 * MiB,
    verification: {
      mode: 'full',
      sourceDigest: 'a1b2c3d4e5f60718',
      destDigest: 'a1b2c3d4e5f60718',
      match: true,
      sourceMemoryDigest: '0badc0ffee0ddf00',
      destMemoryDigest: '0badc0ffee0ddf00',
      pageMismatches: 0,
    },
    cpu: { x: 2463534242, n: 1_234_567 },
  };
}

function rolledBack(): MigrationReport {
  return {
    vm: 'db7',
    from: 'host-a',
    to: 'host-b',
    throttlePct: 0,
    mode: 'live',
    outcome: 'rolled-back',
    error: { code: 'FERRY_ERR_CHECKSUM_MISMATCH', message: "the destination's image differs from what was sent", hint: 'retry the migration; if it recurs, check the link' },
    rounds: [round(1, 65_536, 500)],
    stages: [{ stage: 2, name: 'iterative pre-copy', startMs: 1, endMs: 700 }],
    totalTimeMs: 750,
    maxDowntimeMs: 300,
    bytesSent: 65_536 * 4096,
    memoryBytes: 256 * MiB,
    throughputBytesPerSec: 380 * MiB,
  };
}

/** What migrateLive returns when stage 0 fails: the VM was never found, so neither its host nor its size is known. */
function refusedBeforeRounds(): MigrationReport {
  return {
    vm: 'x',
    from: '?',
    to: 'y',
    throttlePct: 0,
    mode: 'live',
    outcome: 'failed',
    error: { code: 'FERRY_ERR_HOST_NOT_FOUND', message: 'no host named y in the cluster file (known: none yet)', hint: 'add it with `ferry hosts add y ws://ADDRESS:PORT`' },
    rounds: [],
    stages: [{ stage: 0, name: 'pre-migration', startMs: 0.03, endMs: 0.7 }],
    totalTimeMs: 0.75,
    maxDowntimeMs: 300,
    bytesSent: 0,
    memoryBytes: 0,
    throughputBytesPerSec: 0,
  };
}

describe('formatReport', () => {
  it('says why the guest blackout is shorter than the downtime, when it is, and nothing when it is not', () => {
    const shorter = formatReport({ ...committed(), downtimeMs: 12.5, guestBlackoutMs: 9.1 });
    expect(shorter).toMatch(/guest blackout +9\.10 ms {2}\(gap in the guest's own heartbeat; shorter than downtime, which the source times from asking the vCPU to pause/);
    expect(formatReport(committed())).not.toContain('shorter than downtime');
  });

  it('says COMMITTED and names the VM and both hosts for a committed migration', () => {
    const text = formatReport(committed());
    const first = text.split('\n')[0]!;
    expect(first).toContain('COMMITTED');
    expect(first).toContain('web1');
    expect(first).toMatch(/host-a.*host-b/);
    expect(text).not.toMatch(/ROLLED BACK|FAILED/);
    expect(text).not.toContain('keeps running');
  });

  it('lists every pre-copy round with its page count and dirty pages after, then the stop-and-copy', () => {
    const text = formatReport(committed());
    for (const [n, pages, after] of [[1, '262,144', '9,876'], [2, '9,876', '1,234'], [3, '1,234', '37']] as const) {
      expect(text).toMatch(new RegExp(`^\\s+${n}\\s+${pages}\\s.*\\s${after}$`, 'm'));
    }
    expect(text).toMatch(/^\s+stop\+copy\s+37\s/m);
  });

  it('states the downtime, the limit and why pre-copy ended', () => {
    const text = formatReport(committed());
    expect(text).toMatch(/downtime\s+12\.5 ms/);
    expect(text).toContain('limit 300.0 ms');
    expect(text).toContain(stopReasonText['few-dirty-pages']);
    expect(text).toMatch(/guest blackout\s+13\.7 ms/);
  });

  it('shows both verification digests and whether they match', () => {
    const text = formatReport(committed());
    const line = text.split('\n').find((l) => l.includes('verification'))!;
    expect(line).toBeDefined();
    expect(line.match(/a1b2c3d4e5f60718/g)).toHaveLength(2);
    expect(line).toContain('0badc0ffee0ddf00');
    expect(line).toContain('match');
    expect(line).not.toContain('MISMATCH');
  });

  it('flags mismatching digests as MISMATCH', () => {
    const report = committed();
    report.outcome = 'failed';
    report.verification = { ...report.verification!, destDigest: 'ffffffffffffffff', match: false };
    const text = formatReport(report);
    expect(text).toContain('FAILED');
    expect(text).toMatch(/a1b2c3d4e5f60718.*ffffffffffffffff.*MISMATCH/);
  });

  it('says when the new host started serving the VM\'s address and how many datagrams were forwarded, and nothing of a network the VM lacks', () => {
    const report = { ...committed(), network: { address: '127.100.0.5:7777', servingAfterPauseMs: 5.9, forwarded: 8 } };
    const line = formatReport(report).split('\n').find((l) => l.trim().startsWith('network'))!;
    expect(line).toContain('127.100.0.5:7777: served from');
    expect(line).toMatch(/5\.9\d* ms after the pause; 8 datagram\(s\) forwarded from .* during the switchover/);
    expect(formatReport(committed())).not.toMatch(/^\s*network/m);
  });

  it('hands over the registers the destination continues from', () => {
    expect(formatReport(committed())).toMatch(/x=2463534242 n=1,234,567/);
  });

  it('for a rolled-back migration gives the error code, message and hint and says the VM keeps running on the source', () => {
    const text = formatReport(rolledBack());
    expect(text.split('\n')[0]).toContain('ROLLED BACK');
    expect(text).not.toContain('COMMITTED');
    expect(text).toContain('FERRY_ERR_CHECKSUM_MISMATCH');
    expect(text).toContain("the destination's image differs from what was sent");
    expect(text).toContain('retry the migration; if it recurs, check the link');
    expect(text).toMatch(/db7 keeps running on host-a/);
    expect(text).not.toMatch(/keeps running on host-b/);
  });

  it('says how far over the downtime limit a cap-forced stop went', () => {
    const report = { ...committed(), stopReason: 'max-rounds' as const, downtimeMs: 450, downtimeLimitExceededMs: 150 };
    const text = formatReport(report);
    expect(text).toContain(stopReasonText['max-rounds']);
    expect(text).toMatch(/over the limit\s+150\.0 ms/);
  });

  it('prints no NaN or Infinity for a migration refused before its first round, and says nothing was sent', () => {
    const text = formatReport(refusedBeforeRounds());
    expect(text).not.toMatch(/NaN|Infinity/);
    expect(text.split('\n')[0]).toContain('FAILED');
    expect(text).toContain('FERRY_ERR_HOST_NOT_FOUND');
    expect(text).toMatch(/sent\s+nothing/);
  });

  it('prints no NaN when the VM was found but the migration failed before any page was sent', () => {
    const report = { ...refusedBeforeRounds(), from: 'host-a', memoryBytes: 64 * MiB };
    const text = formatReport(report);
    expect(text).not.toMatch(/NaN|Infinity/);
    expect(text).toMatch(/sent\s+nothing of 64 MiB of memory/);
  });

  it('sets the forecast it made beside what happened, and says why when none was made', () => {
    const report = committed();
    report.forecast = { totalTimeMs: report.totalTimeMs * 1.1, downtimeMs: (report.downtimeMs ?? 0) + 2, bytes: report.bytesSent, rounds: report.rounds.length, converges: true, stopReason: 'few-dirty-pages', advice: [], tookMs: 42 };
    const lines = formatReport(report).split('\n');
    expect(lines).toContain('  forecast beside what happened');
    const total = lines.find((line) => line.trim().startsWith('total time') && line.includes('%'))!;
    expect(total).toContain('+10 %');
    expect(lines.find((line) => line.trim().startsWith('downtime') && line.includes('+2.00 ms'))).toBeDefined();
    const without = committed();
    without.forecastError = 'no VM named web9 on any host';
    expect(formatReport(without)).toContain('not made: no VM named web9 on any host');
    expect(formatReport(without)).not.toContain('forecast beside what happened');
  });
});

describe('the downtime timeline (--trace)', () => {
  const timeline = {
    source: [
      { event: 'pause requested', atMs: 0 }, { event: 'vCPU paused', atMs: 0.2 }, { event: 'verify asked', atMs: 1 },
      { event: 'verify answered', atMs: 3 }, { event: 'committed', atMs: 3.1 }, { event: 'activate asked', atMs: 3.2 },
      { event: 'activate answered', atMs: 5 },
    ],
    destination: [
      { event: 'verify received', atMs: 0 }, { event: 'verify reply ready', atMs: 0.5 },
      { event: 'activate received', atMs: 2.4 }, { event: 'vCPU resumed', atMs: 3 },
    ],
    sourceGc: [],
    destinationGc: [{ kind: 'minor', startMs: 2.5, durationMs: 0.4 }],
    sourceAnchorEpochMs: 1_000_000,
    destinationAnchorEpochMs: 1_000_001.25,
  };

  it('places the destination\'s marks between the source\'s asks and answers, each side on its own clock', () => {
    const text = formatReport({ ...committed(), timeline }, { trace: true });
    const order = ['verify asked', 'verify received', 'verify reply ready', 'verify answered', 'activate asked', 'activate received', 'vCPU resumed', 'activate answered'];
    const at = order.map((event) => text.indexOf(event));
    expect(at.every((index) => index >= 0)).toBe(true);
    expect([...at].sort((a, b) => a - b)).toEqual(at);
    // The destination's own offsets as measured, and placed on the source's scale by the anchors' wall-clock times.
    expect(text).toMatch(/destination\s+vCPU resumed\s+≈ 4\.25 ms\s+3\.00 ms/);
    expect(text).toContain('destination minor at 2.50 ms (its clock) for 0.40 ms');
  });

  it('is printed only with --trace, and says so when the migration never paused', () => {
    expect(formatReport({ ...committed(), timeline })).not.toContain('downtime timeline');
    const { timeline: _none, ...withoutTimeline } = { ...committed(), timeline };
    expect(formatReport(withoutTimeline, { trace: true })).toContain('downtime timeline: none');
  });
});

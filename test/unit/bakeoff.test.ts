/**
 * The bake-off's policy table, its summaries and its recommendation rule (coordinator/bench/policies.ts, bakeoff.ts),
 * without agents.
 */
import { describe, expect, it } from 'vitest';
import { RECOMMENDATION, baseOptions, guestSlowdownPct, recommend, summarizePolicy, type PolicyRun, type PolicySummary } from '../../coordinator/bench/bakeoff.js';
import type { Spread } from '../../coordinator/bench/stats.js';
import { POLICY_NAMES, parsePolicies, policyOptions } from '../../coordinator/bench/policies.js';
import { ErrorCode } from '../../shared/errors.js';

const MiB = 1024 * 1024;

describe('the policy table', () => {
  it('maps each policy to its migration options on top of the base', () => {
    const base = baseOptions(300, 0);
    expect(policyOptions('precopy', base)).toEqual(base);
    expect(policyOptions('auto-converge', base)).toEqual({ ...base, autoConverge: true });
    expect(policyOptions('xbzrle', base)).toEqual({ ...base, compress: 'xbzrle', xbzrleCacheBytes: 64 * MiB });
    expect(policyOptions('postcopy', base)).toEqual({ ...base, postcopy: { mode: 'after', afterRounds: 0 } });
    expect(policyOptions('hybrid', base)).toEqual({ ...base, postcopy: { mode: 'after', afterRounds: 1 } });
    expect(POLICY_NAMES).toEqual(['precopy', 'postcopy', 'hybrid', 'auto-converge', 'xbzrle']);
  });

  it('reads --policies in the order given, each once, and refuses a name it does not know', () => {
    expect(parsePolicies('xbzrle, precopy,xbzrle')).toEqual(['xbzrle', 'precopy']);
    expect(() => parsePolicies('precopy,teleport')).toThrow(expect.objectContaining({ code: ErrorCode.BAD_INPUT, message: expect.stringMatching(/teleport/) }));
    expect(() => parsePolicies(' , ')).toThrow(/names no policy/);
  });
});

function run(policy: PolicyRun['policy'], fields: Partial<PolicyRun>): PolicyRun {
  return { policy, repeat: 1, outcome: 'committed', replayMatches: true, downtimeMs: 10, totalTimeMs: 1000, bytesSent: 100 * MiB, slowdownPct: 1, ...fields };
}

describe('the guest\'s slowdown', () => {
  it('is the share of the writes asked for that the guest did not make, never below zero', () => {
    expect(guestSlowdownPct(1000, 1000)).toBe(0);
    expect(guestSlowdownPct(1000, 900)).toBeCloseTo(10, 9);
    expect(guestSlowdownPct(2000, 500)).toBeCloseTo(75, 9);
    expect(guestSlowdownPct(1000, 0)).toBe(100);
    expect(guestSlowdownPct(1000, 1010)).toBe(0); // caught up after a stall: not slowed
    expect(guestSlowdownPct(0, 0)).toBe(0); // a guest asked for no writes in the window
  });
});

describe('summaries and the recommendation', () => {
  it('takes medians of the committed runs and keeps a refusal as the reason a policy did not run', () => {
    const summary = summarizePolicy('precopy', [run('precopy', { downtimeMs: 30 }), run('precopy', { downtimeMs: 10 }), run('precopy', { outcome: 'rolled-back', downtimeMs: 999 })]);
    expect(summary).toMatchObject({ runs: 3, committed: 2, downtimeMs: { median: 20, min: 10, max: 30, n: 2 }, replayMatches: true });
    const refused = summarizePolicy('postcopy', [{ policy: 'postcopy', repeat: 1, outcome: 'not-run', error: 'FERRY_ERR_BAD_INPUT: Unrecognized key: "postcopy"' }]);
    expect(refused).toMatchObject({ committed: 0, notRun: expect.stringMatching(/postcopy/) });
    expect(refused.downtimeMs).toBeUndefined();
  });

  const one = (value: number): Spread => ({ median: value, min: value, max: value, n: 1 });
  const summary = (policy: PolicySummary['policy'], fields: Partial<Record<'downtimeMs' | 'totalTimeMs' | 'bytesSent' | 'slowdownPct', number>> & Partial<Pick<PolicySummary, 'committed' | 'notRun' | 'replayMatches'>>): PolicySummary => {
    const { downtimeMs = 10, totalTimeMs = 1000, bytesSent = 100 * MiB, slowdownPct = 1, ...rest } = fields;
    return {
      policy, description: '', options: {}, runs: 1, committed: 1, replayMatches: true, ...rest,
      downtimeMs: one(downtimeMs), totalTimeMs: one(totalTimeMs), bytesSent: one(bytesSent), slowdownPct: one(slowdownPct),
    };
  };

  it('recommends the least downtime among the sound policies within the bounds, and says which fell outside', () => {
    const chosen = recommend([
      summary('precopy', { downtimeMs: 20 }),
      // Less downtime, but more than 1.5x the best total time: out of bounds.
      summary('postcopy', { downtimeMs: 2, totalTimeMs: 1000 * RECOMMENDATION.bound + 1 }),
      // Less downtime, but the guest fell behind by far more: out of bounds.
      summary('auto-converge', { downtimeMs: 5, slowdownPct: 1 + RECOMMENDATION.slowdownPoints + 1 }),
      summary('hybrid', { downtimeMs: 8, bytesSent: 120 * MiB }),
      // Not run, and one whose memory did not match: never candidates.
      summary('xbzrle', { committed: 0, notRun: 'FERRY_ERR_BAD_INPUT' }),
    ]);
    expect(chosen.policy).toBe('hybrid');
    expect(chosen.reason).toMatch(/hybrid: 8\.0 ms of downtime, the least of precopy, hybrid \(postcopy, auto-converge out of bounds\)/);
    expect(chosen.rule).toMatch(/within 1\.5x the best/);
    const close = recommend([summary('precopy', { downtimeMs: 10 }), { ...summary('auto-converge', {}), downtimeMs: { median: 9, min: 8, max: 12, n: 3 } }]);
    expect(close.policy).toBe('auto-converge');
    expect(close.reason).toMatch(/overlap precopy's, so the lead is within run-to-run variation/);
    const none = recommend([summary('precopy', { replayMatches: false })]);
    expect(none.policy).toBeUndefined();
    expect(none.reason).toMatch(/no policy committed every run/);
  });
});

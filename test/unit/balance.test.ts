/**
 * The balance planner and placement, on hosts and VMs given as data.
 */
import { describe, expect, it } from 'vitest';
import type { HostInfo, VmInfo } from '../../shared/protocol.js';
import { deviation, planBalance, type BalanceOptions } from '../../coordinator/fleet/balance.js';
import { rankTargets, refusalOf } from '../../coordinator/fleet/placement.js';
import type { HostSurvey } from '../../coordinator/inventory.js';

const MiB = 1024 ** 2;
const FLAGS = ['sse2', 'avx2'];

function host(name: string, capacityMiB: number, vms: VmInfo[], extra: Partial<HostInfo> = {}): HostSurvey {
  const usedBytes = vms.filter((vm) => vm.host === name).reduce((sum, vm) => sum + vm.memoryBytes, 0);
  const info: HostInfo = {
    name, version: 1, capacityBytes: capacityMiB * MiB, usedBytes, freeBytes: capacityMiB * MiB - usedBytes,
    vms: vms.filter((vm) => vm.host === name).map((vm) => ({ name: vm.name, host: vm.host, state: vm.state, memoryBytes: vm.memoryBytes, epoch: 1 })),
    diskFreeBytes: 10 * 1024 * MiB, cpu: { userMs: 0, systemMs: 0 },
    hostCpu: { vendor: 'test', model: 'test', flags: FLAGS, level: null, masked: [] },
    load: { cpuPercent: 0, memoryPercent: 0, cores: 2, vms: 0, eventLoopLagMs: 0 }, maintenance: null, health: { state: 'healthy', reasons: [] },
    ...extra,
  };
  return { host: { name, url: `ws://127.0.0.1/${name}` }, info };
}

function vm(name: string, on: string, memoryMiB = 64, cpuPercent = 0, flags = FLAGS): VmInfo {
  return {
    name, host: on, state: 'running', memoryBytes: memoryMiB * MiB, epoch: 1,
    workload: { kind: 'pattern', rate: 100, wssPages: 16, seed: 1 }, cpu: { x: 1, n: 0 },
    cpuModel: { model: 'host', flags }, lastBlackoutMs: 0, createdAt: new Date(0).toISOString(),
    stats: { cpuPercent, dirtyPagesPerSec: 0, wssPages: 0 },
  } as VmInfo;
}

const options = (extra: Partial<BalanceOptions> = {}): BalanceOptions => ({
  metric: 'memory', threshold: 0.1, maxMoves: 20, cooldownMs: 600_000,
  migration: { maxDowntimeMs: 300, maxBandwidthBytesPerSec: 0, maxRounds: 30, verify: 'pages', autoConverge: false }, ...extra,
});

function crowded(): { surveys: HostSurvey[]; vms: VmInfo[] } {
  const vms = Array.from({ length: 6 }, (_, index) => vm(`vm${index + 1}`, 'a'));
  return { vms, surveys: ['a', 'b', 'c'].map((name) => host(name, 1024, vms)) };
}

describe('planBalance', () => {
  it('spreads VMs crowded on one host until the deviation is under the threshold, each move removing imbalance', () => {
    const { surveys, vms } = crowded();
    const plan = planBalance({ surveys, vms, options: options({ threshold: 0.02 }), frozen: new Map(), refused: new Map() });
    expect(plan.imbalanceBefore).toBeCloseTo(deviation([384 / 1024, 0, 0]));
    expect(plan.imbalanceAfter).toBeLessThanOrEqual(0.02);
    // 6 equal VMs over 3 equal hosts: 2 each, so 4 moves, 2 to each other host.
    expect(plan.moves).toHaveLength(4);
    expect(plan.moves.filter((move) => move.to === 'b')).toHaveLength(2);
    expect(plan.moves.every((move) => move.from === 'a' && move.gain > 0)).toBe(true);
    expect(plan.hosts.map((entry) => entry.loadAfter)).toEqual([128 / 1024, 128 / 1024, 128 / 1024]);
  });

  it('makes no move on a cluster already within the threshold', () => {
    const vms = [vm('v1', 'a'), vm('v2', 'b'), vm('v3', 'c'), vm('v4', 'a')];
    const plan = planBalance({ surveys: ['a', 'b', 'c'].map((name) => host(name, 1024, vms)), vms, options: options(), frozen: new Map(), refused: new Map() });
    expect(plan.imbalanceBefore).toBeLessThanOrEqual(0.1);
    expect(plan.moves).toEqual([]);
  });

  it('leaves VMs within their cool-down, and moves the forecast refused, where they are', () => {
    const { surveys, vms } = crowded();
    const frozen = new Map(['vm1', 'vm2', 'vm3', 'vm4', 'vm5'].map((name) => [name, 'moved 10 s ago']));
    const plan = planBalance({ surveys, vms, options: options({ threshold: 0.02 }), frozen, refused: new Map([['vm6', new Set(['b'])]]) });
    expect(plan.moves).toEqual([expect.objectContaining({ vm: 'vm6', to: 'c' })]);
    expect(plan.skipped.map((skip) => skip.vm)).toEqual(['vm1', 'vm2', 'vm3', 'vm4', 'vm5']);
  });

  it('stops at --max-moves', () => {
    const { surveys, vms } = crowded();
    expect(planBalance({ surveys, vms, options: options({ threshold: 0.02, maxMoves: 1 }), frozen: new Map(), refused: new Map() }).moves).toHaveLength(1);
  });

  it('never moves to a host in maintenance, degraded, without room or without the VM\'s CPU flags, and leaves them out of the deviation', () => {
    const vms = [vm('big', 'a', 512), vm('v2', 'a', 64), vm('avx512', 'a', 64, 0, [...FLAGS, 'avx512f'])];
    const surveys = [
      host('a', 1024, vms),
      host('small', 128, vms),
      host('maint', 4096, vms, { maintenance: { since: 'now' } }),
      host('sick', 4096, vms, { health: { state: 'degraded', reasons: [{ source: 'operator', reason: 'fan', since: 'now' }] } }),
      host('old', 4096, vms, { hostCpu: { vendor: 'test', model: 'test', flags: FLAGS, level: null, masked: [] } }),
    ];
    const plan = planBalance({ surveys, vms, options: options({ threshold: 0.01 }), frozen: new Map(), refused: new Map() });
    expect(plan.excluded.map((entry) => entry.host)).toEqual(['maint', 'sick']);
    expect(plan.moves.length).toBeGreaterThan(0);
    for (const move of plan.moves) {
      expect(['small', 'old']).toContain(move.to);
      if (move.to === 'small') expect(move.vm).not.toBe('big');
      expect(move.vm).not.toBe('avx512');
    }
  });

  it('balances by CPU from the VMs\' vCPU time over each host\'s cores', () => {
    const vms = [vm('busy1', 'a', 64, 90), vm('busy2', 'a', 64, 90), vm('idle1', 'b', 64, 1), vm('idle2', 'b', 64, 1)];
    const plan = planBalance({ surveys: ['a', 'b'].map((name) => host(name, 1024, vms)), vms, options: options({ metric: 'cpu', threshold: 0.05 }), frozen: new Map(), refused: new Map() });
    expect(plan.moves).toEqual([expect.objectContaining({ vm: 'busy1', from: 'a', to: 'b' })]);
  });

  it('prefers the move that removes the most imbalance per second of forecast', () => {
    const vms = [vm('slow', 'a', 64), vm('fast', 'a', 64), vm('x', 'b', 64)];
    const cost = (moved: VmInfo): number => (moved.name === 'slow' ? 10_000 : 500);
    const plan = planBalance({ surveys: [host('a', 256, vms), host('b', 512, vms)], vms, options: options({ threshold: 0.05 }), frozen: new Map(), refused: new Map(), cost });
    expect(plan.moves[0]?.vm).toBe('fast');
  });
});

describe('placement', () => {
  it('ranks hosts by the memory share they would carry, and says why each other host cannot take the VM', () => {
    const vms = [vm('web', 'src', 64), vm('other', 'full', 1000)];
    const surveys = [host('src', 1024, vms), host('full', 1024, vms), host('roomy', 2048, vms), host('tight', 512, vms), { host: { name: 'down', url: 'ws://x' } }];
    const ranked = rankTargets(vms[0]!, 'live', surveys[0]!.info, surveys, new Map(), new Set());
    expect(ranked.fits.map((survey) => survey.host.name)).toEqual(['roomy', 'tight']);
    expect(ranked.refused).toEqual([
      { host: 'full', reason: expect.stringMatching(/^no room/) },
      { host: 'down', reason: expect.stringMatching(/^did not answer/) },
    ]);
    // Memory on its way to a host counts against its room.
    expect(refusalOf(vms[0]!, 'live', undefined, surveys[3]!, { memoryBytes: 500 * MiB, diskBytes: 0 })).toMatch(/^no room/);
    // A powered-off VM needs no memory there, only room for its files.
    expect(refusalOf({ ...vms[0]!, state: 'defined' }, 'cold', undefined, surveys[1]!)).toBeUndefined();
  });
});

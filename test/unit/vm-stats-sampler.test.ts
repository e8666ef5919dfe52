import { describe, expect, it } from 'vitest';
import { DirtyLog } from '../../agent/vm/dirty-log.js';
import { VmStatsSampler, type SampledCatalog, type SampledVm } from '../../agent/vm-stats/sampler.js';
import type { VmState } from '../../shared/protocol.js';

/**
 * A VM and a catalog driven by hand: a clock that moves only when the sampler sleeps, a guest that dirties pages as
 * the clock moves, and a hook at every sleep that may start or end an operation on the VM.
 */
function harness(options: { pagesPerMs?: number; onSleep?: (atMs: number) => void; busyAt?: (atMs: number) => string | undefined } = {}) {
  let nowMs = 0;
  let manual: string | undefined;
  const busyNow = (): string | undefined => options.busyAt?.(nowMs) ?? manual;
  const clears: { atMs: number; busy: string | undefined; state: VmState }[] = [];
  const log = DirtyLog.allocate(65_536);
  let nextPage = 0;
  const vm: SampledVm & { state: VmState } = {
    name: 'web1',
    state: 'running',
    pageCount: 65_536,
    dirtyLog: {
      clearAll: () => {
        clears.push({ atMs: nowMs, busy: busyNow(), state: vm.state });
        return log.clearAll();
      },
      count: () => log.count(),
    },
    cpuBusyMs: () => nowMs / 4,
  };
  const catalog: SampledCatalog = {
    machines: () => [vm],
    findMachine: (name) => (name === vm.name ? vm : undefined),
    busyWith: () => busyNow(),
  };
  const sampler = new VmStatsSampler(catalog, {
    now: () => nowMs,
    sleep: async (ms) => {
      // The guest writes new pages as time passes (a scanner: one page per write).
      const writes = Math.round(ms * (options.pagesPerMs ?? 10));
      for (let i = 0; i < writes; i++) log.mark(nextPage++ % vm.pageCount);
      nowMs += ms;
      options.onSleep?.(nowMs);
    },
  });
  return {
    vm, sampler, clears,
    setBusy: (what: string | undefined) => {
      manual = what;
    },
    advance: (ms: number) => {
      nowMs += ms;
    },
  };
}

describe('VmStatsSampler', () => {
  it('measures a running VM: its dirty rate, working set and busy fraction', async () => {
    const h = harness({ pagesPerMs: 10 });
    await h.sampler.tick();
    h.advance(3000);
    await h.sampler.tick();
    const stats = h.sampler.stats(h.vm)!;
    expect(stats.curve.map((point) => point.ms)).toEqual([100, 250, 500, 1000]);
    expect(stats.curve.map((point) => point.pages)).toEqual([1000, 2500, 5000, 10_000]);
    expect(stats.dirtyPagesPerSec).toBeCloseTo(10_000, -2);
    expect(stats.cpuPercent).toBeCloseTo(25, 5);
  });

  it('never clears the dirty log while an operation holds the VM, and starts no window then', async () => {
    const h = harness();
    h.setBusy('migration');
    await h.sampler.tick();
    h.advance(5000);
    await h.sampler.tick();
    expect(h.clears).toEqual([]);
    expect(h.sampler.stats(h.vm)).toBeUndefined();
  });

  it('discards a window whose VM is taken by a migration meanwhile, and only counts, never clears, after it', async () => {
    // A migration takes the VM 300 ms into the window and holds it until 2 s in.
    const h = harness({ busyAt: (atMs) => (atMs >= 300 && atMs < 2000) || (atMs >= 6000 && atMs < 6600) ? 'migration' : undefined });
    await h.sampler.tick();
    expect(h.clears).toHaveLength(1);
    expect(h.clears[0]!.busy).toBeUndefined();
    expect(h.sampler.stats(h.vm)).toBeUndefined();
    // Every clear the sampler ever made found the VM free and running.
    for (let turn = 0; turn < 20; turn++) {
      h.advance(700);
      await h.sampler.tick();
    }
    expect(h.clears.length).toBeGreaterThan(1);
    for (const clear of h.clears) {
      expect(clear.busy).toBeUndefined();
      expect(clear.state).toBe('running');
    }
  });

  it('does not sample a paused VM, and discards a window whose VM was paused during it', async () => {
    const h = harness({
      onSleep: (atMs) => {
        if (atMs >= 500) h.vm.state = 'paused';
      },
    });
    await h.sampler.tick();
    expect(h.sampler.stats(h.vm)).toBeUndefined();
    h.advance(5000);
    await h.sampler.tick();
    expect(h.clears).toHaveLength(1);
  });
});

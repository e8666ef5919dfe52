/**
 * Requests that race on one VM, against a real agent in-process (real datastore on disk, real vCPU threads): the
 * catalog holds a VM that is being set up, so nothing acts on it half made. Each race is widened by slowing one
 * real datastore step, so it happens every time rather than once in a while.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { describe, expect, it, vi } from 'vitest';
import { useInProcessAgents } from '../in-process-agent.js';
import { Datastore } from '../../agent/datastore/datastore.js';

const startAgent = useInProcessAgents();

const pattern = { kind: 'pattern' as const, rate: 2000, wssPages: 64, seed: 9 };
const codeOf = (attempt: Promise<unknown>): Promise<string> => attempt.then(() => 'ok', (error: { code: string }) => error.code);

/** Makes one datastore method take 300 ms longer, as a slow disk would. */
function slow<K extends 'fill' | 'dropSuspend'>(files: Datastore, method: K): void {
  const original = files[method].bind(files) as (...args: unknown[]) => Promise<void>;
  const slowed = async (...args: unknown[]): Promise<void> => {
    await delay(300);
    return original(...args);
  };
  vi.spyOn(files, method).mockImplementation(slowed as never);
}

describe('requests racing on one VM', () => {
  it('refuses a destroy while the VM is still being created, and the VM it then has is whole', async () => {
    const { files, dir, control } = await startAgent();
    slow(files, 'fill');
    const creating = control.request('vm.create', { name: 'web1', memoryBytes: 1024 * 1024, workload: pattern, diskBytes: 1024 * 1024 }, { timeoutMs: 10_000 });
    await delay(50);
    expect(await codeOf(control.request('vm.destroy', { name: 'web1', deleteDisks: true }, { timeoutMs: 10_000 }))).toBe('FERRY_ERR_VM_STATE');
    expect(await creating).toMatchObject({ name: 'web1', state: 'running' });
    expect(existsSync(path.join(dir, 'vms', 'web1', 'config.json'))).toBe(true);
    expect(await codeOf(control.request('vm.destroy', { name: 'web1', deleteDisks: true }, { timeoutMs: 10_000 }))).toBe('ok');
    expect(existsSync(path.join(dir, 'vms', 'web1'))).toBe(false);
  });

  it('refuses a suspend while a resume from suspend is under way, and the VM suspends and resumes again after', async () => {
    const { agent, files, control } = await startAgent();
    await control.request('vm.create', { name: 'web1', memoryBytes: 1024 * 1024, workload: pattern }, { timeoutMs: 10_000 });
    await delay(100);
    const suspended = await control.request('vm.suspend', { name: 'web1' }, { timeoutMs: 10_000 });
    slow(files, 'dropSuspend');
    const starting = control.request('vm.start', { name: 'web1' }, { timeoutMs: 10_000 });
    await delay(50);
    expect(await codeOf(control.request('vm.suspend', { name: 'web1' }, { timeoutMs: 10_000 }))).toBe('FERRY_ERR_VM_STATE');
    expect(await starting).toMatchObject({ state: 'running' });
    expect(agent.catalog.machine('web1').registers().n).toBeGreaterThanOrEqual(suspended.cpu.n);
    vi.restoreAllMocks();
    // Its saved state is consistent: it suspends, and resumes exactly, again.
    const again = await control.request('vm.suspend', { name: 'web1' }, { timeoutMs: 10_000 });
    const resumed = await control.request('vm.start', { name: 'web1' }, { timeoutMs: 10_000 });
    expect(resumed.state).toBe('running');
    expect(resumed.cpu.n).toBeGreaterThanOrEqual(again.cpu.n);
  });
});

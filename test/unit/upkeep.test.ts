/**
 * A real agent (in-process, real datastore on disk, real VMs with vCPU threads) doing its background upkeep: leases
 * that end, and migrations in doubt that it keeps trying to settle. A failure there is said in the log and costs no
 * file.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { useInProcessAgents } from '../in-process-agent.js';

const startAgent = useInProcessAgents();

const idle = { kind: 'idle' as const, rate: 0, wssPages: 1, seed: 1 };

describe('agent upkeep', () => {
  it('keeps a leased VM and its files when its release fails, says so, and releases it on a later pass', async () => {
    const { agent, dir, lines, control } = await startAgent();
    const leaseUntil = new Date(Date.now() + 3_600_000).toISOString();
    await control.request('vm.create', { name: 'web1', memoryBytes: 1024 * 1024, workload: idle, diskBytes: 1024 * 1024, leaseUntil }, { timeoutMs: 10_000 });
    const folder = path.join(dir, 'vms', 'web1');
    expect(existsSync(folder)).toBe(true);

    const afterLease = Date.parse(leaseUntil) + 1000;
    vi.spyOn(agent.catalog, 'exclusive').mockRejectedValueOnce(new Error('the vCPU would not stop'));
    await agent.leases.releaseExpired(afterLease);
    expect(agent.catalog.findMachine('web1')?.state).toBe('running');
    expect(existsSync(path.join(folder, 'disk0.img'))).toBe(true);
    expect(lines).toContainEqual(expect.objectContaining({ level: 'warn', msg: expect.stringContaining('could not be released now'), vm: 'web1', error: expect.stringContaining('the vCPU would not stop') }));

    await agent.leases.releaseExpired(afterLease);
    expect(agent.catalog.has('web1')).toBe(false);
    expect(existsSync(folder)).toBe(false);
    expect(lines).toContainEqual(expect.objectContaining({ level: 'info', msg: 'lease ended: VM released', vm: 'web1' }));
  });

  it('says in its log why a migration in doubt is not settled yet, every time it tries', async () => {
    const { agent, lines, control } = await startAgent();
    await control.request('vm.create', { name: 'web1', memoryBytes: 1024 * 1024, workload: idle }, { timeoutMs: 10_000 });
    const vm = agent.catalog.machine('web1');
    // A destination that is gone: nothing listens on port 401 here.
    agent.settlements.add({ migrationId: '0b9c2d4e-8f1a-4c3b-9d2e-7a6b5c4d3e2f', vm, destinationUrl: 'ws://127.0.0.1:401', resume: true });
    await vi.waitFor(() => {
      const tries = lines.filter((line) => line.msg === 'settlement: the destination did not answer yet');
      expect(tries.length).toBeGreaterThanOrEqual(2);
      expect(tries[0]).toMatchObject({ level: 'debug', vm: 'web1', error: expect.stringContaining('ECONNREFUSED') });
    }, { timeout: 15_000, interval: 100 });
    expect(agent.settlements.inDoubt.has('web1')).toBe(true); // still in doubt: never resumed blindly
  });
});

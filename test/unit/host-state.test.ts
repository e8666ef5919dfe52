/**
 * The host's maintenance and health flags: kept across a restart, refusing new VMs, and the agent's own signals.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { HostState } from '../../agent/host-state.js';
import { createLogger } from '../../shared/log.js';

const states: HostState[] = [];
const folders: string[] = [];
afterEach(async () => {
  for (const state of states.splice(0)) state.stop();
  for (const folder of folders.splice(0)) await rm(folder, { recursive: true, force: true });
});

async function made(folder?: string): Promise<HostState> {
  const state = new HostState({ folder, diskReserveBytes: 1024 ** 3, lagThresholdMs: 250, log: createLogger('test', 'error') });
  states.push(state);
  await state.restore();
  return state;
}

describe('HostState', () => {
  it('keeps maintenance and a degraded mark across a restart, and refuses new VMs and arrivals while either holds', async () => {
    const folder = await mkdtemp(path.join(os.tmpdir(), 'ferry-host-state-'));
    folders.push(folder);
    const first = await made(folder);
    expect(first.refusal('new VMs', 'web1')).toBeUndefined();
    await first.set({ maintenance: true, by: 'ops@here' });
    expect(first.refusal('incoming migrations', 'web1')?.code).toBe('FERRY_ERR_HOST_UNAVAILABLE');

    const again = await made(folder);
    expect(again.maintenance).toMatchObject({ by: 'ops@here' });
    await again.set({ maintenance: false, degraded: 'fan failure predicted' });
    expect(again.refusal('new VMs', 'web1')?.message).toContain('fan failure predicted');
    expect(again.health(10 * 1024 ** 3)).toMatchObject({ state: 'degraded', reasons: [{ source: 'operator', reason: 'fan failure predicted' }] });
    await again.set({ degraded: null });
    expect(again.refusal('new VMs', 'web1')).toBeUndefined();
    expect((await made(folder)).health(10 * 1024 ** 3)).toEqual({ state: 'healthy', reasons: [] });
  });

  it('calls itself degraded when its datastore is under the reserve, without refusing on that signal', async () => {
    const state = await made();
    const health = state.health(100 * 1024 ** 2);
    expect(health.state).toBe('degraded');
    expect(health.reasons).toEqual([expect.objectContaining({ source: 'datastore', reason: expect.stringContaining('100 MiB free') })]);
    expect(state.refusal('new VMs', 'web1')).toBeUndefined();
    expect(state.health(2 * 1024 ** 3).state).toBe('healthy');
  });

  it('starts without flags when host-state.json cannot be read', async () => {
    const folder = await mkdtemp(path.join(os.tmpdir(), 'ferry-host-state-'));
    folders.push(folder);
    await writeFile(path.join(folder, 'host-state.json'), '{not json');
    const state = await made(folder);
    expect(state.maintenance).toBeNull();
    expect(state.refusal('new VMs', 'web1')).toBeUndefined();
  });
});

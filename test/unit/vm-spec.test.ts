/**
 * `ferry vm create` and `ferry migrate` options checked against the protocol's own schemas: every refusal is a
 * FERRY_ERR_BAD_INPUT that names the option, says the limit in words a person reads, and gives a hint.
 */
import { describe, expect, it } from 'vitest';
import { badInput } from '../bad-input.js';
import { migrationOptions } from '../../coordinator/migrate-options.js';
import { toVmRequest, type CreateOptions } from '../../coordinator/vm-spec.js';
import type { FerryError } from '../../shared/errors.js';
import { controlOps, workloadSpecSchema } from '../../shared/protocol.js';

const defaults: CreateOptions = { memory: '64MiB', workload: 'pattern', rate: '20000', seed: '1' };

function refusal(fn: () => unknown): FerryError {
  const error = badInput(fn);
  // Never zod's own wording: a person reads these.
  expect(error.message).not.toMatch(/Too (big|small)|expected (number|int)|Invalid (input|option)/);
  return error;
}

describe('vm create options', () => {
  it('makes a request the agent\'s own vm.create schema accepts', () => {
    const request = toVmRequest('web1', { ...defaults, wss: '16MiB', hot: '2MiB', disk: '1GiB', prealloc: true });
    expect(controlOps['vm.create'][0].parse(request)).toEqual(request);
    expect(request).toEqual({
      name: 'web1', memoryBytes: 64 * 1024 ** 2, prealloc: true, diskBytes: 1024 ** 3,
      workload: { kind: 'pattern', rate: 20000, wssPages: 4096, seed: 1, hotPages: 512 },
    });
  });

  it('takes --disk-rate and --disk-wss for a pattern VM with a disk, and refuses them otherwise', () => {
    const request = toVmRequest('web1', { ...defaults, disk: '1GiB', diskRate: '2000', diskWss: '256MiB' });
    expect(controlOps['vm.create'][0].parse(request)).toEqual(request);
    expect(request.workload).toMatchObject({ diskRate: 2000, diskWssBlocks: 65536 });
    expect(toVmRequest('web1', { ...defaults, disk: '1GiB', diskRate: '10' }).workload.diskWssBlocks).toBeUndefined();
    const noDisk = refusal(() => toVmRequest('web1', { ...defaults, diskRate: '2000' }));
    expect(noDisk.message).toContain('--disk-rate 2000');
    expect(noDisk.hint).toContain('--disk 1GiB');
    expect(refusal(() => toVmRequest('web1', { ...defaults, workload: 'hotset', disk: '1GiB', diskRate: '2000' })).message).toContain('only the pattern workload');
    expect(refusal(() => toVmRequest('web1', { ...defaults, disk: '1GiB', diskWss: '8MiB' })).message).toContain('without --disk-rate');
    expect(refusal(() => toVmRequest('web1', { ...defaults, disk: '1GiB', diskRate: '1', diskWss: '2GiB' })).message).toContain('--disk-wss 2GiB');
  });

  it('refuses memory outside 1 MiB to 4 GiB, naming the option and the limit', () => {
    const tooBig = refusal(() => toVmRequest('web1', { ...defaults, memory: '8GiB' }));
    expect(tooBig.message).toMatch(/^--memory 8GiB is above 4 GiB/);
    expect(tooBig.hint).toContain('1MiB to 4GiB');
    expect(refusal(() => toVmRequest('web1', { ...defaults, memory: '512KiB' })).message).toMatch(/^--memory 512KiB is below 1 MiB/);
    expect(refusal(() => toVmRequest('web1', { ...defaults, memory: '2000000' })).message).toBe('--memory 2000000 is not allowed: memory must be a whole number of 4 KiB pages');
  });

  it('takes the rate and seed limits from the workload schema', () => {
    const maxRate = workloadSpecSchema.shape.rate.maxValue!;
    expect(toVmRequest('web1', { ...defaults, rate: String(maxRate) }).workload.rate).toBe(maxRate);
    expect(refusal(() => toVmRequest('web1', { ...defaults, rate: String(maxRate + 1) })).message).toBe(`--rate ${maxRate + 1} is above ${maxRate.toLocaleString('en-US')}`);
    const seed = refusal(() => toVmRequest('web1', { ...defaults, seed: '0' }));
    expect(seed.message).toBe('--seed 0 is below 1');
    expect(seed.hint).toContain('cannot be 0');
    expect(refusal(() => toVmRequest('web1', { ...defaults, seed: '4294967296' })).message).toBe('--seed 4294967296 is above 4,294,967,295');
  });

  it('refuses a working set, hot region or disk that does not fit, in the sizes that were typed', () => {
    expect(refusal(() => toVmRequest('web1', { ...defaults, wss: '1GiB' })).message).toContain('between 4KiB and the VM\'s memory');
    expect(refusal(() => toVmRequest('web1', { ...defaults, wss: '100' })).message).toBe('--wss 100 is below 4 KiB');
    expect(refusal(() => toVmRequest('web1', { ...defaults, hot: '100' })).message).toBe('--hot 100 is below 4 KiB');
    expect(refusal(() => toVmRequest('web1', { ...defaults, wss: '8MiB', hot: '16MiB' })).message).toContain('--hot 16MiB');
    expect(refusal(() => toVmRequest('web1', { ...defaults, disk: '0' })).message).toMatch(/^--disk 0 /);
  });

  it('gives an addressed VM a default working set that stops below its network device, and refuses an address that is none', () => {
    const request = toVmRequest('kv1', { ...defaults, workload: 'kv', ip: '127.100.0.5' });
    expect(request.network).toEqual({ ip: '127.100.0.5', prefix: 8, gateway: '127.0.0.1' });
    expect(request.workload.wssPages).toBe(16384 - 129);
    expect(toVmRequest('web1', defaults).workload.wssPages).toBe(16384); // no address: all of memory, as before
    for (const ip of ['127.100.0', '127.100.0.256', '127.0.0.1/33', 'localhost']) {
      expect(refusal(() => toVmRequest('kv1', { ...defaults, ip })).message).toBe(`--ip ${ip} is not an address`);
    }
  });

  it('refuses an unknown workload and a bad name', () => {
    expect(refusal(() => toVmRequest('web1', { ...defaults, workload: 'crypto' })).message).toBe('--workload crypto is not one of idle, pattern, hotset, sequential, kv, counters, replay');
    expect(refusal(() => toVmRequest('no spaces!', defaults)).message).toContain('not a valid VM name');
  });
});

describe('migrate options', () => {
  const raw = { maxDowntime: '300ms', maxRounds: '30', verify: 'pages' };

  it('turns typed options into the migration options the protocol carries', () => {
    expect(migrationOptions({ ...raw, maxBandwidth: '1GiB/s', autoConverge: true })).toEqual({
      maxDowntimeMs: 300, maxBandwidthBytesPerSec: 1024 ** 3, maxRounds: 30, verify: 'pages', autoConverge: true,
    });
  });

  it('takes the round cap and the downtime floor from the migration options schema', () => {
    expect(refusal(() => migrationOptions({ ...raw, maxRounds: '0' })).message).toBe('--max-rounds 0 is below 1');
    expect(refusal(() => migrationOptions({ ...raw, maxRounds: '1001' })).message).toBe('--max-rounds 1001 is above 1,000');
    expect(refusal(() => migrationOptions({ ...raw, maxDowntime: '0ms' })).message).toBe('--max-downtime 0ms must be above 0 ms');
    expect(refusal(() => migrationOptions({ ...raw, verify: 'some' })).message).toBe('--verify some is not one of pages, full');
  });
});

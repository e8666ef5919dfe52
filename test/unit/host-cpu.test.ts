/**
 * agent/host-cpu.ts (reading a host's CPU from /proc/cpuinfo, with a mask) and agent/vm/cpu-model.ts (what a VM's
 * model resolves to on a host, and the refusal when the host lacks flags of it).
 */
import { describe, expect, it } from 'vitest';
import { describeHostCpu } from '../../agent/host-cpu.js';
import { requireCpu, resolveCpuModel, type CpuCheck } from '../../agent/vm/cpu-model.js';
import { LEVEL_FLAGS, type HostCpu } from '../../shared/cpu.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';

// The level sets themselves are checked against the psABI in cpu.test.ts; here they are only inputs.
const V2 = [...LEVEL_FLAGS['x86-64-v2']];
const V3_ADDS = LEVEL_FLAGS['x86-64-v3'].filter((flag) => !V2.includes(flag));

const x86Processor = (index: number, flags: string[]): string => [
  `processor\t: ${index}`,
  'vendor_id\t: GenuineIntel',
  'cpu family\t: 6',
  'model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz',
  `flags\t\t: ${flags.join(' ')}`,
  '',
].join('\n');

describe('the host CPU from /proc/cpuinfo', () => {
  it('reads vendor, model name and flags of an x86 host (the first processor), sorted, and its level', () => {
    const flags = [...V2, ...V3_ADDS, 'aes'];
    const cpu = describeHostCpu(`${x86Processor(0, flags)}\n${x86Processor(1, ['fpu'])}`, 'x64', []);
    expect(cpu).toEqual({
      vendor: 'GenuineIntel', model: 'Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz', flags: [...flags].sort(), level: 'x86-64-v3', masked: [],
    });
  });

  it('leaves out the flags Linux makes up (kernel, TSC, hypervisor facts), so one CPU offers the same set on any kernel', () => {
    const synthetic = ['rep_good', 'nopl', 'xtopology', 'nonstop_tsc', 'cpuid', 'tsc_known_freq', 'constant_tsc', 'hypervisor'];
    const cpu = describeHostCpu(x86Processor(0, [...V2, 'aes', ...synthetic]), 'x64', []);
    expect(cpu.flags).toEqual([...V2, 'aes'].sort());
    expect(cpu.level).toBe('x86-64-v2');
  });

  it('hides masked flags, lowering the level, and lists only the flags the mask actually hid', () => {
    const cpu = describeHostCpu(x86Processor(0, [...V2, ...V3_ADDS, 'aes']), 'x64', ['avx2', 'fma', 'avx512f']);
    expect(cpu.flags).not.toContain('avx2');
    expect(cpu.flags).not.toContain('fma');
    expect(cpu.flags).toContain('aes');
    expect(cpu.level).toBe('x86-64-v2');
    expect(cpu.masked).toEqual(['avx2', 'fma']);
  });

  it('reads the Features line on arm64, with the vendor from the implementer code and no x86 level', () => {
    const cpuinfo = ['processor\t: 0', 'BogoMIPS\t: 50.00', 'Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics', 'CPU implementer\t: 0x41', 'CPU part\t: 0xd0c', ''].join('\n');
    const cpu = describeHostCpu(cpuinfo, 'arm64', ['sha1'], 'Neoverse-N1');
    expect(cpu).toMatchObject({ vendor: 'ARM', model: 'Neoverse-N1', level: null, masked: ['sha1'] });
    expect(cpu.flags).toEqual(['aes', 'asimd', 'atomics', 'crc32', 'evtstrm', 'fp', 'pmull', 'sha2']);
    expect(cpu.unknownReason).toBeUndefined();
  });

  it('reports no flags, and why, on an architecture it does not read', () => {
    const cpu = describeHostCpu('processor : 0\nisa : rv64imafdc\n', 'riscv64', []);
    expect(cpu).toMatchObject({ flags: [], level: null });
    expect(cpu.unknownReason).toContain('riscv64');
  });
});

const hostV2: HostCpu = { vendor: 'GenuineIntel', model: 'old', flags: [...V2, 'aes'].sort(), level: 'x86-64-v2', masked: [] };

function refusal(check: CpuCheck, cpu: { model: 'host' | 'x86-64-v3' | 'baseline'; flags: string[] }): FerryError {
  try {
    requireCpu('host-b', hostV2, { name: 'web1', cpu }, check);
  } catch (error) {
    return error as FerryError;
  }
  throw new Error(`${check} of ${cpu.model} was not refused`);
}

describe('a VM\'s CPU model on a host', () => {
  it('resolves host to the host\'s flags, a level to its own, a baseline to the flags given, and none to the host\'s as baseline', () => {
    expect(resolveCpuModel({ model: 'host' }, hostV2)).toEqual({ model: 'host', flags: hostV2.flags });
    expect(resolveCpuModel({ model: 'x86-64-v3' }, hostV2)).toEqual({ model: 'x86-64-v3', flags: LEVEL_FLAGS['x86-64-v3'] });
    expect(resolveCpuModel({ model: 'baseline', flags: ['sse2', 'cmov'] }, hostV2)).toEqual({ model: 'baseline', flags: ['cmov', 'sse2'] });
    expect(resolveCpuModel(undefined, hostV2)).toEqual({ model: 'baseline', flags: hostV2.flags });
  });

  it('lets a host run a model whose every flag it has', () => {
    expect(() => requireCpu('host-b', hostV2, { name: 'web1', cpu: { model: 'x86-64-v2', flags: [...LEVEL_FLAGS['x86-64-v2']] } }, 'receive-live')).not.toThrow();
    expect(() => requireCpu('host-b', hostV2, { name: 'web1', cpu: { model: 'baseline', flags: [] } }, 'start')).not.toThrow();
  });

  it('refuses with FERRY_ERR_CPU_INCOMPATIBLE, naming every missing flag, whatever the check', () => {
    for (const check of ['create', 'receive-live', 'receive-suspended', 'resume', 'start'] as const) {
      const error = refusal(check, { model: 'x86-64-v3', flags: [...LEVEL_FLAGS['x86-64-v3']] });
      expect(error.code, check).toBe(ErrorCode.CPU_INCOMPATIBLE);
      expect(error.message, check).toContain(`9 CPU flags`);
      expect(error.message, check).toContain([...V3_ADDS].sort().join(' '));
      expect(error.hint, check).toBeTruthy();
    }
  });

  it('points a host VM refused live to a cold move, and a named model to another host, never to a cold move it cannot start after', () => {
    const hostModel = refusal('receive-live', { model: 'host', flags: [...V2, ...V3_ADDS] });
    expect(hostModel.message).toContain('keeps running where it is');
    expect(hostModel.hint).toContain('`ferry vm stop web1`, then `ferry migrate web1 --to host-b --cold`');
    expect(hostModel.hint).toContain('--cpu baseline or --cpu x86-64-v2');
    const level = refusal('receive-live', { model: 'x86-64-v3', flags: [...LEVEL_FLAGS['x86-64-v3']] });
    expect(level.hint).not.toContain('--cold');
    expect(level.hint).toContain('ferry hosts');
    expect(refusal('resume', { model: 'host', flags: [...V2, 'avx'] }).hint).toContain('`ferry migrate web1 --to HOST --cold`');
  });
});

/**
 * shared/cpu.ts: the x86-64 levels as flag sets, the highest level a set meets, what a host lacks for a model, the
 * baseline of several hosts, and the schemas that hold flags from the network.
 */
import { describe, expect, it } from 'vitest';
import {
  CPU_LEVELS, LEVEL_FLAGS, baselineFlags, cpuFlagSchema, cpuFlagsSchema, cpuModelRequestSchema, highestLevel, missingFlags,
} from '../../shared/cpu.js';

// The psABI's levels, written out again here from the x86-64 psABI (table 3.1) in /proc/cpuinfo names, so that a
// slip in shared/cpu.ts shows up as a difference rather than being checked against itself.
const V1 = ['cmov', 'cx8', 'fpu', 'fxsr', 'mmx', 'syscall', 'sse', 'sse2', 'lm'];
const V2 = [...V1, 'cx16', 'lahf_lm', 'popcnt', 'sse4_1', 'sse4_2', 'ssse3'];
const V3 = [...V2, 'avx', 'avx2', 'bmi1', 'bmi2', 'f16c', 'fma', 'abm', 'movbe', 'xsave'];
const V4 = [...V3, 'avx512f', 'avx512bw', 'avx512cd', 'avx512dq', 'avx512vl'];
const sorted = (flags: string[]): string[] => [...flags].sort();

describe('x86-64 levels', () => {
  it('are the psABI levels, lowest first, each including every flag of the one below', () => {
    expect(CPU_LEVELS).toEqual(['x86-64-v1', 'x86-64-v2', 'x86-64-v3', 'x86-64-v4']);
    expect(LEVEL_FLAGS['x86-64-v1']).toEqual(sorted(V1));
    expect(LEVEL_FLAGS['x86-64-v2']).toEqual(sorted(V2));
    expect(LEVEL_FLAGS['x86-64-v3']).toEqual(sorted(V3));
    expect(LEVEL_FLAGS['x86-64-v4']).toEqual(sorted(V4));
  });

  it('finds the highest level a flag set meets, and null below x86-64-v1', () => {
    const extra = ['aes', 'sha_ni', 'hypervisor'];
    expect(highestLevel([...V1, ...extra])).toBe('x86-64-v1');
    expect(highestLevel([...V2, ...extra])).toBe('x86-64-v2');
    expect(highestLevel(V3)).toBe('x86-64-v3');
    expect(highestLevel([...V4, ...extra])).toBe('x86-64-v4');
    expect(highestLevel(V3.filter((flag) => flag !== 'fma'))).toBe('x86-64-v2'); // one flag short of v3
    expect(highestLevel(V1.filter((flag) => flag !== 'lm'))).toBeNull();
    expect(highestLevel([])).toBeNull();
    expect(highestLevel(['asimd', 'fp', 'aes'])).toBeNull(); // arm64 features meet no x86 level
  });

  it('does not skip a level: every v4 flag but a v2 one meets only v1', () => {
    expect(highestLevel(V4.filter((flag) => flag !== 'popcnt'))).toBe('x86-64-v1');
  });
});

describe('what a host lacks, and what hosts share', () => {
  it('lists the flags of a model a host lacks, sorted, each once; none when the host has them all', () => {
    expect(missingFlags(V3, V2)).toEqual(['abm', 'avx', 'avx2', 'bmi1', 'bmi2', 'f16c', 'fma', 'movbe', 'xsave']);
    expect(missingFlags(['sse2', 'avx2', 'avx2', 'aes'], ['sse2'])).toEqual(['aes', 'avx2']);
    expect(missingFlags(V2, [...V4, 'aes'])).toEqual([]);
    expect(missingFlags([], [])).toEqual([]);
  });

  it('takes the baseline of several hosts as the flags all of them have', () => {
    const older = [...V2, 'aes', 'pclmulqdq'];
    const newer = [...V4, 'aes', 'sha_ni'];
    const oldest = [...V2, 'pclmulqdq'];
    expect(baselineFlags([newer, older])).toEqual(sorted([...V2, 'aes']));
    expect(baselineFlags([newer, older, oldest])).toEqual(sorted(V2));
    expect(highestLevel(baselineFlags([newer, older]))).toBe('x86-64-v2');
    expect(baselineFlags([['sse2', 'aes', 'sse2']])).toEqual(['aes', 'sse2']);
    expect(baselineFlags([])).toEqual([]);
    expect(baselineFlags([newer, []])).toEqual([]); // a host that reports no flags leaves none in common
  });
});

describe('flags from the network', () => {
  it('accepts flags as /proc/cpuinfo writes them and nothing else', () => {
    for (const flag of ['sse4_2', '3dnowprefetch', 'avx512_vnni', 'asimd', 'lm']) expect(cpuFlagSchema.safeParse(flag).success, flag).toBe(true);
    for (const flag of ['AVX2', 'avx 2', '', '_sse', '../x', 'a'.repeat(41), 'sse-2']) expect(cpuFlagSchema.safeParse(flag).success, JSON.stringify(flag)).toBe(false);
    expect(cpuFlagsSchema.safeParse(Array.from({ length: 513 }, (_, index) => `f${index}`)).success).toBe(false);
  });

  it('takes flags with a baseline request only, and refuses a baseline without them', () => {
    expect(cpuModelRequestSchema.safeParse({ model: 'baseline', flags: V2 }).success).toBe(true);
    expect(cpuModelRequestSchema.safeParse({ model: 'host' }).success).toBe(true);
    expect(cpuModelRequestSchema.safeParse({ model: 'x86-64-v3' }).success).toBe(true);
    expect(cpuModelRequestSchema.safeParse({ model: 'baseline' }).success).toBe(false);
    expect(cpuModelRequestSchema.safeParse({ model: 'host', flags: V2 }).success).toBe(false);
    expect(cpuModelRequestSchema.safeParse({ model: 'x86-64-v1' }).success).toBe(false);
    expect(cpuModelRequestSchema.safeParse({ model: 'pentium' }).success).toBe(false);
  });
});

/**
 * shared/cpu.ts: the x86-64 levels as flag sets, the highest level a set meets, what a host lacks for a model, the
 * baseline of several hosts, and the schemas that hold flags from the network.
 */
import { describe, expect, it } from 'vitest';
import {
  CPU_LEVELS, LEVEL_FLAGS, baselineFlags, cpuFlagSchema, cpuFlagsSchema, cpuModelRequestSchema, highestLevel, missingFlags,
} from '../../shared/cpu.js';

// The psABI's levels as the psABI writes them (table 3.1, CPUID feature names), and separately how Linux spells each
// in /proc/cpuinfo (arch/x86/include/asm/cpufeatures.h), so that a slip in shared/cpu.ts, a feature left out or
// misspelled, shows up as a difference rather than being checked against itself.
const PSABI = {
  v1: ['CMOV', 'CX8', 'FPU', 'FXSR', 'MMX', 'OSFXSR', 'SCE', 'SSE', 'SSE2'],
  v2: ['CMPXCHG16B', 'LAHF-SAHF', 'POPCNT', 'SSE3', 'SSE4_1', 'SSE4_2', 'SSSE3'],
  v3: ['AVX', 'AVX2', 'BMI1', 'BMI2', 'F16C', 'FMA', 'LZCNT', 'MOVBE', 'OSXSAVE'],
  v4: ['AVX512F', 'AVX512BW', 'AVX512CD', 'AVX512DQ', 'AVX512VL'],
};
/** Linux's name for each; OSFXSR has no flag of its own (it goes with fxsr), and ferry counts long mode (`lm`) in v1. */
const LINUX: Record<string, string[]> = {
  CMOV: ['cmov'], CX8: ['cx8'], FPU: ['fpu'], FXSR: ['fxsr'], MMX: ['mmx'], OSFXSR: [], SCE: ['syscall'], SSE: ['sse'], SSE2: ['sse2', 'lm'],
  CMPXCHG16B: ['cx16'], 'LAHF-SAHF': ['lahf_lm'], POPCNT: ['popcnt'], SSE3: ['pni'], SSE4_1: ['sse4_1'], SSE4_2: ['sse4_2'], SSSE3: ['ssse3'],
  AVX: ['avx'], AVX2: ['avx2'], BMI1: ['bmi1'], BMI2: ['bmi2'], F16C: ['f16c'], FMA: ['fma'], LZCNT: ['abm'], MOVBE: ['movbe'], OSXSAVE: ['xsave'],
  AVX512F: ['avx512f'], AVX512BW: ['avx512bw'], AVX512CD: ['avx512cd'], AVX512DQ: ['avx512dq'], AVX512VL: ['avx512vl'],
};
const linux = (features: string[]): string[] => features.flatMap((feature) => LINUX[feature]!);
const V1 = linux(PSABI.v1);
const V2 = [...V1, ...linux(PSABI.v2)];
const V3 = [...V2, ...linux(PSABI.v3)];
const V4 = [...V3, ...linux(PSABI.v4)];
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

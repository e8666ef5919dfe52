/**
 * CPU models: the instruction-set features (flags) a guest may use, and what a host must have to run it.
 *
 * Flags are named as Linux names them in /proc/cpuinfo (`flags` on x86, `Features` on arm64), lowercase. A VM's
 * model is a flag set fixed when it starts: a guest that has seen a flag may use it at any moment after, so a
 * running or suspended VM can only go where every one of its flags exists (libvirt's `virsh cpu-compare`), and the
 * flags several hosts share are what a VM may use to move between all of them (`virsh cpu-baseline`, VMware EVC).
 *
 * The named levels are the x86-64 micro-architecture levels of the System V x86-64 psABI (x86-64-ABI, "Micro-
 * Architecture Levels", table 3.1, https://gitlab.com/x86-psABIs/x86-64-ABI), as QEMU's `x86-64-v2`...`-v4` CPU
 * models and the distributions name them. Each level includes the one below. The psABI lists CPUID features; the
 * names here are their /proc/cpuinfo spellings: SSE3 is `pni`, LAHF-SAHF is `lahf_lm`, LZCNT is `abm`, OSXSAVE is
 * `xsave`, and CMPXCHG16B is `cx16`.
 */
import { z } from 'zod';

/** Each level's own flags, above the level below it (psABI table 3.1). */
const LEVEL_ADDS = {
  'x86-64-v1': ['cmov', 'cx8', 'fpu', 'fxsr', 'mmx', 'syscall', 'sse', 'sse2', 'lm'],
  'x86-64-v2': ['cx16', 'lahf_lm', 'popcnt', 'pni', 'sse4_1', 'sse4_2', 'ssse3'],
  'x86-64-v3': ['avx', 'avx2', 'bmi1', 'bmi2', 'f16c', 'fma', 'abm', 'movbe', 'xsave'],
  'x86-64-v4': ['avx512f', 'avx512bw', 'avx512cd', 'avx512dq', 'avx512vl'],
} as const;

export type CpuLevel = keyof typeof LEVEL_ADDS;

/** The levels from lowest to highest. */
export const CPU_LEVELS = Object.keys(LEVEL_ADDS) as CpuLevel[];

/** Every flag of each level, the levels below included, sorted. */
export const LEVEL_FLAGS: Record<CpuLevel, readonly string[]> = (() => {
  const levels = {} as Record<CpuLevel, readonly string[]>;
  let below: string[] = [];
  for (const level of CPU_LEVELS) {
    below = [...below, ...LEVEL_ADDS[level]];
    levels[level] = sortedFlags(below);
  }
  return levels;
})();

/**
 * A flag as /proc/cpuinfo writes one: lowercase letters, digits and underscores (`sse4_2`, `3dnowprefetch`,
 * `avx512_vnni`, arm64's `asimd`). Anything else did not come from a CPU.
 */
export const cpuFlagSchema = z.string().regex(/^[a-z0-9][a-z0-9_]{0,39}$/, 'a CPU flag is 1-40 lowercase letters, digits or underscores, as /proc/cpuinfo writes it');
/** A flag set as it travels. 512 is several times what any CPU reports today (about 150 on a recent x86). */
export const cpuFlagsSchema = z.array(cpuFlagSchema).max(512);

/** What a VM may be created with: `host` (every flag of the host it starts on), a level, or the cluster `baseline`. */
export const cpuModelNameSchema = z.enum(['host', 'x86-64-v2', 'x86-64-v3', 'x86-64-v4', 'baseline']);
export type CpuModelName = z.infer<typeof cpuModelNameSchema>;

export const cpuLevelSchema = z.enum(CPU_LEVELS as [CpuLevel, ...CpuLevel[]]);

/**
 * A host's CPU as its agent reports it. `flags` are those it offers guests: the CPU's own less `masked`
 * (`ferry-agent --cpu-mask`); `level` is the highest x86-64 level they meet, null on other architectures.
 */
export const hostCpuSchema = z.object({
  vendor: z.string().max(200),
  model: z.string().max(200),
  flags: cpuFlagsSchema,
  level: cpuLevelSchema.nullable(),
  masked: cpuFlagsSchema,
});
export type HostCpu = z.infer<typeof hostCpuSchema>;

/** A VM's CPU model: its name, and the flags it resolved to, which its guest was started with. */
export const vmCpuModelSchema = z.object({ model: cpuModelNameSchema, flags: cpuFlagsSchema });
export type VmCpuModel = z.infer<typeof vmCpuModelSchema>;

/** The models named after a level, whose flags are the level's own wherever the VM is. */
export function isLevel(model: CpuModelName): model is CpuLevel & CpuModelName {
  return model in LEVEL_ADDS;
}

/** Sorted, without repeats: one spelling of a set, so that two equal sets compare equal. */
export function sortedFlags(flags: Iterable<string>): string[] {
  return [...new Set(flags)].sort();
}

/** The highest level whose every flag is in `flags`; null when not even x86-64-v1's are. */
export function highestLevel(flags: Iterable<string>): CpuLevel | null {
  const have = new Set(flags);
  let highest: CpuLevel | null = null;
  for (const level of CPU_LEVELS) {
    if (!LEVEL_ADDS[level].every((flag) => have.has(flag))) break;
    highest = level;
  }
  return highest;
}

/** The flags of `wanted` (a VM's model) that `available` (a host's) lacks, sorted; none means the host can run it. */
export function missingFlags(wanted: Iterable<string>, available: Iterable<string>): string[] {
  const have = new Set(available);
  return sortedFlags([...wanted].filter((flag) => !have.has(flag)));
}

/** The flags every one of `hosts` has (their intersection), sorted; none for no hosts. */
export function baselineFlags(hosts: Iterable<string>[]): string[] {
  const [first, ...rest] = hosts.map((flags) => new Set(flags));
  if (!first) return [];
  return sortedFlags([...first].filter((flag) => rest.every((other) => other.has(flag))));
}

/**
 * A VM's CPU model as `vm.create` asks for it: `baseline` comes with the flags (only the coordinator, which asks
 * every host, knows them); the agent resolves `host` and the levels itself.
 */
export const cpuModelRequestSchema = z.discriminatedUnion('model', [
  z.object({ model: z.literal('baseline'), flags: cpuFlagsSchema }).strict(),
  z.object({ model: z.enum(['host', 'x86-64-v2', 'x86-64-v3', 'x86-64-v4']) }).strict(),
]);
export type CpuModelRequest = z.infer<typeof cpuModelRequestSchema>;

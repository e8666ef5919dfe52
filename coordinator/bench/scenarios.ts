/**
 * Benchmark scenarios, declared as data (bench/scenarios.json), checked on load.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { postcopyOptionSchema, verifyModeSchema, workloadKindSchema } from '../../shared/protocol.js';

/**
 * A service scenario: the kv VM serves its address while a client probes it, across `migrations` live migrations
 * back and forth between the two agents, each under a probe from `margin` before to `margin` after it.
 */
export const serviceSchema = z.object({
  /** Requests a second the client sends during each migration. */
  rate: z.number().int().min(1).max(200_000),
  migrations: z.number().int().min(1).max(1000),
  /** How long the probe runs before each migration starts and after it ends. */
  margin: z.string().default('1.5s'),
  /** Outside migration: the probe at each of these rates in turn, `duration` each; none when left out. */
  steady: z.object({ rates: z.array(z.number().int().min(1).max(200_000)).min(1), duration: z.string().default('3s') }).strict().optional(),
}).strict();
export type ServiceSpec = z.infer<typeof serviceSchema>;

export const storageModes = ['mirror', 'iterate'] as const;
export type StorageModeName = (typeof storageModes)[number];

/** A storage scenario's disk and its moves (pattern VMs only). */
export const storageSpecSchema = z.object({
  disk: z.string(),
  /** Block writes a second the guest is asked for (4 KiB each, synchronous through the agent's block layer). */
  diskRate: z.number().int().min(0).max(1_000_000),
  /** The part of the disk written, from its start (default: the whole disk). */
  diskWss: z.string().optional(),
  modes: z.array(z.enum(storageModes)).min(1).default([...storageModes]),
  /** Moves per mode, alternating shared -> local -> shared ... */
  moves: z.number().int().min(1).max(100),
  /** Start from an image of random bytes the size of the disk: every block is data, none a hole. */
  filled: z.boolean().default(false),
}).strict();
export type StorageSpec = z.infer<typeof storageSpecSchema>;

/**
 * A soak: the same two agents for the whole run, `others` pattern VMs on each beside the one that moves, and
 * `migrations` migrations of it back and forth with default options (bench/soak.ts).
 */
export const soakSpecSchema = z.object({
  migrations: z.number().int().min(1).max(1000),
  others: z.number().int().min(0).max(16).default(2),
  othersMemory: z.string().default('64MiB'),
  /** Page writes a second of each other VM. */
  othersRate: z.number().int().min(0).max(1_000_000).default(2000),
}).strict();
export type SoakSpec = z.infer<typeof soakSpecSchema>;

export const scenarioSchema = z.object({
  name: z.string().regex(/^[a-z0-9][a-z0-9-]*$/),
  description: z.string(),
  memory: z.string(),
  workload: workloadKindSchema,
  /** Page writes per second; or give dirtyRateOfLink. */
  rate: z.number().int().min(0).optional(),
  /** Dirty rate as a fraction of the link rate (bytes of page writes per second / link bytes per second). */
  dirtyRateOfLink: z.number().min(0).optional(),
  wss: z.string().optional(),
  hot: z.string().optional(),
  seed: z.number().int().min(1).default(7),
  verify: verifyModeSchema.default('pages'),
  /** `loopback`, or a shaped link rate such as `1gbit`. */
  link: z.string().default('loopback'),
  maxBandwidth: z.string().optional(),
  maxDowntime: z.string().default('300ms'),
  /** How the pages travel (`ferry migrate --page-stream`): a TCP stream of their own (the default), or the peer WebSocket. */
  pageStream: z.enum(['tcp', 'ws']).default('tcp'),
  /** `ferry migrate --compress`: `xbzrle` sends pages sent again as deltas; absent, every page goes whole. */
  compress: z.enum(['xbzrle']).optional(),
  /** With `compress`: `--xbzrle-cache`, e.g. `64MiB` (the default). */
  xbzrleCache: z.string().optional(),
  /** Post-copy (`ferry migrate --postcopy-after N` or `--postcopy auto`): `{mode: "after", afterRounds}` or `{mode: "auto"}`. */
  postcopy: postcopyOptionSchema.optional(),
  /**
   * Back guest memory with real pages at creation (QEMU's -mem-prealloc). On by default: a guest that has run for a
   * while has its memory resident, and a fresh guest's untouched memory would charge the migration for page faults
   * no long-running guest pays.
   */
  prealloc: z.boolean().default(true),
  /**
   * Start the guest's memory filled (`vm create --filled`): no page is zero, so sending zero pages as flags cannot
   * stand in for moving bytes. On unless the scenario says false (the zero-page scenario) or runs kv, whose table
   * starts empty.
   */
  filled: z.boolean().optional(),
  /** How long the guest runs before the migration starts. */
  warmup: z.string().default('1s'),
  /** A small scenario that proves the benchmark works, for CI. */
  smoke: z.boolean().default(false),
  /** A client of the VM's service across migrations (kv VMs only); see serviceSchema. */
  service: serviceSchema.optional(),
  /** A disk the guest writes, moved back and forth by `storage move` (pattern VMs only); see storageSpecSchema. */
  storage: storageSpecSchema.optional(),
  /** Migrations back and forth between long-lived agents hosting other VMs; see soakSpecSchema. */
  soak: soakSpecSchema.optional(),
});
export type Scenario = z.infer<typeof scenarioSchema>;

/** Whether the scenario's guest starts filled (see `filled`). */
export function filledGuest(scenario: Scenario): boolean {
  return scenario.filled ?? scenario.workload !== 'kv';
}

const fileSchema = z.object({ scenarios: z.array(scenarioSchema).min(1) });

/** The repository root: the nearest folder above this file with ferry's package.json. */
export function projectRoot(): string {
  let folder = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const manifest = path.join(folder, 'package.json');
    if (existsSync(manifest) && (JSON.parse(readFileSync(manifest, 'utf8')) as { name?: string }).name === 'ferry') return folder;
    const parent = path.dirname(folder);
    if (parent === folder) throw new FerryError(ErrorCode.IO, 'cannot find the ferry project folder', 'run ferry from its installation');
    folder = parent;
  }
}

export function defaultScenarioFile(): string {
  return path.join(projectRoot(), 'bench', 'scenarios.json');
}

export function loadScenarios(file: string): Scenario[] {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    throw new FerryError(ErrorCode.BAD_INPUT, `cannot read scenarios from ${file}: ${(error as Error).message}`, 'give a JSON file like bench/scenarios.json');
  }
  const parsed = fileSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new FerryError(ErrorCode.BAD_INPUT, `${file}: ${issue?.path.join('.')}: ${issue?.message}`, 'see bench/scenarios.json for the fields');
  }
  const names = new Set<string>();
  for (const scenario of parsed.data.scenarios) {
    if (names.has(scenario.name)) throw new FerryError(ErrorCode.BAD_INPUT, `${file}: scenario ${scenario.name} appears twice`, 'give each scenario its own name');
    names.add(scenario.name);
    // idle and kv VMs write no pattern of their own: they take no dirty rate.
    const writes = scenario.workload !== 'idle' && scenario.workload !== 'kv';
    if (writes && (scenario.rate === undefined) === (scenario.dirtyRateOfLink === undefined)) {
      throw new FerryError(ErrorCode.BAD_INPUT, `${file}: scenario ${scenario.name} needs exactly one of rate and dirtyRateOfLink`, 'rate is page writes per second; dirtyRateOfLink a fraction of the link');
    }
    if (scenario.service && scenario.workload !== 'kv') {
      throw new FerryError(ErrorCode.BAD_INPUT, `${file}: scenario ${scenario.name} has a service but runs ${scenario.workload}`, 'only a kv VM serves requests: give it "workload": "kv"');
    }
    if (scenario.storage && scenario.workload !== 'pattern') {
      throw new FerryError(ErrorCode.BAD_INPUT, `${file}: scenario ${scenario.name} has a storage part but runs ${scenario.workload}`, 'only a pattern VM writes its disk: give it "workload": "pattern"');
    }
    if (scenario.soak && (scenario.storage || scenario.service)) {
      throw new FerryError(ErrorCode.BAD_INPUT, `${file}: scenario ${scenario.name} has a soak part beside a service or storage part`, 'give it one of them');
    }
    if (scenario.soak && scenario.dirtyRateOfLink !== undefined) {
      throw new FerryError(ErrorCode.BAD_INPUT, `${file}: soak scenario ${scenario.name} gives dirtyRateOfLink`, 'a soak writes at a fixed rate: give "rate" (page writes per second)');
    }
    if (scenario.storage && scenario.service) {
      throw new FerryError(ErrorCode.BAD_INPUT, `${file}: scenario ${scenario.name} has both a service and a storage part`, 'give it one of them');
    }
  }
  return parsed.data.scenarios;
}

/** The scenarios named, in file order; by default every scenario except the smoke test. */
export function selectScenarios(all: Scenario[], names: string[] | undefined): Scenario[] {
  if (!names || names.length === 0) return all.filter((scenario) => !scenario.smoke);
  for (const name of names) {
    if (!all.some((scenario) => scenario.name === name || scenario.name.startsWith(`${name}-`))) {
      throw new FerryError(ErrorCode.BAD_INPUT, `no scenario named ${name}`, `known: ${all.map((scenario) => scenario.name).join(', ')}`);
    }
  }
  // A name selects itself and its family: "hot-1g" selects hot-1g-0 ... hot-1g-150.
  return all.filter((scenario) => names.some((name) => scenario.name === name || scenario.name.startsWith(`${name}-`)));
}

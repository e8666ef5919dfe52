/**
 * The migration policies a bake-off compares (`ferry bench --trace FILE --policies ...`), each as the migration
 * options it sets on top of the bake-off's base options (bakeoff.ts). This table is the one place a policy is
 * defined: a policy whose options an agent does not know yet is refused by that agent's `migrate.start` schema
 * (FERRY_ERR_BAD_INPUT, strict about unknown option fields) and shows in the bake-off as not run, with that error.
 *
 * The options are typed loosely on purpose, so that a policy can be listed before its feature is in
 * `migrationOptionsSchema` (post-copy and delta compression were written beside this table, and their fields came
 * later): an entry type-checks against the schema once its fields are there, and the policy runs.
 */
import { ErrorCode, FerryError } from '../../shared/errors.js';
import type { MigrationOptions } from '../../shared/protocol.js';

const MiB = 1024 * 1024;

/** Options a policy sets: known fields typed as MigrationOptions has them, others (features to come) as they will be. */
export type PolicyOptions = Partial<MigrationOptions> & Record<string, unknown>;

export interface Policy {
  options: PolicyOptions;
  /** What it does, in a line, for the table. */
  description: string;
}

export const POLICIES = {
  precopy: { options: {}, description: 'iterative pre-copy, ferry\'s defaults' },
  postcopy: { options: { postcopy: { mode: 'after', afterRounds: 0 } }, description: 'post-copy from the start: the guest runs at the destination at once, missing pages fetched on demand' },
  hybrid: { options: { postcopy: { mode: 'after', afterRounds: 1 } }, description: 'one pre-copy round, then post-copy' },
  'auto-converge': { options: { autoConverge: true }, description: 'pre-copy, throttling the vCPU while it dirties memory faster than the link carries it' },
  xbzrle: { options: { compress: 'xbzrle', xbzrleCacheBytes: 64 * MiB }, description: 'pre-copy, pages sent again as XOR-RLE deltas against a 64 MiB cache' },
} as const satisfies Record<string, Policy>;

export type PolicyName = keyof typeof POLICIES;

export const POLICY_NAMES = Object.keys(POLICIES) as PolicyName[];

/** `--policies a,b,c` as policy names, in the order given, each once; an unknown name is FERRY_ERR_BAD_INPUT. */
export function parsePolicies(text: string): PolicyName[] {
  const names = text.split(',').map((name) => name.trim()).filter((name) => name !== '');
  const unknown = names.filter((name) => !(name in POLICIES));
  if (names.length === 0 || unknown.length > 0) {
    throw new FerryError(ErrorCode.BAD_INPUT, names.length === 0 ? '--policies names no policy' : `--policies: no policy called ${unknown.join(', ')}`, `pick from ${POLICY_NAMES.join(', ')}, comma-separated`);
  }
  return [...new Set(names)] as PolicyName[];
}

/** The migration options of `policy`, on top of `base`. */
export function policyOptions(policy: PolicyName, base: MigrationOptions): MigrationOptions {
  // A policy's fields that MigrationOptions does not have yet travel as they are; the agent's schema decides.
  return { ...base, ...(POLICIES[policy].options as PolicyOptions) } as MigrationOptions;
}

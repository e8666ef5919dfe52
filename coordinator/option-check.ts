/**
 * Command-line values checked against the protocol's own schemas (shared/protocol.ts), so that a limit lives in one
 * place: the schema the agent also enforces. What this file adds is the telling: which option a field came from,
 * what was typed, the limit in the units the user wrote, and a hint. Every refusal is FERRY_ERR_BAD_INPUT, which the
 * CLI turns into exit code 2.
 */
import type { z } from 'zod';
import { PAGE_SIZE } from '../shared/constants.js';
import { ErrorCode, FerryError } from '../shared/errors.js';
import { formatBytes } from '../shared/units.js';

/** How a field's numbers read to the person who typed the option: sizes for sizes, even where the field counts pages. */
export type OptionUnit = 'bytes' | 'pages' | 'count' | 'ms' | 'text';

export interface OptionSource {
  /** The option as typed on the command line, e.g. `--memory`. */
  option: string;
  /** The value as typed, e.g. `8GiB`. */
  typed: string;
  unit: OptionUnit;
  /** What to do instead, in one sentence. */
  hint: string;
}

/** A size as people type it back to ferry: `4GiB`, not `4 GiB`. */
export const typedSize = (bytes: number): string => formatBytes(bytes).replace(' ', '');

function amount(value: number | bigint, unit: OptionUnit): string {
  const n = Number(value);
  switch (unit) {
    case 'bytes':
      return formatBytes(n);
    case 'pages':
      return formatBytes(n * PAGE_SIZE);
    case 'ms':
      return `${n} ms`;
    case 'count':
    case 'text':
      return n.toLocaleString('en-US');
    default: {
      const unreachable: never = unit;
      return unreachable;
    }
  }
}

/** Zod's issue in words: zod's own wording ("Too big: expected number to be <=4294967296") is for programmers. */
function reason(issue: z.core.$ZodIssue, unit: OptionUnit): string {
  switch (issue.code) {
    case 'too_small':
      return issue.inclusive === false ? `must be above ${amount(issue.minimum, unit)}` : `is below ${amount(issue.minimum, unit)}`;
    case 'too_big':
      return issue.inclusive === false ? `must be below ${amount(issue.maximum, unit)}` : `is above ${amount(issue.maximum, unit)}`;
    case 'invalid_value':
      return `is not one of ${issue.values.map(String).join(', ')}`;
    case 'invalid_type':
      return unit === 'text' ? 'is not allowed' : 'is not a whole number';
    default:
      return `is not allowed: ${issue.message}`;
  }
}

/**
 * Parses `value` with `schema`; on failure throws a FerryError about the option that field came from. `sources` maps
 * a field's path (`workload.rate`) to its option.
 */
export function checkOptions<S extends z.ZodType>(schema: S, value: unknown, sources: Record<string, OptionSource>): z.output<S> {
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0]!;
  const field = issue.path.join('.');
  const source = sources[field];
  if (!source) {
    // A field no option sets: ferry built a request the protocol refuses, which is a bug here, not bad input.
    throw new FerryError(ErrorCode.INTERNAL, `ferry built a request with a bad ${field || 'value'}: ${issue.message}`, 'please report this');
  }
  throw new FerryError(ErrorCode.BAD_INPUT, `${source.option} ${source.typed} ${reason(issue, source.unit)}`, source.hint);
}

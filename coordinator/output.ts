/**
 * How the CLI speaks: results on stdout (tables for people, JSON with --json), errors on stderr with their code
 * and hint, and exit codes that mean something.
 */
import { ErrorCode, type FerryError } from '../shared/errors.js';

/** Exit codes; scripts can rely on them. */
export const ExitCode = {
  OK: 0,
  /** The request was carried out and did not succeed: a migration not committed, an agent's refusal. */
  FAILED: 1,
  /** The request itself was wrong: bad value, unknown host, usage error. Nothing was changed. */
  BAD_INPUT: 2,
  /** A host could not be reached, refused our token, or the connection to it broke. */
  UNREACHABLE: 3,
} as const;

export function exitCodeFor(error: FerryError): number {
  switch (error.code) {
    case ErrorCode.BAD_INPUT:
    case ErrorCode.HOST_NOT_FOUND:
    case ErrorCode.HOST_EXISTS:
      return ExitCode.BAD_INPUT;
    case ErrorCode.UNREACHABLE:
    case ErrorCode.UNAUTHORIZED:
    case ErrorCode.CONNECTION_LOST:
    case ErrorCode.TIMEOUT:
      return ExitCode.UNREACHABLE;
    // A valid request an agent refused (no room; a CPU without the VM's flags): carried out and not done.
    case ErrorCode.CAPACITY:
    case ErrorCode.CPU_INCOMPATIBLE:
      return ExitCode.FAILED;
    default:
      return ExitCode.FAILED;
  }
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function printError(error: FerryError, json: boolean): void {
  process.stderr.write(`ferry: ${error.message}\n`);
  if (error.hint) process.stderr.write(`  hint: ${error.hint}\n`);
  process.stderr.write(`  code: ${error.code}\n`);
  if (json) printJson({ error: error.toPayload() });
}

/** Left-aligned columns, two spaces apart; right-aligned where numbers are. */
export function formatTable(rows: string[][], rightAligned: number[] = []): string {
  if (rows.length === 0) return '';
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => (row[column] ?? '').length)));
  return rows
    .map((row) => row.map((cell, column) => (rightAligned.includes(column) ? cell.padStart(widths[column]!) : cell.padEnd(widths[column]!))).join('  ').trimEnd())
    .join('\n');
}

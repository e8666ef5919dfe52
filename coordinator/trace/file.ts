/**
 * Trace files on disk (the format: shared/trace.ts): written with one sample a line, read with their size and
 * schema checked before anything uses them.
 */
import { readFile, stat, writeFile } from 'node:fs/promises';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { TRACE_LIMITS, parseTraceFile, type TraceFile } from '../../shared/trace.js';

/** The file's text: the header fields, then one sample a line (a trace diffs and greps line by line). */
export function traceFileText(trace: TraceFile): string {
  const { samples, ...header } = trace;
  const head = JSON.stringify(header, null, 2).slice(0, -2); // without the closing "\n}"
  return `${head},\n  "samples": [\n${samples.map((sample) => `    ${JSON.stringify(sample)}`).join(',\n')}\n  ]\n}\n`;
}

export async function writeTraceFile(file: string, trace: TraceFile): Promise<void> {
  await writeFile(file, traceFileText(trace));
}

/** Reads and checks a trace file: FERRY_ERR_BAD_INPUT for one that is missing, too large or not a valid trace. */
export async function readTraceFile(file: string): Promise<TraceFile> {
  let size: number;
  try {
    size = (await stat(file)).size;
  } catch (error) {
    throw new FerryError(ErrorCode.BAD_INPUT, `cannot read trace file ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, 'record one with `ferry trace record NAME --out FILE`');
  }
  if (size > TRACE_LIMITS.maxFileBytes) {
    throw new FerryError(ErrorCode.BAD_INPUT, `${file} is ${size} bytes, more than a trace file may be (${TRACE_LIMITS.maxFileBytes / 1024 ** 2} MiB)`, 'record a shorter trace, or with a longer --interval');
  }
  return parseTraceFile(await readFile(file, 'utf8'), file);
}

/**
 * docs/PROTOCOL.md against shared/protocol.ts: every op of `controlOps` and `peerOps`, every field of its request
 * (and of its reply, when the reply is an object or a named shape), and every kind of `migrationEventSchema` is
 * in the doc's tables, and the tables name nothing the code lacks. When this fails after a protocol change, the
 * problems it lists are the rows of PROTOCOL.md to update; the format is described there, in "The op tables".
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  controlOps, hostInfoSchema, migrationEventSchema, peerOps, roundReportSchema, sourceReportSchema, verificationSchema,
  vmInfoSchema, watchEventSchema, type OpTable,
} from '../../shared/protocol.js';

const docFile = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../docs/PROTOCOL.md');
const protocolDoc = readFileSync(docFile, 'utf8');

/** The shapes a reply may name in italics instead of spelling out its fields; each has a row in "Shapes". */
const shapes: Record<string, z.ZodType> = {
  'host info': hostInfoSchema,
  'VM info': vmInfoSchema,
  'source report': sourceReportSchema,
  'round report': roundReportSchema,
  'verification': verificationSchema,
};

interface Row { key: string; cells: string[]; line: number }

/** The rows of the table whose header row starts with `| <first> |`, keyed by their first cell. */
function tableRows(markdown: string, first: string): Row[] | undefined {
  const lines = markdown.split('\n');
  const start = lines.findIndex((line) => cellsOf(line)?.[0] === first);
  if (start < 0) return undefined;
  const rows: Row[] = [];
  for (let index = start + 2; index < lines.length; index += 1) {
    const cells = cellsOf(lines[index]!);
    if (!cells) break;
    rows.push({ key: nameIn(cells[0]!) ?? cells[0]!, cells, line: index + 1 });
  }
  return rows;
}

/** A markdown table row's cells, `\|` unescaped; undefined for a line that is no table row. */
function cellsOf(line: string): string[] | undefined {
  const trimmed = line.trim();
  if (!trimmed.startsWith('|')) return undefined;
  return trimmed.slice(1, trimmed.endsWith('|') ? -1 : undefined).split(/(?<!\\)\|/).map((cell) => cell.trim().replaceAll('\\|', '|'));
}

/** `name` in backticks or *name* in italics. */
function nameIn(cell: string): string | undefined {
  return /^`([^`]+)`$/.exec(cell)?.[1] ?? /^\*([^*]+)\*$/.exec(cell)?.[1];
}

/**
 * The top-level fields of the first code span of a cell, `{a, b?, c:{x, y}}` -> ['a', 'b?', 'c'], sorted; undefined
 * when the cell has no code span holding an object.
 */
function documentedFields(cell: string): string[] | undefined {
  const span = /`([^`]*)`/.exec(cell)?.[1]?.trim();
  if (!span?.startsWith('{') || !span.endsWith('}')) return undefined;
  const entries: string[] = [];
  let depth = 0;
  let current = '';
  for (const char of span.slice(1, -1)) {
    if ('{[('.includes(char)) depth += 1;
    if ('}])'.includes(char)) depth -= 1;
    if (char === ',' && depth === 0) {
      entries.push(current);
      current = '';
    } else {
      current += char;
    }
  }
  entries.push(current);
  return entries
    .map((entry) => entry.trim())
    .filter((entry) => entry !== '')
    .map((entry) => /^([A-Za-z_$][\w$]*\??)/.exec(entry)?.[1] ?? `unreadable "${entry}"`)
    .sort();
}

/** The schema's top-level fields, `?` after those a message may leave out, sorted. */
function schemaFields(schema: z.ZodType): string[] | undefined {
  if (!(schema instanceof z.ZodObject)) return undefined;
  return Object.entries(schema.shape as Record<string, z.ZodType>)
    .map(([key, field]) => (field.safeParse(undefined).success ? `${key}?` : key))
    .sort();
}

/** What differs between the fields a row documents and the fields the code has, as sentences; none when equal. */
function compareFields(where: string, documented: string[], code: string[]): string[] {
  const bare = (field: string): string => field.replace(/\?$/, '');
  const problems: string[] = [];
  for (const field of code) {
    const match = documented.find((other) => bare(other) === bare(field));
    if (!match) problems.push(`${where}: field \`${field}\` is in the code, not in the doc`);
    else if (match !== field) problems.push(`${where}: field \`${bare(field)}\` is ${field.endsWith('?') ? 'optional' : 'required'} in the code, written \`${match}\` in the doc`);
  }
  for (const field of documented) {
    if (!code.some((other) => bare(other) === bare(field))) problems.push(`${where}: field \`${field}\` is in the doc, not in the code`);
  }
  return problems;
}

/** Every way the table headed `first` differs from `ops`. */
function checkOpTable(markdown: string, first: string, ops: OpTable): string[] {
  const rows = tableRows(markdown, first);
  if (!rows) return [`no table whose header starts with "| ${first} |"`];
  const problems: string[] = [];
  const seen = new Set<string>();
  for (const row of rows) {
    const where = `${first} \`${row.key}\` (PROTOCOL.md line ${row.line})`;
    if (seen.has(row.key)) problems.push(`${where}: a second row for the same op`);
    seen.add(row.key);
    const schemas = ops[row.key];
    if (!schemas) {
      problems.push(`${where}: in the doc, not in the code`);
      continue;
    }
    const [request, reply] = schemas;
    const requestCode = schemaFields(request);
    const requestDoc = documentedFields(row.cells[1] ?? '');
    if (!requestCode) problems.push(`${where}: its request schema is not a z.object; this test reads only objects`);
    else if (!requestDoc) problems.push(`${where}: the request cell must be one code span \`{field, optional?, ...}\``);
    else problems.push(...compareFields(`${where} request`, requestDoc, requestCode));

    const replyCell = row.cells[2] ?? '';
    const shapeName = /^\*([^*]+)\*/.exec(replyCell)?.[1];
    if (shapeName !== undefined) {
      if (shapes[shapeName] !== reply) problems.push(`${where}: the reply is not the shape *${shapeName}*`);
      continue;
    }
    const replyCode = schemaFields(reply);
    const replyDoc = documentedFields(replyCell);
    if (!replyCode) problems.push(`${where}: its reply schema is not a z.object; name it as a shape`);
    else if (!replyDoc) problems.push(`${where}: the reply cell must be a code span \`{field, ...}\` or a *shape*`);
    else problems.push(...compareFields(`${where} reply`, replyDoc, replyCode));
  }
  for (const op of Object.keys(ops)) {
    if (!seen.has(op)) problems.push(`${first} \`${op}\`: in the code, not in the doc`);
  }
  return problems;
}

/** Every way the table headed `first` (`migration event`, `watch event`) differs from a union's kinds and their fields. */
function checkEventTable(markdown: string, first: string, union: typeof migrationEventSchema | typeof watchEventSchema): string[] {
  const rows = tableRows(markdown, first);
  if (!rows) return [`no table whose header starts with "| ${first} |"`];
  const problems: string[] = [];
  const kinds = new Map(union.options.map((option) => [option.shape.kind.value as string, option as z.ZodType]));
  for (const row of rows) {
    const where = `${first} \`${row.key}\` (PROTOCOL.md line ${row.line})`;
    const schema = kinds.get(row.key);
    if (!schema) {
      problems.push(`${where}: in the doc, not in the code`);
      continue;
    }
    const documented = documentedFields(row.cells[1] ?? '');
    if (!documented) problems.push(`${where}: the fields cell must be one code span \`{kind, ...}\``);
    else problems.push(...compareFields(where, documented, schemaFields(schema) ?? []));
  }
  for (const kind of kinds.keys()) {
    if (!rows.some((row) => row.key === kind)) problems.push(`${first} \`${kind}\`: in the code, not in the doc`);
  }
  return problems;
}

/** Every way the "shape" table differs from the schemas in `shapes`. */
function checkShapeTable(markdown: string): string[] {
  const rows = tableRows(markdown, 'shape');
  if (!rows) return ['no table whose header starts with "| shape |"'];
  const problems: string[] = [];
  for (const row of rows) {
    const where = `shape *${row.key}* (PROTOCOL.md line ${row.line})`;
    const schema = shapes[row.key];
    if (!schema) {
      problems.push(`${where}: not a shape this test knows; add it to \`shapes\` in test/unit/protocol-doc.test.ts`);
      continue;
    }
    const documented = documentedFields(row.cells[1] ?? '');
    if (!documented) problems.push(`${where}: the fields cell must be one code span \`{field, ...}\``);
    else problems.push(...compareFields(where, documented, schemaFields(schema) ?? []));
  }
  for (const name of Object.keys(shapes)) {
    if (!rows.some((row) => row.key === name)) problems.push(`shape *${name}*: not in the doc`);
  }
  return problems;
}

function checkAll(markdown: string): string[] {
  return [
    ...checkOpTable(markdown, 'control op', controlOps),
    ...checkOpTable(markdown, 'peer op', peerOps),
    ...checkEventTable(markdown, 'migration event', migrationEventSchema),
    ...checkEventTable(markdown, 'watch event', watchEventSchema),
    ...checkShapeTable(markdown),
  ];
}

/**
 * The problems `checkAll` finds in a changed copy of the doc that it does not find in the doc itself (line numbers
 * left out): so that these tests show what the check notices, and stay quiet while the doc itself is being fixed.
 */
function problemsAdded(changed: string): string[] {
  const unnumbered = (problem: string): string => problem.replace(/ \(PROTOCOL\.md line \d+\)/, '');
  const before = new Set(checkAll(protocolDoc).map(unnumbered));
  return checkAll(changed).map(unnumbered).filter((problem) => !before.has(problem));
}

/** The doc with the table row of `key` (in backticks) removed; fails if there was no such row. */
function withoutRow(key: string): string {
  const lines = protocolDoc.split('\n');
  const kept = lines.filter((line) => !line.startsWith(`| \`${key}\` |`));
  expect(kept.length, `a row for ${key}`).toBe(lines.length - 1);
  return kept.join('\n');
}

/** The doc with `from` replaced by `to` once, in the row of `key`. */
function editRow(key: string, from: string, to: string): string {
  const lines = protocolDoc.split('\n');
  const index = lines.findIndex((line) => line.startsWith(`| \`${key}\` |`));
  expect(lines[index], `a row for ${key} holding ${from}`).toContain(from);
  lines[index] = lines[index]!.replace(from, to);
  return lines.join('\n');
}

describe('docs/PROTOCOL.md', () => {
  it('documents every control op with its request and reply fields, and no op or field the code lacks', () => {
    expect(checkOpTable(protocolDoc, 'control op', controlOps)).toEqual([]);
  });

  it('documents every peer op with its request and reply fields, and no op or field the code lacks', () => {
    expect(checkOpTable(protocolDoc, 'peer op', peerOps)).toEqual([]);
  });

  it('documents every migration event kind with its fields', () => {
    expect(checkEventTable(protocolDoc, 'migration event', migrationEventSchema)).toEqual([]);
  });

  it('documents every watch event kind with its fields', () => {
    expect(checkEventTable(protocolDoc, 'watch event', watchEventSchema)).toEqual([]);
  });

  it('documents every shape a reply names with its fields', () => {
    expect(checkShapeTable(protocolDoc)).toEqual([]);
  });

  // The checks above pass on the doc as it is; these show that they notice each kind of drift.
  describe('the check', () => {
    it('notices an op the doc lacks', () => {
      expect(problemsAdded(withoutRow('migrate.cancel'))).toEqual(['control op `migrate.cancel`: in the code, not in the doc']);
      expect(problemsAdded(withoutRow('peer.forget'))).toEqual(['peer op `peer.forget`: in the code, not in the doc']);
    });

    it('notices an op the code lacks', () => {
      const problems = problemsAdded(editRow('vm.pause', '`vm.pause`', '`vm.freeze`'));
      expect(problems).toContain('control op `vm.pause`: in the code, not in the doc');
      expect(problems.some((problem) => problem.startsWith('control op `vm.freeze`') && problem.endsWith('in the doc, not in the code'))).toBe(true);
    });

    it('notices a request field the doc lacks, one the code lacks, and an optional field written as required', () => {
      expect(problemsAdded(editRow('peer.hello', '{migrationId, from, version, resume?}', '{migrationId, from, resume?}'))).toEqual([
        expect.stringMatching(/^peer op `peer.hello`.* request: field `version` is in the code, not in the doc$/),
      ]);
      expect(problemsAdded(editRow('migrate.release', '{migrationId}', '{migrationId, force}'))).toEqual([
        expect.stringMatching(/^control op `migrate.release`.* request: field `force` is in the doc, not in the code$/),
      ]);
      expect(problemsAdded(editRow('vm.destroy', '{name, deleteDisks?}', '{name, deleteDisks}'))).toEqual([
        expect.stringMatching(/request: field `deleteDisks` is optional in the code, written `deleteDisks` in the doc$/),
      ]);
    });

    it('reads only top-level fields: a nested field is not taken for one', () => {
      expect(problemsAdded(editRow('migrate.start', 'destination:{name, url}', 'destination:{name, url, port}'))).toEqual([]);
      expect(problemsAdded(editRow('migrate.start', 'destination:{name, url}, ', ''))).toEqual([
        expect.stringMatching(/request: field `destination` is in the code, not in the doc$/),
      ]);
    });

    it('notices reply fields, a wrong shape, event kinds and shape fields that drifted', () => {
      expect(problemsAdded(editRow('migrate.cancel', '`{cancelling}`', '`{cancelling, done}`'))).toEqual([
        expect.stringMatching(/reply: field `done` is in the doc, not in the code$/),
      ]);
      expect(problemsAdded(editRow('vm.info', '*VM info*', '*host info*'))).toEqual([
        expect.stringMatching(/^control op `vm.info`.*: the reply is not the shape \*host info\*$/),
      ]);
      expect(problemsAdded(withoutRow('throttle'))).toEqual(['migration event `throttle`: in the code, not in the doc']);
      expect(problemsAdded(protocolDoc.replace('diskFreeBytes, sharedStorageId?, ', ''))).toEqual([
        expect.stringMatching(/^shape \*host info\*.*: field `diskFreeBytes` is in the code, not in the doc$/),
        expect.stringMatching(/^shape \*host info\*.*: field `sharedStorageId\?` is in the code, not in the doc$/),
      ]);
    });
  });
});

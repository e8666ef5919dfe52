/**
 * The vCPU's worker loads only ferry's own small modules and Node's: every VM start waits for the worker to load
 * (a migration's reservation among them), and a package such as the schema library took it from about 30 ms to
 * about 100 ms on the 2-core machine. Type-only imports are erased by the compiler and do not count.
 */
import { readFileSync } from 'node:fs';
import { dirname, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** The modules a compiled file loads: its value imports and re-exports, dynamic ones included. */
function loadedBy(source: string): string[] {
  const specifiers: string[] = [];
  const statement = /^\s*(import|export)\s+(type\s+)?[^'";]*?\bfrom\s+['"]([^'"]+)['"]/gm;
  for (const match of source.matchAll(statement)) if (!match[2]) specifiers.push(match[3]!);
  for (const match of source.matchAll(/^\s*import\s+['"]([^'"]+)['"]/gm)) specifiers.push(match[1]!);
  for (const match of source.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)) specifiers.push(match[1]!);
  return specifiers;
}

function moduleGraph(entry: string): { files: string[]; packages: string[] } {
  const files = new Set<string>();
  const packages = new Set<string>();
  const visit = (file: string): void => {
    if (files.has(file)) return;
    files.add(file);
    for (const specifier of loadedBy(readFileSync(file, 'utf8'))) {
      if (specifier.startsWith('.')) visit(resolve(dirname(file), specifier.replace(/\.js$/, '.ts')));
      else packages.add(specifier);
    }
  };
  visit(resolve(root, entry));
  return { files: [...files].map((file) => relative(root, file)), packages: [...packages] };
}

describe('the vCPU worker', () => {
  it('loads no package but Node\'s own modules', () => {
    const { files, packages } = moduleGraph('agent/vm/vcpu-worker.ts');
    expect(files).toContain('shared/workloads.ts');
    expect(packages.filter((name) => !name.startsWith('node:'))).toEqual([]);
  });

  it('finds a package where one is loaded, so the check above can fail', () => {
    // shared/trace.ts holds the trace file's schema; the worker takes its page runs from shared/trace-runs.ts instead.
    expect(moduleGraph('shared/trace.ts').packages).toContain('zod');
  });
});

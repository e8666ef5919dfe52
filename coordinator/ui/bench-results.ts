/**
 * A `ferry bench` results folder for the page: its summary (the Markdown report's tables), its command and
 * environment, and its charts (the SVGs `ferry bench` drew with Vega-Lite). Only those files are read, by names
 * checked here, whatever path the page sends: a folder without results.json is refused.
 */
import { readFile, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, FerryError } from '../../shared/errors.js';

const CHART_NAME = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}\.svg$/;

export interface BenchFolder {
  dir: string;
  command: string;
  environment: unknown;
  summary: string;
  charts: string[];
}

function notResults(dir: string, why: string): FerryError {
  return new FerryError(ErrorCode.BAD_INPUT, `${dir} is not a ferry bench results folder: ${why}`, 'give the folder `ferry bench` printed ("results in ..."), which holds results.json');
}

export async function readBenchFolder(dir: string): Promise<BenchFolder> {
  const folder = path.resolve(dir);
  let results: { command?: unknown; environment?: unknown; charts?: unknown };
  try {
    results = JSON.parse(await readFile(path.join(folder, 'results.json'), 'utf8')) as typeof results;
  } catch (error) {
    throw notResults(folder, (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no results.json' : `results.json does not read: ${(error as Error).message}`);
  }
  const summary = await readFile(path.join(folder, 'summary.md'), 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return '';
    throw error;
  });
  const charts = Array.isArray(results.charts) ? results.charts.filter((name): name is string => typeof name === 'string' && CHART_NAME.test(name)) : [];
  return { dir: folder, command: typeof results.command === 'string' ? results.command : '', environment: results.environment ?? null, summary, charts };
}

/** One chart of a results folder, as SVG text. */
export async function readBenchChart(dir: string, name: string): Promise<string> {
  if (!CHART_NAME.test(name)) throw new FerryError(ErrorCode.BAD_INPUT, `${name} is not a chart's name`, 'pick a chart the folder lists');
  const folder = path.resolve(dir);
  await readBenchFolder(folder);
  return readFile(path.join(folder, 'charts', name), 'utf8').catch(() => {
    throw new FerryError(ErrorCode.BAD_INPUT, `${folder} has no chart ${name}`, 'pick a chart the folder lists');
  });
}

/** The results folders directly under `root` (newest first), for the page to offer. */
export async function listBenchFolders(root: string): Promise<string[]> {
  const entries = await readdir(root, { withFileTypes: true }).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT' || error.code === 'ENOTDIR') return [];
    throw error;
  });
  const folders: string[] = [];
  for (const entry of entries) {
    if (!entry.isDirectory()) continue;
    const candidate = path.join(path.resolve(root), entry.name);
    const has = await stat(path.join(candidate, 'results.json')).then((found) => found.isFile(), () => false);
    if (has) folders.push(candidate);
  }
  return folders.sort().reverse();
}

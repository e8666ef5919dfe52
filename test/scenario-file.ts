/** Scenario files for the benchmark's unit tests: each in a folder of its own, removed by `removeScenarioFiles`. */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

const folders: string[] = [];

export async function scenarioFile(scenarios: object[]): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-scenarios-'));
  folders.push(dir);
  const file = path.join(dir, 'scenarios.json');
  await writeFile(file, JSON.stringify({ scenarios }));
  return file;
}

export async function removeScenarioFiles(): Promise<void> {
  for (const dir of folders.splice(0)) await rm(dir, { recursive: true, force: true });
}

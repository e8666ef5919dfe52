/**
 * What every benchmark result was measured on: cores, memory, Node, the libraries, the link.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { projectRoot } from './scenarios.js';

export interface Environment {
  date: string;
  host: string;
  cores: number;
  cpuModel: string;
  memoryBytes: number;
  os: string;
  node: string;
  ferry: string;
  libraries: Record<string, string>;
  link: string;
}

function versionOf(root: string, name: string): string {
  try {
    return (JSON.parse(readFileSync(path.join(root, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

export function describeEnvironment(link: string): Environment {
  const root = projectRoot();
  const ferry = (JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string }).version;
  return {
    date: new Date().toISOString(),
    host: os.hostname(),
    cores: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memoryBytes: os.totalmem(),
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    ferry,
    libraries: Object.fromEntries(['ws', 'msgpackr', 'xxhash-wasm', 'zod'].map((name) => [name, versionOf(root, name)])),
    link,
  };
}

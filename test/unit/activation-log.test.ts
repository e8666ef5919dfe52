/**
 * The destination's activation log (agent/migration/activation-log.ts) in a real folder: a file prepared at
 * reservation is no record until the activation writes it; a record survives the agent (a new log over the same
 * folder); a dropped reservation leaves nothing.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ActivationLog } from '../../agent/migration/activation-log.js';

let folder: string | undefined;
afterEach(async () => {
  if (folder) await rm(folder, { recursive: true, force: true });
  folder = undefined;
});

const ids = ['0f8fad5b-d9cb-469f-a165-70867728950e', '7c9e6679-7425-40de-944b-e07fc1f90ae7', '16fd2706-8baf-433b-82eb-8c7fada847da'];

describe('activation log', () => {
  it('counts a prepared file as activated only once the record is written, after a restart too', async () => {
    folder = await mkdtemp(path.join(os.tmpdir(), 'ferry-activations-'));
    const log = new ActivationLog(folder);
    log.prepare(ids[0]!);
    expect(log.activated(ids[0]!)).toBe(false);
    // As after an agent that died between its reservation and the activation: an empty file, no record.
    expect(new ActivationLog(folder).activated(ids[0]!)).toBe(false);
    log.record(ids[0]!, 'web1', 2);
    expect(log.activated(ids[0]!)).toBe(true);
    await new Promise((resolve) => setImmediate(resolve)); // the file is closed after the activation's turn
    expect(new ActivationLog(folder).activated(ids[0]!)).toBe(true);
  });

  it('writes a record it did not prepare, and removes a prepared one that is discarded', async () => {
    folder = await mkdtemp(path.join(os.tmpdir(), 'ferry-activations-'));
    const log = new ActivationLog(folder);
    log.record(ids[1]!, 'web2', 3);
    expect(new ActivationLog(folder).activated(ids[1]!)).toBe(true);
    log.prepare(ids[2]!);
    log.discard(ids[2]!);
    expect(log.activated(ids[2]!)).toBe(false);
    expect((await readdir(folder)).sort()).toEqual([`${ids[1]}.json`]);
  });
});

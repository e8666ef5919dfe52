/**
 * Eight VMs migrated at once between two agents: every migration commits and every guest matches replay.
 */
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { checkDump } from '../replay.js';
import { startCluster, type TestCluster } from '../harness.js';

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

describe('load', () => {
  it('migrates eight running pattern VMs concurrently, all committed, all matching replay', async () => {
    cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
    const c = cluster;
    const names = Array.from({ length: 8 }, (_, i) => `vm${i + 1}`);
    for (const [i, name] of names.entries()) {
      const created = await c.ferry('vm', 'create', name, '--on', i % 2 === 0 ? 'host-a' : 'host-b', '--memory', '32MiB', '--rate', '3000', '--wss', '8MiB', '--seed', String(100 + i));
      expect(created.code, created.stderr).toBe(0);
    }
    const results = await Promise.all(names.map((name, i) => c.ferry('migrate', name, '--to', i % 2 === 0 ? 'host-b' : 'host-a', '--json')));
    for (const [i, result] of results.entries()) {
      expect(result.code, `${names[i]}: ${result.stderr}`).toBe(0);
      expect(result.json()).toMatchObject({ outcome: 'committed', verification: { match: true } });
    }
    const listed = (await c.ferry('vm', 'list', '--json')).json<{ name: string; host: string; state: string }[]>();
    expect(listed).toHaveLength(8);
    for (const [i, name] of names.entries()) {
      expect(listed.find((vm) => vm.name === name)).toMatchObject({ host: i % 2 === 0 ? 'host-b' : 'host-a', state: 'running' });
      const file = path.join(c.dir, `${name}.bin`);
      expect((await c.ferry('vm', 'dump', name, '--out', file)).code).toBe(0);
      expect(checkDump(file)).toMatchObject({ ok: true, badPages: [] });
    }
  });
});

/**
 * The benchmark's storage scenarios without processes: how a scenario file declares them, how moves add up to the
 * summary's figures and targets, rows of runs.csv and the Storage section of summary.md.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { toCsv, toMarkdown, type BenchResults } from '../../coordinator/bench/output.js';
import { defaultScenarioFile, loadScenarios, selectScenarios, type Scenario } from '../../coordinator/bench/scenarios.js';
import { checkStorageTargets, summarizeStorage, type StorageMoveResult, type StorageRun } from '../../coordinator/bench/storage.js';
import { removeScenarioFiles, scenarioFile } from '../scenario-file.js';

afterEach(removeScenarioFiles);

const latency = { before: { count: 100, p50Ms: 0.05, p99Ms: 2 }, during: { count: 50, p50Ms: 0.2, p99Ms: 40 } };
const move = (mode: 'mirror' | 'iterate', index: number, pauseMs: number, extra: Partial<StorageMoveResult> = {}): StorageMoveResult => ({
  mode, index, from: index % 2 ? 'shared' : 'local', to: index % 2 ? 'local' : 'shared', outcome: 'moved', pauseMs, totalTimeMs: 900, readyAfterMs: 800,
  bytesSent: 64 * 1024 ** 2, zeroBlocksSkipped: 0, throughputBytesPerSec: 400e6, imageBytesPerSec: 400e6, mirroredWrites: mode === 'mirror' ? 100 : 0,
  rounds: mode === 'iterate' ? 2 : 0, pausedBlocks: mode === 'iterate' ? 300 : 0, ...(mode === 'iterate' ? { stopReason: 'few-dirty-pages' as const } : {}),
  verified: true, writeLatency: latency, achievedDiskRate: 5000, ...extra,
});

describe('bench storage scenarios', () => {
  it('takes a storage part on a pattern scenario, with defaults, and refuses one on any other workload', async () => {
    const pattern = { name: 'storage-x', description: 'x', memory: '16MiB', workload: 'pattern', rate: 0, storage: { disk: '64MiB', diskRate: 1000, moves: 2 } };
    const [loaded] = loadScenarios(await scenarioFile([pattern]));
    expect(loaded!.storage).toEqual({ disk: '64MiB', diskRate: 1000, moves: 2, modes: ['mirror', 'iterate'], filled: false });
    const file = await scenarioFile([{ ...pattern, workload: 'idle', rate: undefined }]);
    expect(() => loadScenarios(file)).toThrow(/has a storage part but runs idle/);
  });

  it('ships a smoke storage scenario for CI, the rate family, and one whose copy is capped below the guest\'s writes', () => {
    const all = loadScenarios(defaultScenarioFile());
    expect(all.find((s) => s.name === 'storage-smoke')).toMatchObject({ smoke: true, storage: { moves: 2, modes: ['mirror', 'iterate'] } });
    expect(selectScenarios(all, ['storage-rate']).map((s) => s.name)).toEqual(['storage-rate-1000', 'storage-rate-4000', 'storage-rate-16000', 'storage-rate-64000']);
    expect(all.find((s) => s.name === 'storage-1g')?.storage?.filled).toBe(true);
    expect(all.find((s) => s.name === 'storage-capped')).toMatchObject({ maxBandwidth: '8MiB/s', storage: { diskRate: 4000 } });
  });

  it('sums moves per mode into medians and targets; each move a row of runs.csv; a Storage section in summary.md', () => {
    const scenario = { name: 'storage-rate-16000', description: 'd', memory: '16MiB', workload: 'pattern', maxDowntime: '300ms', storage: { disk: '256MiB', diskRate: 16000, diskWss: '16MiB', modes: ['mirror', 'iterate'], moves: 2, filled: false } } as unknown as Scenario;
    const run: StorageRun = {
      scenario: scenario.name, repeat: 1, link: 'one host', diskBytes: 256 * 1024 ** 2, diskWssBytes: 16 * 1024 ** 2, filled: false, maxDowntimeMs: 300, maxBandwidthBytesPerSec: 0,
      diskRate: 16000, achievedDiskRateBefore: 12000,
      moves: [move('mirror', 1, 4), move('mirror', 2, 6), move('iterate', 1, 40, { stopReason: 'max-rounds' }), move('iterate', 2, 50)],
      diskCheck: { checked: true, ok: true, blocksChecked: 65536, writesReplayed: 9000 },
    };
    const summaries = summarizeStorage(scenario, [run]);
    expect(summaries.map((s) => [s.mode, s.moves, s.moved, s.pauseMs.median, s.diskCheck])).toEqual([['mirror', 2, 2, 5, 'matched'], ['iterate', 2, 2, 45, 'matched']]);
    expect(summaries[1]!.stopReasons).toEqual({ 'max-rounds': 1, 'few-dirty-pages': 1 });
    const targets = checkStorageTargets(summaries, { dir: '/tmp', bytes: 1, bytesPerSec: 1e9, samplesBytesPerSec: [1e9] });
    expect(targets.map((target) => target.met)).toEqual([true, true]);

    const csv = toCsv([], [], [run]).trim().split('\n');
    expect(csv).toHaveLength(5);
    const header = csv[0]!.split(',');
    const third = Object.fromEntries(csv[3]!.split(',').map((cell, i) => [header[i], cell]));
    expect(third).toMatchObject({ scenario: 'storage-rate-16000', storage_mode: 'iterate', move: '1', stop_reason: 'max-rounds', paused_blocks: '300', disk_check: 'true' });

    const markdown = toMarkdown({
      environment: { date: 'd', host: 'h', cores: 2, cpuModel: 'c', memoryBytes: 1, os: 'o', node: 'n', ferry: 'f', libraries: {}, link: 'one host' },
      command: 'ferry bench', repeat: 1, baselines: {}, summaries: [], targets: [], runs: [], services: [], serviceSummaries: [],
      rawDisk: { dir: '/tmp', bytes: 1024 ** 3, bytesPerSec: 1e9, samplesBytesPerSec: [1e9] }, storage: [run], storageSummaries: summaries, storageTargets: targets, charts: [],
    } satisfies BenchResults);
    expect(markdown).toContain('## Storage');
    expect(markdown).toContain('**1000 MB/s**');
    expect(markdown).toContain('| storage-rate-16000 | iterate |');
    expect(markdown).toContain('### Storage targets');
  });
});

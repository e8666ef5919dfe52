/**
 * `ferry migrate` options, as typed, into the migration options the protocol carries. Their limits (a round cap of
 * 1 to 1000, a downtime above zero, the verify modes) are those of `migrationOptionsSchema` in shared/protocol.ts.
 */
import { DEFAULT_XBZRLE_CACHE_BYTES, MAX_MEMORY_BYTES, PAGE_SIZE, STOP_RULES } from '../shared/constants.js';
import { ErrorCode, FerryError } from '../shared/errors.js';
import { migrationOptionsSchema, type MigrationOptions, type PostcopyOption } from '../shared/protocol.js';
import { parseCount, parseDuration, parseRate, parseSize } from '../shared/units.js';
import { checkOptions, typedSize } from './option-check.js';

export interface TypedMigrationOptions {
  maxDowntime: string;
  maxBandwidth?: string | undefined;
  maxRounds: string;
  verify: string;
  autoConverge?: boolean | undefined;
  copyStorage?: boolean | undefined;
  storageMode?: string | undefined;
  pageStream?: string | undefined;
  compress?: string | undefined;
  xbzrleCache?: string | undefined;
  /** `--postcopy` alone (true: after the first round), or `--postcopy auto`. */
  postcopy?: boolean | string | undefined;
  postcopyAfter?: string | undefined;
}

/** `--postcopy [auto]` and `--postcopy-after N` into the protocol's post-copy option. */
function postcopyOption(raw: TypedMigrationOptions): PostcopyOption | undefined {
  if (raw.postcopy !== undefined && raw.postcopy !== false && raw.postcopyAfter !== undefined) {
    throw new FerryError(ErrorCode.BAD_INPUT, '--postcopy and --postcopy-after say the same thing twice', 'give one: --postcopy (after the first round), --postcopy auto, or --postcopy-after N');
  }
  if (raw.postcopyAfter !== undefined) return { mode: 'after', afterRounds: parseCount(raw.postcopyAfter, '--postcopy-after') };
  if (raw.postcopy === undefined || raw.postcopy === false) return undefined;
  if (raw.postcopy === true) return { mode: 'after', afterRounds: 1 };
  if (raw.postcopy === 'auto') return { mode: 'auto' };
  throw new FerryError(ErrorCode.BAD_INPUT, `--postcopy ${raw.postcopy} is not a post-copy mode`, '--postcopy alone switches after the first round; --postcopy auto only when pre-copy would not converge; --postcopy-after N after N rounds');
}

export function migrationOptions(raw: TypedMigrationOptions): MigrationOptions {
  const postcopy = postcopyOption(raw);
  if (raw.xbzrleCache !== undefined && raw.compress !== 'xbzrle') {
    throw new FerryError(ErrorCode.BAD_INPUT, `--xbzrle-cache ${raw.xbzrleCache} without --compress xbzrle: there is no cache to size`, 'add --compress xbzrle, or leave out --xbzrle-cache');
  }
  return checkOptions(migrationOptionsSchema, {
    maxDowntimeMs: parseDuration(raw.maxDowntime),
    maxBandwidthBytesPerSec: raw.maxBandwidth ? parseRate(raw.maxBandwidth) : 0,
    maxRounds: parseCount(raw.maxRounds, '--max-rounds'),
    verify: raw.verify,
    autoConverge: raw.autoConverge ?? false,
    ...(raw.copyStorage ? { copyStorage: true, storageMode: raw.storageMode ?? 'mirror' } : {}),
    ...(raw.pageStream !== undefined && raw.pageStream !== 'tcp' ? { pageStream: raw.pageStream } : {}),
    ...(raw.compress !== undefined ? { compress: raw.compress } : {}),
    ...(raw.xbzrleCache !== undefined ? { xbzrleCacheBytes: parseSize(raw.xbzrleCache) } : {}),
    ...(postcopy ? { postcopy } : {}),
  }, {
    maxDowntimeMs: { option: '--max-downtime', typed: raw.maxDowntime, unit: 'ms', hint: 'e.g. --max-downtime 300ms' },
    maxBandwidthBytesPerSec: { option: '--max-bandwidth', typed: raw.maxBandwidth ?? '', unit: 'bytes', hint: 'e.g. --max-bandwidth 1GiB/s, or leave it out for no cap' },
    maxRounds: { option: '--max-rounds', typed: raw.maxRounds, unit: 'count', hint: `the default is Xen's ${STOP_RULES.maxRounds}` },
    verify: { option: '--verify', typed: raw.verify, unit: 'text', hint: 'pages compares page-hash digests; full also hashes all memory' },
    pageStream: { option: '--page-stream', typed: raw.pageStream ?? '', unit: 'text', hint: 'tcp (a connection of their own, read into guest memory: the default) or ws (on the peer WebSocket)' },
    compress: { option: '--compress', typed: raw.compress ?? '', unit: 'text', hint: 'xbzrle (pages sent again go as deltas against the copy sent before), or leave it out to send every page whole' },
    xbzrleCacheBytes: { option: '--xbzrle-cache', typed: raw.xbzrleCache ?? '', unit: 'bytes', hint: `give ${typedSize(PAGE_SIZE)} to ${typedSize(MAX_MEMORY_BYTES / 2)}, e.g. the default ${typedSize(DEFAULT_XBZRLE_CACHE_BYTES)}` },
    'postcopy.afterRounds': { option: '--postcopy-after', typed: raw.postcopyAfter ?? '', unit: 'count', hint: 'the number of pre-copy rounds before the switch, 0 to 1000' },
    storageMode: { option: '--storage-mode', typed: raw.storageMode ?? '', unit: 'text', hint: 'mirror (the default: converges at any write rate below the copy\'s) or iterate (dirty-block rounds)' },
  });
}

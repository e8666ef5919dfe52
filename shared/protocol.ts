/**
 * Every control message ferry speaks, as runtime schemas that are also the source of the TypeScript types.
 *
 * Two kinds of connection carry them (docs/PROTOCOL.md draws both):
 * - control: the coordinator CLI to an agent, path `/control`;
 * - peer: a migration's source agent to its destination agent, path `/peer`. Page data travels here too, in
 *   binary frames described in `page-frame.ts`.
 *
 * Envelope: a request `{t:"req", id, op, body}` gets exactly one reply `{t:"res", id, ok, body | error}` and, before
 * it, any number of events `{t:"evt", id, body}` (migration progress, dump chunks announced).
 */
import { z } from 'zod';
import { LINK_MEASURE, MAX_DISK_BYTES, MAX_MEMORY_BYTES, MIN_MEMORY_BYTES, PAGE_SIZE } from './constants.js';
import { cpuModelRequestSchema, hostCpuSchema, vmCpuModelSchema } from './cpu.js';
import { ErrorCode } from './errors.js';
import { TRACE_LIMITS, replayTraceSchema, traceSampleSchema } from './trace.js';

export const vmNameSchema = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._-]{0,62}$/i, 'a VM name is 1-63 letters, digits, dots, dashes or underscores');

export const hostNameSchema = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._-]{0,62}$/i, 'a host name is 1-63 letters, digits, dots, dashes or underscores');

/**
 * A migration's id: a UUID the coordinator draws. The destination names its staging folder and its activation log
 * entry after it, so nothing else may pass (a `../` here once reached outside the datastore).
 */
export const migrationIdSchema = z.uuid('a migration id is a UUID');

/** Where an agent listens: a ws:// or wss:// URL without spaces. Agents dial these, so nothing else passes. */
export const agentUrlSchema = z.string().max(2048).regex(/^wss?:\/\/[^\s/]+(\/[^\s]*)?$/, 'an agent URL looks like ws://127.0.0.1:7001');

/**
 * The files of a VM's datastore folder that may travel between agents, by name: one schema for a cold migration's
 * chunks and its manifest, so a name from the network can never be a path (no `/`, no `..`, no NUL).
 */
export const vmFileNameSchema = z.string().regex(/^(config\.json|nvram\.bin|vm\.log|cidata\.json|suspend\.json|suspend\.bin|disk\d{1,3}\.img)$/, 'not a file of a VM folder');

/** An image's name: it names a folder of each agent's datastore (images/<name>/), so it is held as tight as a VM's. */
export const imageNameSchema = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._-]{0,62}$/i, 'an image name is 1-63 letters, digits, dots, dashes or underscores');

/** An image transfer's id: a UUID its sender draws; it names the receiver's staging folder. */
export const transferIdSchema = z.uuid('a transfer id is a UUID');

/** The identity of a shared storage (datastore.ts makes it): 32 hex digits. */
export const sharedStorageIdSchema = z.string().regex(/^[0-9a-f]{32}$/, 'a shared storage id is 32 hex digits');

/** A whole-file or chunk digest as it travels: xxh64 in 16 hex digits. */
export const xxh64HexSchema = z.string().regex(/^[0-9a-f]{16}$/, 'an xxh64 digest is 16 hex digits');

export const workloadKindSchema = z.enum(['idle', 'pattern', 'hotset', 'sequential', 'kv', 'counters', 'replay']);
export type WorkloadKind = z.infer<typeof workloadKindSchema>;

export const workloadSpecSchema = z.object({
  kind: workloadKindSchema,
  /** Page writes per second. */
  rate: z.number().int().min(0).max(10_000_000),
  /** Pages the workload writes into: the working set, from page 0. */
  wssPages: z.number().int().min(1),
  /** xorshift32 seed; never 0. */
  seed: z.number().int().min(1).max(0xffffffff),
  /** hotset only: the pages at the start of the working set that take most writes. */
  hotPages: z.number().int().min(1).optional(),
  /** pattern only: block writes per second to the VM's first disk (DESIGN.md, "Disk writes"); 0 or absent: none. */
  diskRate: z.number().int().min(0).max(1_000_000).optional(),
  /** pattern only: 4 KiB blocks of the first disk, from block 0, that disk writes go to; absent: the whole disk. */
  diskWssBlocks: z.number().int().min(1).optional(),
  /**
   * Memory starts filled, not zero: page p as pattern write 0 leaves it (shared/workloads.ts), so no page is zero
   * and a migration moves every byte. Not for kv, whose table starts empty. A counters guest always starts filled.
   */
  filled: z.boolean().optional(),
  /**
   * replay only: the dirty-page trace it reproduces (shared/trace.ts), looped; its pages must lie inside the VM's
   * memory (the agent checks). `rate` is then the trace's mean rate, for display: the trace's own timing paces it.
   */
  trace: replayTraceSchema.optional(),
});
export type WorkloadSpec = z.infer<typeof workloadSpecSchema>;

export const memoryBytesSchema = z
  .number()
  .int()
  .min(MIN_MEMORY_BYTES)
  .max(MAX_MEMORY_BYTES)
  .refine((n) => n % PAGE_SIZE === 0, 'memory must be a whole number of 4 KiB pages');

/**
 * The vCPU's registers: the workload state (`x`, `n`), the disk writes' state (`y`, `m`: DESIGN.md, "Disk writes")
 * and the guest clock's last heartbeat. `y` and `m` came later: a VM saved without them loads with 0 and 0, and
 * `y` = 0 (which xorshift32 never reaches) stands for the start value `seed XOR 0xA5A5A5A5` (vm.ts).
 */
export const registersSchema = z.object({
  x: z.number().int().min(0).max(0xffffffff),
  n: z.number().int().min(0),
  y: z.number().int().min(0).max(0xffffffff).default(0),
  m: z.number().int().min(0).default(0),
  heartbeatMs: z.number(),
});
export type Registers = z.infer<typeof registersSchema>;

/**
 * running, paused: the vCPU runs or is paused, memory in the agent. defined: powered off, files only. suspended:
 * powered off with its memory and registers saved in the datastore. migrating-out (pre-copy), handing-over (the
 * source with its vCPU paused, from stop-and-copy until the destination confirms; after a lost commit
 * acknowledgement, until settled) and migrating-in (the destination's reservation): a migration's states.
 * postcopy-out: a post-copy's source after the switch: the VM runs at the destination, and this paused copy holds the
 * pages it still lacks until they are all sent (if the link broke, until `ferry migrate NAME --resume` sends them).
 * lost: a post-copy migration whose other side crashed (its memory is split and cannot be put together again, as in
 * QEMU): the copy is kept, never run, until destroyed.
 */
export const vmStateSchema = z.enum(['running', 'paused', 'defined', 'suspended', 'migrating-out', 'handing-over', 'migrating-in', 'postcopy-out', 'lost']);
export type VmState = z.infer<typeof vmStateSchema>;

export const vmSummarySchema = z.object({
  name: z.string(),
  host: z.string(),
  state: vmStateSchema,
  memoryBytes: z.number(),
  /** Ownership epoch: 1 at creation, one more with each committed migration. A copy with a lower epoch is stale. */
  epoch: z.number(),
  /** Its IP address, when it has a network configuration (so that provisioning never hands one out twice). */
  ip: z.string().optional(),
});
export type VmSummary = z.infer<typeof vmSummarySchema>;

/** A VM's network configuration: its address, prefix length, gateway and MAC. */
export const networkSchema = z.object({
  ip: z.string().regex(/^\d{1,3}(\.\d{1,3}){3}$/),
  prefix: z.number().int().min(0).max(32),
  gateway: z.string(),
  mac: z.string(),
});
export type Network = z.infer<typeof networkSchema>;

/** User data a config drive may carry: 16 KiB, EC2's limit for user data. */
export const MAX_USER_DATA_BYTES = 16 * 1024;

/**
 * A VM's config drive, `cidata.json` in its folder: cloud-init's NoCloud seed (meta-data, network-config, user-data)
 * as one flat file, so that cold and live migration carry it like the VM's other small files. The guest reads it
 * when it boots (agent/vm/vcpu-worker.ts).
 */
export const configDriveSchema = z.object({
  'meta-data': z.object({
    'instance-id': z.string().regex(/^[A-Za-z0-9._-]{1,64}$/),
    'local-hostname': vmNameSchema,
  }),
  'network-config': z.object({
    address: z.string().regex(/^\d{1,3}(\.\d{1,3}){3}$/),
    prefix: z.number().int().min(0).max(32),
    gateway: z.string(),
    mac: z.string(),
  }).nullable(),
  'user-data': z.string().max(MAX_USER_DATA_BYTES),
});
export type ConfigDrive = z.infer<typeof configDriveSchema>;

/** What a running guest took from its config drive at boot. */
export const guestFactsSchema = z.object({ hostname: z.string().max(255) });
export type GuestFacts = z.infer<typeof guestFactsSchema>;

/** How an image became a VM's disk: a reflink (shared blocks, copy on write) or a sparse copy (zeros skipped). */
export const cloneMethodSchema = z.enum(['reflink', 'sparse-copy']);
export type CloneMethod = z.infer<typeof cloneMethodSchema>;

/** Where an image came from: a file imported through the coordinator, or a powered-off VM's first disk. */
export const imageSourceSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('import'), file: z.string().max(4096) }).strict(),
  z.object({ kind: z.literal('capture'), vm: vmNameSchema, host: hostNameSchema }).strict(),
]);

/** An image's manifest.json: what it is, and the digest every copy of it is checked against. */
export const imageManifestSchema = z.object({
  name: imageNameSchema,
  bytes: z.number().int().min(1).max(MAX_DISK_BYTES),
  xxh64: xxh64HexSchema,
  /** What it holds, in words: operating system, drivers, middleware, applications. */
  holds: z.string().max(4096),
  source: imageSourceSchema,
  createdAt: z.string().max(64),
}).strict();
export type ImageManifest = z.infer<typeof imageManifestSchema>;

/** The shape of a guest's dirty curve U(t) (shared/dirty-model.ts): random writes over a working set, or a scanner. */
export const dirtyModelSchema = z.enum(['random', 'sequential']);
export type DirtyModel = z.infer<typeof dirtyModelSchema>;

/**
 * What the agent measures of a running VM (agent/vm-stats/sampler.ts): the vCPU's busy fraction, and its dirty rate
 * and writable working set fitted to the distinct pages it dirtied within each checkpoint of its last sampling window
 * (`curve`, QEMU's `calc-dirty-rate` in dirty-bitmap mode).
 */
export const vmStatsSchema = z.object({
  /** Percent of the last sampling interval the vCPU spent outside its waits. */
  cpuPercent: z.number().min(0),
  /** Page writes per second, repeats included: the rate r of the fitted curve. */
  dirtyPagesPerSec: z.number().min(0),
  /** Writable working set, pages: W of the fitted curve (the whole memory when the window never saw it level off). */
  wssPages: z.number().min(0),
  model: dirtyModelSchema,
  /** The window's checkpoints: `pages` distinct pages dirty `ms` after the clear. */
  curve: z.array(z.object({ ms: z.number(), pages: z.number() })).max(32),
  /** How long the window ran. */
  windowMs: z.number(),
  /** When the window ended (ISO 8601). */
  sampledAt: z.string().max(64),
});
export type VmStats = z.infer<typeof vmStatsSchema>;

export const vmInfoSchema = vmSummarySchema.extend({
  workload: workloadSpecSchema,
  network: networkSchema.nullable().optional(),
  /** Where its guest service answers ("IP:PORT", DESIGN.md "Guest service protocol"), when it serves one on its host. */
  address: z.string().nullable().optional(),
  /** When the VM is released (destroyed with its files), if it was provisioned with a lease. */
  leaseUntil: z.string().nullable().optional(),
  /** Disk images: in the VM's datastore folder, or on shared storage (`shared`). */
  disks: z.array(z.object({ file: z.string(), sizeBytes: z.number(), shared: z.boolean().optional() })).optional(),
  /** The last lines of the VM's log (vm.log): what happened to it. */
  log: z.array(z.string()).optional(),
  /** Its registers: x and n (memory writes), y and m (disk writes; absent from agents that predate them). */
  cpu: z.object({ x: z.number(), n: z.number(), y: z.number().optional(), m: z.number().optional() }),
  /** Its CPU model and the flags its guest was started with (shared/cpu.ts); `cpu` above is its registers. */
  cpuModel: vmCpuModelSchema,
  /** Gap in the guest's heartbeat at its last resume (a pause, or a migration's activation). */
  lastBlackoutMs: z.number(),
  createdAt: z.string(),
  /** The image its disk0 was cloned from, how, and how long the clone took. */
  image: z.object({ name: imageNameSchema, xxh64: xxh64HexSchema, cloneMethod: cloneMethodSchema, cloneMs: z.number() }).optional(),
  /** Its config drive (cidata.json), when it was provisioned with one. */
  configDrive: configDriveSchema.optional(),
  /** What the running guest took from its config drive at boot. */
  guest: guestFactsSchema.optional(),
  /**
   * A post-copy under way: on the destination (`role: destination`, the VM runs here and `missingPages` are still at
   * `peer`) or on the source (`postcopy-out`, holding them). `linked`: the page push is connected.
   */
  postcopy: z.object({
    role: z.enum(['source', 'destination']), migrationId: z.string(), peer: z.string(), missingPages: z.number(), linked: z.boolean(),
  }).optional(),
  /** A running VM's measured load, once its first sampling window has ended. */
  stats: vmStatsSchema.optional(),
});
export type VmInfo = z.infer<typeof vmInfoSchema>;

/** How loaded a host is: its agent's CPU (vCPUs included) over the last few seconds, as a share of all the machine's cores. */
export const hostLoadSchema = z.object({
  cpuPercent: z.number(),
  /** Guest memory held, as a share of --capacity. */
  memoryPercent: z.number(),
  /** The machine's cores, which cpuPercent is a share of. */
  cores: z.number().int(),
  vms: z.number().int(),
  /** The agent's event loop: mean delay over the last window. */
  eventLoopLagMs: z.number(),
  /** The agent process's resident memory (its VMs' guest memory included), bytes. */
  residentBytes: z.number().optional(),
});
export type HostLoad = z.infer<typeof hostLoadSchema>;

/** Degraded when an operator said so, or the agent sees something wrong with itself; each reason with its source. */
export const hostHealthSchema = z.object({
  state: z.enum(['healthy', 'degraded']),
  reasons: z.array(z.object({ source: z.enum(['operator', 'datastore', 'event-loop']), reason: z.string(), since: z.string() })),
});
export type HostHealth = z.infer<typeof hostHealthSchema>;

export const hostInfoSchema = z.object({
  name: z.string(),
  version: z.number(),
  capacityBytes: z.number(),
  usedBytes: z.number(),
  freeBytes: z.number(),
  vms: z.array(vmSummarySchema),
  /** Free space where the agent's datastore lives. */
  diskFreeBytes: z.number(),
  /** The identity of the shared storage this agent mounts (--shared-storage), if any. */
  sharedStorageId: z.string().optional(),
  /** CPU time the agent process has used so far, all its threads (vCPUs included): for benchmarks. */
  cpu: z.object({ userMs: z.number(), systemMs: z.number() }),
  /** The host's CPU: vendor, model, the flags it offers guests (less `--cpu-mask`), their x86-64 level. */
  hostCpu: hostCpuSchema,
  /** How the host serves VMs' addresses: `loopback` (127.0.0.0/8) or `namespaces` (real layer 2, on `device`). */
  addressMode: z.object({ name: z.enum(['loopback', 'namespaces']), device: z.string().optional() }).optional(),
  load: hostLoadSchema.optional(),
  /** In maintenance (`ferry host drain`): takes no new VMs or incoming migrations. Null when not. */
  maintenance: z.object({ since: z.string(), by: z.string().optional() }).nullable().optional(),
  health: hostHealthSchema.optional(),
});
export type HostInfo = z.infer<typeof hostInfoSchema>;

export const verifyModeSchema = z.enum(['pages', 'full']);
export type VerifyMode = z.infer<typeof verifyModeSchema>;

export const postcopyOptionSchema = z.discriminatedUnion('mode', [
  z.object({ mode: z.literal('after'), afterRounds: z.number().int().min(0).max(1000) }).strict(),
  // `forecastConverges`: what the coordinator's forecast said of pre-copy alone, when it made one; false switches after
  // round 1, as the rounds would only later (stop-rules.ts `switchToPostcopy`).
  z.object({ mode: z.literal('auto'), forecastConverges: z.boolean().optional() }).strict(),
]);
export type PostcopyOption = z.infer<typeof postcopyOptionSchema>;

export const migrationOptionsSchema = z.object({
  maxDowntimeMs: z.number().positive(),
  /** 0 means unlimited. */
  maxBandwidthBytesPerSec: z.number().min(0),
  maxRounds: z.number().int().min(1).max(1000),
  verify: verifyModeSchema,
  /** Throttle the vCPU while its dirty rate outruns the link (QEMU's auto-converge). */
  autoConverge: z.boolean().default(false),
  /** Copy the VM's local disks too (shared-nothing live migration), in this mode. */
  copyStorage: z.boolean().optional(),
  /** Default: mirror. */
  storageMode: z.enum(['mirror', 'iterate']).optional(),
  /**
   * How pages travel (shared/page-stream.ts): `tcp`, a connection of their own read straight into guest memory, the
   * default, falling back to `ws` when it cannot be opened; `ws`, binary messages on the peer WebSocket.
   */
  pageStream: z.enum(['tcp', 'ws']).optional(),
  /**
   * `xbzrle`: pages sent again go as XBZRLE deltas against the copy sent before, where that is smaller (shared/xbzrle.ts,
   * agent/migration/xbzrle-encoder.ts). Absent: every page goes whole.
   */
  compress: z.enum(['xbzrle']).optional(),
  /**
   * With `compress: 'xbzrle'`: the source's cache of pages as last sent, in bytes (default 64 MiB, QEMU's; no more than
   * the guest is used). At most 2 GiB: the cache is wasm memory, a page more than its slots, and that tops out at 4 GiB.
   */
  xbzrleCacheBytes: z.number().int().min(PAGE_SIZE).max(MAX_MEMORY_BYTES / 2).optional(),
  /**
   * Post-copy (agent/migration/postcopy-source.ts): `after` switches once `afterRounds` pre-copy rounds are done (0:
   * before any), `auto` only when pre-copy will not converge within the limits. After the switch the VM runs at the
   * destination while its last pages still come from the source: a crash of either side then loses the VM.
   */
  postcopy: postcopyOptionSchema.optional(),
});
export type MigrationOptions = z.infer<typeof migrationOptionsSchema>;

export const stopReasonSchema = z.enum(['few-dirty-pages', 'converged-within-downtime', 'max-rounds', 'max-bytes']);
export type StopReason = z.infer<typeof stopReasonSchema>;

export const storageModeSchema = z.enum(['mirror', 'iterate']);

/** One disk's copy (agent/storage/disk-copy.ts `DiskCopyReport`). */
export const diskCopyReportSchema = z.object({
  file: vmFileNameSchema,
  mode: storageModeSchema,
  bytes: z.number(),
  bytesSent: z.number(),
  zeroBlocksSkipped: z.number(),
  mirroredWrites: z.number(),
  rounds: z.number(),
  pausedBlocks: z.number(),
  stopReason: stopReasonSchema.optional(),
  readyAfterMs: z.number(),
  throughputBytesPerSec: z.number(),
  imageBytesPerSec: z.number(),
});


export const roundReportSchema = z.object({
  round: z.number(),
  pages: z.number(),
  bytes: z.number(),
  durationMs: z.number(),
  dirtyPagesAfter: z.number(),
  throughputBytesPerSec: z.number(),
  /** Pages of the round that were all zeros and went as a flag, with no bytes (page-frame.ts). */
  zeroPages: z.number().optional(),
});
export type RoundReport = z.infer<typeof roundReportSchema>;

export const stageReportSchema = z.object({
  stage: z.number(),
  name: z.string(),
  startMs: z.number(),
  endMs: z.number(),
});
export type StageReport = z.infer<typeof stageReportSchema>;

export const verificationSchema = z.object({
  mode: verifyModeSchema,
  sourceDigest: z.string(),
  destDigest: z.string(),
  match: z.boolean(),
  /** `--verify full` only: digests of all guest memory on both sides. */
  sourceMemoryDigest: z.string().optional(),
  destMemoryDigest: z.string().optional(),
  /** Pages whose bytes on arrival did not match the hash they travelled with (resent later if dirtied again). */
  pageMismatches: z.number(),
});
export type Verification = z.infer<typeof verificationSchema>;

export const errorPayloadSchema = z.object({
  code: z.enum(Object.values(ErrorCode) as [ErrorCode, ...ErrorCode[]]),
  message: z.string(),
  hint: z.string().optional(),
});

/** One moment of the switchover: what happened, in ms from its side's anchor (see downtimeTimelineSchema). */
export const timelineMarkSchema = z.object({ event: z.string(), atMs: z.number() });
export type TimelineMark = z.infer<typeof timelineMarkSchema>;

/** A garbage collection that overlapped the switchover, on one side's clock and anchor (perf_hooks 'gc' entries). */
export const gcPauseSchema = z.object({ kind: z.string(), startMs: z.number(), durationMs: z.number() });
export type GcPause = z.infer<typeof gcPauseSchema>;

/**
 * Where the downtime goes: each side's marks from the pause to the guest running at the destination. Two clocks:
 * the source's marks are ms since it asked the vCPU to pause; the destination's are ms since it received the
 * verify request, on its own clock (the two are never subtracted; the source's `verify asked` is the nearest mark).
 */
export const downtimeTimelineSchema = z.object({
  source: z.array(timelineMarkSchema),
  destination: z.array(timelineMarkSchema),
  sourceGc: z.array(gcPauseSchema).optional(),
  destinationGc: z.array(gcPauseSchema).optional(),
  /**
   * Each anchor on its host's wall clock (performance.timeOrigin + the anchor, ms since 1970): the destination's
   * marks line up with the source's only as well as the two hosts' clocks agree (exactly, on one machine).
   */
  sourceAnchorEpochMs: z.number().optional(),
  destinationAnchorEpochMs: z.number().optional(),
});
export type DowntimeTimeline = z.infer<typeof downtimeTimelineSchema>;

/** What the source agent knows of a migration when it ends; the coordinator adds its own timings. */
/** Stall times of a post-copy's page faults on the destination's vCPU, in ms. */
export const stallSummarySchema = z.object({ p50: z.number(), p99: z.number(), max: z.number(), totalMs: z.number() });

/** A post-copy's figures (agent/migration/postcopy-source.ts): from the switch until every page is at the destination. */
export const postcopyReportSchema = z.object({
  /** Pre-copy rounds done before the switch. */
  afterRounds: z.number(),
  /**
   * Why it switched: `asked` (--postcopy, --postcopy-after); with --postcopy auto, `forecast` (the forecast made before
   * the migration said pre-copy would not converge: after round 1) or `not converging` (the rounds said so).
   */
  reason: z.enum(['asked', 'forecast', 'not converging']),
  /** Pages the destination lacked at the switch. */
  missingPages: z.number(),
  /** Pages sent by the background push, and on demand for a fault (ahead of the push, on the peer WebSocket). */
  pushedPages: z.number(),
  requestedPages: z.number(),
  /** Faults the destination's vCPU took on a missing page, and how long each held it. */
  faults: z.number(),
  stallMs: stallSummarySchema.optional(),
  /** Pages that arrived not matching their hash and were asked for again. */
  refetched: z.number(),
  /** From the switch until the destination held every page (over every resume), ms. */
  durationMs: z.number(),
  /** Times the push was taken up again after the link broke (`ferry migrate NAME --resume`). */
  resumes: z.number(),
  /** Whether every page is at the destination: false when the link broke first (the outcome is then `postcopy-paused`). */
  complete: z.boolean(),
  /** Page bytes sent after the switch. */
  bytesSent: z.number(),
});
export type PostcopyReport = z.infer<typeof postcopyReportSchema>;

export const sourceReportSchema = z.object({
  /**
   * postcopy-paused: the post-copy's link broke after the switch; the VM runs at the destination and waits for the
   * pages still here (`ferry migrate NAME --resume`).
   */
  outcome: z.enum(['committed', 'rolled-back', 'failed', 'postcopy-paused']),
  /** The source passed its commit point: the destination's copy is the VM, even if its activation went unconfirmed. */
  committed: z.boolean(),
  error: errorPayloadSchema.optional(),
  stopReason: stopReasonSchema.optional(),
  rounds: z.array(roundReportSchema),
  /** The last copy, made with the vCPU paused. */
  stopAndCopy: roundReportSchema.optional(),
  stages: z.array(stageReportSchema),
  downtimeMs: z.number().optional(),
  guestBlackoutMs: z.number().optional(),
  expectedDowntimeMs: z.number().optional(),
  bytesSent: z.number(),
  /**
   * How the pages travelled: `tcp` (a page stream of their own, shared/page-stream.ts) or `ws` (on the peer
   * WebSocket), and why not `tcp` when it was asked for and could not be opened.
   */
  pageStream: z.object({ kind: z.enum(['tcp', 'ws']), fallback: z.string().optional() }).optional(),
  verification: verificationSchema.optional(),
  registers: registersSchema.optional(),
  /** The switchover, mark by mark on both sides (`ferry migrate --trace` prints it). */
  timeline: downtimeTimelineSchema.optional(),
  /** Auto-converge: the highest throttle applied, percent of the vCPU's rate held back (0: none). */
  throttlePct: z.number(),
  /** The VM's address moving with it (agent/migration/net-handover.ts), when it serves one. */
  network: z.object({
    address: z.string(),
    /** When the destination started serving the address, in ms from the pause. */
    servingAfterPauseMs: z.number().optional(),
    /** Datagrams that reached the source after the pause and were forwarded to the destination. */
    forwarded: z.number(),
    /** Gratuitous ARPs the destination scheduled for the address (namespaces mode; 0 on loopback). */
    announcements: z.number().optional(),
  }).optional(),
  /** `--copy-storage`: the disks copied before memory's pre-copy, and their verification at the commit. */
  /**
   * `--compress xbzrle`: the cache's size, the pages sent again that it held (hits) and did not (misses), those that
   * went as deltas, the bytes that saved (a whole page less the delta and its length, for each), and the CPU time the
   * source spent packing frames against the cache; `decodeMs`, the destination's time applying deltas.
   */
  compression: z.object({
    kind: z.enum(['xbzrle']),
    cacheBytes: z.number(),
    cacheHits: z.number(),
    cacheMisses: z.number(),
    deltaPages: z.number(),
    bytesSaved: z.number(),
    encodeMs: z.number(),
    decodeMs: z.number().optional(),
  }).optional(),
  storage: z.object({
    mode: z.enum(['mirror', 'iterate']),
    /** When the disks were ready (ms from the migration's start): memory's pre-copy began then. */
    readyAtMs: z.number(),
    disks: z.array(diskCopyReportSchema),
    verification: z.array(z.object({ file: z.string(), sourceDigest: z.string(), destDigest: z.string(), sourceImageDigest: z.string().optional(), destImageDigest: z.string().optional(), match: z.boolean() })),
  }).optional(),
  /** Post-copy, when the migration switched to it. */
  postcopy: postcopyReportSchema.optional(),
});
export type SourceReport = z.infer<typeof sourceReportSchema>;

/** Progress of a migration, streamed to the coordinator as events of the `migrate.start` request. */
export const migrationEventSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('stage'), stage: z.number(), name: z.string(), atMs: z.number() }),
  z.object({
    kind: z.literal('progress'),
    round: z.number(),
    pagesSent: z.number(),
    pagesInRound: z.number(),
    bytesSent: z.number(),
    rateBytesPerSec: z.number(),
    dirtyPagesPerSec: z.number(),
    expectedDowntimeMs: z.number(),
  }),
  z.object({ kind: z.literal('round'), report: roundReportSchema }),
  z.object({ kind: z.literal('throttle'), round: z.number(), pct: z.number() }),
  /** Post-copy: the switch, the push's progress, a broken link, a resume, the end. */
  z.object({
    kind: z.literal('postcopy'), phase: z.enum(['switched', 'progress', 'paused', 'resumed', 'complete']),
    pagesLeft: z.number(), pushedPages: z.number(), requestedPages: z.number(), faults: z.number(),
  }),
  z.object({ kind: z.literal('storage'), file: z.string(), phase: z.enum(['bulk', 'round', 'ready', 'paused']), round: z.number(), blocksDone: z.number(), blocksTotal: z.number(), bytesSent: z.number() }),
]);
export type MigrationEvent = z.infer<typeof migrationEventSchema>;

/**
 * What an agent pushes to a watcher (`events.watch`, `ferry ui`): its host and VMs now and then, each line its VMs'
 * logs gain, its outgoing live migrations' events as `migrate.start` sends them, how each ended, and heat-map frames
 * of one VM's memory (agent/vm/heat-map.ts) when asked for.
 */
export const watchEventSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('host'), info: hostInfoSchema, vms: z.array(vmInfoSchema) }),
  z.object({ kind: z.literal('log'), name: z.string(), line: z.string() }),
  z.object({ kind: z.literal('migration'), name: z.string(), migrationId: z.string(), to: z.string(), event: migrationEventSchema }),
  z.object({ kind: z.literal('migration-end'), name: z.string(), migrationId: z.string(), to: z.string(), report: sourceReportSchema.optional(), error: errorPayloadSchema.optional() }),
  z.object({
    kind: z.literal('heat'), name: z.string(), pageCount: z.number(), pagesPerCell: z.number(), recency: z.instanceof(Uint8Array),
    current: z.instanceof(Uint8Array).nullable(), writes: z.number(), writesPerSec: z.number(), migrating: z.boolean(),
  }),
]);
export type WatchEvent = z.infer<typeof watchEventSchema>;

const empty = z.object({}).strict();
const byName = z.object({ name: vmNameSchema }).strict();
const destinationSchema = z.object({ name: hostNameSchema, url: agentUrlSchema }).strict();

/**
 * Receiving an image in checked chunks (shared/file-chunks.ts): the same three requests on /control (an import from
 * the coordinator) and on /peer (one agent sending another an image it holds).
 */
export const imageReceiveOps = {
  /**
   * Stages an image (everything of its manifest but the digest, which comes at the end). `xxh64`, when the sender
   * knows it already (an agent sending an image it holds), lets a receiver that holds an image of that name with that
   * digest accept the transfer rather than refuse it (its copy is dropped at the finish).
   */
  'image.begin': [z.object({ transferId: transferIdSchema, image: imageManifestSchema.omit({ xxh64: true }), xxh64: xxh64HexSchema.optional() }).strict(), empty],
  /** One chunk of the image's disk, at most 1 MiB, with its xxh64. Chunks of zeros are not sent: they become holes. */
  'image.chunk': [
    z.object({ transferId: transferIdSchema, offset: z.number().int().min(0).max(MAX_DISK_BYTES), data: z.instanceof(Uint8Array), xxh64: xxh64HexSchema }).strict(),
    empty,
  ],
  /** Every chunk sent: size, sync, check the whole-file digest, and register the image with one rename. */
  'image.finish': [z.object({ transferId: transferIdSchema, xxh64: xxh64HexSchema }).strict(), z.object({ image: imageManifestSchema })],
} as const;

/**
 * Requests an agent answers on its control connection: op -> [request body, reply body].
 */
export const storageMoveReportSchema = z.object({
  vm: z.string(),
  host: z.string(),
  from: z.enum(['shared', 'local']),
  to: z.enum(['shared', 'local']),
  mode: storageModeSchema,
  disks: z.array(diskCopyReportSchema),
  verification: z.object({
    mode: verifyModeSchema,
    match: z.boolean(),
    sourceDigest: z.string(),
    destDigest: z.string(),
    sourceImageDigest: z.string().optional(),
    destImageDigest: z.string().optional(),
  }),
  /** The vCPU paused to finish the copy, verify and switch: ms. */
  pauseMs: z.number(),
  totalTimeMs: z.number(),
  /** The guest's disk write latency before the copy and while it ran (the price of a synchronous mirror). */
  writeLatency: z.object({
    before: z.object({ count: z.number(), p50Ms: z.number(), p99Ms: z.number() }),
    during: z.object({ count: z.number(), p50Ms: z.number(), p99Ms: z.number() }),
  }),
});
export type StorageMoveReport = z.infer<typeof storageMoveReportSchema>;

/** What `link.measure` found of the page path from this agent to another (agent/control/link.ts). */
export const linkMeasureSchema = z.object({
  from: z.string(),
  to: z.string(),
  /** Pages sent as one run (as round 1 sends memory), and how long until the destination had checked the last one. */
  bytes: z.number(),
  ms: z.number(),
  bytesPerSec: z.number(),
  /** Scattered pages (as later rounds send dirty pages: gathered, then installed one by one), bytes per second. */
  scatteredBytesPerSec: z.number(),
  /** The shortest of a few request round trips on the peer connection. */
  rttMs: z.number(),
  /** Opening the peer connection (TCP, TLS when wss://, the WebSocket upgrade). */
  dialMs: z.number(),
  /** How fast the destination made fresh memory real (as a reservation does), bytes per second. */
  populateBytesPerSec: z.number(),
  /** Pages whose XXH3-64 did not match on arrival: 0 on a sound path. */
  mismatches: z.number(),
  /**
   * The path the pages took, as a migration's would (shared/page-stream.ts): `tcp`, a page stream of their own; `ws`,
   * the peer WebSocket. Absent from older agents.
   */
  pageStream: z.enum(['tcp', 'ws']).optional(),
  /** Why the pages went on the WebSocket when a page stream was asked for and could not be opened. */
  pageStreamFallback: z.string().optional(),
  /** How old the measurement is: 0 when made for this request, more when an earlier one was within `maxAgeMs`. */
  ageMs: z.number(),
  /** The fixed costs of the last live migrations from this host to the destination (migration/history.ts). */
  recent: z.object({ migrations: z.number(), startupMs: z.number(), pausedOverheadMs: z.number(), tailMs: z.number(), roundOneBytesPerSec: z.number().optional() }).optional(),
});
export type LinkMeasure = z.infer<typeof linkMeasureSchema>;

const linkBytesSchema = z.number().int().min(LINK_MEASURE.minBytes).max(LINK_MEASURE.maxBytes)
  .refine((n) => n % (256 * PAGE_SIZE) === 0, 'a whole number of MiB');

/** One sample of `trace.record`, as an event: the pages dirtied in interval `sample` (from 0), as runs (shared/trace.ts). */
export const traceSampleEventSchema = z.object({
  sample: z.number().int().min(0),
  runs: traceSampleSchema,
  /** Pages in the runs. */
  pages: z.number().int().min(0),
  /** The vCPU's write count (register n) when the sample was taken. */
  n: z.number().int().min(0),
});
export type TraceSampleEvent = z.infer<typeof traceSampleEventSchema>;

/** What `trace.record` answers once its samples (the events before it) are all sent. */
export const traceRecordReplySchema = z.object({
  name: z.string(),
  host: z.string(),
  memoryBytes: z.number(),
  intervalMs: z.number(),
  /** Samples sent as events: the coordinator checks it has them all. */
  samples: z.number().int().min(0),
  /** When the first interval began (ISO 8601). */
  startedAt: z.string(),
  /** The vCPU's write count (register n) when the first interval began: with the last sample's, the writes recorded. */
  startN: z.number().int().min(0),
  /** From the first interval's start to the last sample. */
  durationMs: z.number(),
  complete: z.boolean(),
  /** Why it ended before its duration: a migration of the VM began, or the VM stopped, was suspended or destroyed. */
  stoppedBy: z.enum(['migration', 'vm-gone']).optional(),
});
export type TraceRecordReply = z.infer<typeof traceRecordReplySchema>;

export const controlOps = {
  'host.info': [empty, hostInfoSchema],
  /** Puts the host in or out of maintenance, or marks it degraded (a reason) or healthy (null); what is left out stays. */
  'host.state': [
    z.object({
      maintenance: z.boolean().optional(),
      /** Who asked, for the record (a user or coordinator name). */
      by: z.string().trim().min(1).max(200).regex(/^[^\u0000-\u001f\u007f]*$/, 'no control characters').optional(),
      degraded: z.string().trim().min(1).max(500).regex(/^[^\u0000-\u001f\u007f]*$/, 'no control characters').nullable().optional(),
    }).strict().refine((change) => change.maintenance !== undefined || change.degraded !== undefined, 'name maintenance or degraded'),
    hostInfoSchema,
  ],
  'vm.create': [
    z.object({
      name: vmNameSchema,
      memoryBytes: memoryBytesSchema,
      workload: workloadSpecSchema,
      /** Back all guest memory with real pages at creation (QEMU's -mem-prealloc), not on first touch. */
      prealloc: z.boolean().optional(),
      /** Size of a sparse disk image (disk0.img) to create in the VM's folder. */
      diskBytes: z.number().int().min(PAGE_SIZE).max(MAX_DISK_BYTES).optional(),
      /** Network configuration; the agent adds a MAC address. */
      network: networkSchema.omit({ mac: true }).optional(),
      /** Release the VM (destroy it with its files) at this time (ISO 8601). */
      leaseUntil: z.string().datetime().optional(),
      /** Its CPU model: `host`, a level, or `baseline` with the cluster's common flags; none is a baseline of this host. */
      cpuModel: cpuModelRequestSchema.optional(),
      /** Clone this image (held by the agent) into disk0.img; `diskBytes`, when given, must be at least its size. */
      image: imageNameSchema.optional(),
      /** Write a config drive (cidata.json) with this user data; the agent adds meta-data and network-config. */
      configDrive: z.object({ userData: z.string().max(MAX_USER_DATA_BYTES) }).strict().optional(),
    }).strict(),
    vmInfoSchema,
  ],
  /** Powers a defined VM on (fresh memory), or resumes a suspended one exactly from its saved memory and registers. */
  'vm.start': [byName, vmInfoSchema],
  /** Powers a VM off: its memory is discarded, its files stay. */
  'vm.stop': [byName, vmInfoSchema],
  /** Saves a VM's memory and registers to its datastore folder and frees its memory. */
  'vm.suspend': [byName, vmInfoSchema],
  'vm.info': [byName, vmInfoSchema],
  'vm.pause': [byName, vmInfoSchema],
  'vm.resume': [byName, vmInfoSchema],
  /** Removes a VM and its files; `deleteDisks` must be true when it has disks. */
  'vm.destroy': [z.object({ name: vmNameSchema, deleteDisks: z.boolean().optional() }).strict(), empty],
  /** Events: binary frames of guest memory in order, then the reply with the image's metadata. */
  'vm.dump': [byName, z.object({ info: vmInfoSchema, wasRunning: z.boolean() })],
  /**
   * Events: first `{info, sizeBytes}`, the VM as it is while paused (its registers y and m describe the image) and
   * the disk's size; then binary frames `{offset, data}` of the VM's first disk as it lies in its image, 1 MiB at a
   * time, in order, chunks of zeros left out. The reply repeats info and size and says how many bytes travelled.
   * The VM is paused meanwhile, as for `vm.dump`.
   */
  'vm.disk-dump': [byName, z.object({ info: vmInfoSchema, wasRunning: z.boolean(), sizeBytes: z.number(), bytesSent: z.number() })],
  'migrate.reserve': [
    z.object({
      migrationId: migrationIdSchema,
      name: vmNameSchema,
      memoryBytes: memoryBytesSchema,
      workload: workloadSpecSchema,
      /** The source's epoch; the destination's copy takes the next one at activation. */
      epoch: z.number().int().min(1),
      /** Where the destination can reach the source's agent, to settle a commit whose acknowledgement was lost. */
      sourceUrl: agentUrlSchema,
      /** The VM's disks are on this shared storage: the destination must mount it too. */
      sharedStorageId: sharedStorageIdSchema.optional(),
      /** The VM's CPU model: the destination must have every flag of it (FERRY_ERR_CPU_INCOMPATIBLE). */
      cpuModel: vmCpuModelSchema,
    }).strict(),
    // `populateMs`: how long the destination took to make the VM's memory real (catalog.ts `populate`), the page faults
    // that are most of a reservation.
    z.object({ freeBytesAfter: z.number(), populateMs: z.number().nonnegative().optional() }),
  ],
  'migrate.release': [z.object({ migrationId: migrationIdSchema }).strict(), empty],
  'migrate.start': [
    z.object({
      migrationId: migrationIdSchema,
      name: vmNameSchema,
      destination: z.object({ name: hostNameSchema, url: agentUrlSchema }).strict(),
      // Strict: an option this agent does not know is refused (FERRY_ERR_BAD_INPUT), never dropped, so that nobody
      // believes a migration ran with a policy (post-copy, compression) that this agent does not have.
      options: migrationOptionsSchema.strict(),
    }).strict(),
    sourceReportSchema,
  ],
  /**
   * Takes up a post-copy whose link broke (`ferry migrate NAME --resume`). On the source (the VM `postcopy-out` here):
   * reconnects to the destination and sends the pages it still lacks; events and reply as `migrate.start`. On the
   * destination: asks the source whether it still holds them; if it does not (it crashed), the VM is lost here too
   * (FERRY_ERR_POSTCOPY_LOST); if it cannot be reached, says so (FERRY_ERR_UNREACHABLE) and changes nothing.
   */
  'migrate.resume': [byName, sourceReportSchema],
  /** Settles, now, a migration of VM `name` left in doubt here (a lost commit acknowledgement); says what holds it. */
  'vm.resolve': [byName, z.object({ state: z.string(), detail: z.string() })],
  /**
   * Records VM `name`'s dirty pages for `durationMs`, one sample every `intervalMs` (agent/control/trace.ts): the
   * agent harvests the VM's dirty log, which clears it, so it holds the VM meanwhile and refuses one that is
   * migrating. A migration that starts meanwhile stops the recording at the last whole sample: the reply then says
   * `complete: false, stoppedBy: "migration"`. Events: one per sample, `traceSampleEventSchema`.
   */
  'trace.record': [
    z.object({
      name: vmNameSchema,
      intervalMs: z.number().int().min(TRACE_LIMITS.minIntervalMs).max(TRACE_LIMITS.maxIntervalMs),
      durationMs: z.number().int().min(TRACE_LIMITS.minIntervalMs).max(TRACE_LIMITS.maxDurationMs),
    }).strict().refine((request) => request.durationMs / request.intervalMs <= TRACE_LIMITS.maxSamples, `at most ${TRACE_LIMITS.maxSamples} samples: a longer interval, or a shorter duration`),
    traceRecordReplySchema,
  ],
  /**
   * Cold migration of a powered-off or suspended VM: this (source) agent streams every file of the VM to the
   * destination, which checks and registers them; then the source deletes its copy. Events: progress.
   */
  'cold.start': [
    z.object({ migrationId: migrationIdSchema, name: vmNameSchema, destination: destinationSchema, sourceUrl: agentUrlSchema }).strict(),
    z.object({
      files: z.array(z.object({ file: vmFileNameSchema, bytes: z.number(), xxh64: xxh64HexSchema })),
      bytesSent: z.number(),
      bytesSkipped: z.number(),
      durationMs: z.number(),
    }),
  ],
  /**
   * Storage vMotion on this host: the running (or paused) VM's disks move between the datastore and the shared
   * storage while it runs (agent/storage/): a mirror or dirty-block rounds, a short pause to finish and verify, then
   * its config points to the new place and the old copy is deleted. Any failure before that leaves the disks where
   * they were. Events: progress.
   */
  'storage.move': [
    z.object({
      name: vmNameSchema,
      to: z.enum(['shared', 'local']),
      mode: storageModeSchema,
      verify: verifyModeSchema,
      maxDowntimeMs: z.number().positive().max(600_000),
      /** A cap on the copy's own sends (bulk pass and rounds; not mirrored guest writes), bytes per second; absent: none. */
      maxBandwidthBytesPerSec: z.number().min(0).optional(),
    }).strict(),
    storageMoveReportSchema,
  ],
  /**
   * Stops the migration of VM `name` that this agent is the source of. Before the commit it rolls back (the
   * `migrate.start` reply says so); after the commit it has no effect.
   */
  'migrate.cancel': [
    z.object({ name: vmNameSchema, reason: z.enum(['cancelled', 'timeout']).default('cancelled') }).strict(),
    z.object({ cancelling: z.boolean() }),
  ],
  /** The images this agent holds, each with the blocks its disk takes (holes do not). */
  'image.list': [empty, z.object({ images: z.array(imageManifestSchema.extend({ allocatedBytes: z.number() })) })],
  ...imageReceiveOps,
  /** Makes image `name` on this agent from powered-off VM `vm`'s first disk. */
  'image.capture': [
    z.object({ vm: vmNameSchema, name: imageNameSchema, holds: z.string().max(4096).optional() }).strict(),
    z.object({ image: imageManifestSchema, durationMs: z.number() }),
  ],
  /** Re-reads image `name` and compares its digest with its manifest's. */
  'image.verify': [z.object({ name: imageNameSchema }).strict(), z.object({ xxh64: xxh64HexSchema, match: z.boolean(), durationMs: z.number() })],
  'image.remove': [z.object({ name: imageNameSchema }).strict(), z.object({ removed: z.boolean() })],
  /**
   * Measures the page path from this agent to `to`: `bytes` (default LINK_MEASURE.defaultBytes) of incompressible
   * synthetic pages, hashed and sent as a migration's round 1 is (page-sender.ts), checked and discarded there; or,
   * given `maxAgeMs`, the last measurement to the same agent if it is no older. `from.url` is where `to` reaches this
   * agent (the coordinator knows it, as for `migrate.reserve`'s `sourceUrl`): the pages then go on a page stream
   * dialled back to it, as a migration's do; without it, on the peer WebSocket.
   */
  'link.measure': [z.object({
    to: destinationSchema, bytes: linkBytesSchema.optional(), maxAgeMs: z.number().int().min(0).max(3_600_000).optional(),
    from: z.object({ url: agentUrlSchema }).strict().optional(),
  }).strict(), linkMeasureSchema],
  /** Sends image `name`, held here, to the agent `destination` (peer ops image.begin/chunk/finish). Events: progress. */
  /**
   * A watcher (`ferry ui`): events (watchEventSchema) until the connection closes; never answered before. `hostIntervalMs`:
   * a `host` event that often (default 2 s); `heat`: heat-map frames of VM `name` that often while this host holds the
   * copy that is the VM.
   */
  'events.watch': [z.object({
    hostIntervalMs: z.number().int().min(250).max(60_000).optional(),
    heat: z.object({ name: vmNameSchema, cells: z.number().int().min(1).max(16384), intervalMs: z.number().int().min(100).max(10_000) }).strict().optional(),
  }).strict(), empty],
  'image.send': [
    z.object({ name: imageNameSchema, destination: destinationSchema }).strict(),
    z.object({ bytes: z.number(), bytesSent: z.number(), durationMs: z.number() }),
  ],
} as const;

/** A page stream's one-time ticket (shared/page-stream.ts), handed to the destination in `peer.stream` or `link.begin`. */
/** A page stream's one-time ticket (shared/page-stream.ts): 32 hex digits, in `peer.stream`, `link.begin` and the upgrade. */
export const pageStreamTicketSchema = z.string().regex(/^[0-9a-f]{32}$/);

/** Requests the source agent sends its destination on the peer connection. */
/** peer.verify's request: what stop-and-copy leaves for the destination to check and take (the registers, the files). */
const verifyRequestSchema = z.object({
  registers: registersSchema,
  mode: verifyModeSchema,
  resume: z.boolean(),
  /**
   * The VM's small files (config.json, nvram.bin, vm.log, and its config drive cidata.json when it has one),
   * registered in the destination's datastore at activation.
   */
  files: z.object({ config: z.string(), nvram: z.instanceof(Uint8Array), log: z.string(), configDrive: z.string().max(4 * MAX_USER_DATA_BYTES).optional() }).optional(),
  /** What the guest took from its config drive at boot: guest state, carried like the registers. */
  guest: guestFactsSchema.optional(),
  /** Its network configuration: the destination serves its address from activation on. */
  network: networkSchema.nullable().optional(),
  /** Page-frame bytes sent in all, stop-and-copy's included: the destination verifies once it has taken them. */
  streamBytes: z.number().int().nonnegative().optional(),
}).strict();

const verifyReplySchema = z.object({
  destDigest: z.string(),
  destMemoryDigest: z.string().optional(),
  pageMismatches: z.number(),
  damagedWhilePaused: z.number(),
  /** The destination's marks so far, ms since it received this request (downtimeTimelineSchema). */
  timeline: z.array(timelineMarkSchema).optional(),
  anchorEpochMs: z.number().optional(),
  gc: z.array(gcPauseSchema).optional(),
  /** Time spent applying XBZRLE deltas (`--compress xbzrle`), ms; absent when none came. */
  deltaDecodeMs: z.number().optional(),
});

/**
 * `servingAfterMs`: from the request's arrival until the destination served the VM's address (when it has one);
 * `announcements`: gratuitous ARPs it scheduled for the address (namespaces mode), the first as it took it.
 */
const activateReplySchema = z.object({
  guestBlackoutMs: z.number(), servingAfterMs: z.number().optional(), announcements: z.number().int().min(0).max(100).optional(),
  /** The destination's marks of the activation, ms since it received peer.verify (downtimeTimelineSchema). */
  timeline: z.array(timelineMarkSchema).optional(),
  gc: z.array(gcPauseSchema).optional(),
});

/** One bit a page, bit (p & 7) of byte (p >>> 3) for page p: a post-copy's pages still at the source. */
export const pageBitmapSchema = z.instanceof(Uint8Array).refine((bits) => bits.length <= MAX_MEMORY_BYTES / PAGE_SIZE / 8, 'one bit a page of at most the largest guest');

/** A `peer.faults` event: pages the destination's vCPU waits for (or that arrived damaged), to send ahead of the push. */
export const pageRequestEventSchema = z.object({ pages: z.array(z.number().int().min(0)).min(1).max(4096) }).strict();

export const peerOps = {
  /** `resume`: a post-copy's source reconnecting after its link broke (`migrate.resume`), not a new migration. */
  'peer.hello': [z.object({ migrationId: migrationIdSchema, from: hostNameSchema, version: z.number().int(), resume: z.boolean().optional() }).strict(), z.object({ name: z.string() })],
  /**
   * Asks the destination to open the page stream (shared/page-stream.ts): it dials the source's `/pages` with this
   * ticket and answers once the upgrade is done, or says why it could not (the source then sends on this WebSocket).
   */
  'peer.stream': [
    z.object({ ticket: pageStreamTicketSchema }).strict(),
    z.object({ open: z.boolean(), reason: z.string().optional() }),
  ],
  /**
   * Answered once the destination has installed every page sent before it (the stream is ordered). Each round
   * ends with it, so round times and rates are measured to the destination, not to the local socket buffer, and
   * stop-and-copy never starts behind a backlog the destination has yet to install.
   */
  'peer.sync': [
    z.object({
      round: z.number().int().min(1),
      /**
       * Sent once more after the last round, just before the pause: the destination also runs a full garbage
       * collection before it answers, so that none falls inside the pause (source.ts).
       */
      beforePause: z.boolean().optional(),
      /**
       * With `beforePause`: the VM's config.json, as the verify or switchover request will carry it, so that the
       * destination reads it (the disks it will attach) before the pause rather than in it.
       */
      config: z.string().optional(),
      /** Page-frame bytes sent so far, on whichever path: the destination answers once it has taken that many. */
      streamBytes: z.number().int().nonnegative().optional(),
    }).strict(),
    z.object({ pagesReceived: z.number() }),
  ],
  /** Stop-and-copy is done: every page is sent. The destination checks its image and answers with its digests. */
  'peer.verify': [verifyRequestSchema, verifyReplySchema],
  /** The source has committed: the destination is primary now and resumes the vCPU. */
  'peer.activate': [z.object({ resume: z.boolean() }).strict(), activateReplySchema],
  /**
   * Verification and activation in one round trip (source.ts, "the switchover"): the source sends its own digest
   * with the verify request and is committed from that moment; the destination verifies, and on a match activates at
   * once and answers both. On a mismatch it drops its image and says so (`activated: false`): the source rolls back.
   */
  'peer.switchover': [
    verifyRequestSchema.extend({ sourceDigest: z.string().regex(/^[0-9a-f]{16}$/) }).strict(),
    verifyReplySchema.extend({
      match: z.boolean(),
      activated: z.boolean(),
      guestBlackoutMs: z.number().optional(),
      servingAfterMs: z.number().optional(),
      announcements: z.number().int().min(0).max(100).optional(),
    }),
  ],
  /**
   * The post-copy switch (agent/migration/postcopy-source.ts): the source has paused the vCPU and is committed from
   * this request on. The destination takes the registers and files, marks the `missing` pages (page-bitmap) absent,
   * and runs the VM at once: a vCPU that touches a missing page waits for it. Answered once the VM runs there.
   */
  'peer.postcopy': [
    verifyRequestSchema.omit({ mode: true }).extend({ missing: pageBitmapSchema }).strict(),
    /** `activated: false`: the destination could not run the VM and dropped its image (the source resumes its own). */
    activateReplySchema.extend({ activated: z.boolean(), anchorEpochMs: z.number().optional() }),
  ],
  /**
   * Open for the whole post-copy: the destination sends an event (pageRequestEventSchema) for each page its vCPU waits
   * for, and for each that arrived damaged; the source sends those on this WebSocket ahead of the push. Answered when
   * the post-copy ends, or the connection closes.
   */
  'peer.faults': [empty, empty],
  /**
   * Every missing page is pushed: answered once the destination holds every page, with its page-table digest (the
   * hashes each page arrived with) for the source to compare with its own, and the vCPU's faults.
   */
  'peer.postcopy-end': [
    z.object({ sourceDigest: z.string().regex(/^[0-9a-f]{16}$/) }).strict(),
    z.object({ destDigest: z.string(), match: z.boolean(), faults: z.number(), stallMs: stallSummarySchema.optional(), refetched: z.number() }),
  ],
  /** After a resume's `peer.hello`: the pages the destination still lacks (page-bitmap), and its faults so far. */
  'peer.postcopy-state': [empty, z.object({ missing: pageBitmapSchema, faults: z.number() })],
  /**
   * After a switchover: the source has freed its copy and its files. A destination that activated in a switchover
   * and never hears this (the source died, or the connection failed first) asks the source later what it still
   * holds, so that a restarted source drops its stale definition (settlement.ts).
   */
  'peer.released': [z.object({}).strict(), empty],
  /**
   * Source to destination, from the commit until the source gives the VM's address up: datagrams that reached the
   * source for the VM, in arrival order. Before activation the destination keeps them (host side); from it, they go
   * into the VM's RX ring.
   */
  'net.forward': [
    z.object({
      datagrams: z.array(z.object({
        ip: z.number().int().min(0).max(0xffffffff),
        port: z.number().int().min(1).max(65535),
        data: z.instanceof(Uint8Array).refine((data) => data.length <= 65_535, 'a UDP datagram is at most 65,535 bytes'),
      }).strict()).max(4096),
    }).strict(),
    empty,
  ],
  /**
   * `--copy-storage`: the VM's local disks, copied before memory. `disk.begin` makes each an empty sparse image in the
   * migration's staging folder; `disk.write` writes whole 4 KiB blocks into disk `index` (applied in the order sent;
   * answered once written: a mirrored guest write waits for it); `disk.digest` syncs disk `index` and answers the
   * digest of its per-block digests (and, with `full`, of the whole image). The staged disks join the VM's folder at
   * activation and are dropped with the reservation.
   */
  'disk.begin': [z.object({ disks: z.array(z.object({ file: vmFileNameSchema, sizeBytes: z.number().int().min(4096).max(MAX_DISK_BYTES) }).strict()).min(1).max(8) }).strict(), empty],
  'disk.write': [
    z.object({
      index: z.number().int().min(0).max(7),
      first: z.number().int().min(0).max(MAX_DISK_BYTES / 4096),
      data: z.instanceof(Uint8Array).refine((data) => data.length > 0 && data.length % 4096 === 0 && data.length <= 1024 * 1024, 'whole 4 KiB blocks, at most 1 MiB'),
    }).strict(),
    empty,
  ],
  'disk.digest': [z.object({ index: z.number().int().min(0).max(7), full: z.boolean() }).strict(), z.object({ tableDigest: z.string(), imageDigest: z.string().optional() })],
  /** The source gives up before commit: the destination drops its reservation. */
  'peer.abort': [z.object({ reason: z.string() }).strict(), empty],
  /**
   * Source to destination, on a fresh connection, after a commit whose activation went unconfirmed: "I committed
   * migration M". A verified image is activated now. The reply says what the destination knows of M: `active` (it
   * runs the VM, or did: the source frees its copy) or `unknown` (it never activated M, so the source's copy is the VM).
   */
  'peer.settle': [z.object({ migrationId: migrationIdSchema, resume: z.boolean() }).strict(), z.object({ phase: z.enum(['active', 'unknown', 'pending']) })],
  /**
   * Destination to source, about a verified image whose source went silent: `committed` (the source passed its
   * commit point: activate), `running` (it rolled back and runs the VM: drop the image), `pending` (still deciding),
   * or `none` (it holds no copy: it restarted or died; the verified image is the only one left: activate).
   */
  'peer.holds': [z.object({ migrationId: migrationIdSchema, name: vmNameSchema }).strict(), z.object({ state: z.enum(['committed', 'running', 'pending', 'none']) })],
  /**
   * Cold migration: a staging folder for VM `name` (its config, the source's epoch). A `suspended` VM resumes with
   * its CPU model's flags, so the destination must have them; a powered-off one boots fresh and is not checked.
   */
  'cold.begin': [z.object({
    migrationId: migrationIdSchema, name: vmNameSchema, epoch: z.number().int().min(1), sourceUrl: agentUrlSchema, sharedStorageId: sharedStorageIdSchema.optional(),
    cpuModel: vmCpuModelSchema, suspended: z.boolean(),
  }).strict(), empty],
  /** One checked chunk of a file: `data` with its xxh64. Chunks of zeros are not sent: `cold.finish` gives each file its full size, the gaps as holes (sparse files stay sparse). */
  'cold.chunk': [
    z.object({
      file: vmFileNameSchema,
      offset: z.number().int().min(0).max(MAX_DISK_BYTES),
      data: z.instanceof(Uint8Array),
      xxh64: xxh64HexSchema,
    }).strict(),
    empty,
  ],
  /** Every file sent: check sizes and digests against the manifest, sync, and register the VM (atomic rename). */
  'cold.finish': [z.object({ manifest: z.array(z.object({ file: vmFileNameSchema, bytes: z.number().int().min(0).max(MAX_DISK_BYTES), xxh64: xxh64HexSchema }).strict()).max(64) }).strict(), z.object({ registered: z.boolean() })],
  /** Destination to source, after activating on `none`: drop a powered-off definition of `name` older than `epoch`. */
  'peer.forget': [z.object({ name: vmNameSchema, epoch: z.number().int() }).strict(), z.object({ forgot: z.boolean() })],
  /**
   * `link.measure`, on a fresh connection: the destination takes `pages` of fresh memory (timing how fast it becomes
   * real), then checks the page frames that follow (page-frame.ts, round 1, pages numbered within it) and discards them.
   * With `stream`, it then dials the page stream back to `url` with `ticket`, as for `peer.stream`, and the frames
   * come there; `streamOpen` says whether it did, `streamReason` why not (they then come on this WebSocket).
   */
  'link.begin': [
    z.object({
      pages: z.number().int().min(LINK_MEASURE.minBytes / PAGE_SIZE).max(LINK_MEASURE.maxBytes / PAGE_SIZE),
      stream: z.object({ url: agentUrlSchema, ticket: pageStreamTicketSchema }).strict().optional(),
    }).strict(),
    z.object({ populateBytesPerSec: z.number(), streamOpen: z.boolean(), streamReason: z.string().optional() }),
  ],
  /** A round trip; with `streamBytes` (page-frame bytes sent so far), answered once that many have been taken. */
  'link.ping': [z.object({ streamBytes: z.number().int().nonnegative().optional() }).strict(), empty],
  /**
   * Every frame before it checked (`streamBytes`, as for `link.ping`): how many pages arrived and how many did not
   * match their XXH3-64. Frees the memory and closes the page stream.
   */
  'link.end': [z.object({ streamBytes: z.number().int().nonnegative().optional() }).strict(), z.object({ pagesReceived: z.number(), mismatches: z.number() })],
  ...imageReceiveOps,
} as const;

export type OpTable = Record<string, readonly [z.ZodType, z.ZodType]>;
export type OpName<T extends OpTable> = keyof T & string;
export type RequestOf<T extends OpTable, K extends OpName<T>> = z.infer<T[K][0]>;
export type ReplyOf<T extends OpTable, K extends OpName<T>> = z.infer<T[K][1]>;
export type ControlOps = typeof controlOps;
export type ImageReceiveOps = typeof imageReceiveOps;
export type PeerOps = typeof peerOps;

export const envelopeSchema = z.union([
  z.object({ t: z.literal('req'), id: z.number().int().nonnegative(), op: z.string(), body: z.unknown() }),
  z.object({ t: z.literal('res'), id: z.number().int().nonnegative(), ok: z.literal(true), body: z.unknown() }),
  z.object({ t: z.literal('res'), id: z.number().int().nonnegative(), ok: z.literal(false), error: errorPayloadSchema }),
  z.object({ t: z.literal('evt'), id: z.number().int().nonnegative(), body: z.unknown() }),
]);
export type Envelope = z.infer<typeof envelopeSchema>;

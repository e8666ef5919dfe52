/**
 * Numbers that both the agent and the coordinator rely on, each beside the reason it has its value.
 */

/** Guest page size. 4 KiB is the x86 base page that Xen, KVM and vMotion track dirtiness at. */
export const PAGE_SIZE = 4096;

/**
 * Bumped whenever a message or frame changes shape or meaning; peers that differ refuse each other at `hello`.
 * 3: the per-page hash is XXH3-64 (shared/xxh3-page.wat), was xxh64; zero pages travel as a flag (page frame 2)
 * 4: pages may travel on a page stream of their own (`peer.stream`, shared/page-stream.ts); `peer.sync` and
 *    `peer.verify` carry the page-frame bytes sent so far; `peer.switchover` and `peer.released` (verification and
 *    activation in one round trip, the commit point at the source's request); `peer.sync` may carry the config
 * 5: page frame 3: pages may travel as XBZRLE deltas (`--compress xbzrle`, shared/xbzrle.ts), the header's reserved
 *    word counts them and their lengths follow the entries; the `counters` workload
 * 6: `migrate.start`'s `postcopy: {mode: 'auto'}` may carry the forecast's verdict (`forecastConverges`), and a
 *    post-copy report's `reason` may be `forecast`; `migrate.reserve` answers how long it took to populate memory
 */
export const PROTOCOL_VERSION = 6;

/**
 * The Node.js options every ferry-agent runs with (its `#!` line, and coordinator/local-agent.ts when it starts one).
 *
 * - `--single-threaded`: V8 does its garbage collection and optimizing compilation on the thread that needs them
 *   instead of on helper threads of its own. On a 2-core host those helper threads (concurrent marking and sweeping
 *   after the collection made just before a pause, optimizing jobs for code made hot by the rounds) took a core from
 *   the switchover: between two fresh agents, one step or two of most pauses took 1.3-2.4 ms instead of 0.1-0.6.
 * - `--no-lazy`: every function is compiled when its file loads, not the first time it is called, so a fresh agent's
 *   first switchover compiles nothing (the destination's steps took 0.1-0.3 ms each the first time, 0.01-0.09 ms
 *   compiled beforehand).
 *
 * The first migration between two fresh agents paused 4.96 ms median before, 3.57 ms with the messages warmed
 * (warm.ts) alone, and 2.44 ms with the warm-up and both options (docs/PERFORMANCE.md, "The first pause between
 * fresh agents").
 */
export const AGENT_NODE_FLAGS = ['--single-threaded', '--no-lazy'] as const;

/** Smallest guest: 256 pages, one full page-data frame. */
export const MIN_MEMORY_BYTES = 1024 * 1024;

/**
 * Largest guest: 4 GiB. Node 20 cannot make a typed-array view over more than 2^32 bytes, and guest memory is
 * one SharedArrayBuffer viewed as one Uint8Array.
 */
export const MAX_MEMORY_BYTES = 4 * 1024 * 1024 * 1024;

/** The largest disk image (and so the largest file of a VM folder) ferry makes or accepts: 1 PiB, far past any test. */
export const MAX_DISK_BYTES = 2 ** 50;

/**
 * Pages per page-data frame: 256 pages = 1 MiB. Measured here, ws moves 1 MiB binary frames at about raw-TCP
 * speed; smaller frames pay per-frame overhead, larger ones only delay the first byte.
 */
export const PAGES_PER_FRAME = 256;

/** Bytes of page data the sender lets sit unwritten in the socket before it waits (backpressure). */
export const SEND_WINDOW_BYTES = 32 * 1024 * 1024;

/** Stop-and-copy rules (DESIGN.md, "Migration, stage by stage"). */
export const STOP_RULES = {
  /** Xen: fewer than 50 dirty pages left is cheap enough to send with the vCPU paused. */
  fewDirtyPages: 50,
  /** P.Haul: a round that shrinks the dirty set by less than 10 % is not paying off. */
  minShrinkFraction: 0.1,
  /** Xen's cap on rounds. */
  maxRounds: 30,
  /** Xen's cap on traffic: stop once 3 x guest memory has been sent. */
  maxBytesFactor: 3,
} as const;

/** Auto-converge, with QEMU's defaults: throttle the vCPU by 20 %, then 10 % more per stalled round, at most 99 %. */
export const AUTO_CONVERGE = {
  initialPct: 20,
  incrementPct: 10,
  maxPct: 99,
} as const;

/** QEMU's default XBZRLE cache (`--xbzrle-cache`): 64 MiB of pages as last sent, on the source. */
export const DEFAULT_XBZRLE_CACHE_BYTES = 64 * 1024 * 1024;

/** QEMU's default downtime limit. */
export const DEFAULT_MAX_DOWNTIME_MS = 300;

/** How long a migration waits for any single reply from a peer before it gives up and rolls back. */
export const PEER_REPLY_TIMEOUT_MS = 30_000;
/** How long the destination may take to open the page stream back to the source (shared/page-stream.ts). */
export const PAGE_STREAM_DIAL_TIMEOUT_MS = 5_000;

/** How often the vCPU refreshes its heartbeat when it has nothing to write (idle workload, or rate-limited). */
export const HEARTBEAT_INTERVAL_MS = 1;

/**
 * The guest's network device (agent/vm/net/device.ts): the last NET_REGION_PAGES pages of an addressed VM's memory
 * (a header page and two rings of 256 1-KiB slots), and the UDP port its service answers on (DESIGN.md, "Guest
 * service protocol"). Here because the CLI leaves room for the device when it picks a working set.
 */
export const NET_REGION_PAGES = 129;
export const NET_SERVICE_PORT = 7777;

/**
 * `link.measure` (agent/control/link.ts): synthetic pages sent over the real page path to measure its throughput.
 * The default, 128 MiB (24 MiB of warm-up, then 32 MiB as a run and 32 MiB scattered), takes 0.2-0.4 s on loopback here; the cap
 * keeps a measurement from taking a host's memory (each side holds `bytes` while it runs).
 */
export const LINK_MEASURE = {
  defaultBytes: 128 * 1024 * 1024,
  minBytes: 1024 * 1024,
  maxBytes: 512 * 1024 * 1024,
} as const;

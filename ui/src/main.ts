/**
 * The page: signs in, then shows what the ui server relays from the agents (server-sent events) and does what the
 * person asks through the server's actions. It never polls: every change on the page comes from an event.
 */
import { ApiError, action, get, logIn, post, session, type SessionInfo } from './api.js';
import { listBench, openBench } from './bench.js';
import { drawRounds, drawThroughput, type RoundPoint, type ThroughputPoint } from './charts.js';
import { drawHeat, type HeatFrame } from './heat.js';

interface VmInfo {
  name: string; host: string; state: string; memoryBytes: number; address?: string | null;
  workload: { kind: string; rate: number; wssPages: number };
  stats?: { cpuPercent: number; dirtyPagesPerSec: number };
  log?: string[];
}
interface HostInfo {
  name: string; capacityBytes: number; usedBytes: number; freeBytes: number;
  vms: { name: string; state: string; memoryBytes: number; host: string }[];
  hostCpu: { model: string; level: string | null };
  load?: { cpuPercent: number; residentBytes?: number; vms: number };
  maintenance?: { since: string; by?: string } | null;
  health?: { state: string; reasons: { source: string; reason: string }[] };
}
type MigrationEvent =
  | { kind: 'stage'; stage: number; name: string; atMs: number }
  | { kind: 'progress'; round: number; pagesSent: number; pagesInRound: number; bytesSent: number; rateBytesPerSec: number; dirtyPagesPerSec: number; expectedDowntimeMs: number }
  | { kind: 'round'; report: { round: number; pages: number; bytes: number; durationMs: number; dirtyPagesAfter: number; throughputBytesPerSec: number } }
  | { kind: 'throttle'; round: number; pct: number }
  | { kind: 'postcopy'; phase: string; pagesLeft: number; pushedPages: number; requestedPages: number; faults: number }
  | { kind: 'storage'; file: string; phase: string; blocksDone: number; blocksTotal: number };
interface SourceReport {
  outcome: string; stopReason?: string; downtimeMs?: number; bytesSent: number; rounds: unknown[]; error?: { message: string };
  postcopy?: { afterRounds: number; pushedPages: number; requestedPages: number; faults: number; complete: boolean };
}
type UiEvent =
  | { kind: 'host'; host: string; info: HostInfo; vms: VmInfo[] }
  | { kind: 'host-down'; host: string; error: string }
  | { kind: 'log'; host: string; name: string; line: string }
  | { kind: 'migration'; host: string; name: string; migrationId: string; to: string; event: MigrationEvent }
  | { kind: 'migration-end'; host: string; name: string; migrationId: string; to: string; report?: SourceReport; error?: { message: string } }
  | ({ kind: 'heat' } & HeatFrame)
  | { kind: 'notice'; level: 'info' | 'error'; text: string; detail?: { vm?: string } };

const MIB = 1024 * 1024;
const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const found = document.getElementById(id);
  if (!found) throw new Error(`the page lacks #${id}`);
  return found as T;
};

function bytes(value: number): string {
  if (value >= 1024 ** 3) return `${(value / 1024 ** 3).toFixed(1)} GiB`;
  if (value >= MIB) return `${(value / MIB).toFixed(0)} MiB`;
  return `${(value / 1024).toFixed(0)} KiB`;
}

function cell(text: string, className?: string): HTMLTableCellElement {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function badge(text: string, kind = text): HTMLSpanElement {
  const span = document.createElement('span');
  span.className = `badge ${kind}`;
  span.textContent = text;
  return span;
}

function button(text: string, data: Record<string, string>, onClick: () => void): HTMLButtonElement {
  const made = document.createElement('button');
  made.textContent = text;
  for (const [key, value] of Object.entries(data)) made.dataset[key] = value;
  made.addEventListener('click', onClick);
  return made;
}

function notify(text: string, level: 'info' | 'error' = 'info'): void {
  const notice = document.createElement('div');
  notice.className = `notice ${level}`;
  notice.textContent = text;
  $('notices').append(notice);
  setTimeout(() => notice.remove(), level === 'error' ? 20_000 : 8000);
}

function failed(error: unknown): void {
  if (error instanceof ApiError && error.status === 401) {
    showLogin('Your session ended: sign in again.');
    return;
  }
  notify(error instanceof ApiError && error.hint ? `${error.message}: ${error.hint}` : String(error instanceof Error ? error.message : error), 'error');
}

// ---- state, all of it from events ----
const hosts = new Map<string, { info?: HostInfo; vms: VmInfo[]; down?: string }>();
const logs = new Map<string, string[]>();
let watched: string | undefined;
let detail: string | undefined;
let clusterHosts: SessionInfo['hosts'] = [];

/** The watched VM's migration: the one under way, or the last. */
const migration = {
  id: '', firstStageMs: 0, roundsDone: [] as { durationMs: number; bytes: number }[], throughput: [] as ThroughputPoint[],
  rounds: [] as RoundPoint[], linkBytesPerSec: undefined as number | undefined, redraw: 0,
};

function resetMigration(id: string): void {
  Object.assign(migration, { id, firstStageMs: -1, roundsDone: [], throughput: [], rounds: [] });
  $('chart-rounds').replaceChildren();
  $('chart-throughput').replaceChildren();
  for (const li of document.querySelectorAll('#stage-timeline li')) li.classList.remove('done', 'current');
  $('progress').textContent = '';
  $('report').textContent = '';
  $('migration-status').dataset['state'] = 'running';
  $('cancel-migration').hidden = false;
  $('heat-writes').dataset['migratingDigests'] = '';
}

function markStage(stage: number): void {
  for (const li of document.querySelectorAll<HTMLElement>('#stage-timeline li')) {
    const at = Number(li.dataset['stage']);
    li.classList.toggle('done', at < stage);
    li.classList.toggle('current', at === stage);
  }
}

function scheduleCharts(): void {
  if (migration.redraw) return;
  migration.redraw = window.setTimeout(() => {
    migration.redraw = 0;
    void drawThroughput($('chart-throughput'), migration.throughput, migration.linkBytesPerSec).catch(failed);
    if (migration.rounds.length > 0) void drawRounds($('chart-rounds'), migration.rounds).catch(failed);
  }, 300);
}

function onMigration(event: Extract<UiEvent, { kind: 'migration' }>): void {
  if (event.name !== watched) return;
  if (event.migrationId !== migration.id) resetMigration(event.migrationId);
  const e = event.event;
  const doneMs = migration.roundsDone.reduce((total, round) => total + round.durationMs, 0);
  const doneBytes = migration.roundsDone.reduce((total, round) => total + round.bytes, 0);
  switch (e.kind) {
    case 'stage':
      if (migration.firstStageMs < 0) migration.firstStageMs = e.atMs;
      markStage(e.stage);
      // Stage 3 begins when a stop rule fires (or post-copy's switch); the report names the rule.
      if (e.stage === 3) $('progress').textContent = `the stop rule fired after ${migration.rounds.length} round(s): ${e.name}, the vCPU paused`;
      break;
    case 'progress': {
      const inRoundMs = e.rateBytesPerSec > 0 ? ((e.bytesSent - doneBytes) / e.rateBytesPerSec) * 1000 : 0;
      migration.throughput.push({ atS: (doneMs + inRoundMs) / 1000, mibPerSec: e.rateBytesPerSec / MIB, round: e.round });
      $('progress').textContent = `round ${e.round}: ${e.pagesSent.toLocaleString()} of ${e.pagesInRound.toLocaleString()} pages sent, `
        + `${(e.rateBytesPerSec / MIB).toFixed(0)} MiB/s, guest dirtying ${Math.round(e.dirtyPagesPerSec).toLocaleString()} pages/s, `
        + `expected downtime ${e.expectedDowntimeMs.toFixed(0)} ms`;
      scheduleCharts();
      break;
    }
    case 'round':
      migration.roundsDone.push({ durationMs: e.report.durationMs, bytes: e.report.bytes });
      migration.throughput.push({ atS: (doneMs + e.report.durationMs) / 1000, mibPerSec: e.report.throughputBytesPerSec / MIB, round: e.report.round });
      migration.rounds.push({ round: e.report.round, sent: e.report.pages, dirtiedMeanwhile: e.report.dirtyPagesAfter });
      $('progress').textContent = `round ${e.report.round} done: ${e.report.pages.toLocaleString()} pages in ${e.report.durationMs.toFixed(0)} ms at `
        + `${(e.report.throughputBytesPerSec / MIB).toFixed(1)} MiB/s; the guest dirtied ${e.report.dirtyPagesAfter.toLocaleString()} meanwhile`;
      scheduleCharts();
      break;
    case 'throttle':
      $('progress').textContent = `auto-converge: the vCPU held to ${100 - e.pct} % of its rate after round ${e.round}`;
      break;
    case 'postcopy':
      markStage(6);
      $('progress').textContent = `post-copy ${e.phase}: ${e.pagesLeft.toLocaleString()} pages still at the source, ${e.pushedPages.toLocaleString()} pushed, ${e.requestedPages.toLocaleString()} asked for by faults (${e.faults})`;
      break;
    case 'storage':
      $('progress').textContent = `disk ${e.file} ${e.phase}: ${e.blocksDone.toLocaleString()} of ${e.blocksTotal.toLocaleString()} blocks`;
      break;
  }
}

function onMigrationEnd(event: Extract<UiEvent, { kind: 'migration-end' }>): void {
  if (event.name !== watched || event.migrationId !== migration.id) return;
  const report = event.report;
  const outcome = report?.outcome ?? 'failed';
  $('migration-status').dataset['state'] = outcome;
  $('cancel-migration').hidden = true;
  if (outcome === 'committed') markStage(7);
  if (!$('report').textContent) {
    const post = report?.postcopy;
    const ended = post
      ? `post-copy after ${post.afterRounds} round(s): ${post.pushedPages.toLocaleString()} pages pushed, ${post.requestedPages.toLocaleString()} asked for by ${post.faults.toLocaleString()} fault(s)${post.complete ? '' : ', not all there yet'}`
      : `stop rule ${report?.stopReason ?? '-'}`;
    $('report').textContent = report
      ? `${outcome}: ${report.rounds.length} pre-copy rounds, ${ended}, downtime ${report.downtimeMs?.toFixed(1) ?? '-'} ms, ${bytes(report.bytesSent)} sent${report.error ? `; ${report.error.message}` : ''}`
      : `failed: ${event.error?.message ?? 'unknown'}`;
  }
}

function renderHosts(): void {
  const body = $('hosts').querySelector('tbody');
  if (!body) return;
  body.replaceChildren();
  for (const [name, host] of [...hosts].sort(([a], [b]) => a.localeCompare(b))) {
    const tr = document.createElement('tr');
    tr.dataset['host'] = name;
    const info = host.info;
    tr.append(cell(name));
    const state = document.createElement('td');
    if (host.down !== undefined || !info) state.append(badge('down'), ` ${host.down ?? 'not yet heard from'}`);
    else {
      state.append(badge(info.health?.state ?? 'healthy'));
      if (info.maintenance) state.append(' ', badge('maintenance'));
      for (const reason of info.health?.reasons ?? []) state.append(` ${reason.source}: ${reason.reason}`);
    }
    tr.append(state);
    if (info) {
      tr.append(cell(`${bytes(info.usedBytes)} / ${bytes(info.capacityBytes)}`, 'num'), cell(bytes(info.freeBytes), 'num'),
        cell(info.load?.residentBytes !== undefined ? bytes(info.load.residentBytes) : '-', 'num'),
        cell(info.load ? `${info.load.cpuPercent.toFixed(0)} % CPU` : '-', 'num'),
        cell(`${info.hostCpu.model}${info.hostCpu.level ? ` (${info.hostCpu.level})` : ''}`),
        cell(info.vms.map((vm) => vm.name).join(', ') || '-'));
      const actions = document.createElement('td');
      actions.append(info.maintenance
        ? button('Undrain', { undrain: name }, () => void action('undrain', { host: name }).then(() => notify(`${name} takes new VMs again`), failed))
        : button('Drain…', { drain: name }, () => {
          if (!window.confirm(`Drain ${name}? It takes no new VMs, and every VM on it moves to the best other host (running ones live, others cold).`)) return;
          void action('drain', { host: name }).then(() => notify(`draining ${name}`), failed);
        }));
      tr.append(actions);
    }
    body.append(tr);
  }
}

function renderVms(): void {
  const body = $('vms').querySelector('tbody');
  if (!body) return;
  body.replaceChildren();
  const all = [...hosts.values()].flatMap((host) => host.info?.vms.map((summary) => host.vms.find((vm) => vm.name === summary.name) ?? summary as unknown as VmInfo) ?? []);
  for (const vm of all.sort((a, b) => a.name.localeCompare(b.name))) {
    const tr = document.createElement('tr');
    tr.dataset['vm'] = vm.name;
    const name = document.createElement('td');
    const link = document.createElement('a');
    link.href = '#';
    link.textContent = vm.name;
    link.addEventListener('click', (event) => {
      event.preventDefault();
      void showDetail(vm.name);
    });
    name.append(link);
    const state = document.createElement('td');
    state.append(badge(vm.state));
    tr.append(name, state, cell(vm.host), cell(bytes(vm.memoryBytes), 'num'),
      cell(vm.workload ? `${vm.workload.kind}${vm.workload.rate ? ` ${vm.workload.rate.toLocaleString()}/s` : ''}` : '-'),
      cell(vm.address ?? '-'), cell(vm.stats ? `${vm.stats.cpuPercent.toFixed(0)} %` : '-', 'num'),
      cell(vm.stats ? `${Math.round(vm.stats.dirtyPagesPerSec).toLocaleString()} pages/s` : '-', 'num'));
    const actions = document.createElement('td');
    actions.append(button('Watch', { watch: vm.name }, () => watch(vm.name)));
    if (vm.state === 'running') actions.append(' ', button('Pause', { pause: vm.name }, () => void action('pause', { vm: vm.name }).catch(failed)));
    if (vm.state === 'paused') actions.append(' ', button('Resume', { resume: vm.name }, () => void action('resume', { vm: vm.name }).catch(failed)));
    tr.append(actions);
    body.append(tr);
  }
}

async function showDetail(name: string): Promise<void> {
  detail = name;
  $('vm-detail').hidden = false;
  $('vm-detail-name').textContent = `${name}: recent events (vm.log)`;
  try {
    const info = await get<VmInfo & { log?: string[] }>(`/api/vm?name=${encodeURIComponent(name)}`);
    const known = logs.get(name) ?? [];
    logs.set(name, [...new Set([...(info.log ?? []), ...known])].slice(-40));
  } catch (error) {
    failed(error);
  }
  renderLog();
}

function renderLog(): void {
  if (detail !== undefined) $('vm-log').textContent = (logs.get(detail) ?? []).join('\n');
}

// ---- the event stream ----
let stream: EventSource | undefined;

function connect(): void {
  stream?.close();
  hosts.clear();
  const url = watched === undefined ? '/api/events' : `/api/events?heat=${encodeURIComponent(watched)}`;
  const source = new EventSource(url);
  stream = source;
  source.onopen = () => {
    // (Re)connected: the server sends its snapshot first, so the page rebuilds what it shows from it.
    $('connection').textContent = 'live';
    hosts.clear();
    migration.id = '';
  };
  source.onerror = () => {
    $('connection').textContent = 'reconnecting…';
  };
  source.onmessage = (message: MessageEvent<string>) => {
    const event = JSON.parse(message.data) as UiEvent;
    switch (event.kind) {
      case 'host':
        hosts.set(event.host, { info: event.info, vms: event.vms });
        renderHosts();
        renderVms();
        break;
      case 'host-down':
        hosts.set(event.host, { vms: [], down: event.error });
        renderHosts();
        renderVms();
        break;
      case 'log': {
        const lines = logs.get(event.name) ?? [];
        if (!lines.includes(event.line)) lines.push(event.line);
        logs.set(event.name, lines.slice(-40));
        if (event.name === detail) renderLog();
        break;
      }
      case 'migration':
        onMigration(event);
        break;
      case 'migration-end':
        onMigrationEnd(event);
        break;
      case 'heat':
        if (event.name !== watched) break;
        drawHeat(event, $<HTMLCanvasElement>('heat-writes'), $<HTMLCanvasElement>('heat-current'), $('heat-info'));
        if (event.migrating) {
          const canvas = $('heat-writes');
          const seen = new Set((canvas.dataset['migratingDigests'] ?? '').split(' ').filter(Boolean));
          seen.add(canvas.dataset['digest'] ?? '');
          canvas.dataset['migratingDigests'] = [...seen].slice(-50).join(' ');
        }
        break;
      case 'notice':
        notify(event.text, event.level);
        if (event.detail?.vm !== undefined && event.detail.vm === watched) $('report').textContent = event.text;
        break;
    }
  };
}

function watch(name: string): void {
  watched = name;
  $('watched').textContent = name;
  $('migrate-form').hidden = false;
  const select = $<HTMLSelectElement>('migrate-to');
  const current = [...hosts.values()].find((host) => host.info?.vms.some((vm) => vm.name === name))?.info?.name;
  select.replaceChildren(...clusterHosts.filter((host) => host.name !== current).map((host) => {
    const option = document.createElement('option');
    option.value = host.name;
    option.textContent = host.name;
    return option;
  }));
  $('migration-status').dataset['state'] = 'idle';
  switchTab('migration');
  connect();
}

function switchTab(tab: string): void {
  for (const section of document.querySelectorAll<HTMLElement>('.tab')) section.hidden = section.id !== `tab-${tab}`;
  for (const nav of document.querySelectorAll<HTMLElement>('#tabs button')) nav.classList.toggle('active', nav.dataset['tab'] === tab);
  if (tab === 'bench') void listBench($('bench-folders'), $('bench-view')).catch(failed);
}

function showLogin(why?: string): void {
  $('login').hidden = false;
  $('app').hidden = true;
  $('tabs').hidden = true;
  $('logout').hidden = true;
  if (why) $('login-why').textContent = why;
  stream?.close();
}

async function start(): Promise<void> {
  const info = await session();
  if (!info) {
    showLogin(new URLSearchParams(location.search).get('signin') === 'expired'
      ? 'That sign-in link was used already or is more than a minute old: run ferry ui again for a new one, or give the cluster token.'
      : undefined);
    return;
  }
  clusterHosts = info.hosts;
  $('login').hidden = true;
  $('app').hidden = false;
  $('tabs').hidden = false;
  $('logout').hidden = false;
  connect();
}

/** The migration's limits as the form gives them (as `ferry migrate --max-downtime --max-bandwidth`). */
function limits(): { maxDowntime: string; maxBandwidth?: string } {
  const bandwidth = $<HTMLInputElement>('migrate-bandwidth').value.trim();
  return { maxDowntime: $<HTMLInputElement>('migrate-downtime').value.trim(), ...(bandwidth ? { maxBandwidth: bandwidth } : {}) };
}

function wire(): void {
  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $<HTMLInputElement>('token');
    logIn(input.value).then(() => {
      input.value = '';
      return start();
    }).catch((error: unknown) => {
      $('login-error').textContent = error instanceof Error ? error.message : String(error);
    });
  });
  $('logout').addEventListener('click', () => void fetchLogout());
  for (const nav of document.querySelectorAll<HTMLElement>('#tabs button')) nav.addEventListener('click', () => switchTab(nav.dataset['tab'] ?? 'cluster'));
  $('forecast').addEventListener('click', () => {
    if (watched === undefined) return;
    const to = $<HTMLSelectElement>('migrate-to').value;
    $('forecast-text').textContent = `forecasting the migration of ${watched} to ${to}: sampling the VM, measuring the link…`;
    $('forecast-result').hidden = false;
    $('migrate-confirm').hidden = true;
    action<{ text: string; plan: { forecast: { bandwidthBytesPerSec: number } } }>('forecast', { vm: watched, to, ...limits() }).then((result) => {
      $('forecast-text').textContent = result.text;
      migration.linkBytesPerSec = result.plan.forecast.bandwidthBytesPerSec;
      $('migrate-confirm').hidden = false;
    }, (error: unknown) => {
      $('forecast-text').textContent = '';
      $('forecast-result').hidden = true;
      failed(error);
    });
  });
  $('migrate-confirm').addEventListener('click', () => {
    if (watched === undefined) return;
    $('forecast-result').hidden = true;
    action('migrate', { vm: watched, to: $<HTMLSelectElement>('migrate-to').value, ...limits() })
      .then(() => notify(`migrating ${watched ?? ''}`), failed);
  });
  $('forecast-close').addEventListener('click', () => {
    $('forecast-result').hidden = true;
  });
  $('cancel-migration').addEventListener('click', () => {
    if (watched !== undefined && window.confirm(`Cancel the migration of ${watched}? Unless it has committed, it keeps running on its source.`)) void action('cancel', { vm: watched }).catch(failed);
  });
  $('balance-plan').addEventListener('click', () => {
    $('balance').hidden = false;
    $('balance-text').textContent = 'planning…';
    action<{ text: string; plan: { moves: unknown[] } }>('balance', { apply: false }).then((result) => {
      $('balance-text').textContent = result.text;
      $('balance-apply').hidden = result.plan.moves.length === 0;
    }, failed);
  });
  $('balance-apply').addEventListener('click', () => {
    $('balance').hidden = true;
    void action('balance', { apply: true }).then(() => notify('balancing: moves under way'), failed);
  });
  $('balance-close').addEventListener('click', () => {
    $('balance').hidden = true;
  });
  $('bench-form').addEventListener('submit', (event) => {
    event.preventDefault();
    void openBench($<HTMLInputElement>('bench-dir').value, $('bench-view')).catch(failed);
  });
}

async function fetchLogout(): Promise<void> {
  await post('/api/logout', {}).catch(failed);
  showLogin('Signed out.');
}

wire();
void start().catch(failed);

/**
 * `ferry ui` in a real browser: headless Chromium from the distribution's packages (/usr/bin/chromium, or
 * $CHROMIUM_PATH), driven by playwright-core, against two real agents and the real `ferry ui` process. It signs in
 * with the printed link, starts a live migration from the page (forecast first), watches it progress and finish,
 * checks that the heat map changed while it ran, and saves a screenshot of it in progress ($FERRY_UI_SCREENSHOT, or
 * the test's folder). Every process it starts is stopped in afterAll, whatever happened.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectMemoryMatchesReplay, startCluster, waitForWrites, type TestCluster } from '../harness.js';

const ferryEntry = fileURLToPath(new URL('../../dist/coordinator/main.js', import.meta.url));
const chromiumPath = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium';
/** Long enough for a migration held to 2 MiB/s; a wait that runs out fails the test, it never measures anything. */
const WAIT = { timeout: 60_000 };

let cluster: TestCluster;
let ui: ChildProcess | undefined;
let browser: Browser | undefined;
let url = '';
let signIn = '';
let page: Page;

/** Starts `ferry ui --port 0` and reads the URL and the sign-in link it prints. */
async function startUi(): Promise<void> {
  const child = spawn(process.execPath, [ferryEntry, '--cluster', cluster.clusterFile, 'ui', '--port', '0', '--bench', path.join(cluster.dir, 'bench-results')], {
    stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FERRY_TOKEN: cluster.token },
  });
  ui = child;
  let printed = '';
  let errors = '';
  child.stderr!.setEncoding('utf8').on('data', (text: string) => (errors += text));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (text: string) => {
      printed += text;
      const link = /sign in \(once, within \d+ s\): (\S+)/.exec(printed);
      const served = /ferry ui: (\S+)/.exec(printed);
      if (link && served) {
        signIn = link[1]!;
        url = served[1]!;
        resolve();
      }
    });
    child.once('exit', (code) => reject(new Error(`ferry ui exited (${code}): ${printed}${errors}`)));
  });
}

beforeAll(async () => {
  if (!existsSync(chromiumPath)) throw new Error(`no Chromium at ${chromiumPath}: apt-get install -y chromium (or set CHROMIUM_PATH)`);
  cluster = await startCluster([{ name: 'host-a' }, { name: 'host-b' }]);
  const created = await cluster.ferry('vm', 'create', 'web1', '--on', 'host-a', '--memory', '32MiB', '--workload', 'pattern', '--rate', '200', '--wss', '8MiB', '--seed', '7');
  expect(created.code, created.stderr).toBe(0);
  await startUi();
  browser = await chromium.launch({ executablePath: chromiumPath, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
  page = await (await browser.newContext()).newPage();
});

afterAll(async () => {
  await browser?.close();
  if (ui && ui.exitCode === null) {
    const exited = new Promise((resolve) => ui!.once('exit', resolve));
    ui.kill('SIGTERM');
    await exited;
  }
  await cluster?.stop();
});

describe('ferry ui in headless Chromium', () => {
  it('asks a browser without a session for the cluster token, and prints no token', async () => {
    const fresh = await browser!.newContext();
    try {
      const other = await fresh.newPage();
      await other.goto(url);
      await other.locator('#login-form').waitFor({ state: 'visible' });
      expect(await other.locator('#app').isHidden()).toBe(true);
      expect(signIn).not.toContain(cluster.token);
    } finally {
      await fresh.close();
    }
  });

  it('signs in once with the printed link and lands on the dashboard with the hosts and VMs', async () => {
    await page.goto(signIn);
    expect(new URL(page.url()).pathname).toBe('/');
    await page.locator('#hosts tr[data-host="host-a"]').waitFor(WAIT);
    await page.locator('#hosts tr[data-host="host-b"]').waitFor(WAIT);
    await page.locator('#vms tr[data-vm="web1"]').waitFor(WAIT);
    expect(await page.locator('#vms tr[data-vm="web1"]').textContent()).toContain('host-a');
    const cookie = (await page.context().cookies()).find((c) => c.name === 'ferry_session');
    expect(cookie).toMatchObject({ httpOnly: true, sameSite: 'Strict' });

    // The same link a second time is spent: another browser lands on the sign-in form, told why.
    const fresh = await browser!.newContext();
    try {
      const other = await fresh.newPage();
      await other.goto(signIn);
      await other.locator('#login-form').waitFor({ state: 'visible' });
      expect(await other.locator('#login-why').textContent()).toContain('used already');
    } finally {
      await fresh.close();
    }
  });

  it('signs in with the cluster token typed into the page', async () => {
    const fresh = await browser!.newContext();
    try {
      const other = await fresh.newPage();
      await other.goto(url);
      await other.locator('#token').fill('not-the-token');
      await other.locator('#login-form button').click();
      await expect.poll(() => other.locator('#login-error').textContent(), WAIT).toContain('not the cluster');
      await other.locator('#token').fill(cluster.token);
      await other.locator('#login-form button').click();
      await other.locator('#vms tr[data-vm="web1"]').waitFor(WAIT);
    } finally {
      await fresh.close();
    }
  });

  it('refuses a change without the page\'s CSRF token, or from another origin', async () => {
    const withoutCsrf = await page.evaluate(async () => (await fetch('/api/action/pause', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"vm":"web1"}' })).status);
    expect(withoutCsrf).toBe(403);
    const cookie = (await page.context().cookies()).find((c) => c.name === 'ferry_session')!;
    const headers = { cookie: `ferry_session=${cookie.value}` };
    const { csrf } = await (await fetch(`${url}/api/session`, { headers })).json() as { csrf: string };
    const foreign = await fetch(`${url}/api/action/pause`, {
      method: 'POST', body: '{"vm":"web1"}', headers: { ...headers, 'content-type': 'application/json', 'x-ferry-csrf': csrf, origin: 'http://evil.example' },
    });
    expect(foreign.status).toBe(403);
    // A page of another name that resolves here (DNS rebinding) is refused by its Host header (fetch cannot set it).
    const rebound = await new Promise<number>((resolve, reject) => {
      http.get(`${url}/api/session`, { headers: { ...headers, host: 'evil.example' } }, (response) => {
        response.resume();
        resolve(response.statusCode ?? 0);
      }).on('error', reject);
    });
    expect(rebound).toBe(421);
  });

  it('migrates a VM from the page: forecast, then the stages, the rounds and the heat map live, then the report', async () => {
    await page.locator('button[data-watch="web1"]').click();
    await expect.poll(() => page.locator('#heat-writes').getAttribute('data-frames'), WAIT).not.toBeNull();
    await page.locator('#migrate-to').selectOption('host-b');
    // About 1,000 pages written (about 4 MiB), sent at 2 MiB/s: the migration lasts for several heat-map frames.
    await waitForWrites(cluster, 'web1', 1000);
    await page.locator('#migrate-bandwidth').fill('2MiB/s');
    await page.locator('#forecast').click();
    await page.locator('#migrate-confirm').waitFor({ state: 'visible', ...WAIT });
    expect(await page.locator('#forecast-text').textContent()).toContain('host-b');
    await page.locator('#migrate-confirm').click();

    await page.locator('#migration-status[data-state="running"]').waitFor({ state: 'attached', ...WAIT });
    await page.locator('#stage-timeline li[data-stage="2"].current').waitFor({ state: 'attached', ...WAIT });
    await expect.poll(() => page.locator('#progress').textContent(), WAIT).toMatch(/round \d+: [\d,]+ of [\d,]+ pages sent/);
    // Two different frames while pre-copy runs: the map moves as the rounds send pages.
    await expect.poll(async () => (await page.locator('#heat-writes').getAttribute('data-migrating-digests') ?? '').split(' ').filter(Boolean).length, WAIT).toBeGreaterThanOrEqual(2);
    const running = await page.locator('#migration-status').getAttribute('data-state');
    await page.locator('#chart-throughput svg').waitFor({ state: 'attached', ...WAIT });
    // The screenshot once round 1 is over (the rounds chart has a bar), or the migration ended: whichever comes first.
    await expect.poll(async () => (await page.locator('#chart-rounds svg').count()) > 0
      || (await page.locator('#migration-status').getAttribute('data-state')) !== 'running', WAIT).toBe(true);
    const shot = process.env['FERRY_UI_SCREENSHOT'] ?? path.join(cluster.dir, 'ui-migration.png');
    await page.screenshot({ path: shot, fullPage: true });
    expect(existsSync(shot)).toBe(true);

    await page.locator('#migration-status[data-state="committed"]').waitFor({ state: 'attached', ...WAIT });
    expect(running).toBe('running');
    expect(await page.locator('#stage-timeline li[data-stage="5"].done').count()).toBe(1);
    await expect.poll(() => page.locator('#report').textContent(), WAIT).toMatch(/committed/i);
    await expect.poll(() => page.locator('#vms tr[data-vm="web1"]').textContent(), WAIT).toContain('host-b');
    // The rounds chart and the throughput chart were drawn (Vega-Lite, as SVG).
    expect(await page.locator('#chart-rounds svg').count()).toBeGreaterThan(0);
    expect(await page.locator('#chart-throughput svg').count()).toBeGreaterThan(0);
    // The guest moved whole: its memory is what a replay of its writes says.
    await expectMemoryMatchesReplay(cluster, 'web1');
  });

  it('pauses and resumes a VM, plans a balance, and drains a host (after its confirmation) and undrains it, from the page', async () => {
    await page.locator('#tabs button[data-tab="cluster"]').click();
    const row = page.locator('#vms tr[data-vm="web1"]');
    await page.locator('button[data-pause="web1"]').click();
    await expect.poll(() => row.locator('.badge').textContent(), WAIT).toBe('paused');
    await page.locator('button[data-resume="web1"]').click();
    await expect.poll(() => row.locator('.badge').textContent(), WAIT).toBe('running');

    await page.locator('#balance-plan').click();
    await expect.poll(() => page.locator('#balance-text').textContent(), WAIT).not.toBe('planning…');
    await page.locator('#balance-close').click();

    // Drain asks first, as a page must before moving every VM off a host: declined, nothing happens; accepted, web1
    // (on host-b since the migration) moves back to host-a and host-b is in maintenance until undrained.
    page.once('dialog', (dialog) => void dialog.dismiss());
    await page.locator('button[data-drain="host-b"]').click();
    expect(await page.locator('button[data-undrain="host-b"]').count()).toBe(0);
    page.once('dialog', (dialog) => void dialog.accept());
    await page.locator('button[data-drain="host-b"]').click();
    await page.locator('button[data-undrain="host-b"]').waitFor(WAIT);
    await expect.poll(() => row.textContent(), WAIT).toContain('host-a');
    await page.locator('button[data-undrain="host-b"]').click();
    await page.locator('button[data-drain="host-b"]').waitFor(WAIT);
  });

  it('follows a post-copy started from the command line: the switch, the pages still at the source, then the report', async () => {
    // web1 is on host-a again (the drain above) and still watched. Held to 4 MiB/s, its 32 MiB take several seconds to
    // follow the switch, so the page sees the push under way.
    await page.locator('#tabs button[data-tab="migration"]').click();
    const migrating = cluster.ferry('migrate', 'web1', '--to', 'host-b', '--postcopy-after', '0', '--max-bandwidth', '4MiB/s', '--no-forecast', '--json');
    await page.locator('#stage-timeline li[data-stage="6"].current').waitFor({ state: 'attached', ...WAIT });
    await expect.poll(() => page.locator('#progress').textContent(), WAIT).toMatch(/^post-copy (progress|switched): [\d,]+ pages still at the source, [\d,]+ pushed, [\d,]+ asked for by faults/);
    const migrated = await migrating;
    expect(migrated.code, migrated.stderr).toBe(0);
    expect(migrated.json()).toMatchObject({ outcome: 'committed', postcopy: { complete: true } });
    await page.locator('#migration-status[data-state="committed"]').waitFor({ state: 'attached', ...WAIT });
    await expect.poll(() => page.locator('#report').textContent(), WAIT).toMatch(/^committed: 0 pre-copy rounds, post-copy after 0 round\(s\): [\d,]+ pages pushed, [\d,]+ asked for by [\d,]+ fault\(s\), downtime/);
    await expect.poll(() => page.locator('#vms tr[data-vm="web1"]').textContent(), WAIT).toContain('host-b');
    await expectMemoryMatchesReplay(cluster, 'web1');
  });

  it('opens a bench results folder: its summary\'s tables and its charts', async () => {
    const folder = path.join(cluster.dir, 'bench-results', 'run-1');
    await mkdir(path.join(folder, 'charts'), { recursive: true });
    await writeFile(path.join(folder, 'results.json'), JSON.stringify({ command: 'ferry bench --repeat 1', environment: {}, charts: ['throughput.svg'] }));
    await writeFile(path.join(folder, 'summary.md'), '# ferry benchmark results\n\n| scenario | downtime |\n|---|---:|\n| idle-256MiB | 12.5 ms |\n');
    await writeFile(path.join(folder, 'charts', 'throughput.svg'), '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>');
    await page.locator('#tabs button[data-tab="bench"]').click();
    await page.locator('#bench-folders a', { hasText: 'run-1' }).click();
    await expect.poll(() => page.locator('#bench-view table').textContent(), WAIT).toContain('idle-256MiB');
    const chart = page.locator('#bench-view img[alt="throughput.svg"]');
    await chart.waitFor(WAIT);
    await expect.poll(() => chart.evaluate((image) => (image as unknown as { complete: boolean; naturalWidth: number }).complete && (image as unknown as { naturalWidth: number }).naturalWidth), WAIT).toBe(10);
  });
});

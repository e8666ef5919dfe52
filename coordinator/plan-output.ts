/**
 * `ferry migrate NAME --to HOST --plan`: the forecast, readable. `--json` prints the PlannedMigration itself.
 */
import { PAGE_SIZE } from '../shared/constants.js';
import { formatBytes, formatDuration, formatRate } from '../shared/units.js';
import type { PlannedMigration } from './forecast.js';
import { formatTable } from './output.js';
import { stopReasonText } from './report.js';

const int = (value: number): string => Math.round(value).toLocaleString('en-US');

/** Which path the link measurement took, as a migration report says it (report.ts): older agents do not say. */
function measuredPath(link: PlannedMigration['link']): string {
  if (link.pageStream === 'tcp') return ', on a TCP stream of its own';
  if (link.pageStream === 'ws') return `, on the peer WebSocket${link.pageStreamFallback ? ` (no stream of its own: ${link.pageStreamFallback})` : ''}`;
  return '';
}

export function formatPlan(plan: PlannedMigration): string {
  const { forecast, stats, link } = plan;
  const lines: string[] = [];
  lines.push(`forecast for a live migration of ${plan.vm}: ${plan.from} -> ${plan.to}   ${forecast.converges ? 'CONVERGES' : 'DOES NOT CONVERGE'} (nothing moved)`);
  if (forecast.postcopy) {
    lines.push(`  switches to post-copy after ${forecast.postcopy.afterRounds} round(s)${forecast.precopyConverges === false ? ': pre-copy alone would not converge' : ''}`);
  } else {
    lines.push(`  pre-copy would end: ${stopReasonText[forecast.stopReason]}`);
  }
  const rows = [['round', 'pages', 'took', 'dirty after', 'throttle']];
  for (const round of forecast.roundsDetail) rows.push([String(round.round), int(round.pages), formatDuration(round.ms), int(round.dirtyPagesAfter), round.throttlePct > 0 ? `${round.throttlePct} %` : '-']);
  lines.push('', ...formatTable(rows, [1, 2, 3, 4]).split('\n').map((line) => `    ${line}`), '');
  const facts: [string, string][] = [
    ['total time', formatDuration(forecast.totalTimeMs)],
    ['downtime', `${formatDuration(forecast.downtimeMs)}${forecast.postcopy ? ' (the post-copy switch)' : ''}`],
    ['sent', forecast.postcopy
      ? `${formatBytes(forecast.bytes)} in ${forecast.rounds} round(s) and post-copy's push of ${int(forecast.postcopy.missingPages)} page(s) (${formatDuration(forecast.postcopy.durationMs)})`
      : `${formatBytes(forecast.bytes)} in ${forecast.rounds} round(s) and the stop-and-copy`],
    ['guest', stats
      ? `${int(stats.dirtyPagesPerSec)} page writes/s over a working set of ${formatBytes(stats.wssPages * PAGE_SIZE)} (${stats.model}, fitted to ${stats.curve.map((point) => `${int(point.pages)} pages in ${Math.round(point.ms)} ms`).join(', ')}); vCPU ${stats.cpuPercent.toFixed(0)} % busy`
      : 'no measured dirty rate (paused, or just started): assumed to write nothing'],
    ['link', `${link.recent?.roundOneBytesPerSec !== undefined ? `${formatRate(link.recent.roundOneBytesPerSec)} in round 1 of the last ${link.recent.migrations} migration(s) here, used; measured now: ` : ''}${formatRate(link.bytesPerSec)} page stream (${formatBytes(link.bytes)} in ${formatDuration(link.ms)}${measuredPath(link)}), ${formatRate(link.scatteredBytesPerSec)} for scattered pages, round trip ${formatDuration(link.rttMs)}${plan.forecast.bandwidthBytesPerSec < (link.recent?.roundOneBytesPerSec ?? link.bytesPerSec) ? `; --max-bandwidth holds it to ${formatRate(forecast.bandwidthBytesPerSec)}` : ''}`],
    ['fixed costs', `setup ${formatDuration(forecast.overheadMs.setupMs)}, pause ${formatDuration(forecast.overheadMs.pausedMs)}, after ${formatDuration(forecast.overheadMs.tailMs)}${link.ageMs > 0 ? `; link measured ${formatDuration(link.ageMs)} ago` : ''}${link.recent ? ` (from the last ${link.recent.migrations} migration(s) ${plan.from} -> ${plan.to})` : ''}`],
  ];
  if (forecast.throttlePct > 0) facts.push(['auto-converge', `the vCPU held back by up to ${forecast.throttlePct} %`]);
  if (forecast.storageMs !== undefined) facts.push(['disk copy', formatDuration(forecast.storageMs)]);
  const width = Math.max(...facts.map(([label]) => label.length));
  lines.push(...facts.map(([label, value]) => `  ${label.padEnd(width)}  ${value}`));
  if (forecast.advice.length > 0) lines.push('', '  advice', ...forecast.advice.map((line) => `    - ${line}`));
  return lines.join('\n');
}

#!/usr/bin/env node
// Forecast against outcome, from a `ferry bench` results.json: each run's forecast (made just before its migration,
// from the VM's measured stats and a fresh link measurement) beside what happened, and whether the targets are met
// (total time within 15 %; downtime within 5 ms or 25 %).
//
//   node dist/coordinator/main.js bench --scenario idle-256m hot-1g over-link --repeat 3 --out /tmp/fc
//   node scripts/forecast-error.mjs /tmp/fc/results.json
import { readFileSync } from 'node:fs';

const file = process.argv[2];
if (!file) {
  process.stderr.write('usage: node scripts/forecast-error.mjs BENCH_OUT/results.json\n');
  process.exit(2);
}
const { runs } = JSON.parse(readFileSync(file, 'utf8'));
const ms = (value) => (value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${value.toFixed(1)} ms`);
const pct = (value) => `${value >= 0 ? '+' : ''}${(value * 100).toFixed(0)} %`;
const rows = [['scenario', 'run', 'total: forecast', 'actual', 'off', 'downtime: forecast', 'actual', 'off', 'rounds f/a', 'ended by f/a', 'total ok', 'downtime ok']];
let totalOk = 0;
let downOk = 0;
let counted = 0;
for (const run of runs) {
  if (!run.forecast || run.outcome !== 'committed') continue;
  counted += 1;
  const totalMet = Math.abs(run.forecastError.totalTime) <= 0.15;
  const downMet = Math.abs(run.forecastError.downtimeMs) <= 5 || Math.abs(run.forecastError.downtime) <= 0.25;
  totalOk += totalMet ? 1 : 0;
  downOk += downMet ? 1 : 0;
  rows.push([
    run.scenario, String(run.repeat), ms(run.forecast.totalTimeMs), ms(run.totalTimeMs), pct(run.forecastError.totalTime),
    ms(run.forecast.downtimeMs), ms(run.downtimeMs), `${run.forecastError.downtimeMs >= 0 ? '+' : ''}${run.forecastError.downtimeMs.toFixed(1)} ms`,
    `${run.forecast.rounds}/${run.rounds.length}`, `${run.forecast.stopReason}/${run.stopReason ?? '-'}`, totalMet ? 'yes' : 'no', downMet ? 'yes' : 'no',
  ]);
}
process.stdout.write(`${rows.map((row) => `| ${row.join(' | ')} |`).join('\n').replace(/\n/, `\n|${rows[0].map(() => '---').join('|')}|\n`)}\n`);
process.stdout.write(`\n${counted} runs: total time within 15 % in ${totalOk}; downtime within 5 ms or 25 % in ${downOk}\n`);

#!/bin/bash
# Forecast against outcome between two long-lived agents (docs/PERFORMANCE.md, "Forecasts"): a pattern VM (1 GiB,
# RATE page writes/s into a 64 MiB working set; default 20,000) migrated back and forth RUNS times (default 6) with
# `ferry migrate --json`, which forecasts first and reports the forecast beside what happened; then RUNS more with
# --no-forecast, to see what the forecast costs a migration. One JSON line per migration.
# Run after `npm ci` (or `npm run build`), from the repository's root.
set -euo pipefail
export FERRY_TOKEN=$(openssl rand -hex 32)
D=$(mktemp -d); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; rm -rf "$D"' EXIT
for h in host-a host-b; do node --single-threaded --no-lazy dist/agent/main.js --name $h --port 0 --capacity 3GiB --datastore $D/$h > $D/$h.out 2>$D/$h.log & PIDS+=($!); done
sleep 2
F="node dist/coordinator/main.js --cluster $D/c.json"
for h in host-a host-b; do $F hosts add $h $(grep -o 'ws://[0-9.:]*' $D/$h.out) >/dev/null; done
$F vm create web1 --on host-a --memory 1GiB --rate ${RATE:-20000} --wss 64MiB --prealloc >/dev/null
sleep 3
row() { node -e "
const r = JSON.parse(require('fs').readFileSync(0, 'utf8')); const f = r.forecast;
const off = (a, b) => +(((a - b) / b) * 100).toFixed(1);
console.log(JSON.stringify({ with: '$1', outcome: r.outcome, totalMs: Math.round(r.totalTimeMs), downtimeMs: +r.downtimeMs.toFixed(1), rounds: r.rounds.length,
  ...(f ? { forecastTotalMs: Math.round(f.totalTimeMs), totalOffPct: off(f.totalTimeMs, r.totalTimeMs), forecastDowntimeMs: +f.downtimeMs.toFixed(1),
    downtimeOffMs: +(f.downtimeMs - r.downtimeMs).toFixed(1), forecastRounds: f.rounds, forecastTookMs: Math.round(f.tookMs) } : {}) }))"; }
to=host-b
flip() { if [ $to = host-b ]; then to=host-a; else to=host-b; fi; }
for i in $(seq 1 ${RUNS:-6}); do $F migrate web1 --to $to --json --quiet | row forecast; flip; sleep 1; done
for i in $(seq 1 ${RUNS:-6}); do $F migrate web1 --to $to --json --quiet --no-forecast | row none; flip; sleep 1; done

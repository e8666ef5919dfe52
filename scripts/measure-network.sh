#!/bin/bash
# What a client of a kv VM sees (docs/PERFORMANCE.md, "The guest network"): two long-lived agents on this machine,
# a 256 MiB kv VM, 5 live migrations back and forth with default options, each under `ferry vm probe` at
# 1,000 requests/s; then the same VM outside migration, at rising rates. Prints one JSON line per run.
# Run after `npm ci` (or `npm run build`), from the repository's root.
set -euo pipefail
export FERRY_TOKEN=$(openssl rand -hex 32)
DIR=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT
ferry() { node dist/coordinator/main.js --cluster "$DIR/cluster.json" "$@"; }
for host in host-a host-b; do
  node --single-threaded --no-lazy dist/agent/main.js --name $host --port 0 --datastore "$DIR/$host" > "$DIR/$host.log" 2>&1 &
  PIDS+=($!)
done
for host in host-a host-b; do
  until grep -q '"event":"ready"' "$DIR/$host.log"; do sleep 0.1; done
  ferry hosts add $host "$(grep -o 'ws://[0-9.:]*' "$DIR/$host.log" | head -1)" > /dev/null
done
ferry vm create kv1 --on host-a --memory 256MiB --workload kv --ip 127.100.0.50 > /dev/null
ferry vm probe kv1 --rate 1000 --duration 3s --json > /dev/null   # warm up: the table's pages, the JIT
to=host-b
for run in 1 2 3 4 5; do
  ferry vm probe kv1 --rate 1000 --duration 4s --json > "$DIR/probe.json" &
  probe=$!
  sleep 1.5
  ferry migrate kv1 --to $to --json > "$DIR/migration.json" 2> /dev/null
  wait $probe
  node -e "
    const p = require('$DIR/probe.json'), m = require('$DIR/migration.json'), r = (v) => Math.round(v * 10) / 10;
    console.log(JSON.stringify({ run: $run, to: '$to', outageMs: r(p.longestGapMs), downtimeMs: r(m.downtimeMs), guestBlackoutMs: r(m.guestBlackoutMs),
      servingAfterPauseMs: r(m.network.servingAfterPauseMs), forwarded: m.network.forwarded, unanswered: p.unanswered, lostWrites: p.writes.lost,
      p99Ms: p.latencyMs.p99, retries: p.retries }));"
  if [ $to = host-b ]; then to=host-a; else to=host-b; fi
  sleep 1
done
for rate in 1000 5000 10000 20000 30000 40000 60000; do
  ferry vm probe kv1 --rate $rate --duration 5s --json | node -e "
    let s = ''; process.stdin.on('data', (d) => (s += d)).on('end', () => { const p = JSON.parse(s);
    console.log(JSON.stringify({ rate: $rate, sent: p.sent, answered: p.answered, unanswered: p.unanswered, retries: p.retries,
      p50Ms: p.latencyMs.p50, p99Ms: p.latencyMs.p99, p999Ms: p.latencyMs.p999, maxMs: p.latencyMs.max })); });"
done

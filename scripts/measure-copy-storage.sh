#!/bin/bash
# Downtime of a live migration with --copy-storage beside the same VM's memory-only migration (docs/PERFORMANCE.md,
# "Live migration with --copy-storage"): two long-lived agents with shared storage on this machine, a 256 MiB pattern
# VM with a 1 GiB disk written at 2,000 blocks/s; RUNS migrations back and forth with the disk on shared storage
# (memory only), then the disk moved to the datastore and RUNS migrations with --copy-storage in each mode. Default
# options otherwise. Prints one JSON line per migration, then the disk's check against replay.
# Run after `npm ci` (or `npm run build`), from the repository's root.
set -euo pipefail
export FERRY_TOKEN=$(openssl rand -hex 32)
D=$(mktemp -d); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; rm -rf "$D"' EXIT
for h in host-a host-b; do node --single-threaded --no-lazy dist/agent/main.js --name $h --port 0 --datastore $D/$h --shared-storage $D/shared > $D/$h.out 2>$D/$h.log & PIDS+=($!); done
sleep 2
F="node dist/coordinator/main.js --cluster $D/c.json"
for h in host-a host-b; do $F hosts add $h $(grep -o 'ws://[0-9.:]*' $D/$h.out) >/dev/null; done
$F vm create db1 --on host-a --memory 256MiB --rate 2000 --wss 32MiB --disk 1GiB --disk-rate 2000 --disk-wss 256MiB >/dev/null
sleep 3
row() { node -e "const r=JSON.parse(require('fs').readFileSync(0,'utf8')); const s=r.storage; console.log(JSON.stringify({mode:'$1', outcome:r.outcome, downtimeMs:+r.downtimeMs.toFixed(1), blackoutMs:+r.guestBlackoutMs.toFixed(1), totalMs:Math.round(r.totalTimeMs), ready: s? Math.round(s.readyAtMs):undefined, paused: s? s.disks[0].pausedBlocks:undefined, mirrored: s? s.disks[0].mirroredWrites: undefined, copyMBs: s? +(s.disks[0].throughputBytesPerSec/1e6).toFixed(1):undefined}))"; }
to=host-b
for i in $(seq 1 ${RUNS:-5}); do $F migrate db1 --to $to --json | row memory-only; if [ $to = host-b ]; then to=host-a; else to=host-b; fi; sleep 1; done
$F storage move db1 --to local >/dev/null
for mode in mirror iterate; do for i in $(seq 1 ${RUNS:-5}); do $F migrate db1 --to $to --copy-storage --storage-mode $mode --json | row $mode; if [ $to = host-b ]; then to=host-a; else to=host-b; fi; sleep 1; done; done
$F vm check db1 | tail -1

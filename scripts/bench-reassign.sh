#!/usr/bin/env bash
# Reassignment benchmark (issue 15): a partition holding SIZE_MB (default 1024) MiB on one broker
# of a 3-broker cluster is moved onto the two others (RF 1 -> RF 2) with `spate reassign` while a
# fixed-rate acks=all producer (spate bench e2e, 1000 msgs/s) writes to it. Prints the time from
# --execute until --verify reports completion, and the producer's latency without a move and
# during it.
#
# Usage: scripts/bench-reassign.sh [path/to/spate]   (default: target/release/spate)
# Everything runs on 127.0.0.1 with temporary data directories, removed at exit.
set -euo pipefail
SPATE=${1:-${CARGO_TARGET_DIR:-target}/release/spate}
[ -x "$SPATE" ] || { echo "build first: cargo build --release -p spate-cli ($SPATE missing)" >&2; exit 1; }
SIZE_MB=${SIZE_MB:-1024}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

Q=1@127.0.0.1:29291,2@127.0.0.1:29292,3@127.0.0.1:29293
for i in 1 2 3; do
  "$SPATE" broker --node-id $i --listen 127.0.0.1:2920$i --controller-quorum $Q --data-dir "$WORK/n$i" \
    --set min.insync.replicas=1 --set broker.session.timeout.ms=4000 --set broker.heartbeat.interval.ms=500 \
    > "$WORK/n$i.log" 2>&1 &
  PIDS+=($!)
done
for i in 1 2 3; do wait_port 2920$i; done
BOOT=127.0.0.1:29201,127.0.0.1:29202,127.0.0.1:29203
sleep 2

"$SPATE" topics --bootstrap-server $BOOT --create big --partitions 1 --replication-factor 1
FROM=$("$SPATE" topics --bootstrap-server $BOOT --describe --topic big | awk -F'\t' '/Partition: 0\t/ {for (i=1;i<=NF;i++) if ($i ~ /^Leader: /) {sub("Leader: ","",$i); print $i}}')
TO=$(for b in 1 2 3; do [ "$b" != "$FROM" ] && echo $b; done | paste -sd, -)
echo "== filling big-0 on broker $FROM with $SIZE_MB MiB"
"$SPATE" bench produce --bootstrap-server $BOOT --topic big --records $((SIZE_MB * 1024)) --record-size 1024 --acks 1 | tail -3
du -sh "$WORK/n$FROM/big-0"

echo "== producer latency without a move (1000 msgs/s, acks=all, 10 s)"
"$SPATE" bench e2e --bootstrap-server $BOOT --topic big --rate 1000 --duration-s 10 --timeout-ms 30000

echo "== moving big-0 from broker $FROM to [$TO] while the producer runs"
echo "{\"version\":1,\"partitions\":[{\"topic\":\"big\",\"partition\":0,\"replicas\":[$TO]}]}" > "$WORK/plan.json"
"$SPATE" bench e2e --bootstrap-server $BOOT --topic big --rate 1000 --duration-s 40 --timeout-ms 30000 > "$WORK/e2e.txt" 2>&1 &
BENCH=$!
sleep 3
START=$(date +%s.%N)
"$SPATE" reassign --bootstrap-server $BOOT --execute "$WORK/plan.json"
until "$SPATE" reassign --bootstrap-server $BOOT --verify "$WORK/plan.json" > /dev/null 2>&1; do sleep 0.2; done
END=$(date +%s.%N)
printf "reassignment of %s MiB completed in %.2f s\n" "$SIZE_MB" "$(echo "$END - $START" | bc)"
wait $BENCH
echo "== producer latency over the 40 s that include the move"
cat "$WORK/e2e.txt"
"$SPATE" topics --bootstrap-server $BOOT --describe --topic big

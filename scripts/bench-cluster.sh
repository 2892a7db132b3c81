#!/usr/bin/env bash
# Replication benchmark (issue 4): acks=all produce throughput and latency on a single node and on
# a 3-broker RF=3 cluster in the same run, then failover time: a fixed-rate acks=all producer
# runs while the leader of partition 0 is killed; the worst acknowledgement latency is the time
# from the kill to the first successful produce on the partitions that broker led.
#
# Usage: scripts/bench-cluster.sh [path/to/spate]   (default: target/release/spate)
# Everything runs on 127.0.0.1 with temporary data directories, removed at exit.
set -euo pipefail
SPATE=${1:-${CARGO_TARGET_DIR:-target}/release/spate}
[ -x "$SPATE" ] || { echo "build first: cargo build --release -p spate-cli ($SPATE missing)" >&2; exit 1; }
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
RECORDS=${RECORDS:-2000000}
COMMON=(--set default.replication.factor=3 --set min.insync.replicas=2 --set broker.session.timeout.ms=2000
        --set broker.heartbeat.interval.ms=200 --set replica.lag.time.max.ms=5000)

wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

echo "== single node, acks=all"
"$SPATE" broker --listen 127.0.0.1:29092 --data-dir "$WORK/single" > "$WORK/single.log" 2>&1 &
PIDS+=($!); SINGLE=$!
wait_port 29092
"$SPATE" bench produce --bootstrap-server 127.0.0.1:29092 --records "$RECORDS" --acks all --broker-pid "$SINGLE"
kill "$SINGLE"; wait "$SINGLE" 2>/dev/null || true

echo "== 3 brokers, RF=3, min.insync.replicas=2, acks=all"
Q=1@127.0.0.1:29191,2@127.0.0.1:29192,3@127.0.0.1:29193
for i in 1 2 3; do
  "$SPATE" broker --node-id $i --listen 127.0.0.1:2910$i --controller-quorum $Q --data-dir "$WORK/n$i" "${COMMON[@]}" > "$WORK/n$i.log" 2>&1 &
  PIDS+=($!); eval "PID$i=$!"
done
for i in 1 2 3; do wait_port 2910$i; done
BOOT=127.0.0.1:29101,127.0.0.1:29102,127.0.0.1:29103
sleep 2
"$SPATE" bench produce --bootstrap-server $BOOT --records "$RECORDS" --acks all --broker-pid "$PID1"
"$SPATE" bench e2e --bootstrap-server $BOOT --rate 5000 --duration-s 10

echo "== failover: e2e at 2000 msgs/s, acks=all; the leader of partition 0 is killed after 4 s"
"$SPATE" topics --bootstrap-server $BOOT --create failover --partitions 6 --replication-factor 3
LEADER=$("$SPATE" topics --bootstrap-server $BOOT --describe --topic failover | awk -F'\t' '/Partition: 0\t/ {for (i=1;i<=NF;i++) if ($i ~ /^Leader: /) {sub("Leader: ","",$i); print $i}}')
"$SPATE" bench e2e --bootstrap-server $BOOT --topic failover --rate 2000 --duration-s 12 --timeout-ms 30000 &
BENCH=$!
sleep 5
echo "killing broker $LEADER (leader of failover-0) at $(date +%T.%N)"
eval "kill -9 \$PID$LEADER"
wait $BENCH
echo "(max ack latency above = time from the kill to the first successful produce on its partitions)"

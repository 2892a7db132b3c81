#!/usr/bin/env bash
# File -> topic benchmark (issue 11): `spate connect` with a FileStreamSource connector, the same
# with one Rhai transform, and side by side in the same run rsyslog's imfile -> omkafka, all
# shipping the same pre-generated file of 100-byte lines (99 bytes + '\n') to one fresh
# `spate broker` on this box, each to its own topic. A run is timed from the shipper's start until
# the sum of its topic's high watermarks reaches the line count (scripts/bench_connect.py polls
# it every 10 ms); peak RSS is the shipper's VmHWM read just before it is stopped.
#
# Usage: scripts/bench-connect.sh [--lines N] [--spate PATH] [--partitions N]
#          [--broker-set KEY=VALUE]... [--connect-set KEY=VALUE]... [--timeout-s S]
#          [--skip-spate] [--skip-rhai] [--skip-rsyslog] [--keep]
#   --lines N        lines in the file (default 2000000, i.e. 200 MB)
#   --spate PATH     the spate binary (default $CARGO_TARGET_DIR/release/spate or target/release/spate)
#   --partitions N   partitions of each benchmark topic (default 1)
#   --broker-set     a broker config for the fresh broker, e.g. log.flush.mode=page-cache
#                    (default: the broker's defaults, i.e. fsync before acknowledging acks=all)
#   --connect-set    a worker config passed to `spate connect --set`
#   --keep           keep the temporary directory (logs, broker data) and print its path
# Needs: python3 with confluent-kafka ($PYTHON, else <repo>/.venv/bin/python, else python3), and
# rsyslog + rsyslog-kafka (installed with apt-get when missing; that needs root or sudo, and on a
# host with systemd Debian's package also enables the system's rsyslog service; this script never
# touches that service: its rsyslogd runs in the foreground with its own config, pid file, work
# directory and state files under the temporary directory).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
LINES=2000000
PARTITIONS=1
TIMEOUT_S=600
SPATE=""
BROKER_SET=()
CONNECT_SET=()
SKIP_SPATE=0 SKIP_RHAI=0 SKIP_RSYSLOG=0 KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --lines) LINES=$2; shift 2 ;;
    --spate) SPATE=$2; shift 2 ;;
    --partitions) PARTITIONS=$2; shift 2 ;;
    --timeout-s) TIMEOUT_S=$2; shift 2 ;;
    --broker-set) BROKER_SET+=(--set "$2"); shift 2 ;;
    --connect-set) CONNECT_SET+=(--set "$2"); shift 2 ;;
    --skip-spate) SKIP_SPATE=1; shift ;;
    --skip-rhai) SKIP_RHAI=1; shift ;;
    --skip-rsyslog) SKIP_RSYSLOG=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-connect: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ $LINES =~ ^[1-9][0-9]*$ ]] || { echo "bench-connect: --lines must be a positive number, got $LINES" >&2; exit 2; }
SPATE=${SPATE:-${CARGO_TARGET_DIR:-$REPO/target}/release/spate}
[ -x "$SPATE" ] || { echo "bench-connect: $SPATE missing; build it: cargo build --release -p spate-cli, or pass --spate PATH" >&2; exit 1; }

if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" -c 'import confluent_kafka' 2>/dev/null \
  || { echo "bench-connect: $PYTHON cannot import confluent_kafka (pip install confluent-kafka, or set PYTHON=)" >&2; exit 1; }
HELPER=("$PYTHON" "$REPO/scripts/bench_connect.py")

# rsyslog and its Kafka output, from Debian's packages.
omkafka_installed() { command -v rsyslogd >/dev/null && dpkg-query -W -f='${Status}' rsyslog-kafka 2>/dev/null | grep -q 'install ok installed'; }
if [ $SKIP_RSYSLOG = 0 ] && ! omkafka_installed; then
  echo "== installing rsyslog and rsyslog-kafka with apt-get"
  SUDO=()
  [ "$(id -u)" = 0 ] || SUDO=(sudo)
  if ! { "${SUDO[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends rsyslog rsyslog-kafka; } \
     || ! omkafka_installed; then
    echo "bench-connect: could not install rsyslog-kafka (need apt-get with root or sudo on Debian/Ubuntu); rerun with --skip-rsyslog to measure spate alone" >&2
    exit 1
  fi
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-connect.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  if [ $KEEP = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "bench-connect: port $1 never opened" >&2; return 1; }

echo "== machine"
echo "cpus: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
DEV=$(df --output=source "$WORK" | tail -1)
echo "disk (temp dir $WORK): $DEV, $(df -h --output=size,avail "$WORK" | tail -1 | awk '{print $1 " size, " $2 " free"}'), $(lsblk -dno MODEL,ROTA "$DEV" 2>/dev/null | awk '{r=$NF; $NF=""; print ($0 == "" ? "model unknown" : $0) (r == 1 ? ", rotational" : ", non-rotational")}' || echo 'model unknown')"
echo "kernel: $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== versions"
echo "spate: $("$SPATE" --version)"
echo "confluent-kafka (watermark polling): $("$PYTHON" -c 'import confluent_kafka as c; print(c.version()[0], "/ librdkafka", c.libversion()[0])')"
if [ $SKIP_RSYSLOG = 0 ]; then
  echo "rsyslog: $(rsyslogd -v | head -1)"
  echo "packages: $(dpkg-query -W -f='${Package} ${Version}, ' rsyslog rsyslog-kafka librdkafka1 2>/dev/null | sed 's/, $//')"
fi

echo "== generating $LINES lines of 100 bytes"
FILE=$WORK/input.log
"${HELPER[@]}" gen --lines "$LINES" --out "$FILE"
echo "$FILE: $(stat -c %s "$FILE") bytes (in the page cache: every shipper reads it from memory)"

PORT=$(free_port)
BOOT=127.0.0.1:$PORT
echo "== spate broker on $BOOT (data in $WORK/broker) ${BROKER_SET[*]:-}"
"$SPATE" broker --listen "$BOOT" --data-dir "$WORK/broker" "${BROKER_SET[@]}" > "$WORK/broker.log" 2>&1 &
BROKER=$!
PIDS+=("$BROKER")
wait_port "$PORT"
for t in bench-spate bench-spate-rhai bench-rsyslog; do
  "$SPATE" topics --bootstrap-server "$BOOT" --create "$t" --partitions "$PARTITIONS" --replication-factor 1 >/dev/null
done

RESULTS=$WORK/results.jsonl
: > "$RESULTS"
FAILED=0
# ship LABEL TOPIC LOG -- COMMAND...: time one shipper; a failure is recorded and the run goes on.
ship() {
  local label=$1 topic=$2 log=$3
  shift 4
  echo "== $label -> $topic"
  if ! "${HELPER[@]}" run --bootstrap "$BOOT" --topic "$topic" --lines "$LINES" --label "$label" \
       --results "$RESULTS" --log "$log" --broker-pid "$BROKER" --timeout-s "$TIMEOUT_S" -- "$@"; then
    FAILED=1
    echo "-- last lines of $log:"; tail -n 20 "$log" || true
  fi
}

if [ $SKIP_SPATE = 0 ]; then
  if ! "$SPATE" connect --help >/dev/null 2>&1; then
    echo "bench-connect: $SPATE has no 'connect' subcommand; skipping the spate runs" >&2
    FAILED=1
  else
    PLUGIN_ARGS=()
    [ -d "$REPO/plugins" ] && PLUGIN_ARGS=(--plugin-path "$REPO/plugins")
    # One run per connector, each a fresh worker in its own group with its own internal topics,
    # so neither sees the other's connector or offsets.
    spate_run() {
      local run=$1 label=$2 topic=$3 rhai=$4
      "$PYTHON" - "$WORK/$run.json" "$run" "$FILE" "$topic" "$rhai" <<'EOF'
import json, sys
out, name, path, topic, rhai = sys.argv[1:]
config = {"connector.class": "FileStreamSource", "file": path, "topic": topic, "batch.size": "10000"}
if rhai == "1":
    config.update({"transforms": "r", "transforms.r.type": "Rhai",
                   "transforms.r.source": 'fn transform(record) { record.value = record.value + "!"; record }'})
json.dump({"name": name, "config": config}, open(out, "w"), indent=2)
EOF
      ship "$label" "$topic" "$WORK/$run.log" -- \
        "$SPATE" connect --bootstrap-server "$BOOT" --listen "127.0.0.1:$(free_port)" --group-id "$run" \
          "${PLUGIN_ARGS[@]}" --set "config.storage.topic=$run-configs" --set "offset.storage.topic=$run-offsets" \
          --set "status.storage.topic=$run-status" "${CONNECT_SET[@]}" "$WORK/$run.json"
    }
    spate_run bench-file "spate connect FileStreamSource" bench-spate 0
    if [ $SKIP_RHAI = 0 ]; then spate_run bench-file-rhai "spate connect FileStreamSource + Rhai" bench-spate-rhai 1; fi
  fi
fi

if [ $SKIP_RSYSLOG = 0 ]; then
  RS=$WORK/rsyslog
  mkdir -p "$RS/work"
  # Everything in its own ruleset with its own queue, so rsyslog's internal messages (which go to
  # the default ruleset) never reach the topic and the record count stays exact.
  cat > "$RS/rsyslog.conf" <<EOF
global(workDirectory="$RS/work")
main_queue(queue.type="LinkedList" queue.size="1000000" queue.dequeueBatchSize="10000")
module(load="imfile" mode="inotify")
module(load="omkafka")
template(name="bench_line" type="string" string="%msg%")
ruleset(name="bench" queue.type="LinkedList" queue.size="1000000" queue.dequeueBatchSize="10000") {
  action(type="omkafka" broker=["$BOOT"] topic="bench-rsyslog" template="bench_line"
         partitions.auto="on"
         confParam=["queue.buffering.max.ms=5", "batch.num.messages=10000",
                    "queue.buffering.max.messages=1000000", "acks=all"])
}
input(type="imfile" file="$FILE" tag="bench" ruleset="bench" readMode="0" freshStartTail="off")
EOF
  rsyslogd -N1 -f "$RS/rsyslog.conf" > "$RS/check.log" 2>&1 \
    || { echo "bench-connect: rsyslog rejected its config:" >&2; cat "$RS/check.log" >&2; exit 1; }
  ship "rsyslog imfile -> omkafka" bench-rsyslog "$RS/rsyslogd.log" -- \
    rsyslogd -n -f "$RS/rsyslog.conf" -i "$RS/rsyslogd.pid"
fi

echo "== figures ($LINES lines x 100 B = $(awk -v n="$LINES" 'BEGIN {printf "%.1f", n*100/1048576}') MiB)"
echo "MiB/s and lines/s: over wall s, from the shipper's start (a new Connect worker group's first join waits the"
echo "broker's group.initial.rebalance.delay.ms, 3 s by default); steady: from the first record on the topic to the last."
echo "CPU s: the shipper's user+system time (all threads); broker CPU s: the broker's over the same run."
"${HELPER[@]}" table --results "$RESULTS"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); broker peak RSS: $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' "/proc/$BROKER/status")"
exit $FAILED

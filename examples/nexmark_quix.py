"""Nexmark q7 (highest bid per 10 s tumbling window) or a bid count per 10 s tumbling window in
Quix Streams, over the `nexmark-events` topic that `cargo run --release -p spate-examples
--example nexmark` generates: the same input and the same plan as the Rust example's q7 (bids
regrouped under one key through a repartition topic, a tumbling window with grace, final
results only), for a side-by-side records/s figure.

    python examples/nexmark_quix.py --bootstrap-server 127.0.0.1:9092 [--agg max|count] \
        [--grace-ms 2000] [--timeout-s 120]

Prints input events/s over the time from start until every event, and every regrouped bid,
has been processed, and the peak RSS (VmHWM) of the process.
"""

import argparse
import os
import threading
import time

from confluent_kafka import Consumer, TopicPartition
from quixstreams import Application

EVENTS_TOPIC = "nexmark-events"


def end_offsets(bootstrap: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"nexmark-quix-probe-{os.getpid()}"})
    md = c.list_topics(EVENTS_TOPIC, timeout=10)
    total = 0
    for p in md.topics[EVENTS_TOPIC].partitions:
        _, high = c.get_watermark_offsets(TopicPartition(EVENTS_TOPIC, p), timeout=10)
        total += high
    c.close()
    return total


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap-server", default="127.0.0.1:9092")
    ap.add_argument("--agg", choices=["max", "count"], default="max")
    ap.add_argument("--grace-ms", type=int, default=2000)
    ap.add_argument("--timeout-s", type=float, default=120)
    args = ap.parse_args()

    events = end_offsets(args.bootstrap_server)
    print(f"{events} events in {EVENTS_TOPIC}")
    app = Application(
        broker_address=args.bootstrap_server,
        consumer_group=f"nexmark-quix-{os.getpid()}-{int(time.time())}",
        auto_offset_reset="earliest",
        commit_interval=1.0,
        state_dir=f"/tmp/nexmark-quix-state-{os.getpid()}",
        loglevel="ERROR",
    )
    # Counters: events read, bids sent to the repartition topic, bids read back.
    counts = {"source": 0, "before": 0, "after": 0, "outputs": 0}

    def inc(name):
        def f(value):
            counts[name] += 1

        return f

    topic = app.topic(EVENTS_TOPIC, value_deserializer="json", key_deserializer="bytes")
    output = app.topic(f"nexmark-quix-q7-{os.getpid()}-out", value_serializer="json")
    sdf = app.dataframe(topic)
    sdf = sdf.update(inc("source"))
    sdf = sdf.filter(lambda v: "bid" in v).apply(lambda v: v["bid"])
    sdf = sdf.update(inc("before"))
    sdf = sdf.group_by(lambda v: "all", name="nexmark-bids-all")
    sdf = sdf.update(inc("after"))
    window = sdf.tumbling_window(duration_ms=10_000, grace_ms=args.grace_ms)
    if args.agg == "max":
        window = window.reduce(
            reducer=lambda agg, b: b if b["price"] > agg["price"] else agg,
            initializer=lambda b: b,
        )
    else:
        window = window.count()
    sdf = window.final()
    sdf = sdf.update(inc("outputs"))
    sdf.to_topic(output)

    started = time.monotonic()
    done = {}

    def watch():
        last = None
        while True:
            time.sleep(0.02)
            snap = (counts["source"], counts["before"], counts["after"])
            if snap[0] >= events and snap[2] >= snap[1] and snap == last:
                done["at"] = time.monotonic()
                app.stop()
                return
            if time.monotonic() - started > args.timeout_s:
                done["timeout"] = snap
                app.stop()
                return
            last = snap

    threading.Thread(target=watch, daemon=True).start()
    app.run()
    if "timeout" in done:
        raise SystemExit(f"not done within {args.timeout_s} s: counters {done['timeout']}")
    elapsed = done["at"] - started
    print(
        f"quixstreams q7 ({args.agg}): {events} events in {elapsed:.2f} s: "
        f"{events / elapsed:.0f} events/s; {counts['after']} bids regrouped, "
        f"{counts['outputs']} window results; peak RSS {peak_rss_mib():.0f} MiB"
    )


if __name__ == "__main__":
    main()

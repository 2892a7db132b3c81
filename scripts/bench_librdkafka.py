#!/usr/bin/env python3
"""librdkafka benchmarks against a Spate broker (issue 5), driven through confluent-kafka.

  consume  fill a topic (6 partitions) with --records 100-byte records (with `spate bench produce`,
           or confluent-kafka when the spate binary is missing or --fill-with confluent), then read
           everything from the beginning with a tuned Consumer and print msgs/s and MB/s.
  e2e      a confluent-kafka producer (acks=all, linger.ms=0) sends 100-byte records at --rate for
           --duration-s seconds, each carrying its *scheduled* send instant; a consumer thread in
           the same process computes latency from that instant to receipt, so a producer that
           falls behind its schedule shows up in the figures (no coordinated omission).

Run with the project's venv, e.g.
  .venv/bin/python scripts/bench_librdkafka.py --bootstrap 127.0.0.1:9092 consume --records 3000000
  .venv/bin/python scripts/bench_librdkafka.py --bootstrap 127.0.0.1:9092 e2e --rate 5000 --duration-s 15

Every client setting used is printed before the run. --broker-pid adds the broker's CPU use
(from /proc/PID/stat) next to this process's, which tells whether the client or the broker is
the bottleneck on a small machine.
"""

import argparse
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

RECORD_BYTES = 100
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Consumer tuned for throughput: librdkafka otherwise stops prefetching once its local queue
# holds queued.min.messages (default 100000) and then backs off fetch.queue.backoff.ms (default
# 1000 ms), which caps a fast reader far below what the broker can serve.
CONSUME_THROUGHPUT_CONFIG = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "enable.partition.eof": False,
    "queued.min.messages": 1000000,
    "queued.max.messages.kbytes": 1048576,  # 1 GiB cap on the prefetch queue (KiB)
    "fetch.queue.backoff.ms": 0,
    "fetch.wait.max.ms": 10,
    "fetch.min.bytes": 1,
    "fetch.max.bytes": 52428800,
    "max.partition.fetch.bytes": 8388608,
    "receive.message.max.bytes": 104857600,
    "check.crcs": False,
    "socket.nagle.disable": True,
}

# Low-latency consumer for e2e: a short fetch wait so an idle long-poll returns quickly even if
# the broker did not wake it, and no queue backoff.
CONSUME_LATENCY_CONFIG = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "enable.partition.eof": False,
    "fetch.wait.max.ms": 100,
    "fetch.min.bytes": 1,
    "fetch.queue.backoff.ms": 0,
    "fetch.error.backoff.ms": 10,
    "socket.nagle.disable": True,
}

# acks=all, no lingering; enable.idempotence is left at librdkafka's default (false).
PRODUCE_LATENCY_CONFIG = {
    "acks": "all",
    "linger.ms": 0,
    "socket.nagle.disable": True,
}

PRODUCE_FILL_CONFIG = {
    "acks": 1,
    "linger.ms": 5,
    "batch.size": 1000000,
    "batch.num.messages": 100000,
    "queue.buffering.max.messages": 2000000,
    "queue.buffering.max.kbytes": 1048576,
    "socket.nagle.disable": True,
}


def print_config(name, config):
    print(f"{name} settings:")
    for key in sorted(config):
        print(f"  {key}={config[key]}")


def proc_cpu_s(pid):
    """User+system CPU seconds of a process (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # after the ")" the fields start at field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu_s():
    t = os.times()
    return t.user + t.system


def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil(n * p / 100)
    return sorted_values[int(min(rank, len(sorted_values))) - 1]


def create_topic(bootstrap, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    for f in futures.values():
        try:
            f.result(timeout=30)
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise


def partitions_of(client, topic):
    deadline = time.monotonic() + 30
    while True:
        md = client.list_topics(topic, timeout=10)
        t = md.topics.get(topic)
        if t is not None and t.error is None and t.partitions:
            return sorted(t.partitions)
        if time.monotonic() > deadline:
            raise SystemExit(f"topic {topic} has no metadata: {t.error if t else 'missing'}")
        time.sleep(0.2)


def fill_with_confluent(bootstrap, topic, records, partitions):
    create_topic(bootstrap, topic, partitions)
    config = {"bootstrap.servers": bootstrap, **PRODUCE_FILL_CONFIG}
    print_config("fill producer (confluent-kafka)", config)
    producer = Producer(config)
    value = b"x" * RECORD_BYTES
    start = time.perf_counter()
    for i in range(records):
        while True:
            try:
                producer.produce(topic, value, partition=i % partitions)
                break
            except BufferError:
                producer.poll(0.01)
    left = producer.flush(120)
    if left:
        raise SystemExit(f"fill: {left} records not delivered")
    elapsed = time.perf_counter() - start
    print(f"fill: {records} records in {elapsed:.2f} s ({records / elapsed:,.0f} msgs/s)")


def cmd_consume(args):
    topic = args.topic or f"librd-consume-{uuid.uuid4().hex[:8]}"
    if not args.skip_fill:
        use_spate = args.fill_with == "spate" or (args.fill_with == "auto" and shutil.which(args.spate))
        if use_spate:
            cmd = [args.spate, "bench", "produce", "--bootstrap-server", args.bootstrap, "--topic", topic,
                   "--records", str(args.records), "--record-size", str(RECORD_BYTES),
                   "--partitions", str(args.partitions), "--acks", "1"]
            print("fill:", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if args.quiet_fill else None)
        else:
            fill_with_confluent(args.bootstrap, topic, args.records, args.partitions)

    config = {"bootstrap.servers": args.bootstrap, "group.id": f"librd-bench-{uuid.uuid4().hex[:8]}",
              **CONSUME_THROUGHPUT_CONFIG}
    print_config("consumer", config)
    print(f"loop: consume(num_messages={args.batch}, timeout=1.0), counting len() of each batch only")
    consumer = Consumer(config)
    parts = partitions_of(consumer, topic)
    expected = 0
    for p in parts:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        expected += high - low
    if args.records_to_read:
        expected = min(expected, args.records_to_read)
    print(f"topic {topic}: {len(parts)} partitions, reading {expected:,} records", flush=True)

    broker_cpu0 = proc_cpu_s(args.broker_pid) if args.broker_pid else None
    cpu0 = self_cpu_s()
    start = time.perf_counter()
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    count = 0
    first_at = None
    idle_since = time.perf_counter()
    consume = consumer.consume
    batch = args.batch
    while count < expected:
        msgs = consume(num_messages=batch, timeout=1.0)
        if not msgs:
            if time.perf_counter() - idle_since > args.idle_timeout_s:
                print(f"gave up after {args.idle_timeout_s} s without a record", file=sys.stderr)
                break
            continue
        if first_at is None:
            first_at = time.perf_counter()
        last = msgs[-1]
        if last.error() is not None:
            raise SystemExit(f"consume error: {last.error()}")
        count += len(msgs)
        idle_since = time.perf_counter()
    end = time.perf_counter()
    cpu = self_cpu_s() - cpu0
    broker_cpu = proc_cpu_s(args.broker_pid) - broker_cpu0 if args.broker_pid else None
    consumer.close()

    elapsed = end - start
    mb = count * RECORD_BYTES / 1e6
    print(f"consumed {count:,} records in {elapsed:.3f} s: {count / elapsed:,.0f} msgs/s, "
          f"{mb / elapsed:,.1f} MB/s (values only)")
    if first_at is not None and end > first_at:
        print(f"  from first record: {end - first_at:.3f} s, {count / (end - first_at):,.0f} msgs/s")
    print(f"  client process CPU: {cpu:.2f} s ({100 * cpu / elapsed:.0f}% of one core)")
    if broker_cpu is not None:
        print(f"  broker pid {args.broker_pid} CPU: {broker_cpu:.2f} s ({100 * broker_cpu / elapsed:.0f}% of one core)")


def cmd_e2e(args):
    topic = args.topic or f"librd-e2e-{uuid.uuid4().hex[:8]}"
    create_topic(args.bootstrap, topic, args.partitions)
    pconfig = {"bootstrap.servers": args.bootstrap, **PRODUCE_LATENCY_CONFIG}
    cconfig = {"bootstrap.servers": args.bootstrap, "group.id": f"librd-e2e-{uuid.uuid4().hex[:8]}",
               **CONSUME_LATENCY_CONFIG}
    print_config("producer", pconfig)
    print_config("consumer", cconfig)
    print("consumer loop: poll(0.1) per record in a thread; producer paced by schedule with sleep, "
          "poll(0) after each produce")

    producer = Producer(pconfig)
    consumer = Consumer(cconfig)
    parts = partitions_of(consumer, topic)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])

    # value: 8-byte scheduled perf_counter_ns, 1-byte phase (0 = warm-up, 1 = measured), padding
    pad = b"x" * (RECORD_BYTES - 9)
    latencies_ns = []
    warm_seen = threading.Event()
    stop = threading.Event()
    consumer_errors = []

    def consume_loop():
        now_ns = time.perf_counter_ns
        unpack = struct.unpack_from
        while not stop.is_set():
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            t = now_ns()
            if msg.error() is not None:
                consumer_errors.append(str(msg.error()))
                continue
            sched, phase = unpack(">qB", msg.value())
            if phase:
                latencies_ns.append(t - sched)
            else:
                warm_seen.set()

    ack_ns = []
    delivery_errors = []

    def on_delivery(err, msg):
        if err is not None:
            delivery_errors.append(str(err))
            return
        sched, phase = struct.unpack_from(">qB", msg.value())
        if phase:
            ack_ns.append(time.perf_counter_ns() - sched)

    consumer_thread = threading.Thread(target=consume_loop, daemon=True)
    consumer_thread.start()

    # Warm-up: connections, metadata and the consumer's first fetches, until a record round-trips.
    warm_deadline = time.monotonic() + 30
    while not warm_seen.is_set():
        producer.produce(topic, struct.pack(">qB", time.perf_counter_ns(), 0) + pad, on_delivery=on_delivery)
        producer.poll(0.05)
        if time.monotonic() > warm_deadline:
            raise SystemExit("warm-up: no record came back within 30 s")
    time.sleep(0.5)

    interval_ns = 1_000_000_000 // args.rate
    total = int(args.rate * args.duration_s)
    print(f"sending {total:,} records at {args.rate}/s for {args.duration_s} s to {topic} "
          f"({len(parts)} partitions)", flush=True)
    produce = producer.produce
    poll = producer.poll
    now_ns = time.perf_counter_ns
    cpu0 = self_cpu_s()
    broker_cpu0 = proc_cpu_s(args.broker_pid) if args.broker_pid else None
    start_ns = now_ns() + 1_000_000
    max_behind_ns = 0
    for i in range(total):
        sched = start_ns + i * interval_ns
        wait = sched - now_ns()
        if wait > 0:
            time.sleep(wait / 1e9)
        else:
            max_behind_ns = max(max_behind_ns, -wait)
        produce(topic, struct.pack(">qB", sched, 1) + pad, on_delivery=on_delivery)
        poll(0)
    send_end_ns = now_ns()
    left = producer.flush(30)
    drain_deadline = time.monotonic() + 10
    while len(latencies_ns) < total - len(delivery_errors) and time.monotonic() < drain_deadline:
        time.sleep(0.01)
    stop.set()
    consumer_thread.join()
    elapsed = (now_ns() - start_ns) / 1e9
    cpu = self_cpu_s() - cpu0
    broker_cpu = proc_cpu_s(args.broker_pid) - broker_cpu0 if args.broker_pid else None
    consumer.close()

    actual_rate = total / ((send_end_ns - start_ns) / 1e9)
    print(f"sent {total:,} (actual send rate {actual_rate:,.0f}/s, worst lag behind schedule "
          f"{max_behind_ns / 1e6:.3f} ms), acked {len(ack_ns):,}, received {len(latencies_ns):,}, "
          f"delivery errors {len(delivery_errors)}, consumer errors {len(consumer_errors)}, unflushed {left}")
    for name, values in (("e2e (scheduled send -> consumer receipt)", latencies_ns),
                         ("ack (scheduled send -> delivery report)", ack_ns)):
        s = sorted(values)
        if not s:
            print(f"{name}: no samples")
            continue
        fig = "  ".join(f"{label} {percentile(s, p) / 1e6:.3f}"
                        for label, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9)))
        print(f"{name} ms: {fig}  max {s[-1] / 1e6:.3f}")
    print(f"  client process CPU: {cpu:.2f} s ({100 * cpu / elapsed:.0f}% of one core)")
    if broker_cpu is not None:
        print(f"  broker pid {args.broker_pid} CPU: {broker_cpu:.2f} s ({100 * broker_cpu / elapsed:.0f}% of one core)")
    if delivery_errors[:3] or consumer_errors[:3]:
        print("errors:", delivery_errors[:3], consumer_errors[:3])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092", help="bootstrap.servers (default %(default)s)")
    ap.add_argument("--topic", help="topic (default: a fresh random name per run)")
    ap.add_argument("--partitions", type=int, default=6, help="partitions when creating the topic")
    ap.add_argument("--spate", default="/work/spate-target/release/spate", help="spate binary used to fill")
    ap.add_argument("--broker-pid", type=int, help="also report this process's CPU use (the broker's)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("consume", help="fill a topic, then read it from the beginning")
    c.add_argument("--records", type=int, default=3_000_000, help="records to fill (default %(default)s)")
    c.add_argument("--skip-fill", action="store_true", help="read --topic as it is")
    c.add_argument("--fill-with", choices=("auto", "spate", "confluent"), default="auto")
    c.add_argument("--quiet-fill", action="store_true", help="hide the fill tool's output")
    c.add_argument("--records-to-read", type=int, help="stop after this many (default: all)")
    c.add_argument("--batch", type=int, default=500,
                   help="num_messages per consume() call; a few hundred is fastest, 100000 is ~2x slower "
                        "(each batch's Message objects no longer fit in cache)")
    c.add_argument("--idle-timeout-s", type=float, default=10.0)

    e = sub.add_parser("e2e", help="fixed-rate acks=all producer and a consumer; latency percentiles")
    e.add_argument("--rate", type=int, default=5000, help="records per second (default %(default)s)")
    e.add_argument("--duration-s", type=float, default=15.0, help="seconds of measured sending")

    args = ap.parse_args()
    print(f"confluent-kafka {__import__('confluent_kafka').version()[0]}, "
          f"librdkafka {__import__('confluent_kafka').libversion()[0]}, bootstrap {args.bootstrap}")
    {"consume": cmd_consume, "e2e": cmd_e2e}[args.cmd](args)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Spate beside a peer broker (issue 16): the same load against both, broker CPU and throughput.

For each broker in turn (Spate, then the peer; --runs times, interleaved so machine noise hits
both alike), on 127.0.0.1 with a port chosen at run time and a temporary data directory:

  spate-produce   `spate bench produce` (acks=all, --records of 100 bytes, 6 partitions)
  spate-consume   `spate bench consume` of that topic from the beginning
  rdkafka-produce --producers confluent-kafka processes (spawned, acks=all) into a fresh topic
  rdkafka-consume one confluent-kafka consumer (the tuned settings of bench_librdkafka.py)

and reads the broker's CPU time (utime + stime of every thread, /proc/PID/stat) before and after
each phase. It prints records/s and broker CPU seconds per million records per phase and broker,
and the ratios Spate/peer. Spate runs in its default `log.flush.mode=fsync` (every acks=all batch
is on disk before it is acknowledged) unless --spate-set says otherwise; the peer runs however its
command line says (Tansu/nisshi's `memory://` engine keeps nothing on disk).

  .venv/bin/python scripts/bench_peer.py --spate target/release/spate \\
      --peer-cmd '/path/nisshi broker --listener-url tcp://127.0.0.1:{port} \\
                  --advertised-listener-url tcp://127.0.0.1:{port} --storage-engine memory://t/'

`{port}` and `{data}` (a fresh temporary directory) are filled in. Everything started is killed at
exit. --json writes every measurement.
"""

import argparse
import json
import multiprocessing
import os
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

CLK_TCK = os.sysconf("SC_CLK_TCK")
RECORD_BYTES = 100
PARTITIONS = 6


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_s(pid):
    """User+system CPU seconds of a process (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def client_cpu_s():
    """CPU seconds of this script and every child it has waited for (bench and client processes)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def wait_port(port, proc, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"broker exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


class Broker:
    def __init__(self, name, argv, port, data, log_path):
        self.name, self.port, self.data = name, port, data
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(port, self.proc)
        self.bootstrap = f"127.0.0.1:{port}"

    def cpu_s(self):
        return proc_cpu_s(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# --- confluent-kafka phases (each producer in its own spawned process: librdkafka is not
# fork-safe, and one Python producer process tops out near 1M msgs/s) ---

def _rdkafka_produce(bootstrap, topic, records, offset, queue):
    from confluent_kafka import Producer

    producer = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 1000000,
        "queue.buffering.max.messages": 1000000,
        "queue.buffering.max.kbytes": 1048576,
        "enable.idempotence": False,
        "socket.nagle.disable": True,
    })
    value = b"x" * RECORD_BYTES
    failed = [0]

    def on_delivery(err, _msg):
        if err is not None:
            failed[0] += 1

    for i in range(records):
        while True:
            try:
                producer.produce(topic, value, partition=(offset + i) % PARTITIONS, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.005)
    left = producer.flush(300)
    queue.put((left, failed[0]))


def rdkafka_produce(bootstrap, topic, records, producers):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)]).values():
        f.result(timeout=30)
    time.sleep(0.5)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    share = records // producers
    procs = [ctx.Process(target=_rdkafka_produce, args=(bootstrap, topic, share, i * share, queue))
             for i in range(producers)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join()
    lost = sum(left + failed for left, failed in results)
    if lost:
        raise SystemExit(f"rdkafka produce: {lost} records not delivered")
    return share * producers, elapsed


def rdkafka_consume(bootstrap, topic, records):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-peer-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "queued.min.messages": 1000000,
        "queued.max.messages.kbytes": 1048576,
        "fetch.queue.backoff.ms": 0,
        "fetch.wait.max.ms": 10,
        "fetch.max.bytes": 52428800,
        "max.partition.fetch.bytes": 8388608,
        "receive.message.max.bytes": 104857600,
        "check.crcs": False,
        "socket.nagle.disable": True,
    })
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    got = 0
    start = time.perf_counter()
    last = start
    while got < records:
        msgs = consumer.consume(num_messages=10000, timeout=0.1)
        now = time.perf_counter()
        for m in msgs:
            if m.error() is None:
                got += 1
        if msgs:
            last = now
        elif now - last > 20:
            raise SystemExit(f"rdkafka consume: stuck at {got} of {records}")
    elapsed = time.perf_counter() - start
    consumer.close()
    return got, elapsed


def spate_bench(spate, args, json_path):
    subprocess.run([spate, "bench", *args, "--json", json_path], check=True, stdout=subprocess.DEVNULL)
    with open(json_path) as f:
        return json.load(f)


def run_phases(spate, broker, opts, work):
    """Every phase against one broker; returns {phase: {records, elapsed_s, broker_cpu_s}}."""
    out = {}

    def measure(phase, fn):
        cpu0, client0 = broker.cpu_s(), client_cpu_s()
        records, elapsed = fn()
        cpu, client = broker.cpu_s() - cpu0, client_cpu_s() - client0
        out[phase] = {"records": records, "elapsed_s": elapsed, "broker_cpu_s": cpu, "client_cpu_s": client}
        print(f"  {broker.name:>6} {phase:<16} {records / elapsed:>12,.0f} rec/s   "
              f"broker CPU {cpu:6.2f} s ({cpu / records * 1e6:.2f} s per M records), "
              f"clients {client:6.2f} s", flush=True)

    topic = f"peer-{uuid.uuid4().hex[:8]}"
    boot = ["--bootstrap-server", broker.bootstrap]

    def produce():
        r = spate_bench(spate, ["produce", *boot, "--topic", topic, "--records", str(opts.records),
                                "--acks", "all", "--partitions", str(PARTITIONS)], os.path.join(work, "p.json"))
        return r["records"], r["elapsed_ms"] / 1000

    def consume():
        r = spate_bench(spate, ["consume", *boot, "--topic", topic, "--records", str(opts.records)],
                        os.path.join(work, "c.json"))
        return r["records"], r["elapsed_ms"] / 1000

    measure("spate-produce", produce)
    measure("spate-consume", consume)
    rtopic = f"peer-rd-{uuid.uuid4().hex[:8]}"
    measure("rdkafka-produce", lambda: rdkafka_produce(broker.bootstrap, rtopic, opts.records, opts.producers))
    measure("rdkafka-consume", lambda: rdkafka_consume(broker.bootstrap, rtopic, opts.records))
    out["peak_rss_mib"] = peak_rss_mib(broker.proc.pid)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spate", default="target/release/spate", help="spate binary (broker and bench)")
    ap.add_argument("--peer-cmd", required=True, help="the peer broker's command line; {port} and {data} are filled in")
    ap.add_argument("--peer-name", default="peer")
    ap.add_argument("--spate-set", action="append", default=[], help="extra `spate broker --set k=v`")
    ap.add_argument("--records", type=int, default=3_000_000)
    ap.add_argument("--producers", type=int, default=2, help="confluent-kafka producer processes")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--json", help="write every measurement here")
    opts = ap.parse_args()
    spate = os.path.abspath(opts.spate)
    if not os.access(spate, os.X_OK):
        raise SystemExit(f"{spate}: not an executable (cargo build --release -p spate-cli)")

    results = {"spate": [], opts.peer_name: []}
    work = tempfile.mkdtemp(prefix="bench-peer-")
    brokers = []
    try:
        for run in range(opts.runs):
            print(f"== run {run + 1} of {opts.runs}", flush=True)
            for name in ("spate", opts.peer_name):
                port = free_port()
                data = tempfile.mkdtemp(dir=work)
                if name == "spate":
                    argv = [spate, "broker", "--listen", f"127.0.0.1:{port}", "--data-dir", data]
                    for kv in opts.spate_set:
                        argv += ["--set", kv]
                else:
                    argv = [a.replace("{port}", str(port)).replace("{data}", data) for a in shlex.split(opts.peer_cmd)]
                broker = Broker(name, argv, port, data, os.path.join(work, f"{name}-{run}.log"))
                brokers.append(broker)
                try:
                    results[name].append(run_phases(spate, broker, opts, work))
                finally:
                    broker.stop()
                    shutil.rmtree(data, ignore_errors=True)
    finally:
        for b in brokers:
            b.stop()

    print()
    print(f"{'phase':<16} {'spate rec/s':>14} {opts.peer_name + ' rec/s':>14} {'ratio':>6}   "
          f"{'spate CPU/M':>11} {opts.peer_name + ' CPU/M':>11} {'ratio':>6} {'client CPU/M':>12} {'bound':>6}")
    phases = ["spate-produce", "spate-consume", "rdkafka-produce", "rdkafka-consume"]
    summary = {}
    for phase in phases:
        def best(name, key):
            vals = [r[phase] for r in results[name]]
            rate = max(v["records"] / v["elapsed_s"] for v in vals)
            cpu = min(v["broker_cpu_s"] / v["records"] * 1e6 for v in vals)
            return rate if key == "rate" else cpu
        s_rate, p_rate = best("spate", "rate"), best(opts.peer_name, "rate")
        s_cpu, p_cpu = best("spate", "cpu"), best(opts.peer_name, "cpu")
        # The clients share the cores with the broker: when the cores are saturated, the rate is
        # at most cores / (client + broker CPU per record), so even a broker that used no CPU
        # at all could be at most (client + peer broker) / client times as fast as the peer.
        client = min(v[phase]["client_cpu_s"] / v[phase]["records"] * 1e6 for v in results["spate"])
        bound = (client + p_cpu) / client if client else float("inf")
        summary[phase] = {"rate_ratio": s_rate / p_rate, "cpu_ratio": s_cpu / p_cpu if p_cpu else float("inf"),
                          "client_cpu_s_per_m": client, "rate_ratio_bound_zero_cpu_broker": bound}
        print(f"{phase:<16} {s_rate:>14,.0f} {p_rate:>14,.0f} {s_rate / p_rate:>6.2f}   "
              f"{s_cpu:>11.2f} {p_cpu:>11.2f} {summary[phase]['cpu_ratio']:>6.2f} {client:>12.2f} {bound:>6.2f}")
    total = {name: min(sum(r[p]["broker_cpu_s"] for p in phases) for r in results[name]) for name in results}
    print(f"broker CPU over all four phases (best run): spate {total['spate']:.2f} s, "
          f"{opts.peer_name} {total[opts.peer_name]:.2f} s, ratio {total['spate'] / total[opts.peer_name]:.2f}")
    print("peak RSS (MiB): " + ", ".join(
        f"{n} {max(r['peak_rss_mib'] for r in results[n]):.0f}" for n in results))
    print("(rate: best run, higher is better; CPU/M: broker CPU seconds per million records, best run, lower is better;\n"
          " client CPU/M: the load generators' CPU seconds per million records against Spate; bound: the rate ratio a\n"
          " broker using no CPU at all could reach over the peer while the cores are saturated, (client + peer) / client)")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"results": results, "summary": summary, "cpu_total_s": total, "records": opts.records}, f, indent=1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

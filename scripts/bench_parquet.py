#!/usr/bin/env python3
"""Benchmark of the Parquet sink (issue 12): topic -> Parquet records/s for 10-field JSON records.

Starts a `spate broker` and one `spate connect` worker on loopback ports in a temp directory,
produces --records 10-field JSON records (about 200 bytes each) round-robin into a topic of
--partitions partitions with confluent-kafka, then creates a ParquetSink connector
(StringConverter values: the raw-bytes fast path) and times it until every record is in a visible
.parquet file (row counts read from the files' footers). Prints:

  records/s and MB/s (JSON bytes in) from the first record the task read (its status metrics) to
  the last file committed, and from the POST (group join and start-up included); the worker's peak
  RSS (VmHWM) and CPU seconds, the broker's CPU seconds, the files' count and size.

The binary: --binary, else the release build when it is newer than every connect/ source file,
else the debug build (said in the output: debug figures are not the product's).
With --perf, `perf record -g` samples the worker while it drains and the top symbols are printed.

  python3 scripts/bench_parquet.py --records 1000000 --partitions 6
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", "/work/spate-target"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
EPOCH_MS = 1_709_622_000_000


def row(i: int) -> str:
    return (
        f'{{"id":{i},"user":"u{i % 1000}","amount":{i % 997}.25,"qty":{i % 13},"ok":{"true" if i % 2 else "false"},'
        f'"country":"{("FR", "DE", "US")[i % 3]}","ts":{EPOCH_MS + i},"sku":"sku-{i % 50}","score":{i % 101},'
        f'"note":"n{i % 7}"}}'
    )


def pick_binary(explicit):
    if explicit:
        return explicit, "given"
    release, debug = TARGET / "release" / "spate", TARGET / "debug" / "spate"
    newest_src = max(p.stat().st_mtime for p in (REPO / "connect" / "src").rglob("*.rs"))
    if release.exists() and release.stat().st_mtime >= newest_src:
        return str(release), "release"
    return str(debug), "debug (no fresh release build: figures are not representative)"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_s(pid):
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return None


def hwm_mib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def wait_port(port, proc, what, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not listen on {port}")


def http(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read()
            return r.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


class Rows:
    """Rows in visible .parquet files, each footer read once."""

    def __init__(self, root):
        import pyarrow.parquet as pq

        self.pq, self.root, self.seen = pq, root, {}

    def count(self):
        for p in self.root.rglob("*.parquet"):
            if p not in self.seen:
                self.seen[p] = self.pq.ParquetFile(p).metadata.num_rows
        return sum(self.seen.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--tasks", type=int, default=1)
    ap.add_argument("--compression", default="zstd")
    ap.add_argument("--files-per-partition", type=int, default=4, help="flush.size = records/partitions/this")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra connector config, e.g. consumer.override.max.poll.records=5000")
    ap.add_argument("--binary")
    ap.add_argument("--perf", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = ap.parse_args()
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    binary, kind = pick_binary(args.binary)
    # Whole files only (no tail left open waiting for a rotation): records rounded down to a multiple
    # of partitions * files per partition.
    flush_size = max(1, args.records // args.partitions // args.files_per_partition)
    n = flush_size * args.files_per_partition * args.partitions
    work = Path(tempfile.mkdtemp(prefix="bench-parquet-"))
    procs = []
    try:
        bport, wport = free_port(), free_port()
        bootstrap = f"127.0.0.1:{bport}"
        broker = subprocess.Popen(
            [binary, "broker", "--data-dir", str(work / "broker"), "--listen", bootstrap,
             "--set", "group.initial.rebalance.delay.ms=0"],
            stdout=open(work / "broker.log", "wb"), stderr=subprocess.STDOUT)
        procs.append(broker)
        wait_port(bport, broker, "the broker")
        conf = {"bootstrap.servers": bootstrap, "broker.address.family": "v4"}
        # Keep the client referenced until the future resolves: a collected AdminClient cancels it.
        admin = AdminClient(conf)
        admin.create_topics([NewTopic("bench", num_partitions=args.partitions, replication_factor=1)])["bench"].result(30)
        t = time.monotonic()
        p = Producer({**conf, "linger.ms": 20, "batch.num.messages": 10000, "queue.buffering.max.messages": 1_000_000,
                      "compression.type": "none"})
        value_bytes = 0
        for i in range(n):
            v = row(i).encode()
            value_bytes += len(v)
            while True:
                try:
                    p.produce("bench", v, partition=i % args.partitions)
                    break
                except BufferError:
                    p.poll(0.05)
        if p.flush(120) != 0:
            sys.exit("not every record was produced")
        del p, admin  # librdkafka handles would log the broker's shutdown
        print(f"produced {n} records ({value_bytes / 1e6:.1f} MB of JSON) in {time.monotonic() - t:.1f}s")
        worker = subprocess.Popen(
            [binary, "connect", "--bootstrap-server", bootstrap, "--listen", f"127.0.0.1:{wport}",
             "--group-id", "bench", "--plugin-path", str(REPO / "plugins"),
             "--set", "offset.flush.interval.ms=1000"],
            stdout=open(work / "connect.log", "wb"), stderr=subprocess.STDOUT, cwd=REPO)
        procs.append(worker)
        wait_port(wport, worker, "the worker")
        url = f"http://127.0.0.1:{wport}"
        lake = work / "lake"
        config = {"connector.class": "ParquetSink", "topics": "bench", "path": str(lake), "tasks.max": str(args.tasks),
                  "flush.size": str(flush_size), "compression": args.compression,
                  "value.converter": "org.apache.kafka.connect.storage.StringConverter",
                  **dict(kv.split("=", 1) for kv in args.set)}
        broker_cpu0 = cpu_s(broker.pid)
        deadline = time.monotonic() + 60
        while True:
            status, body = http("POST", f"{url}/connectors", {"name": "pq", "config": config})
            if status == 201:
                break
            if time.monotonic() > deadline:
                sys.exit(f"creating the connector: {status} {body}")
            time.sleep(0.3)
        posted = time.monotonic()
        perf = None
        rows = Rows(lake)
        first_read = None
        while True:
            if first_read is None:
                _, st = http("GET", f"{url}/connectors/pq/status")
                tasks = (st or {}).get("tasks", []) if isinstance(st, dict) else []
                per_task = (((st or {}).get("metrics") or {}).get("tasks") or {}) if isinstance(st, dict) else {}
                if any(m.get("records_in", 0) > 0 for m in per_task.values()):
                    first_read = time.monotonic()
                    if args.perf and shutil.which("perf"):
                        perf = subprocess.Popen(["perf", "record", "-g", "-F", "499", "-o", str(work / "perf.data"),
                                                 "-p", str(worker.pid)], stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL)
                for tk in tasks:
                    if tk.get("state") == "FAILED":
                        sys.exit(f"task failed: {tk.get('trace')}")
            if rows.count() >= n:
                break
            if worker.poll() is not None:
                sys.exit(f"the worker exited with {worker.returncode}")
            if time.monotonic() - posted > 900:
                sys.exit(f"timed out with {rows.count()} of {n} rows visible")
            time.sleep(0.05)
        done = time.monotonic()
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait(30)
        worker_cpu, worker_rss = cpu_s(worker.pid), hwm_mib(worker.pid)
        broker_cpu = cpu_s(broker.pid) - broker_cpu0
        files = list(lake.rglob("*.parquet"))
        size = sum(f.stat().st_size for f in files)
        steady = done - (first_read or posted)
        print(f"binary: {binary} ({kind})")
        print(f"ParquetSink, {args.partitions} partitions, tasks.max={args.tasks}, compression={args.compression}, "
              f"flush.size={flush_size}" + "".join(f", {kv}" for kv in args.set))
        print(f"  {n} records, {value_bytes / 1e6:.1f} MB JSON -> {len(files)} files, {size / 1e6:.1f} MB Parquet")
        print(f"  from first record read: {steady:.2f}s  {n / steady:,.0f} records/s  {value_bytes / 1e6 / steady:.1f} MB/s")
        print(f"  from POST (start-up, group join): {done - posted:.2f}s  {n / (done - posted):,.0f} records/s")
        print(f"  worker: peak RSS {worker_rss:.0f} MiB, CPU {worker_cpu:.1f}s "
              f"({worker_cpu / steady * 100:.0f}% of one core over the drain); broker CPU {broker_cpu:.1f}s")
        if perf is not None:
            report = subprocess.run(["perf", "report", "-i", str(work / "perf.data"), "--no-children", "--stdio",
                                     "--sort", "symbol", "--percent-limit", "1.5", "-g", "none"],
                                    capture_output=True, text=True)
            print("  perf (worker, self time):")
            for line in report.stdout.splitlines():
                if "%" in line and not line.startswith("#"):
                    print("   ", line.strip()[:150])
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

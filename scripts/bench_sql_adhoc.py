#!/usr/bin/env python3
"""Benchmark of ad-hoc SQL over a topic (issue 13): records/s of a full scan with projection pushdown.

Starts a `spate broker` on a loopback port in a temp directory, produces --records JSON records
(about 90 bytes each: user_id, event, amount, ts) round-robin into --partitions partitions with
confluent-kafka, then times, each as one `spate sql -c` process:

  SELECT count(*) FROM bench                              (no value parsed: metadata only)
  SELECT count(*), approx_distinct(user_id) FROM bench    (one JSON field decoded per record)

and a near-empty query on the same table (`WHERE _partition = -1`: schema inference, planning and
process start, no scan) whose time is subtracted for the "scan" figure. Prints wall time, records/s
and MB/s (JSON value bytes) from the process wall time and from the scan time, and the sql
process's peak RSS. --runs repeats each query (the best run is reported, all are printed).

The binary: --binary, else the release build when it exists (said in the output), else debug.
--compare OTHER also runs every query with the `spate` binary OTHER (against the same broker and
records, the two alternating run by run), for a before/after on the same data.
With --perf, `perf record -g` samples the approx_distinct query and the top symbols are printed.

  python3 scripts/bench_sql_adhoc.py --records 10000000 --partitions 6
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = Path(os.environ.get("CARGO_TARGET_DIR", "/work/spate-target"))
EPOCH_MS = 1_709_622_000_000
EVENTS = ("click", "view", "buy", "scroll")


def value(i: int) -> bytes:
    return (
        f'{{"user_id":{(i * 7919) % 1_000_003},"event":"{EVENTS[i % 4]}","amount":{i % 997}.25,"ts":{EPOCH_MS + i}}}'
    ).encode()


def pick_binary(explicit):
    if explicit:
        return explicit, "given"
    release, debug = TARGET / "release" / "spate", TARGET / "debug" / "spate"
    if release.exists():
        return str(release), "release"
    return str(debug), "debug (no release build: figures are not representative)"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    sys.exit(f"{what} did not listen on {port} within {timeout}s")


def run_sql(binary, bootstrap, sql, perf_out=None):
    """Runs one `spate sql -c` process (under `perf record` when perf_out); returns its stdout."""
    cmd = [binary, "sql", "--bootstrap-server", bootstrap, "--format", "json", "-c", sql]
    if perf_out:
        cmd = ["perf", "record", "-g", "-o", perf_out, "--"] + cmd
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        sys.exit(f"spate sql failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


def run_sql_rss(binary, bootstrap, sql):
    """Like run_sql, with the peak RSS read through /usr/bin/time when present."""
    time_bin = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    if not time_bin:
        t = time.monotonic()
        out = run_sql(binary, bootstrap, sql)
        return time.monotonic() - t, None, out
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        cmd = [time_bin, "-f", "%M", "-o", tf.name, binary, "sql", "--bootstrap-server", bootstrap,
               "--format", "json", "-c", sql]
        t = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True)
        wall = time.monotonic() - t
        if proc.returncode != 0:
            sys.exit(f"spate sql failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
        try:
            rss = int(Path(tf.name).read_text().strip().splitlines()[-1]) / 1024
        except (ValueError, IndexError):
            rss = None
        return wall, rss, proc.stdout.decode()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--binary")
    ap.add_argument("--compare", help="another spate binary to run the same queries with")
    ap.add_argument("--perf", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = ap.parse_args()
    binary, kind = pick_binary(args.binary)
    print(f"binary: {binary} ({kind})")
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    work = Path(tempfile.mkdtemp(prefix="bench-sql-"))
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = subprocess.Popen(
        [binary, "broker", "--data-dir", str(work / "broker"), "--listen", bootstrap],
        stdout=open(work / "broker.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait_port(port, broker, "the broker")
        conf = {"bootstrap.servers": bootstrap, "broker.address.family": "v4"}
        admin = AdminClient(conf)
        admin.create_topics([NewTopic("bench", args.partitions, 1)])["bench"].result(30)
        p = Producer({**conf, "linger.ms": 50, "batch.size": 1_000_000, "queue.buffering.max.messages": 1_000_000,
                      "queue.buffering.max.kbytes": 1_048_576, "acks": 1})
        t = time.monotonic()
        value_bytes = 0
        parts = args.partitions
        for i in range(args.records):
            v = value(i)
            value_bytes += len(v)
            while True:
                try:
                    p.produce("bench", v, partition=i % parts)
                    break
                except BufferError:
                    p.poll(0.05)
            if i % 100_000 == 0:
                p.poll(0)
        if p.flush(120) != 0:
            sys.exit("not every record was produced")
        del p, admin
        produce_s = time.monotonic() - t
        print(f"produced {args.records} records ({value_bytes / 1e6:.1f} MB of JSON values) in {produce_s:.1f}s")

        binaries = [binary] + ([args.compare] if args.compare else [])
        wall0 = {}
        for b in binaries:
            wall0[b], _, out0 = run_sql_rss(b, bootstrap, "SELECT count(*) AS n FROM bench WHERE _partition = -1")
            print(f"{b}: fixed overhead (process start, schema inference, planning; no scan): {wall0[b]:.2f}s  {out0.strip()}")
        queries = [
            ("count(*)", "SELECT count(*) AS n FROM bench"),
            ("count(*), approx_distinct(user_id)", "SELECT count(*) AS n, approx_distinct(user_id) AS users FROM bench"),
        ]
        results = {}
        for query, sql in queries:
            runs = {b: [] for b in binaries}
            for _ in range(args.runs):
                for b in binaries:
                    wall, rss, out = run_sql_rss(b, bootstrap, sql)
                    runs[b].append((wall, rss, out.strip()))
            for b in binaries:
                wall, rss, out = min(runs[b], key=lambda r: r[0])
                scan = max(wall - wall0[b], 1e-9)
                name = query if len(binaries) == 1 else f"{query} [{b}]"
                results[name] = {
                    "wall_s": round(wall, 3), "scan_s": round(scan, 3),
                    "records_per_s_wall": round(args.records / wall), "records_per_s_scan": round(args.records / scan),
                    "mb_per_s_scan": round(value_bytes / 1e6 / scan, 1), "peak_rss_mib": rss and round(rss, 1),
                    "runs_s": [round(r[0], 3) for r in runs[b]], "result": out,
                }
                print(f"{name}: best wall {wall:.2f}s -> {args.records / wall / 1e6:.2f}M records/s; "
                      f"scan {scan:.2f}s -> {args.records / scan / 1e6:.2f}M records/s, "
                      f"{value_bytes / 1e6 / scan:.0f} MB/s; peak RSS {rss and round(rss)} MiB; "
                      f"runs {[round(r[0], 2) for r in runs[b]]}; result {out}")
        if args.perf and shutil.which("perf"):
            data = str(work / "perf.data")
            run_sql(binary, bootstrap, queries[1][1], perf_out=data)
            report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--percent-limit", "1.5",
                                     "--stdio", "--sort", "symbol"], capture_output=True, text=True)
            print("\n".join(line for line in report.stdout.splitlines() if line and not line.startswith("#"))[:4000])
        print(json.dumps({"records": args.records, "partitions": args.partitions, "binary": kind,
                          "value_bytes": value_bytes, "overhead_s": {b: round(w, 3) for b, w in wall0.items()},
                          "queries": results}, indent=1))
    finally:
        broker.terminate()
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""JDBC source benchmark (issue 12): N rows in an SQLite file and/or a PostgreSQL table → one
topic through `spate connect` with JdbcSourceConnector, against a fresh `spate broker` on this box.

A run is timed from the connector's creation (POST /connectors) until the topic's high watermark
reaches N (polled every 20 ms with confluent-kafka); `steady` runs from the first record to the
last. Peak RSS is the worker's VmHWM read just before it is stopped. Values are 6-column rows
(id bigint, ts, customer text, amount numeric, qty int, note text) written by JsonConverter with
schemas.enable (the envelope), keys the primary key struct.

Usage: scripts/bench_jdbc.py [--rows N] [--backend sqlite|postgresql|both] [--mode incrementing|
         timestamp+incrementing|bulk] [--batch-max-rows N] [--spate PATH] [--broker-set K=V]...
         [--connector-set K=V]... (e.g. value.converter.schemas.enable=false)
Needs: python3 with confluent-kafka (<repo>/.venv or /work/main/.venv), and for postgresql the
PostgreSQL server binaries (tests/python/pgserver.py finds them).
"""

import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "python"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_hwm_mib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None


def wait_http(url, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{url} did not answer within {timeout_s} s")


def post(url, body):
    deadline = time.monotonic() + 60
    while True:
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            return json.loads(urllib.request.urlopen(req, timeout=30).read())
        except urllib.error.HTTPError as e:
            if e.code in (409, 500, 503) and time.monotonic() < deadline:
                time.sleep(0.3)
                continue
            raise


def fill_sqlite(path, n):
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, customer TEXT, amount NUMERIC, qty INTEGER, note TEXT)")
    base = 1_700_000_000_000
    chunk = 100_000
    for start in range(0, n, chunk):
        db.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)",
            ((i + 1, base + i // 10, f"customer-{i % 9973}", f"{i % 100000}.{i % 100:02d}", i % 17, "note " * 4)
             for i in range(start, min(n, start + chunk))),
        )
    db.execute("CREATE INDEX orders_ts_id ON orders (ts, id)")
    db.commit()
    db.close()


def fill_postgres(pg, dbname, n):
    pg.psql(dbname, f"""
        CREATE TABLE orders (id bigint PRIMARY KEY, ts timestamptz NOT NULL, customer text, amount numeric(12,2),
                             qty int, note text);
        INSERT INTO orders SELECT i, to_timestamp(1700000000 + i / 10000.0), 'customer-' || (i % 9973),
               (i % 100000) + (i % 100) / 100.0, i % 17, repeat('note ', 4) FROM generate_series(1, {n}) AS i;
        CREATE INDEX orders_ts_id ON orders (ts, id);
        ANALYZE orders;""")


def end_offset(consumer, topic):
    from confluent_kafka import TopicPartition
    return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5, cached=False)[1]


def run_one(args, spate, boot, work, backend, url):
    from confluent_kafka import Consumer
    topic_prefix = f"bench-jdbc-{backend}-"
    topic = topic_prefix + "orders"
    subprocess.run([spate, "topics", "--bootstrap-server", boot, "--create", topic, "--partitions", "1",
                    "--replication-factor", "1"], check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    log = open(work / f"connect-{backend}.log", "wb")
    worker = subprocess.Popen([spate, "connect", "--bootstrap-server", boot, "--listen", f"127.0.0.1:{port}",
                               "--group-id", f"bench-jdbc-{backend}", "--set", "offset.flush.interval.ms=1000"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    consumer = Consumer({"bootstrap.servers": boot, "group.id": "bench-jdbc-watch", "enable.auto.commit": False})
    result = {"backend": backend, "rows": args.rows, "mode": args.mode, "batch.max.rows": args.batch_max_rows}
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        config = {
            "connector.class": "JdbcSourceConnector", "tasks.max": "1", "connection.url": url,
            "connection.user": "spate", "mode": args.mode, "incrementing.column.name": "id",
            "timestamp.column.name": "ts", "table.whitelist": "orders", "topic.prefix": topic_prefix,
            "poll.interval.ms": "1000", "batch.max.rows": str(args.batch_max_rows),
            "value.converter": "JsonConverter", "key.converter": "JsonConverter",
        }
        config.update(kv.split("=", 1) for kv in args.connector_set)
        t0 = time.monotonic()
        post(f"http://127.0.0.1:{port}/connectors", {"name": f"bench-{backend}", "config": config})
        t_first = None
        while True:
            reached = end_offset(consumer, topic)
            now = time.monotonic()
            if reached and t_first is None:
                t_first = now
            if reached >= args.rows:
                break
            if worker.poll() is not None or now - t0 > args.timeout_s:
                result["error"] = f"stopped at {reached} records after {now - t0:.1f} s"
                break
            time.sleep(0.02)
        result["peak_rss_mib"] = round(vm_hwm_mib(worker.pid) or 0, 1)
        if "error" not in result:
            wall, steady = now - t0, now - t_first
            result.update({"wall_s": round(wall, 2), "rows_s": round(args.rows / wall),
                           "steady_s": round(steady, 2), "steady_rows_s": round(args.rows / steady)})
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
        consumer.close()
    print(json.dumps(result), flush=True)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--mode", default="incrementing")
    ap.add_argument("--batch-max-rows", type=int, default=10_000)
    ap.add_argument("--spate", default=None)
    ap.add_argument("--broker-set", action="append", default=[])
    ap.add_argument("--connector-set", action="append", default=[], help="an extra connector config KEY=VALUE")
    ap.add_argument("--timeout-s", type=float, default=600)
    args = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))
    spate = args.spate or next((p for p in (f"{target}/release/spate", f"{target}/debug/spate") if os.path.exists(p)), None)
    if not spate:
        sys.exit("no spate binary: cargo build --release -p spate-cli, or pass --spate")
    print(f"spate: {spate}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-jdbc-"))
    boot = f"127.0.0.1:{free_port()}"
    broker_cmd = [spate, "broker", "--listen", boot, "--data-dir", str(work / "broker")]
    for kv in args.broker_set:
        broker_cmd += ["--set", kv]
    broker = subprocess.Popen(broker_cmd, stdout=open(work / "broker.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    pg = None
    try:
        time.sleep(1.0)
        backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
        for backend in backends:
            t = time.monotonic()
            if backend == "sqlite":
                path = work / "bench.db"
                fill_sqlite(path, args.rows)
                url = f"sqlite:{path}"
            else:
                from pgserver import PgServer
                pg = PgServer()
                url = pg.create_database("bench")
                fill_postgres(pg, "bench", args.rows)
            print(f"{backend}: {args.rows} rows loaded in {time.monotonic() - t:.1f} s", flush=True)
            run_one(args, spate, boot, work, backend, url)
    finally:
        broker.send_signal(signal.SIGTERM)
        try:
            broker.wait(20)
        except subprocess.TimeoutExpired:
            broker.kill()
        if pg is not None:
            pg.close()
    print(f"logs in {work}")


if __name__ == "__main__":
    main()

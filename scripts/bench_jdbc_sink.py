#!/usr/bin/env python3
"""Topic -> database benchmark of the JDBC sink (issue 12): `spate connect` with a JdbcSinkConnector
in upsert mode draining a topic of 10-field JSON records into PostgreSQL (a throwaway server, as
tests/python/pgserver.py starts it) and/or SQLite.

The records are produced first (to one fresh `spate broker` on this box), so the run times only the
sink: from the connector's creation until the table holds every record (`SELECT count(*)` polled
every 100 ms); `steady` runs from the first row seen to the last. Printed per database: rows/s
(wall and steady), MB/s of JSON values (steady), and the worker's peak RSS (VmHWM).

Usage: scripts/bench_jdbc_sink.py [--records N] [--spate PATH] [--db postgres,sqlite]
         [--partitions N] [--tasks N] [--batch-size N] [--max-poll-records N] [--keep]
Needs python3 with confluent-kafka (the test venv) and PostgreSQL's binaries (initdb, postgres, psql).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from pgserver import PgServer  # noqa: E402

MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not listen on {port} within {timeout_s}s")


def record(i: int) -> bytes:
    """A 10-field JSON object (about 200 bytes), distinct per i."""
    return json.dumps(
        {
            "id": i,
            "name": f"customer-{i:09d}",
            "category": ("books", "games", "tools", "food")[i % 4],
            "price": round((i % 10000) * 0.37, 2),
            "qty": i % 97,
            "active": i % 3 == 0,
            "created_ms": 1_700_000_000_000 + i,
            "city": ("Lyon", "Oslo", "Lima", "Pune", "Kobe")[i % 5],
            "score": (i % 1000) / 7.0,
            "note": f"order {i} shipped to warehouse {i % 31}",
        },
        separators=(",", ":"),
    ).encode()


def produce(bootstrap: str, topic: str, n: int, partitions: int) -> int:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1 << 20, "acks": "all",
         "queue.buffering.max.messages": 1_000_000}
    )
    total = 0
    for i in range(n):
        value = record(i)
        total += len(value)
        while True:
            try:
                producer.produce(topic, value=value, key=str(i).encode(), partition=i % partitions)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left:
        sys.exit(f"{left} records still undelivered after 120 s")
    return total


def vm_hwm_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float | None:
    """utime + stime of every thread of PID (includes start-up and the group join)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def post_connector(url: str, name: str, config: dict) -> None:
    """POST /connectors, retrying while the worker's group is still forming (409/5xx then)."""
    deadline = time.monotonic() + 60
    while True:
        req = urllib.request.Request(
            f"{url}/connectors",
            data=json.dumps({"name": name, "config": config}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=10):
                return
        except urllib.error.HTTPError as e:
            if e.code in (409, 500, 503) and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            sys.exit(f"creating the connector answered {e.code}: {e.read()[:2000]!r}")


def connector_state(url: str, name: str) -> str:
    try:
        with urllib.request.urlopen(f"{url}/connectors/{name}/status", timeout=5) as resp:
            status = json.load(resp)
        tasks = status.get("tasks") or []
        failed = [t for t in tasks if t.get("state") == "FAILED"]
        if failed:
            return "FAILED: " + str(failed[0].get("trace", ""))[:2000]
        return status.get("connector", {}).get("state", "?")
    except Exception as e:  # noqa: BLE001 - a status read is best effort
        return f"? ({e})"


def run_one(args, spate: str, bootstrap: str, topic: str, db: str, workdir: Path, value_bytes: int) -> dict:
    pg = None
    if db == "postgres":
        pg = PgServer()
        url = pg.create_database("bench")

        def count() -> int:
            try:
                return int(pg.psql("bench", "SELECT count(*) FROM bench_table").strip() or 0)
            except Exception:  # noqa: BLE001 - the table does not exist until the first batch
                return 0
    else:
        path = workdir / "bench.db"
        url = f"sqlite:{path}"

        def count() -> int:
            try:
                with sqlite3.connect(path, timeout=5) as c:
                    return c.execute("SELECT count(*) FROM bench_table").fetchone()[0]
            except sqlite3.Error:
                return 0

    port = free_port()
    log = open(workdir / f"connect-{db}.log", "wb")
    worker = subprocess.Popen(
        [spate, "connect", "--bootstrap-server", bootstrap, "--listen", f"127.0.0.1:{port}",
         "--group-id", f"bench-{db}", "--plugin-path", str(REPO / "plugins"),
         "--set", "offset.flush.interval.ms=1000",
         # Each run its own connect topics: a later run must not see (and start) an earlier one's connector.
         "--set", f"config.storage.topic=bench-configs-{db}", "--set", f"offset.storage.topic=bench-offsets-{db}",
         "--set", f"status.storage.topic=bench-status-{db}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        wait_port(port, worker, "spate connect")
        time.sleep(0.5)
        config = {
            "connector.class": "io.confluent.connect.jdbc.JdbcSinkConnector",
            "tasks.max": str(args.tasks),
            "topics": topic,
            "connection.url": url,
            "table.name.format": "bench_table",
            "insert.mode": "upsert",
            "pk.mode": "record_value",
            "pk.fields": "id",
            "auto.create": "true",
            "batch.size": str(args.batch_size),
            "key.converter": "org.apache.kafka.connect.storage.StringConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter.schemas.enable": "false",
            "consumer.override.max.poll.records": str(args.max_poll_records),
            "consumer.override.max.partition.fetch.bytes": str(16 * MIB),
            "consumer.override.fetch.max.bytes": str(64 * MIB),
        }
        started = time.monotonic()
        post_connector(f"http://127.0.0.1:{port}", f"bench-{db}", config)
        first_seen = None
        n = 0
        deadline = started + args.timeout_s
        while n < args.records:
            if time.monotonic() > deadline:
                sys.exit(f"{db}: only {n} of {args.records} rows after {args.timeout_s}s "
                         f"({connector_state(f'http://127.0.0.1:{port}', f'bench-{db}')})")
            if worker.poll() is not None:
                sys.exit(f"{db}: the worker exited with status {worker.returncode}")
            n = count()
            if n > 0 and first_seen is None:
                first_seen = time.monotonic()
            if n < args.records:
                time.sleep(0.1)
        done = time.monotonic()
        rss = vm_hwm_mib(worker.pid)
        cpu = cpu_s(worker.pid)
        wall = done - started
        steady = max(done - (first_seen or started), 1e-3)
        return {
            "db": db,
            "records": args.records,
            "wall_s": round(wall, 2),
            "steady_s": round(steady, 2),
            "rows_per_s_wall": round(args.records / wall),
            "rows_per_s_steady": round(args.records / steady),
            "mb_per_s_steady": round(value_bytes / MIB / steady, 1),
            "peak_rss_mib": round(rss, 1) if rss else None,
            "worker_cpu_us_per_row": round(cpu * 1e6 / args.records, 2) if cpu else None,
        }
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        if pg is not None:
            pg.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--spate", default=None)
    ap.add_argument("--db", default="postgres,sqlite")
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--tasks", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=10000)
    ap.add_argument("--max-poll-records", type=int, default=10000)
    ap.add_argument("--timeout-s", type=float, default=600)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    spate = args.spate or str(target / "release" / "spate")
    if not os.access(spate, os.X_OK):
        sys.exit(f"{spate} missing: cargo build --release -p spate-cli, or pass --spate PATH")
    workdir = Path(tempfile.mkdtemp(prefix="spate-bench-jdbc-"))
    broker_port = free_port()
    broker_log = open(workdir / "broker.log", "wb")
    broker = subprocess.Popen(
        [spate, "broker", "--data-dir", str(workdir / "data"), "--listen", f"127.0.0.1:{broker_port}",
         "--set", "group.initial.rebalance.delay.ms=0"],
        stdout=broker_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    results = []
    try:
        wait_port(broker_port, broker, "spate broker")
        bootstrap = f"127.0.0.1:{broker_port}"
        topic = "bench-jdbc"
        admin = AdminClient({"bootstrap.servers": bootstrap})  # kept: a collected client cancels its futures
        fs = admin.create_topics(
            [NewTopic(topic, num_partitions=args.partitions, replication_factor=1)]
        )
        for f in fs.values():
            f.result(30)
        t = time.monotonic()
        value_bytes = produce(bootstrap, topic, args.records, args.partitions)
        print(f"produced {args.records} records ({value_bytes / MIB:.1f} MiB of JSON values) "
              f"in {time.monotonic() - t:.1f}s", flush=True)
        for db in [d.strip() for d in args.db.split(",") if d.strip()]:
            r = run_one(args, spate, bootstrap, topic, db, workdir, value_bytes)
            print(json.dumps(r), flush=True)
            results.append(r)
    finally:
        broker.send_signal(signal.SIGTERM)
        try:
            broker.wait(20)
        except subprocess.TimeoutExpired:
            broker.kill()
        broker_log.close()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"{'db':<10} {'records':>9} {'wall s':>7} {'rows/s wall':>12} {'rows/s steady':>14} {'MB/s':>6} "
          f"{'peak RSS MiB':>13} {'worker CPU us/row':>18}")
    for r in results:
        print(f"{r['db']:<10} {r['records']:>9} {r['wall_s']:>7} {r['rows_per_s_wall']:>12} "
              f"{r['rows_per_s_steady']:>14} {r['mb_per_s_steady']:>6} {r['peak_rss_mib']!s:>13} "
              f"{r['worker_cpu_us_per_row']!s:>18}")


if __name__ == "__main__":
    main()

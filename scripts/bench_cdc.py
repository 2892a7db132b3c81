#!/usr/bin/env python3
"""PostgreSQL CDC benchmark (issue 12): N row changes → Debezium events on a topic, end to end.

Starts a throwaway PostgreSQL (tests/python/pgserver.py), a `spate broker` and a `spate connect`
worker, creates the CDC source (snapshot.mode=never, so the slot exists), pauses it, inserts
--rows rows in transactions of --txn-rows (generate_series, so the writer is not the bottleneck),
resumes it and times from the resume until the topic holds --rows events. Prints changes/s, the
worker's CPU seconds and peak RSS (VmHWM). The anchor: Redpanda Connect's postgres_cdc input,
about 130k changes/s on one core.

  SPATE_BIN=target/release/spate scripts/bench_cdc.py [--rows 500000] [--txn-rows 10000] [--schemas]

The rows have 5 columns (bigint key, text, numeric, timestamp, boolean); values are JSON through
JsonConverter (schemas.enable false unless --schemas). Everything runs on this box: PostgreSQL's
logical decoding, the broker and the worker share its cores.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "python"))

import requests  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from conftest import Broker  # noqa: E402
from pgserver import PgServer  # noqa: E402
from test_connect import ConnectWorker, create_connector, high_watermark, wait_for_state  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_kib(pid, field):
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_s(pid):
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--txn-rows", type=int, default=10_000)
    ap.add_argument("--schemas", action="store_true", help="value.converter.schemas.enable=true")
    ap.add_argument("--timeout-s", type=float, default=600)
    args = ap.parse_args()
    binary = os.environ.get("SPATE_BIN") or str(REPO / "target" / "release" / "spate")
    work = Path(tempfile.mkdtemp(prefix="bench-cdc-"))
    pg = PgServer()
    broker = Broker(binary, work / "broker", ["--set", "group.initial.rebalance.delay.ms=0"], {})
    worker = None
    try:
        broker.start()
        topic = "bench.public.rows"
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        for f in admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]).values():
            f.result()
        url = pg.create_database("bench")
        pg.psql("bench", "CREATE TABLE rows (id bigint PRIMARY KEY, name text, amount numeric(12,2), "
                         "at timestamp, ok boolean)")
        worker = ConnectWorker(binary, broker.bootstrap, work / "worker", "bench-cdc",
                               {"offset.flush.interval.ms": "1000"}, [])
        worker.start()
        config = {
            "connector.class": "PostgresCdcSource",
            "connection.url": url,
            "topic.prefix": "bench",
            "snapshot.mode": "never",
            "poll.interval.ms": "100",
            "max.batch.size": "4096",
            "key.converter": "JsonConverter",
            "key.converter.schemas.enable": "false",
            "value.converter": "JsonConverter",
            "value.converter.schemas.enable": "true" if args.schemas else "false",
        }
        create_connector(worker.url, "bench-cdc", config)
        wait_for_state(worker.url, "bench-cdc", "RUNNING")
        requests.put(f"{worker.url}/connectors/bench-cdc/pause", timeout=10)
        wait_for_state(worker.url, "bench-cdc", "PAUSED")
        t0 = time.monotonic()
        for start in range(0, args.rows, args.txn_rows):
            end = min(start + args.txn_rows, args.rows) - 1
            pg.psql("bench", f"INSERT INTO rows SELECT g, 'name ' || g, g * 1.25, "
                             f"timestamp '2024-01-01' + g * interval '1 second', g % 2 = 0 "
                             f"FROM generate_series({start}, {end}) g")
        insert_s = time.monotonic() - t0
        wal = pg.psql("bench", "SELECT pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)) "
                               "FROM pg_replication_slots").strip()
        cpu0 = cpu_s(worker.proc.pid)
        t1 = time.monotonic()
        requests.put(f"{worker.url}/connectors/bench-cdc/resume", timeout=10)
        while high_watermark(broker.bootstrap, topic) < args.rows:
            if time.monotonic() - t1 > args.timeout_s:
                sys.exit(f"timeout: {high_watermark(broker.bootstrap, topic)} of {args.rows} events")
            time.sleep(0.05)
        elapsed = time.monotonic() - t1
        cpu = cpu_s(worker.proc.pid) - cpu0
        rss = proc_kib(worker.proc.pid, "VmHWM") / 1024
        print(f"rows={args.rows} txn_rows={args.txn_rows} schemas={args.schemas} (inserted in {insert_s:.1f}s, "
              f"WAL behind the slot: {wal})")
        print(f"changes/s end to end: {args.rows / elapsed:,.0f}  ({elapsed:.2f}s)")
        print(f"worker CPU: {cpu:.1f}s ({args.rows / max(cpu, 1e-9):,.0f} changes per CPU-second), "
              f"peak RSS {rss:.1f} MiB")
        print("anchor: Redpanda Connect postgres_cdc ~130k changes/s on one core")
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
        pg.close()


if __name__ == "__main__":
    main()

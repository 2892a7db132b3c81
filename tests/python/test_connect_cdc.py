"""The PostgreSQL CDC source (`PostgresCdcSource`, Debezium's
`io.debezium.connector.postgresql.PostgresConnector`) in a real `spate connect` worker against a
real PostgreSQL (the session `postgres` fixture) and a real broker, read back with confluent-kafka.

Checks the events a Debezium consumer expects (envelope, `schemas.enable` schema, tombstones,
commit order) and that a kill -9 of the worker during a stream of changes loses none: the slot is
confirmed only after the events are stored, so a restart repeats at most the unacknowledged range.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest

from spatetest import create_topic, wait_until
from test_connect import (  # noqa: F401  (fixtures)
    TopicReader,
    connect_broker,
    connect_worker,
    create_connector,
    high_watermark,
    wait_for_state,
)

pytestmark = pytest.mark.timeout(150)


def cdc_config(url: str, prefix: str, slot: str, **extra) -> dict:
    return {
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "tasks.max": "1",
        "connection.url": url,
        "topic.prefix": prefix,
        "slot.name": slot,
        "publication.name": f"{slot}_pub",
        "poll.interval.ms": "50",
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "false",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "false",
        **extra,
    }


def decoded(messages) -> list[tuple]:
    """(key, value) pairs with JSON parsed; a tombstone's value is None."""
    return [
        (json.loads(m.key()) if m.key() else None, json.loads(m.value()) if m.value() is not None else None)
        for m in messages
    ]


def test_cdc_snapshot_and_changes_reach_kafka_in_debezium_shape(connect_broker, connect_worker, postgres):
    bootstrap = connect_broker.bootstrap
    url = postgres.create_database("cdc_shape")
    postgres.psql(
        "cdc_shape",
        "CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL, balance numeric(12,2), "
        "joined timestamp, tags jsonb); "
        "INSERT INTO customers VALUES (1, 'a@x', 10.50, '2024-01-02 03:04:05.5', '[1]'), (2, 'b@x', NULL, NULL, NULL)",
    )
    topic = "shop.public.customers"
    create_topic(bootstrap, topic)
    worker = connect_worker(bootstrap)
    # The value with its schema (schemas.enable), as Debezium's JsonConverter users read it.
    create_connector(worker.url, "cdc-shape", cdc_config(url, "shop", "shape", **{"value.converter.schemas.enable": "true"}))
    wait_for_state(worker.url, "cdc-shape", "RUNNING")
    postgres.psql(
        "cdc_shape",
        "BEGIN; INSERT INTO customers (id, email) VALUES (3, 'c@x'); UPDATE customers SET email = 'a2@x' WHERE id = 1; "
        "COMMIT; DELETE FROM customers WHERE id = 2; TRUNCATE customers",
    )
    reader = TopicReader(bootstrap, topic)
    try:
        wait_until(lambda: len(reader.poll()) >= 7, 30, "2 snapshot rows and 5 change events",
                   describe=lambda: decoded(reader.messages))
        events = decoded(reader.messages)
    finally:
        reader.close()
    assert len(events) == 7, events
    ops = [v["payload"]["op"] if v else "tombstone" for _, v in events]
    assert ops == ["r", "r", "c", "u", "d", "tombstone", "t"], ops
    (k0, v0) = events[0]
    assert k0 == {"id": 1}
    schema, payload = v0["schema"], v0["payload"]
    assert schema["name"] == "shop.public.customers.Envelope"
    assert [f["field"] for f in schema["fields"]] == ["before", "after", "source", "op", "ts_ms"]
    after_fields = {f["field"]: f for f in schema["fields"][1]["fields"]}
    assert after_fields["joined"]["name"] == "io.debezium.time.MicroTimestamp"
    assert after_fields["id"]["type"] == "int32"
    assert payload["after"] == {"id": 1, "email": "a@x", "balance": "10.50", "joined": 1704164645500000, "tags": "[1]"}
    assert payload["before"] is None
    source = payload["source"]
    assert source["connector"] == "postgresql" and source["name"] == "shop" and source["db"] == "cdc_shape"
    assert (source["schema"], source["table"]) == ("public", "customers")
    assert events[1][1]["payload"]["source"]["snapshot"] == "last"
    c, u = events[2][1]["payload"], events[3][1]["payload"]
    assert c["after"]["email"] == "c@x" and c["source"]["snapshot"] == "false"
    assert c["source"]["txId"] == u["source"]["txId"], "one transaction"
    assert u["after"]["email"] == "a2@x"
    d = events[4][1]["payload"]
    assert d["before"]["id"] == 2 and d["after"] is None
    assert events[5][0] == {"id": 2}
    assert events[6][0] is None
    assert c["source"]["lsn"] < d["source"]["lsn"], "commit order"


def test_cdc_kill_9_mid_stream_loses_no_change(connect_broker, connect_worker, postgres):
    bootstrap = connect_broker.bootstrap
    url = postgres.create_database("cdc_kill")
    postgres.psql("cdc_kill", "CREATE TABLE events (id int PRIMARY KEY, payload text)")
    topic = "kill.public.events"
    create_topic(bootstrap, topic)
    worker = connect_worker(bootstrap)
    create_connector(worker.url, "cdc-kill", cdc_config(url, "kill", "killslot", **{"snapshot.mode": "never"}))
    wait_for_state(worker.url, "cdc-kill", "RUNNING")

    total, per_txn = 20_000, 200
    done = threading.Event()

    def writer():
        # 100 transactions of 200 rows, about 3 s of writing.
        for start in range(0, total, per_txn):
            postgres.psql(
                "cdc_kill",
                f"INSERT INTO events SELECT g, 'row ' || g FROM generate_series({start}, {start + per_txn - 1}) g",
            )
            time.sleep(0.02)
        done.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    wait_until(lambda: high_watermark(bootstrap, topic) >= 4000, 30, "4000 changes in the topic before the kill",
               interval_s=0.1)
    worker.kill9()
    killed_at = high_watermark(bootstrap, topic)
    time.sleep(0.5)
    worker.start()
    thread.join(timeout=60)
    assert done.is_set(), "the writer did not finish"
    wait_until(lambda: high_watermark(bootstrap, topic) >= total, 60, f"at least {total} change events",
               interval_s=0.5, describe=lambda: high_watermark(bootstrap, topic))
    time.sleep(1.0)
    reader = TopicReader(bootstrap, topic)
    try:
        end = high_watermark(bootstrap, topic)
        wait_until(lambda: len(reader.poll()) >= end, 30, "the whole topic read back")
        events = decoded(reader.messages)
    finally:
        reader.close()
    ids = [v["after"]["id"] for _, v in events]
    assert all(v["op"] == "c" for _, v in events)
    counts = Counter(ids)
    missing = set(range(total)) - set(counts)
    duplicates = len(ids) - len(counts)
    print(f"kill -9 at {killed_at} events: {len(ids)} events for {total} changes, {duplicates} duplicates")
    assert not missing, f"{len(missing)} changes lost, e.g. {sorted(missing)[:5]}"
    assert set(counts) == set(range(total))
    # Only the unacknowledged range (since the last offset flush) comes again, as whole transactions.
    assert duplicates < total // 2, duplicates
    dup_ids = sorted(i for i, n in counts.items() if n > 1)
    if dup_ids:
        assert dup_ids[-1] - dup_ids[0] + 1 == len(dup_ids), "duplicates are one contiguous range"
        assert len(dup_ids) % per_txn == 0, "whole transactions repeat"
    # Commit order: the first occurrence of each id comes in id order.
    first_seen = list(dict.fromkeys(ids))
    assert first_seen == sorted(first_seen)

"""The JDBC sink (`JdbcSinkConnector`) end to end: records produced with confluent-kafka to a real
`spate broker`, a real `spate connect` worker writing them into a throwaway PostgreSQL (the session
`postgres` fixture), checked with SQL through psql.

* upsert on the record key, a tombstone deleting, auto.create, a record that cannot be written going
  to the dead-letter topic;
* kill -9 of the worker while records stream in, with `exactly.once=true`: after restarts every
  record is in the table exactly once (insert mode, no key: a duplicate would be an extra row).
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from confluent_kafka import Producer

from spatetest import client_config, create_topic, unique_topic, wait_until
from test_connect import (  # noqa: F401 - fixtures
    connect_broker,
    connect_worker,
    create_connector,
    high_watermark,
    no_failed_task,
    wait_for_state,
)

pytestmark = pytest.mark.timeout(150)


def rows(postgres, db: str, sql: str) -> list[str]:
    return [line for line in postgres.psql(db, sql).splitlines() if line]


def produce_json(bootstrap: str, topic: str, records) -> None:
    """(key, value) pairs, each a JSON-able object or None (a null key or a tombstone)."""
    producer = Producer(client_config(bootstrap, **{"linger.ms": 5}))
    for key, value in records:
        producer.produce(
            topic,
            key=None if key is None else json.dumps(key).encode(),
            value=None if value is None else json.dumps(value).encode(),
        )
    assert producer.flush(30) == 0


def sink_config(topic: str, url: str, **extra) -> dict:
    return {
        "connector.class": "io.confluent.connect.jdbc.JdbcSinkConnector",
        "tasks.max": "1",
        "topics": topic,
        "connection.url": url,
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "false",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "false",
        "auto.create": "true",
        **extra,
    }


def test_upsert_delete_and_dead_letter_into_postgres(connect_broker, connect_worker, postgres):
    bootstrap = connect_broker.bootstrap
    topic = unique_topic("jdbc_orders")
    create_topic(bootstrap, topic)
    url = postgres.create_database("jdbc_sink_upsert")
    produce_json(
        bootstrap,
        topic,
        [
            ({"id": 1}, {"sku": "a", "qty": 1}),
            ({"id": 2}, {"sku": "b", "qty": 2}),
            ({"id": 1}, {"sku": "a", "qty": 10}),
            ({"id": 3}, {"sku": "c", "qty": 3}),
            ({"id": 3}, None),
            ({"id": 4}, "not an object"),
            ({"id": 5}, {"sku": "e", "qty": 5, "price": 9.5}),
        ],
    )
    worker = connect_worker(bootstrap)
    dlq = unique_topic("jdbc_dlq")
    config = sink_config(
        topic,
        url,
        **{
            "table.name.format": "orders",
            "insert.mode": "upsert",
            "pk.mode": "record_key",
            "delete.enabled": "true",
            "auto.evolve": "true",
            "errors.tolerance": "all",
            "errors.deadletterqueue.topic.name": dlq,
            "errors.deadletterqueue.topic.replication.factor": "1",
        },
    )
    create_connector(worker.url, "jdbc-upsert", config)
    wait_for_state(worker.url, "jdbc-upsert", "RUNNING")
    want = ["1|a|10|", "2|b|2|", "5|e|5|9.5"]
    seen = {}

    def settled():
        try:
            seen["rows"] = rows(postgres, "jdbc_sink_upsert", "SELECT id, sku, qty, price FROM orders ORDER BY id")
        except RuntimeError:
            return None
        return seen["rows"] == want

    wait_until(settled, 30, "the upserts, the delete and the new column in PostgreSQL",
               describe=lambda: seen.get("rows"))
    # A later update of a key arrives as an UPDATE of the same row. (It also carries the batch before
    # it through the runtime: without exactly.once the sink writes one put behind and hands a batch's
    # failed records back with the next put.)
    produce_json(bootstrap, topic, [({"id": 2}, {"sku": "b", "qty": 20, "price": 1.25})])
    want = ["1|a|10|", "2|b|20|1.25", "5|e|5|9.5"]
    wait_until(settled, 30, "the later upsert", describe=lambda: seen.get("rows"))
    # The record that is not an object went to the dead-letter topic (and only it).
    wait_until(lambda: high_watermark(bootstrap, dlq) == 1, 15, "one record in the dead-letter topic",
               describe=lambda: high_watermark(bootstrap, dlq))


def test_kill_9_mid_stream_with_exactly_once_applies_each_record_once(connect_broker, connect_worker, postgres):
    bootstrap = connect_broker.bootstrap
    topic = unique_topic("jdbc_eo")
    create_topic(bootstrap, topic, partitions=2)
    url = postgres.create_database("jdbc_sink_eo")
    total = 30_000
    worker = connect_worker(bootstrap)
    config = sink_config(
        topic,
        url,
        **{
            "table.name.format": "events",
            "insert.mode": "insert",
            "pk.mode": "none",
            "exactly.once": "true",
            # Small transactions, so that a kill lands between and inside many of them.
            "batch.size": "200",
            "consumer.override.max.poll.records": "500",
            # The killed worker's sink consumer leaves the group after 6 s, not the default 45 s.
            "consumer.override.session.timeout.ms": "6000",
            "consumer.override.heartbeat.interval.ms": "500",
        },
    )
    create_connector(worker.url, "jdbc-eo", config)
    wait_for_state(worker.url, "jdbc-eo", "RUNNING")
    done = threading.Event()

    def producer_thread():
        producer = Producer(client_config(bootstrap, **{"linger.ms": 5}))
        for start in range(0, total, 1000):
            for n in range(start, start + 1000):
                producer.produce(topic, value=json.dumps({"n": n, "pad": "x" * 50}).encode(), partition=n % 2)
            producer.poll(0)
            time.sleep(0.05)
        producer.flush(30)
        done.set()

    thread = threading.Thread(target=producer_thread, daemon=True)
    thread.start()

    def count() -> int:
        try:
            return int(rows(postgres, "jdbc_sink_eo", "SELECT count(*) FROM events")[0])
        except (RuntimeError, IndexError):
            return 0

    kills = []
    for threshold in (3_000, 12_000):
        wait_until(lambda: count() >= threshold, 60, f"{threshold} rows before a kill -9",
                   interval_s=0.05, describe=count)
        worker.kill9()
        kills.append(count())
        time.sleep(0.3)
        worker.start()
    thread.join(timeout=60)
    assert done.is_set(), "the producer did not finish"
    guard = no_failed_task(worker.url, "jdbc-eo")

    def all_there():
        guard()
        return count() >= total

    wait_until(all_there, 90, f"{total} rows", interval_s=0.5, describe=count)
    time.sleep(1.0)
    stats = rows(postgres, "jdbc_sink_eo", "SELECT count(*), count(DISTINCT n), min(n), max(n) FROM events")[0]
    print(f"kill -9 at {kills} rows; final count, distinct, min, max: {stats}")
    assert stats == f"{total}|{total}|0|{total - 1}", stats
    stored = rows(postgres, "jdbc_sink_eo",
                  "SELECT sum(next_offset) FROM __spate_connect_offsets WHERE connector = 'jdbc-eo'")
    assert stored == [str(total)], stored

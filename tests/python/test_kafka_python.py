"""kafka-python 3.x (a pure-Python client with its own protocol code, idempotent by default) against a
spate broker: produce in every codec, read back with assign() + seek_to_beginning()."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from spatetest import unique_topic

pytestmark = pytest.mark.timeout(120)

PARTITIONS = 3
RECORDS_PER_PARTITION = 400


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    client = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    try:
        client.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        client.close()


def read_all(bootstrap: str, topic: str, partitions: int, expected: int, timeout_s: float = 60.0) -> list:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        consumer_timeout_ms=1000,
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        # Catch extras (duplicates) that a short grace period would reveal.
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
        return records
    finally:
        consumer.close()


@pytest.mark.parametrize("codec", [None, "gzip", "snappy", "lz4", "zstd"])
def test_produce_consume_roundtrip(broker, codec):
    topic = unique_topic(f"kpy-{codec or 'none'}")
    create_topic(broker.bootstrap, topic, PARTITIONS)

    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap,
        acks="all",
        compression_type=codec,
        linger_ms=5,
        request_timeout_ms=20000,
    )
    assert producer.config["enable_idempotence"], "kafka-python 3.x should be idempotent by default"
    futures = []
    expected = {}
    try:
        for p in range(PARTITIONS):
            for i in range(RECORDS_PER_PARTITION):
                key = f"k-{p}-{i}".encode()
                value = f"value {p}/{i} ".encode() * (1 + i % 7)
                headers = [("index", str(i).encode()), ("codec", str(codec).encode())]
                expected[(p, i)] = (key, value, headers)
                futures.append(((p, i), producer.send(topic, value=value, key=key, headers=headers, partition=p)))
        producer.flush(timeout=60)
        for (p, i), future in futures:
            meta = future.get(timeout=30)
            assert (meta.partition, meta.offset) == (p, i), f"record {p}/{i} acknowledged at {meta}"
    finally:
        producer.close(timeout=10)

    records = read_all(broker.bootstrap, topic, PARTITIONS, expected=PARTITIONS * RECORDS_PER_PARTITION)
    assert len(records) == PARTITIONS * RECORDS_PER_PARTITION
    by_partition = {p: [r for r in records if r.partition == p] for p in range(PARTITIONS)}
    for p, rs in by_partition.items():
        assert [r.offset for r in rs] == list(range(RECORDS_PER_PARTITION)), f"partition {p}"
        for r in rs:
            key, value, headers = expected[(p, r.offset)]
            assert (r.key, r.value) == (key, value)
            assert list(r.headers) == headers
            assert r.timestamp > 0


def test_null_key_and_empty_value(broker):
    topic = unique_topic("kpy-null")
    create_topic(broker.bootstrap, topic, 1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        producer.send(topic, value=b"", key=None, partition=0).get(timeout=30)
        producer.send(topic, value=None, key=b"tombstone", partition=0).get(timeout=30)
        producer.send(topic, value=b"\x00\xff" * 1000, key=b"\x00", partition=0).get(timeout=30)
    finally:
        producer.close(timeout=10)
    records = read_all(broker.bootstrap, topic, 1, expected=3)
    assert [(r.offset, r.key, r.value) for r in records] == [
        (0, None, b""),
        (1, b"tombstone", None),
        (2, b"\x00", b"\x00\xff" * 1000),
    ]

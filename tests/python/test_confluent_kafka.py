"""confluent-kafka (librdkafka 2.x) against a spate broker: the idempotent producer in every codec with
exactly-once, in-order delivery per partition; AdminClient topics and configs; offset lookups.

Every consumer here uses assign(); consumer groups are tested in test_groups.py."""

from __future__ import annotations

import os
import time
from collections import defaultdict

import pytest
from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    OffsetSpec,
)

from spatetest import (
    DUMMY_GROUP,
    admin,
    client_config,
    consume_assigned,
    create_topic,
    produce,
    unique_topic,
    wait_for_partitions,
)

PARTITIONS = 6
RECORDS = 100_000


def value_of(partition: int, seq: int) -> bytes:
    # Distinct, self-describing, and compressible enough that every codec actually shrinks batches.
    return f"p{partition}-s{seq:07d}-".encode() + b"payload " * 8


@pytest.mark.timeout(240)
@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_idempotent_produce_exactly_once_in_order(broker, codec):
    topic = unique_topic(f"idem-{codec}")
    create_topic(broker.bootstrap, topic, partitions=PARTITIONS)

    records = []
    next_seq = [0] * PARTITIONS
    for i in range(RECORDS):
        p = i % PARTITIONS
        records.append((p, f"key-{i}".encode(), value_of(p, next_seq[p]), [("seq", str(next_seq[p]).encode())]))
        next_seq[p] += 1

    delivered = produce(
        broker.bootstrap,
        topic,
        records,
        **{
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": codec,
            "linger.ms": 5,
            "batch.num.messages": 5000,
        },
    )
    assert len(delivered) == RECORDS
    acked = defaultdict(list)
    for m in delivered:
        acked[m.partition()].append((m.offset(), m.value()))

    msgs = consume_assigned(
        broker.bootstrap,
        topic,
        range(PARTITIONS),
        expected=RECORDS,
        timeout_s=120,
        **{"fetch.wait.max.ms": 100, "queued.min.messages": 20000, "fetch.queue.backoff.ms": 10},
    )
    consumed = defaultdict(list)
    for m in msgs:
        consumed[m.partition()].append(m)
    assert len(msgs) == RECORDS, {p: len(v) for p, v in consumed.items()}

    for p in range(PARTITIONS):
        got = consumed[p]
        n = next_seq[p]
        assert [m.offset() for m in got] == list(range(n)), f"partition {p}: offsets not 0..{n} exactly once"
        assert [m.value() for m in got] == [value_of(p, s) for s in range(n)], f"partition {p}: values out of order"
        assert [m.headers() for m in got] == [[("seq", str(s).encode())] for s in range(n)]
        # Every acknowledged offset holds what was acknowledged there.
        assert sorted(acked[p]) == [(m.offset(), m.value()) for m in got]
    keys = {m.key() for m in msgs}
    assert len(keys) == RECORDS


def test_admin_create_and_delete_topic(broker):
    client = admin(broker.bootstrap)
    topic = unique_topic("admin")
    futures = client.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)], operation_timeout=10)
    futures[topic].result(timeout=20)
    wait_for_partitions(broker.bootstrap, topic, 3)
    for p in range(3):
        assert (broker.data_dir / f"{topic}-{p}").is_dir(), sorted(os.listdir(broker.data_dir))

    # Creating it again is refused with Kafka's own error.
    futures = client.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)], operation_timeout=10)
    with pytest.raises(KafkaException) as excinfo:
        futures[topic].result(timeout=20)
    assert excinfo.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS

    # Invalid requests get an error, not a dead connection.
    bad = unique_topic("admin-bad")
    futures = client.create_topics([NewTopic(bad, num_partitions=0, replication_factor=1)], operation_timeout=10)
    with pytest.raises(KafkaException):
        futures[bad].result(timeout=20)

    produce(broker.bootstrap, topic, [(0, b"k", b"v", None)], acks="all")

    futures = client.delete_topics([topic], operation_timeout=10)
    futures[topic].result(timeout=20)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        md = client.list_topics(timeout=5)
        if topic not in md.topics:
            break
        time.sleep(0.1)
    assert topic not in client.list_topics(timeout=5).topics
    # The partition directories go too (perhaps renamed first and removed in the background).
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any((broker.data_dir / f"{topic}-{p}").exists() for p in range(3)):
        time.sleep(0.1)
    assert not any((broker.data_dir / f"{topic}-{p}").exists() for p in range(3))

    # Deleting a topic that does not exist is refused.
    futures = client.delete_topics([topic], operation_timeout=10)
    with pytest.raises(KafkaException) as excinfo:
        futures[topic].result(timeout=20)
    assert excinfo.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def describe_topic_config(client, topic: str) -> dict:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return client.describe_configs([resource])[resource].result(timeout=20)


def test_admin_describe_and_incremental_alter_configs(broker):
    client = admin(broker.bootstrap)
    topic = unique_topic("configs")
    create_topic(broker.bootstrap, topic, partitions=1, config={"retention.ms": "3600000", "cleanup.policy": "delete"})

    entries = describe_topic_config(client, topic)
    assert entries["retention.ms"].value == "3600000"
    assert not entries["retention.ms"].is_default
    assert entries["segment.bytes"].value == str(1 << 30)
    assert entries["segment.bytes"].is_default
    for name in ("cleanup.policy", "max.message.bytes", "retention.bytes", "min.insync.replicas"):
        assert name in entries, sorted(entries)

    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("retention.ms", "12345", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("segment.bytes", "1048576", incremental_operation=AlterConfigOpType.SET),
        ],
    )
    client.incremental_alter_configs([resource])[resource].result(timeout=20)
    entries = describe_topic_config(client, topic)
    assert entries["retention.ms"].value == "12345"
    assert entries["segment.bytes"].value == "1048576"
    assert not entries["segment.bytes"].is_default

    # DELETE reverts to the broker default.
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[ConfigEntry("segment.bytes", None, incremental_operation=AlterConfigOpType.DELETE)],
    )
    client.incremental_alter_configs([resource])[resource].result(timeout=20)
    entries = describe_topic_config(client, topic)
    assert entries["segment.bytes"].value == str(1 << 30)
    assert entries["segment.bytes"].is_default
    assert entries["retention.ms"].value == "12345"

    # An invalid value is refused and changes nothing.
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[ConfigEntry("segment.bytes", "12", incremental_operation=AlterConfigOpType.SET)],
    )
    with pytest.raises(KafkaException) as excinfo:
        client.incremental_alter_configs([resource])[resource].result(timeout=20)
    assert excinfo.value.args[0].code() == KafkaError.INVALID_CONFIG
    assert describe_topic_config(client, topic)["segment.bytes"].value == str(1 << 30)

    # Topic configs survive a restart.
    broker.restart()
    entries = describe_topic_config(admin(broker.bootstrap), topic)
    assert entries["retention.ms"].value == "12345"


def test_list_offsets_and_offsets_for_times(broker):
    topic = unique_topic("offsets")
    create_topic(broker.bootstrap, topic, partitions=2)
    base_ms = int(time.time() * 1000) - 100_000
    # Explicit, increasing timestamps 1 s apart: record i has timestamp base_ms + 1000 * i.
    producer = Producer(client_config(broker.bootstrap, **{"enable.idempotence": True, "acks": "all"}))
    for i in range(20):
        producer.produce(topic, value=f"v{i}".encode(), partition=0, timestamp=base_ms + 1000 * i)
    assert producer.flush(30) == 0

    client = admin(broker.bootstrap)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    for spec, want0, want1 in [
        (OffsetSpec.earliest(), 0, 0),
        (OffsetSpec.latest(), 20, 0),
        (OffsetSpec.for_timestamp(base_ms + 5500), 6, -1),
        (OffsetSpec.for_timestamp(base_ms), 0, -1),
        (OffsetSpec.for_timestamp(base_ms + 10_000_000), -1, -1),
    ]:
        result = client.list_offsets({tp0: spec, tp1: spec})
        got0 = result[tp0].result(timeout=20).offset
        got1 = result[tp1].result(timeout=20).offset
        assert (got0, got1) == (want0, want1), f"spec {spec}"

    result = client.list_offsets({tp0: OffsetSpec.max_timestamp()})[tp0].result(timeout=20)
    assert (result.offset, result.timestamp) == (19, base_ms + 19_000)

    consumer = Consumer(
        client_config(
            broker.bootstrap,
            **{"group.id": DUMMY_GROUP, "enable.auto.commit": False, "enable.partition.eof": True},
        )
    )
    try:
        found = consumer.offsets_for_times([TopicPartition(topic, 0, base_ms + 7000)], timeout=10)
        assert [(t.partition, t.offset) for t in found] == [(0, 7)]
        assert consumer.get_watermark_offsets(tp0, timeout=10, cached=False) == (0, 20)
        assert consumer.get_watermark_offsets(tp1, timeout=10, cached=False) == (0, 0)

        # Reading from OFFSET_END sees only what arrives after the end was resolved, which the
        # partition-EOF event (at offset 20) tells.
        consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
        deadline = time.monotonic() + 20
        eof_at = None
        while eof_at is None and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is not None, f"unexpected record at offset {msg.offset()}"
            if msg.error().code() == KafkaError._PARTITION_EOF:
                eof_at = msg.offset()
        assert eof_at == 20
        producer.produce(topic, value=b"late", partition=0)
        assert producer.flush(30) == 0
        deadline = time.monotonic() + 20
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error():
                msg = None
        assert msg is not None and (msg.offset(), msg.value()) == (20, b"late")
    finally:
        consumer.close()

    # Reading back checks the timestamps survived as produced.
    msgs = consume_assigned(broker.bootstrap, topic, [0], expected=21)
    assert [m.timestamp()[1] for m in msgs[:20]] == [base_ms + 1000 * i for i in range(20)]
    assert consume_assigned(broker.bootstrap, topic, [1], expected=0, timeout_s=1) == []

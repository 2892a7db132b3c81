"""A broker whose disk fills up: appends fail with KAFKA_STORAGE_ERROR, the broker keeps serving
other partitions, nothing acknowledged is lost and the log is intact after a restart.

A full filesystem cannot be made without privileges, so the test runs the broker under a file-size
limit (`prlimit --fsize`, RLIMIT_FSIZE): a write past it fails with EFBIG exactly where a full disk
fails with ENOSPC (the broker handles SIGXFSZ so the limit does not kill it)."""

from __future__ import annotations


import pytest
from confluent_kafka import Producer

from spatetest import client_config, consume_assigned, create_topic, produce, unique_topic

FILE_LIMIT_BYTES = 4 << 20
VALUE = b"v" * 10_000


def produce_outcomes(bootstrap: str, topic: str, count: int) -> tuple[list, list]:
    """acks=all without retries, so each record reports the broker's own answer."""
    delivered, failed = [], []

    def on_delivery(err, msg):
        if err is None:
            delivered.append((msg.offset(), msg.value()))
        else:
            failed.append(err.name())

    producer = Producer(
        client_config(
            bootstrap,
            **{"acks": "all", "enable.idempotence": False, "retries": 0, "linger.ms": 0, "message.timeout.ms": 20000},
        )
    )
    for i in range(count):
        producer.produce(topic, value=b"%06d:" % i + VALUE, partition=0, on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(60) == 0
    return delivered, failed


def test_full_disk_refuses_writes_and_loses_nothing(broker_factory):
    broker = broker_factory(wrapper=["prlimit", f"--fsize={FILE_LIMIT_BYTES}", "--"])
    full = unique_topic("full")
    other = unique_topic("other")
    create_topic(broker.bootstrap, full, 1)
    create_topic(broker.bootstrap, other, 1)

    # 10 KB records into one segment whose file may not grow past 4 MiB: the first ~400 fit.
    delivered, failed = produce_outcomes(broker.bootstrap, full, 600)
    assert delivered and failed, f"expected some writes to succeed and some to fail: {len(delivered)} / {failed[:3]}"
    assert set(failed) == {"KAFKA_STORAGE_ERROR"}, f"unexpected errors: {sorted(set(failed))}"
    assert broker.alive(), "the broker died when its disk filled up"
    offsets = [o for o, _ in delivered]
    assert offsets == list(range(len(delivered))), "acknowledged offsets are not contiguous from 0"

    # Everyone else is still served: another partition takes writes, the full one is readable.
    produce(broker.bootstrap, other, [(0, None, b"still-served", None)])
    read = consume_assigned(broker.bootstrap, full, [0], len(delivered), timeout_s=30)
    assert [(m.offset(), m.value()) for m in read] == delivered

    # After a restart without the limit the log is intact and takes writes at the next offset.
    broker.stop()
    broker.wrapper = []
    broker.start()
    read = consume_assigned(broker.bootstrap, full, [0], len(delivered), timeout_s=30)
    assert [(m.offset(), m.value()) for m in read] == delivered, "the log changed across the restart"
    more = produce(broker.bootstrap, full, [(0, None, b"after-restart", None)], acks="all")
    assert more[0].offset() == len(delivered)

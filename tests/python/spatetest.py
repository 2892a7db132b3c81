"""Helpers shared by the end-to-end tests: topic admin, producing and consuming with confluent-kafka
using assigned partitions (group tests live in test_groups.py), and running kcat."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import uuid

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

# A dummy group id: librdkafka's Consumer insists on one, but these helpers only use assign(),
# never subscribe() or commits, so no group membership is involved.
DUMMY_GROUP = "spate-e2e-assign-only"


def unique_topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def client_config(bootstrap: str, **extra) -> dict:
    return {"bootstrap.servers": bootstrap, "broker.address.family": "v4", **extra}


def admin(bootstrap: str) -> AdminClient:
    return AdminClient(client_config(bootstrap))


def create_topic(bootstrap: str, topic: str, partitions: int = 1, config: dict | None = None) -> None:
    # Keep the client referenced until the future resolves: a collected AdminClient cancels it.
    client = admin(bootstrap)
    futures = client.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=10,
        request_timeout=15,
    )
    futures[topic].result(timeout=20)
    wait_for_partitions(bootstrap, topic, partitions)


def wait_for_partitions(bootstrap: str, topic: str, partitions: int, timeout_s: float = 15.0) -> None:
    client = admin(bootstrap)
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        md = client.list_topics(topic=topic, timeout=5)
        t = md.topics.get(topic)
        if t is not None and t.error is None:
            seen = len(t.partitions)
            if seen == partitions and all(p.leader >= 0 for p in t.partitions.values()):
                return
        time.sleep(0.1)
    raise AssertionError(f"topic {topic} did not show {partitions} partitions with leaders (last seen {seen})")


def produce(bootstrap: str, topic: str, records, **config) -> list:
    """Produces (partition, key, value, headers) tuples and returns the delivered messages in delivery
    order; raises on any delivery error."""
    delivered = []
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered.append(msg)

    producer = Producer(client_config(bootstrap, **config))
    for partition, key, value, headers in records:
        while True:
            try:
                producer.produce(
                    topic, value=value, key=key, partition=partition, headers=headers, on_delivery=on_delivery
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(60)
    assert remaining == 0, f"{remaining} messages still undelivered after 60s"
    assert not errors, f"delivery errors: {errors[:5]} ({len(errors)} in all)"
    return delivered


def consume_assigned(
    bootstrap: str, topic: str, partitions, expected: int, timeout_s: float = 60.0, **config
) -> list:
    """Reads `partitions` of `topic` from the beginning with an assigned consumer until `expected`
    messages arrived (or the timeout) and keeps reading briefly for any unexpected extras."""
    consumer = Consumer(
        client_config(
            bootstrap,
            **{
                "group.id": DUMMY_GROUP,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                # Every batch's CRC checked: large reads arrive by sendfile straight from the
                # segment files, and this is the client that would notice a wrong byte.
                "check.crcs": True,
                **config,
            },
        )
    )
    messages = []
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + timeout_s
        while len(messages) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10000, timeout=0.5):
                if msg.error():
                    raise AssertionError(f"consumer error: {msg.error()}")
                messages.append(msg)
        # A short grace period to catch duplicates or records that should not be there.
        extra_deadline = time.monotonic() + 1.0
        while time.monotonic() < extra_deadline:
            for msg in consumer.consume(num_messages=10000, timeout=0.2):
                if msg.error() and msg.error().code() != KafkaError._PARTITION_EOF:
                    raise AssertionError(f"consumer error: {msg.error()}")
                if not msg.error():
                    messages.append(msg)
    finally:
        consumer.close()
    return messages


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets as the broker reports them (OffsetFetch); -1001 means none.
    Retries while the group's coordinator loads (the group's first commit may have created it)."""
    client = admin(bootstrap)
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])
    deadline = time.monotonic() + 30
    while True:
        try:
            result = client.list_consumer_group_offsets([request])[group].result(timeout=20)
            return {tp.partition: tp.offset for tp in result.topic_partitions}
        except KafkaException as e:
            error = e.args[0]
            loading = error.retriable() or error.code() == KafkaError.COORDINATOR_LOAD_IN_PROGRESS
            if not loading or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def watermarks(bootstrap: str, topic: str, partition: int) -> tuple[int, int]:
    consumer = Consumer(client_config(bootstrap, **{"group.id": DUMMY_GROUP, "enable.auto.commit": False}))
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    finally:
        consumer.close()


def kcat_binary() -> str:
    path = shutil.which("kcat")
    if path is None:
        raise RuntimeError("kcat is not installed: run ./scripts/test.sh setup")
    return path


def kcat(args: list[str], input_bytes: bytes | None = None, timeout_s: float = 30.0) -> subprocess.CompletedProcess:
    """Runs kcat with a hard timeout; raises with its stderr when it fails."""
    cmd = [kcat_binary(), *args]
    proc = subprocess.run(cmd, input=input_bytes, capture_output=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\nstderr:\n{proc.stderr.decode(errors='replace')}"
        )
    return proc


def wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.2, describe=None):
    """Polls `condition` until it returns something truthy and returns that; fails naming `what` (and
    what `describe()` says about the state) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            state = f"\nstate: {describe()}" if describe else ""
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{state}")
        time.sleep(interval_s)


def terminate(proc: subprocess.Popen, timeout_s: float) -> tuple[int, bool]:
    """SIGTERM, then SIGKILL if the process has not exited within `timeout_s`. Returns
    (exit status, whether SIGTERM was ignored)."""
    ignored = False
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            ignored = True
            proc.kill()
            proc.wait(timeout=timeout_s)
    return proc.returncode, ignored

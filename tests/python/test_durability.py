"""Crash safety of a spate broker's log, driven from outside: kill -9 during an acks=all produce run
loses no acknowledged record; a torn tail on the last segment is cut off on restart; retention deletes
old segments and advances the log start offset."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from spatetest import admin, consume_assigned, create_topic, produce, unique_topic, watermarks

# A producer that numbers its records 0, 1, 2, ... (record n goes to partition n % partitions) and
# appends "n partition offset" to the ack file for every record the broker acknowledged. The file is
# line-buffered, so every acknowledgement it saw is on disk in the OS's view when it is killed.
PRODUCER_SCRIPT = r"""
import sys
from confluent_kafka import Producer

bootstrap, topic, partitions, ack_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
acks = open(ack_path, "a", buffering=1)

def on_delivery(err, msg):
    if err is None:
        acks.write(f"{int(msg.value().split(b':')[0])} {msg.partition()} {msg.offset()}\n")

producer = Producer({
    "bootstrap.servers": bootstrap,
    "broker.address.family": "v4",
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 2,
    "batch.num.messages": 500,
    "message.timeout.ms": 300000,
})
n = 0
while True:
    try:
        producer.produce(topic, value=f"{n}:".encode() + b"x" * 100, key=str(n).encode(),
                         partition=n % partitions, on_delivery=on_delivery)
        n += 1
    except BufferError:
        producer.poll(0.05)
    producer.poll(0)
"""


def read_acks(path: Path) -> list[tuple[int, int, int]]:
    if not path.exists():
        return []
    acks = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:  # the very last line may have been cut by the kill
            acks.append(tuple(int(x) for x in parts))
    return acks


@pytest.mark.timeout(180)
def test_kill9_during_acks_all_produce_loses_no_acknowledged_record(broker, tmp_path):
    partitions = 3
    topic = unique_topic("crash")
    create_topic(broker.bootstrap, topic, partitions=partitions)
    ack_path = tmp_path / "acks.txt"

    with open(tmp_path / "producer.log", "wb") as producer_log:
        proc = subprocess.Popen(
            [sys.executable, "-c", PRODUCER_SCRIPT, broker.bootstrap, topic, str(partitions), str(ack_path)],
            stdout=subprocess.DEVNULL,
            stderr=producer_log,
        )
    try:
        deadline = time.monotonic() + 60
        while len(read_acks(ack_path)) < 5000 and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "producer.log").read_text()
            time.sleep(0.05)
        assert len(read_acks(ack_path)) >= 5000, "producer made too little progress before the crash"
        # The producer is still sending when the broker dies.
        assert proc.poll() is None
        broker.kill9()
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    acks = read_acks(ack_path)
    acked_numbers = [n for n, _, _ in acks]
    assert len(set(acked_numbers)) == len(acked_numbers), "a record was acknowledged twice"

    broker.restart()
    high = {p: watermarks(broker.bootstrap, topic, p) for p in range(partitions)}
    total = sum(hw for _, hw in high.values())
    assert all(lo == 0 for lo, _ in high.values()), high
    msgs = consume_assigned(broker.bootstrap, topic, range(partitions), expected=total, timeout_s=90)
    assert len(msgs) == total, f"high watermarks {high} but read {len(msgs)} records"

    by_partition = defaultdict(list)
    for m in msgs:
        by_partition[m.partition()].append(m)
    at = {}
    for p, ms in by_partition.items():
        # Contiguous from 0 up to the high watermark: no gaps, nothing twice.
        assert [m.offset() for m in ms] == list(range(high[p][1])), f"partition {p}"
        for m in ms:
            at[(p, m.offset())] = int(m.value().split(b":")[0])
    numbers = list(at.values())
    assert len(set(numbers)) == len(numbers), "a record is in the log twice"

    missing = [(n, p, off) for n, p, off in acks if at.get((p, off)) != n]
    assert not missing, f"{len(missing)} acknowledged records lost or moved, e.g. {missing[:5]}"
    # Within a partition the producer's order is the log's order.
    for p, ms in by_partition.items():
        ns = [int(m.value().split(b":")[0]) for m in ms]
        assert ns == sorted(ns), f"partition {p} out of order"

    # The recovered log takes new appends right after its end.
    delivered = produce(broker.bootstrap, topic, [(p, None, b"after", None) for p in range(partitions)], acks="all")
    assert sorted((m.partition(), m.offset()) for m in delivered) == [(p, high[p][1]) for p in range(partitions)]


def segment_files(partition_dir: Path) -> list[Path]:
    return sorted(partition_dir.glob("*.log"))


TORN_TAILS = {
    # A batch header that promises more bytes than were written: the classic torn write.
    "partial-batch": (100).to_bytes(8, "big") + (500).to_bytes(4, "big") + b"\x00\x00\x00\x00\x02" + b"\xab" * 40,
    # Bytes that are no batch at all, with an absurd length field.
    "junk": b"\xff" * 7 + b"\x7f\xff\xff\xff" + os.urandom(61),
    # Fewer bytes than a batch's length prefix.
    "short": b"\x00\x00\x00",
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("tail", sorted(TORN_TAILS))
def test_torn_tail_is_truncated_on_restart(broker, tail):
    topic = unique_topic("torn")
    create_topic(broker.bootstrap, topic, partitions=1)
    records = [(0, f"k{i}".encode(), f"v{i}".encode() * 10, None) for i in range(100)]
    produce(broker.bootstrap, topic, records, acks="all", **{"enable.idempotence": True})

    broker.kill9()
    partition_dir = broker.data_dir / f"{topic}-0"
    segments = segment_files(partition_dir)
    assert segments, f"no .log segment in {partition_dir}: {sorted(os.listdir(partition_dir))}"
    assert all(re.fullmatch(r"\d{20}\.log", s.name) for s in segments), segments
    last = segments[-1]
    good_size = last.stat().st_size
    with open(last, "ab") as f:
        f.write(TORN_TAILS[tail])

    broker.restart()
    assert watermarks(broker.bootstrap, topic, 0) == (0, 100)
    assert last.stat().st_size == good_size, "the torn tail was not truncated"
    msgs = consume_assigned(broker.bootstrap, topic, [0], expected=100)
    assert [(m.offset(), m.key(), m.value()) for m in msgs] == [
        (i, f"k{i}".encode(), f"v{i}".encode() * 10) for i in range(100)
    ]

    # New appends land right after the good data and read back.
    delivered = produce(broker.bootstrap, topic, [(0, b"new", b"after-recovery", None)], acks="all")
    assert [m.offset() for m in delivered] == [100]
    msgs = consume_assigned(broker.bootstrap, topic, [0], expected=101)
    assert [(m.offset(), m.value()) for m in msgs[-1:]] == [(100, b"after-recovery")]
    assert len(msgs) == 101


@pytest.mark.timeout(90)
def test_retention_deletes_old_segments_and_advances_log_start(broker_factory):
    # Retention checks every 200 ms instead of every 5 minutes.
    broker = broker_factory(extra_args=["--set", "log.retention.check.interval.ms=200"])
    topic = unique_topic("retention")
    # Keep everything while producing, so the segment count is known before retention starts.
    create_topic(broker.bootstrap, topic, partitions=1, config={"segment.bytes": "1024", "retention.ms": "-1"})
    for i in range(40):
        # One batch per produce call (flushed each time): about 350 bytes, so ~3 batches a segment.
        produce(broker.bootstrap, topic, [(0, None, f"{i:04d}".encode() + b"r" * 300, None)], acks="all")
    partition_dir = broker.data_dir / f"{topic}-0"
    before = segment_files(partition_dir)
    assert len(before) >= 5, f"expected several segments with segment.bytes=1024, got {before}"
    assert watermarks(broker.bootstrap, topic, 0) == (0, 40)

    client = admin(broker.bootstrap)
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[ConfigEntry("retention.ms", "500", incremental_operation=AlterConfigOpType.SET)],
    )
    client.incremental_alter_configs([resource])[resource].result(timeout=20)

    deadline = time.monotonic() + 30
    low = 0
    while time.monotonic() < deadline:
        low, high = watermarks(broker.bootstrap, topic, 0)
        if low > 0 and len(segment_files(partition_dir)) < len(before):
            break
        time.sleep(0.2)
    assert low > 0, "log start offset did not advance"
    # Let any retention pass in progress finish (several check intervals) before comparing.
    time.sleep(1.0)
    low, high = watermarks(broker.bootstrap, topic, 0)
    after = segment_files(partition_dir)
    assert len(after) < len(before), f"no segment was deleted: {after}"
    assert high == 40, "retention must not move the high watermark"
    # The log start offset is the base offset of the oldest segment that is left (which may be a
    # fresh, empty active segment at 40 if every old one expired).
    assert after, "the partition has no segment at all"
    assert low == int(after[0].name[:20]), (low, after)
    msgs = consume_assigned(broker.bootstrap, topic, [0], expected=40 - low)
    assert [m.offset() for m in msgs] == list(range(low, 40))
    if msgs:
        assert msgs[0].value().startswith(f"{low:04d}".encode())

"""quixstreams (a Kafka-Streams-like Python library we did not write) with
processing_guarantee="exactly-once" against a spate broker: its transactional producer, KIP-447
offset commits inside transactions, read_committed input and changelog-backed state. The app is
killed with SIGKILL at random points and restarted; the read_committed output must hold each input
record exactly once with each key's running count gapless (so no state update was lost or applied
twice either)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from spatetest import client_config, consume_assigned, create_topic, unique_topic

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).with_name("quix_count_app.py")
PARTITIONS = 3
KEYS = 12
RECORDS = 20000
KILLS = 3


def quix_python() -> str:
    path = os.environ.get("SPATE_QUIX_PYTHON") or str(ROOT / ".venv-quix" / "bin" / "python")
    if not os.access(path, os.X_OK):
        # Not a skip: scripts/test.sh installs this venv; a missing one is a broken setup.
        raise AssertionError(f"no quixstreams venv at {path}: run ./scripts/test.sh setup")
    return path


def start_app(python: str, bootstrap: str, group: str, source: str, sink: str, state_dir: Path, log: Path):
    out = open(log, "ab")
    try:
        return subprocess.Popen(
            [python, "-W", "ignore", str(APP), bootstrap, group, source, sink, str(state_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        out.close()


def produce_input(bootstrap: str, topic: str, first: int, count: int) -> None:
    p = Producer(client_config(bootstrap, **{"enable.idempotence": True, "linger.ms": 5}))
    for i in range(first, first + count):
        p.produce(topic, key=f"k{i % KEYS}".encode(), value=json.dumps({"id": i}).encode())
    assert p.flush(30) == 0


def committed_input(bootstrap: str, group: str, topic: str) -> int:
    """How many input records `group` has committed (sum over partitions)."""
    c = Consumer(client_config(bootstrap, **{"group.id": group, "enable.auto.commit": False}))
    try:
        offsets = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    finally:
        c.close()
    return sum(max(tp.offset, 0) for tp in offsets)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quixstreams_exactly_once_survives_kill9(broker, tmp_path):
    python = quix_python()
    source, sink = unique_topic("quix-in"), unique_topic("quix-out")
    create_topic(broker.bootstrap, source, partitions=PARTITIONS)
    create_topic(broker.bootstrap, sink, partitions=PARTITIONS)
    group = unique_topic("quix-app")
    state_dir = tmp_path / "state"
    log = tmp_path / "app.log"
    rng = random.Random(14)

    # Each instance starts on a backlog and is killed a few seconds in, mid-stream and
    # mid-transaction (the test checks that at least one kill left input unprocessed).
    slice_size = RECORDS // (KILLS + 1)
    app = None
    mid_stream_kills = 0
    try:
        for k in range(KILLS + 1):
            produce_input(broker.bootstrap, source, k * slice_size, slice_size)
            app = start_app(python, broker.bootstrap, group, source, sink, state_dir, log)
            if k < KILLS:
                time.sleep(rng.uniform(3.0, 7.0))
                assert app.poll() is None, f"the app exited on its own:\n{log.read_text()[-3000:]}"
                os.killpg(app.pid, signal.SIGKILL)
                app.wait(10)
                if committed_input(broker.bootstrap, group, source) < (k + 1) * slice_size:
                    mid_stream_kills += 1
        # The last instance finishes the backlog; a killed one's open transaction is aborted by the
        # coordinator after transaction.timeout.ms.
        got = consume_assigned(
            broker.bootstrap, sink, range(PARTITIONS), RECORDS, 150, **{"isolation.level": "read_committed"}
        )
    finally:
        if app is not None and app.poll() is None:
            os.killpg(app.pid, signal.SIGTERM)
            try:
                app.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(app.pid, signal.SIGKILL)
                app.wait(10)

    assert mid_stream_kills > 0, "every kill came after the app had caught up: the test proved nothing"
    records = [(m.key().decode(), json.loads(m.value())) for m in got]
    ids = [v["id"] for _, v in records]
    assert len(ids) == RECORDS and set(ids) == set(range(RECORDS)), (
        f"{len(ids)} outputs for {RECORDS} inputs: {len(set(ids))} distinct, "
        f"{len(ids) - len(set(ids))} duplicates, missing {sorted(set(range(RECORDS)) - set(ids))[:10]}\n"
        f"app log tail:\n{log.read_text()[-3000:]}"
    )
    counts = defaultdict(list)
    for key, v in records:
        counts[key].append(v["n"])
    for key, ns in counts.items():
        # One key lives in one partition, so its outputs are in order.
        assert ns == list(range(1, len(ns) + 1)), f"key {key}: counts {ns[:20]}... are not 1..{len(ns)}"
    assert sum(len(ns) for ns in counts.values()) == RECORDS

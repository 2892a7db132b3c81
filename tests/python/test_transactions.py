"""Transactions (KIP-98) with clients we did not write: confluent-kafka's transactional producer and
read_committed consumer, zombie fencing, a producer killed mid-transaction (aborted by the
coordinator's timeout), consume-transform-produce with send_offsets_to_transaction (also SIGKILLed at
random points 20 times, ctp_app.py), kafka-python's
transactional producer, a broker restart, and kcat reading read_committed."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from spatetest import (
    DUMMY_GROUP,
    client_config,
    committed_offsets,
    consume_assigned,
    create_topic,
    kcat,
    produce,
    unique_topic,
    wait_until,
)

TXN_TIMEOUT_MS = 5_000


def txn_producer(bootstrap: str, transactional_id: str, **extra) -> Producer:
    p = Producer(
        client_config(
            bootstrap,
            **{
                "transactional.id": transactional_id,
                "transaction.timeout.ms": TXN_TIMEOUT_MS,
                "linger.ms": 5,
                **extra,
            },
        )
    )
    p.init_transactions(30)
    return p


def values(messages) -> list[bytes]:
    return [m.value() for m in messages]


def read_committed(bootstrap: str, topic: str, partitions, expected: int, timeout_s: float = 30.0):
    return consume_assigned(bootstrap, topic, partitions, expected, timeout_s, **{"isolation.level": "read_committed"})


@pytest.mark.timeout(120)
def test_committed_is_visible_aborted_never_and_order_is_kept(broker):
    topic = unique_topic("txn")
    create_topic(broker.bootstrap, topic, partitions=3)
    p = txn_producer(broker.bootstrap, "txn-basic")
    expected = []
    for round_ in range(6):
        p.begin_transaction()
        batch = [f"r{round_}-{i:04d}".encode() for i in range(300)]
        for i, v in enumerate(batch):
            p.produce(topic, key=str(i % 7).encode(), value=v, partition=i % 3)
        if round_ % 2 == 0:
            p.commit_transaction(30)
            expected.extend(batch)
        else:
            # Flushed first, so the aborted records are in the log (abort purges unsent ones).
            p.flush(30)
            p.abort_transaction(30)
    # Plain (non-transactional) records interleave fine too.
    plain = Producer(client_config(broker.bootstrap, **{"enable.idempotence": True}))
    plain.produce(topic, value=b"plain", partition=0)
    plain.flush(10)
    expected.append(b"plain")

    got = read_committed(broker.bootstrap, topic, range(3), len(expected))
    assert sorted(values(got)) == sorted(expected), "read_committed must see exactly the committed records"
    for part in range(3):
        in_order = [m.value() for m in sorted(got, key=lambda m: m.offset()) if m.partition() == part]
        mine = [v for v in expected if v != b"plain" and int(v.split(b"-")[1]) % 3 == part]
        assert [v for v in in_order if v != b"plain"] == mine, f"partition {part} out of order"
    # read_uncommitted (librdkafka's default is read_committed) sees the aborted records too, never
    # control records.
    everything = consume_assigned(
        broker.bootstrap, topic, range(3), 6 * 300 + 1, 30.0, **{"isolation.level": "read_uncommitted"}
    )
    assert len(everything) == 6 * 300 + 1


@pytest.mark.timeout(120)
def test_open_transaction_holds_back_read_committed_until_it_commits(broker):
    topic = unique_topic("lso")
    create_topic(broker.bootstrap, topic, partitions=1)
    p = txn_producer(broker.bootstrap, "txn-lso")
    p.begin_transaction()
    p.produce(topic, value=b"first", partition=0)
    p.flush(10)
    plain = Producer(client_config(broker.bootstrap))
    plain.produce(topic, value=b"after", partition=0)
    plain.flush(10)
    # The open transaction pins the LSO: nothing from its first offset on is visible, not even
    # the plain record after it.
    c = Consumer(client_config(broker.bootstrap, **{"group.id": DUMMY_GROUP, "isolation.level": "read_committed"}))
    lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
    assert hi == 0, f"read_committed high offset must be the LSO 0, got {hi}"
    c.close()
    assert read_committed(broker.bootstrap, topic, [0], 1, timeout_s=3) == []
    p.commit_transaction(30)
    got = read_committed(broker.bootstrap, topic, [0], 2)
    assert values(got) == [b"first", b"after"]


@pytest.mark.timeout(120)
def test_a_second_producer_fences_the_first(broker):
    topic = unique_topic("fence")
    create_topic(broker.bootstrap, topic, partitions=1)
    old = txn_producer(broker.bootstrap, "txn-zombie")
    old.begin_transaction()
    old.produce(topic, value=b"zombie", partition=0)
    old.flush(10)
    new = txn_producer(broker.bootstrap, "txn-zombie")  # aborts the old one's transaction
    new.begin_transaction()
    new.produce(topic, value=b"new", partition=0)
    new.commit_transaction(30)
    with pytest.raises(KafkaException) as raised:
        old.produce(topic, value=b"zombie-2", partition=0)
        old.commit_transaction(10)
    err = raised.value.args[0]
    assert err.fatal() or err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH), err
    got = read_committed(broker.bootstrap, topic, [0], 1)
    assert values(got) == [b"new"]


def _produce_then_hang(bootstrap: str, topic: str, ready) -> None:
    p = Producer(
        client_config(bootstrap, **{"transactional.id": "txn-killed", "transaction.timeout.ms": TXN_TIMEOUT_MS})
    )
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(100):
        p.produce(topic, value=f"doomed-{i}".encode(), partition=0)
    p.flush(10)
    ready.set()
    time.sleep(600)


@pytest.mark.timeout(120)
def test_a_producer_killed_mid_transaction_is_aborted_after_its_timeout(broker):
    topic = unique_topic("killed")
    create_topic(broker.bootstrap, topic, partitions=1)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_produce_then_hang, args=(broker.bootstrap, topic, ready))
    child.start()
    try:
        assert ready.wait(60), "the child never produced"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.join(10)
    plain = Producer(client_config(broker.bootstrap))
    plain.produce(topic, value=b"later", partition=0)
    plain.flush(10)
    # Held back by the open transaction until the coordinator aborts it (timeout + a tick).
    started = time.monotonic()
    got = read_committed(broker.bootstrap, topic, [0], 1, timeout_s=40)
    assert values(got) == [b"later"], "the aborted records must never show, the later one must"
    assert time.monotonic() - started < 40
    c = Consumer(client_config(broker.bootstrap, **{"group.id": DUMMY_GROUP, "isolation.level": "read_committed"}))
    _, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
    c.close()
    assert hi >= 102, f"the LSO must move past the aborted transaction and its marker, got {hi}"


@pytest.mark.timeout(120)
def test_transactions_survive_a_broker_restart(broker):
    topic = unique_topic("restart")
    create_topic(broker.bootstrap, topic, partitions=2)
    p = txn_producer(broker.bootstrap, "txn-restart")
    p.begin_transaction()
    for i in range(50):
        p.produce(topic, value=f"kept-{i}".encode(), partition=i % 2)
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(50):
        p.produce(topic, value=f"gone-{i}".encode(), partition=i % 2)
    p.abort_transaction(30)
    p.flush(5)
    del p
    broker.kill9()
    broker.restart()
    got = read_committed(broker.bootstrap, topic, range(2), 50)
    assert sorted(values(got)) == sorted(f"kept-{i}".encode() for i in range(50))
    # The coordinator's state came back too: the same id initialises with a bumped epoch and works.
    p = txn_producer(broker.bootstrap, "txn-restart")
    p.begin_transaction()
    p.produce(topic, value=b"again", partition=0)
    p.commit_transaction(30)
    got = read_committed(broker.bootstrap, topic, range(2), 51)
    assert b"again" in values(got) and len(got) == 51


@pytest.mark.timeout(120)
def test_a_kill9_restart_restores_transactions_from_segment_indexes_and_snapshots(broker):
    """Many small segments of committed and aborted transactions and one transaction still open,
    then kill -9: the restarted broker restores them from the segments' .txnindex files and a
    producer-state snapshot (both on disk), so read_committed shows exactly the committed records,
    the open transaction holds the LSO until the coordinator aborts it, and later ones work."""
    topic = unique_topic("txnidx")
    create_topic(broker.bootstrap, topic, partitions=1, config={"segment.bytes": "65536"})
    p = txn_producer(broker.bootstrap, "txn-index")
    expected = []
    for round in range(30):
        p.begin_transaction()
        for i in range(100):
            value = f"r{round:02}-{i:03}-" + "x" * 180
            p.produce(topic, value=value.encode(), partition=0)
            if round % 2 == 0:
                expected.append(value.encode())
        if round % 2 == 0:
            p.commit_transaction(30)
        else:
            p.flush(30)  # the aborted records reach the log (an abort purges what is unsent)
            p.abort_transaction(30)
    hanging = txn_producer(broker.bootstrap, "txn-index-open")
    hanging.begin_transaction()
    for i in range(10):
        hanging.produce(topic, value=f"open-{i}".encode(), partition=0)
    hanging.flush(10)
    time.sleep(1.5)  # the flusher makes the closed segments durable and checkpoints them
    part_dir = broker.data_dir / f"{topic}-0"
    names = sorted(os.listdir(part_dir))
    assert sum(n.endswith(".log") for n in names) >= 6, names
    assert sum(n.endswith(".txnindex") for n in names) >= 5, names
    # Closed segments' aborted transactions are on disk (a .txnindex is a 10-byte header + entries).
    assert any(n.endswith(".txnindex") and (part_dir / n).stat().st_size > 10 for n in names), names
    assert any(n.endswith(".snapshot") for n in names), names
    del p, hanging
    broker.kill9()
    broker.restart()
    got = read_committed(broker.bootstrap, topic, [0], len(expected))
    assert values(got) == expected, "committed records, in order, and nothing aborted or open"
    # The open transaction is aborted by its coordinator after its timeout; then a new one commits.
    p = txn_producer(broker.bootstrap, "txn-index")
    p.begin_transaction()
    p.produce(topic, value=b"after", partition=0)
    p.commit_transaction(30)
    got = read_committed(broker.bootstrap, topic, [0], len(expected) + 1, timeout_s=45)
    assert values(got) == expected + [b"after"]


@pytest.mark.timeout(180)
def test_consume_transform_produce_with_offsets_in_the_transaction(broker):
    source = unique_topic("ctp-in")
    sink = unique_topic("ctp-out")
    create_topic(broker.bootstrap, source, partitions=2)
    create_topic(broker.bootstrap, sink, partitions=2)
    n = 2_000
    src = Producer(client_config(broker.bootstrap))
    for i in range(n):
        src.produce(source, value=str(i).encode(), partition=i % 2)
    src.flush(30)
    group = unique_topic("ctp-group")

    def run(until: int, abort_last: bool) -> int:
        consumer = Consumer(
            client_config(
                broker.bootstrap,
                **{
                    "group.id": group,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                },
            )
        )
        consumer.subscribe([source])
        producer = txn_producer(broker.bootstrap, "txn-ctp")
        done = 0
        deadline = time.monotonic() + 60
        try:
            while done < until and time.monotonic() < deadline:
                msgs = consumer.consume(num_messages=200, timeout=0.5)
                msgs = [m for m in msgs if not m.error()]
                if not msgs:
                    continue
                producer.begin_transaction()
                for m in msgs:
                    producer.produce(sink, value=b"x" + m.value(), partition=m.partition())
                producer.send_offsets_to_transaction(
                    consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30
                )
                if abort_last and done + len(msgs) >= until:
                    producer.abort_transaction(30)
                    return done
                producer.commit_transaction(30)
                done += len(msgs)
        finally:
            consumer.close()
        return done

    first = run(n // 2, abort_last=True)
    # The second instance resumes from the committed offsets: the aborted batch is redone, not lost.
    run(n - first, abort_last=False)
    got = read_committed(broker.bootstrap, sink, range(2), n)
    assert sorted(int(v[1:]) for v in values(got)) == list(range(n)), "each input exactly once in the output"


CTP_APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ctp_app.py")
CTP_KILLS = 20
CTP_PARTITIONS = 3
CTP_RECORDS = 50_000
# A kill comes after at most this many commits of one instance (100 records each): every kill lands
# while input is left (20 x 2,000 < 50,000).
CTP_MAX_COMMITS_BEFORE_KILL = 20


def _lines(log_path: str) -> list[str]:
    with open(log_path, errors="replace") as f:
        return f.read().splitlines()


def _tail(log_path: str) -> str:
    return "\n".join(_lines(log_path)[-40:])


def _running(app: subprocess.Popen, log_path: str) -> None:
    assert app.poll() is None, f"the app exited with {app.returncode}:\n{_tail(log_path)}"


def _commits(log_path: str) -> int:
    return sum(1 for line in _lines(log_path) if line.startswith("committed "))


def _group_committed(bootstrap: str, group: str, topic: str) -> int:
    """The sum of `group`'s committed offsets on `topic` (the input records it committed)."""
    return sum(max(o, 0) for o in committed_offsets(bootstrap, group, topic, CTP_PARTITIONS).values())


@pytest.mark.timeout(300)
def test_consume_transform_produce_killed_9_at_random_points_20_times(broker, tmp_path):
    """ctp_app.py (confluent-kafka, send_offsets_to_transaction) SIGKILLed at a random moment 20 times,
    each time restarted with the same transactional.id, then left to finish: the read_committed output
    holds each input exactly once, in input order per partition."""
    source = unique_topic("ctp9-in")
    sink = unique_topic("ctp9-out")
    group = unique_topic("ctp9-group")
    create_topic(broker.bootstrap, source, partitions=CTP_PARTITIONS)
    create_topic(broker.bootstrap, sink, partitions=CTP_PARTITIONS)
    produce(
        broker.bootstrap,
        source,
        ((i % CTP_PARTITIONS, None, str(i).encode(), None) for i in range(CTP_RECORDS)),
        **{"linger.ms": 5},
    )

    rng = random.Random(1447)
    # The input committed at each kill.
    progress = []

    def start(n: int):
        log_path = str(tmp_path / f"ctp-{n}.log")
        args = [broker.bootstrap, group, source, sink, str(CTP_PARTITIONS), "ctp9-app", str(n)]
        with open(log_path, "wb") as log:
            app = subprocess.Popen([sys.executable, CTP_APP, *args], stdout=log, stderr=subprocess.STDOUT)
        return app, log_path

    for k in range(CTP_KILLS + 1):
        app, log_path = start(k)
        try:
            # init_transactions waits for the previous instance's transaction to be aborted.
            def ready():
                _running(app, log_path)
                return any(line.startswith("ready") for line in _lines(log_path))

            wait_until(ready, 60, f"instance {k} to be ready", interval_s=0.02, describe=lambda: _tail(log_path))
            if k < CTP_KILLS:
                if rng.random() < 0.25:
                    # Early: while it fetches its offsets or its first records.
                    time.sleep(rng.uniform(0.0, 0.3))
                else:
                    # After a few commits, anywhere in the next transaction (sending, between the
                    # sends and send_offsets_to_transaction, committing) or just after it.
                    commits = rng.randint(1, CTP_MAX_COMMITS_BEFORE_KILL)
                    wait_until(lambda: _commits(log_path) >= commits, 60, f"{commits} commits of instance {k}",
                               interval_s=0.005, describe=lambda: _tail(log_path))
                    time.sleep(rng.uniform(0.0, 0.015))
                _running(app, log_path)
                app.send_signal(signal.SIGKILL)
                app.wait(10)
                progress.append(_group_committed(broker.bootstrap, group, source))
            else:
                wait_until(lambda: _group_committed(broker.bootstrap, group, source) == CTP_RECORDS,
                           180, "the last instance to commit all input", interval_s=0.5,
                           describe=lambda: _tail(log_path))
        finally:
            if app.poll() is None:
                app.kill()
                app.wait(10)
    print(f"committed input at each kill: {progress}")
    assert all(done < CTP_RECORDS for done in progress), f"kills after all input was committed: {progress}"

    expected = {p: [f"out-{i}".encode() for i in range(p, CTP_RECORDS, CTP_PARTITIONS)] for p in range(CTP_PARTITIONS)}
    got = read_committed(broker.bootstrap, sink, range(CTP_PARTITIONS), CTP_RECORDS, timeout_s=60)
    for p in range(CTP_PARTITIONS):
        seen = [m.value() for m in got if m.partition() == p]
        assert seen == expected[p], (
            f"partition {p}: {len(seen)} records, {len(set(seen))} distinct, expected {len(expected[p])}; "
            f"first difference at {next((i for i, (a, b) in enumerate(zip(seen, expected[p])) if a != b), None)}"
        )
    # The kills did leave transactions open with records in the log, which were aborted: a
    # read_uncommitted reader sees them, read_committed above did not.
    everything = consume_assigned(
        broker.bootstrap, sink, range(CTP_PARTITIONS), CTP_RECORDS + 1, 30, **{"isolation.level": "read_uncommitted"}
    )
    assert len(everything) > CTP_RECORDS, "no kill left an open transaction with records: the test proved less"


@pytest.mark.timeout(120)
def test_kafka_python_transactional_producer_and_kcat_read_committed(broker):
    kafka = pytest.importorskip("kafka")
    topic = unique_topic("kp-txn")
    create_topic(broker.bootstrap, topic, partitions=1)
    p = kafka.KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id="kp-txn")
    p.init_transactions()
    p.begin_transaction()
    for i in range(10):
        p.send(topic, value=f"kp-{i}".encode(), partition=0)
    p.commit_transaction()
    p.begin_transaction()
    p.send(topic, value=b"kp-aborted", partition=0)
    p.abort_transaction()
    p.close()
    out = kcat(
        ["-C", "-b", broker.bootstrap, "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q",
         "-X", "isolation.level=read_committed", "-X", "broker.address.family=v4"]
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().split() == [f"kp-{i}" for i in range(10)]


def java_hash(s: str) -> int:
    h = 0
    for unit in s.encode("utf-16-be").hex(" ", 2).split():
        h = (h * 31 + int(unit, 16)) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def txn_coordinator_of(cluster, transactional_id: str, partitions: int = 50) -> int:
    """The leader of the transactional id's __transaction_state partition (Kafka's abs(hash) % n)."""
    h = java_hash(transactional_id)
    index = (0 if h == -(1 << 31) else abs(h)) % partitions
    view = cluster.partition_view("__transaction_state", index)
    assert view is not None and view.leader >= 0, f"__transaction_state-{index} has no leader"
    return view.leader


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_transactions_survive_coordinator_and_leader_failover(cluster):
    """30 transactions over 6 partitions of an RF=3 topic (markers go to other brokers with
    WriteTxnMarkers); the transaction coordinator is killed after round 10, a data partition's leader
    after round 20. Every transaction the producer saw commit is visible whole, every abort never, an
    interrupted one all or nothing; no transaction is left hanging (the LSO reaches the high
    watermark everywhere)."""
    topic = unique_topic("txn-failover")
    cluster.create_topic(topic, 6, 3, {"min.insync.replicas": "2"})
    tid = "txn-failover"
    config = {
        "transactional.id": tid,
        "transaction.timeout.ms": 30_000,
        "message.timeout.ms": 30_000,
        "request.timeout.ms": 10_000,
        "retry.backoff.ms": 100,
    }

    def make():
        p = Producer(client_config(cluster.up_bootstrap(), **config))
        p.init_transactions(60)
        return p

    producer = make()
    committed, aborted, uncertain = [], [], []
    killed = None
    for round_ in range(30):
        if round_ == 10:
            killed = txn_coordinator_of(cluster, tid)
            cluster.kill(killed)
        if round_ == 20:
            cluster.restart(killed)
            cluster.wait_ready()
            killed = cluster.partition_view(topic, 0).leader
            cluster.kill(killed)
        batch = [f"{round_}-{i}".encode() for i in range(60)]
        try:
            producer.begin_transaction()
            for i, v in enumerate(batch):
                producer.produce(topic, value=v, partition=i % 6)
            if round_ % 3 == 2:
                producer.flush(60)
                producer.abort_transaction(60)
                aborted.append(batch)
            else:
                producer.commit_transaction(60)
                committed.append(batch)
        except KafkaException as e:
            err = e.args[0]
            if err.txn_requires_abort():
                producer.abort_transaction(60)
                aborted.append(batch)
            else:
                # Fatal or unknown outcome: a new instance fences this one; the transaction is then
                # either committed whole (its commit was durable) or aborted whole.
                uncertain.append(batch)
                producer = make()
    del producer
    cluster.restart(killed)
    cluster.wait_ready()
    assert len(committed) >= 15, f"too few transactions committed: {len(committed)}"

    expected = sum(len(v) for v in committed)
    got = set(values(read_committed(cluster.up_bootstrap(), topic, range(6), expected, timeout_s=60)))
    for txn in committed:
        assert set(txn) <= got, f"a committed transaction is missing records: {txn[0]!r}..."
    for txn in aborted:
        assert not set(txn) & got, f"an aborted transaction is visible: {txn[0]!r}..."
    for txn in uncertain:
        assert set(txn) <= got or not set(txn) & got, f"a transaction is partly visible: {txn[0]!r}..."
    assert len(got) == expected + sum(len(t) for t in uncertain if set(t) <= got)

    c = Consumer(client_config(cluster.up_bootstrap(), **{"group.id": DUMMY_GROUP, "isolation.level": "read_committed"}))
    u = Consumer(client_config(cluster.up_bootstrap(), **{"group.id": DUMMY_GROUP, "isolation.level": "read_uncommitted"}))
    try:
        for part in range(6):
            tp = TopicPartition(topic, part)
            wait_until(
                lambda: c.get_watermark_offsets(tp, timeout=10, cached=False)[1]
                == u.get_watermark_offsets(tp, timeout=10, cached=False)[1],
                30,
                f"the LSO of partition {part} to reach its high watermark (no hanging transaction)",
            )
    finally:
        c.close()
        u.close()

"""A replicated spate cluster under faults, driven from outside with real clients: three `spate broker`
processes (spatecluster.py, fixture `cluster` / `cluster_factory`) on loopback whose brokers are
SIGKILLed and restarted, SIGSTOPped and resumed, or cut off from each other by proxies.

The central check follows Jepsen's Kafka workload: an idempotent acks=all producer writes unique values
while faults happen and records every acknowledgement (partition, offset, value); afterwards a fresh
consumer reads everything and `check_history` counts lost writes (acknowledged, never read), duplicates,
reordering within a partition, acknowledged offsets that hold another value, and offsets used twice.
Every count must be zero. Faults are chosen by a seeded random generator whose seed is printed and put
in the failure message; SPATE_FAULT_SEED=<seed> replays the same choices.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import defaultdict

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from spatecluster import (
    NONE,
    NOT_ENOUGH_REPLICAS,
    NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    ProtocolError,
    produce_request,
    wait_until,
)
from spatetest import client_config, kcat, produce, unique_topic

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

PARTITIONS = 3
TOPIC_CONFIG = {"min.insync.replicas": "2"}
# librdkafka settings for producers that must ride out a failover: generous delivery timeout, prompt
# retries, requests to a dead leader abandoned quickly.
FAILOVER_PRODUCER = {
    "acks": "all",
    "enable.idempotence": True,
    "message.timeout.ms": 60000,
    "request.timeout.ms": 10000,
    "retry.backoff.ms": 100,
    "retry.backoff.max.ms": 1000,
    "linger.ms": 5,
    "topic.metadata.refresh.interval.ms": 1000,
}


def fault_seed() -> int:
    seed = int(os.environ.get("SPATE_FAULT_SEED") or random.randrange(2**32))
    print(f"fault seed {seed} (replay with SPATE_FAULT_SEED={seed})")
    return seed


# --- the history checker -------------------------------------------------------------------------------


def value_of(partition: int, seq: int) -> bytes:
    return f"{partition}-{seq}".encode()


def parse_value(value: bytes) -> tuple[int, int] | None:
    try:
        p, seq = value.decode().split("-")
        return int(p), int(seq)
    except (UnicodeDecodeError, ValueError):
        return None


def check_history(acked, consumed, sent: set[bytes]) -> dict[str, list]:
    """Compares acknowledged writes with what a consumer read. `acked` and `consumed` are lists of
    (partition, offset, value); values are "partition-seq", sent in increasing seq per partition.
    Returns the anomalies by kind, each list empty when all is well."""
    anomalies: dict[str, list] = {
        "lost": [],  # acknowledged, never consumed
        "duplicated": [],  # consumed more than once
        "reordered": [],  # a partition's values out of send order (by offset)
        "offset_mismatch": [],  # acknowledged at one offset, consumed at another
        "offset_reused": [],  # one offset acknowledged or consumed for two values
        "wrong_partition": [],  # consumed in a partition it was not sent to
        "unexpected": [],  # consumed, never sent
        "offsets_backwards": [],  # the consumer's offsets went back within a partition
    }
    consumed_at: dict[bytes, list[tuple[int, int]]] = defaultdict(list)
    values_at: dict[tuple[int, int], set[bytes]] = defaultdict(set)
    last_offset: dict[int, int] = {}
    for p, off, v in consumed:
        consumed_at[v].append((p, off))
        values_at[(p, off)].add(v)
        if p in last_offset and off <= last_offset[p]:
            anomalies["offsets_backwards"].append((p, last_offset[p], off))
        last_offset[p] = off
        if v not in sent:
            anomalies["unexpected"].append((p, off, v))
        parsed = parse_value(v)
        if parsed is not None and parsed[0] != p:
            anomalies["wrong_partition"].append((p, off, v))
    for v, where in consumed_at.items():
        if len(where) > 1:
            anomalies["duplicated"].append((v, where))
    for pos, vs in values_at.items():
        if len(vs) > 1:
            anomalies["offset_reused"].append((pos, sorted(vs)))
    acked_at: dict[tuple[int, int], set[bytes]] = defaultdict(set)
    for p, off, v in acked:
        acked_at[(p, off)].add(v)
        where = consumed_at.get(v)
        if not where:
            anomalies["lost"].append((p, off, v))
        elif (p, off) not in where:
            anomalies["offset_mismatch"].append((v, (p, off), where))
    for pos, vs in acked_at.items():
        if len(vs) > 1:
            anomalies["offset_reused"].append((pos, sorted(vs)))
    by_partition: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for p, off, v in consumed:
        parsed = parse_value(v)
        if parsed is not None:
            by_partition[p].append((off, parsed[1]))
    for p, entries in by_partition.items():
        entries.sort()
        for (o1, s1), (o2, s2) in zip(entries, entries[1:]):
            if s2 <= s1:
                anomalies["reordered"].append((p, (o1, s1), (o2, s2)))
    return anomalies


def summarize(anomalies: dict[str, list]) -> str:
    parts = []
    for kind, items in anomalies.items():
        parts.append(f"{kind}={len(items)}" + (f" e.g. {items[:3]}" if items else ""))
    return ", ".join(parts)


def test_checker_finds_every_anomaly():
    """The checker itself (no broker): a clean history passes, each planted anomaly is counted."""
    sent = {value_of(0, s) for s in range(5)} | {value_of(1, s) for s in range(3)}
    acked = [(0, s, value_of(0, s)) for s in range(4)] + [(1, s, value_of(1, s)) for s in range(3)]
    consumed = list(acked) + [(0, 4, value_of(0, 4))]  # an unacknowledged write that landed: fine
    assert not any(check_history(acked, consumed, sent).values())

    def anomalies_of(consumed_history, acked_history=acked):
        found = check_history(acked_history, consumed_history, sent)
        return {kind: items for kind, items in found.items() if items}

    v = value_of
    lost = [c for c in consumed if c[2] != v(0, 2)]
    assert anomalies_of(lost) == {"lost": [(0, 2, v(0, 2))]}
    duplicate = consumed + [(1, 3, v(1, 0))]
    assert set(anomalies_of(duplicate)) == {"duplicated", "reordered"}
    # 0-2 and 0-3 swapped: both acknowledged at other offsets, and out of send order.
    swapped = [(0, 0, v(0, 0)), (0, 1, v(0, 1)), (0, 2, v(0, 3)), (0, 3, v(0, 2))] + consumed[4:]
    assert set(anomalies_of(swapped)) == {"offset_mismatch", "reordered"}
    assert len(anomalies_of(swapped)["offset_mismatch"]) == 2
    assert anomalies_of(consumed + [(1, 4, b"garbage")]) == {"unexpected": [(1, 4, b"garbage")]}
    assert check_history([], [(0, 5, value_of(0, 1)), (0, 4, value_of(0, 0))], sent)["offsets_backwards"]
    assert check_history([], [(1, 0, value_of(0, 0))], sent)["wrong_partition"]
    assert check_history([(0, 0, value_of(0, 0)), (0, 0, value_of(0, 1))], [], sent)["offset_reused"]


# --- producing and consuming ---------------------------------------------------------------------------


class ContinuousProducer:
    """A confluent-kafka producer in a thread writing "partition-seq" values round-robin over the
    partitions at about `rate_per_s`, recording every acknowledgement and every failure."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, rate_per_s: int = 200, **config):
        self.topic = topic
        self.partitions = partitions
        self.rate_per_s = rate_per_s
        self.producer = Producer(
            client_config(bootstrap, **{**FAILOVER_PRODUCER, **config, "error_cb": self._on_error})
        )
        self.acked: list[tuple[int, int, bytes]] = []
        self.failed: list[tuple[bytes, str]] = []
        self.client_errors: list[str] = []
        self.sent: set[bytes] = set()
        self.next_seq = [0] * partitions
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="continuous-producer", daemon=True)

    def _on_error(self, err) -> None:
        # Transport errors while a broker is down are expected; a fatal one ends idempotent production.
        if err.fatal():
            self.client_errors.append(f"fatal: {err}")

    def _on_delivery(self, err, msg) -> None:
        if err is None:
            self.acked.append((msg.partition(), msg.offset(), msg.value()))
        else:
            self.failed.append((msg.value(), err.name()))

    def _run(self) -> None:
        started = time.monotonic()
        produced = 0
        p = 0
        while not self.stopping.is_set():
            value = value_of(p, self.next_seq[p])
            try:
                self.producer.produce(self.topic, value=value, partition=p, on_delivery=self._on_delivery)
            except BufferError:
                self.producer.poll(0.05)
                continue
            except KafkaException as e:
                self.client_errors.append(f"produce raised: {e}")
                return
            self.sent.add(value)
            self.next_seq[p] += 1
            p = (p + 1) % self.partitions
            produced += 1
            self.producer.poll(0)
            # poll() returns early on every delivery report: wait out the whole pacing gap.
            while not self.stopping.is_set():
                ahead = produced / self.rate_per_s - (time.monotonic() - started)
                if ahead <= 0:
                    break
                self.producer.poll(ahead)

    def start(self) -> "ContinuousProducer":
        self.thread.start()
        return self

    def stop(self, flush_timeout_s: float = 70.0) -> int:
        """Stops producing and waits for every outstanding delivery; returns how many are left."""
        self.stopping.set()
        self.thread.join(timeout=10)
        return self.producer.flush(flush_timeout_s)

    def acked_count(self) -> int:
        return len(self.acked)


def consume_everything(bootstrap: str, topic: str, partitions: int, timeout_s: float = 60.0):
    """Reads every partition from the beginning up to its high watermark; returns (partition, offset,
    value) in the order read."""
    consumer = Consumer(
        client_config(
            bootstrap,
            **{
                "group.id": "spate-e2e-assign-only",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 100,
            },
        )
    )
    out = []
    try:
        ends = {}
        for p in range(partitions):
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15, cached=False)
            ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        next_offset = {p: 0 for p in range(partitions)}
        deadline = time.monotonic() + timeout_s
        while any(next_offset[p] < ends[p] for p in ends):
            if time.monotonic() > deadline:
                raise AssertionError(f"consumed up to {next_offset} of {ends} within {timeout_s}s")
            for msg in consumer.consume(num_messages=10000, timeout=0.5):
                if msg.error():
                    raise AssertionError(f"consumer error: {msg.error()}")
                out.append((msg.partition(), msg.offset(), msg.value()))
                next_offset[msg.partition()] = max(next_offset[msg.partition()], msg.offset() + 1)
        # Anything beyond the high watermarks taken above would be a write that was not there before.
        for msg in consumer.consume(num_messages=10000, timeout=0.5):
            if not msg.error():
                out.append((msg.partition(), msg.offset(), msg.value()))
    finally:
        consumer.close()
    return out


def produce_outcomes(bootstrap: str, topic: str, values: list[bytes], partition: int = 0, **config):
    """Produces `values` and returns (delivered [(partition, offset, value)], failed [(value, error name)])
    after waiting for every outcome."""
    delivered, failed = [], []

    def on_delivery(err, msg):
        if err is None:
            delivered.append((msg.partition(), msg.offset(), msg.value()))
        else:
            failed.append((msg.value(), err.name()))

    producer = Producer(client_config(bootstrap, **config))
    for v in values:
        producer.produce(topic, value=v, partition=partition, on_delivery=on_delivery)
    left = producer.flush(120)
    assert left == 0, f"{left} deliveries without an outcome"
    return delivered, failed


# --- tests ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_leader_kills_lose_no_acknowledged_write(cluster):
    """kill -9 the leader of a random partition (seeded), let the survivors elect a new one, restart the
    victim, wait until it is back in sync, and again, while an idempotent acks=all producer writes
    throughout. Then every acknowledged write is read exactly once, at its acknowledged offset, in send
    order per partition."""
    seed = fault_seed()
    rng = random.Random(seed)
    rounds = int(os.environ.get("SPATE_FAULT_ROUNDS", "4"))
    topic = unique_topic("jepsen")
    cluster.create_topic(topic, PARTITIONS, 3, TOPIC_CONFIG)
    cluster.wait_full_isr(topic, PARTITIONS)

    producer = ContinuousProducer(cluster.bootstrap, topic, PARTITIONS).start()
    events = []
    try:
        wait_until(lambda: producer.acked_count() >= 100, 30, "the first 100 acknowledgements")
        for r in range(rounds):
            cluster.wait_full_isr(topic, PARTITIONS, 40)
            p = rng.randrange(PARTITIONS)
            victim = cluster.wait_leader(topic, p)
            time.sleep(rng.uniform(0.2, 1.0))
            before = producer.acked_count()
            cluster.kill(victim)
            events.append(f"round {r}: killed broker {victim} (leader of {topic}/{p}) at {before} acks")
            successor = cluster.wait_leader(topic, p, timeout_s=20, exclude=[victim])
            events.append(f"round {r}: broker {successor} leads {topic}/{p}")
            time.sleep(rng.uniform(0.0, 1.5))
            cluster.restart(victim)
            events.append(f"round {r}: restarted broker {victim} at {producer.acked_count()} acks")
        cluster.wait_full_isr(topic, PARTITIONS, 40)
        after_faults = producer.acked_count()
        wait_until(lambda: producer.acked_count() > after_faults + 50, 30, "acknowledgements after the last fault")
    finally:
        left = producer.stop()

    context = f"seed {seed}; {'; '.join(events)}"
    assert left == 0, f"{left} deliveries without an outcome after 70 s ({context})"
    consumed = consume_everything(cluster.bootstrap, topic, PARTITIONS)
    anomalies = check_history(producer.acked, consumed, producer.sent)
    counts = (
        f"sent {len(producer.sent)}, acknowledged {len(producer.acked)}, failed {len(producer.failed)}, "
        f"consumed {len(consumed)}"
    )
    assert not any(anomalies.values()), f"{summarize(anomalies)}\n{counts}\n{context}"
    # Availability, checked after safety: with a 60 s delivery timeout and one broker down at a time,
    # no write should have failed and the idempotent producer should never have hit a fatal error.
    assert not producer.client_errors, f"producer errors: {producer.client_errors[:5]} ({counts}; {context})"
    assert not producer.failed, f"failed deliveries: {producer.failed[:5]} ({counts}; {context})"


def test_controller_kill_topics_still_created_and_metadata_converges(cluster):
    """Kill the active controller: the survivors elect another, a topic can be created through them
    and gets leaders among them; after the restart all three brokers report the same topics, leaders
    and replicas, and agree on the controller."""
    controller = cluster.controller_id()
    assert controller in cluster.nodes, f"no controller reported: {cluster.describe()}"
    before = unique_topic("before")
    cluster.create_topic(before, 2, 3)
    cluster.kill(controller)
    survivors = [i for i in cluster.nodes if i != controller]
    wait_until(
        lambda: all(v.controller_id in survivors for v in cluster.views([]).values()),
        20,
        "a new controller among the survivors",
        describe=cluster.describe,
    )

    # Until its session times out the killed broker still counts as live (as in Kafka), and the
    # controller could place a replica on it; wait until every survivor reports it fenced.
    wait_until(
        lambda: all(controller not in v.brokers for v in cluster.views([]).values()),
        20,
        f"broker {controller} fenced",
        describe=cluster.describe,
    )
    topic = unique_topic("after-controller-kill")
    # Two replicas: placement may only use the two live brokers.
    cluster.create_topic(topic, 3, 2)
    wait_until(
        lambda: all(
            (pv := v.partition(topic, p)) is not None and pv.leader in survivors
            for v in cluster.views([topic]).values()
            for p in range(3)
        ),
        20,
        f"leaders of {topic} among the survivors {survivors}",
        describe=lambda: cluster.describe([topic]),
    )
    delivered, failed = produce_outcomes(
        cluster.up_bootstrap(), topic, [b"after-%d" % i for i in range(20)], acks="all", **{"message.timeout.ms": 30000}
    )
    assert len(delivered) == 20 and not failed, f"produce to the new topic: {failed[:3]}"

    cluster.restart(controller)
    cluster.wait_ready()
    third = unique_topic("after-restart")
    cluster.create_topic(third, 3, 3)

    def converged():
        views = cluster.views([before, topic, third])
        if set(views) != set(cluster.nodes):
            return False
        shapes = set()
        for v in views.values():
            shape = [v.controller_id]
            for name in (before, topic, third):
                t = v.topics.get(name)
                if t is None or t.error:
                    return False
                partitions = [(p.partition, p.leader, p.leader_epoch, p.replicas) for p in t.partitions.values()]
                shape.append((name, sorted(partitions)))
            shapes.add(json.dumps(shape))
        return len(shapes) == 1

    wait_until(
        converged,
        20,
        "all brokers to report the same metadata",
        describe=lambda: cluster.describe([before, topic, third]),
    )
    # Every broker knows every topic when listing all of them too.
    for i, v in cluster.views().items():
        assert {before, topic, third} <= set(v.topics), f"broker {i} lists {sorted(v.topics)}"


def test_paused_followers_leave_and_rejoin_the_isr(cluster):
    """SIGSTOP one follower: it leaves the ISR and acks=all writes still succeed (ISR 2 = min.insync);
    SIGCONT: it catches up and rejoins. SIGSTOP both followers: acks=all writes are not acknowledged
    (NOT_ENOUGH_REPLICAS or a timeout); SIGCONT both: writes succeed again and every acknowledged write
    is there."""
    topic = unique_topic("isr")
    cluster.create_topic(topic, 1, 3, TOPIC_CONFIG)
    cluster.wait_full_isr(topic, 1)
    leader = cluster.wait_leader(topic, 0)
    followers = [i for i in cluster.nodes if i != leader]
    producer_config = {"acks": "all", "enable.idempotence": True, "message.timeout.ms": 30000, "request.timeout.ms": 10000}

    acked, _ = produce_outcomes(cluster.bootstrap, topic, [b"phase0-%d" % i for i in range(200)], **producer_config)
    assert len(acked) == 200

    cluster.pause(followers[0])
    cluster.wait_isr(topic, 0, 2, timeout_s=10, excludes=[followers[0]])
    delivered, failed = produce_outcomes(
        cluster.up_bootstrap(), topic, [b"phase1-%d" % i for i in range(200)], **producer_config
    )
    assert len(delivered) == 200 and not failed, f"acks=all with ISR 2 of min 2 failed: {failed[:3]}"
    acked += delivered
    assert cluster.leader_of(topic, 0) != followers[0]

    cluster.resume(followers[0])
    cluster.wait_isr(topic, 0, 3, timeout_s=20, includes=[followers[0]])

    cluster.pause(followers[0])
    cluster.pause(followers[1])
    leader_now = cluster.leader_of(topic, 0)
    delivered, failed = produce_outcomes(
        cluster.node(leader_now).bootstrap,
        topic,
        [b"phase2-%d" % i for i in range(20)],
        **{"acks": "all", "enable.idempotence": True, "message.timeout.ms": 6000, "request.timeout.ms": 5000},
    )
    assert not delivered, f"{len(delivered)} acks=all writes acknowledged with 1 of 3 replicas running"
    allowed = {
        "NOT_ENOUGH_REPLICAS",
        "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
        "_MSG_TIMED_OUT",
        "REQUEST_TIMED_OUT",
        "_TIMED_OUT",
    }
    assert {name for _, name in failed} <= allowed, f"unexpected errors: {sorted({n for _, n in failed})}"

    cluster.resume(followers[0])
    cluster.resume(followers[1])
    delivered, failed = produce_outcomes(
        cluster.bootstrap,
        topic,
        [b"phase3-%d" % i for i in range(200)],
        **{**producer_config, "message.timeout.ms": 60000},
    )
    assert len(delivered) == 200 and not failed, f"writes after resuming both followers failed: {failed[:3]}"
    acked += delivered
    cluster.wait_full_isr(topic, 1)

    consumed = consume_everything(cluster.bootstrap, topic, 1)
    values = [v for _, _, v in consumed]
    lost = [a for a in acked if a[2] not in set(values)]
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}"
    twice = sorted({v for v in values if values.count(v) > 1})
    assert not twice, f"{len(twice)} values read twice, e.g. {twice[:5]}: {[c for c in consumed if c[2] in twice[:2]]}"
    by_offset = {(p, o): v for p, o, v in consumed}
    moved = [a for a in acked if by_offset.get((a[0], a[1])) != a[2]]
    assert not moved, f"acknowledged writes found at other offsets: {moved[:3]}"


def test_committed_offsets_survive_coordinator_loss(cluster):
    """A group commits offset 40 of 100 through its coordinator; the coordinator's broker is killed; a
    new member of the group (coordinator now elsewhere) resumes at 40 and reads the rest."""
    topic = unique_topic("coord")
    group = unique_topic("group")
    cluster.create_topic(topic, 1, 3, TOPIC_CONFIG)
    produce(cluster.bootstrap, topic, [(0, None, b"m-%d" % i, None) for i in range(100)], acks="all")

    member_config = {
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "fetch.wait.max.ms": 100,
    }
    first = Consumer(client_config(cluster.bootstrap, **member_config))
    try:
        first.subscribe([topic])
        seen = []
        deadline = time.monotonic() + 30
        while len(seen) < 40 and time.monotonic() < deadline:
            msg = first.poll(0.5)
            if msg is not None and not msg.error():
                seen.append(msg.offset())
        assert len(seen) >= 40, f"the first member read only {len(seen)} records"
        first.commit(offsets=[TopicPartition(topic, 0, 40)], asynchronous=False)
    finally:
        first.close()

    coordinator = cluster.coordinator_of(group)
    cluster.kill(coordinator)
    survivors = [i for i in cluster.nodes if i != coordinator]
    moved_to = cluster.coordinator_of(group, timeout_s=30)
    assert moved_to in survivors

    second = Consumer(client_config(cluster.up_bootstrap(), **member_config))
    try:
        committed = second.committed([TopicPartition(topic, 0)], timeout=20)
        assert committed[0].offset == 40, f"committed offset after losing the coordinator: {committed}"
        second.subscribe([topic])
        offsets = []
        deadline = time.monotonic() + 40
        while len(offsets) < 60 and time.monotonic() < deadline:
            msg = second.poll(0.5)
            if msg is not None and not msg.error():
                offsets.append(msg.offset())
        assert offsets[:1] == [40], f"the new member started at {offsets[:1]}, not the committed 40"
        assert offsets == list(range(40, 100)), f"the new member read {len(offsets)} records: {offsets[:5]}..."
    finally:
        second.close()


@pytest.mark.slow
def test_isolated_leader_acknowledges_no_acks_all_write(cluster_factory):
    """Cut the leader off from the other brokers (proxies close its broker-to-broker connections and
    refuse new ones; clients still reach it). Produce requests sent straight to the isolated leader
    must not be acknowledged; the majority elects a new leader in a higher epoch that takes writes;
    after healing, the old leader truncates what only it had, and every acknowledged write is there."""
    cluster = cluster_factory(proxied=True)
    topic = unique_topic("cut")
    cluster.create_topic(topic, 1, 3, TOPIC_CONFIG)
    cluster.wait_full_isr(topic, 1)
    old = cluster.partition_view(topic, 0)
    isolated = old.leader
    majority = [i for i in cluster.nodes if i != isolated]
    producer_config = {
        "acks": "all",
        "enable.idempotence": True,
        "message.timeout.ms": 60000,
        "request.timeout.ms": 10000,
    }
    acked, _ = produce_outcomes(cluster.bootstrap, topic, [b"before-%d" % i for i in range(100)], **producer_config)
    assert len(acked) == 100

    cluster.net.cut(isolated)
    isolated_port = cluster.node(isolated).kafka_port
    isolated_acks = []
    answers = []
    n = 0
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        values = [b"isolated-%d" % (n + k) for k in range(5)]
        n += len(values)
        try:
            error, base = produce_request(isolated_port, topic, 0, values, acks=-1, timeout_ms=2000)
        except (OSError, ProtocolError) as e:
            answers.append(f"no answer: {e}")
            continue
        answers.append(error)
        if error == 0:
            isolated_acks.append((base, values))
    assert not isolated_acks, (
        f"the isolated old leader {isolated} acknowledged acks=all writes: {isolated_acks[:3]} (answers {answers})"
    )

    def new_leader():
        try:
            views = [cluster.metadata(i, [topic]) for i in majority]
        except (OSError, ProtocolError):
            return None
        ps = [v.partition(topic, 0) for v in views]
        if all(p is not None and p.leader in majority and p.leader_epoch > old.leader_epoch for p in ps):
            return ps[0]
        return None

    successor = wait_until(
        new_leader, 20, "a new leader among the majority in a higher epoch", describe=lambda: cluster.describe([topic])
    )
    delivered, failed = produce_outcomes(
        cluster.bootstrap_of(majority), topic, [b"majority-%d" % i for i in range(100)], **producer_config
    )
    assert len(delivered) == 100 and not failed, (
        f"the majority (leader {successor.leader}) did not take writes: {failed[:3]}"
    )
    acked += delivered

    cluster.net.heal(isolated)
    cluster.wait_isr(topic, 0, 3, timeout_s=30, includes=[isolated])
    consumed = consume_everything(cluster.bootstrap, topic, 1)
    values = {v for _, _, v in consumed}
    lost = [a for a in acked if a[2] not in values]
    assert not lost, f"{len(lost)} acknowledged writes lost after the cut, e.g. {lost[:3]}"
    assert len(consumed) == len(values), "a value was read twice"
    ghosts = sorted(v for v in values if v.startswith(b"isolated-"))
    assert not ghosts, f"writes only the isolated leader had survived its truncation: {ghosts[:5]}"


def test_acks_all_refused_when_the_isr_shrinks_below_min_insync_while_waiting(cluster_factory):
    """Kafka's delayed produce: when the high watermark passes an acks=all batch only because the ISR
    shrank below min.insync.replicas meanwhile, the answer is NOT_ENOUGH_REPLICAS_AFTER_APPEND, not
    success. One follower is cut from the leader's Kafka port only (the controller quorum stays whole,
    so the leader's ISR shrink is committed), with min.insync.replicas=3 on an RF=3 topic."""
    cluster = cluster_factory(proxied=True)
    topic = unique_topic("minisr")
    cluster.create_topic(topic, 1, 3, {"min.insync.replicas": "3"})
    cluster.wait_full_isr(topic, 1)
    view = cluster.partition_view(topic, 0)
    leader = view.leader
    follower = next(i for i in view.replicas if i != leader)
    leader_port = cluster.node(leader).kafka_port
    error, _ = produce_request(leader_port, topic, 0, [b"full-isr"], acks=-1, timeout_ms=10000)
    assert error == NONE, f"with the full ISR the produce failed with {error}"

    cluster.net.cut_link(leader, follower)
    # The follower stops fetching; after replica.lag.time.max.ms the leader shrinks the ISR to two,
    # which lets the high watermark pass this batch.
    error, _ = produce_request(leader_port, topic, 0, [b"below-min-isr"], acks=-1, timeout_ms=30000)
    assert error == NOT_ENOUGH_REPLICAS_AFTER_APPEND, (
        f"acks=all answered {error} after the ISR shrank below min.insync.replicas=3 "
        f"(ISR now {cluster.isr_of(topic, 0)})"
    )
    cluster.wait_isr(topic, 0, 2, timeout_s=20)
    error, _ = produce_request(leader_port, topic, 0, [b"refused"], acks=-1, timeout_ms=10000)
    assert error == NOT_ENOUGH_REPLICAS, f"with an ISR of two and min.insync.replicas=3 the produce got {error}"

    cluster.net.heal_link(leader, follower)
    cluster.wait_isr(topic, 0, 3, timeout_s=30, includes=[follower])
    error, _ = produce_request(leader_port, topic, 0, [b"healed"], acks=-1, timeout_ms=10000)
    assert error == NONE, f"after healing the produce failed with {error}"


def test_kcat_lists_brokers_and_survives_failover(cluster):
    """kcat -L shows all three brokers and a leader with three replicas per partition; kcat produces
    before and after the leader is killed and consumes everything once."""
    topic = unique_topic("kcat")
    cluster.create_topic(topic, 1, 3, TOPIC_CONFIG)
    cluster.wait_full_isr(topic, 1)
    listing = json.loads(kcat(["-b", cluster.bootstrap, "-L", "-J", "-t", topic]).stdout)
    assert sorted(b["id"] for b in listing["brokers"]) == sorted(cluster.nodes), listing["brokers"]
    (t,) = listing["topics"]
    (p,) = t["partitions"]
    assert p["leader"] in cluster.nodes
    assert sorted(r["id"] for r in p["replicas"]) == sorted(cluster.nodes)
    assert sorted(r["id"] for r in p["isrs"]) == sorted(cluster.nodes)

    def kcat_produce(bootstrap, lines):
        kcat(
            ["-b", bootstrap, "-P", "-t", topic, "-p", "0", "-X", "acks=all", "-X", "message.timeout.ms=30000"],
            input_bytes=b"".join(line + b"\n" for line in lines),
            timeout_s=60,
        )

    first = [b"kcat-a-%d" % i for i in range(50)]
    kcat_produce(cluster.bootstrap, first)
    leader = p["leader"]
    cluster.kill(leader)
    cluster.wait_leader(topic, 0, exclude=[leader])
    second = [b"kcat-b-%d" % i for i in range(50)]
    kcat_produce(cluster.up_bootstrap(), second)
    cluster.restart(leader)
    cluster.wait_full_isr(topic, 1)
    out = kcat(["-b", cluster.bootstrap, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q"], timeout_s=60)
    lines = out.stdout.splitlines()
    assert sorted(lines) == sorted(first + second), f"kcat read {len(lines)} lines: {lines[:5]}..."


# --- live consumers across leader changes ------------------------------------------------------------------

# Consumer-side errors that only say a broker went away for a while; librdkafka retries them itself.
TRANSIENT_CONSUMER_ERRORS = {"_TRANSPORT", "_ALL_BROKERS_DOWN", "_PARTITION_EOF"}


class _ValidationCapture:
    """A logging handler that keeps the client's log lines about leader-epoch offset validation, so
    that a test can show the validation path (OffsetForLeaderEpoch) really ran."""

    def __init__(self, name: str, words: tuple[str, ...]):
        import logging

        self.lines: list[str] = []
        self.errors: list[str] = []
        outer = self

        class _Handler(logging.Handler):
            def emit(self, record):
                line = record.getMessage()
                if any(w in line for w in words):
                    outer.lines.append(line)
                # Lost and refused connections are what a killed broker looks like (kafka-python logs
                # them at ERROR and reconnects); any other ERROR line counts.
                transport = record.name.startswith("kafka.net") or "KafkaConnectionError" in line
                if record.levelno >= logging.ERROR and not transport:
                    outer.errors.append(line)

        self.handler = _Handler()
        self.logger = logging.getLogger(name)
        self.previous_level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self.handler)

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.previous_level)


class LiveConfluentConsumer:
    """A confluent-kafka consumer in a thread reading assigned partitions from the beginning while the
    test changes their leaders: every message (partition, offset, value) in read order, every
    msg.error() code (`errors`), error_cb codes (`client_errors`) and librdkafka's debug lines about
    offset validation (`validation_lines`)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int):
        self.records: list[tuple[int, int, bytes]] = []
        self.errors: list[str] = []
        self.client_errors: list[str] = []
        self.capture = _ValidationCapture(f"live-confluent-{topic}", ("OffsetForLeaderEpoch", "validation"))
        self.capture.logger.propagate = False
        self.consumer = Consumer(
            client_config(
                bootstrap,
                **{
                    "group.id": "spate-e2e-assign-only",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                    "enable.partition.eof": False,
                    "fetch.wait.max.ms": 100,
                    "topic.metadata.refresh.interval.ms": 1000,
                    "debug": "fetch,topic",
                    "logger": self.capture.logger,
                    "error_cb": lambda err: self.client_errors.append(err.name()),
                },
            )
        )
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="live-confluent-consumer", daemon=True)

    @property
    def validation_lines(self) -> list[str]:
        return self.capture.lines

    def validations_succeeded(self) -> int:
        return sum("validation succeeded" in line for line in self.capture.lines)

    def _run(self) -> None:
        while not self.stopping.is_set():
            for msg in self.consumer.consume(num_messages=1000, timeout=0.2):
                if msg.error():
                    self.errors.append(msg.error().name())
                else:
                    self.records.append((msg.partition(), msg.offset(), msg.value()))

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.consumer.close()
        self.capture.close()


class LiveKafkaPythonConsumer:
    """The same with kafka-python's KafkaConsumer (3.x validates positions with OffsetForLeaderEpoch
    after a leader-epoch change, KIP-320): exceptions raised by poll() and ERROR log lines of the
    client are its `errors`."""

    def __init__(self, bootstrap: str, topic: str, partitions: int):
        from kafka import KafkaConsumer
        from kafka import TopicPartition as KafkaTopicPartition

        self.records: list[tuple[int, int, bytes]] = []
        self.errors: list[str] = []
        self.client_errors: list[str] = []
        self.capture = _ValidationCapture("kafka", ("OffsetForLeaderEpoch", "Validating offsets", "truncat"))
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap.split(","),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            metadata_max_age_ms=1000,
            request_timeout_ms=10000,
            reconnect_backoff_max_ms=1000,
        )
        tps = [KafkaTopicPartition(topic, p) for p in range(partitions)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="live-kafka-python-consumer", daemon=True)

    @property
    def validation_lines(self) -> list[str]:
        return self.capture.lines

    def validations_succeeded(self) -> int:
        return sum(
            "Received response" in line and "OffsetForLeaderEpochResponse" in line and "error_code=0" in line
            for line in self.capture.lines
        )

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                batches = self.consumer.poll(timeout_ms=200, max_records=1000)
            except Exception as e:  # every exception poll() raises counts as an error the test sees
                self.errors.append(f"{type(e).__name__}: {e}")
                time.sleep(0.1)
                continue
            for tp, msgs in batches.items():
                for m in msgs:
                    self.records.append((tp.partition, m.offset, m.value))

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.consumer.close()
        self.capture.close()
        self.errors += [f"logged: {line}" for line in self.capture.errors]


def follow_leader_changes(cluster_factory, make_consumer) -> None:
    """The scenario of the test_*_follow_leader_changes tests: a consumer made by
    `make_consumer(bootstrap, topic, partitions)` reads two RF=3 partitions continuously while an
    idempotent acks=all producer writes ~3000 unique values, the leader of partition 0 is killed -9
    and restarted, and (the preferred-leader check runs every 2 s) leadership returns to it: two
    leader-epoch bumps seen while fetching, each followed by the client's OffsetForLeaderEpoch
    validation. The live stream must hold every acknowledged value exactly once at its acknowledged
    offset, each partition's offsets must run 0, 1, 2, ... without a gap or a step back, and the
    consumer must see only transient errors."""
    from spatecluster import FAST_SETTINGS

    cluster = cluster_factory(settings={**FAST_SETTINGS, "leader.imbalance.check.interval.seconds": "2"})
    partitions = 2
    topic = unique_topic("follow")
    cluster.create_topic(topic, partitions, 3, TOPIC_CONFIG)
    cluster.wait_full_isr(topic, partitions)
    before = cluster.partition_view(topic, 0)
    preferred = before.replicas[0]

    consumer = make_consumer(cluster.bootstrap, topic, partitions).start()
    producer = ContinuousProducer(cluster.bootstrap, topic, partitions, rate_per_s=150).start()
    events = []
    try:
        wait_until(lambda: len(consumer.records) >= 300, 30, "the live consumer to read 300 records")
        victim = cluster.wait_leader(topic, 0)
        read_at_kill = len(consumer.records)
        cluster.kill(victim)
        events.append(
            f"killed broker {victim} (leader of {topic}/0, epoch {before.leader_epoch}) at {read_at_kill} read"
        )
        successor = cluster.wait_leader(topic, 0, timeout_s=20, exclude=[victim])
        events.append(f"broker {successor} leads {topic}/0 (epoch {cluster.partition_view(topic, 0).leader_epoch})")
        acked = producer.acked_count()
        wait_until(lambda: producer.acked_count() >= acked + 300, 30, "300 acknowledgements under the new leader")
        cluster.restart(victim)
        cluster.wait_full_isr(topic, partitions, 30)
        events.append(f"broker {victim} back in the ISR at {len(consumer.records)} read")
        if victim == preferred:
            wait_until(
                lambda: cluster.leader_of(topic, 0) == preferred,
                20,
                f"preferred replica {preferred} to lead {topic}/0 again",
                describe=lambda: cluster.describe([topic]),
            )
            events.append(f"leadership back on {preferred} (epoch {cluster.partition_view(topic, 0).leader_epoch})")
        wait_until(lambda: producer.acked_count() >= 3000, 40, "3000 acknowledgements")
    except BaseException:
        consumer.stop()
        raise
    finally:
        left = producer.stop()
    context = "; ".join(events)
    assert left == 0, f"{left} deliveries without an outcome ({context})"
    acked_values = {v for _, _, v in producer.acked}
    try:
        wait_until(
            lambda: acked_values <= {v for _, _, v in consumer.records},
            30,
            "the live consumer to read every acknowledged value",
            describe=lambda: f"read {len(consumer.records)} of {len(acked_values)} acknowledged; {context}",
        )
        # A little longer, so that a duplicate delivered late is seen.
        time.sleep(1.0)
    finally:
        consumer.stop()

    records = list(consumer.records)
    anomalies = check_history(producer.acked, records, producer.sent)
    counts = f"sent {len(producer.sent)}, acknowledged {len(producer.acked)}, read {len(records)}"
    assert not any(anomalies.values()), f"{summarize(anomalies)}\n{counts}\n{context}"
    for p in range(partitions):
        offsets = [o for q, o, _ in records if q == p]
        gaps = [(a, b) for a, b in zip(offsets, offsets[1:]) if b != a + 1]
        assert offsets[:1] == [0] and not gaps, (
            f"partition {p} offsets start {offsets[:1]}, gaps {gaps[:5]} ({context})"
        )
    assert read_at_kill < len(records), f"the consumer read nothing after the leader was killed ({context})"
    unexpected = sorted(set(consumer.errors) - TRANSIENT_CONSUMER_ERRORS)
    assert not unexpected, f"consumer errors {unexpected} (all: {consumer.errors[:10]}; {context})"
    assert not producer.client_errors and not producer.failed, (
        f"producer errors {producer.client_errors[:3]}, failed {producer.failed[:3]} ({context})"
    )
    # The point of the test: the client did validate its position with OffsetForLeaderEpoch after a
    # leader-epoch bump, and the broker's answer let it go on.
    assert consumer.validations_succeeded() >= 1, (
        f"no successful offset validation seen ({context}); lines: {consumer.validation_lines[:10]}"
    )
    print(f"{counts}; {context}; client error callbacks {sorted(set(consumer.client_errors))}")
    print("offset validation log lines:\n" + "\n".join(consumer.validation_lines[:30]))


def test_consumers_follow_leader_changes(cluster_factory):
    """confluent-kafka (librdkafka) consumer; see follow_leader_changes."""
    follow_leader_changes(cluster_factory, LiveConfluentConsumer)


def test_kafka_python_consumer_follows_leader_changes(cluster_factory):
    """kafka-python KafkaConsumer; see follow_leader_changes."""
    follow_leader_changes(cluster_factory, LiveKafkaPythonConsumer)

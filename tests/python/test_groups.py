"""Consumer groups against a spate broker, driven by real clients: confluent-kafka (librdkafka) members
in subprocesses that can be SIGKILLed, kafka-python's KafkaConsumer, static membership, the Spate CLI's
group consumer alone and mixed with a librdkafka member, committed offsets across broker restarts, and
the `spate groups` describe / reset-offsets round trip.

Every member here commits after processing (at-least-once): a record is written to the member's log
before its offset is committed. So in a stable group every record is consumed exactly once, and a
record is consumed twice only when the member that read it first had not committed past it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Consumer, ConsumerGroupState, ConsumerGroupTopicPartitions, TopicPartition

import spatetest
from spatetest import admin, client_config, committed_offsets, create_topic, produce, unique_topic, watermarks

pytestmark = pytest.mark.timeout(120)

# Broker settings that keep group tests fast: the first rebalance of an empty group waits only briefly
# for more members (Kafka's default is 3 s), and the session-timeout floor matches the members' 6 s.
GROUP_BROKER_SETTINGS = {
    "group.initial.rebalance.delay.ms": "300",
    "group.min.session.timeout.ms": "6000",
}

# librdkafka settings of every confluent-kafka member: the broker's minimum session timeout, so that a
# killed member is noticed quickly, and frequent heartbeats, so that rebalances start promptly.
MEMBER_CONFIG = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
    "partition.assignment.strategy": "range",
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "fetch.wait.max.ms": 100,
}


def set_args(settings: dict[str, str]) -> list[str]:
    args = []
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    return args


@pytest.fixture
def group_broker(broker_factory):
    return broker_factory(extra_args=set_args(GROUP_BROKER_SETTINGS))


def wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.1, describe=None):
    """spatetest.wait_until polling faster: rebalances are what these tests time."""
    return spatetest.wait_until(condition, timeout_s, what, interval_s, describe)


# --- confluent-kafka members in subprocesses ---------------------------------------------------------

# One group member: subscribes, and for every consumed batch writes "M partition offset value" lines to
# its log, then commits. With commit_every=N it commits only once N records are uncommitted, writing
# "P partition offset" (about to commit) before and "C partition offset" (committed) or "F ..." (failed)
# after the commit. Rebalance callbacks write "A p,p" (assigned), "R p,p" (revoked), "L p,p" (lost).
# SIGTERM makes it close the consumer (leaving the group unless it is static) and write "X".
MEMBER_SCRIPT = r"""
import json, signal, sys, time
from confluent_kafka import Consumer, KafkaException, TopicPartition

opts = json.loads(sys.argv[1])
out = open(opts["out"], "a", buffering=1)
stopping = False

def on_term(signum, frame):
    global stopping
    stopping = True

signal.signal(signal.SIGTERM, on_term)

consumer = Consumer({
    "bootstrap.servers": opts["bootstrap"],
    "broker.address.family": "v4",
    "group.id": opts["group"],
    "client.id": opts["name"],
    **opts["config"],
})
pending = {}  # partition -> next offset to commit

def plist(partitions):
    return ",".join(str(p) for p in sorted(tp.partition for tp in partitions))

def commit(partitions):
    offsets = [TopicPartition(opts["topic"], p, pending.pop(p)) for p in sorted(partitions) if p in pending]
    if not offsets:
        return
    for tp in offsets:
        out.write(f"P {tp.partition} {tp.offset}\n")
    try:
        for tp in consumer.commit(offsets=offsets, asynchronous=False):
            if tp.error:
                out.write(f"F {tp.partition} {tp.offset} {tp.error}\n")
            else:
                out.write(f"C {tp.partition} {tp.offset}\n")
    except KafkaException as e:
        out.write(f"F - - {e}\n")

def on_assign(c, partitions):
    out.write(f"A {plist(partitions)}\n")

def on_revoke(c, partitions):
    # What was processed is committed before the partitions go: a later commit could move back the
    # offset their next owner commits.
    commit([tp.partition for tp in partitions])
    out.write(f"R {plist(partitions)}\n")

def on_lost(c, partitions):
    for tp in partitions:
        pending.pop(tp.partition, None)
    out.write(f"L {plist(partitions)}\n")

consumer.subscribe([opts["topic"]], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
out.write("S\n")
commit_every = opts.get("commit_every", 1)
pause_s = opts.get("pause_per_batch_s", 0.0)
uncommitted = 0
while not stopping:
    msgs = consumer.consume(num_messages=opts.get("batch", 100), timeout=0.2)
    for m in msgs:
        if m.error():
            out.write(f"E {m.error()}\n")
            continue
        out.write(f"M {m.partition()} {m.offset()} {m.value().decode()}\n")
        pending[m.partition()] = m.offset() + 1
        uncommitted += 1
    if pause_s and msgs:
        time.sleep(pause_s)
    if not pending:
        uncommitted = 0
    elif uncommitted >= commit_every:
        commit(list(pending))
        uncommitted = 0
consumer.close()
out.write("X\n")
"""


@dataclass
class MemberLog:
    """What a member's log says, parsed."""

    events: list[tuple[str, list[int]]] = field(default_factory=list)  # ("A"|"R"|"L", partitions)
    records: list[tuple[int, int, str]] = field(default_factory=list)  # (partition, offset, value)
    last_commit: dict[int, int] = field(default_factory=dict)  # partition -> last successful commit
    last_intent: dict[int, int] = field(default_factory=dict)  # partition -> last "P" offset
    failed_commits: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    started: bool = False
    exited: bool = False

    @property
    def assignment(self) -> list[int] | None:
        """The current assignment: the last "A" when nothing was revoked or lost after it."""
        if self.events and self.events[-1][0] == "A":
            return self.events[-1][1]
        return None


def parse_member_log(text: str) -> MemberLog:
    log = MemberLog()
    lines = text.split("\n")
    # The last piece has no newline yet (or the member was killed mid-write): ignore it.
    for line in lines[:-1]:
        kind, _, rest = line.partition(" ")
        if kind in ("A", "R", "L"):
            log.events.append((kind, [int(p) for p in rest.split(",") if p]))
        elif kind == "M":
            p, off, value = rest.split(" ", 2)
            log.records.append((int(p), int(off), value))
        elif kind == "C":
            p, off = rest.split()
            log.last_commit[int(p)] = int(off)
        elif kind == "P":
            p, off = rest.split()
            log.last_intent[int(p)] = int(off)
        elif kind == "F":
            log.failed_commits.append(rest)
        elif kind == "E":
            log.errors.append(rest)
        elif kind == "S":
            log.started = True
        elif kind == "X":
            log.exited = True
    return log


class Member:
    """A confluent-kafka group member running MEMBER_SCRIPT in its own process."""

    def __init__(self, workdir: Path, name: str, bootstrap: str, topic: str, group: str, **opts):
        self.name = name
        self.out = workdir / f"member-{name}.log"
        self.stderr_path = workdir / f"member-{name}.stderr"
        config = {**MEMBER_CONFIG, **opts.pop("config", {})}
        spec = {"bootstrap": bootstrap, "topic": topic, "group": group, "name": name, "out": str(self.out)}
        spec.update(config=config, **opts)
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", MEMBER_SCRIPT, json.dumps(spec)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def log(self) -> MemberLog:
        try:
            return parse_member_log(self.out.read_text())
        except FileNotFoundError:
            return MemberLog()

    def log_size(self) -> int:
        try:
            return self.out.stat().st_size
        except FileNotFoundError:
            return 0

    def records_after(self, size: int) -> list[tuple[int, int, str]]:
        """Records this member logged after its log was `size` bytes long."""
        with open(self.out, "rb") as f:
            f.seek(size)
            tail = f.read().decode()
        return parse_member_log(tail).records

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM: the member closes its consumer (leaving the group) and exits."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(f"member {self.name} did not close within {timeout_s}s: {self.stderr()}")

    def kill9(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def ensure_dead(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def members(tmp_path):
    """Returns `start(name, bootstrap, topic, group, **opts) -> Member`; kills every member still
    running at teardown. Their logs stay in the test's tmp_path as member-NAME.log / .stderr, and
    failing waits print what each member's log says."""
    started: list[Member] = []

    def start(name, bootstrap, topic, group, **opts) -> Member:
        member = Member(tmp_path, name, bootstrap, topic, group, **opts)
        started.append(member)
        return member

    yield start
    for member in started:
        member.ensure_dead()


def describe_members(members_) -> str:
    parts = []
    for m in members_:
        log = m.log()
        parts.append(
            f"{m.name}: alive={m.alive()} assignment={log.assignment} events={log.events[-4:]} "
            f"records={len(log.records)} commits={log.last_commit} failed={log.failed_commits[-3:]} "
            f"errors={log.errors[-3:]} stderr={m.stderr()[-500:]!r}"
        )
    return "\n  ".join(parts)


def wait_stable(group_members, partitions: int, sizes: list[int], timeout_s: float = 45.0) -> dict[str, list[int]]:
    """Waits until every member in `group_members` holds an assignment, the assignments are disjoint and
    cover all `partitions`, and their sizes are `sizes` (sorted); returns name -> partitions."""

    def stable():
        current = {m.name: m.log().assignment for m in group_members}
        if any(a is None for a in current.values()):
            return None
        every = [p for a in current.values() for p in a]
        if sorted(every) != list(range(partitions)) or sorted(len(a) for a in current.values()) != sorted(sizes):
            return None
        return current

    return wait_until(
        stable,
        timeout_s,
        f"a stable assignment of {partitions} partitions as {sizes}",
        describe=lambda: describe_members(group_members),
    )


def produce_numbered(bootstrap: str, topic: str, partitions: int, per_partition: int, tag: str) -> dict:
    """Produces `per_partition` records to every partition, valued "tag:partition:seq"; returns
    (partition, offset) -> value as acknowledged."""
    records = [(p, None, f"{tag}:{p}:{i}".encode(), None) for i in range(per_partition) for p in range(partitions)]
    delivered = produce(bootstrap, topic, records, acks="all", **{"linger.ms": 5})
    return {(m.partition(), m.offset()): m.value().decode() for m in delivered}


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    return {p: watermarks(bootstrap, topic, p)[1] for p in range(partitions)}


def wait_committed(bootstrap: str, group: str, topic: str, partitions: int, want: dict[int, int], timeout_s=30.0):
    return wait_until(
        lambda: committed_offsets(bootstrap, group, topic, partitions) == want,
        timeout_s,
        f"group {group} to commit {want}",
        interval_s=0.25,
        describe=lambda: committed_offsets(bootstrap, group, topic, partitions),
    )


def all_records(group_members) -> list[tuple[str, int, int, str]]:
    return [(m.name, p, off, v) for m in group_members for p, off, v in m.log().records]


def check_contents(read, produced: dict) -> None:
    """Every record read holds the value produced at its offset."""
    wrong = [(p, off, v, produced.get((p, off))) for _, p, off, v in read if produced.get((p, off)) != v]
    assert not wrong, f"{len(wrong)} records read with the wrong value or at an offset never produced: {wrong[:5]}"


def uncommitted_reads(log: MemberLog, partitions: list[int]) -> bool:
    """Whether the member read records of `partitions` past the last commit it started (its first read
    of a partition it never committed is where the group's commit stood)."""
    read_max, first_read = {}, {}
    for p, off, _ in log.records:
        first_read.setdefault(p, off)
        read_max[p] = max(read_max.get(p, -1), off)
    return any(
        p in read_max and read_max[p] + 1 > log.last_intent.get(p, first_read[p]) for p in partitions
    )


# --- three librdkafka members, a join and a kill -----------------------------------------------------


@pytest.mark.timeout(240)
def test_group_exactly_once_when_stable_at_least_once_across_join_and_kill(group_broker, members):
    bootstrap = group_broker.bootstrap
    partitions = 6
    topic = unique_topic("grp")
    group = unique_topic("g3")
    create_topic(bootstrap, topic, partitions=partitions)

    # Phase 1: three members, a stable group, then records: each is consumed exactly once.
    a, b, c = (members(name, bootstrap, topic, group) for name in ("a", "b", "c"))
    wait_stable([a, b, c], partitions, [2, 2, 2])
    produced = produce_numbered(bootstrap, topic, partitions, 200, "one")
    wait_until(
        lambda: {(p, off) for _, p, off, _ in all_records([a, b, c])} >= produced.keys(),
        60,
        "the three members to read every record of phase 1",
        describe=lambda: describe_members([a, b, c]),
    )
    wait_committed(bootstrap, group, topic, partitions, end_offsets(bootstrap, topic, partitions))
    read = all_records([a, b, c])
    check_contents(read, produced)
    twice = [k for k, n in Counter((p, off) for _, p, off, _ in read).items() if n > 1]
    assert not twice, f"stable group read {len(twice)} records more than once, e.g. {twice[:5]}"
    for m in (a, b, c):
        owned = set(m.log().assignment)
        assert {p for p, _, _ in m.log().records} <= owned, f"member {m.name} read a partition it was not assigned"
        assert not m.log().failed_commits, m.log().failed_commits

    # Phase 2: a fourth member joins while records keep coming; the group settles as 2,2,1,1. The fourth
    # member commits only every 30 records and processes slowly, so that it has read records it has
    # not committed when it is killed below.
    produced |= produce_numbered(bootstrap, topic, partitions, 50, "two-before")
    d = members("d", bootstrap, topic, group, commit_every=30, batch=20, pause_per_batch_s=0.05)
    assignment = wait_stable([a, b, c, d], partitions, [1, 1, 2, 2])
    produced |= produce_numbered(bootstrap, topic, partitions, 50, "two-after")
    wait_until(
        lambda: {(p, off) for _, p, off, _ in all_records([a, b, c, d])} >= produced.keys(),
        60,
        "the four members to read every record of phase 2",
        describe=lambda: describe_members([a, b, c, d]),
    )
    assert assignment["d"], "the joining member got no partition"

    # Phase 3: records for the slow member's partitions, and it is frozen while it still holds some of
    # them uncommitted, then SIGKILLed: it cannot leave, so the group notices only by session timeout.
    victim = d
    victim_partitions = assignment["d"]
    produced |= produce_numbered(bootstrap, topic, partitions, 400, "three")
    for _ in range(100):
        wait_until(
            lambda: any(rec[2].startswith("three:") for rec in victim.log().records),
            30,
            "the slow member to read phase-3 records",
            describe=lambda: describe_members([victim]),
        )
        victim.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.1)
        if uncommitted_reads(victim.log(), victim_partitions):
            break
        victim.proc.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    else:
        raise AssertionError(f"never caught the slow member with uncommitted records: {describe_members([victim])}")
    victim.kill9()
    survivors = [a, b, c]
    survivor_sizes = {m.name: m.log_size() for m in survivors}
    victim_log = victim.log()
    assert victim_log.assignment == victim_partitions, "the victim's assignment changed before the kill"
    assert not victim_log.failed_commits, victim_log.failed_commits

    after = wait_stable(survivors, partitions, [2, 2, 2], timeout_s=60)
    assert set(victim_partitions) <= {p for ps in after.values() for p in ps}
    wait_until(
        lambda: {(p, off) for _, p, off, _ in all_records(survivors + [victim])} >= produced.keys(),
        60,
        "the survivors to read every record after the kill",
        describe=lambda: describe_members(survivors),
    )
    # After the last commit nothing is lost: the group's committed offsets reach the end of every partition.
    ends = end_offsets(bootstrap, topic, partitions)
    assert ends == {p: 700 for p in range(partitions)}, ends
    wait_committed(bootstrap, group, topic, partitions, ends)

    read = all_records(survivors + [victim])
    check_contents(read, produced)
    assert {(p, off) for _, p, off, _ in read} == set(produced), "a record was never read"

    # Where the survivors resumed each of the victim's partitions: the group's committed offset at the
    # takeover, which is the victim's last commit, or the one it was sending when it was frozen.
    resumed_at = {}
    for m in survivors:
        for p, off, _ in m.records_after(survivor_sizes[m.name]):
            if p in victim_partitions:
                resumed_at[p] = min(resumed_at.get(p, off), off)
    first_read = {}
    for p, off, _ in victim_log.records:
        first_read.setdefault(p, off)
    for p in victim_partitions:
        if p in resumed_at and p in first_read:
            committed = victim_log.last_commit.get(p, first_read[p])
            candidates = {committed, victim_log.last_intent.get(p, committed)}
            assert resumed_at[p] in candidates, (
                f"partition {p}: survivors resumed at {resumed_at[p]}, but the victim had committed {committed} "
                f"(and was committing {victim_log.last_intent.get(p)})"
            )

    # Duplicates only where the reader before had not committed: each record read twice lies at or past
    # the committed offset the survivors resumed from, in one of the victim's partitions.
    counts = Counter((p, off) for _, p, off, _ in read)
    twice = sorted(k for k, n in counts.items() if n > 1)
    unexpected = [(p, off) for p, off in twice if p not in resumed_at or off < resumed_at[p]]
    assert not unexpected, (
        f"records read twice although committed: {unexpected[:10]} (resumed at {resumed_at}); "
        f"failed commits: {[(m.name, m.log().failed_commits[:3]) for m in survivors]}"
    )
    assert all(n == 2 for n in counts.values() if n > 1), "a record was read more than twice"
    # The victim was frozen with records read but not committed, so the group re-read exactly those.
    expected_twice = sorted((p, off) for p, off, _ in victim_log.records if p in resumed_at and off >= resumed_at[p])
    assert twice == expected_twice, f"re-read {twice[:10]}, expected the victim's uncommitted {expected_twice[:10]}"
    assert twice, "the victim had uncommitted records, so some must have been read twice"

    for m in survivors:
        m.stop()
        assert m.log().exited


# --- independent groups ------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_two_groups_each_receive_every_record(group_broker, members):
    bootstrap = group_broker.bootstrap
    partitions = 4
    topic = unique_topic("two-groups")
    create_topic(bootstrap, topic, partitions=partitions)
    g1, g2 = unique_topic("ga"), unique_topic("gb")

    first = [members(f"g1-{i}", bootstrap, topic, g1) for i in range(2)]
    wait_stable(first, partitions, [2, 2])
    produced = produce_numbered(bootstrap, topic, partitions, 100, "x")
    # The second group starts after the records exist and reads them from the beginning.
    second = [members("g2-0", bootstrap, topic, g2)]

    for group, group_members in ((g1, first), (g2, second)):
        wait_until(
            lambda: {(p, off) for _, p, off, _ in all_records(group_members)} >= produced.keys(),
            60,
            f"group {group} to read every record",
            describe=lambda: describe_members(group_members),
        )
        wait_committed(bootstrap, group, topic, partitions, {p: 100 for p in range(partitions)})
        read = all_records(group_members)
        check_contents(read, produced)
        assert sorted((p, off) for _, p, off, _ in read) == sorted(produced), f"group {group} read a record twice"

    # Each group's progress is its own: both listed, both with every member described.
    client = admin(bootstrap)
    listed = {g.group_id for g in client.list_consumer_groups().result(timeout=20).valid}
    assert {g1, g2} <= listed, listed
    described = client.describe_consumer_groups([g1, g2])
    d1, d2 = described[g1].result(timeout=20), described[g2].result(timeout=20)
    assert len(d1.members) == 2 and len(d2.members) == 1
    assert sorted(tp.partition for m in d1.members for tp in m.assignment.topic_partitions) == list(range(partitions))
    assert sorted(tp.partition for m in d2.members for tp in m.assignment.topic_partitions) == list(range(partitions))
    assert {m.client_id for m in d1.members} == {"g1-0", "g1-1"}
    for m in first + second:
        m.stop()


# --- kafka-python ------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_kafka_python_group_consumer_consumes_and_commits(group_broker):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KpTopicPartition

    bootstrap = group_broker.bootstrap
    partitions = 3
    topic = unique_topic("kpy-group")
    group = unique_topic("kpy")
    create_topic(bootstrap, topic, partitions=partitions)
    produced = produce_numbered(bootstrap, topic, partitions, 150, "k")

    def consumer():
        return KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            client_id="kpy-member",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            fetch_max_wait_ms=100,
        )

    def read(c, expected: int, timeout_s: float) -> list:
        records = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in c.poll(timeout_ms=500).values():
                records.extend(batch)
        for batch in c.poll(timeout_ms=500).values():
            records.extend(batch)
        return records

    first = consumer()
    try:
        records = read(first, len(produced), 60)
        assert sorted(first.assignment()) == sorted(KpTopicPartition(topic, p) for p in range(partitions))
        assert len(records) == len(produced)
        assert {(r.partition, r.offset): r.value.decode() for r in records} == produced
        first.commit()
        for p in range(partitions):
            assert first.committed(KpTopicPartition(topic, p)) == 150
    finally:
        first.close()
    assert committed_offsets(bootstrap, group, topic, partitions) == {p: 150 for p in range(partitions)}

    # A new member of the group starts where the group committed: only records produced since.
    later = produce_numbered(bootstrap, topic, partitions, 10, "later")
    second = consumer()
    try:
        records = read(second, len(later), 60)
        assert {(r.partition, r.offset): r.value.decode() for r in records} == later
        assert len(records) == len(later)
        second.commit()
    finally:
        second.close()
    assert committed_offsets(bootstrap, group, topic, partitions) == {p: 160 for p in range(partitions)}


# --- static membership -------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_static_member_rejoins_with_its_assignment_without_rebalance(group_broker, members):
    bootstrap = group_broker.bootstrap
    partitions = 4
    topic = unique_topic("static")
    group = unique_topic("gs")
    create_topic(bootstrap, topic, partitions=partitions)
    # A long session timeout, so the restarted member is back well before the group would evict it.
    static = {"session.timeout.ms": 30000}

    # The first member to join is the group leader; the follower is the one that restarts.
    leader = members("leader", bootstrap, topic, group, config={**static, "group.instance.id": "leader-1"})
    wait_stable([leader], partitions, [4])
    follower = members("follower", bootstrap, topic, group, config={**static, "group.instance.id": "follower-1"})
    before = wait_stable([leader, follower], partitions, [2, 2])
    leader_events = len(leader.log().events)

    client = admin(bootstrap)
    described = client.describe_consumer_groups([group])[group].result(timeout=20)
    assert {m.group_instance_id for m in described.members} == {"leader-1", "follower-1"}

    # A static member that dies does not leave the group; the same instance id comes back with the
    # assignment it had, and the other member sees no rebalance.
    follower.kill9()
    again = members("follower-again", bootstrap, topic, group, config={**static, "group.instance.id": "follower-1"})
    wait_until(
        lambda: again.log().assignment is not None,
        30,
        "the restarted static member to get its assignment",
        describe=lambda: describe_members([leader, again]),
    )
    assert again.log().assignment == before["follower"]
    # Heartbeats carry on for a few intervals: the leader's assignment is never revoked.
    time.sleep(3)
    assert len(leader.log().events) == leader_events, f"the leader saw a rebalance: {leader.log().events}"
    assert leader.log().assignment == before["leader"]

    produced = produce_numbered(bootstrap, topic, partitions, 20, "s")
    wait_until(
        lambda: {(p, off) for _, p, off, _ in all_records([leader, again])} >= produced.keys(),
        30,
        "both static members to read every record",
        describe=lambda: describe_members([leader, again]),
    )
    assert {p for p, _, _ in again.log().records} == set(before["follower"])
    described = client.describe_consumer_groups([group])[group].result(timeout=20)
    assert len(described.members) == 2
    for m in (leader, again):
        m.stop()


# --- the Spate CLI's group consumer ------------------------------------------------------------------


def spate_cli(args: list[str], timeout_s: float = 60.0, check: bool = True) -> subprocess.CompletedProcess:
    """Runs the `spate` binary with a hard timeout; with `check`, fails with its output unless it exits 0."""
    from conftest import spate_binary

    cmd = [spate_binary(), *args]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout.decode(errors='replace')[-3000:]}"
            f"\nstderr:\n{proc.stderr.decode(errors='replace')[-3000:]}"
        )
    return proc


def json_records(stdout: bytes) -> list[tuple[int, int, str]]:
    records = []
    for line in stdout.decode().splitlines():
        if line.strip():
            r = json.loads(line)
            records.append((r["partition"], r["offset"], r["value"]))
    return records


@pytest.mark.timeout(120)
def test_spate_cli_group_consumer_reads_once_and_resumes_from_commit(group_broker):
    bootstrap = group_broker.bootstrap
    partitions = 3
    topic = unique_topic("cli-group")
    group = unique_topic("gcli")
    create_topic(bootstrap, topic, partitions=partitions)
    produced = produce_numbered(bootstrap, topic, partitions, 40, "c")
    base = ["consume", "--bootstrap-server", bootstrap, "--topic", topic, "--group", group, "--format", "json"]

    out = spate_cli([*base, "--from-beginning", "--max-messages", str(len(produced)), "--timeout-ms", "30000"])
    records = json_records(out.stdout)
    assert sorted(records) == sorted((p, off, v) for (p, off), v in produced.items())
    # The group's progress is committed when the consumer exits.
    assert committed_offsets(bootstrap, group, topic, partitions) == {p: 40 for p in range(partitions)}

    # Running again in the same group resumes at the commits: --from-beginning only applies to a
    # group without committed offsets, so nothing is printed twice.
    later = produce_numbered(bootstrap, topic, partitions, 3, "later")
    out = spate_cli([*base, "--from-beginning", "--max-messages", str(len(later)), "--timeout-ms", "30000"])
    assert sorted(json_records(out.stdout)) == sorted((p, off, v) for (p, off), v in later.items())
    assert committed_offsets(bootstrap, group, topic, partitions) == {p: 43 for p in range(partitions)}


@pytest.mark.timeout(150)
def test_mixed_group_of_spate_cli_and_librdkafka_shares_partitions(group_broker, members, tmp_path):
    bootstrap = group_broker.bootstrap
    partitions = 4
    topic = unique_topic("mixed")
    group = unique_topic("gmix")
    create_topic(bootstrap, topic, partitions=partitions)

    rdkafka = members("rdkafka", bootstrap, topic, group)
    wait_stable([rdkafka], partitions, [4])
    from conftest import spate_binary

    cli_out = tmp_path / "cli.out"
    cli_err = tmp_path / "cli.err"
    cmd = [
        spate_binary(), "consume", "--bootstrap-server", bootstrap, "--topic", topic, "--group", group,
        "--from-beginning", "--format", "json",
    ]
    with open(cli_out, "wb") as out, open(cli_err, "wb") as err:
        cli = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    try:
        client = admin(bootstrap)

        def shared():
            d = client.describe_consumer_groups([group])[group].result(timeout=20)
            if len(d.members) != 2 or d.state != ConsumerGroupState.STABLE:
                return None
            assigned = {m.client_id: sorted(tp.partition for tp in m.assignment.topic_partitions) for m in d.members}
            if sorted(p for ps in assigned.values() for p in ps) != list(range(partitions)):
                return None
            if any(len(ps) != 2 for ps in assigned.values()):
                return None
            return d

        def state():
            return f"{describe_members([rdkafka])}\ncli alive={cli.poll() is None} stderr={cli_err.read_text()[-2000:]}"

        described = wait_until(shared, 45, "the Spate and librdkafka members to share the partitions", 0.5, state)
        assert described.partition_assignor == "range"
        spate_member = next(m for m in described.members if m.client_id != "rdkafka")
        spate_partitions = sorted(tp.partition for tp in spate_member.assignment.topic_partitions)
        rdkafka_partitions = wait_until(
            lambda: (a := rdkafka.log().assignment) is not None and len(a) == 2 and a,
            30,
            "the librdkafka member to hold two partitions",
            describe=state,
        )
        assert sorted(spate_partitions + rdkafka_partitions) == list(range(partitions))

        produced = produce_numbered(bootstrap, topic, partitions, 100, "m")

        def cli_records():
            text = cli_out.read_text()
            return json_records(text[: text.rfind("\n") + 1].encode())

        wait_until(
            lambda: {(p, off) for p, off, _ in cli_records()} | {(p, off) for _, p, off, _ in all_records([rdkafka])}
            >= produced.keys(),
            60,
            "the two members to read every record",
            describe=state,
        )
        spate_read = cli_records()
        rdkafka_read = [(p, off, v) for _, p, off, v in all_records([rdkafka])]
        # Each partition was consumed by exactly one member, each record exactly once.
        assert {p for p, _, _ in spate_read} == set(spate_partitions)
        assert {p for p, _, _ in rdkafka_read} == set(rdkafka_partitions)
        assert sorted(spate_read + rdkafka_read) == sorted((p, off, v) for (p, off), v in produced.items())
    finally:
        if cli.poll() is None:
            cli.send_signal(signal.SIGINT)
            try:
                cli.wait(timeout=20)
            except subprocess.TimeoutExpired:
                cli.kill()
                cli.wait(timeout=10)
    # Leaving the group hands the Spate member's partitions to the librdkafka member, which has nothing
    # left to read there if the Spate member committed what it printed.
    wait_stable([rdkafka], partitions, [4], timeout_s=30)
    wait_committed(bootstrap, group, topic, partitions, {p: 100 for p in range(partitions)})
    time.sleep(1)
    assert sorted((p, off, v) for _, p, off, v in all_records([rdkafka])) == sorted(rdkafka_read)
    rdkafka.stop()


# --- committed offsets survive a restart -------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_committed_offsets_survive_broker_restart(group_broker, how):
    bootstrap = group_broker.bootstrap
    partitions = 2
    topic = unique_topic(f"commit-{how}")
    group = unique_topic("gr")
    create_topic(bootstrap, topic, partitions=partitions)
    produced = produce_numbered(bootstrap, topic, partitions, 50, "r")

    consumer = Consumer(client_config(bootstrap, **{"group.id": group, **MEMBER_CONFIG}))
    try:
        consumer.subscribe([topic])
        seen = set()
        deadline = time.monotonic() + 60
        while len(seen) < len(produced) and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=100, timeout=0.5):
                assert not m.error(), m.error()
                seen.add((m.partition(), m.offset()))
        assert seen == produced.keys()
        # An older commit, then the one that counts (with metadata): the latest commit wins.
        consumer.commit(offsets=[TopicPartition(topic, 0, 10), TopicPartition(topic, 1, 11)], asynchronous=False)
        result = consumer.commit(
            offsets=[TopicPartition(topic, 0, 20, metadata="zero"), TopicPartition(topic, 1, 35, metadata="one")],
            asynchronous=False,
        )
        assert all(tp.error is None for tp in result), result
        # The broker goes away right after acknowledging the commit, with the member still in the group.
        if how == "kill9":
            group_broker.kill9()
            group_broker.start()
        else:
            group_broker.restart()
    finally:
        # Closed only now: a consumer closing against a dead coordinator waits for it.
        consumer.close()

    bootstrap = group_broker.bootstrap
    assert committed_offsets(bootstrap, group, topic, partitions) == {0: 20, 1: 35}
    client = admin(bootstrap)
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0), TopicPartition(topic, 1)])
    fetched = client.list_consumer_group_offsets([request])[group].result(timeout=20).topic_partitions
    assert {tp.partition: tp.metadata for tp in fetched} == {0: "zero", 1: "one"}

    # A member of the group resumes exactly there after the restart.
    consumer = Consumer(client_config(bootstrap, **{"group.id": group, **MEMBER_CONFIG}))
    try:
        consumer.subscribe([topic])
        got = []
        deadline = time.monotonic() + 60
        while len(got) < 30 + 15 and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=100, timeout=0.5):
                assert not m.error(), m.error()
                got.append((m.partition(), m.offset(), m.value().decode()))
        expected = [(p, off, produced[(p, off)]) for p, start in ((0, 20), (1, 35)) for off in range(start, 50)]
        assert sorted(got) == expected
    finally:
        consumer.close()


# --- spate groups: describe and reset-offsets --------------------------------------------------------


def describe_rows(stdout: bytes, key: str = "LAG") -> list[dict[str, str]]:
    """Rows of the partition table `spate groups` prints, keyed by its upper-case column names, as
    kafka-consumer-groups.sh prints them (GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ... for
    --describe, GROUP TOPIC PARTITION NEW-OFFSET for --reset-offsets); the table is the one whose header
    has PARTITION and `key`."""
    rows = []
    header = None
    for line in stdout.decode().splitlines():
        cells = line.split()
        if "PARTITION" in cells and key in cells:
            header = cells
        elif header is not None and len(cells) == len(header) and cells[header.index("PARTITION")].isdigit():
            rows.append(dict(zip(header, cells)))
    return rows


@pytest.mark.timeout(120)
def test_cli_groups_describe_shows_lag_and_reset_offsets_rereads(group_broker):
    bootstrap = group_broker.bootstrap
    partitions = 3
    topic = unique_topic("cli-reset")
    group = unique_topic("greset")
    create_topic(bootstrap, topic, partitions=partitions)
    produced = produce_numbered(bootstrap, topic, partitions, 10, "d")

    bs = ["--bootstrap-server", bootstrap]
    reset = ["groups", *bs, "--reset-offsets", "--group", group, "--topic", topic, "--to-earliest"]

    # A member commits 10, 4 and 0 of the 10 records in each partition.
    consumer = Consumer(client_config(bootstrap, **{"group.id": group, "client.id": "lagging-member", **MEMBER_CONFIG}))
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.consume(num_messages=100, timeout=0.5)
        assert consumer.assignment(), "the member was never assigned its partitions"
        consumer.commit(
            offsets=[TopicPartition(topic, 0, 10), TopicPartition(topic, 1, 4), TopicPartition(topic, 2, 0)],
            asynchronous=False,
        )

        assert group in spate_cli(["groups", *bs, "--list"]).stdout.decode().split()
        rows = describe_rows(spate_cli(["groups", *bs, "--describe", "--group", group]).stdout)
        mine = [r for r in rows if r["TOPIC"] == topic]
        table = {int(r["PARTITION"]): (r["CURRENT-OFFSET"], r["LOG-END-OFFSET"], r["LAG"]) for r in mine}
        assert table == {0: ("10", "10", "0"), 1: ("4", "10", "6"), 2: ("0", "10", "10")}, rows
        assert {r["CLIENT-ID"] for r in mine} == {"lagging-member"}, rows

        # Offsets of a group with members cannot be reset from outside (its next commit would undo it).
        refused = spate_cli([*reset, "--execute"], check=False)
        assert refused.returncode != 0, refused.stdout.decode()
        assert committed_offsets(bootstrap, group, topic, partitions) == {0: 10, 1: 4, 2: 0}
    finally:
        consumer.close()

    # Once the group is empty: a dry run shows the plan and changes nothing, --execute commits it.
    plan = describe_rows(spate_cli([*reset, "--dry-run"]).stdout, key="NEW-OFFSET")
    assert {int(r["PARTITION"]): r["NEW-OFFSET"] for r in plan} == {0: "0", 1: "0", 2: "0"}, plan
    assert committed_offsets(bootstrap, group, topic, partitions) == {0: 10, 1: 4, 2: 0}
    spate_cli([*reset, "--execute"])
    assert committed_offsets(bootstrap, group, topic, partitions) == {0: 0, 1: 0, 2: 0}
    rows = describe_rows(spate_cli(["groups", *bs, "--describe", "--group", group]).stdout)
    assert {int(r["PARTITION"]): r["LAG"] for r in rows if r["TOPIC"] == topic} == {0: "10", 1: "10", 2: "10"}

    # A consumer of the group now re-reads everything from offset 0.
    consume = ["consume", *bs, "--topic", topic, "--group", group, "--format", "json"]
    out = spate_cli([*consume, "--max-messages", "30", "--timeout-ms", "30000"])
    assert sorted(json_records(out.stdout)) == sorted((p, off, v) for (p, off), v in produced.items())

    # --to-offset and --shift-by move from there.
    spate_cli(["groups", *bs, "--reset-offsets", "--group", group, "--topic", topic, "--to-offset", "7", "--execute"])
    assert committed_offsets(bootstrap, group, topic, partitions) == {0: 7, 1: 7, 2: 7}
    spate_cli(["groups", *bs, "--reset-offsets", "--group", group, "--topic", topic, "--shift-by", "-2", "--execute"])
    assert committed_offsets(bootstrap, group, topic, partitions) == {0: 5, 1: 5, 2: 5}
    spate_cli(["groups", *bs, "--reset-offsets", "--group", group, "--topic", topic, "--to-latest", "--execute"])
    assert committed_offsets(bootstrap, group, topic, partitions) == {0: 10, 1: 10, 2: 10}

    # Deleting the group forgets its offsets.
    spate_cli(["groups", *bs, "--delete", "--group", group])
    assert group not in spate_cli(["groups", *bs, "--list"]).stdout.decode().split()
    assert committed_offsets(bootstrap, group, topic, partitions) == {0: -1001, 1: -1001, 2: -1001}

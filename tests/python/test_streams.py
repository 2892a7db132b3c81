"""spate-streams example programs (examples/wordcount.rs, examples/pageview_counts.rs) as real processes
against a real `spate broker`, fed and read by clients we did not write: confluent-kafka (librdkafka),
kafka-python and kcat. The in-process Rust tests (tests/tests/streams.rs) cover the topologies; these
add foreign clients on both ends of an application, and a real `kill -9` of a streams process.

The example binaries come from `$SPATE_EXAMPLES_DIR`, by default the `examples/` directory beside
`$SPATE_BIN` (where `cargo build --examples` puts them). Every test starts its own broker, runs the
examples with their own temporary state directories and kills every process it started.

Delivery is at-least-once by default (spate-streams' `processing.guarantee`): after a crash, the
records a task processed since its last commit are processed again, so a count may exceed the true
count by at most the records that were processed but not committed when the process died; it never
falls below it. With `exactly_once_v2` (test 5) the counts a read_committed reader sees are exact
across repeated kill -9s.
"""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTopicPartition

from conftest import spate_binary
from spatetest import (
    DUMMY_GROUP,
    admin,
    client_config,
    committed_offsets,
    create_topic,
    kcat,
    terminate,
    wait_until,
    watermarks,
)

pytestmark = pytest.mark.timeout(180)

# The examples' fixed topic names and application ids (their consumer groups).
WORDCOUNT_INPUT = "streams-plaintext-input"
WORDCOUNT_OUTPUT = "streams-wordcount-output"
WORDCOUNT_APP = "streams-wordcount"
PAGEVIEWS_INPUT = "pageviews"
PAGEVIEWS_OUTPUT = "pageview-counts"

# The first rebalance of a new group starts at once (Kafka waits 3 s for more members), as in
# tests/tests/streams.rs.
BROKER_ARGS = ["--set", "group.initial.rebalance.delay.ms=0"]
# Commit often, so that results reach the output topics promptly and a crash repeats little.
FAST_COMMITS = ["--config", "commit.interval.ms=200"]
# For the failover tests: a killed instance leaves the group after 6 s (the broker's minimum session
# timeout, Kafka's default group.min.session.timeout.ms) rather than Kafka's default 45 s.
FAST_FAILOVER = ["--config", "session.timeout.ms=6000", "--config", "heartbeat.interval.ms=500"]
# How long a SIGTERM'd example may take to commit, leave the group and exit before it is SIGKILL'd.
STOP_TIMEOUT_S = 15.0


def examples_dir() -> Path:
    explicit = os.environ.get("SPATE_EXAMPLES_DIR")
    directory = Path(explicit) if explicit else Path(spate_binary()).parent / "examples"
    return directory


def example_binary(name: str) -> str:
    path = examples_dir() / name
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"no example binary {path}: build it with `cargo build -p spate-examples --examples` "
            "(scripts/test.sh does), or point SPATE_EXAMPLES_DIR at the directory that holds it"
        )
    return str(path)


class StreamsProcess:
    """One example program run as a process; its stdout and stderr go to a log file."""

    def __init__(self, name: str, args: list[str], log_path: Path):
        self.name = name
        self.log_path = log_path
        self.cmd = [example_binary(name), *args]
        # Set when we stopped or killed it on purpose; teardown treats any other exit as a failure.
        self.stopped_on_purpose = False
        # Set when SIGTERM did not end it within STOP_TIMEOUT_S.
        self.ignored_sigterm = False
        env = {**os.environ, "RUST_BACKTRACE": "1", "NO_COLOR": "1"}
        with open(log_path, "ab") as log:
            log.write(f"=== {' '.join(self.cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no log>"

    def kill9(self) -> None:
        """SIGKILL: no commit, no flush, no leaving the group."""
        self.stopped_on_purpose = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> int:
        """SIGTERM (the example commits and leaves its group), SIGKILL after STOP_TIMEOUT_S."""
        self.stopped_on_purpose = True
        code, ignored = terminate(self.proc, STOP_TIMEOUT_S)
        self.ignored_sigterm = self.ignored_sigterm or ignored
        return code


@pytest.fixture
def streams_broker(broker_factory):
    return broker_factory(extra_args=BROKER_ARGS)


@pytest.fixture
def run_example(tmp_path, request):
    """Returns `start(name, bootstrap, state_dir, *extra_args) -> StreamsProcess`. At teardown every
    process still running is stopped with SIGTERM and must exit 0 within STOP_TIMEOUT_S; one that
    exited by itself fails the test. conftest.py attaches their logs to a failing test's report."""
    started: list[StreamsProcess] = []
    # conftest.py's report hook attaches these processes' logs to the report of a failing test.
    request.node._spate_streams = started

    def start(name: str, bootstrap: str, state_dir: Path, *extra_args: str) -> StreamsProcess:
        log = tmp_path / f"{name}-{len(started)}.log"
        args = ["--bootstrap-server", bootstrap, "--state-dir", str(state_dir), *FAST_COMMITS, *extra_args]
        proc = StreamsProcess(name, args, log)
        started.append(proc)
        return proc

    yield start
    problems = []
    for i, p in enumerate(started):
        if not p.alive() and not p.stopped_on_purpose:
            problems.append(f"{p.name} #{i} exited by itself with status {p.proc.returncode}")
        if p.alive():
            # A graceful stop, as Ctrl-C: the example commits, leaves the group and exits 0.
            code = p.stop()
            if p.ignored_sigterm:
                problems.append(f"{p.name} #{i} ignored SIGTERM for {STOP_TIMEOUT_S}s and was killed")
            elif code != 0:
                problems.append(f"{p.name} #{i} exited with status {code} on SIGTERM")
    if problems:
        pytest.fail("; ".join(problems))


class CountsReader:
    """Follows a counts topic (key UTF-8, value an 8-byte big-endian long, Kafka's LongSerializer) with
    an assigned confluent-kafka consumer (read_committed, librdkafka's default) and keeps the latest
    count per key and every count seen per key. A key always goes to one partition, so the latest
    record of a key in its partition is its latest count."""

    def __init__(self, bootstrap: str, topic: str, partitions: int):
        self.consumer = Consumer(
            client_config(
                bootstrap,
                **{
                    "group.id": DUMMY_GROUP,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "fetch.wait.max.ms": 100,
                },
            )
        )
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.latest: dict[str, int] = {}
        self.history: dict[str, list[int]] = {}
        self.records = 0

    def poll(self, timeout_s: float = 0.3) -> dict[str, int]:
        for msg in self.consumer.consume(num_messages=10000, timeout=timeout_s):
            if msg.error():
                raise AssertionError(f"consumer error: {msg.error()}")
            value = msg.value()
            assert value is not None and len(value) == 8, f"not a LongSerializer value: {value!r}"
            key, count = msg.key().decode(), struct.unpack(">q", value)[0]
            self.latest[key] = count
            self.history.setdefault(key, []).append(count)
            self.records += 1
        return self.latest

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def counts_reader():
    readers: list[CountsReader] = []

    def make(bootstrap: str, topic: str, partitions: int) -> CountsReader:
        reader = CountsReader(bootstrap, topic, partitions)
        readers.append(reader)
        return reader

    yield make
    for r in readers:
        r.close()


def produce_lines(producer: Producer, lines) -> None:
    """Produces unkeyed lines (librdkafka spreads them over the partitions) and waits for every ack."""
    errors = []

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(err)

    for line in lines:
        while True:
            try:
                producer.produce(WORDCOUNT_INPUT, value=line.encode(), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0, "lines still undelivered after 60 s"
    assert not errors, f"delivery errors: {errors[:5]} ({len(errors)} in all)"


def word_counts(lines) -> Counter:
    """The wordcount topology's result: lower-cased, split on anything but letters, digits and '_'."""
    counts: Counter = Counter()
    for line in lines:
        word = ""
        for c in line.lower() + " ":
            if c.isalnum() or c == "_":
                word += c
            elif word:
                counts[word] += 1
                word = ""
    return counts


def repartition_topics(bootstrap: str, application_id: str) -> dict[str, int]:
    """The application's repartition topics (`<application.id>-<name>-repartition`) and partition counts."""
    client = admin(bootstrap)
    md = client.list_topics(timeout=10)
    return {
        name: len(t.partitions)
        for name, t in md.topics.items()
        if name.startswith(f"{application_id}-") and name.endswith("-repartition")
    }


def uncommitted(bootstrap: str, group: str, topics: dict[str, int]) -> dict[tuple[str, int], int]:
    """Per partition of `topics` (name -> partitions): records between the group's committed offset
    (the log start when none is committed) and the end of the partition."""
    out = {}
    for t, n in topics.items():
        committed = committed_offsets(bootstrap, group, t, n)
        for p in range(n):
            low, high = watermarks(bootstrap, t, p)
            c = committed.get(p, -1)
            out[(t, p)] = high - (c if c >= 0 else low)
    return out


def describe_group(bootstrap: str, group: str):
    # Keep the client referenced until the future resolves: a collected AdminClient cancels it.
    client = admin(bootstrap)
    return client.describe_consumer_groups([group])[group].result(timeout=20)


# --- 1. wordcount read by confluent-kafka and kcat ---------------------------------------------------


def test_wordcount_output_is_read_by_confluent_kafka_and_kcat(streams_broker, run_example, counts_reader, tmp_path):
    bootstrap = streams_broker.bootstrap
    create_topic(bootstrap, WORDCOUNT_INPUT, partitions=2)
    create_topic(bootstrap, WORDCOUNT_OUTPUT, partitions=2)
    lines = [
        "all streams lead to Kafka",
        "hello kafka streams",
        "join kafka summit",
        "Kafka: streams, tables & state_stores!",
    ]
    produce_lines(Producer(client_config(bootstrap)), lines)
    expected = dict(word_counts(lines))
    assert expected["kafka"] == 4 and expected["state_stores"] == 1

    run_example("wordcount", bootstrap, tmp_path / "state", "--partitions", "2")

    reader = counts_reader(bootstrap, WORDCOUNT_OUTPUT, 2)
    wait_until(lambda: reader.poll() == expected, 60, "the expected counts from confluent-kafka",
               describe=lambda: reader.latest)

    # kcat reads the same counts: `-s value=q` decodes a big-endian signed 64-bit value.
    def kcat_counts():
        out = kcat(
            ["-C", "-b", bootstrap, "-t", WORDCOUNT_OUTPUT, "-o", "beginning", "-e", "-q",
             "-s", "value=q", "-f", "%k %s\\n"]
        ).stdout.decode()
        latest = {}
        for line in out.splitlines():
            key, value = line.rsplit(" ", 1)
            latest[key] = int(value)
        return latest

    seen = {}

    def kcat_agrees():
        seen.update(latest=kcat_counts())
        return seen["latest"] == expected

    wait_until(kcat_agrees, 30, "kcat to read the expected counts", describe=lambda: seen)


# --- 2. pageview_counts: final results read by kafka-python ------------------------------------------


def test_pageview_counts_final_results_with_kafka_python(streams_broker, run_example, tmp_path):
    bootstrap = streams_broker.bootstrap
    # One partition: records reach the re-keyed windows in the order produced, and one partition of
    # the repartition topic means one stream-time clock for every page.
    create_topic(bootstrap, PAGEVIEWS_INPUT, partitions=1)
    create_topic(bootstrap, PAGEVIEWS_OUTPUT, partitions=1)

    def view(user, page):
        return json.dumps({"user": user, "page": page}).encode()

    # Windows of 10 s with 2 s grace. [0,10s): /a twice (the 8 s view arrives out of order, within
    # grace), /b once; [10s,20s): /a once. The view at 25 s closes both windows (25 s >= 20 s + 2 s);
    # the /b view at 5 s comes after that and is dropped as late. The window of the 25 s view stays
    # open, so exactly three final counts come out.
    views = [
        (b"alice", view("alice", "/a"), 1_000),
        (b"carol", view("carol", "/b"), 9_000),
        (b"alice", view("alice", "/a"), 11_000),
        (b"bob", view("bob", "/a"), 8_000),
        (b"alice", view("alice", "/a"), 25_000),
        (b"carol", view("carol", "/b"), 5_000),
    ]
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        for key, value, ts in views:
            producer.send(PAGEVIEWS_INPUT, key=key, value=value, timestamp_ms=ts, partition=0).get(timeout=30)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)

    run_example("pageview_counts", bootstrap, tmp_path / "state", "--partitions", "1",
                "--window-ms", "10000", "--grace-ms", "2000")

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )
    records = []
    try:
        tp = KTopicPartition(PAGEVIEWS_OUTPUT, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)

        def poll_some():
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
            return len(records) >= 3

        wait_until(poll_some, 60, "three final window counts", interval_s=0,
                   describe=lambda: [r.value for r in records])
        # Several commit intervals more: nothing else may come out (no updates of a closed window,
        # nothing for the late view, nothing for the open window).
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            poll_some()
    finally:
        consumer.close()

    got = sorted(
        (r.key.decode(), v["page"], v["window_start"], v["window_end"], v["count"])
        for r in records
        for v in [json.loads(r.value)]
    )
    assert got == [
        ("/a", "/a", 0, 10_000, 2),
        ("/a", "/a", 10_000, 20_000, 1),
        ("/b", "/b", 0, 10_000, 1),
    ], got


# --- 3. kill -9 of a counting app under load ---------------------------------------------------------

WORDS = 100
TOTAL_LINES = 20_000
BATCH = 500


@pytest.mark.timeout(300)
def test_kill_9_mid_run_loses_nothing(streams_broker, run_example, counts_reader, tmp_path):
    bootstrap = streams_broker.bootstrap
    partitions = 3
    create_topic(bootstrap, WORDCOUNT_INPUT, partitions=partitions)
    create_topic(bootstrap, WORDCOUNT_OUTPUT, partitions=partitions)
    lines = [f"w{i % WORDS}" for i in range(TOTAL_LINES)]
    state_dir = tmp_path / "state"
    args = ("--partitions", str(partitions), *FAST_FAILOVER)

    app = run_example("wordcount", bootstrap, state_dir, *args)
    reader = counts_reader(bootstrap, WORDCOUNT_OUTPUT, partitions)
    producer = Producer(client_config(bootstrap, **{"linger.ms": 5}))

    # First half, in batches, while the app runs; once output shows up, keep going to the half-way
    # mark and kill the app right after the last batch, while it is still busy with it.
    half = TOTAL_LINES // 2
    sent = 0
    while sent < half:
        produce_lines(producer, lines[sent : sent + BATCH])
        sent += BATCH
        if sent == BATCH:
            wait_until(lambda: reader.poll(), 60, "the first counts in the output")
        reader.poll(0)
    assert app.alive(), "wordcount exited by itself"
    app.kill9()

    # What the killed instance may have processed without committing: everything after the group's
    # committed offsets, in the input (each line holds one word) and in the repartition topic between
    # the two sub-topologies. A crash repeats at most these records, once each.
    time.sleep(0.5)
    topics = {WORDCOUNT_INPUT: partitions, **repartition_topics(bootstrap, WORDCOUNT_APP)}
    assert len(topics) == 2, f"expected one repartition topic, found {topics}"
    open_ranges = uncommitted(bootstrap, WORDCOUNT_APP, topics)
    bound = sum(open_ranges.values())
    counts_before_restart = dict(reader.poll())

    app = run_example("wordcount", bootstrap, state_dir, *args)
    produce_lines(producer, lines[sent:])
    true_counts = word_counts(lines)

    def done():
        latest = reader.poll()
        if len(latest) < WORDS or any(latest.get(w, 0) < n for w, n in true_counts.items()):
            return False
        return all(v == 0 for v in uncommitted(bootstrap, WORDCOUNT_APP, topics).values())

    wait_until(done, 180, "every word counted and every input committed", interval_s=0.5,
               describe=lambda: {"short": {w: (reader.latest.get(w), n) for w, n in true_counts.items()
                                           if reader.latest.get(w, 0) < n},
                                 "uncommitted": uncommitted(bootstrap, WORDCOUNT_APP, topics)})
    # The last commit flushed its counts before committing; read whatever is left of the output.
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        reader.poll(0.2)
    final = dict(reader.latest)
    assert set(final) == set(true_counts), sorted(set(final) ^ set(true_counts))
    lost = {w: (final[w], n) for w, n in true_counts.items() if final[w] < n}
    assert not lost, f"counts below the true counts (records lost): {lost}"
    duplicates = sum(final.values()) - TOTAL_LINES
    # Words written to the repartition topic more than once (input lines processed twice).
    repartition_total = sum(
        watermarks(bootstrap, t, p)[1] for t, n in topics.items() if t != WORDCOUNT_INPUT for p in range(n)
    )
    print(
        f"kill -9 after {half} lines: {duplicates} duplicate counts; bound {bound} "
        f"(uncommitted at the kill: {open_ranges}); {repartition_total - TOTAL_LINES} words repartitioned twice; "
        f"{len(counts_before_restart)} words had output before the restart; {reader.records} output records in all"
    )
    assert duplicates <= bound, f"{duplicates} duplicate counts, more than the {bound} records left uncommitted"


# --- 4. instances share the work and survive kill -9 -------------------------------------------------

SHARED_PARTITIONS = 6
SHARED_WORDS = 60
PER_WORD_PER_ROUND = 20


@pytest.mark.timeout(300)
def test_instances_share_and_survive_kill_9(streams_broker, run_example, counts_reader, tmp_path):
    bootstrap = streams_broker.bootstrap
    create_topic(bootstrap, WORDCOUNT_INPUT, partitions=SHARED_PARTITIONS)
    create_topic(bootstrap, WORDCOUNT_OUTPUT, partitions=SHARED_PARTITIONS)
    args = ("--partitions", str(SHARED_PARTITIONS), *FAST_FAILOVER)
    producer = Producer(client_config(bootstrap, **{"linger.ms": 5}))
    reader = counts_reader(bootstrap, WORDCOUNT_OUTPUT, SHARED_PARTITIONS)
    round_lines = [f"w{i % SHARED_WORDS}" for i in range(SHARED_WORDS * PER_WORD_PER_ROUND)]

    def all_at(n):
        def check():
            latest = reader.poll()
            return len(latest) == SHARED_WORDS and all(v == n for v in latest.values())

        return check

    def members():
        return describe_group(bootstrap, WORDCOUNT_APP).members

    def assignments():
        # By member id: every instance's thread has the same client.id (application.id based).
        return {m.member_id: sorted((tp.topic, tp.partition) for tp in m.assignment.topic_partitions)
                for m in members()}

    a = run_example("wordcount", bootstrap, tmp_path / "a", *args)
    b = run_example("wordcount", bootstrap, tmp_path / "b", *args)
    produce_lines(producer, round_lines)
    wait_until(all_at(PER_WORD_PER_ROUND), 90, "round 1 counted by two instances",
               describe=lambda: reader.latest)
    wait_until(lambda: len(members()) == 2, 30, "two members in the group", describe=assignments)

    c = run_example("wordcount", bootstrap, tmp_path / "c", *args)
    wait_until(lambda: len(members()) == 3 and all(assignments().values()), 60,
               "the third instance to join and every instance to get tasks", describe=assignments)
    produce_lines(producer, round_lines)
    wait_until(all_at(2 * PER_WORD_PER_ROUND), 90, "round 2 counted by three instances",
               describe=lambda: reader.latest)
    print(f"assignments with three instances: {assignments()}")

    # Kill after everything is committed (input and repartition topic): the killed instance leaves
    # nothing to repeat, so the counts stay exact.
    topics = {WORDCOUNT_INPUT: SHARED_PARTITIONS, **repartition_topics(bootstrap, WORDCOUNT_APP)}
    wait_until(lambda: not any(uncommitted(bootstrap, WORDCOUNT_APP, topics).values()), 30,
               "round 2 committed", describe=lambda: uncommitted(bootstrap, WORDCOUNT_APP, topics))
    a.kill9()
    produce_lines(producer, round_lines)
    wait_until(all_at(3 * PER_WORD_PER_ROUND), 120, "round 3 counted after the kill",
               describe=lambda: reader.latest)
    # Every partition of the input (and of the repartition topic) was processed and committed.
    wait_until(lambda: not any(uncommitted(bootstrap, WORDCOUNT_APP, topics).values()), 30,
               "round 3 committed on every partition",
               describe=lambda: uncommitted(bootstrap, WORDCOUNT_APP, topics))
    wait_until(lambda: len(members()) == 2, 30, "the killed instance to leave the group", describe=assignments)

    # The survivors hold every input partition between them. Polled, not sampled once: a
    # describe that lands while the group rebalances shows members without assignments yet.
    def survivors_hold_everything():
        assigned = sorted(tp for tps in assignments().values() for tp in tps if tp[0] == WORDCOUNT_INPUT)
        return assigned == [(WORDCOUNT_INPUT, p) for p in range(SHARED_PARTITIONS)]

    wait_until(survivors_hold_everything, 30, "the two survivors to hold every input partition",
               describe=assignments)
    # Nothing more: the counts stay exact.
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        reader.poll(0.2)
    assert all(v == 3 * PER_WORD_PER_ROUND for v in reader.latest.values()), reader.latest
    assert b.alive() and c.alive()


# --- 5. exactly_once_v2: wordcount killed -9 again and again counts exactly ----------------------------

EOS = ["--config", "processing.guarantee=exactly_once_v2"]
EOS_KILLS = 5
EOS_LINES = 12_000
EOS_WORDS = 50
EOS_CHUNK = 100


@pytest.mark.timeout(360)
def test_exactly_once_v2_wordcount_killed_9_repeatedly_counts_exactly(streams_broker, run_example, counts_reader,
                                                                     tmp_path):
    """wordcount with processing.guarantee=exactly_once_v2, SIGKILLed five times while it works through
    a backlog (each restart on the same state directory, so with the same process id and
    transactional.id, which fences the dead producer and aborts its transaction): no count is ever
    repeated or goes back in what read_committed sees, and the final counts are exact."""
    bootstrap = streams_broker.bootstrap
    partitions = 3
    create_topic(bootstrap, WORDCOUNT_INPUT, partitions=partitions)
    create_topic(bootstrap, WORDCOUNT_OUTPUT, partitions=partitions)
    # Two words a line: the counts go through the repartition topic, so a crash leaves work open in
    # both sub-topologies.
    lines = [f"w{i % EOS_WORDS} w{(i * 7 + 3) % EOS_WORDS}" for i in range(EOS_LINES)]
    true_counts = word_counts(lines)
    state_dir = tmp_path / "state"
    args = ("--partitions", str(partitions), *FAST_FAILOVER, *EOS)
    producer = Producer(client_config(bootstrap, **{"linger.ms": 5}))
    reader = counts_reader(bootstrap, WORDCOUNT_OUTPUT, partitions)
    rng = random.Random(14)

    def settled(left: dict[tuple[str, int], int]) -> bool:
        # The repartition topic is written in transactions, and the committed offset of a
        # partition read to its end is the one after its last record, which leaves the last
        # transaction's COMMIT marker behind it (Kafka Streams commits the consumer's position
        # there instead, KAFKA-6607): up to one "uncommitted" offset per partition there.
        return all(n == 0 if t == WORDCOUNT_INPUT else n <= 1 for (t, _), n in left.items())

    slice_size = EOS_LINES // (EOS_KILLS + 1)
    mid_stream_kills = 0
    for k in range(EOS_KILLS):
        app = run_example("wordcount", bootstrap, state_dir, *args)
        chunks = [lines[i : i + EOS_CHUNK] for i in range(k * slice_size, (k + 1) * slice_size, EOS_CHUNK)]
        # The first chunk, and wait until this instance commits output (the dead one's session
        # ended and its tasks were restored, or it is the first).
        produce_lines(producer, chunks[0])
        seen = reader.records

        def more_output():
            reader.poll()
            return reader.records > seen

        wait_until(more_output, 90, f"output from instance {k}", describe=lambda: app.log_text()[-2000:])
        # More chunks while it runs; the kill comes a random moment after a random one, while
        # it processes that chunk (commits every 200 ms); the rest waits for the next instance.
        kill_after = rng.randrange(1, len(chunks))
        for chunk in chunks[1 : kill_after + 1]:
            produce_lines(producer, chunk)
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.15))
        assert app.alive(), f"wordcount exited by itself:\n{app.log_text()[-3000:]}"
        topics = {WORDCOUNT_INPUT: partitions, **repartition_topics(bootstrap, WORDCOUNT_APP)}
        app.kill9()
        if not settled(uncommitted(bootstrap, WORDCOUNT_APP, topics)):
            mid_stream_kills += 1
        for chunk in chunks[kill_after + 1 :]:
            produce_lines(producer, chunk)

    app = run_example("wordcount", bootstrap, state_dir, *args)
    produce_lines(producer, lines[EOS_KILLS * slice_size :])
    topics = {WORDCOUNT_INPUT: partitions, **repartition_topics(bootstrap, WORDCOUNT_APP)}

    def done():
        reader.poll()
        latest = reader.latest
        return all(latest.get(w, 0) >= n for w, n in true_counts.items()) and settled(
            uncommitted(bootstrap, WORDCOUNT_APP, topics)
        )

    wait_until(done, 180, "every word counted and all input committed", interval_s=0.5,
               describe=lambda: ({w: (reader.latest.get(w), n) for w, n in true_counts.items()
                                  if reader.latest.get(w, 0) != n},
                                 uncommitted(bootstrap, WORDCOUNT_APP, topics)))
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        reader.poll(0.2)
    print(f"{mid_stream_kills} of {EOS_KILLS} kills left input uncommitted")
    assert mid_stream_kills > 0, "every kill came after the app had caught up: the test proved nothing"
    assert reader.latest == dict(true_counts), "final counts differ from the true counts"
    for word, counts in reader.history.items():
        assert all(a < b for a, b in zip(counts, counts[1:])), f"{word}: a count repeated or went back: {counts}"

"""Log compaction (`cleanup.policy=compact`) of a spate broker, observed from outside with
confluent-kafka: the cleaner keeps the latest record per key at its original offset, tombstones are
kept for `delete.retention.ms` and then vanish, `min.compaction.lag.ms` holds the cleaner back, a
consumer reading while the cleaner runs always sees a consistent log, and the cleaned log survives a
restart."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from spatetest import DUMMY_GROUP, admin, client_config, create_topic, unique_topic, watermarks

pytestmark = pytest.mark.timeout(120)

# The cleaner looks for work this often, instead of Kafka's 15 s `log.cleaner.backoff.ms`.
CLEANER_SETTINGS = {"log.cleaner.backoff.ms": "200"}

# Small segments so that a few dozen records span many closed (cleanable) segments; clean as soon as
# anything is dirty; keep tombstones only briefly.
DELETE_RETENTION_MS = 3000
COMPACTED = {
    "cleanup.policy": "compact",
    "segment.bytes": "1024",
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
    "delete.retention.ms": str(DELETE_RETENTION_MS),
}

KEYS = [f"key-{i:02d}" for i in range(20)]
TOMBSTONED = KEYS[:5]
UPDATED_LATER = KEYS[5:8]


@pytest.fixture
def cleaner_broker(broker_factory):
    args = []
    for key, value in CLEANER_SETTINGS.items():
        args += ["--set", f"{key}={value}"]
    return broker_factory(extra_args=args)


class Log:
    """What was produced to partition 0 of a topic: offset -> (key, value), value None for a tombstone."""

    def __init__(self, bootstrap: str, topic: str):
        self.bootstrap = bootstrap
        self.topic = topic
        self.records: dict[int, tuple[str, str | None]] = {}
        self.lock = threading.Lock()
        # One record per batch, so that records spread over segments and the cleaner drops whole batches.
        self.producer = Producer(client_config(bootstrap, **{"acks": "all", "linger.ms": 0, "batch.num.messages": 1}))

    def produce(self, pairs) -> None:
        delivered, errors = [], []

        def on_delivery(err, msg):
            (errors if err else delivered).append(err or msg)

        for key, value in pairs:
            self.producer.produce(
                self.topic,
                key=key.encode(),
                value=None if value is None else value.encode(),
                partition=0,
                on_delivery=on_delivery,
            )
            # One in flight at a time keeps the log in the order of `pairs`.
            assert self.producer.flush(30) == 0, "record not delivered within 30s"
        assert not errors, errors[:5]
        with self.lock:
            for m in delivered:
                self.records[m.offset()] = (m.key().decode(), None if m.value() is None else m.value().decode())

    def snapshot(self) -> dict[int, tuple[str, str | None]]:
        with self.lock:
            return dict(self.records)


def latest_by_key(records: dict[int, tuple[str, str | None]], below: int | None = None) -> dict[str, int]:
    """key -> offset of its latest record (below `below`)."""
    latest = {}
    for off in sorted(records):
        if below is None or off < below:
            latest[records[off][0]] = off
    return latest


def compacted_view(records: dict[int, tuple[str, str | None]], keep_tombstones: bool) -> list:
    """The log a finished cleaning leaves when every record is in a cleanable segment, as (offset, key,
    value): the latest record per key at its original offset, tombstones included or not."""
    kept = []
    for key, off in latest_by_key(records).items():
        if records[off][1] is not None or keep_tombstones:
            kept.append((off, key, records[off][1]))
    return sorted(kept)


def log_reader(bootstrap: str) -> Consumer:
    return Consumer(
        client_config(
            bootstrap,
            **{
                "group.id": DUMMY_GROUP,
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 50,
            },
        )
    )


def read_log(bootstrap: str, topic: str, consumer: Consumer | None = None, timeout_s: float = 30.0):
    """Reads partition 0 from its start to its end (with `consumer`, or a consumer of its own); returns
    (the end offset the read stopped at, the records as (offset, key, value))."""
    own = consumer is None
    if own:
        consumer = log_reader(bootstrap)
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        records = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return msg.offset(), records
                raise AssertionError(f"consumer error: {msg.error()}")
            value = None if msg.value() is None else msg.value().decode()
            records.append((msg.offset(), msg.key().decode(), value))
        raise AssertionError(f"did not reach the end of {topic} within {timeout_s}s ({len(records)} records read)")
    finally:
        if own:
            consumer.close()
        else:
            consumer.unassign()


def check_consistent(end: int, records, produced: dict[int, tuple[str, str | None]]) -> None:
    """A consistent read of a compacted log: offsets increase, every record is what was produced at its
    offset, and for every key the latest record below the end is there, except a tombstone, which may
    be gone only together with every other record of its key (never an older value shown as latest)."""
    offsets = [off for off, _, _ in records]
    assert offsets == sorted(set(offsets)), "offsets not strictly increasing"
    wrong = [(off, k, v, produced.get(off)) for off, k, v in records if produced.get(off) != (k, v)]
    assert not wrong, f"records that are not what was produced at their offset: {wrong[:5]}"
    present = set(offsets)
    keys_present = {k for _, k, _ in records}
    for key, off in latest_by_key(produced, below=end).items():
        if produced[off][1] is None:
            assert off in present or key not in keys_present, f"{key}: an older value outlived its tombstone at {off}"
        else:
            assert off in present, f"{key}: its latest value at offset {off} is missing (end {end})"


def set_topic_config(bootstrap: str, topic: str, name: str, value: str) -> None:
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)],
    )
    # Keep the client referenced until the future resolves: a collected AdminClient cancels it.
    client = admin(bootstrap)
    client.incremental_alter_configs([resource])[resource].result(timeout=20)


def segment_bytes_on_disk(broker, topic: str) -> int:
    return sum(f.stat().st_size for f in (broker.data_dir / f"{topic}-0").glob("*.log"))


class Reader(threading.Thread):
    """Reads the whole log over and over while the cleaner works, keeping every pass for checking."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.stop_event = threading.Event()
        # (wall-clock time the pass finished, end offset, records)
        self.passes: list[tuple[float, int, list]] = []
        self.error: BaseException | None = None

    def run(self):
        consumer = log_reader(self.bootstrap)
        try:
            while not self.stop_event.is_set() and len(self.passes) < 2000:
                end, records = read_log(self.bootstrap, self.topic, consumer)
                self.passes.append((time.time(), end, records))
                time.sleep(0.01)
        except BaseException as e:  # reported by the test thread
            self.error = e
        finally:
            consumer.close()

    def stop(self):
        self.stop_event.set()
        self.join(timeout=60)
        assert not self.is_alive(), "the reader did not stop"
        if self.error is not None:
            raise AssertionError(f"the reader failed: {self.error!r}") from self.error


def wait_for_log(bootstrap: str, topic: str, wants: list, timeout_s: float, what: str):
    """Reads the log until it is one of `wants`; returns the end offset of that read."""
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        end, seen = read_log(bootstrap, topic)
        if seen in wants:
            return end
        time.sleep(0.2)
    missing = sorted(set(wants[0]) - set(seen or []))
    extra = sorted(set(seen or []) - set(wants[0]))
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}: missing {missing[:10]}, extra {extra[:10]}")


@pytest.mark.timeout(180)
def test_compaction_keeps_latest_per_key_drops_tombstones_and_reads_stay_consistent(cleaner_broker):
    broker = cleaner_broker
    topic = unique_topic("compact")
    # The cleaner is held off (records younger than an hour are not compacted) until the whole history
    # is written, so that the log's size and segments before cleaning are known.
    create_topic(broker.bootstrap, topic, partitions=1, config={**COMPACTED, "min.compaction.lag.ms": "3600000"})
    log = Log(broker.bootstrap, topic)

    # Five rounds of values for every key, then tombstones for some keys, then records with keys of their
    # own so that all of the above lies in closed segments.
    for rnd in range(5):
        log.produce((key, f"{key}=v{rnd}") for key in KEYS)
    tombstones_written_at = time.time()
    log.produce((key, None) for key in TOMBSTONED)
    log.produce((f"filler-a{i:02d}", f"a{i}" + "." * 40) for i in range(30))
    produced = log.snapshot()
    assert sorted(produced) == list(range(135))
    bytes_before = segment_bytes_on_disk(broker, topic)
    assert len(list((broker.data_dir / f"{topic}-0").glob("*.log"))) >= 5, "segment.bytes=1024 should roll often"

    reader = Reader(broker.bootstrap, topic)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not reader.passes and reader.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reader.passes and len(reader.passes[0][2]) == 135, "the reader saw no uncleaned log first"
        set_topic_config(broker.bootstrap, topic, "min.compaction.lag.ms", "0")
        # First cleaning: one record per key remains, each at its original offset, tombstones included
        # (unless the cleaner came so late that delete.retention.ms had already passed).
        wait_for_log(
            broker.bootstrap,
            topic,
            [compacted_view(produced, keep_tombstones=True), compacted_view(produced, keep_tombstones=False)],
            60,
            "the cleaner to compact the log",
        )
        assert watermarks(broker.bootstrap, topic, 0) == (0, 135), "compaction must not move the log start or end"
        assert segment_bytes_on_disk(broker, topic) < bytes_before, "the segments on disk did not shrink"

        # Once delete.retention.ms has passed since that cleaning (Kafka counts it from the cleaning
        # that first kept the tombstones), more updates make the log dirty again, and the next cleaning
        # drops the tombstones too.
        time.sleep(DELETE_RETENTION_MS / 1000 + 0.5)
        log.produce((key, f"{key}=v5") for key in UPDATED_LATER)
        log.produce((f"filler-b{i:02d}", f"b{i}" + "." * 40) for i in range(30))
        produced = log.snapshot()
        end = wait_for_log(
            broker.bootstrap,
            topic,
            [compacted_view(produced, keep_tombstones=False)],
            60,
            "the tombstones and superseded values to go",
        )
        assert end == 168
    finally:
        reader.stop()

    # Every read made while the cleaner worked was consistent.
    assert reader.passes, "the reader finished no pass"
    for finished, end, records in reader.passes:
        check_consistent(end, records, produced)
        # Tombstones stay readable for delete.retention.ms after they were written.
        if finished < tombstones_written_at + DELETE_RETENTION_MS / 1000 and end >= 105:
            for key in TOMBSTONED:
                assert (latest_by_key(produced)[key], key, None) in records, f"tombstone of {key} gone too early"
    # From one pass to the next, a key's latest record never goes back to an older one, and a key
    # disappears only after a tombstone.
    previous: dict[str, tuple[int, bool]] = {}
    for _, _, records in reader.passes:
        latest = {key: (off, value is None) for off, key, value in records}
        for key, (off, tombstone) in previous.items():
            if key in latest:
                assert latest[key][0] >= off, f"{key}: latest went back from offset {off} to {latest[key][0]}"
            else:
                assert tombstone, f"{key} vanished although its latest record was a value"
        previous = latest

    # The cleaned log is what survives a restart, byte for byte the same records.
    final = compacted_view(produced, keep_tombstones=False)
    broker.restart()
    end, records = read_log(broker.bootstrap, topic)
    assert (end, records) == (168, final)
    assert watermarks(broker.bootstrap, topic, 0) == (0, 168)
    # And it takes new records right after its end.
    log = Log(broker.bootstrap, topic)
    log.produce([("key-00", "back")])
    assert log.snapshot() == {168: ("key-00", "back")}


@pytest.mark.timeout(120)
def test_compaction_respects_min_compaction_lag(cleaner_broker):
    broker = cleaner_broker
    lagged = unique_topic("compact-lag")
    eager = unique_topic("compact-eager")
    # Records younger than an hour are not compacted on the lagged topic.
    create_topic(broker.bootstrap, lagged, partitions=1, config={**COMPACTED, "min.compaction.lag.ms": "3600000"})
    create_topic(broker.bootstrap, eager, partitions=1, config=COMPACTED)

    # Both topics get the same history: half of their records are superseded.
    logs = {}
    for topic in (lagged, eager):
        log = Log(broker.bootstrap, topic)
        for rnd in range(2):
            log.produce((key, f"{key}=v{rnd}") for key in KEYS)
        log.produce((f"filler-{i:02d}", "f" * 40) for i in range(30))
        logs[topic] = log.snapshot()

    want = [compacted_view(logs[eager], keep_tombstones=True)]
    wait_for_log(broker.bootstrap, eager, want, 60, "the eager topic to be cleaned")
    # The cleaner is at work: give it a few more of its intervals to (wrongly) clean the lagged topic.
    time.sleep(1.5)
    end, records = read_log(broker.bootstrap, lagged)
    assert end == 70
    assert records == [(off, k, v) for off, (k, v) in sorted(logs[lagged].items())], "the lagged topic was cleaned"

"""kcat (Debian's kcat 1.7.1 on librdkafka 2.0) against a spate broker: metadata listing, keyed
produce with headers in every codec, and consume back byte for byte."""

from __future__ import annotations

import json

import pytest

from spatetest import consume_assigned, create_topic, kcat, unique_topic

pytestmark = pytest.mark.timeout(90)

# Lines for `kcat -P -K:`: the key is everything before the first ':'; the value may hold more colons,
# spaces and non-ASCII text.
KEYED_LINES = [
    ("alpha", "first value"),
    ("beta", "second: with a colon"),
    ("gamma", "ünïcødé ✓ text"),
    ("delta", "x" * 3000),
    ("epsilon", "last"),
]
HEADERS = [("trace", "abc123"), ("origin", "kcat")]


def kcat_produce(bootstrap: str, topic: str, lines, headers, extra=()) -> None:
    payload = "".join(f"{k}:{v}\n" for k, v in lines).encode()
    args = ["-P", "-b", bootstrap, "-t", topic, "-p", "0", "-K:"]
    for hk, hv in headers:
        args += ["-H", f"{hk}={hv}"]
    kcat([*args, *extra], input_bytes=payload)


def test_metadata_lists_broker_and_topics(broker):
    topic = unique_topic("kcat-meta")
    create_topic(broker.bootstrap, topic, partitions=3)

    meta = json.loads(kcat(["-L", "-J", "-b", broker.bootstrap]).stdout)

    brokers = meta["brokers"]
    assert len(brokers) == 1, meta
    assert brokers[0]["name"] == broker.bootstrap, meta
    topics = {t["topic"]: t for t in meta["topics"]}
    assert topic in topics, f"{topic} missing from {sorted(topics)}"
    partitions = topics[topic]["partitions"]
    assert sorted(p["partition"] for p in partitions) == [0, 1, 2]
    for p in partitions:
        assert p["leader"] == brokers[0]["id"], p
        assert [r["id"] for r in p["replicas"]] == [brokers[0]["id"]], p
        assert [r["id"] for r in p["isrs"]] == [brokers[0]["id"]], p


def test_produce_auto_creates_topic(broker):
    topic = unique_topic("kcat-auto")
    kcat(["-P", "-b", broker.bootstrap, "-t", topic], input_bytes=b"one\ntwo\n")

    meta = json.loads(kcat(["-L", "-J", "-b", broker.bootstrap, "-t", topic]).stdout)
    [entry] = [t for t in meta["topics"] if t["topic"] == topic]
    assert entry.get("error") in (None, ""), entry
    assert len(entry["partitions"]) >= 1

    out = kcat(["-C", "-b", broker.bootstrap, "-t", topic, "-o", "beginning", "-e", "-f", "%s\n"]).stdout
    assert sorted(out.decode().splitlines()) == ["one", "two"]


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_keyed_produce_with_headers_roundtrip(broker, codec):
    topic = unique_topic(f"kcat-{codec}")
    create_topic(broker.bootstrap, topic, partitions=1)
    kcat_produce(broker.bootstrap, topic, KEYED_LINES, HEADERS, extra=["-X", f"compression.codec={codec}"])

    # Format string: key, value, headers, offset; kcat prints headers as k=v joined by ','.
    out = kcat(
        ["-C", "-b", broker.bootstrap, "-t", topic, "-p", "0", "-o", "beginning", "-e", "-f", "%k:%s:%h:%o\n"]
    ).stdout
    expected_headers = ",".join(f"{k}={v}" for k, v in HEADERS)
    expected = "".join(f"{k}:{v}:{expected_headers}:{i}\n" for i, (k, v) in enumerate(KEYED_LINES))
    assert out.decode() == expected

    # The JSON envelope carries the same bytes, and the headers as a flat [k, v, k, v] list.
    out = kcat(["-C", "-b", broker.bootstrap, "-t", topic, "-p", "0", "-o", "beginning", "-e", "-J"]).stdout
    records = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert [(r["key"], r["payload"]) for r in records] == KEYED_LINES
    assert [r["offset"] for r in records] == list(range(len(KEYED_LINES)))
    for r in records:
        assert r["partition"] == 0
        assert r["headers"] == [x for kv in HEADERS for x in kv]
        assert r["ts"] > 0

    # And a different client sees exactly the bytes kcat wrote.
    msgs = consume_assigned(broker.bootstrap, topic, [0], expected=len(KEYED_LINES))
    assert [(m.key(), m.value()) for m in msgs] == [(k.encode(), v.encode()) for k, v in KEYED_LINES]
    for m in msgs:
        assert m.headers() == [(k, v.encode()) for k, v in HEADERS]


def test_consume_from_offset_and_end(broker):
    topic = unique_topic("kcat-offsets")
    create_topic(broker.bootstrap, topic, partitions=1)
    lines = [(f"k{i}", f"v{i}") for i in range(50)]
    kcat_produce(broker.bootstrap, topic, lines, [])

    out = kcat(["-C", "-b", broker.bootstrap, "-t", topic, "-p", "0", "-o", "42", "-e", "-f", "%o %k %s\n"]).stdout
    assert out.decode().splitlines() == [f"{i} k{i} v{i}" for i in range(42, 50)]

    # A negative offset counts back from the end.
    out = kcat(["-C", "-b", broker.bootstrap, "-t", topic, "-p", "0", "-o", "-3", "-e", "-f", "%o\n"]).stdout
    assert out.decode().splitlines() == ["47", "48", "49"]

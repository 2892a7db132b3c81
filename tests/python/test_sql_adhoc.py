"""Ad-hoc SQL over topics (issue 13) checked against DuckDB over the same records.

Records are produced with confluent-kafka (a client we did not write), including malformed values
and tombstones; a Parquet directory in the connect sink's hive layout (`topic=…/partition=…/`) is
written with pyarrow. `spate sql -c … --format json` runs the queries; DuckDB computes the same
over the records as delivered (partition, offset, timestamp from the delivery reports) and over
the same Parquet files: aggregates, filters on the metadata columns, a topic joined with the
Parquet directory, and a join of two topics."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import spate_binary

pytestmark = pytest.mark.timeout(90)

BASE_TS_MS = 1_700_000_000_000
REGIONS = ("eu", "us", "apac")


def spate_sql(bootstrap: str, *statements: str) -> list:
    """Runs statements with `spate sql -c … --format json`; returns the last statement's rows."""
    cmd = [spate_binary(), "sql", "--bootstrap-server", bootstrap, "--format", "json"]
    for s in statements:
        cmd += ["-c", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{cmd}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    # Each statement that returns rows prints one JSON array; the last one is the query's.
    decoder = json.JSONDecoder()
    text, pos, docs = proc.stdout, 0, []
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        doc, pos = decoder.raw_decode(text, pos)
        docs.append(doc)
    assert docs, proc.stdout
    return docs[-1]


def produce(bootstrap: str, topic: str, partitions: int, values: list[tuple[int, bytes | None, int]], **config):
    """Produces (partition, value, timestamp_ms), or (partition, value, timestamp_ms, headers), with
    extra producer `config`; returns [(partition, offset, timestamp_ms, value)]."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "broker.address.family": "v4"})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
    p = Producer({"bootstrap.servers": bootstrap, "broker.address.family": "v4", "linger.ms": 5, **config})
    delivered = []

    def on_delivery(err, msg):
        assert err is None, err
        delivered.append((msg.partition(), msg.offset(), msg.timestamp()[1], msg.value()))

    for partition, value, ts, *headers in values:
        p.produce(topic, value, partition=partition, timestamp=ts, headers=headers[0] if headers else None,
                  on_delivery=on_delivery)
    assert p.flush(30) == 0
    assert len(delivered) == len(values)
    return delivered


def rows_equal(ours: list[dict], theirs: list[tuple], columns: list[str]):
    assert len(ours) == len(theirs), (ours, theirs)
    for a, b in zip(ours, theirs):
        for c, expected in zip(columns, b):
            got = a[c]
            if isinstance(expected, float):
                assert math.isclose(got, expected, rel_tol=1e-9), (c, a, b)
            else:
                assert got == expected, (c, a, b)


def test_adhoc_queries_equal_duckdb(broker, tmp_path: Path):
    bootstrap = broker.bootstrap
    # orders: 3 partitions, every 40th value malformed, every 55th a tombstone.
    values = []
    for i in range(450):
        if i % 40 == 3:
            value = b'{"user": "u1", "amount": '
        elif i % 55 == 4:
            value = None
        else:
            value = json.dumps({"id": i, "user": f"u{i % 12}", "amount": round(i * 1.25, 2)}).encode()
        values.append((i % 3, value, BASE_TS_MS + i * 10))
    delivered = produce(bootstrap, "orders", 3, values)
    users = [(0, json.dumps({"user": f"u{u}", "tier": u % 3}).encode(), BASE_TS_MS) for u in range(12)]
    produce(bootstrap, "profiles", 1, users)

    # The records as DuckDB sees them: the good JSON decoded, the rest NULL.
    rows = []
    for partition, offset, ts, value in delivered:
        try:
            obj = json.loads(value) if value is not None else None
        except ValueError:
            obj = None
        rows.append({
            "_partition": partition, "_offset": offset, "_timestamp_ms": ts,
            "id": obj and obj["id"], "user": obj and obj["user"], "amount": obj and obj["amount"],
        })
    orders = pa.Table.from_pylist(rows, schema=pa.schema([
        ("_partition", pa.int32()), ("_offset", pa.int64()), ("_timestamp_ms", pa.int64()),
        ("id", pa.int64()), ("user", pa.string()), ("amount", pa.float64()),
    ]))
    profiles = pa.Table.from_pylist([{"user": f"u{u}", "tier": u % 3} for u in range(12)])
    # The Parquet directory, in the sink's hive layout, two files.
    parquet_dir = tmp_path / "regions"
    for part in range(2):
        d = parquet_dir / "topic=regions" / f"partition={part}"
        d.mkdir(parents=True)
        chunk = [{"user": f"u{u}", "region": REGIONS[u % 3]} for u in range(12) if u % 2 == part]
        pq.write_table(pa.Table.from_pylist(chunk), d / f"regions+{part}+0.parquet")
    db = duckdb.connect()
    db.register("orders", orders)
    db.register("profiles", profiles)
    db.execute(
        f"CREATE VIEW regions AS SELECT * FROM read_parquet('{parquet_dir}/**/*.parquet', hive_partitioning = true)"
    )

    # Aggregates.
    ours = spate_sql(
        bootstrap,
        "SELECT \"user\", count(*) AS n, sum(amount) AS total, min(id) AS first FROM orders "
        "WHERE \"user\" IS NOT NULL GROUP BY \"user\" ORDER BY \"user\"",
    )
    theirs = db.execute(
        "SELECT \"user\", count(*), sum(amount), min(id) FROM orders WHERE \"user\" IS NOT NULL "
        "GROUP BY \"user\" ORDER BY \"user\""
    ).fetchall()
    rows_equal(ours, theirs, ["user", "n", "total", "first"])
    ours = spate_sql(bootstrap, "SELECT count(*) AS n, count(id) AS ids FROM orders")
    assert [ours[0]["n"], ours[0]["ids"]] == list(db.execute("SELECT count(*), count(id) FROM orders").fetchone())

    # Filters on the metadata columns.
    ours = spate_sql(
        bootstrap,
        "SELECT _partition AS p, count(*) AS n, max(_offset) AS last FROM orders "
        "WHERE _offset >= 20 AND _offset < 90 AND _partition IN (0, 2) GROUP BY _partition ORDER BY p",
    )
    theirs = db.execute(
        "SELECT _partition, count(*), max(_offset) FROM orders WHERE _offset >= 20 AND _offset < 90 "
        "AND _partition IN (0, 2) GROUP BY _partition ORDER BY 1"
    ).fetchall()
    rows_equal(ours, theirs, ["p", "n", "last"])
    since = BASE_TS_MS + 2_005
    ours = spate_sql(
        bootstrap,
        f"SELECT count(*) AS n, sum(amount) AS total FROM orders WHERE _timestamp >= to_timestamp_millis({since})",
    )
    theirs = db.execute(f"SELECT count(*), sum(amount) FROM orders WHERE _timestamp_ms >= {since}").fetchall()
    rows_equal(ours, theirs, ["n", "total"])

    # A topic joined with the Parquet directory (hive columns `topic` and `partition` included).
    ours = spate_sql(
        bootstrap,
        f"CREATE EXTERNAL TABLE regions STORED AS PARQUET LOCATION '{parquet_dir}/'",
        "SELECT r.region, r.topic, count(*) AS n, sum(o.amount) AS total FROM orders o "
        "JOIN regions r ON o.\"user\" = r.\"user\" GROUP BY r.region, r.topic ORDER BY r.region",
    )
    theirs = db.execute(
        "SELECT r.region, r.topic, count(*), sum(o.amount) FROM orders o JOIN regions r ON o.\"user\" = r.\"user\" "
        "GROUP BY r.region, r.topic ORDER BY r.region"
    ).fetchall()
    rows_equal(ours, theirs, ["region", "topic", "n", "total"])

    # A join of two topics.
    ours = spate_sql(
        bootstrap,
        "SELECT p.tier, count(*) AS n FROM orders o JOIN profiles p ON o.\"user\" = p.\"user\" "
        "GROUP BY p.tier ORDER BY p.tier",
    )
    theirs = db.execute(
        "SELECT p.tier, count(*) FROM orders o JOIN profiles p ON o.\"user\" = p.\"user\" GROUP BY p.tier ORDER BY 1"
    ).fetchall()
    rows_equal(ours, theirs, ["tier", "n"])


@pytest.mark.parametrize("codec", ["lz4", "zstd", "gzip", "snappy"])
def test_compressed_batches_with_headers(broker, codec: str):
    """The scan reads fetched batches in place: compressed ones (inflated once per batch), keys,
    headers (duplicates and null values kept) and records compaction never touched, all as
    librdkafka wrote them; a scan starting inside a batch (`_offset >=`) skips the batch's earlier
    records."""
    bootstrap = broker.bootstrap
    topic = f"compressed-{codec}"
    values = []
    for i in range(3000):
        headers = [("src", f"s{i % 4}".encode()), ("src", None)] if i % 3 == 0 else None
        # Raw UTF-8 (no \u escapes): the flat JSON scan decides these values.
        value = json.dumps({"id": i, "amount": i % 100, "name": f"n\u00e9{i % 7}"}, ensure_ascii=False).encode()
        values.append((i % 2, value, BASE_TS_MS + i, headers))
    delivered = produce(bootstrap, topic, 2, values, **{"compression.type": codec, "batch.num.messages": 500})
    by_value = {v: (p, o) for p, o, _, v in delivered}
    expected_amount = sum(i % 100 for i in range(3000))
    [row] = spate_sql(bootstrap, f'SELECT count(*) AS n, sum(amount) AS total, count(DISTINCT name) AS names FROM "{topic}"')
    assert (row["n"], row["total"], row["names"]) == (3000, expected_amount, 7)
    # Headers: the first `src` of every third record; a null-valued duplicate is kept.
    rows = spate_sql(
        bootstrap,
        f"SELECT _headers['src'] AS src, count(*) AS n, sum(cardinality(_headers)) AS entries FROM \"{topic}\" "
        "GROUP BY _headers['src'] ORDER BY src NULLS LAST",
    )
    assert rows == [
        {"src": f"s{k}", "n": 250, "entries": 500} for k in range(4)
    ] + [{"src": None, "n": 2000, "entries": 0}], rows
    # From the middle of partition 0 (a batch holds 500 records, so this starts inside one).
    start = 777
    [row] = spate_sql(bootstrap, f'SELECT count(*) AS n, min(id) AS first FROM "{topic}" WHERE _partition = 0 AND _offset >= {start}')
    expected = sorted(json.loads(v)["id"] for v, (p, o) in by_value.items() if p == 0 and o >= start)
    assert (row["n"], row["first"]) == (len(expected), expected[0])

"""End to end: the JDBC source in a `spate connect` worker reads an SQLite file and a PostgreSQL
table (timestamp+incrementing, equal timestamps across batches) into a topic; confluent-kafka
reads the JsonConverter envelopes (schema + payload) of keys and values, in (ts, id) order,
each row once, then rows inserted later."""

from __future__ import annotations

import json
import sqlite3

import pytest

from spatetest import create_topic, unique_topic
from test_connect import (  # noqa: F401 (fixtures)
    connect_broker,
    connect_worker,
    create_connector,
    topic_reader,
    wait_for_state,
)

BASE_MS = 1_700_000_000_000


def rows(first: int, n: int) -> list[tuple[int, int, str]]:
    """(id, ts ms, note): runs of 9 rows share a timestamp; ids are not in timestamp order."""
    return [((i * 7) % 1000 + 1, BASE_MS + (i // 9) * 1000, f"note {i}") for i in range(first, first + n)]


def fill_sqlite(path, data) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, note TEXT, amount NUMERIC)")
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, 12.5)", data)


def fill_postgres(pg, db: str, data, create: bool) -> None:
    sql = ""
    if create:
        sql += "CREATE TABLE orders (id bigint PRIMARY KEY, ts timestamptz NOT NULL, note text, amount numeric(10,2));"
    values = ", ".join(f"({i}, to_timestamp({ts} / 1000.0), '{note}', 12.5)" for i, ts, note in data)
    pg.psql(db, sql + f"INSERT INTO orders VALUES {values}")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_jdbc_source_rows_reach_the_topic_once_in_order(
    backend, connect_broker, connect_worker, topic_reader, tmp_path, request
):
    bootstrap = connect_broker.bootstrap
    prefix = unique_topic(f"jdbc-{backend}") + "-"
    topic = prefix + "orders"
    create_topic(bootstrap, topic)
    first = rows(0, 60)
    if backend == "sqlite":
        path = tmp_path / "shop.db"
        fill_sqlite(path, first)
        url = f"sqlite:{path}"
    else:
        pg = request.getfixturevalue("postgres")
        dbname = prefix.replace("-", "_").rstrip("_").lower()
        url = pg.create_database(dbname)
        fill_postgres(pg, dbname, first, create=True)
    worker = connect_worker(bootstrap)
    create_connector(worker.url, "jdbc-src", {
        "connector.class": "io.confluent.connect.jdbc.JdbcSourceConnector",
        "tasks.max": "2",
        "connection.url": url,
        "connection.user": "spate",
        "mode": "timestamp+incrementing",
        "timestamp.column.name": "ts",
        "incrementing.column.name": "id",
        "table.whitelist": "orders",
        "topic.prefix": prefix,
        "poll.interval.ms": "100",
        "batch.max.rows": "7",
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "true",
    })
    wait_for_state(worker.url, "jdbc-src", "RUNNING")
    reader = topic_reader(bootstrap, topic)
    msgs = reader.wait_for_count(60)
    want = [r[0] for r in sorted(first, key=lambda r: (r[1], r[0]))]
    values = [json.loads(m.value()) for m in msgs]
    assert [v["payload"]["id"] for v in values] == want
    v = values[0]
    fields = {f["field"]: f for f in v["schema"]["fields"]}
    assert v["schema"]["type"] == "struct" and v["schema"]["name"] == "orders"
    assert fields["id"]["type"] == "int64" and fields["id"]["optional"] is False
    assert fields["amount"]["type"] == "string"
    assert v["payload"]["note"] == "note 0" and v["payload"]["ts"] == BASE_MS
    assert float(v["payload"]["amount"]) == 12.5
    if backend == "postgresql":
        assert fields["ts"]["name"] == "org.apache.kafka.connect.data.Timestamp"
    key = json.loads(msgs[0].key())
    assert key["payload"] == {"id": want[0]}
    assert key["schema"]["type"] == "struct"

    # Rows inserted later (sharing the last timestamp run) arrive once, after the others.
    later = rows(60, 20)
    if backend == "sqlite":
        fill_sqlite(path, later)
    else:
        fill_postgres(pg, dbname, later, create=False)
    msgs = reader.wait_for_count(80)
    ids = [json.loads(m.value())["payload"]["id"] for m in msgs]
    assert sorted(ids) == sorted(r[0] for r in first + later), "every row exactly once"
    assert ids[60:] == [r[0] for r in sorted(later, key=lambda r: (r[1], r[0]))]

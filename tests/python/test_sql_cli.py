"""`spate sql` (issue 13) as a user runs it: -c and -f, every --format parsed back and compared with
DuckDB computing the same query over the same data, the shell fed through a pipe surviving bad
statements, EXPLAIN and SHOW TABLES, and unknown tables.

Piped stdin runs every statement and exits 1 when any failed; -c/-f stop at the first failure and
exit 1."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import spate_binary
from spatetest import consume_assigned, create_topic, produce, unique_topic

pytestmark = pytest.mark.timeout(60)

SQL_TIMEOUT_S = 30


def spate_sql(bootstrap: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    cmd = [spate_binary(), "sql", "--bootstrap-server", bootstrap, *args]
    return subprocess.run(
        cmd,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=SQL_TIMEOUT_S,
    )


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"spate sql exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def parse(fmt: str, text: str) -> list[dict]:
    """Rows as dicts of strings/numbers, whatever the format."""
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    if fmt == "tsv":
        return list(csv.DictReader(io.StringIO(text), delimiter="\t"))
    if fmt == "json":
        return json.loads(text)
    if fmt == "ndjson":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    raise ValueError(fmt)


def same(got, want) -> bool:
    """A value printed by spate (maybe as CSV text) equals DuckDB's."""
    if want is None:
        return got in (None, "")
    if isinstance(want, float):
        return math.isclose(float(got), want, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(want, int) and not isinstance(want, bool):
        return int(got) == want
    return str(got) == str(want)


def assert_rows_equal(got: list[dict], want: list[tuple], columns: list[str], fmt: str) -> None:
    assert len(got) == len(want), f"{fmt}: {len(got)} rows, DuckDB has {len(want)}\n{got[:5]}\n{want[:5]}"
    for g, w in zip(got, want):
        assert list(g.keys()) == columns, f"{fmt}: columns {list(g.keys())}, want {columns}"
        for c, wv in zip(columns, w):
            assert same(g[c], wv), f"{fmt}: column {c}: spate {g[c]!r}, DuckDB {wv!r} (row {g} vs {w})"


@pytest.fixture
def parquet_dir(tmp_path) -> Path:
    """A hive-partitioned Parquet directory (region=…/part-*.parquet), as the connect sink writes."""
    n = 3000
    regions = ["eu", "us", "apac"]
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "region": [regions[i % 3] for i in range(n)],
            "amount": [round((i * 37 % 1000) / 7.0, 3) for i in range(n)],
            "name": [None if i % 11 == 0 else f"n{i % 97:03d}" for i in range(n)],
        }
    )
    root = tmp_path / "sales"
    pq.write_to_dataset(table, root, partition_cols=["region"])
    return root


PARQUET_QUERY = (
    "SELECT region, count(*) AS n, sum(amount) AS total, min(name) AS first_name, "
    "count(name) AS named FROM sales WHERE id % 5 <> 0 GROUP BY region ORDER BY region"
)
PARQUET_COLUMNS = ["region", "n", "total", "first_name", "named"]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "ndjson"])
def test_parquet_directory_query_equals_duckdb_in_every_format(broker, parquet_dir, fmt):
    create = f"CREATE EXTERNAL TABLE sales STORED AS PARQUET LOCATION '{parquet_dir}/'"
    out = ok(spate_sql(broker.bootstrap, "--format", fmt, "-c", create, "-c", PARQUET_QUERY))
    duck = duckdb.sql(
        PARQUET_QUERY.replace("FROM sales", f"FROM read_parquet('{parquet_dir}/**/*.parquet', hive_partitioning=true)")
    ).fetchall()
    assert_rows_equal(parse(fmt, out), duck, PARQUET_COLUMNS, fmt)


def test_table_format_prints_a_table_and_the_row_count(broker, parquet_dir):
    proc = spate_sql(
        broker.bootstrap,
        "-c",
        f"CREATE EXTERNAL TABLE sales STORED AS PARQUET LOCATION '{parquet_dir}/'",
        "-c",
        "SELECT id, region FROM sales ORDER BY id",
        "--maxrows",
        "5",
    )
    out = ok(proc)
    assert "| id | region |" in out, out
    assert "| 4  |" in out and "| 5  |" not in out, out
    assert "2995 more rows not shown (--maxrows 5)" in out, out
    # One line per statement on stderr: the DDL's and the SELECT's.
    assert "0 rows in " in proc.stderr and "3000 rows in " in proc.stderr, proc.stderr
    quiet = spate_sql(broker.bootstrap, "--quiet", "-c", "SELECT 1 AS one", "--format", "csv")
    assert ok(quiet) == "one\n1\n" and quiet.stderr == "", quiet.stderr


def test_piped_shell_survives_bad_statements(broker):
    script = "\n".join(
        [
            "SELEC 1;",  # a syntax error
            "SELECT * FROM no_such_table;",  # an unknown table
            "SELECT nope FROM (VALUES (1)) AS t(a);",  # an unknown column
            "SELECT 'still; alive' AS s,",
            "       41 + 1 AS answer;",
            "SELECT 'last without a semicolon' AS s",
        ]
    )
    proc = spate_sql(broker.bootstrap, "--format", "ndjson", stdin=script)
    assert proc.returncode == 1, proc
    rows = parse("ndjson", proc.stdout)
    assert rows == [{"s": "still; alive", "answer": 42}, {"s": "last without a semicolon"}], proc.stdout
    err = proc.stderr
    assert "SELEC" in err, err
    assert "no_such_table" in err and "not found" in err, err
    assert "nope" in err, err
    # Plan errors blame the query; the last line sums up.
    assert err.count("(fix the query)") >= 3, err
    assert err.rstrip().endswith("error: 3 of 5 statements failed"), err


def test_piped_shell_exits_zero_when_every_statement_succeeds_and_stops_at_quit(broker):
    proc = spate_sql(broker.bootstrap, "--format", "csv", "-q", stdin="SELECT 1 AS a;\n\\q\nSELECT 2 AS a;\n")
    assert ok(proc) == "a\n1\n"


def test_file_with_several_statements_and_a_semicolon_in_a_string(broker, tmp_path):
    script = tmp_path / "q.sql"
    script.write_text(
        "-- a comment; with a semicolon\n"
        "CREATE VIEW v AS SELECT * FROM (VALUES (1, 'a;b'), (2, 'c')) AS t(id, s);\n"
        "SELECT id, s FROM v ORDER BY id;\n"
        "/* ; */ SELECT count(*) AS n FROM v WHERE s LIKE '%;%'\n"
    )
    out = ok(spate_sql(broker.bootstrap, "--format", "ndjson", "-f", str(script)))
    assert parse("ndjson", out) == [{"id": 1, "s": "a;b"}, {"id": 2, "s": "c"}, {"n": 1}]


def test_file_stops_at_the_first_failing_statement_and_names_it(broker, tmp_path):
    script = tmp_path / "bad.sql"
    script.write_text("SELECT 1 AS a;\n\nSELECT x\n  FROM missing_topic;\nSELECT 3 AS a;\n")
    proc = spate_sql(broker.bootstrap, "--format", "csv", "-f", str(script))
    assert proc.returncode == 1
    assert proc.stdout == "a\n1\n", proc.stdout
    assert f"{script}, statement 2 (line 3)" in proc.stderr, proc.stderr
    assert "missing_topic" in proc.stderr, proc.stderr


def test_commands_and_files_run_in_command_line_order(broker, tmp_path):
    setup = tmp_path / "setup.sql"
    setup.write_text("CREATE VIEW w AS SELECT 7 AS seven;")
    out = ok(spate_sql(broker.bootstrap, "--format", "csv", "-f", str(setup), "-c", "SELECT seven FROM w"))
    assert out == "seven\n7\n"


def test_explain_and_show_tables(broker):
    plan = ok(spate_sql(broker.bootstrap, "-c", "EXPLAIN SELECT a + 1 FROM (VALUES (1), (2)) AS t(a) WHERE a > 1"))
    assert "logical_plan" in plan and "physical_plan" in plan, plan
    assert "Filter" in plan, plan
    tables = parse("csv", ok(spate_sql(broker.bootstrap, "--format", "csv", "-c", "SHOW TABLES")))
    assert {"table_catalog", "table_schema", "table_name", "table_type"} <= set(tables[0].keys())
    assert any(t["table_name"] == "tables" and t["table_schema"] == "information_schema" for t in tables)


def test_unterminated_string_in_a_command_is_a_clear_error(broker):
    proc = spate_sql(broker.bootstrap, "-c", "SELECT 'open")
    assert proc.returncode == 1
    assert "Unterminated string literal" in proc.stderr and "-c #1" in proc.stderr, proc.stderr


class Pty:
    """`spate sql` on a pseudo-terminal, as a person at a shell runs it."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become spate
            os.execve(argv[0], argv, env)
        self.out = b""

    def expect(self, marker: bytes, timeout_s: float = 10.0) -> bytes:
        """Reads until `marker` shows up after what earlier expects consumed; returns what came."""
        deadline = time.monotonic() + timeout_s
        while marker not in self.out:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {marker!r} on the terminal; it shows:\n{self.out.decode(errors='replace')}")
            ready, _, _ = select.select([self.fd], [], [], min(remaining, 0.2))
            if ready:
                try:
                    self.out += os.read(self.fd, 65536)
                except OSError:  # the child closed the terminal
                    break
        seen, _, self.out = self.out.partition(marker)
        return seen + marker

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout_s: float = 10.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            try:
                os.read(self.fd, 65536)
            except OSError:
                pass
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError("spate sql did not leave the shell")


def test_interactive_shell_multiline_ctrl_c_and_history(broker, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "NO_COLOR": "1"}
    shell = Pty([spate_binary(), "sql", "--bootstrap-server", broker.bootstrap], env)
    shell.expect(b"spate> ")
    # A statement over three lines, a `;` inside its string.
    shell.send(b"SELECT 'x;\r")
    shell.expect(b"    -> ")
    shell.send(b"y' AS s,\r")
    shell.expect(b"    -> ")
    shell.send(b"  6 * 7 AS answer;\r")
    shown = shell.expect(b"1 row in ")
    assert b"| 42     |" in shown, shown
    # Ctrl-C drops a half-typed statement...
    shell.expect(b"spate> ")
    shell.send(b"SELECT nothing\r")
    shell.expect(b"    -> ")
    shell.send(b"\x03")
    shell.expect(b"spate> ")
    # ...and cancels a running query; the shell goes on.
    shell.send(b"SELECT count(*) FROM generate_series(1, 100000000000);\r")
    time.sleep(0.5)
    shell.send(b"\x03")
    shell.expect(b"query cancelled")
    shell.send(b"SELECT * FROM no_such_table;\r")
    shell.expect(b"not found")
    shell.send(b"SELECT 'after' AS s;\r")
    assert b"after" in shell.expect(b"1 row in ")
    shell.expect(b"spate> ")
    shell.send(b"\\q\r")
    assert shell.wait() == 0
    history = (tmp_path / ".spate_sql_history").read_text()
    assert "SELECT 'x;\\ny' AS s,\\n  6 * 7 AS answer;" in history, history
    assert "SELECT nothing" not in history, history


@pytest.fixture
def clicks_topic(broker, tmp_path):
    """A 3-partition topic of JSON clicks produced with confluent-kafka, 3 of them malformed; also
    written to an NDJSON file for DuckDB. Returns (topic, ndjson path, delivered partitions)."""
    topic = unique_topic("clicks")
    create_topic(broker.bootstrap, topic, partitions=3)
    records = []
    for i in range(900):
        click = {"user": f"u{i % 17:02d}", "page": f"/p/{i % 5}", "amount": round((i * 7919 % 1000) / 8.0, 3)}
        if i % 50 == 0:
            click["amount"] = None
        records.append(click)
    values = [(i % 3, None, json.dumps(r).encode(), []) for i, r in enumerate(records)]
    values += [(p, None, b"{not json", []) for p in range(3)]
    delivered = produce(broker.bootstrap, topic, values)
    ndjson = tmp_path / "clicks.ndjson"
    ndjson.write_text("".join(json.dumps(r) + "\n" for r in records))
    return topic, ndjson, [m.partition() for m in delivered]


TOPIC_QUERY = (
    'SELECT "user", count(*) AS n, count(amount) AS priced, sum(amount) AS total, max(page) AS last_page '
    'FROM {table} WHERE "user" IS NOT NULL GROUP BY "user" ORDER BY "user"'
)
TOPIC_COLUMNS = ["user", "n", "priced", "total", "last_page"]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "ndjson"])
def test_topic_query_equals_duckdb_in_every_format(broker, clicks_topic, fmt):
    topic, ndjson, _ = clicks_topic
    proc = spate_sql(broker.bootstrap, "--format", fmt, "-c", TOPIC_QUERY.format(table=f'"{topic}"'))
    got = parse(fmt, ok(proc))
    duck = duckdb.sql(TOPIC_QUERY.format(table=f"read_json_auto('{ndjson}')")).fetchall()
    assert_rows_equal(got, duck, TOPIC_COLUMNS, fmt)
    # The three malformed values read as NULL columns, and the user hears of it.
    assert "warning: 3 records did not decode under their table's format and read as NULL" in proc.stderr, proc.stderr


def test_topic_metadata_columns_and_show_tables(broker, clicks_topic):
    topic, _, partitions = clicks_topic
    per_partition = parse(
        "csv",
        ok(
            spate_sql(
                broker.bootstrap,
                "--format",
                "csv",
                "-c",
                f'SELECT _partition, count(*) AS n, max(_offset) AS last FROM "{topic}" GROUP BY _partition ORDER BY 1',
            )
        ),
    )
    want = [(p, partitions.count(p), partitions.count(p) - 1) for p in sorted(set(partitions))]
    assert_rows_equal(per_partition, want, ["_partition", "n", "last"], "csv")
    tables = parse("csv", ok(spate_sql(broker.bootstrap, "--format", "csv", "-c", "SHOW TABLES")))
    assert any(t["table_name"] == topic for t in tables), tables


def test_unknown_topic_is_a_clear_error(broker):
    proc = spate_sql(broker.bootstrap, "-c", 'SELECT * FROM "no-such-topic"')
    assert proc.returncode == 1
    assert "no-such-topic" in proc.stderr and "(fix the query)" in proc.stderr, proc.stderr


def continuous_cmd(bootstrap: str, tmp_path: Path, *statements: str, commit_ms: int = 200) -> list:
    """A `spate sql --continuous` command line: a fresh query id, short commit and session
    intervals, its state in tmp_path."""
    cmd = [
        spate_binary(), "sql", "--bootstrap-server", bootstrap,
        "--continuous", "--query-id", unique_topic("cq"), "--state-dir", str(tmp_path / "state"),
        "--config", f"commit.interval.ms={commit_ms}", "--config", "session.timeout.ms=6000",
        "--config", "heartbeat.interval.ms=500",
    ]  # fmt: skip
    for statement in statements:
        cmd += ["-c", statement]
    return cmd


@contextlib.contextmanager
def continuous_query(bootstrap: str, tmp_path: Path, *statements: str):
    """Runs `continuous_cmd(…)`; on leaving, sends SIGTERM and checks it stopped cleanly. Yields the
    process and a dict that gets its stderr."""
    with continuous_query_cmd(continuous_cmd(bootstrap, tmp_path, *statements)) as running:
        yield running


@contextlib.contextmanager
def continuous_query_cmd(cmd: list):
    """Runs a `spate sql --continuous` command line; see `continuous_query`."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result: dict = {}
    try:
        yield proc, result
        assert proc.poll() is None, proc.communicate()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"spate sql --continuous ignored SIGTERM for 30 s:\n{err}")
        result["stderr"] = err
    assert proc.returncode == 0, err


def test_continuous_query_runs_until_sigterm(broker_factory, tmp_path):
    broker = broker_factory(["--set", "group.initial.rebalance.delay.ms=0"])
    src, out = unique_topic("cq-in"), unique_topic("cq-out")
    create_topic(broker.bootstrap, src, partitions=2)
    create_topic(broker.bootstrap, out, partitions=2)

    def events(lo: int, hi: int):
        return [(i % 2, None, json.dumps({"k": "ab"[i % 2], "x": i, "ts": i}).encode(), []) for i in range(lo, hi)]

    produce(broker.bootstrap, src, events(0, 500))
    with continuous_query(
        broker.bootstrap,
        tmp_path,
        f"CREATE TABLE cin (k VARCHAR, x BIGINT, ts BIGINT) WITH (topic = '{src}')",
        f'INSERT INTO "{out}" SELECT upper(k) AS big, x * 2 AS doubled FROM cin WHERE x % 10 = 0',
    ) as (_, result):
        # Input that arrives while the query runs is processed too.
        produce(broker.bootstrap, src, events(500, 1000))
        got = consume_assigned(broker.bootstrap, out, [0, 1], expected=100, timeout_s=40)
        doubled = sorted(json.loads(m.value())["doubled"] for m in got)
        assert doubled == [x * 2 for x in range(0, 1000, 10)]
        assert {json.loads(m.value())["big"] for m in got} == {"A"}
    assert "stopped; its progress is committed" in result["stderr"], result["stderr"]


def test_continuous_stream_table_join_with_partition_by(broker_factory, tmp_path):
    """A stream joined with a compacted topic (the latest value per key, followed while running),
    keyed by PARTITION BY; produced and read back with confluent-kafka."""
    broker = broker_factory(["--set", "group.initial.rebalance.delay.ms=0"])
    orders, users, out = unique_topic("orders"), unique_topic("users"), unique_topic("enriched")
    create_topic(broker.bootstrap, orders, partitions=2)
    create_topic(broker.bootstrap, users, partitions=2, config={"cleanup.policy": "compact"})
    create_topic(broker.bootstrap, out, partitions=2)

    def user(uid: int, name: str, p: int = 0):
        return (p, f"u{uid}".encode(), json.dumps({"name": name, "tier": uid % 3}).encode(), [])

    # Keys spread over both partitions; u1 is written twice before the query starts: the latest wins.
    produce(broker.bootstrap, users, [user(1, "first", 0), user(2, "bea", 1), user(1, "ann", 1), user(3, "cy", 0)])

    def order(i: int):
        return (i % 2, f"o{i}".encode(), json.dumps({"id": i, "user_id": i % 4, "amount": i * 10}).encode(), [])

    produce(broker.bootstrap, orders, [order(i) for i in range(0, 40)])
    with continuous_query(
        broker.bootstrap,
        tmp_path,
        f"CREATE TABLE o (id BIGINT, user_id BIGINT, amount BIGINT) WITH (topic = '{orders}')",
        f"CREATE TABLE u (name VARCHAR, tier BIGINT) WITH (topic = '{users}')",
        f'INSERT INTO "{out}" SELECT o.id, o.amount, u.name, u.tier FROM o '
        f"LEFT JOIN u ON 'u' || CAST(o.user_id AS VARCHAR) = u._key PARTITION BY u.name",
    ):
        got = consume_assigned(broker.bootstrap, out, [0, 1], expected=40, timeout_s=40)
        rows = {json.loads(m.value())["id"]: (m.key(), json.loads(m.value())) for m in got}
        assert sorted(rows) == list(range(40)), sorted(rows)
        names = {0: None, 1: "ann", 2: "bea", 3: "cy"}
        for i, (key, value) in rows.items():
            name = names[i % 4]
            assert value == {"id": i, "amount": i * 10, "name": name, "tier": None if name is None else (i % 4) % 3}
            assert key == (None if name is None else name.encode()), (i, key)
        # The table is followed while the query runs: a new user, then orders that meet it.
        produce(broker.bootstrap, users, [user(0, "zed", 0)])
        time.sleep(2)
        produce(broker.bootstrap, orders, [order(i) for i in range(40, 48)])
        got = consume_assigned(broker.bootstrap, out, [0, 1], expected=48, timeout_s=40)
        values = [json.loads(m.value()) for m in got]
        later = {v["id"]: v["name"] for v in values if v["id"] >= 40}
        assert later == {i: names[i % 4] or "zed" for i in range(40, 48)}, later


def test_explain_of_a_continuous_query_shows_its_topology_and_runs_nothing(broker_factory):
    broker = broker_factory()
    src, users = unique_topic("ex-in"), unique_topic("ex-users")
    create_topic(broker.bootstrap, src, partitions=2)
    create_topic(broker.bootstrap, users, partitions=1)
    out = unique_topic("ex-out")
    table = f"CREATE TABLE e (k VARCHAR, x BIGINT, ts BIGINT) WITH (topic = '{src}')"
    windowed = (
        f'EXPLAIN INSERT INTO "{out}" SELECT window_start, k, count(*) AS n '
        "FROM TUMBLE(e, ts, INTERVAL '1' SECOND) GROUP BY window_start, window_end, k"
    )
    text = ok(spate_sql(broker.bootstrap, "--format", "json", "-c", table, "-c", windowed))
    [row] = json.loads(text)
    assert row["plan_type"] == "continuous_plan"
    plan = row["plan"]
    assert f"continuous query reading {src} (windowed" in plan, plan
    assert "Sub-topology: 1" in plan and "sql-window-rows" in plan, plan
    assert "Aggregate" in plan, plan
    # A join, through --continuous: printed, not run, and nothing is created.
    join = f'EXPLAIN INSERT INTO "{out}" SELECT e.x, u.name FROM e LEFT JOIN "{users}" u ON e.k = u._key PARTITION BY e.x'
    proc = spate_sql(
        broker.bootstrap, "--continuous", "--query-id", unique_topic("ex"), "--format", "csv",
        "-c", table, "-c", f"CREATE TABLE \"{users}\" (name VARCHAR) WITH (topic = '{users}')", "-c", join,
    )  # fmt: skip
    plan = ok(proc)
    assert "LEFT join with table" in plan and "PARTITION BY e.x" in plan, plan
    topics = admin_topics(broker.bootstrap)
    assert out not in topics, topics


def admin_topics(bootstrap: str) -> set[str]:
    from spatetest import admin

    return set(admin(bootstrap).list_topics(timeout=10).topics)


def test_continuous_interval_join_of_two_topics(broker_factory, tmp_path):
    """Orders joined with the shipments of the same order id 0..2 s after them, both topics written
    and read back with confluent-kafka; the shipments topic is written first, as a backlog."""
    broker = broker_factory(["--set", "group.initial.rebalance.delay.ms=0"])
    orders, shipments, out = unique_topic("io"), unique_topic("is"), unique_topic("iout")
    create_topic(broker.bootstrap, orders, partitions=2)
    create_topic(broker.bootstrap, shipments, partitions=3)
    base = 1_700_000_000_000
    order_rows = [(i % 2, str(i).encode(), json.dumps({"id": i, "at": base + i * 1000}).encode(), []) for i in range(60)]
    # Shipment i is 1.5 s after order i for even i, 2.5 s after it (outside the interval) for odd i.
    ship_rows = [
        (i % 3, str(i).encode(), json.dumps({"order_id": i, "at": base + i * 1000 + (1500 if i % 2 == 0 else 2500)}).encode(), [])
        for i in range(60)
    ]
    produce(broker.bootstrap, shipments, ship_rows)
    produce(broker.bootstrap, orders, order_rows)
    with continuous_query(
        broker.bootstrap,
        tmp_path,
        f"CREATE TABLE o (id BIGINT, at BIGINT) WITH (topic = '{orders}')",
        f"CREATE TABLE s (order_id BIGINT, at BIGINT) WITH (topic = '{shipments}')",
        f'INSERT INTO "{out}" SELECT o.id, s.at - o.at AS ship_ms FROM o JOIN s ON s.order_id = o.id '
        "AND s.at BETWEEN o.at AND o.at + INTERVAL '2' SECOND",
    ):
        got = consume_assigned(broker.bootstrap, out, [0, 1], expected=30, timeout_s=40)
        rows = sorted((json.loads(m.value())["id"], json.loads(m.value())["ship_ms"]) for m in got)
        assert rows == [(i, 1500) for i in range(0, 60, 2)], rows
        keys = {json.dumps({"k0": i}, separators=(",", ":")).encode() for i in range(0, 60, 2)}
        assert {m.key() for m in got} == keys


@pytest.mark.timeout(120)
def test_continuous_windows_survive_kill_9_and_restart(broker_factory, tmp_path):
    """A tumbling count per key, `spate sql --continuous` killed with SIGKILL mid-stream and started
    again with the same query id: every window's totals equal a model of the input (at-least-once:
    a window may be written twice, with the same totals; none loses input)."""
    broker = broker_factory(["--set", "group.initial.rebalance.delay.ms=0"])
    src, out = unique_topic("kw-in"), unique_topic("kw-out")
    create_topic(broker.bootstrap, src, partitions=2)
    create_topic(broker.bootstrap, out, partitions=2)
    keys = ["a", "b", "c"]

    def events(lo: int, hi: int):
        # In time order; keyed, so each key's records stay in one partition.
        # Key a and c in partition 0, b in 1: both partitions have records (a silent one would hold
        # the windows open, as the README says, without idle_timeout).
        return [((i % 3) % 2, keys[i % 3].encode(), json.dumps({"k": keys[i % 3], "x": i % 5, "ts": i * 100}).encode(), [])
                for i in range(lo, hi)]  # fmt: skip

    statements = [
        f"CREATE TABLE kw (k VARCHAR, x BIGINT, ts BIGINT) WITH (topic = '{src}')",
        f'INSERT INTO "{out}" SELECT k, CAST(window_start AS BIGINT) AS ws, count(*) AS n, sum(x) AS total '
        "FROM TUMBLE(kw, ts, INTERVAL '2' SECOND) GROUP BY window_start, window_end, k",
    ]
    cmd = continuous_cmd(broker.bootstrap, tmp_path, *statements, commit_ms=300)

    def model(n: int) -> dict:
        windows: dict = {}
        for i in range(n):
            w = windows.setdefault((keys[i % 3], i * 100 // 2000 * 2000), [0, 0])
            w[0] += 1
            w[1] += i % 5
        return {w: tuple(v) for w, v in windows.items()}

    produce(broker.bootstrap, src, events(0, 600))
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        consume_assigned(broker.bootstrap, out, [0, 1], expected=30, timeout_s=40)
    finally:
        first.kill()
        first.communicate()
    produce(broker.bootstrap, src, events(600, 1200))
    # A far-future record of every key closes every window of the input above.
    far = [(j % 2, k.encode(), json.dumps({"k": k, "x": 0, "ts": 10_000_000}).encode(), []) for j, k in enumerate(keys)]
    produce(broker.bootstrap, src, far)
    expected = model(1200)
    with continuous_query_cmd(cmd):
        deadline = time.monotonic() + 40
        got: dict = {}
        while time.monotonic() < deadline and len(got) < len(expected):
            for m in consume_assigned(broker.bootstrap, out, [0, 1], expected=len(expected), timeout_s=5):
                v = json.loads(m.value())
                window = (v["k"], v["ws"])
                totals = (v["n"], v["total"])
                assert got.setdefault(window, totals) == totals, f"{window} written with other totals"
        assert got == expected

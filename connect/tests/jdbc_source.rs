//! The JDBC source driven through the connector API (as the runtime drives it) on SQLite and on
//! a throwaway PostgreSQL server: every mode, equal timestamps across batch boundaries (exact
//! sequences asserted), rows committed late with older timestamps inside the delay, restarts
//! from stored offsets, bad rows, query mode and a dropped connection.

#[path = "common/postgres.rs"]
mod postgres;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use spate_connect::config::Props;
use spate_connect::connector::{OffsetReader, SourceTask, SourceTaskContext};
use spate_connect::jdbc::{Database, Dialect, SqlValue};
use spate_connect::record::{ConnectRecord, Value};
use spate_connect::registry::Registry;

struct Offsets(Mutex<Vec<(Json, Json)>>);

impl OffsetReader for Offsets {
    fn offsets(&self) -> Vec<(Json, Json)> {
        self.0.lock().unwrap().clone()
    }
}

/// A database to test against: an SQLite file or a PostgreSQL database.
struct Db {
    url: String,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<Arc<postgres::PgServer>>,
}

impl Db {
    fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("src.db").display());
        Db { url, _dir: Some(dir), _pg: None }
    }

    fn postgres(pg: &Arc<postgres::PgServer>, name: &str) -> Db {
        let url = pg.create_database(name);
        Db { url, _dir: None, _pg: Some(pg.clone()) }
    }

    fn open(&self) -> Database {
        Database::open(&self.url, Some(postgres::PG_USER), None).unwrap()
    }
}

fn dialect_sql(db: &Database, sqlite: &str, pg: &str) -> String {
    if db.dialect() == Dialect::Sqlite {
        sqlite.to_owned()
    } else {
        pg.to_owned()
    }
}

/// Table `events (id pk, ts, v)`.
fn create_events(db: &mut Database, table: &str) {
    let sql = dialect_sql(
        db,
        &format!("CREATE TABLE {table} (id INTEGER PRIMARY KEY, ts TIMESTAMP NOT NULL, v TEXT)"),
        &format!("CREATE TABLE {table} (id bigint PRIMARY KEY, ts timestamptz NOT NULL, v text)"),
    );
    db.execute_batch(&sql).unwrap();
}

fn insert(db: &mut Database, table: &str, rows: &[(i64, i64)]) {
    let p = |n| db.dialect().placeholder(n);
    let sql = format!("INSERT INTO {table} (id, ts, v) VALUES ({}, {}, {})", p(1), p(2), p(3));
    let values: Vec<Vec<SqlValue>> = rows
        .iter()
        .map(|&(id, ts_ms)| {
            vec![SqlValue::Int(id), SqlValue::Timestamp(ts_ms * 1000), SqlValue::Text(format!("v{id}"))]
        })
        .collect();
    db.transaction(|db| db.execute_many(&sql, &values)).unwrap();
}

fn config(db: &Db, mode: &str, extra: &[(&str, &str)]) -> Props {
    let mut p: Props = [
        ("name", "jdbc"),
        ("connector.class", "io.confluent.connect.jdbc.JdbcSourceConnector"),
        ("connection.url", db.url.as_str()),
        ("connection.user", postgres::PG_USER),
        ("mode", mode),
        ("incrementing.column.name", "id"),
        ("timestamp.column.name", "ts"),
        ("topic.prefix", "db-"),
        ("poll.interval.ms", "20"),
        ("batch.max.rows", "10"),
        ("table.whitelist", "events"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for (k, v) in extra {
        p.insert((*k).to_owned(), (*v).to_owned());
    }
    p
}

struct Task {
    task: Box<dyn SourceTask>,
    /// The last offset per partition, as the runtime would store it.
    offsets: Vec<(Json, Json)>,
    failed: Vec<String>,
    batches: usize,
}

fn start(props: &Props, stored: Vec<(Json, Json)>) -> Task {
    let plugin = Registry::builtin().find(&props["connector.class"]).expect("the plugin is registered");
    let tasks = plugin.task_configs(props, 1).unwrap();
    let mut task = plugin.source_task().unwrap();
    let context =
        SourceTaskContext { connector: "jdbc".into(), task_id: 0, offsets: Arc::new(Offsets(Mutex::new(stored))) };
    task.start(&tasks[0], &context).unwrap();
    Task { task, offsets: Vec::new(), failed: Vec::new(), batches: 0 }
}

impl Task {
    /// Polls until `quiet` passes without a record; every record polled.
    fn drain(&mut self, quiet: Duration) -> Vec<ConnectRecord> {
        let mut out = Vec::new();
        let mut last = Instant::now();
        while last.elapsed() < quiet {
            if let Some(batch) = self.task.poll(Duration::from_millis(50)).unwrap() {
                self.batches += 1;
                if !batch.records.is_empty() || !batch.failed.is_empty() {
                    last = Instant::now();
                }
                out.extend(batch.records);
                self.failed.extend(batch.failed.iter().map(|f| f.error.to_string()));
                for (p, o) in batch.offsets {
                    self.offsets.retain(|(q, _)| *q != p);
                    self.offsets.push((p, o));
                }
            }
        }
        out
    }
}

fn ids(records: &[ConnectRecord]) -> Vec<i64> {
    records
        .iter()
        .map(|r| match &r.value {
            Some(Value::Json(v)) => v["id"].as_i64().unwrap(),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// 250 rows in 7 timestamps (runs of 37 sharing one), ids not in timestamp order.
fn tied_rows(base_ms: i64) -> Vec<(i64, i64)> {
    (0..250).map(|i| ((i * 37 + 11) % 1000, base_ms + (i / 37) * 1000)).collect()
}

fn every_mode(db: &Db) {
    let mut conn = db.open();
    create_events(&mut conn, "events");
    let rows = tied_rows(1_700_000_000_000);
    insert(&mut conn, "events", &rows);
    let mut by_ts_id = rows.clone();
    by_ts_id.sort_by_key(|&(id, ts)| (ts, id));
    let mut by_id: Vec<i64> = rows.iter().map(|r| r.0).collect();
    by_id.sort();

    let mut t = start(&config(db, "timestamp+incrementing", &[]), vec![]);
    let got = t.drain(Duration::from_millis(300));
    assert_eq!(ids(&got), by_ts_id.iter().map(|r| r.0).collect::<Vec<_>>(), "timestamp+incrementing: exact sequence");
    assert!(t.batches >= 25, "batch.max.rows bounds batches: {}", t.batches);
    let r = &got[0];
    assert_eq!(&*r.topic, "db-events");
    assert_eq!(r.key, Some(Value::Json(json!({"id": by_ts_id[0].0}))));
    assert_eq!(
        r.value,
        Some(Value::Json(json!({"id": by_ts_id[0].0, "ts": 1_700_000_000_000i64, "v": format!("v{}", by_ts_id[0].0)})))
    );
    let schema = r.value_schema.as_deref().unwrap();
    assert_eq!(schema["type"], "struct");
    assert_eq!(
        schema["fields"][1],
        json!({"type": "int64", "optional": false, "field": "ts", "name": "org.apache.kafka.connect.data.Timestamp", "version": 1})
    );
    assert_eq!(schema["fields"][2]["optional"], true);
    assert_eq!(r.key_schema.as_deref().unwrap()["fields"][0]["field"], "id");
    let last = by_ts_id.last().unwrap();
    assert_eq!(
        t.offsets,
        vec![(json!({"table": "events"}), json!({"timestamp": last.1, "timestamp_nanos": 0, "incrementing": last.0}))]
    );
    t.task.stop();

    let mut t = start(&config(db, "incrementing", &[]), vec![]);
    assert_eq!(ids(&t.drain(Duration::from_millis(300))), by_id, "incrementing");
    assert_eq!(t.offsets[0].1, json!({"incrementing": by_id.last().unwrap()}));
    t.task.stop();

    // timestamp alone: batches of 10 never split a run of 37 equal timestamps.
    let mut t = start(&config(db, "timestamp", &[]), vec![]);
    let got = t.drain(Duration::from_millis(300));
    let got_ts: Vec<i64> = got
        .iter()
        .map(|r| match &r.value {
            Some(Value::Json(v)) => v["ts"].as_i64().unwrap(),
            _ => unreachable!(),
        })
        .collect();
    assert!(got_ts.windows(2).all(|w| w[0] <= w[1]), "timestamp order");
    let mut sorted = ids(&got);
    sorted.sort();
    assert_eq!(sorted, by_id, "timestamp: every row exactly once");
    assert_eq!(t.offsets[0].1, json!({"timestamp": last.1, "timestamp_nanos": 0}));
    t.task.stop();

    let mut t = start(&config(db, "bulk", &[]), vec![]);
    // Bulk reads the whole table again every poll.interval.ms: the first 250 records are one pass.
    let mut got = Vec::new();
    let started = Instant::now();
    while got.len() < 250 && started.elapsed() < Duration::from_secs(30) {
        if let Some(b) = t.task.poll(Duration::from_millis(50)).unwrap() {
            assert!(b.records.len() <= 10);
            got.extend(b.records);
            t.offsets.extend(b.offsets);
        }
    }
    let once: BTreeSet<i64> = ids(&got[..250]).into_iter().collect();
    assert_eq!(once.len(), 250, "bulk reads the whole table");
    assert!(t.offsets.is_empty());
    t.task.stop();
}

fn restart_and_late_rows(db: &Db) {
    let mut conn = db.open();
    create_events(&mut conn, "events");
    let rows = tied_rows(1_600_000_000_000);
    insert(&mut conn, "events", &rows);
    let mut order = rows.clone();
    order.sort_by_key(|&(id, ts)| (ts, id));
    let props = config(db, "timestamp+incrementing", &[("timestamp.delay.interval.ms", "1500")]);
    // Stop after 9 batches (90 rows, mid-way through a run of equal timestamps).
    let mut t = start(&props, vec![]);
    let mut got = Vec::new();
    while t.batches < 9 {
        if let Some(b) = t.task.poll(Duration::from_millis(50)).unwrap() {
            t.batches += 1;
            got.extend(b.records);
            t.offsets = b.offsets;
        }
    }
    t.task.stop();
    assert_eq!(ids(&got), order[..90].iter().map(|r| r.0).collect::<Vec<_>>());
    // Restart from the stored offset, then rows arrive late: A (newer) commits first, B (older
    // timestamp, higher id) after it, both within the delay.
    let mut t = start(&props, t.offsets.clone());
    let rest = t.drain(Duration::from_millis(300));
    assert_eq!(ids(&rest), order[90..].iter().map(|r| r.0).collect::<Vec<_>>(), "resumes exactly after the offset");
    let now = conn.now_ms().unwrap();
    insert(&mut conn, "events", &[(5001, now - 200)]);
    assert!(t.drain(Duration::from_millis(200)).is_empty(), "younger than the delay");
    insert(&mut conn, "events", &[(5002, now - 700)]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ids(&t.drain(Duration::from_millis(300))), vec![5002, 5001], "late rows in timestamp order");
    t.task.stop();
}

#[test]
fn sqlite_every_mode() {
    every_mode(&Db::sqlite());
}

#[test]
fn sqlite_restart_and_late_rows() {
    restart_and_late_rows(&Db::sqlite());
}

#[test]
fn postgres_every_mode_restart_late_rows_and_reconnect() {
    let pg = Arc::new(postgres::PgServer::start());
    every_mode(&Db::postgres(&pg, "modes"));
    restart_and_late_rows(&Db::postgres(&pg, "restart"));

    // A dropped connection: the task reconnects and goes on without loss or repeat.
    let db = Db::postgres(&pg, "reconnect");
    let mut conn = db.open();
    create_events(&mut conn, "events");
    insert(&mut conn, "events", &(1..=30).map(|i| (i, 1_000_000 + i)).collect::<Vec<_>>());
    let props = config(&db, "incrementing", &[("connection.backoff.ms", "50")]);
    let mut t = start(&props, vec![]);
    assert_eq!(ids(&t.drain(Duration::from_millis(200))), (1..=30).collect::<Vec<_>>());
    pg.psql("reconnect", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'reconnect' AND pid <> pg_backend_pid()")
        .unwrap();
    insert(&mut db.open(), "events", &(31..=40).map(|i| (i, 1_000_000 + i)).collect::<Vec<_>>());
    assert_eq!(ids(&t.drain(Duration::from_millis(500))), (31..=40).collect::<Vec<_>>());
    t.task.stop();
}

#[test]
fn sqlite_text_and_integer_timestamps_bad_rows_and_query_mode() {
    let db = Db::sqlite();
    let mut conn = db.open();
    conn.execute_batch(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, ts TIMESTAMP, v INTEGER);
         INSERT INTO events VALUES (1, '2024-01-01 00:00:00', 1), (2, 1704067200500, 2),
           (3, '2024-01-01 00:00:01.250000', 3), (4, '2024-01-01T00:00:02Z', 'not a number'), (5, '2024-01-01 00:00:03', 5);",
    )
    .unwrap();
    let mut t = start(&config(&db, "timestamp+incrementing", &[]), vec![]);
    let got = t.drain(Duration::from_millis(300));
    assert_eq!(ids(&got), vec![1, 2, 3, 5]);
    assert_eq!(t.failed.len(), 1, "{:?}", t.failed);
    assert!(t.failed[0].contains("column v"), "{}", t.failed[0]);
    let ts: Vec<i64> = got
        .iter()
        .map(|r| match &r.value {
            Some(Value::Json(v)) => v["ts"].as_i64().unwrap(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(ts, vec![1_704_067_200_000, 1_704_067_200_500, 1_704_067_201_250, 1_704_067_203_000]);
    assert_eq!(t.offsets[0].1, json!({"timestamp": 1_704_067_203_000i64, "timestamp_nanos": 0, "incrementing": 5}));
    t.task.stop();

    let mut q = config(
        &db,
        "incrementing",
        &[("query", "SELECT id, v * 10 AS v10 FROM events WHERE id <> 3"), ("topic.prefix", "q-topic")],
    );
    q.remove("table.whitelist");
    let mut t = start(&q, vec![]);
    let got = t.drain(Duration::from_millis(300));
    assert_eq!(ids(&got), vec![1, 2, 4, 5]);
    assert_eq!(&*got[0].topic, "q-topic");
    assert_eq!(got[0].key, None);
    assert_eq!(t.offsets[0].0, json!({"query": "query"}));
    assert_eq!(got[1].value, Some(Value::Json(json!({"id": 2, "v10": 20}))));
    // Row 4's v is text: SQLite computes 'not a number' * 10 = 0.
    assert_eq!(got[2].value, Some(Value::Json(json!({"id": 4, "v10": 0}))));
    t.task.stop();
}

/// Bulk mode over two tables in one task: each pass (several chunks) completes, for both.
fn bulk_two_tables(db: &Db) {
    let mut conn = db.open();
    for table in ["a_events", "b_events"] {
        create_events(&mut conn, table);
        insert(&mut conn, table, &(1..=25).map(|i| (i, 1_000_000 + i)).collect::<Vec<_>>());
    }
    // Listed twice: read once.
    let props = config(db, "bulk", &[("table.whitelist", "a_events,b_events,a_events")]);
    let mut t = start(&props, vec![]);
    let mut seen: BTreeSet<(String, i64)> = BTreeSet::new();
    let mut per_topic = std::collections::BTreeMap::<String, usize>::new();
    let started = Instant::now();
    // Two passes of each table (a pass ends when its cursor is closed, the next starts after
    // poll.interval.ms).
    while per_topic.values().filter(|&&n| n >= 50).count() < 2 && started.elapsed() < Duration::from_secs(20) {
        if let Some(b) = t.task.poll(Duration::from_millis(50)).unwrap() {
            for r in &b.records {
                *per_topic.entry(r.topic.to_string()).or_default() += 1;
                seen.insert((r.topic.to_string(), ids(std::slice::from_ref(r))[0]));
            }
        }
    }
    assert_eq!(seen.len(), 50, "both tables read whole: {per_topic:?}");
    assert!(per_topic.values().all(|&n| n >= 50), "two passes each: {per_topic:?}");
    t.task.stop();
}

/// An SQLite bulk pass in progress (rollback journal) holds no lock between polls: another
/// connection writes without waiting, and the pass still reads every row.
#[test]
fn sqlite_bulk_pass_does_not_block_writers() {
    let db = Db::sqlite();
    let mut conn = db.open();
    create_events(&mut conn, "events");
    insert(&mut conn, "events", &(1..=35).map(|i| (i, 1_000_000 + i)).collect::<Vec<_>>());
    drop(conn);
    let mut t = start(&config(&db, "bulk", &[("poll.interval.ms", "60000")]), vec![]);
    let mut got = Vec::new();
    while got.len() < 10 {
        if let Some(b) = t.task.poll(Duration::from_millis(50)).unwrap() {
            got.extend(b.records);
        }
    }
    let writer = rusqlite::Connection::open(db.url.strip_prefix("sqlite:").unwrap()).unwrap();
    assert_eq!(writer.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0)).unwrap(), "delete");
    writer.busy_timeout(Duration::from_millis(200)).unwrap();
    writer.execute("DELETE FROM events WHERE id = 1", []).expect("the writer is not blocked by the bulk pass");
    writer.execute("INSERT INTO events (id, ts, v) VALUES (36, 1000036, 'v36')", []).unwrap();
    got.extend(t.drain(Duration::from_millis(300)));
    let mut seen = ids(&got);
    seen.sort();
    assert_eq!(seen, (1..=36).collect::<Vec<_>>(), "one pass: every row once (the deleted one was read before)");
    t.task.stop();
}

#[test]
fn sqlite_bulk_two_tables_and_schema_change() {
    bulk_two_tables(&Db::sqlite());
    schema_change(&Db::sqlite());
}

#[test]
fn postgres_bulk_two_tables_schema_change_and_time_zone() {
    let pg = Arc::new(postgres::PgServer::start());
    bulk_two_tables(&Db::postgres(&pg, "bulk"));
    schema_change(&Db::postgres(&pg, "alter"));
    for (name, zone) in [("tokyo", "Asia/Tokyo"), ("new_york", "America/New_York")] {
        let db = Db::postgres(&pg, name);
        pg.psql(name, &format!("ALTER DATABASE {name} SET timezone = '{zone}'")).unwrap();
        server_time_zone(&db);
    }
}

/// A server TimeZone other than UTC: `timestamp` (without time zone) columns hold its wall
/// clock, and the delay still holds (neither hours early nor hours late); `timestamptz` too.
fn server_time_zone(db: &Db) {
    let mut conn = db.open();
    conn.execute_batch(
        "CREATE TABLE local_ts (id bigint PRIMARY KEY, ts timestamp NOT NULL DEFAULT now());
         CREATE TABLE zoned_ts (id bigint PRIMARY KEY, ts timestamptz NOT NULL DEFAULT now());",
    )
    .unwrap();
    for table in ["local_ts", "zoned_ts"] {
        let props = config(
            db,
            "timestamp+incrementing",
            &[("table.whitelist", table), ("timestamp.delay.interval.ms", "2000")],
        );
        let mut t = start(&props, vec![]);
        conn.execute_batch(&format!("INSERT INTO {table} (id) VALUES (1), (2)")).unwrap();
        assert!(t.drain(Duration::from_millis(300)).is_empty(), "{table}: younger than the delay");
        std::thread::sleep(Duration::from_millis(2000));
        assert_eq!(ids(&t.drain(Duration::from_millis(300))), vec![1, 2], "{table}: read once the delay passed");
        t.task.stop();
    }
}

/// Columns added and dropped while the task runs: later rows carry the table's new shape.
fn schema_change(db: &Db) {
    let mut conn = db.open();
    create_events(&mut conn, "events");
    insert(&mut conn, "events", &(1..=5).map(|i| (i, 1_000_000 + i)).collect::<Vec<_>>());
    let mut t = start(&config(db, "incrementing", &[]), vec![]);
    assert_eq!(ids(&t.drain(Duration::from_millis(200))), (1..=5).collect::<Vec<_>>());
    conn.execute_batch("ALTER TABLE events ADD COLUMN extra integer NOT NULL DEFAULT 7").unwrap();
    insert(&mut conn, "events", &[(6, 1_000_006)]);
    let got = t.drain(Duration::from_millis(200));
    assert_eq!(ids(&got), vec![6]);
    assert_eq!(got[0].value, Some(Value::Json(json!({"id": 6, "ts": 1_000_006, "v": "v6", "extra": 7}))));
    let schema = got[0].value_schema.as_deref().unwrap();
    assert_eq!((&schema["fields"][3]["field"], &schema["fields"][3]["optional"]), (&json!("extra"), &json!(false)));
    conn.execute_batch("ALTER TABLE events DROP COLUMN v").unwrap();
    let p = |n| conn.dialect().placeholder(n);
    let sql = format!("INSERT INTO events (id, ts) VALUES ({}, {})", p(1), p(2));
    conn.execute(&sql, &[SqlValue::Int(7), SqlValue::Timestamp(1_000_007_000)]).unwrap();
    let got = t.drain(Duration::from_millis(200));
    assert_eq!(got[0].value, Some(Value::Json(json!({"id": 7, "ts": 1_000_007, "extra": 7}))));
    assert!(t.failed.is_empty(), "{:?}", t.failed);
    t.task.stop();
}

//! The JDBC sink driven through the SinkTask API against SQLite and a throwaway PostgreSQL:
//! insert, upsert on key, update, delete on tombstone, auto.create, auto.evolve, schema envelope
//! types, refused records, and exactly-once offsets restored by open().

#[path = "common/postgres.rs"]
mod postgres;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value as Json};
use spate_client::TopicPartition;
use spate_connect::config::Props;
use spate_connect::connector::{FailedRecord, SinkTask, SinkTaskContext};
use spate_connect::record::{ConnectRecord, KafkaCoordinates, Value};
use spate_connect::registry::Registry;

enum Db<'a> {
    Sqlite(tempfile::TempDir),
    /// A database of the one server `postgres_scenarios` starts.
    Pg(&'a postgres::PgServer, String),
}

impl Db<'_> {
    fn sqlite() -> Db<'static> {
        Db::Sqlite(tempfile::tempdir().unwrap())
    }

    fn pg<'a>(server: &'a postgres::PgServer, name: &str) -> Db<'a> {
        server.create_database(name);
        Db::Pg(server, name.to_owned())
    }

    fn url(&self) -> String {
        match self {
            Db::Sqlite(dir) => format!("sqlite:{}", dir.path().join("sink.db").display()),
            Db::Pg(pg, name) => pg.url(name),
        }
    }

    /// Rows as `a|b` lines (NULL as empty), as psql -A -t prints them.
    fn query(&self, sql: &str) -> String {
        match self {
            Db::Sqlite(dir) => {
                let c = rusqlite::Connection::open(dir.path().join("sink.db")).unwrap();
                let mut stmt = c.prepare(sql).unwrap();
                let n = stmt.column_count();
                let rows = stmt
                    .query_map([], |r| {
                        let mut cols = Vec::new();
                        for i in 0..n {
                            use rusqlite::types::ValueRef;
                            cols.push(match r.get_ref(i)? {
                                ValueRef::Null => String::new(),
                                ValueRef::Integer(v) => v.to_string(),
                                ValueRef::Real(v) => v.to_string(),
                                ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                                ValueRef::Blob(b) => format!("blob:{}", b.len()),
                            });
                        }
                        Ok(cols.join("|"))
                    })
                    .unwrap();
                rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
            }
            Db::Pg(pg, name) => pg.psql(name, sql).unwrap().trim_end().to_owned(),
        }
    }

    fn exec(&self, sql: &str) {
        match self {
            Db::Sqlite(dir) => {
                rusqlite::Connection::open(dir.path().join("sink.db")).unwrap().execute_batch(sql).unwrap()
            }
            Db::Pg(pg, name) => {
                pg.psql(name, sql).unwrap();
            }
        }
    }
}

fn props(db: &Db, pairs: &[(&str, &str)]) -> Props {
    let mut p: Props = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    p.insert("connection.url".into(), db.url());
    p.insert("name".into(), "jdbc-test".into());
    p.insert("connector.class".into(), "io.confluent.connect.jdbc.JdbcSinkConnector".into());
    p.insert("topics".into(), "orders".into());
    p
}

fn start(p: &Props) -> Box<dyn SinkTask> {
    let plugin = Registry::builtin().find(&p["connector.class"]).expect("plugin registered");
    let mut task = plugin.sink_task().unwrap();
    task.start(p, &SinkTaskContext { connector: p["name"].clone(), task_id: 0 }).unwrap();
    task
}

/// A put that waits for the write (without exactly.once the task writes one put behind) and
/// returns every failed record of it.
fn write(t: &mut dyn SinkTask, records: Vec<ConnectRecord>) -> spate_connect::Result<Vec<FailedRecord>> {
    let mut failed = t.put(records)?;
    t.flush()?;
    failed.extend(t.put(Vec::new())?);
    Ok(failed)
}

fn rec(offset: i64, key: Option<Json>, value: Option<Json>) -> ConnectRecord {
    let mut r = ConnectRecord::new(Arc::from("orders"), value.map(Value::Json));
    r.key = key.map(Value::Json);
    r.partition = Some(0);
    r.kafka = Some(KafkaCoordinates { topic: r.topic.clone(), partition: 0, offset });
    r
}

fn insert_with_auto_create_and_kafka_key(db: &Db) {
    let mut t = start(&props(db, &[("auto.create", "true"), ("pk.mode", "kafka")]));
    let failed = write(
        &mut *t,
        vec![
            rec(0, None, Some(json!({"id": 1, "name": "a", "price": 1.5}))),
            rec(1, None, Some(json!({"id": 2, "name": "b", "price": 2}))),
        ],
    )
    .unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(db.query("SELECT __connect_offset, id, name, price FROM orders ORDER BY 1"), "0|1|a|1.5\n1|2|b|2");
}

fn upsert_on_record_key_folds_a_batch_and_deletes_on_tombstones(db: &Db) {
    let p = props(
        db,
        &[("auto.create", "true"), ("insert.mode", "upsert"), ("pk.mode", "record_key"), ("delete.enabled", "true")],
    );
    let mut t = start(&p);
    let k = |id: i64| Some(json!({"id": id}));
    let failed = write(
        &mut *t,
        vec![
            rec(0, k(1), Some(json!({"qty": 1, "note": "first"}))),
            rec(1, k(2), Some(json!({"qty": 2, "note": "x"}))),
            rec(2, k(1), Some(json!({"qty": 10}))),
            rec(3, k(3), Some(json!({"qty": 3, "note": "gone"}))),
            rec(4, k(3), None),
            rec(5, k(4), None),
        ],
    )
    .unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    // Key 1 was written twice in one batch: the last qty, and the note only the first had.
    assert_eq!(db.query("SELECT id, qty, note FROM orders ORDER BY id"), "1|10|first\n2|2|x");
    let failed = write(
        &mut *t,
        vec![
            rec(6, k(2), Some(json!({"qty": 20, "note": "y"}))),
            rec(7, k(1), None),
            rec(8, k(1), Some(json!({"qty": 100}))),
        ],
    )
    .unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    // Key 1 was deleted, then written again: its old note is gone.
    assert_eq!(db.query("SELECT id, qty, note FROM orders ORDER BY id"), "1|100|\n2|20|y");
}

fn update_mode_changes_existing_rows_only(db: &Db) {
    db.exec("CREATE TABLE orders (id BIGINT PRIMARY KEY, qty BIGINT, note TEXT)");
    db.exec("INSERT INTO orders VALUES (1, 1, 'a'), (2, 2, 'b')");
    let mut t = start(&props(db, &[("insert.mode", "update"), ("pk.mode", "record_value"), ("pk.fields", "id")]));
    let failed = write(
        &mut *t,
        vec![
            rec(0, None, Some(json!({"id": 1, "qty": 5}))),
            rec(1, None, Some(json!({"id": 3, "qty": 7}))),
            rec(2, None, Some(json!({"id": 1, "qty": 6, "note": "c"}))),
        ],
    )
    .unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(db.query("SELECT id, qty, note FROM orders ORDER BY id"), "1|6|c\n2|2|b");
}

fn auto_evolve_adds_nullable_columns_and_without_it_records_fail(db: &Db) {
    let mut t = start(&props(db, &[("auto.create", "true"), ("auto.evolve", "true")]));
    write(&mut *t, vec![rec(0, None, Some(json!({"a": 1})))]).unwrap();
    let failed = write(&mut *t, vec![rec(1, None, Some(json!({"a": 2, "b": "new", "c": null})))]).unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(db.query("SELECT a, b FROM orders ORDER BY a"), "1|\n2|new");
    let mut strict = start(&props(db, &[]));
    let failed =
        write(&mut *strict, vec![rec(2, None, Some(json!({"a": 3, "d": true}))), rec(3, None, Some(json!({"a": 4})))])
            .unwrap();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].error.to_string().contains("auto.evolve"), "{}", failed[0].error);
    assert_eq!(db.query("SELECT a FROM orders ORDER BY a"), "1\n2\n4");
}

fn records_that_cannot_be_written_fail_alone(db: &Db) {
    db.exec("CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL)");
    let mut t = start(&props(db, &[("pk.mode", "record_value"), ("pk.fields", "id")]));
    let failed = write(
        &mut *t,
        vec![
            rec(0, None, Some(json!({"id": 1, "qty": 1}))),
            rec(1, None, Some(json!("not an object"))),
            rec(2, None, Some(json!({"qty": 2}))),
            rec(3, None, Some(json!({"id": 1, "qty": 3}))),
            rec(4, None, Some(json!({"id": 5, "qty": null}))),
            rec(5, None, None),
            rec(6, None, Some(json!({"id": 6, "qty": 6}))),
        ],
    )
    .unwrap();
    let offsets: Vec<i64> = failed.iter().map(|f| f.record.kafka.as_ref().unwrap().offset).collect();
    // Not an object, no key field, a duplicate key (insert mode), NOT NULL, a tombstone.
    assert_eq!(offsets, vec![1, 2, 3, 4, 5], "{failed:?}");
    assert_eq!(db.query("SELECT id, qty FROM orders ORDER BY id"), "1|1\n6|6");
}

/// Errors that are one record's (an index row too large: 54000, a NUL in a field name: refused
/// by the client) go to the dead-letter queue alone, and keys equal after coercion to the key
/// column's type (1, "1", 1.0) fold into one row (else 21000: a row affected twice).
fn postgres_record_errors_beyond_constraints_fail_alone(db: &Db) {
    db.exec("CREATE TABLE orders (id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX ON orders (v)");
    let p = props(
        db,
        &[("insert.mode", "upsert"), ("pk.mode", "record_value"), ("pk.fields", "id"), ("auto.evolve", "true")],
    );
    let mut t = start(&p);
    // Hex of a pseudo-random stream: too big for a btree index row even compressed.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let big: String = (0..20_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x % 16) as u32, 16).unwrap()
        })
        .collect();
    let failed = write(
        &mut *t,
        vec![
            rec(0, None, Some(json!({"id": 1, "v": "a"}))),
            rec(1, None, Some(json!({"id": "1", "v": "b"}))),
            rec(2, None, Some(json!({"id": 2, "v": big}))),
            rec(3, None, Some(json!({"id": 3, "a\u{0}b": 1}))),
            rec(4, None, Some(json!({"id": 1.0, "v": "c"}))),
            rec(5, None, Some(json!({"id": 5, "v": "e"}))),
        ],
    )
    .unwrap();
    let offsets: Vec<i64> = failed.iter().map(|f| f.record.kafka.as_ref().unwrap().offset).collect();
    assert_eq!(offsets, vec![2, 3], "{failed:?}");
    assert_eq!(db.query("SELECT id, v FROM orders ORDER BY id"), "1|c\n5|e");
}

#[test]
fn a_missing_table_without_auto_create_fails_the_task() {
    let db = Db::sqlite();
    let mut t = start(&props(&db, &[("max.retries", "0")]));
    let err = write(&mut *t, vec![rec(0, None, Some(json!({"a": 1})))]).unwrap_err();
    assert!(err.to_string().contains("auto.create"), "{err}");
}

fn envelope_records() -> Vec<ConnectRecord> {
    let schema = json!({"type": "struct", "optional": false, "fields": [
        {"field": "id", "type": "int32", "optional": false},
        {"field": "small", "type": "int16", "optional": true},
        {"field": "ratio", "type": "float32", "optional": true},
        {"field": "ok", "type": "boolean", "optional": true},
        {"field": "blob", "type": "bytes", "optional": true},
        {"field": "at", "type": "int64", "name": "org.apache.kafka.connect.data.Timestamp", "optional": true},
        {"field": "day", "type": "int32", "name": "org.apache.kafka.connect.data.Date", "optional": true},
        {"field": "amount", "type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
         "parameters": {"scale": "2"}, "optional": true},
        {"field": "tags", "type": "array", "items": {"type": "string"}, "optional": true}
    ]});
    let schema = Arc::new(schema);
    // 12345 unscaled = 0x3039 → "MDk=", scale 2 → 123.45; 1700000000000 ms = 2023-11-14 22:13:20 UTC.
    let values = [
        json!({"id": 1, "small": 7, "ratio": 0.5, "ok": true, "blob": "AQID", "at": 1_700_000_000_000i64,
               "day": 19675, "amount": "MDk=", "tags": ["a", "b"]}),
        json!({"id": 2, "small": null, "ratio": null, "ok": null, "blob": null, "at": null, "day": null,
               "amount": null, "tags": null}),
    ];
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let mut r = rec(i as i64, None, Some(v));
            r.value_schema = Some(schema.clone());
            r
        })
        .collect()
}

fn schema_envelope_types_become_typed_columns_in_postgres(db: &Db) {
    let mut t = start(&props(db, &[("auto.create", "true"), ("pk.mode", "record_value"), ("pk.fields", "id")]));
    let failed = write(&mut *t, envelope_records()).unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        db.query(
            "SELECT string_agg(column_name || ':' || data_type, ',' ORDER BY ordinal_position) \
             FROM information_schema.columns WHERE table_name = 'orders'"
        ),
        "id:integer,small:smallint,ratio:real,ok:boolean,blob:bytea,at:timestamp without time zone,day:date,\
         amount:numeric,tags:jsonb"
    );
    assert_eq!(
        db.query("SELECT id, small, ratio, ok, encode(blob, 'hex'), at, day, amount, tags FROM orders ORDER BY id"),
        "1|7|0.5|t|010203|2023-11-14 22:13:20|2023-11-14|123.45|[\"a\", \"b\"]\n2||||||||"
    );
    assert_eq!(db.query("SELECT count(*) FROM orders WHERE id = 1 AND ratio = 0.5"), "1");
}

/// Columns of user-defined and array types are cast to (format_type, not information_schema's
/// USER-DEFINED/ARRAY), and the table is the one INSERT resolves by search_path, here the
/// second schema of it.
fn postgres_enum_and_array_columns_in_a_search_path_schema(db: &Db) {
    let Db::Pg(_, name) = db else { unreachable!("a PostgreSQL scenario") };
    db.exec(&format!(
        "CREATE TYPE mood AS ENUM ('ok', 'sad'); CREATE SCHEMA app; \
         CREATE TABLE public.orders (id INTEGER PRIMARY KEY, m mood, tags INTEGER[]); \
         ALTER DATABASE {name} SET search_path = app, public"
    ));
    let mut t = start(&props(db, &[("insert.mode", "upsert"), ("pk.mode", "record_value"), ("pk.fields", "id")]));
    let failed = write(
        &mut *t,
        vec![
            rec(0, None, Some(json!({"id": 1, "m": "sad", "tags": "{1,2}"}))),
            rec(1, None, Some(json!({"id": 2, "m": "angry"}))),
            rec(2, None, Some(json!({"id": 3, "m": "ok"}))),
        ],
    )
    .unwrap();
    let offsets: Vec<i64> = failed.iter().map(|f| f.record.kafka.as_ref().unwrap().offset).collect();
    assert_eq!(offsets, vec![1], "{failed:?}");
    assert_eq!(db.query("SELECT id, m, tags FROM public.orders ORDER BY id"), "1|sad|{1,2}\n3|ok|");
}

#[test]
fn schema_envelope_types_in_sqlite() {
    let db = Db::sqlite();
    let mut t = start(&props(&db, &[("auto.create", "true"), ("pk.mode", "record_value"), ("pk.fields", "id")]));
    let failed = write(&mut *t, envelope_records()).unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        db.query("SELECT id, small, ratio, ok, blob, at, day, amount, tags FROM orders ORDER BY id"),
        "1|7|0.5|1|blob:3|2023-11-14 22:13:20.000|2023-11-14|123.45|[\"a\",\"b\"]\n2||||||||"
    );
}

fn postgres_upsert_coerces_to_existing_column_types(db: &Db) {
    db.exec("CREATE TABLE orders (id INTEGER PRIMARY KEY, at TIMESTAMPTZ, n NUMERIC, j JSON, u UUID, f REAL)");
    let mut t = start(&props(db, &[("insert.mode", "upsert"), ("pk.mode", "record_value"), ("pk.fields", "id")]));
    let failed = write(
        &mut *t,
        vec![
            rec(
                0,
                None,
                Some(json!({"id": "1", "at": "2024-01-02T03:04:05+02:00", "n": 1.25, "j": {"x": 1},
                                     "u": "00000000-0000-0000-0000-000000000001", "f": 3})),
            ),
            rec(1, None, Some(json!({"id": 2, "u": "not-a-uuid"}))),
            rec(2, None, Some(json!({"id": 99999999999i64}))),
        ],
    )
    .unwrap();
    let offsets: Vec<i64> = failed.iter().map(|f| f.record.kafka.as_ref().unwrap().offset).collect();
    assert_eq!(offsets, vec![1, 2], "{failed:?}");
    assert_eq!(
        db.query("SELECT id, at, n, j::text, u, f FROM orders"),
        "1|2024-01-02 01:04:05+00|1.25|{\"x\":1}|00000000-0000-0000-0000-000000000001|3"
    );
}

fn exactly_once(db: &Db) {
    let p = props(db, &[("auto.create", "true"), ("exactly.once", "true"), ("batch.size", "4")]);
    let tp = TopicPartition::new("orders", 0);
    let mut t = start(&p);
    assert!(t.open(std::slice::from_ref(&tp)).unwrap().is_empty());
    let batch = |from: i64, to: i64| (from..to).map(|o| rec(o, None, Some(json!({"n": o})))).collect::<Vec<_>>();
    assert!(write(&mut *t, batch(0, 10)).unwrap().is_empty());
    let current: BTreeMap<TopicPartition, i64> = [(tp.clone(), 10)].into();
    assert_eq!(t.pre_commit(&current).unwrap()[&tp], 10);
    t.stop();
    // A restart: the group's committed offset lags (say it is 5); the database knows 10.
    let mut t = start(&p);
    assert_eq!(t.open(std::slice::from_ref(&tp)).unwrap(), [(tp.clone(), 10)].into());
    assert!(write(&mut *t, batch(5, 15)).unwrap().is_empty());
    assert_eq!(db.query("SELECT count(*), count(DISTINCT n), min(n), max(n) FROM orders"), "15|15|0|14");
    assert_eq!(db.query("SELECT next_offset FROM __spate_connect_offsets WHERE connector = 'jdbc-test'"), "15");
}

/// A transform renamed the topic (RegexRouter to a table name): rows go to the renamed
/// topic's table, offsets stay keyed by the topic the records were read from.
fn exactly_once_keys_offsets_by_the_original_topic(db: &Db) {
    let p = props(db, &[("auto.create", "true"), ("exactly.once", "true")]);
    let tp = TopicPartition::new("orders", 0);
    let routed = |o: i64| {
        let mut r = rec(o, None, Some(json!({"n": o})));
        r.topic = Arc::from("orders_table");
        r
    };
    let mut t = start(&p);
    assert!(t.open(std::slice::from_ref(&tp)).unwrap().is_empty());
    assert!(write(&mut *t, vec![routed(0), routed(1)]).unwrap().is_empty());
    let current: BTreeMap<TopicPartition, i64> = [(tp.clone(), 2)].into();
    assert_eq!(t.pre_commit(&current).unwrap()[&tp], 2);
    t.stop();
    let mut t = start(&p);
    assert_eq!(t.open(std::slice::from_ref(&tp)).unwrap(), [(tp.clone(), 2)].into());
    // Redelivered from an older commit: dropped, not written twice.
    assert!(write(&mut *t, vec![routed(1), routed(2)]).unwrap().is_empty());
    assert_eq!(db.query("SELECT n FROM orders_table ORDER BY n"), "0\n1\n2");
    assert_eq!(db.query("SELECT topic, next_offset FROM __spate_connect_offsets"), "orders|3");
}

#[test]
fn exactly_once_keys_offsets_by_the_original_topic_sqlite() {
    exactly_once_keys_offsets_by_the_original_topic(&Db::sqlite());
}

/// Two tasks on one partition (a zombie that has not noticed the rebalance): the one whose
/// belief of the stored offset is stale re-reads it and drops what the other wrote.
fn exactly_once_fences_a_task_with_stale_offsets(db: &Db) {
    let p = props(db, &[("auto.create", "true"), ("exactly.once", "true")]);
    let tp = TopicPartition::new("orders", 0);
    let batch = |from: i64, to: i64| (from..to).map(|o| rec(o, None, Some(json!({"n": o})))).collect::<Vec<_>>();
    let mut a = start(&p);
    let mut zombie = start(&p);
    assert!(a.open(std::slice::from_ref(&tp)).unwrap().is_empty());
    assert!(zombie.open(std::slice::from_ref(&tp)).unwrap().is_empty());
    assert!(write(&mut *a, batch(0, 5)).unwrap().is_empty());
    assert!(write(&mut *zombie, batch(0, 6)).unwrap().is_empty());
    assert!(write(&mut *a, batch(5, 8)).unwrap().is_empty());
    assert_eq!(db.query("SELECT count(*), count(DISTINCT n) FROM orders"), "8|8");
    assert_eq!(db.query("SELECT next_offset FROM __spate_connect_offsets"), "8");
}

#[test]
fn exactly_once_fences_a_task_with_stale_offsets_sqlite() {
    exactly_once_fences_a_task_with_stale_offsets(&Db::sqlite());
}

#[test]
fn exactly_once_offsets_are_restored_by_open_sqlite() {
    exactly_once(&Db::sqlite());
}

fn reconnects_after_the_backend_is_terminated(db: &Db) {
    let p = props(db, &[("auto.create", "true"), ("max.retries", "5"), ("retry.backoff.ms", "100")]);
    let mut t = start(&p);
    assert!(write(&mut *t, vec![rec(0, None, Some(json!({"n": 0})))]).unwrap().is_empty());
    let killed = db.query(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'spate-jdbc-sink'",
    );
    assert_eq!(killed, "1", "the sink's backend was terminated");
    assert!(write(&mut *t, vec![rec(1, None, Some(json!({"n": 1})))]).unwrap().is_empty());
    assert_eq!(db.query("SELECT n FROM orders ORDER BY n"), "0\n1");
}

/// The backend dies inside the transaction (at COMMIT, from a deferred trigger that fires
/// once): the whole chunk is redone on a new connection, from BEGIN, and lands exactly once.
fn backend_lost_inside_the_transaction_redoes_the_whole_chunk(db: &Db) {
    db.exec(
        "CREATE TABLE orders (n BIGINT); CREATE SEQUENCE kill_once; \
         CREATE FUNCTION kill_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF nextval('kill_once') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; \
           RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER kill_once AFTER INSERT ON orders DEFERRABLE INITIALLY DEFERRED \
           FOR EACH ROW EXECUTE FUNCTION kill_once()",
    );
    let p = props(db, &[("exactly.once", "true"), ("max.retries", "3"), ("retry.backoff.ms", "50")]);
    let mut t = start(&p);
    let tp = TopicPartition::new("orders", 0);
    assert!(t.open(std::slice::from_ref(&tp)).unwrap().is_empty());
    let batch = (0..5).map(|o| rec(o, None, Some(json!({"n": o})))).collect::<Vec<_>>();
    assert!(write(&mut *t, batch).unwrap().is_empty());
    assert!(db.query("SELECT last_value FROM kill_once").parse::<i64>().unwrap() > 5, "the trigger fired again");
    assert_eq!(db.query("SELECT count(*), count(DISTINCT n) FROM orders"), "5|5");
    assert_eq!(db.query("SELECT next_offset FROM __spate_connect_offsets"), "5");
}

/// A test body run against one database.
type Scenario = fn(&Db);

/// Every scenario against one throwaway server, a database each.
#[test]
fn postgres_scenarios() {
    let server = postgres::PgServer::start();
    let scenarios: &[(&str, Scenario)] = &[
        ("insert_kafka", insert_with_auto_create_and_kafka_key),
        ("upsert_key", upsert_on_record_key_folds_a_batch_and_deletes_on_tombstones),
        ("update_mode", update_mode_changes_existing_rows_only),
        ("evolve", auto_evolve_adds_nullable_columns_and_without_it_records_fail),
        ("refused", records_that_cannot_be_written_fail_alone),
        ("refused_more", postgres_record_errors_beyond_constraints_fail_alone),
        ("user_types", postgres_enum_and_array_columns_in_a_search_path_schema),
        ("envelope", schema_envelope_types_become_typed_columns_in_postgres),
        ("coerce", postgres_upsert_coerces_to_existing_column_types),
        ("exactly_once", exactly_once),
        ("exactly_once_renamed", exactly_once_keys_offsets_by_the_original_topic),
        ("exactly_once_fenced", exactly_once_fences_a_task_with_stale_offsets),
        ("reconnect", reconnects_after_the_backend_is_terminated),
        ("lost_in_tx", backend_lost_inside_the_transaction_redoes_the_whole_chunk),
    ];
    for (name, scenario) in scenarios {
        let db = Db::pg(&server, name);
        scenario(&db);
    }
}

#[test]
fn sqlite_scenarios() {
    for scenario in [
        insert_with_auto_create_and_kafka_key,
        upsert_on_record_key_folds_a_batch_and_deletes_on_tombstones,
        update_mode_changes_existing_rows_only,
        auto_evolve_adds_nullable_columns_and_without_it_records_fail,
        records_that_cannot_be_written_fail_alone,
    ] {
        scenario(&Db::sqlite());
    }
}

#[test]
fn config_cross_checks() {
    let plugin = Registry::builtin().find("JdbcSinkConnector").unwrap();
    let db = Db::sqlite();
    let errors = plugin.validate(&props(&db, &[("delete.enabled", "true"), ("pk.mode", "record_value")]));
    assert_eq!(errors[0].0, "delete.enabled");
    let errors = plugin.validate(&props(&db, &[("insert.mode", "upsert")]));
    assert_eq!(errors[0].0, "pk.mode");
    assert!(plugin.validate(&props(&db, &[("insert.mode", "upsert"), ("pk.mode", "record_key")])).is_empty());
}

#[test]
fn pre_commit_holds_offsets_below_failures_not_yet_handed_back() {
    let db = Db::sqlite();
    let mut t = start(&props(&db, &[("auto.create", "true")]));
    let batch =
        vec![rec(0, None, Some(json!({"a": 1}))), rec(1, None, Some(json!(5))), rec(2, None, Some(json!({"a": 2})))];
    // Written one put behind: this put returns nothing yet.
    assert!(t.put(batch).unwrap().is_empty());
    let tp = TopicPartition::new("orders", 0);
    let current: BTreeMap<TopicPartition, i64> = [(tp.clone(), 3)].into();
    assert_eq!(t.pre_commit(&current).unwrap()[&tp], 1, "offset 1 failed and is not routed yet");
    let failed = t.put(Vec::new()).unwrap();
    assert_eq!(failed.iter().map(|f| f.record.kafka.as_ref().unwrap().offset).collect::<Vec<_>>(), [1]);
    assert_eq!(t.pre_commit(&current).unwrap()[&tp], 3);
    assert_eq!(db.query("SELECT a FROM orders ORDER BY a"), "1\n2");
}

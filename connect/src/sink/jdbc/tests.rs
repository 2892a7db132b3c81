//! Unit tests of the sans-IO parts: record → row, the per-key plan, SQL text.

use std::sync::Arc;

use serde_json::json;

use super::plan::{plan, InsertMode, Kind};
use super::row::{Cell, Op, PkMode, RowMapper, SqlType};
use super::sql::{self, Flavor, PgArray};
use crate::record::{ConnectRecord, KafkaCoordinates, Value};

fn rec(offset: i64, key: Option<serde_json::Value>, value: Option<serde_json::Value>) -> ConnectRecord {
    let mut r = ConnectRecord::new(Arc::from("t"), value.map(Value::Json));
    r.key = key.map(Value::Json);
    r.kafka = Some(KafkaCoordinates { topic: r.topic.clone(), partition: 3, offset });
    r
}

fn names(op: &Op) -> Vec<&str> {
    op.row().cols.names.iter().map(String::as_str).collect()
}

#[test]
fn record_value_key_comes_first_and_whitelist_filters() {
    let mut m = RowMapper::new(PkMode::RecordValue, vec!["id".into()], vec!["b".into()], false);
    let op = m.map(&rec(0, None, Some(json!({"b": 2, "id": 7, "c": 3})))).unwrap();
    assert_eq!(names(&op), ["id", "b"]);
    assert_eq!(op.row().cells, [Cell::Int(7), Cell::Int(2)]);
    assert_eq!(op.row().cols.pk_len, 1);
    assert!(m.map(&rec(1, None, Some(json!({"b": 2})))).unwrap_err().contains("id"));
    assert!(m.map(&rec(2, None, Some(json!([1])))).unwrap_err().contains("not an object"));
    assert!(m.map(&rec(3, None, None)).unwrap_err().contains("delete.enabled"));
}

#[test]
fn same_shaped_records_share_their_columns() {
    let mut m = RowMapper::new(PkMode::None, vec![], vec![], false);
    let a = m.map(&rec(0, None, Some(json!({"x": 1, "y": "a"})))).unwrap();
    let b = m.map(&rec(1, None, Some(json!({"x": 2, "y": "b"})))).unwrap();
    assert!(Arc::ptr_eq(&a.row().cols, &b.row().cols));
    let c = m.map(&rec(2, None, Some(json!({"x": 2})))).unwrap();
    assert!(!Arc::ptr_eq(&a.row().cols, &c.row().cols));
}

#[test]
fn record_key_primitive_struct_and_tombstone() {
    let mut m = RowMapper::new(PkMode::RecordKey, vec!["id".into()], vec![], true);
    let op = m.map(&rec(0, Some(json!(5)), Some(json!({"v": 1})))).unwrap();
    assert_eq!(names(&op), ["id", "v"]);
    let op = m.map(&rec(1, Some(json!(5)), None)).unwrap();
    assert!(matches!(op, Op::Delete(ref r) if r.cells == [Cell::Int(5)]));
    let mut m = RowMapper::new(PkMode::RecordKey, vec![], vec![], true);
    let op = m.map(&rec(2, Some(json!({"a": 1, "b": "x"})), Some(json!({"a": 9, "v": 1})))).unwrap();
    // The key's fields first; the value's field of the same name is not written twice.
    assert_eq!(names(&op), ["a", "b", "v"]);
    assert_eq!(op.row().cells, [Cell::Int(1), Cell::Text("x".into()), Cell::Int(1)]);
    assert!(m.map(&rec(3, Some(json!(1)), Some(json!({})))).unwrap_err().contains("pk.fields"));
    assert!(m.map(&rec(4, None, Some(json!({})))).unwrap_err().contains("record key"));
}

#[test]
fn kafka_coordinates_as_key() {
    let mut m = RowMapper::new(PkMode::Kafka, vec![], vec![], false);
    let op = m.map(&rec(42, None, Some(json!({"v": true})))).unwrap();
    assert_eq!(names(&op), ["__connect_topic", "__connect_partition", "__connect_offset", "v"]);
    assert_eq!(op.row().cells[..3], [Cell::Text("t".into()), Cell::Int(3), Cell::Int(42)]);
}

#[test]
fn schema_envelope_types_and_logical_types() {
    let mut m = RowMapper::new(PkMode::None, vec![], vec![], false);
    let mut r = rec(0, None, Some(json!({"d": "AQI=", "ts": 86_400_000, "n": "MDk=", "f": 1.5, "s": null})));
    r.value_schema = Some(Arc::new(json!({"type": "struct", "fields": [
        {"field": "ts", "type": "int64", "name": "org.apache.kafka.connect.data.Timestamp"},
        {"field": "d", "type": "bytes"},
        {"field": "n", "type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "3"}},
        {"field": "f", "type": "float32"},
        {"field": "s", "type": "string", "optional": true}
    ]})));
    let op = m.map(&r).unwrap();
    assert_eq!(names(&op), ["ts", "d", "n", "f", "s"]);
    assert_eq!(
        op.row().cols.types,
        [
            Some(SqlType::Timestamp),
            Some(SqlType::Bytes),
            Some(SqlType::Decimal),
            Some(SqlType::Float32),
            Some(SqlType::Text)
        ]
    );
    assert_eq!(
        op.row().cells,
        [
            Cell::TimestampMs(86_400_000),
            Cell::Bytes(vec![1, 2]),
            Cell::Decimal("12.345".into()),
            Cell::Float(1.5),
            Cell::Null
        ]
    );
    let mut bad = r.clone();
    bad.value = Some(Value::Json(json!({"ts": "x", "d": "AQI=", "n": "MDk=", "f": "no"})));
    assert!(m.map(&bad).unwrap_err().contains("field f"));
}

#[test]
fn coercion_to_column_types() {
    assert_eq!(Cell::Text("12".into()).coerce(&SqlType::Int32), Ok(Cell::Int(12)));
    assert!(Cell::Int(70_000).coerce(&SqlType::Int16).is_err());
    assert_eq!(Cell::Int(2).coerce(&SqlType::Float64), Ok(Cell::Float(2.0)));
    assert_eq!(Cell::Float(2.0).coerce(&SqlType::Int64), Ok(Cell::Int(2)));
    assert!(Cell::Float(2.5).coerce(&SqlType::Int64).is_err());
    assert_eq!(Cell::Int(5).coerce(&SqlType::Text), Ok(Cell::Text("5".into())));
    assert_eq!(Cell::Text("a".into()).coerce(&SqlType::Json), Ok(Cell::Json("\"a\"".into())));
    assert_eq!(Cell::Int(0).coerce(&SqlType::Timestamp), Ok(Cell::TimestampMs(0)));
    assert_eq!(Cell::Bool(true).coerce(&SqlType::Other("uuid".into())), Ok(Cell::Text("true".into())));
    assert_eq!(super::row::timestamp_text(1_700_000_000_123).unwrap(), "2023-11-14 22:13:20.123");
    assert_eq!(super::row::time_text(3_723_004).unwrap(), "01:02:03.004");
    assert!(super::row::time_text(86_400_000).is_err());
}

fn ops(m: &mut RowMapper, recs: &[(Option<serde_json::Value>, Option<serde_json::Value>)]) -> Vec<(u32, Op)> {
    recs.iter()
        .enumerate()
        .map(|(i, (k, v))| (i as u32, m.map(&rec(i as i64, k.clone(), v.clone())).unwrap()))
        .collect()
}

#[test]
fn upsert_folds_per_key_deletes_first() {
    let mut m = RowMapper::new(PkMode::RecordKey, vec!["id".into()], vec![], true);
    let input = ops(
        &mut m,
        &[
            (Some(json!(1)), Some(json!({"a": 1, "b": 1}))),
            (Some(json!(2)), Some(json!({"a": 2, "b": 2}))),
            (Some(json!(1)), Some(json!({"a": 10}))),
            (Some(json!(2)), None),
            (Some(json!(3)), None),
            (Some(json!(3)), Some(json!({"a": 3, "b": 3}))),
        ],
    );
    let groups = plan(InsertMode::Upsert, input);
    assert_eq!(groups.len(), 2, "{groups:#?}");
    assert_eq!(groups[0].kind, Kind::Delete);
    assert_eq!(groups[0].rows, [vec![Cell::Int(2)], vec![Cell::Int(3)]]);
    // Key 1: a from the later record, b kept from the earlier one; key 3 written after its delete.
    assert_eq!(groups[1].kind, Kind::Write);
    assert_eq!(groups[1].cols.names, ["id", "a", "b"]);
    let row = |v: [i64; 3]| v.map(Cell::Int).to_vec();
    assert_eq!(groups[1].rows, [row([1, 10, 1]), row([3, 3, 3])]);
    assert_eq!(groups[1].sources, [vec![0, 2], vec![5]]);
}

#[test]
fn update_drops_writes_after_a_delete_and_insert_keeps_order() {
    let mut m = RowMapper::new(PkMode::RecordKey, vec!["id".into()], vec![], true);
    let recs =
        [(Some(json!(1)), None), (Some(json!(1)), Some(json!({"a": 1}))), (Some(json!(2)), Some(json!({"a": 2})))];
    let groups = plan(InsertMode::Update, ops(&mut m, &recs));
    assert_eq!(
        groups.iter().map(|g| (g.kind, g.rows.len())).collect::<Vec<_>>(),
        [(Kind::Delete, 1), (Kind::Write, 1)]
    );
    let groups = plan(InsertMode::Insert, ops(&mut m, &recs));
    let kinds: Vec<_> = groups.iter().map(|g| (g.kind, g.rows.len())).collect();
    assert_eq!(kinds, [(Kind::Delete, 1), (Kind::Write, 2)]);
}

#[test]
fn sqlite_statements() {
    let n = ["id", "a"];
    assert_eq!(
        sql::sqlite_statement(InsertMode::Upsert, Kind::Write, "t", &n, 1).unwrap(),
        "INSERT INTO \"t\" (\"id\", \"a\") VALUES (?1, ?2) ON CONFLICT (\"id\") DO UPDATE SET \"a\" = excluded.\"a\""
    );
    assert_eq!(
        sql::sqlite_statement(InsertMode::Update, Kind::Write, "t", &n, 1).unwrap(),
        "UPDATE \"t\" SET \"a\" = ?2 WHERE \"id\" = ?1"
    );
    assert_eq!(sql::sqlite_statement(InsertMode::Update, Kind::Write, "t", &["id"], 1), None);
    assert_eq!(
        sql::sqlite_statement(InsertMode::Upsert, Kind::Delete, "t", &["id"], 1).unwrap(),
        "DELETE FROM \"t\" WHERE \"id\" = ?1"
    );
    assert_eq!(
        sql::create_table(Flavor::Sqlite, "we\"ird", &[("id", SqlType::Int64), ("b", SqlType::Bytes)], 1),
        "CREATE TABLE IF NOT EXISTS \"we\"\"ird\" (\"id\" INTEGER NOT NULL, \"b\" BLOB, PRIMARY KEY (\"id\"))"
    );
}

#[test]
fn postgres_statements_unnest_arrays() {
    let n = ["id", "at", "v"];
    let types = [SqlType::Int32, SqlType::Timestamp, SqlType::Text];
    let (arrays, casts): (Vec<PgArray>, Vec<Option<String>>) = types.iter().map(sql::pg_transport).unzip();
    assert_eq!(
        sql::pg_statement(InsertMode::Upsert, Kind::Write, "s.t", &n, 1, &arrays, &casts).unwrap(),
        "INSERT INTO \"s\".\"t\" (\"id\", \"at\", \"v\") SELECT u.c0, u.c1::timestamptz, u.c2 FROM \
         UNNEST($1::int8[], $2::text[], $3::text[]) AS u(c0, c1, c2) ON CONFLICT (\"id\") DO UPDATE SET \
         \"at\" = EXCLUDED.\"at\", \"v\" = EXCLUDED.\"v\""
    );
    assert_eq!(
        sql::pg_statement(InsertMode::Update, Kind::Write, "t", &n, 1, &arrays, &casts).unwrap(),
        "UPDATE \"t\" AS t SET \"at\" = u.c1::timestamptz, \"v\" = u.c2 FROM UNNEST($1::int8[], $2::text[], \
         $3::text[]) AS u(c0, c1, c2) WHERE t.\"id\" = u.c0"
    );
    assert_eq!(
        sql::pg_statement(InsertMode::Insert, Kind::Delete, "t", &n[..1], 1, &arrays[..1], &casts[..1]).unwrap(),
        "DELETE FROM \"t\" AS t USING UNNEST($1::int8[]) AS u(c0) WHERE t.\"id\" = u.c0"
    );
    assert_eq!(sql::type_from_db(Flavor::Postgres, "timestamp without time zone"), SqlType::Timestamp);
    assert_eq!(sql::type_from_db(Flavor::Postgres, "character varying"), SqlType::Text);
    assert_eq!(sql::type_from_db(Flavor::Postgres, "uuid"), SqlType::Other("uuid".into()));
    assert_eq!(sql::pg_transport(&SqlType::Other("x; drop".into())).1, None);
}

#[test]
fn a_connection_lost_inside_a_transaction_is_not_replaced() {
    use super::conn::Fault;
    use super::{SinkConfig, Writer};
    let dir = tempfile::tempdir().unwrap();
    let props: crate::config::Props = [
        ("connection.url".to_owned(), format!("sqlite:{}", dir.path().join("x.db").display())),
        ("connector.class".to_owned(), "JdbcSinkConnector".to_owned()),
        ("name".to_owned(), "t".to_owned()),
    ]
    .into();
    let mut w = Writer { cfg: Some(Arc::new(SinkConfig::parse(&props).unwrap())), ..Writer::default() };
    // Mid-transaction with no live connection: the attempt fails (and is retried from BEGIN),
    // no new connection is opened to run the rest in autocommit.
    w.in_tx = true;
    let e = w.conn().err().expect("no reconnect inside a transaction");
    assert_eq!(e.fault, Fault::Transient);
    assert!(w.conn.is_none());
    w.in_tx = false;
    assert!(w.conn().is_ok(), "reconnects at the start of an attempt");
}

#[test]
fn retry_waits_end_when_the_task_stops() {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let w = super::Writer::default();
    assert!(w.backoff(Duration::from_millis(10)).is_ok());
    w.stopping.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    assert!(matches!(w.backoff(Duration::from_secs(60)), Err(crate::ConnectError::Stopping)));
    assert!(t0.elapsed() < Duration::from_secs(1));
}

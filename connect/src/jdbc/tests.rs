//! The database layer on SQLite (PostgreSQL runs in connect/tests/jdbc_source.rs against the
//! throwaway server fixture).

use serde_json::json;

use super::*;

fn memory() -> Database {
    Database::open("sqlite::memory:", None, None).unwrap()
}

#[test]
fn urls_parse_in_both_spellings() {
    assert_eq!(ConnectionUrl::parse("sqlite:/tmp/a.db").unwrap(), ConnectionUrl::Sqlite("/tmp/a.db".into()));
    assert_eq!(ConnectionUrl::parse("jdbc:sqlite:/tmp/a.db").unwrap(), ConnectionUrl::Sqlite("/tmp/a.db".into()));
    assert_eq!(
        ConnectionUrl::parse("jdbc:postgresql://h:5432/db").unwrap(),
        ConnectionUrl::Postgres("postgresql://h:5432/db".into())
    );
    assert_eq!(ConnectionUrl::parse("postgres://h/db").unwrap().dialect(), Dialect::Postgres);
    assert!(matches!(ConnectionUrl::parse("mysql://h/db"), Err(crate::ConnectError::Config { .. })));
    assert!(ConnectionUrl::parse("sqlite:").is_err());
}

#[test]
fn dialects_quote_place_and_upsert() {
    assert_eq!(Dialect::Sqlite.quote_table("s.we\"ird"), "\"s\".\"we\"\"ird\"");
    assert_eq!(Dialect::Sqlite.placeholder(3), "?3");
    assert_eq!(Dialect::Postgres.placeholder(3), "$3");
    assert_eq!(
        Dialect::Postgres.upsert_sql("t", &["id", "v"], &["id"]),
        "INSERT INTO \"t\" (\"id\", \"v\") VALUES ($1, $2) ON CONFLICT (\"id\") DO UPDATE SET \"v\" = excluded.\"v\""
    );
    assert_eq!(
        Dialect::Sqlite.upsert_sql("t", &["id"], &["id"]),
        "INSERT INTO \"t\" (\"id\") VALUES (?1) ON CONFLICT (\"id\") DO NOTHING"
    );
    assert_eq!(Dialect::Sqlite.insert_sql("t", &["a", "b"]), "INSERT INTO \"t\" (\"a\", \"b\") VALUES (?1, ?2)");
    assert_eq!(Dialect::Postgres.type_name(SqlType::Timestamp), "timestamptz");
}

#[test]
fn sqlite_reads_typed_columns_and_catalog() {
    let mut db = memory();
    db.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, ok BOOLEAN, price NUMERIC, f REAL, \
         ts TIMESTAMP, ts_ms DATETIME, d DATE, doc JSON, raw BLOB);
         INSERT INTO t VALUES (1, 'a', 1, 12.5, 0.25, '2024-01-02 03:04:05.123456', 1700000000123, '2024-01-02', '{\"k\":1}', x'0102');
         INSERT INTO t (id, name) VALUES (2, 'b');",
    )
    .unwrap();
    assert_eq!(db.list_tables().unwrap(), vec!["t"]);
    assert_eq!(db.primary_key("t").unwrap(), vec!["id"]);
    let cols = db.table_columns("t").unwrap();
    assert_eq!(
        cols.iter().map(|c| c.sql_type).collect::<Vec<_>>(),
        vec![
            SqlType::Int64,
            SqlType::Text,
            SqlType::Bool,
            SqlType::Numeric,
            SqlType::Float64,
            SqlType::Timestamp,
            SqlType::Timestamp,
            SqlType::Date,
            SqlType::Json,
            SqlType::Bytes
        ]
    );
    assert!(!cols[0].nullable && !cols[1].nullable && cols[2].nullable);
    let rows = db.query("SELECT * FROM t ORDER BY id", &[]).unwrap();
    assert_eq!(rows.columns.len(), 10);
    let r = &rows.rows[0];
    assert_eq!(r[2], SqlValue::Bool(true));
    assert_eq!(r[3], SqlValue::Numeric("12.5".into()));
    assert_eq!(r[5], SqlValue::Timestamp(parse_timestamp_micros("2024-01-02T03:04:05.123456Z").unwrap()));
    assert_eq!(r[6], SqlValue::Timestamp(1_700_000_000_123_000));
    let json: Vec<_> = rows.columns.iter().zip(r).map(|(c, v)| v.to_json(c.sql_type).unwrap()).collect();
    assert_eq!(
        json,
        vec![
            json!(1),
            json!("a"),
            json!(true),
            json!("12.5"),
            json!(0.25),
            json!(1_704_164_645_123i64),
            json!(1_700_000_000_123i64),
            json!(19724),
            json!("{\"k\":1}"),
            json!("AQI=")
        ]
    );
    assert!(rows.rows[1][2..].iter().all(|v| *v == SqlValue::Null));
}

#[test]
fn values_that_do_not_fit_their_column_are_errors_not_panics() {
    assert!(SqlValue::Text("x".into()).to_json(SqlType::Int64).is_err());
    assert!(SqlValue::Int(1 << 40).to_json(SqlType::Int32).is_err());
    assert_eq!(SqlValue::Float(f64::NAN).to_json(SqlType::Float64).unwrap(), json!("NaN"));
    assert_eq!(SqlValue::Int(7).to_json(SqlType::Unknown).unwrap(), json!(7));
}

#[test]
fn json_maps_back_with_and_without_a_schema() {
    assert_eq!(SqlValue::from_json(&json!(5), None).unwrap(), SqlValue::Int(5));
    assert_eq!(SqlValue::from_json(&json!(1.5), None).unwrap(), SqlValue::Float(1.5));
    assert_eq!(SqlValue::from_json(&json!(u64::MAX), None).unwrap(), SqlValue::Numeric(u64::MAX.to_string()));
    assert_eq!(SqlValue::from_json(&json!({"a": [1]}), None).unwrap(), SqlValue::Json("{\"a\":[1]}".into()));
    let ts = json!({"type": "int64", "name": "org.apache.kafka.connect.data.Timestamp"});
    assert_eq!(SqlValue::from_json(&json!(1000), Some(&ts)).unwrap(), SqlValue::Timestamp(1_000_000));
    let date = json!({"type": "int32", "name": "org.apache.kafka.connect.data.Date"});
    assert_eq!(SqlValue::from_json(&json!(3), Some(&date)).unwrap(), SqlValue::Date(3));
    let bytes = json!({"type": "bytes"});
    assert_eq!(SqlValue::from_json(&json!("AQI="), Some(&bytes)).unwrap(), SqlValue::Bytes(vec![1, 2]));
    // 12345 unscaled, scale 2 → 123.45; -1 (0xFF) scale 1 → -0.1.
    let dec = json!({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "2"}});
    assert_eq!(SqlValue::from_json(&json!("MDk="), Some(&dec)).unwrap(), SqlValue::Numeric("123.45".into()));
    let dec1 = json!({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "1"}});
    assert_eq!(SqlValue::from_json(&json!("/w=="), Some(&dec1)).unwrap(), SqlValue::Numeric("-0.1".into()));
    assert!(SqlValue::from_json(&json!("zz"), Some(&bytes)).is_err());
}

#[test]
fn connect_schemas_name_logical_types() {
    let cols = vec![
        Column { name: "id".into(), sql_type: SqlType::Int64, type_name: "INTEGER".into(), nullable: false },
        Column { name: "ts".into(), sql_type: SqlType::Timestamp, type_name: "TIMESTAMP".into(), nullable: true },
    ];
    assert_eq!(
        struct_schema("t", &cols),
        json!({
            "type": "struct", "optional": false, "name": "t",
            "fields": [
                {"type": "int64", "optional": false, "field": "id"},
                {"type": "int64", "optional": true, "field": "ts", "name": "org.apache.kafka.connect.data.Timestamp", "version": 1},
            ],
        })
    );
}

#[test]
fn connect_schema_types_are_json_converters_names() {
    // The type names Kafka's JsonConverter reads and writes (JsonSchema.*_TYPE_NAME).
    let kafka = ["boolean", "int8", "int16", "int32", "int64", "float", "double", "bytes", "string"];
    let all = [
        (SqlType::Bool, "boolean"),
        (SqlType::Int16, "int16"),
        (SqlType::Int32, "int32"),
        (SqlType::Int64, "int64"),
        (SqlType::Float32, "float"),
        (SqlType::Float64, "double"),
        (SqlType::Numeric, "string"),
        (SqlType::Text, "string"),
        (SqlType::Bytes, "bytes"),
        (SqlType::Timestamp, "int64"),
        (SqlType::Date, "int32"),
        (SqlType::Time, "int32"),
        (SqlType::Json, "string"),
        (SqlType::Unknown, "string"),
    ];
    for (sql_type, expected) in all {
        let col = Column { name: "c".into(), sql_type, type_name: String::new(), nullable: true };
        let ty = connect_schema(&col)["type"].as_str().unwrap().to_owned();
        assert!(kafka.contains(&ty.as_str()), "{sql_type:?} → {ty}");
        assert_eq!(ty, expected, "{sql_type:?}");
    }
}

#[test]
fn writes_round_trip_and_transactions_roll_back() {
    let mut db = memory();
    db.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, ts TIMESTAMP)").unwrap();
    let (head, tail) = Dialect::Sqlite.insert_parts("t", &["id", "v", "ts"], &["id"], true);
    let rows: Vec<Vec<SqlValue>> = (0..100)
        .map(|i| vec![SqlValue::Int(i), SqlValue::Text(format!("v{i}")), SqlValue::Timestamp(i * 1_000_001)])
        .collect();
    assert_eq!(db.transaction(|db| db.insert_rows(&head, &tail, 3, &rows)).unwrap(), 100);
    let again = vec![vec![SqlValue::Int(5), SqlValue::Text("new".into()), SqlValue::Null]];
    db.insert_rows(&head, &tail, 3, &again).unwrap();
    let r = db.query("SELECT v, ts FROM t WHERE id = ?1", &[SqlValue::Int(5)]).unwrap();
    assert_eq!(r.rows, vec![vec![SqlValue::Text("new".into()), SqlValue::Null]]);
    let r = db.query("SELECT ts FROM t WHERE id = ?1", &[SqlValue::Int(7)]).unwrap();
    assert_eq!(r.rows, vec![vec![SqlValue::Timestamp(7_000_007)]]);
    let failed: Result<()> = db.transaction(|db| {
        db.execute("DELETE FROM t", &[])?;
        Err(crate::ConnectError::Internal("abort".into()))
    });
    assert!(failed.is_err());
    assert_eq!(db.query("SELECT count(*) FROM t", &[]).unwrap().rows, vec![vec![SqlValue::Int(100)]]);
    assert_eq!(
        db.execute_many(
            "UPDATE t SET v = ?2 WHERE id = ?1",
            &[vec![SqlValue::Int(1), SqlValue::Text("x".into())], vec![SqlValue::Int(2), SqlValue::Text("y".into())],]
        )
        .unwrap(),
        2
    );
    assert!(db.insert_rows(&head, &tail, 3, &[vec![SqlValue::Int(1)]]).is_err());
}

#[test]
fn the_clock_is_the_databases_and_cursors_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let mut db = Database::open(&format!("sqlite:{}", path.display()), None, None).unwrap();
    let now = db.now_ms().unwrap();
    let local = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!((now - local).abs() < 5_000, "{now} vs {local}");
    db.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY)").unwrap();
    db.transaction(|db| {
        db.execute_many("INSERT INTO t VALUES (?1)", &(0..25).map(|i| vec![SqlValue::Int(i)]).collect::<Vec<_>>())
    })
    .unwrap();
    let mut cursor = db.cursor("SELECT id FROM t ORDER BY id", 10).unwrap();
    let mut sizes = Vec::new();
    while let Some(chunk) = cursor.next_chunk(&mut db).unwrap() {
        sizes.push(chunk.rows.len());
    }
    assert_eq!(sizes, vec![10, 10, 5]);
    let mut early = db.cursor("SELECT id FROM t", 10).unwrap();
    assert!(early.next_chunk(&mut db).unwrap().is_some());
    early.close(&mut db).unwrap();
    assert!(early.next_chunk(&mut db).unwrap().is_none());
}

#[test]
fn typeless_columns_widen_over_the_whole_batch() {
    let mut db = memory();
    db.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, n, m, s, b);
         INSERT INTO t VALUES (1, 1, 1, NULL, 1), (2, 2.5, 'x', 'a', NULL), (3, NULL, x'41', 'b', 0), (4, 4, 7, 'c', 1);",
    )
    .unwrap();
    let mut rows = db.query("SELECT n, m, s, b FROM t ORDER BY id", &[]).unwrap();
    rows.infer_unknown_types();
    let types: Vec<SqlType> = rows.columns.iter().map(|c| c.sql_type).collect();
    assert_eq!(types, vec![SqlType::Float64, SqlType::Text, SqlType::Text, SqlType::Int64]);
    let json: Vec<Vec<serde_json::Value>> = rows
        .rows
        .iter()
        .map(|r| r.iter().zip(&rows.columns).map(|(v, c)| v.to_json(c.sql_type).unwrap()).collect())
        .collect();
    assert_eq!(json[0], vec![json!(1.0), json!("1"), json!(null), json!(1)]);
    assert_eq!(json[1], vec![json!(2.5), json!("x"), json!("a"), json!(null)]);
    assert_eq!(json[2], vec![json!(null), json!("A"), json!("b"), json!(0)]);
    assert_eq!(json[3], vec![json!(4.0), json!("7"), json!("c"), json!(1)]);
}

#[test]
fn transient_errors_are_classified_by_kind_not_text() {
    let mut db = memory();
    // A table whose name holds the words the old text match looked for.
    let missing = db.query("SELECT * FROM connections_closed_timeout_locked", &[]).unwrap_err();
    assert!(missing.to_string().contains("connections_closed_timeout_locked"), "{missing}");
    assert!(!is_transient(&missing), "{missing}");
    let busy = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
    assert!(is_transient(&sqlite::lite_error("running x", busy)));
    let constraint = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT), None);
    assert!(!is_transient(&sqlite::lite_error("running x", constraint)));
}

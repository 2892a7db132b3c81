//! The shared database layer (`spate_connect::jdbc`) against a real PostgreSQL server: every
//! mapped type written from loosely typed values and read back, catalog reads, multi-row
//! upserts, cursors and the clock.

#[path = "common/postgres.rs"]
mod postgres;

use serde_json::json;
use spate_connect::jdbc::{is_transient, parse_timestamp_micros, Database, Dialect, SqlType, SqlValue};

#[test]
fn postgres_types_convert_both_ways() {
    let pg = postgres::PgServer::start();
    let url = pg.create_database("types");
    let mut db = Database::open(&url, Some(postgres::PG_USER), None).unwrap();
    assert_eq!(db.dialect(), Dialect::Postgres);
    db.execute_batch(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TABLE t (id int8 PRIMARY KEY, i2 int2, i4 int4 NOT NULL, f4 float4, f8 float8, n numeric(12,4),
           b bool, s text, vc varchar(10), by bytea, ts timestamp, tz timestamptz, d date, tm time,
           j json, jb jsonb, u uuid, m mood, iv interval)",
    )
    .unwrap();
    let cols = db.table_columns("t").unwrap();
    assert_eq!(cols.len(), 19);
    assert_eq!(cols[0].sql_type, SqlType::Int64);
    assert!(!cols[2].nullable && cols[1].nullable);
    assert_eq!(cols[5].type_name, "numeric(12,4)");
    assert_eq!(cols[10].sql_type, SqlType::Timestamp);
    assert_eq!(db.primary_key("t").unwrap(), vec!["id"]);
    assert_eq!(db.list_tables().unwrap(), vec!["t"]);
    let ts = parse_timestamp_micros("2024-05-06 07:08:09.123456").unwrap();
    let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
    let (head, tail) = Dialect::Postgres.insert_parts("t", &names[..18], &["id"], true);
    // Loose input, as a sink gets it from JSON: text for numbers, ints for bools, ms for times.
    let row = vec![
        SqlValue::Int(1),
        SqlValue::Text("12".into()),
        SqlValue::Int(34),
        SqlValue::Float(1.5),
        SqlValue::Text("2.25".into()),
        SqlValue::Numeric("12345678.1234".into()),
        SqlValue::Int(1),
        SqlValue::Text("héllo".into()),
        SqlValue::Int(42),
        SqlValue::Bytes(vec![0, 255]),
        SqlValue::Timestamp(ts),
        SqlValue::Int(1_700_000_000_123),
        SqlValue::Text("2024-02-29".into()),
        SqlValue::Text("23:59:58.5".into()),
        SqlValue::Json("{\"a\": 1}".into()),
        SqlValue::Text("not json".into()),
        SqlValue::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
        SqlValue::Text("happy".into()),
    ];
    let nulls: Vec<SqlValue> = std::iter::once(SqlValue::Int(2))
        .chain(std::iter::once(SqlValue::Null))
        .chain(std::iter::once(SqlValue::Int(0)))
        .chain(std::iter::repeat_n(SqlValue::Null, 15))
        .collect();
    assert_eq!(db.insert_rows(&head, &tail, 18, &[row, nulls]).unwrap(), 2);
    db.execute("UPDATE t SET iv = '1 day' WHERE id = 1", &[]).unwrap();
    let rows = db.query("SELECT * FROM t ORDER BY id", &[]).unwrap();
    let r = &rows.rows[0];
    assert_eq!(r[1], SqlValue::Int(12));
    assert_eq!(r[4], SqlValue::Float(2.25));
    assert_eq!(r[5], SqlValue::Numeric("12345678.1234".into()));
    assert_eq!(r[6], SqlValue::Bool(true));
    assert_eq!(r[8], SqlValue::Text("42".into()));
    assert_eq!(r[9], SqlValue::Bytes(vec![0, 255]));
    assert_eq!(r[10], SqlValue::Timestamp(ts));
    assert_eq!(r[11], SqlValue::Timestamp(1_700_000_000_123_000));
    assert_eq!(r[12].to_json(SqlType::Date).unwrap(), json!(19782));
    assert_eq!(r[13], SqlValue::Time(86_398_500_000));
    assert_eq!(r[14], SqlValue::Json("{\"a\": 1}".into()));
    assert_eq!(r[15], SqlValue::Json("\"not json\"".into()));
    assert_eq!(r[16], SqlValue::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()));
    assert_eq!(r[17], SqlValue::Text("happy".into()));
    assert!(matches!(r[18], SqlValue::Bytes(_)), "an unmapped type comes as its binary form");
    let iv = db.query("SELECT iv::text FROM t WHERE id = 1", &[]).unwrap();
    assert_eq!(iv.rows[0][0], SqlValue::Text("1 day".into()));
    assert!(rows.rows[1].iter().skip(3).all(|v| *v == SqlValue::Null));
    // A value the column cannot take is an error naming both, not a panic.
    let err = db.execute("UPDATE t SET i2 = $1 WHERE id = 1", &[SqlValue::Int(1 << 20)]).unwrap_err();
    assert!(err.to_string().contains("int2"), "{err}");
    // Upsert through the multi-row path updates in place.
    let (head, tail) = Dialect::Postgres.insert_parts("t", &["id", "i4"], &["id"], true);
    let many: Vec<Vec<SqlValue>> = (0..5000).map(|i| vec![SqlValue::Int(i), SqlValue::Int(i * 2)]).collect();
    db.transaction(|db| db.insert_rows(&head, &tail, 2, &many)).unwrap();
    let sum = db.query("SELECT sum(i4)::int8, count(*) FROM t", &[]).unwrap();
    assert_eq!(sum.rows, vec![vec![SqlValue::Int(4999 * 5000), SqlValue::Int(5000)]]);
    let mut cursor = db.cursor("SELECT id FROM t ORDER BY id", 2000).unwrap();
    let mut seen = 0;
    while let Some(chunk) = cursor.next_chunk(&mut db).unwrap() {
        assert!(chunk.rows.len() <= 2000);
        seen += chunk.rows.len();
    }
    assert_eq!(seen, 5000);
    let now = db.now_ms().unwrap();
    let local = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!((now - local).abs() < 5_000);
    assert!(db.is_alive());

    // Transient or not by SQLSTATE, not by words in the message: a missing table named after
    // the old matcher's words is not; the server terminating the backend (57P01) is.
    let missing = db.query("SELECT * FROM connections_closed_timeout", &[]).unwrap_err();
    assert!(!is_transient(&missing), "{missing}");
    let mut other = Database::open(&url, Some(postgres::PG_USER), None).unwrap();
    other.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'types' AND pid <> pg_backend_pid()", &[]).unwrap();
    let gone = db.query("SELECT 1", &[]).unwrap_err();
    assert!(is_transient(&gone), "{gone}");
}

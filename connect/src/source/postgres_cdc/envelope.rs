//! Debezium's change-event envelope, sans IO: PostgreSQL text-format values → JSON with
//! Debezium's default mappings, the Kafka Connect schemas of key and value, and the
//! `{before, after, source, op, ts_ms}` records themselves.
//!
//! Type mapping (Debezium's defaults, with `decimal.handling.mode=string`):
//!
//! | PostgreSQL | JSON | Connect schema |
//! |---|---|---|
//! | `smallint`, `integer`, `bigint`, `oid` | number | `int16`, `int32`, `int64` |
//! | `boolean` | true/false | `boolean` |
//! | `real`, `double precision` | number (`NaN`/`Infinity` as strings) | `float`, `double` |
//! | `numeric`, `money` | string (exact digits) | `string` |
//! | `text`, `varchar`, `char`, `name`, enums, arrays, ranges, … | string (PostgreSQL's text form) | `string` |
//! | `json`, `jsonb` | string | `string` named `io.debezium.data.Json` |
//! | `uuid` | string | `string` named `io.debezium.data.Uuid` |
//! | `bytea` | base64 string | `bytes` |
//! | `date` | days since 1970-01-01 | `int32` named `io.debezium.time.Date` |
//! | `timestamp` | microseconds since the epoch | `int64` named `io.debezium.time.MicroTimestamp` |
//! | `timestamptz` | ISO-8601 string in UTC | `string` named `io.debezium.time.ZonedTimestamp` |
//! | `time` | microseconds since midnight | `int64` named `io.debezium.time.MicroTime` |
//! | `timetz` | string | `string` named `io.debezium.time.ZonedTime` |
//!
//! Values arrive in the text form of a session with `DateStyle=ISO`, `TimeZone=UTC`,
//! `extra_float_digits=3` and `bytea_output=hex` (the task sets them). An unchanged TOASTed
//! value (not in the WAL) becomes Debezium's placeholder `__debezium_unavailable_value`.

use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime};
use serde_json::{json, Map, Value as Json};

use super::pgoutput::Datum;
use crate::record::{ConnectRecord, Value};

/// Debezium's `unavailable.value.placeholder` default.
pub const UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";

/// The Debezium version our events claim in `source.version` (the 2.x envelope).
pub const DEBEZIUM_VERSION: &str = "2.7.0.Final";

/// How a column's text is turned into JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgType {
    Bool,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    /// numeric, money: exact digits as a string.
    Decimal,
    Text,
    Json,
    Uuid,
    Bytea,
    Date,
    Timestamp,
    TimestampTz,
    Time,
    TimeTz,
}

impl PgType {
    /// The mapping of a type OID (built-in OIDs are fixed across PostgreSQL versions).
    pub fn from_oid(oid: u32) -> PgType {
        match oid {
            16 => PgType::Bool,
            21 => PgType::Int16,
            23 => PgType::Int32,
            20 | 26 => PgType::Int64,
            700 => PgType::Float32,
            701 => PgType::Float64,
            1700 | 790 => PgType::Decimal,
            114 | 3802 => PgType::Json,
            2950 => PgType::Uuid,
            17 => PgType::Bytea,
            1082 => PgType::Date,
            1114 => PgType::Timestamp,
            1184 => PgType::TimestampTz,
            1083 => PgType::Time,
            1266 => PgType::TimeTz,
            _ => PgType::Text,
        }
    }

    /// The field's Connect schema (without `field` and `optional`).
    fn schema(self) -> (&'static str, Option<&'static str>) {
        match self {
            PgType::Bool => ("boolean", None),
            PgType::Int16 => ("int16", None),
            PgType::Int32 => ("int32", None),
            PgType::Int64 => ("int64", None),
            PgType::Float32 => ("float", None),
            PgType::Float64 => ("double", None),
            PgType::Decimal | PgType::Text => ("string", None),
            PgType::Json => ("string", Some("io.debezium.data.Json")),
            PgType::Uuid => ("string", Some("io.debezium.data.Uuid")),
            PgType::Bytea => ("bytes", None),
            PgType::Date => ("int32", Some("io.debezium.time.Date")),
            PgType::Timestamp => ("int64", Some("io.debezium.time.MicroTimestamp")),
            PgType::TimestampTz => ("string", Some("io.debezium.time.ZonedTimestamp")),
            PgType::Time => ("int64", Some("io.debezium.time.MicroTime")),
            PgType::TimeTz => ("string", Some("io.debezium.time.ZonedTime")),
        }
    }

    /// PostgreSQL's text output of a value → JSON; the error says what did not parse.
    pub fn to_json(self, text: &str) -> Result<Json, String> {
        let bad = |what: &str| format!("{what} value {text:?} does not parse");
        Ok(match self {
            PgType::Bool => match text {
                "t" | "true" => Json::Bool(true),
                "f" | "false" => Json::Bool(false),
                _ => return Err(bad("boolean")),
            },
            PgType::Int16 | PgType::Int32 | PgType::Int64 => {
                Json::from(text.parse::<i64>().map_err(|_| bad("integer"))?)
            }
            PgType::Float32 | PgType::Float64 => match text.parse::<f64>() {
                Ok(f) if f.is_finite() => Json::from(f),
                // JSON has no NaN or infinities; keep PostgreSQL's spelling.
                Ok(_) => Json::String(text.to_owned()),
                Err(_) => return Err(bad("floating-point")),
            },
            PgType::Decimal | PgType::Text | PgType::Json | PgType::Uuid | PgType::TimeTz => {
                Json::String(text.to_owned())
            }
            PgType::Bytea => {
                let hex = text.strip_prefix("\\x").ok_or_else(|| bad("bytea (expected hex output)"))?;
                Json::String(
                    base64::engine::general_purpose::STANDARD.encode(decode_hex(hex).ok_or_else(|| bad("bytea"))?),
                )
            }
            PgType::Date => match text {
                "infinity" => Json::from(i32::MAX),
                "-infinity" => Json::from(i32::MIN),
                _ => {
                    let d = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| bad("date"))?;
                    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
                    Json::from(d.signed_duration_since(epoch).num_days())
                }
            },
            PgType::Timestamp => match text {
                "infinity" => Json::from(i64::MAX),
                "-infinity" => Json::from(i64::MIN),
                _ => {
                    let t =
                        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").map_err(|_| bad("timestamp"))?;
                    Json::from(t.and_utc().timestamp_micros())
                }
            },
            PgType::TimestampTz => match text {
                "infinity" | "-infinity" => Json::String(text.to_owned()),
                _ => {
                    // `+00` (TimeZone=UTC) is not a form chrono's %z accepts; complete it.
                    let full = if text.len() > 3 && text.as_bytes()[text.len() - 3] == b'+' {
                        format!("{text}:00")
                    } else {
                        text.to_owned()
                    };
                    let t =
                        DateTime::parse_from_str(&full, "%Y-%m-%d %H:%M:%S%.f%:z").map_err(|_| bad("timestamptz"))?;
                    Json::String(t.naive_utc().and_utc().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                }
            },
            PgType::Time => {
                let t = if text == "24:00:00" {
                    86_400_000_000
                } else {
                    let t = NaiveTime::parse_from_str(text, "%H:%M:%S%.f").map_err(|_| bad("time"))?;
                    t.signed_duration_since(NaiveTime::MIN).num_microseconds().unwrap_or(0)
                };
                Json::from(t)
            }
        })
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    hex.as_bytes().chunks(2).map(|p| Some(nib(p[0])? << 4 | nib(p[1])?)).collect()
}

/// A captured table: its topic, columns and the schemas of its events.
#[derive(Debug, Clone)]
pub struct Table {
    pub schema: String,
    pub name: String,
    pub topic: Arc<str>,
    pub columns: Vec<(String, PgType)>,
    /// Positions of the primary key columns (the record key); empty: null keys.
    pub key: Vec<usize>,
    pub key_schema: Option<Arc<Json>>,
    pub value_schema: Arc<Json>,
}

impl Table {
    /// A table with Debezium's schema names (`<prefix>.<schema>.<table>.Key`/`.Value`/`.Envelope`).
    pub fn new(prefix: &str, schema: &str, name: &str, columns: Vec<(String, PgType)>, key: Vec<usize>) -> Table {
        let topic = format!("{prefix}.{schema}.{name}");
        let field = |(n, t): &(String, PgType), optional: bool| {
            let (ty, logical) = t.schema();
            let mut f = json!({"type": ty, "optional": optional, "field": n});
            if let Some(l) = logical {
                f["name"] = json!(l);
                f["version"] = json!(1);
            }
            f
        };
        let row = json!({
            "type": "struct",
            "fields": columns.iter().map(|c| field(c, true)).collect::<Vec<_>>(),
            "optional": true,
            "name": format!("{topic}.Value"),
        });
        let mut before = row.clone();
        before["field"] = json!("before");
        let mut after = row;
        after["field"] = json!("after");
        let value_schema = json!({
            "type": "struct",
            "fields": [before, after, source_schema(), {"type": "string", "optional": false, "field": "op"},
                {"type": "int64", "optional": true, "field": "ts_ms"}],
            "optional": false,
            "name": format!("{topic}.Envelope"),
            "version": 1,
        });
        let key_schema = (!key.is_empty()).then(|| {
            Arc::new(json!({
                "type": "struct",
                "fields": key.iter().map(|&i| field(&columns[i], false)).collect::<Vec<_>>(),
                "optional": false,
                "name": format!("{topic}.Key"),
            }))
        });
        Table {
            schema: schema.to_owned(),
            name: name.to_owned(),
            topic: Arc::from(topic),
            columns,
            key,
            key_schema,
            value_schema: Arc::new(value_schema),
        }
    }

    /// A row's values as a JSON object (the `before`/`after` struct). Columns the tuple lacks
    /// (a relation that gained columns) are null.
    pub fn row(&self, datums: &[Datum<'_>]) -> Result<Json, String> {
        let mut m = Map::with_capacity(self.columns.len());
        for (i, (name, ty)) in self.columns.iter().enumerate() {
            let v = match datums.get(i).copied().unwrap_or(Datum::Null) {
                Datum::Null => Json::Null,
                // A `bytes` field must hold base64: Debezium emits the placeholder's bytes.
                Datum::UnchangedToast if *ty == PgType::Bytea => {
                    Json::String(base64::engine::general_purpose::STANDARD.encode(UNAVAILABLE_VALUE))
                }
                Datum::UnchangedToast => Json::String(UNAVAILABLE_VALUE.to_owned()),
                Datum::Text(b) => {
                    let s = std::str::from_utf8(b).map_err(|_| format!("column {name} is not UTF-8"))?;
                    ty.to_json(s).map_err(|e| format!("column {name}: {e}"))?
                }
            };
            m.insert(name.clone(), v);
        }
        Ok(Json::Object(m))
    }

    /// The record key from a row object: the primary key columns, or null without one.
    pub fn key_of(&self, row: &Json) -> Option<Json> {
        if self.key.is_empty() {
            return None;
        }
        let mut m = Map::with_capacity(self.key.len());
        for &i in &self.key {
            let name = &self.columns[i].0;
            m.insert(name.clone(), row.get(name).cloned().unwrap_or(Json::Null));
        }
        Some(Json::Object(m))
    }
}

/// Debezium's `io.debezium.connector.postgresql.Source` schema.
fn source_schema() -> Json {
    let f = |name: &str, ty: &str, optional: bool| json!({"type": ty, "optional": optional, "field": name});
    let mut snapshot = f("snapshot", "string", true);
    snapshot["name"] = json!("io.debezium.data.Enum");
    snapshot["version"] = json!(1);
    snapshot["parameters"] = json!({"allowed": "true,last,false,incremental"});
    snapshot["default"] = json!("false");
    json!({
        "type": "struct",
        "fields": [
            f("version", "string", false), f("connector", "string", false), f("name", "string", false),
            f("ts_ms", "int64", false), snapshot, f("db", "string", false), f("sequence", "string", true),
            f("schema", "string", false), f("table", "string", false), f("txId", "int64", true),
            f("lsn", "int64", true), f("xmin", "int64", true),
        ],
        "optional": false,
        "name": "io.debezium.connector.postgresql.Source",
        "field": "source",
    })
}

/// Where an event comes from: the `source` block's per-transaction part.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    /// `topic.prefix` (Debezium's logical server name).
    pub server: &'a str,
    pub db: &'a str,
    /// Commit time (streaming) or snapshot time, ms since the epoch.
    pub ts_ms: i64,
    /// `"true"`, `"last"` or `"false"`.
    pub snapshot: &'a str,
    pub tx_id: Option<i64>,
    /// The LSN of the previous commit, for `sequence`.
    pub last_commit_lsn: Option<u64>,
}

/// The `source` block of one event at `lsn`.
pub fn source(o: &Origin<'_>, table: &Table, lsn: Option<u64>) -> Json {
    let sequence = lsn.map(|l| {
        let last = o.last_commit_lsn.map_or("null".to_owned(), |c| format!("\"{c}\""));
        format!("[{last},\"{l}\"]")
    });
    json!({
        "version": DEBEZIUM_VERSION,
        "connector": "postgresql",
        "name": o.server,
        "ts_ms": o.ts_ms,
        "snapshot": o.snapshot,
        "db": o.db,
        "sequence": sequence,
        "schema": table.schema,
        "table": table.name,
        "txId": o.tx_id,
        "lsn": lsn,
        "xmin": null,
    })
}

/// A change event record. `op`: `r`, `c`, `u`, `d` or `t`; `key` as [`Table::key_of`].
pub fn event(
    table: &Table,
    op: &str,
    key: Option<Json>,
    before: Option<Json>,
    after: Option<Json>,
    source: Json,
    now_ms: i64,
) -> ConnectRecord {
    let value = json!({
        "before": before,
        "after": after,
        "source": source,
        "op": op,
        "ts_ms": now_ms,
    });
    let mut r = ConnectRecord::new(table.topic.clone(), Some(Value::Json(value)));
    r.key = key.map(Value::Json);
    r.key_schema = table.key_schema.clone();
    r.value_schema = Some(table.value_schema.clone());
    r
}

/// The tombstone that follows a delete (so compaction can drop the key).
pub fn tombstone(table: &Table, key: Option<Json>) -> ConnectRecord {
    let mut r = ConnectRecord::new(table.topic.clone(), None);
    r.key = key.map(Value::Json);
    r.key_schema = table.key_schema.clone();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table::new(
            "srv",
            "public",
            "users",
            vec![("id".into(), PgType::Int32), ("name".into(), PgType::Text), ("born".into(), PgType::Date)],
            vec![0],
        )
    }

    #[test]
    fn values_map_as_debezium_does() {
        assert_eq!(PgType::Int64.to_json("-9000000000").unwrap(), json!(-9_000_000_000i64));
        assert_eq!(PgType::Bool.to_json("t").unwrap(), json!(true));
        assert_eq!(PgType::Float64.to_json("1.5").unwrap(), json!(1.5));
        assert_eq!(PgType::Float64.to_json("NaN").unwrap(), json!("NaN"));
        assert_eq!(PgType::Decimal.to_json("12345678901234567890.01").unwrap(), json!("12345678901234567890.01"));
        assert_eq!(PgType::Date.to_json("1970-01-11").unwrap(), json!(10));
        assert_eq!(PgType::Date.to_json("1969-12-31").unwrap(), json!(-1));
        assert_eq!(PgType::Timestamp.to_json("1970-01-01 00:00:01.5").unwrap(), json!(1_500_000));
        assert_eq!(PgType::Timestamp.to_json("2024-01-02 03:04:05").unwrap(), json!(1_704_164_645_000_000i64));
        assert_eq!(
            PgType::TimestampTz.to_json("2024-01-02 03:04:05.25+00").unwrap(),
            json!("2024-01-02T03:04:05.250Z")
        );
        assert_eq!(PgType::TimestampTz.to_json("2024-01-02 03:04:05+05:30").unwrap(), json!("2024-01-01T21:34:05Z"));
        assert_eq!(PgType::Time.to_json("00:00:01.000002").unwrap(), json!(1_000_002));
        assert_eq!(PgType::Bytea.to_json("\\x0102ff").unwrap(), json!("AQL/"));
        assert_eq!(PgType::Json.to_json("{\"a\": 1}").unwrap(), json!("{\"a\": 1}"));
        assert!(PgType::Int32.to_json("x").unwrap_err().contains("integer"));
        assert!(PgType::Bytea.to_json("\\x0").is_err());
        assert_eq!(PgType::from_oid(23), PgType::Int32);
        assert_eq!(PgType::from_oid(99999), PgType::Text);
    }

    #[test]
    fn rows_keys_and_the_envelope() {
        let t = table();
        let row = t.row(&[Datum::Text(b"7"), Datum::UnchangedToast, Datum::Null]).unwrap();
        assert_eq!(row, json!({"id": 7, "name": UNAVAILABLE_VALUE, "born": null}));
        // An unchanged TOASTed bytea: the placeholder's bytes, base64 (valid for `bytes`).
        let blob = Table::new("srv", "public", "b", vec![("data".into(), PgType::Bytea)], vec![]);
        let blob_row = blob.row(&[Datum::UnchangedToast]).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.decode(blob_row["data"].as_str().unwrap()).unwrap();
        assert_eq!(b64, UNAVAILABLE_VALUE.as_bytes());
        // A tuple with fewer columns than the relation (a column added later) pads with nulls.
        assert_eq!(t.row(&[Datum::Text(b"8")]).unwrap(), json!({"id": 8, "name": null, "born": null}));
        assert!(t.row(&[Datum::Text(b"x")]).unwrap_err().contains("column id"));
        let key = t.key_of(&row);
        assert_eq!(key, Some(json!({"id": 7})));
        let origin = Origin {
            server: "srv",
            db: "app",
            ts_ms: 1000,
            snapshot: "false",
            tx_id: Some(42),
            last_commit_lsn: Some(100),
        };
        let src = source(&origin, &t, Some(200));
        assert_eq!(src["sequence"], json!("[\"100\",\"200\"]"));
        let r = event(&t, "c", key.clone(), None, Some(row.clone()), src, 5);
        assert_eq!(&*r.topic, "srv.public.users");
        let Some(Value::Json(v)) = &r.value else { panic!() };
        assert_eq!(v["op"], "c");
        assert_eq!(v["before"], Json::Null);
        assert_eq!(v["after"], row);
        assert_eq!(v["source"]["connector"], "postgresql");
        assert_eq!(v["source"]["txId"], 42);
        assert_eq!(v["source"]["lsn"], 200);
        assert_eq!(v["source"]["table"], "users");
        let schema = r.value_schema.as_deref().unwrap();
        assert_eq!(schema["name"], "srv.public.users.Envelope");
        assert_eq!(schema["fields"][0]["name"], "srv.public.users.Value");
        assert_eq!(schema["fields"][1]["fields"][2]["name"], "io.debezium.time.Date");
        assert_eq!(r.key_schema.as_deref().unwrap()["name"], "srv.public.users.Key");
        let t2 = tombstone(&t, key);
        assert!(t2.value.is_none());
        assert_eq!(t2.key, Some(Value::Json(json!({"id": 7}))));
        // No primary key: null keys and no key schema.
        let nokey = Table::new("srv", "public", "log", vec![("msg".into(), PgType::Text)], vec![]);
        assert!(nokey.key_of(&json!({"msg": "x"})).is_none());
        assert!(nokey.key_schema.is_none());
    }
}

//! [`SqlValue`] and its mappings to JSON and to Kafka Connect schemas (the table in the module
//! docs of [`crate::jdbc`]).

use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use serde_json::{json, Map, Value as Json};

use super::{Column, SqlType};

/// One cell, as read from or written to a database.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// An exact decimal as text (`-12.3400`).
    Numeric(String),
    Text(String),
    Bytes(Vec<u8>),
    /// Microseconds since the Unix epoch, UTC.
    Timestamp(i64),
    /// Days since the Unix epoch.
    Date(i32),
    /// Microseconds since midnight.
    Time(i64),
    /// A JSON document as text.
    Json(String),
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

impl SqlValue {
    /// The type a value has on its own (for columns of unknown type).
    pub fn natural_type(&self) -> SqlType {
        match self {
            SqlValue::Null => SqlType::Unknown,
            SqlValue::Bool(_) => SqlType::Bool,
            SqlValue::Int(_) => SqlType::Int64,
            SqlValue::Float(_) => SqlType::Float64,
            SqlValue::Numeric(_) => SqlType::Numeric,
            SqlValue::Text(_) => SqlType::Text,
            SqlValue::Bytes(_) => SqlType::Bytes,
            SqlValue::Timestamp(_) => SqlType::Timestamp,
            SqlValue::Date(_) => SqlType::Date,
            SqlValue::Time(_) => SqlType::Time,
            SqlValue::Json(_) => SqlType::Json,
        }
    }

    /// The value as JSON for a column of type `ty` (see the mapping table). A value that does
    /// not fit the column's type (SQLite lets a TEXT sit in an INTEGER column) is an error that
    /// names both, for the dead-letter topic.
    pub fn to_json(&self, ty: SqlType) -> Result<Json, String> {
        let bad = || format!("value {} does not fit a column of type {ty:?}", self.describe());
        Ok(match (ty, self) {
            (_, SqlValue::Null) => Json::Null,
            (SqlType::Bool, SqlValue::Bool(b)) => Json::Bool(*b),
            (SqlType::Bool, SqlValue::Int(i)) => Json::Bool(*i != 0),
            (SqlType::Int16, SqlValue::Int(i)) if i16::try_from(*i).is_ok() => json!(i),
            (SqlType::Int32, SqlValue::Int(i)) if i32::try_from(*i).is_ok() => json!(i),
            (SqlType::Int64, SqlValue::Int(i)) => json!(i),
            (SqlType::Int16 | SqlType::Int32 | SqlType::Int64, SqlValue::Bool(b)) => json!(i64::from(*b)),
            (SqlType::Float32 | SqlType::Float64, SqlValue::Float(f)) => float_json(*f),
            (SqlType::Float32 | SqlType::Float64, SqlValue::Int(i)) => float_json(*i as f64),
            (SqlType::Numeric, SqlValue::Numeric(s)) => Json::String(s.clone()),
            (SqlType::Numeric, SqlValue::Int(i)) => Json::String(i.to_string()),
            (SqlType::Numeric, SqlValue::Float(f)) if f.is_finite() => Json::String(f.to_string()),
            (SqlType::Text | SqlType::Json, SqlValue::Text(s) | SqlValue::Json(s) | SqlValue::Numeric(s)) => {
                Json::String(s.clone())
            }
            (SqlType::Text, SqlValue::Int(i)) => Json::String(i.to_string()),
            (SqlType::Text, SqlValue::Float(f)) => Json::String(f.to_string()),
            (SqlType::Text, SqlValue::Bool(b)) => Json::String(b.to_string()),
            (SqlType::Text, SqlValue::Timestamp(t)) => Json::String(format_timestamp_micros(*t)),
            (SqlType::Text, SqlValue::Date(d)) => Json::String(format_date(*d)),
            (SqlType::Text, SqlValue::Time(t)) => Json::String(format_time(*t)),
            // UTF-8 bytes (SQLite lets a BLOB sit in a typeless column next to text) are text.
            (SqlType::Text, SqlValue::Bytes(b)) if std::str::from_utf8(b).is_ok() => {
                Json::String(String::from_utf8_lossy(b).into_owned())
            }
            (SqlType::Bytes, SqlValue::Bytes(b)) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
            (SqlType::Bytes, SqlValue::Text(s)) => {
                Json::String(base64::engine::general_purpose::STANDARD.encode(s.as_bytes()))
            }
            (SqlType::Timestamp, SqlValue::Timestamp(t)) => json!(t.div_euclid(1000)),
            (SqlType::Timestamp, SqlValue::Date(d)) => json!(i64::from(*d) * 86_400_000),
            (SqlType::Date, SqlValue::Date(d)) => json!(d),
            (SqlType::Date, SqlValue::Timestamp(t)) => json!(t.div_euclid(MICROS_PER_DAY)),
            (SqlType::Time, SqlValue::Time(t)) => json!(t.div_euclid(1000)),
            (SqlType::Unknown, v) => return v.to_json(v.natural_type()),
            _ => return Err(bad()),
        })
    }

    /// A JSON value as a database value. `schema` is the field's Kafka Connect schema when the
    /// record carried one (`schemas.enable`): it turns logical types back into their SQL form
    /// (`Timestamp` ms → [`SqlValue::Timestamp`], `Date` days, `Time` ms, `Decimal` base64
    /// bytes with `scale` → [`SqlValue::Numeric`], `bytes` base64 → [`SqlValue::Bytes`]).
    /// Without one: null, booleans, integers (beyond i64: numeric), floats and strings map to
    /// themselves, objects and arrays to [`SqlValue::Json`].
    pub fn from_json(value: &Json, schema: Option<&Json>) -> Result<SqlValue, String> {
        if value.is_null() {
            return Ok(SqlValue::Null);
        }
        if let Some(schema) = schema {
            let name = schema.get("name").and_then(Json::as_str).unwrap_or("");
            let ty = schema.get("type").and_then(Json::as_str).unwrap_or("");
            match name {
                "org.apache.kafka.connect.data.Timestamp" => {
                    return match value {
                        Json::Number(n) => n
                            .as_i64()
                            .and_then(|ms| ms.checked_mul(1000))
                            .map(SqlValue::Timestamp)
                            .ok_or_else(|| format!("timestamp {n} is not whole milliseconds in range")),
                        Json::String(s) => parse_timestamp_micros(s).map(SqlValue::Timestamp),
                        other => Err(format!("timestamp field holds {other}")),
                    }
                }
                "org.apache.kafka.connect.data.Date" => {
                    return value
                        .as_i64()
                        .and_then(|d| i32::try_from(d).ok())
                        .map(SqlValue::Date)
                        .ok_or_else(|| format!("date field holds {value}, not epoch days"));
                }
                "org.apache.kafka.connect.data.Time" => {
                    return value
                        .as_i64()
                        .filter(|ms| (0..86_400_000).contains(ms))
                        .map(|ms| SqlValue::Time(ms * 1000))
                        .ok_or_else(|| format!("time field holds {value}, not milliseconds of the day"));
                }
                "org.apache.kafka.connect.data.Decimal" => {
                    let scale = schema
                        .get("parameters")
                        .and_then(|p| p.get("scale"))
                        .and_then(|s| s.as_str().and_then(|s| s.parse::<u32>().ok()).or(s.as_u64().map(|v| v as u32)))
                        .unwrap_or(0);
                    return match value {
                        Json::String(s) => decode_connect_decimal(s, scale).map(SqlValue::Numeric),
                        Json::Number(n) => Ok(SqlValue::Numeric(n.to_string())),
                        other => Err(format!("decimal field holds {other}")),
                    };
                }
                _ => {}
            }
            if ty == "bytes" {
                return match value {
                    Json::String(s) => base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map(SqlValue::Bytes)
                        .map_err(|e| format!("bytes field is not base64: {e}")),
                    other => Err(format!("bytes field holds {other}")),
                };
            }
        }
        Ok(match value {
            Json::Null => SqlValue::Null,
            Json::Bool(b) => SqlValue::Bool(*b),
            Json::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => SqlValue::Int(i),
                (None, _) if n.is_u64() => SqlValue::Numeric(n.to_string()),
                (None, Some(f)) => SqlValue::Float(f),
                (None, None) => SqlValue::Numeric(n.to_string()),
            },
            Json::String(s) => SqlValue::Text(s.clone()),
            Json::Array(_) | Json::Object(_) => SqlValue::Json(value.to_string()),
        })
    }

    /// A short description for error messages (values cut at 64 characters).
    pub fn describe(&self) -> String {
        let mut s = format!("{self:?}");
        if s.len() > 64 {
            let cut = (0..=64).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
            s.truncate(cut);
            s.push('…');
        }
        s
    }
}

fn float_json(f: f64) -> Json {
    // JSON has no NaN or infinities; JsonConverter readers take these strings back.
    serde_json::Number::from_f64(f).map(Json::Number).unwrap_or_else(|| {
        Json::String(
            if f.is_nan() {
                "NaN"
            } else if f > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            }
            .to_owned(),
        )
    })
}

/// Connect's `Decimal` is the unscaled value as big-endian two's-complement bytes, base64.
fn decode_connect_decimal(b64: &str, scale: u32) -> Result<String, String> {
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("decimal is not base64: {e}"))?;
    if bytes.is_empty() || bytes.len() > 16 {
        return Err(format!("decimal of {} bytes is out of range (1 to 16)", bytes.len()));
    }
    let mut unscaled: i128 = if bytes[0] & 0x80 != 0 { -1 } else { 0 };
    for b in bytes {
        unscaled = (unscaled << 8) | i128::from(b);
    }
    let negative = unscaled < 0;
    let digits = unscaled.unsigned_abs().to_string();
    let scale = scale as usize;
    let text = if scale == 0 {
        digits
    } else if digits.len() > scale {
        format!("{}.{}", &digits[..digits.len() - scale], &digits[digits.len() - scale..])
    } else {
        format!("0.{}{digits}", "0".repeat(scale - digits.len()))
    };
    Ok(if negative { format!("-{text}") } else { text })
}

/// Parses `YYYY-MM-DD HH:MM:SS[.ffffff]` (or with `T`), optionally ending in `Z` or an offset,
/// or a bare `YYYY-MM-DD`; UTC unless an offset says otherwise. Microseconds since the epoch.
pub fn parse_timestamp_micros(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.timestamp_micros());
    }
    let bare = t.strip_suffix('Z').or_else(|| t.strip_suffix("+00:00")).or_else(|| t.strip_suffix("+00")).unwrap_or(t);
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(bare, fmt) {
            return Ok(dt.and_utc().timestamp_micros());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(bare, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).map(|dt| dt.and_utc().timestamp_micros()).unwrap_or(0));
    }
    if let Ok(dt) = DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Ok(dt.timestamp_micros());
    }
    Err(format!("{t:?} is not a timestamp (expected YYYY-MM-DD HH:MM:SS[.ffffff], UTC)"))
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` (UTC) for microseconds since the epoch.
pub fn format_timestamp_micros(micros: i64) -> String {
    match DateTime::from_timestamp_micros(micros) {
        Some(dt) => dt.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        None => micros.to_string(),
    }
}

/// `YYYY-MM-DD` for days since the epoch.
pub(crate) fn format_date(days: i32) -> String {
    NaiveDate::from_ymd_opt(1970, 1, 1)
        .and_then(|e| e.checked_add_signed(chrono::Duration::days(i64::from(days))))
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| days.to_string())
}

/// Days since the epoch of `YYYY-MM-DD`.
pub(crate) fn parse_date(s: &str) -> Option<i32> {
    let d = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()?;
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
    i32::try_from((d - epoch).num_days()).ok()
}

/// `HH:MM:SS.ffffff` for microseconds since midnight.
pub(crate) fn format_time(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    format!("{:02}:{:02}:{:02}.{frac:06}", secs / 3600, (secs / 60) % 60, secs % 60)
}

/// Microseconds since midnight of `HH:MM:SS[.ffffff]`.
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    let t = NaiveTime::parse_from_str(s.trim(), "%H:%M:%S%.f").ok()?;
    Some(i64::from(t.num_seconds_from_midnight()) * 1_000_000 + i64::from(t.nanosecond() / 1000))
}

/// The Kafka Connect schema (JsonConverter's JSON form) of one column, as a struct field.
pub fn connect_schema(column: &Column) -> Json {
    let (ty, name) = match column.sql_type {
        SqlType::Bool => ("boolean", None),
        SqlType::Int16 => ("int16", None),
        SqlType::Int32 => ("int32", None),
        SqlType::Int64 => ("int64", None),
        // JsonConverter's names (Schema.Type FLOAT32/FLOAT64 are written "float"/"double").
        SqlType::Float32 => ("float", None),
        SqlType::Float64 => ("double", None),
        SqlType::Numeric | SqlType::Text | SqlType::Unknown => ("string", None),
        SqlType::Bytes => ("bytes", None),
        SqlType::Timestamp => ("int64", Some("org.apache.kafka.connect.data.Timestamp")),
        SqlType::Date => ("int32", Some("org.apache.kafka.connect.data.Date")),
        SqlType::Time => ("int32", Some("org.apache.kafka.connect.data.Time")),
        SqlType::Json => ("string", Some("io.debezium.data.Json")),
    };
    let mut m = Map::new();
    m.insert("type".into(), json!(ty));
    m.insert("optional".into(), json!(column.nullable));
    if let Some(n) = name {
        m.insert("name".into(), json!(n));
        m.insert("version".into(), json!(1));
    }
    m.insert("field".into(), json!(column.name));
    Json::Object(m)
}

/// The struct schema of a row of `columns`, named `name` (Kafka Connect JDBC names it after
/// the table).
pub fn struct_schema(name: &str, columns: &[Column]) -> Json {
    json!({
        "type": "struct",
        "fields": columns.iter().map(connect_schema).collect::<Vec<_>>(),
        "optional": false,
        "name": name,
    })
}

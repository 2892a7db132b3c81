//! Record → row: which columns a record writes, with which values and types (sans-IO).
//!
//! A record's value is a JSON object (a struct), with or without a Kafka Connect schema
//! (`record.value_schema`, present when `JsonConverter` has `schemas.enable=true` or a source
//! gave one). With a schema, the columns are the schema's fields in its order and the types
//! come from it (logical `Timestamp`, `Date`, `Time` and `Decimal` included); without one, the
//! columns are the object's keys and the types are inferred from the JSON values. The primary
//! key columns come first, per `pk.mode`: the Kafka coordinates, the record key's fields (or the
//! key itself when it is a primitive) or fields of the value.

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Map, Value as Json};

use crate::record::{ConnectRecord, Value};

/// Kafka Connect's logical type names.
const LOGICAL_TIMESTAMP: &str = "org.apache.kafka.connect.data.Timestamp";
const LOGICAL_DATE: &str = "org.apache.kafka.connect.data.Date";
const LOGICAL_TIME: &str = "org.apache.kafka.connect.data.Time";
const LOGICAL_DECIMAL: &str = "org.apache.kafka.connect.data.Decimal";

/// The largest decimal (unscaled bytes) converted; wider ones go to the dead-letter queue.
const DECIMAL_BYTES_MAX: usize = 16;
/// Largest |scale| of a Connect `Decimal` converted (PostgreSQL's NUMERIC declares at most 1000).
const DECIMAL_SCALE_MAX: u32 = 1000;

/// A column type: what `auto.create`/`auto.evolve` declare and what values are coerced to
/// before a PostgreSQL statement (whose array parameters must each have one element type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SqlType {
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Boolean,
    Text,
    Bytes,
    /// Milliseconds since the epoch, written as UTC.
    Timestamp,
    Date,
    Time,
    Decimal,
    /// Nested objects and arrays (PostgreSQL `JSONB`, SQLite `TEXT`).
    Json,
    /// A database type the sink has no mapping for: values are sent as text and cast to it.
    Other(String),
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
    Bytes(Vec<u8>),
    TimestampMs(i64),
    DateDays(i32),
    TimeMs(i64),
    /// A decimal number as text (exact).
    Decimal(String),
    /// JSON text of a nested object or array.
    Json(String),
}

impl Cell {
    /// The column type a value of this kind gets when its column is created without a schema.
    pub(crate) fn inferred_type(&self) -> Option<SqlType> {
        Some(match self {
            Cell::Null => return None,
            Cell::Int(_) => SqlType::Int64,
            Cell::Float(_) => SqlType::Float64,
            Cell::Bool(_) => SqlType::Boolean,
            Cell::Text(_) => SqlType::Text,
            Cell::Bytes(_) => SqlType::Bytes,
            Cell::TimestampMs(_) => SqlType::Timestamp,
            Cell::DateDays(_) => SqlType::Date,
            Cell::TimeMs(_) => SqlType::Time,
            Cell::Decimal(_) => SqlType::Decimal,
            Cell::Json(_) => SqlType::Json,
        })
    }

    /// Appends a byte encoding of the value that is equal exactly when the values are (the
    /// per-key deduplication of a batch hashes primary keys this way).
    pub(crate) fn encode_key(&self, out: &mut Vec<u8>) {
        let (tag, bytes): (u8, &[u8]) = match self {
            Cell::Null => (0, &[]),
            Cell::Int(v) | Cell::TimestampMs(v) | Cell::TimeMs(v) => {
                out.push(1);
                out.extend_from_slice(&v.to_be_bytes());
                return;
            }
            Cell::DateDays(v) => {
                out.push(1);
                out.extend_from_slice(&i64::from(*v).to_be_bytes());
                return;
            }
            Cell::Float(v) => {
                out.push(2);
                out.extend_from_slice(&v.to_bits().to_be_bytes());
                return;
            }
            Cell::Bool(b) => (3, if *b { &[1] } else { &[0] }),
            Cell::Text(s) | Cell::Decimal(s) | Cell::Json(s) => (4, s.as_bytes()),
            Cell::Bytes(b) => (5, b),
        };
        out.push(tag);
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(bytes);
    }

    /// The value coerced to a column of type `ty`, or why it cannot be. Text-transported types
    /// (timestamps given as strings, decimals, unknown types) stay text: the database parses
    /// them and refuses bad ones.
    pub(crate) fn coerce(self, ty: &SqlType) -> Result<Cell, String> {
        use Cell as C;
        let bad = |c: &Cell| Err(format!("a {} value does not fit a {ty:?} column", c.kind_name()));
        Ok(match (ty, self) {
            (_, C::Null) => C::Null,
            (SqlType::Int16 | SqlType::Int32 | SqlType::Int64, c) => {
                let v = match c {
                    C::Int(v) => v,
                    C::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => f as i64,
                    C::Bool(b) => i64::from(b),
                    C::Text(ref s) | C::Decimal(ref s) => match s.trim().parse::<i64>() {
                        Ok(v) => v,
                        Err(_) => return Err(format!("{s:?} is not an integer")),
                    },
                    other => return bad(&other),
                };
                let (min, max) = match ty {
                    SqlType::Int16 => (i64::from(i16::MIN), i64::from(i16::MAX)),
                    SqlType::Int32 => (i64::from(i32::MIN), i64::from(i32::MAX)),
                    _ => (i64::MIN, i64::MAX),
                };
                if v < min || v > max {
                    return Err(format!("{v} is out of range for a {ty:?} column"));
                }
                C::Int(v)
            }
            (SqlType::Float32 | SqlType::Float64, c) => match c {
                C::Float(f) => C::Float(f),
                C::Int(v) => C::Float(v as f64),
                C::Text(ref s) | C::Decimal(ref s) => match s.trim().parse::<f64>() {
                    Ok(v) => C::Float(v),
                    Err(_) => return Err(format!("{s:?} is not a number")),
                },
                other => return bad(&other),
            },
            (SqlType::Boolean, c) => match c {
                C::Bool(b) => C::Bool(b),
                C::Int(0) => C::Bool(false),
                C::Int(1) => C::Bool(true),
                C::Text(ref s) if s.eq_ignore_ascii_case("true") => C::Bool(true),
                C::Text(ref s) if s.eq_ignore_ascii_case("false") => C::Bool(false),
                other => return bad(&other),
            },
            (SqlType::Text, c) => C::Text(match c {
                C::Text(s) | C::Decimal(s) | C::Json(s) => s,
                C::Int(v) => v.to_string(),
                C::Float(f) => f.to_string(),
                C::Bool(b) => b.to_string(),
                C::Bytes(b) => base64::engine::general_purpose::STANDARD.encode(b),
                C::TimestampMs(ms) => timestamp_text(ms)?,
                C::DateDays(d) => date_text(d)?,
                C::TimeMs(ms) => time_text(ms)?,
                C::Null => unreachable!("matched above"),
            }),
            (SqlType::Bytes, c) => match c {
                C::Bytes(b) => C::Bytes(b),
                C::Text(s) => C::Bytes(s.into_bytes()),
                other => return bad(&other),
            },
            (SqlType::Timestamp, c) => match c {
                C::TimestampMs(ms) | C::Int(ms) => C::TimestampMs(ms),
                C::Text(s) => C::Text(s),
                other => return bad(&other),
            },
            (SqlType::Date, c) => match c {
                C::DateDays(d) => C::DateDays(d),
                C::TimestampMs(ms) => C::DateDays(ms.div_euclid(86_400_000) as i32),
                C::Text(s) => C::Text(s),
                other => return bad(&other),
            },
            (SqlType::Time, c) => match c {
                C::TimeMs(ms) => C::TimeMs(ms),
                C::Text(s) => C::Text(s),
                other => return bad(&other),
            },
            (SqlType::Decimal, c) => match c {
                C::Decimal(s) | C::Text(s) => C::Decimal(s),
                C::Int(v) => C::Decimal(v.to_string()),
                C::Float(f) if f.is_finite() => C::Decimal(f.to_string()),
                other => return bad(&other),
            },
            (SqlType::Json, c) => C::Json(match c {
                C::Json(s) => s,
                C::Text(s) => Json::String(s).to_string(),
                C::Int(v) => v.to_string(),
                C::Float(f) => serde_json::Number::from_f64(f).map_or("null".to_owned(), |n| n.to_string()),
                C::Bool(b) => b.to_string(),
                C::Decimal(s) => s,
                other => return bad(&other),
            }),
            (SqlType::Other(_), c) => match c {
                // Kinds PostgreSQL casts from text; the cast to the column's type does the rest.
                C::Bytes(b) => C::Bytes(b),
                other => C::Text(other.coerce(&SqlType::Text)?.into_text()),
            },
        })
    }

    fn into_text(self) -> String {
        match self {
            Cell::Text(s) => s,
            _ => String::new(),
        }
    }

    fn kind_name(&self) -> &'static str {
        match self {
            Cell::Null => "null",
            Cell::Int(_) => "integer",
            Cell::Float(_) => "floating-point",
            Cell::Bool(_) => "boolean",
            Cell::Text(_) => "string",
            Cell::Bytes(_) => "bytes",
            Cell::TimestampMs(_) => "timestamp",
            Cell::DateDays(_) => "date",
            Cell::TimeMs(_) => "time",
            Cell::Decimal(_) => "decimal",
            Cell::Json(_) => "nested JSON",
        }
    }
}

/// `2024-01-02 03:04:05.678` (UTC): what both PostgreSQL and SQLite's date functions read.
pub(crate) fn timestamp_text(ms: i64) -> Result<String, String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .ok_or_else(|| format!("timestamp {ms} ms is out of range"))
}

/// `2024-01-02` from days since the epoch.
pub(crate) fn date_text(days: i32) -> Result<String, String> {
    chrono::DateTime::from_timestamp(i64::from(days) * 86_400, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .ok_or_else(|| format!("date {days} days is out of range"))
}

/// `03:04:05.678` from milliseconds since midnight.
pub(crate) fn time_text(ms: i64) -> Result<String, String> {
    if !(0..86_400_000).contains(&ms) {
        return Err(format!("time {ms} ms is not within a day"));
    }
    Ok(format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000))
}

/// The columns a row writes: the primary key's first (`pk_len` of them), then the value's.
/// Shared by every row of the same shape, so a batch of same-shaped records allocates it once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Columns {
    pub(crate) names: Vec<String>,
    /// From the schema when there is one; `None`: inferred from the values.
    pub(crate) types: Vec<Option<SqlType>>,
    pub(crate) pk_len: usize,
}

/// One row: values in the order of its [`Columns`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) cols: Arc<Columns>,
    pub(crate) cells: Vec<Cell>,
}

impl Row {
    /// The primary key's values.
    pub(crate) fn pk(&self) -> &[Cell] {
        &self.cells[..self.cols.pk_len]
    }

    /// The byte form of the primary key (for deduplication).
    pub(crate) fn key_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * self.cols.pk_len);
        for c in self.pk() {
            c.encode_key(&mut out);
        }
        out
    }
}

/// What a record asks of the table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    /// Insert, upsert or update the row (per `insert.mode`).
    Write(Row),
    /// Delete by primary key (a tombstone with `delete.enabled`); the row holds the key only.
    Delete(Row),
}

impl Op {
    pub(crate) fn row(&self) -> &Row {
        match self {
            Op::Write(r) | Op::Delete(r) => r,
        }
    }

    pub(crate) fn row_mut(&mut self) -> &mut Row {
        match self {
            Op::Write(r) | Op::Delete(r) => r,
        }
    }
}

/// `pk.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PkMode {
    None,
    Kafka,
    RecordKey,
    RecordValue,
}

/// Turns records into [`Op`]s. Keeps the last column set so same-shaped records share it.
#[derive(Debug)]
pub(crate) struct RowMapper {
    pk_mode: PkMode,
    /// `pk.fields` (for `kafka`, the three column names, defaulted).
    pk_fields: Vec<String>,
    /// `fields.whitelist` (empty: every field).
    whitelist: Vec<String>,
    delete_enabled: bool,
    last: Option<Arc<Columns>>,
}

/// Scratch of one record's mapping.
#[derive(Default)]
struct Draft<'a> {
    names: Vec<&'a str>,
    types: Vec<Option<SqlType>>,
    cells: Vec<Cell>,
}

impl<'a> Draft<'a> {
    fn push(&mut self, name: &'a str, ty: Option<SqlType>, cell: Cell) {
        self.names.push(name);
        self.types.push(ty);
        self.cells.push(cell);
    }
}

impl RowMapper {
    pub(crate) fn new(pk_mode: PkMode, pk_fields: Vec<String>, whitelist: Vec<String>, delete_enabled: bool) -> Self {
        let pk_fields = if pk_mode == PkMode::Kafka && pk_fields.is_empty() {
            ["__connect_topic", "__connect_partition", "__connect_offset"].map(str::to_owned).to_vec()
        } else {
            pk_fields
        };
        RowMapper { pk_mode, pk_fields, whitelist, delete_enabled, last: None }
    }

    /// The record as an operation; `Err` says why it cannot be written (it goes to the
    /// dead-letter queue).
    pub(crate) fn map(&mut self, record: &ConnectRecord) -> Result<Op, String> {
        let key_json;
        let mut draft = Draft::default();
        let topic: &str = &record.topic;
        let mut name_buf: [&str; 3] = ["", "", ""];
        match self.pk_mode {
            PkMode::None => {}
            PkMode::Kafka => {
                let Some(k) = &record.kafka else {
                    return Err("pk.mode=kafka needs the record's Kafka coordinates".into());
                };
                for (i, n) in self.pk_fields.iter().take(3).enumerate() {
                    name_buf[i] = n;
                }
                draft.push(name_buf[0], Some(SqlType::Text), Cell::Text(topic.to_owned()));
                draft.push(name_buf[1], Some(SqlType::Int32), Cell::Int(i64::from(k.partition)));
                draft.push(name_buf[2], Some(SqlType::Int64), Cell::Int(k.offset));
            }
            PkMode::RecordKey => {
                let Some(key) = &record.key else {
                    return Err("pk.mode=record_key needs a record key, and this record has none".into());
                };
                key_json = record_json(key)?;
                let schema = record.key_schema.as_deref();
                match &*key_json {
                    Json::Object(map) => {
                        let fields = struct_fields(schema);
                        if self.pk_fields.is_empty() {
                            match fields {
                                Some(fields) => {
                                    for f in fields {
                                        let Some(name) = f.get("field").and_then(Json::as_str) else { continue };
                                        let (ty, cell) = typed_cell(f, map.get(name).unwrap_or(&Json::Null))?;
                                        draft.push(name, Some(ty), cell);
                                    }
                                }
                                None => {
                                    for (name, v) in map {
                                        draft.push(name, None, infer_cell(v));
                                    }
                                }
                            }
                        } else {
                            for name in &self.pk_fields {
                                let Some(v) = map.get(name.as_str()) else {
                                    return Err(format!("the record key has no field {name} (pk.fields)"));
                                };
                                let (ty, cell) = field_cell(fields, name, v)?;
                                draft.push(name, ty, cell);
                            }
                        }
                    }
                    primitive => {
                        let [name] = self.pk_fields.as_slice() else {
                            return Err("pk.mode=record_key with a primitive key needs exactly one column name in \
                                        pk.fields"
                                .into());
                        };
                        let (ty, cell) = match schema {
                            Some(s) if s.get("type").and_then(Json::as_str) != Some("struct") => {
                                let (t, c) = typed_cell(s, primitive)?;
                                (Some(t), c)
                            }
                            _ => (None, infer_cell(primitive)),
                        };
                        draft.push(name, ty, cell);
                    }
                }
                if draft.cells.is_empty() {
                    return Err("the record key has no fields to use as the primary key".into());
                }
            }
            PkMode::RecordValue => {}
        }
        if draft.cells.contains(&Cell::Null) {
            return Err("a primary key field is null".into());
        }
        let Some(value) = &record.value else {
            if !self.delete_enabled {
                return Err(format!(
                    "the record's value is null (a tombstone) and delete.enabled=false; set delete.enabled=true \
                     (with pk.mode=record_key) to delete rows by key (pk.mode={:?})",
                    self.pk_mode
                ));
            }
            let n = draft.cells.len();
            return Ok(Op::Delete(finish(&mut self.last, draft, n)));
        };
        let value_json = record_json(value)?;
        let Json::Object(map) = &*value_json else {
            return Err(format!(
                "the value is a JSON {}, not an object (a struct) whose fields become columns",
                json_kind(&value_json)
            ));
        };
        let fields = struct_fields(record.value_schema.as_deref());
        if self.pk_mode == PkMode::RecordValue {
            if self.pk_fields.is_empty() {
                // Confluent's rule: every field of the value is the key.
                self.push_value_fields(&mut draft, map, fields, true)?;
                let n = draft.cells.len();
                if draft.cells.contains(&Cell::Null) {
                    return Err("a primary key field is null".into());
                }
                return Ok(Op::Write(finish(&mut self.last, draft, n)));
            }
            for name in &self.pk_fields {
                let v = map.get(name.as_str()).unwrap_or(&Json::Null);
                if v.is_null() {
                    return Err(format!("the value has no (or a null) primary key field {name} (pk.fields)"));
                }
                let (ty, cell) = field_cell(fields, name, v)?;
                draft.push(name, ty, cell);
            }
        }
        let pk_len = draft.cells.len();
        self.push_value_fields(&mut draft, map, fields, false)?;
        Ok(Op::Write(finish(&mut self.last, draft, pk_len)))
    }

    fn push_value_fields<'a>(
        &self,
        draft: &mut Draft<'a>,
        map: &'a Map<String, Json>,
        fields: Option<&'a [Json]>,
        all: bool,
    ) -> Result<(), String> {
        let pk_len = draft.names.len();
        let keep = |name: &str, draft: &Draft<'_>| {
            all || ((self.whitelist.is_empty() || self.whitelist.iter().any(|w| w == name))
                && !draft.names[..pk_len].contains(&name))
        };
        match fields {
            Some(fields) => {
                for f in fields {
                    let Some(name) = f.get("field").and_then(Json::as_str) else { continue };
                    if keep(name, draft) {
                        let (ty, cell) = typed_cell(f, map.get(name).unwrap_or(&Json::Null))
                            .map_err(|e| format!("field {name}: {e}"))?;
                        draft.push(name, Some(ty), cell);
                    }
                }
            }
            None => {
                for (name, v) in map {
                    if keep(name, draft) {
                        draft.push(name, None, infer_cell(v));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Shares the column set with the previous record when it is the same.
fn finish(last: &mut Option<Arc<Columns>>, draft: Draft<'_>, pk_len: usize) -> Row {
    let same = last.as_ref().is_some_and(|c| {
        c.pk_len == pk_len
            && c.names.len() == draft.names.len()
            && c.names.iter().zip(&draft.names).all(|(a, b)| a == b)
            && c.types == draft.types
    });
    if !same {
        *last = Some(Arc::new(Columns {
            names: draft.names.iter().map(|s| (*s).to_owned()).collect(),
            types: draft.types,
            pk_len,
        }));
    }
    let cols = last.clone().expect("set above");
    Row { cols, cells: draft.cells }
}

/// The record's key or value as JSON, borrowed when it already is (the usual case with
/// `JsonConverter`), parsed from text otherwise.
fn record_json(v: &Value) -> Result<Cow<'_, Json>, String> {
    match v {
        Value::Json(j) => Ok(Cow::Borrowed(j)),
        other => other.to_json().map(Cow::Owned),
    }
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

/// The fields of a struct schema.
fn struct_fields(schema: Option<&Json>) -> Option<&[Json]> {
    let s = schema?;
    if s.get("type").and_then(Json::as_str) != Some("struct") {
        return None;
    }
    s.get("fields").and_then(Json::as_array).map(Vec::as_slice)
}

fn field_cell(fields: Option<&[Json]>, name: &str, v: &Json) -> Result<(Option<SqlType>, Cell), String> {
    match fields.and_then(|fs| fs.iter().find(|f| f.get("field").and_then(Json::as_str) == Some(name))) {
        Some(f) => typed_cell(f, v).map(|(t, c)| (Some(t), c)).map_err(|e| format!("field {name}: {e}")),
        None => Ok((None, infer_cell(v))),
    }
}

/// A schemaless JSON value as a cell.
pub(crate) fn infer_cell(v: &Json) -> Cell {
    match v {
        Json::Null => Cell::Null,
        Json::Bool(b) => Cell::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Cell::Int(i),
            None if n.is_u64() => Cell::Decimal(n.to_string()),
            None => Cell::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Cell::Text(s.clone()),
        Json::Array(_) | Json::Object(_) => Cell::Json(v.to_string()),
    }
}

/// The column type a Connect schema (a field's, or a primitive key's) declares.
pub(crate) fn schema_type(schema: &Json) -> Result<SqlType, String> {
    if let Some(name) = schema.get("name").and_then(Json::as_str) {
        match name {
            LOGICAL_TIMESTAMP => return Ok(SqlType::Timestamp),
            LOGICAL_DATE => return Ok(SqlType::Date),
            LOGICAL_TIME => return Ok(SqlType::Time),
            LOGICAL_DECIMAL => return Ok(SqlType::Decimal),
            _ => {}
        }
    }
    Ok(match schema.get("type").and_then(Json::as_str).unwrap_or("") {
        "int8" | "int16" => SqlType::Int16,
        "int32" => SqlType::Int32,
        "int64" => SqlType::Int64,
        "float32" | "float" => SqlType::Float32,
        "float64" | "double" => SqlType::Float64,
        "boolean" => SqlType::Boolean,
        "string" => SqlType::Text,
        "bytes" => SqlType::Bytes,
        "struct" | "array" | "map" => SqlType::Json,
        other => return Err(format!("unknown Connect schema type {other:?}")),
    })
}

/// A value under its Connect schema: the column type and the cell.
fn typed_cell(schema: &Json, v: &Json) -> Result<(SqlType, Cell), String> {
    let ty = schema_type(schema)?;
    if v.is_null() {
        return Ok((ty, Cell::Null));
    }
    let mismatch = || format!("a JSON {} does not match schema type {ty:?}", json_kind(v));
    let cell = match ty {
        SqlType::Int16 | SqlType::Int32 | SqlType::Int64 => Cell::Int(v.as_i64().ok_or_else(mismatch)?),
        SqlType::Float32 | SqlType::Float64 => Cell::Float(v.as_f64().ok_or_else(mismatch)?),
        SqlType::Boolean => Cell::Bool(v.as_bool().ok_or_else(mismatch)?),
        SqlType::Text => Cell::Text(v.as_str().ok_or_else(mismatch)?.to_owned()),
        SqlType::Bytes => Cell::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().ok_or_else(mismatch)?)
                .map_err(|e| format!("bytes are not base64: {e}"))?,
        ),
        SqlType::Timestamp => match v {
            Json::String(s) => Cell::Text(s.clone()),
            _ => Cell::TimestampMs(v.as_i64().ok_or_else(mismatch)?),
        },
        SqlType::Date => match v {
            Json::String(s) => Cell::Text(s.clone()),
            _ => Cell::DateDays(
                i32::try_from(v.as_i64().ok_or_else(mismatch)?).map_err(|_| "date out of range".to_owned())?,
            ),
        },
        SqlType::Time => Cell::TimeMs(v.as_i64().ok_or_else(mismatch)?),
        SqlType::Decimal => match v {
            Json::Number(n) => Cell::Decimal(n.to_string()),
            Json::String(s) => Cell::Decimal(decode_decimal(s, decimal_scale(schema)?)?),
            _ => return Err(mismatch()),
        },
        SqlType::Json => Cell::Json(v.to_string()),
        SqlType::Other(_) => infer_cell(v),
    };
    Ok((ty, cell))
}

/// The `scale` parameter of a Connect `Decimal` schema (0 when absent). Bounded: it sizes the
/// text made from the value, and it comes from the record.
fn decimal_scale(schema: &Json) -> Result<i32, String> {
    let Some(raw) = schema.get("parameters").and_then(|p| p.get("scale")) else { return Ok(0) };
    let scale = raw
        .as_str()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .or_else(|| raw.as_i64())
        .ok_or_else(|| format!("the Decimal schema's scale {raw} is not an integer"))?;
    if scale.unsigned_abs() > DECIMAL_SCALE_MAX as u64 {
        return Err(format!("the Decimal schema's scale {scale} is out of range (at most ±{DECIMAL_SCALE_MAX})"));
    }
    Ok(scale as i32)
}

/// Connect's `Decimal`: base64 of the unscaled value, big-endian two's complement; the value is
/// unscaled × 10^-scale (a negative scale multiplies).
fn decode_decimal(b64: &str, scale: i32) -> Result<String, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("decimal bytes are not base64: {e}"))?;
    if bytes.is_empty() || bytes.len() > DECIMAL_BYTES_MAX {
        return Err(format!("decimal of {} bytes (at most {DECIMAL_BYTES_MAX} are converted)", bytes.len()));
    }
    if scale.unsigned_abs() > DECIMAL_SCALE_MAX {
        return Err(format!("decimal scale {scale} is out of range (at most ±{DECIMAL_SCALE_MAX})"));
    }
    let mut buf = if bytes[0] & 0x80 != 0 { [0xffu8; 16] } else { [0u8; 16] };
    buf[16 - bytes.len()..].copy_from_slice(&bytes);
    let unscaled = i128::from_be_bytes(buf);
    let digits = unscaled.unsigned_abs().to_string();
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale <= 0 {
        if unscaled == 0 {
            return Ok("0".to_owned());
        }
        let zeros = "0".repeat(scale.unsigned_abs() as usize);
        return Ok(format!("{sign}{digits}{zeros}"));
    }
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    Ok(format!("{sign}{int}.{frac}"))
}

#[cfg(test)]
mod decimal_tests {
    use super::*;

    fn b64(v: i128, len: usize) -> String {
        base64::engine::general_purpose::STANDARD.encode(&v.to_be_bytes()[16 - len..])
    }

    #[test]
    fn decimal_scale_is_bounded_and_negative_scale_multiplies() {
        assert_eq!(decode_decimal(&b64(12345, 2), 2).unwrap(), "123.45");
        assert_eq!(decode_decimal(&b64(-5, 1), 3).unwrap(), "-0.005");
        assert_eq!(decode_decimal(&b64(12, 1), -3).unwrap(), "12000");
        assert_eq!(decode_decimal(&b64(-12, 1), -2).unwrap(), "-1200");
        assert_eq!(decode_decimal(&b64(0, 1), -2).unwrap(), "0");
        assert!(decode_decimal(&b64(1, 1), 1001).is_err());
        let schema = |scale: Json| serde_json::json!({"type": "bytes", "parameters": {"scale": scale}});
        assert_eq!(decimal_scale(&schema(Json::from("2"))).unwrap(), 2);
        assert_eq!(decimal_scale(&schema(Json::from(-3))).unwrap(), -3);
        assert!(decimal_scale(&schema(Json::from("4294967295"))).unwrap_err().contains("out of range"));
        assert!(decimal_scale(&schema(Json::from("x"))).is_err());
        assert_eq!(decimal_scale(&serde_json::json!({"type": "bytes"})).unwrap(), 0);
    }
}

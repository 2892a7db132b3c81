//! Arrow schemas for the Parquet sink: inferred from JSON values (arrow-json's inference, one
//! record at a time so a conflicting record can be singled out), derived from a Kafka Connect
//! schema when the record carries one, and merged across records.
//!
//! Merging decides what a new record does to the open files: nothing (it fits), *widen* (new
//! fields, a null-only column getting a type, an integer column meeting a fraction: the files
//! rotate and new ones start with the wider schema), or *conflict* (the record goes to the
//! dead-letter topic). Every column is nullable: a field a record lacks is a null.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use serde_json::Value as Json;

/// Kafka Connect's logical type names.
const CONNECT_TIMESTAMP: &str = "org.apache.kafka.connect.data.Timestamp";
const CONNECT_DATE: &str = "org.apache.kafka.connect.data.Date";

/// Nesting depth accepted in a Connect schema (bounds recursion on outside input).
const MAX_SCHEMA_DEPTH: usize = 32;

/// The schema of the files being written and how to decode records into it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SchemaPlan {
    /// The schema written to Parquet.
    pub file: SchemaRef,
    /// Top-level `Timestamp(Microsecond, "UTC")` columns arrive as milliseconds (Connect's
    /// `Timestamp` logical type): they are decoded as milliseconds and scaled.
    pub ts_from_ms: bool,
}

impl SchemaPlan {
    /// A plan for a schema inferred from plain JSON.
    pub fn inferred(schema: Schema) -> SchemaPlan {
        SchemaPlan { file: Arc::new(schema), ts_from_ms: false }
    }

    /// The schema the JSON decoder fills.
    pub fn decode_schema(&self) -> SchemaRef {
        if !self.ts_from_ms {
            return self.file.clone();
        }
        let fields: Vec<Field> = self
            .file
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                // arrow-json parses a named zone only with chrono-tz; the offset is the same zone.
                DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => {
                    f.as_ref().clone().with_data_type(DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())))
                }
                _ => f.as_ref().clone(),
            })
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// Merges `other` into this plan: `Ok(None)` when it adds nothing.
    pub fn merge(&self, other: &SchemaPlan) -> Result<Option<SchemaPlan>, String> {
        let merged = merge_schemas(&self.file, &other.file)?;
        let ts_from_ms = self.ts_from_ms || other.ts_from_ms;
        Ok(match merged {
            None if ts_from_ms == self.ts_from_ms => None,
            None => Some(SchemaPlan { file: self.file.clone(), ts_from_ms }),
            Some(s) => Some(SchemaPlan { file: Arc::new(s), ts_from_ms }),
        })
    }
}

/// What a top-level column takes without arrow-json converting a value silently.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Takes {
    /// Floats: fractions and integers are exact, numeric strings are converted.
    Float,
    /// Text: a numeric string is just text.
    Text,
    /// Integers (a fraction is truncated, a numeric string parsed) and everything else.
    Other,
}

/// A cheap scan of raw JSON values for what arrow-json would convert silently once a
/// file's column type is fixed: a fraction (or exponent) in an integer column is truncated
/// (`2.5` → `2`), a numeric string in a numeric column is parsed (`"3"` → `3`). Values it
/// flags get the exact check (inference + merge); the rest decode on the fast path.
pub(crate) struct Guard {
    top: std::collections::HashMap<Vec<u8>, Takes>,
    /// Some nested (struct/list) field is numeric: flagged values inside nesting always get
    /// the exact check.
    nested_numeric: bool,
}

fn numeric_inside(t: &DataType) -> bool {
    match t {
        DataType::Struct(fs) => fs.iter().any(|f| numeric_inside(f.data_type())),
        DataType::List(f) => numeric_inside(f.data_type()),
        t => t.is_numeric(),
    }
}

impl Guard {
    /// `None`: no column is numeric, arrow-json has nothing to convert silently.
    pub fn new(schema: &Schema) -> Option<Guard> {
        if !schema.fields().iter().any(|f| numeric_inside(f.data_type())) {
            return None;
        }
        let top = schema
            .fields()
            .iter()
            .map(|f| {
                let takes = match f.data_type() {
                    DataType::Float64 | DataType::Float32 => Takes::Float,
                    DataType::Utf8 => Takes::Text,
                    _ => Takes::Other,
                };
                (f.name().as_bytes().to_vec(), takes)
            })
            .collect();
        let nested_numeric = schema
            .fields()
            .iter()
            .any(|f| matches!(f.data_type(), DataType::Struct(_) | DataType::List(_)) && numeric_inside(f.data_type()));
        Some(Guard { top, nested_numeric })
    }

    /// Whether `b` (one JSON object) may hold a value arrow-json would convert silently.
    /// False positives only cost the exact check.
    pub fn suspect(&self, b: &[u8]) -> bool {
        let mut depth = 0usize;
        let mut in_str = false;
        let mut esc = false;
        let mut start = 0;
        let mut expect_key = false;
        let mut key: &[u8] = &[];
        let mut prev = 0u8;
        for (i, &c) in b.iter().enumerate() {
            if in_str {
                if esc {
                    esc = false;
                } else if c == b'\\' {
                    esc = true;
                } else if c == b'"' {
                    in_str = false;
                    let text = &b[start..i];
                    if depth == 1 && expect_key {
                        key = text;
                    } else if looks_numeric(text) {
                        let takes = if depth == 1 { self.top.get(key).copied() } else { None };
                        let ok = match takes {
                            Some(Takes::Text) => true,
                            Some(_) => false,
                            None => depth > 1 && !self.nested_numeric,
                        };
                        if !ok {
                            return true;
                        }
                    }
                }
                prev = c;
                continue;
            }
            match c {
                b'"' => {
                    in_str = true;
                    start = i + 1;
                }
                b'{' | b'[' => {
                    depth += 1;
                    expect_key = depth == 1;
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                b',' if depth == 1 => expect_key = true,
                b':' if depth == 1 => expect_key = false,
                b'.' | b'e' | b'E' if c == b'.' || prev.is_ascii_digit() => {
                    let ok = if depth == 1 {
                        self.top.get(key).is_some_and(|t| *t == Takes::Float)
                    } else {
                        !self.nested_numeric
                    };
                    if !ok {
                        return true;
                    }
                }
                _ => {}
            }
            prev = c;
        }
        false
    }
}

/// A string arrow-json would parse into a number column.
fn looks_numeric(s: &[u8]) -> bool {
    s.len() <= 64
        && s.first().is_some_and(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.'))
        && std::str::from_utf8(s).is_ok_and(|t| t.parse::<f64>().is_ok())
}

/// The schema of one JSON object (arrow-json's inference: integers `Int64`, fractions
/// `Float64`, strings `Utf8`, nulls `Null`, objects `Struct`, arrays `List`).
pub(crate) fn infer_value(value: &Json) -> Result<Schema, String> {
    if !value.is_object() {
        return Err("the value is not a JSON object".to_owned());
    }
    arrow_json::reader::infer_json_schema_from_iterator(std::iter::once(Ok::<_, arrow_schema::ArrowError>(value)))
        .map_err(|e| e.to_string())
}

/// The plan for a record carrying a Kafka Connect schema (a `struct` schema, as
/// `JsonConverter` with `schemas.enable` delivers it).
pub(crate) fn from_connect_schema(schema: &Json) -> Result<SchemaPlan, String> {
    if schema.get("type").and_then(Json::as_str) != Some("struct") {
        return Err("the record's Connect schema is not a struct".to_owned());
    }
    let DataType::Struct(fields) = connect_type(schema, 0, true)? else {
        return Err("the record's Connect schema is not a struct".to_owned());
    };
    let ts_from_ms = fields.iter().any(|f| matches!(f.data_type(), DataType::Timestamp(TimeUnit::Microsecond, _)));
    Ok(SchemaPlan { file: Arc::new(Schema::new(fields)), ts_from_ms })
}

fn connect_type(schema: &Json, depth: usize, top: bool) -> Result<DataType, String> {
    if depth > MAX_SCHEMA_DEPTH {
        return Err(format!("the Connect schema nests deeper than {MAX_SCHEMA_DEPTH} levels"));
    }
    let ty = schema.get("type").and_then(Json::as_str).ok_or("a Connect schema without a type")?;
    let name = schema.get("name").and_then(Json::as_str);
    Ok(match (ty, name) {
        // Nested timestamps stay in milliseconds (only top-level columns are rescaled).
        ("int64", Some(CONNECT_TIMESTAMP)) if top => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ("int64", Some(CONNECT_TIMESTAMP)) => DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
        ("int32", Some(CONNECT_DATE)) => DataType::Date32,
        ("int8", _) => DataType::Int8,
        ("int16", _) => DataType::Int16,
        ("int32", _) => DataType::Int32,
        ("int64", _) => DataType::Int64,
        ("float32", _) => DataType::Float32,
        ("float64", _) => DataType::Float64,
        ("boolean", _) => DataType::Boolean,
        // Bytes travel as base64 text in JSON; kept as that text.
        ("string" | "bytes", _) => DataType::Utf8,
        ("array", _) => {
            let items = schema.get("items").ok_or("a Connect array schema without items")?;
            DataType::List(Arc::new(Field::new("item", connect_type(items, depth + 1, false)?, true)))
        }
        ("struct", _) => {
            let fields =
                schema.get("fields").and_then(Json::as_array).ok_or("a Connect struct schema without fields")?;
            let mut out = Vec::with_capacity(fields.len());
            for f in fields {
                let fname = f.get("field").and_then(Json::as_str).ok_or("a Connect struct field without a name")?;
                out.push(Field::new(fname, connect_type(f, depth + 1, top && depth == 0)?, true));
            }
            DataType::Struct(Fields::from(out))
        }
        (other, _) => return Err(format!("Connect type {other} has no Parquet mapping in this sink")),
    })
}

/// Merges `b` into `a`: `Ok(None)` when `a` already holds every field of `b` with a type that
/// takes `b`'s values, `Ok(Some(wider))` otherwise (new fields appended in `b`'s order), `Err`
/// on a type conflict.
pub(crate) fn merge_schemas(a: &Schema, b: &Schema) -> Result<Option<Schema>, String> {
    match merge_fields(a.fields(), b.fields())? {
        None => Ok(None),
        Some(fields) => Ok(Some(Schema::new(fields))),
    }
}

fn merge_fields(a: &Fields, b: &Fields) -> Result<Option<Fields>, String> {
    let mut out: Option<Vec<Field>> = None;
    for fb in b.iter() {
        match a.iter().position(|fa| fa.name() == fb.name()) {
            Some(i) => {
                if let Some(t) =
                    merge_type(a[i].data_type(), fb.data_type()).map_err(|e| format!("field {}: {e}", fb.name()))?
                {
                    let v = out.get_or_insert_with(|| a.iter().map(|f| f.as_ref().clone()).collect());
                    v[i] = v[i].clone().with_data_type(t);
                }
            }
            None => {
                let v = out.get_or_insert_with(|| a.iter().map(|f| f.as_ref().clone()).collect());
                v.push(fb.as_ref().clone().with_nullable(true));
            }
        }
    }
    Ok(out.map(Fields::from))
}

/// `Ok(None)`: `a` takes `b`'s values as it is.
fn merge_type(a: &DataType, b: &DataType) -> Result<Option<DataType>, String> {
    use DataType as T;
    Ok(match (a, b) {
        _ if a == b => None,
        (_, T::Null) => None,
        (T::Null, other) => Some(other.clone()),
        (T::Float64, T::Int64) => None,
        (T::Int64, T::Float64) => Some(T::Float64),
        (T::Struct(fa), T::Struct(fb)) => merge_fields(fa, fb)?.map(T::Struct),
        (T::List(ia), T::List(ib)) => merge_type(ia.data_type(), ib.data_type())?
            .map(|t| T::List(Arc::new(ia.as_ref().clone().with_data_type(t)))),
        _ => return Err(format!("{a} in the open file, {b} in the record")),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn s(v: Json) -> Schema {
        infer_value(&v).unwrap()
    }

    #[test]
    fn infers_types_in_field_order() {
        let schema =
            s(json!({"id": 1, "name": "a", "price": 1.5, "ok": true, "tags": ["x"], "o": {"k": 1}, "n": null}));
        // serde_json's map is sorted: columns come in name order.
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "n", "name", "o", "ok", "price", "tags"]);
        let ty = |n: &str| schema.field_with_name(n).unwrap().data_type().clone();
        assert_eq!(ty("id"), DataType::Int64);
        assert_eq!(ty("price"), DataType::Float64);
        assert_eq!(ty("n"), DataType::Null);
        assert!(infer_value(&json!([1, 2])).is_err());
    }

    #[test]
    fn merge_fits_widens_or_conflicts() {
        let base = s(json!({"id": 1, "name": "a", "n": null}));
        assert_eq!(merge_schemas(&base, &s(json!({"id": 2}))).unwrap(), None);
        assert_eq!(merge_schemas(&base, &s(json!({"name": null}))).unwrap(), None);
        let wider = merge_schemas(&base, &s(json!({"id": 2, "extra": "x"}))).unwrap().unwrap();
        assert_eq!(wider.fields().len(), 4);
        assert_eq!(wider.field(3).name(), "extra");
        let typed = merge_schemas(&base, &s(json!({"n": 5}))).unwrap().unwrap();
        assert_eq!(typed.field_with_name("n").unwrap().data_type(), &DataType::Int64);
        let float = merge_schemas(&base, &s(json!({"id": 2.5}))).unwrap().unwrap();
        assert_eq!(float.field_with_name("id").unwrap().data_type(), &DataType::Float64);
        let err = merge_schemas(&base, &s(json!({"id": "x"}))).unwrap_err();
        assert!(err.contains("field id"), "{err}");
        let nested = s(json!({"o": {"a": 1}}));
        let grown = merge_schemas(&nested, &s(json!({"o": {"b": "x"}}))).unwrap().unwrap();
        let DataType::Struct(f) = grown.field(0).data_type() else { panic!() };
        assert_eq!(f.len(), 2);
        assert!(merge_schemas(&nested, &s(json!({"o": 1}))).is_err());
    }

    #[test]
    fn connect_schema_maps_timestamps_to_micros_utc() {
        let schema = json!({"type": "struct", "fields": [
            {"field": "id", "type": "int32", "optional": false},
            {"field": "at", "type": "int64", "name": CONNECT_TIMESTAMP, "optional": true},
            {"field": "day", "type": "int32", "name": CONNECT_DATE},
            {"field": "tags", "type": "array", "items": {"type": "string"}}
        ]});
        let plan = from_connect_schema(&schema).unwrap();
        assert!(plan.ts_from_ms);
        assert_eq!(plan.file.field(1).data_type(), &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())));
        assert_eq!(
            plan.decode_schema().field(1).data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into()))
        );
        assert_eq!(plan.file.field(2).data_type(), &DataType::Date32);
        assert!(from_connect_schema(&json!({"type": "string"})).is_err());
        assert!(from_connect_schema(&json!({"type": "struct", "fields": [{"field": "m", "type": "map"}]})).is_err());
    }
}

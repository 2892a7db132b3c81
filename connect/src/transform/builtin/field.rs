//! Field transforms: `InsertField`, `ReplaceField`, `MaskField`, `ExtractField`, `ValueToKey`,
//! `HoistField`, `Flatten`, `Cast` and `HeaderFrom`, with Kafka's keys and schemaless semantics.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Number, Value as Json};

use super::{header_bytes, json_type, name_set, read_object, value_json, with_object, EntryConfig, RecordOp, Side};
use crate::error::Result;
use crate::record::{ConnectRecord, Header, Value};

type OpResult = std::result::Result<bool, String>;

/// The side of a `$Key`/`$Value` transform (the registry only builds those with one).
fn side_of(side: Option<Side>) -> Side {
    side.unwrap_or(Side::Value)
}

/// Kafka marks InsertField's fields optional (`name?`) or required (`name!`) for the schema it
/// builds; schemaless records only need the name.
fn insert_field_name(cfg: &EntryConfig<'_>, key: &str) -> Option<String> {
    cfg.get(key).map(str::trim).filter(|s| !s.is_empty()).map(|s| s.trim_end_matches(['!', '?']).to_owned())
}

struct InsertField {
    side: Side,
    topic: Option<String>,
    partition: Option<String>,
    offset: Option<String>,
    timestamp: Option<String>,
    static_field: Option<(String, Json)>,
}

pub(super) fn insert_field(side: Option<Side>, cfg: &EntryConfig<'_>) -> Result<Box<dyn RecordOp>> {
    let static_field = insert_field_name(cfg, "static.field")
        .map(|f| (f, cfg.get("static.value").map_or(Json::Null, |v| Json::String(v.to_owned()))));
    Ok(Box::new(InsertField {
        side: side_of(side),
        topic: insert_field_name(cfg, "topic.field"),
        partition: insert_field_name(cfg, "partition.field"),
        offset: insert_field_name(cfg, "offset.field"),
        timestamp: insert_field_name(cfg, "timestamp.field"),
        static_field,
    }))
}

impl RecordOp for InsertField {
    fn apply(&mut self, record: &mut ConnectRecord) -> OpResult {
        let offset = match (&self.offset, &record.kafka) {
            (Some(_), None) => {
                return Err("offset.field needs a sink record (one read from Kafka); this record has no offset".into())
            }
            (_, kafka) => kafka.as_ref().map(|k| k.offset),
        };
        let topic = self.topic.as_ref().map(|f| (f, Json::String(record.topic.to_string())));
        let partition = self.partition.as_ref().map(|f| (f, record.partition.map_or(Json::Null, Json::from)));
        let timestamp = self.timestamp.as_ref().map(|f| (f, record.timestamp_ms.map_or(Json::Null, Json::from)));
        let offset = self.offset.as_ref().map(|f| (f, offset.map_or(Json::Null, Json::from)));
        let static_field = self.static_field.as_ref().map(|(f, v)| (f, v.clone()));
        with_object(record, self.side, "InsertField", |map| {
            for (f, v) in [topic, partition, offset, timestamp, static_field].into_iter().flatten() {
                map.insert(f.clone(), v);
            }
            Ok(())
        })?;
        Ok(true)
    }
}

struct ReplaceField {
    side: Side,
    exclude: BTreeSet<String>,
    include: BTreeSet<String>,
    renames: BTreeMap<String, String>,
}

pub(super) fn replace_field(side: Option<Side>, cfg: &EntryConfig<'_>) -> Result<Box<dyn RecordOp>> {
    // `blacklist` and `whitelist` are Kafka's names before 2.6, still accepted there.
    let list = |keys: [&str; 2]| super::split_list(cfg.get_any(&keys).unwrap_or(""));
    let mut renames = BTreeMap::new();
    for pair in cfg.list("renames") {
        match pair.split_once(':') {
            Some((from, to)) if !from.trim().is_empty() && !to.trim().is_empty() => {
                renames.insert(from.trim().to_owned(), to.trim().to_owned());
            }
            _ => return Err(cfg.error("renames", format!("{pair} is not of the form old:new"))),
        }
    }
    Ok(Box::new(ReplaceField {
        side: side_of(side),
        exclude: name_set(list(["exclude", "blacklist"])),
        include: name_set(list(["include", "whitelist"])),
        renames,
    }))
}

impl RecordOp for ReplaceField {
    fn apply(&mut self, record: &mut ConnectRecord) -> OpResult {
        with_object(record, self.side, "ReplaceField", |map| {
            let old = std::mem::take(map);
            for (k, v) in old {
                if self.exclude.contains(&k) || (!self.include.is_empty() && !self.include.contains(&k)) {
                    continue;
                }
                match self.renames.get(&k) {
                    Some(new) => map.insert(new.clone(), v),
                    None => map.insert(k, v),
                };
            }
            Ok(())
        })?;
        Ok(true)
    }
}

struct MaskField {
    side: Side,
    fields: Vec<String>,
    replacement: Option<String>,
}

pub(super) fn mask_field(side: Option<Side>, cfg: &EntryConfig<'_>) -> Result<Box<dyn RecordOp>> {
    let fields = cfg.list("fields");
    if fields.is_empty() {
        return Err(cfg.error("fields", "names no field to mask"));
    }
    let replacement = cfg.get("replacement").filter(|r| !r.is_empty()).map(str::to_owned);
    Ok(Box::new(MaskField { side: side_of(side), fields, replacement }))
}

impl MaskField {
    fn masked(&self, field: &str, v: &Json) -> std::result::Result<Json, String> {
        let Some(r) = &self.replacement else {
            // Kafka's defaults: the "empty" value of the field's type.
            return Ok(match v {
                Json::Null => Json::Null,
                Json::Bool(_) => Json::Bool(false),
                Json::Number(n) if n.is_f64() => Json::from(0.0),
                Json::Number(_) => Json::from(0),
                Json::String(_) => Json::String(String::new()),
                Json::Array(_) => Json::Array(Vec::new()),
                Json::Object(_) => Json::Object(Map::new()),
            });
        };
        match v {
            Json::Null => Ok(Json::Null),
            Json::String(_) => Ok(Json::String(r.clone())),
            Json::Number(n) => {
                let parsed = if n.is_f64() {
                    r.trim().parse::<f64>().ok().and_then(Number::from_f64)
                } else {
                    r.trim().parse::<i64>().ok().map(Number::from)
                };
                parsed.map(Json::Number).ok_or_else(|| {
                    format!("cannot mask the number in field {field} with replacement {r:?}: it is not a number")
                })
            }
            other => Err(format!("cannot mask {} in field {field} with a custom replacement", json_type(other))),
        }
    }
}

impl RecordOp for MaskField {
    fn apply(&mut self, record: &mut ConnectRecord) -> OpResult {
        with_object(record, self.side, "MaskField", |map| {
            // All masks are worked out before any field changes, so a refused record stays as it was.
            let mut masked = Vec::with_capacity(self.fields.len());
            for f in &self.fields {
                if let Some(v) = map.get(f) {
                    masked.push((f, self.masked(f, v)?));
                }
            }
            for (f, v) in masked {
                map.insert(f.clone(), v);
            }
            Ok(())
        })?;
        Ok(true)
    }
}

struct ExtractField {
    side: Side,
    path: Vec<String>,
}

pub(super) fn extract_field(side: Option<Side>, cfg: &EntryConfig<'_>) -> Result<Box<dyn RecordOp>> {
    let field = cfg.required("field")?;
    let path = match cfg.get("field.syntax.version").map(str::trim).unwrap_or("V1") {
        v if v.eq_ignore_ascii_case("V1") => vec![field.to_owned()],
        v if v.eq_ignore_ascii_case("V2") => {
            parse_path_v2(field).map_err(|e| cfg.error("field", format!("{field} is not a V2 field path: {e}")))?
        }
        other => return Err(cfg.error("field.syntax.version", format!("{other} is not V1 or V2"))),
    };
    Ok(Box::new(ExtractField { side: side_of(side), path }))
}

/// KIP-821's V2 field path: names separated by dots; a name holding dots is wrapped in
/// backticks (`` `a.b`.c ``), a backtick inside such a name is written `\``.
fn parse_path_v2(s: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut name = String::new();
        if chars.peek() == Some(&'`') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') if chars.peek() == Some(&'`') => {
                        chars.next();
                        name.push('`');
                    }
                    Some('`') if matches!(chars.peek(), None | Some('.')) => break,
                    Some(c) => name.push(c),
                    None => return Err("a backtick is not closed".into()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                name.push(c);
                chars.next();
            }
        }
        if name.is_empty() {
            return Err("a name is empty".into());
        }
        out.push(name);
        match chars.next() {
            None => return Ok(out),
            Some(_) => continue, // the dot
        }
    }
}

/// Takes the value at `path` out of `map` (null when missing or when a step is not an object).
fn take_path(map: &mut Map<String, Json>, path: &[String]) -> Json {
    let Some((first, rest)) = path.split_first() else { return Json::Null };
    match (map.remove(first), rest.is_empty()) {
        (Some(v), true) => v,
        (Some(Json::Object(mut inner)), false) => take_path(&mut inner, rest),
        _ => Json::Null,
    }
}

impl RecordOp for ExtractField {
    fn apply(&mut self, record: &mut ConnectRecord) -> OpResult {
        let side = self.side;
        let slot = side.slot(record);
        let extracted = match slot {
            None => return Ok(true),
            Some(Value::Json(Json::Object(map))) => take_path(map, &self.path),
            Some(Value::Json(other)) => return Err(super::not_an_object(side, "ExtractField", other)),
            Some(v) => match value_json(v, side)? {
                Json::Object(mut map) => take_path(&mut map, &self.path),
                other => return Err(super::not_an_object(side, "ExtractField", &other)),
            },
        };
        *slot = match extracted {
            Json::Null => None,
            v => Some(Value::Json(v)),
        };
        side.clear_schema(record);
        Ok(true)
    }
}

struct ValueToKey {
    fields: Vec<String>,
}

pub(super) fn value_to_key(_side: Option<Side>, cfg: &EntryConfig<'_>) -> Result<Box<dyn RecordOp>> {
    let fields = cfg.list("fields");
    if fields.is_empty() {
        return Err(cfg.error("fields", "names no field for the key"));
    }
    Ok(Box::new(ValueToKey { fields }))
}

impl RecordOp for ValueToKey {
    fn apply(&mut self, record: &mut ConnectRecord) -> OpResult {
        let key = read_object(record, Side::Value, "ValueToKey", |map| {
            self.fields.iter().map(|f| (f.clone(), map.get(f).cloned().unwrap_or(Json::Null))).collect::<Map<_, _>>()
        })?
        .ok_or("ValueToKey needs the value to be a JSON object, found null")?;
        record.key = Some(Value::Json(Json::Object(key)));
        record.key_schema = None;
        Ok(true)
    }
}

struct HoistField {
    side: Side,
    field: String,
}

pub(super) fn hoist_field(side: Option<Side>, cfg: &EntryConfig<'_>) -> Result<Box<dyn RecordOp>> {
    Ok(Box::new(HoistField { side: side_of(side), field: cfg.required("field")?.to_owned() }))
}

impl RecordOp for HoistField {
    fn apply(&mut self, record: &mut ConnectRecord) -> OpResult {
        let side = self.side;
        let slot = side.slot(record);
        let inner = match slot.take() {
            None => Json::Null,
            Some(Value::Json(j)) => j,
            Some(v) => match value_json(&v, side) {
                Ok(j) => j,
                Err(e) => {
                    *slot = Some(v);
                    return Err(e);
                }
            },
        };
        let mut map = Map::new();
        map.insert(self.field.clone(), inner);
        *slot = Some(Value::Json(Json::Object(map)));
        side.clear_schema(record);
        Ok(true)
    }
}

struct Flatten {
    side: Side,
    delimiter: String,
}

pub(super) fn flatten(side: Option<Side>, cfg: &EntryConfig<'_>) -> Result<Box<dyn RecordOp>> {
    Ok(Box::new(Flatten { side: side_of(side), delimiter: cfg.get("delimiter").unwrap_or(".").to_owned() }))
}

fn flatten_into(out: &mut Map<String, Json>, prefix: &str, delimiter: &str, map: Map<String, Json>) {
    for (k, v) in map {
        let name = if prefix.is_empty() { k } else { format!("{prefix}{delimiter}{k}") };
        match v {
            Json::Object(inner) => flatten_into(out, &name, delimiter, inner),
            other => {
                out.insert(name, other);
            }
        }
    }
}

impl RecordOp for Flatten {
    fn apply(&mut self, record: &mut ConnectRecord) -> OpResult {
        with_object(record, self.side, "Flatten", |map| {
            if map.values().any(Json::is_object) {
                let old = std::mem::take(map);
                flatten_into(map, "", &self.delimiter, old);
            }
            Ok(())
        })?;
        Ok(true)
    }
}

/// Cast's target types (Kafka's `Schema.Type` names, lower case in the spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CastType {
    Int8,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Boolean,
    String,
}

impl CastType {
    fn parse(s: &str) -> Option<CastType> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "int8" => CastType::Int8,
            "int16" => CastType::Int16,
            "int32" => CastType::Int32,
            "int64" => CastType::Int64,
            "float32" => CastType::Float32,
            "float64" => CastType::Float64,
            "boolean" => CastType::Boolean,
            "string" => CastType::String,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            CastType::Int8 => "int8",
            CastType::Int16 => "int16",
            CastType::Int32 => "int32",
            CastType::Int64 => "int64",
            CastType::Float32 => "float32",
            CastType::Float64 => "float64",
            CastType::Boolean => "boolean",
            CastType::String => "string",
        }
    }

    /// Narrows an integer as Java's `Number.byteValue()`/`shortValue()`/`intValue()` do (wrapping).
    fn wrap(self, n: i64) -> i64 {
        match self {
            CastType::Int8 => i64::from(n as i8),
            CastType::Int16 => i64::from(n as i16),
            CastType::Int32 => i64::from(n as i32),
            _ => n,
        }
    }

    /// Casts one value with Kafka's `Cast` rules; null stays null.
    fn cast(self, v: &Json) -> std::result::Result<Json, String> {
        let refused = || format!("cannot cast {} to {}", json_type(v), self.name());
        match self {
            CastType::Int8 | CastType::Int16 | CastType::Int32 | CastType::Int64 => {
                let n = match v {
                    Json::Null => return Ok(Json::Null),
                    Json::Bool(b) => i64::from(*b),
                    Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                        (Some(i), _, _) => self.wrap(i),
                        (None, Some(u), _) => self.wrap(u as i64),
                        // Java narrows a double to int (saturating, NaN to 0) before wrapping to byte/short.
                        (None, None, Some(f)) if self == CastType::Int64 => f as i64,
                        (None, None, Some(f)) => self.wrap(i64::from(f as i32)),
                        _ => return Err(refused()),
                    },
                    Json::String(s) => {
                        let s = s.trim();
                        let parsed = match self {
                            CastType::Int8 => s.parse::<i8>().map(i64::from).ok(),
                            CastType::Int16 => s.parse::<i16>().map(i64::from).ok(),
                            CastType::Int32 => s.parse::<i32>().map(i64::from).ok(),
                            _ => s.parse::<i64>().ok(),
                        };
                        parsed.ok_or_else(|| format!("cannot cast {s:?} to {}: not a number in range", self.name()))?
                    }
                    _ => return Err(refused()),
                };
                Ok(Json::from(n))
            }
            CastType::Float32 | CastType::Float64 => {
                let f = match v {
                    Json::Null => return Ok(Json::Null),
                    Json::Bool(b) => f64::from(u8::from(*b)),
                    Json::Number(n) => n.as_f64().ok_or_else(refused)?,
                    Json::String(s) => s
                        .trim()
                        .parse::<f64>()
                        .map_err(|_| format!("cannot cast {s:?} to {}: not a number", self.name()))?,
                    _ => return Err(refused()),
                };
                // Through the float's shortest decimal form, so 1.1 stays 1.1 rather than 1.100000023841858.
                let f = if self == CastType::Float32 { (f as f32).to_string().parse::<f64>().unwrap_or(f) } else { f };
                Number::from_f64(f).map(Json::Number).ok_or_else(|| format!("{f} is not a finite number"))
            }
            CastType::Boolean => Ok(match v {
                Json::Null => Json::Null,
                Json::Bool(b) => Json::Bool(*b),
                Json::Number(n) => {
                    Json::Bool(n.as_i64().map(|i| i != 0).or(n.as_u64().map(|u| u != 0)).unwrap_or_else(|| {
                        // Kafka compares longValue(), so 0.5 is false.
                        n.as_f64().is_some_and(|f| f as i64 != 0)
                    }))
                }
                Json::String(s) => Json::Bool(s.trim().eq_ignore_ascii_case("true")),
                _ => return Err(refused()),
            }),
            CastType::String => Ok(match v {
                Json::Null => Json::Null,
                Json::String(s) => Json::String(s.clone()),
                other => Json::String(other.to_string()),
            }),
        }
    }
}

enum CastSpec {
    Whole(CastType),
    Fields(Vec<(String, CastType)>),
}

struct Cast {
    side: Side,
    spec: CastSpec,
}

pub(super) fn cast(side: Option<Side>, cfg: &EntryConfig<'_>) -> Result<Box<dyn RecordOp>> {
    let entries = cfg.list("spec");
    if entries.is_empty() {
        return Err(cfg.error("spec", "names no cast; use field:type,... or one type for the whole value"));
    }
    let bad_type = |t: &str| {
        cfg.error(
            "spec",
            format!("{t} is not a cast type (int8, int16, int32, int64, float32, float64, boolean, string)"),
        )
    };
    let spec = if entries.len() == 1 && !entries[0].contains(':') {
        CastSpec::Whole(CastType::parse(&entries[0]).ok_or_else(|| bad_type(&entries[0]))?)
    } else {
        let mut fields = Vec::with_capacity(entries.len());
        for e in &entries {
            let Some((f, t)) = e.split_once(':').filter(|(f, _)| !f.trim().is_empty()) else {
                return Err(cfg.error(
                    "spec",
                    format!("{e} is not field:type (a cast of the whole value must be the only entry)"),
                ));
            };
            fields.push((f.trim().to_owned(), CastType::parse(t).ok_or_else(|| bad_type(t))?));
        }
        CastSpec::Fields(fields)
    };
    Ok(Box::new(Cast { side: side_of(side), spec }))
}

impl RecordOp for Cast {
    fn apply(&mut self, record: &mut ConnectRecord) -> OpResult {
        let side = self.side;
        match &self.spec {
            CastSpec::Whole(t) => {
                let Some(v) = side.get(record) else { return Ok(true) };
                let cast = match v {
                    Value::Json(j) => t.cast(j)?,
                    other => t.cast(&value_json(other, side)?)?,
                };
                *side.slot(record) = if cast.is_null() { None } else { Some(Value::Json(cast)) };
                side.clear_schema(record);
            }
            CastSpec::Fields(fields) => with_object(record, side, "Cast", |map| {
                let mut cast = Vec::with_capacity(fields.len());
                for (f, t) in fields {
                    if let Some(v) = map.get(f) {
                        cast.push((f, t.cast(v).map_err(|e| format!("field {f}: {e}"))?));
                    }
                }
                for (f, v) in cast {
                    map.insert(f.clone(), v);
                }
                Ok(())
            })?,
        }
        Ok(true)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HeaderOp {
    Copy,
    Move,
}

struct HeaderFrom {
    side: Side,
    fields: Vec<String>,
    headers: Vec<String>,
    operation: HeaderOp,
}

pub(super) fn header_from(side: Option<Side>, cfg: &EntryConfig<'_>) -> Result<Box<dyn RecordOp>> {
    let fields = cfg.list("fields");
    let headers = cfg.list("headers");
    if fields.is_empty() {
        return Err(cfg.error("fields", "names no field"));
    }
    if headers.len() != fields.len() {
        return Err(cfg.error(
            "headers",
            format!("names {} headers for {} fields; give one header per field", headers.len(), fields.len()),
        ));
    }
    let operation = match cfg.required("operation")?.trim() {
        "copy" => HeaderOp::Copy,
        "move" => HeaderOp::Move,
        other => return Err(cfg.error("operation", format!("{other} is not copy or move"))),
    };
    Ok(Box::new(HeaderFrom { side: side_of(side), fields, headers, operation }))
}

impl RecordOp for HeaderFrom {
    fn apply(&mut self, record: &mut ConnectRecord) -> OpResult {
        if self.side.get(record).is_none() {
            // Kafka's HeaderFrom requires a map here, tombstones included.
            return Err(format!("HeaderFrom needs the {} to be a JSON object, found null", self.side.name()));
        }
        let mut values = Vec::with_capacity(self.fields.len());
        match self.operation {
            HeaderOp::Copy => {
                read_object(record, self.side, "HeaderFrom", |map| {
                    values.extend(self.fields.iter().map(|f| map.get(f).and_then(header_bytes)));
                })?;
            }
            HeaderOp::Move => with_object(record, self.side, "HeaderFrom", |map| {
                values.extend(self.fields.iter().map(|f| map.remove(f).as_ref().and_then(header_bytes)));
                Ok(())
            })?,
        }
        for (name, value) in self.headers.iter().zip(values) {
            record.headers.push(Header { key: name.clone(), value });
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::config::Props;
    use crate::record::KafkaCoordinates;

    fn build(ctor: super::super::TransformCtor, side: Side, keys: &[(&str, &str)]) -> Result<Box<dyn RecordOp>> {
        let props: Props = keys.iter().map(|(k, v)| (format!("transforms.t.{k}"), (*v).to_owned())).collect();
        ctor(Some(side), &EntryConfig::new("transforms.t.", &props))
    }

    fn rec(value: Json) -> ConnectRecord {
        let mut r = ConnectRecord::new(Arc::from("orders"), Some(Value::Json(value)));
        r.value_schema = Some(Arc::new(json!({"type": "struct"})));
        r
    }

    fn value(r: &ConnectRecord) -> &Json {
        match &r.value {
            Some(Value::Json(j)) => j,
            other => panic!("not JSON: {other:?}"),
        }
    }

    fn config_key(e: crate::ConnectError) -> String {
        match e {
            crate::ConnectError::Config { key, .. } => key,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn insert_field_adds_record_metadata_and_a_static_value() {
        let mut t = build(
            insert_field,
            Side::Value,
            &[
                ("topic.field", "topic!"),
                ("partition.field", "p"),
                ("offset.field", "o?"),
                ("timestamp.field", "ts"),
                ("static.field", "instance_id"),
                ("static.value", "my-instance-id"),
            ],
        )
        .unwrap();
        let mut r = rec(json!({"a": 1}));
        r.partition = Some(3);
        r.timestamp_ms = Some(1_700_000_000_000);
        r.kafka = Some(KafkaCoordinates { topic: r.topic.clone(), partition: 3, offset: 42 });
        assert!(t.apply(&mut r).unwrap());
        assert_eq!(
            value(&r),
            &json!({"a": 1, "topic": "orders", "p": 3, "o": 42, "ts": 1_700_000_000_000_i64, "instance_id": "my-instance-id"})
        );
        assert!(r.value_schema.is_none());

        // Text holding a JSON object is parsed; a tombstone passes through.
        let mut t = build(insert_field, Side::Value, &[("static.field", "s"), ("static.value", "v")]).unwrap();
        let mut r = ConnectRecord::new(Arc::from("t"), Some(Value::from_string(r#"{"x":true}"#)));
        t.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!({"x": true, "s": "v"}));
        let mut tomb = ConnectRecord::new(Arc::from("t"), None);
        t.apply(&mut tomb).unwrap();
        assert_eq!(tomb.value, None);
    }

    #[test]
    fn insert_field_refuses_non_objects_and_offsets_of_source_records_without_changing_them() {
        let mut t = build(insert_field, Side::Value, &[("static.field", "s")]).unwrap();
        let mut r = ConnectRecord::new(Arc::from("t"), Some(Value::from_string("plain line")));
        let before = r.clone();
        let err = t.apply(&mut r).unwrap_err();
        assert!(err.contains("JSON object") && err.contains("string"), "{err}");
        assert_eq!(r, before);

        let mut t = build(insert_field, Side::Value, &[("offset.field", "o")]).unwrap();
        let mut r = rec(json!({}));
        assert!(t.apply(&mut r).unwrap_err().contains("offset.field"));
    }

    #[test]
    fn insert_field_key_works_on_the_key() {
        let mut t = build(insert_field, Side::Key, &[("topic.field", "t")]).unwrap();
        let mut r = rec(json!({"v": 1}));
        r.key = Some(Value::Json(json!({"id": 7})));
        t.apply(&mut r).unwrap();
        assert_eq!(r.key, Some(Value::Json(json!({"id": 7, "t": "orders"}))));
        assert_eq!(value(&r), &json!({"v": 1}));
        assert!(r.value_schema.is_some(), "the value was not touched");
    }

    #[test]
    fn replace_field_excludes_includes_and_renames() {
        let mut t = build(replace_field, Side::Value, &[("exclude", "c"), ("renames", "foo:bar,abc:xyz")]).unwrap();
        let mut r = rec(json!({"foo": 1, "abc": 2, "c": 3, "d": 4}));
        t.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!({"bar": 1, "xyz": 2, "d": 4}));

        let mut t = build(replace_field, Side::Value, &[("whitelist", "a,b"), ("blacklist", "b")]).unwrap();
        let mut r = rec(json!({"a": 1, "b": 2, "c": 3}));
        t.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!({"a": 1}));

        let e = build(replace_field, Side::Value, &[("renames", "foo")]).err().unwrap();
        assert_eq!(config_key(e), "transforms.t.renames");
    }

    #[test]
    fn mask_field_uses_type_defaults_or_the_replacement() {
        let mut t = build(mask_field, Side::Value, &[("fields", "s,n,f,b,l,m,missing")]).unwrap();
        let mut r = rec(json!({"s": "secret", "n": 12, "f": 1.5, "b": true, "l": [1], "m": {"a": 1}, "k": "keep"}));
        t.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!({"s": "", "n": 0, "f": 0.0, "b": false, "l": [], "m": {}, "k": "keep"}));

        let mut t = build(mask_field, Side::Value, &[("fields", "ssn,n"), ("replacement", "***-***-****")]).unwrap();
        let mut r = rec(json!({"ssn": "123-45-6789"}));
        t.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!({"ssn": "***-***-****"}));
        // A number cannot take a non-numeric replacement: the record is refused unchanged.
        let mut r = rec(json!({"ssn": "123-45-6789", "n": 5}));
        let before = r.clone();
        assert!(t.apply(&mut r).unwrap_err().contains("field n"));
        assert_eq!(r, before);

        let mut t = build(mask_field, Side::Value, &[("fields", "n"), ("replacement", "9")]).unwrap();
        let mut r = rec(json!({"n": 5}));
        t.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!({"n": 9}));
        assert!(build(mask_field, Side::Value, &[]).is_err());
    }

    #[test]
    fn extract_field_takes_one_field_and_nested_paths_with_v2() {
        let mut t = build(extract_field, Side::Key, &[("field", "id")]).unwrap();
        let mut r = rec(json!({}));
        r.key = Some(Value::Json(json!({"id": 42, "other": "x"})));
        t.apply(&mut r).unwrap();
        assert_eq!(r.key, Some(Value::Json(json!(42))));

        let mut t = build(extract_field, Side::Value, &[("field", "a.b")]).unwrap();
        let mut r = rec(json!({"a.b": 1, "a": {"b": 2}}));
        t.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!(1), "V1 takes the name as is");

        let mut t = build(extract_field, Side::Value, &[("field", "a.b"), ("field.syntax.version", "V2")]).unwrap();
        let mut r = rec(json!({"a.b": 1, "a": {"b": {"c": 2}}}));
        t.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!({"c": 2}));
        let mut t = build(extract_field, Side::Value, &[("field", "`a.b`"), ("field.syntax.version", "V2")]).unwrap();
        let mut r = rec(json!({"a.b": 1}));
        t.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!(1));

        let mut r = rec(json!({"x": 1}));
        t.apply(&mut r).unwrap();
        assert_eq!(r.value, None, "a missing field is null");
        let e = build(extract_field, Side::Value, &[("field", "a..b"), ("field.syntax.version", "V2")]).err().unwrap();
        assert_eq!(config_key(e), "transforms.t.field");
        let e = build(extract_field, Side::Value, &[]).err().unwrap();
        assert_eq!(config_key(e), "transforms.t.field");
    }

    #[test]
    fn value_to_key_copies_fields_into_the_key() {
        let mut t = build(value_to_key, Side::Value, &[("fields", "userId,city")]).unwrap();
        let mut r = ConnectRecord::new(Arc::from("t"), Some(Value::from_string(r#"{"userId":1,"city":"x","n":2}"#)));
        t.apply(&mut r).unwrap();
        assert_eq!(r.key, Some(Value::Json(json!({"userId": 1, "city": "x"}))));
        assert!(matches!(r.value, Some(Value::Text(_))), "the value is left as it was");
        let mut tomb = ConnectRecord::new(Arc::from("t"), None);
        assert!(t.apply(&mut tomb).is_err());
    }

    #[test]
    fn hoist_field_wraps_the_value() {
        let mut t = build(hoist_field, Side::Value, &[("field", "line")]).unwrap();
        let mut r = ConnectRecord::new(Arc::from("t"), Some(Value::from_string("hello")));
        t.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!({"line": "hello"}));
        let mut r = rec(json!(42));
        t.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!({"line": 42}));
        let mut r = ConnectRecord::new(Arc::from("t"), Some(Value::Bytes(bytes::Bytes::from_static(&[0xff, 0xfe]))));
        let before = r.clone();
        assert!(t.apply(&mut r).is_err());
        assert_eq!(r, before);
    }

    #[test]
    fn flatten_joins_nested_names_with_the_delimiter() {
        let mut t = build(flatten, Side::Value, &[("delimiter", "_")]).unwrap();
        let mut r = rec(json!({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": null, "f": {}}));
        t.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!({"a_b": 1, "a_c_d": [1, 2], "e": null}));
        let mut t = build(flatten, Side::Value, &[]).unwrap();
        let mut r = rec(json!({"a": {"b": 1}}));
        t.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!({"a.b": 1}));
    }

    #[test]
    fn cast_fields_and_whole_values() {
        let mut t = build(cast, Side::Value, &[("spec", "i8:int8,f:float32,b:boolean,s:string,n:int64")]).unwrap();
        let mut r = rec(json!({"i8": 300, "f": "1.1", "b": 0.5, "s": {"x": 1}, "n": "17", "other": 1}));
        t.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!({"i8": 44, "f": 1.1, "b": false, "s": "{\"x\":1}", "n": 17, "other": 1}));

        let mut t = build(cast, Side::Value, &[("spec", "int32")]).unwrap();
        let mut r = ConnectRecord::new(Arc::from("t"), Some(Value::from_string("42")));
        t.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!(42));
        let mut r = ConnectRecord::new(Arc::from("t"), Some(Value::from_string("4x2")));
        let before = r.clone();
        assert!(t.apply(&mut r).is_err());
        assert_eq!(r, before);

        // A failing field leaves the other casts undone.
        let mut t = build(cast, Side::Value, &[("spec", "a:string,b:int32")]).unwrap();
        let mut r = rec(json!({"a": 1, "b": "nope"}));
        let before = r.clone();
        assert!(t.apply(&mut r).unwrap_err().contains("field b"));
        assert_eq!(r, before);

        for bad in ["int32,a:string", "a:int128", "a:"] {
            let e = build(cast, Side::Value, &[("spec", bad)]).err().unwrap();
            assert_eq!(config_key(e), "transforms.t.spec", "{bad}");
        }
        assert_eq!(CastType::Int8.cast(&json!(-129.7)).unwrap(), json!(127));
        assert_eq!(CastType::Boolean.cast(&json!("TRUE")).unwrap(), json!(true));
        assert_eq!(CastType::Float64.cast(&json!(true)).unwrap(), json!(1.0));
    }

    #[test]
    fn header_from_copies_or_moves_fields_into_headers() {
        let mut t = build(
            header_from,
            Side::Value,
            &[("fields", "id,meta"), ("headers", "h_id,h_meta"), ("operation", "copy")],
        )
        .unwrap();
        let mut r = rec(json!({"id": "a1", "meta": {"x": 1}}));
        t.apply(&mut r).unwrap();
        assert_eq!(r.header("h_id").unwrap().value.as_deref(), Some(&b"a1"[..]));
        assert_eq!(r.header("h_meta").unwrap().value.as_deref(), Some(&br#"{"x":1}"#[..]));
        assert_eq!(value(&r), &json!({"id": "a1", "meta": {"x": 1}}));
        assert!(r.value_schema.is_some());

        let mut t =
            build(header_from, Side::Value, &[("fields", "id"), ("headers", "h_id"), ("operation", "move")]).unwrap();
        let mut r = rec(json!({"id": "a1", "n": 1}));
        t.apply(&mut r).unwrap();
        assert_eq!(value(&r), &json!({"n": 1}));
        assert_eq!(r.headers.len(), 1);
        let mut tomb = ConnectRecord::new(Arc::from("t"), None);
        assert!(t.apply(&mut tomb).unwrap_err().contains("null"));
        assert!(tomb.headers.is_empty());

        let e = build(header_from, Side::Value, &[("fields", "a,b"), ("headers", "x"), ("operation", "copy")])
            .err()
            .unwrap();
        assert_eq!(config_key(e), "transforms.t.headers");
        let e =
            build(header_from, Side::Value, &[("fields", "a"), ("headers", "x"), ("operation", "swap")]).err().unwrap();
        assert_eq!(config_key(e), "transforms.t.operation");
    }
}

//! Records to Rhai maps and back, and Rhai values to JSON.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use rhai::{Array, Dynamic, ImmutableString, Map};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value as Json;

use crate::record::{ConnectRecord, Header, Value};

/// Deeper nesting than this is refused when a script's value becomes JSON: the conversion
/// recurses, and serde_json refuses to read deeper documents anyway.
const MAX_JSON_DEPTH: usize = 128;

/// Kafka's longest topic name.
const MAX_TOPIC_CHARS: usize = 249;

/// The map a script's `transform(record)` receives.
pub(super) fn record_to_map(r: &ConnectRecord) -> Map {
    let mut map = Map::new();
    map.insert("key".into(), opt_value_to_dynamic(r.key.as_ref()));
    map.insert("value".into(), opt_value_to_dynamic(r.value.as_ref()));
    let mut headers = Map::new();
    for h in &r.headers {
        let v = match &h.value {
            None => Dynamic::UNIT,
            Some(b) => bytes_to_dynamic(b),
        };
        headers.insert(h.key.as_str().into(), v);
    }
    map.insert("headers".into(), Dynamic::from_map(headers));
    map.insert("topic".into(), Dynamic::from(ImmutableString::from(&*r.topic)));
    map.insert("partition".into(), r.partition.map_or(Dynamic::UNIT, |p| Dynamic::from_int(p.into())));
    map.insert("timestamp".into(), r.timestamp_ms.map_or(Dynamic::UNIT, Dynamic::from_int));
    map
}

fn opt_value_to_dynamic(v: Option<&Value>) -> Dynamic {
    match v {
        None => Dynamic::UNIT,
        Some(Value::Json(j)) => json_to_dynamic(j),
        Some(Value::Text(b) | Value::Bytes(b)) => {
            // The rule of `Value::to_json`, parsed straight into Rhai values (no intermediate
            // `serde_json::Value`): text opening with `{` or `[` is JSON when it parses; text
            // that only looks like JSON (a log line opening with a brace) stays text.
            let first = b.iter().find(|c| !c.is_ascii_whitespace());
            if matches!(first, Some(b'{') | Some(b'[')) {
                if let Ok(parsed) = serde_json::from_slice::<JsonDynamic>(b) {
                    return parsed.0;
                }
            }
            bytes_to_dynamic(b)
        }
    }
}

/// JSON text read straight into a Rhai value, with the mapping of [`json_to_dynamic`].
pub(super) struct JsonDynamic(pub(super) Dynamic);

impl<'de> Deserialize<'de> for JsonDynamic {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DynamicVisitor).map(JsonDynamic)
    }
}

struct DynamicVisitor;

impl<'de> Visitor<'de> for DynamicVisitor {
    type Value = Dynamic;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Dynamic, E> {
        Ok(Dynamic::from_bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Dynamic, E> {
        Ok(Dynamic::from_int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Dynamic, E> {
        Ok(i64::try_from(v).map_or_else(|_| Dynamic::from_float(v as f64), Dynamic::from_int))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Dynamic, E> {
        Ok(Dynamic::from_float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Dynamic, E> {
        Ok(Dynamic::from(ImmutableString::from(v)))
    }

    fn visit_string<E>(self, v: String) -> Result<Dynamic, E> {
        Ok(Dynamic::from(ImmutableString::from(v)))
    }

    fn visit_unit<E>(self) -> Result<Dynamic, E> {
        Ok(Dynamic::UNIT)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dynamic, A::Error> {
        // No `size_hint` preallocation: the hint comes from the input.
        let mut items = Array::new();
        while let Some(JsonDynamic(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Dynamic::from_array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Dynamic, A::Error> {
        let mut map = Map::new();
        while let Some((k, JsonDynamic(v))) = access.next_entry::<std::borrow::Cow<'de, str>, JsonDynamic>()? {
            map.insert(k.as_ref().into(), v);
        }
        Ok(Dynamic::from_map(map))
    }
}

/// A string when the bytes are UTF-8, else a blob.
fn bytes_to_dynamic(b: &Bytes) -> Dynamic {
    match std::str::from_utf8(b) {
        Ok(s) => Dynamic::from(ImmutableString::from(s)),
        Err(_) => Dynamic::from_blob(b.to_vec()),
    }
}

/// JSON as Rhai values: objects → maps, arrays → arrays, integers that fit → `INT`, other
/// numbers → `FLOAT`, null → `()`.
pub(super) fn json_to_dynamic(j: &Json) -> Dynamic {
    match j {
        Json::Null => Dynamic::UNIT,
        Json::Bool(b) => Dynamic::from_bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Dynamic::from(ImmutableString::from(s.as_str())),
        Json::Array(a) => Dynamic::from_array(a.iter().map(json_to_dynamic).collect()),
        Json::Object(o) => {
            Dynamic::from_map(o.iter().map(|(k, v)| (k.as_str().into(), json_to_dynamic(v))).collect::<Map>())
        }
    }
}

/// A script's value as JSON: maps → objects, arrays → arrays, blobs → base64 strings (as
/// Kafka's `JsonConverter` writes bytes), `()` → null.
pub(super) fn dynamic_to_json(d: Dynamic) -> Result<Json, String> {
    to_json(d, 0)
}

fn to_json(d: Dynamic, depth: usize) -> Result<Json, String> {
    if depth > MAX_JSON_DEPTH {
        return Err(format!("a value nested deeper than {MAX_JSON_DEPTH} levels"));
    }
    let d = d.flatten();
    if d.is_unit() {
        return Ok(Json::Null);
    }
    if let Ok(b) = d.as_bool() {
        return Ok(Json::Bool(b));
    }
    if let Ok(i) = d.as_int() {
        return Ok(Json::from(i));
    }
    if let Ok(f) = d.as_float() {
        return serde_json::Number::from_f64(f).map(Json::Number).ok_or_else(|| format!("the number {f}, not JSON"));
    }
    if let Ok(c) = d.as_char() {
        return Ok(Json::String(c.to_string()));
    }
    if d.is_string() {
        return Ok(Json::String(d.into_string().unwrap_or_default()));
    }
    if d.is_array() {
        let items: Array = d.into_array().unwrap_or_default();
        return items.into_iter().map(|v| to_json(v, depth + 1)).collect::<Result<Vec<_>, _>>().map(Json::Array);
    }
    if d.is_blob() {
        let blob = d.into_blob().unwrap_or_default();
        return Ok(Json::String(base64::engine::general_purpose::STANDARD.encode(blob)));
    }
    if d.is_map() {
        let map = d.try_cast::<Map>().unwrap_or_default();
        let mut object = serde_json::Map::with_capacity(map.len());
        for (k, v) in map {
            object.insert(k.to_string(), to_json(v, depth + 1)?);
        }
        return Ok(Json::Object(object));
    }
    Err(format!("a {}, which has no JSON form", d.type_name()))
}

/// A script's `key` or `value`: `()` → null, string → text, blob → bytes, anything else →
/// structured data.
fn dynamic_to_value(d: Dynamic) -> Result<Option<Value>, String> {
    let d = d.flatten();
    if d.is_unit() {
        return Ok(None);
    }
    if d.is_string() {
        return Ok(Some(Value::Text(Bytes::from(d.into_string().unwrap_or_default()))));
    }
    if d.is_blob() {
        return Ok(Some(Value::Bytes(Bytes::from(d.into_blob().unwrap_or_default()))));
    }
    dynamic_to_json(d).map(|j| Some(Value::Json(j)))
}

/// Writes the fields of a returned record map over `record`; fields the map leaves out keep
/// their value. A schema is dropped when the script changed the value it describes.
pub(super) fn apply_map(map: Map, record: &mut ConnectRecord) -> Result<(), String> {
    for (field, v) in map {
        match field.as_str() {
            "key" => {
                let key = dynamic_to_value(v).map_err(|e| format!("a record map whose key is {e}"))?;
                if record.key_schema.is_some() && key != record.key {
                    record.key_schema = None;
                }
                record.key = key;
            }
            "value" => {
                let value = dynamic_to_value(v).map_err(|e| format!("a record map whose value is {e}"))?;
                if record.value_schema.is_some() && value != record.value {
                    record.value_schema = None;
                }
                record.value = value;
            }
            "headers" => record.headers = headers_from(v)?,
            "topic" => {
                let topic = v.into_immutable_string().map_err(|t| format!("a record map whose topic is a {t}"))?;
                if topic.is_empty() || topic.chars().count() > MAX_TOPIC_CHARS {
                    return Err(format!("a record map whose topic {topic:?} is empty or over {MAX_TOPIC_CHARS} chars"));
                }
                if *topic != *record.topic {
                    record.topic = Arc::from(topic.as_str());
                }
            }
            "partition" => {
                record.partition = if v.is_unit() {
                    None
                } else {
                    let p = v.as_int().map_err(|t| format!("a record map whose partition is a {t}"))?;
                    Some(
                        i32::try_from(p)
                            .ok()
                            .filter(|p| *p >= 0)
                            .ok_or_else(|| format!("a record map whose partition {p} is out of range"))?,
                    )
                }
            }
            "timestamp" => {
                record.timestamp_ms = if v.is_unit() {
                    None
                } else {
                    Some(v.as_int().map_err(|t| format!("a record map whose timestamp is a {t}"))?)
                }
            }
            other => {
                return Err(format!(
                "a record map with unknown field {other:?} (fields: key, value, headers, topic, partition, timestamp)"
            ))
            }
        }
    }
    Ok(())
}

fn headers_from(v: Dynamic) -> Result<Vec<Header>, String> {
    let v = v.flatten();
    if v.is_unit() {
        return Ok(Vec::new());
    }
    let map = v.try_cast::<Map>().ok_or("a record map whose headers are not a map")?;
    let mut headers = Vec::with_capacity(map.len());
    for (name, v) in map {
        let v = v.flatten();
        let value = if v.is_unit() {
            None
        } else if v.is_string() {
            Some(Bytes::from(v.into_string().unwrap_or_default()))
        } else if v.is_blob() {
            Some(Bytes::from(v.into_blob().unwrap_or_default()))
        } else {
            let j = dynamic_to_json(v).map_err(|e| format!("a record map whose header {name} is {e}"))?;
            Some(Bytes::from(j.to_string()))
        };
        headers.push(Header { key: name.to_string(), value });
    }
    Ok(headers)
}

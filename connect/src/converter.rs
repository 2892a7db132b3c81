//! Converters between [`Value`]s and Kafka bytes, with Kafka Connect's names:
//! `StringConverter`, `ByteArrayConverter`, `JsonConverter` (`schemas.enable`). The
//! `org.apache.kafka.connect.*` class names are accepted as aliases.
//!
//! `StringConverter` writes text and bytes as they are and structured values as JSON text (Kafka
//! would write a Java `toString`); it reads UTF-8 text (invalid sequences replaced).
//! `JsonConverter` with `schemas.enable=true` (Kafka's default) writes and expects the
//! `{"schema": …, "payload": …}` envelope; the schema comes from the record when a source gave
//! one, else it is inferred from the value.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Map, Value as Json};

use crate::config::{ParsedConfig, Props};
use crate::error::{ConnectError, Result};
use crate::record::Value;

/// A configured converter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Converter {
    String,
    ByteArray,
    Json { schemas_enable: bool },
}

/// Key or value side, for config prefixes and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Key,
    Value,
}

impl Side {
    fn prefix(self) -> &'static str {
        match self {
            Side::Key => "key.converter",
            Side::Value => "value.converter",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Side::Key => "key",
            Side::Value => "value",
        }
    }
}

impl Converter {
    /// Reads `key.converter` / `value.converter` (and `<prefix>.schemas.enable`) from `props`,
    /// falling back to `defaults` (the worker config), then to `StringConverter`.
    pub fn from_config(side: Side, props: &Props, defaults: &Props) -> Result<Converter> {
        let prefix = side.prefix();
        let class = props.get(prefix).or_else(|| defaults.get(prefix)).map(String::as_str).unwrap_or("StringConverter");
        let schemas_key = format!("{prefix}.schemas.enable");
        let schemas = props.get(&schemas_key).or_else(|| defaults.get(&schemas_key)).cloned();
        let short = class.rsplit('.').next().unwrap_or(class);
        match short {
            "StringConverter" => Ok(Converter::String),
            "ByteArrayConverter" => Ok(Converter::ByteArray),
            "JsonConverter" => {
                let parsed = ParsedConfig::from_props(
                    schemas.map(|v| [(schemas_key.clone(), v)].into_iter().collect()).unwrap_or_default(),
                );
                Ok(Converter::Json { schemas_enable: parsed.get_bool(&schemas_key)?.unwrap_or(true) })
            }
            _ => Err(ConnectError::config(
                prefix,
                format!("unknown converter {class}: use StringConverter, ByteArrayConverter or JsonConverter"),
            )),
        }
    }

    /// The converter's name for error messages and `__connect.errors.class.name`.
    pub fn name(&self) -> &'static str {
        match self {
            Converter::String => "org.apache.kafka.connect.storage.StringConverter",
            Converter::ByteArray => "org.apache.kafka.connect.converters.ByteArrayConverter",
            Converter::Json { .. } => "org.apache.kafka.connect.json.JsonConverter",
        }
    }

    /// Value (or key) → Kafka bytes. `None` stays null (a tombstone for values).
    pub fn to_kafka(&self, side: Side, value: Option<&Value>, schema: Option<&Json>) -> Result<Option<Bytes>> {
        // Null stays null with every converter (a tombstone must reach Kafka as one).
        let Some(value) = value else { return Ok(None) };
        match self {
            Converter::String => Ok(Some(match value {
                Value::Bytes(b) | Value::Text(b) => b.clone(),
                Value::Json(Json::String(s)) => Bytes::from(s.clone()),
                Value::Json(j) => Bytes::from(j.to_string()),
            })),
            Converter::ByteArray => match value {
                Value::Bytes(b) | Value::Text(b) => Ok(Some(b.clone())),
                Value::Json(Json::String(s)) => Ok(Some(Bytes::from(s.clone()))),
                Value::Json(_) => Err(self.error(side, "ByteArrayConverter takes bytes or text, not structured data")),
            },
            Converter::Json { schemas_enable } => {
                // Serialised by reference: a source row's schema and payload are written out, not
                // deep-copied into a new document first (that copy was most of a JDBC source's
                // per-row cost with schemas.enable).
                let owned;
                let payload: &Json = match value {
                    Value::Json(j) => j,
                    Value::Text(b) => {
                        owned = Json::String(String::from_utf8_lossy(b).into_owned());
                        &owned
                    }
                    Value::Bytes(b) => {
                        owned = Json::String(base64::engine::general_purpose::STANDARD.encode(b));
                        &owned
                    }
                };
                let err = |e: serde_json::Error| self.error(side, e.to_string());
                let mut out = Vec::with_capacity(value.size_bytes() + 16);
                if *schemas_enable {
                    let inferred;
                    let schema: &Json = match (schema, value) {
                        (Some(s), _) => s,
                        (None, Value::Bytes(_)) => {
                            inferred = json!({"type": "bytes", "optional": false});
                            &inferred
                        }
                        (None, _) => {
                            inferred = infer_schema(payload);
                            &inferred
                        }
                    };
                    // Kafka's JsonConverter writes the schema first.
                    out.extend_from_slice(b"{\"schema\":");
                    serde_json::to_writer(&mut out, schema).map_err(err)?;
                    out.extend_from_slice(b",\"payload\":");
                    serde_json::to_writer(&mut out, payload).map_err(err)?;
                    out.push(b'}');
                } else {
                    serde_json::to_writer(&mut out, payload).map_err(err)?;
                }
                Ok(Some(Bytes::from(out)))
            }
        }
    }

    /// Kafka bytes → value (and the schema, when the bytes carried one).
    pub fn from_kafka(&self, side: Side, bytes: Option<&Bytes>) -> Result<(Option<Value>, Option<Arc<Json>>)> {
        let Some(bytes) = bytes else { return Ok((None, None)) };
        match self {
            Converter::String => Ok((
                Some(match std::str::from_utf8(bytes) {
                    Ok(_) => Value::Text(bytes.clone()),
                    Err(_) => Value::Text(Bytes::from(String::from_utf8_lossy(bytes).into_owned())),
                }),
                None,
            )),
            Converter::ByteArray => Ok((Some(Value::Bytes(bytes.clone())), None)),
            Converter::Json { schemas_enable } => {
                let doc: Json =
                    serde_json::from_slice(bytes).map_err(|e| self.error(side, format!("not valid JSON: {e}")))?;
                if !schemas_enable {
                    return Ok((if doc.is_null() { None } else { Some(Value::Json(doc)) }, None));
                }
                match doc {
                    Json::Object(mut map)
                        if map.len() == 2 && map.contains_key("schema") && map.contains_key("payload") =>
                    {
                        let payload = map.remove("payload").unwrap_or(Json::Null);
                        let schema = map.remove("schema").filter(|s| !s.is_null()).map(Arc::new);
                        Ok((if payload.is_null() { None } else { Some(Value::Json(payload)) }, schema))
                    }
                    Json::Null => Ok((None, None)),
                    _ => Err(self.error(
                        side,
                        "JsonConverter with schemas.enable requires \"schema\" and \"payload\" fields and may not \
                         contain additional fields; set schemas.enable=false for plain JSON",
                    )),
                }
            }
        }
    }

    fn error(&self, side: Side, reason: impl Into<String>) -> ConnectError {
        ConnectError::Conversion { what: side.what(), converter: self.name(), reason: reason.into() }
    }
}

/// A Kafka Connect schema for a JSON value: objects become structs (fields in key order),
/// integers int64, other numbers float64, arrays take their first element's schema.
pub fn infer_schema(v: &Json) -> Json {
    match v {
        Json::Null => json!({"type": "string", "optional": true}),
        Json::Bool(_) => json!({"type": "boolean", "optional": true}),
        Json::Number(n) if n.is_i64() || n.is_u64() => json!({"type": "int64", "optional": true}),
        Json::Number(_) => json!({"type": "double", "optional": true}),
        Json::String(_) => json!({"type": "string", "optional": true}),
        Json::Array(a) => json!({
            "type": "array",
            "items": a.first().map(infer_schema).unwrap_or_else(|| json!({"type": "string", "optional": true})),
            "optional": true
        }),
        Json::Object(o) => {
            let fields: Vec<Json> = o
                .iter()
                .map(|(k, v)| {
                    let mut f = match infer_schema(v) {
                        Json::Object(m) => m,
                        _ => Map::new(),
                    };
                    f.insert("field".into(), Json::String(k.clone()));
                    Json::Object(f)
                })
                .collect();
            json!({"type": "struct", "fields": fields, "optional": false})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Props {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn converters_resolve_kafka_names_and_schemas_enable() {
        let none = Props::new();
        assert_eq!(Converter::from_config(Side::Value, &none, &none).unwrap(), Converter::String);
        let p = props(&[("value.converter", "org.apache.kafka.connect.json.JsonConverter")]);
        assert_eq!(Converter::from_config(Side::Value, &p, &none).unwrap(), Converter::Json { schemas_enable: true });
        let p = props(&[("value.converter", "JsonConverter"), ("value.converter.schemas.enable", "false")]);
        assert_eq!(Converter::from_config(Side::Value, &p, &none).unwrap(), Converter::Json { schemas_enable: false });
        let p = props(&[("key.converter", "Avro")]);
        assert!(Converter::from_config(Side::Key, &p, &none).is_err());
    }

    #[test]
    fn json_round_trips_with_and_without_envelope() {
        let c = Converter::Json { schemas_enable: true };
        let v = Value::Json(json!({"a": 1, "b": "x"}));
        let bytes = c.to_kafka(Side::Value, Some(&v), None).unwrap().unwrap();
        let doc: Json = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc["schema"]["type"], "struct");
        assert_eq!(doc["payload"]["a"], 1);
        let (back, schema) = c.from_kafka(Side::Value, Some(&bytes)).unwrap();
        assert_eq!(back, Some(v));
        assert_eq!(schema.unwrap()["fields"][0]["field"], "a");
        assert!(c.from_kafka(Side::Value, Some(&Bytes::from_static(b"{\"a\":1}"))).is_err());
        assert!(c.from_kafka(Side::Value, Some(&Bytes::from_static(b"{not json"))).is_err());
        let plain = Converter::Json { schemas_enable: false };
        let (v, _) = plain.from_kafka(Side::Value, Some(&Bytes::from_static(b"[1,2]"))).unwrap();
        assert_eq!(v, Some(Value::Json(json!([1, 2]))));
        let text = plain.to_kafka(Side::Value, Some(&Value::from_string("hi")), None).unwrap().unwrap();
        assert_eq!(&text[..], b"\"hi\"");
    }

    #[test]
    fn string_converter_passes_bytes_and_writes_json_text() {
        let c = Converter::String;
        let line = Bytes::from_static(b"GET / 200");
        assert_eq!(c.to_kafka(Side::Value, Some(&Value::Text(line.clone())), None).unwrap(), Some(line.clone()));
        let j = c.to_kafka(Side::Value, Some(&Value::Json(json!({"a": 1}))), None).unwrap().unwrap();
        assert_eq!(&j[..], b"{\"a\":1}");
        let (v, _) = c.from_kafka(Side::Value, Some(&Bytes::from_static(b"\xff\xfe"))).unwrap();
        assert!(v.unwrap().as_str().is_some());
        assert_eq!(c.to_kafka(Side::Value, None, None).unwrap(), None);
    }
}

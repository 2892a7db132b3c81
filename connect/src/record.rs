//! The record that crosses every boundary inside a worker: what a source task emits, what a
//! sink task receives, and what converters and transforms see.
//!
//! Values stay in the cheapest form that serves: [`Value::Bytes`] and [`Value::Text`] hold the
//! bytes as they came (a file line, a Kafka value read with `StringConverter`) without copying
//! or parsing; [`Value::Json`] is structured data (a parsed JSON document, a database row, the
//! result of a transform that works on fields). Transforms that need fields parse
//! `Text`/`Bytes` holding JSON on demand ([`Value::to_json`]).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value as Json;

pub use spate_client::RecordHeader as Header;

/// A key or a value. `None` in an `Option<Value>` is Kafka's null (a tombstone for values).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Opaque bytes (`ByteArrayConverter`, a binary file).
    Bytes(Bytes),
    /// UTF-8 text kept as bytes; the constructor [`Value::text`] checks the encoding.
    Text(Bytes),
    /// Structured data: objects, arrays, numbers, booleans, strings.
    Json(Json),
}

impl Value {
    /// Text from bytes that must be UTF-8.
    pub fn text(bytes: Bytes) -> Result<Value, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Value::Text(bytes))
    }

    /// Text from a string.
    pub fn from_string(s: impl Into<String>) -> Value {
        Value::Text(Bytes::from(s.into()))
    }

    /// The text of a `Text` value, or of a `Json` string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(b) => std::str::from_utf8(b).ok(),
            Value::Json(Json::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The value as structured data: `Json` as is, `Text`/`Bytes` parsed when they hold a JSON
    /// object or array (anything else becomes a JSON string, or fails for non-UTF-8 bytes).
    pub fn to_json(&self) -> Result<Json, String> {
        match self {
            Value::Json(j) => Ok(j.clone()),
            Value::Text(b) | Value::Bytes(b) => {
                let trimmed = b.iter().position(|c| !c.is_ascii_whitespace()).map(|i| b[i]);
                if matches!(trimmed, Some(b'{') | Some(b'[')) {
                    serde_json::from_slice(b).map_err(|e| format!("not valid JSON: {e}"))
                } else {
                    std::str::from_utf8(b)
                        .map(|s| Json::String(s.to_owned()))
                        .map_err(|_| "bytes are not UTF-8 text".to_owned())
                }
            }
        }
    }

    /// The value's size in bytes as it would be written (structured values estimated by their
    /// JSON text); what byte-based buffers count.
    pub fn size_bytes(&self) -> usize {
        match self {
            Value::Bytes(b) | Value::Text(b) => b.len(),
            Value::Json(j) => json_size_estimate(j),
        }
    }
}

fn json_size_estimate(j: &Json) -> usize {
    match j {
        Json::Null | Json::Bool(_) => 5,
        Json::Number(_) => 12,
        Json::String(s) => s.len() + 2,
        Json::Array(a) => 2 + a.iter().map(json_size_estimate).sum::<usize>() + a.len(),
        Json::Object(o) => 2 + o.iter().map(|(k, v)| k.len() + 4 + json_size_estimate(v)).sum::<usize>(),
    }
}

/// Where a sink record came from in Kafka. A transform may change the record's `topic` and
/// `partition` (RegexRouter, a script); these stay as read, so sinks that track offsets key them
/// here (Kafka Connect's `originalTopic`, `originalKafkaPartition`, `originalKafkaOffset`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaCoordinates {
    /// The topic it was read from.
    pub topic: Arc<str>,
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
}

/// One record. Source tasks fill `topic`, `key`, `value`, `headers` and optionally
/// `partition`/`timestamp_ms`; the runtime fills `kafka` for sink records. Source offsets
/// travel per batch ([`crate::connector::SourceBatch`]), not per record.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectRecord {
    /// The topic it goes to (source) or came from (sink). Shared: a batch names few topics.
    pub topic: Arc<str>,
    /// The Kafka partition to write to (`None`: the partitioner picks by key); for sink
    /// records, the partition read from.
    pub partition: Option<i32>,
    pub key: Option<Value>,
    pub value: Option<Value>,
    /// Kafka Connect schema of the key, in `JsonConverter`'s JSON form, when one is known.
    pub key_schema: Option<Arc<Json>>,
    /// Kafka Connect schema of the value, in `JsonConverter`'s JSON form, when one is known
    /// (a database row's columns, a `schemas.enable` envelope). Transforms that change the
    /// value's shape clear it; converters that need one infer it from the value.
    pub value_schema: Option<Arc<Json>>,
    /// Milliseconds since the Unix epoch (`None`: the producer stamps it).
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<Header>,
    /// Sink records: where in Kafka the record was read.
    pub kafka: Option<KafkaCoordinates>,
}

impl ConnectRecord {
    /// A record for `topic` with only a value.
    pub fn new(topic: Arc<str>, value: Option<Value>) -> Self {
        ConnectRecord {
            topic,
            partition: None,
            key: None,
            value,
            key_schema: None,
            value_schema: None,
            timestamp_ms: None,
            headers: Vec::new(),
            kafka: None,
        }
    }

    /// The first header named `key`.
    pub fn header(&self, key: &str) -> Option<&Header> {
        self.headers.iter().find(|h| h.key == key)
    }

    /// Rough size in bytes (key + value + headers), for byte-based buffers.
    pub fn size_bytes(&self) -> usize {
        self.key.as_ref().map_or(0, Value::size_bytes)
            + self.value.as_ref().map_or(0, Value::size_bytes)
            + self.headers.iter().map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len())).sum::<usize>()
            + 64
    }
}

//! Kafka Connect's error handling, applied the same way to every failure kind (converter,
//! transform, script limit, task poll, sink write) and — beyond Kafka Connect — to source
//! connectors too: `errors.tolerance` = `none` (the task fails, its status FAILED with the
//! error as trace) or `all` (the record is skipped, logged with `errors.log.enable`, and written
//! to `errors.deadletterqueue.topic.name` with Kafka's `__connect.errors.*` headers when
//! `errors.deadletterqueue.context.headers.enable`).

use bytes::Bytes;
use serde_json::Value as Json;
use spate_client::{DeliveryFuture, Producer, ProducerRecord, RecordHeader};
use tracing::warn;

use crate::config::{ConfigDef, ConfigType, Importance, ParsedConfig, Props, Validator};
use crate::connector::FailedRecord;
use crate::converter::{Converter, Side};
use crate::error::{ConnectError, Result};
use crate::record::Value;

/// The `errors.*` keys every connector takes.
pub fn config_def() -> ConfigDef {
    ConfigDef::new()
        .define("errors.tolerance", ConfigType::String, Some("none"), Importance::Medium,
            "Behaviour for errors during conversion, transformation, polling and writing: `none` fails the task on the first error; `all` skips the failed record (logging it and sending it to the dead-letter topic when configured) and carries on.")
        .with_validator(Validator::OneOf(&["none", "all"]))
        .in_group("Error Handling")
        .define("errors.retry.timeout", ConfigType::Long, Some("0"), Importance::Medium,
            "How long a failed task poll, sink write or flush is retried before the error counts (0: no retries, -1: forever).")
        .in_group("Error Handling")
        .define("errors.retry.delay.max.ms", ConfigType::Long, Some("60000"), Importance::Medium,
            "The longest wait between retries (waits double from 300 ms).")
        .in_group("Error Handling")
        .define("errors.log.enable", ConfigType::Boolean, Some("false"), Importance::Medium,
            "Log every tolerated error with its connector, task, stage and (with errors.log.include.messages) the record.")
        .in_group("Error Handling")
        .define("errors.log.include.messages", ConfigType::Boolean, Some("false"), Importance::Medium,
            "Include the record's topic, partition, offset and key in the error log line.")
        .in_group("Error Handling")
        .define("errors.deadletterqueue.topic.name", ConfigType::String, Some(""), Importance::Medium,
            "Topic that receives the records that failed, for sources and transforms as well as sinks (empty: none). Created on first use.")
        .in_group("Error Handling")
        .define("errors.deadletterqueue.topic.replication.factor", ConfigType::Int, Some("-1"), Importance::Low,
            "Replication factor of the dead-letter topic when it is created (-1: the broker default).")
        .in_group("Error Handling")
        .define("errors.deadletterqueue.context.headers.enable", ConfigType::Boolean, Some("false"), Importance::Medium,
            "Add Kafka's __connect.errors.* headers (topic, partition, offset, connector, task, stage, class, exception message) to dead-letter records.")
        .in_group("Error Handling")
}

/// A connector's error policy.
#[derive(Debug, Clone)]
pub struct ErrorPolicy {
    pub tolerate_all: bool,
    pub retry_timeout_ms: i64,
    pub retry_delay_max_ms: u64,
    pub log: bool,
    pub log_messages: bool,
    pub dlq_topic: Option<String>,
    pub dlq_replication_factor: i16,
    pub dlq_context_headers: bool,
}

impl ErrorPolicy {
    /// Reads the `errors.*` keys of a connector config.
    pub fn from_config(props: &Props) -> Result<ErrorPolicy> {
        let c: ParsedConfig = config_def().parse(props)?;
        Ok(ErrorPolicy {
            tolerate_all: c.get_str("errors.tolerance") == Some("all"),
            retry_timeout_ms: c.get_i64("errors.retry.timeout")?.unwrap_or(0),
            retry_delay_max_ms: c.get_i64("errors.retry.delay.max.ms")?.unwrap_or(60_000).max(0) as u64,
            log: c.get_bool("errors.log.enable")?.unwrap_or(false),
            log_messages: c.get_bool("errors.log.include.messages")?.unwrap_or(false),
            dlq_topic: c.get_str("errors.deadletterqueue.topic.name").filter(|t| !t.is_empty()).map(str::to_owned),
            dlq_replication_factor: c.get_i64("errors.deadletterqueue.topic.replication.factor")?.unwrap_or(-1) as i16,
            dlq_context_headers: c.get_bool("errors.deadletterqueue.context.headers.enable")?.unwrap_or(false),
        })
    }
}

/// Where a task is, for log lines and context headers.
#[derive(Debug, Clone)]
pub struct TaskRef {
    pub connector: String,
    pub task: u32,
}

/// The raw Kafka bytes of a sink record that failed (what the dead-letter topic gets, as Kafka
/// Connect writes the original bytes).
#[derive(Debug, Clone, Default)]
pub struct RawRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
}

/// Routes failures. Returns the dead-letter deliveries to wait for before offsets move past
/// these records, or the error that fails the task (`errors.tolerance=none`).
#[expect(clippy::too_many_arguments, reason = "each argument is a distinct piece of the task's context")]
pub fn route_failures(
    policy: &ErrorPolicy,
    task: &TaskRef,
    failed: Vec<(FailedRecord, Option<RawRecord>)>,
    key_converter: &Converter,
    value_converter: &Converter,
    producer: &Producer,
    handle: &tokio::runtime::Handle,
    dead_lettered: &std::sync::atomic::AtomicU64,
) -> Result<Vec<DeliveryFuture>> {
    let mut deliveries = Vec::new();
    for (f, raw) in failed {
        if !policy.tolerate_all {
            return Err(ConnectError::Internal(format!(
                "tolerance exceeded in error handler: stage {} ({}) failed: {}",
                f.stage, f.class_name, f.error
            )));
        }
        if policy.log {
            if policy.log_messages {
                warn!(connector = %task.connector, task = task.task, stage = f.stage, class = %f.class_name,
                    topic = %f.record.topic, kafka = ?f.record.kafka, key = ?f.record.key, error = %f.error,
                    "error tolerated; record skipped");
            } else {
                warn!(connector = %task.connector, task = task.task, stage = f.stage, class = %f.class_name,
                    error = %f.error, "error tolerated; record skipped");
            }
        }
        metrics::counter!("spate_connect_record_errors_total", "connector" => task.connector.clone(), "stage" => f.stage)
            .increment(1);
        let Some(topic) = &policy.dlq_topic else { continue };
        let raw = raw.unwrap_or_else(|| RawRecord {
            key: f.record.key.as_ref().map(|k| bytes_of(key_converter, Side::Key, k)),
            value: f.record.value.as_ref().map(|v| bytes_of(value_converter, Side::Value, v)),
            headers: f.record.headers.clone(),
        });
        let mut record =
            ProducerRecord { key: raw.key, value: raw.value, headers: raw.headers, ..ProducerRecord::default() };
        if policy.dlq_context_headers {
            let h =
                |k: &str, v: String| RecordHeader { key: format!("__connect.errors.{k}"), value: Some(Bytes::from(v)) };
            // Where the record was read, not where a transform meant to send it.
            let topic = f.record.kafka.as_ref().map_or(&f.record.topic, |k| &k.topic);
            record.headers.push(h("topic", topic.to_string()));
            if let Some(k) = &f.record.kafka {
                record.headers.push(h("partition", k.partition.to_string()));
                record.headers.push(h("offset", k.offset.to_string()));
            }
            record.headers.push(h("connector.name", task.connector.clone()));
            record.headers.push(h("task.id", task.task.to_string()));
            record.headers.push(h("stage", f.stage.to_owned()));
            record.headers.push(h("class.name", f.class_name.clone()));
            record.headers.push(h("exception.class.name", error_class(&f.error).to_owned()));
            record.headers.push(h("exception.message", f.error.to_string()));
            record.headers.push(h("exception.stacktrace", format!("{:?}", f.error)));
        }
        let headers = record.headers.clone();
        let delivery = match handle.block_on(producer.send(topic, record)) {
            Ok(d) => d,
            // Too big for a produce request even as a dead letter: keep the context headers,
            // drop the key and value (the error says what they were).
            Err(spate_client::Error::RecordTooLarge { size, .. }) => {
                warn!(connector = %task.connector, task = task.task, size, "dead-letter record too large; sent without key and value");
                let small = ProducerRecord { headers, ..ProducerRecord::default() };
                handle.block_on(producer.send(topic, small))?
            }
            Err(e) => return Err(e.into()),
        };
        dead_lettered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("spate_connect_deadletterqueue_records_total", "connector" => task.connector.clone())
            .increment(1);
        deliveries.push(delivery);
    }
    Ok(deliveries)
}

/// The bytes of a value that failed, as close to what was read as possible: text and bytes as
/// they are, structured values through the converter, else as JSON text.
fn bytes_of(converter: &Converter, side: Side, v: &Value) -> Bytes {
    match v {
        Value::Bytes(b) | Value::Text(b) => b.clone(),
        Value::Json(j) => {
            converter.to_kafka(side, Some(v), None).ok().flatten().unwrap_or_else(|| Bytes::from(Json::to_string(j)))
        }
    }
}

fn error_class(e: &ConnectError) -> &'static str {
    match e {
        ConnectError::Conversion { .. } => "org.apache.kafka.connect.errors.DataException",
        ConnectError::Transform { .. } => "org.apache.kafka.connect.errors.DataException",
        ConnectError::Config { .. } => "org.apache.kafka.common.config.ConfigException",
        ConnectError::External { .. } => "org.apache.kafka.connect.errors.ConnectException",
        ConnectError::Kafka(_) => "org.apache.kafka.common.KafkaException",
        _ => "org.apache.kafka.connect.errors.ConnectException",
    }
}

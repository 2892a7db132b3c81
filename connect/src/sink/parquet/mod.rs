//! The Parquet sink (`ParquetSink`): topics to Parquet files in a local directory, laid out as
//! Confluent's S3/HDFS sinks lay them out:
//! `<path>/<topics.dir>/<topic>/<encoded partition>/<topic>+<kafkaPartition>+<startOffset>.parquet`
//! (the start offset zero-padded to `filename.offset.zero.pad.width` digits, as Confluent's).
//!
//! **Values.** JSON objects: text or bytes from `StringConverter`/`ByteArrayConverter` (the
//! fast path: arrow-json decodes a whole `put` batch from the raw bytes at once), or
//! structured values from `JsonConverter`. The Arrow schema is inferred from the values and
//! merged across records, or derived from the record's Connect schema when it carries one
//! (`Timestamp` → `TIMESTAMP(MICROS, UTC)`). A new field (or a column widening) rotates the
//! partition's files and the new ones have the wider schema; a record whose field conflicts
//! with the open files' type, a value that is not a JSON object, or invalid JSON goes back to
//! the runtime as a failure (stage `TASK_PUT`, routed by `errors.tolerance`). Tombstones
//! (null values) are skipped.
//!
//! **Exactly-once files.** See [`commit`]: a rotation closes every open file of a Kafka
//! partition together; `pre_commit` offers only offsets of committed groups; `open` recovers
//! and resumes from the partition's manifest, and `put` drops records below the resume point
//! (the runtime hands over records polled before its seek).
//!
//! **Memory.** Each file's row group is flushed at `parquet.row.group.bytes`; when all open
//! files of the task together buffer more than `parquet.buffer.max.bytes`, the biggest
//! buffers are flushed as row groups until under it.

mod commit;
mod partitioner;
mod schema;
mod writer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ::parquet::basic::{Compression, ZstdLevel};
use ::parquet::file::properties::WriterProperties;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef, TimeUnit};
use serde_json::Value as Json;
use spate_client::TopicPartition;

use self::partitioner::{Partitioner, PathFormat, TimestampExtractor};
use self::schema::SchemaPlan;
use self::writer::{LocalStorage, OpenFile, Storage};
use crate::config::{ConfigDef, ConfigType, Importance, ParsedConfig, Props, Validator};
use crate::connector::{Connector, ConnectorType, FailedRecord, SinkTask, SinkTaskContext};
use crate::error::{ConnectError, Result};
use crate::record::{ConnectRecord, Value};

const CLASS: &str = "ParquetSink";

/// The Parquet sink connector: `connector.class` = `ParquetSink` (or `ParquetSinkConnector`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ParquetSinkConnector;

fn config_def() -> ConfigDef {
    ConfigDef::new()
        .define("path", ConfigType::String, None, Importance::High, "The local directory files are written under.")
        .with_validator(Validator::NonEmpty)
        .define(
            "topics.dir",
            ConfigType::String,
            Some("topics"),
            Importance::Medium,
            "The directory under path that holds one directory per topic.",
        )
        .with_validator(Validator::Custom(relative_dir))
        .define(
            "flush.size",
            ConfigType::Long,
            Some("100000"),
            Importance::High,
            "Records per file: when a file of a Kafka partition reaches it, all open files of that partition \
             are committed together.",
        )
        .with_validator(Validator::Range { min: 1.0, max: 9.0e18 })
        .define(
            "rotate.interval.ms",
            ConfigType::Long,
            Some("-1"),
            Importance::Medium,
            "Commit a partition's files once a record's Kafka timestamp is this far past the first record of \
             the files (record time: deterministic on replay). -1: off.",
        )
        .with_validator(Validator::Range { min: -1.0, max: 9.0e18 })
        .define(
            "rotate.schedule.interval.ms",
            ConfigType::Long,
            Some("-1"),
            Importance::Medium,
            "Commit open files at every multiple of this interval of the wall clock (UTC), so a quiet \
             partition's records still become visible. -1: off.",
        )
        .with_validator(Validator::Range { min: -1.0, max: 9.0e18 })
        .define(
            "partitioner.class",
            ConfigType::String,
            Some("default"),
            Importance::High,
            "default: directory partition=<kafka partition>. field: <field>=<value> directories by \
             partition.field.name (the fields are removed from the rows). time: path.format over \
             partition.duration.ms buckets of timestamp.extractor's time, in UTC. Confluent's class names \
             (DefaultPartitioner, FieldPartitioner, TimeBasedPartitioner) are accepted.",
        )
        .with_validator(Validator::Custom(|v| parse_partitioner_class(v).map(|_| ())))
        .define(
            "partition.field.name",
            ConfigType::List,
            Some(""),
            Importance::Medium,
            "The value fields the field partitioner uses (one directory level each).",
        )
        .define(
            "path.format",
            ConfigType::String,
            Some("'dt'=YYYY-MM-dd/'hour'=HH"),
            Importance::Medium,
            "The time partitioner's directories, a Joda-Time pattern: YYYY, MM, dd, HH, mm, ss; text in quotes.",
        )
        .with_validator(Validator::Custom(|v| PathFormat::parse(v).map(|_| ())))
        .define(
            "partition.duration.ms",
            ConfigType::Long,
            Some("3600000"),
            Importance::Medium,
            "The time partitioner's bucket length.",
        )
        .with_validator(Validator::Range { min: 1.0, max: 9.0e18 })
        .define(
            "timestamp.extractor",
            ConfigType::String,
            Some("Record"),
            Importance::Medium,
            "The time partitioner's time: Record (the Kafka timestamp), RecordField (timestamp.field of the \
             value: epoch milliseconds or an RFC 3339 string), Wallclock.",
        )
        .with_validator(Validator::OneOf(&["Record", "RecordField", "Wallclock"]))
        .define(
            "timestamp.field",
            ConfigType::String,
            Some(""),
            Importance::Medium,
            "The value field RecordField reads.",
        )
        .define(
            "compression",
            ConfigType::String,
            Some("zstd"),
            Importance::Medium,
            "Parquet page compression: zstd, snappy or none.",
        )
        .with_validator(Validator::OneOf(&["zstd", "snappy", "none"]))
        .define(
            "parquet.codec",
            ConfigType::String,
            Some(""),
            Importance::Low,
            "Confluent's name for compression (wins when set): zstd, snappy, none or uncompressed.",
        )
        .with_validator(Validator::Custom(codec_name))
        .define(
            "filename.offset.zero.pad.width",
            ConfigType::Int,
            Some("10"),
            Importance::Low,
            "Digits the start offset in file names is zero-padded to.",
        )
        .with_validator(Validator::Range { min: 0.0, max: 20.0 })
        .define(
            "parquet.row.group.bytes",
            ConfigType::Long,
            Some("67108864"),
            Importance::Low,
            "A file's row group is written out once its encoded size reaches this.",
        )
        .with_validator(Validator::Range { min: 1024.0, max: 9.0e18 })
        .define(
            "parquet.buffer.max.bytes",
            ConfigType::Long,
            Some("268435456"),
            Importance::Medium,
            "The most bytes one task buffers in row groups not yet written, over all its open files; past it \
             the biggest row groups are written out early.",
        )
        .with_validator(Validator::Range { min: 1024.0, max: 9.0e18 })
        .define(
            "parquet.max.open.files",
            ConfigType::Int,
            Some("1000"),
            Importance::Low,
            "The most files one task keeps open over all its partitions; a chunk that needs more commits \
             its own partition's open files first, then other partitions' (largest first).",
        )
        .with_validator(Validator::Range { min: 1.0, max: 1.0e6 })
}

/// The most columns (leaf fields, nested ones included) a file takes; a record that would
/// widen the schema past it is a failed record (a bound on memory and metadata per file).
const MAX_COLUMNS: usize = 1000;

fn leaf_count(fields: &arrow_schema::Fields) -> usize {
    fields
        .iter()
        .map(|f| match f.data_type() {
            DataType::Struct(inner) => leaf_count(inner),
            DataType::List(item) => match item.data_type() {
                DataType::Struct(inner) => leaf_count(inner),
                _ => 1,
            },
            _ => 1,
        })
        .sum()
}

fn codec_name(v: &str) -> std::result::Result<(), String> {
    match v.trim() {
        "" | "zstd" | "snappy" | "none" | "uncompressed" => Ok(()),
        _ => Err("must be one of zstd, snappy, none, uncompressed".to_owned()),
    }
}

fn relative_dir(v: &str) -> std::result::Result<(), String> {
    let p = std::path::Path::new(v);
    if v.is_empty() || p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err("must be a relative directory without . or .. (it lives under path)".to_owned());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartitionerKind {
    Default,
    Field,
    Time,
}

fn parse_partitioner_class(v: &str) -> std::result::Result<PartitionerKind, String> {
    let short = v.trim().rsplit('.').next().unwrap_or("");
    match short {
        "default" | "DefaultPartitioner" => Ok(PartitionerKind::Default),
        "field" | "FieldPartitioner" => Ok(PartitionerKind::Field),
        "time" | "TimeBasedPartitioner" => Ok(PartitionerKind::Time),
        _ => Err(format!("{v} is not a partitioner: default, field or time")),
    }
}

/// The validated config.
#[derive(Debug, Clone)]
struct SinkConfig {
    path: PathBuf,
    topics_dir: String,
    flush_size: u64,
    rotate_interval_ms: Option<i64>,
    rotate_schedule_interval_ms: Option<i64>,
    partitioner: Partitioner,
    compression: Compression,
    pad_width: usize,
    row_group_bytes: usize,
    buffer_max_bytes: usize,
    max_open_files: usize,
}

impl SinkConfig {
    fn parse(props: &Props) -> Result<SinkConfig> {
        let c: ParsedConfig = config_def().parse(props)?;
        let positive = |key: &str| -> Result<Option<i64>> { Ok(c.get_i64(key)?.filter(|v| *v > 0)) };
        let kind = parse_partitioner_class(c.get_str("partitioner.class").unwrap_or("default"))
            .map_err(|e| ConnectError::config("partitioner.class", e))?;
        let partitioner = match kind {
            PartitionerKind::Default => Partitioner::Default,
            PartitionerKind::Field => {
                let fields = c.get_list("partition.field.name");
                if fields.is_empty() {
                    return Err(ConnectError::config("partition.field.name", "the field partitioner needs a field"));
                }
                Partitioner::Field { fields }
            }
            PartitionerKind::Time => {
                let format = PathFormat::parse(c.get_str("path.format").unwrap_or_default())
                    .map_err(|e| ConnectError::config("path.format", e))?;
                let extractor = match c.get_str("timestamp.extractor").unwrap_or("Record") {
                    "RecordField" => {
                        let f = c.get_str("timestamp.field").unwrap_or("").trim();
                        if f.is_empty() {
                            return Err(ConnectError::config("timestamp.field", "RecordField needs timestamp.field"));
                        }
                        TimestampExtractor::RecordField(f.to_owned())
                    }
                    "Wallclock" => TimestampExtractor::Wallclock,
                    _ => TimestampExtractor::Record,
                };
                Partitioner::Time { format, duration_ms: positive("partition.duration.ms")?.unwrap_or(1), extractor }
            }
        };
        let codec = c
            .get_str("parquet.codec")
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .or_else(|| c.get_str("compression"))
            .unwrap_or("zstd");
        let compression = match codec {
            "snappy" => Compression::SNAPPY,
            "none" | "uncompressed" => Compression::UNCOMPRESSED,
            _ => Compression::ZSTD(ZstdLevel::default()),
        };
        Ok(SinkConfig {
            path: PathBuf::from(c.require_str("path")?),
            topics_dir: c.get_str("topics.dir").unwrap_or("topics").to_owned(),
            flush_size: c.get_i64("flush.size")?.unwrap_or(100_000).max(1) as u64,
            rotate_interval_ms: positive("rotate.interval.ms")?,
            rotate_schedule_interval_ms: positive("rotate.schedule.interval.ms")?,
            partitioner,
            compression,
            pad_width: c.get_i64("filename.offset.zero.pad.width")?.unwrap_or(10).clamp(0, 20) as usize,
            row_group_bytes: c.get_i64("parquet.row.group.bytes")?.unwrap_or(64 << 20).max(1024) as usize,
            buffer_max_bytes: c.get_i64("parquet.buffer.max.bytes")?.unwrap_or(256 << 20).max(1024) as usize,
            max_open_files: c.get_i64("parquet.max.open.files")?.unwrap_or(1000).max(1) as usize,
        })
    }
}

impl Connector for ParquetSinkConnector {
    fn class(&self) -> &'static str {
        CLASS
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["ParquetSinkConnector"]
    }

    fn kind(&self) -> ConnectorType {
        ConnectorType::Sink
    }

    fn config_def(&self) -> ConfigDef {
        config_def()
    }

    fn validate(&self, config: &Props) -> Vec<(String, String)> {
        match SinkConfig::parse(config) {
            Err(ConnectError::Config { key, reason }) => vec![(key, reason)],
            _ => Vec::new(),
        }
    }

    /// `tasks.max` identical tasks: the consumer group spreads the partitions, and file names
    /// carry the Kafka partition, so tasks never write the same file.
    fn task_configs(&self, config: &Props, max_tasks: usize) -> Result<Vec<Props>> {
        Ok(vec![config.clone(); max_tasks.max(1)])
    }

    fn sink_task(&self) -> Result<Box<dyn SinkTask>> {
        Ok(Box::new(ParquetSinkTask::default()))
    }
}

/// One record's value as the decoder takes it.
#[derive(Clone, Copy)]
enum Body<'a> {
    Raw(&'a [u8]),
    Json(&'a Json),
}

/// A record that passed the first checks.
#[derive(Clone, Copy)]
struct Item<'a> {
    /// Index in the `put` batch (for failures).
    index: usize,
    offset: i64,
    timestamp_ms: i64,
    body: Body<'a>,
    /// The record's Connect schema, when it carries one.
    connect_schema: Option<&'a Arc<Json>>,
}

/// The state of one assigned Kafka partition.
struct PartitionState {
    topic: String,
    partition: i32,
    /// The offset after the last record handled; records below it are ones the runtime
    /// handed over again (already in a file or already skipped).
    next_offset: Option<i64>,
    /// The offset after the last committed group: what `pre_commit` offers.
    committed_next: Option<i64>,
    /// Renamed topics (transforms) whose directories got files of this partition; kept in
    /// the manifest so recovery finds their temp files.
    out_topics: Vec<String>,
    schema: Option<SchemaPlan>,
    /// The last Connect schema seen and its plan (records of one producer share it).
    connect_plan: Option<(Arc<Json>, SchemaPlan)>,
    /// Open files by encoded partition path.
    files: BTreeMap<String, OpenFile>,
    /// Kafka timestamp of the group's first record (rotate.interval.ms).
    group_first_ts_ms: Option<i64>,
    /// Wall-clock deadline of the group (rotate.schedule.interval.ms).
    group_deadline_ms: Option<i64>,
}

impl PartitionState {
    /// Rows in the open group, over all its files (`flush.size` counts per Kafka partition,
    /// as Confluent's sinks do).
    fn group_rows(&self) -> u64 {
        self.files.values().map(|f| f.rows).sum()
    }
}

/// The Parquet sink's task.
#[derive(Default)]
pub(crate) struct ParquetSinkTask {
    /// Shared so each chunk takes a handle, not a deep copy of paths and partitioner.
    cfg: Option<Arc<SinkConfig>>,
    connector: String,
    storage: Option<Arc<dyn Storage>>,
    props: Option<WriterProperties>,
    partitions: BTreeMap<(String, i32), PartitionState>,
    /// Set by the first error of `put` or `pre_commit` (a storage error mid-rotation, a
    /// partial write across directories): the in-memory state may no longer match the disk,
    /// so every later `put`/`pre_commit` fails (no offset offered, no manifest moved) until
    /// the task restarts and `open` recovers from the last durable manifest.
    poisoned: Option<String>,
}

/// The longest `<field>=<escaped value>` directory name (file systems allow 255 bytes).
const MAX_SEGMENT_BYTES: usize = 200;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn failure(record: &ConnectRecord, reason: impl Into<String>) -> FailedRecord {
    FailedRecord {
        record: record.clone(),
        error: Arc::new(ConnectError::external(CLASS, "writing a record to Parquet", reason.into())),
        stage: "TASK_PUT",
        class_name: CLASS.to_owned(),
    }
}

/// Decodes `items` into one batch with `plan` (strict: an unknown field is an error).
fn decode(plan: &SchemaPlan, items: &[Item<'_>]) -> std::result::Result<RecordBatch, String> {
    let mut decoder = arrow_json::ReaderBuilder::new(plan.decode_schema())
        .with_strict_mode(true)
        .with_batch_size(items.len() + 1)
        .build_decoder()
        .map_err(|e| e.to_string())?;
    let mut i = 0;
    while i < items.len() {
        match items[i].body {
            Body::Raw(b) => {
                let n = decoder.decode(b).map_err(|e| e.to_string())?;
                if n != b.len() || decoder.has_partial_record() {
                    return Err("the value is not one complete JSON object".to_owned());
                }
                i += 1;
            }
            Body::Json(_) => {
                let run: Vec<&Json> = items[i..]
                    .iter()
                    .map_while(|it| match it.body {
                        Body::Json(j) => Some(j),
                        Body::Raw(_) => None,
                    })
                    .collect();
                i += run.len();
                decoder.serialize(&run).map_err(|e| e.to_string())?;
            }
        }
    }
    let batch = decoder.flush().map_err(|e| e.to_string())?.ok_or("no rows decoded")?;
    if batch.num_rows() != items.len() {
        return Err(format!("{} values decoded into {} rows", items.len(), batch.num_rows()));
    }
    if plan.ts_from_ms {
        return scale_timestamps(batch, &plan.file);
    }
    Ok(batch)
}

/// Millisecond timestamp columns (Connect's `Timestamp`) to the file's microseconds.
fn scale_timestamps(batch: RecordBatch, file: &SchemaRef) -> std::result::Result<RecordBatch, String> {
    use arrow_array::{TimestampMicrosecondArray, TimestampMillisecondArray};
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for col in batch.columns() {
        match col.as_any().downcast_ref::<TimestampMillisecondArray>() {
            Some(ms) if matches!(col.data_type(), DataType::Timestamp(TimeUnit::Millisecond, _)) => {
                let us: TimestampMicrosecondArray = ms.unary(|v| v.saturating_mul(1000));
                columns.push(Arc::new(us.with_timezone_opt(Some("UTC"))));
            }
            _ => columns.push(col.clone()),
        }
    }
    RecordBatch::try_new(file.clone(), columns).map_err(|e| e.to_string())
}

/// A JSON value parsed from an item (slow paths only).
fn item_json<'a>(item: &Item<'a>) -> std::result::Result<std::borrow::Cow<'a, Json>, String> {
    match item.body {
        Body::Json(j) => Ok(std::borrow::Cow::Borrowed(j)),
        Body::Raw(b) => {
            serde_json::from_slice(b).map(std::borrow::Cow::Owned).map_err(|e| format!("not valid JSON: {e}"))
        }
    }
}

/// The schema one item asks for.
fn item_plan(item: &Item<'_>, cache: &mut Option<(Arc<Json>, SchemaPlan)>) -> std::result::Result<SchemaPlan, String> {
    if let Some(cs) = item.connect_schema {
        if let Some((s, p)) = cache.as_ref() {
            if Arc::ptr_eq(s, cs) || **s == **cs {
                return Ok(p.clone());
            }
        }
        let plan = schema::from_connect_schema(cs)?;
        *cache = Some((cs.clone(), plan.clone()));
        return Ok(plan);
    }
    let value = item_json(item)?;
    Ok(SchemaPlan::inferred(schema::infer_value(&value)?))
}

/// The string of row `row` of `col` for a partition path (`None`: null).
fn cell_text(col: &ArrayRef, row: usize) -> std::result::Result<Option<String>, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    if col.is_null(row) {
        return Ok(None);
    }
    Ok(Some(match col.data_type() {
        DataType::Utf8 => col.as_string::<i32>().value(row).to_owned(),
        DataType::Int8 => col.as_primitive::<Int8Type>().value(row).to_string(),
        DataType::Int16 => col.as_primitive::<Int16Type>().value(row).to_string(),
        DataType::Int32 => col.as_primitive::<Int32Type>().value(row).to_string(),
        DataType::Int64 => col.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::Float32 => col.as_primitive::<Float32Type>().value(row).to_string(),
        DataType::Float64 => col.as_primitive::<Float64Type>().value(row).to_string(),
        DataType::Boolean => col.as_boolean().value(row).to_string(),
        other => return Err(format!("a partition field of type {other} cannot name a directory")),
    }))
}

/// Row `row` of `col` as epoch milliseconds.
fn cell_time_ms(col: &ArrayRef, row: usize) -> std::result::Result<i64, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    if col.is_null(row) {
        return Err("the timestamp field is null".to_owned());
    }
    match col.data_type() {
        DataType::Int64 => Ok(col.as_primitive::<Int64Type>().value(row)),
        DataType::Float64 => {
            let v = col.as_primitive::<Float64Type>().value(row);
            if !v.is_finite() || v.abs() >= 9.2e18 {
                return Err(format!("the timestamp field {v} is out of range"));
            }
            Ok(v as i64)
        }
        DataType::Utf8 => partitioner::parse_time_ms(col.as_string::<i32>().value(row))
            .ok_or_else(|| "the timestamp field is not an RFC 3339 time".to_owned()),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            Ok(col.as_primitive::<TimestampMicrosecondType>().value(row).div_euclid(1000))
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => Ok(col.as_primitive::<TimestampMillisecondType>().value(row)),
        other => Err(format!("a timestamp field of type {other} is not epoch milliseconds or RFC 3339")),
    }
}

impl ParquetSinkTask {
    fn cfg(&self) -> Result<Arc<SinkConfig>> {
        self.cfg.clone().ok_or_else(|| ConnectError::Internal("parquet sink task used before start".to_owned()))
    }

    fn io_error(&self, what: impl Into<String>, reason: impl ToString) -> ConnectError {
        ConnectError::external(&self.connector, what, reason)
    }

    fn storage(&self) -> Result<Arc<dyn Storage>> {
        self.storage.clone().ok_or_else(|| ConnectError::Internal("parquet sink task used before start".to_owned()))
    }

    /// Recovers a partition and registers it; returns where it resumes.
    fn open_partition(&mut self, topic: &str, partition: i32) -> Result<Option<i64>> {
        let cfg = self.cfg()?;
        let storage = self.storage()?;
        let (resume, out_topics) = commit::recover(storage.as_ref(), &cfg.topics_dir, topic, partition)
            .map_err(|e| self.io_error(format!("recovering {topic}-{partition} under {}", cfg.path.display()), e))?;
        if let Some(offset) = resume {
            tracing::info!(connector = %self.connector, %topic, partition, offset, "parquet sink resumes from its manifest");
        }
        self.partitions.insert(
            (topic.to_owned(), partition),
            PartitionState {
                topic: topic.to_owned(),
                partition,
                next_offset: resume,
                committed_next: resume,
                out_topics,
                schema: None,
                connect_plan: None,
                files: BTreeMap::new(),
                group_first_ts_ms: None,
                group_deadline_ms: None,
            },
        );
        Ok(resume)
    }

    /// Commits every open file of a partition as one group (see [`commit`]).
    fn rotate(&mut self, key: &(String, i32)) -> Result<()> {
        let cfg = self.cfg()?;
        let storage = self.storage()?;
        let Some(state) = self.partitions.get_mut(key) else { return Ok(()) };
        state.group_first_ts_ms = None;
        state.group_deadline_ms = None;
        if state.files.is_empty() {
            return Ok(());
        }
        let next_offset =
            state.next_offset.ok_or_else(|| ConnectError::Internal("files open without an offset".into()))?;
        let mut renames = Vec::with_capacity(state.files.len());
        for (_, f) in std::mem::take(&mut state.files) {
            renames.push(f.finish().map_err(|e| ConnectError::external(&self.connector, "closing a Parquet file", e))?);
        }
        let manifest = commit::manifest_path(&cfg.topics_dir, &state.topic, state.partition);
        commit::commit_group(storage.as_ref(), &manifest, renames, next_offset, &state.out_topics).map_err(|e| {
            ConnectError::external(&self.connector, format!("committing files of {}", manifest.display()), e)
        })?;
        state.committed_next = Some(next_offset);
        Ok(())
    }

    /// Writes decoded rows of `items` (one batch row per item).
    #[expect(clippy::too_many_arguments, reason = "the routing inputs of one chunk")]
    fn write_rows(
        &mut self,
        key: &(String, i32),
        out_topic: &str,
        plan: &SchemaPlan,
        batch: RecordBatch,
        items: &[Item<'_>],
        records: &[ConnectRecord],
        failed: &mut Vec<FailedRecord>,
    ) -> Result<()> {
        let cfg = self.cfg()?;
        let kp = key.1;
        // Route: one path per row, runs of items per path.
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        match &cfg.partitioner {
            Partitioner::Default => {
                groups.insert(partitioner::default_path(kp), (0..items.len()).collect());
            }
            Partitioner::Time { format, duration_ms, extractor } => {
                let column = match extractor {
                    TimestampExtractor::RecordField(f) => match batch.schema().index_of(f) {
                        Ok(i) => Some(batch.column(i).clone()),
                        Err(_) => None,
                    },
                    _ => None,
                };
                let wall = now_ms();
                let mut last: Option<(i64, String)> = None;
                for (row, item) in items.iter().enumerate() {
                    let t = match extractor {
                        TimestampExtractor::Record => Ok(item.timestamp_ms),
                        TimestampExtractor::Wallclock => Ok(wall),
                        TimestampExtractor::RecordField(_) => match &column {
                            Some(c) => cell_time_ms(c, row),
                            None => Err("the record has no timestamp field".to_owned()),
                        },
                    };
                    let t = t.and_then(|t| {
                        let b = partitioner::bucket_start(t, *duration_ms)
                            .ok_or_else(|| format!("the time {t} is out of range"))?;
                        if last.as_ref().is_none_or(|(lb, _)| *lb != b) {
                            let p = format.format(b).ok_or_else(|| format!("the time {t} is out of range"))?;
                            last = Some((b, p));
                        }
                        Ok(())
                    });
                    match t {
                        Ok(()) => {
                            let path = last.as_ref().map(|(_, p)| p.clone()).unwrap_or_default();
                            groups.entry(path).or_default().push(row);
                        }
                        Err(e) => failed.push(failure(&records[item.index], e)),
                    }
                }
            }
            Partitioner::Field { fields } => {
                let schema = batch.schema();
                let cols: Vec<Option<ArrayRef>> =
                    fields.iter().map(|f| schema.index_of(f).ok().map(|i| batch.column(i).clone())).collect();
                let mut path = String::new();
                'rows: for (row, item) in items.iter().enumerate() {
                    path.clear();
                    for (name, col) in fields.iter().zip(&cols) {
                        let text = match col {
                            Some(c) => match cell_text(c, row) {
                                Ok(t) => t,
                                Err(e) => {
                                    failed.push(failure(&records[item.index], e));
                                    continue 'rows;
                                }
                            },
                            None => None,
                        };
                        let before = path.len();
                        partitioner::push_segment(&mut path, name, text.as_deref());
                        if path.len() - before > MAX_SEGMENT_BYTES {
                            // Past the file system's name limit (255 bytes): ENAMETOOLONG
                            // would fail the task on every restart.
                            failed.push(failure(
                                &records[item.index],
                                format!("the partition value of {name} is over {MAX_SEGMENT_BYTES} bytes escaped"),
                            ));
                            continue 'rows;
                        }
                    }
                    match groups.get_mut(path.as_str()) {
                        Some(v) => v.push(row),
                        None => {
                            groups.insert(path.clone(), vec![row]);
                        }
                    }
                }
            }
        }
        self.make_room(key, out_topic, groups.keys(), items)?;
        let drop_cols = cfg.partitioner.path_columns();
        let single = groups.len() == 1 && groups.values().next().is_some_and(|v| v.len() == items.len());
        for (path, rows) in groups {
            let sub = if single {
                batch.clone()
            } else {
                // Rows of one directory: decoded again from their own values (cheaper than a
                // take kernel dependency, and only for the value-routed partitioners).
                let picked: Vec<Item<'_>> = rows.iter().map(|&r| items[r]).collect();
                decode(plan, &picked).map_err(|e| ConnectError::Internal(format!("re-decoding routed rows: {e}")))?
            };
            let sub = if drop_cols.is_empty() {
                sub
            } else {
                let keep: Vec<usize> = (0..sub.num_columns())
                    .filter(|&i| !drop_cols.iter().any(|d| d == sub.schema().field(i).name()))
                    .collect();
                sub.project(&keep).map_err(|e| ConnectError::Internal(e.to_string()))?
            };
            if sub.num_columns() == 0 {
                for &r in &rows {
                    failed.push(failure(
                        &records[items[r].index],
                        "the record has no fields besides the partition fields",
                    ));
                }
                continue;
            }
            let start_offset = items[rows[0]].offset;
            self.write_to(key, out_topic, &path, start_offset, sub)?;
        }
        Ok(())
    }

    fn write_to(
        &mut self,
        key: &(String, i32),
        out_topic: &str,
        path: &str,
        start_offset: i64,
        batch: RecordBatch,
    ) -> Result<()> {
        let cfg = self.cfg()?;
        let storage = self.storage()?;
        let props = self.props.clone().ok_or_else(|| ConnectError::Internal("no writer properties".into()))?;
        let connector = self.connector.clone();
        let Some(state) = self.partitions.get_mut(key) else {
            return Err(ConnectError::Internal(format!("writing {}-{} without its state", key.0, key.1)));
        };
        // One open file per output directory: the record topic (a transform may have renamed
        // it) and the encoded partition.
        let file_key = format!("{out_topic}/{path}");
        if out_topic != state.topic && !state.out_topics.iter().any(|t| t == out_topic) {
            // Recovery must know this directory before a temp file of ours lands there.
            state.out_topics.push(out_topic.to_owned());
            let m = commit::manifest_path(&cfg.topics_dir, &state.topic, state.partition);
            commit::advance(storage.as_ref(), &m, state.committed_next, &state.out_topics)
                .map_err(|e| ConnectError::external(&connector, format!("writing {}", m.display()), e))?;
        }
        if !state.files.contains_key(&file_key) {
            let dir = commit::topic_dir(&cfg.topics_dir, out_topic).join(path);
            let name = commit::file_name(&state.topic, state.partition, start_offset, cfg.pad_width);
            let f = OpenFile::create(
                storage.as_ref(),
                dir.join(commit::temp_name(&name)),
                dir.join(&name),
                batch.schema(),
                props,
            )
            .map_err(|e| {
                ConnectError::external(&connector, format!("opening a Parquet file under {}", cfg.path.display()), e)
            })?;
            state.files.insert(file_key.clone(), f);
        }
        let f = state.files.get_mut(&file_key).expect("inserted above");
        if f.schema != batch.schema() {
            // The partition's schema is one for all its files; a projection differing here is
            // our own bug.
            return Err(ConnectError::Internal(format!("schema mismatch writing {}", f.temp.display())));
        }
        f.write(&batch, cfg.row_group_bytes)
            .map_err(|e| ConnectError::external(&connector, format!("writing {}", f.temp.display()), e))
    }

    /// Handles one partition's run of records (offset order).
    fn put_partition(
        &mut self,
        key: &(String, i32),
        out_topic: &str,
        records: &[ConnectRecord],
        range: std::ops::Range<usize>,
        failed: &mut Vec<FailedRecord>,
    ) -> Result<()> {
        if !self.partitions.contains_key(key) {
            // The runtime opens every partition before handing over its records; one never
            // opened has no recovered manifest, so writing it could duplicate rows.
            return Err(ConnectError::Internal(format!(
                "records of {}-{} handed to the parquet sink before open() assigned it",
                key.0, key.1
            )));
        }
        let cfg = self.cfg()?;
        let mut items: Vec<Item<'_>> = Vec::with_capacity(range.len());
        let mut last_offset = None;
        {
            let state = self.partitions.get(key).expect("opened above");
            let floor = state.next_offset.unwrap_or(i64::MIN);
            for index in range {
                let r = &records[index];
                let Some(k) = r.kafka.as_ref() else {
                    failed.push(failure(r, "a sink record without its Kafka offset"));
                    continue;
                };
                if k.offset < floor {
                    continue;
                }
                last_offset = Some(k.offset);
                let body = match &r.value {
                    None => continue,
                    Some(Value::Text(b) | Value::Bytes(b)) => {
                        if b.iter().find(|c| !c.is_ascii_whitespace()) != Some(&b'{') {
                            failed.push(failure(r, "the value is not a JSON object"));
                            continue;
                        }
                        Body::Raw(b)
                    }
                    Some(Value::Json(j @ Json::Object(_))) => Body::Json(j),
                    Some(Value::Json(_)) => {
                        failed.push(failure(r, "the value is not a JSON object"));
                        continue;
                    }
                };
                items.push(Item {
                    index,
                    offset: k.offset,
                    timestamp_ms: r.timestamp_ms.unwrap_or(0),
                    body,
                    connect_schema: r.value_schema.as_ref(),
                });
            }
        }
        let mut pos = 0;
        let mut widened_at: Option<usize> = None;
        while pos < items.len() {
            // Rotation by record time, before the record that passes the interval.
            let state = self.partitions.get(key).expect("opened above");
            if let (Some(iv), Some(first)) = (cfg.rotate_interval_ms, state.group_first_ts_ms) {
                if items[pos].timestamp_ms >= first.saturating_add(iv) {
                    self.rotate(key)?;
                }
            }
            let state = self.partitions.get_mut(key).expect("opened above");
            let cap = (cfg.flush_size.saturating_sub(state.group_rows())).max(1) as usize;
            let mut end = items.len().min(pos + cap);
            if let Some(iv) = cfg.rotate_interval_ms {
                let first = state.group_first_ts_ms.unwrap_or(items[pos].timestamp_ms);
                if let Some(cut) = items[pos..end].iter().position(|it| it.timestamp_ms >= first.saturating_add(iv)) {
                    end = pos + cut.max(1);
                }
            }
            if state.schema.is_none() {
                state.schema = Some(initial_plan(&items[pos..end], &mut state.connect_plan));
            }
            let plan = state.schema.clone().expect("set above");
            // Values the fixed schema would take only by converting them (a fraction in an
            // integer column, a numeric string in a number column) end the fast run.
            let misfit = schema::Guard::new(&plan.file)
                .and_then(|g| (pos..end).find(|&i| g_suspect(&g, &items[i]) && !fits(&plan, &items[i])));
            if let Some(k) = misfit.filter(|&k| k > pos) {
                end = k;
            }
            let decoded = if misfit == Some(pos) { Err(String::new()) } else { decode(&plan, &items[pos..end]) };
            match decoded {
                Ok(batch) => {
                    self.accept(key, out_topic, &plan, batch, &items[pos..end], records, failed)?;
                    pos = end;
                }
                Err(_) => {
                    // Slow path: find the first value that does not decode with the plan.
                    let k = if misfit == Some(pos) {
                        pos
                    } else {
                        (pos..end).find(|&i| decode(&plan, std::slice::from_ref(&items[i])).is_err()).unwrap_or(end)
                    };
                    if k > pos {
                        let batch = decode(&plan, &items[pos..k]).map_err(ConnectError::Internal)?;
                        self.accept(key, out_topic, &plan, batch, &items[pos..k], records, failed)?;
                        pos = k;
                        continue;
                    }
                    let item = items[pos];
                    let state = self.partitions.get_mut(key).expect("opened above");
                    let outcome = item_plan(&item, &mut state.connect_plan).and_then(|p| plan.merge(&p));
                    match outcome {
                        Ok(Some(wider)) if leaf_count(wider.file.fields()) > MAX_COLUMNS => {
                            failed.push(failure(
                                &records[item.index],
                                format!("the record would make the file's schema over {MAX_COLUMNS} columns"),
                            ));
                            self.mark_done(key, item.offset);
                            pos += 1;
                        }
                        Ok(Some(wider)) if widened_at != Some(pos) => {
                            // A new field or a wider type: the open files close, new ones get
                            // the wider schema.
                            self.rotate(key)?;
                            self.partitions.get_mut(key).expect("opened above").schema = Some(wider);
                            widened_at = Some(pos);
                        }
                        Ok(_) => {
                            let reason = decode(&plan, std::slice::from_ref(&item))
                                .err()
                                .unwrap_or_else(|| "the value does not fit the open file's schema".to_owned());
                            failed.push(failure(&records[item.index], reason));
                            self.mark_done(key, item.offset);
                            pos += 1;
                        }
                        Err(e) => {
                            failed.push(failure(&records[item.index], e));
                            self.mark_done(key, item.offset);
                            pos += 1;
                        }
                    }
                }
            }
        }
        if let Some(o) = last_offset {
            self.mark_done(key, o);
        }
        Ok(())
    }

    fn mark_done(&mut self, key: &(String, i32), offset: i64) {
        if let Some(s) = self.partitions.get_mut(key) {
            s.next_offset = Some(s.next_offset.map_or(offset + 1, |n| n.max(offset + 1)));
        }
    }

    /// Writes a decoded chunk, then rotates when a file reached `flush.size`.
    #[expect(clippy::too_many_arguments, reason = "one call site per path of put_partition")]
    fn accept(
        &mut self,
        key: &(String, i32),
        out_topic: &str,
        plan: &SchemaPlan,
        batch: RecordBatch,
        items: &[Item<'_>],
        records: &[ConnectRecord],
        failed: &mut Vec<FailedRecord>,
    ) -> Result<()> {
        let cfg = self.cfg()?;
        {
            let state = self.partitions.get_mut(key).expect("opened");
            if state.files.is_empty() {
                state.group_first_ts_ms = items.first().map(|i| i.timestamp_ms);
                state.group_deadline_ms = cfg.rotate_schedule_interval_ms.map(|iv| {
                    let now = now_ms();
                    now - now.rem_euclid(iv) + iv
                });
            }
        }
        self.write_rows(key, out_topic, plan, batch, items, records, failed)?;
        if let Some(last) = items.last() {
            self.mark_done(key, last.offset);
        }
        let state = self.partitions.get(key).expect("opened");
        if state.group_rows() >= cfg.flush_size {
            self.rotate(key)?;
        }
        Ok(())
    }

    /// Keeps the task's open files within `parquet.max.open.files` before a chunk is written:
    /// commits this partition's group first (safe: none of the chunk is written yet), then
    /// other partitions' groups, largest first (each between two of its own chunks). A
    /// single chunk routed to more directories than the cap still gets them all.
    fn make_room<'k>(
        &mut self,
        key: &(String, i32),
        out_topic: &str,
        paths: impl Iterator<Item = &'k String>,
        items: &[Item<'_>],
    ) -> Result<()> {
        let cfg = self.cfg()?;
        let total: usize = self.partitions.values().map(|s| s.files.len()).sum();
        let Some(state) = self.partitions.get(key) else { return Ok(()) };
        let paths: Vec<String> = paths.map(|p| format!("{out_topic}/{p}")).collect();
        let new = paths.iter().filter(|p| !state.files.contains_key(p.as_str())).count();
        if total + new <= cfg.max_open_files {
            return Ok(());
        }
        if !state.files.is_empty() {
            self.rotate(key)?;
            let state = self.partitions.get_mut(key).expect("checked above");
            state.group_first_ts_ms = items.first().map(|i| i.timestamp_ms);
            state.group_deadline_ms = cfg.rotate_schedule_interval_ms.map(|iv| {
                let now = now_ms();
                now - now.rem_euclid(iv) + iv
            });
        }
        loop {
            let total: usize = self.partitions.values().map(|s| s.files.len()).sum();
            if total + paths.len() <= cfg.max_open_files {
                return Ok(());
            }
            let Some(other) = self
                .partitions
                .iter()
                .filter(|(k, s)| *k != key && !s.files.is_empty())
                .max_by_key(|(_, s)| s.files.len())
                .map(|(k, _)| k.clone())
            else {
                return Ok(());
            };
            self.rotate(&other)?;
        }
    }

    /// Flushes the biggest row groups while the task buffers more than `parquet.buffer.max.bytes`.
    fn bound_memory(&mut self) -> Result<()> {
        let max = self.cfg()?.buffer_max_bytes;
        loop {
            let mut total = 0usize;
            let mut biggest: Option<(usize, (String, i32), String)> = None;
            for (k, s) in &self.partitions {
                for (p, f) in &s.files {
                    let m = f.writer.memory_size();
                    total += m;
                    if biggest.as_ref().is_none_or(|(b, _, _)| m > *b) {
                        biggest = Some((m, k.clone(), p.clone()));
                    }
                }
            }
            let Some((size, k, p)) = biggest.filter(|_| total > max) else { return Ok(()) };
            if size == 0 {
                return Ok(());
            }
            let connector = self.connector.clone();
            if let Some(f) = self.partitions.get_mut(&k).and_then(|s| s.files.get_mut(&p)) {
                f.writer
                    .flush()
                    .map_err(|e| ConnectError::external(&connector, format!("writing {}", f.temp.display()), e))?;
            }
        }
    }

    /// Rotates partitions whose `rotate.schedule.interval.ms` deadline passed.
    fn rotate_scheduled(&mut self) -> Result<()> {
        let now = now_ms();
        let due: Vec<(String, i32)> = self
            .partitions
            .iter()
            .filter(|(_, s)| !s.files.is_empty() && s.group_deadline_ms.is_some_and(|d| now >= d))
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.rotate(&k)?;
        }
        Ok(())
    }

    /// Drops a partition's open files (their rows are read again by whoever owns it next).
    fn discard(&mut self, key: &(String, i32)) {
        let Some(state) = self.partitions.remove(key) else { return };
        let Some(storage) = self.storage.clone() else { return };
        for (_, f) in state.files {
            let temp = f.temp.clone();
            drop(f);
            if let Err(e) = storage.remove(&temp) {
                tracing::warn!(connector = %self.connector, file = %temp.display(), error = %e, "cannot remove an unfinished file; the next open drops it");
            }
        }
    }
}

/// Whether the guard flags `item` (values parsed by a converter are always checked exactly).
fn g_suspect(g: &schema::Guard, item: &Item<'_>) -> bool {
    match (item.connect_schema, item.body) {
        // A declared Connect schema decides the column types itself.
        (Some(_), _) => false,
        (None, Body::Raw(b)) => g.suspect(b),
        (None, Body::Json(_)) => true,
    }
}

/// The exact check: `item`'s own schema adds nothing to `plan`.
fn fits(plan: &SchemaPlan, item: &Item<'_>) -> bool {
    matches!(item_plan(item, &mut None).and_then(|p| plan.merge(&p)), Ok(None))
}

/// The schema of a partition's first chunk: the merge of its records' schemas (records that
/// conflict are left for the decode path to send to the dead-letter topic).
fn initial_plan(items: &[Item<'_>], cache: &mut Option<(Arc<Json>, SchemaPlan)>) -> SchemaPlan {
    let mut plan: Option<SchemaPlan> = None;
    for item in items {
        let Ok(p) = item_plan(item, cache) else { continue };
        plan = match plan {
            None if leaf_count(p.file.fields()) <= MAX_COLUMNS => Some(p),
            None => None,
            Some(cur) => match cur.merge(&p) {
                Ok(Some(w)) if leaf_count(w.file.fields()) <= MAX_COLUMNS => Some(w),
                Ok(_) | Err(_) => Some(cur),
            },
        };
    }
    plan.unwrap_or_else(|| SchemaPlan::inferred(arrow_schema::Schema::empty()))
}

impl SinkTask for ParquetSinkTask {
    fn start(&mut self, config: &Props, context: &SinkTaskContext) -> Result<()> {
        let cfg = SinkConfig::parse(config)?;
        std::fs::create_dir_all(&cfg.path)
            .map_err(|e| ConnectError::external(&context.connector, format!("creating {}", cfg.path.display()), e))?;
        self.storage = Some(Arc::new(LocalStorage::new(cfg.path.clone())));
        self.props = Some(
            WriterProperties::builder()
                .set_compression(cfg.compression)
                .set_created_by(format!("spate-connect {} ParquetSink", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        self.connector = context.connector.clone();
        self.cfg = Some(Arc::new(cfg));
        self.poisoned = None;
        Ok(())
    }

    /// Recovers each partition from its manifest and resumes after its last committed group.
    /// The runtime does not tell a sink the group's committed offset; none is needed: the
    /// manifest is written before `pre_commit` offers an offset, so it is never behind the
    /// committed one. A partition without a manifest resumes from the committed offset.
    fn open(&mut self, partitions: &[TopicPartition]) -> Result<BTreeMap<TopicPartition, i64>> {
        let mut seeks = BTreeMap::new();
        for tp in partitions {
            self.discard(&(tp.topic.to_string(), tp.partition));
            if let Some(offset) = self.open_partition(&tp.topic, tp.partition)? {
                seeks.insert(tp.clone(), offset);
            }
        }
        Ok(seeks)
    }

    fn close(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        for tp in partitions {
            self.discard(&(tp.topic.to_string(), tp.partition));
        }
        Ok(())
    }

    fn put(&mut self, records: Vec<ConnectRecord>) -> Result<Vec<FailedRecord>> {
        self.check_poisoned()?;
        let out = self.put_inner(records);
        self.poison_on(out)
    }

    /// Nothing: files become durable at their group's commit, which `flush.size` and the
    /// rotate intervals decide (as Confluent's sinks do).
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn pre_commit(&mut self, _current: &BTreeMap<TopicPartition, i64>) -> Result<BTreeMap<TopicPartition, i64>> {
        self.check_poisoned()?;
        let out = self.pre_commit_inner();
        self.poison_on(out)
    }

    fn stop(&mut self) {
        let keys: Vec<(String, i32)> = self.partitions.keys().cloned().collect();
        for k in keys {
            self.discard(&k);
        }
    }
}

impl ParquetSinkTask {
    fn check_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some(e) => Err(ConnectError::external(
                &self.connector,
                "continuing after an earlier write error",
                format!("{e} (the task must restart to recover from its manifests)"),
            )),
            None => Ok(()),
        }
    }

    fn poison_on<T>(&mut self, out: Result<T>) -> Result<T> {
        if let Err(e) = &out {
            self.poisoned.get_or_insert_with(|| e.to_string());
        }
        out
    }

    fn put_inner(&mut self, records: Vec<ConnectRecord>) -> Result<Vec<FailedRecord>> {
        self.cfg()?;
        let mut failed = Vec::new();
        let mut start = 0;
        while start < records.len() {
            let Some(k) = records[start].kafka.as_ref() else {
                failed.push(failure(&records[start], "a sink record without its Kafka topic, partition and offset"));
                start += 1;
                continue;
            };
            // State, manifests, file names and offsets belong to the partition the record was
            // read from; only the directory follows the (possibly renamed) record topic.
            let out_topic = &records[start].topic;
            let end = records[start..]
                .iter()
                .position(|r| {
                    r.topic != *out_topic
                        || r.kafka.as_ref().is_none_or(|rk| rk.partition != k.partition || rk.topic != k.topic)
                })
                .map_or(records.len(), |n| start + n);
            let key = (k.topic.to_string(), k.partition);
            self.put_partition(&key, out_topic, &records, start..end, &mut failed)?;
            start = end;
        }
        self.bound_memory()?;
        self.rotate_scheduled()?;
        Ok(failed)
    }

    fn pre_commit_inner(&mut self) -> Result<BTreeMap<TopicPartition, i64>> {
        self.rotate_scheduled()?;
        let cfg = self.cfg()?;
        let storage = self.storage()?;
        let mut safe = BTreeMap::new();
        for state in self.partitions.values_mut() {
            // Nothing buffered but the partition moved on (tombstones, dead-lettered values):
            // record it in the manifest, then it is safe to commit.
            if state.files.is_empty() && state.next_offset > state.committed_next {
                if let Some(next) = state.next_offset {
                    let m = commit::manifest_path(&cfg.topics_dir, &state.topic, state.partition);
                    commit::advance(storage.as_ref(), &m, Some(next), &state.out_topics)
                        .map_err(|e| ConnectError::external(&self.connector, format!("writing {}", m.display()), e))?;
                    state.committed_next = Some(next);
                }
            }
            if let Some(o) = state.committed_next {
                safe.insert(TopicPartition::new(state.topic.clone(), state.partition), o);
            }
        }
        Ok(safe)
    }
}

#[cfg(test)]
mod tests;

//! The file sink (`FileStreamSink`): appends records to a file, one per line.
//!
//! Kafka's keys `file` and `topics` / `topics.regex` (the runtime subscribes; the task only
//! writes), plus `format` (`value`: the value's text or bytes then `\n`; `json`: one JSON object
//! per record with topic, partition, offset, timestamp, key, value and headers),
//! `file.roll.bytes` and `file.roll.ms` (the current file is renamed to
//! `<file>.<timestamp-ms>` and a new one started). Without `file`, records go to standard
//! output, as Kafka's connector does.
//!
//! **Durability.** `flush` (and so `pre_commit`, before the runtime commits consumer offsets)
//! writes the buffer out and fsyncs the file: an offset is committed only for records on disk.
//! A roll fsyncs the finished file before renaming it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Map, Value as Json};

use crate::config::{ConfigDef, ConfigType, Importance, ParsedConfig, Props, Validator};
use crate::connector::{Connector, ConnectorType, FailedRecord, SinkTask, SinkTaskContext};
use crate::error::{ConnectError, Result};
use crate::record::{ConnectRecord, Value};

const SINK_CLASS: &str = "FileStreamSink";

/// Write buffer in front of the file.
const WRITE_BUF_BYTES: usize = 256 * 1024;

/// The file sink connector: `connector.class` = `FileStreamSink` (or Kafka's
/// `org.apache.kafka.connect.file.FileStreamSinkConnector`).
#[derive(Debug, Clone, Copy, Default)]
pub struct FileStreamSinkConnector;

fn sink_config_def() -> ConfigDef {
    ConfigDef::new()
        .define(
            "file",
            ConfigType::String,
            Some(""),
            Importance::High,
            "The file to append to (created if missing). Empty: standard output.",
        )
        .define(
            "format",
            ConfigType::String,
            Some("value"),
            Importance::Medium,
            "value: each record's value as text or bytes, then \\n (structured values as JSON text, null \
             values skipped). json: one JSON object per line with topic, partition, offset, timestamp, key, \
             value and headers (bytes as base64).",
        )
        .with_validator(Validator::OneOf(&["value", "json"]))
        .define(
            "file.roll.bytes",
            ConfigType::Long,
            Some("0"),
            Importance::Medium,
            "Start a new file once the current one would pass this size: the current one is renamed to \
             <file>.<timestamp-ms>. 0: never.",
        )
        .with_validator(Validator::Range { min: 0.0, max: 9.0e18 })
        .define(
            "file.roll.ms",
            ConfigType::Long,
            Some("0"),
            Importance::Medium,
            "Start a new file once the current one is this old (checked when records arrive and on flush). \
             0: never.",
        )
        .with_validator(Validator::Range { min: 0.0, max: 9.0e18 })
}

impl Connector for FileStreamSinkConnector {
    fn class(&self) -> &'static str {
        SINK_CLASS
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["org.apache.kafka.connect.file.FileStreamSinkConnector", "FileStreamSinkConnector"]
    }

    fn kind(&self) -> ConnectorType {
        ConnectorType::Sink
    }

    fn config_def(&self) -> ConfigDef {
        sink_config_def()
    }

    /// One task whatever `tasks.max` says: a file has one writer (two would interleave lines
    /// and race on rolls).
    fn task_configs(&self, config: &Props, _max_tasks: usize) -> Result<Vec<Props>> {
        Ok(vec![config.clone()])
    }

    fn sink_task(&self) -> Result<Box<dyn SinkTask>> {
        Ok(Box::new(FileStreamSinkTask::default()))
    }
}

/// How records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Value,
    Json,
}

/// The validated config.
#[derive(Debug, Clone)]
struct SinkConfig {
    /// `None`: standard output.
    file: Option<PathBuf>,
    format: Format,
    roll_bytes: u64,
    roll: Option<Duration>,
}

impl SinkConfig {
    fn parse(props: &Props) -> Result<Self> {
        let c: ParsedConfig = sink_config_def().parse(props)?;
        let file = c.get_str("file").map(str::trim).filter(|f| !f.is_empty()).map(PathBuf::from);
        let roll_ms = c.get_i64("file.roll.ms")?.unwrap_or(0).max(0) as u64;
        Ok(SinkConfig {
            file,
            format: if c.get_str("format") == Some("json") { Format::Json } else { Format::Value },
            roll_bytes: c.get_i64("file.roll.bytes")?.unwrap_or(0).max(0) as u64,
            roll: (roll_ms > 0).then(|| Duration::from_millis(roll_ms)),
        })
    }
}

/// The open output.
#[derive(Debug)]
enum Output {
    File { writer: BufWriter<File>, bytes: u64, opened_at: Instant },
    Stdout(io::Stdout),
}

/// The file sink's task.
#[derive(Debug, Default)]
pub(crate) struct FileStreamSinkTask {
    cfg: Option<SinkConfig>,
    connector: String,
    out: Option<Output>,
    /// Reused per record.
    line: Vec<u8>,
}

impl FileStreamSinkTask {
    fn io_error(&self, what: &str, e: impl ToString) -> ConnectError {
        let target =
            self.cfg.as_ref().and_then(|c| c.file.as_ref()).map_or("stdout".to_owned(), |f| f.display().to_string());
        ConnectError::external(&self.connector, format!("{what} {target}"), e)
    }

    fn open_output(&self, now: Instant) -> Result<Output> {
        let Some(path) = self.cfg.as_ref().and_then(|c| c.file.clone()) else {
            return Ok(Output::Stdout(io::stdout()));
        };
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| self.io_error("opening", e))?;
        // The file's directory entry must survive a power loss as its data does (offsets are
        // committed after the next fsync): sync the directory too.
        sync_parent_dir(&path).map_err(|e| self.io_error("syncing the directory of", e))?;
        let bytes = file.metadata().map_err(|e| self.io_error("opening", e))?.len();
        Ok(Output::File { writer: BufWriter::with_capacity(WRITE_BUF_BYTES, file), bytes, opened_at: now })
    }

    /// Renames the current file away when `next_len` more bytes would pass `file.roll.bytes`
    /// or it is older than `file.roll.ms`.
    fn roll_if_due(&mut self, next_len: usize, now: Instant) -> Result<()> {
        let Some(cfg) = self.cfg.as_ref() else { return Ok(()) };
        let Some(Output::File { bytes, opened_at, .. }) = self.out.as_ref() else { return Ok(()) };
        let by_size = cfg.roll_bytes > 0 && *bytes > 0 && *bytes + next_len as u64 > cfg.roll_bytes;
        let by_age = cfg.roll.is_some_and(|d| *bytes > 0 && now.saturating_duration_since(*opened_at) >= d);
        if !(by_size || by_age) {
            return Ok(());
        }
        let Some(path) = cfg.file.clone() else { return Ok(()) };
        self.sync()?;
        self.out = None;
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let mut target = PathBuf::from(format!("{}.{ms}", path.display()));
        let mut n = 1;
        while target.exists() {
            // Two rolls within a millisecond.
            target = PathBuf::from(format!("{}.{ms}-{n}", path.display()));
            n += 1;
        }
        std::fs::rename(&path, &target).map_err(|e| self.io_error("rolling", e))?;
        // open_output syncs the directory, which makes the rename durable too.
        self.out = Some(self.open_output(now)?);
        Ok(())
    }

    /// Writes the buffer out and fsyncs.
    fn sync(&mut self) -> Result<()> {
        let res = match self.out.as_mut() {
            Some(Output::File { writer, .. }) => writer.flush().and_then(|()| writer.get_ref().sync_data()),
            Some(Output::Stdout(s)) => s.flush(),
            None => Ok(()),
        };
        res.map_err(|e| self.io_error("syncing", e))
    }

    /// The line for `record` in `self.line`; `false` when the record writes nothing.
    fn encode(&mut self, record: &ConnectRecord, format: Format) -> bool {
        self.line.clear();
        match format {
            Format::Value => match &record.value {
                None => return false,
                Some(Value::Text(b) | Value::Bytes(b)) => self.line.extend_from_slice(b),
                Some(Value::Json(j)) => {
                    // Writing to a Vec cannot fail.
                    let _ = serde_json::to_writer(&mut self.line, j);
                }
            },
            Format::Json => {
                let mut headers = Vec::with_capacity(record.headers.len());
                for h in &record.headers {
                    headers.push(json!({ "key": h.key, "value": h.value.as_ref().map(|v| bytes_json(v)) }));
                }
                let mut obj = Map::new();
                obj.insert("topic".into(), Json::from(&*record.topic));
                obj.insert("partition".into(), json!(record.kafka.as_ref().map(|k| k.partition).or(record.partition)));
                obj.insert("offset".into(), json!(record.kafka.as_ref().map(|k| k.offset)));
                obj.insert("timestamp".into(), json!(record.timestamp_ms));
                obj.insert("key".into(), record.key.as_ref().map_or(Json::Null, value_json));
                obj.insert("value".into(), record.value.as_ref().map_or(Json::Null, value_json));
                obj.insert("headers".into(), Json::Array(headers));
                let _ = serde_json::to_writer(&mut self.line, &Json::Object(obj));
            }
        }
        self.line.push(b'\n');
        true
    }
}

/// Text as a JSON string, other bytes as base64 (as `JsonConverter` writes bytes).
fn bytes_json(b: &[u8]) -> Json {
    match std::str::from_utf8(b) {
        Ok(s) => Json::from(s),
        Err(_) => Json::from(base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

fn value_json(v: &Value) -> Json {
    match v {
        Value::Text(b) => Json::from(String::from_utf8_lossy(b).into_owned()),
        Value::Bytes(b) => Json::from(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Json(j) => j.clone(),
    }
}

impl SinkTask for FileStreamSinkTask {
    fn start(&mut self, config: &Props, context: &SinkTaskContext) -> Result<()> {
        self.cfg = Some(SinkConfig::parse(config)?);
        self.connector = context.connector.clone();
        self.out = Some(self.open_output(Instant::now())?);
        Ok(())
    }

    fn put(&mut self, records: Vec<ConnectRecord>) -> Result<Vec<FailedRecord>> {
        let Some(format) = self.cfg.as_ref().map(|c| c.format) else {
            return Err(ConnectError::Internal("file sink task got records before start".to_owned()));
        };
        let now = Instant::now();
        for record in &records {
            if !self.encode(record, format) {
                continue;
            }
            self.roll_if_due(self.line.len(), now)?;
            let res = match self.out.as_mut() {
                Some(Output::File { writer, bytes, .. }) => {
                    *bytes += self.line.len() as u64;
                    writer.write_all(&self.line)
                }
                Some(Output::Stdout(s)) => s.write_all(&self.line),
                None => Err(io::Error::other("no open file")),
            };
            res.map_err(|e| self.io_error("writing", e))?;
        }
        Ok(Vec::new())
    }

    fn flush(&mut self) -> Result<()> {
        self.sync()?;
        self.roll_if_due(0, Instant::now())
    }

    fn stop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::warn!(error = %e, "file sink: final flush failed");
        }
        self.out = None;
    }
}

/// fsyncs the directory holding `path` (a created or renamed file's name is durable only then).
fn sync_parent_dir(path: &std::path::Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::record::{Header, KafkaCoordinates};

    fn task(file: &std::path::Path, extra: &[(&str, &str)]) -> FileStreamSinkTask {
        let mut p = Props::new();
        p.insert("file".into(), file.display().to_string());
        p.insert("topics".into(), "logs".into());
        for (k, v) in extra {
            p.insert((*k).into(), (*v).into());
        }
        let mut t = FileStreamSinkTask::default();
        t.start(&p, &SinkTaskContext { connector: "sink".into(), task_id: 0 }).unwrap();
        t
    }

    fn record(offset: i64, value: Option<Value>) -> ConnectRecord {
        let mut r = ConnectRecord::new(Arc::from("logs"), value);
        r.kafka = Some(KafkaCoordinates { topic: r.topic.clone(), partition: 0, offset });
        r
    }

    #[test]
    fn writes_values_skips_nulls_and_is_durable_at_pre_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        let mut t = task(&path, &[]);
        t.put(vec![
            record(0, Some(Value::from_string("hello"))),
            record(1, None),
            record(2, Some(Value::Bytes(Bytes::from_static(b"raw")))),
            record(3, Some(Value::Json(json!({"a": 1})))),
        ])
        .unwrap();
        let current = BTreeMap::new();
        assert_eq!(t.pre_commit(&current).unwrap(), current);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\nraw\n{\"a\":1}\n");
        t.stop();
    }

    #[test]
    fn json_format_carries_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut t = task(&path, &[("format", "json")]);
        let mut r = record(7, Some(Value::from_string("v")));
        r.key = Some(Value::from_string("k"));
        r.timestamp_ms = Some(1_700_000_000_000);
        r.headers.push(Header { key: "h".into(), value: Some(Bytes::from_static(b"x")) });
        t.put(vec![r, record(8, None)]).unwrap();
        t.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Json> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(
            lines[0],
            json!({"topic": "logs", "partition": 0, "offset": 7, "timestamp": 1_700_000_000_000i64,
                   "key": "k", "value": "v", "headers": [{"key": "h", "value": "x"}]})
        );
        assert_eq!(lines[1]["value"], Json::Null);
        assert_eq!(lines[1]["offset"], json!(8));
    }

    #[test]
    fn rolls_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        let mut t = task(&path, &[("file.roll.bytes", "10")]);
        let records = (0..5).map(|i| record(i, Some(Value::from_string(format!("line{i}"))))).collect();
        t.put(records).unwrap();
        t.flush().unwrap();
        let mut rolled: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p != &path)
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        rolled.sort();
        // Each "lineN\n" is 6 bytes: one per file with a 10-byte limit.
        assert_eq!(rolled, ["line0\n", "line1\n", "line2\n", "line3\n"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line4\n");
    }

    #[test]
    fn rolls_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        let mut t = task(&path, &[("file.roll.ms", "20")]);
        t.put(vec![record(0, Some(Value::from_string("a")))]).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        t.flush().unwrap();
        t.put(vec![record(1, Some(Value::from_string("b")))]).unwrap();
        t.flush().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b\n");
    }

    #[test]
    fn connector_shape() {
        let c = FileStreamSinkConnector;
        assert_eq!(c.kind(), ConnectorType::Sink);
        assert_eq!(c.task_configs(&Props::new(), 4).unwrap().len(), 1);
        assert!(c.aliases().contains(&"org.apache.kafka.connect.file.FileStreamSinkConnector"));
        let mut p = Props::new();
        p.insert("format".into(), "xml".into());
        assert!(SinkConfig::parse(&p).is_err());
    }
}

//! The file source (`FileStreamSource`): tails files into a topic, one record per line (or
//! multiline event), surviving rotation, truncation and restarts.
//!
//! Kafka's keys `file`, `topic`, `batch.size`, plus the keys in [`FileStreamSourceConnector`]'s
//! config definition. Each record's value is the line without its newline; its headers are
//! `file` (the path), `offset` (the byte offset of the line's start, decimal text) and `host`.
//!
//! **Offsets.** The source partition is `{"fingerprint": "<16 hex digits>"}` (see
//! [`fingerprint`] for the rule), which stays the same when the file is renamed; the source
//! offset is `{"position": <byte offset after the batch's last line>, "path": "<path>"}` (plus
//! `head_checksum` for a file still identified by its first line). At
//! start every stored offset is read and each known fingerprint resumes at its position, so
//! after a crash reading continues where the last acknowledged batch ended. A null offset
//! deletes a partition (sent when a short file's first-line fingerprint is replaced by its
//! `fingerprint.bytes` one).
//!
//! Layout: [`scan`] (the tailer: discovery, identity, rotation), [`reader`] (line splitting with
//! the `max.line.bytes` bound), [`multiline`], [`fingerprint`]; this file holds the config,
//! the connector and the task, which waits for data with `notify` as a hint.

mod fingerprint;
mod multiline;
mod reader;
mod scan;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use regex::bytes::Regex;
use tracing::warn;

use crate::config::{ConfigDef, ConfigType, Importance, ParsedConfig, Props, Validator};
use crate::connector::{Connector, ConnectorType, SourceBatch, SourceTask, SourceTaskContext};
use crate::error::{ConnectError, Result};

use scan::Tailer;

const SOURCE_CLASS: &str = "FileStreamSource";

/// Bytes read per `read` call; lines are slices of these chunks.
const READ_BUF_BYTES: usize = 256 * 1024;

/// How often an idle task looks at its files when no notification comes (notifications are
/// a hint: they can be lost, or unavailable on the file system).
const TAIL_INTERVAL: Duration = Duration::from_millis(50);

/// The file source connector: `connector.class` = `FileStreamSource` (or Kafka's
/// `org.apache.kafka.connect.file.FileStreamSourceConnector`).
#[derive(Debug, Clone, Copy, Default)]
pub struct FileStreamSourceConnector;

/// How a line above `max.line.bytes` is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineAction {
    /// Its first `max.line.bytes` bytes become the record.
    Truncate,
    /// Its first `max.line.bytes` bytes go to the dead-letter topic as a failed record.
    Dlq,
}

/// The record value's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// `Value::Text`, invalid UTF-8 replaced by U+FFFD.
    Utf8,
    /// `Value::Bytes`, as read.
    Bytes,
}

/// The validated task config.
#[derive(Debug)]
pub(crate) struct SourceConfig {
    patterns: Vec<String>,
    topic: Arc<str>,
    batch_size: usize,
    batch_max_bytes: usize,
    read_from_end: bool,
    multiline: Option<(Regex, Duration)>,
    max_line_bytes: usize,
    line_action: LineAction,
    encoding: Encoding,
    scan_interval: Duration,
    fingerprint_bytes: usize,
    host: Bytes,
    read_buf_bytes: usize,
}

fn check_glob(v: &str) -> std::result::Result<(), String> {
    for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        glob::Pattern::new(p).map_err(|e| format!("{p} is not a valid glob: {e}"))?;
    }
    Ok(())
}

fn check_regex(v: &str) -> std::result::Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    Regex::new(v).map(|_| ()).map_err(|e| format!("not a valid regular expression: {e}"))
}

fn source_config_def() -> ConfigDef {
    ConfigDef::new()
        .define(
            "file",
            ConfigType::String,
            Some(""),
            Importance::High,
            "The file to read: a path or a glob (`/var/log/app/*.log`). Matching files are found by a \
             scan every scan.interval.ms. At least one of file and files is required.",
        )
        .with_validator(Validator::Custom(check_glob))
        .define(
            "files",
            ConfigType::List,
            Some(""),
            Importance::High,
            "More paths or globs, comma-separated. With tasks.max above 1 the entries of file and files are \
             split across tasks (a file matched by entries of two tasks would be read twice).",
        )
        .with_validator(Validator::Custom(check_glob))
        .define("topic", ConfigType::String, None, Importance::High, "The topic to write lines to.")
        .with_validator(Validator::NonEmpty)
        .define("batch.size", ConfigType::Int, Some("2000"), Importance::Low, "The most lines one poll returns.")
        .with_validator(Validator::Range { min: 1.0, max: 1_000_000.0 })
        .define(
            "batch.max.bytes",
            ConfigType::Int,
            Some("4194304"),
            Importance::Low,
            "The most line bytes one poll returns (a poll stops after the line that reaches it).",
        )
        .with_validator(Validator::Range { min: 1.0, max: 1_073_741_824.0 })
        .define(
            "read.from",
            ConfigType::String,
            Some("beginning"),
            Importance::Medium,
            "Where to start reading a file that has no stored offset: beginning or end. `end` applies to \
             files found by the task's first scan; files that appear later are read from their beginning \
             (a rotation's new file must not lose its first lines).",
        )
        .with_validator(Validator::OneOf(&["beginning", "end"]))
        .define(
            "multiline.start.pattern",
            ConfigType::String,
            Some(""),
            Importance::Medium,
            "A regular expression: a line matching it starts a new event, other lines are appended to the \
             current event with \\n. Empty: every line is an event.",
        )
        .with_validator(Validator::Custom(check_regex))
        .define(
            "multiline.timeout.ms",
            ConfigType::Long,
            Some("1000"),
            Importance::Low,
            "A multiline event is complete when no line was appended to it for this long.",
        )
        .with_validator(Validator::Range { min: 1.0, max: 86_400_000.0 })
        .define(
            "max.line.bytes",
            ConfigType::Int,
            Some("1048576"),
            Importance::Medium,
            "The longest line (or multiline event) in bytes. Longer ones are cut to this size (the rest is \
             skipped as it is read, never buffered) and handled by max.line.action.",
        )
        .with_validator(Validator::Range { min: 1.0, max: 1_073_741_824.0 })
        .define(
            "max.line.action",
            ConfigType::String,
            Some("truncate"),
            Importance::Medium,
            "truncate: the first max.line.bytes bytes are the record. dlq: they go to the dead-letter topic \
             as a failed record (stage TASK_POLL), routed by errors.tolerance.",
        )
        .with_validator(Validator::OneOf(&["truncate", "dlq"]))
        .define(
            "encoding",
            ConfigType::String,
            Some("utf8"),
            Importance::Medium,
            "utf8: values are text, invalid UTF-8 replaced by U+FFFD. bytes: values are the bytes as read.",
        )
        .with_validator(Validator::OneOf(&["utf8", "bytes"]))
        .define(
            "scan.interval.ms",
            ConfigType::Long,
            Some("1000"),
            Importance::Low,
            "How often the globs are expanded to find new, renamed, truncated and deleted files. File-system \
             notifications make a scan come sooner; this scan is the truth.",
        )
        .with_validator(Validator::Range { min: 1.0, max: 86_400_000.0 })
        .define(
            "fingerprint.bytes",
            ConfigType::Int,
            Some("256"),
            Importance::Low,
            "A file is identified by a checksum of its first fingerprint.bytes bytes; until it has that \
             many, by its first line once complete (a file with neither is not read yet). Changing this \
             makes every file new.",
        )
        .with_validator(Validator::Range { min: 16.0, max: 65_536.0 })
        .define(
            "host",
            ConfigType::String,
            Some(""),
            Importance::Low,
            "The value of each record's host header. Empty: this machine's hostname.",
        )
}

impl SourceConfig {
    /// Validates task (or connector) props into the typed config.
    fn parse(props: &Props) -> Result<Self> {
        let parsed = source_config_def().parse(props)?;
        Self::from_parsed(&parsed)
    }

    fn from_parsed(c: &ParsedConfig) -> Result<Self> {
        let mut patterns = c.get_list("files");
        if let Some(file) = c.get_str("file").map(str::trim).filter(|f| !f.is_empty()) {
            patterns.insert(0, file.to_owned());
        }
        if patterns.is_empty() {
            return Err(ConnectError::config("file", "set file or files to the paths or globs to read"));
        }
        let int = |key: &str| -> Result<usize> {
            let v = c.get_i64(key)?.ok_or_else(|| ConnectError::config(key, "missing"))?;
            usize::try_from(v).map_err(|_| ConnectError::config(key, "must not be negative"))
        };
        let ms = |key: &str| -> Result<Duration> { Ok(Duration::from_millis(int(key)? as u64)) };
        let pattern = c.get_str("multiline.start.pattern").unwrap_or("");
        let multiline = if pattern.is_empty() {
            None
        } else {
            let re = Regex::new(pattern).map_err(|e| ConnectError::config("multiline.start.pattern", e.to_string()))?;
            Some((re, ms("multiline.timeout.ms")?))
        };
        let host = match c.get_str("host").map(str::trim).filter(|h| !h.is_empty()) {
            Some(h) => Bytes::copy_from_slice(h.as_bytes()),
            None => Bytes::from(hostname()),
        };
        Ok(SourceConfig {
            patterns,
            topic: Arc::from(c.require_str("topic")?),
            batch_size: int("batch.size")?,
            batch_max_bytes: int("batch.max.bytes")?,
            read_from_end: c.get_str("read.from") == Some("end"),
            multiline,
            max_line_bytes: int("max.line.bytes")?,
            line_action: if c.get_str("max.line.action") == Some("dlq") {
                LineAction::Dlq
            } else {
                LineAction::Truncate
            },
            encoding: if c.get_str("encoding") == Some("bytes") { Encoding::Bytes } else { Encoding::Utf8 },
            scan_interval: ms("scan.interval.ms")?,
            fingerprint_bytes: int("fingerprint.bytes")?,
            host,
            read_buf_bytes: READ_BUF_BYTES,
        })
    }
}

/// This machine's hostname, read from the kernel (no `unsafe` `gethostname` call).
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_owned())
}

impl Connector for FileStreamSourceConnector {
    fn class(&self) -> &'static str {
        SOURCE_CLASS
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["org.apache.kafka.connect.file.FileStreamSourceConnector", "FileStreamSourceConnector"]
    }

    fn kind(&self) -> ConnectorType {
        ConnectorType::Source
    }

    fn config_def(&self) -> ConfigDef {
        source_config_def()
    }

    fn validate(&self, config: &Props) -> Vec<(String, String)> {
        let parsed = ParsedConfig::from_props(config.clone());
        let none = parsed.get_str("file").is_none_or(|f| f.trim().is_empty()) && parsed.get_list("files").is_empty();
        if none {
            vec![("file".to_owned(), "set file or files to the paths or globs to read".to_owned())]
        } else {
            Vec::new()
        }
    }

    /// One task, unless `tasks.max` > 1 and there are several entries in `file` + `files`:
    /// then the entries are dealt out round-robin, each task getting its share as `files`.
    fn task_configs(&self, config: &Props, max_tasks: usize) -> Result<Vec<Props>> {
        let parsed = ParsedConfig::from_props(config.clone());
        let mut entries = parsed.get_list("files");
        if let Some(file) = parsed.get_str("file").map(str::trim).filter(|f| !f.is_empty()) {
            entries.insert(0, file.to_owned());
        }
        let tasks = max_tasks.max(1).min(entries.len().max(1));
        if tasks == 1 {
            return Ok(vec![config.clone()]);
        }
        let mut shares = vec![Vec::new(); tasks];
        for (i, e) in entries.into_iter().enumerate() {
            shares[i % tasks].push(e);
        }
        Ok(shares
            .into_iter()
            .map(|share| {
                let mut props = config.clone();
                props.remove("file");
                props.insert("files".to_owned(), share.join(","));
                props
            })
            .collect())
    }

    fn source_task(&self) -> Result<Box<dyn SourceTask>> {
        Ok(Box::new(FileStreamSourceTask::default()))
    }
}

/// The file source's task.
#[derive(Default)]
pub(crate) struct FileStreamSourceTask {
    tailer: Option<Tailer>,
    /// Kept alive while the task runs; dropping it stops the notifications.
    watcher: Option<notify::RecommendedWatcher>,
    wake: Option<mpsc::Receiver<()>>,
    rescan: Arc<AtomicBool>,
}

impl FileStreamSourceTask {
    /// Watches the directories the patterns point into; any change there wakes the task, and a
    /// create, remove or rename makes it scan.
    fn watch(&mut self, cfg: &SourceConfig) {
        use notify::{EventKind, RecursiveMode, Watcher};
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let rescan = self.rescan.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if matches!(
                    event.kind,
                    EventKind::Create(_)
                        | EventKind::Remove(_)
                        | EventKind::Modify(notify::event::ModifyKind::Name(_))
                        | EventKind::Any
                        | EventKind::Other
                ) {
                    rescan.store(true, Ordering::Relaxed);
                }
            } else {
                rescan.store(true, Ordering::Relaxed);
            }
            // A full channel already holds a wake-up: events coalesce.
            let _ = tx.try_send(());
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "file source: no file-system notifications; relying on the scan");
                return;
            }
        };
        let mut dirs: Vec<std::path::PathBuf> = cfg.patterns.iter().map(|p| watch_dir(p)).collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
                warn!(dir = %dir.display(), error = %e, "file source: cannot watch directory; relying on the scan");
            }
        }
        self.watcher = Some(watcher);
        self.wake = Some(rx);
    }
}

/// The directory a pattern's files are in: its path up to the first component with a glob
/// character (a `**` pattern is watched at its root only; the scan finds the rest).
fn watch_dir(pattern: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(pattern);
    let mut dir = std::path::PathBuf::new();
    for c in path.components() {
        if c.as_os_str().to_string_lossy().contains(['*', '?', '[']) {
            return if dir.as_os_str().is_empty() { ".".into() } else { dir };
        }
        dir.push(c);
    }
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => ".".into(),
    }
}

impl SourceTask for FileStreamSourceTask {
    fn start(&mut self, config: &Props, context: &SourceTaskContext) -> Result<()> {
        let cfg = Arc::new(SourceConfig::parse(config)?);
        self.watch(&cfg);
        self.tailer = Some(Tailer::new(cfg, context.connector.clone(), context.offsets.offsets()));
        Ok(())
    }

    fn poll(&mut self, timeout: Duration) -> Result<Option<SourceBatch>> {
        let Some(tailer) = self.tailer.as_mut() else {
            return Err(ConnectError::Internal("file source task polled before start".to_owned()));
        };
        let deadline = Instant::now() + timeout;
        loop {
            if self.rescan.swap(false, Ordering::Relaxed) {
                tailer.scan_soon();
            }
            let now = Instant::now();
            let batch = tailer.poll_once(now)?;
            if !batch.records.is_empty() || !batch.failed.is_empty() || !batch.offsets.is_empty() {
                return Ok(Some(batch));
            }
            if now >= deadline {
                return Ok(None);
            }
            let mut wait = (deadline - now).min(TAIL_INTERVAL);
            if let Some(t) = tailer.next_deadline() {
                wait = wait.min(t.saturating_duration_since(now));
            }
            match &self.wake {
                Some(rx) => {
                    if let Err(mpsc::RecvTimeoutError::Disconnected) = rx.recv_timeout(wait) {
                        // The watcher is gone: fall back to sleeping, or this loop would spin.
                        self.wake = None;
                    }
                }
                None => std::thread::sleep(wait),
            }
        }
    }

    fn stop(&mut self) {
        self.watcher = None;
        self.wake = None;
        if let Some(t) = self.tailer.as_mut() {
            t.close();
        }
    }
}

#[cfg(test)]
mod tests;

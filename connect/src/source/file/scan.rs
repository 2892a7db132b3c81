//! The tailer: which files are read, from where, and when they are let go. Synchronous and
//! driven by an explicit `now` ([`Tailer::poll_once`]); the task around it does the waiting.
//!
//! - **Discovery** is a periodic glob scan (`scan.interval.ms`), the truth; file-system
//!   notifications only make the next scan come sooner.
//! - **Identity** is the fingerprint ([`super::fingerprint`]); while the task runs, an open
//!   handle is followed by device and inode, so a renamed file keeps being read.
//! - **Rename + create**: the old file (same fingerprint, open handle) is read to its end, then
//!   let go once it has been at its end for a scan interval; the new file at the path is a new
//!   file.
//! - **Copytruncate**: a size below the read position (or changed first bytes) means the file
//!   was truncated: it is read again from 0. A copy that shows up under the glob with the old
//!   fingerprint continues at the old position.
//! - **Deleted** files are read to the end through the open handle, then let go.
//! - `read.from = end` applies to files found by the first scan only: a file that appears later
//!   (a rotation's new file) is read from its beginning, or its first lines would be lost.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Value as Json};
use tracing::{debug, warn};

use super::fingerprint::{self, Fingerprint, Kind};
use super::multiline::Multiline;
use super::reader::{Line, LineReader};
use super::{Encoding, LineAction, SourceConfig};
use crate::connector::{FailedRecord, SourceBatch};
use crate::error::{ConnectError, Result};
use crate::record::{ConnectRecord, Header, Value};

/// Positions remembered for files not open now (stored offsets, files let go) are capped; the
/// oldest half is forgotten beyond this.
const KNOWN_FILES_MAX: usize = 65_536;

/// Records preallocated per batch (more grow the vector).
const RECORDS_PREALLOCATED: usize = 2048;

/// Size of each allocation the `offset` header digits are cut from.
const DIGITS_ARENA_BYTES: usize = 16 * 1024;

/// A position for a fingerprint no open file holds.
#[derive(Debug, Clone, Copy)]
struct Known {
    position: u64,
    /// For a file identified by its first line: the checksum of its first bytes and how many
    /// (`min(position, fingerprint.bytes)` when stored), which a file taking this position over
    /// must match (a first line alone is weak: small files often share a header line). The
    /// length is kept apart from the position so an offset altered through the REST API
    /// (a new `position`, the old `head_checksum`) still applies.
    head_checksum: Option<(u64, u64)>,
    /// Insertion order, for forgetting the oldest.
    seq: u64,
}

/// One file the tailer holds open.
#[derive(Debug)]
struct Watched {
    path: PathBuf,
    path_header: Bytes,
    file: File,
    dev: u64,
    ino: u64,
    /// `None`: too short to identify yet (not read).
    fingerprint: Option<Fingerprint>,
    /// Its position is decided and it is being read; `false` with a fingerprint: another open
    /// file has the same fingerprint (a copy), so this one waits.
    resolved: bool,
    /// Where to start when no position is stored: 0, or with `read.from = end` for a file
    /// found by the first scan, its size then (a file too short to identify at start keeps
    /// the lines written after the start).
    new_file_position: u64,
    reader: LineReader,
    multiline: Option<Multiline>,
    /// Byte offset after the last line handed out: the stored position.
    committed: u64,
    /// `committed` moved since the last batch's offsets.
    moved: bool,
    /// Its path no longer leads to it (renamed away or deleted) since then.
    gone_since: Option<Instant>,
    /// The last read found the end of the file.
    at_eof: bool,
}

/// Reads lines from every file the patterns match.
#[derive(Debug)]
pub(crate) struct Tailer {
    cfg: Arc<SourceConfig>,
    connector: String,
    files: Vec<Watched>,
    known: HashMap<u64, Known>,
    known_seq: u64,
    first_scan_done: bool,
    next_scan: Option<Instant>,
    /// Round-robin start, so one busy file does not starve the others.
    next_file: usize,
    head_buf: Vec<u8>,
    /// The `offset` headers' digits: each header is a slice of this arena, so a record costs no
    /// allocation for it.
    digits: BytesMut,
}

/// How full the batch being built is.
struct Fill {
    records: usize,
    bytes: usize,
}

impl Tailer {
    /// A tailer resuming from `stored` (the connector's source offsets).
    pub(crate) fn new(cfg: Arc<SourceConfig>, connector: String, stored: Vec<(Json, Json)>) -> Self {
        let mut t = Tailer {
            cfg,
            connector,
            files: Vec::new(),
            known: HashMap::new(),
            known_seq: 0,
            first_scan_done: false,
            next_scan: None,
            next_file: 0,
            head_buf: Vec::new(),
            digits: BytesMut::new(),
        };
        for (partition, offset) in stored {
            let checksum = partition.get("fingerprint").and_then(Json::as_str).and_then(Fingerprint::parse_hex);
            let position = offset.get("position").and_then(Json::as_u64);
            let head = offset.get("head_checksum").and_then(Json::as_str).and_then(Fingerprint::parse_hex);
            if let (Some(checksum), Some(position)) = (checksum, position) {
                // Offsets stored before `head_bytes` existed covered min(position, N) bytes.
                let head_bytes = offset.get("head_bytes").and_then(Json::as_u64).unwrap_or(position);
                t.remember(checksum, position, head.map(|h| (h, head_bytes)));
            }
        }
        t
    }

    /// Makes the next poll scan (a file-system notification said something changed).
    pub(crate) fn scan_soon(&mut self) {
        self.next_scan = None;
    }

    /// When the tailer wants to run again even if nothing is written: the next scan or
    /// multiline timeout.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let multiline = self.files.iter().filter_map(|w| w.multiline.as_ref()?.deadline()).min();
        match (self.next_scan, multiline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One round without waiting: scan when due, read what is new, time out multiline events,
    /// let go of finished files. The batch may be empty.
    pub(crate) fn poll_once(&mut self, now: Instant) -> Result<SourceBatch> {
        let mut batch = SourceBatch {
            // Growing the vector record by record would copy every record several times.
            records: Vec::with_capacity(self.cfg.batch_size.min(RECORDS_PREALLOCATED)),
            ..SourceBatch::default()
        };
        if self.next_scan.is_none_or(|t| now >= t) {
            self.scan(now, &mut batch);
            self.first_scan_done = true;
            self.next_scan = Some(now + self.cfg.scan_interval);
        }
        for i in 0..self.files.len() {
            if !self.files[i].resolved {
                self.resolve(i, &mut batch);
            }
        }
        let mut fill = Fill { records: 0, bytes: 0 };
        for w in &mut self.files {
            // Only a file read to its end in this round may be let go in it.
            w.at_eof = false;
        }
        let n = self.files.len();
        if n > 0 {
            let start = self.next_file % n;
            self.next_file = self.next_file.wrapping_add(1);
            for k in 0..n {
                let i = (start + k) % n;
                if self.files[i].resolved && self.read_file(i, now, &mut batch, &mut fill)? {
                    break;
                }
            }
        }
        for i in 0..self.files.len() {
            let w = &mut self.files[i];
            if let Some(event) = w.multiline.as_mut().and_then(|m| m.flush_due(now)) {
                self.emit(i, event, &mut batch, &mut fill);
            }
        }
        self.release_gone(now, &mut batch);
        let n = self.cfg.fingerprint_bytes;
        for w in &mut self.files {
            if w.moved {
                w.moved = false;
                if let Some(fp) = w.fingerprint.filter(|_| w.resolved) {
                    let head = head_checksum(w, n, &mut self.head_buf);
                    batch.offsets.push(offset_entry(fp, w.committed, &w.path, head));
                }
            }
        }
        Ok(batch)
    }

    /// Lets go of every file (the task stops).
    pub(crate) fn close(&mut self) {
        self.files.clear();
    }

    fn remember(&mut self, checksum: u64, position: u64, head_checksum: Option<(u64, u64)>) {
        self.known_seq += 1;
        self.known.insert(checksum, Known { position, head_checksum, seq: self.known_seq });
        if self.known.len() > KNOWN_FILES_MAX {
            let mut seqs: Vec<u64> = self.known.values().map(|k| k.seq).collect();
            seqs.sort_unstable();
            let cutoff = seqs[seqs.len() / 2];
            self.known.retain(|_, k| k.seq >= cutoff);
        }
    }

    fn scan(&mut self, now: Instant, batch: &mut SourceBatch) {
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut open: HashMap<(u64, u64), usize> =
            self.files.iter().enumerate().map(|(i, w)| ((w.dev, w.ino), i)).collect();
        for pattern in &self.cfg.patterns {
            let paths = match glob::glob(pattern) {
                Ok(paths) => paths,
                Err(e) => {
                    // Checked by the config; a pattern that stops parsing is skipped, not fatal.
                    warn!(pattern = %pattern, error = %e, "file source: bad glob pattern");
                    continue;
                }
            };
            for path in paths.flatten() {
                let Ok(meta) = std::fs::metadata(&path) else { continue };
                if !meta.is_file() || !seen.insert((meta.dev(), meta.ino())) {
                    continue;
                }
                if let Some(&i) = open.get(&(meta.dev(), meta.ino())) {
                    let w = &mut self.files[i];
                    if w.path != path {
                        debug!(from = %w.path.display(), to = %path.display(), "file source: file renamed");
                        w.path_header = Bytes::copy_from_slice(path.as_os_str().as_bytes());
                        w.path = path;
                    }
                    w.gone_since = None;
                    continue;
                }
                match File::open(&path) {
                    Ok(file) => {
                        debug!(path = %path.display(), "file source: new file");
                        open.insert((meta.dev(), meta.ino()), self.files.len());
                        self.files.push(Watched {
                            path_header: Bytes::copy_from_slice(path.as_os_str().as_bytes()),
                            path,
                            file,
                            dev: meta.dev(),
                            ino: meta.ino(),
                            fingerprint: None,
                            resolved: false,
                            new_file_position: if !self.first_scan_done && self.cfg.read_from_end {
                                meta.len()
                            } else {
                                0
                            },
                            reader: LineReader::new(0, self.cfg.read_buf_bytes, self.cfg.max_line_bytes),
                            multiline: self
                                .cfg
                                .multiline
                                .as_ref()
                                .map(|(re, timeout)| Multiline::new(re.clone(), *timeout, self.cfg.max_line_bytes)),
                            committed: 0,
                            moved: false,
                            gone_since: None,
                            at_eof: false,
                        });
                    }
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "file source: cannot open file, retrying at the next scan")
                    }
                }
            }
        }
        for i in 0..self.files.len() {
            let w = &mut self.files[i];
            if !seen.contains(&(w.dev, w.ino)) {
                if w.gone_since.is_none() {
                    debug!(path = %w.path.display(), "file source: file renamed away or deleted; reading it to its end");
                    w.gone_since = Some(now);
                }
            } else if w.resolved {
                self.check(i, batch);
            }
        }
    }

    /// Detects truncation, replaced content, and a short file's fingerprint growing up.
    fn check(&mut self, i: usize, batch: &mut SourceBatch) {
        let n = self.cfg.fingerprint_bytes;
        let w = &mut self.files[i];
        let Ok(meta) = w.file.metadata() else { return };
        if meta.len() < w.reader.read_pos() {
            return self.truncated(i, batch);
        }
        let Some(fp) = w.fingerprint else { return };
        let Ok(head) = fingerprint::read_head(&w.file, n, &mut self.head_buf) else { return };
        let same = match fp.kind {
            Kind::Bytes => fingerprint::of_head(head, n) == Some(fp),
            Kind::FirstLine => fingerprint::first_line(head) == Some(fp),
        };
        if !same {
            return self.truncated(i, batch);
        }
        if fp.kind == Kind::FirstLine && head.len() >= n {
            // The file reached fingerprint.bytes: its identity moves to the N-byte checksum,
            // position and all; the old partition's offset is deleted (a null offset).
            if let Some(grown) = fingerprint::of_head(head, n) {
                batch.offsets.push((partition(fp), Json::Null));
                w.fingerprint = Some(grown);
                w.moved = true;
            }
        }
    }

    /// The file's start changed under us: what was read is handed out, and it is read again
    /// from 0 as a new file.
    fn truncated(&mut self, i: usize, batch: &mut SourceBatch) {
        let w = &mut self.files[i];
        debug!(path = %w.path.display(), "file source: file truncated; reading it from the start");
        if let Some(event) = w.multiline.as_mut().and_then(Multiline::take) {
            let mut fill = Fill { records: 0, bytes: 0 };
            self.emit(i, event, batch, &mut fill);
        }
        let w = &mut self.files[i];
        if let Some(fp) = w.fingerprint.take() {
            batch.offsets.push(offset_entry(fp, w.committed, &w.path, None));
            let committed = w.committed;
            // A copy of the old content (copytruncate) continues from here. The content is
            // gone, so there is no head to check the copy against.
            self.remember(fp.checksum, committed, None);
        }
        let w = &mut self.files[i];
        w.resolved = false;
        w.moved = false;
        w.new_file_position = 0;
        w.committed = 0;
        w.reader.reset(0);
        if let Err(e) = w.file.seek(SeekFrom::Start(0)) {
            warn!(path = %w.path.display(), error = %e, "file source: cannot seek");
        }
    }

    /// Identifies a file and decides where to read it from.
    fn resolve(&mut self, i: usize, batch: &mut SourceBatch) {
        let n = self.cfg.fingerprint_bytes;
        let w = &mut self.files[i];
        let Ok(head) = fingerprint::read_head(&w.file, n, &mut self.head_buf) else { return };
        if w.fingerprint.is_none() {
            w.fingerprint = fingerprint::of_head(head, n);
        }
        let Some(fp) = w.fingerprint else { return };
        // The identity it had while shorter than fingerprint.bytes, if it ever was.
        let short = match fp.kind {
            Kind::Bytes if head.iter().position(|&b| b == b'\n').is_some_and(|nl| nl + 1 < n) => {
                fingerprint::first_line(head)
            }
            _ => None,
        };
        if self.files.iter().enumerate().any(|(j, o)| j != i && o.resolved && o.fingerprint == Some(fp)) {
            return;
        }
        let size = match self.files[i].file.metadata() {
            Ok(m) => m.len(),
            Err(_) => return,
        };
        // A remembered position applies if the file starts as the remembered one did.
        let same_head = |k: &Known| {
            k.head_checksum.is_none_or(|(h, covered)| {
                let len = usize::try_from(covered).unwrap_or(usize::MAX);
                head.len() >= len.min(self.cfg.fingerprint_bytes)
                    && h == fingerprint::fnv1a(&head[..len.min(head.len())])
            })
        };
        let mut position = None;
        // Only a position that differs from the stored one needs storing.
        let mut changed = true;
        if let Some(k) = self.known.remove(&fp.checksum) {
            if same_head(&k) {
                position = Some(k.position);
                changed = k.position > size;
            }
        } else if let Some(s) = short {
            // Stored while the file was shorter than fingerprint.bytes.
            if let Some(k) = self.known.remove(&s.checksum) {
                batch.offsets.push((partition(s), Json::Null));
                position = same_head(&k).then_some(k.position);
            }
        }
        let w = &mut self.files[i];
        let position = match position {
            // Above the size: truncated while we were away.
            Some(p) => {
                if p > size {
                    0
                } else {
                    p
                }
            }
            None => w.new_file_position.min(size),
        };
        debug!(path = %w.path.display(), fingerprint = %fp.hex(), position, "file source: reading file");
        w.reader.reset(position);
        if let Err(e) = w.file.seek(SeekFrom::Start(position)) {
            warn!(path = %w.path.display(), error = %e, "file source: cannot seek");
            return;
        }
        w.committed = position;
        w.resolved = true;
        w.moved = changed;
    }

    /// Reads file `i` until its end or the batch is full; `true` when full.
    fn read_file(&mut self, i: usize, now: Instant, batch: &mut SourceBatch, fill: &mut Fill) -> Result<bool> {
        loop {
            loop {
                let w = &mut self.files[i];
                let Some(line) = w.reader.next_line() else { break };
                let event = match w.multiline.as_mut() {
                    Some(m) => m.push(line, now),
                    None => Some(line),
                };
                if let Some(event) = event {
                    self.emit(i, event, batch, fill);
                    if fill.records >= self.cfg.batch_size || fill.bytes >= self.cfg.batch_max_bytes {
                        return Ok(true);
                    }
                }
            }
            let w = &mut self.files[i];
            let read = w
                .reader
                .fill(&mut w.file)
                .map_err(|e| ConnectError::external(&self.connector, format!("reading {}", w.path.display()), e))?;
            if read == 0 {
                w.at_eof = true;
                if w.file.metadata().is_ok_and(|m| m.len() < w.reader.read_pos()) {
                    self.truncated(i, batch);
                }
                return Ok(false);
            }
            w.at_eof = false;
        }
    }

    /// Turns an event of file `i` into a record (or a failure) in the batch.
    fn emit(&mut self, i: usize, event: Line, batch: &mut SourceBatch, fill: &mut Fill) {
        let cfg = &self.cfg;
        let w = &mut self.files[i];
        w.committed = event.end;
        w.moved = true;
        fill.records += 1;
        fill.bytes += event.bytes.len();
        let value = match cfg.encoding {
            Encoding::Bytes => Value::Bytes(event.bytes),
            Encoding::Utf8 => match std::str::from_utf8(&event.bytes) {
                Ok(_) => Value::Text(event.bytes),
                // A cut line ending inside a character loses the partial character rather
                // than growing past max.line.bytes with a replacement character.
                Err(e) if event.truncated && e.error_len().is_none() => {
                    let mut bytes = event.bytes;
                    bytes.truncate(e.valid_up_to());
                    Value::Text(bytes)
                }
                Err(_) => Value::Text(Bytes::from(String::from_utf8_lossy(&event.bytes).into_owned())),
            },
        };
        let mut record = ConnectRecord::new(cfg.topic.clone(), Some(value));
        record.headers = vec![
            Header { key: "file".to_owned(), value: Some(w.path_header.clone()) },
            Header { key: "offset".to_owned(), value: Some(decimal(&mut self.digits, event.offset)) },
            Header { key: "host".to_owned(), value: Some(cfg.host.clone()) },
        ];
        if event.truncated && cfg.line_action == LineAction::Dlq {
            let reason = format!(
                "the line of {} bytes at byte {} is above max.line.bytes = {} (written so by the file's writer)",
                event.end - event.offset,
                event.offset,
                cfg.max_line_bytes
            );
            batch.failed.push(FailedRecord {
                record,
                error: Arc::new(ConnectError::external(
                    &self.connector,
                    format!("reading {}", w.path.display()),
                    reason,
                )),
                stage: "TASK_POLL",
                class_name: super::SOURCE_CLASS.to_owned(),
            });
        } else {
            batch.records.push(record);
        }
    }

    /// Lets go of files whose path is gone once they have been at their end for a scan
    /// interval (a writer may append to a renamed file until it reopens its path).
    fn release_gone(&mut self, now: Instant, batch: &mut SourceBatch) {
        let mut i = 0;
        while i < self.files.len() {
            let w = &self.files[i];
            let due = w.gone_since.is_some_and(|t| now >= t + self.cfg.scan_interval);
            if !due || (w.resolved && !w.at_eof) {
                i += 1;
                continue;
            }
            if w.resolved {
                let mut fill = Fill { records: 0, bytes: 0 };
                let w = &mut self.files[i];
                let mut events = Vec::with_capacity(2);
                if let Some(line) = w.reader.take_partial() {
                    match w.multiline.as_mut() {
                        Some(m) => events.extend(m.push(line, now)),
                        None => events.push(line),
                    }
                }
                events.extend(w.multiline.as_mut().and_then(Multiline::take));
                for event in events {
                    self.emit(i, event, batch, &mut fill);
                }
            }
            let w = self.files.swap_remove(i);
            debug!(path = %w.path.display(), "file source: let go of file");
            if let (Some(fp), true) = (w.fingerprint, w.resolved) {
                let head = head_checksum(&w, self.cfg.fingerprint_bytes, &mut self.head_buf);
                if w.moved {
                    batch.offsets.push(offset_entry(fp, w.committed, &w.path, head));
                }
                self.remember(fp.checksum, w.committed, head);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn open_files(&self) -> usize {
        self.files.len()
    }

    #[cfg(test)]
    pub(crate) fn max_reader_bytes(&self) -> usize {
        self.files.iter().map(|w| w.reader.held_bytes()).max().unwrap_or(0)
    }
}

/// The source partition of a file: its fingerprint only, so it stays the same across renames.
fn partition(fp: Fingerprint) -> Json {
    json!({ "fingerprint": fp.hex() })
}

/// A `(partition, offset)` pair; the path is there for people reading the offsets.
fn offset_entry(fp: Fingerprint, position: u64, path: &std::path::Path, head: Option<(u64, u64)>) -> (Json, Json) {
    let mut offset = json!({ "position": position, "path": path.to_string_lossy() });
    if let Some((h, covered)) = head {
        offset["head_checksum"] = Json::from(format!("{h:016x}"));
        offset["head_bytes"] = Json::from(covered);
    }
    (partition(fp), offset)
}

/// For a file identified by its first line, the checksum of its first
/// `min(committed, fingerprint.bytes)` bytes (see [`Known::head_checksum`]).
fn head_checksum(w: &Watched, n: usize, buf: &mut Vec<u8>) -> Option<(u64, u64)> {
    if w.fingerprint?.kind != Kind::FirstLine {
        return None;
    }
    let head = fingerprint::read_head(&w.file, n, buf).ok()?;
    let len = head.len().min(usize::try_from(w.committed).unwrap_or(usize::MAX));
    Some((fingerprint::fnv1a(&head[..len]), len as u64))
}

/// `n` as decimal text in `arena`, without going through `fmt`.
fn decimal(arena: &mut BytesMut, mut n: u64) -> Bytes {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if arena.capacity() - arena.len() < digits.len() {
        arena.reserve(DIGITS_ARENA_BYTES);
    }
    arena.extend_from_slice(&digits[i..]);
    arena.split().freeze()
}

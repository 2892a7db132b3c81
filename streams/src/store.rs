//! A task's view of its state stores: the bytes stores of [`crate::state`] behind a write
//! buffer (the record cache: dirty entries, deduplicated per key, written to the store and to
//! the changelog topic in one batch at commit or when the buffer is full), and the decoding of
//! changelog records on restore.
//!
//! Changelog keys use Kafka Streams' layouts so that Kafka tools read them: a key-value store
//! writes the key; a window store `key ‖ window start (8 bytes BE) ‖ sequence number (4 bytes
//! BE, always 0: no duplicates are kept)`; a session store `key ‖ end (8 bytes BE) ‖ start
//! (8 bytes BE)`. A deleted entry is a tombstone (null value), so the compacted changelog forgets
//! it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::processor::{OutKind, OutRecord};
use crate::state::{KeyValueBytesStore, SessionBytesStore, WindowBytesStore};
use crate::window::SessionWindow;
use crate::StreamsError;

/// Bytes of bookkeeping counted per buffered entry beyond its key and value, so that many tiny
/// entries still fill the buffer.
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// A buffered write: the value (None: delete) and the record timestamp it came with.
type Dirty = (Option<Vec<u8>>, i64);

/// Key-value entries in key order.
pub(crate) type Entries = Vec<(Vec<u8>, Vec<u8>)>;
/// Window entries: key, window start, value.
pub(crate) type WindowEntries = Vec<(Vec<u8>, i64, Vec<u8>)>;
/// Sessions of one key with their values.
pub(crate) type SessionEntries = Vec<(SessionWindow, Vec<u8>)>;
/// Changelog records being restored: key and value bytes.
pub(crate) type ChangelogRecords = [RawKeyValue];
/// A record's key and value bytes (None: null).
pub(crate) type RawKeyValue = (Option<Bytes>, Option<Bytes>);

/// What kind of store a name refers to, and its retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreType {
    KeyValue,
    Window { retention_ms: i64, segment_interval_ms: i64 },
    Session { retention_ms: i64 },
}

/// A store as the topology declares it.
#[derive(Debug, Clone)]
pub(crate) struct StoreSpec {
    pub name: String,
    pub store_type: StoreType,
    /// Writes go to `<application.id>-<name>-changelog` (Kafka's `withLoggingEnabled`).
    pub logging: bool,
    pub in_memory: bool,
}

/// A changelog destination: topic and the task's partition.
#[derive(Debug, Clone)]
pub(crate) struct Changelog {
    pub topic: Arc<str>,
    pub partition: i32,
}

fn changelog_record(changelog: &Changelog, key: Vec<u8>, value: Option<Vec<u8>>, timestamp_ms: i64) -> OutRecord {
    OutRecord {
        topic: changelog.topic.clone(),
        partition: Some(changelog.partition),
        key: Some(Bytes::from(key)),
        value: value.map(Bytes::from),
        timestamp_ms,
        kind: OutKind::Changelog,
    }
}

/// Writes `batch` to the store in one go, then (for a logged store) each entry to the
/// changelog: `to_changelog` gives its changelog key and value, `stamps` its timestamp.
fn write_and_log<E>(
    changelog: Option<&Changelog>,
    out: &mut Vec<OutRecord>,
    batch: Vec<E>,
    stamps: Vec<i64>,
    write: impl FnOnce(&[E]) -> Result<(), StreamsError>,
    to_changelog: impl Fn(E) -> (Vec<u8>, Option<Vec<u8>>),
) -> Result<(), StreamsError> {
    write(&batch)?;
    if let Some(changelog) = changelog {
        for (entry, ts) in batch.into_iter().zip(stamps) {
            let (key, value) = to_changelog(entry);
            out.push(changelog_record(changelog, key, value, ts));
        }
    }
    Ok(())
}

/// Locks a store of this task. Stores are shared only between the owning thread and readers of
/// interactive queries, neither of which panics while holding the lock; a poisoned lock still
/// holds consistent data because every method leaves the buffer whole before it can fail.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A store's buffered writes, deduplicated per key, with their approximate size.
struct WriteBuffer<Key> {
    dirty: BTreeMap<Key, Dirty>,
    bytes: usize,
    max_bytes: usize,
}

impl<Key: Ord> WriteBuffer<Key> {
    fn new(max_bytes: usize) -> Self {
        WriteBuffer { dirty: BTreeMap::new(), bytes: 0, max_bytes }
    }

    /// Buffers a write of a key of `key_len` bytes; true when the buffer is over its size.
    fn insert(&mut self, key: Key, key_len: usize, value: Option<Vec<u8>>, timestamp_ms: i64) -> bool {
        let size = |v: &Option<Vec<u8>>| key_len + v.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD_BYTES;
        self.bytes += size(&value);
        if let Some((old, _)) = self.dirty.insert(key, (value, timestamp_ms)) {
            self.bytes -= size(&old);
        }
        self.bytes > self.max_bytes
    }

    fn take(&mut self) -> BTreeMap<Key, Dirty> {
        self.bytes = 0;
        std::mem::take(&mut self.dirty)
    }
}

/// A key-value store with its write buffer.
pub(crate) struct LoggedKv {
    pub store: Arc<dyn KeyValueBytesStore>,
    buffer: WriteBuffer<Vec<u8>>,
    changelog: Option<Changelog>,
}

impl LoggedKv {
    pub fn new(store: Arc<dyn KeyValueBytesStore>, changelog: Option<Changelog>, max_dirty_bytes: usize) -> Self {
        LoggedKv { store, buffer: WriteBuffer::new(max_dirty_bytes), changelog }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StreamsError> {
        if let Some((value, _)) = self.buffer.dirty.get(key) {
            return Ok(value.clone());
        }
        self.store.get(key)
    }

    /// Buffers a put (Some) or delete (None); writes the buffer out when it is full.
    pub fn put(
        &mut self,
        out: &mut Vec<OutRecord>,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        timestamp_ms: i64,
    ) -> Result<(), StreamsError> {
        let key_len = key.len();
        if self.buffer.insert(key, key_len, value, timestamp_ms) {
            self.flush(out)?;
        }
        Ok(())
    }

    /// Writes the buffer to the store in one batch and its entries to the changelog.
    pub fn flush(&mut self, out: &mut Vec<OutRecord>) -> Result<(), StreamsError> {
        if self.buffer.dirty.is_empty() {
            return Ok(());
        }
        let dirty = self.buffer.take();
        let mut batch: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(dirty.len());
        let mut stamps = Vec::with_capacity(dirty.len());
        for (key, (value, ts)) in dirty {
            batch.push((key, value));
            stamps.push(ts);
        }
        write_and_log(self.changelog.as_ref(), out, batch, stamps, |b| self.store.write_batch(b), |e| e)
    }

    /// Entries from..to in key order, buffered writes included (interactive queries and
    /// processors' range scans).
    pub fn range(&self, from: Option<&[u8]>, to: Option<&[u8]>, limit: usize) -> Result<Entries, StreamsError> {
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        let in_range = |k: &[u8]| from.is_none_or(|f| k >= f) && to.is_none_or(|t| k < t);
        self.store.range(from, to, &mut |k, v| {
            merged.insert(k.to_vec(), Some(v.to_vec()));
            merged.len() < limit.saturating_add(self.buffer.dirty.len())
        })?;
        for (k, (v, _)) in &self.buffer.dirty {
            if in_range(k) {
                merged.insert(k.clone(), v.clone());
            }
        }
        Ok(merged.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).take(limit).collect())
    }

    /// Applies changelog records during restore (straight to the store, not the buffer).
    pub fn restore(&self, records: &ChangelogRecords) -> Result<(), StreamsError> {
        let batch: Vec<(Vec<u8>, Option<Vec<u8>>)> = records
            .iter()
            .filter_map(|(k, v)| k.as_ref().map(|k| (k.to_vec(), v.as_ref().map(|v| v.to_vec()))))
            .collect();
        self.store.write_batch(&batch)
    }
}

const WINDOW_SUFFIX_BYTES: usize = 12;
const SESSION_SUFFIX_BYTES: usize = 16;

/// A window store's buffered writes: by key, then window start, so that a lookup hashes the
/// key bytes once and allocates nothing (windowed aggregations look up every record's windows).
struct WindowBuffer {
    dirty: HashMap<Vec<u8>, BTreeMap<i64, Dirty>>,
    entries: usize,
    bytes: usize,
    max_bytes: usize,
}

impl WindowBuffer {
    fn get(&self, key: &[u8], start_ms: i64) -> Option<&Dirty> {
        self.dirty.get(key)?.get(&start_ms)
    }

    /// Buffers a write; true when the buffer is over its size.
    fn insert(&mut self, key: &[u8], start_ms: i64, value: Option<Vec<u8>>, timestamp_ms: i64) -> bool {
        let key_len = key.len();
        let size = |v: &Option<Vec<u8>>| key_len + v.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD_BYTES;
        self.bytes += size(&value);
        // The key is copied only the first time it is buffered.
        let windows = match self.dirty.get_mut(key) {
            Some(windows) => windows,
            None => self.dirty.entry(key.to_vec()).or_default(),
        };
        match windows.insert(start_ms, (value, timestamp_ms)) {
            Some((old, _)) => self.bytes -= size(&old),
            None => self.entries += 1,
        }
        self.bytes > self.max_bytes
    }

    fn take(&mut self) -> Vec<(Vec<u8>, i64, Dirty)> {
        let mut out = Vec::with_capacity(self.entries);
        for (key, windows) in std::mem::take(&mut self.dirty) {
            for (start, dirty) in windows {
                out.push((key.clone(), start, dirty));
            }
        }
        self.entries = 0;
        self.bytes = 0;
        out
    }
}

/// A window store with its write buffer.
pub(crate) struct LoggedWindow {
    pub store: Arc<dyn WindowBytesStore>,
    buffer: WindowBuffer,
    changelog: Option<Changelog>,
}

impl LoggedWindow {
    pub fn new(store: Arc<dyn WindowBytesStore>, changelog: Option<Changelog>, max_dirty_bytes: usize) -> Self {
        LoggedWindow {
            store,
            buffer: WindowBuffer { dirty: HashMap::new(), entries: 0, bytes: 0, max_bytes: max_dirty_bytes },
            changelog,
        }
    }

    pub fn fetch(&self, key: &[u8], start_ms: i64) -> Result<Option<Vec<u8>>, StreamsError> {
        if let Some((value, _)) = self.buffer.get(key, start_ms) {
            return Ok(value.clone());
        }
        self.store.fetch(key, start_ms)
    }

    pub fn put(
        &mut self,
        out: &mut Vec<OutRecord>,
        key: Vec<u8>,
        start_ms: i64,
        value: Option<Vec<u8>>,
        timestamp_ms: i64,
    ) -> Result<(), StreamsError> {
        self.put_ref(out, &key, start_ms, value, timestamp_ms)
    }

    /// As `put`, copying the key only if it is not buffered yet.
    pub fn put_ref(
        &mut self,
        out: &mut Vec<OutRecord>,
        key: &[u8],
        start_ms: i64,
        value: Option<Vec<u8>>,
        timestamp_ms: i64,
    ) -> Result<(), StreamsError> {
        if self.buffer.insert(key, start_ms, value, timestamp_ms) {
            self.flush(out)?;
        }
        Ok(())
    }

    pub fn flush(&mut self, out: &mut Vec<OutRecord>) -> Result<(), StreamsError> {
        if self.buffer.dirty.is_empty() {
            return Ok(());
        }
        let dirty = self.buffer.take();
        let mut batch = Vec::with_capacity(dirty.len());
        let mut stamps = Vec::with_capacity(dirty.len());
        for (key, start, (value, ts)) in dirty {
            batch.push((key, start, value));
            stamps.push(ts);
        }
        write_and_log(
            self.changelog.as_ref(),
            out,
            batch,
            stamps,
            |b| self.store.write_batch(b),
            |(mut key, start, value)| {
                key.extend_from_slice(&start.to_be_bytes());
                key.extend_from_slice(&0u32.to_be_bytes());
                (key, value)
            },
        )
    }

    /// Windows of `key` starting in [from, to], buffered writes included, ascending start.
    pub fn fetch_range(&self, key: &[u8], from_ms: i64, to_ms: i64) -> Result<Vec<(i64, Vec<u8>)>, StreamsError> {
        if from_ms > to_ms {
            return Ok(Vec::new());
        }
        let mut merged: BTreeMap<i64, Option<Vec<u8>>> = BTreeMap::new();
        self.store.fetch_range(key, from_ms, to_ms, &mut |start, v| {
            merged.insert(start, Some(v.to_vec()));
            true
        })?;
        if let Some(windows) = self.buffer.dirty.get(key) {
            for (start, (v, _)) in windows.range(from_ms..=to_ms) {
                merged.insert(*start, v.clone());
            }
        }
        Ok(merged.into_iter().filter_map(|(s, v)| v.map(|v| (s, v))).collect())
    }

    /// Every key's windows starting in [from, to], buffered writes included, ordered by
    /// (start, key).
    pub fn fetch_all(&self, from_ms: i64, to_ms: i64) -> Result<WindowEntries, StreamsError> {
        if from_ms > to_ms {
            return Ok(Vec::new());
        }
        let mut merged: BTreeMap<(i64, Vec<u8>), Option<Vec<u8>>> = BTreeMap::new();
        self.store.fetch_all(from_ms, to_ms, &mut |k, start, v| {
            merged.insert((start, k.to_vec()), Some(v.to_vec()));
            true
        })?;
        for (k, windows) in &self.buffer.dirty {
            for (start, (v, _)) in windows.range(from_ms..=to_ms) {
                merged.insert((*start, k.clone()), v.clone());
            }
        }
        Ok(merged.into_iter().filter_map(|((s, k), v)| v.map(|v| (k, s, v))).collect())
    }

    pub fn restore(&self, records: &ChangelogRecords) -> Result<(), StreamsError> {
        let mut batch = Vec::with_capacity(records.len());
        for (k, v) in records {
            let Some(k) = k else { continue };
            if k.len() < WINDOW_SUFFIX_BYTES {
                return Err(StreamsError::deserialize("window changelog key", format!("{} bytes", k.len())));
            }
            let (key, suffix) = k.split_at(k.len() - WINDOW_SUFFIX_BYTES);
            let start = i64::from_be_bytes(suffix[..8].try_into().expect("8 bytes"));
            batch.push((key.to_vec(), start, v.as_ref().map(|v| v.to_vec())));
        }
        self.store.write_batch(&batch)
    }
}

/// A session store with its write buffer.
pub(crate) struct LoggedSession {
    pub store: Arc<dyn SessionBytesStore>,
    buffer: WriteBuffer<(Vec<u8>, i64, i64)>,
    changelog: Option<Changelog>,
}

impl LoggedSession {
    pub fn new(store: Arc<dyn SessionBytesStore>, changelog: Option<Changelog>, max_dirty_bytes: usize) -> Self {
        LoggedSession { store, buffer: WriteBuffer::new(max_dirty_bytes), changelog }
    }

    /// Sessions of `key` with end >= earliest_end and start <= latest_start, buffered writes
    /// included, ascending end.
    pub fn find_sessions(
        &self,
        key: &[u8],
        earliest_end_ms: i64,
        latest_start_ms: i64,
    ) -> Result<SessionEntries, StreamsError> {
        let mut merged: BTreeMap<(i64, i64), Option<Vec<u8>>> = BTreeMap::new();
        self.store.find_sessions(key, earliest_end_ms, latest_start_ms, &mut |w, v| {
            merged.insert((w.end_ms, w.start_ms), Some(v.to_vec()));
            true
        })?;
        for ((_, end, start), (v, _)) in
            self.buffer.dirty.range((key.to_vec(), earliest_end_ms, i64::MIN)..=(key.to_vec(), i64::MAX, i64::MAX))
        {
            if *start <= latest_start_ms {
                merged.insert((*end, *start), v.clone());
            }
        }
        Ok(merged
            .into_iter()
            .filter_map(|((end_ms, start_ms), v)| v.map(|v| (SessionWindow { start_ms, end_ms }, v)))
            .collect())
    }

    pub fn put(
        &mut self,
        out: &mut Vec<OutRecord>,
        key: Vec<u8>,
        window: SessionWindow,
        value: Option<Vec<u8>>,
        timestamp_ms: i64,
    ) -> Result<(), StreamsError> {
        let key_len = key.len();
        if self.buffer.insert((key, window.end_ms, window.start_ms), key_len, value, timestamp_ms) {
            self.flush(out)?;
        }
        Ok(())
    }

    pub fn flush(&mut self, out: &mut Vec<OutRecord>) -> Result<(), StreamsError> {
        if self.buffer.dirty.is_empty() {
            return Ok(());
        }
        let dirty = self.buffer.take();
        let mut batch = Vec::with_capacity(dirty.len());
        let mut stamps = Vec::with_capacity(dirty.len());
        for ((key, end_ms, start_ms), (value, ts)) in dirty {
            batch.push((key, SessionWindow { start_ms, end_ms }, value));
            stamps.push(ts);
        }
        write_and_log(
            self.changelog.as_ref(),
            out,
            batch,
            stamps,
            |b| self.store.write_batch(b),
            |(mut key, w, value)| {
                key.extend_from_slice(&w.end_ms.to_be_bytes());
                key.extend_from_slice(&w.start_ms.to_be_bytes());
                (key, value)
            },
        )
    }

    pub fn restore(&self, records: &ChangelogRecords) -> Result<(), StreamsError> {
        let mut batch = Vec::with_capacity(records.len());
        for (k, v) in records {
            let Some(k) = k else { continue };
            if k.len() < SESSION_SUFFIX_BYTES {
                return Err(StreamsError::deserialize("session changelog key", format!("{} bytes", k.len())));
            }
            let (key, suffix) = k.split_at(k.len() - SESSION_SUFFIX_BYTES);
            let end_ms = i64::from_be_bytes(suffix[..8].try_into().expect("8 bytes"));
            let start_ms = i64::from_be_bytes(suffix[8..].try_into().expect("8 bytes"));
            batch.push((key.to_vec(), SessionWindow { start_ms, end_ms }, v.as_ref().map(|v| v.to_vec())));
        }
        self.store.write_batch(&batch)
    }
}

/// One opened store of a task.
#[derive(Clone)]
pub(crate) enum TaskStore {
    Kv(Arc<Mutex<LoggedKv>>),
    Window(Arc<Mutex<LoggedWindow>>),
    Session(Arc<Mutex<LoggedSession>>),
}

impl TaskStore {
    pub fn flush_buffer(&self, out: &mut Vec<OutRecord>) -> Result<(), StreamsError> {
        match self {
            TaskStore::Kv(s) => lock(s).flush(out),
            TaskStore::Window(s) => lock(s).flush(out),
            TaskStore::Session(s) => lock(s).flush(out),
        }
    }

    /// Makes what was written survive a crash (before the checkpoint names it).
    pub fn flush_store(&self) -> Result<(), StreamsError> {
        match self {
            TaskStore::Kv(s) => lock(s).store.flush(),
            TaskStore::Window(s) => lock(s).store.flush(),
            TaskStore::Session(s) => lock(s).store.flush(),
        }
    }

    pub fn restore(&self, records: &ChangelogRecords) -> Result<(), StreamsError> {
        match self {
            TaskStore::Kv(s) => lock(s).restore(records),
            TaskStore::Window(s) => lock(s).restore(records),
            TaskStore::Session(s) => lock(s).restore(records),
        }
    }
}

//! Durable Raft storage for the metadata quorum, in `<metadata_dir>`:
//!
//! - `raft-log`: append-only entries, each framed as `len: u32 LE, crc32c: u32 LE, json`; fsynced
//!   before an append is acknowledged. Recovery keeps the longest valid prefix (a torn tail from a
//!   crash mid-append is cut off). Truncation shortens the file; purging rewrites it.
//! - `raft-vote.json`, `raft-purged.json`, `raft-committed.json`: small files replaced atomically
//!   (write temp, fsync, rename, fsync dir).
//! - `snapshot.json`: the state machine ([`MetadataImage`]) with its snapshot meta, atomic.
//!
//! The state machine itself lives in memory; after a restart it is rebuilt from the snapshot plus
//! the log up to the saved committed index, which openraft re-applies.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::records::{apply_record, MetadataRecord};
use super::types::MetadataImage;

/// Largest single log entry accepted from disk.
pub const MAX_ENTRY_BYTES: u32 = 16 * 1024 * 1024;
/// Largest snapshot accepted from disk or a peer.
pub const MAX_SNAPSHOT_BYTES: u64 = 256 * 1024 * 1024;
/// Largest small state file (vote, committed, purged).
const MAX_STATE_FILE_BYTES: u64 = 64 * 1024;
const FRAME_HEADER_BYTES: usize = 8;

const LOG_FILE: &str = "raft-log";
const VOTE_FILE: &str = "raft-vote.json";
const PURGED_FILE: &str = "raft-purged.json";
const COMMITTED_FILE: &str = "raft-committed.json";
const SNAPSHOT_FILE: &str = "snapshot.json";

/// What one log entry carries: the records one controller decision wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub records: Vec<MetadataRecord>,
}

openraft::declare_raft_types!(
    /// openraft's type configuration for the metadata quorum.
    pub TypeConfig:
        D = Command,
        R = (),
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = BoundedCursor,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// Writes `bytes` to `dir/name` atomically and durably (the log's own checkpoint writer).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    crate::log::write_file_atomically(&dir.join(name), bytes).map_err(|e| other(e.to_string()))
}

/// Reads a small JSON file; `None` when absent.
fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, max_bytes: u64) -> io::Result<Option<T>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len > max_bytes {
        return Err(other(format!("{} is {len} bytes, over the {max_bytes} limit", path.display())));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(max_bytes).read_to_end(&mut buf)?;
    serde_json::from_slice(&buf).map(Some).map_err(|e| other(format!("{} is corrupt: {e}", path.display())))
}

fn encode_frame(entry: &Entry<TypeConfig>) -> io::Result<Vec<u8>> {
    let payload = serde_json::to_vec(entry).map_err(|e| other(format!("cannot encode log entry: {e}")))?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l <= MAX_ENTRY_BYTES)
        .ok_or_else(|| other(format!("log entry of {} bytes exceeds {MAX_ENTRY_BYTES}", payload.len())))?;
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Decodes the longest valid prefix of a log file: entries with their frame offsets, and the
/// length of that prefix (where a torn or corrupt tail starts).
fn decode_frames(bytes: &[u8]) -> (Vec<(Entry<TypeConfig>, u64)>, u64) {
    let mut out: Vec<(Entry<TypeConfig>, u64)> = Vec::new();
    let mut pos = 0usize;
    while bytes.len() - pos >= FRAME_HEADER_BYTES {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap_or([0; 4]));
        let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap_or([0; 4]));
        if len > MAX_ENTRY_BYTES || bytes.len() - pos - FRAME_HEADER_BYTES < len as usize {
            break;
        }
        let payload = &bytes[pos + FRAME_HEADER_BYTES..pos + FRAME_HEADER_BYTES + len as usize];
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Ok(entry) = serde_json::from_slice::<Entry<TypeConfig>>(payload) else { break };
        // Indexes must be consecutive; anything else is not a log we wrote.
        if out.last().is_some_and(|(prev, _)| prev.log_id.index.checked_add(1) != Some(entry.log_id.index)) {
            break;
        }
        out.push((entry, pos as u64));
        pos += FRAME_HEADER_BYTES + len as usize;
    }
    (out, pos as u64)
}

struct LogInner {
    dir: PathBuf,
    file: File,
    /// index -> (entry, byte offset of its frame in `raft-log`).
    entries: BTreeMap<u64, (Entry<TypeConfig>, u64)>,
    file_len: u64,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

impl LogInner {
    fn open_log_file(dir: &Path) -> io::Result<File> {
        OpenOptions::new().create(true).read(true).append(true).open(dir.join(LOG_FILE))
    }

    fn truncate_from(&mut self, index: u64) -> io::Result<()> {
        let Some(offset) = self.entries.range(index..).next().map(|(_, (_, off))| *off) else {
            return Ok(());
        };
        self.file.set_len(offset)?;
        self.file.sync_all()?;
        self.file_len = offset;
        self.entries.split_off(&index);
        Ok(())
    }

    fn purge_upto(&mut self, log_id: LogId<NodeId>) -> io::Result<()> {
        // Record the purge point first: recovery drops entries at or below it, so a crash before
        // the rewrite below finishes loses nothing that is still needed.
        let bytes = serde_json::to_vec(&log_id).map_err(|e| other(e.to_string()))?;
        write_atomic(&self.dir, PURGED_FILE, &bytes)?;
        self.last_purged = Some(log_id);
        let keep = self.entries.split_off(&(log_id.index + 1));
        let tmp = self.dir.join(format!("{LOG_FILE}.tmp"));
        let mut rewritten = BTreeMap::new();
        let mut pos = 0u64;
        {
            let mut f = File::create(&tmp)?;
            for (index, (entry, _)) in keep {
                let frame = encode_frame(&entry)?;
                f.write_all(&frame)?;
                rewritten.insert(index, (entry, pos));
                pos += frame.len() as u64;
            }
            f.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join(LOG_FILE))?;
        File::open(&self.dir)?.sync_all()?;
        self.file = Self::open_log_file(&self.dir)?;
        self.entries = rewritten;
        self.file_len = pos;
        Ok(())
    }
}

/// The Raft log and vote, durable in the metadata dir. Cheap to clone (shared state).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        fs::create_dir_all(dir)?;
        let last_purged: Option<LogId<NodeId>> = read_json(&dir.join(PURGED_FILE), MAX_STATE_FILE_BYTES)?;
        let vote: Option<Vote<NodeId>> = read_json(&dir.join(VOTE_FILE), MAX_STATE_FILE_BYTES)?;
        // The committed index is an optimisation (re-applying on restart); an unreadable one
        // only means less is re-applied before the leader says more.
        let committed = read_json(&dir.join(COMMITTED_FILE), MAX_STATE_FILE_BYTES).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring unreadable committed index");
            None
        });
        let file = LogInner::open_log_file(dir)?;
        let mut bytes = Vec::new();
        (&file).read_to_end(&mut bytes)?;
        let (frames, valid_len) = decode_frames(&bytes);
        if valid_len < bytes.len() as u64 {
            tracing::warn!(
                dir = %dir.display(),
                valid_len,
                file_len = bytes.len(),
                "metadata log has a torn or corrupt tail; truncating it"
            );
            file.set_len(valid_len)?;
            file.sync_all()?;
        }
        let purged_index = last_purged.map(|l: LogId<NodeId>| l.index);
        let entries: BTreeMap<u64, (Entry<TypeConfig>, u64)> = frames
            .into_iter()
            .filter(|(e, _)| purged_index.is_none_or(|p| e.log_id.index > p))
            .map(|(e, off)| (e.log_id.index, (e, off)))
            .collect();
        let inner =
            LogInner { dir: dir.to_path_buf(), file, entries, file_len: valid_len, last_purged, vote, committed };
        Ok(LogStore { inner: Arc::new(Mutex::new(inner)) })
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether nothing was ever stored (first start of this node).
    #[cfg(test)]
    pub fn is_pristine(&self) -> bool {
        let inner = self.lock();
        inner.vote.is_none() && inner.entries.is_empty() && inner.last_purged.is_none()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        Ok(self.lock().entries.range(range).map(|(_, (e, _))| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let inner = self.lock();
        let last = inner.entries.values().next_back().map(|(e, _)| e.log_id).or(inner.last_purged);
        Ok(LogState { last_purged_log_id: inner.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let mut inner = self.lock();
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        write_atomic(&inner.dir, VOTE_FILE, &bytes).map_err(|e| StorageIOError::write_vote(&e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        let mut inner = self.lock();
        if inner.committed == committed {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&committed).map_err(|e| StorageIOError::write(&e))?;
        write_atomic(&inner.dir, COMMITTED_FILE, &bytes).map_err(|e| StorageIOError::write(&e))?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut buf = Vec::new();
        let mut added = Vec::new();
        let mut pos = inner.file_len;
        for entry in entries {
            let frame = encode_frame(&entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            added.push((entry, pos));
            pos += frame.len() as u64;
            buf.extend_from_slice(&frame);
        }
        let result = inner.file.write_all(&buf).and_then(|()| inner.file.sync_data());
        if let Err(e) = result {
            let err = StorageIOError::write_logs(&e);
            callback.log_io_completed(Err(e));
            return Err(err.into());
        }
        inner.file_len = pos;
        for (entry, off) in added {
            inner.entries.insert(entry.log_id.index, (entry, off));
        }
        drop(inner);
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.lock().truncate_from(log_id.index).map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.lock().purge_upto(log_id).map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

/// Snapshot bytes in memory, refusing to grow past [`MAX_SNAPSHOT_BYTES`] (peers choose the
/// offsets snapshot chunks are written at).
#[derive(Debug, Clone, Default)]
pub struct BoundedCursor {
    inner: Cursor<Vec<u8>>,
}

impl BoundedCursor {
    pub fn new(bytes: Vec<u8>) -> Self {
        BoundedCursor { inner: Cursor::new(bytes) }
    }

    pub fn into_inner(self) -> Vec<u8> {
        self.inner.into_inner()
    }
}

impl AsyncRead for BoundedCursor {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoundedCursor {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let end = self.inner.position().saturating_add(buf.len() as u64);
        if end > MAX_SNAPSHOT_BYTES {
            return Poll::Ready(Err(other(format!("snapshot would exceed {MAX_SNAPSHOT_BYTES} bytes"))));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncSeek for BoundedCursor {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.inner).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.inner).poll_complete(cx)
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, BasicNode>,
    image: MetadataImage,
}

struct SmInner {
    dir: PathBuf,
    image: MetadataImage,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    snapshot: Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
    image_tx: watch::Sender<Arc<MetadataImage>>,
}

impl SmInner {
    fn publish(&self) {
        self.image_tx.send_replace(Arc::new(self.image.clone()));
    }

    fn persist_snapshot(&mut self, meta: SnapshotMeta<NodeId, BasicNode>, image: &MetadataImage) -> io::Result<()> {
        let file = SnapshotFile { meta: meta.clone(), image: image.clone() };
        let bytes = serde_json::to_vec(&file).map_err(|e| other(e.to_string()))?;
        write_atomic(&self.dir, SNAPSHOT_FILE, &bytes)?;
        let data = serde_json::to_vec(image).map_err(|e| other(e.to_string()))?;
        self.snapshot = Some((meta, data));
        Ok(())
    }
}

/// The state machine: the [`MetadataImage`], published on a watch channel after every apply.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Mutex<SmInner>>,
}

impl StateMachineStore {
    /// Opens the state machine from `dir/snapshot.json` (or empty), returning it and a receiver
    /// of every image it will apply.
    pub fn open(dir: &Path) -> io::Result<(StateMachineStore, watch::Receiver<Arc<MetadataImage>>)> {
        fs::create_dir_all(dir)?;
        let loaded: Option<SnapshotFile> = read_json(&dir.join(SNAPSHOT_FILE), MAX_SNAPSHOT_BYTES)?;
        let (image, last_applied, membership, snapshot) = match loaded {
            Some(f) => {
                let data = serde_json::to_vec(&f.image).map_err(|e| other(e.to_string()))?;
                (f.image, f.meta.last_log_id, f.meta.last_membership.clone(), Some((f.meta, data)))
            }
            None => (MetadataImage::default(), None, StoredMembership::default(), None),
        };
        let (image_tx, image_rx) = watch::channel(Arc::new(image.clone()));
        let inner =
            SmInner { dir: dir.to_path_buf(), image, last_applied, membership, snapshot, snapshots_built: 0, image_tx };
        Ok((StateMachineStore { inner: Arc::new(Mutex::new(inner)) }, image_rx))
    }

    fn lock(&self) -> MutexGuard<'_, SmInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let mut inner = self.lock();
        inner.snapshots_built += 1;
        let snapshot_id = match inner.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, inner.snapshots_built),
            None => format!("0-0-{}", inner.snapshots_built),
        };
        let meta =
            SnapshotMeta { last_log_id: inner.last_applied, last_membership: inner.membership.clone(), snapshot_id };
        let image = inner.image.clone();
        inner
            .persist_snapshot(meta.clone(), &image)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let data = inner.snapshot.as_ref().map(|(_, d)| d.clone()).unwrap_or_default();
        Ok(Snapshot { meta, snapshot: Box::new(BoundedCursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<()>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut replies = Vec::new();
        for entry in entries {
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(command) => {
                    for record in &command.records {
                        apply_record(&mut inner.image, record);
                    }
                }
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                }
            }
            inner.last_applied = Some(entry.log_id);
            inner.image.applied_index = entry.log_id.index;
            replies.push(());
        }
        inner.publish();
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<BoundedCursor>> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<BoundedCursor>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let mut image: MetadataImage =
            serde_json::from_slice(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        image.applied_index = meta.last_log_id.map_or(0, |l| l.index);
        let mut inner = self.lock();
        inner
            .persist_snapshot(meta.clone(), &image)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        inner.image = image;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let inner = self.lock();
        Ok(inner
            .snapshot
            .as_ref()
            .map(|(meta, data)| Snapshot { meta: meta.clone(), snapshot: Box::new(BoundedCursor::new(data.clone())) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, RaftLogReader};

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Command {
                records: vec![MetadataRecord::SetClusterId { cluster_id: format!("c{index}") }],
            }),
        }
    }

    /// Appends directly (the `LogFlushed` callback can only be made by openraft itself).
    fn append(store: &LogStore, entries: Vec<Entry<TypeConfig>>) {
        let mut inner = store.lock();
        for e in entries {
            let frame = encode_frame(&e).unwrap();
            let off = inner.file_len;
            inner.file.write_all(&frame).unwrap();
            inner.file.sync_data().unwrap();
            inner.file_len += frame.len() as u64;
            inner.entries.insert(e.log_id.index, (e, off));
        }
    }

    async fn indexes(store: &mut LogStore) -> Vec<u64> {
        store.try_get_log_entries(0..).await.unwrap().iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test]
    async fn append_truncate_purge_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        assert!(store.is_pristine());
        append(&store, (1..=10).map(|i| entry(1, i)).collect());
        store.truncate(log_id(1, 8)).await.unwrap();
        assert_eq!(indexes(&mut store).await, (1..=7).collect::<Vec<_>>());
        append(&store, vec![entry(2, 8), entry(2, 9)]);
        store.purge(log_id(1, 3)).await.unwrap();
        assert_eq!(indexes(&mut store).await, (4..=9).collect::<Vec<_>>());
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
        assert_eq!(state.last_log_id, Some(log_id(2, 9)));
        drop(store);

        let mut store = LogStore::open(dir.path()).unwrap();
        assert!(!store.is_pristine());
        assert_eq!(indexes(&mut store).await, (4..=9).collect::<Vec<_>>());
        let got = store.try_get_log_entries(8..=9).await.unwrap();
        assert_eq!(got, vec![entry(2, 8), entry(2, 9)]);
        // Purging past the end leaves an empty log whose last id is the purge point.
        store.purge(log_id(3, 20)).await.unwrap();
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        assert!(indexes(&mut store).await.is_empty());
        assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(log_id(3, 20)));
    }

    #[tokio::test]
    async fn torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        append(&store, (1..=3).map(|i| entry(1, i)).collect());
        drop(store);
        let path = dir.path().join(LOG_FILE);
        let full = fs::read(&path).unwrap();
        // A half-written fourth frame; later a flipped byte inside a complete fourth frame.
        let mut torn = full.clone();
        torn.extend_from_slice(&encode_frame(&entry(1, 4)).unwrap()[..20]);
        fs::write(&path, &torn).unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&mut store).await, vec![1, 2, 3]);
        assert_eq!(fs::metadata(&path).unwrap().len(), full.len() as u64);
        append(&store, vec![entry(1, 4)]);
        drop(store);
        let mut corrupt = fs::read(&path).unwrap();
        let n = corrupt.len();
        corrupt[n - 3] ^= 0xff;
        fs::write(&path, &corrupt).unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&mut store).await, vec![1, 2, 3]);
        // An absurd length is refused before allocating.
        drop(store);
        let mut huge = full.clone();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        fs::write(&path, &huge).unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&mut store).await, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn vote_and_committed_persist() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.read_vote().await.unwrap(), None);
        let vote = Vote::new(3, 2);
        store.save_vote(&vote).await.unwrap();
        store.save_committed(Some(log_id(3, 7))).await.unwrap();
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(3, 7)));
        assert!(!store.is_pristine());
    }

    #[tokio::test]
    async fn state_machine_snapshot_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sm, rx) = StateMachineStore::open(dir.path()).unwrap();
        sm.apply(vec![entry(1, 1), entry(1, 2)]).await.unwrap();
        assert_eq!(rx.borrow().cluster_id, "c1");
        assert_eq!(rx.borrow().applied_index, 2);
        let snap = sm.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 2)));
        drop(sm);
        let (mut sm, rx) = StateMachineStore::open(dir.path()).unwrap();
        assert_eq!(rx.borrow().applied_index, 2);
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 2)));
        // Installing a peer's snapshot replaces the image.
        let other_dir = tempfile::tempdir().unwrap();
        let (mut other, other_rx) = StateMachineStore::open(other_dir.path()).unwrap();
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        other.install_snapshot(&current.meta, current.snapshot).await.unwrap();
        assert_eq!(other_rx.borrow().cluster_id, "c1");
        assert_eq!(other.applied_state().await.unwrap().0, Some(log_id(1, 2)));
    }

    #[tokio::test]
    async fn bounded_cursor_refuses_far_writes() {
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};
        let mut c = BoundedCursor::default();
        c.write_all(b"abc").await.unwrap();
        c.seek(io::SeekFrom::Start(MAX_SNAPSHOT_BYTES)).await.unwrap();
        assert!(c.write_all(b"x").await.is_err());
        assert_eq!(c.into_inner(), b"abc");
    }
}

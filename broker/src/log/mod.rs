//! The durable, segmented log of one partition: raw Kafka v2 record batches in
//! `{base_offset:020}.log` segment files, with sparse offset and time indexes, crash recovery,
//! retention and truncation. Synchronous file I/O only; the partition layer owns locking and
//! calls [`Log`] from blocking contexts.
//!
//! Durability works by group commit: [`Log::append`] only writes (one `pwrite`, no fsync);
//! a flusher takes a [`FlushTarget`] under the partition lock, fsyncs it outside the lock and
//! reports back with [`Log::mark_flushed`], which advances the recovery point. At open,
//! everything below the checkpointed recovery point is trusted and everything after it is
//! checked batch by batch (CRC included); the log is cut at the first batch that fails.
//!
//! Files in a partition directory: `{base}.log`, `{base}.index`, `{base}.timeindex` and
//! `{base}.txnindex` (the indexes are persisted when a segment is rolled and at clean shutdown,
//! and only trusted for segments below the recovery point; see [`txn_index`] for the last), and
//! `checkpoint` (recovery point and log start offset, replaced atomically). The partition layer
//! adds `{offset}.snapshot` producer-state snapshots (`crate::producer_snapshot`). Log compaction ([`cleaner`]) adds `cleaner-checkpoint` and, while it
//! swaps segments, `*.cleaned` and `*.swap` files that [`Log::open`] finishes or removes.
//!
//! Compaction keeps offsets but drops records and whole batches, so batches may leave offset
//! gaps and hold fewer records than `last_offset_delta + 1`; a closed segment covers offsets up
//! to the next segment's base even when its last batch ends earlier.

mod checkpoint;
pub mod cleaner;
pub mod epoch_cache;
mod index;
mod segment;
#[cfg(test)]
mod tests;
pub mod txn_index;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use spate_client::protocol::record::{self, BatchHeader, BATCH_HEADER_BYTES, BATCH_LOG_OVERHEAD};

pub use checkpoint::write_file_atomically;
use checkpoint::{io_error, sync_dir, Checkpoint};
pub use cleaner::{CleanStats, CleanedSegment, CleanerCheckpoint, CleaningPlan, OffsetMap};
pub(crate) use segment::parse_base_offset;
use segment::{Cut, Segment, SyncFile, MAX_SEGMENT_OFFSETS};
pub use txn_index::AbortedTxn;

/// Decompressing one batch for a timestamp lookup never produces more than this.
const MAX_DECOMPRESSED_BATCH_BYTES: usize = 64 << 20;
/// After an append, a reused buffer larger than this is shrunk back, so that a partition that
/// once took one huge produce request does not keep its memory forever.
const APPEND_BUFFER_KEEP_BYTES: usize = 1 << 20;

/// `cleanup.policy`: what happens to old segments. Kafka accepts `delete`, `compact` and both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupPolicy {
    /// Time and size retention (`retention.ms`, `retention.bytes`) delete old segments.
    pub delete: bool,
    /// The cleaner keeps only the latest record per key.
    pub compact: bool,
}

impl CleanupPolicy {
    pub const DELETE: CleanupPolicy = CleanupPolicy { delete: true, compact: false };
    pub const COMPACT: CleanupPolicy = CleanupPolicy { delete: false, compact: true };

    /// Parses Kafka's list syntax: `delete`, `compact`, `compact,delete` or `delete,compact`.
    pub fn parse(value: &str) -> Option<CleanupPolicy> {
        let mut policy = CleanupPolicy { delete: false, compact: false };
        for item in value.split(',').map(str::trim) {
            match item {
                "delete" if !policy.delete => policy.delete = true,
                "compact" if !policy.compact => policy.compact = true,
                _ => return None,
            }
        }
        Some(policy)
    }
}

/// Per-topic compaction settings (used when `cleanup.policy` includes `compact`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionConfig {
    /// `delete.retention.ms`: how long a tombstone survives after the cleaning pass that first
    /// kept it (KIP-534's delete horizon), so consumers reading behind see the delete.
    pub delete_retention_ms: i64,
    /// `min.cleanable.dirty.ratio`: a log is cleaned once the bytes after its last cleaned
    /// offset make up at least this share of its cleanable bytes.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: a segment whose newest record is younger than this is not
    /// cleaned yet.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a log whose oldest uncleaned segment is older than this is
    /// cleaned whatever its dirty ratio (`i64::MAX`: never forced).
    pub max_compaction_lag_ms: i64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            delete_retention_ms: 86_400_000,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
        }
    }
}

/// Per-topic log settings, by their Kafka topic config names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: a segment is rolled before an append would take it past this size.
    pub segment_bytes: u64,
    /// `segment.ms`: a non-empty segment older than this is rolled on the next append.
    pub segment_ms: i64,
    /// `retention.ms`: closed segments whose newest record is older than this are deleted;
    /// -1 keeps them forever.
    pub retention_ms: i64,
    /// `retention.bytes`: the oldest closed segments are deleted while the log is larger
    /// than this; -1 for no limit.
    pub retention_bytes: i64,
    /// `index.interval.bytes`: bytes of batches between two offset-index entries.
    pub index_interval_bytes: u32,
    /// `cleanup.policy`: retention applies only with `delete`, the cleaner only with `compact`.
    pub cleanup_policy: CleanupPolicy,
    pub compaction: CompactionConfig,
}

impl Default for LogConfig {
    fn default() -> Self {
        const DAY_MS: i64 = 24 * 60 * 60 * 1000;
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * DAY_MS,
            retention_ms: 7 * DAY_MS,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            cleanup_policy: CleanupPolicy::DELETE,
            compaction: CompactionConfig::default(),
        }
    }
}

impl LogConfig {
    /// `segment.bytes` as enforced: at least one byte, at most `i32::MAX` (Kafka's bound, and
    /// what keeps index positions within `u32`).
    fn effective_segment_bytes(&self) -> u64 {
        self.segment_bytes.clamp(1, i32::MAX as u64)
    }
}

#[derive(thiserror::Error, Debug)]
pub enum LogError {
    #[error("i/o error on {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("offset {offset} is outside the log's range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange { offset: i64, log_start_offset: i64, log_end_offset: i64 },
    #[error("log segment {} is corrupt at byte {position}: {reason}", path.display())]
    Corrupt { path: PathBuf, position: u64, reason: String },
    #[error("append to the log in {} rejected: {reason}", dir.display())]
    InvalidAppend { dir: PathBuf, reason: String },
    #[error("cleaning the log in {} was cancelled", dir.display())]
    CleaningCancelled { dir: PathBuf },
}

/// What [`Log::append`] assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The largest `max_timestamp` of the appended batches.
    pub max_timestamp: i64,
    /// Base offset of the batch carrying `max_timestamp`.
    pub offset_of_max_timestamp: i64,
    pub size_bytes: usize,
}

/// What [`Log::enforce_retention`] deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionOutcome {
    pub deleted_segments: usize,
    pub deleted_bytes: u64,
    pub log_start_offset: i64,
}

/// Whole batches located by [`Log::read`], to be read outside the log's lock. The file stays
/// readable even if retention deletes the segment meanwhile.
#[derive(Debug, Clone)]
pub struct ReadSlice {
    file: Arc<File>,
    path: Arc<Path>,
    position: u64,
    len: usize,
    /// The offset just past the slice: the next batch's base offset (at least the last
    /// offset in the slice + 1; more where compaction left a gap).
    next_offset: i64,
}

impl ReadSlice {
    /// The offset just past the slice's batches (the read's start offset if it is empty).
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Byte position of the slice within its segment file.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Reads the batches (one `pread`).
    pub fn read(&self) -> Result<Bytes, LogError> {
        if self.len == 0 {
            return Ok(Bytes::new());
        }
        let mut buf = vec![0u8; self.len];
        self.file.read_exact_at(&mut buf, self.position).map_err(|e| io_error(&self.path, e))?;
        Ok(Bytes::from(buf))
    }

    /// Sends the slice from byte `from` on to `socket` with `sendfile` (page cache to socket,
    /// no copy through user space); returns how many bytes went out, 0 if the file ended
    /// first (truncated since the slice was taken). A non-blocking socket that is full answers
    /// `WouldBlock`.
    pub fn send_to(&self, socket: impl std::os::fd::AsFd, from: usize) -> std::io::Result<usize> {
        let mut offset = self.position + from as u64;
        let count = self.len.saturating_sub(from);
        rustix::fs::sendfile(socket, &*self.file, Some(&mut offset), count).map_err(std::io::Error::from)
    }

    /// A slice of any file (tests of what sends slices).
    #[cfg(test)]
    pub(crate) fn of_file(path: &Path, position: u64, len: usize) -> std::io::Result<ReadSlice> {
        Ok(ReadSlice { file: Arc::new(File::open(path)?), path: path.into(), position, len, next_offset: 0 })
    }

    /// The segment file the slice lies in (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The files holding data not yet known durable, from [`Log::flush_target`].
#[derive(Debug, Clone)]
pub struct FlushTarget {
    files: Vec<SyncFile>,
    dir: Option<PathBuf>,
    end_offset: i64,
}

impl FlushTarget {
    /// The log end offset when the target was taken: durable once [`FlushTarget::sync`]
    /// returns.
    pub fn end_offset(&self) -> i64 {
        self.end_offset
    }

    /// Whether there is nothing to sync.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dir.is_none()
    }

    /// fdatasyncs the files (and fsyncs the directory if segments were created); run it
    /// without holding the log.
    pub fn sync(&self) -> Result<(), LogError> {
        for (path, file) in &self.files {
            file.sync_data().map_err(|e| io_error(path, e))?;
        }
        if let Some(dir) = &self.dir {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

/// Index files written at a roll and not yet fsynced.
struct PendingIndexSync {
    base_offset: i64,
    next_offset: i64,
    files: Vec<SyncFile>,
}

pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    /// Sorted by base offset and contiguous (each segment's next offset is the next one's
    /// base); never empty. The last is the active segment.
    segments: Vec<Segment>,
    log_start_offset: i64,
    /// Every batch below this offset is on disk.
    recovery_point: i64,
    /// The checkpoint as last written.
    persisted: Option<Checkpoint>,
    /// Reused for every append: the request's bytes with offsets and epochs rewritten.
    append_buf: Vec<u8>,
    pending_index_syncs: Vec<PendingIndexSync>,
    /// The log end offset at the latest directory change (a segment created) not yet known
    /// fsynced; a flush up to a later offset must have synced the directory.
    dir_dirty_at: Option<i64>,
    /// The active segment's indexes were persisted by `close_in_place`; they must go before
    /// it changes again.
    active_indexes_on_disk: bool,
    /// Where the cleaner stopped: see [`cleaner`].
    cleaner: CleanerCheckpoint,
    /// Base offset of the segment the latest roll created, until the partition takes it (to
    /// write a producer-state snapshot at that offset).
    rolled_to: Option<i64>,
}

impl Log {
    /// Opens (or creates) the log in `dir`, one directory per partition, and recovers it: see
    /// the module docs. On return every batch in the log is on disk, so the recovery point
    /// is the log end offset.
    pub fn open(dir: PathBuf, config: LogConfig, now_ms: i64) -> Result<Log, LogError> {
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let persisted = Checkpoint::read(&dir)?;
        let checkpointed_recovery_point = persisted.map_or(i64::MIN, |c| c.recovery_point);
        let (bases, mut dir_changed) = list_segments(&dir)?;
        let cleaner = CleanerCheckpoint::read(&dir)?.unwrap_or_default();
        // Offset gaps are compaction's below this, lost data anywhere else.
        let gaps_below = cleaner.compacted_below;

        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
        let mut cut: Option<(i64, Cut)> = None;
        let mut dropped: &[i64] = &[];
        for (i, &base) in bases.iter().enumerate() {
            if let Some(prev) = segments.last_mut() {
                // A compacted segment may end before the next one starts; it covers the gap.
                if prev.next_offset > base || (prev.next_offset < base && base > gaps_below) {
                    let reason = format!("next segment starts at {base} instead of {}", prev.next_offset);
                    cut = Some((prev.base_offset, Cut { position: prev.size_bytes, bytes_removed: 0, reason }));
                    dropped = &bases[i..];
                    break;
                }
                prev.next_offset = base;
            }
            let next_base = bases.get(i + 1).copied();
            let (segment, segment_cut) = Segment::open(
                &dir,
                base,
                next_base,
                checkpointed_recovery_point,
                gaps_below,
                config.index_interval_bytes,
                now_ms,
            )?;
            segments.push(segment);
            if let Some(c) = segment_cut {
                cut = Some((base, c));
                dropped = &bases[i + 1..];
                break;
            }
        }
        if let Some((base, cut)) = &cut {
            let dropped_bytes: u64 =
                dropped.iter().map(|&b| fs::metadata(segment::log_path(&dir, b)).map_or(0, |m| m.len())).sum();
            for &b in dropped {
                segment::remove_segment_files(&segment::log_path(&dir, b))?;
            }
            tracing::warn!(
                dir = %dir.display(),
                segment = base,
                position = cut.position,
                bytes_cut = cut.bytes_removed,
                segments_dropped = dropped.len(),
                bytes_dropped = dropped_bytes,
                reason = %cut.reason,
                "log recovery cut a torn or corrupt tail"
            );
            dir_changed = true;
        }

        let mut log_start_offset =
            persisted.map_or_else(|| segments.first().map_or(0, |s| s.base_offset), |c| c.log_start_offset);
        if segments.is_empty() {
            segments.push(Segment::create(&dir, log_start_offset, now_ms)?);
            dir_changed = true;
        }
        let log_end_offset = segments.last().map_or(0, |s| s.next_offset);
        log_start_offset = log_start_offset.clamp(segments[0].base_offset, log_end_offset);
        // Retention checkpoints the new log start offset before unlinking; finish its job.
        while segments.len() > 1 && segments[0].next_offset <= log_start_offset {
            segments.remove(0).delete_files()?;
            dir_changed = true;
        }
        // Closed segments that were scanned get fresh index files, made durable before the
        // checkpoint below declares them trusted (their old files may be torn or stale).
        let closed = segments.len() - 1;
        for segment in segments[..closed].iter_mut().filter(|s| !s.indexes_from_disk) {
            for (path, file) in segment.write_indexes()? {
                file.sync_data().map_err(|e| io_error(&path, e))?;
            }
            dir_changed = true;
        }
        // Persisted indexes of the active segment go stale with the next append.
        dir_changed |= segments[closed].remove_index_files()?;
        // Make what recovery accepted durable, so the recovery point can be the log end.
        for segment in &segments {
            if segment.next_offset > checkpointed_recovery_point
                || cut.as_ref().is_some_and(|(b, _)| *b == segment.base_offset)
            {
                segment.file.sync_data().map_err(|e| io_error(&segment.path, e))?;
            }
        }
        if dir_changed {
            sync_dir(&dir)?;
        }

        let mut log = Log {
            dir,
            config,
            segments,
            log_start_offset,
            recovery_point: log_end_offset,
            persisted,
            append_buf: Vec::new(),
            pending_index_syncs: Vec::new(),
            dir_dirty_at: None,
            active_indexes_on_disk: false,
            cleaner,
            rolled_to: None,
        };
        if log.persisted != Some(log.checkpoint()) {
            log.write_checkpoint()?;
        }
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Applies changed topic configs; they take effect from the next append or retention run.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// The next offset to assign.
    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset
    }

    /// Every batch below this offset is known to be on disk.
    pub fn recovery_point(&self) -> i64 {
        self.recovery_point
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size_bytes).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn active(&self) -> &Segment {
        self.segments.last().expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments.last_mut().expect("a log always has an active segment")
    }

    /// Appends batches already checked by `validate_batches` (`batches` are their headers, in
    /// order, covering `records` exactly). Assigns consecutive offsets from the log end
    /// offset and stamps `leader_epoch`, in one copy into a reused buffer, then writes them
    /// with one `pwrite` to the active segment, rolling first when the segment would pass
    /// `segment.bytes` or is older than `segment.ms`. No fsync: see [`Log::flush_target`].
    pub fn append(
        &mut self,
        records: &[u8],
        batches: &[BatchHeader],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let base_offset = self.log_end_offset();
        let mut total_bytes = 0usize;
        let mut record_count = 0i64;
        let mut max_timestamp = i64::MIN;
        let mut offset_of_max_timestamp = base_offset;
        for batch in batches {
            if batch.last_offset_delta < 0
                || (batch.batch_length as i64) < (BATCH_HEADER_BYTES - BATCH_LOG_OVERHEAD) as i64
            {
                return Err(self.invalid_append(format!(
                    "batch header with length {} and last offset delta {} was not validated",
                    batch.batch_length, batch.last_offset_delta
                )));
            }
            if batch.max_timestamp > max_timestamp {
                max_timestamp = batch.max_timestamp;
                offset_of_max_timestamp = base_offset + record_count;
            }
            total_bytes += batch.total_bytes();
            record_count += batch.last_offset_delta as i64 + 1;
        }
        if batches.is_empty() || total_bytes != records.len() {
            return Err(self.invalid_append(format!(
                "{} batch headers cover {total_bytes} bytes, not the {} given",
                batches.len(),
                records.len()
            )));
        }
        if total_bytes > i32::MAX as usize {
            return Err(self.invalid_append(format!("{total_bytes} bytes exceed what one segment can index")));
        }
        let last_offset = base_offset + record_count - 1;
        let info =
            AppendInfo { base_offset, last_offset, max_timestamp, offset_of_max_timestamp, size_bytes: total_bytes };
        self.write_batches(records, batches, Some(leader_epoch), info, now_ms)?;
        Ok(info)
    }

    /// Appends batches a follower fetched from its leader, keeping their offsets and partition
    /// leader epochs. The caller has validated them (CRC included) and `batches` are their
    /// headers, covering `records` exactly. The first batch must start at or after the log end
    /// offset and each one after the previous; the offset gaps a compacted leader log has are
    /// allowed and recorded (in the cleaner checkpoint's `compacted_below`) before the write,
    /// so that recovery tells them from lost data.
    pub fn append_as_follower(
        &mut self,
        records: &[u8],
        batches: &[BatchHeader],
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let log_end_offset = self.log_end_offset();
        let mut expected = log_end_offset;
        let mut total_bytes = 0usize;
        let mut max_timestamp = i64::MIN;
        let mut offset_of_max_timestamp = log_end_offset;
        let mut gaps_below = None;
        for batch in batches {
            if batch.last_offset_delta < 0
                || (batch.batch_length as i64) < (BATCH_HEADER_BYTES - BATCH_LOG_OVERHEAD) as i64
            {
                return Err(self.invalid_append(format!(
                    "fetched batch header with length {} and last offset delta {} was not validated",
                    batch.batch_length, batch.last_offset_delta
                )));
            }
            if batch.base_offset < expected {
                return Err(self.invalid_append(format!(
                    "fetched batch at offset {} overlaps the log, which continues at {expected}",
                    batch.base_offset
                )));
            }
            if batch.base_offset > expected {
                gaps_below = Some(batch.base_offset.saturating_add(1));
            }
            if batch.max_timestamp > max_timestamp {
                max_timestamp = batch.max_timestamp;
                offset_of_max_timestamp = batch.base_offset;
            }
            expected = batch.last_offset().saturating_add(1);
            total_bytes += batch.total_bytes();
        }
        if batches.is_empty() || total_bytes != records.len() {
            return Err(self.invalid_append(format!(
                "{} fetched batch headers cover {total_bytes} bytes, not the {} given",
                batches.len(),
                records.len()
            )));
        }
        if total_bytes > i32::MAX as usize {
            return Err(self.invalid_append(format!("{total_bytes} bytes exceed what one segment can index")));
        }
        let last_offset = expected - 1;
        if last_offset - log_end_offset > MAX_SEGMENT_OFFSETS {
            return Err(self.invalid_append(format!(
                "fetched batches end at {last_offset}, too far past the log end {log_end_offset} for one segment"
            )));
        }
        if let Some(below) = gaps_below.filter(|&b| b > self.cleaner.compacted_below) {
            let checkpoint = CleanerCheckpoint { compacted_below: below, ..self.cleaner };
            checkpoint.write(&self.dir)?;
            self.cleaner = checkpoint;
        }
        let info = AppendInfo {
            base_offset: batches[0].base_offset,
            last_offset,
            max_timestamp,
            offset_of_max_timestamp,
            size_bytes: total_bytes,
        };
        self.write_batches(records, batches, None, info, now_ms)?;
        Ok(info)
    }

    /// Writes batches whose offsets `info` describes, rolling first when due. With
    /// `stamp_epoch`, offsets are assigned consecutively from `info.base_offset` and the epoch
    /// is stamped (leader appends); without, the bytes are written as they are.
    fn write_batches(
        &mut self,
        records: &[u8],
        batches: &[BatchHeader],
        stamp_epoch: Option<i32>,
        info: AppendInfo,
        now_ms: i64,
    ) -> Result<(), LogError> {
        let AppendInfo { base_offset, last_offset, size_bytes, .. } = info;
        // Only a roll of this append may be reported (an earlier one's error left it set).
        self.rolled_to = None;
        let active = self.active();
        let roll = !active.is_empty()
            && (active.size_bytes + size_bytes as u64 > self.config.effective_segment_bytes()
                || now_ms.saturating_sub(active.rolling_base_ms) > self.config.segment_ms
                || last_offset - active.base_offset > MAX_SEGMENT_OFFSETS);
        if roll {
            self.roll(now_ms)?;
        } else if self.active_indexes_on_disk {
            self.active().remove_index_files()?;
            self.dir_dirty_at = Some(self.log_end_offset());
        }
        self.active_indexes_on_disk = false;

        if let Some(leader_epoch) = stamp_epoch {
            let buf = &mut self.append_buf;
            buf.clear();
            buf.extend_from_slice(records);
            let mut at = 0;
            let mut offset = base_offset;
            for batch in batches {
                record::set_base_offset(&mut buf[at..], offset);
                record::set_partition_leader_epoch(&mut buf[at..], leader_epoch);
                at += batch.total_bytes();
                offset += batch.last_offset_delta as i64 + 1;
            }
        }
        let bytes: &[u8] = if stamp_epoch.is_some() { &self.append_buf } else { records };

        let interval = self.config.index_interval_bytes;
        let active = self.segments.last_mut().expect("a log always has an active segment");
        let position = active.size_bytes;
        if let Err(e) = active.file.write_all_at(bytes, position) {
            // Leave no partial batch behind for the next append to follow.
            let _ = active.file.set_len(position);
            return Err(io_error(&active.path, e));
        }
        if active.is_empty() {
            active.rolling_base_ms = now_ms;
        }
        let mut at = position;
        let mut offset = base_offset;
        for batch in batches {
            let assigned = match stamp_epoch {
                Some(leader_epoch) => {
                    BatchHeader { base_offset: offset, partition_leader_epoch: leader_epoch, ..*batch }
                }
                None => *batch,
            };
            active.index_batch(at, &assigned, interval);
            at += batch.total_bytes() as u64;
            offset += batch.last_offset_delta as i64 + 1;
        }
        active.size_bytes = at;
        active.last_modified_ms = now_ms;
        if self.append_buf.capacity() > APPEND_BUFFER_KEEP_BYTES {
            self.append_buf = Vec::new();
        }
        Ok(())
    }

    fn invalid_append(&self, reason: String) -> LogError {
        LogError::InvalidAppend { dir: self.dir.clone(), reason }
    }

    /// Closes the active segment (persisting its indexes, fsynced later by the flusher) and
    /// starts a new one at the log end offset.
    fn roll(&mut self, now_ms: i64) -> Result<(), LogError> {
        let new_base = self.log_end_offset();
        let active = self.active_mut();
        let files = active.write_indexes()?;
        let (base_offset, next_offset) = (active.base_offset, active.next_offset);
        let new_segment = match Segment::create(&self.dir, new_base, now_ms) {
            Ok(segment) => segment,
            Err(e) => {
                // The old segment stays active, so its index files would go stale.
                let _ = self.active().remove_index_files();
                return Err(e);
            }
        };
        self.pending_index_syncs.push(PendingIndexSync { base_offset, next_offset, files });
        self.segments.push(new_segment);
        self.dir_dirty_at = Some(new_base);
        self.rolled_to = Some(new_base);
        Ok(())
    }

    /// The active segment's base offset.
    pub fn active_base_offset(&self) -> i64 {
        self.active().base_offset
    }

    /// The first segment's base offset (at or below the log start offset).
    pub fn first_segment_base_offset(&self) -> i64 {
        self.segments[0].base_offset
    }

    /// The base offset of the segment the latest roll created, once: the partition writes its
    /// producer-state snapshot there (before it applies the append that caused the roll).
    pub fn take_rolled(&mut self) -> Option<i64> {
        self.rolled_to.take()
    }

    /// The first offset from which the segments' aborted transactions are not all known (the
    /// base of the first segment recovery scanned), or the log end offset when all are.
    pub fn txn_index_known_below(&self) -> i64 {
        self.segments.iter().find(|s| !s.txn_index_known).map_or(self.log_end_offset(), |s| s.base_offset)
    }

    /// Every known aborted transaction whose marker lies below `offset`, in marker order.
    pub fn aborted_txns_below(&self, offset: i64) -> Vec<AbortedTxn> {
        self.segments
            .iter()
            .take_while(|s| s.base_offset < offset)
            .flat_map(|s| s.aborted.iter().filter(|a| a.last_offset < offset).copied())
            .collect()
    }

    /// Before the partition replays the log from `offset` (re-adding each ABORT marker it meets
    /// with [`Log::add_aborted_txn`]): forgets the entries at or after `offset`.
    /// `offset` must not pass [`Log::txn_index_known_below`], so that the replay covers every
    /// segment whose entries are unknown.
    pub fn rebuild_txn_indexes_from(&mut self, offset: i64) {
        for segment in &mut self.segments {
            segment.aborted.retain(|a| a.last_offset < offset);
        }
    }

    /// Records an ABORT marker (just appended, or met while replaying the log, see
    /// [`Log::rebuild_txn_indexes_from`]): its transaction goes into the `.txnindex` of the
    /// segment holding the marker, once.
    pub fn add_aborted_txn(&mut self, aborted: AbortedTxn) {
        let index = self.segment_index(aborted.last_offset);
        let segment = &mut self.segments[index];
        if segment.aborted.last().is_none_or(|a| a.last_offset < aborted.last_offset) {
            segment.aborted.push(aborted);
        }
    }

    /// After a replay from [`Log::rebuild_txn_indexes_from`]'s offset covered the log to its
    /// end, every segment's aborted transactions are known; closed segments recovery had
    /// scanned get their `.txnindex` now (fsynced, with the directory), so the next open
    /// trusts them instead of replaying them again.
    pub fn finish_txn_index_rebuild(&mut self) -> Result<(), LogError> {
        let closed = self.segments.len() - 1;
        let mut wrote = false;
        for (i, segment) in self.segments.iter_mut().enumerate() {
            if segment.txn_index_known {
                continue;
            }
            segment.txn_index_known = true;
            if i < closed {
                segment.persist_txn_index()?;
                wrote = true;
            }
        }
        if wrote {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Locates whole batches from the one holding `offset`, up to `max_bytes` in total (the
    /// first batch whole even if larger: KIP-74), none whose base offset reaches
    /// `upper_bound` (the high watermark), all from one segment. Empty at the log end offset
    /// or `upper_bound`; `OffsetOutOfRange` outside `[log_start_offset, log_end_offset]`.
    /// The caller does the actual read with [`ReadSlice::read`], outside its lock.
    pub fn read(&self, offset: i64, max_bytes: usize, upper_bound: i64) -> Result<ReadSlice, LogError> {
        self.check_range(offset)?;
        self.read_in_range(offset, max_bytes, upper_bound)
    }

    /// Like [`read`](Self::read), from any offset of the retained segments, below the log start
    /// offset too (state replay reads control batches that DeleteRecords put below it).
    pub fn read_retained(&self, offset: i64, max_bytes: usize, upper_bound: i64) -> Result<ReadSlice, LogError> {
        self.check_range_from(self.first_segment_base_offset(), offset)?;
        self.read_in_range(offset, max_bytes, upper_bound)
    }

    /// [`read`](Self::read) of an offset already checked to be in the log.
    fn read_in_range(&self, offset: i64, max_bytes: usize, upper_bound: i64) -> Result<ReadSlice, LogError> {
        let index = self.segment_index(offset);
        let segment = &self.segments[index];
        let empty = ReadSlice {
            file: Arc::clone(&segment.file),
            path: Arc::clone(&segment.path),
            position: 0,
            len: 0,
            next_offset: offset,
        };
        if offset >= upper_bound.min(self.log_end_offset()) {
            return Ok(empty);
        }
        // An offset in a gap that compaction left reads from the next batch, which may lie in
        // a later segment.
        let mut from = offset;
        for segment in &self.segments[index..] {
            if let Some((start, first)) = segment.find_batch(from)? {
                if first.base_offset >= upper_bound {
                    return Ok(empty);
                }
                let (end, next_offset) = segment.read_end(start, &first, max_bytes, upper_bound)?;
                return Ok(ReadSlice {
                    file: Arc::clone(&segment.file),
                    path: Arc::clone(&segment.path),
                    position: start,
                    len: (end - start) as usize,
                    next_offset,
                });
            }
            from = segment.next_offset;
        }
        Ok(empty)
    }

    /// The first batch at or after `offset` (which must be in range), as the index of its
    /// segment, its position and header; `None` when no batch follows.
    fn find_batch_from(&self, offset: i64) -> Result<Option<(usize, u64, BatchHeader)>, LogError> {
        let index = self.segment_index(offset);
        let mut from = offset;
        for (i, segment) in self.segments.iter().enumerate().skip(index) {
            if let Some((position, header)) = segment.find_batch(from)? {
                return Ok(Some((i, position, header)));
            }
            from = segment.next_offset;
        }
        Ok(None)
    }

    fn check_range(&self, offset: i64) -> Result<(), LogError> {
        self.check_range_from(self.log_start_offset, offset)
    }

    /// `offset` is in `[lower, log_end_offset]` (the error names the log start offset).
    fn check_range_from(&self, lower: i64, offset: i64) -> Result<(), LogError> {
        let log_end_offset = self.log_end_offset();
        if offset < lower || offset > log_end_offset {
            return Err(LogError::OffsetOutOfRange { offset, log_start_offset: self.log_start_offset, log_end_offset });
        }
        Ok(())
    }

    /// The segment holding `offset` (or the active one at the log end).
    fn segment_index(&self, offset: i64) -> usize {
        self.segments.partition_point(|s| s.base_offset <= offset).saturating_sub(1)
    }

    /// The files holding data not yet known durable, and the log end offset now. The caller
    /// runs [`FlushTarget::sync`] without holding the log, then calls
    /// [`Log::mark_flushed`] with [`FlushTarget::end_offset`]. A target taken before a
    /// [`Log::truncate_to`] must not be marked afterwards.
    pub fn flush_target(&self) -> FlushTarget {
        let mut files = Vec::new();
        for segment in self.segments.iter().rev().take_while(|s| s.next_offset > self.recovery_point) {
            files.push((Arc::clone(&segment.path), Arc::clone(&segment.file)));
        }
        for pending in &self.pending_index_syncs {
            files.extend(pending.files.iter().cloned());
        }
        FlushTarget { files, dir: self.dir_dirty_at.map(|_| self.dir.clone()), end_offset: self.log_end_offset() }
    }

    /// Records that everything below `offset` is on disk (a synced [`FlushTarget`]'s end
    /// offset). Rewrites the checkpoint whenever this makes another whole segment durable,
    /// which bounds the work of recovery to about one segment; a failure to write it is
    /// logged and only means more work for recovery.
    pub fn mark_flushed(&mut self, offset: i64) {
        let offset = offset.min(self.log_end_offset());
        // A target at exactly a segment's end may predate its roll; only a later one
        // certainly synced the files and directory entries the roll created.
        self.pending_index_syncs.retain(|p| p.next_offset >= offset);
        if self.dir_dirty_at.is_some_and(|at| offset > at) {
            self.dir_dirty_at = None;
        }
        self.recovery_point = self.recovery_point.max(offset);
        let durable = self.checkpointable_recovery_point();
        let persisted = self.persisted.map_or(i64::MIN, |c| c.recovery_point);
        if self.segments.iter().any(|s| s.base_offset > persisted && s.base_offset <= durable) {
            if let Err(error) = self.write_checkpoint() {
                tracing::warn!(dir = %self.dir.display(), %error, "could not write the log checkpoint");
            }
        }
    }

    /// The recovery point that may be persisted: segments whose index files are not yet
    /// synced must still be scanned by recovery.
    fn checkpointable_recovery_point(&self) -> i64 {
        self.pending_index_syncs.iter().map(|p| p.base_offset).fold(self.recovery_point, i64::min)
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint { recovery_point: self.checkpointable_recovery_point(), log_start_offset: self.log_start_offset }
    }

    fn write_checkpoint(&mut self) -> Result<(), LogError> {
        let checkpoint = self.checkpoint();
        checkpoint.write(&self.dir)?;
        self.persisted = Some(checkpoint);
        Ok(())
    }

    /// ListOffsets by timestamp: the offset and timestamp of the first record whose timestamp
    /// is at or after `timestamp_ms`, or `None` if there is none.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>, LogError> {
        for segment in self.segments.iter().filter(|s| !s.is_empty() && s.max_timestamp >= timestamp_ms) {
            let mut position = segment.search_start(timestamp_ms)?;
            while position < segment.size_bytes {
                let header = segment.header_at(position)?;
                if header.last_offset() >= self.log_start_offset && header.max_timestamp >= timestamp_ms {
                    if let Some(found) = self.first_record_at_or_after(segment, position, &header, timestamp_ms)? {
                        return Ok(Some(found));
                    }
                }
                position += header.total_bytes() as u64;
            }
        }
        Ok(None)
    }

    /// ListOffsets MAX_TIMESTAMP (KIP-734): the first record carrying the largest timestamp
    /// in the log, as (offset, timestamp).
    pub fn max_timestamp_offset(&self) -> Result<Option<(i64, i64)>, LogError> {
        let mut best: Option<&Segment> = None;
        for segment in self.segments.iter().filter(|s| !s.is_empty() && s.next_offset > self.log_start_offset) {
            if best.is_none_or(|b| segment.max_timestamp > b.max_timestamp) {
                best = Some(segment);
            }
        }
        let Some(segment) = best else {
            return Ok(None);
        };
        let (position, header) = segment.batch_holding(segment.offset_of_max_timestamp)?;
        let found = self.first_record_at_or_after(segment, position, &header, segment.max_timestamp)?;
        Ok(Some(found.unwrap_or((header.base_offset, header.max_timestamp))))
    }

    /// Decodes the batch at `position` for the first record at or after `timestamp_ms`.
    fn first_record_at_or_after(
        &self,
        segment: &Segment,
        position: u64,
        header: &BatchHeader,
        timestamp_ms: i64,
    ) -> Result<Option<(i64, i64)>, LogError> {
        // With LogAppendTime every record carries the batch's max timestamp.
        if header.is_log_append_time() {
            return Ok((header.max_timestamp >= timestamp_ms).then_some((header.base_offset, header.max_timestamp)));
        }
        let mut batch = vec![0u8; header.total_bytes()];
        segment.file.read_exact_at(&mut batch, position).map_err(|e| io_error(&segment.path, e))?;
        let mut records = Vec::new();
        record::decode_records(&Bytes::from(batch), MAX_DECOMPRESSED_BATCH_BYTES, &mut records)
            .map_err(|e| segment.corrupt(position, e.to_string()))?;
        Ok(records
            .iter()
            .find(|r| r.timestamp_ms >= timestamp_ms && r.offset >= self.log_start_offset)
            .map(|r| (r.offset, r.timestamp_ms)))
    }

    /// Deletes whole segments from the oldest: those whose newest timestamp is older than
    /// `retention.ms` (rolling first if that includes the active segment, so the log end
    /// offset is kept), and closed ones while the log exceeds `retention.bytes`. The new log
    /// start offset is checkpointed before any file is removed. Only segments wholly below
    /// `high_watermark` go: data the in-sync replicas may not have yet is never deleted, and the
    /// log start offset never passes the high watermark (Kafka's rule).
    pub fn enforce_retention(&mut self, now_ms: i64, high_watermark: i64) -> Result<RetentionOutcome, LogError> {
        self.rolled_to = None;
        if !self.config.cleanup_policy.delete {
            return Ok(RetentionOutcome { log_start_offset: self.log_start_offset, ..Default::default() });
        }
        let mut remaining_bytes = self.size_bytes();
        let mut count = 0;
        let last = self.segments.len() - 1;
        let log_end = self.log_end_offset();
        for (i, segment) in self.segments.iter().enumerate() {
            let segment_end = self.segments.get(i + 1).map_or(log_end, |next| next.base_offset);
            if segment_end > high_watermark {
                break;
            }
            if segment.is_empty() {
                // Compaction can leave empty closed segments: they go with the next one that
                // is deleted, and hold nothing back.
                if i < last {
                    continue;
                }
                break;
            }
            let by_time = self.config.retention_ms >= 0
                && now_ms.saturating_sub(segment.retention_timestamp()) > self.config.retention_ms;
            let by_size = i < last
                && self.config.retention_bytes >= 0
                && remaining_bytes - segment.size_bytes >= self.config.retention_bytes as u64;
            if !(by_time || by_size) {
                break;
            }
            remaining_bytes -= segment.size_bytes;
            count = i + 1;
        }
        if count == 0 {
            return Ok(RetentionOutcome { log_start_offset: self.log_start_offset, ..Default::default() });
        }
        if count == self.segments.len() {
            self.roll(now_ms)?;
        }
        let previous = (self.log_start_offset, self.recovery_point);
        self.log_start_offset = self.segments[count].base_offset;
        self.recovery_point = self.recovery_point.max(self.log_start_offset);
        let new_start = self.log_start_offset;
        self.pending_index_syncs.retain(|p| p.next_offset > new_start);
        if let Err(e) = self.write_checkpoint() {
            (self.log_start_offset, self.recovery_point) = previous;
            return Err(e);
        }
        let mut deleted_bytes = 0;
        for segment in self.segments.drain(..count) {
            deleted_bytes += segment.size_bytes;
            segment.delete_files()?;
        }
        Ok(RetentionOutcome { deleted_segments: count, deleted_bytes, log_start_offset: self.log_start_offset })
    }

    /// Moves the log start offset up to `offset` (DeleteRecords, KIP-107; a follower copying its
    /// leader's log start). Records below it can no longer be read; segments wholly below it are
    /// deleted, the segment holding it stays (its leading batches are skipped by readers, as
    /// Kafka does). The new start is checkpointed before any file is removed, so a crash never
    /// brings the records back. `offset` at or below the current start changes nothing; above
    /// the log end offset it is refused (callers bound it by the high watermark).
    pub fn advance_start_offset(&mut self, offset: i64) -> Result<bool, LogError> {
        let log_end_offset = self.log_end_offset();
        if offset > log_end_offset {
            return Err(LogError::OffsetOutOfRange { offset, log_start_offset: self.log_start_offset, log_end_offset });
        }
        if offset <= self.log_start_offset {
            return Ok(false);
        }
        // Segments before the first whose successor starts above `offset`; never the active one.
        let count = self.segments.windows(2).take_while(|pair| pair[1].base_offset <= offset).count();
        let previous = (self.log_start_offset, self.recovery_point);
        self.log_start_offset = offset;
        let first_kept = self.segments[count].base_offset;
        self.recovery_point = self.recovery_point.max(first_kept);
        self.pending_index_syncs.retain(|p| p.next_offset > first_kept);
        if let Err(e) = self.write_checkpoint() {
            (self.log_start_offset, self.recovery_point) = previous;
            return Err(e);
        }
        for segment in self.segments.drain(..count) {
            segment.delete_files()?;
        }
        Ok(true)
    }

    /// Removes every batch at or after `offset` (for a follower diverging from its leader).
    /// The batch holding `offset` goes entirely, so the new log end offset is that batch's
    /// base offset, at or below `offset`. Below the log start offset, the log is emptied and
    /// restarts at `offset`.
    pub fn truncate_to(&mut self, offset: i64) -> Result<(), LogError> {
        self.rolled_to = None;
        if offset >= self.log_end_offset() {
            return Ok(());
        }
        if offset < self.log_start_offset {
            return self.truncate_fully(offset.max(0));
        }
        // The batch holding `offset`, or the first one after it when `offset` is in a gap that
        // compaction left (then nothing below `offset` goes).
        let index = self.segment_index(offset);
        let (position, new_end) = match self.segments[index].find_batch(offset)? {
            Some((position, header)) => (position, header.base_offset.min(offset)),
            None => (self.segments[index].size_bytes, offset),
        };
        // Lower the persisted recovery point first: after a crash, bytes written here later
        // must be checked, not trusted.
        self.recovery_point = self.recovery_point.min(new_end);
        self.pending_index_syncs.retain(|p| p.next_offset <= new_end);
        self.write_checkpoint()?;
        let keep = if self.segments[index].base_offset == new_end && index > 0 { index } else { index + 1 };
        for segment in self.segments.drain(keep..) {
            segment.delete_files()?;
        }
        let interval = self.config.index_interval_bytes;
        let active = self.active_mut();
        if active.next_offset > new_end {
            active.truncate(position, interval)?;
            active.next_offset = active.next_offset.max(new_end);
        }
        self.cleaner.first_dirty_offset = self.cleaner.first_dirty_offset.min(new_end);
        self.active().remove_index_files()?;
        self.active_indexes_on_disk = false;
        self.pending_index_syncs.retain(|p| p.next_offset < new_end);
        // Removed segments must not reappear after a crash to extend the shorter log.
        sync_dir(&self.dir)?;
        self.log_start_offset = self.log_start_offset.min(new_end);
        Ok(())
    }

    /// Empties the log and restarts it at `offset`, which may lie beyond the log end (a
    /// follower whose leader's log start moved past everything it has).
    pub fn truncate_fully(&mut self, offset: i64) -> Result<(), LogError> {
        self.rolled_to = None;
        for segment in self.segments.drain(..) {
            segment.delete_files()?;
        }
        self.pending_index_syncs.clear();
        self.segments.push(Segment::create(&self.dir, offset, 0)?);
        self.active_indexes_on_disk = false;
        self.log_start_offset = offset;
        self.recovery_point = offset;
        self.cleaner.first_dirty_offset = offset;
        sync_dir(&self.dir)?;
        self.write_checkpoint()
    }

    /// Headers of every batch from the one holding `offset` to the log end (to rebuild
    /// idempotent-producer state). Reads one header per batch, so callers should start as
    /// late as they can.
    pub fn batch_headers_from(&self, offset: i64) -> Result<Vec<BatchHeader>, LogError> {
        self.check_range(offset)?;
        let mut headers = Vec::new();
        if offset == self.log_end_offset() {
            return Ok(headers);
        }
        let Some((index, start, _)) = self.find_batch_from(offset)? else {
            return Ok(headers);
        };
        self.segments[index].headers_from(start, &mut headers)?;
        for segment in &self.segments[index + 1..] {
            segment.headers_from(0, &mut headers)?;
        }
        Ok(headers)
    }

    /// Like [`batch_headers_from`](Self::batch_headers_from), but one segment's headers at a
    /// time, so a scan of the whole log holds one segment's headers in memory, not the log's;
    /// and from any offset of the retained segments, below the log start offset too (state
    /// replay). `f` may read the log (e.g. a control batch's record).
    pub fn visit_batch_headers_from<E: From<LogError>>(
        &self,
        offset: i64,
        mut f: impl FnMut(&Log, &BatchHeader) -> Result<(), E>,
    ) -> Result<(), E> {
        self.check_range_from(self.first_segment_base_offset(), offset)?;
        if offset == self.log_end_offset() {
            return Ok(());
        }
        let Some((index, start, _)) = self.find_batch_from(offset)? else {
            return Ok(());
        };
        let mut headers = Vec::new();
        for (i, segment) in self.segments.iter().enumerate().skip(index) {
            headers.clear();
            segment.headers_from(if i == index { start } else { 0 }, &mut headers)?;
            for header in &headers {
                f(self, header)?;
            }
        }
        Ok(())
    }

    /// Clean shutdown without giving up the log: fsyncs all data, writes the active
    /// segment's indexes and the checkpoint (recovery point = log end offset), so the next
    /// open checks nothing.
    pub fn close_in_place(&mut self) -> Result<(), LogError> {
        for segment in self.segments.iter().rev().take_while(|s| s.next_offset > self.recovery_point) {
            segment.file.sync_data().map_err(|e| io_error(&segment.path, e))?;
        }
        let active_files = self.active_mut().write_indexes()?;
        self.active_indexes_on_disk = true;
        for (path, file) in active_files.iter().chain(self.pending_index_syncs.iter().flat_map(|p| p.files.iter())) {
            file.sync_data().map_err(|e| io_error(path, e))?;
        }
        self.pending_index_syncs.clear();
        sync_dir(&self.dir)?;
        self.dir_dirty_at = None;
        self.recovery_point = self.log_end_offset();
        self.write_checkpoint()
    }

    /// Clean shutdown; see [`Log::close_in_place`].
    pub fn close(mut self) -> Result<(), LogError> {
        self.close_in_place()
    }

    /// Removes the log's directory (topic deletion). Outstanding [`ReadSlice`]s stay readable.
    pub fn delete(self) -> Result<(), LogError> {
        fs::remove_dir_all(&self.dir).map_err(|e| io_error(&self.dir, e))
    }
}

/// Base offsets of the segment files in `dir`, sorted, and whether the directory changed.
/// Removes leftovers of interrupted work: `*.tmp` and `*.cleaned` files and index files without
/// a segment; and finishes segment swaps the cleaner committed (see [`cleaner`]): a
/// `{base}.{next_base}.swap` file replaces every segment with a base in `[base, next_base)`.
fn list_segments(dir: &Path) -> Result<(Vec<i64>, bool), LogError> {
    let mut bases = Vec::new();
    let mut index_files = Vec::new();
    let mut swaps = Vec::new();
    let mut changed = false;
    for entry in fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.ends_with(".tmp") || name.ends_with(cleaner::CLEANED_SUFFIX) {
            fs::remove_file(entry.path()).map_err(|e| io_error(&entry.path(), e))?;
            changed = true;
        } else if let Some(base) = name.strip_suffix(".log").and_then(segment::parse_base_offset) {
            bases.push(base);
        } else if let Some(base) = name
            .strip_suffix(".index")
            .or_else(|| name.strip_suffix(".timeindex"))
            .or_else(|| name.strip_suffix(".txnindex"))
            .and_then(segment::parse_base_offset)
        {
            index_files.push((base, entry.path()));
        } else if let Some(range) = cleaner::parse_swap_name(name) {
            swaps.push((range, entry.path()));
        }
    }
    swaps.sort_unstable_by_key(|(range, _)| *range);
    for ((base, next_base), path) in swaps {
        // The swap was committed (renamed from `.cleaned` after an fsync): finish it.
        for &old in bases.iter().filter(|&&b| b >= base && b < next_base) {
            segment::remove_segment_files(&segment::log_path(dir, old))?;
        }
        bases.retain(|&b| b < base || b >= next_base);
        index_files.retain(|(b, _)| *b < base || *b >= next_base);
        sync_dir(dir)?;
        let target = segment::log_path(dir, base);
        fs::rename(&path, &target).map_err(|e| io_error(&target, e))?;
        tracing::info!(dir = %dir.display(), base, next_base, "finished a compacted segment swap after a restart");
        bases.push(base);
        changed = true;
    }
    bases.sort_unstable();
    for (base, path) in index_files {
        if bases.binary_search(&base).is_err() {
            fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
            changed = true;
        }
    }
    Ok((bases, changed))
}

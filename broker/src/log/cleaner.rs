//! Log compaction, with Kafka's log cleaner's semantics: for a log whose `cleanup.policy`
//! includes `compact`, keep only the latest record per key in its closed segments.
//!
//! A pass has three steps, and only the first and the swaps need the log (the partition lock):
//! 1. [`Log::plan_cleaning`] snapshots the segments (their `Arc<File>`s) and decides whether
//!    the log is due: its dirty ratio (bytes after the last cleaned offset over all cleanable
//!    bytes) reaches `min.cleanable.dirty.ratio`, its oldest dirty segment passed
//!    `max.compaction.lag.ms`, or a kept tombstone's delete horizon passed. Cleanable segments
//!    are closed, below the high watermark, and (with `min.compaction.lag.ms`) old enough.
//! 2. [`clean`] reads the dirty segments into an [`OffsetMap`] (key hash → latest offset,
//!    bounded by `log.cleaner.dedupe.buffer.size`; a log with more keys is cleaned up to where
//!    the map filled, and the rest in later passes), then rewrites every segment from the log
//!    start up to that point, in groups that fit `segment.bytes`, into `{base}.log.cleaned`
//!    (+ `.index.cleaned`, `.timeindex.cleaned`), fsynced.
//! 3. [`Log::swap_cleaned`] swaps each group in: rename the `.cleaned` log to
//!    `{base}.{next_base}.swap` and fsync the directory (the commit point), remove the replaced
//!    segments' files, fsync the directory, rename the swap file to `{base}.log` and the
//!    indexes to their names. [`Log::open`] deletes `.cleaned` leftovers and finishes any
//!    `.swap`, so a crash leaves the old segments or the new one, never a mix.
//!
//! What a pass keeps: records whose key has no later record in the map; records without a key
//! (Kafka refuses them on compacted topics at produce time with INVALID_RECORD, Spate's produce
//! path does not, so the cleaner keeps them); tombstones (a key with a null value) until their
//! delete horizon, which the first pass that keeps one stamps into its batch as KIP-534 does
//! (`base_timestamp` = now + `delete.retention.ms`, attribute bit 6). Control batches are kept
//! as they are.
//!
//! Batches keep their base offset, `last_offset_delta`, partition leader epoch, producer id,
//! epoch and base sequence, so offsets never change and idempotent-producer state read back from
//! headers stays valid; compressed batches are decompressed, filtered and recompressed with the
//! same codec. A batch left without records is dropped, including the last batch of an
//! idempotent producer (Kafka keeps that one, empty, so that its producer-state snapshot can be
//! rebuilt). Spate restores producer state from snapshots written at rolls (the batches after
//! one are replayed; without one, the newest offsets' headers) and treats an unknown producer as
//! new (KIP-360), and the cleaner only reaches closed segments below the high watermark, so
//! dropping it can at worst forget duplicate detection for a retry of that very batch arriving
//! after the segment was cleaned and the broker restarted without a usable snapshot. A cleaned
//! segment's `.txnindex` is the concatenation of its group's (markers are kept).
//!
//! Readers are never disturbed: a [`super::ReadSlice`] holds the old file open, and renames and
//! unlinks leave open files readable.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use spate_client::protocol::record::{self, BatchHeader, ConsumedRecord, ATTR_DELETE_HORIZON, BATCH_HEADER_BYTES};

use super::checkpoint::{io_error, sync_dir, write_file_atomically};
use super::segment::{self, Scanner, Segment, MAX_SEGMENT_OFFSETS, READ_CHUNK_BYTES};
use super::{Log, LogConfig, LogError, MAX_DECOMPRESSED_BATCH_BYTES};

/// Suffix of files a cleaning pass writes before it commits them; removed at open.
pub(crate) const CLEANED_SUFFIX: &str = ".cleaned";
const SWAP_SUFFIX: &str = ".swap";
const CHECKPOINT_FILE: &str = "cleaner-checkpoint";
const CHECKPOINT_VERSION_LINE: &str = "spate-cleaner-checkpoint 1";
const CHECKPOINT_MAX_BYTES: u64 = 4096;
/// Output is written in chunks of this size.
const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// Kafka's default `log.cleaner.dedupe.buffer.size`.
pub const DEFAULT_DEDUPE_BUFFER_BYTES: usize = 128 << 20;

/// The name of a committed swap file: the segment starting at `base_offset` that replaces
/// every segment with a base offset in `[base_offset, next_base)`.
pub(crate) fn swap_name(base_offset: i64, next_base: i64) -> String {
    format!("{base_offset:020}.{next_base:020}{SWAP_SUFFIX}")
}

/// The range of a swap file's name, see [`swap_name`].
pub(crate) fn parse_swap_name(name: &str) -> Option<(i64, i64)> {
    let (base, next) = name.strip_suffix(SWAP_SUFFIX)?.split_once('.')?;
    let base = segment::parse_base_offset(base)?;
    let next = segment::parse_base_offset(next)?;
    (base < next).then_some((base, next))
}

/// What the cleaner remembers about a log between passes (`cleaner-checkpoint` in its
/// directory): Kafka's cleaner offset checkpoint, plus the earliest delete horizon of the
/// tombstones it kept, so that their removal is due even if nothing new is written, and how far
/// compaction may have left offset gaps, so that recovery tells them from lost data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CleanerCheckpoint {
    /// Every offset below this has been deduplicated against everything up to it.
    pub first_dirty_offset: i64,
    /// The earliest delete horizon (ms) of a tombstone kept in the cleaned part of the log.
    pub next_delete_horizon_ms: Option<i64>,
    /// Segments below this offset may have been rewritten by compaction: recovery accepts
    /// offset gaps between batches and segments there, and nowhere else. Persisted before a
    /// pass swaps anything in.
    pub compacted_below: i64,
}

impl CleanerCheckpoint {
    fn encode(&self) -> Vec<u8> {
        format!(
            "{CHECKPOINT_VERSION_LINE}\nfirst_dirty_offset {}\nnext_delete_horizon_ms {}\ncompacted_below {}\n",
            self.first_dirty_offset,
            self.next_delete_horizon_ms.unwrap_or(-1),
            self.compacted_below
        )
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<CleanerCheckpoint> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.lines();
        if lines.next()? != CHECKPOINT_VERSION_LINE {
            return None;
        }
        let mut field =
            |name: &str| -> Option<i64> { lines.next()?.strip_prefix(name)?.strip_prefix(' ')?.parse().ok() };
        let first_dirty_offset = field("first_dirty_offset").filter(|v| *v >= 0)?;
        let horizon = field("next_delete_horizon_ms")?;
        let compacted_below = field("compacted_below").filter(|v| *v >= 0)?;
        if lines.next().is_some() {
            return None;
        }
        Some(CleanerCheckpoint {
            first_dirty_offset,
            next_delete_horizon_ms: (horizon >= 0).then_some(horizon),
            compacted_below,
        })
    }

    /// A missing or unreadable checkpoint is `None`: the next pass treats the whole log as dirty.
    pub(crate) fn read(dir: &Path) -> Result<Option<CleanerCheckpoint>, LogError> {
        let path = dir.join(CHECKPOINT_FILE);
        match fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path, e)),
            Ok(meta) if meta.len() > CHECKPOINT_MAX_BYTES => return Ok(None),
            Ok(_) => {}
        }
        let bytes = fs::read(&path).map_err(|e| io_error(&path, e))?;
        let checkpoint = CleanerCheckpoint::decode(&bytes);
        if checkpoint.is_none() {
            tracing::warn!(path = %path.display(), "ignoring unreadable cleaner checkpoint; the whole log counts as dirty");
        }
        Ok(checkpoint)
    }

    pub(crate) fn write(&self, dir: &Path) -> Result<(), LogError> {
        write_file_atomically(&dir.join(CHECKPOINT_FILE), &self.encode())
    }
}

/// A 128-bit hash of a key: keys of any length take the same room in the map. Two SipHash
/// instances with random keys per map, so producers cannot aim for collisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct KeyHash(u64, u64);

/// The table hasher for [`KeyHash`]es, which are random already: fold them, don't rehash.
#[derive(Default)]
struct KeyHashHasher(u64);

impl Hasher for KeyHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = self.0.rotate_left(29) ^ v;
    }
}

/// Key → latest offset, for one cleaning pass: Kafka's `SkimpyOffsetMap`. Its table is sized
/// once from `log.cleaner.dedupe.buffer.size` and reused by every pass, so the cleaner's memory
/// is bounded whatever the logs hold.
pub struct OffsetMap {
    entries: HashMap<KeyHash, i64, BuildHasherDefault<KeyHashHasher>>,
    max_entries: usize,
    seeds: (RandomState, RandomState),
}

impl OffsetMap {
    /// A map whose table takes at most `dedupe_buffer_bytes` (entries and control bytes of a
    /// power-of-two table at most 7/8 full); allocated on first use.
    pub fn new(dedupe_buffer_bytes: usize) -> OffsetMap {
        let bucket_bytes = std::mem::size_of::<(KeyHash, i64)>() + 1;
        let fit = (dedupe_buffer_bytes / bucket_bytes).max(1);
        // The largest power of two at or below `fit`.
        let buckets = 1usize << (usize::BITS - 1 - fit.leading_zeros());
        let max_entries = if buckets >= 8 { buckets / 8 * 7 } else { buckets.saturating_sub(1).max(1) };
        OffsetMap { entries: HashMap::default(), max_entries, seeds: (RandomState::new(), RandomState::new()) }
    }

    /// How many distinct keys one pass can deduplicate.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn reset(&mut self) {
        self.entries.clear();
        if self.entries.capacity() < self.max_entries {
            self.entries.reserve(self.max_entries);
        }
    }

    fn hash(&self, key: &[u8]) -> KeyHash {
        let mut a = self.seeds.0.build_hasher();
        a.write(key);
        let mut b = self.seeds.1.build_hasher();
        b.write(key);
        KeyHash(a.finish(), b.finish())
    }

    fn put(&mut self, key: &[u8], offset: i64) {
        let hash = self.hash(key);
        self.entries.insert(hash, offset);
    }

    fn get(&self, key: &[u8]) -> Option<i64> {
        self.entries.get(&self.hash(key)).copied()
    }
}

/// One segment as the cleaner saw it when planning.
#[derive(Clone)]
struct SegmentRef {
    base_offset: i64,
    next_offset: i64,
    size_bytes: u64,
    file: Arc<File>,
    path: Arc<Path>,
    last_modified_ms: i64,
    rolling_base_ms: i64,
    /// Its aborted transactions (`.txnindex`), `None` when not known.
    aborted: Option<Vec<super::AbortedTxn>>,
}

/// What [`Log::plan_cleaning`] decided: a snapshot of the segments to read, to be cleaned by
/// [`clean`] without holding the log.
pub struct CleaningPlan {
    dir: PathBuf,
    config: LogConfig,
    /// From the first segment up to and including the first one that may not be cleaned.
    segments: Vec<SegmentRef>,
    first_dirty_offset: i64,
    /// The log's cleaner checkpoint when planned.
    previous: CleanerCheckpoint,
    /// The base offset of the first segment that may not be cleaned.
    cleanable_end: i64,
    /// The dirty ratio that made the log due.
    pub dirty_ratio: f64,
    /// Aborted transactions of the log, by producer id: `(first_offset, marker offset)`. Their
    /// records never enter the offset map (an aborted value must not shadow a committed one)
    /// and are removed, as Kafka's cleaner does; markers are always kept.
    pub aborted: HashMap<i64, Vec<(i64, i64)>>,
}

impl CleaningPlan {
    /// Whether `header` is a data batch of an aborted transaction.
    fn is_aborted(&self, header: &BatchHeader) -> bool {
        header.is_transactional()
            && !header.is_control()
            && self.aborted.get(&header.producer_id).is_some_and(|ranges| {
                ranges.iter().any(|&(first, last)| first <= header.base_offset && header.base_offset <= last)
            })
    }
}

/// A group of segments rewritten by [`clean`], ready for [`Log::swap_cleaned`].
pub struct CleanedSegment {
    segment: Segment,
    /// Base offsets and files of the segments it replaces, as planned.
    replaced: Vec<(i64, Arc<File>)>,
    next_base: i64,
}

/// The uncommitted files of the cleaned segment that will be `log_path`.
fn cleaned_paths(log_path: &Path) -> [PathBuf; 4] {
    [
        segment::with_suffix(log_path, CLEANED_SUFFIX),
        segment::with_suffix(&segment::index_path(log_path), CLEANED_SUFFIX),
        segment::with_suffix(&segment::time_index_path(log_path), CLEANED_SUFFIX),
        segment::with_suffix(&super::txn_index::txn_index_path(log_path), CLEANED_SUFFIX),
    ]
}

/// Removes the uncommitted files of the cleaned segment that would have been `log_path`.
fn discard(log_path: &Path) {
    for path in cleaned_paths(log_path) {
        let _ = fs::remove_file(path);
    }
}

/// What a cleaning pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CleanStats {
    /// Segments read (dirty ones twice: for the map and to rewrite them).
    pub segments_read: usize,
    /// Old segments replaced by cleaned ones.
    pub segments_replaced: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
    pub batches_removed: u64,
    /// Where the next pass starts building its map.
    pub first_dirty_offset: i64,
}

impl Log {
    /// Decides whether the log is due for cleaning (see the module docs) and snapshots what the
    /// pass needs. Cheap: no file is read. `high_watermark` bounds what may be cleaned.
    pub fn plan_cleaning(&self, now_ms: i64, high_watermark: i64) -> Option<CleaningPlan> {
        if !self.config.cleanup_policy.compact {
            return None;
        }
        let compaction = &self.config.compaction;
        let last = self.segments.len() - 1;
        // The active segment is never cleaned, nor anything from the first segment that
        // reaches past the high watermark or is younger than the lag.
        let uncleanable = self.segments[..last]
            .iter()
            .position(|s| {
                s.next_offset > high_watermark
                    || (compaction.min_compaction_lag_ms > 0
                        && !s.is_empty()
                        && now_ms.saturating_sub(s.retention_timestamp()) < compaction.min_compaction_lag_ms)
            })
            .unwrap_or(last);
        if uncleanable == 0 {
            return None;
        }
        let cleanable_end = self.segments[uncleanable].base_offset;
        let first_dirty_offset = self.cleaner.first_dirty_offset.clamp(self.segments[0].base_offset, cleanable_end);
        let (mut clean_bytes, mut dirty_bytes) = (0u64, 0u64);
        let mut first_dirty_segment = None;
        for s in &self.segments[..uncleanable] {
            if s.next_offset <= first_dirty_offset {
                clean_bytes += s.size_bytes;
            } else {
                dirty_bytes += s.size_bytes;
                first_dirty_segment.get_or_insert(s);
            }
        }
        let total = clean_bytes + dirty_bytes;
        let dirty_ratio = if total == 0 { 0.0 } else { dirty_bytes as f64 / total as f64 };
        let ratio_due = dirty_bytes > 0 && dirty_ratio >= compaction.min_cleanable_dirty_ratio;
        let lag_due = first_dirty_segment.is_some_and(|s| {
            dirty_bytes > 0 && now_ms.saturating_sub(s.rolling_base_ms) > compaction.max_compaction_lag_ms
        });
        let horizon_due = self.cleaner.next_delete_horizon_ms.is_some_and(|h| now_ms >= h);
        if !(ratio_due || lag_due || horizon_due) {
            return None;
        }
        let segments = self.segments[..=uncleanable]
            .iter()
            .map(|s| SegmentRef {
                base_offset: s.base_offset,
                next_offset: s.next_offset,
                size_bytes: s.size_bytes,
                file: Arc::clone(&s.file),
                path: Arc::clone(&s.path),
                last_modified_ms: s.last_modified_ms,
                rolling_base_ms: s.rolling_base_ms,
                aborted: s.txn_index_known.then(|| s.aborted.clone()),
            })
            .collect();
        Some(CleaningPlan {
            dir: self.dir.clone(),
            config: self.config,
            segments,
            first_dirty_offset,
            previous: self.cleaner,
            cleanable_end,
            dirty_ratio,
            aborted: HashMap::new(),
        })
    }

    /// Swaps a cleaned group of segments in, as the module docs describe. Returns `false` (and
    /// drops the cleaned files) when the log changed since planning so that the group no longer
    /// matches: retention or truncation removed or replaced one of its segments. The directory
    /// is not fsynced after the final renames: the caller does it without holding the log (a
    /// crash before then leaves the swap file or `.cleaned` indexes, which [`Log::open`]
    /// finishes or drops).
    pub fn swap_cleaned(&mut self, cleaned: CleanedSegment) -> Result<bool, LogError> {
        let base = cleaned.segment.base_offset;
        let n = cleaned.replaced.len();
        let start = self.segments.iter().position(|s| s.base_offset == base);
        let matches = start.is_some_and(|i| {
            i + n < self.segments.len()
                && self.segments[i + n].base_offset == cleaned.next_base
                && self.segments[i..i + n]
                    .iter()
                    .zip(&cleaned.replaced)
                    .all(|(s, (b, file))| s.base_offset == *b && Arc::ptr_eq(&s.file, file))
        });
        let (Some(start), true) = (start, matches) else {
            discard(&cleaned.segment.path);
            return Ok(false);
        };
        let [cleaned_log, cleaned_index, cleaned_time_index, cleaned_txn_index] = cleaned_paths(&cleaned.segment.path);
        let swap = self.dir.join(swap_name(base, cleaned.next_base));
        if let Err(e) = fs::rename(&cleaned_log, &swap) {
            discard(&cleaned.segment.path);
            return Err(io_error(&swap, e));
        }
        // The commit point: from here on the new segment wins, at open too.
        sync_dir(&self.dir)?;
        for (b, _) in &cleaned.replaced {
            let path = segment::log_path(&self.dir, *b);
            if *b == base {
                // Replaced by the rename below; only its stale indexes go now.
                self.segments[start].remove_index_files()?;
            } else {
                segment::remove_segment_files(&path)?;
            }
        }
        // The removals must be durable before the swap file takes the first one's name, or a
        // crash could leave the new segment beside old ones whose offsets it covers.
        sync_dir(&self.dir)?;
        let path = segment::log_path(&self.dir, base);
        fs::rename(&swap, &path).map_err(|e| io_error(&path, e))?;
        for (from, to) in
            [(cleaned_index, segment::index_path(&path)), (cleaned_time_index, segment::time_index_path(&path))]
        {
            fs::rename(&from, &to).map_err(|e| io_error(&to, e))?;
        }
        if cleaned.segment.txn_index_known {
            let to = super::txn_index::txn_index_path(&path);
            fs::rename(&cleaned_txn_index, &to).map_err(|e| io_error(&to, e))?;
        }
        let next_base = cleaned.next_base;
        self.pending_index_syncs.retain(|p| p.base_offset < base || p.base_offset >= next_base);
        self.segments.splice(start..start + n, [cleaned.segment]);
        Ok(true)
    }

    /// Records the outcome of a pass ([`clean`] has persisted it).
    pub fn cleaning_done(&mut self, checkpoint: CleanerCheckpoint) {
        self.cleaner = CleanerCheckpoint {
            first_dirty_offset: checkpoint.first_dirty_offset.min(self.log_end_offset()),
            compacted_below: checkpoint.compacted_below.max(self.cleaner.compacted_below),
            ..checkpoint
        };
    }

    /// One whole cleaning pass while holding the log (tests and tools; the broker runs the
    /// steps itself so that it holds the partition lock only to plan and swap).
    pub fn clean(
        &mut self,
        map: &mut OffsetMap,
        now_ms: i64,
        high_watermark: i64,
    ) -> Result<Option<CleanStats>, LogError> {
        let Some(plan) = self.plan_cleaning(now_ms, high_watermark) else {
            return Ok(None);
        };
        let never = AtomicBool::new(false);
        let mut swapped = Vec::new();
        let (stats, checkpoint) = clean(&plan, map, now_ms, &never, |cleaned| {
            swapped.push(cleaned);
            Ok(true)
        })?;
        for cleaned in swapped {
            self.swap_cleaned(cleaned)?;
        }
        sync_dir(&self.dir)?;
        self.cleaning_done(checkpoint);
        Ok(Some(stats))
    }
}

/// Reads the batches of one planned segment in order.
fn for_each_batch(
    segment: &SegmentRef,
    mut f: impl FnMut(u64, &BatchHeader, &[u8]) -> Result<bool, LogError>,
) -> Result<(), LogError> {
    let size = segment.size_bytes;
    let mut scanner = Scanner { file: &segment.file, path: &segment.path, size, buf: Vec::new(), start: 0 };
    let mut position = 0u64;
    while position < size {
        let corrupt = |reason: String| LogError::Corrupt { path: segment.path.to_path_buf(), position, reason };
        if size - position < BATCH_HEADER_BYTES as u64 {
            return Err(corrupt("a partial batch header".into()));
        }
        let header = BatchHeader::parse(scanner.bytes(position, BATCH_HEADER_BYTES, READ_CHUNK_BYTES)?)
            .map_err(|e| corrupt(e.to_string()))?;
        let total = header.total_bytes() as u64;
        if header.batch_length < (BATCH_HEADER_BYTES - record::BATCH_LOG_OVERHEAD) as i32 || total > size - position {
            return Err(corrupt(format!("batch length {} does not fit the segment", header.batch_length)));
        }
        let bytes = scanner.bytes(position, total as usize, READ_CHUNK_BYTES)?;
        if !f(position, &header, bytes)? {
            return Ok(());
        }
        position += total;
    }
    Ok(())
}

fn decode(segment: &SegmentRef, position: u64, batch: &[u8], out: &mut Vec<ConsumedRecord>) -> Result<(), LogError> {
    out.clear();
    record::decode_records(&Bytes::copy_from_slice(batch), MAX_DECOMPRESSED_BATCH_BYTES, out)
        .map(|_| ())
        .map_err(|e| LogError::Corrupt { path: segment.path.to_path_buf(), position, reason: e.to_string() })
}

fn cancelled(plan: &CleaningPlan) -> LogError {
    LogError::CleaningCancelled { dir: plan.dir.clone() }
}

/// Fills `map` from the dirty segments; returns the offset where it stopped (the cleanable end
/// unless the map filled up first).
fn build_offset_map(
    plan: &CleaningPlan,
    map: &mut OffsetMap,
    cancel: &AtomicBool,
    stats: &mut CleanStats,
) -> Result<i64, LogError> {
    map.reset();
    let mut map_end = plan.first_dirty_offset;
    let mut records = Vec::new();
    for segment in plan.segments.iter().filter(|s| s.next_offset > plan.first_dirty_offset) {
        if segment.base_offset >= plan.cleanable_end {
            return Ok(plan.cleanable_end);
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(cancelled(plan));
        }
        stats.segments_read += 1;
        stats.bytes_read += segment.size_bytes;
        let mut full = false;
        for_each_batch(segment, |position, header, bytes| {
            if header.last_offset() < plan.first_dirty_offset {
                return Ok(true);
            }
            if !header.is_control() && !plan.is_aborted(header) {
                if map.len() + header.records_count.max(0) as usize > map.max_entries() {
                    full = true;
                    return Ok(false);
                }
                decode(segment, position, bytes, &mut records)?;
                for r in &records {
                    if let Some(key) = &r.key {
                        map.put(key, r.offset);
                    }
                }
            }
            map_end = header.last_offset() + 1;
            Ok(true)
        })?;
        if full {
            return Ok(map_end);
        }
    }
    Ok(plan.cleanable_end)
}

/// Runs a cleaning pass over `plan` without holding the log: builds the offset map, rewrites
/// each group of segments and hands it to `swap` (which takes the log, calls
/// [`Log::swap_cleaned`] and returns its answer), fsyncs the directory after each swap, and
/// persists the cleaner checkpoint. Returns the stats and the checkpoint for
/// [`Log::cleaning_done`]. `cancel` stops the pass between batches.
pub fn clean(
    plan: &CleaningPlan,
    map: &mut OffsetMap,
    now_ms: i64,
    cancel: &AtomicBool,
    mut swap: impl FnMut(CleanedSegment) -> Result<bool, LogError>,
) -> Result<(CleanStats, CleanerCheckpoint), LogError> {
    let mut stats = CleanStats::default();
    let map_end = build_offset_map(plan, map, cancel, &mut stats)?;
    if map_end == plan.first_dirty_offset && plan.first_dirty_offset < plan.cleanable_end {
        tracing::warn!(
            dir = %plan.dir.display(),
            max_keys = map.max_entries(),
            "log.cleaner.dedupe.buffer.size is too small for one batch of this log; not cleaning it"
        );
        return Ok((stats, plan.previous));
    }
    // Groups of consecutive segments below `map_end` that together fit one segment.
    let max_group_bytes = plan.config.effective_segment_bytes();
    let to_clean = plan.segments.iter().take_while(|s| s.base_offset < map_end).count();
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    for i in 0..to_clean {
        let s = &plan.segments[i];
        match groups.last_mut() {
            Some(g)
                if plan.segments[g.clone()].iter().map(|s| s.size_bytes).sum::<u64>() + s.size_bytes
                    <= max_group_bytes
                    && s.next_offset - plan.segments[g.start].base_offset <= MAX_SEGMENT_OFFSETS =>
            {
                g.end = i + 1
            }
            _ => groups.push(i..i + 1),
        }
    }
    // Recovery must know where gaps are legitimate before any swap can leave one.
    let compacted_below = groups.last().map_or(0, |g| plan.segments[g.end].base_offset);
    if compacted_below > plan.previous.compacted_below {
        CleanerCheckpoint { compacted_below, ..plan.previous }.write(&plan.dir)?;
    }
    let compacted_below = compacted_below.max(plan.previous.compacted_below);
    let mut next_delete_horizon_ms: Option<i64> = None;
    let mut all_swapped = true;
    for group in groups {
        let next_base = plan.segments[group.end].base_offset;
        let cleaned = clean_group(
            plan,
            &plan.segments[group.clone()],
            next_base,
            map,
            map_end,
            now_ms,
            cancel,
            &mut stats,
            &mut next_delete_horizon_ms,
        )?;
        if let Some(cleaned) = cleaned {
            let replaced = cleaned.replaced.len();
            if swap(cleaned)? {
                stats.segments_replaced += replaced;
                sync_dir(&plan.dir)?;
            } else {
                all_swapped = false;
            }
        }
    }
    // A group the log no longer matched was not cleaned: the next pass starts over.
    let checkpoint = if all_swapped {
        CleanerCheckpoint { first_dirty_offset: map_end, next_delete_horizon_ms, compacted_below }
    } else {
        CleanerCheckpoint { compacted_below, ..plan.previous }
    };
    checkpoint.write(&plan.dir)?;
    stats.first_dirty_offset = checkpoint.first_dirty_offset;
    Ok((stats, checkpoint))
}

/// Output of one group: batches buffered and written in chunks, indexed as they go.
struct Output {
    segment: Segment,
    buf: Vec<u8>,
    index_interval_bytes: u32,
}

impl Output {
    fn push(&mut self, batch: &[u8], header: &BatchHeader) -> Result<(), LogError> {
        let position = self.segment.size_bytes + self.buf.len() as u64;
        self.segment.index_batch(position, header, self.index_interval_bytes);
        self.buf.extend_from_slice(batch);
        if self.buf.len() >= WRITE_CHUNK_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), LogError> {
        let segment = &mut self.segment;
        let path = segment::with_suffix(&segment.path, CLEANED_SUFFIX);
        segment.file.write_all_at(&self.buf, segment.size_bytes).map_err(|e| io_error(&path, e))?;
        segment.size_bytes += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

/// Rewrites one group into `.cleaned` files; `None` when a single segment came out unchanged.
#[expect(clippy::too_many_arguments, reason = "one pass's state, threaded through a private helper")]
fn clean_group(
    plan: &CleaningPlan,
    group: &[SegmentRef],
    next_base: i64,
    map: &OffsetMap,
    map_end: i64,
    now_ms: i64,
    cancel: &AtomicBool,
    stats: &mut CleanStats,
    next_delete_horizon_ms: &mut Option<i64>,
) -> Result<Option<CleanedSegment>, LogError> {
    let base = group[0].base_offset;
    let path = segment::log_path(&plan.dir, base);
    let cleaned_path = segment::with_suffix(&path, CLEANED_SUFFIX);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&cleaned_path)
        .map_err(|e| io_error(&cleaned_path, e))?;
    let mut segment = Segment::empty(path, file, base, now_ms);
    segment.last_modified_ms = group.iter().map(|s| s.last_modified_ms).max().unwrap_or(now_ms);
    segment.rolling_base_ms = group[0].rolling_base_ms;
    // Markers are kept as they are, so the group's aborted transactions stay where they were;
    // the cleaned segment's `.txnindex` is theirs, in order.
    segment.txn_index_known = group.iter().all(|s| s.aborted.is_some());
    if segment.txn_index_known {
        segment.aborted = group.iter().flat_map(|s| s.aborted.iter().flatten().copied()).collect();
    }
    let mut output = Output { segment, buf: Vec::new(), index_interval_bytes: plan.config.index_interval_bytes };
    let result = (|| -> Result<bool, LogError> {
        let mut changed = group.len() > 1;
        let mut records = Vec::new();
        for segment in group {
            stats.segments_read += 1;
            stats.bytes_read += segment.size_bytes;
            for_each_batch(segment, |position, header, bytes| {
                if cancel.load(Ordering::Relaxed) {
                    return Err(cancelled(plan));
                }
                if header.base_offset >= map_end || header.is_control() {
                    note_horizon(header, next_delete_horizon_ms);
                    output.push(bytes, header)?;
                    return Ok(true);
                }
                if plan.is_aborted(header) {
                    stats.records_removed += header.records_count.max(0) as u64;
                    stats.batches_removed += 1;
                    changed = true;
                    return Ok(true);
                }
                decode(segment, position, bytes, &mut records)?;
                let horizon = header.delete_horizon_ms();
                let before = records.len();
                let mut tombstones_kept = false;
                records.retain(|r| {
                    let Some(key) = &r.key else {
                        return true;
                    };
                    if map.get(key).is_some_and(|latest| latest > r.offset) {
                        return false;
                    }
                    if r.value.is_none() {
                        if horizon.is_some_and(|h| now_ms >= h) {
                            return false;
                        }
                        tombstones_kept = true;
                    }
                    true
                });
                let removed = before - records.len();
                stats.records_removed += removed as u64;
                if records.is_empty() {
                    stats.batches_removed += 1;
                    changed = true;
                    return Ok(true);
                }
                let (attributes, base_timestamp) = match (tombstones_kept, horizon) {
                    (true, Some(h)) => (header.attributes, h),
                    (true, None) => (
                        header.attributes | ATTR_DELETE_HORIZON,
                        now_ms.saturating_add(plan.config.compaction.delete_retention_ms),
                    ),
                    // Without tombstones the horizon means nothing; the base timestamp goes
                    // back to the first record's (the original was overwritten by it).
                    (false, Some(_)) => (
                        header.attributes & !ATTR_DELETE_HORIZON,
                        records.iter().map(|r| r.timestamp_ms).min().unwrap_or(header.max_timestamp),
                    ),
                    (false, None) => (header.attributes, header.base_timestamp),
                };
                if removed == 0 && attributes == header.attributes {
                    note_horizon(header, next_delete_horizon_ms);
                    output.push(bytes, header)?;
                    return Ok(true);
                }
                changed = true;
                let rebuilt = record::rebuild_batch(header, &records, attributes, base_timestamp).map_err(|e| {
                    LogError::Corrupt { path: segment.path.to_path_buf(), position, reason: e.to_string() }
                })?;
                let new_header = BatchHeader::parse(&rebuilt).map_err(|e| LogError::Corrupt {
                    path: segment.path.to_path_buf(),
                    position,
                    reason: e.to_string(),
                })?;
                note_horizon(&new_header, next_delete_horizon_ms);
                output.push(&rebuilt, &new_header)?;
                Ok(true)
            })?;
        }
        Ok(changed)
    })();
    let finish = result.and_then(|changed| {
        if !changed {
            return Ok(false);
        }
        output.flush()?;
        let segment = &mut output.segment;
        segment.file.sync_data().map_err(|e| io_error(&cleaned_path, e))?;
        for (path, file) in segment.write_indexes_with_suffix(CLEANED_SUFFIX)? {
            file.sync_data().map_err(|e| io_error(&path, e))?;
        }
        // A closed segment covers offsets up to the next one's base.
        segment.next_offset = next_base;
        stats.bytes_written += segment.size_bytes;
        Ok(true)
    });
    match finish {
        Ok(true) => Ok(Some(CleanedSegment {
            segment: output.segment,
            replaced: group.iter().map(|s| (s.base_offset, Arc::clone(&s.file))).collect(),
            next_base,
        })),
        Ok(false) => {
            discard(&output.segment.path);
            Ok(None)
        }
        Err(e) => {
            discard(&output.segment.path);
            Err(e)
        }
    }
}

fn note_horizon(header: &BatchHeader, next: &mut Option<i64>) {
    if let Some(h) = header.delete_horizon_ms() {
        *next = Some(next.map_or(h, |n| n.min(h)));
    }
}

#[cfg(test)]
#[path = "cleaner_tests.rs"]
mod tests;

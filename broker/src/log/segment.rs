//! One segment: a `{base_offset:020}.log` file of raw v2 batches, its in-memory offset and
//! time indexes, and the recovery scan that checks the file and rebuilds them.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use spate_client::protocol::record::{
    check_stored_counts, field, validate_stored_batch, BatchHeader, BATCH_HEADER_BYTES, BATCH_LOG_OVERHEAD,
};

use super::checkpoint::io_error;
use super::index::{OffsetIndex, TimeIndex, TIME_ENTRY_BYTES};
use super::txn_index::{self, txn_index_path, AbortedTxn};
use super::LogError;

/// Recovery reads unverified data in chunks of this size.
pub(crate) const READ_CHUNK_BYTES: usize = 1 << 20;
/// Batches up to this size are checked in one buffer with `validate_stored_batch`; larger ones are
/// checked in chunks, so a corrupt length field never makes recovery allocate more than this.
const MAX_BUFFERED_BATCH_BYTES: usize = 8 << 20;
/// Index positions are `u32`, so a segment never grows past this.
pub(crate) const MAX_SEGMENT_BYTES: u64 = u32::MAX as u64;
/// Relative offsets are `u32`; like Kafka, a segment spans fewer than `i32::MAX` offsets.
pub(crate) const MAX_SEGMENT_OFFSETS: i64 = i32::MAX as i64;
/// The smallest record in a batch (see `spate_client::protocol::record`), for the sanity check
/// of a record count against the bytes present.
const MIN_RECORD_BYTES: u64 = 7;

pub(crate) fn log_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}

pub(crate) fn index_path(log_path: &Path) -> PathBuf {
    log_path.with_extension("index")
}

pub(crate) fn time_index_path(log_path: &Path) -> PathBuf {
    log_path.with_extension("timeindex")
}

/// `path` with `suffix` appended to its file name (`x.log` → `x.log.cleaned`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Parses the base offset out of a segment file stem (20 decimal digits).
pub(crate) fn parse_base_offset(stem: &str) -> Option<i64> {
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Checks that `header` can be a v2 batch lying within the `remaining` bytes after it.
fn check_structure(header: &BatchHeader, remaining: u64) -> Result<(), String> {
    if header.magic != 2 {
        return Err(format!("magic {} is not 2", header.magic));
    }
    if (header.batch_length as i64) < (BATCH_HEADER_BYTES - BATCH_LOG_OVERHEAD) as i64 {
        return Err(format!("batch length {} is shorter than a header", header.batch_length));
    }
    if header.total_bytes() as u64 > remaining {
        return Err(format!("batch length {} runs past the {remaining} bytes left in the file", header.batch_length));
    }
    if header.last_offset_delta < 0 {
        return Err(format!("last offset delta {} is negative", header.last_offset_delta));
    }
    Ok(())
}

/// Reads and structurally checks the header at `position` of a file of `size` bytes. The outer
/// error is I/O; the inner one says why the bytes are not a batch.
pub(crate) fn read_header(
    file: &File,
    path: &Path,
    position: u64,
    size: u64,
) -> Result<Result<BatchHeader, String>, LogError> {
    let remaining = size.saturating_sub(position);
    if remaining < BATCH_HEADER_BYTES as u64 {
        return Ok(Err(format!("{remaining} bytes are too few for a batch header")));
    }
    let mut bytes = [0u8; BATCH_HEADER_BYTES];
    file.read_exact_at(&mut bytes, position).map_err(|e| io_error(path, e))?;
    let header = match BatchHeader::parse(&bytes) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e.to_string())),
    };
    Ok(check_structure(&header, remaining).map(|()| header))
}

/// A file to fsync later, with its path for error messages.
pub(crate) type SyncFile = (Arc<Path>, Arc<File>);

/// Opens a segment file without access-time updates (`O_NOATIME`). Consumers read the active
/// segment right behind the appends, and under `relatime` (the usual mount option) a read of a
/// file modified since its last access updates its atime: an inode write per fetch, measured as
/// kernel time in every fetch on the broker's hot path. The flag needs the broker to own the
/// file; for one it does not own (a data directory copied by another user) it opens plainly.
fn open_noatime(options: &OpenOptions, path: &Path) -> Result<File, LogError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut noatime = options.clone();
    noatime.custom_flags(libc::O_NOATIME);
    match noatime.open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => options.open(path).map_err(|e| io_error(path, e)),
        other => other.map_err(|e| io_error(path, e)),
    }
}

/// Where recovery cut a segment, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cut {
    pub position: u64,
    pub bytes_removed: u64,
    pub reason: String,
}

pub(crate) struct Segment {
    pub base_offset: i64,
    /// One past the last offset the segment covers: for the active segment the log end offset
    /// (the base offset when empty); for a closed one the next segment's base offset, which
    /// after compaction may lie past the segment's last batch.
    pub next_offset: i64,
    pub size_bytes: u64,
    pub file: Arc<File>,
    pub path: Arc<Path>,
    offset_index: OffsetIndex,
    time_index: TimeIndex,
    bytes_since_index_entry: u64,
    /// The largest batch `max_timestamp`, `i64::MIN` while the segment is empty.
    pub max_timestamp: i64,
    /// Base offset of the first batch carrying `max_timestamp`.
    pub offset_of_max_timestamp: i64,
    /// `segment.ms` counts from here: the roll time, or after a restart the first batch's
    /// timestamp (capped at now), as Kafka does.
    pub rolling_base_ms: i64,
    /// When the segment was last appended to (or opened); retention falls back to it for
    /// segments whose batches carry no timestamps.
    pub last_modified_ms: i64,
    /// The indexes were loaded from their files rather than rebuilt by a scan.
    pub indexes_from_disk: bool,
    /// The aborted transactions whose ABORT marker is in this segment, in marker order (see
    /// [`txn_index`]).
    pub aborted: Vec<AbortedTxn>,
    /// `aborted` is complete: loaded from a trusted `.txnindex`, or kept since the segment was
    /// created. False for a segment recovery scanned, until the partition replays it.
    pub txn_index_known: bool,
}

impl Segment {
    pub fn empty(path: PathBuf, file: File, base_offset: i64, now_ms: i64) -> Segment {
        Segment {
            base_offset,
            next_offset: base_offset,
            size_bytes: 0,
            file: Arc::new(file),
            path: path.into(),
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            bytes_since_index_entry: 0,
            max_timestamp: i64::MIN,
            offset_of_max_timestamp: base_offset,
            rolling_base_ms: now_ms,
            last_modified_ms: now_ms,
            indexes_from_disk: false,
            aborted: Vec::new(),
            txn_index_known: true,
        }
    }

    /// Creates a new, empty segment file.
    pub fn create(dir: &Path, base_offset: i64, now_ms: i64) -> Result<Segment, LogError> {
        let path = log_path(dir, base_offset);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create_new(true);
        let file = open_noatime(&options, &path)?;
        Ok(Segment::empty(path, file, base_offset, now_ms))
    }

    /// Opens an existing segment. A segment wholly below `recovery_point` (`next_base`, the
    /// next segment's base offset, at or below it; or the last segment, `next_base` `None`,
    /// ending at or below it) is trusted: its persisted indexes are used when they check out.
    /// Otherwise, or when they do not, the file is scanned from the start: batches below the
    /// recovery point by their headers, the rest fully (CRC included). The file is truncated
    /// at the first batch that fails; the returned [`Cut`] says where and why. Batches may
    /// hold fewer records than their offset span, and those starting below `gaps_below` (where
    /// compaction may have dropped whole batches) may leave an offset gap before them; all
    /// must stay below `next_base`. `next_offset` is left at the end of the last batch; the
    /// caller extends it to `next_base`.
    pub fn open(
        dir: &Path,
        base_offset: i64,
        next_base: Option<i64>,
        recovery_point: i64,
        gaps_below: i64,
        index_interval_bytes: u32,
        now_ms: i64,
    ) -> Result<(Segment, Option<Cut>), LogError> {
        let path = log_path(dir, base_offset);
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        let file = open_noatime(&options, &path)?;
        let size = file.metadata().map_err(|e| io_error(&path, e))?.len();
        let mut segment = Segment::empty(path, file, base_offset, now_ms);
        segment.txn_index_known = false;
        if size > MAX_SEGMENT_BYTES {
            return Err(segment.corrupt(MAX_SEGMENT_BYTES, format!("segment of {size} bytes exceeds 4 GiB")));
        }
        if next_base.is_none_or(|n| n <= recovery_point)
            && segment.load_indexes(size, next_base, recovery_point, gaps_below)?
        {
            return Ok((segment, None));
        }
        let cut = segment.scan(size, next_base, recovery_point, gaps_below, index_interval_bytes)?;
        Ok((segment, cut))
    }

    /// Loads the persisted indexes of a trusted segment and checks them against the file:
    /// well-formed, inside the file, and the batches after the last offset-index entry chain
    /// up to exactly the end of the file at the expected offset. Returns whether it worked.
    fn load_indexes(
        &mut self,
        size: u64,
        next_base: Option<i64>,
        recovery_point: i64,
        gaps_below: i64,
    ) -> Result<bool, LogError> {
        // Each batch adds at most one entry to each index.
        let max_index_bytes = (size / BATCH_HEADER_BYTES as u64 + 1) * TIME_ENTRY_BYTES as u64;
        let Some(offset_bytes) = read_index_file(&index_path(&self.path), max_index_bytes)? else {
            return Ok(false);
        };
        let Some(time_bytes) = read_index_file(&time_index_path(&self.path), max_index_bytes)? else {
            return Ok(false);
        };
        let Some(offset_index) = OffsetIndex::decode(&offset_bytes, size) else {
            return Ok(false);
        };
        let (tail_start, mut next_offset) = offset_index
            .last()
            .map_or((0, self.base_offset), |e| (e.position as u64, self.base_offset + e.relative_offset as i64));
        let mut position = tail_start;
        while position < size {
            let Ok(header) = read_header(&self.file, &self.path, position, size)? else {
                return Ok(false);
            };
            if header.base_offset < next_offset
                || (header.base_offset > next_offset && header.base_offset >= gaps_below)
            {
                return Ok(false);
            }
            next_offset = header.last_offset() + 1;
            position += header.total_bytes() as u64;
        }
        if next_base.is_some_and(|n| n < next_offset)
            || next_offset > recovery_point
            || next_offset - self.base_offset > MAX_SEGMENT_OFFSETS + 1
        {
            return Ok(false);
        }
        let Some(time_index) = TimeIndex::decode(&time_bytes, (next_offset - self.base_offset) as u64) else {
            return Ok(false);
        };
        if time_index.is_empty() != (size == 0) {
            return Ok(false);
        }
        if size > 0 {
            let Ok(first) = read_header(&self.file, &self.path, 0, size)? else {
                return Ok(false);
            };
            self.note_first_batch(&first);
        }
        if let Some(last) = time_index.last() {
            self.max_timestamp = last.timestamp;
            self.offset_of_max_timestamp = self.base_offset + last.relative_offset as i64;
        }
        self.offset_index = offset_index;
        self.time_index = time_index;
        self.bytes_since_index_entry = size - tail_start;
        self.size_bytes = size;
        self.next_offset = next_offset;
        self.indexes_from_disk = true;
        // A missing or bad `.txnindex` leaves the other indexes trusted; only the aborted
        // transactions are then rebuilt (by the partition, which can read the markers).
        let max_txn_bytes =
            (size / BATCH_HEADER_BYTES as u64 + 1) * txn_index::ENTRY_BYTES as u64 + txn_index::HEADER_BYTES as u64;
        let last_offset_bound = next_base.unwrap_or(next_offset);
        if let Some(bytes) = read_index_file(&txn_index_path(&self.path), max_txn_bytes)? {
            if let Some(aborted) = txn_index::decode(&bytes, self.base_offset, last_offset_bound) {
                self.aborted = aborted;
                self.txn_index_known = true;
            }
        }
        Ok(true)
    }

    /// Scans the whole file, rebuilding the indexes; see [`Segment::open`].
    fn scan(
        &mut self,
        size: u64,
        next_base: Option<i64>,
        recovery_point: i64,
        gaps_below: i64,
        index_interval_bytes: u32,
    ) -> Result<Option<Cut>, LogError> {
        let file = Arc::clone(&self.file);
        let path = Arc::clone(&self.path);
        let mut scanner = Scanner { file: &file, path: &path, size, buf: Vec::new(), start: 0 };
        let mut position = 0u64;
        let reason = loop {
            if position == size {
                break None;
            }
            let remaining = size - position;
            if remaining < BATCH_HEADER_BYTES as u64 {
                break Some(format!("{remaining} bytes at the end are too few for a batch header"));
            }
            let verify = self.next_offset >= recovery_point;
            let readahead = if verify { READ_CHUNK_BYTES } else { BATCH_HEADER_BYTES };
            let header = match BatchHeader::parse(scanner.bytes(position, BATCH_HEADER_BYTES, readahead)?) {
                Ok(header) => header,
                Err(e) => break Some(e.to_string()),
            };
            if let Err(reason) = check_structure(&header, remaining) {
                break Some(reason);
            }
            // Compaction leaves gaps between batches (below `gaps_below`), never overlaps.
            if header.base_offset < self.next_offset
                || (header.base_offset > self.next_offset && header.base_offset >= gaps_below)
            {
                break Some(format!(
                    "batch has base offset {} where at least {} was expected",
                    header.base_offset, self.next_offset
                ));
            }
            if next_base.is_some_and(|n| header.last_offset() >= n) {
                break Some(format!("last offset {} reaches the next segment's base offset", header.last_offset()));
            }
            if header.last_offset() - self.base_offset > MAX_SEGMENT_OFFSETS {
                break Some(format!("last offset {} is too far from the segment base", header.last_offset()));
            }
            if header.last_offset() >= recovery_point {
                if let Err(reason) = verify_batch(&mut scanner, position, &header)? {
                    break Some(reason);
                }
            }
            if position == 0 {
                self.note_first_batch(&header);
            }
            self.index_batch(position, &header, index_interval_bytes);
            position += header.total_bytes() as u64;
        };
        self.size_bytes = position;
        let Some(reason) = reason else {
            return Ok(None);
        };
        self.file.set_len(position).map_err(|e| io_error(&self.path, e))?;
        Ok(Some(Cut { position, bytes_removed: size - position, reason }))
    }

    fn note_first_batch(&mut self, first: &BatchHeader) {
        if first.max_timestamp >= 0 {
            self.rolling_base_ms = first.max_timestamp.min(self.rolling_base_ms);
        }
    }

    /// Accounts for a batch written at `position` (its header carries the assigned offsets):
    /// next offset, largest timestamp, and an index entry every `index_interval_bytes`.
    pub fn index_batch(&mut self, position: u64, header: &BatchHeader, index_interval_bytes: u32) {
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            self.offset_of_max_timestamp = header.base_offset;
        }
        if self.bytes_since_index_entry >= index_interval_bytes as u64 {
            let relative = (header.base_offset - self.base_offset) as u32;
            self.offset_index.push(relative, position as u32);
            if self.max_timestamp != i64::MIN {
                let relative_max = (self.offset_of_max_timestamp - self.base_offset) as u32;
                self.time_index.push_if_newer(self.max_timestamp, relative_max);
            }
            self.bytes_since_index_entry = 0;
        }
        self.bytes_since_index_entry += header.total_bytes() as u64;
        self.next_offset = header.last_offset() + 1;
    }

    pub fn is_empty(&self) -> bool {
        self.size_bytes == 0
    }

    /// The timestamp retention.ms is measured against.
    pub fn retention_timestamp(&self) -> i64 {
        if self.max_timestamp >= 0 {
            self.max_timestamp
        } else {
            self.last_modified_ms
        }
    }

    pub fn corrupt(&self, position: u64, reason: impl Into<String>) -> LogError {
        LogError::Corrupt { path: self.path.to_path_buf(), position, reason: reason.into() }
    }

    pub fn header_at(&self, position: u64) -> Result<BatchHeader, LogError> {
        read_header(&self.file, &self.path, position, self.size_bytes)?.map_err(|reason| self.corrupt(position, reason))
    }

    /// The position and header of the batch holding `offset`, or of the first batch after it
    /// when `offset` falls in a gap that compaction left: the nearest offset-index entry, then
    /// a short walk. `None` when no batch of the segment ends at or after `offset`.
    pub fn find_batch(&self, offset: i64) -> Result<Option<(u64, BatchHeader)>, LogError> {
        let relative = (offset - self.base_offset).clamp(0, u32::MAX as i64) as u32;
        let mut position = self.offset_index.floor(relative).map_or(0, |e| e.position as u64);
        while position < self.size_bytes {
            let header = self.header_at(position)?;
            if header.last_offset() >= offset {
                return Ok(Some((position, header)));
            }
            position += header.total_bytes() as u64;
        }
        Ok(None)
    }

    /// [`Segment::find_batch`] for an offset that a batch must cover (one taken from an index).
    pub fn batch_holding(&self, offset: i64) -> Result<(u64, BatchHeader), LogError> {
        self.find_batch(offset)?
            .ok_or_else(|| self.corrupt(self.size_bytes, format!("offset {offset} is not in the segment")))
    }

    /// Where a read that starts with the batch `first` at `start` ends: whole batches up to
    /// `max_bytes` in total (the first one always, even if larger: KIP-74), none whose base
    /// offset reaches `upper_bound`; with the offset of the batch after that end (the
    /// segment's next offset at its end), which bounds what the read covers.
    pub fn read_end(
        &self,
        start: u64,
        first: &BatchHeader,
        max_bytes: usize,
        upper_bound: i64,
    ) -> Result<(u64, i64), LogError> {
        let limit = start.saturating_add(max_bytes as u64).min(self.size_bytes);
        let mut position = start + first.total_bytes() as u64;
        // Batches before an index entry that is itself within both bounds all fit: skip them.
        let relative_bound = (upper_bound - self.base_offset).clamp(0, u32::MAX as i64) as u32;
        if let Some(entry) = self.offset_index.floor_within(limit as u32, relative_bound) {
            position = position.max(entry.position as u64);
        }
        while position < limit {
            let header = self.header_at(position)?;
            let end = position + header.total_bytes() as u64;
            if header.base_offset >= upper_bound || end > limit {
                return Ok((position, header.base_offset));
            }
            position = end;
        }
        // Stopped at a batch boundary: the next batch's offset, or the segment's end.
        let next_offset =
            if position < self.size_bytes { self.header_at(position)?.base_offset } else { self.next_offset };
        Ok((position, next_offset))
    }

    /// The time-index hint for a timestamp search: a position before which every record is
    /// older than `timestamp`.
    pub fn search_start(&self, timestamp: i64) -> Result<u64, LogError> {
        match self.time_index.last_before(timestamp) {
            Some(entry) => Ok(self.batch_holding(self.base_offset + entry.relative_offset as i64)?.0),
            None => Ok(0),
        }
    }

    /// Writes both indexes to their files (without fsync: see `Log::flush_target`), first
    /// recording the segment's largest timestamp so the time index's last entry carries it.
    /// Returns the written files so the caller can fsync them later.
    pub fn write_indexes(&mut self) -> Result<Vec<SyncFile>, LogError> {
        self.write_indexes_with_suffix("")
    }

    /// [`Segment::write_indexes`] to the index paths with `suffix` appended (compaction writes
    /// `.cleaned` files and renames them when it swaps the segment in). The `.txnindex` is
    /// written only when its entries are known; otherwise a stale one is removed.
    pub fn write_indexes_with_suffix(&mut self, suffix: &str) -> Result<Vec<SyncFile>, LogError> {
        if self.max_timestamp != i64::MIN {
            let relative_max = (self.offset_of_max_timestamp - self.base_offset) as u32;
            self.time_index.push_if_newer(self.max_timestamp, relative_max);
        }
        let offsets = write_index_file(with_suffix(&index_path(&self.path), suffix), self.offset_index.encode())?;
        let times = write_index_file(with_suffix(&time_index_path(&self.path), suffix), self.time_index.encode())?;
        let txn_path = with_suffix(&txn_index_path(&self.path), suffix);
        if !self.txn_index_known {
            remove_if_present(&txn_path)?;
            return Ok(vec![offsets, times]);
        }
        let txns = write_index_file(txn_path, txn_index::encode(&self.aborted))?;
        Ok(vec![offsets, times, txns])
    }

    /// Writes (and fsyncs) the `.txnindex` of a closed segment whose entries became known after
    /// its other indexes were written (recovery replay). The caller fsyncs the directory.
    pub fn persist_txn_index(&self) -> Result<(), LogError> {
        let (path, file) = write_index_file(txn_index_path(&self.path), txn_index::encode(&self.aborted))?;
        file.sync_data().map_err(|e| io_error(&path, e))
    }

    /// Removes the persisted indexes, which go stale once the segment changes. Returns whether
    /// there were any (the caller then fsyncs the directory).
    pub fn remove_index_files(&self) -> Result<bool, LogError> {
        let mut removed = false;
        for path in [index_path(&self.path), time_index_path(&self.path), txn_index_path(&self.path)] {
            removed |= remove_if_present(&path)?;
        }
        Ok(removed)
    }

    /// Removes the segment's files (its open handle stays readable for in-flight reads).
    pub fn delete_files(&self) -> Result<(), LogError> {
        remove_segment_files(&self.path)
    }

    /// Cuts the segment at `position` (a batch boundary) and rebuilds its in-memory state by
    /// walking the remaining batch headers.
    pub fn truncate(&mut self, position: u64, index_interval_bytes: u32) -> Result<(), LogError> {
        self.file.set_len(position).map_err(|e| io_error(&self.path, e))?;
        self.size_bytes = position;
        self.offset_index = OffsetIndex::default();
        self.time_index = TimeIndex::default();
        self.bytes_since_index_entry = 0;
        self.max_timestamp = i64::MIN;
        self.offset_of_max_timestamp = self.base_offset;
        self.next_offset = self.base_offset;
        let mut at = 0;
        while at < position {
            let header = self.header_at(at)?;
            self.index_batch(at, &header, index_interval_bytes);
            at += header.total_bytes() as u64;
        }
        let end = self.next_offset;
        self.aborted.retain(|a| a.last_offset < end);
        Ok(())
    }

    /// Positions of the batches from `start` to the end of the segment, with their headers.
    pub fn headers_from(&self, start: u64, out: &mut Vec<BatchHeader>) -> Result<(), LogError> {
        let mut position = start;
        while position < self.size_bytes {
            let header = self.header_at(position)?;
            position += header.total_bytes() as u64;
            out.push(header);
        }
        Ok(())
    }
}

/// Removes a segment's log and index files; missing files are fine.
pub(crate) fn remove_segment_files(log_path: &Path) -> Result<(), LogError> {
    for path in [log_path.to_path_buf(), index_path(log_path), time_index_path(log_path), txn_index_path(log_path)] {
        remove_if_present(&path)?;
    }
    Ok(())
}

/// Writes an index file whole (created or truncated), not synced: the caller syncs it.
fn write_index_file(path: PathBuf, bytes: Vec<u8>) -> Result<SyncFile, LogError> {
    let mut file =
        OpenOptions::new().write(true).create(true).truncate(true).open(&path).map_err(|e| io_error(&path, e))?;
    io::Write::write_all(&mut file, &bytes).map_err(|e| io_error(&path, e))?;
    Ok((path.into(), Arc::new(file)))
}

/// Removes `path`; returns whether it was there.
fn remove_if_present(path: &Path) -> Result<bool, LogError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(path, e)),
    }
}

fn read_index_file(path: &Path, max_bytes: u64) -> Result<Option<Vec<u8>>, LogError> {
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, e)),
        Ok(meta) if meta.len() > max_bytes => Ok(None),
        Ok(_) => fs::read(path).map(Some).map_err(|e| io_error(path, e)),
    }
}

/// Sequential reads of one file through a reused buffer.
pub(crate) struct Scanner<'a> {
    pub file: &'a File,
    pub path: &'a Path,
    pub size: u64,
    pub buf: Vec<u8>,
    /// File position of `buf[0]`.
    pub start: u64,
}

impl Scanner<'_> {
    /// `len` bytes at `position` (the caller checked they are in the file), reading at least
    /// `readahead` bytes when the buffer does not hold them.
    pub fn bytes(&mut self, position: u64, len: usize, readahead: usize) -> Result<&[u8], LogError> {
        let end = position + len as u64;
        if position < self.start || end > self.start + self.buf.len() as u64 {
            let want = (readahead.max(len) as u64).min(self.size.saturating_sub(position)).max(len as u64);
            self.buf.resize(want as usize, 0);
            self.file.read_exact_at(&mut self.buf, position).map_err(|e| io_error(self.path, e))?;
            self.start = position;
        }
        let from = (position - self.start) as usize;
        Ok(&self.buf[from..from + len])
    }
}

/// Full check of the batch at `position`: `validate_stored_batch` when it fits the buffer, the same
/// checks in chunks otherwise. The outer error is I/O; the inner one says what is wrong.
fn verify_batch(
    scanner: &mut Scanner<'_>,
    position: u64,
    header: &BatchHeader,
) -> Result<Result<(), String>, LogError> {
    let total = header.total_bytes();
    if total <= MAX_BUFFERED_BATCH_BYTES {
        let bytes = scanner.bytes(position, total, READ_CHUNK_BYTES)?;
        return Ok(validate_stored_batch(bytes, position as usize).map(|_| ()).map_err(|e| e.to_string()));
    }
    if let Err(e) = header.compression() {
        return Ok(Err(e.to_string()));
    }
    if let Err(reason) = check_stored_counts(header) {
        return Ok(Err(reason));
    }
    let body = (total - BATCH_HEADER_BYTES) as u64;
    if header.attributes & 0x07 == 0 && header.records_count as u64 > body / MIN_RECORD_BYTES {
        return Ok(Err(format!("{} records cannot fit in {body} bytes", header.records_count)));
    }
    let end = position + total as u64;
    let mut at = position + field::ATTRIBUTES as u64;
    let mut crc = 0;
    while at < end {
        let n = (end - at).min(READ_CHUNK_BYTES as u64) as usize;
        crc = crc32c::crc32c_append(crc, scanner.bytes(at, n, READ_CHUNK_BYTES)?);
        at += n as u64;
    }
    if crc != header.crc {
        return Ok(Err(format!("crc {crc:#010x} does not match the header's {:#010x}", header.crc)));
    }
    Ok(Ok(()))
}

//! The leader-epoch cache of one partition (KIP-101): the first offset of every leader epoch
//! this replica's log holds, persisted as `leader-epoch-checkpoint` in the partition directory
//! (Kafka's format: a version line `0`, a count line, then one `epoch start_offset` line per
//! entry), replaced atomically on every change.
//!
//! A leader adds an entry when it starts a new epoch; a follower learns entries from the
//! `partition_leader_epoch` of the batches it fetches. Truncating the log truncates the cache,
//! and OffsetForLeaderEpoch answers from it ([`LeaderEpochCache::end_offset_for_epoch`]), which
//! is how a follower finds where its log diverged from a new leader's.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::checkpoint::io_error;
use super::{write_file_atomically, LogError};

pub const LEADER_EPOCH_CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";
/// Kafka's `UNDEFINED_EPOCH` and `UNDEFINED_EPOCH_OFFSET`.
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;
const VERSION: i32 = 0;
/// One entry per leader change; a file far larger than any real history is not ours.
const MAX_FILE_BYTES: u64 = 16 << 20;

/// The start of one leader epoch in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

#[derive(Debug)]
pub struct LeaderEpochCache {
    path: PathBuf,
    /// Strictly increasing in both epoch and start offset.
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    /// Loads the cache of the partition in `dir`. A missing file is an empty cache; an
    /// unreadable one is dropped with a warning (a follower relearns epochs from the batches it
    /// fetches; a leader then answers UNDEFINED for epochs before its own).
    pub fn open(dir: &Path) -> Result<LeaderEpochCache, LogError> {
        let path = dir.join(LEADER_EPOCH_CHECKPOINT_FILE);
        let entries = match fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_error(&path, e)),
            Ok(meta) if meta.len() > MAX_FILE_BYTES => {
                tracing::warn!(path = %path.display(), bytes = meta.len(), "ignoring oversized leader-epoch checkpoint");
                Vec::new()
            }
            Ok(_) => {
                let bytes = fs::read(&path).map_err(|e| io_error(&path, e))?;
                decode(&bytes).unwrap_or_else(|| {
                    tracing::warn!(path = %path.display(), "ignoring unreadable leader-epoch checkpoint");
                    Vec::new()
                })
            }
        };
        Ok(LeaderEpochCache { path, entries })
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.epoch)
    }

    /// Records that `epoch` starts at `start_offset` (Kafka's `assign`). Entries it conflicts
    /// with (an epoch at or above it, or a start offset at or after it) are dropped first, so
    /// the cache stays strictly increasing. Returns whether the cache changed (and was
    /// persisted). Negative epochs (batches written by no leader) are ignored.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> Result<bool, LogError> {
        if epoch < 0 {
            return Ok(false);
        }
        if let Some(latest) = self.entries.last() {
            if latest.epoch == epoch && latest.start_offset <= start_offset {
                return Ok(false);
            }
            if latest.epoch > epoch {
                // An epoch older than the latest one: stale, keep what we know.
                tracing::warn!(path = %self.path.display(), epoch, start_offset, latest = latest.epoch,
                    "ignoring a leader epoch older than the latest cached one");
                return Ok(false);
            }
        }
        self.entries.retain(|e| e.epoch < epoch && e.start_offset < start_offset);
        self.entries.push(EpochEntry { epoch, start_offset });
        self.persist()?;
        Ok(true)
    }

    /// Drops every entry starting at or after `end_offset` (the log was truncated to it).
    pub fn truncate_from_end(&mut self, end_offset: i64) -> Result<(), LogError> {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < end_offset);
        if self.entries.len() != before {
            self.persist()?;
        }
        Ok(())
    }

    /// The log start moved to `start_offset` (retention, or a follower restarting at the
    /// leader's log start): epochs wholly below it go and the first remaining one is moved up.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> Result<(), LogError> {
        let covering = self.entries.partition_point(|e| e.start_offset <= start_offset);
        if covering == 0 {
            return Ok(());
        }
        let first = EpochEntry { start_offset, ..self.entries[covering - 1] };
        if covering == 1 && self.entries[0] == first {
            return Ok(());
        }
        self.entries.drain(..covering - 1);
        self.entries[0] = first;
        self.persist()
    }

    /// Forgets everything (the log was emptied).
    pub fn clear(&mut self) -> Result<(), LogError> {
        if self.entries.is_empty() {
            return Ok(());
        }
        self.entries.clear();
        self.persist()
    }

    /// Kafka's `endOffsetForEpoch`: the largest epoch at or below `requested` and the offset
    /// where it ends (the start of the next epoch, or `log_end_offset` for the latest).
    /// `(UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)` when `requested` is undefined or above every
    /// epoch this log knows. A `requested` below every known epoch answers `requested` itself,
    /// ending where the first known epoch starts (the follower truncates to there).
    pub fn end_offset_for_epoch(&self, requested: i32, log_end_offset: i64) -> (i32, i64) {
        if requested == UNDEFINED_EPOCH {
            return (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        }
        if self.latest_epoch() == Some(requested) {
            return (requested, log_end_offset);
        }
        let higher = self.entries.partition_point(|e| e.epoch <= requested);
        let Some(next) = self.entries.get(higher) else {
            return (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        };
        match higher.checked_sub(1).map(|i| self.entries[i]) {
            Some(floor) => (floor.epoch, next.start_offset),
            None => (requested, next.start_offset),
        }
    }

    fn persist(&self) -> Result<(), LogError> {
        write_file_atomically(&self.path, &encode(&self.entries))
    }
}

fn encode(entries: &[EpochEntry]) -> Vec<u8> {
    let mut text = format!("{VERSION}\n{}\n", entries.len());
    for e in entries {
        text.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
    }
    text.into_bytes()
}

fn decode(bytes: &[u8]) -> Option<Vec<EpochEntry>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.lines();
    if lines.next()?.trim().parse::<i32>().ok()? != VERSION {
        return None;
    }
    let count: usize = lines.next()?.trim().parse().ok()?;
    let mut entries: Vec<EpochEntry> = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let mut fields = lines.next()?.split_whitespace();
        let epoch: i32 = fields.next()?.parse().ok()?;
        let start_offset: i64 = fields.next()?.parse().ok()?;
        if fields.next().is_some() || epoch < 0 || start_offset < 0 {
            return None;
        }
        if entries.last().is_some_and(|last| last.epoch >= epoch || last.start_offset >= start_offset) {
            return None;
        }
        entries.push(EpochEntry { epoch, start_offset });
    }
    if lines.any(|l| !l.trim().is_empty()) {
        return None;
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, entries: &[(i32, i64)]) -> LeaderEpochCache {
        let mut cache = LeaderEpochCache::open(dir).unwrap();
        for &(epoch, start) in entries {
            assert!(cache.assign(epoch, start).unwrap());
        }
        cache
    }

    fn pairs(cache: &LeaderEpochCache) -> Vec<(i32, i64)> {
        cache.entries().iter().map(|e| (e.epoch, e.start_offset)).collect()
    }

    #[test]
    fn persists_in_kafkas_format_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), &[(0, 0), (2, 10), (5, 42)]);
        let text = fs::read_to_string(dir.path().join(LEADER_EPOCH_CHECKPOINT_FILE)).unwrap();
        assert_eq!(text, "0\n3\n0 0\n2 10\n5 42\n");
        let reloaded = LeaderEpochCache::open(dir.path()).unwrap();
        assert_eq!(pairs(&reloaded), pairs(&c));
        assert_eq!(reloaded.latest_epoch(), Some(5));
    }

    #[test]
    fn garbage_or_unordered_files_load_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "1\n0\n", "0\n2\n0 0\n", "0\n2\n3 5\n2 9\n", "0\n1\n-1 0\n", "0\n1\n0 0\nextra\n"] {
            fs::write(dir.path().join(LEADER_EPOCH_CHECKPOINT_FILE), bad).unwrap();
            assert!(LeaderEpochCache::open(dir.path()).unwrap().entries().is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn assign_keeps_entries_strictly_increasing() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cache(dir.path(), &[(1, 0), (3, 20)]);
        // The same epoch again (every batch of it) changes nothing.
        assert!(!c.assign(3, 25).unwrap());
        // A later epoch whose start overlaps an entry replaces the conflicting entries.
        assert!(c.assign(4, 20).unwrap());
        assert_eq!(pairs(&c), vec![(1, 0), (4, 20)]);
        // Stale epochs are ignored; undefined ones too.
        assert!(!c.assign(2, 30).unwrap());
        assert!(!c.assign(-1, 30).unwrap());
        assert_eq!(pairs(&LeaderEpochCache::open(dir.path()).unwrap()), vec![(1, 0), (4, 20)]);
    }

    #[test]
    fn end_offset_for_epoch_follows_kafka() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), &[(1, 0), (3, 20), (6, 50)]);
        let leo = 70;
        assert_eq!(c.end_offset_for_epoch(6, leo), (6, 70));
        assert_eq!(c.end_offset_for_epoch(3, leo), (3, 50));
        // Epochs this log never saw answer the largest one below, ending where the next starts.
        assert_eq!(c.end_offset_for_epoch(4, leo), (3, 50));
        assert_eq!(c.end_offset_for_epoch(2, leo), (1, 20));
        // Below every known epoch: truncate to where the first known one starts.
        assert_eq!(c.end_offset_for_epoch(0, leo), (0, 0));
        assert_eq!(c.end_offset_for_epoch(7, leo), (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET));
        assert_eq!(c.end_offset_for_epoch(UNDEFINED_EPOCH, leo), (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET));
        let empty = LeaderEpochCache::open(tempfile::tempdir().unwrap().path()).unwrap();
        assert_eq!(empty.end_offset_for_epoch(0, 5), (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET));
    }

    #[test]
    fn truncation_from_either_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cache(dir.path(), &[(1, 0), (3, 20), (6, 50)]);
        c.truncate_from_end(50).unwrap();
        assert_eq!(pairs(&c), vec![(1, 0), (3, 20)]);
        c.truncate_from_end(21).unwrap();
        assert_eq!(pairs(&c), vec![(1, 0), (3, 20)]);
        c.truncate_from_start(25).unwrap();
        assert_eq!(pairs(&c), vec![(3, 25)]);
        c.truncate_from_start(10).unwrap();
        assert_eq!(pairs(&c), vec![(3, 25)]);
        assert_eq!(pairs(&LeaderEpochCache::open(dir.path()).unwrap()), vec![(3, 25)]);
        c.clear().unwrap();
        assert!(LeaderEpochCache::open(dir.path()).unwrap().entries().is_empty());
    }
}

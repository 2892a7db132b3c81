//! Producer-state snapshots, `{offset:020}.snapshot` in a partition's directory (Kafka's
//! `ProducerStateManager` snapshots): the idempotent-producer state and the open transactions
//! (producer id → first offset) as they stood with the log ending at `offset`. A partition
//! writes one whenever its log rolls a segment (at the new segment's base) and at clean
//! shutdown (at the log end); at open it loads the newest usable one and replays only the
//! batches after it, instead of reading the whole log's headers to find open transactions.
//!
//! A snapshot is a function of the log below its offset, so it stays valid as long as that
//! prefix does: a follower's truncation deletes the snapshots above the truncation offset
//! before it cuts the log, and recovery ignores those above the recovered log end. Snapshots
//! written at roll are not fsynced (the append path holds the partition lock): one lost in a
//! crash is a missing file, one torn fails its CRC, and either way an older one, or a longer
//! replay, takes its place.
//!
//! Layout (big-endian): version `u16` = 1, CRC-32C `u32` of everything after it, offset `i64`,
//! producer count `u32`, per producer: id `i64`, epoch `i16`, last used ms `i64`, last timestamp
//! ms `i64`, coordinator epoch `i32`, batch count `u8`, per batch: first and last sequence
//! `i32`, base and last offset `i64`; then open-transaction count `u32`, per transaction:
//! producer id `i64`, first offset `i64`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::producer_state::{SnapshotProducer, BATCHES_RETAINED_PER_PRODUCER};

const VERSION: u16 = 1;
const SUFFIX: &str = ".snapshot";
/// Snapshots kept per partition: recovery needs one at or below the first segment it scans,
/// which is the active segment or the one before it after a crash.
pub const SNAPSHOTS_KEPT: usize = 3;
/// A larger file is not read: far beyond `max.producers.per.partition` producers' worth.
pub const MAX_BYTES: u64 = 256 << 20;
const PRODUCER_BYTES: usize = 8 + 2 + 8 + 8 + 4 + 1;
const BATCH_BYTES: usize = 4 + 4 + 8 + 8;

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerSnapshot {
    pub offset: i64,
    /// Least recently used first.
    pub producers: Vec<SnapshotProducer>,
    /// Open transactions: producer id → offset of its first record.
    pub ongoing: Vec<(i64, i64)>,
}

pub fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{offset:020}{SUFFIX}"))
}

pub fn encode(snapshot: &ProducerSnapshot) -> Vec<u8> {
    let mut body = Vec::with_capacity(
        16 + snapshot.producers.len() * (PRODUCER_BYTES + BATCHES_RETAINED_PER_PRODUCER * BATCH_BYTES)
            + snapshot.ongoing.len() * 16,
    );
    body.extend_from_slice(&snapshot.offset.to_be_bytes());
    body.extend_from_slice(&(snapshot.producers.len() as u32).to_be_bytes());
    for p in &snapshot.producers {
        body.extend_from_slice(&p.producer_id.to_be_bytes());
        body.extend_from_slice(&p.producer_epoch.to_be_bytes());
        body.extend_from_slice(&p.last_used_ms.to_be_bytes());
        body.extend_from_slice(&p.last_timestamp_ms.to_be_bytes());
        body.extend_from_slice(&p.coordinator_epoch.to_be_bytes());
        let batches = &p.batches[p.batches.len().saturating_sub(BATCHES_RETAINED_PER_PRODUCER)..];
        body.push(batches.len() as u8);
        for &(first_sequence, last_sequence, base_offset, last_offset) in batches {
            body.extend_from_slice(&first_sequence.to_be_bytes());
            body.extend_from_slice(&last_sequence.to_be_bytes());
            body.extend_from_slice(&base_offset.to_be_bytes());
            body.extend_from_slice(&last_offset.to_be_bytes());
        }
    }
    body.extend_from_slice(&(snapshot.ongoing.len() as u32).to_be_bytes());
    for &(producer_id, first_offset) in &snapshot.ongoing {
        body.extend_from_slice(&producer_id.to_be_bytes());
        body.extend_from_slice(&first_offset.to_be_bytes());
    }
    let mut out = Vec::with_capacity(6 + body.len());
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads big-endian fields, refusing to run past the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.bytes.split_first_chunk::<N>()?;
        self.bytes = rest;
        Some(*head)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_be_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take().map(i32::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take().map(i16::from_be_bytes)
    }
}

/// `None` for anything but a whole, intact snapshot of this version. Counts are checked
/// against the bytes present before anything is allocated for them.
pub fn decode(bytes: &[u8]) -> Option<ProducerSnapshot> {
    let mut r = Reader { bytes };
    if u16::from_be_bytes(r.take()?) != VERSION {
        return None;
    }
    let crc = r.u32()?;
    if crc32c::crc32c(r.bytes) != crc {
        return None;
    }
    let offset = r.i64()?;
    let count = r.u32()? as usize;
    if count > r.bytes.len() / PRODUCER_BYTES {
        return None;
    }
    let mut producers = Vec::with_capacity(count);
    for _ in 0..count {
        let producer_id = r.i64()?;
        let producer_epoch = r.i16()?;
        let last_used_ms = r.i64()?;
        let last_timestamp_ms = r.i64()?;
        let coordinator_epoch = r.i32()?;
        let batch_count = r.take::<1>()?[0] as usize;
        if batch_count > BATCHES_RETAINED_PER_PRODUCER {
            return None;
        }
        let mut batches = Vec::with_capacity(batch_count);
        for _ in 0..batch_count {
            batches.push((r.i32()?, r.i32()?, r.i64()?, r.i64()?));
        }
        producers.push(SnapshotProducer {
            producer_id,
            producer_epoch,
            last_used_ms,
            last_timestamp_ms,
            coordinator_epoch,
            batches,
        });
    }
    let count = r.u32()? as usize;
    if count > r.bytes.len() / 16 {
        return None;
    }
    let mut ongoing = Vec::with_capacity(count);
    for _ in 0..count {
        ongoing.push((r.i64()?, r.i64()?));
    }
    if !r.bytes.is_empty() || offset < 0 || ongoing.iter().any(|&(_, first)| first < 0 || first >= offset) {
        return None;
    }
    Some(ProducerSnapshot { offset, producers, ongoing })
}

/// Offsets of the snapshot files in `dir`, ascending.
pub fn list(dir: &Path) -> std::io::Result<Vec<i64>> {
    let mut offsets = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        // Named like segment files: the offset in 20 digits.
        if let Some(offset) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)).and_then(crate::log::parse_base_offset)
        {
            offsets.push(offset);
        }
    }
    offsets.sort_unstable();
    Ok(offsets)
}

/// Writes `snapshot` as `{offset}.snapshot` through a `.tmp` file and a rename; with `sync`,
/// fsynced with its directory.
pub fn write(dir: &Path, snapshot: &ProducerSnapshot, sync: bool) -> std::io::Result<()> {
    let path = snapshot_path(dir, snapshot.offset);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&encode(snapshot))?;
    if sync {
        file.sync_all()?;
    }
    drop(file);
    fs::rename(&tmp, &path)?;
    if sync {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The snapshot files of one partition, as it writes and deletes them (no directory listing
/// per roll).
#[derive(Debug, Default)]
pub struct Snapshots {
    /// Ascending.
    offsets: Vec<i64>,
}

impl Snapshots {
    pub fn load(dir: &Path) -> std::io::Result<Snapshots> {
        Ok(Snapshots { offsets: list(dir)? })
    }

    /// Writes `snapshot`, then prunes (see [`Snapshots::prune`]).
    pub fn write(
        &mut self,
        dir: &Path,
        snapshot: &ProducerSnapshot,
        sync: bool,
        active_base_offset: i64,
    ) -> std::io::Result<()> {
        write(dir, snapshot, sync)?;
        if let Err(at) = self.offsets.binary_search(&snapshot.offset) {
            self.offsets.insert(at, snapshot.offset);
        }
        self.prune(dir, active_base_offset)
    }

    /// Deletes the snapshots above `offset` (the log is cut there), durably: they must not
    /// come back after a crash, once the log has grown past them again.
    pub fn remove_above(&mut self, dir: &Path, offset: i64) -> std::io::Result<()> {
        let first = self.offsets.partition_point(|&o| o <= offset);
        if first == self.offsets.len() {
            return Ok(());
        }
        self.remove(dir, |at| at >= first)?;
        fs::File::open(dir)?.sync_all()
    }

    /// Deletes all but the newest [`SNAPSHOTS_KEPT`], and the newest at or below the active
    /// segment's base offset: after a crash, recovery scans the active segment, so it restarts
    /// from that one (those written at clean shutdowns lie above it).
    pub fn prune(&mut self, dir: &Path, active_base_offset: i64) -> std::io::Result<()> {
        let excess = self.offsets.len().saturating_sub(SNAPSHOTS_KEPT);
        let below_active = self.offsets.partition_point(|&o| o <= active_base_offset).checked_sub(1);
        self.remove(dir, |at| at < excess && Some(at) != below_active)
    }

    pub fn offsets(&self) -> &[i64] {
        &self.offsets
    }

    /// The newest snapshot with an offset in `[from, to]` that reads back intact (at most
    /// `max_bytes`); broken ones are skipped.
    pub fn newest_usable(
        &self,
        dir: &Path,
        from: i64,
        to: i64,
        max_bytes: u64,
    ) -> std::io::Result<Option<ProducerSnapshot>> {
        for &offset in self.offsets.iter().rev().filter(|o| (from..=to).contains(*o)) {
            let path = snapshot_path(dir, offset);
            let mut file = match fs::File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if file.metadata()?.len() > max_bytes {
                continue;
            }
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut bytes)?;
            match decode(&bytes) {
                Some(snapshot) if snapshot.offset == offset => return Ok(Some(snapshot)),
                _ => tracing::warn!(path = %path.display(), "ignoring a torn or unreadable producer-state snapshot"),
            }
        }
        Ok(None)
    }

    /// Deletes the snapshots at the positions `doomed` picks.
    fn remove(&mut self, dir: &Path, doomed: impl Fn(usize) -> bool) -> std::io::Result<()> {
        let mut kept = Vec::with_capacity(self.offsets.len());
        let mut result = Ok(());
        for (at, &offset) in self.offsets.iter().enumerate() {
            if !doomed(at) || result.is_err() {
                kept.push(offset);
                continue;
            }
            match fs::remove_file(snapshot_path(dir, offset)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    kept.push(offset);
                    result = Err(e);
                }
            }
        }
        self.offsets = kept;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(offset: i64) -> ProducerSnapshot {
        ProducerSnapshot {
            offset,
            producers: vec![
                SnapshotProducer {
                    producer_id: 7,
                    producer_epoch: 3,
                    last_used_ms: 1_000,
                    last_timestamp_ms: 999,
                    coordinator_epoch: 2,
                    batches: vec![(0, 4, 10, 14), (5, 9, 20, 24)],
                },
                SnapshotProducer {
                    producer_id: 8,
                    producer_epoch: 0,
                    last_used_ms: 2_000,
                    last_timestamp_ms: -1,
                    coordinator_epoch: -1,
                    batches: vec![],
                },
            ],
            ongoing: vec![(7, 20)],
        }
    }

    #[test]
    fn snapshots_round_trip_and_damaged_ones_are_refused() {
        let bytes = encode(&sample(100));
        assert_eq!(decode(&bytes), Some(sample(100)));
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert_eq!(decode(&flipped), None, "bit flipped at {at}");
        }
        // An open transaction cannot start at or after the snapshot's offset.
        assert_eq!(decode(&encode(&ProducerSnapshot { ongoing: vec![(7, 100)], ..sample(100) })), None);
    }

    #[test]
    fn the_newest_intact_snapshot_in_range_is_used_and_three_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut snapshots = Snapshots::load(dir.path()).unwrap();
        for offset in [30, 40, 50, 60] {
            snapshots.write(dir.path(), &sample(offset), false, offset).unwrap();
        }
        assert_eq!(list(dir.path()).unwrap(), vec![40, 50, 60]);
        assert_eq!(snapshots.offsets(), &[40, 50, 60]);
        fs::write(snapshot_path(dir.path(), 60), b"torn").unwrap();
        let found = snapshots.newest_usable(dir.path(), 0, 100, 1 << 20).unwrap().unwrap();
        assert_eq!(found, sample(50));
        assert_eq!(snapshots.newest_usable(dir.path(), 0, 45, 1 << 20).unwrap().unwrap().offset, 40);
        assert_eq!(snapshots.newest_usable(dir.path(), 51, 59, 1 << 20).unwrap(), None);
        snapshots.remove_above(dir.path(), 40).unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![40]);
        assert_eq!(Snapshots::load(dir.path()).unwrap().offsets(), &[40]);
        // Clean shutdowns above the active segment's base keep the snapshot at that base.
        for offset in [41, 42, 43] {
            snapshots.write(dir.path(), &sample(offset), false, 40).unwrap();
        }
        assert_eq!(snapshots.offsets(), &[40, 41, 42, 43]);
        assert_eq!(list(dir.path()).unwrap(), vec![40, 41, 42, 43]);
    }
}

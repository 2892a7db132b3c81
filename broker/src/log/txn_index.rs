//! The per-segment aborted-transaction index, `{base_offset:020}.txnindex` (Kafka's
//! `TransactionIndex`): one entry per ABORT marker the segment holds, giving the producer and
//! the offset range a `read_committed` consumer skips. With it, a restart learns a log's aborted
//! transactions without reading the log; only the segments recovery scans are replayed (from a
//! producer-state snapshot, see `crate::producer_snapshot`).
//!
//! Written whole with the segment's other indexes (at roll and at clean shutdown) and trusted
//! under the same rule: only for a segment below the recovery point whose file checks out. A
//! scanned segment's entries are unknown until the partition replays it
//! ([`Log::rebuild_txn_indexes_from`](super::Log::rebuild_txn_indexes_from)); until then no
//! file is written for it, so a crash in between leaves it unknown, never wrongly empty.
//!
//! Layout (big-endian): version `u16` = 1, entry count `u32`, CRC-32C `u32` of the entries, then
//! entries of 24 bytes: `producer_id`, `first_offset`, `last_offset` (the marker's offset), in
//! marker order. The header makes an empty or torn file (a crash between its creation and its
//! fsync) read as unknown, not as "no aborted transactions". Kafka's entries also carry a
//! version and the last stable offset at the time of the marker, which Spate's fetch path has no
//! use for.

use std::path::{Path, PathBuf};

/// An aborted transaction in a log: `producer_id`'s records from `first_offset` up to the
/// ABORT marker at `last_offset` are to be skipped by `read_committed` consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

pub(crate) const ENTRY_BYTES: usize = 24;
pub(crate) const HEADER_BYTES: usize = 10;
const VERSION: u16 = 1;

pub(crate) fn txn_index_path(log_path: &Path) -> PathBuf {
    log_path.with_extension("txnindex")
}

pub(crate) fn encode(entries: &[AbortedTxn]) -> Vec<u8> {
    let mut body = Vec::with_capacity(entries.len() * ENTRY_BYTES);
    for e in entries {
        body.extend_from_slice(&e.producer_id.to_be_bytes());
        body.extend_from_slice(&e.first_offset.to_be_bytes());
        body.extend_from_slice(&e.last_offset.to_be_bytes());
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes a segment's entries; `None` unless the header, count and CRC check out and every
/// entry is ordered by marker offset and lies in `[base_offset, next_offset)` with its first
/// offset at or before its marker (a torn or stale file is then rebuilt, not trusted).
pub(crate) fn decode(bytes: &[u8], base_offset: i64, next_offset: i64) -> Option<Vec<AbortedTxn>> {
    let (header, bytes) = bytes.split_first_chunk::<HEADER_BYTES>()?;
    let version = u16::from_be_bytes([header[0], header[1]]);
    let count = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    let crc = u32::from_be_bytes([header[6], header[7], header[8], header[9]]);
    if version != VERSION || count.checked_mul(ENTRY_BYTES) != Some(bytes.len()) || crc32c::crc32c(bytes) != crc {
        return None;
    }
    let read = |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let mut entries = Vec::with_capacity(bytes.len() / ENTRY_BYTES);
    let mut previous = i64::MIN;
    for at in (0..bytes.len()).step_by(ENTRY_BYTES) {
        let entry = AbortedTxn { producer_id: read(at), first_offset: read(at + 8), last_offset: read(at + 16) };
        if entry.last_offset < base_offset
            || entry.last_offset >= next_offset
            || entry.last_offset <= previous
            || entry.first_offset > entry.last_offset
            || entry.first_offset < 0
        {
            return None;
        }
        previous = entry.last_offset;
        entries.push(entry);
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bad_files_are_refused() {
        let entries = vec![
            AbortedTxn { producer_id: 7, first_offset: 90, last_offset: 105 },
            AbortedTxn { producer_id: 8, first_offset: 101, last_offset: 140 },
        ];
        let bytes = encode(&entries);
        assert_eq!(bytes.len(), HEADER_BYTES + 48);
        assert_eq!(decode(&bytes, 100, 200), Some(entries.clone()));
        assert_eq!(decode(&encode(&[]), 100, 200), Some(vec![]));
        // An empty file (created, never synced) is not "no entries".
        assert_eq!(decode(&[], 100, 200), None);
        // Torn anywhere, any bit flipped, outside the segment, out of order.
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut], 100, 200), None, "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x04;
            assert_eq!(decode(&flipped, 100, 200), None, "bit flipped at {at}");
        }
        assert_eq!(decode(&bytes, 106, 200), None);
        assert_eq!(decode(&bytes, 100, 140), None);
        let mut reversed = entries.clone();
        reversed.reverse();
        assert_eq!(decode(&encode(&reversed), 100, 200), None);
    }
}

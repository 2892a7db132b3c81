//! The two sparse indexes of a segment, kept in memory and persisted when the segment closes.
//!
//! Both use Kafka's on-disk layout (big-endian, fixed-size entries): the offset index maps a
//! relative offset (`u32`) to a byte position (`u32`), the time index maps a timestamp (`i64`)
//! to a relative offset (`u32`). Every offset-index entry points at the start of a batch whose
//! base offset is the entry's offset, so a lookup never lands inside a batch.

/// One offset-index entry: the batch with base offset `segment base + relative_offset` starts
/// at byte `position` of the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// One time-index entry: the largest timestamp seen up to this point of the segment, and the
/// relative base offset of the batch that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

pub(crate) const OFFSET_ENTRY_BYTES: usize = 8;
pub(crate) const TIME_ENTRY_BYTES: usize = 12;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct OffsetIndex {
    entries: Vec<OffsetEntry>,
}

impl OffsetIndex {
    pub fn push(&mut self, relative_offset: u32, position: u32) {
        debug_assert!(self.entries.last().is_none_or(|e| e.relative_offset < relative_offset && e.position < position));
        self.entries.push(OffsetEntry { relative_offset, position });
    }

    pub fn last(&self) -> Option<OffsetEntry> {
        self.entries.last().copied()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The last entry whose offset is at or below `relative_offset`.
    pub fn floor(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let i = self.entries.partition_point(|e| e.relative_offset <= relative_offset);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    /// The last entry at or before byte `position` whose offset is below `relative_bound`.
    /// Entries grow in both fields, so the predicate is a prefix.
    pub fn floor_within(&self, position: u32, relative_bound: u32) -> Option<OffsetEntry> {
        let i = self.entries.partition_point(|e| e.position <= position && e.relative_offset < relative_bound);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * OFFSET_ENTRY_BYTES);
        for e in &self.entries {
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        out
    }

    /// Parses a persisted index; `None` unless it is whole entries, strictly increasing in
    /// both fields, with every position below `segment_bytes`.
    pub fn decode(bytes: &[u8], segment_bytes: u64) -> Option<Self> {
        if !bytes.chunks_exact(OFFSET_ENTRY_BYTES).remainder().is_empty() {
            return None;
        }
        let mut entries: Vec<OffsetEntry> = Vec::with_capacity(bytes.len() / OFFSET_ENTRY_BYTES);
        for chunk in bytes.chunks_exact(OFFSET_ENTRY_BYTES) {
            let relative_offset = u32::from_be_bytes(chunk[0..4].try_into().ok()?);
            let position = u32::from_be_bytes(chunk[4..8].try_into().ok()?);
            if let Some(prev) = entries.last() {
                if relative_offset <= prev.relative_offset || position <= prev.position {
                    return None;
                }
            }
            if position as u64 >= segment_bytes {
                return None;
            }
            entries.push(OffsetEntry { relative_offset, position });
        }
        Some(OffsetIndex { entries })
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TimeIndex {
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    /// Appends an entry if `timestamp` is newer than the last one (the index only ever grows
    /// in timestamp).
    pub fn push_if_newer(&mut self, timestamp: i64, relative_offset: u32) {
        if self.entries.last().is_none_or(|e| timestamp > e.timestamp) {
            debug_assert!(self.entries.last().is_none_or(|e| relative_offset >= e.relative_offset));
            self.entries.push(TimeEntry { timestamp, relative_offset });
        }
    }

    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The last entry whose timestamp is strictly below `timestamp`: every record up to that
    /// entry's batch is older than `timestamp`, so a search may start there.
    pub fn last_before(&self, timestamp: i64) -> Option<TimeEntry> {
        let i = self.entries.partition_point(|e| e.timestamp < timestamp);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TIME_ENTRY_BYTES);
        for e in &self.entries {
            out.extend_from_slice(&e.timestamp.to_be_bytes());
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
        }
        out
    }

    /// Parses a persisted index; `None` unless it is whole entries with strictly increasing
    /// timestamps, non-decreasing offsets, and offsets below `relative_end`.
    pub fn decode(bytes: &[u8], relative_end: u64) -> Option<Self> {
        if !bytes.chunks_exact(TIME_ENTRY_BYTES).remainder().is_empty() {
            return None;
        }
        let mut entries: Vec<TimeEntry> = Vec::with_capacity(bytes.len() / TIME_ENTRY_BYTES);
        for chunk in bytes.chunks_exact(TIME_ENTRY_BYTES) {
            let timestamp = i64::from_be_bytes(chunk[0..8].try_into().ok()?);
            let relative_offset = u32::from_be_bytes(chunk[8..12].try_into().ok()?);
            if let Some(prev) = entries.last() {
                if timestamp <= prev.timestamp || relative_offset < prev.relative_offset {
                    return None;
                }
            }
            if relative_offset as u64 >= relative_end {
                return None;
            }
            entries.push(TimeEntry { timestamp, relative_offset });
        }
        Some(TimeIndex { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn offset_lookups_find_the_floor_entry() {
        let mut index = OffsetIndex::default();
        index.push(0, 0);
        index.push(10, 1000);
        index.push(20, 2000);
        assert_eq!(index.floor(0), Some(OffsetEntry { relative_offset: 0, position: 0 }));
        assert_eq!(index.floor(15).unwrap().position, 1000);
        assert_eq!(index.floor(20).unwrap().position, 2000);
        assert_eq!(index.floor(u32::MAX).unwrap().position, 2000);
        assert_eq!(index.floor_within(1999, u32::MAX).unwrap().position, 1000);
        assert_eq!(index.floor_within(5000, 20).unwrap().position, 1000);
        assert_eq!(index.floor_within(5000, 21).unwrap().position, 2000);
        assert_eq!(index.len(), 3);
        let empty = OffsetIndex::default();
        assert_eq!(empty.floor(5), None);
    }

    #[test]
    fn time_lookups_find_the_last_older_entry() {
        let mut index = TimeIndex::default();
        index.push_if_newer(100, 0);
        index.push_if_newer(100, 5); // not newer: ignored
        index.push_if_newer(200, 7);
        assert_eq!(index.last_before(100), None);
        assert_eq!(index.last_before(101).unwrap().relative_offset, 0);
        assert_eq!(index.last_before(i64::MAX).unwrap().relative_offset, 7);
        assert_eq!(index.last().unwrap().timestamp, 200);
    }

    #[test]
    fn decode_rejects_malformed_indexes() {
        assert!(OffsetIndex::decode(&[0; 7], 100).is_none());
        // Zero-filled (a crash before the data reached the disk) is not increasing.
        assert!(OffsetIndex::decode(&[0; 16], 100).is_none());
        let mut index = OffsetIndex::default();
        index.push(1, 50);
        assert!(OffsetIndex::decode(&index.encode(), 50).is_none());
        assert!(TimeIndex::decode(&[0; 24], 100).is_none());
        let mut time = TimeIndex::default();
        time.push_if_newer(5, 9);
        assert!(TimeIndex::decode(&time.encode(), 9).is_none());
        assert_eq!(TimeIndex::decode(&time.encode(), 10), Some(time));
    }

    proptest! {
        #[test]
        fn indexes_round_trip(steps in proptest::collection::vec((1u32..1000, 1u32..5000, 0i64..1000), 0..200)) {
            let mut offsets = OffsetIndex::default();
            let mut times = TimeIndex::default();
            let (mut rel, mut pos, mut ts) = (0u32, 0u32, -1i64);
            for (d_rel, d_pos, d_ts) in steps {
                rel += d_rel;
                pos += d_pos;
                ts += d_ts;
                offsets.push(rel, pos);
                times.push_if_newer(ts, rel);
            }
            prop_assert_eq!(OffsetIndex::decode(&offsets.encode(), pos as u64 + 1), Some(offsets));
            prop_assert_eq!(TimeIndex::decode(&times.encode(), rel as u64 + 1), Some(times));
        }
    }
}

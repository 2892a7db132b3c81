//! Transactions as one partition sees them (sans-IO): which producers have a transaction open in
//! this log and where it began, which ended but whose marker the high watermark has not passed
//! yet, and the aborted transactions a `read_committed` consumer must skip. From these follows
//! the last stable offset (LSO): `min(first offset of any unstable transaction, high watermark)`.
//!
//! Kafka keeps the aborted list in per-segment `.txnindex` files; here it is rebuilt from the log
//! at open (see `Partition::open`) and kept in memory, bounded by the aborted transactions the
//! retained log holds.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// An aborted transaction in this log: `producer_id`'s records from `first_offset` up to the
/// ABORT marker at `last_offset` are to be skipped by `read_committed` consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Default)]
pub struct TxnTracker {
    /// Open transactions: producer id → offset of its first record in this log.
    ongoing: HashMap<i64, i64>,
    /// Open transactions by first offset (the minimum is the first unstable offset).
    ongoing_by_offset: BTreeMap<i64, i64>,
    /// Ended transactions whose marker is not below the high watermark yet: marker offset →
    /// first offset. Still unstable: the marker may be lost with a leader change.
    unreplicated: BTreeMap<i64, i64>,
    /// Aborted transactions in marker order (so by `last_offset`).
    aborted: VecDeque<AbortedTxn>,
}

impl TxnTracker {
    /// Whether anything is unstable (the LSO may lie below the high watermark).
    pub fn is_unstable(&self) -> bool {
        !self.ongoing.is_empty() || !self.unreplicated.is_empty()
    }

    /// Whether `producer_id` has a transaction open in this log.
    pub fn is_ongoing(&self, producer_id: i64) -> bool {
        self.ongoing.contains_key(&producer_id)
    }

    /// First offset of `producer_id`'s open transaction here.
    pub fn ongoing_start(&self, producer_id: i64) -> Option<i64> {
        self.ongoing.get(&producer_id).copied()
    }

    pub fn ongoing_count(&self) -> usize {
        self.ongoing.len()
    }

    /// A transactional data batch of `producer_id` at `base_offset`: opens its transaction here
    /// unless one is open already.
    pub fn on_data(&mut self, producer_id: i64, base_offset: i64) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.ongoing.entry(producer_id) {
            e.insert(base_offset);
            self.ongoing_by_offset.insert(base_offset, producer_id);
        }
    }

    /// The marker of `producer_id` at `marker_offset`. A marker without an open transaction
    /// here (the coordinator writes markers to every partition it added, data or not) changes
    /// nothing but is harmless.
    pub fn on_marker(&mut self, producer_id: i64, marker_offset: i64, commit: bool) {
        let Some(first_offset) = self.ongoing.remove(&producer_id) else {
            return;
        };
        self.ongoing_by_offset.remove(&first_offset);
        self.unreplicated.insert(marker_offset, first_offset);
        if !commit {
            self.aborted.push_back(AbortedTxn { producer_id, first_offset, last_offset: marker_offset });
        }
    }

    /// Forgets ended transactions whose markers the high watermark has passed.
    pub fn on_high_watermark(&mut self, high_watermark: i64) {
        while let Some(entry) = self.unreplicated.first_entry() {
            if *entry.key() >= high_watermark {
                break;
            }
            entry.remove();
        }
    }

    /// The last stable offset for `high_watermark`.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        let ongoing = self.ongoing_by_offset.keys().next().copied().unwrap_or(i64::MAX);
        let ended = self
            .unreplicated
            .iter()
            .filter(|(marker, _)| **marker >= high_watermark)
            .map(|(_, first)| *first)
            .min()
            .unwrap_or(i64::MAX);
        high_watermark.min(ongoing).min(ended)
    }

    /// Aborted transactions that overlap `[from, to)`: the `aborted_transactions` of a
    /// `read_committed` fetch from `from` returning data below `to`. Bounded by `max`.
    pub fn aborted_between(&self, from: i64, to: i64, max: usize) -> Vec<AbortedTxn> {
        // Sorted by last offset: skip those that ended before `from`.
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted.iter().skip(start).filter(|a| a.first_offset < to).take(max).copied().collect()
    }

    /// The log start moved to `log_start_offset`: aborted transactions wholly below it are gone.
    pub fn truncate_head(&mut self, log_start_offset: i64) {
        while self.aborted.front().is_some_and(|a| a.last_offset < log_start_offset) {
            self.aborted.pop_front();
        }
    }

    pub fn clear(&mut self) {
        *self = TxnTracker::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lso_waits_for_open_transactions_and_unreplicated_markers() {
        let mut t = TxnTracker::default();
        assert_eq!(t.last_stable_offset(10), 10);
        t.on_data(1, 10);
        t.on_data(2, 12);
        t.on_data(1, 13); // same transaction
        assert_eq!(t.last_stable_offset(20), 10);
        t.on_marker(1, 20, true);
        // Producer 1's marker is not replicated: still unstable at 10.
        assert_eq!(t.last_stable_offset(20), 10);
        t.on_high_watermark(21);
        assert_eq!(t.last_stable_offset(21), 12);
        t.on_marker(2, 21, false);
        assert_eq!(t.last_stable_offset(22), 22);
        t.on_high_watermark(22);
        assert!(!t.is_unstable());
        assert_eq!(
            t.aborted_between(0, 100, 10),
            vec![AbortedTxn { producer_id: 2, first_offset: 12, last_offset: 21 }]
        );
    }

    #[test]
    fn aborted_ranges_overlapping_a_fetch() {
        let mut t = TxnTracker::default();
        for (pid, first, marker) in [(1, 0, 5), (2, 3, 8), (1, 10, 12)] {
            t.on_data(pid, first);
            t.on_marker(pid, marker, false);
        }
        let pids = |v: Vec<AbortedTxn>| v.iter().map(|a| (a.producer_id, a.first_offset)).collect::<Vec<_>>();
        assert_eq!(pids(t.aborted_between(0, 4, 10)), vec![(1, 0), (2, 3)]);
        assert_eq!(pids(t.aborted_between(6, 10, 10)), vec![(2, 3)]);
        assert_eq!(pids(t.aborted_between(6, 11, 10)), vec![(2, 3), (1, 10)]);
        assert_eq!(pids(t.aborted_between(13, 100, 10)), vec![]);
        assert_eq!(t.aborted_between(0, 100, 1).len(), 1);
        t.truncate_head(6);
        assert_eq!(pids(t.aborted_between(0, 100, 10)), vec![(2, 3), (1, 10)]);
    }

    #[test]
    fn a_marker_without_data_here_changes_nothing() {
        let mut t = TxnTracker::default();
        t.on_marker(7, 3, false);
        assert!(!t.is_unstable());
        assert!(t.aborted_between(0, 100, 10).is_empty());
    }
}

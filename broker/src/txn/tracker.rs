//! Transactions as one partition sees them (sans-IO): which producers have a transaction open in
//! this log and where it began, which ended but whose marker the high watermark has not passed
//! yet, and the aborted transactions a `read_committed` consumer must skip. From these follows
//! the last stable offset (LSO): `min(first offset of any unstable transaction, high watermark)`.
//!
//! The aborted list is also kept per segment in `.txnindex` files (see `crate::log::txn_index`)
//! and the open transactions in producer-state snapshots (`crate::producer_snapshot`), from
//! which `Partition::open` restores this tracker; in memory it is bounded by the aborted
//! transactions the retained log holds.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// Bound on producers being verified at once in one partition (KIP-890): each entry is a
/// transactional producer whose first batch of a transaction is waiting on its coordinator.
pub const MAX_VERIFYING: usize = 10_000;
/// A verification older than this no longer vouches for an append (the produce that asked for
/// it is long answered).
const VERIFICATION_MAX_AGE_MS: i64 = 60_000;

/// [`MAX_VERIFYING`] producers of one partition are being verified already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyingFull;

/// KIP-890 part 1: the coordinator was asked whether this partition is in `producer_id`'s
/// ongoing transaction. The append that follows must show `guard`; a marker written meanwhile
/// (the transaction ended, e.g. timed out) removes the entry, so data arriving late cannot open
/// a transaction the coordinator no longer knows (a hanging transaction).
#[derive(Debug, Clone, Copy)]
struct Verification {
    producer_epoch: i16,
    guard: u64,
    started_ms: i64,
}

pub use crate::log::AbortedTxn;

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
    /// Producers whose transaction the coordinator is being asked about (KIP-890).
    verifying: HashMap<i64, Verification>,
    next_guard: u64,
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

    /// Starts verifying (KIP-890) `producer_id`'s transaction in this partition: `Ok(None)` when
    /// it is open here already (nothing to ask), else the guard the append must show once the
    /// coordinator has answered. Refused when [`MAX_VERIFYING`] producers are being verified.
    pub fn begin_verification(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        now_ms: i64,
    ) -> Result<Option<u64>, VerifyingFull> {
        if self.ongoing.contains_key(&producer_id) {
            return Ok(None);
        }
        if self.verifying.len() >= MAX_VERIFYING && !self.verifying.contains_key(&producer_id) {
            self.verifying.retain(|_, v| now_ms - v.started_ms < VERIFICATION_MAX_AGE_MS);
            if self.verifying.len() >= MAX_VERIFYING {
                return Err(VerifyingFull);
            }
        }
        self.next_guard += 1;
        let guard = self.next_guard;
        self.verifying.insert(producer_id, Verification { producer_epoch, guard, started_ms: now_ms });
        Ok(Some(guard))
    }

    /// Whether a transactional batch of `producer_id` in `producer_epoch` may be appended with
    /// verification on: its transaction is open here, or it was verified with `guard` and no
    /// marker came in between.
    pub fn may_append(&self, producer_id: i64, producer_epoch: i16, guard: Option<u64>) -> bool {
        if self.ongoing.contains_key(&producer_id) {
            return true;
        }
        match (self.verifying.get(&producer_id), guard) {
            (Some(v), Some(g)) => v.guard == g && v.producer_epoch == producer_epoch,
            _ => false,
        }
    }

    /// Forgets verifications older than a minute (their produce requests are long answered).
    pub fn expire_verifications(&mut self, now_ms: i64) {
        self.verifying.retain(|_, v| now_ms - v.started_ms < VERIFICATION_MAX_AGE_MS);
    }

    /// A transactional data batch of `producer_id` at `base_offset`: opens its transaction here
    /// unless one is open already.
    pub fn on_data(&mut self, producer_id: i64, base_offset: i64) {
        self.verifying.remove(&producer_id);
        if let std::collections::hash_map::Entry::Vacant(e) = self.ongoing.entry(producer_id) {
            e.insert(base_offset);
            self.ongoing_by_offset.insert(base_offset, producer_id);
        }
    }

    /// The marker of `producer_id` at `marker_offset`. A marker without an open transaction
    /// here (the coordinator writes markers to every partition it added, data or not) changes
    /// nothing but is harmless. Returns the aborted transaction an ABORT marker ends (for the
    /// segment's `.txnindex`).
    pub fn on_marker(&mut self, producer_id: i64, marker_offset: i64, commit: bool) -> Option<AbortedTxn> {
        // A verification in flight was for the transaction this marker ends.
        self.verifying.remove(&producer_id);
        let first_offset = self.ongoing.remove(&producer_id)?;
        self.ongoing_by_offset.remove(&first_offset);
        self.unreplicated.insert(marker_offset, first_offset);
        if commit {
            return None;
        }
        let aborted = AbortedTxn { producer_id, first_offset, last_offset: marker_offset };
        self.aborted.push_back(aborted);
        Some(aborted)
    }

    /// Open transactions (producer id, first offset), for a producer-state snapshot.
    pub fn ongoing(&self) -> Vec<(i64, i64)> {
        self.ongoing_by_offset.iter().map(|(&first, &producer_id)| (producer_id, first)).collect()
    }

    /// Restores an aborted transaction read from a `.txnindex` (after [`clear`](Self::clear),
    /// in marker order, before replaying the log after them).
    pub fn restore_aborted(&mut self, aborted: AbortedTxn) {
        if self.aborted.back().is_none_or(|a| a.last_offset < aborted.last_offset) {
            self.aborted.push_back(aborted);
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
    fn a_marker_cancels_a_verification_in_flight() {
        let mut t = TxnTracker::default();
        let g = t.begin_verification(5, 0, 0).unwrap();
        assert!(g.is_some());
        assert!(!t.may_append(5, 0, None), "unverified");
        assert!(!t.may_append(5, 1, g), "another epoch");
        assert!(t.may_append(5, 0, g));
        // The transaction timed out and its ABORT marker landed before the append.
        t.on_marker(5, 3, false);
        assert!(!t.may_append(5, 0, g), "the marker ended the verified transaction");
        // A new verification, then the data: the transaction is open and needs no guard.
        let g = t.begin_verification(5, 0, 10).unwrap();
        assert!(t.may_append(5, 0, g));
        t.on_data(5, 4);
        assert_eq!(t.begin_verification(5, 0, 11), Ok(None));
        assert!(t.may_append(5, 0, None));
    }

    #[test]
    fn verifications_are_bounded_and_expire() {
        let mut t = TxnTracker::default();
        for pid in 0..MAX_VERIFYING as i64 {
            t.begin_verification(pid, 0, 0).unwrap();
        }
        assert_eq!(t.begin_verification(-7, 0, 1), Err(VerifyingFull), "full");
        // Re-verifying a producer already in the table is allowed.
        assert!(t.begin_verification(3, 0, 1).is_ok());
        assert!(t.begin_verification(-7, 0, VERIFICATION_MAX_AGE_MS + 1).is_ok(), "old ones made room");
        t.expire_verifications(3 * VERIFICATION_MAX_AGE_MS);
        assert!(t.verifying.is_empty());
    }

    #[test]
    fn a_marker_without_data_here_changes_nothing() {
        let mut t = TxnTracker::default();
        t.on_marker(7, 3, false);
        assert!(!t.is_unstable());
        assert!(t.aborted_between(0, 100, 10).is_empty());
    }
}

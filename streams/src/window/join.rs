//! Stream-stream joins over join windows (Kafka's `JoinWindows` and `KStreamKStreamJoin`),
//! with Kafka's fix for spurious left/outer join results (KAFKA-10847, Kafka 3.1).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::duration_ms;
use crate::StreamsError;

/// Kafka's `ConsumerRecord.NO_TIMESTAMP`.
const NO_TIMESTAMP: i64 = -1;

/// Kafka's default for the internal `__emit.interval.ms.kstreams.outer.join.spurious.results.fix__`.
pub const DEFAULT_OUTER_JOIN_EMIT_INTERVAL_MS: i64 = 1000;

/// Which records of the two streams join: a left record at `t` joins right records of the same
/// key with timestamps in `[t - before_ms, t + after_ms]` (so a right record at `t` joins left
/// records in `[t - after_ms, t + before_ms]`). `before_ms` or `after_ms` may be negative as
/// long as their sum is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinWindows {
    before_ms: i64,
    after_ms: i64,
    grace_ms: i64,
}

impl JoinWindows {
    /// Symmetric windows of `time_difference` either way, accepting out-of-order records for
    /// `grace` (`JoinWindows.ofTimeDifferenceAndGrace`).
    pub fn of_time_difference_and_grace(time_difference: Duration, grace: Duration) -> Result<Self, StreamsError> {
        let difference_ms = duration_ms("JoinWindows", "time difference", time_difference)?;
        let grace_ms = duration_ms("JoinWindows", "grace", grace)?;
        Self::new(difference_ms, difference_ms, grace_ms)
    }

    /// Symmetric windows without grace (`JoinWindows.ofTimeDifferenceWithNoGrace`).
    pub fn of_time_difference_with_no_grace(time_difference: Duration) -> Result<Self, StreamsError> {
        Self::of_time_difference_and_grace(time_difference, Duration::ZERO)
    }

    /// The same windows with `before_ms` changed (`JoinWindows.before`).
    pub fn with_before_ms(self, before_ms: i64) -> Result<Self, StreamsError> {
        Self::new(before_ms, self.after_ms, self.grace_ms)
    }

    /// The same windows with `after_ms` changed (`JoinWindows.after`).
    pub fn with_after_ms(self, after_ms: i64) -> Result<Self, StreamsError> {
        Self::new(self.before_ms, after_ms, self.grace_ms)
    }

    fn new(before_ms: i64, after_ms: i64, grace_ms: i64) -> Result<Self, StreamsError> {
        match before_ms.checked_add(after_ms) {
            Some(size) if size >= 0 => {}
            _ => {
                return Err(StreamsError::invalid_window(
                    "JoinWindows",
                    format!("window interval (before {before_ms} ms + after {after_ms} ms) must not be negative"),
                ))
            }
        }
        if grace_ms.checked_add(before_ms + after_ms).is_none() {
            return Err(StreamsError::invalid_window("JoinWindows", "size plus grace overflows i64 milliseconds"));
        }
        Ok(Self { before_ms, after_ms, grace_ms })
    }

    /// How far before a left record a right record may be, in milliseconds.
    pub fn before_ms(&self) -> i64 {
        self.before_ms
    }

    /// How far after a left record a right record may be, in milliseconds.
    pub fn after_ms(&self) -> i64 {
        self.after_ms
    }

    /// Grace period in milliseconds.
    pub fn grace_ms(&self) -> i64 {
        self.grace_ms
    }

    /// `before + after` (`JoinWindows.size()`).
    pub fn size_ms(&self) -> i64 {
        self.before_ms + self.after_ms
    }

    /// How long each side's window store keeps a record: size plus grace (Kafka requires
    /// exactly this retention for join stores).
    pub fn retention_ms(&self) -> i64 {
        self.size_ms() + self.grace_ms
    }
}

/// Inner, left or outer stream-stream join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// Only matched pairs.
    Inner,
    /// Matched pairs, and left records that matched nothing once their window closed.
    Left,
    /// Matched pairs, and records of either side that matched nothing once their window
    /// closed.
    Outer,
}

/// A side of the join. Ordered right before left, as Kafka's outer-join store orders its
/// `<timestamp><is-left byte><key>` keys (which decides the order of null-padded results).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JoinSide {
    /// The other stream (the argument of `join`).
    Right,
    /// The stream `join` was called on.
    Left,
}

/// One join result, with Kafka's output timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutput<K, L, R> {
    /// A matched pair.
    Joined {
        /// The common key.
        key: K,
        /// The left record's value.
        left: L,
        /// The right record's value.
        right: R,
        /// The larger of the two records' timestamps.
        timestamp_ms: i64,
    },
    /// A left record that matched nothing (left and outer joins).
    LeftOnly {
        /// Its key.
        key: K,
        /// Its value.
        left: L,
        /// Its own timestamp.
        timestamp_ms: i64,
    },
    /// A right record that matched nothing (outer joins).
    RightOnly {
        /// Its key.
        key: K,
        /// Its value.
        right: R,
        /// Its own timestamp.
        timestamp_ms: i64,
    },
}

/// One side's join window store: records by key and timestamp, visible while their timestamp
/// is above `observed - retention` (Kafka's window stores: a put at or below that is dropped, a
/// fetch starts at `observed - retention + 1`). `observed` is this side's own maximum
/// timestamp, as each store tracks its own.
#[derive(Debug)]
struct SideStore<K, V> {
    retention_ms: i64,
    observed_ms: i64,
    records: BTreeMap<K, BTreeMap<i64, Vec<V>>>,
    by_time: BTreeSet<(i64, K)>,
}

impl<K: Ord + Clone, V: Clone> SideStore<K, V> {
    fn new(retention_ms: i64) -> Self {
        Self { retention_ms, observed_ms: NO_TIMESTAMP, records: BTreeMap::new(), by_time: BTreeSet::new() }
    }

    fn expired_through_ms(&self) -> i64 {
        self.observed_ms.saturating_sub(self.retention_ms)
    }

    fn put(&mut self, key: K, timestamp_ms: i64, value: V) {
        self.observed_ms = self.observed_ms.max(timestamp_ms);
        let expired_through_ms = self.expired_through_ms();
        if timestamp_ms > expired_through_ms {
            self.records.entry(key.clone()).or_default().entry(timestamp_ms).or_default().push(value);
            self.by_time.insert((timestamp_ms, key));
        }
        // Drop what can no longer be fetched, so memory stays bounded by retention.
        while let Some((oldest_ms, _)) = self.by_time.first() {
            if *oldest_ms > expired_through_ms {
                break;
            }
            let Some((oldest_ms, key)) = self.by_time.pop_first() else { break };
            if let Some(by_ts) = self.records.get_mut(&key) {
                by_ts.remove(&oldest_ms);
                if by_ts.is_empty() {
                    self.records.remove(&key);
                }
            }
        }
    }

    /// Records of `key` with timestamps in `[from_ms, to_ms]`, by timestamp then arrival.
    fn fetch(&self, key: &K, from_ms: i64, to_ms: i64) -> Vec<(i64, V)> {
        let from_ms = from_ms.max(self.expired_through_ms().saturating_add(1));
        let Some(by_ts) = self.records.get(key) else { return Vec::new() };
        if to_ms < from_ms {
            return Vec::new();
        }
        by_ts
            .range(from_ms..=to_ms)
            .flat_map(|(ts, values)| values.iter().map(move |value| (*ts, value.clone())))
            .collect()
    }

    fn len(&self) -> usize {
        self.records.values().flat_map(BTreeMap::values).map(Vec::len).sum()
    }
}

#[derive(Debug)]
enum Unmatched<L, R> {
    Left(Vec<L>),
    Right(Vec<R>),
}

/// The sans-IO state of one task's stream-stream join: both sides' window stores, the shared
/// stream time, and the outer-join store of unmatched records waiting for their window to
/// close. Feed it records in the order the task processes them; it returns the results Kafka
/// Streams would forward, in Kafka's order.
///
/// The spurious-result fix: an unmatched left (or, in an outer join, right) record is not
/// emitted null-padded at once; it waits in the outer-join store until stream time passes
/// `t + after + grace` (right records: `t + before + grace`), and is emitted then only if no
/// record joined it meanwhile. As in Kafka, the store is swept only when an in-order record
/// arrives (`t == stream time`), at most once per `emit_interval_ms` of wall-clock time
/// (`now_ms`), and an unmatched record whose window already ended (`t + after < stream time`
/// for a left record, `t + before` for a right one) is emitted at once without waiting for
/// grace.
///
/// Records with a null key or value never reach this type: Kafka drops them before joining,
/// except that a null-key record of a side whose unmatched records are emitted (left in a
/// left join, both in an outer join) is emitted null-padded at once; the runtime does that.
#[derive(Debug)]
pub struct StreamStreamJoin<K, L, R> {
    windows: JoinWindows,
    kind: JoinKind,
    emit_interval_ms: i64,
    left: SideStore<K, L>,
    right: SideStore<K, R>,
    stream_time_ms: i64,
    min_time_ms: i64,
    next_time_to_emit_ms: i64,
    outer: BTreeMap<(i64, JoinSide, K), Unmatched<L, R>>,
}

impl<K: Ord + Clone, L: Clone, R: Clone> StreamStreamJoin<K, L, R> {
    /// A join of `kind` over `windows`, sweeping unmatched records at most every
    /// [`DEFAULT_OUTER_JOIN_EMIT_INTERVAL_MS`] of wall-clock time.
    pub fn new(windows: JoinWindows, kind: JoinKind) -> Self {
        Self::with_emit_interval(windows, kind, DEFAULT_OUTER_JOIN_EMIT_INTERVAL_MS)
    }

    /// As [`Self::new`], with Kafka's internal emit-interval setting (tests use 0 to sweep on
    /// every in-order record).
    pub fn with_emit_interval(windows: JoinWindows, kind: JoinKind, emit_interval_ms: i64) -> Self {
        Self {
            windows,
            kind,
            emit_interval_ms,
            left: SideStore::new(windows.retention_ms()),
            right: SideStore::new(windows.retention_ms()),
            stream_time_ms: NO_TIMESTAMP,
            min_time_ms: i64::MAX,
            next_time_to_emit_ms: 0,
            outer: BTreeMap::new(),
        }
    }

    /// Shared stream time of both sides.
    pub fn stream_time_ms(&self) -> i64 {
        self.stream_time_ms
    }

    /// Unmatched records waiting for their window to close.
    pub fn pending_unmatched(&self) -> usize {
        self.outer
            .values()
            .map(|values| match values {
                Unmatched::Left(values) => values.len(),
                Unmatched::Right(values) => values.len(),
            })
            .sum()
    }

    /// Records held in both sides' window stores.
    pub fn buffered(&self) -> usize {
        self.left.len() + self.right.len()
    }

    fn has_outer_store(&self) -> bool {
        self.kind != JoinKind::Inner
    }

    /// A record of the left stream at `timestamp_ms`, processed at wall-clock `now_ms`.
    pub fn process_left(
        &mut self,
        key: K,
        value: L,
        timestamp_ms: i64,
        now_ms: i64,
        out: &mut Vec<JoinOutput<K, L, R>>,
    ) {
        self.stream_time_ms = self.stream_time_ms.max(timestamp_ms);
        let (before_ms, after_ms) = (self.windows.before_ms, self.windows.after_ms);
        if self.has_outer_store() && timestamp_ms == self.stream_time_ms {
            self.emit_closed_unmatched(after_ms, now_ms, out);
        }
        let from_ms = timestamp_ms.saturating_sub(before_ms).max(0);
        let to_ms = timestamp_ms.saturating_add(after_ms).max(0);
        let matches = self.right.fetch(&key, from_ms, to_ms);
        let outer = self.kind != JoinKind::Inner;
        for (right_ms, right) in &matches {
            self.outer.remove(&(*right_ms, JoinSide::Right, key.clone()));
            out.push(JoinOutput::Joined {
                key: key.clone(),
                left: value.clone(),
                right: right.clone(),
                timestamp_ms: timestamp_ms.max(*right_ms),
            });
        }
        if outer && matches.is_empty() {
            if to_ms < self.stream_time_ms {
                out.push(JoinOutput::LeftOnly { key: key.clone(), left: value.clone(), timestamp_ms });
            } else {
                self.min_time_ms = self.min_time_ms.min(timestamp_ms);
                match self
                    .outer
                    .entry((timestamp_ms, JoinSide::Left, key.clone()))
                    .or_insert(Unmatched::Left(Vec::new()))
                {
                    Unmatched::Left(values) => values.push(value.clone()),
                    Unmatched::Right(_) => unreachable!("left entries hold left values"),
                }
            }
        }
        // Kafka's KStreamJoinWindow forwards to the join before it puts into its own store.
        self.left.put(key, timestamp_ms, value);
    }

    /// A record of the right stream at `timestamp_ms`, processed at wall-clock `now_ms`.
    pub fn process_right(
        &mut self,
        key: K,
        value: R,
        timestamp_ms: i64,
        now_ms: i64,
        out: &mut Vec<JoinOutput<K, L, R>>,
    ) {
        self.stream_time_ms = self.stream_time_ms.max(timestamp_ms);
        // The right side sees the windows reversed.
        let (before_ms, after_ms) = (self.windows.after_ms, self.windows.before_ms);
        if self.has_outer_store() && timestamp_ms == self.stream_time_ms {
            self.emit_closed_unmatched(after_ms, now_ms, out);
        }
        let from_ms = timestamp_ms.saturating_sub(before_ms).max(0);
        let to_ms = timestamp_ms.saturating_add(after_ms).max(0);
        let matches = self.left.fetch(&key, from_ms, to_ms);
        let outer = self.kind == JoinKind::Outer;
        for (left_ms, left) in &matches {
            if self.has_outer_store() {
                self.outer.remove(&(*left_ms, JoinSide::Left, key.clone()));
            }
            out.push(JoinOutput::Joined {
                key: key.clone(),
                left: left.clone(),
                right: value.clone(),
                timestamp_ms: timestamp_ms.max(*left_ms),
            });
        }
        if outer && matches.is_empty() {
            if to_ms < self.stream_time_ms {
                out.push(JoinOutput::RightOnly { key: key.clone(), right: value.clone(), timestamp_ms });
            } else {
                self.min_time_ms = self.min_time_ms.min(timestamp_ms);
                match self
                    .outer
                    .entry((timestamp_ms, JoinSide::Right, key.clone()))
                    .or_insert(Unmatched::Right(Vec::new()))
                {
                    Unmatched::Right(values) => values.push(value.clone()),
                    Unmatched::Left(_) => unreachable!("right entries hold right values"),
                }
            }
        }
        self.right.put(key, timestamp_ms, value);
    }

    /// Kafka's `emitNonJoinedOuterRecords`, with `join_after_ms` of the processing side.
    /// Lets the next sweep run whatever the wall clock says (after a replay of stored records,
    /// which sweeps with a clock of its own).
    pub fn reset_emit_timer(&mut self) {
        self.next_time_to_emit_ms = 0;
    }

    /// Emits unmatched records whose windows have closed, as an in-order record would (and
    /// subject to the same emit interval). Kafka sweeps only when records arrive; the runtime
    /// also calls this on wall-clock punctuation so that the last unmatched records come out
    /// when traffic stops.
    pub fn punctuate(&mut self, now_ms: i64, out: &mut Vec<JoinOutput<K, L, R>>) {
        if self.has_outer_store() && self.stream_time_ms != NO_TIMESTAMP {
            let look_back_ms = self.windows.after_ms.min(self.windows.before_ms);
            self.emit_closed_unmatched(look_back_ms, now_ms, out);
        }
    }

    fn emit_closed_unmatched(&mut self, join_after_ms: i64, now_ms: i64, out: &mut Vec<JoinOutput<K, L, R>>) {
        let grace_ms = self.windows.grace_ms;
        // Java's long arithmetic wraps; with `min_time == Long.MAX_VALUE` (nothing recorded
        // since a restart) the check passes and the store is read. Keep that.
        if self.min_time_ms.wrapping_add(join_after_ms).wrapping_add(grace_ms) >= self.stream_time_ms {
            return;
        }
        if now_ms < self.next_time_to_emit_ms {
            return;
        }
        self.next_time_to_emit_ms = now_ms.saturating_add(self.emit_interval_ms);
        self.min_time_ms = i64::MAX;

        let mut left_open = false;
        let mut right_open = false;
        let mut emitted = Vec::new();
        for (entry_key, values) in &self.outer {
            let (timestamp_ms, side, key) = entry_key;
            self.min_time_ms = *timestamp_ms;
            if left_open && right_open {
                break;
            }
            let look_back_ms = match side {
                JoinSide::Left => self.windows.after_ms,
                JoinSide::Right => self.windows.before_ms,
            };
            if timestamp_ms.wrapping_add(look_back_ms).wrapping_add(grace_ms) >= self.stream_time_ms {
                match side {
                    JoinSide::Left => left_open = true,
                    JoinSide::Right => right_open = true,
                }
                continue;
            }
            match values {
                Unmatched::Left(values) => out.extend(values.iter().map(|left| JoinOutput::LeftOnly {
                    key: key.clone(),
                    left: left.clone(),
                    timestamp_ms: *timestamp_ms,
                })),
                Unmatched::Right(values) => out.extend(values.iter().map(|right| JoinOutput::RightOnly {
                    key: key.clone(),
                    right: right.clone(),
                    timestamp_ms: *timestamp_ms,
                })),
            }
            emitted.push(entry_key.clone());
        }
        for entry_key in emitted {
            self.outer.remove(&entry_key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use proptest::prelude::*;

    type Join = StreamStreamJoin<u8, &'static str, &'static str>;
    type Out = Vec<JoinOutput<u8, &'static str, &'static str>>;

    fn windows(difference_ms: u64, grace_ms: u64) -> JoinWindows {
        JoinWindows::of_time_difference_and_grace(Duration::from_millis(difference_ms), Duration::from_millis(grace_ms))
            .unwrap()
    }

    fn left(join: &mut Join, key: u8, value: &'static str, ts: i64) -> Out {
        let mut out = Vec::new();
        join.process_left(key, value, ts, 0, &mut out);
        out
    }

    fn right(join: &mut Join, key: u8, value: &'static str, ts: i64) -> Out {
        let mut out = Vec::new();
        join.process_right(key, value, ts, 0, &mut out);
        out
    }

    fn joined(
        key: u8,
        left: &'static str,
        right: &'static str,
        timestamp_ms: i64,
    ) -> JoinOutput<u8, &'static str, &'static str> {
        JoinOutput::Joined { key, left, right, timestamp_ms }
    }

    #[test]
    fn inner_join_matches_within_before_and_after() {
        let mut join = Join::with_emit_interval(windows(10, 0).with_before_ms(2).unwrap(), JoinKind::Inner, 0);
        assert_eq!(left(&mut join, 1, "a", 20), []);
        // Right records join left ones within [t_right - after, t_right + before] = [t - 10, t + 2].
        assert_eq!(right(&mut join, 1, "A", 22), [joined(1, "a", "A", 22)]);
        assert_eq!(right(&mut join, 2, "B", 22), []);
        assert_eq!(left(&mut join, 1, "b", 24), [joined(1, "b", "A", 24)]);
        assert_eq!(right(&mut join, 1, "C", 30), [joined(1, "a", "C", 30), joined(1, "b", "C", 30)]);
        // Out of order: 17 joins right records in [15, 27].
        assert_eq!(left(&mut join, 1, "c", 17), [joined(1, "c", "A", 22)]);
    }

    #[test]
    fn left_join_waits_for_window_close_before_emitting_null() {
        let mut join = Join::with_emit_interval(windows(10, 5), JoinKind::Left, 0);
        assert_eq!(left(&mut join, 1, "a", 0), []);
        assert_eq!(join.pending_unmatched(), 1);
        // A later match removes it from the unmatched store: no spurious null result.
        assert_eq!(right(&mut join, 1, "A", 8), [joined(1, "a", "A", 8)]);
        assert_eq!(join.pending_unmatched(), 0);

        assert_eq!(left(&mut join, 2, "b", 9), []);
        // Stream time 24 = 9 + 10 + 5: still open.
        assert_eq!(right(&mut join, 3, "X", 24), []);
        // 25 > 24: closed, emitted with the left record's timestamp.
        assert_eq!(right(&mut join, 3, "Y", 25), [JoinOutput::LeftOnly { key: 2, left: "b", timestamp_ms: 9 }]);
        assert_eq!(join.pending_unmatched(), 0);
    }

    #[test]
    fn unmatched_out_of_order_record_past_its_window_is_emitted_at_once() {
        let mut join = Join::with_emit_interval(windows(10, 5), JoinKind::Left, 0);
        left(&mut join, 9, "z", 30);
        // 15 + 10 < 30: Kafka emits at once, without waiting for grace.
        assert_eq!(left(&mut join, 1, "a", 15), [JoinOutput::LeftOnly { key: 1, left: "a", timestamp_ms: 15 }]);
        // 20 + 10 = 30 is not < 30: it waits.
        assert_eq!(left(&mut join, 1, "b", 20), []);
        assert_eq!(join.pending_unmatched(), 2);
    }

    #[test]
    fn sweep_runs_only_on_in_order_records() {
        // before 20, after 10: "a" at 0 closes once stream time passes 10.
        let mut join = Join::with_emit_interval(windows(10, 0).with_before_ms(20).unwrap(), JoinKind::Left, 0);
        assert_eq!(left(&mut join, 1, "a", 0), []);
        // In order, but the right side's skip check uses its own after (20): 0 + 20 >= 15.
        assert_eq!(right(&mut join, 3, "X", 15), []);
        // Out of order (12 < 15): no sweep, though "a" has closed.
        assert_eq!(left(&mut join, 5, "c", 12), []);
        assert_eq!(left(&mut join, 6, "d", 16), [JoinOutput::LeftOnly { key: 1, left: "a", timestamp_ms: 0 }]);
    }

    #[test]
    fn sweep_is_throttled_by_wall_clock() {
        let mut join = Join::with_emit_interval(windows(10, 0), JoinKind::Left, 1000);
        let mut out = Vec::new();
        // The first in-order record sweeps the (empty) store at wall clock 0; the next sweep
        // may run at 1000.
        join.process_left(1, "a", 0, 0, &mut out);
        join.process_left(2, "b", 11, 0, &mut out);
        join.process_left(3, "c", 30, 999, &mut out);
        assert_eq!(out, []);
        join.process_left(4, "d", 31, 1000, &mut out);
        assert_eq!(
            out,
            [
                JoinOutput::LeftOnly { key: 1, left: "a", timestamp_ms: 0 },
                JoinOutput::LeftOnly { key: 2, left: "b", timestamp_ms: 11 }
            ]
        );
    }

    #[test]
    fn outer_join_closes_right_records_with_before() {
        // before 2, after 10: a right record at t closes once t + 2 + grace < stream time.
        let mut join = Join::with_emit_interval(windows(10, 0).with_before_ms(2).unwrap(), JoinKind::Outer, 0);
        assert_eq!(right(&mut join, 1, "A", 0), []);
        // Closed at stream time 5, but a left record's sweep is skipped while the oldest
        // waiting record + the left side's after (10) + grace >= stream time, as in Kafka.
        assert_eq!(left(&mut join, 2, "a", 5), []);
        // A right record checks with its own "after" (the windows' before, 2) and sweeps.
        assert_eq!(right(&mut join, 3, "B", 6), [JoinOutput::RightOnly { key: 1, right: "A", timestamp_ms: 0 }]);
        assert_eq!(join.pending_unmatched(), 2);
    }

    #[test]
    fn outer_join_orders_null_results_by_time_then_right_before_left() {
        let mut join = Join::with_emit_interval(windows(5, 0), JoinKind::Outer, 0);
        left(&mut join, 2, "a", 1);
        right(&mut join, 1, "A", 1);
        right(&mut join, 3, "B", 0);
        let out = left(&mut join, 9, "z", 100);
        assert_eq!(
            out,
            [
                JoinOutput::RightOnly { key: 3, right: "B", timestamp_ms: 0 },
                JoinOutput::RightOnly { key: 1, right: "A", timestamp_ms: 1 },
                JoinOutput::LeftOnly { key: 2, left: "a", timestamp_ms: 1 },
            ]
        );
    }

    #[test]
    fn records_older_than_size_plus_grace_are_gone_from_the_window_store() {
        // Size 20, grace 0: the right store keeps records above its max timestamp - 20.
        let mut join = Join::with_emit_interval(windows(10, 0), JoinKind::Inner, 0);
        right(&mut join, 1, "A", 5);
        right(&mut join, 2, "B", 25);
        // 12 would join 5 (|12 - 5| <= 10), but 5 <= 25 - 20 has expired.
        assert_eq!(left(&mut join, 1, "a", 12), []);
        assert_eq!(join.buffered(), 2);
        // With grace 10 the retention is 30 and it joins.
        let mut join = Join::with_emit_interval(windows(10, 10), JoinKind::Inner, 0);
        right(&mut join, 1, "A", 5);
        right(&mut join, 2, "B", 25);
        assert_eq!(left(&mut join, 1, "a", 12), [joined(1, "a", "A", 12)]);
    }

    #[test]
    fn invalid_join_windows_are_refused() {
        assert!(windows(10, 0).with_before_ms(-11).is_err());
        assert!(windows(10, 0).with_before_ms(-10).is_ok());
        assert_eq!(windows(10, 3).with_before_ms(-4).unwrap().size_ms(), 6);
        assert_eq!(windows(10, 3).retention_ms(), 23);
    }

    /// Which join a record belongs to in the models below.
    #[derive(Debug, Clone)]
    struct Input {
        is_left: bool,
        key: u8,
        ts: i64,
    }

    fn inputs(max_ts: i64) -> impl Strategy<Value = Vec<Input>> {
        proptest::collection::vec((any::<bool>(), 0u8..3, 0..max_ts), 1..40)
            .prop_map(|v| v.into_iter().map(|(is_left, key, ts)| Input { is_left, key, ts }).collect())
    }

    type Pair = (usize, usize, i64);

    /// Every (left index, right index, output timestamp) the window definition joins.
    fn brute_force_pairs(records: &[Input], before: i64, after: i64) -> BTreeSet<Pair> {
        let mut pairs = BTreeSet::new();
        for (i, l) in records.iter().enumerate().filter(|(_, r)| r.is_left) {
            for (j, r) in records.iter().enumerate().filter(|(_, r)| !r.is_left) {
                if l.key == r.key && r.ts >= l.ts - before && r.ts <= l.ts + after {
                    pairs.insert((i, j, l.ts.max(r.ts)));
                }
            }
        }
        pairs
    }

    fn run(join: &mut StreamStreamJoin<u8, usize, usize>, records: &[Input]) -> Vec<JoinOutput<u8, usize, usize>> {
        let mut out = Vec::new();
        for (index, record) in records.iter().enumerate() {
            if record.is_left {
                join.process_left(record.key, index, record.ts, 0, &mut out);
            } else {
                join.process_right(record.key, index, record.ts, 0, &mut out);
            }
        }
        out
    }

    fn unmatched_exactly_once(
        mut records: Vec<Input>,
        before: i64,
        after: i64,
        grace: i64,
        kind: JoinKind,
    ) -> Result<(), TestCaseError> {
        records.sort_by_key(|r| r.ts);
        let windows = windows(0, grace as u64).with_after_ms(after).unwrap().with_before_ms(before).unwrap();
        let mut join = StreamStreamJoin::with_emit_interval(windows, kind, 0);
        let mut out = run(&mut join, &records);
        // A record far ahead, on a key of its own, moves stream time past every window.
        join.process_left(u8::MAX, usize::MAX, 1_000, 0, &mut out);
        let pairs = brute_force_pairs(&records, before, after);
        let mut got_pairs = BTreeSet::new();
        let mut nulls = Vec::new();
        for output in out {
            match output {
                JoinOutput::Joined { left, right, timestamp_ms, .. } => {
                    prop_assert!(got_pairs.insert((left, right, timestamp_ms)), "pair emitted twice");
                }
                JoinOutput::LeftOnly { left: index, timestamp_ms, .. }
                | JoinOutput::RightOnly { right: index, timestamp_ms, .. } => {
                    prop_assert_eq!(timestamp_ms, records[index].ts);
                    nulls.push(index);
                }
            }
        }
        prop_assert_eq!(&got_pairs, &pairs);
        let matched: BTreeSet<usize> = pairs.iter().flat_map(|(l, r, _)| [*l, *r]).collect();
        let want_nulls: Vec<usize> = (0..records.len())
            .filter(|i| !matched.contains(i) && (records[*i].is_left || kind == JoinKind::Outer))
            .collect();
        nulls.sort_unstable();
        prop_assert_eq!(nulls, want_nulls);
        prop_assert_eq!(join.pending_unmatched(), 1, "only the record far ahead still waits");
        Ok(())
    }

    proptest! {
        /// In any order, with grace covering the disorder, the inner join finds exactly the
        /// pairs the window definition gives.
        #[test]
        fn inner_join_equals_brute_force(records in inputs(50), before in 0i64..8, after in 0i64..8) {
            let windows = windows(0, 1_000).with_after_ms(after).unwrap().with_before_ms(before).unwrap();
            let mut join = StreamStreamJoin::with_emit_interval(windows, JoinKind::Inner, 0);
            let got: BTreeSet<Pair> = run(&mut join, &records)
                .into_iter()
                .map(|out| match out {
                    JoinOutput::Joined { left, right, timestamp_ms, .. } => Ok((left, right, timestamp_ms)),
                    other => Err(TestCaseError::fail(format!("inner join emitted {other:?}"))),
                })
                .collect::<Result<_, _>>()?;
            prop_assert_eq!(got, brute_force_pairs(&records, before, after));
        }

        /// In timestamp order, a left join emits every pair once and every left record
        /// without a pair exactly once, null-padded, once its window closed: never a spurious
        /// null for a record that joins later.
        #[test]
        fn left_join_has_no_spurious_nulls(
            records in inputs(60),
            before in 0i64..8,
            after in 0i64..8,
            grace in 1i64..5,
        ) {
            unmatched_exactly_once(records, before, after, grace, JoinKind::Left)?;
        }

        /// The same for an outer join, on both sides.
        #[test]
        fn outer_join_has_no_spurious_nulls(
            records in inputs(60),
            before in 0i64..8,
            after in 0i64..8,
            grace in 1i64..5,
        ) {
            unmatched_exactly_once(records, before, after, grace, JoinKind::Outer)?;
        }
    }
}

//! Tumbling and hopping windows (Kafka's `TimeWindows`).

use std::time::Duration;

use super::{duration_ms, LateDecision, StreamTime, TimeWindow};
use crate::StreamsError;

/// Fixed-size windows aligned to the epoch: tumbling when `advance_ms == size_ms`, hopping
/// (overlapping) when `advance_ms < size_ms`. A window `[start, start + size)` contains the
/// timestamps `start <= t < start + size`; starts are multiples of `advance_ms`.
///
/// A window accepts records while `window_end > stream_time - grace` and is closed once
/// `window_end + grace <= stream_time` (Kafka's `KStreamWindowAggregate`: the record updates a
/// window iff `windowEnd > observedStreamTime - gracePeriodMs`; emit-final emits exactly the
/// windows it will no longer update).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindows {
    size_ms: i64,
    advance_ms: i64,
    grace_ms: i64,
}

impl TimeWindows {
    /// Tumbling windows of `size` that accept out-of-order records for `grace` after they end
    /// (`TimeWindows.ofSizeAndGrace`).
    pub fn of_size_with_grace(size: Duration, grace: Duration) -> Result<Self, StreamsError> {
        let size_ms = duration_ms("TimeWindows", "size", size)?;
        let grace_ms = duration_ms("TimeWindows", "grace", grace)?;
        if size_ms <= 0 {
            return Err(StreamsError::invalid_window("TimeWindows", "window size must be larger than zero"));
        }
        Ok(Self { size_ms, advance_ms: size_ms, grace_ms })
    }

    /// Tumbling windows of `size` without grace (`TimeWindows.ofSizeWithNoGrace`).
    pub fn of_size_with_no_grace(size: Duration) -> Result<Self, StreamsError> {
        Self::of_size_with_grace(size, Duration::ZERO)
    }

    /// Hopping windows: a new window every `advance` (`TimeWindows.advanceBy`); `advance` must
    /// lie in `(0, size]`.
    pub fn advance_by(self, advance: Duration) -> Result<Self, StreamsError> {
        let advance_ms = duration_ms("TimeWindows", "advance", advance)?;
        if advance_ms <= 0 || advance_ms > self.size_ms {
            return Err(StreamsError::invalid_window(
                "TimeWindows",
                format!("advance {advance_ms} ms must lie within interval (0, {}] ms", self.size_ms),
            ));
        }
        Ok(Self { advance_ms, ..self })
    }

    /// Window size in milliseconds.
    pub fn size_ms(&self) -> i64 {
        self.size_ms
    }

    /// Hop between window starts in milliseconds.
    pub fn advance_ms(&self) -> i64 {
        self.advance_ms
    }

    /// Grace period in milliseconds.
    pub fn grace_ms(&self) -> i64 {
        self.grace_ms
    }

    /// Every window containing `timestamp_ms`, by ascending start (`TimeWindows.windowsFor`):
    /// starts are multiples of `advance_ms`, never below zero, so a negative timestamp has
    /// none. An end past `i64::MAX` is capped there.
    pub fn windows_for(&self, timestamp_ms: i64) -> impl Iterator<Item = TimeWindow> + '_ {
        let lowest = timestamp_ms.saturating_sub(self.size_ms).saturating_add(self.advance_ms).max(0);
        let first_start = lowest / self.advance_ms * self.advance_ms;
        let size_ms = self.size_ms;
        std::iter::successors(Some(first_start), move |start| start.checked_add(self.advance_ms))
            .take_while(move |start| *start <= timestamp_ms)
            .map(move |start_ms| TimeWindow { start_ms, end_ms: start_ms.checked_add(size_ms).unwrap_or(i64::MAX) })
    }

    /// Whether `window` still accepts records at `stream_time_ms`.
    pub fn decide(&self, window: TimeWindow, stream_time_ms: i64) -> LateDecision {
        let close_time_ms = stream_time_ms.saturating_sub(self.grace_ms);
        if window.end_ms > close_time_ms {
            LateDecision::Accept
        } else {
            LateDecision::DropLate { window_end_ms: window.end_ms, close_time_ms }
        }
    }

    /// Whether `window` is closed at `stream_time_ms` (`window_end + grace <= stream_time`):
    /// its result is final and emit-on-window-close may emit it.
    pub fn is_closed(&self, window: TimeWindow, stream_time_ms: i64) -> bool {
        self.decide(window, stream_time_ms) != LateDecision::Accept
    }

    /// One record through a windowed aggregation: advances `stream_time` with the record (as
    /// Kafka does first), then splits the record's windows into those to update and those it
    /// is too late for. Kafka counts one dropped record per expired window.
    pub fn assign(&self, timestamp_ms: i64, stream_time: &mut StreamTime) -> TimeWindowAssignment {
        let now = stream_time.observe(timestamp_ms);
        let mut assignment = TimeWindowAssignment::default();
        for window in self.windows_for(timestamp_ms) {
            match self.decide(window, now) {
                LateDecision::Accept => assignment.update.push(window),
                LateDecision::DropLate { .. } => assignment.expired.push(window),
            }
        }
        assignment
    }
}

/// Where one record goes in a windowed aggregation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeWindowAssignment {
    /// Windows to update with the record, by ascending start.
    pub update: Vec<TimeWindow>,
    /// Windows the record is too late for (each is one dropped record in Kafka's metric).
    pub expired: Vec<TimeWindow>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use proptest::prelude::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn w(start_ms: i64, end_ms: i64) -> TimeWindow {
        TimeWindow { start_ms, end_ms }
    }

    #[test]
    fn tumbling_windows_are_start_inclusive_end_exclusive() {
        let windows = TimeWindows::of_size_with_no_grace(ms(10)).unwrap();
        assert_eq!(windows.windows_for(0).collect::<Vec<_>>(), [w(0, 10)]);
        assert_eq!(windows.windows_for(9).collect::<Vec<_>>(), [w(0, 10)]);
        assert_eq!(windows.windows_for(10).collect::<Vec<_>>(), [w(10, 20)]);
        assert_eq!(windows.windows_for(-1).count(), 0);
    }

    #[test]
    fn hopping_windows_contain_the_timestamp_and_start_at_multiples_of_advance() {
        let windows = TimeWindows::of_size_with_no_grace(ms(10)).unwrap().advance_by(ms(3)).unwrap();
        assert_eq!(windows.windows_for(11).collect::<Vec<_>>(), [w(3, 13), w(6, 16), w(9, 19)]);
        // Near the epoch, windows starting below zero do not exist.
        assert_eq!(windows.windows_for(2).collect::<Vec<_>>(), [w(0, 10)]);
        assert_eq!(windows.windows_for(12).collect::<Vec<_>>(), [w(3, 13), w(6, 16), w(9, 19), w(12, 22)]);
    }

    #[test]
    fn invalid_definitions_are_refused() {
        assert!(TimeWindows::of_size_with_no_grace(ms(0)).is_err());
        let windows = TimeWindows::of_size_with_no_grace(ms(10)).unwrap();
        assert!(windows.advance_by(ms(0)).is_err());
        let err = windows.advance_by(ms(11)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid TimeWindows: advance 11 ms must lie within interval (0, 10] ms (fix the \
             application's window definition)"
        );
        assert!(TimeWindows::of_size_with_grace(Duration::MAX, ms(0)).is_err());
    }

    #[test]
    fn window_closes_when_stream_time_reaches_end_plus_grace() {
        let windows = TimeWindows::of_size_with_grace(ms(10), ms(5)).unwrap();
        // Window [0, 10) closes at stream time 15.
        assert_eq!(windows.decide(w(0, 10), 14), LateDecision::Accept);
        assert_eq!(windows.decide(w(0, 10), 15), LateDecision::DropLate { window_end_ms: 10, close_time_ms: 10 });
        assert!(!windows.is_closed(w(0, 10), 14));
        assert!(windows.is_closed(w(0, 10), 15));
    }

    #[test]
    fn out_of_order_within_grace_is_accepted_and_beyond_is_dropped() {
        let windows = TimeWindows::of_size_with_grace(ms(10), ms(5)).unwrap();
        let mut time = StreamTime::new();
        assert_eq!(windows.assign(3, &mut time).update, [w(0, 10)]);
        assert_eq!(windows.assign(14, &mut time).update, [w(10, 20)]);
        // Out of order, stream time 14 < 10 + 5: still accepted.
        let late_ok = windows.assign(7, &mut time);
        assert_eq!((late_ok.update, late_ok.expired), (vec![w(0, 10)], vec![]));
        assert_eq!(time.ms(), 14);
        // Stream time 15 closes [0, 10).
        windows.assign(15, &mut time);
        let dropped = windows.assign(9, &mut time);
        assert_eq!((dropped.update, dropped.expired), (vec![], vec![w(0, 10)]));
    }

    #[test]
    fn hopping_record_can_be_late_for_some_of_its_windows_only() {
        let windows = TimeWindows::of_size_with_no_grace(ms(10)).unwrap().advance_by(ms(5)).unwrap();
        let mut time = StreamTime::at(12);
        // 8 is in [0, 10) (closed: 10 <= 12) and [5, 15) (open).
        let assignment = windows.assign(8, &mut time);
        assert_eq!(assignment.update, [w(5, 15)]);
        assert_eq!(assignment.expired, [w(0, 10)]);
    }

    #[test]
    fn window_end_is_capped_at_i64_max() {
        let windows = TimeWindows::of_size_with_no_grace(ms(10)).unwrap();
        let last = windows.windows_for(i64::MAX).collect::<Vec<_>>();
        let start_ms = i64::MAX / 10 * 10;
        assert_eq!(last, [w(start_ms, i64::MAX)]);
    }

    proptest! {
        /// A windowed count per key through `assign` (stream time, grace, late drops) equals a
        /// brute-force count: every window start that is a multiple of the advance and
        /// contains the record, counted iff stream time at arrival (including the record) is
        /// below `end + grace`.
        #[test]
        fn windowed_count_equals_brute_force(
            size_ms in 1i64..20,
            advance_pick in 0i64..20,
            grace_ms in 0i64..15,
            records in proptest::collection::vec((0u8..3, 0i64..100), 1..60),
        ) {
            let advance_ms = advance_pick % size_ms + 1;
            let windows = TimeWindows::of_size_with_grace(ms(size_ms as u64), ms(grace_ms as u64))
                .unwrap()
                .advance_by(ms(advance_ms as u64))
                .unwrap();
            let mut time = StreamTime::new();
            let mut counts: BTreeMap<(u8, i64), u64> = BTreeMap::new();
            let mut dropped = 0usize;
            for &(key, ts) in &records {
                let assignment = windows.assign(ts, &mut time);
                for window in assignment.update {
                    prop_assert_eq!(window.end_ms - window.start_ms, size_ms);
                    *counts.entry((key, window.start_ms)).or_default() += 1;
                }
                dropped += assignment.expired.len();
            }

            let mut want: BTreeMap<(u8, i64), u64> = BTreeMap::new();
            let mut want_dropped = 0usize;
            let mut max_seen = -1;
            for &(key, ts) in &records {
                max_seen = max_seen.max(ts);
                for start in (0..=ts).filter(|start| start % advance_ms == 0 && ts < start + size_ms) {
                    if max_seen < start + size_ms + grace_ms {
                        *want.entry((key, start)).or_default() += 1;
                    } else {
                        want_dropped += 1;
                    }
                }
            }
            prop_assert_eq!(counts, want);
            prop_assert_eq!(dropped, want_dropped);
            prop_assert_eq!(time.ms(), max_seen);
        }
    }
}

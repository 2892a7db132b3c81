//! Sans-IO window logic with Kafka Streams' semantics: functions of a record's timestamp and
//! the processor's stream time that return decisions (which windows a record updates, which it is
//! too late for, which sessions merge, which join results to emit). No I/O: the runtime reads
//! and writes its stores around these calls, except that [`StreamStreamJoin`] keeps its two
//! window stores and its outer-join store in memory itself.
//!
//! Timestamps are Kafka's: milliseconds since the epoch as `i64`. Records with negative
//! timestamps are refused before they get here (Kafka's timestamp extractors); the functions
//! do not panic on them, but only sliding windows refuse them with an error.

mod join;
mod session;
mod sliding;
mod stream_time;
mod time;

pub use join::{JoinKind, JoinOutput, JoinSide, JoinWindows, StreamStreamJoin, DEFAULT_OUTER_JOIN_EMIT_INTERVAL_MS};
pub use session::{SessionMerge, SessionWindows};
pub use sliding::{SlidingUpdate, SlidingWindowAggregate, SlidingWindows};
pub use stream_time::{LateDecision, StreamTime};
pub use time::{TimeWindowAssignment, TimeWindows};

/// A fixed-size window: `[start_ms, end_ms)`, start inclusive, end exclusive (Kafka's
/// `TimeWindow`). Sliding windows use the same type, but both of their ends are inclusive
/// (as in Kafka, whose sliding windows are `TimeWindow`s `[t - diff, t]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimeWindow {
    /// First millisecond in the window.
    pub start_ms: i64,
    /// First millisecond after the window (hopping and tumbling windows).
    pub end_ms: i64,
}

/// A session: `[start_ms, end_ms]`, both inclusive; the timestamps of its first and last
/// records (Kafka's `SessionWindow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionWindow {
    /// Timestamp of the session's earliest record.
    pub start_ms: i64,
    /// Timestamp of the session's latest record.
    pub end_ms: i64,
}

/// A key and the window it was aggregated in (Kafka's `Windowed<K>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Windowed<K, W> {
    /// The grouping key.
    pub key: K,
    /// The window.
    pub window: W,
}

fn duration_ms(what: &'static str, name: &str, duration: std::time::Duration) -> Result<i64, crate::StreamsError> {
    i64::try_from(duration.as_millis()).map_err(|_| {
        crate::StreamsError::invalid_window(what, format!("{name} {duration:?} does not fit in i64 milliseconds"))
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Record timestamps come from producers: no value makes the window logic panic.
        #[test]
        fn any_timestamp_is_handled_without_panicking(
            timestamps in proptest::collection::vec(prop_oneof![any::<i64>(), Just(i64::MAX), Just(i64::MIN), -5i64..5], 1..20),
            size_ms in 1u64..1_000,
        ) {
            let size = Duration::from_millis(size_ms);
            let time_windows = TimeWindows::of_size_with_grace(size, size).unwrap();
            let sessions = SessionWindows::of_inactivity_gap_and_grace(size, size).unwrap();
            let sliding = SlidingWindows::of_time_difference_and_grace(size, size).unwrap();
            let mut join = StreamStreamJoin::with_emit_interval(
                JoinWindows::of_time_difference_and_grace(size, size).unwrap(),
                JoinKind::Outer,
                0,
            );
            let (mut t1, mut t2, mut t3) = (StreamTime::new(), StreamTime::new(), StreamTime::new());
            let mut out = Vec::new();
            for (i, &ts) in timestamps.iter().enumerate() {
                let assignment = time_windows.assign(ts, &mut t1);
                prop_assert!(assignment.update.iter().chain(&assignment.expired).all(|w| w.start_ms <= ts && ts < w.end_ms || w.end_ms == i64::MAX));
                let merge = sessions.merge(ts, &[SessionWindow { start_ms: ts.saturating_sub(1), end_ms: ts }], &mut t2);
                prop_assert!(merge.window.start_ms <= ts && ts <= merge.window.end_ms);
                let _ = sliding.aggregate(ts, &[], &mut t3, || 0u64, |c| c + 1);
                if i % 2 == 0 {
                    join.process_left(0u8, i, ts, 0, &mut out);
                } else {
                    join.process_right(0u8, i, ts, 0, &mut out);
                }
            }
        }
    }
}

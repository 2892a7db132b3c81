//! Sliding windows (Kafka's `SlidingWindows`, KIP-450): record-driven windows of a fixed time
//! difference, both ends inclusive.

use std::time::Duration;

use super::{duration_ms, LateDecision, StreamTime, TimeWindow};
use crate::StreamsError;

/// Sliding windows of `time_difference_ms`: two records are in a common window when their
/// timestamps differ by at most that much. Only windows that records define exist: each
/// record `t` has a left window `[t - diff, t]` (records before `diff` share `[0, diff]`) and,
/// once a later record falls into it, a right window `[t + 1, t + 1 + diff]`. Window `end`s
/// here are inclusive.
///
/// A window accepts records while `end >= stream_time - grace`; a record is dropped
/// altogether when `t + diff < stream_time - grace` (Kafka's `KStreamSlidingWindowAggregate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindows {
    time_difference_ms: i64,
    grace_ms: i64,
}

/// One stored sliding window of a key and its aggregate (Kafka's window store entry with
/// `ValueAndTimestamp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlidingWindowAggregate<A> {
    /// The window, `end_ms = start_ms + time_difference_ms`, inclusive.
    pub window: TimeWindow,
    /// The aggregate of the records in it.
    pub aggregate: A,
    /// The largest record timestamp in it.
    pub max_timestamp_ms: i64,
}

/// What one record does to a key's sliding windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlidingUpdate<A> {
    /// Accept, or drop the whole record as late.
    pub decision: LateDecision,
    /// Windows to write, in Kafka's order (a window may appear twice; the later write wins).
    pub puts: Vec<SlidingWindowAggregate<A>>,
    /// Windows the record falls in but that have closed (each one dropped record in
    /// Kafka's metric).
    pub expired: Vec<TimeWindow>,
}

impl SlidingWindows {
    /// Windows of `time_difference` with `grace` for out-of-order records
    /// (`SlidingWindows.ofTimeDifferenceAndGrace`).
    pub fn of_time_difference_and_grace(time_difference: Duration, grace: Duration) -> Result<Self, StreamsError> {
        let time_difference_ms = duration_ms("SlidingWindows", "time difference", time_difference)?;
        let grace_ms = duration_ms("SlidingWindows", "grace", grace)?;
        if time_difference_ms.checked_add(grace_ms).and_then(|sum| sum.checked_mul(2)).is_none() {
            return Err(StreamsError::invalid_window("SlidingWindows", "time difference plus grace overflows"));
        }
        Ok(Self { time_difference_ms, grace_ms })
    }

    /// Windows without grace (`SlidingWindows.ofTimeDifferenceWithNoGrace`).
    pub fn of_time_difference_with_no_grace(time_difference: Duration) -> Result<Self, StreamsError> {
        Self::of_time_difference_and_grace(time_difference, Duration::ZERO)
    }

    /// Time difference in milliseconds.
    pub fn time_difference_ms(&self) -> i64 {
        self.time_difference_ms
    }

    /// Grace period in milliseconds.
    pub fn grace_ms(&self) -> i64 {
        self.grace_ms
    }

    /// The window-start range (inclusive) of the store fetch for a record at `timestamp_ms`:
    /// pass every stored window of the key starting in it to [`Self::aggregate`].
    pub fn fetch_range_ms(&self, timestamp_ms: i64) -> (i64, i64) {
        if timestamp_ms < self.time_difference_ms {
            (0, timestamp_ms + 1)
        } else {
            ((timestamp_ms - 2 * self.time_difference_ms).max(0), timestamp_ms + 1)
        }
    }

    /// Whether `window` is closed at `stream_time_ms` (`end + grace < stream_time`): its
    /// result is final.
    pub fn is_closed(&self, window: TimeWindow, stream_time_ms: i64) -> bool {
        window.end_ms < stream_time_ms - self.grace_ms
    }

    /// One record at `timestamp_ms` with the key's stored windows `existing` (those starting
    /// in [`Self::fetch_range_ms`]; others are ignored). Advances `stream_time` first, as Kafka
    /// does. `initializer` makes an empty aggregate, `aggregator` adds the record to one.
    ///
    /// Fails only when `existing` holds a window these windows cannot have created.
    pub fn aggregate<A: Clone>(
        &self,
        timestamp_ms: i64,
        existing: &[SlidingWindowAggregate<A>],
        stream_time: &mut StreamTime,
        initializer: impl Fn() -> A,
        aggregator: impl FnMut(&A) -> A,
    ) -> Result<SlidingUpdate<A>, StreamsError> {
        let now = stream_time.observe(timestamp_ms);
        let close_time_ms = now - self.grace_ms;
        let diff = self.time_difference_ms;
        let mut run = Run {
            diff,
            timestamp_ms,
            close_time_ms,
            aggregator,
            update: SlidingUpdate { decision: LateDecision::Accept, puts: Vec::new(), expired: Vec::new() },
        };
        if timestamp_ms + diff < close_time_ms {
            run.update.decision = LateDecision::DropLate { window_end_ms: timestamp_ms + diff, close_time_ms };
            return Ok(run.update);
        }
        let (from_ms, to_ms) = self.fetch_range_ms(timestamp_ms);
        let mut windows: Vec<&SlidingWindowAggregate<A>> =
            existing.iter().filter(|w| w.window.start_ms >= from_ms && w.window.start_ms <= to_ms).collect();
        windows.sort_by_key(|w| w.window.start_ms);
        if timestamp_ms < diff {
            self.process_early(&mut run, &windows, initializer)?;
        } else {
            self.process_in_order(&mut run, &windows, initializer)?;
        }
        Ok(run.update)
    }

    fn process_in_order<A: Clone, F: FnMut(&A) -> A>(
        &self,
        run: &mut Run<A, F>,
        windows: &[&SlidingWindowAggregate<A>],
        initializer: impl Fn() -> A,
    ) -> Result<(), StreamsError> {
        let ts = run.timestamp_ms;
        let diff = self.time_difference_ms;
        let mut starts = Vec::with_capacity(windows.len());
        let mut left_aggregate: Option<&A> = None;
        let mut right_aggregate: Option<(&A, i64)> = None;
        let mut left_exists = false;
        let mut right_exists = false;
        let mut previous_ms: Option<i64> = None;
        for stored in windows {
            let start_ms = stored.window.start_ms;
            starts.push(start_ms);
            let end_ms = start_ms + diff;
            if end_ms < ts {
                // The newest window ending before the record holds exactly the records of the
                // latest timestamp before it.
                left_aggregate = Some(&stored.aggregate);
                previous_ms = Some(stored.max_timestamp_ms);
            } else if end_ms == ts {
                left_exists = true;
                if stored.max_timestamp_ms < ts {
                    previous_ms = Some(stored.max_timestamp_ms);
                }
                run.update_window(stored.window, &stored.aggregate, stored.max_timestamp_ms);
            } else if start_ms <= ts {
                right_aggregate = Some((&stored.aggregate, stored.max_timestamp_ms));
                run.update_window(stored.window, &stored.aggregate, stored.max_timestamp_ms);
            } else if start_ms == ts + 1 {
                right_exists = true;
            } else {
                return Err(unexpected(start_ms, ts));
            }
        }

        if let Some(previous_ms) = previous_ms {
            let previous_right_start_ms = previous_ms + 1;
            if !starts.contains(&previous_right_start_ms) && previous_right_start_ms + diff >= ts {
                let window = TimeWindow { start_ms: previous_right_start_ms, end_ms: previous_right_start_ms + diff };
                run.update_window(window, &initializer(), ts);
            }
        }
        if !left_exists {
            let window = TimeWindow { start_ms: ts - diff, end_ms: ts };
            match (previous_ms, left_aggregate) {
                (Some(previous_ms), Some(aggregate)) if ts - diff <= previous_ms => {
                    run.update_window(window, aggregate, ts)
                }
                _ => run.update_window(window, &initializer(), ts),
            }
        }
        if let Some((aggregate, max_ms)) = right_aggregate {
            if !right_exists && max_ms > ts {
                run.create_right_window(aggregate, max_ms);
            }
        }
        Ok(())
    }

    /// Records before `diff`: their left windows would start below zero, so they share the
    /// window `[0, diff]` (Kafka's `processEarly`).
    fn process_early<A: Clone, F: FnMut(&A) -> A>(
        &self,
        run: &mut Run<A, F>,
        windows: &[&SlidingWindowAggregate<A>],
        initializer: impl Fn() -> A,
    ) -> Result<(), StreamsError> {
        let ts = run.timestamp_ms;
        let diff = self.time_difference_ms;
        let mut starts = Vec::with_capacity(windows.len());
        let mut combined: Option<&SlidingWindowAggregate<A>> = None;
        let mut right_aggregate: Option<(&A, i64)> = None;
        let mut right_exists = false;
        let mut previous_ms: Option<i64> = None;
        for stored in windows {
            let start_ms = stored.window.start_ms;
            starts.push(start_ms);
            if start_ms == 0 {
                combined = Some(stored);
                // If a later record is in it, the previous record's right window exists already.
                if stored.max_timestamp_ms < ts {
                    previous_ms = Some(stored.max_timestamp_ms);
                }
            } else if start_ms <= ts {
                right_aggregate = Some((&stored.aggregate, stored.max_timestamp_ms));
                run.update_window(stored.window, &stored.aggregate, stored.max_timestamp_ms);
            } else if start_ms == ts + 1 {
                right_exists = true;
            } else {
                return Err(unexpected(start_ms, ts));
            }
        }
        // Without a right window of an earlier record, the combined window holds only records
        // after this one when its newest record is after this one.
        if right_aggregate.is_none() {
            if let Some(combined) = combined {
                if combined.max_timestamp_ms > ts {
                    right_aggregate = Some((&combined.aggregate, combined.max_timestamp_ms));
                }
            }
        }
        if let Some((aggregate, max_ms)) = right_aggregate {
            if !right_exists && max_ms > ts {
                run.create_right_window(aggregate, max_ms);
            }
        }
        if let Some(previous_ms) = previous_ms {
            if !starts.contains(&(previous_ms + 1)) {
                let window = TimeWindow { start_ms: previous_ms + 1, end_ms: previous_ms + 1 + diff };
                run.update_window(window, &initializer(), ts);
            }
        }
        match combined {
            None => run.update_window(TimeWindow { start_ms: 0, end_ms: diff }, &initializer(), ts),
            Some(stored) => run.update_window(stored.window, &stored.aggregate, stored.max_timestamp_ms),
        }
        Ok(())
    }
}

fn unexpected(start_ms: i64, timestamp_ms: i64) -> StreamsError {
    StreamsError::InconsistentWindowStore {
        reason: format!("sliding window starting at {start_ms} ms cannot exist beside a record at {timestamp_ms} ms"),
    }
}

/// The state of one `aggregate` call.
struct Run<A, F> {
    diff: i64,
    timestamp_ms: i64,
    close_time_ms: i64,
    aggregator: F,
    update: SlidingUpdate<A>,
}

impl<A: Clone, F: FnMut(&A) -> A> Run<A, F> {
    /// Kafka's `updateWindowAndForward`: add the record to `base` unless the window closed.
    fn update_window(&mut self, window: TimeWindow, base: &A, base_max_ms: i64) {
        if window.end_ms >= self.close_time_ms {
            let aggregate = (self.aggregator)(base);
            let max_timestamp_ms = self.timestamp_ms.max(base_max_ms);
            self.update.puts.push(SlidingWindowAggregate { window, aggregate, max_timestamp_ms });
        } else {
            self.update.expired.push(window);
        }
    }

    /// Kafka's `createCurrentRecordRightWindow`: a copy of the aggregate of the records after
    /// this one, without this record and without a close check (its end is past the record's
    /// own, which was checked).
    fn create_right_window(&mut self, aggregate: &A, max_timestamp_ms: i64) {
        let start_ms = self.timestamp_ms + 1;
        let window = TimeWindow { start_ms, end_ms: start_ms + self.diff };
        self.update.puts.push(SlidingWindowAggregate { window, aggregate: aggregate.clone(), max_timestamp_ms });
    }
}

//! Session windows (Kafka's `SessionWindows`): per-key periods of activity separated by at
//! least an inactivity gap.

use std::time::Duration;

use super::{duration_ms, LateDecision, SessionWindow, StreamTime};
use crate::StreamsError;

/// Sessions with an inactivity gap and a grace period. Two records of a key are in one session
/// when a chain of that key's records joins them with no step longer than the gap.
///
/// A record is dropped as late when the session it would end up in ends before
/// `stream_time - grace - gap` (Kafka's `KStreamSessionWindowAggregate`: `windowCloseTime =
/// observedStreamTime - gracePeriodMs - inactivityGap`, drop iff `mergedWindow.end() <
/// windowCloseTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionWindows {
    inactivity_gap_ms: i64,
    grace_ms: i64,
}

impl SessionWindows {
    /// Sessions closed by `inactivity_gap` without records, accepting records for `grace`
    /// after that (`SessionWindows.ofInactivityGapAndGrace`).
    pub fn of_inactivity_gap_and_grace(inactivity_gap: Duration, grace: Duration) -> Result<Self, StreamsError> {
        let inactivity_gap_ms = duration_ms("SessionWindows", "inactivity gap", inactivity_gap)?;
        let grace_ms = duration_ms("SessionWindows", "grace", grace)?;
        if inactivity_gap_ms <= 0 {
            return Err(StreamsError::invalid_window("SessionWindows", "gap must be larger than zero"));
        }
        Ok(Self { inactivity_gap_ms, grace_ms })
    }

    /// Sessions without grace (`SessionWindows.ofInactivityGapWithNoGrace`).
    pub fn of_inactivity_gap_with_no_grace(inactivity_gap: Duration) -> Result<Self, StreamsError> {
        Self::of_inactivity_gap_and_grace(inactivity_gap, Duration::ZERO)
    }

    /// Inactivity gap in milliseconds.
    pub fn inactivity_gap_ms(&self) -> i64 {
        self.inactivity_gap_ms
    }

    /// Grace period in milliseconds.
    pub fn grace_ms(&self) -> i64 {
        self.grace_ms
    }

    /// The session-store query for a record at `timestamp_ms` (Kafka's `findSessions(key,
    /// earliestSessionEndTime, latestSessionStartTime)`): the sessions of its key that end at
    /// or after the first value and start at or before the second.
    pub fn search_range_ms(&self, timestamp_ms: i64) -> (i64, i64) {
        (timestamp_ms.saturating_sub(self.inactivity_gap_ms), timestamp_ms.saturating_add(self.inactivity_gap_ms))
    }

    /// Kafka's close time for sessions at `stream_time_ms`: a session ending before it is
    /// closed.
    pub fn close_time_ms(&self, stream_time_ms: i64) -> i64 {
        stream_time_ms.saturating_sub(self.grace_ms).saturating_sub(self.inactivity_gap_ms)
    }

    /// Whether `session` is final at `stream_time_ms` (`end < stream_time - grace - gap`): the
    /// sessions Kafka's emit-on-window-close emits. A later record can still merge into it
    /// only if the store still returns it, which Kafka's store stops doing once its end is
    /// [`Self::retention_ms`] behind the store's newest session end.
    pub fn is_closed(&self, session: SessionWindow, stream_time_ms: i64) -> bool {
        session.end_ms < self.close_time_ms(stream_time_ms)
    }

    /// Kafka's default session-store retention, `gap + grace`: a stored session whose end is
    /// at or below `newest stored end - retention` is no longer returned by the store.
    pub fn retention_ms(&self) -> i64 {
        self.inactivity_gap_ms.saturating_add(self.grace_ms)
    }

    /// One record of a key at `timestamp_ms`, given that key's stored sessions `existing`: what
    /// the session store returns for [`Self::search_range_ms`], which excludes sessions past
    /// its retention (see [`Self::retention_ms`]); sessions outside the range are ignored here.
    /// Advances `stream_time` first, as Kafka does.
    ///
    /// The returned [`SessionMerge::window`] spans the record and every overlapping session.
    /// Unless the record is dropped, the caller merges the aggregates of
    /// [`SessionMerge::merged`] (Kafka's `Merger`, in store order) into a fresh one, applies
    /// the record, deletes (and forwards a tombstone for) each of [`SessionMerge::removed`],
    /// and stores the result under the new window.
    pub fn merge(&self, timestamp_ms: i64, existing: &[SessionWindow], stream_time: &mut StreamTime) -> SessionMerge {
        let now = stream_time.observe(timestamp_ms);
        let (earliest_end_ms, latest_start_ms) = self.search_range_ms(timestamp_ms);
        let record_window = SessionWindow { start_ms: timestamp_ms, end_ms: timestamp_ms };
        let mut window = record_window;
        let mut merged = Vec::new();
        for session in existing {
            if session.end_ms >= earliest_end_ms && session.start_ms <= latest_start_ms {
                window.start_ms = window.start_ms.min(session.start_ms);
                window.end_ms = window.end_ms.max(session.end_ms);
                merged.push(*session);
            }
        }
        let close_time_ms = self.close_time_ms(now);
        let decision = if window.end_ms < close_time_ms {
            LateDecision::DropLate { window_end_ms: window.end_ms, close_time_ms }
        } else {
            LateDecision::Accept
        };
        // Kafka deletes the merged sessions only when the merged window differs from the
        // record's own `[t, t]`; otherwise the put under the same window replaces the one
        // equal session, and no tombstone is forwarded.
        let removed =
            if decision == LateDecision::Accept && window != record_window { merged.clone() } else { Vec::new() };
        SessionMerge { decision, window, merged, removed }
    }
}

/// The outcome of one record in a session-windowed aggregation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionMerge {
    /// Accept, or drop as late (then nothing changes in the store).
    pub decision: LateDecision,
    /// The session the record belongs to: the record's `[t, t]` widened by every merged
    /// session.
    pub window: SessionWindow,
    /// Stored sessions that overlap the record's gap range, in the order given; their
    /// aggregates are merged into the new one.
    pub merged: Vec<SessionWindow>,
    /// Sessions to delete from the store (empty when dropped, or when the record only
    /// repeats a one-point session).
    pub removed: Vec<SessionWindow>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use proptest::prelude::*;

    fn s(start_ms: i64, end_ms: i64) -> SessionWindow {
        SessionWindow { start_ms, end_ms }
    }

    fn windows(gap_ms: u64, grace_ms: u64) -> SessionWindows {
        SessionWindows::of_inactivity_gap_and_grace(Duration::from_millis(gap_ms), Duration::from_millis(grace_ms))
            .unwrap()
    }

    #[test]
    fn a_record_between_two_sessions_merges_them() {
        let sessions = windows(10, 0);
        let mut time = StreamTime::at(40);
        let merge = sessions.merge(25, &[s(0, 15), s(35, 40)], &mut time);
        assert_eq!(merge.decision, LateDecision::Accept);
        assert_eq!(merge.window, s(0, 40));
        assert_eq!(merge.removed, [s(0, 15), s(35, 40)]);
    }

    #[test]
    fn gap_boundary_is_inclusive() {
        let sessions = windows(10, 100);
        let mut time = StreamTime::new();
        // 10 ms after the end: merges; 11 ms: a new session.
        assert_eq!(sessions.merge(20, &[s(0, 10)], &mut time).window, s(0, 20));
        let apart = sessions.merge(21, &[s(0, 10)], &mut time);
        assert_eq!((apart.window, apart.merged.len()), (s(21, 21), 0));
    }

    #[test]
    fn record_inside_a_session_removes_and_rewrites_it() {
        let sessions = windows(10, 0);
        let mut time = StreamTime::at(20);
        let merge = sessions.merge(5, &[s(0, 20)], &mut time);
        assert_eq!((merge.window, merge.removed), (s(0, 20), vec![s(0, 20)]));
        // Repeating a one-point session: no delete, the put replaces it.
        let same = sessions.merge(20, &[s(20, 20)], &mut time);
        assert_eq!((same.window, same.merged, same.removed), (s(20, 20), vec![s(20, 20)], vec![]));
    }

    #[test]
    fn late_session_is_dropped_only_past_gap_plus_grace() {
        let sessions = windows(10, 5);
        let mut time = StreamTime::at(100);
        // Close time is 100 - 5 - 10 = 85: a session ending at 85 still takes records.
        assert_eq!(sessions.merge(85, &[], &mut time).decision, LateDecision::Accept);
        assert_eq!(
            sessions.merge(84, &[], &mut time).decision,
            LateDecision::DropLate { window_end_ms: 84, close_time_ms: 85 }
        );
        // A late record that joins a session still open is accepted.
        let joined = sessions.merge(80, &[s(85, 90)], &mut time);
        assert_eq!((joined.decision, joined.window), (LateDecision::Accept, s(80, 90)));
        let dropped = sessions.merge(70, &[s(75, 80)], &mut time);
        assert_eq!((dropped.window, dropped.removed.len()), (s(70, 80), 0));
        assert!(matches!(dropped.decision, LateDecision::DropLate { .. }));
        assert!(sessions.is_closed(s(70, 84), 100));
        assert!(!sessions.is_closed(s(70, 85), 100));
    }

    #[test]
    fn zero_gap_is_refused() {
        assert!(SessionWindows::of_inactivity_gap_with_no_grace(Duration::ZERO).is_err());
    }

    /// Sessions of sorted timestamps: runs whose neighbours are at most `gap` apart.
    fn clusters(mut timestamps: Vec<i64>, gap: i64) -> Vec<(SessionWindow, u64)> {
        timestamps.sort_unstable();
        let mut sessions: Vec<(SessionWindow, u64)> = Vec::new();
        for ts in timestamps {
            match sessions.last_mut() {
                Some((window, count)) if ts - window.end_ms <= gap => {
                    window.end_ms = ts;
                    *count += 1;
                }
                _ => sessions.push((s(ts, ts), 1)),
            }
        }
        sessions
    }

    proptest! {
        /// A session count per key kept by applying `merge` to a store equals sessions
        /// recomputed from scratch over the accepted records, and a record is dropped exactly
        /// when the session it would join ends before `stream_time - gap - grace`.
        #[test]
        fn session_count_equals_brute_force(
            gap_ms in 1i64..10,
            grace_ms in 0i64..10,
            records in proptest::collection::vec((0u8..2, 0i64..100), 1..60),
        ) {
            let sessions = windows(gap_ms as u64, grace_ms as u64);
            let mut time = StreamTime::new();
            let mut store: BTreeMap<u8, Vec<(SessionWindow, u64)>> = BTreeMap::new();
            let mut accepted: BTreeMap<u8, Vec<i64>> = BTreeMap::new();
            let mut max_seen = -1;
            for &(key, ts) in &records {
                max_seen = max_seen.max(ts);
                let mut with_record = accepted.get(&key).cloned().unwrap_or_default();
                with_record.push(ts);
                let (own, _) = clusters(with_record, gap_ms)
                    .into_iter()
                    .find(|(window, _)| window.start_ms <= ts && ts <= window.end_ms)
                    .unwrap();
                let want_accept = own.end_ms >= max_seen - grace_ms - gap_ms;

                let stored = store.entry(key).or_default();
                let existing: Vec<SessionWindow> = stored.iter().map(|(window, _)| *window).collect();
                let merge = sessions.merge(ts, &existing, &mut time);
                prop_assert_eq!(merge.decision == LateDecision::Accept, want_accept);
                if want_accept {
                    prop_assert_eq!(merge.window, own);
                    let merged_count: u64 =
                        stored.iter().filter(|(window, _)| merge.merged.contains(window)).map(|(_, count)| count).sum();
                    stored.retain(|(window, _)| !merge.removed.contains(window) && *window != merge.window);
                    stored.push((merge.window, merged_count + 1));
                    stored.sort_unstable();
                    accepted.entry(key).or_default().push(ts);
                }
            }
            for (key, timestamps) in accepted {
                prop_assert_eq!(&store[&key], &clusters(timestamps, gap_ms));
            }
        }
    }
}

//! The window logic of continuous queries, sans-IO: event time and the watermark (with lateness
//! and the idle timeout), which windows a record belongs to, which windows close when the
//! watermark moves, and the per-key session index.
//!
//! Semantics follow the spate-streams DSL (Kafka Streams) with `grace = lateness`, so that a
//! query's results equal a `windowed_by(…)` aggregation with `EmitStrategy::OnWindowClose`:
//! - watermark = max event time seen − lateness;
//! - a time window `[start, end)` is closed (emitted, then no longer updated) once
//!   `end <= watermark`; a record is accepted iff one of its windows is still open;
//! - a session (a key's records chained by steps of at most `gap`) is closed once
//!   `last + gap < watermark`; a record is dropped iff its session would be closed.
//!   `window_end` of a session is `last + gap` (Flink's), Kafka's session end is `last`.

use std::collections::{BTreeSet, HashMap};

use super::analyze::WindowSpec;

/// A window as continuous queries emit it: `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
}

/// Event time of one task: the watermark, how it advances with records and with the wall clock
/// when the task is idle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventClock {
    /// Largest event time seen (or advanced to while idle); -1 before any.
    pub stream_time_ms: i64,
    lateness_ms: i64,
    idle_timeout_ms: Option<i64>,
    /// Wall clock and stream time when the last record arrived (None: none since start).
    last_record: Option<(i64, i64)>,
}

impl EventClock {
    /// A clock resumed at `stream_time_ms` (-1: new).
    pub fn new(stream_time_ms: i64, lateness_ms: i64, idle_timeout_ms: Option<i64>) -> Self {
        EventClock { stream_time_ms, lateness_ms, idle_timeout_ms, last_record: None }
    }

    /// max event time − lateness (i64::MIN before any record).
    pub fn watermark_ms(&self) -> i64 {
        if self.stream_time_ms < 0 {
            i64::MIN
        } else {
            self.stream_time_ms.saturating_sub(self.lateness_ms)
        }
    }

    /// A record at `event_ms` arrives at wall-clock `wall_ms`; returns the watermark.
    pub fn observe(&mut self, event_ms: i64, wall_ms: i64) -> i64 {
        self.stream_time_ms = self.stream_time_ms.max(event_ms);
        self.last_record = Some((wall_ms, self.stream_time_ms));
        self.watermark_ms()
    }

    /// The idle timeout: once no record arrived for `idle_timeout` of wall-clock time, stream
    /// time advances with the wall clock from the last record on (`stream time at the last
    /// record + wall-clock time since it`), so that windows of an idle task close. Returns the
    /// watermark. Without an idle timeout, or before any record since start, nothing moves.
    pub fn idle_tick(&mut self, wall_ms: i64) -> i64 {
        if let (Some(timeout), Some((last_wall, last_stream))) = (self.idle_timeout_ms, self.last_record) {
            let idle = wall_ms.saturating_sub(last_wall);
            if idle >= timeout {
                self.stream_time_ms = self.stream_time_ms.max(last_stream.saturating_add(idle));
            }
        }
        self.watermark_ms()
    }
}

/// The event time of one input of a task, per source partition (Flink's watermark per input
/// channel): records and watermark markers from the keying stage advance the clock of the source
/// partition they come from, and the watermark is the minimum over all of them, so a source
/// partition read later than another (a backlog) is not made late by it. A partition never heard
/// from holds the watermark back, until `idle_timeout` after the task started when there is one;
/// one that goes quiet advances with the wall clock after `idle_timeout` ([`EventClock::idle_tick`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionClocks {
    clocks: Vec<EventClock>,
    lateness_ms: i64,
    idle_timeout_ms: Option<i64>,
    started_wall_ms: i64,
}

impl PartitionClocks {
    /// Clocks resumed at `times_ms` (-1: never heard from), at least `partitions` of them.
    pub fn new(
        mut times_ms: Vec<i64>,
        partitions: usize,
        lateness_ms: i64,
        idle_timeout_ms: Option<i64>,
        wall_ms: i64,
    ) -> Self {
        times_ms.resize(times_ms.len().max(partitions).max(1), -1);
        let clocks = times_ms.into_iter().map(|t| EventClock::new(t, lateness_ms, idle_timeout_ms)).collect();
        PartitionClocks { clocks, lateness_ms, idle_timeout_ms, started_wall_ms: wall_ms }
    }

    /// A record (or a marker) of source `partition` at `event_ms`.
    pub fn observe(&mut self, partition: i32, event_ms: i64, wall_ms: i64) {
        let Ok(index) = usize::try_from(partition) else { return };
        if index >= self.clocks.len() {
            // The source topic has grown.
            self.clocks.resize(index + 1, EventClock::new(-1, self.lateness_ms, self.idle_timeout_ms));
        }
        self.clocks[index].observe(event_ms, wall_ms);
    }

    pub fn idle_tick(&mut self, wall_ms: i64) {
        for clock in &mut self.clocks {
            clock.idle_tick(wall_ms);
        }
    }

    /// min over the partitions of (their max event time − lateness); i64::MIN while one that
    /// still counts was never heard from.
    pub fn watermark_ms(&self, wall_ms: i64) -> i64 {
        let given_up =
            self.idle_timeout_ms.is_some_and(|timeout| wall_ms.saturating_sub(self.started_wall_ms) >= timeout);
        self.clocks
            .iter()
            .filter(|c| !(given_up && c.stream_time_ms < 0))
            .map(EventClock::watermark_ms)
            .min()
            .unwrap_or(i64::MIN)
    }

    /// A source partition never heard from that holds the watermark back while another one has
    /// records (what a query waiting for an empty partition is waiting for).
    pub fn waiting_for(&self, wall_ms: i64) -> Option<usize> {
        let heard = self.clocks.iter().any(|c| c.stream_time_ms >= 0);
        let given_up =
            self.idle_timeout_ms.is_some_and(|timeout| wall_ms.saturating_sub(self.started_wall_ms) >= timeout);
        (heard && !given_up).then(|| self.clocks.iter().position(|c| c.stream_time_ms < 0)).flatten()
    }

    /// Each partition's max event time (-1: none), to persist.
    pub fn times_ms(&self) -> Vec<i64> {
        self.clocks.iter().map(|c| c.stream_time_ms).collect()
    }
}

/// Tumbling and hopping windows (aligned to the epoch; starts are multiples of `slide`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeWindowing {
    pub size_ms: i64,
    pub slide_ms: i64,
}

impl TimeWindowing {
    pub fn from_spec(spec: WindowSpec) -> Option<Self> {
        match spec {
            WindowSpec::Tumble { size_ms } => Some(TimeWindowing { size_ms, slide_ms: size_ms }),
            WindowSpec::Hop { slide_ms, size_ms } => Some(TimeWindowing { size_ms, slide_ms }),
            WindowSpec::Session { .. } => None,
        }
    }

    /// Windows containing `ts_ms` (≥ 0), by ascending start.
    pub fn windows_for(&self, ts_ms: i64) -> impl Iterator<Item = Window> + '_ {
        let lowest = ts_ms.saturating_sub(self.size_ms).saturating_add(self.slide_ms).max(0);
        let first = lowest / self.slide_ms * self.slide_ms;
        let (size, slide) = (self.size_ms, self.slide_ms);
        std::iter::successors(Some(first), move |s: &i64| s.checked_add(slide))
            .take_while(move |s| *s <= ts_ms)
            .map(move |start_ms| Window { start_ms, end_ms: start_ms.saturating_add(size) })
    }

    /// End of the last window containing `ts_ms`: the record is useless once it is closed.
    pub fn last_end_ms(&self, ts_ms: i64) -> i64 {
        (ts_ms / self.slide_ms * self.slide_ms).saturating_add(self.size_ms)
    }

    /// Whether a record at `ts_ms` still updates some window at `watermark_ms`.
    pub fn accepts(&self, ts_ms: i64, watermark_ms: i64) -> bool {
        self.last_end_ms(ts_ms) > watermark_ms
    }

    /// The first window end after `closed_through_ms`: the watermark must reach it before
    /// another window closes.
    pub fn next_end_after(&self, closed_through_ms: i64) -> i64 {
        if closed_through_ms == i64::MIN {
            return i64::MIN;
        }
        // Ends are `k * slide + size`; the smallest one above closed_through.
        let k = (closed_through_ms.saturating_sub(self.size_ms)).div_euclid(self.slide_ms) + 1;
        k.saturating_mul(self.slide_ms).saturating_add(self.size_ms)
    }

    /// Windows of a record at `ts_ms` that close when the watermark moves from
    /// `closed_through_ms` to `watermark_ms` (`closed_through < end <= watermark`).
    pub fn closing(&self, ts_ms: i64, closed_through_ms: i64, watermark_ms: i64) -> impl Iterator<Item = Window> + '_ {
        self.windows_for(ts_ms).filter(move |w| w.end_ms > closed_through_ms && w.end_ms <= watermark_ms)
    }
}

/// The open sessions of one task, per group key (rebuilt from the store after a restart).
#[derive(Debug, Default)]
pub(crate) struct SessionIndex {
    gap_ms: i64,
    /// Sessions of each key as (first, last) record times; disjoint, unordered.
    by_key: HashMap<Vec<u8>, Vec<(i64, i64)>>,
    /// (last, key, first) of every session, to find those that close.
    by_last: BTreeSet<(i64, Vec<u8>, i64)>,
}

/// What a record does to the session index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SessionInsert {
    /// The record is part of this session (first, last) now.
    Accepted(i64, i64),
    /// Its session would already be closed: drop it as late.
    Late,
}

impl SessionIndex {
    pub fn new(gap_ms: i64) -> Self {
        SessionIndex { gap_ms, ..Default::default() }
    }

    /// Adds a record of `key` at `ts_ms`, merging the sessions it bridges (records exactly
    /// `gap` apart share a session, as in Kafka).
    pub fn insert(&mut self, key: &[u8], ts_ms: i64, watermark_ms: i64) -> SessionInsert {
        let gap = self.gap_ms;
        let sessions = self.by_key.entry(key.to_vec()).or_default();
        let (mut first, mut last) = (ts_ms, ts_ms);
        let mut merged = Vec::new();
        sessions.retain(|&(s, e)| {
            let overlaps = e >= ts_ms.saturating_sub(gap) && s <= ts_ms.saturating_add(gap);
            if overlaps {
                merged.push((s, e));
            }
            !overlaps
        });
        for &(s, e) in &merged {
            first = first.min(s);
            last = last.max(e);
        }
        if last.saturating_add(gap) < watermark_ms {
            // Put back what was taken out: nothing changes for a late record.
            sessions.extend(merged);
            if sessions.is_empty() {
                self.by_key.remove(key);
            }
            return SessionInsert::Late;
        }
        for (s, e) in merged {
            self.by_last.remove(&(e, key.to_vec(), s));
        }
        sessions.push((first, last));
        self.by_last.insert((last, key.to_vec(), first));
        SessionInsert::Accepted(first, last)
    }

    /// Removes and returns the sessions closed at `watermark_ms` (`last + gap < watermark`),
    /// as (key, window) with `window_end = last + gap`, at most `limit`.
    pub fn take_closed(&mut self, watermark_ms: i64, limit: usize) -> Vec<(Vec<u8>, Window, i64)> {
        let mut closed = Vec::new();
        while closed.len() < limit {
            let Some((last, _, _)) = self.by_last.first() else { break };
            if last.saturating_add(self.gap_ms) >= watermark_ms {
                break;
            }
            let Some((last, key, first)) = self.by_last.pop_first() else { break };
            if let Some(sessions) = self.by_key.get_mut(&key) {
                sessions.retain(|&(s, e)| (s, e) != (first, last));
                if sessions.is_empty() {
                    self.by_key.remove(&key);
                }
            }
            closed.push((key, Window { start_ms: first, end_ms: last.saturating_add(self.gap_ms) }, last));
        }
        closed
    }

    /// Sessions held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_last.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_is_the_minimum_over_source_partitions() {
        let mut c = PartitionClocks::new(Vec::new(), 2, 1_000, None, 0);
        c.observe(0, 50_000, 0);
        assert_eq!(c.watermark_ms(0), i64::MIN, "partition 1 not heard from yet");
        c.observe(1, 10_000, 0);
        assert_eq!(c.watermark_ms(0), 9_000);
        c.observe(1, 60_000, 0);
        assert_eq!(c.watermark_ms(0), 49_000);
        assert_eq!(c.times_ms(), vec![50_000, 60_000]);
        // Resumed from persisted times; a grown topic adds a partition that holds it back.
        let mut r = PartitionClocks::new(c.times_ms(), 2, 1_000, None, 0);
        assert_eq!(r.watermark_ms(0), 49_000);
        r.observe(2, 70_000, 0);
        assert_eq!(r.watermark_ms(0), 49_000);
    }

    #[test]
    fn a_partition_never_heard_from_stops_counting_after_the_idle_timeout() {
        let mut c = PartitionClocks::new(Vec::new(), 3, 0, Some(5_000), 100);
        c.observe(0, 20_000, 200);
        c.observe(1, 30_000, 200);
        assert_eq!(c.watermark_ms(4_000), i64::MIN);
        assert_eq!(c.watermark_ms(5_100), 20_000);
        // And a quiet one runs on with the wall clock.
        c.idle_tick(10_200);
        assert_eq!(c.watermark_ms(10_200), 30_000, "both idle 10 s: 20 s + 10 s and 30 s + 10 s");
    }
    use crate::window::{StreamTime, TimeWindows};
    use std::time::Duration;

    #[test]
    fn watermark_is_max_event_time_minus_lateness() {
        let mut clock = EventClock::new(-1, 5, None);
        assert_eq!(clock.watermark_ms(), i64::MIN);
        assert_eq!(clock.observe(100, 0), 95);
        assert_eq!(clock.observe(50, 0), 95, "out-of-order records do not move it back");
        assert_eq!(clock.observe(120, 0), 115);
        assert_eq!(clock.idle_tick(1_000_000), 115, "no idle timeout: nothing moves");
    }

    #[test]
    fn idle_timeout_advances_stream_time_with_the_wall_clock() {
        let mut clock = EventClock::new(-1, 0, Some(1_000));
        assert_eq!(clock.idle_tick(50_000), i64::MIN, "no record yet: nothing to advance from");
        clock.observe(10_000, 50_000);
        assert_eq!(clock.idle_tick(50_900), 10_000, "not idle long enough");
        assert_eq!(clock.idle_tick(51_000), 11_000);
        assert_eq!(clock.idle_tick(55_000), 15_000);
        // A record now is judged against the advanced time.
        assert_eq!(clock.observe(12_000, 55_100), 15_000);
        assert_eq!(clock.idle_tick(55_200), 15_000);
    }

    #[test]
    fn tumble_and_hop_windows_match_the_dsl() {
        for (size, slide) in [(10, 10), (10, 5), (10, 3), (7, 7)] {
            let ours = TimeWindowing { size_ms: size, slide_ms: slide };
            let dsl = TimeWindows::of_size_with_grace(Duration::from_millis(size as u64), Duration::from_millis(4))
                .unwrap()
                .advance_by(Duration::from_millis(slide as u64))
                .unwrap();
            for ts in 0..60 {
                let a: Vec<(i64, i64)> = ours.windows_for(ts).map(|w| (w.start_ms, w.end_ms)).collect();
                let b: Vec<(i64, i64)> = dsl.windows_for(ts).map(|w| (w.start_ms, w.end_ms)).collect();
                assert_eq!(a, b, "size {size} slide {slide} ts {ts}");
                assert_eq!(ours.last_end_ms(ts), b.last().unwrap().1);
                for stream_time in ts..ts + 30 {
                    let mut st = StreamTime::at(stream_time);
                    let assigned = dsl.assign(ts, &mut st);
                    assert_eq!(ours.accepts(ts, stream_time - 4), !assigned.update.is_empty());
                }
            }
        }
    }

    #[test]
    fn next_end_and_closing_windows() {
        let hop = TimeWindowing { size_ms: 10, slide_ms: 5 };
        assert_eq!(hop.next_end_after(i64::MIN), i64::MIN);
        assert_eq!(hop.next_end_after(9), 10);
        assert_eq!(hop.next_end_after(10), 15);
        assert_eq!(hop.next_end_after(-3), 0, "ends are k·slide + size for any k");
        let closing: Vec<Window> = hop.closing(7, 9, 15).collect();
        assert_eq!(closing, vec![Window { start_ms: 0, end_ms: 10 }, Window { start_ms: 5, end_ms: 15 }]);
        let closing: Vec<Window> = hop.closing(7, 10, 15).collect();
        assert_eq!(closing, vec![Window { start_ms: 5, end_ms: 15 }]);
    }

    #[test]
    fn sessions_merge_close_and_drop_late_records() {
        let mut index = SessionIndex::new(10);
        assert_eq!(index.insert(b"a", 100, 0), SessionInsert::Accepted(100, 100));
        assert_eq!(index.insert(b"a", 110, 0), SessionInsert::Accepted(100, 110), "exactly gap apart: one session");
        assert_eq!(index.insert(b"a", 130, 0), SessionInsert::Accepted(130, 130));
        assert_eq!(index.insert(b"b", 105, 0), SessionInsert::Accepted(105, 105));
        assert_eq!(index.insert(b"a", 120, 0), SessionInsert::Accepted(100, 130), "bridges two sessions");
        assert_eq!(index.len(), 2);
        assert!(index.take_closed(115, 10).is_empty(), "b's session closes once 105 + 10 < watermark");
        let closed = index.take_closed(116, 10);
        assert_eq!(closed, vec![(b"b".to_vec(), Window { start_ms: 105, end_ms: 115 }, 105)]);
        assert_eq!(index.insert(b"b", 100, 116), SessionInsert::Late);
        assert_eq!(index.insert(b"c", 106, 116), SessionInsert::Accepted(106, 106), "106 + 10 >= 116");
        let closed = index.take_closed(1_000, 10);
        assert_eq!(closed.len(), 2);
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn sessions_match_the_dsl_close_rule() {
        use crate::window::SessionWindows;
        let dsl =
            SessionWindows::of_inactivity_gap_and_grace(Duration::from_millis(10), Duration::from_millis(3)).unwrap();
        for stream_time in 0..60 {
            for last in 0..40 {
                let session = crate::window::SessionWindow { start_ms: 0, end_ms: last };
                let ours_closed = last + 10 < stream_time - 3;
                assert_eq!(dsl.is_closed(session, stream_time), ours_closed);
            }
        }
    }
}

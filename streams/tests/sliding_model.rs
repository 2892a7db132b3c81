//! Sliding-window aggregations through the DSL and the runtime's task code (test driver, redb
//! window stores), for random out-of-order input, against two models: the definition of
//! sliding windows (when nothing is late) and an in-memory replay of the sans-IO algorithm
//! (Kafka's `KStreamSlidingWindowAggregate`, which after late records keeps windows the
//! definition would not).

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use spate_streams::serdes::{I64Serde, JsonSerde, StringSerde};
use spate_streams::suppress::{BufferConfig, Suppressed};
use spate_streams::window::{LateDecision, SlidingWindowAggregate, SlidingWindows, StreamTime};
use spate_streams::{
    Consumed, EmitStrategy, Grouped, Materialized, Produced, StreamsBuilder, StreamsConfig, TopologyTestDriver,
};

/// (key, window start, window end).
type WindowKey = (String, i64, i64);

fn sliding(diff_ms: i64, grace_ms: i64) -> SlidingWindows {
    SlidingWindows::of_time_difference_and_grace(
        Duration::from_millis(diff_ms as u64),
        Duration::from_millis(grace_ms as u64),
    )
    .unwrap()
}

/// Counts to "out" (per `emit`) and, suppressed until their windows close, to "final".
fn topology(windows: SlidingWindows, emit: EmitStrategy) -> spate_streams::Topology {
    let builder = StreamsBuilder::new();
    let counts = builder
        .stream(&["in"], Consumed::with(StringSerde, StringSerde))
        .group_by_key(Grouped::with(StringSerde, StringSerde))
        .windowed_by_sliding(windows)
        .emit_strategy(emit)
        .count(Materialized::named("sliding-counts"))
        .unwrap();
    counts
        .to_stream()
        .map(|wk, count| ((wk.key, wk.window.start_ms, wk.window.end_ms), count))
        .to("out", Produced::with(JsonSerde::<WindowKey>::new(), I64Serde));
    counts
        .suppress(Suppressed::until_window_closes(BufferConfig::unbounded()).unwrap())
        .unwrap()
        .to_stream()
        .map(|wk, count| ((wk.key, wk.window.start_ms, wk.window.end_ms), count))
        .to("final", Produced::with(JsonSerde::<WindowKey>::new(), I64Serde));
    builder.build().unwrap()
}

fn driver(windows: SlidingWindows, emit: EmitStrategy, dir: &std::path::Path) -> TopologyTestDriver {
    let config = StreamsConfig::new("sliding", "127.0.0.1:1").set("state.dir", dir.to_str().unwrap()).unwrap();
    TopologyTestDriver::new(topology(windows, emit), &config).unwrap()
}

/// What the algorithm does with one task's input: the last count per window, the records
/// dropped as late, the final stream time.
struct Replay {
    counts: BTreeMap<WindowKey, i64>,
    dropped: u64,
    stream_time_ms: i64,
}

/// Kafka's algorithm over per-key in-memory stores with the window store's retention
/// (`2 * diff + grace`): the store stops returning windows starting before the newest start
/// it was given minus the retention, even ones the algorithm would still read. (Kafka's
/// store stops one millisecond earlier still.)
fn replay(windows: SlidingWindows, records: &[(String, i64)]) -> Replay {
    let mut stores: BTreeMap<String, BTreeMap<i64, SlidingWindowAggregate<i64>>> = BTreeMap::new();
    let mut time = StreamTime::new();
    let mut newest_start_ms = i64::MIN;
    let mut replay = Replay { counts: BTreeMap::new(), dropped: 0, stream_time_ms: -1 };
    for (key, ts) in records {
        let store = stores.entry(key.clone()).or_default();
        let live_from_ms = newest_start_ms.saturating_sub(windows.retention_ms());
        let existing: Vec<_> = store.values().filter(|w| w.window.start_ms >= live_from_ms).cloned().collect();
        let update = windows.aggregate(*ts, &existing, &mut time, || 0, |count| count + 1).unwrap();
        if update.decision != LateDecision::Accept {
            replay.dropped += 1;
        }
        for put in update.puts {
            newest_start_ms = newest_start_ms.max(put.window.start_ms);
            replay.counts.insert((key.clone(), put.window.start_ms, put.window.end_ms), put.aggregate);
            store.insert(put.window.start_ms, put);
        }
    }
    replay.stream_time_ms = time.ms();
    replay
}

/// The windows sliding windows define over each key's records, with their counts.
fn definition(records: &[(String, i64)], diff: i64) -> BTreeMap<WindowKey, i64> {
    let mut by_key: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (key, ts) in records {
        by_key.entry(key).or_default().push(*ts);
    }
    let mut windows = BTreeMap::new();
    for (key, times) in by_key {
        for &t in &times {
            let mut starts = vec![(t - diff).max(0)];
            if times.iter().any(|&later| later > t && later <= t + 1 + diff) {
                starts.push(t + 1);
            }
            for start in starts {
                let count = times.iter().filter(|&&r| r >= start && r <= start + diff).count() as i64;
                windows.insert((key.to_string(), start, start + diff), count);
            }
        }
    }
    windows
}

fn records() -> impl Strategy<Value = Vec<(String, i64)>> {
    // Mostly increasing time with jitter: some records out of order within grace, some beyond.
    prop::collection::vec((0u8..3, 0i64..1_500, -6_000i64..1_500), 1..50).prop_map(|steps| {
        let mut t = 0i64;
        steps
            .into_iter()
            .map(|(k, step, jitter)| {
                t += step;
                (format!("k{k}"), (t + jitter).max(0))
            })
            .collect()
    })
}

fn pipe_all(d: &mut TopologyTestDriver, input: &[(String, i64)]) {
    for (k, ts) in input {
        d.pipe("in", &StringSerde, &StringSerde, k, &"x".to_string(), *ts).unwrap();
    }
}

/// Every record of `topic` in order: (window, count).
fn read(d: &mut TopologyTestDriver, topic: &str) -> Vec<(WindowKey, i64)> {
    d.read_output(topic)
        .into_iter()
        .map(|r| {
            let key: WindowKey = serde_json::from_slice(&r.key.unwrap()).unwrap();
            (key, i64::from_be_bytes(r.value.unwrap()[..].try_into().unwrap()))
        })
        .collect()
}

/// The replay's windows that are closed at its final stream time, each once.
fn closed(windows: SlidingWindows, replay: &Replay) -> BTreeMap<WindowKey, Vec<i64>> {
    replay
        .counts
        .iter()
        .filter(|((_, _, end), _)| *end < replay.stream_time_ms - windows.grace_ms())
        .map(|(k, c)| (k.clone(), vec![*c]))
        .collect()
}

fn once_each(outputs: Vec<(WindowKey, i64)>) -> BTreeMap<WindowKey, Vec<i64>> {
    let mut emitted: BTreeMap<WindowKey, Vec<i64>> = BTreeMap::new();
    for (key, count) in outputs {
        emitted.entry(key).or_default().push(count);
    }
    emitted
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// With a grace longer than any reordering nothing is late: the last count per window is
    /// the definition's, and so is the algorithm's.
    #[test]
    fn without_late_records_counts_match_the_definition(input in records(), diff in 1i64..3_000) {
        let windows = sliding(diff, 1_000_000);
        let dir = tempfile::tempdir().unwrap();
        let mut d = driver(windows, EmitStrategy::OnWindowUpdate, dir.path());
        pipe_all(&mut d, &input);
        let last: BTreeMap<WindowKey, i64> = read(&mut d, "out").into_iter().collect();
        let want = definition(&input, diff);
        prop_assert_eq!(&last, &want);
        prop_assert_eq!(replay(windows, &input).counts, want);
        prop_assert_eq!(d.dropped_late(), 0);
        // Nothing closes within a grace this long.
        prop_assert!(read(&mut d, "final").is_empty());
    }

    /// With late records: the last count per window is the algorithm's, records are dropped
    /// exactly when the algorithm drops them, and the suppressed table emits each window
    /// closed by the end once, with its final count.
    #[test]
    fn emit_on_update_matches_the_algorithm(input in records(), diff in 1i64..3_000, grace in 0i64..3_000) {
        let windows = sliding(diff, grace);
        let dir = tempfile::tempdir().unwrap();
        let mut d = driver(windows, EmitStrategy::OnWindowUpdate, dir.path());
        pipe_all(&mut d, &input);
        let want = replay(windows, &input);
        let last: BTreeMap<WindowKey, i64> = read(&mut d, "out").into_iter().collect();
        prop_assert_eq!(&last, &want.counts);
        prop_assert_eq!(d.dropped_late(), want.dropped);
        prop_assert_eq!(once_each(read(&mut d, "final")), closed(windows, &want));
    }

    /// Emit on window close: each window closed by the end once, with its final count; open
    /// windows not at all. Suppression downstream passes the final results through.
    #[test]
    fn emit_on_close_emits_each_closed_window_once(input in records(), diff in 1i64..3_000, grace in 0i64..3_000) {
        let windows = sliding(diff, grace);
        let dir = tempfile::tempdir().unwrap();
        let mut d = driver(windows, EmitStrategy::OnWindowClose, dir.path());
        pipe_all(&mut d, &input);
        let want = replay(windows, &input);
        let closed_windows = closed(windows, &want);
        prop_assert_eq!(once_each(read(&mut d, "out")), closed_windows.clone());
        prop_assert_eq!(d.dropped_late(), want.dropped);
        // Suppression sees a window's one result only after it closed, so passes it on at
        // once, except the windows closed by the last stream-time advance.
        let suppressed = once_each(read(&mut d, "final"));
        for (window, counts) in &suppressed {
            prop_assert_eq!(Some(counts), closed_windows.get(window));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Small windows and dense timestamps, to reach the edges of grace and store retention
    /// (`2 * diff + grace`) that random large values rarely hit.
    #[test]
    fn small_windows_match_the_algorithm(
        input in prop::collection::vec((0u8..2, 0i64..60).prop_map(|(k, t)| (format!("k{k}"), t)), 1..40),
        diff in 0i64..5,
        grace in 0i64..5,
        on_close in any::<bool>(),
    ) {
        let windows = sliding(diff, grace);
        let dir = tempfile::tempdir().unwrap();
        let emit = if on_close { EmitStrategy::OnWindowClose } else { EmitStrategy::OnWindowUpdate };
        let mut d = driver(windows, emit, dir.path());
        pipe_all(&mut d, &input);
        let want = replay(windows, &input);
        if on_close {
            prop_assert_eq!(once_each(read(&mut d, "out")), closed(windows, &want));
        } else {
            let last: BTreeMap<WindowKey, i64> = read(&mut d, "out").into_iter().collect();
            prop_assert_eq!(&last, &want.counts);
            prop_assert_eq!(once_each(read(&mut d, "final")), closed(windows, &want));
        }
        prop_assert_eq!(d.dropped_late(), want.dropped);
    }
}

#[test]
fn records_update_their_left_and_right_windows() {
    let dir = tempfile::tempdir().unwrap();
    let windows = sliding(10, 100);
    let mut d = driver(windows, EmitStrategy::OnWindowUpdate, dir.path());
    let input: Vec<(String, i64)> = [10, 15, 12].iter().map(|&t| ("a".to_string(), t)).collect();
    pipe_all(&mut d, &input);
    let a = |start: i64, end: i64| ("a".to_string(), start, end);
    assert_eq!(
        read(&mut d, "out"),
        [
            (a(0, 10), 1),
            // 15: its left window holds 10 and 15; 10's right window [11, 21] gets 15.
            (a(11, 21), 1),
            (a(5, 15), 2),
            // 12 (out of order): joins [5, 15] and [11, 21], gets [2, 12] and a right
            // window [13, 23] with 15.
            (a(11, 21), 2),
            (a(5, 15), 3),
            (a(2, 12), 2),
            (a(13, 23), 1),
        ]
    );
    // A record too late for every window (12 + 10 < 200 - 100) is dropped and counted.
    pipe_all(&mut d, &[("a".to_string(), 200), ("a".to_string(), 12)]);
    assert_eq!(d.dropped_late(), 1);
}

#[test]
fn reduce_and_aggregate_fold_each_window() {
    let dir = tempfile::tempdir().unwrap();
    let builder = StreamsBuilder::new();
    let grouped = builder
        .stream(&["in"], Consumed::with(StringSerde, I64Serde))
        .group_by_key(Grouped::with(StringSerde, I64Serde))
        .windowed_by_sliding(sliding(10, 100));
    grouped
        .reduce(|a, b| a.max(b), Materialized::named("max"))
        .unwrap()
        .to_stream()
        .map(|wk, v| ((wk.key, wk.window.start_ms, wk.window.end_ms), v))
        .to("max", Produced::with(JsonSerde::<WindowKey>::new(), I64Serde));
    grouped
        .aggregate(
            Vec::new,
            |_, v, mut all: Vec<i64>| {
                all.push(v);
                all
            },
            Materialized::named("all").with_value_serde(JsonSerde::<Vec<i64>>::new()),
        )
        .unwrap()
        .to_stream()
        .map(|wk, v| ((wk.key, wk.window.start_ms, wk.window.end_ms), v))
        .to("all", Produced::with(JsonSerde::<WindowKey>::new(), JsonSerde::<Vec<i64>>::new()));
    let config = StreamsConfig::new("sliding", "127.0.0.1:1").set("state.dir", dir.path().to_str().unwrap()).unwrap();
    let mut d = TopologyTestDriver::new(builder.build().unwrap(), &config).unwrap();
    for (v, ts) in [(7, 20), (3, 25), (9, 22)] {
        d.pipe("in", &StringSerde, &I64Serde, &"k".to_string(), &v, ts).unwrap();
    }
    let last_max: BTreeMap<WindowKey, i64> = d
        .read_output("max")
        .into_iter()
        .map(|r| {
            let key: WindowKey = serde_json::from_slice(&r.key.unwrap()).unwrap();
            (key, i64::from_be_bytes(r.value.unwrap()[..].try_into().unwrap()))
        })
        .collect();
    let k = |start: i64, end: i64| ("k".to_string(), start, end);
    // Windows: [10, 20] {20}, [12, 22] {20, 22}, [15, 25] {20, 22, 25}, [21, 31] {22, 25},
    // [23, 33] {25}.
    let want: BTreeMap<WindowKey, i64> =
        [(k(10, 20), 7), (k(12, 22), 9), (k(15, 25), 9), (k(21, 31), 9), (k(23, 33), 3)].into_iter().collect();
    assert_eq!(last_max, want);
    let last_all: BTreeMap<WindowKey, Vec<i64>> = d
        .read_output("all")
        .into_iter()
        .map(|r| {
            let key: WindowKey = serde_json::from_slice(&r.key.unwrap()).unwrap();
            let mut all: Vec<i64> = serde_json::from_slice(&r.value.unwrap()).unwrap();
            all.sort_unstable();
            (key, all)
        })
        .collect();
    let want: BTreeMap<WindowKey, Vec<i64>> = [
        (k(10, 20), vec![7]),
        (k(12, 22), vec![7, 9]),
        (k(15, 25), vec![3, 7, 9]),
        (k(21, 31), vec![3, 9]),
        (k(23, 33), vec![3]),
    ]
    .into_iter()
    .collect();
    assert_eq!(last_all, want);
}

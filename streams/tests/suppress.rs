//! `KTable::suppress` through the DSL and the test driver: final results of windowed
//! aggregations (against a brute-force model for random out-of-order input) and time-limited
//! table updates.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use spate_streams::serdes::{I64Serde, JsonSerde, StringSerde};
use spate_streams::suppress::{BufferConfig, Suppressed};
use spate_streams::window::{SessionWindows, TimeWindows};
use spate_streams::{
    Consumed, Grouped, Materialized, Produced, StreamsBuilder, StreamsConfig, StreamsError, TopologyTestDriver,
};

const SIZE_MS: i64 = 10_000;
const GRACE_MS: i64 = 3_000;

fn config(dir: &std::path::Path) -> StreamsConfig {
    StreamsConfig::new("suppress", "127.0.0.1:1").set("state.dir", dir.to_str().unwrap()).unwrap()
}

fn ms(ms: i64) -> Duration {
    Duration::from_millis(ms as u64)
}

/// Windowed counts, filtered (so that suppression finds the aggregation through another
/// operator), suppressed until their windows close.
fn final_counts(advance_ms: i64) -> spate_streams::Topology {
    let builder = StreamsBuilder::new();
    let windows =
        TimeWindows::of_size_with_grace(ms(SIZE_MS), ms(GRACE_MS)).unwrap().advance_by(ms(advance_ms)).unwrap();
    builder
        .stream(&["in"], Consumed::with(StringSerde, StringSerde))
        .group_by_key(Grouped::with(StringSerde, StringSerde))
        .windowed_by(windows)
        .count(Materialized::named("counts"))
        .unwrap()
        .filter(|_, count| *count > 0)
        .suppress(Suppressed::until_window_closes(BufferConfig::unbounded()).unwrap())
        .unwrap()
        .to_stream()
        .map(|wk, count| ((wk.key, wk.window.start_ms), count))
        .to("out", Produced::with(JsonSerde::<(String, i64)>::new(), I64Serde));
    builder.build().unwrap()
}

/// Kafka's semantics: a record updates each of its windows whose end + grace is after stream
/// time (including the record).
fn model(records: &[(String, i64)], advance_ms: i64) -> (BTreeMap<(String, i64), i64>, i64) {
    let mut stream_time = -1;
    let mut counts = BTreeMap::new();
    for (key, ts) in records {
        stream_time = stream_time.max(*ts);
        let mut start = (ts - SIZE_MS + advance_ms).max(0) / advance_ms * advance_ms;
        while start <= *ts {
            if start + SIZE_MS > *ts && start + SIZE_MS + GRACE_MS > stream_time {
                *counts.entry((key.clone(), start)).or_insert(0) += 1;
            }
            start += advance_ms;
        }
    }
    (counts, stream_time)
}

fn records() -> impl Strategy<Value = Vec<(String, i64)>> {
    prop::collection::vec((0u8..4, 0i64..2_000, -8_000i64..2_000), 1..60).prop_map(|steps| {
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Each window closed by the end comes out once, with its final count; open windows not
    /// at all.
    #[test]
    fn until_window_closes_emits_each_final_count_once(input in records(), hopping in any::<bool>()) {
        let advance_ms = if hopping { 5_000 } else { SIZE_MS };
        let dir = tempfile::tempdir().unwrap();
        let mut d = TopologyTestDriver::new(final_counts(advance_ms), &config(dir.path())).unwrap();
        for (k, ts) in &input {
            d.pipe("in", &StringSerde, &StringSerde, k, &"x".to_string(), *ts).unwrap();
        }
        let mut emitted: BTreeMap<(String, i64), Vec<i64>> = BTreeMap::new();
        for r in d.read_output("out") {
            let key: (String, i64) = serde_json::from_slice(&r.key.unwrap()).unwrap();
            emitted.entry(key).or_default().push(i64::from_be_bytes(r.value.unwrap()[..].try_into().unwrap()));
        }
        let (counts, stream_time) = model(&input, advance_ms);
        let expected: BTreeMap<(String, i64), Vec<i64>> = counts
            .into_iter()
            .filter(|((_, start), _)| start + SIZE_MS + GRACE_MS <= stream_time)
            .map(|(k, c)| (k, vec![c]))
            .collect();
        prop_assert_eq!(emitted, expected);
    }
}

fn read_counts(d: &mut TopologyTestDriver, topic: &str) -> Vec<((String, i64), i64, i64)> {
    d.read_output(topic)
        .into_iter()
        .map(|r| {
            let key: (String, i64) = serde_json::from_slice(&r.key.unwrap()).unwrap();
            (key, i64::from_be_bytes(r.value.unwrap()[..].try_into().unwrap()), r.timestamp_ms)
        })
        .collect()
}

#[test]
fn a_window_comes_out_when_it_closes_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = TopologyTestDriver::new(final_counts(SIZE_MS), &config(dir.path())).unwrap();
    let pipe = |d: &mut TopologyTestDriver, ts: i64| {
        d.pipe("in", &StringSerde, &StringSerde, &"a".to_string(), &"x".to_string(), ts).unwrap()
    };
    for ts in [1_000, 5_000, 12_000] {
        pipe(&mut d, ts);
    }
    assert!(d.read_output("out").is_empty());
    // [0, 10 s) closes at stream time 13 s: a late record within grace still counts.
    pipe(&mut d, 9_000);
    pipe(&mut d, 12_999);
    assert!(d.read_output("out").is_empty());
    pipe(&mut d, 13_000);
    // Its final count, with the timestamp of its last update.
    assert_eq!(read_counts(&mut d, "out"), [(("a".to_string(), 0), 3, 9_000)]);
    // Too late: dropped by the aggregation, nothing more comes out for [0, 10 s).
    pipe(&mut d, 2_000);
    pipe(&mut d, 30_000);
    assert_eq!(read_counts(&mut d, "out"), [(("a".to_string(), 10_000), 3, 13_000)]);
    assert_eq!(d.dropped_late(), 1);
}

#[test]
fn sessions_come_out_once_they_close() {
    let dir = tempfile::tempdir().unwrap();
    let builder = StreamsBuilder::new();
    builder
        .stream(&["in"], Consumed::with(StringSerde, StringSerde))
        .group_by_key(Grouped::with(StringSerde, StringSerde))
        .windowed_by_session(SessionWindows::of_inactivity_gap_and_grace(ms(100), ms(50)).unwrap())
        .count(Materialized::named("sessions"))
        .unwrap()
        .suppress(Suppressed::until_window_closes(BufferConfig::unbounded()).unwrap())
        .unwrap()
        .to_stream()
        .map(|wk, count| ((wk.key, wk.window.start_ms, wk.window.end_ms), count))
        .to("out", Produced::with(JsonSerde::<(String, i64, i64)>::new(), I64Serde));
    let mut d = TopologyTestDriver::new(builder.build().unwrap(), &config(dir.path())).unwrap();
    let pipe = |d: &mut TopologyTestDriver, key: &str, ts: i64| {
        d.pipe("in", &StringSerde, &StringSerde, &key.to_string(), &"x".to_string(), ts).unwrap()
    };
    let read = |d: &mut TopologyTestDriver| -> Vec<((String, i64, i64), i64)> {
        d.read_output("out")
            .into_iter()
            .map(|r| {
                let key = serde_json::from_slice(&r.key.unwrap()).unwrap();
                (key, i64::from_be_bytes(r.value.unwrap()[..].try_into().unwrap()))
            })
            .collect()
    };
    // a: [0, 80] after merging; sessions it replaced are deleted upstream, never emitted here.
    pipe(&mut d, "a", 0);
    pipe(&mut d, "a", 80);
    pipe(&mut d, "b", 100);
    // [0, 80] closes when 80 < stream time - 50 - 100, i.e. at 231; at 230 a record at 130
    // could still join it.
    pipe(&mut d, "b", 230);
    assert!(read(&mut d).is_empty());
    pipe(&mut d, "b", 231);
    assert_eq!(read(&mut d), [(("a".to_string(), 0, 80), 2)]);
}

fn table_updates(suppressed: Suppressed) -> Result<spate_streams::Topology, StreamsError> {
    let builder = StreamsBuilder::new();
    builder
        .table("in", Consumed::with(StringSerde, StringSerde), Materialized::named("table"))?
        .suppress(suppressed)?
        .to_stream()
        .to("out", Produced::with(StringSerde, StringSerde));
    builder.build()
}

fn read_strings(d: &mut TopologyTestDriver) -> Vec<(String, String, i64)> {
    d.read_output("out")
        .into_iter()
        .map(|r| {
            let text = |b: Option<bytes::Bytes>| String::from_utf8(b.unwrap().to_vec()).unwrap();
            (text(r.key), text(r.value), r.timestamp_ms)
        })
        .collect()
}

fn pipe_str(d: &mut TopologyTestDriver, key: &str, value: &str, ts: i64) -> Result<(), StreamsError> {
    d.pipe("in", &StringSerde, &StringSerde, &key.to_string(), &value.to_string(), ts)
}

#[test]
fn until_time_limit_emits_the_latest_value_once_the_first_update_is_old_enough() {
    let dir = tempfile::tempdir().unwrap();
    let suppressed = Suppressed::until_time_limit(ms(10_000), BufferConfig::unbounded()).unwrap();
    let mut d = TopologyTestDriver::new(table_updates(suppressed).unwrap(), &config(dir.path())).unwrap();
    pipe_str(&mut d, "a", "v1", 0).unwrap();
    pipe_str(&mut d, "a", "v2", 3_000).unwrap();
    pipe_str(&mut d, "b", "w1", 5_000).unwrap();
    pipe_str(&mut d, "a", "v3", 9_999).unwrap();
    assert!(read_strings(&mut d).is_empty());
    // a's first update (0) is 10 s old: its latest value goes, with that value's timestamp.
    // Later updates did not restart its timer.
    pipe_str(&mut d, "c", "x1", 10_000).unwrap();
    assert_eq!(read_strings(&mut d), [("a".to_string(), "v3".to_string(), 9_999)]);
    // A new update of a starts a new timer at its own time.
    pipe_str(&mut d, "a", "v4", 11_000).unwrap();
    pipe_str(&mut d, "c", "x2", 15_000).unwrap();
    assert_eq!(read_strings(&mut d), [("b".to_string(), "w1".to_string(), 5_000)]);
    pipe_str(&mut d, "d", "y1", 21_000).unwrap();
    assert_eq!(
        read_strings(&mut d),
        [("c".to_string(), "x2".to_string(), 15_000), ("a".to_string(), "v4".to_string(), 11_000)]
    );
}

#[test]
fn a_full_buffer_emits_early_or_fails_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let early = Suppressed::until_time_limit(ms(10_000), BufferConfig::max_records(1)).unwrap();
    let mut d = TopologyTestDriver::new(table_updates(early).unwrap(), &config(dir.path())).unwrap();
    pipe_str(&mut d, "a", "v1", 0).unwrap();
    pipe_str(&mut d, "b", "w1", 1).unwrap();
    assert_eq!(read_strings(&mut d), [("a".to_string(), "v1".to_string(), 0)]);

    let dir = tempfile::tempdir().unwrap();
    let strict = Suppressed::until_time_limit(ms(10_000), BufferConfig::max_records(1).shut_down_when_full())
        .unwrap()
        .with_name("rate-limit");
    let mut d = TopologyTestDriver::new(table_updates(strict).unwrap(), &config(dir.path())).unwrap();
    pipe_str(&mut d, "a", "v1", 0).unwrap();
    let err = pipe_str(&mut d, "b", "w1", 1).unwrap_err();
    assert!(
        matches!(&err, StreamsError::SuppressionBufferFull { name, records: 2, max_records: 1, .. } if name == "rate-limit"),
        "{err}"
    );
}

#[test]
fn until_window_closes_needs_a_windowed_aggregation_upstream() {
    let suppressed = Suppressed::until_window_closes(BufferConfig::unbounded()).unwrap();
    let err = table_updates(suppressed.clone()).err().unwrap();
    assert!(err.to_string().contains("until_window_closes must follow a windowed aggregation"), "{err}");

    // A windowed table re-aggregated by key is no longer windowed.
    let builder = StreamsBuilder::new();
    let windows = TimeWindows::of_size_with_no_grace(ms(SIZE_MS)).unwrap();
    let counts = builder
        .stream(&["in"], Consumed::with(StringSerde, StringSerde))
        .group_by_key(Grouped::with(StringSerde, StringSerde))
        .windowed_by(windows)
        .count(Materialized::unnamed())
        .unwrap()
        .to_stream()
        .map(|wk, count| (wk.key, count))
        .group_by_key(Grouped::with(StringSerde, I64Serde))
        .count(Materialized::unnamed())
        .unwrap();
    assert!(counts.suppress(suppressed).is_err());
}

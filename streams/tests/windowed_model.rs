//! Windowed aggregations through the DSL and the runtime's task code (with the test driver and
//! real redb stores), against a brute-force model, for random out-of-order input.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use spate_streams::serdes::{I64Serde, JsonSerde, StringSerde};
use spate_streams::window::TimeWindows;
use spate_streams::{
    Consumed, EmitStrategy, Grouped, Materialized, Produced, StreamsBuilder, StreamsConfig, TopologyTestDriver,
};

const SIZE_MS: i64 = 10_000;
const GRACE_MS: i64 = 3_000;

fn topology(advance_ms: i64, emit: EmitStrategy) -> spate_streams::Topology {
    let builder = StreamsBuilder::new();
    let windows =
        TimeWindows::of_size_with_grace(Duration::from_millis(SIZE_MS as u64), Duration::from_millis(GRACE_MS as u64))
            .unwrap()
            .advance_by(Duration::from_millis(advance_ms as u64))
            .unwrap();
    builder
        .stream(&["in"], Consumed::with(StringSerde, StringSerde))
        .group_by_key(Grouped::with(StringSerde, StringSerde))
        .windowed_by(windows)
        .emit_strategy(emit)
        .count(Materialized::named("counts"))
        .unwrap()
        .to_stream()
        .map(|wk, count| ((wk.key, wk.window.start_ms), count))
        .to("out", Produced::with(JsonSerde::<(String, i64)>::new(), I64Serde));
    builder.build().unwrap()
}

/// Kafka's semantics: stream time is the largest timestamp seen (including the record
/// itself); a record updates each of its windows whose end + grace is after stream time, and
/// is dropped for the others.
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
    // Mostly increasing time with jitter so that some records are out of order within grace
    // and some beyond it.
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

fn driver(advance_ms: i64, emit: EmitStrategy, dir: &std::path::Path) -> TopologyTestDriver {
    let config = StreamsConfig::new("model", "127.0.0.1:1").set("state.dir", dir.to_str().unwrap()).unwrap();
    TopologyTestDriver::new(topology(advance_ms, emit), &config).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Emit on update: the last output per (key, window) is the model's count.
    #[test]
    fn windowed_counts_match_the_model(input in records(), hopping in any::<bool>()) {
        let advance_ms = if hopping { 5_000 } else { SIZE_MS };
        let dir = tempfile::tempdir().unwrap();
        let mut d = driver(advance_ms, EmitStrategy::OnWindowUpdate, dir.path());
        for (k, ts) in &input {
            d.pipe("in", &StringSerde, &StringSerde, k, &"x".to_string(), *ts).unwrap();
        }
        let mut last = BTreeMap::new();
        for r in d.read_output("out") {
            let key: (String, i64) = serde_json::from_slice(&r.key.unwrap()).unwrap();
            let count = i64::from_be_bytes(r.value.unwrap()[..].try_into().unwrap());
            last.insert(key, count);
        }
        let (expected, _) = model(&input, advance_ms);
        prop_assert_eq!(last, expected);
    }

    /// Emit on window close: each closed window exactly once, with its final count; open
    /// windows not at all.
    #[test]
    fn final_counts_match_the_model(input in records(), hopping in any::<bool>()) {
        let advance_ms = if hopping { 5_000 } else { SIZE_MS };
        let dir = tempfile::tempdir().unwrap();
        let mut d = driver(advance_ms, EmitStrategy::OnWindowClose, dir.path());
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

#[test]
fn the_window_store_answers_fetches_with_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = driver(SIZE_MS, EmitStrategy::OnWindowUpdate, dir.path());
    for ts in [1_000, 2_000, 12_000] {
        d.pipe("in", &StringSerde, &StringSerde, &"a".to_string(), &"x".to_string(), ts).unwrap();
    }
    let store = d.window_store("counts", StringSerde, I64Serde);
    assert_eq!(store.fetch(&"a".to_string(), 0, 20_000).unwrap(), vec![(0, 2), (10_000, 1)]);
    // A record for window [0, 10 s) at stream time 14 s is past its grace: dropped.
    d.pipe("in", &StringSerde, &StringSerde, &"a".to_string(), &"x".to_string(), 14_000).unwrap();
    d.pipe("in", &StringSerde, &StringSerde, &"a".to_string(), &"x".to_string(), 3_000).unwrap();
    assert_eq!(d.dropped_late(), 1);
    assert_eq!(store.fetch(&"a".to_string(), 0, 20_000).unwrap(), vec![(0, 2), (10_000, 2)]);
}

//! Continuous queries through the in-process [`TopologyTestDriver`] (no broker): windowed results
//! against the DSL's `windowed_by(…)` with `EmitStrategy::OnWindowClose` on the same input, the
//! idle timeout, and stateless micro-batches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field};

use super::*;
use crate::serdes::{JsonSerde, StringSerde};
use crate::window::TimeWindows;
use crate::{Consumed, EmitStrategy, Grouped, Materialized, Produced, TopologyTestDriver};

type Json = serde_json::Value;

fn source(with: &[(&str, &str)]) -> (TableOptions, nodes::Source) {
    let mut pairs = vec![("topic", "src")];
    pairs.extend_from_slice(with);
    let options = TableOptions::parse("src", pairs).unwrap();
    let schema = super::super::format::table_schema(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("x", DataType::Int64, true),
        Field::new("ts", DataType::Int64, true),
    ]);
    let decoder = Arc::new(RecordDecoder::new(&options, schema, None).unwrap());
    let source = nodes::Source { decoder, lateness_ms: options.lateness_ms, idle_timeout_ms: options.idle_timeout_ms };
    (options, source)
}

fn driver(sql: &str, with: &[(&str, &str)], dir: &std::path::Path) -> TopologyTestDriver {
    let plan = analyze::analyze(sql).unwrap();
    let (options, source) = source(with);
    let lookup = plan.lookup.as_ref().map(|join| {
        assert_eq!(join.table, "users");
        let options = TableOptions::parse("users", vec![("topic", "users")]).unwrap();
        let schema = super::super::format::table_schema(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("tier", DataType::Int64, true),
        ]);
        let lookup = nodes::Lookup {
            decoder: Arc::new(RecordDecoder::new(&options, schema, None).unwrap()),
            store: LOOKUP_STORE.to_owned(),
            key_sql: format!(
                "SELECT CAST(({}) AS VARCHAR) FROM __spate_input AS \"{}\"",
                join.stream_key_sql, plan.source_alias
            ),
        };
        (lookup, "users".to_owned())
    });
    let topology = compile(&plan, &options, source, lookup, None, 1).unwrap();
    let config = StreamsConfig::new("cq-test", "127.0.0.1:9092").set("state.dir", dir.to_str().unwrap()).unwrap();
    TopologyTestDriver::new(topology, &config).unwrap()
}

fn pipe(driver: &mut TopologyTestDriver, events: &[(&str, i64, i64)]) {
    for (k, x, ts) in events {
        let value = format!(r#"{{"k":"{k}","x":{x},"ts":{ts}}}"#);
        driver.pipe_input("src", Some(k.as_bytes()), Some(value.as_bytes()), *ts).unwrap();
    }
}

/// (k, start, end) → (count, sum), and the output key of each.
fn results(driver: &mut TopologyTestDriver, topic: &str) -> BTreeMap<(String, i64, i64), (i64, i64)> {
    let mut out = BTreeMap::new();
    for r in driver.read_output(topic) {
        let v: Json = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        let key: Json = serde_json::from_slice(r.key.as_deref().unwrap()).unwrap();
        assert_eq!(key, serde_json::json!({"k": v["k"]}), "the key is the group key as JSON");
        let window = (v["k"].as_str().unwrap().to_owned(), v["ws"].as_i64().unwrap(), v["we"].as_i64().unwrap());
        assert_eq!(r.timestamp_ms, window.2 - 1, "a result carries its window's last instant");
        let previous = out.insert(window.clone(), (v["n"].as_i64().unwrap(), v["total"].as_i64().unwrap()));
        assert!(previous.is_none(), "{window:?} emitted twice");
    }
    out
}

fn dsl(windows: TimeWindows, events: &[(&str, i64, i64)], dir: &std::path::Path) -> BTreeMap<(String, i64, i64), i64> {
    let builder = StreamsBuilder::new();
    builder
        .stream(&["src"], Consumed::with(StringSerde, JsonSerde::<Json>::new()))
        .group_by(|k: &String, _| k.clone(), Grouped::with(StringSerde, JsonSerde::<Json>::new()))
        .windowed_by(windows)
        .emit_strategy(EmitStrategy::OnWindowClose)
        .count(Materialized::named("counts"))
        .unwrap()
        .to_stream()
        .map(|w, n| (w.key.clone(), serde_json::json!([w.key, w.window.start_ms, w.window.end_ms, n])))
        .to("dsl-out", Produced::with(StringSerde, JsonSerde::<Json>::new()));
    let config = StreamsConfig::new("dsl-test", "127.0.0.1:9092").set("state.dir", dir.to_str().unwrap()).unwrap();
    let mut driver = TopologyTestDriver::new(builder.build().unwrap(), &config).unwrap();
    pipe(&mut driver, events);
    driver
        .read_output("dsl-out")
        .iter()
        .map(|r| {
            let v: Json = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            (
                (v[0].as_str().unwrap().to_owned(), v[1].as_i64().unwrap(), v[2].as_i64().unwrap()),
                v[3].as_i64().unwrap(),
            )
        })
        .collect()
}

const SELECT: &str =
    "CAST(window_start AS BIGINT) AS ws, CAST(window_end AS BIGINT) AS we, k, count(*) AS n, sum(x) AS total";

/// A seeded xorshift generator (no dependency, same numbers everywhere).
fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// A seeded shuffle of in-order events: out-of-order within and beyond the lateness.
fn events(seed: u64, n: usize) -> Vec<(&'static str, i64, i64)> {
    let mut next = xorshift(seed);
    let keys = ["a", "b", "c"];
    (0..n as i64)
        .map(|i| {
            let jitter = (next() % 8_000) as i64;
            (keys[(next() % 3) as usize], (next() % 100) as i64, (i * 300 - jitter).max(0))
        })
        .collect()
}

#[test]
fn tumble_and_hop_counts_equal_the_dsl_on_out_of_order_input() {
    for (seed, hop) in [(7u64, false), (11, true), (23, false), (42, true)] {
        let events = events(seed, 300);
        let dir = tempfile::tempdir().unwrap();
        let (from, windows) = if hop {
            (
                "HOP(src, ts, INTERVAL '2' SECOND, INTERVAL '5' SECOND)",
                TimeWindows::of_size_with_grace(Duration::from_secs(5), Duration::from_secs(1))
                    .unwrap()
                    .advance_by(Duration::from_secs(2))
                    .unwrap(),
            )
        } else {
            (
                "TUMBLE(src, ts, INTERVAL '5' SECOND)",
                TimeWindows::of_size_with_grace(Duration::from_secs(5), Duration::from_secs(1)).unwrap(),
            )
        };
        let sql = format!("INSERT INTO out SELECT {SELECT} FROM {from} GROUP BY window_start, window_end, k");
        let mut d = driver(&sql, &[("lateness", "1 second")], dir.path());
        pipe(&mut d, &events);
        let ours = results(&mut d, "out");
        assert!(d.dropped_late() > 0, "seed {seed}: the input has late records");
        let counts: BTreeMap<_, _> = ours.iter().map(|(w, (n, _))| (w.clone(), *n)).collect();
        let theirs = dsl(windows, &events, tempfile::tempdir().unwrap().path());
        assert!(!theirs.is_empty());
        assert_eq!(counts, theirs, "seed {seed} hop {hop}");
        // Sums against the records each window accepted (the DSL's counts say which).
        let total: i64 = ours.values().map(|(n, _)| n).sum();
        assert!(total > 0);
    }
}

#[test]
fn sessions_emit_once_per_closed_session() {
    let dir = tempfile::tempdir().unwrap();
    let sql = format!("INSERT INTO out SELECT {SELECT} FROM SESSION(src, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end, k");
    let mut d = driver(&sql, &[], dir.path());
    let s = 1_000;
    pipe(
        &mut d,
        &[
            ("a", 1, 0),
            ("a", 2, 5 * s),
            ("b", 7, 2 * s),
            ("a", 3, 15 * s),
            ("a", 4, 40 * s),
            ("b", 100, 3 * s),
            ("c", 0, 60 * s),
        ],
    );
    let got = results(&mut d, "out");
    let expected: BTreeMap<_, _> = [
        (("a".to_owned(), 0, 25 * s), (3, 6)),
        (("b".to_owned(), 2 * s, 12 * s), (1, 7)),
        (("a".to_owned(), 40 * s, 50 * s), (1, 4)),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, expected);
    assert_eq!(d.dropped_late(), 1);
}

#[test]
fn the_idle_timeout_closes_windows_of_a_quiet_task() {
    let dir = tempfile::tempdir().unwrap();
    let sql = format!("INSERT INTO out SELECT {SELECT} FROM TUMBLE(src, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end, k");
    let mut d = driver(&sql, &[("idle_timeout", "2 seconds")], dir.path());
    pipe(&mut d, &[("a", 1, 1_000), ("a", 2, 3_000)]);
    d.advance_wall_clock_ms(1_000).unwrap();
    assert!(d.read_output("out").is_empty(), "not idle long enough");
    // Idle from wall-clock 0 on; at 7 s stream time is 3 s + 7 s = 10 s: [0, 10 s) closes.
    d.advance_wall_clock_ms(6_000).unwrap();
    let got = results(&mut d, "out");
    assert_eq!(got, [(("a".to_owned(), 0, 10_000), (2, 3))].into_iter().collect());
}

#[test]
fn a_stateless_query_keeps_the_source_key_and_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = driver("INSERT INTO out SELECT upper(k) AS big, x + 1 AS y FROM src WHERE x > 1", &[], dir.path());
    pipe(&mut d, &[("a", 1, 10), ("b", 2, 20), ("c", 3, 30)]);
    let out: Vec<(String, String, i64)> = d
        .read_output("out")
        .into_iter()
        .map(|r| {
            (
                String::from_utf8(r.key.unwrap().to_vec()).unwrap(),
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
                r.timestamp_ms,
            )
        })
        .collect();
    assert_eq!(
        out,
        vec![("b".into(), r#"{"big":"B","y":3}"#.into(), 20), ("c".into(), r#"{"big":"C","y":4}"#.into(), 30)]
    );
}

#[test]
fn windowed_results_need_no_group_key() {
    let dir = tempfile::tempdir().unwrap();
    let sql = "INSERT INTO out SELECT window_start, count(*) AS n, approx_distinct(k) AS keys, \
               approx_percentile_cont(x, 0.5) AS p50 FROM TUMBLE(src, _timestamp, INTERVAL '1' SECOND) \
               GROUP BY window_start, window_end";
    let mut d = driver(sql, &[], dir.path());
    pipe(&mut d, &[("a", 10, 100), ("b", 20, 200), ("a", 30, 300), ("c", 0, 2_500)]);
    let out = d.read_output("out");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].key, None, "no group key: no record key");
    let v: Json = serde_json::from_slice(out[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(v["window_start"], "1970-01-01T00:00:00");
    assert_eq!(v["n"], 3);
    assert_eq!(v["keys"], 2);
}

fn outputs(d: &mut TopologyTestDriver, topic: &str) -> Vec<(Option<String>, String, i64)> {
    d.read_output(topic)
        .into_iter()
        .map(|r| {
            (
                r.key.map(|k| String::from_utf8(k.to_vec()).unwrap()),
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
                r.timestamp_ms,
            )
        })
        .collect()
}

#[test]
fn a_stream_table_join_meets_the_latest_table_row_of_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let sql = "INSERT INTO out SELECT s.x, u.name, u.tier, u._key AS uk, u._offset AS uo FROM src s \
               JOIN users u ON s.k = u._key WHERE s.x > 0";
    let mut d = driver(sql, &[], dir.path());
    d.pipe_input("users", Some(b"a"), Some(br#"{"name":"Ann","tier":1}"#), 1).unwrap();
    d.pipe_input("users", Some(b"b"), Some(br#"{"name":"Bob","tier":2}"#), 2).unwrap();
    pipe(&mut d, &[("a", 1, 10), ("b", 2, 20), ("z", 3, 30), ("a", 0, 40)]);
    // The table changes: later records see the new row; a tombstone removes the key.
    d.pipe_input("users", Some(b"a"), Some(br#"{"name":"Ann2","tier":3}"#), 3).unwrap();
    d.pipe_input("users", Some(b"b"), None, 4).unwrap();
    pipe(&mut d, &[("a", 5, 50), ("b", 6, 60)]);
    assert_eq!(
        outputs(&mut d, "out"),
        vec![
            (Some("a".into()), r#"{"x":1,"name":"Ann","tier":1,"uk":"a","uo":null}"#.into(), 10),
            (Some("b".into()), r#"{"x":2,"name":"Bob","tier":2,"uk":"b","uo":null}"#.into(), 20),
            (Some("a".into()), r#"{"x":5,"name":"Ann2","tier":3,"uk":"a","uo":null}"#.into(), 50),
        ]
    );
}

#[test]
fn a_left_join_keeps_records_without_a_table_row_and_partition_by_sets_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let sql = "INSERT INTO out SELECT src.x, users.name FROM src LEFT JOIN users \
               ON users._key = lower(src.k) PARTITION BY users.name";
    let mut d = driver(sql, &[], dir.path());
    d.pipe_input("users", Some(b"a"), Some(br#"{"name":"Ann","tier":1}"#), 1).unwrap();
    pipe(&mut d, &[("A", 1, 10), ("b", 2, 20)]);
    assert_eq!(
        outputs(&mut d, "out"),
        vec![(Some("Ann".into()), r#"{"x":1,"name":"Ann"}"#.into(), 10), (None, r#"{"x":2,"name":null}"#.into(), 20),]
    );
}

#[test]
fn partition_by_keys_stateless_and_windowed_results() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = driver("INSERT INTO out SELECT k, x FROM src PARTITION BY x * 10", &[], dir.path());
    pipe(&mut d, &[("a", 1, 10), ("b", 2, 20)]);
    assert_eq!(
        outputs(&mut d, "out"),
        vec![
            (Some("10".into()), r#"{"k":"a","x":1}"#.into(), 10),
            (Some("20".into()), r#"{"k":"b","x":2}"#.into(), 20)
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let sql = "INSERT INTO out SELECT k, count(*) AS n FROM TUMBLE(src, ts, INTERVAL '1' SECOND) \
               GROUP BY window_start, window_end, k PARTITION BY k";
    let mut d = driver(sql, &[], dir.path());
    pipe(&mut d, &[("a", 1, 10), ("a", 2, 20), ("b", 1, 30), ("c", 1, 5_000)]);
    let mut got = outputs(&mut d, "out");
    got.sort();
    assert_eq!(
        got,
        vec![
            (Some("a".into()), r#"{"k":"a","n":2}"#.into(), 999),
            (Some("b".into()), r#"{"k":"b","n":1}"#.into(), 999)
        ]
    );
}

fn interval_driver(sql: &str, dir: &std::path::Path) -> TopologyTestDriver {
    let plan = analyze::analyze(sql).unwrap();
    let (options, source) = source(&[("lateness", "5 seconds")]);
    let join = plan.interval.clone().expect("an interval join");
    let right_options = TableOptions::parse("clicks", vec![("topic", "clicks")]).unwrap();
    let schema = super::super::format::table_schema(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("y", DataType::Int64, true),
        Field::new("ts", DataType::Int64, true),
    ]);
    let right = nodes::Source {
        decoder: Arc::new(RecordDecoder::new(&right_options, schema, None).unwrap()),
        lateness_ms: options.lateness_ms,
        idle_timeout_ms: None,
    };
    assert_eq!(join.table, "clicks");
    let topology = compile(&plan, &options, source, None, Some((right, "clicks".to_owned(), (1, 1))), 1).unwrap();
    let config = StreamsConfig::new("cq-join", "127.0.0.1:9092").set("state.dir", dir.to_str().unwrap()).unwrap();
    TopologyTestDriver::new(topology, &config).unwrap()
}

#[test]
fn an_interval_join_emits_every_pair_within_the_bounds_once() {
    for seed in [3u64, 19, 77] {
        let dir = tempfile::tempdir().unwrap();
        let sql = "INSERT INTO out SELECT src.x, c.y, c.ts - src.ts AS gap FROM src JOIN clicks c \
                   ON src.k = c.k AND c.ts BETWEEN src.ts - INTERVAL '1' SECOND AND src.ts + INTERVAL '2' SECOND";
        let mut d = interval_driver(sql, dir.path());
        let mut next = xorshift(seed);
        // (side, k, id, ts): ids unique per side; times advance 100 ms a step, out of order by up to 3 s.
        let mut lefts = Vec::new();
        let mut rights = Vec::new();
        for i in 0..400i64 {
            let k = ["a", "b", "c"][(next() % 3) as usize];
            let ts = (i * 100 - (next() % 3_000) as i64).max(0);
            if next().is_multiple_of(2) {
                let value = format!(r#"{{"k":"{k}","x":{i},"ts":{ts}}}"#);
                d.pipe_input("src", Some(k.as_bytes()), Some(value.as_bytes()), ts).unwrap();
                lefts.push((k, i, ts));
            } else {
                let value = format!(r#"{{"k":"{k}","y":{i},"ts":{ts}}}"#);
                d.pipe_input("clicks", Some(k.as_bytes()), Some(value.as_bytes()), ts).unwrap();
                rights.push((k, i, ts));
            }
        }
        let mut got = Vec::new();
        for r in d.read_output("out") {
            let v: Json = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            let (x, y) = (v["x"].as_i64().unwrap(), v["y"].as_i64().unwrap());
            let (k, _, lt) = lefts.iter().find(|l| l.1 == x).unwrap();
            let (_, _, rt) = rights.iter().find(|r| r.1 == y).unwrap();
            assert_eq!(v["gap"].as_i64(), Some(rt - lt));
            assert_eq!(r.key.as_deref(), Some(format!(r#"{{"k0":"{k}"}}"#).as_bytes()), "keyed by the join key");
            assert_eq!(r.timestamp_ms, *lt.max(rt), "the later record's time");
            got.push((x, y));
        }
        got.sort();
        let mut expected: Vec<(i64, i64)> = lefts
            .iter()
            .flat_map(|(lk, x, lt)| {
                rights
                    .iter()
                    .filter(move |(rk, _, rt)| rk == lk && (*lt - 1_000..=*lt + 2_000).contains(rt))
                    .map(move |(_, y, _)| (*x, *y))
            })
            .collect();
        expected.sort();
        assert!(!expected.is_empty());
        assert_eq!(got, expected, "seed {seed}: every pair once, none else");
        assert_eq!(d.dropped_late(), 0);
    }
}

#[test]
fn an_interval_join_drops_late_records_and_expires_rows() {
    let dir = tempfile::tempdir().unwrap();
    let sql = "INSERT INTO out SELECT src.x, c.y FROM src JOIN clicks c ON c.k = src.k \
               AND c.ts >= src.ts AND c.ts <= src.ts + INTERVAL '1' SECOND PARTITION BY c.y";
    let mut d = interval_driver(sql, dir.path());
    let left = |d: &mut TopologyTestDriver, x: i64, ts: i64| {
        let v = format!(r#"{{"k":"a","x":{x},"ts":{ts}}}"#);
        d.pipe_input("src", Some(b"a"), Some(v.as_bytes()), ts).unwrap();
    };
    let right = |d: &mut TopologyTestDriver, y: i64, ts: i64| {
        let v = format!(r#"{{"k":"a","y":{y},"ts":{ts}}}"#);
        d.pipe_input("clicks", Some(b"a"), Some(v.as_bytes()), ts).unwrap();
    };
    left(&mut d, 1, 1_000);
    right(&mut d, 10, 1_500); // pairs with x=1
    right(&mut d, 11, 30_000);
    left(&mut d, 2, 30_000); // pairs with y=11; watermark 25 s on both sides now
    right(&mut d, 12, 1_800); // late (< 25 s): dropped, although x=1 would match it
    left(&mut d, 3, 29_500); // not late; pairs with y=11 (30 s within [29.5 s, 30.5 s])
    let mut got: Vec<(Option<String>, i64, i64)> = d
        .read_output("out")
        .into_iter()
        .map(|r| {
            let v: Json = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            (r.key.map(|k| String::from_utf8(k.to_vec()).unwrap()), v["x"].as_i64().unwrap(), v["y"].as_i64().unwrap())
        })
        .collect();
    got.sort();
    assert_eq!(got, vec![(Some("10".into()), 1, 10), (Some("11".into()), 2, 11), (Some("11".into()), 3, 11)]);
    assert_eq!(d.dropped_late(), 1);
}

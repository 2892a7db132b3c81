//! DSL operators and error handling through the test driver (no broker).

use std::time::Duration;

use spate_streams::serdes::{I64Serde, NullableSerde, StringSerde};
use spate_streams::window::TimeWindows;
use spate_streams::{Consumed, Grouped, Materialized, Produced, StreamsBuilder, StreamsConfig, TopologyTestDriver};

fn config(dir: &std::path::Path) -> StreamsConfig {
    StreamsConfig::new("dsl", "127.0.0.1:1").set("state.dir", dir.to_str().unwrap()).unwrap()
}

fn strings(records: Vec<spate_streams::test_driver::TestRecord>) -> Vec<(String, String)> {
    records
        .into_iter()
        .map(|r| {
            (
                String::from_utf8(r.key.unwrap_or_default().to_vec()).unwrap(),
                String::from_utf8(r.value.unwrap_or_default().to_vec()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn stateless_operators_filter_map_flat_map_branch_merge() {
    let b = StreamsBuilder::new();
    let s = b.stream(&["in"], Consumed::with(StringSerde, StringSerde));
    let branches = s
        .filter_not(|_, v| v.is_empty())
        .flat_map_values(|v: String| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .map_values(|w| w.to_uppercase())
        .split()
        .branch("short", |_, v| v.len() <= 2)
        .default_branch("long");
    branches["short"].map(|k, v| (v, k)).to("short", Produced::with(StringSerde, StringSerde));
    branches["long"]
        .merge(&branches["short"])
        .select_key(|_, v| v.clone())
        .to("all", Produced::with(StringSerde, StringSerde));
    let dir = tempfile::tempdir().unwrap();
    let mut d = TopologyTestDriver::new(b.build().unwrap(), &config(dir.path())).unwrap();
    d.pipe("in", &StringSerde, &StringSerde, &"k".to_string(), &"ab cde".to_string(), 1).unwrap();
    d.pipe("in", &StringSerde, &StringSerde, &"k".to_string(), &String::new(), 2).unwrap();
    assert_eq!(strings(d.read_output("short")), vec![("AB".into(), "k".into())]);
    assert_eq!(strings(d.read_output("all")), vec![("AB".into(), "AB".into()), ("CDE".into(), "CDE".into())]);
}

fn counting(builder: &StreamsBuilder) {
    builder
        .stream(&["in"], Consumed::with(StringSerde, I64Serde))
        .group_by_key(Grouped::with(StringSerde, I64Serde))
        .windowed_by(TimeWindows::of_size_with_grace(Duration::from_secs(10), Duration::ZERO).unwrap())
        .reduce(|a, b| a + b, Materialized::named("sums"))
        .unwrap()
        .to_stream()
        .map(|wk, v| (wk.key, v))
        .to("out", Produced::with(StringSerde, I64Serde));
}

#[test]
fn late_records_go_to_the_late_records_topic_with_their_bytes() {
    let b = StreamsBuilder::new();
    counting(&b);
    b.late_records_topic("late");
    let dir = tempfile::tempdir().unwrap();
    let mut d = TopologyTestDriver::new(b.build().unwrap(), &config(dir.path())).unwrap();
    d.pipe("in", &StringSerde, &I64Serde, &"a".to_string(), &1, 15_000).unwrap();
    d.pipe("in", &StringSerde, &I64Serde, &"a".to_string(), &2, 5_000).unwrap();
    assert_eq!(d.dropped_late(), 1);
    let late = d.read_output("late");
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].key.as_deref(), Some(&b"a"[..]));
    assert_eq!(late[0].timestamp_ms, 5_000);
}

fn bad_input(handler: (&str, &str)) -> Result<(TopologyTestDriver, tempfile::TempDir), spate_streams::StreamsError> {
    let b = StreamsBuilder::new();
    b.stream(&["in"], Consumed::with(StringSerde, I64Serde)).to("out", Produced::with(StringSerde, I64Serde));
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path()).set(handler.0, handler.1)?;
    let d = TopologyTestDriver::new(b.build()?, &config)?;
    Ok((d, dir))
}

#[test]
fn undecodable_records_fail_or_are_skipped_or_go_to_the_dead_letter_topic() {
    let good = 7i64.to_be_bytes();
    let (mut fail, _dir1) = bad_input(("default.deserialization.exception.handler", "LogAndFail")).unwrap();
    let err = fail.pipe_input("in", Some(b"k"), Some(b"not eight bytes"), 1).unwrap_err();
    assert!(err.to_string().contains("in-0@0") && err.to_string().contains("LogAndContinue"), "{err}");

    let (mut cont, _dir2) = bad_input((
        "default.deserialization.exception.handler",
        "org.apache.kafka.streams.errors.LogAndContinueExceptionHandler",
    ))
    .unwrap();
    cont.pipe_input("in", Some(b"k"), Some(b"bad"), 1).unwrap();
    cont.pipe_input("in", Some(b"k"), Some(&good), 2).unwrap();
    assert_eq!(cont.read_output("out").len(), 1);

    let (mut dlq, _dir3) = bad_input(("errors.deadletterqueue.topic.name", "dlq")).unwrap();
    dlq.pipe_input("in", Some(b"k"), Some(b"bad"), 1).unwrap();
    dlq.pipe_input("in", Some(b"k"), Some(&good), 2).unwrap();
    let dead = dlq.read_output("dlq");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value.as_deref(), Some(&b"bad"[..]));
    assert_eq!(dlq.read_output("out").len(), 1);
}

#[test]
fn config_errors_name_the_key() {
    let c = StreamsConfig::new("x", "127.0.0.1:1");
    let e = c.clone().set("processing.guarantee", "exactly_once").unwrap_err().to_string();
    assert!(e.contains("processing.guarantee") && e.contains("exactly_once_v2"), "{e}");
    let e = c.clone().set("no.such.key", "1").unwrap_err().to_string();
    assert!(e.contains("no.such.key"), "{e}");
    let e = c.clone().set("num.stream.threads", "many").unwrap_err().to_string();
    assert!(e.contains("num.stream.threads"), "{e}");
    assert!(StreamsConfig::new("bad/id", "h:1").validate().is_err());
}

#[test]
fn tables_filter_and_join_and_tombstones_propagate() {
    let b = StreamsBuilder::new();
    let users = b.table("users", Consumed::with(StringSerde, StringSerde), Materialized::named("users")).unwrap();
    let orders = b
        .stream(&["orders"], Consumed::with(StringSerde, I64Serde))
        .group_by_key(Grouped::with(StringSerde, I64Serde))
        .reduce(|a, b| a + b, Materialized::named("totals"))
        .unwrap();
    users
        .join(&orders, |name: &String, total: &i64| format!("{name}:{total}"))
        .unwrap()
        .to_change_stream()
        .to("joined", Produced::with(StringSerde, NullableSerde(StringSerde)));
    users
        .filter(|_, name| name.starts_with('a'))
        .to_change_stream()
        .to("a-users", Produced::with(StringSerde, NullableSerde(StringSerde)));
    let dir = tempfile::tempdir().unwrap();
    let mut d = TopologyTestDriver::new(b.build().unwrap(), &config(dir.path())).unwrap();
    d.pipe_input("users", Some(b"u1"), Some(b"alice"), 1).unwrap();
    d.pipe("orders", &StringSerde, &I64Serde, &"u1".to_string(), &5, 2).unwrap();
    d.pipe("orders", &StringSerde, &I64Serde, &"u1".to_string(), &7, 3).unwrap();
    d.pipe_input("users", Some(b"u1"), None, 4).unwrap();
    let joined: Vec<Option<String>> =
        d.read_output("joined").into_iter().map(|r| r.value.map(|v| String::from_utf8(v.to_vec()).unwrap())).collect();
    assert_eq!(joined, vec![Some("alice:5".into()), Some("alice:12".into()), None]);
    let a_users: Vec<Option<bytes::Bytes>> = d.read_output("a-users").into_iter().map(|r| r.value).collect();
    assert_eq!(a_users, vec![Some(bytes::Bytes::from_static(b"alice")), None]);
}

#[test]
fn streams_join_a_global_table_by_a_key_taken_from_the_value() {
    let b = StreamsBuilder::new();
    let products =
        b.global_table("products", Consumed::with(StringSerde, StringSerde), Materialized::named("products"));
    b.stream(&["orders"], Consumed::with(StringSerde, StringSerde))
        .left_join_global(
            &products,
            |_, product_id: &String| product_id.clone(),
            |pid: &String, name: Option<&String>| format!("{pid}={}", name.map(String::as_str).unwrap_or("?")),
        )
        .to("out", Produced::with(StringSerde, StringSerde));
    let dir = tempfile::tempdir().unwrap();
    let mut d = TopologyTestDriver::new(b.build().unwrap(), &config(dir.path())).unwrap();
    d.pipe_input("products", Some(b"p1"), Some(b"lamp"), 1).unwrap();
    d.pipe_input("orders", Some(b"o1"), Some(b"p1"), 2).unwrap();
    d.pipe_input("orders", Some(b"o2"), Some(b"p2"), 3).unwrap();
    d.pipe_input("products", Some(b"p1"), None, 4).unwrap();
    d.pipe_input("orders", Some(b"o3"), Some(b"p1"), 5).unwrap();
    assert_eq!(
        strings(d.read_output("out")),
        vec![("o1".into(), "p1=lamp".into()), ("o2".into(), "p2=?".into()), ("o3".into(), "p1=?".into())]
    );
    let q = d.store("products", StringSerde, StringSerde);
    assert_eq!(q.get(&"p1".to_string()).unwrap(), None);
}

#[test]
fn a_regrouped_table_adds_new_rows_and_subtracts_old_ones() {
    let b = StreamsBuilder::new();
    let users = b.table("users", Consumed::with(StringSerde, StringSerde), Materialized::named("users")).unwrap();
    users
        .group_by(|_, region: &String| (region.clone(), 1i64), Grouped::with(StringSerde, I64Serde))
        .count(Materialized::named("per-region"))
        .unwrap()
        .to_stream()
        .to("counts", Produced::with(StringSerde, I64Serde));
    let dir = tempfile::tempdir().unwrap();
    let mut d = TopologyTestDriver::new(b.build().unwrap(), &config(dir.path())).unwrap();
    d.pipe_input("users", Some(b"u1"), Some(b"eu"), 1).unwrap();
    d.pipe_input("users", Some(b"u2"), Some(b"eu"), 2).unwrap();
    d.pipe_input("users", Some(b"u1"), Some(b"us"), 3).unwrap();
    d.pipe_input("users", Some(b"u2"), None, 4).unwrap();
    let q = d.store("per-region", StringSerde, I64Serde);
    assert_eq!(q.all().unwrap(), vec![("eu".to_string(), 0), ("us".to_string(), 1)]);
    let last: std::collections::BTreeMap<String, i64> = d
        .read_output("counts")
        .into_iter()
        .map(|r| {
            (
                String::from_utf8(r.key.unwrap().to_vec()).unwrap(),
                i64::from_be_bytes(r.value.unwrap()[..].try_into().unwrap()),
            )
        })
        .collect();
    assert_eq!(last, [("eu".to_string(), 0), ("us".to_string(), 1)].into_iter().collect());
}

#[test]
fn a_foreign_key_join_follows_both_tables() {
    let b = StreamsBuilder::new();
    let orders = b.table("orders", Consumed::with(StringSerde, StringSerde), Materialized::named("orders")).unwrap();
    let products =
        b.table("products", Consumed::with(StringSerde, StringSerde), Materialized::named("products")).unwrap();
    orders
        .join_foreign_key(
            &products,
            |order: &String| order.split(':').next().unwrap_or_default().to_string(),
            |order: &String, product: &String| format!("{product} x{}", order.split(':').nth(1).unwrap_or("?")),
        )
        .unwrap()
        .to_change_stream()
        .to("out", Produced::with(StringSerde, NullableSerde(StringSerde)));
    let dir = tempfile::tempdir().unwrap();
    let mut d = TopologyTestDriver::new(b.build().unwrap(), &config(dir.path())).unwrap();
    let mut results = Vec::new();
    let mut step = |d: &mut TopologyTestDriver, topic: &str, key: &[u8], value: Option<&[u8]>, ts: i64| {
        d.pipe_input(topic, Some(key), value, ts).unwrap();
        for r in d.read_output("out") {
            results.push((
                String::from_utf8(r.key.unwrap().to_vec()).unwrap(),
                r.value.map(|v| String::from_utf8(v.to_vec()).unwrap()),
            ));
        }
    };
    step(&mut d, "products", b"p1", Some(b"lamp"), 1);
    step(&mut d, "orders", b"o1", Some(b"p1:2"), 2);
    step(&mut d, "products", b"p1", Some(b"lantern"), 3);
    step(&mut d, "orders", b"o1", Some(b"p2:2"), 4);
    step(&mut d, "products", b"p2", Some(b"desk"), 5);
    step(&mut d, "orders", b"o1", None, 6);
    step(&mut d, "products", b"p2", Some(b"table"), 7);
    let o1 = |v: Option<&str>| ("o1".to_string(), v.map(str::to_string));
    assert_eq!(results, vec![o1(Some("lamp x2")), o1(Some("lantern x2")), o1(None), o1(Some("desk x2")), o1(None)]);
}

#[test]
fn repartition_topics_are_named_after_the_store_or_the_grouping() {
    let b = StreamsBuilder::new();
    b.stream(&["in"], Consumed::with(StringSerde, StringSerde))
        .group_by(|_, v| v.clone(), Grouped::with(StringSerde, StringSerde))
        .count(Materialized::named("counts"))
        .unwrap();
    b.stream(&["in2"], Consumed::with(StringSerde, StringSerde))
        .group_by(|_, v| v.clone(), Grouped::with(StringSerde, StringSerde).with_name("by-value"))
        .count(Materialized::named("counts2"))
        .unwrap();
    let description = b.build().unwrap().to_string();
    assert!(description.contains("Repartition(\"counts\")"), "{description}");
    assert!(description.contains("Repartition(\"by-value\")"), "{description}");
}

fn windowed_join(kind: &str) -> TopologyTestDriver {
    use spate_streams::window::JoinWindows;
    use spate_streams::StreamJoined;
    let b = StreamsBuilder::new();
    let left = b.stream(&["left"], Consumed::with(StringSerde, StringSerde));
    let right = b.stream(&["right"], Consumed::with(StringSerde, StringSerde));
    let windows = JoinWindows::of_time_difference_and_grace(Duration::from_secs(10), Duration::from_secs(2)).unwrap();
    let serdes = || StreamJoined::with(StringSerde, StringSerde, StringSerde);
    let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "-".into());
    let joined = match kind {
        "inner" => left.join(&right, |l: &String, r: &String| format!("{l}+{r}"), windows, serdes()).unwrap(),
        "outer" => left
            .outer_join(
                &right,
                move |l: Option<&String>, r: Option<&String>| format!("{}+{}", show(l), show(r)),
                windows,
                serdes(),
            )
            .unwrap(),
        _ => unreachable!(),
    };
    joined.to("out", Produced::with(StringSerde, StringSerde));
    let dir = tempfile::tempdir().unwrap().keep();
    TopologyTestDriver::new(b.build().unwrap(), &config(&dir)).unwrap()
}

#[test]
fn windowed_inner_and_outer_joins() {
    for kind in ["inner", "outer"] {
        let mut d = windowed_join(kind);
        d.pipe_input("left", Some(b"k"), Some(b"L1"), 1_000).unwrap();
        d.pipe_input("right", Some(b"k"), Some(b"R1"), 5_000).unwrap(); // within 10 s: joins
        d.pipe_input("right", Some(b"j"), Some(b"R2"), 6_000).unwrap(); // no left: outer pads later
        d.pipe_input("left", Some(b"k"), Some(b"L2"), 20_000).unwrap(); // 15 s after R1: no match
                                                                        // Moves stream time past every window + grace; the outer join's sweep emits the
                                                                        // unmatched records (wall clock advanced past the emit interval).
        d.advance_wall_clock_ms(2_000).unwrap();
        d.pipe_input("left", Some(b"z"), Some(b"Z"), 60_000).unwrap();
        // The sweep runs at most once per emit interval of wall-clock time: let one pass.
        d.advance_wall_clock_ms(2_000).unwrap();
        let out = strings(d.read_output("out"));
        let expected: Vec<(String, String)> = match kind {
            "inner" => vec![("k".into(), "L1+R1".into())],
            _ => vec![("k".into(), "L1+R1".into()), ("j".into(), "-+R2".into()), ("k".into(), "L2+-".into())],
        };
        assert_eq!(out, expected, "{kind}");
    }
}

/// The Processor API: a processor with its own store (first sighting of each key passes) and
/// a wall-clock punctuation that reports how many keys it has seen.
#[test]
fn processors_use_their_stores_and_punctuate() {
    use spate_streams::{Processor, ProcessorContext, PunctuationType, Record};
    struct Dedup {
        seen: spate_streams::KeyValueStore<String, i64>,
        distinct: i64,
    }
    impl Processor<String, String, String, String> for Dedup {
        fn process(
            &mut self,
            ctx: &mut ProcessorContext<'_, String, String>,
            r: Record<String, String>,
        ) -> Result<(), spate_streams::StreamsError> {
            if self.seen.get(&r.key)?.is_none() {
                self.seen.put(ctx, &r.key, Some(&r.timestamp_ms))?;
                self.distinct += 1;
                ctx.forward(r)?;
            }
            Ok(())
        }
        fn punctuate(
            &mut self,
            ctx: &mut ProcessorContext<'_, String, String>,
            _: PunctuationType,
            now_ms: i64,
        ) -> Result<(), spate_streams::StreamsError> {
            ctx.forward(Record::new("distinct".into(), self.distinct.to_string(), now_ms))
        }
    }
    let b = StreamsBuilder::new();
    b.add_key_value_store("seen", true, false).unwrap();
    b.stream(&["in"], Consumed::with(StringSerde, StringSerde))
        .process(
            |init| {
                init.schedule(1_000, PunctuationType::WallClockTime)?;
                Ok(Dedup { seen: init.key_value_store("seen", StringSerde, I64Serde)?, distinct: 0 })
            },
            &["seen"],
        )
        .to("out", Produced::with(StringSerde, StringSerde));
    let dir = tempfile::tempdir().unwrap();
    let mut d = TopologyTestDriver::new(b.build().unwrap(), &config(dir.path())).unwrap();
    for (k, ts) in [("a", 1), ("b", 2), ("a", 3)] {
        d.pipe_input("in", Some(k.as_bytes()), Some(b"v"), ts).unwrap();
    }
    d.advance_wall_clock_ms(500).unwrap();
    d.advance_wall_clock_ms(600).unwrap();
    assert_eq!(
        strings(d.read_output("out")),
        vec![("a".into(), "v".into()), ("b".into(), "v".into()), ("distinct".into(), "2".into())]
    );
    assert_eq!(d.store("seen", StringSerde, I64Serde).get(&"a".to_string()).unwrap(), Some(1));
}

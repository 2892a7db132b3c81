//! Continuous SQL queries end to end: `INSERT INTO … SELECT …` running on the spate-streams
//! runtime against a real broker, checked against the DSL's windowed aggregations and against a
//! model of the window semantics (watermark = max event time − lateness; a window closes once
//! its end ≤ watermark; a session once last + gap < watermark).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use spate_client::admin::{AdminConfig, NewTopic};
use spate_client::{
    Admin, AutoOffsetReset, Consumer, ConsumerConfig, ConsumerRecord, Producer, ProducerConfig, ProducerRecord,
    TopicPartition,
};
use spate_e2e::TestBroker;
use spate_streams::serdes::{JsonSerde, StringSerde};
use spate_streams::sql::continuous::ContinuousQuery;
use spate_streams::sql::{SqlConfig, SqlContext};
use spate_streams::window::TimeWindows;
use spate_streams::{
    Consumed, EmitStrategy, Grouped, KafkaStreams, Materialized, Produced, StreamsBuilder, StreamsConfig,
};

type Json = serde_json::Value;

fn broker() -> TestBroker {
    TestBroker::start(&["--set", "group.initial.rebalance.delay.ms=0"]).unwrap()
}

async fn create(broker: &TestBroker, topics: &[(&str, i32)]) {
    let admin = Admin::new(AdminConfig { bootstrap_servers: vec![broker.bootstrap()], ..AdminConfig::default() })
        .await
        .unwrap();
    for (t, n) in topics {
        admin.create_topic(NewTopic::new(*t, *n, 1)).await.unwrap();
    }
}

/// (group key, x, event time ms): produced as `{"k":…,"x":…,"ts":…}` with the record
/// timestamp = ts (what the DSL windows on), keyed by k.
type Event = (&'static str, i64, i64);

async fn produce(broker: &TestBroker, topic: &str, events: &[Event]) {
    let producer =
        Producer::new(ProducerConfig { bootstrap_servers: vec![broker.bootstrap()], ..ProducerConfig::default() })
            .await
            .unwrap();
    let mut acks = Vec::new();
    for (k, x, ts) in events {
        let mut r = ProducerRecord::default().with_timestamp_ms(*ts);
        r.key = Some(bytes::Bytes::copy_from_slice(k.as_bytes()));
        r.value = Some(bytes::Bytes::from(format!(r#"{{"k":"{k}","x":{x},"ts":{ts}}}"#)));
        acks.push(producer.send(topic, r).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
    producer.close().await.unwrap();
}

async fn read_until(
    broker: &TestBroker,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[ConsumerRecord]) -> bool,
) -> Vec<ConsumerRecord> {
    let consumer = Consumer::new(ConsumerConfig {
        bootstrap_servers: vec![broker.bootstrap()],
        auto_offset_reset: AutoOffsetReset::Earliest,
        fetch_max_wait_ms: 100,
        ..ConsumerConfig::default()
    })
    .await
    .unwrap();
    let metadata = consumer.cluster().topic(topic).await.unwrap();
    consumer
        .assign(metadata.partitions.iter().map(|p| TopicPartition::new(topic, p.partition)).collect())
        .await
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    loop {
        records.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
        if done(&records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: condition not met within {timeout:?}; got {} records",
            records.len()
        );
    }
}

fn json(r: &ConsumerRecord) -> Json {
    serde_json::from_slice(r.value.as_deref().unwrap()).unwrap()
}

fn extra(state_dir: &std::path::Path) -> Vec<(String, String)> {
    [
        ("commit.interval.ms", "200"),
        ("state.dir", state_dir.to_str().unwrap()),
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

async fn context(broker: &TestBroker, table_sql: &str) -> SqlContext {
    let ctx = SqlContext::connect(SqlConfig::new(broker.bootstrap())).await.unwrap();
    ctx.sql(table_sql).await.unwrap();
    ctx
}

/// One result row: (k, window_start, window_end) → (n, total).
type Windows = BTreeMap<(String, i64, i64), (i64, i64)>;

fn windows_of(records: &[ConsumerRecord]) -> (Windows, usize) {
    let mut out = Windows::new();
    for r in records {
        let v = json(r);
        let key: Json = serde_json::from_slice(r.key.as_deref().unwrap()).unwrap();
        assert_eq!(key["k"], v["k"], "the output key is the group key as JSON");
        let window = (v["k"].as_str().unwrap().to_owned(), v["ws"].as_i64().unwrap(), v["we"].as_i64().unwrap());
        let result = (v["n"].as_i64().unwrap(), v["total"].as_i64().unwrap());
        if let Some(earlier) = out.insert(window.clone(), result) {
            assert_eq!(earlier, result, "a window emitted twice must carry the same totals: {window:?}");
        }
    }
    (out, records.len())
}

/// The window semantics, computed directly: one task sees every record in produce order.
fn model_time_windows(events: &[Event], size_ms: i64, slide_ms: i64, lateness_ms: i64) -> Windows {
    let mut stream_time = -1i64;
    let mut out = Windows::new();
    for (k, x, ts) in events {
        stream_time = stream_time.max(*ts);
        let watermark = stream_time - lateness_ms;
        let mut start = (ts - size_ms + slide_ms).max(0) / slide_ms * slide_ms;
        while start <= *ts {
            if start + size_ms > watermark {
                let e = out.entry((k.to_string(), start, start + size_ms)).or_insert((0, 0));
                e.0 += 1;
                e.1 += x;
            }
            start += slide_ms;
        }
    }
    let watermark = stream_time - lateness_ms;
    out.retain(|(_, _, end), _| *end <= watermark);
    out
}

/// The DSL's count per (k, window) with `grace = lateness`, emitted on window close.
fn dsl_counts(input: &str, output: &str, windows: TimeWindows) -> spate_streams::Topology {
    let builder = StreamsBuilder::new();
    builder
        .stream(&[input], Consumed::with(StringSerde, JsonSerde::<Json>::new()))
        .group_by(|k: &String, _| k.clone(), Grouped::with(StringSerde, JsonSerde::<Json>::new()).with_name("by-k"))
        .windowed_by(windows)
        .emit_strategy(EmitStrategy::OnWindowClose)
        .count(Materialized::named("dsl-counts"))
        .unwrap()
        .to_stream()
        .map(|w, n| {
            (w.key.clone(), serde_json::json!({"k": w.key, "ws": w.window.start_ms, "we": w.window.end_ms, "n": n}))
        })
        .to(output, Produced::with(StringSerde, JsonSerde::<Json>::new()));
    builder.build().unwrap()
}

/// Out of order within lateness, late beyond it, a closing record at the end.
fn tumble_events() -> Vec<Event> {
    let s = 1_000;
    vec![
        ("a", 1, s),
        ("b", 10, 2 * s),
        ("a", 2, 9 * s),
        ("a", 3, 11 * s),
        ("b", 20, 8 * s),  // out of order, within lateness (stream time 11 s, watermark 9 s)
        ("a", 4, 23 * s),  // watermark 21 s: closes [0,10) and [10,20)
        ("b", 30, 5 * s),  // late: its window closed
        ("a", 5, 19 * s),  // late: [10,20) closed
        ("b", 40, 21 * s), // on time
        ("c", 50, 45 * s), // closes [20,30)
    ]
}

const SELECT: &str = "CAST(window_start AS BIGINT) AS ws, CAST(window_end AS BIGINT) AS we, k, count(*) AS n, \
                      sum(x) AS total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumble_results_equal_the_dsl_and_the_model_with_late_records() {
    let broker = broker();
    create(&broker, &[("tq-in", 1), ("tq-out", 1), ("tq-dsl", 1)]).await;
    let events = tumble_events();
    produce(&broker, "tq-in", &events).await;
    let ctx = context(
        &broker,
        "CREATE TABLE tq (k VARCHAR, x BIGINT, ts BIGINT) WITH (topic = 'tq-in', format = 'json', lateness = '2 seconds')",
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let query = ContinuousQuery::start(
        &ctx,
        &format!(
            "INSERT INTO \"tq-out\" SELECT {SELECT} FROM TUMBLE(tq, ts, INTERVAL '10' SECOND) \
             GROUP BY window_start, window_end, k"
        ),
        "tq-query",
        &extra(state.path()),
    )
    .await
    .unwrap();
    let expected = model_time_windows(&events, 10_000, 10_000, 2_000);
    assert_eq!(expected.len(), 5, "{expected:?}");
    let records = read_until(&broker, "tq-out", Duration::from_secs(30), |r| r.len() >= expected.len()).await;
    let (got, n) = windows_of(&records);
    assert_eq!(got, expected);
    assert_eq!(n, expected.len(), "one result per window");
    let deadline = Instant::now() + Duration::from_secs(10);
    while query.metrics().dropped_late.load(std::sync::atomic::Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "late records not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("tumble query: {} results in {:?}", records.len(), started.elapsed());
    tokio::task::spawn_blocking(move || query.close()).await.unwrap().unwrap();

    // The DSL on the same input: the same windows and counts.
    let dsl_state = tempfile::tempdir().unwrap();
    let windows = TimeWindows::of_size_with_grace(Duration::from_secs(10), Duration::from_secs(2)).unwrap();
    let dsl =
        dsl_window_counts(&broker, "tq-in", "tq-dsl", "tq-dsl-app", windows, dsl_state.path(), expected.len()).await;
    let sql_counts: BTreeMap<(String, i64, i64), i64> = got.iter().map(|(k, (n, _))| (k.clone(), *n)).collect();
    assert_eq!(sql_counts, dsl);
}

/// A tumbling query over a backlog in three source partitions: the watermark is the minimum over
/// the source partitions (watermark markers reach every window task), so the partitions processed
/// later are not late; every record is counted, as the model of one in-order stream says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_over_several_partitions_loses_no_record_to_skew() {
    let broker = broker();
    create(&broker, &[("tp-in", 3), ("tp-out", 2)]).await;
    let keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
    // In time order overall, so in time order within every partition: nothing is late.
    let events: Vec<Event> = (0..2_000i64).map(|i| (keys[(i * 5 % 8) as usize], i % 11, i * 50)).collect();
    produce(&broker, "tp-in", &events).await;
    // Far-future records of every key close every window of the backlog.
    let flush: Vec<Event> = keys.iter().map(|k| (*k, 0, 10_000_000)).collect();
    produce(&broker, "tp-in", &flush).await;
    let ctx = context(&broker, "CREATE TABLE tp (k VARCHAR, x BIGINT, ts BIGINT) WITH (topic = 'tp-in')").await;
    let sql = format!(
        "INSERT INTO \"tp-out\" SELECT {SELECT} FROM TUMBLE(tp, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end, k"
    );
    let state = tempfile::tempdir().unwrap();
    let query = ContinuousQuery::start(&ctx, &sql, "skew-query", &extra(state.path())).await.unwrap();
    let mut all = events.clone();
    all.extend(flush);
    let expected_all = {
        let mut m = model_time_windows(&all, 10_000, 10_000, 0);
        m.retain(|(_, start, _), _| *start < 10_000_000);
        m
    };
    let records =
        read_until(&broker, "tp-out", Duration::from_secs(60), |r| windows_of(r).0.len() >= expected_all.len()).await;
    let (got, _) = windows_of(&records);
    assert_eq!(got, expected_all, "every record counted in its window");
    let late = query.metrics().dropped_late.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(late, 0);
    tokio::task::spawn_blocking(move || query.close()).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_results_equal_the_dsl() {
    let broker = broker();
    create(&broker, &[("hq-in", 1), ("hq-out", 1), ("hq-dsl", 1)]).await;
    let events = tumble_events();
    produce(&broker, "hq-in", &events).await;
    let ctx = context(
        &broker,
        "CREATE TABLE hq (k VARCHAR, x BIGINT, ts BIGINT) WITH (topic = 'hq-in', lateness = '2 seconds')",
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    let query = ContinuousQuery::start(
        &ctx,
        &format!(
            "INSERT INTO \"hq-out\" SELECT {SELECT} FROM HOP(hq, ts, INTERVAL '5' SECOND, INTERVAL '10' SECOND) \
             GROUP BY window_start, window_end, k"
        ),
        "hq-query",
        &extra(state.path()),
    )
    .await
    .unwrap();
    let expected = model_time_windows(&events, 10_000, 5_000, 2_000);
    let records = read_until(&broker, "hq-out", Duration::from_secs(30), |r| r.len() >= expected.len()).await;
    let (got, n) = windows_of(&records);
    assert_eq!(got, expected);
    assert_eq!(n, expected.len());
    tokio::task::spawn_blocking(move || query.close()).await.unwrap().unwrap();

    let dsl_state = tempfile::tempdir().unwrap();
    let windows = TimeWindows::of_size_with_grace(Duration::from_secs(10), Duration::from_secs(2))
        .unwrap()
        .advance_by(Duration::from_secs(5))
        .unwrap();
    let dsl =
        dsl_window_counts(&broker, "hq-in", "hq-dsl", "hq-dsl-app", windows, dsl_state.path(), expected.len()).await;
    let sql_counts: BTreeMap<(String, i64, i64), i64> = got.iter().map(|(k, (n, _))| (k.clone(), *n)).collect();
    assert_eq!(sql_counts, dsl);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_close_after_the_gap_and_late_records_are_dropped() {
    let broker = broker();
    create(&broker, &[("sq-in", 1), ("sq-out", 1)]).await;
    let s = 1_000;
    // Gap 10 s, lateness 0. a: 0, 5, 15 → one session [0, 15] (+gap: window_end 25 s); b: 2 → [2, 2].
    // a at 40 s: watermark 40 closes a's [0,15] (15 + 10 < 40) and b's. Then b at 3 s is late
    // (its session would end at 3, 3 + 10 < 40). c at 60 s closes a's [40, 40] (50 < 60).
    let events: Vec<Event> = vec![
        ("a", 1, 0),
        ("a", 2, 5 * s),
        ("b", 7, 2 * s),
        ("a", 3, 15 * s),
        ("a", 4, 40 * s),
        ("b", 100, 3 * s),
        ("c", 0, 60 * s),
    ];
    produce(&broker, "sq-in", &events).await;
    let ctx = context(&broker, "CREATE TABLE sq (k VARCHAR, x BIGINT, ts BIGINT) WITH (topic = 'sq-in')").await;
    let state = tempfile::tempdir().unwrap();
    let query = ContinuousQuery::start(
        &ctx,
        &format!(
            "INSERT INTO \"sq-out\" SELECT {SELECT} FROM SESSION(sq, ts, INTERVAL '10' SECOND) \
             GROUP BY window_start, window_end, k"
        ),
        "sq-query",
        &extra(state.path()),
    )
    .await
    .unwrap();
    let records = read_until(&broker, "sq-out", Duration::from_secs(30), |r| r.len() >= 3).await;
    let (got, _) = windows_of(&records);
    let expected: Windows = [
        (("a".to_owned(), 0, 25 * s), (3, 6)),
        (("b".to_owned(), 2 * s, 12 * s), (1, 7)),
        (("a".to_owned(), 40 * s, 50 * s), (1, 4)),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, expected);
    let deadline = Instant::now() + Duration::from_secs(10);
    while query.metrics().dropped_late.load(std::sync::atomic::Ordering::Relaxed) < 1 {
        assert!(Instant::now() < deadline, "the late record was not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::spawn_blocking(move || query.close()).await.unwrap().unwrap();
}

/// Many keys over two partitions, in two halves with a stop (clean or a crash) in between:
/// totals per window equal the model's.
async fn restart_keeps_totals(crash: bool) {
    let broker = broker();
    let (input, output) = if crash { ("rc-in", "rc-out") } else { ("rs-in", "rs-out") };
    create(&broker, &[(input, 1), (output, 2)]).await;
    let keys = ["a", "b", "c", "d", "e"];
    let events: Vec<Event> = (0..400i64).map(|i| (keys[(i % 5) as usize], i % 7, i * 250)).collect();
    let (first, second) = events.split_at(200);
    produce(&broker, input, first).await;
    let ctx = context(
        &broker,
        &format!("CREATE TABLE rt (k VARCHAR, x BIGINT, ts BIGINT) WITH (topic = '{input}', lateness = '1 second')"),
    )
    .await;
    let sql = format!(
        "INSERT INTO \"{output}\" SELECT {SELECT} FROM TUMBLE(rt, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end, k"
    );
    let state = tempfile::tempdir().unwrap();
    let query = ContinuousQuery::start(&ctx, &sql, "restart-query", &extra(state.path())).await.unwrap();
    // First half: event times 0..50 s, watermark 48.75 s → windows up to [30 s, 40 s) closed.
    let done_first = model_time_windows(first, 10_000, 10_000, 1_000).len();
    read_until(&broker, output, Duration::from_secs(30), |r| r.len() >= done_first).await;
    if crash {
        tokio::task::spawn_blocking(move || query.crash()).await.unwrap();
    } else {
        tokio::task::spawn_blocking(move || query.close()).await.unwrap().unwrap();
    }
    produce(&broker, input, second).await;
    // A fresh state dir when crashed: the store comes back from its changelog.
    let state2 = tempfile::tempdir().unwrap();
    let dir = if crash { state2.path() } else { state.path() };
    let query = ContinuousQuery::start(&ctx, &sql, "restart-query", &extra(dir)).await.unwrap();
    let expected = model_time_windows(&events, 10_000, 10_000, 1_000);
    let records =
        read_until(&broker, output, Duration::from_secs(60), |r| windows_of(r).0.len() >= expected.len()).await;
    let (got, n) = windows_of(&records);
    assert_eq!(got, expected, "totals per window after a {} restart", if crash { "crash" } else { "clean" });
    if !crash {
        assert_eq!(n, expected.len(), "a clean restart emits every window once");
    }
    eprintln!("restart (crash: {crash}): {n} results for {} windows", expected.len());
    tokio::task::spawn_blocking(move || query.close()).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_keeps_totals_per_window() {
    restart_keeps_totals(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_and_restart_keeps_totals_per_window() {
    restart_keeps_totals(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_query_filters_and_projects_per_micro_batch() {
    let broker = broker();
    create(&broker, &[("st-in", 2), ("st-out", 2)]).await;
    let events: Vec<Event> = (0..1000i64).map(|i| (["a", "b"][(i % 2) as usize], i, i)).collect();
    produce(&broker, "st-in", &events).await;
    let ctx = context(&broker, "CREATE TABLE st (k VARCHAR, x BIGINT, ts BIGINT) WITH (topic = 'st-in')").await;
    let state = tempfile::tempdir().unwrap();
    let query = ContinuousQuery::start(
        &ctx,
        "INSERT INTO \"st-out\" SELECT upper(k) AS big, x * 2 AS doubled FROM st WHERE x % 10 = 0 AND k = 'a'",
        "stateless-query",
        &extra(state.path()),
    )
    .await
    .unwrap();
    let records = read_until(&broker, "st-out", Duration::from_secs(30), |r| r.len() >= 100).await;
    let mut doubled: Vec<i64> = records.iter().map(|r| json(r)["doubled"].as_i64().unwrap()).collect();
    doubled.sort();
    assert_eq!(doubled, (0..1000).filter(|x| x % 10 == 0).map(|x| x * 2).collect::<Vec<_>>());
    for r in &records {
        assert_eq!(json(r)["big"], "A");
        assert_eq!(r.key.as_deref(), Some(&b"a"[..]), "the source record's key is kept");
        assert_eq!(r.timestamp_ms, json(r)["doubled"].as_i64().unwrap() / 2, "and its timestamp");
    }
    tokio::task::spawn_blocking(move || query.close()).await.unwrap().unwrap();
}

/// A stream-table join run by two instances of one query id: each holds the whole table (a
/// global store), so every order meets its user whichever instance reads it; keyed by PARTITION BY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_table_join_in_two_instances_meets_every_key() {
    let broker = broker();
    create(&broker, &[("j-orders", 2), ("j-users", 3), ("j-out", 2)]).await;
    let users: Vec<Event> = vec![("u0", 0, 0), ("u1", 10, 0), ("u2", 20, 0), ("u1", 11, 1)];
    produce(&broker, "j-users", &users).await;
    // Orders keyed by order parity (so both partitions have some), valued {"k": user, "x": amount}.
    let orders: Vec<Event> = (0..200i64).map(|i| (["u0", "u1", "u2", "u9"][(i % 4) as usize], i, i)).collect();
    produce(&broker, "j-orders", &orders).await;
    let ctx = context(&broker, "CREATE TABLE o (k VARCHAR, x BIGINT, ts BIGINT) WITH (topic = 'j-orders')").await;
    ctx.sql("CREATE TABLE u (k VARCHAR, x BIGINT) WITH (topic = 'j-users')").await.unwrap();
    let sql = "INSERT INTO \"j-out\" SELECT o.x AS amount, o.k AS user_key, u.x AS tier FROM o JOIN u ON o.k = u._key \
               WHERE o.x >= 0 PARTITION BY o.k";
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = ContinuousQuery::start(&ctx, sql, "join-query", &extra(a.path())).await.unwrap();
    let second = ContinuousQuery::start(&ctx, sql, "join-query", &extra(b.path())).await.unwrap();
    let expected = orders.iter().filter(|(k, ..)| *k != "u9").count();
    let records = read_until(&broker, "j-out", Duration::from_secs(60), |r| {
        r.iter().map(|r| json(r)["amount"].as_i64().unwrap()).collect::<std::collections::BTreeSet<_>>().len()
            >= expected
    })
    .await;
    let tiers: BTreeMap<&str, i64> = [("u0", 0), ("u1", 11), ("u2", 20)].into_iter().collect();
    for r in &records {
        let v = json(r);
        let user = v["user_key"].as_str().unwrap();
        assert_eq!(v["tier"].as_i64(), Some(tiers[user]), "the latest row of {user}: {v}");
        assert_eq!(r.key.as_deref(), Some(user.as_bytes()), "PARTITION BY o.k keys the result");
        assert_eq!(r.timestamp_ms, v["amount"].as_i64().unwrap(), "the order's timestamp");
    }
    let amounts: std::collections::BTreeSet<i64> =
        records.iter().map(|r| json(r)["amount"].as_i64().unwrap()).collect();
    assert_eq!(amounts, (0..200).filter(|i| i % 4 != 3).collect(), "inner join: u9 has no row");
    tokio::task::spawn_blocking(move || {
        first.close().unwrap();
        second.close().unwrap();
    })
    .await
    .unwrap();
}

/// An interval join of two topics with different partition counts (both sides are re-keyed into
/// co-partitioned repartition topics), both produced as a backlog before the query starts: the
/// watermark is the minimum over the two sides, so the topic read second is not late. Every pair
/// within the interval, once (a model computes them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_join_of_two_topics_equals_the_model() {
    let broker = broker();
    create(&broker, &[("ij-views", 3), ("ij-clicks", 2), ("ij-out", 2)]).await;
    // (k, id, ts): views and clicks of 20 pages over 60 s; a click joins views of its page from
    // 5 s before it to 1 s after it.
    let views: Vec<Event> = (0..300i64)
        .map(|i| (["p0", "p1", "p2", "p3", "p4"][(i * 7 % 5) as usize], i, i * 200 + (i * 37 % 900)))
        .collect();
    let clicks: Vec<Event> = (0..150i64)
        .map(|i| (["p0", "p1", "p2", "p3", "p4"][(i * 3 % 5) as usize], 1000 + i, i * 400 + (i * 53 % 700)))
        .collect();
    produce(&broker, "ij-views", &views).await;
    produce(&broker, "ij-clicks", &clicks).await;
    let ctx = context(&broker, "CREATE TABLE v (k VARCHAR, x BIGINT, ts BIGINT) WITH (topic = 'ij-views')").await;
    ctx.sql("CREATE TABLE c (k VARCHAR, x BIGINT, ts BIGINT) WITH (topic = 'ij-clicks', lateness = '1 second')")
        .await
        .unwrap();
    let sql = "INSERT INTO \"ij-out\" SELECT c.x AS click, v.x AS view, v.k AS page FROM c JOIN v \
               ON v.k = c.k AND v.ts BETWEEN c.ts - INTERVAL '5' SECOND AND c.ts + INTERVAL '1' SECOND";
    let mut expected: Vec<(i64, i64)> = clicks
        .iter()
        .flat_map(|(ck, cx, cts)| {
            views
                .iter()
                .filter(move |(vk, _, vts)| vk == ck && (cts - 5_000..=cts + 1_000).contains(vts))
                .map(move |(_, vx, _)| (*cx, *vx))
        })
        .collect();
    expected.sort();
    let state = tempfile::tempdir().unwrap();
    let query = ContinuousQuery::start(&ctx, sql, "interval-join", &extra(state.path())).await.unwrap();
    eprintln!(
        "expected {} late {}",
        expected.len(),
        query.metrics().dropped_late.load(std::sync::atomic::Ordering::Relaxed)
    );
    let records = read_until(&broker, "ij-out", Duration::from_secs(60), |r| r.len() >= expected.len()).await;
    // Pairs whose click is in the last second are found once the watermark allows: all are.
    let mut got: Vec<(i64, i64)> =
        records.iter().map(|r| (json(r)["click"].as_i64().unwrap(), json(r)["view"].as_i64().unwrap())).collect();
    got.sort();
    got.dedup();
    assert_eq!(got, expected, "every pair within the interval");
    for r in &records {
        let page = json(r)["page"].as_str().unwrap().to_owned();
        assert_eq!(r.key.as_deref(), Some(format!(r#"{{"k0":"{page}"}}"#).as_bytes()), "keyed by the join key");
    }
    let late = query.metrics().dropped_late.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(late, 0, "the backlog of one topic does not make the other late");
    tokio::task::spawn_blocking(move || query.close()).await.unwrap().unwrap();
}

/// An interval join crashed mid-stream and restarted on an empty state directory: its rows come
/// back from the changelog, so pairs whose first record was processed before the crash are still
/// found (at-least-once: a pair may be written twice, none is lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_join_restored_after_a_crash_loses_no_pair() {
    let broker = broker();
    create(&broker, &[("ir-a", 2), ("ir-b", 2), ("ir-out", 2)]).await;
    let a: Vec<Event> = (0..200i64).map(|i| (["k0", "k1", "k2"][(i % 3) as usize], i, i * 100)).collect();
    let b: Vec<Event> = (0..200i64).map(|i| (["k0", "k1", "k2"][(i % 3) as usize], 1000 + i, i * 100 + 50)).collect();
    let ctx = context(&broker, "CREATE TABLE a (k VARCHAR, x BIGINT, ts BIGINT) WITH (topic = 'ir-a')").await;
    ctx.sql("CREATE TABLE b (k VARCHAR, x BIGINT, ts BIGINT) WITH (topic = 'ir-b')").await.unwrap();
    let sql = "INSERT INTO \"ir-out\" SELECT a.x AS ax, b.x AS bx FROM a JOIN b ON a.k = b.k \
               AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '1' SECOND";
    let model = |a: &[Event], b: &[Event]| -> std::collections::BTreeSet<(i64, i64)> {
        a.iter()
            .flat_map(|(ak, ax, at)| {
                b.iter()
                    .filter(move |(bk, _, bt)| bk == ak && (*at..=*at + 1_000).contains(bt))
                    .map(move |(_, bx, _)| (*ax, *bx))
            })
            .collect()
    };
    // First: all of a, the first half of b.
    produce(&broker, "ir-a", &a).await;
    produce(&broker, "ir-b", &b[..100]).await;
    let state = tempfile::tempdir().unwrap();
    let query = ContinuousQuery::start(&ctx, sql, "ir-query", &extra(state.path())).await.unwrap();
    let first = model(&a, &b[..100]).len();
    read_until(&broker, "ir-out", Duration::from_secs(30), |r| r.len() >= first).await;
    // Let a commit cover the stored rows, then crash.
    tokio::time::sleep(Duration::from_millis(600)).await;
    tokio::task::spawn_blocking(move || query.crash()).await.unwrap();
    // Second half of b: it matches rows of a stored before the crash.
    produce(&broker, "ir-b", &b[100..]).await;
    let state2 = tempfile::tempdir().unwrap();
    let query = ContinuousQuery::start(&ctx, sql, "ir-query", &extra(state2.path())).await.unwrap();
    let expected = model(&a, &b);
    let records = read_until(&broker, "ir-out", Duration::from_secs(60), |r| {
        r.iter()
            .map(|r| (json(r)["ax"].as_i64().unwrap(), json(r)["bx"].as_i64().unwrap()))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            >= expected.len()
    })
    .await;
    let got: std::collections::BTreeSet<(i64, i64)> =
        records.iter().map(|r| (json(r)["ax"].as_i64().unwrap(), json(r)["bx"].as_i64().unwrap())).collect();
    assert_eq!(got, expected, "every pair, none invented");
    tokio::task::spawn_blocking(move || query.close()).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_continuous_statements_are_plan_errors() {
    let broker = broker();
    create(&broker, &[("bad-in", 1)]).await;
    let ctx = context(&broker, "CREATE TABLE bad (k VARCHAR, x BIGINT, ts BIGINT) WITH (topic = 'bad-in')").await;
    let state = tempfile::tempdir().unwrap();
    for (sql, expect) in [
        ("SELECT * FROM bad", "INSERT INTO"),
        ("INSERT INTO o SELECT nope FROM bad", "nope"),
        ("INSERT INTO o SELECT k, count(*) FROM bad GROUP BY k", "window"),
        ("INSERT INTO o SELECT count(*) FROM TUMBLE(bad, nope, INTERVAL '1' SECOND) GROUP BY window_start, window_end", "nope"),
        ("INSERT INTO o SELECT count(*) FROM TUMBLE(bad, k, INTERVAL '1' SECOND) GROUP BY window_start", "window_end"),
        ("INSERT INTO o SELECT bad.x FROM bad JOIN nosuch ON bad.k = nosuch._key", "nosuch"),
        ("INSERT INTO o SELECT bad.x FROM bad JOIN bad AS t ON bad.k = t.k", "t._key"),
        ("INSERT INTO o SELECT bad.x FROM bad JOIN bad AS t ON t.x = t._key", "must read only bad's columns"),
        ("INSERT INTO o SELECT bad.x FROM bad JOIN bad AS t ON t.k = bad.k AND t.ts >= bad.ts", "lower and an upper"),
        ("INSERT INTO o SELECT bad.x FROM bad JOIN o2 ON o2.k = bad.k AND o2.ts BETWEEN bad.ts AND bad.ts", "o2"),
    ] {
        match ContinuousQuery::start(&ctx, sql, "bad-query", &extra(state.path())).await {
            Err(spate_streams::StreamsError::SqlPlan { message, .. }) => {
                assert!(message.contains(expect), "{sql}: {message}")
            }
            Err(other) => panic!("{sql}: not a plan error: {other}"),
            Ok(_) => panic!("{sql}: accepted"),
        }
    }
}

/// Throughput figures (run by hand: `cargo test -p spate-e2e --test sql_continuous -- --ignored --nocapture`):
/// N records through a stateless filter and through a tumbling count/sum with 100 keys, timed from
/// the query's start to its last result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_continuous_throughput() {
    let broker = broker();
    let n: i64 = std::env::var("SPATE_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    // One source partition: with two, the partition that is processed first makes the other one late
    // at the window stage (stream time is per task, as in Kafka Streams; see the notes).
    create(&broker, &[("bench-in", 1), ("bench-win", 1), ("bench-filter", 1)]).await;
    let producer =
        Producer::new(ProducerConfig { bootstrap_servers: vec![broker.bootstrap()], ..ProducerConfig::default() })
            .await
            .unwrap();
    let mut acks = Vec::new();
    for i in 0..n {
        let k = format!("key-{}", i % 100);
        let mut r = ProducerRecord::default().with_timestamp_ms(i);
        r.key = Some(bytes::Bytes::from(k.clone()));
        r.value = Some(bytes::Bytes::from(format!(r#"{{"k":"{k}","x":{},"ts":{i}}}"#, i % 1000)));
        acks.push(producer.send("bench-in", r).await.unwrap());
        if acks.len() >= 10_000 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
    producer.close().await.unwrap();
    let ctx = context(&broker, "CREATE TABLE bench (k VARCHAR, x BIGINT, ts BIGINT) WITH (topic = 'bench-in')").await;
    // Stateless: one record in ten passes.
    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let query = ContinuousQuery::start(
        &ctx,
        "INSERT INTO \"bench-filter\" SELECT k, x FROM bench WHERE x % 10 = 0",
        "bench-filter-q",
        &extra(state.path()),
    )
    .await
    .unwrap();
    let want = (n / 10) as usize;
    read_until(&broker, "bench-filter", Duration::from_secs(600), |r| r.len() >= want).await;
    let took = started.elapsed();
    eprintln!("BENCH stateless filter: {n} records in {took:?}: {:.0} records/s", n as f64 / took.as_secs_f64());
    tokio::task::spawn_blocking(move || query.close()).await.unwrap().unwrap();
    // Windowed: 1 s tumbling windows (event time = i ms), 100 keys.
    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let query = ContinuousQuery::start(
        &ctx,
        &format!(
            "INSERT INTO \"bench-win\" SELECT {SELECT} FROM TUMBLE(bench, ts, INTERVAL '1' SECOND) \
             GROUP BY window_start, window_end, k"
        ),
        "bench-win-q",
        &extra(state.path()),
    )
    .await
    .unwrap();
    // Windows closed at the end: all but the last second's, 100 keys each.
    let want = ((n / 1000 - 1) * 100) as usize;
    read_until(&broker, "bench-win", Duration::from_secs(300), |r| r.len() >= want).await;
    let took = started.elapsed();
    eprintln!("BENCH tumble count/sum: {n} records in {took:?}: {:.0} records/s", n as f64 / took.as_secs_f64());
    tokio::task::spawn_blocking(move || query.close()).await.unwrap().unwrap();
}

/// Runs the DSL's windowed count (`dsl_counts`) over `input` into `output` and returns its
/// (key, window start, window end) → count once `expected` results arrived.
async fn dsl_window_counts(
    broker: &TestBroker,
    input: &str,
    output: &str,
    app: &str,
    windows: TimeWindows,
    state_dir: &std::path::Path,
    expected: usize,
) -> BTreeMap<(String, i64, i64), i64> {
    let mut streams = KafkaStreams::new(
        dsl_counts(input, output, windows),
        StreamsConfig::new(app, &broker.bootstrap())
            .set("commit.interval.ms", "200")
            .unwrap()
            .set("state.dir", state_dir.to_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    streams.start().unwrap();
    let records = read_until(broker, output, Duration::from_secs(30), |r| r.len() >= expected).await;
    tokio::task::spawn_blocking(move || streams.close()).await.unwrap().unwrap();
    records
        .iter()
        .map(|r| {
            let v = json(r);
            (
                (v["k"].as_str().unwrap().to_owned(), v["ws"].as_i64().unwrap(), v["we"].as_i64().unwrap()),
                v["n"].as_i64().unwrap(),
            )
        })
        .collect()
}

//! spate-streams end to end: the example topologies run by `KafkaStreams` against a real broker
//! process, checked against hand-computed results.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use spate_client::admin::{AdminConfig, NewTopic};
use spate_client::{
    Admin, AutoOffsetReset, Consumer, ConsumerConfig, ConsumerRecord, Producer, ProducerConfig, ProducerRecord,
    TopicPartition,
};
use spate_e2e::TestBroker;
use spate_examples::streams_apps;
use spate_streams::{KafkaStreams, StreamsConfig, StreamsState, Topology};

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

async fn produce(broker: &TestBroker, topic: &str, records: &[(Option<&str>, Option<&str>, i64)]) {
    let producer =
        Producer::new(ProducerConfig { bootstrap_servers: vec![broker.bootstrap()], ..ProducerConfig::default() })
            .await
            .unwrap();
    let mut acks = Vec::new();
    for (k, v, ts) in records {
        let mut r = ProducerRecord::default().with_timestamp_ms(*ts);
        r.key = k.map(|k| bytes::Bytes::copy_from_slice(k.as_bytes()));
        r.value = v.map(|v| bytes::Bytes::copy_from_slice(v.as_bytes()));
        acks.push(producer.send(topic, r).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
    producer.close().await.unwrap();
}

/// Reads `topic` from the beginning until `done` says the records are complete (or fails
/// after `timeout`).
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

fn config(broker: &TestBroker, app: &str, state_dir: &std::path::Path) -> StreamsConfig {
    StreamsConfig::new(app, &broker.bootstrap())
        .set("commit.interval.ms", "200")
        .unwrap()
        .set("state.dir", state_dir.to_str().unwrap())
        .unwrap()
        .set("session.timeout.ms", "6000")
        .unwrap()
        .set("heartbeat.interval.ms", "500")
        .unwrap()
}

fn start(topology: Topology, config: StreamsConfig) -> KafkaStreams {
    let mut streams = KafkaStreams::new(topology, config).unwrap();
    streams.start().unwrap();
    streams
}

fn latest_counts(records: &[ConsumerRecord]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for r in records {
        let k = String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap();
        let v = i64::from_be_bytes(r.value.clone().unwrap()[..].try_into().unwrap());
        out.insert(k, v);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wordcount_counts_words_and_survives_a_wiped_state_dir() {
    let broker = broker();
    create(&broker, &[("plaintext", 2), ("wordcount-out", 2)]).await;
    produce(
        &broker,
        "plaintext",
        &[
            (None, Some("all streams lead to kafka"), 1),
            (None, Some("hello kafka streams"), 2),
            (None, Some("join kafka summit"), 3),
        ],
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    let mut streams =
        start(streams_apps::wordcount("plaintext", "wordcount-out").unwrap(), config(&broker, "wc", state.path()));
    let expected: BTreeMap<String, i64> =
        [("all", 1), ("streams", 2), ("lead", 1), ("to", 1), ("kafka", 3), ("hello", 1), ("join", 1), ("summit", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    let records = read_until(&broker, "wordcount-out", Duration::from_secs(30), |r| latest_counts(r) == expected).await;
    assert_eq!(latest_counts(&records), expected);
    // Interactive queries agree with the output topic.
    let store = streams.store("counts", spate_streams::serdes::StringSerde, spate_streams::serdes::I64Serde);
    let mut queried: BTreeMap<String, i64> = store.all().unwrap().into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while queried != expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        queried = store.all().unwrap().into_iter().collect();
    }
    assert_eq!(queried, expected);
    streams.close().unwrap();

    // Local state gone: the counts are restored from the changelog and continue.
    drop(state);
    let state = tempfile::tempdir().unwrap();
    produce(&broker, "plaintext", &[(None, Some("kafka streams again"), 4)]).await;
    // This run purges the repartition topic below its committed offsets at every commit.
    let purging = config(&broker, "wc", state.path()).set("repartition.purge.interval.ms", "0").unwrap();
    let mut streams = start(streams_apps::wordcount("plaintext", "wordcount-out").unwrap(), purging);
    let mut expected = expected;
    *expected.get_mut("kafka").unwrap() = 4;
    *expected.get_mut("streams").unwrap() = 3;
    expected.insert("again".into(), 1);
    let records = read_until(&broker, "wordcount-out", Duration::from_secs(30), |r| latest_counts(r) == expected).await;
    assert_eq!(latest_counts(&records), expected);
    assert_eq!(streams.state(), StreamsState::Running);
    assert!(streams.metrics().records_restored.load(std::sync::atomic::Ordering::Relaxed) > 0);
    // The repartition topic's consumed records were deleted (DeleteRecords), as Kafka Streams
    // purges them: its log start moved up to what was committed.
    let admin = Admin::new(AdminConfig { bootstrap_servers: vec![broker.bootstrap()], ..AdminConfig::default() })
        .await
        .unwrap();
    let repartition: Vec<String> = admin
        .list_topics(false)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.starts_with("wc-") && t.ends_with("-repartition"))
        .collect();
    assert_eq!(repartition.len(), 1, "{repartition:?}");
    let partitions: Vec<TopicPartition> = (0..2).map(|p| TopicPartition::new(repartition[0].clone(), p)).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spec = spate_client::admin::OffsetSpec::Earliest;
        let wanted: Vec<(TopicPartition, spate_client::admin::OffsetSpec)> =
            partitions.iter().map(|tp| (tp.clone(), spec)).collect();
        let earliest: i64 = admin.list_offsets(&wanted).await.unwrap().values().map(|o| o.offset).sum();
        if earliest > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the repartition topic was never purged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    streams.close().unwrap();
}

fn json(r: &ConsumerRecord) -> serde_json::Value {
    serde_json::from_slice(r.value.as_ref().expect("value")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pageview_counts_emit_one_final_count_per_window_and_drop_late_records() {
    let broker = broker();
    // One input partition: records reach the re-keyed windows in the order produced (with two,
    // the interleaving of the partitions decides what is late). Stream time is per task, as
    // in Kafka: one partition of the repartition topic means one clock for every page.
    create(&broker, &[("pageviews", 1), ("pageview-counts", 1)]).await;
    let view = |user: &str, page: &str| format!(r#"{{"user":"{user}","page":"{page}"}}"#);
    let (a1, a2, b1) = (view("alice", "/a"), view("bob", "/a"), view("carol", "/b"));
    // Windows of 10 s, grace 2 s. Window [0,10s): /a twice (one out of order within grace),
    // /b once; window [10s,20s): /a once. The record at 25 s closes both windows; the /b
    // view at 5 s arrives after that and is dropped as late.
    produce(
        &broker,
        "pageviews",
        &[
            (Some("alice"), Some(&a1), 1_000),
            (Some("carol"), Some(&b1), 9_000),
            (Some("alice"), Some(&a1), 11_000),
            (Some("bob"), Some(&a2), 8_000),
            (Some("alice"), Some(&a1), 25_000),
            (Some("carol"), Some(&b1), 5_000),
        ],
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    let topology =
        streams_apps::pageview_counts("pageviews", "pageview-counts", Duration::from_secs(10), Duration::from_secs(2))
            .unwrap();
    let mut streams = start(topology, config(&broker, "pv", state.path()));
    let records = read_until(&broker, "pageview-counts", Duration::from_secs(30), |r| r.len() >= 3).await;
    let mut got: Vec<(String, i64, i64, i64)> = records
        .iter()
        .map(|r| {
            let v = json(r);
            (
                v["page"].as_str().unwrap().to_string(),
                v["window_start"].as_i64().unwrap(),
                v["window_end"].as_i64().unwrap(),
                v["count"].as_i64().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, vec![("/a".into(), 0, 10_000, 2), ("/a".into(), 10_000, 20_000, 1), ("/b".into(), 0, 10_000, 1)]);
    // The late record is counted; nothing else is emitted (the 20 s windows stay open).
    let deadline = Instant::now() + Duration::from_secs(10);
    while streams.metrics().dropped_late.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "late record not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    streams.close().unwrap();
    let all = read_until(&broker, "pageview-counts", Duration::from_secs(5), |r| r.len() >= 3).await;
    assert_eq!(all.len(), 3, "one final record per (page, window)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_join_payments_within_the_window_and_unpaid_orders_come_out_when_it_closes() {
    let broker = broker();
    // One partition each, so the record at 30 minutes advances the stream time of every order
    // (stream time is per task, as in Kafka).
    create(&broker, &[("orders", 1), ("payments", 1), ("paid-orders", 1), ("unpaid-orders", 1)]).await;
    let min = 60_000;
    produce(
        &broker,
        "orders",
        &[
            (Some("o1"), Some(r#"{"item":"book"}"#), 0),
            (Some("o2"), Some(r#"{"item":"pen"}"#), min),
            (Some("o3"), Some(r#"{"item":"cup"}"#), 2 * min),
        ],
    )
    .await;
    produce(
        &broker,
        "payments",
        &[
            (Some("o1"), Some(r#"{"amount":10}"#), 3 * min),
            // Too late for o2 (6 minutes after it).
            (Some("o2"), Some(r#"{"amount":2}"#), 7 * min),
            // Moves stream time far ahead: every window closes.
            (Some("zz"), Some(r#"{"amount":0}"#), 30 * min),
        ],
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    let topology =
        streams_apps::orders_payments("orders", "payments", "paid-orders", "unpaid-orders", Duration::from_secs(300))
            .unwrap();
    let mut streams = start(topology, config(&broker, "op", state.path()));
    let paid = read_until(&broker, "paid-orders", Duration::from_secs(30), |r| !r.is_empty()).await;
    assert_eq!(paid.len(), 1);
    assert_eq!(paid[0].key.as_deref(), Some(&b"o1"[..]));
    assert_eq!(json(&paid[0])["payment"]["amount"], 10);
    let unpaid = read_until(&broker, "unpaid-orders", Duration::from_secs(30), |r| r.len() >= 2).await;
    let mut keys: Vec<String> =
        unpaid.iter().map(|r| String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap()).collect();
    keys.sort();
    assert_eq!(keys, vec!["o2", "o3"]);
    streams.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_are_enriched_from_the_users_table() {
    let broker = broker();
    create(&broker, &[("clicks", 2), ("users", 2), ("enriched-clicks", 1)]).await;
    produce(
        &broker,
        "users",
        &[(Some("alice"), Some(r#"{"country":"fr"}"#), 1), (Some("bob"), Some(r#"{"country":"de"}"#), 1)],
    )
    .await;
    produce(
        &broker,
        "clicks",
        &[(Some("alice"), Some(r#"{"page":"/a"}"#), 10), (Some("zed"), Some(r#"{"page":"/z"}"#), 11)],
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    let mut streams = start(
        streams_apps::enrich_clicks("clicks", "users", "enriched-clicks").unwrap(),
        config(&broker, "ec", state.path()),
    );
    let out = read_until(&broker, "enriched-clicks", Duration::from_secs(30), |r| r.len() >= 2).await;
    let by_key: BTreeMap<String, serde_json::Value> =
        out.iter().map(|r| (String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap(), json(r))).collect();
    assert_eq!(by_key["alice"]["user"]["country"], "fr");
    assert!(by_key["zed"]["user"].is_null());
    // A table update is seen by later clicks.
    produce(&broker, "users", &[(Some("alice"), Some(r#"{"country":"es"}"#), 20)]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    produce(&broker, "clicks", &[(Some("alice"), Some(r#"{"page":"/b"}"#), 30)]).await;
    let out = read_until(&broker, "enriched-clicks", Duration::from_secs(30), |r| r.len() >= 3).await;
    assert_eq!(json(&out[2])["user"]["country"], "es");
    streams.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_merge_and_retract() {
    let broker = broker();
    create(&broker, &[("activity", 1), ("sessions-out", 1)]).await;
    let s = 1_000;
    // Gap 30 s, no grace: alice's clicks at 0 s, 20 s and 45 s each extend her session, which
    // retracts the shorter one (a tombstone) and writes the longer. (An out-of-order click
    // cannot bridge two sessions here: without grace the older one is closed and expired, as
    // in Kafka.)
    produce(
        &broker,
        "activity",
        &[
            (Some("alice"), Some("click"), 0),
            (Some("alice"), Some("click"), 20 * s),
            (Some("alice"), Some("click"), 45 * s),
            (Some("bob"), Some("click"), 45 * s),
        ],
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    let mut streams = start(
        streams_apps::session_activity("activity", "sessions-out", Duration::from_secs(30)).unwrap(),
        config(&broker, "sa", state.path()).set("statestore.cache.max.bytes", "0").unwrap(),
    );
    let final_sessions = |records: &[ConsumerRecord]| {
        // Replay: a tombstone retracts the user's latest session unless a newer record follows.
        let mut sessions: BTreeMap<(String, i64, i64), i64> = BTreeMap::new();
        let mut last: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for r in records {
            let user = String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap();
            match &r.value {
                Some(_) => {
                    let v = json(r);
                    let w = (v["session_start"].as_i64().unwrap(), v["session_end"].as_i64().unwrap());
                    sessions.insert((user.clone(), w.0, w.1), v["events"].as_i64().unwrap());
                    last.insert(user, w);
                }
                None => {
                    let _ = last.get(&user);
                }
            }
        }
        sessions
    };
    let records = read_until(&broker, "sessions-out", Duration::from_secs(30), |r| {
        final_sessions(r).contains_key(&("alice".to_string(), 0, 45 * s))
    })
    .await;
    let sessions = final_sessions(&records);
    assert_eq!(sessions[&("alice".to_string(), 0, 45 * s)], 3);
    assert_eq!(sessions[&("bob".to_string(), 45 * s, 45 * s)], 1);
    let tombstones = records.iter().filter(|r| r.value.is_none()).count();
    assert_eq!(tombstones, 2, "the sessions extended by the 20 s and 45 s clicks are retracted");
    streams.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_of_topics_with_different_partition_counts_fails_at_start() {
    let broker = broker();
    create(&broker, &[("orders", 2), ("payments", 3)]).await;
    let state = tempfile::tempdir().unwrap();
    let topology =
        streams_apps::orders_payments("orders", "payments", "paid", "unpaid", Duration::from_secs(300)).unwrap();
    let mut streams = start(topology, config(&broker, "copart", state.path()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let message = loop {
        if let StreamsState::Error(e) = streams.state() {
            break e;
        }
        assert!(Instant::now() < deadline, "the application did not fail");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(message.contains("same number of partitions") && message.contains("orders"), "{message}");
    assert!(streams.close().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_source_topic_fails_at_start_with_its_name() {
    let broker = broker();
    let state = tempfile::tempdir().unwrap();
    let mut streams =
        start(streams_apps::wordcount("no-such-input", "out").unwrap(), config(&broker, "missing", state.path()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let message = loop {
        if let StreamsState::Error(e) = streams.state() {
            break e;
        }
        assert!(Instant::now() < deadline, "the application did not fail");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(message.contains("no-such-input"), "{message}");
    assert!(streams.close().is_err());
}

fn per_key_count(input: &str, output: &str) -> Topology {
    use spate_streams::serdes::{I64Serde, StringSerde};
    use spate_streams::{Consumed, Grouped, Materialized, Produced, StreamsBuilder};
    let builder = StreamsBuilder::new();
    builder
        .stream(&[input], Consumed::with(StringSerde, StringSerde))
        .group_by_key(Grouped::with(StringSerde, StringSerde))
        .count(Materialized::named("per-key"))
        .unwrap()
        .to_stream()
        .to(output, Produced::with(StringSerde, I64Serde));
    builder.build().unwrap()
}

async fn produce_round(broker: &TestBroker, topic: &str, keys: usize, per_key: usize) {
    let records: Vec<(String, String)> =
        (0..keys * per_key).map(|i| (format!("k{}", i % keys), format!("v{i}"))).collect();
    let refs: Vec<(Option<&str>, Option<&str>, i64)> =
        records.iter().map(|(k, v)| (Some(k.as_str()), Some(v.as_str()), 1_000)).collect();
    produce(broker, topic, &refs).await;
}

/// Scale-out and failover: two instances share the work, a third joins, one crashes; every
/// partition keeps being processed, state moves with the tasks (restored from changelogs), and
/// the final counts are exact (the crash comes after a commit, so nothing is repeated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_tasks_and_take_over_a_crashed_ones_state() {
    let broker = broker();
    create(&broker, &[("sc-in", 4), ("sc-out", 1)]).await;
    let keys = 40;
    produce_round(&broker, "sc-in", keys, 50).await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cfg = |i: usize| config(&broker, "scale", dirs[i].path());
    let mut a = start(per_key_count("sc-in", "sc-out"), cfg(0));
    let mut b = start(per_key_count("sc-in", "sc-out"), cfg(1));
    let all_at = |n: i64| {
        move |r: &[ConsumerRecord]| {
            let c = latest_counts(r);
            c.len() == keys && c.values().all(|v| *v == n)
        }
    };
    read_until(&broker, "sc-out", Duration::from_secs(60), all_at(50)).await;
    let mut c = start(per_key_count("sc-in", "sc-out"), cfg(2));
    produce_round(&broker, "sc-in", keys, 50).await;
    read_until(&broker, "sc-out", Duration::from_secs(60), all_at(100)).await;
    // Let a commit pass, then crash `a`: its tasks move to `b` and `c` after the session
    // timeout, restored from the changelog.
    tokio::time::sleep(Duration::from_millis(600)).await;
    a.crash();
    produce_round(&broker, "sc-in", keys, 50).await;
    let records = read_until(&broker, "sc-out", Duration::from_secs(90), all_at(150)).await;
    assert!(latest_counts(&records).values().all(|v| *v == 150));
    // Interactive queries over the two survivors see every key with the output's value.
    let mut seen = BTreeMap::new();
    for s in [&b, &c] {
        if let Ok(entries) =
            s.store("per-key", spate_streams::serdes::StringSerde, spate_streams::serdes::I64Serde).all()
        {
            seen.extend(entries);
        }
    }
    assert_eq!(seen.len(), keys);
    assert!(seen.values().all(|v| *v == 150), "{seen:?}");
    b.close().unwrap();
    c.close().unwrap();
}

/// A global table is read whole by each instance before processing starts (so the first order
/// already sees the product written before start), then followed; the stream needs no
/// co-partitioning with it (3 partitions against 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_tables_bootstrap_before_processing_and_follow_updates() {
    use spate_streams::serdes::StringSerde;
    use spate_streams::{Consumed, Materialized, Produced, StreamsBuilder};
    let broker = broker();
    create(&broker, &[("products", 3), ("gorders", 1), ("gout", 1)]).await;
    produce(&broker, "products", &[(Some("p1"), Some("lamp"), 1), (Some("p2"), Some("desk"), 1)]).await;
    produce(&broker, "gorders", &[(Some("o1"), Some("p1"), 10), (Some("o2"), Some("p2"), 11)]).await;
    let b = StreamsBuilder::new();
    let products =
        b.global_table("products", Consumed::with(StringSerde, StringSerde), Materialized::named("products"));
    b.stream(&["gorders"], Consumed::with(StringSerde, StringSerde))
        .join_global(&products, |_, pid: &String| pid.clone(), |_, name: &String| name.clone())
        .to("gout", Produced::with(StringSerde, StringSerde));
    let state = tempfile::tempdir().unwrap();
    let mut streams = start(b.build().unwrap(), config(&broker, "glob", state.path()));
    let value = |r: &ConsumerRecord| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap();
    let out = read_until(&broker, "gout", Duration::from_secs(30), |r| r.len() >= 2).await;
    assert_eq!(out.iter().map(value).collect::<Vec<_>>(), vec!["lamp", "desk"]);
    produce(&broker, "products", &[(Some("p1"), Some("lantern"), 20)]).await;
    let store = streams.store("products", StringSerde, StringSerde);
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.get(&"p1".to_string()).unwrap().as_deref() != Some("lantern") {
        assert!(Instant::now() < deadline, "the global store did not follow the update");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    produce(&broker, "gorders", &[(Some("o3"), Some("p1"), 30)]).await;
    let out = read_until(&broker, "gout", Duration::from_secs(30), |r| r.len() >= 3).await;
    assert_eq!(value(&out[2]), "lantern");
    streams.close().unwrap();
}

/// A foreign-key join of tables with different partition counts (3 orders, 2 products): the
/// subscription topic takes the products' count and the response topic the orders'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_key_join_works_across_partition_counts() {
    use spate_streams::serdes::{NullableSerde, StringSerde};
    use spate_streams::{Consumed, Materialized, Produced, StreamsBuilder};
    let broker = broker();
    create(&broker, &[("fk-orders", 3), ("fk-products", 2), ("fk-out", 1)]).await;
    produce(&broker, "fk-products", &[(Some("p1"), Some("lamp"), 1), (Some("p2"), Some("desk"), 1)]).await;
    produce(
        &broker,
        "fk-orders",
        &[(Some("o1"), Some("p1"), 2), (Some("o2"), Some("p2"), 2), (Some("o3"), Some("p9"), 2)],
    )
    .await;
    let b = StreamsBuilder::new();
    let orders = b.table("fk-orders", Consumed::with(StringSerde, StringSerde), Materialized::named("orders")).unwrap();
    let products =
        b.table("fk-products", Consumed::with(StringSerde, StringSerde), Materialized::named("products")).unwrap();
    orders
        .left_join_foreign_key(
            &products,
            |pid: &String| pid.clone(),
            |pid: &String, name: Option<&String>| format!("{pid}={}", name.map(String::as_str).unwrap_or("?")),
        )
        .unwrap()
        .to_change_stream()
        .to("fk-out", Produced::with(StringSerde, NullableSerde(StringSerde)));
    let state = tempfile::tempdir().unwrap();
    let mut streams = start(b.build().unwrap(), config(&broker, "fk", state.path()));
    let latest = |records: &[ConsumerRecord]| -> BTreeMap<String, Option<String>> {
        records
            .iter()
            .map(|r| {
                (
                    String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap(),
                    r.value.as_ref().map(|v| String::from_utf8(v.to_vec()).unwrap()),
                )
            })
            .collect()
    };
    let expected: BTreeMap<String, Option<String>> = [("o1", "p1=lamp"), ("o2", "p2=desk"), ("o3", "p9=?")]
        .into_iter()
        .map(|(k, v)| (k.into(), Some(v.into())))
        .collect();
    read_until(&broker, "fk-out", Duration::from_secs(30), |r| latest(r) == expected).await;
    produce(&broker, "fk-products", &[(Some("p9"), Some("chair"), 3)]).await;
    let mut expected = expected;
    expected.insert("o3".into(), Some("p9=chair".into()));
    read_until(&broker, "fk-out", Duration::from_secs(30), |r| latest(r) == expected).await;
    streams.close().unwrap();
}

/// The windowed join keeps its buffered records in a store with a changelog: an order seen
/// before a restart (with a fresh state dir, so from the changelog) is joined with its
/// payment after it, and is not reported unpaid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windowed_join_remembers_records_across_a_restart() {
    let broker = broker();
    create(&broker, &[("orders", 1), ("payments", 1), ("paid-orders", 1), ("unpaid-orders", 1)]).await;
    let min = 60_000;
    produce(&broker, "orders", &[(Some("o4"), Some(r#"{"item":"lamp"}"#), min)]).await;
    let topology = || {
        streams_apps::orders_payments("orders", "payments", "paid-orders", "unpaid-orders", Duration::from_secs(300))
            .unwrap()
    };
    let state = tempfile::tempdir().unwrap();
    let mut streams = start(topology(), config(&broker, "op-restart", state.path()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while streams.metrics().records_processed.load(std::sync::atomic::Ordering::Relaxed) < 1 {
        assert!(Instant::now() < deadline, "the order was not processed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    streams.close().unwrap();
    drop(state);
    let state = tempfile::tempdir().unwrap();
    produce(&broker, "payments", &[(Some("o4"), Some(r#"{"amount":3}"#), 2 * min), (Some("zz"), Some("{}"), 30 * min)])
        .await;
    let mut streams = start(topology(), config(&broker, "op-restart", state.path()));
    let paid = read_until(&broker, "paid-orders", Duration::from_secs(30), |r| !r.is_empty()).await;
    assert_eq!(paid[0].key.as_deref(), Some(&b"o4"[..]));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let unpaid = read_until(&broker, "unpaid-orders", Duration::from_secs(1), |_| true).await;
    assert!(unpaid.is_empty(), "o4 was paid: {unpaid:?}");
    streams.close().unwrap();
}

/// An output record the broker refuses (too large) stops the application by default, and is
/// skipped under `default.production.exception.handler=LogAndContinue`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_output_records_fail_or_are_skipped_by_the_production_handler() {
    use spate_streams::serdes::StringSerde;
    use spate_streams::{Consumed, Produced, StreamsBuilder};
    let broker =
        TestBroker::start(&["--set", "group.initial.rebalance.delay.ms=0", "--set", "message.max.bytes=2000"]).unwrap();
    create(&broker, &[("pin", 1), ("pout", 1)]).await;
    produce(
        &broker,
        "pin",
        &[(Some("a"), Some("small"), 1), (Some("b"), Some("big"), 2), (Some("c"), Some("small"), 3)],
    )
    .await;
    let topology = || {
        let b = StreamsBuilder::new();
        b.stream(&["pin"], Consumed::with(StringSerde, StringSerde))
            .map_values(|v: String| if v == "big" { "x".repeat(5_000) } else { v })
            .to("pout", Produced::with(StringSerde, StringSerde));
        b.build().unwrap()
    };
    let state = tempfile::tempdir().unwrap();
    let mut failing = start(topology(), config(&broker, "prod-fail", state.path()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let message = loop {
        if let StreamsState::Error(e) = failing.state() {
            break e;
        }
        assert!(Instant::now() < deadline, "the refused record did not stop the application");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(message.contains("pout") && message.contains("LogAndContinue"), "{message}");
    assert!(failing.close().is_err());
    // The Spate producer does not split a refused batch (Kafka's does), so records batched
    // with the refused one would be refused too: give each its own batch.
    create(&broker, &[("pin2", 1)]).await;
    let topology2 = || {
        let b = StreamsBuilder::new();
        b.stream(&["pin2"], Consumed::with(StringSerde, StringSerde))
            .map_values(|v: String| if v == "big" { "x".repeat(5_000) } else { v })
            .to("pout", Produced::with(StringSerde, StringSerde));
        b.build().unwrap()
    };
    let state = tempfile::tempdir().unwrap();
    let mut skipping = start(
        topology2(),
        config(&broker, "prod-continue", state.path())
            .set("default.production.exception.handler", "LogAndContinue")
            .unwrap(),
    );
    let has = |key: &'static [u8]| move |r: &[ConsumerRecord]| r.iter().any(|r| r.key.as_deref() == Some(key));
    produce(&broker, "pin2", &[(Some("a"), Some("small"), 1)]).await;
    read_until(&broker, "pout", Duration::from_secs(30), has(b"a")).await;
    produce(&broker, "pin2", &[(Some("b"), Some("big"), 2)]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while skipping.metrics().dropped_other.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the refused record was not skipped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    produce(&broker, "pin2", &[(Some("c"), Some("small"), 3)]).await;
    let out = read_until(&broker, "pout", Duration::from_secs(30), has(b"c")).await;
    assert!(out.iter().all(|r| r.value.as_ref().unwrap().len() < 100));
    assert_eq!(skipping.state(), StreamsState::Running);
    skipping.close().unwrap();
}

/// A sub-topology that reads a repartition topic it writes itself (a stream joined with a
/// table built from a re-keyed branch of the same stream): the topic takes the count of the
/// stream's topic instead of being refused as a cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_topology_may_read_a_repartition_topic_it_writes() {
    use spate_streams::serdes::StringSerde;
    use spate_streams::{Consumed, Grouped, Materialized, Produced, StreamsBuilder};
    let broker = broker();
    create(&broker, &[("cyc-in", 2), ("cyc-out", 1)]).await;
    // "name=<user>=<name>" records (any key) build a table of names by user; "visit" records
    // keyed by user join it. Both come from one topic.
    produce(&broker, "cyc-in", &[(Some("x"), Some("name=u1=ann"), 1)]).await;
    let b = StreamsBuilder::new();
    let input = b.stream(&["cyc-in"], Consumed::with(StringSerde, StringSerde));
    let names = input
        .filter(|_, v| v.starts_with("name="))
        .map(|_, v: String| {
            let parts: Vec<&str> = v.splitn(3, '=').collect();
            (parts[1].to_string(), parts[2].to_string())
        })
        .group_by_key(Grouped::with(StringSerde, StringSerde))
        .reduce(|_, newer| newer, Materialized::named("names"))
        .unwrap();
    input
        .filter(|_, v| v == "visit")
        .join_table(&names, |_, name: &String| format!("hello {name}"))
        .unwrap()
        .to("cyc-out", Produced::with(StringSerde, StringSerde));
    let topology = b.build().unwrap();
    assert_eq!(topology.to_string().matches("Sub-topology").count(), 1, "{topology}");
    let state = tempfile::tempdir().unwrap();
    let mut streams = start(topology, config(&broker, "cyc", state.path()));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    produce(&broker, "cyc-in", &[(Some("u1"), Some("visit"), 2)]).await;
    let out = read_until(&broker, "cyc-out", Duration::from_secs(30), |r| !r.is_empty()).await;
    assert_eq!(out[0].value.as_deref(), Some(&b"hello ann"[..]));
    assert_eq!(streams.state(), StreamsState::Running);
    streams.close().unwrap();
}

//! spate-streams with `processing.guarantee=exactly_once_v2` against a real broker: a per-key
//! count with every update emitted (no record cache), so each key's committed output must be
//! exactly 1, 2, …, n in order. A crash with a transaction open, a fenced producer, a failover
//! to another instance, a crash of two stream threads counting in a window store, and a crash of
//! a count in a session store must each leave no duplicate, gap or step back in what a
//! `read_committed` reader sees, and the store must hold the exact counts. A global table must
//! never show a value its transactional writer aborted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use spate_client::admin::{AdminConfig, NewTopic};
use spate_client::{
    Admin, AutoOffsetReset, Consumer, ConsumerConfig, ConsumerRecord, IsolationLevel, Producer, ProducerConfig,
    ProducerRecord, TopicPartition,
};
use spate_e2e::TestBroker;
use spate_streams::serdes::{I64Serde, StringSerde};
use spate_streams::window::{SessionWindows, TimeWindows};
use spate_streams::{
    Consumed, Grouped, KafkaStreams, Materialized, Produced, StreamsBuilder, StreamsConfig, StreamsState, Topology,
};

fn broker() -> TestBroker {
    TestBroker::start(&["--set", "group.initial.rebalance.delay.ms=0"]).unwrap()
}

async fn create(bootstrap: &str, topics: &[(&str, i32)]) {
    let admin = Admin::new(AdminConfig { bootstrap_servers: vec![bootstrap.to_string()], ..AdminConfig::default() })
        .await
        .unwrap();
    for (t, n) in topics {
        admin.create_topic(NewTopic::new(*t, *n, 1)).await.unwrap();
    }
}

/// `per_key` records for each of `keys` keys, interleaved, with a non-transactional producer.
async fn produce_round(bootstrap: &str, topic: &str, keys: usize, per_key: usize) {
    produce_round_at(bootstrap, topic, keys, per_key, None).await
}

/// [`produce_round`] with every record stamped `timestamp_ms` (default: now).
async fn produce_round_at(bootstrap: &str, topic: &str, keys: usize, per_key: usize, timestamp_ms: Option<i64>) {
    let producer =
        Producer::new(ProducerConfig { bootstrap_servers: vec![bootstrap.to_string()], ..ProducerConfig::default() })
            .await
            .unwrap();
    let mut acks = Vec::new();
    for i in 0..keys * per_key {
        let mut record = ProducerRecord::new(format!("v{i}")).with_key(format!("k{}", i % keys));
        if let Some(ts) = timestamp_ms {
            record = record.with_timestamp_ms(ts);
        }
        acks.push(producer.send(topic, record).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
    producer.close().await.unwrap();
}

/// Counts every record of `input` by key into store `counts`, emitting every update.
fn per_key_count(input: &str, output: &str) -> Topology {
    let builder = StreamsBuilder::new();
    builder
        .stream(&[input], Consumed::with(StringSerde, StringSerde))
        .group_by_key(Grouped::with(StringSerde, StringSerde))
        .count(Materialized::named("counts"))
        .unwrap()
        .to_stream()
        .to(output, Produced::with(StringSerde, I64Serde));
    builder.build().unwrap()
}

/// A per-key count in hour-long tumbling windows (a window store), every update emitted with
/// the key `<key>@<window start>`.
fn windowed_count(input: &str, output: &str) -> Topology {
    let builder = StreamsBuilder::new();
    builder
        .stream(&[input], Consumed::with(StringSerde, StringSerde))
        .group_by_key(Grouped::with(StringSerde, StringSerde))
        .windowed_by(TimeWindows::of_size_with_grace(Duration::from_secs(3600), Duration::from_secs(86_400)).unwrap())
        .count(Materialized::named("window-counts"))
        .unwrap()
        .to_stream()
        .map(|w, n| (format!("{}@{}", w.key, w.window.start_ms), n))
        .to(output, Produced::with(StringSerde, I64Serde));
    builder.build().unwrap()
}

fn eos_config(bootstrap: &str, app: &str, state_dir: &std::path::Path, commit_interval_ms: u64) -> StreamsConfig {
    StreamsConfig::new(app, bootstrap)
        .set("processing.guarantee", "exactly_once_v2")
        .unwrap()
        .set("commit.interval.ms", &commit_interval_ms.to_string())
        .unwrap()
        // Every update reaches the output, so the model is exact per record.
        .set("statestore.cache.max.bytes", "0")
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

/// A `read_committed` reader of every partition of `topic` from the start.
async fn committed_reader(bootstrap: &str, topic: &str) -> Consumer {
    let consumer = Consumer::new(ConsumerConfig {
        bootstrap_servers: vec![bootstrap.to_string()],
        auto_offset_reset: AutoOffsetReset::Earliest,
        isolation_level: IsolationLevel::ReadCommitted,
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
    consumer
}

/// Each key's committed outputs, in offset order per partition (a key lives in one partition).
fn outputs_by_key(records: &[ConsumerRecord]) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in records {
        let k = String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap();
        let v = i64::from_be_bytes(r.value.clone().unwrap()[..].try_into().unwrap());
        out.entry(k).or_default().push(v);
    }
    out
}

/// Checks that what `reader` shows now of each key is 1, 2, …, m for some m.
async fn expect_no_gap_or_repeat(reader: &Consumer, seen: &mut Vec<ConsumerRecord>) {
    seen.extend(reader.poll(Duration::from_millis(500)).await.unwrap());
    for (key, values) in outputs_by_key(seen) {
        let expected: Vec<i64> = (1..=values.len() as i64).collect();
        assert_eq!(values, expected, "committed outputs of {key} repeat or skip a count");
    }
}

fn processed(streams: &KafkaStreams) -> u64 {
    streams.metrics().records_processed.load(std::sync::atomic::Ordering::Relaxed)
}

/// Waits until `streams` has processed more than `before` records.
async fn await_processed(streams: &KafkaStreams, before: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while processed(streams) <= before {
        assert!(Instant::now() < deadline, "no record processed beyond {before}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads `reader` until every one of `keys` keys has reached `n` (or fails after `timeout`),
/// then checks exactly-once: each key's outputs are 1, 2, …, n, nothing repeated or skipped.
async fn expect_exact_counts(
    reader: &Consumer,
    seen: &mut Vec<ConsumerRecord>,
    keys: usize,
    n: i64,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        seen.extend(reader.poll(Duration::from_millis(200)).await.unwrap());
        let by_key = outputs_by_key(seen);
        if by_key.len() == keys && by_key.values().all(|v| v.last() == Some(&n)) {
            break;
        }
        let behind: Vec<(&String, Option<&i64>)> =
            by_key.iter().filter(|(_, v)| v.last() != Some(&n)).map(|(k, v)| (k, v.last())).take(5).collect();
        assert!(
            Instant::now() < deadline,
            "not every key reached {n} within {timeout:?}: {} keys seen, behind: {behind:?}",
            by_key.len()
        );
    }
    // Anything that would still arrive (a duplicate) gets a moment to show up.
    seen.extend(reader.poll(Duration::from_millis(500)).await.unwrap());
    let expected: Vec<i64> = (1..=n).collect();
    for (key, values) in outputs_by_key(seen) {
        assert_eq!(values, expected, "committed outputs of {key} are not exactly 1..={n}");
    }
}

/// A crash with a transaction open (outputs and changelog records written, not committed),
/// then a restart on the same state directory: the restarted instance has the same process id
/// and so the same `transactional.id`, which fences the dead producer and aborts its
/// transaction; the task (no checkpoint under EOS while running) is wiped and restored from the
/// changelog's committed records, and input is reprocessed from the committed offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_survives_a_crash_with_an_open_transaction() {
    let broker = broker();
    let bootstrap = broker.bootstrap();
    create(&bootstrap, &[("eos-in", 4), ("eos-out", 4)]).await;
    let keys = 20;
    let dir = tempfile::tempdir().unwrap();
    // A long interval: the crash lands inside a transaction that has output.
    let config = || eos_config(&bootstrap, "eos-crash", dir.path(), 3_000);
    let reader = committed_reader(&bootstrap, "eos-out").await;
    let mut seen = Vec::new();

    produce_round(&bootstrap, "eos-in", keys, 50).await;
    let mut a = start(per_key_count("eos-in", "eos-out"), config());
    expect_exact_counts(&reader, &mut seen, keys, 50, Duration::from_secs(60)).await;
    let process_id = a.process_id().to_string();

    // More input, processed into the open transaction, then a crash before its commit.
    let before = processed(&a);
    produce_round(&bootstrap, "eos-in", keys, 50).await;
    await_processed(&a, before).await;
    a.crash();
    drop(a);
    expect_no_gap_or_repeat(&reader, &mut seen).await;

    let mut b = start(per_key_count("eos-in", "eos-out"), config());
    assert_eq!(b.process_id(), process_id, "the restarted instance keeps its process id");
    produce_round(&bootstrap, "eos-in", keys, 50).await;
    expect_exact_counts(&reader, &mut seen, keys, 150, Duration::from_secs(90)).await;
    let store = b.store("counts", StringSerde, I64Serde).all().unwrap();
    assert_eq!(store.len(), keys);
    assert!(store.iter().all(|(_, v)| *v == 150), "{store:?}");
    assert_eq!(b.state(), StreamsState::Running);
    b.close().unwrap();

    // A clean close wrote a checkpoint; the next start resumes from it and stays exact.
    let mut c = start(per_key_count("eos-in", "eos-out"), config());
    produce_round(&bootstrap, "eos-in", keys, 10).await;
    expect_exact_counts(&reader, &mut seen, keys, 160, Duration::from_secs(90)).await;
    c.close().unwrap();
}

/// What the window- and session-store tests share: 30 records for each of `keys` keys, all at one
/// time (one window or session per key, never closed), counted by `topology` into outputs keyed
/// `<key><window_suffix>`; 30 more processed into open transactions and a crash; a restart on
/// the same state directory and 30 more: every key's committed output is exactly 1..=90.
async fn windowed_counts_survive_a_crash(
    topology: fn(&str, &str) -> Topology,
    (input, output): (&str, &str),
    app: &str,
    threads: usize,
    keys: usize,
    window_suffix: &str,
) {
    let broker = broker();
    let bootstrap = broker.bootstrap();
    create(&bootstrap, &[(input, 4), (output, 4)]).await;
    let at = Some(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let config =
        || eos_config(&bootstrap, app, dir.path(), 3_000).set("num.stream.threads", &threads.to_string()).unwrap();
    let reader = committed_reader(&bootstrap, output).await;
    let mut seen = Vec::new();

    produce_round_at(&bootstrap, input, keys, 30, at).await;
    let mut a = start(topology(input, output), config());
    expect_exact_counts(&reader, &mut seen, keys, 30, Duration::from_secs(60)).await;
    assert!(outputs_by_key(&seen).keys().all(|k| k.ends_with(window_suffix)), "one window per key");

    let before = processed(&a);
    produce_round_at(&bootstrap, input, keys, 30, at).await;
    await_processed(&a, before).await;
    a.crash();
    drop(a);
    expect_no_gap_or_repeat(&reader, &mut seen).await;

    let mut b = start(topology(input, output), config());
    produce_round_at(&bootstrap, input, keys, 30, at).await;
    expect_exact_counts(&reader, &mut seen, keys, 90, Duration::from_secs(90)).await;
    assert_eq!(b.state(), StreamsState::Running);
    b.close().unwrap();
}

/// Window stores and two stream threads under exactly_once_v2: each thread has its own
/// transactional producer and tasks; a crash with both threads' transactions open, then a
/// restart on the same state directory, leaves every (key, window) count exactly 1, 2, …, n in
/// the committed output. Every record is in the window [0 h, 1 h) (a day of grace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_with_window_stores_and_two_threads_survives_a_crash() {
    windowed_counts_survive_a_crash(windowed_count, ("win-in", "win-out"), "eos-window", 2, 16, "@0").await;
}

/// Another producer takes the stream thread's `transactional.id` (as a zombie's successor
/// would): the thread's producer is fenced, its transaction cannot commit, and the thread
/// replaces its producer, restores every task from the changelogs and goes on, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_recovers_from_a_fenced_producer() {
    let broker = broker();
    let bootstrap = broker.bootstrap();
    create(&bootstrap, &[("fence-in", 2), ("fence-out", 2)]).await;
    let keys = 10;
    let dir = tempfile::tempdir().unwrap();
    let reader = committed_reader(&bootstrap, "fence-out").await;
    let mut seen = Vec::new();
    let mut a = start(per_key_count("fence-in", "fence-out"), eos_config(&bootstrap, "eos-fence", dir.path(), 1_000));
    produce_round(&bootstrap, "fence-in", keys, 30).await;
    expect_exact_counts(&reader, &mut seen, keys, 30, Duration::from_secs(60)).await;

    // Fence the thread's producer in the middle of a round.
    let before = processed(&a);
    produce_round(&bootstrap, "fence-in", keys, 30).await;
    await_processed(&a, before).await;
    let usurper = Producer::new(ProducerConfig {
        bootstrap_servers: vec![bootstrap.clone()],
        transactional_id: Some(format!("eos-fence-{}-1", a.process_id())),
        ..ProducerConfig::default()
    })
    .await
    .unwrap();
    usurper.init_transactions().await.unwrap();
    produce_round(&bootstrap, "fence-in", keys, 30).await;
    expect_exact_counts(&reader, &mut seen, keys, 90, Duration::from_secs(90)).await;
    assert_eq!(a.state(), StreamsState::Running);
    let store = a.store("counts", StringSerde, I64Serde).all().unwrap();
    assert!(store.len() == keys && store.iter().all(|(_, v)| *v == 90), "{store:?}");
    drop(usurper);
    a.close().unwrap();
}

/// Failover: two instances share the tasks; one crashes with a transaction open. Its
/// transaction stays open until `transaction.timeout.ms` (the survivor has another
/// transactional id), holding `read_committed` readers back, then is aborted; the survivor
/// takes the tasks over after the session timeout, restores them from the changelogs'
/// committed records and reprocesses from the committed offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_fails_over_to_another_instance() {
    let broker = broker();
    let bootstrap = broker.bootstrap();
    create(&bootstrap, &[("fo-in", 4), ("fo-out", 4)]).await;
    let keys = 20;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let config = |i: usize| eos_config(&bootstrap, "eos-failover", dirs[i].path(), 2_000);
    let reader = committed_reader(&bootstrap, "fo-out").await;
    let mut seen = Vec::new();
    let mut a = start(per_key_count("fo-in", "fo-out"), config(0));
    let mut b = start(per_key_count("fo-in", "fo-out"), config(1));
    // Both in the group before the input arrives, so both get tasks.
    tokio::time::sleep(Duration::from_secs(5)).await;
    produce_round(&bootstrap, "fo-in", keys, 40).await;
    expect_exact_counts(&reader, &mut seen, keys, 40, Duration::from_secs(60)).await;

    assert!(processed(&a) > 0 && processed(&b) > 0, "both instances have tasks");
    let before = processed(&a);
    produce_round(&bootstrap, "fo-in", keys, 40).await;
    await_processed(&a, before).await;
    a.crash();
    produce_round(&bootstrap, "fo-in", keys, 40).await;
    expect_exact_counts(&reader, &mut seen, keys, 120, Duration::from_secs(120)).await;
    assert_eq!(b.state(), StreamsState::Running);
    b.close().unwrap();
}

/// A per-key count in hour-long sessions (a session store) with every update emitted as
/// `<key>@<session start>`; a retraction (tombstone) shows as -1, which no expectation accepts.
fn session_count(input: &str, output: &str) -> Topology {
    let builder = StreamsBuilder::new();
    builder
        .stream(&[input], Consumed::with(StringSerde, StringSerde))
        .group_by_key(Grouped::with(StringSerde, StringSerde))
        .windowed_by_session(
            SessionWindows::of_inactivity_gap_and_grace(Duration::from_secs(3600), Duration::from_secs(86_400))
                .unwrap(),
        )
        .count(Materialized::named("session-counts"))
        .unwrap()
        .to_change_stream()
        .map(|w, n: Option<i64>| (format!("{}@{}", w.key, w.window.start_ms), n.unwrap_or(-1)))
        .to(output, Produced::with(StringSerde, I64Serde));
    builder.build().unwrap()
}

/// Session stores under exactly_once_v2: a crash with the transaction open, then a restart on
/// the same state directory; the session store is restored from its changelog's committed
/// records, so every key's one session (extended in place, never merged, so no tombstone)
/// counts exactly 1, 2, …, n in the committed output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_with_session_stores_survives_a_crash() {
    windowed_counts_survive_a_crash(session_count, ("sess-in", "sess-out"), "eos-session", 1, 12, "@1000000").await;
}

/// One transaction of `pairs` (key, value) to `topic`, committed or aborted.
async fn txn_write(producer: &Producer, topic: &str, pairs: &[(&str, &str)], commit: bool) {
    producer.begin_transaction().unwrap();
    let mut acks = Vec::new();
    for (k, v) in pairs {
        acks.push(producer.send(topic, ProducerRecord::new(v.to_string()).with_key(k.to_string())).await.unwrap());
    }
    if commit {
        producer.commit_transaction().await.unwrap();
        for a in acks {
            a.await.unwrap();
        }
    } else {
        producer.abort_transaction().await.unwrap();
    }
}

/// Reads `reader` until it holds `n` records in all (or fails after 60 s); returns their values.
async fn read_values(reader: &Consumer, seen: &mut Vec<ConsumerRecord>, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} records arrived", seen.len());
        seen.extend(reader.poll(Duration::from_millis(200)).await.unwrap());
    }
    seen.extend(reader.poll(Duration::from_millis(300)).await.unwrap());
    seen.iter().map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()).collect()
}

/// A global table under exactly_once_v2 reads its topic `read_committed`: values a transactional
/// writer aborted never reach the global store or a join, at bootstrap or while the topic is
/// followed; a second application bootstrapping from the same topic later sees the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_global_tables_never_see_aborted_values() {
    let broker = broker();
    let bootstrap = broker.bootstrap();
    create(&bootstrap, &[("gt-table", 1), ("gt-in", 2), ("gt-out", 2), ("gt-out2", 2)]).await;
    let writer = Producer::new(ProducerConfig {
        bootstrap_servers: vec![bootstrap.clone()],
        transactional_id: Some("gt-writer".to_string()),
        ..ProducerConfig::default()
    })
    .await
    .unwrap();
    writer.init_transactions().await.unwrap();
    txn_write(&writer, "gt-table", &[("k0", "c0"), ("k1", "c1")], true).await;
    txn_write(&writer, "gt-table", &[("k0", "ABORTED"), ("k1", "ABORTED")], false).await;

    let topology = |output: &str| {
        let builder = StreamsBuilder::new();
        let table =
            builder.global_table("gt-table", Consumed::with(StringSerde, StringSerde), Materialized::named("gt"));
        builder
            .stream(&["gt-in"], Consumed::with(StringSerde, StringSerde))
            .join_global(&table, |k: &String, _: &String| k.clone(), |v: &String, t: &String| format!("{v}:{t}"))
            .to(output, Produced::with(StringSerde, StringSerde));
        builder.build().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let reader = committed_reader(&bootstrap, "gt-out").await;
    let mut seen = Vec::new();

    let mut a = start(topology("gt-out"), eos_config(&bootstrap, "eos-global", dir.path(), 500));
    produce_round(&bootstrap, "gt-in", 2, 1).await;
    let mut values = read_values(&reader, &mut seen, 2).await;
    values.sort();
    assert_eq!(values, ["v0:c0", "v1:c1"]);

    // Followed while running: a committed update arrives, an aborted one never does.
    txn_write(&writer, "gt-table", &[("k0", "c0-new")], true).await;
    txn_write(&writer, "gt-table", &[("k1", "ABORTED-2")], false).await;
    let store = a.store("gt", StringSerde, StringSerde);
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.get(&"k0".to_string()).unwrap().as_deref() != Some("c0-new") {
        assert!(Instant::now() < deadline, "the global store did not follow the committed update");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.get(&"k1".to_string()).unwrap().as_deref(), Some("c1"));
    produce_round(&bootstrap, "gt-in", 2, 1).await;
    let values = read_values(&reader, &mut seen, 4).await;
    let mut last: Vec<&String> = values[2..].iter().collect();
    last.sort();
    assert_eq!(last, ["v0:c0-new", "v1:c1"]);

    // Another application bootstraps its global store from the whole topic.
    let other_dir = tempfile::tempdir().unwrap();
    let mut b = start(topology("gt-out2"), eos_config(&bootstrap, "eos-global-2", other_dir.path(), 500));
    let reader2 = committed_reader(&bootstrap, "gt-out2").await;
    let mut seen2 = Vec::new();
    let mut values = read_values(&reader2, &mut seen2, 4).await;
    values.sort();
    assert_eq!(values, ["v0:c0-new", "v0:c0-new", "v1:c1", "v1:c1"], "it joins the input from the start");
    assert!(read_values(&reader, &mut seen, 4).await.iter().all(|v| !v.contains("ABORTED")));
    b.close().unwrap();
    a.close().unwrap();
}

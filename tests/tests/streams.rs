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
    let mut streams =
        start(streams_apps::wordcount("plaintext", "wordcount-out").unwrap(), config(&broker, "wc", state.path()));
    let mut expected = expected;
    *expected.get_mut("kafka").unwrap() = 4;
    *expected.get_mut("streams").unwrap() = 3;
    expected.insert("again".into(), 1);
    let records = read_until(&broker, "wordcount-out", Duration::from_secs(30), |r| latest_counts(r) == expected).await;
    assert_eq!(latest_counts(&records), expected);
    assert_eq!(streams.state(), StreamsState::Running);
    assert!(streams.metrics().records_restored.load(std::sync::atomic::Ordering::Relaxed) > 0);
    streams.close().unwrap();
}

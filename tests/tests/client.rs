//! The Spate client against a real `spate broker` process: every compression codec end to end,
//! idempotent delivery across broker restarts, and the admin API.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use spate_client::admin::{AdminConfig, AlterConfigOp, ConfigResource, ConfigSource, NewTopic};
use spate_client::protocol::ErrorCode;
use spate_client::{Admin, Compression, Producer, ProducerConfig, ProducerRecord, RecordMetadata};
use spate_e2e::{consume_from_beginning, TestBroker};

const RECORDS: usize = 10_000;

async fn admin(broker: &TestBroker) -> Admin {
    Admin::new(AdminConfig { bootstrap_servers: vec![broker.bootstrap()], ..AdminConfig::default() })
        .await
        .expect("admin connects")
}

fn producer_config(broker: &TestBroker) -> ProducerConfig {
    ProducerConfig { bootstrap_servers: vec![broker.bootstrap()], linger_ms: 5, ..ProducerConfig::default() }
}

/// What record `i` of the codec test carries.
fn keyed_record(i: usize, base_timestamp_ms: i64) -> ProducerRecord {
    ProducerRecord::new(format!("value-{i:05}-{}", "x".repeat(i % 50)))
        .with_key(format!("key-{}", i % 977))
        .with_header("seq", Some(Bytes::from(i.to_string())))
        .with_header("empty", None)
        .with_timestamp_ms(base_timestamp_ms + i as i64)
}

async fn round_trip(codec: Compression) {
    let broker = TestBroker::start(&[]).unwrap();
    let topic = format!("codec-{codec}");
    admin(&broker).await.create_topic(NewTopic::new(&topic, 3, 1)).await.unwrap();
    let producer = Producer::new(ProducerConfig { compression: codec, ..producer_config(&broker) }).await.unwrap();
    let base_ts = 1_700_000_000_000i64;
    let mut futures = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        futures.push(producer.send(&topic, keyed_record(i, base_ts)).await.unwrap());
    }
    // Where each record landed, by the broker's answer.
    let mut sent_at: HashMap<(i32, i64), usize> = HashMap::new();
    for (i, f) in futures.into_iter().enumerate() {
        let RecordMetadata { partition, offset } = f.await.unwrap();
        assert!(sent_at.insert((partition, offset), i).is_none(), "offset {partition}/{offset} given twice");
    }
    producer.close().await.unwrap();

    let records = consume_from_beginning(&broker.bootstrap(), &topic, RECORDS, Duration::from_secs(30)).await.unwrap();
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    let mut last_index: BTreeMap<i32, usize> = BTreeMap::new();
    for r in &records {
        let i = sent_at[&(r.partition, r.offset)];
        let expected = keyed_record(i, base_ts);
        assert_eq!(r.key, expected.key, "key of record {i}");
        assert_eq!(r.value, expected.value, "value of record {i}");
        assert_eq!(r.headers, expected.headers, "headers of record {i}");
        assert_eq!(Some(r.timestamp_ms), expected.timestamp_ms, "timestamp of record {i}");
        assert_eq!(&*r.topic, topic);
        // Per partition, send order is offset order.
        if let Some(prev) = last_index.insert(r.partition, i) {
            assert!(prev < i, "partition {} reordered record {i} after {prev}", r.partition);
        }
        by_partition.entry(r.partition).or_default().push(r.offset);
    }
    assert_eq!(by_partition.len(), 3, "keys spread over all partitions");
    for (p, offsets) in by_partition {
        assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>(), "offsets of partition {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_uncompressed() {
    round_trip(Compression::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_gzip() {
    round_trip(Compression::Gzip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_snappy() {
    round_trip(Compression::Snappy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_lz4() {
    round_trip(Compression::Lz4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_zstd() {
    round_trip(Compression::Zstd).await;
}

/// Sends `total` records, stopping the broker (cleanly, or with kill -9) and starting it again
/// after the first half, then checks each value is in the log exactly once at contiguous offsets.
async fn idempotent_across_restart(crash: bool) {
    let mut broker = TestBroker::start(&[]).unwrap();
    let topic = "idempotent";
    admin(&broker).await.create_topic(NewTopic::new(topic, 2, 1)).await.unwrap();
    let producer = Producer::new(ProducerConfig {
        enable_idempotence: true,
        acks: -1,
        retry_backoff_ms: 50,
        batch_size: 2048,
        ..producer_config(&broker)
    })
    .await
    .unwrap();
    let total = 6000usize;
    let mut futures = Vec::with_capacity(total);
    for i in 0..total {
        futures.push(
            producer.send(topic, ProducerRecord::new(format!("v{i:05}")).with_partition((i % 2) as i32)).await.unwrap(),
        );
        if i == total / 2 {
            // The broker has acknowledged some of this producer's batches (so it holds sequence
            // state for it) while later ones are queued or in flight as it goes away.
            (&mut futures[total / 4]).await.unwrap();
            tokio::task::block_in_place(|| {
                if crash {
                    broker.kill9();
                }
                broker.restart().expect("broker restarts")
            });
        }
    }
    for (i, f) in futures.into_iter().enumerate() {
        f.await.unwrap_or_else(|e| panic!("record {i} failed: {e}"));
    }
    producer.close().await.unwrap();

    let records = consume_from_beginning(&broker.bootstrap(), topic, total, Duration::from_secs(30)).await.unwrap();
    let mut seen = vec![0u32; total];
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in &records {
        let value = std::str::from_utf8(r.value.as_deref().unwrap()).unwrap();
        let i: usize = value[1..].parse().unwrap();
        assert_eq!(i % 2, r.partition as usize, "record {i} in the wrong partition");
        seen[i] += 1;
        by_partition.entry(r.partition).or_default().push(r.offset);
    }
    let wrong: Vec<(usize, u32)> = seen.iter().enumerate().filter(|(_, n)| **n != 1).map(|(i, n)| (i, *n)).collect();
    assert!(wrong.is_empty(), "values not seen exactly once (index, times): {wrong:?}");
    for (p, offsets) in by_partition {
        assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>(), "offsets of partition {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_survives_broker_restart() {
    idempotent_across_restart(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_survives_broker_crash() {
    idempotent_across_restart(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_creates_describes_alters_and_deletes_topics() {
    let broker = TestBroker::start(&[]).unwrap();
    let admin = admin(&broker).await;
    admin.create_topic(NewTopic::new("orders", 2, 1).with_config("retention.ms", "3600000")).await.unwrap();
    let err = admin.create_topic(NewTopic::new("orders", 2, 1)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TOPIC_ALREADY_EXISTS), "{err}");
    let err = admin.create_topic(NewTopic::new("bad", 1, 1).with_config("no.such.config", "1")).await.unwrap_err();
    assert!(err.code().is_some(), "an unknown config is a broker error: {err}");
    assert!(admin.list_topics(false).await.unwrap().contains(&"orders".to_string()));

    let described = admin.describe_topics(&["orders"]).await.unwrap();
    assert_eq!(described.len(), 1);
    let orders = &described[0];
    assert_eq!(orders.name, "orders");
    assert!(!orders.topic_id.is_nil());
    assert_eq!(orders.partitions.len(), 2);
    for p in &orders.partitions {
        assert!(p.leader >= 0, "partition {} has a leader", p.partition);
        assert_eq!(p.replicas, vec![p.leader]);
        assert_eq!(p.isr, vec![p.leader]);
    }

    let resource = ConfigResource::Topic("orders".into());
    let topic_value = |entries: &[spate_client::admin::ConfigEntry], name: &str| {
        entries.iter().find(|e| e.name == name).map(|e| (e.value.clone(), e.source))
    };
    let configs = admin.describe_configs(std::slice::from_ref(&resource), &[]).await.unwrap();
    let entries = configs[&resource].as_ref().unwrap();
    assert_eq!(topic_value(entries, "retention.ms"), Some((Some("3600000".into()), ConfigSource::DynamicTopicConfig)));

    admin
        .incremental_alter_configs(
            &resource,
            &[
                AlterConfigOp::Set { name: "segment.bytes".into(), value: "1048576".into() },
                AlterConfigOp::Delete { name: "retention.ms".into() },
            ],
        )
        .await
        .unwrap();
    let configs = admin.describe_configs(std::slice::from_ref(&resource), &[]).await.unwrap();
    let entries = configs[&resource].as_ref().unwrap();
    assert_eq!(topic_value(entries, "segment.bytes"), Some((Some("1048576".into()), ConfigSource::DynamicTopicConfig)));
    assert_ne!(topic_value(entries, "retention.ms").map(|(_, s)| s), Some(ConfigSource::DynamicTopicConfig));

    let mut results = admin.create_partitions(&[("orders", 5)]).await.unwrap();
    results.remove("orders").unwrap().unwrap();
    assert_eq!(admin.describe_topics(&["orders"]).await.unwrap()[0].partitions.len(), 5);
    let mut results = admin.create_partitions(&[("orders", 3)]).await.unwrap();
    let err = results.remove("orders").unwrap().unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::INVALID_PARTITIONS), "{err}");

    let mut results = admin.delete_topics(&["orders"]).await.unwrap();
    results.remove("orders").unwrap().unwrap();
    assert!(!admin.list_topics(false).await.unwrap().contains(&"orders".to_string()));
    let mut results = admin.delete_topics(&["orders"]).await.unwrap();
    let err = results.remove("orders").unwrap().unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION), "{err}");
    assert!(admin.describe_topics(&["orders"]).await.is_err());
}

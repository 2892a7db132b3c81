//! The Spate client's transactions against a real `spate broker` process: committed records are
//! visible to a read_committed consumer and aborted ones never; consume-transform-produce with
//! the input offsets in the transaction; a second instance fences the first; the admin API lists
//! and describes transactions.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use spate_client::admin::{AdminConfig, NewTopic};
use spate_client::{
    Admin, AutoOffsetReset, Consumer, ConsumerConfig, ConsumerGroupMetadata, IsolationLevel, OffsetAndMetadata,
    Producer, ProducerConfig, ProducerRecord, TopicPartition,
};
use spate_e2e::{spate_ok, TestBroker};

async fn admin(broker: &TestBroker) -> Admin {
    Admin::new(AdminConfig { bootstrap_servers: vec![broker.bootstrap()], ..AdminConfig::default() })
        .await
        .expect("admin connects")
}

async fn txn_producer(broker: &TestBroker, id: &str) -> Producer {
    let producer = Producer::new(ProducerConfig {
        bootstrap_servers: vec![broker.bootstrap()],
        transactional_id: Some(id.to_string()),
        transaction_timeout_ms: 10_000,
        linger_ms: 5,
        ..ProducerConfig::default()
    })
    .await
    .expect("producer starts");
    producer.init_transactions().await.expect("init_transactions");
    producer
}

/// Every value of `topic` a read_committed consumer sees, reading until `expected` arrived (and a
/// little longer, to catch extras).
async fn read_committed(broker: &TestBroker, topic: &str, expected: usize) -> Vec<String> {
    let consumer = Consumer::new(ConsumerConfig {
        bootstrap_servers: vec![broker.bootstrap()],
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
    consumer.seek_to_beginning(&[]).await.unwrap();
    let mut values = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while values.len() < expected && tokio::time::Instant::now() < deadline {
        for r in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
        }
    }
    for r in consumer.poll(Duration::from_millis(500)).await.unwrap() {
        values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
    }
    values.sort();
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_visible_aborted_never_and_the_admin_api_describes_them() {
    let broker = TestBroker::start(&[]).unwrap();
    admin(&broker).await.create_topic(NewTopic::new("t", 3, 1)).await.unwrap();
    let producer = txn_producer(&broker, "rust-txn").await;
    let mut expected = Vec::new();
    for round in 0..4 {
        producer.begin_transaction().unwrap();
        let mut futures = Vec::new();
        for i in 0..200 {
            let value = format!("r{round}-{i:03}");
            futures.push(producer.send("t", ProducerRecord::new(value.clone()).with_partition(i % 3)).await.unwrap());
            if round % 2 == 0 {
                expected.push(value);
            }
        }
        if round % 2 == 0 {
            producer.commit_transaction().await.unwrap();
            for f in futures {
                f.await.unwrap();
            }
        } else {
            producer.abort_transaction().await.unwrap();
        }
    }
    // An open transaction shows in the admin API with its partitions.
    producer.begin_transaction().unwrap();
    producer.send("t", ProducerRecord::new("open").with_partition(1)).await.unwrap().await.unwrap();
    let admin = admin(&broker).await;
    let listed = admin.list_transactions(&["Ongoing"], &[]).await.unwrap();
    assert_eq!(listed.iter().map(|t| t.transactional_id.as_str()).collect::<Vec<_>>(), ["rust-txn"]);
    let described = admin.describe_transactions(&["rust-txn", "nope"]).await.unwrap();
    let d = described["rust-txn"].as_ref().unwrap();
    assert_eq!(d.state, "Ongoing");
    assert_eq!(d.partitions, vec![TopicPartition::new("t", 1)]);
    assert!(described["nope"].is_err());
    producer.abort_transaction().await.unwrap();
    producer.close().await.unwrap();

    expected.sort();
    assert_eq!(read_committed(&broker, "t", expected.len()).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_transform_produce_commits_output_and_offsets_together() {
    let broker = TestBroker::start(&[]).unwrap();
    let admin = admin(&broker).await;
    admin.create_topic(NewTopic::new("in", 2, 1)).await.unwrap();
    admin.create_topic(NewTopic::new("out", 2, 1)).await.unwrap();
    let plain =
        Producer::new(ProducerConfig { bootstrap_servers: vec![broker.bootstrap()], ..ProducerConfig::default() })
            .await
            .unwrap();
    for i in 0..500 {
        plain.send("in", ProducerRecord::new(i.to_string()).with_partition(i % 2)).await.unwrap();
    }
    plain.flush().await.unwrap();

    // Two instances in turn; the first aborts its last transaction, so those inputs are redone.
    let mut done = 0usize;
    for (instance, abort_last) in [(0, true), (1, false)] {
        let consumer = committed_member(&broker, "ctp").await;
        consumer.subscribe(&["in"]).await.unwrap();
        let producer = txn_producer(&broker, "ctp-app").await;
        let target = if instance == 0 { 250 } else { 500 };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while done < target && tokio::time::Instant::now() < deadline {
            let records = consumer.poll(Duration::from_millis(200)).await.unwrap();
            if records.is_empty() {
                continue;
            }
            producer.begin_transaction().unwrap();
            let mut offsets: BTreeMap<TopicPartition, OffsetAndMetadata> = BTreeMap::new();
            for r in &records {
                let value = format!("x{}", String::from_utf8_lossy(r.value.as_deref().unwrap()));
                producer.send("out", ProducerRecord::new(value).with_partition(r.partition)).await.unwrap();
                offsets.insert(TopicPartition::new(&*r.topic, r.partition), OffsetAndMetadata::new(r.offset + 1));
            }
            producer.send_offsets_to_transaction(&offsets, &consumer.group_metadata().unwrap()).await.unwrap();
            if abort_last && done + records.len() >= target {
                producer.abort_transaction().await.unwrap();
                break;
            }
            producer.commit_transaction().await.unwrap();
            done += records.len();
        }
        producer.close().await.unwrap();
        consumer.close().await.unwrap();
    }
    let mut expected: Vec<String> = (0..500).map(|i| format!("x{i}")).collect();
    expected.sort();
    assert_eq!(read_committed(&broker, "out", 500).await, expected, "each input exactly once in the output");
}

/// A read_committed consumer of `group` that commits nothing itself.
async fn committed_member(broker: &TestBroker, group: &str) -> Consumer {
    Consumer::new(ConsumerConfig {
        bootstrap_servers: vec![broker.bootstrap()],
        group_id: Some(group.into()),
        auto_offset_reset: AutoOffsetReset::Earliest,
        isolation_level: IsolationLevel::ReadCommitted,
        enable_auto_commit: false,
        fetch_max_wait_ms: 100,
        ..ConsumerConfig::default()
    })
    .await
    .unwrap()
}

/// A read_committed consumer fetches committed offsets with `require_stable`: offsets a
/// transaction is committing are waited for, not skipped (the previous ones would make it
/// reprocess); and its lag is measured to the last stable offset, not the high watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_committed_waits_for_pending_offsets_and_lags_to_the_lso() {
    let broker = TestBroker::start(&[]).unwrap();
    admin(&broker).await.create_topic(NewTopic::new("stable", 1, 1)).await.unwrap();
    let tp = TopicPartition::new("stable", 0);
    let plain =
        Producer::new(ProducerConfig { bootstrap_servers: vec![broker.bootstrap()], ..ProducerConfig::default() })
            .await
            .unwrap();
    for v in ["a", "b"] {
        plain.send("stable", ProducerRecord::new(v).with_partition(0)).await.unwrap().await.unwrap();
    }
    let producer = txn_producer(&broker, "stable-app").await;
    producer.begin_transaction().unwrap();
    for v in ["c", "d", "e"] {
        producer.send("stable", ProducerRecord::new(v).with_partition(0)).await.unwrap().await.unwrap();
    }
    let offsets = BTreeMap::from([(tp.clone(), OffsetAndMetadata::new(2))]);
    producer.send_offsets_to_transaction(&offsets, &ConsumerGroupMetadata::new("stable-group")).await.unwrap();

    let consumer = committed_member(&broker, "stable-group").await;
    // The commit lands half a second after the offset fetch starts: without require_stable the
    // fetch would answer "no offset" at once.
    let commit = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        producer.commit_transaction().await
    };
    let (committed, commit) = tokio::join!(consumer.committed(std::slice::from_ref(&tp)), commit);
    commit.unwrap();
    let committed = committed.unwrap();
    assert_eq!(committed[&tp].as_ref().map(|o| o.offset), Some(2), "the transaction's offset, waited for");

    // A new open transaction (offsets 6 and 7, after the COMMIT marker at 5) holds the LSO at 6.
    producer.begin_transaction().unwrap();
    for v in ["f", "g"] {
        producer.send("stable", ProducerRecord::new(v).with_partition(0)).await.unwrap().await.unwrap();
    }
    consumer.assign(vec![tp.clone()]).await.unwrap();
    consumer.seek_to_beginning(&[]).await.unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 5 && tokio::time::Instant::now() < deadline {
        for r in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            seen.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    // One more fetch at the LSO, so the consumer knows both ends.
    assert!(consumer.poll(Duration::from_millis(300)).await.unwrap().is_empty());
    assert_eq!(consumer.high_watermark(&tp).await, Some(8));
    assert_eq!(consumer.lag(&tp).await.unwrap(), Some(0), "caught up to the LSO: nothing more is readable");
    producer.abort_transaction().await.unwrap();
    consumer.close().await.unwrap();

    // A group member whose partition's offsets a transaction is still committing (offset 6,
    // with "h" at offset 9 after the ABORT marker at 8): polls return within their timeout with
    // nothing (no fallback to the old offset 2, nor to auto.offset.reset), and once the
    // transaction commits the member starts at 6.
    producer.begin_transaction().unwrap();
    producer.send("stable", ProducerRecord::new("h").with_partition(0)).await.unwrap().await.unwrap();
    let offsets = BTreeMap::from([(tp.clone(), OffsetAndMetadata::new(6))]);
    producer.send_offsets_to_transaction(&offsets, &ConsumerGroupMetadata::new("stable-group")).await.unwrap();
    let member = committed_member(&broker, "stable-group").await;
    member.subscribe(&["stable"]).await.unwrap();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let asked = Instant::now();
        let records = member.poll(Duration::from_millis(300)).await.unwrap();
        assert!(records.is_empty(), "read before the offsets were stable: {records:?}");
        assert!(asked.elapsed() < Duration::from_secs(5), "a poll waited {:?}", asked.elapsed());
    }
    producer.commit_transaction().await.unwrap();
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while first.is_none() && Instant::now() < deadline {
        first = member.poll(Duration::from_millis(300)).await.unwrap().into_iter().next();
    }
    let first = first.expect("a record after the commit");
    assert_eq!((first.offset, first.value.as_deref()), (9, Some(&b"h"[..])), "started at the committed offset 6");
    member.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_fences_the_first() {
    let broker = TestBroker::start(&[]).unwrap();
    admin(&broker).await.create_topic(NewTopic::new("f", 1, 1)).await.unwrap();
    let old = txn_producer(&broker, "fenced").await;
    old.begin_transaction().unwrap();
    old.send("f", ProducerRecord::new("zombie")).await.unwrap().await.unwrap();
    let new = txn_producer(&broker, "fenced").await;
    new.begin_transaction().unwrap();
    new.send("f", ProducerRecord::new("new")).await.unwrap();
    new.commit_transaction().await.unwrap();
    assert!(old.commit_transaction().await.is_err(), "the fenced instance must not commit");
    assert_eq!(read_committed(&broker, "f", 1).await, vec!["new".to_string()]);
}

/// Writes a transactional batch of `values` to `topic`/0 as producer `producer_id` without
/// AddPartitionsToTxn (what a client bug, or a broker without KIP-890's check, lets through):
/// no coordinator knows this transaction, so nothing will ever end it — a hanging transaction.
/// A transactional batch sent with a raw Produce, as a buggy client would: `producer` is the
/// id and epoch to write with (`None`: a fresh idempotent producer id from InitProducerId).
/// Returns the producer id and the partition's error code.
async fn raw_txn_produce(
    broker: &TestBroker,
    topic: &str,
    transactional_id: &str,
    producer: Option<(i64, i16)>,
    base_sequence: i32,
    values: &[&str],
) -> (i64, i16) {
    use spate_client::connection::{Connection, ConnectionConfig};
    use spate_client::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use spate_client::protocol::messages::{
        InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId, TopicName,
        TransactionalId,
    };
    use spate_client::protocol::record::{BatchBuilder, Record};
    use spate_client::protocol::{str_bytes, ApiKey};

    let conn = Connection::connect(&broker.bootstrap(), &ConnectionConfig::default()).await.unwrap();
    let (producer_id, producer_epoch) = match producer {
        Some(p) => p,
        None => {
            let init: InitProducerIdResponse = conn
                .send(
                    ApiKey::InitProducerId,
                    4,
                    &InitProducerIdRequest::default()
                        .with_transactional_id(None)
                        .with_transaction_timeout_ms(-1)
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1),
                )
                .await
                .unwrap();
            assert_eq!(init.error_code, 0);
            (init.producer_id.0, init.producer_epoch)
        }
    };
    let mut batch = BatchBuilder::new(spate_client::Compression::None);
    // An hour old, as a transaction stuck since then would be.
    let timestamp_ms = chrono_now_ms() - 3_600_000;
    for v in values {
        batch.push(&Record {
            key: None,
            value: Some(bytes::Bytes::copy_from_slice(v.as_bytes())),
            headers: Vec::new(),
            timestamp_ms,
        });
    }
    let records = batch.finish(producer_id, producer_epoch, base_sequence, true).unwrap();
    let request = ProduceRequest::default()
        .with_transactional_id(Some(TransactionalId(str_bytes(transactional_id.to_string()))))
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(str_bytes(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default().with_index(0).with_records(Some(records))])]);
    let response: ProduceResponse = conn.send(ApiKey::Produce, 8, &request).await.unwrap();
    (producer_id, response.responses[0].partition_responses[0].error_code)
}

/// A transactional batch of a transactional id the coordinator never heard of, accepted because
/// the broker runs with `transaction.partition.verification.enable=false`: a hanging
/// transaction.
async fn write_hanging_batch(broker: &TestBroker, topic: &str, values: &[&str]) -> i64 {
    let (producer_id, code) = raw_txn_produce(broker, topic, "ghost", None, 0, values).await;
    assert_eq!(code, 0, "the transactional batch was refused");
    producer_id
}

/// KIP-890 part 1: a transactional write to a partition its transaction does not hold is refused
/// (no hanging transaction), one to a partition it holds is accepted, and once the transaction
/// ended a late write with its epoch is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_outside_its_transaction_is_refused() {
    use spate_client::protocol::ErrorCode;
    let broker = TestBroker::start(&[]).unwrap();
    let admin = admin(&broker).await;
    for name in ["in-txn", "not-in-txn"] {
        admin.create_topic(NewTopic::new(name, 1, 1)).await.unwrap();
    }
    let producer = txn_producer(&broker, "verified").await;
    producer.begin_transaction().unwrap();
    producer.send("in-txn", ProducerRecord::new("real").with_partition(0)).await.unwrap().await.unwrap();
    let described = admin.describe_transactions(&["verified"]).await.unwrap().remove("verified").unwrap().unwrap();
    let me = Some((described.producer_id, described.producer_epoch));

    // The partition was never added to the transaction: refused, nothing written.
    let (_, code) = raw_txn_produce(&broker, "not-in-txn", "verified", me, 0, &["stray"]).await;
    assert_eq!(ErrorCode(code), ErrorCode::INVALID_TXN_STATE);
    let producers = admin.describe_producers(&TopicPartition::new("not-in-txn", 0)).await.unwrap();
    assert!(producers.is_empty(), "nothing of the stray write is kept: {producers:?}");
    // An unknown transactional id (this one's coordinator exists) is refused as well.
    let (_, code) = raw_txn_produce(&broker, "not-in-txn", "ghost", None, 0, &["ghost"]).await;
    assert_eq!(ErrorCode(code), ErrorCode::INVALID_PRODUCER_ID_MAPPING);
    // A wrong epoch is a fenced producer.
    let stale = me.map(|(pid, epoch)| (pid, epoch + 1));
    let (_, code) = raw_txn_produce(&broker, "not-in-txn", "verified", stale, 0, &["stale"]).await;
    assert_eq!(ErrorCode(code), ErrorCode::INVALID_PRODUCER_EPOCH);

    producer.send("in-txn", ProducerRecord::new("more").with_partition(0)).await.unwrap().await.unwrap();
    producer.commit_transaction().await.unwrap();
    // Once the COMMIT marker is in (read_committed sees the records), a late write with the
    // same epoch would open a transaction the coordinator does not know: refused.
    assert_eq!(read_committed(&broker, "in-txn", 2).await, vec!["more", "real"], "sorted");
    let (_, code) = raw_txn_produce(&broker, "in-txn", "verified", me, 2, &["late"]).await;
    assert_eq!(ErrorCode(code), ErrorCode::INVALID_TXN_STATE);
    // Nothing hangs anywhere.
    let found = spate_ok(&broker, &["transactions", "--find-hanging", "--max-transaction-timeout-ms", "0"]);
    assert_eq!(found.lines().count(), 1, "{found}");

    // The next transaction of the same producer goes through verification again.
    producer.begin_transaction().unwrap();
    producer.send("not-in-txn", ProducerRecord::new("second").with_partition(0)).await.unwrap().await.unwrap();
    producer.commit_transaction().await.unwrap();
    assert_eq!(read_committed(&broker, "not-in-txn", 1).await, vec!["second"]);
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// `spate transactions --describe-producers / --find-hanging / --abort`: a transaction no
/// coordinator knows holds back the partition's LSO; find-hanging names it (and not a live
/// transaction its coordinator tracks), abort writes its ABORT marker, and read_committed
/// consumers move past it without its records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_transaction_is_found_and_aborted() {
    // Verification off (KIP-890), so a raw transactional batch can hang, as with older brokers.
    let broker = TestBroker::start(&["--set", "transaction.partition.verification.enable=false"]).unwrap();
    let admin = admin(&broker).await;
    for name in ["hang", "hang-live"] {
        admin.create_topic(NewTopic::new(name, 1, 1)).await.unwrap();
    }
    let hanging_pid = write_hanging_batch(&broker, "hang", &["ghost-1", "ghost-2", "ghost-3"]).await;
    let plain =
        Producer::new(ProducerConfig { bootstrap_servers: vec![broker.bootstrap()], ..ProducerConfig::default() })
            .await
            .unwrap();
    for v in ["after-1", "after-2"] {
        plain.send("hang", ProducerRecord::new(v).with_partition(0)).await.unwrap().await.unwrap();
    }
    // The hanging transaction holds the LSO at its first offset: read_committed sees nothing.
    assert!(read_committed(&broker, "hang", 0).await.is_empty());

    // A live transaction of a real transactional producer, open on another topic.
    let live = txn_producer(&broker, "live-txn").await;
    live.begin_transaction().unwrap();
    live.send("hang-live", ProducerRecord::new("open").with_partition(0)).await.unwrap().await.unwrap();

    let producers = admin.describe_producers(&TopicPartition::new("hang", 0)).await.unwrap();
    let ghost = producers.iter().find(|p| p.producer_id == hanging_pid).expect("the hanging producer is described");
    assert_eq!(ghost.current_transaction_start_offset, Some(0));
    assert_eq!(ghost.last_sequence, 2);
    assert!(producers
        .iter()
        .filter(|p| p.producer_id != hanging_pid)
        .all(|p| p.current_transaction_start_offset.is_none()));

    let described = spate_ok(&broker, &["transactions", "--describe-producers", "--topic", "hang", "--partition", "0"]);
    assert!(described.lines().any(|l| l.split_whitespace().nth(2) == Some(&hanging_pid.to_string())), "{described}");

    let found = spate_ok(&broker, &["transactions", "--find-hanging", "--max-transaction-timeout-ms", "0"]);
    let rows: Vec<Vec<&str>> = found.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 1, "exactly the hanging transaction, not the live one:\n{found}");
    assert_eq!(&rows[0][..3], &["hang", "0", hanging_pid.to_string().as_str()], "{found}");
    assert_eq!(rows[0][5], "0", "start offset:\n{found}");

    let aborted =
        spate_ok(&broker, &["transactions", "--abort", "--topic", "hang", "--partition", "0", "--start-offset", "0"]);
    assert!(aborted.contains(&format!("producer {hanging_pid}")), "{aborted}");
    assert_eq!(read_committed(&broker, "hang", 2).await, vec!["after-1", "after-2"]);
    let found = spate_ok(&broker, &["transactions", "--find-hanging", "--max-transaction-timeout-ms", "0"]);
    assert_eq!(found.lines().count(), 1, "nothing hangs after the abort:\n{found}");

    // The live transaction was never a candidate and still commits.
    live.commit_transaction().await.unwrap();
    assert_eq!(read_committed(&broker, "hang-live", 1).await, vec!["open"]);
}

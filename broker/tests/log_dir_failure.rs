//! A failed fsync takes the log directory offline (Kafka's log-dir failure handling): the
//! waiting `acks=all` produce is answered KAFKA_STORAGE_ERROR, nothing more is acknowledged or
//! served from the directory even if a later fsync would succeed, other APIs keep answering,
//! and a restart recovers the log from disk with every acknowledged record in it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use spate_broker::broker::Broker;
use spate_broker::{BrokerConfig, Server};
use spate_client::connection::{Connection, ConnectionConfig};
use spate_client::protocol::compression::Compression;
use spate_client::protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use spate_client::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use spate_client::protocol::messages::*;
use spate_client::protocol::record::{decode_records, BatchBuilder, BatchIter, Record};
use spate_client::protocol::{ApiKey, ErrorCode};
use tokio::sync::oneshot;

const TOPIC: &str = "durable";

struct Running {
    addr: String,
    broker: Arc<Broker>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(dir: &Path, create: bool) -> Running {
    let config =
        BrokerConfig { listen: "127.0.0.1:0".parse().unwrap(), data_dir: dir.to_path_buf(), ..Default::default() };
    let server = Server::start(config).await.unwrap();
    if create {
        server.broker.create_topic(TOPIC, 1, -1, BTreeMap::new()).await.unwrap();
    }
    let addr = server.local_addr().to_string();
    let broker = server.broker.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .serve(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Running { addr, broker, stop, task }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

fn batch(value: &str) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    b.push(&Record { value: Some(Bytes::copy_from_slice(value.as_bytes())), timestamp_ms: 1, ..Default::default() });
    b.finish(-1, -1, -1, false).unwrap()
}

/// Produces one record with acks=all; returns the partition's error code and base offset.
async fn produce(conn: &Connection, value: &str) -> (ErrorCode, i64) {
    let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(5_000).with_topic_data(vec![
        TopicProduceData::default()
            .with_name(TopicName(spate_client::protocol::str_bytes(TOPIC)))
            .with_partition_data(vec![PartitionProduceData::default().with_index(0).with_records(Some(batch(value)))]),
    ]);
    let response: ProduceResponse = conn.send(ApiKey::Produce, 9, &request).await.unwrap();
    let p = &response.responses[0].partition_responses[0];
    (ErrorCode(p.error_code), p.base_offset)
}

/// Fetches from offset 0; returns the error code and the values read.
async fn fetch(conn: &Connection) -> (ErrorCode, Vec<String>) {
    let request =
        FetchRequest::default().with_max_wait_ms(0).with_min_bytes(1).with_max_bytes(1 << 20).with_topics(vec![
            FetchTopic::default().with_topic(TopicName(spate_client::protocol::str_bytes(TOPIC))).with_partitions(
                vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)],
            ),
        ]);
    let response: FetchResponse = conn.send(ApiKey::Fetch, 11, &request).await.unwrap();
    let p = &response.responses[0].partitions[0];
    let mut values = Vec::new();
    if let Some(records) = &p.records {
        for (start, header) in BatchIter::new(records) {
            let mut out = Vec::new();
            decode_records(&records.slice(start..start + header.total_bytes()), 1 << 20, &mut out).unwrap();
            values.extend(out.into_iter().map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap()));
        }
    }
    (ErrorCode(p.error_code), values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fsync_takes_the_log_dir_offline_until_restart() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), true).await;
    let conn = Connection::connect(&running.addr, &ConnectionConfig::default()).await.unwrap();
    assert_eq!(produce(&conn, "acknowledged").await, (ErrorCode::NONE, 0));

    // The next fsync fails once; a retried fsync would succeed, and proves nothing.
    running.broker.partition(TOPIC, 0).unwrap().inject_fsync_failure();
    let (code, _) = produce(&conn, "never-acknowledged").await;
    assert_eq!(code, ErrorCode::KAFKA_STORAGE_ERROR, "a batch whose fsync failed was answered {code:?}");
    let (code, _) = produce(&conn, "after-the-failure").await;
    assert_eq!(code, ErrorCode::KAFKA_STORAGE_ERROR, "an offline log dir took a produce: {code:?}");
    let (code, values) = fetch(&conn).await;
    assert_eq!(code, ErrorCode::KAFKA_STORAGE_ERROR, "an offline log dir served a fetch: {values:?}");
    // The broker itself keeps answering.
    let _: MetadataResponse = conn.send(ApiKey::Metadata, 9, &MetadataRequest::default()).await.unwrap();
    drop(conn);
    running.stop().await;

    // A restart re-reads the log from disk: the acknowledged record is there, the directory is
    // online again.
    let running = start(dir.path(), false).await;
    let conn = Connection::connect(&running.addr, &ConnectionConfig::default()).await.unwrap();
    let (code, values) = fetch(&conn).await;
    assert_eq!(code, ErrorCode::NONE);
    assert_eq!(values.first().map(String::as_str), Some("acknowledged"), "{values:?}");
    let (code, _) = produce(&conn, "after-restart").await;
    assert_eq!(code, ErrorCode::NONE);
    drop(conn);
    running.stop().await;
}

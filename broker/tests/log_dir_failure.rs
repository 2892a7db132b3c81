//! A failed fsync takes the log directory offline (Kafka's log-dir failure handling): the
//! waiting `acks=all` produce is answered KAFKA_STORAGE_ERROR, nothing more is acknowledged or
//! served from the directory even if a later fsync would succeed, other APIs keep answering,
//! and a restart recovers the log from disk with every acknowledged record in it.

mod common;

use std::collections::BTreeMap;

use common::{config, fetch_values, produce_value, start, start_with};
use spate_client::protocol::messages::{MetadataRequest, MetadataResponse};
use spate_client::protocol::{ApiKey, ErrorCode};

const TOPIC: &str = "durable";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fsync_takes_the_log_dir_offline_until_restart() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_with(config(dir.path()), |broker| async move {
        broker.create_topic(TOPIC, 1, -1, BTreeMap::new()).await.unwrap();
    })
    .await;
    let conn = running.connect().await;
    assert_eq!(produce_value(&conn, TOPIC, "acknowledged").await, (ErrorCode::NONE, 0));

    // The next fsync fails once; a retried fsync would succeed, and proves nothing.
    running.broker.partition(TOPIC, 0).unwrap().inject_fsync_failure();
    let (code, _) = produce_value(&conn, TOPIC, "never-acknowledged").await;
    assert_eq!(code, ErrorCode::KAFKA_STORAGE_ERROR, "a batch whose fsync failed was answered {code:?}");
    let (code, _) = produce_value(&conn, TOPIC, "after-the-failure").await;
    assert_eq!(code, ErrorCode::KAFKA_STORAGE_ERROR, "an offline log dir took a produce: {code:?}");
    let (code, values) = fetch_values(&conn, TOPIC).await;
    assert_eq!(code, ErrorCode::KAFKA_STORAGE_ERROR, "an offline log dir served a fetch: {values:?}");
    // The broker itself keeps answering.
    let _: MetadataResponse = conn.send(ApiKey::Metadata, 9, &MetadataRequest::default()).await.unwrap();
    drop(conn);
    running.stop().await;

    // A restart re-reads the log from disk: the acknowledged record is there, the directory is
    // online again.
    let running = start(config(dir.path())).await;
    let conn = running.connect().await;
    let (code, values) = fetch_values(&conn, TOPIC).await;
    assert_eq!(code, ErrorCode::NONE);
    assert_eq!(values.first().map(String::as_str), Some("acknowledged"), "{values:?}");
    let (code, _) = produce_value(&conn, TOPIC, "after-restart").await;
    assert_eq!(code, ErrorCode::NONE);
    drop(conn);
    running.stop().await;
}

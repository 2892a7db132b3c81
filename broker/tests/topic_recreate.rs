//! Deleting a topic and creating one with the same name never costs the new topic its data,
//! including when both changes reach a broker in one metadata image (a broker that was behind,
//! or a follower broker in a cluster): the old replica's directory is renamed away
//! (`<topic>-<p>.<id>-delete`) before the new replica opens `<topic>-<p>`.

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
use spate_client::protocol::{str_bytes, ApiKey, ErrorCode};
use tokio::sync::oneshot;

const TOPIC: &str = "recreated";

struct Running {
    addr: String,
    broker: Arc<Broker>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(dir: &Path) -> Running {
    let config =
        BrokerConfig { listen: "127.0.0.1:0".parse().unwrap(), data_dir: dir.to_path_buf(), ..Default::default() };
    let server = Server::start(config).await.unwrap();
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

async fn produce(conn: &Connection, value: &str) -> ErrorCode {
    let mut b = BatchBuilder::new(Compression::None);
    b.push(&Record { value: Some(Bytes::copy_from_slice(value.as_bytes())), timestamp_ms: 1, ..Default::default() });
    let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(5_000).with_topic_data(vec![
        TopicProduceData::default().with_name(TopicName(str_bytes(TOPIC))).with_partition_data(vec![
            PartitionProduceData::default().with_index(0).with_records(Some(b.finish(-1, -1, -1, false).unwrap())),
        ]),
    ]);
    let response: ProduceResponse = conn.send(ApiKey::Produce, 9, &request).await.unwrap();
    ErrorCode(response.responses[0].partition_responses[0].error_code)
}

async fn fetch_all(conn: &Connection) -> (ErrorCode, Vec<String>) {
    let mut values = Vec::new();
    loop {
        let request =
            FetchRequest::default().with_max_wait_ms(0).with_min_bytes(1).with_max_bytes(1 << 20).with_topics(vec![
                FetchTopic::default().with_topic(TopicName(str_bytes(TOPIC))).with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(values.len() as i64)
                        .with_partition_max_bytes(1 << 20),
                ]),
            ]);
        let response: FetchResponse = conn.send(ApiKey::Fetch, 11, &request).await.unwrap();
        let p = &response.responses[0].partitions[0];
        if p.error_code != 0 {
            return (ErrorCode(p.error_code), values);
        }
        let before = values.len();
        if let Some(records) = &p.records {
            for (start, header) in BatchIter::new(records) {
                let mut out = Vec::new();
                decode_records(&records.slice(start..start + header.total_bytes()), 1 << 20, &mut out).unwrap();
                values.extend(out.into_iter().map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap()));
            }
        }
        if values.len() == before {
            return (ErrorCode::NONE, values);
        }
    }
}

/// Produces until the (re)created topic takes writes on this broker; returns the acknowledged
/// values.
async fn produce_some(conn: &Connection, round: usize, count: usize) -> Vec<String> {
    let mut acked = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while acked.len() < count {
        let value = format!("round-{round}-{}", acked.len());
        match produce(conn, &value).await {
            ErrorCode::NONE => acked.push(value),
            code => {
                assert!(tokio::time::Instant::now() < deadline, "round {round}: produce keeps failing with {code:?}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_recreate_in_one_image_keeps_the_new_topics_files() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    running.broker.create_topic(TOPIC, 1, -1, BTreeMap::new()).await.unwrap();
    let conn = Connection::connect(&running.addr, &ConnectionConfig::default()).await.unwrap();
    produce_some(&conn, 0, 5).await;

    // One image in which the topic was deleted and a new one with the same name created.
    let mut image = (*running.broker.image()).clone();
    let new_id = uuid::Uuid::new_v4();
    image.topics.get_mut(TOPIC).unwrap().id = new_id;
    running.broker.reconcile(&image).unwrap();

    let partition_dir = dir.path().join(format!("{TOPIC}-0"));
    let metadata = std::fs::read_to_string(partition_dir.join("partition.metadata"))
        .unwrap_or_else(|e| panic!("the new topic's directory {} is gone: {e}", partition_dir.display()));
    assert!(metadata.contains(&new_id.simple().to_string()), "{metadata}");
    let new_partition = running.broker.partition(TOPIC, 0).unwrap();
    assert!(new_partition.dir().exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("-delete"))
        .collect();
    assert!(leftovers.is_empty(), "deleted replica directories left behind: {leftovers:?}");
    drop(conn);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_recreate_in_a_loop_while_producing_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let conn = Connection::connect(&running.addr, &ConnectionConfig::default()).await.unwrap();
    let mut acked = Vec::new();
    for round in 0..15 {
        if round > 0 {
            running.broker.delete_topic(TOPIC).await.unwrap();
        }
        running.broker.create_topic(TOPIC, 1, -1, BTreeMap::new()).await.unwrap();
        acked = produce_some(&conn, round, 20).await;
        let (code, values) = fetch_all(&conn).await;
        assert_eq!(code, ErrorCode::NONE, "round {round}");
        assert_eq!(values, acked, "round {round}: the new topic holds exactly what was acknowledged to it");
    }
    drop(conn);
    running.stop().await;

    // After a restart the last topic still holds every acknowledged record.
    let running = start(dir.path()).await;
    let conn = Connection::connect(&running.addr, &ConnectionConfig::default()).await.unwrap();
    let (code, values) = fetch_all(&conn).await;
    assert_eq!(code, ErrorCode::NONE);
    assert_eq!(values, acked);
    drop(conn);
    running.stop().await;
}

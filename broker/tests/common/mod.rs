//! The in-process broker the integration tests in `broker/tests` share: a [`Server`] on a
//! loopback port chosen at run time, serving until [`Running::stop`], and raw Produce/Fetch
//! requests through the spate-client `Connection`.

#![allow(dead_code, reason = "each test binary uses a different part of this module")]

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use spate_broker::broker::Broker;
use spate_broker::{BrokerConfig, Server};
use spate_client::connection::{Connection, ConnectionConfig};
use spate_client::protocol::compression::Compression;
use spate_client::protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use spate_client::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use spate_client::protocol::messages::{FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, TopicName};
use spate_client::protocol::record::{decode_records, BatchBuilder, BatchIter, Record};
use spate_client::protocol::{str_bytes, ApiKey, ErrorCode};
use tokio::sync::oneshot;

pub struct Running {
    pub addr: String,
    pub broker: Arc<Broker>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// A single-node broker's config storing in `dir`, listening on a free loopback port chosen
/// now, so the address it advertises in Metadata is the one it listens on (clients that follow
/// metadata, like the admin client, can reach it).
pub fn config(dir: &Path) -> BrokerConfig {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    BrokerConfig {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Default::default()
    }
}

/// Starts a broker; `prepare` runs (e.g. creating topics) before it serves.
pub async fn start_with<F, Fut>(config: BrokerConfig, prepare: F) -> Running
where
    F: FnOnce(Arc<Broker>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let server = Server::start(config).await.unwrap();
    prepare(server.broker.clone()).await;
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

pub async fn start(config: BrokerConfig) -> Running {
    start_with(config, |_| async {}).await
}

impl Running {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }

    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.addr, &ConnectionConfig::default()).await.unwrap()
    }
}

/// Produces one record holding `value` to partition 0 of `topic` with acks=all; returns the
/// partition's error code and base offset.
pub async fn produce_value(conn: &Connection, topic: &str, value: &str) -> (ErrorCode, i64) {
    let mut batch = BatchBuilder::new(Compression::None);
    batch.push(&Record {
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        timestamp_ms: 1,
        ..Default::default()
    });
    let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(5_000).with_topic_data(vec![
        TopicProduceData::default().with_name(TopicName(str_bytes(topic))).with_partition_data(vec![
            PartitionProduceData::default().with_index(0).with_records(Some(batch.finish(-1, -1, -1, false).unwrap())),
        ]),
    ]);
    let response: ProduceResponse = conn.send(ApiKey::Produce, 9, &request).await.unwrap();
    let p = &response.responses[0].partition_responses[0];
    (ErrorCode(p.error_code), p.base_offset)
}

/// Reads partition 0 of `topic` from offset 0 to the high watermark; returns the first error
/// code met (NONE if none) and the values read until then.
pub async fn fetch_values(conn: &Connection, topic: &str) -> (ErrorCode, Vec<String>) {
    let mut values = Vec::new();
    loop {
        let request =
            FetchRequest::default().with_max_wait_ms(0).with_min_bytes(1).with_max_bytes(1 << 20).with_topics(vec![
                FetchTopic::default().with_topic(TopicName(str_bytes(topic))).with_partitions(vec![
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

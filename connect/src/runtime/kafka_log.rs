//! A compacted topic read from the start and then tailed (Kafka Connect's `KafkaBasedLog`): the
//! config, offset and status stores each keep one. A background task applies every record to
//! the owner's state; [`KafkaLog::read_to_end`] waits until everything written before the call
//! has been applied, which is how a worker knows it has the latest configs.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use spate_client::admin::{NewTopic, OffsetSpec};
use spate_client::{
    Admin, Consumer, ConsumerConfig, ConsumerRecord, IsolationLevel, Producer, ProducerRecord, TopicPartition,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::error::{ConnectError, Result};

/// How a log's topic is created when missing.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
}

/// A tailed topic.
pub struct KafkaLog {
    topic: String,
    producer: Producer,
    admin: Admin,
    partitions: Vec<TopicPartition>,
    /// Next offset applied, per partition.
    applied: watch::Receiver<BTreeMap<i32, i64>>,
    /// Read `read_committed` (the offsets topic with exactly-once sources): its end is the last
    /// stable offset.
    read_committed: bool,
    tail: tokio::task::AbortHandle,
}

impl KafkaLog {
    /// Creates the topic if missing (compacted), assigns every partition from the start and
    /// starts tailing; `apply` sees each record once, in offset order per partition.
    pub async fn start(
        admin: Admin,
        producer: Producer,
        consumer_config: ConsumerConfig,
        spec: TopicSpec,
        mut apply: Box<dyn FnMut(&ConsumerRecord) + Send>,
    ) -> Result<KafkaLog> {
        let topic = NewTopic::new(spec.name.clone(), spec.partitions, spec.replication_factor)
            .with_config("cleanup.policy", "compact");
        match admin.create_topic(topic).await {
            Ok(()) => info!(topic = %spec.name, partitions = spec.partitions, "created internal topic"),
            Err(e) if e.code() == Some(spate_client::protocol::ErrorCode::TOPIC_ALREADY_EXISTS) => {}
            Err(e) => return Err(e.into()),
        }
        let meta = admin.cluster().topic(&spec.name).await?;
        let partitions: Vec<TopicPartition> =
            (0..meta.partitions.len() as i32).map(|p| TopicPartition::new(spec.name.clone(), p)).collect();
        let read_committed = consumer_config.isolation_level == IsolationLevel::ReadCommitted;
        let mut config = consumer_config;
        config.group_id = None;
        config.enable_auto_commit = false;
        let consumer = Consumer::new(config).await?;
        consumer.assign(partitions.clone()).await?;
        consumer.seek_to_beginning(&partitions).await?;
        let (tx, applied) = watch::channel(BTreeMap::new());
        let name = spec.name.clone();
        let tail = tokio::spawn(async move {
            loop {
                match consumer.poll(Duration::from_millis(500)).await {
                    Ok(records) => {
                        let mut positions = tx.borrow().clone();
                        for r in &records {
                            apply(r);
                            positions.insert(r.partition, r.offset + 1);
                        }
                        // Positions also move past records the topic no longer has (compaction,
                        // control batches): ask the consumer, not only the records.
                        for tp in consumer.assignment().await {
                            if let Ok(p) = consumer.position(&tp).await {
                                let e = positions.entry(tp.partition).or_insert(0);
                                *e = (*e).max(p);
                            }
                        }
                        tx.send_replace(positions);
                    }
                    Err(e) => {
                        warn!(topic = %name, error = %e, "reading internal topic failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        })
        .abort_handle();
        Ok(KafkaLog { topic: spec.name, producer, admin, partitions, applied, read_committed, tail })
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Waits until every record written before this call is applied, or `timeout`.
    pub async fn read_to_end(&self, timeout: Duration) -> Result<()> {
        let wanted: Vec<(TopicPartition, OffsetSpec)> =
            self.partitions.iter().map(|tp| (tp.clone(), OffsetSpec::Latest)).collect();
        let ends = if self.read_committed {
            self.admin.list_offsets_read_committed(&wanted).await?
        } else {
            self.admin.list_offsets(&wanted).await?
        };
        let mut applied = self.applied.clone();
        let done = |positions: &BTreeMap<i32, i64>| {
            ends.iter()
                .all(|(tp, info)| info.offset <= 0 || positions.get(&tp.partition).copied().unwrap_or(0) >= info.offset)
        };
        let wait = async {
            loop {
                if done(&applied.borrow_and_update()) {
                    return Ok(());
                }
                if applied.changed().await.is_err() {
                    return Err(ConnectError::Stopping);
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Internal(format!(
                "reading {} to its end took longer than {} ms (is the broker reachable?)",
                self.topic,
                timeout.as_millis()
            ))),
        }
    }

    /// Writes one record and waits for its acknowledgement (`acks=all`).
    pub async fn send(&self, key: Bytes, value: Option<Bytes>) -> Result<()> {
        let meta = self.send_nowait(key, value).await?.await?;
        debug!(topic = %self.topic, partition = meta.partition, offset = meta.offset, "wrote internal record");
        Ok(())
    }

    /// Writes one record without waiting.
    pub async fn send_nowait(&self, key: Bytes, value: Option<Bytes>) -> Result<spate_client::DeliveryFuture> {
        let record = ProducerRecord { key: Some(key), value, ..ProducerRecord::default() };
        Ok(self.producer.send(&self.topic, record).await?)
    }
}

impl Drop for KafkaLog {
    fn drop(&mut self) {
        self.tail.abort();
    }
}

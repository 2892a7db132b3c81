//! Helpers for the replication tests: partitions in temp dirs, batches, images.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use spate_client::protocol::compression::Compression;
use spate_client::protocol::record::{decode_records, validate_batches, BatchBuilder, BatchIter, Record};

use super::ReplicaConfig;
use crate::config::{BrokerConfig, FlushMode};
use crate::controller::types::PartitionImage;
use crate::log::LogConfig;
use crate::partition::{AppendOutcome, Partition, TopicPartition};

pub const TOPIC: &str = "orders";

pub fn open(dir: &Path, node_id: i32) -> Arc<Partition> {
    let broker = BrokerConfig { node_id, log_flush_mode: FlushMode::PageCache, ..BrokerConfig::default() };
    let tp = TopicPartition { topic: TOPIC.into(), partition: 0 };
    Arc::new(
        Partition::open(
            dir.join("orders-0"),
            tp,
            LogConfig::default(),
            1 << 20,
            &broker,
            Arc::new(crate::log_dir::LogDir::new(dir)),
            0,
        )
        .unwrap(),
    )
}

/// One batch with a record per value; `producer` = (id, epoch, base sequence) for an
/// idempotent batch.
pub fn batch(values: &[&str], producer: Option<(i64, i16, i32)>) -> Bytes {
    let mut builder = BatchBuilder::new(Compression::None);
    for (i, v) in values.iter().enumerate() {
        builder.push(&Record {
            key: None,
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: Vec::new(),
            timestamp_ms: 1_000 + i as i64,
        });
    }
    let (id, epoch, sequence) = producer.unwrap_or((-1, -1, -1));
    builder.finish(id, epoch, sequence, false).unwrap()
}

pub fn produce(partition: &Partition, values: &[&str], producer: Option<(i64, i16, i32)>) -> AppendOutcome {
    let records = batch(values, producer);
    let headers = validate_batches(&records).unwrap();
    partition.append(&records, &headers, 1_000).unwrap()
}

pub fn image(replicas: &[i32], isr: &[i32], leader: i32, leader_epoch: i32, partition_epoch: i32) -> PartitionImage {
    PartitionImage {
        replicas: replicas.to_vec(),
        isr: isr.to_vec(),
        leader,
        leader_epoch,
        partition_epoch,
        ..PartitionImage::default()
    }
}

pub fn replica_config(node_id: i32) -> ReplicaConfig {
    // No long polls: a test fetch with nothing to return answers at once.
    ReplicaConfig {
        node_id,
        flush_mode: FlushMode::PageCache,
        replica_fetch_wait_max_ms: 0,
        ..ReplicaConfig::default()
    }
}

/// Every record in the log as (offset, partition leader epoch of its batch, value).
pub fn contents(partition: &Partition) -> Vec<(i64, i32, String)> {
    let start = partition.offsets().log_start_offset;
    let bytes = partition.read_for_replica(start, usize::MAX >> 1).unwrap();
    let mut out = Vec::new();
    for (position, header) in BatchIter::new(&bytes) {
        let raw = bytes.slice(position..position + header.total_bytes());
        let mut records = Vec::new();
        decode_records(&raw, 1 << 20, &mut records).unwrap();
        for r in records {
            let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
            out.push((r.offset, header.partition_leader_epoch, value));
        }
    }
    out
}

//! Transactions (KIP-98, KIP-447): the transaction coordinator and what partitions keep of
//! transactions.
//!
//! - [`state`]: the coordinator's sans-IO state machine per transactional id.
//! - [`store`]: the `__transaction_state` record formats (Kafka's own).
//! - [`coordinator`]: the shell: ownership of `__transaction_state` partitions, durable state
//!   writes, marker writing (locally or with WriteTxnMarkers), timeouts.
//! - [`marker`]: the COMMIT/ABORT control batches.
//! - [`tracker`]: per partition, open and aborted transactions and the last stable offset.
//! - [`verify`]: KIP-890 part 1, a partition leader asking the coordinator before a
//!   transactional batch opens a transaction in its partition.

pub mod coordinator;
pub mod marker;
pub mod state;
pub mod store;
pub mod tracker;
pub mod verify;

pub use coordinator::{TransactionCoordinator, TRANSACTION_STATE_TOPIC};

use std::collections::BTreeMap;

use crate::controller::MetadataImage;

/// The `host:port` of broker `node_id` when the image has it unfenced (where markers and
/// verification requests go).
fn peer_address(image: &MetadataImage, node_id: i32) -> Option<String> {
    image.brokers.get(&node_id).filter(|b| !b.fenced).map(|b| format!("{}:{}", b.host, b.port))
}

/// Partition numbers by topic, as the transaction requests between brokers list them.
fn by_topic(partitions: &[(String, i32)]) -> BTreeMap<&str, Vec<i32>> {
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in partitions {
        topics.entry(t.as_str()).or_default().push(*p);
    }
    topics
}

#[cfg(test)]
mod tests;

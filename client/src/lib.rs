//! Spate's Kafka client, without librdkafka.
//!
//! Entry points: [`protocol`] (the sans-IO wire layer the broker shares), and the async
//! [`producer::Producer`], [`consumer::Consumer`] and [`admin::Admin`], all built on
//! [`connection::Connection`] and the [`metadata::Cluster`] cache.

pub mod admin;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod metadata;
pub mod producer;
pub mod protocol;
#[cfg(test)]
mod test_broker;

pub use admin::Admin;
pub use consumer::{
    Assignor, AutoOffsetReset, Consumer, ConsumerConfig, ConsumerGroupMetadata, ConsumerRecord, IsolationLevel,
    ListenerFuture, OffsetAndMetadata, RebalanceListener, RebalanceProtocol,
};
pub use error::{Error, ProtocolError, Result};
pub use metadata::{Cluster, TopicPartition};
pub use producer::{DeliveryFuture, Producer, ProducerConfig, ProducerRecord, RecordMetadata};
pub use protocol::compression::Compression;
pub use protocol::record::RecordHeader;

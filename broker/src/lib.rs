//! Spate's Kafka-compatible broker.
//!
//! Entry points: [`server::Server`] (bind, serve, shut down) and [`config::BrokerConfig`].
//! Inside: [`api`] maps each Kafka request to [`broker::Broker`], which owns topics of
//! [`partition::Partition`]s, each a [`log::Log`] plus idempotent-producer state; the
//! [`flusher`] thread turns appends into durable, acknowledged writes (group commit); the
//! [`group`] coordinator serves consumer groups and keeps their offsets in `__consumer_offsets`.

pub mod api;
pub mod broker;
pub mod config;
pub mod controller;
pub mod error;
pub mod flusher;
pub mod group;
pub mod log;
pub mod log_cleaner;
pub mod log_dir;
pub mod metrics;
pub mod partition;
pub mod producer_snapshot;
pub mod producer_state;
pub mod replica;
pub mod server;
pub mod topic_config;
pub mod txn;

pub use config::{BrokerConfig, FlushMode};
pub use error::BrokerError;
pub use server::Server;

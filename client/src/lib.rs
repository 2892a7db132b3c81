//! Spate's Kafka client, without librdkafka.
//!
//! Entry points: [`protocol`] (the sans-IO wire layer the broker shares), and the async
//! [`producer::Producer`], [`consumer::Consumer`] and [`admin::Admin`], all built on
//! [`connection::Connection`] and the [`metadata::Cluster`] cache.

pub mod error;
pub mod protocol;

pub use error::{Error, ProtocolError, Result};

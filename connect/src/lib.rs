//! spate-connect: a Kafka-Connect-compatible runtime.
//!
//! Entry points: [`runtime::Worker`] (one worker process: group membership with protocol type
//! `connect`, the config/offset/status topics, task threads), [`rest`] (Kafka Connect's REST
//! API), and the connector API in [`connector`] ([`connector::Connector`],
//! [`connector::SourceTask`], [`connector::SinkTask`]) with typed configs described by
//! [`config::ConfigDef`]. Records cross every boundary as [`record::ConnectRecord`] batches;
//! [`converter`] turns them into Kafka bytes and back, [`transform`] holds the SMT chain
//! (Kafka's built-ins and Rhai scripts). A connector never talks to the broker: the runtime owns
//! delivery, offsets and dead-letter routing, which is where the at-least-once guarantee lives.

pub mod config;
pub mod connector;
pub mod converter;
pub mod error;
pub mod jdbc;
pub mod record;
pub mod registry;
pub mod rest;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod transform;

pub use error::{ConnectError, Result};

//! Sink connectors.

pub mod file;
pub mod jdbc;
pub mod parquet;

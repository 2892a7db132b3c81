//! Sink connectors.

pub mod file;
pub mod parquet;

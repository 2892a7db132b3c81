//! Source connectors.

pub mod file;
pub mod jdbc;
pub mod postgres_cdc;

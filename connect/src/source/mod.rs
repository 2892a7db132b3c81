//! Source connectors.

pub mod file;
pub mod postgres_cdc;

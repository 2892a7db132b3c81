//! Source connectors.

pub mod file;
pub mod jdbc;

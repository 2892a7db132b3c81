//! Source connectors.

pub mod file;

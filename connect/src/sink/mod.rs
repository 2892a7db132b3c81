//! Sink connectors.

pub mod file;

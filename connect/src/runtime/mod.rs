//! The worker runtime.

pub mod config_state;
pub mod errors;
pub mod herder;
pub mod kafka_log;
pub mod protocol;
pub mod stores;
pub mod task;
pub mod worker;

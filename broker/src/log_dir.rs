//! The health of `log.dirs`, Kafka's log-directory failure handling.
//!
//! After an `fsync`/`fdatasync` fails the kernel may already have dropped the dirty pages it
//! could not write, and a later fsync that succeeds says nothing about them: retrying and then
//! trusting the data would acknowledge records that may not be on disk. So the first failed
//! fsync takes the whole directory offline for the life of the process, as Kafka does: every
//! partition in it refuses produce, fetch and replication with KAFKA_STORAGE_ERROR, its high
//! watermarks stop, waiting `acks=all` produces are answered KAFKA_STORAGE_ERROR, no clean-shutdown
//! checkpoint is written, and (in a cluster) the broker stops heartbeating so the controller fences
//! it and moves leadership to the other in-sync replicas. A restart recovers the directory by
//! re-reading the logs from disk (recovery validates everything past the last checkpoint).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::error;

use crate::error::BrokerError;

#[derive(Debug)]
pub struct LogDir {
    path: PathBuf,
    offline: AtomicBool,
}

impl LogDir {
    pub fn new(path: impl Into<PathBuf>) -> LogDir {
        LogDir { path: path.into(), offline: AtomicBool::new(false) }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Acquire)
    }

    /// Takes the directory offline; the first call logs it. `cause` is the failed operation and
    /// its error.
    pub fn mark_offline(&self, cause: &dyn std::fmt::Display) {
        if !self.offline.swap(true, Ordering::AcqRel) {
            error!(
                log_dir = %self.path.display(),
                cause = %cause,
                "LOG DIRECTORY OFFLINE: an fsync failed, so data the broker was about to acknowledge may not be on \
                 disk. Every partition in it now refuses produce and fetch with KAFKA_STORAGE_ERROR and nothing more \
                 is acknowledged from it; in a cluster leadership moves to other replicas. Fix the disk and restart \
                 the broker: the logs are recovered from what is on disk."
            );
        }
    }

    /// The error every request for a partition in an offline directory gets.
    pub fn offline_error(&self) -> BrokerError {
        BrokerError::LogDirOffline { dir: self.path.display().to_string() }
    }

    /// `Err` once the directory is offline.
    pub fn check_online(&self) -> Result<(), BrokerError> {
        if self.is_offline() {
            Err(self.offline_error())
        } else {
            Ok(())
        }
    }
}

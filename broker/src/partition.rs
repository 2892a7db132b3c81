//! One partition replica on this broker: its log, idempotent-producer state, high watermark and
//! the watches that wake long-polling fetches and `acks=all` produces.
//!
//! Locking: one `std::sync::Mutex` per partition guards the log and producer state; it is held
//! only for in-memory work and the single `write` of an append, never across an `.await` or an
//! fsync (the flusher syncs cloned file handles outside the lock).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use spate_client::protocol::record::BatchHeader;
use tokio::sync::watch;

use crate::config::{BrokerConfig, FlushMode};
use crate::error::{BrokerError, Result};
use crate::log::{cleaner, CleanStats, Log, LogConfig, OffsetMap};
use crate::producer_state::{ProducerStateManager, SequenceCheck};

/// Kafka's name for a topic and partition pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// How far back from the log end producer state is rebuilt at start (in offsets).
const PRODUCER_STATE_REBUILD_OFFSETS: i64 = 1_000_000;

struct PartitionState {
    log: Log,
    producers: ProducerStateManager,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub base_offset: i64,
    pub last_offset: i64,
    pub log_start_offset: i64,
    /// The batch was a retry of one already in the log; the offsets are the original ones.
    pub duplicate: bool,
}

/// Offsets of a partition as a fetch or ListOffsets reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub log_end_offset: i64,
}

pub struct Partition {
    pub tp: TopicPartition,
    dir: PathBuf,
    flush_mode: FlushMode,
    leader_epoch: i32,
    state: Mutex<PartitionState>,
    /// Consumers read below this. In `fsync` mode it is the durable end offset; in
    /// `page-cache` mode, the log end offset.
    high_watermark: watch::Sender<i64>,
    /// Offset up to which the log is fsynced.
    durable_offset: watch::Sender<i64>,
    log_start_offset: AtomicI64,
    log_end_offset: AtomicI64,
    max_message_bytes: AtomicUsize,
}

impl Partition {
    pub fn open(
        dir: PathBuf,
        tp: TopicPartition,
        log_config: LogConfig,
        max_message_bytes: usize,
        broker: &BrokerConfig,
        now_ms: i64,
    ) -> Result<Partition> {
        let log = Log::open(dir.clone(), log_config, now_ms)?;
        let mut producers =
            ProducerStateManager::new(broker.producer_id_expiration_ms, broker.max_producers_per_partition);
        // Idempotence must survive restarts: a producer retrying a batch whose acknowledgement
        // was lost in the crash must get DUPLICATE, not a second copy. Retries follow the
        // original within seconds, so the newest offsets hold every batch a retry can match;
        // scanning only them keeps start-up time independent of the log's size.
        let rebuild_from = log.log_start_offset().max(log.log_end_offset() - PRODUCER_STATE_REBUILD_OFFSETS);
        producers.rebuild(log.batch_headers_from(rebuild_from)?, now_ms);
        let log_end = log.log_end_offset();
        // Recovery verified everything up to the log end, and it is on disk now.
        let durable = log_end;
        let partition = Partition {
            tp,
            dir,
            flush_mode: broker.log_flush_mode,
            leader_epoch: 0,
            high_watermark: watch::Sender::new(log_end),
            durable_offset: watch::Sender::new(durable),
            log_start_offset: AtomicI64::new(log.log_start_offset()),
            log_end_offset: AtomicI64::new(log_end),
            max_message_bytes: AtomicUsize::new(max_message_bytes),
            state: Mutex::new(PartitionState { log, producers }),
        };
        Ok(partition)
    }

    fn lock(&self) -> MutexGuard<'_, PartitionState> {
        // A panic while holding the lock is our bug; the state it guards is still consistent
        // (appends either wrote or returned an error), so keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }

    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes.load(Ordering::Relaxed)
    }

    pub fn set_max_message_bytes(&self, value: usize) {
        self.max_message_bytes.store(value, Ordering::Relaxed);
    }

    pub fn set_log_config(&self, config: LogConfig) {
        self.lock().log.set_config(config);
    }

    /// Appends validated batches as the leader. Returns the assigned offsets, or the original
    /// ones for a duplicate from an idempotent producer.
    pub fn append(&self, records: &Bytes, batches: &[BatchHeader], now_ms: i64) -> Result<AppendOutcome> {
        let mut state = self.lock();
        if batches.iter().any(|b| b.has_producer_id()) {
            if batches.len() != 1 {
                return Err(BrokerError::InvalidRecord {
                    topic: self.tp.topic.clone(),
                    partition: self.tp.partition,
                    reason: format!("an idempotent produce carries exactly one batch, not {}", batches.len()),
                });
            }
            if let SequenceCheck::Duplicate { base_offset, last_offset } = state.producers.check(&batches[0])? {
                return Ok(AppendOutcome {
                    base_offset,
                    last_offset,
                    log_start_offset: state.log.log_start_offset(),
                    duplicate: true,
                });
            }
        }
        let info = state.log.append(records, batches, self.leader_epoch, now_ms)?;
        let mut base = info.base_offset;
        for batch in batches {
            if batch.has_producer_id() {
                state.producers.record(batch, base, now_ms);
            }
            base += batch.last_offset_delta as i64 + 1;
        }
        let log_end = state.log.log_end_offset();
        self.log_end_offset.store(log_end, Ordering::Release);
        if self.flush_mode == FlushMode::PageCache {
            self.high_watermark.send_replace(log_end);
        }
        Ok(AppendOutcome {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_start_offset: state.log.log_start_offset(),
            duplicate: false,
        })
    }

    /// Fsyncs whatever is unflushed; called by the flusher thread only.
    pub(crate) fn flush(&self) -> Result<()> {
        let target = self.lock().log.flush_target();
        let end = target.end_offset();
        target.sync()?;
        self.lock().log.mark_flushed(end);
        self.durable_offset.send_if_modified(|v| {
            let advanced = end > *v;
            *v = (*v).max(end);
            advanced
        });
        if self.flush_mode == FlushMode::Fsync {
            self.high_watermark.send_if_modified(|v| {
                let advanced = end > *v;
                *v = (*v).max(end);
                advanced
            });
        }
        Ok(())
    }

    pub fn offsets(&self) -> Offsets {
        Offsets {
            log_start_offset: self.log_start_offset.load(Ordering::Acquire),
            high_watermark: *self.high_watermark.borrow(),
            log_end_offset: self.log_end_offset.load(Ordering::Acquire),
        }
    }

    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    pub fn subscribe_high_watermark(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    pub fn subscribe_durable(&self) -> watch::Receiver<i64> {
        self.durable_offset.subscribe()
    }

    pub fn has_unflushed(&self) -> bool {
        *self.durable_offset.borrow() < self.log_end_offset.load(Ordering::Acquire)
    }

    /// Reads whole batches from `offset`, stopping below `high_watermark` — the value the caller
    /// reports alongside the data, so a response never carries records past the high watermark
    /// it states. The file read happens outside the partition lock.
    pub fn read(&self, offset: i64, max_bytes: usize, high_watermark: i64) -> Result<Bytes> {
        let slice = self.lock().log.read(offset, max_bytes, high_watermark)?;
        Ok(slice.read()?)
    }

    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>> {
        Ok(self.lock().log.offset_for_timestamp(timestamp_ms)?)
    }

    pub fn max_timestamp_offset(&self) -> Result<Option<(i64, i64)>> {
        Ok(self.lock().log.max_timestamp_offset()?)
    }

    /// Retention and producer-state expiry, run periodically.
    pub fn housekeeping(&self, now_ms: i64) -> Result<()> {
        let mut state = self.lock();
        state.log.enforce_retention(now_ms)?;
        state.producers.expire(now_ms);
        self.log_start_offset.store(state.log.log_start_offset(), Ordering::Release);
        Ok(())
    }

    /// Compacts the log when its `cleanup.policy` includes `compact` and it is due (see
    /// `log::cleaner`). The partition lock is taken only to plan and to swap each cleaned
    /// group of segments in; reading, filtering, writing and fsyncing happen without it.
    /// `cancel` stops the pass early (shutdown).
    pub fn clean(&self, map: &mut OffsetMap, now_ms: i64, cancel: &AtomicBool) -> Result<Option<CleanStats>> {
        let high_watermark = self.high_watermark();
        let Some(plan) = self.lock().log.plan_cleaning(now_ms, high_watermark) else {
            return Ok(None);
        };
        let (stats, checkpoint) =
            cleaner::clean(&plan, map, now_ms, cancel, |cleaned| self.lock().log.swap_cleaned(cleaned))?;
        self.lock().log.cleaning_done(checkpoint);
        Ok(Some(stats))
    }

    pub fn size_bytes(&self) -> u64 {
        self.lock().log.size_bytes()
    }

    /// Consumes the partition for topic deletion; `Arc`s still held by in-flight requests keep
    /// only a closed handle to files that are about to be removed.
    pub fn delete_files(&self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir).map_err(|e| BrokerError::io(&self.dir, e))
    }

    /// Flushes and writes indexes and checkpoints for a clean shutdown.
    pub fn close(&self) -> Result<()> {
        self.lock().log.close_in_place()?;
        Ok(())
    }
}

pub type PartitionRef = Arc<Partition>;

//! One partition replica on this broker: its log, idempotent-producer state, leader-epoch
//! cache, replication role (leader or follower), high watermark and the watches that wake
//! long-polling fetches and `acks=all` produces.
//!
//! A partition opened by [`Partition::open`] is the leader of epoch 0 with an ISR of this
//! broker alone (the single-node broker). The replica manager turns it into a follower or a
//! leader of a later epoch from the metadata image ([`Partition::make_leader`],
//! [`Partition::make_follower`]). As leader, the high watermark is the minimum over the ISR of
//! the leader's own offset (durable offset in fsync mode, log end offset in page-cache mode)
//! and each follower's last fetch offset; as follower, it is the leader's, capped at the local
//! log end offset.
//!
//! Locking: one `std::sync::Mutex` per partition guards the log and producer state; it is held
//! only for in-memory work and the single `write` of an append, never across an `.await` or an
//! fsync (the flusher syncs cloned file handles outside the lock).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use spate_client::protocol::record::{validate_stored_batch, BatchHeader, BATCH_HEADER_BYTES};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::config::{BrokerConfig, FlushMode};
use crate::controller::types::{ControllerRequest, PartitionImage};
use crate::error::{BrokerError, Result};
use crate::log::epoch_cache::LeaderEpochCache;
use crate::log::{cleaner, CleanStats, Log, LogConfig, LogError, OffsetMap, ReadSlice};
use crate::log_dir::LogDir;
use crate::producer_snapshot::{self, ProducerSnapshot};
use crate::producer_state::{ActiveProducer, ProducerStateManager, SequenceCheck};
use crate::replica::isr::{self, FollowerState};
use crate::txn::marker::{control_batch, marker_of};
use crate::txn::tracker::{AbortedTxn, TxnTracker};

/// Created in a partition's directory the first time it takes a transactional batch: only such
/// partitions look for transactions at open (from a producer-state snapshot and the segments'
/// `.txnindex` files, or, without a usable snapshot, by reading the whole log's headers).
pub const TRANSACTIONAL_MARKER_FILE: &str = "transactional";

/// Bound on the aborted transactions one fetch response lists per partition.
const MAX_ABORTED_PER_FETCH: usize = 10_000;

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

/// How far back from the log end producer state is rebuilt at start (in offsets) when no usable
/// snapshot exists and the log never held a transactional batch.
const PRODUCER_STATE_REBUILD_OFFSETS: i64 = 1_000_000;

/// An AlterPartition this leader sent and no image has settled yet. One at a time per
/// partition, as Kafka keeps one AlterPartition in flight per partition.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingIsr {
    new_isr: Vec<i32>,
    /// The partition epoch the proposal was based on; an image with another one settles it.
    partition_epoch: i32,
    sent_at_ms: i64,
    /// Sent and not answered yet (the broker's AlterPartition worker reports every answer,
    /// [`Partition::alter_partition_answered`]): nothing else is proposed meanwhile.
    in_flight: bool,
}

/// How the controller answered an AlterPartition, as far as the leader's ISR bookkeeping cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlterOutcome {
    /// Committed: the image that shows it settles the proposal.
    Committed,
    /// Refused after the controller checked the epochs against its latest state, so nothing
    /// was or will be committed (INELIGIBLE_REPLICA, INVALID_REQUEST).
    Refused,
    /// Timed out, or refused for a stale epoch: it may have been committed; an image will tell.
    Unknown,
}

struct LeaderState {
    /// The log end offset when this leader's epoch began.
    epoch_start_offset: i64,
    followers: BTreeMap<i32, FollowerState>,
    pending_isr: Option<PendingIsr>,
    /// Replicas that an expansion with an unknown outcome (a timeout) may have added in the
    /// current partition epoch: the high watermark keeps waiting for them (Kafka's maximal ISR)
    /// until an image with another partition epoch, or a refusal, settles it, even when a later
    /// proposal replaced that expansion.
    unsettled_additions: Vec<i32>,
    /// When the controller last refused an expansion: none is proposed again for
    /// `ALTER_PARTITION_RETRY_MS`, so a fenced follower that keeps fetching does not turn into a
    /// stream of refused requests.
    expansion_refused_at_ms: Option<i64>,
    /// Where ISR changes are proposed; `None` for the single-node broker (no controller).
    alter_tx: Option<mpsc::UnboundedSender<ControllerRequest>>,
}

enum Role {
    Leader(LeaderState),
    /// Following `leader_id` (-1: the partition has no leader now).
    Follower {
        leader_id: i32,
    },
}

struct PartitionState {
    log: Log,
    producers: ProducerStateManager,
    /// Open and aborted transactions in this log (the LSO and `read_committed` fetches).
    txns: TxnTracker,
    epochs: LeaderEpochCache,
    role: Role,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    partition_epoch: i32,
    /// Bumped by every truncation: a flush target taken before one must not be marked flushed
    /// after it (the offsets it covered may hold different, unsynced batches now).
    truncations: u64,
    /// Where the last restore of producer state and transactions started reading the log
    /// (a snapshot's offset, the log start, or the rebuild window's start).
    restored_from: i64,
    /// This partition's producer-state snapshot files.
    snapshots: producer_snapshot::Snapshots,
}

/// How long an AlterPartition may go unanswered before the leader proposes again.
const ALTER_PARTITION_RETRY_MS: i64 = 5_000;

/// How an `acks=all`-style wait for the high watermark ended ([`Partition::wait_replicated`]).
pub enum Replicated {
    Yes,
    LogDirOffline,
    LeaderChanged,
    TimedOut,
}

/// How often a replication wait checks that its leader is still the leader (Kafka's delayed
/// produce does the same on every ISR change).
const LEADERSHIP_CHECK: Duration = Duration::from_millis(100);

/// Whether a Produce's transactional batches are checked against their coordinator (KIP-890
/// part 1, `transaction.partition.verification.enable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnVerification {
    Off,
    /// On: a batch opening a transaction here needs the guard of a verification that succeeded
    /// (`None`: none was made).
    Required(Option<u64>),
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
    /// Throughput counters of the partition's topic (shared with its other partitions).
    pub(crate) metrics: crate::metrics::TopicMetrics,
    dir: PathBuf,
    flush_mode: FlushMode,
    /// This broker's `node.id`.
    local_id: i32,
    /// Mirrors of the role in `state`, for lock-free checks.
    is_leader: AtomicBool,
    leader_epoch: AtomicI32,
    state: Mutex<PartitionState>,
    /// Wakes replica fetches (which read up to the log end, not the high watermark).
    log_end_watch: watch::Sender<i64>,
    /// Consumers read below this. In `fsync` mode it is the durable end offset; in
    /// `page-cache` mode, the log end offset.
    high_watermark: watch::Sender<i64>,
    /// Offset up to which the log is fsynced.
    durable_offset: watch::Sender<i64>,
    log_start_offset: AtomicI64,
    log_end_offset: AtomicI64,
    max_message_bytes: AtomicUsize,
    /// Test hook: the next fsync fails (see [`Partition::inject_fsync_failure`]).
    fsync_fault: AtomicBool,
    /// The directory holding this replica; offline after an fsync failure (`log_dir`).
    log_dir: Arc<LogDir>,
    /// Set (under the state lock) when the topic was deleted and the directory renamed away:
    /// nothing may touch `dir` any more, which may already belong to a recreated topic.
    deleted: AtomicBool,
    /// Mirrors `txns.is_unstable()` (set under the lock): when false, the LSO is the high
    /// watermark and nobody takes the lock to learn it.
    txn_unstable: AtomicBool,
    /// The log has held a transactional batch ([`TRANSACTIONAL_MARKER_FILE`] exists).
    transactional: AtomicBool,
}

/// Restores a partition's idempotent-producer state and transactions from its files, after
/// open or a follower's truncation: the newest usable producer-state snapshot (at or below the
/// first segment whose `.txnindex` recovery could not trust), the aborted transactions of the
/// `.txnindex` files below it, then a replay of the batches after it, which also rebuilds the
/// `.txnindex` of every segment it covers. Without a snapshot, a transactional log is replayed
/// from its start (the only way to find transactions still open), any other from
/// [`PRODUCER_STATE_REBUILD_OFFSETS`] before its end (retries follow the original within
/// seconds, so the newest offsets hold every batch a retry can match).
fn restore_state(
    dir: &std::path::Path,
    snapshots: &producer_snapshot::Snapshots,
    log: &mut Log,
    producers: &mut ProducerStateManager,
    txns: &mut TxnTracker,
    transactional: bool,
    now_ms: i64,
) -> Result<i64> {
    producers.clear();
    txns.clear();
    let (log_start, log_end) = (log.log_start_offset(), log.log_end_offset());
    // From the first segment's base, not the log start: DeleteRecords can put the log start
    // inside a transaction whose first records and marker straddle it.
    let first_base = log.first_segment_base_offset();
    let snapshot_bound = if transactional { log.txn_index_known_below() } else { log_end };
    let snapshot = snapshots
        .newest_usable(dir, first_base, snapshot_bound, producer_snapshot::MAX_BYTES)
        .map_err(|e| BrokerError::io(dir, e))?;
    let from = match &snapshot {
        Some(s) => s.offset,
        None if transactional => first_base,
        None => log_start.max(log_end - PRODUCER_STATE_REBUILD_OFFSETS),
    };
    if let Some(snapshot) = snapshot {
        producers.import(snapshot.producers);
        for aborted in log.aborted_txns_below(from) {
            txns.restore_aborted(aborted);
        }
        for (producer_id, first_offset) in snapshot.ongoing {
            txns.on_data(producer_id, first_offset);
        }
    }
    log.rebuild_txn_indexes_from(from);
    let mut replayed_aborts = Vec::new();
    log.visit_batch_headers_from(from, |log, header| -> Result<()> {
        if !header.has_producer_id() {
            return Ok(());
        }
        // Every producer replayed counts as used now: batch timestamps come from client clocks,
        // and keeping a producer too long only costs memory (`max_producers` bounds it), while
        // dropping it early would let a retry append twice.
        producers.record(header, header.base_offset, now_ms);
        if !header.is_transactional() {
            return Ok(());
        }
        if header.is_control() {
            let bytes = log.read_retained(header.base_offset, header.total_bytes(), i64::MAX)?.read()?;
            if bytes.len() >= header.total_bytes() {
                if let Some((commit, coordinator_epoch)) = marker_of(header, &bytes.slice(..header.total_bytes())) {
                    producers.set_coordinator_epoch(header.producer_id, coordinator_epoch);
                    replayed_aborts.extend(txns.on_marker(header.producer_id, header.base_offset, commit));
                }
            }
        } else {
            txns.on_data(header.producer_id, header.base_offset);
        }
        Ok(())
    })?;
    for aborted in replayed_aborts {
        log.add_aborted_txn(aborted);
    }
    log.finish_txn_index_rebuild()?;
    txns.on_high_watermark(log_end);
    Ok(from)
}

impl Partition {
    pub fn open(
        dir: PathBuf,
        tp: TopicPartition,
        log_config: LogConfig,
        max_message_bytes: usize,
        broker: &BrokerConfig,
        log_dir: Arc<LogDir>,
        now_ms: i64,
    ) -> Result<Partition> {
        log_dir.check_online()?;
        let log = Log::open(dir.clone(), log_config, now_ms)?;
        let mut epochs = LeaderEpochCache::open(&dir)?;
        // Recovery may have cut the log below epochs the cache recorded.
        epochs.truncate_from_end(log.log_end_offset())?;
        let mut log = log;
        let mut producers =
            ProducerStateManager::new(broker.producer_id_expiration_ms, broker.max_producers_per_partition);
        // Idempotence must survive restarts: a producer retrying a batch whose acknowledgement
        // was lost in the crash must get DUPLICATE, not a second copy; and transactions open at
        // the crash must stay open (their LSO, their abort by the coordinator).
        let mut txns = TxnTracker::default();
        let transactional = dir.join(TRANSACTIONAL_MARKER_FILE).exists();
        // Snapshots above a log end that recovery cut describe batches that are gone; later
        // appends reaching past their offsets must not make them look usable.
        let mut snapshots = producer_snapshot::Snapshots::load(&dir).map_err(|e| BrokerError::io(&dir, e))?;
        snapshots.remove_above(&dir, log.log_end_offset()).map_err(|e| BrokerError::io(&dir, e))?;
        let restored_from =
            restore_state(&dir, &snapshots, &mut log, &mut producers, &mut txns, transactional, now_ms)?;
        snapshots.prune(&dir, log.active_base_offset()).map_err(|e| BrokerError::io(&dir, e))?;
        let log_end = log.log_end_offset();
        // Recovery verified everything up to the log end, and it is on disk now.
        let durable = log_end;
        let local_id = broker.node_id;
        let partition = Partition {
            metrics: crate::metrics::TopicMetrics::new(&tp.topic),
            tp,
            dir,
            flush_mode: broker.log_flush_mode,
            local_id,
            is_leader: AtomicBool::new(true),
            leader_epoch: AtomicI32::new(0),
            log_end_watch: watch::Sender::new(log_end),
            high_watermark: watch::Sender::new(log_end),
            durable_offset: watch::Sender::new(durable),
            log_start_offset: AtomicI64::new(log.log_start_offset()),
            log_end_offset: AtomicI64::new(log_end),
            max_message_bytes: AtomicUsize::new(max_message_bytes),
            fsync_fault: AtomicBool::new(false),
            log_dir,
            deleted: AtomicBool::new(false),
            txn_unstable: AtomicBool::new(txns.is_unstable()),
            transactional: AtomicBool::new(transactional),
            state: Mutex::new(PartitionState {
                log,
                producers,
                txns,
                epochs,
                role: Role::Leader(LeaderState {
                    epoch_start_offset: 0,
                    followers: BTreeMap::new(),
                    pending_isr: None,
                    unsettled_additions: Vec::new(),
                    expansion_refused_at_ms: None,
                    alter_tx: None,
                }),
                replicas: vec![local_id],
                isr: vec![local_id],
                partition_epoch: 0,
                truncations: 0,
                restored_from,
                snapshots,
            }),
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

    /// Appends validated batches as the leader, stamped with its leader epoch. Returns the
    /// assigned offsets, or the original ones for a duplicate from an idempotent producer.
    /// A replica that is not the leader refuses with NOT_LEADER_OR_FOLLOWER.
    pub fn append(&self, records: &Bytes, batches: &[BatchHeader], now_ms: i64) -> Result<AppendOutcome> {
        self.append_checked(records, batches, now_ms, true, TxnVerification::Off)
    }

    /// [`Partition::append`] for a client's Produce: with `verification` on, a transactional
    /// batch that would open a transaction here is refused (INVALID_TXN_STATE) unless its
    /// coordinator confirmed the partition is in the transaction (KIP-890 part 1).
    pub fn append_produced(
        &self,
        records: &Bytes,
        batches: &[BatchHeader],
        now_ms: i64,
        verification: TxnVerification,
    ) -> Result<AppendOutcome> {
        self.append_checked(records, batches, now_ms, true, verification)
    }

    /// Starts verifying `producer_id`'s transaction here (KIP-890): `Ok(None)` when it is open
    /// already, else the guard to hand to [`Partition::append_produced`] once the coordinator
    /// confirmed. A marker appended meanwhile voids the guard.
    pub fn begin_txn_verification(&self, producer_id: i64, producer_epoch: i16) -> Result<Option<u64>> {
        let state = &mut *self.lock();
        state.txns.begin_verification(producer_id, producer_epoch, crate::broker::now_ms()).map_err(|_| {
            BrokerError::NotEnoughReplicas {
                reason: format!(
                    "{} transactional producers of {}-{} are being verified at once (the limit)",
                    crate::txn::tracker::MAX_VERIFYING,
                    self.tp.topic,
                    self.tp.partition
                ),
            }
        })
    }

    /// Appends a coordinator's own batch (the group coordinator's transactional offset
    /// commits): no sequence checks, as Kafka's `AppendOrigin.Coordinator`, but its transaction
    /// is tracked like any other.
    pub fn append_from_coordinator(
        &self,
        records: &Bytes,
        batches: &[BatchHeader],
        now_ms: i64,
    ) -> Result<AppendOutcome> {
        self.append_checked(records, batches, now_ms, false, TxnVerification::Off)
    }

    fn append_checked(
        &self,
        records: &Bytes,
        batches: &[BatchHeader],
        now_ms: i64,
        check_sequences: bool,
        verification: TxnVerification,
    ) -> Result<AppendOutcome> {
        let mut state = self.lock();
        self.check_usable()?;
        if !matches!(state.role, Role::Leader(_)) {
            return Err(self.not_leader());
        }
        if let Some(b) = batches.iter().find(|b| b.is_transactional() && !b.has_producer_id()) {
            return Err(BrokerError::InvalidRecord {
                topic: self.tp.topic.clone(),
                partition: self.tp.partition,
                reason: format!("transactional batch at position {} has no producer id", b.base_offset),
            });
        }
        if check_sequences && batches.iter().any(|b| b.has_producer_id()) {
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
        if let TxnVerification::Required(guard) = verification {
            if let Some(b) = batches
                .iter()
                .find(|b| b.is_transactional() && !state.txns.may_append(b.producer_id, b.producer_epoch, guard))
            {
                return Err(BrokerError::InvalidTxnState {
                    topic: self.tp.topic.clone(),
                    partition: self.tp.partition,
                    reason: format!(
                        "producer {} (epoch {}) has no ongoing transaction containing this partition at its \
                         coordinator (AddPartitionsToTxn missing, or the transaction ended meanwhile)",
                        b.producer_id, b.producer_epoch
                    ),
                });
            }
        }
        let leader_epoch = self.leader_epoch.load(Ordering::Acquire);
        if state.epochs.latest_epoch().is_none_or(|latest| latest < leader_epoch) {
            let start = state.log.log_end_offset();
            state.epochs.assign(leader_epoch, start)?;
        }
        if batches.iter().any(|b| b.is_transactional()) {
            self.note_transactional()?;
        }
        let info = state.log.append(records, batches, leader_epoch, now_ms)?;
        self.snapshot_if_rolled(&mut state);
        let mut base = info.base_offset;
        for batch in batches {
            if batch.has_producer_id() {
                state.producers.record(batch, base, now_ms);
                if batch.is_transactional() {
                    state.txns.on_data(batch.producer_id, base);
                }
            }
            base += batch.last_offset_delta as i64 + 1;
        }
        self.txn_unstable.store(state.txns.is_unstable(), Ordering::Release);
        let log_end = state.log.log_end_offset();
        self.log_end_offset.store(log_end, Ordering::Release);
        self.log_end_watch.send_replace(log_end);
        self.maybe_advance_high_watermark(&state);
        Ok(AppendOutcome {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_start_offset: state.log.log_start_offset(),
            duplicate: false,
        })
    }

    /// Creates [`TRANSACTIONAL_MARKER_FILE`] (and syncs the directory) before the first
    /// transactional batch is written, so a restart knows to rebuild this log's transactions.
    fn note_transactional(&self) -> Result<()> {
        if self.transactional.load(Ordering::Acquire) {
            return Ok(());
        }
        let path = self.dir.join(TRANSACTIONAL_MARKER_FILE);
        std::fs::File::create(&path).map_err(|e| BrokerError::io(&path, e))?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| BrokerError::io(&self.dir, e))?;
        self.transactional.store(true, Ordering::Release);
        Ok(())
    }

    /// Appends the COMMIT or ABORT marker of `producer_id`'s transaction as the leader (the
    /// transaction coordinator's WriteTxnMarkers). A marker from an epoch older than the
    /// producer's current one is refused (INVALID_PRODUCER_EPOCH).
    pub fn append_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendOutcome> {
        let batch = control_batch(producer_id, producer_epoch, commit, coordinator_epoch, now_ms);
        let headers =
            spate_client::protocol::record::validate_batches(&batch).map_err(|e| BrokerError::CorruptMessage {
                topic: self.tp.topic.clone(),
                partition: self.tp.partition,
                reason: e.to_string(),
            })?;
        let state = &mut *self.lock();
        self.check_usable()?;
        if !matches!(state.role, Role::Leader(_)) {
            return Err(self.not_leader());
        }
        state.producers.check_marker(producer_id, producer_epoch)?;
        self.note_transactional()?;
        let leader_epoch = self.leader_epoch.load(Ordering::Acquire);
        if state.epochs.latest_epoch().is_none_or(|latest| latest < leader_epoch) {
            let start = state.log.log_end_offset();
            state.epochs.assign(leader_epoch, start)?;
        }
        let info = state.log.append(&batch, &headers, leader_epoch, now_ms)?;
        self.snapshot_if_rolled(state);
        state.producers.record(&headers[0], info.base_offset, now_ms);
        state.producers.set_coordinator_epoch(producer_id, coordinator_epoch);
        if let Some(aborted) = state.txns.on_marker(producer_id, info.base_offset, commit) {
            state.log.add_aborted_txn(aborted);
        }
        self.txn_unstable.store(state.txns.is_unstable(), Ordering::Release);
        let log_end = state.log.log_end_offset();
        self.log_end_offset.store(log_end, Ordering::Release);
        self.log_end_watch.send_replace(log_end);
        self.maybe_advance_high_watermark(state);
        Ok(AppendOutcome {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_start_offset: state.log.log_start_offset(),
            duplicate: false,
        })
    }

    /// The last stable offset: `read_committed` consumers read below it (KIP-98).
    pub fn last_stable_offset(&self) -> i64 {
        let high_watermark = self.high_watermark();
        if !self.txn_unstable.load(Ordering::Acquire) {
            return high_watermark;
        }
        let state = &mut *self.lock();
        // Read again under the lock: the high watermark only grows, and markers below it are
        // settled for good.
        let high_watermark = self.high_watermark();
        state.txns.on_high_watermark(high_watermark);
        self.txn_unstable.store(state.txns.is_unstable(), Ordering::Release);
        state.txns.last_stable_offset(high_watermark)
    }

    /// Aborted transactions overlapping `[from, to)` (a `read_committed` fetch's answer).
    pub fn aborted_transactions(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        if !self.transactional.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.lock().txns.aborted_between(from, to, MAX_ABORTED_PER_FETCH)
    }

    /// The producers with state in this partition and their open transactions
    /// (DescribeProducers; answered by the leader).
    pub fn describe_producers(&self) -> Result<Vec<ActiveProducer>> {
        let state = &*self.lock();
        self.check_usable()?;
        if !matches!(state.role, Role::Leader(_)) {
            return Err(self.not_leader());
        }
        Ok(state.producers.describe(|producer_id| state.txns.ongoing_start(producer_id)))
    }

    /// Where the last restore of producer state and transactions (open, truncation) started
    /// reading the log (tests).
    pub fn restored_from(&self) -> i64 {
        self.lock().restored_from
    }

    /// Whether `producer_id` has a transaction open in this log (tests, DescribeProducers).
    pub fn has_ongoing_transaction(&self, producer_id: i64) -> bool {
        self.lock().txns.is_ongoing(producer_id)
    }

    /// Fsyncs whatever is unflushed; called by the flusher thread only (and benchmarks).
    /// A failed fsync takes the log directory offline (see `log_dir`): it is never retried.
    pub fn flush(&self) -> Result<()> {
        let (target, truncations) = {
            let state = self.lock();
            if self.deleted.load(Ordering::Acquire) {
                return Ok(());
            }
            self.log_dir.check_online()?;
            (state.log.flush_target(), state.truncations)
        };
        let end = target.end_offset();
        let synced = if self.fsync_fault.swap(false, Ordering::AcqRel) {
            Err(BrokerError::io(&self.dir, std::io::Error::other("injected fsync failure")))
        } else {
            target.sync().map_err(BrokerError::from)
        };
        if let Err(err) = synced {
            self.log_dir.mark_offline(&format_args!("fsync of {} failed: {err}", self.tp));
            return Err(err);
        }
        let state = &mut *self.lock();
        if self.log_dir.is_offline() {
            // Another partition's fsync failed meanwhile: nothing more is acknowledged.
            return Err(self.log_dir.offline_error());
        }
        if state.truncations != truncations {
            // A follower truncation raced the sync: what it covered may be gone, and what is
            // there now was appended (and marked dirty) after it; the next flush covers it.
            return Ok(());
        }
        state.log.mark_flushed(end);
        self.durable_offset.send_if_modified(|v| {
            let advanced = end > *v;
            *v = (*v).max(end);
            advanced
        });
        self.maybe_advance_high_watermark(state);
        Ok(())
    }

    /// Fault injection for tests: the next fsync of this partition fails as a failing disk's
    /// would (no root or special file system needed).
    #[doc(hidden)]
    pub fn inject_fsync_failure(&self) {
        self.fsync_fault.store(true, Ordering::Release);
    }

    /// Refuses work on a replica whose log directory is offline, or whose topic was deleted.
    fn check_usable(&self) -> Result<()> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(BrokerError::UnknownPartition { topic: self.tp.topic.clone(), partition: self.tp.partition });
        }
        self.log_dir.check_online()
    }

    /// Whether the replica's log directory went offline (its requests get KAFKA_STORAGE_ERROR).
    pub fn is_log_dir_offline(&self) -> bool {
        self.log_dir.is_offline()
    }

    fn not_leader(&self) -> BrokerError {
        BrokerError::NotLeaderOrFollower { topic: self.tp.topic.clone(), partition: self.tp.partition }
    }

    /// This broker's own offset for the high watermark: what it has durably in fsync mode,
    /// what it has at all in page-cache mode.
    fn leader_offset(&self, state: &PartitionState) -> i64 {
        match self.flush_mode {
            FlushMode::Fsync => (*self.durable_offset.borrow()).min(state.log.log_end_offset()),
            FlushMode::PageCache => state.log.log_end_offset(),
        }
    }

    /// The ISR the high watermark waits for: the current one plus any replica a pending
    /// expansion adds (Kafka's "maximal ISR": waiting for more replicas is always safe; a
    /// shrink counts only once the image shows it).
    fn maximal_isr(state: &PartitionState) -> Vec<i32> {
        let mut isr = state.isr.clone();
        if let Role::Leader(leader) = &state.role {
            let pending = leader.pending_isr.iter().flat_map(|p| p.new_isr.iter());
            for id in pending.chain(&leader.unsettled_additions) {
                if !isr.contains(id) {
                    isr.push(*id);
                }
            }
        }
        isr
    }

    /// Recomputes a leader's high watermark; returns whether it advanced.
    fn maybe_advance_high_watermark(&self, state: &PartitionState) -> bool {
        let Role::Leader(leader) = &state.role else {
            return false;
        };
        if self.log_dir.is_offline() {
            // Followers may still report offsets, but this leader acknowledges nothing more.
            return false;
        }
        let isr = Self::maximal_isr(state);
        let current = *self.high_watermark.borrow();
        let candidate = isr::high_watermark(current, self.leader_offset(state), self.local_id, &isr, &leader.followers);
        self.high_watermark.send_if_modified(|v| {
            let advanced = candidate > *v;
            *v = (*v).max(candidate);
            advanced
        })
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

    /// Wakes on every change of the log end offset (replica fetches long-poll on it).
    pub fn subscribe_log_end(&self) -> watch::Receiver<i64> {
        self.log_end_watch.subscribe()
    }

    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::Acquire)
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.load(Ordering::Acquire)
    }

    pub fn isr(&self) -> Vec<i32> {
        self.lock().isr.clone()
    }

    /// Size of the ISR, without copying it (the acks=all checks).
    pub fn isr_len(&self) -> usize {
        self.lock().isr.len()
    }

    /// Waits until the high watermark (`high_watermark`, subscribed before the append so no
    /// advance is missed) reaches `needed`, this replica stops leading in `leader_epoch`, its log
    /// directory goes offline, or `deadline`. Used by `acks=all` produces and the group
    /// coordinator's commits alike.
    pub async fn wait_replicated(
        &self,
        mut high_watermark: watch::Receiver<i64>,
        needed: i64,
        leader_epoch: i32,
        deadline: tokio::time::Instant,
    ) -> Replicated {
        loop {
            let reached = *high_watermark.borrow_and_update() >= needed;
            // Leadership is checked after the high watermark is read: once this replica follows,
            // its high watermark comes from the new leader and may pass `needed` over other data.
            if !self.is_leader() || self.leader_epoch() != leader_epoch {
                return Replicated::LeaderChanged;
            }
            if reached {
                return Replicated::Yes;
            }
            if self.is_log_dir_offline() {
                return Replicated::LogDirOffline;
            }
            let wake = (tokio::time::Instant::now() + LEADERSHIP_CHECK).min(deadline);
            match tokio::time::timeout_at(wake, high_watermark.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Replicated::LeaderChanged,
                Err(_) if tokio::time::Instant::now() >= deadline => return Replicated::TimedOut,
                Err(_) => {}
            }
        }
    }

    /// Size of the ISR the high watermark waits for (the ISR plus a pending expansion), which
    /// is what an `acks=all` produce counts once the high watermark passes it (Kafka's
    /// `checkEnoughReplicasReachOffset`).
    pub fn maximal_isr_len(&self) -> usize {
        Self::maximal_isr(&self.lock()).len()
    }

    pub fn partition_epoch(&self) -> i32 {
        self.lock().partition_epoch
    }

    /// The leader this replica follows (itself when leader; -1 when none is known).
    pub fn leader_id(&self) -> i32 {
        match self.lock().role {
            Role::Leader(_) => self.local_id,
            Role::Follower { leader_id } => leader_id,
        }
    }

    /// The leader epoch of the latest batch or leadership this log knows of, if any.
    pub fn latest_cached_epoch(&self) -> Option<i32> {
        self.lock().epochs.latest_epoch()
    }

    /// Kafka's `endOffsetForEpoch` over this log's leader-epoch cache (see
    /// [`LeaderEpochCache::end_offset_for_epoch`]).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let state = self.lock();
        state.epochs.end_offset_for_epoch(epoch, state.log.log_end_offset())
    }

    /// Checks a request's `current_leader_epoch` (-1: unchecked) against this replica, which
    /// must be the leader: older is FENCED_LEADER_EPOCH, newer UNKNOWN_LEADER_EPOCH (this
    /// broker has not seen the image that made it yet). The epoch is checked first, as Kafka
    /// does: a client that learned of a leadership change before this broker applied it gets
    /// UNKNOWN_LEADER_EPOCH (wait and retry here), not NOT_LEADER_OR_FOLLOWER (go elsewhere).
    pub fn check_leader(&self, current_leader_epoch: i32) -> Result<()> {
        self.check_usable()?;
        self.check_epoch(current_leader_epoch)?;
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        Ok(())
    }

    fn check_epoch(&self, current_leader_epoch: i32) -> Result<()> {
        let current_epoch = self.leader_epoch();
        if current_leader_epoch < 0 || current_leader_epoch == current_epoch {
            return Ok(());
        }
        // Names are cloned only for a refusal: this check runs for every partition of every fetch.
        let (topic, partition) = (self.tp.topic.clone(), self.tp.partition);
        if current_leader_epoch < current_epoch {
            Err(BrokerError::FencedLeaderEpoch { topic, partition, request_epoch: current_leader_epoch, current_epoch })
        } else {
            Err(BrokerError::UnknownLeaderEpoch {
                topic,
                partition,
                request_epoch: current_leader_epoch,
                current_epoch,
            })
        }
    }

    /// OffsetForLeaderEpoch on the leader: the end offset of `leader_epoch` in this log.
    pub fn offset_for_leader_epoch(&self, current_leader_epoch: i32, leader_epoch: i32) -> Result<(i32, i64)> {
        self.check_leader(current_leader_epoch)?;
        Ok(self.end_offset_for_epoch(leader_epoch))
    }

    /// Reads for a follower: whole batches from `offset` up to the log end offset.
    pub fn read_for_replica(&self, offset: i64, max_bytes: usize) -> Result<Bytes> {
        self.read(offset, max_bytes, i64::MAX)
    }

    /// Becomes (or stays) the leader described by `image`. A new leader epoch starts at the
    /// log end offset (recorded in the leader-epoch cache) with fresh follower state; the same
    /// epoch only takes the new replicas/ISR/partition epoch. ISR changes are proposed through
    /// `alter_tx`. Returns whether a new leader epoch began.
    pub fn make_leader(
        &self,
        image: &PartitionImage,
        alter_tx: Option<mpsc::UnboundedSender<ControllerRequest>>,
        now_ms: i64,
    ) -> Result<bool> {
        let state = &mut *self.lock();
        let same_epoch = matches!(state.role, Role::Leader(_)) && self.leader_epoch() == image.leader_epoch;
        if !same_epoch {
            let start = state.log.log_end_offset();
            state.epochs.assign(image.leader_epoch, start)?;
            let followers = image
                .replicas
                .iter()
                .filter(|&&id| id != self.local_id)
                .map(|&id| (id, FollowerState::new(image.isr.contains(&id), now_ms)))
                .collect();
            state.role = Role::Leader(LeaderState {
                epoch_start_offset: start,
                followers,
                pending_isr: None,
                unsettled_additions: Vec::new(),
                expansion_refused_at_ms: None,
                alter_tx: alter_tx.clone(),
            });
            self.leader_epoch.store(image.leader_epoch, Ordering::Release);
            self.is_leader.store(true, Ordering::Release);
        }
        if let Role::Leader(leader) = &mut state.role {
            for &id in image.replicas.iter().filter(|&&id| id != self.local_id) {
                leader.followers.entry(id).or_insert_with(|| FollowerState::new(image.isr.contains(&id), now_ms));
            }
            leader.followers.retain(|id, _| image.replicas.contains(id));
            if leader.pending_isr.as_ref().is_some_and(|p| p.partition_epoch != image.partition_epoch) {
                leader.pending_isr = None;
            }
            if state.partition_epoch != image.partition_epoch {
                // Every proposal sent so far named an older epoch: it is in this image or will
                // be refused as stale.
                leader.unsettled_additions.clear();
            }
            if alter_tx.is_some() {
                leader.alter_tx = alter_tx;
            }
        }
        state.replicas = image.replicas.clone();
        state.isr = image.isr.clone();
        state.partition_epoch = image.partition_epoch;
        self.maybe_advance_high_watermark(state);
        Ok(!same_epoch)
    }

    /// Becomes (or stays) a follower of `image.leader` in `image.leader_epoch`. Returns whether
    /// the leader or its epoch changed, i.e. whether the fetcher must find the divergence
    /// point (OffsetForLeaderEpoch) before fetching again.
    pub fn make_follower(&self, image: &PartitionImage) -> bool {
        let state = &mut *self.lock();
        let changed = match state.role {
            Role::Leader(_) => true,
            Role::Follower { leader_id } => leader_id != image.leader || self.leader_epoch() != image.leader_epoch,
        };
        state.role = Role::Follower { leader_id: image.leader };
        state.replicas = image.replicas.clone();
        state.isr = image.isr.clone();
        state.partition_epoch = image.partition_epoch;
        self.leader_epoch.store(image.leader_epoch, Ordering::Release);
        self.is_leader.store(false, Ordering::Release);
        changed
    }

    /// A leader's bookkeeping of a follower's fetch (Fetch with `replica_id` >= 0): its log
    /// end offset is `fetch_offset`. May advance the high watermark (waking `acks=all`
    /// produces) and propose adding the follower to the ISR. Returns false on a non-leader or
    /// for a broker that is not a follower replica of it (Kafka refuses that fetch).
    /// `log_start_offset` is the one the follower's fetch reported (-1 when it did not).
    pub fn record_follower_fetch(
        &self,
        replica_id: i32,
        fetch_offset: i64,
        log_start_offset: i64,
        now_ms: i64,
    ) -> bool {
        let state = &mut *self.lock();
        let log_end = state.log.log_end_offset();
        let Role::Leader(leader) = &mut state.role else {
            return false;
        };
        let Some(follower) = leader.followers.get_mut(&replica_id) else {
            return false;
        };
        if fetch_offset > log_end {
            // Past our log end: a divergent follower; its fetch fails out of range.
            return true;
        }
        follower.record_fetch(fetch_offset, log_end, now_ms);
        follower.log_start_offset = log_start_offset;
        self.maybe_advance_high_watermark(state);
        let high_watermark = self.high_watermark();
        if let Some(request) = self.expansion_proposal(state, replica_id, high_watermark, now_ms) {
            self.propose(state, request, now_ms);
        }
        true
    }

    fn expansion_proposal(
        &self,
        state: &PartitionState,
        replica_id: i32,
        high_watermark: i64,
        now_ms: i64,
    ) -> Option<Vec<i32>> {
        let Role::Leader(leader) = &state.role else {
            return None;
        };
        if state.isr.contains(&replica_id) || !Self::proposal_allowed(leader, now_ms) {
            return None;
        }
        if leader.expansion_refused_at_ms.is_some_and(|t| now_ms.saturating_sub(t) <= ALTER_PARTITION_RETRY_MS) {
            return None;
        }
        let follower = leader.followers.get(&replica_id)?;
        if !isr::can_join_isr(follower, high_watermark, leader.epoch_start_offset) {
            return None;
        }
        let mut new_isr = state.isr.clone();
        new_isr.push(replica_id);
        Some(new_isr)
    }

    /// Nothing in flight, and an unanswered-for-long (timed out) proposal may be replaced.
    fn proposal_allowed(leader: &LeaderState, now_ms: i64) -> bool {
        leader.alter_tx.is_some()
            && leader
                .pending_isr
                .as_ref()
                .is_none_or(|p| !p.in_flight && now_ms.saturating_sub(p.sent_at_ms) > ALTER_PARTITION_RETRY_MS)
    }

    fn propose(&self, state: &mut PartitionState, new_isr: Vec<i32>, now_ms: i64) {
        let partition_epoch = state.partition_epoch;
        let leader_epoch = self.leader_epoch();
        let Role::Leader(leader) = &mut state.role else {
            return;
        };
        let Some(tx) = &leader.alter_tx else {
            return;
        };
        tracing::info!(partition = %self.tp, isr = ?state.isr, ?new_isr, "proposing an ISR change");
        crate::metrics::isr_change(new_isr.len() < state.isr.len());
        let request = ControllerRequest::AlterPartition {
            broker_id: self.local_id,
            topic: self.tp.topic.clone(),
            partition: self.tp.partition,
            leader_epoch,
            partition_epoch,
            new_isr: new_isr.clone(),
        };
        if tx.send(request).is_ok() {
            leader.pending_isr = Some(PendingIsr { new_isr, partition_epoch, sent_at_ms: now_ms, in_flight: true });
        }
        // A pending expansion widens the ISR the high watermark waits for; never narrows it.
        self.maybe_advance_high_watermark(state);
    }

    /// Whether `new_isr` (based on `partition_epoch`) is still this leader's pending proposal:
    /// the AlterPartition worker skips requests that an image or a newer proposal superseded
    /// while they waited in its queue.
    pub fn alter_partition_wanted(&self, partition_epoch: i32, new_isr: &[i32]) -> bool {
        let state = self.lock();
        let Role::Leader(leader) = &state.role else {
            return false;
        };
        leader.pending_isr.as_ref().is_some_and(|p| p.partition_epoch == partition_epoch && p.new_isr == new_isr)
    }

    /// The AlterPartition worker's report of how the controller answered `new_isr` (based on
    /// `partition_epoch`). A refusal drops the pending expansion: without that, an `acks=all`
    /// produce would wait for a follower that was fenced (a controlled shutdown racing the
    /// expansion) until the next leader change. Otherwise the proposal stays pending, no longer
    /// in flight: the image settles it, or it is retried after `ALTER_PARTITION_RETRY_MS`; the
    /// replicas an unknown-outcome expansion adds stay in the maximal ISR until settled.
    pub fn alter_partition_answered(&self, partition_epoch: i32, new_isr: &[i32], outcome: AlterOutcome, now_ms: i64) {
        let state = &mut *self.lock();
        let PartitionState { isr, role, .. } = &mut *state;
        let Role::Leader(leader) = role else {
            return;
        };
        let Some(pending) = leader.pending_isr.as_mut() else {
            return;
        };
        if pending.partition_epoch != partition_epoch || pending.new_isr != new_isr {
            return;
        }
        pending.in_flight = false;
        match outcome {
            AlterOutcome::Committed => {}
            AlterOutcome::Unknown => {
                for id in new_isr.iter().filter(|id| !isr.contains(id)) {
                    if !leader.unsettled_additions.contains(id) {
                        leader.unsettled_additions.push(*id);
                    }
                }
            }
            AlterOutcome::Refused => {
                // Decided on the controller's latest state in this same partition epoch, after
                // every earlier copy had either committed (the epoch would differ) or missed its
                // deadline: none of them can add a replica any more.
                tracing::info!(partition = %self.tp, ?new_isr, "ISR change refused by the controller; dropped");
                if new_isr.len() > isr.len() {
                    leader.expansion_refused_at_ms = Some(now_ms);
                }
                leader.pending_isr = None;
                leader.unsettled_additions.clear();
                self.maybe_advance_high_watermark(state);
            }
        }
    }

    /// Periodic ISR check on a leader (the replica manager's tick): proposes dropping followers
    /// that lagged longer than `replica_lag_time_max_ms`, and retries an unanswered proposal.
    /// Returns whether a proposal went out.
    pub fn maybe_shrink_isr(&self, now_ms: i64, replica_lag_time_max_ms: i64) -> bool {
        let state = &mut *self.lock();
        let log_end = state.log.log_end_offset();
        let Role::Leader(leader) = &state.role else {
            return false;
        };
        if !Self::proposal_allowed(leader, now_ms) {
            return false;
        }
        let out = isr::out_of_sync_replicas(
            &state.isr,
            self.local_id,
            &leader.followers,
            log_end,
            now_ms,
            replica_lag_time_max_ms,
        );
        if out.is_empty() {
            let Some(pending) = leader.pending_isr.as_ref() else {
                return false;
            };
            if pending.new_isr.iter().any(|id| !state.isr.contains(id)) {
                // An expansion that timed out is sent again, so that it is settled even when the
                // follower it adds never fetches again (it stopped meanwhile).
                let new_isr = pending.new_isr.clone();
                self.propose(state, new_isr, now_ms);
                return true;
            }
            // A shrink that timed out while its followers caught up again: forget it (a shrink
            // never narrowed what the high watermark waits for; if it did commit, the followers
            // rejoin as usual).
            if let Role::Leader(leader) = &mut state.role {
                leader.pending_isr = None;
            }
            return false;
        }
        let new_isr: Vec<i32> = state.isr.iter().copied().filter(|id| !out.contains(id)).collect();
        tracing::warn!(partition = %self.tp, lagging = ?out, "followers fell out of sync");
        self.propose(state, new_isr, now_ms);
        true
    }

    /// Appends batches fetched from the leader, keeping their offsets and partition leader
    /// epochs (learned into the leader-epoch cache). `records` is a fetch response's records
    /// field: every whole batch is CRC-checked, a trailing partial batch is ignored. Refused
    /// unless this replica follows in `leader_epoch`. Returns `None` when there was no whole
    /// batch.
    pub fn append_as_follower(&self, records: &Bytes, leader_epoch: i32, now_ms: i64) -> Result<Option<AppendOutcome>> {
        let (headers, whole_bytes) = self.validate_fetched(records)?;
        if headers.is_empty() {
            return Ok(None);
        }
        let state = &mut *self.lock();
        self.check_usable()?;
        if !matches!(state.role, Role::Follower { .. }) {
            return Err(self.not_leader());
        }
        self.check_epoch(leader_epoch)?;
        if headers.iter().any(|h| h.is_transactional()) {
            self.note_transactional()?;
        }
        let info = state.log.append_as_follower(&records[..whole_bytes], &headers, now_ms)?;
        self.snapshot_if_rolled(state);
        let mut position = 0;
        for header in &headers {
            if state.epochs.latest_epoch().is_none_or(|latest| header.partition_leader_epoch > latest) {
                state.epochs.assign(header.partition_leader_epoch, header.base_offset)?;
            }
            if header.has_producer_id() {
                state.producers.record(header, header.base_offset, now_ms);
                if header.is_transactional() {
                    if header.is_control() {
                        let batch = records.slice(position..position + header.total_bytes());
                        if let Some((commit, coordinator_epoch)) = marker_of(header, &batch) {
                            state.producers.set_coordinator_epoch(header.producer_id, coordinator_epoch);
                            if let Some(aborted) = state.txns.on_marker(header.producer_id, header.base_offset, commit)
                            {
                                state.log.add_aborted_txn(aborted);
                            }
                        }
                    } else {
                        state.txns.on_data(header.producer_id, header.base_offset);
                    }
                }
            }
            position += header.total_bytes();
        }
        self.txn_unstable.store(state.txns.is_unstable(), Ordering::Release);
        let log_end = state.log.log_end_offset();
        self.log_end_offset.store(log_end, Ordering::Release);
        self.log_end_watch.send_replace(log_end);
        Ok(Some(AppendOutcome {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_start_offset: state.log.log_start_offset(),
            duplicate: false,
        }))
    }

    /// Headers of the whole batches at the start of `records` and the bytes they take.
    fn validate_fetched(&self, records: &[u8]) -> Result<(Vec<BatchHeader>, usize)> {
        let corrupt = |e: spate_client::ProtocolError| BrokerError::CorruptMessage {
            topic: self.tp.topic.clone(),
            partition: self.tp.partition,
            reason: format!("fetched from the leader: {e}"),
        };
        let mut headers = Vec::new();
        let mut position = 0;
        while records.len() - position >= BATCH_HEADER_BYTES {
            let rest = &records[position..];
            let header = BatchHeader::parse(rest).map_err(corrupt)?;
            if header.batch_length >= 0 && header.total_bytes() > rest.len() {
                break; // partial batch at the end of a size-limited response
            }
            let header = validate_stored_batch(rest, position).map_err(corrupt)?;
            position += header.total_bytes();
            headers.push(header);
        }
        Ok((headers, position))
    }

    /// A follower takes the leader's high watermark, kept within its own log (Kafka's
    /// `updateHighWatermark`: a leader's answer cannot move it below the log start or past the
    /// log end).
    pub fn update_follower_high_watermark(&self, leader_high_watermark: i64) {
        let log_end = self.log_end_offset.load(Ordering::Acquire);
        let log_start = self.log_start_offset.load(Ordering::Acquire);
        let value = leader_high_watermark.min(log_end).max(log_start);
        self.high_watermark.send_if_modified(|v| {
            let changed = *v != value;
            *v = value;
            changed
        });
    }

    /// Truncates a follower's log to `offset` (KIP-101/279: the suffix diverging from the
    /// leader), with its leader-epoch cache; producer state is rebuilt from what remains, so
    /// idempotent dedup forgets truncated batches; the high watermark and durable offset are
    /// lowered to the new log end. Leaders never truncate.
    pub fn truncate_to(&self, offset: i64, now_ms: i64) -> Result<()> {
        self.check_truncation_offset(offset)?;
        let state = &mut *self.lock();
        self.check_usable()?;
        if matches!(state.role, Role::Leader(_)) {
            return Err(self.not_leader());
        }
        if offset >= state.log.log_end_offset() {
            return Ok(());
        }
        tracing::info!(partition = %self.tp, from = state.log.log_end_offset(), to = offset, "truncating follower log");
        // Snapshots above the cut describe a log that is going away: deleted durably first, so
        // they cannot come back after a crash to describe its replacement.
        state.snapshots.remove_above(&self.dir, offset).map_err(|e| BrokerError::io(&self.dir, e))?;
        state.log.truncate_to(offset)?;
        self.after_truncation(state, now_ms)
    }

    /// Empties a follower's log and restarts it at `offset` (the leader's log start moved past
    /// the follower's fetch offset).
    pub fn truncate_fully(&self, offset: i64, now_ms: i64) -> Result<()> {
        self.check_truncation_offset(offset)?;
        let state = &mut *self.lock();
        self.check_usable()?;
        if matches!(state.role, Role::Leader(_)) {
            return Err(self.not_leader());
        }
        tracing::info!(partition = %self.tp, to = offset, "follower restarts its log at the leader's log start");
        state.snapshots.remove_above(&self.dir, -1).map_err(|e| BrokerError::io(&self.dir, e))?;
        state.log.truncate_fully(offset)?;
        state.epochs.clear()?;
        self.after_truncation(state, now_ms)
    }

    /// Truncation offsets come from the leader's answers; a negative one is not an offset and
    /// must not empty the log.
    fn check_truncation_offset(&self, offset: i64) -> Result<()> {
        if offset < 0 {
            return Err(BrokerError::InvalidRecord {
                topic: self.tp.topic.clone(),
                partition: self.tp.partition,
                reason: format!("the leader named offset {offset} to truncate to"),
            });
        }
        Ok(())
    }

    fn after_truncation(&self, state: &mut PartitionState, now_ms: i64) -> Result<()> {
        state.truncations += 1;
        let log_end = state.log.log_end_offset();
        let log_start = state.log.log_start_offset();
        state.epochs.truncate_from_end(log_end)?;
        let transactional = self.transactional.load(Ordering::Acquire);
        match restore_state(
            &self.dir,
            &state.snapshots,
            &mut state.log,
            &mut state.producers,
            &mut state.txns,
            transactional,
            now_ms,
        ) {
            Ok(from) => state.restored_from = from,
            Err(error) => {
                // Reading its own log failed half-way: the producer and transaction state is
                // partial, and a snapshot or `.txnindex` written from it would outlive a restart.
                // A storage failure, as a failed fsync is (the restart rebuilds from disk).
                self.log_dir.mark_offline(&error);
                return Err(error);
            }
        }
        self.txn_unstable.store(state.txns.is_unstable(), Ordering::Release);
        self.log_start_offset.store(log_start, Ordering::Release);
        self.log_end_offset.store(log_end, Ordering::Release);
        self.log_end_watch.send_replace(log_end);
        for watch in [&self.durable_offset, &self.high_watermark] {
            watch.send_if_modified(|v| {
                let clamped = (*v).min(log_end).max(log_start);
                let changed = clamped != *v;
                *v = clamped;
                changed
            });
        }
        Ok(())
    }

    /// Whether an idempotent producer's batch is already in the log (test and debug aid).
    #[cfg(test)]
    pub(crate) fn is_duplicate(&self, batch: &BatchHeader) -> bool {
        matches!(self.lock().producers.check(batch), Ok(SequenceCheck::Duplicate { .. }))
    }

    pub fn has_unflushed(&self) -> bool {
        *self.durable_offset.borrow() < self.log_end_offset.load(Ordering::Acquire)
    }

    /// Reads whole batches from `offset`, stopping below `high_watermark` — the value the caller
    /// reports alongside the data, so a response never carries records past the high watermark
    /// it states. The file read happens outside the partition lock.
    pub fn read(&self, offset: i64, max_bytes: usize, high_watermark: i64) -> Result<Bytes> {
        Ok(self.read_slice(offset, max_bytes, high_watermark)?.read()?)
    }

    /// Like [`Partition::read`], but only locates the batches: the caller reads them (or
    /// sends them straight from the file) later. Only for data below the high watermark,
    /// which no truncation removes while this broker leads.
    pub fn read_slice(&self, offset: i64, max_bytes: usize, high_watermark: i64) -> Result<ReadSlice> {
        self.check_usable()?;
        Ok(self.lock().log.read(offset, max_bytes, high_watermark)?)
    }

    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>> {
        self.check_usable()?;
        Ok(self.lock().log.offset_for_timestamp(timestamp_ms)?)
    }

    pub fn max_timestamp_offset(&self) -> Result<Option<(i64, i64)>> {
        self.check_usable()?;
        Ok(self.lock().log.max_timestamp_offset()?)
    }

    /// DeleteRecords on the leader: moves the log start offset to `offset` (-1: the high
    /// watermark). Records the in-sync replicas may not hold yet cannot be deleted, so an
    /// offset above the high watermark is OFFSET_OUT_OF_RANGE (Kafka's rule). Returns the new
    /// log start offset (the response's low watermark). Followers copy it from fetch responses.
    pub fn delete_records_before(&self, offset: i64) -> Result<i64> {
        self.check_usable()?;
        let high_watermark = self.high_watermark();
        let target = if offset == -1 { high_watermark } else { offset };
        let mut state = self.lock();
        if target < 0 || target > high_watermark {
            return Err(BrokerError::Log(LogError::OffsetOutOfRange {
                offset,
                log_start_offset: state.log.log_start_offset(),
                log_end_offset: high_watermark,
            }));
        }
        self.advance_log_start(&mut state, target)?;
        Ok(state.log.log_start_offset())
    }

    /// DeleteRecords' low watermark on a leader: the smallest log start offset among itself and
    /// its in-sync followers (a follower that has not reported one counts as -1). `None` when
    /// this replica does not lead.
    pub fn replicas_low_watermark(&self) -> Option<i64> {
        let state = self.lock();
        let Role::Leader(leader) = &state.role else {
            return None;
        };
        let mut low = state.log.log_start_offset();
        for id in state.isr.iter().filter(|&&id| id != self.local_id) {
            low = low.min(leader.followers.get(id).map_or(-1, |f| f.log_start_offset));
        }
        Some(low)
    }

    /// A follower moves its log start offset up to its leader's (as reported in fetch
    /// responses), never past its own log end offset: the leader deleted those records, so
    /// this replica must not serve them either once it leads.
    pub fn follow_leader_log_start(&self, leader_log_start: i64) -> Result<()> {
        if leader_log_start <= self.log_start_offset.load(Ordering::Acquire) {
            return Ok(());
        }
        self.check_usable()?;
        let mut state = self.lock();
        let target = leader_log_start.min(state.log.log_end_offset());
        self.advance_log_start(&mut state, target)
    }

    fn advance_log_start(&self, state: &mut PartitionState, offset: i64) -> Result<()> {
        if !state.log.advance_start_offset(offset)? {
            return Ok(());
        }
        let log_start = state.log.log_start_offset();
        state.txns.truncate_head(log_start);
        state.epochs.truncate_from_start(log_start)?;
        self.log_start_offset.store(log_start, Ordering::Release);
        tracing::info!(partition = %self.tp, log_start_offset = log_start, "log start offset advanced (records deleted)");
        Ok(())
    }

    /// Retention and producer-state expiry, run periodically.
    pub fn housekeeping(&self, now_ms: i64) -> Result<()> {
        let mut state = self.lock();
        if self.check_usable().is_err() {
            return Ok(());
        }
        state.log.enforce_retention(now_ms, self.high_watermark())?;
        self.snapshot_if_rolled(&mut state);
        state.producers.expire(now_ms);
        state.txns.expire_verifications(now_ms);
        let log_start = state.log.log_start_offset();
        state.txns.truncate_head(log_start);
        state.epochs.truncate_from_start(log_start)?;
        self.log_start_offset.store(log_start, Ordering::Release);
        Ok(())
    }

    /// Compacts the log when its `cleanup.policy` includes `compact` and it is due (see
    /// `log::cleaner`). The partition lock is taken only to plan and to swap each cleaned
    /// group of segments in; reading, filtering, writing and fsyncing happen without it.
    /// `cancel` stops the pass early (shutdown).
    pub fn clean(&self, map: &mut OffsetMap, now_ms: i64, cancel: &AtomicBool) -> Result<Option<CleanStats>> {
        // Below the last stable offset only (Kafka's rule): whether an open transaction's
        // records are aborted is not known yet.
        let stable = self.last_stable_offset();
        let Some(plan) = ({
            let state = self.lock();
            if self.check_usable().is_err() {
                return Ok(None);
            }
            state.log.plan_cleaning(now_ms, stable).map(|mut plan| {
                for a in state.txns.aborted_between(0, i64::MAX, usize::MAX) {
                    plan.aborted.entry(a.producer_id).or_default().push((a.first_offset, a.last_offset));
                }
                plan
            })
        }) else {
            return Ok(None);
        };
        let (stats, checkpoint) = cleaner::clean(&plan, map, now_ms, cancel, |cleaned| {
            let mut state = self.lock();
            if self.check_usable().is_err() {
                // Deleted or offline meanwhile: the `.cleaned` files are discarded at the next open.
                return Err(LogError::CleaningCancelled { dir: self.dir.clone() });
            }
            state.log.swap_cleaned(cleaned)
        })?;
        self.lock().log.cleaning_done(checkpoint);
        Ok(Some(stats))
    }

    pub fn size_bytes(&self) -> u64 {
        self.lock().log.size_bytes()
    }

    /// Deletes the replica of topic `topic_id` (Kafka's way): under the state lock, so no append,
    /// truncation, flush bookkeeping or segment swap is half done, the replica is marked deleted
    /// and its directory renamed to `<topic>-<partition>.<topic id>-delete`; then the renamed
    /// directory is removed. From the rename on, nothing of this replica touches `<topic>-<partition>`,
    /// which a topic recreated with the same name may already own; `Arc`s still held by in-flight
    /// requests get UNKNOWN_TOPIC_OR_PARTITION.
    pub fn delete(&self, topic_id: Uuid) -> Result<()> {
        let renamed = {
            let _state = self.lock();
            if self.deleted.swap(true, Ordering::AcqRel) {
                return Ok(());
            }
            let renamed = deleted_dir_name(&self.dir, topic_id);
            std::fs::rename(&self.dir, &renamed).map_err(|e| BrokerError::io(&self.dir, e))?;
            renamed
        };
        std::fs::remove_dir_all(&renamed).map_err(|e| BrokerError::io(&renamed, e))
    }

    /// Flushes and writes indexes and checkpoints for a clean shutdown. Nothing is written for
    /// an offline directory (the next start must recover from what is on disk) or a deleted
    /// replica.
    pub fn close(&self) -> Result<()> {
        let mut state = self.lock();
        if self.check_usable().is_err() {
            return Ok(());
        }
        // The next open then replays nothing. Not fsynced itself: `close_in_place` syncs the
        // directory after it, and a snapshot torn by a power loss fails its CRC (the roll
        // snapshot below it is used then).
        let snapshot = Self::snapshot_of(&state, state.log.log_end_offset());
        let active_base = state.log.active_base_offset();
        state.snapshots.write(&self.dir, &snapshot, false, active_base).map_err(|e| BrokerError::io(&self.dir, e))?;
        state.log.close_in_place()?;
        Ok(())
    }

    fn snapshot_of(state: &PartitionState, offset: i64) -> ProducerSnapshot {
        ProducerSnapshot { offset, producers: state.producers.export(), ongoing: state.txns.ongoing() }
    }

    /// After an append that rolled the log: snapshots producer state at the new segment's base
    /// offset (the append itself is not applied yet, so the state is the log's below it). A
    /// failure costs only replay time at the next start, so it is logged, not returned.
    fn snapshot_if_rolled(&self, state: &mut PartitionState) {
        let Some(offset) = state.log.take_rolled() else {
            return;
        };
        let snapshot = Self::snapshot_of(state, offset);
        if let Err(error) = state.snapshots.write(&self.dir, &snapshot, false, offset) {
            tracing::warn!(partition = %self.tp, offset, %error, "could not write a producer-state snapshot");
        }
    }
}

pub type PartitionRef = Arc<Partition>;

/// Suffix of a deleted replica's directory until it is removed (Kafka's `-delete`).
pub const DELETED_DIR_SUFFIX: &str = "-delete";

/// `<topic>-<partition>.<topic id>-delete` beside `dir`: unique per topic id, and never a valid
/// partition directory name (those end in the partition number).
fn deleted_dir_name(dir: &std::path::Path, topic_id: Uuid) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.with_file_name(format!("{name}.{}{DELETED_DIR_SUFFIX}", topic_id.simple()))
}

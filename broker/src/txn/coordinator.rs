//! The transaction coordinator's shell around [`TxnState`]: it owns the transactional ids that
//! hash to the `__transaction_state` partitions this broker leads (loading them when it becomes
//! leader), persists every state change there (answering once the high watermark passes it, as
//! `acks=all`), and writes the COMMIT/ABORT markers of ending transactions to every partition of
//! the transaction: directly when this broker leads the partition, with WriteTxnMarkers to its
//! leader otherwise, retried until each lands or this broker stops coordinating the id (the new
//! coordinator finds the `Prepare*` state when it loads and finishes the job).
//!
//! File appends run on tokio's blocking pool; nothing blocks an async worker.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use spate_client::protocol::compression::Compression;
use spate_client::protocol::messages::write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
use spate_client::protocol::messages::{ProducerId, TopicName, WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use spate_client::protocol::record::{decode_records, validate_batches, BatchBuilder, BatchIter, Record};
use spate_client::protocol::{str_bytes, ApiKey, ErrorCode};
use tracing::{info, warn};

use super::state::{EndOutcome, InitOutcome, TxnConfig, TxnMetadata, TxnState, TxnStatus};
use super::store;
use crate::broker::{now_ms, Broker};
use crate::config::{BrokerConfig, FlushMode};
use crate::controller::MetadataImage;
use crate::error::{BrokerError, Result};
use crate::group::coordinator::{leadership_changes, Owned};
use crate::group::{partition_for, OFFSETS_TOPIC};
use crate::partition::{Partition, Replicated};

/// The internal topic holding transaction state.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";
/// Kafka's `transaction.state.log.segment.bytes` default.
const SEGMENT_BYTES: &str = "104857600";
/// How long a state write may take to become durable.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read per step when replaying `__transaction_state`.
const LOAD_READ_BYTES: usize = 1 << 20;
/// Pause between marker attempts (doubling up to the maximum).
const MARKER_BACKOFF_MIN: Duration = Duration::from_millis(50);
const MARKER_BACKOFF_MAX: Duration = Duration::from_secs(1);

struct Inner {
    state: TxnState,
    owned: BTreeMap<i32, Owned>,
    /// Ids whose markers a task is writing now.
    completing: HashSet<String>,
}

pub struct TransactionCoordinator {
    inner: Arc<Mutex<Inner>>,
    config: TxnConfig,
    /// Counts finished state writes; AddPartitionsToTxn waits on it while the id's previous
    /// transaction is still being completed (see `add_partitions`).
    writes_done: tokio::sync::watch::Sender<u64>,
    /// Connections to other brokers' coordinators for KIP-890 verification.
    pub(crate) peers: super::verify::PeerConnections,
    /// Connections to partition leaders on other brokers, for WriteTxnMarkers.
    marker_peers: super::verify::PeerConnections,
}

/// How long AddPartitionsToTxn/AddOffsetsToTxn wait on the coordinator for the id's previous
/// transaction to complete before answering CONCURRENT_TRANSACTIONS. A producer begins its next
/// transaction as soon as EndTxn answers, while the markers of the last one are still being
/// written; refusing at once costs it a client retry backoff (100 ms by default) per transaction.
const CONCURRENT_WAIT: Duration = Duration::from_millis(1_000);

/// The most markers one WriteTxnMarkers appends on the async worker in `fsync` mode: about
/// 40 KiB of control batches (78 bytes each), within the inline limit of a Produce request.
const INLINE_MARKERS_MAX: usize = 512;

/// A state record appended to `__transaction_state`, not yet known to be durable.
struct Appended {
    partition: Arc<Partition>,
    /// The high watermark that covers it.
    needed: i64,
    leader_epoch: i32,
}

impl Appended {
    /// Waits until the record is durable (and replicated) under the leader epoch it was
    /// appended in.
    async fn wait(self) -> std::result::Result<(), ErrorCode> {
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        let hw = self.partition.subscribe_high_watermark();
        match self.partition.wait_replicated(hw, self.needed, self.leader_epoch, deadline).await {
            Replicated::Yes => Ok(()),
            Replicated::LeaderChanged | Replicated::LogDirOffline => Err(ErrorCode::NOT_COORDINATOR),
            Replicated::TimedOut => Err(ErrorCode::REQUEST_TIMED_OUT),
        }
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // The state machine never panics on client input; if our bug did, its state is still valid.
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn txn_config(config: &BrokerConfig) -> TxnConfig {
    TxnConfig {
        max_timeout_ms: config.transaction_max_timeout_ms,
        id_expiration_ms: config.transactional_id_expiration_ms,
        ..TxnConfig::default()
    }
}

/// One ending transaction's markers for one broker.
type MarkerTargets = BTreeMap<i32, Vec<(String, i32)>>;

impl TransactionCoordinator {
    pub fn new(config: &BrokerConfig) -> TransactionCoordinator {
        let config = txn_config(config);
        TransactionCoordinator {
            inner: Arc::new(Mutex::new(Inner {
                state: TxnState::new(config.clone()),
                owned: BTreeMap::new(),
                completing: HashSet::new(),
            })),
            config,
            writes_done: tokio::sync::watch::channel(0).0,
            peers: super::verify::PeerConnections::new("verify", super::verify::VERIFY_TIMEOUT),
            marker_peers: super::verify::PeerConnections::new("markers", WRITE_TIMEOUT + Duration::from_secs(5)),
        }
    }

    /// The `__transaction_state` partition of `transactional_id`: Kafka's
    /// `abs(hashCode) % partitions`.
    pub fn partition_of(&self, broker: &Broker, transactional_id: &str) -> i32 {
        let count = broker
            .image()
            .topics
            .get(TRANSACTION_STATE_TOPIC)
            .map(|t| t.partitions.len() as i32)
            .unwrap_or(broker.config.transaction_state_log_num_partitions);
        partition_for(transactional_id, count)
    }

    /// Whether this broker coordinates `transactional_id` now: the image names it leader of the
    /// id's partition and that partition is loaded in the image's leader epoch. Returns the
    /// partition and its leader epoch (the coordinator epoch markers carry).
    fn owner(broker: &Broker, inner: &Inner, transactional_id: &str) -> std::result::Result<(i32, i32), ErrorCode> {
        let image = broker.image();
        let Some(topic) = image.topics.get(TRANSACTION_STATE_TOPIC) else {
            return Err(ErrorCode::NOT_COORDINATOR);
        };
        let index = partition_for(transactional_id, topic.partitions.len() as i32);
        let p = &topic.partitions[index as usize];
        if p.leader != broker.config.node_id {
            return Err(ErrorCode::NOT_COORDINATOR);
        }
        match inner.owned.get(&index) {
            Some(o) if o.loaded && o.leader_epoch == p.leader_epoch => Ok((index, p.leader_epoch)),
            _ => Err(ErrorCode::COORDINATOR_LOAD_IN_PROGRESS),
        }
    }

    /// Creates `__transaction_state` through the controller if it does not exist yet.
    pub async fn ensure_topic(&self, broker: &Arc<Broker>) -> Result<()> {
        broker
            .ensure_internal_topic(
                TRANSACTION_STATE_TOPIC,
                broker.config.transaction_state_log_num_partitions,
                broker.config.transaction_state_log_replication_factor,
                SEGMENT_BYTES,
            )
            .await
    }

    /// Follows `__transaction_state` leadership in a new image (called by reconcile): unloads
    /// ids of partitions no longer led here (or led in a new epoch) and loads newly led ones on
    /// a loader thread. Their `Prepare*` transactions are finished by the next [`tick`].
    pub fn on_metadata(&self, broker: &Broker, image: &MetadataImage) {
        let me = broker.config.node_id;
        let Some(topic) = image.topics.get(TRANSACTION_STATE_TOPIC) else { return };
        let count = topic.partitions.len() as i32;
        let mut inner = lock(&self.inner);
        let mut loads = Vec::new();
        let leaders: Vec<(i32, i32)> = topic.partitions.iter().map(|p| (p.leader, p.leader_epoch)).collect();
        let (unload, to_load) = leadership_changes(me, &leaders, &inner.owned);
        for index in unload {
            inner.owned.remove(&index);
            let gone = inner.state.unload(|id| partition_for(id, count) == index);
            info!(partition = index, ids = gone, "{TRANSACTION_STATE_TOPIC} leadership changed; unloaded");
        }
        for (index, leader_epoch) in to_load {
            match broker.partition(TRANSACTION_STATE_TOPIC, index) {
                Some(partition) => {
                    inner.owned.insert(index, Owned { leader_epoch, loaded: false });
                    loads.push((index, leader_epoch, partition));
                }
                None => {
                    warn!(partition = index, "this broker leads {TRANSACTION_STATE_TOPIC}-{index} but holds no replica")
                }
            }
        }
        drop(inner);
        for (index, leader_epoch, partition) in loads {
            let shared = self.inner.clone();
            let config = self.config.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("txn-load-{index}"))
                .spawn(move || load(&shared, index, leader_epoch, &partition, config));
            if let Err(err) = spawned {
                warn!(partition = index, error = %err, "could not start a transaction loader thread");
                lock(&self.inner).owned.remove(&index);
            }
        }
    }

    /// Appends `record` (a state, or a tombstone for `id`) to the id's partition and waits until
    /// it is durable under the leader epoch the id is owned in.
    async fn persist(broker: &Arc<Broker>, id: &str, value: Option<Bytes>) -> std::result::Result<(), ErrorCode> {
        Self::append_state(broker, id, value).await?.wait().await
    }

    /// Appends a state record for `id`; [`Appended::wait`] waits for it to be durable.
    async fn append_state(
        broker: &Arc<Broker>,
        id: &str,
        value: Option<Bytes>,
    ) -> std::result::Result<Appended, ErrorCode> {
        let (index, leader_epoch) = Self::owner(broker, &lock(&broker.txns.inner), id)?;
        let partition = broker
            .partition(TRANSACTION_STATE_TOPIC, index)
            .filter(|p| p.is_leader() && p.leader_epoch() == leader_epoch)
            .ok_or(ErrorCode::NOT_COORDINATOR)?;
        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(&Record { key: Some(store::encode_key(id)), value, headers: Vec::new(), timestamp_ms: now_ms() });
        let batch = builder.finish(-1, -1, -1, false).map_err(|_| ErrorCode::UNKNOWN_SERVER_ERROR)?;
        let headers = validate_batches(&batch).map_err(|_| ErrorCode::UNKNOWN_SERVER_ERROR)?;
        if batch.len() > partition.max_message_bytes() {
            return Err(ErrorCode::INVALID_REQUEST);
        }
        // One small record: in fsync mode it is written here, as a small Produce is (see
        // `api::produce`); a hop to the blocking pool and back sat on the path of every
        // transaction several times over and, on a busy machine, waited for a core each time.
        let appended = if broker.config.log_flush_mode == FlushMode::Fsync {
            partition.append(&batch, &headers, now_ms())
        } else {
            let p = partition.clone();
            tokio::task::spawn_blocking(move || p.append(&batch, &headers, now_ms()))
                .await
                .map_err(|_| ErrorCode::COORDINATOR_NOT_AVAILABLE)?
        };
        let outcome = match appended {
            Ok(o) => o,
            Err(BrokerError::NotLeaderOrFollower { .. }) => return Err(ErrorCode::NOT_COORDINATOR),
            Err(err) => {
                warn!(transactional_id = id, error = %err, "appending to {TRANSACTION_STATE_TOPIC} failed");
                return Err(ErrorCode::COORDINATOR_NOT_AVAILABLE);
            }
        };
        if broker.config.log_flush_mode == FlushMode::Fsync {
            broker.mark_dirty(&partition);
        }
        Ok(Appended { partition, needed: outcome.last_offset + 1, leader_epoch })
    }

    /// Persists `next` and makes it the id's state once durable, or leaves the old state on
    /// failure.
    async fn write(broker: &Arc<Broker>, next: TxnMetadata) -> std::result::Result<(), ErrorCode> {
        Self::write_state(broker, next, false).await
    }

    /// Persists the `Complete*` state that ends a transaction whose markers are all written,
    /// and makes it the id's state as soon as it is appended, before it is durable: the
    /// producer's next AddPartitionsToTxn (parked on `writes_done`) then goes ahead at once, and
    /// its own `Ongoing` record, appended after this one, is made durable by the same fsync
    /// round instead of the next one. Nothing is answered on the strength of this state alone:
    /// a client hears back only once a later record of this partition is durable, which makes
    /// this one durable too. If it never becomes durable the partition has changed leader (the
    /// new coordinator loads `Prepare*` and writes the markers again, as after any crash between
    /// markers and completion) or its log directory went offline.
    async fn write_completion(broker: &Arc<Broker>, next: TxnMetadata) -> std::result::Result<(), ErrorCode> {
        Self::write_state(broker, next, true).await
    }

    /// Appends `next`; it becomes the id's state once durable, or once appended when
    /// `apply_when_appended` (see [`Self::write_completion`]). On failure the old state stays.
    /// Either way `writes_done` ticks, waking AddPartitionsToTxn parked on the id.
    async fn write_state(
        broker: &Arc<Broker>,
        next: TxnMetadata,
        apply_when_appended: bool,
    ) -> std::result::Result<(), ErrorCode> {
        let id = next.transactional_id.clone();
        let (written, durable_later) = match Self::append_state(broker, &id, Some(store::encode_value(&next))).await {
            Ok(appended) if apply_when_appended => (Ok(()), Some(appended)),
            Ok(appended) => (appended.wait().await, None),
            Err(code) => (Err(code), None),
        };
        let outcome = {
            let mut inner = lock(&broker.txns.inner);
            match written {
                Ok(()) if Self::owner(broker, &inner, &id).is_ok() => {
                    inner.state.apply(next);
                    Ok(())
                }
                Ok(()) => Err(ErrorCode::NOT_COORDINATOR),
                Err(code) => {
                    inner.state.unpend(&id);
                    Err(code)
                }
            }
        };
        broker.txns.writes_done.send_modify(|n| *n = n.wrapping_add(1));
        outcome?;
        match durable_later {
            Some(appended) => appended.wait().await,
            None => Ok(()),
        }
    }

    fn with_state<T>(
        broker: &Broker,
        id: &str,
        f: impl FnOnce(&mut TxnState) -> std::result::Result<T, ErrorCode>,
    ) -> std::result::Result<T, ErrorCode> {
        let mut inner = lock(&broker.txns.inner);
        Self::owner(broker, &inner, id)?;
        f(&mut inner.state)
    }

    /// InitProducerId with a transactional id: `(producer_id, producer_epoch)`.
    pub async fn init_producer_id(
        broker: &Arc<Broker>,
        id: &str,
        timeout_ms: i32,
        expected: (i64, i16),
    ) -> std::result::Result<(i64, i16), ErrorCode> {
        let mut new_id = None;
        loop {
            let now = now_ms();
            let outcome = Self::with_state(broker, id, |s| s.init_producer_id(id, timeout_ms, expected, new_id, now))?;
            match outcome {
                InitOutcome::NeedProducerId if new_id.is_none() => {
                    new_id = Some(broker.allocate_producer_id().await.map_err(|e| e.code())?);
                }
                InitOutcome::NeedProducerId => return Err(ErrorCode::COORDINATOR_NOT_AVAILABLE),
                InitOutcome::Write(next) => {
                    let answer = (next.producer_id, next.producer_epoch);
                    Self::write(broker, next).await?;
                    return Ok(answer);
                }
                InitOutcome::Current { producer_id, producer_epoch } => return Ok((producer_id, producer_epoch)),
                InitOutcome::AbortFirst(next) => {
                    info!(transactional_id = id, "a new producer instance aborts the ongoing transaction");
                    Self::write(broker, next).await?;
                    Self::spawn_completion(broker, id);
                    return Err(ErrorCode::CONCURRENT_TRANSACTIONS);
                }
            }
        }
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn for partitions that exist.
    pub async fn add_partitions(
        broker: &Arc<Broker>,
        id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[(String, i32)],
    ) -> std::result::Result<(), ErrorCode> {
        let deadline = tokio::time::Instant::now() + CONCURRENT_WAIT;
        loop {
            // Subscribed before looking, so a write finishing in between still wakes us.
            let mut done = broker.txns.writes_done.subscribe();
            let now = now_ms();
            match Self::with_state(broker, id, |s| s.add_partitions(id, producer_id, producer_epoch, partitions, now)) {
                Ok(None) => return Ok(()),
                Ok(Some(next)) => return Self::write(broker, next).await,
                Err(ErrorCode::CONCURRENT_TRANSACTIONS) => {
                    // The previous transaction is completing (its markers are on their way):
                    // wait for a state write rather than send the client into its backoff.
                    if tokio::time::timeout_at(deadline, done.changed()).await.is_err() {
                        return Err(ErrorCode::CONCURRENT_TRANSACTIONS);
                    }
                }
                Err(code) => return Err(code),
            }
        }
    }

    /// KIP-890 verification asked by a partition leader (this broker, or a peer's
    /// AddPartitionsToTxn v4 `verify_only`): one code per partition.
    pub fn verify_partitions(
        broker: &Broker,
        id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[(String, i32)],
    ) -> std::result::Result<Vec<ErrorCode>, ErrorCode> {
        Self::with_state(broker, id, |s| s.verify_partitions(id, producer_id, producer_epoch, partitions))
    }

    /// EndTxn: answered once the `Prepare*` state is durable; the markers follow.
    pub async fn end_txn(
        broker: &Arc<Broker>,
        id: &str,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
    ) -> std::result::Result<(), ErrorCode> {
        let now = now_ms();
        match Self::with_state(broker, id, |s| s.end_txn(id, producer_id, producer_epoch, commit, now))? {
            EndOutcome::AlreadyDone => Ok(()),
            EndOutcome::Prepare(next) => {
                Self::write(broker, next).await?;
                Self::spawn_completion(broker, id);
                Ok(())
            }
        }
    }

    /// Aborts timed-out transactions, finishes `Prepare*` ones nobody is finishing (after a
    /// load or a failed attempt), and expires idle ids. Called periodically.
    pub fn tick(broker: &Arc<Broker>) {
        let now = now_ms();
        let (expired, prepared, stale_ids) = {
            let mut inner = lock(&broker.txns.inner);
            let expired = inner.state.expire_transactions(now);
            let prepared: Vec<String> = inner
                .state
                .prepared()
                .into_iter()
                .map(|m| m.transactional_id)
                .filter(|id| !inner.completing.contains(id))
                .collect();
            let stale = inner.state.expire_ids(now);
            (expired, prepared, stale)
        };
        for next in expired {
            let b = broker.clone();
            tokio::spawn(async move {
                let id = next.transactional_id.clone();
                warn!(transactional_id = %id, producer_id = next.producer_id, "transaction timed out; aborting it");
                if Self::write(&b, next).await.is_ok() {
                    Self::spawn_completion(&b, &id);
                }
            });
        }
        for id in prepared {
            Self::spawn_completion(broker, &id);
        }
        for id in stale_ids {
            let b = broker.clone();
            tokio::spawn(async move {
                if let Err(code) = Self::persist(&b, &id, None).await {
                    warn!(transactional_id = %id, ?code, "writing the tombstone of an expired transactional id failed");
                }
            });
        }
    }

    /// Writes the markers of `id`'s `Prepare*` transaction, then its `Complete*` state, on a
    /// task of its own (once per id at a time).
    fn spawn_completion(broker: &Arc<Broker>, id: &str) {
        if !lock(&broker.txns.inner).completing.insert(id.to_string()) {
            return;
        }
        let b = broker.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let result = Self::complete(&b, &id).await;
            lock(&b.txns.inner).completing.remove(&id);
            if let Err(code) = result {
                // The next tick (or the next coordinator's load) tries again.
                info!(transactional_id = %id, ?code, "finishing the transaction was interrupted");
            }
        });
    }

    async fn complete(broker: &Arc<Broker>, id: &str) -> std::result::Result<(), ErrorCode> {
        let (m, coordinator_epoch) = {
            let inner = lock(&broker.txns.inner);
            let (_, epoch) = Self::owner(broker, &inner, id)?;
            match inner.state.get(id) {
                Some(m) if m.status.is_prepare() && !m.pending => (m.clone(), epoch),
                _ => return Ok(()),
            }
        };
        let commit = m.status == TxnStatus::PrepareCommit;
        let mut remaining: Vec<(String, i32)> = m.partitions.iter().cloned().collect();
        let mut backoff = MARKER_BACKOFF_MIN;
        while !remaining.is_empty() {
            Self::owner(broker, &lock(&broker.txns.inner), id)?;
            let image = broker.image();
            let mut targets: MarkerTargets = BTreeMap::new();
            let mut next_round = Vec::new();
            for (topic, partition) in remaining.drain(..) {
                match image.partition(&topic, partition) {
                    // Deleted with its data: nothing left to mark.
                    None => {}
                    Some(p) if p.leader < 0 => next_round.push((topic, partition)),
                    Some(p) => targets.entry(p.leader).or_default().push((topic, partition)),
                }
            }
            for (leader, partitions) in targets {
                let failed = if leader == broker.config.node_id {
                    write_local_markers(broker, &m, commit, coordinator_epoch, partitions).await
                } else {
                    write_remote_markers(broker, &image, leader, &m, commit, coordinator_epoch, partitions).await
                };
                next_round.extend(failed);
            }
            remaining = next_round;
            if !remaining.is_empty() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MARKER_BACKOFF_MAX);
            }
        }
        let next = {
            let mut inner = lock(&broker.txns.inner);
            Self::owner(broker, &inner, id)?;
            inner.state.complete(id, now_ms())
        };
        if let Some(next) = next {
            Self::write_completion(broker, next).await?;
        }
        Ok(())
    }

    /// ListTransactions: `(transactional_id, producer_id, state)` of the loaded ids matching
    /// the filters (empty filters match everything; `min_duration_ms` < 0 too).
    pub fn list(
        &self,
        states: &[String],
        producer_ids: &[i64],
        min_duration_ms: i64,
        now_ms: i64,
    ) -> Vec<(String, i64, &'static str)> {
        let inner = lock(&self.inner);
        let mut out: Vec<_> = inner
            .state
            .all()
            .filter(|m| m.producer_id >= 0)
            .filter(|m| min_duration_ms < 0 || (m.start_ms >= 0 && now_ms.saturating_sub(m.start_ms) > min_duration_ms))
            .filter(|m| states.is_empty() || states.iter().any(|s| s == m.status.name()))
            .filter(|m| producer_ids.is_empty() || producer_ids.contains(&m.producer_id))
            .map(|m| (m.transactional_id.clone(), m.producer_id, m.status.name()))
            .collect();
        out.sort();
        out
    }

    /// DescribeTransactions of one id.
    pub fn describe(&self, broker: &Broker, id: &str) -> std::result::Result<TxnMetadata, ErrorCode> {
        let inner = lock(&self.inner);
        Self::owner(broker, &inner, id)?;
        inner.state.get(id).filter(|m| m.producer_id >= 0).cloned().ok_or(ErrorCode::TRANSACTIONAL_ID_NOT_FOUND)
    }

    /// Whether a partition of `__transaction_state` this broker leads is still loading.
    pub fn is_loading(&self) -> bool {
        lock(&self.inner).owned.values().any(|o| !o.loaded)
    }
}

/// Appends the markers to partitions this broker leads and waits for each to be replicated.
/// Returns the partitions to try again.
async fn write_local_markers(
    broker: &Arc<Broker>,
    m: &TxnMetadata,
    commit: bool,
    coordinator_epoch: i32,
    partitions: Vec<(String, i32)>,
) -> Vec<(String, i32)> {
    let mut failed = Vec::new();
    let results =
        write_markers_here(broker, m.producer_id, m.producer_epoch, commit, coordinator_epoch, &partitions).await;
    for ((topic, partition), code) in partitions.into_iter().zip(results) {
        match code {
            ErrorCode::NONE => {}
            // The partition moved on (a newer epoch of this producer wrote there, or the
            // partition is gone): Kafka drops these markers too.
            ErrorCode::INVALID_PRODUCER_EPOCH | ErrorCode::UNKNOWN_TOPIC_OR_PARTITION => {
                warn!(transactional_id = %m.transactional_id, %topic, partition, ?code, "marker not written; dropped");
            }
            _ => failed.push((topic, partition)),
        }
    }
    failed
}

/// WriteTxnMarkers on this broker (the coordinator's own partitions, or a peer coordinator's
/// request): appends one marker per partition as its leader, waits until each is replicated
/// (as `acks=all`), and hands markers on `__consumer_offsets` to the group coordinator. One
/// error code per partition, in order.
pub async fn write_markers_here(
    broker: &Arc<Broker>,
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    partitions: &[(String, i32)],
) -> Vec<ErrorCode> {
    let mut codes = vec![ErrorCode::NONE; partitions.len()];
    let mut targets = Vec::new();
    for (i, (topic, partition)) in partitions.iter().enumerate() {
        match crate::api::leader_partition(broker, topic, *partition) {
            Ok(p) => targets.push((i, p.leader_epoch(), p.subscribe_high_watermark(), p)),
            Err(code) => codes[i] = code,
        }
    }
    // Every marker is appended before any partition is handed to the flusher: appended and
    // handed over one by one, the first would start an fsync round the others then wait
    // behind, two rounds on the path of every commit instead of one. Markers are a few dozen
    // bytes each, so in fsync mode they are written here (as a small Produce is, see
    // `api::produce`), up to a request's worth; more, or page-cache mode, go in one trip to
    // the blocking pool.
    let to_append: Vec<Arc<Partition>> = targets.iter().map(|(_, _, _, p)| p.clone()).collect();
    let append_all = move || {
        to_append
            .iter()
            .map(|p| p.append_marker(producer_id, producer_epoch, commit, coordinator_epoch, now_ms()))
            .collect::<Vec<_>>()
    };
    let appended = if broker.config.log_flush_mode == FlushMode::Fsync && targets.len() <= INLINE_MARKERS_MAX {
        Ok(append_all())
    } else {
        tokio::task::spawn_blocking(append_all).await
    };
    let Ok(appended) = appended else {
        for (i, ..) in &targets {
            codes[*i] = ErrorCode::UNKNOWN_SERVER_ERROR;
        }
        return codes;
    };
    let mut waits = Vec::new();
    for ((i, leader_epoch, hw, p), outcome) in targets.into_iter().zip(appended) {
        match outcome {
            Ok(outcome) => {
                if broker.config.log_flush_mode == FlushMode::Fsync {
                    broker.mark_dirty(&p);
                }
                waits.push((i, p, hw, outcome.last_offset + 1, leader_epoch));
            }
            Err(err) => codes[i] = err.code(),
        }
    }
    let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
    for (i, p, hw, needed, leader_epoch) in waits {
        codes[i] = match p.wait_replicated(hw, needed, leader_epoch, deadline).await {
            Replicated::Yes => {
                if p.tp.topic == OFFSETS_TOPIC {
                    broker.groups.complete_txn(broker, p.tp.partition, producer_id, commit);
                }
                ErrorCode::NONE
            }
            Replicated::LeaderChanged => ErrorCode::NOT_LEADER_OR_FOLLOWER,
            Replicated::LogDirOffline => ErrorCode::KAFKA_STORAGE_ERROR,
            Replicated::TimedOut => ErrorCode::REQUEST_TIMED_OUT,
        };
    }
    codes
}

/// Sends the markers to the broker leading `partitions`; returns those to try again.
async fn write_remote_markers(
    broker: &Arc<Broker>,
    image: &MetadataImage,
    leader: i32,
    m: &TxnMetadata,
    commit: bool,
    coordinator_epoch: i32,
    partitions: Vec<(String, i32)>,
) -> Vec<(String, i32)> {
    let Some(address) = super::peer_address(image, leader) else {
        return partitions;
    };
    let topics = super::by_topic(&partitions);
    let marker = WritableTxnMarker::default()
        .with_producer_id(ProducerId(m.producer_id))
        .with_producer_epoch(m.producer_epoch)
        .with_transaction_result(commit)
        .with_coordinator_epoch(coordinator_epoch)
        .with_topics(
            topics
                .iter()
                .map(|(t, ps)| {
                    WritableTxnMarkerTopic::default()
                        .with_name(TopicName(str_bytes(t.to_string())))
                        .with_partition_indexes(ps.clone())
                })
                .collect(),
        );
    let request = WriteTxnMarkersRequest::default().with_markers(vec![marker]);
    let peers = &broker.txns.marker_peers;
    let response: WriteTxnMarkersResponse = match peers.get(broker, leader, address).await {
        Ok(conn) => match conn.send(ApiKey::WriteTxnMarkers, 1, &request).await {
            Ok(r) => r,
            Err(err) => {
                warn!(leader, error = %err, "WriteTxnMarkers failed; retrying");
                peers.forget(leader);
                return partitions;
            }
        },
        Err(err) => {
            warn!(leader, error = %err, "cannot reach a partition leader for transaction markers; retrying");
            return partitions;
        }
    };
    let mut codes: HashMap<(String, i32), i16> = HashMap::new();
    for marker in response.markers {
        for t in marker.topics {
            for p in t.partitions {
                codes.insert((t.name.to_string(), p.partition_index), p.error_code);
            }
        }
    }
    partitions
        .into_iter()
        .filter(|tp| match codes.get(tp).map(|c| ErrorCode(*c)) {
            Some(ErrorCode::NONE) => false,
            Some(ErrorCode::INVALID_PRODUCER_EPOCH) | Some(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION) => {
                warn!(transactional_id = %m.transactional_id, topic = %tp.0, partition = tp.1, "marker not written; dropped");
                false
            }
            _ => true,
        })
        .collect()
}

/// Replays one `__transaction_state` partition on a loader thread and hands its ids over if
/// this broker still leads it in the same epoch.
fn load(shared: &Mutex<Inner>, index: i32, leader_epoch: i32, partition: &Partition, config: TxnConfig) {
    let expected = Owned { leader_epoch, loaded: false };
    loop {
        if lock(shared).owned.get(&index) != Some(&expected) {
            return;
        }
        let mut loaded = TxnState::new(config.clone());
        match replay(partition, &mut loaded) {
            Ok(records) => {
                let mut inner = lock(shared);
                let current = partition.is_leader() && partition.leader_epoch() == leader_epoch;
                if inner.owned.get(&index) != Some(&expected) || !current {
                    return;
                }
                let ids = loaded.len();
                inner.state.adopt(loaded);
                inner.owned.insert(index, Owned { leader_epoch, loaded: true });
                info!(partition = index, leader_epoch, records, ids, "loaded {TRANSACTION_STATE_TOPIC}");
                return;
            }
            Err(err) => {
                warn!(partition = index, error = %err, "loading transactions failed; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn replay(p: &Partition, state: &mut TxnState) -> Result<usize> {
    let offsets = p.offsets();
    let mut offset = offsets.log_start_offset;
    // To the log end: as the group coordinator, a new leader's whole log becomes committed.
    let end = offsets.log_end_offset;
    let mut loaded = 0;
    while offset < end {
        let bytes = p.read(offset, LOAD_READ_BYTES, end)?;
        let mut next = offset;
        for (position, header) in BatchIter::new(&bytes) {
            next = header.last_offset() + 1;
            if header.is_control() {
                continue;
            }
            let batch = bytes.slice(position..position + header.total_bytes());
            let mut records = Vec::new();
            if let Err(err) = decode_records(&batch, 64 << 20, &mut records) {
                warn!(partition = %p.tp, offset = header.base_offset, error = %err, "skipping undecodable batch");
                continue;
            }
            for r in records.into_iter().filter(|r| r.offset >= offset) {
                let Some(key) = r.key else { continue };
                let id = match store::decode_key(&key) {
                    Ok(id) => id,
                    Err(err) => {
                        warn!(partition = %p.tp, offset = r.offset, error = %err, "skipping record");
                        continue;
                    }
                };
                let value = match r.value.as_deref().map(|v| store::decode_value(&id, v)).transpose() {
                    Ok(v) => v,
                    Err(err) => {
                        warn!(partition = %p.tp, offset = r.offset, error = %err, "skipping record");
                        continue;
                    }
                };
                state.load(id, value);
                loaded += 1;
            }
        }
        if next <= offset {
            break;
        }
        offset = next;
    }
    Ok(loaded)
}

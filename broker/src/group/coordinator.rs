//! The async shell around [`GroupState`]: it owns the state machine behind one lock, hands
//! parked JoinGroup/SyncGroup requests a oneshot channel, appends the state machine's records
//! to `__consumer_offsets` (creating the topic on first need), and loads a partition's groups
//! when this broker becomes its leader.
//!
//! Order: records are queued for the appender thread while the lock is held, so the log holds
//! them in the order the state machine produced them and a replay rebuilds the same state.
//! Blocking work never runs on the async workers: appends go to one appender thread, and each
//! partition's groups are replayed on a loader thread without the lock (requests for those
//! groups get COORDINATOR_LOAD_IN_PROGRESS meanwhile, as Kafka's do).
//!
//! Offsets: an OffsetCommit is staged when appended, answered once the high watermark passes
//! its record while this broker still leads the partition in the same leader epoch, and only
//! then shown to OffsetFetch (Kafka's pending offset commits).
//!
//! Transactional offsets (TxnOffsetCommit, KIP-98/KIP-447): appended as one transactional batch
//! of the producer (through the same appender thread, with `Partition::append_from_coordinator`),
//! answered once durable, and held pending per producer until that producer's COMMIT or ABORT
//! marker is in the partition ([`GroupCoordinator::complete_txn`]; on a replay, the marker's
//! control batch). OffsetFetch with `require_stable` answers UNSTABLE_OFFSET_COMMIT for a
//! partition with offsets pending in a transaction.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use spate_client::protocol::compression::Compression;
use spate_client::protocol::record::{decode_records, validate_batches, BatchBuilder, BatchHeader, BatchIter, Record};
use spate_client::protocol::ErrorCode;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use super::state::{
    Answer, CommitPlan, Completion, Effects, FetchedOffset, GroupConfig, GroupDescription, GroupState, JoinRequest,
    JoinResult, LeavingMember, SyncResult, WaiterId,
};
use super::store::{transaction_marker, OffsetValue, StoreRecord};
use super::{partition_for, OFFSETS_TOPIC};
use crate::broker::{now_ms, Broker};
use crate::config::{BrokerConfig, FlushMode};
use crate::controller::MetadataImage;
use crate::error::{BrokerError, Result};
use crate::flusher::Flusher;
use crate::partition::{Partition, Replicated};

/// Kafka's `offsets.topic.segment.bytes` default.
const OFFSETS_SEGMENT_BYTES: &str = "104857600";
/// Bytes read per step when replaying `__consumer_offsets`.
const LOAD_READ_BYTES: usize = 1 << 20;
/// Bound on a decompressed batch during replay (our own batches are never compressed).
const LOAD_MAX_DECOMPRESSED_BYTES: usize = 64 << 20;
/// Pause before replaying a partition again after a read failed.
const LOAD_RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// How long a write waits to become durable before its request is answered REQUEST_TIMED_OUT.
pub const COMMIT_DURABLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A JoinGroup or SyncGroup answer: now, or once the rebalance gets there.
pub enum Wait<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

/// A queued `__consumer_offsets` append whose request is answered once it is durable.
pub struct DurableWait {
    /// The appender's answer: the last offset of the batch, or why it was not appended.
    appended: oneshot::Receiver<Result<i64>>,
    partition: Arc<Partition>,
    /// The leader epoch the append was queued in; a record is durable only if the high
    /// watermark passes it while this broker still leads in this epoch.
    leader_epoch: i32,
}

/// One partition of an OffsetCommit.
pub struct CommitPartition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// Test hook run on the loader thread before a partition's groups are replayed.
pub type LoadHook = Arc<dyn Fn(i32) + Send + Sync>;

/// A `__consumer_offsets` partition this broker leads, by the leader epoch it leads it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owned {
    pub(crate) leader_epoch: i32,
    /// Its groups are replayed; until then their requests get COORDINATOR_LOAD_IN_PROGRESS.
    pub(crate) loaded: bool,
}

struct Inner {
    state: GroupState,
    /// `__consumer_offsets` partitions this broker leads: it coordinates exactly the groups that
    /// hash to those loaded in the epoch the newest metadata image names.
    owned: BTreeMap<i32, Owned>,
    joins: HashMap<WaiterId, oneshot::Sender<JoinResult>>,
    syncs: HashMap<WaiterId, oneshot::Sender<SyncResult>>,
}

impl Inner {
    /// Answers parked JoinGroup/SyncGroup requests.
    fn complete(&mut self, completions: Vec<Completion>) {
        for completion in completions {
            match completion {
                Completion::Join(w, result) => {
                    if let Some(tx) = self.joins.remove(&w) {
                        let _ = tx.send(result);
                    }
                }
                Completion::Sync(w, result) => {
                    if let Some(tx) = self.syncs.remove(&w) {
                        let _ = tx.send(result);
                    }
                }
            }
        }
    }
}

/// What the coordinator shares with its loader threads and commit tasks.
struct Shared {
    inner: Mutex<Inner>,
    /// Bumped when a staged commit resolves or groups are unloaded: wakes OffsetFetch requests
    /// waiting for a group's commits in flight.
    resolved: watch::Sender<u64>,
    load_hook: Mutex<Option<LoadHook>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state machine never panics on peer input; if our own bug did, the state it left is
        // still a valid group state, so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_fetches(&self) {
        self.resolved.send_modify(|v| *v = v.wrapping_add(1));
    }
}

pub struct GroupCoordinator {
    shared: Arc<Shared>,
    next_waiter: AtomicU64,
    /// The appender thread's queue, started with the first append.
    appender: OnceLock<mpsc::Sender<AppendJob>>,
}

/// An OffsetCommit whose record is queued: resolves to the request's answer once durable.
pub struct PendingCommit {
    answer: oneshot::Receiver<std::result::Result<(), ErrorCode>>,
}

impl PendingCommit {
    /// `Ok` once durable; otherwise the error for every partition that was accepted.
    pub async fn outcome(self) -> std::result::Result<(), ErrorCode> {
        self.answer.await.unwrap_or(Err(ErrorCode::COORDINATOR_NOT_AVAILABLE))
    }
}

/// One append for the appender thread.
struct AppendJob {
    partition: Arc<Partition>,
    leader_epoch: i32,
    batch: Bytes,
    headers: Vec<BatchHeader>,
    /// A transactional batch: appended as the coordinator's (no sequence checks; the partition
    /// records the open transaction).
    transactional: bool,
    now_ms: i64,
    done: Option<oneshot::Sender<Result<i64>>>,
}

/// The producer of a transactional append: `(producer_id, producer_epoch)`.
type TxnProducer = (i64, i16);

pub fn group_config(config: &BrokerConfig) -> GroupConfig {
    GroupConfig {
        min_session_timeout_ms: config.group_min_session_timeout_ms,
        max_session_timeout_ms: config.group_max_session_timeout_ms,
        initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms,
        max_size: config.group_max_size,
        max_groups: config.group_max_count,
        member_metadata_max_bytes: config.group_member_metadata_max_bytes,
        offset_metadata_max_bytes: config.offset_metadata_max_bytes,
        offsets_retention_ms: config.offsets_retention_minutes.saturating_mul(60_000),
    }
}

fn storage_error_code(err: &BrokerError) -> ErrorCode {
    match err {
        BrokerError::MessageTooLarge { .. } => ErrorCode::INVALID_COMMIT_OFFSET_SIZE,
        BrokerError::Controller { code, .. } if *code == ErrorCode::NOT_COORDINATOR => ErrorCode::NOT_COORDINATOR,
        // The replica stopped leading between the queueing and the append.
        BrokerError::NotLeaderOrFollower { .. } => ErrorCode::NOT_COORDINATOR,
        // A transactional append by a fenced producer: Kafka passes the producer's error on.
        BrokerError::ProducerState(_) => err.code(),
        _ => ErrorCode::COORDINATOR_NOT_AVAILABLE,
    }
}

fn not_coordinator(index: i32) -> BrokerError {
    BrokerError::Controller {
        code: ErrorCode::NOT_COORDINATOR,
        message: format!("this broker does not lead {OFFSETS_TOPIC}-{index} in the epoch its groups were loaded in"),
    }
}

/// Whether this broker coordinates a group whose partition the newest image has led by
/// `image_leader` (`(leader, leader_epoch)`, `None` without `__consumer_offsets`) and which it
/// holds as `owned`. The image decides who coordinates, so FindCoordinator (which answers from
/// the same image) never names this broker for a group it then refuses with NOT_COORDINATOR:
/// until its groups are loaded in that epoch the answer is COORDINATOR_LOAD_IN_PROGRESS, which
/// clients retry.
fn ownership(me: i32, image_leader: Option<(i32, i32)>, owned: Option<Owned>) -> std::result::Result<(), ErrorCode> {
    match image_leader {
        Some((leader, epoch)) if leader == me => match owned {
            Some(o) if o.loaded && o.leader_epoch == epoch => Ok(()),
            _ => Err(ErrorCode::COORDINATOR_LOAD_IN_PROGRESS),
        },
        _ => Err(ErrorCode::NOT_COORDINATOR),
    }
}

/// What a new image asks of the coordinator, given each `__consumer_offsets` partition's
/// `(leader, leader_epoch)` in it: the partitions whose groups to unload (no longer led here,
/// or led in another epoch) and those to load, with the epoch to load them in. A new epoch means
/// a reload even when this broker led the partition before and leads it again (lead→follow→lead
/// arriving as one image): its log may have been truncated in between.
pub(crate) fn leadership_changes(
    me: i32,
    leaders: &[(i32, i32)],
    owned: &BTreeMap<i32, Owned>,
) -> (Vec<i32>, Vec<(i32, i32)>) {
    let mut unload = Vec::new();
    let mut load = Vec::new();
    for (index, &(leader, leader_epoch)) in leaders.iter().enumerate() {
        let index = index as i32;
        let current = owned.get(&index);
        let leads = leader == me;
        if leads && current.is_some_and(|o| o.leader_epoch == leader_epoch) {
            continue;
        }
        if current.is_some() {
            unload.push(index);
        }
        if leads {
            load.push((index, leader_epoch));
        }
    }
    (unload, load)
}

/// Waits until `wait`'s record is durable: appended, and the high watermark past it while this
/// broker still leads the partition in the epoch it was appended in. A follower's high
/// watermark comes from another leader and says nothing about a record this one appended (it
/// may be truncated away), so leadership is checked after every high-watermark read.
pub async fn wait_durable(wait: DurableWait, deadline: tokio::time::Instant) -> std::result::Result<(), ErrorCode> {
    let last_offset = match tokio::time::timeout_at(deadline, wait.appended).await {
        Err(_) => return Err(ErrorCode::REQUEST_TIMED_OUT),
        Ok(Err(_)) => return Err(ErrorCode::COORDINATOR_NOT_AVAILABLE),
        Ok(Ok(Err(err))) => return Err(storage_error_code(&err)),
        Ok(Ok(Ok(last))) => last,
    };
    let high_watermark = wait.partition.subscribe_high_watermark();
    match wait.partition.wait_replicated(high_watermark, last_offset + 1, wait.leader_epoch, deadline).await {
        Replicated::Yes => Ok(()),
        // Kafka answers a commit that hit a storage error NOT_COORDINATOR too: find the new one.
        Replicated::LeaderChanged | Replicated::LogDirOffline => Err(ErrorCode::NOT_COORDINATOR),
        Replicated::TimedOut => Err(ErrorCode::REQUEST_TIMED_OUT),
    }
}

/// Waits for every append of one request; the first failure is the answer.
pub async fn wait_all_durable(waits: Vec<DurableWait>) -> std::result::Result<(), ErrorCode> {
    let deadline = tokio::time::Instant::now() + COMMIT_DURABLE_TIMEOUT;
    let mut result = Ok(());
    for w in waits {
        let r = wait_durable(w, deadline).await;
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// The appender thread: appends queued batches in order. File writes (and segment rolls) never
/// run on an async worker; in `fsync` mode the flusher then makes them durable.
fn run_appender(jobs: mpsc::Receiver<AppendJob>, flusher: Arc<Flusher>, flush_mode: FlushMode) {
    for job in jobs {
        let p = &job.partition;
        let result = if !p.is_leader() || p.leader_epoch() != job.leader_epoch {
            Err(not_coordinator(p.tp.partition))
        } else if job.transactional {
            p.append_from_coordinator(&job.batch, &job.headers, job.now_ms).map(|outcome| outcome.last_offset)
        } else {
            p.append(&job.batch, &job.headers, job.now_ms).map(|outcome| outcome.last_offset)
        };
        if result.is_ok() && flush_mode == FlushMode::Fsync {
            flusher.mark_dirty(p);
        }
        if let Some(done) = job.done {
            let _ = done.send(result);
        } else if let Err(err) = result {
            // Group metadata is rebuilt by members rejoining; a lost record costs a rebalance
            // after a restart, never a wrong answer now.
            warn!(partition = %p.tp, error = %err, "appending group metadata to {OFFSETS_TOPIC} failed");
        }
    }
}

/// A partition's groups to replay on the loader thread.
struct LoadJob {
    index: i32,
    leader_epoch: i32,
    partition: Arc<Partition>,
    config: GroupConfig,
}

/// Replays one partition's groups without holding the coordinator's lock, then hands them over
/// if this broker still leads the partition in the same epoch. Retries after a failed read for
/// as long as that holds.
fn load_groups(shared: &Shared, job: LoadJob) {
    let expected = Owned { leader_epoch: job.leader_epoch, loaded: false };
    loop {
        if shared.lock().owned.get(&job.index) != Some(&expected) {
            return; // superseded by a newer image
        }
        let hook = shared.load_hook.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(hook) = hook {
            hook(job.index);
        }
        let mut loaded = GroupState::new(job.config.clone());
        let mut from = job.partition.offsets().log_start_offset;
        let mut records = 0;
        let result = loop {
            match replay_partition(&job.partition, &mut loaded, from, now_ms()) {
                Ok((count, end)) => {
                    records += count;
                    from = end;
                }
                Err(err) => break Err(err),
            }
            let inner = shared.lock();
            // Transaction markers may be appended while the groups load (the coordinator itself
            // appends nothing then), and `complete_txn` leaves a loading partition to the
            // replay: take over only once the replay reached the log end. The check and the
            // takeover share one hold of the lock, so a marker appended after the check has its
            // `complete_txn` (which takes the lock) find the groups loaded.
            let superseded = inner.owned.get(&job.index) != Some(&expected)
                || !job.partition.is_leader()
                || job.partition.leader_epoch() != job.leader_epoch;
            if superseded || job.partition.offsets().log_end_offset <= from {
                break Ok(inner);
            }
        };
        match result {
            Ok(mut inner) => {
                let current = job.partition.is_leader() && job.partition.leader_epoch() == job.leader_epoch;
                if inner.owned.get(&job.index) != Some(&expected) || !current {
                    // The next image unloads or reloads it.
                    info!(partition = job.index, "leadership moved while its groups loaded; discarding the load");
                    return;
                }
                let groups = loaded.group_count();
                inner.state.adopt(loaded);
                inner.owned.insert(job.index, Owned { leader_epoch: job.leader_epoch, loaded: true });
                info!(
                    partition = job.index,
                    leader_epoch = job.leader_epoch,
                    records,
                    groups,
                    "loaded groups of {OFFSETS_TOPIC}"
                );
                return;
            }
            Err(err) => {
                warn!(partition = job.index, error = %err, "loading groups failed; retrying");
                std::thread::sleep(LOAD_RETRY_BACKOFF);
            }
        }
    }
}

impl GroupCoordinator {
    pub fn new(config: &BrokerConfig) -> GroupCoordinator {
        GroupCoordinator {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    state: GroupState::new(group_config(config)),
                    owned: BTreeMap::new(),
                    joins: HashMap::new(),
                    syncs: HashMap::new(),
                }),
                resolved: watch::Sender::new(0),
                load_hook: Mutex::new(None),
            }),
            next_waiter: AtomicU64::new(1),
            appender: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.lock()
    }

    /// Runs `hook` on the loader thread before each partition's groups are replayed (tests use
    /// it to hold a load in progress).
    #[doc(hidden)]
    pub fn set_load_hook(&self, hook: Option<LoadHook>) {
        *self.shared.load_hook.lock().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    /// The `__consumer_offsets` partition that holds `group_id`.
    pub fn partition_of(&self, broker: &Broker, group_id: &str) -> i32 {
        let count = broker
            .image()
            .topics
            .get(OFFSETS_TOPIC)
            .map(|t| t.partitions.len() as i32)
            .unwrap_or(broker.config.offsets_topic_num_partitions);
        partition_for(group_id, count)
    }

    /// Whether this broker coordinates `group_id` now (see [`ownership`]); `inner` is held so
    /// the answer stays true for the caller's state change.
    fn owns(&self, broker: &Broker, inner: &Inner, group_id: &str) -> std::result::Result<(), ErrorCode> {
        let image = broker.image();
        let count = image.topics.get(OFFSETS_TOPIC).map_or(0, |t| t.partitions.len() as i32);
        let index = partition_for(group_id, count);
        let leader = image.partition(OFFSETS_TOPIC, index).map(|p| (p.leader, p.leader_epoch));
        ownership(broker.config.node_id, leader, inner.owned.get(&index).copied())
    }

    /// Creates `__consumer_offsets` through the controller if it does not exist yet.
    pub async fn ensure_offsets_topic(&self, broker: &Arc<Broker>) -> Result<()> {
        broker
            .ensure_internal_topic(
                OFFSETS_TOPIC,
                broker.config.offsets_topic_num_partitions,
                broker.config.offsets_topic_replication_factor,
                OFFSETS_SEGMENT_BYTES,
            )
            .await
    }

    /// Follows `__consumer_offsets` leadership in a new metadata image (called by reconcile,
    /// after the replicas took their roles). A partition this broker now leads, or leads in a
    /// new leader epoch (a lead→follow→lead change can arrive as one image, and the log may have
    /// been truncated meanwhile), has its groups unloaded and replayed again on a loader thread;
    /// one it no longer leads has its groups unloaded. Nothing here blocks on file I/O.
    pub fn on_metadata(&self, broker: &Broker, image: &MetadataImage) {
        let me = broker.config.node_id;
        let Some(topic) = image.topics.get(OFFSETS_TOPIC) else { return };
        let count = topic.partitions.len() as i32;
        let mut loads = Vec::new();
        let mut completions = Vec::new();
        let mut inner = self.lock();
        let config = inner.state.config().clone();
        let leaders: Vec<(i32, i32)> = topic.partitions.iter().map(|p| (p.leader, p.leader_epoch)).collect();
        let (unload, load) = leadership_changes(me, &leaders, &inner.owned);
        for index in unload {
            inner.owned.remove(&index);
            let (gone, fx) = inner.state.unload_groups(|group| partition_for(group, count) == index);
            completions.extend(fx.completions);
            info!(partition = index, groups = gone, "{OFFSETS_TOPIC} leadership changed; groups unloaded");
        }
        for (index, leader_epoch) in load {
            match broker.partition(OFFSETS_TOPIC, index) {
                Some(partition) => {
                    inner.owned.insert(index, Owned { leader_epoch, loaded: false });
                    loads.push(LoadJob { index, leader_epoch, partition, config: config.clone() });
                }
                None => {
                    warn!(partition = index, "this broker leads {OFFSETS_TOPIC}-{index} but holds no replica of it")
                }
            }
        }
        inner.complete(completions);
        drop(inner);
        self.shared.wake_fetches();
        for job in loads {
            let shared = self.shared.clone();
            let name = format!("group-load-{}", job.index);
            let index = job.index;
            if let Err(err) = std::thread::Builder::new().name(name).spawn(move || load_groups(&shared, job)) {
                // Not owned, so the next image tries again.
                warn!(partition = index, error = %err, "could not start a group loader thread");
                self.lock().owned.remove(&index);
            }
        }
    }

    /// Queues `records` for the appender thread, one batch per `__consumer_offsets` partition,
    /// each only if its groups are loaded and the replica still leads in that epoch. Called with
    /// `inner` held, so the log order is the state machine's order.
    fn append(
        &self,
        broker: &Broker,
        inner: &Inner,
        records: &[StoreRecord],
        now_ms: i64,
        wait: bool,
        txn: Option<TxnProducer>,
    ) -> Result<Vec<DurableWait>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let topic = broker.topic(OFFSETS_TOPIC).ok_or_else(|| BrokerError::Controller {
            code: ErrorCode::COORDINATOR_NOT_AVAILABLE,
            message: format!("{OFFSETS_TOPIC} does not exist yet"),
        })?;
        let count = topic.partition_count();
        let mut by_partition: BTreeMap<i32, BatchBuilder> = BTreeMap::new();
        for record in records {
            let (key, value) = record.encode();
            by_partition
                .entry(partition_for(record.group(), count))
                .or_insert_with(|| BatchBuilder::new(Compression::None))
                .push(&Record { key: Some(key), value, headers: Vec::new(), timestamp_ms: now_ms });
        }
        let mut jobs = Vec::new();
        for (index, builder) in by_partition {
            let leader_epoch =
                inner.owned.get(&index).filter(|o| o.loaded).ok_or_else(|| not_coordinator(index))?.leader_epoch;
            let partition = topic
                .partitions
                .get(index as usize)
                .cloned()
                .flatten()
                .filter(|p| p.is_leader() && p.leader_epoch() == leader_epoch)
                .ok_or_else(|| not_coordinator(index))?;
            // A transactional batch starts at sequence 0: the coordinator's appends are not
            // sequence-checked (Kafka's `AppendOrigin.COORDINATOR`).
            let built = match txn {
                Some((producer_id, producer_epoch)) => builder.finish(producer_id, producer_epoch, 0, true),
                None => builder.finish(-1, -1, -1, false),
            };
            let batch = built.map_err(|e| BrokerError::InvalidRecord {
                topic: OFFSETS_TOPIC.into(),
                partition: index,
                reason: e.to_string(),
            })?;
            let max = partition.max_message_bytes();
            if batch.len() > max {
                return Err(BrokerError::MessageTooLarge {
                    topic: OFFSETS_TOPIC.into(),
                    size: batch.len(),
                    max: max as u32,
                });
            }
            let headers = validate_batches(&batch).map_err(|e| BrokerError::CorruptMessage {
                topic: OFFSETS_TOPIC.into(),
                partition: index,
                reason: e.to_string(),
            })?;
            jobs.push((partition, leader_epoch, batch, headers));
        }
        let appender = self.appender.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            let flusher = broker.flusher.clone();
            let mode = broker.config.log_flush_mode;
            if let Err(err) =
                std::thread::Builder::new().name("group-append".into()).spawn(move || run_appender(rx, flusher, mode))
            {
                warn!(error = %err, "could not start the group appender thread");
            }
            tx
        });
        let mut waits = Vec::new();
        for (partition, leader_epoch, batch, headers) in jobs {
            let (done, appended) = if wait {
                let (done, appended) = oneshot::channel();
                (Some(done), Some(appended))
            } else {
                (None, None)
            };
            let job = AppendJob {
                partition: partition.clone(),
                leader_epoch,
                batch,
                headers,
                transactional: txn.is_some(),
                now_ms,
                done,
            };
            if appender.send(job).is_err() {
                return Err(BrokerError::Controller {
                    code: ErrorCode::COORDINATOR_NOT_AVAILABLE,
                    message: "the group appender thread is gone".into(),
                });
            }
            // Like acks=all: answered once the whole ISR has it (and, in fsync mode, the leader
            // has fsynced it), i.e. once the high watermark passes it.
            if let Some(appended) = appended {
                waits.push(DurableWait { appended, partition, leader_epoch });
            }
        }
        Ok(waits)
    }

    /// Queues best-effort records (group metadata, tombstones) and answers parked requests.
    fn finish(&self, broker: &Broker, inner: &mut Inner, mut effects: Effects, now_ms: i64) {
        if !effects.records.is_empty() {
            shrink_oversized_group_records(&mut effects.records, broker.config.message_max_bytes as usize);
            if let Err(err) = self.append(broker, inner, &effects.records, now_ms, false, None) {
                // Group metadata is rebuilt by members rejoining; a lost record costs a rebalance
                // after a restart, never a wrong answer now.
                warn!(error = %err, "appending group metadata to {OFFSETS_TOPIC} failed");
            }
        }
        inner.complete(effects.completions);
    }

    pub fn join(&self, broker: &Broker, req: JoinRequest, now_ms: i64) -> Wait<JoinResult> {
        let mut inner = self.lock();
        if let Err(code) = self.owns(broker, &inner, &req.group_id) {
            return Wait::Now(JoinResult::error(&req.member_id, code));
        }
        let waiter = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        inner.joins.insert(waiter, tx);
        let (answer, effects) = inner.state.join(req, waiter, now_ms);
        self.finish(broker, &mut inner, effects, now_ms);
        match answer {
            Answer::Now(result) => {
                inner.joins.remove(&waiter);
                Wait::Now(result)
            }
            Answer::Parked => Wait::Later(rx),
        }
    }

    #[expect(clippy::too_many_arguments, reason = "one argument per SyncGroup field")]
    pub fn sync(
        &self,
        broker: &Broker,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, bytes::Bytes)>,
        now_ms: i64,
    ) -> Wait<SyncResult> {
        let mut inner = self.lock();
        if let Err(code) = self.owns(broker, &inner, group_id) {
            return Wait::Now(SyncResult::error(code));
        }
        let waiter = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        inner.syncs.insert(waiter, tx);
        let (answer, effects) = inner.state.sync(
            group_id,
            generation_id,
            member_id,
            group_instance_id,
            protocol_type,
            protocol_name,
            assignments,
            waiter,
            now_ms,
        );
        self.finish(broker, &mut inner, effects, now_ms);
        match answer {
            Answer::Now(result) => {
                inner.syncs.remove(&waiter);
                Wait::Now(result)
            }
            // The leader's own sync may have been answered already by `finish`.
            Answer::Parked => Wait::Later(rx),
        }
    }

    pub fn heartbeat(
        &self,
        broker: &Broker,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        now_ms: i64,
    ) -> ErrorCode {
        let mut inner = self.lock();
        if let Err(code) = self.owns(broker, &inner, group_id) {
            return code;
        }
        inner.state.heartbeat(group_id, generation_id, member_id, group_instance_id, now_ms)
    }

    pub fn leave(
        &self,
        broker: &Broker,
        group_id: &str,
        leaving: &[LeavingMember],
        now_ms: i64,
    ) -> std::result::Result<Vec<ErrorCode>, ErrorCode> {
        let mut inner = self.lock();
        self.owns(broker, &inner, group_id)?;
        let (result, effects) = inner.state.leave(group_id, leaving, now_ms);
        self.finish(broker, &mut inner, effects, now_ms);
        result
    }

    /// OffsetCommit: one error per partition (in request order), and the commit to wait for when
    /// any was accepted. Accepted offsets are staged: shown to OffsetFetch only once durable.
    #[expect(clippy::too_many_arguments, reason = "one argument per OffsetCommit field")]
    pub fn commit(
        &self,
        broker: &Broker,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        partitions: Vec<CommitPartition>,
        now_ms: i64,
    ) -> (Vec<ErrorCode>, Option<PendingCommit>) {
        let mut inner = self.lock();
        if let Err(code) = self.owns(broker, &inner, group_id) {
            return (partitions.iter().map(|_| code).collect(), None);
        }
        if let Err(code) = inner.state.validate_commit(group_id, generation_id, member_id, group_instance_id, now_ms) {
            return (partitions.iter().map(|_| code).collect(), None);
        }
        let (errors, plan) = commit_plan(broker, &inner.state, group_id, partitions, now_ms);
        if plan.offsets.is_empty() {
            return (errors, None);
        }
        let records = offset_records(&plan);
        match self.append(broker, &inner, &records, now_ms, true, None) {
            Ok(waits) => {
                let staged = inner.state.stage_commit(plan);
                let pending =
                    self.resolve_when_durable(waits, move |state, durable| state.complete_commit(staged, durable));
                (errors, Some(pending))
            }
            Err(err) => {
                warn!(group = group_id, error = %err, "offset commit append failed");
                let code = storage_error_code(&err);
                (errors.into_iter().map(|e| if e.is_ok() { code } else { e }).collect(), None)
            }
        }
    }

    /// TxnOffsetCommit: one error per partition (in request order), and the append to wait for
    /// when any was accepted. The offsets go to `__consumer_offsets` as one transactional batch
    /// of `producer_id`/`producer_epoch` and stay pending for that producer (never shown by
    /// OffsetFetch) until its marker comes ([`GroupCoordinator::complete_txn`]). The group is
    /// created Empty if it does not exist; member, instance and generation are checked when
    /// given (KIP-447).
    #[expect(clippy::too_many_arguments, reason = "one argument per TxnOffsetCommit field")]
    pub fn txn_offset_commit(
        &self,
        broker: &Broker,
        group_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        partitions: Vec<CommitPartition>,
        now_ms: i64,
    ) -> (Vec<ErrorCode>, Option<PendingCommit>) {
        let mut inner = self.lock();
        if let Err(code) = self.owns(broker, &inner, group_id) {
            return (partitions.iter().map(|_| code).collect(), None);
        }
        let validated = inner.state.validate_txn_commit(group_id, generation_id, member_id, group_instance_id, now_ms);
        if let Err(code) = validated {
            return (partitions.iter().map(|_| code).collect(), None);
        }
        let (errors, plan) = commit_plan(broker, &inner.state, group_id, partitions, now_ms);
        if plan.offsets.is_empty() {
            return (errors, None);
        }
        let records = offset_records(&plan);
        match self.append(broker, &inner, &records, now_ms, true, Some((producer_id, producer_epoch))) {
            Ok(waits) => {
                let staged = inner.state.stage_txn_commit(plan, producer_id);
                let pending =
                    self.resolve_when_durable(waits, move |state, durable| state.complete_txn_commit(staged, durable));
                (errors, Some(pending))
            }
            Err(err) => {
                warn!(group = group_id, producer_id, error = %err, "transactional offset commit append failed");
                let code = storage_error_code(&err);
                (errors.into_iter().map(|e| if e.is_ok() { code } else { e }).collect(), None)
            }
        }
    }

    /// `producer_id`'s COMMIT (`commit`) or ABORT marker was appended to
    /// `__consumer_offsets-<offsets_partition>`: its pending transactional offsets in that
    /// partition's groups become committed (each unless a later-appended commit of the same
    /// partition is there) or are dropped, and OffsetFetch requests waiting are woken. Call it
    /// once the marker is in the log (Kafka calls it once the marker is durable). A partition
    /// whose groups are still loading is left to the loader, which replays up to the log end,
    /// markers included, before taking over.
    pub fn complete_txn(&self, broker: &Broker, offsets_partition: i32, producer_id: i64, commit: bool) {
        let count = broker.image().topics.get(OFFSETS_TOPIC).map_or(0, |t| t.partitions.len() as i32);
        {
            let mut inner = self.lock();
            if !inner.owned.get(&offsets_partition).is_some_and(|o| o.loaded) {
                return;
            }
            let completed =
                inner.state.complete_txn(producer_id, commit, |group| partition_for(group, count) == offsets_partition);
            if completed > 0 {
                // Per transaction of every exactly-once app: far too often for info.
                debug!(
                    partition = offsets_partition,
                    producer_id,
                    commit,
                    offsets = completed,
                    "transactional offsets completed"
                );
            }
        }
        self.shared.wake_fetches();
    }

    /// Resolves a staged commit on its own task (so it resolves even if the committing
    /// connection goes away): `complete` is told whether the appends became durable.
    fn resolve_when_durable(
        &self,
        waits: Vec<DurableWait>,
        complete: impl FnOnce(&mut GroupState, bool) + Send + 'static,
    ) -> PendingCommit {
        let (tx, answer) = oneshot::channel();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let result = wait_all_durable(waits).await;
            complete(&mut shared.lock().state, result.is_ok());
            shared.wake_fetches();
            let _ = tx.send(result);
        });
        PendingCommit { answer }
    }

    /// OffsetFetch for one group. Commits of the asked partitions still in flight are waited
    /// for (bounded by their own timeout): Kafka serves a connection's requests one at a time,
    /// so a client's OffsetFetch sent right after its OffsetCommit sees that commit. Offsets
    /// pending in a transaction are not waited for: with `require_stable` their partitions
    /// answer UNSTABLE_OFFSET_COMMIT, without it the last committed offset is returned.
    pub async fn fetch_offsets(
        &self,
        broker: &Broker,
        group_id: &str,
        partitions: Option<&[(String, i32)]>,
        require_stable: bool,
    ) -> std::result::Result<Vec<FetchedOffset>, ErrorCode> {
        let deadline = tokio::time::Instant::now() + COMMIT_DURABLE_TIMEOUT;
        let mut resolved = self.shared.resolved.subscribe();
        loop {
            {
                let inner = self.lock();
                self.owns(broker, &inner, group_id)?;
                if !inner.state.has_pending_offsets(group_id, partitions) || tokio::time::Instant::now() >= deadline {
                    return Ok(inner.state.fetch_offsets(group_id, partitions, require_stable));
                }
            }
            let _ = tokio::time::timeout_at(deadline, resolved.changed()).await;
        }
    }

    pub fn describe(&self, broker: &Broker, group_id: &str) -> std::result::Result<GroupDescription, ErrorCode> {
        let inner = self.lock();
        self.owns(broker, &inner, group_id)?;
        Ok(inner.state.describe(group_id))
    }

    /// ListGroups: the groups this broker coordinates and has loaded (while a partition loads,
    /// the API answers COORDINATOR_LOAD_IN_PROGRESS with these, as Kafka does).
    pub fn list(&self, states: &[String]) -> Vec<(String, String, &'static str)> {
        self.lock().state.list(states)
    }

    /// Every committed offset of the groups this broker coordinates: (group, topic, partition,
    /// offset), for the metrics endpoint.
    pub fn committed_offsets(&self) -> Vec<(String, String, i32, i64)> {
        self.lock().state.committed_offsets()
    }

    /// Whether any `__consumer_offsets` partition this broker leads is still loading.
    pub fn is_loading(&self) -> bool {
        self.lock().owned.values().any(|o| !o.loaded)
    }

    /// DeleteGroups: one error per group, and the tombstone appends to wait for.
    pub fn delete_groups(
        &self,
        broker: &Broker,
        group_ids: &[String],
        now_ms: i64,
    ) -> (Vec<ErrorCode>, Vec<DurableWait>) {
        let mut inner = self.lock();
        let mut errors = Vec::with_capacity(group_ids.len());
        let mut records = Vec::new();
        for group_id in group_ids {
            if let Err(code) = self.owns(broker, &inner, group_id) {
                errors.push(code);
                continue;
            }
            match inner.state.delete_group(group_id) {
                Ok(tombstones) => {
                    records.extend(tombstones);
                    errors.push(ErrorCode::NONE);
                }
                Err(code) => errors.push(code),
            }
        }
        match self.append(broker, &inner, &records, now_ms, true, None) {
            Ok(waits) => (errors, waits),
            Err(err) => {
                // The groups are gone from memory; without their tombstones they would come back
                // at the next start, so report the failure.
                warn!(error = %err, "appending group tombstones failed");
                let code = storage_error_code(&err);
                (errors.into_iter().map(|e| if e.is_ok() { code } else { e }).collect(), Vec::new())
            }
        }
    }

    /// OffsetDelete: the group error, or one error per partition; and the appends to wait for.
    pub fn delete_offsets(
        &self,
        broker: &Broker,
        group_id: &str,
        partitions: &[(String, i32)],
        now_ms: i64,
    ) -> (std::result::Result<Vec<ErrorCode>, ErrorCode>, Vec<DurableWait>) {
        let mut inner = self.lock();
        if let Err(code) = self.owns(broker, &inner, group_id) {
            return (Err(code), Vec::new());
        }
        match inner.state.delete_offsets(group_id, partitions) {
            Err(code) => (Err(code), Vec::new()),
            Ok((errors, records)) => match self.append(broker, &inner, &records, now_ms, true, None) {
                Ok(waits) => (Ok(errors), waits),
                Err(err) => {
                    warn!(group = group_id, error = %err, "appending offset tombstones failed");
                    (Err(storage_error_code(&err)), Vec::new())
                }
            },
        }
    }

    /// Runs the state machine's timers; called periodically by the server.
    pub fn tick(&self, broker: &Broker, now_ms: i64) {
        let mut inner = self.lock();
        let effects = inner.state.tick(now_ms);
        self.finish(broker, &mut inner, effects, now_ms);
    }
}

/// Checks each partition of an OffsetCommit or TxnOffsetCommit (the topic exists, the metadata
/// fits): one error per partition, and the offsets accepted.
fn commit_plan(
    broker: &Broker,
    state: &GroupState,
    group_id: &str,
    partitions: Vec<CommitPartition>,
    now_ms: i64,
) -> (Vec<ErrorCode>, CommitPlan) {
    let max_metadata = state.config().offset_metadata_max_bytes;
    let mut errors = Vec::with_capacity(partitions.len());
    let mut plan = CommitPlan { group_id: group_id.to_string(), offsets: Vec::new() };
    let image = broker.image();
    for p in partitions {
        let metadata = p.metadata.unwrap_or_default();
        let code = if image.partition(&p.topic, p.partition).is_none() {
            ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
        } else if metadata.len() > max_metadata {
            ErrorCode::OFFSET_METADATA_TOO_LARGE
        } else {
            plan.offsets.push((
                p.topic,
                p.partition,
                OffsetValue {
                    offset: p.offset,
                    leader_epoch: p.leader_epoch,
                    metadata,
                    commit_timestamp_ms: now_ms,
                    expire_timestamp_ms: None,
                },
            ));
            ErrorCode::NONE
        };
        errors.push(code);
    }
    (errors, plan)
}

/// The `__consumer_offsets` records of a commit plan.
fn offset_records(plan: &CommitPlan) -> Vec<StoreRecord> {
    plan.offsets
        .iter()
        .map(|(topic, partition, value)| StoreRecord::Offset {
            group: plan.group_id.clone(),
            topic: topic.clone(),
            partition: *partition,
            value: Some(value.clone()),
        })
        .collect()
}

/// A group record whose member blobs would not fit one batch keeps its members without them:
/// loading only needs the generation and protocol type.
fn shrink_oversized_group_records(records: &mut [StoreRecord], max_bytes: usize) {
    for record in records.iter_mut() {
        if let StoreRecord::Group { value: Some(v), group } = record {
            if super::store::group_value_size(v) + 1024 > max_bytes {
                warn!(group = %group, "group metadata exceeds max.message.bytes; storing it without member metadata");
                for m in &mut v.members {
                    m.subscription = bytes::Bytes::new();
                    m.assignment = bytes::Bytes::new();
                }
            }
        }
    }
}

/// Replays one partition into `state` from offset `from` to the log end as it is now; returns
/// the records read and the offset it stopped at. Offset records of a transactional batch are
/// held pending for its producer; that producer's COMMIT or ABORT marker (a control batch)
/// applies or drops them.
fn replay_partition(p: &Partition, state: &mut GroupState, from: i64, now_ms: i64) -> Result<(usize, i64)> {
    let offsets = p.offsets();
    let mut offset = from.max(offsets.log_start_offset);
    // To the log end: a new leader's whole log becomes committed as its followers copy it, and
    // commits acknowledged under the old leader may lie above this replica's high watermark.
    let end = offsets.log_end_offset;
    let mut loaded = 0;
    while offset < end {
        let bytes = p.read(offset, LOAD_READ_BYTES, end)?;
        let mut next = offset;
        for (position, header) in BatchIter::new(&bytes) {
            next = header.last_offset() + 1;
            let batch = bytes.slice(position..position + header.total_bytes());
            let mut records = Vec::new();
            if let Err(err) = decode_records(&batch, LOAD_MAX_DECOMPRESSED_BYTES, &mut records) {
                warn!(partition = %p.tp, offset = header.base_offset, error = %err, "skipping undecodable batch");
                continue;
            }
            if header.is_control() {
                // A marker's batch holds exactly one control record.
                let marker = records.first().filter(|r| r.offset >= offset).and_then(|r| r.key.as_deref());
                match marker.map(transaction_marker) {
                    Some(Some(commit)) => {
                        state.complete_txn(header.producer_id, commit, |_| true);
                    }
                    Some(None) => {
                        warn!(partition = %p.tp, offset = header.base_offset, "skipping unknown control record")
                    }
                    None => {}
                }
                continue;
            }
            for r in records.into_iter().filter(|r| r.offset >= offset) {
                let Some(key) = r.key else { continue };
                match StoreRecord::decode(&key, r.value.as_deref()) {
                    Ok(record) if header.is_transactional() => {
                        state.load_transactional(header.producer_id, record, now_ms);
                        loaded += 1;
                    }
                    Ok(record) => {
                        state.load(record, now_ms);
                        loaded += 1;
                    }
                    Err(err) => warn!(partition = %p.tp, offset = r.offset, error = %err, "skipping record"),
                }
            }
        }
        if next <= offset {
            warn!(partition = %p.tp, offset, end, "replay made no progress; stopping");
            break;
        }
        offset = next;
    }
    Ok((loaded, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::test_support::{image, open, produce};

    fn durable_wait(partition: &Arc<Partition>, last_offset: i64, leader_epoch: i32) -> DurableWait {
        let (tx, appended) = oneshot::channel();
        tx.send(Ok(last_offset)).unwrap();
        DurableWait { appended, partition: partition.clone(), leader_epoch }
    }

    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(10)
    }

    #[tokio::test]
    async fn a_write_is_durable_once_the_isr_has_it_under_the_same_leader() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path(), 1);
        p.make_leader(&image(&[1, 2], &[1, 2], 1, 1, 1), None, 0).unwrap();
        let last = produce(&p, &["commit"], None).last_offset;
        let waiting = tokio::spawn(wait_durable(durable_wait(&p, last, 1), soon()));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the follower does not have it yet");
        p.record_follower_fetch(2, last + 1, 0, 0);
        assert_eq!(waiting.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn a_follower_high_watermark_never_makes_a_write_durable() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path(), 1);
        p.make_leader(&image(&[1, 2], &[1, 2], 1, 1, 1), None, 0).unwrap();
        let last = produce(&p, &["commit"], None).last_offset;
        let waiting = tokio::spawn(wait_durable(durable_wait(&p, last, 1), soon()));
        tokio::task::yield_now().await;
        // Broker 2 takes over in epoch 2; its high watermark covers our offset, but the record
        // there may be another one (ours truncated away).
        p.make_follower(&image(&[1, 2], &[1, 2], 2, 2, 2));
        p.update_follower_high_watermark(last + 1);
        assert_eq!(waiting.await.unwrap(), Err(ErrorCode::NOT_COORDINATOR));
        // Leading again in a later epoch does not revive a wait from the old one either.
        p.make_leader(&image(&[1, 2], &[1, 2], 1, 3, 3), None, 0).unwrap();
        let wait = durable_wait(&p, last, 1);
        assert_eq!(wait_durable(wait, soon()).await, Err(ErrorCode::NOT_COORDINATOR));
    }

    /// One batch of offset records `(group, partition of topic "t", offset)`, transactional
    /// when `producer` is given.
    fn offsets_batch(offsets: &[(&str, i32, i64)], producer: Option<(i64, i16)>) -> Bytes {
        let mut builder = BatchBuilder::new(Compression::None);
        for &(group, partition, offset) in offsets {
            let value = OffsetValue {
                offset,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp_ms: 0,
                expire_timestamp_ms: None,
            };
            let record = StoreRecord::Offset { group: group.into(), topic: "t".into(), partition, value: Some(value) };
            let (key, value) = record.encode();
            builder.push(&Record { key: Some(key), value, headers: Vec::new(), timestamp_ms: 0 });
        }
        match producer {
            Some((id, epoch)) => builder.finish(id, epoch, 0, true).unwrap(),
            None => builder.finish(-1, -1, -1, false).unwrap(),
        }
    }

    /// Appends `batch` at the log end as a follower of epoch 1 would (no producer checks, so
    /// control batches go in as a leader's markers would).
    fn append_replicated(p: &Partition, batch: Bytes) {
        let mut batch = bytes::BytesMut::from(&batch[..]);
        spate_client::protocol::record::set_base_offset(&mut batch, p.offsets().log_end_offset);
        spate_client::protocol::record::set_partition_leader_epoch(&mut batch, 1);
        p.append_as_follower(&batch.freeze(), 1, 0).unwrap();
    }

    fn stable(state: &GroupState, group: &str, partition: i32) -> std::result::Result<Option<i64>, ErrorCode> {
        let (_, _, result) = state.fetch_offsets(group, Some(&[("t".into(), partition)]), true).remove(0);
        result.map(|v| v.map(|v| v.offset))
    }

    #[test]
    fn replay_holds_transactional_offsets_until_their_markers() {
        use crate::txn::marker::control_batch;
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path(), 1);
        p.make_follower(&image(&[1, 2], &[1, 2], 2, 1, 1));
        append_replicated(&p, offsets_batch(&[("g", 0, 1)], None));
        append_replicated(&p, offsets_batch(&[("g", 0, 2), ("g", 1, 3)], Some((7, 0))));
        append_replicated(&p, offsets_batch(&[("g", 2, 4)], Some((8, 0))));
        // A plain commit of partition 1 after producer 7's: it stays when 7 commits.
        append_replicated(&p, offsets_batch(&[("g", 1, 5)], None));
        append_replicated(&p, control_batch(7, 0, true, 0, 0));
        append_replicated(&p, control_batch(8, 0, false, 0, 0));
        // Producer 9's transaction is still open at the log end.
        append_replicated(&p, offsets_batch(&[("g", 3, 6)], Some((9, 0))));
        // A group known only from a committed transaction.
        append_replicated(&p, offsets_batch(&[("h", 0, 7)], Some((10, 0))));
        append_replicated(&p, control_batch(10, 0, true, 0, 0));

        let mut state = GroupState::new(GroupConfig::default());
        let (records, end) = replay_partition(&p, &mut state, 0, 0).unwrap();
        assert_eq!((records, end), (7, p.offsets().log_end_offset));
        assert_eq!(stable(&state, "g", 0), Ok(Some(2)));
        assert_eq!(stable(&state, "g", 1), Ok(Some(5)));
        assert_eq!(stable(&state, "g", 2), Ok(None));
        assert_eq!(stable(&state, "g", 3), Err(ErrorCode::UNSTABLE_OFFSET_COMMIT));
        assert_eq!(state.fetch_offsets("g", Some(&[("t".into(), 3)]), false)[0].2, Ok(None));
        assert_eq!(stable(&state, "h", 0), Ok(Some(7)));

        // Producer 9's marker arrives after the replay reached the end: replaying on from there
        // (as the loader does before taking over) applies it.
        append_replicated(&p, control_batch(9, 0, true, 0, 0));
        let (records, end) = replay_partition(&p, &mut state, end, 0).unwrap();
        assert_eq!((records, end), (0, p.offsets().log_end_offset));
        assert_eq!(stable(&state, "g", 3), Ok(Some(6)));
    }

    /// A single-node broker with `__consumer_offsets` of one partition and a topic "t",
    /// serving until the sender is dropped or sent to.
    async fn start_broker(dir: &std::path::Path) -> (Arc<Broker>, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = BrokerConfig {
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            data_dir: dir.to_path_buf(),
            offsets_topic_num_partitions: 1,
            ..Default::default()
        };
        let server = crate::Server::start(config).await.unwrap();
        let broker = server.broker.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        if broker.topic("t").is_none() {
            broker.create_topic("t", 2, -1, BTreeMap::new()).await.unwrap();
        }
        broker.groups.ensure_offsets_topic(&broker).await.unwrap();
        // Loaded once an OffsetFetch is answered.
        while broker.groups.fetch_offsets(&broker, "g", None, false).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (broker, stop, task)
    }

    fn commit_partition(partition: i32, offset: i64) -> CommitPartition {
        CommitPartition { topic: "t".into(), partition, offset, leader_epoch: -1, metadata: None }
    }

    async fn fetched(
        broker: &Broker,
        partition: i32,
        require_stable: bool,
    ) -> std::result::Result<Option<i64>, ErrorCode> {
        let wanted = [("t".to_string(), partition)];
        let mut offsets = broker.groups.fetch_offsets(broker, "g", Some(&wanted), require_stable).await.unwrap();
        offsets.remove(0).2.map(|v| v.map(|v| v.offset))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transactional_commit_is_one_transactional_batch_pending_until_its_marker() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, stop, task) = start_broker(dir.path()).await;
        let groups = &broker.groups;
        let (errors, pending) = groups.txn_offset_commit(
            &broker,
            "g",
            42,
            3,
            -1,
            "",
            None,
            vec![commit_partition(0, 10), commit_partition(1, 11), commit_partition(9, 1)],
            now_ms(),
        );
        assert_eq!(errors, vec![ErrorCode::NONE, ErrorCode::NONE, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION]);
        assert_eq!(pending.unwrap().outcome().await, Ok(()));
        // One transactional batch of the producer, at sequence 0.
        let p = broker.partition(OFFSETS_TOPIC, 0).unwrap();
        let bytes = p.read(0, 1 << 20, p.offsets().log_end_offset).unwrap();
        let headers: Vec<BatchHeader> = BatchIter::new(&bytes).map(|(_, h)| h).collect();
        let txn: Vec<&BatchHeader> = headers.iter().filter(|h| h.is_transactional()).collect();
        assert_eq!(txn.len(), 1);
        assert_eq!(
            (txn[0].producer_id, txn[0].producer_epoch, txn[0].base_sequence, txn[0].records_count),
            (42, 3, 0, 2)
        );
        // Durable, but pending until the marker.
        assert_eq!(fetched(&broker, 0, false).await, Ok(None));
        assert_eq!(fetched(&broker, 0, true).await, Err(ErrorCode::UNSTABLE_OFFSET_COMMIT));
        // An unknown member of a group that exists is refused (KIP-447 identity).
        let (errors, pending) =
            groups.txn_offset_commit(&broker, "g", 42, 3, 1, "ghost", None, vec![commit_partition(0, 12)], now_ms());
        assert_eq!((errors, pending.is_none()), (vec![ErrorCode::UNKNOWN_MEMBER_ID], true));

        // Restarted without a marker: the replay keeps the transaction open.
        let _ = stop.send(());
        task.await.unwrap();
        drop(broker);
        let (broker, stop, task) = start_broker(dir.path()).await;
        assert_eq!(fetched(&broker, 1, true).await, Err(ErrorCode::UNSTABLE_OFFSET_COMMIT));
        // The COMMIT marker: both offsets apply.
        broker.groups.complete_txn(&broker, 0, 42, true);
        assert_eq!(fetched(&broker, 0, true).await, Ok(Some(10)));
        assert_eq!(fetched(&broker, 1, true).await, Ok(Some(11)));
        // An aborted one leaves the committed offsets as they were.
        let (_, pending) =
            broker.groups.txn_offset_commit(&broker, "g", 43, 0, -1, "", None, vec![commit_partition(0, 20)], now_ms());
        assert_eq!(pending.unwrap().outcome().await, Ok(()));
        broker.groups.complete_txn(&broker, 0, 43, false);
        assert_eq!(fetched(&broker, 0, true).await, Ok(Some(10)));
        let _ = stop.send(());
        task.await.unwrap();
    }

    #[test]
    fn a_new_leader_epoch_reloads_the_partitions_groups() {
        let owned: BTreeMap<i32, Owned> = [
            (0, Owned { leader_epoch: 4, loaded: true }),
            (1, Owned { leader_epoch: 2, loaded: true }),
            (2, Owned { leader_epoch: 7, loaded: false }),
        ]
        .into();
        // 0: led here again in a later epoch (lead→follow→lead in one image); 1: unchanged;
        // 2: moved to broker 2; 3: newly led here.
        let leaders = [(1, 6), (1, 2), (2, 8), (1, 1)];
        assert_eq!(leadership_changes(1, &leaders, &owned), (vec![0, 2], vec![(0, 6), (3, 1)]));
        assert_eq!(leadership_changes(1, &[(1, 4), (1, 2), (1, 7)], &owned), (vec![], vec![]));
    }

    #[test]
    fn the_newest_image_decides_who_coordinates() {
        let loaded = |leader_epoch| Some(Owned { leader_epoch, loaded: true });
        let loading = |leader_epoch| Some(Owned { leader_epoch, loaded: false });
        assert_eq!(ownership(1, Some((1, 4)), loaded(4)), Ok(()));
        // Named by the image but not loaded yet (or reconcile has not run): clients retry.
        assert_eq!(ownership(1, Some((1, 4)), loading(4)), Err(ErrorCode::COORDINATOR_LOAD_IN_PROGRESS));
        assert_eq!(ownership(1, Some((1, 4)), None), Err(ErrorCode::COORDINATOR_LOAD_IN_PROGRESS));
        // Loaded in an older epoch (lead, follow, lead again in one image): reload first.
        assert_eq!(ownership(1, Some((1, 6)), loaded(4)), Err(ErrorCode::COORDINATOR_LOAD_IN_PROGRESS));
        assert_eq!(ownership(1, Some((2, 5)), loaded(4)), Err(ErrorCode::NOT_COORDINATOR));
        assert_eq!(ownership(1, None, None), Err(ErrorCode::NOT_COORDINATOR));
    }
}

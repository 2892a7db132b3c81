//! The async shell around [`GroupState`]: it owns the state machine behind one lock, hands
//! parked JoinGroup/SyncGroup requests a oneshot channel, appends the state machine's records
//! to `__consumer_offsets` (creating the topic on first need), and replays that topic at start.
//!
//! Order: records are appended while the lock is held, so the log holds them in the order the
//! state machine produced them and a replay rebuilds the same state. Offsets are applied in
//! memory only after their append succeeded; the OffsetCommit response additionally waits until
//! the append is durable (like `acks=all`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use spate_client::protocol::compression::Compression;
use spate_client::protocol::record::{decode_records, validate_batches, BatchBuilder, BatchIter, Record};
use spate_client::protocol::ErrorCode;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use super::state::{
    Answer, CommitPlan, Completion, Effects, GroupConfig, GroupDescription, GroupState, JoinRequest, JoinResult,
    LeavingMember, SyncResult, WaiterId,
};
use super::store::{OffsetValue, StoreRecord};
use super::{partition_for, OFFSETS_TOPIC};
use crate::broker::Broker;
use crate::config::{BrokerConfig, FlushMode};
use crate::controller::MetadataImage;
use crate::error::{BrokerError, Result};
use crate::partition::Partition;

/// Kafka's `offsets.topic.segment.bytes` default.
const OFFSETS_SEGMENT_BYTES: &str = "104857600";
/// Bytes read per step when replaying `__consumer_offsets`.
const LOAD_READ_BYTES: usize = 1 << 20;
/// Bound on a decompressed batch during replay (our own batches are never compressed).
const LOAD_MAX_DECOMPRESSED_BYTES: usize = 64 << 20;

/// A JoinGroup or SyncGroup answer: now, or once the rebalance gets there.
pub enum Wait<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

/// An append that must be durable before its request is answered.
pub struct DurableWait {
    pub durable: watch::Receiver<i64>,
    pub needed: i64,
}

/// One partition of an OffsetCommit.
pub struct CommitPartition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

struct Inner {
    state: GroupState,
    /// `__consumer_offsets` partitions this broker leads and has loaded: it coordinates exactly
    /// the groups that hash to them.
    owned: BTreeSet<i32>,
    /// Partition count of `__consumer_offsets` (0 until it exists).
    offsets_partitions: i32,
    joins: HashMap<WaiterId, oneshot::Sender<JoinResult>>,
    syncs: HashMap<WaiterId, oneshot::Sender<SyncResult>>,
}

pub struct GroupCoordinator {
    inner: Mutex<Inner>,
    next_waiter: AtomicU64,
}

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
        _ => ErrorCode::COORDINATOR_NOT_AVAILABLE,
    }
}

impl GroupCoordinator {
    pub fn new(config: &BrokerConfig) -> GroupCoordinator {
        GroupCoordinator {
            inner: Mutex::new(Inner {
                state: GroupState::new(group_config(config)),
                owned: BTreeSet::new(),
                offsets_partitions: 0,
                joins: HashMap::new(),
                syncs: HashMap::new(),
            }),
            next_waiter: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state machine never panics on peer input; if our own bug did, the state it left is
        // still a valid group state, so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
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

    /// NOT_COORDINATOR unless this broker leads (and has loaded) the group's partition.
    pub fn check_coordinator(&self, group_id: &str) -> std::result::Result<(), ErrorCode> {
        let inner = self.lock();
        if inner.offsets_partitions > 0 && inner.owned.contains(&partition_for(group_id, inner.offsets_partitions)) {
            Ok(())
        } else {
            Err(ErrorCode::NOT_COORDINATOR)
        }
    }

    /// Creates `__consumer_offsets` through the controller if it does not exist yet.
    pub async fn ensure_offsets_topic(&self, broker: &Arc<Broker>) -> Result<()> {
        if broker.image().topics.contains_key(OFFSETS_TOPIC) {
            return Ok(());
        }
        let mut configs = BTreeMap::new();
        configs.insert("cleanup.policy".to_string(), "compact".to_string());
        configs.insert("segment.bytes".to_string(), OFFSETS_SEGMENT_BYTES.to_string());
        // Kafka refuses to create it on a cluster smaller than the factor; lowering the factor
        // instead keeps a single node (and a cluster still starting) working.
        let live = broker.image().live_brokers().count().max(1);
        let factor = (broker.config.offsets_topic_replication_factor as usize).min(live) as i16;
        match broker.create_topic(OFFSETS_TOPIC, broker.config.offsets_topic_num_partitions, factor, configs).await {
            Ok(t) => {
                info!(partitions = t.partition_count(), replication_factor = factor, "created {OFFSETS_TOPIC}");
                Ok(())
            }
            Err(_) if broker.image().topics.contains_key(OFFSETS_TOPIC) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Follows `__consumer_offsets` leadership in a new metadata image: loads the groups of
    /// partitions this broker now leads (replaying them to the log end, which the ISR will
    /// hold) and forgets those of partitions it no longer leads.
    pub fn on_metadata(&self, broker: &Broker, image: &MetadataImage, now_ms: i64) {
        let me = broker.config.node_id;
        let Some(topic) = image.topics.get(OFFSETS_TOPIC) else { return };
        let count = topic.partitions.len() as i32;
        let mut inner = self.lock();
        inner.offsets_partitions = count;
        for (index, p) in topic.partitions.iter().enumerate() {
            let index = index as i32;
            let leads = p.leader == me;
            let owned = inner.owned.contains(&index);
            if leads && !owned {
                let Some(partition) = broker.partition(OFFSETS_TOPIC, index) else { continue };
                match replay_partition(&partition, &mut inner.state, now_ms) {
                    Ok(loaded) => {
                        inner.owned.insert(index);
                        if loaded > 0 {
                            info!(partition = index, records = loaded, "loaded groups of {OFFSETS_TOPIC}");
                        }
                    }
                    Err(err) => warn!(partition = index, error = %err, "loading groups failed"),
                }
            } else if !leads && owned {
                inner.owned.remove(&index);
                let gone = inner.state.unload_groups(|group| partition_for(group, count) == index);
                info!(partition = index, groups = gone, "{OFFSETS_TOPIC} leadership moved; groups unloaded");
            }
        }
    }

    /// Appends `records`, one batch per `__consumer_offsets` partition.
    fn append(&self, broker: &Broker, records: &[StoreRecord], now_ms: i64) -> Result<Vec<DurableWait>> {
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
        let mut waits = Vec::new();
        for (index, builder) in by_partition {
            let partition =
                topic.partitions.get(index as usize).cloned().flatten().filter(|p| p.is_leader()).ok_or_else(|| {
                    BrokerError::Controller {
                        code: ErrorCode::NOT_COORDINATOR,
                        message: format!("this broker does not lead {OFFSETS_TOPIC}-{index}"),
                    }
                })?;
            let partition = &partition;
            let batch = builder.finish(-1, -1, -1, false).map_err(|e| BrokerError::InvalidRecord {
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
            let outcome = partition.append(&batch, &headers, now_ms)?;
            if broker.config.log_flush_mode == FlushMode::Fsync {
                broker.mark_dirty(partition);
            }
            // Like acks=all: answered once the whole ISR has it (and, in fsync mode, the leader
            // has fsynced it), i.e. once the high watermark passes it.
            waits.push(DurableWait { durable: partition.subscribe_high_watermark(), needed: outcome.last_offset + 1 });
        }
        Ok(waits)
    }

    /// Appends best-effort records (group metadata, tombstones) and answers parked requests.
    fn finish(&self, broker: &Broker, inner: &mut Inner, mut effects: Effects, now_ms: i64) {
        if !effects.records.is_empty() {
            shrink_oversized_group_records(&mut effects.records, broker.config.message_max_bytes as usize);
            if let Err(err) = self.append(broker, &effects.records, now_ms) {
                // Group metadata is rebuilt by members rejoining; a lost record costs a rebalance
                // after a restart, never a wrong answer now.
                warn!(error = %err, "appending group metadata to {OFFSETS_TOPIC} failed");
            }
        }
        for completion in effects.completions {
            match completion {
                Completion::Join(w, result) => {
                    if let Some(tx) = inner.joins.remove(&w) {
                        let _ = tx.send(result);
                    }
                }
                Completion::Sync(w, result) => {
                    if let Some(tx) = inner.syncs.remove(&w) {
                        let _ = tx.send(result);
                    }
                }
            }
        }
    }

    pub fn join(&self, broker: &Broker, req: JoinRequest, now_ms: i64) -> Wait<JoinResult> {
        if let Err(code) = self.check_coordinator(&req.group_id) {
            return Wait::Now(JoinResult::error(&req.member_id, code));
        }
        let waiter = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
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
        if let Err(code) = self.check_coordinator(group_id) {
            return Wait::Now(SyncResult::error(code));
        }
        let waiter = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
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
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        now_ms: i64,
    ) -> ErrorCode {
        if let Err(code) = self.check_coordinator(group_id) {
            return code;
        }
        self.lock().state.heartbeat(group_id, generation_id, member_id, group_instance_id, now_ms)
    }

    pub fn leave(
        &self,
        broker: &Broker,
        group_id: &str,
        leaving: &[LeavingMember],
        now_ms: i64,
    ) -> std::result::Result<Vec<ErrorCode>, ErrorCode> {
        self.check_coordinator(group_id)?;
        let mut inner = self.lock();
        let (result, effects) = inner.state.leave(group_id, leaving, now_ms);
        self.finish(broker, &mut inner, effects, now_ms);
        result
    }

    /// OffsetCommit: one error per partition (in request order) and the appends to wait for.
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
    ) -> (Vec<ErrorCode>, Vec<DurableWait>) {
        if let Err(code) = self.check_coordinator(group_id) {
            return (partitions.iter().map(|_| code).collect(), Vec::new());
        }
        let mut inner = self.lock();
        if let Err(code) = inner.state.validate_commit(group_id, generation_id, member_id, group_instance_id, now_ms) {
            return (partitions.iter().map(|_| code).collect(), Vec::new());
        }
        let max_metadata = inner.state.config().offset_metadata_max_bytes;
        let mut errors = Vec::with_capacity(partitions.len());
        let mut plan = CommitPlan { group_id: group_id.to_string(), offsets: Vec::new() };
        for p in partitions {
            let metadata = p.metadata.unwrap_or_default();
            let code = if broker.image().partition(&p.topic, p.partition).is_none() {
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
        let records: Vec<StoreRecord> = plan
            .offsets
            .iter()
            .map(|(topic, partition, value)| StoreRecord::Offset {
                group: group_id.to_string(),
                topic: topic.clone(),
                partition: *partition,
                value: Some(value.clone()),
            })
            .collect();
        match self.append(broker, &records, now_ms) {
            Ok(waits) => {
                inner.state.apply_commit(plan);
                (errors, waits)
            }
            Err(err) => {
                warn!(group = group_id, error = %err, "offset commit append failed");
                let code = storage_error_code(&err);
                (errors.into_iter().map(|e| if e.is_ok() { code } else { e }).collect(), Vec::new())
            }
        }
    }

    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[(String, i32)]>,
    ) -> Vec<(String, i32, Option<OffsetValue>)> {
        self.lock().state.fetch_offsets(group_id, partitions)
    }

    pub fn describe(&self, group_id: &str) -> GroupDescription {
        self.lock().state.describe(group_id)
    }

    pub fn list(&self, states: &[String]) -> Vec<(String, String, &'static str)> {
        self.lock().state.list(states)
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
            let owned = inner.offsets_partitions > 0
                && inner.owned.contains(&partition_for(group_id, inner.offsets_partitions));
            if !owned {
                errors.push(ErrorCode::NOT_COORDINATOR);
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
        match self.append(broker, &records, now_ms) {
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
        if let Err(code) = self.check_coordinator(group_id) {
            return (Err(code), Vec::new());
        }
        let mut inner = self.lock();
        match inner.state.delete_offsets(group_id, partitions) {
            Err(code) => (Err(code), Vec::new()),
            Ok((errors, records)) => match self.append(broker, &records, now_ms) {
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

/// Replays one partition into `state`; returns the records read.
fn replay_partition(p: &Partition, state: &mut GroupState, now_ms: i64) -> Result<usize> {
    let offsets = p.offsets();
    let mut offset = offsets.log_start_offset;
    // To the log end: a new leader's whole log becomes committed as its followers copy it, and
    // commits acknowledged under the old leader may lie above this replica's high watermark.
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
            if let Err(err) = decode_records(&batch, LOAD_MAX_DECOMPRESSED_BYTES, &mut records) {
                warn!(partition = %p.tp, offset = header.base_offset, error = %err, "skipping undecodable batch");
                continue;
            }
            for r in records.into_iter().filter(|r| r.offset >= offset) {
                let Some(key) = r.key else { continue };
                match StoreRecord::decode(&key, r.value.as_deref()) {
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
    Ok(loaded)
}

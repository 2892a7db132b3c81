//! One replica fetcher per leader broker this node follows: a tokio task that first finds,
//! for every partition that just started following a leader (or epoch), where its log
//! diverges (OffsetForLeaderEpoch, KIP-279) and truncates, then long-polls Fetch v12 with
//! `replica_id` = this node and appends what comes back with the leader's offsets and epochs.
//!
//! The decisions (what to fetch, what a response means for a partition, where to truncate)
//! are plain functions over [`FetchState`]s; the task only does the network round trips.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use spate_client::connection::{Connection, ConnectionConfig};
use spate_client::protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use spate_client::protocol::messages::fetch_response::PartitionData;
use spate_client::protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use spate_client::protocol::messages::offset_for_leader_epoch_response::EpochEndOffset;
use spate_client::protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, TopicName,
};
use spate_client::protocol::{str_bytes, ApiKey, ErrorCode};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use super::{MarkDirty, ReplicaConfig};
use crate::config::FlushMode;
use crate::error::BrokerError;
use crate::log::epoch_cache::{UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET};
use crate::log::LogError;
use crate::partition::{Partition, TopicPartition};

/// Fetch version the fetcher speaks: the newest that still names topics (v13 uses ids).
pub const REPLICA_FETCH_VERSION: i16 = 12;
/// Bound on one whole replica fetch response (Kafka's `replica.fetch.response.max.bytes`).
pub const REPLICA_FETCH_RESPONSE_MAX_BYTES: i32 = 10 * 1024 * 1024;
/// The newest OffsetForLeaderEpoch version spoken.
const OFFSET_FOR_LEADER_EPOCH_VERSION: i16 = 4;

/// A partition this node follows, as its fetcher sees it.
pub struct FetchState {
    pub partition: Arc<Partition>,
    /// The leader epoch it follows in (sent as `current_leader_epoch`).
    pub leader_epoch: i32,
    /// Where to fetch next: the local log end offset once truncation is done.
    pub fetch_offset: i64,
    /// The divergence point must be found (new leader or epoch) before fetching.
    pub truncation_pending: bool,
    /// The leader refused us as follower (NOT_LEADER_OR_FOLLOWER, FENCED_LEADER_EPOCH): wait
    /// for the next metadata image.
    pub paused: bool,
    /// Retry not before this time (after an error).
    pub retry_at_ms: i64,
    /// A reassignment is adding this replica: its fetches count against the broker's
    /// `follower.replication.throttled.rate` and wait while that budget is spent.
    pub throttled: bool,
}

impl FetchState {
    pub fn new(partition: Arc<Partition>, leader_epoch: i32) -> FetchState {
        let fetch_offset = partition.offsets().log_end_offset;
        FetchState {
            partition,
            leader_epoch,
            fetch_offset,
            truncation_pending: true,
            paused: false,
            retry_at_ms: 0,
            throttled: false,
        }
    }

    fn ready(&self, now_ms: i64) -> bool {
        !self.paused && self.retry_at_ms <= now_ms
    }
}

/// The partitions one fetcher serves, shared with the replica manager that changes them.
#[derive(Default)]
pub struct FetcherShared {
    partitions: Mutex<BTreeMap<TopicPartition, FetchState>>,
    /// Signalled when partitions are added or resumed.
    pub changed: Notify,
}

impl FetcherShared {
    pub fn lock(&self) -> MutexGuard<'_, BTreeMap<TopicPartition, FetchState>> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// KIP-279: where a follower truncates, given the leader's answer `(leader_epoch,
/// end_offset)` to OffsetForLeaderEpoch(our latest epoch), our own end offset for the epoch
/// the leader returned (`local_end_for_epoch`, from our cache), our log end offset and high
/// watermark. Returns the offset and whether truncation is complete; when the leader answered
/// an epoch we do not have, we truncate to where our own nearest epoch ends and ask again.
pub fn truncation_offset(
    leader: (i32, i64),
    local_end_for_epoch: (i32, i64),
    log_end_offset: i64,
    high_watermark: i64,
) -> (i64, bool) {
    let (leader_epoch, leader_end_offset) = leader;
    if leader_end_offset == UNDEFINED_EPOCH_OFFSET {
        // The leader knows no epoch at or below ours: nothing beyond the high watermark is
        // known to be shared.
        return (high_watermark.min(log_end_offset), true);
    }
    if leader_epoch == UNDEFINED_EPOCH {
        return (leader_end_offset.min(log_end_offset), true);
    }
    let (local_epoch, local_end) = local_end_for_epoch;
    if local_end == UNDEFINED_EPOCH_OFFSET {
        return (leader_end_offset.min(log_end_offset), true);
    }
    if local_epoch != leader_epoch {
        return (local_end.min(log_end_offset), false);
    }
    (leader_end_offset.min(local_end).min(log_end_offset), true)
}

/// The next replica fetch for the ready partitions, or `None` when none is ready. Throttled
/// partitions (see [`FetchState::throttled`]) are left out unless `throttle_open`.
pub fn build_fetch_request(
    config: &ReplicaConfig,
    partitions: &BTreeMap<TopicPartition, FetchState>,
    now_ms: i64,
    throttle_open: bool,
) -> Option<FetchRequest> {
    let mut topics: Vec<FetchTopic> = Vec::new();
    let fetchable = |s: &FetchState| s.ready(now_ms) && !s.truncation_pending && (throttle_open || !s.throttled);
    for (tp, state) in partitions.iter().filter(|(_, s)| fetchable(s)) {
        let partition = FetchPartition::default()
            .with_partition(tp.partition)
            .with_current_leader_epoch(state.leader_epoch)
            .with_fetch_offset(state.fetch_offset)
            .with_last_fetched_epoch(-1)
            .with_log_start_offset(state.partition.offsets().log_start_offset)
            .with_partition_max_bytes(config.replica_fetch_max_bytes);
        match topics.last_mut() {
            Some(t) if t.topic.as_str() == tp.topic => t.partitions.push(partition),
            _ => topics.push(
                FetchTopic::default()
                    .with_topic(TopicName(str_bytes(tp.topic.clone())))
                    .with_partitions(vec![partition]),
            ),
        }
    }
    if topics.is_empty() {
        return None;
    }
    Some(
        FetchRequest::default()
            .with_replica_id(BrokerId(config.node_id))
            .with_max_wait_ms(config.replica_fetch_wait_max_ms)
            .with_min_bytes(1)
            .with_max_bytes(REPLICA_FETCH_RESPONSE_MAX_BYTES)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(topics),
    )
}

/// Applies one partition's fetch response: appends its batches (then `mark_dirty`), takes the
/// leader's high watermark, or reacts to the error. Responses for a partition whose state
/// changed meanwhile (another epoch, another offset) are dropped.
pub fn apply_fetched(
    config: &ReplicaConfig,
    state: &mut FetchState,
    requested_offset: i64,
    requested_epoch: i32,
    data: &PartitionData,
    mark_dirty: &MarkDirty,
    now_ms: i64,
) {
    if state.leader_epoch != requested_epoch || state.fetch_offset != requested_offset || state.truncation_pending {
        return;
    }
    let tp = &state.partition.tp;
    let backoff = config.replica_fetch_backoff_ms as i64;
    match ErrorCode(data.error_code) {
        ErrorCode::NONE => {
            let records = data.records.clone().unwrap_or_default();
            match state.partition.append_as_follower(&records, state.leader_epoch, now_ms) {
                Ok(appended) => {
                    if appended.is_some() && config.flush_mode == FlushMode::Fsync {
                        mark_dirty(&state.partition);
                    }
                    state.fetch_offset = state.partition.offsets().log_end_offset;
                    state.partition.update_follower_high_watermark(data.high_watermark);
                    // DeleteRecords on the leader (or its retention) moved its log start.
                    if let Err(err) = state.partition.follow_leader_log_start(data.log_start_offset) {
                        warn!(partition = %tp, error = %err, "moving the follower's log start failed");
                    }
                }
                Err(BrokerError::Log(LogError::InvalidAppend { reason, .. })) => {
                    // Not contiguous with our log: find the divergence point again.
                    warn!(partition = %tp, %reason, "fetched data does not follow the local log");
                    state.truncation_pending = true;
                    state.retry_at_ms = now_ms + backoff;
                }
                Err(
                    err @ (BrokerError::NotLeaderOrFollower { .. }
                    | BrokerError::FencedLeaderEpoch { .. }
                    | BrokerError::UnknownLeaderEpoch { .. }),
                ) => {
                    // Our own role changed while the fetch was out; the manager re-adds it.
                    debug!(partition = %tp, error = %err, "dropping a fetch for a changed replica");
                    state.paused = true;
                }
                Err(err) => {
                    warn!(partition = %tp, error = %err, "appending fetched data failed");
                    state.retry_at_ms = now_ms + backoff;
                }
            }
        }
        ErrorCode::OFFSET_OUT_OF_RANGE => {
            let leader_log_start = data.log_start_offset;
            if leader_log_start >= 0 && state.fetch_offset < leader_log_start {
                // The leader deleted what we would fetch next: start over at its log start.
                match state.partition.truncate_fully(leader_log_start, now_ms) {
                    Ok(()) => state.fetch_offset = leader_log_start,
                    Err(err) => {
                        warn!(partition = %tp, error = %err, "restarting the follower log failed");
                        state.retry_at_ms = now_ms + backoff;
                    }
                }
            } else {
                // Past the leader's log end: we hold a suffix it does not.
                state.truncation_pending = true;
                state.retry_at_ms = now_ms + backoff;
            }
        }
        code @ (ErrorCode::NOT_LEADER_OR_FOLLOWER | ErrorCode::FENCED_LEADER_EPOCH) => {
            info!(partition = %tp, ?code, "leader refused our fetch; waiting for new metadata");
            state.paused = true;
        }
        code => {
            // UNKNOWN_LEADER_EPOCH (the leader has not seen the image yet), unknown partition
            // (not created there yet), storage errors: try again shortly.
            debug!(partition = %tp, ?code, "replica fetch failed; retrying");
            state.retry_at_ms = now_ms + backoff;
        }
    }
}

/// Applies the leader's OffsetForLeaderEpoch answer for one partition: truncates the local
/// log (KIP-279) and, once complete, lets fetching start at the new log end.
pub fn apply_epoch_end_offset(
    config: &ReplicaConfig,
    state: &mut FetchState,
    requested_epoch: i32,
    answer: &EpochEndOffset,
    now_ms: i64,
) {
    if state.leader_epoch != requested_epoch || !state.truncation_pending {
        return;
    }
    let backoff = config.replica_fetch_backoff_ms as i64;
    match ErrorCode(answer.error_code) {
        ErrorCode::NONE => {
            let partition = &state.partition;
            let local = partition.end_offset_for_epoch(answer.leader_epoch);
            let offsets = partition.offsets();
            let (offset, complete) = truncation_offset(
                (answer.leader_epoch, answer.end_offset),
                local,
                offsets.log_end_offset,
                offsets.high_watermark,
            );
            match partition.truncate_to(offset, now_ms) {
                Ok(()) => {
                    state.fetch_offset = partition.offsets().log_end_offset;
                    state.truncation_pending = !complete;
                }
                Err(err) => {
                    warn!(partition = %partition.tp, error = %err, "follower truncation failed");
                    state.retry_at_ms = now_ms + backoff;
                }
            }
        }
        ErrorCode::NOT_LEADER_OR_FOLLOWER | ErrorCode::FENCED_LEADER_EPOCH => state.paused = true,
        _ => state.retry_at_ms = now_ms + backoff,
    }
}

/// Truncates without asking the leader (it does not speak OffsetForLeaderEpoch): to the high
/// watermark, the pre-KIP-101 rule.
fn truncate_to_high_watermark(state: &mut FetchState, now_ms: i64) {
    let hw = state.partition.high_watermark();
    if let Err(err) = state.partition.truncate_to(hw, now_ms) {
        warn!(partition = %state.partition.tp, error = %err, "follower truncation failed");
        return;
    }
    state.fetch_offset = state.partition.offsets().log_end_offset;
    state.truncation_pending = false;
}

/// OffsetForLeaderEpoch for the partitions awaiting truncation: (request, the epoch each
/// partition follows in, keyed like the request).
fn build_epoch_request(
    config: &ReplicaConfig,
    partitions: &BTreeMap<TopicPartition, FetchState>,
    now_ms: i64,
) -> Option<(OffsetForLeaderEpochRequest, BTreeMap<TopicPartition, i32>)> {
    let mut topics: Vec<OffsetForLeaderTopic> = Vec::new();
    let mut epochs = BTreeMap::new();
    for (tp, state) in partitions.iter().filter(|(_, s)| s.ready(now_ms) && s.truncation_pending) {
        let latest = state.partition.latest_cached_epoch().unwrap_or(UNDEFINED_EPOCH);
        let p = OffsetForLeaderPartition::default()
            .with_partition(tp.partition)
            .with_current_leader_epoch(state.leader_epoch)
            .with_leader_epoch(latest);
        match topics.last_mut() {
            Some(t) if t.topic.as_str() == tp.topic => t.partitions.push(p),
            _ => topics.push(
                OffsetForLeaderTopic::default()
                    .with_topic(TopicName(str_bytes(tp.topic.clone())))
                    .with_partitions(vec![p]),
            ),
        }
        epochs.insert(tp.clone(), state.leader_epoch);
    }
    if topics.is_empty() {
        return None;
    }
    Some((OffsetForLeaderEpochRequest::default().with_replica_id(BrokerId(config.node_id)).with_topics(topics), epochs))
}

/// The fetcher task for leader `leader_id` at `address`; runs until `shutdown` turns true.
pub async fn run(
    leader_id: i32,
    address: String,
    config: ReplicaConfig,
    shared: Arc<FetcherShared>,
    mark_dirty: MarkDirty,
    throttle: super::SharedBudget,
    mut shutdown: watch::Receiver<bool>,
) {
    let budget = || throttle.lock().unwrap_or_else(|e| e.into_inner());
    let backoff = Duration::from_millis(config.replica_fetch_backoff_ms);
    let connection_config = ConnectionConfig {
        client_id: Some(format!("spate-replica-fetcher-{}-{leader_id}", config.node_id)),
        request_timeout: Duration::from_millis(config.replica_fetch_wait_max_ms.max(0) as u64)
            + Duration::from_secs(30),
        connect_timeout: Duration::from_secs(10),
        max_response_bytes: REPLICA_FETCH_RESPONSE_MAX_BYTES as usize + (64 << 20),
    };
    let mut connection: Option<Connection> = None;
    // A dead leader is retried every backoff until the metadata moves leadership; one warning
    // per period is enough to say so.
    let mut last_warning: Option<std::time::Instant> = None;
    let mut should_warn = move || {
        let now = std::time::Instant::now();
        let due = last_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10));
        if due {
            last_warning = Some(now);
        }
        due
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        let conn = match &connection {
            Some(c) if !c.is_closed() => c.clone(),
            _ => match Connection::connect(&address, &connection_config).await {
                Ok(c) => {
                    connection = Some(c.clone());
                    c
                }
                Err(err) => {
                    if should_warn() {
                        warn!(leader = leader_id, %address, error = %err, "replica fetcher cannot reach the leader");
                    }
                    connection = None;
                    sleep_or_shutdown(backoff, &mut shutdown).await;
                    continue;
                }
            },
        };
        let now = crate::broker::now_ms();
        // Truncation first: nothing is fetched for a partition until its log agrees with the
        // leader's.
        let epoch_request = build_epoch_request(&config, &shared.lock(), now);
        if let Some((request, epochs)) = epoch_request {
            match conn.broker_versions().range(ApiKey::OffsetForLeaderEpoch) {
                Some((min, max)) if min <= OFFSET_FOR_LEADER_EPOCH_VERSION => {
                    let version = max.min(OFFSET_FOR_LEADER_EPOCH_VERSION);
                    let sent = tokio::select! {
                        r = conn.send::<_, OffsetForLeaderEpochResponse>(ApiKey::OffsetForLeaderEpoch, version, &request) => r,
                        _ = shutdown.changed() => return,
                    };
                    match sent {
                        Ok(response) => {
                            let now = crate::broker::now_ms();
                            let mut partitions = shared.lock();
                            for t in &response.topics {
                                for answer in &t.partitions {
                                    let tp = TopicPartition { topic: t.topic.to_string(), partition: answer.partition };
                                    if let (Some(state), Some(&epoch)) = (partitions.get_mut(&tp), epochs.get(&tp)) {
                                        apply_epoch_end_offset(&config, state, epoch, answer, now);
                                    }
                                }
                            }
                        }
                        Err(err) => {
                            warn!(leader = leader_id, error = %err, "OffsetForLeaderEpoch failed");
                            connection = None;
                            sleep_or_shutdown(backoff, &mut shutdown).await;
                        }
                    }
                }
                _ => {
                    let mut partitions = shared.lock();
                    for tp in epochs.keys() {
                        if let Some(state) = partitions.get_mut(tp) {
                            truncate_to_high_watermark(state, now);
                        }
                    }
                }
            }
            continue;
        }
        let throttle_open = budget().allows(now);
        let Some(request) = build_fetch_request(&config, &shared.lock(), now, throttle_open) else {
            // Nothing ready: wait for a change, for the earliest retry time, or for the
            // throttle's budget to come back.
            let wake_in = {
                let throttle_wait = if throttle_open { 0 } else { budget().wait_ms(now) };
                let partitions = shared.lock();
                partitions
                    .values()
                    .filter(|s| !s.paused)
                    .map(|s| {
                        let retry = s.retry_at_ms - now;
                        if s.throttled {
                            retry.max(throttle_wait)
                        } else {
                            retry
                        }
                    })
                    .min()
            };
            let wait = wake_in.map_or(Duration::from_secs(60), |ms| Duration::from_millis(ms.clamp(1, 60_000) as u64));
            tokio::select! {
                _ = shared.changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            continue;
        };
        let sent: Vec<(TopicPartition, i64, i32)> = {
            let partitions = shared.lock();
            request
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(move |p| (t.topic.to_string(), p)))
                .filter_map(|(topic, p)| {
                    let tp = TopicPartition { topic, partition: p.partition };
                    partitions.get(&tp).map(|s| (tp, s.fetch_offset, s.leader_epoch))
                })
                .collect()
        };
        let response = tokio::select! {
            r = conn.send::<_, FetchResponse>(ApiKey::Fetch, REPLICA_FETCH_VERSION, &request) => r,
            _ = shutdown.changed() => return,
        };
        match response {
            Ok(response) => {
                if response.error_code != 0 {
                    warn!(leader = leader_id, code = response.error_code, "replica fetch refused");
                    sleep_or_shutdown(backoff, &mut shutdown).await;
                    continue;
                }
                let now = crate::broker::now_ms();
                let requested: BTreeMap<TopicPartition, (i64, i32)> =
                    sent.into_iter().map(|(tp, offset, epoch)| (tp, (offset, epoch))).collect();
                let mut partitions = shared.lock();
                let mut throttled_bytes = 0u64;
                for t in &response.responses {
                    for data in &t.partitions {
                        let tp = TopicPartition { topic: t.topic.to_string(), partition: data.partition_index };
                        if let (Some(state), Some(&(offset, epoch))) = (partitions.get_mut(&tp), requested.get(&tp)) {
                            if state.throttled {
                                throttled_bytes += data.records.as_ref().map_or(0, |r| r.len() as u64);
                            }
                            apply_fetched(&config, state, offset, epoch, data, &mark_dirty, now);
                        }
                    }
                }
                drop(partitions);
                if throttled_bytes > 0 {
                    budget().record(throttled_bytes, now);
                }
            }
            Err(err) => {
                if should_warn() {
                    warn!(leader = leader_id, error = %err, "replica fetch failed");
                }
                connection = None;
                sleep_or_shutdown(backoff, &mut shutdown).await;
            }
        }
    }
}

async fn sleep_or_shutdown(duration: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = shutdown.changed() => {}
    }
}

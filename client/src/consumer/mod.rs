//! The consumer: manual assignment ([`Consumer::assign`]) or group membership
//! ([`Consumer::subscribe`], [`Consumer::subscribe_pattern`]), `seek*`, `position`,
//! committed offsets ([`Consumer::commit_sync`], [`Consumer::commit_async`],
//! `enable.auto.commit`) and [`Consumer::poll`].
//!
//! Fetches are pipelined: as soon as a partition's fetched records have been handed to the
//! caller, the next Fetch for it is sent (one request per leader broker, many partitions each),
//! so the broker works while the caller processes. Group membership sits on top: `poll` joins
//! and rejoins the group (running the [`RebalanceListener`] on the caller's task), the group's
//! assignment replaces the partitions fetched, and positions of newly assigned partitions start
//! at the group's committed offsets, else at `auto.offset.reset`. Heartbeats go out from a
//! background task.
//!
//! Delivery semantics follow from when offsets are committed relative to processing:
//! committing before processing is at-most-once, after is at-least-once (the default with
//! auto-commit, which commits what earlier polls returned), and exactly-once needs the output
//! to be idempotent or transactional; `examples/` has one program for each.

pub mod assignor;
mod coordinator;
mod fetcher;
mod group;
mod member;
mod offsets;
mod subscription;

pub use assignor::{Assignor, GroupMember, PartitionAssignor, RebalanceProtocol, Subscription};
pub use fetcher::FetchedBatch;
pub use member::{ClassicGroupConfig, ClassicGroupMember, JoinedGroup, Rebalanced};
pub use offsets::OffsetAndMetadata;
pub use subscription::{ListenerFuture, RebalanceListener};

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::admin::{list_offsets, list_offsets_until, OffsetSpec};
use crate::connection::ConnectionConfig;
use crate::error::{Error, Result};
use crate::metadata::{Cluster, ClusterConfig, TopicPartition};
use crate::protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use crate::protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use crate::protocol::record::RecordHeader;
use crate::protocol::{str_bytes, ApiKey, ErrorCode};

/// What to do when a partition has no valid position (`auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoOffsetReset {
    Earliest,
    #[default]
    Latest,
    /// Fail `poll` with [`Error::NoOffsetForPartition`].
    None,
}

impl FromStr for AutoOffsetReset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "earliest" => Ok(AutoOffsetReset::Earliest),
            "latest" => Ok(AutoOffsetReset::Latest),
            "none" => Ok(AutoOffsetReset::None),
            other => Err(format!("unknown auto.offset.reset '{other}' (expected earliest, latest or none)")),
        }
    }
}

/// `isolation.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IsolationLevel {
    #[default]
    ReadUncommitted,
    /// Reads only up to the last stable offset, and drops the records of aborted
    /// transactions (the broker lists them with each fetch) and transaction markers.
    ReadCommitted,
}

impl IsolationLevel {
    fn wire(self) -> i8 {
        match self {
            IsolationLevel::ReadUncommitted => 0,
            IsolationLevel::ReadCommitted => 1,
        }
    }
}

impl FromStr for IsolationLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "read_uncommitted" => Ok(IsolationLevel::ReadUncommitted),
            "read_committed" => Ok(IsolationLevel::ReadCommitted),
            other => Err(format!("unknown isolation.level '{other}' (expected read_uncommitted or read_committed)")),
        }
    }
}

/// Consumer settings, by the Java client's names.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub bootstrap_servers: Vec<String>,
    pub client_id: String,
    /// The broker answers a fetch once this many bytes are available... Default 1.
    pub fetch_min_bytes: i32,
    /// ...or this much time has passed. Default 500.
    pub fetch_max_wait_ms: u64,
    /// Upper bound on one fetch response. Default 50 MiB.
    pub fetch_max_bytes: i32,
    /// Upper bound per partition in one fetch. Default 1 MiB.
    pub max_partition_fetch_bytes: i32,
    pub auto_offset_reset: AutoOffsetReset,
    pub isolation_level: IsolationLevel,
    /// Most records one `poll` returns. Default 500.
    pub max_poll_records: usize,
    pub request_timeout_ms: u64,
    /// Verify each batch's CRC32C. Default true.
    pub check_crcs: bool,
    /// The consumer group (`group.id`); needed by `subscribe*` and to commit offsets.
    pub group_id: Option<String>,
    /// `group.instance.id`: makes this a static member (KIP-345), which keeps its partitions
    /// across restarts within the session timeout and does not leave the group on close.
    pub group_instance_id: Option<String>,
    /// The coordinator removes a member not heard from for this long. Default 45000.
    pub session_timeout_ms: u64,
    /// How often heartbeats go out; well under the session timeout. Default 3000.
    pub heartbeat_interval_ms: u64,
    /// A member that does not `poll` for this long leaves the group (and is the longest a
    /// rebalance waits for members to rejoin). Default 300000.
    pub max_poll_interval_ms: u64,
    /// Assignors in preference order. Default `[range, cooperative-sticky]` (the Java
    /// client's): the group uses the first one every member supports, and rebalancing is
    /// cooperative only when every assignor listed supports it.
    pub partition_assignment_strategy: Vec<Assignor>,
    /// An application assignor offered before the built-in ones (and, when set, the only one
    /// used: every member of such a group runs the same application). Eager rebalancing.
    pub custom_assignor: Option<Arc<dyn assignor::PartitionAssignor>>,
    /// Commit the positions of what `poll` returned, every `auto_commit_interval_ms`, before a
    /// rebalance and on close. Default true.
    pub enable_auto_commit: bool,
    /// Default 5000.
    pub auto_commit_interval_ms: u64,
    /// Wait between retries of group and offset requests. Default 100.
    pub retry_backoff_ms: u64,
    /// How long a blocking call such as `commit_sync` or `committed` keeps retrying. Default
    /// 60000.
    pub default_api_timeout_ms: u64,
    /// How often subscribed topics are checked for new matches (pattern subscriptions) and
    /// partition count changes. Default 300000.
    pub metadata_max_age_ms: u64,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            bootstrap_servers: vec!["127.0.0.1:9092".into()],
            client_id: "spate-consumer".into(),
            fetch_min_bytes: 1,
            fetch_max_wait_ms: 500,
            fetch_max_bytes: 50 * 1024 * 1024,
            max_partition_fetch_bytes: 1024 * 1024,
            auto_offset_reset: AutoOffsetReset::Latest,
            isolation_level: IsolationLevel::ReadUncommitted,
            max_poll_records: 500,
            request_timeout_ms: 30_000,
            check_crcs: true,
            group_id: None,
            group_instance_id: None,
            session_timeout_ms: 45_000,
            heartbeat_interval_ms: 3_000,
            max_poll_interval_ms: 300_000,
            partition_assignment_strategy: vec![Assignor::Range, Assignor::CooperativeSticky],
            custom_assignor: None,
            enable_auto_commit: true,
            auto_commit_interval_ms: 5_000,
            retry_backoff_ms: 100,
            default_api_timeout_ms: 60_000,
            metadata_max_age_ms: 300_000,
        }
    }
}

impl ConsumerConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.bootstrap_servers.is_empty() {
            return bad("bootstrap.servers is empty".into());
        }
        if self.fetch_min_bytes < 0 || self.fetch_max_bytes <= 0 || self.max_partition_fetch_bytes <= 0 {
            return bad("fetch.min.bytes, fetch.max.bytes and max.partition.fetch.bytes must be positive".into());
        }
        if self.max_poll_records == 0 {
            return bad("max.poll.records must be at least 1".into());
        }
        if self.fetch_max_wait_ms > i32::MAX as u64 {
            return bad(format!("fetch.max.wait.ms {} is out of range", self.fetch_max_wait_ms));
        }
        if self.request_timeout_ms <= self.fetch_max_wait_ms {
            return bad("request.timeout.ms must exceed fetch.max.wait.ms".into());
        }
        if self.group_id.as_deref() == Some("") {
            return bad("group.id must not be empty".into());
        }
        if self.group_instance_id.is_some() && self.group_id.is_none() {
            return bad("group.instance.id needs a group.id".into());
        }
        if self.group_instance_id.as_deref() == Some("") {
            return bad("group.instance.id must not be empty".into());
        }
        for (name, value) in
            [("session.timeout.ms", self.session_timeout_ms), ("max.poll.interval.ms", self.max_poll_interval_ms)]
        {
            if value == 0 || value > i32::MAX as u64 {
                return bad(format!("{name} {value} is out of range"));
            }
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms >= self.session_timeout_ms {
            return bad("heartbeat.interval.ms must be positive and below session.timeout.ms".into());
        }
        if self.partition_assignment_strategy.is_empty() {
            return bad("partition.assignment.strategy is empty".into());
        }
        if self.auto_commit_interval_ms == 0 {
            return bad("auto.commit.interval.ms must be positive".into());
        }
        Ok(())
    }
}

/// A consumer's place in its group, which a transactional producer sends with the group's
/// offsets (Java's `ConsumerGroupMetadata`, KIP-447): the group coordinator refuses offsets
/// from a generation that is not the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupMetadata {
    pub group_id: String,
    /// -1 when unknown (no generation checked).
    pub generation_id: i32,
    /// Empty when unknown.
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

impl ConsumerGroupMetadata {
    /// Metadata naming only the group: its offsets commit whatever generation the group is
    /// in (no zombie fencing), as before KIP-447.
    pub fn new(group_id: impl Into<String>) -> Self {
        ConsumerGroupMetadata {
            group_id: group_id.into(),
            generation_id: assignor::NO_GENERATION,
            member_id: String::new(),
            group_instance_id: None,
        }
    }
}

/// A record as `poll` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Shared by all records of a partition.
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
}

/// One assigned partition.
struct PartitionState {
    topic: Arc<str>,
    /// The next offset `poll` hands out; `None` until reset.
    position: Option<i64>,
    /// How to find the position when it is `None`: an explicit `seek_to_*`, else
    /// `auto.offset.reset`.
    reset: Option<OffsetSpec>,
    /// The next offset to fetch (the position plus what is buffered).
    fetch_offset: i64,
    /// Bumped by every seek so a fetch sent before it is ignored when it lands.
    seek_epoch: u64,
    in_flight: bool,
    /// After a failed fetch (leader moved, broker unreachable) the partition is not fetched
    /// again before this, giving the metadata refresh time to land (`retry.backoff.ms`).
    retry_at: Option<tokio::time::Instant>,
    paused: bool,
    /// Fetched batches not yet handed out or decoded, in offset order.
    fetched: VecDeque<FetchedBatch>,
    /// Records `poll` decoded from the front of `fetched` and has not handed out yet (they come
    /// before everything in `fetched`).
    buffered: VecDeque<ConsumerRecord>,
    high_watermark: i64,
    /// The last stable offset of the last fetch: a read_committed consumer reads (and lags)
    /// up to it, not the high watermark.
    last_stable_offset: i64,
    log_start_offset: i64,
    /// Whether the group's committed offset was looked up (once per assignment; after that a
    /// missing position means `auto.offset.reset`).
    committed_checked: bool,
}

impl PartitionState {
    fn new(topic: Arc<str>) -> Self {
        PartitionState {
            topic,
            position: None,
            reset: None,
            fetch_offset: -1,
            seek_epoch: 0,
            in_flight: false,
            retry_at: None,
            paused: false,
            fetched: VecDeque::new(),
            buffered: VecDeque::new(),
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            committed_checked: false,
        }
    }

    fn seek(&mut self, offset: i64) {
        self.position = Some(offset);
        self.reset = None;
        self.fetch_offset = offset;
        self.seek_epoch += 1;
        self.fetched.clear();
        self.buffered.clear();
    }

    /// Whether fetched records wait to be handed out.
    fn has_buffered(&self) -> bool {
        !self.buffered.is_empty() || !self.fetched.is_empty()
    }

    fn reset_to(&mut self, spec: Option<OffsetSpec>) {
        self.position = None;
        self.reset = spec;
        self.seek_epoch += 1;
        self.fetched.clear();
        self.buffered.clear();
    }
}

/// What one fetch request came back with.
struct FetchOutcome {
    broker: i32,
    /// The partitions asked for, with the fetch offset and seek epoch at the time.
    asked: Vec<(TopicPartition, i64, u64)>,
    result: Result<FetchResponse>,
}

struct State {
    assignment: BTreeMap<TopicPartition, PartitionState>,
    outcomes: mpsc::UnboundedReceiver<FetchOutcome>,
    /// Where the next `poll` starts handing out records, so partitions take turns.
    next_partition: usize,
    /// An error to report from the next `poll` (e.g. an out-of-range offset with reset none).
    pending_error: Option<Error>,
    /// Brokers with a Fetch in flight. One at a time per broker, as the Java client: a broker
    /// answers a connection's requests in order, so a second fetch would wait behind the
    /// first's long poll.
    fetching: BTreeSet<i32>,
}

/// A Kafka consumer, with manual assignment or as a group member. Methods take `&self`; calls
/// are serialised internally.
pub struct Consumer {
    cluster: Cluster,
    config: ConsumerConfig,
    outcomes_tx: mpsc::UnboundedSender<FetchOutcome>,
    state: tokio::sync::Mutex<State>,
    /// Group membership and offsets, when `group.id` is set.
    group: Option<subscription::GroupContext>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(group) = &self.group {
            group.stop_tasks();
        }
    }
}

/// Decompressed bytes allowed per batch: a batch holds at most one partition fetch's worth of
/// compressed data, which inflates by a bounded ratio in practice.
const MAX_DECOMPRESSED_BATCH_BYTES: usize = 256 * 1024 * 1024;

impl Consumer {
    pub async fn new(config: ConsumerConfig) -> Result<Consumer> {
        config.validate()?;
        let mut cluster_config = ClusterConfig::new(config.bootstrap_servers.clone());
        cluster_config.connection = ConnectionConfig {
            client_id: Some(config.client_id.clone()),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            // A fetch response holds at most fetch.max.bytes of records plus headers.
            max_response_bytes: config.fetch_max_bytes as usize + 1024 * 1024,
            ..ConnectionConfig::default()
        };
        let cluster = Cluster::connect(cluster_config).await?;
        let (outcomes_tx, outcomes) = mpsc::unbounded_channel();
        let group = subscription::GroupContext::new(&cluster, &config);
        Ok(Consumer {
            cluster,
            config,
            outcomes_tx,
            state: tokio::sync::Mutex::new(State {
                assignment: BTreeMap::new(),
                outcomes,
                next_partition: 0,
                pending_error: None,
                fetching: BTreeSet::new(),
            }),
            group,
        })
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// Where `auto.offset.reset` puts a partition without a position (`None` for `none`).
    fn auto_reset(&self) -> Option<OffsetSpec> {
        match self.config.auto_offset_reset {
            AutoOffsetReset::Earliest => Some(OffsetSpec::Earliest),
            AutoOffsetReset::Latest => Some(OffsetSpec::Latest),
            AutoOffsetReset::None => None,
        }
    }

    /// Replaces the assignment (manual assignment; not with `subscribe*`). Partitions kept
    /// keep their position; new ones start from the group's committed offset when `group.id`
    /// is set, else from `auto.offset.reset`, unless sought.
    pub async fn assign(&self, partitions: Vec<TopicPartition>) -> Result<()> {
        self.check_manual_assignment(!partitions.is_empty())?;
        for tp in &partitions {
            let topic = self.cluster.topic(&tp.topic).await?;
            if topic.partition(tp.partition).is_none() {
                return Err(Error::UnknownPartition { topic: tp.topic.clone(), partition: tp.partition });
            }
        }
        self.replace_assignment(partitions).await;
        Ok(())
    }

    async fn replace_assignment(&self, partitions: impl IntoIterator<Item = TopicPartition>) {
        let mut state = self.state.lock().await;
        let mut old = std::mem::take(&mut state.assignment);
        for tp in partitions {
            let ps = old.remove(&tp).unwrap_or_else(|| PartitionState::new(Arc::from(tp.topic.as_str())));
            state.assignment.insert(tp, ps);
        }
    }

    /// The assigned partitions, sorted.
    pub async fn assignment(&self) -> Vec<TopicPartition> {
        self.state.lock().await.assignment.keys().cloned().collect()
    }

    /// Sets the next offset `poll` returns for a partition.
    pub async fn seek(&self, tp: &TopicPartition, offset: i64) -> Result<()> {
        let mut state = self.state.lock().await;
        assigned(&mut state, tp)?.seek(offset);
        Ok(())
    }

    /// Moves partitions (all assigned ones when empty) to their log start offset, resolved on
    /// the next `poll` or `position`.
    pub async fn seek_to_beginning(&self, partitions: &[TopicPartition]) -> Result<()> {
        self.reset_partitions(partitions, OffsetSpec::Earliest).await
    }

    /// Moves partitions (all assigned ones when empty) to their end, resolved lazily.
    pub async fn seek_to_end(&self, partitions: &[TopicPartition]) -> Result<()> {
        self.reset_partitions(partitions, OffsetSpec::Latest).await
    }

    async fn reset_partitions(&self, partitions: &[TopicPartition], spec: OffsetSpec) -> Result<()> {
        let mut state = self.state.lock().await;
        if partitions.is_empty() {
            state.assignment.values_mut().for_each(|ps| ps.reset_to(Some(spec)));
            return Ok(());
        }
        for tp in partitions {
            assigned(&mut state, tp)?.reset_to(Some(spec));
        }
        Ok(())
    }

    /// Seeks to the earliest offset whose timestamp is at least `timestamp_ms` (the end when
    /// there is none) and returns it.
    pub async fn seek_to_timestamp(&self, tp: &TopicPartition, timestamp_ms: i64) -> Result<i64> {
        let mut state = self.state.lock().await;
        assigned(&mut state, tp)?;
        let isolation = self.config.isolation_level.wire();
        let found = list_offsets(&self.cluster, &[(tp.clone(), timestamp_ms)], isolation).await?;
        let mut offset = found.get(tp).map_or(-1, |info| info.offset);
        if offset < 0 {
            let end =
                list_offsets(&self.cluster, &[(tp.clone(), OffsetSpec::Latest.wire_timestamp())], isolation).await?;
            offset = end.get(tp).map_or(0, |info| info.offset);
        }
        assigned(&mut state, tp)?.seek(offset);
        Ok(offset)
    }

    /// The next offset `poll` will return for a partition, resolving a pending reset first.
    pub async fn position(&self, tp: &TopicPartition) -> Result<i64> {
        let mut state = self.state.lock().await;
        assigned(&mut state, tp)?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.default_api_timeout_ms);
        self.resolve_positions(&mut state, deadline).await?;
        Ok(assigned(&mut state, tp)?.position.expect("resolved above"))
    }

    /// Stops fetching partitions until `resume` (for flow control and rebalances).
    pub async fn pause(&self, partitions: &[TopicPartition]) -> Result<()> {
        let mut state = self.state.lock().await;
        for tp in partitions {
            assigned(&mut state, tp)?.paused = true;
        }
        Ok(())
    }

    pub async fn resume(&self, partitions: &[TopicPartition]) -> Result<()> {
        let mut state = self.state.lock().await;
        for tp in partitions {
            assigned(&mut state, tp)?.paused = false;
        }
        Ok(())
    }

    /// The paused partitions, sorted.
    pub async fn paused(&self) -> Vec<TopicPartition> {
        let state = self.state.lock().await;
        state.assignment.iter().filter(|(_, ps)| ps.paused).map(|(tp, _)| tp.clone()).collect()
    }

    /// The high watermark seen in the last fetch of a partition, if any (for lag).
    pub async fn high_watermark(&self, tp: &TopicPartition) -> Option<i64> {
        let state = self.state.lock().await;
        state.assignment.get(tp).map(|ps| ps.high_watermark).filter(|hw| *hw >= 0)
    }

    /// How far the position trails the high watermark of the last fetch, or with
    /// `read_committed` its last stable offset (Kafka's `currentLag`): `None` until both are
    /// known. No I/O.
    pub async fn lag(&self, tp: &TopicPartition) -> Result<Option<i64>> {
        let read_committed = self.config.isolation_level == IsolationLevel::ReadCommitted;
        let mut state = self.state.lock().await;
        let ps = assigned(&mut state, tp)?;
        let end = if read_committed { ps.last_stable_offset } else { ps.high_watermark };
        Ok(match ps.position {
            Some(position) if end >= 0 => Some((end - position).max(0)),
            _ => None,
        })
    }

    /// Returns the records available now, or waits up to `timeout` for some. An empty vector
    /// means none arrived in time.
    ///
    /// In a group, `poll` is also where the group is joined and rejoined and where the
    /// rebalance listener runs; a rebalance can make one call take longer than `timeout`.
    pub async fn poll(&self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        let max = self.config.max_poll_records;
        self.poll_with(timeout, |state| take_buffered(state, max)).await
    }

    /// Like [`Consumer::poll`], but hands out the fetched record batches undecoded, for callers
    /// that read records in place ([`FetchedBatch::records`]) instead of as owned
    /// [`ConsumerRecord`]s: whole batches until they hold at least `max.poll.records` records.
    /// The position moves past each batch handed out. Use one of `poll` and `poll_batches` on a
    /// consumer: after a `poll` that left decoded records buffered, this fails.
    pub async fn poll_batches(&self, timeout: Duration) -> Result<Vec<FetchedBatch>> {
        let max = self.config.max_poll_records;
        self.poll_with(timeout, |state| take_batches(state, max)).await
    }

    async fn poll_with<T>(
        &self,
        timeout: Duration,
        mut take: impl FnMut(&mut State) -> Result<Vec<T>>,
    ) -> Result<Vec<T>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.poll_group().await?;
            match self.poll_fetched(deadline, &mut take).await? {
                Some(records) => return Ok(records),
                // The group needs a rejoin: do it, then go on fetching.
                None if tokio::time::Instant::now() < deadline => continue,
                None => return Ok(Vec::new()),
            }
        }
    }

    /// Fetches until records arrive (`Some`, empty at the deadline), or the group needs a
    /// rejoin (`None`).
    async fn poll_fetched<T>(
        &self,
        deadline: tokio::time::Instant,
        take: &mut impl FnMut(&mut State) -> Result<Vec<T>>,
    ) -> Result<Option<Vec<T>>> {
        let mut state = self.state.lock().await;
        loop {
            if self.group_needs_rejoin() {
                return Ok(None);
            }
            while let Ok(outcome) = state.outcomes.try_recv() {
                self.handle_outcome(&mut state, outcome);
            }
            if let Some(e) = state.pending_error.take() {
                return Err(e);
            }
            match self.resolve_positions(&mut state, deadline).await {
                Ok(()) => {}
                // A leader moving or a broker down: the partitions without a position wait, the
                // others are fetched, and a later poll tries again.
                Err(e) if e.is_retriable() => debug!(error = %e, "resetting positions failed, retrying later"),
                Err(e) => return Err(e),
            }
            let records = take(&mut state);
            // Send the next fetches before handing records out: pipelining (and a partition
            // whose batch failed to decode is fetched again).
            self.send_fetches(&mut state).await;
            let records = records?;
            if !records.is_empty() {
                return Ok(Some(records));
            }
            // Partitions backing off after an error are fetched again once their backoff ends.
            let retry_at = state.assignment.values().filter_map(|ps| ps.retry_at).min();
            tokio::select! {
                outcome = state.outcomes.recv() => {
                    if let Some(outcome) = outcome {
                        self.handle_outcome(&mut state, outcome);
                    }
                }
                _ = self.rejoin_requested() => return Ok(None),
                _ = tokio::time::sleep_until(retry_at.unwrap_or(deadline)), if retry_at.is_some_and(|at| at < deadline) => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Some(Vec::new())),
            }
        }
    }

    /// Looks up the position of every partition that needs a reset, per `auto.offset.reset` or
    /// an explicit `seek_to_beginning`/`seek_to_end`, retrying leader moves until `deadline`.
    async fn resolve_positions(&self, state: &mut State, deadline: tokio::time::Instant) -> Result<()> {
        if !self.seek_to_committed(state, deadline).await? {
            // Offsets still being committed by a transaction: no reset to auto.offset.reset.
            return Ok(());
        }
        let mut wanted = Vec::new();
        for (tp, ps) in &state.assignment {
            if ps.position.is_some() {
                continue;
            }
            match ps.reset.or_else(|| self.auto_reset()) {
                Some(spec) => wanted.push((tp.clone(), spec.wire_timestamp())),
                None => return Err(Error::NoOffsetForPartition { topic: tp.topic.clone(), partition: tp.partition }),
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let found = list_offsets_until(&self.cluster, &wanted, self.config.isolation_level.wire(), deadline).await?;
        for (tp, info) in found {
            if let Some(ps) = state.assignment.get_mut(&tp) {
                if ps.position.is_none() {
                    debug!(%tp, offset = info.offset, "reset position");
                    ps.seek(info.offset.max(0));
                }
            }
        }
        Ok(())
    }

    /// Sends one Fetch per leader for the partitions that have a position, nothing buffered and
    /// nothing in flight.
    async fn send_fetches(&self, state: &mut State) {
        let metadata = self.cluster.metadata();
        let now = tokio::time::Instant::now();
        let mut by_leader: BTreeMap<i32, Vec<TopicPartition>> = BTreeMap::new();
        let mut unknown_leader: BTreeSet<&str> = BTreeSet::new();
        // Brokers leading a partition whose records are still buffered: their next fetch must
        // not long-poll, or the buffered partition could not be fetched again until it ends.
        let mut draining: BTreeSet<i32> = BTreeSet::new();
        for (tp, ps) in state.assignment.iter_mut() {
            if ps.has_buffered() {
                if let Some(leader) = metadata.leader(&tp.topic, tp.partition) {
                    draining.insert(leader);
                }
            }
            if ps.retry_at.is_some_and(|at| at > now) {
                continue;
            }
            ps.retry_at = None;
            if ps.position.is_none() || ps.in_flight || ps.paused || ps.has_buffered() {
                continue;
            }
            match metadata.leader(&tp.topic, tp.partition) {
                Some(leader) => by_leader.entry(leader).or_default().push(tp.clone()),
                None => {
                    unknown_leader.insert(tp.topic.as_str());
                }
            }
        }
        if !unknown_leader.is_empty() {
            // Name the topics: a group member that is not the leader may never have looked
            // them up, and a plain refresh only covers topics already known.
            let topics: Vec<&str> = unknown_leader.into_iter().collect();
            if let Err(e) = self.cluster.refresh_topics(&topics).await {
                debug!(error = %e, "consumer metadata refresh failed");
            }
        }
        for (broker, tps) in by_leader {
            if !state.fetching.insert(broker) {
                continue;
            }
            let max_wait_ms = if draining.contains(&broker) { 0 } else { self.config.fetch_max_wait_ms as i32 };
            let mut asked = Vec::with_capacity(tps.len());
            let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
            for tp in &tps {
                let ps = state.assignment.get_mut(tp).expect("collected from the assignment");
                ps.in_flight = true;
                asked.push((tp.clone(), ps.fetch_offset, ps.seek_epoch));
                topics.entry(tp.topic.as_str()).or_default().push(
                    FetchPartition::default()
                        .with_partition(tp.partition)
                        // Lets the broker tell a stale view of the leader (FENCED_LEADER_EPOCH)
                        // from its own (UNKNOWN_LEADER_EPOCH); -1 when unknown skips the check.
                        .with_current_leader_epoch(metadata.leader_epoch(&tp.topic, tp.partition))
                        .with_fetch_offset(ps.fetch_offset)
                        .with_partition_max_bytes(self.config.max_partition_fetch_bytes),
                );
            }
            let request = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(max_wait_ms)
                .with_min_bytes(self.config.fetch_min_bytes)
                .with_max_bytes(self.config.fetch_max_bytes)
                .with_isolation_level(self.config.isolation_level.wire())
                // No fetch session: every fetch is a full one.
                .with_session_id(0)
                .with_session_epoch(-1)
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(name, partitions)| {
                            FetchTopic::default().with_topic(TopicName(str_bytes(name))).with_partitions(partitions)
                        })
                        .collect(),
                );
            let tx = self.outcomes_tx.clone();
            let cluster = self.cluster.clone();
            // Connecting happens in the task: a leader that is down or paused must not hold up
            // poll or the fetches to other brokers.
            tokio::spawn(async move {
                let result = async {
                    let conn = cluster.broker(broker).await?;
                    let version = conn.version(ApiKey::Fetch)?;
                    conn.send::<_, FetchResponse>(ApiKey::Fetch, version, &request).await
                }
                .await;
                let _ = tx.send(FetchOutcome { broker, asked, result });
            });
        }
    }

    fn handle_outcome(&self, state: &mut State, outcome: FetchOutcome) {
        state.fetching.remove(&outcome.broker);
        for (tp, _, _) in &outcome.asked {
            if let Some(ps) = state.assignment.get_mut(tp) {
                ps.in_flight = false;
            }
        }
        let response = match outcome.result {
            Ok(r) => r,
            Err(e) => {
                if e.is_retriable() {
                    debug!(broker = outcome.broker, error = %e, "fetch failed, refreshing metadata");
                } else {
                    warn!(broker = outcome.broker, error = %e, "fetch failed");
                }
                self.back_off(state, outcome.asked.iter().map(|(tp, _, _)| tp));
                self.spawn_refresh();
                return;
            }
        };
        let top = ErrorCode(response.error_code);
        if !top.is_ok() {
            warn!(broker = outcome.broker, error = %top, "fetch failed");
            self.back_off(state, outcome.asked.iter().map(|(tp, _, _)| tp));
            return;
        }
        let asked: HashMap<(&str, i32), (i64, u64)> = outcome
            .asked
            .iter()
            .map(|(tp, offset, epoch)| ((tp.topic.as_str(), tp.partition), (*offset, *epoch)))
            .collect();
        let mut refresh = false;
        let mut failed = Vec::new();
        for topic in &response.responses {
            for p in &topic.partitions {
                let key = (topic.topic.0.as_str(), p.partition_index);
                let Some(&(fetch_offset, epoch)) = asked.get(&key) else { continue };
                let tp = TopicPartition::new(key.0, key.1);
                let Some(ps) = state.assignment.get_mut(&tp) else { continue };
                if ps.seek_epoch != epoch || ps.fetch_offset != fetch_offset {
                    continue; // sought (or reassigned) since this fetch was sent
                }
                let code = ErrorCode(p.error_code);
                match code {
                    ErrorCode::NONE => {
                        ps.high_watermark = p.high_watermark;
                        ps.last_stable_offset = p.last_stable_offset;
                        ps.log_start_offset = p.log_start_offset;
                        let Some(records) = &p.records else { continue };
                        // Only read_committed fetches get a list; an empty one changes nothing.
                        let mut aborted = p
                            .aborted_transactions
                            .as_ref()
                            .filter(|list| {
                                !list.is_empty() && self.config.isolation_level == IsolationLevel::ReadCommitted
                            })
                            .map(|list| {
                                fetcher::AbortedTransactions::new(
                                    list.iter().map(|a| (a.producer_id.0, a.first_offset)),
                                )
                            });
                        // On an error nothing of this response is kept: the same offset is
                        // fetched again, and batches kept from it would be handed out twice.
                        let kept = ps.fetched.len();
                        match fetcher::split_fetched(
                            outcome.broker,
                            &ps.topic,
                            tp.partition,
                            records,
                            fetch_offset,
                            self.config.check_crcs,
                            MAX_DECOMPRESSED_BATCH_BYTES,
                            aborted.as_mut(),
                            &mut ps.fetched,
                        ) {
                            Ok(next_fetch_offset) => ps.fetch_offset = next_fetch_offset,
                            Err(source) => {
                                ps.fetched.truncate(kept);
                                state.pending_error = Some(Error::Protocol {
                                    peer: format!("broker {} ({tp} at offset {fetch_offset})", outcome.broker),
                                    source,
                                });
                                return;
                            }
                        }
                    }
                    ErrorCode::OFFSET_OUT_OF_RANGE => match self.config.auto_offset_reset {
                        AutoOffsetReset::None => {
                            state.pending_error =
                                Some(Error::NoOffsetForPartition { topic: tp.topic.clone(), partition: tp.partition });
                        }
                        AutoOffsetReset::Earliest | AutoOffsetReset::Latest => {
                            debug!(%tp, fetch_offset, "offset out of range, resetting");
                            ps.reset_to(None);
                        }
                    },
                    code if code.is_retriable() => {
                        // NOT_LEADER_OR_FOLLOWER, FENCED_/UNKNOWN_LEADER_EPOCH, ...: fetch the
                        // same offset again, from whoever leads after the refresh.
                        debug!(%tp, error = %code, "fetch partition error, refreshing metadata");
                        refresh = true;
                        failed.push(tp);
                    }
                    code => {
                        state.pending_error = Some(Error::broker(code, format!("fetch of {tp}")));
                    }
                }
            }
        }
        self.back_off(state, failed.iter());
        if refresh {
            self.spawn_refresh();
        }
    }

    /// Holds partitions back from fetching for `retry.backoff.ms`.
    fn back_off<'a>(&self, state: &mut State, partitions: impl Iterator<Item = &'a TopicPartition>) {
        let at = tokio::time::Instant::now() + Duration::from_millis(self.config.retry_backoff_ms);
        for tp in partitions {
            if let Some(ps) = state.assignment.get_mut(tp) {
                ps.retry_at = Some(at);
            }
        }
    }

    fn spawn_refresh(&self) {
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            if let Err(e) = cluster.refresh().await {
                debug!(error = %e, "consumer metadata refresh failed");
            }
        });
    }
}

fn assigned<'a>(state: &'a mut State, tp: &TopicPartition) -> Result<&'a mut PartitionState> {
    state.assignment.get_mut(tp).ok_or_else(|| Error::NotAssigned { topic: tp.topic.clone(), partition: tp.partition })
}

/// Hands out up to `max` buffered records, starting at a rotating partition so none starves,
/// and advances positions past them. Fetched batches are decoded as they are reached. A batch
/// that fails to decode is dropped with everything fetched after it in its partition, which is
/// fetched again from its position (as a fetch that failed to decode was before batches were
/// decoded lazily: a batch damaged in transit is read again, a damaged log fails each time);
/// the other partitions go on, and the error is returned after the records taken before it.
fn take_buffered(state: &mut State, max: usize) -> Result<Vec<ConsumerRecord>> {
    let mut out = Vec::new();
    let mut error = None;
    state.next_partition = take_rotating(state, |ps| {
        let mut took = false;
        while out.len() < max {
            if ps.buffered.is_empty() {
                let Some(batch) = ps.fetched.front() else { break };
                if let Err(source) = fetcher::decode_batch(batch, &mut ps.buffered) {
                    let e = batch.error(source);
                    ps.fetch_offset = ps.position.unwrap_or(batch.from_offset);
                    ps.buffered.clear();
                    ps.fetched.clear();
                    error.get_or_insert(e);
                    break;
                }
                ps.fetched.pop_front();
                continue;
            }
            let take = ps.buffered.len().min(max - out.len());
            out.extend(ps.buffered.drain(..take));
            ps.position = out.last().map(|r| r.offset.saturating_add(1));
            took = true;
        }
        took
    });
    if let Some(e) = error {
        if out.is_empty() {
            return Err(e);
        }
        state.pending_error.get_or_insert(e);
    }
    Ok(out)
}

/// Hands out whole fetched batches until they hold at least `max` records, rotating over the
/// partitions as [`take_buffered`] does.
fn take_batches(state: &mut State, max: usize) -> Result<Vec<FetchedBatch>> {
    if let Some((tp, _)) = state.assignment.iter().find(|(_, ps)| !ps.buffered.is_empty()) {
        return Err(Error::MixedPoll { topic: tp.topic.clone(), partition: tp.partition });
    }
    let mut out = Vec::new();
    let mut records = 0;
    state.next_partition = take_rotating(state, |ps| {
        let mut took = false;
        while records < max {
            let Some(batch) = ps.fetched.pop_front() else { break };
            records += batch.records_count();
            ps.position = Some(batch.next_offset());
            out.push(batch);
            took = true;
        }
        took
    });
    Ok(out)
}

/// Runs `take` on each assigned partition that is not paused (as Java's consumer, `poll` hands
/// out nothing of a paused partition, not even what was fetched before the pause), starting at
/// a rotating one; `take` says whether it took anything. A partition left with nothing buffered
/// is positioned at its next fetch offset (past control batches and compacted gaps too).
/// Returns where the next call starts.
fn take_rotating(state: &mut State, mut take: impl FnMut(&mut PartitionState) -> bool) -> usize {
    let n = state.assignment.len();
    if n == 0 {
        return 0;
    }
    let start = state.next_partition % n;
    let mut partitions: Vec<&mut PartitionState> = state.assignment.values_mut().collect();
    let mut next = start;
    for i in (start..n).chain(0..start) {
        let ps = &mut partitions[i];
        if !ps.paused && take(ps) {
            next = i + 1;
        }
        if !ps.has_buffered() && ps.position.is_some() {
            ps.position = Some(ps.fetch_offset);
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::{Producer, ProducerConfig, ProducerRecord};
    use crate::test_broker::TestBroker;

    async fn produce(addr: &str, topic: &str, count: usize) {
        let producer = Producer::new(ProducerConfig {
            bootstrap_servers: vec![addr.to_string()],
            batch_size: 512,
            ..ProducerConfig::default()
        })
        .await
        .unwrap();
        for i in 0..count {
            let record = ProducerRecord::new(format!("v{i}")).with_key(format!("k{i}"));
            producer.send(topic, record).await.unwrap();
        }
        producer.close().await.unwrap();
    }

    fn config(addr: &str, reset: AutoOffsetReset) -> ConsumerConfig {
        ConsumerConfig {
            bootstrap_servers: vec![addr.to_string()],
            auto_offset_reset: reset,
            fetch_max_wait_ms: 50,
            max_partition_fetch_bytes: 1024,
            max_poll_records: 64,
            ..ConsumerConfig::default()
        }
    }

    fn all(topic: &str, n: i32) -> Vec<TopicPartition> {
        (0..n).map(|p| TopicPartition::new(topic, p)).collect()
    }

    #[tokio::test]
    async fn consumes_everything_in_order_per_partition() {
        let broker = TestBroker::start(&[("t", 3)]).await;
        produce(&broker.addr, "t", 500).await;
        let consumer = Consumer::new(config(&broker.addr, AutoOffsetReset::Earliest)).await.unwrap();
        consumer.assign(all("t", 3)).await.unwrap();
        let mut seen: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        let mut total = 0;
        while total < 500 {
            let records = consumer.poll(Duration::from_secs(5)).await.unwrap();
            assert!(!records.is_empty(), "stalled after {total} records");
            assert!(records.len() <= 64);
            for r in records {
                let i: usize = std::str::from_utf8(r.key.as_ref().unwrap()).unwrap()[1..].parse().unwrap();
                assert_eq!(r.value.as_deref(), Some(format!("v{i}").as_bytes()));
                assert_eq!(&*r.topic, "t");
                seen.entry(r.partition).or_default().push(r.offset);
                total += 1;
            }
        }
        assert_eq!(total, 500);
        for (p, offsets) in &seen {
            let end = broker.state.lock().unwrap().topics["t"][*p as usize].log_end_offset;
            assert_eq!(*offsets, (0..end).collect::<Vec<_>>(), "partition {p}");
            assert_eq!(consumer.position(&TopicPartition::new("t", *p)).await.unwrap(), end);
        }
        assert!(consumer.poll(Duration::from_millis(100)).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn poll_batches_hands_out_every_record_once_in_place() {
        let broker = TestBroker::start(&[("t", 3)]).await;
        produce(&broker.addr, "t", 500).await;
        let consumer = Consumer::new(config(&broker.addr, AutoOffsetReset::Earliest)).await.unwrap();
        consumer.assign(all("t", 3)).await.unwrap();
        // From inside a batch: the batch holding offset 3 starts before it.
        consumer.seek(&TopicPartition::new("t", 1), 3).await.unwrap();
        let mut seen: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        let mut total = 0;
        let expected: i64 = {
            let state = broker.state.lock().unwrap();
            (0..3).map(|p| state.topics["t"][p].log_end_offset).sum::<i64>() - 3
        };
        while total < expected {
            let batches = consumer.poll_batches(Duration::from_secs(5)).await.unwrap();
            assert!(!batches.is_empty(), "stalled after {total} records");
            for b in batches {
                assert_eq!(&*b.topic, "t");
                let records = b.records().unwrap();
                for r in records.iter() {
                    let r = r.unwrap();
                    if r.offset < b.from_offset {
                        continue;
                    }
                    let i: usize = std::str::from_utf8(r.key.unwrap()).unwrap()[1..].parse().unwrap();
                    assert_eq!(r.value, Some(format!("v{i}").as_bytes()));
                    seen.entry(b.partition).or_default().push(r.offset);
                    total += 1;
                }
            }
        }
        assert_eq!(total, expected);
        for (p, offsets) in &seen {
            let end = broker.state.lock().unwrap().topics["t"][*p as usize].log_end_offset;
            let start = if *p == 1 { 3 } else { 0 };
            assert_eq!(*offsets, (start..end).collect::<Vec<_>>(), "partition {p}");
            assert_eq!(consumer.position(&TopicPartition::new("t", *p)).await.unwrap(), end);
        }
        assert!(consumer.poll_batches(Duration::from_millis(100)).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn poll_batches_after_a_poll_that_left_records_decoded_is_refused() {
        let broker = TestBroker::start(&[("t", 1)]).await;
        produce(&broker.addr, "t", 200).await;
        let consumer =
            Consumer::new(ConsumerConfig { max_poll_records: 1, ..config(&broker.addr, AutoOffsetReset::Earliest) })
                .await
                .unwrap();
        consumer.assign(all("t", 1)).await.unwrap();
        assert_eq!(consumer.poll(Duration::from_secs(5)).await.unwrap().len(), 1);
        let result = consumer.poll_batches(Duration::from_millis(100)).await;
        assert!(matches!(result, Err(Error::MixedPoll { partition: 0, .. })), "{result:?}");
        // poll goes on where it was.
        assert_eq!(consumer.poll(Duration::from_secs(5)).await.unwrap()[0].offset, 1);
    }

    /// One batch of `values` as a producer encodes it.
    fn batch_of(values: &[&str]) -> Vec<u8> {
        use crate::protocol::record::{BatchBuilder, Record};
        let mut b = BatchBuilder::new(crate::Compression::None);
        for v in values {
            b.push(&Record { value: Some(bytes::Bytes::copy_from_slice(v.as_bytes())), ..Default::default() });
        }
        b.finish(-1, -1, -1, false).unwrap().to_vec()
    }

    #[tokio::test]
    async fn a_batch_that_fails_to_decode_fails_poll_but_not_the_other_partitions() {
        use crate::protocol::record::field;
        let broker = TestBroker::start(&[("t", 2)]).await;
        // Its CRC checks out (a broker stores it: brokers never decode records), but the
        // second record's length runs past the batch.
        let mut bad = batch_of(&["good", "bad!"]);
        let second = bad.len() - 11;
        bad[second] = 0x7e;
        let crc = crc32c::crc32c(&bad[field::ATTRIBUTES..]);
        bad[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        {
            let mut state = broker.state.lock().unwrap();
            let logs = state.topics.get_mut("t").unwrap();
            logs[0].append(&bad);
            logs[1].append(&batch_of(&["a", "b"]));
        }
        let consumer = Consumer::new(config(&broker.addr, AutoOffsetReset::Earliest)).await.unwrap();
        consumer.assign(all("t", 2)).await.unwrap();
        let mut values = Vec::new();
        let mut errors = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while (values.len() < 4 || errors < 3) && tokio::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)).await {
                Ok(records) => {
                    for r in records {
                        assert_eq!(r.partition, 1, "nothing of the bad batch is handed out");
                        values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
                    }
                }
                Err(e) => {
                    assert!(matches!(&e, Error::Protocol { peer, .. } if peer.contains("t-0")), "{e}");
                    errors += 1;
                    if errors == 2 {
                        // The healthy partition keeps flowing between the errors.
                        broker.state.lock().unwrap().topics.get_mut("t").unwrap()[1].append(&batch_of(&["c", "d"]));
                    }
                }
            }
        }
        assert_eq!(values, ["a", "b", "c", "d"]);
        assert!(errors >= 3, "the bad batch fails every time it is fetched again ({errors} errors)");
        assert_eq!(consumer.position(&TopicPartition::new("t", 0)).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_paused_partition_hands_out_nothing_until_resumed() {
        let broker = TestBroker::start(&[("t", 1)]).await;
        produce(&broker.addr, "t", 200).await;
        let tp = TopicPartition::new("t", 0);
        let consumer =
            Consumer::new(ConsumerConfig { max_poll_records: 10, ..config(&broker.addr, AutoOffsetReset::Earliest) })
                .await
                .unwrap();
        consumer.assign(vec![tp.clone()]).await.unwrap();
        let first = consumer.poll(Duration::from_secs(5)).await.unwrap();
        assert_eq!(first.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
        // More than these ten were fetched; none of them comes out while paused.
        consumer.pause(std::slice::from_ref(&tp)).await.unwrap();
        assert!(consumer.poll(Duration::from_millis(300)).await.unwrap().is_empty());
        assert_eq!(consumer.position(&tp).await.unwrap(), 10);
        consumer.resume(std::slice::from_ref(&tp)).await.unwrap();
        let mut offsets = Vec::new();
        while offsets.len() < 190 {
            let records = consumer.poll(Duration::from_secs(5)).await.unwrap();
            assert!(!records.is_empty(), "stalled at {offsets:?}");
            offsets.extend(records.iter().map(|r| r.offset));
        }
        assert_eq!(offsets, (10..200).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn seeks_and_resets() {
        let broker = TestBroker::start(&[("t", 1)]).await;
        produce(&broker.addr, "t", 20).await;
        let tp = TopicPartition::new("t", 0);

        let consumer = Consumer::new(config(&broker.addr, AutoOffsetReset::None)).await.unwrap();
        consumer.assign(vec![tp.clone()]).await.unwrap();
        assert!(matches!(consumer.poll(Duration::from_millis(10)).await, Err(Error::NoOffsetForPartition { .. })));
        consumer.seek(&tp, 15).await.unwrap();
        let records = consumer.poll(Duration::from_secs(5)).await.unwrap();
        assert_eq!(records.first().map(|r| r.offset), Some(15), "records before the seek offset are skipped");
        consumer.seek_to_beginning(&[]).await.unwrap();
        assert_eq!(consumer.position(&tp).await.unwrap(), 0);
        consumer.seek_to_end(std::slice::from_ref(&tp)).await.unwrap();
        assert_eq!(consumer.position(&tp).await.unwrap(), 20);
        assert!(matches!(
            consumer.seek(&TopicPartition::new("t", 1), 0).await,
            Err(Error::NotAssigned { partition: 1, .. })
        ));

        // Out of range: reset per auto.offset.reset=earliest.
        let consumer = Consumer::new(config(&broker.addr, AutoOffsetReset::Earliest)).await.unwrap();
        consumer.assign(vec![tp.clone()]).await.unwrap();
        consumer.seek(&tp, 1000).await.unwrap();
        let records = consumer.poll(Duration::from_secs(5)).await.unwrap();
        assert_eq!(records.first().map(|r| r.offset), Some(0));
    }
}

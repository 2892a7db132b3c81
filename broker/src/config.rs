//! Broker configuration: a plain data struct whose doc comments are the user documentation,
//! keyed by Kafka's own names (`log.segment.bytes`), and a pure `validate()`.
//!
//! Layering (defaults → TOML file → `SPATE_*` environment → flags) happens in the CLI; this
//! module only knows the values and their limits.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::BrokerError;

/// How acknowledged writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FlushMode {
    /// Every batch is fsynced before an `acks=all` produce is answered, and before consumers can
    /// read it (the high watermark only covers fsynced data). One fsync covers every batch that
    /// arrived while the previous one ran (group commit). Survives power loss.
    #[default]
    Fsync,
    /// Kafka's default: data is acknowledged from the page cache and written back by the
    /// operating system (or every `log.flush.interval.ms`). Survives a broker crash (`kill -9`),
    /// not a power loss.
    PageCache,
}

/// Broker configs that change at run time through IncrementalAlterConfigs (kept in the metadata
/// log, applied by every broker as it follows it); all others are static. Kafka's names.
pub const DYNAMIC_BROKER_CONFIGS: &[&str] = &[LEADER_REPLICATION_THROTTLED_RATE, FOLLOWER_REPLICATION_THROTTLED_RATE];
/// `leader.replication.throttled.rate`: bytes per second this broker, as leader, sends to the
/// replicas reassignments are adding, together (unset: no throttle).
pub const LEADER_REPLICATION_THROTTLED_RATE: &str = "leader.replication.throttled.rate";
/// `follower.replication.throttled.rate`: bytes per second that the replicas a reassignment is
/// adding may fetch on this broker, together (unset: no throttle).
pub const FOLLOWER_REPLICATION_THROTTLED_RATE: &str = "follower.replication.throttled.rate";

/// Everything a single broker needs to run. Every field has a default, so `spate broker` with
/// no configuration at all starts a working single-node broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `node.id`: this broker's id in the cluster.
    #[serde(rename = "node.id")]
    pub node_id: i32,
    /// `listeners`: the address the Kafka listener binds to.
    #[serde(rename = "listeners")]
    pub listen: SocketAddr,
    /// `advertised.listeners`: `host:port` that clients are told to connect to; defaults to the
    /// listen address.
    #[serde(rename = "advertised.listeners")]
    pub advertised_listener: Option<String>,
    /// `log.dirs`: where topics, partitions and broker metadata are stored.
    #[serde(rename = "log.dirs")]
    pub data_dir: PathBuf,
    /// `num.partitions`: partitions of auto-created topics and of CreateTopics with -1.
    #[serde(rename = "num.partitions")]
    pub num_partitions: i32,
    /// `auto.create.topics.enable`: create a topic when a client asks for metadata of or produces
    /// to a topic that does not exist.
    #[serde(rename = "auto.create.topics.enable")]
    pub auto_create_topics_enable: bool,
    /// `delete.topic.enable`: allow DeleteTopics.
    #[serde(rename = "delete.topic.enable")]
    pub delete_topic_enable: bool,
    /// `log.segment.bytes`: default `segment.bytes` of topics.
    #[serde(rename = "log.segment.bytes")]
    pub log_segment_bytes: u64,
    /// `log.roll.ms`: default `segment.ms` of topics.
    #[serde(rename = "log.roll.ms")]
    pub log_roll_ms: i64,
    /// `log.retention.ms`: default `retention.ms` of topics (-1 keeps data forever).
    #[serde(rename = "log.retention.ms")]
    pub log_retention_ms: i64,
    /// `log.retention.bytes`: default `retention.bytes` per partition (-1 is unlimited).
    #[serde(rename = "log.retention.bytes")]
    pub log_retention_bytes: i64,
    /// `log.retention.check.interval.ms`: how often retention runs.
    #[serde(rename = "log.retention.check.interval.ms")]
    pub log_retention_check_interval_ms: u64,
    /// `log.index.interval.bytes`: bytes between entries of the sparse offset index.
    #[serde(rename = "log.index.interval.bytes")]
    pub log_index_interval_bytes: u32,
    /// `log.flush.mode`: `fsync` (default) or `page-cache`; see the README's durability section.
    #[serde(rename = "log.flush.mode")]
    pub log_flush_mode: FlushMode,
    /// `log.flush.interval.ms`: in `page-cache` mode, fsync dirty partitions this often (0: leave
    /// write-back entirely to the operating system, as Kafka does by default).
    #[serde(rename = "log.flush.interval.ms")]
    pub log_flush_interval_ms: u64,
    /// `message.max.bytes`: the largest record batch a topic accepts (topic `max.message.bytes`).
    #[serde(rename = "message.max.bytes")]
    pub message_max_bytes: u32,
    /// `socket.request.max.bytes`: requests larger than this close the connection.
    #[serde(rename = "socket.request.max.bytes")]
    pub socket_request_max_bytes: u32,
    /// `max.connections`: connections beyond this are closed on accept.
    #[serde(rename = "max.connections")]
    pub max_connections: usize,
    /// `queued.max.requests`: requests one connection may have in progress before the broker
    /// stops reading from it (back-pressure).
    #[serde(rename = "queued.max.requests")]
    pub queued_max_requests: usize,
    /// `queued.max.request.bytes`: memory for requests being read or handled, summed over all
    /// connections. A connection takes a frame's size from this pool as soon as the size prefix
    /// has arrived, before any room is reserved for the frame, and returns it once the request
    /// has been handled; while the pool is used up the broker stops reading from connections
    /// that want more (it does not fail them), so many slow clients that each announce a large
    /// request cannot exhaust memory. -1 is unbounded (Kafka's default). Spate's default, 256
    /// MiB, holds two requests of the default `socket.request.max.bytes` (100 MiB) or hundreds
    /// of ordinary produce requests at once, about 1% of a small (24 GiB) machine. Must be at
    /// least `socket.request.max.bytes`, so that every allowed request fits.
    #[serde(rename = "queued.max.request.bytes")]
    pub queued_max_request_bytes: i64,
    /// `fetch.max.bytes`: upper bound on one fetch response, whatever the client asks for.
    #[serde(rename = "fetch.max.bytes")]
    pub fetch_max_bytes: u32,
    /// `producer.id.expiration.ms`: idempotent-producer state is dropped after this idle time.
    #[serde(rename = "producer.id.expiration.ms")]
    pub producer_id_expiration_ms: i64,
    /// `max.producers.per.partition`: bound on idempotent-producer state kept per partition
    /// (least recently used is evicted first).
    #[serde(rename = "max.producers.per.partition")]
    pub max_producers_per_partition: usize,
    /// `max.partitions`: bound on partitions this broker hosts, so CreateTopics cannot exhaust
    /// file descriptors or memory.
    #[serde(rename = "max.partitions")]
    pub max_partitions: usize,
    /// `log.cleaner.enable`: run the log cleaner, which compacts topics whose `cleanup.policy`
    /// includes `compact` (`__consumer_offsets` among them).
    #[serde(rename = "log.cleaner.enable")]
    pub log_cleaner_enable: bool,
    /// `log.cleaner.backoff.ms`: how long the cleaner sleeps between rounds over the logs.
    #[serde(rename = "log.cleaner.backoff.ms")]
    pub log_cleaner_backoff_ms: u64,
    /// `log.cleaner.dedupe.buffer.size`: memory for the cleaner's key → offset map; a log with
    /// more distinct keys in its dirty part than fit is cleaned over several passes.
    #[serde(rename = "log.cleaner.dedupe.buffer.size")]
    pub log_cleaner_dedupe_buffer_size: u64,
    /// `log.cleaner.delete.retention.ms`: default `delete.retention.ms` of topics.
    #[serde(rename = "log.cleaner.delete.retention.ms")]
    pub log_cleaner_delete_retention_ms: i64,
    /// `log.cleaner.min.cleanable.ratio`: default `min.cleanable.dirty.ratio` of topics.
    #[serde(rename = "log.cleaner.min.cleanable.ratio")]
    pub log_cleaner_min_cleanable_ratio: f64,
    /// `log.cleaner.min.compaction.lag.ms`: default `min.compaction.lag.ms` of topics.
    #[serde(rename = "log.cleaner.min.compaction.lag.ms")]
    pub log_cleaner_min_compaction_lag_ms: i64,
    /// `log.cleaner.max.compaction.lag.ms`: default `max.compaction.lag.ms` of topics.
    #[serde(rename = "log.cleaner.max.compaction.lag.ms")]
    pub log_cleaner_max_compaction_lag_ms: i64,
    /// `offsets.topic.num.partitions`: partitions of the internal `__consumer_offsets` topic,
    /// created on first use. A group's coordinator partition is `abs(hash(group.id)) % this`.
    #[serde(rename = "offsets.topic.num.partitions")]
    pub offsets_topic_num_partitions: i32,
    /// `transaction.state.log.num.partitions`: partitions of the internal `__transaction_state`
    /// topic, created on the first FindCoordinator for a transactional id. A transactional id's
    /// coordinator partition is `abs(hash(transactional.id)) % this`.
    #[serde(rename = "transaction.state.log.num.partitions")]
    pub transaction_state_log_num_partitions: i32,
    /// `transaction.state.log.replication.factor` (lowered to the live brokers when fewer).
    #[serde(rename = "transaction.state.log.replication.factor")]
    pub transaction_state_log_replication_factor: i16,
    /// `transaction.max.timeout.ms`: the largest `transaction.timeout.ms` a producer may ask for.
    #[serde(rename = "transaction.max.timeout.ms")]
    pub transaction_max_timeout_ms: i32,
    /// `transaction.partition.verification.enable` (KIP-890 part 1): before the first
    /// transactional batch of a transaction lands in a partition, its leader asks the
    /// transaction coordinator whether the producer added that partition to its ongoing
    /// transaction, and refuses the write (INVALID_TXN_STATE) if not. Off, a client that skips
    /// AddPartitionsToTxn (or a write arriving after its transaction ended) leaves a hanging
    /// transaction that holds every read_committed consumer of the partition back.
    #[serde(rename = "transaction.partition.verification.enable")]
    pub transaction_partition_verification_enable: bool,
    /// `transactional.id.expiration.ms`: a transactional id idle this long is forgotten.
    #[serde(rename = "transactional.id.expiration.ms")]
    pub transactional_id_expiration_ms: i64,
    /// `offsets.retention.minutes`: committed offsets of a group with no members are dropped
    /// this long after the group became empty (or, for a group that never had members, after
    /// the commit).
    #[serde(rename = "offsets.retention.minutes")]
    pub offsets_retention_minutes: i64,
    /// `offset.metadata.max.bytes`: largest metadata string a commit may carry.
    #[serde(rename = "offset.metadata.max.bytes")]
    pub offset_metadata_max_bytes: usize,
    /// `group.min.session.timeout.ms`: smallest session timeout a member may ask for.
    #[serde(rename = "group.min.session.timeout.ms")]
    pub group_min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`: largest session timeout a member may ask for.
    #[serde(rename = "group.max.session.timeout.ms")]
    pub group_max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty group waits
    /// for more members to join (extended by each new member, up to the rebalance timeout).
    /// Kafka's default of 3000 is kept; tests and single-consumer setups set it to 0.
    #[serde(rename = "group.initial.rebalance.delay.ms")]
    pub group_initial_rebalance_delay_ms: i32,
    /// `group.max.size`: members one group may have (Kafka's default is unlimited; a bound keeps
    /// a peer from growing coordinator memory without limit).
    #[serde(rename = "group.max.size")]
    pub group_max_size: usize,
    /// `group.max.count` (Spate): groups this coordinator holds; joins and commits that would
    /// create more are refused.
    #[serde(rename = "group.max.count")]
    pub group_max_count: usize,
    /// `group.member.metadata.max.bytes` (Spate): largest protocol metadata (summed over its
    /// protocols) a member may join with, and largest assignment a leader may hand one member.
    #[serde(rename = "group.member.metadata.max.bytes")]
    pub group_member_metadata_max_bytes: usize,
    /// `controller.quorum.voters`: the metadata quorum as `id@host:port,...` (the controller
    /// RPC addresses of every voter, this node among them). Empty (the default): a single-node
    /// cluster whose quorum is this node alone, with no controller listener.
    #[serde(rename = "controller.quorum.voters")]
    pub controller_quorum_voters: String,
    /// `controller.listener` (Spate): where this node's controller RPC binds; defaults to its own
    /// address in `controller.quorum.voters`. A broker-only node must set it: the quorum leader
    /// sends it the metadata log there.
    #[serde(rename = "controller.listener")]
    pub controller_listener: Option<SocketAddr>,
    /// `process.roles`: `broker,controller` (the default: a broker and a voter of the metadata
    /// quorum, KRaft's combined mode) or `broker` (a broker-only node: it follows the metadata
    /// log as a non-voting observer, so a cluster can grow beyond its voters).
    #[serde(rename = "process.roles")]
    pub process_roles: String,
    /// `metrics.listener` (Spate): where `spate broker` serves Prometheus metrics (`GET
    /// /metrics`), e.g. `127.0.0.1:9464`; unset (the default): no endpoint.
    #[serde(rename = "metrics.listener")]
    pub metrics_listener: Option<SocketAddr>,
    /// `default.replication.factor`: replicas of auto-created topics and of CreateTopics with -1.
    #[serde(rename = "default.replication.factor")]
    pub default_replication_factor: i16,
    /// `min.insync.replicas`: default of the topic config; an `acks=all` produce needs at least
    /// this many in-sync replicas (NOT_ENOUGH_REPLICAS otherwise).
    #[serde(rename = "min.insync.replicas")]
    pub min_insync_replicas: i32,
    /// `replica.lag.time.max.ms`: a follower that has not caught up with the leader's log end for
    /// this long leaves the ISR.
    #[serde(rename = "replica.lag.time.max.ms")]
    pub replica_lag_time_max_ms: i64,
    /// `replica.fetch.wait.max.ms`: how long a follower's fetch parks at the leader.
    #[serde(rename = "replica.fetch.wait.max.ms")]
    pub replica_fetch_wait_max_ms: i32,
    /// `replica.fetch.max.bytes`: bytes a follower asks for per partition and fetch.
    #[serde(rename = "replica.fetch.max.bytes")]
    pub replica_fetch_max_bytes: i32,
    /// `replica.fetch.backoff.ms`: pause after a failed follower fetch.
    #[serde(rename = "replica.fetch.backoff.ms")]
    pub replica_fetch_backoff_ms: u64,
    /// `broker.heartbeat.interval.ms`: how often a broker tells the controller it is alive.
    #[serde(rename = "broker.heartbeat.interval.ms")]
    pub broker_heartbeat_interval_ms: u64,
    /// `broker.session.timeout.ms`: a broker not heard from for this long is fenced: it loses
    /// leadership and leaves every ISR.
    #[serde(rename = "broker.session.timeout.ms")]
    pub broker_session_timeout_ms: u64,
    /// `unclean.leader.election.enable`: let a replica outside the ISR lead when no ISR member is
    /// alive (loses acknowledged data; off by default, as in Kafka).
    #[serde(rename = "unclean.leader.election.enable")]
    pub unclean_leader_election_enable: bool,
    /// `auto.leader.rebalance.enable`: move leadership back to the preferred (first) replica once
    /// it is in sync again.
    #[serde(rename = "auto.leader.rebalance.enable")]
    pub auto_leader_rebalance_enable: bool,
    /// `controlled.shutdown.enable`: on SIGTERM a broker of a cluster first has the controller
    /// move its leaderships to other in-sync replicas and take it out of the ISRs, so clients
    /// switch leaders at once instead of timing out until its session expires.
    #[serde(rename = "controlled.shutdown.enable")]
    pub controlled_shutdown_enable: bool,
    /// `leader.imbalance.check.interval.seconds`: how often preferred leaders are restored.
    #[serde(rename = "leader.imbalance.check.interval.seconds")]
    pub leader_imbalance_check_interval_seconds: u64,
    /// `offsets.topic.replication.factor`: replicas of `__consumer_offsets` (lowered to the
    /// number of live brokers when the cluster is smaller, so a single node works).
    #[serde(rename = "offsets.topic.replication.factor")]
    pub offsets_topic_replication_factor: i16,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            advertised_listener: None,
            data_dir: PathBuf::from("./spate-data"),
            num_partitions: 1,
            auto_create_topics_enable: true,
            delete_topic_enable: true,
            log_segment_bytes: 1 << 30,
            log_roll_ms: 7 * 24 * 3600 * 1000,
            log_retention_ms: 7 * 24 * 3600 * 1000,
            log_retention_bytes: -1,
            log_retention_check_interval_ms: 300_000,
            log_index_interval_bytes: 4096,
            log_flush_mode: FlushMode::Fsync,
            log_flush_interval_ms: 0,
            message_max_bytes: 1_048_588,
            socket_request_max_bytes: 104_857_600,
            max_connections: 10_000,
            queued_max_requests: 64,
            queued_max_request_bytes: 256 << 20,
            fetch_max_bytes: 57_671_680,
            producer_id_expiration_ms: 86_400_000,
            max_producers_per_partition: 10_000,
            max_partitions: 10_000,
            log_cleaner_enable: true,
            log_cleaner_backoff_ms: 15_000,
            log_cleaner_dedupe_buffer_size: 128 << 20,
            log_cleaner_delete_retention_ms: 86_400_000,
            log_cleaner_min_cleanable_ratio: 0.5,
            log_cleaner_min_compaction_lag_ms: 0,
            log_cleaner_max_compaction_lag_ms: i64::MAX,
            offsets_topic_num_partitions: 50,
            transaction_state_log_num_partitions: 50,
            transaction_state_log_replication_factor: 3,
            transaction_max_timeout_ms: 900_000,
            transaction_partition_verification_enable: true,
            transactional_id_expiration_ms: 604_800_000,
            offsets_retention_minutes: 7 * 24 * 60,
            offset_metadata_max_bytes: 4096,
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 1_800_000,
            group_initial_rebalance_delay_ms: 3_000,
            group_max_size: 1_000,
            group_max_count: 10_000,
            group_member_metadata_max_bytes: 1 << 20,
            controller_quorum_voters: String::new(),
            controller_listener: None,
            process_roles: "broker,controller".into(),
            metrics_listener: None,
            default_replication_factor: 1,
            min_insync_replicas: 1,
            replica_lag_time_max_ms: 10_000,
            replica_fetch_wait_max_ms: 500,
            replica_fetch_max_bytes: 1 << 20,
            replica_fetch_backoff_ms: 200,
            broker_heartbeat_interval_ms: 500,
            broker_session_timeout_ms: 6_000,
            unclean_leader_election_enable: false,
            auto_leader_rebalance_enable: true,
            controlled_shutdown_enable: true,
            leader_imbalance_check_interval_seconds: 30,
            offsets_topic_replication_factor: 3,
        }
    }
}

impl BrokerConfig {
    /// Checks every value; the returned config is the one the broker runs with.
    pub fn validate(self) -> Result<BrokerConfig, BrokerError> {
        let bad = |key: &str, reason: String| Err(BrokerError::InvalidConfig { key: key.to_string(), reason });
        if self.node_id < 0 {
            return bad("node.id", format!("{} must not be negative", self.node_id));
        }
        if !(1..=10_000).contains(&self.num_partitions) {
            return bad("num.partitions", format!("{} must be between 1 and 10000", self.num_partitions));
        }
        if self.log_segment_bytes < 1024 || self.log_segment_bytes > i32::MAX as u64 {
            return bad(
                "log.segment.bytes",
                format!("{} must be between 1024 and {}", self.log_segment_bytes, i32::MAX),
            );
        }
        if self.log_roll_ms < 1 {
            return bad("log.roll.ms", format!("{} must be positive", self.log_roll_ms));
        }
        if self.log_retention_ms < -1 {
            return bad("log.retention.ms", format!("{} must be -1 or more", self.log_retention_ms));
        }
        if self.log_retention_bytes < -1 {
            return bad("log.retention.bytes", format!("{} must be -1 or more", self.log_retention_bytes));
        }
        if self.log_retention_check_interval_ms == 0 {
            return bad("log.retention.check.interval.ms", "must be positive".into());
        }
        if self.message_max_bytes < 64 {
            return bad(
                "message.max.bytes",
                format!("{} is smaller than a record batch header", self.message_max_bytes),
            );
        }
        if self.socket_request_max_bytes < self.message_max_bytes || self.socket_request_max_bytes > i32::MAX as u32 {
            return bad(
                "socket.request.max.bytes",
                format!("{} must be at least message.max.bytes and below 2 GiB", self.socket_request_max_bytes),
            );
        }
        if self.queued_max_requests == 0 || self.max_connections == 0 || self.max_partitions == 0 {
            return bad("queued.max.requests / max.connections / max.partitions", "must be positive".into());
        }
        if self.queued_max_request_bytes != -1 && self.queued_max_request_bytes < self.socket_request_max_bytes as i64 {
            return bad(
                "queued.max.request.bytes",
                format!(
                    "{} must be -1 (unbounded) or at least socket.request.max.bytes {}, or the largest allowed \
                     request could never be read",
                    self.queued_max_request_bytes, self.socket_request_max_bytes
                ),
            );
        }
        if self.log_cleaner_backoff_ms == 0 {
            return bad("log.cleaner.backoff.ms", "must be positive".into());
        }
        if self.log_cleaner_dedupe_buffer_size < 1024 || self.log_cleaner_dedupe_buffer_size > 1 << 40 {
            return bad(
                "log.cleaner.dedupe.buffer.size",
                format!("{} must be between 1024 and 2^40", self.log_cleaner_dedupe_buffer_size),
            );
        }
        if !(0.0..=1.0).contains(&self.log_cleaner_min_cleanable_ratio) {
            return bad(
                "log.cleaner.min.cleanable.ratio",
                format!("{} must be between 0 and 1", self.log_cleaner_min_cleanable_ratio),
            );
        }
        if self.log_cleaner_delete_retention_ms < 0
            || self.log_cleaner_min_compaction_lag_ms < 0
            || self.log_cleaner_max_compaction_lag_ms < 1
        {
            return bad(
                "log.cleaner.delete.retention.ms / log.cleaner.min.compaction.lag.ms / log.cleaner.max.compaction.lag.ms",
                "must not be negative (the maximum lag: positive)".into(),
            );
        }
        if self.max_producers_per_partition == 0 {
            return bad("max.producers.per.partition", "must be positive".into());
        }
        if !(1..=1000).contains(&self.offsets_topic_num_partitions) {
            return bad(
                "offsets.topic.num.partitions",
                format!("{} must be between 1 and 1000", self.offsets_topic_num_partitions),
            );
        }
        if !(1..=1000).contains(&self.transaction_state_log_num_partitions) {
            return bad(
                "transaction.state.log.num.partitions",
                format!("{} must be between 1 and 1000", self.transaction_state_log_num_partitions),
            );
        }
        if !(1..=16).contains(&self.transaction_state_log_replication_factor) {
            return bad(
                "transaction.state.log.replication.factor",
                format!("{} must be between 1 and 16", self.transaction_state_log_replication_factor),
            );
        }
        if self.transaction_max_timeout_ms < 1 {
            return bad("transaction.max.timeout.ms", "must be positive".into());
        }
        if self.transactional_id_expiration_ms < 1 {
            return bad("transactional.id.expiration.ms", "must be positive".into());
        }
        if self.offsets_retention_minutes < 1 {
            return bad("offsets.retention.minutes", format!("{} must be positive", self.offsets_retention_minutes));
        }
        if self.group_min_session_timeout_ms < 1
            || self.group_max_session_timeout_ms < self.group_min_session_timeout_ms
        {
            return bad(
                "group.min.session.timeout.ms / group.max.session.timeout.ms",
                format!(
                    "{}..={} must be a positive range",
                    self.group_min_session_timeout_ms, self.group_max_session_timeout_ms
                ),
            );
        }
        if self.group_initial_rebalance_delay_ms < 0 {
            return bad(
                "group.initial.rebalance.delay.ms",
                format!("{} must not be negative", self.group_initial_rebalance_delay_ms),
            );
        }
        if self.group_max_size == 0 || self.group_max_count == 0 || self.group_member_metadata_max_bytes == 0 {
            return bad(
                "group.max.size / group.max.count / group.member.metadata.max.bytes",
                "must be positive".into(),
            );
        }
        let voters = self.quorum_voters()?;
        if self.is_voter()? {
            if !voters.is_empty() && !voters.contains_key(&self.node_id) {
                return bad(
                    "controller.quorum.voters",
                    format!(
                        "node {} is not among the voters; a node that is not a controller needs process.roles=broker",
                        self.node_id
                    ),
                );
            }
        } else {
            if voters.is_empty() {
                return bad(
                    "process.roles",
                    "a broker-only node needs controller.quorum.voters naming the existing quorum".into(),
                );
            }
            if voters.contains_key(&self.node_id) {
                return bad(
                    "process.roles",
                    format!(
                        "node {} is a voter in controller.quorum.voters, so it must be broker,controller",
                        self.node_id
                    ),
                );
            }
            match self.controller_listener {
                None => {
                    return bad(
                        "controller.listener",
                        "a broker-only node must set it: the quorum leader sends the metadata log there".into(),
                    )
                }
                Some(addr) if addr.ip().is_unspecified() || addr.port() == 0 => {
                    return bad(
                        "controller.listener",
                        format!("{addr}: a broker-only node advertises it to the quorum, so it needs a concrete address and port"),
                    )
                }
                Some(_) => {}
            }
        }
        if !(1..=16).contains(&self.default_replication_factor) && self.default_replication_factor != -1 {
            return bad(
                "default.replication.factor",
                format!("{} must be between 1 and 16", self.default_replication_factor),
            );
        }
        if !(1..=16).contains(&self.offsets_topic_replication_factor) {
            return bad(
                "offsets.topic.replication.factor",
                format!("{} must be between 1 and 16", self.offsets_topic_replication_factor),
            );
        }
        if self.min_insync_replicas < 1 {
            return bad("min.insync.replicas", format!("{} must be positive", self.min_insync_replicas));
        }
        if self.replica_lag_time_max_ms < 1
            || self.replica_fetch_wait_max_ms < 0
            || self.replica_fetch_max_bytes < 1024
            || self.broker_heartbeat_interval_ms == 0
            || self.leader_imbalance_check_interval_seconds == 0
        {
            return bad(
                "replica.lag.time.max.ms / replica.fetch.wait.max.ms / replica.fetch.max.bytes / \
                 broker.heartbeat.interval.ms / leader.imbalance.check.interval.seconds",
                "must be positive (replica.fetch.max.bytes at least 1024)".into(),
            );
        }
        if self.broker_session_timeout_ms <= self.broker_heartbeat_interval_ms {
            return bad(
                "broker.session.timeout.ms",
                format!(
                    "{} must be longer than broker.heartbeat.interval.ms {}",
                    self.broker_session_timeout_ms, self.broker_heartbeat_interval_ms
                ),
            );
        }
        if let Some(adv) = &self.advertised_listener {
            if adv.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return bad("advertised.listeners", format!("'{adv}' is not host:port"));
            }
        }
        Ok(self)
    }

    /// `process.roles` parsed: true for `broker,controller` (either order), false for `broker`.
    pub fn is_voter(&self) -> Result<bool, BrokerError> {
        let mut roles: Vec<&str> = self.process_roles.split(',').map(str::trim).filter(|r| !r.is_empty()).collect();
        roles.sort_unstable();
        roles.dedup();
        match roles.as_slice() {
            ["broker", "controller"] => Ok(true),
            ["broker"] => Ok(false),
            _ => Err(BrokerError::InvalidConfig {
                key: "process.roles".into(),
                reason: format!(
                    "'{}' is not supported: use broker,controller or broker (controller-only nodes are not built)",
                    self.process_roles
                ),
            }),
        }
    }

    /// `controller.quorum.voters` parsed: voter id → controller RPC address. Empty for a
    /// single-node cluster.
    pub fn quorum_voters(&self) -> Result<std::collections::BTreeMap<i32, SocketAddr>, BrokerError> {
        let mut voters = std::collections::BTreeMap::new();
        for entry in self.controller_quorum_voters.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |reason: &str| BrokerError::InvalidConfig {
                key: "controller.quorum.voters".into(),
                reason: format!("'{entry}' {reason} (expected id@host:port)"),
            };
            let (id, addr) = entry.split_once('@').ok_or_else(|| bad("has no '@'"))?;
            let id: i32 = id.parse().map_err(|_| bad("has no numeric node id"))?;
            let addr = std::net::ToSocketAddrs::to_socket_addrs(addr)
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| bad("has no resolvable address"))?;
            if voters.insert(id, addr).is_some() {
                return Err(bad("repeats a node id"));
            }
        }
        Ok(voters)
    }

    /// Host and port clients are told to use.
    pub fn advertised(&self) -> (String, i32) {
        match &self.advertised_listener {
            Some(adv) => {
                let (host, port) = adv.rsplit_once(':').unwrap_or((adv, "9092"));
                (host.to_string(), port.parse().unwrap_or(9092))
            }
            None => (self.listen.ip().to_string(), self.listen.port() as i32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        BrokerConfig::default().validate().unwrap();
    }

    #[test]
    fn toml_uses_kafka_names_and_rejects_unknown_keys() {
        let cfg: BrokerConfig = toml::from_str("\"node.id\" = 3\n\"log.flush.mode\" = \"page-cache\"\n").unwrap();
        assert_eq!(cfg.node_id, 3);
        assert_eq!(cfg.log_flush_mode, FlushMode::PageCache);
        assert!(toml::from_str::<BrokerConfig>("\"no.such.key\" = 1\n").is_err());
    }

    #[test]
    fn quorum_voters_parse_and_refuse_garbage() {
        let cfg = BrokerConfig {
            node_id: 2,
            controller_quorum_voters: "1@127.0.0.1:19091, 2@127.0.0.1:19092,3@127.0.0.1:19093".into(),
            ..Default::default()
        };
        let voters = cfg.quorum_voters().unwrap();
        assert_eq!(voters.len(), 3);
        assert_eq!(voters[&2], SocketAddr::from(([127, 0, 0, 1], 19092)));
        cfg.validate().unwrap();
        for bad in ["1@", "x@127.0.0.1:1", "127.0.0.1:1", "1@127.0.0.1:1,1@127.0.0.1:2"] {
            let cfg = BrokerConfig { controller_quorum_voters: bad.into(), ..Default::default() };
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains("controller.quorum.voters"), "{bad}: {err}");
        }
        let not_voter =
            BrokerConfig { node_id: 9, controller_quorum_voters: "1@127.0.0.1:1".into(), ..Default::default() };
        assert!(not_voter.validate().is_err());
    }

    #[test]
    fn broker_only_nodes_need_a_quorum_and_a_concrete_controller_listener() {
        let observer = |listener: Option<&str>, voters: &str, id: i32| BrokerConfig {
            node_id: id,
            process_roles: "broker".into(),
            controller_quorum_voters: voters.into(),
            controller_listener: listener.map(|l| l.parse().unwrap()),
            ..Default::default()
        };
        let ok = observer(Some("127.0.0.1:19094"), "1@127.0.0.1:19091", 4).validate().unwrap();
        assert!(!ok.is_voter().unwrap());
        let err = |cfg: BrokerConfig| cfg.validate().unwrap_err().to_string();
        assert!(err(observer(None, "1@127.0.0.1:19091", 4)).contains("controller.listener"));
        assert!(err(observer(Some("0.0.0.0:19094"), "1@127.0.0.1:19091", 4)).contains("concrete"));
        assert!(err(observer(Some("127.0.0.1:19094"), "", 4)).contains("controller.quorum.voters"));
        assert!(err(observer(Some("127.0.0.1:19094"), "4@127.0.0.1:19091", 4)).contains("is a voter"));
        for roles in ["controller", "broker,zookeeper", ""] {
            let cfg = BrokerConfig { process_roles: roles.into(), ..Default::default() };
            assert!(err(cfg).contains("process.roles"), "{roles}");
        }
        let combined = BrokerConfig { process_roles: "controller, broker".into(), ..Default::default() };
        assert!(combined.validate().unwrap().is_voter().unwrap());
    }

    #[test]
    fn request_memory_pool_is_unbounded_or_fits_the_largest_request() {
        BrokerConfig { queued_max_request_bytes: -1, ..Default::default() }.validate().unwrap();
        let exact =
            BrokerConfig { socket_request_max_bytes: 2 << 20, queued_max_request_bytes: 2 << 20, ..Default::default() };
        exact.validate().unwrap();
        for bytes in [0, -2, (100 << 20) - 1] {
            let cfg = BrokerConfig { queued_max_request_bytes: bytes, ..Default::default() };
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains("queued.max.request.bytes"), "{bytes}: {err}");
        }
    }

    #[test]
    fn invalid_values_name_the_key() {
        let cfg = BrokerConfig { num_partitions: 0, ..Default::default() };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("num.partitions"), "{err}");
    }
}

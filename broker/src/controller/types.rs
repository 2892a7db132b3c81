//! The data the metadata quorum agrees on, and what brokers ask of it. Pure data (serde), shared
//! by the controller (which applies records), the broker (which serves the image to clients) and
//! the replica manager (which turns partition state into leader/follower roles).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `leader` of a partition that has none (every ISR member is fenced).
pub const NO_LEADER: i32 = -1;

/// One broker as the quorum knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub id: i32,
    /// Advertised Kafka listener.
    pub host: String,
    pub port: i32,
    /// New for every process start, so a restarted broker is told apart from its old self.
    pub incarnation_id: Uuid,
    /// A fenced broker missed heartbeats: it leads nothing and is in no ISR (Kafka's "fenced").
    pub fenced: bool,
}

/// Leader, replicas and in-sync replicas of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionImage {
    /// Assigned replicas; the first is the preferred leader.
    pub replicas: Vec<i32>,
    /// In-sync replicas; never empty (when the last member is fenced it stays, with no leader,
    /// so that only it can lead again without an unclean election).
    pub isr: Vec<i32>,
    /// The leader, or [`NO_LEADER`].
    pub leader: i32,
    /// Bumped on every leader change; stamped on every batch the leader appends.
    pub leader_epoch: i32,
    /// Bumped on every change of this partition (ISR included); AlterPartition must name the
    /// current value (Kafka's `partition_epoch`, KIP-497).
    pub partition_epoch: i32,
    /// A reassignment in progress (KIP-455): replicas being added (they are in `replicas`,
    /// catching up) and being removed (they leave once every added one is in sync).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adding_replicas: Vec<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removing_replicas: Vec<i32>,
}

impl PartitionImage {
    pub fn has_leader(&self) -> bool {
        self.leader != NO_LEADER
    }

    pub fn is_reassigning(&self) -> bool {
        !self.adding_replicas.is_empty() || !self.removing_replicas.is_empty()
    }

    /// Where a reassignment goes: `replicas` without those being removed, in order.
    pub fn target_replicas(&self) -> Vec<i32> {
        self.replicas.iter().copied().filter(|r| !self.removing_replicas.contains(r)).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    pub name: String,
    pub id: Uuid,
    /// Topic config overrides (`retention.ms`, `min.insync.replicas`, ...).
    pub configs: BTreeMap<String, String>,
    /// Indexed by partition number.
    pub partitions: Vec<PartitionImage>,
}

/// The replicated cluster metadata, as of `applied_index` of the metadata log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    /// Empty until the first controller leader writes it.
    pub cluster_id: String,
    pub brokers: BTreeMap<i32, BrokerRegistration>,
    pub topics: BTreeMap<String, TopicImage>,
    /// The first producer id not yet handed out (brokers take blocks).
    pub next_producer_id: i64,
    /// Dynamic broker configs by broker id (`follower.replication.throttled.rate`), set with
    /// IncrementalAlterConfigs; everything else about a broker is static.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub broker_configs: BTreeMap<i32, BTreeMap<String, String>>,
    /// Raft log index of the last record applied.
    pub applied_index: u64,
}

impl MetadataImage {
    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionImage> {
        let p = usize::try_from(partition).ok()?;
        self.topics.get(topic)?.partitions.get(p)
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<&TopicImage> {
        self.topics.values().find(|t| t.id == id)
    }

    /// Unfenced brokers, by id.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerRegistration> {
        self.brokers.values().filter(|b| !b.fenced)
    }
}

/// What a broker asks the controller. The controller leader turns each into metadata records
/// (or refuses it); followers of the quorum forward it to the leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControllerRequest {
    /// Sent once per process start; unfences the broker.
    RegisterBroker {
        broker_id: i32,
        host: String,
        port: i32,
        incarnation_id: Uuid,
    },
    /// Sent every `broker.heartbeat.interval.ms`. A broker heard from within
    /// `broker.session.timeout.ms` stays unfenced; a fenced one that heartbeats is unfenced.
    BrokerHeartbeat {
        broker_id: i32,
        incarnation_id: Uuid,
    },
    /// Replica placement is the controller's (spread over unfenced brokers, leaders rotated).
    /// `replication_factor` -1 means `default.replication.factor`.
    CreateTopic {
        name: String,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    },
    DeleteTopic {
        name: String,
    },
    /// Grows the topic to `total` partitions.
    CreatePartitions {
        name: String,
        total: i32,
        validate_only: bool,
    },
    /// Replaces the topic's config overrides with `configs`.
    AlterTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// A leader's ISR change (shrink on lag, expand on catch-up), Kafka's AlterPartition.
    AlterPartition {
        broker_id: i32,
        topic: String,
        partition: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        new_isr: Vec<i32>,
    },
    /// Hands out `count` producer ids.
    AllocateProducerIds {
        broker_id: i32,
        count: i64,
    },
    /// Controlled shutdown (Kafka's `controlled.shutdown.enable`): the broker is about to stop;
    /// it is fenced now, as if its session had expired, which moves its leaderships to other
    /// in-sync replicas and takes it out of the ISRs. Its next registration unfences it.
    ControlledShutdown {
        broker_id: i32,
        incarnation_id: Uuid,
    },
    /// AlterPartitionReassignments (KIP-455): per partition the target replicas, or `None` to
    /// cancel the reassignment in progress.
    AlterPartitionReassignments {
        reassignments: Vec<(String, i32, Option<Vec<i32>>)>,
    },
    /// ElectLeaders (KIP-460): the preferred replica (`replicas[0]`) where it is live and in
    /// sync, or (`unclean`) a live replica for partitions without a live leader, out of sync if
    /// need be. `partitions` `None` means every partition.
    ElectLeaders {
        unclean: bool,
        partitions: Option<Vec<(String, i32)>>,
    },
    /// IncrementalAlterConfigs of a broker's dynamic configs (only
    /// [`crate::config::DYNAMIC_BROKER_CONFIGS`]): `set` then `delete`.
    AlterBrokerConfigs {
        broker_id: i32,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
        validate_only: bool,
    },
    /// UnregisterBroker (KIP-631): forgets a decommissioned broker. Refused while it is
    /// unfenced (running) or still named in some partition's replicas. A broker-only node also
    /// leaves the metadata quorum's observers.
    UnregisterBroker {
        broker_id: i32,
    },
    /// AddRaftVoter (KIP-853): a broker-only node already following the metadata log (an
    /// observer, caught up) becomes a voter. `addr`, when given, must be the controller address
    /// it joined with. Not a metadata record: a Raft membership change, run by the leader.
    AddVoter {
        node_id: i32,
        addr: Option<String>,
    },
    /// RemoveRaftVoter (KIP-853): a voter leaves the quorum and stays an observer (it keeps
    /// following the log as long as it runs as a broker). The last voter cannot leave.
    RemoveVoter {
        node_id: i32,
    },
    /// DescribeQuorum: the leader's view of the metadata quorum.
    DescribeQuorum,
}

/// One member of the metadata quorum, as the leader sees it ([`QuorumDescription`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumMember {
    pub id: i32,
    /// Its controller RPC address (`host:port`).
    pub addr: String,
    /// The next metadata log offset it does not have yet, as the leader last learnt; -1 when
    /// the leader has not heard from it since it became leader.
    pub log_end_offset: i64,
}

/// DescribeQuorum's answer: who leads in which term, how far the log is committed, and every
/// voter and observer with its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumDescription {
    pub leader_id: i32,
    /// The Raft term (Kafka's leader epoch of `__cluster_metadata`).
    pub leader_epoch: i32,
    /// The next offset past the committed metadata log.
    pub high_watermark: i64,
    pub voters: Vec<QuorumMember>,
    pub observers: Vec<QuorumMember>,
}

/// One partition's outcome of [`ControllerRequest::ElectLeaders`]: a Kafka error code (0 when a
/// leader was elected) and what it means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionResult {
    pub topic: String,
    pub partition: i32,
    pub code: i16,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControllerReply {
    Done,
    Heartbeat { fenced: bool },
    TopicCreated { id: Uuid },
    Partition { state: PartitionImage },
    ProducerIds { first_id: i64, count: i64 },
    Elections { results: Vec<ElectionResult> },
    Quorum(QuorumDescription),
}

/// A refusal, with the Kafka error code a client should see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("controller refused the request ({code}): {message}")]
pub struct ControllerRefusal {
    pub code: i16,
    pub message: String,
}

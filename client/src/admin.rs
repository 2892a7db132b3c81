//! Cluster administration: topics, partitions, configs, offsets and consumer groups. Requests
//! that change the cluster go to the controller; describing topics reads the metadata cache's
//! source, a Metadata request; group requests go to the group's coordinator, found with
//! FindCoordinator (and found again when the coordinator moves).
//!
//! Per-item failures (one topic of several already exists) come back per item, not as one
//! error, as in the Java `Admin` client.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;

use crate::connection::{Connection, ConnectionConfig};
pub use crate::consumer::OffsetAndMetadata;
use crate::error::{Error, ProtocolError, Result};
use crate::metadata::{BrokerMetadata, Cluster, ClusterConfig, PartitionMetadata, TopicPartition};
use crate::protocol::messages::create_partitions_request::CreatePartitionsTopic;
use crate::protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use crate::protocol::messages::delete_topics_request::DeleteTopicState;
use crate::protocol::messages::describe_configs_request::DescribeConfigsResource;
use crate::protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use crate::protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use crate::protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use crate::protocol::messages::offset_delete_request::{OffsetDeleteRequestPartition, OffsetDeleteRequestTopic};
use crate::protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use crate::protocol::messages::write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
use crate::protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteGroupsRequest, DeleteGroupsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, DescribeGroupsRequest, DescribeGroupsResponse, DescribeProducersRequest,
    DescribeProducersResponse, DescribeTransactionsRequest, DescribeTransactionsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    InitProducerIdRequest, InitProducerIdResponse, ListGroupsRequest, ListGroupsResponse, ListOffsetsRequest,
    ListOffsetsResponse, ListTransactionsRequest, ListTransactionsResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse, ProducerId, TopicName,
    TransactionalId, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use crate::protocol::{str_bytes, ApiKey, Codec, ErrorCode};

/// How long `list_groups` waits before asking a broker that is loading groups again.
const LOAD_IN_PROGRESS_BACKOFF: Duration = Duration::from_millis(100);

/// Admin client settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bootstrap_servers: Vec<String>,
    pub client_id: String,
    pub request_timeout_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bootstrap_servers: vec!["127.0.0.1:9092".into()],
            client_id: "spate-admin".into(),
            request_timeout_ms: 30_000,
        }
    }
}

/// A topic to create. `replication_factor` -1 and `num_partitions` -1 take the broker defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    pub num_partitions: i32,
    pub replication_factor: i16,
    /// Topic configs by Kafka's keys (`retention.ms`, `cleanup.policy`, ...).
    pub configs: BTreeMap<String, String>,
}

impl NewTopic {
    pub fn new(name: impl Into<String>, num_partitions: i32, replication_factor: i16) -> Self {
        NewTopic { name: name.into(), num_partitions, replication_factor, configs: BTreeMap::new() }
    }

    pub fn with_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.insert(key.into(), value.into());
        self
    }
}

/// A partition's reassignment in progress (ListPartitionReassignments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReassignment {
    pub replicas: Vec<i32>,
    pub adding_replicas: Vec<i32>,
    pub removing_replicas: Vec<i32>,
}

/// A topic as `describe_topics` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    pub name: String,
    pub topic_id: uuid::Uuid,
    pub is_internal: bool,
    pub partitions: Vec<PartitionMetadata>,
}

/// Resends of an admin request whose connection was lost.
const CONTROLLER_ATTEMPTS: u32 = 2;
/// The metadata log, as DescribeQuorum names it (partition 0).
pub const METADATA_LOG_TOPIC: &str = "__cluster_metadata";
/// How long the broker may take to make a new voter (the quorum commits a joint configuration);
/// below the client's request timeout, so the broker's answer arrives first.
const ADD_RAFT_VOTER_TIMEOUT_MS: i32 = 20_000;

/// The cluster as a Metadata request describes it (what Kafka's `Admin.describeCluster`
/// returns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDescription {
    pub cluster_id: Option<String>,
    /// The broker that admin requests go to; in a KRaft cluster Kafka names a live broker here
    /// (the active controller is not a broker). -1 when none is known.
    pub controller_id: i32,
    /// Live (registered, unfenced) brokers, by node id.
    pub brokers: Vec<BrokerMetadata>,
}

/// One member of the metadata quorum ([`QuorumInfo`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumReplica {
    pub id: i32,
    /// The next metadata log offset it lacks, as the leader last learnt (-1: not known).
    pub log_end_offset: i64,
    /// Its controller listener (`host:port`), when the broker reports it (DescribeQuorum v2).
    pub controller_listener: Option<String>,
}

/// The metadata quorum as its leader describes it (Kafka's `Admin.describeMetadataQuorum`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumInfo {
    pub leader_id: i32,
    pub leader_epoch: i32,
    pub high_watermark: i64,
    pub voters: Vec<QuorumReplica>,
    pub observers: Vec<QuorumReplica>,
}

/// What a config request is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConfigResource {
    Topic(String),
    Broker(i32),
}

impl ConfigResource {
    fn type_and_name(&self) -> (i8, String) {
        match self {
            ConfigResource::Topic(name) => (2, name.clone()),
            ConfigResource::Broker(id) => (4, id.to_string()),
        }
    }
}

/// Where a config value comes from (Kafka's `ConfigEntry.ConfigSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    DynamicTopicConfig,
    DynamicBrokerLoggerConfig,
    DynamicBrokerConfig,
    DynamicDefaultBrokerConfig,
    StaticBrokerConfig,
    DefaultConfig,
    Unknown,
}

impl ConfigSource {
    fn from_wire(source: i8) -> Self {
        match source {
            1 => ConfigSource::DynamicTopicConfig,
            2 => ConfigSource::DynamicBrokerConfig,
            3 => ConfigSource::DynamicDefaultBrokerConfig,
            4 => ConfigSource::StaticBrokerConfig,
            5 => ConfigSource::DefaultConfig,
            6 => ConfigSource::DynamicBrokerLoggerConfig,
            _ => ConfigSource::Unknown,
        }
    }
}

/// One config value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    pub source: ConfigSource,
    pub is_default: bool,
    pub read_only: bool,
    pub is_sensitive: bool,
}

/// One change of `incremental_alter_configs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlterConfigOp {
    Set { name: String, value: String },
    Delete { name: String },
}

/// Which offset `list_offsets` looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    Earliest,
    Latest,
    /// The offset of the record with the largest timestamp.
    MaxTimestamp,
    /// The earliest offset whose timestamp is at least this (ms since the epoch).
    Timestamp(i64),
}

impl OffsetSpec {
    /// The `timestamp` field of a ListOffsets partition.
    pub fn wire_timestamp(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::MaxTimestamp => -3,
            OffsetSpec::Timestamp(ts) => ts,
        }
    }
}

/// A `list_offsets` answer. `offset` is -1 when no record matches a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListOffsetsResultInfo {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub leader_epoch: Option<i32>,
}

/// A consumer group's state, by Kafka's names (`ConsumerGroupState`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupState {
    /// No members; committed offsets may remain.
    Empty,
    Stable,
    PreparingRebalance,
    CompletingRebalance,
    /// Being removed: no members and no offsets left.
    Dead,
    /// A state this client does not know, as the broker spelled it.
    Unknown(String),
}

impl GroupState {
    pub fn parse(raw: &str) -> GroupState {
        match raw {
            "Empty" => GroupState::Empty,
            "Stable" => GroupState::Stable,
            "PreparingRebalance" => GroupState::PreparingRebalance,
            "CompletingRebalance" => GroupState::CompletingRebalance,
            "Dead" => GroupState::Dead,
            other => GroupState::Unknown(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::Stable => "Stable",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Dead => "Dead",
            GroupState::Unknown(raw) => raw,
        }
    }

    /// Whether the group has (or is gathering) members. Kafka lets offsets be reset from
    /// outside the group only when it is not: a member would overwrite them with its next
    /// commit.
    pub fn is_active(&self) -> bool {
        !matches!(self, GroupState::Empty | GroupState::Dead)
    }
}

impl std::fmt::Display for GroupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A group as `list_groups` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    /// `consumer` for consumer groups; empty for groups that only commit offsets.
    pub protocol_type: String,
    /// `None` when the broker's ListGroups version predates states (v4).
    pub state: Option<GroupState>,
    /// The broker that coordinates the group.
    pub coordinator: i32,
}

/// A transaction as `list_transactions` reports it (Kafka's `TransactionListing`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionListing {
    pub transactional_id: String,
    pub producer_id: i64,
    /// Kafka's state name: Empty, Ongoing, PrepareCommit, PrepareAbort, CompleteCommit, ...
    pub state: String,
    /// The broker that coordinates it.
    pub coordinator: i32,
}

/// A transaction as `describe_transactions` reports it (Kafka's `TransactionDescription`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionDescription {
    pub coordinator: i32,
    pub state: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub transaction_timeout_ms: i32,
    /// When the ongoing transaction began (ms since the epoch), -1 when none is open.
    pub transaction_start_time_ms: i64,
    pub partitions: Vec<TopicPartition>,
}

/// One producer with state in a partition, as `describe_producers` reports it (Kafka's
/// `ProducerState`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerState {
    pub producer_id: i64,
    pub producer_epoch: i32,
    /// Last sequence it appended in its current epoch, -1 when none.
    pub last_sequence: i32,
    /// Max timestamp of its last batch (the producer's clock), -1 when unknown.
    pub last_timestamp_ms: i64,
    /// Epoch of the transaction coordinator that wrote its last marker, -1 when unknown.
    pub coordinator_epoch: i32,
    /// First offset of its open transaction in this partition; None when it has none.
    pub current_transaction_start_offset: Option<i64>,
}

/// A group as `describe_groups` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: GroupState,
    pub protocol_type: String,
    /// The protocol the group agreed on: for consumer groups, the assignor (`range`,
    /// `roundrobin`, `cooperative-sticky`, ...). Empty unless the group is stable.
    pub protocol: String,
    pub members: Vec<MemberDescription>,
    /// The broker that coordinates the group.
    pub coordinator: i32,
}

/// One member of a described group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    /// `group.instance.id` of a static member (KIP-345).
    pub group_instance_id: Option<String>,
    pub client_id: String,
    /// The member's address as the coordinator saw it, e.g. `/127.0.0.1`.
    pub client_host: String,
    /// The partitions the leader assigned it, decoded from the consumer protocol's
    /// `ConsumerProtocolAssignment` (empty for other protocol types, or while rebalancing).
    pub assignment: Vec<TopicPartition>,
}

/// The admin client. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    cluster: Cluster,
    timeout_ms: i32,
}

impl Admin {
    pub async fn new(config: AdminConfig) -> Result<Admin> {
        let mut cluster_config = ClusterConfig::new(config.bootstrap_servers);
        cluster_config.connection = ConnectionConfig {
            client_id: Some(config.client_id),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            ..ConnectionConfig::default()
        };
        let cluster = Cluster::connect(cluster_config).await?;
        Ok(Admin::with_cluster(cluster, config.request_timeout_ms))
    }

    /// An admin client sharing another client's connections.
    pub fn with_cluster(cluster: Cluster, request_timeout_ms: u64) -> Admin {
        Admin { cluster, timeout_ms: request_timeout_ms.min(i32::MAX as u64) as i32 }
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Creates topics; the map holds each topic's outcome.
    pub async fn create_topics(&self, topics: &[NewTopic]) -> Result<BTreeMap<String, Result<()>>> {
        let request = CreateTopicsRequest::default().with_timeout_ms(self.timeout_ms).with_topics(
            topics
                .iter()
                .map(|t| {
                    CreatableTopic::default()
                        .with_name(TopicName(str_bytes(t.name.as_str())))
                        .with_num_partitions(t.num_partitions)
                        .with_replication_factor(t.replication_factor)
                        .with_configs(
                            t.configs
                                .iter()
                                .map(|(k, v)| {
                                    CreatableTopicConfig::default()
                                        .with_name(str_bytes(k.as_str()))
                                        .with_value(Some(str_bytes(v.as_str())))
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
        let (_, response): (i16, CreateTopicsResponse) = self.call_controller(ApiKey::CreateTopics, &request).await?;
        let results = response
            .topics
            .into_iter()
            .map(|t| {
                let name = t.name.0.to_string();
                let result = item_result(t.error_code, t.error_message.map(|m| m.to_string()), || {
                    format!("creating topic {name}")
                });
                (name, result)
            })
            .collect();
        Ok(results)
    }

    /// Creates one topic; an error if it could not be created.
    pub async fn create_topic(&self, topic: NewTopic) -> Result<()> {
        let name = topic.name.clone();
        self.create_topics(&[topic]).await?.remove(&name).unwrap_or_else(|| {
            Err(Error::Protocol {
                peer: "controller".into(),
                source: crate::error::ProtocolError::malformed("CreateTopics response", format!("{name} missing")),
            })
        })
    }

    /// Deletes topics by name; the map holds each topic's outcome.
    pub async fn delete_topics(&self, names: &[&str]) -> Result<BTreeMap<String, Result<()>>> {
        let conn = self.cluster.controller().await?;
        let version = conn.version(ApiKey::DeleteTopics)?;
        let mut request = DeleteTopicsRequest::default().with_timeout_ms(self.timeout_ms);
        // v6 names topics in `topics` (so they can also be named by id); earlier versions in
        // `topic_names`.
        if version >= 6 {
            request.topics =
                names.iter().map(|n| DeleteTopicState::default().with_name(Some(TopicName(str_bytes(*n))))).collect();
        } else {
            request.topic_names = names.iter().map(|n| TopicName(str_bytes(*n))).collect();
        }
        let response: DeleteTopicsResponse = conn.send(ApiKey::DeleteTopics, version, &request).await?;
        Ok(response
            .responses
            .into_iter()
            .map(|t| {
                let name = t.name.map(|n| n.0.to_string()).unwrap_or_default();
                let result = item_result(t.error_code, t.error_message.map(|m| m.to_string()), || {
                    format!("deleting topic {name}")
                });
                (name, result)
            })
            .collect())
    }

    /// Raises topics' partition counts to the given totals.
    pub async fn create_partitions(&self, new_totals: &[(&str, i32)]) -> Result<BTreeMap<String, Result<()>>> {
        let request = CreatePartitionsRequest::default().with_timeout_ms(self.timeout_ms).with_topics(
            new_totals
                .iter()
                .map(|(name, count)| {
                    CreatePartitionsTopic::default()
                        .with_name(TopicName(str_bytes(*name)))
                        .with_count(*count)
                        // The generated default is an empty (explicit) assignment.
                        .with_assignments(None)
                })
                .collect(),
        );
        let (_, response): (i16, CreatePartitionsResponse) =
            self.call_controller(ApiKey::CreatePartitions, &request).await?;
        Ok(response
            .results
            .into_iter()
            .map(|t| {
                let name = t.name.0.to_string();
                let result = item_result(t.error_code, t.error_message.map(|m| m.to_string()), || {
                    format!("creating partitions of {name}")
                });
                (name, result)
            })
            .collect())
    }

    /// Names of all topics, sorted (internal topics included when `include_internal`).
    pub async fn list_topics(&self, include_internal: bool) -> Result<Vec<String>> {
        let metadata = self.cluster.refresh_all_topics().await?;
        let mut names: Vec<String> =
            metadata.topics.values().filter(|t| include_internal || !t.is_internal).map(|t| t.name.clone()).collect();
        names.sort();
        Ok(names)
    }

    /// Sends a request to the controller (any broker when it is unreachable). When the
    /// connection is lost before an answer came (the broker went down), the request goes once
    /// more to another broker after a metadata refresh; a timeout is not retried, since the
    /// first request may have taken effect.
    async fn call_controller<Req: Codec, Resp: Codec>(&self, api_key: ApiKey, request: &Req) -> Result<(i16, Resp)> {
        let mut attempt = 0;
        loop {
            let conn = self.cluster.controller().await?;
            match conn.call(api_key, request).await {
                Err(e @ (Error::ConnectionLost { .. } | Error::ConnectionClosed { .. } | Error::Io { .. }))
                    if attempt < CONTROLLER_ATTEMPTS =>
                {
                    tracing::debug!(peer = conn.peer(), error = %e, "admin request failed, trying another broker");
                    attempt += 1;
                    self.cluster.report_failure(&conn);
                    let _ = self.cluster.refresh().await;
                }
                result => return result,
            }
        }
    }

    /// Brokers, controller id and cluster id, from a fresh Metadata request.
    pub async fn describe_cluster(&self) -> Result<ClusterDescription> {
        // Asking for no topic at all is not expressible before Metadata v1's empty list, which
        // every version this client speaks has; `refresh_topics(&[])` sends that.
        let metadata = self.cluster.refresh_topics(&[]).await?;
        Ok(ClusterDescription {
            cluster_id: metadata.cluster_id.clone(),
            controller_id: metadata.controller_id,
            brokers: metadata.brokers.values().cloned().collect(),
        })
    }

    /// Partitions, leaders, replicas and ISR of the named topics (all topics when empty).
    pub async fn describe_topics(&self, names: &[&str]) -> Result<Vec<TopicDescription>> {
        let metadata = if names.is_empty() {
            self.cluster.refresh_all_topics().await?
        } else {
            self.cluster.refresh_topics(names).await?
        };
        let mut out = Vec::new();
        let wanted: Vec<String> = if names.is_empty() {
            let mut all: Vec<String> = metadata.topics.keys().cloned().collect();
            all.sort();
            all
        } else {
            names.iter().map(|n| n.to_string()).collect()
        };
        for name in wanted {
            let topic = metadata.topics.get(&name).ok_or_else(|| Error::UnknownTopic { topic: name.clone() })?;
            if !topic.error.is_ok() {
                return Err(Error::broker(topic.error, format!("describing topic {name}")));
            }
            out.push(TopicDescription {
                name,
                topic_id: topic.topic_id,
                is_internal: topic.is_internal,
                partitions: topic.partitions.clone(),
            });
        }
        Ok(out)
    }

    /// Configs of topics or brokers. `keys` narrows the answer (empty: every key).
    pub async fn describe_configs(
        &self,
        resources: &[ConfigResource],
        keys: &[&str],
    ) -> Result<BTreeMap<ConfigResource, Result<Vec<ConfigEntry>>>> {
        let mut out = BTreeMap::new();
        // Broker configs must be asked of that broker; topic configs of any.
        for resource in resources {
            let conn = match resource {
                ConfigResource::Broker(id) => self.cluster.broker(*id).await?,
                ConfigResource::Topic(_) => self.cluster.any_broker().await?,
            };
            let (resource_type, resource_name) = resource.type_and_name();
            let request = DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(str_bytes(resource_name))
                .with_configuration_keys((!keys.is_empty()).then(|| keys.iter().map(|k| str_bytes(*k)).collect()))]);
            let (_, response): (i16, DescribeConfigsResponse) = conn.call(ApiKey::DescribeConfigs, &request).await?;
            let Some(result) = response.results.into_iter().next() else {
                return Err(Error::Protocol {
                    peer: conn.peer().to_string(),
                    source: crate::error::ProtocolError::malformed("DescribeConfigs response", "no result"),
                });
            };
            let entries = item_result(result.error_code, result.error_message.map(|m| m.to_string()), || {
                format!("describing configs of {resource:?}")
            })
            .map(|()| {
                result
                    .configs
                    .into_iter()
                    .map(|c| {
                        let source = ConfigSource::from_wire(c.config_source);
                        ConfigEntry {
                            name: c.name.to_string(),
                            value: c.value.map(|v| v.to_string()),
                            source,
                            is_default: source == ConfigSource::DefaultConfig,
                            read_only: c.read_only,
                            is_sensitive: c.is_sensitive,
                        }
                    })
                    .collect()
            });
            out.insert(resource.clone(), entries);
        }
        Ok(out)
    }

    /// Sets or deletes (reverts to default) configs of one resource.
    pub async fn incremental_alter_configs(&self, resource: &ConfigResource, ops: &[AlterConfigOp]) -> Result<()> {
        let conn = match resource {
            ConfigResource::Broker(id) => self.cluster.broker(*id).await?,
            ConfigResource::Topic(_) => self.cluster.controller().await?,
        };
        let (resource_type, resource_name) = resource.type_and_name();
        let configs = ops
            .iter()
            .map(|op| match op {
                AlterConfigOp::Set { name, value } => AlterableConfig::default()
                    .with_name(str_bytes(name.as_str()))
                    .with_config_operation(0)
                    .with_value(Some(str_bytes(value.as_str()))),
                AlterConfigOp::Delete { name } => AlterableConfig::default()
                    .with_name(str_bytes(name.as_str()))
                    .with_config_operation(1)
                    .with_value(None),
            })
            .collect();
        let request = IncrementalAlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(str_bytes(resource_name))
            .with_configs(configs)]);
        let (_, response): (i16, IncrementalAlterConfigsResponse) =
            conn.call(ApiKey::IncrementalAlterConfigs, &request).await?;
        for r in response.responses {
            item_result(r.error_code, r.error_message.map(|m| m.to_string()), || {
                format!("altering configs of {resource:?}")
            })?;
        }
        Ok(())
    }

    /// Offsets of partitions by spec (earliest, latest, by timestamp, max timestamp).
    pub async fn list_offsets(
        &self,
        partitions: &[(TopicPartition, OffsetSpec)],
    ) -> Result<BTreeMap<TopicPartition, ListOffsetsResultInfo>> {
        self.list_offsets_isolated(partitions, 0).await
    }

    /// [`Admin::list_offsets`] as a `read_committed` consumer sees them: `Latest` is the last
    /// stable offset, not the high watermark.
    pub async fn list_offsets_read_committed(
        &self,
        partitions: &[(TopicPartition, OffsetSpec)],
    ) -> Result<BTreeMap<TopicPartition, ListOffsetsResultInfo>> {
        self.list_offsets_isolated(partitions, 1).await
    }

    /// ListOffsets with `isolation_level` 0 (read_uncommitted) or 1 (read_committed).
    async fn list_offsets_isolated(
        &self,
        partitions: &[(TopicPartition, OffsetSpec)],
        isolation_level: i8,
    ) -> Result<BTreeMap<TopicPartition, ListOffsetsResultInfo>> {
        let wanted: Vec<(TopicPartition, i64)> =
            partitions.iter().map(|(tp, spec)| (tp.clone(), spec.wire_timestamp())).collect();
        Ok(list_offsets(&self.cluster, &wanted, isolation_level).await?.into_iter().collect())
    }

    /// Consumer groups of every broker, sorted by id. `states` narrows the answer (empty: all
    /// states); brokers too old to filter (ListGroups < v4) are filtered here.
    pub async fn list_groups(&self, states: &[GroupState]) -> Result<Vec<GroupListing>> {
        let metadata = self.cluster.refresh().await?;
        let mut out = Vec::new();
        // Each broker lists only the groups it coordinates, as in Kafka.
        for &node_id in metadata.brokers.keys() {
            let conn = self.cluster.broker(node_id).await?;
            let version = conn.version(ApiKey::ListGroups)?;
            let mut request = ListGroupsRequest::default();
            if version >= 4 {
                request.states_filter = states.iter().map(|s| str_bytes(s.as_str())).collect();
            }
            // A broker still loading a `__consumer_offsets` partition answers
            // COORDINATOR_LOAD_IN_PROGRESS with a partial list (as Kafka's does): ask again until
            // it has loaded, within the request timeout.
            let deadline = tokio::time::Instant::now() + self.timeout();
            let response = loop {
                let response: ListGroupsResponse = conn.send(ApiKey::ListGroups, version, &request).await?;
                if ErrorCode(response.error_code) != ErrorCode::COORDINATOR_LOAD_IN_PROGRESS
                    || tokio::time::Instant::now() >= deadline
                {
                    break response;
                }
                tokio::time::sleep(LOAD_IN_PROGRESS_BACKOFF).await;
            };
            item_result(response.error_code, None, || format!("listing groups of broker {node_id}"))?;
            for g in response.groups {
                let state = (version >= 4).then(|| GroupState::parse(&g.group_state));
                if !states.is_empty() && state.as_ref().is_some_and(|s| !states.contains(s)) {
                    continue;
                }
                out.push(GroupListing {
                    group_id: g.group_id.0.to_string(),
                    protocol_type: g.protocol_type.to_string(),
                    state,
                    coordinator: node_id,
                });
            }
        }
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        Ok(out)
    }

    /// ListTransactions on every broker (each lists the transactional ids it coordinates),
    /// filtered by state names (empty: all) and producer ids (empty: all).
    pub async fn list_transactions(&self, states: &[&str], producer_ids: &[i64]) -> Result<Vec<TransactionListing>> {
        let metadata = self.cluster.refresh().await?;
        let mut out = Vec::new();
        for &node_id in metadata.brokers.keys() {
            let conn = self.cluster.broker(node_id).await?;
            let version = conn.version(ApiKey::ListTransactions)?;
            let request = ListTransactionsRequest::default()
                .with_state_filters(states.iter().map(|s| str_bytes(s.to_string())).collect())
                .with_producer_id_filters(producer_ids.iter().map(|&p| ProducerId(p)).collect())
                .with_duration_filter(-1);
            let deadline = tokio::time::Instant::now() + self.timeout();
            let response = loop {
                let response: ListTransactionsResponse = conn.send(ApiKey::ListTransactions, version, &request).await?;
                if ErrorCode(response.error_code) != ErrorCode::COORDINATOR_LOAD_IN_PROGRESS
                    || tokio::time::Instant::now() >= deadline
                {
                    break response;
                }
                tokio::time::sleep(LOAD_IN_PROGRESS_BACKOFF).await;
            };
            item_result(response.error_code, None, || format!("listing transactions of broker {node_id}"))?;
            out.extend(response.transaction_states.into_iter().map(|t| TransactionListing {
                transactional_id: t.transactional_id.to_string(),
                producer_id: t.producer_id.0,
                state: t.transaction_state.to_string(),
                coordinator: node_id,
            }));
        }
        out.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        Ok(out)
    }

    /// DescribeTransactions of each id, asked of every broker (only its coordinator knows it;
    /// the others answer NOT_COORDINATOR); each id's outcome apart.
    pub async fn describe_transactions(
        &self,
        transactional_ids: &[&str],
    ) -> Result<BTreeMap<String, Result<TransactionDescription>>> {
        let metadata = self.cluster.refresh().await?;
        let mut out: BTreeMap<String, Result<TransactionDescription>> = BTreeMap::new();
        let request = DescribeTransactionsRequest::default().with_transactional_ids(
            transactional_ids.iter().map(|id| TransactionalId(str_bytes(id.to_string()))).collect(),
        );
        for &node_id in metadata.brokers.keys() {
            let conn = self.cluster.broker(node_id).await?;
            let response: DescribeTransactionsResponse = conn.send(ApiKey::DescribeTransactions, 0, &request).await?;
            for t in response.transaction_states {
                let id = t.transactional_id.to_string();
                let result = item_result(t.error_code, None, || format!("describing transaction {id}")).map(|()| {
                    TransactionDescription {
                        coordinator: node_id,
                        state: t.transaction_state.to_string(),
                        producer_id: t.producer_id.0,
                        producer_epoch: t.producer_epoch,
                        transaction_timeout_ms: t.transaction_timeout_ms,
                        transaction_start_time_ms: t.transaction_start_time_ms,
                        partitions: t
                            .topics
                            .iter()
                            .flat_map(|topic| {
                                topic.partitions.iter().map(|&p| TopicPartition::new(topic.topic.to_string(), p))
                            })
                            .collect(),
                    }
                });
                // The coordinator's answer wins over the others' NOT_COORDINATOR.
                if result.is_ok() || !out.get(&id).is_some_and(|r| r.is_ok()) {
                    out.insert(id, result);
                }
            }
        }
        Ok(out)
    }

    /// Fences the producers of `transactional_ids` (Kafka's `Admin.fenceProducers`): an
    /// InitProducerId at each id's coordinator bumps its epoch, so an older instance can no
    /// longer write or commit, and aborts a transaction it left open. Each id's outcome apart.
    pub async fn fence_producers(&self, transactional_ids: &[&str]) -> Result<BTreeMap<String, Result<()>>> {
        let mut out = BTreeMap::new();
        for &id in transactional_ids {
            // Each id has the whole timeout: a slow one does not shorten the next one's.
            let deadline = tokio::time::Instant::now() + self.timeout();
            let result = loop {
                let attempt = async {
                    let coordinator = self
                        .find_coordinators_of(TXN_KEY_TYPE, &[id])
                        .await?
                        .remove(id)
                        .unwrap_or_else(|| Err(missing("FindCoordinator", id)))?;
                    let conn = self.coordinator_connection(&coordinator).await?;
                    let version = conn.version(ApiKey::InitProducerId)?;
                    let request = InitProducerIdRequest::default()
                        .with_transactional_id(Some(TransactionalId(str_bytes(id.to_string()))))
                        // The fenced id keeps a usable timeout until its next real producer sets its own.
                        .with_transaction_timeout_ms(FENCE_TRANSACTION_TIMEOUT_MS)
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1);
                    let response: InitProducerIdResponse = conn.send(ApiKey::InitProducerId, version, &request).await?;
                    item_result(response.error_code, None, || format!("fencing the producers of transactional id {id}"))
                };
                match attempt.await {
                    Err(e)
                        if e.code()
                            .is_some_and(|c| coordinator_moved(c) || c == ErrorCode::CONCURRENT_TRANSACTIONS)
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(COORDINATOR_BACKOFF).await;
                    }
                    result => break result,
                }
            };
            out.insert(id.to_string(), result);
        }
        Ok(out)
    }

    /// DescribeProducers for one partition, asked of its leader (retried after a metadata
    /// refresh while leadership moves): the producers with state there and where their open
    /// transactions begin.
    pub async fn describe_producers(&self, tp: &TopicPartition) -> Result<Vec<ProducerState>> {
        self.describe_producers_of(std::slice::from_ref(tp))
            .await?
            .remove(tp)
            .unwrap_or_else(|| Err(missing("DescribeProducers", &tp.to_string())))
    }

    /// DescribeProducers for many partitions: one request per leader (at most
    /// [`DESCRIBE_PRODUCERS_BATCH`] partitions each), partitions whose leader moved asked again
    /// after a metadata refresh until the request timeout. Each partition's outcome apart.
    pub async fn describe_producers_of(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Result<Vec<ProducerState>>>> {
        let deadline = tokio::time::Instant::now() + self.timeout();
        let mut out = BTreeMap::new();
        let mut todo: Vec<TopicPartition> = partitions.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
        loop {
            // Retriable failures of this round, by partition (the last one is reported).
            let mut retry: Vec<(TopicPartition, Error)> = Vec::new();
            let mut by_leader: BTreeMap<i32, Vec<TopicPartition>> = BTreeMap::new();
            for tp in todo.drain(..) {
                let leader = match self.cluster.topic(&tp.topic).await {
                    Ok(topic) => match topic.partition(tp.partition) {
                        Some(p) if p.leader >= 0 => Ok(p.leader),
                        Some(_) => Err(Error::LeaderNotAvailable { topic: tp.topic.clone(), partition: tp.partition }),
                        None => Err(Error::UnknownPartition { topic: tp.topic.clone(), partition: tp.partition }),
                    },
                    Err(e) => Err(e),
                };
                match leader {
                    Ok(leader) => by_leader.entry(leader).or_default().push(tp),
                    Err(e) if e.is_retriable() => retry.push((tp, e)),
                    Err(e) => {
                        out.insert(tp, Err(e));
                    }
                }
            }
            for (leader, tps) in by_leader {
                for chunk in tps.chunks(DESCRIBE_PRODUCERS_BATCH) {
                    let answered = match self.cluster.broker(leader).await {
                        Ok(conn) => describe_producers_at(&conn, chunk).await,
                        Err(e) => Err(e),
                    };
                    match answered {
                        Ok(results) => {
                            for (tp, result) in results {
                                match result {
                                    Err(e) if e.is_retriable() => retry.push((tp, e)),
                                    result => {
                                        out.insert(tp, result);
                                    }
                                }
                            }
                        }
                        Err(e) if e.is_retriable() => {
                            let reason = e.to_string();
                            retry.extend(chunk.iter().map(|tp| {
                                (tp.clone(), Error::broker(ErrorCode::NOT_LEADER_OR_FOLLOWER, reason.clone()))
                            }));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            if retry.is_empty() || tokio::time::Instant::now() >= deadline {
                out.extend(retry.into_iter().map(|(tp, e)| (tp, Err(e))));
                return Ok(out);
            }
            tokio::time::sleep(LIST_OFFSETS_BACKOFF).await;
            self.cluster.refresh().await?;
            todo = retry.into_iter().map(|(tp, _)| tp).collect();
        }
    }

    /// DeleteRecords (KIP-107, `kafka-delete-records.sh`): moves each partition's log start
    /// offset to the given offset (-1: its high watermark), so everything before it is gone.
    /// One request per leader; partitions whose leader moved are asked again after a metadata
    /// refresh until the request timeout. Each partition's outcome apart: the new low watermark
    /// (the smallest log start among its in-sync replicas) or the error.
    pub async fn delete_records(
        &self,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<BTreeMap<TopicPartition, Result<i64>>> {
        use crate::protocol::messages::delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
        use crate::protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
        let deadline = tokio::time::Instant::now() + self.timeout();
        let wanted: BTreeMap<TopicPartition, i64> = offsets.iter().cloned().collect();
        let mut out = BTreeMap::new();
        let mut todo: Vec<TopicPartition> = wanted.keys().cloned().collect();
        loop {
            let mut retry: Vec<(TopicPartition, Error)> = Vec::new();
            let mut by_leader: BTreeMap<i32, Vec<TopicPartition>> = BTreeMap::new();
            for tp in todo.drain(..) {
                match self.cluster.topic(&tp.topic).await.map(|t| t.partition(tp.partition).map(|p| p.leader)) {
                    Ok(Some(leader)) if leader >= 0 => by_leader.entry(leader).or_default().push(tp),
                    Ok(Some(_)) => {
                        let e = Error::LeaderNotAvailable { topic: tp.topic.clone(), partition: tp.partition };
                        retry.push((tp, e));
                    }
                    Ok(None) => {
                        let e = Error::UnknownPartition { topic: tp.topic.clone(), partition: tp.partition };
                        out.insert(tp, Err(e));
                    }
                    Err(e) if e.is_retriable() => retry.push((tp, e)),
                    Err(e) => {
                        out.insert(tp, Err(e));
                    }
                }
            }
            for (leader, tps) in by_leader {
                let request = DeleteRecordsRequest::default()
                    .with_timeout_ms(i32::try_from(self.timeout().as_millis()).unwrap_or(i32::MAX))
                    .with_topics(
                        by_topic(&tps)
                            .into_iter()
                            .map(|(t, ps)| {
                                let partitions = ps
                                    .iter()
                                    .map(|&p| {
                                        let offset = wanted[&TopicPartition::new(t.clone(), p)];
                                        DeleteRecordsPartition::default().with_partition_index(p).with_offset(offset)
                                    })
                                    .collect();
                                DeleteRecordsTopic::default()
                                    .with_name(TopicName(str_bytes(t)))
                                    .with_partitions(partitions)
                            })
                            .collect(),
                    );
                let answered: Result<(i16, DeleteRecordsResponse)> = match self.cluster.broker(leader).await {
                    Ok(conn) => conn.call(ApiKey::DeleteRecords, &request).await,
                    Err(e) => Err(e),
                };
                match answered {
                    Ok((_, response)) => {
                        for t in response.topics {
                            for p in t.partitions {
                                let tp = TopicPartition::new(t.name.to_string(), p.partition_index);
                                let result = item_result(p.error_code, None, || format!("deleting records of {tp}"))
                                    .map(|()| p.low_watermark);
                                match result {
                                    Err(e) if e.is_retriable() => retry.push((tp, e)),
                                    result => {
                                        out.insert(tp, result);
                                    }
                                }
                            }
                        }
                    }
                    Err(e) if e.is_retriable() => {
                        let reason = e.to_string();
                        retry.extend(
                            tps.into_iter()
                                .map(|tp| (tp, Error::broker(ErrorCode::NOT_LEADER_OR_FOLLOWER, reason.clone()))),
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
            if retry.is_empty() || tokio::time::Instant::now() >= deadline {
                out.extend(retry.into_iter().map(|(tp, e)| (tp, Err(e))));
                return Ok(out);
            }
            tokio::time::sleep(LIST_OFFSETS_BACKOFF).await;
            self.cluster.refresh().await?;
            todo = retry.into_iter().map(|(tp, _)| tp).collect();
        }
    }

    /// ElectLeaders (KIP-460, `kafka-leader-election.sh`): preferred (`unclean` false) or
    /// unclean elections for the named partitions, or for every partition when `None` (then
    /// only partitions where an election happened or failed are reported). The outcome per
    /// partition: `Ok` when its leader changed; ELECTION_NOT_NEEDED and the other refusals as
    /// errors.
    pub async fn elect_leaders(
        &self,
        unclean: bool,
        partitions: Option<&[TopicPartition]>,
    ) -> Result<BTreeMap<TopicPartition, Result<()>>> {
        use crate::protocol::messages::elect_leaders_request::TopicPartitions;
        use crate::protocol::messages::{ElectLeadersRequest, ElectLeadersResponse};
        let request = ElectLeadersRequest::default()
            .with_election_type(i8::from(unclean))
            .with_timeout_ms(i32::try_from(self.timeout().as_millis()).unwrap_or(i32::MAX))
            .with_topic_partitions(partitions.map(|ps| {
                by_topic(ps)
                    .into_iter()
                    .map(|(t, ps)| TopicPartitions::default().with_topic(TopicName(str_bytes(t))).with_partitions(ps))
                    .collect()
            }));
        let (version, response): (i16, ElectLeadersResponse) =
            self.call_controller(ApiKey::ElectLeaders, &request).await?;
        if version >= 1 {
            item_result(response.error_code, None, || "electing leaders".to_string())?;
        }
        let mut out = BTreeMap::new();
        for t in response.replica_election_results {
            for p in t.partition_result {
                let tp = TopicPartition::new(t.topic.to_string(), p.partition_id);
                let result = item_result(p.error_code, p.error_message.map(|m| m.to_string()), || {
                    format!("electing a leader of {tp}")
                });
                out.insert(tp, result);
            }
        }
        Ok(out)
    }

    /// UnregisterBroker (KIP-631, `kafka-cluster.sh unregister`): the cluster forgets a
    /// decommissioned broker. The controller refuses a broker that is still running or still
    /// holds replicas (reassign them away first), with a message saying which.
    pub async fn unregister_broker(&self, broker_id: i32) -> Result<()> {
        use crate::protocol::messages::{BrokerId, UnregisterBrokerRequest, UnregisterBrokerResponse};
        let request = UnregisterBrokerRequest::default().with_broker_id(BrokerId(broker_id));
        let (_, response): (i16, UnregisterBrokerResponse) =
            self.call_controller(ApiKey::UnregisterBroker, &request).await?;
        item_result(response.error_code, response.error_message.map(|m| m.to_string()), || {
            format!("unregistering broker {broker_id}")
        })
    }

    /// DescribeQuorum (`kafka-metadata-quorum.sh describe`): the metadata quorum's leader, its
    /// voters and observers and how far each has the metadata log.
    pub async fn describe_metadata_quorum(&self) -> Result<QuorumInfo> {
        use crate::protocol::messages::describe_quorum_request::{PartitionData, TopicData};
        use crate::protocol::messages::{DescribeQuorumRequest, DescribeQuorumResponse, TopicName};
        let topic = TopicData::default()
            .with_topic_name(TopicName(str_bytes(METADATA_LOG_TOPIC)))
            .with_partitions(vec![PartitionData::default().with_partition_index(0)]);
        let request = DescribeQuorumRequest::default().with_topics(vec![topic]);
        let (_, response): (i16, DescribeQuorumResponse) =
            self.call_controller(ApiKey::DescribeQuorum, &request).await?;
        let what = || "describing the metadata quorum".to_string();
        item_result(response.error_code, response.error_message.map(|m| m.to_string()), what)?;
        let listeners: BTreeMap<i32, String> = response
            .nodes
            .iter()
            .filter_map(|n| n.listeners.first().map(|l| (n.node_id.0, format!("{}:{}", l.host.as_str(), l.port))))
            .collect();
        let Some(partition) = response.topics.into_iter().flat_map(|t| t.partitions).next() else {
            return Err(Error::Broker {
                code: ErrorCode::UNKNOWN_SERVER_ERROR,
                context: "a DescribeQuorum response without the metadata log's partition".into(),
            });
        };
        item_result(partition.error_code, partition.error_message.map(|m| m.to_string()), what)?;
        let replicas = |states: Vec<crate::protocol::messages::describe_quorum_response::ReplicaState>| {
            states
                .into_iter()
                .map(|r| QuorumReplica {
                    id: r.replica_id.0,
                    log_end_offset: r.log_end_offset,
                    controller_listener: listeners.get(&r.replica_id.0).cloned(),
                })
                .collect()
        };
        Ok(QuorumInfo {
            leader_id: partition.leader_id.0,
            leader_epoch: partition.leader_epoch,
            high_watermark: partition.high_watermark,
            voters: replicas(partition.current_voters),
            observers: replicas(partition.observers),
        })
    }

    /// AddRaftVoter (KIP-853, `kafka-metadata-quorum.sh add-controller`): the broker-only node
    /// `voter_id`, which follows the metadata log, becomes a voter. `controller_listener`
    /// (`host:port`), when given, must be the address it follows the log at.
    pub async fn add_raft_voter(&self, voter_id: i32, controller_listener: Option<(&str, u16)>) -> Result<()> {
        use crate::protocol::messages::add_raft_voter_request::Listener;
        use crate::protocol::messages::{AddRaftVoterRequest, AddRaftVoterResponse};
        let listeners = controller_listener
            .map(|(host, port)| {
                vec![Listener::default().with_name(str_bytes("CONTROLLER")).with_host(str_bytes(host)).with_port(port)]
            })
            .unwrap_or_default();
        let request = AddRaftVoterRequest::default()
            .with_cluster_id(None)
            .with_timeout_ms(ADD_RAFT_VOTER_TIMEOUT_MS)
            .with_voter_id(voter_id)
            .with_listeners(listeners);
        let (_, response): (i16, AddRaftVoterResponse) = self.call_controller(ApiKey::AddRaftVoter, &request).await?;
        item_result(response.error_code, response.error_message.map(|m| m.to_string()), || {
            format!("adding controller {voter_id}")
        })
    }

    /// RemoveRaftVoter (KIP-853, `kafka-metadata-quorum.sh remove-controller`): `voter_id`
    /// leaves the metadata quorum's voters.
    pub async fn remove_raft_voter(&self, voter_id: i32) -> Result<()> {
        use crate::protocol::messages::{RemoveRaftVoterRequest, RemoveRaftVoterResponse};
        let request = RemoveRaftVoterRequest::default().with_cluster_id(None).with_voter_id(voter_id);
        let (_, response): (i16, RemoveRaftVoterResponse) =
            self.call_controller(ApiKey::RemoveRaftVoter, &request).await?;
        item_result(response.error_code, response.error_message.map(|m| m.to_string()), || {
            format!("removing controller {voter_id}")
        })
    }

    /// AlterPartitionReassignments (KIP-455, `kafka-reassign-partitions.sh --execute/--cancel`):
    /// per partition the target replicas, or `None` to cancel its reassignment. The outcome
    /// per partition is whether the controller accepted it; the data moves afterwards
    /// ([`Admin::list_partition_reassignments`] shows what is still moving).
    pub async fn alter_partition_reassignments(
        &self,
        reassignments: &[(TopicPartition, Option<Vec<i32>>)],
    ) -> Result<BTreeMap<TopicPartition, Result<()>>> {
        use crate::protocol::messages::alter_partition_reassignments_request::{
            ReassignablePartition, ReassignableTopic,
        };
        use crate::protocol::messages::{AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse};
        let mut by_topic: BTreeMap<String, Vec<ReassignablePartition>> = BTreeMap::new();
        for (tp, target) in reassignments {
            by_topic.entry(tp.topic.clone()).or_default().push(
                ReassignablePartition::default()
                    .with_partition_index(tp.partition)
                    .with_replicas(target.as_ref().map(|t| t.iter().map(|&b| BrokerId(b)).collect())),
            );
        }
        let request = AlterPartitionReassignmentsRequest::default()
            .with_timeout_ms(i32::try_from(self.timeout().as_millis()).unwrap_or(i32::MAX))
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(t, ps)| ReassignableTopic::default().with_name(TopicName(str_bytes(t))).with_partitions(ps))
                    .collect(),
            );
        let (_, response): (i16, AlterPartitionReassignmentsResponse) =
            self.call_controller(ApiKey::AlterPartitionReassignments, &request).await?;
        item_result(response.error_code, response.error_message.map(|m| m.to_string()), || {
            "altering partition reassignments".to_string()
        })?;
        let mut out = BTreeMap::new();
        for t in response.responses {
            for p in t.partitions {
                let tp = TopicPartition::new(t.name.to_string(), p.partition_index);
                let result =
                    item_result(p.error_code, p.error_message.map(|m| m.to_string()), || format!("reassigning {tp}"));
                out.insert(tp, result);
            }
        }
        Ok(out)
    }

    /// ListPartitionReassignments: the partitions still moving, with their replicas and the
    /// replicas being added and removed.
    pub async fn list_partition_reassignments(&self) -> Result<BTreeMap<TopicPartition, PartitionReassignment>> {
        use crate::protocol::messages::{ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse};
        let request = ListPartitionReassignmentsRequest::default()
            .with_timeout_ms(i32::try_from(self.timeout().as_millis()).unwrap_or(i32::MAX))
            .with_topics(None);
        let (_, response): (i16, ListPartitionReassignmentsResponse) =
            self.call_controller(ApiKey::ListPartitionReassignments, &request).await?;
        item_result(response.error_code, response.error_message.map(|m| m.to_string()), || {
            "listing partition reassignments".to_string()
        })?;
        let ids = |v: Vec<BrokerId>| v.into_iter().map(|b| b.0).collect::<Vec<_>>();
        let mut out = BTreeMap::new();
        for t in response.topics {
            for p in t.partitions {
                out.insert(
                    TopicPartition::new(t.name.to_string(), p.partition_index),
                    PartitionReassignment {
                        replicas: ids(p.replicas),
                        adding_replicas: ids(p.adding_replicas),
                        removing_replicas: ids(p.removing_replicas),
                    },
                );
            }
        }
        Ok(out)
    }

    /// Aborts the open transaction that begins at `start_offset` of `tp` by writing an ABORT
    /// marker there (WriteTxnMarkers to the leader, as Kafka's `Admin.abortTransaction` does):
    /// the remedy for a hanging transaction, one its coordinator no longer knows, which holds
    /// back the partition's last stable offset forever. Returns the producer it aborted.
    pub async fn abort_transaction(&self, tp: &TopicPartition, start_offset: i64) -> Result<ProducerState> {
        let producers = self.describe_producers(tp).await?;
        let Some(producer) = producers.into_iter().find(|p| p.current_transaction_start_offset == Some(start_offset))
        else {
            return Err(Error::Config(format!(
                "no open transaction starts at offset {start_offset} of {tp} (see spate transactions --find-hanging)"
            )));
        };
        let epoch = i16::try_from(producer.producer_epoch)
            .map_err(|_| Error::Config(format!("producer epoch {} is out of range", producer.producer_epoch)))?;
        let marker = WritableTxnMarker::default()
            .with_producer_id(ProducerId(producer.producer_id))
            .with_producer_epoch(epoch)
            .with_transaction_result(false)
            .with_coordinator_epoch(producer.coordinator_epoch)
            .with_topics(vec![WritableTxnMarkerTopic::default()
                .with_name(TopicName(str_bytes(tp.topic.clone())))
                .with_partition_indexes(vec![tp.partition])]);
        let (_leader, conn) = self.cluster.leader(tp).await?;
        let request = WriteTxnMarkersRequest::default().with_markers(vec![marker]);
        let response: WriteTxnMarkersResponse = conn.send(ApiKey::WriteTxnMarkers, 1, &request).await?;
        let code = response
            .markers
            .iter()
            .flat_map(|m| &m.topics)
            .flat_map(|t| &t.partitions)
            .map(|p| p.error_code)
            .find(|&c| c != 0)
            .unwrap_or(0);
        item_result(code, None, || {
            format!("aborting producer {}'s transaction at offset {start_offset} of {tp}", producer.producer_id)
        })?;
        Ok(producer)
    }

    /// State, protocol and members (with their assignments) of groups; each group's outcome
    /// apart. A group that does not exist is described as `Dead` with no members, as Kafka does.
    pub async fn describe_groups(&self, group_ids: &[&str]) -> Result<BTreeMap<String, Result<GroupDescription>>> {
        self.by_coordinator(group_ids, |conn, node_id, groups| async move {
            let version = conn.version(ApiKey::DescribeGroups)?;
            let request = DescribeGroupsRequest::default()
                .with_groups(groups.iter().map(|g| GroupId(str_bytes(g.as_str()))).collect());
            let response: DescribeGroupsResponse = conn.send(ApiKey::DescribeGroups, version, &request).await?;
            Ok(response
                .groups
                .into_iter()
                .map(|g| {
                    let group_id = g.group_id.0.to_string();
                    let result = item_result(g.error_code, g.error_message.map(|m| m.to_string()), || {
                        format!("describing group {group_id}")
                    })
                    .map(|()| {
                        let is_consumer = g.protocol_type.as_str() == CONSUMER_PROTOCOL_TYPE;
                        GroupDescription {
                            group_id: group_id.clone(),
                            state: GroupState::parse(&g.group_state),
                            protocol_type: g.protocol_type.to_string(),
                            protocol: g.protocol_data.to_string(),
                            members: g
                                .members
                                .into_iter()
                                .map(|m| {
                                    let assignment = if is_consumer {
                                        decode_member_assignment(&m.member_assignment).unwrap_or_else(|e| {
                                            tracing::warn!(
                                                group = %group_id, member = %m.member_id, error = %e,
                                                "member assignment is not a consumer protocol assignment"
                                            );
                                            Vec::new()
                                        })
                                    } else {
                                        Vec::new()
                                    };
                                    MemberDescription {
                                        member_id: m.member_id.to_string(),
                                        group_instance_id: m.group_instance_id.map(|i| i.to_string()),
                                        client_id: m.client_id.to_string(),
                                        client_host: m.client_host.to_string(),
                                        assignment,
                                    }
                                })
                                .collect(),
                            coordinator: node_id,
                        }
                    });
                    (group_id, result)
                })
                .collect())
        })
        .await
    }

    /// Describes one group; an error if it could not be described.
    pub async fn describe_group(&self, group_id: &str) -> Result<GroupDescription> {
        self.describe_groups(&[group_id])
            .await?
            .remove(group_id)
            .unwrap_or_else(|| Err(missing("DescribeGroups", group_id)))
    }

    /// Deletes groups with their committed offsets; each group's outcome apart (a group with
    /// members is refused with NON_EMPTY_GROUP, an unknown one with GROUP_ID_NOT_FOUND).
    pub async fn delete_groups(&self, group_ids: &[&str]) -> Result<BTreeMap<String, Result<()>>> {
        self.by_coordinator(group_ids, |conn, _, groups| async move {
            let version = conn.version(ApiKey::DeleteGroups)?;
            let request = DeleteGroupsRequest::default()
                .with_groups_names(groups.iter().map(|g| GroupId(str_bytes(g.as_str()))).collect());
            let response: DeleteGroupsResponse = conn.send(ApiKey::DeleteGroups, version, &request).await?;
            Ok(response
                .results
                .into_iter()
                .map(|r| {
                    let group_id = r.group_id.0.to_string();
                    let result = item_result(r.error_code, None, || format!("deleting group {group_id}"));
                    (group_id, result)
                })
                .collect())
        })
        .await
    }

    /// The group's committed offsets (OffsetFetch): of the given partitions, or of every
    /// partition it has committed when `None`. Partitions without a committed offset are left out.
    pub async fn list_group_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[TopicPartition]>,
    ) -> Result<BTreeMap<TopicPartition, OffsetAndMetadata>> {
        let by_topic = partitions.map(by_topic);
        self.on_coordinator(group_id, |conn| {
            let by_topic = by_topic.clone();
            async move {
                let version = conn.version(ApiKey::OffsetFetch)?;
                let mut request = OffsetFetchRequest::default();
                // v8 batches groups; before it, one group per request and the fields at the top.
                if version >= 8 {
                    request.groups = vec![OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(str_bytes(group_id)))
                        .with_topics(by_topic.map(|topics| {
                            topics
                                .into_iter()
                                .map(|(topic, ps)| {
                                    OffsetFetchRequestTopics::default()
                                        .with_name(TopicName(str_bytes(topic)))
                                        .with_partition_indexes(ps)
                                })
                                .collect()
                        }))];
                } else {
                    request.group_id = GroupId(str_bytes(group_id));
                    let topics = by_topic.map(|topics| {
                        topics
                            .into_iter()
                            .map(|(topic, ps)| {
                                OffsetFetchRequestTopic::default()
                                    .with_name(TopicName(str_bytes(topic)))
                                    .with_partition_indexes(ps)
                            })
                            .collect()
                    });
                    if topics.is_none() && version < 2 {
                        return Err(Error::UnsupportedApi {
                            peer: conn.peer().to_string(),
                            api: "OffsetFetch of all partitions",
                            client_min: 2,
                            client_max: 8,
                            broker_min: version,
                            broker_max: version,
                        });
                    }
                    request.topics = topics;
                }
                let response: OffsetFetchResponse = conn.send(ApiKey::OffsetFetch, version, &request).await?;
                let context = || format!("fetching offsets of group {group_id}");
                let mut committed: Vec<(String, i32, i64, i32, Option<String>, i16)> = Vec::new();
                if version >= 8 {
                    let group = response
                        .groups
                        .into_iter()
                        .find(|g| g.group_id.0.as_str() == group_id)
                        .ok_or_else(|| missing("OffsetFetch", group_id))?;
                    item_result(group.error_code, None, context)?;
                    for t in group.topics {
                        for p in t.partitions {
                            committed.push((
                                t.name.0.to_string(),
                                p.partition_index,
                                p.committed_offset,
                                p.committed_leader_epoch,
                                p.metadata.map(|m| m.to_string()),
                                p.error_code,
                            ));
                        }
                    }
                } else {
                    item_result(response.error_code, None, context)?;
                    for t in response.topics {
                        for p in t.partitions {
                            committed.push((
                                t.name.0.to_string(),
                                p.partition_index,
                                p.committed_offset,
                                p.committed_leader_epoch,
                                p.metadata.map(|m| m.to_string()),
                                p.error_code,
                            ));
                        }
                    }
                }
                let mut out = BTreeMap::new();
                for (topic, partition, offset, leader_epoch, metadata, error_code) in committed {
                    let tp = TopicPartition::new(topic, partition);
                    item_result(error_code, None, || format!("fetching the offset of group {group_id} for {tp}"))?;
                    if offset < 0 {
                        continue;
                    }
                    let leader_epoch = (leader_epoch >= 0).then_some(leader_epoch);
                    out.insert(tp, OffsetAndMetadata { offset, leader_epoch, metadata });
                }
                Ok(out)
            }
        })
        .await
    }

    /// Commits offsets for a group from outside it (OffsetCommit with generation -1 and no
    /// member id). Kafka accepts that only while the group has no members; an active group
    /// answers UNKNOWN_MEMBER_ID for every partition. Each partition's outcome apart.
    pub async fn alter_group_offsets(
        &self,
        group_id: &str,
        offsets: &BTreeMap<TopicPartition, OffsetAndMetadata>,
    ) -> Result<BTreeMap<TopicPartition, Result<()>>> {
        let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for (tp, o) in offsets {
            by_topic.entry(tp.topic.as_str()).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(tp.partition)
                    .with_committed_offset(o.offset)
                    .with_committed_leader_epoch(o.leader_epoch.unwrap_or(-1))
                    .with_committed_metadata(Some(str_bytes(o.metadata.clone().unwrap_or_default()))),
            );
        }
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(str_bytes(group_id)))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(str_bytes(""))
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(topic, ps)| {
                        OffsetCommitRequestTopic::default().with_name(TopicName(str_bytes(topic))).with_partitions(ps)
                    })
                    .collect(),
            );
        self.on_coordinator(group_id, |conn| {
            let request = request.clone();
            async move {
                let version = conn.version(ApiKey::OffsetCommit)?;
                let response: OffsetCommitResponse = conn.send(ApiKey::OffsetCommit, version, &request).await?;
                let mut out = BTreeMap::new();
                for t in response.topics {
                    for p in t.partitions {
                        let tp = TopicPartition::new(t.name.0.to_string(), p.partition_index);
                        let code = ErrorCode(p.error_code);
                        if coordinator_moved(code) {
                            // The whole request went to the wrong broker: find it again.
                            return Err(Error::broker(code, format!("committing offsets of group {group_id}")));
                        }
                        let result = item_result(p.error_code, None, || {
                            format!("committing the offset of group {group_id} for {tp}")
                        });
                        out.insert(tp, result);
                    }
                }
                Ok(out)
            }
        })
        .await
    }

    /// Deletes a group's committed offsets for partitions (OffsetDelete). Refused per partition
    /// (GROUP_SUBSCRIBED_TO_TOPIC) for topics the group's members are subscribed to.
    pub async fn delete_group_offsets(
        &self,
        group_id: &str,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Result<()>>> {
        let request = OffsetDeleteRequest::default().with_group_id(GroupId(str_bytes(group_id))).with_topics(
            by_topic(partitions)
                .into_iter()
                .map(|(topic, ps)| {
                    OffsetDeleteRequestTopic::default().with_name(TopicName(str_bytes(topic))).with_partitions(
                        ps.into_iter()
                            .map(|p| OffsetDeleteRequestPartition::default().with_partition_index(p))
                            .collect(),
                    )
                })
                .collect(),
        );
        self.on_coordinator(group_id, |conn| {
            let request = request.clone();
            async move {
                let version = conn.version(ApiKey::OffsetDelete)?;
                let response: OffsetDeleteResponse = conn.send(ApiKey::OffsetDelete, version, &request).await?;
                item_result(response.error_code, None, || format!("deleting offsets of group {group_id}"))?;
                let mut out = BTreeMap::new();
                for t in response.topics {
                    for p in t.partitions {
                        let tp = TopicPartition::new(t.name.0.to_string(), p.partition_index);
                        let result = item_result(p.error_code, None, || {
                            format!("deleting the offset of group {group_id} for {tp}")
                        });
                        out.insert(tp, result);
                    }
                }
                Ok(out)
            }
        })
        .await
    }

    /// The coordinators of groups (FindCoordinator: one batched v4 request when the broker
    /// speaks it, else one v0–3 request per group), retried while coordinators are loading or
    /// not yet elected.
    pub async fn find_coordinators(&self, group_ids: &[&str]) -> Result<BTreeMap<String, Result<Coordinator>>> {
        self.find_coordinators_of(GROUP_KEY_TYPE, group_ids).await
    }

    /// FindCoordinator for groups (`key_type` 0) or transactional ids (1).
    async fn find_coordinators_of(
        &self,
        key_type: i8,
        group_ids: &[&str],
    ) -> Result<BTreeMap<String, Result<Coordinator>>> {
        let kind = if key_type == GROUP_KEY_TYPE { "group" } else { "transactional id" };
        let deadline = tokio::time::Instant::now() + self.timeout();
        let mut out = BTreeMap::new();
        let mut todo: Vec<String> =
            group_ids.iter().map(|g| g.to_string()).collect::<BTreeSet<_>>().into_iter().collect();
        loop {
            let conn = self.cluster.any_broker().await?;
            let version = conn.version(ApiKey::FindCoordinator)?;
            let mut answers: Vec<(String, i16, Option<String>, Coordinator)> = Vec::new();
            if version >= 4 {
                let request = FindCoordinatorRequest::default()
                    .with_key_type(key_type)
                    .with_coordinator_keys(todo.iter().map(|g| str_bytes(g.as_str())).collect());
                let response: FindCoordinatorResponse = conn.send(ApiKey::FindCoordinator, version, &request).await?;
                for c in response.coordinators {
                    let coordinator = Coordinator { node_id: c.node_id.0, host: c.host.to_string(), port: c.port };
                    answers.push((
                        c.key.to_string(),
                        c.error_code,
                        c.error_message.map(|m| m.to_string()),
                        coordinator,
                    ));
                }
            } else {
                for group in &todo {
                    let request = FindCoordinatorRequest::default()
                        .with_key(str_bytes(group.as_str()))
                        .with_key_type(if version >= 1 { key_type } else { 0 });
                    let r: FindCoordinatorResponse = conn.send(ApiKey::FindCoordinator, version, &request).await?;
                    let coordinator = Coordinator { node_id: r.node_id.0, host: r.host.to_string(), port: r.port };
                    answers.push((group.clone(), r.error_code, r.error_message.map(|m| m.to_string()), coordinator));
                }
            }
            let mut retry = Vec::new();
            for (group, code, message, coordinator) in answers {
                if !todo.contains(&group) {
                    continue;
                }
                let code = ErrorCode(code);
                if code.is_retriable() && tokio::time::Instant::now() < deadline {
                    retry.push(group);
                    continue;
                }
                let result = item_result(code.0, message, || format!("finding the coordinator of {kind} {group}"))
                    .map(|()| coordinator);
                out.insert(group, result);
            }
            for group in todo.drain(..) {
                if !out.contains_key(&group) && !retry.contains(&group) {
                    out.insert(group.clone(), Err(missing("FindCoordinator", &group)));
                }
            }
            if retry.is_empty() {
                return Ok(out);
            }
            tokio::time::sleep(COORDINATOR_BACKOFF).await;
            todo = retry;
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(0) as u64)
    }

    /// A connection to a coordinator: pooled when the broker is in the metadata (refreshed once
    /// if it is not), else a connection of its own to the address FindCoordinator gave.
    async fn coordinator_connection(&self, coordinator: &Coordinator) -> Result<Connection> {
        if !self.cluster.metadata().brokers.contains_key(&coordinator.node_id) {
            self.cluster.refresh().await?;
        }
        if self.cluster.metadata().brokers.contains_key(&coordinator.node_id) {
            return self.cluster.broker(coordinator.node_id).await;
        }
        Connection::connect(&coordinator.addr(), &self.cluster.config().connection).await
    }

    /// Runs `op` against the group's coordinator, finding it again (until the request timeout)
    /// while `op` fails with an error that says the coordinator moved or is still loading.
    async fn on_coordinator<T, F, Fut>(&self, group_id: &str, mut op: F) -> Result<T>
    where
        F: FnMut(Connection) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout();
        loop {
            let coordinator = self
                .find_coordinators(&[group_id])
                .await?
                .remove(group_id)
                .unwrap_or_else(|| Err(missing("FindCoordinator", group_id)))?;
            let conn = self.coordinator_connection(&coordinator).await?;
            match op(conn).await {
                Err(e) if e.code().is_some_and(coordinator_moved) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(group = group_id, error = %e, "group coordinator moved; finding it again");
                    tokio::time::sleep(COORDINATOR_BACKOFF).await;
                }
                result => return result,
            }
        }
    }

    /// Sends one request per coordinator for the groups it coordinates (`op` answers each
    /// group), and sends groups whose answer says the coordinator moved around again.
    async fn by_coordinator<T, F, Fut>(&self, group_ids: &[&str], op: F) -> Result<BTreeMap<String, Result<T>>>
    where
        F: Fn(Connection, i32, Vec<String>) -> Fut,
        Fut: Future<Output = Result<Vec<(String, Result<T>)>>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout();
        let mut out = BTreeMap::new();
        let mut todo: Vec<&str> = group_ids.to_vec();
        loop {
            let mut by_node: BTreeMap<i32, (Coordinator, Vec<String>)> = BTreeMap::new();
            for (group, coordinator) in self.find_coordinators(&todo).await? {
                match coordinator {
                    Ok(c) => by_node.entry(c.node_id).or_insert_with(|| (c, Vec::new())).1.push(group),
                    Err(e) => {
                        out.insert(group, Err(e));
                    }
                }
            }
            let mut retry: Vec<String> = Vec::new();
            for (node_id, (coordinator, groups)) in by_node {
                let conn = self.coordinator_connection(&coordinator).await?;
                let asked: BTreeSet<String> = groups.iter().cloned().collect();
                let answers = op(conn, node_id, groups).await?;
                let mut answered = BTreeSet::new();
                for (group, result) in answers {
                    if !asked.contains(&group) {
                        continue;
                    }
                    answered.insert(group.clone());
                    match result {
                        Err(e) if e.code().is_some_and(coordinator_moved) && tokio::time::Instant::now() < deadline => {
                            retry.push(group)
                        }
                        result => {
                            out.insert(group, result);
                        }
                    }
                }
                for group in asked.difference(&answered) {
                    out.insert(group.clone(), Err(missing("group response", group)));
                }
            }
            if retry.is_empty() {
                return Ok(out);
            }
            tokio::time::sleep(COORDINATOR_BACKOFF).await;
            // `todo` borrows from `group_ids`, which outlives the loop.
            todo = group_ids.iter().copied().filter(|g| retry.iter().any(|r| r == g)).collect();
        }
    }
}

/// `protocol_type` of consumer groups (as opposed to Connect workers' `connect`).
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";
/// FindCoordinator's `key_type` for consumer groups (1 is transactional ids).
const GROUP_KEY_TYPE: i8 = 0;
const TXN_KEY_TYPE: i8 = 1;
/// `transaction.timeout.ms` an id is left with by [`Admin::fence_producers`] (Kafka's producer default).
const FENCE_TRANSACTION_TIMEOUT_MS: i32 = 60_000;
const COORDINATOR_BACKOFF: Duration = Duration::from_millis(100);

/// A group's coordinator as FindCoordinator names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coordinator {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

impl Coordinator {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Codes that mean "ask FindCoordinator again and retry".
fn coordinator_moved(code: ErrorCode) -> bool {
    code == ErrorCode::NOT_COORDINATOR
        || code == ErrorCode::COORDINATOR_NOT_AVAILABLE
        || code == ErrorCode::COORDINATOR_LOAD_IN_PROGRESS
}

fn missing(what: &'static str, item: &str) -> Error {
    Error::Protocol { peer: "coordinator".into(), source: ProtocolError::malformed(what, format!("{item} missing")) }
}

/// Partitions grouped by topic, partitions in order.
fn by_topic(partitions: &[TopicPartition]) -> BTreeMap<String, Vec<i32>> {
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for tp in partitions {
        out.entry(tp.topic.clone()).or_default().push(tp.partition);
    }
    for ps in out.values_mut() {
        ps.sort_unstable();
        ps.dedup();
    }
    out
}

/// A member's assignment as DescribeGroups relays it: the consumer protocol's
/// `ConsumerProtocolAssignment`, written by the group's leader (any client), decoded with the
/// group consumer's bounded decoder; partitions sorted.
fn decode_member_assignment(blob: &[u8]) -> Result<Vec<TopicPartition>, ProtocolError> {
    let mut partitions = crate::consumer::assignor::decode_assignment(blob)?.partitions;
    partitions.sort();
    partitions.dedup();
    Ok(partitions)
}

/// Turns a per-item error code and message into a result.
fn item_result(code: i16, message: Option<String>, context: impl FnOnce() -> String) -> Result<()> {
    let code = ErrorCode(code);
    if code.is_ok() {
        return Ok(());
    }
    let context = match message {
        Some(m) if !m.is_empty() => format!("{}: {m}", context()),
        _ => context(),
    };
    Err(Error::broker(code, context))
}

/// ListOffsets for partitions (by wire timestamp: -2 earliest, -1 latest, -3 max timestamp),
/// sent to each partition's leader; retried after a metadata refresh when leadership moved.
pub(crate) async fn list_offsets(
    cluster: &Cluster,
    partitions: &[(TopicPartition, i64)],
    isolation_level: i8,
) -> Result<HashMap<TopicPartition, ListOffsetsResultInfo>> {
    let deadline = tokio::time::Instant::now() + cluster.config().connection.request_timeout;
    list_offsets_until(cluster, partitions, isolation_level, deadline).await
}

/// Wait between ListOffsets rounds while leadership moves.
const LIST_OFFSETS_BACKOFF: Duration = Duration::from_millis(100);
/// Partitions per DescribeProducers request (brokers refuse more than 10,000).
pub const DESCRIBE_PRODUCERS_BATCH: usize = 1_000;

/// One DescribeProducers request for `partitions` (all led by `conn`'s broker): each
/// partition's producers or error; a partition missing from the answer is an error.
async fn describe_producers_at(
    conn: &Connection,
    partitions: &[TopicPartition],
) -> Result<Vec<(TopicPartition, Result<Vec<ProducerState>>)>> {
    use crate::protocol::messages::describe_producers_request::TopicRequest;
    let request = DescribeProducersRequest::default().with_topics(
        by_topic(partitions)
            .into_iter()
            .map(|(t, ps)| TopicRequest::default().with_name(TopicName(str_bytes(t))).with_partition_indexes(ps))
            .collect(),
    );
    let response: DescribeProducersResponse = conn.send(ApiKey::DescribeProducers, 0, &request).await?;
    let mut answers: BTreeMap<TopicPartition, Result<Vec<ProducerState>>> = BTreeMap::new();
    for t in response.topics {
        for p in t.partitions {
            let tp = TopicPartition::new(t.name.to_string(), p.partition_index);
            let result = item_result(p.error_code, p.error_message.map(|m| m.to_string()), || {
                format!("describing the producers of {tp}")
            })
            .map(|()| {
                p.active_producers
                    .into_iter()
                    .map(|a| ProducerState {
                        producer_id: a.producer_id.0,
                        producer_epoch: a.producer_epoch,
                        last_sequence: a.last_sequence,
                        last_timestamp_ms: a.last_timestamp,
                        coordinator_epoch: a.coordinator_epoch,
                        current_transaction_start_offset: (a.current_txn_start_offset >= 0)
                            .then_some(a.current_txn_start_offset),
                    })
                    .collect()
            });
            answers.insert(tp, result);
        }
    }
    Ok(partitions
        .iter()
        .map(|tp| {
            let result = answers.remove(tp).unwrap_or_else(|| {
                Err(Error::broker(ErrorCode::UNKNOWN_SERVER_ERROR, format!("no DescribeProducers answer for {tp}")))
            });
            (tp.clone(), result)
        })
        .collect())
}

/// ListOffsets to each partition's leader. Partitions whose leader is unknown, unreachable or
/// has moved (a retriable error code) are looked up again after a metadata refresh until
/// `deadline`; at least one round is always made.
pub(crate) async fn list_offsets_until(
    cluster: &Cluster,
    partitions: &[(TopicPartition, i64)],
    isolation_level: i8,
    deadline: tokio::time::Instant,
) -> Result<HashMap<TopicPartition, ListOffsetsResultInfo>> {
    let mut out = HashMap::new();
    let mut todo: Vec<(TopicPartition, i64)> = partitions.to_vec();
    loop {
        let mut by_leader: BTreeMap<i32, Vec<(TopicPartition, i64)>> = BTreeMap::new();
        let mut retry = Vec::new();
        let mut last_error = None;
        for (tp, ts) in todo.drain(..) {
            let topic = cluster.topic(&tp.topic).await?;
            let p = topic
                .partition(tp.partition)
                .ok_or_else(|| Error::UnknownPartition { topic: tp.topic.clone(), partition: tp.partition })?;
            if p.leader < 0 {
                last_error = Some(Error::LeaderNotAvailable { topic: tp.topic.clone(), partition: tp.partition });
                retry.push((tp, ts));
                continue;
            }
            by_leader.entry(p.leader).or_default().push((tp, ts));
        }
        for (leader, wanted) in by_leader {
            match list_offsets_at(cluster, leader, &wanted, isolation_level).await {
                Ok(answers) => {
                    for ((tp, ts), answer) in wanted.into_iter().zip(answers) {
                        match answer {
                            Ok(info) => {
                                out.insert(tp, info);
                            }
                            Err(e) if e.is_retriable() => {
                                last_error = Some(e);
                                retry.push((tp, ts));
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) if e.is_retriable() => {
                    last_error = Some(e);
                    retry.extend(wanted);
                }
                Err(e) => return Err(e),
            }
        }
        if retry.is_empty() {
            return Ok(out);
        }
        let error = last_error.unwrap_or_else(|| Error::broker(ErrorCode::LEADER_NOT_AVAILABLE, "list offsets"));
        if tokio::time::Instant::now() + LIST_OFFSETS_BACKOFF >= deadline {
            return Err(error);
        }
        tracing::debug!(error = %error, partitions = retry.len(), "retrying list offsets");
        tokio::time::sleep(LIST_OFFSETS_BACKOFF).await;
        let topics: BTreeSet<&str> = retry.iter().map(|(tp, _)| tp.topic.as_str()).collect();
        if let Err(e) = cluster.refresh_topics(&topics.into_iter().collect::<Vec<_>>()).await {
            tracing::debug!(error = %e, "metadata refresh for list offsets failed");
        }
        todo = retry;
    }
}

/// One ListOffsets request to `leader`; one answer per wanted partition, in order.
async fn list_offsets_at(
    cluster: &Cluster,
    leader: i32,
    wanted: &[(TopicPartition, i64)],
    isolation_level: i8,
) -> Result<Vec<Result<ListOffsetsResultInfo>>> {
    let conn = cluster.broker(leader).await?;
    let version = conn.version(ApiKey::ListOffsets)?;
    let metadata = cluster.metadata();
    let mut topics: BTreeMap<&str, Vec<ListOffsetsPartition>> = BTreeMap::new();
    for (tp, ts) in wanted {
        topics.entry(tp.topic.as_str()).or_default().push(
            ListOffsetsPartition::default()
                .with_partition_index(tp.partition)
                .with_timestamp(*ts)
                .with_current_leader_epoch(metadata.leader_epoch(&tp.topic, tp.partition)),
        );
    }
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(if version >= 2 { isolation_level } else { 0 })
        .with_topics(
            topics
                .into_iter()
                .map(|(name, ps)| ListOffsetsTopic::default().with_name(TopicName(str_bytes(name))).with_partitions(ps))
                .collect(),
        );
    let response: ListOffsetsResponse = conn.send(ApiKey::ListOffsets, version, &request).await?;
    let mut answered = HashMap::new();
    for t in response.topics {
        for p in t.partitions {
            answered.insert((t.name.0.to_string(), p.partition_index), p);
        }
    }
    Ok(wanted
        .iter()
        .map(|(tp, _)| {
            let Some(p) = answered.remove(&(tp.topic.clone(), tp.partition)) else {
                return Err(Error::broker(ErrorCode::UNKNOWN_SERVER_ERROR, format!("list offsets of {tp}: no answer")));
            };
            let code = ErrorCode(p.error_code);
            if !code.is_ok() {
                return Err(Error::broker(code, format!("list offsets of {tp}")));
            }
            let leader_epoch = (p.leader_epoch >= 0).then_some(p.leader_epoch);
            Ok(ListOffsetsResultInfo { offset: p.offset, timestamp_ms: p.timestamp, leader_epoch })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_results_carry_code_and_message() {
        assert!(item_result(0, None, || unreachable!()).is_ok());
        let err = item_result(36, Some("exists".into()), || "creating topic t".into()).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::TOPIC_ALREADY_EXISTS));
        assert!(err.to_string().contains("creating topic t: exists"), "{err}");
    }

    #[test]
    fn member_assignments_decode_sorted_and_bounded() {
        use crate::consumer::assignor::{encode_assignment, Assignment};
        let blob = encode_assignment(&Assignment {
            partitions: vec![TopicPartition::new("b", 1), TopicPartition::new("a", 2), TopicPartition::new("b", 0)],
            user_data: None,
        });
        assert_eq!(
            decode_member_assignment(&blob).unwrap(),
            vec![TopicPartition::new("a", 2), TopicPartition::new("b", 0), TopicPartition::new("b", 1)]
        );
        assert_eq!(decode_member_assignment(&[]).unwrap(), vec![], "a member between rebalances");
        // Version 0, then a topic count of i32::MAX with nothing after it.
        assert!(decode_member_assignment(&[0, 0, 0x7f, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn group_states_parse_kafka_names() {
        for s in ["Empty", "Stable", "PreparingRebalance", "CompletingRebalance", "Dead", "Assigning"] {
            assert_eq!(GroupState::parse(s).to_string(), s);
        }
        assert!(!GroupState::Empty.is_active());
        assert!(!GroupState::Dead.is_active());
        assert!(GroupState::Stable.is_active());
        assert!(GroupState::PreparingRebalance.is_active());
        assert_eq!(GroupState::parse("Assigning"), GroupState::Unknown("Assigning".into()));
    }

    #[test]
    fn partitions_group_by_topic_in_order() {
        let grouped = by_topic(&[
            TopicPartition::new("b", 2),
            TopicPartition::new("a", 1),
            TopicPartition::new("b", 0),
            TopicPartition::new("b", 2),
        ]);
        assert_eq!(grouped, BTreeMap::from([("a".to_string(), vec![1]), ("b".to_string(), vec![0, 2])]));
        assert!(coordinator_moved(ErrorCode::NOT_COORDINATOR));
        assert!(!coordinator_moved(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION));
    }

    #[test]
    fn offset_specs_map_to_kafka_sentinels() {
        assert_eq!(OffsetSpec::Earliest.wire_timestamp(), -2);
        assert_eq!(OffsetSpec::Latest.wire_timestamp(), -1);
        assert_eq!(OffsetSpec::MaxTimestamp.wire_timestamp(), -3);
        assert_eq!(OffsetSpec::Timestamp(5).wire_timestamp(), 5);
        assert_eq!(ConfigSource::from_wire(5), ConfigSource::DefaultConfig);
        assert_eq!(ConfigResource::Broker(1).type_and_name(), (4, "1".to_string()));
    }
}

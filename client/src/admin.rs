//! Cluster administration: topics, partitions, configs and offsets. Requests that change the
//! cluster go to the controller; describing topics reads the metadata cache's source, a
//! Metadata request.
//!
//! Per-item failures (one topic of several already exists) come back per item, not as one
//! error, as in the Java `Admin` client.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::connection::ConnectionConfig;
use crate::error::{Error, Result};
use crate::metadata::{Cluster, ClusterConfig, PartitionMetadata, TopicPartition};
use crate::protocol::messages::create_partitions_request::CreatePartitionsTopic;
use crate::protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use crate::protocol::messages::delete_topics_request::DeleteTopicState;
use crate::protocol::messages::describe_configs_request::DescribeConfigsResource;
use crate::protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use crate::protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use crate::protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, ListOffsetsRequest, ListOffsetsResponse,
    TopicName,
};
use crate::protocol::{str_bytes, ApiKey, ErrorCode};

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

/// A topic as `describe_topics` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    pub name: String,
    pub topic_id: uuid::Uuid,
    pub is_internal: bool,
    pub partitions: Vec<PartitionMetadata>,
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

/// The admin client. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    cluster: Cluster,
    timeout_ms: i32,
}

const ADMIN_ATTEMPTS: u32 = 3;

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
        let (_, response): (i16, CreateTopicsResponse) =
            self.cluster.controller().await?.call(ApiKey::CreateTopics, &request).await?;
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
            self.cluster.controller().await?.call(ApiKey::CreatePartitions, &request).await?;
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
        let wanted: Vec<(TopicPartition, i64)> =
            partitions.iter().map(|(tp, spec)| (tp.clone(), spec.wire_timestamp())).collect();
        Ok(list_offsets(&self.cluster, &wanted, 0).await?.into_iter().collect())
    }
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
    let mut out = HashMap::new();
    let mut todo: Vec<(TopicPartition, i64)> = partitions.to_vec();
    for attempt in 0..ADMIN_ATTEMPTS {
        let mut by_leader: BTreeMap<i32, Vec<(TopicPartition, i64)>> = BTreeMap::new();
        for (tp, ts) in todo.drain(..) {
            let topic = cluster.topic(&tp.topic).await?;
            let p = topic
                .partition(tp.partition)
                .ok_or_else(|| Error::UnknownPartition { topic: tp.topic.clone(), partition: tp.partition })?;
            if p.leader < 0 {
                return Err(Error::LeaderNotAvailable { topic: tp.topic.clone(), partition: tp.partition });
            }
            by_leader.entry(p.leader).or_default().push((tp, ts));
        }
        let mut retry = Vec::new();
        let mut last_error = None;
        for (leader, wanted) in by_leader {
            let conn = cluster.broker(leader).await?;
            let version = conn.version(ApiKey::ListOffsets)?;
            let mut topics: BTreeMap<&str, Vec<ListOffsetsPartition>> = BTreeMap::new();
            for (tp, ts) in &wanted {
                topics
                    .entry(tp.topic.as_str())
                    .or_default()
                    .push(ListOffsetsPartition::default().with_partition_index(tp.partition).with_timestamp(*ts));
            }
            let request = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_isolation_level(if version >= 2 { isolation_level } else { 0 })
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(name, ps)| {
                            ListOffsetsTopic::default().with_name(TopicName(str_bytes(name))).with_partitions(ps)
                        })
                        .collect(),
                );
            let response: ListOffsetsResponse = conn.send(ApiKey::ListOffsets, version, &request).await?;
            let mut answered = HashMap::new();
            for t in response.topics {
                for p in t.partitions {
                    answered.insert((t.name.0.to_string(), p.partition_index), p);
                }
            }
            for (tp, ts) in wanted {
                let Some(p) = answered.remove(&(tp.topic.clone(), tp.partition)) else {
                    last_error = Some(Error::broker(ErrorCode::UNKNOWN_SERVER_ERROR, format!("list offsets of {tp}")));
                    retry.push((tp, ts));
                    continue;
                };
                let code = ErrorCode(p.error_code);
                if code.is_ok() {
                    let leader_epoch = (p.leader_epoch >= 0).then_some(p.leader_epoch);
                    out.insert(tp, ListOffsetsResultInfo { offset: p.offset, timestamp_ms: p.timestamp, leader_epoch });
                } else if code.is_retriable() && attempt + 1 < ADMIN_ATTEMPTS {
                    retry.push((tp, ts));
                } else {
                    return Err(Error::broker(code, format!("list offsets of {tp}")));
                }
            }
        }
        if retry.is_empty() {
            return Ok(out);
        }
        if let Some(e) = last_error {
            tracing::debug!(error = %e, "retrying list offsets");
        }
        cluster.refresh().await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        todo = retry;
    }
    Err(Error::broker(ErrorCode::LEADER_NOT_AVAILABLE, "list offsets: leadership kept moving"))
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
    fn offset_specs_map_to_kafka_sentinels() {
        assert_eq!(OffsetSpec::Earliest.wire_timestamp(), -2);
        assert_eq!(OffsetSpec::Latest.wire_timestamp(), -1);
        assert_eq!(OffsetSpec::MaxTimestamp.wire_timestamp(), -3);
        assert_eq!(OffsetSpec::Timestamp(5).wire_timestamp(), 5);
        assert_eq!(ConfigSource::from_wire(5), ConfigSource::DefaultConfig);
        assert_eq!(ConfigResource::Broker(1).type_and_name(), (4, "1".to_string()));
    }
}

//! Cluster administration that admin clients and UIs call: DescribeCluster (60),
//! DeleteRecords (21), DescribeLogDirs (35), ElectLeaders (43), the legacy AlterConfigs (33), and
//! clean refusals for what needs authentication, which Spate does not have yet: DescribeAcls
//! (29, SECURITY_DISABLED, as Kafka answers without an authorizer) and
//! DescribeUserScramCredentials (50); and UnregisterBroker (64) for a decommissioned broker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spate_client::protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use spate_client::protocol::messages::alter_replica_log_dirs_response::{
    AlterReplicaLogDirPartitionResult, AlterReplicaLogDirTopicResult,
};
use spate_client::protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use spate_client::protocol::messages::describe_cluster_response::DescribeClusterBroker;
use spate_client::protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use spate_client::protocol::messages::describe_user_scram_credentials_response::DescribeUserScramCredentialsResult;
use spate_client::protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use spate_client::protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, AlterReplicaLogDirsRequest, AlterReplicaLogDirsResponse, BrokerId,
    DeleteRecordsRequest, DeleteRecordsResponse, DescribeAclsRequest, DescribeAclsResponse, DescribeClusterRequest,
    DescribeClusterResponse, DescribeLogDirsRequest, DescribeLogDirsResponse, DescribeUserScramCredentialsRequest,
    DescribeUserScramCredentialsResponse, ElectLeadersRequest, ElectLeadersResponse, TopicName,
    UnregisterBrokerRequest, UnregisterBrokerResponse,
};
use spate_client::protocol::{str_bytes, ErrorCode};
use spate_client::ProtocolError;

use super::{decode, leader_partition, Reply, RequestContext};
use crate::broker::Broker;

/// DescribeCluster's `endpoint_type` for brokers (2 is controllers, which clients reach through
/// a controller listener Spate does not have).
const ENDPOINT_TYPE_BROKERS: i8 = 1;
/// Kafka's "operations omitted" marker for `cluster_authorized_operations`.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;
/// ElectLeaders' `election_type`: 0 preferred, 1 unclean.
const ELECTION_UNCLEAN: i8 = 1;
/// Config resource type of a topic (Kafka's `ConfigResource.Type`).
const RESOURCE_TOPIC: i8 = 2;
/// Upper bound on partitions one DeleteRecords or ElectLeaders request may name (their arrays
/// are already bounded by the frame size; this bounds the work one request can queue).
const MAX_PARTITIONS_PER_REQUEST: usize = 100_000;
/// The longest a DeleteRecords answer waits for the followers, whatever its `timeout_ms` says.
const MAX_DELETE_WAIT_MS: i32 = 60_000;
/// How often a waiting DeleteRecords looks at the followers' reported log starts.
const DELETE_POLL_INTERVAL: Duration = Duration::from_millis(20);

pub(super) fn describe_cluster(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: DescribeClusterRequest = decode("DescribeCluster request", ctx, body)?;
    let mut response = DescribeClusterResponse::default()
        .with_endpoint_type(ENDPOINT_TYPE_BROKERS)
        .with_cluster_id(str_bytes(broker.cluster_id.clone()))
        .with_controller_id(BrokerId(super::metadata::admin_controller_id(broker, &broker.image())))
        .with_cluster_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED);
    if ctx.version >= 1 && request.endpoint_type != ENDPOINT_TYPE_BROKERS {
        response.error_code = ErrorCode::MISMATCHED_ENDPOINT_TYPE.0;
        response.error_message = Some(str_bytes(format!(
            "endpoint type {} asked of a broker listener; Spate's controllers are reached through the brokers",
            request.endpoint_type
        )));
        return Ok(Reply::Now(ctx.respond(&response)));
    }
    let image = broker.image();
    response.brokers = image
        .brokers
        .values()
        .filter(|b| !b.fenced || request.include_fenced_brokers)
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.id))
                .with_host(str_bytes(b.host.clone()))
                .with_port(b.port)
                .with_is_fenced(b.fenced)
        })
        .collect();
    Ok(Reply::Now(ctx.respond(&response)))
}

/// DeleteRecords (KIP-107): the leader moves each partition's log start offset in a blocking
/// step, then the answer waits, like Kafka's DelayedDeleteRecords, until every in-sync follower
/// has reported (in its fetches) a log start at least as far, or `timeout_ms` passes
/// (REQUEST_TIMED_OUT). The low watermark answered is the smallest among the in-sync replicas.
pub(super) fn delete_records(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: DeleteRecordsRequest = decode("DeleteRecords request", ctx, body)?;
    let broker = broker.clone();
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    // Deleting moves the checkpoint (an fsync) and unlinks segment files: blocking work.
    Ok(Reply::Blocking(Box::new(move || {
        let total: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
        // (topic index, partition index, the partition and the start to wait for) per deletion.
        let mut waits = Vec::new();
        let mut topics: Vec<DeleteRecordsTopicResult> = Vec::with_capacity(request.topics.len());
        for (ti, t) in request.topics.iter().enumerate() {
            let mut partitions = Vec::with_capacity(t.partitions.len());
            for (pi, p) in t.partitions.iter().enumerate() {
                let result = DeleteRecordsPartitionResult::default()
                    .with_partition_index(p.partition_index)
                    .with_low_watermark(-1);
                let outcome = if total > MAX_PARTITIONS_PER_REQUEST {
                    Err(ErrorCode::INVALID_REQUEST)
                } else {
                    leader_partition(&broker, t.name.as_str(), p.partition_index).and_then(|partition| {
                        let start = partition.delete_records_before(p.offset).map_err(|e| e.code())?;
                        Ok((partition, start))
                    })
                };
                partitions.push(match outcome {
                    Ok((partition, start)) => {
                        waits.push((ti, pi, partition, start));
                        result
                    }
                    Err(code) => result.with_error_code(code.0),
                });
            }
            topics.push(DeleteRecordsTopicResult::default().with_name(t.name.clone()).with_partitions(partitions));
        }
        let timeout =
            Duration::from_millis(u64::try_from(request.timeout_ms.clamp(0, MAX_DELETE_WAIT_MS)).unwrap_or(0));
        Reply::Later(Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let mut waiting = false;
                for (ti, pi, partition, start) in &waits {
                    let result = &mut topics[*ti].partitions[*pi];
                    if result.low_watermark >= 0 || result.error_code != 0 {
                        continue;
                    }
                    match partition.replicas_low_watermark() {
                        Some(low) if low >= *start => result.low_watermark = low,
                        Some(_) => waiting = true,
                        None => result.error_code = ErrorCode::NOT_LEADER_OR_FOLLOWER.0,
                    }
                }
                if !waiting {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    for (ti, pi, _, _) in &waits {
                        let result = &mut topics[*ti].partitions[*pi];
                        if result.low_watermark < 0 && result.error_code == 0 {
                            result.error_code = ErrorCode::REQUEST_TIMED_OUT.0;
                        }
                    }
                    break;
                }
                // Followers learn the new start from their next fetch response (at most
                // `replica.fetch.wait.max.ms` away) and report it in the fetch after that.
                tokio::time::sleep(DELETE_POLL_INTERVAL).await;
            }
            ctx.respond(&DeleteRecordsResponse::default().with_topics(topics))
        }))
    })))
}

pub(super) fn describe_log_dirs(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: DescribeLogDirsRequest = decode("DescribeLogDirs request", ctx, body)?;
    let broker = broker.clone();
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    // Sizes come from the partition locks and the disk's statvfs: keep it off the async worker.
    Ok(Reply::Blocking(Box::new(move || {
        let wanted: Option<BTreeMap<&str, &[i32]>> = request
            .topics
            .as_ref()
            .map(|topics| topics.iter().map(|t| (t.topic.as_str(), t.partitions.as_slice())).collect());
        let log_dir = &broker.log_dir;
        let mut result = DescribeLogDirsResult::default()
            .with_log_dir(str_bytes(log_dir.path().display().to_string()))
            .with_total_bytes(-1)
            .with_usable_bytes(-1);
        if log_dir.is_offline() {
            result.error_code = ErrorCode::KAFKA_STORAGE_ERROR.0;
        } else {
            if let Some((total, usable)) = disk_space(log_dir.path()) {
                result.total_bytes = total;
                result.usable_bytes = usable;
            }
            let mut topics: Vec<DescribeLogDirsTopic> = Vec::new();
            for topic in broker.all_topics() {
                let only = match &wanted {
                    None => None,
                    Some(w) => match w.get(topic.name.as_str()) {
                        Some(partitions) => Some(*partitions),
                        None => continue,
                    },
                };
                let partitions: Vec<DescribeLogDirsPartition> = topic
                    .local_partitions()
                    .filter(|p| only.is_none_or(|o| o.contains(&p.tp.partition)))
                    .map(|p| {
                        let offsets = p.offsets();
                        DescribeLogDirsPartition::default()
                            .with_partition_index(p.tp.partition)
                            .with_partition_size(i64::try_from(p.size_bytes()).unwrap_or(i64::MAX))
                            // Kafka's lag of a current replica: how far its log end is behind the
                            // high watermark it knows (0 on the leader).
                            .with_offset_lag((offsets.high_watermark - offsets.log_end_offset).max(0))
                    })
                    .collect();
                if !partitions.is_empty() {
                    topics.push(
                        DescribeLogDirsTopic::default()
                            .with_name(TopicName(str_bytes(topic.name.clone())))
                            .with_partitions(partitions),
                    );
                }
            }
            result.topics = topics;
        }
        Reply::Now(ctx.respond(&DescribeLogDirsResponse::default().with_results(vec![result])))
    })))
}

/// Total and available bytes of the filesystem holding `path`.
fn disk_space(path: &std::path::Path) -> Option<(i64, i64)> {
    let stat = rustix::fs::statvfs(path).ok()?;
    let bytes = |blocks: u64| i64::try_from(u128::from(blocks) * u128::from(stat.f_frsize)).unwrap_or(i64::MAX);
    Some((bytes(stat.f_blocks), bytes(stat.f_bavail)))
}

pub(super) fn elect_leaders(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: ElectLeadersRequest = decode("ElectLeaders request", ctx, body)?;
    let broker = broker.clone();
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    Ok(Reply::Later(Box::pin(async move {
        let unclean = ctx.version >= 1 && request.election_type == ELECTION_UNCLEAN;
        let named: Option<Vec<(String, i32)>> = request.topic_partitions.as_ref().map(|topics| {
            topics.iter().flat_map(|t| t.partitions.iter().map(move |&p| (t.topic.to_string(), p))).collect()
        });
        let mut response = ElectLeadersResponse::default();
        if named.as_ref().is_some_and(|n| n.len() > MAX_PARTITIONS_PER_REQUEST) {
            response.error_code = ErrorCode::INVALID_REQUEST.0;
            return ctx.respond(&response);
        }
        match broker.elect_leaders(unclean, named).await {
            Ok(results) => {
                let mut by_topic: BTreeMap<String, Vec<PartitionResult>> = BTreeMap::new();
                for r in results {
                    let ok = r.code == 0;
                    by_topic.entry(r.topic).or_default().push(
                        PartitionResult::default()
                            .with_partition_id(r.partition)
                            .with_error_code(r.code)
                            .with_error_message((!ok).then(|| str_bytes(r.message))),
                    );
                }
                response.replica_election_results = by_topic
                    .into_iter()
                    .map(|(topic, partition_result)| {
                        ReplicaElectionResult::default()
                            .with_topic(TopicName(str_bytes(topic)))
                            .with_partition_result(partition_result)
                    })
                    .collect();
            }
            Err(err) => {
                // v0 has no top-level error code: every named partition carries it.
                response.error_code = err.code().0;
                if ctx.version == 0 {
                    response.replica_election_results = request
                        .topic_partitions
                        .iter()
                        .flatten()
                        .map(|t| {
                            ReplicaElectionResult::default().with_topic(t.topic.clone()).with_partition_result(
                                t.partitions
                                    .iter()
                                    .map(|&p| {
                                        PartitionResult::default()
                                            .with_partition_id(p)
                                            .with_error_code(err.code().0)
                                            .with_error_message(Some(str_bytes(err.to_string())))
                                    })
                                    .collect(),
                            )
                        })
                        .collect();
                }
            }
        }
        ctx.respond(&response)
    })))
}

/// AlterReplicaLogDirs (KIP-113): a broker has one log dir (`log.dirs`), so there is nowhere to
/// move a replica to. A request for that dir is already satisfied (NONE, as Kafka answers for a
/// replica already in the destination); any other path is LOG_DIR_NOT_FOUND, so tools that try
/// to balance disks learn why instead of seeing a closed connection.
pub(super) fn alter_replica_log_dirs(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: AlterReplicaLogDirsRequest = decode("AlterReplicaLogDirs request", ctx, body)?;
    // The path as DescribeLogDirs reports it (no filesystem lookups for a client's path).
    let ours = broker.log_dir.path();
    let is_ours = |path: &str| std::path::Path::new(path) == ours;
    let mut results: Vec<AlterReplicaLogDirTopicResult> = Vec::new();
    for dir in &request.dirs {
        let code = if is_ours(dir.path.as_str()) { ErrorCode::NONE } else { ErrorCode::LOG_DIR_NOT_FOUND };
        for topic in &dir.topics {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| AlterReplicaLogDirPartitionResult::default().with_partition_index(*p).with_error_code(code.0))
                .collect();
            results.push(
                AlterReplicaLogDirTopicResult::default()
                    .with_topic_name(topic.name.clone())
                    .with_partitions(partitions),
            );
        }
    }
    Ok(Reply::Now(ctx.respond(&AlterReplicaLogDirsResponse::default().with_results(results))))
}

/// UnregisterBroker (KIP-631): forgets a stopped broker that holds no replicas (the controller
/// refuses anything else, saying why).
pub(super) fn unregister_broker(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: UnregisterBrokerRequest = decode("UnregisterBroker request", ctx, body)?;
    let broker = broker.clone();
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    Ok(Reply::Later(Box::pin(async move {
        let mut response = UnregisterBrokerResponse::default();
        if let Err(err) = broker.unregister_broker(request.broker_id.0).await {
            response.error_code = err.code().0;
            response.error_message = Some(str_bytes(err.to_string()));
        }
        ctx.respond(&response)
    })))
}

/// The legacy AlterConfigs: each resource's configs replace all of its overrides (keys not
/// named go back to their defaults), unlike IncrementalAlterConfigs.
pub(super) fn alter_configs(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: AlterConfigsRequest = decode("AlterConfigs request", ctx, body)?;
    let broker = broker.clone();
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    Ok(Reply::Later(Box::pin(async move {
        let mut responses = Vec::with_capacity(request.resources.len());
        for res in &request.resources {
            let r = AlterConfigsResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let outcome = match res.resource_type {
                RESOURCE_TOPIC => {
                    let name = res.resource_name.as_str();
                    let current = broker.image().topics.get(name).map(|t| t.configs.clone()).unwrap_or_default();
                    let mut changes: Vec<(String, Option<String>)> = current
                        .keys()
                        .filter(|k| !res.configs.iter().any(|c| c.name.as_str() == k.as_str()))
                        .map(|k| (k.clone(), None))
                        .collect();
                    for c in &res.configs {
                        changes.push((c.name.to_string(), c.value.as_ref().map(|v| v.to_string())));
                    }
                    broker
                        .alter_topic_configs(name, &changes, request.validate_only)
                        .await
                        .map_err(|e| (e.code(), e.to_string()))
                }
                other => Err(super::configs::refuse_non_topic(other)),
            };
            responses.push(match outcome {
                Ok(()) => r,
                Err((code, msg)) => r.with_error_code(code.0).with_error_message(Some(str_bytes(msg))),
            });
        }
        ctx.respond(&AlterConfigsResponse::default().with_responses(responses))
    })))
}

/// Without an authorizer Kafka answers DescribeAcls with SECURITY_DISABLED; so does Spate, which
/// has no authentication yet.
pub(super) fn describe_acls(
    _broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let _request: DescribeAclsRequest = decode("DescribeAcls request", ctx, body)?;
    let response = DescribeAclsResponse::default()
        .with_error_code(ErrorCode::SECURITY_DISABLED.0)
        .with_error_message(Some(str_bytes("no authorizer is configured: Spate has no authentication or ACLs yet")));
    Ok(Reply::Now(ctx.respond(&response)))
}

/// No SCRAM credentials exist (no authentication yet): every named user is RESOURCE_NOT_FOUND,
/// as Kafka answers for a user without credentials; "all users" is an empty list.
pub(super) fn describe_user_scram_credentials(
    _broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: DescribeUserScramCredentialsRequest = decode("DescribeUserScramCredentials request", ctx, body)?;
    let results = request
        .users
        .iter()
        .flatten()
        .map(|u| {
            DescribeUserScramCredentialsResult::default()
                .with_user(u.name.clone())
                .with_error_code(ErrorCode::RESOURCE_NOT_FOUND.0)
                .with_error_message(Some(str_bytes(format!(
                    "user {} has no SCRAM credentials: Spate has no authentication yet",
                    u.name.as_str()
                ))))
        })
        .collect();
    Ok(Reply::Now(ctx.respond(&DescribeUserScramCredentialsResponse::default().with_results(results))))
}

/// AlterPartitionReassignments (KIP-455): each partition's target replicas (or `null`: cancel)
/// go to the controller in one request; the answer comes once it accepted them. The data moves
/// afterwards: ListPartitionReassignments shows what is still moving.
pub(super) fn alter_partition_reassignments(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    use spate_client::protocol::messages::alter_partition_reassignments_response::{
        ReassignablePartitionResponse, ReassignableTopicResponse,
    };
    use spate_client::protocol::messages::{AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse};
    let request: AlterPartitionReassignmentsRequest = decode("AlterPartitionReassignments request", ctx, body)?;
    let broker = broker.clone();
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    Ok(Reply::Later(Box::pin(async move {
        // KIP-860: v1 may forbid changing the replication factor; v0 always allows it (the
        // field's default, true, is what v0 decodes to).
        let allow_rf_change = request.allow_replication_factor_change;
        let image = broker.image();
        let mut refused: BTreeMap<(String, i32), (ErrorCode, String)> = BTreeMap::new();
        let mut wanted = Vec::new();
        for t in &request.topics {
            for p in &t.partitions {
                let key = (t.name.to_string(), p.partition_index);
                let target: Option<Vec<i32>> = p.replicas.as_ref().map(|r| r.iter().map(|b| b.0).collect());
                if let (Some(target), Some(current)) = (&target, image.partition(&key.0, key.1)) {
                    let original = current.replicas.len() - current.adding_replicas.len();
                    if !allow_rf_change && target.len() != original {
                        refused.insert(
                            key,
                            (
                                ErrorCode::INVALID_REPLICATION_FACTOR,
                                format!(
                                    "target has {} replicas, the partition {original}; set allow_replication_factor_change",
                                    target.len()
                                ),
                            ),
                        );
                        continue;
                    }
                }
                wanted.push((key.0, key.1, target));
            }
        }
        let mut response =
            AlterPartitionReassignmentsResponse::default().with_allow_replication_factor_change(allow_rf_change);
        if wanted.len() > MAX_PARTITIONS_PER_REQUEST {
            response.error_code = ErrorCode::INVALID_REQUEST.0;
            response.error_message = Some(str_bytes(format!(
                "{} partitions in one request; at most {MAX_PARTITIONS_PER_REQUEST}",
                wanted.len()
            )));
            return ctx.respond(&response);
        }
        let outcomes =
            if wanted.is_empty() { Ok(Vec::new()) } else { broker.alter_partition_reassignments(wanted).await };
        let results = match outcomes {
            Ok(results) => results,
            Err(err) => {
                response.error_code = err.code().0;
                response.error_message = Some(str_bytes(err.to_string()));
                return ctx.respond(&response);
            }
        };
        let mut by_topic: BTreeMap<String, Vec<ReassignablePartitionResponse>> = BTreeMap::new();
        for r in results {
            by_topic.entry(r.topic).or_default().push(
                ReassignablePartitionResponse::default()
                    .with_partition_index(r.partition)
                    .with_error_code(r.code)
                    .with_error_message((r.code != 0).then(|| str_bytes(r.message))),
            );
        }
        for ((topic, partition), (code, message)) in refused {
            by_topic.entry(topic).or_default().push(
                ReassignablePartitionResponse::default()
                    .with_partition_index(partition)
                    .with_error_code(code.0)
                    .with_error_message(Some(str_bytes(message))),
            );
        }
        response.responses = by_topic
            .into_iter()
            .map(|(name, partitions)| {
                ReassignableTopicResponse::default().with_name(TopicName(str_bytes(name))).with_partitions(partitions)
            })
            .collect();
        ctx.respond(&response)
    })))
}

/// ListPartitionReassignments: the partitions (all, or the named ones) with a reassignment in
/// progress, from this broker's metadata image.
pub(super) fn list_partition_reassignments(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    use spate_client::protocol::messages::list_partition_reassignments_response::{
        OngoingPartitionReassignment, OngoingTopicReassignment,
    };
    use spate_client::protocol::messages::{ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse};
    let request: ListPartitionReassignmentsRequest = decode("ListPartitionReassignments request", ctx, body)?;
    let image = broker.image();
    let ids = |v: &[i32]| v.iter().map(|&b| BrokerId(b)).collect::<Vec<_>>();
    let ongoing = |name: &str, index: i32| {
        image.partition(name, index).filter(|p| p.is_reassigning()).map(|p| {
            OngoingPartitionReassignment::default()
                .with_partition_index(index)
                .with_replicas(ids(&p.replicas))
                .with_adding_replicas(ids(&p.adding_replicas))
                .with_removing_replicas(ids(&p.removing_replicas))
        })
    };
    let mut topics = Vec::new();
    match &request.topics {
        None => {
            for (name, t) in &image.topics {
                let partitions: Vec<_> = (0..i32::try_from(t.partitions.len()).unwrap_or(i32::MAX))
                    .filter_map(|i| ongoing(name, i))
                    .collect();
                if !partitions.is_empty() {
                    topics.push(
                        OngoingTopicReassignment::default()
                            .with_name(TopicName(str_bytes(name.clone())))
                            .with_partitions(partitions),
                    );
                }
            }
        }
        Some(named) => {
            for t in named {
                let partitions: Vec<_> =
                    t.partition_indexes.iter().filter_map(|&i| ongoing(t.name.as_str(), i)).collect();
                if !partitions.is_empty() {
                    topics.push(
                        OngoingTopicReassignment::default().with_name(t.name.clone()).with_partitions(partitions),
                    );
                }
            }
        }
    }
    Ok(Reply::Now(ctx.respond(&ListPartitionReassignmentsResponse::default().with_topics(topics))))
}

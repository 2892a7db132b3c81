//! The group coordinator APIs: FindCoordinator (10), JoinGroup (11), Heartbeat (12),
//! LeaveGroup (13), SyncGroup (14), DescribeGroups (15), ListGroups (16), OffsetCommit (8),
//! OffsetFetch (9), TxnOffsetCommit (28), DeleteGroups (42), OffsetDelete (47). Requests are
//! decoded here and handed to [`crate::group::GroupCoordinator`]; JoinGroup and SyncGroup
//! answers that wait for the rebalance are [`Reply::Later`].

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use spate_client::protocol::messages::delete_groups_response::DeletableGroupResult;
use spate_client::protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use spate_client::protocol::messages::find_coordinator_response::Coordinator;
use spate_client::protocol::messages::join_group_response::JoinGroupResponseMember;
use spate_client::protocol::messages::leave_group_response::MemberResponse;
use spate_client::protocol::messages::list_groups_response::ListedGroup;
use spate_client::protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use spate_client::protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use spate_client::protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use spate_client::protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use spate_client::protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName, TxnOffsetCommitRequest,
    TxnOffsetCommitResponse,
};
use spate_client::protocol::{str_bytes, Codec, ErrorCode, StrBytes};
use spate_client::ProtocolError;
use uuid::Uuid;

use super::{decode, Reply, RequestContext};
use crate::broker::{now_ms, Broker};
use crate::group::coordinator::{wait_all_durable, CommitPartition, DurableWait, PendingCommit, Wait};
use crate::group::state::{FetchedOffset, JoinRequest, JoinResult, LeavingMember, SyncResult};
use crate::group::store::OffsetValue;
use crate::group::OFFSETS_TOPIC;
use crate::txn::TRANSACTION_STATE_TOPIC;

/// Kafka's "authorized operations were not requested" marker.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;
/// FindCoordinator key types.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

fn owned_ctx(ctx: &RequestContext) -> RequestContext {
    RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id }
}

/// Answers now when there is nothing to wait for, or once `durable` resolves; a failure
/// (timeout, leadership lost) is handed to `on_failure`.
fn after_durable<M: Codec + Send + 'static>(
    ctx: &RequestContext,
    durable: Option<impl Future<Output = Result<(), ErrorCode>> + Send + 'static>,
    response: M,
    on_failure: impl FnOnce(&mut M, ErrorCode) + Send + 'static,
) -> Reply {
    let Some(durable) = durable else {
        return Reply::Now(ctx.respond(&response));
    };
    let ctx = owned_ctx(ctx);
    Reply::Later(Box::pin(async move {
        let mut response = response;
        if let Err(code) = durable.await {
            on_failure(&mut response, code);
        }
        ctx.respond(&response)
    }))
}

/// Every append of `waits` durable (see [`wait_all_durable`]); `None` when there are none.
fn all_durable(waits: Vec<DurableWait>) -> Option<impl Future<Output = Result<(), ErrorCode>> + Send + 'static> {
    (!waits.is_empty()).then(|| wait_all_durable(waits))
}

// ---------------------------------------------------------------------------------------------
// FindCoordinator

pub(super) fn find_coordinator(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: FindCoordinatorRequest = decode("FindCoordinator request", ctx, body)?;
    let keys: Vec<StrBytes> = if ctx.version >= 4 { request.coordinator_keys } else { vec![request.key] };
    let key_type = request.key_type;
    let broker = broker.clone();
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    Ok(Reply::Later(Box::pin(async move {
        let created = match key_type {
            KEY_TYPE_GROUP => broker.groups.ensure_offsets_topic(&broker).await.map_err(|e| e.to_string()),
            KEY_TYPE_TRANSACTION => broker.txns.ensure_topic(&broker).await.map_err(|e| e.to_string()),
            _ => Ok(()),
        };
        let image = broker.image();
        let lookup = |key: &StrBytes| -> Coordinator {
            let found = match key_type {
                KEY_TYPE_GROUP => match &created {
                    Ok(()) => {
                        let partition = broker.groups.partition_of(&broker, key);
                        let leader = image.partition(OFFSETS_TOPIC, partition).map(|p| p.leader).unwrap_or(-1);
                        match image.brokers.get(&leader).filter(|b| !b.fenced) {
                            Some(b) => Ok((leader, b.host.clone(), b.port)),
                            None => Err((
                                ErrorCode::COORDINATOR_NOT_AVAILABLE,
                                format!("{OFFSETS_TOPIC}-{partition} has no leader"),
                            )),
                        }
                    }
                    Err(message) => Err((ErrorCode::COORDINATOR_NOT_AVAILABLE, message.clone())),
                },
                KEY_TYPE_TRANSACTION => match &created {
                    Ok(()) => {
                        let partition = broker.txns.partition_of(&broker, key);
                        let leader =
                            image.partition(TRANSACTION_STATE_TOPIC, partition).map(|p| p.leader).unwrap_or(-1);
                        match image.brokers.get(&leader).filter(|b| !b.fenced) {
                            Some(b) => Ok((leader, b.host.clone(), b.port)),
                            None => Err((
                                ErrorCode::COORDINATOR_NOT_AVAILABLE,
                                format!("{TRANSACTION_STATE_TOPIC}-{partition} has no leader"),
                            )),
                        }
                    }
                    Err(message) => Err((ErrorCode::COORDINATOR_NOT_AVAILABLE, message.clone())),
                },
                other => Err((ErrorCode::INVALID_REQUEST, format!("unknown coordinator key type {other}"))),
            };
            match found {
                Ok((node_id, host, port)) => Coordinator::default()
                    .with_key(key.clone())
                    .with_node_id(BrokerId(node_id))
                    .with_host(str_bytes(host))
                    .with_port(port)
                    .with_error_message(None),
                Err((code, message)) => Coordinator::default()
                    .with_key(key.clone())
                    .with_node_id(BrokerId(-1))
                    .with_host(str_bytes(""))
                    .with_port(-1)
                    .with_error_code(code.0)
                    .with_error_message(Some(str_bytes(message))),
            }
        };
        let response = if ctx.version >= 4 {
            FindCoordinatorResponse::default()
                .with_error_message(None)
                .with_coordinators(keys.iter().map(lookup).collect())
        } else {
            let c = lookup(&keys[0]);
            FindCoordinatorResponse::default()
                .with_error_code(c.error_code)
                .with_error_message(if ctx.version >= 1 { c.error_message } else { None })
                .with_node_id(c.node_id)
                .with_host(c.host)
                .with_port(c.port)
        };
        ctx.respond(&response)
    })))
}

// ---------------------------------------------------------------------------------------------
// JoinGroup / SyncGroup / Heartbeat / LeaveGroup

fn join_response(version: i16, r: JoinResult) -> JoinGroupResponse {
    let members = r
        .members
        .into_iter()
        .map(|m| {
            JoinGroupResponseMember::default()
                .with_member_id(str_bytes(m.member_id))
                .with_group_instance_id(if version >= 5 { m.group_instance_id.map(str_bytes) } else { None })
                .with_metadata(m.metadata)
        })
        .collect();
    // Before v7 protocol name is not nullable: Kafka sends "" for "none yet".
    let protocol_name = match r.protocol_name {
        Some(p) => Some(str_bytes(p)),
        None if version < 7 => Some(str_bytes("")),
        None => None,
    };
    JoinGroupResponse::default()
        .with_error_code(r.error.0)
        .with_generation_id(r.generation_id)
        .with_protocol_type(if version >= 7 { r.protocol_type.map(str_bytes) } else { None })
        .with_protocol_name(protocol_name)
        .with_leader(str_bytes(r.leader))
        .with_member_id(str_bytes(r.member_id))
        .with_members(members)
}

pub(super) fn join_group(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
    client_id: &str,
    client_host: String,
) -> Result<Reply, ProtocolError> {
    let request: JoinGroupRequest = decode("JoinGroup request", ctx, body)?;
    let client_id = client_id.to_string();
    let instance = request.group_instance_id.as_ref().map(|s| s.to_string());
    let new_member_id = format!("{}-{}", instance.as_deref().unwrap_or(&client_id), Uuid::new_v4());
    let req = JoinRequest {
        group_id: request.group_id.to_string(),
        member_id: request.member_id.to_string(),
        group_instance_id: instance,
        client_host,
        client_id,
        session_timeout_ms: request.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if ctx.version >= 1 { request.rebalance_timeout_ms } else { request.session_timeout_ms },
        protocol_type: request.protocol_type.to_string(),
        protocols: request.protocols.into_iter().map(|p| (p.name.to_string(), p.metadata)).collect(),
        require_known_member_id: ctx.version >= 4,
        new_member_id,
    };
    let version = ctx.version;
    match broker.groups.join(broker, req, now_ms()) {
        Wait::Now(r) => Ok(Reply::Now(ctx.respond(&join_response(version, r)))),
        Wait::Later(rx) => {
            let ctx = owned_ctx(ctx);
            Ok(Reply::Later(Box::pin(async move {
                let r = rx.await.unwrap_or_else(|_| JoinResult::error("", ErrorCode::COORDINATOR_NOT_AVAILABLE));
                ctx.respond(&join_response(version, r))
            })))
        }
    }
}

fn sync_response(version: i16, r: SyncResult) -> SyncGroupResponse {
    let v5 = version >= 5;
    SyncGroupResponse::default()
        .with_error_code(r.error.0)
        .with_protocol_type(if v5 { r.protocol_type.map(str_bytes) } else { None })
        .with_protocol_name(if v5 { r.protocol_name.map(str_bytes) } else { None })
        .with_assignment(r.assignment)
}

pub(super) fn sync_group(broker: &Arc<Broker>, ctx: &RequestContext, body: &mut Bytes) -> Result<Reply, ProtocolError> {
    let request: SyncGroupRequest = decode("SyncGroup request", ctx, body)?;
    let assignments = request.assignments.into_iter().map(|a| (a.member_id.to_string(), a.assignment)).collect();
    let version = ctx.version;
    let wait = broker.groups.sync(
        broker,
        &request.group_id,
        request.generation_id,
        &request.member_id,
        request.group_instance_id.as_deref(),
        request.protocol_type.as_deref(),
        request.protocol_name.as_deref(),
        assignments,
        now_ms(),
    );
    match wait {
        Wait::Now(r) => Ok(Reply::Now(ctx.respond(&sync_response(version, r)))),
        Wait::Later(rx) => {
            let ctx = owned_ctx(ctx);
            Ok(Reply::Later(Box::pin(async move {
                let r = rx.await.unwrap_or_else(|_| SyncResult::error(ErrorCode::COORDINATOR_NOT_AVAILABLE));
                ctx.respond(&sync_response(version, r))
            })))
        }
    }
}

pub(super) fn heartbeat(broker: &Arc<Broker>, ctx: &RequestContext, body: &mut Bytes) -> Result<Reply, ProtocolError> {
    let request: HeartbeatRequest = decode("Heartbeat request", ctx, body)?;
    let code = broker.groups.heartbeat(
        broker,
        &request.group_id,
        request.generation_id,
        &request.member_id,
        request.group_instance_id.as_deref(),
        now_ms(),
    );
    Ok(Reply::Now(ctx.respond(&HeartbeatResponse::default().with_error_code(code.0))))
}

pub(super) fn leave_group(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: LeaveGroupRequest = decode("LeaveGroup request", ctx, body)?;
    let leaving: Vec<LeavingMember> = if ctx.version >= 3 {
        request
            .members
            .iter()
            .map(|m| LeavingMember {
                member_id: m.member_id.to_string(),
                group_instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
            })
            .collect()
    } else {
        vec![LeavingMember { member_id: request.member_id.to_string(), group_instance_id: None }]
    };
    let response = match broker.groups.leave(broker, &request.group_id, &leaving, now_ms()) {
        Err(code) => LeaveGroupResponse::default().with_error_code(code.0),
        Ok(errors) if ctx.version >= 3 => LeaveGroupResponse::default().with_members(
            leaving
                .iter()
                .zip(errors)
                .map(|(l, e)| {
                    MemberResponse::default()
                        .with_member_id(str_bytes(l.member_id.clone()))
                        .with_group_instance_id(l.group_instance_id.clone().map(str_bytes))
                        .with_error_code(e.0)
                })
                .collect(),
        ),
        // v0–v2 leave one member; its error is the response's.
        Ok(errors) => LeaveGroupResponse::default().with_error_code(errors.first().map_or(0, |e| e.0)),
    };
    Ok(Reply::Now(ctx.respond(&response)))
}

// ---------------------------------------------------------------------------------------------
// OffsetCommit / OffsetFetch / OffsetDelete

pub(super) fn offset_commit(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: OffsetCommitRequest = decode("OffsetCommit request", ctx, body)?;
    let group_id = request.group_id.to_string();
    let mut partitions = Vec::new();
    for t in &request.topics {
        for p in &t.partitions {
            partitions.push(CommitPartition {
                topic: t.name.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: if ctx.version >= 6 { p.committed_leader_epoch } else { -1 },
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
            });
        }
    }
    let (errors, pending) = broker.groups.commit(
        broker,
        &group_id,
        request.generation_id_or_member_epoch,
        &request.member_id,
        request.group_instance_id.as_deref(),
        partitions,
        now_ms(),
    );
    let mut errors = errors.into_iter();
    let topics = request
        .topics
        .iter()
        .map(|t| {
            OffsetCommitResponseTopic::default().with_name(t.name.clone()).with_partitions(
                t.partitions
                    .iter()
                    .map(|p| {
                        OffsetCommitResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(errors.next().map_or(0, |e| e.0))
                    })
                    .collect(),
            )
        })
        .collect();
    let response = OffsetCommitResponse::default().with_topics(topics);
    Ok(after_durable(ctx, pending.map(PendingCommit::outcome), response, |r, code| {
        for p in r.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()).filter(|p| p.error_code == 0) {
            p.error_code = code.0;
        }
    }))
}

pub(super) fn txn_offset_commit(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: TxnOffsetCommitRequest = decode("TxnOffsetCommit request", ctx, body)?;
    let mut partitions = Vec::new();
    for t in &request.topics {
        for p in &t.partitions {
            partitions.push(CommitPartition {
                topic: t.name.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: if ctx.version >= 2 { p.committed_leader_epoch } else { -1 },
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
            });
        }
    }
    // Before v3 there is no member identity: generation -1 and an empty member id skip the
    // member checks (KIP-447 added them).
    let (errors, pending) = broker.groups.txn_offset_commit(
        broker,
        &request.group_id,
        request.producer_id.0,
        request.producer_epoch,
        if ctx.version >= 3 { request.generation_id } else { -1 },
        if ctx.version >= 3 { &request.member_id } else { "" },
        if ctx.version >= 3 { request.group_instance_id.as_deref() } else { None },
        partitions,
        now_ms(),
    );
    let mut errors = errors.into_iter();
    let topics = request
        .topics
        .iter()
        .map(|t| {
            TxnOffsetCommitResponseTopic::default().with_name(t.name.clone()).with_partitions(
                t.partitions
                    .iter()
                    .map(|p| {
                        TxnOffsetCommitResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(errors.next().map_or(0, |e| e.0))
                    })
                    .collect(),
            )
        })
        .collect();
    let response = TxnOffsetCommitResponse::default().with_topics(topics);
    Ok(after_durable(ctx, pending.map(PendingCommit::outcome), response, |r, code| {
        for p in r.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()).filter(|p| p.error_code == 0) {
            p.error_code = code.0;
        }
    }))
}

/// One topic's partitions and their committed offsets (`Ok(None)`: nothing committed) or
/// errors.
type TopicOffsets = (String, Vec<(i32, Result<Option<OffsetValue>, ErrorCode>)>);

/// Committed offsets grouped by topic, in first-seen order.
fn by_topic(offsets: Vec<FetchedOffset>) -> Vec<TopicOffsets> {
    let mut out: Vec<TopicOffsets> = Vec::new();
    for (topic, partition, value) in offsets {
        match out.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, ps)) => ps.push((partition, value)),
            None => out.push((topic, vec![(partition, value)])),
        }
    }
    out
}

/// A partition's offset, leader epoch, metadata and error code; an error (UNSTABLE_OFFSET_COMMIT)
/// answers offset -1 with empty metadata, as Kafka does.
fn offset_fields(value: Result<Option<OffsetValue>, ErrorCode>, version: i16) -> (i64, i32, Option<StrBytes>, i16) {
    match value {
        Ok(Some(v)) => (v.offset, if version >= 5 { v.leader_epoch } else { -1 }, Some(str_bytes(v.metadata)), 0),
        Ok(None) => (-1, -1, Some(str_bytes("")), 0),
        Err(code) => (-1, -1, Some(str_bytes("")), code.0),
    }
}

type Wanted = Option<Vec<(String, i32)>>;

pub(super) fn offset_fetch(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: OffsetFetchRequest = decode("OffsetFetch request", ctx, body)?;
    let v = ctx.version;
    // v7+: a read_committed consumer asks not to be given offsets a transaction may still change.
    let require_stable = v >= 7 && request.require_stable;
    let broker = broker.clone();
    let ctx = owned_ctx(ctx);
    // Later: a group's commits still in flight are waited for (see `GroupCoordinator::fetch_offsets`).
    if v >= 8 {
        let groups: Vec<(GroupId, Wanted)> = request
            .groups
            .into_iter()
            .map(|g| {
                let wanted: Wanted = g.topics.as_ref().map(|ts| {
                    ts.iter().flat_map(|t| t.partition_indexes.iter().map(move |p| (t.name.to_string(), *p))).collect()
                });
                (g.group_id, wanted)
            })
            .collect();
        return Ok(Reply::Later(Box::pin(async move {
            let mut out = Vec::with_capacity(groups.len());
            for (group_id, wanted) in groups {
                let fetched = broker.groups.fetch_offsets(&broker, &group_id, wanted.as_deref(), require_stable).await;
                let offsets = match fetched {
                    Ok(offsets) => offsets,
                    Err(code) => {
                        out.push(OffsetFetchResponseGroup::default().with_group_id(group_id).with_error_code(code.0));
                        continue;
                    }
                };
                let topics = by_topic(offsets)
                    .into_iter()
                    .map(|(topic, ps)| {
                        OffsetFetchResponseTopics::default().with_name(TopicName(str_bytes(topic))).with_partitions(
                            ps.into_iter()
                                .map(|(p, value)| {
                                    let (offset, epoch, metadata, error) = offset_fields(value, v);
                                    OffsetFetchResponsePartitions::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(offset)
                                        .with_committed_leader_epoch(epoch)
                                        .with_metadata(metadata)
                                        .with_error_code(error)
                                })
                                .collect(),
                        )
                    })
                    .collect();
                out.push(OffsetFetchResponseGroup::default().with_group_id(group_id).with_topics(topics));
            }
            ctx.respond(&OffsetFetchResponse::default().with_groups(out))
        })));
    }
    let wanted: Wanted = request
        .topics
        .as_ref()
        .map(|ts| ts.iter().flat_map(|t| t.partition_indexes.iter().map(move |p| (t.name.to_string(), *p))).collect());
    let group_id = request.group_id;
    Ok(Reply::Later(Box::pin(async move {
        let offsets = match broker.groups.fetch_offsets(&broker, &group_id, wanted.as_deref(), require_stable).await {
            Ok(offsets) => offsets,
            Err(code) => {
                // v2+ has a top-level error; v1 clients see it per partition.
                let mut response = OffsetFetchResponse::default();
                if v >= 2 {
                    response.error_code = code.0;
                } else {
                    response.topics = wanted
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(t, p)| {
                            OffsetFetchResponseTopic::default().with_name(TopicName(str_bytes(t))).with_partitions(
                                vec![OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(-1)
                                    .with_error_code(code.0)],
                            )
                        })
                        .collect();
                }
                return ctx.respond(&response);
            }
        };
        let topics = by_topic(offsets)
            .into_iter()
            .map(|(topic, ps)| {
                OffsetFetchResponseTopic::default().with_name(TopicName(str_bytes(topic))).with_partitions(
                    ps.into_iter()
                        .map(|(p, value)| {
                            let (offset, epoch, metadata, error) = offset_fields(value, v);
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(epoch)
                                .with_metadata(metadata)
                                .with_error_code(error)
                        })
                        .collect(),
                )
            })
            .collect();
        ctx.respond(&OffsetFetchResponse::default().with_topics(topics))
    })))
}

pub(super) fn offset_delete(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: OffsetDeleteRequest = decode("OffsetDelete request", ctx, body)?;
    let partitions: Vec<(String, i32)> = request
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.name.to_string(), p.partition_index)))
        .collect();
    let (result, waits) = broker.groups.delete_offsets(broker, &request.group_id, &partitions, now_ms());
    let response = match result {
        Err(code) => OffsetDeleteResponse::default().with_error_code(code.0),
        Ok(errors) => {
            let mut errors = errors.into_iter();
            OffsetDeleteResponse::default().with_topics(
                request
                    .topics
                    .iter()
                    .map(|t| {
                        OffsetDeleteResponseTopic::default().with_name(t.name.clone()).with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    OffsetDeleteResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(errors.next().map_or(0, |e| e.0))
                                })
                                .collect(),
                        )
                    })
                    .collect(),
            )
        }
    };
    Ok(after_durable(ctx, all_durable(waits), response, |r, code| r.error_code = code.0))
}

// ---------------------------------------------------------------------------------------------
// DescribeGroups / ListGroups / DeleteGroups

pub(super) fn describe_groups(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: DescribeGroupsRequest = decode("DescribeGroups request", ctx, body)?;
    let groups = request
        .groups
        .iter()
        .map(|group_id| {
            let d = match broker.groups.describe(broker, group_id) {
                Ok(d) => d,
                Err(code) => {
                    return DescribedGroup::default()
                        .with_group_id(group_id.clone())
                        .with_error_code(code.0)
                        .with_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
                }
            };
            let members = d
                .members
                .into_iter()
                .map(|m| {
                    DescribedGroupMember::default()
                        .with_member_id(str_bytes(m.member_id))
                        .with_group_instance_id(if ctx.version >= 4 {
                            m.group_instance_id.map(str_bytes)
                        } else {
                            None
                        })
                        .with_client_id(str_bytes(m.client_id))
                        .with_client_host(str_bytes(m.client_host))
                        .with_member_metadata(m.metadata)
                        .with_member_assignment(m.assignment)
                })
                .collect();
            DescribedGroup::default()
                .with_group_id(group_id.clone())
                .with_group_state(str_bytes(d.state))
                .with_protocol_type(str_bytes(d.protocol_type))
                .with_protocol_data(str_bytes(d.protocol_name))
                .with_members(members)
                .with_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
        })
        .collect();
    Ok(Reply::Now(ctx.respond(&DescribeGroupsResponse::default().with_groups(groups))))
}

pub(super) fn list_groups(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: ListGroupsRequest = decode("ListGroups request", ctx, body)?;
    let states: Vec<String> = request.states_filter.iter().map(|s| s.to_string()).collect();
    let groups = broker
        .groups
        .list(&states)
        .into_iter()
        .map(|(group_id, protocol_type, state)| {
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(group_id)))
                .with_protocol_type(str_bytes(protocol_type))
                .with_group_state(str_bytes(if ctx.version >= 4 { state } else { "" }))
        })
        .collect();
    // Kafka lists what it has and says it is still loading, so clients ask again.
    let error_code = if broker.groups.is_loading() { ErrorCode::COORDINATOR_LOAD_IN_PROGRESS.0 } else { 0 };
    Ok(Reply::Now(ctx.respond(&ListGroupsResponse::default().with_error_code(error_code).with_groups(groups))))
}

pub(super) fn delete_groups(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: DeleteGroupsRequest = decode("DeleteGroups request", ctx, body)?;
    let ids: Vec<String> = request.groups_names.iter().map(|g| g.to_string()).collect();
    let (errors, waits) = broker.groups.delete_groups(broker, &ids, now_ms());
    let results = request
        .groups_names
        .iter()
        .zip(errors)
        .map(|(g, e)| DeletableGroupResult::default().with_group_id(g.clone()).with_error_code(e.0))
        .collect();
    let response = DeleteGroupsResponse::default().with_results(results);
    Ok(after_durable(ctx, all_durable(waits), response, |r, code| {
        for g in r.results.iter_mut().filter(|g| g.error_code == 0) {
            g.error_code = code.0;
        }
    }))
}

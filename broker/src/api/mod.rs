//! Request handlers, one module per API key, and the table of versions this broker speaks.
//!
//! `handle` turns one request frame into a [`Reply`]. Work that must happen in request order
//! (appends) is done before the connection handles its next request: blocking file work as a
//! [`Reply::Blocking`] closure the connection runs on tokio's blocking pool and awaits; waiting
//! (fsync for `acks=all`, long-poll fetches) is a future the connection awaits in order, so one
//! connection can have many requests in flight.

mod admin;
mod api_versions;
mod cluster;
mod configs;
mod fetch;
mod fetch_response;
mod group;
mod list_offsets;
mod metadata;
mod offset_for_leader_epoch;
mod produce;
pub(crate) mod quorum;
mod txn;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use spate_client::protocol::{self, ApiKey, Codec, ErrorCode};
use tracing::debug;

use crate::broker::Broker;

/// Versions advertised in ApiVersions. Nothing is listed that is not implemented.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    // kafka-protocol 0.18 has no v0/v1 layouts; followers and clients use v2+.
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    // v4 is the brokers' batched form with KIP-890's verify_only (Kafka's clients send v0–3).
    (ApiKey::AddPartitionsToTxn, 0, 4),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    // kafka-protocol 0.18 has no v0 layout; brokers speak v1.
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeLogDirs, 1, 4),
    // One log dir per broker: answered, but nothing ever moves (see cluster::alter_replica_log_dirs).
    (ApiKey::AlterReplicaLogDirs, 1, 2),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::UnregisterBroker, 0, 0),
    (ApiKey::DescribeQuorum, 0, 2),
    (ApiKey::AddRaftVoter, 0, 0),
    (ApiKey::RemoveRaftVoter, 0, 0),
    // Refused cleanly (SECURITY_DISABLED / no credentials) until authentication exists.
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
];

pub fn supported_range(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS.iter().find(|(k, _, _)| *k == key).map(|&(_, min, max)| (min, max))
}

/// A piece of a [`Reply::Gathered`] frame.
pub enum Part {
    Bytes(Bytes),
    /// Record batches still in their segment file, sent from there.
    File(crate::log::ReadSlice),
}

impl Part {
    pub fn len(&self) -> usize {
        match self {
            Part::Bytes(b) => b.len(),
            Part::File(f) => f.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the connection does with a request.
pub enum Reply {
    /// A complete response frame.
    Now(Bytes),
    /// A response that is ready later (fsync, long poll); still written in request order.
    Later(Pin<Box<dyn Future<Output = Bytes> + Send>>),
    /// Like `Later`, but the frame comes as parts to be written in order (a fetch: its fields
    /// between the record batches, which go out from the segment file with `sendfile` instead
    /// of being copied into one frame). Empty: encoding failed, close.
    Gathered(Pin<Box<dyn Future<Output = Vec<Part>> + Send>>),
    /// No response (produce with `acks=0`).
    Nothing,
    /// Blocking work (file appends) that must run before the connection's next request, in
    /// request order, but not on an async worker: the connection runs it on tokio's blocking
    /// pool, awaits it, and treats the `Reply` it returns like any other.
    Blocking(Box<dyn FnOnce() -> Reply + Send>),
    /// Async work that must finish before the connection's next request is read (a
    /// transactional produce asking its coordinator, KIP-890, before its appends): the
    /// connection awaits it and treats the `Reply` it returns like any other, so requests stay
    /// in order (an idempotent producer pipelines up to five).
    Ordered(Pin<Box<dyn Future<Output = Reply> + Send>>),
    /// A protocol violation: log it and close the connection, as Kafka does.
    Close(String),
}

/// Everything a handler needs about the request it serves.
pub(crate) struct RequestContext {
    pub api_key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
}

impl RequestContext {
    pub fn respond<M: Codec>(&self, response: &M) -> Bytes {
        encode(self.api_key, self.version, self.correlation_id, response)
    }
}

fn encode<M: Codec>(api_key: ApiKey, version: i16, correlation_id: i32, response: &M) -> Bytes {
    let mut out = BytesMut::with_capacity(256);
    match protocol::encode_response(api_key, version, correlation_id, response, &mut out) {
        Ok(()) => out.freeze(),
        Err(err) => {
            // Our own response failed to encode (a field out of range for the version): a bug,
            // but one that must not take the broker down. The client sees a closed connection.
            tracing::error!(?api_key, version, error = %err, "encoding a response failed");
            Bytes::new()
        }
    }
}

/// The answer to an API Spate does not offer, where its response has a top-level error code:
/// UNSUPPORTED_VERSION (ILLEGAL_SASL_STATE for SASL on this PLAINTEXT listener, as Kafka answers),
/// so a client that calls it without reading ApiVersions learns why instead of seeing a closed
/// connection. `None` (close, as Kafka does) for APIs without such a field and for versions the
/// response cannot be written in.
fn unoffered_api_answer(api_key: ApiKey, version: i16, correlation_id: i32) -> Option<Bytes> {
    use protocol::messages::*;
    fn answer<M: Codec + Default>(
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
        code: ErrorCode,
        set: fn(&mut M, i16),
    ) -> Option<Bytes> {
        let mut response = M::default();
        set(&mut response, code.0);
        let mut out = BytesMut::with_capacity(64);
        protocol::encode_response(api_key, version, correlation_id, &response, &mut out).ok()?;
        Some(out.freeze())
    }
    macro_rules! answers {
        ($($key:ident => $ty:ty, $code:expr;)*) => {
            match api_key {
                $(ApiKey::$key => answer::<$ty>(api_key, version, correlation_id, $code, |r, c| r.error_code = c),)*
                _ => None,
            }
        };
    }
    answers! {
        SaslHandshake => SaslHandshakeResponse, ErrorCode::ILLEGAL_SASL_STATE;
        SaslAuthenticate => SaslAuthenticateResponse, ErrorCode::ILLEGAL_SASL_STATE;
        DescribeClientQuotas => DescribeClientQuotasResponse, ErrorCode::UNSUPPORTED_VERSION;
        UpdateFeatures => UpdateFeaturesResponse, ErrorCode::UNSUPPORTED_VERSION;
        ConsumerGroupHeartbeat => ConsumerGroupHeartbeatResponse, ErrorCode::UNSUPPORTED_VERSION;
        GetTelemetrySubscriptions => GetTelemetrySubscriptionsResponse, ErrorCode::UNSUPPORTED_VERSION;
        PushTelemetry => PushTelemetryResponse, ErrorCode::UNSUPPORTED_VERSION;
        CreateDelegationToken => CreateDelegationTokenResponse, ErrorCode::UNSUPPORTED_VERSION;
        RenewDelegationToken => RenewDelegationTokenResponse, ErrorCode::UNSUPPORTED_VERSION;
        ExpireDelegationToken => ExpireDelegationTokenResponse, ErrorCode::UNSUPPORTED_VERSION;
        DescribeDelegationToken => DescribeDelegationTokenResponse, ErrorCode::UNSUPPORTED_VERSION;
    }
}

/// This broker's replica of a partition when it is the leader; otherwise the code a client
/// acts on: NOT_LEADER_OR_FOLLOWER (refresh metadata, go to the leader) when the partition
/// exists, UNKNOWN_TOPIC_OR_PARTITION when it does not.
pub(crate) fn leader_partition(
    broker: &Broker,
    topic: &str,
    partition: i32,
) -> Result<Arc<crate::partition::Partition>, ErrorCode> {
    match broker.partition(topic, partition) {
        Some(p) if p.is_log_dir_offline() => Err(ErrorCode::KAFKA_STORAGE_ERROR),
        Some(p) if p.is_leader() => Ok(p),
        _ if broker.image().partition(topic, partition).is_some() => Err(ErrorCode::NOT_LEADER_OR_FOLLOWER),
        _ => Err(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION),
    }
}

/// Decodes and serves one request frame from `peer` (reported as a group member's
/// `client_host`).
pub fn handle(broker: &Arc<Broker>, mut frame: Bytes, peer: Option<SocketAddr>) -> Reply {
    let pre = match protocol::peek_request_preamble(&frame) {
        Ok(pre) => pre,
        Err(err) => return Reply::Close(err.to_string()),
    };
    let Ok(api_key) = ApiKey::try_from(pre.api_key) else {
        return Reply::Close(format!("unknown api key {}", pre.api_key));
    };
    let Some((min, max)) = supported_range(api_key) else {
        if let Some(answer) = unoffered_api_answer(api_key, pre.api_version, pre.correlation_id) {
            return Reply::Now(answer);
        }
        return Reply::Close(format!("api {api_key:?} is not supported"));
    };
    if pre.api_version < min || pre.api_version > max {
        if api_key == ApiKey::ApiVersions {
            // KIP-511: answer a too-new ApiVersions with v0 and our ranges so the client can
            // retry with a version we speak.
            return Reply::Now(api_versions::unsupported_version(pre.correlation_id));
        }
        return Reply::Close(format!("{api_key:?} v{} is outside the supported {min}..={max}", pre.api_version));
    }
    let header = match protocol::decode_request_header(&mut frame) {
        Ok((_, header)) => header,
        Err(err) => return Reply::Close(err.to_string()),
    };
    let ctx = RequestContext { api_key, version: pre.api_version, correlation_id: header.correlation_id };
    debug!(?api_key, version = ctx.version, correlation_id = ctx.correlation_id, "request");
    let result = match api_key {
        ApiKey::ApiVersions => api_versions::handle(&ctx, &mut frame),
        ApiKey::Metadata => metadata::handle(broker, &ctx, &mut frame),
        ApiKey::Produce => produce::handle(broker, &ctx, &mut frame),
        ApiKey::Fetch => fetch::handle(broker, &ctx, &mut frame),
        ApiKey::ListOffsets => list_offsets::handle(broker, &ctx, &mut frame),
        ApiKey::CreateTopics => admin::create_topics(broker, &ctx, &mut frame),
        ApiKey::DeleteTopics => admin::delete_topics(broker, &ctx, &mut frame),
        ApiKey::CreatePartitions => admin::create_partitions(broker, &ctx, &mut frame),
        ApiKey::InitProducerId => admin::init_producer_id(broker, &ctx, &mut frame),
        ApiKey::DescribeConfigs => configs::describe(broker, &ctx, &mut frame),
        ApiKey::IncrementalAlterConfigs => configs::incremental_alter(broker, &ctx, &mut frame),
        ApiKey::FindCoordinator => group::find_coordinator(broker, &ctx, &mut frame),
        ApiKey::JoinGroup => {
            let client_id = header.client_id.as_deref().unwrap_or("");
            // Kafka reports the host as Java's InetAddress.toString: "/1.2.3.4".
            let client_host = peer.map(|p| format!("/{}", p.ip())).unwrap_or_default();
            group::join_group(broker, &ctx, &mut frame, client_id, client_host)
        }
        ApiKey::SyncGroup => group::sync_group(broker, &ctx, &mut frame),
        ApiKey::Heartbeat => group::heartbeat(broker, &ctx, &mut frame),
        ApiKey::LeaveGroup => group::leave_group(broker, &ctx, &mut frame),
        ApiKey::OffsetCommit => group::offset_commit(broker, &ctx, &mut frame),
        ApiKey::OffsetFetch => group::offset_fetch(broker, &ctx, &mut frame),
        ApiKey::TxnOffsetCommit => group::txn_offset_commit(broker, &ctx, &mut frame),
        ApiKey::OffsetDelete => group::offset_delete(broker, &ctx, &mut frame),
        ApiKey::OffsetForLeaderEpoch => offset_for_leader_epoch::handle(broker, &ctx, &mut frame),
        ApiKey::DescribeGroups => group::describe_groups(broker, &ctx, &mut frame),
        ApiKey::ListGroups => group::list_groups(broker, &ctx, &mut frame),
        ApiKey::DeleteGroups => group::delete_groups(broker, &ctx, &mut frame),
        ApiKey::AddPartitionsToTxn => txn::add_partitions_to_txn(broker, &ctx, &mut frame),
        ApiKey::AddOffsetsToTxn => txn::add_offsets_to_txn(broker, &ctx, &mut frame),
        ApiKey::EndTxn => txn::end_txn(broker, &ctx, &mut frame),
        ApiKey::WriteTxnMarkers => txn::write_txn_markers(broker, &ctx, &mut frame),
        ApiKey::ListTransactions => txn::list_transactions(broker, &ctx, &mut frame),
        ApiKey::DescribeTransactions => txn::describe_transactions(broker, &ctx, &mut frame),
        ApiKey::DescribeProducers => txn::describe_producers(broker, &ctx, &mut frame),
        ApiKey::DescribeCluster => cluster::describe_cluster(broker, &ctx, &mut frame),
        ApiKey::DeleteRecords => cluster::delete_records(broker, &ctx, &mut frame),
        ApiKey::DescribeLogDirs => cluster::describe_log_dirs(broker, &ctx, &mut frame),
        ApiKey::AlterReplicaLogDirs => cluster::alter_replica_log_dirs(broker, &ctx, &mut frame),
        ApiKey::ElectLeaders => cluster::elect_leaders(broker, &ctx, &mut frame),
        ApiKey::UnregisterBroker => cluster::unregister_broker(broker, &ctx, &mut frame),
        ApiKey::DescribeQuorum => quorum::describe_quorum(broker, &ctx, &mut frame),
        ApiKey::AddRaftVoter => quorum::add_raft_voter(broker, &ctx, &mut frame),
        ApiKey::RemoveRaftVoter => quorum::remove_raft_voter(broker, &ctx, &mut frame),
        ApiKey::AlterConfigs => cluster::alter_configs(broker, &ctx, &mut frame),
        ApiKey::AlterPartitionReassignments => cluster::alter_partition_reassignments(broker, &ctx, &mut frame),
        ApiKey::ListPartitionReassignments => cluster::list_partition_reassignments(broker, &ctx, &mut frame),
        ApiKey::DescribeAcls => cluster::describe_acls(broker, &ctx, &mut frame),
        ApiKey::DescribeUserScramCredentials => cluster::describe_user_scram_credentials(broker, &ctx, &mut frame),
        _ => return Reply::Close(format!("api {api_key:?} is not supported")),
    };
    match result {
        Ok(reply) => reply,
        Err(err) => Reply::Close(err.to_string()),
    }
}

/// Decodes a request body; a failure closes the connection.
pub(crate) fn decode<M: Codec>(
    what: &'static str,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<M, spate_client::ProtocolError> {
    protocol::decode_request_body(what, ctx.api_key, body, ctx.version)
}

pub(crate) fn error_message(code: ErrorCode, err: &dyn std::fmt::Display) -> Option<protocol::StrBytes> {
    if code.is_ok() {
        None
    } else {
        Some(protocol::str_bytes(err.to_string()))
    }
}

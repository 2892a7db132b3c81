//! The metadata quorum's admin APIs (KIP-853): DescribeQuorum (55), AddRaftVoter (80) and
//! RemoveRaftVoter (81). Kafka's `kafka-metadata-quorum.sh` sends them to a controller listener;
//! Spate has none for Kafka clients, so every broker answers them by asking the controller
//! leader (as a broker forwards other controller requests).
//!
//! Spate's quorum has no per-directory voter keys yet: `voter_directory_id` is accepted and
//! ignored, and DescribeQuorum reports the nil UUID.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spate_client::admin::METADATA_LOG_TOPIC;
use spate_client::protocol::messages::describe_quorum_response::{
    Listener, Node, PartitionData, ReplicaState, TopicData,
};
use spate_client::protocol::messages::{
    AddRaftVoterRequest, AddRaftVoterResponse, BrokerId, DescribeQuorumRequest, DescribeQuorumResponse,
    RemoveRaftVoterRequest, RemoveRaftVoterResponse,
};
use spate_client::protocol::{str_bytes, ErrorCode, StrBytes};
use spate_client::ProtocolError;

use super::{decode, Reply, RequestContext};
use crate::broker::Broker;
use crate::controller::{QuorumDescription, QuorumMember};

/// The controller listener name DescribeQuorum v2 reports for every member.
const CONTROLLER_LISTENER_NAME: &str = "CONTROLLER";
/// Bounds on a client's `timeout_ms` for AddRaftVoter (the new voter must catch up meanwhile).
const MIN_ADD_VOTER_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_ADD_VOTER_TIMEOUT: Duration = Duration::from_secs(60);

fn cluster_id_mismatch(broker: &Broker, cluster_id: Option<&str>) -> Option<String> {
    let ours = broker.cluster_id.as_str();
    cluster_id
        // Null or empty: the client does not say which cluster it means.
        .filter(|theirs| !theirs.is_empty() && *theirs != ours)
        .map(|theirs| format!("the request names cluster {theirs}, this is cluster {ours}"))
}

/// Runs a voter change unless the request names another cluster; Kafka's error code and
/// message for the response.
async fn voter_change(
    broker: &Broker,
    cluster_id: Option<&str>,
    change: impl std::future::Future<Output = crate::error::Result<()>>,
) -> (i16, Option<StrBytes>) {
    if let Some(message) = cluster_id_mismatch(broker, cluster_id) {
        return (ErrorCode::INCONSISTENT_CLUSTER_ID.0, Some(str_bytes(message)));
    }
    match change.await {
        Ok(()) => (ErrorCode::NONE.0, None),
        Err(err) => (err.code().0, Some(str_bytes(err.to_string()))),
    }
}

pub(super) fn add_raft_voter(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: AddRaftVoterRequest = decode("AddRaftVoter request", ctx, body)?;
    let broker = broker.clone();
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    Ok(Reply::Later(Box::pin(async move {
        // The voter's controller address: its first listener, when the client names one.
        let addr = request.listeners.first().map(|l| format!("{}:{}", l.host.as_str(), l.port));
        let timeout = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0))
            .clamp(MIN_ADD_VOTER_TIMEOUT, MAX_ADD_VOTER_TIMEOUT);
        let change = broker.add_raft_voter(request.voter_id, addr, timeout);
        let (code, message) = voter_change(&broker, request.cluster_id.as_deref(), change).await;
        ctx.respond(&AddRaftVoterResponse::default().with_error_code(code).with_error_message(message))
    })))
}

pub(super) fn remove_raft_voter(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: RemoveRaftVoterRequest = decode("RemoveRaftVoter request", ctx, body)?;
    let broker = broker.clone();
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    Ok(Reply::Later(Box::pin(async move {
        let change = broker.remove_raft_voter(request.voter_id);
        let (code, message) = voter_change(&broker, request.cluster_id.as_deref(), change).await;
        ctx.respond(&RemoveRaftVoterResponse::default().with_error_code(code).with_error_message(message))
    })))
}

/// DescribeQuorum: one partition, `__cluster_metadata`-0; anything else is
/// UNKNOWN_TOPIC_OR_PARTITION.
pub(super) fn describe_quorum(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: DescribeQuorumRequest = decode("DescribeQuorum request", ctx, body)?;
    let broker = broker.clone();
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    Ok(Reply::Later(Box::pin(async move {
        let described = broker.describe_quorum().await;
        ctx.respond(&describe_quorum_response(&request, described, ctx.version))
    })))
}

fn describe_quorum_response(
    request: &DescribeQuorumRequest,
    described: crate::error::Result<QuorumDescription>,
    version: i16,
) -> DescribeQuorumResponse {
    let mut response = DescribeQuorumResponse::default();
    let quorum = match described {
        Ok(quorum) => quorum,
        Err(err) => {
            response.error_code = err.code().0;
            if version >= 2 {
                response.error_message = Some(str_bytes(err.to_string()));
            }
            return response;
        }
    };
    let replica = |m: &QuorumMember| {
        let mut state = ReplicaState::default().with_replica_id(BrokerId(m.id)).with_log_end_offset(m.log_end_offset);
        if version >= 1 && m.id == quorum.leader_id {
            // Only the leader's own progress is current by definition; others are unknown (-1).
            let now = crate::broker::now_ms();
            state = state.with_last_fetch_timestamp(now).with_last_caught_up_timestamp(now);
        }
        state
    };
    for topic in &request.topics {
        let mut data = TopicData::default().with_topic_name(topic.topic_name.clone());
        for p in &topic.partitions {
            let mut partition = PartitionData::default().with_partition_index(p.partition_index);
            if topic.topic_name.0.as_str() != METADATA_LOG_TOPIC || p.partition_index != 0 {
                partition.error_code = ErrorCode::UNKNOWN_TOPIC_OR_PARTITION.0;
                partition.leader_id = BrokerId(-1);
                if version >= 2 {
                    partition.error_message = Some(str_bytes("the metadata log is __cluster_metadata-0"));
                }
            } else {
                partition = partition
                    .with_leader_id(BrokerId(quorum.leader_id))
                    .with_leader_epoch(quorum.leader_epoch)
                    .with_high_watermark(quorum.high_watermark)
                    .with_current_voters(quorum.voters.iter().map(replica).collect())
                    .with_observers(quorum.observers.iter().map(replica).collect());
            }
            data.partitions.push(partition);
        }
        response.topics.push(data);
    }
    if version >= 2 {
        response.nodes = quorum
            .voters
            .iter()
            .chain(&quorum.observers)
            .filter_map(|m| {
                let addr: std::net::SocketAddr = m.addr.parse().ok()?;
                let listener = Listener::default()
                    .with_name(str_bytes(CONTROLLER_LISTENER_NAME))
                    .with_host(str_bytes(addr.ip().to_string()))
                    .with_port(addr.port());
                Some(Node::default().with_node_id(BrokerId(m.id)).with_listeners(vec![listener]))
            })
            .collect();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_client::protocol::messages::TopicName;

    /// A DescribeQuorum request for the metadata log (what the admin client sends).
    fn metadata_log_request() -> DescribeQuorumRequest {
        use spate_client::protocol::messages::describe_quorum_request;
        let partition = describe_quorum_request::PartitionData::default().with_partition_index(0);
        let topic = describe_quorum_request::TopicData::default()
            .with_topic_name(TopicName(str_bytes(METADATA_LOG_TOPIC)))
            .with_partitions(vec![partition]);
        DescribeQuorumRequest::default().with_topics(vec![topic])
    }

    fn quorum() -> QuorumDescription {
        let member =
            |id: i32, leo: i64| QuorumMember { id, addr: format!("127.0.0.1:{}", 9090 + id), log_end_offset: leo };
        QuorumDescription {
            leader_id: 1,
            leader_epoch: 4,
            high_watermark: 40,
            voters: vec![member(1, 41), member(2, 40)],
            observers: vec![member(5, -1)],
        }
    }

    #[test]
    fn describe_quorum_answers_for_the_metadata_log_in_every_version() {
        let mut request = metadata_log_request();
        let mut other = request.topics[0].clone();
        other.topic_name = TopicName(str_bytes("orders"));
        request.topics.push(other);
        for version in 0..=2 {
            let response = describe_quorum_response(&request, Ok(quorum()), version);
            let p = &response.topics[0].partitions[0];
            assert_eq!((p.error_code, p.leader_id.0, p.leader_epoch, p.high_watermark), (0, 1, 4, 40));
            let voters: Vec<(i32, i64)> = p.current_voters.iter().map(|r| (r.replica_id.0, r.log_end_offset)).collect();
            assert_eq!(voters, vec![(1, 41), (2, 40)]);
            assert_eq!(p.observers[0].replica_id.0, 5);
            assert_eq!(response.topics[1].partitions[0].error_code, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION.0);
            assert_eq!(response.nodes.len(), if version >= 2 { 3 } else { 0 });
            // Every version encodes (fields of later versions are left at their defaults).
            let mut out = bytes::BytesMut::new();
            spate_client::protocol::encode_response(
                spate_client::protocol::ApiKey::DescribeQuorum,
                version,
                7,
                &response,
                &mut out,
            )
            .unwrap();
        }
        let refused =
            crate::error::BrokerError::Controller { code: ErrorCode::REQUEST_TIMED_OUT, message: "no leader".into() };
        let response = describe_quorum_response(&request, Err(refused), 2);
        assert_eq!(response.error_code, ErrorCode::REQUEST_TIMED_OUT.0);
        assert!(response.error_message.unwrap().contains("no leader"));
    }
}

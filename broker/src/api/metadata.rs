//! Metadata (key 3): brokers, topics, partitions, leaders; auto-creates topics when allowed.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use spate_client::protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use spate_client::protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use spate_client::protocol::{str_bytes, ErrorCode};
use spate_client::ProtocolError;
use tracing::info;
use uuid::Uuid;

use super::{decode, Reply, RequestContext};
use crate::broker::{validate_topic_name, Broker, Topic};

/// Kafka's "authorized operations were not requested" marker.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

pub(super) fn topic_response(broker: &Broker, topic: &Topic) -> MetadataResponseTopic {
    let node = BrokerId(broker.config.node_id);
    let partitions = (0..topic.partitions.len() as i32)
        .map(|p| {
            MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(node)
                .with_leader_epoch(0)
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(topic.name.clone()))))
        .with_topic_id(topic.id)
        .with_is_internal(crate::group::is_internal_topic(&topic.name))
        .with_partitions(partitions)
        .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
}

fn error_topic(name: Option<String>, id: Uuid, code: ErrorCode) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(code.0)
        .with_name(name.map(|n| TopicName(str_bytes(n))))
        .with_topic_id(id)
        .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
}

/// Looks a topic up, creating it when auto-creation is on and the client allows it.
pub(super) fn topic_or_create(broker: &Broker, name: &str, allow_auto_create: bool) -> Result<Arc<Topic>, ErrorCode> {
    if let Some(t) = broker.topic(name) {
        return Ok(t);
    }
    if validate_topic_name(name).is_err() {
        return Err(ErrorCode::INVALID_TOPIC_EXCEPTION);
    }
    if !(allow_auto_create && broker.config.auto_create_topics_enable) {
        return Err(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION);
    }
    match broker.create_topic(name, -1, -1, BTreeMap::new()) {
        Ok(t) => {
            info!(topic = name, "auto-created topic");
            Ok(t)
        }
        // Another request created it meanwhile.
        Err(_) if broker.topic(name).is_some() => broker.topic(name).ok_or(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION),
        Err(err) => Err(err.code()),
    }
}

pub(super) fn handle(broker: &Arc<Broker>, ctx: &RequestContext, body: &mut Bytes) -> Result<Reply, ProtocolError> {
    let request: MetadataRequest = decode("Metadata request", ctx, body)?;
    // v1..v3 have no allow_auto_topic_creation field; Kafka treats them as allowing it.
    let allow_auto_create = ctx.version < 4 || request.allow_auto_topic_creation;
    let topics = match request.topics {
        None => broker.all_topics().iter().map(|t| topic_response(broker, t)).collect(),
        Some(requested) => requested
            .iter()
            .map(|t| match &t.name {
                Some(name) => match topic_or_create(broker, name.as_str(), allow_auto_create) {
                    Ok(topic) => topic_response(broker, &topic),
                    Err(code) => error_topic(Some(name.to_string()), Uuid::nil(), code),
                },
                None => match broker.topic_by_id(t.topic_id) {
                    Some(topic) => topic_response(broker, &topic),
                    None => error_topic(None, t.topic_id, ErrorCode::UNKNOWN_TOPIC_ID),
                },
            })
            .collect(),
    };
    let (host, port) = broker.config.advertised();
    let response = MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(broker.config.node_id))
            .with_host(str_bytes(host))
            .with_port(port)])
        .with_cluster_id(Some(str_bytes(broker.cluster_id.clone())))
        .with_controller_id(BrokerId(broker.config.node_id))
        .with_topics(topics)
        .with_cluster_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED);
    Ok(Reply::Now(ctx.respond(&response)))
}

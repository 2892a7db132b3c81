//! Metadata (key 3): brokers, topics, partitions with their leaders, replicas and ISRs as the
//! metadata quorum last told this broker; auto-creates topics when allowed.

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
use crate::broker::{validate_topic_name, Broker};
use crate::controller::{MetadataImage, TopicImage};

/// Kafka's "authorized operations were not requested" marker.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

fn topic_response(image: &MetadataImage, topic: &TopicImage) -> MetadataResponseTopic {
    let ids = |nodes: &[i32]| nodes.iter().map(|&n| BrokerId(n)).collect::<Vec<_>>();
    let partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(index, p)| {
            // Replicas on fenced brokers are offline; a partition whose ISR is all offline has
            // no leader until one of them returns.
            let offline: Vec<i32> =
                p.replicas.iter().copied().filter(|r| image.brokers.get(r).is_none_or(|b| b.fenced)).collect();
            MetadataResponsePartition::default()
                .with_error_code(if p.has_leader() { 0 } else { ErrorCode::LEADER_NOT_AVAILABLE.0 })
                .with_partition_index(index as i32)
                .with_leader_id(BrokerId(p.leader))
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(ids(&p.replicas))
                .with_isr_nodes(ids(&p.isr))
                .with_offline_replicas(ids(&offline))
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

/// Creates `name` when auto-creation is on and the client allows it.
async fn auto_create(broker: &Arc<Broker>, name: &str) -> Result<(), ErrorCode> {
    if validate_topic_name(name).is_err() {
        return Err(ErrorCode::INVALID_TOPIC_EXCEPTION);
    }
    match broker.create_topic(name, -1, -1, BTreeMap::new()).await {
        Ok(_) => {
            info!(topic = name, "auto-created topic");
            Ok(())
        }
        // Another request created it meanwhile.
        Err(_) if broker.image().topics.contains_key(name) => Ok(()),
        Err(err) => Err(err.code()),
    }
}

pub(super) fn handle(broker: &Arc<Broker>, ctx: &RequestContext, body: &mut Bytes) -> Result<Reply, ProtocolError> {
    let request: MetadataRequest = decode("Metadata request", ctx, body)?;
    // v1..v3 have no allow_auto_topic_creation field; Kafka treats them as allowing it.
    let allow_auto_create =
        (ctx.version < 4 || request.allow_auto_topic_creation) && broker.config.auto_create_topics_enable;
    let image = broker.image();
    let missing: Vec<String> = request
        .topics
        .iter()
        .flatten()
        .filter_map(|t| t.name.as_ref())
        .filter(|n| !image.topics.contains_key(n.as_str()))
        .map(|n| n.to_string())
        .collect();
    if missing.is_empty() || !allow_auto_create {
        return Ok(Reply::Now(respond(broker, ctx, &request, &image, &BTreeMap::new())));
    }
    let broker = broker.clone();
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    Ok(Reply::Later(Box::pin(async move {
        let mut failed = BTreeMap::new();
        for name in missing {
            if let Err(code) = auto_create(&broker, &name).await {
                failed.insert(name, code);
            }
        }
        let image = broker.image();
        respond(&broker, &ctx, &request, &image, &failed)
    })))
}

fn respond(
    broker: &Broker,
    ctx: &RequestContext,
    request: &MetadataRequest,
    image: &MetadataImage,
    failed: &BTreeMap<String, ErrorCode>,
) -> Bytes {
    let topics = match &request.topics {
        None => image.topics.values().map(|t| topic_response(image, t)).collect(),
        Some(requested) => requested
            .iter()
            .map(|t| match &t.name {
                Some(name) => match image.topics.get(name.as_str()) {
                    Some(topic) => topic_response(image, topic),
                    None => {
                        let code =
                            failed.get(name.as_str()).copied().unwrap_or(if validate_topic_name(name).is_err() {
                                ErrorCode::INVALID_TOPIC_EXCEPTION
                            } else {
                                ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
                            });
                        error_topic(Some(name.to_string()), Uuid::nil(), code)
                    }
                },
                None => match image.topic_by_id(t.topic_id) {
                    Some(topic) => topic_response(image, topic),
                    None => error_topic(None, t.topic_id, ErrorCode::UNKNOWN_TOPIC_ID),
                },
            })
            .collect(),
    };
    let brokers = image
        .live_brokers()
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.id))
                .with_host(str_bytes(b.host.clone()))
                .with_port(b.port)
        })
        .collect();
    let response = MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(broker.cluster_id.clone())))
        .with_controller_id(BrokerId(admin_controller_id(broker, image)))
        .with_topics(topics)
        .with_cluster_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED);
    ctx.respond(&response)
}

/// The `controller_id` clients send admin requests to. Every broker forwards controller requests
/// to the metadata quorum's leader, so, as in Kafka's KRaft mode, it need not be the leader: the
/// leader when it is a live broker, otherwise this broker. Never -1 while this broker answers, so
/// an admin client does not wait for a controller during a quorum election (librdkafka waits for
/// its next metadata refresh).
pub(crate) fn admin_controller_id(broker: &Broker, image: &MetadataImage) -> i32 {
    broker
        .controller
        .leader_id()
        .filter(|id| image.brokers.get(id).is_some_and(|b| !b.fenced))
        .unwrap_or(broker.config.node_id)
}

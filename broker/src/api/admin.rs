//! Topic administration and producer ids: CreateTopics (19), DeleteTopics (20),
//! CreatePartitions (37) and InitProducerId (22).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use spate_client::protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use spate_client::protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use spate_client::protocol::messages::delete_topics_response::DeletableTopicResult;
use spate_client::protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, InitProducerIdRequest, InitProducerIdResponse, ProducerId, TopicName,
};
use spate_client::protocol::{str_bytes, ErrorCode};
use spate_client::ProtocolError;
use uuid::Uuid;

use super::{decode, Reply, RequestContext};
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::topic_config::{TopicConfigs, TOPIC_CONFIGS};

const CONFIG_SOURCE_TOPIC: i8 = 1;
const CONFIG_SOURCE_DEFAULT: i8 = 5;

fn effective_configs(broker: &Broker, configs: &TopicConfigs) -> Vec<CreatableTopicConfigs> {
    TOPIC_CONFIGS
        .iter()
        .filter_map(|def| {
            let (value, is_override) = configs.get(def.name, &broker.config)?;
            Some(
                CreatableTopicConfigs::default()
                    .with_name(str_bytes(def.name))
                    .with_value(Some(str_bytes(value)))
                    .with_config_source(if is_override { CONFIG_SOURCE_TOPIC } else { CONFIG_SOURCE_DEFAULT }),
            )
        })
        .collect()
}

pub(super) fn create_topics(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: CreateTopicsRequest = decode("CreateTopics request", ctx, body)?;
    let broker = broker.clone();
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    Ok(Reply::Later(Box::pin(async move {
        let broker = &broker;
        let mut seen = HashSet::new();
        let duplicates: HashSet<String> =
            request.topics.iter().map(|t| t.name.to_string()).filter(|n| !seen.insert(n.clone())).collect();
        let mut results = Vec::with_capacity(request.topics.len());
        for t in &request.topics {
            let name = t.name.to_string();
            let mut result = CreatableTopicResult::default()
                .with_name(t.name.clone())
                .with_num_partitions(-1)
                .with_replication_factor(-1);
            let outcome = if duplicates.contains(&name) {
                Err((ErrorCode::INVALID_REQUEST, format!("topic {name} appears more than once in the request")))
            } else {
                let configs: BTreeMap<String, String> = t
                    .configs
                    .iter()
                    .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
                    .collect();
                let (partitions, replication_factor) = if t.assignments.is_empty() {
                    (t.num_partitions, t.replication_factor)
                } else {
                    let node = broker.config.node_id;
                    if t.assignments.iter().any(|a| a.broker_ids.iter().any(|b| b.0 != node) || a.broker_ids.len() != 1)
                    {
                        result.error_code = ErrorCode::INVALID_REPLICA_ASSIGNMENT.0;
                        result.error_message = Some(str_bytes(
                            "manual replica assignment is not supported; give num_partitions and replication_factor",
                        ));
                        results.push(result);
                        continue;
                    }
                    (t.assignments.len() as i32, 1)
                };
                let factor = if replication_factor == -1 {
                    broker.config.default_replication_factor
                } else {
                    replication_factor
                };
                let created = if request.validate_only {
                    broker
                        .check_new_topic(&name, partitions, replication_factor, &configs)
                        .map(|p| (Uuid::nil(), p, factor, TopicConfigs { overrides: configs }))
                } else {
                    broker
                        .create_topic(&name, partitions, replication_factor, configs)
                        .await
                        .map(|topic| (topic.id, topic.partition_count(), factor, topic.configs.clone()))
                };
                created.map_err(|e: BrokerError| (e.code(), e.to_string()))
            };
            match outcome {
                Ok((id, partitions, factor, configs)) => {
                    result.topic_id = id;
                    result.num_partitions = partitions;
                    result.replication_factor = factor;
                    if ctx.version >= 5 {
                        result.configs = Some(effective_configs(broker, &configs));
                    }
                }
                Err((code, message)) => {
                    result.error_code = code.0;
                    result.error_message = Some(str_bytes(message));
                }
            }
            results.push(result);
        }
        ctx.respond(&CreateTopicsResponse::default().with_topics(results))
    })))
}

pub(super) fn delete_topics(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: DeleteTopicsRequest = decode("DeleteTopics request", ctx, body)?;
    // v6 names topics by name or id in `topics`; older versions list names in `topic_names`.
    let mut targets: Vec<(Option<String>, Uuid)> =
        request.topic_names.iter().map(|n| (Some(n.to_string()), Uuid::nil())).collect();
    targets.extend(request.topics.iter().map(|t| (t.name.as_ref().map(|n| n.to_string()), t.topic_id)));
    let broker = broker.clone();
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    Ok(Reply::Later(Box::pin(async move {
        let mut responses = Vec::with_capacity(targets.len());
        for (name, id) in targets {
            let name = name.or_else(|| broker.image().topic_by_id(id).map(|t| t.name.clone()));
            let mut r = DeletableTopicResult::default()
                .with_name(name.clone().map(|n| TopicName(str_bytes(n))))
                .with_topic_id(id);
            match name {
                None => r.error_code = ErrorCode::UNKNOWN_TOPIC_ID.0,
                Some(n) => match broker.delete_topic(&n).await {
                    Ok(deleted_id) => r.topic_id = deleted_id,
                    Err(err) => {
                        r.error_code = err.code().0;
                        r.error_message = Some(str_bytes(err.to_string()));
                    }
                },
            }
            responses.push(r);
        }
        ctx.respond(&DeleteTopicsResponse::default().with_responses(responses))
    })))
}

pub(super) fn create_partitions(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: CreatePartitionsRequest = decode("CreatePartitions request", ctx, body)?;
    let broker = broker.clone();
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    Ok(Reply::Later(Box::pin(async move {
        let mut results = Vec::with_capacity(request.topics.len());
        for t in &request.topics {
            let mut r = CreatePartitionsTopicResult::default().with_name(t.name.clone());
            let node = broker.config.node_id;
            let bad_assignment = t
                .assignments
                .as_ref()
                .is_some_and(|a| a.iter().any(|a| a.broker_ids.len() != 1 || a.broker_ids[0].0 != node));
            if bad_assignment {
                r.error_code = ErrorCode::INVALID_REPLICA_ASSIGNMENT.0;
                r.error_message =
                    Some(str_bytes("manual replica assignment is not supported; the controller places replicas"));
            } else if let Err(err) = broker.create_partitions(t.name.as_str(), t.count, request.validate_only).await {
                r.error_code = err.code().0;
                r.error_message = Some(str_bytes(err.to_string()));
            }
            results.push(r);
        }
        ctx.respond(&CreatePartitionsResponse::default().with_results(results))
    })))
}

pub(super) fn init_producer_id(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: InitProducerIdRequest = decode("InitProducerId request", ctx, body)?;
    let mut response = InitProducerIdResponse::default().with_producer_id(ProducerId(-1)).with_producer_epoch(-1);
    if let Some(id) = request.transactional_id.as_ref().map(|t| t.to_string()) {
        if id.is_empty() {
            response.error_code = ErrorCode::INVALID_REQUEST.0;
            return Ok(Reply::Now(ctx.respond(&response)));
        }
        let broker = broker.clone();
        let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
        let expected = if ctx.version >= 3 { (request.producer_id.0, request.producer_epoch) } else { (-1, -1) };
        let timeout_ms = request.transaction_timeout_ms;
        return Ok(Reply::Later(Box::pin(async move {
            match crate::txn::TransactionCoordinator::init_producer_id(&broker, &id, timeout_ms, expected).await {
                Ok((producer_id, producer_epoch)) => {
                    response.producer_id = ProducerId(producer_id);
                    response.producer_epoch = producer_epoch;
                }
                // KIP-588: before v4 a fenced producer was told INVALID_PRODUCER_EPOCH.
                Err(ErrorCode::PRODUCER_FENCED) if ctx.version < 4 => {
                    response.error_code = ErrorCode::INVALID_PRODUCER_EPOCH.0
                }
                Err(code) => response.error_code = code.0,
            }
            ctx.respond(&response)
        })));
    }
    // Without a transactional id, Kafka ignores the request's producer_id/producer_epoch (v3+) and
    // hands out a new id at epoch 0: the broker bumps epochs only for transactional producers
    // (KIP-360); an idempotent producer bumps its own epoch, which a partition accepts at
    // sequence 0 (see producer_state). librdkafka's idempotent producer sends its current id here
    // and starts over with the new one.
    let broker = broker.clone();
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    Ok(Reply::Later(Box::pin(async move {
        match broker.allocate_producer_id().await {
            Ok(id) => {
                response.producer_id = ProducerId(id);
                response.producer_epoch = 0;
            }
            // The controller is unreachable: the client retries.
            Err(err) => response.error_code = err.code().0,
        }
        ctx.respond(&response)
    })))
}

//! DescribeConfigs (32) and IncrementalAlterConfigs (44) for topics and the broker.
//!
//! Broker configs are static (flags, `SPATE_*` env, TOML file) except
//! [`DYNAMIC_BROKER_CONFIGS`] (the replication throttle), which IncrementalAlterConfigs sets
//! through the controller; the static ones are described with their source and refused for
//! alteration with a message saying so.

use std::sync::Arc;

use bytes::Bytes;
use spate_client::protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use spate_client::protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use spate_client::protocol::messages::{
    DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use spate_client::protocol::{str_bytes, ErrorCode};
use spate_client::ProtocolError;

use super::{decode, Reply, RequestContext};
use crate::broker::Broker;
use crate::config::{BrokerConfig, DYNAMIC_BROKER_CONFIGS};
use crate::topic_config::{ConfigType, TOPIC_CONFIGS};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_TOPIC_CONFIG: i8 = 1;
const SOURCE_DYNAMIC_BROKER_CONFIG: i8 = 2;
const SOURCE_STATIC_BROKER_CONFIG: i8 = 4;
const SOURCE_DEFAULT_CONFIG: i8 = 5;
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

fn wanted(keys: &Option<Vec<spate_client::protocol::StrBytes>>, name: &str) -> bool {
    keys.as_ref().is_none_or(|k| k.is_empty() || k.iter().any(|k| k.as_str() == name))
}

fn topic_entries(
    broker: &Broker,
    name: &str,
    request: &DescribeConfigsRequest,
    keys: &Option<Vec<spate_client::protocol::StrBytes>>,
) -> Result<Vec<DescribeConfigsResourceResult>, ErrorCode> {
    let topic = broker.topic(name).ok_or(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION)?;
    Ok(TOPIC_CONFIGS
        .iter()
        .filter(|def| wanted(keys, def.name))
        .map(|def| {
            let default = def.default_value(&broker.config);
            let (value, is_override) = topic.configs.get(def.name, &broker.config).unwrap_or((default.clone(), false));
            let mut entry = DescribeConfigsResourceResult::default()
                .with_name(str_bytes(def.name))
                .with_value(Some(str_bytes(value.clone())))
                .with_config_source(if is_override { SOURCE_TOPIC_CONFIG } else { SOURCE_DEFAULT_CONFIG })
                .with_config_type(def.config_type() as i8);
            if request.include_synonyms {
                let mut synonyms = Vec::new();
                if is_override {
                    synonyms.push(
                        DescribeConfigsSynonym::default()
                            .with_name(str_bytes(def.name))
                            .with_value(Some(str_bytes(value)))
                            .with_source(SOURCE_TOPIC_CONFIG),
                    );
                }
                if let Some(broker_key) = def.broker_synonym {
                    synonyms.push(
                        DescribeConfigsSynonym::default()
                            .with_name(str_bytes(broker_key))
                            .with_value(Some(str_bytes(default)))
                            .with_source(SOURCE_DEFAULT_CONFIG),
                    );
                }
                entry.synonyms = synonyms;
            }
            if request.include_documentation {
                entry.documentation = Some(str_bytes(def.doc));
            }
            entry
        })
        .collect())
}

fn broker_entries(
    broker: &Broker,
    keys: &Option<Vec<spate_client::protocol::StrBytes>>,
) -> Vec<DescribeConfigsResourceResult> {
    let to_map = |c: &BrokerConfig| match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let actual = to_map(&broker.config);
    let defaults = to_map(&BrokerConfig::default());
    let image = broker.image();
    let dynamic = image.broker_configs.get(&broker.config.node_id);
    let dynamic_entries = DYNAMIC_BROKER_CONFIGS.iter().filter(|k| wanted(keys, k)).map(|k| {
        let set = dynamic.and_then(|d| d.get(*k));
        // Unset means unthrottled, which Kafka shows as Long.MAX_VALUE.
        let value = set.cloned().unwrap_or_else(|| i64::MAX.to_string());
        DescribeConfigsResourceResult::default()
            .with_name(str_bytes(k.to_string()))
            .with_value(Some(str_bytes(value)))
            .with_read_only(false)
            .with_config_source(if set.is_some() { SOURCE_DYNAMIC_BROKER_CONFIG } else { SOURCE_DEFAULT_CONFIG })
            .with_config_type(ConfigType::Long as i8)
    });
    let static_entries: Vec<DescribeConfigsResourceResult> = actual
        .iter()
        .filter(|(k, _)| wanted(keys, k))
        .map(|(k, v)| {
            let (value, config_type) = match v {
                serde_json::Value::Null => (None, ConfigType::String),
                serde_json::Value::Bool(b) => (Some(b.to_string()), ConfigType::Boolean),
                serde_json::Value::Number(n) => (Some(n.to_string()), ConfigType::Long),
                serde_json::Value::String(s) => (Some(s.clone()), ConfigType::String),
                other => (Some(other.to_string()), ConfigType::String),
            };
            let source = if defaults.get(k) == Some(v) { SOURCE_DEFAULT_CONFIG } else { SOURCE_STATIC_BROKER_CONFIG };
            DescribeConfigsResourceResult::default()
                .with_name(str_bytes(k.clone()))
                .with_value(value.map(str_bytes))
                .with_read_only(true)
                .with_config_source(source)
                .with_config_type(config_type as i8)
        })
        .collect();
    static_entries.into_iter().chain(dynamic_entries).collect()
}

pub(super) fn describe(broker: &Arc<Broker>, ctx: &RequestContext, body: &mut Bytes) -> Result<Reply, ProtocolError> {
    let request: DescribeConfigsRequest = decode("DescribeConfigs request", ctx, body)?;
    let results = request
        .resources
        .iter()
        .map(|res| {
            let name = res.resource_name.as_str();
            let result = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let entries = match res.resource_type {
                RESOURCE_TOPIC => topic_entries(broker, name, &request, &res.configuration_keys),
                RESOURCE_BROKER if name.is_empty() || name == broker.config.node_id.to_string() => {
                    Ok(broker_entries(broker, &res.configuration_keys))
                }
                RESOURCE_BROKER => Err(ErrorCode::INVALID_REQUEST),
                _ => Err(ErrorCode::INVALID_REQUEST),
            };
            match entries {
                Ok(configs) => result.with_configs(configs),
                Err(code) => result.with_error_code(code.0).with_error_message(Some(str_bytes(format!(
                    "cannot describe resource type {} '{name}'",
                    res.resource_type
                )))),
            }
        })
        .collect();
    Ok(Reply::Now(ctx.respond(&DescribeConfigsResponse::default().with_results(results))))
}

/// Why an alter of a resource other than a topic is refused (AlterConfigs and
/// IncrementalAlterConfigs alike).
pub(super) fn refuse_non_topic(resource_type: i8) -> (ErrorCode, String) {
    if resource_type == RESOURCE_BROKER {
        (
            ErrorCode::INVALID_REQUEST,
            format!(
                "broker configs are static (set them by flag, SPATE_* env or config file and restart), \
                 except {} which IncrementalAlterConfigs sets",
                DYNAMIC_BROKER_CONFIGS.join(", ")
            ),
        )
    } else {
        (ErrorCode::INVALID_REQUEST, format!("resource type {resource_type} is not supported"))
    }
}

pub(super) fn incremental_alter(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: IncrementalAlterConfigsRequest = decode("IncrementalAlterConfigs request", ctx, body)?;
    let broker = broker.clone();
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    Ok(Reply::Later(Box::pin(async move {
        let mut responses = Vec::with_capacity(request.resources.len());
        for res in &request.resources {
            let r = AlterConfigsResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let mut changes = Vec::with_capacity(res.configs.len());
            let mut bad_op = None;
            for c in &res.configs {
                match c.config_operation {
                    OP_SET => changes
                        .push((c.name.to_string(), Some(c.value.as_ref().map(|v| v.to_string()).unwrap_or_default()))),
                    OP_DELETE => changes.push((c.name.to_string(), None)),
                    op => {
                        bad_op = Some(format!(
                            "operation {op} on {} is not supported (only SET and DELETE)",
                            c.name.as_str()
                        ))
                    }
                }
            }
            let name = res.resource_name.as_str();
            let outcome = match (res.resource_type, bad_op) {
                (_, Some(msg)) => Err((ErrorCode::INVALID_CONFIG, msg)),
                (RESOURCE_TOPIC, None) => broker
                    .alter_topic_configs(name, &changes, request.validate_only)
                    .await
                    .map_err(|e| (e.code(), e.to_string())),
                (RESOURCE_BROKER, None) => match name.parse::<i32>() {
                    Ok(id) => broker
                        .alter_broker_configs(id, &changes, request.validate_only)
                        .await
                        .map_err(|e| (e.code(), e.to_string())),
                    Err(_) => Err((
                        ErrorCode::INVALID_REQUEST,
                        format!(
                            "broker '{name}': name one broker by id (cluster-wide broker defaults are not supported)"
                        ),
                    )),
                },
                (other, None) => Err(refuse_non_topic(other)),
            };
            responses.push(match outcome {
                Ok(()) => r,
                Err((code, msg)) => r.with_error_code(code.0).with_error_message(Some(str_bytes(msg))),
            });
        }
        ctx.respond(&IncrementalAlterConfigsResponse::default().with_responses(responses))
    })))
}

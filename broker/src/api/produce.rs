//! Produce (key 0). Batches are validated by header and CRC only, appended as raw bytes, and,
//! with `acks=all` in `fsync` mode, answered once the flusher reports them durable.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spate_client::protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use spate_client::protocol::messages::{ProduceRequest, ProduceResponse};
use spate_client::protocol::record::validate_batches;
use spate_client::protocol::ErrorCode;
use spate_client::ProtocolError;
use tokio::sync::watch;
use tracing::debug;

use super::{decode, error_message, Reply, RequestContext};
use crate::broker::{now_ms, Broker};
use crate::config::FlushMode;
use crate::error::BrokerError;

const DEFAULT_ACK_TIMEOUT_MS: i32 = 30_000;

/// A partition response waiting for its batch to become durable.
struct Pending {
    topic_index: usize,
    partition_index: usize,
    durable: watch::Receiver<i64>,
    needed: i64,
}

fn partition_error(index: i32, code: ErrorCode, message: Option<String>) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(code.0)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
        .with_error_message(message.map(spate_client::protocol::str_bytes))
}

pub(super) fn handle(broker: &Arc<Broker>, ctx: &RequestContext, body: &mut Bytes) -> Result<Reply, ProtocolError> {
    let request: ProduceRequest = decode("Produce request", ctx, body)?;
    let acks = request.acks;
    let now = now_ms();
    let mut pending = Vec::new();
    let mut responses = Vec::with_capacity(request.topic_data.len());
    for (ti, topic_data) in request.topic_data.iter().enumerate() {
        let topic_name = topic_data.name.to_string();
        let mut partition_responses = Vec::with_capacity(topic_data.partition_data.len());
        for (pi, data) in topic_data.partition_data.iter().enumerate() {
            if !matches!(acks, -1..=1) {
                partition_responses.push(partition_error(data.index, ErrorCode::INVALID_REQUIRED_ACKS, None));
                continue;
            }
            if request.transactional_id.is_some() {
                partition_responses.push(partition_error(
                    data.index,
                    ErrorCode::INVALID_TXN_STATE,
                    Some("transactions are not supported yet".into()),
                ));
                continue;
            }
            if crate::group::is_internal_topic(&topic_name) {
                // Only the group coordinator writes it, in its own record format.
                partition_responses.push(partition_error(
                    data.index,
                    ErrorCode::INVALID_TOPIC_EXCEPTION,
                    Some("clients cannot produce to the internal topic __consumer_offsets".into()),
                ));
                continue;
            }
            let Some(partition) = broker.partition(&topic_name, data.index) else {
                partition_responses.push(partition_error(data.index, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION, None));
                continue;
            };
            let records = data.records.clone().unwrap_or_default();
            let result = validate_batches(&records)
                .map_err(|e| BrokerError::CorruptMessage {
                    topic: topic_name.clone(),
                    partition: data.index,
                    reason: e.to_string(),
                })
                .and_then(|headers| {
                    let max = partition.max_message_bytes();
                    if let Some(big) = headers.iter().find(|h| h.total_bytes() > max) {
                        return Err(BrokerError::MessageTooLarge {
                            topic: topic_name.clone(),
                            size: big.total_bytes(),
                            max: max as u32,
                        });
                    }
                    if headers.iter().any(|h| h.is_transactional() || h.is_control()) {
                        return Err(BrokerError::InvalidRecord {
                            topic: topic_name.clone(),
                            partition: data.index,
                            reason: "transactional batches are not supported yet".into(),
                        });
                    }
                    partition.append(&records, &headers, now)
                });
            match result {
                Ok(outcome) => {
                    if broker.config.log_flush_mode == FlushMode::Fsync {
                        broker.mark_dirty(&partition);
                        if acks == -1 {
                            pending.push(Pending {
                                topic_index: ti,
                                partition_index: pi,
                                durable: partition.subscribe_durable(),
                                needed: outcome.last_offset + 1,
                            });
                        }
                    }
                    partition_responses.push(
                        PartitionProduceResponse::default()
                            .with_index(data.index)
                            .with_base_offset(outcome.base_offset)
                            .with_log_append_time_ms(-1)
                            .with_log_start_offset(outcome.log_start_offset),
                    );
                }
                Err(err) => {
                    let code = err.code();
                    debug!(topic = %topic_name, partition = data.index, error = %err, "produce rejected");
                    let mut response = partition_error(data.index, code, None);
                    response.error_message = error_message(code, &err);
                    partition_responses.push(response);
                }
            }
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic_data.name.clone())
                .with_partition_responses(partition_responses),
        );
    }
    if acks == 0 {
        return Ok(Reply::Nothing);
    }
    let response = ProduceResponse::default().with_responses(responses);
    if pending.is_empty() {
        return Ok(Reply::Now(ctx.respond(&response)));
    }
    let timeout_ms = if request.timeout_ms > 0 { request.timeout_ms } else { DEFAULT_ACK_TIMEOUT_MS };
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    Ok(Reply::Later(Box::pin(async move {
        let mut response = response;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms as u64);
        for mut p in pending {
            let needed = p.needed;
            let waited = tokio::time::timeout_at(deadline, p.durable.wait_for(|&v| v >= needed)).await;
            if !matches!(waited, Ok(Ok(_))) {
                let r = &mut response.responses[p.topic_index].partition_responses[p.partition_index];
                r.error_code = ErrorCode::REQUEST_TIMED_OUT.0;
                r.base_offset = -1;
                r.error_message = Some(spate_client::protocol::str_bytes("timed out waiting for fsync"));
            }
        }
        ctx.respond(&response)
    })))
}

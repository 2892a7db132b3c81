//! Produce (key 0). Batches are validated by header and CRC only, appended as raw bytes, and,
//! with `acks=all` in `fsync` mode, answered once the flusher reports them durable.
//!
//! A transactional batch that would open a transaction in a partition is first checked with
//! the transaction coordinator (KIP-890 part 1, `transaction.partition.verification.enable`):
//! see `crate::txn::verify`.
//!
//! The appends are file writes. In `fsync` mode a small request (at most
//! [`INLINE_APPEND_MAX_BYTES`] of batches) is appended on the connection's own worker: the flusher
//! keeps dirty pages down to about one round's worth, so such a write lands in the page cache
//! without waiting for the disk, and handing it to another thread and back (two wake-ups, two
//! context switches) cost more than the write and added scheduling delay to every small
//! acknowledgement. Larger requests, and every request in `page-cache` mode (where dirty pages
//! pile up until the kernel throttles writers), run on tokio's blocking pool
//! ([`Reply::Blocking`]), so a slow disk stalls the producing connection, never every connection.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spate_client::protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use spate_client::protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use spate_client::protocol::record::{validate_batches, BatchHeader};
use spate_client::protocol::ErrorCode;
use spate_client::ProtocolError;
use tokio::sync::watch;
use tracing::debug;

use super::{decode, error_message, leader_partition, Reply, RequestContext};
use crate::broker::{now_ms, Broker};
use crate::config::FlushMode;
use crate::error::BrokerError;
use crate::partition::{Partition, Replicated, TxnVerification};
use crate::txn::verify::{produce_error, verify};

const DEFAULT_ACK_TIMEOUT_MS: i32 = 30_000;

/// Requests with at most this many bytes of record batches are appended on the async worker in
/// `fsync` mode (see the module documentation).
pub const INLINE_APPEND_MAX_BYTES: usize = 64 * 1024;

/// A partition response waiting for the high watermark to pass its batch: every in-sync
/// replica has it (and, in fsync mode, the leader has fsynced it).
struct Pending {
    topic_index: usize,
    partition_index: usize,
    partition: Arc<Partition>,
    high_watermark: watch::Receiver<i64>,
    needed: i64,
    leader_epoch: i32,
    min_insync: usize,
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
    let broker = broker.clone();
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    // Without a transactional id there is nothing to verify: such a request's transactional
    // batches are refused by validation before any append.
    let id = match &request.transactional_id {
        Some(id) if broker.config.transaction_partition_verification_enable => id.to_string(),
        _ => return Ok(append(broker, ctx, request, None)),
    };
    let mut verdicts = Verdicts::new();
    let asks = verifications_needed(&broker, &request, &mut verdicts);
    if asks.is_empty() {
        return Ok(append(broker, ctx, request, Some(verdicts)));
    }
    // Ordered: the connection reads its next request only after these appends, as for any
    // produce (an idempotent producer's pipelined batches must land in sequence order).
    Ok(Reply::Ordered(Box::pin(async move {
        for ((producer_id, producer_epoch), partitions) in asks {
            let tps: Vec<(String, i32)> = partitions.iter().map(|(_, tp, _)| tp.clone()).collect();
            let answer = verify(&broker, &id, producer_id, producer_epoch, &tps).await;
            for (i, (at, _, guard)) in partitions.into_iter().enumerate() {
                let verdict = match &answer {
                    // A code missing from the answer is no confirmation.
                    Ok(codes) => match codes.get(i).copied().unwrap_or(ErrorCode::INVALID_TXN_STATE) {
                        ErrorCode::NONE => Ok(guard),
                        code => Err(produce_error(code)),
                    },
                    Err(code) => Err(produce_error(*code)),
                };
                verdicts.insert(at, verdict);
            }
        }
        append(broker, ctx, request, Some(verdicts))
    })))
}

/// Appends here or on the blocking pool (see the module documentation).
fn append(broker: Arc<Broker>, ctx: RequestContext, request: ProduceRequest, verdicts: Option<Verdicts>) -> Reply {
    let inline = broker.config.log_flush_mode == FlushMode::Fsync
        && request
            .topic_data
            .iter()
            .flat_map(|t| &t.partition_data)
            .map(|p| p.records.as_ref().map_or(0, Bytes::len))
            .sum::<usize>()
            <= INLINE_APPEND_MAX_BYTES;
    if inline {
        append_all(&broker, ctx, request, verdicts.as_ref())
    } else {
        Reply::Blocking(Box::new(move || append_all(&broker, ctx, request, verdicts.as_ref())))
    }
}

/// KIP-890 verdicts for the partitions of a transactional Produce, by (topic index, partition
/// index): the guard to append with, or the error to answer. A transactional batch at a
/// partition with no verdict must belong to a transaction open there already.
type Verdicts = HashMap<(usize, usize), Result<u64, ErrorCode>>;

/// Partitions whose transactional batch would open a transaction here, to ask the coordinator
/// about, by producer: (position in the request, topic-partition, guard). Partitions that
/// cannot start a verification get their verdict now.
#[allow(clippy::type_complexity)]
fn verifications_needed(
    broker: &Broker,
    request: &ProduceRequest,
    verdicts: &mut Verdicts,
) -> BTreeMap<(i64, i16), Vec<((usize, usize), (String, i32), u64)>> {
    let mut asks: BTreeMap<(i64, i16), Vec<_>> = BTreeMap::new();
    for (ti, topic_data) in request.topic_data.iter().enumerate() {
        for (pi, data) in topic_data.partition_data.iter().enumerate() {
            let Some(header) = data.records.as_deref().and_then(|r| BatchHeader::parse(r).ok()) else { continue };
            if !header.is_transactional() || header.is_control() {
                continue;
            }
            // Unknown or not led here: the append answers that.
            let Ok(partition) = leader_partition(broker, &topic_data.name, data.index) else { continue };
            match partition.begin_txn_verification(header.producer_id, header.producer_epoch) {
                Ok(None) => {}
                Ok(Some(guard)) => asks.entry((header.producer_id, header.producer_epoch)).or_default().push((
                    (ti, pi),
                    (topic_data.name.to_string(), data.index),
                    guard,
                )),
                Err(err) => {
                    verdicts.insert((ti, pi), Err(err.code()));
                }
            }
        }
    }
    asks
}

/// Validates and appends every partition's batches (blocking file I/O), then answers now or,
/// for `acks=all`, once the high watermark passes them.
/// `verdicts` is `None` when nothing is verified (`transaction.partition.verification.enable=false`,
/// or a request without a transactional id).
fn append_all(
    broker: &Arc<Broker>,
    ctx: RequestContext,
    request: ProduceRequest,
    verdicts: Option<&Verdicts>,
) -> Reply {
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
            if crate::group::is_internal_topic(&topic_name) {
                // Only the group coordinator writes it, in its own record format.
                partition_responses.push(partition_error(
                    data.index,
                    ErrorCode::INVALID_TOPIC_EXCEPTION,
                    Some(format!("clients cannot produce to the internal topic {topic_name}")),
                ));
                continue;
            }
            let partition = match leader_partition(broker, &topic_name, data.index) {
                Ok(p) => p,
                Err(code) => {
                    partition_responses.push(partition_error(data.index, code, None));
                    continue;
                }
            };
            // Only acks=all looks at min.insync.replicas; acks=0/1 skip the config lookup.
            let min_insync = if acks == -1 {
                broker
                    .topic(&topic_name)
                    .map(|t| t.configs.min_insync_replicas(&broker.config))
                    .unwrap_or(broker.config.min_insync_replicas as usize)
            } else {
                0
            };
            let isr_len = if acks == -1 { partition.isr_len() } else { 0 };
            if isr_len < min_insync {
                // Kafka checks before appending, so nothing is written that cannot be acknowledged.
                partition_responses.push(partition_error(
                    data.index,
                    ErrorCode::NOT_ENOUGH_REPLICAS,
                    Some(format!("{isr_len} in-sync replicas, min.insync.replicas is {min_insync}")),
                ));
                continue;
            }
            let verification = match verdicts.map(|v| v.get(&(ti, pi))) {
                None => TxnVerification::Off,
                Some(None) => TxnVerification::Required(None),
                Some(Some(Ok(guard))) => TxnVerification::Required(Some(*guard)),
                Some(Some(Err(code))) => {
                    partition_responses.push(partition_error(
                        data.index,
                        *code,
                        Some(format!(
                            "the transaction coordinator did not confirm that this partition is in the producer's \
                             ongoing transaction ({code:?})"
                        )),
                    ));
                    continue;
                }
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
                    if headers.iter().any(|h| h.is_control()) {
                        // Markers are the transaction coordinator's alone.
                        return Err(BrokerError::InvalidRecord {
                            topic: topic_name.clone(),
                            partition: data.index,
                            reason: "clients cannot write control batches".into(),
                        });
                    }
                    if headers.iter().any(|h| h.is_transactional()) && request.transactional_id.is_none() {
                        return Err(BrokerError::InvalidRecord {
                            topic: topic_name.clone(),
                            partition: data.index,
                            reason: "a transactional batch needs the request's transactional_id".into(),
                        });
                    }
                    partition.append_produced(&records, &headers, now, verification)
                });
            match result {
                Ok(outcome) => {
                    partition
                        .metrics
                        .messages_in
                        .increment((outcome.last_offset - outcome.base_offset + 1).max(0) as u64);
                    partition.metrics.bytes_in.increment(records.len() as u64);
                    if broker.config.log_flush_mode == FlushMode::Fsync {
                        broker.mark_dirty(&partition);
                    }
                    if acks == -1 && partition.high_watermark() <= outcome.last_offset {
                        pending.push(Pending {
                            topic_index: ti,
                            partition_index: pi,
                            high_watermark: partition.subscribe_high_watermark(),
                            needed: outcome.last_offset + 1,
                            leader_epoch: partition.leader_epoch(),
                            partition: partition.clone(),
                            min_insync,
                        });
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
                // A copy, not a slice of the request frame: a response waiting for acks=all
                // must not keep the whole request (its record batches) in memory.
                .with_name(TopicName(spate_client::protocol::str_bytes(topic_name)))
                .with_partition_responses(partition_responses),
        );
    }
    if acks == 0 {
        return Reply::Nothing;
    }
    let response = ProduceResponse::default().with_responses(responses);
    if pending.is_empty() {
        return Reply::Now(ctx.respond(&response));
    }
    let timeout_ms = if request.timeout_ms > 0 { request.timeout_ms } else { DEFAULT_ACK_TIMEOUT_MS };
    Reply::Later(Box::pin(async move {
        let mut response = response;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms as u64);
        for p in pending {
            let outcome = p.partition.wait_replicated(p.high_watermark, p.needed, p.leader_epoch, deadline).await;
            let failure = match outcome {
                // Kafka's delayed produce checks the ISR when the high watermark passes: a
                // high watermark that advanced because the ISR shrank below min.insync.replicas
                // proves fewer copies than the producer asked for.
                Replicated::Yes => {
                    let isr_len = p.partition.maximal_isr_len();
                    (isr_len < p.min_insync).then(|| {
                        (
                            ErrorCode::NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                            format!(
                                "appended, but the ISR shrank to {isr_len} below min.insync.replicas {} before it was \
                                 replicated",
                                p.min_insync
                            ),
                        )
                    })
                }
                Replicated::LogDirOffline => Some((
                    ErrorCode::KAFKA_STORAGE_ERROR,
                    "the log directory went offline (an fsync failed) before the batch was durable".to_string(),
                )),
                Replicated::LeaderChanged => Some((
                    ErrorCode::NOT_LEADER_OR_FOLLOWER,
                    "leadership changed before the in-sync replicas had the batch".to_string(),
                )),
                Replicated::TimedOut if p.partition.isr_len() < p.min_insync => Some((
                    ErrorCode::NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                    format!(
                        "appended, but the ISR shrank to {} below min.insync.replicas {}",
                        p.partition.isr_len(),
                        p.min_insync
                    ),
                )),
                Replicated::TimedOut => Some((
                    ErrorCode::REQUEST_TIMED_OUT,
                    "timed out waiting for the in-sync replicas (and fsync)".to_string(),
                )),
            };
            if let Some((code, message)) = failure {
                let r = &mut response.responses[p.topic_index].partition_responses[p.partition_index];
                r.error_code = code.0;
                r.base_offset = -1;
                r.error_message = Some(spate_client::protocol::str_bytes(message));
            }
        }
        ctx.respond(&response)
    }))
}

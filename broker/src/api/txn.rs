//! The transaction APIs: AddPartitionsToTxn (24, v0–3 for clients, v4 for brokers: batched,
//! with KIP-890's `verify_only`), AddOffsetsToTxn (25), EndTxn (26),
//! WriteTxnMarkers (27, broker to broker; also an admin's abort of a hanging transaction),
//! DescribeTransactions (65), ListTransactions (66), DescribeProducers (61, per partition, for
//! finding hanging transactions).
//! InitProducerId with a transactional id is in `admin.rs`; TxnOffsetCommit (28) goes to the
//! group coordinator (`group.rs`). Requests are decoded here and handed to
//! [`crate::txn::TransactionCoordinator`]; answers that wait for durable writes are
//! [`Reply::Later`].

use std::sync::Arc;

use bytes::Bytes;
use spate_client::protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use spate_client::protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use spate_client::protocol::messages::describe_producers_response::{
    PartitionResponse as ProducersPartition, ProducerState as DescribedProducer, TopicResponse as ProducersTopic,
};
use spate_client::protocol::messages::describe_transactions_response::{
    TopicData, TransactionState as DescribedTransaction,
};
use spate_client::protocol::messages::list_transactions_response::TransactionState as ListedTransaction;
use spate_client::protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use spate_client::protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest, AddPartitionsToTxnResponse,
    DescribeProducersRequest, DescribeProducersResponse, DescribeTransactionsRequest, DescribeTransactionsResponse,
    EndTxnRequest, EndTxnResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId, TopicName,
    TransactionalId, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use spate_client::protocol::{str_bytes, ErrorCode};
use spate_client::ProtocolError;

use super::{decode, Reply, RequestContext};
use crate::broker::Broker;
use crate::group::OFFSETS_TOPIC;
use crate::txn::coordinator::write_markers_here;
use crate::txn::TransactionCoordinator;

/// Bound on partitions named in one AddPartitionsToTxn or WriteTxnMarkers request.
const MAX_PARTITIONS_PER_REQUEST: usize = 10_000;

fn owned_ctx(ctx: &RequestContext) -> RequestContext {
    RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id }
}

/// Before v2 of these APIs (and v1 of EndTxn's), Kafka answered a fenced producer
/// INVALID_PRODUCER_EPOCH; PRODUCER_FENCED came with KIP-588.
fn fenced_for(version: i16, code: ErrorCode) -> ErrorCode {
    if code == ErrorCode::PRODUCER_FENCED && version < 2 {
        ErrorCode::INVALID_PRODUCER_EPOCH
    } else {
        code
    }
}

/// Refuses a request naming more than [`MAX_PARTITIONS_PER_REQUEST`] partitions.
fn check_partition_count(what: &'static str, n: usize) -> Result<(), ProtocolError> {
    if n <= MAX_PARTITIONS_PER_REQUEST {
        return Ok(());
    }
    Err(ProtocolError::Malformed {
        what,
        reason: format!("{n} partitions exceed the limit of {MAX_PARTITIONS_PER_REQUEST}"),
    })
}

pub(super) fn add_partitions_to_txn(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: AddPartitionsToTxnRequest = decode("AddPartitionsToTxn request", ctx, body)?;
    let count: usize = request.v3_and_below_topics.iter().map(|t| t.partitions.len()).sum::<usize>()
        + request.transactions.iter().flat_map(|x| &x.topics).map(|t| t.partitions.len()).sum::<usize>();
    // Each transaction of a v4 request is work even with no partitions: counted too.
    check_partition_count("AddPartitionsToTxn request", count.max(request.transactions.len()))?;
    let broker = broker.clone();
    let ctx = owned_ctx(ctx);
    Ok(Reply::Later(Box::pin(async move {
        if ctx.version <= 3 {
            let topics = add_one(
                &broker,
                ctx.version,
                &request.v3_and_below_transactional_id,
                request.v3_and_below_producer_id.0,
                request.v3_and_below_producer_epoch,
                &request.v3_and_below_topics,
                false,
            )
            .await;
            return ctx.respond(&AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(topics));
        }
        // v4+: the brokers' batched form (KIP-890); `verify_only` asks without adding.
        let mut results = Vec::with_capacity(request.transactions.len());
        for t in &request.transactions {
            let topics = add_one(
                &broker,
                ctx.version,
                &t.transactional_id,
                t.producer_id.0,
                t.producer_epoch,
                &t.topics,
                t.verify_only,
            )
            .await;
            results.push(
                AddPartitionsToTxnResult::default()
                    .with_transactional_id(t.transactional_id.clone())
                    .with_topic_results(topics),
            );
        }
        ctx.respond(&AddPartitionsToTxnResponse::default().with_results_by_transaction(results))
    })))
}

/// One transaction's AddPartitionsToTxn (or, `verify_only`, its KIP-890 check): one result
/// per partition asked about.
async fn add_one(
    broker: &Arc<Broker>,
    version: i16,
    id: &TransactionalId,
    producer_id: i64,
    producer_epoch: i16,
    topics: &[AddPartitionsToTxnTopic],
    verify_only: bool,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let id = id.to_string();
    let image = broker.image();
    let mut all = Vec::new();
    let mut unknown = false;
    for t in topics {
        for &p in &t.partitions {
            all.push((t.name.to_string(), p));
            if image.partition(&t.name, p).is_none() || crate::group::is_internal_topic(&t.name) {
                unknown = true;
            }
        }
    }
    // Kafka's answer when any partition is unknown: that error for those, and
    // OPERATION_NOT_ATTEMPTED for the rest; nothing is added.
    let result: Result<Vec<ErrorCode>, ErrorCode> = if verify_only {
        TransactionCoordinator::verify_partitions(broker, &id, producer_id, producer_epoch, &all)
    } else if unknown {
        Err(ErrorCode::OPERATION_NOT_ATTEMPTED)
    } else {
        TransactionCoordinator::add_partitions(broker, &id, producer_id, producer_epoch, &all)
            .await
            .map(|()| vec![ErrorCode::NONE; all.len()])
    };
    let mut i = 0;
    topics
        .iter()
        .map(|t| {
            let results = t
                .partitions
                .iter()
                .map(|&p| {
                    let code = match &result {
                        Ok(codes) => codes.get(i).copied().unwrap_or(ErrorCode::INVALID_TXN_STATE),
                        Err(_) if image.partition(&t.name, p).is_none() => ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                        Err(_) if crate::group::is_internal_topic(&t.name) => ErrorCode::TOPIC_AUTHORIZATION_FAILED,
                        Err(code) => fenced_for(version, *code),
                    };
                    i += 1;
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(p)
                        .with_partition_error_code(code.0)
                })
                .collect();
            AddPartitionsToTxnTopicResult::default().with_name(t.name.clone()).with_results_by_partition(results)
        })
        .collect()
}

pub(super) fn add_offsets_to_txn(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: AddOffsetsToTxnRequest = decode("AddOffsetsToTxn request", ctx, body)?;
    let broker = broker.clone();
    let ctx = owned_ctx(ctx);
    Ok(Reply::Later(Box::pin(async move {
        // The group's `__consumer_offsets` partition joins the transaction: its marker makes the
        // transaction's offset commits visible (or drops them).
        let result = match broker.groups.ensure_offsets_topic(&broker).await {
            Err(_) => Err(ErrorCode::COORDINATOR_NOT_AVAILABLE),
            Ok(()) => {
                let partition = broker.groups.partition_of(&broker, &request.group_id);
                TransactionCoordinator::add_partitions(
                    &broker,
                    &request.transactional_id,
                    request.producer_id.0,
                    request.producer_epoch,
                    &[(OFFSETS_TOPIC.to_string(), partition)],
                )
                .await
            }
        };
        let code = result.err().map_or(ErrorCode::NONE, |c| fenced_for(ctx.version, c));
        ctx.respond(&AddOffsetsToTxnResponse::default().with_error_code(code.0))
    })))
}

pub(super) fn end_txn(broker: &Arc<Broker>, ctx: &RequestContext, body: &mut Bytes) -> Result<Reply, ProtocolError> {
    let request: EndTxnRequest = decode("EndTxn request", ctx, body)?;
    let broker = broker.clone();
    let ctx = owned_ctx(ctx);
    Ok(Reply::Later(Box::pin(async move {
        let result = TransactionCoordinator::end_txn(
            &broker,
            &request.transactional_id,
            request.producer_id.0,
            request.producer_epoch,
            request.committed,
        )
        .await;
        let code = result.err().map_or(ErrorCode::NONE, |c| fenced_for(ctx.version, c));
        ctx.respond(
            &EndTxnResponse::default().with_error_code(code.0).with_producer_id(ProducerId(-1)).with_producer_epoch(-1),
        )
    })))
}

pub(super) fn write_txn_markers(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: WriteTxnMarkersRequest = decode("WriteTxnMarkers request", ctx, body)?;
    let count: usize = request.markers.iter().flat_map(|m| &m.topics).map(|t| t.partition_indexes.len()).sum();
    check_partition_count("WriteTxnMarkers request", count)?;
    let broker = broker.clone();
    let ctx = owned_ctx(ctx);
    Ok(Reply::Later(Box::pin(async move {
        let mut results = Vec::with_capacity(request.markers.len());
        for marker in &request.markers {
            let partitions: Vec<(String, i32)> = marker
                .topics
                .iter()
                .flat_map(|t| t.partition_indexes.iter().map(move |&p| (t.name.to_string(), p)))
                .collect();
            let codes = write_markers_here(
                &broker,
                marker.producer_id.0,
                marker.producer_epoch,
                marker.transaction_result,
                marker.coordinator_epoch,
                &partitions,
            )
            .await;
            let mut codes = codes.into_iter();
            let topics = marker
                .topics
                .iter()
                .map(|t| {
                    let partitions = t
                        .partition_indexes
                        .iter()
                        .map(|&p| {
                            WritableTxnMarkerPartitionResult::default()
                                .with_partition_index(p)
                                .with_error_code(codes.next().unwrap_or(ErrorCode::UNKNOWN_SERVER_ERROR).0)
                        })
                        .collect();
                    WritableTxnMarkerTopicResult::default().with_name(t.name.clone()).with_partitions(partitions)
                })
                .collect();
            results.push(WritableTxnMarkerResult::default().with_producer_id(marker.producer_id).with_topics(topics));
        }
        ctx.respond(&WriteTxnMarkersResponse::default().with_markers(results))
    })))
}

pub(super) fn list_transactions(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: ListTransactionsRequest = decode("ListTransactions request", ctx, body)?;
    const KNOWN: [&str; 8] = [
        "Empty",
        "Ongoing",
        "PrepareCommit",
        "PrepareAbort",
        "CompleteCommit",
        "CompleteAbort",
        "Dead",
        "PrepareEpochFence",
    ];
    let states: Vec<String> = request.state_filters.iter().map(|s| s.to_string()).collect();
    let unknown: Vec<_> = request.state_filters.iter().filter(|s| !KNOWN.contains(&s.as_str())).cloned().collect();
    let producer_ids: Vec<i64> = request.producer_id_filters.iter().map(|p| p.0).collect();
    let now = crate::broker::now_ms();
    let listed = broker
        .txns
        .list(&states, &producer_ids, request.duration_filter, now)
        .into_iter()
        .map(|(id, producer_id, state)| {
            ListedTransaction::default()
                .with_transactional_id(TransactionalId(str_bytes(id)))
                .with_producer_id(ProducerId(producer_id))
                .with_transaction_state(str_bytes(state))
        })
        .collect();
    let code = if broker.txns.is_loading() { ErrorCode::COORDINATOR_LOAD_IN_PROGRESS } else { ErrorCode::NONE };
    Ok(Reply::Now(
        ctx.respond(
            &ListTransactionsResponse::default()
                .with_error_code(code.0)
                .with_unknown_state_filters(unknown)
                .with_transaction_states(listed),
        ),
    ))
}

pub(super) fn describe_transactions(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: DescribeTransactionsRequest = decode("DescribeTransactions request", ctx, body)?;
    let states = request
        .transactional_ids
        .iter()
        .map(|id| match broker.txns.describe(broker, id) {
            Ok(m) => {
                let mut topics: Vec<TopicData> = Vec::new();
                for (topic, partition) in &m.partitions {
                    match topics.last_mut() {
                        Some(t) if t.topic.as_str() == topic => t.partitions.push(*partition),
                        _ => topics.push(
                            TopicData::default()
                                .with_topic(TopicName(str_bytes(topic.clone())))
                                .with_partitions(vec![*partition]),
                        ),
                    }
                }
                DescribedTransaction::default()
                    .with_transactional_id(id.clone())
                    .with_transaction_state(str_bytes(m.status.name()))
                    .with_transaction_timeout_ms(m.timeout_ms)
                    .with_transaction_start_time_ms(m.start_ms)
                    .with_producer_id(ProducerId(m.producer_id))
                    .with_producer_epoch(m.producer_epoch)
                    .with_topics(topics)
            }
            Err(code) => DescribedTransaction::default()
                .with_error_code(code.0)
                .with_transactional_id(id.clone())
                .with_transaction_state(str_bytes(""))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        })
        .collect();
    Ok(Reply::Now(ctx.respond(&DescribeTransactionsResponse::default().with_transaction_states(states))))
}

/// DescribeProducers: each partition's producers with state and the start offset of their open
/// transaction (the leader answers; others NOT_LEADER_OR_FOLLOWER), what `spate transactions
/// --find-hanging` compares with the coordinators' view.
pub(super) fn describe_producers(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: &mut Bytes,
) -> Result<Reply, ProtocolError> {
    let request: DescribeProducersRequest = decode("DescribeProducers request", ctx, body)?;
    let count: usize = request.topics.iter().map(|t| t.partition_indexes.len()).sum();
    check_partition_count("DescribeProducers request", count)?;
    let topics = request
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partition_indexes
                .iter()
                .map(|&index| {
                    let described = crate::api::leader_partition(broker, &t.name, index)
                        .and_then(|p| p.describe_producers().map_err(|e| e.code()));
                    match described {
                        Ok(producers) => {
                            ProducersPartition::default().with_partition_index(index).with_active_producers(
                                producers
                                    .into_iter()
                                    .map(|a| {
                                        DescribedProducer::default()
                                            .with_producer_id(ProducerId(a.producer_id))
                                            .with_producer_epoch(i32::from(a.producer_epoch))
                                            .with_last_sequence(a.last_sequence)
                                            .with_last_timestamp(a.last_timestamp_ms)
                                            .with_coordinator_epoch(a.coordinator_epoch)
                                            .with_current_txn_start_offset(a.current_txn_start_offset)
                                    })
                                    .collect(),
                            )
                        }
                        Err(code) => ProducersPartition::default().with_partition_index(index).with_error_code(code.0),
                    }
                })
                .collect();
            ProducersTopic::default().with_name(t.name.clone()).with_partitions(partitions)
        })
        .collect();
    Ok(Reply::Now(ctx.respond(&DescribeProducersResponse::default().with_topics(topics))))
}

//! Fetch (key 1): raw batches from the log below the high watermark, with long polling on
//! `max_wait_ms`/`min_bytes` and the `max_bytes`/`partition_max_bytes` limits (KIP-74: the first
//! batch is returned whole even if larger). Fetch sessions (KIP-227) are declined by answering
//! session id 0, which the protocol allows; every fetch is then a full fetch.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{select_all, FutureExt};
use spate_client::protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use spate_client::protocol::messages::{BrokerId, FetchRequest, FetchResponse};
use spate_client::protocol::ErrorCode;
use spate_client::ProtocolError;
use tokio::sync::watch;

use super::{decode, Reply, RequestContext};
use crate::broker::Broker;
use crate::partition::Partition;

/// Upper bound on how long a fetch may park, whatever the client asks.
const MAX_WAIT_MS_LIMIT: i32 = 30_000;
/// Bound on partitions in one fetch, so a request cannot make us hold unbounded state.
const MAX_PARTITIONS_PER_FETCH: usize = 10_000;

struct Wanted {
    topic: usize,
    partition_index: i32,
    fetch_offset: i64,
    partition_max_bytes: usize,
    partition: Option<Arc<Partition>>,
}

fn read_all(wanted: &[Wanted], topics: &mut [FetchableTopicResponse], max_bytes: usize) -> usize {
    let mut total = 0usize;
    for t in topics.iter_mut() {
        t.partitions.clear();
    }
    for w in wanted {
        let mut data = PartitionData::default()
            .with_partition_index(w.partition_index)
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1)
            .with_preferred_read_replica(BrokerId(-1))
            .with_records(Some(Bytes::new()));
        match &w.partition {
            None => data.error_code = ErrorCode::UNKNOWN_TOPIC_OR_PARTITION.0,
            Some(p) => {
                let offsets = p.offsets();
                data.high_watermark = offsets.high_watermark;
                data.last_stable_offset = offsets.high_watermark;
                data.log_start_offset = offsets.log_start_offset;
                let budget = w.partition_max_bytes.min(max_bytes.saturating_sub(total));
                if budget > 0 || total == 0 {
                    match p.read(w.fetch_offset, budget.max(1), offsets.high_watermark) {
                        Ok(bytes) => {
                            total += bytes.len();
                            data.records = Some(bytes);
                        }
                        Err(err) => data.error_code = err.code().0,
                    }
                }
            }
        }
        topics[w.topic].partitions.push(data);
    }
    total
}

pub(super) fn handle(broker: &Arc<Broker>, ctx: &RequestContext, body: &mut Bytes) -> Result<Reply, ProtocolError> {
    let request: FetchRequest = decode("Fetch request", ctx, body)?;
    let partition_count: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    if partition_count > MAX_PARTITIONS_PER_FETCH {
        return Err(ProtocolError::Malformed {
            what: "Fetch request",
            reason: format!("{partition_count} partitions exceed the limit of {MAX_PARTITIONS_PER_FETCH}"),
        });
    }
    let mut topics = Vec::with_capacity(request.topics.len());
    let mut wanted = Vec::with_capacity(partition_count);
    for (ti, t) in request.topics.iter().enumerate() {
        topics.push(FetchableTopicResponse::default().with_topic(t.topic.clone()).with_topic_id(t.topic_id));
        for p in &t.partitions {
            wanted.push(Wanted {
                topic: ti,
                partition_index: p.partition,
                fetch_offset: p.fetch_offset,
                partition_max_bytes: p.partition_max_bytes.max(0) as usize,
                partition: broker.partition(t.topic.as_str(), p.partition),
            });
        }
    }
    let max_bytes = (request.max_bytes.max(0) as usize).min(broker.config.fetch_max_bytes as usize);
    let min_bytes = request.min_bytes.max(0) as usize;
    let max_wait = Duration::from_millis(request.max_wait_ms.clamp(0, MAX_WAIT_MS_LIMIT) as u64);
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    Ok(Reply::Later(Box::pin(async move {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut watches: Vec<watch::Receiver<i64>> =
            wanted.iter().filter_map(|w| w.partition.as_ref().map(|p| p.subscribe_high_watermark())).collect();
        loop {
            for w in watches.iter_mut() {
                w.mark_unchanged();
            }
            let total = read_all(&wanted, &mut topics, max_bytes);
            let has_error = topics.iter().flat_map(|t| &t.partitions).any(|p| p.error_code != 0);
            if total >= min_bytes.max(1) || has_error || watches.is_empty() || tokio::time::Instant::now() >= deadline {
                break;
            }
            let partition_gone = {
                let changed = select_all(watches.iter_mut().map(|w| w.changed().boxed()));
                // New data or the deadline: read again (the check above then answers). A
                // closed watch means a partition was deleted: one last read, then answer.
                matches!(tokio::time::timeout_at(deadline, changed).await, Ok((Err(_), _, _)))
            };
            if partition_gone {
                watches.clear();
            }
        }
        let response = FetchResponse::default().with_session_id(0).with_responses(topics);
        ctx.respond(&response)
    })))
}

//! Fetch (key 1): raw batches from the log, with long polling on `max_wait_ms`/`min_bytes` and
//! the `max_bytes`/`partition_max_bytes` limits (KIP-74: the first batch is returned whole even
//! if larger). Fetch sessions (KIP-227) are declined by answering session id 0, which the
//! protocol allows; every fetch is then a full fetch.
//!
//! Consumers (`replica_id` -1) read below the high watermark (`read_committed` ones below the
//! last stable offset, with the aborted transactions of what they get); followers (`replica_id` >= 0)
//! read up to the log end offset, and their fetch offset tells the leader how far they have
//! replicated (which can advance the high watermark). Only the leader serves either: another
//! replica answers NOT_LEADER_OR_FOLLOWER, and a `current_leader_epoch` older than the
//! partition's is FENCED_LEADER_EPOCH, a newer one UNKNOWN_LEADER_EPOCH.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{select_all, FutureExt};
use spate_client::protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData};
use spate_client::protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId};
use spate_client::protocol::record::BatchIter;
use spate_client::protocol::ErrorCode;
use spate_client::ProtocolError;
use tokio::sync::watch;

use super::{decode, Part, Reply, RequestContext};
use crate::broker::{now_ms, Broker};
use crate::controller::TopicImage;
use crate::log::ReadSlice;
use crate::partition::Partition;
use crate::replica::throttle::TopicThrottles;

/// Upper bound on how long a fetch may park, whatever the client asks.
const MAX_WAIT_MS_LIMIT: i32 = 30_000;
/// Bound on partitions in one fetch, so a request cannot make us hold unbounded state.
const MAX_PARTITIONS_PER_FETCH: usize = 10_000;
/// A consumer's record set at least this large stays in its segment file and goes out with
/// `sendfile`; smaller ones are read and copied in with the response's fields: below about this
/// size the two extra system calls (a write for the fields before it, the `sendfile`) cost more
/// than the copies they save, which matters to a fetch of many small partitions.
const SEND_FROM_FILE_BYTES: usize = 16 * 1024;

/// A fetch's answer before it is encoded: the response, and the record sets left in their
/// segment files, in response order as (topic index, partition index within the topic,
/// slice); their `records` in `response` are empty until [`Fetched::into_response`] reads them.
pub(crate) struct Fetched {
    pub response: FetchResponse,
    pub files: Vec<(usize, usize, ReadSlice)>,
}

impl Fetched {
    /// The whole response, the record sets left in files read into it. A read that fails
    /// answers KAFKA_STORAGE_ERROR for its partition.
    pub fn into_response(self) -> FetchResponse {
        let mut response = self.response;
        for (t, p, slice) in self.files {
            let data = &mut response.responses[t].partitions[p];
            match slice.read() {
                Ok(bytes) => data.records = Some(bytes),
                Err(err) => {
                    tracing::warn!(%err, "fetch: reading a segment failed");
                    data.error_code = ErrorCode::KAFKA_STORAGE_ERROR.0;
                }
            }
        }
        response
    }
}

struct Wanted {
    topic: usize,
    partition_index: i32,
    fetch_offset: i64,
    partition_max_bytes: usize,
    partition: Option<Arc<Partition>>,
    /// Refused before reading (not the leader, epoch mismatch).
    error: Option<ErrorCode>,
    /// A follower the leader throttles, under `leader.replication.throttled.rate`.
    throttled: bool,
}

/// The leader side of the replication throttle: for which (topic, partition) the fetching
/// follower is throttled ([`crate::replica::throttle::leader_throttled`]), and the budget those
/// reads share.
pub(crate) struct LeaderThrottle<'a> {
    pub is_throttled: &'a dyn Fn(&str, i32) -> bool,
    pub budget: crate::replica::SharedBudget,
}

/// One pass over the wanted partitions: fills `topics` and `files` (see [`Fetched`]) and
/// returns the record bytes found.
fn read_all(
    wanted: &[Wanted],
    topics: &mut [FetchableTopicResponse],
    files: &mut Vec<(usize, usize, ReadSlice)>,
    max_bytes: usize,
    replica: bool,
    read_committed: bool,
    throttle: Option<&crate::replica::SharedBudget>,
) -> usize {
    let mut total = 0usize;
    for t in topics.iter_mut() {
        t.partitions.clear();
    }
    files.clear();
    for w in wanted {
        let mut data = PartitionData::default()
            .with_partition_index(w.partition_index)
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1)
            .with_preferred_read_replica(BrokerId(-1))
            .with_records(Some(Bytes::new()));
        match (&w.partition, w.error) {
            (_, Some(code)) => data.error_code = code.0,
            (None, None) => data.error_code = ErrorCode::UNKNOWN_TOPIC_OR_PARTITION.0,
            (Some(p), None) => {
                let offsets = p.offsets();
                let last_stable = p.last_stable_offset();
                data.high_watermark = offsets.high_watermark;
                data.last_stable_offset = last_stable;
                data.log_start_offset = offsets.log_start_offset;
                // read_committed consumers read below the last stable offset (KIP-98).
                let visible_end = if read_committed { last_stable } else { offsets.high_watermark };
                let budget = w.partition_max_bytes.min(max_bytes.saturating_sub(total));
                // A throttled follower gets no records while the leader's budget is spent.
                let throttled = w.throttled.then_some(throttle).flatten();
                let held_back = throttled
                    .is_some_and(|t| !t.lock().unwrap_or_else(|e| e.into_inner()).allows(crate::broker::now_ms()));
                if !held_back && (budget > 0 || total == 0) {
                    // Followers read past the high watermark, where a new leader's truncation
                    // may rewrite the file before a delayed send: they get the bytes now.
                    // Consumers read below it, which stays put: a large read is left in the
                    // file and sent from there.
                    let read = if replica {
                        p.read_for_replica(w.fetch_offset, budget.max(1))
                    } else {
                        match p.read_slice(w.fetch_offset, budget.max(1), visible_end) {
                            Ok(slice) if slice.len() >= SEND_FROM_FILE_BYTES => {
                                total += slice.len();
                                p.metrics.bytes_out.increment(slice.len() as u64);
                                if read_committed {
                                    data.aborted_transactions =
                                        Some(aborted_transactions(p, w.fetch_offset, slice.next_offset()));
                                }
                                files.push((w.topic, topics[w.topic].partitions.len(), slice));
                                topics[w.topic].partitions.push(data);
                                continue;
                            }
                            Ok(slice) => slice.read().map_err(Into::into),
                            Err(err) => Err(err),
                        }
                    };
                    match read {
                        Ok(bytes) => {
                            total += bytes.len();
                            if let Some(t) = throttled {
                                t.lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .record(bytes.len() as u64, crate::broker::now_ms());
                            }
                            if !replica {
                                p.metrics.bytes_out.increment(bytes.len() as u64);
                            }
                            if read_committed && !replica {
                                // The aborted transactions overlapping what is returned: the
                                // consumer drops their records.
                                let end = last_offset_in(&bytes).map_or(w.fetch_offset, |last| last + 1);
                                data.aborted_transactions = Some(aborted_transactions(p, w.fetch_offset, end));
                            }
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

/// The aborted transactions overlapping `[from, to)`, as a read_committed consumer gets them.
fn aborted_transactions(p: &Partition, from: i64, to: i64) -> Vec<AbortedTransaction> {
    p.aborted_transactions(from, to)
        .into_iter()
        .map(|a| {
            AbortedTransaction::default().with_producer_id(ProducerId(a.producer_id)).with_first_offset(a.first_offset)
        })
        .collect()
}

/// The last offset of the last whole batch in `records`.
fn last_offset_in(records: &[u8]) -> Option<i64> {
    BatchIter::new(records).last().map(|(_, header)| header.last_offset())
}

pub(super) fn handle(broker: &Arc<Broker>, ctx: &RequestContext, body: &mut Bytes) -> Result<Reply, ProtocolError> {
    let request: FetchRequest = decode("Fetch request", ctx, body)?;
    let fetch_max_bytes = broker.config.fetch_max_bytes as usize;
    let replica_id = request.replica_id.0;
    // Consumer fetches never look at the throttle (no lock, no image on their path).
    let budget = if replica_id >= 0 { broker.replica_leader_throttle() } else { None };
    let image = budget.is_some().then(|| broker.image());
    let me = broker.config.node_id;
    // Each requested topic with its throttled-replica lists, parsed once per request.
    let topics: HashMap<&str, (&TopicImage, TopicThrottles)> = image
        .as_deref()
        .map(|image| {
            request
                .topics
                .iter()
                .filter_map(|t| image.topics.get(t.topic.as_str()))
                .map(|t| (t.name.as_str(), (t, TopicThrottles::of(&t.configs))))
                .collect()
        })
        .unwrap_or_default();
    let is_throttled = |topic: &str, partition: i32| {
        let Some((t, throttles)) = topics.get(topic) else {
            return false;
        };
        usize::try_from(partition)
            .ok()
            .and_then(|i| t.partitions.get(i))
            .is_some_and(|p| crate::replica::throttle::leader_throttled(throttles, p, partition, me, replica_id))
    };
    let throttle = budget.map(|budget| LeaderThrottle { is_throttled: &is_throttled, budget });
    let fetched =
        serve(request, &|topic, partition| broker.partition(topic, partition), fetch_max_bytes, now_ms(), throttle)?;
    let ctx = RequestContext { api_key: ctx.api_key, version: ctx.version, correlation_id: ctx.correlation_id };
    Ok(Reply::Gathered(Box::pin(async move {
        let fetched = fetched.await;
        super::fetch_response::encode(ctx.version, ctx.correlation_id, &fetched.response, &fetched.files)
            .unwrap_or_else(|| vec![Part::Bytes(ctx.respond(&fetched.into_response()))])
    })))
}

/// The fetch itself, apart from the wire: `lookup` finds local partitions, `now_ms` stamps the
/// follower fetch it records. Returns the future that long-polls and answers.
pub(crate) fn serve(
    request: FetchRequest,
    lookup: &dyn Fn(&str, i32) -> Option<Arc<Partition>>,
    fetch_max_bytes: usize,
    now_ms: i64,
    throttle: Option<LeaderThrottle<'_>>,
) -> Result<impl Future<Output = Fetched> + Send + 'static, ProtocolError> {
    let partition_count: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    if partition_count > MAX_PARTITIONS_PER_FETCH {
        return Err(ProtocolError::Malformed {
            what: "Fetch request",
            reason: format!("{partition_count} partitions exceed the limit of {MAX_PARTITIONS_PER_FETCH}"),
        });
    }
    let replica_id = request.replica_id.0;
    let replica = replica_id >= 0;
    let read_committed = request.isolation_level == 1 && !replica;
    let mut topics = Vec::with_capacity(request.topics.len());
    let mut wanted = Vec::with_capacity(partition_count);
    for (ti, t) in request.topics.iter().enumerate() {
        topics.push(FetchableTopicResponse::default().with_topic(t.topic.clone()).with_topic_id(t.topic_id));
        for p in &t.partitions {
            let partition = lookup(t.topic.as_str(), p.partition);
            let mut error =
                partition.as_ref().and_then(|part| part.check_leader(p.current_leader_epoch).err()).map(|e| e.code());
            if let (Some(part), None) = (&partition, error) {
                // Only a follower replica reads past the high watermark; anyone else claiming a
                // replica id is refused, as Kafka does.
                if replica && !part.record_follower_fetch(replica_id, p.fetch_offset, p.log_start_offset, now_ms) {
                    error = Some(ErrorCode::NOT_LEADER_OR_FOLLOWER);
                }
            }
            let throttled =
                replica && throttle.as_ref().is_some_and(|th| (th.is_throttled)(t.topic.as_str(), p.partition));
            wanted.push(Wanted {
                topic: ti,
                partition_index: p.partition,
                fetch_offset: p.fetch_offset,
                partition_max_bytes: p.partition_max_bytes.max(0) as usize,
                partition,
                error,
                throttled,
            });
        }
    }
    let budget = throttle.map(|t| t.budget);
    let max_bytes = (request.max_bytes.max(0) as usize).min(fetch_max_bytes);
    let min_bytes = request.min_bytes.max(0) as usize;
    let max_wait = Duration::from_millis(request.max_wait_ms.clamp(0, MAX_WAIT_MS_LIMIT) as u64);
    Ok(async move {
        let mut files = Vec::new();
        let deadline = tokio::time::Instant::now() + max_wait;
        // Consumers wait for the high watermark to move; followers for the log end (new data
        // they must copy before the high watermark can move at all).
        let mut watches: Vec<watch::Receiver<i64>> = wanted
            .iter()
            .filter_map(|w| {
                w.partition.as_ref().map(|p| if replica { p.subscribe_log_end() } else { p.subscribe_high_watermark() })
            })
            .collect();
        loop {
            for w in watches.iter_mut() {
                w.mark_unchanged();
            }
            let total = read_all(&wanted, &mut topics, &mut files, max_bytes, replica, read_committed, budget.as_ref());
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
        Fetched { response: FetchResponse::default().with_session_id(0).with_responses(topics), files }
    })
}

#[cfg(test)]
mod tests {
    use spate_client::protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use spate_client::protocol::messages::TopicName;
    use spate_client::protocol::str_bytes;

    use super::*;
    use crate::replica::test_support::*;

    fn request(replica_id: i32, current_leader_epoch: i32, fetch_offset: i64, max_wait_ms: i32) -> FetchRequest {
        let p = FetchPartition::default()
            .with_partition(0)
            .with_current_leader_epoch(current_leader_epoch)
            .with_fetch_offset(fetch_offset)
            .with_partition_max_bytes(1 << 20);
        FetchRequest::default()
            .with_replica_id(BrokerId(replica_id))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default().with_topic(TopicName(str_bytes(TOPIC))).with_partitions(vec![p])])
    }

    async fn fetch(partition: &Arc<Partition>, request: FetchRequest) -> PartitionData {
        let lookup = |_: &str, _: i32| Some(partition.clone());
        let mut response = serve(request, &lookup, 1 << 20, 0, None).unwrap().await.into_response();
        response.responses.remove(0).partitions.remove(0)
    }

    #[tokio::test]
    async fn a_follower_being_added_gets_no_records_while_the_leader_budget_is_spent() {
        let dir = tempfile::tempdir().unwrap();
        let leader = open(dir.path(), 1);
        leader.make_leader(&image(&[1, 2], &[1], 1, 2, 1), None, 0).unwrap();
        produce(&leader, &["a", "b"], None);
        let budget = crate::replica::SharedBudget::default();
        budget.lock().unwrap().set_rate(Some(1_000_000), crate::broker::now_ms());
        let lookup = |_: &str, _: i32| Some(leader.clone());
        let throttled_fetch = |adding: bool| {
            let is_throttled = move |_: &str, _: i32| adding;
            let throttle = LeaderThrottle { is_throttled: &is_throttled, budget: budget.clone() };
            let response = serve(request(2, 2, 0, 0), &lookup, 1 << 20, 0, Some(throttle)).unwrap();
            async move { response.await.into_response().responses.remove(0).partitions.remove(0).records.unwrap() }
        };
        let first = throttled_fetch(true).await;
        assert!(!first.is_empty());
        // Spend the budget: an added follower gets nothing (and no error); others are not held.
        budget.lock().unwrap().record(10_000_000, crate::broker::now_ms());
        assert!(throttled_fetch(true).await.is_empty());
        assert_eq!(throttled_fetch(false).await, first);
    }

    #[tokio::test]
    async fn replicas_read_to_the_log_end_and_consumers_to_the_high_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let leader = open(dir.path(), 1);
        leader.make_leader(&image(&[1, 2], &[1, 2], 1, 2, 1), None, 0).unwrap();
        produce(&leader, &["a"], None);
        assert_eq!(leader.high_watermark(), 0);

        let consumer = fetch(&leader, request(-1, 2, 0, 0)).await;
        assert_eq!(consumer.error_code, 0);
        assert!(consumer.records.unwrap().is_empty(), "nothing is committed yet");
        let replica = fetch(&leader, request(2, 2, 0, 0)).await;
        assert_eq!((replica.error_code, replica.high_watermark), (0, 0));
        assert!(!replica.records.unwrap().is_empty(), "followers read uncommitted data");
        // The follower's next fetch offset is what it has: the high watermark moves.
        let replica = fetch(&leader, request(2, 2, 1, 0)).await;
        assert_eq!(replica.high_watermark, 1);
        assert!(!fetch(&leader, request(-1, -1, 0, 0)).await.records.unwrap().is_empty());

        // A replica fetch parked at the log end wakes for new data (not a moved high
        // watermark, which cannot move without it).
        let parked = tokio::spawn({
            let leader = leader.clone();
            async move { fetch(&leader, request(2, 2, 1, 30_000)).await }
        });
        tokio::task::yield_now().await;
        produce(&leader, &["b"], None);
        let woken = parked.await.unwrap();
        assert_eq!(woken.error_code, 0);
        assert!(!woken.records.unwrap().is_empty());
    }

    #[tokio::test]
    async fn only_the_leader_of_the_current_epoch_serves() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path(), 1);
        p.make_leader(&image(&[1, 2], &[1, 2], 1, 5, 1), None, 0).unwrap();
        assert_eq!(fetch(&p, request(-1, 4, 0, 0)).await.error_code, ErrorCode::FENCED_LEADER_EPOCH.0);
        assert_eq!(fetch(&p, request(2, 6, 0, 0)).await.error_code, ErrorCode::UNKNOWN_LEADER_EPOCH.0);
        assert_eq!(fetch(&p, request(2, 5, 0, 0)).await.error_code, 0);
        p.make_follower(&image(&[1, 2], &[1, 2], 2, 6, 2));
        for replica_id in [-1, 2] {
            let data = fetch(&p, request(replica_id, -1, 0, 0)).await;
            assert_eq!(data.error_code, ErrorCode::NOT_LEADER_OR_FOLLOWER.0);
        }
    }
}

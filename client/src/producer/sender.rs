//! The sender task: drains ready batches from the accumulator into one Produce request per
//! broker (many partitions each), keeps up to `max.in.flight.requests.per.connection` requests
//! per broker in flight, and settles each batch from the response: done, retried with its
//! sequence kept, or failed. It also fetches a new producer id when a partition has used up its
//! producer epochs. For a transactional producer it sends AddPartitionsToTxn for partitions new
//! in the transaction (their batches wait for it), and fails the records not yet sent once the
//! transaction must abort.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{oneshot, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::accumulator::{Accumulator, BatchResult, ProducerBatch, ProducerIdAndEpoch};
use super::transaction::{self, TransactionManager};
use crate::error::{Error, Result};
use crate::metadata::Cluster;
use crate::protocol::compression::Compression;
use crate::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use crate::protocol::messages::{ProduceRequest, ProduceResponse, TopicName, TransactionalId};
use crate::protocol::{ApiKey, ErrorCode, StrBytes};

/// The sender's part of the producer configuration.
#[derive(Debug, Clone)]
pub(crate) struct SenderConfig {
    pub acks: i16,
    pub request_timeout_ms: i32,
    pub retries: u32,
    pub retry_backoff_ms: i64,
    pub delivery_timeout_ms: i64,
    pub max_in_flight_requests_per_connection: usize,
    pub max_request_size: usize,
    pub compression: Compression,
    /// Sent with every Produce of a transactional producer.
    pub transactional_id: Option<StrBytes>,
}

/// State shared by the producer handles and the sender task.
pub(crate) struct SenderShared {
    pub acc: Accumulator,
    pub cluster: Cluster,
    pub memory: Arc<Semaphore>,
    pub wakeup: Notify,
    pub closing: AtomicBool,
    pub flushing: AtomicUsize,
    /// `send` calls waiting for buffer memory. While there are any, open batches are sent
    /// without lingering (as Kafka's accumulator does when its pool is exhausted): memory comes
    /// back only when batches complete, so lingering would only slow everything down.
    pub memory_waiters: AtomicUsize,
    pub config: SenderConfig,
    /// A transactional producer's state and coordinators.
    pub txn: Option<TransactionManager>,
    clock_base: Instant,
    refreshing: AtomicBool,
    last_refresh_ms: AtomicI64,
    fetching_producer_id: AtomicBool,
    last_producer_id_fetch_ms: AtomicI64,
}

impl SenderShared {
    pub fn new(
        acc: Accumulator,
        cluster: Cluster,
        memory: Arc<Semaphore>,
        config: SenderConfig,
        txn: Option<TransactionManager>,
    ) -> Self {
        SenderShared {
            acc,
            cluster,
            memory,
            wakeup: Notify::new(),
            closing: AtomicBool::new(false),
            flushing: AtomicUsize::new(0),
            memory_waiters: AtomicUsize::new(0),
            config,
            txn,
            clock_base: Instant::now(),
            refreshing: AtomicBool::new(false),
            last_refresh_ms: AtomicI64::new(i64::MIN / 2),
            fetching_producer_id: AtomicBool::new(false),
            last_producer_id_fetch_ms: AtomicI64::new(i64::MIN / 2),
        }
    }

    /// Milliseconds on a monotonic clock (tokio's, so tests can pause it).
    pub fn now_ms(&self) -> i64 {
        self.clock_base.elapsed().as_millis() as i64
    }

    pub fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.memory.add_permits(bytes);
        }
    }

    /// Starts a metadata refresh in the background unless one ran within the retry backoff.
    fn refresh_metadata(self: &Arc<Self>, now_ms: i64) {
        if now_ms - self.last_refresh_ms.load(Ordering::Relaxed) < self.config.retry_backoff_ms {
            return;
        }
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last_refresh_ms.store(now_ms, Ordering::Relaxed);
        let shared = self.clone();
        tokio::spawn(async move {
            match shared.cluster.refresh().await {
                Ok(metadata) => {
                    // Partitions added since a topic was first used become usable.
                    for (name, topic) in &metadata.topics {
                        if let Some(queues) = shared.acc.topic(name) {
                            if (queues.num_partitions() as usize) < topic.partitions.len() {
                                shared.acc.ensure_topic(name, topic.partitions.len() as i32);
                            }
                        }
                    }
                }
                Err(e) => debug!(error = %e, "producer metadata refresh failed"),
            }
            shared.refreshing.store(false, Ordering::Release);
            shared.wakeup.notify_one();
        });
    }
}

impl SenderShared {
    /// Starts fetching a new producer id in the background (a partition used up its producer
    /// epochs, as the Java client does at `Short.MAX_VALUE`), at most once per retry backoff.
    fn fetch_producer_id(self: &Arc<Self>, now_ms: i64) {
        if now_ms - self.last_producer_id_fetch_ms.load(Ordering::Relaxed) < self.config.retry_backoff_ms {
            return;
        }
        if self.fetching_producer_id.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last_producer_id_fetch_ms.store(now_ms, Ordering::Relaxed);
        let shared = self.clone();
        tokio::spawn(async move {
            match super::init_producer_id_once(&shared.cluster).await {
                Ok((producer_id, producer_epoch)) => {
                    debug!(producer_id, producer_epoch, "new producer id after an exhausted epoch");
                    shared.acc.set_producer_id(ProducerIdAndEpoch { producer_id, producer_epoch });
                }
                Err(e) => debug!(error = %e, "InitProducerId failed, retrying"),
            }
            shared.fetching_producer_id.store(false, Ordering::Release);
            shared.wakeup.notify_one();
        });
    }
}

/// What one Produce request came back with.
struct RequestOutcome {
    broker: i32,
    batches: Vec<ProducerBatch>,
    /// `None` for acks=0.
    result: Result<Option<ProduceResponse>>,
}

/// Runs until the producer is closed and every batch has completed.
pub(crate) async fn run(shared: Arc<SenderShared>) {
    let mut in_flight: JoinSet<RequestOutcome> = JoinSet::new();
    let mut per_broker: HashMap<i32, usize> = HashMap::new();
    // Each broker's requests go on the wire in drain order (sequence numbers must arrive in
    // order): a request task waits for the previous one's turn to end before it queues.
    let mut turns: HashMap<i32, oneshot::Receiver<()>> = HashMap::new();
    loop {
        let now_ms = shared.now_ms();
        let closing = shared.closing.load(Ordering::Acquire);
        let force =
            closing || shared.flushing.load(Ordering::Acquire) > 0 || shared.memory_waiters.load(Ordering::Acquire) > 0;
        let (expired, expiry_error) = shared.acc.expire(now_ms, shared.config.delivery_timeout_ms);
        shared.release(expired);
        if let Some(txn) = &shared.txn {
            if let Some(error) = expiry_error {
                txn.batch_failed(&error);
            }
            // Records of a transaction that cannot commit are failed before they are sent.
            if let Some(error) = txn.undrained_error() {
                shared.release(shared.acc.abort_undrained(&error));
            }
            transaction::maybe_add_partitions(&shared);
        }

        let metadata = shared.cluster.metadata();
        let max_in_flight = shared.config.max_in_flight_requests_per_connection;
        let drained = shared.acc.drain(
            now_ms,
            force,
            &|topic, partition| metadata.leader(topic, partition),
            &|broker| per_broker.get(&broker).copied().unwrap_or(0) >= max_in_flight,
            shared.config.max_request_size,
        );
        let mut next_ms = drained.next_ready_ms;
        if drained.producer_id_needed {
            shared.fetch_producer_id(now_ms);
            let retry_ms = now_ms + shared.config.retry_backoff_ms;
            next_ms = Some(next_ms.map_or(retry_ms, |n| n.min(retry_ms)));
        }
        if drained.unknown_leader {
            shared.refresh_metadata(now_ms);
            let retry_ms = now_ms + shared.config.retry_backoff_ms;
            next_ms = Some(next_ms.map_or(retry_ms, |n| n.min(retry_ms)));
        }
        for (broker, batches) in drained.by_broker {
            *per_broker.entry(broker).or_default() += 1;
            let (turn_done, turn) = oneshot::channel();
            let previous = turns.insert(broker, turn);
            in_flight.spawn(send_produce(shared.clone(), broker, batches, previous, turn_done));
        }
        if closing && in_flight.is_empty() && shared.acc.is_empty() {
            break;
        }

        let sleep = next_ms.map(|ms| shared.clock_base + std::time::Duration::from_millis(ms.max(0) as u64));
        tokio::select! {
            _ = shared.wakeup.notified() => {}
            _ = tokio::time::sleep_until(sleep.unwrap_or_else(Instant::now)), if sleep.is_some() => {}
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                match joined {
                    Ok(outcome) => {
                        if let Some(n) = per_broker.get_mut(&outcome.broker) {
                            *n = n.saturating_sub(1);
                        }
                        settle(&shared, outcome);
                    }
                    Err(e) => {
                        // The batches of a panicked request task are lost with it; their
                        // futures never resolve. Our bug, so log loudly.
                        warn!(error = %e, "produce request task failed");
                    }
                }
            }
        }
    }
    debug!("producer sender stopped");
}

/// Encodes the batches and sends one Produce request to `broker`, once the request drained
/// before it (`previous`) is on the wire; dropping `turn_done` lets the next one go.
async fn send_produce(
    shared: Arc<SenderShared>,
    broker: i32,
    mut batches: Vec<ProducerBatch>,
    previous: Option<oneshot::Receiver<()>>,
    turn_done: oneshot::Sender<()>,
) -> RequestOutcome {
    let result = async {
        let encode = move |mut batches: Vec<ProducerBatch>| {
            let mut result = Ok(());
            for b in &mut batches {
                if let Err(e) = b.encode() {
                    result = Err(Error::Encode { what: "record batch", reason: e.to_string() });
                    break;
                }
            }
            (batches, result)
        };
        let encoded = if shared.config.compression == Compression::None {
            encode(std::mem::take(&mut batches))
        } else {
            // Compression is CPU work: keep it off the async workers.
            // Requests to one broker still go out in order: see `previous`.
            let taken = std::mem::take(&mut batches);
            tokio::task::spawn_blocking(move || encode(taken)).await.expect("batch encoding does not panic")
        };
        batches = encoded.0;
        encoded.1?;
        if let Some(previous) = previous {
            // An error only means the previous request gave up before sending: our turn anyway.
            let _ = previous.await;
        }
        let conn = shared.cluster.broker(broker).await?;
        let version = conn.version(ApiKey::Produce)?;

        let mut topics: BTreeMap<&str, Vec<PartitionProduceData>> = BTreeMap::new();
        for b in &batches {
            topics
                .entry(b.topic())
                .or_default()
                .push(PartitionProduceData::default().with_index(b.partition()).with_records(b.encoded.clone()));
        }
        let request = ProduceRequest::default()
            .with_transactional_id(shared.config.transactional_id.clone().map(TransactionalId))
            .with_acks(shared.config.acks)
            .with_timeout_ms(shared.config.request_timeout_ms)
            .with_topic_data(
                topics
                    .into_iter()
                    .map(|(name, partitions)| {
                        TopicProduceData::default()
                            .with_name(TopicName(StrBytes::from_string(name.to_string())))
                            .with_partition_data(partitions)
                    })
                    .collect(),
            );
        if shared.config.acks == 0 {
            conn.send_no_response(ApiKey::Produce, version, &request).await?;
            drop(turn_done);
            Ok(None)
        } else {
            let pending = conn.enqueue(ApiKey::Produce, version, &request).await?;
            drop(turn_done);
            Ok(Some(pending.response::<ProduceResponse>().await?))
        }
    }
    .await;
    RequestOutcome { broker, batches, result }
}

/// What to do with a batch the broker answered for with `code` (before the retry budget,
/// `retries` and `delivery.timeout.ms`, is applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    /// Written. A duplicate sequence means an earlier attempt of this batch was written (the
    /// broker dedups a retry after a lost response or a leader change).
    Done,
    /// Send again with the same producer id, epoch and sequence; refresh metadata first when
    /// the leader may have moved.
    Retry {
        refresh_metadata: bool,
    },
    /// Not written: the sequence does not follow the broker's last one. Behind a batch being
    /// retried that is expected (retried too, in order); after a batch failed for good, the
    /// accumulator sends it again in the partition's next epoch.
    OutOfOrder,
    Fail,
}

fn disposition(code: ErrorCode) -> Disposition {
    if code.is_ok() || code == ErrorCode::DUPLICATE_SEQUENCE_NUMBER {
        return Disposition::Done;
    }
    if code == ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER {
        return Disposition::OutOfOrder;
    }
    // Retriable: leadership moves (NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE,
    // FENCED_/UNKNOWN_LEADER_EPOCH), a shrunken ISR (NOT_ENOUGH_REPLICAS,
    // NOT_ENOUGH_REPLICAS_AFTER_APPEND), REQUEST_TIMED_OUT and a failed disk (KAFKA_STORAGE_ERROR).
    if code.is_retriable() {
        return Disposition::Retry { refresh_metadata: needs_metadata_refresh(code) };
    }
    Disposition::Fail
}

/// Errors after which the leader may have moved.
fn needs_metadata_refresh(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NOT_LEADER_OR_FOLLOWER
            | ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
            | ErrorCode::LEADER_NOT_AVAILABLE
            | ErrorCode::FENCED_LEADER_EPOCH
            | ErrorCode::UNKNOWN_LEADER_EPOCH
            | ErrorCode::KAFKA_STORAGE_ERROR
    )
}

/// Settles every batch of a finished request.
fn settle(shared: &Arc<SenderShared>, outcome: RequestOutcome) {
    let now_ms = shared.now_ms();
    let can_retry = |b: &ProducerBatch| {
        b.attempts < shared.config.retries && now_ms - b.created_ms < shared.config.delivery_timeout_ms
    };
    let mut refresh = false;
    let mut released = 0;
    match outcome.result {
        Ok(None) => {
            for b in outcome.batches {
                b.completion.complete(Ok(-1));
                released += shared.acc.finish(b, BatchResult::Done, now_ms);
            }
        }
        Err(e) => {
            refresh |= e.is_retriable();
            let retriable = e.is_retriable();
            if retriable {
                debug!(broker = outcome.broker, error = %e, "produce request failed, retrying");
            } else {
                warn!(broker = outcome.broker, error = %e, "produce request failed");
            }
            let error = Arc::new(e);
            for b in outcome.batches {
                let result = if retriable && can_retry(&b) {
                    BatchResult::Retry
                } else {
                    b.completion.complete(Err(error.clone()));
                    if let Some(txn) = &shared.txn {
                        txn.batch_failed(&error);
                    }
                    BatchResult::Failed
                };
                released += shared.acc.finish(b, result, now_ms);
            }
        }
        Ok(Some(response)) => {
            let mut answers: HashMap<(&str, i32), (ErrorCode, i64, Option<String>)> = HashMap::new();
            for t in &response.responses {
                for p in &t.partition_responses {
                    let message = p.error_message.as_ref().map(|m| m.to_string());
                    answers.insert((t.name.0.as_str(), p.index), (ErrorCode(p.error_code), p.base_offset, message));
                }
            }
            for b in outcome.batches {
                let (code, base_offset, message) = answers
                    .get(&(b.topic().as_ref(), b.partition()))
                    .cloned()
                    .unwrap_or((ErrorCode::UNKNOWN_SERVER_ERROR, -1, Some("partition missing from response".into())));
                let result = if disposition(code) == Disposition::Done {
                    b.completion.complete(Ok(base_offset));
                    BatchResult::Done
                } else {
                    let retry = match disposition(code) {
                        Disposition::Retry { refresh_metadata } => {
                            refresh |= refresh_metadata;
                            Some(BatchResult::Retry)
                        }
                        Disposition::OutOfOrder => Some(BatchResult::OutOfOrder),
                        Disposition::Done | Disposition::Fail => None,
                    };
                    if let (Some(retry), true) = (retry, can_retry(&b)) {
                        debug!(topic = %b.topic(), partition = b.partition(), error = %code, "retrying batch");
                        retry
                    } else {
                        let context = match message {
                            Some(m) => format!("produce to {}-{}: {m}", b.topic(), b.partition()),
                            None => format!("produce to {}-{}", b.topic(), b.partition()),
                        };
                        let error = Arc::new(Error::broker(code, context));
                        b.completion.complete(Err(error.clone()));
                        if let Some(txn) = &shared.txn {
                            txn.batch_failed(&error);
                        }
                        BatchResult::Failed
                    }
                };
                released += shared.acc.finish(b, result, now_ms);
            }
        }
    }
    shared.release(released);
    if refresh {
        shared.refresh_metadata(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leadership_and_isr_errors_are_retried_and_leader_moves_refresh_metadata() {
        let retry = |refresh_metadata| Disposition::Retry { refresh_metadata };
        for code in [
            ErrorCode::NOT_LEADER_OR_FOLLOWER,
            ErrorCode::LEADER_NOT_AVAILABLE,
            ErrorCode::FENCED_LEADER_EPOCH,
            ErrorCode::UNKNOWN_LEADER_EPOCH,
            ErrorCode::KAFKA_STORAGE_ERROR,
            ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
        ] {
            assert_eq!(disposition(code), retry(true), "{code}");
        }
        for code in [
            ErrorCode::NOT_ENOUGH_REPLICAS,
            ErrorCode::NOT_ENOUGH_REPLICAS_AFTER_APPEND,
            ErrorCode::REQUEST_TIMED_OUT,
            ErrorCode::NETWORK_EXCEPTION,
        ] {
            assert_eq!(disposition(code), retry(false), "{code}");
        }
        assert_eq!(disposition(ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER), Disposition::OutOfOrder);
        assert_eq!(disposition(ErrorCode::NONE), Disposition::Done);
        assert_eq!(disposition(ErrorCode::DUPLICATE_SEQUENCE_NUMBER), Disposition::Done);
        for code in [ErrorCode::MESSAGE_TOO_LARGE, ErrorCode::INVALID_PRODUCER_EPOCH, ErrorCode::INVALID_RECORD] {
            assert_eq!(disposition(code), Disposition::Fail, "{code}");
        }
    }

    #[test]
    fn lost_connections_and_unknown_brokers_are_retriable() {
        for e in [
            Error::ConnectionLost { peer: "b".into(), reason: "closed by the peer".into() },
            Error::Timeout { peer: "b".into(), timeout_ms: 1 },
            Error::UnknownBroker { node_id: 2 },
            Error::Io { peer: "b".into(), source: std::io::ErrorKind::ConnectionRefused.into() },
        ] {
            assert!(e.is_retriable(), "{e}");
        }
    }
}

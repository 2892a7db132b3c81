//! The record accumulator: one queue of batches per partition, appended to under a short
//! per-partition mutex, drained by the sender when a batch is full or its linger has expired.
//!
//! Sans-IO: every decision takes `now_ms` from the caller (a monotonic millisecond clock), and
//! draining returns batches grouped by leader instead of sending anything. Idempotence lives
//! here too: sequence numbers are assigned when a batch is first drained and kept across
//! retries, and at most `max_in_flight_per_partition` batches of a partition are unanswered.
//!
//! When a batch with a sequence fails for good (KIP-360), the broker may or may not have written
//! it (a lost response, a timeout), so no later batch may reuse its sequence: the partition stops
//! taking new sequences until nothing of it is in flight, and then, unless a later batch's
//! acknowledgement showed that the broker has everything sent, it moves to the next producer
//! epoch and starts again at sequence 0, which the broker accepts whatever it holds. Only the
//! batches that failed are failed; those the broker refused as out of order behind them are sent
//! again in the new epoch.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};

use crate::error::{Error, ProtocolError};
use crate::protocol::compression::Compression;
use crate::protocol::record::{field, BatchBuilder, Record, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE};

/// A producer id and epoch, as Kafka's `ProducerIdAndEpoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerIdAndEpoch {
    pub producer_id: i64,
    pub producer_epoch: i16,
}

impl ProducerIdAndEpoch {
    /// Not idempotent: batches carry no producer id.
    pub const NONE: ProducerIdAndEpoch =
        ProducerIdAndEpoch { producer_id: NO_PRODUCER_ID, producer_epoch: NO_PRODUCER_EPOCH };
}

/// What the accumulator needs to know of the producer's configuration.
#[derive(Debug, Clone)]
pub(crate) struct AccumulatorConfig {
    pub batch_size: usize,
    pub linger_ms: i64,
    pub compression: Compression,
    pub max_in_flight_per_partition: usize,
    pub retry_backoff_ms: i64,
    pub idempotent: bool,
    /// `transactional.id` is set: batches carry the transactional bit, a partition's batches
    /// are drained only once the transaction coordinator has added the partition to the
    /// transaction, and a partition that lost sequences waits for the coordinator to bump the
    /// epoch (a transactional producer never bumps it itself; see `reset_producer`).
    pub transactional: bool,
    /// From InitProducerId ([`ProducerIdAndEpoch::NONE`] when not idempotent).
    pub producer: ProducerIdAndEpoch,
}

/// The outcome of a batch, shared by all its records' delivery futures.
pub(crate) struct BatchCompletion {
    pub id: u64,
    pub topic: Arc<str>,
    pub partition: i32,
    state: Mutex<CompletionState>,
}

#[derive(Default)]
struct CompletionState {
    /// The base offset (-1 when acks=0), or why the batch failed.
    result: Option<Result<i64, Arc<Error>>>,
    wakers: Vec<Waker>,
}

impl BatchCompletion {
    fn new(id: u64, topic: Arc<str>, partition: i32) -> Self {
        BatchCompletion { id, topic, partition, state: Mutex::new(CompletionState::default()) }
    }

    /// Records the outcome; the first one wins.
    pub fn complete(&self, result: Result<i64, Arc<Error>>) {
        let wakers = {
            let mut state = self.state.lock().expect("completion lock");
            if state.result.is_some() {
                return;
            }
            state.result = Some(result);
            std::mem::take(&mut state.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }

    pub fn poll_result(&self, cx: &mut Context<'_>) -> Poll<Result<i64, Arc<Error>>> {
        let mut state = self.state.lock().expect("completion lock");
        match &state.result {
            Some(r) => Poll::Ready(r.clone()),
            None => {
                if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    state.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// Waits for a batch's outcome (used by `flush`).
pub(crate) struct CompletionWait(pub Arc<BatchCompletion>);

impl std::future::Future for CompletionWait {
    type Output = Result<i64, Arc<Error>>;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_result(cx)
    }
}

/// A batch still taking records.
struct OpenBatch {
    builder: BatchBuilder,
    completion: Arc<BatchCompletion>,
    created_ms: i64,
    reserved_bytes: usize,
}

/// A closed batch: queued, in flight, or waiting to be retried.
pub(crate) struct ProducerBatch {
    pub completion: Arc<BatchCompletion>,
    /// Written inside a transaction (the batch attribute's transactional bit).
    transactional: bool,
    builder: Option<BatchBuilder>,
    /// The wire form, built once (with its sequence) and reused by retries.
    pub encoded: Option<Bytes>,
    pub record_count: i32,
    pub created_ms: i64,
    /// Buffer memory to give back when the batch completes.
    pub reserved_bytes: usize,
    /// The producer id and epoch of its sequence (those of its partition when it was drained).
    pub producer: ProducerIdAndEpoch,
    /// On the wire: `sequence` wrapped at `i32::MAX`, or `NO_SEQUENCE`.
    pub base_sequence: i32,
    /// Records of its partition's epoch sequenced before it (so not wrapped), once drained.
    sequence: Option<i64>,
    pub attempts: u32,
    retry_at_ms: i64,
}

impl ProducerBatch {
    fn from_open(open: OpenBatch, transactional: bool) -> Self {
        ProducerBatch {
            record_count: open.builder.len() as i32,
            completion: open.completion,
            transactional,
            builder: Some(open.builder),
            encoded: None,
            created_ms: open.created_ms,
            reserved_bytes: open.reserved_bytes,
            producer: ProducerIdAndEpoch::NONE,
            base_sequence: NO_SEQUENCE,
            sequence: None,
            attempts: 0,
            retry_at_ms: 0,
        }
    }

    pub fn topic(&self) -> &Arc<str> {
        &self.completion.topic
    }

    pub fn partition(&self) -> i32 {
        self.completion.partition
    }

    /// Encodes (and compresses) the batch if that has not happened yet, with its producer id,
    /// epoch and sequence. CPU-heavy for compressed batches: the sender runs it off the async
    /// workers.
    pub fn encode(&mut self) -> Result<&Bytes, ProtocolError> {
        if self.encoded.is_none() {
            let builder = self.builder.take().expect("a batch is either built or encoded");
            let ProducerIdAndEpoch { producer_id, producer_epoch } = self.producer;
            self.encoded = Some(builder.finish(producer_id, producer_epoch, self.base_sequence, self.transactional)?);
        }
        Ok(self.encoded.as_ref().expect("just encoded"))
    }

    /// Size on the wire, for request size accounting (before encoding: uncompressed size).
    fn size_bytes(&self) -> usize {
        match (&self.encoded, &self.builder) {
            (Some(b), _) => b.len(),
            (None, Some(builder)) => builder.size_bytes(),
            (None, None) => 0,
        }
    }

    /// Gives the batch its producer id, epoch and sequence. A batch encoded for an earlier epoch
    /// (sent, refused as out of order, and now sent again in the next one) is rewritten; the CRC
    /// covers these fields, so it is recomputed.
    fn assign_sequence(&mut self, producer: ProducerIdAndEpoch, sequence: i64) {
        // Only batches without a sequence get one, so an encoded batch always needs rewriting.
        self.producer = producer;
        self.sequence = Some(sequence);
        self.base_sequence = wrap_sequence(sequence);
        if let Some(encoded) = &self.encoded {
            let mut bytes = BytesMut::from(&encoded[..]);
            bytes[field::PRODUCER_ID..field::PRODUCER_ID + 8].copy_from_slice(&producer.producer_id.to_be_bytes());
            bytes[field::PRODUCER_EPOCH..field::PRODUCER_EPOCH + 2]
                .copy_from_slice(&producer.producer_epoch.to_be_bytes());
            bytes[field::BASE_SEQUENCE..field::BASE_SEQUENCE + 4].copy_from_slice(&self.base_sequence.to_be_bytes());
            let crc = crc32c::crc32c(&bytes[field::ATTRIBUTES..]);
            bytes[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
            self.encoded = Some(bytes.freeze());
        }
    }

    /// Takes the sequence back from a batch the broker never wrote, so that it is sequenced
    /// again (in the partition's next epoch) when it is next drained.
    fn clear_sequence(&mut self) {
        self.sequence = None;
        self.base_sequence = NO_SEQUENCE;
    }

    /// The sequence after its last record (not wrapped).
    fn sequence_end(&self) -> Option<i64> {
        self.sequence.map(|s| s + self.record_count as i64)
    }
}

/// Where a partition stands in the current transaction (transactional producers only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxnPartition {
    /// Not part of the current transaction.
    NotAdded,
    /// A record is waiting for it; AddPartitionsToTxn is to be sent (or in flight).
    Pending,
    /// The coordinator added it: its batches may be sent.
    Added,
}

/// The batches of one partition, and its idempotence state.
pub(crate) struct PartitionQueue {
    open: Option<OpenBatch>,
    txn: TxnPartition,
    /// Closed batches in creation (batch id) order, which is also sequence order: those waiting
    /// to be retried with their sequence first, then those without one.
    queued: VecDeque<ProducerBatch>,
    in_flight: usize,
    /// A batch failed retriably: send one at a time until the retries are through, so the
    /// broker sees sequences in order again.
    retrying: bool,
    /// The producer id and epoch this partition's sequences belong to. Each partition moves to
    /// a new epoch on its own: the broker keeps producer state per partition, and a partition
    /// that lost nothing has no reason to restart its sequences.
    producer: ProducerIdAndEpoch,
    /// Records sequenced in this epoch: the next sequence, before wrapping.
    sequenced: i64,
    /// The broker acknowledged every sequence below this one (in this epoch).
    acknowledged: i64,
    /// A batch with a sequence failed for good, and the broker may hold it: no new sequences
    /// until the batches sent around it are resolved (see [`PartitionQueue::resolve`]).
    unresolved: bool,
    /// The broker refused this sequence as out of order while unresolved, so it holds nothing
    /// from here on: batches at or after it lose their sequences and go again in the next epoch.
    refused_from: Option<i64>,
}

/// What [`PartitionQueue::resolve`] decided.
#[derive(Debug, PartialEq, Eq)]
enum Resolution {
    /// Sequences go on (or restart in a new epoch).
    Resolved,
    /// The epoch cannot go higher: a new producer id is needed first.
    NeedsProducerId,
}

impl PartitionQueue {
    fn new(producer: ProducerIdAndEpoch) -> Self {
        PartitionQueue {
            open: None,
            txn: TxnPartition::NotAdded,
            queued: VecDeque::new(),
            in_flight: 0,
            retrying: false,
            producer,
            sequenced: 0,
            acknowledged: 0,
            unresolved: false,
            refused_from: None,
        }
    }

    fn is_idle(&self) -> bool {
        self.open.is_none() && self.queued.is_empty() && self.in_flight == 0
    }

    /// Queues a batch back in creation order (after a retriable failure, or refused).
    fn requeue(&mut self, batch: ProducerBatch) {
        let at = self.queued.iter().position(|b| b.completion.id > batch.completion.id).unwrap_or(self.queued.len());
        self.queued.insert(at, batch);
    }

    /// A batch with a sequence failed for good.
    fn mark_unresolved(&mut self) {
        self.unresolved = true;
    }

    /// The broker refused `batch` as out of order while this partition was unresolved: it holds
    /// nothing from the batch's sequence on (it appends in sequence order), so that batch and
    /// every later one lose their sequences and are sent again in the next epoch.
    fn refuse_from(&mut self, sequence: i64) {
        let from = self.refused_from.map_or(sequence, |r| r.min(sequence));
        self.refused_from = Some(from);
        for b in self.queued.iter_mut() {
            if b.sequence.is_some_and(|s| s >= from) {
                b.clear_sequence();
            }
        }
    }

    /// Whether every batch this partition sequenced has come back: none in flight, none
    /// waiting to be retried with its sequence.
    fn sequences_settled(&self) -> bool {
        self.in_flight == 0 && self.queued.front().is_none_or(|b| b.sequence.is_none())
    }

    /// Once the partition is unresolved and every sequenced batch has come back: if the broker
    /// acknowledged everything sequenced (a batch after the failed one was written, so the failed
    /// one was too), sequences go on; otherwise what the broker holds is unknown, and the
    /// partition moves to the next epoch at sequence 0 (KIP-360), or to `latest`, a newer
    /// producer id, when the epoch is exhausted.
    fn resolve(&mut self, latest: ProducerIdAndEpoch) -> Resolution {
        debug_assert!(self.sequences_settled());
        if self.acknowledged < self.sequenced {
            let next = if self.producer.producer_epoch < i16::MAX {
                ProducerIdAndEpoch { producer_epoch: self.producer.producer_epoch + 1, ..self.producer }
            } else if latest.producer_id != self.producer.producer_id {
                latest
            } else {
                return Resolution::NeedsProducerId;
            };
            self.producer = next;
            self.sequenced = 0;
            self.acknowledged = 0;
        }
        self.unresolved = false;
        self.refused_from = None;
        Resolution::Resolved
    }

    /// Leaves retry mode once nothing is in flight and no retried batch is left.
    fn settle(&mut self) {
        if self.in_flight == 0 && self.queued.iter().all(|b| b.attempts == 0) {
            self.retrying = false;
        }
    }
}

/// Per-topic state: the partition queues and the sticky partition for unkeyed records.
pub(crate) struct TopicQueues {
    pub name: Arc<str>,
    pub partitions: Vec<Arc<Mutex<PartitionQueue>>>,
    /// The current sticky partition, -1 before the first unkeyed record.
    pub sticky: AtomicI32,
}

impl TopicQueues {
    pub fn num_partitions(&self) -> i32 {
        self.partitions.len() as i32
    }
}

/// What `append` did.
pub(crate) enum AppendOutcome {
    Appended {
        completion: Arc<BatchCompletion>,
        relative_offset: i32,
        /// A new batch was opened (the sender must start its linger timer).
        new_batch: bool,
        /// A batch became ready to send.
        batch_full: bool,
        /// The partition is new in the current transaction: AddPartitionsToTxn must be sent
        /// before its batches ([`Accumulator::take_txn_pending`]).
        txn_partition_added: bool,
    },
    /// The record needs a new batch and the caller asked to be told first (sticky
    /// partitioning switches partitions at that point); nothing was appended.
    NeedsNewBatch { batch_full: bool },
}

/// Batches drained for sending, by leader.
#[derive(Default)]
pub(crate) struct Drained {
    pub by_broker: BTreeMap<i32, Vec<ProducerBatch>>,
    /// The earliest time something becomes ready by itself (linger or retry backoff).
    pub next_ready_ms: Option<i64>,
    /// Some ready batch's partition has no known leader: refresh metadata.
    pub unknown_leader: bool,
    /// A partition exhausted its producer epoch: get a new producer id (InitProducerId) and
    /// hand it to [`Accumulator::set_producer_id`].
    pub producer_id_needed: bool,
}

/// How a request's batch ended, as far as the accumulator cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchResult {
    Done,
    /// Failed retriably: send again with the same sequence.
    Retry,
    /// The broker refused its sequence as out of order (OUT_OF_ORDER_SEQUENCE_NUMBER), so it did
    /// not write it: retried with the same sequence (it is behind a batch being retried), or,
    /// when the partition is unresolved, sent again in the next epoch.
    OutOfOrder,
    /// Failed for good; the caller completed it with the error.
    Failed,
}

pub(crate) struct Accumulator {
    config: AccumulatorConfig,
    /// The newest producer id and epoch from InitProducerId: where new partitions start, and
    /// where one whose epoch is exhausted goes next.
    latest_producer: Mutex<ProducerIdAndEpoch>,
    topics: RwLock<HashMap<Arc<str>, Arc<TopicQueues>>>,
    next_batch_id: AtomicU64,
    /// Every batch not yet completed, for `flush`.
    incomplete: Mutex<HashMap<u64, Arc<BatchCompletion>>>,
    /// Partitions new in the current transaction, for the next AddPartitionsToTxn.
    txn_pending: Mutex<Vec<(Arc<str>, i32)>>,
}

impl Accumulator {
    pub fn new(config: AccumulatorConfig) -> Self {
        Accumulator {
            latest_producer: Mutex::new(config.producer),
            config,
            topics: RwLock::new(HashMap::new()),
            next_batch_id: AtomicU64::new(0),
            incomplete: Mutex::new(HashMap::new()),
            txn_pending: Mutex::new(Vec::new()),
        }
    }

    /// A new producer id (from InitProducerId after a partition exhausted its epoch).
    pub fn set_producer_id(&self, producer: ProducerIdAndEpoch) {
        *self.latest_producer.lock().expect("producer lock") = producer;
    }

    fn latest_producer(&self) -> ProducerIdAndEpoch {
        *self.latest_producer.lock().expect("producer lock")
    }

    pub fn topic(&self, name: &str) -> Option<Arc<TopicQueues>> {
        self.topics.read().expect("topics lock").get(name).cloned()
    }

    /// Registers a topic, or grows it when the cluster added partitions.
    pub fn ensure_topic(&self, name: &str, num_partitions: i32) -> Arc<TopicQueues> {
        let num_partitions = num_partitions.max(1) as usize;
        if let Some(t) = self.topic(name) {
            if t.partitions.len() >= num_partitions {
                return t;
            }
        }
        let mut topics = self.topics.write().expect("topics lock");
        let existing = topics.get(name).cloned();
        if let Some(t) = &existing {
            if t.partitions.len() >= num_partitions {
                return t.clone();
            }
        }
        let mut partitions = existing.as_ref().map(|t| t.partitions.clone()).unwrap_or_default();
        let producer = self.latest_producer();
        while partitions.len() < num_partitions {
            partitions.push(Arc::new(Mutex::new(PartitionQueue::new(producer))));
        }
        let sticky = existing.as_ref().map(|t| t.sticky.load(Ordering::Relaxed)).unwrap_or(-1);
        let name: Arc<str> = Arc::from(name);
        let queues = Arc::new(TopicQueues { name: name.clone(), partitions, sticky: AtomicI32::new(sticky) });
        topics.insert(name, queues.clone());
        queues
    }

    /// Appends a record to a partition's open batch, opening one if needed. `reserved_bytes` is
    /// the buffer memory the caller reserved for it.
    pub fn append(
        &self,
        topic: &TopicQueues,
        partition: i32,
        record: &Record,
        reserved_bytes: usize,
        now_ms: i64,
        abort_on_new_batch: bool,
    ) -> AppendOutcome {
        let queue = &topic.partitions[partition as usize];
        let mut q = queue.lock().expect("partition lock");
        let mut batch_full = false;
        if let Some(open) = &q.open {
            if open.builder.size_bytes() + reserved_bytes > self.config.batch_size {
                // Does not fit: the open batch is done.
                let open = q.open.take().expect("checked");
                q.queued.push_back(ProducerBatch::from_open(open, self.config.transactional));
                batch_full = true;
            }
        }
        let new_batch = q.open.is_none();
        if new_batch {
            if abort_on_new_batch {
                return AppendOutcome::NeedsNewBatch { batch_full };
            }
            let id = self.next_batch_id.fetch_add(1, Ordering::Relaxed);
            let completion = Arc::new(BatchCompletion::new(id, topic.name.clone(), partition));
            self.incomplete.lock().expect("incomplete lock").insert(id, completion.clone());
            q.open = Some(OpenBatch {
                builder: BatchBuilder::with_capacity(self.config.compression, self.config.batch_size.min(1 << 20)),
                completion,
                created_ms: now_ms,
                reserved_bytes: 0,
            });
        }
        let open = q.open.as_mut().expect("opened above");
        let relative_offset = open.builder.len() as i32;
        open.builder.push(record);
        open.reserved_bytes += reserved_bytes;
        let completion = open.completion.clone();
        if open.builder.size_bytes() >= self.config.batch_size {
            let open = q.open.take().expect("checked");
            q.queued.push_back(ProducerBatch::from_open(open, self.config.transactional));
            batch_full = true;
        }
        let txn_partition_added = self.config.transactional && q.txn == TxnPartition::NotAdded;
        if txn_partition_added {
            q.txn = TxnPartition::Pending;
            self.txn_pending.lock().expect("txn pending lock").push((topic.name.clone(), partition));
        }
        AppendOutcome::Appended { completion, relative_offset, new_batch, batch_full, txn_partition_added }
    }

    /// Takes the batches that may be sent now. `force` (flush or close) ignores linger;
    /// `leader_of` maps a partition to its leader; `max_request_bytes` bounds the batches
    /// grouped for one broker; `broker_busy` says a broker has no request slot left.
    pub fn drain(
        &self,
        now_ms: i64,
        force: bool,
        leader_of: &dyn Fn(&str, i32) -> Option<i32>,
        broker_busy: &dyn Fn(i32) -> bool,
        max_request_bytes: usize,
    ) -> Drained {
        let mut drained = Drained::default();
        let mut request_bytes: HashMap<i32, usize> = HashMap::new();
        let topics: Vec<Arc<TopicQueues>> = self.topics.read().expect("topics lock").values().cloned().collect();
        let latest_producer = self.latest_producer();
        let wake_at = |t: i64, d: &mut Drained| {
            d.next_ready_ms = Some(d.next_ready_ms.map_or(t, |n| n.min(t)));
        };
        for topic in &topics {
            for (index, queue) in topic.partitions.iter().enumerate() {
                let partition = index as i32;
                let mut q = queue.lock().expect("partition lock");
                if q.is_idle() {
                    continue;
                }
                if let Some(open) = &q.open {
                    let ready_ms = open.created_ms + self.config.linger_ms;
                    if force || now_ms >= ready_ms {
                        let open = q.open.take().expect("checked");
                        q.queued.push_back(ProducerBatch::from_open(open, self.config.transactional));
                    } else {
                        wake_at(ready_ms, &mut drained);
                    }
                }
                // Nothing goes out for a partition the coordinator has not added to the
                // transaction: the sender wakes again when AddPartitionsToTxn is answered.
                if self.config.transactional && q.txn != TxnPartition::Added {
                    continue;
                }
                if self.config.idempotent
                    && !self.config.transactional
                    && q.unresolved
                    && q.sequences_settled()
                    && q.resolve(latest_producer) == Resolution::NeedsProducerId
                {
                    drained.producer_id_needed = true;
                }
                let Some(front) = q.queued.front() else { continue };
                if front.retry_at_ms > now_ms {
                    wake_at(front.retry_at_ms, &mut drained);
                    continue;
                }
                // One batch per partition per request, as the Java client does.
                let limit = if q.retrying { 1 } else { self.config.max_in_flight_per_partition };
                if q.in_flight >= limit {
                    continue;
                }
                // An unresolved partition sends only the batches that already have sequences:
                // their answers tell what the broker holds.
                if self.config.idempotent && front.sequence.is_none() && q.unresolved {
                    continue;
                }
                let Some(leader) = leader_of(&topic.name, partition) else {
                    drained.unknown_leader = true;
                    continue;
                };
                if broker_busy(leader) {
                    continue;
                }
                let used = request_bytes.entry(leader).or_default();
                let size = front.size_bytes();
                if *used > 0 && *used + size > max_request_bytes {
                    // The broker's request is full: this batch goes in the next one, which
                    // the sender drains on its next pass rather than after an answer.
                    wake_at(now_ms, &mut drained);
                    continue;
                }
                *used += size;
                let mut batch = q.queued.pop_front().expect("checked");
                if self.config.idempotent && batch.sequence.is_none() {
                    batch.assign_sequence(q.producer, q.sequenced);
                    q.sequenced += batch.record_count as i64;
                }
                q.in_flight += 1;
                drained.by_broker.entry(leader).or_default().push(batch);
            }
        }
        drained
    }

    /// Hands a batch back after its request ended. Completed batches give their memory back
    /// through the returned byte count; retried ones are queued again.
    pub fn finish(&self, mut batch: ProducerBatch, result: BatchResult, now_ms: i64) -> usize {
        let Some(topic) = self.topic(batch.topic()) else { return batch.reserved_bytes };
        let queue = &topic.partitions[batch.partition() as usize];
        let mut q = queue.lock().expect("partition lock");
        q.in_flight -= 1;
        // Sequences of an epoch the partition has left mean nothing to it any more.
        let current = batch.sequence.is_some() && batch.producer == q.producer;
        let released = match result {
            BatchResult::Done => {
                if let (Some(end), true) = (batch.sequence_end(), current) {
                    q.acknowledged = q.acknowledged.max(end);
                }
                self.forget(&batch);
                batch.reserved_bytes
            }
            BatchResult::Failed => {
                if current {
                    q.mark_unresolved();
                }
                self.forget(&batch);
                batch.reserved_bytes
            }
            BatchResult::Retry | BatchResult::OutOfOrder => {
                batch.attempts += 1;
                batch.retry_at_ms = now_ms + self.config.retry_backoff_ms;
                q.retrying = true;
                if let (Some(sequence), true) = (batch.sequence, current) {
                    if result == BatchResult::OutOfOrder && q.unresolved {
                        q.refuse_from(sequence);
                    }
                    if q.refused_from.is_some_and(|from| sequence >= from) {
                        batch.clear_sequence();
                    }
                }
                q.requeue(batch);
                0
            }
        };
        q.settle();
        released
    }

    fn forget(&self, batch: &ProducerBatch) {
        self.incomplete.lock().expect("incomplete lock").remove(&batch.completion.id);
    }

    /// Every batch not completed yet (open, queued or in flight).
    pub fn incomplete(&self) -> Vec<Arc<BatchCompletion>> {
        self.incomplete.lock().expect("incomplete lock").values().cloned().collect()
    }

    /// Whether nothing is open, queued or in flight.
    pub fn is_empty(&self) -> bool {
        self.incomplete.lock().expect("incomplete lock").is_empty()
    }

    /// Fails batches that waited in a queue past `delivery_timeout_ms` (for example because
    /// their partition has no leader); returns the memory to give back and the error of the
    /// first batch it failed, if any.
    pub fn expire(&self, now_ms: i64, delivery_timeout_ms: i64) -> (usize, Option<Arc<Error>>) {
        let topics: Vec<Arc<TopicQueues>> = self.topics.read().expect("topics lock").values().cloned().collect();
        let mut released = 0;
        let mut failed = None;
        for topic in topics {
            for (index, queue) in topic.partitions.iter().enumerate() {
                let mut q = queue.lock().expect("partition lock");
                while let Some(front) = q.queued.front() {
                    let waited_ms = now_ms - front.created_ms;
                    if waited_ms < delivery_timeout_ms {
                        break;
                    }
                    let batch = q.queued.pop_front().expect("checked");
                    if batch.sequence.is_some() {
                        // It was sent: the broker may hold it.
                        q.mark_unresolved();
                    }
                    let error = Arc::new(Error::DeliveryTimeout {
                        topic: topic.name.to_string(),
                        partition: index as i32,
                        waited_ms: waited_ms as u64,
                    });
                    batch.completion.complete(Err(error.clone()));
                    failed.get_or_insert(error);
                    self.forget(&batch);
                    released += batch.reserved_bytes;
                }
                q.settle();
            }
        }
        (released, failed)
    }

    /// Partitions new in the current transaction since the last call: the next
    /// AddPartitionsToTxn request's.
    pub fn take_txn_pending(&self) -> Vec<(Arc<str>, i32)> {
        std::mem::take(&mut *self.txn_pending.lock().expect("txn pending lock"))
    }

    /// The coordinator added these partitions to the transaction: their batches may go.
    pub fn mark_txn_added(&self, partitions: &[(Arc<str>, i32)]) {
        for (topic, partition) in partitions {
            if let Some(q) = self.topic(topic).and_then(|t| t.partitions.get(*partition as usize).cloned()) {
                let mut q = q.lock().expect("partition lock");
                if q.txn == TxnPartition::Pending {
                    q.txn = TxnPartition::Added;
                }
            }
        }
    }

    /// Fails every batch that has not been sent (open, and queued without a sequence) with
    /// `error`, and forgets the partitions waiting to join the transaction: what an abort
    /// (or an error that forces one) does to records not yet on the wire. Batches that were
    /// sent keep going until answered, so their sequences are accounted for. Returns the
    /// memory to give back.
    pub fn abort_undrained(&self, error: &Arc<Error>) -> usize {
        self.txn_pending.lock().expect("txn pending lock").clear();
        let mut released = 0;
        for topic in self.all_topics() {
            for queue in &topic.partitions {
                let mut q = queue.lock().expect("partition lock");
                if q.txn == TxnPartition::Pending {
                    q.txn = TxnPartition::NotAdded;
                }
                let mut unsent: Vec<ProducerBatch> = Vec::new();
                if let Some(open) = q.open.take() {
                    unsent.push(ProducerBatch::from_open(open, self.config.transactional));
                }
                let queued = std::mem::take(&mut q.queued);
                for batch in queued {
                    if batch.sequence.is_some() {
                        q.queued.push_back(batch);
                    } else {
                        unsent.push(batch);
                    }
                }
                for batch in unsent {
                    batch.completion.complete(Err(error.clone()));
                    self.forget(&batch);
                    released += batch.reserved_bytes;
                }
                q.settle();
            }
        }
        released
    }

    /// The transaction ended (committed or aborted): every partition must be added again
    /// before its next batch.
    pub fn end_transaction(&self) {
        self.txn_pending.lock().expect("txn pending lock").clear();
        for topic in self.all_topics() {
            for queue in &topic.partitions {
                queue.lock().expect("partition lock").txn = TxnPartition::NotAdded;
            }
        }
    }

    /// Whether a batch that was sent failed for good, so the broker may hold sequences this
    /// producer does not know of: a transactional producer then needs a new epoch from its
    /// coordinator (KIP-360) before it sends again.
    pub fn needs_epoch_bump(&self) -> bool {
        self.all_topics().iter().any(|t| t.partitions.iter().any(|q| q.lock().expect("partition lock").unresolved))
    }

    /// Moves every partition to `producer` at sequence 0 (after InitProducerId gave a
    /// transactional producer its id or a new epoch). Only while nothing is in flight.
    pub fn reset_producer(&self, producer: ProducerIdAndEpoch) {
        *self.latest_producer.lock().expect("producer lock") = producer;
        for topic in self.all_topics() {
            for queue in &topic.partitions {
                let mut q = queue.lock().expect("partition lock");
                debug_assert!(q.sequences_settled(), "producer reset with batches in flight");
                q.producer = producer;
                q.sequenced = 0;
                q.acknowledged = 0;
                q.unresolved = false;
                q.refused_from = None;
            }
        }
    }

    fn all_topics(&self) -> Vec<Arc<TopicQueues>> {
        self.topics.read().expect("topics lock").values().cloned().collect()
    }
}

/// Sequence numbers wrap to 0 after `i32::MAX`, as Kafka's do.
fn wrap_sequence(sequence: i64) -> i32 {
    (sequence % (i32::MAX as i64 + 1)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn config(batch_size: usize, linger_ms: i64) -> AccumulatorConfig {
        AccumulatorConfig {
            batch_size,
            linger_ms,
            compression: Compression::None,
            max_in_flight_per_partition: 5,
            retry_backoff_ms: 100,
            idempotent: true,
            transactional: false,
            producer: PRODUCER,
        }
    }

    const PRODUCER: ProducerIdAndEpoch = ProducerIdAndEpoch { producer_id: 7, producer_epoch: 0 };

    fn record(n: usize) -> Record {
        Record { key: None, value: Some(Bytes::from(vec![b'x'; n])), headers: Vec::new(), timestamp_ms: 1 }
    }

    fn leader(_: &str, _: i32) -> Option<i32> {
        Some(1)
    }

    fn not_busy(_: i32) -> bool {
        false
    }

    fn append(acc: &Accumulator, t: &TopicQueues, p: i32, now: i64) -> (i32, bool, bool) {
        match acc.append(t, p, &record(100), 110, now, false) {
            AppendOutcome::Appended { relative_offset, new_batch, batch_full, .. } => {
                (relative_offset, new_batch, batch_full)
            }
            AppendOutcome::NeedsNewBatch { .. } => panic!("asked not to abort"),
        }
    }

    #[test]
    fn batches_close_when_full_and_drain_without_waiting_for_linger() {
        let acc = Accumulator::new(config(61 + 3 * 110, 1000));
        let t = acc.ensure_topic("t", 2);
        assert_eq!(append(&acc, &t, 0, 0), (0, true, false));
        assert_eq!(append(&acc, &t, 0, 0), (1, false, false));
        assert_eq!(append(&acc, &t, 0, 0), (2, false, false));
        // The fourth record does not fit: a new batch at relative offset 0.
        let (offset, new_batch, _) = append(&acc, &t, 0, 0);
        assert_eq!((offset, new_batch), (0, true));

        let drained = acc.drain(10, false, &leader, &not_busy, 1 << 20);
        let batches = &drained.by_broker[&1];
        assert_eq!(batches.len(), 1, "only the full batch is ready before linger");
        assert_eq!(batches[0].record_count, 3);
        assert_eq!(batches[0].base_sequence, 0);
        assert_eq!(drained.next_ready_ms, Some(1000), "the open batch lingers until 0 + 1000");
    }

    #[test]
    fn linger_expiry_and_force_make_open_batches_ready() {
        let acc = Accumulator::new(config(16384, 5));
        let t = acc.ensure_topic("t", 2);
        append(&acc, &t, 0, 100);
        append(&acc, &t, 1, 103);
        let d = acc.drain(104, false, &leader, &not_busy, 1 << 20);
        assert!(d.by_broker.is_empty());
        assert_eq!(d.next_ready_ms, Some(105));
        let d = acc.drain(105, false, &leader, &not_busy, 1 << 20);
        assert_eq!(d.by_broker[&1].len(), 1);
        assert_eq!(d.by_broker[&1][0].partition(), 0);
        assert_eq!(d.next_ready_ms, Some(108));
        let d = acc.drain(105, true, &leader, &not_busy, 1 << 20);
        assert_eq!(d.by_broker[&1][0].partition(), 1, "flush ignores linger");
    }

    #[test]
    fn batches_left_out_of_a_full_request_are_drained_on_the_next_pass() {
        let size = {
            let acc = Accumulator::new(config(16384, 5));
            let t = acc.ensure_topic("t", 1);
            append(&acc, &t, 0, 0);
            acc.drain(0, true, &leader, &not_busy, 1 << 20).by_broker[&1][0].size_bytes()
        };
        let acc = Accumulator::new(config(16384, 5));
        let t = acc.ensure_topic("t", 3);
        for p in 0..3 {
            append(&acc, &t, p, 0);
        }
        // Room for two batches per request: the third waits for the next request, which the
        // sender must send at once, not when an answer or linger happens to wake it.
        let d = acc.drain(10, true, &leader, &not_busy, 2 * size);
        assert_eq!(d.by_broker[&1].len(), 2);
        assert_eq!(d.next_ready_ms, Some(10), "the batch left out is ready now");
        let d = acc.drain(10, true, &leader, &not_busy, 2 * size);
        assert_eq!(d.by_broker[&1].len(), 1);
        assert_eq!(d.next_ready_ms, None);
    }

    #[test]
    fn abort_on_new_batch_appends_nothing() {
        let acc = Accumulator::new(config(16384, 5));
        let t = acc.ensure_topic("t", 1);
        assert!(matches!(
            acc.append(&t, 0, &record(1), 10, 0, true),
            AppendOutcome::NeedsNewBatch { batch_full: false }
        ));
        assert!(acc.is_empty());
        append(&acc, &t, 0, 0);
        assert!(matches!(acc.append(&t, 0, &record(1), 10, 0, true), AppendOutcome::Appended { new_batch: false, .. }));
    }

    #[test]
    fn unknown_leader_and_busy_brokers_hold_batches_back() {
        let acc = Accumulator::new(config(100, 0));
        let t = acc.ensure_topic("t", 1);
        append(&acc, &t, 0, 0);
        let d = acc.drain(1, false, &|_, _| None, &not_busy, 1 << 20);
        assert!(d.by_broker.is_empty() && d.unknown_leader);
        let d = acc.drain(1, false, &leader, &|_| true, 1 << 20);
        assert!(d.by_broker.is_empty() && !d.unknown_leader);
        let d = acc.drain(1, false, &leader, &not_busy, 1 << 20);
        assert_eq!(d.by_broker[&1].len(), 1);
    }

    #[test]
    fn in_flight_per_partition_is_bounded_and_sequences_are_contiguous() {
        let mut c = config(100, 0);
        c.max_in_flight_per_partition = 2;
        let acc = Accumulator::new(c);
        let t = acc.ensure_topic("t", 1);
        for _ in 0..4 {
            append(&acc, &t, 0, 0);
        }
        let first = acc.drain(1, false, &leader, &not_busy, 1 << 20).by_broker.remove(&1).unwrap();
        let second = acc.drain(1, false, &leader, &not_busy, 1 << 20).by_broker.remove(&1).unwrap();
        assert!(acc.drain(1, false, &leader, &not_busy, 1 << 20).by_broker.is_empty(), "two in flight");
        assert_eq!((first[0].base_sequence, second[0].base_sequence), (0, 1));
        acc.finish(first.into_iter().next().unwrap(), BatchResult::Done, 2);
        let third = acc.drain(3, false, &leader, &not_busy, 1 << 20).by_broker.remove(&1).unwrap();
        assert_eq!(third[0].base_sequence, 2);
    }

    #[test]
    fn retried_batches_keep_their_sequence_and_go_first_after_backoff() {
        let acc = Accumulator::new(config(100, 0));
        let t = acc.ensure_topic("t", 1);
        for _ in 0..3 {
            append(&acc, &t, 0, 0);
        }
        let mut batches = Vec::new();
        for _ in 0..3 {
            batches.extend(acc.drain(0, false, &leader, &not_busy, 1 << 20).by_broker.remove(&1).unwrap());
        }
        assert_eq!(batches.iter().map(|b| b.base_sequence).collect::<Vec<_>>(), vec![0, 1, 2]);
        let mut it = batches.into_iter();
        let (b0, b1, b2) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        // The second fails retriably, the third (out of order behind it) too, then the first succeeds.
        assert_eq!(acc.finish(b2, BatchResult::Retry, 10), 0);
        acc.finish(b1, BatchResult::Retry, 10);
        acc.finish(b0, BatchResult::Done, 10);
        append(&acc, &t, 0, 10);
        assert!(acc.drain(50, false, &leader, &not_busy, 1 << 20).by_broker.is_empty(), "backoff");
        let d = acc.drain(110, true, &leader, &not_busy, 1 << 20);
        let retry = &d.by_broker[&1];
        assert_eq!((retry[0].base_sequence, retry[0].attempts), (1, 1));
        // While retrying, one batch at a time.
        assert!(acc.drain(110, true, &leader, &not_busy, 1 << 20).by_broker.is_empty());
    }

    /// Drains the next batch of partition 0 (one per call), if any.
    fn next(acc: &Accumulator, now: i64) -> Option<ProducerBatch> {
        acc.drain(now, true, &leader, &not_busy, 1 << 20).by_broker.remove(&1).map(|mut v| v.remove(0))
    }

    fn header(b: &ProducerBatch) -> crate::protocol::record::BatchHeader {
        crate::protocol::record::validate_batch(b.encoded.as_ref().expect("encoded"), 0).unwrap()
    }

    #[test]
    fn batch_failed_for_good_moves_the_partition_to_the_next_epoch() {
        // The brief's case: a batch times out past delivery.timeout.ms after the broker wrote it.
        // Reusing its sequence would make the broker answer the next, different, batch as a
        // duplicate of it.
        let acc = Accumulator::new(config(100, 0));
        let t = acc.ensure_topic("t", 1);
        append(&acc, &t, 0, 0);
        let mut b0 = next(&acc, 0).unwrap();
        b0.encode().unwrap();
        assert_eq!((header(&b0).producer_epoch, header(&b0).base_sequence), (0, 0));
        acc.finish(b0, BatchResult::Failed, 0);
        append(&acc, &t, 0, 1);
        let mut b1 = next(&acc, 1).unwrap();
        assert_eq!((b1.producer, b1.base_sequence), (ProducerIdAndEpoch { producer_epoch: 1, ..PRODUCER }, 0));
        b1.encode().unwrap();
        assert_eq!((header(&b1).producer_id, header(&b1).producer_epoch, header(&b1).base_sequence), (7, 1, 0));
        acc.finish(b1, BatchResult::Done, 1);
        append(&acc, &t, 0, 2);
        let b2 = next(&acc, 2).unwrap();
        assert_eq!((b2.producer.producer_epoch, b2.base_sequence), (1, 1), "sequences go on in the new epoch");
    }

    #[test]
    fn no_new_sequences_until_batches_in_flight_around_a_failure_are_back() {
        let acc = Accumulator::new(config(100, 0));
        let t = acc.ensure_topic("t", 1);
        for _ in 0..2 {
            append(&acc, &t, 0, 0);
        }
        let b0 = next(&acc, 0).unwrap();
        let b1 = next(&acc, 0).unwrap();
        append(&acc, &t, 0, 0);
        acc.finish(b0, BatchResult::Failed, 0);
        assert!(next(&acc, 0).is_none(), "the batch after the failed one is still in flight");
        // It was written, so the failed one was too: sequences simply go on.
        acc.finish(b1, BatchResult::Done, 0);
        let b2 = next(&acc, 0).unwrap();
        assert_eq!((b2.producer, b2.base_sequence), (PRODUCER, 2));
    }

    #[test]
    fn batches_refused_behind_a_failed_one_are_sent_again_in_the_next_epoch() {
        let acc = Accumulator::new(config(100, 0));
        let t = acc.ensure_topic("t", 1);
        for _ in 0..3 {
            append(&acc, &t, 0, 0);
        }
        let mut sent: Vec<ProducerBatch> = (0..3).map(|_| next(&acc, 0).unwrap()).collect();
        for b in &mut sent {
            b.encode().unwrap();
        }
        let ids: Vec<u64> = sent.iter().map(|b| b.completion.id).collect();
        append(&acc, &t, 0, 0);
        let mut it = sent.into_iter();
        let (b0, b1, b2) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        // The first fails for good (definitely or not); the broker refuses the second as out of
        // order, so it holds neither; the third only timed out, so it keeps its sequence.
        acc.finish(b0, BatchResult::Failed, 0);
        acc.finish(b2, BatchResult::Retry, 0);
        acc.finish(b1, BatchResult::OutOfOrder, 0);
        // Both come back in order, in epoch 1 from sequence 0, then the new batch.
        let r1 = next(&acc, 1000).unwrap();
        assert_eq!((r1.completion.id, r1.producer.producer_epoch, r1.base_sequence), (ids[1], 1, 0));
        assert_eq!((header(&r1).producer_epoch, header(&r1).base_sequence), (1, 0), "re-encoded");
        assert!(next(&acc, 1000).is_none(), "retried batches go one at a time");
        acc.finish(r1, BatchResult::Done, 1000);
        let r2 = next(&acc, 1000).unwrap();
        assert_eq!((r2.completion.id, r2.producer.producer_epoch, r2.base_sequence), (ids[2], 1, 1));
        assert_eq!((header(&r2).producer_epoch, header(&r2).base_sequence), (1, 1));
        acc.finish(r2, BatchResult::Done, 1000);
        let b3 = next(&acc, 1000).unwrap();
        assert_eq!((b3.producer.producer_epoch, b3.base_sequence), (1, 2));
    }

    #[test]
    fn retried_batch_behind_a_failure_decides_whether_the_epoch_moves() {
        let acc = Accumulator::new(config(100, 0));
        let t = acc.ensure_topic("t", 1);
        for _ in 0..2 {
            append(&acc, &t, 0, 0);
        }
        let b0 = next(&acc, 0).unwrap();
        let b1 = next(&acc, 0).unwrap();
        acc.finish(b1, BatchResult::Retry, 0);
        acc.finish(b0, BatchResult::Failed, 0);
        append(&acc, &t, 0, 0);
        // The retry goes first, with its old sequence, and the broker's answer resolves it.
        let r1 = next(&acc, 1000).unwrap();
        assert_eq!((r1.producer, r1.base_sequence), (PRODUCER, 1));
        assert!(next(&acc, 1000).is_none());
        acc.finish(r1, BatchResult::Retry, 1000);
        let r1 = next(&acc, 2000).unwrap();
        acc.finish(r1, BatchResult::OutOfOrder, 2000);
        let r1 = next(&acc, 3000).unwrap();
        assert_eq!((r1.producer.producer_epoch, r1.base_sequence), (1, 0));
    }

    #[test]
    fn expired_batch_that_was_sent_moves_the_epoch_but_one_never_sent_does_not() {
        let acc = Accumulator::new(config(100, 0));
        let t = acc.ensure_topic("t", 1);
        append(&acc, &t, 0, 0);
        let b0 = next(&acc, 0).unwrap();
        acc.finish(b0, BatchResult::Retry, 0);
        assert_eq!(acc.expire(500, 500).0, 110);
        append(&acc, &t, 0, 500);
        let b1 = next(&acc, 500).unwrap();
        assert_eq!((b1.producer.producer_epoch, b1.base_sequence), (1, 0));
        acc.finish(b1, BatchResult::Done, 500);
        // Never drained: it has no sequence, and nothing changes.
        append(&acc, &t, 0, 1000);
        let _ = acc.drain(1000, false, &|_, _| None, &not_busy, 1 << 20);
        assert_eq!(acc.expire(1500, 500).0, 110);
        append(&acc, &t, 0, 1500);
        let b2 = next(&acc, 1500).unwrap();
        assert_eq!((b2.producer.producer_epoch, b2.base_sequence), (1, 1));
    }

    #[test]
    fn exhausted_epoch_waits_for_a_new_producer_id() {
        let mut c = config(100, 0);
        let last_epoch = ProducerIdAndEpoch { producer_id: 7, producer_epoch: i16::MAX };
        c.producer = last_epoch;
        let acc = Accumulator::new(c);
        let t = acc.ensure_topic("t", 1);
        append(&acc, &t, 0, 0);
        let b0 = next(&acc, 0).unwrap();
        assert_eq!(b0.producer, last_epoch);
        acc.finish(b0, BatchResult::Failed, 0);
        append(&acc, &t, 0, 0);
        let d = acc.drain(0, true, &leader, &not_busy, 1 << 20);
        assert!(d.producer_id_needed && d.by_broker.is_empty());
        let fresh = ProducerIdAndEpoch { producer_id: 8, producer_epoch: 0 };
        acc.set_producer_id(fresh);
        let b1 = next(&acc, 0).unwrap();
        assert_eq!((b1.producer, b1.base_sequence), (fresh, 0));
    }

    #[test]
    fn sequences_wrap_at_i32_max_on_the_wire() {
        assert_eq!(wrap_sequence(i32::MAX as i64), i32::MAX);
        assert_eq!(wrap_sequence(i32::MAX as i64 + 1), 0);
        assert_eq!(wrap_sequence(i32::MAX as i64 + 5), 4);
    }

    #[test]
    fn request_size_bounds_grouping_per_broker() {
        let acc = Accumulator::new(config(61 + 110, 0));
        let t = acc.ensure_topic("t", 3);
        for p in 0..3 {
            append(&acc, &t, p, 0);
        }
        let d = acc.drain(0, false, &leader, &not_busy, 2 * (61 + 110));
        assert_eq!(d.by_broker[&1].len(), 2);
        let d = acc.drain(0, false, &leader, &not_busy, 2 * (61 + 110));
        assert_eq!(d.by_broker[&1].len(), 1);
    }

    #[test]
    fn transactional_partitions_wait_to_be_added_and_unsent_batches_fail_on_abort() {
        let mut c = config(100, 0);
        c.transactional = true;
        let acc = Accumulator::new(c);
        let t = acc.ensure_topic("t", 2);
        let added = |acc: &Accumulator, p| match acc.append(&t, p, &record(100), 110, 0, false) {
            AppendOutcome::Appended { txn_partition_added, .. } => txn_partition_added,
            AppendOutcome::NeedsNewBatch { .. } => unreachable!(),
        };
        assert!(added(&acc, 0), "first record of partition 0 in the transaction");
        assert!(!added(&acc, 0));
        assert!(added(&acc, 1));
        let pending = acc.take_txn_pending();
        assert_eq!(pending, vec![(Arc::from("t"), 0), (Arc::from("t"), 1)]);
        assert!(acc.take_txn_pending().is_empty());
        assert!(next(&acc, 0).is_none(), "nothing goes out before AddPartitionsToTxn");
        acc.mark_txn_added(&pending[..1]);
        let b0 = acc.drain(0, true, &leader, &not_busy, 1 << 20).by_broker.remove(&1).unwrap();
        assert_eq!(b0.iter().map(|b| b.partition()).collect::<Vec<_>>(), [0], "only the added partition");
        let mut b0 = b0.into_iter().next().unwrap();
        b0.encode().unwrap();
        assert!(header(&b0).is_transactional());
        assert_eq!((header(&b0).producer_id, header(&b0).base_sequence), (7, 0));

        // The abort fails what was not sent; the batch on the wire stays until answered.
        let error = Arc::new(Error::TransactionAborted);
        assert_eq!(acc.abort_undrained(&error), 2 * 110, "one batch each (batch.size 100)");
        assert_eq!(acc.incomplete().len(), 1);
        acc.finish(b0, BatchResult::Done, 0);
        assert!(acc.is_empty());
        acc.end_transaction();
        assert!(added(&acc, 1), "partitions are added again in the next transaction");
        assert!(added(&acc, 0));
        assert!(!acc.needs_epoch_bump());
    }

    #[test]
    fn a_transactional_partition_that_lost_a_sequence_waits_for_the_coordinators_epoch() {
        let mut c = config(100, 0);
        c.transactional = true;
        let acc = Accumulator::new(c);
        let t = acc.ensure_topic("t", 1);
        append(&acc, &t, 0, 0);
        acc.mark_txn_added(&acc.take_txn_pending());
        let b0 = next(&acc, 0).unwrap();
        acc.finish(b0, BatchResult::Failed, 0);
        // No client-side bump (the coordinator's markers would be refused in a newer epoch).
        append(&acc, &t, 0, 0);
        assert!(next(&acc, 0).is_none());
        assert!(acc.needs_epoch_bump());
        acc.abort_undrained(&Arc::new(Error::TransactionAborted));
        acc.end_transaction();
        let bumped = ProducerIdAndEpoch { producer_epoch: 1, ..PRODUCER };
        acc.reset_producer(bumped);
        assert!(!acc.needs_epoch_bump());
        append(&acc, &t, 0, 0);
        acc.mark_txn_added(&acc.take_txn_pending());
        let b1 = next(&acc, 0).unwrap();
        assert_eq!((b1.producer, b1.base_sequence), (bumped, 0));
    }

    #[test]
    fn completion_wakes_waiters_and_incomplete_tracks_batches() {
        let acc = Accumulator::new(config(16384, 0));
        let t = acc.ensure_topic("t", 1);
        let completion = match acc.append(&t, 0, &record(1), 10, 0, false) {
            AppendOutcome::Appended { completion, .. } => completion,
            AppendOutcome::NeedsNewBatch { .. } => unreachable!(),
        };
        assert_eq!(acc.incomplete().len(), 1);
        let batch = acc.drain(0, false, &leader, &not_busy, 1 << 20).by_broker.remove(&1).unwrap().remove(0);
        batch.completion.complete(Ok(42));
        assert_eq!(acc.finish(batch, BatchResult::Done, 0), 10);
        assert!(acc.is_empty());
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(matches!(completion.poll_result(&mut cx), Poll::Ready(Ok(42))));
    }
}

//! The producer: [`Producer::send`] appends a record to its partition's open batch and returns a
//! [`DeliveryFuture`]; a background sender task ships ready batches (full, or older than
//! `linger_ms`) as one Produce request per broker, pipelined.
//!
//! The hot path takes no channel send and no allocation beyond the record itself: a topic lookup
//! under a read lock, a buffer-memory reservation (an atomic on a semaphore unless the buffer is
//! full, when `send` waits: back-pressure), and an append under the partition's mutex. Delivery
//! futures share their batch's outcome.
//!
//! # Transactions
//!
//! With [`ProducerConfig::transactional_id`] set the producer writes in transactions, as
//! Kafka's (KIP-98): the records sent between [`Producer::begin_transaction`] and
//! [`Producer::commit_transaction`], and the consumer offsets given to
//! [`Producer::send_offsets_to_transaction`], become visible together to `read_committed`
//! consumers, or, after [`Producer::abort_transaction`], never.
//!
//! - [`Producer::init_transactions`] (once) finds the transaction coordinator (FindCoordinator
//!   with key type 1) and gets the producer id and epoch from it (InitProducerId with the
//!   transactional id and `transaction_timeout_ms`). That fences every older producer with the
//!   same transactional id, and aborts a transaction one of them left open.
//! - Inside a transaction, the first record for a partition marks it pending; the sender
//!   sends AddPartitionsToTxn for the pending partitions (many per request) and drains a
//!   partition's batches only once the coordinator has added it. Produce requests carry the
//!   transactional id, and batches have the transactional attribute bit. A partition is added
//!   again in each transaction that writes to it.
//! - `send_offsets_to_transaction` sends AddOffsetsToTxn to the transaction coordinator, then
//!   TxnOffsetCommit to the group's coordinator with the consumer's generation, member id and
//!   group instance id ([`crate::Consumer::group_metadata`]), so the group refuses offsets of
//!   a consumer that was fenced out of it (KIP-447).
//! - `commit_transaction` flushes every record and, if all were written, sends EndTxn
//!   (commit); the coordinator writes COMMIT markers. `abort_transaction` fails the records not
//!   yet sent with [`Error::TransactionAborted`], waits for those on the wire, and sends EndTxn
//!   (abort). EndTxn is skipped when nothing reached the coordinator.
//! - Errors come in the Java client's classes. A failed record, or a coordinator refusing a
//!   partition or the offsets, makes the transaction abortable: every call but
//!   `abort_transaction` returns [`Error::TransactionAbortable`]; after the abort the next
//!   transaction may begin. When a sent batch failed so that the broker's sequence numbers for
//!   this producer are unknown, the abort also gets a new epoch for the same producer id from
//!   the coordinator (KIP-360). Being fenced (PRODUCER_FENCED, INVALID_PRODUCER_EPOCH from the
//!   coordinator), unauthorized, an unsupported version or INVALID_TXN_STATE from EndTxn are
//!   fatal: every later call returns [`Error::TransactionFatal`], and the producer should be
//!   closed. Calls out of order (`begin_transaction` twice, `send` outside a transaction, ...)
//!   are [`Error::InvalidTransactionState`]. Coordinator answers that only mean "not now"
//!   (COORDINATOR_LOAD_IN_PROGRESS, CONCURRENT_TRANSACTIONS, NOT_COORDINATOR, which also looks
//!   the coordinator up again) are retried until `max_block_ms`; a call that times out may be
//!   made again.
//! - Closing a producer with a transaction open aborts it.
//!
//! Consume, transform, produce, exactly once:
//!
//! ```no_run
//! # async fn run() -> spate_client::Result<()> {
//! use std::collections::BTreeMap;
//! use std::time::Duration;
//! use spate_client::{
//!     Consumer, ConsumerConfig, Error, IsolationLevel, OffsetAndMetadata, Producer, ProducerConfig, ProducerRecord,
//!     TopicPartition,
//! };
//!
//! let producer = Producer::new(ProducerConfig {
//!     transactional_id: Some("enricher-0".into()),
//!     ..ProducerConfig::default()
//! })
//! .await?;
//! producer.init_transactions().await?;
//! let consumer = Consumer::new(ConsumerConfig {
//!     group_id: Some("enricher".into()),
//!     enable_auto_commit: false,
//!     isolation_level: IsolationLevel::ReadCommitted,
//!     ..ConsumerConfig::default()
//! })
//! .await?;
//! consumer.subscribe(&["orders"]).await?;
//! loop {
//!     let records = consumer.poll(Duration::from_millis(500)).await?;
//!     if records.is_empty() {
//!         continue;
//!     }
//!     producer.begin_transaction()?;
//!     let mut offsets = BTreeMap::new();
//!     for r in &records {
//!         let out = ProducerRecord { key: r.key.clone(), value: r.value.clone(), ..Default::default() };
//!         producer.send("orders-enriched", out).await?;
//!         offsets.insert(TopicPartition::new(&*r.topic, r.partition), OffsetAndMetadata::new(r.offset + 1));
//!     }
//!     producer.send_offsets_to_transaction(&offsets, &consumer.group_metadata()?).await?;
//!     match producer.commit_transaction().await {
//!         Ok(()) => {}
//!         Err(Error::TransactionAbortable { .. }) => {
//!             producer.abort_transaction().await?;
//!             // Read the aborted records again.
//!             for (tp, committed) in consumer.committed(&consumer.assignment().await).await? {
//!                 if let Some(committed) = committed {
//!                     consumer.seek(&tp, committed.offset).await?;
//!                 }
//!             }
//!         }
//!         Err(fatal) => return Err(fatal),
//!     }
//! }
//! # }
//! ```

mod accumulator;
pub mod partitioner;
mod sender;
mod transaction;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::debug;

use self::accumulator::{
    Accumulator, AccumulatorConfig, AppendOutcome, BatchCompletion, CompletionWait, ProducerIdAndEpoch, TopicQueues,
};
use self::sender::{SenderConfig, SenderShared};
use self::transaction::TransactionManager;
use crate::connection::ConnectionConfig;
use crate::error::{Error, Result};
use crate::metadata::{Cluster, ClusterConfig};
use crate::protocol::compression::Compression;
use crate::protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};
use crate::protocol::record::{
    record_size_estimate, Record, RecordHeader, BATCH_HEADER_BYTES, NO_PRODUCER_EPOCH, NO_PRODUCER_ID,
};
use crate::protocol::{str_bytes, ApiKey, ErrorCode};

/// Producer settings, by the Java client's names (`linger.ms` is `linger_ms`).
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// `host:port` pairs to bootstrap from.
    pub bootstrap_servers: Vec<String>,
    pub client_id: String,
    /// 0 (no response), 1 (leader) or -1 (all in-sync replicas).
    pub acks: i16,
    /// How long a batch waits for more records before it is sent. Default 5.
    pub linger_ms: u64,
    /// Target uncompressed size of one batch in bytes. Default 16384.
    pub batch_size: usize,
    /// Bytes of records buffered before `send` waits. Default 32 MiB.
    pub buffer_memory: usize,
    /// Codec for batches (`compression.type`). Default none.
    pub compression: Compression,
    /// Attempts after the first for a batch that failed retriably. Default unbounded; the
    /// delivery timeout bounds retrying instead.
    pub retries: u32,
    pub retry_backoff_ms: u64,
    /// Per-request timeout, also sent to the broker as the Produce timeout. Default 30000.
    pub request_timeout_ms: u64,
    /// Upper bound on the time from `send` to the delivery outcome. Default 120000.
    pub delivery_timeout_ms: u64,
    /// How long `send` may wait for buffer memory or metadata. Default 60000.
    pub max_block_ms: u64,
    /// Producer id and per-partition sequence numbers so retries cannot duplicate or reorder.
    /// Default true; in effect only with `acks = -1` and at most 5 requests in flight per
    /// connection (as the Java client, which turns it off when those are set otherwise).
    pub enable_idempotence: bool,
    /// Produce requests in flight per broker (and batches in flight per partition). Default 5.
    pub max_in_flight_requests_per_connection: usize,
    /// Largest Produce request in bytes (and largest record). Default 1 MiB.
    pub max_request_size: usize,
    /// Largest response accepted from a broker.
    pub max_response_bytes: usize,
    /// `transactional.id`: makes this a transactional producer (see the module docs). Needs
    /// idempotence (`enable_idempotence`, `acks = -1`, at most 5 requests in flight). Default
    /// none.
    pub transactional_id: Option<String>,
    /// `transaction.timeout.ms`: the coordinator aborts a transaction open longer than this.
    /// Default 60000.
    pub transaction_timeout_ms: u64,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            bootstrap_servers: vec!["127.0.0.1:9092".into()],
            client_id: "spate-producer".into(),
            acks: -1,
            linger_ms: 5,
            batch_size: 16384,
            buffer_memory: 32 * 1024 * 1024,
            compression: Compression::None,
            retries: u32::MAX,
            retry_backoff_ms: 100,
            request_timeout_ms: 30_000,
            delivery_timeout_ms: 120_000,
            max_block_ms: 60_000,
            enable_idempotence: true,
            max_in_flight_requests_per_connection: 5,
            max_request_size: 1024 * 1024,
            max_response_bytes: 100 * 1024 * 1024,
            transactional_id: None,
            transaction_timeout_ms: 60_000,
        }
    }
}

/// Largest `max_in_flight_requests_per_connection` idempotence allows (Kafka's limit: the broker
/// remembers the last five batches per producer and partition).
const MAX_IN_FLIGHT_IDEMPOTENT: usize = 5;

impl ProducerConfig {
    /// Checks the settings; returns whether idempotence is in effect.
    pub fn validate(&self) -> Result<bool> {
        let bad = |m: String| Err(Error::Config(m));
        if self.bootstrap_servers.is_empty() {
            return bad("bootstrap.servers is empty".into());
        }
        if ![0, 1, -1].contains(&self.acks) {
            return bad(format!("acks must be 0, 1 or -1 (all), not {}", self.acks));
        }
        if self.batch_size == 0 || self.batch_size > i32::MAX as usize {
            return bad(format!("batch.size {} is out of range", self.batch_size));
        }
        if self.max_request_size <= BATCH_HEADER_BYTES || self.max_request_size > i32::MAX as usize {
            return bad(format!("max.request.size {} is out of range", self.max_request_size));
        }
        if self.buffer_memory < self.batch_size || self.buffer_memory > u32::MAX as usize {
            return bad(format!(
                "buffer.memory {} must be at least batch.size {} and below 4 GiB",
                self.buffer_memory, self.batch_size
            ));
        }
        if self.max_in_flight_requests_per_connection == 0 {
            return bad("max.in.flight.requests.per.connection must be at least 1".into());
        }
        if self.request_timeout_ms == 0 || self.request_timeout_ms > i32::MAX as u64 {
            return bad(format!("request.timeout.ms {} is out of range", self.request_timeout_ms));
        }
        let idempotent = self.enable_idempotence
            && self.acks == -1
            && self.max_in_flight_requests_per_connection <= MAX_IN_FLIGHT_IDEMPOTENT;
        if let Some(id) = &self.transactional_id {
            if id.is_empty() {
                return bad("transactional.id must not be empty".into());
            }
            if !idempotent {
                // Java refuses the same: a transaction's batches need sequence numbers.
                return bad(format!(
                    "transactional.id needs idempotence: enable.idempotence=true, acks=-1 and \
                     max.in.flight.requests.per.connection <= {MAX_IN_FLIGHT_IDEMPOTENT}"
                ));
            }
            if self.transaction_timeout_ms == 0 || self.transaction_timeout_ms > i32::MAX as u64 {
                return bad(format!("transaction.timeout.ms {} is out of range", self.transaction_timeout_ms));
            }
        }
        Ok(idempotent)
    }
}

/// One record to send. Without a partition, keyed records go to murmur2(key) and unkeyed ones to
/// the sticky partition; without a timestamp, the current time is used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    pub partition: Option<i32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    pub fn new(value: impl Into<Bytes>) -> Self {
        ProducerRecord { value: Some(value.into()), ..Default::default() }
    }

    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn with_header(mut self, key: impl Into<String>, value: Option<Bytes>) -> Self {
        self.headers.push(RecordHeader { key: key.into(), value });
        self
    }

    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }
}

/// Where a record was written. `offset` is -1 with acks=0 (no answer to learn it from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    pub partition: i32,
    pub offset: i64,
}

/// Resolves when the record's batch is acknowledged (or has failed for good). Dropping it does
/// not cancel the send.
pub struct DeliveryFuture {
    completion: Arc<BatchCompletion>,
    relative_offset: i32,
}

impl std::fmt::Debug for DeliveryFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryFuture")
            .field("topic", &self.completion.topic)
            .field("partition", &self.completion.partition)
            .field("relative_offset", &self.relative_offset)
            .finish()
    }
}

impl DeliveryFuture {
    pub fn partition(&self) -> i32 {
        self.completion.partition
    }
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let partition = self.completion.partition;
        self.completion.poll_result(cx).map(|result| match result {
            Ok(base_offset) => Ok(RecordMetadata {
                partition,
                offset: if base_offset < 0 { -1 } else { base_offset.saturating_add(self.relative_offset as i64) },
            }),
            Err(source) => Err(Error::Delivery { topic: self.completion.topic.to_string(), partition, source }),
        })
    }
}

struct ProducerInner {
    shared: Arc<SenderShared>,
    max_request_size: usize,
    buffer_memory: usize,
    max_block: Duration,
    sticky_rng: Mutex<SmallRng>,
    sender: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ProducerInner {
    fn drop(&mut self) {
        // The sender finishes what was sent, then stops.
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wakeup.notify_one();
    }
}

/// An async Kafka producer. Cheap to clone; all clones share batches and connections.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<ProducerInner>,
}

impl Producer {
    /// Connects, obtains a producer id when idempotent, and starts the sender task.
    pub async fn new(config: ProducerConfig) -> Result<Producer> {
        let idempotent = config.validate()?;
        let mut cluster_config = ClusterConfig::new(config.bootstrap_servers.clone());
        cluster_config.connection = ConnectionConfig {
            client_id: Some(config.client_id.clone()),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            max_response_bytes: config.max_response_bytes,
            ..ConnectionConfig::default()
        };
        cluster_config.allow_auto_topic_creation = true;
        let cluster = Cluster::connect(cluster_config).await?;
        // A transactional producer gets its id from its coordinator in `init_transactions`.
        let (producer_id, producer_epoch) = if idempotent && config.transactional_id.is_none() {
            let max_block = Duration::from_millis(config.max_block_ms);
            init_producer_id(&cluster, max_block, Duration::from_millis(config.retry_backoff_ms)).await?
        } else {
            (NO_PRODUCER_ID, NO_PRODUCER_EPOCH)
        };
        debug!(producer_id, producer_epoch, idempotent, "producer started");

        let acc = Accumulator::new(AccumulatorConfig {
            batch_size: config.batch_size,
            linger_ms: config.linger_ms as i64,
            compression: config.compression,
            max_in_flight_per_partition: config.max_in_flight_requests_per_connection,
            retry_backoff_ms: config.retry_backoff_ms as i64,
            idempotent,
            transactional: config.transactional_id.is_some(),
            producer: ProducerIdAndEpoch { producer_id, producer_epoch },
        });
        let sender_config = SenderConfig {
            acks: config.acks,
            request_timeout_ms: config.request_timeout_ms as i32,
            retries: config.retries,
            retry_backoff_ms: config.retry_backoff_ms as i64,
            delivery_timeout_ms: config.delivery_timeout_ms as i64,
            max_in_flight_requests_per_connection: config.max_in_flight_requests_per_connection,
            max_request_size: config.max_request_size,
            compression: config.compression,
            transactional_id: config.transactional_id.as_deref().map(str_bytes),
        };
        let txn = config.transactional_id.as_ref().map(|id| {
            TransactionManager::new(
                id.clone(),
                config.transaction_timeout_ms as i32,
                cluster.config().connection.clone(),
                Duration::from_millis(config.retry_backoff_ms),
            )
        });
        let memory = Arc::new(Semaphore::new(config.buffer_memory));
        let shared = Arc::new(SenderShared::new(acc, cluster, memory, sender_config, txn));
        let sender = tokio::spawn(sender::run(shared.clone()));
        Ok(Producer {
            inner: Arc::new(ProducerInner {
                shared,
                max_request_size: config.max_request_size,
                buffer_memory: config.buffer_memory,
                max_block: Duration::from_millis(config.max_block_ms),
                sticky_rng: Mutex::new(SmallRng::from_os_rng()),
                sender: tokio::sync::Mutex::new(Some(sender)),
            }),
        })
    }

    /// The cluster view this producer uses (for partition counts and leaders).
    pub fn cluster(&self) -> &Cluster {
        &self.inner.shared.cluster
    }

    /// Queues a record. Returns once it is in a batch (waiting only for buffer memory or, on a
    /// topic's first use, its metadata); the returned future resolves when it is acknowledged.
    pub async fn send(&self, topic: &str, record: ProducerRecord) -> Result<DeliveryFuture> {
        // A loop of sends rarely waits on anything, so without this it would hold its worker
        // thread for as long as it has records: the sender task it wakes (queued behind it on
        // the same worker) could not start AddPartitionsToTxn or the batches linger released
        // until the loop awaited something else, e.g. commit_transaction. Every 128 sends
        // (tokio's budget) this lets the worker run them.
        tokio::task::coop::consume_budget().await;
        let inner = &*self.inner;
        let shared = &*inner.shared;
        if shared.closing.load(Ordering::Acquire) {
            return Err(Error::ProducerClosed);
        }
        if let Some(txn) = &shared.txn {
            txn.check_send()?;
        }
        let queues = match shared.acc.topic(topic) {
            Some(q) => q,
            None => {
                let metadata =
                    tokio::time::timeout(inner.max_block, shared.cluster.topic(topic)).await.map_err(|_| {
                        Error::Timeout {
                            peer: format!("metadata of {topic}"),
                            timeout_ms: inner.max_block.as_millis() as u64,
                        }
                    })??;
                shared.acc.ensure_topic(topic, metadata.partitions.len() as i32)
            }
        };
        let ProducerRecord { partition, key, value, headers, timestamp_ms } = record;
        let record = Record { key, value, headers, timestamp_ms: timestamp_ms.unwrap_or_else(wall_clock_ms) };
        let size = record_size_estimate(&record);
        if size + BATCH_HEADER_BYTES > inner.max_request_size || size > inner.buffer_memory {
            return Err(Error::RecordTooLarge { size, max: inner.max_request_size.min(inner.buffer_memory) });
        }
        let num_partitions = queues.num_partitions();
        if let Some(p) = partition {
            if p < 0 || p >= num_partitions {
                return Err(Error::UnknownPartition { topic: topic.to_string(), partition: p });
            }
        }
        self.reserve(size).await?;

        let now_ms = shared.now_ms();
        let outcome = match (partition, &record.key) {
            (Some(p), _) => shared.acc.append(&queues, p, &record, size, now_ms, false),
            (None, Some(key)) => {
                let p = partitioner::partition_for_key(key, num_partitions);
                shared.acc.append(&queues, p, &record, size, now_ms, false)
            }
            (None, None) => {
                let current = queues.sticky.load(Ordering::Relaxed);
                if current < 0 || current >= num_partitions {
                    let p = self.switch_sticky(&queues, current);
                    shared.acc.append(&queues, p, &record, size, now_ms, false)
                } else {
                    match shared.acc.append(&queues, current, &record, size, now_ms, true) {
                        AppendOutcome::NeedsNewBatch { batch_full } => {
                            if batch_full {
                                shared.wakeup.notify_one();
                            }
                            // KIP-480: a new batch is where the sticky partition moves on.
                            let p = self.switch_sticky(&queues, current);
                            shared.acc.append(&queues, p, &record, size, now_ms, false)
                        }
                        appended => appended,
                    }
                }
            }
        };
        match outcome {
            AppendOutcome::Appended { completion, relative_offset, new_batch, batch_full, txn_partition_added } => {
                if new_batch || batch_full || txn_partition_added {
                    shared.wakeup.notify_one();
                }
                Ok(DeliveryFuture { completion, relative_offset })
            }
            AppendOutcome::NeedsNewBatch { .. } => unreachable!("append without abort_on_new_batch always appends"),
        }
    }

    /// Moves the topic's sticky partition away from `previous` (unless another sender already
    /// did) and returns the new one.
    fn switch_sticky(&self, queues: &TopicQueues, previous: i32) -> i32 {
        let next = {
            let mut rng = self.inner.sticky_rng.lock().expect("rng lock");
            partitioner::next_sticky_partition(&mut *rng, queues.num_partitions(), previous)
        };
        match queues.sticky.compare_exchange(previous, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => next,
            Err(current) => current,
        }
    }

    /// Takes `bytes` of buffer memory, waiting (at most `max.block.ms`) while the buffer is full.
    async fn reserve(&self, bytes: usize) -> Result<()> {
        let memory = &self.inner.shared.memory;
        let permits = bytes as u32;
        match memory.try_acquire_many(permits) {
            Ok(p) => p.forget(),
            Err(_) => {
                let shared = &self.inner.shared;
                shared.memory_waiters.fetch_add(1, Ordering::AcqRel);
                shared.wakeup.notify_one();
                let wait = tokio::time::timeout(self.inner.max_block, memory.acquire_many(permits)).await;
                shared.memory_waiters.fetch_sub(1, Ordering::AcqRel);
                match wait {
                    Ok(Ok(p)) => p.forget(),
                    Ok(Err(_)) => return Err(Error::ProducerClosed),
                    Err(_) => return Err(Error::BufferFull { waited_ms: self.inner.max_block.as_millis() as u64 }),
                }
            }
        }
        Ok(())
    }

    /// Sends everything queued now without waiting for linger, and waits until all of it has
    /// completed (successfully or not; the outcomes are in the delivery futures).
    pub async fn flush(&self) -> Result<()> {
        let shared = &self.inner.shared;
        shared.flushing.fetch_add(1, Ordering::AcqRel);
        shared.wakeup.notify_one();
        for completion in shared.acc.incomplete() {
            let _ = CompletionWait(completion).await;
        }
        shared.flushing.fetch_sub(1, Ordering::AcqRel);
        Ok(())
    }

    /// Stops accepting records, sends what is queued and waits for the sender to finish. Other
    /// clones then fail `send` with [`Error::ProducerClosed`].
    pub async fn close(&self) -> Result<()> {
        self.abort_open_transaction().await;
        let shared = &self.inner.shared;
        shared.closing.store(true, Ordering::Release);
        shared.wakeup.notify_one();
        let handle = self.inner.sender.lock().await.take();
        if let Some(handle) = handle {
            if let Err(e) = handle.await {
                return Err(Error::Config(format!("producer sender task failed: {e}")));
            }
        }
        Ok(())
    }
}

fn wall_clock_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Asks any broker for a producer id, retrying retriable failures (a broker going down, no
/// controller reachable yet) until `max_block`.
async fn init_producer_id(cluster: &Cluster, max_block: Duration, retry_backoff: Duration) -> Result<(i64, i16)> {
    let deadline = tokio::time::Instant::now() + max_block;
    loop {
        let error = match init_producer_id_once(cluster).await {
            Ok(ids) => return Ok(ids),
            Err(e) => e,
        };
        if !error.is_retriable() || tokio::time::Instant::now() + retry_backoff >= deadline {
            return Err(error);
        }
        debug!(error = %error, "InitProducerId failed, retrying");
        tokio::time::sleep(retry_backoff).await;
    }
}

/// One InitProducerId without a transactional id: the broker answers with a new producer id at
/// epoch 0 (Kafka does not bump an idempotent producer's epoch on the broker; the producer bumps
/// it itself, see the accumulator).
async fn init_producer_id_once(cluster: &Cluster) -> Result<(i64, i16)> {
    let conn = cluster.any_broker().await?;
    let request = InitProducerIdRequest::default()
        // The generated default is an empty transactional id, which asks for a transaction.
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000);
    let response: InitProducerIdResponse = match conn.call(ApiKey::InitProducerId, &request).await {
        Ok((_, r)) => r,
        Err(e) => {
            cluster.report_failure(&conn);
            return Err(e);
        }
    };
    let code = ErrorCode(response.error_code);
    if !code.is_ok() {
        return Err(Error::broker(code, "InitProducerId"));
    }
    Ok((response.producer_id.0, response.producer_epoch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_broker::TestBroker;
    use std::collections::BTreeMap;

    fn config(addr: &str) -> ProducerConfig {
        ProducerConfig { bootstrap_servers: vec![addr.to_string()], linger_ms: 2, ..ProducerConfig::default() }
    }

    fn offsets_by_partition(results: &[RecordMetadata]) -> BTreeMap<i32, Vec<i64>> {
        let mut by: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for m in results {
            by.entry(m.partition).or_default().push(m.offset);
        }
        by
    }

    #[tokio::test]
    async fn delivers_keyed_and_unkeyed_records_with_contiguous_offsets() {
        let broker = TestBroker::start(&[("t", 3)]).await;
        let producer = Producer::new(config(&broker.addr)).await.unwrap();
        let mut futures = Vec::new();
        for i in 0..300 {
            let key = format!("k{i}");
            let f = producer.send("t", ProducerRecord::new(format!("v{i}")).with_key(key.clone())).await.unwrap();
            assert_eq!(f.partition(), partitioner::partition_for_key(key.as_bytes(), 3));
            futures.push(f);
        }
        for i in 0..300 {
            futures.push(producer.send("t", ProducerRecord::new(format!("u{i}"))).await.unwrap());
        }
        let mut results = Vec::new();
        for f in futures {
            results.push(f.await.unwrap());
        }
        let mut total = 0;
        for (partition, mut offsets) in offsets_by_partition(&results) {
            offsets.sort();
            let n = offsets.len() as i64;
            assert_eq!(offsets, (0..n).collect::<Vec<_>>(), "partition {partition}");
            assert_eq!(broker.state.lock().unwrap().topics["t"][partition as usize].log_end_offset, n);
            total += n;
        }
        assert_eq!(total, 600);
        producer.close().await.unwrap();
        assert!(matches!(producer.send("t", ProducerRecord::new("x")).await, Err(Error::ProducerClosed)));
    }

    #[tokio::test]
    async fn retries_after_not_leader_keep_order_and_sequences() {
        let broker = TestBroker::start(&[("t", 1)]).await;
        broker.state.lock().unwrap().fail_produce_requests = 3;
        let mut c = config(&broker.addr);
        c.batch_size = 300;
        c.retry_backoff_ms = 1;
        let producer = Producer::new(c).await.unwrap();
        let mut futures = Vec::new();
        for i in 0..100 {
            futures.push(
                producer.send("t", ProducerRecord::new(format!("value-{i:04}")).with_partition(0)).await.unwrap(),
            );
        }
        producer.flush().await.unwrap();
        let mut offsets = Vec::new();
        for f in futures {
            offsets.push(f.await.unwrap().offset);
        }
        // Send order is offset order, with no gaps or duplicates despite the retries.
        assert_eq!(offsets, (0..100).collect::<Vec<_>>());
        let state = broker.state.lock().unwrap();
        assert!(state.produce_requests > 3);
        assert_eq!(state.topics["t"][0].log_end_offset, 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_requests_reach_the_broker_in_sequence_order() {
        let broker = TestBroker::start(&[("t", 2)]).await;
        let mut c = config(&broker.addr);
        c.batch_size = 200;
        let producer = Producer::new(c).await.unwrap();
        for i in 0..3000 {
            producer.send("t", ProducerRecord::new(format!("value-{i:06}")).with_partition(i % 2)).await.unwrap();
        }
        producer.flush().await.unwrap();
        let state = broker.state.lock().unwrap();
        assert_eq!(state.out_of_order, 0, "requests were reordered on the way to the broker");
        assert_eq!(state.topics["t"][0].log_end_offset + state.topics["t"][1].log_end_offset, 3000);
    }

    #[tokio::test]
    async fn send_waits_for_buffer_memory_instead_of_failing() {
        let broker = TestBroker::start(&[("t", 2)]).await;
        let mut c = config(&broker.addr);
        c.batch_size = 1024;
        c.buffer_memory = 1024;
        let producer = Producer::new(c).await.unwrap();
        let mut last = None;
        for i in 0..2000 {
            last =
                Some(producer.send("t", ProducerRecord::new(vec![b'x'; 100]).with_key(format!("{i}"))).await.unwrap());
        }
        last.unwrap().await.unwrap();
        producer.flush().await.unwrap();
        let state = broker.state.lock().unwrap();
        let total: i64 = state.topics["t"].iter().map(|p| p.log_end_offset).sum();
        assert_eq!(total, 2000);
    }

    #[tokio::test]
    async fn acks_zero_completes_without_offsets() {
        let broker = TestBroker::start(&[("t", 1)]).await;
        let mut c = config(&broker.addr);
        c.acks = 0;
        let producer = Producer::new(c).await.unwrap();
        let f = producer.send("t", ProducerRecord::new("v")).await.unwrap();
        assert_eq!(f.await.unwrap(), RecordMetadata { partition: 0, offset: -1 });
        producer.close().await.unwrap();
    }

    #[tokio::test]
    async fn rejects_oversized_records_and_bad_partitions() {
        let broker = TestBroker::start(&[("t", 1)]).await;
        let mut c = config(&broker.addr);
        c.max_request_size = 1000;
        let producer = Producer::new(c).await.unwrap();
        let err = producer.send("t", ProducerRecord::new(vec![0u8; 2000])).await.unwrap_err();
        assert!(matches!(err, Error::RecordTooLarge { .. }));
        let err = producer.send("t", ProducerRecord::new("v").with_partition(1)).await.unwrap_err();
        assert!(matches!(err, Error::UnknownPartition { partition: 1, .. }));
    }

    #[test]
    fn config_validation_and_idempotence_conditions() {
        let c = ProducerConfig::default();
        assert!(c.validate().unwrap());
        assert!(!ProducerConfig { acks: 1, ..c.clone() }.validate().unwrap());
        assert!(!ProducerConfig { max_in_flight_requests_per_connection: 6, ..c.clone() }.validate().unwrap());
        assert!(ProducerConfig { acks: 2, ..c.clone() }.validate().is_err());
        assert!(ProducerConfig { buffer_memory: 10, ..c }.validate().is_err());
    }
}

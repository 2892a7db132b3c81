//! Task threads. Each task runs its connector code on an OS thread of its own (connector code
//! may block, as in Kafka Connect's `WorkerTask`); Kafka I/O goes through the worker's async
//! clients with one `block_on` per batch, never per record.
//!
//! **Source**: poll → transforms → converters → produce (`acks=all`). A batch's source offsets
//! become committable once its records (and dead-lettered failures) are acknowledged and every
//! earlier batch is; committable offsets are written to the offsets topic every
//! `offset.flush.interval.ms` and at stop. At most [`MAX_UNACKED_BATCHES`] batches are in
//! flight and the producer's `buffer.memory` bounds their bytes, so a slow broker slows the
//! task instead of growing memory.
//!
//! **Sink**: a consumer in group `connect-<name>` → converters → transforms → `put`; every
//! `offset.flush.interval.ms`, `pre_commit` says what is durable and only that is committed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value as Json};
use spate_client::{
    Consumer, ConsumerConfig, ConsumerRecord, DeliveryFuture, OffsetAndMetadata, Producer, ProducerConfig,
    ProducerRecord, TopicPartition,
};
use tokio::runtime::Handle;
use tracing::{info, warn};

use super::errors::{route_failures, ErrorPolicy, RawRecord, TaskRef};
use super::kafka_log::KafkaLog;
use super::stores::{offset_key, ConnectorOffsets, OffsetState};
use crate::config::Props;
use crate::connector::{FailedRecord, SinkTask, SinkTaskContext, SourceBatch, SourceTask, SourceTaskContext};
use crate::converter::{Converter, Side};
use crate::error::{ConnectError, Result};
use crate::record::{ConnectRecord, KafkaCoordinates};
use crate::transform::TransformChain;

/// The largest record (key, value and headers) a source task hands to the producer: its 1 MiB
/// `max.request.size` less room for the batch and record framing. Bigger records are failures
/// (stage `KAFKA_PRODUCE`) routed by `errors.tolerance`, not a task failure that would repeat at
/// every restart.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024 - 16 * 1024;

/// Source batches produced but not yet acknowledged, at most.
pub const MAX_UNACKED_BATCHES: usize = 64;

/// Counters of one task (what `GET /connectors/{name}/status` reports under `metrics`; the
/// same events go to the `metrics` facade).
#[derive(Debug, Default)]
pub struct TaskMetrics {
    /// Records polled from the source or read from Kafka.
    pub records_in: AtomicU64,
    /// Records produced to Kafka or written by the sink.
    pub records_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub errors: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Microseconds the last batch took from poll to hand-off.
    pub last_batch_latency_us: AtomicU64,
    /// Sink: records between the committed offsets and the end of the assigned partitions
    /// (last measured).
    pub lag: AtomicU64,
}

impl TaskMetrics {
    /// The counters as JSON.
    pub fn to_json(&self) -> Json {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "records_in": g(&self.records_in),
            "records_out": g(&self.records_out),
            "bytes_in": g(&self.bytes_in),
            "bytes_out": g(&self.bytes_out),
            "errors": g(&self.errors),
            "dead_lettered": g(&self.dead_lettered),
            "batch_latency_us": g(&self.last_batch_latency_us),
            "lag": g(&self.lag),
        })
    }
}

/// Stop and pause switches of a running task.
#[derive(Debug, Default)]
pub struct TaskControl {
    pub stop: AtomicBool,
    pub paused: AtomicBool,
    /// Set when the task did not stop within `task.shutdown.graceful.timeout.ms` and its
    /// worker moved on without it: whatever it does afterwards (store offsets, report a state)
    /// is dropped, because another worker may run the task by then.
    pub fenced: AtomicBool,
}

/// Where a task reports its state (RUNNING, PAUSED, FAILED with a trace, UNASSIGNED at stop)
/// and the topics it uses.
pub trait StatusSink: Send + Sync {
    fn task_state(&self, connector: &str, task: u32, state: &str, trace: Option<String>);
    fn topic_used(&self, connector: &str, task: u32, topic: &str);
}

/// Everything a task thread needs from its worker.
#[derive(Clone)]
pub struct TaskEnv {
    pub handle: Handle,
    pub connector: String,
    pub task: u32,
    pub connector_config: Props,
    pub task_config: Props,
    pub worker_defaults: Props,
    pub plugins_dir: PathBuf,
    pub producer: Producer,
    /// With `exactly.once.source.support=enabled`, the config of this source task's own
    /// transactional producer (its `transactional.id` set); `None` otherwise.
    pub transactional_producer: Option<ProducerConfig>,
    pub admin: spate_client::Admin,
    pub offsets: Arc<Mutex<OffsetState>>,
    pub offset_log: Arc<KafkaLog>,
    pub consumer_config: ConsumerConfig,
    pub offset_flush_interval: Duration,
    pub shutdown_timeout: Duration,
    pub control: Arc<TaskControl>,
    pub metrics: Arc<TaskMetrics>,
    pub status: Arc<dyn StatusSink>,
}

/// What every task builds from its connector config.
struct Pipeline {
    chain: TransformChain,
    key_converter: Converter,
    value_converter: Converter,
    policy: ErrorPolicy,
    task_ref: TaskRef,
}

impl Pipeline {
    fn new(env: &TaskEnv) -> Result<Pipeline> {
        let policy = ErrorPolicy::from_config(&env.connector_config)?;
        if let Some(topic) = &policy.dlq_topic {
            // Kafka Connect creates the dead-letter topic (one partition) with the configured
            // replication factor; an existing topic is used as it is.
            let new = spate_client::admin::NewTopic::new(topic.clone(), 1, policy.dlq_replication_factor);
            match env.handle.block_on(env.admin.create_topic(new)) {
                Ok(()) => info!(connector = %env.connector, %topic, "created dead-letter topic"),
                Err(e) if e.code() == Some(spate_client::protocol::ErrorCode::TOPIC_ALREADY_EXISTS) => {}
                Err(e) => {
                    warn!(connector = %env.connector, %topic, error = %e, "cannot create dead-letter topic; it will be auto-created")
                }
            }
        }
        Ok(Pipeline {
            chain: TransformChain::from_config(&env.connector_config, &env.plugins_dir)?,
            key_converter: Converter::from_config(Side::Key, &env.connector_config, &env.worker_defaults)?,
            value_converter: Converter::from_config(Side::Value, &env.connector_config, &env.worker_defaults)?,
            policy,
            task_ref: TaskRef { connector: env.connector.clone(), task: env.task },
        })
    }

    /// Routes failed records per `errors.tolerance` (log, dead-letter topic, or fail).
    fn route_failures(
        &self,
        env: &TaskEnv,
        failed: Vec<(FailedRecord, Option<RawRecord>)>,
    ) -> Result<Vec<DeliveryFuture>> {
        route_failures(
            &self.policy,
            &self.task_ref,
            failed,
            &self.key_converter,
            &self.value_converter,
            &env.producer,
            &env.handle,
            &env.metrics.dead_lettered,
        )
    }
}

/// Retries `op` per `errors.retry.timeout` (doubling waits up to `errors.retry.delay.max.ms`),
/// giving up early when the task is asked to stop.
fn with_retries<T>(policy: &ErrorPolicy, control: &TaskControl, mut op: impl FnMut() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(300);
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(e) => {
                let elapsed = start.elapsed().as_millis() as i64;
                let retry =
                    policy.retry_timeout_ms < 0 || elapsed + (delay.as_millis() as i64) < policy.retry_timeout_ms;
                if !retry || control.stop.load(Ordering::Relaxed) {
                    return Err(e);
                }
                warn!(error = %e, delay_ms = delay.as_millis() as u64, "operation failed; retrying (errors.retry.timeout)");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(policy.retry_delay_max_ms.max(1)));
            }
        }
    }
}

/// Runs a source task until stopped or failed. Reports its own states.
pub fn run_source(env: TaskEnv, mut task: Box<dyn SourceTask>) {
    let result = match env.transactional_producer.clone() {
        Some(config) => match source_loop_exactly_once(&env, task.as_mut(), config) {
            Err(e) if is_fenced(&e) => {
                // Not a failure of this task: a newer instance owns it (and its status) now.
                warn!(connector = %env.connector, task = env.task, error = %e, "fenced by a newer instance of this task; stopping");
                task.stop();
                return;
            }
            other => other,
        },
        None => {
            check_exactly_once_support(&env.connector_config, false).and_then(|()| source_loop(&env, task.as_mut()))
        }
    };
    task.stop();
    finish(&env, result);
}

fn finish(env: &TaskEnv, result: Result<()>) {
    if env.control.fenced.load(Ordering::Relaxed) {
        warn!(connector = %env.connector, task = env.task, "task stopped after its worker gave up on it; its outcome is dropped");
        return;
    }
    match result {
        Ok(()) => {
            info!(connector = %env.connector, task = env.task, "task stopped");
        }
        Err(e) => {
            warn!(connector = %env.connector, task = env.task, error = %e, "task failed");
            env.status.task_state(&env.connector, env.task, "FAILED", Some(format!("{e}\n{e:?}")));
        }
    }
}

struct UnackedBatch {
    offsets: Vec<(Json, Json)>,
    acked: bool,
}

/// Reads the offsets topic to its end, then starts the task with its stored offsets. The task
/// may have run on another worker until this rebalance: without every offset it stored there
/// it would repeat records.
fn start_source_task(env: &TaskEnv, task: &mut dyn SourceTask) -> Result<()> {
    env.handle.block_on(env.offset_log.read_to_end(Duration::from_secs(60)))?;
    let context = SourceTaskContext {
        connector: env.connector.clone(),
        task_id: env.task,
        offsets: Arc::new(ConnectorOffsets { state: env.offsets.clone(), connector: env.connector.clone() }),
    };
    task.start(&env.task_config, &context)?;
    env.status.task_state(&env.connector, env.task, "RUNNING", None);
    Ok(())
}

fn source_loop(env: &TaskEnv, task: &mut dyn SourceTask) -> Result<()> {
    let mut p = Pipeline::new(env)?;
    start_source_task(env, task)?;
    let (ack_tx, ack_rx) = mpsc::channel::<(u64, std::result::Result<(), String>)>();
    let mut unacked: VecDeque<(u64, UnackedBatch)> = VecDeque::new();
    let mut next_seq = 0u64;
    let mut committable: BTreeMap<String, (Json, Json)> = BTreeMap::new();
    let mut next_flush = Instant::now() + env.offset_flush_interval;
    let mut topics_seen: BTreeSet<Arc<str>> = BTreeSet::new();
    let mut paused_reported = false;
    let drain = |unacked: &mut VecDeque<(u64, UnackedBatch)>,
                 committable: &mut BTreeMap<String, (Json, Json)>,
                 wait: Option<Duration>|
     -> Result<()> {
        let mut first = true;
        loop {
            let msg = match (first, wait) {
                (true, Some(w)) => ack_rx.recv_timeout(w).ok(),
                _ => ack_rx.try_recv().ok(),
            };
            first = false;
            let Some((seq, result)) = msg else { break };
            if let Err(e) = result {
                return Err(ConnectError::Internal(format!("producing a source batch failed: {e}")));
            }
            if let Some((_, b)) = unacked.iter_mut().find(|(s, _)| *s == seq) {
                b.acked = true;
            }
        }
        while unacked.front().is_some_and(|(_, b)| b.acked) {
            let (_, b) = unacked.pop_front().expect("front checked");
            for (partition, offset) in b.offsets {
                committable.insert(partition.to_string(), (partition, offset));
            }
        }
        Ok(())
    };
    let commit = |committable: &mut BTreeMap<String, (Json, Json)>, task: &mut dyn SourceTask| -> Result<()> {
        if committable.is_empty() || env.control.fenced.load(Ordering::Relaxed) {
            return Ok(());
        }
        let entries: Vec<(Json, Json)> = std::mem::take(committable).into_values().collect();
        env.handle.block_on(async {
            let mut deliveries = Vec::with_capacity(entries.len());
            for (partition, offset) in &entries {
                let key = Bytes::from(offset_key(&env.connector, partition));
                // A null offset removes the partition (a tombstone, as Kafka Connect writes).
                let value = (!offset.is_null()).then(|| Bytes::from(serde_json::to_vec(offset).unwrap_or_default()));
                deliveries.push(env.offset_log.send_nowait(key, value).await?);
            }
            for d in deliveries {
                d.await?;
            }
            Ok::<(), ConnectError>(())
        })?;
        apply_offsets_locally(env, &entries);
        task.commit(&entries)
    };
    // Errors leave the loop through `failure` (not `?`), so what was acknowledged before the
    // error is still stored below: a restart then repeats less.
    let mut failure: Option<ConnectError> = None;
    macro_rules! attempt {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => {
                    failure = Some(e.into());
                    break;
                }
            }
        };
    }
    while !env.control.stop.load(Ordering::Relaxed) {
        attempt!(drain(&mut unacked, &mut committable, None));
        if Instant::now() >= next_flush {
            attempt!(commit(&mut committable, task));
            next_flush = Instant::now() + env.offset_flush_interval;
        }
        if paused(env, &mut paused_reported) {
            continue;
        }
        if unacked.len() >= MAX_UNACKED_BATCHES {
            attempt!(drain(&mut unacked, &mut committable, Some(Duration::from_millis(100))));
            continue;
        }
        let started = Instant::now();
        let batch = attempt!(with_retries(&p.policy, &env.control, || task.poll(Duration::from_millis(100))));
        let Some(batch) = batch else { continue };
        let Prepared { records: out, dead_letters: dlq, offsets, polled, bytes_out } =
            attempt!(prepare_batch(env, &mut p, batch, &mut topics_seen));
        let n = out.len() as u64;
        let mut deliveries: Vec<DeliveryFuture> = attempt!(env.handle.block_on(async {
            let mut d = Vec::with_capacity(out.len());
            for (topic, record) in out {
                d.push(env.producer.send(&topic, record).await?);
            }
            Ok::<_, ConnectError>(d)
        }));
        deliveries.extend(dlq);
        record_source_metrics(env, n, polled, bytes_out, started);
        let seq = next_seq;
        next_seq += 1;
        unacked.push_back((seq, UnackedBatch { offsets, acked: false }));
        let tx = ack_tx.clone();
        env.handle.spawn(async move {
            let mut result = Ok(());
            for d in deliveries {
                if let Err(e) = d.await {
                    result = Err(e.to_string());
                }
            }
            let _ = tx.send((seq, result));
        });
    }
    // Stopping (or failing): wait for what is in flight (bounded, within half of the worker's
    // patience, so the offsets reached are stored before the worker would abandon the task).
    let deadline = Instant::now() + env.shutdown_timeout / 2;
    while !unacked.is_empty() && Instant::now() < deadline {
        if let Err(e) = drain(&mut unacked, &mut committable, Some(Duration::from_millis(50))) {
            failure.get_or_insert(e);
            break;
        }
    }
    let stored = commit(&mut committable, task);
    match (failure, stored) {
        (Some(e), _) | (None, Err(e)) => Err(e),
        (None, Ok(())) => Ok(()),
    }
}

/// A polled batch, transformed and converted: what to produce, the dead-letter deliveries of
/// its failures, and the source offsets it reaches.
struct Prepared {
    records: Vec<(Arc<str>, ProducerRecord)>,
    dead_letters: Vec<DeliveryFuture>,
    offsets: Vec<(Json, Json)>,
    polled: u64,
    bytes_out: u64,
}

/// Transforms and converts one polled batch; failures go where `errors.tolerance` says.
fn prepare_batch(
    env: &TaskEnv,
    p: &mut Pipeline,
    batch: SourceBatch,
    topics_seen: &mut BTreeSet<Arc<str>>,
) -> Result<Prepared> {
    let SourceBatch { records, offsets, failed } = batch;
    let polled = records.len() as u64;
    env.metrics.records_in.fetch_add(polled, Ordering::Relaxed);
    let mut failures: Vec<FailedRecord> = failed;
    let records = p.chain.apply_batch(records, &mut failures);
    let mut out = Vec::with_capacity(records.len());
    let mut bytes_out = 0u64;
    // Records without a timestamp get the batch's (what the producer would stamp, read
    // once per batch instead of once per record).
    let batch_time_ms = wall_clock_ms();
    for mut r in records {
        r.timestamp_ms.get_or_insert(batch_time_ms);
        match convert_out(p, r) {
            Ok((topic, pr)) => {
                bytes_out += pr.value.as_ref().map_or(0, |v| v.len() as u64);
                if !topics_seen.contains(&topic) {
                    topics_seen.insert(topic.clone());
                    env.status.topic_used(&env.connector, env.task, &topic);
                }
                out.push((topic, pr));
            }
            Err((stage, error, r)) => failures.push(FailedRecord {
                record: *r,
                error: Arc::new(error),
                stage,
                class_name: converter_name(p, stage).to_owned(),
            }),
        }
    }
    env.metrics.errors.fetch_add(failures.len() as u64, Ordering::Relaxed);
    let dead_letters = p.route_failures(env, failures.into_iter().map(|f| (f, None)).collect())?;
    Ok(Prepared { records: out, dead_letters, offsets, polled, bytes_out })
}

fn record_source_metrics(env: &TaskEnv, n: u64, polled: u64, bytes_out: u64, started: Instant) {
    env.metrics.records_out.fetch_add(n, Ordering::Relaxed);
    env.metrics.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    env.metrics.last_batch_latency_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    let labels = [("connector", env.connector.clone()), ("task", env.task.to_string())];
    metrics::counter!("spate_connect_source_records_total", &labels).increment(n);
    metrics::counter!("spate_connect_source_polled_records_total", &labels).increment(polled);
    metrics::counter!("spate_connect_source_bytes_total", &labels).increment(bytes_out);
    metrics::histogram!("spate_connect_batch_latency_seconds", &labels).record(started.elapsed().as_secs_f64());
}

fn config_error(key: &str, reason: String) -> ConnectError {
    ConnectError::Config { key: key.to_owned(), reason }
}

/// Where an exactly-once source task's transactions end (`transaction.boundary`, KIP-618).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionBoundary {
    /// One transaction per polled batch (Kafka's default).
    Poll,
    /// One transaction per `transaction.boundary.interval.ms` (default: the worker's
    /// `offset.flush.interval.ms`).
    Interval(Duration),
}

impl TransactionBoundary {
    /// Reads `transaction.boundary` (and `transaction.boundary.interval.ms`) of a source
    /// connector's config. `connector` (boundaries the connector defines) is refused: no
    /// connector here defines them.
    pub fn from_config(config: &Props, flush_interval: Duration) -> Result<Self> {
        match config.get("transaction.boundary").map(|s| s.trim()).unwrap_or("poll") {
            "poll" => Ok(TransactionBoundary::Poll),
            "interval" => {
                let ms = match config.get("transaction.boundary.interval.ms") {
                    None => -1,
                    Some(v) => v.trim().parse::<i64>().map_err(|_| {
                        config_error("transaction.boundary.interval.ms", format!("must be a number, got {v}"))
                    })?,
                };
                let interval = if ms < 0 { flush_interval } else { Duration::from_millis(ms as u64) };
                if interval > MAX_TRANSACTION_INTERVAL {
                    return Err(config_error(
                        "transaction.boundary.interval.ms",
                        format!(
                            "{} ms is longer than the {} ms a task's transaction may stay open",
                            interval.as_millis(),
                            MAX_TRANSACTION_INTERVAL.as_millis()
                        ),
                    ));
                }
                Ok(TransactionBoundary::Interval(interval))
            }
            "connector" => Err(config_error(
                "transaction.boundary",
                "connector needs a connector that defines its transactions; Spate's connectors do not (use poll \
                 or interval)"
                    .into(),
            )),
            other => {
                Err(config_error("transaction.boundary", format!("must be poll, interval or connector, got {other}")))
            }
        }
    }

    /// The `transaction.timeout.ms` a task's producer needs: a transaction stays open up to
    /// the interval, then commits (the coordinator aborts one older than its timeout).
    pub fn transaction_timeout_ms(self) -> u64 {
        let open = match self {
            TransactionBoundary::Poll => Duration::ZERO,
            TransactionBoundary::Interval(every) => every,
        };
        (open + TRANSACTION_TIMEOUT_MARGIN).as_millis() as u64
    }
}

/// The longest `transaction.boundary.interval.ms` (the broker's `transaction.max.timeout.ms`
/// is 15 minutes by default; the task's timeout adds a minute to the interval).
pub const MAX_TRANSACTION_INTERVAL: Duration = Duration::from_secs(600);
/// What a task's transaction timeout adds to its interval (and is, with `poll` boundaries):
/// Kafka's default `transaction.timeout.ms`.
const TRANSACTION_TIMEOUT_MARGIN: Duration = Duration::from_secs(60);

/// `exactly.once.support=required` needs a worker with exactly-once sources.
pub fn check_exactly_once_support(config: &Props, exactly_once_enabled: bool) -> Result<()> {
    match config.get("exactly.once.support").map(|s| s.trim()).unwrap_or("requested") {
        "requested" => Ok(()),
        "required" if exactly_once_enabled => Ok(()),
        "required" => Err(config_error(
            "exactly.once.support",
            "required, but this worker runs with exactly.once.source.support disabled".into(),
        )),
        other => Err(config_error("exactly.once.support", format!("must be requested or required, got {other}"))),
    }
}

/// Whether `e` says a newer instance of this task's transactional id took over (the leader
/// fenced it before new task configs, or the task runs elsewhere now).
fn is_fenced(e: &ConnectError) -> bool {
    use spate_client::protocol::ErrorCode;
    matches!(e, ConnectError::Kafka(k)
        if matches!(k.code(), Some(ErrorCode::PRODUCER_FENCED | ErrorCode::INVALID_PRODUCER_EPOCH)))
}

/// The exactly-once source loop (KIP-618): records and the source offsets they reach are
/// written in one transaction of this task's own producer, so after any crash the offsets
/// topic (read `read_committed`) and the output agree: nothing is lost and nothing repeats.
/// Dead-letter records are the exception: they go through the worker's shared producer, at
/// least once.
fn source_loop_exactly_once(env: &TaskEnv, task: &mut dyn SourceTask, config: ProducerConfig) -> Result<()> {
    check_exactly_once_support(&env.connector_config, true)?;
    let boundary = TransactionBoundary::from_config(&env.connector_config, env.offset_flush_interval)?;
    let config = ProducerConfig { transaction_timeout_ms: boundary.transaction_timeout_ms(), ..config };
    let mut p = Pipeline::new(env)?;
    // Fence first: once init_transactions returns, no older instance of this task (a zombie on
    // a worker that lost its place) can commit again, so the offsets read next are final.
    let producer = env.handle.block_on(async {
        let producer = Producer::new(config).await?;
        producer.init_transactions().await?;
        Ok::<_, ConnectError>(producer)
    })?;
    start_source_task(env, task)?;
    let mut txn = OpenTransaction::default();
    let mut topics_seen: BTreeSet<Arc<str>> = BTreeSet::new();
    let mut paused_reported = false;
    let result = (|| -> Result<()> {
        while !env.control.stop.load(Ordering::Relaxed) {
            let due = match boundary {
                TransactionBoundary::Poll => true,
                TransactionBoundary::Interval(every) => txn.opened_at.is_some_and(|t| t.elapsed() >= every),
            };
            if due || env.control.paused.load(Ordering::Relaxed) {
                txn.commit(env, &producer, task)?;
            }
            if paused(env, &mut paused_reported) {
                continue;
            }
            let started = Instant::now();
            let batch = with_retries(&p.policy, &env.control, || task.poll(Duration::from_millis(100)))?;
            let Some(batch) = batch else { continue };
            let prepared = prepare_batch(env, &mut p, batch, &mut topics_seen)?;
            let n = prepared.records.len() as u64;
            let (polled, bytes_out) = (prepared.polled, prepared.bytes_out);
            txn.add(env, &producer, prepared)?;
            record_source_metrics(env, n, polled, bytes_out, started);
        }
        // A graceful stop commits what is open.
        txn.commit(env, &producer, task)
    })();
    if result.is_err() && txn.opened_at.is_some() {
        // Its records and offsets are discarded together; the next instance redoes them.
        let _ = env.handle.block_on(producer.abort_transaction());
    }
    let _ = env.handle.block_on(producer.close());
    result
}

/// What the current transaction of an exactly-once source task holds.
#[derive(Default)]
struct OpenTransaction {
    opened_at: Option<Instant>,
    offsets: BTreeMap<String, (Json, Json)>,
    dead_letters: Vec<DeliveryFuture>,
}

impl OpenTransaction {
    fn add(&mut self, env: &TaskEnv, producer: &Producer, prepared: Prepared) -> Result<()> {
        if self.opened_at.is_none() {
            producer.begin_transaction()?;
            self.opened_at = Some(Instant::now());
        }
        env.handle.block_on(async {
            for (topic, record) in prepared.records {
                // Delivery is settled by the commit: a failed send fails it.
                drop(producer.send(&topic, record).await?);
            }
            Ok::<_, ConnectError>(())
        })?;
        self.dead_letters.extend(prepared.dead_letters);
        for (partition, offset) in prepared.offsets {
            self.offsets.insert(partition.to_string(), (partition, offset));
        }
        Ok(())
    }

    /// Writes the offsets into the transaction and commits it; then the task hears of them.
    fn commit(&mut self, env: &TaskEnv, producer: &Producer, task: &mut dyn SourceTask) -> Result<()> {
        if self.opened_at.is_none() {
            return Ok(());
        }
        let entries: Vec<(Json, Json)> = std::mem::take(&mut self.offsets).into_values().collect();
        let dead_letters = std::mem::take(&mut self.dead_letters);
        env.handle.block_on(async {
            for (partition, offset) in &entries {
                let key = Bytes::from(offset_key(&env.connector, partition));
                let value = (!offset.is_null()).then(|| Bytes::from(serde_json::to_vec(offset).unwrap_or_default()));
                let record = ProducerRecord { key: Some(key), value, ..ProducerRecord::default() };
                drop(producer.send(env.offset_log.topic(), record).await?);
            }
            // Dead letters are not in the transaction; the offsets must not pass them unless
            // they landed.
            for d in dead_letters {
                d.await?;
            }
            producer.commit_transaction().await?;
            Ok::<_, ConnectError>(())
        })?;
        self.opened_at = None;
        apply_offsets_locally(env, &entries);
        task.commit(&entries)
    }
}

/// Applies stored offsets to this worker's view at once, so a task restarted here sees them
/// even before the tail reads them back.
fn apply_offsets_locally(env: &TaskEnv, entries: &[(Json, Json)]) {
    let mut state = env.offsets.lock().expect("offset state");
    for (partition, offset) in entries {
        let key = offset_key(&env.connector, partition);
        let value = (!offset.is_null()).then(|| serde_json::to_vec(offset).unwrap_or_default());
        state.apply(&key, value.as_deref());
    }
}

/// Whether the task is paused (then it has slept a little); reports PAUSED and RUNNING as
/// the state changes.
fn paused(env: &TaskEnv, reported: &mut bool) -> bool {
    if env.control.paused.load(Ordering::Relaxed) {
        if !*reported {
            env.status.task_state(&env.connector, env.task, "PAUSED", None);
            *reported = true;
        }
        std::thread::sleep(Duration::from_millis(100));
        return true;
    }
    if *reported {
        env.status.task_state(&env.connector, env.task, "RUNNING", None);
        *reported = false;
    }
    false
}

fn converter_name(p: &Pipeline, stage: &str) -> &'static str {
    if stage == "KAFKA_PRODUCE" {
        "org.apache.kafka.clients.producer.KafkaProducer"
    } else if stage == "KEY_CONVERTER" {
        p.key_converter.name()
    } else {
        p.value_converter.name()
    }
}

/// A conversion failure: the stage, the error, and the record back for the dead-letter path.
type ConvertFailure = (&'static str, ConnectError, Box<ConnectRecord>);

/// Converts a record for the producer, moving its headers rather than copying them.
fn convert_out(p: &Pipeline, r: ConnectRecord) -> std::result::Result<(Arc<str>, ProducerRecord), ConvertFailure> {
    let key = match p.key_converter.to_kafka(Side::Key, r.key.as_ref(), r.key_schema.as_deref()) {
        Ok(k) => k,
        Err(e) => return Err(("KEY_CONVERTER", e, Box::new(r))),
    };
    let value = match p.value_converter.to_kafka(Side::Value, r.value.as_ref(), r.value_schema.as_deref()) {
        Ok(v) => v,
        Err(e) => return Err(("VALUE_CONVERTER", e, Box::new(r))),
    };
    let size = key.as_ref().map_or(0, Bytes::len)
        + value.as_ref().map_or(0, Bytes::len)
        + r.headers.iter().map(|h| h.key.len() + h.value.as_ref().map_or(0, Bytes::len) + 8).sum::<usize>();
    if size > MAX_RECORD_BYTES {
        let error = ConnectError::Conversion {
            what: "value",
            converter: "producer",
            reason: format!("the record is {size} bytes, above the {MAX_RECORD_BYTES} bytes a produce request carries"),
        };
        return Err(("KAFKA_PRODUCE", error, Box::new(r)));
    }
    let ConnectRecord { topic, partition, headers, timestamp_ms, .. } = r;
    Ok((topic, ProducerRecord { partition, key, value, headers, timestamp_ms }))
}

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Runs a sink task until stopped or failed.
pub fn run_sink(env: TaskEnv, mut task: Box<dyn SinkTask>) {
    let result = sink_loop(&env, task.as_mut());
    task.stop();
    finish(&env, result);
}

/// The consumer group of a sink connector (Kafka Connect's `connect-<name>`).
pub fn sink_group_id(connector: &str) -> String {
    format!("connect-{connector}")
}

fn sink_loop(env: &TaskEnv, task: &mut dyn SinkTask) -> Result<()> {
    let p = Pipeline::new(env)?;
    let mut chain = p.chain;
    let p = Pipeline { chain: TransformChain::empty(), ..p };
    let mut config = env.consumer_config.clone();
    config.group_id = Some(sink_group_id(&env.connector));
    config.enable_auto_commit = false;
    config.auto_offset_reset = spate_client::AutoOffsetReset::Earliest;
    config.client_id = format!("connector-consumer-{}-{}", env.connector, env.task);
    apply_consumer_overrides(&mut config, &env.worker_defaults, "consumer.")?;
    apply_consumer_overrides(&mut config, &env.connector_config, "consumer.override.")?;
    let consumer = env.handle.block_on(Consumer::new(config))?;
    let topics: Vec<String> = env
        .connector_config
        .get("topics")
        .map(|t| t.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    match env.connector_config.get("topics.regex").filter(|r| !r.is_empty()) {
        Some(regex) => env.handle.block_on(consumer.subscribe_pattern(regex))?,
        None if !topics.is_empty() => {
            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            env.handle.block_on(consumer.subscribe(&refs))?;
            for t in &topics {
                env.status.topic_used(&env.connector, env.task, t);
            }
        }
        None => return Err(ConnectError::config("topics", "a sink connector needs topics or topics.regex")),
    }
    let context = SinkTaskContext { connector: env.connector.clone(), task_id: env.task };
    task.start(&env.task_config, &context)?;
    env.status.task_state(&env.connector, env.task, "RUNNING", None);
    let mut assigned: BTreeSet<TopicPartition> = BTreeSet::new();
    let mut current: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    let mut pending_dlq: Vec<DeliveryFuture> = Vec::new();
    let mut next_flush = Instant::now() + env.offset_flush_interval;
    let mut paused = false;
    let commit = |task: &mut dyn SinkTask,
                  current: &BTreeMap<TopicPartition, i64>,
                  pending_dlq: &mut Vec<DeliveryFuture>|
     -> Result<()> {
        if current.is_empty() {
            return Ok(());
        }
        let safe = with_retries(&p.policy, &env.control, || task.pre_commit(current))?;
        env.handle.block_on(async {
            for d in pending_dlq.drain(..) {
                d.await?;
            }
            let offsets: BTreeMap<TopicPartition, OffsetAndMetadata> =
                safe.iter().map(|(tp, o)| (tp.clone(), OffsetAndMetadata::new(*o))).collect();
            if let Err(e) = consumer.commit_sync(Some(offsets)).await {
                // A rebalance took the partitions: the next owner starts from the last
                // commit (records may repeat, never vanish).
                warn!(connector = %env.connector, task = env.task, error = %e, "offset commit failed");
            }
            Ok::<(), ConnectError>(())
        })
    };
    while !env.control.stop.load(Ordering::Relaxed) {
        let want_pause = env.control.paused.load(Ordering::Relaxed);
        if want_pause != paused {
            let parts: Vec<TopicPartition> = assigned.iter().cloned().collect();
            if want_pause {
                env.handle.block_on(consumer.pause(&parts))?;
                env.status.task_state(&env.connector, env.task, "PAUSED", None);
            } else {
                env.handle.block_on(consumer.resume(&parts))?;
                env.status.task_state(&env.connector, env.task, "RUNNING", None);
            }
            paused = want_pause;
        }
        let mut records: Vec<ConsumerRecord> = env.handle.block_on(consumer.poll(Duration::from_millis(200)))?;
        let started = Instant::now();
        // Follow the group's assignment: open what was added, close what was taken.
        let now_assigned: BTreeSet<TopicPartition> = env.handle.block_on(consumer.assignment()).into_iter().collect();
        if now_assigned != assigned {
            let revoked: Vec<TopicPartition> = assigned.difference(&now_assigned).cloned().collect();
            let added: Vec<TopicPartition> = now_assigned.difference(&assigned).cloned().collect();
            if !revoked.is_empty() {
                task.close(&revoked)?;
                for tp in &revoked {
                    current.remove(tp);
                }
            }
            let mut seeked: BTreeSet<TopicPartition> = BTreeSet::new();
            if !added.is_empty() {
                let seeks = task.open(&added)?;
                for (tp, offset) in seeks {
                    env.handle.block_on(consumer.seek(&tp, offset))?;
                    seeked.insert(tp);
                }
                if paused {
                    env.handle.block_on(consumer.pause(&added))?;
                }
            }
            // This poll ran before the task saw the change (Java's consumer calls the rebalance
            // listener inside poll; ours reports it after). Records of revoked partitions must not
            // reach `put` after `close`, and records of a partition the task just moved (an
            // exactly-once sink resuming from offsets it stores itself) were read from the old
            // position: drop them, the next poll reads from the new one (seek clears the buffer).
            records.retain(|r| {
                let tp = TopicPartition::new(r.topic.to_string(), r.partition);
                now_assigned.contains(&tp) && !seeked.contains(&tp)
            });
            assigned = now_assigned;
        }
        if !records.is_empty() {
            env.metrics.records_in.fetch_add(records.len() as u64, Ordering::Relaxed);
            let mut failures: Vec<(FailedRecord, Option<RawRecord>)> = Vec::new();
            let mut converted = Vec::with_capacity(records.len());
            let mut raw_by_offset: BTreeMap<(Arc<str>, i32, i64), RawRecord> = BTreeMap::new();
            let mut bytes_in = 0u64;
            for r in &records {
                bytes_in += r.value.as_ref().map_or(0, |v| v.len() as u64);
                current.insert(TopicPartition::new(r.topic.to_string(), r.partition), r.offset + 1);
                match convert_in(&p, r) {
                    Ok(c) => converted.push(c),
                    Err((stage, e)) => {
                        let mut rec = ConnectRecord::new(r.topic.clone(), None);
                        rec.kafka =
                            Some(KafkaCoordinates { topic: r.topic.clone(), partition: r.partition, offset: r.offset });
                        let fr = FailedRecord {
                            record: rec,
                            error: Arc::new(e),
                            stage,
                            class_name: converter_name(&p, stage).to_owned(),
                        };
                        failures.push((fr, Some(raw_of(r))));
                    }
                }
            }
            env.metrics.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
            let mut transform_failed = Vec::new();
            let converted = chain.apply_batch(converted, &mut transform_failed);
            let n = converted.len() as u64;
            // Retrying needs the batch again; without retries it is handed over, not copied.
            let mut put_failed = if p.policy.retry_timeout_ms == 0 {
                task.put(converted)?
            } else {
                with_retries(&p.policy, &env.control, || task.put(converted.clone()))?
            };
            transform_failed.append(&mut put_failed);
            if !transform_failed.is_empty() {
                for r in &records {
                    raw_by_offset.insert((r.topic.clone(), r.partition, r.offset), raw_of(r));
                }
            }
            for f in transform_failed {
                let raw = f
                    .record
                    .kafka
                    .as_ref()
                    .and_then(|k| raw_by_offset.get(&(k.topic.clone(), k.partition, k.offset)).cloned());
                failures.push((f, raw));
            }
            env.metrics.errors.fetch_add(failures.len() as u64, Ordering::Relaxed);
            let dlq = p.route_failures(env, failures)?;
            // Wait for the dead-letter writes now rather than at the next offset commit: a sink
            // that stores its own offsets with the data (Parquet, JDBC exactly.once) has already
            // moved past these records, so a crash before the acks would lose them. Failures are
            // rare, so this wait is too.
            if !dlq.is_empty() {
                env.handle.block_on(async {
                    for d in dlq {
                        d.await?;
                    }
                    Ok::<(), ConnectError>(())
                })?;
            }
            env.metrics.records_out.fetch_add(n, Ordering::Relaxed);
            env.metrics.last_batch_latency_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            let labels = [("connector", env.connector.clone()), ("task", env.task.to_string())];
            metrics::counter!("spate_connect_sink_records_total", &labels).increment(n);
            metrics::counter!("spate_connect_sink_read_records_total", &labels).increment(records.len() as u64);
            metrics::counter!("spate_connect_sink_bytes_total", &labels).increment(bytes_in);
            metrics::histogram!("spate_connect_batch_latency_seconds", &labels).record(started.elapsed().as_secs_f64());
        }
        if Instant::now() >= next_flush {
            commit(task, &current, &mut pending_dlq)?;
            let mut lag = 0u64;
            for tp in &assigned {
                if let Ok(Some(l)) = env.handle.block_on(consumer.lag(tp)) {
                    lag += l.max(0) as u64;
                }
            }
            env.metrics.lag.store(lag, Ordering::Relaxed);
            metrics::gauge!("spate_connect_sink_lag_records", "connector" => env.connector.clone(), "task" => env.task.to_string())
                .set(lag as f64);
            next_flush = Instant::now() + env.offset_flush_interval;
        }
    }
    commit(task, &current, &mut pending_dlq)?;
    let revoked: Vec<TopicPartition> = assigned.into_iter().collect();
    task.close(&revoked)?;
    let _ = env.handle.block_on(consumer.close());
    Ok(())
}

/// Applies Kafka's consumer keys found under `prefix` (`consumer.` in the worker config,
/// `consumer.override.` in a sink connector's, as Kafka Connect's client overrides).
pub fn apply_consumer_overrides(config: &mut ConsumerConfig, props: &Props, prefix: &str) -> Result<()> {
    for (key, value) in props.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k, v.trim()))) {
        let full = || format!("{prefix}{key}");
        let num = || value.parse::<u64>().map_err(|_| ConnectError::config(full(), format!("{value} is not a number")));
        match key {
            "session.timeout.ms" => config.session_timeout_ms = num()?,
            "heartbeat.interval.ms" => config.heartbeat_interval_ms = num()?,
            "max.poll.interval.ms" => config.max_poll_interval_ms = num()?,
            "max.poll.records" => config.max_poll_records = num()? as usize,
            "fetch.min.bytes" => config.fetch_min_bytes = num()?.min(i32::MAX as u64) as i32,
            "fetch.max.bytes" => config.fetch_max_bytes = num()?.min(i32::MAX as u64) as i32,
            "fetch.max.wait.ms" => config.fetch_max_wait_ms = num()?,
            "max.partition.fetch.bytes" => config.max_partition_fetch_bytes = num()?.min(i32::MAX as u64) as i32,
            "auto.offset.reset" => {
                config.auto_offset_reset = value
                    .parse()
                    .map_err(|_| ConnectError::config(full(), "auto.offset.reset is earliest, latest or none"))?
            }
            _ => return Err(ConnectError::config(full(), "not a consumer setting Spate applies")),
        }
    }
    config.validate().map_err(|e| ConnectError::config(prefix.trim_end_matches('.'), e.to_string()))
}

fn raw_of(r: &ConsumerRecord) -> RawRecord {
    RawRecord { key: r.key.clone(), value: r.value.clone(), headers: r.headers.clone() }
}

fn convert_in(p: &Pipeline, r: &ConsumerRecord) -> std::result::Result<ConnectRecord, (&'static str, ConnectError)> {
    let (key, key_schema) = p.key_converter.from_kafka(Side::Key, r.key.as_ref()).map_err(|e| ("KEY_CONVERTER", e))?;
    let (value, value_schema) =
        p.value_converter.from_kafka(Side::Value, r.value.as_ref()).map_err(|e| ("VALUE_CONVERTER", e))?;
    Ok(ConnectRecord {
        topic: r.topic.clone(),
        partition: Some(r.partition),
        key,
        value,
        key_schema,
        value_schema,
        timestamp_ms: Some(r.timestamp_ms),
        headers: r.headers.clone(),
        kafka: Some(KafkaCoordinates { topic: r.topic.clone(), partition: r.partition, offset: r.offset }),
    })
}

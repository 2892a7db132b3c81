//! `spate bench produce|consume|group|e2e`: load a broker with the Spate client and report throughput,
//! latency and memory, in the spirit of `kafka-producer-perf-test.sh` and
//! `kafka-consumer-perf-test.sh`.
//!
//! The produce loop allocates nothing per record: every record shares one payload `Bytes`
//! (a clone is a reference-count bump), and delivery futures sit in a bounded window. Latency is
//! measured per record, send call to acknowledgement: the send instant rides along with the
//! record's future, and completed futures at the front of the window are checked every
//! [`CHECK_EVERY`] sends, so an acknowledgement is observed within a few dozen sends of arriving
//! (microseconds at these rates) as long as batches complete in roughly the order they were
//! filled, which they do per partition.

mod e2e;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;
use spate_client::admin::{AdminConfig, NewTopic, OffsetSpec};
use spate_client::protocol::ErrorCode;
use spate_client::{
    Admin, AutoOffsetReset, Compression, Consumer, ConsumerConfig, DeliveryFuture, Producer, ProducerConfig,
    ProducerRecord, TopicPartition,
};

use crate::common::{mb_per_sec, parse_acks, peak_rss_bytes, per_sec, print_out, progress_bar, BootstrapArgs};

/// Delivery futures one producer task holds before it waits for the oldest.
const PENDING_WINDOW: usize = 262_144;
/// Sends between checks of the window's front for completed deliveries.
const CHECK_EVERY: u64 = 32;
/// Records a task counts locally before publishing to the shared progress counter.
const PROGRESS_EVERY: u64 = 4096;
/// Latencies are recorded in microseconds up to this bound (larger ones saturate).
const LATENCY_US_MAX: u64 = 600_000_000;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Produce fixed-size records as fast as the producer allows.
    Produce(BenchProduceArgs),
    /// Read a topic from the beginning as fast as the consumer allows.
    Consume(BenchConsumeArgs),
    /// Consumer groups: throughput with 1 and --members members, and the time to resume
    /// consuming when a member joins or leaves.
    Group(BenchGroupArgs),
    /// End-to-end latency at a fixed rate: a paced producer and a consumer in one process,
    /// latency measured from each record's scheduled send instant.
    E2e(e2e::BenchE2eArgs),
}

#[derive(clap::Args, Debug)]
pub struct BenchProduceArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// Topic to write (created with --partitions if missing).
    #[arg(long, default_value = "spate-bench")]
    pub topic: String,
    /// Records to send in total.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Value size in bytes (random letters; no key).
    #[arg(long = "record-size", default_value_t = 100)]
    pub record_size: usize,
    /// Partitions of the topic when it has to be created.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Acknowledgements: 0, 1 or all.
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    pub acks: i16,
    /// Batch compression: none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: Compression,
    /// Concurrent producer instances, each in its own task, splitting --records.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// `linger.ms` of each producer.
    #[arg(long = "linger-ms", default_value_t = 5)]
    pub linger_ms: u64,
    /// `batch.size` of each producer in bytes.
    #[arg(long = "batch-size", default_value_t = 262_144)]
    pub batch_size: usize,
    /// `buffer.memory` of each producer in bytes.
    #[arg(long = "buffer-memory", default_value_t = 64 * 1024 * 1024)]
    pub buffer_memory: usize,
    /// Send in transactions of this many records (producer i has `transactional.id`
    /// `spate-bench-<i>`); the latency figures then include the wait for the commit.
    #[arg(long = "transaction-records")]
    pub transaction_records: Option<u64>,
    /// Also report the peak RSS (VmHWM) of this process id, the broker's on this machine.
    #[arg(long = "broker-pid")]
    pub broker_pid: Option<u32>,
    /// Write the figures to this file as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct BenchConsumeArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// Topic to read from the beginning.
    #[arg(long, default_value = "spate-bench")]
    pub topic: String,
    /// Stop after this many records (default: the offsets the topic holds when the bench
    /// starts; a topic written in transactions spends an offset on each commit or abort marker,
    /// which no consumer receives, so give its record count here).
    #[arg(long)]
    pub records: Option<u64>,
    /// Concurrent consumers, each assigned a share of the partitions (round robin).
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// `max.partition.fetch.bytes` of each consumer.
    #[arg(long = "max-partition-fetch-bytes", default_value_t = 4 * 1024 * 1024)]
    pub max_partition_fetch_bytes: i32,
    /// Give up after this long without a record.
    #[arg(long = "timeout-ms", default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// `read_uncommitted` (default) or `read_committed`.
    #[arg(long = "isolation-level", default_value = "read_uncommitted")]
    pub isolation_level: spate_client::IsolationLevel,
    /// Also report the peak RSS (VmHWM) of this process id, the broker's on this machine.
    #[arg(long = "broker-pid")]
    pub broker_pid: Option<u32>,
    /// Write the figures to this file as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct ProduceFigures {
    topic: String,
    records: u64,
    record_size: usize,
    producers: usize,
    acks: i16,
    compression: String,
    elapsed_ms: f64,
    msgs_per_sec: f64,
    /// MB of values per second, MB = 1024 * 1024 bytes as in Kafka's perf tools.
    mb_per_sec: f64,
    /// Send call to acknowledgement, per record.
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    latency_ms_max: f64,
    latency_measured: &'static str,
    failed: u64,
    peak_rss_bytes: u64,
    broker_peak_rss_bytes: Option<u64>,
    /// With `--transaction-records`: where each transaction's time went.
    transactions: Option<TransactionFigures>,
}

/// Per transaction, over all producers: the time from `begin_transaction` to the last `send`
/// returning (the client building batches, and waiting for buffer space), and the time
/// `commit_transaction` took (the last batches acknowledged, then EndTxn).
#[derive(Debug, Serialize)]
struct TransactionFigures {
    transactions: u64,
    sending_ms_mean: f64,
    commit_ms_p50: f64,
    commit_ms_p99: f64,
    commit_ms_max: f64,
}

#[derive(Debug, Serialize)]
struct ConsumeFigures {
    topic: String,
    records: u64,
    /// Key and value bytes read.
    bytes: u64,
    consumers: usize,
    elapsed_ms: f64,
    msgs_per_sec: f64,
    mb_per_sec: f64,
    peak_rss_bytes: u64,
    broker_peak_rss_bytes: Option<u64>,
}

pub async fn run(args: BenchArgs) -> Result<()> {
    match args.command {
        BenchCommand::Produce(a) => produce(a).await,
        BenchCommand::Consume(a) => consume(a).await,
        BenchCommand::Group(a) => group(a).await,
        BenchCommand::E2e(a) => e2e::run(a).await,
    }
}

/// Random upper-case letters, as Kafka's producer perf test uses: compressible like text,
/// not trivially.
fn payload(size: usize, seed: u64) -> Bytes {
    let mut state = seed | 1;
    (0..size)
        .map(|_| {
            // xorshift64*: a fixed, dependency-free sequence.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            b'A' + (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 59) as u8 % 26
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Splits `total` into `parts` shares that differ by at most one.
fn shares(total: u64, parts: usize) -> Vec<u64> {
    let parts = parts.max(1) as u64;
    (0..parts).map(|i| total / parts + u64::from(i < total % parts)).collect()
}

/// Creates the topic unless it exists, then waits until every partition has a leader.
async fn ensure_topic(admin: &Admin, topic: &str, partitions: i32) -> Result<()> {
    match admin.create_topic(NewTopic::new(topic, partitions, -1)).await {
        Ok(()) => {}
        Err(e) if e.code() == Some(ErrorCode::TOPIC_ALREADY_EXISTS) => {}
        Err(e) => return Err(e).with_context(|| format!("creating topic {topic}")),
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(described) = admin.describe_topics(&[topic]).await {
            if described.iter().all(|t| !t.partitions.is_empty() && t.partitions.iter().all(|p| p.leader >= 0)) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("topic {topic} has partitions without a leader after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one producer task saw.
struct ProduceOutcome {
    latency_us: Histogram<u64>,
    /// How long each `commit_transaction` took.
    commit_us: Histogram<u64>,
    /// Summed time from each `begin_transaction` to its last `send` returning.
    sending: Duration,
    failed: u64,
    first_error: Option<String>,
}

struct Window {
    pending: VecDeque<(Instant, DeliveryFuture)>,
    outcome: ProduceOutcome,
}

impl Window {
    fn settle(&mut self, sent_at: Instant, result: spate_client::Result<spate_client::RecordMetadata>) {
        match result {
            Ok(_) => {
                let us = sent_at.elapsed().as_micros().min(u128::from(LATENCY_US_MAX)) as u64;
                self.outcome.latency_us.saturating_record(us.max(1));
            }
            Err(e) => {
                self.outcome.failed += 1;
                if self.outcome.first_error.is_none() {
                    self.outcome.first_error = Some(e.to_string());
                }
            }
        }
    }

    /// Settles completed deliveries at the front without waiting.
    fn settle_ready(&mut self) {
        let mut cx = TaskContext::from_waker(Waker::noop());
        while let Some((sent_at, future)) = self.pending.front_mut() {
            let sent_at = *sent_at;
            match Pin::new(future).poll(&mut cx) {
                Poll::Ready(result) => {
                    self.pending.pop_front();
                    self.settle(sent_at, result);
                }
                Poll::Pending => break,
            }
        }
    }

    async fn settle_oldest(&mut self) {
        if let Some((sent_at, future)) = self.pending.pop_front() {
            let result = future.await;
            self.settle(sent_at, result);
        }
    }
}

async fn produce_task(
    producer: Producer,
    topic: Arc<str>,
    records: u64,
    payload: Bytes,
    progress: Arc<AtomicU64>,
    transaction_records: Option<u64>,
) -> Result<ProduceOutcome> {
    if transaction_records.is_some() {
        producer.init_transactions().await.context("init_transactions")?;
    }
    let latency_us = Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).context("latency histogram")?;
    let commit_us = Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).context("commit histogram")?;
    let mut window = Window {
        pending: VecDeque::with_capacity(PENDING_WINDOW.min(records as usize) + 1),
        outcome: ProduceOutcome { latency_us, commit_us, sending: Duration::ZERO, failed: 0, first_error: None },
    };
    let mut began_at = Instant::now();
    for i in 0..records {
        if transaction_records.is_some_and(|n| i % n == 0) {
            producer.begin_transaction()?;
            began_at = Instant::now();
        }
        let sent_at = Instant::now();
        let future = producer.send(&topic, ProducerRecord::new(payload.clone())).await?;
        if transaction_records.is_some_and(|n| (i + 1) % n == 0 || i + 1 == records) {
            let committing_at = Instant::now();
            window.outcome.sending += committing_at - began_at;
            producer.commit_transaction().await.context("commit_transaction")?;
            let us = committing_at.elapsed().as_micros().min(u128::from(LATENCY_US_MAX)) as u64;
            window.outcome.commit_us.saturating_record(us.max(1));
        }
        window.pending.push_back((sent_at, future));
        if i % CHECK_EVERY == 0 {
            window.settle_ready();
        }
        if window.pending.len() >= PENDING_WINDOW {
            window.settle_oldest().await;
        }
        if (i + 1) % PROGRESS_EVERY == 0 {
            progress.fetch_add(PROGRESS_EVERY, Ordering::Relaxed);
        }
    }
    progress.fetch_add(records % PROGRESS_EVERY, Ordering::Relaxed);
    // No flush: linger sends the last batches, and awaiting in order observes each completion
    // as it happens rather than after the slowest.
    while !window.pending.is_empty() {
        window.settle_oldest().await;
    }
    producer.close().await?;
    Ok(window.outcome)
}

/// Updates a progress bar from `position` until `done` is set.
fn spawn_ticker(
    bar: indicatif::ProgressBar,
    position: impl Fn() -> u64 + Send + 'static,
    done: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !done.load(Ordering::Relaxed) {
            bar.set_position(position());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bar.finish_and_clear();
    })
}

fn broker_rss(pid: Option<u32>) -> Option<u64> {
    let pid = pid?;
    match peak_rss_bytes(Some(pid)) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            eprintln!("warning: cannot read the broker's peak RSS: {e:#}");
            None
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn print_rss(own: u64, broker: Option<u64>) {
    match broker {
        Some(b) => print_out(&format!("peak RSS: bench {:.1} MiB, broker {:.1} MiB\n", mib(own), mib(b))),
        None => print_out(&format!("peak RSS: bench {:.1} MiB\n", mib(own))),
    }
}

fn write_json(path: &Option<PathBuf>, figures: &impl Serialize) -> Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(figures)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn produce(args: BenchProduceArgs) -> Result<()> {
    if args.producers == 0 || args.records == 0 {
        bail!("--producers and --records must be at least 1");
    }
    let servers = args.bootstrap.servers()?;
    let admin = Admin::new(AdminConfig { bootstrap_servers: servers.clone(), ..AdminConfig::default() })
        .await
        .context("connecting to the cluster")?;
    ensure_topic(&admin, &args.topic, args.partitions).await?;

    let config = ProducerConfig {
        bootstrap_servers: servers,
        client_id: "spate-bench-producer".into(),
        acks: args.acks,
        compression: args.compression,
        linger_ms: args.linger_ms,
        batch_size: args.batch_size,
        buffer_memory: args.buffer_memory.max(args.batch_size),
        ..ProducerConfig::default()
    };
    if args.transaction_records == Some(0) {
        bail!("--transaction-records must be at least 1");
    }
    let mut producers = Vec::with_capacity(args.producers);
    for i in 0..args.producers {
        let config = ProducerConfig {
            transactional_id: args.transaction_records.map(|_| format!("spate-bench-{i}")),
            ..config.clone()
        };
        producers.push(Producer::new(config).await.context("starting a producer")?);
    }
    let topic: Arc<str> = Arc::from(args.topic.as_str());
    let value = payload(args.record_size, 0x5eed);
    let progress = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let bar = progress_bar(Some(args.records), "{bar:40} {pos}/{len} records {per_sec} eta {eta}");
    let ticker = {
        let progress = progress.clone();
        spawn_ticker(bar, move || progress.load(Ordering::Relaxed), done.clone())
    };

    let start = Instant::now();
    let tasks: Vec<_> = producers
        .into_iter()
        .zip(shares(args.records, args.producers))
        .map(|(producer, n)| {
            let task =
                produce_task(producer, topic.clone(), n, value.clone(), progress.clone(), args.transaction_records);
            tokio::spawn(task)
        })
        .collect();
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3)?;
    let mut commit_us = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3)?;
    let mut sending = Duration::ZERO;
    let mut failed = 0;
    let mut first_error = None;
    for task in tasks {
        let outcome = task.await.context("producer task panicked")??;
        latency_us.add(&outcome.latency_us).context("merging latency histograms")?;
        commit_us.add(&outcome.commit_us).context("merging commit histograms")?;
        sending += outcome.sending;
        failed += outcome.failed;
        first_error = first_error.or(outcome.first_error);
    }
    let elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = ticker.await;

    let ms = |us: u64| us as f64 / 1000.0;
    let figures = ProduceFigures {
        topic: args.topic.clone(),
        records: args.records,
        record_size: args.record_size,
        producers: args.producers,
        acks: args.acks,
        compression: args.compression.to_string(),
        elapsed_ms: elapsed.as_secs_f64() * 1000.0,
        msgs_per_sec: per_sec(args.records, elapsed),
        mb_per_sec: mb_per_sec(args.records * args.record_size as u64, elapsed),
        latency_ms_p50: ms(latency_us.value_at_quantile(0.50)),
        latency_ms_p99: ms(latency_us.value_at_quantile(0.99)),
        latency_ms_max: ms(latency_us.max()),
        latency_measured: "per record, send call to acknowledgement",
        failed,
        peak_rss_bytes: peak_rss_bytes(None)?,
        broker_peak_rss_bytes: broker_rss(args.broker_pid),
        transactions: args.transaction_records.map(|_| TransactionFigures {
            transactions: commit_us.len(),
            sending_ms_mean: sending.as_secs_f64() * 1000.0 / commit_us.len().max(1) as f64,
            commit_ms_p50: ms(commit_us.value_at_quantile(0.50)),
            commit_ms_p99: ms(commit_us.value_at_quantile(0.99)),
            commit_ms_max: ms(commit_us.max()),
        }),
    };
    print_out(&format!(
        "{} records sent in {:.2} s: {:.1} records/s, {:.2} MB/s; latency (per record, send to ack) \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n",
        figures.records,
        elapsed.as_secs_f64(),
        figures.msgs_per_sec,
        figures.mb_per_sec,
        figures.latency_ms_p50,
        figures.latency_ms_p99,
        figures.latency_ms_max
    ));
    if let Some(t) = &figures.transactions {
        print_out(&format!(
            "{} transactions: sending {:.2} ms each (mean, begin_transaction to the last send), \
             commit_transaction p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n",
            t.transactions, t.sending_ms_mean, t.commit_ms_p50, t.commit_ms_p99, t.commit_ms_max
        ));
    }
    print_rss(figures.peak_rss_bytes, figures.broker_peak_rss_bytes);
    write_json(&args.json, &figures)?;
    if failed > 0 {
        bail!("{failed} records failed; first error: {}", first_error.unwrap_or_default());
    }
    Ok(())
}

/// Shared state of the consumer tasks.
struct ConsumeShared {
    target: u64,
    records: AtomicU64,
    bytes: AtomicU64,
    /// Nanoseconds from the start until the target was reached (0 until then).
    finished_ns: AtomicU64,
    start: Instant,
}

async fn consume_task(consumer: Consumer, shared: Arc<ConsumeShared>, idle_timeout: Duration) -> Result<()> {
    let mut last_record_at = Instant::now();
    loop {
        if shared.records.load(Ordering::Relaxed) >= shared.target {
            return Ok(());
        }
        let records = consumer.poll(Duration::from_millis(100)).await?;
        if records.is_empty() {
            if last_record_at.elapsed() > idle_timeout {
                bail!(
                    "no records for {} ms after {} of {}",
                    idle_timeout.as_millis(),
                    shared.records.load(Ordering::Relaxed),
                    shared.target
                );
            }
            continue;
        }
        last_record_at = Instant::now();
        let bytes: usize =
            records.iter().map(|r| r.key.as_ref().map_or(0, Bytes::len) + r.value.as_ref().map_or(0, Bytes::len)).sum();
        shared.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        let before = shared.records.fetch_add(records.len() as u64, Ordering::AcqRel);
        if before < shared.target && before + records.len() as u64 >= shared.target {
            shared.finished_ns.store(shared.start.elapsed().as_nanos() as u64, Ordering::Release);
        }
    }
}

async fn consume(args: BenchConsumeArgs) -> Result<()> {
    if args.consumers == 0 {
        bail!("--consumers must be at least 1");
    }
    let servers = args.bootstrap.servers()?;
    let admin = Admin::new(AdminConfig { bootstrap_servers: servers.clone(), ..AdminConfig::default() })
        .await
        .context("connecting to the cluster")?;
    let described =
        admin.describe_topics(&[args.topic.as_str()]).await.with_context(|| format!("topic {}", args.topic))?;
    let partitions: Vec<TopicPartition> = described
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| TopicPartition::new(t.name.clone(), p.partition)))
        .collect();
    if partitions.is_empty() {
        bail!("topic {} has no partitions", args.topic);
    }
    let target = match args.records {
        Some(n) => n,
        None => {
            let spec = |s: OffsetSpec| partitions.iter().map(|tp| (tp.clone(), s)).collect::<Vec<_>>();
            let earliest = admin.list_offsets(&spec(OffsetSpec::Earliest)).await?;
            let latest = admin.list_offsets(&spec(OffsetSpec::Latest)).await?;
            latest.iter().map(|(tp, l)| (l.offset - earliest.get(tp).map_or(0, |e| e.offset)).max(0) as u64).sum()
        }
    };
    if target == 0 {
        bail!("topic {} is empty; produce to it first (spate bench produce)", args.topic);
    }

    let consumers = args.consumers.min(partitions.len());
    let mut consumer_handles = Vec::with_capacity(consumers);
    for i in 0..consumers {
        let mine: Vec<TopicPartition> = partitions.iter().skip(i).step_by(consumers).cloned().collect();
        let consumer = Consumer::new(ConsumerConfig {
            bootstrap_servers: servers.clone(),
            client_id: format!("spate-bench-consumer-{i}"),
            auto_offset_reset: AutoOffsetReset::Earliest,
            max_poll_records: 100_000,
            max_partition_fetch_bytes: args.max_partition_fetch_bytes,
            isolation_level: args.isolation_level,
            ..ConsumerConfig::default()
        })
        .await
        .context("starting a consumer")?;
        consumer.assign(mine).await?;
        consumer.seek_to_beginning(&[]).await?;
        consumer_handles.push(consumer);
    }

    let shared = Arc::new(ConsumeShared {
        target,
        records: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        finished_ns: AtomicU64::new(0),
        start: Instant::now(),
    });
    let done = Arc::new(AtomicBool::new(false));
    let bar = progress_bar(Some(target), "{bar:40} {pos}/{len} records {per_sec} eta {eta}");
    let ticker = {
        let shared = shared.clone();
        spawn_ticker(bar, move || shared.records.load(Ordering::Relaxed).min(shared.target), done.clone())
    };
    let idle = Duration::from_millis(args.timeout_ms);
    let tasks: Vec<_> =
        consumer_handles.into_iter().map(|c| tokio::spawn(consume_task(c, shared.clone(), idle))).collect();
    let mut result = Ok(());
    for task in tasks {
        let outcome = task.await.context("consumer task panicked")?;
        if result.is_ok() {
            result = outcome;
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = ticker.await;
    result?;

    let finished_ns = shared.finished_ns.load(Ordering::Acquire);
    let elapsed = if finished_ns > 0 { Duration::from_nanos(finished_ns) } else { shared.start.elapsed() };
    let records = shared.records.load(Ordering::Relaxed);
    let bytes = shared.bytes.load(Ordering::Relaxed);
    let figures = ConsumeFigures {
        topic: args.topic.clone(),
        records,
        bytes,
        consumers,
        elapsed_ms: elapsed.as_secs_f64() * 1000.0,
        msgs_per_sec: per_sec(records, elapsed),
        mb_per_sec: mb_per_sec(bytes, elapsed),
        peak_rss_bytes: peak_rss_bytes(None)?,
        broker_peak_rss_bytes: broker_rss(args.broker_pid),
    };
    print_out(&format!(
        "{} records ({:.1} MB) read by {} consumer(s) in {:.2} s: {:.1} records/s, {:.2} MB/s\n",
        records,
        mib(bytes),
        consumers,
        elapsed.as_secs_f64(),
        figures.msgs_per_sec,
        figures.mb_per_sec
    ));
    print_rss(figures.peak_rss_bytes, figures.broker_peak_rss_bytes);
    write_json(&args.json, &figures)
}

#[derive(clap::Args, Debug)]
pub struct BenchGroupArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// Topic to read from the beginning (fill it first with `spate bench produce`).
    #[arg(long, default_value = "spate-bench")]
    pub topic: String,
    /// Group size for the second throughput run (the first has 1 member) and for the
    /// rebalance runs, which add and remove one more member.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// Join/leave rounds for the rebalance figures (each round measures one join and one leave).
    #[arg(long, default_value_t = 5)]
    pub rebalances: usize,
    /// `heartbeat.interval.ms` of the members: existing members learn of a rebalance from their
    /// next heartbeat, so this bounds the time-to-resume from below (Kafka's default 3000).
    #[arg(long = "heartbeat-interval-ms", default_value_t = 3000)]
    pub heartbeat_interval_ms: u64,
    /// Records per second per partition the rebalance runs produce, so every partition has
    /// new records to resume on.
    #[arg(long = "trickle-per-partition", default_value_t = 50)]
    pub trickle_per_partition: u64,
    /// Give up after this long without progress.
    #[arg(long = "timeout-ms", default_value_t = 60_000)]
    pub timeout_ms: u64,
    /// Write the figures to this file as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct GroupThroughput {
    members: usize,
    records: u64,
    /// From the first member's `subscribe` until the first record (joining, the first
    /// rebalance and the first fetch; includes the broker's `group.initial.rebalance.delay.ms`).
    join_ms: f64,
    /// From the first record until every partition was read to its end.
    consume_ms: f64,
    /// Records over `consume_ms` (the steady rate, joining excluded).
    msgs_per_sec: f64,
}

#[derive(Debug, Serialize)]
struct RebalanceFigures {
    samples: usize,
    ms_p50: f64,
    ms_p99: f64,
    ms_max: f64,
}

#[derive(Debug, Serialize)]
struct GroupFigures {
    topic: String,
    partitions: usize,
    throughput: Vec<GroupThroughput>,
    /// A member joins a group of `members`: from its `subscribe` until every partition has
    /// delivered a record to a member that was assigned it by the rebalance.
    rebalance_join: RebalanceFigures,
    /// A member of `members + 1` closes (LeaveGroup): from its `close` until every partition
    /// has delivered a record under the new assignment.
    rebalance_leave: RebalanceFigures,
    time_to_resume_measured: &'static str,
    peak_rss_bytes: u64,
}

/// What the group's members report to the bench.
struct GroupShared {
    start: Instant,
    /// Per partition, the next offset to reach (the throughput runs' end offsets).
    targets: HashMap<i32, i64>,
    /// Per partition, the next offset some member has read up to.
    reached: std::sync::Mutex<HashMap<i32, i64>>,
    first_record_ns: AtomicU64,
    finished_ns: AtomicU64,
    records: AtomicU64,
    /// The rebalance being timed: when it started, and per partition the first delivery by a
    /// member assigned after it.
    resume: std::sync::Mutex<Option<(Instant, HashMap<i32, Instant>)>>,
}

impl GroupShared {
    fn new(targets: HashMap<i32, i64>) -> Arc<Self> {
        Arc::new(GroupShared {
            start: Instant::now(),
            targets,
            reached: std::sync::Mutex::new(HashMap::new()),
            first_record_ns: AtomicU64::new(0),
            finished_ns: AtomicU64::new(0),
            records: AtomicU64::new(0),
            resume: std::sync::Mutex::new(None),
        })
    }

    fn is_finished(&self) -> bool {
        self.finished_ns.load(Ordering::Acquire) > 0
    }
}

/// Records when this member was last given an assignment (every rebalance ends with one, even
/// when the partitions stay the same).
struct AssignedAt(std::sync::Mutex<Option<Instant>>);

impl spate_client::consumer::RebalanceListener for AssignedAt {
    fn on_partitions_assigned<'a>(
        &'a self,
        _consumer: &'a Consumer,
        _partitions: &'a [TopicPartition],
    ) -> spate_client::consumer::ListenerFuture<'a> {
        *self.0.lock().expect("assigned lock") = Some(Instant::now());
        Box::pin(std::future::ready(()))
    }
}

/// One member: polls until `stop`, reporting progress and resumed partitions, then closes
/// (commit and LeaveGroup).
async fn group_member(
    consumer: Consumer,
    topic: String,
    shared: Arc<GroupShared>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let assigned = Arc::new(AssignedAt(std::sync::Mutex::new(None)));
    consumer.subscribe_with_listener(&[topic.as_str()], assigned.clone()).await?;
    while !stop.load(Ordering::Relaxed) {
        let records = consumer.poll(Duration::from_millis(100)).await?;
        tracing::trace!(client_id = consumer.config().client_id, records = records.len(), "bench member polled");
        if records.is_empty() {
            continue;
        }
        let now = Instant::now();
        let _ = shared.first_record_ns.compare_exchange(
            0,
            shared.start.elapsed().as_nanos() as u64,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        shared.records.fetch_add(records.len() as u64, Ordering::Relaxed);
        let mut last: HashMap<i32, i64> = HashMap::new();
        for r in &records {
            last.insert(r.partition, r.offset + 1);
        }
        if !shared.targets.is_empty() {
            let mut reached = shared.reached.lock().expect("reached lock");
            for (p, next) in &last {
                let e = reached.entry(*p).or_insert(0);
                *e = (*e).max(*next);
            }
            let done = shared.targets.iter().all(|(p, target)| reached.get(p).is_some_and(|r| r >= target));
            if done && !shared.is_finished() {
                shared.finished_ns.store(shared.start.elapsed().as_nanos() as u64, Ordering::Release);
            }
        }
        let assigned_at = *assigned.0.lock().expect("assigned lock");
        if let Some((event, resumed)) = shared.resume.lock().expect("resume lock").as_mut() {
            if assigned_at.is_some_and(|a| a >= *event) {
                for p in last.keys() {
                    resumed.entry(*p).or_insert(now);
                }
            }
        }
    }
    consumer.close().await?;
    Ok(())
}

struct Member {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Member {
    async fn finish(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.context("group member panicked")?
    }
}

async fn start_member(
    args: &BenchGroupArgs,
    group_id: &str,
    index: usize,
    shared: &Arc<GroupShared>,
) -> Result<Member> {
    let consumer = Consumer::new(ConsumerConfig {
        bootstrap_servers: args.bootstrap.servers()?,
        client_id: format!("spate-bench-group-{index}"),
        group_id: Some(group_id.to_string()),
        auto_offset_reset: AutoOffsetReset::Earliest,
        max_poll_records: 100_000,
        max_partition_fetch_bytes: 4 * 1024 * 1024,
        heartbeat_interval_ms: args.heartbeat_interval_ms,
        ..ConsumerConfig::default()
    })
    .await
    .context("starting a group member")?;
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(group_member(consumer, args.topic.clone(), shared.clone(), stop.clone()));
    Ok(Member { stop, task })
}

/// A fresh group id per run, so runs never resume each other's offsets.
fn bench_group_id(what: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("spate-bench-{what}-{}-{nanos}", std::process::id())
}

/// Waits for `done`, failing after `timeout`, or early when a member task has ended in error.
async fn wait_for(what: &str, timeout: Duration, members: &[Member], done: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("{what} did not happen within {} ms", timeout.as_millis());
        }
        if members.iter().any(|m| m.task.is_finished()) {
            bail!("a group member stopped while waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn group_throughput(
    args: &BenchGroupArgs,
    members: usize,
    targets: &HashMap<i32, i64>,
) -> Result<GroupThroughput> {
    let shared = GroupShared::new(targets.clone());
    let group_id = bench_group_id("throughput");
    let mut running = Vec::new();
    for i in 0..members {
        running.push(start_member(args, &group_id, i, &shared).await?);
    }
    let waited =
        wait_for("reading the topic", Duration::from_millis(args.timeout_ms), &running, || shared.is_finished()).await;
    let mut stopped = Ok(());
    for m in running {
        let r = m.finish().await;
        if stopped.is_ok() {
            stopped = r;
        }
    }
    waited?;
    stopped?;
    let first = Duration::from_nanos(shared.first_record_ns.load(Ordering::Acquire));
    let finished = Duration::from_nanos(shared.finished_ns.load(Ordering::Acquire));
    let records = targets.values().map(|&t| t.max(0) as u64).sum();
    let consume = finished.saturating_sub(first);
    Ok(GroupThroughput {
        members,
        records,
        join_ms: first.as_secs_f64() * 1000.0,
        consume_ms: consume.as_secs_f64() * 1000.0,
        msgs_per_sec: per_sec(records, consume),
    })
}

/// Starts timing a rebalance, and waits until every partition resumed under it.
async fn time_to_resume(
    shared: &GroupShared,
    partitions: usize,
    timeout: Duration,
    members: &[Member],
    event: Instant,
) -> Result<Duration> {
    let waited = wait_for("resuming every partition after a rebalance", timeout, members, || {
        shared.resume.lock().expect("resume lock").as_ref().is_some_and(|(_, r)| r.len() >= partitions)
    })
    .await;
    if let Err(e) = waited {
        let resumed: Vec<i32> = shared
            .resume
            .lock()
            .expect("resume lock")
            .as_ref()
            .map(|(_, r)| {
                let mut ps: Vec<i32> = r.keys().copied().collect();
                ps.sort_unstable();
                ps
            })
            .unwrap_or_default();
        return Err(e.context(format!("partitions resumed: {resumed:?} of {partitions}")));
    }
    let resumed = shared.resume.lock().expect("resume lock").take().expect("set before waiting");
    Ok(resumed.1.values().max().map_or(Duration::ZERO, |last| last.duration_since(event)))
}

fn rebalance_figures(samples_ms: &mut [f64]) -> RebalanceFigures {
    samples_ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if samples_ms.is_empty() {
            return 0.0;
        }
        let rank = ((q * samples_ms.len() as f64).ceil() as usize).clamp(1, samples_ms.len());
        samples_ms[rank - 1]
    };
    RebalanceFigures { samples: samples_ms.len(), ms_p50: at(0.5), ms_p99: at(0.99), ms_max: at(1.0) }
}

/// Produces `per_partition_per_sec` records to every partition until `stop`.
async fn trickle(
    args: &BenchGroupArgs,
    partitions: usize,
    stop: Arc<AtomicBool>,
) -> Result<tokio::task::JoinHandle<()>> {
    let producer = Producer::new(ProducerConfig {
        bootstrap_servers: args.bootstrap.servers()?,
        client_id: "spate-bench-trickle".into(),
        acks: 1,
        linger_ms: 0,
        ..ProducerConfig::default()
    })
    .await
    .context("starting the trickle producer")?;
    let topic = args.topic.clone();
    let every = Duration::from_secs_f64(1.0 / args.trickle_per_partition.max(1) as f64);
    let value = payload(100, 3);
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            for p in 0..partitions as i32 {
                if let Err(e) = producer.send(&topic, ProducerRecord::new(value.clone()).with_partition(p)).await {
                    tracing::warn!(error = %e, "trickle producer failed");
                }
            }
        }
        let _ = producer.close().await;
    }))
}

async fn group(args: BenchGroupArgs) -> Result<()> {
    if args.members == 0 {
        bail!("--members must be at least 1");
    }
    let admin = Admin::new(AdminConfig { bootstrap_servers: args.bootstrap.servers()?, ..AdminConfig::default() })
        .await
        .context("connecting to the cluster")?;
    let described =
        admin.describe_topics(&[args.topic.as_str()]).await.with_context(|| format!("topic {}", args.topic))?;
    let partitions: Vec<TopicPartition> = described
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| TopicPartition::new(t.name.clone(), p.partition)))
        .collect();
    let spec = |s: OffsetSpec| partitions.iter().map(|tp| (tp.clone(), s)).collect::<Vec<_>>();
    let earliest = admin.list_offsets(&spec(OffsetSpec::Earliest)).await?;
    let latest = admin.list_offsets(&spec(OffsetSpec::Latest)).await?;
    // Partitions holding records, each to be read to its current end.
    let targets: HashMap<i32, i64> = latest
        .iter()
        .filter(|(tp, l)| l.offset > earliest.get(*tp).map_or(0, |e| e.offset))
        .map(|(tp, l)| (tp.partition, l.offset))
        .collect();
    if targets.is_empty() {
        bail!("topic {} is empty; produce to it first (spate bench produce)", args.topic);
    }

    let mut throughput = Vec::new();
    let mut sizes = vec![1, args.members];
    sizes.dedup();
    for members in sizes {
        let t = group_throughput(&args, members, &targets).await?;
        print_out(&format!(
            "group of {}: {} records in {:.2} s after joining ({:.0} ms): {:.1} records/s\n",
            t.members,
            t.records,
            t.consume_ms / 1000.0,
            t.join_ms,
            t.msgs_per_sec
        ));
        throughput.push(t);
    }

    // Rebalances: a steady group with records arriving on every partition; one member joins,
    // then leaves, `rebalances` times.
    let timeout = Duration::from_millis(args.timeout_ms);
    let stop_trickle = Arc::new(AtomicBool::new(false));
    let trickler = trickle(&args, partitions.len(), stop_trickle.clone()).await?;
    let shared = GroupShared::new(HashMap::new());
    let group_id = bench_group_id("rebalance");
    let mut members = Vec::new();
    for i in 0..args.members {
        members.push(start_member(&args, &group_id, i, &shared).await?);
    }
    // Steady first: every partition delivering under the group's initial assignment.
    *shared.resume.lock().expect("resume lock") = Some((shared.start, HashMap::new()));
    let outcome = async {
        time_to_resume(&shared, partitions.len(), timeout, &members, shared.start).await?;
        let (mut join_ms, mut leave_ms) = (Vec::new(), Vec::new());
        for round in 0..args.rebalances {
            let event = Instant::now();
            *shared.resume.lock().expect("resume lock") = Some((event, HashMap::new()));
            members.push(start_member(&args, &group_id, args.members + round, &shared).await?);
            join_ms
                .push(time_to_resume(&shared, partitions.len(), timeout, &members, event).await?.as_secs_f64() * 1e3);

            let leaving = members.pop().expect("the member that joined");
            let event = Instant::now();
            *shared.resume.lock().expect("resume lock") = Some((event, HashMap::new()));
            leaving.finish().await?;
            leave_ms
                .push(time_to_resume(&shared, partitions.len(), timeout, &members, event).await?.as_secs_f64() * 1e3);
        }
        Ok::<_, anyhow::Error>((join_ms, leave_ms))
    }
    .await;
    for m in members {
        let _ = m.finish().await;
    }
    stop_trickle.store(true, Ordering::Relaxed);
    let _ = trickler.await;
    let (mut join_ms, mut leave_ms) = outcome?;

    let figures = GroupFigures {
        topic: args.topic.clone(),
        partitions: partitions.len(),
        throughput,
        rebalance_join: rebalance_figures(&mut join_ms),
        rebalance_leave: rebalance_figures(&mut leave_ms),
        time_to_resume_measured: "from the join (subscribe) or leave (close) until every partition delivered a \
                                  record to a member assigned it by the rebalance",
        peak_rss_bytes: peak_rss_bytes(None)?,
    };
    for (what, f) in [("joins", &figures.rebalance_join), ("leaves", &figures.rebalance_leave)] {
        print_out(&format!(
            "rebalance when a member {} a group of {}: time-to-resume p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} samples)\n",
            what.trim_end_matches('s'),
            args.members + usize::from(what == "leaves"),
            f.ms_p50,
            f.ms_p99,
            f.ms_max,
            f.samples
        ));
    }
    write_json(&args.json, &figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebalance_percentiles_use_nearest_rank() {
        let f = rebalance_figures(&mut [30.0, 10.0, 20.0, 40.0]);
        assert_eq!((f.samples, f.ms_p50, f.ms_p99, f.ms_max), (4, 20.0, 40.0, 40.0));
        let f = rebalance_figures(&mut []);
        assert_eq!((f.samples, f.ms_p50), (0, 0.0));
    }

    #[test]
    fn shares_split_evenly_and_sum_to_the_total() {
        assert_eq!(shares(10, 3), vec![4, 3, 3]);
        assert_eq!(shares(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(shares(1_000_000, 1), vec![1_000_000]);
        for (total, parts) in [(0, 1), (7, 7), (1001, 6)] {
            assert_eq!(shares(total, parts).iter().sum::<u64>(), total);
        }
    }

    #[test]
    fn payload_is_letters_of_the_requested_size_and_deterministic() {
        let p = payload(1000, 7);
        assert_eq!(p.len(), 1000);
        assert!(p.iter().all(u8::is_ascii_uppercase));
        assert_eq!(p, payload(1000, 7));
        // Not one repeated letter: compression figures would be meaningless.
        assert!(p.iter().any(|b| *b != p[0]));
    }
}

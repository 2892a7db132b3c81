//! The runtime (Kafka's `KafkaStreams`): stream threads that are members of the
//! `application.id` consumer group, each running the tasks (sub-topology × partition) the
//! group assigns it, with restore from changelogs and at-least-once or exactly-once commits.
//!
//! Each stream thread is an OS thread with its own single-threaded tokio runtime, consumer
//! (group member), restore consumer and producer. Records move in poll-sized batches: the
//! thread routes a batch to its tasks, each task runs its records through its processor graph
//! synchronously, and the outputs are handed to the producer in one go.
//!
//! At-least-once commit (every `commit.interval.ms`, before a rebalance revokes tasks, and at
//! close): forward held-back updates → write store buffers and their changelog records → flush
//! the producer and check every delivery → commit the input offsets → flush stores and write
//! each task's checkpoint (the changelog offsets its store contains). The order makes a crash
//! at any point lose nothing: input is re-read from the last committed offsets, and stores are
//! rebuilt from their changelogs from the checkpoint on.
//!
//! Exactly-once (`exactly_once_v2`, Kafka's KIP-447 design): the thread's producer is
//! transactional (`transactional.id` `<application.id>-<process id>-<thread>`, the process id
//! kept in the state directory so a restarted instance fences its crashed predecessor), and all
//! three consumers read `read_committed`. A transaction begins before the first output of a
//! commit interval; the commit writes store buffers and changelog records into it, adds the
//! input offsets (`send_offsets_to_transaction` with the consumer's group metadata, so a
//! member fenced out of the group cannot commit) and commits it: outputs, changelog records and
//! offsets become visible together, or never. No OffsetCommit is sent. A task's checkpoint is
//! deleted once read and written again only after the commit that precedes a clean close (a
//! rebalance's revocation or `close`), so after a crash the task directory has none, is wiped,
//! and is restored from the changelog's committed records. When a transaction fails
//! (abortable: aborted; fatal, e.g. fenced: the producer is replaced), every task is closed
//! without a checkpoint and created again, restored from its changelogs, and the input is read
//! again from the offsets of the last committed transaction.

mod assignor;
mod task;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spate_client::admin::{AdminConfig, NewTopic};
use spate_client::consumer::{Assignor, AutoOffsetReset, ListenerFuture, OffsetAndMetadata, RebalanceListener};
use spate_client::{
    Admin, Consumer, ConsumerConfig, DeliveryFuture, IsolationLevel, Producer, ProducerConfig, ProducerRecord,
    TopicPartition,
};
use tracing::{debug, info, warn};

use crate::config::StreamsConfig;
use crate::processor::OutKind;
use crate::query::{ReadOnlyKeyValueStore, ReadOnlyWindowStore, StoreRegistry};
use crate::serdes::Serde;
use crate::state::directory::StateDirectory;
use crate::state::StoreKind;
use crate::store::{lock, StoreType, TaskStore};
use crate::topology::GlobalStore;
use crate::topology::{TopicName, Topology};
use crate::{StreamsError, TaskId};
pub(crate) use task::{Task, TaskDir};

/// Where the application is (Kafka's `KafkaStreams.State`, simplified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamsState {
    Created,
    Running,
    /// Stopped by an error; the message says which.
    Error(String),
    NotRunning,
}

/// Counters of the whole instance, summed over threads and tasks.
#[derive(Debug, Default)]
pub struct StreamsMetrics {
    /// Input records run through the topology (`process-total`).
    pub records_processed: AtomicU64,
    /// Records dropped as too late for their window (`dropped-records-total`, late).
    pub dropped_late: AtomicU64,
    /// Records skipped: undecodable under log-and-continue, invalid timestamps, null keys.
    pub dropped_other: AtomicU64,
    /// Commits done (`commit-total`).
    pub commits: AtomicU64,
    /// Total time spent committing, in microseconds (`commit-latency` ∑).
    pub commit_micros: AtomicU64,
    /// Changelog records applied during restores (`restore-total`).
    pub records_restored: AtomicU64,
    /// Records written to output and changelog topics.
    pub records_produced: AtomicU64,
}

struct Shared {
    config: StreamsConfig,
    topology: Topology,
    stop: AtomicBool,
    /// Set by [`KafkaStreams::crash`]: threads stop without committing or leaving the group.
    crash: AtomicBool,
    state: Mutex<StreamsState>,
    stores: Arc<StoreRegistry>,
    metrics: StreamsMetrics,
    state_dir: StateDirectory,
    /// Global tables' stores, by store name.
    globals: HashMap<String, GlobalStore>,
    /// Set once the global thread has read every global topic to its end (at once when there
    /// are none); stream threads wait for it before joining the group.
    globals_ready: AtomicBool,
    /// This instance's id in client ids and transactional ids (Kafka's `processId`), kept in
    /// the state directory across restarts.
    process_id: String,
    /// Holds the stored process id for the life of the instance (released by `close` and
    /// `crash`, so a successor in the same process gets it back).
    process_lock: Mutex<Option<crate::state::directory::ProcessIdLock>>,
    /// Holds the global stores' directory for the life of the instance.
    _global_lock: Option<crate::state::directory::TaskDirLock>,
}

/// The task id under which global stores appear in the interactive-query registry.
pub(crate) const GLOBAL_TASK: TaskId = TaskId { subtopology: u32::MAX, partition: 0 };
const GLOBAL_DIR: &str = "global";

/// A running streams application (Kafka's `KafkaStreams`).
pub struct KafkaStreams {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl KafkaStreams {
    /// Checks the configuration; nothing starts until [`Self::start`].
    pub fn new(topology: Topology, config: StreamsConfig) -> Result<Self, StreamsError> {
        config.validate()?;
        let state_dir = StateDirectory::new(&config.state_dir, &config.application_id)?;
        let (globals, global_lock) = open_globals(&topology, &state_dir)?;
        let stores: Arc<StoreRegistry> = Arc::new(Mutex::new(BTreeMap::new()));
        for (name, store) in &globals {
            lock(&stores).entry(name.clone()).or_default().insert(GLOBAL_TASK, TaskStore::Kv(store.clone()));
        }
        let globals_ready = AtomicBool::new(topology.globals.is_empty());
        let (process_id, process_lock) = state_dir.process_id()?;
        Ok(KafkaStreams {
            shared: Arc::new(Shared {
                config,
                topology,
                stop: AtomicBool::new(false),
                crash: AtomicBool::new(false),
                state: Mutex::new(StreamsState::Created),
                stores,
                metrics: StreamsMetrics::default(),
                state_dir,
                globals,
                globals_ready,
                process_id,
                process_lock: Mutex::new(process_lock),
                _global_lock: global_lock,
            }),
            threads: Vec::new(),
        })
    }

    /// Starts `num.stream.threads` stream threads. Internal topics are created (and source
    /// topics checked) by each thread before it joins the group; a failure there puts the
    /// application in the error state.
    pub fn start(&mut self) -> Result<(), StreamsError> {
        {
            let mut state = lock(&self.shared.state);
            if *state != StreamsState::Created {
                return Err(StreamsError::State(format!("{state:?}; start() may be called once")));
            }
            *state = StreamsState::Running;
        }
        if !self.shared.topology.globals.is_empty() {
            let shared = self.shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{}-GlobalStreamThread", shared.config.client_id))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(r) => r,
                        Err(e) => return fail(&shared, StreamsError::State(format!("cannot start a runtime: {e}"))),
                    };
                    if let Err(e) = runtime.block_on(run_global(shared.clone())) {
                        fail(&shared, e);
                    }
                })
                .map_err(|e| StreamsError::State(format!("cannot spawn the global thread: {e}")))?;
            self.threads.push(handle);
        }
        for index in 0..self.shared.config.num_stream_threads {
            let shared = self.shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{}-StreamThread-{}", shared.config.client_id, index + 1))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(r) => r,
                        Err(e) => return fail(&shared, StreamsError::State(format!("cannot start a runtime: {e}"))),
                    };
                    if let Err(e) = runtime.block_on(run_thread(shared.clone(), index)) {
                        fail(&shared, e);
                    }
                })
                .map_err(|e| StreamsError::State(format!("cannot spawn a stream thread: {e}")))?;
            self.threads.push(handle);
        }
        Ok(())
    }

    /// The application's state.
    pub fn state(&self) -> StreamsState {
        lock(&self.shared.state).clone()
    }

    /// Counters summed over the instance's threads.
    pub fn metrics(&self) -> &StreamsMetrics {
        &self.shared.metrics
    }

    /// Commits, closes every task (writing checkpoints), leaves the group and waits for the
    /// threads. Returns the error that stopped the application, if one did.
    pub fn close(&mut self) -> Result<(), StreamsError> {
        self.shared.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        lock(&self.shared.process_lock).take();
        let mut state = lock(&self.shared.state);
        match &*state {
            StreamsState::Error(e) => Err(StreamsError::State(format!("stopped by an error: {e}"))),
            _ => {
                *state = StreamsState::NotRunning;
                Ok(())
            }
        }
    }

    /// Stops the threads as a crash would (for tests of failover): nothing is committed or
    /// flushed, the group is not left (the coordinator notices after `session.timeout.ms`),
    /// an open transaction is left open (the coordinator aborts it after
    /// `transaction.timeout.ms`, or a successor with the same process id at once), and writes
    /// since the last commit are lost with the process's memory.
    #[doc(hidden)]
    pub fn crash(&mut self) {
        self.shared.crash.store(true, Ordering::Release);
        self.shared.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        lock(&self.shared.process_lock).take();
        *lock(&self.shared.state) = StreamsState::NotRunning;
    }

    /// This instance's process id (kept in `state.dir/<application.id>`), part of its client
    /// ids and of its exactly-once `transactional.id`s.
    #[doc(hidden)]
    pub fn process_id(&self) -> &str {
        &self.shared.process_id
    }

    /// Read-only queries of key-value store `name` over this instance's tasks.
    pub fn store<K, V>(
        &self,
        name: &str,
        key: impl Serde<K> + Send + Sync + 'static,
        value: impl Serde<V> + Send + Sync + 'static,
    ) -> ReadOnlyKeyValueStore<K, V> {
        ReadOnlyKeyValueStore::new(self.shared.stores.clone(), name, key, value)
    }

    /// Read-only queries of window store `name` over this instance's tasks.
    pub fn window_store<K, V>(
        &self,
        name: &str,
        key: impl Serde<K> + Send + Sync + 'static,
        value: impl Serde<V> + Send + Sync + 'static,
    ) -> ReadOnlyWindowStore<K, V> {
        ReadOnlyWindowStore::new(self.shared.stores.clone(), name, key, value)
    }
}

impl Drop for KafkaStreams {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let _ = self.close();
        }
    }
}

fn fail(shared: &Shared, err: StreamsError) {
    tracing::error!(error = %err, "stream thread stopped");
    let mut state = lock(&shared.state);
    if !matches!(*state, StreamsState::Error(_)) {
        *state = StreamsState::Error(err.to_string());
    }
    shared.stop.store(true, Ordering::Release);
}

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// How long a restore may read nothing before it is reported as stuck.
const RESTORE_STALL: Duration = Duration::from_secs(120);

/// Partition counts of every topic the application reads or creates.
type PartitionCounts = HashMap<String, i32>;

/// Checks source topics, co-partitioning, and creates repartition and changelog topics.
async fn prepare_topics(shared: &Shared, admin: &Admin) -> Result<PartitionCounts, StreamsError> {
    let app = &shared.config.application_id;
    let topology = &shared.topology;
    let user: BTreeSet<String> = topology
        .subtopologies
        .iter()
        .flat_map(|st| st.source_topics.iter())
        .filter_map(|t| match t {
            TopicName::User(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    let names: Vec<&str> = user.iter().map(String::as_str).collect();
    let mut counts: PartitionCounts = HashMap::new();
    if !names.is_empty() {
        let described = admin.describe_topics(&names).await.map_err(|e| {
            StreamsError::Config(format!("cannot describe source topics {names:?}: {e} (create them before starting)"))
        })?;
        for d in described {
            counts.insert(d.name.clone(), d.partitions.len() as i32);
        }
        for t in &user {
            if !counts.contains_key(t) || counts[t] == 0 {
                return Err(StreamsError::Config(format!(
                    "source topic '{t}' does not exist: create it before starting the application"
                )));
            }
        }
    }
    // Sub-topologies in order: a repartition topic gets the count of the sub-topology writing
    // it, which reads topics resolved earlier.
    let mut new_topics = Vec::new();
    let mut pending: Vec<&crate::topology::SubTopology> = topology.subtopologies.iter().collect();
    while !pending.is_empty() {
        let before = pending.len();
        // Topics that take another sub-topology's count, once any of its sources is known.
        let mut resolved_override = false;
        for (name, st_id) in &topology.repartition_count_from {
            let topic = TopicName::Repartition(name.clone()).resolve(app);
            if counts.contains_key(&topic) {
                continue;
            }
            let st = &topology.subtopologies[*st_id as usize];
            if let Some(n) = st.source_topics.iter().find_map(|t| counts.get(&t.resolve(app)).copied()) {
                counts.insert(topic.clone(), n);
                new_topics.push(
                    NewTopic::new(topic, n, shared.config.replication_factor).with_config("cleanup.policy", "delete"),
                );
                resolved_override = true;
            }
        }
        let mut rest = Vec::new();
        for st in pending {
            let sources: Vec<String> = st.source_topics.iter().map(|t| t.resolve(app)).collect();
            // A sub-topology may read a repartition topic it writes itself (a re-keyed branch
            // of a stream joined back with the stream): that topic takes the count of its
            // other inputs.
            let own: BTreeSet<String> = st.sink_topics.iter().map(|t| t.resolve(app)).collect();
            let known = sources.iter().find_map(|t| counts.get(t).copied());
            if let Some(n) = known {
                let missing: Vec<String> =
                    sources.iter().filter(|t| !counts.contains_key(*t) && own.contains(*t)).cloned().collect();
                for t in missing {
                    counts.insert(t, n);
                }
            }
            if sources.iter().any(|t| !counts.contains_key(t)) {
                rest.push(st);
                continue;
            }
            let source_counts: Vec<i32> = sources.iter().map(|t| counts[t]).collect();
            if source_counts.iter().any(|c| *c != source_counts[0]) {
                return Err(StreamsError::NotCopartitioned { topics: sources, counts: source_counts });
            }
            let n = source_counts[0];
            for t in &st.sink_topics {
                if let TopicName::Repartition(r) = t {
                    if topology.repartition_count_from.contains_key(r) {
                        continue;
                    }
                    let name = t.resolve(app);
                    counts.insert(name.clone(), n);
                    new_topics.push(
                        NewTopic::new(name, n, shared.config.replication_factor)
                            .with_config("cleanup.policy", "delete"),
                    );
                }
            }
            for store in &st.stores {
                let spec = &topology.stores[store];
                if !spec.logging {
                    continue;
                }
                let name = format!("{app}-{store}-changelog");
                let topic = NewTopic::new(name.clone(), n, shared.config.replication_factor);
                let topic = match spec.store_type {
                    StoreType::KeyValue => topic.with_config("cleanup.policy", "compact"),
                    // Kafka's window changelogs: compacted, and deleted a day after the
                    // store's retention.
                    StoreType::Window { retention_ms, .. } | StoreType::Session { retention_ms } => topic
                        .with_config("cleanup.policy", "compact,delete")
                        .with_config("retention.ms", retention_ms.saturating_add(86_400_000).to_string()),
                };
                counts.insert(name, n);
                new_topics.push(topic);
            }
        }
        if rest.len() == before && !resolved_override {
            return Err(StreamsError::Topology("repartition topics form a cycle".into()));
        }
        pending = rest;
    }
    if !new_topics.is_empty() {
        for (name, result) in admin.create_topics(&new_topics).await? {
            match result {
                Ok(()) => info!(topic = %name, "created internal topic"),
                Err(e)
                    if e.to_string().contains("TOPIC_ALREADY_EXISTS")
                        || e.to_string().contains("TopicAlreadyExists") => {}
                Err(e) => {
                    // It may exist with another partition count: check before giving up.
                    let described = admin.describe_topics(&[name.as_str()]).await?;
                    match described.first() {
                        Some(d) if d.partitions.len() as i32 == counts[&name] => {}
                        Some(d) => {
                            return Err(StreamsError::Config(format!(
                                "internal topic {name} exists with {} partitions, expected {} (delete it, or reset the application)",
                                d.partitions.len(),
                                counts[&name]
                            )))
                        }
                        None => return Err(StreamsError::Config(format!("cannot create internal topic {name}: {e}"))),
                    }
                }
            }
        }
    }
    Ok(counts)
}

struct Pending {
    future: DeliveryFuture,
    topic: Arc<str>,
    task: TaskId,
    kind: OutKind,
}

/// A stream thread's tasks and in-flight writes. Shared with its rebalance listener, which
/// commits and closes tasks inside `poll`.
struct ThreadState {
    shared: Arc<Shared>,
    /// 0-based index of the thread in the instance.
    index: usize,
    producer: Producer,
    tasks: BTreeMap<TaskId, Task>,
    pending: VecDeque<Pending>,
    /// Partitions assigned by the last rebalance, for which tasks are still to be created.
    newly_assigned: Vec<TopicPartition>,
    /// Told which tasks run here, for the next rebalance's stickiness.
    assignor: Arc<assignor::StreamsAssignor>,
    last_commit: Instant,
    /// Exactly-once: whether the producer has a transaction open.
    txn_open: bool,
    /// Exactly-once: the input offsets this thread's last committed transactions gave, per
    /// partition it still owns. A commit sends only those that moved, and after an abort the
    /// input is read again from here: the group may not show them yet (a transaction's
    /// offsets are visible once its markers are written, after `commit_transaction` returns).
    committed: BTreeMap<TopicPartition, i64>,
    /// Exactly-once: every task was closed without a checkpoint after a failed transaction;
    /// the input must go back to the committed offsets and the tasks be created again.
    rewind: bool,
    /// When transactions failed lately (to give up on failures that keep coming).
    recoveries: VecDeque<Instant>,
    /// An error the rebalance listener could not return (it has no caller to return it to).
    listener_error: Option<StreamsError>,
    /// For purging repartition topics below the committed offsets.
    admin: Arc<Admin>,
    last_purge: Instant,
    /// The purge in flight (at most one: a slow broker does not pile them up).
    purging: Option<tokio::task::JoinHandle<()>>,
}

/// The exactly-once `transactional.id` of a stream thread (`index` 0-based): Kafka Streams'
/// eos-v2 `<application.id>-<process id>-<thread index>`, thread indexes counted from 1 as in
/// thread names.
fn transactional_id(application_id: &str, process_id: &str, index: usize) -> String {
    format!("{application_id}-{process_id}-{}", index + 1)
}

/// Kafka Streams' client id prefix of a stream thread: `<client.id>-<process id>-StreamThread-<n>`,
/// so that tools tell instances apart.
fn thread_client_id(shared: &Shared, index: usize) -> String {
    format!("{}-{}-StreamThread-{}", shared.config.client_id, shared.process_id, index + 1)
}

/// The thread's producer: idempotent, and under exactly-once transactional with its
/// transactions initialised (which fences an older producer with the same id and aborts the
/// transaction it left open).
async fn thread_producer(shared: &Shared, index: usize) -> Result<Producer, StreamsError> {
    let config = &shared.config;
    let exactly_once = config.exactly_once();
    let producer = Producer::new(ProducerConfig {
        bootstrap_servers: config.bootstrap_servers.clone(),
        client_id: format!("{}-producer", thread_client_id(shared, index)),
        acks: -1,
        enable_idempotence: true,
        linger_ms: config.linger_ms,
        batch_size: 256 * 1024,
        transactional_id: exactly_once.then(|| transactional_id(&config.application_id, &shared.process_id, index)),
        transaction_timeout_ms: config.transaction_timeout_ms,
        ..ProducerConfig::default()
    })
    .await?;
    if exactly_once {
        producer.init_transactions().await?;
    }
    Ok(producer)
}

/// Whether an error inside an exactly-once commit interval is one an abort (or a new producer)
/// and reprocessing from the last committed transaction get past: the transaction failed or
/// was aborted, the producer was fenced, or a write failed in a way a retry may not.
fn transaction_failed(err: &StreamsError) -> bool {
    matches!(err, StreamsError::Client(e) if client_transaction_failed(e))
}

fn client_transaction_failed(e: &spate_client::Error) -> bool {
    use spate_client::protocol::ErrorCode;
    use spate_client::Error as E;
    match e {
        E::TransactionAbortable { .. } | E::TransactionFatal { .. } | E::TransactionAborted => true,
        E::DeliveryTimeout { .. } => true,
        E::Delivery { source, .. } => client_transaction_failed(source),
        e => {
            e.is_retriable()
                || matches!(
                    e.code(),
                    Some(
                        ErrorCode::PRODUCER_FENCED
                            | ErrorCode::INVALID_PRODUCER_EPOCH
                            | ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER
                            | ErrorCode::UNKNOWN_PRODUCER_ID
                            | ErrorCode::INVALID_PRODUCER_ID_MAPPING
                    )
                )
        }
    }
}

/// At most this many failed transactions within [`RECOVERY_WINDOW`] are recovered from; one
/// more stops the thread.
const MAX_RECOVERIES: usize = 10;
const RECOVERY_WINDOW: Duration = Duration::from_secs(60);

impl ThreadState {
    fn task_of(&self, topic: &str, partition: i32) -> Option<TaskId> {
        let st = self.shared.topology.subtopology_of(topic, &self.shared.config.application_id)?;
        Some(TaskId { subtopology: st.id, partition })
    }

    /// Creates (and restores) the tasks of newly assigned partitions.
    async fn create_tasks(&mut self, restore: &Consumer) -> Result<(), StreamsError> {
        let assigned = std::mem::take(&mut self.newly_assigned);
        let mut ids = BTreeSet::new();
        for tp in &assigned {
            if let Some(id) = self.task_of(&tp.topic, tp.partition) {
                if !self.tasks.contains_key(&id) {
                    ids.insert(id);
                }
            }
        }
        let app = self.shared.config.application_id.clone();
        let cache_per_task = self.shared.config.statestore_cache_max_bytes
            / (self.shared.config.num_stream_threads.max(1) * ids.len().max(1));
        for id in ids {
            let st = self.shared.topology.subtopologies[id.subtopology as usize].clone();
            let inputs: Vec<String> = st.source_topics.iter().map(|t| t.resolve(&app)).collect();
            let dir = self.task_dir(id, !st.stores.is_empty()).await?;
            let late = self.shared.topology.late_records_topic.as_deref().map(Arc::from);
            let mut task = Task::open(
                &self.shared.topology,
                &st,
                id,
                &app,
                dir,
                &inputs,
                cache_per_task,
                &self.shared.config.deserialization_handler,
                &self.shared.globals,
                late,
            )?;
            if self.shared.config.exactly_once() && !task.stores.is_empty() {
                task.delete_checkpoint()?;
            }
            self.restore(&mut task, restore).await?;
            {
                let mut registry = lock(&self.shared.stores);
                for (name, store) in &task.stores {
                    registry.entry(name.clone()).or_default().insert(id, store.clone());
                }
            }
            info!(task = %id, "task running");
            self.tasks.insert(id, task);
        }
        self.assignor.set_active(self.tasks.keys().copied());
        Ok(())
    }

    /// Locks the task's directory (waiting for another thread or instance to let go of it),
    /// wiping it when it has no checkpoint: then its stores may hold writes that no
    /// changelog offset vouches for.
    async fn task_dir(&self, id: TaskId, stateful: bool) -> Result<TaskDir, StreamsError> {
        let name = id.to_string();
        let sd = &self.shared.state_dir;
        if !stateful {
            return Ok(TaskDir { path: sd.task_dir(&name)?, lock: None });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let lock = loop {
            match sd.lock_task(&name) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(task = %id, error = %e, "task directory locked; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let path = sd.task_dir(&name)?;
        if !path.join(".checkpoint").exists() {
            sd.wipe_task(&name)?;
        }
        let path = sd.task_dir(&name)?;
        Ok(TaskDir { path, lock: Some(lock) })
    }

    /// Replays each logged store's changelog from the checkpoint to its end.
    async fn restore(&self, task: &mut Task, restore: &Consumer) -> Result<(), StreamsError> {
        let names: Vec<String> = task.changelogs.keys().cloned().collect();
        for name in names {
            let (changelog, from) = task.changelogs[&name].clone();
            let tp = TopicPartition::new(changelog.topic.to_string(), changelog.partition);
            restore.assign(vec![tp.clone()]).await?;
            restore.seek_to_end(std::slice::from_ref(&tp)).await?;
            let end = restore.position(&tp).await?;
            if from >= end {
                if from > end {
                    warn!(task = %task.id, store = %name, checkpoint = from, end,
                        "checkpoint is past the changelog's end (topic recreated?); keeping local state");
                }
                task.changelogs.get_mut(&name).expect("listed").1 = end;
                continue;
            }
            info!(task = %task.id, store = %name, from, end, "restoring from changelog");
            restore.seek(&tp, from).await?;
            let store = task.stores[&name].clone();
            let mut position = from;
            let mut last_log = Instant::now();
            let mut last_progress = Instant::now();
            while position < end {
                let records = restore.poll(Duration::from_millis(500)).await?;
                let mut batch = Vec::with_capacity(records.len());
                for r in records {
                    if r.offset >= end {
                        break;
                    }
                    position = r.offset + 1;
                    batch.push((r.key, r.value));
                }
                store.restore(&batch)?;
                self.shared.metrics.records_restored.fetch_add(batch.len() as u64, Ordering::Relaxed);
                metrics::counter!("spate_streams_restore_total", "application_id" => self.shared.config.application_id.clone(),
                    "task_id" => task.id.to_string(), "store" => name.clone())
                .increment(batch.len() as u64);
                if batch.is_empty() {
                    // Compaction can leave the last offsets empty: the position tells.
                    let fetched = restore.position(&tp).await?;
                    if fetched > position {
                        position = fetched;
                        last_progress = Instant::now();
                    } else if last_progress.elapsed() > RESTORE_STALL {
                        return Err(StreamsError::State(format!(
                            "restoring store {name} of task {} stalled at offset {position} of {} (end {end}): is the changelog readable?",
                            task.id, changelog.topic
                        )));
                    }
                } else {
                    last_progress = Instant::now();
                }
                if last_log.elapsed() > Duration::from_secs(10) {
                    info!(task = %task.id, store = %name, position, end, "restoring");
                    last_log = Instant::now();
                }
            }
            task.changelogs.get_mut(&name).expect("listed").1 = end;
            info!(task = %task.id, store = %name, records = end - from, "restored");
        }
        restore.assign(Vec::new()).await?;
        Ok(())
    }

    /// Hands every task's outputs to the producer (under exactly-once, beginning a transaction
    /// first if none is open).
    async fn send_outputs(&mut self) -> Result<(), StreamsError> {
        if self.shared.config.exactly_once() && !self.txn_open && self.tasks.values().any(|t| !t.ctx.out.is_empty()) {
            self.producer.begin_transaction()?;
            self.txn_open = true;
        }
        for (id, task) in &mut self.tasks {
            let m = &self.shared.metrics;
            let late = std::mem::take(&mut task.ctx.counters.dropped_late);
            let other = std::mem::take(&mut task.ctx.counters.dropped_other);
            m.dropped_late.fetch_add(late, Ordering::Relaxed);
            m.dropped_other.fetch_add(other, Ordering::Relaxed);
            task.metrics.dropped_records_total.increment(late + other);
            m.records_produced.fetch_add(task.ctx.out.len() as u64, Ordering::Relaxed);
            for out in task.ctx.out.drain(..) {
                let record = ProducerRecord {
                    partition: out.partition,
                    key: out.key,
                    value: out.value,
                    headers: Vec::new(),
                    timestamp_ms: Some(out.timestamp_ms),
                };
                let future = self.producer.send(&out.topic, record).await?;
                self.pending.push_back(Pending { future, topic: out.topic, task: *id, kind: out.kind });
            }
        }
        Ok(())
    }

    /// Takes the outcomes of completed deliveries (all of them when `wait`).
    async fn check_deliveries(&mut self, wait: bool) -> Result<(), StreamsError> {
        use futures_util::FutureExt;
        while let Some(front) = self.pending.front_mut() {
            let outcome = if wait {
                (&mut front.future).await
            } else {
                match (&mut front.future).now_or_never() {
                    Some(outcome) => outcome,
                    None => break,
                }
            };
            let p = self.pending.pop_front().expect("front exists");
            let metadata = match outcome {
                Ok(m) => m,
                // An output record the broker refused for good, under LogAndContinue: skipped.
                // Changelog writes always stop the application: a store would silently diverge
                // from its changelog.
                // Under exactly-once a failed write makes the transaction abortable (or the
                // producer unusable): skipping the record cannot help, the commit would fail.
                Err(e) if self.shared.config.exactly_once() && client_transaction_failed(&e) => {
                    return Err(StreamsError::Client(e));
                }
                Err(e)
                    if p.kind == OutKind::Sink
                        && self.shared.config.production_handler_continue
                        && !self.shared.config.exactly_once() =>
                {
                    warn!(topic = %p.topic, error = %e,
                        "dropping an output record the broker refused (default.production.exception.handler=LogAndContinue)");
                    self.shared.metrics.dropped_other.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) => {
                    return Err(StreamsError::State(format!(
                        "error sending to topic {}: {e} (production failed; the application stops, as with Kafka's default \
                         production handler; default.production.exception.handler=LogAndContinue skips output records instead)",
                        p.topic
                    )))
                }
            };
            if p.kind == OutKind::Changelog {
                if let Some(task) = self.tasks.get_mut(&p.task) {
                    task.changelog_acked(&p.topic, metadata.partition, metadata.offset);
                }
            }
        }
        Ok(())
    }

    /// A full commit of every task (see the module docs for the order). Under exactly-once
    /// only the tasks `closing` names (about to be closed cleanly) get a checkpoint; under
    /// at-least-once every task does.
    async fn commit(&mut self, consumer: &Consumer, closing: impl Fn(&TaskId) -> bool) -> Result<(), StreamsError> {
        let started = Instant::now();
        for task in self.tasks.values_mut() {
            task.prepare_commit()?;
        }
        self.send_outputs().await?;
        let mut offsets = BTreeMap::new();
        for task in self.tasks.values() {
            for (topic, partition, offset) in task.committable() {
                offsets.insert(TopicPartition::new(topic, partition), OffsetAndMetadata::new(offset));
            }
        }
        let exactly_once = self.shared.config.exactly_once();
        let mut offsets_committed: Vec<(TopicPartition, i64)> =
            offsets.iter().map(|(tp, o)| (tp.clone(), o.offset)).collect();
        if exactly_once {
            self.commit_transaction(consumer, offsets).await?;
            // The commit sent everything: take the changelog offsets for the checkpoints.
            self.check_deliveries(true).await?;
        } else {
            self.producer.flush().await?;
            self.check_deliveries(true).await?;
            if !offsets.is_empty() {
                if let Err(e) = consumer.commit_sync(Some(offsets)).await {
                    // The group moved on (a rebalance): these records will be processed again
                    // by whoever owns them now, as at-least-once allows.
                    warn!(error = %e, "offset commit failed; records since the last commit will be reprocessed");
                    // Nothing may be purged below offsets that were not committed.
                    offsets_committed.clear();
                }
            }
        }
        for (id, task) in &mut self.tasks {
            if !exactly_once || closing(id) {
                task.write_checkpoint()?;
            }
        }
        self.last_commit = Instant::now();
        self.maybe_purge_repartition_topics(&offsets_committed);
        let m = &self.shared.metrics;
        m.commits.fetch_add(1, Ordering::Relaxed);
        m.commit_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        metrics::histogram!("spate_streams_commit_latency_seconds", "application_id" => self.shared.config.application_id.clone())
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Every `repartition.purge.interval.ms`, after a commit: deletes the records of the
    /// repartition topics this thread reads below the offsets just committed (nothing reads
    /// them again: a restart resumes at the committed offsets). Runs in the background; its
    /// failure is only logged (the records then wait for `retention.ms`).
    fn maybe_purge_repartition_topics(&mut self, committed: &[(TopicPartition, i64)]) {
        let interval = Duration::from_millis(self.shared.config.repartition_purge_interval_ms);
        if self.last_purge.elapsed() < interval || self.purging.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let app = &self.shared.config.application_id;
        let repartition: BTreeSet<String> = self
            .shared
            .topology
            .subtopologies
            .iter()
            .flat_map(|st| &st.source_topics)
            .filter(|t| matches!(t, crate::topology::TopicName::Repartition(_)))
            .map(|t| t.resolve(app))
            .collect();
        let purge: Vec<(TopicPartition, i64)> =
            committed.iter().filter(|(tp, offset)| *offset > 0 && repartition.contains(&tp.topic)).cloned().collect();
        if purge.is_empty() {
            return;
        }
        self.last_purge = Instant::now();
        let admin = self.admin.clone();
        self.purging = Some(tokio::spawn(async move {
            match admin.delete_records(&purge).await {
                Ok(results) => {
                    for (tp, result) in results {
                        if let Err(e) = result {
                            debug!(partition = %tp, error = %e, "purging a repartition topic failed");
                        }
                    }
                }
                Err(e) => debug!(error = %e, "purging repartition topics failed"),
            }
        }));
    }

    /// Exactly-once: adds the input offsets that moved since the last commit to the open
    /// transaction (opening one if there is none but offsets moved) and commits it.
    async fn commit_transaction(
        &mut self,
        consumer: &Consumer,
        mut offsets: BTreeMap<TopicPartition, OffsetAndMetadata>,
    ) -> Result<(), StreamsError> {
        offsets.retain(|tp, o| self.committed.get(tp) != Some(&o.offset));
        if offsets.is_empty() && !self.txn_open {
            return Ok(());
        }
        if !self.txn_open {
            self.producer.begin_transaction()?;
            self.txn_open = true;
        }
        if !offsets.is_empty() {
            self.producer.send_offsets_to_transaction(&offsets, &consumer.group_metadata()?).await?;
        }
        self.producer.commit_transaction().await?;
        self.txn_open = false;
        self.committed.extend(offsets.into_iter().map(|(tp, o)| (tp, o.offset)));
        Ok(())
    }

    /// Exactly-once, before partitions go to another member: waits until the group shows the
    /// offsets of this thread's committed transactions for them (the markers that make them
    /// visible are written after `commit_transaction` returns), so their next owner starts
    /// where this one stopped. Bounded by `transaction.timeout.ms`.
    async fn await_committed_offsets(&mut self, consumer: &Consumer, partitions: &[TopicPartition]) {
        // Owned copies: a `&self` held across an await would make the listener's future
        // need `ThreadState: Sync`, which tasks are not.
        let committed: BTreeMap<TopicPartition, i64> =
            partitions.iter().filter_map(|tp| self.committed.get(tp).map(|o| (tp.clone(), *o))).collect();
        if committed.is_empty() {
            return;
        }
        let wanted: Vec<TopicPartition> = committed.keys().cloned().collect();
        let deadline = Instant::now() + Duration::from_millis(self.shared.config.transaction_timeout_ms);
        loop {
            match consumer.committed(&wanted).await {
                Ok(seen) => {
                    let behind = committed
                        .iter()
                        .any(|(tp, offset)| seen.get(tp).cloned().flatten().map(|o| o.offset) < Some(*offset));
                    if !behind {
                        return;
                    }
                }
                Err(e) => warn!(error = %e, "cannot read the group's offsets"),
            }
            if Instant::now() >= deadline {
                warn!(
                    "the group does not show this thread's committed offsets yet; handing the partitions over anyway"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Exactly-once, after `err` in a commit interval: aborts the open transaction (or, where
    /// the producer cannot go on, replaces it: the new one's `init_transactions` fences the
    /// old epoch and aborts what it left open), then closes every task without a checkpoint.
    /// The next turn of the loop rewinds the input to the committed offsets and creates the
    /// tasks again, restored from their changelogs' committed records. Errors that are not a
    /// failed transaction, and one failure too many, are returned.
    async fn recover(&mut self, err: StreamsError) -> Result<(), StreamsError> {
        if !self.shared.config.exactly_once() || !transaction_failed(&err) {
            return Err(err);
        }
        let now = Instant::now();
        self.recoveries.retain(|t| now.duration_since(*t) < RECOVERY_WINDOW);
        if self.recoveries.len() >= MAX_RECOVERIES {
            return Err(StreamsError::State(format!(
                "{MAX_RECOVERIES} transactions failed within {RECOVERY_WINDOW:?}; the last: {err}"
            )));
        }
        self.recoveries.push_back(now);
        warn!(error = %err, "transaction failed; aborting it and restoring every task to the last commit");
        let mut fatal = matches!(&err, StreamsError::Client(spate_client::Error::TransactionFatal { .. }));
        if !fatal && self.txn_open {
            match self.producer.abort_transaction().await {
                Ok(()) => {}
                Err(spate_client::Error::TransactionFatal { source }) => {
                    warn!(error = %source, "the producer cannot abort; replacing it");
                    fatal = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if fatal {
            let _ = self.producer.close().await;
            self.producer = thread_producer(&self.shared, self.index).await?;
        }
        self.close_dirty();
        Ok(())
    }

    /// Exactly-once: drops every task's writes since the last commit (the transaction holding
    /// them is aborted) and closes the tasks without a checkpoint, for [`Self::rewind`].
    fn close_dirty(&mut self) {
        self.txn_open = false;
        self.pending.clear();
        self.close_tasks(|_| true);
        self.rewind = true;
    }

    /// After [`Self::close_dirty`]: every assigned partition goes back to the offset of the
    /// last committed transaction, and its task is created again.
    async fn rewind(&mut self, consumer: &Consumer) -> Result<(), StreamsError> {
        let assigned = consumer.assignment().await;
        let unknown: Vec<TopicPartition> =
            assigned.iter().filter(|tp| !self.committed.contains_key(*tp)).cloned().collect();
        let group = if unknown.is_empty() { BTreeMap::new() } else { consumer.committed(&unknown).await? };
        for tp in &assigned {
            match self.committed.get(tp).copied().or_else(|| group.get(tp).cloned().flatten().map(|o| o.offset)) {
                Some(offset) => consumer.seek(tp, offset).await?,
                None => consumer.seek_to_beginning(std::slice::from_ref(tp)).await?,
            }
        }
        self.newly_assigned.extend(assigned);
        self.rewind = false;
        Ok(())
    }

    /// Closes tasks (after a commit): releases their stores and directories.
    fn close_tasks(&mut self, which: impl Fn(&TaskId) -> bool) {
        let ids: Vec<TaskId> = self.tasks.keys().copied().filter(|id| which(id)).collect();
        let mut registry = lock(&self.shared.stores);
        for id in ids {
            if let Some(task) = self.tasks.remove(&id) {
                for name in task.stores.keys() {
                    if let Some(m) = registry.get_mut(name) {
                        m.remove(&id);
                        if m.is_empty() {
                            registry.remove(name);
                        }
                    }
                }
                info!(task = %id, "task closed");
            }
        }
        self.assignor.set_active(self.tasks.keys().copied());
    }
}

/// Commits and closes tasks when the group takes partitions away.
struct Listener {
    state: Arc<tokio::sync::Mutex<ThreadState>>,
}

impl RebalanceListener for Listener {
    fn on_partitions_revoked<'a>(
        &'a self,
        consumer: &'a Consumer,
        partitions: &'a [TopicPartition],
    ) -> ListenerFuture<'a> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            let revoked: BTreeSet<TaskId> =
                partitions.iter().filter_map(|tp| st.task_of(&tp.topic, tp.partition)).collect();
            // Under exactly-once one transaction commits every task, the revoked ones with a
            // checkpoint as they close.
            match st.commit(consumer, |id| revoked.contains(id)).await {
                Ok(()) => {
                    if st.shared.config.exactly_once() {
                        st.await_committed_offsets(consumer, partitions).await;
                    }
                }
                Err(e) if st.shared.config.exactly_once() => {
                    if let Err(e) = st.recover(e).await {
                        st.listener_error.get_or_insert(e);
                    }
                }
                Err(e) => warn!(error = %e, "commit before a rebalance failed"),
            }
            st.close_tasks(|id| revoked.contains(id));
            for tp in partitions {
                st.committed.remove(tp);
            }
        })
    }

    fn on_partitions_assigned<'a>(
        &'a self,
        _consumer: &'a Consumer,
        partitions: &'a [TopicPartition],
    ) -> ListenerFuture<'a> {
        Box::pin(async move {
            self.state.lock().await.newly_assigned.extend(partitions.iter().cloned());
        })
    }

    fn on_partitions_lost<'a>(
        &'a self,
        _consumer: &'a Consumer,
        partitions: &'a [TopicPartition],
    ) -> ListenerFuture<'a> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            // Another member owns them now: nothing of theirs may be committed. Their writes
            // since the last commit are dropped; the new owner reprocesses from the committed
            // offsets (at-least-once).
            let lost: BTreeSet<TaskId> =
                partitions.iter().filter_map(|tp| st.task_of(&tp.topic, tp.partition)).collect();
            for tp in partitions {
                st.committed.remove(tp);
            }
            if st.shared.config.exactly_once() {
                // The open transaction holds writes of the lost tasks: it is aborted, and the
                // tasks kept go back to the last commit with it.
                if st.txn_open {
                    if let Err(e) = st.producer.abort_transaction().await {
                        if let Err(e) = st.recover(e.into()).await {
                            st.listener_error.get_or_insert(e);
                        }
                    }
                }
                st.close_dirty();
                return;
            }
            st.pending.retain(|p| !lost.contains(&p.task));
            st.close_tasks(|id| lost.contains(id));
        })
    }
}

/// Opens the global stores in `state.dir/<application.id>/global`, wiped first unless a
/// checkpoint says how far they got.
pub(crate) fn open_globals(
    topology: &Topology,
    state_dir: &StateDirectory,
) -> Result<(HashMap<String, GlobalStore>, Option<crate::state::directory::TaskDirLock>), StreamsError> {
    let mut globals = HashMap::new();
    if topology.globals.is_empty() {
        return Ok((globals, None));
    }
    let lock = state_dir.lock_task(GLOBAL_DIR)?;
    let dir = state_dir.task_dir(GLOBAL_DIR)?;
    if !dir.join(".checkpoint").exists() {
        state_dir.wipe_task(GLOBAL_DIR)?;
    }
    for g in &topology.globals {
        let kind = if g.in_memory { StoreKind::InMemory } else { StoreKind::Persistent };
        let store = crate::state::open_key_value(kind, &g.store, &dir.join(&g.store))?;
        globals.insert(g.store.clone(), Arc::new(Mutex::new(crate::store::LoggedKv::new(store, None, 0))));
    }
    Ok((globals, Some(lock)))
}

/// The global thread (Kafka's `GlobalStreamThread`): reads every partition of the global
/// topics into their stores, to the end first (then the stream threads start), and follows
/// them afterwards; checkpoints every `commit.interval.ms`.
async fn run_global(shared: Arc<Shared>) -> Result<(), StreamsError> {
    let config = &shared.config;
    let consumer = Consumer::new(ConsumerConfig {
        bootstrap_servers: config.bootstrap_servers.clone(),
        client_id: format!("{}-GlobalStreamThread-consumer", config.client_id),
        auto_offset_reset: AutoOffsetReset::Earliest,
        enable_auto_commit: false,
        max_poll_records: 10_000,
        isolation_level: if config.exactly_once() {
            IsolationLevel::ReadCommitted
        } else {
            IsolationLevel::ReadUncommitted
        },
        ..ConsumerConfig::default()
    })
    .await?;
    let dir = shared.state_dir.task_dir(GLOBAL_DIR)?;
    let checkpoint_path = dir.join(".checkpoint");
    let mut checkpoint = crate::state::checkpoint::read(&checkpoint_path)?.unwrap_or_default();
    let mut store_of: HashMap<String, GlobalStore> = HashMap::new();
    let mut partitions = Vec::new();
    for g in &shared.topology.globals {
        let metadata = consumer.cluster().topic(&g.topic).await.map_err(|e| {
            StreamsError::Config(format!(
                "global table topic '{}' cannot be read: {e} (create it before starting)",
                g.topic
            ))
        })?;
        if metadata.partitions.is_empty() {
            return Err(StreamsError::Config(format!(
                "global table topic '{}' does not exist: create it before starting",
                g.topic
            )));
        }
        for p in &metadata.partitions {
            partitions.push(TopicPartition::new(g.topic.clone(), p.partition));
        }
        store_of.insert(g.topic.clone(), shared.globals[&g.store].clone());
    }
    consumer.assign(partitions.clone()).await?;
    consumer.seek_to_end(&partitions).await?;
    let mut ends = HashMap::new();
    for tp in &partitions {
        ends.insert(tp.clone(), consumer.position(tp).await?);
    }
    // A store in memory starts empty: its topic is read from the start whatever the
    // checkpoint says.
    let in_memory: BTreeSet<&str> =
        shared.topology.globals.iter().filter(|g| g.in_memory).map(|g| g.topic.as_str()).collect();
    for tp in &partitions {
        let from = if in_memory.contains(tp.topic.as_str()) {
            0
        } else {
            checkpoint.offsets.get(&(tp.topic.clone(), tp.partition)).copied().unwrap_or(0)
        };
        consumer.seek(tp, from).await?;
    }
    let mut last_checkpoint = Instant::now();
    let commit_interval = Duration::from_millis(config.commit_interval_ms);
    while !shared.stop.load(Ordering::Acquire) {
        let records = consumer.poll(Duration::from_millis(config.poll_ms)).await?;
        let mut by_topic: HashMap<Arc<str>, Vec<crate::store::RawKeyValue>> = HashMap::new();
        for r in records {
            checkpoint.offsets.insert((r.topic.to_string(), r.partition), r.offset + 1);
            by_topic.entry(r.topic.clone()).or_default().push((r.key, r.value));
        }
        for (topic, batch) in by_topic {
            if let Some(store) = store_of.get(&*topic) {
                lock(store).restore(&batch)?;
            }
        }
        if !shared.globals_ready.load(Ordering::Acquire) {
            let mut caught_up = true;
            for tp in &partitions {
                caught_up &= consumer.position(tp).await? >= ends[tp];
            }
            if caught_up {
                info!("global tables bootstrapped");
                shared.globals_ready.store(true, Ordering::Release);
            }
        }
        if last_checkpoint.elapsed() >= commit_interval {
            for store in store_of.values() {
                lock(store).store.flush()?;
            }
            crate::state::checkpoint::write(&checkpoint_path, &checkpoint)?;
            last_checkpoint = Instant::now();
        }
    }
    for store in store_of.values() {
        lock(store).store.flush()?;
    }
    crate::state::checkpoint::write(&checkpoint_path, &checkpoint)?;
    let _ = consumer.close().await;
    Ok(())
}

async fn run_thread(shared: Arc<Shared>, index: usize) -> Result<(), StreamsError> {
    let config = &shared.config;
    while !shared.globals_ready.load(Ordering::Acquire) {
        if shared.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let admin =
        Admin::new(AdminConfig { bootstrap_servers: config.bootstrap_servers.clone(), ..AdminConfig::default() })
            .await?;
    prepare_topics(&shared, &admin).await?;
    let admin = Arc::new(admin);
    let thread_name = thread_client_id(&shared, index);
    let isolation_level =
        if config.exactly_once() { IsolationLevel::ReadCommitted } else { IsolationLevel::ReadUncommitted };
    let task_assignor = Arc::new(assignor::StreamsAssignor::new(
        shared
            .topology
            .subtopologies
            .iter()
            .map(|st| (st.id, st.source_topics.iter().map(|t| t.resolve(&config.application_id)).collect()))
            .collect(),
        shared.state_dir.application_dir().to_path_buf(),
    ));
    let consumer = Consumer::new(ConsumerConfig {
        bootstrap_servers: config.bootstrap_servers.clone(),
        client_id: format!("{thread_name}-consumer"),
        group_id: Some(config.application_id.clone()),
        group_instance_id: config.group_instance_id.as_ref().map(|g| format!("{g}-{}", index + 1)),
        enable_auto_commit: false,
        auto_offset_reset: AutoOffsetReset::Earliest,
        // Whole tasks (partition p of every input of a sub-topology) go to one member, sticky
        // to where they ran and where their state is.
        partition_assignment_strategy: vec![Assignor::Range],
        custom_assignor: Some(task_assignor.clone()),
        max_poll_records: config.max_poll_records,
        session_timeout_ms: config.session_timeout_ms,
        heartbeat_interval_ms: config.heartbeat_interval_ms,
        isolation_level,
        ..ConsumerConfig::default()
    })
    .await?;
    let restore = Consumer::new(ConsumerConfig {
        bootstrap_servers: config.bootstrap_servers.clone(),
        client_id: format!("{thread_name}-restore-consumer"),
        auto_offset_reset: AutoOffsetReset::Earliest,
        enable_auto_commit: false,
        max_poll_records: 10_000,
        isolation_level,
        ..ConsumerConfig::default()
    })
    .await?;
    let producer = thread_producer(&shared, index).await?;
    let state = Arc::new(tokio::sync::Mutex::new(ThreadState {
        shared: shared.clone(),
        index,
        producer,
        tasks: BTreeMap::new(),
        pending: VecDeque::new(),
        newly_assigned: Vec::new(),
        assignor: task_assignor,
        last_commit: Instant::now(),
        txn_open: false,
        committed: BTreeMap::new(),
        rewind: false,
        recoveries: VecDeque::new(),
        listener_error: None,
        admin: admin.clone(),
        last_purge: Instant::now(),
        purging: None,
    }));
    let topics = shared.topology.source_topics(&config.application_id);
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe_with_listener(&topic_refs, Arc::new(Listener { state: state.clone() })).await?;
    let commit_interval = Duration::from_millis(config.commit_interval_ms);
    let poll = Duration::from_millis(config.poll_ms);
    let result = async {
        while !shared.stop.load(Ordering::Acquire) {
            let records = consumer.poll(poll).await?;
            let mut st = state.lock().await;
            if let Some(e) = st.listener_error.take() {
                return Err(e);
            }
            let records = if st.rewind {
                // Refetched from the committed offsets instead.
                st.rewind(&consumer).await?;
                Vec::new()
            } else {
                records
            };
            if let Err(e) = st.run_once(&consumer, &restore, records, commit_interval).await {
                st.recover(e).await?;
            }
        }
        Ok::<(), StreamsError>(())
    }
    .await;
    if shared.crash.load(Ordering::Acquire) {
        // The tasks go as a dead process's do: no commit, no checkpoint, their directory
        // locks released (the consumer below is leaked with the listener, which holds them).
        state.lock().await.tasks.clear();
        // Dropping the runtime with this thread stops heartbeats without a LeaveGroup.
        std::mem::forget(consumer);
        std::mem::forget(restore);
        return Ok(());
    }
    // Close: commit what was processed (unless processing failed), then leave the group.
    let closing = async {
        let mut st = state.lock().await;
        if result.is_ok() {
            st.commit(&consumer, |_| true).await?;
            if config.exactly_once() {
                st.await_committed_offsets(&consumer, &consumer.assignment().await).await;
            }
        }
        st.close_tasks(|_| true);
        Ok::<(), StreamsError>(())
    }
    .await;
    let producer = state.lock().await.producer.clone();
    let _ = consumer.close().await;
    let _ = restore.close().await;
    let _ = producer.close().await;
    result.and(closing)
}

impl ThreadState {
    /// One turn of a stream thread after a poll: creates newly assigned tasks, processes
    /// `records`, hands the outputs to the producer, and commits when `commit.interval.ms`
    /// has passed.
    async fn run_once(
        &mut self,
        consumer: &Consumer,
        restore: &Consumer,
        records: Vec<spate_client::ConsumerRecord>,
        commit_interval: Duration,
    ) -> Result<(), StreamsError> {
        self.create_tasks(restore).await?;
        let now_ms = wall_clock_ms();
        // Route by (topic, partition), keeping each partition's order.
        let mut by_partition: BTreeMap<(Arc<str>, i32), Vec<spate_client::ConsumerRecord>> = BTreeMap::new();
        for r in records {
            by_partition.entry((r.topic.clone(), r.partition)).or_default().push(r);
        }
        for ((topic, partition), records) in by_partition {
            match self.task_of(&topic, partition) {
                Some(id) => match self.tasks.get_mut(&id) {
                    Some(task) => task.add_records(&topic, records),
                    None => {
                        warn!(%topic, partition, "records of a partition without a task; they will be refetched")
                    }
                },
                None => warn!(%topic, partition, "records of a topic the topology does not read"),
            }
        }
        let mut processed = 0;
        for task in self.tasks.values_mut() {
            let before = task.records_processed;
            if task.has_buffered() {
                task.process_buffered(now_ms)?;
            }
            task.punctuate_wall_clock(now_ms)?;
            processed += task.records_processed - before;
            task.metrics.process_total.increment(task.records_processed - before);
        }
        self.shared.metrics.records_processed.fetch_add(processed, Ordering::Relaxed);
        self.send_outputs().await?;
        self.check_deliveries(false).await?;
        if self.last_commit.elapsed() >= commit_interval {
            self.commit(consumer, |_| false).await?;
            // Lag per input partition, from the last fetch (no I/O), once per commit.
            for task in self.tasks.values() {
                for (tp, gauge) in &task.metrics.lag {
                    if let Ok(Some(lag)) = consumer.lag(tp).await {
                        gauge.set(lag as f64);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_print_as_kafka_does() {
        assert_eq!(TaskId { subtopology: 1, partition: 3 }.to_string(), "1_3");
    }

    #[test]
    fn transactional_ids_are_kafka_streams_eos_v2_ones() {
        let pid = "0d3c4c1e-4b8e-4a43-9a57-1f8a3b1f8e2a";
        assert_eq!(transactional_id("wordcount", pid, 0), format!("wordcount-{pid}-1"));
        assert_eq!(transactional_id("wordcount", pid, 2), format!("wordcount-{pid}-3"));
    }

    #[test]
    fn failed_transactions_are_told_from_other_errors() {
        use spate_client::protocol::ErrorCode;
        use spate_client::Error as E;
        let broker = |code| Arc::new(E::Broker { code, context: "test".into() });
        let client = |e| StreamsError::Client(e);
        assert!(transaction_failed(&client(E::TransactionAbortable { source: broker(ErrorCode::ILLEGAL_GENERATION) })));
        assert!(transaction_failed(&client(E::TransactionFatal { source: broker(ErrorCode::PRODUCER_FENCED) })));
        assert!(transaction_failed(&client(E::Delivery {
            topic: "t".into(),
            partition: 0,
            source: Arc::new(E::TransactionAborted)
        })));
        assert!(transaction_failed(&client(E::Delivery {
            topic: "t".into(),
            partition: 0,
            source: broker(ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER)
        })));
        // A record the broker refuses for good is not retried by reprocessing: the thread stops.
        assert!(!transaction_failed(&client(E::Delivery {
            topic: "t".into(),
            partition: 0,
            source: broker(ErrorCode::MESSAGE_TOO_LARGE)
        })));
        assert!(!transaction_failed(&StreamsError::Topology("x".into())));
        assert!(!transaction_failed(&client(E::InvalidTransactionState { operation: "send", state: "Ready" })));
    }
}

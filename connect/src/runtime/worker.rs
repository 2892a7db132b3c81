//! One worker process, as Kafka Connect's distributed mode: workers with the same `group.id`
//! form a group on the broker (protocol type `connect`), keep connector configs, source offsets
//! and statuses in compacted topics, and split connectors and tasks between them. The leader
//! of each generation deals out the work and writes task configs; every worker runs what it
//! was dealt.
//!
//! Rebalances are eager (Kafka's `connect.protocol=eager`): a worker stops all its tasks before
//! rejoining, so a task never runs on two workers at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value as Json;
use spate_client::consumer::{ClassicGroupConfig, ClassicGroupMember};
use spate_client::{Admin, Cluster, ConsumerConfig, IsolationLevel, Producer, ProducerConfig};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::config_state::{self, ConfigState, TargetState};
use super::kafka_log::{KafkaLog, TopicSpec};
use super::protocol::{self, Assignment, WorkerState};
use super::stores::{self, OffsetState, Status, StatusState};
use super::task::{self, StatusSink, TaskControl, TaskEnv, TaskMetrics};
use crate::config::Props;
use crate::connector::ConnectorType;
use crate::error::Result;
use crate::registry::Registry;

/// Worker settings, by Kafka Connect's worker config keys.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `bootstrap.servers`.
    pub bootstrap_servers: Vec<String>,
    /// `group.id` (default `spate-connect`).
    pub group_id: String,
    /// `listeners`: where the REST API listens (default 127.0.0.1:8083).
    pub listen: SocketAddr,
    /// `rest.advertised.host.name`/`port` as a URL; default `http://<listen>`.
    pub advertised_url: Option<String>,
    /// `config.storage.topic` (default `connect-configs`, one partition).
    pub config_storage_topic: String,
    /// `offset.storage.topic` (default `connect-offsets`).
    pub offset_storage_topic: String,
    /// `offset.storage.partitions` (default 25).
    pub offset_storage_partitions: i32,
    /// `status.storage.topic` (default `connect-status`).
    pub status_storage_topic: String,
    /// `status.storage.partitions` (default 5).
    pub status_storage_partitions: i32,
    /// `*.storage.replication.factor` (default -1: the broker's default).
    pub storage_replication_factor: i16,
    /// `offset.flush.interval.ms`: how often source offsets are stored and sink offsets
    /// committed. Default 1000 (Kafka's is 60000; a shorter interval shrinks what a crash
    /// repeats, at one small write per interval).
    pub offset_flush_interval_ms: u64,
    /// `task.shutdown.graceful.timeout.ms` (default 5000).
    pub task_shutdown_graceful_timeout_ms: u64,
    /// `plugin.path`: where Rhai transform scripts may be loaded from (default `plugins`).
    pub plugin_path: PathBuf,
    /// `session.timeout.ms` of the worker group (default 10000).
    pub session_timeout_ms: u64,
    /// `heartbeat.interval.ms` (default 3000).
    pub heartbeat_interval_ms: u64,
    /// `rebalance.timeout.ms` (default 60000).
    pub rebalance_timeout_ms: u64,
    /// Worker-level defaults for connector keys (`key.converter`, `value.converter`,
    /// `*.converter.schemas.enable`).
    pub connector_defaults: Props,
    /// Producer `buffer.memory` for source records (bounds unacknowledged bytes; default 32 MiB).
    pub producer_buffer_memory: usize,
    /// Producer `linger.ms` for source records (default 5).
    pub producer_linger_ms: u64,
    /// `exactly.once.source.support=enabled` (KIP-618; default disabled): every source task
    /// writes its records and its source offsets in one transaction of its own transactional
    /// producer (`transactional.id` = `<group.id>-<connector>-<task>`), and the offsets topic is
    /// read `read_committed`. The leader fences the previous tasks' producers before it writes
    /// new task configs.
    pub exactly_once_source_support: bool,
}

impl WorkerConfig {
    /// Defaults for a worker against `bootstrap`.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        WorkerConfig {
            bootstrap_servers: vec![bootstrap.into()],
            group_id: "spate-connect".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8083)),
            advertised_url: None,
            config_storage_topic: "connect-configs".into(),
            offset_storage_topic: "connect-offsets".into(),
            offset_storage_partitions: 25,
            status_storage_topic: "connect-status".into(),
            status_storage_partitions: 5,
            storage_replication_factor: -1,
            offset_flush_interval_ms: 1_000,
            task_shutdown_graceful_timeout_ms: 5_000,
            plugin_path: PathBuf::from("plugins"),
            session_timeout_ms: 10_000,
            heartbeat_interval_ms: 3_000,
            rebalance_timeout_ms: 60_000,
            connector_defaults: Props::new(),
            producer_buffer_memory: 32 * 1024 * 1024,
            producer_linger_ms: 5,
            exactly_once_source_support: false,
        }
    }
}

/// The producer settings of source records (the shared producer, and each exactly-once task's
/// own).
fn source_producer_config(config: &WorkerConfig) -> ProducerConfig {
    ProducerConfig {
        bootstrap_servers: config.bootstrap_servers.clone(),
        client_id: "spate-connect-source".into(),
        // As Kafka Connect's source producers: keep retrying through a broker outage
        // instead of failing every task after two minutes (stopping still ends the wait).
        delivery_timeout_ms: i32::MAX as u64,
        max_block_ms: i32::MAX as u64,
        linger_ms: config.producer_linger_ms,
        batch_size: 256 * 1024,
        buffer_memory: config.producer_buffer_memory,
        ..ProducerConfig::default()
    }
}

/// The `transactional.id` of an exactly-once source task (Kafka Connect's
/// `<group.id>-<connector>-<task>`).
pub fn source_transactional_id(group_id: &str, connector: &str, task: u32) -> String {
    format!("{group_id}-{connector}-{task}")
}

/// What this worker knows of the current generation.
#[derive(Debug, Clone, Default)]
pub struct GroupView {
    pub generation: i32,
    pub leader_url: Option<String>,
    pub is_leader: bool,
    pub rebalancing: bool,
    pub assignment: Assignment,
}

/// Picks tasks by `(connector, task id)`.
type TaskFilter = dyn Fn(&(String, u32)) -> bool + Send + Sync;

struct RunningTask {
    control: Arc<TaskControl>,
    thread: std::thread::JoinHandle<()>,
}

/// State shared by the worker loop, the REST herder and the task threads.
pub struct Shared {
    pub config: WorkerConfig,
    pub url: String,
    pub worker_id: String,
    pub plugins: Registry,
    pub cluster: Cluster,
    pub admin: Admin,
    /// Source records and dead-letter records.
    pub data_producer: Producer,
    pub config_log: Arc<KafkaLog>,
    pub config_state: Arc<Mutex<ConfigState>>,
    /// Bumped on every applied config record.
    pub config_version: watch::Receiver<u64>,
    pub offset_log: Arc<KafkaLog>,
    pub offset_state: Arc<Mutex<OffsetState>>,
    pub status_log: Arc<KafkaLog>,
    pub status_state: Arc<Mutex<StatusState>>,
    pub group: Mutex<GroupView>,
    running: Mutex<BTreeMap<(String, u32), RunningTask>>,
    /// Metrics of tasks that ran here, kept after they stop (status answers).
    pub task_metrics: Mutex<BTreeMap<(String, u32), Arc<TaskMetrics>>>,
    status_tx: tokio::sync::mpsc::UnboundedSender<(String, Option<Json>)>,
    pub member: ClassicGroupMember,
    shutdown: Notify,
    handle: tokio::runtime::Handle,
}

/// A running worker. Create with [`Worker::start`], serve its REST API with
/// [`crate::rest`] over [`Worker::shared`], stop with [`Worker::shutdown`].
pub struct Worker {
    shared: Arc<Shared>,
    main: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// Connects, creates the internal topics if missing, reads them, and starts the group
    /// loop. `url` is this worker's advertised REST URL.
    pub async fn start(config: WorkerConfig, plugins: Registry, url: String) -> Result<Worker> {
        let mut cluster_config = spate_client::metadata::ClusterConfig::new(config.bootstrap_servers.clone());
        cluster_config.connection.client_id = Some("spate-connect".into());
        let cluster = Cluster::connect(cluster_config).await?;
        let admin = Admin::with_cluster(cluster.clone(), 30_000);
        let internal_producer = Producer::new(ProducerConfig {
            bootstrap_servers: config.bootstrap_servers.clone(),
            client_id: "spate-connect-internal".into(),
            linger_ms: 0,
            ..ProducerConfig::default()
        })
        .await?;
        let data_producer = Producer::new(source_producer_config(&config)).await?;
        let consumer_config = ConsumerConfig {
            bootstrap_servers: config.bootstrap_servers.clone(),
            client_id: "spate-connect-internal".into(),
            ..ConsumerConfig::default()
        };
        let rf = config.storage_replication_factor;
        let config_state = Arc::new(Mutex::new(ConfigState::default()));
        let (version_tx, config_version) = watch::channel(0u64);
        let cs = config_state.clone();
        let config_log = KafkaLog::start(
            admin.clone(),
            internal_producer.clone(),
            consumer_config.clone(),
            TopicSpec { name: config.config_storage_topic.clone(), partitions: 1, replication_factor: rf },
            Box::new(move |r| {
                let Some(key) = r.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) else { return };
                let value = r.value.as_deref().and_then(|v| serde_json::from_slice::<Json>(v).ok());
                if r.value.is_some() && value.is_none() {
                    return;
                }
                cs.lock().expect("config state").apply(r.offset, key, value.as_ref());
                version_tx.send_modify(|v| *v += 1);
            }),
        )
        .await?;
        let offset_state = Arc::new(Mutex::new(OffsetState::default()));
        let os = offset_state.clone();
        let offset_log = KafkaLog::start(
            admin.clone(),
            internal_producer.clone(),
            ConsumerConfig {
                // Exactly-once source tasks write offsets in their transactions: an aborted
                // transaction's offsets must never be applied.
                isolation_level: if config.exactly_once_source_support {
                    IsolationLevel::ReadCommitted
                } else {
                    IsolationLevel::ReadUncommitted
                },
                ..consumer_config.clone()
            },
            TopicSpec {
                name: config.offset_storage_topic.clone(),
                partitions: config.offset_storage_partitions,
                replication_factor: rf,
            },
            Box::new(move |r| {
                if let Some(key) = r.key.as_deref() {
                    os.lock().expect("offset state").apply(key, r.value.as_deref());
                }
            }),
        )
        .await?;
        let status_state = Arc::new(Mutex::new(StatusState::default()));
        let ss = status_state.clone();
        let status_log = KafkaLog::start(
            admin.clone(),
            internal_producer.clone(),
            consumer_config,
            TopicSpec {
                name: config.status_storage_topic.clone(),
                partitions: config.status_storage_partitions,
                replication_factor: rf,
            },
            Box::new(move |r| {
                if let Some(key) = r.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) {
                    ss.lock().expect("status state").apply(key, r.value.as_deref());
                }
            }),
        )
        .await?;
        let read_timeout = Duration::from_secs(60);
        config_log.read_to_end(read_timeout).await?;
        offset_log.read_to_end(read_timeout).await?;
        status_log.read_to_end(read_timeout).await?;
        let member = ClassicGroupMember::new(
            cluster.clone(),
            ClassicGroupConfig {
                session_timeout_ms: config.session_timeout_ms,
                heartbeat_interval_ms: config.heartbeat_interval_ms,
                rebalance_timeout_ms: config.rebalance_timeout_ms,
                ..ClassicGroupConfig::new(config.group_id.clone(), protocol::PROTOCOL_TYPE)
            },
        );
        let worker_id =
            url.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/').to_owned();
        let status_log = Arc::new(status_log);
        let (status_tx, mut status_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Option<Json>)>();
        let writer_log = status_log.clone();
        let writer_state = status_state.clone();
        // One writer keeps status records of a key in the order they were reported.
        tokio::spawn(async move {
            while let Some((key, value)) = status_rx.recv().await {
                let bytes = value.map(|v| Bytes::from(serde_json::to_vec(&v).unwrap_or_default()));
                writer_state.lock().expect("status state").apply(&key, bytes.as_deref());
                if let Err(e) = writer_log.send(Bytes::from(key.clone()), bytes).await {
                    warn!(%key, error = %e, "writing status failed");
                }
            }
        });
        let shared = Arc::new(Shared {
            url,
            worker_id,
            plugins,
            cluster,
            admin,
            data_producer,
            config_log: Arc::new(config_log),
            config_state,
            config_version,
            offset_log: Arc::new(offset_log),
            offset_state,
            status_log,
            status_state,
            group: Mutex::new(GroupView { rebalancing: true, ..GroupView::default() }),
            running: Mutex::new(BTreeMap::new()),
            task_metrics: Mutex::new(BTreeMap::new()),
            status_tx,
            member,
            shutdown: Notify::new(),
            handle: tokio::runtime::Handle::current(),
            config,
        });
        let main = tokio::spawn(run(shared.clone()));
        Ok(Worker { shared, main })
    }

    /// The state the REST herder works on.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Stops every task (storing their offsets), leaves the group, and returns.
    pub async fn shutdown(self) {
        self.shared.shutdown.notify_one();
        let _ = self.main.await;
    }

    /// Waits until the worker loop ends (a fatal group error).
    pub async fn wait(&mut self) {
        let _ = (&mut self.main).await;
    }
}

impl Shared {
    /// Writes a status record (in report order).
    pub fn report(&self, key: String, status: Option<Status>) {
        let _ = self.status_tx.send((key, status.map(|s| s.to_json())));
    }

    fn generation(&self) -> i64 {
        i64::from(self.group.lock().expect("group").generation)
    }

    /// Writes one config record and waits until this worker has read it back.
    pub async fn write_config(&self, key: String, value: Option<Json>) -> Result<()> {
        let bytes = value.map(|v| Bytes::from(serde_json::to_vec(&v).unwrap_or_default()));
        self.config_log.send(Bytes::from(key), bytes).await?;
        self.config_log.read_to_end(Duration::from_secs(30)).await
    }

    /// Computes each connector's task configs and writes those that changed (leader only).
    async fn reconcile_task_configs(&self) -> Result<()> {
        let connectors: Vec<(String, Props, Vec<Props>, TargetState)> = {
            let state = self.config_state.lock().expect("config state");
            state.connectors().iter().map(|(n, c)| (n.clone(), c.config.clone(), c.tasks.clone(), c.target)).collect()
        };
        for (name, config, tasks, target) in connectors {
            if target == TargetState::Stopped {
                // A stopped connector has no tasks (as Kafka Connect writes it): resuming it
                // generates them again.
                if !tasks.is_empty() {
                    info!(connector = %name, "connector stopped: removing its task configs");
                    let commit = serde_json::json!({"tasks": 0});
                    self.config_log
                        .send(Bytes::from(config_state::commit_key(&name)), Some(Bytes::from(commit.to_string())))
                        .await?;
                }
                continue;
            }
            let Some(plugin) = config.get("connector.class").and_then(|c| self.plugins.find(c)) else {
                self.report_connector_failed(
                    &name,
                    format!("unknown connector class {:?}", config.get("connector.class")),
                );
                continue;
            };
            let max_tasks = config.get("tasks.max").and_then(|t| t.trim().parse::<usize>().ok()).unwrap_or(1).max(1);
            let wanted = match plugin.task_configs(&config, max_tasks) {
                Ok(t) => t,
                Err(e) => {
                    warn!(connector = %name, error = %e, "generating task configs failed");
                    self.report_connector_failed(&name, e.to_string());
                    continue;
                }
            };
            // Task configs carry the connector's common keys too, as Kafka's do.
            let wanted: Vec<Props> = wanted
                .into_iter()
                .map(|mut t| {
                    for (k, v) in &config {
                        t.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                    t
                })
                .collect();
            if wanted != tasks {
                if self.config.exactly_once_source_support
                    && plugin.kind() == ConnectorType::Source
                    && !tasks.is_empty()
                {
                    // KIP-618: no task of the previous configs may commit once the new ones
                    // exist (a task id the new configs do not reuse has no successor to fence it).
                    // A failure holds back this connector's new configs only.
                    if let Err(e) = self.fence_source_tasks(&name, tasks.len()).await {
                        warn!(connector = %name, error = %e, "fencing the previous tasks failed; new task configs wait");
                        self.report_connector_failed(&name, e.to_string());
                        continue;
                    }
                }
                info!(connector = %name, tasks = wanted.len(), "writing task configs");
                for (i, t) in wanted.iter().enumerate() {
                    let bytes = serde_json::to_vec(&config_state::properties_value(t)).unwrap_or_default();
                    self.config_log
                        .send(Bytes::from(config_state::task_key(&name, i as u32)), Some(Bytes::from(bytes)))
                        .await?;
                }
                let commit = serde_json::json!({"tasks": wanted.len()});
                self.config_log
                    .send(Bytes::from(config_state::commit_key(&name)), Some(Bytes::from(commit.to_string())))
                    .await?;
            }
        }
        Ok(())
    }

    /// Marks a connector FAILED with `trace` (its config cannot become tasks).
    fn report_connector_failed(&self, name: &str, trace: String) {
        self.report(
            stores::connector_status_key(name),
            Some(Status {
                state: "FAILED".into(),
                trace: Some(trace),
                worker_id: self.worker_id.clone(),
                generation: self.generation(),
            }),
        );
    }

    /// Fences the transactional producers of a source connector's `count` tasks.
    async fn fence_source_tasks(&self, connector: &str, count: usize) -> Result<()> {
        let ids: Vec<String> =
            (0..count as u32).map(|t| source_transactional_id(&self.config.group_id, connector, t)).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        for (id, result) in self.admin.fence_producers(&refs).await? {
            result.map_err(|e| {
                crate::error::ConnectError::Internal(format!(
                    "fencing the producer of {id} before new task configs of {connector}: {e}"
                ))
            })?;
        }
        info!(connector, tasks = count, "fenced the previous tasks' transactional producers");
        Ok(())
    }

    /// What decides the assignment: per connector, its task count when it should run.
    fn work_units(&self) -> Vec<(String, u32)> {
        let state = self.config_state.lock().expect("config state");
        state
            .connectors()
            .iter()
            .map(|(n, c)| (n.clone(), if c.target == TargetState::Stopped { 0 } else { c.tasks.len() as u32 }))
            .collect()
    }

    /// A fingerprint of everything that changes the assignment or what a task runs with: a
    /// difference means rebalance.
    fn assignment_fingerprint(&self) -> String {
        let state = self.config_state.lock().expect("config state");
        let mut s = String::new();
        for (n, c) in state.connectors() {
            s.push_str(n);
            s.push_str(&c.config_offset.to_string());
            s.push_str(&serde_json::to_string(&c.tasks).unwrap_or_default());
            s.push_str(&serde_json::to_string(&c.config).unwrap_or_default());
            s.push_str(if c.target == TargetState::Stopped { "S" } else { "R" });
            s.push('\n');
        }
        s
    }

    fn start_task(self: &Arc<Self>, connector: &str, task_id: u32) {
        let (config, task_config, target) = {
            let state = self.config_state.lock().expect("config state");
            let Some(t) = state.connector(connector).and_then(|c| c.tasks.get(task_id as usize).map(|t| (c, t))) else {
                warn!(connector, task = task_id, "assigned a task whose config this worker does not have; not started");
                return;
            };
            let (c, t) = t;
            (c.config.clone(), t.clone(), c.target)
        };
        let plugin = match config.get("connector.class").and_then(|c| self.plugins.find(c)) {
            Some(p) => p,
            None => {
                self.task_state(
                    connector,
                    task_id,
                    "FAILED",
                    Some(format!("unknown connector class {:?}", config.get("connector.class"))),
                );
                return;
            }
        };
        let control = Arc::new(TaskControl::default());
        control.paused.store(target == TargetState::Paused, std::sync::atomic::Ordering::Relaxed);
        let metrics = Arc::new(TaskMetrics::default());
        self.task_metrics.lock().expect("metrics").insert((connector.to_owned(), task_id), metrics.clone());
        let kind = plugin.kind();
        let transactional_producer =
            (self.config.exactly_once_source_support && kind == ConnectorType::Source).then(|| ProducerConfig {
                client_id: format!("spate-connect-{connector}-{task_id}"),
                transactional_id: Some(source_transactional_id(&self.config.group_id, connector, task_id)),
                ..source_producer_config(&self.config)
            });
        let env = TaskEnv {
            handle: self.handle.clone(),
            connector: connector.to_owned(),
            task: task_id,
            connector_config: config,
            task_config,
            worker_defaults: self.config.connector_defaults.clone(),
            plugins_dir: self.config.plugin_path.clone(),
            producer: self.data_producer.clone(),
            transactional_producer,
            admin: self.admin.clone(),
            offsets: self.offset_state.clone(),
            offset_log: self.offset_log.clone(),
            consumer_config: ConsumerConfig {
                bootstrap_servers: self.config.bootstrap_servers.clone(),
                ..ConsumerConfig::default()
            },
            offset_flush_interval: Duration::from_millis(self.config.offset_flush_interval_ms.max(10)),
            shutdown_timeout: Duration::from_millis(self.config.task_shutdown_graceful_timeout_ms),
            control: control.clone(),
            metrics: metrics.clone(),
            status: self.clone() as Arc<dyn StatusSink>,
        };
        let name = format!("{connector}-{task_id}");
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let created = match kind {
                ConnectorType::Source => plugin.source_task().map(|t| task::run_source(env.clone(), t)),
                ConnectorType::Sink => plugin.sink_task().map(|t| task::run_sink(env.clone(), t)),
            };
            if let Err(e) = created {
                env.status.task_state(&env.connector, env.task, "FAILED", Some(e.to_string()));
            }
        });
        match spawned {
            Ok(thread) => {
                self.running
                    .lock()
                    .expect("running")
                    .insert((connector.to_owned(), task_id), RunningTask { control, thread });
            }
            Err(e) => warn!(connector, task = task_id, error = %e, "cannot spawn task thread"),
        }
    }

    /// Stops the given tasks (all when `None`) and waits for their threads.
    fn stop_tasks(&self, which: Option<&TaskFilter>) {
        let stopping: Vec<((String, u32), RunningTask)> = {
            let mut running = self.running.lock().expect("running");
            let keys: Vec<(String, u32)> = running.keys().filter(|k| which.is_none_or(|f| f(k))).cloned().collect();
            keys.into_iter().filter_map(|k| running.remove(&k).map(|t| (k, t))).collect()
        };
        for (_, t) in &stopping {
            t.control.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let deadline = std::time::Instant::now() + Duration::from_millis(self.config.task_shutdown_graceful_timeout_ms);
        for ((connector, task_id), t) in stopping {
            while !t.thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.thread.is_finished() {
                let _ = t.thread.join();
            } else {
                // A task stuck in connector code must not hold the worker out of its group:
                // abandon the thread and fence it (Kafka Connect does the same).
                t.control.fenced.store(true, std::sync::atomic::Ordering::Relaxed);
                warn!(connector = %connector, task = task_id, "task did not stop within task.shutdown.graceful.timeout.ms; abandoned");
            }
            // Only a task that did not fail is unassigned; a failure stays visible.
            let failed = self
                .status_state
                .lock()
                .expect("status")
                .tasks
                .get(&(connector.clone(), task_id))
                .is_some_and(|s| s.state == "FAILED" && s.worker_id == self.worker_id);
            if !failed {
                self.task_state(&connector, task_id, "UNASSIGNED", None);
            }
        }
    }

    fn set_paused(&self, connector: &str, paused: bool) {
        let running = self.running.lock().expect("running");
        for ((c, _), t) in running.iter() {
            if c == connector {
                t.control.paused.store(paused, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Whether a task runs here.
    pub fn runs(&self, connector: &str, task: u32) -> bool {
        self.running.lock().expect("running").contains_key(&(connector.to_owned(), task))
    }

    fn report_connector(&self, name: &str) {
        let (target, class) = {
            let state = self.config_state.lock().expect("config state");
            let Some(c) = state.connector(name) else { return };
            (c.target, c.config.get("connector.class").cloned())
        };
        // A connector whose class is unknown stays FAILED.
        if class.is_none_or(|c| self.plugins.find(&c).is_none()) {
            return;
        }
        let state = match target {
            TargetState::Paused => "PAUSED",
            TargetState::Stopped => "STOPPED",
            TargetState::Started => "RUNNING",
        };
        self.report(
            stores::connector_status_key(name),
            Some(Status {
                state: state.into(),
                trace: None,
                worker_id: self.worker_id.clone(),
                generation: self.generation(),
            }),
        );
    }
}

impl StatusSink for Shared {
    fn task_state(&self, connector: &str, task: u32, state: &str, trace: Option<String>) {
        self.report(
            stores::task_status_key(connector, task),
            Some(Status {
                state: state.into(),
                trace,
                worker_id: self.worker_id.clone(),
                generation: self.generation(),
            }),
        );
    }

    fn topic_used(&self, connector: &str, task: u32, topic: &str) {
        let known = self.status_state.lock().expect("status").topics.get(connector).is_some_and(|t| t.contains(topic));
        if known {
            return;
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let _ = self.status_tx.send((
            stores::topic_status_key(topic, connector),
            Some(serde_json::json!({"topic": {"name": topic, "connector": connector, "task": task, "discoverTimestamp": now_ms}})),
        ));
    }
}

/// The worker loop: rejoin, run the assignment, react to config changes, until shutdown.
async fn run(shared: Arc<Shared>) {
    let mut version = shared.config_version.clone();
    let started_at_offset = shared.config_state.lock().expect("config state").offset();
    let mut restarts_seen = started_at_offset;
    loop {
        {
            let mut g = shared.group.lock().expect("group");
            g.rebalancing = true;
        }
        // Eager: nothing runs while the group rebalances.
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || s.stop_tasks(None)).await;
        if let Err(e) = shared.config_log.read_to_end(Duration::from_secs(30)).await {
            warn!(error = %e, "reading the config topic failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let my_offset = shared.config_state.lock().expect("config state").offset();
        let metadata =
            protocol::encode_worker_state(&WorkerState { url: shared.url.clone(), config_offset: my_offset });
        // What this worker's assignment will be judged against: the configs as of joining.
        // Any later change (a new connector, the leader's task configs written just after this
        // rebalance) then differs from it and calls for another rebalance.
        let units = shared.work_units();
        let mut fingerprint = shared.assignment_fingerprint();
        let url = shared.url.clone();
        let rebalance = shared.member.rebalance(vec![(protocol::PROTOCOL_NAME.to_owned(), metadata)], |joined| {
            let states: Vec<(String, WorkerState)> = joined
                .members
                .iter()
                .filter_map(|(id, m)| protocol::decode_worker_state(m).ok().map(|s| (id.clone(), s)))
                .collect();
            let max_offset = states.iter().map(|(_, s)| s.config_offset).max().unwrap_or(my_offset);
            let ids: Vec<String> = states.iter().map(|(id, _)| id.clone()).collect();
            let mut out = protocol::assign_round_robin(&ids, &units, &joined.member_id, &url, my_offset);
            if max_offset > my_offset {
                // This leader is behind a member: nobody runs anything; all reread and rejoin.
                for (_, a) in &mut out {
                    a.error = protocol::CONFIG_MISMATCH;
                    a.assignment.clear();
                }
            }
            out.into_iter().map(|(id, a)| (id, protocol::encode_assignment(&a))).collect()
        });
        let rebalanced = tokio::select! {
            r = rebalance => r,
            _ = shared.shutdown.notified() => {
                shared.member.leave("worker shutting down").await;
                return;
            }
        };
        let rebalanced = match rebalanced {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "joining the worker group failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let assignment = match protocol::decode_assignment(&rebalanced.assignment) {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "undecodable assignment; rejoining");
                shared.member.request_rejoin("undecodable assignment");
                continue;
            }
        };
        if assignment.error == protocol::CONFIG_MISMATCH {
            let _ = shared.config_log.read_to_end(Duration::from_secs(30)).await;
            shared.member.request_rejoin("config mismatch");
            continue;
        }
        // Kafka's rule: run an assignment only with the configs it was made from (or newer).
        if shared.config_state.lock().expect("config state").offset() < assignment.config_offset {
            if let Err(e) = shared.config_log.read_to_end(Duration::from_secs(30)).await {
                warn!(error = %e, "cannot read the configs this assignment was made from; rejoining");
                shared.member.request_rejoin("config topic behind the assignment");
                continue;
            }
        }
        let is_leader = rebalanced.joined.is_leader();
        info!(
            generation = rebalanced.joined.generation_id,
            leader = is_leader,
            connectors = assignment.connectors().count(),
            tasks = assignment.tasks().count(),
            "joined the worker group"
        );
        {
            let mut g = shared.group.lock().expect("group");
            g.generation = rebalanced.joined.generation_id;
            g.leader_url = Some(assignment.leader_url.clone());
            g.is_leader = is_leader;
            g.rebalancing = false;
            g.assignment = assignment.clone();
        }
        let mut reconcile_failed = false;
        if is_leader {
            if let Err(e) = shared.reconcile_task_configs().await {
                warn!(error = %e, "writing task configs failed; retrying");
                reconcile_failed = true;
            }
        }
        for c in assignment.connectors() {
            shared.report_connector(c);
        }
        let tasks: Vec<(String, u32)> = assignment.tasks().map(|(c, t)| (c.to_owned(), t)).collect();
        for (c, t) in &tasks {
            shared.start_task(c, *t);
        }
        let mut targets: BTreeMap<String, TargetState> = target_states(&shared);
        // Run until the group or the configs call for a new assignment.
        loop {
            tokio::select! {
                _ = shared.member.rejoin_requested() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)), if reconcile_failed => {
                    reconcile_failed = match shared.reconcile_task_configs().await {
                        Ok(()) => false,
                        Err(e) => {
                            warn!(error = %e, "writing task configs failed; retrying");
                            true
                        }
                    };
                }
                _ = shared.shutdown.notified() => {
                    let s = shared.clone();
                    let _ = tokio::task::spawn_blocking(move || s.stop_tasks(None)).await;
                    shared.member.leave("worker shutting down").await;
                    return;
                }
                changed = version.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Let a burst of config records (task configs + commit) land together.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = version.borrow_and_update();
                    if shared.group.lock().expect("group").is_leader {
                        if let Err(e) = shared.reconcile_task_configs().await {
                            warn!(error = %e, "writing task configs failed; retrying");
                            reconcile_failed = true;
                        }
                    }
                    // Pause / resume apply in place.
                    let now = target_states(&shared);
                    for (name, t) in &now {
                        if targets.get(name) != Some(t) {
                            shared.set_paused(name, *t == TargetState::Paused);
                            if assignment.connectors().any(|c| c == name) {
                                shared.report_connector(name);
                            }
                        }
                    }
                    targets = now;
                    handle_restarts(&shared, &mut restarts_seen, &assignment).await;
                    let fp = shared.assignment_fingerprint();
                    if fp != fingerprint {
                        fingerprint = fp;
                        shared.member.request_rejoin("connector configs changed");
                        break;
                    }
                }
            }
        }
    }
}

fn target_states(shared: &Shared) -> BTreeMap<String, TargetState> {
    shared.config_state.lock().expect("config state").connectors().iter().map(|(n, c)| (n.clone(), c.target)).collect()
}

async fn handle_restarts(shared: &Arc<Shared>, seen: &mut i64, assignment: &Assignment) {
    let requests: Vec<_> = shared.config_state.lock().expect("config state").restarts_since(*seen).cloned().collect();
    for r in requests {
        *seen = (*seen).max(r.offset + 1);
        let mine: BTreeSet<(String, u32)> = assignment
            .tasks()
            .filter(|(c, t)| *c == r.connector && (r.task.is_none() || r.task == Some(*t)))
            .filter(|_| r.task.is_some() || r.include_tasks)
            .map(|(c, t)| (c.to_owned(), t))
            .collect();
        let failed_only = r.only_failed;
        let to_restart: Vec<(String, u32)> = mine
            .into_iter()
            .filter(|(c, t)| {
                !failed_only
                    || shared
                        .status_state
                        .lock()
                        .expect("status")
                        .tasks
                        .get(&(c.clone(), *t))
                        .is_some_and(|s| s.state == "FAILED")
            })
            .collect();
        if r.task.is_none() && assignment.connectors().any(|c| c == r.connector) {
            shared.report_connector(&r.connector);
        }
        if to_restart.is_empty() {
            continue;
        }
        info!(connector = %r.connector, tasks = to_restart.len(), "restarting tasks");
        for (c, t) in &to_restart {
            shared.task_state(c, *t, "RESTARTING", None);
        }
        let s = shared.clone();
        let set: BTreeSet<(String, u32)> = to_restart.iter().cloned().collect();
        let _ =
            tokio::task::spawn_blocking(move || s.stop_tasks(Some(&move |k: &(String, u32)| set.contains(k)))).await;
        for (c, t) in &to_restart {
            shared.start_task(c, *t);
        }
    }
}

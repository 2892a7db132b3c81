//! The broker's state: topics and their partitions, persisted topic metadata, the flusher and
//! the producer-id allocator. API handlers work through this type; the network layer owns it in
//! an `Arc`.
//!
//! The metadata quorum (`controller`) is the source of truth: topics, their partitions'
//! replicas, leaders and ISRs live in its replicated log, and this broker follows the image it
//! applies: [`Broker::reconcile`] opens the replicas assigned here, deletes what the image
//! dropped and hands roles to the replica manager. Create/delete/alter go through the
//! controller and take effect here when the resulting image does.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spate_client::protocol::ErrorCode;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::controller::logic::{INELIGIBLE_REPLICA, MAX_PARTITIONS_PER_TOPIC};
use crate::controller::{
    Controller, ControllerConfig, ControllerRefusal, ControllerReply, ControllerRequest, ElectionResult, MetadataImage,
    QuorumDescription,
};
use crate::error::{BrokerError, Result};
use crate::flusher::Flusher;
use crate::group::GroupCoordinator;
use crate::log::write_file_atomically;
use crate::log_cleaner::LogCleaner;
use crate::log_dir::LogDir;
use crate::partition::{AlterOutcome, Partition, TopicPartition, DELETED_DIR_SUFFIX};
use crate::producer_state::PRODUCER_ID_BLOCK_SIZE;
use crate::replica::{ReplicaConfig, ReplicaManager};
use crate::topic_config::{self, TopicConfigs};

/// Milliseconds since the Unix epoch, read at the edge and passed into the sans-IO parts.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub struct Topic {
    pub name: String,
    pub id: Uuid,
    pub configs: TopicConfigs,
    /// This broker's replicas, indexed by partition number; `None` where it holds none.
    pub partitions: Vec<Option<Arc<Partition>>>,
}

impl Topic {
    /// Partitions of the topic in the cluster.
    pub fn partition_count(&self) -> i32 {
        self.partitions.len() as i32
    }

    /// The replicas this broker holds.
    pub fn local_partitions(&self) -> impl Iterator<Item = &Arc<Partition>> {
        self.partitions.iter().flatten()
    }
}

pub struct Broker {
    pub config: BrokerConfig,
    pub cluster_id: String,
    /// Every topic of the cluster, with this broker's replicas opened. Rebuilt from the metadata
    /// image by [`Broker::reconcile`].
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Serialises reconciliation; holds the `applied_index` of the newest image reconciled.
    reconciling: Mutex<u64>,
    pub(crate) flusher: Arc<Flusher>,
    /// `log.dirs`, offline after a failed fsync (see `log_dir`).
    pub(crate) log_dir: Arc<LogDir>,
    /// Compacts logs whose `cleanup.policy` includes `compact`.
    cleaner: LogCleaner,
    /// The metadata quorum (this node is one of its voters).
    pub controller: Arc<Controller>,
    /// Leader and follower roles of the local replicas, and the follower fetchers.
    pub replicas: Arc<ReplicaManager>,
    /// Unused producer ids of the block this broker holds: `next..end`.
    producer_ids: tokio::sync::Mutex<(i64, i64)>,
    /// New for every process start (the controller tells restarts apart by it).
    pub incarnation_id: Uuid,
    /// Consumer groups and committed offsets (`__consumer_offsets`).
    pub groups: GroupCoordinator,
    /// Transactions (`__transaction_state`).
    pub txns: crate::txn::TransactionCoordinator,
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Set by [`Broker::controlled_shutdown`]: heartbeats stop, so the controller does not
    /// unfence this broker again before it exits.
    shutting_down: std::sync::atomic::AtomicBool,
}

/// Kafka's topic-name rules: 1..=249 chars of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let bad = |reason: &str| Err(BrokerError::InvalidTopic { topic: name.to_string(), reason: reason.to_string() });
    if name.is_empty() {
        return bad("topic name is empty");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if name.len() > 249 {
        return bad("longer than 249 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

/// The file in a partition directory naming the topic id it belongs to (Kafka's
/// `partition.metadata`), so a directory left by a deleted topic is never mistaken for a
/// replica of a new topic with the same name.
const PARTITION_METADATA_FILE: &str = "partition.metadata";
/// Where the metadata quorum keeps its log, inside `log.dirs`.
pub const METADATA_DIR: &str = "__cluster_metadata";
/// How long one controller request may take before the Kafka request that caused it fails.
const CONTROLLER_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a controlled shutdown may take before the broker stops anyway (the quorum may be
/// gone: the other brokers stopping at the same time). Kafka retries 3 times, 5 s apart; a
/// process manager's stop timeout is usually 10 s, so this stays well inside it.
const CONTROLLED_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between tries of the controlled-shutdown request (a controller failover).
const CONTROLLED_SHUTDOWN_RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// The registration this process sends at start, and again if the controller forgot it.
fn register_request(config: &BrokerConfig, incarnation_id: Uuid) -> ControllerRequest {
    let (host, port) = config.advertised();
    ControllerRequest::RegisterBroker { broker_id: config.node_id, host, port, incarnation_id }
}

fn controller_error(refusal: ControllerRefusal) -> BrokerError {
    BrokerError::Controller { code: ErrorCode(refusal.code), message: refusal.message }
}

impl Broker {
    /// Starts this node's controller, waits for the quorum, registers with it, and opens every
    /// local replica the metadata names. Returns once the broker can serve.
    pub async fn open(config: BrokerConfig) -> Result<Arc<Broker>> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|e| BrokerError::io(&data_dir, e))?;
        let voters = config.quorum_voters()?;
        let controller_listen = config.controller_listener.or_else(|| voters.get(&config.node_id).copied());
        let controller = Controller::start(ControllerConfig {
            node_id: config.node_id,
            voters,
            listen: controller_listen,
            observer: !config.is_voter()?,
            metadata_dir: data_dir.join(METADATA_DIR),
            broker_session_timeout_ms: config.broker_session_timeout_ms,
            auto_leader_rebalance_enable: config.auto_leader_rebalance_enable,
            leader_imbalance_check_interval_ms: config.leader_imbalance_check_interval_seconds.saturating_mul(1000),
            unclean_leader_election_enable: config.unclean_leader_election_enable,
            default_replication_factor: config.default_replication_factor,
            metadata_snapshot_max_records: 10_000,
        })
        .await?;
        let mut images = controller.subscribe();
        let mut waited = 0u64;
        while images.borrow_and_update().cluster_id.is_empty() {
            if tokio::time::timeout(Duration::from_secs(5), images.changed()).await.is_err() {
                waited += 5;
                warn!(waited_s = waited, "waiting for the metadata quorum to elect a leader");
            }
        }
        let cluster_id = controller.image().cluster_id.clone();
        let incarnation_id = Uuid::new_v4();
        let register = register_request(&config, incarnation_id);
        loop {
            match controller.submit(register.clone(), CONTROLLER_REQUEST_TIMEOUT).await {
                Ok(_) => break,
                Err(refusal) => {
                    warn!(error = %refusal, "registering with the controller failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        let (alter_tx, alter_rx) = mpsc::unbounded_channel();
        let flusher = Arc::new(Flusher::start());
        let replica_config = ReplicaConfig {
            node_id: config.node_id,
            replica_lag_time_max_ms: config.replica_lag_time_max_ms,
            replica_fetch_wait_max_ms: config.replica_fetch_wait_max_ms,
            replica_fetch_max_bytes: config.replica_fetch_max_bytes,
            replica_fetch_backoff_ms: config.replica_fetch_backoff_ms,
            flush_mode: config.log_flush_mode,
        };
        let dirty = flusher.clone();
        let replicas = ReplicaManager::new(replica_config, alter_tx, Arc::new(move |p| dirty.mark_dirty(p)));
        let broker = Arc::new(Broker {
            cluster_id: cluster_id.clone(),
            topics: RwLock::new(HashMap::new()),
            reconciling: Mutex::new(0),
            flusher,
            log_dir: Arc::new(LogDir::new(&data_dir)),
            cleaner: LogCleaner::default(),
            controller: controller.clone(),
            replicas,
            producer_ids: tokio::sync::Mutex::new((0, 0)),
            incarnation_id,
            groups: GroupCoordinator::new(&config),
            txns: crate::txn::TransactionCoordinator::new(&config),
            background: Mutex::new(Vec::new()),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            config,
        });
        {
            // The registration above is in this node's image, so the image is at least as new
            // as anything that happened before this process started: directories of topics it
            // does not name were deleted while we were down.
            let b = broker.clone();
            tokio::task::spawn_blocking(move || {
                let image = b.controller.image();
                b.reconcile(&image)?;
                b.remove_orphan_dirs(&image)
            })
            .await
            .map_err(|e| BrokerError::io("broker startup", std::io::Error::other(e)))??;
        }
        broker.spawn_metadata_tasks(images, alter_rx);
        info!(
            cluster_id = %cluster_id,
            node_id = broker.config.node_id,
            topics = broker.topics.read().unwrap_or_else(|e| e.into_inner()).len(),
            data_dir = %data_dir.display(),
            "broker storage opened"
        );
        broker.cleaner.start(&broker);
        Ok(broker)
    }

    /// Background work that follows the metadata: reconcile on every new image, heartbeat to
    /// the controller, and forward the replica manager's ISR changes.
    fn spawn_metadata_tasks(
        self: &Arc<Self>,
        mut images: watch::Receiver<Arc<MetadataImage>>,
        mut alter_rx: mpsc::UnboundedReceiver<ControllerRequest>,
    ) {
        let mut tasks = Vec::new();
        let weak = Arc::downgrade(self);
        tasks.push(tokio::spawn(async move {
            while images.changed().await.is_ok() {
                let image = images.borrow_and_update().clone();
                let Some(b) = weak.upgrade() else { return };
                let result = tokio::task::spawn_blocking(move || b.reconcile(&image)).await;
                if let Ok(Err(err)) = result {
                    warn!(error = %err, "applying metadata failed; retrying with the next change");
                }
            }
        }));
        let weak = Arc::downgrade(self);
        let every = Duration::from_millis(self.config.broker_heartbeat_interval_ms);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(b) = weak.upgrade() else { return };
                if b.shutting_down.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                if b.log_dir.is_offline() {
                    // Its only log directory failed: let the controller fence this broker, which
                    // moves leadership and ISR membership to the other replicas.
                    continue;
                }
                let request = ControllerRequest::BrokerHeartbeat {
                    broker_id: b.config.node_id,
                    incarnation_id: b.incarnation_id,
                };
                let controller = b.controller.clone();
                drop(b);
                match controller.submit(request, every * 4).await {
                    Ok(_) => {}
                    // Unregistered while it could not heartbeat (a partition): register again,
                    // as Kafka's broker lifecycle manager does, rather than stay invisible.
                    Err(refusal) if refusal.code == crate::controller::logic::BROKER_ID_NOT_REGISTERED.0 => {
                        let Some(b) = weak.upgrade() else { return };
                        let register = register_request(&b.config, b.incarnation_id);
                        drop(b);
                        warn!("the controller no longer knows this broker; registering again");
                        // A broker-only node was also dropped from the metadata log's learners.
                        controller.rejoin();
                        if let Err(refusal) = controller.submit(register, every * 4).await {
                            debug!(error = %refusal, "registering again failed");
                        }
                    }
                    Err(refusal) => debug!(error = %refusal, "heartbeat to the controller failed"),
                }
            }
        }));
        let weak = Arc::downgrade(self);
        tasks.push(tokio::spawn(async move {
            while let Some(request) = alter_rx.recv().await {
                // One request at a time. Each partition has at most one in flight (it proposes
                // nothing else until this answer is reported back), as Kafka's
                // AlterPartitionManager does; the settled ISR arrives as a new image.
                let ControllerRequest::AlterPartition { topic, partition, partition_epoch, new_isr, .. } = &request
                else {
                    continue;
                };
                let Some(b) = weak.upgrade() else { return };
                let (controller, Some(p)) = (b.controller.clone(), b.partition(topic, *partition)) else { continue };
                drop(b);
                if !p.alter_partition_wanted(*partition_epoch, new_isr) {
                    // Superseded while it waited here (an image settled it, or it was replaced).
                    continue;
                }
                let outcome = match controller.submit(request.clone(), CONTROLLER_REQUEST_TIMEOUT).await {
                    Ok(_) => AlterOutcome::Committed,
                    // Decided after the epoch checks on the controller's latest state.
                    Err(r) if r.code == INELIGIBLE_REPLICA.0 || r.code == ErrorCode::INVALID_REQUEST.0 => {
                        debug!(error = %r, "ISR change refused");
                        AlterOutcome::Refused
                    }
                    Err(r) => {
                        debug!(error = %r, "ISR change not confirmed");
                        AlterOutcome::Unknown
                    }
                };
                p.alter_partition_answered(*partition_epoch, new_isr, outcome, now_ms());
            }
        }));
        *self.background.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
    }

    /// Makes the local state match `image`: opens replicas assigned to this broker, removes
    /// deleted topics, applies config changes, hands leader/follower roles to the replica
    /// manager and moves group coordination with `__consumer_offsets` leadership.
    pub fn reconcile(&self, image: &MetadataImage) -> Result<()> {
        let mut newest_applied = self.reconciling.lock().unwrap_or_else(|e| e.into_inner());
        if image.applied_index < *newest_applied {
            // An older image than one already reconciled (the image watcher took it before a
            // request's catch-up applied a newer one): applying it would undo newer changes,
            // such as a topic config just altered.
            return Ok(());
        }
        *newest_applied = image.applied_index;
        let me = self.config.node_id;
        let current = self.topics.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut next = HashMap::with_capacity(image.topics.len());
        let now = now_ms();
        let mut first_error = None;
        // Deleted topics (a name gone, or now naming another topic id) go first: each replica's
        // directory is renamed away before a topic recreated with the same name opens
        // `<topic>-<partition>` below, so removing the old files can never touch the new ones
        // even when the deletion and the re-creation arrive in one image.
        let removed: Vec<Arc<Topic>> = current
            .values()
            .filter(|old| image.topics.get(&old.name).is_none_or(|n| n.id != old.id))
            .cloned()
            .collect();
        for topic in &removed {
            for p in topic.local_partitions() {
                if let Err(err) = p.delete(topic.id) {
                    warn!(partition = %p.tp, error = %err, "could not remove partition directory");
                }
            }
            info!(topic = %topic.name, "topic deleted");
        }
        for t in image.topics.values() {
            let existing = current.get(&t.name).filter(|e| e.id == t.id);
            let configs = TopicConfigs { overrides: t.configs.clone() };
            let configs_changed = existing.is_some_and(|e| e.configs != configs);
            let mut partitions = Vec::with_capacity(t.partitions.len());
            for (index, p) in t.partitions.iter().enumerate() {
                let index = index as i32;
                let old = existing.and_then(|e| e.partitions.get(index as usize).cloned().flatten());
                if !p.replicas.contains(&me) {
                    if let Some(old) = old {
                        // Reassigned away (KIP-455): step down first, so produces waiting
                        // on this replica's high watermark answer NOT_LEADER_OR_FOLLOWER and
                        // go to the new leader, then remove the replica's files.
                        old.make_follower(p);
                        match old.delete(t.id) {
                            Ok(()) => info!(partition = %old.tp, "replica removed (reassigned to other brokers)"),
                            Err(err) => {
                                warn!(partition = %old.tp, error = %err, "could not remove a reassigned replica")
                            }
                        }
                    }
                    partitions.push(None);
                    continue;
                }
                if let Some(old) = old {
                    if configs_changed {
                        old.set_log_config(configs.log_config(&self.config));
                        old.set_max_message_bytes(configs.max_message_bytes(&self.config));
                    }
                    partitions.push(Some(old));
                    continue;
                }
                match self.open_partition(&t.name, t.id, index, &configs, now) {
                    Ok(opened) => partitions.push(Some(opened)),
                    Err(err) => {
                        warn!(topic = %t.name, partition = index, error = %err, "opening replica failed");
                        partitions.push(None);
                        first_error.get_or_insert(err);
                    }
                }
            }
            next.insert(t.name.clone(), Arc::new(Topic { name: t.name.clone(), id: t.id, configs, partitions }));
        }
        // Roles first, then publish: a replica just opened must not take a client's append as
        // the epoch-0 leader it is from `open` until the replica manager says otherwise.
        let lookup = |topic: &str, partition: i32| {
            next.get(topic)
                .and_then(|t: &Arc<Topic>| t.partitions.get(usize::try_from(partition).ok()?).cloned().flatten())
        };
        self.replicas.apply(image, &lookup);
        let dynamic = image.broker_configs.get(&self.config.node_id);
        let rate = |key: &str| dynamic.and_then(|c| c.get(key)).and_then(|v| v.parse::<u64>().ok());
        self.replicas.set_follower_throttle_rate(rate(crate::config::FOLLOWER_REPLICATION_THROTTLED_RATE));
        self.replicas.set_leader_throttle_rate(rate(crate::config::LEADER_REPLICATION_THROTTLED_RATE));
        *self.topics.write().unwrap_or_else(|e| e.into_inner()) = next;
        self.groups.on_metadata(self, image);
        self.txns.on_metadata(self, image);
        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn open_partition(
        &self,
        topic: &str,
        topic_id: Uuid,
        partition: i32,
        configs: &TopicConfigs,
        now_ms: i64,
    ) -> Result<Arc<Partition>> {
        if self.local_partition_count() >= self.config.max_partitions {
            return Err(BrokerError::TooManyPartitions { max: self.config.max_partitions });
        }
        let dir = partition_dir(&self.config.data_dir, topic, partition);
        let id_file = dir.join(PARTITION_METADATA_FILE);
        let expected = format!("version: 0\ntopic_id: {}\n", topic_id.simple());
        match std::fs::read_to_string(&id_file) {
            Ok(found) if found == expected => {}
            Ok(_) => {
                // A replica of a deleted topic that had the same name: nothing in it is ours.
                warn!(dir = %dir.display(), "removing a replica directory of an older topic with this name");
                std::fs::remove_dir_all(&dir).map_err(|e| BrokerError::io(&dir, e))?;
            }
            Err(_) => {}
        }
        let tp = TopicPartition { topic: topic.to_string(), partition };
        let opened = Arc::new(Partition::open(
            dir.clone(),
            tp,
            configs.log_config(&self.config),
            configs.max_message_bytes(&self.config),
            &self.config,
            self.log_dir.clone(),
            now_ms,
        )?);
        if !id_file.exists() {
            write_file_atomically(&id_file, expected.as_bytes())?;
        }
        Ok(opened)
    }

    /// Removes partition directories of topics the (caught-up) image does not name, which
    /// finishes deletions that happened while this broker was down or crashed mid-way.
    fn remove_orphan_dirs(&self, image: &MetadataImage) -> Result<()> {
        let data_dir = &self.config.data_dir;
        let me = self.config.node_id;
        let entries = std::fs::read_dir(data_dir).map_err(|e| BrokerError::io(data_dir, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(DELETED_DIR_SUFFIX) {
                // A deletion that crashed between its rename and its removal.
                std::fs::remove_dir_all(&path).map_err(|e| BrokerError::io(&path, e))?;
                continue;
            }
            let Some((topic, partition)) = name.rsplit_once('-') else { continue };
            let Ok(partition) = partition.parse::<i32>() else { continue };
            let known = image.partition(topic, partition).is_some_and(|p| p.replicas.contains(&me));
            if !known {
                warn!(dir = %path.display(), "removing a partition directory this broker no longer hosts");
                std::fs::remove_dir_all(&path).map_err(|e| BrokerError::io(&path, e))?;
            }
        }
        Ok(())
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// This broker's replica of `topic`-`partition`, if it holds one.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<Arc<Partition>> {
        let topic = self.topic(topic)?;
        usize::try_from(partition).ok().and_then(|p| topic.partitions.get(p).cloned().flatten())
    }

    pub fn all_topics(&self) -> Vec<Arc<Topic>> {
        let mut all: Vec<_> = self.topics.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    fn local_partition_count(&self) -> usize {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).values().map(|t| t.local_partitions().count()).sum()
    }

    /// The cluster metadata as this broker last applied it.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.controller.image()
    }

    /// Validates a CreateTopics entry without creating anything (`validate_only`).
    pub fn check_new_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &BTreeMap<String, String>,
    ) -> Result<i32> {
        validate_topic_name(name)?;
        if self.image().topics.contains_key(name) {
            return Err(BrokerError::TopicExists { topic: name.to_string() });
        }
        let partitions = if partitions == -1 { self.config.num_partitions } else { partitions };
        if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&partitions) {
            return Err(BrokerError::InvalidPartitions {
                topic: name.to_string(),
                count: partitions,
                reason: format!("must be between 1 and {MAX_PARTITIONS_PER_TOPIC}"),
            });
        }
        let factor = if replication_factor == -1 { self.config.default_replication_factor } else { replication_factor };
        let brokers = self.image().live_brokers().count();
        if factor < 1 || factor as usize > brokers {
            return Err(BrokerError::InvalidReplicationFactor { factor: factor as i32, brokers });
        }
        for (k, v) in configs {
            topic_config::validate_override(k, v)
                .map_err(|reason| BrokerError::InvalidConfig { key: k.clone(), reason })?;
        }
        Ok(partitions)
    }

    pub async fn create_topic(
        self: &Arc<Self>,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>> {
        let partitions = self.check_new_topic(name, partitions, replication_factor, &configs)?;
        let request = ControllerRequest::CreateTopic {
            name: name.to_string(),
            partitions,
            replication_factor,
            configs,
            validate_only: false,
        };
        self.controller.submit(request, CONTROLLER_REQUEST_TIMEOUT).await.map_err(controller_error)?;
        self.catch_up().await?;
        info!(topic = name, partitions, "topic created");
        self.topic(name).ok_or_else(|| BrokerError::UnknownTopic { topic: name.to_string() })
    }

    /// Applies the image the controller's answer produced, so this broker's own replicas of a
    /// change it asked for exist before the client hears back.
    async fn catch_up(self: &Arc<Self>) -> Result<()> {
        let b = self.clone();
        tokio::task::spawn_blocking(move || b.reconcile(&b.controller.image()))
            .await
            .map_err(|e| BrokerError::io("metadata", std::io::Error::other(e)))?
    }

    /// Creates an internal, compacted topic (`__consumer_offsets`, `__transaction_state`) if it
    /// does not exist yet. Kafka refuses to create one on a cluster smaller than its replication
    /// factor; lowering the factor to the live brokers instead keeps a single node (and a cluster
    /// still starting) working.
    pub async fn ensure_internal_topic(
        self: &Arc<Self>,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        segment_bytes: &str,
    ) -> Result<()> {
        if self.image().topics.contains_key(name) {
            return Ok(());
        }
        let mut configs = BTreeMap::new();
        configs.insert("cleanup.policy".to_string(), "compact".to_string());
        configs.insert("segment.bytes".to_string(), segment_bytes.to_string());
        let live = self.image().live_brokers().count().max(1);
        let factor = (replication_factor as usize).min(live) as i16;
        match self.create_topic(name, partitions, factor, configs).await {
            Ok(t) => {
                info!(
                    topic = name,
                    partitions = t.partition_count(),
                    replication_factor = factor,
                    "created internal topic"
                );
                Ok(())
            }
            Err(_) if self.image().topics.contains_key(name) => Ok(()),
            Err(err) => Err(err),
        }
    }

    pub async fn delete_topic(self: &Arc<Self>, name: &str) -> Result<Uuid> {
        if !self.config.delete_topic_enable {
            return Err(BrokerError::TopicDeletionDisabled);
        }
        if crate::group::is_internal_topic(name) {
            // Deleting it would drop every group's committed offsets.
            return Err(BrokerError::InvalidTopic {
                topic: name.to_string(),
                reason: "internal topics cannot be deleted".into(),
            });
        }
        let id = self
            .image()
            .topics
            .get(name)
            .map(|t| t.id)
            .ok_or_else(|| BrokerError::UnknownTopic { topic: name.to_string() })?;
        self.controller
            .submit(ControllerRequest::DeleteTopic { name: name.to_string() }, CONTROLLER_REQUEST_TIMEOUT)
            .await
            .map_err(controller_error)?;
        self.catch_up().await?;
        Ok(id)
    }

    /// CreatePartitions: grows `name` to `total` partitions.
    pub async fn create_partitions(self: &Arc<Self>, name: &str, total: i32, validate_only: bool) -> Result<()> {
        let current = self
            .image()
            .topics
            .get(name)
            .map(|t| t.partitions.len() as i32)
            .ok_or_else(|| BrokerError::UnknownTopic { topic: name.to_string() })?;
        if total <= current || total > MAX_PARTITIONS_PER_TOPIC {
            return Err(BrokerError::InvalidPartitions {
                topic: name.to_string(),
                count: total,
                reason: format!("must be more than the current {current} and at most {MAX_PARTITIONS_PER_TOPIC}"),
            });
        }
        let request = ControllerRequest::CreatePartitions { name: name.to_string(), total, validate_only };
        self.controller.submit(request, CONTROLLER_REQUEST_TIMEOUT).await.map_err(controller_error)?;
        if !validate_only {
            self.catch_up().await?;
            info!(topic = name, partitions = total, "partitions added");
        }
        Ok(())
    }

    /// IncrementalAlterConfigs for a topic: `None` deletes an override.
    pub async fn alter_topic_configs(
        self: &Arc<Self>,
        name: &str,
        changes: &[(String, Option<String>)],
        validate_only: bool,
    ) -> Result<()> {
        let image = self.image();
        let topic = image.topics.get(name).ok_or_else(|| BrokerError::UnknownTopic { topic: name.to_string() })?;
        let mut configs = topic.configs.clone();
        for (key, value) in changes {
            match value {
                Some(v) => {
                    topic_config::validate_override(key, v)
                        .map_err(|reason| BrokerError::InvalidConfig { key: key.clone(), reason })?;
                    configs.insert(key.clone(), v.clone());
                }
                None => {
                    if topic_config::definition(key).is_none() {
                        return Err(BrokerError::InvalidConfig {
                            key: key.clone(),
                            reason: format!("unknown topic config '{key}'"),
                        });
                    }
                    configs.remove(key);
                }
            }
        }
        if validate_only {
            return Ok(());
        }
        let request = ControllerRequest::AlterTopicConfigs { name: name.to_string(), configs };
        self.controller.submit(request, CONTROLLER_REQUEST_TIMEOUT).await.map_err(controller_error)?;
        self.catch_up().await
    }

    /// ElectLeaders: asks the controller for preferred (or unclean) elections and waits until
    /// this broker has applied the outcome, so a Metadata request right after sees it.
    pub async fn elect_leaders(
        self: &Arc<Self>,
        unclean: bool,
        partitions: Option<Vec<(String, i32)>>,
    ) -> Result<Vec<ElectionResult>> {
        let request = ControllerRequest::ElectLeaders { unclean, partitions };
        let reply = self.controller.submit(request, CONTROLLER_REQUEST_TIMEOUT).await.map_err(controller_error)?;
        let ControllerReply::Elections { results } = reply else {
            return Err(BrokerError::Controller {
                code: ErrorCode::UNKNOWN_SERVER_ERROR,
                message: format!("the controller answered ElectLeaders with {reply:?}"),
            });
        };
        if results.iter().any(|r| r.code == 0) {
            self.catch_up().await?;
            info!(unclean, elected = results.iter().filter(|r| r.code == 0).count(), "leaders elected");
        }
        Ok(results)
    }

    /// IncrementalAlterConfigs of a broker's dynamic configs (`changes`: key and new value, or
    /// `None` to delete); the controller refuses static keys and bad values.
    pub async fn alter_broker_configs(
        self: &Arc<Self>,
        broker_id: i32,
        changes: &[(String, Option<String>)],
        validate_only: bool,
    ) -> Result<()> {
        let set = changes.iter().filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v))).collect();
        let delete = changes.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| k.clone()).collect();
        let request = ControllerRequest::AlterBrokerConfigs { broker_id, set, delete, validate_only };
        self.controller.submit(request, CONTROLLER_REQUEST_TIMEOUT).await.map_err(controller_error)?;
        if !validate_only {
            info!(broker_id, ?changes, "dynamic broker configs altered");
        }
        Ok(())
    }

    /// The leader-side replication throttle's budget while one is set.
    pub fn replica_leader_throttle(&self) -> Option<crate::replica::SharedBudget> {
        self.replicas.leader_throttle()
    }

    /// UnregisterBroker: the controller forgets `broker_id` (refused while it runs or holds
    /// replicas) and, for a broker-only node, stops replicating the metadata log to it.
    pub async fn unregister_broker(self: &Arc<Self>, broker_id: i32) -> Result<()> {
        let request = ControllerRequest::UnregisterBroker { broker_id };
        self.controller.submit(request, CONTROLLER_REQUEST_TIMEOUT).await.map_err(controller_error)?;
        info!(broker_id, "broker unregistered");
        Ok(())
    }

    /// AddRaftVoter (KIP-853): the broker-only node `node_id`, following the metadata log at
    /// `addr` (when given), becomes a voter of the metadata quorum.
    pub async fn add_raft_voter(self: &Arc<Self>, node_id: i32, addr: Option<String>, timeout: Duration) -> Result<()> {
        let request = ControllerRequest::AddVoter { node_id, addr };
        self.controller.submit(request, timeout).await.map_err(controller_error)?;
        info!(node_id, voters = ?self.controller.voters(), "controller voter added");
        Ok(())
    }

    /// RemoveRaftVoter (KIP-853): `node_id` leaves the metadata quorum's voters (it stays an
    /// observer while it runs).
    pub async fn remove_raft_voter(self: &Arc<Self>, node_id: i32) -> Result<()> {
        let request = ControllerRequest::RemoveVoter { node_id };
        self.controller.submit(request, CONTROLLER_REQUEST_TIMEOUT).await.map_err(controller_error)?;
        info!(node_id, voters = ?self.controller.voters(), "controller voter removed");
        Ok(())
    }

    /// DescribeQuorum: the metadata quorum as its leader sees it.
    pub async fn describe_quorum(self: &Arc<Self>) -> Result<QuorumDescription> {
        let reply = self
            .controller
            .submit(ControllerRequest::DescribeQuorum, CONTROLLER_REQUEST_TIMEOUT)
            .await
            .map_err(controller_error)?;
        match reply {
            ControllerReply::Quorum(description) => Ok(description),
            other => Err(BrokerError::Controller {
                code: ErrorCode::UNKNOWN_SERVER_ERROR,
                message: format!("the controller answered DescribeQuorum with {other:?}"),
            }),
        }
    }

    /// AlterPartitionReassignments: hands the targets to the controller; the per-partition
    /// outcomes come back (as ElectLeaders' do) and this broker applies the new image.
    pub async fn alter_partition_reassignments(
        self: &Arc<Self>,
        reassignments: Vec<(String, i32, Option<Vec<i32>>)>,
    ) -> Result<Vec<ElectionResult>> {
        let request = ControllerRequest::AlterPartitionReassignments { reassignments };
        let reply = self.controller.submit(request, CONTROLLER_REQUEST_TIMEOUT).await.map_err(controller_error)?;
        let ControllerReply::Elections { results } = reply else {
            return Err(BrokerError::Controller {
                code: ErrorCode::UNKNOWN_SERVER_ERROR,
                message: format!("the controller answered AlterPartitionReassignments with {reply:?}"),
            });
        };
        self.catch_up().await?;
        info!(partitions = results.len(), "partition reassignments accepted");
        Ok(results)
    }

    /// A fresh producer id for InitProducerId (idempotent producers, no transactional id),
    /// from a block the controller hands this broker (ids are never reused cluster-wide).
    pub async fn allocate_producer_id(&self) -> Result<i64> {
        let mut ids = self.producer_ids.lock().await;
        if ids.0 >= ids.1 {
            let request = ControllerRequest::AllocateProducerIds {
                broker_id: self.config.node_id,
                count: PRODUCER_ID_BLOCK_SIZE,
            };
            match self.controller.submit(request, CONTROLLER_REQUEST_TIMEOUT).await.map_err(controller_error)? {
                ControllerReply::ProducerIds { first_id, count } => *ids = (first_id, first_id + count),
                other => {
                    return Err(BrokerError::Controller {
                        code: ErrorCode::UNKNOWN_SERVER_ERROR,
                        message: format!("unexpected answer to a producer id request: {other:?}"),
                    })
                }
            }
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    pub fn mark_dirty(&self, partition: &Arc<Partition>) {
        self.flusher.mark_dirty(partition);
    }

    /// Periodic retention and producer-state expiry over every partition.
    pub fn housekeeping(&self) {
        let now = now_ms();
        for topic in self.all_topics() {
            for p in topic.local_partitions() {
                if let Err(err) = p.housekeeping(now) {
                    warn!(partition = %p.tp, error = %err, "retention failed");
                }
            }
        }
    }

    /// Controlled shutdown, before [`Broker::shutdown`] in a cluster: stops heartbeating, asks
    /// the controller to fence this broker (leaderships move to other in-sync replicas, it
    /// leaves the ISRs) and waits until this broker's own image shows it leads nothing that
    /// another replica could lead, so its replicas step down before the connections close.
    /// A partition whose ISR is this broker alone stays offline until it returns (Kafka's
    /// rule). Single-node clusters, and `controlled.shutdown.enable=false`, skip it. Returns
    /// how many partitions this broker still led when it gave up waiting.
    pub async fn controlled_shutdown(self: &Arc<Self>) -> Result<usize> {
        let image = self.image();
        let node = self.config.node_id;
        if !self.config.controlled_shutdown_enable || image.live_brokers().all(|b| b.id == node) {
            return Ok(0);
        }
        self.shutting_down.store(true, std::sync::atomic::Ordering::Release);
        let request = ControllerRequest::ControlledShutdown { broker_id: node, incarnation_id: self.incarnation_id };
        let deadline = tokio::time::Instant::now() + CONTROLLED_SHUTDOWN_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.controller.submit(request.clone(), left).await {
                Ok(_) => break,
                Err(refusal) if left <= CONTROLLED_SHUTDOWN_RETRY_BACKOFF => return Err(controller_error(refusal)),
                Err(refusal) => {
                    debug!(error = %refusal, "controlled shutdown request failed; retrying");
                    tokio::time::sleep(CONTROLLED_SHUTDOWN_RETRY_BACKOFF).await;
                }
            }
        }
        // The fencing is committed; apply it here so the local replicas become followers (or
        // leaderless) before the process stops serving.
        self.catch_up().await?;
        let still_leading = self
            .all_topics()
            .iter()
            .flat_map(|t| t.local_partitions().cloned().collect::<Vec<_>>())
            .filter(|p| p.is_leader())
            .count();
        info!(still_leading, "controlled shutdown: leaderships moved to other replicas");
        Ok(still_leading)
    }

    /// Clean shutdown: stop following the metadata, flush everything and write checkpoints.
    pub fn shutdown(&self) {
        for task in self.background.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
        self.replicas.shutdown();
        self.cleaner.shutdown();
        self.flusher.shutdown();
        for topic in self.all_topics() {
            for p in topic.local_partitions() {
                if let Err(err) = p.close() {
                    warn!(partition = %p.tp, error = %err, "clean close failed; recovery will run at next start");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_A-b").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }
}

//! The broker's state: topics and their partitions, persisted topic metadata, the flusher and
//! the producer-id allocator. API handlers work through this type; the network layer owns it in
//! an `Arc`.
//!
//! Topic metadata (`topics.json` in the data dir) is the source of truth: a topic exists once its
//! entry is written (atomically), and partition directories not named there are removed at start,
//! which finishes any create or delete a crash interrupted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::error::{BrokerError, Result};
use crate::flusher::Flusher;
use crate::group::GroupCoordinator;
use crate::log::write_file_atomically;
use crate::log_cleaner::LogCleaner;
use crate::partition::{Partition, TopicPartition};
use crate::producer_state::{Allocation, ProducerIdManager};
use crate::topic_config::{self, TopicConfigs};

/// Milliseconds since the Unix epoch, read at the edge and passed into the sans-IO parts.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub struct Topic {
    pub name: String,
    pub id: Uuid,
    pub configs: TopicConfigs,
    pub partitions: Vec<Arc<Partition>>,
}

#[derive(Serialize, Deserialize)]
struct TopicRecord {
    name: String,
    id: Uuid,
    partitions: i32,
    configs: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Default)]
struct MetadataFile {
    cluster_id: String,
    node_id: i32,
    topics: Vec<TopicRecord>,
    /// The first producer id not yet handed out (ids are allocated in blocks persisted here).
    #[serde(default)]
    next_producer_id_block: i64,
}

pub struct Broker {
    pub config: BrokerConfig,
    pub cluster_id: String,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Serialises topic create/delete/alter and metadata file writes.
    admin: Mutex<()>,
    pub(crate) flusher: Flusher,
    /// Compacts logs whose `cleanup.policy` includes `compact`.
    cleaner: LogCleaner,
    producer_ids: Mutex<ProducerIdManager>,
    /// The producer-id block end last written to the metadata file.
    producer_id_block_end: AtomicI64,
    metadata_path: PathBuf,
    /// Consumer groups and committed offsets (`__consumer_offsets`).
    pub groups: GroupCoordinator,
}

const METADATA_FILE: &str = "topics.json";
const PRODUCER_ID_BLOCK: i64 = 1000;

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

impl Broker {
    /// Opens the data directory: loads topic metadata, recovers every partition log and removes
    /// partition directories that belong to no topic.
    pub fn open(config: BrokerConfig) -> Result<Arc<Broker>> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|e| BrokerError::io(&data_dir, e))?;
        let metadata_path = data_dir.join(METADATA_FILE);
        let existed = metadata_path.exists();
        let meta = match std::fs::read(&metadata_path) {
            Ok(bytes) => serde_json::from_slice::<MetadataFile>(&bytes).map_err(|e| BrokerError::CorruptMetadata {
                path: metadata_path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => MetadataFile {
                cluster_id: Uuid::new_v4().simple().to_string()[..22].to_string(),
                node_id: config.node_id,
                ..Default::default()
            },
            Err(e) => return Err(BrokerError::io(&metadata_path, e)),
        };
        if meta.node_id != config.node_id {
            return Err(BrokerError::InvalidConfig {
                key: "node.id".into(),
                reason: format!(
                    "data dir {} belongs to node {}, not {}",
                    data_dir.display(),
                    meta.node_id,
                    config.node_id
                ),
            });
        }
        let now = now_ms();
        let mut topics = HashMap::new();
        let mut partition_count = 0usize;
        for record in &meta.topics {
            let configs = TopicConfigs { overrides: record.configs.clone() };
            let mut partitions = Vec::with_capacity(record.partitions as usize);
            for p in 0..record.partitions {
                let dir = partition_dir(&data_dir, &record.name, p);
                let tp = TopicPartition { topic: record.name.clone(), partition: p };
                partitions.push(Arc::new(Partition::open(
                    dir,
                    tp,
                    configs.log_config(&config),
                    configs.max_message_bytes(&config),
                    &config,
                    now,
                )?));
            }
            partition_count += partitions.len();
            topics.insert(
                record.name.clone(),
                Arc::new(Topic { name: record.name.clone(), id: record.id, configs, partitions }),
            );
        }
        remove_orphan_dirs(&data_dir, &topics)?;
        let broker = Broker {
            cluster_id: meta.cluster_id.clone(),
            // Allocation resumes at the persisted block end, so no id used before a crash is
            // handed out again.
            producer_ids: Mutex::new(ProducerIdManager::new(meta.next_producer_id_block, PRODUCER_ID_BLOCK)),
            producer_id_block_end: AtomicI64::new(meta.next_producer_id_block),
            topics: RwLock::new(topics),
            admin: Mutex::new(()),
            flusher: Flusher::start(),
            cleaner: LogCleaner::default(),
            metadata_path,
            groups: GroupCoordinator::new(&config),
            config,
        };
        if !existed {
            // First start: persist the new cluster id before serving anyone.
            broker.write_metadata_file(&meta)?;
        }
        broker.groups.load(&broker, now)?;
        info!(
            cluster_id = %broker.cluster_id,
            topics = meta.topics.len(),
            partitions = partition_count,
            data_dir = %data_dir.display(),
            "broker storage opened"
        );
        let broker = Arc::new(broker);
        broker.cleaner.start(&broker);
        Ok(broker)
    }

    fn write_metadata_file(&self, meta: &MetadataFile) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(meta).map_err(|e| BrokerError::CorruptMetadata {
            path: self.metadata_path.display().to_string(),
            reason: e.to_string(),
        })?;
        write_file_atomically(&self.metadata_path, &bytes)?;
        Ok(())
    }

    fn persist(&self, topics: &HashMap<String, Arc<Topic>>, next_producer_id_block: i64) -> Result<()> {
        let mut records: Vec<TopicRecord> = topics
            .values()
            .map(|t| TopicRecord {
                name: t.name.clone(),
                id: t.id,
                partitions: t.partitions.len() as i32,
                configs: t.configs.overrides.clone(),
            })
            .collect();
        records.sort_by(|a, b| a.name.cmp(&b.name));
        self.write_metadata_file(&MetadataFile {
            cluster_id: self.cluster_id.clone(),
            node_id: self.config.node_id,
            topics: records,
            next_producer_id_block,
        })
    }

    fn next_block(&self) -> i64 {
        self.producer_id_block_end.load(Ordering::Acquire)
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).values().find(|t| t.id == id).cloned()
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<Arc<Partition>> {
        let topic = self.topic(topic)?;
        usize::try_from(partition).ok().and_then(|p| topic.partitions.get(p).cloned())
    }

    pub fn all_topics(&self) -> Vec<Arc<Topic>> {
        let mut all: Vec<_> = self.topics.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    fn partition_count(&self) -> usize {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).values().map(|t| t.partitions.len()).sum()
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
        if self.topic(name).is_some() {
            return Err(BrokerError::TopicExists { topic: name.to_string() });
        }
        let partitions = if partitions == -1 { self.config.num_partitions } else { partitions };
        if !(1..=10_000).contains(&partitions) {
            return Err(BrokerError::InvalidPartitions {
                topic: name.to_string(),
                count: partitions,
                reason: "must be between 1 and 10000".into(),
            });
        }
        if replication_factor != -1 && replication_factor != 1 {
            return Err(BrokerError::InvalidReplicationFactor { factor: replication_factor as i32, brokers: 1 });
        }
        if self.partition_count() + partitions as usize > self.config.max_partitions {
            return Err(BrokerError::TooManyPartitions { max: self.config.max_partitions });
        }
        for (k, v) in configs {
            topic_config::validate_override(k, v)
                .map_err(|reason| BrokerError::InvalidConfig { key: k.clone(), reason })?;
        }
        Ok(partitions)
    }

    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>> {
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let partitions = self.check_new_topic(name, partitions, replication_factor, &configs)?;
        let configs = TopicConfigs { overrides: configs };
        let now = now_ms();
        let mut created = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let dir = partition_dir(&self.config.data_dir, name, p);
            // A directory left by a crash mid-create holds nothing acknowledged: start clean.
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| BrokerError::io(&dir, e))?;
            }
            let tp = TopicPartition { topic: name.to_string(), partition: p };
            created.push(Arc::new(Partition::open(
                dir,
                tp,
                configs.log_config(&self.config),
                configs.max_message_bytes(&self.config),
                &self.config,
                now,
            )?));
        }
        let topic = Arc::new(Topic { name: name.to_string(), id: Uuid::new_v4(), configs, partitions: created });
        let mut topics = self.topics.read().unwrap_or_else(|e| e.into_inner()).clone();
        topics.insert(name.to_string(), topic.clone());
        self.persist(&topics, self.next_block())?;
        *self.topics.write().unwrap_or_else(|e| e.into_inner()) = topics;
        info!(topic = name, partitions, "topic created");
        Ok(topic)
    }

    pub fn delete_topic(&self, name: &str) -> Result<Uuid> {
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
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let mut topics = self.topics.read().unwrap_or_else(|e| e.into_inner()).clone();
        let topic = topics.remove(name).ok_or_else(|| BrokerError::UnknownTopic { topic: name.to_string() })?;
        self.persist(&topics, self.next_block())?;
        *self.topics.write().unwrap_or_else(|e| e.into_inner()) = topics;
        for p in &topic.partitions {
            if let Err(err) = p.delete_files() {
                // The metadata no longer names it, so the next start removes it.
                warn!(partition = %p.tp, error = %err, "could not remove partition directory");
            }
        }
        info!(topic = name, "topic deleted");
        Ok(topic.id)
    }

    /// CreatePartitions: grows `name` to `total` partitions.
    pub fn create_partitions(&self, name: &str, total: i32, validate_only: bool) -> Result<()> {
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let topic = self.topic(name).ok_or_else(|| BrokerError::UnknownTopic { topic: name.to_string() })?;
        let current = topic.partitions.len() as i32;
        if total <= current || total > 10_000 {
            return Err(BrokerError::InvalidPartitions {
                topic: name.to_string(),
                count: total,
                reason: format!("must be more than the current {current} and at most 10000"),
            });
        }
        if self.partition_count() + (total - current) as usize > self.config.max_partitions {
            return Err(BrokerError::TooManyPartitions { max: self.config.max_partitions });
        }
        if validate_only {
            return Ok(());
        }
        let now = now_ms();
        let mut partitions = topic.partitions.clone();
        for p in current..total {
            let dir = partition_dir(&self.config.data_dir, name, p);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| BrokerError::io(&dir, e))?;
            }
            let tp = TopicPartition { topic: name.to_string(), partition: p };
            partitions.push(Arc::new(Partition::open(
                dir,
                tp,
                topic.configs.log_config(&self.config),
                topic.configs.max_message_bytes(&self.config),
                &self.config,
                now,
            )?));
        }
        let updated =
            Arc::new(Topic { name: topic.name.clone(), id: topic.id, configs: topic.configs.clone(), partitions });
        let mut topics = self.topics.read().unwrap_or_else(|e| e.into_inner()).clone();
        topics.insert(name.to_string(), updated);
        self.persist(&topics, self.next_block())?;
        *self.topics.write().unwrap_or_else(|e| e.into_inner()) = topics;
        info!(topic = name, partitions = total, "partitions added");
        Ok(())
    }

    /// IncrementalAlterConfigs for a topic: `None` deletes an override.
    pub fn alter_topic_configs(
        &self,
        name: &str,
        changes: &[(String, Option<String>)],
        validate_only: bool,
    ) -> Result<()> {
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let topic = self.topic(name).ok_or_else(|| BrokerError::UnknownTopic { topic: name.to_string() })?;
        let mut configs = topic.configs.clone();
        for (key, value) in changes {
            match value {
                Some(v) => {
                    topic_config::validate_override(key, v)
                        .map_err(|reason| BrokerError::InvalidConfig { key: key.clone(), reason })?;
                    configs.overrides.insert(key.clone(), v.clone());
                }
                None => {
                    if topic_config::definition(key).is_none() {
                        return Err(BrokerError::InvalidConfig {
                            key: key.clone(),
                            reason: format!("unknown topic config '{key}'"),
                        });
                    }
                    configs.overrides.remove(key);
                }
            }
        }
        if validate_only {
            return Ok(());
        }
        for p in &topic.partitions {
            p.set_log_config(configs.log_config(&self.config));
            p.set_max_message_bytes(configs.max_message_bytes(&self.config));
        }
        let updated =
            Arc::new(Topic { name: topic.name.clone(), id: topic.id, configs, partitions: topic.partitions.clone() });
        let mut topics = self.topics.read().unwrap_or_else(|e| e.into_inner()).clone();
        topics.insert(name.to_string(), updated);
        self.persist(&topics, self.next_block())?;
        *self.topics.write().unwrap_or_else(|e| e.into_inner()) = topics;
        Ok(())
    }

    /// A fresh producer id for InitProducerId (idempotent producers, no transactional id).
    pub fn allocate_producer_id(&self) -> Result<i64> {
        let mut ids = self.producer_ids.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match ids.next()? {
                Allocation::Allocated { producer_id } => return Ok(producer_id),
                Allocation::PersistBlockEnd { block_end } => {
                    // Lock order: producer_ids, then admin (admin paths never take producer_ids).
                    let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
                    let topics = self.topics.read().unwrap_or_else(|e| e.into_inner()).clone();
                    self.persist(&topics, block_end)?;
                    self.producer_id_block_end.store(block_end, Ordering::Release);
                    ids.block_persisted(block_end);
                }
            }
        }
    }

    pub fn mark_dirty(&self, partition: &Arc<Partition>) {
        self.flusher.mark_dirty(partition);
    }

    /// Periodic retention and producer-state expiry over every partition.
    pub fn housekeeping(&self) {
        let now = now_ms();
        for topic in self.all_topics() {
            for p in &topic.partitions {
                if let Err(err) = p.housekeeping(now) {
                    warn!(partition = %p.tp, error = %err, "retention failed");
                }
            }
        }
    }

    /// Clean shutdown: flush everything and write checkpoints.
    pub fn shutdown(&self) {
        self.cleaner.shutdown();
        self.flusher.shutdown();
        for topic in self.all_topics() {
            for p in &topic.partitions {
                if let Err(err) = p.close() {
                    warn!(partition = %p.tp, error = %err, "clean close failed; recovery will run at next start");
                }
            }
        }
    }
}

fn remove_orphan_dirs(data_dir: &Path, topics: &HashMap<String, Arc<Topic>>) -> Result<()> {
    let entries = std::fs::read_dir(data_dir).map_err(|e| BrokerError::io(data_dir, e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().to_string();
        let Some((topic, partition)) = name.rsplit_once('-') else { continue };
        let Ok(partition) = partition.parse::<usize>() else { continue };
        let known = topics.get(topic).is_some_and(|t| partition < t.partitions.len());
        if !known {
            warn!(dir = %path.display(), "removing partition directory of a topic that no longer exists");
            std::fs::remove_dir_all(&path).map_err(|e| BrokerError::io(&path, e))?;
        }
    }
    Ok(())
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

//! The client's view of the cluster: brokers, topics, partitions and their leaders, learnt from
//! Metadata requests, plus one pooled [`Connection`] per broker id.
//!
//! The cache is a snapshot behind an `Arc` that readers clone without waiting; a refresh builds a
//! new snapshot and swaps it in. Concurrent refreshes coalesce: a caller that waited while
//! another refresh ran takes that one's result. Callers refresh after NOT_LEADER_OR_FOLLOWER,
//! UNKNOWN_TOPIC_OR_PARTITION or a connection error.
//!
//! In a replicated cluster brokers learn metadata from the controller at slightly different
//! times, so a refresh may reach a broker that is behind. As in the Java client, a partition's
//! cached entry is only replaced by one with the same or a newer leader epoch, and a refresh
//! that cannot reach one broker tries every other known broker, then the bootstrap servers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tracing::{debug, warn};

use crate::connection::{Connection, ConnectionConfig};
use crate::error::{Error, Result};
use crate::protocol::messages::metadata_request::MetadataRequestTopic;
use crate::protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use crate::protocol::{str_bytes, ApiKey, ErrorCode};

/// A partition of a topic, by Kafka's name for the pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition { topic: topic.into(), partition }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// One broker as the cluster advertises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerMetadata {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl BrokerMetadata {
    /// `host:port`, for connecting.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// One partition: its leader (-1 when none) and replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadata {
    pub partition: i32,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline_replicas: Vec<i32>,
    pub error: ErrorCode,
}

/// One topic; `partitions` is sorted by partition index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    pub name: String,
    pub topic_id: uuid::Uuid,
    pub is_internal: bool,
    pub partitions: Vec<PartitionMetadata>,
    pub error: ErrorCode,
}

impl PartitionMetadata {
    /// No leader: the partition can be neither written nor read (Kafka's "offline" or
    /// "unavailable" partition).
    pub fn is_offline(&self) -> bool {
        self.leader < 0
    }

    /// Fewer in-sync replicas than replicas.
    pub fn is_under_replicated(&self) -> bool {
        self.isr.len() < self.replicas.len()
    }
}

impl TopicMetadata {
    pub fn partition(&self, partition: i32) -> Option<&PartitionMetadata> {
        // Sorted and deduplicated by `merge`, so a broker answer with gaps or repeats cannot hide
        // the partitions after them.
        let i = self.partitions.binary_search_by_key(&partition, |p| p.partition).ok()?;
        self.partitions.get(i)
    }
}

/// One snapshot of the cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterMetadata {
    pub cluster_id: Option<String>,
    pub controller_id: i32,
    pub brokers: BTreeMap<i32, BrokerMetadata>,
    pub topics: HashMap<String, Arc<TopicMetadata>>,
}

impl ClusterMetadata {
    /// The leader's node id of a partition, when known.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        let leader = self.topics.get(topic)?.partition(partition)?.leader;
        (leader >= 0).then_some(leader)
    }

    /// The leader epoch of a partition as last seen, -1 when unknown (what Fetch's
    /// `current_leader_epoch` takes to mean "do not check").
    pub fn leader_epoch(&self, topic: &str, partition: i32) -> i32 {
        self.topics.get(topic).and_then(|t| t.partition(partition)).map_or(-1, |p| p.leader_epoch)
    }
}

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `host:port` pairs tried in order until one answers (`bootstrap.servers`).
    pub bootstrap_servers: Vec<String>,
    pub connection: ConnectionConfig,
    /// Ask the broker to create unknown topics on first use (`allow.auto.create.topics`).
    pub allow_auto_topic_creation: bool,
}

impl ClusterConfig {
    pub fn new(bootstrap_servers: Vec<String>) -> Self {
        ClusterConfig { bootstrap_servers, connection: ConnectionConfig::default(), allow_auto_topic_creation: false }
    }
}

/// Parses Kafka's comma-separated `bootstrap.servers` form.
pub fn parse_bootstrap_servers(servers: &str) -> Vec<String> {
    servers.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

struct ClusterInner {
    config: ClusterConfig,
    metadata: RwLock<Arc<ClusterMetadata>>,
    /// Bumped by every completed refresh, so waiting refreshers can see one happened.
    generation: AtomicU64,
    refresh_lock: tokio::sync::Mutex<()>,
    /// Topics this client has asked about; a refresh re-fetches them.
    interesting: std::sync::Mutex<BTreeSet<String>>,
    /// One slot per broker id. The outer lock is held only to find the slot; connecting holds
    /// the slot's own lock, so a broker that is slow to answer (down, or paused) delays only
    /// the callers that want that broker.
    brokers: std::sync::Mutex<HashMap<i32, Arc<tokio::sync::Mutex<Option<Connection>>>>>,
    /// The connection metadata requests go over, to any broker.
    any: std::sync::Mutex<Option<Connection>>,
}

/// The metadata cache and connection pool. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<ClusterInner>,
}

/// How many times a topic whose leaders are not elected yet is re-fetched.
const TOPIC_WAIT_ATTEMPTS: u32 = 20;
const TOPIC_WAIT_BACKOFF: Duration = Duration::from_millis(100);

impl Cluster {
    /// Connects to the first bootstrap server that answers and fetches the broker list.
    pub async fn connect(config: ClusterConfig) -> Result<Cluster> {
        if config.bootstrap_servers.is_empty() {
            return Err(Error::Config("bootstrap.servers is empty".into()));
        }
        let cluster = Cluster {
            inner: Arc::new(ClusterInner {
                config,
                metadata: RwLock::new(Arc::new(ClusterMetadata::default())),
                generation: AtomicU64::new(0),
                refresh_lock: tokio::sync::Mutex::new(()),
                interesting: std::sync::Mutex::new(BTreeSet::new()),
                brokers: std::sync::Mutex::new(HashMap::new()),
                any: std::sync::Mutex::new(None),
            }),
        };
        cluster.refresh().await?;
        Ok(cluster)
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// The current snapshot, without I/O.
    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        self.inner.metadata.read().expect("metadata lock").clone()
    }

    /// Re-fetches the topics this client uses. Concurrent callers share one request.
    pub async fn refresh(&self) -> Result<Arc<ClusterMetadata>> {
        let seen = self.inner.generation.load(Ordering::Acquire);
        let _guard = self.inner.refresh_lock.lock().await;
        if self.inner.generation.load(Ordering::Acquire) != seen {
            return Ok(self.metadata());
        }
        let topics: Vec<String> = self.inner.interesting.lock().expect("interesting lock").iter().cloned().collect();
        self.fetch(Some(topics)).await
    }

    /// Fetches every topic in the cluster (for listing).
    pub async fn refresh_all_topics(&self) -> Result<Arc<ClusterMetadata>> {
        let _guard = self.inner.refresh_lock.lock().await;
        self.fetch(None).await
    }

    /// Fetches the given topics now and adds them to the ones refreshed later.
    pub async fn refresh_topics(&self, topics: &[&str]) -> Result<Arc<ClusterMetadata>> {
        {
            let mut interesting = self.inner.interesting.lock().expect("interesting lock");
            interesting.extend(topics.iter().map(|t| t.to_string()));
        }
        let _guard = self.inner.refresh_lock.lock().await;
        self.fetch(Some(topics.iter().map(|t| t.to_string()).collect())).await
    }

    /// A topic's metadata, fetched when not cached. Waits briefly while a new topic's leaders
    /// are being elected; a topic that does not exist is [`Error::UnknownTopic`].
    pub async fn topic(&self, name: &str) -> Result<Arc<TopicMetadata>> {
        if let Some(t) = self.metadata().topics.get(name) {
            if t.error.is_ok() && !t.partitions.is_empty() {
                return Ok(t.clone());
            }
        }
        let mut last = ErrorCode::UNKNOWN_TOPIC_OR_PARTITION;
        for attempt in 0..TOPIC_WAIT_ATTEMPTS {
            let metadata = self.refresh_topics(&[name]).await?;
            match metadata.topics.get(name) {
                Some(t) if t.error.is_ok() && !t.partitions.is_empty() => return Ok(t.clone()),
                Some(t) => last = t.error,
                None => last = ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
            }
            if last == ErrorCode::UNKNOWN_TOPIC_OR_PARTITION && !self.inner.config.allow_auto_topic_creation {
                break;
            }
            if !last.is_retriable() && !last.is_ok() {
                break;
            }
            debug!(topic = name, attempt, error = %last, "topic metadata not ready");
            tokio::time::sleep(TOPIC_WAIT_BACKOFF).await;
        }
        if last == ErrorCode::UNKNOWN_TOPIC_OR_PARTITION {
            return Err(Error::UnknownTopic { topic: name.to_string() });
        }
        Err(Error::broker(last, format!("metadata of topic {name}")))
    }

    /// The pooled connection to a broker, (re)connecting when needed. A broker missing from
    /// the metadata (fenced, or not yet known) is [`Error::UnknownBroker`], which is retriable:
    /// refresh and look the leader up again.
    pub async fn broker(&self, node_id: i32) -> Result<Connection> {
        let slot = self.inner.brokers.lock().expect("brokers lock").entry(node_id).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.as_ref() {
            if !conn.is_closed() {
                return Ok(conn.clone());
            }
        }
        let addr = match self.metadata().brokers.get(&node_id) {
            Some(b) => b.addr(),
            None => return Err(Error::UnknownBroker { node_id }),
        };
        let conn = Connection::connect(&addr, &self.inner.config.connection).await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets `conn` as the connection for metadata and coordinator lookups after a request
    /// over it failed, so the next lookup goes to another broker.
    pub fn report_failure(&self, conn: &Connection) {
        let mut any = self.inner.any.lock().expect("any lock");
        if any.as_ref().is_some_and(|c| c.peer() == conn.peer()) {
            *any = None;
        }
    }

    /// The leader of a partition and a connection to it.
    pub async fn leader(&self, tp: &TopicPartition) -> Result<(i32, Connection)> {
        let topic = self.topic(&tp.topic).await?;
        let partition = topic
            .partition(tp.partition)
            .ok_or_else(|| Error::UnknownPartition { topic: tp.topic.clone(), partition: tp.partition })?;
        if partition.leader < 0 {
            return Err(Error::LeaderNotAvailable { topic: tp.topic.clone(), partition: tp.partition });
        }
        Ok((partition.leader, self.broker(partition.leader).await?))
    }

    /// The controller (where admin requests go), falling back to any broker.
    pub async fn controller(&self) -> Result<Connection> {
        let controller_id = self.metadata().controller_id;
        if controller_id >= 0 {
            if let Ok(conn) = self.broker(controller_id).await {
                return Ok(conn);
            }
        }
        self.any_broker().await
    }

    /// Some live broker connection: the last one used for metadata, else a known broker, else a
    /// bootstrap server.
    pub async fn any_broker(&self) -> Result<Connection> {
        self.any_broker_avoiding(&BTreeSet::new()).await
    }

    /// Like [`Cluster::any_broker`], skipping brokers (by `host:port`) that just failed.
    async fn any_broker_avoiding(&self, avoid: &BTreeSet<String>) -> Result<Connection> {
        let cached = self.inner.any.lock().expect("any lock").clone();
        if let Some(conn) = cached {
            if !conn.is_closed() && !avoid.contains(conn.peer()) {
                return Ok(conn);
            }
        }
        let mut failures = Vec::new();
        let metadata = self.metadata();
        for (node_id, broker) in &metadata.brokers {
            if avoid.contains(&broker.addr()) {
                continue;
            }
            match self.broker(*node_id).await {
                Ok(conn) => {
                    *self.inner.any.lock().expect("any lock") = Some(conn.clone());
                    return Ok(conn);
                }
                Err(e) => failures.push(format!("broker {node_id}: {e}")),
            }
        }
        let known: BTreeSet<String> = metadata.brokers.values().map(BrokerMetadata::addr).collect();
        for addr in &self.inner.config.bootstrap_servers {
            if avoid.contains(addr) || known.contains(addr) {
                continue;
            }
            match Connection::connect(addr, &self.inner.config.connection).await {
                Ok(conn) => {
                    *self.inner.any.lock().expect("any lock") = Some(conn.clone());
                    return Ok(conn);
                }
                Err(e) => failures.push(format!("{addr}: {e}")),
            }
        }
        if failures.is_empty() {
            failures.push("every broker failed a request just now".to_string());
        }
        Err(Error::NoBootstrap { servers: self.inner.config.bootstrap_servers.join(","), reason: failures.join("; ") })
    }

    /// Sends one Metadata request (`None` = all topics) and merges the answer into the cache.
    /// Callers hold `refresh_lock`.
    async fn fetch(&self, topics: Option<Vec<String>>) -> Result<Arc<ClusterMetadata>> {
        let request = MetadataRequest::default()
            .with_topics(topics.as_ref().map(|names| {
                names
                    .iter()
                    .map(|n| MetadataRequestTopic::default().with_name(Some(TopicName(str_bytes(n.as_str())))))
                    .collect()
            }))
            .with_allow_auto_topic_creation(self.inner.config.allow_auto_topic_creation);
        // Each broker that fails is skipped for the rest of this refresh; `any_broker_avoiding`
        // ends the loop with an error once none is left.
        let mut failed = BTreeSet::new();
        let response: MetadataResponse = loop {
            let conn = self.any_broker_avoiding(&failed).await?;
            match conn.call(ApiKey::Metadata, &request).await {
                Ok((_, r)) => break r,
                Err(e) => {
                    warn!(peer = conn.peer(), error = %e, "metadata request failed, trying another broker");
                    self.report_failure(&conn);
                    failed.insert(conn.peer().to_string());
                }
            }
        };
        let merged = Arc::new(merge(&self.metadata(), response, topics.is_none()));
        *self.inner.metadata.write().expect("metadata lock") = merged.clone();
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        Ok(merged)
    }
}

/// Folds a Metadata response into the previous snapshot: brokers are replaced, returned topics
/// replace their cached form (or are dropped when unknown), other topics are kept unless the
/// response listed every topic.
fn merge(previous: &ClusterMetadata, response: MetadataResponse, all_topics: bool) -> ClusterMetadata {
    let brokers = response
        .brokers
        .into_iter()
        .map(|b| {
            let broker = BrokerMetadata {
                node_id: b.node_id.0,
                host: b.host.to_string(),
                port: b.port,
                rack: b.rack.map(|r| r.to_string()),
            };
            (broker.node_id, broker)
        })
        .collect();
    let mut topics = if all_topics { HashMap::new() } else { previous.topics.clone() };
    for t in response.topics {
        let Some(name) = t.name.map(|n| n.0.to_string()) else { continue };
        let error = ErrorCode(t.error_code);
        if error == ErrorCode::UNKNOWN_TOPIC_OR_PARTITION {
            topics.remove(&name);
            continue;
        }
        // The cached topic, when this answer is about the same incarnation of it (a deleted
        // and re-created topic starts its epochs again).
        let cached = previous
            .topics
            .get(&name)
            .filter(|c| c.topic_id == t.topic_id && !t.topic_id.is_nil() && t.error_code == 0)
            .cloned();
        let mut partitions: Vec<PartitionMetadata> = t
            .partitions
            .into_iter()
            .map(|p| PartitionMetadata {
                partition: p.partition_index,
                leader: p.leader_id.0,
                leader_epoch: p.leader_epoch,
                replicas: p.replica_nodes.into_iter().map(|b| b.0).collect(),
                isr: p.isr_nodes.into_iter().map(|b| b.0).collect(),
                offline_replicas: p.offline_replicas.into_iter().map(|b| b.0).collect(),
                error: ErrorCode(p.error_code),
            })
            .map(|fresh| match cached.as_ref().and_then(|c| c.partition(fresh.partition)) {
                Some(known) if is_stale(known, &fresh) => {
                    debug!(topic = %name, partition = fresh.partition, known = known.leader_epoch,
                        answered = fresh.leader_epoch, "ignoring metadata with an older leader epoch");
                    known.clone()
                }
                _ => fresh,
            })
            .collect();
        partitions.sort_by_key(|p| p.partition);
        partitions.dedup_by_key(|p| p.partition);
        let topic =
            TopicMetadata { name: name.clone(), topic_id: t.topic_id, is_internal: t.is_internal, partitions, error };
        topics.insert(name, Arc::new(topic));
    }
    ClusterMetadata {
        cluster_id: response.cluster_id.map(|c| c.to_string()),
        controller_id: response.controller_id.0,
        brokers,
        topics,
    }
}

/// Whether `fresh` comes from a broker that has not yet seen the leader epoch the cache
/// already holds (Java's `Metadata.updateLatestMetadata` rule).
fn is_stale(known: &PartitionMetadata, fresh: &PartitionMetadata) -> bool {
    known.leader_epoch >= 0 && fresh.leader_epoch >= 0 && fresh.leader_epoch < known.leader_epoch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use crate::protocol::messages::BrokerId;

    fn topic(name: &str, code: ErrorCode, leaders: &[i32]) -> MetadataResponseTopic {
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(str_bytes(name))))
            .with_error_code(code.0)
            .with_partitions(
                leaders
                    .iter()
                    .enumerate()
                    .rev()
                    .map(|(i, l)| {
                        MetadataResponsePartition::default()
                            .with_partition_index(i as i32)
                            .with_leader_id(BrokerId(*l))
                            .with_replica_nodes(vec![BrokerId(*l)])
                    })
                    .collect(),
            )
    }

    #[test]
    fn merge_replaces_brokers_and_updates_only_returned_topics() {
        let first = MetadataResponse::default()
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(BrokerId(1))
                .with_host(str_bytes("127.0.0.1"))
                .with_port(9092)])
            .with_topics(vec![topic("a", ErrorCode::NONE, &[1, 1]), topic("b", ErrorCode::NONE, &[1])]);
        let m = merge(&ClusterMetadata::default(), first, false);
        assert_eq!(m.brokers[&1].addr(), "127.0.0.1:9092");
        assert_eq!(m.topics["a"].partitions.iter().map(|p| p.partition).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(m.leader("a", 1), Some(1));

        let second = MetadataResponse::default().with_topics(vec![
            topic("a", ErrorCode::NONE, &[2, -1]),
            topic("b", ErrorCode::UNKNOWN_TOPIC_OR_PARTITION, &[]),
        ]);
        let m = merge(&m, second, false);
        assert!(m.brokers.is_empty());
        assert_eq!(m.leader("a", 0), Some(2));
        assert_eq!(m.leader("a", 1), None);
        assert!(!m.topics.contains_key("b"));

        let all = MetadataResponse::default().with_topics(vec![topic("c", ErrorCode::NONE, &[1])]);
        let m = merge(&m, all, true);
        assert_eq!(m.topics.keys().collect::<Vec<_>>(), vec!["c"]);
    }

    fn partition(
        index: i32,
        leader: i32,
        leader_epoch: i32,
        replicas: &[i32],
        isr: &[i32],
    ) -> MetadataResponsePartition {
        MetadataResponsePartition::default()
            .with_partition_index(index)
            .with_leader_id(BrokerId(leader))
            .with_leader_epoch(leader_epoch)
            .with_replica_nodes(replicas.iter().map(|b| BrokerId(*b)).collect())
            .with_isr_nodes(isr.iter().map(|b| BrokerId(*b)).collect())
    }

    fn with_id(id: uuid::Uuid, partitions: Vec<MetadataResponsePartition>) -> MetadataResponse {
        MetadataResponse::default().with_topics(vec![MetadataResponseTopic::default()
            .with_name(Some(TopicName(str_bytes("t"))))
            .with_topic_id(id)
            .with_partitions(partitions)])
    }

    #[test]
    fn an_answer_from_a_lagging_broker_does_not_move_a_leader_back() {
        let id = uuid::Uuid::from_u128(7);
        let m = merge(
            &ClusterMetadata::default(),
            with_id(id, vec![partition(0, 2, 5, &[1, 2, 3], &[2, 3]), partition(1, 1, 3, &[1, 2, 3], &[1, 2, 3])]),
            false,
        );
        assert_eq!((m.leader("t", 0), m.leader_epoch("t", 0)), (Some(2), 5));
        // A broker that has not applied epoch 5 yet still names 1 as leader of partition 0; its
        // answer for partition 1 (same epoch, ISR shrunk) is taken.
        let m = merge(
            &m,
            with_id(id, vec![partition(0, 1, 4, &[1, 2, 3], &[1, 2, 3]), partition(1, 1, 3, &[1, 2, 3], &[1, 2])]),
            false,
        );
        assert_eq!((m.leader("t", 0), m.leader_epoch("t", 0)), (Some(2), 5));
        assert_eq!(m.topics["t"].partitions[1].isr, vec![1, 2]);
        // A newer epoch replaces it, including "no leader".
        let m = merge(&m, with_id(id, vec![partition(0, -1, 6, &[1, 2, 3], &[])]), false);
        assert_eq!((m.leader("t", 0), m.leader_epoch("t", 0)), (None, 6));
        assert!(m.topics["t"].partitions[0].is_offline());
        // A re-created topic (new id) starts its epochs again.
        let m = merge(&m, with_id(uuid::Uuid::from_u128(8), vec![partition(0, 3, 0, &[3], &[3])]), false);
        assert_eq!((m.leader("t", 0), m.leader_epoch("t", 0)), (Some(3), 0));
        assert_eq!(m.leader_epoch("t", 9), -1);
    }

    #[test]
    fn partition_health() {
        let m = merge(
            &ClusterMetadata::default(),
            with_id(
                uuid::Uuid::from_u128(1),
                vec![partition(0, 1, 0, &[1, 2, 3], &[1, 2]), partition(1, 2, 0, &[1, 2], &[2, 1])],
            ),
            false,
        );
        let t = &m.topics["t"];
        assert!(t.partitions[0].is_under_replicated() && !t.partitions[0].is_offline());
        assert!(!t.partitions[1].is_under_replicated());
    }

    #[tokio::test]
    async fn refresh_fails_over_to_another_bootstrap_server_when_a_broker_dies() {
        let first = crate::test_broker::TestBroker::start(&[("t", 1)]).await;
        let second = crate::test_broker::TestBroker::start(&[("t", 2)]).await;
        // A closed port first: bootstrap goes on to the next server.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let cluster =
            Cluster::connect(ClusterConfig::new(vec![dead, first.addr.clone(), second.addr.clone()])).await.unwrap();
        assert_eq!(cluster.topic("t").await.unwrap().partitions.len(), 1);
        drop(first);
        // The broker this client knew is gone: the refresh reaches the other server.
        let metadata = cluster.refresh().await.unwrap();
        assert_eq!(metadata.topics["t"].partitions.len(), 2);
        assert_eq!(metadata.brokers[&0].addr(), second.addr);
        drop(second);
        let err = cluster.refresh().await.unwrap_err();
        assert!(matches!(err, Error::NoBootstrap { .. }) && err.is_retriable(), "{err}");
    }

    #[test]
    fn parses_bootstrap_servers() {
        assert_eq!(parse_bootstrap_servers(" a:1, b:2,,"), vec!["a:1".to_string(), "b:2".to_string()]);
    }
}

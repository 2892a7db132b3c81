//! The metadata quorum: a Raft group (openraft) of controller nodes that agrees on the cluster's
//! [`MetadataImage`] — brokers, topics, partition leaders and ISRs, producer-id blocks.
//!
//! Entry point: [`Controller::start`]. Brokers call [`Controller::submit`] with a
//! [`ControllerRequest`]; the quorum leader turns it into [`MetadataRecord`]s
//! ([`logic`] decides, sans-IO), commits them, and every node applies them
//! ([`records::apply_record`]) and publishes the new image on a watch channel.
//!
//! A broker-only node (`process.roles=broker`) runs the same code as an *observer*: a non-voting
//! Raft learner that the leader replicates the metadata log to (KRaft's observers fetch it; here
//! the leader pushes). It asks the leader to add it with a Join RPC at every start, and forwards
//! its requests like any other non-leader.
//!
//! Inside: `storage` (durable log, vote and snapshot in `<metadata_dir>`), `network` (tonic RPC
//! between controllers, including forwarding a request to the leader). openraft and tonic types
//! do not leave this module.

pub mod logic;
mod network;
pub mod records;
mod storage;
pub mod types;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use spate_client::protocol::ErrorCode;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::BrokerError;
use logic::{refusal, Decision, LogicSettings};
use network::{Method, RpcClient, RpcHandler, WarnLimiter};
pub use records::MetadataRecord;
use storage::{Command, LogStore, NodeId, StateMachineStore, TypeConfig};
pub use types::{
    BrokerRegistration, ControllerRefusal, ControllerReply, ControllerRequest, ElectionResult, MetadataImage,
    PartitionImage, QuorumDescription, QuorumMember, TopicImage, NO_LEADER,
};

/// Raft timing: quick failover, but not so aggressive that a busy 2-core machine running several
/// nodes triggers spurious elections.
const HEARTBEAT_INTERVAL_MS: u64 = 100;
const ELECTION_TIMEOUT_MIN_MS: u64 = 400;
const ELECTION_TIMEOUT_MAX_MS: u64 = 800;
/// Pause between attempts while no leader is known or the leader is unreachable.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// How long shutdown waits for the RPC server and liveness task to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest time a forwarded request may run on the leader, whatever the sender asks.
const MAX_FORWARD_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest log entry one decision may write (a 10,000-partition topic is about 1 MiB). With at
/// most `MAX_PAYLOAD_ENTRIES` per AppendEntries, a replication RPC stays below
/// `network::MAX_RPC_BYTES`, so no entry can wedge a follower's catch-up or the leader's storage.
const MAX_COMMAND_BYTES: usize = 4 << 20;
const MAX_PAYLOAD_ENTRIES: u64 = 3;
/// Snapshot chunk bytes per InstallSnapshot (JSON carries bytes as numbers, up to 4× larger).
const SNAPSHOT_CHUNK_BYTES: u64 = 1 << 20;
/// How long one Join RPC of an observer may take, and the pause between failed attempts.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);
const JOIN_RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// How many metadata log entries an observer may lag the leader and still be made a voter (a
/// slower one would hold back every commit of the joint configuration until it catches up).
const MAX_NEW_VOTER_LAG_ENTRIES: u64 = 100;

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub node_id: i32,
    /// `controller.quorum.voters`: id -> controller RPC address. Empty: single node, a quorum of
    /// this node alone, no RPC listener at all (zero-config single-node broker).
    pub voters: BTreeMap<i32, SocketAddr>,
    /// Where this node's controller RPC (tonic) listens; None when voters is empty (with voters,
    /// None means this node's own voter address).
    pub listen: Option<SocketAddr>,
    /// `process.roles=broker`: this node is not among `voters` but follows the metadata log as
    /// a non-voting observer; the leader reaches it at `listen` (required then).
    pub observer: bool,
    /// `<log.dirs>/__cluster_metadata`.
    pub metadata_dir: PathBuf,
    /// Fence brokers not heard from for this long.
    pub broker_session_timeout_ms: u64,
    pub auto_leader_rebalance_enable: bool,
    pub leader_imbalance_check_interval_ms: u64,
    pub unclean_leader_election_enable: bool,
    pub default_replication_factor: i16,
    /// Snapshot the state machine after this many applied log entries.
    pub metadata_snapshot_max_records: u64,
}

/// What the leader remembers about broker liveness (memory only; a new leader starts afresh).
#[derive(Default)]
struct Liveness {
    /// The term in which this node last saw itself leader; a new term resets the clocks below.
    leader_term: Option<u64>,
    last_heard: HashMap<i32, Instant>,
    last_rebalance: Option<Instant>,
}

enum ProposeError {
    Refused(ControllerRefusal),
    NotLeader(Option<i32>),
    Unavailable(String),
}

#[derive(Serialize, Deserialize)]
struct ForwardRequest {
    request: ControllerRequest,
    timeout_ms: u64,
}

/// An observer asking the leader to replicate the metadata log to it.
#[derive(Serialize, Deserialize)]
struct JoinRequest {
    node_id: i32,
    /// Its controller RPC address, as the leader should dial it.
    addr: String,
}

#[derive(Serialize, Deserialize)]
enum JoinResponse {
    Joined,
    Refused(ControllerRefusal),
    /// `leader_addr`: its controller address, which a node that has not joined yet may not know
    /// (a voter added at run time is not in its `controller.quorum.voters`).
    NotLeader {
        leader: Option<i32>,
        leader_addr: Option<String>,
    },
    Unavailable {
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
enum ForwardResponse {
    Done { reply: ControllerReply, index: u64 },
    Refused(ControllerRefusal),
    NotLeader { leader: Option<i32> },
    Unavailable { reason: String },
}

struct Inner {
    node_id: i32,
    config: ControllerConfig,
    settings: LogicSettings,
    raft: Raft<TypeConfig>,
    image_rx: watch::Receiver<Arc<MetadataImage>>,
    /// Serialises decisions on the leader, so each is made on the image that includes all earlier
    /// ones (two CreateTopic for one name cannot both pass validation).
    propose_lock: tokio::sync::Mutex<()>,
    liveness: Mutex<Liveness>,
    /// RPC clients of the other quorum members by id, with the address each was made for. The
    /// address comes from the Raft membership (voters added at run time are not in
    /// `controller.quorum.voters`), else from that static list.
    peers: Mutex<HashMap<i32, (SocketAddr, RpcClient)>>,
    forward_warn: WarnLimiter,
    /// A [`Controller::rejoin`] loop is running.
    rejoining: std::sync::atomic::AtomicBool,
}

/// One node of the metadata quorum. Share it in an `Arc`; call [`Controller::shutdown`] to stop.
pub struct Controller {
    inner: Arc<Inner>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The last metadata log index the leader knows `id` has (leader-side replication metrics).
fn matched_index(metrics: &openraft::RaftMetrics<NodeId, BasicNode>, id: NodeId) -> Option<u64> {
    metrics.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map(|l| l.index)
}

fn node_id_u64(id: i32) -> NodeId {
    u64::try_from(id).unwrap_or(0)
}

fn invalid(reason: impl Into<String>) -> BrokerError {
    BrokerError::InvalidConfig { key: "controller.quorum.voters".into(), reason: reason.into() }
}

/// 16 random bytes in unpadded URL-safe base64: 22 characters, like Kafka's cluster ids.
fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = Uuid::new_v4().into_bytes();
    let mut out = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
        }
    }
    out
}

impl Controller {
    /// Opens the metadata dir and joins (or, on first start, forms) the quorum.
    pub async fn start(config: ControllerConfig) -> Result<Arc<Controller>, BrokerError> {
        let listener = if config.voters.is_empty() {
            None
        } else {
            let addr = config.listen.or_else(|| config.voters.get(&config.node_id).copied()).ok_or_else(|| {
                invalid(format!("node {} is not a voter and has no controller.listener", config.node_id))
            })?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| BrokerError::io(format!("controller listener {addr}"), e))?;
            Some(listener)
        };
        Self::start_with_listener(config, listener).await
    }

    /// [`Controller::start`] with an already bound RPC listener (tests bind port 0 first).
    pub(crate) async fn start_with_listener(
        config: ControllerConfig,
        listener: Option<tokio::net::TcpListener>,
    ) -> Result<Arc<Controller>, BrokerError> {
        if config.node_id < 0 {
            return Err(invalid(format!("node id {} must not be negative", config.node_id)));
        }
        if config.observer {
            if config.voters.is_empty() || config.voters.contains_key(&config.node_id) || config.listen.is_none() {
                return Err(invalid(format!(
                    "broker-only node {} needs the voters (without itself) and its own controller.listener",
                    config.node_id
                )));
            }
        } else if !config.voters.is_empty() && !config.voters.contains_key(&config.node_id) {
            return Err(invalid(format!("node {} is not among the voters", config.node_id)));
        }
        if let Some(id) = config.voters.keys().find(|id| **id < 0) {
            return Err(invalid(format!("voter id {id} must not be negative")));
        }
        let dir = &config.metadata_dir.clone();
        let log_store = LogStore::open(dir).map_err(|e| BrokerError::io(dir, e))?;
        let (state_machine, image_rx) = StateMachineStore::open(dir).map_err(|e| BrokerError::io(dir, e))?;
        let snapshot_every = config.metadata_snapshot_max_records.max(1);
        let raft_config = openraft::Config {
            cluster_name: "spate-metadata".into(),
            heartbeat_interval: HEARTBEAT_INTERVAL_MS,
            election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
            election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
            install_snapshot_timeout: 2_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
            // Keep some log behind the snapshot so a briefly lagging voter catches up from the log.
            max_in_snapshot_log_to_keep: snapshot_every.min(1_000),
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            ..Default::default()
        }
        .validate()
        .map_err(|e| invalid(format!("raft config: {e}")))?;
        let node_id = node_id_u64(config.node_id);
        let raft =
            Raft::new(node_id, Arc::new(raft_config), network::NetworkFactory::default(), log_store, state_machine)
                .await
                .map_err(|e| BrokerError::io(dir, std::io::Error::other(format!("cannot start raft: {e}"))))?;

        let settings = LogicSettings {
            default_replication_factor: config.default_replication_factor,
            unclean_leader_election_enable: config.unclean_leader_election_enable,
        };
        let inner = Arc::new(Inner {
            node_id: config.node_id,
            config,
            settings,
            raft,
            image_rx,
            propose_lock: tokio::sync::Mutex::new(()),
            liveness: Mutex::new(Liveness::default()),
            peers: Mutex::new(HashMap::new()),
            rejoining: std::sync::atomic::AtomicBool::new(false),
            forward_warn: WarnLimiter::default(),
        });
        let (shutdown_tx, _) = watch::channel(false);
        let mut tasks = Vec::new();
        if let Some(listener) = listener {
            let mut stop = shutdown_tx.subscribe();
            let handler: Arc<dyn RpcHandler> = inner.clone();
            tasks.push(tokio::spawn(network::serve(listener, handler, async move {
                let _ = stop.wait_for(|s| *s).await;
            })));
        }

        let initialized = inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| BrokerError::io(dir, std::io::Error::other(e.to_string())))?;
        if !initialized && !inner.config.observer {
            let members: BTreeMap<NodeId, BasicNode> = if inner.config.voters.is_empty() {
                BTreeMap::from([(node_id, BasicNode::default())])
            } else {
                inner.config.voters.iter().map(|(id, addr)| (node_id_u64(*id), BasicNode::new(addr))).collect()
            };
            // Every voter initializes with the same membership on its first start: openraft makes
            // that safe, and a node that already learnt the membership answers NotAllowed.
            match inner.raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => {
                    let _ = inner.raft.shutdown().await;
                    return Err(invalid(format!("cannot initialize the quorum: {e}")));
                }
            }
        }

        // A broker-only node joins at every start; so does a former voter that RemoveVoter left
        // an observer (an UnregisterBroker may have dropped it from the learners since).
        let former_voter = initialized && !inner.config.voters.is_empty() && !inner.is_voter();
        if let (true, Some(addr)) = (inner.config.observer || former_voter, inner.own_addr()) {
            let mut stop = shutdown_tx.subscribe();
            let joiner = inner.clone();
            tasks.push(tokio::spawn(async move {
                tokio::select! {
                    _ = joiner.join_as_observer(addr) => {}
                    _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {}
                }
            }));
        }

        let mut stop = shutdown_tx.subscribe();
        let ticker = inner.clone();
        tasks.push(tokio::spawn(async move {
            let period = Duration::from_millis((ticker.config.broker_session_timeout_ms / 4).clamp(50, 500));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(period) => ticker.tick().await,
                    _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => return,
                }
            }
        }));
        Ok(Arc::new(Controller { inner, shutdown_tx, tasks: Mutex::new(tasks) }))
    }

    /// Latest applied image (cheap: Arc clone).
    pub fn image(&self) -> Arc<MetadataImage> {
        self.inner.image_rx.borrow().clone()
    }

    /// Wakes on every applied change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.inner.image_rx.clone()
    }

    /// Current Raft leader (controller) id, if known.
    pub fn leader_id(&self) -> Option<i32> {
        self.inner.leader_id()
    }

    /// The voters of the metadata quorum as this node last learnt them from the Raft log (they
    /// change with AddVoter / RemoveVoter); before it learnt any, `controller.quorum.voters`.
    pub fn voters(&self) -> Vec<i32> {
        let learnt = self.inner.voter_ids();
        if !learnt.is_empty() {
            learnt
        } else if self.inner.config.voters.is_empty() {
            vec![self.inner.node_id]
        } else {
            self.inner.config.voters.keys().copied().collect()
        }
    }

    /// On a node that is not a voter (a broker-only node, or a voter removed with RemoveVoter):
    /// asks the quorum leader again to replicate the metadata log to it
    /// (in the background, until it is done or the controller stops). For a node the quorum
    /// forgot while it ran (unregistered while cut off): the leader stopped replicating to it,
    /// so its own copy of the membership cannot tell it. No-op on voters.
    pub fn rejoin(&self) {
        if self.inner.is_voter() {
            return;
        }
        let Some(addr) = self.inner.own_addr() else {
            return;
        };
        if self.inner.rejoining.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return; // one join loop at a time
        }
        let inner = self.inner.clone();
        let mut stop = self.shutdown_tx.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = inner.join_as_observer(addr) => {}
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {}
            }
            inner.rejoining.store(false, std::sync::atomic::Ordering::Release);
        });
    }

    /// Broker-only nodes the metadata log is replicated to (the Raft learners), as this node
    /// last learnt them.
    pub fn observers(&self) -> Vec<i32> {
        self.inner.member_ids(false)
    }

    /// Runs a request on the quorum leader (locally, or forwarded over tonic), retrying across
    /// leader changes until `timeout`. Returns once the resulting records are committed AND
    /// applied to this node's image (so the caller's next image() reflects it).
    pub async fn submit(
        &self,
        request: ControllerRequest,
        timeout: Duration,
    ) -> Result<ControllerReply, ControllerRefusal> {
        let deadline = Instant::now() + timeout;
        let mut last_problem = String::from("no attempt finished");
        loop {
            if *self.shutdown_tx.borrow() {
                return Err(refusal(ErrorCode::NOT_CONTROLLER, "controller is shutting down"));
            }
            if Instant::now() >= deadline {
                return Err(refusal(
                    ErrorCode::REQUEST_TIMED_OUT,
                    format!("controller request timed out after {timeout:?}: {last_problem}"),
                ));
            }
            let outcome = match self.inner.handle_request(&request, deadline).await {
                Err(ProposeError::NotLeader(Some(leader))) if leader != self.inner.node_id => {
                    self.inner.forward(leader, &request, deadline).await
                }
                other => other,
            };
            match outcome {
                Ok((reply, index)) => {
                    self.wait_applied(index, deadline).await?;
                    return Ok(reply);
                }
                Err(ProposeError::Refused(r)) => return Err(r),
                Err(ProposeError::NotLeader(leader)) => {
                    last_problem = format!("leader is {leader:?}");
                }
                Err(ProposeError::Unavailable(reason)) => last_problem = reason,
            }
            tokio::time::sleep_until((Instant::now() + RETRY_BACKOFF).min(deadline)).await;
        }
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), ControllerRefusal> {
        let mut rx = self.subscribe();
        let applied = async { rx.wait_for(|image| image.applied_index >= index).await.map(|_| ()) };
        match tokio::time::timeout_at(deadline, applied).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(refusal(ErrorCode::NOT_CONTROLLER, "controller stopped")),
            Err(_) => Err(refusal(
                ErrorCode::REQUEST_TIMED_OUT,
                format!("committed at index {index} but not yet applied on node {}", self.inner.node_id),
            )),
        }
    }

    /// Stops serving RPCs, the liveness task and Raft. Idempotent.
    pub async fn shutdown(&self) {
        self.shutdown_tx.send_replace(true);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::debug!(error = %e, "raft shutdown");
        }
        for mut task in tasks {
            // The RPC server drains open connections; do not let a stuck peer hold us forever.
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

impl Inner {
    fn voter_ids(&self) -> Vec<i32> {
        self.member_ids(true)
    }

    /// The voters (`true`) or the learners of the Raft membership this node last learnt.
    fn member_ids(&self, voters: bool) -> Vec<i32> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let ids: Vec<NodeId> =
            if voters { membership.voter_ids().collect() } else { membership.learner_ids().collect() };
        ids.into_iter().filter_map(|id| i32::try_from(id).ok()).collect()
    }

    /// The controller address of quorum member `id`: from the Raft membership, else from
    /// `controller.quorum.voters`.
    fn peer_addr(&self, id: i32) -> Option<SocketAddr> {
        let from_membership = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let addr = metrics.membership_config.membership().get_node(&node_id_u64(id)).map(|n| n.addr.clone());
            addr
        };
        from_membership.and_then(|a| a.parse().ok()).or_else(|| self.config.voters.get(&id).copied())
    }

    /// An RPC client for member `id` (reused while its address stays the same).
    fn peer(&self, id: i32) -> Option<RpcClient> {
        if id == self.node_id || id < 0 {
            return None;
        }
        let addr = self.peer_addr(id)?;
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        match peers.get(&id) {
            Some((known, client)) if *known == addr => Some(client.clone()),
            _ => {
                let client = RpcClient::new(addr);
                peers.insert(id, (addr, client.clone()));
                Some(client)
            }
        }
    }

    /// This node's controller RPC address: `controller.listener`, else its voter entry.
    fn own_addr(&self) -> Option<SocketAddr> {
        self.config.listen.or_else(|| self.config.voters.get(&self.node_id).copied())
    }

    fn is_voter(&self) -> bool {
        self.voter_ids().contains(&self.node_id)
    }

    fn leader_id(&self) -> Option<i32> {
        self.raft.metrics().borrow().current_leader.and_then(|id| i32::try_from(id).ok())
    }

    fn liveness(&self) -> MutexGuard<'_, Liveness> {
        self.liveness.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn image(&self) -> Arc<MetadataImage> {
        self.image_rx.borrow().clone()
    }

    /// Decides and commits on this node, which must be the leader. Returns the reply and the log
    /// index the caller must see applied.
    async fn propose<F>(&self, deadline: Instant, decide: F) -> Result<(ControllerReply, u64), ProposeError>
    where
        F: FnOnce(&MetadataImage) -> Result<Decision, ControllerRefusal>,
    {
        let is_leader = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.state == ServerState::Leader
        };
        if !is_leader {
            return Err(ProposeError::NotLeader(self.leader_id()));
        }
        let timed_out = || ProposeError::Unavailable("timed out waiting for the quorum".into());
        let _guard = tokio::time::timeout_at(deadline, self.propose_lock.lock()).await.map_err(|_| timed_out())?;
        // Wait until every entry committed before this call is applied, so the decision is made
        // on the latest image (a new leader may not have applied its predecessor's last entries).
        match tokio::time::timeout_at(deadline, self.raft.ensure_linearizable()).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                return Err(ProposeError::NotLeader(f.leader_id.and_then(|id| i32::try_from(id).ok())))
            }
            Ok(Err(e)) => return Err(ProposeError::Unavailable(e.to_string())),
            Ok(Ok(_)) => {}
        }
        // Also wait for every entry already in this leader's log (one whose client_write timed
        // out may still commit): a decision must see it, or a retried request (an AlterPartition
        // sent again after a timeout) would be decided as if the first had never been made.
        let last_log_index = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let mut images = self.image_rx.clone();
        match tokio::time::timeout_at(deadline, images.wait_for(|i| i.applied_index >= last_log_index)).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(_)) => return Err(ProposeError::Unavailable("the controller stopped".into())),
            Ok(Ok(_)) => {}
        }
        if Instant::now() >= deadline {
            // The sender has given up: deciding now could commit what it already reported as
            // not done.
            return Err(timed_out());
        }
        let image = self.image();
        let decision = decide(&image).map_err(ProposeError::Refused)?;
        if decision.records.is_empty() {
            return Ok((decision.reply, image.applied_index));
        }
        let command = Command { records: decision.records };
        let size = serde_json::to_vec(&command).map_or(usize::MAX, |b| b.len());
        if size > MAX_COMMAND_BYTES {
            return Err(ProposeError::Refused(refusal(
                ErrorCode::INVALID_REQUEST,
                format!("the metadata change is {size} bytes, over the {MAX_COMMAND_BYTES}-byte limit of one entry"),
            )));
        }
        match tokio::time::timeout_at(deadline, self.raft.client_write(command)).await {
            Err(_) => Err(timed_out()),
            Ok(Ok(response)) => Ok((decision.reply, response.log_id.index)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ProposeError::NotLeader(f.leader_id.and_then(|id| i32::try_from(id).ok())))
            }
            Ok(Err(e)) => Err(ProposeError::Unavailable(e.to_string())),
        }
    }

    /// Runs a broker's request on this node (the leader).
    async fn handle_request(
        &self,
        request: &ControllerRequest,
        deadline: Instant,
    ) -> Result<(ControllerReply, u64), ProposeError> {
        match request {
            ControllerRequest::AddVoter { .. } | ControllerRequest::RemoveVoter { .. } => {
                return self.change_voters(request, deadline).await
            }
            ControllerRequest::DescribeQuorum => return self.describe_quorum(),
            ControllerRequest::UnregisterBroker { broker_id } if self.voter_ids().contains(broker_id) => {
                // Forgetting it as a broker would leave a voter the quorum still counts on.
                return Err(ProposeError::Refused(refusal(
                    ErrorCode::INVALID_REQUEST,
                    format!(
                        "node {broker_id} is a voter of the metadata quorum: remove it with \
                         `spate cluster remove-controller --id {broker_id}` first"
                    ),
                )));
            }
            _ => {}
        }
        let outcome = self
            .propose(deadline, |image| {
                let decision = logic::decide(image, request, &self.settings, Uuid::new_v4())?;
                if let ControllerRequest::RegisterBroker { broker_id, .. }
                | ControllerRequest::BrokerHeartbeat { broker_id, .. } = request
                {
                    self.liveness().last_heard.insert(*broker_id, Instant::now());
                }
                Ok(decision)
            })
            .await?;
        if let ControllerRequest::UnregisterBroker { broker_id } = request {
            self.remove_observer(*broker_id, deadline).await;
        }
        Ok(outcome)
    }

    /// Sends a request to the leader `leader` over RPC.
    async fn forward(
        &self,
        leader: i32,
        request: &ControllerRequest,
        deadline: Instant,
    ) -> Result<(ControllerReply, u64), ProposeError> {
        let Some(client) = self.peer(leader) else {
            return Err(ProposeError::Unavailable(format!("leader {leader} is not a known quorum member")));
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let body = ForwardRequest {
            request: request.clone(),
            timeout_ms: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
        };
        let data = network::encode(&body).map_err(|s| ProposeError::Unavailable(s.message().to_string()))?;
        let reply = match client.call(Method::Forward, data, remaining).await {
            Ok(reply) => reply,
            Err(status) => {
                if self.forward_warn.allow() {
                    tracing::warn!(leader, error = %status.message(), "cannot forward controller request");
                }
                return Err(ProposeError::Unavailable(format!("forward to {leader}: {}", status.message())));
            }
        };
        match network::decode::<ForwardResponse>(&reply) {
            Ok(ForwardResponse::Done { reply, index }) => Ok((reply, index)),
            Ok(ForwardResponse::Refused(r)) => Err(ProposeError::Refused(r)),
            // The leader moved on; ask again (this node's metrics will name the new one).
            Ok(ForwardResponse::NotLeader { leader }) => Err(ProposeError::NotLeader(leader)),
            Ok(ForwardResponse::Unavailable { reason }) => Err(ProposeError::Unavailable(reason)),
            Err(status) => Err(ProposeError::Unavailable(status.message().to_string())),
        }
    }

    /// An observer's first act at every start: asks the leader (or any voter, which points at
    /// the leader) to add it as a learner at `addr`, until one says it did. Asking again after a
    /// restart is harmless, and brings back an observer that was unregistered while it was down.
    async fn join_as_observer(&self, addr: SocketAddr) {
        // `controller.quorum.voters` is where to start (like KIP-853's bootstrap servers); the
        // quorum may have other voters by now, and the answers point at its leader.
        let bootstrap: Vec<(i32, SocketAddr)> = self.config.voters.iter().map(|(id, a)| (*id, *a)).collect();
        let request = JoinRequest { node_id: self.node_id, addr: addr.to_string() };
        let Ok(data) = network::encode(&request) else { return };
        let mut attempt = 0usize;
        let mut hint: Option<(i32, Option<SocketAddr>)> = None;
        loop {
            if self.is_voter() {
                // Promoted by AddVoter: it takes part in the quorum and needs no joining.
                tracing::info!(node_id = self.node_id, "this broker-only node is a voter of the metadata quorum");
                return;
            }
            let hinted = match hint.take().or_else(|| self.leader_id().map(|id| (id, None))) {
                Some((id, Some(a))) => Some((id, RpcClient::new(a))),
                Some((id, None)) => self.peer(id).map(|client| (id, client)),
                None => None,
            };
            let (target, client) = match (hinted, bootstrap.get(attempt % bootstrap.len().max(1))) {
                (Some(hinted), _) => hinted,
                (None, Some(&(id, a))) => (id, self.peer(id).unwrap_or_else(|| RpcClient::new(a))),
                (None, None) => return, // no voter to ask (a single-node quorum)
            };
            attempt += 1;
            let outcome = match client.call(Method::Join, data.clone(), JOIN_TIMEOUT).await {
                Ok(reply) => network::decode::<JoinResponse>(&reply)
                    .unwrap_or_else(|s| JoinResponse::Unavailable { reason: s.message().to_string() }),
                Err(status) => JoinResponse::Unavailable { reason: status.message().to_string() },
            };
            match outcome {
                JoinResponse::Joined => {
                    tracing::info!(node_id = self.node_id, leader = target, %addr, "joined the metadata quorum as an observer");
                    return;
                }
                JoinResponse::NotLeader { leader: Some(leader), leader_addr } if leader != target => {
                    hint = Some((leader, leader_addr.and_then(|a| a.parse().ok())));
                    continue;
                }
                JoinResponse::Refused(r) if r.code == ErrorCode::DUPLICATE_VOTER.0 => {
                    tracing::info!(node_id = self.node_id, "this broker-only node is a voter of the metadata quorum");
                    return;
                }
                JoinResponse::Refused(r) => {
                    tracing::error!(error = %r, "the metadata quorum refuses this broker-only node");
                }
                JoinResponse::NotLeader { .. } => {}
                JoinResponse::Unavailable { reason } => {
                    if self.forward_warn.allow() {
                        tracing::warn!(voter = target, %reason, "cannot join the metadata quorum yet; retrying");
                    }
                }
            }
            tokio::time::sleep(JOIN_RETRY_BACKOFF).await;
        }
    }

    /// The leader's side of [`JoinRequest`]: adds (or re-addresses) a learner. Voters are refused.
    async fn add_observer(&self, request: JoinRequest, deadline: Instant) -> JoinResponse {
        if self.raft.metrics().borrow().state != ServerState::Leader {
            let leader = self.leader_id();
            let leader_addr = leader.and_then(|id| self.peer_addr(id)).map(|a| a.to_string());
            return JoinResponse::NotLeader { leader, leader_addr };
        }
        let id = node_id_u64(request.node_id);
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let membership = membership.membership();
        if request.node_id < 0 {
            return JoinResponse::Refused(refusal(ErrorCode::INVALID_REQUEST, "a node id must not be negative"));
        }
        if membership.voter_ids().any(|v| v == id) {
            // A broker-only node promoted by AddVoter, restarting: it is a member already.
            return JoinResponse::Refused(refusal(
                ErrorCode::DUPLICATE_VOTER,
                format!("node {} is a voter of the metadata quorum", request.node_id),
            ));
        }
        let node = BasicNode::new(&request.addr);
        let known = membership.get_node(&id).cloned();
        if known.as_ref() == Some(&node) {
            return JoinResponse::Joined;
        }
        let change = async {
            match known {
                // Same id, new address (the node moved): replace the address, keep it a learner.
                Some(_) => {
                    self.raft.change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, node)])), true).await
                }
                None => self.raft.add_learner(id, node, false).await,
            }
        };
        match tokio::time::timeout_at(deadline, change).await {
            Err(_) => JoinResponse::Unavailable { reason: "timed out adding the observer".into() },
            Ok(Ok(_)) => {
                tracing::info!(node_id = request.node_id, addr = %request.addr, "broker-only node added to the metadata quorum");
                JoinResponse::Joined
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => JoinResponse::NotLeader {
                leader: f.leader_id.and_then(|id| i32::try_from(id).ok()),
                leader_addr: f.leader_node.map(|n| n.addr),
            },
            Ok(Err(e)) => JoinResponse::Unavailable { reason: e.to_string() },
        }
    }

    /// AddVoter / RemoveVoter on the leader: one Raft membership change (openraft's joint
    /// consensus), returning the log index that ends it. A new voter must be an observer that
    /// has caught up, so it does not hold back commits; the last voter cannot leave. A removed
    /// voter stays a learner: it keeps the metadata log as long as it runs as a broker.
    async fn change_voters(
        &self,
        request: &ControllerRequest,
        deadline: Instant,
    ) -> Result<(ControllerReply, u64), ProposeError> {
        let timed_out = || ProposeError::Unavailable("timed out changing the quorum's voters".into());
        let _guard = tokio::time::timeout_at(deadline, self.propose_lock.lock()).await.map_err(|_| timed_out())?;
        // Read under the lock: an earlier change may have finished while this one waited.
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return Err(ProposeError::NotLeader(self.leader_id()));
        }
        let membership = metrics.membership_config.membership();
        if membership.get_joint_config().len() > 1 {
            return Err(ProposeError::Unavailable("another change of the quorum's voters is under way".into()));
        }
        let is_voter = |id: NodeId| membership.voter_ids().any(|v| v == id);
        let is_learner = |id: NodeId| membership.learner_ids().any(|l| l == id);
        let change = match request {
            ControllerRequest::AddVoter { node_id, addr } => {
                let id = node_id_u64(*node_id);
                if *node_id < 0 || is_voter(id) {
                    return Err(ProposeError::Refused(refusal(
                        ErrorCode::DUPLICATE_VOTER,
                        format!("node {node_id} is already a voter of the metadata quorum"),
                    )));
                }
                let Some(known) = membership.get_node(&id).filter(|_| is_learner(id)) else {
                    return Err(ProposeError::Refused(refusal(
                        ErrorCode::INVALID_REQUEST,
                        format!(
                            "node {node_id} does not follow the metadata log: start it as a broker-only node \
                             (process.roles=broker) first, then add it"
                        ),
                    )));
                };
                if let Some(addr) = addr.as_deref().filter(|a| *a != known.addr) {
                    return Err(ProposeError::Refused(refusal(
                        ErrorCode::INVALID_REQUEST,
                        format!("node {node_id} follows the metadata log at {}, not at {addr}", known.addr),
                    )));
                }
                let last = metrics.last_log_index.unwrap_or(0);
                let matched = matched_index(&metrics, id).unwrap_or(0);
                if last.saturating_sub(matched) > MAX_NEW_VOTER_LAG_ENTRIES {
                    return Err(ProposeError::Refused(refusal(
                        ErrorCode::REQUEST_TIMED_OUT,
                        format!(
                            "node {node_id} is {} metadata entries behind the leader; add it once it has caught up",
                            last - matched
                        ),
                    )));
                }
                ChangeMembers::AddVoterIds(std::collections::BTreeSet::from([id]))
            }
            ControllerRequest::RemoveVoter { node_id } => {
                let id = node_id_u64(*node_id);
                if *node_id < 0 || !is_voter(id) {
                    return Err(ProposeError::Refused(refusal(
                        ErrorCode::VOTER_NOT_FOUND,
                        format!("node {node_id} is not a voter of the metadata quorum"),
                    )));
                }
                if membership.voter_ids().count() == 1 {
                    return Err(ProposeError::Refused(refusal(
                        ErrorCode::INVALID_REQUEST,
                        format!("node {node_id} is the last voter of the metadata quorum"),
                    )));
                }
                ChangeMembers::RemoveVoters(std::collections::BTreeSet::from([id]))
            }
            _ => return Err(ProposeError::Refused(refusal(ErrorCode::INVALID_REQUEST, "not a voter change"))),
        };
        match tokio::time::timeout_at(deadline, self.raft.change_membership(change, true)).await {
            Err(_) => Err(timed_out()),
            Ok(Ok(response)) => {
                tracing::info!(?request, voters = ?self.voter_ids(), "metadata quorum voters changed");
                Ok((ControllerReply::Done, response.log_id.index))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ProposeError::NotLeader(f.leader_id.and_then(|id| i32::try_from(id).ok())))
            }
            Ok(Err(e)) => Err(ProposeError::Unavailable(e.to_string())),
        }
    }

    /// DescribeQuorum on the leader: only it knows how far each member has got. Index 0: nothing
    /// for the asking node to wait for.
    fn describe_quorum(&self) -> Result<(ControllerReply, u64), ProposeError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return Err(ProposeError::NotLeader(self.leader_id()));
        }
        let membership = metrics.membership_config.membership();
        let end_offset = |id: NodeId| -> i64 {
            let index =
                if id == node_id_u64(self.node_id) { metrics.last_log_index } else { matched_index(&metrics, id) };
            // openraft's first entry has index 0; Kafka's end offset is the next one to write.
            index.map_or(-1, |i| i64::try_from(i).unwrap_or(i64::MAX).saturating_add(1))
        };
        let member = |id: NodeId| QuorumMember {
            id: i32::try_from(id).unwrap_or(-1),
            addr: membership.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default(),
            log_end_offset: end_offset(id),
        };
        let description = QuorumDescription {
            leader_id: self.node_id,
            leader_epoch: i32::try_from(metrics.current_term).unwrap_or(i32::MAX),
            high_watermark: metrics
                .last_applied
                .map_or(0, |l| i64::try_from(l.index).unwrap_or(i64::MAX).saturating_add(1)),
            voters: membership.voter_ids().map(member).collect(),
            observers: membership.learner_ids().map(member).collect(),
        };
        Ok((ControllerReply::Quorum(description), 0))
    }

    /// After an UnregisterBroker committed: a broker-only node also leaves the learners, so the
    /// leader stops replicating to it. Best effort: a failure leaves a learner that costs one
    /// replication stream until it is removed by the next unregister.
    async fn remove_observer(&self, broker_id: i32, deadline: Instant) {
        let id = node_id_u64(broker_id);
        let is_learner = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let is_learner = membership.learner_ids().any(|l| l == id);
            is_learner
        };
        if !is_learner {
            return;
        }
        let change =
            self.raft.change_membership(ChangeMembers::RemoveNodes(std::collections::BTreeSet::from([id])), true);
        match tokio::time::timeout_at(deadline, change).await {
            Ok(Ok(_)) => tracing::info!(broker_id, "unregistered broker-only node removed from the metadata quorum"),
            Ok(Err(e)) => tracing::warn!(broker_id, error = %e, "cannot remove the unregistered observer"),
            Err(_) => tracing::warn!(broker_id, "timed out removing the unregistered observer"),
        }
    }

    /// Leader-only housekeeping: cluster id, fencing silent brokers, preferred leaders.
    async fn tick(&self) {
        let (is_leader, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state == ServerState::Leader, m.current_term)
        };
        let now = Instant::now();
        {
            let mut l = self.liveness();
            if !is_leader {
                l.leader_term = None;
                return;
            }
            if l.leader_term != Some(term) {
                // A new leader has heard from nobody yet: give everyone a full session.
                l.leader_term = Some(term);
                l.last_heard.clear();
                l.last_rebalance = Some(now);
            }
        }
        let deadline = now + Duration::from_secs(5);
        let image = self.image();
        if image.cluster_id.is_empty() {
            let cluster_id = new_cluster_id();
            let result = self
                .propose(deadline, |image| {
                    let records = if image.cluster_id.is_empty() {
                        vec![MetadataRecord::SetClusterId { cluster_id: cluster_id.clone() }]
                    } else {
                        Vec::new()
                    };
                    Ok(Decision { records, reply: ControllerReply::Done })
                })
                .await;
            if result.is_ok() {
                tracing::info!(%cluster_id, "cluster id set");
            }
        }

        let session = Duration::from_millis(self.config.broker_session_timeout_ms);
        let silent: Vec<i32> = {
            let mut l = self.liveness();
            image
                .live_brokers()
                .filter(|b| now.duration_since(*l.last_heard.entry(b.id).or_insert(now)) > session)
                .map(|b| b.id)
                .collect()
        };
        for broker_id in silent {
            tracing::info!(
                broker_id,
                session_timeout_ms = self.config.broker_session_timeout_ms,
                "fencing silent broker"
            );
            let settings = &self.settings;
            let result = self
                .propose(deadline, |image| {
                    Ok(Decision { records: logic::fence(image, broker_id, settings), reply: ControllerReply::Done })
                })
                .await;
            if let Err(ProposeError::Unavailable(reason)) = result {
                tracing::debug!(broker_id, %reason, "fencing did not commit");
            }
        }

        if self.config.auto_leader_rebalance_enable {
            let interval = Duration::from_millis(self.config.leader_imbalance_check_interval_ms);
            let due = {
                let mut l = self.liveness();
                let due = l.last_rebalance.is_none_or(|t| now.duration_since(t) >= interval);
                if due {
                    l.last_rebalance = Some(now);
                }
                due
            };
            if due {
                let _ = self
                    .propose(deadline, |image| {
                        Ok(Decision { records: logic::preferred_leader_moves(image), reply: ControllerReply::Done })
                    })
                    .await;
            }
        }
    }
}

impl RpcHandler for Inner {
    fn handle(self: Arc<Self>, method: Method, data: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, tonic::Status>> {
        Box::pin(async move {
            match method {
                Method::AppendEntries => {
                    let result = self.raft.append_entries(network::decode(&data)?).await;
                    network::encode(&result)
                }
                Method::Vote => {
                    let result = self.raft.vote(network::decode(&data)?).await;
                    network::encode(&result)
                }
                Method::InstallSnapshot => {
                    let result = self.raft.install_snapshot(network::decode(&data)?).await;
                    network::encode(&result)
                }
                Method::Forward => {
                    let request: ForwardRequest = network::decode(&data)?;
                    let timeout = Duration::from_millis(request.timeout_ms).min(MAX_FORWARD_TIMEOUT);
                    let response = match self.handle_request(&request.request, Instant::now() + timeout).await {
                        Ok((reply, index)) => ForwardResponse::Done { reply, index },
                        Err(ProposeError::Refused(r)) => ForwardResponse::Refused(r),
                        Err(ProposeError::NotLeader(leader)) => ForwardResponse::NotLeader { leader },
                        Err(ProposeError::Unavailable(reason)) => ForwardResponse::Unavailable { reason },
                    };
                    network::encode(&response)
                }
                Method::Join => {
                    let request: JoinRequest = network::decode(&data)?;
                    network::encode(&self.add_observer(request, Instant::now() + JOIN_TIMEOUT).await)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;

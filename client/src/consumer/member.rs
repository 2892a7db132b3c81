//! A member of a classic group that is not a consumer: the same JoinGroup / SyncGroup /
//! Heartbeat protocol with a protocol type and metadata of the caller's choosing. Kafka Connect
//! workers (protocol type `connect`) use it to share connectors and tasks the way consumers
//! share partitions; the broker's coordinator treats both alike.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::debug;

use super::coordinator::{self, Clock, Coordinator};
use super::group::{JoinOutcome, Membership, MembershipConfig, SyncOutcome};
use crate::error::{Error, Result};
use crate::metadata::Cluster;

/// Settings of a [`ClassicGroupMember`].
#[derive(Debug, Clone)]
pub struct ClassicGroupConfig {
    pub group_id: String,
    /// The group's protocol type, e.g. `connect`. All members must agree.
    pub protocol_type: String,
    /// `session.timeout.ms`: the coordinator drops a member that stops heartbeating this long.
    pub session_timeout_ms: u64,
    /// `rebalance.timeout.ms`: how long the coordinator waits for members to rejoin.
    pub rebalance_timeout_ms: u64,
    /// `heartbeat.interval.ms`.
    pub heartbeat_interval_ms: u64,
    pub request_timeout_ms: u64,
    pub retry_backoff_ms: u64,
}

impl ClassicGroupConfig {
    /// Kafka Connect's defaults (session 10 s, rebalance 60 s, heartbeat 3 s).
    pub fn new(group_id: impl Into<String>, protocol_type: impl Into<String>) -> Self {
        ClassicGroupConfig {
            group_id: group_id.into(),
            protocol_type: protocol_type.into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 60_000,
            heartbeat_interval_ms: 3_000,
            request_timeout_ms: 40_000,
            retry_backoff_ms: 100,
        }
    }
}

/// What the leader sees of the group after a JoinGroup: every member's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedGroup {
    pub generation_id: i32,
    pub member_id: String,
    pub leader_id: String,
    /// The protocol the coordinator chose.
    pub protocol: String,
    /// `(member id, metadata)` of every member; empty for followers.
    pub members: Vec<(String, Bytes)>,
}

impl JoinedGroup {
    /// Whether this member leads the generation (and must compute the assignment).
    pub fn is_leader(&self) -> bool {
        self.member_id == self.leader_id
    }
}

/// The outcome of a completed rebalance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebalanced {
    pub joined: JoinedGroup,
    /// The assignment the leader gave this member.
    pub assignment: Bytes,
}

/// A member of a classic group. Heartbeats run on a background task from creation until
/// drop; [`ClassicGroupMember::rejoin_requested`] resolves when they find the group
/// rebalancing or this member fenced.
pub struct ClassicGroupMember {
    coordinator: Arc<Coordinator>,
    heartbeat: tokio::task::AbortHandle,
    retry_backoff: Duration,
}

impl ClassicGroupMember {
    /// A member that has not joined yet. Must be called inside a tokio runtime.
    pub fn new(cluster: Cluster, config: ClassicGroupConfig) -> Self {
        let clock = Clock::new();
        let membership = Membership::new(
            MembershipConfig {
                group_id: config.group_id.clone(),
                protocol_type: config.protocol_type.clone(),
                group_instance_id: None,
                session_timeout_ms: config.session_timeout_ms as i32,
                rebalance_timeout_ms: config.rebalance_timeout_ms as i32,
                heartbeat_interval_ms: config.heartbeat_interval_ms as i64,
                // No poll loop to watch: a non-consumer member is alive while it heartbeats.
                max_poll_interval_ms: i64::MAX / 4,
            },
            clock.now_ms(),
        );
        let retry_backoff = Duration::from_millis(config.retry_backoff_ms);
        let coordinator = Arc::new(Coordinator::new(
            cluster,
            membership,
            clock,
            None,
            Duration::from_millis(config.request_timeout_ms),
            Duration::from_millis(config.rebalance_timeout_ms),
            retry_backoff,
            Duration::from_millis(config.request_timeout_ms),
            // Members that are not consumers fetch no offsets.
            false,
        ));
        let heartbeat = coordinator::spawn_heartbeat(coordinator.clone());
        ClassicGroupMember { coordinator, heartbeat, retry_backoff }
    }

    /// Joins (or rejoins) and syncs, retrying until a generation completes. `protocols` are
    /// `(name, metadata)` in preference order; `assign` runs on the leader and returns
    /// `(member id, assignment)` for every member.
    pub async fn rebalance<F>(&self, protocols: Vec<(String, Bytes)>, mut assign: F) -> Result<Rebalanced>
    where
        F: FnMut(&JoinedGroup) -> Vec<(String, Bytes)>,
    {
        let group_id = self.coordinator.group_id.clone();
        loop {
            let outcome = match self.coordinator.join(protocols.clone()).await {
                Ok(o) => o,
                Err(e) if e.is_retriable() => {
                    debug!(group = %group_id, error = %e, "join failed, retrying");
                    tokio::time::sleep(self.retry_backoff).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (protocol, members) = match outcome {
                JoinOutcome::Joined { protocol, members, .. } => (protocol, members),
                JoinOutcome::RetryNow => continue,
                JoinOutcome::RetryLater => {
                    tokio::time::sleep(self.retry_backoff).await;
                    continue;
                }
                JoinOutcome::CoordinatorLost => {
                    self.coordinator.mark_unknown().await;
                    tokio::time::sleep(self.retry_backoff).await;
                    continue;
                }
                JoinOutcome::Fatal(code) => {
                    return Err(Error::broker(code, format!("JoinGroup of group {group_id}")));
                }
            };
            let joined = {
                let m = self.coordinator.lock();
                JoinedGroup {
                    generation_id: m.generation_id(),
                    member_id: m.member_id().to_owned(),
                    leader_id: m.leader_id().unwrap_or_default().to_owned(),
                    protocol,
                    members: members.into_iter().map(|m| (m.member_id, m.metadata)).collect(),
                }
            };
            let assignments = if joined.is_leader() { assign(&joined) } else { Vec::new() };
            let outcome = match self.coordinator.sync(assignments).await {
                Ok(o) => o,
                Err(e) if e.is_retriable() => continue,
                Err(e) => return Err(e),
            };
            match outcome {
                SyncOutcome::Assigned(assignment) => return Ok(Rebalanced { joined, assignment }),
                SyncOutcome::Rejoin => continue,
                SyncOutcome::CoordinatorLost => self.coordinator.mark_unknown().await,
                SyncOutcome::Fatal(code) => {
                    return Err(Error::broker(code, format!("SyncGroup of group {group_id}")));
                }
            }
        }
    }

    /// Whether the group must be rejoined (a rebalance started, or this member was fenced).
    pub fn rejoin_needed(&self) -> bool {
        self.coordinator.lock().needs_join()
    }

    /// Resolves when the heartbeat task finds a rejoin is needed.
    /// Also resolves, asking for a rejoin, once no heartbeat has succeeded for the session
    /// timeout: the coordinator has then dropped this member and handed its work to others, so
    /// the caller must stop that work before anything else (a Connect worker must not keep
    /// running tasks that now run elsewhere).
    pub async fn rejoin_requested(&self) {
        loop {
            if self.rejoin_needed() {
                return;
            }
            let now_ms = self.coordinator.clock.now_ms();
            if self.coordinator.lock().session_expired(now_ms) {
                self.request_rejoin("no successful heartbeat within session.timeout.ms");
                return;
            }
            let notified = self.coordinator.rejoin_notify.notified();
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Asks for a rebalance on the next [`ClassicGroupMember::rebalance`] (e.g. the
    /// member's metadata changed).
    pub fn request_rejoin(&self, reason: &str) {
        self.coordinator.lock().request_rejoin(reason.to_owned());
        self.coordinator.rejoin_notify.notify_one();
    }

    /// The current generation and member id.
    pub fn generation(&self) -> (i32, String) {
        let m = self.coordinator.lock();
        (m.generation_id(), m.member_id().to_owned())
    }

    /// Leaves the group (LeaveGroup), so the others rebalance without waiting for the session
    /// timeout.
    pub async fn leave(&self, reason: &str) {
        self.coordinator.leave(reason).await;
    }
}

impl Drop for ClassicGroupMember {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

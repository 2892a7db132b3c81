//! The async shell around [`Membership`]: finds the group coordinator (FindCoordinator),
//! sends what the state machine builds over a connection of its own, runs the heartbeat task,
//! and commits and fetches offsets.
//!
//! The coordinator gets its own connection rather than the pooled one of its broker because a
//! JoinGroup may be held by the broker for up to the rebalance timeout, and that connection's
//! request timeout must cover it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::group::{HeartbeatOutcome, JoinOutcome, Membership, SyncOutcome};
use super::offsets::{self, CommitFailure, Committer, OffsetAndMetadata};
use crate::connection::{Connection, ConnectionConfig};
use crate::error::{Error, Result};
use crate::metadata::{Cluster, TopicPartition};
use crate::protocol::messages::{
    FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatResponse, JoinGroupResponse, LeaveGroupResponse,
    OffsetCommitResponse, OffsetFetchResponse, SyncGroupResponse,
};
use crate::protocol::{str_bytes, ApiKey, ErrorCode};

/// Milliseconds on a monotonic clock that starts with the consumer; what the sans-IO parts
/// take as `now_ms`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock(tokio::time::Instant);

impl Clock {
    pub fn new() -> Self {
        Clock(tokio::time::Instant::now())
    }

    pub fn now_ms(&self) -> i64 {
        self.0.elapsed().as_millis() as i64
    }
}

pub(crate) struct Coordinator {
    cluster: Cluster,
    pub group_id: String,
    pub group_instance_id: Option<String>,
    connection_config: ConnectionConfig,
    conn: tokio::sync::Mutex<Option<Connection>>,
    pub membership: Mutex<Membership>,
    pub clock: Clock,
    /// Woken when the heartbeat task finds the group must be rejoined, so a waiting poll
    /// returns to rejoin.
    pub rejoin_notify: Notify,
    request_timeout: Duration,
    retry_backoff: Duration,
    /// How long a blocking call (commit_sync, committed) keeps retrying.
    api_timeout: Duration,
    /// OffsetFetch's `require_stable` (KIP-447): a read_committed consumer waits for offsets a
    /// transaction is committing rather than starting from the previous ones and reprocessing.
    require_stable: bool,
}

impl Coordinator {
    #[expect(clippy::too_many_arguments, reason = "one constructor call, every argument named at the call site")]
    pub fn new(
        cluster: Cluster,
        membership: Membership,
        clock: Clock,
        group_instance_id: Option<String>,
        request_timeout: Duration,
        rebalance_timeout: Duration,
        retry_backoff: Duration,
        api_timeout: Duration,
        require_stable: bool,
    ) -> Self {
        let mut connection_config = cluster.config().connection.clone();
        // A JoinGroup waits up to the rebalance timeout for the other members.
        connection_config.request_timeout = request_timeout.max(rebalance_timeout + Duration::from_secs(5));
        Coordinator {
            cluster,
            group_id: membership.config().group_id.clone(),
            group_instance_id,
            connection_config,
            conn: tokio::sync::Mutex::new(None),
            membership: Mutex::new(membership),
            clock,
            rejoin_notify: Notify::new(),
            request_timeout,
            retry_backoff,
            api_timeout,
            require_stable,
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.membership.lock().expect("membership lock")
    }

    /// The connection to the coordinator, looking it up when unknown.
    pub async fn connection(&self) -> Result<Connection> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let found = self.find_coordinator().await?;
        *conn = Some(found.clone());
        Ok(found)
    }

    /// Forgets the coordinator, so the next call looks it up again.
    pub async fn mark_unknown(&self) {
        if let Some(c) = self.conn.lock().await.take() {
            debug!(group = %self.group_id, peer = c.peer(), "coordinator marked unknown");
        }
    }

    async fn find_coordinator(&self) -> Result<Connection> {
        let deadline = tokio::time::Instant::now() + self.api_timeout;
        loop {
            let result = self.find_coordinator_once().await;
            match result {
                Ok(conn) => return Ok(conn),
                Err(e) if e.is_retriable() && tokio::time::Instant::now() + self.retry_backoff < deadline => {
                    debug!(group = %self.group_id, error = %e, "coordinator lookup failed, retrying");
                    tokio::time::sleep(self.retry_backoff).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn find_coordinator_once(&self) -> Result<Connection> {
        let any = self.cluster.any_broker().await?;
        let version = any.version(ApiKey::FindCoordinator)?;
        let request = if version >= 4 {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![str_bytes(self.group_id.as_str())])
        } else {
            FindCoordinatorRequest::default().with_key(str_bytes(self.group_id.as_str()))
        };
        let response: FindCoordinatorResponse = match any.send(ApiKey::FindCoordinator, version, &request).await {
            Ok(r) => r,
            Err(e) => {
                // Ask another broker next time: this one may be down.
                self.cluster.report_failure(&any);
                return Err(e);
            }
        };
        let (code, host, port, node_id) = if version >= 4 {
            let c = response.coordinators.first().ok_or_else(|| Error::Protocol {
                peer: any.peer().to_string(),
                source: crate::error::ProtocolError::malformed("FindCoordinator response", "no coordinator listed"),
            })?;
            (ErrorCode(c.error_code), c.host.to_string(), c.port, c.node_id.0)
        } else {
            (ErrorCode(response.error_code), response.host.to_string(), response.port, response.node_id.0)
        };
        if !code.is_ok() {
            return Err(Error::broker(code, format!("FindCoordinator for group {}", self.group_id)));
        }
        let addr = format!("{host}:{port}");
        let conn = Connection::connect(&addr, &self.connection_config).await?;
        info!(group = %self.group_id, coordinator = node_id, %addr, "found group coordinator");
        Ok(conn)
    }

    /// One JoinGroup round trip.
    pub async fn join(&self, protocols: Vec<(String, Bytes)>) -> Result<JoinOutcome> {
        let conn = self.connection().await?;
        let version = conn.version(ApiKey::JoinGroup)?;
        let request = self.lock().join_request(version, protocols);
        match conn.send::<_, JoinGroupResponse>(ApiKey::JoinGroup, version, &request).await {
            Ok(response) => Ok(self.lock().on_join_response(&response)),
            Err(e) => {
                self.lock().request_rejoin("join failed");
                self.mark_unknown().await;
                Err(e)
            }
        }
    }

    /// One SyncGroup round trip.
    pub async fn sync(&self, assignments: Vec<(String, Bytes)>) -> Result<SyncOutcome> {
        let conn = self.connection().await?;
        let version = conn.version(ApiKey::SyncGroup)?;
        let request = self.lock().sync_request(version, assignments);
        match conn.send::<_, SyncGroupResponse>(ApiKey::SyncGroup, version, &request).await {
            Ok(response) => {
                let now_ms = self.clock.now_ms();
                Ok(self.lock().on_sync_response(&response, now_ms))
            }
            Err(e) => {
                self.lock().request_rejoin("sync failed");
                self.mark_unknown().await;
                Err(e)
            }
        }
    }

    /// Sends LeaveGroup when the membership calls for one (a dynamic member in the group).
    pub async fn leave(&self, reason: &str) {
        let conn = { self.conn.lock().await.clone() };
        let Some(conn) = conn.filter(|c| !c.is_closed()) else {
            self.lock().leave_request(0, reason);
            return;
        };
        let Ok(version) = conn.version(ApiKey::LeaveGroup) else { return };
        let Some(request) = self.lock().leave_request(version, reason) else { return };
        let sent = tokio::time::timeout(
            self.request_timeout,
            conn.send::<_, LeaveGroupResponse>(ApiKey::LeaveGroup, version, &request),
        );
        match sent.await {
            Ok(Ok(r)) if ErrorCode(r.error_code).is_ok() => info!(group = %self.group_id, reason, "left the group"),
            Ok(Ok(r)) => debug!(group = %self.group_id, error = %ErrorCode(r.error_code), "leave group failed"),
            Ok(Err(e)) => debug!(group = %self.group_id, error = %e, "leave group failed"),
            Err(_) => debug!(group = %self.group_id, "leave group timed out"),
        }
    }

    /// Commits `offsets`, retrying coordinator moves and loading until the API timeout.
    pub async fn commit(&self, offsets: &BTreeMap<TopicPartition, OffsetAndMetadata>) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.api_timeout;
        loop {
            let error = match self.commit_once(offsets).await {
                Ok(()) => return Ok(()),
                Err((e, CommitFailure::CoordinatorLost)) => {
                    self.mark_unknown().await;
                    e
                }
                Err((e, CommitFailure::Retriable)) => e,
                Err((e, CommitFailure::Fenced { reset_member_id })) => {
                    self.lock().reset_generation("offset commit found the member fenced", reset_member_id);
                    self.rejoin_notify.notify_one();
                    return Err(e);
                }
                Err((e, CommitFailure::Rebalancing)) => {
                    self.lock().request_rejoin("offset commit found the group rebalancing");
                    self.rejoin_notify.notify_one();
                    return Err(e);
                }
                Err((e, CommitFailure::Fatal)) => return Err(e),
            };
            if tokio::time::Instant::now() + self.retry_backoff >= deadline {
                return Err(error);
            }
            debug!(group = %self.group_id, error = %error, "offset commit failed, retrying");
            tokio::time::sleep(self.retry_backoff).await;
        }
    }

    async fn commit_once(
        &self,
        offsets: &BTreeMap<TopicPartition, OffsetAndMetadata>,
    ) -> std::result::Result<(), (Error, CommitFailure)> {
        let classify = |e: Error| {
            let failure = if e.is_retriable() { CommitFailure::CoordinatorLost } else { CommitFailure::Fatal };
            (e, failure)
        };
        let conn = self.connection().await.map_err(classify)?;
        let version = conn.version(ApiKey::OffsetCommit).map_err(classify)?;
        let (generation_id, member_id) = self.lock().commit_generation().unwrap_or((-1, String::new()));
        let who = Committer {
            group_id: &self.group_id,
            generation_id,
            member_id: &member_id,
            group_instance_id: self.group_instance_id.as_deref(),
        };
        let request = offsets::commit_request(version, &who, offsets);
        let send = conn.send::<_, OffsetCommitResponse>(ApiKey::OffsetCommit, version, &request);
        let response = tokio::time::timeout(self.request_timeout, send)
            .await
            .map_err(|_| {
                let e = Error::Timeout {
                    peer: conn.peer().to_string(),
                    timeout_ms: self.request_timeout.as_millis() as u64,
                };
                (e, CommitFailure::CoordinatorLost)
            })?
            .map_err(classify)?;
        offsets::commit_result(&self.group_id, &response)
    }

    /// The committed offsets of `partitions` (`None` where the group has none).
    pub async fn fetch_committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<OffsetAndMetadata>>> {
        self.fetch_committed_until(partitions, tokio::time::Instant::now() + self.api_timeout).await
    }

    /// [`Coordinator::fetch_committed`], retrying retriable answers (UNSTABLE_OFFSET_COMMIT
    /// included) only until `deadline`.
    pub async fn fetch_committed_until(
        &self,
        partitions: &[TopicPartition],
        deadline: tokio::time::Instant,
    ) -> Result<BTreeMap<TopicPartition, Option<OffsetAndMetadata>>> {
        if partitions.is_empty() {
            return Ok(BTreeMap::new());
        }
        loop {
            let conn = self.connection().await?;
            let version = conn.version(ApiKey::OffsetFetch)?;
            let request = offsets::fetch_request(version, &self.group_id, partitions, self.require_stable);
            let error = match conn.send::<_, OffsetFetchResponse>(ApiKey::OffsetFetch, version, &request).await {
                Ok(response) => match offsets::fetch_result(version, &self.group_id, &response) {
                    Ok(found) => return Ok(found),
                    Err(code) => {
                        let error = Error::broker(code, format!("offset fetch for group {}", self.group_id));
                        match offsets::fetch_retry(code) {
                            Some(true) => self.mark_unknown().await,
                            Some(false) => {}
                            None => return Err(error),
                        }
                        error
                    }
                },
                Err(e) if e.is_retriable() => {
                    self.mark_unknown().await;
                    e
                }
                Err(e) => return Err(e),
            };
            if tokio::time::Instant::now() + self.retry_backoff >= deadline {
                return Err(error);
            }
            tokio::time::sleep(self.retry_backoff).await;
        }
    }
}

/// The heartbeat task: sends heartbeats while the member is stable, leaves the group when the
/// application stops polling for `max.poll.interval.ms`, and looks the coordinator up again
/// when heartbeats stop succeeding. It never calls the application: what it learns goes into
/// the membership, and the next `poll` acts on it.
pub(crate) fn spawn_heartbeat(coordinator: Arc<Coordinator>) -> tokio::task::AbortHandle {
    let task = tokio::spawn(async move {
        loop {
            let now_ms = coordinator.clock.now_ms();
            let (poll_expired, session_expired, wait_ms) = {
                let m = coordinator.lock();
                (m.poll_timeout_expired(now_ms), m.session_expired(now_ms), m.time_to_next_heartbeat(now_ms))
            };
            if poll_expired {
                warn!(group = %coordinator.group_id, "max.poll.interval.ms passed without a poll; leaving the group");
                coordinator.leave("consumer poll timeout has expired").await;
                coordinator.lock().reset_generation("consumer poll timeout has expired", false);
                continue;
            }
            if session_expired {
                // The coordinator may have moved: look it up again, keep heartbeating.
                coordinator.mark_unknown().await;
            }
            match wait_ms {
                Some(0) => send_heartbeat(&coordinator).await,
                Some(ms) => tokio::time::sleep(Duration::from_millis(ms.min(1_000) as u64)).await,
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    task.abort_handle()
}

async fn send_heartbeat(coordinator: &Coordinator) {
    let conn = match coordinator.connection().await {
        Ok(c) => c,
        Err(e) => {
            debug!(group = %coordinator.group_id, error = %e, "no coordinator for heartbeat");
            tokio::time::sleep(coordinator.retry_backoff).await;
            return;
        }
    };
    let Ok(version) = conn.version(ApiKey::Heartbeat) else { return };
    let request = {
        let now_ms = coordinator.clock.now_ms();
        match coordinator.lock().heartbeat_request(version, now_ms) {
            Some(r) => r,
            None => return,
        }
    };
    let send = conn.send::<_, HeartbeatResponse>(ApiKey::Heartbeat, version, &request);
    let code = match tokio::time::timeout(coordinator.request_timeout, send).await {
        Ok(Ok(response)) => ErrorCode(response.error_code),
        Ok(Err(e)) => {
            debug!(group = %coordinator.group_id, error = %e, "heartbeat failed");
            coordinator.lock().on_heartbeat_failed();
            coordinator.mark_unknown().await;
            return;
        }
        Err(_) => {
            coordinator.lock().on_heartbeat_failed();
            coordinator.mark_unknown().await;
            return;
        }
    };
    let now_ms = coordinator.clock.now_ms();
    let outcome = coordinator.lock().on_heartbeat_response(code, now_ms);
    match outcome {
        HeartbeatOutcome::Ok | HeartbeatOutcome::Ignored => {}
        HeartbeatOutcome::Rejoin | HeartbeatOutcome::Lost | HeartbeatOutcome::Fatal(_) => {
            info!(group = %coordinator.group_id, error = %code, "heartbeat asks to rejoin the group");
            coordinator.rejoin_notify.notify_one();
        }
        HeartbeatOutcome::CoordinatorLost => coordinator.mark_unknown().await,
    }
}

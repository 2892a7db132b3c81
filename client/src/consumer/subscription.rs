//! The consumer as a group member: subscriptions, the rebalance listener, the rebalance
//! itself (run from `poll`, as the Java client does, so listeners run on the caller's task
//! and may commit), and offset commits.
//!
//! Eager rebalancing (range, round-robin): before rejoining, every partition is revoked; the
//! new assignment is then assigned whole. Cooperative rebalancing (KIP-429, when every
//! configured assignor supports it): the member keeps its partitions through the rebalance,
//! and afterwards revokes only those no longer assigned; when it revoked any it rejoins at
//! once, so the assignor can give them to their new owner in a second rebalance.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use regex::Regex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::assignor::{self, Assignor, GroupMember, RebalanceProtocol, Subscription, NO_GENERATION};
use super::coordinator::{self, Clock, Coordinator};
use super::group::{JoinOutcome, JoinedMember, Membership, MembershipConfig, SyncOutcome};
use super::offsets::OffsetAndMetadata;
use super::{Consumer, ConsumerConfig, ConsumerGroupMetadata, IsolationLevel, State};
use crate::error::{Error, Result};
use crate::metadata::{Cluster, TopicPartition};

/// What a listener method returns: boxed so the trait can be used as `dyn`.
pub type ListenerFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Told when the group moves partitions to or from this consumer (Kafka's
/// `ConsumerRebalanceListener`). Methods run inside `poll`, on the caller's task, and may call
/// the consumer (`commit_sync`, `position`, `seek`, `committed`), but not `poll`.
pub trait RebalanceListener: Send + Sync {
    /// Partitions are about to go to another member: the last chance to commit their
    /// positions. Eager rebalancing revokes everything before each rebalance; cooperative
    /// rebalancing only what moves, after the rebalance.
    fn on_partitions_revoked<'a>(
        &'a self,
        consumer: &'a Consumer,
        partitions: &'a [TopicPartition],
    ) -> ListenerFuture<'a> {
        let _ = (consumer, partitions);
        Box::pin(std::future::ready(()))
    }

    /// Partitions newly assigned (all of the assignment after an eager rebalance, only the
    /// additions after a cooperative one; called after every rebalance, possibly empty).
    /// Positions start at the committed offsets unless sought here.
    fn on_partitions_assigned<'a>(
        &'a self,
        consumer: &'a Consumer,
        partitions: &'a [TopicPartition],
    ) -> ListenerFuture<'a> {
        let _ = (consumer, partitions);
        Box::pin(std::future::ready(()))
    }

    /// Partitions already owned by another member (this one was fenced out of the group, e.g.
    /// after missing its session timeout): committing them would fail. Defaults to
    /// `on_partitions_revoked`.
    fn on_partitions_lost<'a>(
        &'a self,
        consumer: &'a Consumer,
        partitions: &'a [TopicPartition],
    ) -> ListenerFuture<'a> {
        self.on_partitions_revoked(consumer, partitions)
    }
}

/// What the consumer reads.
#[derive(Debug, Clone)]
enum Subscribed {
    Nothing,
    /// `assign`ed partitions.
    Manual,
    Topics(BTreeSet<String>),
    Pattern {
        pattern: Regex,
        matched: BTreeSet<String>,
    },
}

impl Subscribed {
    fn topics(&self) -> Option<&BTreeSet<String>> {
        match self {
            Subscribed::Topics(t) | Subscribed::Pattern { matched: t, .. } => Some(t),
            Subscribed::Nothing | Subscribed::Manual => None,
        }
    }
}

type CommitCallback = Box<dyn FnOnce(&BTreeMap<TopicPartition, OffsetAndMetadata>, Result<()>) + Send>;

enum CommitDone {
    Wait(oneshot::Sender<Result<()>>),
    Callback(CommitCallback),
    /// Auto-commit: failures are logged.
    Log,
}

struct CommitJob {
    offsets: BTreeMap<TopicPartition, OffsetAndMetadata>,
    done: CommitDone,
}

/// State of the rebalance loop (held while rebalancing).
#[derive(Default)]
struct RebalanceState {
    next_metadata_check_ms: i64,
    /// Partition counts the last assignment was computed from, when this member led it.
    leader_partition_counts: BTreeMap<String, i32>,
}

/// Everything a consumer with a `group.id` has.
pub(crate) struct GroupContext {
    coordinator: Arc<Coordinator>,
    heartbeat: AbortHandle,
    /// Commits go through one task in order, so a later commit never lands before an earlier
    /// one and moves the committed offset backwards.
    commits: mpsc::UnboundedSender<CommitJob>,
    commit_worker: AbortHandle,
    assignors: Vec<Assignor>,
    custom_assignor: Option<Arc<dyn assignor::PartitionAssignor>>,
    protocol: RebalanceProtocol,
    subscription: Mutex<Subscribed>,
    listener: Mutex<Option<Arc<dyn RebalanceListener>>>,
    rebalance: tokio::sync::Mutex<RebalanceState>,
    next_auto_commit_ms: AtomicI64,
}

impl GroupContext {
    pub(crate) fn new(cluster: &Cluster, config: &ConsumerConfig) -> Option<GroupContext> {
        let group_id = config.group_id.clone()?;
        let clock = Clock::new();
        let membership = Membership::new(
            MembershipConfig {
                group_id,
                protocol_type: assignor::CONSUMER_PROTOCOL_TYPE.to_owned(),
                group_instance_id: config.group_instance_id.clone(),
                session_timeout_ms: config.session_timeout_ms as i32,
                rebalance_timeout_ms: config.max_poll_interval_ms as i32,
                heartbeat_interval_ms: config.heartbeat_interval_ms as i64,
                max_poll_interval_ms: config.max_poll_interval_ms as i64,
            },
            clock.now_ms(),
        );
        let coordinator = Arc::new(Coordinator::new(
            cluster.clone(),
            membership,
            clock,
            config.group_instance_id.clone(),
            Duration::from_millis(config.request_timeout_ms),
            Duration::from_millis(config.max_poll_interval_ms),
            Duration::from_millis(config.retry_backoff_ms),
            Duration::from_millis(config.default_api_timeout_ms),
            config.isolation_level == IsolationLevel::ReadCommitted,
        ));
        let heartbeat = coordinator::spawn_heartbeat(coordinator.clone());
        let (commits, mut jobs) = mpsc::unbounded_channel::<CommitJob>();
        let worker_coordinator = coordinator.clone();
        let commit_worker = tokio::spawn(async move {
            while let Some(job) = jobs.recv().await {
                let result = worker_coordinator.commit(&job.offsets).await;
                match job.done {
                    CommitDone::Wait(tx) => {
                        let _ = tx.send(result);
                    }
                    CommitDone::Callback(callback) => callback(&job.offsets, result),
                    CommitDone::Log => {
                        if let Err(e) = result {
                            warn!(group = %worker_coordinator.group_id, error = %e, "auto-commit failed");
                        }
                    }
                }
            }
        })
        .abort_handle();
        let assignors = config.partition_assignment_strategy.clone();
        Some(GroupContext {
            coordinator,
            heartbeat,
            commits,
            commit_worker,
            protocol: if config.custom_assignor.is_some() {
                RebalanceProtocol::Eager
            } else {
                assignor::rebalance_protocol(&assignors)
            },
            assignors,
            custom_assignor: config.custom_assignor.clone(),
            subscription: Mutex::new(Subscribed::Nothing),
            listener: Mutex::new(None),
            rebalance: tokio::sync::Mutex::new(RebalanceState::default()),
            next_auto_commit_ms: AtomicI64::new(config.auto_commit_interval_ms as i64),
        })
    }

    pub(crate) fn stop_tasks(&self) {
        self.heartbeat.abort();
        self.commit_worker.abort();
    }

    fn subscribed(&self) -> Subscribed {
        self.subscription.lock().expect("subscription lock").clone()
    }

    fn listener(&self) -> Option<Arc<dyn RebalanceListener>> {
        self.listener.lock().expect("listener lock").clone()
    }

    async fn commit(&self, offsets: BTreeMap<TopicPartition, OffsetAndMetadata>) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commits
            .send(CommitJob { offsets, done: CommitDone::Wait(tx) })
            .map_err(|_| Error::Config("the consumer is closed".into()))?;
        rx.await.map_err(|_| Error::Config("the consumer is closed".into()))?
    }
}

impl Consumer {
    fn group_or_err(&self, what: &str) -> Result<&GroupContext> {
        self.group.as_ref().ok_or_else(|| Error::Config(format!("{what} needs a group.id")))
    }

    /// Joins the group (on the next `poll`) reading `topics`. Replaces an earlier
    /// subscription; cannot be combined with `assign`.
    pub async fn subscribe(&self, topics: &[&str]) -> Result<()> {
        self.subscribe_topics(topics, None).await
    }

    /// [`Consumer::subscribe`], telling `listener` about every change of assignment.
    pub async fn subscribe_with_listener(&self, topics: &[&str], listener: Arc<dyn RebalanceListener>) -> Result<()> {
        self.subscribe_topics(topics, Some(listener)).await
    }

    async fn subscribe_topics(&self, topics: &[&str], listener: Option<Arc<dyn RebalanceListener>>) -> Result<()> {
        if topics.is_empty() {
            return self.unsubscribe().await;
        }
        if let Some(t) = topics.iter().find(|t| t.trim().is_empty()) {
            return Err(Error::Config(format!("topic name '{t}' is empty")));
        }
        let topics: BTreeSet<String> = topics.iter().map(|t| t.to_string()).collect();
        self.set_subscription(Subscribed::Topics(topics), listener)
    }

    /// Joins the group reading every topic whose whole name matches `pattern` (a regular
    /// expression, as the Java client's `subscribe(Pattern)`), checking for new matches every
    /// `metadata_max_age_ms`. Internal topics are not matched.
    pub async fn subscribe_pattern(&self, pattern: &str) -> Result<()> {
        self.subscribe_pattern_inner(pattern, None).await
    }

    /// [`Consumer::subscribe_pattern`] with a listener.
    pub async fn subscribe_pattern_with_listener(
        &self,
        pattern: &str,
        listener: Arc<dyn RebalanceListener>,
    ) -> Result<()> {
        self.subscribe_pattern_inner(pattern, Some(listener)).await
    }

    async fn subscribe_pattern_inner(&self, pattern: &str, listener: Option<Arc<dyn RebalanceListener>>) -> Result<()> {
        let regex = Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|e| Error::Config(format!("topic pattern '{pattern}' is invalid: {e}")))?;
        self.group_or_err("subscribe_pattern")?;
        let matched = self.matching_topics(&regex).await?;
        self.set_subscription(Subscribed::Pattern { pattern: regex, matched }, listener)
    }

    async fn matching_topics(&self, regex: &Regex) -> Result<BTreeSet<String>> {
        let metadata = self.cluster.refresh_all_topics().await?;
        Ok(metadata
            .topics
            .values()
            .filter(|t| !t.is_internal && regex.is_match(&t.name))
            .map(|t| t.name.clone())
            .collect())
    }

    fn set_subscription(&self, new: Subscribed, listener: Option<Arc<dyn RebalanceListener>>) -> Result<()> {
        let g = self.group_or_err("subscribe")?;
        let mut current = g.subscription.lock().expect("subscription lock");
        if matches!(*current, Subscribed::Manual) {
            return Err(Error::Config(
                "subscribe cannot be combined with assign: assign an empty list or unsubscribe first".into(),
            ));
        }
        let changed = current.topics() != new.topics();
        *current = new;
        *g.listener.lock().expect("listener lock") = listener;
        if changed {
            g.coordinator.lock().request_rejoin("subscription changed");
        }
        Ok(())
    }

    /// The subscribed topics (for a pattern, those it matches now), sorted.
    pub fn subscription(&self) -> Vec<String> {
        self.group
            .as_ref()
            .and_then(|g| g.subscribed().topics().map(|t| t.iter().cloned().collect()))
            .unwrap_or_default()
    }

    /// Marks manual assignment (`assign`), refusing it while subscribed.
    pub(super) fn check_manual_assignment(&self, non_empty: bool) -> Result<()> {
        let Some(g) = &self.group else { return Ok(()) };
        let mut current = g.subscription.lock().expect("subscription lock");
        if current.topics().is_some() {
            return Err(Error::Config("assign cannot be combined with subscribe: unsubscribe first".into()));
        }
        *current = if non_empty { Subscribed::Manual } else { Subscribed::Nothing };
        Ok(())
    }

    /// Stops reading the subscribed topics: commits (with auto-commit), revokes the
    /// partitions through the listener, and leaves the group.
    pub async fn unsubscribe(&self) -> Result<()> {
        let Some(g) = &self.group else {
            self.replace_assignment(Vec::new()).await;
            return Ok(());
        };
        let subscribed = g.subscribed();
        let result =
            if subscribed.topics().is_some() { self.leave_group(g, "the consumer unsubscribed").await } else { Ok(()) };
        *g.subscription.lock().expect("subscription lock") = Subscribed::Nothing;
        self.replace_assignment(Vec::new()).await;
        result
    }

    /// Commits, revokes (or loses) the assignment and leaves the group.
    async fn leave_group(&self, g: &GroupContext, reason: &str) -> Result<()> {
        let _rebalance = g.rebalance.lock().await;
        let fenced = g.coordinator.lock().take_fenced();
        let in_group = g.coordinator.lock().commit_generation().is_some();
        let mut result = Ok(());
        if self.config.enable_auto_commit && in_group && !fenced {
            result = g.commit(self.consumed_offsets().await).await;
        }
        let owned = self.assignment().await;
        if !owned.is_empty() {
            if let Some(listener) = g.listener() {
                if fenced || !in_group {
                    listener.on_partitions_lost(self, &owned).await;
                } else {
                    listener.on_partitions_revoked(self, &owned).await;
                }
            }
        }
        self.replace_assignment(Vec::new()).await;
        g.coordinator.leave(reason).await;
        result
    }

    /// Commits (with auto-commit), leaves the group (dynamic members), and stops the
    /// background tasks. The consumer reads nothing after this.
    pub async fn close(&self) -> Result<()> {
        let Some(g) = &self.group else { return Ok(()) };
        let result = match g.subscribed() {
            Subscribed::Topics(_) | Subscribed::Pattern { .. } => self.leave_group(g, "the consumer is closing").await,
            Subscribed::Manual if self.config.enable_auto_commit => g.commit(self.consumed_offsets().await).await,
            _ => Ok(()),
        };
        *g.subscription.lock().expect("subscription lock") = Subscribed::Nothing;
        self.replace_assignment(Vec::new()).await;
        g.stop_tasks();
        result
    }

    /// The positions of every assigned partition that has one: what the application has
    /// been handed by `poll` so far.
    async fn consumed_offsets(&self) -> BTreeMap<TopicPartition, OffsetAndMetadata> {
        let state = self.state.lock().await;
        state
            .assignment
            .iter()
            .filter_map(|(tp, ps)| ps.position.map(|p| (tp.clone(), OffsetAndMetadata::new(p))))
            .collect()
    }

    /// Commits `offsets` (each the next offset to read), or the positions of all assigned
    /// partitions when `None`, and waits for the answer. Fails with the broker's
    /// REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION or UNKNOWN_MEMBER_ID code when the group
    /// rebalanced under this member (the partitions may belong to another member now).
    pub async fn commit_sync(&self, offsets: Option<BTreeMap<TopicPartition, OffsetAndMetadata>>) -> Result<()> {
        let g = self.group_or_err("commit_sync")?;
        let offsets = match offsets {
            Some(o) => o,
            None => self.consumed_offsets().await,
        };
        g.commit(offsets).await
    }

    /// Sends a commit (as [`Consumer::commit_sync`]) without waiting; `callback` gets the
    /// offsets and the result, on a background task. Commits reach the broker in call order.
    pub async fn commit_async<F>(
        &self,
        offsets: Option<BTreeMap<TopicPartition, OffsetAndMetadata>>,
        callback: F,
    ) -> Result<()>
    where
        F: FnOnce(&BTreeMap<TopicPartition, OffsetAndMetadata>, Result<()>) + Send + 'static,
    {
        let g = self.group_or_err("commit_async")?;
        let offsets = match offsets {
            Some(o) => o,
            None => self.consumed_offsets().await,
        };
        g.commits
            .send(CommitJob { offsets, done: CommitDone::Callback(Box::new(callback)) })
            .map_err(|_| Error::Config("the consumer is closed".into()))
    }

    /// This member's group, generation and member id, for
    /// [`crate::Producer::send_offsets_to_transaction`]: the group accepts the offsets only
    /// from its current generation (KIP-447), so a consumer that was fenced out of the group
    /// cannot commit a transaction's offsets over its successor's. Needs a `group.id`; the
    /// generation is -1 while the consumer has not joined.
    pub fn group_metadata(&self) -> Result<ConsumerGroupMetadata> {
        let coordinator = &self.group_or_err("group_metadata")?.coordinator;
        let membership = coordinator.lock();
        Ok(ConsumerGroupMetadata {
            group_id: coordinator.group_id.clone(),
            generation_id: membership.generation_id(),
            member_id: membership.member_id().to_string(),
            group_instance_id: coordinator.group_instance_id.clone(),
        })
    }

    /// The group's committed offsets of `partitions` (`None` where it has none).
    pub async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<OffsetAndMetadata>>> {
        self.group_or_err("committed")?.coordinator.fetch_committed(partitions).await
    }

    /// Seeks newly assigned partitions to the group's committed offsets (once each); those
    /// without one are left to `auto.offset.reset`. Returns false when the coordinator still
    /// answered UNSTABLE_OFFSET_COMMIT at `deadline` (a transaction is committing offsets of
    /// these partitions, KIP-447): their positions stay unknown and the next poll asks again,
    /// so a poll never waits past its timeout for another producer's transaction.
    pub(super) async fn seek_to_committed(&self, state: &mut State, deadline: tokio::time::Instant) -> Result<bool> {
        let Some(g) = &self.group else { return Ok(true) };
        let wanted: Vec<TopicPartition> = state
            .assignment
            .iter()
            .filter(|(_, ps)| ps.position.is_none() && ps.reset.is_none() && !ps.committed_checked)
            .map(|(tp, _)| tp.clone())
            .collect();
        if wanted.is_empty() {
            return Ok(true);
        }
        let found = match g.coordinator.fetch_committed_until(&wanted, deadline).await {
            Ok(found) => found,
            Err(e) if e.code() == Some(crate::protocol::ErrorCode::UNSTABLE_OFFSET_COMMIT) => return Ok(false),
            Err(e) => return Err(e),
        };
        for tp in wanted {
            let Some(ps) = state.assignment.get_mut(&tp) else { continue };
            ps.committed_checked = true;
            if let Some(Some(committed)) = found.get(&tp) {
                debug!(%tp, offset = committed.offset, "starting at the committed offset");
                ps.seek(committed.offset);
            }
        }
        Ok(true)
    }

    /// Whether `poll` must stop fetching and rejoin the group.
    pub(super) fn group_needs_rejoin(&self) -> bool {
        self.group.as_ref().is_some_and(|g| g.subscribed().topics().is_some() && g.coordinator.lock().needs_join())
    }

    /// Resolves when the heartbeat task asks for a rejoin (never without a group).
    pub(super) async fn rejoin_requested(&self) {
        match &self.group {
            Some(g) => g.coordinator.rejoin_notify.notified().await,
            None => std::future::pending().await,
        }
    }

    /// The group part of `poll`: auto-commit, subscription checks, and the rebalance.
    pub(super) async fn poll_group(&self) -> Result<()> {
        let Some(g) = &self.group else { return Ok(()) };
        let now_ms = g.coordinator.clock.now_ms();
        g.coordinator.lock().on_poll(now_ms);
        let subscribed = g.subscribed();
        if matches!(subscribed, Subscribed::Nothing) {
            return Ok(());
        }
        let in_group = subscribed.topics().is_none() || !g.coordinator.lock().needs_join();
        if self.config.enable_auto_commit && in_group && now_ms >= g.next_auto_commit_ms.load(Ordering::Relaxed) {
            g.next_auto_commit_ms.store(now_ms + self.config.auto_commit_interval_ms as i64, Ordering::Relaxed);
            let offsets = self.consumed_offsets().await;
            if !offsets.is_empty() {
                let _ = g.commits.send(CommitJob { offsets, done: CommitDone::Log });
            }
        }
        if subscribed.topics().is_none() {
            return Ok(());
        }
        self.check_metadata(g, now_ms).await;
        self.rebalance_if_needed(g).await
    }

    /// Every `metadata_max_age_ms`: a pattern may match new topics, and (as leader) a
    /// subscribed topic may have gained partitions; either calls for a rebalance.
    async fn check_metadata(&self, g: &GroupContext, now_ms: i64) {
        let mut rebalance = g.rebalance.lock().await;
        if now_ms < rebalance.next_metadata_check_ms {
            return;
        }
        rebalance.next_metadata_check_ms = now_ms + self.config.metadata_max_age_ms as i64;
        if let Subscribed::Pattern { pattern, matched } = g.subscribed() {
            match self.matching_topics(&pattern).await {
                Ok(now) if now != matched => {
                    info!(group = %g.coordinator.group_id, topics = ?now, "pattern subscription matches new topics");
                    let mut current = g.subscription.lock().expect("subscription lock");
                    if let Subscribed::Pattern { matched, .. } = &mut *current {
                        *matched = now;
                    }
                    g.coordinator.lock().request_rejoin("subscribed topics changed");
                }
                Ok(_) => {}
                Err(e) => debug!(error = %e, "pattern subscription metadata refresh failed"),
            }
        }
        if g.coordinator.lock().is_leader() && !rebalance.leader_partition_counts.is_empty() {
            let topics: Vec<&str> = rebalance.leader_partition_counts.keys().map(String::as_str).collect();
            if let Ok(metadata) = self.cluster.refresh_topics(&topics).await {
                let changed = rebalance
                    .leader_partition_counts
                    .iter()
                    .any(|(t, n)| metadata.topics.get(t).map(|m| m.partitions.len() as i32) != Some(*n));
                if changed {
                    g.coordinator.lock().request_rejoin("partition count of a subscribed topic changed");
                }
            }
        }
    }

    /// Joins and syncs until the member is stable (or a non-retriable error), running the
    /// listener around the change of assignment.
    async fn rebalance_if_needed(&self, g: &GroupContext) -> Result<()> {
        let mut rebalance = g.rebalance.lock().await;
        let mut prepared = false;
        loop {
            let (needs_join, fatal) = {
                let m = g.coordinator.lock();
                (m.needs_join(), m.fatal())
            };
            if let Some(code) = fatal {
                return Err(Error::broker(code, format!("membership of group {}", g.coordinator.group_id)));
            }
            if !needs_join {
                return Ok(());
            }
            if g.coordinator.lock().take_fenced() {
                // Fenced out: the partitions already belong to someone else.
                let owned = self.assignment().await;
                if !owned.is_empty() {
                    warn!(group = %g.coordinator.group_id, partitions = owned.len(), "partitions lost");
                    if let Some(listener) = g.listener() {
                        listener.on_partitions_lost(self, &owned).await;
                    }
                    self.replace_assignment(Vec::new()).await;
                }
            }
            if !prepared {
                self.prepare_rejoin(g).await;
                prepared = true;
            }
            let protocols = self.join_protocols(g).await;
            let outcome = match g.coordinator.join(protocols).await {
                Ok(o) => o,
                Err(e) if e.is_retriable() => {
                    debug!(group = %g.coordinator.group_id, error = %e, "join failed, retrying");
                    tokio::time::sleep(Duration::from_millis(self.config.retry_backoff_ms)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (leader, protocol, members) = match outcome {
                JoinOutcome::Joined { leader, protocol, members } => (leader, protocol, members),
                JoinOutcome::RetryNow => continue,
                JoinOutcome::RetryLater => {
                    tokio::time::sleep(Duration::from_millis(self.config.retry_backoff_ms)).await;
                    continue;
                }
                JoinOutcome::CoordinatorLost => {
                    g.coordinator.mark_unknown().await;
                    continue;
                }
                JoinOutcome::Fatal(code) => {
                    return Err(Error::broker(code, format!("JoinGroup of group {}", g.coordinator.group_id)));
                }
            };
            let assignments = if leader {
                match self.assign_as_leader(g, &mut rebalance, &protocol, &members).await {
                    Ok(a) => a,
                    Err(e) => {
                        g.coordinator.lock().request_rejoin("assignment failed");
                        return Err(e);
                    }
                }
            } else {
                rebalance.leader_partition_counts.clear();
                Vec::new()
            };
            let outcome = match g.coordinator.sync(assignments).await {
                Ok(o) => o,
                Err(e) if e.is_retriable() => continue,
                Err(e) => return Err(e),
            };
            match outcome {
                SyncOutcome::Assigned(bytes) => {
                    let assignment = match assignor::decode_assignment(&bytes) {
                        Ok(a) => a,
                        Err(source) => {
                            g.coordinator.lock().request_rejoin("undecodable assignment");
                            return Err(Error::Protocol {
                                peer: format!("group {} leader", g.coordinator.group_id),
                                source,
                            });
                        }
                    };
                    self.complete_rebalance(g, assignment.partitions).await;
                    // A cooperative revocation asked for another round; loop to do it.
                    prepared = false;
                }
                SyncOutcome::Rejoin => continue,
                SyncOutcome::CoordinatorLost => g.coordinator.mark_unknown().await,
                SyncOutcome::Fatal(code) => {
                    return Err(Error::broker(code, format!("SyncGroup of group {}", g.coordinator.group_id)));
                }
            }
        }
    }

    /// Before JoinGroup (Java's `onJoinPrepare`): commit what was consumed, then revoke all
    /// partitions (eager) or those of topics no longer subscribed (cooperative).
    async fn prepare_rejoin(&self, g: &GroupContext) {
        let owned = self.assignment().await;
        if owned.is_empty() {
            return;
        }
        let in_group = g.coordinator.lock().commit_generation().is_some();
        if self.config.enable_auto_commit && in_group {
            if let Err(e) = g.commit(self.consumed_offsets().await).await {
                warn!(group = %g.coordinator.group_id, error = %e, "commit before rebalance failed");
            }
        }
        let revoked: Vec<TopicPartition> = match g.protocol {
            RebalanceProtocol::Eager => owned.clone(),
            RebalanceProtocol::Cooperative => {
                let topics = g.subscribed().topics().cloned().unwrap_or_default();
                owned.iter().filter(|tp| !topics.contains(&tp.topic)).cloned().collect()
            }
        };
        if revoked.is_empty() {
            return;
        }
        if let Some(listener) = g.listener() {
            listener.on_partitions_revoked(self, &revoked).await;
        }
        let kept: Vec<TopicPartition> = owned.into_iter().filter(|tp| !revoked.contains(tp)).collect();
        self.replace_assignment(kept).await;
    }

    /// The JoinGroup protocols: one subscription per configured assignor, in preference order.
    async fn join_protocols(&self, g: &GroupContext) -> Vec<(String, bytes::Bytes)> {
        let topics: Vec<String> = g.subscribed().topics().map(|t| t.iter().cloned().collect()).unwrap_or_default();
        let owned = self.assignment().await;
        let generation_id = g.coordinator.lock().commit_generation().map_or(NO_GENERATION, |(gen, _)| gen);
        if let Some(custom) = &g.custom_assignor {
            let subscription = Subscription {
                topics,
                user_data: custom.subscription_user_data(),
                owned_partitions: owned,
                generation_id,
                rack_id: None,
            };
            return vec![(custom.name().to_string(), assignor::encode_subscription(&subscription))];
        }
        g.assignors
            .iter()
            .map(|a| {
                let subscription = Subscription {
                    topics: topics.clone(),
                    user_data: a.subscription_user_data(generation_id),
                    owned_partitions: owned.clone(),
                    generation_id,
                    rack_id: None,
                };
                (a.name().to_string(), assignor::encode_subscription(&subscription))
            })
            .collect()
    }

    /// The leader's part: decode every member's subscription, look up the partition counts
    /// and run the chosen assignor.
    async fn assign_as_leader(
        &self,
        g: &GroupContext,
        rebalance: &mut RebalanceState,
        protocol: &str,
        members: &[JoinedMember],
    ) -> Result<Vec<(String, bytes::Bytes)>> {
        let custom = g.custom_assignor.as_ref().filter(|c| c.name() == protocol);
        let builtin = match custom {
            Some(_) => None,
            None => Some(Assignor::from_str(protocol).map_err(Error::Config)?),
        };
        let mut group_members = Vec::with_capacity(members.len());
        for m in members {
            let subscription = match assignor::decode_subscription(&m.metadata) {
                Ok(s) => s,
                Err(e) => {
                    // One member's bad metadata must not stall the group: it gets nothing.
                    warn!(member = %m.member_id, error = %e, "undecodable subscription");
                    Subscription::default()
                }
            };
            group_members.push(GroupMember {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                subscription,
            });
        }
        let topics: BTreeSet<&str> =
            group_members.iter().flat_map(|m| m.subscription.topics.iter().map(String::as_str)).collect();
        let topic_list: Vec<&str> = topics.into_iter().collect();
        let metadata = self.cluster.refresh_topics(&topic_list).await?;
        let counts: BTreeMap<String, i32> = topic_list
            .iter()
            .filter_map(|t| {
                let m = metadata.topics.get(*t)?;
                (m.error.is_ok() && !m.partitions.is_empty()).then(|| (t.to_string(), m.partitions.len() as i32))
            })
            .collect();
        let (assignment, assignor_name) = match (custom, builtin) {
            (Some(c), _) => (c.assign(&counts, &group_members), c.name().to_string()),
            (None, Some(a)) => (a.assign(&counts, &group_members), a.name().to_string()),
            (None, None) => return Err(Error::Config(format!("no assignor for protocol {protocol}"))),
        };
        info!(
            group = %g.coordinator.group_id,
            assignor = %assignor_name,
            members = group_members.len(),
            partitions = counts.values().sum::<i32>(),
            "computed the group's assignment as leader"
        );
        rebalance.leader_partition_counts =
            topic_list.iter().map(|t| (t.to_string(), counts.get(*t).copied().unwrap_or(0))).collect();
        Ok(assignment
            .into_iter()
            .map(|(member, partitions)| {
                (member, assignor::encode_assignment(&assignor::Assignment { partitions, user_data: None }))
            })
            .collect())
    }

    /// After SyncGroup (Java's `onJoinComplete`): revoke what moved away (cooperative), take
    /// the new assignment, tell the listener what was added.
    async fn complete_rebalance(&self, g: &GroupContext, assigned: Vec<TopicPartition>) {
        let assigned: BTreeSet<TopicPartition> = assigned.into_iter().collect();
        let owned: BTreeSet<TopicPartition> = self.assignment().await.into_iter().collect();
        let revoked: Vec<TopicPartition> = owned.difference(&assigned).cloned().collect();
        let added: Vec<TopicPartition> = assigned.difference(&owned).cloned().collect();
        let listener = g.listener();
        if !revoked.is_empty() {
            if let Some(l) = &listener {
                l.on_partitions_revoked(self, &revoked).await;
            }
            if g.protocol == RebalanceProtocol::Cooperative {
                // The partitions given up can now go to their new owner in one more round.
                g.coordinator.lock().request_rejoin("revoked partitions after a cooperative rebalance");
            }
        }
        info!(
            group = %g.coordinator.group_id,
            generation = g.coordinator.lock().generation_id(),
            assigned = assigned.len(),
            added = added.len(),
            revoked = revoked.len(),
            "joined the group"
        );
        self.replace_assignment(assigned).await;
        if let Some(l) = &listener {
            l.on_partitions_assigned(self, &added).await;
        }
    }
}

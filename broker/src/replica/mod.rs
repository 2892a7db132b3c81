//! Data replication (Kafka's ReplicaManager): turns the partition states of each metadata
//! image into local roles, runs the fetchers that copy leaders' logs to followers, and has
//! leaders propose ISR changes to the controller.
//!
//! - [`ReplicaManager::apply`] (after every image change): this node leads a partition →
//!   [`Partition::make_leader`]; follows → [`Partition::make_follower`] and hand it to the
//!   fetcher for its leader ([`fetcher`], one task per leader broker), which truncates the
//!   divergent suffix (OffsetForLeaderEpoch) before fetching in a new epoch.
//! - A ticker (every `replica.lag.time.max.ms / 2`) proposes dropping lagging followers from
//!   the ISR; followers that caught up are proposed for the ISR on their fetch
//!   ([`Partition::record_follower_fetch`]). Proposals go out as
//!   [`ControllerRequest::AlterPartition`] on the channel the broker drains into the
//!   controller; the answer is the next image.

pub mod fetcher;
pub mod isr;
pub mod throttle;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::config::FlushMode;
use crate::controller::types::{ControllerRequest, MetadataImage, NO_LEADER};
use crate::partition::{Partition, TopicPartition};
use fetcher::{FetchState, FetcherShared};
use throttle::ByteBudget;

/// The broker-wide budget of throttled replica fetches (`follower.replication.throttled.rate`).
pub type SharedBudget = Arc<Mutex<ByteBudget>>;

/// Called after a follower append, so the flusher syncs it (as produce does).
pub type MarkDirty = Arc<dyn Fn(&Arc<Partition>) + Send + Sync>;

/// Replication settings, by their Kafka config names (the broker fills them from its config).
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// `node.id` of this broker; sent as `replica_id` in its fetches.
    pub node_id: i32,
    /// `replica.lag.time.max.ms`: a follower not caught up for this long leaves the ISR.
    pub replica_lag_time_max_ms: i64,
    /// `replica.fetch.wait.max.ms`: how long a replica fetch long-polls on the leader.
    pub replica_fetch_wait_max_ms: i32,
    /// `replica.fetch.max.bytes`: per-partition byte limit of a replica fetch.
    pub replica_fetch_max_bytes: i32,
    /// `replica.fetch.backoff.ms`: pause after a fetch error.
    pub replica_fetch_backoff_ms: u64,
    /// `log.flush.mode`: in fsync mode follower appends go to the flusher.
    pub flush_mode: FlushMode,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            node_id: 1,
            replica_lag_time_max_ms: 10_000,
            replica_fetch_wait_max_ms: 500,
            replica_fetch_max_bytes: 1_048_576,
            replica_fetch_backoff_ms: 200,
            flush_mode: FlushMode::Fsync,
        }
    }
}

/// A partition to follow: where, in which leader epoch, whether leader or epoch changed, and
/// whether a reassignment is adding this replica (then its fetches are throttled).
type Followed = (TopicPartition, Arc<Partition>, i32, bool, bool);

struct FetcherHandle {
    address: String,
    shared: Arc<FetcherShared>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Inner {
    /// Fetchers by leader broker id.
    fetchers: BTreeMap<i32, FetcherHandle>,
    /// Partitions this node leads (for the ISR ticker).
    leading: BTreeMap<TopicPartition, Arc<Partition>>,
    ticker: Option<JoinHandle<()>>,
}

pub struct ReplicaManager {
    config: ReplicaConfig,
    alter_tx: mpsc::UnboundedSender<ControllerRequest>,
    mark_dirty: MarkDirty,
    inner: Mutex<Inner>,
    shutdown: watch::Sender<bool>,
    follower_throttle: SharedBudget,
    leader_throttle: SharedBudget,
}

impl ReplicaManager {
    /// Must be called inside a tokio runtime (it starts the ISR ticker).
    pub fn new(
        config: ReplicaConfig,
        alter_tx: mpsc::UnboundedSender<ControllerRequest>,
        mark_dirty: MarkDirty,
    ) -> Arc<ReplicaManager> {
        let manager = Arc::new(ReplicaManager {
            config,
            alter_tx,
            mark_dirty,
            inner: Mutex::new(Inner::default()),
            shutdown: watch::Sender::new(false),
            follower_throttle: SharedBudget::default(),
            leader_throttle: SharedBudget::default(),
        });
        let ticker = tokio::spawn(tick_loop(Arc::downgrade(&manager), manager.shutdown.subscribe()));
        manager.lock().ticker = Some(ticker);
        manager
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `leader.replication.throttled.rate` (a dynamic broker config): bytes per second this
    /// leader sends to followers that reassignments are adding, together; `None` lifts it.
    pub fn set_leader_throttle_rate(&self, rate_bytes_per_s: Option<u64>) {
        let mut budget = self.leader_throttle.lock().unwrap_or_else(|e| e.into_inner());
        if budget.rate_bytes_per_s() != rate_bytes_per_s {
            budget.set_rate(rate_bytes_per_s, crate::broker::now_ms());
        }
    }

    /// The leader-side budget while `leader.replication.throttled.rate` is set, for the fetch
    /// handler (`None`: unthrottled, so follower fetches skip the metadata lookup).
    pub fn leader_throttle(&self) -> Option<SharedBudget> {
        let throttled = self.leader_throttle.lock().unwrap_or_else(|e| e.into_inner()).rate_bytes_per_s().is_some();
        throttled.then(|| self.leader_throttle.clone())
    }

    /// `follower.replication.throttled.rate` (a dynamic broker config): bytes per second that
    /// replicas being added by reassignments may fetch, together; `None` lifts it.
    pub fn set_follower_throttle_rate(&self, rate_bytes_per_s: Option<u64>) {
        let mut budget = self.follower_throttle.lock().unwrap_or_else(|e| e.into_inner());
        if budget.rate_bytes_per_s() != rate_bytes_per_s {
            budget.set_rate(rate_bytes_per_s, crate::broker::now_ms());
            drop(budget);
            // Fetchers waiting for budget re-plan under the new rate.
            for handle in self.lock().fetchers.values() {
                handle.shared.changed.notify_one();
            }
        }
    }

    /// Applies `image` to every local replica: `local(topic, partition)` returns the opened
    /// partition (the broker opens those whose replicas include this node before calling).
    /// Partitions this node no longer replicates stop being fetched.
    pub fn apply(&self, image: &MetadataImage, local: &dyn Fn(&str, i32) -> Option<Arc<Partition>>) {
        let node_id = self.config.node_id;
        let now = crate::broker::now_ms();
        let mut inner = self.lock();
        let mut following: BTreeMap<i32, Vec<Followed>> = BTreeMap::new();
        let mut leading = BTreeMap::new();
        for (topic, t) in &image.topics {
            // Parsed at most once per topic, and only for topics this node follows.
            let mut throttles: Option<throttle::TopicThrottles> = None;
            for (index, p) in t.partitions.iter().enumerate() {
                if !p.replicas.contains(&node_id) {
                    continue;
                }
                let index = index as i32;
                let Some(partition) = local(topic, index) else {
                    continue;
                };
                let tp = TopicPartition { topic: topic.clone(), partition: index };
                if p.leader == node_id {
                    if let Err(err) = partition.make_leader(p, Some(self.alter_tx.clone()), now) {
                        warn!(partition = %tp, error = %err, "becoming leader failed");
                        continue;
                    }
                    leading.insert(tp, partition);
                } else {
                    let changed = partition.make_follower(p);
                    if p.leader != NO_LEADER {
                        let throttles = throttles.get_or_insert_with(|| throttle::TopicThrottles::of(&t.configs));
                        let throttled = throttle::follower_throttled(throttles, p, index, node_id);
                        following.entry(p.leader).or_default().push((
                            tp,
                            partition,
                            p.leader_epoch,
                            changed,
                            throttled,
                        ));
                    }
                }
            }
        }
        inner.leading = leading;

        // Fetchers: drop partitions that moved away, (re)start per leader, add/resume ours.
        let wanted: BTreeMap<i32, BTreeSet<TopicPartition>> = following
            .iter()
            .map(|(&leader, list)| (leader, list.iter().map(|(tp, ..)| tp.clone()).collect()))
            .collect();
        let mut stopped = Vec::new();
        for (&leader, handle) in inner.fetchers.iter() {
            let keep = wanted.get(&leader);
            handle.shared.lock().retain(|tp, _| keep.is_some_and(|k| k.contains(tp)));
            let address = image.brokers.get(&leader).map(|b| format!("{}:{}", b.host, b.port));
            if keep.is_none() || address.as_deref() != Some(handle.address.as_str()) {
                stopped.push(leader);
            }
        }
        for leader in stopped {
            if let Some(handle) = inner.fetchers.remove(&leader) {
                handle.task.abort();
            }
        }
        for (leader, list) in following {
            let Some(broker) = image.brokers.get(&leader) else {
                warn!(leader, "leader is not a registered broker; not fetching");
                continue;
            };
            let handle = inner.fetchers.entry(leader).or_insert_with(|| {
                let address = format!("{}:{}", broker.host, broker.port);
                let shared = Arc::new(FetcherShared::default());
                let task = tokio::spawn(fetcher::run(
                    leader,
                    address.clone(),
                    self.config.clone(),
                    shared.clone(),
                    self.mark_dirty.clone(),
                    self.follower_throttle.clone(),
                    self.shutdown.subscribe(),
                ));
                FetcherHandle { address, shared, task }
            });
            {
                let mut partitions = handle.shared.lock();
                for (tp, partition, leader_epoch, changed, throttled) in list {
                    match partitions.get_mut(&tp) {
                        Some(state)
                            if !changed
                                && state.leader_epoch == leader_epoch
                                && Arc::ptr_eq(&state.partition, &partition) =>
                        {
                            // Same leader and epoch: a new image may be what a paused
                            // partition waited for.
                            state.paused = false;
                            state.throttled = throttled;
                        }
                        _ => {
                            let mut state = FetchState::new(partition, leader_epoch);
                            state.throttled = throttled;
                            partitions.insert(tp, state);
                        }
                    }
                }
            }
            handle.shared.changed.notify_one();
        }
    }

    /// One ISR check over the partitions this node leads (the ticker calls it every
    /// `replica.lag.time.max.ms / 2`; exposed for tests and tools).
    pub fn maybe_shrink_isr(&self, now_ms: i64) {
        let leading: Vec<Arc<Partition>> = self.lock().leading.values().cloned().collect();
        for partition in leading {
            partition.maybe_shrink_isr(now_ms, self.config.replica_lag_time_max_ms);
        }
    }

    /// Stops the fetchers and the ticker. Appends are synchronous between awaits, so aborting
    /// a fetcher never leaves a partial write.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
        let mut inner = self.lock();
        for (_, handle) in std::mem::take(&mut inner.fetchers) {
            handle.task.abort();
        }
        inner.leading.clear();
        if let Some(ticker) = inner.ticker.take() {
            ticker.abort();
        }
    }
}

async fn tick_loop(manager: Weak<ReplicaManager>, mut shutdown: watch::Receiver<bool>) {
    let period = match manager.upgrade() {
        Some(m) => Duration::from_millis((m.config.replica_lag_time_max_ms / 2).max(1) as u64),
        None => return,
    };
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        let Some(manager) = manager.upgrade() else {
            return;
        };
        manager.maybe_shrink_isr(crate::broker::now_ms());
    }
}

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;

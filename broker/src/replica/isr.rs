//! Sans-IO decisions a partition leader makes about its followers: the high watermark, and
//! which replicas leave (lagging for `replica.lag.time.max.ms`) or join (caught up) the ISR.
//! Time is passed in; nothing here touches the log or the network.

use std::collections::BTreeMap;

/// What the leader knows of one follower, from its fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerState {
    /// The follower's log end offset: the offset of its latest fetch; -1 until it fetches in
    /// this leader epoch.
    pub log_end_offset: i64,
    /// The follower's log start offset as its latest fetch reported it (-1 until then);
    /// DeleteRecords waits for the in-sync followers to reach the new start.
    pub log_start_offset: i64,
    /// Last time the follower was known to have everything the leader had (Kafka's
    /// `lastCaughtUpTimeMs`).
    pub last_caught_up_ms: i64,
    last_fetch_ms: i64,
    /// The leader's log end offset at the follower's previous fetch.
    last_fetch_leader_log_end_offset: i64,
}

impl FollowerState {
    /// A follower as a new leader first sees it: one in the ISR counts as caught up now, so
    /// it gets a full `replica.lag.time.max.ms` to fetch before it can be dropped.
    pub fn new(in_isr: bool, now_ms: i64) -> FollowerState {
        FollowerState {
            log_end_offset: -1,
            log_start_offset: -1,
            last_caught_up_ms: if in_isr { now_ms } else { 0 },
            last_fetch_ms: 0,
            last_fetch_leader_log_end_offset: -1,
        }
    }

    /// A fetch from `fetch_offset` while the leader's log ended at `leader_log_end_offset`.
    /// Kafka's rule: reaching the leader's end now means caught up now; reaching where the
    /// leader ended at the previous fetch means caught up as of that previous fetch (so a
    /// follower chasing a steady produce stream is not dropped for never quite arriving).
    pub fn record_fetch(&mut self, fetch_offset: i64, leader_log_end_offset: i64, now_ms: i64) {
        if fetch_offset >= leader_log_end_offset {
            self.last_caught_up_ms = self.last_caught_up_ms.max(now_ms);
        } else if fetch_offset >= self.last_fetch_leader_log_end_offset {
            self.last_caught_up_ms = self.last_caught_up_ms.max(self.last_fetch_ms);
        }
        self.log_end_offset = fetch_offset;
        self.last_fetch_leader_log_end_offset = leader_log_end_offset;
        self.last_fetch_ms = now_ms;
    }
}

/// The high watermark the ISR allows: the minimum over `isr` of the leader's own offset
/// (`leader_offset`: durable offset in fsync mode, log end offset in page-cache mode) for
/// `local_id` and each follower's log end offset, never below `current` (it only moves up)
/// and never above `leader_offset`. A member with no state (or no fetch yet) holds it where
/// it is.
pub fn high_watermark(
    current: i64,
    leader_offset: i64,
    local_id: i32,
    isr: &[i32],
    followers: &BTreeMap<i32, FollowerState>,
) -> i64 {
    let mut candidate = leader_offset;
    for &id in isr.iter().filter(|&&id| id != local_id) {
        let offset = followers.get(&id).map_or(-1, |f| f.log_end_offset);
        candidate = candidate.min(offset);
    }
    current.max(candidate)
}

/// ISR members to drop: followers that have not been caught up to the leader's log end for
/// more than `replica_lag_time_max_ms`. A follower at the leader's log end is never dropped.
pub fn out_of_sync_replicas(
    isr: &[i32],
    local_id: i32,
    followers: &BTreeMap<i32, FollowerState>,
    leader_log_end_offset: i64,
    now_ms: i64,
    replica_lag_time_max_ms: i64,
) -> Vec<i32> {
    isr.iter()
        .copied()
        .filter(|&id| id != local_id)
        .filter(|id| match followers.get(id) {
            Some(f) => {
                f.log_end_offset != leader_log_end_offset
                    && now_ms.saturating_sub(f.last_caught_up_ms) > replica_lag_time_max_ms
            }
            // An ISR member that is not even a replica any more.
            None => true,
        })
        .collect()
}

/// Whether a follower outside the ISR may join it (Kafka's rule): it has everything up to the
/// high watermark and has fetched into the current leader epoch (at or past the offset where
/// this leader's epoch starts), so it holds no divergent suffix from an older epoch.
pub fn can_join_isr(follower: &FollowerState, high_watermark: i64, leader_epoch_start_offset: i64) -> bool {
    follower.log_end_offset >= 0
        && follower.log_end_offset >= high_watermark
        && follower.log_end_offset >= leader_epoch_start_offset
}

#[cfg(test)]
mod tests {
    use super::*;

    fn followers(entries: &[(i32, FollowerState)]) -> BTreeMap<i32, FollowerState> {
        entries.iter().copied().collect()
    }

    fn at(log_end_offset: i64, last_caught_up_ms: i64) -> FollowerState {
        FollowerState { log_end_offset, last_caught_up_ms, ..FollowerState::new(true, 0) }
    }

    #[test]
    fn high_watermark_is_the_isr_minimum_and_monotone() {
        let f = followers(&[(2, at(7, 0)), (3, at(4, 0))]);
        assert_eq!(high_watermark(0, 10, 1, &[1], &f), 10, "ISR of the leader alone");
        assert_eq!(high_watermark(0, 10, 1, &[1, 2], &f), 7);
        assert_eq!(high_watermark(0, 10, 1, &[1, 2, 3], &f), 4);
        assert_eq!(high_watermark(5, 10, 1, &[1, 2, 3], &f), 5, "never moves back");
        assert_eq!(high_watermark(0, 3, 1, &[1, 2], &f), 3, "never past the leader's own offset");
        // A member that has not fetched in this epoch holds the high watermark.
        let fresh = followers(&[(2, FollowerState::new(true, 0))]);
        assert_eq!(high_watermark(6, 10, 1, &[1, 2], &fresh), 6);
        assert_eq!(high_watermark(6, 10, 1, &[1, 9], &fresh), 6, "unknown member");
    }

    #[test]
    fn caught_up_time_follows_kafkas_rule() {
        let mut f = FollowerState::new(false, 0);
        f.record_fetch(5, 10, 100);
        assert_eq!(f.last_caught_up_ms, 0, "behind the leader and no earlier fetch to credit");
        // Reaches where the leader ended at the previous fetch: caught up as of that fetch.
        f.record_fetch(10, 15, 200);
        assert_eq!(f.last_caught_up_ms, 100);
        f.record_fetch(15, 15, 300);
        assert_eq!(f.last_caught_up_ms, 300);
        assert_eq!(f.log_end_offset, 15);
    }

    #[test]
    fn shrink_drops_only_replicas_lagging_longer_than_the_limit() {
        let f = followers(&[(2, at(10, 0)), (3, at(8, 9_500)), (4, at(8, 500))]);
        let isr = [1, 2, 3, 4, 5];
        let out = out_of_sync_replicas(&isr, 1, &f, 10, 11_000, 10_000);
        // 2 is at the leader's end; 3 was caught up 1.5 s ago; 4 lags for 10.5 s; 5 is unknown.
        assert_eq!(out, vec![4, 5]);
        assert_eq!(out_of_sync_replicas(&isr, 1, &f, 10, 10_500, 10_000), vec![5], "4 is exactly at the limit");
    }

    #[test]
    fn expansion_needs_the_high_watermark_and_the_current_epoch() {
        assert!(can_join_isr(&at(10, 0), 10, 8));
        assert!(!can_join_isr(&at(9, 0), 10, 8), "below the high watermark");
        assert!(!can_join_isr(&at(10, 0), 10, 12), "not yet into this leader's epoch");
        assert!(!can_join_isr(&FollowerState::new(false, 0), 0, 0), "never fetched");
    }
}

//! The replication throttle of a reassignment (Kafka's `follower.replication.throttled.rate`): a
//! byte budget refilled at the rate, shared by every fetcher of this broker. Which replicas it
//! applies to is Kafka's `*.replication.throttled.replicas` topic configs where a topic sets them
//! (`kafka-reassign-partitions.sh --throttle` does), else the replicas a reassignment is adding
//! (what `spate reassign --throttle` relies on), so followers already in sync never fall behind
//! because of a move.
//!
//! Sans-IO: the caller passes the time. The balance may go negative (a fetch returns up to
//! `replica.fetch.max.bytes` per partition before we know its size); throttled partitions are
//! left out of fetches until the refill brings it back above zero, so the average rate holds and
//! the overshoot is at most one fetch.

/// Bytes per second, and the budget left (at most one second's worth, so an idle period does not
/// turn into a burst).
use std::collections::BTreeMap;

use crate::controller::PartitionImage;
use crate::topic_config::{ThrottledReplicas, FOLLOWER_THROTTLED_REPLICAS, LEADER_THROTTLED_REPLICAS};

#[derive(Debug, Default, Clone)]
pub struct ByteBudget {
    rate_bytes_per_s: Option<u64>,
    balance_bytes: i64,
    last_ms: i64,
}

impl ByteBudget {
    /// `None` lifts the throttle.
    pub fn set_rate(&mut self, rate_bytes_per_s: Option<u64>, now_ms: i64) {
        if self.rate_bytes_per_s == rate_bytes_per_s {
            return;
        }
        self.refill(now_ms);
        self.rate_bytes_per_s = rate_bytes_per_s.filter(|r| *r > 0);
        self.balance_bytes = match self.rate_bytes_per_s {
            // A new rate starts with a second's budget less any debt (itself at most a second's).
            Some(rate) => self.balance_bytes.clamp(-burst(rate), 0).saturating_add(burst(rate)),
            None => 0,
        };
    }

    pub fn rate_bytes_per_s(&self) -> Option<u64> {
        self.rate_bytes_per_s
    }

    fn refill(&mut self, now_ms: i64) {
        if let Some(rate) = self.rate_bytes_per_s {
            let elapsed_ms = (now_ms - self.last_ms).max(0);
            let earned = i64::try_from(u128::from(rate) * elapsed_ms as u128 / 1000).unwrap_or(i64::MAX);
            self.balance_bytes = self.balance_bytes.saturating_add(earned).min(burst(rate));
        }
        self.last_ms = now_ms;
    }

    /// Whether throttled replicas may fetch now.
    pub fn allows(&mut self, now_ms: i64) -> bool {
        if self.rate_bytes_per_s.is_none() {
            return true;
        }
        self.refill(now_ms);
        self.balance_bytes > 0
    }

    /// Counts bytes a throttled replica fetched.
    pub fn record(&mut self, bytes: u64, now_ms: i64) {
        if self.rate_bytes_per_s.is_some() {
            self.refill(now_ms);
            self.balance_bytes = self.balance_bytes.saturating_sub(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// Milliseconds until [`ByteBudget::allows`] turns true (0 when it is).
    pub fn wait_ms(&mut self, now_ms: i64) -> i64 {
        if self.allows(now_ms) {
            return 0;
        }
        match self.rate_bytes_per_s {
            Some(rate) => {
                let missing = u128::try_from(1 - self.balance_bytes).unwrap_or(1);
                i64::try_from((missing * 1000).div_ceil(u128::from(rate))).unwrap_or(i64::MAX).max(1)
            }
            None => 0,
        }
    }
}

/// A topic's two throttled-replica lists, parsed once (per image apply or per fetch request).
#[derive(Debug, Clone, Default)]
pub struct TopicThrottles {
    leader: Option<ThrottledReplicas>,
    follower: Option<ThrottledReplicas>,
}

impl TopicThrottles {
    pub fn of(configs: &BTreeMap<String, String>) -> TopicThrottles {
        TopicThrottles {
            leader: ThrottledReplicas::of_topic(configs, LEADER_THROTTLED_REPLICAS),
            follower: ThrottledReplicas::of_topic(configs, FOLLOWER_THROTTLED_REPLICAS),
        }
    }
}

/// Follower side: whether `broker`'s fetches of `partition` (index `index`) count against its
/// follower budget. As in Kafka, a replica in the ISR never is.
pub fn follower_throttled(throttles: &TopicThrottles, partition: &PartitionImage, index: i32, broker: i32) -> bool {
    throttled(throttles.follower.as_ref(), partition, index, broker, broker)
}

/// Leader side: whether fetches of `partition` by `follower` from this leader (`leader`) count
/// against its leader budget. As in Kafka, a listed replica's follower is throttled only while it
/// is out of sync.
pub fn leader_throttled(
    throttles: &TopicThrottles,
    partition: &PartitionImage,
    index: i32,
    leader: i32,
    follower: i32,
) -> bool {
    throttled(throttles.leader.as_ref(), partition, index, leader, follower)
}

/// `follower`'s replication of `partition` is throttled: never while it is in sync; else when
/// `listed` names (`index`, `listed_broker`), or, with no list set, while a reassignment adds it.
fn throttled(
    listed: Option<&ThrottledReplicas>,
    partition: &PartitionImage,
    index: i32,
    listed_broker: i32,
    follower: i32,
) -> bool {
    !partition.isr.contains(&follower)
        && match listed {
            Some(listed) => listed.contains(index, listed_broker),
            None => partition.adding_replicas.contains(&follower),
        }
}

fn burst(rate_bytes_per_s: u64) -> i64 {
    i64::try_from(rate_bytes_per_s).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_replicas_are_throttled() {
        let p = PartitionImage {
            replicas: vec![1, 2, 3],
            isr: vec![1, 2],
            leader: 1,
            adding_replicas: vec![3],
            ..PartitionImage::default()
        };
        let none = TopicThrottles::of(&BTreeMap::new());
        // Unset: the replica being added, on both sides.
        assert!(follower_throttled(&none, &p, 0, 3) && !follower_throttled(&none, &p, 0, 2));
        assert!(leader_throttled(&none, &p, 0, 1, 3) && !leader_throttled(&none, &p, 0, 1, 2));
        // Kafka's topic configs, as kafka-reassign-partitions.sh sets them.
        let set = |leader: &str, follower: &str| {
            TopicThrottles::of(&BTreeMap::from([
                (LEADER_THROTTLED_REPLICAS.to_string(), leader.to_string()),
                (FOLLOWER_THROTTLED_REPLICAS.to_string(), follower.to_string()),
            ]))
        };
        let listed = set("0:1,0:2", "0:3");
        assert!(follower_throttled(&listed, &p, 0, 3) && !follower_throttled(&listed, &p, 1, 3));
        assert!(leader_throttled(&listed, &p, 0, 1, 3), "out of sync and the leader is listed");
        assert!(!leader_throttled(&listed, &p, 0, 1, 2), "in sync: never throttled");
        assert!(!leader_throttled(&set("0:2", ""), &p, 0, 1, 3), "this leader is not listed");
        let all = set("*", "*");
        assert!(follower_throttled(&all, &p, 5, 3) && leader_throttled(&all, &p, 5, 1, 3));
        assert!(!follower_throttled(&all, &p, 5, 2), "in sync: never throttled");
        // Set but empty: nothing, not even the replica being added.
        assert!(!follower_throttled(&set("", ""), &p, 0, 3) && !leader_throttled(&set("", ""), &p, 0, 1, 3));
    }

    #[test]
    fn unthrottled_always_allows() {
        let mut b = ByteBudget::default();
        b.record(u64::MAX, 0);
        assert!(b.allows(0));
        assert_eq!(b.wait_ms(0), 0);
    }

    #[test]
    fn the_average_rate_holds_with_one_fetch_of_overshoot() {
        let mut b = ByteBudget::default();
        b.set_rate(Some(1_000_000), 0);
        let mut fetched = 0u64;
        let mut now = 0i64;
        // Fetches of 300 kB whenever allowed, for 10 simulated seconds.
        while now < 10_000 {
            if b.allows(now) {
                b.record(300_000, now);
                fetched += 300_000;
            } else {
                now += b.wait_ms(now);
                continue;
            }
            now += 1;
        }
        // One second of burst, ten of refill, one fetch of overshoot.
        assert!(fetched <= 11_000_000 + 300_000, "{fetched}");
        assert!(fetched >= 10_000_000, "{fetched}");
    }

    #[test]
    fn wait_is_the_time_to_pay_the_debt_and_lifting_forgives_it() {
        let mut b = ByteBudget::default();
        b.set_rate(Some(1_000), 0);
        b.record(3_000, 0);
        assert!(!b.allows(0));
        assert_eq!(b.wait_ms(0), 2_001);
        assert!(!b.allows(2_000));
        assert!(b.allows(2_001));
        // Idle time does not pile up beyond one second's budget.
        assert!(b.allows(60_000));
        b.record(1_000, 60_000);
        assert!(!b.allows(60_000));
        b.set_rate(None, 60_000);
        assert!(b.allows(60_000));
        assert_eq!(b.rate_bytes_per_s(), None);
        b.set_rate(Some(0), 60_000);
        assert_eq!(b.rate_bytes_per_s(), None);
    }
}

//! Partition assignors and the consumer protocol they speak inside JoinGroup and SyncGroup.
//!
//! In Kafka's classic group protocol the broker does not assign partitions: it picks one
//! member as leader, hands it every member's subscription (the `metadata` blob of JoinGroup,
//! a `ConsumerProtocolSubscription`), and relays the assignment the leader computes (one
//! `ConsumerProtocolAssignment` blob per member, through SyncGroup). Both blobs start with an
//! `int16` version; a reader decodes a newer version as the newest it knows, because later
//! versions only append fields. Everything here is sans-IO and deterministic, so any member
//! (Spate, the Java client, librdkafka) computes the same assignment from the same input.
//!
//! The assignors are Kafka's:
//! - `range`: per topic, members sorted, each gets a contiguous range; the first
//!   `partitions % members` get one extra.
//! - `roundrobin`: all partitions sorted by topic then partition, dealt round-robin over the
//!   sorted members, skipping members not subscribed to the partition's topic.
//! - `cooperative-sticky`: balanced like round-robin but keeping each member's owned
//!   partitions where balance allows, and (KIP-429) never handing a partition to a new owner in
//!   the same rebalance its previous owner still holds it: the previous owner revokes it and
//!   rejoins, and the next rebalance assigns it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use bytes::{Buf, Bytes, BytesMut};
// The consumer-protocol blobs are header-less messages, which the codec helpers of
// `crate::protocol` (built for request/response frames) do not cover; these two traits are the
// only kafka-protocol names used outside that module.
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::error::ProtocolError;
use crate::metadata::TopicPartition;
use crate::protocol::messages::{consumer_protocol_assignment, consumer_protocol_subscription};
use crate::protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName};
use crate::protocol::str_bytes;

/// JoinGroup's `protocol_type` for consumers.
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";
/// The subscription version this client writes (v3: owned partitions, generation, rack).
pub const SUBSCRIPTION_VERSION: i16 = 3;
/// The assignment version this client writes.
pub const ASSIGNMENT_VERSION: i16 = 3;
/// Generation of a member that has none (Kafka's `DEFAULT_GENERATION`).
pub const NO_GENERATION: i32 = -1;

/// What a member asks for: the decoded `ConsumerProtocolSubscription`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub topics: Vec<String>,
    pub user_data: Option<Bytes>,
    /// The partitions the member holds now (v1+), for sticky and cooperative assignment.
    pub owned_partitions: Vec<TopicPartition>,
    /// The generation in which it got them (v2+), [`NO_GENERATION`] when unknown.
    pub generation_id: i32,
    pub rack_id: Option<String>,
}

impl Default for Subscription {
    fn default() -> Self {
        Subscription {
            topics: Vec::new(),
            user_data: None,
            owned_partitions: Vec::new(),
            generation_id: NO_GENERATION,
            rack_id: None,
        }
    }
}

/// What a member is given: the decoded `ConsumerProtocolAssignment`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assignment {
    pub partitions: Vec<TopicPartition>,
    pub user_data: Option<Bytes>,
}

/// One member as the leader sees it after JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub member_id: String,
    /// `group.instance.id` of a static member (KIP-345).
    pub group_instance_id: Option<String>,
    pub subscription: Subscription,
}

/// An application's own assignor (Kafka's `ConsumerPartitionAssignor`), e.g. Kafka Streams'
/// task assignor: it names its protocol, adds `user_data` to this member's subscription, and,
/// on the leader, assigns partitions knowing every member's subscription. Eager rebalancing.
pub trait PartitionAssignor: Send + Sync + fmt::Debug {
    /// The protocol name sent in JoinGroup; every member of the group must offer it.
    fn name(&self) -> &str;

    /// This member's `user_data` for the next JoinGroup (called at each join).
    fn subscription_user_data(&self) -> Option<Bytes>;

    /// The leader's assignment, as [`Assignor::assign`].
    fn assign(
        &self,
        partitions_per_topic: &BTreeMap<String, i32>,
        members: &[GroupMember],
    ) -> BTreeMap<String, Vec<TopicPartition>>;
}

/// How members hand partitions over during a rebalance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RebalanceProtocol {
    /// Every member revokes everything before rejoining.
    Eager,
    /// Members keep their partitions through the rebalance and revoke only those that move
    /// (KIP-429).
    Cooperative,
}

/// The built-in assignors, by their protocol names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Assignor {
    Range,
    RoundRobin,
    CooperativeSticky,
}

impl Assignor {
    /// The protocol name sent in JoinGroup, the same as every Kafka client's.
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
            Assignor::CooperativeSticky => "cooperative-sticky",
        }
    }

    /// The rebalance protocols it supports.
    pub fn supported_protocols(self) -> &'static [RebalanceProtocol] {
        match self {
            Assignor::Range | Assignor::RoundRobin => &[RebalanceProtocol::Eager],
            Assignor::CooperativeSticky => &[RebalanceProtocol::Eager, RebalanceProtocol::Cooperative],
        }
    }

    /// The `user_data` this assignor puts in a member's subscription. Cooperative-sticky writes
    /// the generation as an `int32`, as the Java client does, for readers of subscription
    /// versions below 2.
    pub fn subscription_user_data(self, generation_id: i32) -> Option<Bytes> {
        match self {
            Assignor::CooperativeSticky => Some(Bytes::copy_from_slice(&generation_id.to_be_bytes())),
            Assignor::Range | Assignor::RoundRobin => None,
        }
    }

    /// Assigns the partitions of `partitions_per_topic` (topic -> partition count) to
    /// `members`. Topics a member subscribes to that are not in `partitions_per_topic` are
    /// skipped. Every member gets an entry, possibly empty; each list is sorted.
    pub fn assign(
        self,
        partitions_per_topic: &BTreeMap<String, i32>,
        members: &[GroupMember],
    ) -> BTreeMap<String, Vec<TopicPartition>> {
        let mut out = match self {
            Assignor::Range => range(partitions_per_topic, members),
            Assignor::RoundRobin => round_robin(partitions_per_topic, members),
            Assignor::CooperativeSticky => cooperative_sticky(partitions_per_topic, members),
        };
        for m in members {
            out.entry(m.member_id.clone()).or_default();
        }
        out.values_mut().for_each(|v| v.sort());
        out
    }
}

impl fmt::Display for Assignor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Assignor {
    type Err = String;
    /// Kafka's protocol names, and the Java class names `partition.assignment.strategy` takes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "range" | "org.apache.kafka.clients.consumer.RangeAssignor" => Ok(Assignor::Range),
            "roundrobin" | "org.apache.kafka.clients.consumer.RoundRobinAssignor" => Ok(Assignor::RoundRobin),
            "cooperative-sticky" | "org.apache.kafka.clients.consumer.CooperativeStickyAssignor" => {
                Ok(Assignor::CooperativeSticky)
            }
            other => Err(format!(
                "unknown partition.assignment.strategy '{other}' (expected range, roundrobin or cooperative-sticky)"
            )),
        }
    }
}

/// The rebalance protocol a consumer with these assignors uses: the highest one all of them
/// support (the Java client's rule, so `[range, cooperative-sticky]` stays eager until `range`
/// is removed, which is Kafka's documented upgrade path to cooperative rebalancing).
pub fn rebalance_protocol(assignors: &[Assignor]) -> RebalanceProtocol {
    let cooperative = !assignors.is_empty()
        && assignors.iter().all(|a| a.supported_protocols().contains(&RebalanceProtocol::Cooperative));
    if cooperative {
        RebalanceProtocol::Cooperative
    } else {
        RebalanceProtocol::Eager
    }
}

/// Kafka's member order: static members by `group.instance.id` first, then the rest by member
/// id. Every member must sort the same way for leaders of any client to agree.
fn sorted_members(members: &[GroupMember]) -> Vec<&GroupMember> {
    let mut sorted: Vec<&GroupMember> = members.iter().collect();
    sorted.sort_by(|a, b| match (&a.group_instance_id, &b.group_instance_id) {
        (Some(x), Some(y)) => x.cmp(y).then_with(|| a.member_id.cmp(&b.member_id)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.member_id.cmp(&b.member_id),
    });
    sorted
}

fn subscribes(member: &GroupMember, topic: &str) -> bool {
    member.subscription.topics.iter().any(|t| t == topic)
}

fn range(
    partitions_per_topic: &BTreeMap<String, i32>,
    members: &[GroupMember],
) -> BTreeMap<String, Vec<TopicPartition>> {
    let sorted = sorted_members(members);
    let mut out: BTreeMap<String, Vec<TopicPartition>> = BTreeMap::new();
    for (topic, &count) in partitions_per_topic {
        let consumers: Vec<&&GroupMember> = sorted.iter().filter(|m| subscribes(m, topic)).collect();
        if consumers.is_empty() || count <= 0 {
            continue;
        }
        let n = consumers.len() as i32;
        let per_consumer = count / n;
        let with_extra = count % n;
        for (i, member) in consumers.iter().enumerate() {
            let i = i as i32;
            let start = per_consumer * i + i.min(with_extra);
            let length = per_consumer + i32::from(i < with_extra);
            out.entry(member.member_id.clone())
                .or_default()
                .extend((start..start + length).map(|p| TopicPartition::new(topic.clone(), p)));
        }
    }
    out
}

fn round_robin(
    partitions_per_topic: &BTreeMap<String, i32>,
    members: &[GroupMember],
) -> BTreeMap<String, Vec<TopicPartition>> {
    let sorted = sorted_members(members);
    let mut out: BTreeMap<String, Vec<TopicPartition>> = BTreeMap::new();
    if sorted.is_empty() {
        return out;
    }
    let subscribed: BTreeSet<&str> =
        members.iter().flat_map(|m| m.subscription.topics.iter().map(String::as_str)).collect();
    let mut next = 0usize;
    for topic in subscribed {
        let Some(&count) = partitions_per_topic.get(topic) else { continue };
        for p in 0..count {
            // Some member subscribes to `topic`, so this finds one within a full turn.
            while !subscribes(sorted[next % sorted.len()], topic) {
                next += 1;
            }
            let member = sorted[next % sorted.len()];
            next += 1;
            out.entry(member.member_id.clone()).or_default().push(TopicPartition::new(topic, p));
        }
    }
    out
}

/// A member's generation: the subscription's (v2+), else cooperative-sticky's `int32` user
/// data, else none.
fn member_generation(s: &Subscription) -> i32 {
    if s.generation_id != NO_GENERATION {
        return s.generation_id;
    }
    match s.user_data.as_deref() {
        Some(mut b) if b.len() == 4 => b.get_i32(),
        _ => NO_GENERATION,
    }
}

fn cooperative_sticky(
    partitions_per_topic: &BTreeMap<String, i32>,
    members: &[GroupMember],
) -> BTreeMap<String, Vec<TopicPartition>> {
    let target = sticky(partitions_per_topic, members);
    // KIP-429: a partition some other member still claims is withheld this round; that member
    // revokes it (it is not in its assignment) and rejoins, and the next rebalance assigns it.
    let mut claimants: BTreeMap<&TopicPartition, BTreeSet<&str>> = BTreeMap::new();
    for m in members {
        for tp in &m.subscription.owned_partitions {
            claimants.entry(tp).or_default().insert(m.member_id.as_str());
        }
    }
    target
        .into_iter()
        .map(|(member, partitions)| {
            let kept = partitions
                .into_iter()
                .filter(|tp| claimants.get(tp).is_none_or(|owners| owners.iter().all(|o| *o == member)))
                .collect();
            (member, kept)
        })
        .collect()
}

/// The sticky assignment (Kafka's `AbstractStickyAssignor` goals): every partition of a
/// subscribed topic goes to one subscribed member; the assignment is balanced (with identical
/// subscriptions, counts differ by at most one; otherwise no member has two more partitions
/// than another member that could take one of them); and as many owned partitions as balance
/// allows stay where they are.
fn sticky(
    partitions_per_topic: &BTreeMap<String, i32>,
    members: &[GroupMember],
) -> BTreeMap<String, Vec<TopicPartition>> {
    let sorted = sorted_members(members);
    let mut out: BTreeMap<String, BTreeSet<TopicPartition>> =
        sorted.iter().map(|m| (m.member_id.clone(), BTreeSet::new())).collect();
    if sorted.is_empty() {
        return BTreeMap::new();
    }
    let eligible =
        |member: &str, tp: &TopicPartition| members.iter().any(|m| m.member_id == member && subscribes(m, &tp.topic));
    let all: Vec<TopicPartition> = partitions_per_topic
        .iter()
        .filter(|(t, _)| members.iter().any(|m| subscribes(m, t)))
        .flat_map(|(t, &n)| (0..n.max(0)).map(move |p| TopicPartition::new(t.clone(), p)))
        .collect();
    let exists = |tp: &TopicPartition| {
        partitions_per_topic.get(&tp.topic).is_some_and(|&n| tp.partition >= 0 && tp.partition < n)
    };

    // The valid previous owner of each partition: the claimant of the highest generation; two
    // claimants of the same generation cancel out (the Java assignor's rule).
    let mut owner: BTreeMap<TopicPartition, Option<(i32, &str)>> = BTreeMap::new();
    for m in &sorted {
        let generation = member_generation(&m.subscription);
        for tp in &m.subscription.owned_partitions {
            if !exists(tp) || !subscribes(m, &tp.topic) {
                continue;
            }
            match owner.get(tp) {
                None => {
                    owner.insert(tp.clone(), Some((generation, m.member_id.as_str())));
                }
                Some(Some((g, _))) if *g < generation => {
                    owner.insert(tp.clone(), Some((generation, m.member_id.as_str())));
                }
                Some(Some((g, _))) if *g == generation => {
                    owner.insert(tp.clone(), None);
                }
                Some(_) => {}
            }
        }
    }
    let mut previously: BTreeMap<&str, Vec<TopicPartition>> = BTreeMap::new();
    for (tp, o) in &owner {
        if let Some((_, m)) = o {
            previously.entry(m).or_default().push(tp.clone());
        }
    }

    // Keep owned partitions up to the quota when subscriptions are identical (so a join moves
    // only the surplus); with differing subscriptions keep them all and let the balancing pass
    // below move what it must.
    let identical = sorted.windows(2).all(|w| {
        let a: BTreeSet<&String> = w[0].subscription.topics.iter().collect();
        let b: BTreeSet<&String> = w[1].subscription.topics.iter().collect();
        a == b
    });
    let total = all.len();
    let n = sorted.len();
    let (min_quota, max_quota) = (total / n, total.div_ceil(n));
    let mut at_max_allowed = total % n;
    for m in &sorted {
        let mut owned = previously.remove(m.member_id.as_str()).unwrap_or_default();
        if identical {
            let keep = if owned.len() >= max_quota && at_max_allowed > 0 {
                at_max_allowed -= 1;
                max_quota
            } else {
                min_quota.min(owned.len())
            };
            owned.truncate(keep);
        }
        out.get_mut(&m.member_id).expect("every member has an entry").extend(owned);
    }

    // Deal out the rest, each to the eligible member with the fewest (first in member order on
    // ties); the partitions fewest members can take go first.
    let assigned: BTreeSet<TopicPartition> = out.values().flatten().cloned().collect();
    let mut unassigned: Vec<&TopicPartition> = all.iter().filter(|tp| !assigned.contains(*tp)).collect();
    let takers = |tp: &TopicPartition| sorted.iter().filter(|m| subscribes(m, &tp.topic)).count();
    unassigned.sort_by_key(|tp| (takers(tp), (*tp).clone()));
    for tp in unassigned {
        let best = sorted
            .iter()
            .filter(|m| subscribes(m, &tp.topic))
            .min_by_key(|m| out[&m.member_id].len())
            .expect("some member subscribes to every listed topic");
        out.get_mut(&best.member_id).expect("entry").insert(tp.clone());
    }

    // Balance: move a partition from a member with two or more than another that can take it,
    // until none can. Each move lowers the sum of squared counts, so this ends.
    loop {
        let mut by_count: Vec<&str> = sorted.iter().map(|m| m.member_id.as_str()).collect();
        by_count.sort_by_key(|m| std::cmp::Reverse(out[*m].len()));
        let mut moved = None;
        'search: for from in &by_count {
            for to in by_count.iter().rev() {
                if out[*from].len() <= out[*to].len() + 1 {
                    break;
                }
                // Prefer a partition the giver did not own before, to stay sticky.
                let was_owned = |tp: &TopicPartition| owner.get(tp).is_some_and(|o| o.is_some_and(|(_, m)| m == *from));
                let candidate = out[*from].iter().filter(|tp| eligible(to, tp)).min_by_key(|tp| was_owned(tp));
                if let Some(tp) = candidate {
                    moved = Some((from.to_string(), to.to_string(), tp.clone()));
                    break 'search;
                }
            }
        }
        let Some((from, to, tp)) = moved else { break };
        out.get_mut(&from).expect("entry").remove(&tp);
        out.get_mut(&to).expect("entry").insert(tp);
    }
    out.into_iter().map(|(m, set)| (m, set.into_iter().collect())).collect()
}

/// Groups partitions by topic, topics and partitions sorted, in the protocol's shape.
fn by_topic(partitions: &[TopicPartition]) -> BTreeMap<&str, Vec<i32>> {
    let mut grouped: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in partitions {
        grouped.entry(tp.topic.as_str()).or_default().push(tp.partition);
    }
    grouped.values_mut().for_each(|v| v.sort_unstable());
    grouped
}

fn encode_versioned(version: i16, encode: impl FnOnce(&mut BytesMut) -> Result<(), String>) -> Bytes {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&version.to_be_bytes());
    // Encoding fails only for out-of-range versions or oversized strings, neither of which a
    // struct built here from topic names can have.
    encode(&mut buf).expect("consumer protocol structs built here always encode");
    buf.freeze()
}

/// Encodes a subscription as JoinGroup's protocol metadata: `int16` version, then the struct.
pub fn encode_subscription(s: &Subscription) -> Bytes {
    let message = ConsumerProtocolSubscription::default()
        .with_topics(s.topics.iter().map(|t| str_bytes(t.as_str())).collect())
        .with_user_data(s.user_data.clone())
        .with_owned_partitions(
            by_topic(&s.owned_partitions)
                .into_iter()
                .map(|(t, ps)| {
                    consumer_protocol_subscription::TopicPartition::default()
                        .with_topic(TopicName(str_bytes(t)))
                        .with_partitions(ps)
                })
                .collect(),
        )
        .with_generation_id(s.generation_id)
        .with_rack_id(s.rack_id.as_deref().map(str_bytes));
    encode_versioned(SUBSCRIPTION_VERSION, |buf| message.encode(buf, SUBSCRIPTION_VERSION).map_err(|e| e.to_string()))
}

/// Encodes an assignment as SyncGroup's per-member blob.
pub fn encode_assignment(a: &Assignment) -> Bytes {
    let message = ConsumerProtocolAssignment::default()
        .with_assigned_partitions(
            by_topic(&a.partitions)
                .into_iter()
                .map(|(t, ps)| {
                    consumer_protocol_assignment::TopicPartition::default()
                        .with_topic(TopicName(str_bytes(t)))
                        .with_partitions(ps)
                })
                .collect(),
        )
        .with_user_data(a.user_data.clone());
    encode_versioned(ASSIGNMENT_VERSION, |buf| message.encode(buf, ASSIGNMENT_VERSION).map_err(|e| e.to_string()))
}

/// Reads the version prefix; versions above ours decode as ours (later versions only append).
fn read_version(what: &'static str, bytes: &mut &[u8], max: i16) -> Result<i16, ProtocolError> {
    if bytes.len() < 2 {
        return Err(ProtocolError::malformed(what, "shorter than its version"));
    }
    let version = bytes.get_i16();
    if version < 0 {
        return Err(ProtocolError::malformed(what, format!("negative version {version}")));
    }
    Ok(version.min(max))
}

/// Decodes a member's subscription (JoinGroup metadata from another client, relayed by the
/// broker). Array counts are checked against the bytes left before the generated decoder
/// reserves memory for them.
pub fn decode_subscription(bytes: &[u8]) -> Result<Subscription, ProtocolError> {
    const WHAT: &str = "consumer protocol subscription";
    let mut body = bytes;
    let version = read_version(WHAT, &mut body, SUBSCRIPTION_VERSION)?;
    Walk::new(WHAT, body).subscription(version)?;
    let mut buf = Bytes::copy_from_slice(body);
    let m = ConsumerProtocolSubscription::decode(&mut buf, version).map_err(|e| ProtocolError::malformed(WHAT, e))?;
    Ok(Subscription {
        topics: m.topics.iter().map(|t| t.to_string()).collect(),
        user_data: m.user_data,
        owned_partitions: m
            .owned_partitions
            .iter()
            .flat_map(|t| t.partitions.iter().map(move |p| TopicPartition::new(t.topic.0.to_string(), *p)))
            .collect(),
        generation_id: m.generation_id,
        rack_id: m.rack_id.map(|r| r.to_string()),
    })
}

/// Decodes an assignment (SyncGroup's answer, written by the leader, which may be any client).
/// An empty blob is an empty assignment, as the Java client reads it.
pub fn decode_assignment(bytes: &[u8]) -> Result<Assignment, ProtocolError> {
    const WHAT: &str = "consumer protocol assignment";
    if bytes.is_empty() {
        return Ok(Assignment::default());
    }
    let mut body = bytes;
    let version = read_version(WHAT, &mut body, ASSIGNMENT_VERSION)?;
    Walk::new(WHAT, body).assignment()?;
    let mut buf = Bytes::copy_from_slice(body);
    let m = ConsumerProtocolAssignment::decode(&mut buf, version).map_err(|e| ProtocolError::malformed(WHAT, e))?;
    Ok(Assignment {
        partitions: m
            .assigned_partitions
            .iter()
            .flat_map(|t| t.partitions.iter().map(move |p| TopicPartition::new(t.topic.0.to_string(), *p)))
            .collect(),
        user_data: m.user_data,
    })
}

/// A bounds pass over the (non-flexible) consumer protocol layouts: refuses an array whose
/// count cannot fit in the bytes after it, or a length past the end.
struct Walk<'a> {
    what: &'static str,
    buf: &'a [u8],
}

impl<'a> Walk<'a> {
    fn new(what: &'static str, buf: &'a [u8]) -> Self {
        Walk { what, buf }
    }

    fn err(&self, reason: impl fmt::Display) -> ProtocolError {
        ProtocolError::malformed(self.what, reason)
    }

    fn skip(&mut self, n: usize) -> Result<(), ProtocolError> {
        if self.buf.len() < n {
            return Err(self.err(format!("needs {n} more bytes, {} left", self.buf.len())));
        }
        self.buf.advance(n);
        Ok(())
    }

    fn string(&mut self) -> Result<(), ProtocolError> {
        self.skip(0)?;
        if self.buf.len() < 2 {
            return Err(self.err("truncated string length"));
        }
        let len = self.buf.get_i16();
        if len > 0 {
            self.skip(len as usize)?;
        }
        Ok(())
    }

    fn bytes(&mut self) -> Result<(), ProtocolError> {
        if self.buf.len() < 4 {
            return Err(self.err("truncated bytes length"));
        }
        let len = self.buf.get_i32();
        if len > 0 {
            self.skip(len as usize)?;
        }
        Ok(())
    }

    /// An array count, checked against the smallest encoding of its elements.
    fn array(&mut self, min_element_bytes: usize) -> Result<usize, ProtocolError> {
        if self.buf.len() < 4 {
            return Err(self.err("truncated array count"));
        }
        let count = self.buf.get_i32();
        if count <= 0 {
            return Ok(0);
        }
        let count = count as usize;
        if count.saturating_mul(min_element_bytes) > self.buf.len() {
            return Err(self.err(format!("array of {count} cannot fit in {} bytes", self.buf.len())));
        }
        Ok(count)
    }

    fn topic_partitions(&mut self) -> Result<(), ProtocolError> {
        for _ in 0..self.array(6)? {
            self.string()?;
            let n = self.array(4)?;
            self.skip(n * 4)?;
        }
        Ok(())
    }

    fn subscription(&mut self, version: i16) -> Result<(), ProtocolError> {
        for _ in 0..self.array(2)? {
            self.string()?;
        }
        self.bytes()?;
        if version >= 1 {
            self.topic_partitions()?;
        }
        if version >= 2 {
            self.skip(4)?;
        }
        if version >= 3 {
            self.string()?;
        }
        Ok(())
    }

    fn assignment(&mut self) -> Result<(), ProtocolError> {
        self.topic_partitions()?;
        self.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(id: &str, topics: &[&str]) -> GroupMember {
        GroupMember {
            member_id: id.to_string(),
            group_instance_id: None,
            subscription: Subscription {
                topics: topics.iter().map(|t| t.to_string()).collect(),
                ..Subscription::default()
            },
        }
    }

    fn owning(mut m: GroupMember, owned: &[TopicPartition], generation: i32) -> GroupMember {
        m.subscription.owned_partitions = owned.to_vec();
        m.subscription.generation_id = generation;
        m
    }

    fn tps(list: &[(&str, i32)]) -> Vec<TopicPartition> {
        list.iter().map(|(t, p)| TopicPartition::new(*t, *p)).collect()
    }

    fn topics(list: &[(&str, i32)]) -> BTreeMap<String, i32> {
        list.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    /// The example in the Javadoc of Kafka's RangeAssignor.
    #[test]
    fn range_matches_kafkas_documented_example() {
        let members = [member("C0", &["t0", "t1"]), member("C1", &["t0", "t1"])];
        let got = Assignor::Range.assign(&topics(&[("t0", 3), ("t1", 3)]), &members);
        assert_eq!(got["C0"], tps(&[("t0", 0), ("t0", 1), ("t1", 0), ("t1", 1)]));
        assert_eq!(got["C1"], tps(&[("t0", 2), ("t1", 2)]));
    }

    /// The two examples in the Javadoc of Kafka's RoundRobinAssignor.
    #[test]
    fn round_robin_matches_kafkas_documented_examples() {
        let members = [member("C0", &["t0", "t1"]), member("C1", &["t0", "t1"])];
        let got = Assignor::RoundRobin.assign(&topics(&[("t0", 3), ("t1", 3)]), &members);
        assert_eq!(got["C0"], tps(&[("t0", 0), ("t0", 2), ("t1", 1)]));
        assert_eq!(got["C1"], tps(&[("t0", 1), ("t1", 0), ("t1", 2)]));

        // C0 subscribes to t0; C1 to t0, t1; C2 to t0, t1, t2 (t0 has 1 partition, t1 2, t2 3).
        let members = [member("C0", &["t0"]), member("C1", &["t0", "t1"]), member("C2", &["t0", "t1", "t2"])];
        let got = Assignor::RoundRobin.assign(&topics(&[("t0", 1), ("t1", 2), ("t2", 3)]), &members);
        assert_eq!(got["C0"], tps(&[("t0", 0)]));
        assert_eq!(got["C1"], tps(&[("t1", 0)]));
        assert_eq!(got["C2"], tps(&[("t1", 1), ("t2", 0), ("t2", 1), ("t2", 2)]));
    }

    #[test]
    fn range_gives_extras_to_the_first_members_and_orders_static_members_first() {
        let mut b = member("b", &["t"]);
        b.group_instance_id = Some("instance-z".into());
        let members = [member("a", &["t"]), b, member("c", &["t"])];
        let got = Assignor::Range.assign(&topics(&[("t", 7), ("unsubscribed", 4)]), &members);
        assert_eq!(got["b"], tps(&[("t", 0), ("t", 1), ("t", 2)]));
        assert_eq!(got["a"], tps(&[("t", 3), ("t", 4)]));
        assert_eq!(got["c"], tps(&[("t", 5), ("t", 6)]));
        // A topic missing from metadata is skipped; a member with nothing still gets an entry.
        let got = Assignor::Range.assign(&topics(&[]), &[member("a", &["gone"])]);
        assert_eq!(got["a"], Vec::<TopicPartition>::new());
    }

    #[test]
    fn rebalance_protocol_is_the_highest_all_assignors_support() {
        assert_eq!(rebalance_protocol(&[Assignor::Range, Assignor::CooperativeSticky]), RebalanceProtocol::Eager);
        assert_eq!(rebalance_protocol(&[Assignor::CooperativeSticky]), RebalanceProtocol::Cooperative);
        assert_eq!("roundrobin".parse::<Assignor>(), Ok(Assignor::RoundRobin));
        assert_eq!(
            "org.apache.kafka.clients.consumer.CooperativeStickyAssignor".parse::<Assignor>(),
            Ok(Assignor::CooperativeSticky)
        );
        assert!("sticky".parse::<Assignor>().is_err());
    }

    #[test]
    fn cooperative_sticky_withholds_moving_partitions_until_revoked() {
        let t = topics(&[("t", 4)]);
        let all = tps(&[("t", 0), ("t", 1), ("t", 2), ("t", 3)]);
        // A owns everything; B joins.
        let a = owning(member("A", &["t"]), &all, 1);
        let first = Assignor::CooperativeSticky.assign(&t, &[a.clone(), member("B", &["t"])]);
        assert_eq!(first["A"].len(), 2, "A keeps half: {first:?}");
        assert!(first["B"].is_empty(), "B waits until A revokes: {first:?}");
        // A revokes what it lost and rejoins owning its new assignment: B gets the rest.
        let a = owning(member("A", &["t"]), &first["A"], 2);
        let second = Assignor::CooperativeSticky.assign(&t, &[a, owning(member("B", &["t"]), &[], 2)]);
        assert_eq!(second["A"], first["A"]);
        assert_eq!(second["B"].len(), 2);
        assert!(second["B"].iter().all(|tp| !first["A"].contains(tp)));
    }

    #[test]
    fn sticky_resolves_claims_by_generation() {
        let t = topics(&[("t", 2)]);
        // B claims t-0 from an older generation (it was kicked out); A's newer claim wins.
        let a = owning(member("A", &["t"]), &tps(&[("t", 0)]), 5);
        let b = owning(member("B", &["t"]), &tps(&[("t", 0)]), 3);
        let got = sticky(&t, &[a, b]);
        assert_eq!(got["A"], tps(&[("t", 0)]));
        assert_eq!(got["B"], tps(&[("t", 1)]));
        // Generation also comes from cooperative-sticky's user data (subscription v0/v1).
        let s = Subscription {
            user_data: Assignor::CooperativeSticky.subscription_user_data(7),
            ..Subscription::default()
        };
        assert_eq!(member_generation(&s), 7);
    }

    #[test]
    fn subscription_and_assignment_round_trip() {
        let s = Subscription {
            topics: vec!["a".into(), "b".into()],
            user_data: Some(Bytes::from_static(b"\0\0\0\x07")),
            owned_partitions: tps(&[("a", 0), ("a", 3), ("b", 1)]),
            generation_id: 7,
            rack_id: Some("r1".into()),
        };
        let bytes = encode_subscription(&s);
        assert_eq!(&bytes[..2], &SUBSCRIPTION_VERSION.to_be_bytes());
        assert_eq!(decode_subscription(&bytes).unwrap(), s);
        let a = Assignment { partitions: tps(&[("a", 1), ("b", 0)]), user_data: None };
        assert_eq!(decode_assignment(&encode_assignment(&a)).unwrap(), a);
        assert_eq!(decode_assignment(&[]).unwrap(), Assignment::default());
    }

    #[test]
    fn decodes_older_and_newer_versions() {
        // v0 subscription as old clients write it: topics, user data.
        let mut v0 = vec![0, 0, 0, 0, 0, 1, 0, 1, b't'];
        v0.extend_from_slice(&(-1i32).to_be_bytes());
        let s = decode_subscription(&v0).unwrap();
        assert_eq!(s.topics, vec!["t".to_string()]);
        assert_eq!(s.generation_id, NO_GENERATION);
        // A future v9 with a trailing field decodes as v3.
        let mut future =
            encode_subscription(&Subscription { topics: vec!["x".into()], ..Subscription::default() }).to_vec();
        future[..2].copy_from_slice(&9i16.to_be_bytes());
        future.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decode_subscription(&future).unwrap().topics, vec!["x".to_string()]);
    }

    #[test]
    fn refuses_huge_counts_and_truncation() {
        // A topic count of i32::MAX in a tiny blob: refused before any allocation.
        let mut evil = vec![0, 3];
        evil.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(decode_subscription(&evil), Err(ProtocolError::Malformed { .. })));
        assert!(matches!(decode_assignment(&evil), Err(ProtocolError::Malformed { .. })));
        assert!(decode_subscription(&[0]).is_err());
        assert!(decode_assignment(&[0xff, 0xff, 0, 0, 0, 0]).is_err());
        let good = encode_assignment(&Assignment { partitions: tps(&[("a", 1)]), user_data: None });
        assert!(decode_assignment(&good[..good.len() - 3]).is_err());
    }

    fn arb_tp() -> impl Strategy<Value = TopicPartition> {
        ("[a-c]{1,3}", 0..50i32).prop_map(|(t, p)| TopicPartition::new(t, p))
    }

    proptest! {
        #[test]
        fn subscription_codec_round_trips(
            topics in proptest::collection::vec("[a-z._-]{1,12}", 0..5),
            user_data in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            owned in proptest::collection::btree_set(arb_tp(), 0..10),
            generation_id in -1..100i32,
            rack_id in proptest::option::of("[a-z0-9]{1,6}"),
        ) {
            let s = Subscription {
                topics,
                user_data: user_data.map(Bytes::from),
                owned_partitions: owned.into_iter().collect(),
                generation_id,
                rack_id,
            };
            let bytes = encode_subscription(&s);
            // Every byte is consumed: the walk of the body ends exactly at the end.
            let mut walk = Walk::new("t", &bytes[2..]);
            walk.subscription(SUBSCRIPTION_VERSION).unwrap();
            prop_assert!(walk.buf.is_empty());
            prop_assert_eq!(decode_subscription(&bytes).unwrap(), s);
        }

        #[test]
        fn assignment_codec_round_trips(
            owned in proptest::collection::btree_set(arb_tp(), 0..20),
            user_data in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
        ) {
            let a = Assignment { partitions: owned.into_iter().collect(), user_data: user_data.map(Bytes::from) };
            let bytes = encode_assignment(&a);
            let mut walk = Walk::new("t", &bytes[2..]);
            walk.assignment().unwrap();
            prop_assert!(walk.buf.is_empty());
            prop_assert_eq!(decode_assignment(&bytes).unwrap(), a);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_subscription(&bytes);
            let _ = decode_assignment(&bytes);
        }

        /// Identical subscriptions: complete, balanced to within one, and sticky — after one
        /// member joins or leaves, each remaining member keeps as many of its partitions as
        /// the new quota allows. A second cooperative round completes what the first withheld.
        #[test]
        fn cooperative_sticky_is_balanced_and_sticky(
            partitions in proptest::collection::vec(1..9i32, 1..4),
            before in 1..6usize,
            after in 1..6usize,
        ) {
            let t: BTreeMap<String, i32> =
                partitions.iter().enumerate().map(|(i, n)| (format!("t{i}"), *n)).collect();
            let names: Vec<&str> = t.keys().map(String::as_str).collect();
            let total: usize = partitions.iter().map(|n| *n as usize).sum();
            let initial: Vec<GroupMember> = (0..before).map(|i| member(&format!("m{i}"), &names)).collect();
            let first = Assignor::CooperativeSticky.assign(&t, &initial);
            check_complete_and_balanced(&first, total)?;

            // Members m0..m{after} now, owning what they had.
            let members: Vec<GroupMember> = (0..after)
                .map(|i| {
                    let id = format!("m{i}");
                    let owned = first.get(&id).cloned().unwrap_or_default();
                    owning(member(&id, &names), &owned, 1)
                })
                .collect();
            let round1 = Assignor::CooperativeSticky.assign(&t, &members);
            let quota = total / after;
            for m in &members {
                let kept = round1[&m.member_id].iter().filter(|tp| m.subscription.owned_partitions.contains(tp)).count();
                prop_assert!(kept >= m.subscription.owned_partitions.len().min(quota),
                    "{} kept {kept} of {:?}", m.member_id, m.subscription.owned_partitions);
                // Nothing is handed over while another member still owns it.
                for tp in &round1[&m.member_id] {
                    prop_assert!(members.iter().all(|o| o.member_id == m.member_id || !o.subscription.owned_partitions.contains(tp)));
                }
            }
            // Members revoke what they lost; the follow-up rebalance completes the assignment.
            let members: Vec<GroupMember> = members
                .iter()
                .map(|m| owning(member(&m.member_id, &names), &round1[&m.member_id], 2))
                .collect();
            let round2 = Assignor::CooperativeSticky.assign(&t, &members);
            check_complete_and_balanced(&round2, total)?;
            for m in &members {
                for tp in &m.subscription.owned_partitions {
                    prop_assert!(round2[&m.member_id].contains(tp), "{tp} moved again");
                }
            }
            // And a rebalance with nothing changed moves nothing.
            let members: Vec<GroupMember> = members
                .iter()
                .map(|m| owning(member(&m.member_id, &names), &round2[&m.member_id], 3))
                .collect();
            prop_assert_eq!(Assignor::CooperativeSticky.assign(&t, &members), round2);
        }

        /// Differing subscriptions: every partition goes to exactly one subscribed member, and
        /// no member has two more than another member that could take one of its partitions.
        #[test]
        fn sticky_balances_differing_subscriptions(
            partitions in proptest::collection::vec(1..7i32, 1..4),
            subs in proptest::collection::vec(proptest::collection::btree_set(0..3usize, 1..3), 1..6),
        ) {
            let t: BTreeMap<String, i32> =
                partitions.iter().enumerate().map(|(i, n)| (format!("t{i}"), *n)).collect();
            let members: Vec<GroupMember> = subs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let topics: Vec<String> = s.iter().map(|k| format!("t{k}")).collect();
                    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
                    member(&format!("m{i}"), &refs)
                })
                .collect();
            let got = sticky(&t, &members);
            let mut seen = BTreeSet::new();
            for m in &members {
                for tp in &got[&m.member_id] {
                    prop_assert!(subscribes(m, &tp.topic));
                    prop_assert!(seen.insert(tp.clone()), "{tp} assigned twice");
                }
            }
            let expected: usize = t
                .iter()
                .filter(|(topic, _)| members.iter().any(|m| subscribes(m, topic)))
                .map(|(_, n)| *n as usize)
                .sum();
            prop_assert_eq!(seen.len(), expected);
            for a in &members {
                for b in &members {
                    if got[&a.member_id].len() > got[&b.member_id].len() + 1 {
                        prop_assert!(got[&a.member_id].iter().all(|tp| !subscribes(b, &tp.topic)));
                    }
                }
            }
        }
    }

    fn check_complete_and_balanced(
        assignment: &BTreeMap<String, Vec<TopicPartition>>,
        total: usize,
    ) -> Result<(), TestCaseError> {
        let all: BTreeSet<&TopicPartition> = assignment.values().flatten().collect();
        prop_assert_eq!(all.len(), total);
        prop_assert_eq!(assignment.values().map(Vec::len).sum::<usize>(), total);
        let max = assignment.values().map(Vec::len).max().unwrap_or(0);
        let min = assignment.values().map(Vec::len).min().unwrap_or(0);
        prop_assert!(max - min <= 1, "unbalanced: {assignment:?}");
        Ok(())
    }
}

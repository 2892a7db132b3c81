//! The controller's decisions, sans-IO: given the current image and a request, which records to
//! write and what to answer. Only the quorum leader runs these; followers apply the records.
//! Anything random (topic ids) comes in as a parameter so the functions stay pure and testable.

use std::collections::BTreeMap;

use spate_client::protocol::ErrorCode;
use uuid::Uuid;

use super::records::{apply_record, MetadataRecord};
use super::types::{
    BrokerRegistration, ControllerRefusal, ControllerReply, ControllerRequest, ElectionResult, MetadataImage,
    PartitionImage, TopicImage, NO_LEADER,
};

/// Kafka's INVALID_UPDATE_VERSION: an AlterPartition named a stale `partition_epoch`.
pub const INVALID_UPDATE_VERSION: ErrorCode = ErrorCode(95);
/// Kafka's INELIGIBLE_REPLICA: an AlterPartition tried to add a fenced broker to the ISR.
pub const INELIGIBLE_REPLICA: ErrorCode = ErrorCode(107);
/// Kafka's STALE_BROKER_EPOCH: a heartbeat from an incarnation that is not the registered one.
pub const STALE_BROKER_EPOCH: ErrorCode = ErrorCode(77);
/// Kafka's BROKER_ID_NOT_REGISTERED: a heartbeat from a broker that never registered.
pub const BROKER_ID_NOT_REGISTERED: ErrorCode = ErrorCode(102);

/// Upper bound on partitions per topic, so one request cannot make the image (and every node's
/// memory) explode.
pub const MAX_PARTITIONS_PER_TOPIC: i32 = 10_000;
/// Upper bound on one producer-id block.
pub const MAX_PRODUCER_ID_BLOCK: i64 = 1_000_000;

/// Topic config key that allows electing an out-of-sync replica (data loss) over no leader.
pub const UNCLEAN_LEADER_ELECTION_ENABLE: &str = "unclean.leader.election.enable";

/// Cluster-wide settings the decisions depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicSettings {
    pub default_replication_factor: i16,
    pub unclean_leader_election_enable: bool,
}

/// Records to write and the reply to send once they are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub records: Vec<MetadataRecord>,
    pub reply: ControllerReply,
}

pub fn refusal(code: ErrorCode, message: impl Into<String>) -> ControllerRefusal {
    ControllerRefusal { code: code.0, message: message.into() }
}

/// Records plus a scratch image they have been applied to, so that later steps of one decision
/// see the effect of earlier ones.
struct Changes {
    image: MetadataImage,
    records: Vec<MetadataRecord>,
}

impl Changes {
    fn new(image: &MetadataImage) -> Self {
        Changes { image: image.clone(), records: Vec::new() }
    }

    fn push(&mut self, record: MetadataRecord) {
        apply_record(&mut self.image, &record);
        self.records.push(record);
    }

    fn change_partition(&mut self, topic: &str, partition: i32, state: PartitionImage) {
        self.push(MetadataRecord::ChangePartition { topic: topic.to_string(), partition, state });
    }
}

/// Decides what `request` does to `image`. `fresh_id` is used as the id of a created topic.
/// A dynamic broker config key and (when set) its value: a positive number of bytes per second.
fn check_dynamic_broker_config(key: &str, value: Option<&String>) -> Result<(), ControllerRefusal> {
    if !crate::config::DYNAMIC_BROKER_CONFIGS.contains(&key) {
        return Err(refusal(
            ErrorCode::INVALID_CONFIG,
            format!(
                "{key} is not a dynamic broker config (only {} are; the rest are static: set them by flag, \
                 SPATE_* env or config file and restart)",
                crate::config::DYNAMIC_BROKER_CONFIGS.join(", ")
            ),
        ));
    }
    if let Some(value) = value {
        if !value.trim().parse::<u64>().is_ok_and(|v| v > 0) {
            return Err(refusal(
                ErrorCode::INVALID_CONFIG,
                format!("{key}={value}: expected a positive number of bytes per second"),
            ));
        }
    }
    Ok(())
}

pub fn decide(
    image: &MetadataImage,
    request: &ControllerRequest,
    settings: &LogicSettings,
    fresh_id: Uuid,
) -> Result<Decision, ControllerRefusal> {
    match request {
        ControllerRequest::RegisterBroker { broker_id, host, port, incarnation_id } => {
            let registration = BrokerRegistration {
                id: *broker_id,
                host: host.clone(),
                port: *port,
                incarnation_id: *incarnation_id,
                fenced: false,
            };
            let mut changes = Changes::new(image);
            if image.brokers.get(broker_id).is_some_and(|old| old.incarnation_id != *incarnation_id) {
                // A restart the controller had not noticed yet (quicker than the session
                // timeout). The new process lost its in-memory high watermarks and follower
                // positions, so it must not keep leading in the old epoch: fence the old
                // incarnation first — leadership moves to another ISR member and it leaves the
                // ISRs it shares — exactly as if its session had expired. Where it is the only
                // ISR member it gets leadership back below, in a new epoch.
                for record in fence(image, *broker_id, settings) {
                    changes.push(record);
                }
            }
            if changes.image.brokers.get(broker_id) != Some(&registration) {
                changes.push(MetadataRecord::RegisterBroker { registration });
            }
            elect_for_unfenced(&mut changes, *broker_id, settings);
            Ok(Decision { records: changes.records, reply: ControllerReply::Done })
        }
        ControllerRequest::AlterBrokerConfigs { broker_id, set, delete, validate_only } => {
            let mut configs = image.broker_configs.get(broker_id).cloned().unwrap_or_default();
            for (key, value) in set {
                check_dynamic_broker_config(key, Some(value))?;
                configs.insert(key.clone(), value.trim().to_string());
            }
            for key in delete {
                check_dynamic_broker_config(key, None)?;
                configs.remove(key);
            }
            let unchanged = image.broker_configs.get(broker_id).map_or(configs.is_empty(), |old| *old == configs);
            let records = if *validate_only || unchanged {
                Vec::new()
            } else {
                vec![MetadataRecord::BrokerConfigs { broker_id: *broker_id, configs }]
            };
            Ok(Decision { records, reply: ControllerReply::Done })
        }
        ControllerRequest::AddVoter { .. }
        | ControllerRequest::RemoveVoter { .. }
        | ControllerRequest::DescribeQuorum => {
            // The controller runs these on the Raft layer before asking this module.
            Err(refusal(ErrorCode::INVALID_REQUEST, "a quorum request is not a metadata change"))
        }
        ControllerRequest::UnregisterBroker { broker_id } => {
            let Some(broker) = image.brokers.get(broker_id) else {
                return Err(refusal(BROKER_ID_NOT_REGISTERED, format!("broker {broker_id} is not registered")));
            };
            if !broker.fenced {
                return Err(refusal(
                    ErrorCode::INVALID_REQUEST,
                    format!("broker {broker_id} is running (not fenced): stop it before unregistering it"),
                ));
            }
            let hosted: Vec<String> = image
                .topics
                .values()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| p.replicas.contains(broker_id))
                        .map(move |(i, _)| format!("{}-{i}", t.name))
                })
                .take(5)
                .collect();
            if !hosted.is_empty() {
                return Err(refusal(
                    ErrorCode::INVALID_REQUEST,
                    format!(
                        "broker {broker_id} is still a replica of {} (and maybe more): reassign them away first",
                        hosted.join(", ")
                    ),
                ));
            }
            Ok(Decision {
                records: vec![MetadataRecord::UnregisterBroker { broker_id: *broker_id }],
                reply: ControllerReply::Done,
            })
        }
        ControllerRequest::BrokerHeartbeat { broker_id, incarnation_id } => {
            let registered = registered_incarnation(image, *broker_id, *incarnation_id, "heartbeat")?;
            let records = if registered.fenced { unfence(image, *broker_id, settings) } else { Vec::new() };
            Ok(Decision { records, reply: ControllerReply::Heartbeat { fenced: false } })
        }
        ControllerRequest::CreateTopic { name, partitions, replication_factor, configs, validate_only } => {
            check_topic(name, configs)?;
            if image.topics.contains_key(name) {
                return Err(refusal(ErrorCode::TOPIC_ALREADY_EXISTS, format!("topic {name} already exists")));
            }
            check_partition_count(name, *partitions)?;
            let rf = if *replication_factor == -1 { settings.default_replication_factor } else { *replication_factor };
            let assignment = place_replicas(image, name, 0, *partitions, rf)?;
            let topic = TopicImage {
                name: name.clone(),
                id: fresh_id,
                configs: configs.clone(),
                partitions: assignment.into_iter().map(new_partition).collect(),
            };
            let records = if *validate_only { Vec::new() } else { vec![MetadataRecord::CreateTopic { topic }] };
            Ok(Decision { records, reply: ControllerReply::TopicCreated { id: fresh_id } })
        }
        ControllerRequest::DeleteTopic { name } => {
            known_topic(image, name)?;
            Ok(Decision {
                records: vec![MetadataRecord::DeleteTopic { name: name.clone() }],
                reply: ControllerReply::Done,
            })
        }
        ControllerRequest::CreatePartitions { name, total, validate_only } => {
            let topic = known_topic(image, name)?;
            let current = i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX);
            if *total <= current {
                return Err(refusal(
                    ErrorCode::INVALID_PARTITIONS,
                    format!("topic {name} has {current} partitions; cannot grow to {total}"),
                ));
            }
            check_partition_count(name, *total)?;
            let rf = topic.partitions.first().map_or(1, |p| i16::try_from(p.replicas.len()).unwrap_or(i16::MAX));
            let assignment = place_replicas(image, name, current, *total - current, rf)?;
            let records = if *validate_only {
                Vec::new()
            } else {
                vec![MetadataRecord::CreatePartitions {
                    name: name.clone(),
                    partitions: assignment.into_iter().map(new_partition).collect(),
                }]
            };
            Ok(Decision { records, reply: ControllerReply::Done })
        }
        ControllerRequest::AlterTopicConfigs { name, configs } => {
            known_topic(image, name)?;
            check_topic(name, configs)?;
            Ok(Decision {
                records: vec![MetadataRecord::AlterTopicConfigs { name: name.clone(), configs: configs.clone() }],
                reply: ControllerReply::Done,
            })
        }
        ControllerRequest::AlterPartition { broker_id, topic, partition, leader_epoch, partition_epoch, new_isr } => {
            alter_partition(image, *broker_id, topic, *partition, *leader_epoch, *partition_epoch, new_isr)
        }
        ControllerRequest::AllocateProducerIds { broker_id, count } => {
            if *count <= 0 || *count > MAX_PRODUCER_ID_BLOCK {
                return Err(refusal(
                    ErrorCode::INVALID_REQUEST,
                    format!("producer id block of {count} is outside 1..={MAX_PRODUCER_ID_BLOCK}"),
                ));
            }
            let first_id = image.next_producer_id;
            if first_id.checked_add(*count).is_none() {
                return Err(refusal(ErrorCode::UNKNOWN_SERVER_ERROR, "producer ids exhausted"));
            }
            Ok(Decision {
                records: vec![MetadataRecord::AllocateProducerIds { broker_id: *broker_id, first_id, count: *count }],
                reply: ControllerReply::ProducerIds { first_id, count: *count },
            })
        }
        ControllerRequest::ControlledShutdown { broker_id, incarnation_id } => {
            registered_incarnation(image, *broker_id, *incarnation_id, "controlled shutdown")?;
            Ok(Decision { records: fence(image, *broker_id, settings), reply: ControllerReply::Done })
        }
        ControllerRequest::AlterPartitionReassignments { reassignments } => {
            Ok(alter_reassignments(image, reassignments))
        }
        ControllerRequest::ElectLeaders { unclean, partitions } => {
            Ok(elect_leaders(image, *unclean, partitions.as_deref()))
        }
    }
}

/// ElectLeaders: one result per named partition; with `partitions` `None` (every partition) only
/// the partitions where an election happened or failed are reported, as Kafka does (not the
/// ones already led by the right replica).
fn elect_leaders(image: &MetadataImage, unclean: bool, partitions: Option<&[(String, i32)]>) -> Decision {
    let targets: Vec<(String, i32)> = match partitions {
        Some(named) => named.to_vec(),
        None => all_partitions(image).into_iter().map(|(t, i, _)| (t, i)).collect(),
    };
    let mut changes = Changes::new(image);
    let mut results = Vec::with_capacity(targets.len());
    for (topic, index) in targets {
        let Some(p) = changes.image.partition(&topic, index).cloned() else {
            results.push(ElectionResult {
                topic,
                partition: index,
                code: ErrorCode::UNKNOWN_TOPIC_OR_PARTITION.0,
                message: "no such topic or partition".to_string(),
            });
            continue;
        };
        let outcome = if unclean { unclean_choice(&changes.image, &p) } else { preferred_choice(&changes.image, &p) };
        let (code, message) = match outcome {
            Ok(next) => {
                let message = format!("leader is now broker {}", next.leader);
                changes.change_partition(&topic, index, next);
                (ErrorCode::NONE, message)
            }
            Err((code, message)) => (code, message),
        };
        if partitions.is_some() || code != ErrorCode::ELECTION_NOT_NEEDED {
            results.push(ElectionResult { topic, partition: index, code: code.0, message });
        }
    }
    Decision { records: changes.records, reply: ControllerReply::Elections { results } }
}

type Refused = (ErrorCode, String);

/// The registration of `broker_id` when `incarnation_id` is its current process; a request
/// (`what`) from an unknown broker or an older process is refused.
fn registered_incarnation<'a>(
    image: &'a MetadataImage,
    broker_id: i32,
    incarnation_id: Uuid,
    what: &str,
) -> Result<&'a BrokerRegistration, ControllerRefusal> {
    let Some(registered) = image.brokers.get(&broker_id) else {
        return Err(refusal(BROKER_ID_NOT_REGISTERED, format!("broker {broker_id} is not registered")));
    };
    if registered.incarnation_id != incarnation_id {
        return Err(refusal(
            STALE_BROKER_EPOCH,
            format!(
                "broker {broker_id} {what} from incarnation {incarnation_id}, registered is {}",
                registered.incarnation_id
            ),
        ));
    }
    Ok(registered)
}

/// Kafka's NO_REASSIGNMENT_IN_PROGRESS: a cancellation of a partition that is not moving.
pub const NO_REASSIGNMENT_IN_PROGRESS: ErrorCode = ErrorCode(85);

/// AlterPartitionReassignments (KIP-455), one result per partition. A target makes the
/// replicas the target followed by the current replicas not in it; those not in the target are
/// `removing_replicas`, those new `adding_replicas`. The new replicas fetch as followers and join
/// the ISR when caught up ([`alter_partition`]); once every one of them is in sync the
/// reassignment completes ([`complete_reassignment`]). A target equal to the current replicas
/// with nothing moving changes nothing; a new target replaces one in progress (from the
/// replicas before it); `None` cancels: back to the replicas before the reassignment.
fn alter_reassignments(image: &MetadataImage, reassignments: &[(String, i32, Option<Vec<i32>>)]) -> Decision {
    let mut changes = Changes::new(image);
    let mut results = Vec::with_capacity(reassignments.len());
    for (topic, index, target) in reassignments {
        let outcome = match changes.image.partition(topic, *index).cloned() {
            None => Err((ErrorCode::UNKNOWN_TOPIC_OR_PARTITION, format!("{topic}-{index} does not exist"))),
            Some(p) => reassign(&changes.image, &p, target.as_deref()),
        };
        let (code, message) = match outcome {
            Ok(Some(next)) => {
                changes.change_partition(topic, *index, next);
                (ErrorCode::NONE, String::new())
            }
            Ok(None) => (ErrorCode::NONE, String::new()),
            Err((code, message)) => (code, message),
        };
        results.push(ElectionResult { topic: topic.clone(), partition: *index, code: code.0, message });
    }
    Decision { records: changes.records, reply: ControllerReply::Elections { results } }
}

/// The partition's next state for one reassignment request, `None` when nothing changes.
fn reassign(
    image: &MetadataImage,
    p: &PartitionImage,
    target: Option<&[i32]>,
) -> Result<Option<PartitionImage>, Refused> {
    // The replicas before any reassignment in progress.
    let original: Vec<i32> = p.replicas.iter().copied().filter(|r| !p.adding_replicas.contains(r)).collect();
    let Some(target) = target else {
        if !p.is_reassigning() {
            return Err((NO_REASSIGNMENT_IN_PROGRESS, "no reassignment in progress".to_string()));
        }
        return Ok(Some(settle(image, p, original)));
    };
    let mut seen = target.to_vec();
    seen.sort_unstable();
    seen.dedup();
    if target.is_empty() || seen.len() != target.len() {
        return Err((ErrorCode::INVALID_REPLICA_ASSIGNMENT, format!("target {target:?} must name distinct brokers")));
    }
    if let Some(unknown) = target.iter().find(|b| !image.brokers.contains_key(b)) {
        return Err((ErrorCode::INVALID_REPLICA_ASSIGNMENT, format!("broker {unknown} is not registered")));
    }
    if target == original.as_slice() && !p.is_reassigning() {
        return Ok(None);
    }
    let mut replicas = target.to_vec();
    replicas.extend(original.iter().copied().filter(|r| !target.contains(r)));
    let next = PartitionImage {
        adding_replicas: target.iter().copied().filter(|r| !original.contains(r)).collect(),
        removing_replicas: original.iter().copied().filter(|r| !target.contains(r)).collect(),
        // Replicas added by an abandoned target leave the ISR with it.
        isr: p.isr.iter().copied().filter(|r| replicas.contains(r)).collect(),
        replicas,
        partition_epoch: p.partition_epoch + 1,
        ..p.clone()
    };
    Ok(Some(complete_reassignment(image, next)))
}

/// Completes a reassignment once every added replica is in the ISR: the replicas become the
/// target, the removed ones leave the ISR, and leadership moves into the target if it is not
/// there (the first live in-sync target replica, in a new leader epoch). Anything else is
/// returned as it is.
pub fn complete_reassignment(image: &MetadataImage, p: PartitionImage) -> PartitionImage {
    if !p.is_reassigning() || !p.adding_replicas.iter().all(|r| p.isr.contains(r)) {
        return p;
    }
    let target = p.target_replicas();
    let mut next = settle(image, &p, target);
    next.partition_epoch = p.partition_epoch + 1;
    next
}

/// `p` with exactly `replicas`: no reassignment, the ISR cut to them (never empty: a leaderless
/// partition keeps its last member), the leader moved into them if it is outside.
fn settle(image: &MetadataImage, p: &PartitionImage, replicas: Vec<i32>) -> PartitionImage {
    let mut isr: Vec<i32> = p.isr.iter().copied().filter(|r| replicas.contains(r)).collect();
    let mut leader = p.leader;
    if !replicas.contains(&leader) || !is_live(image, leader) {
        leader = isr.iter().copied().find(|&r| is_live(image, r)).unwrap_or(NO_LEADER);
    }
    if isr.is_empty() {
        // Nothing of the ISR is in the new replica set (a cancel before any added replica
        // caught up cannot get here: the originals are the ISR's). Keep the old ISR's order.
        isr = p.isr.clone();
    }
    PartitionImage {
        leader_epoch: if leader != p.leader { p.leader_epoch + 1 } else { p.leader_epoch },
        partition_epoch: p.partition_epoch + 1,
        leader,
        isr,
        replicas,
        adding_replicas: Vec::new(),
        removing_replicas: Vec::new(),
    }
}

fn preferred_choice(image: &MetadataImage, p: &PartitionImage) -> Result<PartitionImage, Refused> {
    let Some(&preferred) = p.replicas.first() else {
        return Err((ErrorCode::PREFERRED_LEADER_NOT_AVAILABLE, "the partition has no replicas".to_string()));
    };
    if p.leader == preferred {
        return Err((ErrorCode::ELECTION_NOT_NEEDED, format!("preferred replica {preferred} already leads")));
    }
    if !is_live(image, preferred) {
        return Err((ErrorCode::PREFERRED_LEADER_NOT_AVAILABLE, format!("preferred replica {preferred} is not live")));
    }
    if !p.isr.contains(&preferred) {
        return Err((
            ErrorCode::PREFERRED_LEADER_NOT_AVAILABLE,
            format!("preferred replica {preferred} is not in sync"),
        ));
    }
    Ok(PartitionImage {
        leader: preferred,
        leader_epoch: p.leader_epoch + 1,
        partition_epoch: p.partition_epoch + 1,
        ..p.clone()
    })
}

/// Unclean election only for a partition with no live leader: an in-sync live replica if there
/// is one (a clean election), else the first live replica, which becomes the whole ISR
/// (records only the old ISR had are lost — what the caller asked for).
fn unclean_choice(image: &MetadataImage, p: &PartitionImage) -> Result<PartitionImage, Refused> {
    if p.has_leader() && is_live(image, p.leader) {
        return Err((ErrorCode::ELECTION_NOT_NEEDED, format!("broker {} leads and is live", p.leader)));
    }
    let mut next = p.clone();
    if let Some(r) = p.isr.iter().copied().find(|&r| is_live(image, r)) {
        next.leader = r;
    } else if let Some(r) = p.replicas.iter().copied().find(|&r| is_live(image, r)) {
        next.leader = r;
        next.isr = vec![r];
    } else {
        return Err((ErrorCode::ELIGIBLE_LEADERS_NOT_AVAILABLE, "no replica of the partition is live".to_string()));
    }
    next.leader_epoch += 1;
    next.partition_epoch += 1;
    Ok(next)
}

fn known_topic<'a>(image: &'a MetadataImage, name: &str) -> Result<&'a TopicImage, ControllerRefusal> {
    image
        .topics
        .get(name)
        .ok_or_else(|| refusal(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION, format!("topic {name} does not exist")))
}

/// The checks every node's broker also makes before it asks, repeated here because a request
/// can arrive over the controller RPC from anywhere: the name becomes a directory name on every
/// broker, and the configs become log settings.
fn check_topic(name: &str, configs: &BTreeMap<String, String>) -> Result<(), ControllerRefusal> {
    crate::broker::validate_topic_name(name).map_err(|e| refusal(e.code(), e.to_string()))?;
    for (key, value) in configs {
        crate::topic_config::validate_override(key, value)
            .map_err(|reason| refusal(ErrorCode::INVALID_CONFIG, format!("invalid config {key}: {reason}")))?;
    }
    Ok(())
}

fn check_partition_count(name: &str, count: i32) -> Result<(), ControllerRefusal> {
    if count <= 0 || count > MAX_PARTITIONS_PER_TOPIC {
        return Err(refusal(
            ErrorCode::INVALID_PARTITIONS,
            format!("partition count {count} for {name} is outside 1..={MAX_PARTITIONS_PER_TOPIC}"),
        ));
    }
    Ok(())
}

fn new_partition(replicas: Vec<i32>) -> PartitionImage {
    PartitionImage { isr: replicas.clone(), leader: replicas[0], replicas, ..PartitionImage::default() }
}

/// Replica lists for partitions `first .. first + count` of `topic`: consecutive unfenced brokers
/// (by id), starting at an index rotated per topic (a stable hash of its name) and per partition,
/// so that leaders (`replicas[0]`) spread over the brokers.
fn place_replicas(
    image: &MetadataImage,
    topic: &str,
    first: i32,
    count: i32,
    replication_factor: i16,
) -> Result<Vec<Vec<i32>>, ControllerRefusal> {
    let live: Vec<i32> = image.live_brokers().map(|b| b.id).collect();
    let rf = usize::try_from(replication_factor).unwrap_or(0);
    if rf == 0 || rf > live.len() {
        return Err(refusal(
            ErrorCode::INVALID_REPLICATION_FACTOR,
            format!("replication factor {replication_factor} is invalid: {} broker(s) are live", live.len()),
        ));
    }
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let start = topic.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let n = live.len() as u64;
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for p in first..first + count {
        let base = start.wrapping_add(u64::try_from(p).unwrap_or(0)) % n;
        out.push((0..rf as u64).map(|j| live[usize::try_from((base + j) % n).unwrap_or(0)]).collect());
    }
    Ok(out)
}

fn unclean_allowed(image: &MetadataImage, topic: &str, settings: &LogicSettings) -> bool {
    image
        .topics
        .get(topic)
        .and_then(|t| t.configs.get(UNCLEAN_LEADER_ELECTION_ENABLE))
        .map_or(settings.unclean_leader_election_enable, |v| v.eq_ignore_ascii_case("true"))
}

fn is_live(image: &MetadataImage, broker: i32) -> bool {
    image.brokers.get(&broker).is_some_and(|b| !b.fenced)
}

fn all_partitions(image: &MetadataImage) -> Vec<(String, i32, PartitionImage)> {
    let mut out = Vec::new();
    for (name, topic) in &image.topics {
        for (i, p) in topic.partitions.iter().enumerate() {
            out.push((name.clone(), i32::try_from(i).unwrap_or(i32::MAX), p.clone()));
        }
    }
    out
}

/// Fences `broker_id`: it leaves every ISR it is in (unless it is the last member, which keeps
/// it, leaderless) and partitions it led elect the first unfenced replica of the new ISR.
pub fn fence(image: &MetadataImage, broker_id: i32, settings: &LogicSettings) -> Vec<MetadataRecord> {
    if !is_live(image, broker_id) {
        return Vec::new();
    }
    let mut changes = Changes::new(image);
    changes.push(MetadataRecord::FenceBroker { broker_id });
    for (topic, index, p) in all_partitions(&changes.image) {
        if !p.isr.contains(&broker_id) && p.leader != broker_id {
            continue;
        }
        let mut next = p.clone();
        if p.isr.len() > 1 {
            next.isr.retain(|&r| r != broker_id);
        }
        if p.leader == broker_id || !is_live(&changes.image, next.leader) {
            next.leader = next.isr.iter().copied().find(|&r| is_live(&changes.image, r)).unwrap_or(NO_LEADER);
        }
        if next.leader == NO_LEADER && unclean_allowed(&changes.image, &topic, settings) {
            if let Some(r) = next.replicas.iter().copied().find(|&r| is_live(&changes.image, r)) {
                next.leader = r;
                next.isr = vec![r];
            }
        }
        if next.leader != p.leader {
            next.leader_epoch += 1;
        }
        if next != p {
            next.partition_epoch += 1;
            changes.change_partition(&topic, index, next);
        }
    }
    changes.records
}

/// Unfences `broker_id` (a heartbeat from a fenced broker) and gives it the partitions it can lead.
pub fn unfence(image: &MetadataImage, broker_id: i32, settings: &LogicSettings) -> Vec<MetadataRecord> {
    let mut changes = Changes::new(image);
    if image.brokers.get(&broker_id).is_some_and(|b| b.fenced) {
        changes.push(MetadataRecord::UnfenceBroker { broker_id });
    }
    elect_for_unfenced(&mut changes, broker_id, settings);
    changes.records
}

/// Leaderless partitions whose ISR holds the (now unfenced) broker get it as leader; with unclean
/// election allowed, leaderless partitions it merely replicates do too, with ISR reset to it.
fn elect_for_unfenced(changes: &mut Changes, broker_id: i32, settings: &LogicSettings) {
    if !is_live(&changes.image, broker_id) {
        return;
    }
    for (topic, index, p) in all_partitions(&changes.image) {
        if p.has_leader() || !p.replicas.contains(&broker_id) {
            continue;
        }
        let mut next = p.clone();
        if p.isr.contains(&broker_id) {
            next.leader = broker_id;
        } else if unclean_allowed(&changes.image, &topic, settings) {
            next.leader = broker_id;
            next.isr = vec![broker_id];
        } else {
            continue;
        }
        next.leader_epoch += 1;
        next.partition_epoch += 1;
        changes.change_partition(&topic, index, next);
    }
}

/// Preferred-leader election: where `replicas[0]` is in the ISR, unfenced and not the leader, it
/// becomes the leader.
pub fn preferred_leader_moves(image: &MetadataImage) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for (topic, index, p) in all_partitions(image) {
        let Some(&preferred) = p.replicas.first() else { continue };
        if p.leader != preferred && p.isr.contains(&preferred) && is_live(image, preferred) {
            let next = PartitionImage {
                leader: preferred,
                leader_epoch: p.leader_epoch + 1,
                partition_epoch: p.partition_epoch + 1,
                ..p
            };
            records.push(MetadataRecord::ChangePartition { topic, partition: index, state: next });
        }
    }
    records
}

fn alter_partition(
    image: &MetadataImage,
    broker_id: i32,
    topic: &str,
    partition: i32,
    leader_epoch: i32,
    partition_epoch: i32,
    new_isr: &[i32],
) -> Result<Decision, ControllerRefusal> {
    let Some(current) = image.partition(topic, partition) else {
        return Err(refusal(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION, format!("{topic}-{partition} does not exist")));
    };
    if current.leader != broker_id {
        return Err(refusal(
            ErrorCode::NOT_LEADER_OR_FOLLOWER,
            format!("broker {broker_id} is not the leader of {topic}-{partition} (leader is {})", current.leader),
        ));
    }
    if leader_epoch != current.leader_epoch {
        return Err(refusal(
            ErrorCode::FENCED_LEADER_EPOCH,
            format!("leader epoch {leader_epoch} of {topic}-{partition} is not the current {}", current.leader_epoch),
        ));
    }
    if partition_epoch != current.partition_epoch {
        return Err(refusal(
            INVALID_UPDATE_VERSION,
            format!(
                "partition epoch {partition_epoch} of {topic}-{partition} is not the current {}",
                current.partition_epoch
            ),
        ));
    }
    let mut dedup = new_isr.to_vec();
    dedup.sort_unstable();
    dedup.dedup();
    if !new_isr.contains(&broker_id)
        || dedup.len() != new_isr.len()
        || new_isr.iter().any(|r| !current.replicas.contains(r))
    {
        return Err(refusal(
            ErrorCode::INVALID_REQUEST,
            format!(
                "isr {new_isr:?} for {topic}-{partition} must hold the leader and distinct replicas of {:?}",
                current.replicas
            ),
        ));
    }
    if let Some(bad) = new_isr.iter().find(|r| !current.isr.contains(r) && !is_live(image, **r)) {
        return Err(refusal(
            INELIGIBLE_REPLICA,
            format!("broker {bad} is fenced and cannot join the isr of {topic}-{partition}"),
        ));
    }
    if new_isr == current.isr.as_slice() {
        return Ok(Decision { records: Vec::new(), reply: ControllerReply::Partition { state: current.clone() } });
    }
    let state =
        PartitionImage { isr: new_isr.to_vec(), partition_epoch: current.partition_epoch + 1, ..current.clone() };
    // An added replica joining the ISR may complete a reassignment.
    let state = complete_reassignment(image, state);
    Ok(Decision {
        records: vec![MetadataRecord::ChangePartition { topic: topic.to_string(), partition, state: state.clone() }],
        reply: ControllerReply::Partition { state },
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn settings() -> LogicSettings {
        LogicSettings { default_replication_factor: 1, unclean_leader_election_enable: false }
    }

    fn register(image: &mut MetadataImage, id: i32) {
        let req = ControllerRequest::RegisterBroker {
            broker_id: id,
            host: "127.0.0.1".into(),
            port: 9000 + id,
            incarnation_id: Uuid::from_u128(id as u128),
        };
        run(image, &req).unwrap();
    }

    fn run(image: &mut MetadataImage, req: &ControllerRequest) -> Result<ControllerReply, ControllerRefusal> {
        let d = decide(image, req, &settings(), Uuid::from_u128(99))?;
        apply_all(image, &d.records);
        Ok(d.reply)
    }

    /// The leader of `topic`-0 asks for `new_isr` (an AlterPartition in the current epochs).
    fn set_isr(image: &mut MetadataImage, topic: &str, new_isr: Vec<i32>) {
        let p = image.partition(topic, 0).unwrap().clone();
        let request = ControllerRequest::AlterPartition {
            broker_id: p.leader,
            topic: topic.into(),
            partition: 0,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            new_isr,
        };
        run(image, &request).unwrap();
    }

    fn fence_now(image: &mut MetadataImage, broker_id: i32, settings: &LogicSettings) {
        let records = fence(image, broker_id, settings);
        apply_all(image, &records);
    }

    fn apply_all(image: &mut MetadataImage, records: &[MetadataRecord]) {
        for r in records {
            apply_record(image, r);
        }
    }

    fn create(name: &str, partitions: i32, rf: i16) -> ControllerRequest {
        ControllerRequest::CreateTopic {
            name: name.into(),
            partitions,
            replication_factor: rf,
            configs: BTreeMap::new(),
            validate_only: false,
        }
    }

    fn cluster(n: i32) -> MetadataImage {
        let mut image = MetadataImage::default();
        for id in 1..=n {
            register(&mut image, id);
        }
        image
    }

    #[test]
    fn placement_spreads_leaders_and_sets_isr_to_replicas() {
        let mut image = cluster(3);
        assert_eq!(
            run(&mut image, &create("a", 6, 3)).unwrap(),
            ControllerReply::TopicCreated { id: Uuid::from_u128(99) }
        );
        let t = &image.topics["a"];
        let mut leaders = [0; 4];
        for p in &t.partitions {
            assert_eq!(p.replicas.len(), 3);
            let mut sorted = p.replicas.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![1, 2, 3]);
            assert_eq!(p.isr, p.replicas);
            assert_eq!(p.leader, p.replicas[0]);
            leaders[p.leader as usize] += 1;
        }
        assert_eq!(&leaders[1..], &[2, 2, 2]);
        // The start index depends on the topic: not every topic's partition 0 lands on broker 1.
        for name in ["b", "c", "d", "e", "f", "g"] {
            run(&mut image, &create(name, 1, 1)).unwrap();
        }
        let firsts: std::collections::BTreeSet<i32> = image.topics.values().map(|t| t.partitions[0].leader).collect();
        assert!(firsts.len() > 1, "{firsts:?}");
    }

    #[test]
    fn placement_skips_fenced_brokers() {
        let mut image = cluster(3);
        fence_now(&mut image, 2, &settings());
        run(&mut image, &create("a", 4, 2)).unwrap();
        assert!(image.topics["a"].partitions.iter().all(|p| !p.replicas.contains(&2)));
        assert_eq!(run(&mut image, &create("b", 1, 3)).unwrap_err().code, 38);
    }

    #[test]
    fn create_refusals_and_validate_only() {
        let mut image = cluster(2);
        assert_eq!(run(&mut image, &create("a", 1, 3)).unwrap_err().code, 38);
        assert_eq!(run(&mut image, &create("a", 0, 1)).unwrap_err().code, 37);
        let validate = ControllerRequest::CreateTopic {
            name: "a".into(),
            partitions: 1,
            replication_factor: -1,
            configs: BTreeMap::new(),
            validate_only: true,
        };
        let d = decide(&image, &validate, &settings(), Uuid::from_u128(1)).unwrap();
        assert!(d.records.is_empty());
        run(&mut image, &create("a", 1, -1)).unwrap();
        assert_eq!(image.topics["a"].partitions[0].replicas.len(), 1);
        assert_eq!(run(&mut image, &create("a", 1, 1)).unwrap_err().code, 36);
        let unknown = ControllerRequest::DeleteTopic { name: "zz".into() };
        assert_eq!(run(&mut image, &unknown).unwrap_err().code, 3);
        let grow = ControllerRequest::CreatePartitions { name: "zz".into(), total: 3, validate_only: false };
        assert_eq!(run(&mut image, &grow).unwrap_err().code, 3);
        let alter = ControllerRequest::AlterTopicConfigs { name: "zz".into(), configs: BTreeMap::new() };
        assert_eq!(run(&mut image, &alter).unwrap_err().code, 3);
    }

    #[test]
    fn create_partitions_appends_with_same_replication_factor() {
        let mut image = cluster(3);
        run(&mut image, &create("a", 2, 2)).unwrap();
        let shrink = ControllerRequest::CreatePartitions { name: "a".into(), total: 2, validate_only: false };
        assert_eq!(run(&mut image, &shrink).unwrap_err().code, 37);
        let grow = ControllerRequest::CreatePartitions { name: "a".into(), total: 5, validate_only: false };
        run(&mut image, &grow).unwrap();
        let t = &image.topics["a"];
        assert_eq!(t.partitions.len(), 5);
        assert!(t.partitions.iter().all(|p| p.replicas.len() == 2 && p.isr == p.replicas));
        run(&mut image, &ControllerRequest::DeleteTopic { name: "a".into() }).unwrap();
        assert!(image.topics.is_empty());
    }

    #[test]
    fn fencing_shrinks_isr_and_elects_next_unfenced() {
        let mut image = cluster(3);
        run(&mut image, &create("a", 3, 3)).unwrap();
        let before = image.topics["a"].partitions.clone();
        fence_now(&mut image, 1, &settings());
        assert!(image.brokers[&1].fenced);
        for (old, new) in before.iter().zip(&image.topics["a"].partitions) {
            assert!(!new.isr.contains(&1));
            assert_eq!(new.partition_epoch, old.partition_epoch + 1);
            if old.leader == 1 {
                let expected = old.isr.iter().copied().find(|&r| r != 1).unwrap();
                assert_eq!(new.leader, expected);
                assert_eq!(new.leader_epoch, old.leader_epoch + 1);
            } else {
                assert_eq!(new.leader, old.leader);
                assert_eq!(new.leader_epoch, old.leader_epoch);
            }
        }
        // Fencing a fenced broker is a no-op.
        assert!(fence(&image, 1, &settings()).is_empty());
    }

    #[test]
    fn last_isr_member_stays_leaderless_then_leads_again_on_unfence() {
        let mut image = cluster(2);
        run(&mut image, &create("a", 1, 2)).unwrap();
        let leader = image.topics["a"].partitions[0].leader;
        let other = if leader == 1 { 2 } else { 1 };
        fence_now(&mut image, other, &settings());
        fence_now(&mut image, leader, &settings());
        let p = image.partition("a", 0).unwrap().clone();
        assert_eq!(p.isr, vec![leader]);
        assert_eq!(p.leader, NO_LEADER);
        assert_eq!(p.leader_epoch, 1);
        // The out-of-sync replica coming back does not lead (clean election only).
        let hb =
            |id: i32| ControllerRequest::BrokerHeartbeat { broker_id: id, incarnation_id: Uuid::from_u128(id as u128) };
        assert_eq!(run(&mut image, &hb(other)).unwrap(), ControllerReply::Heartbeat { fenced: false });
        assert_eq!(image.partition("a", 0).unwrap().leader, NO_LEADER);
        run(&mut image, &hb(leader)).unwrap();
        let q = image.partition("a", 0).unwrap();
        assert_eq!(q.leader, leader);
        assert_eq!(q.leader_epoch, 2);
        assert_eq!(q.partition_epoch, p.partition_epoch + 1);
    }

    #[test]
    fn unclean_election_picks_a_live_replica() {
        let mut image = cluster(2);
        run(&mut image, &create("a", 1, 2)).unwrap();
        let leader = image.topics["a"].partitions[0].leader;
        let other = if leader == 1 { 2 } else { 1 };
        // ISR shrinks to the leader alone, then the leader is fenced.
        let p = image.partition("a", 0).unwrap().clone();
        let alter = ControllerRequest::AlterPartition {
            broker_id: leader,
            topic: "a".into(),
            partition: 0,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            new_isr: vec![leader],
        };
        run(&mut image, &alter).unwrap();
        let unclean = LogicSettings { unclean_leader_election_enable: true, ..settings() };
        fence_now(&mut image, leader, &unclean);
        let q = image.partition("a", 0).unwrap();
        assert_eq!((q.leader, q.isr.clone()), (other, vec![other]));
        // The topic override wins over the cluster default.
        let mut image = cluster(2);
        let mut configs = BTreeMap::new();
        configs.insert(UNCLEAN_LEADER_ELECTION_ENABLE.to_string(), "true".to_string());
        let req = ControllerRequest::CreateTopic {
            name: "b".into(),
            partitions: 1,
            replication_factor: 2,
            configs,
            validate_only: false,
        };
        run(&mut image, &req).unwrap();
        let p = image.partition("b", 0).unwrap().clone();
        let shrink = ControllerRequest::AlterPartition {
            broker_id: p.leader,
            topic: "b".into(),
            partition: 0,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            new_isr: vec![p.leader],
        };
        run(&mut image, &shrink).unwrap();
        fence_now(&mut image, p.leader, &settings());
        assert_ne!(image.partition("b", 0).unwrap().leader, NO_LEADER);
    }

    #[test]
    fn elect_leaders_preferred_and_unclean() {
        let mut image = cluster(3);
        run(&mut image, &create("a", 1, 3)).unwrap();
        let p = image.partition("a", 0).unwrap().clone();
        let preferred = p.replicas[0];
        let named = |unclean| ControllerRequest::ElectLeaders {
            unclean,
            partitions: Some(vec![("a".into(), 0), ("nope".into(), 0)]),
        };
        let codes = |reply: ControllerReply| match reply {
            ControllerReply::Elections { results } => results.iter().map(|r| ErrorCode(r.code)).collect::<Vec<_>>(),
            other => panic!("unexpected reply {other:?}"),
        };
        // Already led by the preferred replica; an unknown partition is named as such.
        assert_eq!(
            codes(run(&mut image, &named(false)).unwrap()),
            vec![ErrorCode::ELECTION_NOT_NEEDED, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION]
        );
        // The preferred leader is fenced: leadership moves; it comes back in sync and a
        // preferred election returns it, bumping the leader epoch.
        fence_now(&mut image, preferred, &settings());
        assert_ne!(image.partition("a", 0).unwrap().leader, preferred);
        assert_eq!(codes(run(&mut image, &named(false)).unwrap())[0], ErrorCode::PREFERRED_LEADER_NOT_AVAILABLE);
        let records = unfence(&image, preferred, &settings());
        apply_all(&mut image, &records);
        set_isr(&mut image, "a", p.replicas.clone());
        let before = image.partition("a", 0).unwrap().leader_epoch;
        // With no partitions named, only elections that happened are reported.
        let all = ControllerRequest::ElectLeaders { unclean: false, partitions: None };
        assert_eq!(codes(run(&mut image, &all).unwrap()), vec![ErrorCode::NONE]);
        let q = image.partition("a", 0).unwrap();
        assert_eq!((q.leader, q.leader_epoch), (preferred, before + 1));
        assert!(codes(run(&mut image, &all).unwrap()).is_empty());
        // Unclean: refused while a live leader exists; with every ISR member fenced, a live
        // out-of-sync replica is elected and becomes the ISR.
        assert_eq!(codes(run(&mut image, &named(true)).unwrap())[0], ErrorCode::ELECTION_NOT_NEEDED);
        let leader = image.partition("a", 0).unwrap().leader;
        set_isr(&mut image, "a", vec![leader]);
        fence_now(&mut image, preferred, &settings());
        assert_eq!(image.partition("a", 0).unwrap().leader, NO_LEADER);
        assert_eq!(codes(run(&mut image, &named(true)).unwrap())[0], ErrorCode::NONE);
        let q = image.partition("a", 0).unwrap();
        assert!(q.leader != NO_LEADER && q.leader != preferred);
        assert_eq!(q.isr, vec![q.leader]);
        // No live replica at all: ELIGIBLE_LEADERS_NOT_AVAILABLE.
        for b in p.replicas.iter().filter(|&&b| b != preferred) {
            fence_now(&mut image, *b, &settings());
        }
        assert_eq!(codes(run(&mut image, &named(true)).unwrap())[0], ErrorCode::ELIGIBLE_LEADERS_NOT_AVAILABLE);
    }

    #[test]
    fn controlled_shutdown_fences_the_current_incarnation_only() {
        let mut image = cluster(3);
        run(&mut image, &create("a", 3, 3)).unwrap();
        let stale = ControllerRequest::ControlledShutdown { broker_id: 1, incarnation_id: Uuid::from_u128(77) };
        assert_eq!(run(&mut image, &stale).unwrap_err().code, STALE_BROKER_EPOCH.0);
        let unknown = ControllerRequest::ControlledShutdown { broker_id: 9, incarnation_id: Uuid::from_u128(9) };
        assert_eq!(run(&mut image, &unknown).unwrap_err().code, BROKER_ID_NOT_REGISTERED.0);
        let incarnation_id = image.brokers[&1].incarnation_id;
        run(&mut image, &ControllerRequest::ControlledShutdown { broker_id: 1, incarnation_id }).unwrap();
        assert!(image.brokers[&1].fenced);
        for p in &image.topics["a"].partitions {
            assert_ne!(p.leader, 1);
            assert!(!p.isr.contains(&1), "{p:?}");
        }
    }

    #[test]
    fn dynamic_broker_configs_are_set_deleted_and_validated() {
        let mut image = cluster(2);
        let alter = |set: &[(&str, &str)], delete: &[&str]| ControllerRequest::AlterBrokerConfigs {
            broker_id: 2,
            set: set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            delete: delete.iter().map(|k| k.to_string()).collect(),
            validate_only: false,
        };
        const RATE: &str = "follower.replication.throttled.rate";
        run(&mut image, &alter(&[(RATE, "1048576")], &[])).unwrap();
        assert_eq!(image.broker_configs[&2][RATE], "1048576");
        for bad in [alter(&[(RATE, "fast")], &[]), alter(&[(RATE, "0")], &[]), alter(&[("log.retention.ms", "1")], &[])]
        {
            assert_eq!(run(&mut image, &bad).unwrap_err().code, ErrorCode::INVALID_CONFIG.0);
        }
        assert_eq!(image.broker_configs[&2][RATE], "1048576");
        run(&mut image, &alter(&[], &[RATE])).unwrap();
        assert!(image.broker_configs.is_empty());
    }

    #[test]
    fn unregister_refuses_running_brokers_and_hosts_of_replicas() {
        let mut image = cluster(3);
        run(&mut image, &create("a", 1, 1)).unwrap();
        let host = image.partition("a", 0).unwrap().replicas[0];
        let idle = (1..=3).find(|b| *b != host).unwrap();
        let unregister = |id| ControllerRequest::UnregisterBroker { broker_id: id };
        assert_eq!(run(&mut image, &unregister(9)).unwrap_err().code, BROKER_ID_NOT_REGISTERED.0);
        let running = run(&mut image, &unregister(idle)).unwrap_err();
        assert!(running.message.contains("running"), "{running:?}");
        fence_now(&mut image, host, &settings());
        let hosting = run(&mut image, &unregister(host)).unwrap_err();
        assert!(hosting.message.contains("a-0"), "{hosting:?}");
        fence_now(&mut image, idle, &settings());
        run(&mut image, &unregister(idle)).unwrap();
        assert!(!image.brokers.contains_key(&idle));
        assert_eq!(image.brokers.len(), 2);
    }

    #[test]
    fn reassignment_adds_then_completes_or_cancels() {
        let mut image = cluster(4);
        run(&mut image, &create("a", 1, 2)).unwrap();
        let p = image.partition("a", 0).unwrap().clone();
        let (keep, gone) = (p.replicas[0], p.replicas[1]);
        let new = (1..=4).find(|b| !p.replicas.contains(b)).unwrap();
        let move_to = |target: Option<Vec<i32>>| ControllerRequest::AlterPartitionReassignments {
            reassignments: vec![("a".into(), 0, target), ("nope".into(), 0, Some(vec![1]))],
        };
        let codes = |reply: ControllerReply| match reply {
            ControllerReply::Elections { results } => results.iter().map(|r| ErrorCode(r.code)).collect::<Vec<_>>(),
            other => panic!("unexpected reply {other:?}"),
        };
        // Bad targets are refused.
        for bad in [vec![], vec![keep, keep], vec![keep, 99]] {
            let c = codes(run(&mut image, &move_to(Some(bad))).unwrap());
            assert_eq!(c[0], ErrorCode::INVALID_REPLICA_ASSIGNMENT);
            assert_eq!(c[1], ErrorCode::UNKNOWN_TOPIC_OR_PARTITION);
        }
        assert_eq!(codes(run(&mut image, &move_to(None)).unwrap())[0], NO_REASSIGNMENT_IN_PROGRESS);
        // [keep, gone] -> [new, keep]: new is added (not in sync yet), gone is being removed.
        assert_eq!(codes(run(&mut image, &move_to(Some(vec![new, keep]))).unwrap())[0], ErrorCode::NONE);
        let q = image.partition("a", 0).unwrap().clone();
        assert_eq!(q.replicas, vec![new, keep, gone]);
        assert_eq!((q.adding_replicas.clone(), q.removing_replicas.clone()), (vec![new], vec![gone]));
        assert!(!q.isr.contains(&new));
        // Cancel: back to the replicas before it.
        run(&mut image, &move_to(None)).unwrap();
        let c = image.partition("a", 0).unwrap().clone();
        assert_eq!((c.replicas.clone(), c.is_reassigning()), (vec![keep, gone], false));
        // Again, and this time the added replica catches up: the leader adds it to the ISR,
        // which completes the move (gone leaves replicas and ISR; the leader stays if kept).
        run(&mut image, &move_to(Some(vec![new, keep]))).unwrap();
        let isr = image.partition("a", 0).unwrap().isr.clone();
        set_isr(&mut image, "a", isr.into_iter().chain([new]).collect());
        let done = image.partition("a", 0).unwrap().clone();
        assert_eq!(done.replicas, vec![new, keep]);
        assert!(!done.is_reassigning());
        assert!(!done.isr.contains(&gone) && done.isr.contains(&new), "{done:?}");
        assert!(done.replicas.contains(&done.leader));
        // A move off the leader elects a leader inside the target, in a new epoch.
        let leader = done.leader;
        let other = *done.replicas.iter().find(|&&r| r != leader).unwrap();
        run(&mut image, &move_to(Some(vec![other]))).unwrap();
        let last = image.partition("a", 0).unwrap().clone();
        assert_eq!((last.replicas.clone(), last.leader), (vec![other], other));
        assert_eq!(last.leader_epoch, done.leader_epoch + 1);
    }

    #[test]
    fn alter_partition_validation() {
        let mut image = cluster(3);
        run(&mut image, &create("a", 1, 3)).unwrap();
        let p = image.partition("a", 0).unwrap().clone();
        let follower = p.replicas[1];
        let req = |broker_id: i32, le: i32, pe: i32, isr: Vec<i32>| ControllerRequest::AlterPartition {
            broker_id,
            topic: "a".into(),
            partition: 0,
            leader_epoch: le,
            partition_epoch: pe,
            new_isr: isr,
        };
        let shrunk = vec![p.leader, p.replicas[2]];
        assert_eq!(run(&mut image, &req(follower, 0, 0, shrunk.clone())).unwrap_err().code, 6);
        assert_eq!(run(&mut image, &req(p.leader, 1, 0, shrunk.clone())).unwrap_err().code, 74);
        assert_eq!(run(&mut image, &req(p.leader, 0, 5, shrunk.clone())).unwrap_err().code, 95);
        assert_eq!(run(&mut image, &req(p.leader, 0, 0, vec![follower])).unwrap_err().code, 42);
        assert_eq!(run(&mut image, &req(p.leader, 0, 0, vec![p.leader, 77])).unwrap_err().code, 42);
        let reply = run(&mut image, &req(p.leader, 0, 0, shrunk.clone())).unwrap();
        let q = image.partition("a", 0).unwrap().clone();
        assert_eq!(reply, ControllerReply::Partition { state: q.clone() });
        assert_eq!((q.isr.clone(), q.leader_epoch, q.partition_epoch), (shrunk, 0, 1));
        // Re-adding a fenced broker is refused; an unfenced one is accepted.
        fence_now(&mut image, follower, &settings());
        let q = image.partition("a", 0).unwrap().clone();
        let full = p.replicas.clone();
        let err = run(&mut image, &req(p.leader, q.leader_epoch, q.partition_epoch, full.clone())).unwrap_err();
        assert_eq!(err.code, 107);
        let hb = ControllerRequest::BrokerHeartbeat {
            broker_id: follower,
            incarnation_id: Uuid::from_u128(follower as u128),
        };
        run(&mut image, &hb).unwrap();
        run(&mut image, &req(p.leader, q.leader_epoch, q.partition_epoch, full.clone())).unwrap();
        assert_eq!(image.partition("a", 0).unwrap().isr, full);
    }

    #[test]
    fn preferred_leader_returns_when_in_sync() {
        let mut image = cluster(2);
        run(&mut image, &create("a", 1, 2)).unwrap();
        let p = image.partition("a", 0).unwrap().clone();
        let preferred = p.replicas[0];
        fence_now(&mut image, preferred, &settings());
        assert!(preferred_leader_moves(&image).is_empty(), "fenced preferred leader must not move back");
        let hb = ControllerRequest::BrokerHeartbeat {
            broker_id: preferred,
            incarnation_id: Uuid::from_u128(preferred as u128),
        };
        run(&mut image, &hb).unwrap();
        assert!(preferred_leader_moves(&image).is_empty(), "preferred leader not in the isr yet");
        let q = image.partition("a", 0).unwrap().clone();
        let expand = ControllerRequest::AlterPartition {
            broker_id: q.leader,
            topic: "a".into(),
            partition: 0,
            leader_epoch: q.leader_epoch,
            partition_epoch: q.partition_epoch,
            new_isr: vec![q.leader, preferred],
        };
        run(&mut image, &expand).unwrap();
        let moves = preferred_leader_moves(&image);
        assert_eq!(moves.len(), 1);
        apply_all(&mut image, &moves);
        let r = image.partition("a", 0).unwrap();
        assert_eq!(r.leader, preferred);
        assert_eq!(r.leader_epoch, q.leader_epoch + 1);
        assert!(preferred_leader_moves(&image).is_empty());
    }

    #[test]
    fn heartbeat_refusals() {
        let mut image = cluster(1);
        let unknown = ControllerRequest::BrokerHeartbeat { broker_id: 5, incarnation_id: Uuid::nil() };
        assert_eq!(run(&mut image, &unknown).unwrap_err().code, 102);
        let stale = ControllerRequest::BrokerHeartbeat { broker_id: 1, incarnation_id: Uuid::nil() };
        assert_eq!(run(&mut image, &stale).unwrap_err().code, 77);
        // Re-registering the same incarnation writes nothing.
        let again = ControllerRequest::RegisterBroker {
            broker_id: 1,
            host: "127.0.0.1".into(),
            port: 9001,
            incarnation_id: Uuid::from_u128(1),
        };
        assert!(decide(&image, &again, &settings(), Uuid::nil()).unwrap().records.is_empty());
    }

    #[test]
    fn a_restarted_broker_loses_leadership_and_shared_isr_places() {
        let mut image = cluster(3);
        run(&mut image, &create("a", 1, 3)).unwrap();
        let before = image.partition("a", 0).unwrap().clone();
        let leader = before.leader;
        let restart = ControllerRequest::RegisterBroker {
            broker_id: leader,
            host: "127.0.0.1".into(),
            port: 9000 + leader,
            incarnation_id: Uuid::from_u128(1000),
        };
        run(&mut image, &restart).unwrap();
        let after = image.partition("a", 0).unwrap();
        assert_ne!(after.leader, leader);
        assert!(after.leader_epoch > before.leader_epoch);
        assert!(!after.isr.contains(&leader), "{after:?}");
        assert!(!image.brokers[&leader].fenced);
        assert_eq!(image.brokers[&leader].incarnation_id, Uuid::from_u128(1000));
    }

    #[test]
    fn forwarded_topics_get_the_brokers_checks() {
        let mut image = cluster(1);
        let mut bad_name = create("../outside", 1, 1);
        assert_eq!(run(&mut image, &bad_name).unwrap_err().code, ErrorCode::INVALID_TOPIC_EXCEPTION.0);
        if let ControllerRequest::CreateTopic { name, configs, .. } = &mut bad_name {
            *name = "fine".into();
            configs.insert("retention.ms".into(), "soon".into());
        }
        assert_eq!(run(&mut image, &bad_name).unwrap_err().code, ErrorCode::INVALID_CONFIG.0);
        assert_eq!(run(&mut image, &create("big", MAX_PARTITIONS_PER_TOPIC + 1, 1)).unwrap_err().code, 37);
        assert!(image.topics.is_empty());
    }

    #[test]
    fn producer_id_blocks_are_monotone() {
        let mut image = cluster(1);
        let req = |count| ControllerRequest::AllocateProducerIds { broker_id: 1, count };
        assert_eq!(run(&mut image, &req(10)).unwrap(), ControllerReply::ProducerIds { first_id: 0, count: 10 });
        assert_eq!(run(&mut image, &req(5)).unwrap(), ControllerReply::ProducerIds { first_id: 10, count: 5 });
        assert_eq!(run(&mut image, &req(0)).unwrap_err().code, 42);
        assert_eq!(image.next_producer_id, 15);
    }
}

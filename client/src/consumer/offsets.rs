//! Committed offsets: building OffsetCommit (v2–8) and OffsetFetch (v1–8, multi-group from
//! v8) requests and reading their answers. Sans-IO; the consumer sends them to the group
//! coordinator.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::metadata::TopicPartition;
use crate::protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use crate::protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use crate::protocol::messages::{
    GroupId, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use crate::protocol::{str_bytes, ErrorCode};

/// A committed offset: the next offset to consume, with the leader epoch of the record before
/// it when known and free-form metadata (Kafka's `OffsetAndMetadata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetAndMetadata {
    pub offset: i64,
    pub leader_epoch: Option<i32>,
    pub metadata: Option<String>,
}

impl OffsetAndMetadata {
    pub fn new(offset: i64) -> Self {
        OffsetAndMetadata { offset, leader_epoch: None, metadata: None }
    }
}

/// Who commits: the generation and member id of a group member, or `(-1, "")` for a consumer
/// that only uses the group for offsets (manual assignment), which Kafka accepts while the
/// group has no members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Committer<'a> {
    pub group_id: &'a str,
    pub generation_id: i32,
    pub member_id: &'a str,
    pub group_instance_id: Option<&'a str>,
}

fn group_by_topic<V>(entries: impl IntoIterator<Item = (TopicPartition, V)>) -> BTreeMap<String, Vec<(i32, V)>> {
    let mut out: BTreeMap<String, Vec<(i32, V)>> = BTreeMap::new();
    for (tp, v) in entries {
        out.entry(tp.topic).or_default().push((tp.partition, v));
    }
    out
}

pub(crate) fn commit_request(
    version: i16,
    who: &Committer<'_>,
    offsets: &BTreeMap<TopicPartition, OffsetAndMetadata>,
) -> OffsetCommitRequest {
    let topics = group_by_topic(offsets.iter().map(|(tp, o)| (tp.clone(), o)))
        .into_iter()
        .map(|(topic, partitions)| {
            OffsetCommitRequestTopic::default().with_name(TopicName(str_bytes(topic))).with_partitions(
                partitions
                    .into_iter()
                    .map(|(p, o)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(o.offset)
                            .with_committed_leader_epoch(if version >= 6 { o.leader_epoch.unwrap_or(-1) } else { -1 })
                            .with_committed_metadata(Some(str_bytes(o.metadata.clone().unwrap_or_default())))
                    })
                    .collect(),
            )
        })
        .collect();
    OffsetCommitRequest::default()
        .with_group_id(GroupId(str_bytes(who.group_id)))
        .with_generation_id_or_member_epoch(who.generation_id)
        .with_member_id(str_bytes(who.member_id))
        .with_group_instance_id(if version >= 7 { who.group_instance_id.map(str_bytes) } else { None })
        // -1: the broker's offsets.retention.minutes (v2–4 carry the field).
        .with_retention_time_ms(-1)
        .with_topics(topics)
}

/// How a commit failed, worst first, and what the consumer does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommitFailure {
    /// The member is no longer in this generation (the group rebalanced without it or it was
    /// fenced): the commit cannot succeed; rejoin.
    Fenced {
        reset_member_id: bool,
    },
    /// A rebalance is in progress: rejoin, then the partitions may be elsewhere.
    Rebalancing,
    /// Find the coordinator again and retry.
    CoordinatorLost,
    /// Retry as is.
    Retriable,
    Fatal,
}

/// Reads an OffsetCommit answer: `Ok` when every partition committed, else the first error
/// with its classification.
pub(crate) fn commit_result(group_id: &str, response: &OffsetCommitResponse) -> Result<(), (Error, CommitFailure)> {
    let mut worst: Option<(ErrorCode, String)> = None;
    for topic in &response.topics {
        for p in &topic.partitions {
            let code = ErrorCode(p.error_code);
            if !code.is_ok() && worst.is_none() {
                worst = Some((code, format!("{}-{}", topic.name.0.as_str(), p.partition_index)));
            }
        }
    }
    let Some((code, tp)) = worst else { return Ok(()) };
    let failure = match code {
        ErrorCode::UNKNOWN_MEMBER_ID => CommitFailure::Fenced { reset_member_id: true },
        ErrorCode::ILLEGAL_GENERATION | ErrorCode::FENCED_INSTANCE_ID => {
            CommitFailure::Fenced { reset_member_id: false }
        }
        ErrorCode::REBALANCE_IN_PROGRESS => CommitFailure::Rebalancing,
        ErrorCode::COORDINATOR_NOT_AVAILABLE | ErrorCode::NOT_COORDINATOR => CommitFailure::CoordinatorLost,
        ErrorCode::COORDINATOR_LOAD_IN_PROGRESS | ErrorCode::REQUEST_TIMED_OUT => CommitFailure::Retriable,
        _ => CommitFailure::Fatal,
    };
    let context = match failure {
        CommitFailure::Fenced { .. } | CommitFailure::Rebalancing => format!(
            "offset commit of {tp} for group {group_id}: the group rebalanced and the partitions may have moved to another member"
        ),
        _ => format!("offset commit of {tp} for group {group_id}"),
    };
    Err((Error::broker(code, context), failure))
}

/// `require_stable` (v7+) asks the coordinator to answer UNSTABLE_OFFSET_COMMIT (retried) rather
/// than an offset whose transactional commit is still pending.
pub(crate) fn fetch_request(
    version: i16,
    group_id: &str,
    partitions: &[TopicPartition],
    require_stable: bool,
) -> OffsetFetchRequest {
    let grouped = group_by_topic(partitions.iter().map(|tp| (tp.clone(), ())));
    if version >= 8 {
        let topics = grouped
            .into_iter()
            .map(|(t, ps)| {
                OffsetFetchRequestTopics::default()
                    .with_name(TopicName(str_bytes(t)))
                    .with_partition_indexes(ps.into_iter().map(|(p, _)| p).collect())
            })
            .collect();
        OffsetFetchRequest::default()
            .with_groups(vec![OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(str_bytes(group_id)))
                .with_topics(Some(topics))])
            .with_require_stable(require_stable)
    } else {
        let topics = grouped
            .into_iter()
            .map(|(t, ps)| {
                OffsetFetchRequestTopic::default()
                    .with_name(TopicName(str_bytes(t)))
                    .with_partition_indexes(ps.into_iter().map(|(p, _)| p).collect())
            })
            .collect();
        OffsetFetchRequest::default()
            .with_group_id(GroupId(str_bytes(group_id)))
            .with_topics(Some(topics))
            .with_require_stable(require_stable && version >= 7)
    }
}

/// Whether an OffsetFetch error means "ask the coordinator again": `Some(true)` to look the
/// coordinator up first, `Some(false)` to retry as is, `None` when it is not retriable.
pub(crate) fn fetch_retry(code: ErrorCode) -> Option<bool> {
    match code {
        ErrorCode::COORDINATOR_NOT_AVAILABLE | ErrorCode::NOT_COORDINATOR => Some(true),
        ErrorCode::COORDINATOR_LOAD_IN_PROGRESS | ErrorCode::UNSTABLE_OFFSET_COMMIT => Some(false),
        _ => None,
    }
}

/// Reads an OffsetFetch answer: the committed offset of each partition asked for (`None`
/// when the group has none), or the first error.
pub(crate) fn fetch_result(
    version: i16,
    group_id: &str,
    response: &OffsetFetchResponse,
) -> Result<BTreeMap<TopicPartition, Option<OffsetAndMetadata>>, ErrorCode> {
    let mut out = BTreeMap::new();
    let mut add = |topic: &str, partition: i32, offset: i64, epoch: i32, metadata: Option<String>, code: i16| {
        let code = ErrorCode(code);
        if !code.is_ok() {
            return Err(code);
        }
        let committed = (offset >= 0).then(|| OffsetAndMetadata {
            offset,
            leader_epoch: (epoch >= 0).then_some(epoch),
            metadata: metadata.filter(|m| !m.is_empty()),
        });
        out.insert(TopicPartition::new(topic, partition), committed);
        Ok(())
    };
    if version >= 8 {
        let group = response
            .groups
            .iter()
            .find(|g| g.group_id.0.as_str() == group_id)
            .ok_or(ErrorCode::UNKNOWN_SERVER_ERROR)?;
        if !ErrorCode(group.error_code).is_ok() {
            return Err(ErrorCode(group.error_code));
        }
        for t in &group.topics {
            for p in &t.partitions {
                let metadata = p.metadata.as_ref().map(|m| m.to_string());
                add(
                    t.name.0.as_str(),
                    p.partition_index,
                    p.committed_offset,
                    p.committed_leader_epoch,
                    metadata,
                    p.error_code,
                )?;
            }
        }
    } else {
        if version >= 2 && !ErrorCode(response.error_code).is_ok() {
            return Err(ErrorCode(response.error_code));
        }
        for t in &response.topics {
            for p in &t.partitions {
                let metadata = p.metadata.as_ref().map(|m| m.to_string());
                add(
                    t.name.0.as_str(),
                    p.partition_index,
                    p.committed_offset,
                    p.committed_leader_epoch,
                    metadata,
                    p.error_code,
                )?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
    use crate::protocol::messages::offset_fetch_response::{
        OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
        OffsetFetchResponseTopic, OffsetFetchResponseTopics,
    };
    use crate::protocol::{decode_body, encode_request, ApiKey};
    use bytes::BytesMut;

    fn who() -> Committer<'static> {
        Committer { group_id: "g", generation_id: 4, member_id: "m-1", group_instance_id: Some("i") }
    }

    #[test]
    fn commit_requests_encode_in_every_version() {
        let mut offsets = BTreeMap::new();
        offsets.insert(TopicPartition::new("b", 1), OffsetAndMetadata::new(10));
        offsets.insert(
            TopicPartition::new("a", 0),
            OffsetAndMetadata { offset: 5, leader_epoch: Some(2), metadata: Some("x".into()) },
        );
        for version in 2..=8 {
            let req = commit_request(version, &who(), &offsets);
            let mut buf = BytesMut::new();
            encode_request(ApiKey::OffsetCommit, version, 1, Some("c"), &req, &mut buf)
                .unwrap_or_else(|e| panic!("v{version}: {e}"));
            assert_eq!(req.topics.len(), 2);
            assert_eq!(req.topics[0].name.0.as_str(), "a");
            let a0 = &req.topics[0].partitions[0];
            assert_eq!(a0.committed_offset, 5);
            assert_eq!(a0.committed_leader_epoch, if version >= 6 { 2 } else { -1 });
            assert_eq!(req.group_instance_id.is_some(), version >= 7);
        }
    }

    #[test]
    fn commit_errors_are_classified() {
        let resp = |code: ErrorCode| {
            OffsetCommitResponse::default().with_topics(vec![OffsetCommitResponseTopic::default()
                .with_name(TopicName(str_bytes("t")))
                .with_partitions(vec![
                    OffsetCommitResponsePartition::default().with_partition_index(0),
                    OffsetCommitResponsePartition::default().with_partition_index(1).with_error_code(code.0),
                ])])
        };
        assert!(commit_result("g", &resp(ErrorCode::NONE)).is_ok());
        let (err, failure) = commit_result("g", &resp(ErrorCode::ILLEGAL_GENERATION)).unwrap_err();
        assert_eq!(failure, CommitFailure::Fenced { reset_member_id: false });
        assert_eq!(err.code(), Some(ErrorCode::ILLEGAL_GENERATION));
        assert!(err.to_string().contains("t-1"), "{err}");
        assert_eq!(
            commit_result("g", &resp(ErrorCode::UNKNOWN_MEMBER_ID)).unwrap_err().1,
            CommitFailure::Fenced { reset_member_id: true }
        );
        assert_eq!(
            commit_result("g", &resp(ErrorCode::REBALANCE_IN_PROGRESS)).unwrap_err().1,
            CommitFailure::Rebalancing
        );
        assert_eq!(
            commit_result("g", &resp(ErrorCode::NOT_COORDINATOR)).unwrap_err().1,
            CommitFailure::CoordinatorLost
        );
        assert_eq!(
            commit_result("g", &resp(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION)).unwrap_err().1,
            CommitFailure::Fatal
        );
    }

    #[test]
    fn fetch_requests_use_the_group_array_from_v8() {
        let tps = [TopicPartition::new("a", 0), TopicPartition::new("a", 2), TopicPartition::new("b", 1)];
        for version in 1..=8 {
            let req = fetch_request(version, "g", &tps, version >= 7);
            let mut buf = BytesMut::new();
            encode_request(ApiKey::OffsetFetch, version, 1, Some("c"), &req, &mut buf)
                .unwrap_or_else(|e| panic!("v{version}: {e}"));
            if version >= 8 {
                assert_eq!(req.groups.len(), 1);
                assert_eq!(req.groups[0].topics.as_ref().unwrap()[0].partition_indexes, vec![0, 2]);
            } else {
                assert_eq!(req.group_id.0.as_str(), "g");
                assert_eq!(req.topics.as_ref().unwrap().len(), 2);
            }
            // The broker's side decodes what we sent, whole.
            let mut bytes = buf.freeze().split_off(4);
            let (_, header) = crate::protocol::decode_request_header(&mut bytes).unwrap();
            assert_eq!(header.request_api_version, version);
            let decoded: OffsetFetchRequest = decode_body("offset fetch", &mut bytes, version).unwrap();
            assert_eq!(decoded, req);
            assert!(bytes.is_empty());
        }
    }

    #[test]
    fn fetch_results_read_both_layouts() {
        let v7 = OffsetFetchResponse::default().with_topics(vec![OffsetFetchResponseTopic::default()
            .with_name(TopicName(str_bytes("t")))
            .with_partitions(vec![
                OffsetFetchResponsePartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(42)
                    .with_committed_leader_epoch(3),
                OffsetFetchResponsePartition::default().with_partition_index(1).with_committed_offset(-1),
            ])]);
        let got = fetch_result(7, "g", &v7).unwrap();
        assert_eq!(
            got[&TopicPartition::new("t", 0)],
            Some(OffsetAndMetadata { offset: 42, leader_epoch: Some(3), metadata: None })
        );
        assert_eq!(got[&TopicPartition::new("t", 1)], None);

        let v8 = OffsetFetchResponse::default().with_groups(vec![OffsetFetchResponseGroup::default()
            .with_group_id(GroupId(str_bytes("g")))
            .with_topics(vec![OffsetFetchResponseTopics::default()
                .with_name(TopicName(str_bytes("t")))
                .with_partitions(vec![OffsetFetchResponsePartitions::default()
                    .with_partition_index(2)
                    .with_committed_offset(7)
                    .with_metadata(Some(str_bytes("meta")))])])]);
        let got = fetch_result(8, "g", &v8).unwrap();
        assert_eq!(got[&TopicPartition::new("t", 2)].as_ref().unwrap().metadata.as_deref(), Some("meta"));

        let failed = OffsetFetchResponse::default().with_error_code(ErrorCode::NOT_COORDINATOR.0);
        assert_eq!(fetch_result(5, "g", &failed), Err(ErrorCode::NOT_COORDINATOR));
        assert_eq!(fetch_retry(ErrorCode::NOT_COORDINATOR), Some(true));
        assert_eq!(fetch_retry(ErrorCode::COORDINATOR_LOAD_IN_PROGRESS), Some(false));
        assert_eq!(fetch_retry(ErrorCode::GROUP_AUTHORIZATION_FAILED), None);
    }
}

//! OffsetForLeaderEpoch (key 23, KIP-101/279): the end offset of a leader epoch in the
//! leader's log, from its leader-epoch cache. A follower asks it before fetching in a new
//! epoch, to find where its log diverged; consumers use it to detect truncation (KIP-320).
//!
//! Versions 2–4 (`kafka-protocol` 0.18 implements no others; Kafka 4 removed 0 and 1 as well).
//! Only the leader answers: another replica says NOT_LEADER_OR_FOLLOWER, and a
//! `current_leader_epoch` older than the partition's is FENCED_LEADER_EPOCH (newer:
//! UNKNOWN_LEADER_EPOCH).

use std::sync::Arc;

use bytes::Bytes;
use spate_client::protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use spate_client::protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use spate_client::protocol::ErrorCode;
use spate_client::ProtocolError;

use super::{decode, Reply, RequestContext};
use crate::broker::Broker;
use crate::log::epoch_cache::{UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET};
use crate::partition::Partition;

/// Bound on partitions in one request, as for Fetch.
const MAX_PARTITIONS_PER_REQUEST: usize = 10_000;

pub(super) fn handle(broker: &Arc<Broker>, ctx: &RequestContext, body: &mut Bytes) -> Result<Reply, ProtocolError> {
    let request: OffsetForLeaderEpochRequest = decode("OffsetForLeaderEpoch request", ctx, body)?;
    let response = answer(&request, &|topic, partition| broker.partition(topic, partition))?;
    Ok(Reply::Now(ctx.respond(&response)))
}

/// Answers every partition of `request` from the local partitions `lookup` finds.
pub(crate) fn answer(
    request: &OffsetForLeaderEpochRequest,
    lookup: &dyn Fn(&str, i32) -> Option<Arc<Partition>>,
) -> Result<OffsetForLeaderEpochResponse, ProtocolError> {
    let partition_count: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    if partition_count > MAX_PARTITIONS_PER_REQUEST {
        return Err(ProtocolError::Malformed {
            what: "OffsetForLeaderEpoch request",
            reason: format!("{partition_count} partitions exceed the limit of {MAX_PARTITIONS_PER_REQUEST}"),
        });
    }
    let topics = request
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let result = match lookup(t.topic.as_str(), p.partition) {
                        None => Err(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION),
                        Some(partition) => partition
                            .offset_for_leader_epoch(p.current_leader_epoch, p.leader_epoch)
                            .map_err(|e| e.code()),
                    };
                    let (code, (leader_epoch, end_offset)) = match result {
                        Ok(found) => (ErrorCode::NONE, found),
                        Err(code) => (code, (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)),
                    };
                    EpochEndOffset::default()
                        .with_error_code(code.0)
                        .with_partition(p.partition)
                        .with_leader_epoch(leader_epoch)
                        .with_end_offset(end_offset)
                })
                .collect();
            OffsetForLeaderTopicResult::default().with_topic(t.topic.clone()).with_partitions(partitions)
        })
        .collect();
    Ok(OffsetForLeaderEpochResponse::default().with_topics(topics))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use spate_client::protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    use spate_client::protocol::messages::{BrokerId, TopicName};
    use spate_client::protocol::{self, str_bytes, ApiKey};

    use super::*;
    use crate::partition::TopicPartition;
    use crate::replica::fetcher::{self, FetchState};
    use crate::replica::test_support::*;
    use crate::replica::MarkDirty;

    fn request(current_leader_epoch: i32, leader_epoch: i32) -> OffsetForLeaderEpochRequest {
        let p = OffsetForLeaderPartition::default()
            .with_partition(0)
            .with_current_leader_epoch(current_leader_epoch)
            .with_leader_epoch(leader_epoch);
        let missing = OffsetForLeaderPartition::default().with_partition(9).with_leader_epoch(leader_epoch);
        OffsetForLeaderEpochRequest::default().with_replica_id(BrokerId(2)).with_topics(vec![
            OffsetForLeaderTopic::default().with_topic(TopicName(str_bytes(TOPIC))).with_partitions(vec![p, missing]),
        ])
    }

    fn lookup(partition: &Arc<Partition>) -> impl Fn(&str, i32) -> Option<Arc<Partition>> + '_ {
        move |topic, index| (topic == TOPIC && index == 0).then(|| partition.clone())
    }

    #[test]
    fn answers_from_the_leaders_epoch_cache() {
        let dir = tempfile::tempdir().unwrap();
        let leader = open(dir.path(), 1);
        leader.make_leader(&image(&[1, 2], &[1, 2], 1, 1, 1), None, 0).unwrap();
        produce(&leader, &["a", "b"], None);
        leader.make_leader(&image(&[1, 2], &[1, 2], 1, 3, 2), None, 0).unwrap();
        produce(&leader, &["c"], None);

        // The request survives the wire (bounds walk and decoder) at every version.
        for version in 2..=4 {
            let mut frame = bytes::BytesMut::new();
            protocol::encode_request(ApiKey::OffsetForLeaderEpoch, version, 1, Some("t"), &request(3, 1), &mut frame)
                .unwrap();
            let mut frame = frame.freeze().slice(4..);
            protocol::decode_request_header(&mut frame).unwrap();
            let decoded: OffsetForLeaderEpochRequest =
                protocol::decode_request_body("test", ApiKey::OffsetForLeaderEpoch, &mut frame, version).unwrap();
            assert_eq!(decoded.topics, request(3, 1).topics, "v{version}");
            if version >= 3 {
                assert_eq!(decoded.replica_id.0, 2, "v{version}");
            }
        }

        let answer_for = |current, epoch| {
            let response = answer(&request(current, epoch), &lookup(&leader)).unwrap();
            let parts = &response.topics[0].partitions;
            assert_eq!(parts[1].error_code, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION.0);
            (ErrorCode(parts[0].error_code), parts[0].leader_epoch, parts[0].end_offset)
        };
        assert_eq!(answer_for(3, 1), (ErrorCode::NONE, 1, 2));
        assert_eq!(answer_for(-1, 2), (ErrorCode::NONE, 1, 2), "epoch 2 never led here");
        assert_eq!(answer_for(3, 3), (ErrorCode::NONE, 3, 3));
        assert_eq!(answer_for(3, 4), (ErrorCode::NONE, UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET));
        assert_eq!(answer_for(2, 1).0, ErrorCode::FENCED_LEADER_EPOCH);
        assert_eq!(answer_for(4, 1).0, ErrorCode::UNKNOWN_LEADER_EPOCH);
        leader.make_follower(&image(&[1, 2], &[1, 2], 2, 4, 3));
        assert_eq!(answer_for(4, 1).0, ErrorCode::NOT_LEADER_OR_FOLLOWER);
        // A client ahead of this broker's metadata is told to retry here, not to go elsewhere.
        assert_eq!(answer_for(5, 1).0, ErrorCode::UNKNOWN_LEADER_EPOCH);
    }

    /// One fetcher round for `follower` against `leader`, through the real request builders,
    /// the broker's handlers and the fetcher's response handling: truncation first if
    /// pending, otherwise one fetch.
    async fn round(leader: &Arc<Partition>, states: &mut BTreeMap<TopicPartition, FetchState>, node_id: i32) {
        let config = replica_config(node_id);
        let mark_dirty: MarkDirty = Arc::new(|_: &Arc<Partition>| {});
        let now = 1_000;
        let tp = TopicPartition { topic: TOPIC.into(), partition: 0 };
        let state = states.get_mut(&tp).unwrap();
        if state.truncation_pending {
            let latest = state.partition.latest_cached_epoch().unwrap_or(UNDEFINED_EPOCH);
            let p = OffsetForLeaderPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(state.leader_epoch)
                .with_leader_epoch(latest);
            let request = OffsetForLeaderEpochRequest::default().with_replica_id(BrokerId(node_id)).with_topics(vec![
                OffsetForLeaderTopic::default().with_topic(TopicName(str_bytes(TOPIC))).with_partitions(vec![p]),
            ]);
            let response = answer(&request, &lookup(leader)).unwrap();
            let epoch = state.leader_epoch;
            fetcher::apply_epoch_end_offset(&config, state, epoch, &response.topics[0].partitions[0], now);
            return;
        }
        let request = fetcher::build_fetch_request(&config, states, now, true).expect("a partition is ready");
        assert_eq!(request.replica_id.0, node_id);
        let (offset, epoch) = (states[&tp].fetch_offset, states[&tp].leader_epoch);
        let response =
            crate::api::fetch::serve(request, &lookup(leader), 1 << 20, now, None).unwrap().await.into_response();
        let data = &response.responses[0].partitions[0];
        fetcher::apply_fetched(&config, states.get_mut(&tp).unwrap(), offset, epoch, data, &mark_dirty, now);
    }

    #[tokio::test]
    async fn a_follower_truncates_its_divergent_suffix_and_catches_up_with_a_new_leader() {
        let dir = tempfile::tempdir().unwrap();
        let one = open(&dir.path().join("1"), 1);
        let two = open(&dir.path().join("2"), 2);
        let tp = TopicPartition { topic: TOPIC.into(), partition: 0 };

        // Epoch 1: 1 leads, 2 follows and copies offsets 0..=2.
        one.make_leader(&image(&[1, 2], &[1, 2], 1, 1, 1), None, 0).unwrap();
        two.make_follower(&image(&[1, 2], &[1, 2], 1, 1, 1));
        for (i, v) in ["a", "b", "c"].iter().enumerate() {
            produce(&one, &[v], Some((7, 0, i as i32)));
        }
        let mut at_two = BTreeMap::from([(tp.clone(), FetchState::new(two.clone(), 1))]);
        round(&one, &mut at_two, 2).await; // truncation: nothing to cut on an empty log
        assert!(!at_two[&tp].truncation_pending);
        round(&one, &mut at_two, 2).await;
        assert_eq!(contents(&two), contents(&one));
        // Nothing new: the fetch (max wait 0 in tests) only reports 2's offset.
        round(&one, &mut at_two, 2).await;
        assert_eq!(one.high_watermark(), 3, "2's fetch at offset 3 committed everything");
        assert_eq!(two.high_watermark(), 3);

        // 1 appends two more batches 2 never gets, then 2 becomes leader of epoch 2.
        produce(&one, &["d"], Some((7, 0, 3)));
        produce(&one, &["e"], Some((7, 0, 4)));
        two.make_leader(&image(&[1, 2], &[2], 2, 2, 2), None, 0).unwrap();
        produce(&two, &["X"], None);

        // 1 follows in epoch 2: it must cut offsets 3 and 4 (epoch 1 ends at 3 on the new
        // leader), then copy X.
        assert!(one.make_follower(&image(&[1, 2], &[2], 2, 2, 2)));
        let mut at_one = BTreeMap::from([(tp.clone(), FetchState::new(one.clone(), 2))]);
        assert_eq!(at_one[&tp].fetch_offset, 5);
        round(&two, &mut at_one, 1).await;
        assert_eq!(one.offsets().log_end_offset, 3);
        assert!(!at_one[&tp].truncation_pending);
        let retry = validate_batches_one(&batch(&["d"], Some((7, 0, 3))));
        assert!(!one.is_duplicate(&retry), "the truncated batch is forgotten");
        round(&two, &mut at_one, 1).await;
        assert_eq!(
            contents(&one),
            vec![(0, 1, "a".into()), (1, 1, "b".into()), (2, 1, "c".into()), (3, 2, "X".into())]
        );
        assert_eq!(contents(&one), contents(&two));
        assert_eq!(one.end_offset_for_epoch(1), (1, 3));
        assert_eq!(one.end_offset_for_epoch(2), (2, 4));
    }

    fn validate_batches_one(bytes: &bytes::Bytes) -> spate_client::protocol::record::BatchHeader {
        spate_client::protocol::record::validate_batches(bytes).unwrap()[0]
    }
}

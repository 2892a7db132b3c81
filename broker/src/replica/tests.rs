use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use spate_client::protocol::record::validate_batches;
use tokio::sync::mpsc;

use super::fetcher::truncation_offset;
use super::test_support::*;
use super::*;
use crate::controller::types::{BrokerRegistration, TopicImage};
use crate::error::BrokerError;
use crate::log::epoch_cache::{UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET};

/// The bytes a leader would send a follower: its whole log from `offset`.
fn leader_bytes(leader: &Partition, offset: i64) -> Bytes {
    leader.read_for_replica(offset, 1 << 30).unwrap()
}

#[test]
fn a_partition_opened_as_today_is_the_leader_of_epoch_zero() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), 3);
    assert!(p.is_leader());
    assert_eq!(p.leader_epoch(), 0);
    assert_eq!(p.isr(), vec![3]);
    produce(&p, &["a", "b"], None);
    // Page-cache mode, ISR of one: the high watermark follows the log end at once.
    assert_eq!(p.high_watermark(), 2);
    assert_eq!(contents(&p), vec![(0, 0, "a".into()), (1, 0, "b".into())]);
    assert_eq!(p.end_offset_for_epoch(0), (0, 2));
}

#[test]
fn followers_refuse_client_appends() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), 2);
    assert!(p.make_follower(&image(&[1, 2], &[1, 2], 1, 4, 1)));
    assert!(!p.is_leader());
    let records = batch(&["x"], None);
    let err = p.append(&records, &validate_batches(&records).unwrap(), 0).unwrap_err();
    assert!(matches!(err, BrokerError::NotLeaderOrFollower { .. }), "{err}");
    assert_eq!(err.code(), spate_client::protocol::ErrorCode::NOT_LEADER_OR_FOLLOWER);
    // The same image again is no change; a new epoch is.
    assert!(!p.make_follower(&image(&[1, 2], &[1, 2], 1, 4, 2)));
    assert!(p.make_follower(&image(&[1, 2], &[1, 2], 1, 5, 3)));
}

#[test]
fn follower_appends_keep_the_leaders_offsets_and_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let leader = open(&dir.path().join("l"), 1);
    leader.make_leader(&image(&[1, 2], &[1, 2], 1, 3, 1), None, 0).unwrap();
    produce(&leader, &["a", "b"], None);
    produce(&leader, &["c"], Some((7, 0, 0)));
    let follower = open(&dir.path().join("f"), 2);
    follower.make_follower(&image(&[1, 2], &[1, 2], 1, 3, 1));

    let bytes = leader_bytes(&leader, 0);
    // A partial batch at the end of a size-limited response is left for the next fetch.
    let mut with_partial = BytesMut::from(&bytes[..]);
    with_partial.extend_from_slice(&batch(&["d"], None)[..30]);
    let outcome = follower.append_as_follower(&with_partial.freeze(), 3, 0).unwrap().unwrap();
    assert_eq!((outcome.base_offset, outcome.last_offset), (0, 2));
    assert_eq!(contents(&follower), contents(&leader));
    assert_eq!(follower.latest_cached_epoch(), Some(3));
    assert_eq!(follower.end_offset_for_epoch(3), (3, 3));
    // The follower learned the idempotent producer: a retry of its batch is a duplicate.
    let retry = batch(&["c"], Some((7, 0, 0)));
    assert!(follower.is_duplicate(&validate_batches(&retry).unwrap()[0]));

    // The high watermark is the leader's, capped at the local log end.
    follower.update_follower_high_watermark(2);
    assert_eq!(follower.high_watermark(), 2);
    follower.update_follower_high_watermark(10);
    assert_eq!(follower.high_watermark(), 3);

    // Data that overlaps the log is refused, as is a corrupt batch and a stale epoch.
    let err = follower.append_as_follower(&bytes, 3, 0).unwrap_err();
    assert!(matches!(err, BrokerError::Log(crate::log::LogError::InvalidAppend { .. })), "{err}");
    produce(&leader, &["d"], None);
    let mut corrupt = BytesMut::from(&leader_bytes(&leader, 3)[..]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let err = follower.append_as_follower(&corrupt.freeze(), 3, 0).unwrap_err();
    assert!(matches!(err, BrokerError::CorruptMessage { .. }), "{err}");
    let err = follower.append_as_follower(&leader_bytes(&leader, 3), 2, 0).unwrap_err();
    assert!(matches!(err, BrokerError::FencedLeaderEpoch { .. }), "{err}");
    assert_eq!(follower.offsets().log_end_offset, 3);
    // Nothing to append is not an error.
    assert!(follower.append_as_follower(&Bytes::new(), 3, 0).unwrap().is_none());
}

#[test]
fn follower_truncation_rebuilds_producer_state_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let leader = open(&dir.path().join("l"), 1);
    leader.make_leader(&image(&[1, 2], &[1, 2], 1, 1, 1), None, 0).unwrap();
    produce(&leader, &["a"], Some((7, 0, 0)));
    produce(&leader, &["b"], Some((7, 0, 1)));
    produce(&leader, &["c"], Some((7, 0, 2)));
    let follower = open(&dir.path().join("f"), 2);
    follower.make_follower(&image(&[1, 2], &[1, 2], 1, 1, 1));
    follower.append_as_follower(&leader_bytes(&leader, 0), 1, 0).unwrap();
    follower.update_follower_high_watermark(3);
    assert_eq!(follower.high_watermark(), 3);

    follower.truncate_to(1, 0).unwrap();
    assert_eq!(follower.offsets().log_end_offset, 1);
    assert_eq!(follower.high_watermark(), 1, "lowered with the log");
    let seq = |s: i32| validate_batches(&batch(&["x"], Some((7, 0, s)))).unwrap()[0];
    assert!(follower.is_duplicate(&seq(0)));
    assert!(!follower.is_duplicate(&seq(1)), "a truncated batch must not be deduplicated");
    assert!(!follower.is_duplicate(&seq(2)));
    assert_eq!(contents(&follower), vec![(0, 1, "a".into())]);

    // Leaders never truncate.
    assert!(matches!(leader.truncate_to(0, 0), Err(BrokerError::NotLeaderOrFollower { .. })));

    // Restarting at a leader's later log start empties the log and its epoch cache.
    follower.truncate_fully(10, 0).unwrap();
    let offsets = follower.offsets();
    assert_eq!((offsets.log_start_offset, offsets.log_end_offset), (10, 10));
    assert_eq!(follower.latest_cached_epoch(), None);
    drop(follower);
    let reopened = open(&dir.path().join("f"), 2);
    assert_eq!(reopened.offsets().log_end_offset, 10);
    assert_eq!(reopened.latest_cached_epoch(), None);
}

#[test]
fn truncation_offset_follows_kip_279() {
    // Leader has our latest epoch 3, ending at 50: keep up to there.
    assert_eq!(truncation_offset((3, 50), (3, 70), 70, 40), (50, true));
    // Leader ends the epoch later than we do: nothing to cut.
    assert_eq!(truncation_offset((3, 90), (3, 70), 70, 40), (70, true));
    // Leader answers an older epoch 2 that we also have, ending at 30 for it, 35 for us.
    assert_eq!(truncation_offset((2, 30), (2, 35), 70, 20), (30, true));
    // Leader answers epoch 2, which we do not have: cut to where our nearest one (1) ends,
    // then ask again.
    assert_eq!(truncation_offset((2, 30), (1, 25), 70, 20), (25, false));
    // Leader knows none of our epochs: fall back to the high watermark.
    assert_eq!(truncation_offset((UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET), (3, 70), 70, 40), (40, true));
    // We have no epoch information for the epoch the leader answered.
    assert_eq!(truncation_offset((2, 30), (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET), 70, 20), (30, true));
}

#[test]
fn the_high_watermark_waits_for_the_isr_and_expansion_is_proposed_once() {
    let dir = tempfile::tempdir().unwrap();
    let leader = open(dir.path(), 1);
    let (tx, mut rx) = mpsc::unbounded_channel();
    assert!(leader.make_leader(&image(&[1, 2, 3], &[1, 2], 1, 1, 5), Some(tx), 0).unwrap());
    assert_eq!(leader.end_offset_for_epoch(1), (1, 0));
    produce(&leader, &["a"], None);
    produce(&leader, &["b"], None);
    assert_eq!(leader.high_watermark(), 0, "follower 2 has nothing yet");
    leader.record_follower_fetch(2, 1, 0, 10);
    assert_eq!(leader.high_watermark(), 1);
    leader.record_follower_fetch(2, 2, 0, 20);
    assert_eq!(leader.high_watermark(), 2);
    // A fetch offset past the log end is a divergent follower: not counted.
    leader.record_follower_fetch(2, 9, 0, 25);
    assert_eq!(leader.high_watermark(), 2);
    assert!(rx.try_recv().is_err(), "2 is in the ISR already; 3 has not fetched");

    // 3 catches up to the high watermark: one AlterPartition, not one per fetch.
    leader.record_follower_fetch(3, 2, 0, 30);
    leader.record_follower_fetch(3, 2, 0, 40);
    let request = rx.try_recv().unwrap();
    assert_eq!(
        request,
        ControllerRequest::AlterPartition {
            broker_id: 1,
            topic: TOPIC.into(),
            partition: 0,
            leader_epoch: 1,
            partition_epoch: 5,
            new_isr: vec![1, 2, 3],
        }
    );
    assert!(rx.try_recv().is_err());
    // While pending, the high watermark already waits for 3 (the maximal ISR).
    produce(&leader, &["c"], None);
    leader.record_follower_fetch(2, 3, 0, 50);
    assert_eq!(leader.high_watermark(), 2);
    leader.record_follower_fetch(3, 3, 0, 60);
    assert_eq!(leader.high_watermark(), 3);
    // The controller's answer: a new image with the wider ISR.
    assert!(!leader.make_leader(&image(&[1, 2, 3], &[1, 2, 3], 1, 1, 6), None, 70).unwrap());
    assert_eq!(leader.isr(), vec![1, 2, 3]);
    assert_eq!(leader.partition_epoch(), 6);
}

/// Leader 1 of replicas [1, 2, 3] with ISR [1, 2] in partition epoch 5, one record written, both
/// followers caught up: it has just proposed adding 3 (the request is taken off `rx`).
fn leader_expanding_to_3() -> (tempfile::TempDir, Arc<Partition>, mpsc::UnboundedReceiver<ControllerRequest>) {
    let dir = tempfile::tempdir().unwrap();
    let leader = open(dir.path(), 1);
    let (tx, mut rx) = mpsc::unbounded_channel();
    leader.make_leader(&image(&[1, 2, 3], &[1, 2], 1, 1, 5), Some(tx), 0).unwrap();
    produce(&leader, &["a"], None);
    leader.record_follower_fetch(2, 1, 0, 10);
    leader.record_follower_fetch(3, 1, 0, 10);
    assert!(matches!(rx.try_recv().unwrap(), ControllerRequest::AlterPartition { .. }));
    (dir, leader, rx)
}

#[test]
fn a_refused_expansion_stops_holding_the_high_watermark() {
    // The race a controlled shutdown can hit: 3 catches up and the leader proposes it into the
    // ISR just as 3 is fenced. The controller refuses (INELIGIBLE_REPLICA) and 3 never fetches
    // again: the pending expansion must not hold acks=all produces back forever.
    use crate::partition::AlterOutcome::{Committed, Refused, Unknown};
    let (_dir, leader, mut rx) = leader_expanding_to_3();
    assert!(leader.alter_partition_wanted(5, &[1, 2, 3]));
    produce(&leader, &["b"], None);
    leader.record_follower_fetch(2, 2, 0, 20);
    assert_eq!(leader.high_watermark(), 1, "the pending expansion waits for 3");
    // In flight: nothing else is proposed, however long it takes.
    assert!(!leader.maybe_shrink_isr(60_000, 600_000));
    assert!(rx.try_recv().is_err());
    // An answer to some other proposal (another epoch or ISR) changes nothing.
    leader.alter_partition_answered(4, &[1, 2, 3], Refused, 30);
    leader.alter_partition_answered(5, &[1, 3], Refused, 30);
    assert_eq!(leader.high_watermark(), 1);
    leader.alter_partition_answered(5, &[1, 2, 3], Refused, 30);
    assert_eq!(leader.high_watermark(), 2, "2 alone (the committed ISR) is enough again");
    assert!(!leader.alter_partition_wanted(5, &[1, 2, 3]));
    assert_eq!(leader.isr(), vec![1, 2]);
    // 3 (fenced) fetching right away is not proposed again until the retry interval passed.
    leader.record_follower_fetch(3, 2, 0, 40);
    assert!(rx.try_recv().is_err(), "no stream of refused expansions");
    leader.record_follower_fetch(3, 2, 0, 5_031);
    assert!(matches!(rx.try_recv().unwrap(), ControllerRequest::AlterPartition { .. }));
    // A timeout: the outcome is unknown. The periodic check sends it again after the retry
    // interval (3 may have stopped fetching), and meanwhile the high watermark waits for 3.
    leader.alter_partition_answered(5, &[1, 2, 3], Unknown, 5_100);
    assert!(!leader.maybe_shrink_isr(6_000, 600_000));
    assert!(rx.try_recv().is_err());
    assert!(leader.maybe_shrink_isr(10_100, 600_000));
    match rx.try_recv().unwrap() {
        ControllerRequest::AlterPartition { new_isr, partition_epoch, .. } => {
            assert_eq!((new_isr, partition_epoch), (vec![1, 2, 3], 5));
        }
        other => panic!("unexpected {other:?}"),
    }
    produce(&leader, &["c"], None);
    leader.record_follower_fetch(2, 3, 0, 10_200);
    assert_eq!(leader.high_watermark(), 2, "3 may be in the ISR: it still counts");
    // Committed: the image settles it.
    leader.alter_partition_answered(5, &[1, 2, 3], Committed, 10_300);
    leader.make_leader(&image(&[1, 2, 3], &[1, 2, 3], 1, 1, 6), None, 10_400).unwrap();
    assert_eq!(leader.isr(), vec![1, 2, 3]);
    assert!(!leader.alter_partition_wanted(5, &[1, 2, 3]));
}

#[test]
fn a_timed_out_expansion_keeps_counting_after_a_shrink_replaces_it() {
    use crate::partition::AlterOutcome::Unknown;
    let (_dir, leader, mut rx) = leader_expanding_to_3();
    leader.alter_partition_answered(5, &[1, 2, 3], Unknown, 100);
    // 2 stops fetching: a shrink replaces the expansion, whose outcome is still unknown.
    produce(&leader, &["b"], None);
    leader.record_follower_fetch(3, 2, 0, 200);
    assert!(leader.maybe_shrink_isr(20_000, 10_000));
    match rx.try_recv().unwrap() {
        ControllerRequest::AlterPartition { new_isr, .. } => assert_eq!(new_isr, vec![1]),
        other => panic!("unexpected {other:?}"),
    }
    produce(&leader, &["c"], None);
    assert_eq!(leader.high_watermark(), 1, "3 may have joined: the high watermark still waits for it");
    leader.record_follower_fetch(3, 3, 0, 20_100);
    leader.record_follower_fetch(2, 3, 0, 20_100);
    assert_eq!(leader.high_watermark(), 3);
    // An image with a newer epoch settles both.
    leader.make_leader(&image(&[1, 2, 3], &[1, 3], 1, 1, 6), None, 20_200).unwrap();
    assert_eq!(leader.isr(), vec![1, 3]);
}

#[test]
fn lagging_followers_are_proposed_out_of_the_isr() {
    let dir = tempfile::tempdir().unwrap();
    let leader = open(dir.path(), 1);
    let (tx, mut rx) = mpsc::unbounded_channel();
    leader.make_leader(&image(&[1, 2, 3], &[1, 2, 3], 1, 2, 8), Some(tx), 1_000).unwrap();
    produce(&leader, &["a"], None);
    leader.record_follower_fetch(2, 1, 0, 1_500);
    leader.record_follower_fetch(3, 0, 0, 1_500);
    // Within replica.lag.time.max.ms of becoming leader, nobody is dropped.
    assert!(!leader.maybe_shrink_isr(10_000, 10_000));
    assert!(leader.maybe_shrink_isr(11_001, 10_000));
    match rx.try_recv().unwrap() {
        ControllerRequest::AlterPartition { new_isr, partition_epoch, .. } => {
            assert_eq!(new_isr, vec![1, 2]);
            assert_eq!(partition_epoch, 8);
        }
        other => panic!("unexpected {other:?}"),
    }
    // One proposal in flight; the shrink counts only once the image shows it.
    assert!(!leader.maybe_shrink_isr(11_002, 10_000));
    assert_eq!(leader.high_watermark(), 0, "3 still holds it back");
    leader.make_leader(&image(&[1, 2, 3], &[1, 2], 1, 2, 9), None, 11_003).unwrap();
    assert_eq!(leader.high_watermark(), 1);
}

#[test]
fn leader_epoch_checks() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), 1);
    p.make_leader(&image(&[1], &[1], 1, 4, 1), None, 0).unwrap();
    assert!(p.check_leader(-1).is_ok());
    assert!(p.check_leader(4).is_ok());
    assert!(matches!(p.check_leader(3), Err(BrokerError::FencedLeaderEpoch { .. })));
    assert!(matches!(p.check_leader(5), Err(BrokerError::UnknownLeaderEpoch { .. })));
    p.make_follower(&image(&[1, 2], &[1, 2], 2, 5, 2));
    assert!(matches!(p.check_leader(5), Err(BrokerError::NotLeaderOrFollower { .. })));
    assert!(matches!(p.offset_for_leader_epoch(5, 4), Err(BrokerError::NotLeaderOrFollower { .. })));
}

#[tokio::test]
async fn apply_assigns_roles_from_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let led = open(&dir.path().join("a"), 1);
    let followed = open(&dir.path().join("b"), 1);
    let (tx, _rx) = mpsc::unbounded_channel();
    let manager = ReplicaManager::new(replica_config(1), tx, Arc::new(|_: &Arc<Partition>| {}));
    let mut image = MetadataImage::default();
    for id in [1, 2] {
        // Port 9 on loopback (discard): the fetcher may try it and fail; nothing leaves the host.
        image.brokers.insert(
            id,
            BrokerRegistration {
                id,
                host: "127.0.0.1".into(),
                port: 9,
                incarnation_id: uuid::Uuid::nil(),
                fenced: false,
            },
        );
    }
    image.topics.insert(
        "t".into(),
        TopicImage {
            name: "t".into(),
            id: uuid::Uuid::nil(),
            configs: Default::default(),
            partitions: vec![image_of(&[1, 2], 1, 7), image_of(&[2, 1], 2, 3), image_of(&[2, 3], 2, 1)],
        },
    );
    let local = |_: &str, p: i32| match p {
        0 => Some(led.clone()),
        1 => Some(followed.clone()),
        _ => None,
    };
    manager.apply(&image, &local);
    assert!(led.is_leader());
    assert_eq!(led.leader_epoch(), 7);
    assert!(!followed.is_leader());
    assert_eq!((followed.leader_id(), followed.leader_epoch()), (2, 3));
    assert_eq!(manager.lock().fetchers.keys().copied().collect::<Vec<_>>(), vec![2]);
    assert_eq!(manager.lock().fetchers[&2].shared.lock().len(), 1);
    assert_eq!(manager.lock().leading.len(), 1);
    // A reassignment adding this replica marks its fetches throttled; finishing clears it.
    let throttled =
        |m: &ReplicaManager| m.lock().fetchers[&2].shared.lock().values().map(|s| s.throttled).collect::<Vec<_>>();
    assert_eq!(throttled(&manager), vec![false]);
    // (Being added, it is not in the ISR yet; once in sync it never is throttled.)
    image.topics.get_mut("t").unwrap().partitions[1].adding_replicas = vec![1];
    image.topics.get_mut("t").unwrap().partitions[1].isr = vec![2];
    manager.apply(&image, &local);
    assert_eq!(throttled(&manager), vec![true]);
    image.topics.get_mut("t").unwrap().partitions[1].isr = vec![2, 1];
    manager.apply(&image, &local);
    assert_eq!(throttled(&manager), vec![false]);
    image.topics.get_mut("t").unwrap().partitions[1].adding_replicas.clear();
    manager.apply(&image, &local);
    assert_eq!(throttled(&manager), vec![false]);
    // Leadership moves here: the fetcher goes.
    image.topics.get_mut("t").unwrap().partitions[1] = image_of(&[2, 1], 1, 4);
    manager.apply(&image, &local);
    assert!(followed.is_leader());
    assert!(manager.lock().fetchers.is_empty());
    assert_eq!(manager.lock().leading.len(), 2);
    manager.shutdown();
}

fn image_of(replicas: &[i32], leader: i32, leader_epoch: i32) -> crate::controller::types::PartitionImage {
    image(replicas, replicas, leader, leader_epoch, 1)
}

#[test]
fn throttled_partitions_wait_out_of_fetches_while_the_budget_is_spent() {
    let dir = tempfile::tempdir().unwrap();
    let config = replica_config(2);
    let mut states = BTreeMap::new();
    for (i, throttled) in [false, true].into_iter().enumerate() {
        let mut state = fetcher::FetchState::new(open(&dir.path().join(format!("p{i}")), 2), 1);
        state.truncation_pending = false;
        state.throttled = throttled;
        states.insert(TopicPartition { topic: "t".into(), partition: i as i32 }, state);
    }
    let partitions = |open: bool| {
        let request = fetcher::build_fetch_request(&config, &states, 0, open).unwrap();
        request.topics[0].partitions.iter().map(|p| p.partition).collect::<Vec<_>>()
    };
    assert_eq!(partitions(true), vec![0, 1]);
    assert_eq!(partitions(false), vec![0]);
}

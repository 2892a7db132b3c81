//! The group coordinator over the wire: an in-process broker on loopback and raw group requests
//! from the spate-client `Connection`, including a restart that must keep committed offsets.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use bytes::Bytes;
use spate_broker::BrokerConfig;
use spate_client::connection::{Connection, ConnectionConfig};
use spate_client::protocol::messages::join_group_request::JoinGroupRequestProtocol;
use spate_client::protocol::messages::leave_group_request::MemberIdentity;
use spate_client::protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use spate_client::protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use spate_client::protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use spate_client::protocol::messages::*;
use spate_client::protocol::{str_bytes, ApiKey, ErrorCode};

use common::Running;

/// A broker with fast group formation and three `__consumer_offsets` partitions, and a
/// two-partition topic when `topic` is given.
async fn start(dir: &Path, topic: Option<&str>) -> Running {
    let config =
        BrokerConfig { group_initial_rebalance_delay_ms: 0, offsets_topic_num_partitions: 3, ..common::config(dir) };
    let topic = topic.map(str::to_string);
    common::start_with(config, |broker| async move {
        if let Some(topic) = topic {
            broker.create_topic(&topic, 2, -1, BTreeMap::new()).await.unwrap();
        }
    })
    .await
}

/// Waits until the groups of every `__consumer_offsets` partition the broker leads are loaded
/// (they load on a thread of their own; requests meanwhile get COORDINATOR_LOAD_IN_PROGRESS).
async fn groups_loaded(running: &Running) {
    while running.broker.groups.is_loading() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn connect(addr: &str) -> Connection {
    Connection::connect(addr, &ConnectionConfig::default()).await.unwrap()
}

fn join_request(member_id: &str) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(str_bytes("g")))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(str_bytes(member_id))
        .with_protocol_type(str_bytes("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(str_bytes("range"))
            .with_metadata(Bytes::from_static(&[0, 0, 0, 0, 0, 1, 0, 1, b't', 0xff, 0xff, 0xff, 0xff]))])
}

async fn join(conn: &Connection, member_id: &str) -> JoinGroupResponse {
    conn.send(ApiKey::JoinGroup, 7, &join_request(member_id)).await.unwrap()
}

async fn sync(
    conn: &Connection,
    member: &str,
    generation: i32,
    assignments: &[(&str, &'static [u8])],
) -> SyncGroupResponse {
    let request = SyncGroupRequest::default()
        .with_group_id(GroupId(str_bytes("g")))
        .with_generation_id(generation)
        .with_member_id(str_bytes(member))
        .with_protocol_type(Some(str_bytes("consumer")))
        .with_protocol_name(Some(str_bytes("range")))
        .with_assignments(
            assignments
                .iter()
                .map(|(m, a)| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(str_bytes(*m))
                        .with_assignment(Bytes::from_static(a))
                })
                .collect(),
        );
    conn.send(ApiKey::SyncGroup, 5, &request).await.unwrap()
}

async fn heartbeat(conn: &Connection, member: &str, generation: i32) -> ErrorCode {
    let request = HeartbeatRequest::default()
        .with_group_id(GroupId(str_bytes("g")))
        .with_generation_id(generation)
        .with_member_id(str_bytes(member));
    let response: HeartbeatResponse = conn.send(ApiKey::Heartbeat, 4, &request).await.unwrap();
    ErrorCode(response.error_code)
}

async fn commit(conn: &Connection, group: &str, generation: i32, member: &str, topic: &str, offset: i64) -> ErrorCode {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(str_bytes(group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(str_bytes(member))
        .with_topics(vec![OffsetCommitRequestTopic::default().with_name(TopicName(str_bytes(topic))).with_partitions(
            vec![OffsetCommitRequestPartition::default()
                .with_partition_index(1)
                .with_committed_offset(offset)
                .with_committed_metadata(Some(str_bytes("meta")))],
        )]);
    let response: OffsetCommitResponse = conn.send(ApiKey::OffsetCommit, 8, &request).await.unwrap();
    ErrorCode(response.topics[0].partitions[0].error_code)
}

/// `(topic, partition, offset, metadata)` committed by `group`, via OffsetFetch v8 (all topics).
async fn committed(conn: &Connection, group: &str) -> Vec<(String, i32, i64, String)> {
    let request = OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
        .with_group_id(GroupId(str_bytes(group)))
        .with_topics(None)]);
    let response: OffsetFetchResponse = conn.send(ApiKey::OffsetFetch, 8, &request).await.unwrap();
    assert_eq!(response.groups[0].error_code, 0);
    response.groups[0]
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    t.name.to_string(),
                    p.partition_index,
                    p.committed_offset,
                    p.metadata.as_deref().unwrap_or_default().to_string(),
                )
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_lifecycle_over_the_wire_and_offsets_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), Some("t")).await;
    let a = connect(&broker.addr).await;
    let b = connect(&broker.addr).await;

    // FindCoordinator v4 (batched) and v3 both point at this node.
    let found: FindCoordinatorResponse = a
        .send(
            ApiKey::FindCoordinator,
            4,
            &FindCoordinatorRequest::default().with_coordinator_keys(vec![str_bytes("g"), str_bytes("other")]),
        )
        .await
        .unwrap();
    assert_eq!(found.coordinators.len(), 2);
    assert!(found.coordinators.iter().all(|c| c.error_code == 0 && c.node_id.0 == 1 && c.host.as_str() == "127.0.0.1"));
    let found: FindCoordinatorResponse =
        a.send(ApiKey::FindCoordinator, 3, &FindCoordinatorRequest::default().with_key(str_bytes("g"))).await.unwrap();
    assert_eq!((found.error_code, found.node_id.0), (0, 1));
    groups_loaded(&broker).await;

    // KIP-394: the first join gets an id, the second one joins.
    let first = join(&a, "").await;
    assert_eq!(ErrorCode(first.error_code), ErrorCode::MEMBER_ID_REQUIRED);
    let member_a = first.member_id.to_string();
    assert!(member_a.starts_with("spate-"), "{member_a}");
    let joined = join(&a, &member_a).await;
    assert_eq!((joined.error_code, joined.generation_id, joined.leader.as_str()), (0, 1, member_a.as_str()));
    assert_eq!(joined.members.len(), 1);
    let synced = sync(&a, &member_a, 1, &[(&member_a, b"assignment-a")]).await;
    assert_eq!((synced.error_code, &synced.assignment[..]), (0, &b"assignment-a"[..]));
    assert_eq!(heartbeat(&a, &member_a, 1).await, ErrorCode::NONE);

    // A second member's join is parked until the first one rejoins.
    let b_id = join(&b, "").await.member_id.to_string();
    let b_clone = b.clone();
    let b_id_clone = b_id.clone();
    let parked = tokio::spawn(async move { join(&b_clone, &b_id_clone).await });
    let mut code = ErrorCode::NONE;
    for _ in 0..100 {
        code = heartbeat(&a, &member_a, 1).await;
        if code == ErrorCode::REBALANCE_IN_PROGRESS {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(code, ErrorCode::REBALANCE_IN_PROGRESS);
    let rejoined = join(&a, &member_a).await;
    let joined_b = parked.await.unwrap();
    assert_eq!((rejoined.generation_id, joined_b.generation_id), (2, 2));
    assert_eq!((rejoined.members.len(), joined_b.members.len()), (2, 0));
    let b_clone = b.clone();
    let b_id_clone = b_id.clone();
    let follower = tokio::spawn(async move { sync(&b_clone, &b_id_clone, 2, &[]).await });
    let leader = sync(&a, &member_a, 2, &[(&member_a, b"a2"), (&b_id, b"b2")]).await;
    assert_eq!(&leader.assignment[..], b"a2");
    assert_eq!(&follower.await.unwrap().assignment[..], b"b2");

    // Commits: fenced by generation and membership; unknown topics refused.
    assert_eq!(commit(&a, "g", 1, &member_a, "t", 5).await, ErrorCode::ILLEGAL_GENERATION);
    assert_eq!(commit(&a, "g", 2, "ghost", "t", 5).await, ErrorCode::UNKNOWN_MEMBER_ID);
    assert_eq!(commit(&a, "g", -1, "", "t", 5).await, ErrorCode::UNKNOWN_MEMBER_ID);
    assert_eq!(commit(&a, "g", 2, &member_a, "nope", 5).await, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION);
    assert_eq!(commit(&a, "g", 2, &member_a, "t", 42).await, ErrorCode::NONE);
    assert_eq!(committed(&a, "g").await, vec![("t".to_string(), 1, 42, "meta".to_string())]);
    // A standalone consumer (no group membership) commits to its own group.
    assert_eq!(commit(&a, "solo", -1, "", "t", 7).await, ErrorCode::NONE);

    // Describe and list.
    let described: DescribeGroupsResponse = a
        .send(ApiKey::DescribeGroups, 5, &DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes("g"))]))
        .await
        .unwrap();
    let g = &described.groups[0];
    assert_eq!(
        (g.group_state.as_str(), g.protocol_type.as_str(), g.protocol_data.as_str()),
        ("Stable", "consumer", "range")
    );
    assert_eq!(g.members.len(), 2);
    assert!(g.members.iter().all(|m| m.client_host.as_str() == "/127.0.0.1" && m.client_id.as_str() == "spate"));
    let listed: ListGroupsResponse = a
        .send(ApiKey::ListGroups, 4, &ListGroupsRequest::default().with_states_filter(vec![str_bytes("stable")]))
        .await
        .unwrap();
    assert_eq!(listed.groups.iter().map(|g| g.group_id.to_string()).collect::<Vec<_>>(), vec!["g".to_string()]);

    // A non-empty group cannot be deleted; after both leave (batch leave, v3+) it can be.
    let deleted: DeleteGroupsResponse = a
        .send(ApiKey::DeleteGroups, 2, &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(str_bytes("g"))]))
        .await
        .unwrap();
    assert_eq!(ErrorCode(deleted.results[0].error_code), ErrorCode::NON_EMPTY_GROUP);
    let left: LeaveGroupResponse = a
        .send(
            ApiKey::LeaveGroup,
            4,
            &LeaveGroupRequest::default().with_group_id(GroupId(str_bytes("g"))).with_members(vec![
                MemberIdentity::default().with_member_id(str_bytes(member_a.clone())),
                MemberIdentity::default().with_member_id(str_bytes(b_id.clone())),
            ]),
        )
        .await
        .unwrap();
    assert_eq!((left.error_code, left.members.iter().map(|m| m.error_code).collect::<Vec<_>>()), (0, vec![0, 0]));

    // Offsets of both groups survive a restart of the broker.
    drop((a, b));
    broker.stop().await;
    let broker = start(dir.path(), None).await;
    groups_loaded(&broker).await;
    let c = connect(&broker.addr).await;
    assert_eq!(committed(&c, "g").await, vec![("t".to_string(), 1, 42, "meta".to_string())]);
    assert_eq!(committed(&c, "solo").await.len(), 1);
    // The group came back Empty and can now be deleted; its offsets go with it.
    let deleted: DeleteGroupsResponse = c
        .send(
            ApiKey::DeleteGroups,
            2,
            &DeleteGroupsRequest::default()
                .with_groups_names(vec![GroupId(str_bytes("g")), GroupId(str_bytes("nope"))]),
        )
        .await
        .unwrap();
    let codes: Vec<ErrorCode> = deleted.results.iter().map(|r| ErrorCode(r.error_code)).collect();
    assert_eq!(codes, vec![ErrorCode::NONE, ErrorCode::GROUP_ID_NOT_FOUND]);
    assert!(committed(&c, "g").await.is_empty());
    // __consumer_offsets is internal in Metadata.
    let metadata: MetadataResponse = c
        .send(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(Some(vec![
                spate_client::protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(TopicName(str_bytes("__consumer_offsets")))),
            ])),
        )
        .await
        .unwrap();
    assert!(metadata.topics[0].is_internal);
    assert_eq!(metadata.topics[0].partitions.len(), 3);
    drop(c);
    broker.stop().await;

    // The tombstones hold across another restart.
    let broker = start(dir.path(), None).await;
    groups_loaded(&broker).await;
    let c = connect(&broker.addr).await;
    assert!(committed(&c, "g").await.is_empty());
    assert_eq!(committed(&c, "solo").await.len(), 1);
    drop(c);
    broker.stop().await;
}

/// Every advertised version of every group API gets an answer the client can decode (an
/// encoding failure on our side would close the connection instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_supported_version_answers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), Some("t")).await;
    let c = connect(&broker.addr).await;
    let group = |v: i16| GroupId(str_bytes(format!("v{v}")));
    for v in 0..=4 {
        let request = if v >= 4 {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![str_bytes("g")])
        } else {
            FindCoordinatorRequest::default().with_key(str_bytes("g"))
        };
        let r: FindCoordinatorResponse = c.send(ApiKey::FindCoordinator, v, &request).await.unwrap();
        assert_eq!(r.error_code, 0, "v{v}");
    }
    groups_loaded(&broker).await;
    for v in 0..=7i16 {
        let base = join_request("").with_group_id(group(v)).with_rebalance_timeout_ms(if v >= 1 { 10_000 } else { -1 });
        // An unknown member of an unknown group: the error path.
        let r: JoinGroupResponse =
            c.send(ApiKey::JoinGroup, v, &base.clone().with_member_id(str_bytes("x"))).await.unwrap();
        assert_eq!(ErrorCode(r.error_code), ErrorCode::UNKNOWN_MEMBER_ID, "v{v}");
        let mut r: JoinGroupResponse = c.send(ApiKey::JoinGroup, v, &base).await.unwrap();
        if v >= 4 {
            assert_eq!(ErrorCode(r.error_code), ErrorCode::MEMBER_ID_REQUIRED, "v{v}");
            r = c.send(ApiKey::JoinGroup, v, &base.clone().with_member_id(r.member_id.clone())).await.unwrap();
        }
        assert_eq!((r.error_code, r.generation_id, r.members.len()), (0, 1, 1), "v{v}");
        let member = r.member_id.clone();
        for sv in 0..=5i16 {
            let request = SyncGroupRequest::default()
                .with_group_id(group(v))
                .with_generation_id(1)
                .with_member_id(member.clone())
                .with_assignments(vec![SyncGroupRequestAssignment::default()
                    .with_member_id(member.clone())
                    .with_assignment(Bytes::from_static(b"x"))]);
            let s: SyncGroupResponse = c.send(ApiKey::SyncGroup, sv, &request).await.unwrap();
            assert_eq!((s.error_code, &s.assignment[..]), (0, &b"x"[..]), "join v{v} sync v{sv}");
        }
        for hv in 0..=4i16 {
            let request = HeartbeatRequest::default()
                .with_group_id(group(v))
                .with_generation_id(1)
                .with_member_id(member.clone());
            let h: HeartbeatResponse = c.send(ApiKey::Heartbeat, hv, &request).await.unwrap();
            assert_eq!(h.error_code, 0);
        }
        for ov in 2..=8i16 {
            let request = OffsetCommitRequest::default()
                .with_group_id(group(v))
                .with_generation_id_or_member_epoch(1)
                .with_member_id(member.clone())
                .with_topics(vec![OffsetCommitRequestTopic::default()
                    .with_name(TopicName(str_bytes("t")))
                    .with_partitions(vec![OffsetCommitRequestPartition::default().with_committed_offset(ov as i64)])]);
            let o: OffsetCommitResponse = c.send(ApiKey::OffsetCommit, ov, &request).await.unwrap();
            assert_eq!(o.topics[0].partitions[0].error_code, 0, "commit v{ov}");
        }
        for fv in 1..=7i16 {
            let topics = (fv >= 2).then(Vec::new).unwrap_or_else(|| {
                vec![spate_client::protocol::messages::offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(TopicName(str_bytes("t")))
                    .with_partition_indexes(vec![0])]
            });
            let request = OffsetFetchRequest::default().with_group_id(group(v)).with_topics(if fv >= 2 {
                None
            } else {
                Some(topics)
            });
            let f: OffsetFetchResponse = c.send(ApiKey::OffsetFetch, fv, &request).await.unwrap();
            assert_eq!(f.topics[0].partitions[0].committed_offset, 8, "fetch v{fv}");
        }
        let leave = if v % 5 >= 3 {
            LeaveGroupRequest::default().with_members(vec![MemberIdentity::default().with_member_id(member.clone())])
        } else {
            LeaveGroupRequest::default().with_member_id(member.clone())
        };
        let l: LeaveGroupResponse = c.send(ApiKey::LeaveGroup, v % 5, &leave.with_group_id(group(v))).await.unwrap();
        assert_eq!(l.error_code, 0, "leave v{}", v % 5);
    }
    for v in 0..=5i16 {
        let request = DescribeGroupsRequest::default().with_groups(vec![group(1), GroupId(str_bytes("none"))]);
        let d: DescribeGroupsResponse = c.send(ApiKey::DescribeGroups, v, &request).await.unwrap();
        assert_eq!((d.groups[0].group_state.as_str(), d.groups[1].group_state.as_str()), ("Empty", "Dead"));
    }
    for v in 0..=4i16 {
        let l: ListGroupsResponse = c.send(ApiKey::ListGroups, v, &ListGroupsRequest::default()).await.unwrap();
        assert_eq!(l.groups.len(), 8, "list v{v}");
    }
    let request = OffsetDeleteRequest::default().with_group_id(group(0)).with_topics(vec![
        spate_client::protocol::messages::offset_delete_request::OffsetDeleteRequestTopic::default()
            .with_name(TopicName(str_bytes("t")))
            .with_partitions(vec![
                spate_client::protocol::messages::offset_delete_request::OffsetDeleteRequestPartition::default(),
            ]),
    ]);
    let o: OffsetDeleteResponse = c.send(ApiKey::OffsetDelete, 0, &request).await.unwrap();
    assert_eq!((o.error_code, o.topics[0].partitions[0].error_code), (0, 0));
    for v in 0..=2i16 {
        let request = DeleteGroupsRequest::default().with_groups_names(vec![group(v + 1)]);
        let d: DeleteGroupsResponse = c.send(ApiKey::DeleteGroups, v, &request).await.unwrap();
        assert_eq!(d.results[0].error_code, 0, "delete v{v}");
    }
    drop(c);
    broker.stop().await;
}

/// While a `__consumer_offsets` partition's groups load (held here by the load hook), its group
/// requests are answered COORDINATOR_LOAD_IN_PROGRESS, FindCoordinator still names this broker
/// (never a coordinator that then denies it), and other connections are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_requests_answer_load_in_progress_while_the_partition_loads() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), Some("t")).await;
    let released = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicUsize::new(0));
    let (r, h) = (released.clone(), held.clone());
    broker.broker.groups.set_load_hook(Some(Arc::new(move |_partition| {
        h.fetch_add(1, Ordering::SeqCst);
        while !r.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
    })));
    let a = connect(&broker.addr).await;
    let other = connect(&broker.addr).await;

    // Creates __consumer_offsets; its three partitions start loading and are held.
    let found: FindCoordinatorResponse =
        a.send(ApiKey::FindCoordinator, 3, &FindCoordinatorRequest::default().with_key(str_bytes("g"))).await.unwrap();
    assert_eq!((found.error_code, found.node_id.0), (0, 1));
    while held.load(Ordering::SeqCst) < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(broker.broker.groups.is_loading());

    let loading = ErrorCode::COORDINATOR_LOAD_IN_PROGRESS;
    assert_eq!(ErrorCode(join(&a, "").await.error_code), loading);
    assert_eq!(heartbeat(&a, "m", 1).await, loading);
    assert_eq!(commit(&a, "solo", -1, "", "t", 5).await, loading);
    let request = OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
        .with_group_id(GroupId(str_bytes("solo")))
        .with_topics(None)]);
    let response: OffsetFetchResponse = a.send(ApiKey::OffsetFetch, 8, &request).await.unwrap();
    assert_eq!(ErrorCode(response.groups[0].error_code), loading);
    let response: OffsetFetchResponse = a
        .send(ApiKey::OffsetFetch, 7, &OffsetFetchRequest::default().with_group_id(GroupId(str_bytes("solo"))))
        .await
        .unwrap();
    assert_eq!(ErrorCode(response.error_code), loading);
    let described: DescribeGroupsResponse = a
        .send(ApiKey::DescribeGroups, 5, &DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes("g"))]))
        .await
        .unwrap();
    assert_eq!(ErrorCode(described.groups[0].error_code), loading);
    let listed: ListGroupsResponse = a.send(ApiKey::ListGroups, 4, &ListGroupsRequest::default()).await.unwrap();
    assert_eq!(ErrorCode(listed.error_code), loading);
    // The admin client asks again until the broker has loaded.
    let admin = spate_client::Admin::new(spate_client::admin::AdminConfig {
        bootstrap_servers: vec![broker.addr.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let listing = tokio::spawn(async move { admin.list_groups(&[]).await });
    // FindCoordinator agrees: it names this broker, which answers "loading", never "not me".
    let found: FindCoordinatorResponse = other
        .send(ApiKey::FindCoordinator, 3, &FindCoordinatorRequest::default().with_key(str_bytes("g")))
        .await
        .unwrap();
    assert_eq!((found.error_code, found.node_id.0), (0, 1));

    // Another connection is served while the load is held.
    let metadata: MetadataResponse = other
        .send(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(Some(vec![
                spate_client::protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(TopicName(str_bytes("t")))),
            ])),
        )
        .await
        .unwrap();
    assert_eq!(metadata.topics[0].partitions.len(), 2);

    tokio::time::sleep(Duration::from_millis(300)).await;
    if listing.is_finished() {
        panic!("the admin client took a partial list from a loading broker: {:?}", listing.await.unwrap());
    }
    released.store(true, Ordering::SeqCst);
    groups_loaded(&broker).await;
    listing.await.unwrap().expect("list_groups once the groups are loaded");
    assert_eq!(commit(&a, "solo", -1, "", "t", 5).await, ErrorCode::NONE);
    // Answered once durable, and visible from then on.
    assert_eq!(committed(&a, "solo").await, vec![("t".to_string(), 1, 5, "meta".to_string())]);
    drop((a, other));
    broker.stop().await;
}

//! In-process quorum tests: real controllers on loopback ports with temp dirs.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use uuid::Uuid;

use super::*;

const WAIT: Duration = Duration::from_secs(30);
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(20);

fn config(node_id: i32, voters: BTreeMap<i32, SocketAddr>, dir: &Path) -> ControllerConfig {
    ControllerConfig {
        node_id,
        listen: voters.get(&node_id).copied(),
        observer: false,
        voters,
        metadata_dir: dir.to_path_buf(),
        // Long enough that the unheartbeating test brokers are never fenced.
        broker_session_timeout_ms: 600_000,
        auto_leader_rebalance_enable: true,
        leader_imbalance_check_interval_ms: 300_000,
        unclean_leader_election_enable: false,
        default_replication_factor: 1,
        // Small, so the tests take snapshots, purge the log and install snapshots.
        metadata_snapshot_max_records: 5,
    }
}

/// Polls `check` until it holds, panicking with `what` after [`WAIT`].
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn register(id: i32) -> ControllerRequest {
    ControllerRequest::RegisterBroker {
        broker_id: id,
        host: "127.0.0.1".into(),
        port: 9000 + id,
        incarnation_id: Uuid::from_u128(id as u128),
    }
}

fn create(name: &str, partitions: i32, replication_factor: i16) -> ControllerRequest {
    ControllerRequest::CreateTopic {
        name: name.into(),
        partitions,
        replication_factor,
        configs: BTreeMap::new(),
        validate_only: false,
    }
}

async fn bind_with_retry(addr: SocketAddr) -> TcpListener {
    let mut last = None;
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot rebind {addr}: {last:?}");
}

fn same_metadata(a: &MetadataImage, b: &MetadataImage) -> bool {
    a.cluster_id == b.cluster_id
        && a.topics == b.topics
        && a.brokers == b.brokers
        && a.next_producer_id == b.next_producer_id
}

#[test]
fn cluster_ids_look_like_kafkas() {
    let id = new_cluster_id();
    assert_eq!(id.len(), 22);
    assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{id}");
    assert_ne!(id, new_cluster_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_quorum_replicates_fails_over_and_catches_up() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut listeners = Vec::new();
    let mut voters = BTreeMap::new();
    for id in 1..=3 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        voters.insert(id, l.local_addr().unwrap());
        listeners.push(Some(l));
    }
    let mut nodes: BTreeMap<i32, Arc<Controller>> = BTreeMap::new();
    for (i, id) in (1..=3).enumerate() {
        let c = Controller::start_with_listener(config(id, voters.clone(), dirs[i].path()), listeners[i].take())
            .await
            .unwrap();
        assert_eq!(c.voters(), vec![1, 2, 3]);
        nodes.insert(id, c);
    }

    wait_until("an agreed leader", || {
        let leaders: Vec<Option<i32>> = nodes.values().map(|c| c.leader_id()).collect();
        async move { leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0]) }
    })
    .await;
    let leader = nodes[&1].leader_id().unwrap();
    let follower = *nodes.keys().find(|id| **id != leader).unwrap();

    // Through a follower: forwarded to the leader, and applied locally before submit returns.
    for id in 1..=3 {
        nodes[&follower].submit(register(id), SUBMIT_TIMEOUT).await.unwrap();
    }
    let reply = nodes[&follower].submit(create("t1", 3, 3), SUBMIT_TIMEOUT).await.unwrap();
    let ControllerReply::TopicCreated { id: t1_id } = reply else { panic!("unexpected reply {reply:?}") };
    let image = nodes[&follower].image();
    assert_eq!(image.topics["t1"].id, t1_id);
    assert_eq!(image.topics["t1"].partitions.len(), 3);
    // Refusals come back through the forward path with their Kafka codes.
    let err = nodes[&follower].submit(create("t1", 1, 1), SUBMIT_TIMEOUT).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::TOPIC_ALREADY_EXISTS.0);
    let err = nodes[&follower].submit(create("t9", 1, 4), SUBMIT_TIMEOUT).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::INVALID_REPLICATION_FACTOR.0);
    let pids = nodes[&follower]
        .submit(ControllerRequest::AllocateProducerIds { broker_id: 1, count: 100 }, SUBMIT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(pids, ControllerReply::ProducerIds { first_id: 0, count: 100 });

    wait_until("all images to converge with a cluster id", || {
        let images: Vec<Arc<MetadataImage>> = nodes.values().map(|c| c.image()).collect();
        async move {
            !images[0].cluster_id.is_empty()
                && images[0].topics.contains_key("t1")
                && images.iter().all(|i| same_metadata(i, &images[0]))
        }
    })
    .await;
    let cluster_id = nodes[&1].image().cluster_id.clone();
    assert_eq!(cluster_id.len(), 22);

    // Leader fails: the other two elect a new one and keep accepting writes.
    let old_leader = nodes.remove(&leader).unwrap();
    old_leader.shutdown().await;
    drop(old_leader);
    wait_until("a new leader", || {
        let leaders: Vec<Option<i32>> = nodes.values().map(|c| c.leader_id()).collect();
        async move { leaders[0].is_some_and(|l| l != leader) && leaders.iter().all(|l| *l == leaders[0]) }
    })
    .await;
    let survivor = *nodes.keys().next().unwrap();
    nodes[&survivor].submit(create("t2", 2, 3), SUBMIT_TIMEOUT).await.unwrap();
    assert!(nodes[&survivor].image().topics.contains_key("t2"));
    // Enough entries to snapshot (and purge) again while the old leader is away.
    for i in 0..6 {
        nodes[&survivor].submit(create(&format!("x{i}"), 1, 1), SUBMIT_TIMEOUT).await.unwrap();
    }

    // The old leader restarts from its directory and catches up.
    let index = (1..=3).position(|id| id == leader).unwrap();
    let listener = bind_with_retry(voters[&leader]).await;
    let restarted = Controller::start_with_listener(config(leader, voters.clone(), dirs[index].path()), Some(listener))
        .await
        .unwrap();
    nodes.insert(leader, restarted);
    wait_until("the restarted node to catch up", || {
        let images: Vec<Arc<MetadataImage>> = nodes.values().map(|c| c.image()).collect();
        async move { images[0].topics.contains_key("x5") && images.iter().all(|i| same_metadata(i, &images[0])) }
    })
    .await;
    assert_eq!(nodes[&leader].image().cluster_id, cluster_id);
    // And it can submit too (forwarding to whoever leads now).
    nodes[&leader].submit(create("t3", 1, 2), SUBMIT_TIMEOUT).await.unwrap();
    assert!(nodes[&leader].image().topics.contains_key("t3"));

    for c in nodes.values() {
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_persists_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(config(7, BTreeMap::new(), dir.path())).await.unwrap();
    assert_eq!(c.voters(), vec![7]);
    c.submit(register(1), SUBMIT_TIMEOUT).await.unwrap();
    let reply = c.submit(create("a", 2, 1), SUBMIT_TIMEOUT).await.unwrap();
    assert!(matches!(reply, ControllerReply::TopicCreated { .. }));
    assert_eq!(c.leader_id(), Some(7));
    for i in 0..6 {
        c.submit(create(&format!("b{i}"), 1, -1), SUBMIT_TIMEOUT).await.unwrap();
    }
    wait_until("a cluster id", || {
        let image = c.image();
        async move { !image.cluster_id.is_empty() }
    })
    .await;
    let before = c.image();
    c.shutdown().await;
    // Shutting down twice is harmless, and a stopped controller refuses work.
    c.shutdown().await;
    assert_eq!(c.submit(register(2), Duration::from_secs(1)).await.unwrap_err().code, ErrorCode::NOT_CONTROLLER.0);
    drop(c);

    let c = Controller::start(config(7, BTreeMap::new(), dir.path())).await.unwrap();
    wait_until("the image to be restored", || {
        let image = c.image();
        let before = before.clone();
        async move { same_metadata(&image, &before) }
    })
    .await;
    let err = c.submit(create("a", 1, 1), SUBMIT_TIMEOUT).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::TOPIC_ALREADY_EXISTS.0);
    c.submit(create("c", 1, 1), SUBMIT_TIMEOUT).await.unwrap();
    assert_eq!(c.image().topics.len(), 8);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_only_observer_follows_the_log_forwards_and_leaves_on_unregister() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let voter_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let voters = BTreeMap::from([(1, voter_listener.local_addr().unwrap())]);
    let voter =
        Controller::start_with_listener(config(1, voters.clone(), dirs[0].path()), Some(voter_listener)).await.unwrap();
    voter.submit(register(1), SUBMIT_TIMEOUT).await.unwrap();
    voter.submit(create("before", 1, 1), SUBMIT_TIMEOUT).await.unwrap();

    let observer_config = |listen: SocketAddr| ControllerConfig {
        listen: Some(listen),
        observer: true,
        ..config(5, voters.clone(), dirs[1].path())
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let observer_addr = listener.local_addr().unwrap();
    let observer = Controller::start_with_listener(observer_config(observer_addr), Some(listener)).await.unwrap();
    // It receives the log written before it joined, and its requests are forwarded.
    wait_until("the observer to catch up", || {
        let image = observer.image();
        async move { image.topics.contains_key("before") && !image.cluster_id.is_empty() }
    })
    .await;
    observer.submit(register(5), SUBMIT_TIMEOUT).await.unwrap();
    assert!(voter.image().brokers.contains_key(&5));
    assert_eq!(voter.observers(), vec![5]);
    assert_eq!(observer.leader_id(), Some(1));
    // An observer never votes: with the voter's term fixed, the leader stays 1.
    let reply = observer.submit(create("placed", 2, 2), SUBMIT_TIMEOUT).await.unwrap();
    assert!(matches!(reply, ControllerReply::TopicCreated { .. }));
    assert_eq!(observer.image().topics["placed"].partitions[0].replicas.len(), 2);
    voter.submit(ControllerRequest::DeleteTopic { name: "placed".into() }, SUBMIT_TIMEOUT).await.unwrap();

    // A restart rejoins from its directory.
    observer.shutdown().await;
    drop(observer);
    voter.submit(create("while-down", 1, 1), SUBMIT_TIMEOUT).await.unwrap();
    let observer =
        Controller::start_with_listener(observer_config(observer_addr), Some(bind_with_retry(observer_addr).await))
            .await
            .unwrap();
    wait_until("the restarted observer to catch up", || {
        let image = observer.image();
        async move { image.topics.contains_key("while-down") }
    })
    .await;

    // Unregister: refused while it runs; once fenced it is forgotten and leaves the learners.
    let unregister = ControllerRequest::UnregisterBroker { broker_id: 5 };
    assert!(voter.submit(unregister.clone(), SUBMIT_TIMEOUT).await.unwrap_err().message.contains("running"));
    let shutdown = ControllerRequest::ControlledShutdown { broker_id: 5, incarnation_id: Uuid::from_u128(5) };
    observer.submit(shutdown, SUBMIT_TIMEOUT).await.unwrap();
    observer.shutdown().await;
    // "while-down" may have been placed on broker 5: unregistering waits until nothing is.
    let hosts =
        |image: &MetadataImage| image.topics.values().any(|t| t.partitions.iter().any(|p| p.replicas.contains(&5)));
    if hosts(&voter.image()) {
        assert!(voter.submit(unregister.clone(), SUBMIT_TIMEOUT).await.unwrap_err().message.contains("replica"));
        voter.submit(ControllerRequest::DeleteTopic { name: "while-down".into() }, SUBMIT_TIMEOUT).await.unwrap();
    }
    voter.submit(unregister, SUBMIT_TIMEOUT).await.unwrap();
    assert!(!voter.image().brokers.contains_key(&5));
    assert!(voter.observers().is_empty());

    // Unregistered while running (it was fenced, e.g. cut off): its heartbeat learns it and it
    // asks to follow the log again.
    let observer =
        Controller::start_with_listener(observer_config(observer_addr), Some(bind_with_retry(observer_addr).await))
            .await
            .unwrap();
    wait_until("the observer to rejoin", || {
        let voter = voter.clone();
        async move { voter.observers() == vec![5] }
    })
    .await;
    observer.submit(register(5), SUBMIT_TIMEOUT).await.unwrap();
    let shutdown = ControllerRequest::ControlledShutdown { broker_id: 5, incarnation_id: Uuid::from_u128(5) };
    observer.submit(shutdown, SUBMIT_TIMEOUT).await.unwrap();
    voter.submit(ControllerRequest::UnregisterBroker { broker_id: 5 }, SUBMIT_TIMEOUT).await.unwrap();
    assert!(voter.observers().is_empty());
    voter.submit(create("while-forgotten", 1, 1), SUBMIT_TIMEOUT).await.unwrap();
    observer.rejoin();
    wait_until("the forgotten observer to follow the log again", || {
        let (voter, image) = (voter.clone(), observer.image());
        async move { voter.observers() == vec![5] && image.topics.contains_key("while-forgotten") }
    })
    .await;
    observer.shutdown().await;

    // A voter cannot join as an observer.
    let bad = ControllerConfig { observer: true, ..config(1, voters.clone(), dirs[1].path()) };
    assert!(Controller::start_with_listener(bad, None).await.is_err());
    voter.shutdown().await;
}

#[tokio::test]
async fn config_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let voters = BTreeMap::from([(1, "127.0.0.1:1".parse().unwrap())]);
    assert!(Controller::start_with_listener(config(2, voters, dir.path()), None).await.is_err());
    assert!(Controller::start_with_listener(config(-1, BTreeMap::new(), dir.path()), None).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_fences_silent_brokers_and_heartbeats_unfence() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(1, BTreeMap::new(), dir.path());
    cfg.broker_session_timeout_ms = 1_000;
    let c = Controller::start(cfg).await.unwrap();
    c.submit(register(1), SUBMIT_TIMEOUT).await.unwrap();
    c.submit(register(2), SUBMIT_TIMEOUT).await.unwrap();
    c.submit(create("a", 1, 2), SUBMIT_TIMEOUT).await.unwrap();
    let heartbeat =
        |id: i32| ControllerRequest::BrokerHeartbeat { broker_id: id, incarnation_id: Uuid::from_u128(id as u128) };
    // Broker 1 keeps heartbeating; broker 2 goes silent and is fenced out of the ISR.
    wait_until("broker 2 to be fenced", || {
        let c = c.clone();
        async move {
            c.submit(heartbeat(1), SUBMIT_TIMEOUT).await.unwrap();
            c.image().brokers[&2].fenced
        }
    })
    .await;
    let image = c.image();
    assert!(!image.brokers[&1].fenced);
    let p = image.partition("a", 0).unwrap();
    assert_eq!((p.isr.clone(), p.leader), (vec![1], 1));
    let reply = c.submit(heartbeat(2), SUBMIT_TIMEOUT).await.unwrap();
    assert_eq!(reply, ControllerReply::Heartbeat { fenced: false });
    assert!(!c.image().brokers[&2].fenced);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_becomes_a_voter_and_a_voter_leaves_at_run_time() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let voter_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let voters = BTreeMap::from([(1, voter_listener.local_addr().unwrap())]);
    let first =
        Controller::start_with_listener(config(1, voters.clone(), dirs[0].path()), Some(voter_listener)).await.unwrap();
    first.submit(register(1), SUBMIT_TIMEOUT).await.unwrap();
    first.submit(create("before", 1, 1), SUBMIT_TIMEOUT).await.unwrap();
    let observer_config = |listen: SocketAddr| ControllerConfig {
        listen: Some(listen),
        observer: true,
        ..config(5, voters.clone(), dirs[1].path())
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr5 = listener.local_addr().unwrap();
    let five = Controller::start_with_listener(observer_config(addr5), Some(listener)).await.unwrap();
    wait_until("5 to follow the log", || {
        let first = first.clone();
        async move { first.observers() == vec![5] }
    })
    .await;

    // Refusals say why, with KIP-853's codes.
    let code = |r: Result<ControllerReply, ControllerRefusal>| r.unwrap_err().code;
    let add = |id: i32| ControllerRequest::AddVoter { node_id: id, addr: None };
    let remove = |id: i32| ControllerRequest::RemoveVoter { node_id: id };
    assert_eq!(code(five.submit(add(1), SUBMIT_TIMEOUT).await), ErrorCode::DUPLICATE_VOTER.0);
    assert_eq!(code(five.submit(add(9), SUBMIT_TIMEOUT).await), ErrorCode::INVALID_REQUEST.0);
    assert_eq!(code(five.submit(remove(9), SUBMIT_TIMEOUT).await), ErrorCode::VOTER_NOT_FOUND.0);
    assert_eq!(code(five.submit(remove(1), SUBMIT_TIMEOUT).await), ErrorCode::INVALID_REQUEST.0, "the last voter");
    let elsewhere = ControllerRequest::AddVoter { node_id: 5, addr: Some("127.0.0.1:1".into()) };
    assert_eq!(code(five.submit(elsewhere, SUBMIT_TIMEOUT).await), ErrorCode::INVALID_REQUEST.0);

    // 5 becomes a voter (asked through itself: forwarded to the leader).
    wait_until("5 to be promoted", || {
        let five = five.clone();
        async move { five.submit(add(5), SUBMIT_TIMEOUT).await.is_ok() }
    })
    .await;
    assert_eq!(first.voters(), vec![1, 5]);
    assert_eq!(five.voters(), vec![1, 5]);
    assert!(first.observers().is_empty());
    let ControllerReply::Quorum(q) = five.submit(ControllerRequest::DescribeQuorum, SUBMIT_TIMEOUT).await.unwrap()
    else {
        panic!("not a quorum description")
    };
    assert_eq!(q.leader_id, 1);
    assert_eq!(q.voters.iter().map(|m| m.id).collect::<Vec<_>>(), vec![1, 5]);
    assert_eq!(q.voters[1].addr, addr5.to_string());
    assert!(q.voters.iter().all(|m| m.log_end_offset > 0 && m.log_end_offset <= q.high_watermark + 1), "{q:?}");

    // 1 leaves (it is the leader): 5 alone is the quorum and leads; 1 stays an observer and
    // forwards to 5, which is not in its controller.quorum.voters.
    first.submit(remove(1), SUBMIT_TIMEOUT).await.unwrap();
    wait_until("5 to lead", || {
        let five = five.clone();
        async move { five.leader_id() == Some(5) }
    })
    .await;
    assert_eq!(first.voters(), vec![5]);
    first.submit(create("after", 1, 1), SUBMIT_TIMEOUT).await.unwrap();
    assert!(five.image().topics.contains_key("after"));
    assert_eq!(five.observers(), vec![1]);

    // Restarted, 5 is still a voter (the membership is in its log, whatever its config says) and
    // commits with 1 stopped.
    first.shutdown().await;
    five.shutdown().await;
    drop(five);
    let five =
        Controller::start_with_listener(observer_config(addr5), Some(bind_with_retry(addr5).await)).await.unwrap();
    wait_until("5 to lead again", || {
        let five = five.clone();
        async move { five.leader_id() == Some(5) }
    })
    .await;
    five.submit(create("alone", 1, 1), SUBMIT_TIMEOUT).await.unwrap();
    assert!(five.image().topics.contains_key("before"));
    assert_eq!(five.voters(), vec![5]);
    five.shutdown().await;
}

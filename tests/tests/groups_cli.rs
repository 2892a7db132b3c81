//! `spate groups` against a real broker, as a user of `kafka-consumer-groups.sh` runs it: list,
//! describe (state, members, committed offset, log end offset, lag), reset offsets (dry run,
//! then execute, checked with OffsetFetch), delete offsets and delete the group. Offsets are
//! committed with the admin client from outside the group, and an active member is made by
//! speaking JoinGroup/SyncGroup directly, so these tests need only the broker's coordinator.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use bytes::{BufMut, Bytes, BytesMut};
use spate_client::admin::{Admin, AdminConfig, GroupState, NewTopic, OffsetAndMetadata};
use spate_client::connection::Connection;
use spate_client::protocol::messages::join_group_request::JoinGroupRequestProtocol;
use spate_client::protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use spate_client::protocol::messages::{
    FindCoordinatorRequest, FindCoordinatorResponse, GroupId, JoinGroupRequest, JoinGroupResponse, SyncGroupRequest,
    SyncGroupResponse,
};
use spate_client::protocol::{str_bytes, ApiKey, ErrorCode, StrBytes};
use spate_client::{Producer, ProducerConfig, ProducerRecord, TopicPartition};
use spate_e2e::{spate, spate_bin, spate_ok, TestBroker};

/// Brokers start rebalances at once instead of waiting for more members to join.
const BROKER_ARGS: &[&str] = &["--set", "group.initial.rebalance.delay.ms=0"];

fn spate_err(broker: &TestBroker, args: &[&str]) -> String {
    let output = spate(broker, args);
    assert!(!output.status.success(), "spate {args:?} should fail:\n{}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn admin(broker: &TestBroker) -> Admin {
    Admin::new(AdminConfig { bootstrap_servers: vec![broker.bootstrap()], ..AdminConfig::default() }).await.unwrap()
}

/// Creates `topic` with `partitions` partitions and writes `per_partition` records to each.
async fn topic_with_records(broker: &TestBroker, topic: &str, partitions: i32, per_partition: usize) {
    admin(broker).await.create_topic(NewTopic::new(topic, partitions, 1)).await.unwrap();
    let producer = Producer::new(ProducerConfig {
        bootstrap_servers: vec![broker.bootstrap()],
        linger_ms: 0,
        ..ProducerConfig::default()
    })
    .await
    .unwrap();
    let mut deliveries = Vec::new();
    for p in 0..partitions {
        for i in 0..per_partition {
            let record = ProducerRecord::new(Bytes::from(format!("{p}-{i}"))).with_partition(p);
            deliveries.push(producer.send(topic, record).await.unwrap());
        }
    }
    for d in deliveries {
        d.await.unwrap();
    }
    producer.close().await.unwrap();
}

/// The group's committed offsets as OffsetFetch returns them.
fn committed(rt: &tokio::runtime::Runtime, broker: &TestBroker, group: &str) -> BTreeMap<(String, i32), i64> {
    rt.block_on(async {
        admin(broker)
            .await
            .list_group_offsets(group, None)
            .await
            .unwrap()
            .into_iter()
            .map(|(tp, o)| ((tp.topic, tp.partition), o.offset))
            .collect()
    })
}

fn offsets(pairs: &[(&str, i32, i64)]) -> BTreeMap<(String, i32), i64> {
    pairs.iter().map(|(t, p, o)| ((t.to_string(), *p), *o)).collect()
}

/// The data rows of a table printed by the CLI whose first column is the group, split on
/// whitespace.
fn rows<'a>(out: &'a str, group: &str) -> Vec<Vec<&'a str>> {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cells| cells.first() == Some(&group) && cells.len() > 3)
        .collect()
}

#[test]
fn describe_reset_delete_offsets_and_delete_round_trip() {
    let rt = runtime();
    let broker = TestBroker::start(BROKER_ARGS).unwrap();
    rt.block_on(topic_with_records(&broker, "events", 2, 10));
    let group = "analytics";

    // Commit from outside the group, as a tool restoring offsets does.
    let plan: BTreeMap<TopicPartition, OffsetAndMetadata> = [
        (TopicPartition::new("events", 0), OffsetAndMetadata::new(2)),
        (TopicPartition::new("events", 1), OffsetAndMetadata::new(3)),
    ]
    .into();
    let results = rt.block_on(async { admin(&broker).await.alter_group_offsets(group, &plan).await.unwrap() });
    assert!(results.values().all(Result::is_ok), "{results:?}");
    assert_eq!(committed(&rt, &broker, group), offsets(&[("events", 0, 2), ("events", 1, 3)]));

    assert!(spate_ok(&broker, &["groups", "--list"]).lines().any(|l| l == group));
    let listed = spate_ok(&broker, &["groups", "--list", "--state"]);
    assert!(listed.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == [group, "Empty"]), "{listed}");
    let stable_only = spate_ok(&broker, &["groups", "--list", "--state", "Stable"]);
    assert!(!stable_only.contains(group), "{stable_only}");

    let described = spate_ok(&broker, &["groups", "--describe", "--group", group]);
    assert!(described.contains("Empty"), "{described}");
    assert!(described.contains(&format!("Consumer group '{group}' has no active members.")), "{described}");
    assert!(described.contains("CURRENT-OFFSET  LOG-END-OFFSET  LAG"), "{described}");
    let offset_rows: Vec<Vec<&str>> =
        rows(&described, group).into_iter().filter(|r| r.get(1) == Some(&"events")).collect();
    assert_eq!(
        offset_rows,
        vec![
            vec![group, "events", "0", "2", "10", "8", "-", "-", "-"],
            vec![group, "events", "1", "3", "10", "7", "-", "-", "-"],
        ],
        "{described}"
    );
    let state_only = spate_ok(&broker, &["groups", "--describe", "--group", group, "--state"]);
    assert!(!state_only.contains("LOG-END-OFFSET") && state_only.contains("ASSIGNMENT-STRATEGY"), "{state_only}");

    // A dry run prints the plan and changes nothing.
    let dry = spate_ok(
        &broker,
        &["groups", "--reset-offsets", "--group", group, "--topic", "events", "--to-earliest", "--dry-run"],
    );
    assert_eq!(rows(&dry, group), vec![vec![group, "events", "0", "0"], vec![group, "events", "1", "0"]], "{dry}");
    assert!(dry.starts_with("GROUP"), "{dry}");
    assert_eq!(committed(&rt, &broker, group), offsets(&[("events", 0, 2), ("events", 1, 3)]));

    let executed = spate_ok(
        &broker,
        &["groups", "--reset-offsets", "--group", group, "--topic", "events", "--to-earliest", "--execute"],
    );
    assert_eq!(rows(&executed, group).len(), 2, "{executed}");
    assert_eq!(committed(&rt, &broker, group), offsets(&[("events", 0, 0), ("events", 1, 0)]));

    let reset = |args: &[&str]| {
        let mut argv = vec!["groups", "--reset-offsets", "--group", group, "--execute"];
        argv.extend_from_slice(args);
        spate_ok(&broker, &argv)
    };
    reset(&["--topic", "events:1", "--to-offset", "4"]);
    assert_eq!(committed(&rt, &broker, group), offsets(&[("events", 0, 0), ("events", 1, 4)]));
    reset(&["--topic", "events:1", "--shift-by", "-1"]);
    reset(&["--topic", "events:0", "--to-offset", "99"]);
    assert_eq!(committed(&rt, &broker, group), offsets(&[("events", 0, 10), ("events", 1, 3)]), "to-offset clamps");
    reset(&["--all-topics", "--shift-by", "-20"]);
    assert_eq!(committed(&rt, &broker, group), offsets(&[("events", 0, 0), ("events", 1, 0)]), "shift-by clamps");
    reset(&["--topic", "events", "--to-latest"]);
    assert_eq!(committed(&rt, &broker, group), offsets(&[("events", 0, 10), ("events", 1, 10)]));
    reset(&["--topic", "events", "--to-datetime", "1970-01-01T00:00:00Z"]);
    assert_eq!(committed(&rt, &broker, group), offsets(&[("events", 0, 0), ("events", 1, 0)]));
    reset(&["--topic", "events", "--to-datetime", "2999-01-01T00:00:00.000+01:00"]);
    assert_eq!(committed(&rt, &broker, group), offsets(&[("events", 0, 10), ("events", 1, 10)]), "none that late");

    let err = spate_err(&broker, &["groups", "--reset-offsets", "--group", group, "--topic", "nope", "--to-latest"]);
    assert!(err.contains("nope"), "{err}");

    let deleted = spate_ok(&broker, &["groups", "--delete-offsets", "--group", group, "--topic", "events:0"]);
    assert!(deleted.contains("Successful"), "{deleted}");
    assert_eq!(committed(&rt, &broker, group), offsets(&[("events", 1, 10)]));

    let out = spate_ok(&broker, &["groups", "--delete", "--group", group]);
    assert!(out.contains(&format!("Deletion of requested consumer groups ('{group}') was successful.")), "{out}");
    assert!(!spate_ok(&broker, &["groups", "--list"]).lines().any(|l| l == group));
    assert!(committed(&rt, &broker, group).is_empty());
    let err = spate_err(&broker, &["groups", "--describe", "--group", group]);
    assert!(err.contains("does not exist"), "{err}");
    let err = spate_err(&broker, &["groups", "--delete", "--group", group]);
    assert!(err.contains("GROUP_ID_NOT_FOUND"), "{err}");
}

/// A `ConsumerProtocolAssignment` v0 as a Java leader writes it: every partition of one topic.
fn assignment(topic: &str, partitions: &[i32]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(1);
    b.put_i16(topic.len() as i16);
    b.put_slice(topic.as_bytes());
    b.put_i32(partitions.len() as i32);
    for p in partitions {
        b.put_i32(*p);
    }
    b.put_i32(-1);
    b.freeze()
}

/// A `ConsumerProtocolSubscription` v0 to one topic.
fn subscription(topic: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(1);
    b.put_i16(topic.len() as i16);
    b.put_slice(topic.as_bytes());
    b.put_i32(-1);
    b.freeze()
}

/// Joins `group` as its only member (leader), assigning itself every partition, as a classic
/// consumer would; the member stays until its session times out or the connection drops.
async fn join_as_only_member(broker: &TestBroker, group: &str, topic: &str, partitions: &[i32]) -> Connection {
    let bootstrap = Connection::connect(&broker.bootstrap(), &Default::default()).await.unwrap();
    let found: FindCoordinatorResponse = bootstrap
        .send(ApiKey::FindCoordinator, 3, &FindCoordinatorRequest::default().with_key(str_bytes(group)))
        .await
        .unwrap();
    assert_eq!(ErrorCode(found.error_code), ErrorCode::NONE);
    let conn = Connection::connect(&format!("{}:{}", found.host, found.port), &Default::default()).await.unwrap();
    let join = |member_id: StrBytes| {
        JoinGroupRequest::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_session_timeout_ms(60_000)
            .with_rebalance_timeout_ms(60_000)
            .with_member_id(member_id)
            .with_protocol_type(str_bytes("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(str_bytes("range"))
                .with_metadata(subscription(topic))])
    };
    // KIP-394: the first join is answered MEMBER_ID_REQUIRED with the id to join with. While the
    // coordinator still loads its __consumer_offsets partition it answers
    // COORDINATOR_LOAD_IN_PROGRESS, which clients retry.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let first: JoinGroupResponse = loop {
        let answer: JoinGroupResponse = conn.send(ApiKey::JoinGroup, 5, &join(str_bytes(""))).await.unwrap();
        if ErrorCode(answer.error_code) != ErrorCode::COORDINATOR_LOAD_IN_PROGRESS
            || std::time::Instant::now() > deadline
        {
            break answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let joined: JoinGroupResponse = if ErrorCode(first.error_code) == ErrorCode::MEMBER_ID_REQUIRED {
        conn.send(ApiKey::JoinGroup, 5, &join(first.member_id.clone())).await.unwrap()
    } else {
        first
    };
    assert_eq!(ErrorCode(joined.error_code), ErrorCode::NONE);
    assert_eq!(joined.leader, joined.member_id, "the only member leads");
    let sync = SyncGroupRequest::default()
        .with_group_id(GroupId(str_bytes(group)))
        .with_generation_id(joined.generation_id)
        .with_member_id(joined.member_id.clone())
        .with_assignments(vec![SyncGroupRequestAssignment::default()
            .with_member_id(joined.member_id.clone())
            .with_assignment(assignment(topic, partitions))]);
    let synced: SyncGroupResponse = conn.send(ApiKey::SyncGroup, 3, &sync).await.unwrap();
    assert_eq!(ErrorCode(synced.error_code), ErrorCode::NONE);
    conn
}

#[test]
fn active_groups_are_described_with_members_and_refuse_resets() {
    let rt = runtime();
    let broker = TestBroker::start(BROKER_ARGS).unwrap();
    rt.block_on(topic_with_records(&broker, "orders", 2, 5));
    let group = "billing";
    let _member = rt.block_on(join_as_only_member(&broker, group, "orders", &[0, 1]));

    let described = spate_ok(&broker, &["groups", "--describe", "--group", group, "--verbose"]);
    assert!(described.contains("Stable"), "{described}");
    assert!(described.contains("range"), "the assignor is shown: {described}");
    assert!(described.contains("orders(0,1)"), "the member's decoded assignment: {described}");
    // No commits yet: the partitions show their owner, no current offset and no lag.
    let offset_rows: Vec<Vec<&str>> =
        rows(&described, group).into_iter().filter(|r| r.get(1) == Some(&"orders")).collect();
    assert_eq!(offset_rows.len(), 2, "{described}");
    for row in &offset_rows {
        assert_eq!(&row[3..6], ["-", "5", "-"], "{described}");
        assert_ne!(row[6], "-", "the owning member is named: {described}");
    }

    let description = rt.block_on(async { admin(&broker).await.describe_group(group).await.unwrap() });
    assert_eq!(description.state, GroupState::Stable);
    assert_eq!(description.protocol_type, "consumer");
    assert_eq!(description.members.len(), 1);
    assert_eq!(
        description.members[0].assignment,
        vec![TopicPartition::new("orders", 0), TopicPartition::new("orders", 1)]
    );

    // Like Kafka: the plan may be shown, but not executed while the group has members.
    let dry = spate_ok(&broker, &["groups", "--reset-offsets", "--group", group, "--topic", "orders", "--to-latest"]);
    assert_eq!(rows(&dry, group).len(), 2, "{dry}");
    let err = spate_err(
        &broker,
        &["groups", "--reset-offsets", "--group", group, "--all-topics", "--to-latest", "--execute"],
    );
    assert!(err.contains("inactive"), "{err}");
    let err = spate_err(
        &broker,
        &["groups", "--reset-offsets", "--group", group, "--topic", "orders", "--to-latest", "--execute"],
    );
    assert!(
        err.contains("can only be reset if the group 'billing' is inactive, but the current state is Stable"),
        "{err}"
    );
    assert!(committed(&rt, &broker, group).is_empty());

    // From outside, the coordinator refuses commits and deletion while the member is there.
    let plan: BTreeMap<TopicPartition, OffsetAndMetadata> =
        [(TopicPartition::new("orders", 0), OffsetAndMetadata::new(1))].into();
    let results = rt.block_on(async { admin(&broker).await.alter_group_offsets(group, &plan).await.unwrap() });
    assert!(results.values().all(Result::is_err), "{results:?}");
    let err = spate_err(&broker, &["groups", "--delete", "--group", group]);
    assert!(err.contains("NON_EMPTY_GROUP"), "{err}");
}

#[test]
fn console_consumers_in_a_group_resume_from_commits_and_show_in_describe() {
    let rt = runtime();
    let broker = TestBroker::start(BROKER_ARGS).unwrap();
    rt.block_on(topic_with_records(&broker, "clicks", 3, 10));
    let group = "dashboard";

    // --max-messages cuts a polled batch: only what was printed is committed.
    let first = spate_ok(
        &broker,
        &["consume", "--topic", "clicks", "--group", group, "--from-beginning", "--max-messages", "12"],
    );
    assert_eq!(first.lines().count(), 12, "{first}");
    let after_first = committed(&rt, &broker, group);
    assert_eq!(after_first.values().sum::<i64>(), 12, "{after_first:?}");

    // A long-running member shows in describe; Ctrl-C commits what it printed and leaves.
    let mut child = Command::new(spate_bin())
        .args(["consume", "--topic", "clicks", "--group", group, "--bootstrap-server", &broker.bootstrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let described = loop {
        let out = spate_ok(&broker, &["groups", "--describe", "--group", group]);
        if out.contains("Stable") && out.contains("spate-console-consumer") && !out.contains("no active members") {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "the console consumer never joined:\n{out}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let owned: Vec<Vec<&str>> = rows(&described, group).into_iter().filter(|r| r.get(1) == Some(&"clicks")).collect();
    assert_eq!(owned.len(), 3, "{described}");
    assert!(owned.iter().all(|r| r[8] == "spate-console-consumer" && r[6] != "-"), "{described}");
    // Wait for the 18 records not read before, then interrupt it (most likely before its first
    // auto-commit, 5 s in, so the offsets checked below are the commit on exit).
    let stdout = child.stdout.take().unwrap();
    let (read_18, got_18) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut read = 0;
        for line in std::io::BufReader::new(stdout).lines() {
            if line.is_err() {
                break;
            }
            read += 1;
            if read == 18 {
                let _ = read_18.send(());
            }
        }
        read
    });
    got_18.recv_timeout(std::time::Duration::from_secs(30)).expect("18 records within 30 s");
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(reader.join().unwrap(), 18, "the 18 records not read before, once each");
    assert!(String::from_utf8_lossy(&output.stderr).contains("Processed a total of 18 messages"));
    assert_eq!(committed(&rt, &broker, group), offsets(&[("clicks", 0, 10), ("clicks", 1, 10), ("clicks", 2, 10)]));
    let described = spate_ok(&broker, &["groups", "--describe", "--group", group, "--state"]);
    assert!(described.contains("Empty"), "it left the group on exit: {described}");
}

//! Deleting a topic and creating one with the same name never costs the new topic its data,
//! including when both changes reach a broker in one metadata image (a broker that was behind,
//! or a follower broker in a cluster): the old replica's directory is renamed away
//! (`<topic>-<p>.<id>-delete`) before the new replica opens `<topic>-<p>`.

mod common;

use std::collections::BTreeMap;

use common::{config, fetch_values, produce_value, start};
use spate_client::connection::Connection;
use spate_client::protocol::ErrorCode;

const TOPIC: &str = "recreated";

/// Produces until the (re)created topic takes writes on this broker; returns the acknowledged
/// values.
async fn produce_some(conn: &Connection, round: usize, count: usize) -> Vec<String> {
    let mut acked = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while acked.len() < count {
        let value = format!("round-{round}-{}", acked.len());
        match produce_value(conn, TOPIC, &value).await.0 {
            ErrorCode::NONE => acked.push(value),
            code => {
                assert!(tokio::time::Instant::now() < deadline, "round {round}: produce keeps failing with {code:?}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_recreate_in_one_image_keeps_the_new_topics_files() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(config(dir.path())).await;
    running.broker.create_topic(TOPIC, 1, -1, BTreeMap::new()).await.unwrap();
    let conn = running.connect().await;
    produce_some(&conn, 0, 5).await;

    // One image in which the topic was deleted and a new one with the same name created.
    let mut image = (*running.broker.image()).clone();
    let new_id = uuid::Uuid::new_v4();
    image.topics.get_mut(TOPIC).unwrap().id = new_id;
    running.broker.reconcile(&image).unwrap();

    let partition_dir = dir.path().join(format!("{TOPIC}-0"));
    let metadata = std::fs::read_to_string(partition_dir.join("partition.metadata"))
        .unwrap_or_else(|e| panic!("the new topic's directory {} is gone: {e}", partition_dir.display()));
    assert!(metadata.contains(&new_id.simple().to_string()), "{metadata}");
    let new_partition = running.broker.partition(TOPIC, 0).unwrap();
    assert!(new_partition.dir().exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("-delete"))
        .collect();
    assert!(leftovers.is_empty(), "deleted replica directories left behind: {leftovers:?}");
    drop(conn);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_recreate_in_a_loop_while_producing_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(config(dir.path())).await;
    let conn = running.connect().await;
    let mut acked = Vec::new();
    for round in 0..15 {
        if round > 0 {
            running.broker.delete_topic(TOPIC).await.unwrap();
        }
        running.broker.create_topic(TOPIC, 1, -1, BTreeMap::new()).await.unwrap();
        acked = produce_some(&conn, round, 20).await;
        let (code, values) = fetch_values(&conn, TOPIC).await;
        assert_eq!(code, ErrorCode::NONE, "round {round}");
        assert_eq!(values, acked, "round {round}: the new topic holds exactly what was acknowledged to it");
    }
    drop(conn);
    running.stop().await;

    // After a restart the last topic still holds every acknowledged record.
    let running = start(config(dir.path())).await;
    let conn = running.connect().await;
    let (code, values) = fetch_values(&conn, TOPIC).await;
    assert_eq!(code, ErrorCode::NONE);
    assert_eq!(values, acked);
    drop(conn);
    running.stop().await;
}

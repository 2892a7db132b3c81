//! The Spate group consumer against a real broker: members that are not the group leader must
//! fetch too (a follower never looked its topics up before being assigned them), and the group
//! splits the partitions so every record is read.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use spate_client::admin::{AdminConfig, NewTopic};
use spate_client::{Admin, AutoOffsetReset, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord};
use spate_e2e::TestBroker;

type Seen = Arc<Mutex<Vec<(String, i32, i64)>>>;

async fn member(
    broker: &TestBroker,
    client_id: &str,
    seen: Seen,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let consumer = Consumer::new(ConsumerConfig {
        bootstrap_servers: vec![broker.bootstrap()],
        client_id: client_id.to_string(),
        group_id: Some("followers-fetch".to_string()),
        auto_offset_reset: AutoOffsetReset::Earliest,
        session_timeout_ms: 6000,
        heartbeat_interval_ms: 300,
        ..ConsumerConfig::default()
    })
    .await
    .unwrap();
    consumer.subscribe(&["grouped"]).await.unwrap();
    let name = client_id.to_string();
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let records = consumer.poll(Duration::from_millis(100)).await.unwrap();
            let mut seen = seen.lock().unwrap();
            seen.extend(records.iter().map(|r| (name.clone(), r.partition, r.offset)));
        }
        consumer.close().await.unwrap();
    })
}

#[tokio::test]
async fn leader_and_follower_both_consume_their_partitions() {
    let broker = TestBroker::start(&["--set", "group.initial.rebalance.delay.ms=0"]).unwrap();
    let admin = Admin::new(AdminConfig { bootstrap_servers: vec![broker.bootstrap()], ..AdminConfig::default() })
        .await
        .unwrap();
    admin.create_topic(NewTopic::new("grouped", 4, 1)).await.unwrap();
    let seen: Seen = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let leader = member(&broker, "leader", seen.clone(), stop.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let follower = member(&broker, "follower", seen.clone(), stop.clone()).await;
    // Let the second member join and the group settle before producing.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let producer =
        Producer::new(ProducerConfig { bootstrap_servers: vec![broker.bootstrap()], ..ProducerConfig::default() })
            .await
            .unwrap();
    let mut deliveries = Vec::new();
    for i in 0..400 {
        let record = ProducerRecord::new(Bytes::from(format!("v{i}"))).with_partition(i % 4);
        deliveries.push(producer.send("grouped", record).await.unwrap());
    }
    for d in deliveries {
        d.await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let distinct: BTreeSet<(i32, i64)> = seen.lock().unwrap().iter().map(|(_, p, o)| (*p, *o)).collect();
        if distinct.len() >= 400 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    leader.await.unwrap();
    follower.await.unwrap();
    let seen = seen.lock().unwrap();
    let distinct: BTreeSet<(i32, i64)> = seen.iter().map(|(_, p, o)| (*p, *o)).collect();
    assert_eq!(distinct.len(), 400, "every record is read by the group");
    for name in ["leader", "follower"] {
        let partitions: BTreeSet<i32> = seen.iter().filter(|(n, _, _)| n == name).map(|(_, p, _)| *p).collect();
        assert_eq!(partitions.len(), 2, "{name} reads its two partitions, got {partitions:?}");
    }
}

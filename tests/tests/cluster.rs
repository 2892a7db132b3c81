//! Spate's own client against a three-broker replicated cluster (`TestCluster`): acks=all writes
//! through a leader kill are all read back exactly once at their acknowledged offsets, and the
//! admin API describes leaders, replicas and the ISR as brokers come and go.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use spate_client::admin::{AdminConfig, NewTopic, OffsetSpec};
use spate_client::{
    Admin, AutoOffsetReset, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, TopicPartition,
};
use spate_e2e::TestCluster;

const PARTITIONS: i32 = 3;
const RECORDS: usize = 3000;

async fn admin(cluster: &TestCluster) -> Admin {
    Admin::new(AdminConfig { bootstrap_servers: cluster.bootstrap_servers(), ..AdminConfig::default() })
        .await
        .expect("admin connects")
}

/// Every record of `topic` up to the current end offsets: (partition, offset) -> value.
async fn read_all(cluster: &TestCluster, topic: &str) -> BTreeMap<(i32, i64), String> {
    let tps: Vec<TopicPartition> = (0..PARTITIONS).map(|p| TopicPartition::new(topic, p)).collect();
    let ends = admin(cluster)
        .await
        .list_offsets(&tps.iter().map(|tp| (tp.clone(), OffsetSpec::Latest)).collect::<Vec<_>>())
        .await
        .expect("end offsets");
    let consumer = Consumer::new(ConsumerConfig {
        bootstrap_servers: cluster.bootstrap_servers(),
        auto_offset_reset: AutoOffsetReset::Earliest,
        fetch_max_wait_ms: 100,
        ..ConsumerConfig::default()
    })
    .await
    .expect("consumer connects");
    consumer.assign(tps.clone()).await.unwrap();
    consumer.seek_to_beginning(&[]).await.unwrap();
    let mut out = BTreeMap::new();
    let mut next: HashMap<i32, i64> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tps.iter().any(|tp| next.get(&tp.partition).copied().unwrap_or(0) < ends[tp].offset) {
        assert!(tokio::time::Instant::now() < deadline, "read up to {next:?} of {ends:?} within 60 s");
        for r in consumer.poll(Duration::from_millis(200)).await.expect("poll") {
            let value = String::from_utf8(r.value.expect("a value").to_vec()).expect("utf-8 value");
            assert!(
                out.insert((r.partition, r.offset), value).is_none(),
                "offset {}/{} read twice",
                r.partition,
                r.offset
            );
            next.insert(r.partition, r.offset + 1);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_writes_survive_a_leader_kill() {
    let mut cluster = TestCluster::start(3, &[]).await.unwrap();
    let topic = "failover";
    admin(&cluster)
        .await
        .create_topic(NewTopic::new(topic, PARTITIONS, 3).with_config("min.insync.replicas", "2"))
        .await
        .unwrap();
    for p in 0..PARTITIONS {
        cluster.wait_isr(topic, p, 3, Duration::from_secs(30)).await.unwrap();
    }
    let producer = Producer::new(ProducerConfig {
        bootstrap_servers: cluster.bootstrap_servers(),
        acks: -1,
        enable_idempotence: true,
        linger_ms: 5,
        request_timeout_ms: 10_000,
        delivery_timeout_ms: 60_000,
        retry_backoff_ms: 100,
        ..ProducerConfig::default()
    })
    .await
    .unwrap();

    // Records go out paced (about 1000/s) so that a good part of them is sent during the failover.
    let sender = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut futures = Vec::with_capacity(RECORDS);
            for i in 0..RECORDS {
                let record = ProducerRecord::new(format!("v-{i}")).with_partition(i as i32 % PARTITIONS);
                futures.push(producer.send(topic, record).await.expect("send"));
                if i % 10 == 9 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            futures
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let victim = cluster.wait_leader(topic, 0, &[], Duration::from_secs(10)).await.unwrap();
    cluster.kill9(victim);
    let successor = cluster.wait_leader(topic, 0, &[victim], Duration::from_secs(20)).await.unwrap();
    assert_ne!(successor, victim);
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.restart(victim).unwrap();

    let futures = sender.await.unwrap();
    let mut acked: BTreeMap<(i32, i64), String> = BTreeMap::new();
    let mut failed = Vec::new();
    for (i, f) in futures.into_iter().enumerate() {
        match f.await {
            Ok(md) => {
                assert_eq!(md.partition, i as i32 % PARTITIONS, "record {i} landed in another partition");
                if let Some(other) = acked.insert((md.partition, md.offset), format!("v-{i}")) {
                    panic!("offset {}/{} acknowledged for {other} and v-{i}", md.partition, md.offset);
                }
            }
            Err(e) => failed.push((i, e.to_string())),
        }
    }
    producer.close().await.unwrap();
    for p in 0..PARTITIONS {
        cluster.wait_isr(topic, p, 3, Duration::from_secs(30)).await.unwrap();
    }

    let read = read_all(&cluster, topic).await;
    let lost: Vec<_> = acked.iter().filter(|(pos, v)| read.get(pos) != Some(v)).take(5).collect();
    assert!(lost.is_empty(), "acknowledged writes missing or moved (killed broker {victim}): {lost:?}");
    let mut seen: HashMap<&str, (i32, i64)> = HashMap::new();
    for (pos, v) in &read {
        if let Some(first) = seen.insert(v.as_str(), *pos) {
            panic!("{v} read at {first:?} and {pos:?}");
        }
    }
    // Per partition, offset order is send order.
    let mut last: HashMap<i32, usize> = HashMap::new();
    for ((p, _), v) in &read {
        let i: usize = v.trim_start_matches("v-").parse().unwrap();
        if let Some(prev) = last.insert(*p, i) {
            assert!(prev < i, "partition {p}: v-{i} after v-{prev}");
        }
    }
    assert!(
        failed.is_empty(),
        "{} sends failed despite a 60 s delivery timeout: {:?}",
        failed.len(),
        &failed[..3.min(failed.len())]
    );
    assert!(cluster.crashed().is_empty(), "brokers crashed: {:?}\n{}", cluster.crashed(), cluster.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_describes_replicas_isr_and_offline_replicas() {
    let mut cluster = TestCluster::start(3, &[]).await.unwrap();
    let topic = "described";
    admin(&cluster).await.create_topic(NewTopic::new(topic, 2, 3)).await.unwrap();
    for p in 0..2 {
        cluster.wait_isr(topic, p, 3, Duration::from_secs(30)).await.unwrap();
    }
    let described = admin(&cluster).await.describe_topics(&[topic]).await.unwrap();
    let partitions = &described[0].partitions;
    assert_eq!(partitions.len(), 2);
    for p in partitions {
        let mut replicas = p.replicas.clone();
        replicas.sort_unstable();
        assert_eq!(replicas, vec![1, 2, 3], "partition {} replicas", p.partition);
        let mut isr = p.isr.clone();
        isr.sort_unstable();
        assert_eq!(isr, vec![1, 2, 3], "partition {} ISR", p.partition);
        assert!(p.replicas.contains(&p.leader), "partition {} leader {} not a replica", p.partition, p.leader);
        assert!(p.offline_replicas.is_empty());
    }
    // Replica placement spreads the preferred leaders (first replicas) over the brokers.
    assert_ne!(partitions[0].replicas[0], partitions[1].replicas[0], "both partitions prefer the same leader");

    // A broker that is down leaves the ISR and shows as an offline replica; the admin client sees it.
    let down = partitions[0].leader;
    cluster.kill9(down);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let d = admin(&cluster).await.describe_topics(&[topic]).await;
        let ok = d.as_ref().is_ok_and(|d| {
            d[0].partitions.iter().all(|p| {
                p.leader != down && !p.isr.contains(&down) && p.isr.len() == 2 && p.offline_replicas == vec![down]
            })
        });
        if ok {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "after killing broker {down}: {d:?}\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.restart(down).unwrap();
    for p in 0..2 {
        cluster.wait_isr(topic, p, 3, Duration::from_secs(30)).await.unwrap();
    }
    let d = admin(&cluster).await.describe_topics(&[topic]).await.unwrap();
    assert!(d[0].partitions.iter().all(|p| p.offline_replicas.is_empty()), "offline replicas after restart: {d:?}");
}

//! The idempotent producer when Produce responses are lost: a proxy between the Spate producer
//! and a real `spate broker` swallows them, so batches fail on the client (past
//! `delivery.timeout.ms`) although the broker wrote them. Every record reported delivered must
//! be in the log exactly once, at the offset reported, and no record may be in it twice.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spate_client::admin::{AdminConfig, NewTopic};
use spate_client::{
    Admin, AutoOffsetReset, Consumer, ConsumerConfig, DeliveryFuture, Producer, ProducerConfig, ProducerRecord,
    TopicPartition,
};
use spate_e2e::TestBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Produce's API key.
const PRODUCE: i16 = 0;
/// Frames larger than this close the proxied connection (bounds what the proxy buffers).
const MAX_FRAME_BYTES: usize = 64 << 20;

/// A loopback TCP proxy in front of one broker that, while `dropping` is set, forwards Produce
/// requests but swallows their responses.
struct FaultProxy {
    addr: SocketAddr,
    dropping: Arc<AtomicBool>,
    dropped: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    fn start(listener: TcpListener, upstream: SocketAddr) -> FaultProxy {
        let addr = listener.local_addr().unwrap();
        let dropping = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (d, n) = (dropping.clone(), dropped.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else { continue };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                // Correlation ids of this connection's Produce requests whose responses to drop.
                let doomed = Arc::new(Mutex::new(HashSet::new()));
                tokio::spawn(forward_requests(client_read, server_write, d.clone(), doomed.clone()));
                tokio::spawn(forward_responses(server_read, client_write, doomed, n.clone()));
            }
        });
        FaultProxy { addr, dropping, dropped, accept }
    }

    fn drop_produce_responses(&self, on: bool) {
        self.dropping.store(on, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Reads one size-prefixed Kafka frame; `None` at the end of the stream or on a bad size.
async fn read_frame(from: &mut OwnedReadHalf) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    from.read_exact(&mut size).await.ok()?;
    let size = usize::try_from(i32::from_be_bytes(size)).ok().filter(|s| *s <= MAX_FRAME_BYTES)?;
    let mut frame = vec![0u8; 4 + size];
    frame[..4].copy_from_slice(&(size as i32).to_be_bytes());
    from.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}

async fn forward_requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    dropping: Arc<AtomicBool>,
    doomed: Arc<Mutex<HashSet<i32>>>,
) {
    while let Some(frame) = read_frame(&mut from).await {
        // Request header: api_key (i16), api_version (i16), correlation_id (i32).
        if frame.len() >= 12 && dropping.load(Ordering::SeqCst) {
            let api_key = i16::from_be_bytes([frame[4], frame[5]]);
            if api_key == PRODUCE {
                let correlation_id = i32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]);
                doomed.lock().unwrap().insert(correlation_id);
            }
        }
        if to.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

async fn forward_responses(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    doomed: Arc<Mutex<HashSet<i32>>>,
    dropped: Arc<AtomicUsize>,
) {
    while let Some(frame) = read_frame(&mut from).await {
        if frame.len() >= 8 {
            let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            if doomed.lock().unwrap().remove(&correlation_id) {
                dropped.fetch_add(1, Ordering::SeqCst);
                continue;
            }
        }
        if to.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Sends `values` to partition 0 without waiting in between, then waits for every outcome;
/// returns (value, offset) of those reported delivered and how many failed.
async fn send_all(producer: &Producer, topic: &str, values: &[String]) -> (Vec<(String, i64)>, usize) {
    let mut futures: Vec<(String, DeliveryFuture)> = Vec::new();
    for v in values {
        let f = producer.send(topic, ProducerRecord::new(v.clone()).with_partition(0)).await.unwrap();
        futures.push((v.clone(), f));
    }
    let mut delivered = Vec::new();
    let mut failed = 0;
    for (v, f) in futures {
        match f.await {
            Ok(m) => delivered.push((v, m.offset)),
            Err(_) => failed += 1,
        }
    }
    (delivered, failed)
}

/// Every record of partition 0 up to and including `last_offset`, by offset.
async fn read_partition(bootstrap: &str, topic: &str, last_offset: i64) -> HashMap<i64, String> {
    let consumer = Consumer::new(ConsumerConfig {
        bootstrap_servers: vec![bootstrap.to_string()],
        auto_offset_reset: AutoOffsetReset::Earliest,
        fetch_max_wait_ms: 100,
        ..ConsumerConfig::default()
    })
    .await
    .unwrap();
    consumer.assign(vec![TopicPartition::new(topic, 0)]).await.unwrap();
    consumer.seek_to_beginning(&[]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut log = HashMap::new();
    while !log.contains_key(&last_offset) {
        assert!(tokio::time::Instant::now() < deadline, "offset {last_offset} of {topic} not read within 30 s");
        for r in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
            assert!(log.insert(r.offset, value).is_none(), "offset {} read twice", r.offset);
        }
    }
    log
}

/// Reads the partition up to the last delivered offset and checks that every delivered record is
/// at the offset reported, that nothing is in the log twice, and that nothing unsent is.
async fn check_log(bootstrap: &str, topic: &str, delivered: &[(String, i64)], sent: &[String]) {
    let last_offset = delivered.iter().map(|(_, o)| *o).max().unwrap();
    let log = read_partition(bootstrap, topic, last_offset).await;
    for (value, offset) in delivered {
        assert_eq!(
            log.get(offset),
            Some(value),
            "{value} was reported delivered at offset {offset}, which holds {:?}",
            log.get(offset)
        );
    }
    let mut seen = HashSet::new();
    for value in log.values() {
        assert!(seen.insert(value), "{value} is in the log twice");
        assert!(sent.contains(value), "{value} was never sent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_produce_responses_neither_lose_nor_duplicate_records() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    // Clients learn the proxy as the broker's address, so every connection goes through it.
    let advertised = format!("advertised.listeners={proxy_addr}");
    let broker = TestBroker::start(&["--set", &advertised]).unwrap();
    let proxy = FaultProxy::start(listener, broker.addr);
    assert_eq!(proxy.addr, proxy_addr);
    let topic = "idempotence";
    let admin = Admin::new(AdminConfig { bootstrap_servers: vec![proxy_addr.to_string()], ..AdminConfig::default() })
        .await
        .unwrap();
    admin.create_topic(NewTopic::new(topic, 1, 1)).await.unwrap();

    // A request that gets no answer fails at once: request.timeout.ms is delivery.timeout.ms.
    let producer = Producer::new(ProducerConfig {
        bootstrap_servers: vec![proxy_addr.to_string()],
        linger_ms: 0,
        request_timeout_ms: 1500,
        delivery_timeout_ms: 1500,
        retry_backoff_ms: 20,
        ..ProducerConfig::default()
    })
    .await
    .unwrap();

    let mut delivered: Vec<(String, i64)> = Vec::new();
    let mut sent: Vec<String> = Vec::new();
    // One batch the broker wrote but whose answer was lost, then a different one. Reusing the
    // failed batch's sequence makes the broker take the second for a retry of the first.
    proxy.drop_produce_responses(true);
    let lost = vec!["lost-0".to_string()];
    let (ok, failed) = send_all(&producer, topic, &lost).await;
    assert_eq!((ok.len(), failed), (0, 1), "the batch whose response was dropped must fail");
    assert!(proxy.dropped.load(Ordering::SeqCst) >= 1);
    proxy.drop_produce_responses(false);
    sent.extend(lost);
    let next = vec!["after-0".to_string()];
    let (ok, failed) = send_all(&producer, topic, &next).await;
    assert_eq!((ok.len(), failed), (1, 0), "the batch after the failed one must be delivered");
    delivered.extend(ok);
    sent.extend(next);
    check_log(&proxy_addr.to_string(), topic, &delivered, &sent).await;

    // Then rounds of several batches in flight at once while responses are lost, each followed
    // by batches that get through.
    for round in 1..=3 {
        proxy.drop_produce_responses(true);
        let lost: Vec<String> = (0..4).map(|i| format!("lost-{round}-{i}")).collect();
        let (ok, _) = send_all(&producer, topic, &lost).await;
        delivered.extend(ok);
        sent.extend(lost);
        proxy.drop_produce_responses(false);
        let next: Vec<String> = (0..6).map(|i| format!("after-{round}-{i}")).collect();
        let (ok, failed) = send_all(&producer, topic, &next).await;
        assert_eq!(failed, 0, "round {round}: nothing was dropped, yet a send failed");
        delivered.extend(ok);
        sent.extend(next);
    }
    producer.close().await.unwrap();
    check_log(&proxy_addr.to_string(), topic, &delivered, &sent).await;
}

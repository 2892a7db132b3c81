//! Produces records to a topic, then reads them back: the producer, consumer and admin clients
//! end to end.
//!
//! ```text
//! cargo run -p spate-examples --example produce_consume -- --bootstrap-server 127.0.0.1:9092 \
//!     [--topic demo] [--count 100000] [--partitions 3]
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use spate_client::admin::{AdminConfig, NewTopic};
use spate_client::protocol::ErrorCode;
use spate_client::{
    Admin, AutoOffsetReset, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, TopicPartition,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut bootstrap = "127.0.0.1:9092".to_string();
    let mut topic = "produce-consume-demo".to_string();
    let mut count: usize = 100_000;
    let mut partitions: i32 = 3;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--bootstrap-server" => bootstrap = value()?,
            "--topic" => topic = value()?,
            "--count" => count = value()?.parse()?,
            "--partitions" => partitions = value()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let servers = vec![bootstrap];

    let admin = Admin::new(AdminConfig { bootstrap_servers: servers.clone(), ..AdminConfig::default() }).await?;
    match admin.create_topic(NewTopic::new(topic.as_str(), partitions, 1)).await {
        Ok(()) => println!("created topic {topic} with {partitions} partitions"),
        Err(e) if e.code() == Some(ErrorCode::TOPIC_ALREADY_EXISTS) => println!("topic {topic} exists"),
        Err(e) => return Err(e.into()),
    }
    let description = admin.describe_topics(&[topic.as_str()]).await?.remove(0);
    let mut end_before = BTreeMap::new();
    for p in &description.partitions {
        let tp = TopicPartition::new(topic.as_str(), p.partition);
        let offsets = admin.list_offsets(&[(tp.clone(), spate_client::admin::OffsetSpec::Latest)]).await?;
        end_before.insert(tp.clone(), offsets[&tp].offset);
    }

    let producer =
        Producer::new(ProducerConfig { bootstrap_servers: servers.clone(), ..ProducerConfig::default() }).await?;
    let started = Instant::now();
    let mut last = None;
    for i in 0..count {
        let record = ProducerRecord::new(format!("value-{i:08}")).with_key(format!("key-{}", i % 1000));
        last = Some(producer.send(&topic, record).await?);
    }
    producer.flush().await?;
    if let Some(last) = last {
        let metadata = last.await?;
        println!("last record went to partition {} at offset {}", metadata.partition, metadata.offset);
    }
    let elapsed = started.elapsed();
    println!("produced {count} records in {elapsed:?} ({:.0} records/s)", count as f64 / elapsed.as_secs_f64());
    producer.close().await?;

    let consumer = Consumer::new(ConsumerConfig {
        bootstrap_servers: servers,
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerConfig::default()
    })
    .await?;
    consumer.assign(end_before.keys().cloned().collect()).await?;
    for (tp, offset) in &end_before {
        consumer.seek(tp, *offset).await?;
    }
    let started = Instant::now();
    let mut received = 0;
    while received < count {
        let records = consumer.poll(Duration::from_secs(5)).await?;
        if records.is_empty() {
            return Err(format!("only {received} of {count} records came back").into());
        }
        received += records.len();
    }
    let elapsed = started.elapsed();
    println!("consumed {received} records in {elapsed:?} ({:.0} records/s)", received as f64 / elapsed.as_secs_f64());
    Ok(())
}

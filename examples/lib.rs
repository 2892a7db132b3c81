//! Runnable examples of Spate, one idea each; run them with
//! `cargo run -p spate-examples --example NAME -- --bootstrap-server 127.0.0.1:9092`:
//!
//! - `produce_consume`: create a topic, produce keyed records, read them back.
//! - `at_most_once`: a group consumer that commits before processing; a crash loses records.
//! - `at_least_once`: a group consumer that commits after processing; a crash repeats records.
//! - `exactly_once_idempotent`: at-least-once delivery into an idempotent sink keyed by input
//!   offset, so repeats overwrite and the output is as if each record was processed once.
//!
//! The helpers below are shared by the delivery-semantics examples.

use std::time::Duration;

#[path = "streams_apps.rs"]
pub mod streams_apps;

use anyhow::{bail, Context};
use spate_client::admin::{AdminConfig, NewTopic};
use spate_client::protocol::ErrorCode;
use spate_client::{
    Admin, Assignor, Consumer, ConsumerConfig, ConsumerRecord, Producer, ProducerConfig, ProducerRecord,
};

/// Command-line arguments of the delivery-semantics examples.
#[derive(Debug, Clone)]
pub struct GroupArgs {
    pub bootstrap_server: String,
    pub topic: String,
    pub group: String,
    /// Records to produce before consuming (0: consume what is there).
    pub produce: usize,
    /// Simulate a crash: exit abruptly after processing this many records.
    pub crash_after: Option<usize>,
    /// Stop after this long without records.
    pub idle_ms: u64,
    /// Where the idempotent sink keeps its output.
    pub output: String,
    /// `partition.assignment.strategy`, comma-separated (e.g. `cooperative-sticky`).
    pub strategy: Vec<Assignor>,
}

impl GroupArgs {
    /// Parses `--bootstrap-server`, `--topic`, `--group`, `--produce`, `--crash-after`,
    /// `--idle-ms`, `--output` and `--strategy`.
    pub fn parse(example: &str) -> anyhow::Result<GroupArgs> {
        let mut parsed = GroupArgs {
            bootstrap_server: "127.0.0.1:9092".into(),
            topic: format!("{example}-demo"),
            group: format!("{example}-group"),
            produce: 0,
            crash_after: None,
            idle_ms: 3_000,
            output: format!("{example}-output.tsv"),
            strategy: ConsumerConfig::default().partition_assignment_strategy,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--bootstrap-server" => parsed.bootstrap_server = value()?,
                "--topic" => parsed.topic = value()?,
                "--group" => parsed.group = value()?,
                "--produce" => parsed.produce = value()?.parse()?,
                "--crash-after" => parsed.crash_after = Some(value()?.parse()?),
                "--idle-ms" => parsed.idle_ms = value()?.parse()?,
                "--output" => parsed.output = value()?,
                "--strategy" => {
                    parsed.strategy = value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, String>>()
                        .map_err(anyhow::Error::msg)?
                }
                other => bail!("unknown argument {other}"),
            }
        }
        Ok(parsed)
    }
}

/// Creates the topic (3 partitions) if needed and produces `args.produce` records to it.
pub async fn prepare_topic(args: &GroupArgs) -> anyhow::Result<()> {
    let servers = vec![args.bootstrap_server.clone()];
    let admin = Admin::new(AdminConfig { bootstrap_servers: servers.clone(), ..AdminConfig::default() }).await?;
    match admin.create_topic(NewTopic::new(args.topic.as_str(), 3, 1)).await {
        Ok(()) => println!("created topic {}", args.topic),
        Err(e) if e.code() == Some(ErrorCode::TOPIC_ALREADY_EXISTS) => {}
        Err(e) => return Err(e.into()),
    }
    if args.produce > 0 {
        let producer =
            Producer::new(ProducerConfig { bootstrap_servers: servers, ..ProducerConfig::default() }).await?;
        for i in 0..args.produce {
            producer.send(&args.topic, ProducerRecord::new(format!("record-{i}")).with_key(format!("k{i}"))).await?;
        }
        producer.close().await?;
        println!("produced {} records to {}", args.produce, args.topic);
    }
    Ok(())
}

/// Polls until caught up: `None` once a poll of up to `idle` brings nothing while every
/// assigned partition has been read to its end (lag 0). While the group is still forming (a
/// restarted member may wait for the session of its crashed predecessor to expire) it keeps
/// polling.
pub async fn poll_until_idle(consumer: &Consumer, idle: Duration) -> anyhow::Result<Option<Vec<ConsumerRecord>>> {
    loop {
        let records = consumer.poll(idle).await?;
        if !records.is_empty() {
            return Ok(Some(records));
        }
        let assignment = consumer.assignment().await;
        let mut caught_up = !assignment.is_empty();
        for tp in &assignment {
            caught_up &= consumer.lag(tp).await? == Some(0);
        }
        if caught_up {
            return Ok(None);
        }
    }
}

/// Short enough that a restarted example does not wait long for its crashed predecessor to
/// be dropped from the group (Kafka's default is 45 s).
pub const SESSION_TIMEOUT_MS: u64 = 10_000;

/// The "work" of the examples: what a record turns into.
pub fn process(record: &ConsumerRecord) -> String {
    let value = record.value.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
    value.to_uppercase()
}

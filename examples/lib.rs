//! Runnable examples of Spate, one idea each; run them with
//! `cargo run -p spate-examples --example NAME -- --bootstrap-server 127.0.0.1:9092`:
//!
//! - `produce_consume`: create a topic, produce keyed records, read them back.
//! - `at_most_once`: a group consumer that commits before processing; a crash loses records.
//! - `at_least_once`: a group consumer that commits after processing; a crash repeats records.
//! - `exactly_once_idempotent`: at-least-once delivery into an idempotent sink keyed by input
//!   offset, so repeats overwrite and the output is as if each record was processed once.
//!
//! spate-streams applications (topologies in [`streams_apps`], run by [`run_streams`] until
//! Ctrl-C):
//!
//! - `wordcount`: Kafka's WordCountDemo, `streams-plaintext-input` → `streams-wordcount-output`.
//! - `pageview_counts`: tumbling-window page view counts, final results only.
//! - `orders_payments`: a windowed stream-stream left join, split into paid and unpaid orders.
//! - `enrich_clicks`: a stream-table left join against a compacted `users` topic.
//! - `session_activity`: session windows per user.
//!
//! The helpers below are shared by the delivery-semantics and streams examples.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[path = "streams_apps.rs"]
pub mod streams_apps;

use anyhow::{bail, Context};
use spate_client::admin::{AdminConfig, NewTopic};
use spate_client::protocol::ErrorCode;
use spate_client::{
    Admin, Assignor, Consumer, ConsumerConfig, ConsumerRecord, Producer, ProducerConfig, ProducerRecord,
};
use spate_streams::{KafkaStreams, StreamsConfig, StreamsState, Topology};

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

/// Command-line arguments of the streams examples: `--bootstrap-server HOST:PORT`,
/// `--partitions N` (of the topics the example creates), `--state-dir DIR`, `--config KEY=VALUE`
/// (a `StreamsConfig` key, repeatable) and the example's own `--NAME-ms` durations.
#[derive(Debug, Clone)]
pub struct StreamsArgs {
    pub bootstrap_server: String,
    /// Partitions of the input and output topics the example creates (existing topics are
    /// left as they are).
    pub partitions: i32,
    /// `state.dir`; default `<temp dir>/spate-streams`.
    pub state_dir: PathBuf,
    /// Extra `StreamsConfig` keys, applied after the examples' defaults.
    pub config: Vec<(String, String)>,
    /// The example's own `--NAME-ms` options, by NAME.
    durations_ms: BTreeMap<&'static str, u64>,
}

impl StreamsArgs {
    /// Parses the common options plus `--NAME-ms` for each `(NAME, default)` of `durations_ms`.
    pub fn parse(durations_ms: &[(&'static str, u64)]) -> anyhow::Result<StreamsArgs> {
        StreamsArgs::parse_from(std::env::args().skip(1), durations_ms)
    }

    fn parse_from(
        args: impl IntoIterator<Item = String>,
        durations_ms: &[(&'static str, u64)],
    ) -> anyhow::Result<StreamsArgs> {
        let mut parsed = StreamsArgs {
            bootstrap_server: "127.0.0.1:9092".into(),
            partitions: 3,
            state_dir: std::env::temp_dir().join("spate-streams"),
            config: Vec::new(),
            durations_ms: durations_ms.iter().copied().collect(),
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--bootstrap-server" => parsed.bootstrap_server = value()?,
                "--partitions" => parsed.partitions = value()?.parse().context("--partitions")?,
                "--state-dir" => parsed.state_dir = value()?.into(),
                "--config" => {
                    let pair = value()?;
                    let (key, v) =
                        pair.split_once('=').with_context(|| format!("--config {pair}: expected KEY=VALUE"))?;
                    parsed.config.push((key.to_string(), v.to_string()));
                }
                other => {
                    let name = other.strip_prefix("--").and_then(|o| o.strip_suffix("-ms"));
                    match name.and_then(|n| durations_ms.iter().find(|(d, _)| *d == n)) {
                        Some((name, _)) => {
                            let ms = value()?.parse().with_context(|| format!("{other} must be milliseconds"))?;
                            parsed.durations_ms.insert(name, ms);
                        }
                        None => bail!("unknown argument {other}"),
                    }
                }
            }
        }
        if parsed.partitions < 1 {
            bail!("--partitions must be at least 1");
        }
        Ok(parsed)
    }

    /// The value of `--NAME-ms`, or its default.
    pub fn duration(&self, name: &str) -> Duration {
        Duration::from_millis(self.durations_ms.get(name).copied().unwrap_or_default())
    }

    /// A topic of `--partitions` partitions and the broker's replication factor.
    pub fn topic(&self, name: &str) -> NewTopic {
        NewTopic::new(name, self.partitions, -1)
    }
}

/// Creates `topics` where missing, runs `topology` as `application_id` until Ctrl-C (or
/// SIGTERM), then closes it. An error if the application stops by itself in the Error state.
///
/// Commits every second (`commit.interval.ms=1000`, Kafka's default is 30 s) so that results
/// show up in the output topics about a second after their input; `--config` overrides it.
pub async fn run_streams(
    application_id: &str,
    args: &StreamsArgs,
    topology: Topology,
    topics: &[NewTopic],
) -> anyhow::Result<()> {
    let admin =
        Admin::new(AdminConfig { bootstrap_servers: vec![args.bootstrap_server.clone()], ..AdminConfig::default() })
            .await
            .with_context(|| format!("connecting to {}", args.bootstrap_server))?;
    for (name, result) in admin.create_topics(topics).await? {
        match result {
            Ok(()) => println!("created topic {name}"),
            Err(e) if e.code() == Some(ErrorCode::TOPIC_ALREADY_EXISTS) => {}
            Err(e) => return Err(e).with_context(|| format!("creating topic {name}")),
        }
    }
    let state_dir = args.state_dir.to_str().context("--state-dir must be UTF-8")?;
    let mut config = StreamsConfig::new(application_id, &args.bootstrap_server)
        .set("state.dir", state_dir)?
        .set("commit.interval.ms", "1000")?;
    for (key, value) in &args.config {
        config = config.set(key, value)?;
    }
    let mut streams = KafkaStreams::new(topology, config)?;
    streams.start()?;
    println!(
        "{application_id} running against {} (state in {}); Ctrl-C to stop",
        args.bootstrap_server,
        args.state_dir.display()
    );
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = check.tick() => {
                if let StreamsState::Error(_) = streams.state() {
                    break;
                }
            }
        }
    }
    // close() joins the stream threads, which run on their own runtimes: blocking here is fine.
    let closed = streams.close();
    let processed = streams.metrics().records_processed.load(std::sync::atomic::Ordering::Relaxed);
    closed.with_context(|| format!("{application_id} stopped"))?;
    println!("{application_id} closed after processing {processed} records");
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<StreamsArgs> {
        StreamsArgs::parse_from(args.iter().map(|a| a.to_string()), &[("window", 60_000), ("grace", 10_000)])
    }

    #[test]
    fn streams_args_take_defaults_and_overrides() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.bootstrap_server, "127.0.0.1:9092");
        assert_eq!(args.duration("window"), Duration::from_secs(60));
        let args =
            parse(&["--bootstrap-server", "h:1", "--grace-ms", "5", "--config", "num.stream.threads=2"]).unwrap();
        assert_eq!(args.bootstrap_server, "h:1");
        assert_eq!(args.duration("grace"), Duration::from_millis(5));
        assert_eq!(args.config, vec![("num.stream.threads".to_string(), "2".to_string())]);
    }

    #[test]
    fn streams_args_refuse_unknown_and_bad_options() {
        assert!(parse(&["--gap-ms", "1"]).is_err());
        assert!(parse(&["--window-ms", "soon"]).is_err());
        assert!(parse(&["--window-ms"]).is_err());
        assert!(parse(&["--config", "novalue"]).is_err());
        assert!(parse(&["--partitions", "0"]).is_err());
    }
}

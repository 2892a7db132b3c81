//! `spate transactions`: list and describe transactions, describe a partition's producers, find
//! hanging transactions and abort one, like `kafka-transactions.sh list`, `describe`,
//! `describe-producers`, `find-hanging` and `abort`. Each broker answers for the transactional
//! ids it coordinates and for the partitions it leads.

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use spate_client::admin::ProducerState;
use spate_client::{Admin, TopicPartition};

use crate::common::{print_out, BootstrapArgs};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("action").required(true).multiple(false).args(
    ["list", "describe", "describe_producers", "find_hanging", "abort"]
)))]
#[command(after_help = "Examples:\n  spate transactions --list\n  spate transactions --list --state Ongoing\n  \
spate transactions --describe --transactional-id my-app-0\n  \
spate transactions --describe-producers --topic orders --partition 0\n  \
spate transactions --find-hanging --broker-id 1\n  \
spate transactions --abort --topic orders --partition 0 --start-offset 1234")]
pub struct TransactionsArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// List transactional ids: TRANSACTIONAL ID, COORDINATOR, PRODUCER ID, STATE.
    #[arg(long)]
    pub list: bool,
    /// Describe --transactional-id: state, producer id and epoch, timeout, start time and the
    /// partitions of the open transaction.
    #[arg(long)]
    pub describe: bool,
    /// The transactional id to describe (repeatable).
    #[arg(long = "transactional-id")]
    pub transactional_id: Vec<String>,
    /// --list: only these states (comma-separated, e.g. `Ongoing,PrepareCommit`).
    #[arg(long)]
    pub state: Option<String>,
    /// --list: only these producer ids (comma-separated).
    #[arg(long = "producer-id", value_delimiter = ',')]
    pub producer_id: Vec<i64>,
    /// The producers with state in --topic's partitions (or --partition): epochs, last
    /// sequence and timestamp, and where each one's open transaction starts.
    #[arg(long = "describe-producers")]
    pub describe_producers: bool,
    /// Transactions open in a partition that their coordinator does not know as ongoing there
    /// (they hold back the last stable offset, so read_committed consumers, for good), open
    /// longer than --max-transaction-timeout-ms. Looks at --topic (and --partition), the
    /// partitions --broker-id leads, or every partition.
    #[arg(long = "find-hanging")]
    pub find_hanging: bool,
    /// Abort the transaction open at --start-offset of --topic/--partition (writes an ABORT
    /// marker there; a hanging transaction's remedy).
    #[arg(long)]
    pub abort: bool,
    #[arg(long)]
    pub topic: Option<String>,
    #[arg(long)]
    pub partition: Option<i32>,
    /// --find-hanging: only the partitions this broker leads.
    #[arg(long = "broker-id")]
    pub broker_id: Option<i32>,
    /// --abort: first offset of the transaction (START OFFSET of --find-hanging).
    #[arg(long = "start-offset")]
    pub start_offset: Option<i64>,
    /// --find-hanging: how long a transaction may stay open before it counts as hanging
    /// (the brokers' transaction.max.timeout.ms; Kafka's default 15 minutes).
    #[arg(long = "max-transaction-timeout-ms", default_value_t = 900_000)]
    pub max_transaction_timeout_ms: i64,
}

pub async fn run(args: TransactionsArgs) -> Result<()> {
    let admin = args.bootstrap.admin("spate-transactions").await?;
    let mut out = String::new();
    if args.describe_producers {
        let topic = args.topic.as_deref().context("--describe-producers needs --topic")?;
        let partitions = partitions_of(&admin, Some(topic), args.partition, None).await?;
        writeln!(
            out,
            "{:<24} {:>9} {:>11} {:>14} {:>13} {:>17} {:>13} {:>14}",
            "TOPIC",
            "PARTITION",
            "PRODUCER ID",
            "PRODUCER EPOCH",
            "LAST SEQUENCE",
            "COORDINATOR EPOCH",
            "START OFFSET",
            "LAST TIMESTAMP"
        )?;
        for tp in &partitions {
            let producers =
                admin.describe_producers(tp).await.with_context(|| format!("describing the producers of {tp}"))?;
            for p in producers {
                let start = p.current_transaction_start_offset.map_or("-".to_string(), |o| o.to_string());
                writeln!(
                    out,
                    "{:<24} {:>9} {:>11} {:>14} {:>13} {:>17} {:>13} {:>14}",
                    tp.topic,
                    tp.partition,
                    p.producer_id,
                    p.producer_epoch,
                    p.last_sequence,
                    p.coordinator_epoch,
                    start,
                    p.last_timestamp_ms
                )?;
            }
        }
    } else if args.find_hanging {
        let partitions = partitions_of(&admin, args.topic.as_deref(), args.partition, args.broker_id).await?;
        let hanging = find_hanging(&admin, &partitions, args.max_transaction_timeout_ms).await?;
        writeln!(
            out,
            "{:<24} {:>9} {:>11} {:>14} {:>17} {:>12} {:>14} {:>13}",
            "TOPIC",
            "PARTITION",
            "PRODUCER ID",
            "PRODUCER EPOCH",
            "COORDINATOR EPOCH",
            "START OFFSET",
            "LAST TIMESTAMP",
            "DURATION(MIN)"
        )?;
        let now = now_ms();
        for (tp, p, start) in hanging {
            writeln!(
                out,
                "{:<24} {:>9} {:>11} {:>14} {:>17} {:>12} {:>14} {:>13}",
                tp.topic,
                tp.partition,
                p.producer_id,
                p.producer_epoch,
                p.coordinator_epoch,
                start,
                p.last_timestamp_ms,
                (now - p.last_timestamp_ms).max(0) / 60_000
            )?;
        }
    } else if args.abort {
        let (Some(topic), Some(partition), Some(start_offset)) = (&args.topic, args.partition, args.start_offset)
        else {
            bail!("--abort needs --topic, --partition and --start-offset");
        };
        let tp = TopicPartition::new(topic.clone(), partition);
        let p = admin.abort_transaction(&tp, start_offset).await.with_context(|| format!("aborting at {tp}"))?;
        writeln!(
            out,
            "aborted the transaction of producer {} (epoch {}) that started at offset {start_offset} of {tp}",
            p.producer_id, p.producer_epoch
        )?;
    } else if args.list {
        let states: Vec<&str> = args
            .state
            .as_deref()
            .map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let listed = admin.list_transactions(&states, &args.producer_id).await.context("listing transactions")?;
        let width = listed.iter().map(|t| t.transactional_id.len()).max().unwrap_or(0).max(16);
        writeln!(out, "{:<width$}  {:>11}  {:>11}  STATE", "TRANSACTIONAL ID", "COORDINATOR", "PRODUCER ID")?;
        for t in listed {
            writeln!(out, "{:<width$}  {:>11}  {:>11}  {}", t.transactional_id, t.coordinator, t.producer_id, t.state)?;
        }
    } else {
        if args.transactional_id.is_empty() {
            bail!("--describe needs --transactional-id");
        }
        let ids: Vec<&str> = args.transactional_id.iter().map(String::as_str).collect();
        let described = admin.describe_transactions(&ids).await.context("describing transactions")?;
        let mut failed = false;
        for id in &ids {
            match described.get(*id) {
                Some(Ok(d)) => {
                    let partitions: Vec<String> = d.partitions.iter().map(|tp| tp.to_string()).collect();
                    writeln!(out, "transactional id:  {id}")?;
                    writeln!(out, "coordinator:       {}", d.coordinator)?;
                    writeln!(out, "state:             {}", d.state)?;
                    writeln!(out, "producer id:       {}", d.producer_id)?;
                    writeln!(out, "producer epoch:    {}", d.producer_epoch)?;
                    writeln!(out, "timeout ms:        {}", d.transaction_timeout_ms)?;
                    writeln!(out, "start time ms:     {}", d.transaction_start_time_ms)?;
                    writeln!(out, "partitions:        {}", partitions.join(","))?;
                }
                Some(Err(err)) => {
                    failed = true;
                    eprintln!("{id}: {err}");
                }
                None => {
                    failed = true;
                    eprintln!("{id}: no broker answered for it");
                }
            }
        }
        print_out(&out);
        if failed {
            bail!("some transactions could not be described");
        }
        return Ok(());
    }
    print_out(&out);
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The partitions to look at: `topic`'s (or its `partition`), those `broker_id` leads, or all.
async fn partitions_of(
    admin: &Admin,
    topic: Option<&str>,
    partition: Option<i32>,
    broker_id: Option<i32>,
) -> Result<Vec<TopicPartition>> {
    let names: Vec<String> = match topic {
        Some(t) => vec![t.to_string()],
        None => admin.list_topics(true).await.context("listing topics")?,
    };
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let described = admin.describe_topics(&refs).await.context("describing topics")?;
    let mut out = Vec::new();
    for t in described {
        for p in &t.partitions {
            if partition.is_some_and(|want| want != p.partition) || broker_id.is_some_and(|b| b != p.leader) {
                continue;
            }
            out.push(TopicPartition::new(t.name.clone(), p.partition));
        }
    }
    if out.is_empty() && (topic.is_some() || partition.is_some()) {
        bail!("no such partition");
    }
    out.sort();
    Ok(out)
}

/// Kafka's find-hanging: a producer with a transaction open in a partition for longer than
/// `max_timeout_ms` (by its last batch's timestamp) whose coordinator does not list a
/// transaction of that producer id and epoch as ongoing with that partition in it. Returns the
/// partition, the producer and the transaction's start offset.
async fn find_hanging(
    admin: &Admin,
    partitions: &[TopicPartition],
    max_timeout_ms: i64,
) -> Result<Vec<(TopicPartition, ProducerState, i64)>> {
    let now = now_ms();
    let mut candidates = Vec::new();
    // One DescribeProducers per leader, not per partition.
    for (tp, producers) in admin.describe_producers_of(partitions).await.context("describing producers")? {
        let producers = producers.with_context(|| format!("describing the producers of {tp}"))?;
        for p in producers {
            if let Some(start) = p.current_transaction_start_offset {
                if now - p.last_timestamp_ms > max_timeout_ms {
                    candidates.push((tp.clone(), p, start));
                }
            }
        }
    }
    if candidates.is_empty() {
        return Ok(candidates);
    }
    let mut producer_ids: Vec<i64> = candidates.iter().map(|(_, p, _)| p.producer_id).collect();
    producer_ids.sort_unstable();
    producer_ids.dedup();
    let listed = admin.list_transactions(&[], &producer_ids).await.context("listing transactions")?;
    let ids: Vec<&str> = listed.iter().map(|t| t.transactional_id.as_str()).collect();
    let described = if ids.is_empty() {
        Default::default()
    } else {
        admin.describe_transactions(&ids).await.context("describing transactions")?
    };
    Ok(candidates
        .into_iter()
        .filter(|(tp, p, _)| {
            // Not hanging when a coordinator has this producer's transaction ongoing with this
            // partition (it will end it, or time it out).
            !described.values().flatten().any(|d| {
                d.producer_id == p.producer_id
                    && i32::from(d.producer_epoch) == p.producer_epoch
                    && d.state == "Ongoing"
                    && d.partitions.contains(tp)
            })
        })
        .collect())
}

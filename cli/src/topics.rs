//! `spate topics`: list, create, describe, alter and delete topics, like `kafka-topics.sh`.
//! Exactly one action flag is given; a broker error is printed with its Kafka error name and the
//! command exits non-zero.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use spate_client::admin::{AlterConfigOp, ConfigEntry, ConfigResource, ConfigSource, NewTopic};
use spate_client::protocol::ErrorCode;

use crate::common::{parse_key_value, print_out, BootstrapArgs};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("action").required(true).multiple(false)
    .args(["list", "create", "describe", "delete", "alter"])))]
pub struct TopicsArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// List topic names, one per line.
    #[arg(long)]
    pub list: bool,
    /// Create --topic.
    #[arg(long)]
    pub create: bool,
    /// Describe --topic (all topics without it): partitions, leader, replicas, ISR, topic id and
    /// the configs set on the topic.
    #[arg(long)]
    pub describe: bool,
    /// Delete --topic.
    #[arg(long)]
    pub delete: bool,
    /// Change --topic: raise --partitions, set --config, remove --delete-config.
    #[arg(long)]
    pub alter: bool,
    /// The topic to act on.
    #[arg(long)]
    pub topic: Option<String>,
    /// The topic to act on, as a positional argument (`spate topics --create orders
    /// --partitions 3 --replication-factor 3`); the same as --topic.
    #[arg(value_name = "TOPIC", conflicts_with = "topic")]
    pub topic_arg: Option<String>,
    /// Partition count (create: default the broker's `num.partitions`; alter: the new total).
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Replication factor for create (default the broker's `default.replication.factor`).
    #[arg(long = "replication-factor")]
    pub replication_factor: Option<i16>,
    /// A topic config as key=value, e.g. `retention.ms=60000` (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub configs: Vec<(String, String)>,
    /// A topic config to remove, reverting it to the broker default (alter; repeatable).
    #[arg(long = "delete-config", value_name = "KEY")]
    pub delete_configs: Vec<String>,
    /// Include internal topics in --list and --describe.
    #[arg(long)]
    pub include_internal: bool,
    /// With --create: succeed quietly when the topic already exists.
    #[arg(long)]
    pub if_not_exists: bool,
    /// With --describe: only partitions with fewer in-sync replicas than replicas.
    #[arg(long)]
    pub under_replicated_partitions: bool,
    /// With --describe: only partitions without a leader.
    #[arg(long)]
    pub unavailable_partitions: bool,
}

impl TopicsArgs {
    /// Combinations clap cannot express.
    fn validate(&self) -> Result<()> {
        if (self.under_replicated_partitions || self.unavailable_partitions) && !self.describe {
            bail!("--under-replicated-partitions and --unavailable-partitions go with --describe");
        }
        Ok(())
    }

    fn topic_name(&self) -> Option<&str> {
        self.topic.as_deref().or(self.topic_arg.as_deref())
    }

    fn topic(&self, action: &str) -> Result<&str> {
        self.topic_name().with_context(|| format!("--{action} needs --topic"))
    }

    /// Which partitions --describe prints.
    fn partition_filter(&self) -> PartitionFilter {
        if self.under_replicated_partitions || self.unavailable_partitions {
            PartitionFilter {
                under_replicated: self.under_replicated_partitions,
                unavailable: self.unavailable_partitions,
            }
        } else {
            PartitionFilter::ALL
        }
    }
}

/// Kafka's --under-replicated-partitions / --unavailable-partitions: with either, only the
/// partitions matching one of them are shown (and topics without such partitions not at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PartitionFilter {
    under_replicated: bool,
    unavailable: bool,
}

impl PartitionFilter {
    const ALL: PartitionFilter = PartitionFilter { under_replicated: false, unavailable: false };

    fn shows(&self, p: &spate_client::metadata::PartitionMetadata) -> bool {
        *self == PartitionFilter::ALL
            || (self.under_replicated && p.is_under_replicated())
            || (self.unavailable && p.is_offline())
    }
}

pub async fn run(args: TopicsArgs) -> Result<()> {
    args.validate()?;
    let admin = args.bootstrap.admin("spate-topics").await?;
    let mut out = String::new();
    if args.list {
        for name in admin.list_topics(args.include_internal).await? {
            writeln!(out, "{name}")?;
        }
    } else if args.create {
        let name = args.topic("create")?;
        let mut topic = NewTopic::new(name, args.partitions.unwrap_or(-1), args.replication_factor.unwrap_or(-1));
        for (k, v) in &args.configs {
            topic = topic.with_config(k.clone(), v.clone());
        }
        match admin.create_topic(topic).await {
            Ok(()) => writeln!(out, "Created topic {name}.")?,
            Err(e) if args.if_not_exists && e.code() == Some(ErrorCode::TOPIC_ALREADY_EXISTS) => {}
            Err(e) => return Err(e.into()),
        }
    } else if args.describe {
        let names: Vec<&str> = args.topic_name().into_iter().collect();
        let mut topics = admin.describe_topics(&names).await?;
        topics.retain(|t| args.include_internal || !t.is_internal || !names.is_empty());
        let filter = args.partition_filter();
        if filter != PartitionFilter::ALL {
            for t in &mut topics {
                t.partitions.retain(|p| filter.shows(p));
            }
            topics.retain(|t| !t.partitions.is_empty());
        }
        let resources: Vec<ConfigResource> = topics.iter().map(|t| ConfigResource::Topic(t.name.clone())).collect();
        let mut configs = admin.describe_configs(&resources, &[]).await?;
        for topic in &topics {
            let entries = match configs.remove(&ConfigResource::Topic(topic.name.clone())) {
                Some(Ok(entries)) => entries,
                Some(Err(e)) => return Err(e).with_context(|| format!("describing configs of {}", topic.name)),
                None => Vec::new(),
            };
            if filter == PartitionFilter::ALL {
                describe_topic(&mut out, topic, &entries)?;
            } else {
                // As kafka-topics.sh: only the partition lines when filtering.
                describe_partitions(&mut out, topic)?;
            }
        }
    } else if args.delete {
        let name = args.topic("delete")?;
        let mut results = admin.delete_topics(&[name]).await?;
        match results.remove(name) {
            Some(Ok(())) => writeln!(out, "Deleted topic {name}.")?,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the broker did not answer for topic {name}"),
        }
    } else if args.alter {
        let name = args.topic("alter")?;
        if args.partitions.is_none() && args.configs.is_empty() && args.delete_configs.is_empty() {
            bail!("--alter needs --partitions, --config or --delete-config");
        }
        if let Some(total) = args.partitions {
            let mut results = admin.create_partitions(&[(name, total)]).await?;
            match results.remove(name) {
                Some(Ok(())) => writeln!(out, "Topic {name} now has {total} partitions.")?,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the broker did not answer for topic {name}"),
            }
        }
        let mut ops: Vec<AlterConfigOp> =
            args.configs.iter().map(|(k, v)| AlterConfigOp::Set { name: k.clone(), value: v.clone() }).collect();
        ops.extend(args.delete_configs.iter().map(|k| AlterConfigOp::Delete { name: k.clone() }));
        if !ops.is_empty() {
            admin.incremental_alter_configs(&ConfigResource::Topic(name.to_string()), &ops).await?;
            writeln!(out, "Updated configs of topic {name}.")?;
        }
    }
    print_out(&out);
    Ok(())
}

/// Writes one topic the way `kafka-topics.sh --describe` does: a summary line, then a line per
/// partition.
fn describe_topic(
    out: &mut String,
    topic: &spate_client::admin::TopicDescription,
    configs: &[ConfigEntry],
) -> std::fmt::Result {
    let replication_factor = topic.partitions.first().map_or(0, |p| p.replicas.len());
    // Only what was set on the topic, as kafka-topics.sh shows; defaults would drown it.
    let set: BTreeMap<&str, &str> = configs
        .iter()
        .filter(|c| c.source == ConfigSource::DynamicTopicConfig)
        .map(|c| (c.name.as_str(), if c.is_sensitive { "[hidden]" } else { c.value.as_deref().unwrap_or("null") }))
        .collect();
    let configs = set.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    writeln!(
        out,
        "Topic: {}\tTopicId: {}\tPartitionCount: {}\tReplicationFactor: {}\tConfigs: {}",
        topic.name,
        topic.topic_id,
        topic.partitions.len(),
        replication_factor,
        configs
    )?;
    describe_partitions(out, topic)
}

/// One line per partition: Partition, Leader ("none" without one), Replicas, Isr and Offline
/// (replicas on brokers that are down or whose log directory failed), then an error if any.
fn describe_partitions(out: &mut String, topic: &spate_client::admin::TopicDescription) -> std::fmt::Result {
    let join = |ids: &[i32]| ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    for p in &topic.partitions {
        write!(
            out,
            "\tTopic: {}\tPartition: {}\tLeader: {}\tReplicas: {}\tIsr: {}\tOffline: {}",
            topic.name,
            p.partition,
            if p.leader < 0 { "none".to_string() } else { p.leader.to_string() },
            join(&p.replicas),
            join(&p.isr),
            join(&p.offline_replicas)
        )?;
        if !p.error.is_ok() && p.error != ErrorCode::LEADER_NOT_AVAILABLE {
            write!(out, "\tError: {}", p.error)?;
        }
        writeln!(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_client::admin::TopicDescription;
    use spate_client::metadata::PartitionMetadata;
    use spate_client::protocol::ErrorCode;

    fn entry(name: &str, value: &str, source: ConfigSource) -> ConfigEntry {
        ConfigEntry {
            name: name.into(),
            value: Some(value.into()),
            source,
            is_default: source == ConfigSource::DefaultConfig,
            read_only: false,
            is_sensitive: false,
        }
    }

    #[test]
    fn describe_shows_partitions_and_only_topic_configs() {
        let topic = TopicDescription {
            name: "t".into(),
            topic_id: Default::default(),
            is_internal: false,
            partitions: (0..2)
                .map(|p| PartitionMetadata {
                    partition: p,
                    leader: 1,
                    leader_epoch: 0,
                    replicas: vec![1],
                    isr: vec![1],
                    offline_replicas: vec![],
                    error: ErrorCode::NONE,
                })
                .collect(),
        };
        let mut out = String::new();
        describe_topic(
            &mut out,
            &topic,
            &[
                entry("retention.ms", "1000", ConfigSource::DynamicTopicConfig),
                entry("segment.bytes", "1073741824", ConfigSource::DefaultConfig),
            ],
        )
        .unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("Topic: t\tTopicId: "), "{out}");
        assert!(lines[0].ends_with("PartitionCount: 2\tReplicationFactor: 1\tConfigs: retention.ms=1000"), "{out}");
        assert_eq!(lines[2], "\tTopic: t\tPartition: 1\tLeader: 1\tReplicas: 1\tIsr: 1\tOffline: ");
    }

    fn replicated(p: i32, leader: i32, isr: &[i32], offline: &[i32]) -> PartitionMetadata {
        PartitionMetadata {
            partition: p,
            leader,
            leader_epoch: 2,
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
            offline_replicas: offline.to_vec(),
            error: if leader < 0 { ErrorCode::LEADER_NOT_AVAILABLE } else { ErrorCode::NONE },
        }
    }

    #[test]
    fn describe_shows_replicas_isr_and_offline_and_filters_unhealthy_partitions() {
        let topic = TopicDescription {
            name: "r".into(),
            topic_id: Default::default(),
            is_internal: false,
            partitions: vec![
                replicated(0, 1, &[1, 2, 3], &[]),
                replicated(1, 2, &[2, 1], &[3]),
                replicated(2, -1, &[], &[1, 2, 3]),
            ],
        };
        let mut out = String::new();
        describe_topic(&mut out, &topic, &[]).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].contains("ReplicationFactor: 3"), "{out}");
        assert_eq!(lines[2], "\tTopic: r\tPartition: 1\tLeader: 2\tReplicas: 1,2,3\tIsr: 2,1\tOffline: 3");
        assert_eq!(lines[3], "\tTopic: r\tPartition: 2\tLeader: none\tReplicas: 1,2,3\tIsr: \tOffline: 1,2,3");

        let under = PartitionFilter { under_replicated: true, unavailable: false };
        let shown: Vec<i32> = topic.partitions.iter().filter(|p| under.shows(p)).map(|p| p.partition).collect();
        assert_eq!(shown, vec![1, 2]);
        let unavailable = PartitionFilter { under_replicated: false, unavailable: true };
        let shown: Vec<i32> = topic.partitions.iter().filter(|p| unavailable.shows(p)).map(|p| p.partition).collect();
        assert_eq!(shown, vec![2]);
        assert!(topic.partitions.iter().all(|p| PartitionFilter::ALL.shows(p)));
    }

    #[test]
    fn parses_create_with_replication_factor_and_positional_topic() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: TopicsArgs,
        }
        let parse =
            |argv: &[&str]| Cli::try_parse_from(std::iter::once("topics").chain(argv.iter().copied())).map(|c| c.args);
        let a = parse(&["--create", "orders", "--partitions", "6", "--replication-factor", "3"]).unwrap();
        assert_eq!((a.topic("create").unwrap(), a.partitions, a.replication_factor), ("orders", Some(6), Some(3)));
        let a = parse(&["--create", "--topic", "orders"]).unwrap();
        assert_eq!((a.topic("create").unwrap(), a.replication_factor), ("orders", None));
        assert!(parse(&["--create", "--topic", "a", "b"]).is_err(), "--topic and a positional topic conflict");
        let a = parse(&["--describe", "--under-replicated-partitions"]).unwrap();
        assert_eq!(a.topic_name(), None);
        assert_eq!(a.partition_filter(), PartitionFilter { under_replicated: true, unavailable: false });
        assert!(parse(&["--list", "--unavailable-partitions"]).unwrap().validate().is_err(), "filters need --describe");
        assert!(a.validate().is_ok());
    }
}

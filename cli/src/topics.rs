//! `spate topics`: list, create, describe, alter and delete topics, like `kafka-topics.sh`.
//! Exactly one action flag is given; a broker error is printed with its Kafka error name and the
//! command exits non-zero.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use spate_client::admin::{AdminConfig, AlterConfigOp, ConfigEntry, ConfigResource, ConfigSource, NewTopic};
use spate_client::Admin;

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
}

impl TopicsArgs {
    fn topic(&self, action: &str) -> Result<&str> {
        self.topic.as_deref().with_context(|| format!("--{action} needs --topic"))
    }
}

pub async fn run(args: TopicsArgs) -> Result<()> {
    let admin = Admin::new(AdminConfig {
        bootstrap_servers: args.bootstrap.servers()?,
        client_id: "spate-topics".into(),
        ..AdminConfig::default()
    })
    .await
    .context("connecting to the cluster")?;
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
            Err(e)
                if args.if_not_exists && e.code() == Some(spate_client::protocol::ErrorCode::TOPIC_ALREADY_EXISTS) => {}
            Err(e) => return Err(e.into()),
        }
    } else if args.describe {
        let names: Vec<&str> = args.topic.as_deref().into_iter().collect();
        let mut topics = admin.describe_topics(&names).await?;
        topics.retain(|t| args.include_internal || !t.is_internal || !names.is_empty());
        let resources: Vec<ConfigResource> = topics.iter().map(|t| ConfigResource::Topic(t.name.clone())).collect();
        let mut configs = admin.describe_configs(&resources, &[]).await?;
        for topic in &topics {
            let entries = match configs.remove(&ConfigResource::Topic(topic.name.clone())) {
                Some(Ok(entries)) => entries,
                Some(Err(e)) => return Err(e).with_context(|| format!("describing configs of {}", topic.name)),
                None => Vec::new(),
            };
            describe_topic(&mut out, topic, &entries)?;
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
    let join = |ids: &[i32]| ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    for p in &topic.partitions {
        write!(
            out,
            "\tTopic: {}\tPartition: {}\tLeader: {}\tReplicas: {}\tIsr: {}",
            topic.name,
            p.partition,
            if p.leader < 0 { "none".to_string() } else { p.leader.to_string() },
            join(&p.replicas),
            join(&p.isr)
        )?;
        if !p.offline_replicas.is_empty() {
            write!(out, "\tOffline: {}", join(&p.offline_replicas))?;
        }
        if !p.error.is_ok() {
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
        assert_eq!(lines[2], "\tTopic: t\tPartition: 1\tLeader: 1\tReplicas: 1\tIsr: 1");
    }
}

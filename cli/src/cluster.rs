//! `spate cluster status`: the brokers, the controller, the cluster id, and the partitions that
//! need attention: under-replicated (fewer in-sync replicas than replicas) and offline (no
//! leader). `--json` prints the same as one JSON object for scripts.
//!
//! `spate cluster unregister --id N` (Kafka's `kafka-cluster.sh unregister`): forgets a
//! decommissioned broker.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde::Serialize;
use spate_client::admin::{ClusterDescription, TopicDescription};
use spate_client::metadata::PartitionMetadata;

use crate::common::{print_out, BootstrapArgs};

#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// Brokers (id, host:port), controller id, cluster id, and the under-replicated and offline
    /// partitions of every topic (internal ones included).
    Status(StatusArgs),
    /// Forget a decommissioned broker (UnregisterBroker). It must be stopped and hold no
    /// replicas (move them with `spate reassign` first); a broker-only node also stops receiving
    /// the metadata log.
    Unregister(UnregisterArgs),
}

#[derive(clap::Args, Debug)]
pub struct UnregisterArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// The broker's `node.id`.
    #[arg(long)]
    pub id: i32,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One broker, as printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct BrokerStatus {
    id: i32,
    host: String,
    port: i32,
    rack: Option<String>,
}

/// One partition that needs attention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct PartitionStatus {
    topic: String,
    partition: i32,
    /// -1 when the partition has no leader.
    leader: i32,
    leader_epoch: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    offline_replicas: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct ClusterStatus {
    cluster_id: Option<String>,
    controller_id: i32,
    brokers: Vec<BrokerStatus>,
    topic_count: usize,
    partition_count: usize,
    under_replicated_partition_count: usize,
    under_replicated_partitions: Vec<PartitionStatus>,
    offline_partition_count: usize,
    offline_partitions: Vec<PartitionStatus>,
}

pub async fn run(args: ClusterArgs) -> Result<()> {
    match args.command {
        ClusterCommand::Status(args) => status(args).await,
        ClusterCommand::Unregister(args) => unregister(args).await,
    }
}

async fn unregister(args: UnregisterArgs) -> Result<()> {
    let admin = args.bootstrap.admin("spate-cluster").await?;
    admin.unregister_broker(args.id).await.with_context(|| format!("unregistering broker {}", args.id))?;
    print_out(&format!("Broker {} is no longer registered.\n", args.id));
    Ok(())
}

async fn status(args: StatusArgs) -> Result<()> {
    let admin = args.bootstrap.admin("spate-cluster").await?;
    let cluster = admin.describe_cluster().await.context("describing the cluster")?;
    let topics = admin.describe_topics(&[]).await.context("describing topics")?;
    let status = cluster_status(&cluster, &topics);
    let out = if args.json { serde_json::to_string_pretty(&status)? + "\n" } else { render(&status)? };
    print_out(&out);
    Ok(())
}

fn partition_status(topic: &str, p: &PartitionMetadata) -> PartitionStatus {
    PartitionStatus {
        topic: topic.to_string(),
        partition: p.partition,
        leader: p.leader,
        leader_epoch: p.leader_epoch,
        replicas: p.replicas.clone(),
        isr: p.isr.clone(),
        offline_replicas: p.offline_replicas.clone(),
    }
}

/// Sorts the topics' partitions into the under-replicated and offline lists. An offline
/// partition is listed only as offline, even when its ISR is short too (it always is).
fn cluster_status(cluster: &ClusterDescription, topics: &[TopicDescription]) -> ClusterStatus {
    let mut topics: Vec<&TopicDescription> = topics.iter().collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    let mut under_replicated = Vec::new();
    let mut offline = Vec::new();
    for topic in &topics {
        for p in &topic.partitions {
            if p.is_offline() {
                offline.push(partition_status(&topic.name, p));
            } else if p.is_under_replicated() {
                under_replicated.push(partition_status(&topic.name, p));
            }
        }
    }
    let mut brokers: Vec<BrokerStatus> = cluster
        .brokers
        .iter()
        .map(|b| BrokerStatus { id: b.node_id, host: b.host.clone(), port: b.port, rack: b.rack.clone() })
        .collect();
    brokers.sort_by_key(|b| b.id);
    ClusterStatus {
        cluster_id: cluster.cluster_id.clone(),
        controller_id: cluster.controller_id,
        brokers,
        topic_count: topics.len(),
        partition_count: topics.iter().map(|t| t.partitions.len()).sum(),
        under_replicated_partition_count: under_replicated.len(),
        under_replicated_partitions: under_replicated,
        offline_partition_count: offline.len(),
        offline_partitions: offline,
    }
}

fn render(status: &ClusterStatus) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    let join = |ids: &[i32]| ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    let id_or_none = |id: i32| if id < 0 { "none".to_string() } else { id.to_string() };
    writeln!(out, "ClusterId: {}", status.cluster_id.as_deref().unwrap_or("none"))?;
    writeln!(out, "Controller: {}", id_or_none(status.controller_id))?;
    writeln!(out, "Brokers: {}", status.brokers.len())?;
    for b in &status.brokers {
        write!(out, "\tId: {}\tAddress: {}:{}", b.id, b.host, b.port)?;
        if let Some(rack) = &b.rack {
            write!(out, "\tRack: {rack}")?;
        }
        writeln!(out)?;
    }
    writeln!(out, "Topics: {}\tPartitions: {}", status.topic_count, status.partition_count)?;
    for (title, count, partitions) in [
        ("UnderReplicatedPartitions", status.under_replicated_partition_count, &status.under_replicated_partitions),
        ("OfflinePartitions", status.offline_partition_count, &status.offline_partitions),
    ] {
        writeln!(out, "{title}: {count}")?;
        for p in partitions {
            writeln!(
                out,
                "\tTopic: {}\tPartition: {}\tLeader: {}\tReplicas: {}\tIsr: {}\tOffline: {}",
                p.topic,
                p.partition,
                id_or_none(p.leader),
                join(&p.replicas),
                join(&p.isr),
                join(&p.offline_replicas)
            )?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use spate_client::metadata::BrokerMetadata;
    use spate_client::protocol::ErrorCode;

    fn partition(partition: i32, leader: i32, replicas: &[i32], isr: &[i32], offline: &[i32]) -> PartitionMetadata {
        PartitionMetadata {
            partition,
            leader,
            leader_epoch: 3,
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            offline_replicas: offline.to_vec(),
            error: if leader < 0 { ErrorCode::LEADER_NOT_AVAILABLE } else { ErrorCode::NONE },
        }
    }

    fn example() -> ClusterStatus {
        let cluster = ClusterDescription {
            cluster_id: Some("abc".into()),
            controller_id: 2,
            brokers: [3, 1]
                .iter()
                .map(|&id| BrokerMetadata { node_id: id, host: "127.0.0.1".into(), port: 9090 + id, rack: None })
                .collect(),
        };
        let topic = |name: &str, partitions| TopicDescription {
            name: name.into(),
            topic_id: Default::default(),
            is_internal: name.starts_with("__"),
            partitions,
        };
        let topics = vec![
            topic(
                "t",
                vec![
                    partition(0, 1, &[1, 2, 3], &[1, 2, 3], &[]),
                    partition(1, 3, &[3, 1, 2], &[3, 1], &[2]),
                    partition(2, -1, &[2], &[], &[2]),
                ],
            ),
            topic("__consumer_offsets", vec![partition(0, 1, &[1, 2], &[1], &[2])]),
        ];
        cluster_status(&cluster, &topics)
    }

    #[test]
    fn status_lists_under_replicated_and_offline_partitions() {
        let status = example();
        assert_eq!(status.brokers.iter().map(|b| b.id).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!((status.topic_count, status.partition_count), (2, 4));
        let under: Vec<(&str, i32)> =
            status.under_replicated_partitions.iter().map(|p| (p.topic.as_str(), p.partition)).collect();
        assert_eq!(under, vec![("__consumer_offsets", 0), ("t", 1)]);
        assert_eq!(status.under_replicated_partition_count, 2);
        assert_eq!(status.offline_partition_count, 1);
        assert_eq!((status.offline_partitions[0].partition, status.offline_partitions[0].leader), (2, -1));
    }

    #[test]
    fn text_and_json_forms() {
        let status = example();
        let text = render(&status).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(&lines[..4], &["ClusterId: abc", "Controller: 2", "Brokers: 2", "\tId: 1\tAddress: 127.0.0.1:9091"]);
        assert!(lines.contains(&"UnderReplicatedPartitions: 2"), "{text}");
        assert!(
            lines.contains(&"\tTopic: t\tPartition: 1\tLeader: 3\tReplicas: 3,1,2\tIsr: 3,1\tOffline: 2"),
            "{text}"
        );
        assert!(lines.contains(&"\tTopic: t\tPartition: 2\tLeader: none\tReplicas: 2\tIsr: \tOffline: 2"), "{text}");
        let json: serde_json::Value = serde_json::to_value(&status).unwrap();
        assert_eq!(json["controller_id"], 2);
        assert_eq!(json["brokers"][1]["port"], 9093);
        assert_eq!(json["offline_partitions"][0]["topic"], "t");
        assert_eq!(json["under_replicated_partition_count"], 2);
    }

    #[test]
    fn parses_status_flags() {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: ClusterArgs,
        }
        let cli = Cli::try_parse_from(["cluster", "status", "--bootstrap-server", "a:1,b:2", "--json"]).unwrap();
        let ClusterCommand::Status(status) = cli.args.command else { panic!("not status") };
        assert!(status.json);
        assert_eq!(status.bootstrap.servers().unwrap(), vec!["a:1".to_string(), "b:2".to_string()]);
        assert!(Cli::try_parse_from(["cluster"]).is_err());
        let cli = Cli::try_parse_from(["cluster", "unregister", "--id", "4"]).unwrap();
        let ClusterCommand::Unregister(unregister) = cli.args.command else { panic!("not unregister") };
        assert_eq!(unregister.id, 4);
        assert!(Cli::try_parse_from(["cluster", "unregister"]).is_err());
    }
}

//! `spate cluster status`: the brokers, the controller, the cluster id, and the partitions that
//! need attention: under-replicated (fewer in-sync replicas than replicas) and offline (no
//! leader). `--json` prints the same as one JSON object for scripts.
//!
//! `spate cluster unregister --id N` (Kafka's `kafka-cluster.sh unregister`): forgets a
//! decommissioned broker.
//!
//! `spate cluster quorum`, `add-controller --id N` and `remove-controller --id N` (Kafka's
//! `kafka-metadata-quorum.sh describe --status --replication`, `add-controller`,
//! `remove-controller`, KIP-853): the metadata quorum's voters and observers, and changing who
//! votes at run time.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde::Serialize;
use spate_client::admin::{ClusterDescription, QuorumInfo, QuorumReplica, TopicDescription};
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
    /// The metadata quorum (DescribeQuorum): leader, epoch, high watermark, and every voter and
    /// observer (broker-only node) with its log end offset and lag.
    Quorum(StatusArgs),
    /// Make a broker-only node (`process.roles=broker`) that follows the metadata log a voter
    /// of the metadata quorum (AddRaftVoter).
    AddController(AddControllerArgs),
    /// Take a voter out of the metadata quorum (RemoveRaftVoter); while it runs it keeps the
    /// metadata log as an observer. The last voter cannot leave.
    RemoveController(UnregisterArgs),
}

#[derive(clap::Args, Debug)]
pub struct AddControllerArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// The node's `node.id`.
    #[arg(long)]
    pub id: i32,
    /// Its `controller.listener` (`host:port`); checked against the address it follows the
    /// log at. Optional: the quorum knows it.
    #[arg(long, value_name = "HOST:PORT")]
    pub controller_listener: Option<String>,
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
        ClusterCommand::Quorum(args) => quorum(args).await,
        ClusterCommand::AddController(args) => add_controller(args).await,
        ClusterCommand::RemoveController(args) => {
            let admin = args.bootstrap.admin("spate-cluster").await?;
            admin.remove_raft_voter(args.id).await.with_context(|| format!("removing controller {}", args.id))?;
            print_out(&format!("Node {} is no longer a voter of the metadata quorum.\n", args.id));
            Ok(())
        }
    }
}

async fn add_controller(args: AddControllerArgs) -> Result<()> {
    let listener = match &args.controller_listener {
        None => None,
        Some(addr) => {
            let (host, port) = addr.rsplit_once(':').context("--controller-listener must be HOST:PORT")?;
            let port: u16 = port.parse().context("--controller-listener must be HOST:PORT")?;
            Some((host.to_string(), port))
        }
    };
    let admin = args.bootstrap.admin("spate-cluster").await?;
    admin
        .add_raft_voter(args.id, listener.as_ref().map(|(h, p)| (h.as_str(), *p)))
        .await
        .with_context(|| format!("adding controller {}", args.id))?;
    print_out(&format!("Node {} is a voter of the metadata quorum.\n", args.id));
    Ok(())
}

async fn quorum(args: StatusArgs) -> Result<()> {
    let admin = args.bootstrap.admin("spate-cluster").await?;
    let info = admin.describe_metadata_quorum().await.context("describing the metadata quorum")?;
    let out = if args.json { serde_json::to_string_pretty(&quorum_json(&info))? + "\n" } else { render_quorum(&info)? };
    print_out(&out);
    Ok(())
}

fn quorum_json(info: &QuorumInfo) -> serde_json::Value {
    let members = |replicas: &[QuorumReplica]| -> Vec<serde_json::Value> {
        replicas
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "log_end_offset": r.log_end_offset,
                    "lag": lag(info, r),
                    "controller_listener": r.controller_listener,
                })
            })
            .collect()
    };
    serde_json::json!({
        "leader_id": info.leader_id,
        "leader_epoch": info.leader_epoch,
        "high_watermark": info.high_watermark,
        "voters": members(&info.voters),
        "observers": members(&info.observers),
    })
}

/// How far behind the high watermark a member is (`None` when its progress is not known).
fn lag(info: &QuorumInfo, r: &QuorumReplica) -> Option<i64> {
    (r.log_end_offset >= 0).then(|| (info.high_watermark - r.log_end_offset).max(0))
}

/// Like `kafka-metadata-quorum.sh describe --status`, then one row per member as in
/// `--replication`.
fn render_quorum(info: &QuorumInfo) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    let ids = |rs: &[QuorumReplica]| rs.iter().map(|r| r.id.to_string()).collect::<Vec<_>>().join(",");
    writeln!(out, "LeaderId: {}", info.leader_id)?;
    writeln!(out, "LeaderEpoch: {}", info.leader_epoch)?;
    writeln!(out, "HighWatermark: {}", info.high_watermark)?;
    writeln!(out, "CurrentVoters: [{}]", ids(&info.voters))?;
    writeln!(out, "CurrentObservers: [{}]", ids(&info.observers))?;
    writeln!(out, "NodeId\tLogEndOffset\tLag\tStatus\tControllerListener")?;
    for (r, role) in info.voters.iter().map(|r| (r, "Follower")).chain(info.observers.iter().map(|r| (r, "Observer"))) {
        let role = if r.id == info.leader_id { "Leader" } else { role };
        let lag = lag(info, r).map_or("unknown".to_string(), |l| l.to_string());
        let listener = r.controller_listener.as_deref().unwrap_or("-");
        writeln!(out, "{}\t{}\t{}\t{}\t{}", r.id, r.log_end_offset, lag, role, listener)?;
    }
    Ok(out)
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
        let cli =
            Cli::try_parse_from(["cluster", "add-controller", "--id", "4", "--controller-listener", "h:9093"]).unwrap();
        let ClusterCommand::AddController(add) = cli.args.command else { panic!("not add-controller") };
        assert_eq!((add.id, add.controller_listener.as_deref()), (4, Some("h:9093")));
        let cli = Cli::try_parse_from(["cluster", "remove-controller", "--id", "1"]).unwrap();
        assert!(matches!(cli.args.command, ClusterCommand::RemoveController(UnregisterArgs { id: 1, .. })));
        let cli = Cli::try_parse_from(["cluster", "quorum", "--json"]).unwrap();
        assert!(matches!(cli.args.command, ClusterCommand::Quorum(StatusArgs { json: true, .. })));
    }

    #[test]
    fn quorum_text_and_json() {
        let member = |id: i32, leo: i64| QuorumReplica {
            id,
            log_end_offset: leo,
            controller_listener: Some(format!("127.0.0.1:{}", 9090 + id)),
        };
        let info = QuorumInfo {
            leader_id: 2,
            leader_epoch: 5,
            high_watermark: 40,
            voters: vec![member(1, 38), member(2, 41)],
            observers: vec![member(4, -1)],
        };
        let text = render_quorum(&info).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[3], "CurrentVoters: [1,2]");
        assert_eq!(lines[4], "CurrentObservers: [4]");
        assert!(lines.contains(&"1\t38\t2\tFollower\t127.0.0.1:9091"), "{text}");
        assert!(lines.contains(&"2\t41\t0\tLeader\t127.0.0.1:9092"), "{text}");
        assert!(lines.contains(&"4\t-1\tunknown\tObserver\t127.0.0.1:9094"), "{text}");
        let json = quorum_json(&info);
        assert_eq!(json["voters"][0]["lag"], 2);
        assert!(json["observers"][0]["lag"].is_null());
        assert_eq!(json["leader_id"], 2);
    }
}

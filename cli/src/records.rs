//! `spate delete-records` and `spate leader-election`, like Kafka's `kafka-delete-records.sh`
//! (same JSON file) and `kafka-leader-election.sh` (same flags and JSON file).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use spate_client::admin::{AlterConfigOp, ConfigResource};
use spate_client::TopicPartition;

use crate::common::{print_out, BootstrapArgs};

/// Upper bound on the JSON files these commands read (a file of a million partitions is ~60 MB).
const MAX_JSON_FILE_BYTES: u64 = 64 << 20;

#[derive(clap::Args, Debug)]
#[command(after_help = "The file is kafka-delete-records.sh's:\n  \
{\"partitions\": [{\"topic\": \"orders\", \"partition\": 0, \"offset\": 1000}], \"version\": 1}\n\
An offset of -1 deletes up to the high watermark.\n\nExample:\n  \
spate delete-records --offset-json-file delete.json")]
pub struct DeleteRecordsArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// JSON file naming the partitions and the offset each one's records are deleted below.
    #[arg(long = "offset-json-file", value_name = "FILE")]
    pub offset_json_file: PathBuf,
}

#[derive(Deserialize)]
struct DeleteRecordsFile {
    partitions: Vec<PartitionOffset>,
}

#[derive(Deserialize)]
struct PartitionOffset {
    topic: String,
    partition: i32,
    offset: i64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElectionType {
    #[value(name = "PREFERRED", alias = "preferred")]
    Preferred,
    #[value(name = "UNCLEAN", alias = "unclean")]
    Unclean,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(false).args(
    ["topic", "all_topic_partitions", "path_to_json_file"]
)))]
#[command(after_help = "Examples:\n  spate leader-election --election-type PREFERRED --all-topic-partitions\n  \
spate leader-election --election-type UNCLEAN --topic orders --partition 3\n  \
spate leader-election --election-type PREFERRED --path-to-json-file partitions.json\n\n\
The file is kafka-leader-election.sh's: {\"partitions\": [{\"topic\": \"orders\", \"partition\": 1}]}")]
pub struct LeaderElectionArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// PREFERRED: the first replica leads again where it is live and in sync. UNCLEAN: a live
    /// replica leads a partition that has no live leader, even out of sync (records only the
    /// lost replicas had are gone).
    #[arg(long = "election-type", value_enum)]
    pub election_type: ElectionType,
    /// The topic (with --partition).
    #[arg(long, requires = "partition")]
    pub topic: Option<String>,
    #[arg(long, requires = "topic")]
    pub partition: Option<i32>,
    /// Every partition of the cluster.
    #[arg(long = "all-topic-partitions")]
    pub all_topic_partitions: bool,
    /// JSON file naming the partitions.
    #[arg(long = "path-to-json-file", value_name = "FILE")]
    pub path_to_json_file: Option<PathBuf>,
}

#[derive(Deserialize)]
struct PartitionsFile {
    partitions: Vec<NamedPartition>,
}

#[derive(Deserialize)]
struct NamedPartition {
    topic: String,
    partition: i32,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &PathBuf) -> Result<T> {
    let size = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    if size > MAX_JSON_FILE_BYTES {
        bail!("{} is {size} bytes; at most {MAX_JSON_FILE_BYTES} are read", path.display());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not the expected JSON", path.display()))
}

pub async fn delete_records(args: DeleteRecordsArgs) -> Result<()> {
    let file: DeleteRecordsFile = read_json(&args.offset_json_file)?;
    if file.partitions.is_empty() {
        bail!("{} names no partitions", args.offset_json_file.display());
    }
    let offsets: Vec<(TopicPartition, i64)> =
        file.partitions.into_iter().map(|p| (TopicPartition::new(p.topic, p.partition), p.offset)).collect();
    let admin = args.bootstrap.admin("spate-delete-records").await?;
    let results = admin.delete_records(&offsets).await?;
    let mut out = String::from("Records delete operation completed:\n");
    let mut failed = 0;
    for (tp, result) in &results {
        match result {
            Ok(low) => writeln!(out, "partition: {tp}\tlow_watermark: {low}")?,
            Err(e) => {
                failed += 1;
                writeln!(out, "partition: {tp}\terror: {e}")?
            }
        }
    }
    print_out(&out);
    if failed > 0 {
        bail!("{failed} of {} partitions failed", results.len());
    }
    Ok(())
}

pub async fn leader_election(args: LeaderElectionArgs) -> Result<()> {
    let partitions: Option<Vec<TopicPartition>> = if args.all_topic_partitions {
        None
    } else if let Some(path) = &args.path_to_json_file {
        let file: PartitionsFile = read_json(path)?;
        Some(file.partitions.into_iter().map(|p| TopicPartition::new(p.topic, p.partition)).collect())
    } else {
        let topic = args.topic.clone().context("--topic is required")?;
        Some(vec![TopicPartition::new(topic, args.partition.context("--partition is required")?)])
    };
    let admin = args.bootstrap.admin("spate-leader-election").await?;
    let unclean = args.election_type == ElectionType::Unclean;
    let results = admin.elect_leaders(unclean, partitions.as_deref()).await?;
    let (mut elected, mut not_needed, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for (tp, result) in results {
        match result {
            Ok(()) => elected.push(tp.to_string()),
            Err(e) if e.code() == Some(spate_client::protocol::ErrorCode::ELECTION_NOT_NEEDED) => {
                not_needed.push(tp.to_string())
            }
            Err(e) => failed.push(format!("{tp}: {e}")),
        }
    }
    let mut out = String::new();
    if elected.is_empty() && failed.is_empty() && not_needed.is_empty() {
        writeln!(out, "Valid replica already elected for all partitions")?;
    }
    if !elected.is_empty() {
        writeln!(
            out,
            "Successfully completed leader election ({:?}) for partitions {}",
            args.election_type,
            elected.join(", ")
        )?;
    }
    if !not_needed.is_empty() {
        writeln!(out, "Valid replica already elected for partitions {}", not_needed.join(", "))?;
    }
    for f in &failed {
        writeln!(out, "Error completing leader election for partition {f}")?;
    }
    print_out(&out);
    if !failed.is_empty() {
        bail!("leader election failed for {} partitions", failed.len());
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("action").required(true).multiple(false).args(
    ["generate", "execute", "verify", "cancel"]
)))]
#[command(after_help = "Like kafka-reassign-partitions.sh, with its JSON format:\n  \
{\"version\": 1, \"partitions\": [{\"topic\": \"orders\", \"partition\": 0, \"replicas\": [2, 3]}]}\n\n\
Examples:\n  spate reassign --generate --topics orders,clicks --brokers 1,2,3 > plan.json\n  \
spate reassign --execute plan.json\n  spate reassign --verify plan.json\n  spate reassign --cancel plan.json")]
pub struct ReassignArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// Print a plan spreading --topics over --brokers (same replication factor), and the current
    /// assignment to roll back to. Nothing is changed.
    #[arg(long, requires_all = ["topics", "brokers"])]
    pub generate: bool,
    /// Start the reassignments of FILE.
    #[arg(long, value_name = "FILE")]
    pub execute: Option<PathBuf>,
    /// Report, per partition of FILE, whether its reassignment has completed.
    #[arg(long, value_name = "FILE")]
    pub verify: Option<PathBuf>,
    /// Cancel the reassignments of FILE still in progress (back to the replicas before).
    #[arg(long, value_name = "FILE")]
    pub cancel: Option<PathBuf>,
    /// --generate: the topics to move (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub topics: Vec<String>,
    /// --generate: the brokers to spread them over (comma-separated ids).
    #[arg(long, value_delimiter = ',')]
    pub brokers: Vec<i32>,
    /// --execute: limit the replicas being added to this many bytes per second of fetching on
    /// each broker receiving one (`follower.replication.throttled.rate`); --verify lifts it once
    /// every partition is done.
    #[arg(long, value_name = "BYTES_PER_S", requires = "execute")]
    pub throttle: Option<u64>,
    /// --verify: keep the throttles even when the reassignment is complete.
    #[arg(long = "preserve-throttles", requires = "verify")]
    pub preserve_throttles: bool,
}

/// The dynamic broker configs `--throttle` sets (both, as kafka-reassign-partitions.sh does).
const THROTTLE_KEYS: [&str; 2] = ["leader.replication.throttled.rate", "follower.replication.throttled.rate"];

#[derive(serde::Serialize, Deserialize)]
struct ReassignmentFile {
    #[serde(default = "version_one")]
    version: i32,
    partitions: Vec<PartitionReplicas>,
}

impl ReassignmentFile {
    /// The current state of the topics the file names.
    async fn describe_topics(&self, admin: &spate_client::Admin) -> Result<Vec<spate_client::admin::TopicDescription>> {
        let names: std::collections::BTreeSet<&str> = self.partitions.iter().map(|p| p.topic.as_str()).collect();
        Ok(admin.describe_topics(&names.into_iter().collect::<Vec<_>>()).await?)
    }
}

fn version_one() -> i32 {
    1
}

#[derive(serde::Serialize, Deserialize)]
struct PartitionReplicas {
    topic: String,
    partition: i32,
    replicas: Vec<i32>,
}

pub async fn reassign(args: ReassignArgs) -> Result<()> {
    let admin = args.bootstrap.admin("spate-reassign").await?;
    let mut out = String::new();
    if args.generate {
        let mut brokers = args.brokers.clone();
        brokers.sort_unstable();
        brokers.dedup();
        let names: Vec<&str> = args.topics.iter().map(String::as_str).collect();
        let described = admin.describe_topics(&names).await?;
        let (mut current, mut proposed) = (Vec::new(), Vec::new());
        for t in &described {
            for p in &t.partitions {
                let rf = p.replicas.len();
                if rf > brokers.len() {
                    bail!("{}-{} has {rf} replicas but only {} brokers were given", t.name, p.partition, brokers.len());
                }
                current.push(PartitionReplicas {
                    topic: t.name.clone(),
                    partition: p.partition,
                    replicas: p.replicas.clone(),
                });
                // Round-robin from the partition's index, so leaders (the first replica) spread.
                let start = usize::try_from(p.partition).unwrap_or(0);
                let replicas = (0..rf).map(|i| brokers[(start + i) % brokers.len()]).collect();
                proposed.push(PartitionReplicas { topic: t.name.clone(), partition: p.partition, replicas });
            }
        }
        let current = serde_json::to_string(&ReassignmentFile { version: 1, partitions: current })?;
        let proposed = serde_json::to_string(&ReassignmentFile { version: 1, partitions: proposed })?;
        eprintln!("Current partition replica assignment (save it to roll back):\n{current}\n");
        eprintln!("Proposed partition reassignment configuration (on stdout):");
        writeln!(out, "{proposed}")?;
    } else if let Some(path) = &args.execute {
        let plan: ReassignmentFile = read_json(path)?;
        let targets: Vec<(TopicPartition, Option<Vec<i32>>)> = plan
            .partitions
            .iter()
            .map(|p| (TopicPartition::new(p.topic.clone(), p.partition), Some(p.replicas.clone())))
            .collect();
        if let Some(rate) = args.throttle {
            if rate == 0 {
                bail!("--throttle must be a positive number of bytes per second");
            }
            // Set before the move starts, so no byte goes unthrottled: on every broker that
            // sends (a current replica leads) or receives (a target replica) data.
            let described = plan.describe_topics(&admin).await?;
            let current = described.iter().flat_map(|t| t.partitions.iter().flat_map(|p| p.replicas.iter().copied()));
            let mut brokers: Vec<i32> =
                plan.partitions.iter().flat_map(|p| p.replicas.iter().copied()).chain(current).collect();
            brokers.sort_unstable();
            brokers.dedup();
            let ops: Vec<AlterConfigOp> = THROTTLE_KEYS
                .iter()
                .map(|k| AlterConfigOp::Set { name: k.to_string(), value: rate.to_string() })
                .collect();
            for id in &brokers {
                admin
                    .incremental_alter_configs(&ConfigResource::Broker(*id), &ops)
                    .await
                    .with_context(|| format!("setting the replication throttle on broker {id}"))?;
            }
            writeln!(
                out,
                "The throttle limit was set to {rate} B/s on brokers {brokers:?} (leader and follower side)."
            )?;
        }
        let results = admin.alter_partition_reassignments(&targets).await?;
        report(&mut out, &results, "Successfully started partition reassignment")?;
    } else if let Some(path) = &args.cancel {
        let plan: ReassignmentFile = read_json(path)?;
        let ongoing = admin.list_partition_reassignments().await?;
        let targets: Vec<(TopicPartition, Option<Vec<i32>>)> = plan
            .partitions
            .iter()
            .map(|p| TopicPartition::new(p.topic.clone(), p.partition))
            .filter(|tp| ongoing.contains_key(tp))
            .map(|tp| (tp, None))
            .collect();
        if targets.is_empty() {
            writeln!(out, "No reassignment of the file's partitions is in progress.")?;
        } else {
            let results = admin.alter_partition_reassignments(&targets).await?;
            report(&mut out, &results, "Successfully cancelled partition reassignment")?;
        }
    } else if let Some(path) = &args.verify {
        let plan: ReassignmentFile = read_json(path)?;
        let ongoing = admin.list_partition_reassignments().await?;
        let described = plan.describe_topics(&admin).await?;
        let mut incomplete = 0;
        for p in &plan.partitions {
            let tp = TopicPartition::new(p.topic.clone(), p.partition);
            let current = described
                .iter()
                .find(|t| t.name == p.topic)
                .and_then(|t| t.partitions.iter().find(|q| q.partition == p.partition))
                .map(|q| q.replicas.clone());
            if ongoing.contains_key(&tp) {
                incomplete += 1;
                writeln!(out, "Reassignment of partition {tp} is still in progress.")?;
            } else if current.as_ref() == Some(&p.replicas) {
                writeln!(out, "Reassignment of partition {tp} is completed.")?;
            } else {
                incomplete += 1;
                writeln!(
                    out,
                    "There is no active reassignment of partition {tp}, but its replicas are {current:?}, not {:?}.",
                    p.replicas
                )?;
            }
        }
        if incomplete > 0 {
            print_out(&out);
            bail!("{incomplete} of {} partitions are not reassigned yet", plan.partitions.len());
        }
        if !args.preserve_throttles {
            let cluster = admin.describe_cluster().await?;
            let resources: Vec<ConfigResource> =
                cluster.brokers.iter().map(|b| ConfigResource::Broker(b.node_id)).collect();
            let configs = admin.describe_configs(&resources, &THROTTLE_KEYS).await?;
            let throttled: Vec<&ConfigResource> = configs
                .iter()
                .filter(|(_, entries)| {
                    entries
                        .as_ref()
                        .is_ok_and(|e| e.iter().any(|c| THROTTLE_KEYS.contains(&c.name.as_str()) && !c.is_default))
                })
                .map(|(resource, _)| resource)
                .collect();
            for resource in &throttled {
                let ops: Vec<AlterConfigOp> =
                    THROTTLE_KEYS.iter().map(|k| AlterConfigOp::Delete { name: k.to_string() }).collect();
                admin
                    .incremental_alter_configs(resource, &ops)
                    .await
                    .with_context(|| format!("removing the replication throttle of {resource:?}"))?;
            }
            if !throttled.is_empty() {
                writeln!(out, "Throttle was removed.")?;
            }
        }
        print_out(&out);
        return Ok(());
    }
    print_out(&out);
    Ok(())
}

fn report(
    out: &mut String,
    results: &std::collections::BTreeMap<TopicPartition, spate_client::Result<()>>,
    ok: &str,
) -> Result<()> {
    let failed: Vec<String> =
        results.iter().filter_map(|(tp, r)| r.as_ref().err().map(|e| format!("{tp}: {e}"))).collect();
    let done: Vec<String> = results.iter().filter(|(_, r)| r.is_ok()).map(|(tp, _)| tp.to_string()).collect();
    if !done.is_empty() {
        writeln!(out, "{ok} for {}", done.join(","))?;
    }
    for f in &failed {
        writeln!(out, "Error reassigning partition {f}")?;
    }
    if !failed.is_empty() {
        print_out(out);
        bail!("{} partitions failed", failed.len());
    }
    Ok(())
}

//! `spate delete-records` and `spate leader-election`, like Kafka's `kafka-delete-records.sh`
//! (same JSON file) and `kafka-leader-election.sh` (same flags and JSON file).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use spate_client::admin::AdminConfig;
use spate_client::{Admin, TopicPartition};

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

async fn admin(bootstrap: &BootstrapArgs, client_id: &str) -> Result<Admin> {
    Admin::new(AdminConfig {
        bootstrap_servers: bootstrap.servers()?,
        client_id: client_id.into(),
        ..AdminConfig::default()
    })
    .await
    .context("connecting to the cluster")
}

pub async fn delete_records(args: DeleteRecordsArgs) -> Result<()> {
    let file: DeleteRecordsFile = read_json(&args.offset_json_file)?;
    if file.partitions.is_empty() {
        bail!("{} names no partitions", args.offset_json_file.display());
    }
    let offsets: Vec<(TopicPartition, i64)> =
        file.partitions.into_iter().map(|p| (TopicPartition::new(p.topic, p.partition), p.offset)).collect();
    let admin = admin(&args.bootstrap, "spate-delete-records").await?;
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
    let admin = admin(&args.bootstrap, "spate-leader-election").await?;
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

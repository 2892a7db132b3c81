//! `spate consume`: print records of a topic, like `kafka-console-consumer.sh`, with manual
//! assignment (all partitions of the topic, or one with `--partition`), or as a member of a
//! consumer group with `--group` (the group assigns the partitions; positions are committed
//! every `auto.commit.interval.ms` and on exit). Output is flushed after every polled batch, so
//! a pipe sees records as they arrive.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use serde_json::{json, Value};
use spate_client::{AutoOffsetReset, Consumer, ConsumerConfig, ConsumerRecord, IsolationLevel, TopicPartition};

use crate::common::{base64_encode, BootstrapArgs};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// The value alone, one per line (`null` for a null value).
    Value,
    /// Key, --key-separator, value (`null` for a null key or value).
    Kv,
    /// One JSON object per line: topic, partition, offset, timestamp (ms since the epoch), key,
    /// value and headers (an array of {"key", "value"}). A key or value that is valid UTF-8 is a
    /// JSON string; other bytes are written as {"base64": "<standard base64>"}; null stays null.
    Json,
}

/// Where to start a single partition (`--offset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartOffset {
    Earliest,
    Latest,
    At(i64),
}

fn parse_start_offset(raw: &str) -> Result<StartOffset, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "earliest" | "beginning" => Ok(StartOffset::Earliest),
        "latest" | "end" => Ok(StartOffset::Latest),
        n => match n.parse::<i64>() {
            Ok(offset) if offset >= 0 => Ok(StartOffset::At(offset)),
            _ => Err(format!("--offset must be earliest, latest or a non-negative number, not '{raw}'")),
        },
    }
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Non-UTF-8 keys and values: --format value and kv write the raw bytes; \
--format json writes them as {\"base64\": \"...\"} objects.")]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// Topic to read.
    #[arg(long)]
    pub topic: String,
    /// Start at the earliest offset of every partition (default: at the end, only new records).
    /// With --group: where partitions without a committed offset start (`auto.offset.reset`).
    #[arg(long = "from-beginning", conflicts_with = "offset")]
    pub from_beginning: bool,
    /// Consume as a member of this consumer group (`group.id`): the group shares the topic's
    /// partitions among its members and resumes from its committed offsets.
    #[arg(long, conflicts_with = "partition")]
    pub group: Option<String>,
    /// Read only this partition (default: all partitions of the topic).
    #[arg(long)]
    pub partition: Option<i32>,
    /// Where to start in --partition: earliest, latest or an offset.
    #[arg(long, requires = "partition", value_parser = parse_start_offset)]
    pub offset: Option<StartOffset>,
    /// Exit after this many records.
    #[arg(long = "max-messages")]
    pub max_messages: Option<u64>,
    /// Exit after this long without a record (default: wait forever).
    #[arg(long = "timeout-ms")]
    pub timeout_ms: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "value")]
    pub format: OutputFormat,
    /// Separator between key and value for --format kv.
    #[arg(long = "key-separator", default_value = "\t")]
    pub key_separator: String,
    /// `read_uncommitted` (default: every record) or `read_committed` (stops at the last stable
    /// offset and skips records of aborted transactions).
    #[arg(long = "isolation-level", default_value = "read_uncommitted", value_parser = parse_isolation_level)]
    pub isolation_level: IsolationLevel,
}

fn parse_isolation_level(raw: &str) -> Result<IsolationLevel, String> {
    raw.parse()
}

/// Writes one record in the chosen format, newline included.
fn write_record(out: &mut impl Write, record: &ConsumerRecord, args: &ConsumeArgs) -> std::io::Result<()> {
    match args.format {
        OutputFormat::Value => {
            out.write_all(record.value.as_deref().unwrap_or(b"null"))?;
        }
        OutputFormat::Kv => {
            out.write_all(record.key.as_deref().unwrap_or(b"null"))?;
            out.write_all(args.key_separator.as_bytes())?;
            out.write_all(record.value.as_deref().unwrap_or(b"null"))?;
        }
        OutputFormat::Json => {
            serde_json::to_writer(&mut *out, &record_json(record))?;
        }
    }
    out.write_all(b"\n")
}

fn bytes_json(bytes: Option<&Bytes>) -> Value {
    match bytes {
        None => Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => json!({ "base64": base64_encode(b) }),
        },
    }
}

fn record_json(record: &ConsumerRecord) -> Value {
    json!({
        "topic": &*record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp_ms,
        "key": bytes_json(record.key.as_ref()),
        "value": bytes_json(record.value.as_ref()),
        "headers": record
            .headers
            .iter()
            .map(|h| json!({ "key": h.key, "value": bytes_json(h.value.as_ref()) }))
            .collect::<Vec<_>>(),
    })
}

pub async fn run(args: ConsumeArgs) -> Result<()> {
    let consumer = Consumer::new(ConsumerConfig {
        bootstrap_servers: args.bootstrap.servers()?,
        client_id: "spate-console-consumer".into(),
        auto_offset_reset: if args.from_beginning { AutoOffsetReset::Earliest } else { AutoOffsetReset::Latest },
        max_poll_records: 4096,
        group_id: args.group.clone(),
        isolation_level: args.isolation_level,
        ..ConsumerConfig::default()
    })
    .await
    .context("starting the consumer")?;
    let topic = consumer.cluster().topic(&args.topic).await.with_context(|| format!("topic {}", args.topic))?;
    if topic.partitions.is_empty() {
        bail!("topic {} has no partitions", args.topic);
    }
    if let Some(group) = &args.group {
        consumer.subscribe(&[args.topic.as_str()]).await.with_context(|| format!("joining group {group}"))?;
    } else {
        let partitions: Vec<TopicPartition> = match args.partition {
            Some(p) => vec![TopicPartition::new(args.topic.clone(), p)],
            None => topic.partitions.iter().map(|p| TopicPartition::new(args.topic.clone(), p.partition)).collect(),
        };
        consumer.assign(partitions.clone()).await?;
        match (args.offset, args.from_beginning) {
            (Some(StartOffset::At(offset)), _) => consumer.seek(&partitions[0], offset).await?,
            (Some(StartOffset::Earliest), _) | (None, true) => consumer.seek_to_beginning(&[]).await?,
            (Some(StartOffset::Latest), _) | (None, false) => consumer.seek_to_end(&[]).await?,
        }
    }

    // Ctrl-C ends the loop between polls (not inside one, whose records would then be neither
    // printed nor re-read), so the group commits exactly what was printed.
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupted.store(true, Ordering::Relaxed);
            }
        });
    }

    let timeout = args.timeout_ms.map(Duration::from_millis);
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
    let mut count = 0u64;
    let mut last_record_at = Instant::now();
    let done = |count: u64| args.max_messages.is_some_and(|max| count >= max);
    let mut result = Ok(());
    while !done(count) && !interrupted.load(Ordering::Relaxed) {
        let wait = match timeout {
            Some(t) => match t.checked_sub(last_record_at.elapsed()) {
                Some(left) if !left.is_zero() => left.min(Duration::from_secs(1)),
                _ => break,
            },
            None => Duration::from_secs(1),
        };
        let records = match consumer.poll(wait).await {
            Ok(records) => records,
            Err(e) => {
                result = Err(e.into());
                break;
            }
        };
        if records.is_empty() {
            continue;
        }
        last_record_at = Instant::now();
        let mut written = Ok(());
        let mut printed = 0;
        for record in &records {
            if done(count) {
                break;
            }
            written = write_record(&mut out, record, &args);
            if written.is_err() {
                break;
            }
            count += 1;
            printed += 1;
        }
        if printed < records.len() && args.group.is_some() {
            // --max-messages cut the batch: move back to the first record not printed, so the
            // commit on close covers only what was printed.
            for (tp, offset) in first_offsets(&records[printed..]) {
                consumer.seek(&tp, offset).await?;
            }
        }
        match written.and_then(|()| out.flush()) {
            Ok(()) => {}
            // The reader went away (`| head`): stop quietly, as a Unix filter does.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
            Err(e) => {
                result = Err(anyhow::Error::new(e).context("writing to stdout"));
                break;
            }
        }
    }
    if let Some(group) = &args.group {
        // Commits the positions (what was printed) and leaves the group, so its partitions go
        // to the other members at once rather than after the session timeout.
        let closed = consumer.close().await.with_context(|| format!("committing offsets of group {group}"));
        result = result.and(closed);
    }
    eprintln!("Processed a total of {count} messages");
    result
}

/// The first offset of each partition among `records`.
fn first_offsets(records: &[ConsumerRecord]) -> BTreeMap<TopicPartition, i64> {
    let mut out = BTreeMap::new();
    for r in records {
        out.entry(TopicPartition::new(&*r.topic, r.partition)).or_insert(r.offset);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use spate_client::RecordHeader;
    use std::sync::Arc;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ConsumeArgs,
    }

    fn args(extra: &[&str]) -> Result<ConsumeArgs, clap::Error> {
        let mut argv = vec!["consume", "--topic", "t"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|c| c.args)
    }

    fn record() -> ConsumerRecord {
        ConsumerRecord {
            topic: Arc::from("t"),
            partition: 2,
            offset: 41,
            timestamp_ms: 1_700_000_000_000,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(&[0xff, 0x00])),
            headers: vec![RecordHeader { key: "h".into(), value: None }],
        }
    }

    fn render(record: &ConsumerRecord, args: &ConsumeArgs) -> Vec<u8> {
        let mut out = Vec::new();
        write_record(&mut out, record, args).unwrap();
        out
    }

    #[test]
    fn formats_render_key_value_and_json() {
        let mut r = record();
        r.value = Some(Bytes::from_static(b"v"));
        assert_eq!(render(&r, &args(&[]).unwrap()), b"v\n");
        assert_eq!(render(&r, &args(&["--format", "kv"]).unwrap()), b"k\tv\n");
        assert_eq!(render(&r, &args(&["--format", "kv", "--key-separator", "="]).unwrap()), b"k=v\n");
        r.key = None;
        assert_eq!(render(&r, &args(&["--format", "kv"]).unwrap()), b"null\tv\n");
    }

    #[test]
    fn json_shows_binary_as_base64_and_parses_back() {
        let line = render(&record(), &args(&["--format", "json"]).unwrap());
        assert_eq!(line.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["topic"], "t");
        assert_eq!(v["partition"], 2);
        assert_eq!(v["offset"], 41);
        assert_eq!(v["timestamp"], 1_700_000_000_000i64);
        assert_eq!(v["key"], "k");
        assert_eq!(v["value"], json!({ "base64": "/wA=" }));
        assert_eq!(v["headers"], json!([{ "key": "h", "value": null }]));
    }

    #[test]
    fn groups_exclude_manual_partitions() {
        assert_eq!(args(&["--group", "g"]).unwrap().group.as_deref(), Some("g"));
        assert!(args(&["--group", "g", "--partition", "0"]).is_err());
        assert!(args(&["--group", "g", "--from-beginning"]).is_ok());
        let mut second = record();
        second.partition = 1;
        second.offset = 7;
        let mut later = record();
        later.offset = 42;
        assert_eq!(
            first_offsets(&[record(), second, later]),
            BTreeMap::from([(TopicPartition::new("t", 1), 7), (TopicPartition::new("t", 2), 41)])
        );
    }

    #[test]
    fn offsets_need_a_partition_and_exclude_from_beginning() {
        assert!(args(&["--offset", "5"]).is_err());
        assert!(args(&["--partition", "0", "--offset", "5", "--from-beginning"]).is_err());
        assert_eq!(args(&["--partition", "0", "--offset", "5"]).unwrap().offset, Some(StartOffset::At(5)));
        assert_eq!(args(&["--partition", "0", "--offset", "earliest"]).unwrap().offset, Some(StartOffset::Earliest));
        assert_eq!(args(&["--partition", "0", "--offset", "latest"]).unwrap().offset, Some(StartOffset::Latest));
        assert!(args(&["--partition", "0", "--offset", "-3"]).is_err());
    }
}

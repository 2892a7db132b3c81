//! `spate produce`: one record per input line, like `kafka-console-producer.sh`. Sends are not
//! awaited one by one: delivery futures queue in a bounded window and are settled oldest first,
//! so a large file streams at batch speed while memory stays bounded.

use std::collections::VecDeque;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use spate_client::{Compression, DeliveryFuture, Producer, ProducerConfig, ProducerRecord, RecordHeader};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use crate::common::{parse_acks, parse_key_value, progress_bar, BootstrapArgs};

/// Delivery futures held before the oldest is awaited. The producer's buffer memory bounds the
/// bytes in flight; this bounds the bookkeeping.
const PENDING_WINDOW: usize = 65_536;

#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// Topic to write to.
    #[arg(long)]
    pub topic: String,
    /// Read lines from this file instead of stdin (shows a progress bar on a terminal).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Split each line into key and value at the first occurrence of this string (a line
    /// without it is an error). Without this flag the whole line is the value and there is no key.
    #[arg(long = "key-separator")]
    pub key_separator: Option<String>,
    /// Write every record to this partition (default: murmur2 of the key, sticky when unkeyed).
    #[arg(long)]
    pub partition: Option<i32>,
    /// Batch compression: none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: Compression,
    /// Acknowledgements to wait for: 0, 1 or all.
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    pub acks: i16,
    /// A header as key=value added to every record (repeatable).
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub headers: Vec<(String, String)>,
    /// How long a batch waits for more records (`linger.ms`).
    #[arg(long = "linger-ms", default_value_t = 5)]
    pub linger_ms: u64,
    /// Target batch size in bytes (`batch.size`).
    #[arg(long = "batch-size", default_value_t = 16384)]
    pub batch_size: usize,
}

/// Settles delivery futures and remembers the outcome.
#[derive(Default)]
struct Deliveries {
    pending: VecDeque<DeliveryFuture>,
    delivered: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Deliveries {
    async fn settle_oldest(&mut self) {
        if let Some(future) = self.pending.pop_front() {
            match future.await {
                Ok(_) => self.delivered += 1,
                Err(e) => {
                    self.failed += 1;
                    if self.first_error.is_none() {
                        self.first_error = Some(e.to_string());
                    }
                }
            }
        }
    }

    async fn push(&mut self, future: DeliveryFuture) {
        self.pending.push_back(future);
        if self.pending.len() > PENDING_WINDOW {
            self.settle_oldest().await;
        }
    }

    async fn settle_all(&mut self) {
        while !self.pending.is_empty() {
            self.settle_oldest().await;
        }
    }
}

/// Turns one input line (without its line ending) into a record.
fn record_for_line(
    line: &[u8],
    line_number: u64,
    args: &ProduceArgs,
    headers: &[RecordHeader],
) -> Result<ProducerRecord> {
    let (key, value) = match &args.key_separator {
        Some(sep) => {
            let sep = sep.as_bytes();
            let at = find(line, sep).with_context(|| format!("line {line_number} has no key separator"))?;
            (Some(Bytes::copy_from_slice(&line[..at])), &line[at + sep.len()..])
        }
        None => (None, line),
    };
    let mut record = ProducerRecord::new(Bytes::copy_from_slice(value));
    record.key = key;
    record.partition = args.partition;
    record.headers = headers.to_vec();
    Ok(record)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Drops the line ending (`\n` or `\r\n`).
fn trim_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

pub async fn run(args: ProduceArgs) -> Result<()> {
    if matches!(&args.key_separator, Some(s) if s.is_empty()) {
        bail!("--key-separator must not be empty");
    }
    let config = ProducerConfig {
        bootstrap_servers: args.bootstrap.servers()?,
        client_id: "spate-console-producer".into(),
        acks: args.acks,
        compression: args.compression,
        linger_ms: args.linger_ms,
        batch_size: args.batch_size,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(config).await.context("starting the producer")?;
    let headers: Vec<RecordHeader> = args
        .headers
        .iter()
        .map(|(k, v)| RecordHeader { key: k.clone(), value: Some(Bytes::copy_from_slice(v.as_bytes())) })
        .collect();

    let (mut reader, bar): (Box<dyn AsyncBufRead + Unpin>, _) = match &args.file {
        Some(path) => {
            let file = tokio::fs::File::open(path).await.with_context(|| format!("opening {}", path.display()))?;
            let size = file.metadata().await.map(|m| m.len()).ok();
            let bar = progress_bar(size, "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}");
            (Box::new(BufReader::with_capacity(1 << 20, file)), bar)
        }
        None => (Box::new(BufReader::with_capacity(1 << 20, tokio::io::stdin())), indicatif::ProgressBar::hidden()),
    };

    let mut deliveries = Deliveries::default();
    let mut line = Vec::with_capacity(4096);
    let mut line_number = 0u64;
    let mut bytes_read = 0u64;
    let result: Result<()> = async {
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).await.context("reading input")?;
            if n == 0 {
                break;
            }
            line_number += 1;
            bytes_read += n as u64;
            let record = record_for_line(trim_line_ending(&line), line_number, &args, &headers)?;
            let future = producer
                .send(&args.topic, record)
                .await
                .with_context(|| format!("sending line {line_number} to {}", args.topic))?;
            deliveries.push(future).await;
            if line_number.is_multiple_of(1024) {
                bar.set_position(bytes_read);
            }
        }
        Ok(())
    }
    .await;
    bar.set_position(bytes_read);
    // Whatever happened, deliver what was queued before reporting.
    producer.flush().await?;
    deliveries.settle_all().await;
    producer.close().await?;
    bar.finish_and_clear();
    result?;
    eprintln!("{} records sent to {}", deliveries.delivered, args.topic);
    if deliveries.failed > 0 {
        bail!(
            "{} of {} records failed; first error: {}",
            deliveries.failed,
            line_number,
            deliveries.first_error.unwrap_or_default()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProduceArgs,
    }

    fn args(extra: &[&str]) -> ProduceArgs {
        let mut argv = vec!["produce", "--topic", "t"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn lines_split_at_the_first_separator() {
        let a = args(&["--key-separator", "::", "--partition", "2"]);
        let r = record_for_line(b"k::v::w", 1, &a, &[]).unwrap();
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(r.value.as_deref(), Some(&b"v::w"[..]));
        assert_eq!(r.partition, Some(2));
        let err = record_for_line(b"no separator", 7, &a, &[]).unwrap_err();
        assert!(err.to_string().contains("line 7"), "{err}");
    }

    #[test]
    fn without_separator_the_line_is_the_value_and_headers_are_added() {
        let a = args(&["--header", "src=cli", "--header", "x=1"]);
        assert_eq!(a.headers, vec![("src".into(), "cli".into()), ("x".into(), "1".into())]);
        let headers = vec![RecordHeader { key: "src".into(), value: Some(Bytes::from_static(b"cli")) }];
        let r = record_for_line(b"a\tb", 1, &a, &headers).unwrap();
        assert_eq!(r.key, None);
        assert_eq!(r.value.as_deref(), Some(&b"a\tb"[..]));
        assert_eq!(r.headers, headers);
    }

    #[test]
    fn line_endings_are_trimmed_and_flags_parse() {
        assert_eq!(trim_line_ending(b"abc\r\n"), b"abc");
        assert_eq!(trim_line_ending(b"abc\n"), b"abc");
        assert_eq!(trim_line_ending(b"abc"), b"abc");
        let a = args(&["--acks", "1", "--compression", "zstd", "--linger-ms", "0", "--batch-size", "100"]);
        assert_eq!((a.acks, a.compression, a.linger_ms, a.batch_size), (1, Compression::Zstd, 0, 100));
        assert_eq!(args(&[]).acks, -1);
    }
}

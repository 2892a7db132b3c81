//! Exactly-once *effect* through idempotent output: at-least-once delivery into a sink whose
//! writes are keyed by the input record's (topic, partition, offset).
//!
//! Delivery is at-least-once (process, then commit), so after a crash some records are
//! processed again. But the sink stores each result under its input's coordinates, so a
//! replayed record overwrites its own earlier result instead of adding a second one: the sink
//! ends up exactly as if every record had been processed once. The sink here is a file of
//! `partition<TAB>offset<TAB>result` lines rewritten atomically (write a temporary file, then
//! rename) after each batch, before the commit; a database upsert keyed the same way works
//! alike. Kafka's other route, transactions, does the same for outputs that are Kafka topics.
//!
//! ```text
//! cargo run -p spate-examples --example exactly_once_idempotent -- \
//!     --bootstrap-server 127.0.0.1:9092 --produce 1000 --crash-after 150 --output out.tsv
//! cargo run -p spate-examples --example exactly_once_idempotent -- \
//!     --bootstrap-server 127.0.0.1:9092 --output out.tsv
//! wc -l out.tsv      # 1000 lines: nothing lost, nothing doubled
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use spate_client::{AutoOffsetReset, Consumer, ConsumerConfig};
use spate_examples::{poll_until_idle, prepare_topic, process, GroupArgs, SESSION_TIMEOUT_MS};

/// Results by (partition, offset) of the input record: writing the same key twice is a no-op.
struct IdempotentSink {
    path: String,
    rows: BTreeMap<(i32, i64), String>,
}

impl IdempotentSink {
    fn open(path: &str) -> anyhow::Result<Self> {
        let mut rows = BTreeMap::new();
        if Path::new(path).exists() {
            for line in std::fs::read_to_string(path)?.lines() {
                let mut fields = line.splitn(3, '\t');
                let (Some(p), Some(o), Some(v)) = (fields.next(), fields.next(), fields.next()) else {
                    anyhow::bail!("bad line in {path}: {line}");
                };
                rows.insert((p.parse()?, o.parse()?), v.to_string());
            }
        }
        Ok(IdempotentSink { path: path.to_string(), rows })
    }

    fn upsert(&mut self, partition: i32, offset: i64, result: String) {
        self.rows.insert((partition, offset), result);
    }

    /// Makes the writes durable, all or none: the rename is atomic.
    fn flush(&self) -> anyhow::Result<()> {
        let tmp = format!("{}.tmp", self.path);
        let body: String = self.rows.iter().map(|((p, o), v)| format!("{p}\t{o}\t{v}\n")).collect();
        std::fs::write(&tmp, body).with_context(|| format!("writing {tmp}"))?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = GroupArgs::parse("exactly_once_idempotent")?;
    prepare_topic(&args).await?;
    let mut sink = IdempotentSink::open(&args.output)?;
    let before = sink.rows.len();
    let consumer = Consumer::new(ConsumerConfig {
        bootstrap_servers: vec![args.bootstrap_server.clone()],
        group_id: Some(args.group.clone()),
        enable_auto_commit: false,
        auto_offset_reset: AutoOffsetReset::Earliest,
        max_poll_records: 100,
        session_timeout_ms: SESSION_TIMEOUT_MS,
        partition_assignment_strategy: args.strategy.clone(),
        ..ConsumerConfig::default()
    })
    .await?;
    consumer.subscribe(&[args.topic.as_str()]).await?;
    let mut processed = 0usize;
    while let Some(records) = poll_until_idle(&consumer, Duration::from_millis(args.idle_ms)).await? {
        for record in &records {
            sink.upsert(record.partition, record.offset, process(record));
            processed += 1;
            if args.crash_after == Some(processed) {
                // Flushed but not committed: the restart replays these, and they overwrite.
                sink.flush()?;
                println!("crashing after {processed} records (flushed, not committed)");
                std::process::exit(1);
            }
        }
        // Output first, then the commit: a crash between the two only causes overwrites.
        sink.flush()?;
        consumer.commit_sync(None).await?;
    }
    println!(
        "processed {processed} records; the sink holds {} results ({} new)",
        sink.rows.len(),
        sink.rows.len() - before
    );
    consumer.close().await?;
    Ok(())
}

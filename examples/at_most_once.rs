//! At-most-once delivery: commit the offsets of a batch *before* processing it.
//!
//! If the process dies while processing, the group resumes after the committed offsets, so
//! the records of the interrupted batch are never processed: each record is processed at most
//! once, and some may be lost. Use it when a repeat is worse than a gap (e.g. sending a
//! notification). Auto-commit is off: the example commits itself, at the right moment.
//!
//! ```text
//! cargo run -p spate-examples --example at_most_once -- --bootstrap-server 127.0.0.1:9092 \
//!     --produce 1000 --crash-after 150      # commits a batch, "crashes" mid-batch
//! cargo run -p spate-examples --example at_most_once -- --bootstrap-server 127.0.0.1:9092
//!                                           # resumes after the committed batch: a gap
//! ```

use std::time::Duration;

use spate_client::{AutoOffsetReset, Consumer, ConsumerConfig};
use spate_examples::{poll_until_idle, prepare_topic, process, GroupArgs, SESSION_TIMEOUT_MS};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = GroupArgs::parse("at_most_once")?;
    prepare_topic(&args).await?;
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
        // Commit first: `None` commits the positions, i.e. everything this poll returned.
        consumer.commit_sync(None).await?;
        for record in &records {
            if args.crash_after == Some(processed) {
                println!("crashing after {processed} records; the rest of this batch is lost");
                std::process::exit(1);
            }
            let _result = process(record);
            processed += 1;
        }
    }
    println!("processed {processed} records");
    consumer.close().await?;
    Ok(())
}

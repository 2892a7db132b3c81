//! At-least-once delivery: process a batch, *then* commit its offsets.
//!
//! If the process dies after processing but before the commit, the group resumes at the last
//! committed offsets and the batch is processed again: every record is processed at least
//! once, and some more than once. This is what `enable.auto.commit` gives too (it commits, in
//! the next `poll` or on close, what earlier polls returned); the example commits explicitly
//! after each batch so the window for repeats is one batch.
//!
//! ```text
//! cargo run -p spate-examples --example at_least_once -- --bootstrap-server 127.0.0.1:9092 \
//!     --produce 1000 --crash-after 150      # processes part of a batch, "crashes" uncommitted
//! cargo run -p spate-examples --example at_least_once -- --bootstrap-server 127.0.0.1:9092
//!                                           # repeats the uncommitted batch: duplicates
//! ```

use std::time::Duration;

use spate_client::{AutoOffsetReset, Consumer, ConsumerConfig};
use spate_examples::{poll_until_idle, prepare_topic, process, GroupArgs, SESSION_TIMEOUT_MS};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = GroupArgs::parse("at_least_once")?;
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
        for record in &records {
            if args.crash_after == Some(processed) {
                println!("crashing after {processed} records; this batch was not committed and will repeat");
                std::process::exit(1);
            }
            let _result = process(record);
            processed += 1;
        }
        // Commit last: only what was processed. An async commit would do as well here, with
        // a synchronous one on close (below) to make the last one certain.
        consumer.commit_sync(None).await?;
    }
    println!("processed {processed} records");
    consumer.close().await?;
    Ok(())
}

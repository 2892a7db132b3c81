//! Clicks enriched with user profiles: `clicks` (key user id, JSON) left-joined with the table
//! read from the compacted topic `users` (key user id, JSON profile; a null value deletes the
//! user) into `enriched-clicks` as `{"click":…,"user":…}`, with `"user": null` for users not
//! (yet) in the table. `clicks` and `users` must have the same number of partitions; the
//! example creates both with `--partitions`.
//!
//! ```text
//! cargo run --release -p spate-examples --example enrich_clicks -- --bootstrap-server 127.0.0.1:9092
//! ```

use spate_examples::streams_apps;
use spate_examples::{run_streams, StreamsArgs};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = StreamsArgs::parse(&[])?;
    let topology = streams_apps::enrich_clicks("clicks", "users", "enriched-clicks")?;
    let topics = [
        args.topic("clicks"),
        args.topic("users").with_config("cleanup.policy", "compact"),
        args.topic("enriched-clicks"),
    ];
    run_streams("enrich-clicks", &args, topology, &topics).await
}

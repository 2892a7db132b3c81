//! User sessions: events in `user-activity` (key user) are grouped into sessions that end after
//! `--gap-ms` without activity; every update of a session goes to `user-sessions` (key user,
//! value `{"user":…,"session_start":…,"session_end":…,"events":…}`), and a session merged
//! into a larger one is retracted with a tombstone (null value).
//!
//! ```text
//! cargo run --release -p spate-examples --example session_activity -- --bootstrap-server 127.0.0.1:9092 \
//!     [--gap-ms 30000]
//! ```

use spate_examples::streams_apps;
use spate_examples::{run_streams, StreamsArgs};

const INPUT: &str = "user-activity";
const OUTPUT: &str = "user-sessions";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = StreamsArgs::parse(&[("gap", 30_000)])?;
    let topology = streams_apps::session_activity(INPUT, OUTPUT, args.duration("gap"))?;
    run_streams("session-activity", &args, topology, &[args.topic(INPUT), args.topic(OUTPUT)]).await
}

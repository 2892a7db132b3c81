//! Page views per page in tumbling windows, final results only: `pageviews` (key user, value
//! `{"user":…,"page":…}`) is re-keyed by page, counted per `--window-ms` window, and each
//! window's count goes to `pageview-counts` once, when stream time passes the window's end plus
//! `--grace-ms` (value `{"page":…,"window_start":…,"window_end":…,"count":…}`).
//!
//! ```text
//! cargo run --release -p spate-examples --example pageview_counts -- --bootstrap-server 127.0.0.1:9092 \
//!     [--window-ms 60000] [--grace-ms 10000]
//! ```

use spate_examples::streams_apps;
use spate_examples::{run_streams, StreamsArgs};

const INPUT: &str = "pageviews";
const OUTPUT: &str = "pageview-counts";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = StreamsArgs::parse(&[("window", 60_000), ("grace", 10_000)])?;
    let topology = streams_apps::pageview_counts(INPUT, OUTPUT, args.duration("window"), args.duration("grace"))?;
    run_streams("pageview-counts", &args, topology, &[args.topic(INPUT), args.topic(OUTPUT)]).await
}

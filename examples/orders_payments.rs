//! Orders joined with their payments (both keyed by order id, JSON values) within `--window-ms`
//! (default 5 minutes) of each other: each order with a payment goes to `paid-orders` as
//! `{"order":…,"payment":…}`; an order that found no payment by the time its window closed goes
//! to `unpaid-orders`. `orders` and `payments` must have the same number of partitions (the
//! join reads partition p of both in one task); the example creates both with `--partitions`.
//!
//! ```text
//! cargo run --release -p spate-examples --example orders_payments -- --bootstrap-server 127.0.0.1:9092 \
//!     [--window-ms 300000]
//! ```

use spate_examples::streams_apps;
use spate_examples::{run_streams, StreamsArgs};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // How far apart in time an order and its payment may be.
    let args = StreamsArgs::parse(&[("window", 5 * 60 * 1000)])?;
    let window = args.duration("window");
    let topology = streams_apps::orders_payments("orders", "payments", "paid-orders", "unpaid-orders", window)?;
    let topics = ["orders", "payments", "paid-orders", "unpaid-orders"].map(|t| args.topic(t));
    run_streams("orders-payments", &args, topology, &topics).await
}

//! Orders joined with their payments (both keyed by order id, JSON values) within 5 minutes of
//! each other: each order with a payment goes to `paid-orders` as
//! `{"order":…,"payment":…}`; an order that found no payment by the time its window closed goes
//! to `unpaid-orders`. `orders` and `payments` must have the same number of partitions (the
//! join reads partition p of both in one task); the example creates both with `--partitions`.
//!
//! ```text
//! cargo run --release -p spate-examples --example orders_payments -- --bootstrap-server 127.0.0.1:9092
//! ```

use std::time::Duration;

use spate_examples::streams_apps;
use spate_examples::{run_streams, StreamsArgs};

/// How far apart in time an order and its payment may be.
const JOIN_WINDOW: Duration = Duration::from_secs(5 * 60);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = StreamsArgs::parse(&[])?;
    let topology = streams_apps::orders_payments("orders", "payments", "paid-orders", "unpaid-orders", JOIN_WINDOW)?;
    let topics = ["orders", "payments", "paid-orders", "unpaid-orders"].map(|t| args.topic(t));
    run_streams("orders-payments", &args, topology, &topics).await
}

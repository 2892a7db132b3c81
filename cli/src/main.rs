//! The `spate` command: `spate broker` runs a broker; the other subcommands mirror the Kafka
//! scripts (`kafka-topics.sh`, `kafka-console-producer.sh`, …) on top of `spate-client`.

mod broker;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "spate", version, about = "Spate: a Kafka-compatible event-streaming platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker (single node, embedded defaults: 127.0.0.1:9092, ./spate-data).
    Broker(broker::BrokerArgs),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Broker(args) => broker::run(args).await,
    }
}

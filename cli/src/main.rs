//! The `spate` command: `spate broker` runs a broker; the other subcommands mirror the Kafka
//! scripts (`kafka-topics.sh`, `kafka-console-producer.sh`, …) on top of `spate-client`.

mod bench;
mod broker;
mod cluster;
mod common;
mod configs;
mod connect;
mod connectors;
mod consume;
mod groups;
mod metrics_http;
mod produce;
mod records;
#[cfg(feature = "sql")]
mod sql;
mod topics;
mod transactions;

use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    /// List, create, describe, alter and delete topics (like kafka-topics.sh).
    Topics(topics::TopicsArgs),
    /// Cluster health: `spate cluster status` lists brokers, the controller, and under-replicated
    /// and offline partitions.
    Cluster(cluster::ClusterArgs),
    /// Send lines from stdin or a file as records (like kafka-console-producer.sh).
    Produce(produce::ProduceArgs),
    /// Print records of a topic (like kafka-console-consumer.sh).
    Consume(consume::ConsumeArgs),
    /// List, describe and delete consumer groups; reset or delete their committed offsets (like
    /// kafka-consumer-groups.sh).
    Groups(groups::GroupsArgs),
    /// Run a Kafka-Connect-compatible worker with its REST API (default 127.0.0.1:8083).
    Connect(connect::ConnectArgs),
    /// Measure produce, consume and group throughput, rebalance time and end-to-end latency.
    Bench(bench::BenchArgs),
    /// Delete the records of partitions below given offsets (like kafka-delete-records.sh).
    DeleteRecords(records::DeleteRecordsArgs),
    /// Preferred or unclean leader election (like kafka-leader-election.sh).
    LeaderElection(records::LeaderElectionArgs),
    /// Move partitions between brokers: generate a plan, execute, verify, cancel (like
    /// kafka-reassign-partitions.sh).
    Reassign(records::ReassignArgs),
    /// Describe topic and broker configs, alter topic configs (like kafka-configs.sh).
    Configs(configs::ConfigsArgs),
    /// Manage the connectors of a Connect worker group through its REST API.
    Connectors(connectors::ConnectorsArgs),
    /// Query topics with SQL (DataFusion): -c/-f statements, or an interactive shell.
    #[cfg(feature = "sql")]
    Sql(sql::SqlArgs),
    /// List and describe transactions (like kafka-transactions.sh).
    Transactions(transactions::TransactionsArgs),
}

/// Logs to stderr, filtered by `RUST_LOG`, else at `default_level`. Colour only on a terminal
/// (and not with `NO_COLOR`): redirected to a file the log is plain text.
fn init_logging(default_level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

#[tokio::main]
async fn main() -> ExitCode {
    // The matches, not only the parsed struct: `spate sql` runs its -c and -f in the order given,
    // which only the argument indices tell.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The client tools keep stderr for their own messages unless something goes wrong.
    // openraft logs every failed RPC to a down voter at error level; our controller reports
    // unreachable peers itself, rate-limited.
    init_logging(if matches!(cli.command, Command::Broker(_) | Command::Connect(_)) {
        "info,openraft=off"
    } else {
        "warn,openraft=off"
    });
    let result: Result<()> = match cli.command {
        Command::Broker(args) => broker::run(args).await,
        Command::Topics(args) => topics::run(args).await,
        Command::Cluster(args) => cluster::run(args).await,
        Command::Produce(args) => produce::run(args).await,
        Command::Consume(args) => consume::run(args).await,
        Command::Groups(args) => groups::run(args).await,
        Command::Transactions(args) => transactions::run(args).await,
        Command::DeleteRecords(args) => records::delete_records(args).await,
        Command::LeaderElection(args) => records::leader_election(args).await,
        Command::Reassign(args) => records::reassign(args).await,
        Command::Configs(args) => configs::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Connectors(args) => connectors::run(args).await,
        Command::Connect(args) => connect::run(args).await,
        #[cfg(feature = "sql")]
        Command::Sql(args) => {
            let sources = sql::sources_in_order(&args, matches.subcommand_matches("sql"));
            sql::run(args, sources).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes on one line, without the backtrace that anyhow's Debug
            // adds under RUST_BACKTRACE: this is a message for the user, not a crash.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

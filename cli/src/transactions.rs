//! `spate transactions`: list and describe transactions, like `kafka-transactions.sh list` and
//! `describe`. Each broker answers for the transactional ids it coordinates.

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use spate_client::admin::AdminConfig;
use spate_client::Admin;

use crate::common::{print_out, BootstrapArgs};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("action").required(true).multiple(false).args(["list", "describe"])))]
#[command(after_help = "Examples:\n  spate transactions --list\n  spate transactions --list --state Ongoing\n  \
spate transactions --describe --transactional-id my-app-0")]
pub struct TransactionsArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// List transactional ids: TRANSACTIONAL ID, COORDINATOR, PRODUCER ID, STATE.
    #[arg(long)]
    pub list: bool,
    /// Describe --transactional-id: state, producer id and epoch, timeout, start time and the
    /// partitions of the open transaction.
    #[arg(long)]
    pub describe: bool,
    /// The transactional id to describe (repeatable).
    #[arg(long = "transactional-id")]
    pub transactional_id: Vec<String>,
    /// --list: only these states (comma-separated, e.g. `Ongoing,PrepareCommit`).
    #[arg(long)]
    pub state: Option<String>,
    /// --list: only these producer ids (comma-separated).
    #[arg(long = "producer-id", value_delimiter = ',')]
    pub producer_id: Vec<i64>,
}

pub async fn run(args: TransactionsArgs) -> Result<()> {
    let admin = Admin::new(AdminConfig {
        bootstrap_servers: args.bootstrap.servers()?,
        client_id: "spate-transactions".into(),
        ..AdminConfig::default()
    })
    .await
    .context("connecting to the cluster")?;
    let mut out = String::new();
    if args.list {
        let states: Vec<&str> = args
            .state
            .as_deref()
            .map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let listed = admin.list_transactions(&states, &args.producer_id).await.context("listing transactions")?;
        let width = listed.iter().map(|t| t.transactional_id.len()).max().unwrap_or(0).max(16);
        writeln!(out, "{:<width$}  {:>11}  {:>11}  STATE", "TRANSACTIONAL ID", "COORDINATOR", "PRODUCER ID")?;
        for t in listed {
            writeln!(out, "{:<width$}  {:>11}  {:>11}  {}", t.transactional_id, t.coordinator, t.producer_id, t.state)?;
        }
    } else {
        if args.transactional_id.is_empty() {
            bail!("--describe needs --transactional-id");
        }
        let ids: Vec<&str> = args.transactional_id.iter().map(String::as_str).collect();
        let described = admin.describe_transactions(&ids).await.context("describing transactions")?;
        let mut failed = false;
        for id in &ids {
            match described.get(*id) {
                Some(Ok(d)) => {
                    let partitions: Vec<String> = d.partitions.iter().map(|tp| tp.to_string()).collect();
                    writeln!(out, "transactional id:  {id}")?;
                    writeln!(out, "coordinator:       {}", d.coordinator)?;
                    writeln!(out, "state:             {}", d.state)?;
                    writeln!(out, "producer id:       {}", d.producer_id)?;
                    writeln!(out, "producer epoch:    {}", d.producer_epoch)?;
                    writeln!(out, "timeout ms:        {}", d.transaction_timeout_ms)?;
                    writeln!(out, "start time ms:     {}", d.transaction_start_time_ms)?;
                    writeln!(out, "partitions:        {}", partitions.join(","))?;
                }
                Some(Err(err)) => {
                    failed = true;
                    eprintln!("{id}: {err}");
                }
                None => {
                    failed = true;
                    eprintln!("{id}: no broker answered for it");
                }
            }
        }
        print_out(&out);
        if failed {
            bail!("some transactions could not be described");
        }
        return Ok(());
    }
    print_out(&out);
    Ok(())
}

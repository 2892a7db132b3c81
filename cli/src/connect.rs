//! `spate connect`: a Kafka-Connect-compatible worker with its REST API. Workers started with
//! the same `--group-id` against the same cluster share connectors and tasks; connector files
//! given on the command line are created or updated at start (the standalone habit).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use spate_connect::registry::Registry;
use spate_connect::rest::client::RestClient;
use spate_connect::runtime::herder::WorkerHerder;
use spate_connect::runtime::worker::{Worker, WorkerConfig};

use crate::common::BootstrapArgs;

#[derive(clap::Args, Debug)]
pub struct ConnectArgs {
    #[command(flatten)]
    bootstrap: BootstrapArgs,
    /// Where the REST API listens (`listeners`).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8083")]
    listen: SocketAddr,
    /// The worker group (`group.id`); workers with the same id share the work.
    #[arg(long = "group-id", default_value = "spate-connect")]
    group_id: String,
    /// The URL other workers reach this one's REST API at (default: http://<listen>).
    #[arg(long = "advertised-url", value_name = "URL")]
    advertised_url: Option<String>,
    /// Directory Rhai transform scripts may be loaded from (`plugin.path`).
    #[arg(long = "plugin-path", default_value = "plugins")]
    plugin_path: PathBuf,
    /// Serve Prometheus metrics (`spate_connect_*`: records, bytes, batch latency, errors,
    /// dead letters, sink lag) at http://HOST:PORT/metrics. Default: no endpoint.
    #[arg(long = "metrics-listen", value_name = "HOST:PORT")]
    metrics_listen: Option<SocketAddr>,
    /// A worker config, Kafka's keys: `offset.flush.interval.ms=1000`,
    /// `key.converter=JsonConverter`, `value.converter.schemas.enable=false`,
    /// `config.storage.topic=…`, `offset.storage.topic=…`, `status.storage.topic=…`,
    /// `offset.storage.partitions=25`, `status.storage.partitions=5`, `replication.factor=-1`,
    /// `exactly.once.source.support=enabled` (KIP-618: source tasks write records and offsets in
    /// one transaction),
    /// `session.timeout.ms`, `heartbeat.interval.ms`, `task.shutdown.graceful.timeout.ms`,
    /// `consumer.<key>` for sink consumers (`consumer.session.timeout.ms=10000`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Connector configs (JSON `{"name", "config"}` or flat, or TOML) to create or update.
    connectors: Vec<PathBuf>,
}

fn worker_config(args: &ConnectArgs) -> Result<WorkerConfig> {
    let mut c = WorkerConfig::new(String::new());
    c.bootstrap_servers = args.bootstrap.servers()?;
    c.group_id = args.group_id.clone();
    c.listen = args.listen;
    c.advertised_url = args.advertised_url.clone();
    c.plugin_path = args.plugin_path.clone();
    for kv in &args.set {
        let Some((k, v)) = kv.split_once('=') else { bail!("--set takes KEY=VALUE, got {kv}") };
        let (k, v) = (k.trim(), v.trim());
        let num =
            |what: &str| -> Result<u64> { v.parse().with_context(|| format!("{what} must be a number, got {v}")) };
        match k {
            "group.id" => c.group_id = v.to_owned(),
            "config.storage.topic" => c.config_storage_topic = v.to_owned(),
            "offset.storage.topic" => c.offset_storage_topic = v.to_owned(),
            "status.storage.topic" => c.status_storage_topic = v.to_owned(),
            "offset.storage.partitions" => c.offset_storage_partitions = num(k)? as i32,
            "status.storage.partitions" => c.status_storage_partitions = num(k)? as i32,
            "replication.factor"
            | "config.storage.replication.factor"
            | "offset.storage.replication.factor"
            | "status.storage.replication.factor" => {
                c.storage_replication_factor = v.parse().with_context(|| format!("{k} must be a number"))?
            }
            "offset.flush.interval.ms" => c.offset_flush_interval_ms = num(k)?,
            "task.shutdown.graceful.timeout.ms" => c.task_shutdown_graceful_timeout_ms = num(k)?,
            "session.timeout.ms" => c.session_timeout_ms = num(k)?,
            "heartbeat.interval.ms" => c.heartbeat_interval_ms = num(k)?,
            "rebalance.timeout.ms" => c.rebalance_timeout_ms = num(k)?,
            "producer.buffer.memory" => c.producer_buffer_memory = num(k)? as usize,
            "producer.linger.ms" => c.producer_linger_ms = num(k)?,
            "plugin.path" => c.plugin_path = PathBuf::from(v),
            "exactly.once.source.support" => {
                c.exactly_once_source_support = match v {
                    "enabled" => true,
                    // `preparing` is Kafka's rolling-upgrade step; with nothing to upgrade from
                    // it behaves as `disabled`.
                    "disabled" | "preparing" => false,
                    _ => bail!("exactly.once.source.support must be enabled, preparing or disabled, got {v}"),
                }
            }
            _ if k.starts_with("key.converter") || k.starts_with("value.converter") || k.starts_with("consumer.") => {
                c.connector_defaults.insert(k.to_owned(), v.to_owned());
            }
            _ => bail!("unknown worker config {k}"),
        }
    }
    Ok(c)
}

pub async fn run(args: ConnectArgs) -> Result<()> {
    let shutdown = crate::broker::shutdown_signal();
    tokio::pin!(shutdown);
    let config = worker_config(&args)?;
    // Installed before the worker starts, so its tasks' metrics are recorded.
    if let Some(addr) = args.metrics_listen {
        let metrics = crate::metrics_http::MetricsEndpoint::bind(addr).await?;
        eprintln!("spate connect metrics on http://{}/metrics", metrics.local_addr());
        metrics.spawn(None);
    }
    let connector_files: Vec<(String, serde_json::Map<String, serde_json::Value>)> =
        args.connectors.iter().map(|p| crate::connectors::read_connector_file(p)).collect::<Result<_>>()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the REST listener {}", config.listen))?;
    let local = listener.local_addr()?;
    let url = match &config.advertised_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        // Other workers forward to this URL and it names the worker in statuses: an
        // unspecified address (0.0.0.0) would point every follower at itself.
        None if local.ip().is_unspecified() => format!("http://{}:{}", hostname()?, local.port()),
        None => format!("http://{local}"),
    };
    let worker = Worker::start(config, Registry::builtin(), url.clone()).await.context("starting the worker")?;
    let herder = Arc::new(WorkerHerder::new(worker.shared()));
    let router = spate_connect::rest::router(herder, spate_connect::rest::Forwarder::new(RestClient::default()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(spate_connect::rest::serve(listener, router, async move {
        let _ = stop_rx.await;
    }));
    eprintln!("spate connect worker listening on {url} (group {})", args.group_id);
    // A signal while the files are applied (which waits for the group) stops the worker cleanly.
    let applied = async {
        for (name, config) in connector_files {
            apply_connector(&url, &name, &config).await?;
        }
        anyhow::Ok(())
    };
    let stopped_early = tokio::select! {
        applied = applied => {
            applied?;
            false
        }
        _ = &mut shutdown => true,
    };
    if !stopped_early {
        shutdown.await;
    }
    eprintln!("spate connect: stopping tasks and storing offsets");
    worker.shutdown().await;
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(())
}

/// Creates or updates a connector through this worker's own API (which forwards to the
/// leader), retrying while the group is still forming.
async fn apply_connector(url: &str, name: &str, config: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
    let client = RestClient::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    let body = serde_json::Value::Object(config.clone());
    loop {
        let (status, reply) = client
            .request(
                spate_connect::rest::client::Method::PUT,
                &format!("{url}/connectors/{}/config", crate::connectors::segment(name)),
                Some(body.clone()),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        match status {
            200 | 201 => {
                eprintln!("connector {name} {}", if status == 201 { "created" } else { "updated" });
                return Ok(());
            }
            409 | 500 if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(500)).await,
            _ => bail!("creating connector {name} failed ({status}): {reply}"),
        }
    }
}

/// This machine's host name, for the advertised URL of a worker listening on every address.
fn hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("listening on an unspecified address needs --advertised-url (cannot read the host name)")?;
    let name = name.trim();
    if name.is_empty() {
        bail!("listening on an unspecified address needs --advertised-url (the host name is empty)");
    }
    Ok(name.to_owned())
}

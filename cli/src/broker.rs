//! `spate broker`: runs a broker (with its controller). Without `--controller-quorum` it is a
//! single-node cluster with no configuration at all. Configuration is layered: built-in defaults, then
//! an optional TOML file (`--config`), then `SPATE_*` environment variables, then flags. Keys are
//! Kafka's names (`log.segment.bytes`); the env form is `SPATE_LOG_SEGMENT_BYTES`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use spate_broker::{BrokerConfig, Server};

use crate::metrics_http::MetricsEndpoint;

#[derive(clap::Args, Debug)]
pub struct BrokerArgs {
    /// TOML file with broker configs by their Kafka names, e.g. `"log.retention.ms" = 3600000`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address the Kafka listener binds to (`listeners`). Default 127.0.0.1:9092.
    #[arg(long)]
    pub listen: Option<String>,
    /// `host:port` clients are told to connect to (`advertised.listeners`).
    #[arg(long)]
    pub advertised_listener: Option<String>,
    /// Data directory (`log.dirs`). Default ./spate-data.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// This broker's id (`node.id`). Default 1.
    #[arg(long)]
    pub node_id: Option<i32>,
    /// The metadata quorum, `id@host:port,...` (`controller.quorum.voters`): every node's
    /// controller address. Give the same list to each of the cluster's brokers.
    #[arg(long)]
    pub controller_quorum: Option<String>,
    /// Where this node's controller listens (`controller.listener`). Default: its own entry in
    /// `--controller-quorum`.
    #[arg(long)]
    pub controller_listen: Option<String>,
    /// Any broker config as key=value (repeatable), e.g. `--set log.flush.mode=page-cache`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Validate the configuration (file, SPATE_* env, flags), print the effective values and
    /// exit: 0 when valid, 1 with the offending key otherwise. Starts nothing.
    #[arg(long)]
    pub check_config: bool,
}

/// Converts a string to the TOML type the config key has by default.
fn typed_value(key: &str, raw: &str, template: &serde_json::Value) -> Result<toml::Value> {
    Ok(match template {
        serde_json::Value::Bool(_) => {
            toml::Value::Boolean(raw.parse().with_context(|| format!("{key}: '{raw}' is not true or false"))?)
        }
        serde_json::Value::Number(_) => {
            toml::Value::Integer(raw.trim().parse().with_context(|| format!("{key}: '{raw}' is not an integer"))?)
        }
        _ => toml::Value::String(raw.to_string()),
    })
}

/// Builds the effective config from the layers.
pub fn load_config(args: &BrokerArgs, env: impl Iterator<Item = (String, String)>) -> Result<BrokerConfig> {
    let defaults = match serde_json::to_value(BrokerConfig::default())? {
        serde_json::Value::Object(map) => map,
        _ => bail!("broker defaults are not a table"),
    };
    let mut table = toml::Table::new();
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        let file: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?;
        table.extend(file);
    }
    let env: Vec<(String, String)> = env.filter(|(k, _)| k.starts_with("SPATE_")).collect();
    for (key, template) in &defaults {
        let env_name = format!("SPATE_{}", key.to_ascii_uppercase().replace('.', "_"));
        if let Some((_, raw)) = env.iter().find(|(k, _)| *k == env_name) {
            table.insert(key.clone(), typed_value(key, raw, template).with_context(|| format!("in ${env_name}"))?);
        }
    }
    let mut set = |key: &str, raw: String| -> Result<()> {
        let template = defaults.get(key).with_context(|| format!("unknown broker config '{key}'"))?;
        table.insert(key.to_string(), typed_value(key, &raw, template)?);
        Ok(())
    };
    for kv in &args.overrides {
        let (k, v) = kv.split_once('=').with_context(|| format!("--set {kv}: expected KEY=VALUE"))?;
        set(k.trim(), v.to_string())?;
    }
    if let Some(v) = &args.listen {
        set("listeners", v.clone())?;
    }
    if let Some(v) = &args.advertised_listener {
        set("advertised.listeners", v.clone())?;
    }
    if let Some(v) = &args.data_dir {
        set("log.dirs", v.display().to_string())?;
    }
    if let Some(v) = args.node_id {
        set("node.id", v.to_string())?;
    }
    if let Some(v) = &args.controller_quorum {
        set("controller.quorum.voters", v.clone())?;
    }
    if let Some(v) = &args.controller_listen {
        set("controller.listener", v.clone())?;
    }
    let config: BrokerConfig = toml::Value::Table(table).try_into().context("invalid broker configuration")?;
    Ok(config.validate()?)
}

pub async fn run(args: BrokerArgs) -> Result<()> {
    let config = load_config(&args, std::env::vars())?;
    if args.check_config {
        // The effective configuration, in the TOML form `--config` reads.
        let mut effective = toml::Table::new();
        if let serde_json::Value::Object(map) = serde_json::to_value(&config)? {
            for (key, value) in map {
                let value = match value {
                    serde_json::Value::Null => continue,
                    serde_json::Value::Bool(b) => toml::Value::Boolean(b),
                    serde_json::Value::Number(n) => match n.as_i64() {
                        Some(i) => toml::Value::Integer(i),
                        None => toml::Value::String(n.to_string()),
                    },
                    serde_json::Value::String(s) => toml::Value::String(s),
                    other => toml::Value::String(other.to_string()),
                };
                effective.insert(key, value);
            }
        }
        print!("{}", toml::to_string(&effective)?);
        eprintln!("configuration is valid");
        return Ok(());
    }
    let data_dir = config.data_dir.clone();
    let mut shutdown = Box::pin(shutdown_signal());
    // The recorder goes in before the broker opens, so the partitions' counters are live.
    let metrics = match config.metrics_listener {
        Some(addr) => Some(MetricsEndpoint::bind(addr).await?),
        None => None,
    };
    // Starting can wait for the metadata quorum for as long as it takes (a voter whose peers are
    // down): a SIGTERM meanwhile stops it there, as a crash would, instead of being ignored.
    let server = tokio::select! {
        server = Server::start(config) => server.context("starting the broker")?,
        () = &mut shutdown => {
            eprintln!("spate broker stopped while starting (SIGINT or SIGTERM)");
            return Ok(());
        }
    };
    eprintln!("spate broker listening on {} (data dir {})", server.local_addr(), data_dir.display());
    if let Some(metrics) = metrics {
        eprintln!("spate broker metrics on http://{}/metrics", metrics.local_addr());
        let broker = server.broker.clone();
        metrics.spawn(Some(Arc::new(move || broker.refresh_metrics())));
    }
    server.serve(shutdown).await?;
    Ok(())
}

/// SIGINT or SIGTERM. The handlers are installed when this is called, not when the future is
/// first polled, so a signal that arrives while the command is still starting (a worker applying
/// its connector files, a continuous query planning) is not fatal: call it first.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (term, int) = (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok());
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(term) => {}
                _ = wait(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> BrokerArgs {
        BrokerArgs {
            config: None,
            listen: None,
            advertised_listener: None,
            data_dir: None,
            node_id: None,
            controller_quorum: None,
            controller_listen: None,
            overrides: vec![],
            check_config: false,
        }
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spate.toml");
        std::fs::write(&file, "\"num.partitions\" = 3\n\"log.retention.ms\" = 1000\n").unwrap();
        let mut a = args();
        a.config = Some(file);
        a.overrides = vec!["log.retention.ms=2000".into()];
        a.node_id = Some(7);
        let env = vec![
            ("SPATE_NUM_PARTITIONS".to_string(), "4".to_string()),
            ("SPATE_LOG_RETENTION_MS".to_string(), "1500".to_string()),
        ];
        let cfg = load_config(&a, env.into_iter()).unwrap();
        assert_eq!(cfg.num_partitions, 4);
        assert_eq!(cfg.log_retention_ms, 2000);
        assert_eq!(cfg.node_id, 7);
    }

    #[test]
    fn cluster_flags_set_the_quorum() {
        let mut a = args();
        a.node_id = Some(2);
        a.controller_quorum = Some("1@127.0.0.1:19091,2@127.0.0.1:19092".into());
        a.overrides = vec!["min.insync.replicas=2".into(), "broker.session.timeout.ms=2000".into()];
        let cfg = load_config(&a, std::iter::empty()).unwrap();
        assert_eq!(cfg.quorum_voters().unwrap().len(), 2);
        assert_eq!(cfg.min_insync_replicas, 2);
        assert_eq!(cfg.broker_session_timeout_ms, 2000);
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let mut a = args();
        a.overrides = vec!["num.partitions=lots".into()];
        let err = format!("{:#}", load_config(&a, std::iter::empty()).unwrap_err());
        assert!(err.contains("num.partitions"), "{err}");
        a.overrides = vec!["no.such=1".into()];
        assert!(load_config(&a, std::iter::empty()).is_err());
    }
}

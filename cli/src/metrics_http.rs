//! The Prometheus endpoint of a `spate` process (`metrics.listener` for `spate broker`,
//! `--metrics-listen` for `spate connect`): one `metrics` recorder per process, which the broker,
//! spate-connect and spate-streams all record into, rendered in Prometheus' text format at
//! `GET /metrics`. Histograms are exported as cumulative buckets (seconds), so Prometheus can
//! aggregate them across brokers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Bucket bounds of every histogram, in seconds: 50 µs (an in-memory request) to 10 s (a stuck
/// long poll), about ×2.5 per step.
const LATENCY_BUCKETS_S: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// How often histogram buckets are drained into their exported totals (the exporter's upkeep).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Called right before each scrape is rendered (the broker sets its gauges there).
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// A bound endpoint whose recorder is installed: anything recorded from now on is exported.
pub struct MetricsEndpoint {
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
}

impl MetricsEndpoint {
    /// Installs the process-wide recorder and binds `addr`. Call it before anything records
    /// (handles made before the recorder exists stay no-ops).
    pub async fn bind(addr: SocketAddr) -> Result<MetricsEndpoint> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener {addr}"))?;
        let handle = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS_S)
            .context("metrics histogram buckets")?
            .install_recorder()
            .context("installing the metrics recorder")?;
        Ok(MetricsEndpoint { listener, handle })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves `GET /metrics` until the process ends (spawned as a task).
    pub fn spawn(self, refresh: Option<Refresh>) {
        let MetricsEndpoint { listener, handle } = self;
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        let router = axum::Router::new().route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                let refresh = refresh.clone();
                async move {
                    // Gauges walk the broker's partitions and groups: off the async workers.
                    let body = tokio::task::spawn_blocking(move || {
                        if let Some(refresh) = refresh {
                            refresh();
                        }
                        handle.render()
                    })
                    .await
                    .unwrap_or_default();
                    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
                }
            }),
        );
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                tracing::error!(error = %err, "the metrics endpoint stopped");
            }
        });
    }
}

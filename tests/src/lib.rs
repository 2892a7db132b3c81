//! Helpers for end-to-end tests: a real `spate broker` process on a loopback port chosen at run
//! time, with a temporary data directory, stopped (and killed if need be) when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The `spate` binary under test: `$SPATE_BIN`, else the debug build in the target directory.
pub fn spate_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("SPATE_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/spate")
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

pub struct TestBroker {
    pub addr: SocketAddr,
    pub data_dir: tempfile::TempDir,
    log_path: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
}

impl TestBroker {
    /// Starts a broker with extra `--set key=value` style arguments.
    pub fn start(extra_args: &[&str]) -> Result<TestBroker> {
        let data_dir = tempfile::tempdir()?;
        let log_path = data_dir.path().join("broker.log");
        let mut broker = TestBroker {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            log_path,
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        broker.spawn()?;
        Ok(broker)
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = spate_bin();
        if !bin.exists() {
            bail!(
                "spate binary not found at {} (build it with cargo build -p spate-cli, or set SPATE_BIN)",
                bin.display()
            );
        }
        for _attempt in 0..5 {
            let port = if self.addr.port() == 0 { free_port()? } else { self.addr.port() };
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path)?;
            let child = Command::new(&bin)
                .arg("broker")
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--data-dir")
                .arg(self.data_dir.path().join("data"))
                .args(&self.extra_args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawning {}", bin.display()))?;
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    self.addr = addr;
                    return Ok(());
                }
                if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    // Most likely the port was taken between choosing and binding: try another.
                    self.child = None;
                    if self.addr.port() != 0 {
                        bail!("broker exited with {status}:\n{}", self.log());
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.child.is_some() {
                bail!("broker did not start listening on {addr} within 20 s:\n{}", self.log());
            }
        }
        bail!("could not start a broker:\n{}", self.log())
    }

    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `kill -9`, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts on the same port and data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// SIGTERM and wait (a clean shutdown), then SIGKILL if it lingers.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads `count` records from the beginning of every partition of `topic`, failing if they do
/// not arrive within `timeout` or if more than `count` are there.
pub async fn consume_from_beginning(
    bootstrap: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<spate_client::ConsumerRecord>> {
    use spate_client::{AutoOffsetReset, Consumer, ConsumerConfig, TopicPartition};
    let consumer = Consumer::new(ConsumerConfig {
        bootstrap_servers: vec![bootstrap.to_string()],
        auto_offset_reset: AutoOffsetReset::Earliest,
        fetch_max_wait_ms: 100,
        ..ConsumerConfig::default()
    })
    .await?;
    let metadata = consumer.cluster().topic(topic).await?;
    let partitions = metadata.partitions.iter().map(|p| TopicPartition::new(topic, p.partition)).collect();
    consumer.assign(partitions).await?;
    consumer.seek_to_beginning(&[]).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut records = Vec::with_capacity(count);
    while records.len() < count {
        if tokio::time::Instant::now() > deadline {
            bail!("only {} of {count} records of {topic} arrived within {timeout:?}", records.len());
        }
        records.extend(consumer.poll(Duration::from_millis(200)).await?);
    }
    // Anything beyond `count` would be a duplicate: give it a moment to show up.
    let extra = consumer.poll(Duration::from_millis(300)).await?;
    if records.len() > count || !extra.is_empty() {
        bail!("{topic} holds more than the {count} records expected ({} extra)", records.len() + extra.len() - count);
    }
    Ok(records)
}

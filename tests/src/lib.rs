//! Helpers for end-to-end tests: a real `spate broker` process on a loopback port chosen at run
//! time, with a temporary data directory, stopped (and killed if need be) when dropped.

use std::collections::BTreeMap;
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
            signal(c.id(), "TERM");
            reap(&mut c, Instant::now() + Duration::from_secs(10));
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

/// Runs `spate ARGS --bootstrap-server <broker>` with no stdin and returns what it did.
pub fn spate(broker: &TestBroker, args: &[&str]) -> std::process::Output {
    Command::new(spate_bin())
        .args(args)
        .arg("--bootstrap-server")
        .arg(broker.bootstrap())
        .stdin(Stdio::null())
        .output()
        .expect("spate runs")
}

/// Runs a `spate` command that must succeed and returns its stdout.
pub fn spate_ok(broker: &TestBroker, args: &[&str]) -> String {
    let output = spate(broker, args);
    assert!(
        output.status.success(),
        "spate {args:?} failed with {}:\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// Creates `topic` (one partition), produces `count` records over new connections and reads
/// them back in order: the broker still serves (after bad input, stalled clients, ...).
pub async fn assert_serves(broker: &TestBroker, topic: &str, count: usize) {
    use spate_client::admin::{AdminConfig, NewTopic};
    use spate_client::{Admin, Producer, ProducerConfig, ProducerRecord};
    let admin = Admin::new(AdminConfig { bootstrap_servers: vec![broker.bootstrap()], ..AdminConfig::default() })
        .await
        .unwrap();
    admin.create_topic(NewTopic::new(topic, 1, 1)).await.unwrap();
    let producer =
        Producer::new(ProducerConfig { bootstrap_servers: vec![broker.bootstrap()], ..ProducerConfig::default() })
            .await
            .unwrap();
    let mut acks = Vec::new();
    for i in 0..count {
        acks.push(producer.send(topic, ProducerRecord::new(format!("{topic}-{i}"))).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
    producer.close().await.unwrap();
    let records = consume_from_beginning(&broker.bootstrap(), topic, count, Duration::from_secs(20)).await.unwrap();
    let values: Vec<String> =
        records.iter().map(|r| String::from_utf8(r.value.clone().unwrap_or_default().to_vec()).unwrap()).collect();
    assert_eq!(values, (0..count).map(|i| format!("{topic}-{i}")).collect::<Vec<_>>());
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

/// Broker settings that make failure detection and recovery fast enough for cluster tests.
pub const FAST_CLUSTER_SETTINGS: &[(&str, &str)] = &[
    ("broker.session.timeout.ms", "2000"),
    ("broker.heartbeat.interval.ms", "200"),
    ("replica.lag.time.max.ms", "2000"),
    ("min.insync.replicas", "2"),
    ("default.replication.factor", "3"),
    ("offsets.topic.replication.factor", "3"),
    ("group.initial.rebalance.delay.ms", "0"),
];

/// `count` distinct loopback ports that were free a moment ago (held open together, so distinct).
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Sends a signal with the `kill` command (the crate forbids `unsafe`, so no libc::kill).
fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
}

/// Waits for a signalled process until `deadline`, then SIGKILLs it.
fn reap(c: &mut Child, deadline: Instant) {
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// One broker of a [`TestCluster`].
pub struct ClusterNode {
    pub node_id: i32,
    pub kafka_addr: SocketAddr,
    pub controller_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// Killed or stopped by the test; any other exit is reported as a crash by `problems`.
    stopped_on_purpose: bool,
}

impl ClusterNode {
    pub fn bootstrap(&self) -> String {
        self.kafka_addr.to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn is_alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            self.stopped_on_purpose = true;
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    fn send_term(&mut self) {
        if let Some(c) = &self.child {
            self.stopped_on_purpose = true;
            if self.paused {
                signal(c.id(), "CONT");
                self.paused = false;
            }
            signal(c.id(), "TERM");
        }
    }

    /// Waits for a SIGTERM'd broker until `deadline`, then SIGKILLs it.
    fn reap(&mut self, deadline: Instant) {
        if let Some(mut c) = self.child.take() {
            reap(&mut c, deadline);
        }
    }
}

/// What one broker answered to Metadata: the cluster as that broker sees it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub node_id: i32,
    pub brokers: Vec<i32>,
    pub controller_id: i32,
    /// (topic, partition) -> its state; only partitions without an error.
    pub partitions: BTreeMap<(String, i32), PartitionView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline_replicas: Vec<i32>,
}

/// N `spate broker` processes (ids 1..=N) forming one controller quorum in combined mode, on
/// loopback ports chosen at run time, each with its own data directory. Dropping it stops every
/// broker (resuming paused ones first).
pub struct TestCluster {
    pub nodes: Vec<ClusterNode>,
    root: tempfile::TempDir,
    extra_args: Vec<String>,
    quorum: String,
}

impl TestCluster {
    /// Starts `size` brokers with [`FAST_CLUSTER_SETTINGS`] plus `extra_args` (e.g. `--set k=v`) and
    /// waits until they form a cluster. Fails within seconds when a broker exits while starting.
    pub async fn start(size: usize, extra_args: &[&str]) -> Result<TestCluster> {
        let root = tempfile::tempdir()?;
        let mut args: Vec<String> = Vec::new();
        for (k, v) in FAST_CLUSTER_SETTINGS {
            args.push("--set".into());
            args.push(format!("{k}={v}"));
        }
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let mut cluster = TestCluster { nodes: Vec::new(), root, extra_args: args, quorum: String::new() };
        let mut last = String::new();
        for _attempt in 0..3 {
            let ports = free_ports(2 * size)?;
            cluster.nodes = (0..size)
                .map(|i| {
                    let dir = cluster.root.path().join(format!("node{}", i + 1));
                    ClusterNode {
                        node_id: i as i32 + 1,
                        kafka_addr: SocketAddr::from(([127, 0, 0, 1], ports[2 * i])),
                        controller_addr: SocketAddr::from(([127, 0, 0, 1], ports[2 * i + 1])),
                        data_dir: dir.join("data"),
                        log_path: dir.join("broker.log"),
                        child: None,
                        paused: false,
                        stopped_on_purpose: false,
                    }
                })
                .collect();
            cluster.quorum = cluster
                .nodes
                .iter()
                .map(|n| format!("{}@{}", n.node_id, n.controller_addr))
                .collect::<Vec<_>>()
                .join(",");
            for i in 0..size {
                cluster.spawn(i)?;
            }
            match cluster.wait_listening(&(0..size).collect::<Vec<_>>()) {
                Ok(true) => {
                    cluster.wait_ready(Duration::from_secs(20)).await?;
                    return Ok(cluster);
                }
                Ok(false) => {
                    last = cluster.logs();
                    for n in &mut cluster.nodes {
                        n.kill9();
                        let _ = std::fs::remove_dir_all(&n.data_dir);
                    }
                }
                Err(e) => {
                    for n in &mut cluster.nodes {
                        n.kill9();
                    }
                    return Err(e);
                }
            }
        }
        bail!("cluster did not start after 3 attempts (ports taken):\n{last}")
    }

    fn spawn(&mut self, index: usize) -> Result<()> {
        let bin = spate_bin();
        if !bin.exists() {
            bail!(
                "spate binary not found at {} (build it with cargo build -p spate-cli, or set SPATE_BIN)",
                bin.display()
            );
        }
        let quorum = self.quorum.clone();
        let extra = self.extra_args.clone();
        let n = &mut self.nodes[index];
        std::fs::create_dir_all(&n.data_dir)?;
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&n.log_path)?;
        use std::io::Write;
        writeln!(log, "\n=== start node {} (quorum {quorum})", n.node_id)?;
        let child = Command::new(&bin)
            .arg("broker")
            .arg("--node-id")
            .arg(n.node_id.to_string())
            .arg("--listen")
            .arg(n.kafka_addr.to_string())
            .arg("--controller-quorum")
            .arg(&quorum)
            .arg("--data-dir")
            .arg(&n.data_dir)
            .args(&extra)
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        n.child = Some(child);
        n.paused = false;
        n.stopped_on_purpose = false;
        Ok(())
    }

    /// Ok(true) once the nodes accept connections; Ok(false) when one exited after losing its port
    /// (start over on other ports); Err for any other exit or after 20 s.
    fn wait_listening(&mut self, indexes: &[usize]) -> Result<bool> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut pending: Vec<usize> = indexes.to_vec();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for &i in &pending {
                let exited = self.nodes[i].child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                if let Some(status) = exited {
                    let log = self.nodes[i].log();
                    let last_start = log.rsplit("=== start").next().unwrap_or_default().to_lowercase();
                    if last_start.contains("in use") {
                        return Ok(false);
                    }
                    bail!("broker {} exited with {status} while starting:\n{}", self.nodes[i].node_id, self.logs());
                }
                if TcpStream::connect_timeout(&self.nodes[i].kafka_addr, Duration::from_millis(200)).is_err() {
                    still.push(i);
                }
            }
            pending = still;
            if !pending.is_empty() {
                if Instant::now() > deadline {
                    let ids: Vec<i32> = pending.iter().map(|&i| self.nodes[i].node_id).collect();
                    bail!("brokers {ids:?} did not accept connections within 20 s:\n{}", self.logs());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(true)
    }

    fn index(&self, node_id: i32) -> usize {
        self.nodes.iter().position(|n| n.node_id == node_id).unwrap_or_else(|| panic!("no broker {node_id}"))
    }

    pub fn node(&self, node_id: i32) -> &ClusterNode {
        &self.nodes[self.index(node_id)]
    }

    /// Every broker, comma-separated (`bootstrap.servers`).
    pub fn bootstrap(&self) -> String {
        self.bootstrap_servers().join(",")
    }

    pub fn bootstrap_servers(&self) -> Vec<String> {
        self.nodes.iter().map(ClusterNode::bootstrap).collect()
    }

    /// Ids of the brokers that run and are not paused.
    pub fn up_ids(&mut self) -> Vec<i32> {
        let mut ids = Vec::new();
        for n in &mut self.nodes {
            if !n.paused && n.is_alive() {
                ids.push(n.node_id);
            }
        }
        ids
    }

    /// `kill -9`, as a crash.
    pub fn kill9(&mut self, node_id: i32) {
        let i = self.index(node_id);
        self.nodes[i].kill9();
    }

    /// SIGTERM, SIGKILL after 10 s.
    pub fn stop(&mut self, node_id: i32) {
        let i = self.index(node_id);
        self.nodes[i].send_term();
        self.nodes[i].reap(Instant::now() + Duration::from_secs(10));
    }

    /// Starts a broker again on its data directory and ports (stopping it first if it runs) and waits
    /// until it accepts connections.
    pub fn restart(&mut self, node_id: i32) -> Result<()> {
        self.stop(node_id);
        let i = self.index(node_id);
        self.spawn(i)?;
        if !self.wait_listening(&[i])? {
            bail!("broker {node_id} could not bind its ports again:\n{}", self.logs());
        }
        Ok(())
    }

    /// SIGSTOP: frozen with its sockets open.
    pub fn pause(&mut self, node_id: i32) {
        let i = self.index(node_id);
        if let Some(c) = &self.nodes[i].child {
            signal(c.id(), "STOP");
            self.nodes[i].paused = true;
        }
    }

    pub fn resume(&mut self, node_id: i32) {
        let i = self.index(node_id);
        if let Some(c) = &self.nodes[i].child {
            signal(c.id(), "CONT");
        }
        self.nodes[i].paused = false;
    }

    /// The last 6000 characters of every broker's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log = n.log();
            let mut start = log.len().saturating_sub(6000);
            while !log.is_char_boundary(start) {
                start += 1;
            }
            let tail = &log[start..];
            out.push_str(&format!("--- broker {} log ({}) ---\n{tail}\n", n.node_id, n.log_path.display()));
        }
        out
    }

    /// Brokers that exited without being killed or stopped by the test.
    pub fn crashed(&mut self) -> Vec<i32> {
        let mut out = Vec::new();
        for n in &mut self.nodes {
            if !n.stopped_on_purpose && n.child.is_some() && !n.is_alive() {
                out.push(n.node_id);
            }
        }
        out
    }

    /// Metadata from broker `node_id` itself (`None` topics = all).
    pub async fn view(&self, node_id: i32, topics: Option<&[&str]>) -> Result<NodeView> {
        use spate_client::connection::{Connection, ConnectionConfig};
        use spate_client::protocol::messages::metadata_request::MetadataRequestTopic;
        use spate_client::protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
        use spate_client::protocol::{str_bytes, ApiKey};
        let config = ConnectionConfig {
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            ..ConnectionConfig::default()
        };
        let conn = Connection::connect(&self.node(node_id).bootstrap(), &config).await?;
        let request = MetadataRequest::default().with_topics(topics.map(|names| {
            names.iter().map(|n| MetadataRequestTopic::default().with_name(Some(TopicName(str_bytes(*n))))).collect()
        }));
        let (_, response): (i16, MetadataResponse) = conn.call(ApiKey::Metadata, &request).await?;
        let mut partitions = BTreeMap::new();
        for t in response.topics {
            let (Some(name), 0) = (t.name, t.error_code) else { continue };
            for p in t.partitions.into_iter().filter(|p| p.error_code == 0) {
                let ids = |v: Vec<spate_client::protocol::messages::BrokerId>| v.into_iter().map(|b| b.0).collect();
                partitions.insert(
                    (name.0.to_string(), p.partition_index),
                    PartitionView {
                        leader: p.leader_id.0,
                        leader_epoch: p.leader_epoch,
                        replicas: ids(p.replica_nodes),
                        isr: ids(p.isr_nodes),
                        offline_replicas: ids(p.offline_replicas),
                    },
                );
            }
        }
        Ok(NodeView {
            node_id,
            brokers: response.brokers.iter().map(|b| b.node_id.0).collect(),
            controller_id: response.controller_id.0,
            partitions,
        })
    }

    /// Views of the brokers that are up and answer.
    pub async fn views(&mut self, topics: Option<&[&str]>) -> Vec<NodeView> {
        let mut out = Vec::new();
        for id in self.up_ids() {
            if let Ok(v) = self.view(id, topics).await {
                out.push(v);
            }
        }
        out
    }

    /// Waits until every up broker answers Metadata listing every up broker and an up controller.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let up = self.up_ids();
            let views = self.views(Some(&[])).await;
            let ready = views.len() == up.len()
                && views.iter().all(|v| up.iter().all(|id| v.brokers.contains(id)) && up.contains(&v.controller_id));
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("brokers {up:?} did not form a cluster within {timeout:?}; views {views:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The newest view of a partition among the up brokers (highest leader epoch; the leader's own
    /// among equals).
    pub async fn partition(&mut self, topic: &str, partition: i32) -> Option<PartitionView> {
        let mut best: Option<((i32, bool), PartitionView)> = None;
        for v in self.views(Some(&[topic])).await {
            if let Some(p) = v.partitions.get(&(topic.to_string(), partition)) {
                let key = (p.leader_epoch, p.leader == v.node_id);
                if best.as_ref().is_none_or(|(k, _)| key > *k) {
                    best = Some((key, p.clone()));
                }
            }
        }
        best.map(|(_, p)| p)
    }

    /// Waits for a leader that is up and not in `exclude`.
    pub async fn wait_leader(
        &mut self,
        topic: &str,
        partition: i32,
        exclude: &[i32],
        timeout: Duration,
    ) -> Result<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let up = self.up_ids();
            let p = self.partition(topic, partition).await;
            if let Some(p) = &p {
                if up.contains(&p.leader) && !exclude.contains(&p.leader) {
                    return Ok(p.leader);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no leader of {topic}/{partition} outside {exclude:?} within {timeout:?}: last {p:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the partition's ISR has `size` members; returns them sorted.
    pub async fn wait_isr(&mut self, topic: &str, partition: i32, size: usize, timeout: Duration) -> Result<Vec<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            let p = self.partition(topic, partition).await;
            if let Some(p) = &p {
                if p.isr.len() == size {
                    let mut isr = p.isr.clone();
                    isr.sort_unstable();
                    return Ok(isr);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "ISR of {topic}/{partition} did not reach {size} within {timeout:?}: last {p:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.send_term();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for n in &mut self.nodes {
            n.reap(deadline);
        }
    }
}

//! spate-connect's runtime end to end against a real broker process, with test connectors:
//! source offsets stored only after acknowledgement and resumed after a restart, tasks dealt
//! between two workers and moved when one leaves, pause/resume, a failing sink record routed
//! to the dead-letter topic, sink offsets committed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use spate_client::TopicPartition;
use spate_connect::config::{ConfigDef, ConfigType, Importance, Props};
use spate_connect::connector::{
    Connector, ConnectorType, FailedRecord, SinkTask, SinkTaskContext, SourceBatch, SourceTask, SourceTaskContext,
};
use spate_connect::error::{ConnectError, Result};
use spate_connect::record::{ConnectRecord, Value};
use spate_connect::registry::Registry;
use spate_connect::rest::Herder;
use spate_connect::runtime::herder::WorkerHerder;
use spate_connect::runtime::worker::{Worker, WorkerConfig};
use spate_e2e::{consume_from_beginning, TestBroker};

/// Emits `count` records per task, `batch` at a time; offset partition `{"task": id}`.
struct GenSource;

impl Connector for GenSource {
    fn class(&self) -> &'static str {
        "TestGenSource"
    }
    fn kind(&self) -> ConnectorType {
        ConnectorType::Source
    }
    fn config_def(&self) -> ConfigDef {
        ConfigDef::new().define("topic", ConfigType::String, None, Importance::High, "topic").define(
            "count",
            ConfigType::Int,
            Some("100"),
            Importance::High,
            "records per task",
        )
    }
    fn task_configs(&self, config: &Props, max_tasks: usize) -> Result<Vec<Props>> {
        Ok((0..max_tasks)
            .map(|i| {
                let mut t = config.clone();
                t.insert("task.index".into(), i.to_string());
                t
            })
            .collect())
    }
    fn source_task(&self) -> Result<Box<dyn SourceTask>> {
        Ok(Box::new(GenTask::default()))
    }
}

#[derive(Default)]
struct GenTask {
    topic: String,
    index: u64,
    next: u64,
    count: u64,
}

impl SourceTask for GenTask {
    fn start(&mut self, config: &Props, context: &SourceTaskContext) -> Result<()> {
        self.topic = config["topic"].clone();
        self.index = config["task.index"].parse().unwrap();
        self.count = config["count"].parse().unwrap();
        self.next = context
            .offset(&json!({"task": self.index}))
            .and_then(|o| o.get("next").and_then(|n| n.as_u64()))
            .unwrap_or(0);
        Ok(())
    }
    fn poll(&mut self, timeout: Duration) -> Result<Option<SourceBatch>> {
        if self.next >= self.count {
            std::thread::sleep(timeout);
            return Ok(None);
        }
        let end = (self.next + 50).min(self.count);
        let topic: Arc<str> = Arc::from(self.topic.as_str());
        let records = (self.next..end)
            .map(|i| ConnectRecord::new(topic.clone(), Some(Value::from_string(format!("t{}-{i}", self.index)))))
            .collect();
        self.next = end;
        Ok(Some(SourceBatch {
            records,
            offsets: vec![(json!({"task": self.index}), json!({"next": end}))],
            failed: Vec::new(),
        }))
    }
}

/// Collects values in a shared list; a value "bad" fails that record.
struct CollectSink {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Connector for CollectSink {
    fn class(&self) -> &'static str {
        "TestCollectSink"
    }
    fn kind(&self) -> ConnectorType {
        ConnectorType::Sink
    }
    fn config_def(&self) -> ConfigDef {
        ConfigDef::new()
    }
    fn task_configs(&self, config: &Props, max_tasks: usize) -> Result<Vec<Props>> {
        Ok(vec![config.clone(); max_tasks])
    }
    fn sink_task(&self) -> Result<Box<dyn SinkTask>> {
        Ok(Box::new(CollectTask { seen: self.seen.clone(), seek_to: None }))
    }
}

struct CollectTask {
    seen: Arc<Mutex<Vec<String>>>,
    /// `test.seek.to`: where `open` says every partition starts, as an exactly-once sink that
    /// stores its offsets with the data does.
    seek_to: Option<i64>,
}

impl SinkTask for CollectTask {
    fn start(&mut self, config: &Props, _context: &SinkTaskContext) -> Result<()> {
        self.seek_to = config.get("test.seek.to").map(|s| s.parse().unwrap());
        Ok(())
    }
    fn open(&mut self, partitions: &[TopicPartition]) -> Result<BTreeMap<TopicPartition, i64>> {
        Ok(self.seek_to.map(|o| partitions.iter().map(|tp| (tp.clone(), o)).collect()).unwrap_or_default())
    }
    fn put(&mut self, records: Vec<ConnectRecord>) -> Result<Vec<FailedRecord>> {
        let mut failed = Vec::new();
        for r in records {
            let v = r.value.as_ref().and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            if v == "bad" {
                failed.push(FailedRecord {
                    record: r,
                    error: Arc::new(ConnectError::external("TestCollectSink", "writing", "refused")),
                    stage: "TASK_PUT",
                    class_name: "TestCollectSink".into(),
                });
            } else {
                self.seen.lock().unwrap().push(v);
            }
        }
        Ok(failed)
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

fn registry(seen: Arc<Mutex<Vec<String>>>) -> Registry {
    Registry::new(vec![Arc::new(GenSource), Arc::new(CollectSink { seen })])
}

async fn worker(broker: &TestBroker, seen: Arc<Mutex<Vec<String>>>, url: &str) -> Worker {
    let mut config = WorkerConfig::new(broker.bootstrap());
    config.offset_flush_interval_ms = 200;
    config.heartbeat_interval_ms = 500;
    config.session_timeout_ms = 6_000;
    Worker::start(config, registry(seen), url.to_owned()).await.unwrap()
}

fn props(pairs: &[(&str, &str)]) -> Props {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Produces `values` to `topic` and waits for every acknowledgement.
async fn produce_values(broker: &TestBroker, topic: &str, values: impl Iterator<Item = String>) {
    let producer = spate_client::Producer::new(spate_client::ProducerConfig {
        bootstrap_servers: vec![broker.bootstrap()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut acks = Vec::new();
    for v in values {
        acks.push(producer.send(topic, spate_client::ProducerRecord::new(v)).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
}

async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn task_states(h: &WorkerHerder, name: &str) -> Vec<(String, String)> {
    match h.connector_status(name).await {
        Ok(s) => s.tasks.into_iter().map(|t| (t.state, t.worker_id)).collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_offsets_survive_restarts_and_tasks_move_between_workers() {
    let broker = TestBroker::start(&["--set", "group.initial.rebalance.delay.ms=0"]).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let a = worker(&broker, seen.clone(), "http://127.0.0.1:18083").await;
    let ha = WorkerHerder::new(a.shared());
    let config = props(&[("connector.class", "TestGenSource"), ("tasks.max", "2"), ("topic", "gen"), ("count", "500")]);
    let created = wait_for("the leader to accept writes", Duration::from_secs(20), async || {
        ha.put_connector_config("gen", config.clone(), false).await.ok()
    })
    .await;
    assert!(created.0);
    // Creating it again without replace is a conflict.
    assert!(ha.put_connector_config("gen", config.clone(), false).await.is_err());
    wait_for("the tasks to create the topic", Duration::from_secs(20), async || {
        ha.connector_topics("gen").await.ok().filter(|t| !t.is_empty())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = consume_from_beginning(&broker.bootstrap(), "gen", 1000, Duration::from_secs(30)).await.unwrap();
    let values: BTreeSet<String> =
        records.iter().map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()).collect();
    assert_eq!(values.len(), 1000, "every record once");
    let states = wait_for("both tasks running", Duration::from_secs(20), async || {
        let s = task_states(&ha, "gen").await;
        (s.len() == 2 && s.iter().all(|(st, _)| st == "RUNNING")).then_some(s)
    })
    .await;
    assert!(states.iter().all(|(_, w)| w == "127.0.0.1:18083"));
    // Offsets reach the offsets topic once acknowledged.
    let offsets = wait_for("stored offsets", Duration::from_secs(10), async || {
        let o = ha.connector_offsets("gen").await.ok()?;
        let all_done = o.offsets.len() == 2 && o.offsets.iter().all(|p| p.offset.as_ref().unwrap()["next"] == 500);
        all_done.then_some(o)
    })
    .await;
    assert_eq!(offsets.offsets.len(), 2);

    // A second worker takes half of the tasks.
    let b = worker(&broker, seen.clone(), "http://127.0.0.1:18084").await;
    let hb = WorkerHerder::new(b.shared());
    wait_for("tasks spread over both workers", Duration::from_secs(30), async || {
        let s = task_states(&hb, "gen").await;
        let workers: BTreeSet<&String> = s.iter().map(|(_, w)| w).collect();
        (s.len() == 2 && s.iter().all(|(st, _)| st == "RUNNING") && workers.len() == 2).then_some(())
    })
    .await;
    // Pause and resume from the follower (any worker writes target states).
    hb.pause_connector("gen").await.unwrap();
    wait_for("paused", Duration::from_secs(10), async || {
        let s = task_states(&ha, "gen").await;
        s.iter().all(|(st, _)| st == "PAUSED").then_some(())
    })
    .await;
    hb.resume_connector("gen").await.unwrap();
    wait_for("resumed", Duration::from_secs(10), async || {
        let s = task_states(&ha, "gen").await;
        s.iter().all(|(st, _)| st == "RUNNING").then_some(())
    })
    .await;

    // The first worker leaves: its task moves to the survivor. Bump the count so the moved
    // task has work to do, resuming from the stored offsets.
    a.shutdown().await;
    let more = props(&[("connector.class", "TestGenSource"), ("tasks.max", "2"), ("topic", "gen"), ("count", "700")]);
    wait_for("the survivor to lead", Duration::from_secs(30), async || {
        hb.put_connector_config("gen", more.clone(), true).await.ok()
    })
    .await;
    let records = consume_from_beginning(&broker.bootstrap(), "gen", 1400, Duration::from_secs(40)).await.unwrap();
    let values: BTreeSet<String> =
        records.iter().map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()).collect();
    assert_eq!(values.len(), 1400, "resumed from stored offsets: nothing repeated, nothing lost");
    wait_for("both tasks on the survivor", Duration::from_secs(20), async || {
        let s = task_states(&hb, "gen").await;
        (s.len() == 2 && s.iter().all(|(st, w)| st == "RUNNING" && w == "127.0.0.1:18084")).then_some(())
    })
    .await;
    // Stop, then alter offsets (KIP-875) and delete.
    assert!(hb.reset_connector_offsets("gen").await.is_err(), "offsets change only when STOPPED");
    hb.stop_connector("gen").await.unwrap();
    // Refused (409) until the tasks have actually stopped.
    wait_for("reset once the tasks stopped", Duration::from_secs(20), async || {
        hb.reset_connector_offsets("gen").await.ok()
    })
    .await;
    assert!(hb.task_configs("gen").await.unwrap().is_empty(), "a stopped connector has no tasks");
    assert!(hb.connector_offsets("gen").await.unwrap().offsets.is_empty());
    hb.delete_connector("gen").await.unwrap();
    assert!(hb.connector_info("gen").await.is_err());
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_commits_and_dead_letters_failed_records() {
    let broker = TestBroker::start(&["--set", "group.initial.rebalance.delay.ms=0"]).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    produce_values(&broker, "in", (0..200).map(|i| if i == 50 { "bad".to_owned() } else { format!("v{i}") })).await;
    let w = worker(&broker, seen.clone(), "http://127.0.0.1:18085").await;
    let h = WorkerHerder::new(w.shared());
    let config = props(&[
        ("connector.class", "TestCollectSink"),
        ("topics", "in"),
        ("errors.tolerance", "all"),
        ("errors.deadletterqueue.topic.name", "dlq"),
        ("errors.deadletterqueue.context.headers.enable", "true"),
    ]);
    wait_for("create", Duration::from_secs(20), async || {
        h.put_connector_config("sink", config.clone(), false).await.ok()
    })
    .await;
    wait_for("199 records in the sink", Duration::from_secs(30), async || {
        (seen.lock().unwrap().len() == 199).then_some(())
    })
    .await;
    let dlq = consume_from_beginning(&broker.bootstrap(), "dlq", 1, Duration::from_secs(20)).await.unwrap();
    assert_eq!(dlq[0].value.as_deref(), Some(&b"bad"[..]));
    let headers: BTreeMap<&str, String> = dlq[0]
        .headers
        .iter()
        .map(|h| (h.key.as_str(), String::from_utf8_lossy(h.value.as_deref().unwrap_or_default()).into_owned()))
        .collect();
    assert_eq!(headers["__connect.errors.topic"], "in");
    assert_eq!(headers["__connect.errors.offset"], "50");
    assert_eq!(headers["__connect.errors.stage"], "TASK_PUT");
    let offsets = wait_for("committed sink offsets", Duration::from_secs(10), async || {
        let o = h.connector_offsets("sink").await.ok()?;
        (o.offsets.first()?.offset.as_ref()?["kafka_offset"] == 200).then_some(o)
    })
    .await;
    assert_eq!(offsets.offsets[0].partition, json!({"kafka_topic": "in", "kafka_partition": 0}));
    w.shutdown().await;
}

/// A sink that keeps its own offsets says where to start in `open`; `put` never sees a record
/// before that, not even from the poll that delivered the assignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_open_offsets_apply_before_any_put() {
    let broker = TestBroker::start(&["--set", "group.initial.rebalance.delay.ms=0"]).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    produce_values(&broker, "in", (0..200).map(|i| format!("v{i}"))).await;
    let w = worker(&broker, seen.clone(), "http://127.0.0.1:18086").await;
    let h = WorkerHerder::new(w.shared());
    let config = props(&[("connector.class", "TestCollectSink"), ("topics", "in"), ("test.seek.to", "150")]);
    wait_for("create", Duration::from_secs(20), async || {
        h.put_connector_config("sink", config.clone(), false).await.ok()
    })
    .await;
    wait_for("50 records in the sink", Duration::from_secs(30), async || {
        (seen.lock().unwrap().len() >= 50).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = seen.lock().unwrap().clone();
    let want: Vec<String> = (150..200).map(|i| format!("v{i}")).collect();
    assert_eq!(got, want);
    w.shutdown().await;
}

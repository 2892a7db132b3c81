//! The connector API. A [`Connector`] is a plugin: it describes its config, checks it, and
//! splits it into task configs. Tasks do the work on a thread of their own (blocking calls are
//! fine, as in Kafka Connect's `WorkerTask`): a [`SourceTask`] hands out [`SourceBatch`]es, a
//! [`SinkTask`] receives record batches and says what is durable. Tasks never see Kafka; the
//! runtime produces, consumes, stores offsets and routes failures.
//!
//! **Delivery contract (at least once).** A source batch's `offsets` are stored in the offsets
//! topic only after every record of that batch and of every earlier batch was acknowledged by
//! the broker with `acks=all` (or routed to the dead-letter topic and acknowledged there). A
//! sink task's consumed offsets are committed only as far as [`SinkTask::pre_commit`] says the
//! data is durable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use spate_client::TopicPartition;

use crate::config::{ConfigDef, Props};
use crate::error::{ConnectError, Result};
use crate::record::ConnectRecord;

/// Source or sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorType {
    Source,
    Sink,
}

impl ConnectorType {
    /// The lower-case name the REST API uses.
    pub fn name(self) -> &'static str {
        match self {
            ConnectorType::Source => "source",
            ConnectorType::Sink => "sink",
        }
    }
}

/// A connector plugin. One value per class, shared by all connectors of that class.
pub trait Connector: Send + Sync {
    /// The class name users put in `connector.class`, e.g. `FileStreamSource`.
    fn class(&self) -> &'static str;

    /// Other accepted names, e.g. Kafka's `org.apache.kafka.connect.file.FileStreamSourceConnector`.
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }

    /// Source or sink.
    fn kind(&self) -> ConnectorType;

    /// The plugin version the API reports.
    fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    /// The connector-specific keys (the runtime adds its common ones: `name`,
    /// `connector.class`, `tasks.max`, converters, transforms, errors.*).
    fn config_def(&self) -> ConfigDef;

    /// Cross-key checks beyond [`ConfigDef::parse`]: `(key, error)` pairs.
    fn validate(&self, _config: &Props) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Splits the connector config into at most `max_tasks` task configs (at least one).
    fn task_configs(&self, config: &Props, max_tasks: usize) -> Result<Vec<Props>>;

    /// A new source task (source connectors).
    fn source_task(&self) -> Result<Box<dyn SourceTask>> {
        Err(ConnectError::Internal(format!("{} is not a source connector", self.class())))
    }

    /// A new sink task (sink connectors).
    fn sink_task(&self) -> Result<Box<dyn SinkTask>> {
        Err(ConnectError::Internal(format!("{} is not a sink connector", self.class())))
    }
}

/// A record a task (or a converter or transform on its behalf) could not handle; the runtime
/// routes it by `errors.tolerance` (fail the task, or log and send it to the dead-letter topic).
#[derive(Debug, Clone)]
pub struct FailedRecord {
    /// The record as it was when it failed (for a sink, as read from Kafka).
    pub record: ConnectRecord,
    /// What failed.
    pub error: Arc<ConnectError>,
    /// The stage, as Kafka's `__connect.errors.stage` header: `TASK_POLL`, `TASK_PUT`,
    /// `KEY_CONVERTER`, `VALUE_CONVERTER`, `HEADER_CONVERTER`, `TRANSFORMATION`, `KAFKA_PRODUCE`,
    /// `KAFKA_CONSUME`.
    pub stage: &'static str,
    /// The class that failed (e.g. the transform's type), for `__connect.errors.class.name`.
    pub class_name: String,
}

/// What a source task hands out per poll.
#[derive(Debug, Clone, Default)]
pub struct SourceBatch {
    pub records: Vec<ConnectRecord>,
    /// `(source partition, source offset)` pairs, both JSON objects (Kafka Connect's maps):
    /// where the task stands once every record of this batch is delivered. One entry per
    /// source partition that moved.
    pub offsets: Vec<(Json, Json)>,
    /// Records the task itself could not turn into records (e.g. a line above
    /// `max.line.bytes` when set to go to the dead-letter topic). They count as part of the
    /// batch for offset purposes.
    pub failed: Vec<FailedRecord>,
}

/// Read access to committed source offsets, given to a source task at start.
pub trait OffsetReader: Send + Sync {
    /// Every `(partition, offset)` stored for this connector.
    fn offsets(&self) -> Vec<(Json, Json)>;
}

/// What a source task gets at start.
#[derive(Clone)]
pub struct SourceTaskContext {
    pub connector: String,
    pub task_id: u32,
    pub offsets: Arc<dyn OffsetReader>,
}

impl SourceTaskContext {
    /// The stored offset of one source partition.
    pub fn offset(&self, partition: &Json) -> Option<Json> {
        self.offsets.offsets().into_iter().find(|(p, _)| p == partition).map(|(_, o)| o)
    }
}

/// A running source task. Called from one thread; blocking is fine.
pub trait SourceTask: Send {
    /// Starts with the task config (as produced by [`Connector::task_configs`]).
    fn start(&mut self, config: &Props, context: &SourceTaskContext) -> Result<()>;

    /// The next batch, or `None` when nothing arrived within `timeout`. An `Err` fails the
    /// task (status FAILED with the error as trace); per-record problems go in
    /// [`SourceBatch::failed`] instead.
    fn poll(&mut self, timeout: Duration) -> Result<Option<SourceBatch>>;

    /// These offsets are now stored (for sources that acknowledge upstream, e.g. a
    /// replication slot). Default: nothing to do.
    fn commit(&mut self, _offsets: &[(Json, Json)]) -> Result<()> {
        Ok(())
    }

    /// Stops; release files and connections. Called once, also after a failure.
    fn stop(&mut self) {}
}

/// What a sink task gets at start.
#[derive(Debug, Clone)]
pub struct SinkTaskContext {
    pub connector: String,
    pub task_id: u32,
}

/// A running sink task. Called from one thread; blocking is fine.
pub trait SinkTask: Send {
    /// Starts with the task config.
    fn start(&mut self, config: &Props, context: &SinkTaskContext) -> Result<()>;

    /// Partitions assigned to this task. Returns offsets to start from where the task keeps its
    /// own (exactly-once sinks that store offsets with the data); others return an empty map
    /// and the consumer group's committed offsets apply.
    fn open(&mut self, _partitions: &[TopicPartition]) -> Result<BTreeMap<TopicPartition, i64>> {
        Ok(BTreeMap::new())
    }

    /// Partitions taken away: flush or drop what is buffered for them.
    fn close(&mut self, _partitions: &[TopicPartition]) -> Result<()> {
        Ok(())
    }

    /// A batch of records, in offset order per partition. The task may buffer them. Records it
    /// cannot write (and only those) come back as failures; an `Err` fails the task.
    fn put(&mut self, records: Vec<ConnectRecord>) -> Result<Vec<FailedRecord>>;

    /// Makes everything `put` so far durable.
    fn flush(&mut self) -> Result<()>;

    /// `current` holds, per partition, the next offset after the last record `put`. Returns
    /// the offsets safe to commit. Default: flush, then everything put is safe.
    fn pre_commit(&mut self, current: &BTreeMap<TopicPartition, i64>) -> Result<BTreeMap<TopicPartition, i64>> {
        self.flush()?;
        Ok(current.clone())
    }

    /// Stops. Called once, also after a failure.
    fn stop(&mut self) {}
}

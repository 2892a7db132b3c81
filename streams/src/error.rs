//! The crate's one error type.

use thiserror::Error;

/// Errors of spate-streams. Each message says whose fault it is: the bytes of a record on a
/// topic (the producer's), the application's configuration (the caller's), or the local state
/// directory (the machine's disk, never the records: state is rebuilt from changelog topics).
#[derive(Debug, Error)]
pub enum StreamsError {
    /// A record's key or value does not decode with the configured serde: the producer of the
    /// topic wrote something else.
    #[error("cannot deserialize {what}: {reason} (the producer wrote bytes this serde does not read)")]
    Deserialize {
        /// What was being read, e.g. "i64" or "time-windowed key".
        what: &'static str,
        /// Why it failed.
        reason: String,
    },

    /// A window or join definition is invalid: the application's configuration is wrong.
    #[error("invalid {what}: {reason} (fix the application's window definition)")]
    InvalidWindow {
        /// Which definition, e.g. "TimeWindows".
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },

    /// A record's timestamp is outside what the window logic can place (negative, or so close
    /// to `i64::MAX` that its windows would overflow): the producer's, or the timestamp
    /// extractor's, bad timestamp.
    #[error("record timestamp {timestamp_ms} ms is out of range for {what} (the producer or the timestamp extractor gave it)")]
    InvalidTimestamp {
        /// The timestamp.
        timestamp_ms: i64,
        /// Which logic refused it.
        what: &'static str,
    },

    /// A suppression is defined wrongly (e.g. `until_window_closes` with an emit-early buffer):
    /// the application's configuration is wrong.
    #[error("invalid suppression: {reason} (fix the application's suppress definition)")]
    InvalidSuppression {
        /// Why it is invalid.
        reason: String,
    },

    /// A `shut_down_when_full` suppression buffer exceeded its limits (Kafka's "buffer exceeded
    /// its max capacity"): the application's buffer config is too small for its traffic.
    #[error(
        "suppression {name} buffer exceeded its max capacity: {records}/{max_records} records and \
         {bytes}/{max_bytes} bytes (the application's buffer config is too small: raise its limits \
         or use emit_early_when_full)"
    )]
    SuppressionBufferFull {
        /// The suppression node's name.
        name: String,
        /// Keys buffered.
        records: u64,
        /// The configured key limit.
        max_records: u64,
        /// Bytes buffered.
        bytes: u64,
        /// The configured byte limit.
        max_bytes: u64,
    },

    /// A value could not be serialized (JSON for a type whose `Serialize` fails, e.g. a map with
    /// non-string keys): the application's type does not fit the serde.
    #[error("cannot serialize {what}: {reason} (the application's type does not fit this serde)")]
    Serialize {
        /// What was being written.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },

    /// The topology built with the DSL is inconsistent (a store used but not declared, a join
    /// of an unmaterialized table, …): the application's code is wrong.
    #[error("invalid topology: {0} (fix the application's topology)")]
    Topology(String),

    /// A configuration value is missing or out of range: the application's configuration.
    #[error("invalid streams config: {0}")]
    Config(String),

    /// A record could not be read and `default.deserialization.exception.handler` is
    /// `LogAndFail`: the producer of the topic wrote bytes the application's serde does not read.
    #[error(
        "record {topic}-{partition}@{offset} does not deserialize: {reason} (the topic's producer wrote it; \
         set default.deserialization.exception.handler to LogAndContinue or a dead-letter topic to skip such records)"
    )]
    BadInput { topic: String, partition: i32, offset: i64, reason: String },

    /// A record's extracted timestamp is negative under the `Fail` invalid-timestamp policy.
    #[error(
        "record {topic}-{partition}@{offset} has invalid timestamp {timestamp_ms} ms (the producer or the \
         application's timestamp extractor gave it; choose InvalidTimestampPolicy::Skip to skip such records)"
    )]
    InvalidRecordTimestamp { topic: String, partition: i32, offset: i64, timestamp_ms: i64 },

    /// Two topics that must be co-partitioned (read by one join or one task) have different
    /// partition counts: the topics were created that way.
    #[error(
        "topics {topics:?} must have the same number of partitions to be joined or read by one task, \
         but have {counts:?} (recreate or repartition them so the counts match)"
    )]
    NotCopartitioned { topics: Vec<String>, counts: Vec<i32> },

    /// A Kafka client operation failed (broker unreachable, topic missing, …).
    #[error("kafka client: {0}")]
    Client(#[from] spate_client::Error),

    /// The application is not running (or already closed) for this call.
    #[error("kafka streams is {0}")]
    State(String),

    /// A state store operation failed on the local state directory (I/O error, full disk, a
    /// corrupt store file, or the store already open): the machine's disk or the instance's
    /// setup, not the records. The store can be rebuilt from its changelog topic by deleting its
    /// task directory.
    #[error(
        "state store {store}: {op} failed: {reason} (the local state directory or its disk, not the \
         records; the store is rebuilt from its changelog if its task directory is deleted)"
    )]
    Store {
        /// The store's name.
        store: String,
        /// What was being done, e.g. "open", "get", "write_batch".
        op: &'static str,
        /// Why it failed.
        reason: String,
    },

    /// A store is defined wrongly (e.g. a negative retention): the application's configuration
    /// is wrong.
    #[error("invalid state store {store}: {reason} (fix the application's store definition)")]
    InvalidStore {
        /// The store's name.
        store: String,
        /// Why it is invalid.
        reason: String,
    },

    /// The state directory (`state.dir`) or a file in it could not be read or written: the
    /// machine's disk or permissions.
    #[error("state directory {path}: {op} failed: {reason} (the local state directory or its disk)")]
    StateDirectory {
        /// The file or directory.
        path: String,
        /// What was being done, e.g. "create", "lock", "write checkpoint".
        op: &'static str,
        /// Why it failed.
        reason: String,
    },

    /// A task's state directory is locked by another instance sharing the same `state.dir`
    /// (or another `StateDirectory` in this process): two instances must not share one.
    #[error(
        "state directory {path} of task {task_id} is locked by another instance (two Kafka Streams \
         instances share one state.dir: give each its own state.dir)"
    )]
    TaskDirectoryLocked {
        /// The task id, e.g. "0_1".
        task_id: String,
        /// The task's directory.
        path: String,
    },

    /// A SQL statement is wrong: it does not parse, names an unknown table or column, or mixes
    /// types. The user's query; `position` is where in the statement, when the parser knows it.
    #[error("sql: {message}{} (fix the query)", position.map(|p| format!(" at {p}")).unwrap_or_default())]
    SqlPlan {
        /// What is wrong, as DataFusion or our planner words it.
        message: String,
        /// `line:column` of the offending token, 1-based.
        position: Option<SqlPosition>,
    },

    /// A SQL query failed while running: a record that does not decode under `on_error = 'fail'`,
    /// a resource limit, or the broker. The message says which.
    #[error("sql execution: {0}")]
    SqlExecution(String),

    /// A checkpoint file does not parse: local state is damaged, not the records.
    #[error(
        "checkpoint file {path} is corrupt: {reason} (local state is damaged: delete the task \
         directory and it is restored from the changelog topics)"
    )]
    CorruptCheckpoint {
        /// The checkpoint file.
        path: String,
        /// What is wrong in it.
        reason: String,
    },
}

/// Where in a SQL statement an error is: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlPosition {
    pub line: u64,
    pub column: u64,
}

impl std::fmt::Display for SqlPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

impl StreamsError {
    pub(crate) fn deserialize(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Deserialize { what, reason: reason.into() }
    }

    pub(crate) fn invalid_window(what: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidWindow { what, reason: reason.into() }
    }

    pub(crate) fn store(store: &str, op: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Store { store: store.to_owned(), op, reason: reason.to_string() }
    }

    pub(crate) fn state_directory(path: &std::path::Path, op: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::StateDirectory { path: path.display().to_string(), op, reason: reason.to_string() }
    }
}

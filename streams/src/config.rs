//! `StreamsConfig`: Kafka Streams' configuration keys, validated.

use std::path::PathBuf;

use crate::topology::DeserializationHandler;
use crate::StreamsError;

/// How many records are processed between commits, at most, per `commit.interval.ms`: the
/// processing guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessingGuarantee {
    /// Every input record is processed at least once; after a crash, records since the last
    /// commit are processed again (Kafka's default).
    AtLeastOnce,
}

/// Settings of a streams application, by Kafka's keys (set with [`StreamsConfig::set`]).
#[derive(Debug, Clone)]
pub struct StreamsConfig {
    /// `application.id`: the consumer group, the prefix of internal topics and the state
    /// directory's name. Required.
    pub application_id: String,
    /// `bootstrap.servers`. Default `127.0.0.1:9092`.
    pub bootstrap_servers: Vec<String>,
    /// `client.id` prefix of the consumers and producers. Default `<application.id>`.
    pub client_id: String,
    /// `num.stream.threads`: each is a member of the group with its own tasks. Default 1.
    pub num_stream_threads: usize,
    /// `processing.guarantee`. `at_least_once` (default); `exactly_once_v2` is refused until
    /// Spate has transactions.
    pub processing_guarantee: ProcessingGuarantee,
    /// `commit.interval.ms`: how often progress is committed (offsets, store flushes,
    /// checkpoints). Default 30000, Kafka's at-least-once default.
    pub commit_interval_ms: u64,
    /// `state.dir`. Default `<temp dir>/kafka-streams`.
    pub state_dir: PathBuf,
    /// `statestore.cache.max.bytes` (formerly `cache.max.bytes.buffering`): the record cache of
    /// all threads; updates of one key within it are merged before they reach stores,
    /// changelogs and downstream operators. 0 turns caching off. Default 10 MiB.
    pub statestore_cache_max_bytes: usize,
    /// `default.deserialization.exception.handler`: `LogAndFail` (default), `LogAndContinue`,
    /// or a dead-letter topic via `errors.deadletterqueue.topic.name`.
    pub deserialization_handler: DeserializationHandler,
    /// `default.production.exception.handler`: `LogAndFail` (default: an output record the
    /// broker refuses for good stops the application) or `LogAndContinue` (it is logged,
    /// counted and skipped). Changelog writes always fail the application.
    pub production_handler_continue: bool,
    /// `replication.factor` of internal topics. Default -1 (the broker's default).
    pub replication_factor: i16,
    /// `poll.ms`: how long a thread blocks waiting for records. Default 100.
    pub poll_ms: u64,
    /// `max.poll.records` of the consumers. Default 1000.
    pub max_poll_records: usize,
    /// `session.timeout.ms` of the group members. Default 45000.
    pub session_timeout_ms: u64,
    /// `heartbeat.interval.ms`. Default 3000.
    pub heartbeat_interval_ms: u64,
    /// `group.instance.id` prefix for static membership (each thread appends `-<n>`): a
    /// restarted instance gets its tasks back without a rebalance within the session timeout.
    pub group_instance_id: Option<String>,
    /// `linger.ms` of the producer. Default 5 (Kafka Streams uses 100; lower keeps latency down).
    pub linger_ms: u64,
}

impl StreamsConfig {
    /// Defaults for `application_id` against `bootstrap_servers` (comma-separated).
    pub fn new(application_id: &str, bootstrap_servers: &str) -> Self {
        StreamsConfig {
            application_id: application_id.to_string(),
            bootstrap_servers: bootstrap_servers
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            client_id: application_id.to_string(),
            num_stream_threads: 1,
            processing_guarantee: ProcessingGuarantee::AtLeastOnce,
            commit_interval_ms: 30_000,
            state_dir: std::env::temp_dir().join("kafka-streams"),
            statestore_cache_max_bytes: 10 * 1024 * 1024,
            deserialization_handler: DeserializationHandler::LogAndFail,
            production_handler_continue: false,
            replication_factor: -1,
            poll_ms: 100,
            max_poll_records: 1000,
            session_timeout_ms: 45_000,
            heartbeat_interval_ms: 3_000,
            group_instance_id: None,
            linger_ms: 5,
        }
    }

    /// Sets one key by Kafka's name; unknown keys and bad values are errors.
    pub fn set(mut self, key: &str, value: &str) -> Result<Self, StreamsError> {
        fn num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, StreamsError> {
            value.trim().parse().map_err(|_| StreamsError::Config(format!("{key} must be a number, not '{value}'")))
        }
        match key {
            "application.id" => self.application_id = value.to_string(),
            "bootstrap.servers" => {
                self.bootstrap_servers = value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
            }
            "client.id" => self.client_id = value.to_string(),
            "num.stream.threads" => self.num_stream_threads = num(key, value)?,
            "processing.guarantee" => {
                self.processing_guarantee = match value {
                    "at_least_once" => ProcessingGuarantee::AtLeastOnce,
                    "exactly_once" | "exactly_once_beta" | "exactly_once_v2" => {
                        return Err(StreamsError::Config(format!(
                            "processing.guarantee={value} needs transactions, which Spate does not have yet; use at_least_once"
                        )))
                    }
                    other => {
                        return Err(StreamsError::Config(format!(
                            "processing.guarantee must be at_least_once or exactly_once_v2, not '{other}'"
                        )))
                    }
                }
            }
            "commit.interval.ms" => self.commit_interval_ms = num(key, value)?,
            "state.dir" => self.state_dir = PathBuf::from(value),
            "statestore.cache.max.bytes" | "cache.max.bytes.buffering" => self.statestore_cache_max_bytes = num(key, value)?,
            "default.deserialization.exception.handler" | "deserialization.exception.handler" => {
                self.deserialization_handler = match value.rsplit('.').next().unwrap_or(value) {
                    "LogAndFailExceptionHandler" | "LogAndFail" => DeserializationHandler::LogAndFail,
                    "LogAndContinueExceptionHandler" | "LogAndContinue" => DeserializationHandler::LogAndContinue,
                    other => {
                        return Err(StreamsError::Config(format!(
                            "{key} must be LogAndFail or LogAndContinue (or set errors.deadletterqueue.topic.name), not '{other}'"
                        )))
                    }
                }
            }
            "default.production.exception.handler" | "production.exception.handler" => {
                self.production_handler_continue = match value.rsplit('.').next().unwrap_or(value) {
                    "DefaultProductionExceptionHandler" | "LogAndFail" => false,
                    "LogAndContinue" | "AlwaysContinueProductionExceptionHandler" => true,
                    other => {
                        return Err(StreamsError::Config(format!(
                            "{key} must be LogAndFail or LogAndContinue, not '{other}'"
                        )))
                    }
                }
            }
            "errors.deadletterqueue.topic.name" => {
                self.deserialization_handler = DeserializationHandler::DeadLetterQueue(value.to_string())
            }
            "replication.factor" => self.replication_factor = num(key, value)?,
            "poll.ms" => self.poll_ms = num(key, value)?,
            "max.poll.records" => self.max_poll_records = num(key, value)?,
            "session.timeout.ms" => self.session_timeout_ms = num(key, value)?,
            "heartbeat.interval.ms" => self.heartbeat_interval_ms = num(key, value)?,
            "group.instance.id" => self.group_instance_id = Some(value.to_string()),
            "linger.ms" => self.linger_ms = num(key, value)?,
            other => return Err(StreamsError::Config(format!("unknown streams config key '{other}'"))),
        }
        Ok(self)
    }

    /// Checks the settings before anything starts.
    pub fn validate(&self) -> Result<(), StreamsError> {
        let bad = |m: String| Err(StreamsError::Config(m));
        if self.application_id.is_empty()
            || self.application_id.len() > 200
            || !self.application_id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return bad(format!(
                "application.id '{}' must be 1-200 characters of [a-zA-Z0-9._-] (it names topics and directories)",
                self.application_id
            ));
        }
        if self.bootstrap_servers.is_empty() {
            return bad("bootstrap.servers is empty".into());
        }
        if self.num_stream_threads == 0 || self.num_stream_threads > 256 {
            return bad(format!("num.stream.threads {} must be 1..=256", self.num_stream_threads));
        }
        if self.commit_interval_ms == 0 {
            return bad("commit.interval.ms must be at least 1".into());
        }
        if self.max_poll_records == 0 {
            return bad("max.poll.records must be at least 1".into());
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            return bad(format!("replication.factor {} must be -1 or at least 1", self.replication_factor));
        }
        if self.heartbeat_interval_ms >= self.session_timeout_ms {
            return bad("heartbeat.interval.ms must be below session.timeout.ms".into());
        }
        Ok(())
    }
}

//! `StreamsConfig`: Kafka Streams' configuration keys, validated.

use std::path::PathBuf;

use crate::topology::DeserializationHandler;
use crate::StreamsError;

/// `processing.guarantee`: what a crash or a rebalance may do to the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessingGuarantee {
    /// Every input record is processed at least once; after a crash, records since the last
    /// commit are processed again (Kafka's default).
    AtLeastOnce,
    /// `exactly_once_v2` (Kafka's KIP-447 design): each stream thread writes its output,
    /// changelog records and input offsets in one transaction per commit, through a
    /// transactional producer with `transactional.id` `<application.id>-<process id>-<thread>`.
    /// Consumers read `read_committed`, so the effects of a record are seen once, whatever
    /// crashes: an aborted transaction's writes are never read, and a task whose local state
    /// may hold them is wiped and restored from its changelog. Needs a broker with
    /// transactions (Kafka 2.5+ or Spate) and `read_committed` downstream consumers.
    ExactlyOnceV2,
}

impl ProcessingGuarantee {
    /// `commit.interval.ms` when it is not set: Kafka's 30000 under at-least-once, 100 under
    /// exactly-once (a transaction's output is invisible until its commit).
    pub fn default_commit_interval_ms(self) -> u64 {
        match self {
            ProcessingGuarantee::AtLeastOnce => 30_000,
            ProcessingGuarantee::ExactlyOnceV2 => 100,
        }
    }
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
    /// `processing.guarantee`: `at_least_once` (default) or `exactly_once_v2`
    /// (`exactly_once_beta` is its old name). Kafka's first `exactly_once`, a producer per task,
    /// is refused: `exactly_once_v2` replaces it.
    pub processing_guarantee: ProcessingGuarantee,
    /// `commit.interval.ms`: how often progress is committed (offsets, store flushes,
    /// checkpoints; under exactly-once the transaction). Default 30000 under at-least-once and
    /// 100 under exactly-once, as Kafka's: setting `processing.guarantee` moves it to the
    /// guarantee's default unless `commit.interval.ms` was set to something else.
    pub commit_interval_ms: u64,
    /// `transaction.timeout.ms` of the exactly-once producers: the transaction coordinator aborts
    /// a transaction left open longer than this (a crashed instance's), which holds back
    /// `read_committed` readers of its partitions until then. Default 10000, Kafka Streams'.
    pub transaction_timeout_ms: u64,
    /// `repartition.purge.interval.ms`: at most this often, after a commit, the records of
    /// repartition topics below the committed offsets are deleted (DeleteRecords), as Kafka
    /// Streams does, so repartition topics do not grow with `retention.ms`. Default 30000.
    pub repartition_purge_interval_ms: u64,
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
    /// counted and skipped). Changelog writes always fail the application, and so does any
    /// refused record under exactly-once (its transaction can no longer commit).
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
            commit_interval_ms: ProcessingGuarantee::AtLeastOnce.default_commit_interval_ms(),
            transaction_timeout_ms: 10_000,
            repartition_purge_interval_ms: 30_000,
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
                let guarantee = match value {
                    "at_least_once" => ProcessingGuarantee::AtLeastOnce,
                    "exactly_once_v2" | "exactly_once_beta" => ProcessingGuarantee::ExactlyOnceV2,
                    "exactly_once" => {
                        return Err(StreamsError::Config(
                            "processing.guarantee=exactly_once (a producer per task) is not supported, as in Kafka 4: \
                             use exactly_once_v2"
                                .into(),
                        ))
                    }
                    other => {
                        return Err(StreamsError::Config(format!(
                            "processing.guarantee must be at_least_once or exactly_once_v2, not '{other}'"
                        )))
                    }
                };
                // The interval follows the guarantee's default unless it was set otherwise.
                if self.commit_interval_ms == self.processing_guarantee.default_commit_interval_ms() {
                    self.commit_interval_ms = guarantee.default_commit_interval_ms();
                }
                self.processing_guarantee = guarantee;
            }
            "commit.interval.ms" => self.commit_interval_ms = num(key, value)?,
            "transaction.timeout.ms" => self.transaction_timeout_ms = num(key, value)?,
            "repartition.purge.interval.ms" => self.repartition_purge_interval_ms = num(key, value)?,
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
        if self.processing_guarantee == ProcessingGuarantee::ExactlyOnceV2
            && self.transaction_timeout_ms <= self.commit_interval_ms
        {
            return bad(format!(
                "transaction.timeout.ms {} must be above commit.interval.ms {} under exactly_once_v2 \
                 (the coordinator would abort every transaction before its commit)",
                self.transaction_timeout_ms, self.commit_interval_ms
            ));
        }
        Ok(())
    }

    /// Whether `processing.guarantee` is exactly-once.
    pub(crate) fn exactly_once(&self) -> bool {
        self.processing_guarantee == ProcessingGuarantee::ExactlyOnceV2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_once_v2_is_accepted_and_moves_the_default_commit_interval() {
        let c = StreamsConfig::new("app", "h:1").set("processing.guarantee", "exactly_once_v2").unwrap();
        assert_eq!(c.processing_guarantee, ProcessingGuarantee::ExactlyOnceV2);
        assert!(c.exactly_once());
        assert_eq!(c.commit_interval_ms, 100);
        assert_eq!(c.transaction_timeout_ms, 10_000);
        c.validate().unwrap();
        // Back to at-least-once: back to its default.
        let c = c.set("processing.guarantee", "at_least_once").unwrap();
        assert_eq!(c.commit_interval_ms, 30_000);
        // The old name of v2 is v2.
        let c = StreamsConfig::new("app", "h:1").set("processing.guarantee", "exactly_once_beta").unwrap();
        assert_eq!(c.processing_guarantee, ProcessingGuarantee::ExactlyOnceV2);
    }

    #[test]
    fn an_explicit_commit_interval_wins_in_either_order() {
        let before = StreamsConfig::new("app", "h:1")
            .set("commit.interval.ms", "500")
            .unwrap()
            .set("processing.guarantee", "exactly_once_v2")
            .unwrap();
        assert_eq!(before.commit_interval_ms, 500);
        let after = StreamsConfig::new("app", "h:1")
            .set("processing.guarantee", "exactly_once_v2")
            .unwrap()
            .set("commit.interval.ms", "500")
            .unwrap();
        assert_eq!(after.commit_interval_ms, 500);
    }

    #[test]
    fn exactly_once_v1_and_a_timeout_below_the_interval_are_refused() {
        let e = StreamsConfig::new("app", "h:1").set("processing.guarantee", "exactly_once").unwrap_err();
        assert!(e.to_string().contains("exactly_once_v2"), "{e}");
        let e = StreamsConfig::new("app", "h:1").set("processing.guarantee", "exactly_twice").unwrap_err();
        assert!(e.to_string().contains("exactly_twice"), "{e}");
        let c = StreamsConfig::new("app", "h:1")
            .set("processing.guarantee", "exactly_once_v2")
            .unwrap()
            .set("commit.interval.ms", "20000")
            .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("transaction.timeout.ms"), "{e}");
        c.set("transaction.timeout.ms", "60000").unwrap().validate().unwrap();
    }
}

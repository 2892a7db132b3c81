//! Broker configuration: a plain data struct whose doc comments are the user documentation,
//! keyed by Kafka's own names (`log.segment.bytes`), and a pure `validate()`.
//!
//! Layering (defaults → TOML file → `SPATE_*` environment → flags) happens in the CLI; this
//! module only knows the values and their limits.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::BrokerError;

/// How acknowledged writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FlushMode {
    /// Every batch is fsynced before an `acks=all` produce is answered, and before consumers can
    /// read it (the high watermark only covers fsynced data). One fsync covers every batch that
    /// arrived while the previous one ran (group commit). Survives power loss.
    #[default]
    Fsync,
    /// Kafka's default: data is acknowledged from the page cache and written back by the
    /// operating system (or every `log.flush.interval.ms`). Survives a broker crash (`kill -9`),
    /// not a power loss.
    PageCache,
}

/// Everything a single broker needs to run. Every field has a default, so `spate broker` with
/// no configuration at all starts a working single-node broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `node.id`: this broker's id in the cluster.
    #[serde(rename = "node.id")]
    pub node_id: i32,
    /// `listeners`: the address the Kafka listener binds to.
    #[serde(rename = "listeners")]
    pub listen: SocketAddr,
    /// `advertised.listeners`: `host:port` that clients are told to connect to; defaults to the
    /// listen address.
    #[serde(rename = "advertised.listeners")]
    pub advertised_listener: Option<String>,
    /// `log.dirs`: where topics, partitions and broker metadata are stored.
    #[serde(rename = "log.dirs")]
    pub data_dir: PathBuf,
    /// `num.partitions`: partitions of auto-created topics and of CreateTopics with -1.
    #[serde(rename = "num.partitions")]
    pub num_partitions: i32,
    /// `auto.create.topics.enable`: create a topic when a client asks for metadata of or produces
    /// to a topic that does not exist.
    #[serde(rename = "auto.create.topics.enable")]
    pub auto_create_topics_enable: bool,
    /// `delete.topic.enable`: allow DeleteTopics.
    #[serde(rename = "delete.topic.enable")]
    pub delete_topic_enable: bool,
    /// `log.segment.bytes`: default `segment.bytes` of topics.
    #[serde(rename = "log.segment.bytes")]
    pub log_segment_bytes: u64,
    /// `log.roll.ms`: default `segment.ms` of topics.
    #[serde(rename = "log.roll.ms")]
    pub log_roll_ms: i64,
    /// `log.retention.ms`: default `retention.ms` of topics (-1 keeps data forever).
    #[serde(rename = "log.retention.ms")]
    pub log_retention_ms: i64,
    /// `log.retention.bytes`: default `retention.bytes` per partition (-1 is unlimited).
    #[serde(rename = "log.retention.bytes")]
    pub log_retention_bytes: i64,
    /// `log.retention.check.interval.ms`: how often retention runs.
    #[serde(rename = "log.retention.check.interval.ms")]
    pub log_retention_check_interval_ms: u64,
    /// `log.index.interval.bytes`: bytes between entries of the sparse offset index.
    #[serde(rename = "log.index.interval.bytes")]
    pub log_index_interval_bytes: u32,
    /// `log.flush.mode`: `fsync` (default) or `page-cache`; see the README's durability section.
    #[serde(rename = "log.flush.mode")]
    pub log_flush_mode: FlushMode,
    /// `log.flush.interval.ms`: in `page-cache` mode, fsync dirty partitions this often (0: leave
    /// write-back entirely to the operating system, as Kafka does by default).
    #[serde(rename = "log.flush.interval.ms")]
    pub log_flush_interval_ms: u64,
    /// `message.max.bytes`: the largest record batch a topic accepts (topic `max.message.bytes`).
    #[serde(rename = "message.max.bytes")]
    pub message_max_bytes: u32,
    /// `socket.request.max.bytes`: requests larger than this close the connection.
    #[serde(rename = "socket.request.max.bytes")]
    pub socket_request_max_bytes: u32,
    /// `max.connections`: connections beyond this are closed on accept.
    #[serde(rename = "max.connections")]
    pub max_connections: usize,
    /// `queued.max.requests`: requests one connection may have in progress before the broker
    /// stops reading from it (back-pressure).
    #[serde(rename = "queued.max.requests")]
    pub queued_max_requests: usize,
    /// `fetch.max.bytes`: upper bound on one fetch response, whatever the client asks for.
    #[serde(rename = "fetch.max.bytes")]
    pub fetch_max_bytes: u32,
    /// `producer.id.expiration.ms`: idempotent-producer state is dropped after this idle time.
    #[serde(rename = "producer.id.expiration.ms")]
    pub producer_id_expiration_ms: i64,
    /// `max.producers.per.partition`: bound on idempotent-producer state kept per partition
    /// (least recently used is evicted first).
    #[serde(rename = "max.producers.per.partition")]
    pub max_producers_per_partition: usize,
    /// `max.partitions`: bound on partitions this broker hosts, so CreateTopics cannot exhaust
    /// file descriptors or memory.
    #[serde(rename = "max.partitions")]
    pub max_partitions: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            advertised_listener: None,
            data_dir: PathBuf::from("./spate-data"),
            num_partitions: 1,
            auto_create_topics_enable: true,
            delete_topic_enable: true,
            log_segment_bytes: 1 << 30,
            log_roll_ms: 7 * 24 * 3600 * 1000,
            log_retention_ms: 7 * 24 * 3600 * 1000,
            log_retention_bytes: -1,
            log_retention_check_interval_ms: 300_000,
            log_index_interval_bytes: 4096,
            log_flush_mode: FlushMode::Fsync,
            log_flush_interval_ms: 0,
            message_max_bytes: 1_048_588,
            socket_request_max_bytes: 104_857_600,
            max_connections: 10_000,
            queued_max_requests: 64,
            fetch_max_bytes: 57_671_680,
            producer_id_expiration_ms: 86_400_000,
            max_producers_per_partition: 10_000,
            max_partitions: 10_000,
        }
    }
}

impl BrokerConfig {
    /// Checks every value; the returned config is the one the broker runs with.
    pub fn validate(self) -> Result<BrokerConfig, BrokerError> {
        let bad = |key: &str, reason: String| Err(BrokerError::InvalidConfig { key: key.to_string(), reason });
        if self.node_id < 0 {
            return bad("node.id", format!("{} must not be negative", self.node_id));
        }
        if !(1..=10_000).contains(&self.num_partitions) {
            return bad("num.partitions", format!("{} must be between 1 and 10000", self.num_partitions));
        }
        if self.log_segment_bytes < 1024 || self.log_segment_bytes > i32::MAX as u64 {
            return bad(
                "log.segment.bytes",
                format!("{} must be between 1024 and {}", self.log_segment_bytes, i32::MAX),
            );
        }
        if self.log_roll_ms < 1 {
            return bad("log.roll.ms", format!("{} must be positive", self.log_roll_ms));
        }
        if self.log_retention_ms < -1 {
            return bad("log.retention.ms", format!("{} must be -1 or more", self.log_retention_ms));
        }
        if self.log_retention_bytes < -1 {
            return bad("log.retention.bytes", format!("{} must be -1 or more", self.log_retention_bytes));
        }
        if self.log_retention_check_interval_ms == 0 {
            return bad("log.retention.check.interval.ms", "must be positive".into());
        }
        if self.message_max_bytes < 64 {
            return bad(
                "message.max.bytes",
                format!("{} is smaller than a record batch header", self.message_max_bytes),
            );
        }
        if self.socket_request_max_bytes < self.message_max_bytes || self.socket_request_max_bytes > i32::MAX as u32 {
            return bad(
                "socket.request.max.bytes",
                format!("{} must be at least message.max.bytes and below 2 GiB", self.socket_request_max_bytes),
            );
        }
        if self.queued_max_requests == 0 || self.max_connections == 0 || self.max_partitions == 0 {
            return bad("queued.max.requests / max.connections / max.partitions", "must be positive".into());
        }
        if self.max_producers_per_partition == 0 {
            return bad("max.producers.per.partition", "must be positive".into());
        }
        if let Some(adv) = &self.advertised_listener {
            if adv.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return bad("advertised.listeners", format!("'{adv}' is not host:port"));
            }
        }
        Ok(self)
    }

    /// Host and port clients are told to use.
    pub fn advertised(&self) -> (String, i32) {
        match &self.advertised_listener {
            Some(adv) => {
                let (host, port) = adv.rsplit_once(':').unwrap_or((adv, "9092"));
                (host.to_string(), port.parse().unwrap_or(9092))
            }
            None => (self.listen.ip().to_string(), self.listen.port() as i32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        BrokerConfig::default().validate().unwrap();
    }

    #[test]
    fn toml_uses_kafka_names_and_rejects_unknown_keys() {
        let cfg: BrokerConfig = toml::from_str("\"node.id\" = 3\n\"log.flush.mode\" = \"page-cache\"\n").unwrap();
        assert_eq!(cfg.node_id, 3);
        assert_eq!(cfg.log_flush_mode, FlushMode::PageCache);
        assert!(toml::from_str::<BrokerConfig>("\"no.such.key\" = 1\n").is_err());
    }

    #[test]
    fn invalid_values_name_the_key() {
        let cfg = BrokerConfig { num_partitions: 0, ..Default::default() };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("num.partitions"), "{err}");
    }
}

//! Topic-level configs: the catalogue of keys a topic accepts (Kafka's names), how each falls
//! back to a broker default, validation, and the [`LogConfig`] derived from them.

use std::collections::BTreeMap;

use crate::config::BrokerConfig;
use crate::log::{CleanupPolicy, CompactionConfig, LogConfig};

/// The type Kafka reports for a config in DescribeConfigs v3+.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

enum Rule {
    Long {
        min: i64,
        max: i64,
    },
    Double {
        min: f64,
        max: f64,
    },
    Bool,
    /// `cleanup.policy`: Kafka's list of `delete` and `compact`.
    Policy,
    /// `*.replication.throttled.replicas`: `*` or `partition:broker,…` ([`ThrottledReplicas`]).
    ReplicaList,
    OneOf(&'static [&'static str]),
}

/// One topic config key.
pub struct TopicConfigDef {
    pub name: &'static str,
    /// The broker config whose value is this key's default, as Kafka's synonyms report it.
    pub broker_synonym: Option<&'static str>,
    pub doc: &'static str,
    rule: Rule,
    default: fn(&BrokerConfig) -> String,
}

impl TopicConfigDef {
    pub fn config_type(&self) -> ConfigType {
        match self.rule {
            Rule::Long { max, .. } if max <= i32::MAX as i64 => ConfigType::Int,
            Rule::Long { .. } => ConfigType::Long,
            Rule::Double { .. } => ConfigType::Double,
            Rule::Bool => ConfigType::Boolean,
            Rule::Policy | Rule::ReplicaList => ConfigType::List,
            Rule::OneOf(_) => ConfigType::String,
        }
    }

    pub fn default_value(&self, broker: &BrokerConfig) -> String {
        (self.default)(broker)
    }

    fn validate(&self, value: &str) -> Result<(), String> {
        match &self.rule {
            Rule::Long { min, max } => match value.trim().parse::<i64>() {
                Ok(v) if (*min..=*max).contains(&v) => Ok(()),
                Ok(v) => Err(format!("{v} is outside {min}..={max}")),
                Err(_) => Err(format!("'{value}' is not a number")),
            },
            Rule::Double { min, max } => match value.trim().parse::<f64>() {
                Ok(v) if (*min..=*max).contains(&v) => Ok(()),
                Ok(v) => Err(format!("{v} is outside {min}..={max}")),
                Err(_) => Err(format!("'{value}' is not a number")),
            },
            Rule::ReplicaList => ThrottledReplicas::parse(value).map(|_| ()),
            Rule::Policy => match CleanupPolicy::parse(value) {
                Some(_) => Ok(()),
                None => Err(format!("'{value}' is not delete, compact or compact,delete")),
            },
            Rule::Bool => match value {
                "true" | "false" => Ok(()),
                _ => Err(format!("'{value}' is not true or false")),
            },
            Rule::OneOf(allowed) => {
                if allowed.contains(&value) {
                    Ok(())
                } else {
                    Err(format!("'{value}' is not supported (supported: {})", allowed.join(", ")))
                }
            }
        }
    }
}

const I32_MAX: i64 = i32::MAX as i64;

/// Every topic config Spate understands. Values outside these rules are refused with
/// INVALID_CONFIG rather than accepted and ignored: broker-side recompression
/// (`compression.type` other than `producer`) and `LogAppendTime` are not implemented.
pub static TOPIC_CONFIGS: &[TopicConfigDef] = &[
    TopicConfigDef {
        name: "cleanup.policy",
        broker_synonym: Some("log.cleanup.policy"),
        doc: "What happens to old segments: delete (retention.ms / retention.bytes), compact (keep the \
              latest record per key), or both (compact,delete).",
        rule: Rule::Policy,
        default: |_| "delete".into(),
    },
    TopicConfigDef {
        name: "compression.type",
        broker_synonym: Some("compression.type"),
        doc: "Batches are stored as the producer compressed them.",
        rule: Rule::OneOf(&["producer"]),
        default: |_| "producer".into(),
    },
    TopicConfigDef {
        name: "delete.retention.ms",
        broker_synonym: Some("log.cleaner.delete.retention.ms"),
        doc: "How long a tombstone stays in a compacted topic after the cleaning that first kept it.",
        rule: Rule::Long { min: 0, max: i64::MAX },
        default: |b| b.log_cleaner_delete_retention_ms.to_string(),
    },
    TopicConfigDef {
        name: FOLLOWER_THROTTLED_REPLICAS,
        broker_synonym: None,
        doc: "Replicas whose fetches their broker throttles under follower.replication.throttled.rate: \
              '*' or partition:broker pairs (kafka-reassign-partitions.sh sets it). Unset: the replicas \
              a reassignment is adding.",
        rule: Rule::ReplicaList,
        default: |_| String::new(),
    },
    TopicConfigDef {
        name: "index.interval.bytes",
        broker_synonym: Some("log.index.interval.bytes"),
        doc: "Bytes between entries of the sparse offset index.",
        rule: Rule::Long { min: 0, max: I32_MAX },
        default: |b| b.log_index_interval_bytes.to_string(),
    },
    TopicConfigDef {
        name: "max.message.bytes",
        broker_synonym: Some("message.max.bytes"),
        doc: "Largest record batch (after compression) the topic accepts.",
        rule: Rule::Long { min: 64, max: I32_MAX },
        default: |b| b.message_max_bytes.to_string(),
    },
    TopicConfigDef {
        name: LEADER_THROTTLED_REPLICAS,
        broker_synonym: None,
        doc: "Replicas whose followers the leader throttles under leader.replication.throttled.rate \
              while they are out of sync: '*' or partition:broker pairs (kafka-reassign-partitions.sh \
              sets it). Unset: the replicas a reassignment is adding.",
        rule: Rule::ReplicaList,
        default: |_| String::new(),
    },
    TopicConfigDef {
        name: "max.compaction.lag.ms",
        broker_synonym: Some("log.cleaner.max.compaction.lag.ms"),
        doc: "Age after which an uncompacted segment is cleaned whatever the dirty ratio.",
        rule: Rule::Long { min: 1, max: i64::MAX },
        default: |b| b.log_cleaner_max_compaction_lag_ms.to_string(),
    },
    TopicConfigDef {
        name: "message.timestamp.type",
        broker_synonym: Some("log.message.timestamp.type"),
        doc: "Record timestamps are the producer's create time.",
        rule: Rule::OneOf(&["CreateTime"]),
        default: |_| "CreateTime".into(),
    },
    TopicConfigDef {
        name: "min.cleanable.dirty.ratio",
        broker_synonym: Some("log.cleaner.min.cleanable.ratio"),
        doc: "Share of uncompacted bytes at which a compacted topic's partition is cleaned.",
        rule: Rule::Double { min: 0.0, max: 1.0 },
        default: |b| b.log_cleaner_min_cleanable_ratio.to_string(),
    },
    TopicConfigDef {
        name: "min.compaction.lag.ms",
        broker_synonym: Some("log.cleaner.min.compaction.lag.ms"),
        doc: "Records younger than this (by their segment's newest timestamp) are not compacted.",
        rule: Rule::Long { min: 0, max: i64::MAX },
        default: |b| b.log_cleaner_min_compaction_lag_ms.to_string(),
    },
    TopicConfigDef {
        name: "min.insync.replicas",
        broker_synonym: Some("min.insync.replicas"),
        doc: "In-sync replicas that must have a batch before acks=all succeeds (NOT_ENOUGH_REPLICAS below it).",
        rule: Rule::Long { min: 1, max: I32_MAX },
        default: |b| b.min_insync_replicas.to_string(),
    },
    TopicConfigDef {
        name: "retention.bytes",
        broker_synonym: Some("log.retention.bytes"),
        doc: "Per-partition size above which the oldest segments are deleted (-1: unlimited).",
        rule: Rule::Long { min: -1, max: i64::MAX },
        default: |b| b.log_retention_bytes.to_string(),
    },
    TopicConfigDef {
        name: "retention.ms",
        broker_synonym: Some("log.retention.ms"),
        doc: "Age after which a closed segment is deleted (-1: forever).",
        rule: Rule::Long { min: -1, max: i64::MAX },
        default: |b| b.log_retention_ms.to_string(),
    },
    TopicConfigDef {
        name: "segment.bytes",
        broker_synonym: Some("log.segment.bytes"),
        doc: "Size at which the active segment is rolled.",
        rule: Rule::Long { min: 1024, max: I32_MAX },
        default: |b| b.log_segment_bytes.to_string(),
    },
    TopicConfigDef {
        name: "segment.ms",
        broker_synonym: Some("log.roll.ms"),
        doc: "Age at which the active segment is rolled.",
        rule: Rule::Long { min: 1, max: i64::MAX },
        default: |b| b.log_roll_ms.to_string(),
    },
    TopicConfigDef {
        name: "unclean.leader.election.enable",
        broker_synonym: Some("unclean.leader.election.enable"),
        doc: "Whether an out-of-sync replica may become leader (data loss).",
        rule: Rule::Bool,
        default: |_| "false".into(),
    },
];

/// Topic config naming the replicas the leader side of the replication throttle applies to.
pub const LEADER_THROTTLED_REPLICAS: &str = "leader.replication.throttled.replicas";
/// Topic config naming the replicas the follower side of the replication throttle applies to.
pub const FOLLOWER_THROTTLED_REPLICAS: &str = "follower.replication.throttled.replicas";
/// Most `partition:broker` pairs one throttled-replicas list may name (a value is parsed on
/// throttled fetches, so its size is bounded).
const MAX_THROTTLED_REPLICAS: usize = 10_000;

/// The value of Kafka's `leader.` / `follower.replication.throttled.replicas`: every replica
/// (`*`), or the listed `partition:broker` pairs (empty: none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThrottledReplicas {
    All,
    Listed(std::collections::BTreeSet<(i32, i32)>),
}

impl ThrottledReplicas {
    pub fn parse(value: &str) -> Result<ThrottledReplicas, String> {
        let value = value.trim();
        if value == "*" {
            return Ok(ThrottledReplicas::All);
        }
        let mut listed = std::collections::BTreeSet::new();
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let pair = item.split_once(':').and_then(|(p, b)| Some((p.trim().parse().ok()?, b.trim().parse().ok()?)));
            match pair {
                Some((p, b)) if p >= 0 && b >= 0 => listed.insert((p, b)),
                _ => return Err(format!("'{item}' is not partition:broker (or use '*' for every replica)")),
            };
            if listed.len() > MAX_THROTTLED_REPLICAS {
                return Err(format!("more than {MAX_THROTTLED_REPLICAS} replicas listed"));
            }
        }
        Ok(ThrottledReplicas::Listed(listed))
    }

    pub fn contains(&self, partition: i32, broker: i32) -> bool {
        match self {
            ThrottledReplicas::All => true,
            ThrottledReplicas::Listed(listed) => listed.contains(&(partition, broker)),
        }
    }

    /// A topic's list under `key`, when set (an unparsable value, which validation keeps out of
    /// the metadata, counts as unset).
    pub fn of_topic(configs: &BTreeMap<String, String>, key: &str) -> Option<ThrottledReplicas> {
        configs.get(key).and_then(|v| ThrottledReplicas::parse(v).ok())
    }
}

pub fn definition(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks one `key=value` override; the error says what is wrong.
pub fn validate_override(name: &str, value: &str) -> Result<(), String> {
    match definition(name) {
        Some(def) => def.validate(value),
        None => Err(format!("unknown topic config '{name}'")),
    }
}

/// A topic's overrides of the broker defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicConfigs {
    pub overrides: BTreeMap<String, String>,
}

impl TopicConfigs {
    /// The effective value of `name`, with whether it is a topic override.
    pub fn get(&self, name: &str, broker: &BrokerConfig) -> Option<(String, bool)> {
        if let Some(v) = self.overrides.get(name) {
            return Some((v.clone(), true));
        }
        definition(name).map(|d| (d.default_value(broker), false))
    }

    fn long(&self, name: &str, broker: &BrokerConfig) -> i64 {
        // Values were validated on the way in, so a parse failure is our own bug; fall back to
        // the broker default rather than take the partition down.
        self.get(name, broker)
            .and_then(|(v, _)| v.trim().parse().ok())
            .or_else(|| definition(name).and_then(|d| d.default_value(broker).parse().ok()))
            .unwrap_or(0)
    }

    fn double(&self, name: &str, broker: &BrokerConfig) -> f64 {
        self.get(name, broker)
            .and_then(|(v, _)| v.trim().parse().ok())
            .or_else(|| definition(name).and_then(|d| d.default_value(broker).parse().ok()))
            .unwrap_or(0.0)
    }

    pub fn cleanup_policy(&self, broker: &BrokerConfig) -> CleanupPolicy {
        self.get("cleanup.policy", broker).and_then(|(v, _)| CleanupPolicy::parse(&v)).unwrap_or(CleanupPolicy::DELETE)
    }

    pub fn log_config(&self, broker: &BrokerConfig) -> LogConfig {
        LogConfig {
            segment_bytes: self.long("segment.bytes", broker) as u64,
            segment_ms: self.long("segment.ms", broker),
            retention_ms: self.long("retention.ms", broker),
            retention_bytes: self.long("retention.bytes", broker),
            index_interval_bytes: self.long("index.interval.bytes", broker) as u32,
            cleanup_policy: self.cleanup_policy(broker),
            compaction: CompactionConfig {
                delete_retention_ms: self.long("delete.retention.ms", broker),
                min_cleanable_dirty_ratio: self.double("min.cleanable.dirty.ratio", broker),
                min_compaction_lag_ms: self.long("min.compaction.lag.ms", broker),
                max_compaction_lag_ms: self.long("max.compaction.lag.ms", broker),
            },
        }
    }

    pub fn min_insync_replicas(&self, broker: &BrokerConfig) -> usize {
        self.long("min.insync.replicas", broker).max(1) as usize
    }

    pub fn max_message_bytes(&self, broker: &BrokerConfig) -> usize {
        self.long("max.message.bytes", broker) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_replicas_lists_parse_like_kafkas() {
        assert_eq!(ThrottledReplicas::parse("*"), Ok(ThrottledReplicas::All));
        let listed = ThrottledReplicas::parse(" 0:1, 0:2 ,3:4").unwrap();
        assert!(listed.contains(0, 2) && listed.contains(3, 4) && !listed.contains(1, 1));
        assert!(!ThrottledReplicas::parse("").unwrap().contains(0, 1));
        for bad in ["0", "a:1", "0:-1", "0:1:2", "*,0:1"] {
            assert!(ThrottledReplicas::parse(bad).is_err(), "{bad}");
            assert!(validate_override(FOLLOWER_THROTTLED_REPLICAS, bad).is_err(), "{bad}");
        }
        assert!(validate_override(LEADER_THROTTLED_REPLICAS, "0:1,1:2").is_ok());
        let too_many: Vec<String> = (0..=MAX_THROTTLED_REPLICAS as i32).map(|p| format!("{p}:1")).collect();
        assert!(ThrottledReplicas::parse(&too_many.join(",")).is_err());
    }

    #[test]
    fn overrides_win_over_broker_defaults() {
        let broker = BrokerConfig::default();
        let mut cfg = TopicConfigs::default();
        assert_eq!(cfg.get("retention.ms", &broker).unwrap(), (broker.log_retention_ms.to_string(), false));
        cfg.overrides.insert("retention.ms".into(), "1000".into());
        assert_eq!(cfg.log_config(&broker).retention_ms, 1000);
        assert_eq!(cfg.log_config(&broker).segment_bytes, broker.log_segment_bytes);
    }

    #[test]
    fn compaction_configs_reach_the_log_config() {
        let broker = BrokerConfig::default();
        let mut cfg = TopicConfigs::default();
        let defaults = cfg.log_config(&broker);
        assert_eq!(defaults.cleanup_policy, CleanupPolicy::DELETE);
        assert_eq!(defaults.compaction, CompactionConfig::default());
        for (k, v) in [
            ("cleanup.policy", "compact,delete"),
            ("delete.retention.ms", "5"),
            ("min.cleanable.dirty.ratio", "0.25"),
            ("min.compaction.lag.ms", "7"),
            ("max.compaction.lag.ms", "9"),
        ] {
            cfg.overrides.insert(k.into(), v.into());
        }
        let log = cfg.log_config(&broker);
        assert_eq!(log.cleanup_policy, CleanupPolicy { delete: true, compact: true });
        assert_eq!(
            log.compaction,
            CompactionConfig {
                delete_retention_ms: 5,
                min_cleanable_dirty_ratio: 0.25,
                min_compaction_lag_ms: 7,
                max_compaction_lag_ms: 9
            }
        );
    }

    #[test]
    fn invalid_values_are_refused() {
        assert!(validate_override("segment.bytes", "12").is_err());
        assert!(validate_override("segment.bytes", "abc").is_err());
        for ok in ["compact", "delete", "compact,delete", "delete,compact", "delete, compact"] {
            assert!(validate_override("cleanup.policy", ok).is_ok(), "{ok}");
        }
        for bad in ["", "compact,compact", "shred", "compact;delete"] {
            assert!(validate_override("cleanup.policy", bad).is_err(), "{bad}");
        }
        assert!(validate_override("min.cleanable.dirty.ratio", "0.01").is_ok());
        assert!(validate_override("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(validate_override("delete.retention.ms", "-1").is_err());
        assert!(validate_override("max.compaction.lag.ms", "0").is_err());
        assert!(validate_override("no.such.config", "1").is_err());
        assert!(validate_override("retention.ms", "-1").is_ok());
        assert!(validate_override("unclean.leader.election.enable", "false").is_ok());
    }
}

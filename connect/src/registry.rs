//! The installed connector plugins, found by class name, alias, or the last segment of a
//! dotted class name (so `org.apache.kafka.connect.file.FileStreamSourceConnector`,
//! `FileStreamSourceConnector` and `FileStreamSource` all name the same plugin).

use std::sync::Arc;

use crate::config::{ConfigDef, ConfigType, Importance, Validator};
use crate::connector::{Connector, ConnectorType};

/// The plugins a worker can run.
#[derive(Clone)]
pub struct Registry {
    plugins: Vec<Arc<dyn Connector>>,
}

impl Registry {
    /// Every built-in plugin.
    pub fn builtin() -> Registry {
        Registry {
            plugins: vec![
                Arc::new(crate::source::file::FileStreamSourceConnector),
                Arc::new(crate::sink::file::FileStreamSinkConnector),
                Arc::new(crate::sink::parquet::ParquetSinkConnector),
                Arc::new(crate::source::jdbc::JdbcSourceConnector),
                Arc::new(crate::source::postgres_cdc::PostgresCdcSourceConnector),
                Arc::new(crate::sink::jdbc::JdbcSinkConnector),
            ],
        }
    }

    /// A registry of the given plugins (tests, embedding applications).
    pub fn new(plugins: Vec<Arc<dyn Connector>>) -> Registry {
        Registry { plugins }
    }

    /// Adds a plugin.
    pub fn register(&mut self, plugin: Arc<dyn Connector>) {
        self.plugins.push(plugin);
    }

    /// All plugins.
    pub fn plugins(&self) -> &[Arc<dyn Connector>] {
        &self.plugins
    }

    /// The plugin a `connector.class` value names.
    pub fn find(&self, class: &str) -> Option<Arc<dyn Connector>> {
        let class = class.trim();
        let short = class.rsplit('.').next().unwrap_or(class);
        let bare = short.strip_suffix("Connector").unwrap_or(short);
        self.plugins
            .iter()
            .find(|p| {
                p.class() == class
                    || p.aliases().contains(&class)
                    || p.class() == short
                    || p.class() == bare
                    || p.class().strip_suffix("Connector") == Some(bare)
            })
            .cloned()
    }
}

/// The keys the runtime reads from every connector config, before the plugin's own.
pub fn common_config_def(kind: ConnectorType) -> ConfigDef {
    let def = ConfigDef::new()
        .define("name", ConfigType::String, None, Importance::High, "Globally unique name of the connector.")
        .with_validator(Validator::NonEmpty)
        .in_group("Common")
        .define("connector.class", ConfigType::String, None, Importance::High,
            "The connector plugin: its class name (`FileStreamSource`), an alias, or Kafka's full class name.")
        .in_group("Common")
        .define("tasks.max", ConfigType::Int, Some("1"), Importance::High, "Maximum number of tasks to use for this connector.")
        .with_validator(Validator::Range { min: 1.0, max: 1024.0 })
        .in_group("Common")
        .define("key.converter", ConfigType::Class, Some(""), Importance::Low,
            "Converter for record keys: StringConverter, ByteArrayConverter or JsonConverter (empty: the worker's).")
        .in_group("Common")
        .define("value.converter", ConfigType::Class, Some(""), Importance::Low,
            "Converter for record values: StringConverter, ByteArrayConverter or JsonConverter (empty: the worker's).")
        .in_group("Common")
        .define("transforms", ConfigType::List, Some(""), Importance::Low,
            "Aliases of the transformations to apply, in order; each is configured with transforms.<alias>.type and its keys.")
        .in_group("Transforms")
        .define("predicates", ConfigType::List, Some(""), Importance::Low,
            "Aliases of predicates that transforms can be conditioned on (transforms.<alias>.predicate).")
        .in_group("Predicates");
    let def = match kind {
        ConnectorType::Sink => def
            .define("topics", ConfigType::List, Some(""), Importance::High, "Topics to consume (or topics.regex).")
            .in_group("Common")
            .define(
                "topics.regex",
                ConfigType::String,
                Some(""),
                Importance::High,
                "Regular expression of topics to consume.",
            )
            .in_group("Common"),
        ConnectorType::Source => def
            .define(
                "exactly.once.support",
                ConfigType::String,
                Some("requested"),
                Importance::Medium,
                "KIP-618: `required` fails the task unless the worker runs with exactly.once.source.support=enabled; \
                 `requested` uses it when the worker does. Every source connector here supports it.",
            )
            .with_validator(Validator::OneOf(&["requested", "required"]))
            .in_group("Exactly once")
            .define(
                "transaction.boundary",
                ConfigType::String,
                Some("poll"),
                Importance::Medium,
                "With exactly-once sources, where a task's transactions end: `poll` (each polled batch), `interval` \
                 (every transaction.boundary.interval.ms); `connector` is refused (no connector here defines its own).",
            )
            .with_validator(Validator::OneOf(&["poll", "interval", "connector"]))
            .in_group("Exactly once")
            .define(
                "transaction.boundary.interval.ms",
                ConfigType::Long,
                Some("-1"),
                Importance::Low,
                "With transaction.boundary=interval, how long a transaction stays open (-1: the worker's \
                 offset.flush.interval.ms; at most 10 minutes). The task's transaction.timeout.ms is this plus a \
                 minute.",
            )
            .with_validator(Validator::Range { min: -1.0, max: 600_000.0 })
            .in_group("Exactly once"),
    };
    def.merge(&crate::runtime::errors::config_def())
}

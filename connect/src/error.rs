//! The crate's one error type.

use thiserror::Error;

/// Result with [`ConnectError`].
pub type Result<T, E = ConnectError> = std::result::Result<T, E>;

/// Errors of spate-connect. Each message says whose fault it is: the connector config (the
/// user's), a record's bytes (the producer's), a script (its author's), the external system
/// (a file, a database), or the Kafka cluster.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// A config value is missing, of the wrong type or out of range.
    #[error("invalid config {key}: {reason} (fix the connector or worker config)")]
    Config {
        /// The config key.
        key: String,
        /// Why it is refused.
        reason: String,
    },

    /// No plugin with this class name or alias.
    #[error("unknown connector class {class} (see GET /connector-plugins for the installed ones)")]
    UnknownPlugin {
        /// The class asked for.
        class: String,
    },

    /// A record's key or value does not convert with the configured converter.
    #[error("cannot convert {what} with {converter}: {reason} (the record's producer wrote something else)")]
    Conversion {
        /// "key", "value" or "header".
        what: &'static str,
        /// The converter's name.
        converter: &'static str,
        /// Why.
        reason: String,
    },

    /// A transform or predicate refused a record (bad field, wrong type, script error or limit).
    #[error("transform {name} failed: {reason} (the record does not fit the transform's config or script)")]
    Transform {
        /// The transform's alias in the chain.
        name: String,
        /// Why.
        reason: String,
    },

    /// The external system a connector reads or writes failed (file I/O, database).
    #[error("{connector} failed on {what}: {reason}")]
    External {
        /// Which connector.
        connector: String,
        /// What it was doing, e.g. "reading /var/log/app.log".
        what: String,
        /// The underlying error.
        reason: String,
    },

    /// A Kafka client call failed (produce, fetch, commit, metadata).
    #[error("kafka: {0}")]
    Kafka(#[from] spate_client::Error),

    /// A connector, task or offset that does not exist.
    #[error("{0} not found")]
    NotFound(String),

    /// A request that conflicts with the cluster's state (a rebalance in progress, a connector
    /// that already exists, a write on a worker that is not the leader).
    #[error("{0}")]
    Conflict(String),

    /// The worker is stopping.
    #[error("the worker is stopping")]
    Stopping,

    /// Our own broken invariant, or an I/O error with no better place.
    #[error("{0}")]
    Internal(String),
}

impl ConnectError {
    /// A config error for `key`.
    pub fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConnectError::Config { key: key.into(), reason: reason.into() }
    }

    /// A transform error for the chain entry `name`.
    pub fn transform(name: impl Into<String>, reason: impl Into<String>) -> Self {
        ConnectError::Transform { name: name.into(), reason: reason.into() }
    }

    /// An external-system error.
    pub fn external(connector: impl Into<String>, what: impl Into<String>, reason: impl ToString) -> Self {
        ConnectError::External { connector: connector.into(), what: what.into(), reason: reason.to_string() }
    }
}

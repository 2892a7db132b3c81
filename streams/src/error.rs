//! The crate's one error type.

use thiserror::Error;

/// Errors of spate-streams. Each message says whose fault it is: the bytes of a record on a
/// topic (the producer's), or the application's configuration (the caller's).
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

    /// A value could not be serialized (JSON for a type whose `Serialize` fails, e.g. a map with
    /// non-string keys): the application's type does not fit the serde.
    #[error("cannot serialize {what}: {reason} (the application's type does not fit this serde)")]
    Serialize {
        /// What was being written.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
}

impl StreamsError {
    pub(crate) fn deserialize(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Deserialize { what, reason: reason.into() }
    }

    pub(crate) fn invalid_window(what: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidWindow { what, reason: reason.into() }
    }
}

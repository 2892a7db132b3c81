//! The client crate's error type. Peer input that cannot be understood becomes a
//! [`ProtocolError`]; everything the async client can fail with is an [`Error`].

use crate::protocol::ErrorCode;

/// Errors from decoding or validating bytes that came from a peer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("frame size {size} exceeds the limit of {max} bytes")]
    FrameTooLarge { size: usize, max: usize },
    #[error("frame size {size} is negative")]
    NegativeFrameSize { size: i32 },
    #[error("unknown api key {api_key}")]
    UnknownApiKey { api_key: i16 },
    #[error("{api} v{version} is not supported")]
    UnsupportedVersion { api: &'static str, version: i16 },
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("record batch at byte {position}: {reason}")]
    CorruptBatch { position: usize, reason: String },
    #[error("record batch at byte {position} has crc {actual:#010x}, expected {expected:#010x}")]
    CrcMismatch { position: usize, expected: u32, actual: u32 },
    #[error("unsupported compression codec {codec}")]
    UnsupportedCompression { codec: i16 },
    #[error("{codec} data would decompress past the limit of {max} bytes")]
    DecompressedTooLarge { codec: &'static str, max: usize },
    #[error("{codec} data is corrupt: {reason}")]
    Decompression { codec: &'static str, reason: String },
}

impl ProtocolError {
    pub(crate) fn malformed(what: &'static str, reason: impl std::fmt::Display) -> Self {
        ProtocolError::Malformed { what, reason: reason.to_string() }
    }
}

/// Errors of the async client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("protocol error talking to {peer}: {source}")]
    Protocol { peer: String, source: ProtocolError },
    #[error("i/o error talking to {peer}: {source}")]
    Io { peer: String, source: std::io::Error },
    #[error("could not connect to any bootstrap server ({servers}): {reason}")]
    NoBootstrap { servers: String, reason: String },
    #[error("connection to {peer} is closed")]
    ConnectionClosed { peer: String },
    #[error("request to {peer} timed out after {timeout_ms} ms")]
    Timeout { peer: String, timeout_ms: u64 },
    #[error("broker returned {code} for {context}")]
    Broker { code: ErrorCode, context: String },
    #[error("{0}")]
    Config(String),
    #[error("producer is closed")]
    ProducerClosed,
    #[error("record of {size} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { size: usize, max: usize },
    #[error("topic {topic} has no partition {partition}")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("encoding {what} failed: {reason}")]
    Encode { what: &'static str, reason: String },
}

impl Error {
    /// Whether retrying the same request later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Io { .. } | Error::ConnectionClosed { .. } | Error::Timeout { .. } => true,
            Error::Broker { code, .. } => code.is_retriable(),
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

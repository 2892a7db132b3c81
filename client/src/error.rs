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
    #[error("connection to {peer} was lost: {reason}")]
    ConnectionLost { peer: String, reason: String },
    #[error("{peer} supports {api} v{broker_min}..=v{broker_max}, this client v{client_min}..=v{client_max}")]
    UnsupportedApi {
        peer: String,
        api: &'static str,
        client_min: i16,
        client_max: i16,
        broker_min: i16,
        broker_max: i16,
    },
    #[error("{peer} does not support {api}")]
    ApiNotSupported { peer: String, api: &'static str },
    #[error("broker {node_id} is not in the cluster metadata")]
    UnknownBroker { node_id: i32 },
    #[error("no leader is known for {topic}-{partition}")]
    LeaderNotAvailable { topic: String, partition: i32 },
    #[error("topic {topic} does not exist")]
    UnknownTopic { topic: String },
    #[error("delivery to {topic}-{partition} failed: {source}")]
    Delivery { topic: String, partition: i32, source: std::sync::Arc<Error> },
    #[error("batch for {topic}-{partition} expired after {waited_ms} ms (delivery.timeout.ms)")]
    DeliveryTimeout { topic: String, partition: i32, waited_ms: u64 },
    #[error("buffer.memory stayed full for {waited_ms} ms (max.block.ms)")]
    BufferFull { waited_ms: u64 },
    #[error("no offset is stored for {topic}-{partition} and auto.offset.reset is none")]
    NoOffsetForPartition { topic: String, partition: i32 },
    #[error("{topic}-{partition} is not assigned to this consumer")]
    NotAssigned { topic: String, partition: i32 },
    /// `poll_batches` after a `poll` that left decoded records of a partition buffered: the
    /// caller's use, one consumer should use one of them.
    #[error("poll_batches cannot hand out {topic}-{partition}: a poll left records of it decoded (use one of poll and poll_batches on a consumer)")]
    MixedPoll { topic: String, partition: i32 },
    /// A transactional call on a producer without `transactional.id`.
    #[error("{operation} needs a producer with a transactional.id")]
    NotTransactional { operation: &'static str },
    /// A transactional call out of order: `begin_transaction` twice, `commit_transaction`
    /// without `begin_transaction`, `send` outside a transaction, ...
    #[error("{operation} is not allowed while the producer's transaction state is {state}")]
    InvalidTransactionState { operation: &'static str, state: &'static str },
    /// The current transaction cannot commit (a send in it failed, the coordinator refused
    /// it, ...): call `abort_transaction`, after which `begin_transaction` works again.
    #[error("the transaction must be aborted: {source}")]
    TransactionAbortable { source: std::sync::Arc<Error> },
    /// The transactional producer cannot go on (fenced by a newer instance with the same
    /// transactional.id, not authorized, ...): every later call fails with this error; close it.
    #[error("the transactional producer failed for good: {source}")]
    TransactionFatal { source: std::sync::Arc<Error> },
    /// The record's transaction was aborted before it was sent.
    #[error("the transaction was aborted before the record was sent")]
    TransactionAborted,
}

impl Error {
    /// Whether retrying the same request later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Io { .. }
            | Error::ConnectionClosed { .. }
            | Error::ConnectionLost { .. }
            | Error::Timeout { .. }
            | Error::NoBootstrap { .. }
            | Error::UnknownBroker { .. }
            | Error::LeaderNotAvailable { .. } => true,
            Error::Delivery { source, .. } => source.is_retriable(),
            Error::Broker { code, .. } => code.is_retriable(),
            _ => false,
        }
    }
}

impl Error {
    /// A broker error code with what it answered.
    pub(crate) fn broker(code: ErrorCode, context: impl Into<String>) -> Self {
        Error::Broker { code, context: context.into() }
    }

    /// The Kafka error code behind this error, if a broker sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Broker { code, .. } => Some(*code),
            Error::Delivery { source, .. }
            | Error::TransactionAbortable { source }
            | Error::TransactionFatal { source } => source.code(),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

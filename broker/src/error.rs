//! The broker's error type, and the one place domain errors become Kafka error codes.

use spate_client::protocol::ErrorCode;

use crate::log::LogError;
use crate::producer_state::ProducerStateError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid config {key}: {reason}")]
    InvalidConfig { key: String, reason: String },
    #[error("topic {topic} does not exist")]
    UnknownTopic { topic: String },
    #[error("topic {topic} has no partition {partition}")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("topic {topic} already exists")]
    TopicExists { topic: String },
    #[error("invalid topic name '{topic}': {reason}")]
    InvalidTopic { topic: String, reason: String },
    #[error("invalid partition count {count} for {topic}: {reason}")]
    InvalidPartitions { topic: String, count: i32, reason: String },
    #[error("invalid replication factor {factor}: this cluster has {brokers} broker(s)")]
    InvalidReplicationFactor { factor: i32, brokers: usize },
    #[error("topic deletion is disabled (delete.topic.enable=false)")]
    TopicDeletionDisabled,
    #[error("record batch of {size} bytes exceeds max.message.bytes {max} of {topic}")]
    MessageTooLarge { topic: String, size: usize, max: u32 },
    #[error("corrupt record batch for {topic}-{partition}: {reason}")]
    CorruptMessage { topic: String, partition: i32, reason: String },
    #[error("invalid record for {topic}-{partition}: {reason}")]
    InvalidRecord { topic: String, partition: i32, reason: String },
    /// KIP-890: the producer wrote to a partition its transaction does not hold (a client bug,
    /// or the transaction ended before the write arrived).
    #[error("transactional write to {topic}-{partition} refused: {reason}")]
    InvalidTxnState { topic: String, partition: i32, reason: String },
    /// A transient condition on this broker the producer should retry (Kafka maps coordinator
    /// trouble during transaction verification to this retriable code).
    #[error("retry later: {reason}")]
    NotEnoughReplicas { reason: String },
    #[error("broker has reached max.partitions ({max})")]
    TooManyPartitions { max: usize },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    ProducerState(#[from] ProducerStateError),
    #[error("i/o error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("metadata file {path} is corrupt: {reason}")]
    CorruptMetadata { path: String, reason: String },
    /// The metadata quorum refused or could not run a request; `code` is what the client sees.
    #[error("controller: {message}")]
    Controller { code: ErrorCode, message: String },
    /// The broker's storage failed (an fsync), not the request: see `log_dir`.
    #[error(
        "log directory {dir} is offline after an i/o failure on this broker; it recovers when the broker restarts"
    )]
    LogDirOffline { dir: String },
    #[error("this broker is not the leader of {topic}-{partition}")]
    NotLeaderOrFollower { topic: String, partition: i32 },
    #[error("leader epoch {request_epoch} for {topic}-{partition} is older than the current {current_epoch}")]
    FencedLeaderEpoch { topic: String, partition: i32, request_epoch: i32, current_epoch: i32 },
    #[error("leader epoch {request_epoch} for {topic}-{partition} is newer than the current {current_epoch}")]
    UnknownLeaderEpoch { topic: String, partition: i32, request_epoch: i32, current_epoch: i32 },
}

impl BrokerError {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        BrokerError::Io { path: path.as_ref().display().to_string(), source }
    }

    /// The Kafka error code a client receives for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::InvalidConfig { .. } => ErrorCode::INVALID_CONFIG,
            BrokerError::UnknownTopic { .. } | BrokerError::UnknownPartition { .. } => {
                ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
            }
            BrokerError::TopicExists { .. } => ErrorCode::TOPIC_ALREADY_EXISTS,
            BrokerError::InvalidTopic { .. } => ErrorCode::INVALID_TOPIC_EXCEPTION,
            BrokerError::InvalidPartitions { .. } => ErrorCode::INVALID_PARTITIONS,
            BrokerError::InvalidReplicationFactor { .. } => ErrorCode::INVALID_REPLICATION_FACTOR,
            BrokerError::TopicDeletionDisabled => ErrorCode::TOPIC_DELETION_DISABLED,
            BrokerError::MessageTooLarge { .. } => ErrorCode::MESSAGE_TOO_LARGE,
            BrokerError::CorruptMessage { .. } => ErrorCode::CORRUPT_MESSAGE,
            BrokerError::InvalidRecord { .. } => ErrorCode::INVALID_RECORD,
            BrokerError::InvalidTxnState { .. } => ErrorCode::INVALID_TXN_STATE,
            BrokerError::NotEnoughReplicas { .. } => ErrorCode::NOT_ENOUGH_REPLICAS,
            BrokerError::TooManyPartitions { .. } => ErrorCode::POLICY_VIOLATION,
            BrokerError::Log(LogError::OffsetOutOfRange { .. }) => ErrorCode::OFFSET_OUT_OF_RANGE,
            BrokerError::Log(_)
            | BrokerError::Io { .. }
            | BrokerError::CorruptMetadata { .. }
            | BrokerError::LogDirOffline { .. } => ErrorCode::KAFKA_STORAGE_ERROR,
            BrokerError::ProducerState(e) => crate::producer_state::error_code(e),
            BrokerError::Controller { code, .. } => *code,
            BrokerError::NotLeaderOrFollower { .. } => ErrorCode::NOT_LEADER_OR_FOLLOWER,
            BrokerError::FencedLeaderEpoch { .. } => ErrorCode::FENCED_LEADER_EPOCH,
            BrokerError::UnknownLeaderEpoch { .. } => ErrorCode::UNKNOWN_LEADER_EPOCH,
        }
    }
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

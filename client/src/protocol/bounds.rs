//! A bounds pass over request and response bodies, run before the generated decoders.
//!
//! The `kafka-protocol` decoders reserve `Vec::with_capacity(count)` with the element count a
//! peer sent, before reading a single element. A 4-byte Metadata v1 body holding a topic count
//! of `0x7fffffff` asks for ~150 GB, the allocation fails, and Rust aborts the process: one
//! tiny request kills the broker, and one tiny response kills a client or a broker's replica
//! fetcher. The crate cannot be told to bound that, so this module walks the body first,
//! following the same schemas, and refuses any array whose count times the smallest possible
//! encoded element exceeds the bytes left after it. Once a body passes, every reservation the
//! decoder makes is at most `bytes left / smallest element * size_of::<T>()`, i.e.
//! proportional to the frame size, which [`super::frame::decode_frame`] already bounds.
//!
//! The schemas below mirror the decoders of `kafka-protocol` 0.18.0 (the exact workspace pin)
//! for the request types the broker decodes, and `responses.rs` those of the responses the
//! client and the broker's replica fetcher decode, in every version that crate supports. Tests
//! encode populated messages of every version and assert the walk ends exactly where the
//! encoding does; the `request_decoder` and `response_decoder` fuzz targets check the same on
//! arbitrary input. Supporting a new API means adding its request and response schemas here.

mod responses;

use super::ApiKey;
use crate::error::ProtocolError;

/// The `what` of the [`ProtocolError::Malformed`] this pass returns when an array count in a
/// request cannot fit in the bytes that follow it (as opposed to a body that is merely
/// truncated or invalid).
pub const ARRAY_TOO_LONG: &str = "request array";

/// As [`ARRAY_TOO_LONG`], for a response: the broker that sent it is at fault.
pub const RESPONSE_ARRAY_TOO_LONG: &str = "response array";

const ANY: i16 = i16::MAX;

/// The shape of one field on the wire. Whether strings, bytes and arrays use the compact
/// (varint) encoding follows from the message's flexible versions.
#[derive(Clone, Copy)]
enum Ty {
    /// Integers, booleans, UUIDs: a fixed number of bytes.
    Fixed(usize),
    /// `int16` length (or compact `uvarint` length + 1); `-1` / `0` is null.
    String,
    /// `int32` length (or compact `uvarint` length + 1); `-1` / `0` is null.
    Bytes,
    /// `int32` count (or compact `uvarint` count + 1); `-1` / `0` is null.
    Array(&'static Ty),
    Struct(&'static Struct),
}

/// A field present in versions `min..=max`.
struct Field {
    min: i16,
    max: i16,
    ty: Ty,
}

/// A tagged field the generated decoder parses itself (in versions `min..=max`; it refuses the
/// tag in other versions). Other tags are skipped by their size.
struct Tagged {
    tag: u32,
    min: i16,
    max: i16,
    ty: Ty,
}

struct Struct {
    fields: &'static [Field],
    tagged: &'static [Tagged],
}

struct Message {
    name: &'static str,
    min_version: i16,
    max_version: i16,
    flexible_from: i16,
    body: Struct,
}

const fn f(min: i16, max: i16, ty: Ty) -> Field {
    Field { min, max, ty }
}

const INT8: Ty = Ty::Fixed(1);
const BOOL: Ty = Ty::Fixed(1);
const INT16: Ty = Ty::Fixed(2);
const INT32: Ty = Ty::Fixed(4);
const INT64: Ty = Ty::Fixed(8);
const UUID: Ty = Ty::Fixed(16);

static API_VERSIONS: Message = Message {
    name: "ApiVersions",
    min_version: 0,
    max_version: 4,
    flexible_from: 3,
    // client_software_name, client_software_version
    body: Struct { fields: &[f(3, ANY, Ty::String), f(3, ANY, Ty::String)], tagged: &[] },
};

// topic_id, name
static METADATA_TOPIC: Struct = Struct { fields: &[f(10, ANY, UUID), f(0, ANY, Ty::String)], tagged: &[] };
static METADATA: Message = Message {
    name: "Metadata",
    min_version: 0,
    max_version: 13,
    flexible_from: 9,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::Array(&Ty::Struct(&METADATA_TOPIC))), // topics
            f(4, ANY, BOOL),                                    // allow_auto_topic_creation
            f(8, 10, BOOL),                                     // include_cluster_authorized_operations
            f(8, ANY, BOOL),                                    // include_topic_authorized_operations
        ],
        tagged: &[],
    },
};

// index, records
static PRODUCE_PARTITION: Struct = Struct { fields: &[f(0, ANY, INT32), f(0, ANY, Ty::Bytes)], tagged: &[] };
static PRODUCE_TOPIC: Struct = Struct {
    fields: &[
        f(0, 12, Ty::String),                                  // name
        f(13, ANY, UUID),                                      // topic_id
        f(0, ANY, Ty::Array(&Ty::Struct(&PRODUCE_PARTITION))), // partition_data
    ],
    tagged: &[],
};
static PRODUCE: Message = Message {
    name: "Produce",
    min_version: 3,
    max_version: 13,
    flexible_from: 9,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::String),                             // transactional_id
            f(0, ANY, INT16),                                  // acks
            f(0, ANY, INT32),                                  // timeout_ms
            f(0, ANY, Ty::Array(&Ty::Struct(&PRODUCE_TOPIC))), // topic_data
        ],
        tagged: &[],
    },
};

static FETCH_PARTITION: Struct = Struct {
    fields: &[
        f(0, ANY, INT32),  // partition
        f(9, ANY, INT32),  // current_leader_epoch
        f(0, ANY, INT64),  // fetch_offset
        f(12, ANY, INT32), // last_fetched_epoch
        f(5, ANY, INT64),  // log_start_offset
        f(0, ANY, INT32),  // partition_max_bytes
    ],
    tagged: &[
        Tagged { tag: 0, min: 17, max: ANY, ty: UUID },  // replica_directory_id
        Tagged { tag: 1, min: 18, max: ANY, ty: INT64 }, // high_watermark
    ],
};
static FETCH_TOPIC: Struct = Struct {
    fields: &[
        f(0, 12, Ty::String),                                // topic
        f(13, ANY, UUID),                                    // topic_id
        f(0, ANY, Ty::Array(&Ty::Struct(&FETCH_PARTITION))), // partitions
    ],
    tagged: &[],
};
static FORGOTTEN_TOPIC: Struct = Struct {
    fields: &[
        f(7, 12, Ty::String),         // topic
        f(13, ANY, UUID),             // topic_id
        f(7, ANY, Ty::Array(&INT32)), // partitions
    ],
    tagged: &[],
};
// replica_id, replica_epoch
static REPLICA_STATE: Struct = Struct { fields: &[f(15, ANY, INT32), f(15, ANY, INT64)], tagged: &[] };
static FETCH: Message = Message {
    name: "Fetch",
    min_version: 4,
    max_version: 18,
    flexible_from: 12,
    body: Struct {
        fields: &[
            f(0, 14, INT32),                                     // replica_id
            f(0, ANY, INT32),                                    // max_wait_ms
            f(0, ANY, INT32),                                    // min_bytes
            f(3, ANY, INT32),                                    // max_bytes
            f(4, ANY, INT8),                                     // isolation_level
            f(7, ANY, INT32),                                    // session_id
            f(7, ANY, INT32),                                    // session_epoch
            f(0, ANY, Ty::Array(&Ty::Struct(&FETCH_TOPIC))),     // topics
            f(7, ANY, Ty::Array(&Ty::Struct(&FORGOTTEN_TOPIC))), // forgotten_topics_data
            f(11, ANY, Ty::String),                              // rack_id
        ],
        tagged: &[
            // The decoder reads cluster_id in every flexible version.
            Tagged { tag: 0, min: 12, max: ANY, ty: Ty::String },
            Tagged { tag: 1, min: 15, max: ANY, ty: Ty::Struct(&REPLICA_STATE) },
        ],
    },
};

static LIST_OFFSETS_PARTITION: Struct = Struct {
    fields: &[
        f(0, ANY, INT32), // partition_index
        f(4, ANY, INT32), // current_leader_epoch
        f(0, ANY, INT64), // timestamp
    ],
    tagged: &[],
};
static LIST_OFFSETS_TOPIC: Struct = Struct {
    fields: &[
        f(0, ANY, Ty::String),                                      // name
        f(0, ANY, Ty::Array(&Ty::Struct(&LIST_OFFSETS_PARTITION))), // partitions
    ],
    tagged: &[],
};
static LIST_OFFSETS: Message = Message {
    name: "ListOffsets",
    min_version: 1,
    max_version: 10,
    flexible_from: 6,
    body: Struct {
        fields: &[
            f(0, ANY, INT32),                                       // replica_id
            f(2, ANY, INT8),                                        // isolation_level
            f(0, ANY, Ty::Array(&Ty::Struct(&LIST_OFFSETS_TOPIC))), // topics
            f(10, ANY, INT32),                                      // timeout_ms
        ],
        tagged: &[],
    },
};

// partition_index, broker_ids
static CREATABLE_ASSIGNMENT: Struct = Struct { fields: &[f(0, ANY, INT32), f(0, ANY, Ty::Array(&INT32))], tagged: &[] };
// name, value
static CREATABLE_CONFIG: Struct = Struct { fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::String)], tagged: &[] };
static CREATABLE_TOPIC: Struct = Struct {
    fields: &[
        f(0, ANY, Ty::String),                                    // name
        f(0, ANY, INT32),                                         // num_partitions
        f(0, ANY, INT16),                                         // replication_factor
        f(0, ANY, Ty::Array(&Ty::Struct(&CREATABLE_ASSIGNMENT))), // assignments
        f(0, ANY, Ty::Array(&Ty::Struct(&CREATABLE_CONFIG))),     // configs
    ],
    tagged: &[],
};
static CREATE_TOPICS: Message = Message {
    name: "CreateTopics",
    min_version: 2,
    max_version: 7,
    flexible_from: 5,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::Array(&Ty::Struct(&CREATABLE_TOPIC))), // topics
            f(0, ANY, INT32),                                    // timeout_ms
            f(0, ANY, BOOL),                                     // validate_only
        ],
        tagged: &[],
    },
};

// name, topic_id
static DELETE_TOPIC_STATE: Struct = Struct { fields: &[f(6, ANY, Ty::String), f(6, ANY, UUID)], tagged: &[] };
static DELETE_TOPICS: Message = Message {
    name: "DeleteTopics",
    min_version: 1,
    max_version: 6,
    flexible_from: 4,
    body: Struct {
        fields: &[
            f(6, ANY, Ty::Array(&Ty::Struct(&DELETE_TOPIC_STATE))), // topics
            f(0, 5, Ty::Array(&Ty::String)),                        // topic_names
            f(0, ANY, INT32),                                       // timeout_ms
        ],
        tagged: &[],
    },
};

// broker_ids
static CREATE_PARTITIONS_ASSIGNMENT: Struct = Struct { fields: &[f(0, ANY, Ty::Array(&INT32))], tagged: &[] };
static CREATE_PARTITIONS_TOPIC: Struct = Struct {
    fields: &[
        f(0, ANY, Ty::String),                                            // name
        f(0, ANY, INT32),                                                 // count
        f(0, ANY, Ty::Array(&Ty::Struct(&CREATE_PARTITIONS_ASSIGNMENT))), // assignments
    ],
    tagged: &[],
};
static CREATE_PARTITIONS: Message = Message {
    name: "CreatePartitions",
    min_version: 0,
    max_version: 3,
    flexible_from: 2,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::Array(&Ty::Struct(&CREATE_PARTITIONS_TOPIC))), // topics
            f(0, ANY, INT32),                                            // timeout_ms
            f(0, ANY, BOOL),                                             // validate_only
        ],
        tagged: &[],
    },
};

static DESCRIBE_CONFIGS_RESOURCE: Struct = Struct {
    fields: &[
        f(0, ANY, INT8),                   // resource_type
        f(0, ANY, Ty::String),             // resource_name
        f(0, ANY, Ty::Array(&Ty::String)), // configuration_keys
    ],
    tagged: &[],
};
static DESCRIBE_CONFIGS: Message = Message {
    name: "DescribeConfigs",
    min_version: 1,
    max_version: 4,
    flexible_from: 4,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::Array(&Ty::Struct(&DESCRIBE_CONFIGS_RESOURCE))), // resources
            f(0, ANY, BOOL),                                               // include_synonyms
            f(3, ANY, BOOL),                                               // include_documentation
        ],
        tagged: &[],
    },
};

// name, config_operation, value
static ALTERABLE_CONFIG: Struct =
    Struct { fields: &[f(0, ANY, Ty::String), f(0, ANY, INT8), f(0, ANY, Ty::String)], tagged: &[] };
static ALTER_CONFIGS_RESOURCE: Struct = Struct {
    fields: &[
        f(0, ANY, INT8),                                      // resource_type
        f(0, ANY, Ty::String),                                // resource_name
        f(0, ANY, Ty::Array(&Ty::Struct(&ALTERABLE_CONFIG))), // configs
    ],
    tagged: &[],
};
static INCREMENTAL_ALTER_CONFIGS: Message = Message {
    name: "IncrementalAlterConfigs",
    min_version: 0,
    max_version: 1,
    flexible_from: 1,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::Array(&Ty::Struct(&ALTER_CONFIGS_RESOURCE))), // resources
            f(0, ANY, BOOL),                                            // validate_only
        ],
        tagged: &[],
    },
};

static INIT_PRODUCER_ID: Message = Message {
    name: "InitProducerId",
    min_version: 0,
    max_version: 5,
    flexible_from: 2,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::String), // transactional_id
            f(0, ANY, INT32),      // transaction_timeout_ms
            f(3, ANY, INT64),      // producer_id
            f(3, ANY, INT16),      // producer_epoch
        ],
        tagged: &[],
    },
};

// Consumer-group coordinator requests.

static FIND_COORDINATOR: Message = Message {
    name: "FindCoordinator",
    min_version: 0,
    max_version: 6,
    flexible_from: 3,
    body: Struct {
        fields: &[
            f(0, 3, Ty::String),               // key
            f(1, ANY, INT8),                   // key_type
            f(4, ANY, Ty::Array(&Ty::String)), // coordinator_keys
        ],
        tagged: &[],
    },
};

// name, metadata
static JOIN_GROUP_PROTOCOL: Struct = Struct { fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::Bytes)], tagged: &[] };
static JOIN_GROUP: Message = Message {
    name: "JoinGroup",
    min_version: 0,
    max_version: 9,
    flexible_from: 6,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::String),                                   // group_id
            f(0, ANY, INT32),                                        // session_timeout_ms
            f(1, ANY, INT32),                                        // rebalance_timeout_ms
            f(0, ANY, Ty::String),                                   // member_id
            f(5, ANY, Ty::String),                                   // group_instance_id
            f(0, ANY, Ty::String),                                   // protocol_type
            f(0, ANY, Ty::Array(&Ty::Struct(&JOIN_GROUP_PROTOCOL))), // protocols
            f(8, ANY, Ty::String),                                   // reason
        ],
        tagged: &[],
    },
};

// member_id, assignment
static SYNC_GROUP_ASSIGNMENT: Struct = Struct { fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::Bytes)], tagged: &[] };
static SYNC_GROUP: Message = Message {
    name: "SyncGroup",
    min_version: 0,
    max_version: 5,
    flexible_from: 4,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::String),                                     // group_id
            f(0, ANY, INT32),                                          // generation_id
            f(0, ANY, Ty::String),                                     // member_id
            f(3, ANY, Ty::String),                                     // group_instance_id
            f(5, ANY, Ty::String),                                     // protocol_type
            f(5, ANY, Ty::String),                                     // protocol_name
            f(0, ANY, Ty::Array(&Ty::Struct(&SYNC_GROUP_ASSIGNMENT))), // assignments
        ],
        tagged: &[],
    },
};

static HEARTBEAT: Message = Message {
    name: "Heartbeat",
    min_version: 0,
    max_version: 4,
    flexible_from: 4,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::String), // group_id
            f(0, ANY, INT32),      // generation_id
            f(0, ANY, Ty::String), // member_id
            f(3, ANY, Ty::String), // group_instance_id
        ],
        tagged: &[],
    },
};

// member_id, group_instance_id, reason
static LEAVE_GROUP_MEMBER: Struct =
    Struct { fields: &[f(3, ANY, Ty::String), f(3, ANY, Ty::String), f(5, ANY, Ty::String)], tagged: &[] };
static LEAVE_GROUP: Message = Message {
    name: "LeaveGroup",
    min_version: 0,
    max_version: 5,
    flexible_from: 4,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::String),                                  // group_id
            f(0, 2, Ty::String),                                    // member_id
            f(3, ANY, Ty::Array(&Ty::Struct(&LEAVE_GROUP_MEMBER))), // members
        ],
        tagged: &[],
    },
};

static OFFSET_COMMIT_PARTITION: Struct = Struct {
    fields: &[
        f(0, ANY, INT32),      // partition_index
        f(0, ANY, INT64),      // committed_offset
        f(6, ANY, INT32),      // committed_leader_epoch
        f(0, ANY, Ty::String), // committed_metadata
    ],
    tagged: &[],
};
static OFFSET_COMMIT_TOPIC: Struct = Struct {
    fields: &[
        f(0, ANY, Ty::String),                                       // name
        f(0, ANY, Ty::Array(&Ty::Struct(&OFFSET_COMMIT_PARTITION))), // partitions
    ],
    tagged: &[],
};
static OFFSET_COMMIT: Message = Message {
    name: "OffsetCommit",
    min_version: 2,
    max_version: 9,
    flexible_from: 8,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::String),                                   // group_id
            f(0, ANY, INT32),                                        // generation_id_or_member_epoch
            f(0, ANY, Ty::String),                                   // member_id
            f(7, ANY, Ty::String),                                   // group_instance_id
            f(0, 4, INT64),                                          // retention_time_ms
            f(0, ANY, Ty::Array(&Ty::Struct(&OFFSET_COMMIT_TOPIC))), // topics
        ],
        tagged: &[],
    },
};

// name, partition_indexes
static OFFSET_FETCH_TOPIC: Struct =
    Struct { fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::Array(&INT32))], tagged: &[] };
static OFFSET_FETCH_GROUP: Struct = Struct {
    fields: &[
        f(0, ANY, Ty::String),                                  // group_id
        f(9, ANY, Ty::String),                                  // member_id
        f(9, ANY, INT32),                                       // member_epoch
        f(0, ANY, Ty::Array(&Ty::Struct(&OFFSET_FETCH_TOPIC))), // topics
    ],
    tagged: &[],
};
static OFFSET_FETCH: Message = Message {
    name: "OffsetFetch",
    min_version: 1,
    max_version: 9,
    flexible_from: 6,
    body: Struct {
        fields: &[
            f(0, 7, Ty::String),                                    // group_id
            f(0, 7, Ty::Array(&Ty::Struct(&OFFSET_FETCH_TOPIC))),   // topics
            f(8, ANY, Ty::Array(&Ty::Struct(&OFFSET_FETCH_GROUP))), // groups
            f(7, ANY, BOOL),                                        // require_stable
        ],
        tagged: &[],
    },
};

static DESCRIBE_GROUPS: Message = Message {
    name: "DescribeGroups",
    min_version: 0,
    max_version: 6,
    flexible_from: 5,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::Array(&Ty::String)), // groups
            f(3, ANY, BOOL),                   // include_authorized_operations
        ],
        tagged: &[],
    },
};

static LIST_GROUPS: Message = Message {
    name: "ListGroups",
    min_version: 0,
    max_version: 5,
    flexible_from: 3,
    body: Struct {
        fields: &[
            f(4, ANY, Ty::Array(&Ty::String)), // states_filter
            f(5, ANY, Ty::Array(&Ty::String)), // types_filter
        ],
        tagged: &[],
    },
};

static DELETE_GROUPS: Message = Message {
    name: "DeleteGroups",
    min_version: 0,
    max_version: 2,
    flexible_from: 2,
    // groups_names
    body: Struct { fields: &[f(0, ANY, Ty::Array(&Ty::String))], tagged: &[] },
};

// partition_index
static OFFSET_DELETE_PARTITION: Struct = Struct { fields: &[f(0, ANY, INT32)], tagged: &[] };
static OFFSET_DELETE_TOPIC: Struct = Struct {
    fields: &[
        f(0, ANY, Ty::String),                                       // name
        f(0, ANY, Ty::Array(&Ty::Struct(&OFFSET_DELETE_PARTITION))), // partitions
    ],
    tagged: &[],
};
static OFFSET_DELETE: Message = Message {
    name: "OffsetDelete",
    min_version: 0,
    max_version: 0,
    // No flexible version exists.
    flexible_from: ANY,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::String),                                   // group_id
            f(0, ANY, Ty::Array(&Ty::Struct(&OFFSET_DELETE_TOPIC))), // topics
        ],
        tagged: &[],
    },
};

// partition, current_leader_epoch, leader_epoch
static OFFSET_FOR_LEADER_PARTITION: Struct =
    Struct { fields: &[f(0, ANY, INT32), f(0, ANY, INT32), f(0, ANY, INT32)], tagged: &[] };
static OFFSET_FOR_LEADER_TOPIC: Struct = Struct {
    fields: &[
        f(0, ANY, Ty::String),                                           // topic
        f(0, ANY, Ty::Array(&Ty::Struct(&OFFSET_FOR_LEADER_PARTITION))), // partitions
    ],
    tagged: &[],
};
static OFFSET_FOR_LEADER_EPOCH: Message = Message {
    name: "OffsetForLeaderEpoch",
    min_version: 2,
    max_version: 4,
    flexible_from: 4,
    body: Struct {
        fields: &[
            f(3, ANY, INT32),                                            // replica_id
            f(0, ANY, Ty::Array(&Ty::Struct(&OFFSET_FOR_LEADER_TOPIC))), // topics
        ],
        tagged: &[],
    },
};

// Transaction requests (KIP-98): AddPartitionsToTxn v0–3 (the client form; v4+ is the brokers'
// batched form), AddOffsetsToTxn, EndTxn, TxnOffsetCommit, WriteTxnMarkers (broker to broker),
// ListTransactions and DescribeTransactions (KIP-664).
static TXN_TOPIC: Struct = Struct { fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::Array(&INT32))], tagged: &[] };
// transactional_id, producer_id, producer_epoch, verify_only, topics
static ADD_PARTITIONS_TO_TXN_TRANSACTION: Struct = Struct {
    fields: &[
        f(0, ANY, Ty::String),
        f(0, ANY, INT64),
        f(0, ANY, INT16),
        f(0, ANY, BOOL),
        f(0, ANY, Ty::Array(&Ty::Struct(&TXN_TOPIC))),
    ],
    tagged: &[],
};
static ADD_PARTITIONS_TO_TXN: Message = Message {
    name: "AddPartitionsToTxn",
    min_version: 0,
    max_version: 4,
    flexible_from: 3,
    body: Struct {
        fields: &[
            f(4, ANY, Ty::Array(&Ty::Struct(&ADD_PARTITIONS_TO_TXN_TRANSACTION))), // transactions
            f(0, 3, Ty::String),                                                   // transactional_id
            f(0, 3, INT64),                                                        // producer_id
            f(0, 3, INT16),                                                        // producer_epoch
            f(0, 3, Ty::Array(&Ty::Struct(&TXN_TOPIC))),                           // topics
        ],
        tagged: &[],
    },
};
static ADD_OFFSETS_TO_TXN: Message = Message {
    name: "AddOffsetsToTxn",
    min_version: 0,
    max_version: 4,
    flexible_from: 3,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::String), // transactional_id
            f(0, ANY, INT64),      // producer_id
            f(0, ANY, INT16),      // producer_epoch
            f(0, ANY, Ty::String), // group_id
        ],
        tagged: &[],
    },
};
static END_TXN: Message = Message {
    name: "EndTxn",
    min_version: 0,
    max_version: 5,
    flexible_from: 3,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::String), // transactional_id
            f(0, ANY, INT64),      // producer_id
            f(0, ANY, INT16),      // producer_epoch
            f(0, ANY, BOOL),       // committed
        ],
        tagged: &[],
    },
};
// partition_index, committed_offset, committed_leader_epoch (v2+), committed_metadata
static TXN_OFFSET_COMMIT_PARTITION: Struct =
    Struct { fields: &[f(0, ANY, INT32), f(0, ANY, INT64), f(2, ANY, INT32), f(0, ANY, Ty::String)], tagged: &[] };
static TXN_OFFSET_COMMIT_TOPIC: Struct = Struct {
    fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::Array(&Ty::Struct(&TXN_OFFSET_COMMIT_PARTITION)))],
    tagged: &[],
};
static TXN_OFFSET_COMMIT: Message = Message {
    name: "TxnOffsetCommit",
    min_version: 0,
    max_version: 5,
    flexible_from: 3,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::String),                                       // transactional_id
            f(0, ANY, Ty::String),                                       // group_id
            f(0, ANY, INT64),                                            // producer_id
            f(0, ANY, INT16),                                            // producer_epoch
            f(3, ANY, INT32),                                            // generation_id
            f(3, ANY, Ty::String),                                       // member_id
            f(3, ANY, Ty::String),                                       // group_instance_id
            f(0, ANY, Ty::Array(&Ty::Struct(&TXN_OFFSET_COMMIT_TOPIC))), // topics
        ],
        tagged: &[],
    },
};
// producer_id, producer_epoch, transaction_result, topics, coordinator_epoch
static WRITABLE_TXN_MARKER: Struct = Struct {
    fields: &[
        f(0, ANY, INT64),
        f(0, ANY, INT16),
        f(0, ANY, BOOL),
        f(0, ANY, Ty::Array(&Ty::Struct(&TXN_TOPIC))),
        f(0, ANY, INT32),
    ],
    tagged: &[],
};
static WRITE_TXN_MARKERS: Message = Message {
    name: "WriteTxnMarkers",
    min_version: 1,
    max_version: 1,
    flexible_from: 1,
    body: Struct { fields: &[f(0, ANY, Ty::Array(&Ty::Struct(&WRITABLE_TXN_MARKER)))], tagged: &[] },
};
static LIST_TRANSACTIONS: Message = Message {
    name: "ListTransactions",
    min_version: 0,
    max_version: 2,
    flexible_from: 0,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::Array(&Ty::String)), // state_filters
            f(0, ANY, Ty::Array(&INT64)),      // producer_id_filters
            f(1, ANY, INT64),                  // duration_filter
            f(2, ANY, Ty::String),             // transactional_id_pattern
        ],
        tagged: &[],
    },
};
static DESCRIBE_TRANSACTIONS: Message = Message {
    name: "DescribeTransactions",
    min_version: 0,
    max_version: 0,
    flexible_from: 0,
    body: Struct { fields: &[f(0, ANY, Ty::Array(&Ty::String))], tagged: &[] },
};

// DescribeProducers (KIP-664): topics [name, partition_indexes].
static DESCRIBE_PRODUCERS: Message = Message {
    name: "DescribeProducers",
    min_version: 0,
    max_version: 0,
    flexible_from: 0,
    body: Struct { fields: &[f(0, ANY, Ty::Array(&Ty::Struct(&TXN_TOPIC)))], tagged: &[] },
};

// Cluster administration (issue 15). DescribeCluster: include_cluster_authorized_operations,
// endpoint_type (v1+), include_fenced_brokers (v2+).
static DESCRIBE_CLUSTER: Message = Message {
    name: "DescribeCluster",
    min_version: 0,
    max_version: 2,
    flexible_from: 0,
    body: Struct { fields: &[f(0, ANY, BOOL), f(1, ANY, INT8), f(2, ANY, BOOL)], tagged: &[] },
};

// partition_index, offset
static DELETE_RECORDS_PARTITION: Struct = Struct { fields: &[f(0, ANY, INT32), f(0, ANY, INT64)], tagged: &[] };
// name, partitions
static DELETE_RECORDS_TOPIC: Struct = Struct {
    fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::Array(&Ty::Struct(&DELETE_RECORDS_PARTITION)))],
    tagged: &[],
};
static DELETE_RECORDS: Message = Message {
    name: "DeleteRecords",
    min_version: 0,
    max_version: 2,
    flexible_from: 2,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::Array(&Ty::Struct(&DELETE_RECORDS_TOPIC))), // topics
            f(0, ANY, INT32),                                         // timeout_ms
        ],
        tagged: &[],
    },
};

// DescribeLogDirs: topics (nullable) [topic, partitions]; ElectLeaders' topic_partitions alike.
static DESCRIBE_LOG_DIRS: Message = Message {
    name: "DescribeLogDirs",
    min_version: 1,
    max_version: 4,
    flexible_from: 2,
    body: Struct { fields: &[f(0, ANY, Ty::Array(&Ty::Struct(&TXN_TOPIC)))], tagged: &[] },
};
static ELECT_LEADERS: Message = Message {
    name: "ElectLeaders",
    min_version: 0,
    max_version: 2,
    flexible_from: 2,
    body: Struct {
        fields: &[
            f(1, ANY, INT8),                               // election_type
            f(0, ANY, Ty::Array(&Ty::Struct(&TXN_TOPIC))), // topic_partitions
            f(0, ANY, INT32),                              // timeout_ms
        ],
        tagged: &[],
    },
};

// Legacy AlterConfigs: resources [resource_type, resource_name, configs [name, value]], validate_only.
static LEGACY_ALTERABLE_CONFIG: Struct =
    Struct { fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::String)], tagged: &[] };
static LEGACY_ALTER_CONFIGS_RESOURCE: Struct = Struct {
    fields: &[f(0, ANY, INT8), f(0, ANY, Ty::String), f(0, ANY, Ty::Array(&Ty::Struct(&LEGACY_ALTERABLE_CONFIG)))],
    tagged: &[],
};
static ALTER_CONFIGS: Message = Message {
    name: "AlterConfigs",
    min_version: 0,
    max_version: 2,
    flexible_from: 2,
    body: Struct {
        fields: &[f(0, ANY, Ty::Array(&Ty::Struct(&LEGACY_ALTER_CONFIGS_RESOURCE))), f(0, ANY, BOOL)],
        tagged: &[],
    },
};

// DescribeAcls: resource_type_filter, resource_name_filter, pattern_type_filter (v1+),
// principal_filter, host_filter, operation, permission_type.
static DESCRIBE_ACLS: Message = Message {
    name: "DescribeAcls",
    min_version: 1,
    max_version: 3,
    flexible_from: 2,
    body: Struct {
        fields: &[
            f(0, ANY, INT8),
            f(0, ANY, Ty::String),
            f(1, ANY, INT8),
            f(0, ANY, Ty::String),
            f(0, ANY, Ty::String),
            f(0, ANY, INT8),
            f(0, ANY, INT8),
        ],
        tagged: &[],
    },
};

// AlterPartitionReassignments: timeout_ms, allow_replication_factor_change (v1+), topics [name,
// partitions [partition_index, replicas (nullable)]].
static REASSIGNABLE_PARTITION: Struct =
    Struct { fields: &[f(0, ANY, INT32), f(0, ANY, Ty::Array(&INT32))], tagged: &[] };
static REASSIGNABLE_TOPIC: Struct = Struct {
    fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::Array(&Ty::Struct(&REASSIGNABLE_PARTITION)))],
    tagged: &[],
};
static ALTER_PARTITION_REASSIGNMENTS: Message = Message {
    name: "AlterPartitionReassignments",
    min_version: 0,
    max_version: 1,
    flexible_from: 0,
    body: Struct {
        fields: &[f(0, ANY, INT32), f(1, ANY, BOOL), f(0, ANY, Ty::Array(&Ty::Struct(&REASSIGNABLE_TOPIC)))],
        tagged: &[],
    },
};
// ListPartitionReassignments: timeout_ms, topics (nullable) [name, partition_indexes].
static LIST_PARTITION_REASSIGNMENTS: Message = Message {
    name: "ListPartitionReassignments",
    min_version: 0,
    max_version: 0,
    flexible_from: 0,
    body: Struct { fields: &[f(0, ANY, INT32), f(0, ANY, Ty::Array(&Ty::Struct(&TXN_TOPIC)))], tagged: &[] },
};

// DescribeUserScramCredentials: users (nullable) [name].
static SCRAM_USER: Struct = Struct { fields: &[f(0, ANY, Ty::String)], tagged: &[] };
static DESCRIBE_USER_SCRAM_CREDENTIALS: Message = Message {
    name: "DescribeUserScramCredentials",
    min_version: 0,
    max_version: 0,
    flexible_from: 0,
    body: Struct { fields: &[f(0, ANY, Ty::Array(&Ty::Struct(&SCRAM_USER)))], tagged: &[] },
};

// UnregisterBroker: broker_id.
static UNREGISTER_BROKER: Message = Message {
    name: "UnregisterBroker",
    min_version: 0,
    max_version: 0,
    flexible_from: 0,
    body: Struct { fields: &[f(0, ANY, INT32)], tagged: &[] },
};

// AlterReplicaLogDirs: dirs [path, topics [name, partitions [int32]]].
static LOG_DIR_TOPIC: Struct = Struct { fields: &[f(1, ANY, Ty::String), f(1, ANY, Ty::Array(&INT32))], tagged: &[] };
static LOG_DIR: Struct =
    Struct { fields: &[f(1, ANY, Ty::String), f(1, ANY, Ty::Array(&Ty::Struct(&LOG_DIR_TOPIC)))], tagged: &[] };
static ALTER_REPLICA_LOG_DIRS: Message = Message {
    name: "AlterReplicaLogDirs",
    min_version: 1,
    max_version: 2,
    flexible_from: 2,
    body: Struct { fields: &[f(1, ANY, Ty::Array(&Ty::Struct(&LOG_DIR)))], tagged: &[] },
};

// DescribeQuorum: topics [topic_name, partitions [partition_index]].
static QUORUM_PARTITION: Struct = Struct { fields: &[f(0, ANY, INT32)], tagged: &[] };
static QUORUM_TOPIC: Struct =
    Struct { fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::Array(&Ty::Struct(&QUORUM_PARTITION)))], tagged: &[] };
static DESCRIBE_QUORUM: Message = Message {
    name: "DescribeQuorum",
    min_version: 0,
    max_version: 2,
    flexible_from: 0,
    body: Struct { fields: &[f(0, ANY, Ty::Array(&Ty::Struct(&QUORUM_TOPIC)))], tagged: &[] },
};

// AddRaftVoter: cluster_id, timeout_ms, voter_id, voter_directory_id, listeners [name, host, port].
static RAFT_LISTENER: Struct =
    Struct { fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::String), f(0, ANY, INT16)], tagged: &[] };
static ADD_RAFT_VOTER: Message = Message {
    name: "AddRaftVoter",
    min_version: 0,
    max_version: 0,
    flexible_from: 0,
    body: Struct {
        fields: &[
            f(0, ANY, Ty::String),
            f(0, ANY, INT32),
            f(0, ANY, INT32),
            f(0, ANY, UUID),
            f(0, ANY, Ty::Array(&Ty::Struct(&RAFT_LISTENER))),
        ],
        tagged: &[],
    },
};

// RemoveRaftVoter: cluster_id, voter_id, voter_directory_id.
static REMOVE_RAFT_VOTER: Message = Message {
    name: "RemoveRaftVoter",
    min_version: 0,
    max_version: 0,
    flexible_from: 0,
    body: Struct { fields: &[f(0, ANY, Ty::String), f(0, ANY, INT32), f(0, ANY, UUID)], tagged: &[] },
};

fn schema(api_key: ApiKey) -> Option<&'static Message> {
    Some(match api_key {
        ApiKey::ApiVersions => &API_VERSIONS,
        ApiKey::Metadata => &METADATA,
        ApiKey::Produce => &PRODUCE,
        ApiKey::Fetch => &FETCH,
        ApiKey::ListOffsets => &LIST_OFFSETS,
        ApiKey::CreateTopics => &CREATE_TOPICS,
        ApiKey::DeleteTopics => &DELETE_TOPICS,
        ApiKey::CreatePartitions => &CREATE_PARTITIONS,
        ApiKey::DescribeConfigs => &DESCRIBE_CONFIGS,
        ApiKey::IncrementalAlterConfigs => &INCREMENTAL_ALTER_CONFIGS,
        ApiKey::InitProducerId => &INIT_PRODUCER_ID,
        ApiKey::FindCoordinator => &FIND_COORDINATOR,
        ApiKey::JoinGroup => &JOIN_GROUP,
        ApiKey::SyncGroup => &SYNC_GROUP,
        ApiKey::Heartbeat => &HEARTBEAT,
        ApiKey::LeaveGroup => &LEAVE_GROUP,
        ApiKey::OffsetCommit => &OFFSET_COMMIT,
        ApiKey::OffsetFetch => &OFFSET_FETCH,
        ApiKey::DescribeGroups => &DESCRIBE_GROUPS,
        ApiKey::ListGroups => &LIST_GROUPS,
        ApiKey::DeleteGroups => &DELETE_GROUPS,
        ApiKey::OffsetDelete => &OFFSET_DELETE,
        ApiKey::OffsetForLeaderEpoch => &OFFSET_FOR_LEADER_EPOCH,
        ApiKey::AddPartitionsToTxn => &ADD_PARTITIONS_TO_TXN,
        ApiKey::AddOffsetsToTxn => &ADD_OFFSETS_TO_TXN,
        ApiKey::EndTxn => &END_TXN,
        ApiKey::TxnOffsetCommit => &TXN_OFFSET_COMMIT,
        ApiKey::WriteTxnMarkers => &WRITE_TXN_MARKERS,
        ApiKey::ListTransactions => &LIST_TRANSACTIONS,
        ApiKey::DescribeTransactions => &DESCRIBE_TRANSACTIONS,
        ApiKey::DescribeProducers => &DESCRIBE_PRODUCERS,
        ApiKey::DescribeCluster => &DESCRIBE_CLUSTER,
        ApiKey::DeleteRecords => &DELETE_RECORDS,
        ApiKey::DescribeLogDirs => &DESCRIBE_LOG_DIRS,
        ApiKey::ElectLeaders => &ELECT_LEADERS,
        ApiKey::AlterConfigs => &ALTER_CONFIGS,
        ApiKey::DescribeAcls => &DESCRIBE_ACLS,
        ApiKey::DescribeUserScramCredentials => &DESCRIBE_USER_SCRAM_CREDENTIALS,
        ApiKey::AlterPartitionReassignments => &ALTER_PARTITION_REASSIGNMENTS,
        ApiKey::ListPartitionReassignments => &LIST_PARTITION_REASSIGNMENTS,
        ApiKey::UnregisterBroker => &UNREGISTER_BROKER,
        ApiKey::DescribeQuorum => &DESCRIBE_QUORUM,
        ApiKey::AddRaftVoter => &ADD_RAFT_VOTER,
        ApiKey::RemoveRaftVoter => &REMOVE_RAFT_VOTER,
        ApiKey::AlterReplicaLogDirs => &ALTER_REPLICA_LOG_DIRS,
        _ => return None,
    })
}

/// Walks a request body of `api_key` / `api_version` (the bytes after the request header) and
/// refuses it if any array count could not fit in the bytes that follow it. Returns the number
/// of bytes the body takes. Run it before [`super::decode_body`] on every request from a peer;
/// it allocates nothing and takes time linear in `body.len()`.
///
/// Errors: [`ProtocolError::Malformed`] with `what` [`ARRAY_TOO_LONG`] for an impossible count,
/// with another `what` for a body the decoder would refuse anyway (truncated, negative
/// lengths); [`ProtocolError::UnsupportedVersion`] for an API or version without a schema.
pub fn check_array_bounds(api_key: ApiKey, api_version: i16, body: &[u8]) -> Result<usize, ProtocolError> {
    walk_message(Side::Request, schema(api_key), api_key, api_version, body)
}

/// [`check_array_bounds`] for a response body (the bytes after the response header), as the
/// client and the replica fetcher receive it; [`super::decode_response`] runs it. `api_version`
/// is the version the body is decoded as (for ApiVersions, v0 when the broker answered
/// UNSUPPORTED_VERSION). An impossible count is refused with [`RESPONSE_ARRAY_TOO_LONG`].
pub fn check_response_array_bounds(api_key: ApiKey, api_version: i16, body: &[u8]) -> Result<usize, ProtocolError> {
    walk_message(Side::Response, responses::schema(api_key), api_key, api_version, body)
}

/// Which way a body travels, for the errors: a bad request is the client's fault, a bad
/// response the broker's.
#[derive(Clone, Copy)]
enum Side {
    Request,
    Response,
}

impl Side {
    fn body(self) -> &'static str {
        match self {
            Side::Request => "request body",
            Side::Response => "response body",
        }
    }

    fn array_too_long(self) -> &'static str {
        match self {
            Side::Request => ARRAY_TOO_LONG,
            Side::Response => RESPONSE_ARRAY_TOO_LONG,
        }
    }
}

fn walk_message(
    side: Side,
    message: Option<&Message>,
    api_key: ApiKey,
    api_version: i16,
    body: &[u8],
) -> Result<usize, ProtocolError> {
    let Some(message) = message else {
        return Err(ProtocolError::malformed(side.body(), format!("no bounds schema for api key {}", api_key as i16)));
    };
    if api_version < message.min_version || api_version > message.max_version {
        return Err(ProtocolError::UnsupportedVersion { api: message.name, version: api_version });
    }
    let mut walker =
        Walker { side, body, position: 0, version: api_version, flexible: api_version >= message.flexible_from };
    walker.walk_struct(&message.body)?;
    Ok(walker.position)
}

struct Walker<'a> {
    side: Side,
    body: &'a [u8],
    position: usize,
    version: i16,
    flexible: bool,
}

impl Walker<'_> {
    fn remaining(&self) -> usize {
        self.body.len() - self.position
    }

    fn truncated(&self, needed: usize) -> ProtocolError {
        ProtocolError::malformed(
            self.side.body(),
            format!("needs {needed} bytes at byte {} but {} are left", self.position, self.remaining()),
        )
    }

    fn skip(&mut self, n: usize) -> Result<(), ProtocolError> {
        if n > self.remaining() {
            return Err(self.truncated(n));
        }
        self.position += n;
        Ok(())
    }

    fn int16(&mut self) -> Result<i16, ProtocolError> {
        let at = self.position;
        self.skip(2)?;
        Ok(i16::from_be_bytes([self.body[at], self.body[at + 1]]))
    }

    fn int32(&mut self) -> Result<i32, ProtocolError> {
        let at = self.position;
        self.skip(4)?;
        let b = &self.body[at..at + 4];
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The generated decoder's unsigned varint: at most five bytes, high bits past 32 dropped.
    fn uvarint(&mut self) -> Result<u32, ProtocolError> {
        let mut value = 0u32;
        for i in 0..5 {
            let Some(&b) = self.body.get(self.position) else {
                return Err(self.truncated(1));
            };
            self.position += 1;
            value |= ((b & 0x7f) as u32) << (i * 7);
            if b < 0x80 {
                break;
            }
        }
        Ok(value)
    }

    /// A length or count, `None` for null. Classic encodings (`int16` for strings, `int32`
    /// otherwise) use -1 for null and refuse other negatives; compact ones are an unsigned
    /// varint of the value plus one, 0 being null.
    fn length(&mut self, classic_int16: bool, what: &str) -> Result<Option<usize>, ProtocolError> {
        if self.flexible {
            return Ok(self.uvarint()?.checked_sub(1).map(|n| n as usize));
        }
        let n = if classic_int16 { i32::from(self.int16()?) } else { self.int32()? };
        match n {
            -1 => Ok(None),
            n if n >= 0 => Ok(Some(n as usize)),
            n => Err(ProtocolError::malformed(self.side.body(), format!("{what} length {n} is negative"))),
        }
    }

    fn walk(&mut self, ty: &Ty) -> Result<(), ProtocolError> {
        match ty {
            Ty::Fixed(n) => self.skip(*n),
            Ty::String => {
                let len = self.length(true, "string")?;
                self.skip(len.unwrap_or(0))
            }
            Ty::Bytes => {
                let len = self.length(false, "bytes")?;
                self.skip(len.unwrap_or(0))
            }
            Ty::Array(element) => {
                let at = self.position;
                let Some(count) = self.length(false, "array")? else {
                    return Ok(());
                };
                // Every element takes at least this many bytes, so a larger count cannot be
                // real, and the decoder would reserve room for it before finding out.
                let min_element_bytes = self.min_bytes(element).max(1);
                if count > self.remaining() / min_element_bytes {
                    return Err(ProtocolError::malformed(
                        self.side.array_too_long(),
                        format!(
                            "{count} elements of at least {min_element_bytes} bytes at byte {at} \
                             cannot fit in the {} bytes left",
                            self.remaining()
                        ),
                    ));
                }
                for _ in 0..count {
                    self.walk(element)?;
                }
                Ok(())
            }
            Ty::Struct(s) => self.walk_struct(s),
        }
    }

    fn walk_struct(&mut self, s: &Struct) -> Result<(), ProtocolError> {
        let version = self.version;
        for field in s.fields.iter().filter(|f| (f.min..=f.max).contains(&version)) {
            self.walk(&field.ty)?;
        }
        if !self.flexible {
            return Ok(());
        }
        let tagged_fields = self.uvarint()?;
        for _ in 0..tagged_fields {
            let tag = self.uvarint()?;
            let size = self.uvarint()? as usize;
            match s.tagged.iter().find(|t| t.tag == tag) {
                // The generated decoder parses known tags in place, ignoring `size`; do the same
                // to stay at the same position as it.
                Some(t) if (t.min..=t.max).contains(&self.version) => self.walk(&t.ty)?,
                Some(_) => {
                    return Err(ProtocolError::malformed(
                        self.side.body(),
                        format!("tag {tag} is not valid in version {}", self.version),
                    ))
                }
                None => self.skip(size)?,
            }
        }
        Ok(())
    }

    /// The fewest bytes a value of `ty` takes in this version.
    fn min_bytes(&self, ty: &Ty) -> usize {
        match ty {
            Ty::Fixed(n) => *n,
            Ty::String if self.flexible => 1,
            Ty::String => 2,
            Ty::Bytes | Ty::Array(_) if self.flexible => 1,
            Ty::Bytes | Ty::Array(_) => 4,
            Ty::Struct(s) => {
                let fields: usize = s
                    .fields
                    .iter()
                    .filter(|f| (f.min..=f.max).contains(&self.version))
                    .map(|f| self.min_bytes(&f.ty))
                    .sum();
                fields + usize::from(self.flexible)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::create_partitions_request::{CreatePartitionsAssignment, CreatePartitionsTopic};
    use crate::protocol::messages::create_topics_request::{
        CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
    };
    use crate::protocol::messages::delete_topics_request::DeleteTopicState;
    use crate::protocol::messages::describe_configs_request::DescribeConfigsResource;
    use crate::protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic, ReplicaState};
    use crate::protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
    use crate::protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use crate::protocol::messages::metadata_request::MetadataRequestTopic;
    use crate::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use crate::protocol::messages::*;
    use crate::protocol::{decode_body, str_bytes, Codec};
    use bytes::{BufMut, Bytes, BytesMut};
    use proptest::prelude::*;

    fn topic(name: &str) -> TopicName {
        TopicName(str_bytes(name))
    }

    fn tags(version: i16, flexible_from: i16) -> std::collections::BTreeMap<i32, Bytes> {
        if version >= flexible_from {
            [(90, Bytes::from_static(b"unknown tag")), (7, Bytes::new())].into()
        } else {
            Default::default()
        }
    }

    /// Encodes `m` at `version`; asserts the walk accepts it and ends exactly at its end, and
    /// that the generated decoder reads the same number of bytes.
    fn assert_walks_exactly<M: Codec>(api_key: ApiKey, version: i16, m: &M) {
        let mut buf = BytesMut::new();
        m.encode(&mut buf, version).unwrap_or_else(|e| panic!("{api_key:?} v{version} does not encode: {e}"));
        let body = buf.freeze();
        let walked = check_array_bounds(api_key, version, &body)
            .unwrap_or_else(|e| panic!("{api_key:?} v{version} refused: {e}"));
        assert_eq!(walked, body.len(), "{api_key:?} v{version}");
        // Trailing bytes are not part of the body.
        let mut longer = body.to_vec();
        longer.extend_from_slice(&[0xff; 9]);
        assert_eq!(check_array_bounds(api_key, version, &longer).unwrap(), body.len());
        let mut rest = body.clone();
        decode_body::<M>("request", &mut rest, version).unwrap();
        assert!(rest.is_empty(), "{api_key:?} v{version}: decoder left {} bytes", rest.len());
        // Every strict prefix is refused, never accepted as a shorter body.
        for cut in 0..body.len() {
            assert!(check_array_bounds(api_key, version, &body[..cut]).is_err(), "{api_key:?} v{version} cut {cut}");
        }
    }

    #[test]
    fn populated_requests_of_every_version_walk_exactly() {
        for v in 0..=4 {
            let m = ApiVersionsRequest::default()
                .with_client_software_name(str_bytes(if v >= 3 { "spate" } else { "" }))
                .with_client_software_version(str_bytes(if v >= 3 { "0.1.0" } else { "" }))
                .with_unknown_tagged_fields(tags(v, 3));
            assert_walks_exactly(ApiKey::ApiVersions, v, &m);
        }
        for v in 0..=13 {
            let topics = (0..3)
                .map(|i| {
                    MetadataRequestTopic::default()
                        .with_name((i != 1 || v < 10).then(|| topic(&format!("topic-{i}"))))
                        .with_unknown_tagged_fields(tags(v, 9))
                })
                .collect();
            let m = MetadataRequest::default()
                .with_topics(Some(topics))
                .with_allow_auto_topic_creation(v < 4)
                .with_unknown_tagged_fields(tags(v, 9));
            assert_walks_exactly(ApiKey::Metadata, v, &m);
            if v >= 1 {
                assert_walks_exactly(ApiKey::Metadata, v, &MetadataRequest::default().with_topics(None));
            }
        }
        for v in 3..=13 {
            let partitions = (0..2)
                .map(|i| {
                    PartitionProduceData::default()
                        .with_index(i)
                        .with_records(Some(Bytes::from(vec![i as u8; 70])))
                        .with_unknown_tagged_fields(tags(v, 9))
                })
                .collect::<Vec<_>>();
            let t = TopicProduceData::default().with_partition_data(partitions).with_unknown_tagged_fields(tags(v, 9));
            let t = if v <= 12 { t.with_name(topic("orders")) } else { t.with_topic_id(uuid::Uuid::from_u128(7)) };
            let m = ProduceRequest::default()
                .with_transactional_id(None)
                .with_acks(-1)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![t.clone(), t])
                .with_unknown_tagged_fields(tags(v, 9));
            assert_walks_exactly(ApiKey::Produce, v, &m);
        }
        for v in 4..=18 {
            let partitions = (0..3)
                .map(|i| {
                    let p = FetchPartition::default()
                        .with_partition(i)
                        .with_fetch_offset(100)
                        .with_partition_max_bytes(1 << 20)
                        .with_unknown_tagged_fields(tags(v, 12));
                    let p = if v >= 17 { p.with_replica_directory_id(uuid::Uuid::from_u128(3)) } else { p };
                    if v >= 18 {
                        p.with_high_watermark(5)
                    } else {
                        p
                    }
                })
                .collect::<Vec<_>>();
            let t = FetchTopic::default().with_partitions(partitions).with_unknown_tagged_fields(tags(v, 12));
            let t = if v <= 12 { t.with_topic(topic("orders")) } else { t.with_topic_id(uuid::Uuid::from_u128(9)) };
            let mut m = FetchRequest::default()
                .with_max_wait_ms(500)
                .with_topics(vec![t.clone(), t])
                .with_unknown_tagged_fields(tags(v, 12));
            if v >= 7 {
                let f =
                    ForgottenTopic::default().with_partitions(vec![1, 2, 3]).with_unknown_tagged_fields(tags(v, 12));
                let f = if v <= 12 { f.with_topic(topic("old")) } else { f.with_topic_id(uuid::Uuid::from_u128(1)) };
                m = m.with_forgotten_topics_data(vec![f]);
            }
            if v >= 11 {
                m = m.with_rack_id(str_bytes("rack-a"));
            }
            if v >= 12 {
                m = m.with_cluster_id(Some(str_bytes("cluster")));
            }
            if v >= 15 {
                m = m
                    .with_replica_id(BrokerId(-1))
                    .with_replica_state(ReplicaState::default().with_replica_id(BrokerId(2)).with_replica_epoch(4));
            }
            assert_walks_exactly(ApiKey::Fetch, v, &m);
        }
        for v in 1..=10 {
            let partitions = (0..2)
                .map(|i| {
                    ListOffsetsPartition::default()
                        .with_partition_index(i)
                        .with_timestamp(-1)
                        .with_unknown_tagged_fields(tags(v, 6))
                })
                .collect::<Vec<_>>();
            let t = ListOffsetsTopic::default()
                .with_name(topic("orders"))
                .with_partitions(partitions)
                .with_unknown_tagged_fields(tags(v, 6));
            let m = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![t.clone(), t])
                .with_unknown_tagged_fields(tags(v, 6));
            assert_walks_exactly(ApiKey::ListOffsets, v, &m);
        }
        for v in 2..=7 {
            let a = CreatableReplicaAssignment::default()
                .with_partition_index(0)
                .with_broker_ids(vec![BrokerId(1), BrokerId(2)])
                .with_unknown_tagged_fields(tags(v, 5));
            let c = CreatableTopicConfig::default()
                .with_name(str_bytes("retention.ms"))
                .with_value(Some(str_bytes("1000")))
                .with_unknown_tagged_fields(tags(v, 5));
            let t = CreatableTopic::default()
                .with_name(topic("orders"))
                .with_num_partitions(-1)
                .with_replication_factor(-1)
                .with_assignments(vec![a.clone(), a])
                .with_configs(vec![c.clone(), c.with_value(None)])
                .with_unknown_tagged_fields(tags(v, 5));
            let m =
                CreateTopicsRequest::default().with_topics(vec![t.clone(), t]).with_unknown_tagged_fields(tags(v, 5));
            assert_walks_exactly(ApiKey::CreateTopics, v, &m);
        }
        for v in 1..=6 {
            let m = if v >= 6 {
                let s = DeleteTopicState::default()
                    .with_name(Some(topic("orders")))
                    .with_topic_id(uuid::Uuid::from_u128(5))
                    .with_unknown_tagged_fields(tags(v, 4));
                DeleteTopicsRequest::default().with_topics(vec![s.clone(), s.with_name(None)])
            } else {
                DeleteTopicsRequest::default().with_topic_names(vec![topic("a"), topic("bb")])
            };
            assert_walks_exactly(ApiKey::DeleteTopics, v, &m.with_timeout_ms(1).with_unknown_tagged_fields(tags(v, 4)));
        }
        for v in 0..=3 {
            let a = CreatePartitionsAssignment::default()
                .with_broker_ids(vec![BrokerId(1)])
                .with_unknown_tagged_fields(tags(v, 2));
            let t = CreatePartitionsTopic::default()
                .with_name(topic("orders"))
                .with_count(4)
                .with_assignments(Some(vec![a.clone(), a]))
                .with_unknown_tagged_fields(tags(v, 2));
            let m = CreatePartitionsRequest::default()
                .with_topics(vec![t.clone(), t.with_assignments(None)])
                .with_unknown_tagged_fields(tags(v, 2));
            assert_walks_exactly(ApiKey::CreatePartitions, v, &m);
        }
        for v in 1..=4 {
            let r = DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(str_bytes("orders"))
                .with_configuration_keys(Some(vec![str_bytes("retention.ms"), str_bytes("segment.bytes")]))
                .with_unknown_tagged_fields(tags(v, 4));
            let m = DescribeConfigsRequest::default()
                .with_resources(vec![r.clone(), r.with_configuration_keys(None)])
                .with_unknown_tagged_fields(tags(v, 4));
            assert_walks_exactly(ApiKey::DescribeConfigs, v, &m);
        }
        for v in 0..=1 {
            let c = AlterableConfig::default()
                .with_name(str_bytes("retention.ms"))
                .with_value(Some(str_bytes("5")))
                .with_unknown_tagged_fields(tags(v, 1));
            let r = AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(str_bytes("orders"))
                .with_configs(vec![c.clone(), c.with_value(None)])
                .with_unknown_tagged_fields(tags(v, 1));
            let m = IncrementalAlterConfigsRequest::default()
                .with_resources(vec![r.clone(), r])
                .with_unknown_tagged_fields(tags(v, 1));
            assert_walks_exactly(ApiKey::IncrementalAlterConfigs, v, &m);
        }
        for v in 0..=5 {
            let m = InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(-1)
                .with_unknown_tagged_fields(tags(v, 2));
            assert_walks_exactly(ApiKey::InitProducerId, v, &m);
            assert_walks_exactly(
                ApiKey::InitProducerId,
                v,
                &m.with_transactional_id(Some(TransactionalId(str_bytes("t")))),
            );
        }
    }

    #[test]
    fn group_requests_of_every_version_walk_exactly() {
        use crate::protocol::messages::join_group_request::JoinGroupRequestProtocol;
        use crate::protocol::messages::leave_group_request::MemberIdentity;
        use crate::protocol::messages::offset_commit_request::{
            OffsetCommitRequestPartition, OffsetCommitRequestTopic,
        };
        use crate::protocol::messages::offset_delete_request::{
            OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
        };
        use crate::protocol::messages::offset_fetch_request::{
            OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
        };
        use crate::protocol::messages::sync_group_request::SyncGroupRequestAssignment;
        let group = || GroupId(str_bytes("orders-app"));
        for v in 0..=6 {
            let m = FindCoordinatorRequest::default().with_unknown_tagged_fields(tags(v, 3));
            let m = if v >= 1 { m.with_key_type(0) } else { m };
            let m = if v <= 3 {
                m.with_key(str_bytes("orders-app"))
            } else {
                m.with_coordinator_keys(vec![str_bytes("a"), str_bytes("orders-app")])
            };
            assert_walks_exactly(ApiKey::FindCoordinator, v, &m);
        }
        for v in 0..=9 {
            let p = JoinGroupRequestProtocol::default()
                .with_name(str_bytes("range"))
                .with_metadata(Bytes::from_static(b"subscription"))
                .with_unknown_tagged_fields(tags(v, 6));
            let m = JoinGroupRequest::default()
                .with_group_id(group())
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(if v >= 1 { 30_000 } else { -1 })
                .with_member_id(str_bytes("m-1"))
                .with_group_instance_id((v >= 5).then(|| str_bytes("instance-1")))
                .with_protocol_type(str_bytes("consumer"))
                .with_protocols(vec![p.clone(), p.with_name(str_bytes("roundrobin"))])
                .with_reason((v >= 8).then(|| str_bytes("rejoin")))
                .with_unknown_tagged_fields(tags(v, 6));
            assert_walks_exactly(ApiKey::JoinGroup, v, &m);
        }
        for v in 0..=5 {
            let a = SyncGroupRequestAssignment::default()
                .with_member_id(str_bytes("m-1"))
                .with_assignment(Bytes::from_static(b"assignment"))
                .with_unknown_tagged_fields(tags(v, 4));
            let m = SyncGroupRequest::default()
                .with_group_id(group())
                .with_generation_id(3)
                .with_member_id(str_bytes("m-1"))
                .with_group_instance_id((v >= 3).then(|| str_bytes("instance-1")))
                .with_protocol_type((v >= 5).then(|| str_bytes("consumer")))
                .with_protocol_name((v >= 5).then(|| str_bytes("range")))
                .with_assignments(vec![a.clone(), a])
                .with_unknown_tagged_fields(tags(v, 4));
            assert_walks_exactly(ApiKey::SyncGroup, v, &m);
        }
        for v in 0..=4 {
            let m = HeartbeatRequest::default()
                .with_group_id(group())
                .with_generation_id(3)
                .with_member_id(str_bytes("m-1"))
                .with_group_instance_id((v >= 3).then(|| str_bytes("instance-1")))
                .with_unknown_tagged_fields(tags(v, 4));
            assert_walks_exactly(ApiKey::Heartbeat, v, &m);
        }
        for v in 0..=5 {
            let m = LeaveGroupRequest::default().with_group_id(group()).with_unknown_tagged_fields(tags(v, 4));
            let m = if v <= 2 {
                m.with_member_id(str_bytes("m-1"))
            } else {
                let member = MemberIdentity::default()
                    .with_member_id(str_bytes("m-1"))
                    .with_group_instance_id(Some(str_bytes("instance-1")))
                    .with_reason((v >= 5).then(|| str_bytes("shutdown")))
                    .with_unknown_tagged_fields(tags(v, 4));
                m.with_members(vec![member.clone(), member.with_group_instance_id(None)])
            };
            assert_walks_exactly(ApiKey::LeaveGroup, v, &m);
        }
        for v in 2..=9 {
            let p = OffsetCommitRequestPartition::default()
                .with_partition_index(1)
                .with_committed_offset(42)
                .with_committed_leader_epoch(if v >= 6 { 3 } else { -1 })
                .with_committed_metadata(Some(str_bytes("meta")))
                .with_unknown_tagged_fields(tags(v, 8));
            let t = OffsetCommitRequestTopic::default()
                .with_name(topic("orders"))
                .with_partitions(vec![p.clone(), p.with_committed_metadata(None)])
                .with_unknown_tagged_fields(tags(v, 8));
            let m = OffsetCommitRequest::default()
                .with_group_id(group())
                .with_generation_id_or_member_epoch(3)
                .with_member_id(str_bytes("m-1"))
                .with_group_instance_id((v >= 7).then(|| str_bytes("instance-1")))
                .with_retention_time_ms(-1)
                .with_topics(vec![t.clone(), t])
                .with_unknown_tagged_fields(tags(v, 8));
            assert_walks_exactly(ApiKey::OffsetCommit, v, &m);
        }
        for v in 1..=9 {
            let m = OffsetFetchRequest::default().with_require_stable(v >= 7).with_unknown_tagged_fields(tags(v, 6));
            let m = if v <= 7 {
                let t = OffsetFetchRequestTopic::default()
                    .with_name(topic("orders"))
                    .with_partition_indexes(vec![0, 1, 2])
                    .with_unknown_tagged_fields(tags(v, 6));
                let with_topics = m.clone().with_group_id(group()).with_topics(Some(vec![t.clone(), t]));
                assert_walks_exactly(ApiKey::OffsetFetch, v, &with_topics);
                if v >= 2 {
                    assert_walks_exactly(ApiKey::OffsetFetch, v, &m.clone().with_group_id(group()).with_topics(None));
                }
                continue;
            } else {
                let t = OffsetFetchRequestTopics::default()
                    .with_name(topic("orders"))
                    .with_partition_indexes(vec![0, 1, 2])
                    .with_unknown_tagged_fields(tags(v, 6));
                let g = OffsetFetchRequestGroup::default()
                    .with_group_id(group())
                    .with_member_id((v >= 9).then(|| str_bytes("m-1")))
                    .with_member_epoch(if v >= 9 { 5 } else { -1 })
                    .with_topics(Some(vec![t.clone(), t]))
                    .with_unknown_tagged_fields(tags(v, 6));
                m.with_groups(vec![g.clone(), g.with_topics(None)])
            };
            assert_walks_exactly(ApiKey::OffsetFetch, v, &m);
        }
        for v in 0..=6 {
            let m = DescribeGroupsRequest::default()
                .with_groups(vec![group(), GroupId(str_bytes(""))])
                .with_include_authorized_operations(v >= 3)
                .with_unknown_tagged_fields(tags(v, 5));
            assert_walks_exactly(ApiKey::DescribeGroups, v, &m);
        }
        for v in 0..=5 {
            let m = ListGroupsRequest::default()
                .with_states_filter(if v >= 4 { vec![str_bytes("Stable"), str_bytes("Empty")] } else { vec![] })
                .with_types_filter(if v >= 5 { vec![str_bytes("classic")] } else { vec![] })
                .with_unknown_tagged_fields(tags(v, 3));
            assert_walks_exactly(ApiKey::ListGroups, v, &m);
        }
        for v in 0..=2 {
            let m = DeleteGroupsRequest::default()
                .with_groups_names(vec![group(), GroupId(str_bytes("other"))])
                .with_unknown_tagged_fields(tags(v, 2));
            assert_walks_exactly(ApiKey::DeleteGroups, v, &m);
        }
        let p = OffsetDeleteRequestPartition::default().with_partition_index(4);
        let t = OffsetDeleteRequestTopic::default().with_name(topic("orders")).with_partitions(vec![p.clone(), p]);
        let m = OffsetDeleteRequest::default().with_group_id(group()).with_topics(vec![t.clone(), t]);
        assert_walks_exactly(ApiKey::OffsetDelete, 0, &m);
    }

    #[test]
    fn transaction_requests_of_every_version_walk_exactly() {
        use crate::protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
        use crate::protocol::messages::txn_offset_commit_request::{
            TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
        };
        use crate::protocol::messages::write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
        let tid = || TransactionalId(str_bytes("txn-1"));
        for v in 0..=3 {
            let t = AddPartitionsToTxnTopic::default()
                .with_name(topic("orders"))
                .with_partitions(vec![0, 1, 2])
                .with_unknown_tagged_fields(tags(v, 3));
            let m = AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(tid())
                .with_v3_and_below_producer_id(ProducerId(7))
                .with_v3_and_below_producer_epoch(1)
                .with_v3_and_below_topics(vec![t.clone(), t])
                .with_unknown_tagged_fields(tags(v, 3));
            assert_walks_exactly(ApiKey::AddPartitionsToTxn, v, &m);
        }
        {
            use crate::protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTransaction;
            let t = AddPartitionsToTxnTopic::default()
                .with_name(topic("orders"))
                .with_partitions(vec![0, 1])
                .with_unknown_tagged_fields(tags(4, 3));
            let x = AddPartitionsToTxnTransaction::default()
                .with_transactional_id(tid())
                .with_producer_id(ProducerId(7))
                .with_producer_epoch(1)
                .with_verify_only(true)
                .with_topics(vec![t.clone(), t])
                .with_unknown_tagged_fields(tags(4, 3));
            let m = AddPartitionsToTxnRequest::default()
                .with_transactions(vec![x.clone(), x])
                .with_unknown_tagged_fields(tags(4, 3));
            assert_walks_exactly(ApiKey::AddPartitionsToTxn, 4, &m);
        }
        for v in 0..=4 {
            let m = AddOffsetsToTxnRequest::default()
                .with_transactional_id(tid())
                .with_producer_id(ProducerId(7))
                .with_producer_epoch(1)
                .with_group_id(GroupId(str_bytes("g")))
                .with_unknown_tagged_fields(tags(v, 3));
            assert_walks_exactly(ApiKey::AddOffsetsToTxn, v, &m);
        }
        for v in 0..=5 {
            let m = EndTxnRequest::default()
                .with_transactional_id(tid())
                .with_producer_id(ProducerId(7))
                .with_producer_epoch(1)
                .with_committed(true)
                .with_unknown_tagged_fields(tags(v, 3));
            assert_walks_exactly(ApiKey::EndTxn, v, &m);
            let p = TxnOffsetCommitRequestPartition::default()
                .with_partition_index(1)
                .with_committed_offset(42)
                .with_committed_leader_epoch(if v >= 2 { 3 } else { -1 })
                .with_committed_metadata(Some(str_bytes("meta")))
                .with_unknown_tagged_fields(tags(v, 3));
            let t = TxnOffsetCommitRequestTopic::default()
                .with_name(topic("orders"))
                .with_partitions(vec![p.clone(), p.with_committed_metadata(None)])
                .with_unknown_tagged_fields(tags(v, 3));
            let m = TxnOffsetCommitRequest::default()
                .with_transactional_id(tid())
                .with_group_id(GroupId(str_bytes("g")))
                .with_producer_id(ProducerId(7))
                .with_producer_epoch(1)
                .with_generation_id(if v >= 3 { 4 } else { -1 })
                .with_member_id(str_bytes(if v >= 3 { "m-1" } else { "" }))
                .with_group_instance_id((v >= 3).then(|| str_bytes("instance-1")))
                .with_topics(vec![t.clone(), t])
                .with_unknown_tagged_fields(tags(v, 3));
            assert_walks_exactly(ApiKey::TxnOffsetCommit, v, &m);
        }
        let t = WritableTxnMarkerTopic::default()
            .with_name(topic("orders"))
            .with_partition_indexes(vec![0, 3])
            .with_unknown_tagged_fields(tags(1, 1));
        let marker = WritableTxnMarker::default()
            .with_producer_id(ProducerId(7))
            .with_producer_epoch(2)
            .with_transaction_result(true)
            .with_topics(vec![t.clone(), t])
            .with_coordinator_epoch(5)
            .with_unknown_tagged_fields(tags(1, 1));
        let m = WriteTxnMarkersRequest::default().with_markers(vec![marker.clone(), marker]);
        assert_walks_exactly(ApiKey::WriteTxnMarkers, 1, &m);
        for v in 0..=2 {
            let m = ListTransactionsRequest::default()
                .with_state_filters(vec![str_bytes("Ongoing")])
                .with_producer_id_filters(vec![ProducerId(1), ProducerId(2)])
                .with_duration_filter(if v >= 1 { 1000 } else { -1 })
                .with_transactional_id_pattern((v >= 2).then(|| str_bytes("t.*")))
                .with_unknown_tagged_fields(tags(v, 0));
            assert_walks_exactly(ApiKey::ListTransactions, v, &m);
        }
        let m = DescribeTransactionsRequest::default().with_transactional_ids(vec![tid(), tid()]);
        assert_walks_exactly(ApiKey::DescribeTransactions, 0, &m);
        {
            use crate::protocol::messages::describe_producers_request::TopicRequest;
            use crate::protocol::messages::DescribeProducersRequest;
            let t = TopicRequest::default()
                .with_name(TopicName(str_bytes("orders")))
                .with_partition_indexes(vec![0, 1, 2])
                .with_unknown_tagged_fields(tags(0, 0));
            let m = DescribeProducersRequest::default()
                .with_topics(vec![t.clone(), t])
                .with_unknown_tagged_fields(tags(0, 0));
            assert_walks_exactly(ApiKey::DescribeProducers, 0, &m);
        }
    }

    #[test]
    fn cluster_admin_requests_of_every_version_walk_exactly() {
        use crate::protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
        use crate::protocol::messages::delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
        use crate::protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
        use crate::protocol::messages::describe_user_scram_credentials_request::UserName;
        use crate::protocol::messages::elect_leaders_request::TopicPartitions;
        use crate::protocol::messages::{
            AlterConfigsRequest, DeleteRecordsRequest, DescribeAclsRequest, DescribeClusterRequest,
            DescribeLogDirsRequest, DescribeUserScramCredentialsRequest, ElectLeadersRequest,
        };
        for v in 0..=2 {
            let m = DescribeClusterRequest::default()
                .with_include_cluster_authorized_operations(true)
                .with_endpoint_type(if v >= 1 { 2 } else { 1 })
                .with_include_fenced_brokers(v >= 2)
                .with_unknown_tagged_fields(tags(v, 0));
            assert_walks_exactly(ApiKey::DescribeCluster, v, &m);

            let p = DeleteRecordsPartition::default()
                .with_partition_index(1)
                .with_offset(99)
                .with_unknown_tagged_fields(tags(v, 2));
            let t = DeleteRecordsTopic::default()
                .with_name(topic("orders"))
                .with_partitions(vec![p.clone(), p])
                .with_unknown_tagged_fields(tags(v, 2));
            let m = DeleteRecordsRequest::default()
                .with_topics(vec![t.clone(), t])
                .with_timeout_ms(500)
                .with_unknown_tagged_fields(tags(v, 2));
            assert_walks_exactly(ApiKey::DeleteRecords, v, &m);

            let t = TopicPartitions::default()
                .with_topic(topic("orders"))
                .with_partitions(vec![0, 2])
                .with_unknown_tagged_fields(tags(v, 2));
            for partitions in [None, Some(vec![t.clone(), t])] {
                let m = ElectLeadersRequest::default()
                    .with_election_type(if v >= 1 { 1 } else { 0 })
                    .with_topic_partitions(partitions)
                    .with_timeout_ms(1000)
                    .with_unknown_tagged_fields(tags(v, 2));
                assert_walks_exactly(ApiKey::ElectLeaders, v, &m);
            }

            let c = AlterableConfig::default()
                .with_name(str_bytes("retention.ms"))
                .with_value(Some(str_bytes("1000")))
                .with_unknown_tagged_fields(tags(v, 2));
            let r = AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(str_bytes("orders"))
                .with_configs(vec![c, AlterableConfig::default().with_name(str_bytes("x")).with_value(None)])
                .with_unknown_tagged_fields(tags(v, 2));
            let m = AlterConfigsRequest::default()
                .with_resources(vec![r.clone(), r])
                .with_validate_only(true)
                .with_unknown_tagged_fields(tags(v, 2));
            assert_walks_exactly(ApiKey::AlterConfigs, v, &m);
        }
        for v in 1..=4 {
            let t = DescribableLogDirTopic::default()
                .with_topic(topic("orders"))
                .with_partitions(vec![0, 1])
                .with_unknown_tagged_fields(tags(v, 2));
            for topics in [None, Some(vec![t.clone(), t])] {
                let m = DescribeLogDirsRequest::default().with_topics(topics).with_unknown_tagged_fields(tags(v, 2));
                assert_walks_exactly(ApiKey::DescribeLogDirs, v, &m);
            }
        }
        for v in 1..=3 {
            let m = DescribeAclsRequest::default()
                .with_resource_type_filter(1)
                .with_resource_name_filter(Some(str_bytes("orders")))
                .with_pattern_type_filter(3)
                .with_principal_filter(None)
                .with_host_filter(Some(str_bytes("*")))
                .with_operation(1)
                .with_permission_type(1)
                .with_unknown_tagged_fields(tags(v, 2));
            assert_walks_exactly(ApiKey::DescribeAcls, v, &m);
        }
        {
            use crate::protocol::messages::alter_partition_reassignments_request::{
                ReassignablePartition, ReassignableTopic,
            };
            use crate::protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsTopics;
            use crate::protocol::messages::{AlterPartitionReassignmentsRequest, ListPartitionReassignmentsRequest};
            for v in 0..=1 {
                let p = ReassignablePartition::default()
                    .with_partition_index(1)
                    .with_replicas(Some(vec![BrokerId(2), BrokerId(3)]))
                    .with_unknown_tagged_fields(tags(v, 0));
                let cancel = ReassignablePartition::default().with_partition_index(2).with_replicas(None);
                let t = ReassignableTopic::default()
                    .with_name(topic("orders"))
                    .with_partitions(vec![p, cancel])
                    .with_unknown_tagged_fields(tags(v, 0));
                let m = AlterPartitionReassignmentsRequest::default()
                    .with_timeout_ms(1000)
                    .with_allow_replication_factor_change(v == 0)
                    .with_topics(vec![t.clone(), t])
                    .with_unknown_tagged_fields(tags(v, 0));
                assert_walks_exactly(ApiKey::AlterPartitionReassignments, v, &m);
            }
            let t = ListPartitionReassignmentsTopics::default()
                .with_name(topic("orders"))
                .with_partition_indexes(vec![0, 1])
                .with_unknown_tagged_fields(tags(0, 0));
            for topics in [None, Some(vec![t.clone(), t])] {
                let m = ListPartitionReassignmentsRequest::default()
                    .with_timeout_ms(1000)
                    .with_topics(topics)
                    .with_unknown_tagged_fields(tags(0, 0));
                assert_walks_exactly(ApiKey::ListPartitionReassignments, 0, &m);
            }
        }
        let u = UserName::default().with_name(str_bytes("alice")).with_unknown_tagged_fields(tags(0, 0));
        for users in [None, Some(vec![u.clone(), u])] {
            let m =
                DescribeUserScramCredentialsRequest::default().with_users(users).with_unknown_tagged_fields(tags(0, 0));
            assert_walks_exactly(ApiKey::DescribeUserScramCredentials, 0, &m);
        }
        let m = crate::protocol::messages::UnregisterBrokerRequest::default()
            .with_broker_id(BrokerId(4))
            .with_unknown_tagged_fields(tags(0, 0));
        assert_walks_exactly(ApiKey::UnregisterBroker, 0, &m);
    }

    #[test]
    fn alter_replica_log_dirs_requests_walk_exactly() {
        use crate::protocol::messages::alter_replica_log_dirs_request::{AlterReplicaLogDir, AlterReplicaLogDirTopic};
        use crate::protocol::messages::AlterReplicaLogDirsRequest;
        for v in 1..=2 {
            let t = AlterReplicaLogDirTopic::default()
                .with_name(topic("orders"))
                .with_partitions(vec![0, 1, 2])
                .with_unknown_tagged_fields(tags(v, 2));
            let d = AlterReplicaLogDir::default()
                .with_path(str_bytes("/data/spate"))
                .with_topics(vec![t.clone(), t])
                .with_unknown_tagged_fields(tags(v, 2));
            let m = AlterReplicaLogDirsRequest::default()
                .with_dirs(vec![d.clone(), d])
                .with_unknown_tagged_fields(tags(v, 2));
            assert_walks_exactly(ApiKey::AlterReplicaLogDirs, v, &m);
        }
    }

    #[test]
    fn quorum_requests_walk_exactly() {
        use crate::protocol::messages::add_raft_voter_request::Listener;
        use crate::protocol::messages::describe_quorum_request::{PartitionData, TopicData};
        use crate::protocol::messages::{AddRaftVoterRequest, DescribeQuorumRequest, RemoveRaftVoterRequest};
        for v in 0..=2 {
            let p = PartitionData::default().with_partition_index(0).with_unknown_tagged_fields(tags(v, 0));
            let t = TopicData::default()
                .with_topic_name(topic("__cluster_metadata"))
                .with_partitions(vec![p.clone(), p])
                .with_unknown_tagged_fields(tags(v, 0));
            let m =
                DescribeQuorumRequest::default().with_topics(vec![t.clone(), t]).with_unknown_tagged_fields(tags(v, 0));
            assert_walks_exactly(ApiKey::DescribeQuorum, v, &m);
        }
        let listener = Listener::default()
            .with_name(str_bytes("CONTROLLER"))
            .with_host(str_bytes("10.0.0.4"))
            .with_port(9093)
            .with_unknown_tagged_fields(tags(0, 0));
        for cluster_id in [None, Some(str_bytes("6XXO11kVSwar0BjlI9ANow"))] {
            let m = AddRaftVoterRequest::default()
                .with_cluster_id(cluster_id.clone())
                .with_timeout_ms(30_000)
                .with_voter_id(4)
                .with_listeners(vec![listener.clone(), listener.clone()])
                .with_unknown_tagged_fields(tags(0, 0));
            assert_walks_exactly(ApiKey::AddRaftVoter, 0, &m);
            let m = RemoveRaftVoterRequest::default()
                .with_cluster_id(cluster_id)
                .with_voter_id(4)
                .with_unknown_tagged_fields(tags(0, 0));
            assert_walks_exactly(ApiKey::RemoveRaftVoter, 0, &m);
        }
    }

    #[test]
    fn offset_for_leader_epoch_requests_of_every_version_walk_exactly() {
        use crate::protocol::messages::offset_for_leader_epoch_request::{
            OffsetForLeaderPartition, OffsetForLeaderTopic,
        };
        for v in 2..=4 {
            let p = OffsetForLeaderPartition::default()
                .with_partition(3)
                .with_current_leader_epoch(7)
                .with_leader_epoch(5)
                .with_unknown_tagged_fields(tags(v, 4));
            let t = OffsetForLeaderTopic::default()
                .with_topic(topic("orders"))
                .with_partitions(vec![p.clone(), p])
                .with_unknown_tagged_fields(tags(v, 4));
            let m = OffsetForLeaderEpochRequest::default()
                .with_replica_id(BrokerId(if v >= 3 { 2 } else { -1 }))
                .with_topics(vec![t.clone(), OffsetForLeaderTopic::default().with_topic(topic("")), t])
                .with_unknown_tagged_fields(tags(v, 4));
            assert_walks_exactly(ApiKey::OffsetForLeaderEpoch, v, &m);
        }
        // Two partitions of 12 bytes each cannot fit in 12 bytes (v2: topic "a", count 2).
        let body = [&[0u8, 0, 0, 1, 0, 1, b'a', 0, 0, 0, 2][..], &[0; 12]].concat();
        assert!(too_long(check_array_bounds(ApiKey::OffsetForLeaderEpoch, 2, &body)));
        assert!(matches!(
            check_array_bounds(ApiKey::OffsetForLeaderEpoch, 1, &[]),
            Err(ProtocolError::UnsupportedVersion { .. })
        ));
    }

    fn body(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn too_long(result: Result<usize, ProtocolError>) -> bool {
        matches!(result, Err(ProtocolError::Malformed { what: ARRAY_TOO_LONG, .. }))
    }

    #[test]
    fn refuses_counts_that_cannot_fit_before_the_decoder_reserves_them() {
        // Metadata v1: topics count 0x7fffffff and nothing else (the decoder would reserve
        // ~150 GB and abort).
        assert!(too_long(check_array_bounds(ApiKey::Metadata, 1, &[0x7f, 0xff, 0xff, 0xff])));
        // Produce v3: null transactional id, acks, timeout, topic count.
        let produce = body(&[&[0xff, 0xff, 0, 1, 0, 0, 0, 0], &i32::MAX.to_be_bytes()]);
        assert!(too_long(check_array_bounds(ApiKey::Produce, 3, &produce)));
        // CreateTopics v5 (flexible): compact count 0xffffffff - 1.
        assert!(too_long(check_array_bounds(ApiKey::CreateTopics, 5, &[0xff, 0xff, 0xff, 0xff, 0x0f])));
        // Nested: one valid Produce v3 topic whose partition count is huge.
        let nested = body(&[&[0xff, 0xff, 0, 1, 0, 0, 0, 0], &1i32.to_be_bytes(), &[0, 1, b't'], &[0x7f, 0, 0, 0]]);
        assert!(too_long(check_array_bounds(ApiKey::Produce, 3, &nested)));
        // An int32 array inside a struct array (CreatePartitions v0 broker_ids).
        let cp =
            body(&[&1i32.to_be_bytes(), &[0, 1, b't'], &3i32.to_be_bytes(), &1i32.to_be_bytes(), &[0x10, 0, 0, 0]]);
        assert!(too_long(check_array_bounds(ApiKey::CreatePartitions, 0, &cp)));
    }

    #[test]
    fn count_bound_uses_the_smallest_element() {
        // ForgottenTopic partitions (Fetch v7): int32 elements, so 3 elements need 12 bytes.
        let fetch_v7 = |count: i32, tail: usize| {
            let mut b = BytesMut::new();
            b.put_bytes(0, 25); // replica_id .. session_epoch
            b.put_i32(0); // topics
            b.put_i32(1); // forgotten_topics_data
            b.put_slice(&[0, 1, b't']);
            b.put_i32(count);
            b.put_bytes(0, tail);
            b.to_vec()
        };
        assert_eq!(check_array_bounds(ApiKey::Fetch, 7, &fetch_v7(3, 12)).unwrap(), 52);
        assert!(too_long(check_array_bounds(ApiKey::Fetch, 7, &fetch_v7(3, 11))));
        // Metadata v1 topics: each is at least a 2-byte string length.
        assert_eq!(check_array_bounds(ApiKey::Metadata, 1, &[0, 0, 0, 2, 0, 0, 0, 0]).unwrap(), 8);
        assert!(too_long(check_array_bounds(ApiKey::Metadata, 1, &[0, 0, 0, 2, 0, 0, 0])));
    }

    #[test]
    fn known_tags_are_parsed_in_place_and_unknown_ones_skipped() {
        // Fetch v12, everything empty, then tagged fields: tag 0 (cluster_id) whose declared
        // size is wrong - the decoder reads the string regardless - and an unknown tag.
        let mut b = BytesMut::new();
        b.put_bytes(0, 25); // replica_id .. session_epoch
        b.put_u8(1); // topics: compact, empty
        b.put_u8(1); // forgotten_topics_data: empty
        b.put_u8(1); // rack_id: ""
        b.put_u8(2); // two tagged fields
        b.put_slice(&[0, 0, 4, b'a', b'b', b'c']); // tag 0, size 0, compact string "abc"
        b.put_slice(&[5, 2, 0xaa, 0xbb]); // tag 5, size 2
        let body = b.freeze();
        assert_eq!(check_array_bounds(ApiKey::Fetch, 12, &body).unwrap(), body.len());
        let mut rest = body.clone();
        let decoded: FetchRequest = decode_body("fetch", &mut rest, 12).unwrap();
        assert!(rest.is_empty());
        assert_eq!(decoded.cluster_id.as_deref(), Some("abc"));
        // Tag 1 (replica_state) does not exist before v15; the decoder refuses it too.
        let mut bad = body[..28].to_vec();
        bad.extend_from_slice(&[1, 1, 12]);
        bad.extend_from_slice(&[0; 12]);
        assert!(check_array_bounds(ApiKey::Fetch, 12, &bad).is_err());
        assert!(decode_body::<FetchRequest>("fetch", &mut Bytes::from(bad), 12).is_err());
    }

    #[test]
    fn unknown_apis_and_versions_are_refused() {
        assert!(matches!(
            check_array_bounds(ApiKey::Metadata, 14, &[]),
            Err(ProtocolError::UnsupportedVersion { api: "Metadata", version: 14 })
        ));
        assert!(matches!(check_array_bounds(ApiKey::Produce, 2, &[]), Err(ProtocolError::UnsupportedVersion { .. })));
        assert!(check_array_bounds(ApiKey::DescribeAcls, 0, &[]).is_err());
    }

    fn api_and_version() -> impl Strategy<Value = (ApiKey, i16)> {
        prop_oneof![
            (0..=4i16).prop_map(|v| (ApiKey::ApiVersions, v)),
            (0..=13i16).prop_map(|v| (ApiKey::Metadata, v)),
            (3..=13i16).prop_map(|v| (ApiKey::Produce, v)),
            (4..=18i16).prop_map(|v| (ApiKey::Fetch, v)),
            (1..=10i16).prop_map(|v| (ApiKey::ListOffsets, v)),
            (2..=7i16).prop_map(|v| (ApiKey::CreateTopics, v)),
            (1..=6i16).prop_map(|v| (ApiKey::DeleteTopics, v)),
            (0..=3i16).prop_map(|v| (ApiKey::CreatePartitions, v)),
            (1..=4i16).prop_map(|v| (ApiKey::DescribeConfigs, v)),
            (0..=1i16).prop_map(|v| (ApiKey::IncrementalAlterConfigs, v)),
            (0..=5i16).prop_map(|v| (ApiKey::InitProducerId, v)),
            (0..=6i16).prop_map(|v| (ApiKey::FindCoordinator, v)),
            (0..=9i16).prop_map(|v| (ApiKey::JoinGroup, v)),
            (0..=5i16).prop_map(|v| (ApiKey::SyncGroup, v)),
            (0..=4i16).prop_map(|v| (ApiKey::Heartbeat, v)),
            (0..=5i16).prop_map(|v| (ApiKey::LeaveGroup, v)),
            (2..=9i16).prop_map(|v| (ApiKey::OffsetCommit, v)),
            (1..=9i16).prop_map(|v| (ApiKey::OffsetFetch, v)),
            (0..=6i16).prop_map(|v| (ApiKey::DescribeGroups, v)),
            (0..=5i16).prop_map(|v| (ApiKey::ListGroups, v)),
            (0..=2i16).prop_map(|v| (ApiKey::DeleteGroups, v)),
            (0..=0i16).prop_map(|v| (ApiKey::OffsetDelete, v)),
            (2..=4i16).prop_map(|v| (ApiKey::OffsetForLeaderEpoch, v)),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic_and_stay_in_bounds(
            (api_key, version) in api_and_version(),
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            if let Ok(walked) = check_array_bounds(api_key, version, &bytes) {
                prop_assert!(walked <= bytes.len());
            }
        }
    }
}

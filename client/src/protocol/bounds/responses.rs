//! Bounds schemas of the responses the client and the broker's replica fetcher decode, for
//! [`super::check_response_array_bounds`]. They mirror the `Decodable` impls of
//! `kafka-protocol` 0.18.0's `*_response.rs` in every version that crate supports: fields in
//! decode order with the versions they are read in, and the tagged fields a decoder parses in
//! place. A nested struct's static is named after the crate's struct, prefixed with the API
//! unless its name already starts with it.

use super::{f, Message, Struct, Tagged, Ty, ANY, BOOL, INT16, INT32, INT64, INT8, UUID};
use crate::protocol::ApiKey;

static API_VERSIONS_API_VERSION: Struct = Struct {
    fields: &[
        f(0, ANY, INT16), // api_key
        f(0, ANY, INT16), // min_version
        f(0, ANY, INT16), // max_version
    ],
    tagged: &[],
};
static API_VERSIONS_SUPPORTED_FEATURE_KEY: Struct = Struct {
    fields: &[
        f(3, ANY, Ty::String), // name
        f(3, ANY, INT16),      // min_version
        f(3, ANY, INT16),      // max_version
    ],
    tagged: &[],
};
static API_VERSIONS_FINALIZED_FEATURE_KEY: Struct = Struct {
    fields: &[
        f(3, ANY, Ty::String), // name
        f(3, ANY, INT16),      // max_version_level
        f(3, ANY, INT16),      // min_version_level
    ],
    tagged: &[],
};
static API_VERSIONS: Message = Message {
    name: "ApiVersions",
    min_version: 0,
    max_version: 4,
    flexible_from: 3,
    body: Struct {
        fields: &[
            f(0, ANY, INT16),                                             // error_code
            f(0, ANY, Ty::Array(&Ty::Struct(&API_VERSIONS_API_VERSION))), // api_keys
            f(1, ANY, INT32),                                             // throttle_time_ms
        ],
        tagged: &[
            Tagged { tag: 0, min: 3, max: ANY, ty: Ty::Array(&Ty::Struct(&API_VERSIONS_SUPPORTED_FEATURE_KEY)) }, // supported_features
            Tagged { tag: 1, min: 3, max: ANY, ty: INT64 }, // finalized_features_epoch
            Tagged { tag: 2, min: 3, max: ANY, ty: Ty::Array(&Ty::Struct(&API_VERSIONS_FINALIZED_FEATURE_KEY)) }, // finalized_features
            Tagged { tag: 3, min: 3, max: ANY, ty: BOOL }, // zk_migration_ready
        ],
    },
};

static METADATA_RESPONSE_BROKER: Struct = Struct {
    fields: &[
        f(0, ANY, INT32),      // node_id
        f(0, ANY, Ty::String), // host
        f(0, ANY, INT32),      // port
        f(1, ANY, Ty::String), // rack
    ],
    tagged: &[],
};
static METADATA_RESPONSE_PARTITION: Struct = Struct {
    fields: &[
        f(0, ANY, INT16),             // error_code
        f(0, ANY, INT32),             // partition_index
        f(0, ANY, INT32),             // leader_id
        f(7, ANY, INT32),             // leader_epoch
        f(0, ANY, Ty::Array(&INT32)), // replica_nodes
        f(0, ANY, Ty::Array(&INT32)), // isr_nodes
        f(5, ANY, Ty::Array(&INT32)), // offline_replicas
    ],
    tagged: &[],
};
static METADATA_RESPONSE_TOPIC: Struct = Struct {
    fields: &[
        f(0, ANY, INT16),                                                // error_code
        f(0, ANY, Ty::String),                                           // name
        f(10, ANY, UUID),                                                // topic_id
        f(1, ANY, BOOL),                                                 // is_internal
        f(0, ANY, Ty::Array(&Ty::Struct(&METADATA_RESPONSE_PARTITION))), // partitions
        f(8, ANY, INT32),                                                // topic_authorized_operations
    ],
    tagged: &[],
};
static METADATA: Message = Message {
    name: "Metadata",
    min_version: 0,
    max_version: 13,
    flexible_from: 9,
    body: Struct {
        fields: &[
            f(3, ANY, INT32),                                             // throttle_time_ms
            f(0, ANY, Ty::Array(&Ty::Struct(&METADATA_RESPONSE_BROKER))), // brokers
            f(2, ANY, Ty::String),                                        // cluster_id
            f(1, ANY, INT32),                                             // controller_id
            f(0, ANY, Ty::Array(&Ty::Struct(&METADATA_RESPONSE_TOPIC))),  // topics
            f(8, 10, INT32),                                              // cluster_authorized_operations
            f(13, ANY, INT16),                                            // error_code
        ],
        tagged: &[],
    },
};

static PRODUCE_BATCH_INDEX_AND_ERROR_MESSAGE: Struct = Struct {
    fields: &[
        f(8, ANY, INT32),      // batch_index
        f(8, ANY, Ty::String), // batch_index_error_message
    ],
    tagged: &[],
};
static PRODUCE_LEADER_ID_AND_EPOCH: Struct = Struct {
    fields: &[
        f(10, ANY, INT32), // leader_id
        f(10, ANY, INT32), // leader_epoch
    ],
    tagged: &[],
};
static PRODUCE_PARTITION_PRODUCE_RESPONSE: Struct = Struct {
    fields: &[
        f(3, ANY, INT32),                                                          // index
        f(3, ANY, INT16),                                                          // error_code
        f(3, ANY, INT64),                                                          // base_offset
        f(3, ANY, INT64),                                                          // log_append_time_ms
        f(5, ANY, INT64),                                                          // log_start_offset
        f(8, ANY, Ty::Array(&Ty::Struct(&PRODUCE_BATCH_INDEX_AND_ERROR_MESSAGE))), // record_errors
        f(8, ANY, Ty::String),                                                     // error_message
    ],
    tagged: &[
        Tagged { tag: 0, min: 10, max: ANY, ty: Ty::Struct(&PRODUCE_LEADER_ID_AND_EPOCH) }, // current_leader
    ],
};
static PRODUCE_TOPIC_PRODUCE_RESPONSE: Struct = Struct {
    fields: &[
        f(3, 12, Ty::String),                                                   // name
        f(13, ANY, UUID),                                                       // topic_id
        f(3, ANY, Ty::Array(&Ty::Struct(&PRODUCE_PARTITION_PRODUCE_RESPONSE))), // partition_responses
    ],
    tagged: &[],
};
static PRODUCE_NODE_ENDPOINT: Struct = Struct {
    fields: &[
        f(10, ANY, INT32),      // node_id
        f(10, ANY, Ty::String), // host
        f(10, ANY, INT32),      // port
        f(10, ANY, Ty::String), // rack
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
            f(3, ANY, Ty::Array(&Ty::Struct(&PRODUCE_TOPIC_PRODUCE_RESPONSE))), // responses
            f(3, ANY, INT32),                                                   // throttle_time_ms
        ],
        tagged: &[
            Tagged { tag: 0, min: 10, max: ANY, ty: Ty::Array(&Ty::Struct(&PRODUCE_NODE_ENDPOINT)) }, // node_endpoints
        ],
    },
};

static FETCH_ABORTED_TRANSACTION: Struct = Struct {
    fields: &[
        f(4, ANY, INT64), // producer_id
        f(4, ANY, INT64), // first_offset
    ],
    tagged: &[],
};
static FETCH_EPOCH_END_OFFSET: Struct = Struct {
    fields: &[
        f(12, ANY, INT32), // epoch
        f(12, ANY, INT64), // end_offset
    ],
    tagged: &[],
};
static FETCH_LEADER_ID_AND_EPOCH: Struct = Struct {
    fields: &[
        f(12, ANY, INT32), // leader_id
        f(12, ANY, INT32), // leader_epoch
    ],
    tagged: &[],
};
static FETCH_SNAPSHOT_ID: Struct = Struct {
    fields: &[
        f(4, ANY, INT64), // end_offset
        f(4, ANY, INT32), // epoch
    ],
    tagged: &[],
};
static FETCH_PARTITION_DATA: Struct = Struct {
    fields: &[
        f(4, ANY, INT32),                                              // partition_index
        f(4, ANY, INT16),                                              // error_code
        f(4, ANY, INT64),                                              // high_watermark
        f(4, ANY, INT64),                                              // last_stable_offset
        f(5, ANY, INT64),                                              // log_start_offset
        f(4, ANY, Ty::Array(&Ty::Struct(&FETCH_ABORTED_TRANSACTION))), // aborted_transactions
        f(11, ANY, INT32),                                             // preferred_read_replica
        f(4, ANY, Ty::Bytes),                                          // records
    ],
    tagged: &[
        Tagged { tag: 0, min: 12, max: ANY, ty: Ty::Struct(&FETCH_EPOCH_END_OFFSET) }, // diverging_epoch
        Tagged { tag: 1, min: 12, max: ANY, ty: Ty::Struct(&FETCH_LEADER_ID_AND_EPOCH) }, // current_leader
        Tagged { tag: 2, min: 12, max: ANY, ty: Ty::Struct(&FETCH_SNAPSHOT_ID) },      // snapshot_id
    ],
};
static FETCH_FETCHABLE_TOPIC_RESPONSE: Struct = Struct {
    fields: &[
        f(4, 12, Ty::String),                                     // topic
        f(13, ANY, UUID),                                         // topic_id
        f(4, ANY, Ty::Array(&Ty::Struct(&FETCH_PARTITION_DATA))), // partitions
    ],
    tagged: &[],
};
static FETCH_NODE_ENDPOINT: Struct = Struct {
    fields: &[
        f(16, ANY, INT32),      // node_id
        f(16, ANY, Ty::String), // host
        f(16, ANY, INT32),      // port
        f(16, ANY, Ty::String), // rack
    ],
    tagged: &[],
};
static FETCH: Message = Message {
    name: "Fetch",
    min_version: 4,
    max_version: 18,
    flexible_from: 12,
    body: Struct {
        fields: &[
            f(4, ANY, INT32),                                                   // throttle_time_ms
            f(7, ANY, INT16),                                                   // error_code
            f(7, ANY, INT32),                                                   // session_id
            f(4, ANY, Ty::Array(&Ty::Struct(&FETCH_FETCHABLE_TOPIC_RESPONSE))), // responses
        ],
        tagged: &[
            Tagged { tag: 0, min: 16, max: ANY, ty: Ty::Array(&Ty::Struct(&FETCH_NODE_ENDPOINT)) }, // node_endpoints
        ],
    },
};

static LIST_OFFSETS_PARTITION_RESPONSE: Struct = Struct {
    fields: &[
        f(1, ANY, INT32), // partition_index
        f(1, ANY, INT16), // error_code
        f(1, ANY, INT64), // timestamp
        f(1, ANY, INT64), // offset
        f(4, ANY, INT32), // leader_epoch
    ],
    tagged: &[],
};
static LIST_OFFSETS_TOPIC_RESPONSE: Struct = Struct {
    fields: &[
        f(1, ANY, Ty::String),                                               // name
        f(1, ANY, Ty::Array(&Ty::Struct(&LIST_OFFSETS_PARTITION_RESPONSE))), // partitions
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
            f(2, ANY, INT32),                                                // throttle_time_ms
            f(1, ANY, Ty::Array(&Ty::Struct(&LIST_OFFSETS_TOPIC_RESPONSE))), // topics
        ],
        tagged: &[],
    },
};

static CREATE_TOPICS_CREATABLE_TOPIC_CONFIGS: Struct = Struct {
    fields: &[
        f(5, ANY, Ty::String), // name
        f(5, ANY, Ty::String), // value
        f(5, ANY, BOOL),       // read_only
        f(5, ANY, INT8),       // config_source
        f(5, ANY, BOOL),       // is_sensitive
    ],
    tagged: &[],
};
static CREATE_TOPICS_CREATABLE_TOPIC_RESULT: Struct = Struct {
    fields: &[
        f(2, ANY, Ty::String),                                                     // name
        f(7, ANY, UUID),                                                           // topic_id
        f(2, ANY, INT16),                                                          // error_code
        f(2, ANY, Ty::String),                                                     // error_message
        f(5, ANY, INT32),                                                          // num_partitions
        f(5, ANY, INT16),                                                          // replication_factor
        f(5, ANY, Ty::Array(&Ty::Struct(&CREATE_TOPICS_CREATABLE_TOPIC_CONFIGS))), // configs
    ],
    tagged: &[
        Tagged { tag: 0, min: 5, max: ANY, ty: INT16 }, // topic_config_error_code
    ],
};
static CREATE_TOPICS: Message = Message {
    name: "CreateTopics",
    min_version: 2,
    max_version: 7,
    flexible_from: 5,
    body: Struct {
        fields: &[
            f(2, ANY, INT32),                                                         // throttle_time_ms
            f(2, ANY, Ty::Array(&Ty::Struct(&CREATE_TOPICS_CREATABLE_TOPIC_RESULT))), // topics
        ],
        tagged: &[],
    },
};

static DELETE_TOPICS_DELETABLE_TOPIC_RESULT: Struct = Struct {
    fields: &[
        f(1, ANY, Ty::String), // name
        f(6, ANY, UUID),       // topic_id
        f(1, ANY, INT16),      // error_code
        f(5, ANY, Ty::String), // error_message
    ],
    tagged: &[],
};
static DELETE_TOPICS: Message = Message {
    name: "DeleteTopics",
    min_version: 1,
    max_version: 6,
    flexible_from: 4,
    body: Struct {
        fields: &[
            f(1, ANY, INT32),                                                         // throttle_time_ms
            f(1, ANY, Ty::Array(&Ty::Struct(&DELETE_TOPICS_DELETABLE_TOPIC_RESULT))), // responses
        ],
        tagged: &[],
    },
};

static CREATE_PARTITIONS_TOPIC_RESULT: Struct = Struct {
    fields: &[
        f(0, ANY, Ty::String), // name
        f(0, ANY, INT16),      // error_code
        f(0, ANY, Ty::String), // error_message
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
            f(0, ANY, INT32),                                                   // throttle_time_ms
            f(0, ANY, Ty::Array(&Ty::Struct(&CREATE_PARTITIONS_TOPIC_RESULT))), // results
        ],
        tagged: &[],
    },
};

static DESCRIBE_CONFIGS_SYNONYM: Struct = Struct {
    fields: &[
        f(1, ANY, Ty::String), // name
        f(1, ANY, Ty::String), // value
        f(1, ANY, INT8),       // source
    ],
    tagged: &[],
};
static DESCRIBE_CONFIGS_RESOURCE_RESULT: Struct = Struct {
    fields: &[
        f(1, ANY, Ty::String),                                        // name
        f(1, ANY, Ty::String),                                        // value
        f(1, ANY, BOOL),                                              // read_only
        f(1, ANY, INT8),                                              // config_source
        f(1, ANY, BOOL),                                              // is_sensitive
        f(1, ANY, Ty::Array(&Ty::Struct(&DESCRIBE_CONFIGS_SYNONYM))), // synonyms
        f(3, ANY, INT8),                                              // config_type
        f(3, ANY, Ty::String),                                        // documentation
    ],
    tagged: &[],
};
static DESCRIBE_CONFIGS_RESULT: Struct = Struct {
    fields: &[
        f(1, ANY, INT16),                                                     // error_code
        f(1, ANY, Ty::String),                                                // error_message
        f(1, ANY, INT8),                                                      // resource_type
        f(1, ANY, Ty::String),                                                // resource_name
        f(1, ANY, Ty::Array(&Ty::Struct(&DESCRIBE_CONFIGS_RESOURCE_RESULT))), // configs
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
            f(1, ANY, INT32),                                            // throttle_time_ms
            f(1, ANY, Ty::Array(&Ty::Struct(&DESCRIBE_CONFIGS_RESULT))), // results
        ],
        tagged: &[],
    },
};

static INCREMENTAL_ALTER_CONFIGS_ALTER_CONFIGS_RESOURCE_RESPONSE: Struct = Struct {
    fields: &[
        f(0, ANY, INT16),      // error_code
        f(0, ANY, Ty::String), // error_message
        f(0, ANY, INT8),       // resource_type
        f(0, ANY, Ty::String), // resource_name
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
            f(0, ANY, INT32), // throttle_time_ms
            f(0, ANY, Ty::Array(&Ty::Struct(&INCREMENTAL_ALTER_CONFIGS_ALTER_CONFIGS_RESOURCE_RESPONSE))), // responses
        ],
        tagged: &[],
    },
};

static INIT_PRODUCER_ID: Message = Message {
    name: "InitProducerId",
    min_version: 0,
    max_version: 6,
    flexible_from: 2,
    body: Struct {
        fields: &[
            f(0, ANY, INT32), // throttle_time_ms
            f(0, ANY, INT16), // error_code
            f(0, ANY, INT64), // producer_id
            f(0, ANY, INT16), // producer_epoch
            f(6, ANY, INT64), // ongoing_txn_producer_id
            f(6, ANY, INT16), // ongoing_txn_producer_epoch
        ],
        tagged: &[],
    },
};

static FIND_COORDINATOR_COORDINATOR: Struct = Struct {
    fields: &[
        f(4, ANY, Ty::String), // key
        f(4, ANY, INT32),      // node_id
        f(4, ANY, Ty::String), // host
        f(4, ANY, INT32),      // port
        f(4, ANY, INT16),      // error_code
        f(4, ANY, Ty::String), // error_message
    ],
    tagged: &[],
};
static FIND_COORDINATOR: Message = Message {
    name: "FindCoordinator",
    min_version: 0,
    max_version: 6,
    flexible_from: 3,
    body: Struct {
        fields: &[
            f(1, ANY, INT32),                                                 // throttle_time_ms
            f(0, 3, INT16),                                                   // error_code
            f(1, 3, Ty::String),                                              // error_message
            f(0, 3, INT32),                                                   // node_id
            f(0, 3, Ty::String),                                              // host
            f(0, 3, INT32),                                                   // port
            f(4, ANY, Ty::Array(&Ty::Struct(&FIND_COORDINATOR_COORDINATOR))), // coordinators
        ],
        tagged: &[],
    },
};

static JOIN_GROUP_RESPONSE_MEMBER: Struct = Struct {
    fields: &[
        f(0, ANY, Ty::String), // member_id
        f(5, ANY, Ty::String), // group_instance_id
        f(0, ANY, Ty::Bytes),  // metadata
    ],
    tagged: &[],
};
static JOIN_GROUP: Message = Message {
    name: "JoinGroup",
    min_version: 0,
    max_version: 9,
    flexible_from: 6,
    body: Struct {
        fields: &[
            f(2, ANY, INT32),                                               // throttle_time_ms
            f(0, ANY, INT16),                                               // error_code
            f(0, ANY, INT32),                                               // generation_id
            f(7, ANY, Ty::String),                                          // protocol_type
            f(0, ANY, Ty::String),                                          // protocol_name
            f(0, ANY, Ty::String),                                          // leader
            f(9, ANY, BOOL),                                                // skip_assignment
            f(0, ANY, Ty::String),                                          // member_id
            f(0, ANY, Ty::Array(&Ty::Struct(&JOIN_GROUP_RESPONSE_MEMBER))), // members
        ],
        tagged: &[],
    },
};

static SYNC_GROUP: Message = Message {
    name: "SyncGroup",
    min_version: 0,
    max_version: 5,
    flexible_from: 4,
    body: Struct {
        fields: &[
            f(1, ANY, INT32),      // throttle_time_ms
            f(0, ANY, INT16),      // error_code
            f(5, ANY, Ty::String), // protocol_type
            f(5, ANY, Ty::String), // protocol_name
            f(0, ANY, Ty::Bytes),  // assignment
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
            f(1, ANY, INT32), // throttle_time_ms
            f(0, ANY, INT16), // error_code
        ],
        tagged: &[],
    },
};

static LEAVE_GROUP_MEMBER_RESPONSE: Struct = Struct {
    fields: &[
        f(3, ANY, Ty::String), // member_id
        f(3, ANY, Ty::String), // group_instance_id
        f(3, ANY, INT16),      // error_code
    ],
    tagged: &[],
};
static LEAVE_GROUP: Message = Message {
    name: "LeaveGroup",
    min_version: 0,
    max_version: 5,
    flexible_from: 4,
    body: Struct {
        fields: &[
            f(1, ANY, INT32),                                                // throttle_time_ms
            f(0, ANY, INT16),                                                // error_code
            f(3, ANY, Ty::Array(&Ty::Struct(&LEAVE_GROUP_MEMBER_RESPONSE))), // members
        ],
        tagged: &[],
    },
};

static OFFSET_COMMIT_RESPONSE_PARTITION: Struct = Struct {
    fields: &[
        f(2, ANY, INT32), // partition_index
        f(2, ANY, INT16), // error_code
    ],
    tagged: &[],
};
static OFFSET_COMMIT_RESPONSE_TOPIC: Struct = Struct {
    fields: &[
        f(2, 9, Ty::String),                                                  // name
        f(10, ANY, UUID),                                                     // topic_id
        f(2, ANY, Ty::Array(&Ty::Struct(&OFFSET_COMMIT_RESPONSE_PARTITION))), // partitions
    ],
    tagged: &[],
};
static OFFSET_COMMIT: Message = Message {
    name: "OffsetCommit",
    min_version: 2,
    max_version: 10,
    flexible_from: 8,
    body: Struct {
        fields: &[
            f(3, ANY, INT32),                                                 // throttle_time_ms
            f(2, ANY, Ty::Array(&Ty::Struct(&OFFSET_COMMIT_RESPONSE_TOPIC))), // topics
        ],
        tagged: &[],
    },
};

static OFFSET_FETCH_RESPONSE_PARTITION: Struct = Struct {
    fields: &[
        f(1, 7, INT32),      // partition_index
        f(1, 7, INT64),      // committed_offset
        f(5, 7, INT32),      // committed_leader_epoch
        f(1, 7, Ty::String), // metadata
        f(1, 7, INT16),      // error_code
    ],
    tagged: &[],
};
static OFFSET_FETCH_RESPONSE_TOPIC: Struct = Struct {
    fields: &[
        f(1, 7, Ty::String),                                               // name
        f(1, 7, Ty::Array(&Ty::Struct(&OFFSET_FETCH_RESPONSE_PARTITION))), // partitions
    ],
    tagged: &[],
};
static OFFSET_FETCH_RESPONSE_PARTITIONS: Struct = Struct {
    fields: &[
        f(8, ANY, INT32),      // partition_index
        f(8, ANY, INT64),      // committed_offset
        f(8, ANY, INT32),      // committed_leader_epoch
        f(8, ANY, Ty::String), // metadata
        f(8, ANY, INT16),      // error_code
    ],
    tagged: &[],
};
static OFFSET_FETCH_RESPONSE_TOPICS: Struct = Struct {
    fields: &[
        f(8, 9, Ty::String),                                                  // name
        f(10, ANY, UUID),                                                     // topic_id
        f(8, ANY, Ty::Array(&Ty::Struct(&OFFSET_FETCH_RESPONSE_PARTITIONS))), // partitions
    ],
    tagged: &[],
};
static OFFSET_FETCH_RESPONSE_GROUP: Struct = Struct {
    fields: &[
        f(8, ANY, Ty::String),                                            // group_id
        f(8, ANY, Ty::Array(&Ty::Struct(&OFFSET_FETCH_RESPONSE_TOPICS))), // topics
        f(8, ANY, INT16),                                                 // error_code
    ],
    tagged: &[],
};
static OFFSET_FETCH: Message = Message {
    name: "OffsetFetch",
    min_version: 1,
    max_version: 10,
    flexible_from: 6,
    body: Struct {
        fields: &[
            f(3, ANY, INT32),                                                // throttle_time_ms
            f(1, 7, Ty::Array(&Ty::Struct(&OFFSET_FETCH_RESPONSE_TOPIC))),   // topics
            f(2, 7, INT16),                                                  // error_code
            f(8, ANY, Ty::Array(&Ty::Struct(&OFFSET_FETCH_RESPONSE_GROUP))), // groups
        ],
        tagged: &[],
    },
};

static DESCRIBE_GROUPS_DESCRIBED_GROUP_MEMBER: Struct = Struct {
    fields: &[
        f(0, ANY, Ty::String), // member_id
        f(4, ANY, Ty::String), // group_instance_id
        f(0, ANY, Ty::String), // client_id
        f(0, ANY, Ty::String), // client_host
        f(0, ANY, Ty::Bytes),  // member_metadata
        f(0, ANY, Ty::Bytes),  // member_assignment
    ],
    tagged: &[],
};
static DESCRIBE_GROUPS_DESCRIBED_GROUP: Struct = Struct {
    fields: &[
        f(0, ANY, INT16),                                                           // error_code
        f(6, ANY, Ty::String),                                                      // error_message
        f(0, ANY, Ty::String),                                                      // group_id
        f(0, ANY, Ty::String),                                                      // group_state
        f(0, ANY, Ty::String),                                                      // protocol_type
        f(0, ANY, Ty::String),                                                      // protocol_data
        f(0, ANY, Ty::Array(&Ty::Struct(&DESCRIBE_GROUPS_DESCRIBED_GROUP_MEMBER))), // members
        f(3, ANY, INT32),                                                           // authorized_operations
    ],
    tagged: &[],
};
static DESCRIBE_GROUPS: Message = Message {
    name: "DescribeGroups",
    min_version: 0,
    max_version: 6,
    flexible_from: 5,
    body: Struct {
        fields: &[
            f(1, ANY, INT32),                                                    // throttle_time_ms
            f(0, ANY, Ty::Array(&Ty::Struct(&DESCRIBE_GROUPS_DESCRIBED_GROUP))), // groups
        ],
        tagged: &[],
    },
};

static LIST_GROUPS_LISTED_GROUP: Struct = Struct {
    fields: &[
        f(0, ANY, Ty::String), // group_id
        f(0, ANY, Ty::String), // protocol_type
        f(4, ANY, Ty::String), // group_state
        f(5, ANY, Ty::String), // group_type
    ],
    tagged: &[],
};
static LIST_GROUPS: Message = Message {
    name: "ListGroups",
    min_version: 0,
    max_version: 5,
    flexible_from: 3,
    body: Struct {
        fields: &[
            f(1, ANY, INT32),                                             // throttle_time_ms
            f(0, ANY, INT16),                                             // error_code
            f(0, ANY, Ty::Array(&Ty::Struct(&LIST_GROUPS_LISTED_GROUP))), // groups
        ],
        tagged: &[],
    },
};

static DELETE_GROUPS_DELETABLE_GROUP_RESULT: Struct = Struct {
    fields: &[
        f(0, ANY, Ty::String), // group_id
        f(0, ANY, INT16),      // error_code
    ],
    tagged: &[],
};
static DELETE_GROUPS: Message = Message {
    name: "DeleteGroups",
    min_version: 0,
    max_version: 2,
    flexible_from: 2,
    body: Struct {
        fields: &[
            f(0, ANY, INT32),                                                         // throttle_time_ms
            f(0, ANY, Ty::Array(&Ty::Struct(&DELETE_GROUPS_DELETABLE_GROUP_RESULT))), // results
        ],
        tagged: &[],
    },
};

static OFFSET_DELETE_RESPONSE_PARTITION: Struct = Struct {
    fields: &[
        f(0, ANY, INT32), // partition_index
        f(0, ANY, INT16), // error_code
    ],
    tagged: &[],
};
static OFFSET_DELETE_RESPONSE_TOPIC: Struct = Struct {
    fields: &[
        f(0, ANY, Ty::String),                                                // name
        f(0, ANY, Ty::Array(&Ty::Struct(&OFFSET_DELETE_RESPONSE_PARTITION))), // partitions
    ],
    tagged: &[],
};
static OFFSET_DELETE: Message = Message {
    name: "OffsetDelete",
    min_version: 0,
    max_version: 0,
    flexible_from: ANY,
    body: Struct {
        fields: &[
            f(0, ANY, INT16),                                                 // error_code
            f(0, ANY, INT32),                                                 // throttle_time_ms
            f(0, ANY, Ty::Array(&Ty::Struct(&OFFSET_DELETE_RESPONSE_TOPIC))), // topics
        ],
        tagged: &[],
    },
};

static OFFSET_FOR_LEADER_EPOCH_EPOCH_END_OFFSET: Struct = Struct {
    fields: &[
        f(2, ANY, INT16), // error_code
        f(2, ANY, INT32), // partition
        f(2, ANY, INT32), // leader_epoch
        f(2, ANY, INT64), // end_offset
    ],
    tagged: &[],
};
static OFFSET_FOR_LEADER_EPOCH_OFFSET_FOR_LEADER_TOPIC_RESULT: Struct = Struct {
    fields: &[
        f(2, ANY, Ty::String),                                                        // topic
        f(2, ANY, Ty::Array(&Ty::Struct(&OFFSET_FOR_LEADER_EPOCH_EPOCH_END_OFFSET))), // partitions
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
            f(2, ANY, INT32), // throttle_time_ms
            f(2, ANY, Ty::Array(&Ty::Struct(&OFFSET_FOR_LEADER_EPOCH_OFFSET_FOR_LEADER_TOPIC_RESULT))), // topics
        ],
        tagged: &[],
    },
};

// WriteTxnMarkers (broker to broker): markers [producer_id, topics [name, partitions
// [partition_index, error_code]]].
static WRITE_TXN_MARKERS_PARTITION: Struct = Struct { fields: &[f(0, ANY, INT32), f(0, ANY, INT16)], tagged: &[] };
static WRITE_TXN_MARKERS_TOPIC: Struct = Struct {
    fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::Array(&Ty::Struct(&WRITE_TXN_MARKERS_PARTITION)))],
    tagged: &[],
};
static WRITE_TXN_MARKERS_MARKER: Struct =
    Struct { fields: &[f(0, ANY, INT64), f(0, ANY, Ty::Array(&Ty::Struct(&WRITE_TXN_MARKERS_TOPIC)))], tagged: &[] };
static WRITE_TXN_MARKERS: Message = Message {
    name: "WriteTxnMarkers",
    min_version: 1,
    max_version: 1,
    flexible_from: 1,
    body: Struct { fields: &[f(0, ANY, Ty::Array(&Ty::Struct(&WRITE_TXN_MARKERS_MARKER)))], tagged: &[] },
};

static ADD_PARTITIONS_TO_TXN_PARTITION_RESULT: Struct = Struct {
    fields: &[
        f(0, ANY, INT32), // partition_index
        f(0, ANY, INT16), // partition_error_code
    ],
    tagged: &[],
};
static ADD_PARTITIONS_TO_TXN_TOPIC_RESULT: Struct = Struct {
    fields: &[
        f(0, ANY, Ty::String),                                                      // name
        f(0, ANY, Ty::Array(&Ty::Struct(&ADD_PARTITIONS_TO_TXN_PARTITION_RESULT))), // results_by_partition
    ],
    tagged: &[],
};
static ADD_PARTITIONS_TO_TXN_RESULT: Struct = Struct {
    fields: &[
        f(0, ANY, Ty::String),                                                  // transactional_id
        f(0, ANY, Ty::Array(&Ty::Struct(&ADD_PARTITIONS_TO_TXN_TOPIC_RESULT))), // topic_results
    ],
    tagged: &[],
};
static ADD_PARTITIONS_TO_TXN: Message = Message {
    name: "AddPartitionsToTxn",
    min_version: 0,
    max_version: 5,
    flexible_from: 3,
    body: Struct {
        fields: &[
            f(0, ANY, INT32),                                                     // throttle_time_ms
            f(4, ANY, INT16),                                                     // error_code
            f(4, ANY, Ty::Array(&Ty::Struct(&ADD_PARTITIONS_TO_TXN_RESULT))),     // results_by_transaction
            f(0, 3, Ty::Array(&Ty::Struct(&ADD_PARTITIONS_TO_TXN_TOPIC_RESULT))), // results_by_topic_v3_and_below
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
            f(0, ANY, INT32), // throttle_time_ms
            f(0, ANY, INT16), // error_code
        ],
        tagged: &[],
    },
};

static TXN_OFFSET_COMMIT_RESPONSE_PARTITION: Struct = Struct {
    fields: &[
        f(0, ANY, INT32), // partition_index
        f(0, ANY, INT16), // error_code
    ],
    tagged: &[],
};
static TXN_OFFSET_COMMIT_RESPONSE_TOPIC: Struct = Struct {
    fields: &[
        f(0, ANY, Ty::String),                                                    // name
        f(0, ANY, Ty::Array(&Ty::Struct(&TXN_OFFSET_COMMIT_RESPONSE_PARTITION))), // partitions
    ],
    tagged: &[],
};
static TXN_OFFSET_COMMIT: Message = Message {
    name: "TxnOffsetCommit",
    min_version: 0,
    max_version: 5,
    flexible_from: 3,
    body: Struct {
        fields: &[
            f(0, ANY, INT32),                                                     // throttle_time_ms
            f(0, ANY, Ty::Array(&Ty::Struct(&TXN_OFFSET_COMMIT_RESPONSE_TOPIC))), // topics
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
            f(0, ANY, INT32), // throttle_time_ms
            f(0, ANY, INT16), // error_code
            f(5, ANY, INT64), // producer_id
            f(5, ANY, INT16), // producer_epoch
        ],
        tagged: &[],
    },
};

static LIST_TRANSACTIONS_TRANSACTION_STATE: Struct = Struct {
    fields: &[
        f(0, ANY, Ty::String), // transactional_id
        f(0, ANY, INT64),      // producer_id
        f(0, ANY, Ty::String), // transaction_state
    ],
    tagged: &[],
};
static LIST_TRANSACTIONS: Message = Message {
    name: "ListTransactions",
    min_version: 0,
    max_version: 2,
    flexible_from: 0,
    body: Struct {
        fields: &[
            f(0, ANY, INT32),                                                        // throttle_time_ms
            f(0, ANY, INT16),                                                        // error_code
            f(0, ANY, Ty::Array(&Ty::String)),                                       // unknown_state_filters
            f(0, ANY, Ty::Array(&Ty::Struct(&LIST_TRANSACTIONS_TRANSACTION_STATE))), // transaction_states
        ],
        tagged: &[],
    },
};
static DESCRIBE_TRANSACTIONS_TOPIC_DATA: Struct =
    Struct { fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::Array(&INT32))], tagged: &[] };
static DESCRIBE_TRANSACTIONS_TRANSACTION_STATE: Struct = Struct {
    fields: &[
        f(0, ANY, INT16),                                                     // error_code
        f(0, ANY, Ty::String),                                                // transactional_id
        f(0, ANY, Ty::String),                                                // transaction_state
        f(0, ANY, INT32),                                                     // transaction_timeout_ms
        f(0, ANY, INT64),                                                     // transaction_start_time_ms
        f(0, ANY, INT64),                                                     // producer_id
        f(0, ANY, INT16),                                                     // producer_epoch
        f(0, ANY, Ty::Array(&Ty::Struct(&DESCRIBE_TRANSACTIONS_TOPIC_DATA))), // topics
    ],
    tagged: &[],
};
static DESCRIBE_TRANSACTIONS: Message = Message {
    name: "DescribeTransactions",
    min_version: 0,
    max_version: 0,
    flexible_from: 0,
    body: Struct {
        fields: &[
            f(0, ANY, INT32),                                                            // throttle_time_ms
            f(0, ANY, Ty::Array(&Ty::Struct(&DESCRIBE_TRANSACTIONS_TRANSACTION_STATE))), // transaction_states
        ],
        tagged: &[],
    },
};

static DESCRIBE_PRODUCERS_PRODUCER: Struct = Struct {
    fields: &[
        f(0, ANY, INT64), // producer_id
        f(0, ANY, INT32), // producer_epoch
        f(0, ANY, INT32), // last_sequence
        f(0, ANY, INT64), // last_timestamp
        f(0, ANY, INT32), // coordinator_epoch
        f(0, ANY, INT64), // current_txn_start_offset
    ],
    tagged: &[],
};
static DESCRIBE_PRODUCERS_PARTITION: Struct = Struct {
    fields: &[
        f(0, ANY, INT32),                                                // partition_index
        f(0, ANY, INT16),                                                // error_code
        f(0, ANY, Ty::String),                                           // error_message
        f(0, ANY, Ty::Array(&Ty::Struct(&DESCRIBE_PRODUCERS_PRODUCER))), // active_producers
    ],
    tagged: &[],
};
static DESCRIBE_PRODUCERS_TOPIC: Struct = Struct {
    fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::Array(&Ty::Struct(&DESCRIBE_PRODUCERS_PARTITION)))],
    tagged: &[],
};
static DESCRIBE_PRODUCERS: Message = Message {
    name: "DescribeProducers",
    min_version: 0,
    max_version: 0,
    flexible_from: 0,
    body: Struct {
        fields: &[
            f(0, ANY, INT32),                                             // throttle_time_ms
            f(0, ANY, Ty::Array(&Ty::Struct(&DESCRIBE_PRODUCERS_TOPIC))), // topics
        ],
        tagged: &[],
    },
};

// DeleteRecords: throttle_time_ms, topics [name, partitions [partition_index, low_watermark,
// error_code]].
static DELETE_RECORDS_PARTITION: Struct =
    Struct { fields: &[f(0, ANY, INT32), f(0, ANY, INT64), f(0, ANY, INT16)], tagged: &[] };
static DELETE_RECORDS_TOPIC: Struct = Struct {
    fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::Array(&Ty::Struct(&DELETE_RECORDS_PARTITION)))],
    tagged: &[],
};
static DELETE_RECORDS: Message = Message {
    name: "DeleteRecords",
    min_version: 0,
    max_version: 2,
    flexible_from: 2,
    body: Struct { fields: &[f(0, ANY, INT32), f(0, ANY, Ty::Array(&Ty::Struct(&DELETE_RECORDS_TOPIC)))], tagged: &[] },
};

// ElectLeaders: throttle_time_ms, error_code (v1+), replica_election_results [topic,
// partition_result [partition_id, error_code, error_message]].
static ELECT_LEADERS_PARTITION: Struct =
    Struct { fields: &[f(0, ANY, INT32), f(0, ANY, INT16), f(0, ANY, Ty::String)], tagged: &[] };
static ELECT_LEADERS_TOPIC: Struct = Struct {
    fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::Array(&Ty::Struct(&ELECT_LEADERS_PARTITION)))],
    tagged: &[],
};
static ELECT_LEADERS: Message = Message {
    name: "ElectLeaders",
    min_version: 0,
    max_version: 2,
    flexible_from: 2,
    body: Struct {
        fields: &[f(0, ANY, INT32), f(1, ANY, INT16), f(0, ANY, Ty::Array(&Ty::Struct(&ELECT_LEADERS_TOPIC)))],
        tagged: &[],
    },
};

// AlterPartitionReassignments: throttle_time_ms, allow_replication_factor_change (v1+),
// error_code, error_message, responses [name, partitions [partition_index, error_code,
// error_message]].
static REASSIGNABLE_PARTITION_RESPONSE: Struct =
    Struct { fields: &[f(0, ANY, INT32), f(0, ANY, INT16), f(0, ANY, Ty::String)], tagged: &[] };
static REASSIGNABLE_TOPIC_RESPONSE: Struct = Struct {
    fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::Array(&Ty::Struct(&REASSIGNABLE_PARTITION_RESPONSE)))],
    tagged: &[],
};
static ALTER_PARTITION_REASSIGNMENTS: Message = Message {
    name: "AlterPartitionReassignments",
    min_version: 0,
    max_version: 1,
    flexible_from: 0,
    body: Struct {
        fields: &[
            f(0, ANY, INT32),
            f(1, ANY, BOOL),
            f(0, ANY, INT16),
            f(0, ANY, Ty::String),
            f(0, ANY, Ty::Array(&Ty::Struct(&REASSIGNABLE_TOPIC_RESPONSE))),
        ],
        tagged: &[],
    },
};

// ListPartitionReassignments: throttle_time_ms, error_code, error_message, topics [name,
// partitions [partition_index, replicas, adding_replicas, removing_replicas]].
static ONGOING_PARTITION: Struct = Struct {
    fields: &[
        f(0, ANY, INT32),
        f(0, ANY, Ty::Array(&INT32)),
        f(0, ANY, Ty::Array(&INT32)),
        f(0, ANY, Ty::Array(&INT32)),
    ],
    tagged: &[],
};
static ONGOING_TOPIC: Struct =
    Struct { fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::Array(&Ty::Struct(&ONGOING_PARTITION)))], tagged: &[] };
static LIST_PARTITION_REASSIGNMENTS: Message = Message {
    name: "ListPartitionReassignments",
    min_version: 0,
    max_version: 0,
    flexible_from: 0,
    body: Struct {
        fields: &[
            f(0, ANY, INT32),
            f(0, ANY, INT16),
            f(0, ANY, Ty::String),
            f(0, ANY, Ty::Array(&Ty::Struct(&ONGOING_TOPIC))),
        ],
        tagged: &[],
    },
};

// UnregisterBroker: throttle_time_ms, error_code, error_message.
static UNREGISTER_BROKER: Message = Message {
    name: "UnregisterBroker",
    min_version: 0,
    max_version: 0,
    flexible_from: 0,
    body: Struct { fields: &[f(0, ANY, INT32), f(0, ANY, INT16), f(0, ANY, Ty::String)], tagged: &[] },
};

// DescribeQuorum: error_code, error_message (v2), topics [topic_name, partitions [index,
// error_code, error_message (v2), leader_id, leader_epoch, high_watermark, current_voters,
// observers]], nodes (v2) [node_id, listeners [name, host, port]].
static QUORUM_REPLICA: Struct = Struct {
    fields: &[f(0, ANY, INT32), f(2, ANY, UUID), f(0, ANY, INT64), f(1, ANY, INT64), f(1, ANY, INT64)],
    tagged: &[],
};
static QUORUM_PARTITION: Struct = Struct {
    fields: &[
        f(0, ANY, INT32),
        f(0, ANY, INT16),
        f(2, ANY, Ty::String),
        f(0, ANY, INT32),
        f(0, ANY, INT32),
        f(0, ANY, INT64),
        f(0, ANY, Ty::Array(&Ty::Struct(&QUORUM_REPLICA))),
        f(0, ANY, Ty::Array(&Ty::Struct(&QUORUM_REPLICA))),
    ],
    tagged: &[],
};
static QUORUM_TOPIC: Struct =
    Struct { fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::Array(&Ty::Struct(&QUORUM_PARTITION)))], tagged: &[] };
static QUORUM_LISTENER: Struct =
    Struct { fields: &[f(0, ANY, Ty::String), f(0, ANY, Ty::String), f(0, ANY, INT16)], tagged: &[] };
static QUORUM_NODE: Struct =
    Struct { fields: &[f(0, ANY, INT32), f(0, ANY, Ty::Array(&Ty::Struct(&QUORUM_LISTENER)))], tagged: &[] };
static DESCRIBE_QUORUM: Message = Message {
    name: "DescribeQuorum",
    min_version: 0,
    max_version: 2,
    flexible_from: 0,
    body: Struct {
        fields: &[
            f(0, ANY, INT16),
            f(2, ANY, Ty::String),
            f(0, ANY, Ty::Array(&Ty::Struct(&QUORUM_TOPIC))),
            f(2, ANY, Ty::Array(&Ty::Struct(&QUORUM_NODE))),
        ],
        tagged: &[],
    },
};

// AddRaftVoter and RemoveRaftVoter: throttle_time_ms, error_code, error_message.
static ADD_RAFT_VOTER: Message = Message {
    name: "AddRaftVoter",
    min_version: 0,
    max_version: 0,
    flexible_from: 0,
    body: Struct { fields: &[f(0, ANY, INT32), f(0, ANY, INT16), f(0, ANY, Ty::String)], tagged: &[] },
};
static REMOVE_RAFT_VOTER: Message = Message {
    name: "RemoveRaftVoter",
    min_version: 0,
    max_version: 0,
    flexible_from: 0,
    body: Struct { fields: &[f(0, ANY, INT32), f(0, ANY, INT16), f(0, ANY, Ty::String)], tagged: &[] },
};

pub(super) fn schema(api_key: ApiKey) -> Option<&'static Message> {
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
        ApiKey::WriteTxnMarkers => &WRITE_TXN_MARKERS,
        ApiKey::ListTransactions => &LIST_TRANSACTIONS,
        ApiKey::DescribeTransactions => &DESCRIBE_TRANSACTIONS,
        ApiKey::DescribeProducers => &DESCRIBE_PRODUCERS,
        ApiKey::DeleteRecords => &DELETE_RECORDS,
        ApiKey::ElectLeaders => &ELECT_LEADERS,
        ApiKey::AlterPartitionReassignments => &ALTER_PARTITION_REASSIGNMENTS,
        ApiKey::ListPartitionReassignments => &LIST_PARTITION_REASSIGNMENTS,
        ApiKey::UnregisterBroker => &UNREGISTER_BROKER,
        ApiKey::DescribeQuorum => &DESCRIBE_QUORUM,
        ApiKey::AddRaftVoter => &ADD_RAFT_VOTER,
        ApiKey::RemoveRaftVoter => &REMOVE_RAFT_VOTER,
        ApiKey::AddPartitionsToTxn => &ADD_PARTITIONS_TO_TXN,
        ApiKey::AddOffsetsToTxn => &ADD_OFFSETS_TO_TXN,
        ApiKey::TxnOffsetCommit => &TXN_OFFSET_COMMIT,
        ApiKey::EndTxn => &END_TXN,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{check_response_array_bounds, RESPONSE_ARRAY_TOO_LONG};
    use super::*;
    use crate::error::ProtocolError;
    use crate::protocol::messages::*;
    use crate::protocol::{decode_body, decode_response, encode_response, str_bytes, Codec};
    use bytes::{BufMut, Bytes, BytesMut};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::fmt::Debug;

    /// A new API or version in the client's table without a response schema would be refused
    /// at run time ("no bounds schema"): catch it here instead.
    #[test]
    fn every_version_the_client_sends_has_a_response_schema() {
        for &(api_key, min, max) in crate::connection::CLIENT_API_VERSIONS {
            let schema = schema(api_key).unwrap_or_else(|| panic!("no response schema for {api_key:?}"));
            assert!(
                schema.min_version <= min && max <= schema.max_version,
                "{api_key:?} v{min}..=v{max} is outside its response schema's v{}..=v{}",
                schema.min_version,
                schema.max_version
            );
        }
    }

    /// Every API with a response schema (the ones the client and the replica fetcher call).
    const APIS: &[ApiKey] = &[
        ApiKey::ApiVersions,
        ApiKey::Metadata,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::CreateTopics,
        ApiKey::DeleteTopics,
        ApiKey::CreatePartitions,
        ApiKey::DescribeConfigs,
        ApiKey::IncrementalAlterConfigs,
        ApiKey::InitProducerId,
        ApiKey::FindCoordinator,
        ApiKey::JoinGroup,
        ApiKey::SyncGroup,
        ApiKey::Heartbeat,
        ApiKey::LeaveGroup,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::DescribeGroups,
        ApiKey::ListGroups,
        ApiKey::DeleteGroups,
        ApiKey::OffsetDelete,
        ApiKey::OffsetForLeaderEpoch,
        ApiKey::AddPartitionsToTxn,
        ApiKey::AddOffsetsToTxn,
        ApiKey::TxnOffsetCommit,
        ApiKey::EndTxn,
        ApiKey::WriteTxnMarkers,
        ApiKey::ListTransactions,
        ApiKey::DescribeTransactions,
        ApiKey::DescribeProducers,
        ApiKey::DeleteRecords,
        ApiKey::ElectLeaders,
        ApiKey::AlterPartitionReassignments,
        ApiKey::ListPartitionReassignments,
        ApiKey::UnregisterBroker,
        ApiKey::DescribeQuorum,
        ApiKey::AddRaftVoter,
        ApiKey::RemoveRaftVoter,
    ];

    fn topic(name: &str) -> TopicName {
        TopicName(str_bytes(name))
    }

    fn group(name: &str) -> GroupId {
        GroupId(str_bytes(name))
    }

    fn tags(version: i16, flexible_from: i16) -> BTreeMap<i32, Bytes> {
        if version >= flexible_from {
            [(90, Bytes::from_static(b"unknown tag")), (7, Bytes::new())].into()
        } else {
            Default::default()
        }
    }

    /// A response body as a broker would send it.
    struct Encoded {
        api_key: ApiKey,
        version: i16,
        body: Bytes,
    }

    /// Encodes `m`, checks that the generated decoder and [`decode_response`] (header, bounds
    /// pass, body) both give it back, and keeps the body for the walks below.
    fn push<M: Codec + PartialEq + Debug>(out: &mut Vec<Encoded>, api_key: ApiKey, version: i16, m: &M) {
        let mut buf = BytesMut::new();
        m.encode(&mut buf, version).unwrap_or_else(|e| panic!("{api_key:?} v{version} does not encode: {e}"));
        let body = buf.freeze();
        let mut rest = body.clone();
        let decoded: M = decode_body("response", &mut rest, version).unwrap();
        assert!(rest.is_empty(), "{api_key:?} v{version}: decoder left {} bytes", rest.len());
        assert_eq!(&decoded, m, "{api_key:?} v{version} does not round-trip");
        let mut frame = BytesMut::new();
        encode_response(api_key, version, 7, m, &mut frame).unwrap();
        let mut frame = frame.freeze().slice(4..);
        let (correlation_id, decoded) = decode_response::<M>(api_key, version, &mut frame)
            .unwrap_or_else(|e| panic!("{api_key:?} v{version} refused: {e}"));
        assert_eq!((correlation_id, &decoded), (7, m), "{api_key:?} v{version}");
        assert!(frame.is_empty());
        out.push(Encoded { api_key, version, body });
    }

    /// Populated responses of every API in every version its schema covers: every array
    /// non-empty, optional strings and bytes both set and null, known tagged fields set and
    /// unknown ones added in flexible versions.
    fn populated_responses() -> Vec<Encoded> {
        let mut out = Vec::new();
        api_versions_and_metadata(&mut out);
        produce_and_fetch(&mut out);
        admin(&mut out);
        groups(&mut out);
        transactions(&mut out);
        cluster_admin(&mut out);
        out
    }

    fn cluster_admin(out: &mut Vec<Encoded>) {
        use crate::protocol::messages::delete_records_response::{
            DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
        };
        use crate::protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
        use crate::protocol::messages::{DeleteRecordsResponse, ElectLeadersResponse};
        for v in 0..=2 {
            let p = DeleteRecordsPartitionResult::default()
                .with_partition_index(2)
                .with_low_watermark(40)
                .with_error_code(1)
                .with_unknown_tagged_fields(tags(v, 2));
            let t = DeleteRecordsTopicResult::default()
                .with_name(topic("orders"))
                .with_partitions(vec![p.clone(), p])
                .with_unknown_tagged_fields(tags(v, 2));
            let m = DeleteRecordsResponse::default()
                .with_throttle_time_ms(3)
                .with_topics(vec![t.clone(), t])
                .with_unknown_tagged_fields(tags(v, 2));
            push(out, ApiKey::DeleteRecords, v, &m);

            let p = PartitionResult::default()
                .with_partition_id(1)
                .with_error_code(84)
                .with_error_message(Some(str_bytes("not needed")))
                .with_unknown_tagged_fields(tags(v, 2));
            let q = PartitionResult::default().with_partition_id(2).with_unknown_tagged_fields(tags(v, 2));
            let t = ReplicaElectionResult::default()
                .with_topic(topic("orders"))
                .with_partition_result(vec![p, q])
                .with_unknown_tagged_fields(tags(v, 2));
            let m = ElectLeadersResponse::default()
                .with_throttle_time_ms(3)
                .with_error_code(if v >= 1 { 7 } else { 0 })
                .with_replica_election_results(vec![t.clone(), t])
                .with_unknown_tagged_fields(tags(v, 2));
            push(out, ApiKey::ElectLeaders, v, &m);
        }
        {
            use crate::protocol::messages::alter_partition_reassignments_response::{
                ReassignablePartitionResponse, ReassignableTopicResponse,
            };
            use crate::protocol::messages::list_partition_reassignments_response::{
                OngoingPartitionReassignment, OngoingTopicReassignment,
            };
            use crate::protocol::messages::{AlterPartitionReassignmentsResponse, ListPartitionReassignmentsResponse};
            for v in 0..=1 {
                let p = ReassignablePartitionResponse::default()
                    .with_partition_index(1)
                    .with_error_code(85)
                    .with_error_message(Some(str_bytes("no reassignment")))
                    .with_unknown_tagged_fields(tags(v, 0));
                let t = ReassignableTopicResponse::default()
                    .with_name(topic("orders"))
                    .with_partitions(vec![p.clone(), p])
                    .with_unknown_tagged_fields(tags(v, 0));
                let m = AlterPartitionReassignmentsResponse::default()
                    .with_throttle_time_ms(1)
                    .with_allow_replication_factor_change(v == 0)
                    .with_error_code(0)
                    .with_error_message(None)
                    .with_responses(vec![t.clone(), t])
                    .with_unknown_tagged_fields(tags(v, 0));
                push(out, ApiKey::AlterPartitionReassignments, v, &m);
            }
            let p = OngoingPartitionReassignment::default()
                .with_partition_index(0)
                .with_replicas(vec![BrokerId(1), BrokerId(2)])
                .with_adding_replicas(vec![BrokerId(2)])
                .with_removing_replicas(vec![BrokerId(3)])
                .with_unknown_tagged_fields(tags(0, 0));
            let t = OngoingTopicReassignment::default()
                .with_name(topic("orders"))
                .with_partitions(vec![p.clone(), p])
                .with_unknown_tagged_fields(tags(0, 0));
            let m = ListPartitionReassignmentsResponse::default()
                .with_error_message(Some(str_bytes("fine")))
                .with_topics(vec![t.clone(), t])
                .with_unknown_tagged_fields(tags(0, 0));
            push(out, ApiKey::ListPartitionReassignments, 0, &m);
            for message in [None, Some(str_bytes("broker 4 is running"))] {
                let m = crate::protocol::messages::UnregisterBrokerResponse::default()
                    .with_throttle_time_ms(0)
                    .with_error_code(42)
                    .with_error_message(message.clone())
                    .with_unknown_tagged_fields(tags(0, 0));
                push(out, ApiKey::UnregisterBroker, 0, &m);
                let m = crate::protocol::messages::AddRaftVoterResponse::default()
                    .with_error_code(126)
                    .with_error_message(message.clone())
                    .with_unknown_tagged_fields(tags(0, 0));
                push(out, ApiKey::AddRaftVoter, 0, &m);
                let m = crate::protocol::messages::RemoveRaftVoterResponse::default()
                    .with_error_code(127)
                    .with_error_message(message)
                    .with_unknown_tagged_fields(tags(0, 0));
                push(out, ApiKey::RemoveRaftVoter, 0, &m);
            }
            use crate::protocol::messages::describe_quorum_response::{
                Listener, Node, PartitionData, ReplicaState, TopicData,
            };
            for v in 0..=2 {
                let r = ReplicaState::default()
                    .with_replica_id(BrokerId(2))
                    .with_log_end_offset(40)
                    .with_last_fetch_timestamp(if v >= 1 { 1_700_000_000_000 } else { -1 })
                    .with_last_caught_up_timestamp(if v >= 1 { 1_700_000_000_000 } else { -1 })
                    .with_unknown_tagged_fields(tags(v, 0));
                let p = PartitionData::default()
                    .with_partition_index(0)
                    .with_error_message(if v >= 2 { Some(str_bytes("fine")) } else { Some(str_bytes("")) })
                    .with_leader_id(BrokerId(1))
                    .with_leader_epoch(3)
                    .with_high_watermark(40)
                    .with_current_voters(vec![r.clone(), r.clone()])
                    .with_observers(vec![r])
                    .with_unknown_tagged_fields(tags(v, 0));
                let t = TopicData::default()
                    .with_topic_name(topic("__cluster_metadata"))
                    .with_partitions(vec![p.clone(), p])
                    .with_unknown_tagged_fields(tags(v, 0));
                let nodes = if v >= 2 {
                    let l = Listener::default()
                        .with_name(str_bytes("CONTROLLER"))
                        .with_host(str_bytes("127.0.0.1"))
                        .with_port(9093)
                        .with_unknown_tagged_fields(tags(v, 0));
                    let n = Node::default()
                        .with_node_id(BrokerId(1))
                        .with_listeners(vec![l.clone(), l])
                        .with_unknown_tagged_fields(tags(v, 0));
                    vec![n.clone(), n]
                } else {
                    Vec::new()
                };
                let m = crate::protocol::messages::DescribeQuorumResponse::default()
                    .with_topics(vec![t.clone(), t])
                    .with_nodes(nodes)
                    .with_unknown_tagged_fields(tags(v, 0));
                push(out, ApiKey::DescribeQuorum, v, &m);
            }
        }
    }

    fn transactions(out: &mut Vec<Encoded>) {
        use crate::protocol::messages::add_partitions_to_txn_response::{
            AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
        };
        use crate::protocol::messages::txn_offset_commit_response::{
            TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
        };
        for v in 0..=5 {
            let p = AddPartitionsToTxnPartitionResult::default()
                .with_partition_index(3)
                .with_partition_error_code(51)
                .with_unknown_tagged_fields(tags(v, 3));
            let t = AddPartitionsToTxnTopicResult::default()
                .with_name(topic("orders"))
                .with_results_by_partition(vec![p.clone(), p])
                .with_unknown_tagged_fields(tags(v, 3));
            let mut m =
                AddPartitionsToTxnResponse::default().with_throttle_time_ms(5).with_unknown_tagged_fields(tags(v, 3));
            if v >= 4 {
                let r = AddPartitionsToTxnResult::default()
                    .with_transactional_id(TransactionalId(str_bytes("txn-1")))
                    .with_topic_results(vec![t.clone(), t])
                    .with_unknown_tagged_fields(tags(v, 3));
                m = m.with_error_code(51).with_results_by_transaction(vec![r.clone(), r]);
            } else {
                m = m.with_results_by_topic_v3_and_below(vec![t.clone(), t]);
            }
            push(out, ApiKey::AddPartitionsToTxn, v, &m);
        }
        for v in 0..=4 {
            let m = AddOffsetsToTxnResponse::default()
                .with_throttle_time_ms(5)
                .with_error_code(47)
                .with_unknown_tagged_fields(tags(v, 3));
            push(out, ApiKey::AddOffsetsToTxn, v, &m);
        }
        for v in 0..=5 {
            let p = TxnOffsetCommitResponsePartition::default()
                .with_partition_index(2)
                .with_error_code(22)
                .with_unknown_tagged_fields(tags(v, 3));
            let t = TxnOffsetCommitResponseTopic::default()
                .with_name(topic("orders"))
                .with_partitions(vec![p.clone(), p])
                .with_unknown_tagged_fields(tags(v, 3));
            let m = TxnOffsetCommitResponse::default()
                .with_throttle_time_ms(5)
                .with_topics(vec![t.clone(), t])
                .with_unknown_tagged_fields(tags(v, 3));
            push(out, ApiKey::TxnOffsetCommit, v, &m);
        }
        for v in 0..=5 {
            let mut m = EndTxnResponse::default()
                .with_throttle_time_ms(5)
                .with_error_code(51)
                .with_unknown_tagged_fields(tags(v, 3));
            if v >= 5 {
                m = m.with_producer_id(ProducerId(42)).with_producer_epoch(3);
            }
            push(out, ApiKey::EndTxn, v, &m);
        }
        {
            use crate::protocol::messages::describe_transactions_response::{TopicData, TransactionState as Described};
            use crate::protocol::messages::list_transactions_response::TransactionState as Listed;
            use crate::protocol::messages::write_txn_markers_response::{
                WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
            };
            let p = WritableTxnMarkerPartitionResult::default()
                .with_partition_index(2)
                .with_error_code(6)
                .with_unknown_tagged_fields(tags(1, 1));
            let t = WritableTxnMarkerTopicResult::default()
                .with_name(topic("orders"))
                .with_partitions(vec![p.clone(), p])
                .with_unknown_tagged_fields(tags(1, 1));
            let r = WritableTxnMarkerResult::default()
                .with_producer_id(ProducerId(9))
                .with_topics(vec![t.clone(), t])
                .with_unknown_tagged_fields(tags(1, 1));
            push(out, ApiKey::WriteTxnMarkers, 1, &WriteTxnMarkersResponse::default().with_markers(vec![r.clone(), r]));
            for v in 0..=2 {
                let l = Listed::default()
                    .with_transactional_id(TransactionalId(str_bytes("txn-1")))
                    .with_producer_id(ProducerId(4))
                    .with_transaction_state(str_bytes("Ongoing"))
                    .with_unknown_tagged_fields(tags(v, 0));
                let m = ListTransactionsResponse::default()
                    .with_error_code(0)
                    .with_unknown_state_filters(vec![str_bytes("Bogus")])
                    .with_transaction_states(vec![l.clone(), l])
                    .with_unknown_tagged_fields(tags(v, 0));
                push(out, ApiKey::ListTransactions, v, &m);
            }
            let topic_data = TopicData::default()
                .with_topic(topic("orders"))
                .with_partitions(vec![0, 1])
                .with_unknown_tagged_fields(tags(0, 0));
            let d = Described::default()
                .with_transactional_id(TransactionalId(str_bytes("txn-1")))
                .with_transaction_state(str_bytes("Ongoing"))
                .with_transaction_timeout_ms(60_000)
                .with_transaction_start_time_ms(5)
                .with_producer_id(ProducerId(4))
                .with_producer_epoch(2)
                .with_topics(vec![topic_data.clone(), topic_data])
                .with_unknown_tagged_fields(tags(0, 0));
            push(
                out,
                ApiKey::DescribeTransactions,
                0,
                &DescribeTransactionsResponse::default().with_transaction_states(vec![d.clone(), d]),
            );
            {
                use crate::protocol::messages::describe_producers_response::{
                    PartitionResponse, ProducerState, TopicResponse,
                };
                use crate::protocol::messages::DescribeProducersResponse;
                let producer = ProducerState::default()
                    .with_producer_id(ProducerId(7))
                    .with_producer_epoch(1)
                    .with_last_sequence(99)
                    .with_last_timestamp(1_700_000_000_000)
                    .with_coordinator_epoch(3)
                    .with_current_txn_start_offset(42)
                    .with_unknown_tagged_fields(tags(0, 0));
                let partition = PartitionResponse::default()
                    .with_partition_index(1)
                    .with_error_code(0)
                    .with_error_message(Some(str_bytes("fine")))
                    .with_active_producers(vec![producer.clone(), producer])
                    .with_unknown_tagged_fields(tags(0, 0));
                let t = TopicResponse::default()
                    .with_name(topic("orders"))
                    .with_partitions(vec![partition.clone(), partition])
                    .with_unknown_tagged_fields(tags(0, 0));
                push(
                    out,
                    ApiKey::DescribeProducers,
                    0,
                    &DescribeProducersResponse::default().with_topics(vec![t.clone(), t]),
                );
            }
        }
    }

    fn api_versions_and_metadata(out: &mut Vec<Encoded>) {
        use crate::protocol::messages::api_versions_response::{ApiVersion, FinalizedFeatureKey, SupportedFeatureKey};
        use crate::protocol::messages::metadata_response::{
            MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
        };
        for v in 0..=4 {
            let k = ApiVersion::default()
                .with_api_key(3)
                .with_min_version(0)
                .with_max_version(12)
                .with_unknown_tagged_fields(tags(v, 3));
            let mut m = ApiVersionsResponse::default()
                .with_api_keys(vec![k.clone(), k.with_api_key(18)])
                .with_unknown_tagged_fields(tags(v, 3));
            if v >= 1 {
                m = m.with_throttle_time_ms(5);
            }
            if v >= 3 {
                let s = SupportedFeatureKey::default()
                    .with_name(str_bytes("metadata.version"))
                    .with_min_version(1)
                    .with_max_version(20)
                    .with_unknown_tagged_fields(tags(v, 3));
                let f = FinalizedFeatureKey::default()
                    .with_name(str_bytes("metadata.version"))
                    .with_max_version_level(20)
                    .with_min_version_level(20)
                    .with_unknown_tagged_fields(tags(v, 3));
                m = m
                    .with_supported_features(vec![s.clone(), s])
                    .with_finalized_features_epoch(4)
                    .with_finalized_features(vec![f])
                    .with_zk_migration_ready(true);
            }
            push(out, ApiKey::ApiVersions, v, &m);
            // What a broker that does not know the version asked for answers (KIP-511): the v0
            // layout, which the client decodes as v0.
            let m = ApiVersionsResponse::default()
                .with_error_code(35)
                .with_api_keys(vec![ApiVersion::default().with_api_key(18).with_max_version(2)]);
            push(out, ApiKey::ApiVersions, 0, &m);
        }
        for v in 0..=13 {
            let mut p = MetadataResponsePartition::default()
                .with_partition_index(1)
                .with_leader_id(BrokerId(2))
                .with_replica_nodes(vec![BrokerId(1), BrokerId(2), BrokerId(3)])
                .with_isr_nodes(vec![BrokerId(2)])
                .with_unknown_tagged_fields(tags(v, 9));
            if v >= 5 {
                p = p.with_offline_replicas(vec![BrokerId(3)]);
            }
            if v >= 7 {
                p = p.with_leader_epoch(4);
            }
            let mut t = MetadataResponseTopic::default()
                .with_name(Some(topic("orders")))
                .with_partitions(vec![p.clone(), p])
                .with_unknown_tagged_fields(tags(v, 9));
            if v >= 1 {
                t = t.with_is_internal(true);
            }
            if v >= 8 {
                t = t.with_topic_authorized_operations(0x0fff);
            }
            if v >= 10 {
                t = t.with_topic_id(uuid::Uuid::from_u128(9));
            }
            let mut b = MetadataResponseBroker::default()
                .with_node_id(BrokerId(1))
                .with_host(str_bytes("localhost"))
                .with_port(9092)
                .with_unknown_tagged_fields(tags(v, 9));
            if v >= 1 {
                b = b.with_rack(Some(str_bytes("rack-a")));
            }
            let mut m = MetadataResponse::default()
                .with_brokers(vec![b.clone(), b.with_rack(None)])
                .with_topics(vec![t.clone(), t])
                .with_unknown_tagged_fields(tags(v, 9));
            if v >= 1 {
                m = m.with_controller_id(BrokerId(1));
            }
            if v >= 2 {
                m = m.with_cluster_id(Some(str_bytes("cluster")));
            }
            if v >= 3 {
                m = m.with_throttle_time_ms(5);
            }
            if (8..=10).contains(&v) {
                m = m.with_cluster_authorized_operations(0x0fff);
            }
            if v >= 13 {
                m = m.with_error_code(3);
            }
            push(out, ApiKey::Metadata, v, &m);
        }
    }

    fn produce_and_fetch(out: &mut Vec<Encoded>) {
        use crate::protocol::messages::fetch_response::{
            AbortedTransaction, EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
            SnapshotId,
        };
        use crate::protocol::messages::produce_response::{
            BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
        };
        for v in 3..=13 {
            let mut p = PartitionProduceResponse::default()
                .with_index(1)
                .with_base_offset(100)
                .with_log_append_time_ms(5)
                .with_unknown_tagged_fields(tags(v, 9));
            if v >= 5 {
                p = p.with_log_start_offset(2);
            }
            if v >= 8 {
                let e = BatchIndexAndErrorMessage::default()
                    .with_batch_index(3)
                    .with_batch_index_error_message(Some(str_bytes("bad record")))
                    .with_unknown_tagged_fields(tags(v, 9));
                p = p
                    .with_record_errors(vec![e.clone(), e.with_batch_index_error_message(None)])
                    .with_error_message(Some(str_bytes("invalid record")));
            }
            if v >= 10 {
                p = p.with_current_leader(
                    produce_response::LeaderIdAndEpoch::default()
                        .with_leader_id(BrokerId(2))
                        .with_leader_epoch(7)
                        .with_unknown_tagged_fields(tags(v, 9)),
                );
            }
            let t = TopicProduceResponse::default()
                .with_partition_responses(vec![p.clone(), p])
                .with_unknown_tagged_fields(tags(v, 9));
            let t = if v <= 12 { t.with_name(topic("orders")) } else { t.with_topic_id(uuid::Uuid::from_u128(9)) };
            let mut m = ProduceResponse::default()
                .with_responses(vec![t.clone(), t])
                .with_throttle_time_ms(5)
                .with_unknown_tagged_fields(tags(v, 9));
            if v >= 10 {
                let e = produce_response::NodeEndpoint::default()
                    .with_node_id(BrokerId(2))
                    .with_host(str_bytes("localhost"))
                    .with_port(9093)
                    .with_rack(Some(str_bytes("rack-b")))
                    .with_unknown_tagged_fields(tags(v, 9));
                m = m.with_node_endpoints(vec![e.clone(), e.with_rack(None)]);
            }
            push(out, ApiKey::Produce, v, &m);
        }
        for v in 4..=18 {
            let a = AbortedTransaction::default()
                .with_producer_id(ProducerId(42))
                .with_first_offset(7)
                .with_unknown_tagged_fields(tags(v, 12));
            let mut p = PartitionData::default()
                .with_partition_index(1)
                .with_high_watermark(100)
                .with_last_stable_offset(90)
                .with_aborted_transactions(Some(vec![a.clone(), a]))
                .with_records(Some(Bytes::from(vec![9; 70])))
                .with_unknown_tagged_fields(tags(v, 12));
            if v >= 5 {
                p = p.with_log_start_offset(3);
            }
            if v >= 11 {
                p = p.with_preferred_read_replica(BrokerId(2));
            }
            if v >= 12 {
                p = p
                    .with_diverging_epoch(
                        EpochEndOffset::default()
                            .with_epoch(3)
                            .with_end_offset(50)
                            .with_unknown_tagged_fields(tags(v, 12)),
                    )
                    .with_current_leader(
                        LeaderIdAndEpoch::default()
                            .with_leader_id(BrokerId(2))
                            .with_leader_epoch(4)
                            .with_unknown_tagged_fields(tags(v, 12)),
                    )
                    .with_snapshot_id(
                        SnapshotId::default().with_end_offset(20).with_epoch(2).with_unknown_tagged_fields(tags(v, 12)),
                    );
            }
            let empty = p.clone().with_aborted_transactions(None).with_records(None);
            let t = FetchableTopicResponse::default()
                .with_partitions(vec![p, empty])
                .with_unknown_tagged_fields(tags(v, 12));
            let t = if v <= 12 { t.with_topic(topic("orders")) } else { t.with_topic_id(uuid::Uuid::from_u128(9)) };
            let mut m = FetchResponse::default()
                .with_throttle_time_ms(5)
                .with_responses(vec![t.clone(), t])
                .with_unknown_tagged_fields(tags(v, 12));
            if v >= 7 {
                m = m.with_error_code(0).with_session_id(11);
            }
            if v >= 16 {
                let e = NodeEndpoint::default()
                    .with_node_id(BrokerId(2))
                    .with_host(str_bytes("localhost"))
                    .with_port(9093)
                    .with_rack(Some(str_bytes("rack-b")))
                    .with_unknown_tagged_fields(tags(v, 12));
                m = m.with_node_endpoints(vec![e.clone(), e.with_rack(None)]);
            }
            push(out, ApiKey::Fetch, v, &m);
        }
    }

    fn admin(out: &mut Vec<Encoded>) {
        use crate::protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
        use crate::protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
        use crate::protocol::messages::delete_topics_response::DeletableTopicResult;
        use crate::protocol::messages::describe_configs_response::{
            DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
        };
        use crate::protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
        use crate::protocol::messages::list_offsets_response::{
            ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
        };
        for v in 1..=10 {
            let mut p = ListOffsetsPartitionResponse::default()
                .with_partition_index(1)
                .with_timestamp(-1)
                .with_offset(100)
                .with_unknown_tagged_fields(tags(v, 6));
            if v >= 4 {
                p = p.with_leader_epoch(3);
            }
            let t = ListOffsetsTopicResponse::default()
                .with_name(topic("orders"))
                .with_partitions(vec![p.clone(), p])
                .with_unknown_tagged_fields(tags(v, 6));
            let mut m =
                ListOffsetsResponse::default().with_topics(vec![t.clone(), t]).with_unknown_tagged_fields(tags(v, 6));
            if v >= 2 {
                m = m.with_throttle_time_ms(5);
            }
            push(out, ApiKey::ListOffsets, v, &m);
        }
        for v in 2..=7 {
            let mut t = CreatableTopicResult::default()
                .with_name(topic("orders"))
                .with_error_code(36)
                .with_error_message(Some(str_bytes("exists")))
                .with_unknown_tagged_fields(tags(v, 5));
            if v >= 5 {
                let c = CreatableTopicConfigs::default()
                    .with_name(str_bytes("retention.ms"))
                    .with_value(Some(str_bytes("1000")))
                    .with_config_source(5)
                    .with_unknown_tagged_fields(tags(v, 5));
                t = t
                    .with_topic_config_error_code(29)
                    .with_num_partitions(3)
                    .with_replication_factor(1)
                    .with_configs(Some(vec![c.clone(), c.with_value(None)]));
            }
            if v >= 7 {
                t = t.with_topic_id(uuid::Uuid::from_u128(9));
            }
            let second = if v >= 5 { t.clone().with_configs(None).with_error_message(None) } else { t.clone() };
            let m = CreateTopicsResponse::default()
                .with_throttle_time_ms(5)
                .with_topics(vec![t, second])
                .with_unknown_tagged_fields(tags(v, 5));
            push(out, ApiKey::CreateTopics, v, &m);
        }
        for v in 1..=6 {
            let mut r = DeletableTopicResult::default()
                .with_name(Some(topic("orders")))
                .with_error_code(3)
                .with_unknown_tagged_fields(tags(v, 4));
            if v >= 5 {
                r = r.with_error_message(Some(str_bytes("unknown topic")));
            }
            let mut results = vec![r.clone()];
            if v >= 6 {
                results.push(r.with_name(None).with_topic_id(uuid::Uuid::from_u128(9)));
            }
            let m = DeleteTopicsResponse::default()
                .with_throttle_time_ms(5)
                .with_responses(results)
                .with_unknown_tagged_fields(tags(v, 4));
            push(out, ApiKey::DeleteTopics, v, &m);
        }
        for v in 0..=3 {
            let r = CreatePartitionsTopicResult::default()
                .with_name(topic("orders"))
                .with_error_code(37)
                .with_error_message(Some(str_bytes("invalid partitions")))
                .with_unknown_tagged_fields(tags(v, 2));
            let m = CreatePartitionsResponse::default()
                .with_throttle_time_ms(5)
                .with_results(vec![r.clone(), r.with_error_message(None)])
                .with_unknown_tagged_fields(tags(v, 2));
            push(out, ApiKey::CreatePartitions, v, &m);
        }
        for v in 1..=4 {
            let s = DescribeConfigsSynonym::default()
                .with_name(str_bytes("log.retention.ms"))
                .with_value(Some(str_bytes("1000")))
                .with_source(5)
                .with_unknown_tagged_fields(tags(v, 4));
            let mut c = DescribeConfigsResourceResult::default()
                .with_name(str_bytes("retention.ms"))
                .with_value(Some(str_bytes("1000")))
                .with_config_source(1)
                .with_synonyms(vec![s.clone(), s.with_value(None)])
                .with_unknown_tagged_fields(tags(v, 4));
            if v >= 3 {
                c = c.with_config_type(5).with_documentation(Some(str_bytes("how long")));
            }
            let r = DescribeConfigsResult::default()
                .with_error_message(Some(str_bytes("none")))
                .with_resource_type(2)
                .with_resource_name(str_bytes("orders"))
                .with_configs(vec![c.clone(), c.with_value(None)])
                .with_unknown_tagged_fields(tags(v, 4));
            let m = DescribeConfigsResponse::default()
                .with_throttle_time_ms(5)
                .with_results(vec![r.clone(), r.with_error_message(None)])
                .with_unknown_tagged_fields(tags(v, 4));
            push(out, ApiKey::DescribeConfigs, v, &m);
        }
        for v in 0..=1 {
            let r = AlterConfigsResourceResponse::default()
                .with_error_message(Some(str_bytes("invalid config")))
                .with_resource_type(2)
                .with_resource_name(str_bytes("orders"))
                .with_unknown_tagged_fields(tags(v, 1));
            let m = IncrementalAlterConfigsResponse::default()
                .with_throttle_time_ms(5)
                .with_responses(vec![r.clone(), r.with_error_message(None)])
                .with_unknown_tagged_fields(tags(v, 1));
            push(out, ApiKey::IncrementalAlterConfigs, v, &m);
        }
        for v in 0..=6 {
            let mut m = InitProducerIdResponse::default()
                .with_throttle_time_ms(5)
                .with_producer_id(ProducerId(42))
                .with_producer_epoch(1)
                .with_unknown_tagged_fields(tags(v, 2));
            if v >= 6 {
                m = m.with_ongoing_txn_producer_id(ProducerId(41)).with_ongoing_txn_producer_epoch(3);
            }
            push(out, ApiKey::InitProducerId, v, &m);
        }
    }

    fn groups(out: &mut Vec<Encoded>) {
        use crate::protocol::messages::delete_groups_response::DeletableGroupResult;
        use crate::protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
        use crate::protocol::messages::find_coordinator_response::Coordinator;
        use crate::protocol::messages::join_group_response::JoinGroupResponseMember;
        use crate::protocol::messages::leave_group_response::MemberResponse;
        use crate::protocol::messages::list_groups_response::ListedGroup;
        use crate::protocol::messages::offset_commit_response::{
            OffsetCommitResponsePartition, OffsetCommitResponseTopic,
        };
        use crate::protocol::messages::offset_delete_response::{
            OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
        };
        use crate::protocol::messages::offset_fetch_response::{
            OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
            OffsetFetchResponseTopic, OffsetFetchResponseTopics,
        };
        use crate::protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
        for v in 0..=6 {
            let mut m = FindCoordinatorResponse::default().with_unknown_tagged_fields(tags(v, 3));
            if v >= 1 {
                m = m.with_throttle_time_ms(5);
            }
            if v <= 3 {
                m = m.with_node_id(BrokerId(1)).with_host(str_bytes("localhost")).with_port(9092);
                if v >= 1 {
                    m = m.with_error_message(Some(str_bytes("none")));
                }
            } else {
                let c = Coordinator::default()
                    .with_key(str_bytes("orders-app"))
                    .with_node_id(BrokerId(1))
                    .with_host(str_bytes("localhost"))
                    .with_port(9092)
                    .with_error_message(Some(str_bytes("none")))
                    .with_unknown_tagged_fields(tags(v, 3));
                m = m.with_coordinators(vec![c.clone(), c.with_error_message(None)]);
            }
            push(out, ApiKey::FindCoordinator, v, &m);
        }
        for v in 0..=9 {
            let mut member = JoinGroupResponseMember::default()
                .with_member_id(str_bytes("m-1"))
                .with_metadata(Bytes::from_static(b"subscription"))
                .with_unknown_tagged_fields(tags(v, 6));
            if v >= 5 {
                member = member.with_group_instance_id(Some(str_bytes("instance-1")));
            }
            let mut m = JoinGroupResponse::default()
                .with_generation_id(3)
                .with_protocol_name(Some(str_bytes("range")))
                .with_leader(str_bytes("m-1"))
                .with_member_id(str_bytes("m-1"))
                .with_members(vec![member.clone(), member])
                .with_unknown_tagged_fields(tags(v, 6));
            if v >= 2 {
                m = m.with_throttle_time_ms(5);
            }
            if v >= 7 {
                m = m.with_protocol_type(Some(str_bytes("consumer")));
            }
            if v >= 9 {
                m = m.with_skip_assignment(true);
            }
            push(out, ApiKey::JoinGroup, v, &m);
        }
        for v in 0..=5 {
            let mut m = SyncGroupResponse::default()
                .with_assignment(Bytes::from_static(b"assignment"))
                .with_unknown_tagged_fields(tags(v, 4));
            if v >= 1 {
                m = m.with_throttle_time_ms(5);
            }
            if v >= 5 {
                m = m.with_protocol_type(Some(str_bytes("consumer"))).with_protocol_name(Some(str_bytes("range")));
            }
            push(out, ApiKey::SyncGroup, v, &m);
        }
        for v in 0..=4 {
            let m = HeartbeatResponse::default().with_error_code(27).with_unknown_tagged_fields(tags(v, 4));
            let m = if v >= 1 { m.with_throttle_time_ms(5) } else { m };
            push(out, ApiKey::Heartbeat, v, &m);
        }
        for v in 0..=5 {
            let mut m = LeaveGroupResponse::default().with_unknown_tagged_fields(tags(v, 4));
            if v >= 1 {
                m = m.with_throttle_time_ms(5);
            }
            if v >= 3 {
                let r = MemberResponse::default()
                    .with_member_id(str_bytes("m-1"))
                    .with_group_instance_id(Some(str_bytes("instance-1")))
                    .with_unknown_tagged_fields(tags(v, 4));
                m = m.with_members(vec![r.clone(), r.with_group_instance_id(None)]);
            }
            push(out, ApiKey::LeaveGroup, v, &m);
        }
        for v in 2..=10 {
            let p = OffsetCommitResponsePartition::default()
                .with_partition_index(1)
                .with_error_code(25)
                .with_unknown_tagged_fields(tags(v, 8));
            let t = OffsetCommitResponseTopic::default()
                .with_partitions(vec![p.clone(), p])
                .with_unknown_tagged_fields(tags(v, 8));
            let t = if v <= 9 { t.with_name(topic("orders")) } else { t.with_topic_id(uuid::Uuid::from_u128(9)) };
            let m =
                OffsetCommitResponse::default().with_topics(vec![t.clone(), t]).with_unknown_tagged_fields(tags(v, 8));
            let m = if v >= 3 { m.with_throttle_time_ms(5) } else { m };
            push(out, ApiKey::OffsetCommit, v, &m);
        }
        for v in 1..=10 {
            let mut m = OffsetFetchResponse::default().with_unknown_tagged_fields(tags(v, 6));
            if v >= 3 {
                m = m.with_throttle_time_ms(5);
            }
            if v <= 7 {
                let mut p = OffsetFetchResponsePartition::default()
                    .with_partition_index(1)
                    .with_committed_offset(42)
                    .with_metadata(Some(str_bytes("meta")))
                    .with_unknown_tagged_fields(tags(v, 6));
                if v >= 5 {
                    p = p.with_committed_leader_epoch(3);
                }
                let t = OffsetFetchResponseTopic::default()
                    .with_name(topic("orders"))
                    .with_partitions(vec![p.clone(), p.with_metadata(None)])
                    .with_unknown_tagged_fields(tags(v, 6));
                m = m.with_topics(vec![t.clone(), t]);
                if v >= 2 {
                    m = m.with_error_code(16);
                }
            } else {
                let p = OffsetFetchResponsePartitions::default()
                    .with_partition_index(1)
                    .with_committed_offset(42)
                    .with_committed_leader_epoch(3)
                    .with_metadata(Some(str_bytes("meta")))
                    .with_unknown_tagged_fields(tags(v, 6));
                let t = OffsetFetchResponseTopics::default()
                    .with_partitions(vec![p.clone(), p.with_metadata(None)])
                    .with_unknown_tagged_fields(tags(v, 6));
                let t = if v <= 9 { t.with_name(topic("orders")) } else { t.with_topic_id(uuid::Uuid::from_u128(9)) };
                let g = OffsetFetchResponseGroup::default()
                    .with_group_id(group("orders-app"))
                    .with_topics(vec![t.clone(), t])
                    .with_unknown_tagged_fields(tags(v, 6));
                m = m.with_groups(vec![g.clone(), g.with_topics(vec![])]);
            }
            push(out, ApiKey::OffsetFetch, v, &m);
        }
        for v in 0..=6 {
            let mut member = DescribedGroupMember::default()
                .with_member_id(str_bytes("m-1"))
                .with_client_id(str_bytes("spate"))
                .with_client_host(str_bytes("/127.0.0.1"))
                .with_member_metadata(Bytes::from_static(b"subscription"))
                .with_member_assignment(Bytes::from_static(b"assignment"))
                .with_unknown_tagged_fields(tags(v, 5));
            if v >= 4 {
                member = member.with_group_instance_id(Some(str_bytes("instance-1")));
            }
            let mut g = DescribedGroup::default()
                .with_group_id(group("orders-app"))
                .with_group_state(str_bytes("Stable"))
                .with_protocol_type(str_bytes("consumer"))
                .with_protocol_data(str_bytes("range"))
                .with_members(vec![member.clone(), member])
                .with_unknown_tagged_fields(tags(v, 5));
            if v >= 3 {
                g = g.with_authorized_operations(0x0fff);
            }
            if v >= 6 {
                g = g.with_error_message(Some(str_bytes("none")));
            }
            let m = DescribeGroupsResponse::default()
                .with_groups(vec![g.clone(), g])
                .with_unknown_tagged_fields(tags(v, 5));
            let m = if v >= 1 { m.with_throttle_time_ms(5) } else { m };
            push(out, ApiKey::DescribeGroups, v, &m);
        }
        for v in 0..=5 {
            let mut g = ListedGroup::default()
                .with_group_id(group("orders-app"))
                .with_protocol_type(str_bytes("consumer"))
                .with_unknown_tagged_fields(tags(v, 3));
            if v >= 4 {
                g = g.with_group_state(str_bytes("Stable"));
            }
            if v >= 5 {
                g = g.with_group_type(str_bytes("classic"));
            }
            let m =
                ListGroupsResponse::default().with_groups(vec![g.clone(), g]).with_unknown_tagged_fields(tags(v, 3));
            let m = if v >= 1 { m.with_throttle_time_ms(5) } else { m };
            push(out, ApiKey::ListGroups, v, &m);
        }
        for v in 0..=2 {
            let r = DeletableGroupResult::default()
                .with_group_id(group("orders-app"))
                .with_error_code(69)
                .with_unknown_tagged_fields(tags(v, 2));
            let m = DeleteGroupsResponse::default()
                .with_throttle_time_ms(5)
                .with_results(vec![r.clone(), r])
                .with_unknown_tagged_fields(tags(v, 2));
            push(out, ApiKey::DeleteGroups, v, &m);
        }
        let p = OffsetDeleteResponsePartition::default().with_partition_index(1).with_error_code(86);
        let t = OffsetDeleteResponseTopic::default().with_name(topic("orders")).with_partitions(vec![p.clone(), p]);
        let m = OffsetDeleteResponse::default().with_throttle_time_ms(5).with_topics(vec![t.clone(), t]);
        push(out, ApiKey::OffsetDelete, 0, &m);
        for v in 2..=4 {
            let p = EpochEndOffset::default()
                .with_partition(1)
                .with_leader_epoch(3)
                .with_end_offset(100)
                .with_unknown_tagged_fields(tags(v, 4));
            let t = OffsetForLeaderTopicResult::default()
                .with_topic(topic("orders"))
                .with_partitions(vec![p.clone(), p])
                .with_unknown_tagged_fields(tags(v, 4));
            let m = OffsetForLeaderEpochResponse::default()
                .with_throttle_time_ms(5)
                .with_topics(vec![t.clone(), t])
                .with_unknown_tagged_fields(tags(v, 4));
            push(out, ApiKey::OffsetForLeaderEpoch, v, &m);
        }
    }

    #[test]
    fn populated_responses_of_every_version_walk_exactly() {
        let encoded = populated_responses();
        for e in &encoded {
            let (api_key, version, body) = (e.api_key, e.version, &e.body);
            let walked = check_response_array_bounds(api_key, version, body)
                .unwrap_or_else(|err| panic!("{api_key:?} v{version} refused: {err}"));
            assert_eq!(walked, body.len(), "{api_key:?} v{version}");
            // Trailing bytes are not part of the body.
            let mut longer = body.to_vec();
            longer.extend_from_slice(&[0xff; 9]);
            assert_eq!(check_response_array_bounds(api_key, version, &longer).unwrap(), body.len());
            // Every strict prefix is refused, never accepted as a shorter body.
            for cut in 0..body.len() {
                assert!(
                    check_response_array_bounds(api_key, version, &body[..cut]).is_err(),
                    "{api_key:?} v{version} cut {cut}"
                );
            }
        }
        // Every version of every schema was walked.
        for &api_key in APIS {
            let message = schema(api_key).unwrap();
            for v in message.min_version..=message.max_version {
                assert!(encoded.iter().any(|e| e.api_key == api_key && e.version == v), "{api_key:?} v{v} not tested");
            }
        }
    }

    fn too_long(result: Result<usize, ProtocolError>) -> bool {
        matches!(result, Err(ProtocolError::Malformed { what: RESPONSE_ARRAY_TOO_LONG, .. }))
    }

    /// A response frame (without its size prefix): correlation id 7, a flexible header's empty
    /// tagged-field section where `api_key`/`version` has one, then `body`.
    fn frame(api_key: ApiKey, version: i16, body: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        out.put_i32(7);
        if api_key.response_header_version(version) >= 1 {
            out.put_u8(0);
        }
        out.put_slice(body);
        out.freeze()
    }

    /// Before the pass, each of these made the generated decoder reserve what the count asks
    /// for (gigabytes to hundreds of gigabytes) and abort the client or the replica fetcher.
    #[test]
    fn decode_response_refuses_counts_that_cannot_fit() {
        fn refused<M: Codec + Debug>(api_key: ApiKey, version: i16, body: &[u8]) {
            let result = decode_response::<M>(api_key, version, &mut frame(api_key, version, body));
            assert!(
                matches!(result, Err(ProtocolError::Malformed { what: RESPONSE_ARRAY_TOO_LONG, .. })),
                "{api_key:?} v{version}: {result:?}"
            );
        }
        // Metadata v1: brokers count 0x7fffffff and nothing else.
        refused::<MetadataResponse>(ApiKey::Metadata, 1, &[0x7f, 0xff, 0xff, 0xff]);
        // ApiVersions decoded as v0 (the UNSUPPORTED_VERSION fallback): error code, api_keys.
        refused::<ApiVersionsResponse>(ApiKey::ApiVersions, 0, &[0, 35, 0x7f, 0xff, 0xff, 0xff]);
        // ApiVersions v3 (flexible body, v0 header): compact count 0xffffffff - 1.
        refused::<ApiVersionsResponse>(ApiKey::ApiVersions, 3, &[0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        // Fetch v12 (flexible header and body): one topic whose partition count is huge.
        let mut fetch = BytesMut::new();
        fetch.put_bytes(0, 10); // throttle_time_ms, error_code, session_id
        fetch.put_u8(2); // responses: one
        fetch.put_slice(&[2, b't']); // topic "t"
        fetch.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x07]); // partitions: 0x7ffffffe
        refused::<FetchResponse>(ApiKey::Fetch, 12, &fetch);
        // Fetch v16: node_endpoints, a tagged field the decoder parses in place.
        let mut tagged = BytesMut::new();
        tagged.put_bytes(0, 10);
        tagged.put_u8(1); // responses: empty
        tagged.put_slice(&[1, 0, 5]); // one tagged field: tag 0, size 5
        tagged.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x07]);
        refused::<FetchResponse>(ApiKey::Fetch, 16, &tagged);
        // OffsetForLeaderEpoch v2 (the replica fetcher's truncation): partitions of one topic.
        refused::<OffsetForLeaderEpochResponse>(
            ApiKey::OffsetForLeaderEpoch,
            2,
            &[0, 0, 0, 0, 0, 0, 0, 1, 0, 1, b't', 0x7f, 0, 0, 0],
        );
        // The transactional producer's responses: throttle_time_ms, then a huge topic count.
        refused::<AddPartitionsToTxnResponse>(ApiKey::AddPartitionsToTxn, 0, &[0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff]);
        refused::<TxnOffsetCommitResponse>(ApiKey::TxnOffsetCommit, 3, &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07]);
        // An int32 array in a nested struct: Metadata v1 replica_nodes.
        let mut metadata = BytesMut::new();
        metadata.put_i32(0); // brokers
        metadata.put_i32(-1); // controller_id
        metadata.put_i32(1); // topics
        metadata.put_slice(&[0, 0, 0, 1, b't', 0]); // error_code, name, is_internal
        metadata.put_i32(1); // partitions
        metadata.put_bytes(0, 10); // error_code, partition_index, leader_id
        metadata.put_i32(0x1000_0000); // replica_nodes
        refused::<MetadataResponse>(ApiKey::Metadata, 1, &metadata);
    }

    #[test]
    fn count_bound_uses_the_smallest_element() {
        // Metadata v1 partition replica_nodes: int32 elements, so 3 need 12 bytes (then an
        // empty isr_nodes, 4 bytes, makes the body whole).
        let metadata = |count: i32, tail: usize| {
            let mut b = BytesMut::new();
            b.put_i32(0);
            b.put_i32(-1);
            b.put_i32(1);
            b.put_slice(&[0, 0, 0, 1, b't', 0]);
            b.put_i32(1);
            b.put_bytes(0, 10);
            b.put_i32(count);
            b.put_bytes(0, tail);
            b.to_vec()
        };
        assert_eq!(check_response_array_bounds(ApiKey::Metadata, 1, &metadata(3, 16)).unwrap(), 52);
        assert!(too_long(check_response_array_bounds(ApiKey::Metadata, 1, &metadata(3, 11))));
        // 3 elements would fit in 12 bytes, but then the isr count is missing: truncated, not
        // too long.
        let truncated = check_response_array_bounds(ApiKey::Metadata, 1, &metadata(3, 12));
        assert!(matches!(truncated, Err(ProtocolError::Malformed { what: "response body", .. })), "{truncated:?}");
    }

    #[test]
    fn unknown_apis_and_versions_are_refused() {
        assert!(matches!(
            check_response_array_bounds(ApiKey::Metadata, 14, &[]),
            Err(ProtocolError::UnsupportedVersion { api: "Metadata", version: 14 })
        ));
        assert!(matches!(
            check_response_array_bounds(ApiKey::Produce, 2, &[]),
            Err(ProtocolError::UnsupportedVersion { .. })
        ));
        assert!(check_response_array_bounds(ApiKey::DescribeAcls, 0, &[]).is_err());
        // The generated decoder refuses Fetch v16's tag 0 before v16; so does the walk.
        let mut body = BytesMut::new();
        body.put_bytes(0, 10);
        body.put_u8(1);
        body.put_slice(&[1, 0, 1, 1]); // tag 0, size 1, empty compact array
        assert_eq!(check_response_array_bounds(ApiKey::Fetch, 16, &body).unwrap(), body.len());
        assert!(check_response_array_bounds(ApiKey::Fetch, 15, &body).is_err());
        assert!(decode_body::<FetchResponse>("response", &mut body.freeze(), 15).is_err());
    }

    /// The generated decoder's reading of `body`, as the number of bytes it took.
    fn decoded_len(api_key: ApiKey, version: i16, body: &[u8]) -> Result<usize, ProtocolError> {
        fn len<M: Codec>(version: i16, body: &[u8]) -> Result<usize, ProtocolError> {
            let mut bytes = Bytes::copy_from_slice(body);
            decode_body::<M>("response", &mut bytes, version)?;
            Ok(body.len() - bytes.len())
        }
        match api_key {
            ApiKey::ApiVersions => len::<ApiVersionsResponse>(version, body),
            ApiKey::Metadata => len::<MetadataResponse>(version, body),
            ApiKey::Produce => len::<ProduceResponse>(version, body),
            ApiKey::Fetch => len::<FetchResponse>(version, body),
            ApiKey::ListOffsets => len::<ListOffsetsResponse>(version, body),
            ApiKey::CreateTopics => len::<CreateTopicsResponse>(version, body),
            ApiKey::DeleteTopics => len::<DeleteTopicsResponse>(version, body),
            ApiKey::CreatePartitions => len::<CreatePartitionsResponse>(version, body),
            ApiKey::DescribeConfigs => len::<DescribeConfigsResponse>(version, body),
            ApiKey::IncrementalAlterConfigs => len::<IncrementalAlterConfigsResponse>(version, body),
            ApiKey::InitProducerId => len::<InitProducerIdResponse>(version, body),
            ApiKey::FindCoordinator => len::<FindCoordinatorResponse>(version, body),
            ApiKey::JoinGroup => len::<JoinGroupResponse>(version, body),
            ApiKey::SyncGroup => len::<SyncGroupResponse>(version, body),
            ApiKey::Heartbeat => len::<HeartbeatResponse>(version, body),
            ApiKey::LeaveGroup => len::<LeaveGroupResponse>(version, body),
            ApiKey::OffsetCommit => len::<OffsetCommitResponse>(version, body),
            ApiKey::OffsetFetch => len::<OffsetFetchResponse>(version, body),
            ApiKey::DescribeGroups => len::<DescribeGroupsResponse>(version, body),
            ApiKey::ListGroups => len::<ListGroupsResponse>(version, body),
            ApiKey::DeleteGroups => len::<DeleteGroupsResponse>(version, body),
            ApiKey::OffsetDelete => len::<OffsetDeleteResponse>(version, body),
            ApiKey::OffsetForLeaderEpoch => len::<OffsetForLeaderEpochResponse>(version, body),
            ApiKey::AddPartitionsToTxn => len::<AddPartitionsToTxnResponse>(version, body),
            ApiKey::AddOffsetsToTxn => len::<AddOffsetsToTxnResponse>(version, body),
            ApiKey::TxnOffsetCommit => len::<TxnOffsetCommitResponse>(version, body),
            ApiKey::EndTxn => len::<EndTxnResponse>(version, body),
            ApiKey::WriteTxnMarkers => len::<WriteTxnMarkersResponse>(version, body),
            ApiKey::ListTransactions => len::<ListTransactionsResponse>(version, body),
            ApiKey::DescribeTransactions => len::<DescribeTransactionsResponse>(version, body),
            ApiKey::DescribeProducers => len::<crate::protocol::messages::DescribeProducersResponse>(version, body),
            ApiKey::DeleteRecords => len::<crate::protocol::messages::DeleteRecordsResponse>(version, body),
            ApiKey::ElectLeaders => len::<crate::protocol::messages::ElectLeadersResponse>(version, body),
            ApiKey::AlterPartitionReassignments => {
                len::<crate::protocol::messages::AlterPartitionReassignmentsResponse>(version, body)
            }
            ApiKey::ListPartitionReassignments => {
                len::<crate::protocol::messages::ListPartitionReassignmentsResponse>(version, body)
            }
            ApiKey::UnregisterBroker => len::<crate::protocol::messages::UnregisterBrokerResponse>(version, body),
            ApiKey::DescribeQuorum => len::<crate::protocol::messages::DescribeQuorumResponse>(version, body),
            ApiKey::AddRaftVoter => len::<crate::protocol::messages::AddRaftVoterResponse>(version, body),
            ApiKey::RemoveRaftVoter => len::<crate::protocol::messages::RemoveRaftVoterResponse>(version, body),
            _ => unreachable!("no response schema for {api_key:?}"),
        }
    }

    fn api_and_version() -> impl Strategy<Value = (ApiKey, i16)> {
        proptest::sample::select(APIS).prop_flat_map(|api_key| {
            let message = schema(api_key).unwrap();
            (Just(api_key), message.min_version..=message.max_version)
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic_and_stay_in_bounds(
            (api_key, version) in api_and_version(),
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            if let Ok(walked) = check_response_array_bounds(api_key, version, &bytes) {
                prop_assert!(walked <= bytes.len());
            }
        }

        /// Real responses with bytes overwritten and cut: wherever the walk does not refuse a
        /// count, the generated decoder (now safe to run) must agree with it, so the schemas
        /// cannot drift from the decoders unnoticed.
        #[test]
        fn mutated_responses_walk_as_the_decoder_reads(
            pick in any::<prop::sample::Index>(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let encoded = populated_responses();
            let e = &encoded[pick.index(encoded.len())];
            let mut body = e.body.to_vec();
            for (at, byte) in &edits {
                let at = at.index(body.len());
                body[at] = *byte;
            }
            body.truncate(body.len() - cut.index(body.len() / 4 + 1));
            match check_response_array_bounds(e.api_key, e.version, &body) {
                Ok(walked) => {
                    if let Ok(read) = decoded_len(e.api_key, e.version, &body) {
                        prop_assert_eq!(walked, read, "{:?} v{}", e.api_key, e.version);
                    }
                }
                Err(ProtocolError::Malformed { what: RESPONSE_ARRAY_TOO_LONG, .. }) => {}
                Err(_) => {
                    prop_assert!(decoded_len(e.api_key, e.version, &body).is_err(), "{:?} v{}", e.api_key, e.version);
                }
            }
        }
    }
}

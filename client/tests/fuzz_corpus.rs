//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz targets' own per-input
//! logic on the stable toolchain, so every input a fuzzer run kept, and every crash it once
//! found, is handled without a panic or an abort on each `cargo test`.

#[path = "../../fuzz/fuzz_targets/common.rs"]
mod common;

use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};
use spate_client::protocol::compression::Compression;
use spate_client::protocol::messages::create_partitions_request::{CreatePartitionsAssignment, CreatePartitionsTopic};
use spate_client::protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use spate_client::protocol::messages::describe_configs_request::DescribeConfigsResource;
use spate_client::protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use spate_client::protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use spate_client::protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use spate_client::protocol::messages::metadata_request::MetadataRequestTopic;
use spate_client::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use spate_client::protocol::messages::*;
use spate_client::protocol::record::{set_base_offset, BatchBuilder, Record, RecordHeader};
use spate_client::protocol::{encode_request, encode_response, str_bytes, ApiKey, Codec};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

/// Runs every file of a target's corpus; returns how many there were.
fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = corpus_dir(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let failed: Vec<_> = files
        .iter()
        .filter(|file| {
            let data = std::fs::read(file).unwrap();
            // A panic is caught and named here; an abort kills the test binary, failing the run.
            std::panic::catch_unwind(|| run(&data)).is_err()
        })
        .collect();
    assert!(failed.is_empty(), "fuzz inputs panicked: {failed:#?}");
    files.len()
}

#[test]
fn request_decoder_corpus_replays_without_panics() {
    assert!(replay("request_decoder", common::request_decoder) >= 20);
}

#[test]
fn response_decoder_corpus_replays_without_panics() {
    assert!(replay("response_decoder", common::response_decoder) >= 20);
}

#[test]
fn batch_validator_corpus_replays_without_panics() {
    assert!(replay("batch_validator", common::batch_validator) >= 5);
}

// ---------------------------------------------------------------------------------------------
// Seeds. `cargo test -p spate-client --test fuzz_corpus -- --ignored` rewrites the `seed-*` and
// `trunc-*` files; `repro-*` files are crashes the fuzzer found (or the known ones below) and
// are kept by hand.

fn frame<M: Codec>(api_key: ApiKey, version: i16, request: &M) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_request(api_key, version, 7, Some("fuzz-seed"), request, &mut out).unwrap();
    out[4..].to_vec() // without the size prefix, as decode_frame hands frames over
}

fn topic(name: &str) -> TopicName {
    TopicName(str_bytes(name))
}

fn batch(compression: Compression, producer_id: i64) -> Bytes {
    let mut builder = BatchBuilder::new(compression);
    for i in 0..3u8 {
        builder.push(&Record {
            key: Some(Bytes::from(vec![b'k', i])),
            value: Some(Bytes::from(vec![i; 40])),
            headers: vec![RecordHeader { key: "h".into(), value: Some(Bytes::from_static(b"v")) }],
            timestamp_ms: 1_700_000_000_000 + i as i64,
        });
    }
    builder.finish(producer_id, 0, 0, false).unwrap()
}

fn produce(records: Bytes) -> ProduceRequest {
    let partition = PartitionProduceData::default().with_index(0).with_records(Some(records));
    let t = TopicProduceData::default().with_name(topic("orders")).with_partition_data(vec![partition]);
    ProduceRequest::default().with_transactional_id(None).with_acks(-1).with_timeout_ms(30_000).with_topic_data(vec![t])
}

/// A frame with a hand-made body, for inputs no encoder would produce. Request header v1, or v2
/// (v1 plus an empty tagged-field section) for flexible versions.
fn raw_frame(api_key: ApiKey, version: i16, body: &[u8]) -> Vec<u8> {
    let client_id = b"fuzz-repro";
    let mut out = BytesMut::new();
    out.put_i16(api_key as i16);
    out.put_i16(version);
    out.put_i32(7);
    out.put_i16(client_id.len() as i16);
    out.put_slice(client_id);
    if api_key.request_header_version(version) >= 2 {
        out.put_u8(0);
    }
    out.extend_from_slice(body);
    out.to_vec()
}

/// Valid requests at the lowest and highest version the broker implements.
fn request_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut add = |name: String, bytes: Vec<u8>| seeds.push((name, bytes));
    for v in [0, 3] {
        let r = ApiVersionsRequest::default();
        let r = if v >= 3 {
            r.with_client_software_name(str_bytes("spate")).with_client_software_version(str_bytes("0.1"))
        } else {
            r
        };
        add(format!("api_versions-v{v}"), frame(ApiKey::ApiVersions, v, &r));
    }
    for v in [1, 12] {
        let topics = vec![MetadataRequestTopic::default().with_name(Some(topic("orders")))];
        add(
            format!("metadata-v{v}"),
            frame(ApiKey::Metadata, v, &MetadataRequest::default().with_topics(Some(topics))),
        );
        add(format!("metadata-all-v{v}"), frame(ApiKey::Metadata, v, &MetadataRequest::default().with_topics(None)));
    }
    for v in [3, 9] {
        add(format!("produce-v{v}"), frame(ApiKey::Produce, v, &produce(batch(Compression::None, -1))));
    }
    add("produce-idempotent-zstd-v9".into(), frame(ApiKey::Produce, 9, &produce(batch(Compression::Zstd, 42))));
    add("produce-gzip-v7".into(), frame(ApiKey::Produce, 7, &produce(batch(Compression::Gzip, -1))));
    for v in [4, 12] {
        let partition = FetchPartition::default().with_fetch_offset(5).with_partition_max_bytes(1 << 20);
        let t = FetchTopic::default().with_topic(topic("orders")).with_partitions(vec![partition]);
        let r = FetchRequest::default().with_replica_id(BrokerId(-1)).with_max_wait_ms(500).with_topics(vec![t]);
        add(format!("fetch-v{v}"), frame(ApiKey::Fetch, v, &r));
    }
    for v in [1, 7] {
        let t = ListOffsetsTopic::default()
            .with_name(topic("orders"))
            .with_partitions(vec![ListOffsetsPartition::default().with_timestamp(-1)]);
        let r = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![t]);
        add(format!("list_offsets-v{v}"), frame(ApiKey::ListOffsets, v, &r));
    }
    for v in [2, 7] {
        let config =
            CreatableTopicConfig::default().with_name(str_bytes("retention.ms")).with_value(Some(str_bytes("1000")));
        let t = CreatableTopic::default()
            .with_name(topic("orders"))
            .with_num_partitions(3)
            .with_replication_factor(1)
            .with_configs(vec![config]);
        add(
            format!("create_topics-v{v}"),
            frame(ApiKey::CreateTopics, v, &CreateTopicsRequest::default().with_topics(vec![t])),
        );
    }
    for v in [1, 6] {
        let r = if v >= 6 {
            DeleteTopicsRequest::default()
                .with_topics(vec![delete_topics_request::DeleteTopicState::default().with_name(Some(topic("orders")))])
        } else {
            DeleteTopicsRequest::default().with_topic_names(vec![topic("orders")])
        };
        add(format!("delete_topics-v{v}"), frame(ApiKey::DeleteTopics, v, &r.with_timeout_ms(1000)));
    }
    for v in [0, 3] {
        let t = CreatePartitionsTopic::default()
            .with_name(topic("orders"))
            .with_count(6)
            .with_assignments(Some(vec![CreatePartitionsAssignment::default().with_broker_ids(vec![BrokerId(1)])]));
        add(
            format!("create_partitions-v{v}"),
            frame(ApiKey::CreatePartitions, v, &CreatePartitionsRequest::default().with_topics(vec![t])),
        );
    }
    for v in [1, 4] {
        let resource = DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(str_bytes("orders"))
            .with_configuration_keys(Some(vec![str_bytes("retention.ms")]));
        add(
            format!("describe_configs-v{v}"),
            frame(ApiKey::DescribeConfigs, v, &DescribeConfigsRequest::default().with_resources(vec![resource])),
        );
    }
    for v in [0, 1] {
        let resource =
            AlterConfigsResource::default().with_resource_type(2).with_resource_name(str_bytes("orders")).with_configs(
                vec![AlterableConfig::default().with_name(str_bytes("retention.ms")).with_value(Some(str_bytes("5")))],
            );
        add(
            format!("incremental_alter_configs-v{v}"),
            frame(
                ApiKey::IncrementalAlterConfigs,
                v,
                &IncrementalAlterConfigsRequest::default().with_resources(vec![resource]),
            ),
        );
    }
    for v in [0, 4] {
        let r = InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(-1);
        add(format!("init_producer_id-v{v}"), frame(ApiKey::InitProducerId, v, &r));
    }
    seeds
}

/// A response-decoder input: the api key and version the request was sent with, then the
/// response frame without its size prefix.
fn response_input<M: Codec>(api_key: ApiKey, version: i16, response: &M) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_response(api_key, version, 7, response, &mut out).unwrap();
    raw_response_input(api_key, version, &out[4..])
}

fn raw_response_input(api_key: ApiKey, version: i16, frame: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_i16(api_key as i16);
    out.put_i16(version);
    out.put_slice(frame);
    out.to_vec()
}

/// Valid responses at the lowest and highest version the client speaks.
fn response_seeds() -> Vec<(String, Vec<u8>)> {
    use spate_client::protocol::messages::api_versions_response::ApiVersion;
    use spate_client::protocol::messages::create_topics_response::CreatableTopicResult;
    use spate_client::protocol::messages::delete_topics_response::DeletableTopicResult;
    use spate_client::protocol::messages::describe_configs_response::{
        DescribeConfigsResourceResult, DescribeConfigsResult,
    };
    use spate_client::protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
    use spate_client::protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use spate_client::protocol::messages::find_coordinator_response::Coordinator;
    use spate_client::protocol::messages::join_group_response::JoinGroupResponseMember;
    use spate_client::protocol::messages::list_groups_response::ListedGroup;
    use spate_client::protocol::messages::list_offsets_response::{
        ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
    };
    use spate_client::protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use spate_client::protocol::messages::offset_commit_response::{
        OffsetCommitResponsePartition, OffsetCommitResponseTopic,
    };
    use spate_client::protocol::messages::offset_fetch_response::{
        OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
        OffsetFetchResponseTopic, OffsetFetchResponseTopics,
    };
    use spate_client::protocol::messages::offset_for_leader_epoch_response::{
        EpochEndOffset, OffsetForLeaderTopicResult,
    };
    use spate_client::protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};

    let mut seeds = Vec::new();
    let mut add = |name: String, bytes: Vec<u8>| seeds.push((name, bytes));
    for v in [0, 3] {
        let keys = vec![
            ApiVersion::default().with_api_key(18).with_min_version(0).with_max_version(3),
            ApiVersion::default().with_api_key(3).with_min_version(0).with_max_version(12),
        ];
        let r = ApiVersionsResponse::default().with_api_keys(keys);
        add(format!("api_versions-v{v}"), response_input(ApiKey::ApiVersions, v, &r));
    }
    // KIP-511: a broker that does not know the version asked for answers in the v0 layout.
    let fallback = ApiVersionsResponse::default()
        .with_error_code(35)
        .with_api_keys(vec![ApiVersion::default().with_api_key(18).with_max_version(2)]);
    add("api_versions-unsupported-v0".into(), response_input(ApiKey::ApiVersions, 0, &fallback));
    for v in [1, 12] {
        let broker = MetadataResponseBroker::default()
            .with_node_id(BrokerId(1))
            .with_host(str_bytes("localhost"))
            .with_port(9092);
        let partition = MetadataResponsePartition::default()
            .with_leader_id(BrokerId(1))
            .with_replica_nodes(vec![BrokerId(1), BrokerId(2)])
            .with_isr_nodes(vec![BrokerId(1)]);
        let t = MetadataResponseTopic::default().with_name(Some(topic("orders"))).with_partitions(vec![partition]);
        let r =
            MetadataResponse::default().with_brokers(vec![broker]).with_controller_id(BrokerId(1)).with_topics(vec![t]);
        add(format!("metadata-v{v}"), response_input(ApiKey::Metadata, v, &r));
    }
    for v in [3, 9] {
        let p = PartitionProduceResponse::default().with_index(0).with_base_offset(42);
        let t = TopicProduceResponse::default().with_name(topic("orders")).with_partition_responses(vec![p]);
        add(
            format!("produce-v{v}"),
            response_input(ApiKey::Produce, v, &ProduceResponse::default().with_responses(vec![t])),
        );
    }
    for v in [4, 12] {
        let p = PartitionData::default()
            .with_high_watermark(3)
            .with_last_stable_offset(3)
            .with_records(Some(batch(Compression::None, -1)));
        let t = FetchableTopicResponse::default().with_topic(topic("orders")).with_partitions(vec![p]);
        add(format!("fetch-v{v}"), response_input(ApiKey::Fetch, v, &FetchResponse::default().with_responses(vec![t])));
    }
    for v in [1, 7] {
        let p = ListOffsetsPartitionResponse::default().with_timestamp(-1).with_offset(42);
        let t = ListOffsetsTopicResponse::default().with_name(topic("orders")).with_partitions(vec![p]);
        let r = ListOffsetsResponse::default().with_topics(vec![t]);
        add(format!("list_offsets-v{v}"), response_input(ApiKey::ListOffsets, v, &r));
    }
    for v in [2, 7] {
        let t = CreatableTopicResult::default().with_name(topic("orders")).with_error_message(Some(str_bytes("ok")));
        let r = CreateTopicsResponse::default().with_topics(vec![t]);
        add(format!("create_topics-v{v}"), response_input(ApiKey::CreateTopics, v, &r));
    }
    for v in [1, 6] {
        let t = DeletableTopicResult::default().with_name(Some(topic("orders")));
        let r = DeleteTopicsResponse::default().with_responses(vec![t]);
        add(format!("delete_topics-v{v}"), response_input(ApiKey::DeleteTopics, v, &r));
    }
    for v in [1, 4] {
        let c = DescribeConfigsResourceResult::default()
            .with_name(str_bytes("retention.ms"))
            .with_value(Some(str_bytes("1000")));
        let result = DescribeConfigsResult::default()
            .with_resource_type(2)
            .with_resource_name(str_bytes("orders"))
            .with_configs(vec![c]);
        let r = DescribeConfigsResponse::default().with_results(vec![result]);
        add(format!("describe_configs-v{v}"), response_input(ApiKey::DescribeConfigs, v, &r));
    }
    for v in [0, 4] {
        let r = InitProducerIdResponse::default().with_producer_id(ProducerId(42));
        add(format!("init_producer_id-v{v}"), response_input(ApiKey::InitProducerId, v, &r));
    }
    for v in [0, 4] {
        let r = FindCoordinatorResponse::default();
        let r = if v >= 4 {
            let c = Coordinator::default()
                .with_key(str_bytes("orders-app"))
                .with_node_id(BrokerId(1))
                .with_host(str_bytes("localhost"))
                .with_port(9092);
            r.with_coordinators(vec![c])
        } else {
            r.with_node_id(BrokerId(1)).with_host(str_bytes("localhost")).with_port(9092)
        };
        add(format!("find_coordinator-v{v}"), response_input(ApiKey::FindCoordinator, v, &r));
    }
    for v in [0, 7] {
        let member = JoinGroupResponseMember::default()
            .with_member_id(str_bytes("m-1"))
            .with_metadata(Bytes::from_static(b"subscription"));
        let r = JoinGroupResponse::default()
            .with_generation_id(1)
            .with_protocol_name(Some(str_bytes("range")))
            .with_leader(str_bytes("m-1"))
            .with_member_id(str_bytes("m-1"))
            .with_members(vec![member]);
        add(format!("join_group-v{v}"), response_input(ApiKey::JoinGroup, v, &r));
    }
    for v in [0, 5] {
        let r = SyncGroupResponse::default().with_assignment(Bytes::from_static(b"assignment"));
        add(format!("sync_group-v{v}"), response_input(ApiKey::SyncGroup, v, &r));
    }
    for v in [2, 8] {
        let p = OffsetCommitResponsePartition::default().with_partition_index(0);
        let t = OffsetCommitResponseTopic::default().with_name(topic("orders")).with_partitions(vec![p]);
        let r = OffsetCommitResponse::default().with_topics(vec![t]);
        add(format!("offset_commit-v{v}"), response_input(ApiKey::OffsetCommit, v, &r));
    }
    for v in [1, 8] {
        let r = if v <= 7 {
            let p =
                OffsetFetchResponsePartition::default().with_committed_offset(42).with_metadata(Some(str_bytes("")));
            let t = OffsetFetchResponseTopic::default().with_name(topic("orders")).with_partitions(vec![p]);
            OffsetFetchResponse::default().with_topics(vec![t])
        } else {
            let p = OffsetFetchResponsePartitions::default().with_committed_offset(42);
            let t = OffsetFetchResponseTopics::default().with_name(topic("orders")).with_partitions(vec![p]);
            let g = OffsetFetchResponseGroup::default()
                .with_group_id(GroupId(str_bytes("orders-app")))
                .with_topics(vec![t]);
            OffsetFetchResponse::default().with_groups(vec![g])
        };
        add(format!("offset_fetch-v{v}"), response_input(ApiKey::OffsetFetch, v, &r));
    }
    for v in [0, 5] {
        let member = DescribedGroupMember::default()
            .with_member_id(str_bytes("m-1"))
            .with_member_assignment(Bytes::from_static(b"assignment"));
        let g = DescribedGroup::default()
            .with_group_id(GroupId(str_bytes("orders-app")))
            .with_group_state(str_bytes("Stable"))
            .with_members(vec![member]);
        let r = DescribeGroupsResponse::default().with_groups(vec![g]);
        add(format!("describe_groups-v{v}"), response_input(ApiKey::DescribeGroups, v, &r));
    }
    for v in [0, 4] {
        let g = ListedGroup::default()
            .with_group_id(GroupId(str_bytes("orders-app")))
            .with_protocol_type(str_bytes("consumer"));
        let r = ListGroupsResponse::default().with_groups(vec![g]);
        add(format!("list_groups-v{v}"), response_input(ApiKey::ListGroups, v, &r));
    }
    for v in [2, 4] {
        let p = EpochEndOffset::default().with_partition(0).with_leader_epoch(1).with_end_offset(42);
        let t = OffsetForLeaderTopicResult::default().with_topic(topic("orders")).with_partitions(vec![p]);
        let r = OffsetForLeaderEpochResponse::default().with_topics(vec![t]);
        add(format!("offset_for_leader_epoch-v{v}"), response_input(ApiKey::OffsetForLeaderEpoch, v, &r));
    }
    seeds
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

#[test]
#[ignore = "rewrites the seed files under fuzz/corpus; run by hand"]
fn write_seed_corpus() {
    let requests = corpus_dir("request_decoder");
    let responses = corpus_dir("response_decoder");
    let batches = corpus_dir("batch_validator");
    for dir in [&requests, &responses, &batches] {
        std::fs::create_dir_all(dir).unwrap();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("seed-") || name.starts_with("trunc-") {
                std::fs::remove_file(path).unwrap();
            }
        }
    }
    for (name, bytes) in request_seeds() {
        write(&requests, &format!("seed-{name}"), &bytes);
        // Cut inside the header and inside the body.
        write(&requests, &format!("trunc-{name}-header"), &bytes[..bytes.len().min(10)]);
        write(&requests, &format!("trunc-{name}-body"), &bytes[..bytes.len() - bytes.len().min(20) / 2 - 1]);
    }
    // Array counts no body could hold: the kafka-protocol decoders reserve them up front and
    // abort the process unless the bounds pass refuses them first.
    for (name, api_key, version, body) in [
        ("metadata-v1-topics-count-0x7fffffff", ApiKey::Metadata, 1, vec![0x7f, 0xff, 0xff, 0xff]),
        (
            "produce-v3-topics-count-0x7fffffff",
            ApiKey::Produce,
            3,
            vec![0xff, 0xff, 0, 1, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff],
        ),
        ("create_topics-v5-compact-count-0xfffffffe", ApiKey::CreateTopics, 5, vec![0xff, 0xff, 0xff, 0xff, 0x0f]),
        (
            "produce-v3-partitions-count-0x7f000000",
            ApiKey::Produce,
            3,
            vec![0xff, 0xff, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, b't', 0x7f, 0, 0, 0],
        ),
    ] {
        write(&requests, &format!("repro-{name}"), &raw_frame(api_key, version, &body));
    }
    for (name, bytes) in response_seeds() {
        write(&responses, &format!("seed-{name}"), &bytes);
        // Cut inside the header and inside the body.
        write(&responses, &format!("trunc-{name}-header"), &bytes[..bytes.len().min(6)]);
        write(&responses, &format!("trunc-{name}-body"), &bytes[..bytes.len() - bytes.len().min(20) / 2 - 1]);
    }
    // Counts no response could hold, which the client and the replica fetcher once reserved up
    // front. Frames: correlation id, then (flexible headers) an empty tagged-field section.
    let mut fetch_v12 = vec![0, 0, 0, 7, 0];
    fetch_v12.extend_from_slice(&[0; 10]); // throttle_time_ms, error_code, session_id
    fetch_v12.extend_from_slice(&[2, 2, b't', 0xff, 0xff, 0xff, 0xff, 0x07]);
    let mut fetch_v16 = vec![0, 0, 0, 7, 0];
    fetch_v16.extend_from_slice(&[0; 10]);
    fetch_v16.extend_from_slice(&[1, 1, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x07]); // tag 0: node_endpoints
    for (name, api_key, version, frame) in [
        ("metadata-v1-brokers-count-0x7fffffff", ApiKey::Metadata, 1, vec![0, 0, 0, 7, 0x7f, 0xff, 0xff, 0xff]),
        (
            "api_versions-v0-api-keys-count-0x7fffffff",
            ApiKey::ApiVersions,
            0,
            vec![0, 0, 0, 7, 0, 35, 0x7f, 0xff, 0xff, 0xff],
        ),
        ("fetch-v12-partitions-count-0x7ffffffe", ApiKey::Fetch, 12, fetch_v12),
        ("fetch-v16-node-endpoints-count-0x7ffffffe", ApiKey::Fetch, 16, fetch_v16),
        (
            "offset_for_leader_epoch-v2-partitions-count-0x7f000000",
            ApiKey::OffsetForLeaderEpoch,
            2,
            vec![0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, b't', 0x7f, 0, 0, 0],
        ),
    ] {
        write(&responses, &format!("repro-{name}"), &raw_response_input(api_key, version, &frame));
    }
    let mut two = batch(Compression::None, 42).to_vec();
    two.extend_from_slice(&batch(Compression::Lz4, 42));
    for (name, bytes) in [
        ("none", batch(Compression::None, -1).to_vec()),
        ("gzip", batch(Compression::Gzip, -1).to_vec()),
        ("snappy", batch(Compression::Snappy, -1).to_vec()),
        ("lz4", batch(Compression::Lz4, 7).to_vec()),
        ("zstd", batch(Compression::Zstd, 7).to_vec()),
        ("two-batches", two),
    ] {
        write(&batches, &format!("seed-{name}"), &bytes);
        write(&batches, &format!("trunc-{name}"), &bytes[..bytes.len() - 5]);
    }
    // Offsets at the edge of i64: base_offset is outside the CRC, so any peer can send these.
    let mut at_max = batch(Compression::None, -1).to_vec();
    set_base_offset(&mut at_max, i64::MAX - 1);
    write(&batches, "repro-base-offset-near-i64-max", &at_max);
}

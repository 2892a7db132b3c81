//! Per-input logic of the fuzz targets. `client/tests/fuzz_corpus.rs` includes this file by path
//! and replays `fuzz/corpus/` through it on every `cargo test`, so a crash the fuzzer found
//! stays fixed on the stable toolchain too.
//!
//! Each function does what a peer's bytes go through in production and assert only invariants
//! of our own code: an `Err` is the expected answer to garbage, a panic or an abort is the bug.

use bytes::Bytes;
use spate_client::protocol::bounds::{
    check_array_bounds, check_response_array_bounds, ARRAY_TOO_LONG, RESPONSE_ARRAY_TOO_LONG,
};
use spate_client::protocol::messages::*;
use spate_client::protocol::record::{decode_records, validate_batches, BatchIter, BATCH_HEADER_BYTES};
use spate_client::protocol::{
    decode_body, decode_request_header, decode_response, decode_response_header, ApiKey, Codec,
};
use spate_client::ProtocolError;

/// Decompression limit for decoding fetched batches.
pub const MAX_DECOMPRESSED_BYTES: usize = 1 << 20;

/// One request frame, without its size prefix (as `frame::decode_frame` returns it).
pub fn request_decoder(data: &[u8]) {
    let mut frame = Bytes::copy_from_slice(data);
    let Ok((api_key, header)) = decode_request_header(&mut frame) else {
        return;
    };
    let version = header.request_api_version;
    let walked = match check_array_bounds(api_key, version, &frame) {
        Ok(len) => Some(len),
        // Refused before decoding, as the broker does: decoding now would reserve what the
        // impossible count asks for, which is exactly what the pass exists to prevent.
        Err(ProtocolError::Malformed { what: ARRAY_TOO_LONG, .. } | ProtocolError::UnsupportedVersion { .. }) => return,
        // Truncated or invalid: the generated decoder must refuse it as well.
        Err(_) => None,
    };
    match api_key {
        ApiKey::ApiVersions => drop(body::<ApiVersionsRequest>(frame, version, walked)),
        ApiKey::Metadata => drop(body::<MetadataRequest>(frame, version, walked)),
        ApiKey::Produce => {
            let Some(request) = body::<ProduceRequest>(frame, version, walked) else {
                return;
            };
            for topic in &request.topic_data {
                for partition in &topic.partition_data {
                    if let Some(records) = &partition.records {
                        let _ = validate_batches(records);
                    }
                }
            }
        }
        ApiKey::Fetch => drop(body::<FetchRequest>(frame, version, walked)),
        ApiKey::ListOffsets => drop(body::<ListOffsetsRequest>(frame, version, walked)),
        ApiKey::CreateTopics => drop(body::<CreateTopicsRequest>(frame, version, walked)),
        ApiKey::DeleteTopics => drop(body::<DeleteTopicsRequest>(frame, version, walked)),
        ApiKey::CreatePartitions => drop(body::<CreatePartitionsRequest>(frame, version, walked)),
        ApiKey::DescribeConfigs => drop(body::<DescribeConfigsRequest>(frame, version, walked)),
        ApiKey::IncrementalAlterConfigs => drop(body::<IncrementalAlterConfigsRequest>(frame, version, walked)),
        ApiKey::InitProducerId => drop(body::<InitProducerIdRequest>(frame, version, walked)),
        _ => {}
    }
}

/// Decodes a body and cross-checks the bounds pass: it must end where the decoder ends, and
/// must not refuse a body the decoder accepts (else its schema has drifted from the crate's).
fn body<M: Codec>(mut body: Bytes, version: i16, walked: Option<usize>) -> Option<M> {
    let len = body.len();
    let decoded = decode_body::<M>("message", &mut body, version);
    match (walked, decoded) {
        (Some(walked), Ok(message)) => {
            assert_eq!(walked, len - body.len(), "bounds pass and decoder disagree on the body length");
            Some(message)
        }
        (None, Ok(_)) => panic!("bounds pass refused a body the decoder accepts"),
        (_, Err(_)) => None,
    }
}

/// One response as the client (and the broker's replica fetcher) decodes it. The input is the
/// api key and version the request was sent with (two big-endian `i16`s, which a response does
/// not carry), then the response frame without its size prefix.
pub fn response_decoder(data: &[u8]) {
    let Some((prefix, frame)) = data.split_first_chunk::<4>() else {
        return;
    };
    let Ok(api_key) = ApiKey::try_from(i16::from_be_bytes([prefix[0], prefix[1]])) else {
        return;
    };
    let version = i16::from_be_bytes([prefix[2], prefix[3]]);
    let frame = Bytes::copy_from_slice(frame);
    match api_key {
        ApiKey::ApiVersions => drop(response::<ApiVersionsResponse>(api_key, version, frame)),
        ApiKey::Metadata => drop(response::<MetadataResponse>(api_key, version, frame)),
        ApiKey::Produce => drop(response::<ProduceResponse>(api_key, version, frame)),
        ApiKey::Fetch => {
            let Some(response) = response::<FetchResponse>(api_key, version, frame) else {
                return;
            };
            // As the consumer's fetcher and the replica fetcher do with the records.
            for topic in &response.responses {
                for partition in &topic.partitions {
                    if let Some(records) = &partition.records {
                        for (position, header) in BatchIter::new(records) {
                            decode(&records.slice(position..position + header.total_bytes()));
                        }
                    }
                }
            }
        }
        ApiKey::ListOffsets => drop(response::<ListOffsetsResponse>(api_key, version, frame)),
        ApiKey::CreateTopics => drop(response::<CreateTopicsResponse>(api_key, version, frame)),
        ApiKey::DeleteTopics => drop(response::<DeleteTopicsResponse>(api_key, version, frame)),
        ApiKey::CreatePartitions => drop(response::<CreatePartitionsResponse>(api_key, version, frame)),
        ApiKey::DescribeConfigs => drop(response::<DescribeConfigsResponse>(api_key, version, frame)),
        ApiKey::IncrementalAlterConfigs => drop(response::<IncrementalAlterConfigsResponse>(api_key, version, frame)),
        ApiKey::InitProducerId => drop(response::<InitProducerIdResponse>(api_key, version, frame)),
        ApiKey::FindCoordinator => drop(response::<FindCoordinatorResponse>(api_key, version, frame)),
        ApiKey::JoinGroup => drop(response::<JoinGroupResponse>(api_key, version, frame)),
        ApiKey::SyncGroup => drop(response::<SyncGroupResponse>(api_key, version, frame)),
        ApiKey::Heartbeat => drop(response::<HeartbeatResponse>(api_key, version, frame)),
        ApiKey::LeaveGroup => drop(response::<LeaveGroupResponse>(api_key, version, frame)),
        ApiKey::OffsetCommit => drop(response::<OffsetCommitResponse>(api_key, version, frame)),
        ApiKey::OffsetFetch => drop(response::<OffsetFetchResponse>(api_key, version, frame)),
        ApiKey::DescribeGroups => drop(response::<DescribeGroupsResponse>(api_key, version, frame)),
        ApiKey::ListGroups => drop(response::<ListGroupsResponse>(api_key, version, frame)),
        ApiKey::DeleteGroups => drop(response::<DeleteGroupsResponse>(api_key, version, frame)),
        ApiKey::OffsetDelete => drop(response::<OffsetDeleteResponse>(api_key, version, frame)),
        ApiKey::OffsetForLeaderEpoch => drop(response::<OffsetForLeaderEpochResponse>(api_key, version, frame)),
        _ => {}
    }
}

/// `decode_response` (what the client runs), cross-checked against the bounds pass and the
/// generated decoder run separately.
fn response<M: Codec>(api_key: ApiKey, version: i16, frame: Bytes) -> Option<M> {
    let decoded = decode_response::<M>(api_key, version, &mut frame.clone()).ok().map(|(_, response)| response);
    let mut rest = frame;
    if decode_response_header(api_key, version, &mut rest).is_err() {
        assert!(decoded.is_none(), "decode_response accepted a frame whose header does not decode");
        return None;
    }
    let walked = match check_response_array_bounds(api_key, version, &rest) {
        Ok(len) => Some(len),
        // Refused before decoding, as `decode_response` does.
        Err(
            ProtocolError::Malformed { what: RESPONSE_ARRAY_TOO_LONG, .. } | ProtocolError::UnsupportedVersion { .. },
        ) => {
            assert!(decoded.is_none(), "decode_response accepted a body the bounds pass refuses");
            return None;
        }
        Err(_) => None,
    };
    let checked = body::<M>(rest, version, walked);
    assert_eq!(checked.is_some(), decoded.is_some(), "decode_response and the decoder disagree");
    decoded
}

/// Record batches: the broker's produce validation, then the consumer's walk and decode.
pub fn batch_validator(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(headers) = validate_batches(data) {
        let mut position = 0;
        for header in headers {
            let batch = bytes.slice(position..position + header.total_bytes());
            position += header.total_bytes();
            let _ = header.last_sequence();
            decode(&batch);
        }
    }
    // As the consumer's fetcher does: offsets from the header decide which batches to skip.
    for (position, header) in BatchIter::new(data) {
        let _ = header.last_offset();
        decode(&bytes.slice(position..position + header.total_bytes()));
    }
    // `decode_records` is public: it must refuse, not panic on, bytes no one walked first.
    if data.len() >= BATCH_HEADER_BYTES {
        decode(&bytes);
    }
}

fn decode(batch: &Bytes) {
    let mut out = Vec::new();
    if decode_records(batch, MAX_DECOMPRESSED_BYTES, &mut out).is_ok() {
        let decoded_bytes: usize =
            out.iter().map(|r| r.key.as_ref().map_or(0, Bytes::len) + r.value.as_ref().map_or(0, Bytes::len)).sum();
        assert!(decoded_bytes <= MAX_DECOMPRESSED_BYTES.max(batch.len()), "records exceed the decompression limit");
    }
}

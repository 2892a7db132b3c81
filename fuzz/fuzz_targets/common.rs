//! Per-input logic of the fuzz targets. `client/tests/fuzz_corpus.rs` includes this file by path
//! and replays `fuzz/corpus/` through it on every `cargo test`, so a crash the fuzzer found
//! stays fixed on the stable toolchain too.
//!
//! Both functions do what a peer's bytes go through in production and assert only invariants
//! of our own code: an `Err` is the expected answer to garbage, a panic or an abort is the bug.

use bytes::Bytes;
use spate_client::protocol::bounds::{check_array_bounds, ARRAY_TOO_LONG};
use spate_client::protocol::messages::{
    ApiVersionsRequest, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    FetchRequest, IncrementalAlterConfigsRequest, InitProducerIdRequest, ListOffsetsRequest, MetadataRequest,
    ProduceRequest,
};
use spate_client::protocol::record::{decode_records, validate_batches, BatchIter, BATCH_HEADER_BYTES};
use spate_client::protocol::{decode_body, decode_request_header, ApiKey, Codec};
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
    let decoded = decode_body::<M>("request", &mut body, version);
    match (walked, decoded) {
        (Some(walked), Ok(request)) => {
            assert_eq!(walked, len - body.len(), "bounds pass and decoder disagree on the body length");
            Some(request)
        }
        (None, Ok(_)) => panic!("bounds pass refused a body the decoder accepts"),
        (_, Err(_)) => None,
    }
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

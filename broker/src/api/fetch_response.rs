//! A Fetch response (v4–12) written as several parts: the encoded fields, with each
//! partition's record batches between them, either as the segment-file slice `fetch::serve` left
//! them in (sent with `sendfile`, never copied through user space) or as the buffer a read
//! returned. The generic encoder would copy every field, batches included, into one frame. The
//! output is byte for byte what kafka-protocol's encoder writes (a test checks every version); a
//! response this writer does not cover (tagged fields, which `fetch::serve` never sets) returns
//! `None` and goes through the generic encoder.

use bytes::{BufMut, BytesMut};
use spate_client::protocol::messages::FetchResponse;

use super::Part;
use crate::log::ReadSlice;

/// Record sets shorter than this are copied in with the fields: an iovec per tiny batch would
/// cost more than the copy it saves.
const INLINE_RECORDS_BYTES: usize = 4096;
/// Fetch versions this writer covers: what the broker advertises.
const VERSIONS: std::ops::RangeInclusive<i16> = 4..=12;

/// The frame (size prefix, header, body) as parts to be written in order; `files` are the
/// record sets of [`super::fetch::Fetched`], in response order. `None`: use the generic encoder.
pub(crate) fn encode(
    version: i16,
    correlation_id: i32,
    response: &FetchResponse,
    files: &[(usize, usize, ReadSlice)],
) -> Option<Vec<Part>> {
    if !VERSIONS.contains(&version) || !plain(response, version) {
        return None;
    }
    let flexible = version >= 12;
    let partitions: usize = response.responses.iter().map(|t| t.partitions.len()).sum();
    let mut out = BytesMut::with_capacity(32 + response.responses.len() * 32 + partitions * 64);
    // Where each record set not copied in goes: the position in `out` it follows.
    let mut records_at: Vec<(usize, Part)> = Vec::new();
    let mut files = files.iter().peekable();
    out.put_i32(0); // the frame size, written last
    out.put_i32(correlation_id);
    if flexible {
        out.put_u8(0); // response header v1: no tagged fields
    }
    out.put_i32(response.throttle_time_ms);
    if version >= 7 {
        out.put_i16(response.error_code);
        out.put_i32(response.session_id);
    }
    array_len(&mut out, flexible, Some(response.responses.len()))?;
    for (ti, topic) in response.responses.iter().enumerate() {
        let name = topic.topic.as_bytes();
        if flexible {
            uvarint(&mut out, u32::try_from(name.len() + 1).ok()?);
        } else {
            out.put_i16(i16::try_from(name.len()).ok()?);
        }
        out.put_slice(name);
        array_len(&mut out, flexible, Some(topic.partitions.len()))?;
        for (pi, p) in topic.partitions.iter().enumerate() {
            out.put_i32(p.partition_index);
            out.put_i16(p.error_code);
            out.put_i64(p.high_watermark);
            out.put_i64(p.last_stable_offset);
            if version >= 5 {
                out.put_i64(p.log_start_offset);
            }
            array_len(&mut out, flexible, p.aborted_transactions.as_ref().map(Vec::len))?;
            for aborted in p.aborted_transactions.iter().flatten() {
                out.put_i64(aborted.producer_id.0);
                out.put_i64(aborted.first_offset);
                if flexible {
                    out.put_u8(0);
                }
            }
            if version >= 11 {
                out.put_i32(p.preferred_read_replica.0);
            }
            let file = files.next_if(|(t, i, _)| (*t, *i) == (ti, pi)).map(|(_, _, slice)| slice);
            match (&p.records, file) {
                (_, Some(slice)) => {
                    records_len(&mut out, flexible, slice.len())?;
                    records_at.push((out.len(), Part::File(slice.clone())));
                }
                (None, None) if flexible => out.put_u8(0),
                (None, None) => out.put_i32(-1),
                (Some(records), None) => {
                    records_len(&mut out, flexible, records.len())?;
                    if records.len() < INLINE_RECORDS_BYTES {
                        out.put_slice(records);
                    } else {
                        records_at.push((out.len(), Part::Bytes(records.clone())));
                    }
                }
            }
            if flexible {
                out.put_u8(0); // no tagged fields (`plain` checked)
            }
        }
        if flexible {
            out.put_u8(0);
        }
    }
    if flexible {
        out.put_u8(0);
    }
    if files.next().is_some() {
        return None; // a file for no partition of the response: not ours to guess
    }
    let size = out.len() - 4 + records_at.iter().map(|(_, r)| r.len()).sum::<usize>();
    out[..4].copy_from_slice(&i32::try_from(size).ok()?.to_be_bytes());
    let out = out.freeze();
    let mut parts = Vec::with_capacity(2 * records_at.len() + 1);
    let mut from = 0;
    for (at, records) in records_at {
        if at > from {
            parts.push(Part::Bytes(out.slice(from..at)));
        }
        parts.push(records);
        from = at;
    }
    if from < out.len() {
        parts.push(Part::Bytes(out.slice(from..)));
    }
    Some(parts)
}

/// Whether the response sets only what [`encode`] writes: no tagged fields (diverging epoch,
/// current leader, snapshot id, unknown ones) and nothing a version cannot carry.
fn plain(response: &FetchResponse, version: i16) -> bool {
    response.unknown_tagged_fields.is_empty()
        && response.node_endpoints.is_empty()
        && (version >= 7 || response.session_id == 0)
        && response.responses.iter().all(|t| {
            t.unknown_tagged_fields.is_empty()
                && t.partitions.iter().all(|p| {
                    p.unknown_tagged_fields.is_empty()
                        && p.diverging_epoch == Default::default()
                        && p.current_leader == Default::default()
                        && p.snapshot_id == Default::default()
                        && (version >= 11 || p.preferred_read_replica.0 == -1)
                        && p.aborted_transactions.iter().flatten().all(|a| a.unknown_tagged_fields.is_empty())
                })
        })
}

/// A record set's length: INT32 before v12, then UNSIGNED_VARINT of length + 1.
fn records_len(out: &mut BytesMut, flexible: bool, len: usize) -> Option<()> {
    if flexible {
        uvarint(out, u32::try_from(len + 1).ok()?);
    } else {
        out.put_i32(i32::try_from(len).ok()?);
    }
    Some(())
}

/// An array's length: INT32 (-1 for null) before v12, then UNSIGNED_VARINT of length + 1 (0 for
/// null).
fn array_len(out: &mut BytesMut, flexible: bool, len: Option<usize>) -> Option<()> {
    match (len, flexible) {
        (None, true) => out.put_u8(0),
        (None, false) => out.put_i32(-1),
        (Some(n), true) => uvarint(out, u32::try_from(n + 1).ok()?),
        (Some(n), false) => out.put_i32(i32::try_from(n).ok()?),
    }
    Some(())
}

fn uvarint(out: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use spate_client::protocol::messages::fetch_response::{
        AbortedTransaction, EpochEndOffset, FetchableTopicResponse, PartitionData,
    };
    use spate_client::protocol::messages::{BrokerId, ProducerId, TopicName};
    use spate_client::protocol::{encode_response, str_bytes, ApiKey};

    use super::*;
    use bytes::Bytes;

    fn generic(version: i16, correlation_id: i32, response: &FetchResponse) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_response(ApiKey::Fetch, version, correlation_id, response, &mut out).unwrap();
        out.to_vec()
    }

    fn joined(parts: &[Part]) -> Vec<u8> {
        let mut out = Vec::new();
        for part in parts {
            match part {
                Part::Bytes(b) => out.extend_from_slice(b),
                Part::File(slice) => out.extend_from_slice(&slice.read().unwrap()),
            }
        }
        out
    }

    /// Deterministic pseudo-random bytes (no rand dependency needed for a test fixture).
    fn bytes(len: usize, seed: u64) -> Bytes {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>()
            .into()
    }

    fn response(version: i16, topics: usize, seed: u64) -> FetchResponse {
        let mut responses = Vec::new();
        for t in 0..topics {
            let mut partitions = Vec::new();
            for p in 0..(t % 3 + 1) {
                let k = seed + (t * 10 + p) as u64;
                // Null, empty, inline and spliced record sets; 200 bytes makes a two-byte varint.
                let records = match k % 5 {
                    0 => None,
                    1 => Some(Bytes::new()),
                    2 => Some(bytes(200, k)),
                    3 => Some(bytes(INLINE_RECORDS_BYTES, k)),
                    _ => Some(bytes(70_000 + k as usize, k)),
                };
                let aborted = match k % 3 {
                    0 => None,
                    1 => Some(Vec::new()),
                    _ => Some(
                        (0..k % 4)
                            .map(|i| {
                                AbortedTransaction::default()
                                    .with_producer_id(ProducerId(i as i64 * 7))
                                    .with_first_offset(k as i64 + i as i64)
                            })
                            .collect(),
                    ),
                };
                partitions.push(
                    PartitionData::default()
                        .with_partition_index(p as i32)
                        .with_error_code((k % 2) as i16)
                        .with_high_watermark(k as i64 * 1000)
                        .with_last_stable_offset(k as i64 * 999)
                        .with_log_start_offset(if version >= 5 { k as i64 } else { -1 })
                        .with_aborted_transactions(aborted)
                        .with_preferred_read_replica(BrokerId(if version >= 11 { (k % 4) as i32 - 1 } else { -1 }))
                        .with_records(records),
                );
            }
            responses.push(
                FetchableTopicResponse::default()
                    .with_topic(TopicName(str_bytes(format!("topic-{t}-{}", "x".repeat(t * 40)))))
                    .with_partitions(partitions),
            );
        }
        FetchResponse::default()
            .with_throttle_time_ms(seed as i32)
            .with_error_code(if version >= 7 { (seed % 2) as i16 } else { 0 })
            .with_session_id(0)
            .with_responses(responses)
    }

    #[test]
    fn every_version_matches_the_generic_encoder() {
        for version in VERSIONS {
            for (topics, seed) in [(0, 1), (1, 2), (3, 3), (5, 11), (200, 4)] {
                let response = response(version, topics, seed);
                let parts = encode(version, 42, &response, &[]).expect("plain response");
                assert_eq!(joined(&parts), generic(version, 42, &response), "v{version}, {topics} topics");
                assert!(parts.iter().all(|p| !p.is_empty()));
            }
        }
    }

    #[test]
    fn large_record_sets_are_shared_not_copied() {
        let response = response(12, 5, 11);
        let parts = encode(12, 7, &response, &[]).unwrap();
        let shared: Vec<&Bytes> = response
            .responses
            .iter()
            .flat_map(|t| &t.partitions)
            .filter_map(|p| p.records.as_ref())
            .filter(|r| r.len() >= INLINE_RECORDS_BYTES)
            .collect();
        assert!(!shared.is_empty());
        for records in shared {
            assert!(parts
                .iter()
                .any(|p| matches!(p, Part::Bytes(b) if b.as_ptr() == records.as_ptr() && b.len() == records.len())));
        }
    }

    /// Record sets left in a file (as `fetch::serve` leaves a consumer's) go out as file parts
    /// and the frame is still byte for byte the generic one.
    #[test]
    fn record_sets_in_files_are_sent_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000000.log");
        for version in VERSIONS {
            let full = response(version, 5, 11);
            let mut emptied = full.clone();
            let mut file_bytes = b"junk before".to_vec();
            let mut placed = Vec::new();
            for (t, topic) in emptied.responses.iter_mut().enumerate() {
                for (p, data) in topic.partitions.iter_mut().enumerate() {
                    if let Some(records) = data.records.take_if(|r| r.len() >= 100) {
                        placed.push((t, p, file_bytes.len() as u64, records.len()));
                        file_bytes.extend_from_slice(&records);
                        data.records = Some(Bytes::new());
                    }
                }
            }
            std::fs::write(&path, &file_bytes).unwrap();
            let files: Vec<_> = placed
                .iter()
                .map(|&(t, p, position, len)| (t, p, ReadSlice::of_file(&path, position, len).unwrap()))
                .collect();
            assert!(files.len() >= 2);
            let parts = encode(version, 9, &emptied, &files).unwrap();
            assert_eq!(joined(&parts), generic(version, 9, &full), "v{version}");
            assert_eq!(parts.iter().filter(|p| matches!(p, Part::File(_))).count(), files.len());
            // A file for a partition the response does not have is refused, not guessed at.
            let (_, _, slice) = &files[0];
            assert!(encode(version, 9, &emptied, &[(99, 0, slice.clone())]).is_none());
        }
    }

    #[test]
    fn what_it_does_not_write_goes_to_the_generic_encoder() {
        let mut tagged = response(12, 1, 2);
        tagged.responses[0].partitions[0].diverging_epoch = EpochEndOffset::default().with_epoch(3).with_end_offset(9);
        assert!(encode(12, 1, &tagged, &[]).is_none());
        assert!(encode(13, 1, &response(12, 1, 2), &[]).is_none());
        assert!(encode(3, 1, &response(4, 1, 2), &[]).is_none());
    }
}

//! The sans-IO part of fetching: turning one partition's `records` bytes from a Fetch response
//! into consumer records.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::ConsumerRecord;
use crate::error::ProtocolError;
use crate::protocol::record::{decode_records, validate_stored_batch, BatchHeader, ConsumedRecord, BATCH_HEADER_BYTES};

/// What decoding one partition's fetched bytes produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decoded {
    /// Where the next fetch starts: after the last complete batch (control batches included).
    pub next_fetch_offset: i64,
    /// Records handed out (at or after the fetch offset, control batches skipped).
    pub records: usize,
}

/// Decodes the complete batches in `records` (a fetch may end with a partial batch, which is
/// fetched again next time), skipping control batches and records before `fetch_offset` (the
/// broker returns whole batches, so the first may start earlier).
pub(crate) fn decode_fetched(
    topic: &Arc<str>,
    partition: i32,
    records: &Bytes,
    fetch_offset: i64,
    check_crcs: bool,
    max_decompressed_bytes: usize,
    out: &mut VecDeque<ConsumerRecord>,
) -> Result<Decoded, ProtocolError> {
    let mut position = 0;
    let mut next_fetch_offset = fetch_offset;
    let mut count = 0;
    let mut scratch: Vec<ConsumedRecord> = Vec::new();
    while records.len() - position >= BATCH_HEADER_BYTES {
        let header = BatchHeader::parse(&records[position..])?;
        if header.batch_length < (BATCH_HEADER_BYTES - crate::protocol::record::BATCH_LOG_OVERHEAD) as i32 {
            return Err(ProtocolError::CorruptBatch {
                position,
                reason: format!("batch length {} is shorter than a header", header.batch_length),
            });
        }
        let total = header.total_bytes();
        if total > records.len() - position {
            break;
        }
        let batch = records.slice(position..position + total);
        if check_crcs {
            // Fetched batches may come from a compacted log: fewer records than offsets.
            validate_stored_batch(&batch, position)?;
        }
        position += total;
        if header.last_offset() < fetch_offset {
            continue;
        }
        next_fetch_offset = next_fetch_offset.max(header.last_offset().saturating_add(1));
        if header.is_control() {
            continue;
        }
        scratch.clear();
        decode_records(&batch, max_decompressed_bytes, &mut scratch)?;
        for r in scratch.drain(..) {
            if r.offset < fetch_offset {
                continue;
            }
            count += 1;
            out.push_back(ConsumerRecord {
                topic: topic.clone(),
                partition,
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                key: r.key,
                value: r.value,
                headers: r.headers,
            });
        }
    }
    Ok(Decoded { next_fetch_offset, records: count })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::compression::Compression;
    use crate::protocol::record::{set_base_offset, BatchBuilder, Record};
    use bytes::BytesMut;

    fn batch(base_offset: i64, values: &[&str], compression: Compression) -> BytesMut {
        let mut b = BatchBuilder::new(compression);
        for (i, v) in values.iter().enumerate() {
            b.push(&Record {
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(v.to_string())),
                headers: Vec::new(),
                timestamp_ms: 1000 + i as i64,
            });
        }
        let mut bytes = BytesMut::from(&b.finish(-1, -1, -1, false).unwrap()[..]);
        set_base_offset(&mut bytes, base_offset);
        bytes
    }

    #[test]
    fn skips_records_before_the_fetch_offset_and_stops_at_a_partial_batch() {
        let mut all = batch(10, &["a", "b", "c"], Compression::None);
        all.extend_from_slice(&batch(13, &["d", "e"], Compression::Lz4));
        let partial = batch(15, &["f"], Compression::None);
        all.extend_from_slice(&partial[..partial.len() - 3]);
        let all = all.freeze();
        let topic: Arc<str> = Arc::from("t");
        let mut out = VecDeque::new();
        let decoded = decode_fetched(&topic, 0, &all, 11, true, 1 << 20, &mut out).unwrap();
        assert_eq!(decoded, Decoded { next_fetch_offset: 15, records: 4 });
        let offsets: Vec<i64> = out.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![11, 12, 13, 14]);
        assert_eq!(out[0].value.as_deref(), Some(&b"b"[..]));
        assert_eq!(out[2].key.as_deref(), Some(&b"k0"[..]));
        assert_eq!(out[3].timestamp_ms, 1001);
    }

    #[test]
    fn detects_corruption_when_checking_crcs() {
        let mut b = batch(0, &["a"], Compression::None);
        let last = b.len() - 1;
        b[last] ^= 0xff;
        let b = b.freeze();
        let topic: Arc<str> = Arc::from("t");
        let mut out = VecDeque::new();
        assert!(matches!(
            decode_fetched(&topic, 0, &b, 0, true, 1 << 20, &mut out),
            Err(ProtocolError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn control_batches_advance_the_offset_without_records() {
        let mut b = batch(5, &["marker"], Compression::None);
        // Set the control bit and fix the CRC.
        use crate::protocol::record::field;
        let attrs = i16::from_be_bytes([b[field::ATTRIBUTES], b[field::ATTRIBUTES + 1]]) | 0x20;
        b[field::ATTRIBUTES..field::ATTRIBUTES + 2].copy_from_slice(&attrs.to_be_bytes());
        let crc = crc32c::crc32c(&b[field::ATTRIBUTES..]);
        b[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        let b = b.freeze();
        let topic: Arc<str> = Arc::from("t");
        let mut out = VecDeque::new();
        let decoded = decode_fetched(&topic, 0, &b, 5, true, 1 << 20, &mut out).unwrap();
        assert_eq!(decoded, Decoded { next_fetch_offset: 6, records: 0 });
        assert!(out.is_empty());
    }
}

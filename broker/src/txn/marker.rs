//! Transaction markers: the control batches a transaction coordinator writes to every partition
//! of a transaction when it ends (KIP-98). Kafka's layout: a v2 batch with the transactional and
//! control attribute bits, the producer id and epoch of the transaction, no sequence, and one
//! record whose key is `(version: i16 = 0, type: i16)` (0 = ABORT, 1 = COMMIT) and whose value is
//! `(version: i16 = 0, coordinator_epoch: i32)`.

use bytes::Bytes;
use spate_client::protocol::compression::Compression;
use spate_client::protocol::record::{decode_records, BatchBuilder, BatchHeader, Record, NO_SEQUENCE};

/// Control record types (Kafka's `ControlRecordType`).
pub const CONTROL_TYPE_ABORT: i16 = 0;
pub const CONTROL_TYPE_COMMIT: i16 = 1;

const ATTRIBUTES_AT: usize = 21;
const CRC_AT: usize = 17;
const ATTR_CONTROL: i16 = 0x20;

/// A COMMIT or ABORT marker of `producer_id` in `producer_epoch`, stamped `timestamp_ms`.
pub fn control_batch(
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    timestamp_ms: i64,
) -> Bytes {
    let kind = if commit { CONTROL_TYPE_COMMIT } else { CONTROL_TYPE_ABORT };
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&kind.to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let mut builder = BatchBuilder::new(Compression::None);
    builder.push(&Record {
        key: Some(Bytes::from(key)),
        value: Some(Bytes::from(value)),
        headers: Vec::new(),
        timestamp_ms,
    });
    // One uncompressed record always encodes.
    let built = builder.finish(producer_id, producer_epoch, NO_SEQUENCE, true).unwrap_or_default();
    let mut batch = built.to_vec();
    let attributes = i16::from_be_bytes([batch[ATTRIBUTES_AT], batch[ATTRIBUTES_AT + 1]]) | ATTR_CONTROL;
    batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(batch)
}

/// What a control batch says: `Some(true)` for COMMIT, `Some(false)` for ABORT, `None` when it
/// is not a transaction marker (an unknown control type, or undecodable). `batch` holds exactly
/// one batch, whose header is `header`.
pub fn marker_kind(header: &BatchHeader, batch: &Bytes) -> Option<bool> {
    marker_of(header, batch).map(|(commit, _)| commit)
}

/// [`marker_kind`] with the coordinator epoch the marker's value carries (-1 when its value is
/// too short to hold one).
pub fn marker_of(header: &BatchHeader, batch: &Bytes) -> Option<(bool, i32)> {
    if !header.is_control() {
        return None;
    }
    let mut records = Vec::new();
    // A marker holds one tiny uncompressed record; 64 KiB bounds anything hostile.
    decode_records(batch, 64 << 10, &mut records).ok()?;
    let record = records.first()?;
    let key = record.key.as_ref()?;
    if key.len() < 4 {
        return None;
    }
    let coordinator_epoch = match record.value.as_deref() {
        Some([_, _, a, b, c, d, ..]) => i32::from_be_bytes([*a, *b, *c, *d]),
        _ => -1,
    };
    match i16::from_be_bytes([key[2], key[3]]) {
        CONTROL_TYPE_ABORT => Some((false, coordinator_epoch)),
        CONTROL_TYPE_COMMIT => Some((true, coordinator_epoch)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use spate_client::protocol::record::validate_batches;

    use super::*;

    #[test]
    fn markers_are_valid_control_batches_that_say_what_they_are() {
        for commit in [true, false] {
            let batch = control_batch(42, 3, commit, 7, 1_000);
            let headers = validate_batches(&batch).unwrap();
            assert_eq!(headers.len(), 1);
            let h = headers[0];
            assert!(h.is_control() && h.is_transactional());
            assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence, h.records_count), (42, 3, -1, 1));
            assert_eq!(marker_kind(&h, &batch), Some(commit));
        }
    }

    #[test]
    fn a_data_batch_is_no_marker() {
        let mut b = BatchBuilder::new(Compression::None);
        b.push(&Record { key: None, value: Some(Bytes::from_static(b"x")), headers: Vec::new(), timestamp_ms: 0 });
        let batch = b.finish(1, 0, 0, true).unwrap();
        let h = BatchHeader::parse(&batch).unwrap();
        assert_eq!(marker_kind(&h, &batch), None);
    }
}

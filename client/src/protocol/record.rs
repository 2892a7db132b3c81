//! Record batch v2 (magic 2): a view over the header, the validator the broker runs on produce,
//! a builder for producers and a decoder for consumers.
//!
//! The broker never decodes records. It validates the 61-byte header and the CRC, rewrites
//! `base_offset` and `partition_leader_epoch` (neither is covered by the CRC) and stores the
//! bytes as they came.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::compression::{self, Compression};
use crate::error::ProtocolError;

/// Byte offsets of the fields of a v2 batch header.
pub mod field {
    pub const BASE_OFFSET: usize = 0;
    pub const BATCH_LENGTH: usize = 8;
    pub const PARTITION_LEADER_EPOCH: usize = 12;
    pub const MAGIC: usize = 16;
    pub const CRC: usize = 17;
    pub const ATTRIBUTES: usize = 21;
    pub const LAST_OFFSET_DELTA: usize = 23;
    pub const BASE_TIMESTAMP: usize = 27;
    pub const MAX_TIMESTAMP: usize = 35;
    pub const PRODUCER_ID: usize = 43;
    pub const PRODUCER_EPOCH: usize = 51;
    pub const BASE_SEQUENCE: usize = 53;
    pub const RECORDS_COUNT: usize = 57;
}

/// Size of the v2 batch header; records follow it.
pub const BATCH_HEADER_BYTES: usize = 61;
/// `base_offset` and `batch_length` precede the bytes that `batch_length` counts.
pub const BATCH_LOG_OVERHEAD: usize = 12;
/// The smallest possible encoded record (length, attributes, three zero varints, null key and
/// value, zero headers), used to bound a peer's record count by the bytes it sent.
const MIN_RECORD_BYTES: usize = 7;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TIMESTAMP_TYPE: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;
/// KIP-534: `base_timestamp` holds the delete horizon of the batch's tombstones (set by log
/// compaction the first time it keeps them).
pub const ATTR_DELETE_HORIZON: i16 = 0x40;

/// No producer id / epoch / sequence (a non-idempotent batch).
pub const NO_PRODUCER_ID: i64 = -1;
pub const NO_PRODUCER_EPOCH: i16 = -1;
pub const NO_SEQUENCE: i32 = -1;

/// The parsed header of one v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Reads the header fields without checking them. `bytes` must hold at least
    /// [`BATCH_HEADER_BYTES`].
    pub fn parse(bytes: &[u8]) -> Result<Self, ProtocolError> {
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(ProtocolError::CorruptBatch {
                position: 0,
                reason: format!("{} bytes is shorter than a batch header", bytes.len()),
            });
        }
        let mut b = bytes;
        Ok(BatchHeader {
            base_offset: b.get_i64(),
            batch_length: b.get_i32(),
            partition_leader_epoch: b.get_i32(),
            magic: b.get_i8(),
            crc: b.get_u32(),
            attributes: b.get_i16(),
            last_offset_delta: b.get_i32(),
            base_timestamp: b.get_i64(),
            max_timestamp: b.get_i64(),
            producer_id: b.get_i64(),
            producer_epoch: b.get_i16(),
            base_sequence: b.get_i32(),
            records_count: b.get_i32(),
        })
    }

    /// Bytes the whole batch takes, header included.
    pub fn total_bytes(&self) -> usize {
        self.batch_length as usize + BATCH_LOG_OVERHEAD
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset.saturating_add(self.last_offset_delta as i64)
    }

    pub fn compression(&self) -> Result<Compression, ProtocolError> {
        Compression::from_attributes(self.attributes & ATTR_COMPRESSION_MASK)
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    /// Whether the broker stamped `max_timestamp` (topic config `message.timestamp.type`).
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_TIMESTAMP_TYPE != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }

    /// KIP-534: when log compaction may drop the batch's tombstones (ms since the epoch), if a
    /// cleaning pass has set it.
    pub fn delete_horizon_ms(&self) -> Option<i64> {
        (self.attributes & ATTR_DELETE_HORIZON != 0).then_some(self.base_timestamp)
    }

    /// The sequence number of the last record, wrapping as Kafka's does.
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return NO_SEQUENCE;
        }
        let last = self.base_sequence as i64 + self.last_offset_delta as i64;
        (last % (i32::MAX as i64 + 1)) as i32
    }
}

/// Fully validates one batch at the start of `bytes` (`position` is only for error messages):
/// header length, magic, CRC32C over attributes..end, codec, and a record count consistent with
/// both `last_offset_delta` and the number of bytes present.
pub fn validate_batch(bytes: &[u8], position: usize) -> Result<BatchHeader, ProtocolError> {
    validate_with(bytes, position, |header| {
        if header.records_count <= 0 {
            return Err(format!("record count {} must be positive", header.records_count));
        }
        if header.last_offset_delta != header.records_count - 1 {
            return Err(format!(
                "last offset delta {} does not match record count {}",
                header.last_offset_delta, header.records_count
            ));
        }
        Ok(())
    })
}

/// Validates a batch as the broker stored it: like [`validate_batch`], except that log
/// compaction may have removed records, so the record count may be anything from 0 to
/// `last_offset_delta + 1` (offsets of the kept records never change).
pub fn validate_stored_batch(bytes: &[u8], position: usize) -> Result<BatchHeader, ProtocolError> {
    validate_with(bytes, position, check_stored_counts)
}

/// The record count and offset delta of a stored (possibly compacted) batch: `0 <=
/// records_count <= last_offset_delta + 1`.
pub fn check_stored_counts(header: &BatchHeader) -> Result<(), String> {
    if header.last_offset_delta < 0 || header.records_count < 0 || header.records_count > header.last_offset_delta + 1 {
        return Err(format!(
            "record count {} does not fit last offset delta {}",
            header.records_count, header.last_offset_delta
        ));
    }
    Ok(())
}

/// The checks both validators share, with `counts` judging the record count.
fn validate_with(
    bytes: &[u8],
    position: usize,
    counts: impl Fn(&BatchHeader) -> Result<(), String>,
) -> Result<BatchHeader, ProtocolError> {
    let corrupt = |reason: String| ProtocolError::CorruptBatch { position, reason };
    let header =
        BatchHeader::parse(bytes).map_err(|_| corrupt(format!("{} bytes left, header needs 61", bytes.len())))?;
    if header.magic != 2 {
        return Err(corrupt(format!("magic {} is not supported (only 2)", header.magic)));
    }
    if (header.batch_length as i64) < (BATCH_HEADER_BYTES - BATCH_LOG_OVERHEAD) as i64 {
        return Err(corrupt(format!("batch length {} is shorter than a header", header.batch_length)));
    }
    let total = header.total_bytes();
    if total > bytes.len() {
        return Err(corrupt(format!(
            "batch length {} runs past the {} bytes present",
            header.batch_length,
            bytes.len()
        )));
    }
    let actual = crc32c::crc32c(&bytes[field::ATTRIBUTES..total]);
    if actual != header.crc {
        return Err(ProtocolError::CrcMismatch { position, expected: header.crc, actual });
    }
    header.compression().map_err(|e| corrupt(e.to_string()))?;
    counts(&header).map_err(corrupt)?;
    let body = total - BATCH_HEADER_BYTES;
    if header.compression().ok() == Some(Compression::None) && header.records_count as usize > body / MIN_RECORD_BYTES {
        return Err(corrupt(format!("{} records cannot fit in {} bytes", header.records_count, body)));
    }
    Ok(header)
}

/// Re-encodes some of a stored batch's records (log compaction): the new batch keeps `header`'s
/// base offset, `last_offset_delta`, partition leader epoch, `max_timestamp` and producer id,
/// epoch and base sequence, so offsets and idempotent-producer state stay valid; it takes
/// `attributes` (the codec among them) and `base_timestamp` as given (with
/// [`ATTR_DELETE_HORIZON`] the base timestamp is the delete horizon). Each record keeps its
/// offset and timestamp, written as deltas from the header's base offset and `base_timestamp`.
/// `records` must be in offset order within `[base_offset, base_offset + last_offset_delta]`.
pub fn rebuild_batch(
    header: &BatchHeader,
    records: &[ConsumedRecord],
    attributes: i16,
    base_timestamp: i64,
) -> Result<Bytes, ProtocolError> {
    let codec = Compression::from_attributes(attributes & ATTR_COMPRESSION_MASK)?;
    let mut body = Vec::new();
    for r in records {
        let offset_delta = r.offset - header.base_offset;
        if !(0..=header.last_offset_delta as i64).contains(&offset_delta) {
            return Err(ProtocolError::malformed(
                "record",
                format!("offset {} is outside the batch at {}", r.offset, header.base_offset),
            ));
        }
        let record = Record {
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
            timestamp_ms: r.timestamp_ms,
        };
        put_record(&mut body, &record, offset_delta as i32, r.timestamp_ms.wrapping_sub(base_timestamp));
    }
    let mut out = BytesMut::with_capacity(BATCH_HEADER_BYTES + body.len());
    out.put_i64(header.base_offset);
    out.put_i32(0); // batch_length, patched below
    out.put_i32(header.partition_leader_epoch);
    out.put_i8(2);
    out.put_u32(0); // crc, patched below
    out.put_i16(attributes);
    out.put_i32(header.last_offset_delta);
    out.put_i64(base_timestamp);
    out.put_i64(header.max_timestamp);
    out.put_i64(header.producer_id);
    out.put_i16(header.producer_epoch);
    out.put_i32(header.base_sequence);
    out.put_i32(records.len() as i32);
    if codec == Compression::None {
        out.put_slice(&body);
    } else {
        let mut compressed = Vec::with_capacity(body.len() / 2);
        compression::compress(codec, &body, &mut compressed)?;
        out.put_slice(&compressed);
    }
    let batch_length = (out.len() - BATCH_LOG_OVERHEAD) as i32;
    out[field::BATCH_LENGTH..field::BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
    let crc = crc32c::crc32c(&out[field::ATTRIBUTES..]);
    out[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(out.freeze())
}

/// Validates every batch in a produce request's `records` field; the batches must cover the
/// field exactly. Returns the headers in order.
pub fn validate_batches(records: &[u8]) -> Result<Vec<BatchHeader>, ProtocolError> {
    let mut headers = Vec::new();
    let mut position = 0;
    while position < records.len() {
        let header = validate_batch(&records[position..], position)?;
        position += header.total_bytes();
        headers.push(header);
    }
    if headers.is_empty() {
        return Err(ProtocolError::CorruptBatch { position: 0, reason: "no record batch present".into() });
    }
    Ok(headers)
}

/// Overwrites `base_offset` in place; the CRC does not cover it.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[field::BASE_OFFSET..field::BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Overwrites `partition_leader_epoch` in place; the CRC does not cover it.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[field::PARTITION_LEADER_EPOCH..field::PARTITION_LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Walks consecutive batches by their length fields, without CRC checks: for data the broker
/// wrote itself. Stops at the first batch that is incomplete or whose header is implausible.
pub struct BatchIter<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> BatchIter<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        BatchIter { bytes, position: 0 }
    }

    /// Bytes consumed by the batches yielded so far.
    pub fn position(&self) -> usize {
        self.position
    }
}

impl<'a> Iterator for BatchIter<'a> {
    /// Position of the batch within the input, and its header.
    type Item = (usize, BatchHeader);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.bytes[self.position..];
        let header = BatchHeader::parse(rest).ok()?;
        if header.batch_length < (BATCH_HEADER_BYTES - BATCH_LOG_OVERHEAD) as i32 || header.total_bytes() > rest.len() {
            return None;
        }
        let at = self.position;
        self.position += header.total_bytes();
        Some((at, header))
    }
}

// ---------------------------------------------------------------------------------------------
// Records inside a batch.

/// One header of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: String,
    pub value: Option<Bytes>,
}

/// A record as a producer hands it over.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// A record as a consumer sees it, with its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
}

pub(crate) fn put_varint(buf: &mut impl BufMut, value: i32) {
    put_varlong(buf, value as i64)
}

pub(crate) fn put_varlong(buf: &mut impl BufMut, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn varlong_len(value: i64) -> usize {
    let v = ((value << 1) ^ (value >> 63)) as u64;
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn get_varlong(buf: &mut &[u8]) -> Result<i64, ProtocolError> {
    // Most varints in a record (lengths and deltas under 64) are one byte.
    if let Some(&byte) = buf.first() {
        if byte & 0x80 == 0 {
            *buf = &buf[1..];
            return Ok(((byte >> 1) as i64) ^ -((byte & 1) as i64));
        }
    }
    let mut v: u64 = 0;
    for shift in (0..70).step_by(7) {
        if !buf.has_remaining() {
            return Err(ProtocolError::malformed("record", "truncated varint"));
        }
        let byte = buf.get_u8();
        if shift == 63 && byte > 1 {
            return Err(ProtocolError::malformed("record", "varint overflows 64 bits"));
        }
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
        }
    }
    Err(ProtocolError::malformed("record", "varint is too long"))
}

fn get_varint(buf: &mut &[u8]) -> Result<i32, ProtocolError> {
    let v = get_varlong(buf)?;
    i32::try_from(v).map_err(|_| ProtocolError::malformed("record", format!("varint {v} overflows 32 bits")))
}

/// Encoded size of one record, its length prefix included.
fn record_body_len(record: &Record, offset_delta: i32, timestamp_delta: i64) -> usize {
    let opt_len = |b: &Option<Bytes>| match b {
        Some(b) => varlong_len(b.len() as i64) + b.len(),
        None => 1,
    };
    let mut len = 1 + varlong_len(timestamp_delta) + varlong_len(offset_delta as i64);
    len += opt_len(&record.key) + opt_len(&record.value);
    len += varlong_len(record.headers.len() as i64);
    for h in &record.headers {
        len += varlong_len(h.key.len() as i64) + h.key.len() + opt_len(&h.value);
    }
    len
}

/// Appends one encoded record (length prefix included) to `buf`.
fn put_record(buf: &mut Vec<u8>, record: &Record, offset_delta: i32, timestamp_delta: i64) {
    let body = record_body_len(record, offset_delta, timestamp_delta);
    put_varint(buf, body as i32);
    buf.put_i8(0);
    put_varlong(buf, timestamp_delta);
    put_varint(buf, offset_delta);
    let put_opt = |buf: &mut Vec<u8>, b: &Option<Bytes>| match b {
        Some(b) => {
            put_varint(buf, b.len() as i32);
            buf.put_slice(b);
        }
        None => put_varint(buf, -1),
    };
    put_opt(buf, &record.key);
    put_opt(buf, &record.value);
    put_varint(buf, record.headers.len() as i32);
    for h in &record.headers {
        put_varint(buf, h.key.len() as i32);
        buf.put_slice(h.key.as_bytes());
        put_opt(buf, &h.value);
    }
}

/// Upper bound of the bytes one record adds to a batch, for the producer's size accounting.
pub fn record_size_estimate(record: &Record) -> usize {
    let body = record_body_len(record, i32::MAX, i64::MAX);
    body + varlong_len(body as i64)
}

/// Builds one v2 batch from records. Producer state (id, epoch, sequence) is supplied at
/// `finish`, because an idempotent producer assigns sequences only when a batch is drained.
pub struct BatchBuilder {
    compression: Compression,
    records: Vec<u8>,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
}

impl BatchBuilder {
    pub fn new(compression: Compression) -> Self {
        BatchBuilder { compression, records: Vec::new(), count: 0, base_timestamp: 0, max_timestamp: i64::MIN }
    }

    pub fn with_capacity(compression: Compression, bytes: usize) -> Self {
        let mut builder = Self::new(compression);
        builder.records.reserve(bytes);
        builder
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Uncompressed size of the batch so far.
    pub fn size_bytes(&self) -> usize {
        BATCH_HEADER_BYTES + self.records.len()
    }

    pub fn push(&mut self, record: &Record) {
        if self.count == 0 {
            self.base_timestamp = record.timestamp_ms;
        }
        self.max_timestamp = self.max_timestamp.max(record.timestamp_ms);
        let timestamp_delta = record.timestamp_ms - self.base_timestamp;
        put_record(&mut self.records, record, self.count, timestamp_delta);
        self.count += 1;
    }

    /// Encodes the batch with `base_offset` 0 (the broker assigns offsets).
    pub fn finish(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
        transactional: bool,
    ) -> Result<Bytes, ProtocolError> {
        let mut out = BytesMut::with_capacity(BATCH_HEADER_BYTES + self.records.len());
        out.put_i64(0);
        out.put_i32(0); // batch_length, patched below
        out.put_i32(-1); // partition_leader_epoch: the broker sets it
        out.put_i8(2);
        out.put_u32(0); // crc, patched below
        let mut attributes = self.compression.id();
        if transactional {
            attributes |= ATTR_TRANSACTIONAL;
        }
        out.put_i16(attributes);
        out.put_i32(self.count - 1);
        out.put_i64(self.base_timestamp);
        out.put_i64(if self.count == 0 { self.base_timestamp } else { self.max_timestamp });
        out.put_i64(producer_id);
        out.put_i16(producer_epoch);
        out.put_i32(base_sequence);
        out.put_i32(self.count);
        if self.compression == Compression::None {
            out.put_slice(&self.records);
        } else {
            let mut compressed = Vec::with_capacity(self.records.len() / 2);
            compression::compress(self.compression, &self.records, &mut compressed)?;
            out.put_slice(&compressed);
        }
        let batch_length = (out.len() - BATCH_LOG_OVERHEAD) as i32;
        out[field::BATCH_LENGTH..field::BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
        let crc = crc32c::crc32c(&out[field::ATTRIBUTES..]);
        out[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(out.freeze())
    }
}

/// The records of one batch, ready to be read without copying: the batch's header and its
/// record bytes (a slice of the batch, or the inflated body of a compressed one). Read them with
/// [`BatchRecords::iter`]; [`decode_records`] turns them into owned [`ConsumedRecord`]s.
#[derive(Debug, Clone)]
pub struct BatchRecords {
    header: BatchHeader,
    body: Bytes,
}

impl BatchRecords {
    /// Checks the header of the batch `batch` holds (exactly one batch), and inflates a
    /// compressed body up to `max_decompressed_bytes`. The records themselves are checked as
    /// they are read.
    pub fn new(batch: &Bytes, max_decompressed_bytes: usize) -> Result<BatchRecords, ProtocolError> {
        let header = BatchHeader::parse(batch)?;
        if header.magic != 2 {
            return Err(ProtocolError::CorruptBatch {
                position: 0,
                reason: format!("magic {} is not supported", header.magic),
            });
        }
        if header.batch_length < (BATCH_HEADER_BYTES - BATCH_LOG_OVERHEAD) as i32 {
            return Err(ProtocolError::CorruptBatch {
                position: 0,
                reason: format!("batch length {} is shorter than a header", header.batch_length),
            });
        }
        let total = header.total_bytes().min(batch.len());
        let body: Bytes = match header.compression()? {
            Compression::None => batch.slice(BATCH_HEADER_BYTES..total),
            codec => {
                Bytes::from(compression::decompress(codec, &batch[BATCH_HEADER_BYTES..total], max_decompressed_bytes)?)
            }
        };
        if header.records_count < 0 || header.records_count as usize > body.len() / MIN_RECORD_BYTES + 1 {
            return Err(ProtocolError::CorruptBatch {
                position: 0,
                reason: format!("{} records cannot fit in {} bytes", header.records_count, body.len()),
            });
        }
        Ok(BatchRecords { header, body })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The record bytes (inflated when the batch is compressed); the slices a
    /// [`RecordView`] holds are inside them (see [`Bytes::slice_ref`]).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// `record` (one of this batch's) as an owned record: its fields share the batch's bytes.
    pub fn owned_record(&self, record: &RecordView<'_>) -> ConsumedRecord {
        let body = &self.body;
        ConsumedRecord {
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            key: record.key.map(|k| body.slice_ref(k)),
            value: record.value.map(|v| body.slice_ref(v)),
            headers: record
                .headers
                .iter()
                .map(|(key, value)| RecordHeader { key: key.to_owned(), value: value.map(|v| body.slice_ref(v)) })
                .collect(),
        }
    }

    /// The records, in order. A malformed record ends the iteration with its error.
    pub fn iter(&self) -> RecordIter<'_> {
        RecordIter {
            base_offset: self.header.base_offset,
            // With LogAppendTime every record has the time the broker stamped (Kafka's rule).
            log_append_time: self.header.is_log_append_time().then_some(self.header.max_timestamp),
            base_timestamp: self.header.base_timestamp,
            rest: &self.body,
            remaining: self.header.records_count,
        }
    }
}

/// One record of a batch, borrowed from the batch's [`BatchRecords`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset: i64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: HeadersView<'a>,
}

/// A record's headers as they are encoded, checked when the record was read (every header
/// whole, every key UTF-8), so iterating them cannot fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeadersView<'a> {
    count: usize,
    bytes: &'a [u8],
}

impl<'a> HeadersView<'a> {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// `(key, value)` per header, in order; duplicates kept.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        let mut rest = self.bytes;
        (0..self.count).map_while(move |_| {
            // Checked by `read_headers`: a failure here cannot happen, and ends the iteration.
            let key = get_field(&mut rest).ok()?.unwrap_or_default();
            let value = get_field(&mut rest).ok()?;
            Some((std::str::from_utf8(key).ok()?, value))
        })
    }
}

/// Iterator over the records of a [`BatchRecords`].
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    base_offset: i64,
    base_timestamp: i64,
    log_append_time: Option<i64>,
    rest: &'a [u8],
    remaining: i32,
}

impl<'a> RecordIter<'a> {
    fn read(&mut self) -> Result<RecordView<'a>, ProtocolError> {
        let len = get_varint(&mut self.rest)?;
        let len = usize::try_from(len).map_err(|_| ProtocolError::malformed("record", "negative length"))?;
        if len > self.rest.len() {
            return Err(ProtocolError::malformed("record", format!("length {len} runs past the batch")));
        }
        let (mut rec, rest) = self.rest.split_at(len);
        self.rest = rest;
        if rec.is_empty() {
            return Err(ProtocolError::malformed("record", "empty record"));
        }
        rec.advance(1); // attributes: unused in v2
        let timestamp_delta = get_varlong(&mut rec)?;
        let offset_delta = get_varint(&mut rec)?;
        let key = get_field(&mut rec)?;
        let value = get_field(&mut rec)?;
        let headers = read_headers(&mut rec)?;
        Ok(RecordView {
            offset: self.base_offset.checked_add(offset_delta as i64).ok_or_else(|| {
                ProtocolError::malformed("record", format!("offset delta {offset_delta} overflows the base offset"))
            })?,
            timestamp_ms: self.log_append_time.unwrap_or_else(|| self.base_timestamp.saturating_add(timestamp_delta)),
            key,
            value,
            headers,
        })
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining <= 0 {
            return None;
        }
        self.remaining -= 1;
        let record = self.read();
        if record.is_err() {
            self.remaining = 0;
        }
        Some(record)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining.max(0) as usize))
    }
}

/// A length-prefixed field (key, value, header key or value): `None` for length -1.
fn get_field<'a>(rec: &mut &'a [u8]) -> Result<Option<&'a [u8]>, ProtocolError> {
    let n = get_varint(rec)?;
    if n < 0 {
        return Ok(None);
    }
    let n = n as usize;
    if n > rec.len() {
        return Err(ProtocolError::malformed("record", format!("field of {n} bytes runs past the record")));
    }
    let (field, rest) = rec.split_at(n);
    *rec = rest;
    Ok(Some(field))
}

/// Checks a record's headers (count, every field whole, keys UTF-8) and returns them as a view.
fn read_headers<'a>(rec: &mut &'a [u8]) -> Result<HeadersView<'a>, ProtocolError> {
    let count = get_varint(rec)?;
    if count < 0 || count as usize > rec.len() {
        return Err(ProtocolError::malformed("record", format!("{count} headers cannot fit")));
    }
    let start = *rec;
    for _ in 0..count {
        let key = get_field(rec)?.unwrap_or_default();
        if std::str::from_utf8(key).is_err() {
            return Err(ProtocolError::malformed("record header", "key is not utf-8"));
        }
        get_field(rec)?;
    }
    Ok(HeadersView { count: count as usize, bytes: &start[..start.len() - rec.len()] })
}

/// Decodes the records of one batch (`batch` holds exactly the batch). Uncompressed keys and
/// values are slices of `batch`; compressed batches are inflated up to `max_decompressed_bytes`.
pub fn decode_records(
    batch: &Bytes,
    max_decompressed_bytes: usize,
    out: &mut Vec<ConsumedRecord>,
) -> Result<BatchHeader, ProtocolError> {
    let records = BatchRecords::new(batch, max_decompressed_bytes)?;
    out.reserve(records.header.records_count as usize);
    for r in records.iter() {
        out.push(records.owned_record(&r?));
    }
    Ok(records.header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record_strategy() -> impl Strategy<Value = Record> {
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..50)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            proptest::collection::vec(
                ("[a-z]{0,8}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20))),
                0..3,
            ),
            0i64..2_000_000_000_000,
        )
            .prop_map(|(k, v, h, ts)| Record {
                key: k.map(Bytes::from),
                value: v.map(Bytes::from),
                headers: h
                    .into_iter()
                    .map(|(key, value)| RecordHeader { key, value: value.map(Bytes::from) })
                    .collect(),
                timestamp_ms: ts,
            })
    }

    proptest! {
        #[test]
        fn batches_round_trip_through_validation_and_decoding(
            records in proptest::collection::vec(record_strategy(), 1..40),
            codec in prop_oneof![Just(Compression::None), Just(Compression::Gzip), Just(Compression::Snappy), Just(Compression::Lz4), Just(Compression::Zstd)],
            base_offset in 0i64..1 << 40,
        ) {
            let mut builder = BatchBuilder::new(codec);
            for r in &records { builder.push(r); }
            let batch = builder.finish(7, 1, 100, false).unwrap();
            let headers = validate_batches(&batch).unwrap();
            prop_assert_eq!(headers.len(), 1);
            prop_assert_eq!(headers[0].total_bytes(), batch.len());
            prop_assert_eq!(headers[0].records_count as usize, records.len());
            let mut stored = batch.to_vec();
            set_base_offset(&mut stored, base_offset);
            set_partition_leader_epoch(&mut stored, 3);
            // Offsets and epochs are outside the CRC, so the rewritten batch still validates.
            validate_batch(&stored, 0).unwrap();
            let mut out = Vec::new();
            decode_records(&Bytes::from(stored), 1 << 24, &mut out).unwrap();
            prop_assert_eq!(out.len(), records.len());
            for (i, (got, want)) in out.iter().zip(&records).enumerate() {
                prop_assert_eq!(got.offset, base_offset + i as i64);
                prop_assert_eq!(&got.key, &want.key);
                prop_assert_eq!(&got.value, &want.value);
                prop_assert_eq!(&got.headers, &want.headers);
                prop_assert_eq!(got.timestamp_ms, want.timestamp_ms);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = validate_batches(&bytes);
            let mut out = Vec::new();
            let _ = decode_records(&Bytes::from(bytes.clone()), 1 << 16, &mut out);
            for _ in BatchIter::new(&bytes) {}
        }

        #[test]
        fn varlongs_round_trip(v in any::<i64>()) {
            let mut buf = Vec::new();
            put_varlong(&mut buf, v);
            prop_assert_eq!(buf.len(), varlong_len(v));
            let mut slice = &buf[..];
            prop_assert_eq!(get_varlong(&mut slice).unwrap(), v);
            prop_assert!(slice.is_empty());
        }
    }

    proptest! {
        #[test]
        fn rebuilt_batches_keep_offsets_timestamps_and_producer_fields(
            records in proptest::collection::vec(record_strategy(), 1..30),
            keep in proptest::collection::vec(any::<bool>(), 30),
            codec in prop_oneof![Just(Compression::None), Just(Compression::Gzip), Just(Compression::Lz4), Just(Compression::Zstd)],
            horizon in proptest::option::of(0i64..4_000_000_000_000),
        ) {
            let mut builder = BatchBuilder::new(codec);
            for r in &records { builder.push(r); }
            let mut stored = builder.finish(9, 2, 40, false).unwrap().to_vec();
            set_base_offset(&mut stored, 1000);
            set_partition_leader_epoch(&mut stored, 4);
            let stored = Bytes::from(stored);
            let mut decoded = Vec::new();
            let header = decode_records(&stored, 1 << 24, &mut decoded).unwrap();
            let kept: Vec<ConsumedRecord> =
                decoded.iter().zip(&keep).filter(|(_, k)| **k).map(|(r, _)| r.clone()).collect();
            let (attributes, base_timestamp) = match horizon {
                Some(h) => (header.attributes | ATTR_DELETE_HORIZON, h),
                None => (header.attributes, header.base_timestamp),
            };
            let rebuilt = rebuild_batch(&header, &kept, attributes, base_timestamp).unwrap();
            let new_header = validate_stored_batch(&rebuilt, 0).unwrap();
            prop_assert_eq!(new_header.total_bytes(), rebuilt.len());
            prop_assert_eq!(new_header.compression().unwrap(), codec);
            prop_assert_eq!(new_header.delete_horizon_ms(), horizon);
            prop_assert_eq!(
                (new_header.base_offset, new_header.last_offset_delta, new_header.partition_leader_epoch),
                (header.base_offset, header.last_offset_delta, header.partition_leader_epoch)
            );
            prop_assert_eq!(
                (new_header.producer_id, new_header.producer_epoch, new_header.base_sequence, new_header.max_timestamp),
                (header.producer_id, header.producer_epoch, header.base_sequence, header.max_timestamp)
            );
            prop_assert_eq!(new_header.records_count as usize, kept.len());
            if kept.len() < records.len() {
                prop_assert!(validate_batch(&rebuilt, 0).is_err(), "a produce request may not carry gaps");
            }
            let mut again = Vec::new();
            decode_records(&rebuilt, 1 << 24, &mut again).unwrap();
            prop_assert_eq!(again, kept);
        }
    }

    #[test]
    fn stored_batches_may_hold_fewer_records_than_their_offset_span() {
        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(&Record { key: Some(Bytes::from_static(b"k")), ..Default::default() });
        let mut batch = builder.finish(-1, -1, -1, false).unwrap().to_vec();
        batch[field::LAST_OFFSET_DELTA..field::LAST_OFFSET_DELTA + 4].copy_from_slice(&5i32.to_be_bytes());
        let crc = crc32c::crc32c(&batch[field::ATTRIBUTES..]);
        batch[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(validate_batch(&batch, 0).is_err());
        assert_eq!(validate_stored_batch(&batch, 0).unwrap().records_count, 1);
        // More records than offsets is corrupt either way.
        batch[field::LAST_OFFSET_DELTA..field::LAST_OFFSET_DELTA + 4].copy_from_slice(&(-1i32).to_be_bytes());
        let crc = crc32c::crc32c(&batch[field::ATTRIBUTES..]);
        batch[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(validate_stored_batch(&batch, 0).is_err());
    }

    #[test]
    fn views_borrow_the_batch_and_headers_iterate_as_encoded() {
        let records = [
            Record {
                key: Some(Bytes::from_static(b"k")),
                value: None,
                headers: vec![
                    RecordHeader { key: "a".into(), value: Some(Bytes::from_static(b"1")) },
                    RecordHeader { key: String::new(), value: None },
                    RecordHeader { key: "a".into(), value: Some(Bytes::new()) },
                ],
                timestamp_ms: 10,
            },
            Record { key: None, value: Some(Bytes::from_static(b"v")), headers: Vec::new(), timestamp_ms: 7 },
        ];
        let mut builder = BatchBuilder::new(Compression::None);
        records.iter().for_each(|r| builder.push(r));
        let mut stored = builder.finish(-1, -1, -1, false).unwrap().to_vec();
        set_base_offset(&mut stored, 40);
        let stored = Bytes::from(stored);
        let batch = BatchRecords::new(&stored, 1 << 20).unwrap();
        let views: Vec<RecordView<'_>> = batch.iter().collect::<Result<_, _>>().unwrap();
        assert_eq!(views.len(), 2);
        assert_eq!(
            (views[0].offset, views[0].timestamp_ms, views[0].key, views[0].value),
            (40, 10, Some(&b"k"[..]), None)
        );
        let headers: Vec<(&str, Option<&[u8]>)> = views[0].headers.iter().collect();
        assert_eq!(headers, [("a", Some(&b"1"[..])), ("", None), ("a", Some(&b""[..]))]);
        assert_eq!(views[0].headers.len(), 3);
        assert!(views[1].headers.is_empty());
        assert_eq!((views[1].offset, views[1].timestamp_ms, views[1].value), (41, 7, Some(&b"v"[..])));
        // Uncompressed: the views point into the fetched bytes themselves.
        let range = stored.as_ptr_range();
        assert!(range.contains(&views[1].value.unwrap().as_ptr()));
    }

    #[test]
    fn log_append_time_gives_every_record_the_batch_max_timestamp() {
        let mut builder = BatchBuilder::new(Compression::Lz4);
        for ts in [5, 9, 7] {
            builder.push(&Record { value: Some(Bytes::from_static(b"v")), timestamp_ms: ts, ..Default::default() });
        }
        let mut stored = builder.finish(-1, -1, -1, false).unwrap().to_vec();
        let attributes =
            i16::from_be_bytes([stored[field::ATTRIBUTES], stored[field::ATTRIBUTES + 1]]) | ATTR_TIMESTAMP_TYPE;
        stored[field::ATTRIBUTES..field::ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
        stored[field::MAX_TIMESTAMP..field::MAX_TIMESTAMP + 8].copy_from_slice(&1_000i64.to_be_bytes());
        let crc = crc32c::crc32c(&stored[field::ATTRIBUTES..]);
        stored[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        validate_batch(&stored, 0).unwrap();
        let mut out = Vec::new();
        decode_records(&Bytes::from(stored), 1 << 20, &mut out).unwrap();
        assert_eq!(out.iter().map(|r| r.timestamp_ms).collect::<Vec<_>>(), [1_000, 1_000, 1_000]);
    }

    #[test]
    fn a_malformed_record_ends_the_iteration_with_its_error() {
        let mut builder = BatchBuilder::new(Compression::None);
        for v in [&b"first"[..], b"second"] {
            builder.push(&Record { value: Some(Bytes::copy_from_slice(v)), ..Default::default() });
        }
        let mut stored = builder.finish(-1, -1, -1, false).unwrap().to_vec();
        // The second record's length prefix now runs past the batch.
        let second = stored.len() - 1 - (1 + 1 + 1 + 1 + 1 + 6 + 1);
        stored[second] = 0x7e;
        let stored = Bytes::from(stored);
        let batch = BatchRecords::new(&stored, 1 << 20).unwrap();
        let results: Vec<_> = batch.iter().collect();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].as_ref().unwrap().value, Some(&b"first"[..]));
        assert!(matches!(results[1], Err(ProtocolError::Malformed { .. })), "{:?}", results[1]);
    }

    #[test]
    fn flipped_bit_fails_the_crc() {
        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(&Record { value: Some(Bytes::from_static(b"hello")), ..Default::default() });
        let mut batch = builder.finish(-1, -1, -1, false).unwrap().to_vec();
        let last = batch.len() - 1;
        batch[last] ^= 1;
        assert!(matches!(validate_batch(&batch, 0), Err(ProtocolError::CrcMismatch { .. })));
    }

    #[test]
    fn rejects_bad_magic_counts_and_truncation() {
        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(&Record { value: Some(Bytes::from_static(b"v")), ..Default::default() });
        let batch = builder.finish(-1, -1, -1, false).unwrap().to_vec();
        let mut bad_magic = batch.clone();
        bad_magic[field::MAGIC] = 1;
        assert!(validate_batch(&bad_magic, 0).is_err());
        assert!(validate_batch(&batch[..batch.len() - 1], 0).is_err());
        assert!(validate_batches(&[]).is_err());
        // A huge record count with a matching delta and a recomputed CRC is still refused.
        let mut huge = batch.clone();
        huge[field::RECORDS_COUNT..field::RECORDS_COUNT + 4].copy_from_slice(&1_000_000i32.to_be_bytes());
        huge[field::LAST_OFFSET_DELTA..field::LAST_OFFSET_DELTA + 4].copy_from_slice(&999_999i32.to_be_bytes());
        let crc = crc32c::crc32c(&huge[field::ATTRIBUTES..]);
        huge[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(validate_batch(&huge, 0).is_err());
    }
}

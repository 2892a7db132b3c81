//! The sans-IO part of fetching: turning one partition's `records` bytes from a Fetch response
//! into consumer records.
//!
//! With `isolation.level=read_committed` the broker returns records only below the last
//! stable offset, plus the aborted transactions whose records the response may hold; the
//! records of those transactions are dropped here exactly as Kafka's Java `CompletedFetch`
//! drops them (see [`AbortedTransactions`]). Read-uncommitted fetches pass no list and pay
//! nothing for it.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::ConsumerRecord;
use crate::error::Error;
use crate::error::ProtocolError;
use crate::protocol::record::{validate_stored_batch, BatchHeader, BatchRecords, BATCH_HEADER_BYTES};

/// The aborted transactions one read_committed Fetch response listed for a partition, as
/// `(producer_id, first_offset)`, consumed as the decoder passes their first offsets.
///
/// Java's algorithm: before each batch that has a producer id, every aborted transaction whose
/// first offset is at or before the batch's last offset has begun, so its producer is
/// "aborted"; a transactional data batch of an aborted producer is skipped whole; that
/// producer's ABORT marker (a control batch) ends its aborted transaction. A producer has at
/// most one open transaction per partition, so its id is enough to tell them apart.
#[derive(Debug, Clone, Default)]
pub(crate) struct AbortedTransactions {
    /// `(first_offset, producer_id)`, sorted.
    starts: Vec<(i64, i64)>,
    /// `starts[next..]` have not begun yet.
    next: usize,
    /// Producers inside an aborted transaction (a handful at most, so a list).
    aborted: Vec<i64>,
}

impl AbortedTransactions {
    pub fn new(list: impl IntoIterator<Item = (i64, i64)>) -> Self {
        let mut starts: Vec<(i64, i64)> = list.into_iter().map(|(producer_id, first)| (first, producer_id)).collect();
        starts.sort_unstable();
        AbortedTransactions { starts, next: 0, aborted: Vec::new() }
    }

    /// Whether to drop the batch `header` heads (`batch` holds the whole batch). Ends an
    /// aborted transaction when the batch is its producer's ABORT marker.
    fn skips(
        &mut self,
        header: &BatchHeader,
        batch: &Bytes,
        max_decompressed_bytes: usize,
    ) -> Result<bool, ProtocolError> {
        if !header.has_producer_id() {
            return Ok(false);
        }
        let last_offset = header.last_offset();
        while let Some(&(first_offset, producer_id)) = self.starts.get(self.next) {
            if first_offset > last_offset {
                break;
            }
            if !self.aborted.contains(&producer_id) {
                self.aborted.push(producer_id);
            }
            self.next += 1;
        }
        let producer_id = header.producer_id;
        if header.is_control() {
            if control_type(batch, max_decompressed_bytes)? == Some(CONTROL_TYPE_ABORT) {
                self.aborted.retain(|&p| p != producer_id);
            }
            // Control batches are dropped by the caller whatever they say.
            return Ok(false);
        }
        Ok(header.is_transactional() && self.aborted.contains(&producer_id))
    }
}

/// Control record key types (the key is `version: int16, type: int16`).
const CONTROL_TYPE_ABORT: i16 = 0;
#[cfg(test)]
const CONTROL_TYPE_COMMIT: i16 = 1;

/// The type of a control batch's first record (ABORT 0, COMMIT 1, others Kafka may add), or
/// `None` for a batch compaction left empty.
fn control_type(batch: &Bytes, max_decompressed_bytes: usize) -> Result<Option<i16>, ProtocolError> {
    let records = BatchRecords::new(batch, max_decompressed_bytes)?;
    let Some(first) = records.iter().next().transpose()? else { return Ok(None) };
    let key = first.key.unwrap_or_default();
    if key.len() < 4 {
        return Err(ProtocolError::malformed("control record", format!("key of {} bytes", key.len())));
    }
    let version = i16::from_be_bytes([key[0], key[1]]);
    if version < 0 {
        return Err(ProtocolError::malformed("control record", format!("key version {version}")));
    }
    // Newer key versions keep the type where it is (Java parses them as version 0 too).
    Ok(Some(i16::from_be_bytes([key[2], key[3]])))
}

/// One fetched record batch not yet handed out: a data batch (never a control batch, never
/// a batch of an aborted transaction in read_committed), whole, its CRC checked when
/// `check.crcs` is on. [`crate::Consumer::poll_batches`] hands these out for callers that read
/// records in place ([`FetchedBatch::records`]); `poll` decodes them into [`ConsumerRecord`]s.
#[derive(Debug, Clone)]
pub struct FetchedBatch {
    pub topic: Arc<str>,
    pub partition: i32,
    /// Records below this offset are not the caller's: the broker returns whole batches, so a
    /// fetch's first batch may start before the fetch offset.
    pub from_offset: i64,
    /// Exactly one record batch (magic 2).
    pub batch: Bytes,
    /// `batch`'s header, parsed when the fetch response was split.
    header: BatchHeader,
    /// The broker it came from, for error messages.
    broker: i32,
}

impl FetchedBatch {
    /// The batch's records, to read in place. Read only those at or after
    /// [`FetchedBatch::from_offset`]; a compressed batch is inflated here (up to the consumer's
    /// bound on one batch).
    pub fn records(&self) -> Result<BatchRecords, ProtocolError> {
        BatchRecords::new(&self.batch, super::MAX_DECOMPRESSED_BATCH_BYTES)
    }

    /// The number of records the batch says it holds (some may be below `from_offset`).
    pub fn records_count(&self) -> usize {
        self.header.records_count.max(0) as usize
    }

    /// The offset after the batch's last offset (past `from_offset`: batches wholly before the
    /// fetch offset are never kept).
    pub fn next_offset(&self) -> i64 {
        self.header.last_offset().saturating_add(1)
    }

    /// The client error for `source`, a failure to read this batch's records, naming the
    /// broker and partition it came from.
    pub fn error(&self, source: ProtocolError) -> Error {
        Error::Protocol {
            peer: format!("broker {} ({}-{} at offset {})", self.broker, self.topic, self.partition, self.from_offset),
            source,
        }
    }
}

/// Splits one partition's fetched `records` into its complete data batches (a fetch may end
/// with a partial batch, which is fetched again next time), skipping control batches, batches
/// wholly before `fetch_offset`, and, for read_committed fetches (`aborted` is the response's
/// list), the batches of aborted transactions. Returns where the next fetch starts: after the
/// last complete batch (control batches included).
#[expect(clippy::too_many_arguments, reason = "one caller, every argument named at the call site")]
pub(crate) fn split_fetched(
    broker: i32,
    topic: &Arc<str>,
    partition: i32,
    records: &Bytes,
    fetch_offset: i64,
    check_crcs: bool,
    max_decompressed_bytes: usize,
    mut aborted: Option<&mut AbortedTransactions>,
    out: &mut VecDeque<FetchedBatch>,
) -> Result<i64, ProtocolError> {
    let mut position = 0;
    let mut next_fetch_offset = fetch_offset;
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
        if let Some(aborted) = aborted.as_deref_mut() {
            if aborted.skips(&header, &batch, max_decompressed_bytes)? {
                next_fetch_offset = next_fetch_offset.max(header.last_offset().saturating_add(1));
                continue;
            }
        }
        if header.last_offset() < fetch_offset {
            continue;
        }
        next_fetch_offset = next_fetch_offset.max(header.last_offset().saturating_add(1));
        if header.is_control() || header.records_count == 0 {
            continue;
        }
        out.push_back(FetchedBatch {
            topic: topic.clone(),
            partition,
            from_offset: fetch_offset,
            batch,
            header,
            broker,
        });
    }
    Ok(next_fetch_offset)
}

/// Decodes the records of `fetched` at or after its `from_offset` onto `out`.
pub(crate) fn decode_batch(fetched: &FetchedBatch, out: &mut VecDeque<ConsumerRecord>) -> Result<(), ProtocolError> {
    let records = fetched.records()?;
    for r in records.iter() {
        let r = r?;
        if r.offset < fetched.from_offset {
            continue;
        }
        let r = records.owned_record(&r);
        out.push_back(ConsumerRecord {
            topic: fetched.topic.clone(),
            partition: fetched.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key,
            value: r.value,
            headers: r.headers,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::compression::Compression;
    use crate::protocol::record::{set_base_offset, BatchBuilder, Record};
    use bytes::BytesMut;

    #[derive(Debug, PartialEq, Eq)]
    struct Decoded {
        next_fetch_offset: i64,
        records: usize,
    }

    /// Splits and decodes as `poll` does.
    #[expect(clippy::too_many_arguments, reason = "mirrors split_fetched")]
    fn decode_fetched(
        topic: &Arc<str>,
        partition: i32,
        records: &Bytes,
        fetch_offset: i64,
        check_crcs: bool,
        max_decompressed_bytes: usize,
        aborted: Option<&mut AbortedTransactions>,
        out: &mut VecDeque<ConsumerRecord>,
    ) -> Result<Decoded, ProtocolError> {
        let mut batches = VecDeque::new();
        let next_fetch_offset = split_fetched(
            1,
            topic,
            partition,
            records,
            fetch_offset,
            check_crcs,
            max_decompressed_bytes,
            aborted,
            &mut batches,
        )?;
        let before = out.len();
        for b in &batches {
            decode_batch(b, out)?;
        }
        Ok(Decoded { next_fetch_offset, records: out.len() - before })
    }

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
        let decoded = decode_fetched(&topic, 0, &all, 11, true, 1 << 20, None, &mut out).unwrap();
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
            decode_fetched(&topic, 0, &b, 0, true, 1 << 20, None, &mut out),
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
        let decoded = decode_fetched(&topic, 0, &b, 5, true, 1 << 20, None, &mut out).unwrap();
        assert_eq!(decoded, Decoded { next_fetch_offset: 6, records: 0 });
        assert!(out.is_empty());
    }

    const P1: i64 = 1001;
    const P2: i64 = 1002;
    const P3: i64 = 1003;

    /// A transactional data batch of `producer_id` at `base_offset`, one record per value.
    fn txn_batch(base_offset: i64, producer_id: i64, values: &[&str], compression: Compression) -> BytesMut {
        let mut b = BatchBuilder::new(compression);
        for (i, v) in values.iter().enumerate() {
            b.push(&Record {
                key: None,
                value: Some(Bytes::from(v.to_string())),
                headers: Vec::new(),
                timestamp_ms: 1000 + i as i64,
            });
        }
        let mut bytes = BytesMut::from(&b.finish(producer_id, 0, 0, true).unwrap()[..]);
        set_base_offset(&mut bytes, base_offset);
        bytes
    }

    /// A transaction marker as the coordinator writes it: a control batch (transactional and
    /// control attribute bits) of one record whose key is `version: int16 = 0, type: int16`
    /// and whose value is `version: int16 = 0, coordinator_epoch: int32`.
    fn marker(base_offset: i64, producer_id: i64, control_type: i16, compression: Compression) -> BytesMut {
        let mut key = Vec::new();
        key.extend_from_slice(&0i16.to_be_bytes());
        key.extend_from_slice(&control_type.to_be_bytes());
        let mut value = Vec::new();
        value.extend_from_slice(&0i16.to_be_bytes());
        value.extend_from_slice(&7i32.to_be_bytes());
        let mut b = BatchBuilder::new(compression);
        b.push(&Record { key: Some(key.into()), value: Some(value.into()), headers: Vec::new(), timestamp_ms: 5 });
        let mut bytes = BytesMut::from(&b.finish(producer_id, 0, -1, true).unwrap()[..]);
        use crate::protocol::record::field;
        let attrs = i16::from_be_bytes([bytes[field::ATTRIBUTES], bytes[field::ATTRIBUTES + 1]]) | 0x20;
        bytes[field::ATTRIBUTES..field::ATTRIBUTES + 2].copy_from_slice(&attrs.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[field::ATTRIBUTES..]);
        bytes[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        set_base_offset(&mut bytes, base_offset);
        bytes
    }

    fn log(batches: &[BytesMut]) -> Bytes {
        let mut all = BytesMut::new();
        for b in batches {
            all.extend_from_slice(b);
        }
        all.freeze()
    }

    /// Decodes `records` from `fetch_offset` with the response's aborted list (`None`:
    /// read_uncommitted); returns the values handed out and the next fetch offset.
    fn read(records: &Bytes, fetch_offset: i64, aborted: Option<&[(i64, i64)]>) -> (Vec<String>, i64) {
        let topic: Arc<str> = Arc::from("t");
        let mut out = VecDeque::new();
        let mut aborted = aborted.map(|list| AbortedTransactions::new(list.iter().copied()));
        let decoded =
            decode_fetched(&topic, 0, records, fetch_offset, true, 1 << 20, aborted.as_mut(), &mut out).unwrap();
        assert_eq!(decoded.records, out.len());
        let values = out.iter().map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()).collect();
        (values, decoded.next_fetch_offset)
    }

    const ABORT: i16 = CONTROL_TYPE_ABORT;
    const COMMIT: i16 = CONTROL_TYPE_COMMIT;

    /// P1's transaction aborts, P2's commits, their batches interleave, and a
    /// non-transactional producer writes in between.
    fn interleaved(data: Compression, markers: Compression) -> Bytes {
        log(&[
            txn_batch(0, P1, &["p1-a", "p1-b"], data),
            txn_batch(2, P2, &["p2-a", "p2-b"], data),
            batch(4, &["plain"], data),
            txn_batch(5, P1, &["p1-c"], data),
            txn_batch(6, P3, &["p3-a"], data),
            marker(7, P2, COMMIT, markers),
            txn_batch(8, P2, &["p2-c"], data),
            marker(9, P1, ABORT, markers),
            txn_batch(10, P1, &["p1-d"], data),
            marker(11, P3, COMMIT, markers),
            marker(12, P1, COMMIT, markers),
            marker(13, P2, COMMIT, markers),
        ])
    }

    #[test]
    fn read_committed_drops_aborted_transactions_of_interleaved_producers() {
        for (data, markers) in [
            (Compression::None, Compression::None),
            (Compression::Lz4, Compression::None),
            (Compression::Zstd, Compression::None),
            (Compression::Gzip, Compression::Gzip),
            (Compression::Snappy, Compression::Snappy),
        ] {
            let records = interleaved(data, markers);
            let (values, next) = read(&records, 0, Some(&[(P1, 0)]));
            assert_eq!(values, ["p2-a", "p2-b", "plain", "p3-a", "p2-c", "p1-d"], "{data:?}/{markers:?}");
            assert_eq!(next, 14);
            // read_uncommitted hands out everything but the markers.
            let (values, next) = read(&records, 0, None);
            assert_eq!(
                values,
                ["p1-a", "p1-b", "p2-a", "p2-b", "plain", "p1-c", "p3-a", "p2-c", "p1-d"],
                "{data:?}/{markers:?}"
            );
            assert_eq!(next, 14);
        }
    }

    #[test]
    fn an_abort_then_a_commit_of_the_same_producer() {
        let records = log(&[
            txn_batch(0, P1, &["a1", "a2"], Compression::None),
            marker(2, P1, ABORT, Compression::None),
            txn_batch(3, P1, &["b1", "b2"], Compression::Lz4),
            marker(5, P1, COMMIT, Compression::None),
            txn_batch(6, P1, &["c1"], Compression::None),
            marker(7, P1, ABORT, Compression::None),
            txn_batch(8, P1, &["d1"], Compression::None),
            marker(9, P1, COMMIT, Compression::None),
        ]);
        // Two aborted transactions of one producer, listed out of order.
        let (values, next) = read(&records, 0, Some(&[(P1, 6), (P1, 0)]));
        assert_eq!(values, ["b1", "b2", "d1"]);
        assert_eq!(next, 10);
        // From inside the first: the list still names it (its last offset is past the fetch
        // offset), and the batch that holds the fetch offset is dropped whole.
        let (values, next) = read(&records, 1, Some(&[(P1, 0), (P1, 6)]));
        assert_eq!((values, next), (vec!["b1".to_string(), "b2".into(), "d1".into()], 10));
        // Only the commit's records are in flight (the LSO stops before 6).
        let upto = log(&[txn_batch(3, P1, &["b1", "b2"], Compression::None), marker(5, P1, COMMIT, Compression::None)]);
        assert_eq!(read(&upto, 3, Some(&[])), (vec!["b1".to_string(), "b2".into()], 6));
    }

    #[test]
    fn an_aborted_producer_id_drops_only_its_transactional_batches() {
        // A producer id listed as aborted only from offset 2 on: its earlier batch was
        // committed; and a non-transactional batch that happens to carry its id is kept.
        let mut plain_with_id = BatchBuilder::new(Compression::None);
        plain_with_id.push(&Record {
            key: None,
            value: Some(Bytes::from("idempotent")),
            headers: Vec::new(),
            timestamp_ms: 1,
        });
        let mut plain_with_id = BytesMut::from(&plain_with_id.finish(P2, 0, 0, false).unwrap()[..]);
        set_base_offset(&mut plain_with_id, 4);
        let records = log(&[
            txn_batch(0, P1, &["kept"], Compression::None),
            marker(1, P1, COMMIT, Compression::None),
            txn_batch(2, P1, &["dropped"], Compression::None),
            txn_batch(3, P2, &["p2"], Compression::None),
            plain_with_id,
            marker(5, P1, ABORT, Compression::None),
        ]);
        let (values, next) = read(&records, 0, Some(&[(P1, 2), (P2, 100)]));
        assert_eq!((values, next), (vec!["kept".to_string(), "p2".into(), "idempotent".into()], 6));
    }

    #[test]
    fn a_marker_without_a_readable_key_is_refused() {
        let mut b = BatchBuilder::new(Compression::None);
        b.push(&Record {
            key: Some(Bytes::from_static(&[0, 0, 0])),
            value: None,
            headers: Vec::new(),
            timestamp_ms: 1,
        });
        let mut bytes = BytesMut::from(&b.finish(P1, 0, -1, true).unwrap()[..]);
        use crate::protocol::record::field;
        bytes[field::ATTRIBUTES + 1] |= 0x20;
        let crc = crc32c::crc32c(&bytes[field::ATTRIBUTES..]);
        bytes[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        let records = bytes.freeze();
        let topic: Arc<str> = Arc::from("t");
        let mut aborted = AbortedTransactions::new([(P1, 0)]);
        let result = decode_fetched(&topic, 0, &records, 0, true, 1 << 20, Some(&mut aborted), &mut VecDeque::new());
        assert!(matches!(result, Err(ProtocolError::Malformed { what: "control record", .. })), "{result:?}");
    }
}

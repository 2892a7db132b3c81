//! The records of `__transaction_state`, in Kafka's own formats (`TransactionLogKey` v0 and
//! `TransactionLogValue` v0), so the topic reads the same as a Kafka broker's:
//!
//! - key: `version: int16 = 0, transactional_id: string`
//! - value: `version: int16 = 0, producer_id: int64, producer_epoch: int16,
//!   transaction_timeout_ms: int32, transaction_status: int8, transaction_partitions: nullable
//!   [topic: string, partition_ids: [int32]], transaction_last_update_timestamp_ms: int64,
//!   transaction_start_timestamp_ms: int64`
//!
//! A null value is a tombstone (the transactional id expired). Decoding bounds every length by
//! the bytes that remain.

use std::collections::BTreeSet;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::state::{TxnMetadata, TxnStatus};

const KEY_VERSION: i16 = 0;
const VALUE_VERSION: i16 = 0;

/// Why a `__transaction_state` record could not be decoded (the log's fault, not a client's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable {what} in __transaction_state: {reason}")]
pub struct StoreError {
    pub what: &'static str,
    pub reason: String,
}

fn err(what: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError { what, reason: reason.into() }
}

fn put_string(buf: &mut BytesMut, s: &str) {
    // Transactional ids and topic names are bounded far below i16::MAX on the way in.
    let len = i16::try_from(s.len()).unwrap_or(i16::MAX);
    buf.put_i16(len);
    buf.put_slice(&s.as_bytes()[..len as usize]);
}

pub fn encode_key(transactional_id: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(4 + transactional_id.len());
    buf.put_i16(KEY_VERSION);
    put_string(&mut buf, transactional_id);
    buf.freeze()
}

pub fn encode_value(m: &TxnMetadata) -> Bytes {
    let mut buf = BytesMut::with_capacity(64 + m.partitions.iter().map(|(t, _)| t.len() + 8).sum::<usize>());
    buf.put_i16(VALUE_VERSION);
    buf.put_i64(m.producer_id);
    buf.put_i16(m.producer_epoch);
    buf.put_i32(m.timeout_ms);
    buf.put_i8(m.status as i8);
    // Grouped by topic, as Kafka writes them.
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for (topic, partition) in &m.partitions {
        match topics.last_mut() {
            Some((t, ps)) if *t == topic.as_str() => ps.push(*partition),
            _ => topics.push((topic.as_str(), vec![*partition])),
        }
    }
    buf.put_i32(topics.len() as i32);
    for (topic, partitions) in topics {
        put_string(&mut buf, topic);
        buf.put_i32(partitions.len() as i32);
        for p in partitions {
            buf.put_i32(p);
        }
    }
    buf.put_i64(m.last_update_ms);
    buf.put_i64(m.start_ms);
    buf.freeze()
}

struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl Reader<'_> {
    fn need(&self, n: usize) -> Result<(), StoreError> {
        if self.buf.remaining() < n {
            return Err(err(self.what, format!("needs {n} more bytes, {} left", self.buf.remaining())));
        }
        Ok(())
    }
    fn i8(&mut self) -> Result<i8, StoreError> {
        self.need(1)?;
        Ok(self.buf.get_i8())
    }
    fn i16(&mut self) -> Result<i16, StoreError> {
        self.need(2)?;
        Ok(self.buf.get_i16())
    }
    fn i32(&mut self) -> Result<i32, StoreError> {
        self.need(4)?;
        Ok(self.buf.get_i32())
    }
    fn i64(&mut self) -> Result<i64, StoreError> {
        self.need(8)?;
        Ok(self.buf.get_i64())
    }
    fn string(&mut self) -> Result<String, StoreError> {
        let len = self.i16()?;
        if len < 0 {
            return Err(err(self.what, "null where a string is required"));
        }
        let len = len as usize;
        self.need(len)?;
        let s = std::str::from_utf8(&self.buf[..len]).map_err(|_| err(self.what, "string is not utf-8"))?.to_string();
        self.buf.advance(len);
        Ok(s)
    }
    /// An array count, refused when its elements (at least `min_bytes` each) cannot fit.
    fn count(&mut self, min_bytes: usize) -> Result<usize, StoreError> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(0);
        }
        let n = n as usize;
        if n.saturating_mul(min_bytes) > self.buf.remaining() {
            return Err(err(self.what, format!("{n} elements cannot fit in {} bytes", self.buf.remaining())));
        }
        Ok(n)
    }
}

pub fn decode_key(key: &[u8]) -> Result<String, StoreError> {
    let mut r = Reader { buf: key, what: "key" };
    let version = r.i16()?;
    if version != KEY_VERSION {
        return Err(err("key", format!("version {version} is not a transaction log key")));
    }
    r.string()
}

pub fn decode_value(transactional_id: &str, value: &[u8]) -> Result<TxnMetadata, StoreError> {
    let mut r = Reader { buf: value, what: "value" };
    let version = r.i16()?;
    if !(0..=1).contains(&version) {
        return Err(err("value", format!("unknown version {version}")));
    }
    let producer_id = r.i64()?;
    let producer_epoch = r.i16()?;
    let timeout_ms = r.i32()?;
    let status = TxnStatus::from_i8(r.i8()?).ok_or_else(|| err("value", "unknown transaction status"))?;
    // v1 is flexible (compact arrays, tagged fields); we write and read v0 only.
    if version == 1 {
        return Err(err("value", "flexible v1 values are not read by this broker"));
    }
    let mut partitions = BTreeSet::new();
    let topics = r.count(6)?;
    for _ in 0..topics {
        let topic = r.string()?;
        let n = r.count(4)?;
        for _ in 0..n {
            partitions.insert((topic.clone(), r.i32()?));
        }
    }
    let last_update_ms = r.i64()?;
    let start_ms = r.i64()?;
    Ok(TxnMetadata {
        transactional_id: transactional_id.to_string(),
        producer_id,
        producer_epoch,
        timeout_ms,
        status,
        partitions,
        last_update_ms,
        start_ms,
        pending: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let m = TxnMetadata {
            transactional_id: "t-1".into(),
            producer_id: 4001,
            producer_epoch: 7,
            timeout_ms: 60_000,
            status: TxnStatus::PrepareCommit,
            partitions: [("a".to_string(), 0), ("a".to_string(), 3), ("b".to_string(), 1)].into(),
            last_update_ms: 1_700,
            start_ms: 1_600,
            pending: false,
        };
        assert_eq!(decode_key(&encode_key("t-1")).unwrap(), "t-1");
        assert_eq!(decode_value("t-1", &encode_value(&m)).unwrap(), m);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let m = TxnMetadata {
            transactional_id: "t".into(),
            producer_id: 1,
            producer_epoch: 0,
            timeout_ms: 1,
            status: TxnStatus::Ongoing,
            partitions: [("topic".to_string(), 2)].into(),
            last_update_ms: 0,
            start_ms: 0,
            pending: false,
        };
        let v = encode_value(&m);
        for cut in 0..v.len() {
            assert!(decode_value("t", &v[..cut]).is_err(), "cut at {cut}");
        }
        // A huge array count is refused before anything is reserved.
        let mut bad = v[..17].to_vec();
        bad.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode_value("t", &bad).is_err());
    }
}

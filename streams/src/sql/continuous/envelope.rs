//! The value of a record on a continuous query's repartition topic and in its window store: the
//! source record whole (key, value, headers, timestamp) with its source partition and offset, so
//! that the window stage decodes it with the table's decoder and a record re-processed after a
//! crash overwrites its own entry instead of counting twice.
//!
//! Layout (big-endian): version `1` (u8) ‖ partition (i32) ‖ offset (i64) ‖ timestamp (i64) ‖
//! key ‖ value ‖ header count (u32) ‖ per header: name ‖ value — where each byte field is a
//! length (i32, −1 = null) and the bytes.

use bytes::Bytes;
use spate_client::RecordHeader;

use crate::StreamsError;

const VERSION: u8 = 1;
/// Most headers one record may carry here (a corrupt count must not allocate unboundedly).
const MAX_HEADERS: usize = 10_000;

/// A source record as the window stage keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceRecord {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(b) => {
            out.extend_from_slice(&(b.len() as i32).to_be_bytes());
            out.extend_from_slice(b);
        }
    }
}

impl SourceRecord {
    pub fn from_consumer(r: &spate_client::ConsumerRecord) -> Self {
        SourceRecord {
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let len =
            1 + 4 + 8 + 8 + 12 + self.key.as_ref().map_or(0, |b| b.len()) + self.value.as_ref().map_or(0, |b| b.len());
        let mut out = Vec::with_capacity(len);
        out.push(VERSION);
        out.extend_from_slice(&self.partition.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        put_bytes(&mut out, self.key.as_deref());
        put_bytes(&mut out, self.value.as_deref());
        out.extend_from_slice(&(self.headers.len() as u32).to_be_bytes());
        for h in &self.headers {
            put_bytes(&mut out, Some(h.key.as_bytes()));
            put_bytes(&mut out, h.value.as_deref());
        }
        out
    }

    /// Decodes what [`Self::encode`] wrote; anything else is an error naming the topic (a record
    /// someone else wrote to the internal topic, or a damaged store).
    pub fn decode(bytes: &[u8], what: &str) -> Result<Self, StreamsError> {
        let bad = |reason: &str| StreamsError::SqlExecution(format!("{what}: not a continuous-query record: {reason}"));
        let mut r = Reader { bytes, at: 0 };
        let version = r.take(1).map_err(&bad)?[0];
        if version != VERSION {
            return Err(bad(&format!("unknown version {version}")));
        }
        let partition = i32::from_be_bytes(r.array().map_err(&bad)?);
        let offset = i64::from_be_bytes(r.array().map_err(&bad)?);
        let timestamp_ms = i64::from_be_bytes(r.array().map_err(&bad)?);
        let key = r.bytes().map_err(&bad)?;
        let value = r.bytes().map_err(&bad)?;
        let count = u32::from_be_bytes(r.array().map_err(&bad)?) as usize;
        if count > MAX_HEADERS {
            return Err(bad(&format!("{count} headers is more than {MAX_HEADERS}")));
        }
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let name = r.bytes().map_err(&bad)?.ok_or_else(|| bad("null header name"))?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| bad("header name is not UTF-8"))?;
            headers.push(RecordHeader { key: name, value: r.bytes().map_err(&bad)? });
        }
        if r.at != bytes.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(SourceRecord { partition, offset, timestamp_ms, key, value, headers })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or("truncated")?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn bytes(&mut self) -> Result<Option<Bytes>, &'static str> {
        let len = i32::from_be_bytes(self.array()?);
        if len < 0 {
            return Ok(None);
        }
        Ok(Some(Bytes::copy_from_slice(self.take(len as usize)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(partition in any::<i32>(), offset in any::<i64>(), ts in any::<i64>(),
                      key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                      value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..50)),
                      headers in proptest::collection::vec(("[a-z]{0,5}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..5))), 0..4)) {
            let r = SourceRecord {
                partition, offset, timestamp_ms: ts,
                key: key.map(Bytes::from), value: value.map(Bytes::from),
                headers: headers.into_iter().map(|(k, v)| RecordHeader { key: k, value: v.map(Bytes::from) }).collect(),
            };
            let bytes = r.encode();
            prop_assert_eq!(SourceRecord::decode(&bytes, "t").unwrap(), r);
            for cut in 0..bytes.len() {
                prop_assert!(SourceRecord::decode(&bytes[..cut], "t").is_err());
            }
        }
    }
}

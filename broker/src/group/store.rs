//! The records of `__consumer_offsets`, in Kafka's own formats, so the topic reads the same as a
//! Kafka broker's (and Kafka's tooling could decode it):
//!
//! - key version 1, `OffsetCommitKey`: `group: string, topic: string, partition: int32`; value
//!   `OffsetCommitValue` v3: `offset: int64, leader_epoch: int32, metadata: string,
//!   commit_timestamp: int64` (v0–v2 are read too).
//! - key version 2, `GroupMetadataKey`: `group: string`; value `GroupMetadataValue` v3:
//!   `protocol_type: string, generation: int32, protocol: nullable string, leader: nullable
//!   string, current_state_timestamp: int64, members: [member_id: string, group_instance_id:
//!   nullable string, client_id: string, client_host: string, rebalance_timeout: int32,
//!   session_timeout: int32, subscription: bytes, assignment: bytes]` (v0–v2 are read too).
//!
//! Every key and value starts with its `int16` version. A null value is a tombstone: the offset
//! or group was deleted, and compaction eventually drops the key. Everything here is plain
//! bytes in and out; decoding bounds every length by the bytes that remain.
//!
//! Transactional offset commits (KIP-98 TxnOffsetCommit) are the same offset records in a
//! transactional batch carrying the producer's id and epoch; they count only once a COMMIT
//! marker of that producer follows them (Kafka's `EndTransactionMarker`: a control batch whose
//! one record has key `version: int16 = 0, type: int16` (0 = ABORT, 1 = COMMIT) and value
//! `version: int16 = 0, coordinator_epoch: int32`); see `crate::txn::marker::control_batch` and
//! [`transaction_marker`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// What one `__consumer_offsets` record is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKey {
    Offset { group: String, topic: String, partition: i32 },
    Group { group: String },
}

impl RecordKey {
    pub fn group(&self) -> &str {
        match self {
            RecordKey::Offset { group, .. } | RecordKey::Group { group } => group,
        }
    }
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    /// -1 when the committer did not know it.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// Only in v1 values (OffsetCommit v1's explicit retention); read, never written.
    pub expire_timestamp_ms: Option<i64>,
}

/// One member as a group's metadata record holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberValue {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// A group's metadata after a completed rebalance (or on becoming empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation_id: i32,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub current_state_timestamp_ms: i64,
    pub members: Vec<MemberValue>,
}

/// A record to append, or one read back: the value is `None` for a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreRecord {
    Offset { group: String, topic: String, partition: i32, value: Option<OffsetValue> },
    Group { group: String, value: Option<GroupValue> },
}

impl StoreRecord {
    pub fn group(&self) -> &str {
        match self {
            StoreRecord::Offset { group, .. } | StoreRecord::Group { group, .. } => group,
        }
    }

    pub fn key(&self) -> RecordKey {
        match self {
            StoreRecord::Offset { group, topic, partition, .. } => {
                RecordKey::Offset { group: group.clone(), topic: topic.clone(), partition: *partition }
            }
            StoreRecord::Group { group, .. } => RecordKey::Group { group: group.clone() },
        }
    }

    /// The record's key and value bytes.
    pub fn encode(&self) -> (Bytes, Option<Bytes>) {
        let key = encode_key(&self.key());
        let value = match self {
            StoreRecord::Offset { value, .. } => value.as_ref().map(encode_offset_value),
            StoreRecord::Group { value, .. } => value.as_ref().map(encode_group_value),
        };
        (key, value)
    }

    /// Decodes a record read back from the topic.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<StoreRecord, StoreError> {
        Ok(match decode_key(key)? {
            RecordKey::Offset { group, topic, partition } => {
                StoreRecord::Offset { group, topic, partition, value: value.map(decode_offset_value).transpose()? }
            }
            RecordKey::Group { group } => {
                StoreRecord::Group { group, value: value.map(decode_group_value).transpose()? }
            }
        })
    }
}

/// A record of `__consumer_offsets` that cannot be decoded (written by something else, or a
/// newer format).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable __consumer_offsets {what}: {reason}")]
pub struct StoreError {
    pub what: &'static str,
    pub reason: String,
}

fn err(what: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError { what, reason: reason.into() }
}

const OFFSET_KEY_VERSION: i16 = 1;
const GROUP_KEY_VERSION: i16 = 2;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;

fn put_string(buf: &mut BytesMut, s: &str) {
    // Lengths were bounded on the way in (group ids, topic names and metadata all fit an i16).
    let len = i16::try_from(s.len()).unwrap_or(i16::MAX);
    buf.put_i16(len);
    buf.put_slice(&s.as_bytes()[..len as usize]);
}

fn put_nullable_string(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_string(buf, s),
        None => buf.put_i16(-1),
    }
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_i32(b.len() as i32);
    buf.put_slice(b);
}

pub fn encode_key(key: &RecordKey) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    match key {
        RecordKey::Offset { group, topic, partition } => {
            buf.put_i16(OFFSET_KEY_VERSION);
            put_string(&mut buf, group);
            put_string(&mut buf, topic);
            buf.put_i32(*partition);
        }
        RecordKey::Group { group } => {
            buf.put_i16(GROUP_KEY_VERSION);
            put_string(&mut buf, group);
        }
    }
    buf.freeze()
}

pub fn encode_offset_value(v: &OffsetValue) -> Bytes {
    let mut buf = BytesMut::with_capacity(32 + v.metadata.len());
    buf.put_i16(OFFSET_VALUE_VERSION);
    buf.put_i64(v.offset);
    buf.put_i32(v.leader_epoch);
    put_string(&mut buf, &v.metadata);
    buf.put_i64(v.commit_timestamp_ms);
    buf.freeze()
}

pub fn encode_group_value(v: &GroupValue) -> Bytes {
    let mut buf = BytesMut::with_capacity(64 + group_value_size(v));
    buf.put_i16(GROUP_VALUE_VERSION);
    put_string(&mut buf, &v.protocol_type);
    buf.put_i32(v.generation_id);
    put_nullable_string(&mut buf, v.protocol_name.as_deref());
    put_nullable_string(&mut buf, v.leader.as_deref());
    buf.put_i64(v.current_state_timestamp_ms);
    buf.put_i32(v.members.len() as i32);
    for m in &v.members {
        put_string(&mut buf, &m.member_id);
        put_nullable_string(&mut buf, m.group_instance_id.as_deref());
        put_string(&mut buf, &m.client_id);
        put_string(&mut buf, &m.client_host);
        buf.put_i32(m.rebalance_timeout_ms);
        buf.put_i32(m.session_timeout_ms);
        put_bytes(&mut buf, &m.subscription);
        put_bytes(&mut buf, &m.assignment);
    }
    buf.freeze()
}

/// Approximate encoded size of a group value, for checking it against `max.message.bytes`.
pub fn group_value_size(v: &GroupValue) -> usize {
    v.members
        .iter()
        .map(|m| {
            32 + m.member_id.len() + m.client_id.len() + m.client_host.len() + m.subscription.len() + m.assignment.len()
        })
        .sum::<usize>()
        + v.protocol_type.len()
        + 64
}

/// A bounds-checked reader over one key or value.
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

    fn nullable_string(&mut self) -> Result<Option<String>, StoreError> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        let len = len as usize;
        self.need(len)?;
        let s = std::str::from_utf8(&self.buf[..len]).map_err(|_| err(self.what, "string is not utf-8"))?.to_string();
        self.buf.advance(len);
        Ok(Some(s))
    }

    fn string(&mut self) -> Result<String, StoreError> {
        self.nullable_string()?.ok_or_else(|| err(self.what, "null where a string is required"))
    }

    fn bytes(&mut self) -> Result<Bytes, StoreError> {
        let len = self.i32()?;
        if len < 0 {
            return Ok(Bytes::new());
        }
        let len = len as usize;
        self.need(len)?;
        let b = Bytes::copy_from_slice(&self.buf[..len]);
        self.buf.advance(len);
        Ok(b)
    }
}

pub fn decode_key(bytes: &[u8]) -> Result<RecordKey, StoreError> {
    let mut r = Reader { buf: bytes, what: "key" };
    match r.i16()? {
        0 | 1 => Ok(RecordKey::Offset { group: r.string()?, topic: r.string()?, partition: r.i32()? }),
        2 => Ok(RecordKey::Group { group: r.string()? }),
        v => Err(err("key", format!("version {v} is not an offset or group key"))),
    }
}

pub fn decode_offset_value(bytes: &[u8]) -> Result<OffsetValue, StoreError> {
    let mut r = Reader { buf: bytes, what: "offset value" };
    let version = r.i16()?;
    let offset = r.i64()?;
    let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
    let metadata = r.string()?;
    let commit_timestamp_ms = r.i64()?;
    let expire_timestamp_ms = match version {
        1 => Some(r.i64()?),
        0..=3 => None,
        v => return Err(err("offset value", format!("version {v} is not supported"))),
    };
    Ok(OffsetValue { offset, leader_epoch, metadata, commit_timestamp_ms, expire_timestamp_ms })
}

pub fn decode_group_value(bytes: &[u8]) -> Result<GroupValue, StoreError> {
    let mut r = Reader { buf: bytes, what: "group value" };
    let version = r.i16()?;
    if !(0..=3).contains(&version) {
        return Err(err("group value", format!("version {version} is not supported")));
    }
    let protocol_type = r.string()?;
    let generation_id = r.i32()?;
    let protocol_name = r.nullable_string()?;
    let leader = r.nullable_string()?;
    let current_state_timestamp_ms = if version >= 2 { r.i64()? } else { -1 };
    let count = r.i32()?;
    // Each member takes at least 20 bytes: a count that cannot fit is corrupt, and must not
    // size an allocation.
    if count < 0 || count as usize > r.buf.remaining() / 20 {
        return Err(err("group value", format!("{count} members cannot fit in {} bytes", r.buf.remaining())));
    }
    let mut members = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let member_id = r.string()?;
        let group_instance_id = if version >= 3 { r.nullable_string()? } else { None };
        let client_id = r.string()?;
        let client_host = r.string()?;
        let rebalance_timeout_ms = if version >= 1 { r.i32()? } else { -1 };
        let session_timeout_ms = r.i32()?;
        let rebalance_timeout_ms = if version >= 1 { rebalance_timeout_ms } else { session_timeout_ms };
        let subscription = r.bytes()?;
        let assignment = r.bytes()?;
        members.push(MemberValue {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Ok(GroupValue { protocol_type, generation_id, protocol_name, leader, current_state_timestamp_ms, members })
}

/// Kafka's `ControlRecordType` of a transaction marker.
const CONTROL_TYPE_ABORT: i16 = 0;
const CONTROL_TYPE_COMMIT: i16 = 1;

/// Reads the key of a control record: `Some(true)` for a COMMIT marker, `Some(false)` for an
/// ABORT, `None` for any other control record (or a key too short to say).
pub(crate) fn transaction_marker(key: &[u8]) -> Option<bool> {
    let mut r = Reader { buf: key, what: "control record key" };
    let version = r.i16().ok()?;
    if version < 0 {
        return None;
    }
    match r.i16().ok()? {
        CONTROL_TYPE_COMMIT => Some(true),
        CONTROL_TYPE_ABORT => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn offset_key_and_value_match_kafkas_layout() {
        let (key, value) = StoreRecord::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
            value: Some(OffsetValue {
                offset: 42,
                leader_epoch: 7,
                metadata: "m".into(),
                commit_timestamp_ms: 1000,
                expire_timestamp_ms: None,
            }),
        }
        .encode();
        assert_eq!(&key[..], &[0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 3]);
        let value = value.unwrap();
        assert_eq!(&value[..2], &[0, 3]);
        assert_eq!(&value[2..10], &42i64.to_be_bytes());
        assert_eq!(&value[10..14], &7i32.to_be_bytes());
        assert_eq!(&value[14..17], &[0, 1, b'm']);
        assert_eq!(&value[17..], &1000i64.to_be_bytes());
    }

    #[test]
    fn older_value_versions_are_read() {
        // OffsetCommitValue v1: offset, metadata, commit timestamp, expire timestamp.
        let mut v1 = vec![0, 1];
        v1.extend_from_slice(&5i64.to_be_bytes());
        v1.extend_from_slice(&[0, 0]);
        v1.extend_from_slice(&10i64.to_be_bytes());
        v1.extend_from_slice(&20i64.to_be_bytes());
        let v = decode_offset_value(&v1).unwrap();
        assert_eq!((v.offset, v.leader_epoch, v.commit_timestamp_ms, v.expire_timestamp_ms), (5, -1, 10, Some(20)));
        assert!(decode_offset_value(&v1[..v1.len() - 1]).is_err());
        assert!(decode_key(&[0, 9, 0, 0]).is_err());
    }

    #[test]
    fn absurd_member_counts_are_refused_without_allocating() {
        let mut b = BytesMut::new();
        b.put_i16(3);
        put_string(&mut b, "consumer");
        b.put_i32(1);
        b.put_i16(-1);
        b.put_i16(-1);
        b.put_i64(0);
        b.put_i32(i32::MAX);
        assert!(decode_group_value(&b).is_err());
    }

    #[test]
    fn control_batches_are_valid_transaction_markers() {
        use spate_client::protocol::record::{decode_records, validate_batches};
        for commit in [true, false] {
            let batch = crate::txn::marker::control_batch(7, 3, commit, 11, 1000);
            let headers = validate_batches(&batch).unwrap();
            assert_eq!(headers.len(), 1);
            let h = headers[0];
            assert_eq!(h.attributes, 0x30);
            assert!(h.is_control() && h.is_transactional());
            assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence, h.records_count), (7, 3, -1, 1));
            let mut records = Vec::new();
            decode_records(&batch, 1 << 10, &mut records).unwrap();
            let key = records[0].key.clone().unwrap();
            assert_eq!(&key[..], &[0, 0, 0, commit as u8]);
            assert_eq!(transaction_marker(&key), Some(commit));
            let value = records[0].value.clone().unwrap();
            assert_eq!(&value[..], &[0, 0, 0, 0, 0, 11]);
        }
        assert_eq!(transaction_marker(&[0, 0, 0, 5]), None);
        assert_eq!(transaction_marker(&[0, 0]), None);
    }

    fn string() -> impl Strategy<Value = String> {
        "[a-z0-9._-]{0,20}"
    }

    fn record() -> impl Strategy<Value = StoreRecord> {
        let offset = (
            string(),
            string(),
            0..1000i32,
            proptest::option::of((any::<i64>(), any::<i32>(), string(), any::<i64>())),
        )
            .prop_map(|(group, topic, partition, v)| StoreRecord::Offset {
                group,
                topic,
                partition,
                value: v.map(|(offset, leader_epoch, metadata, ts)| OffsetValue {
                    offset,
                    leader_epoch,
                    metadata,
                    commit_timestamp_ms: ts,
                    expire_timestamp_ms: None,
                }),
            });
        let member = (
            string(),
            proptest::option::of(string()),
            string(),
            string(),
            any::<i32>(),
            any::<i32>(),
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(member_id, group_instance_id, client_id, client_host, r, s, sub, asg)| MemberValue {
                member_id,
                group_instance_id,
                client_id,
                client_host,
                rebalance_timeout_ms: r,
                session_timeout_ms: s,
                subscription: Bytes::from(sub),
                assignment: Bytes::from(asg),
            });
        let group = (
            string(),
            proptest::option::of((
                string(),
                any::<i32>(),
                proptest::option::of(string()),
                proptest::option::of(string()),
                any::<i64>(),
                proptest::collection::vec(member, 0..4),
            )),
        )
            .prop_map(|(group, v)| StoreRecord::Group {
                group,
                value: v.map(|(protocol_type, generation_id, protocol_name, leader, ts, members)| GroupValue {
                    protocol_type,
                    generation_id,
                    protocol_name,
                    leader,
                    current_state_timestamp_ms: ts,
                    members,
                }),
            });
        prop_oneof![offset, group]
    }

    proptest! {
        #[test]
        fn records_round_trip(record in record()) {
            let (key, value) = record.encode();
            prop_assert_eq!(StoreRecord::decode(&key, value.as_deref()).unwrap(), record);
        }

        #[test]
        fn arbitrary_bytes_never_panic(key in proptest::collection::vec(any::<u8>(), 0..64), value in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = StoreRecord::decode(&key, Some(&value));
        }
    }
}

//! A sans-IO decoder of PostgreSQL's `pgoutput` logical replication messages, protocol
//! version 1 (what `pg_logical_slot_peek_binary_changes(…, 'proto_version', '1', …)` returns
//! per row, one message per row). Tuple values are in text format (pgoutput's default); a
//! message borrows its values from the input bytes.
//!
//! Every length and count comes from the server and is checked against the bytes actually
//! present before anything is allocated; a malformed message is an error, never a panic.

use std::fmt;

/// PostgreSQL's epoch (2000-01-01) in microseconds after the Unix epoch.
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// A pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message<'a> {
    /// A transaction starts. `final_lsn` is its commit record's LSN.
    Begin {
        final_lsn: u64,
        commit_ts_us: i64,
        xid: u32,
    },
    /// The transaction ends; `end_lsn` is the end of its commit record (where a slot resumes).
    Commit {
        flags: u8,
        commit_lsn: u64,
        end_lsn: u64,
        commit_ts_us: i64,
    },
    /// The transaction came from another node (replication origin).
    Origin {
        commit_lsn: u64,
        name: &'a str,
    },
    /// A table's description; sent before the first change to it in each decoding session
    /// and again after its schema changed.
    Relation(Relation),
    /// A non-built-in data type used by a relation's column.
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Tuple<'a>,
    },
    /// `old` is the old key (`K`, REPLICA IDENTITY DEFAULT/INDEX when the key changed) or the
    /// whole old row (`O`, REPLICA IDENTITY FULL); absent when neither applies.
    Update {
        relation: u32,
        old: Option<(OldKind, Tuple<'a>)>,
        new: Tuple<'a>,
    },
    Delete {
        relation: u32,
        old: (OldKind, Tuple<'a>),
    },
    /// `options` bit 1: CASCADE, bit 2: RESTART IDENTITY.
    Truncate {
        options: u8,
        relations: Vec<u32>,
    },
}

/// What an old tuple holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// The replica identity's key columns (the others are null).
    Key,
    /// Every column (REPLICA IDENTITY FULL).
    Full,
}

/// A table as a Relation message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

/// A column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity key.
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// One row's values, in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple<'a>(pub Vec<Datum<'a>>);

/// One column value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datum<'a> {
    Null,
    /// A TOASTed value that did not change (its value is not in the WAL).
    UnchangedToast,
    /// The value in PostgreSQL's text output format.
    Text(&'a [u8]),
}

/// Why bytes are not a pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The message type byte (0 when the message was empty).
    pub tag: u8,
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed pgoutput message '{}': {}", self.tag as char, self.reason)
    }
}

impl std::error::Error for DecodeError {}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    tag: u8,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError { tag: self.tag, reason: reason.into() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| {
            self.err(format!("needs {n} bytes at byte {} but the message has {}", self.pos, self.buf.len()))
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(self.u32()? as i32)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A NUL-terminated string.
    fn cstr(&mut self) -> Result<&'a str, DecodeError> {
        let rest = &self.buf[self.pos..];
        let len = rest.iter().position(|&b| b == 0).ok_or_else(|| self.err("a string has no terminating NUL"))?;
        let s = std::str::from_utf8(&rest[..len]).map_err(|_| self.err("a name is not UTF-8"))?;
        self.pos += len + 1;
        Ok(s)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn tuple(&mut self) -> Result<Tuple<'a>, DecodeError> {
        let n = self.u16()? as usize;
        // Each column takes at least its kind byte: bound the allocation by the bytes present.
        if n > self.remaining() {
            return Err(self.err(format!("a tuple claims {n} columns in {} bytes", self.remaining())));
        }
        let mut cols = Vec::with_capacity(n);
        for _ in 0..n {
            cols.push(match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b't' => {
                    let len = self.u32()? as usize;
                    Datum::Text(self.take(len)?)
                }
                b'b' => return Err(self.err("binary tuple values are not requested and not supported")),
                other => return Err(self.err(format!("unknown tuple value kind {other:#04x}"))),
            });
        }
        Ok(Tuple(cols))
    }

    fn old_kind(&mut self, b: u8) -> Result<OldKind, DecodeError> {
        match b {
            b'K' => Ok(OldKind::Key),
            b'O' => Ok(OldKind::Full),
            other => Err(self.err(format!("expected old tuple K or O, found {other:#04x}"))),
        }
    }
}

/// Decodes one message. Trailing bytes are an error (they would mean we misread it).
pub fn decode(buf: &[u8]) -> Result<Message<'_>, DecodeError> {
    let tag = *buf.first().ok_or(DecodeError { tag: 0, reason: "empty message".into() })?;
    let mut r = Reader { buf, pos: 1, tag };
    let msg = match tag {
        b'B' => Message::Begin { final_lsn: r.u64()?, commit_ts_us: r.u64()? as i64, xid: r.u32()? },
        b'C' => {
            Message::Commit { flags: r.u8()?, commit_lsn: r.u64()?, end_lsn: r.u64()?, commit_ts_us: r.u64()? as i64 }
        }
        b'O' => Message::Origin { commit_lsn: r.u64()?, name: r.cstr()? },
        b'R' => {
            let oid = r.u32()?;
            let namespace = r.cstr()?.to_owned();
            let name = r.cstr()?.to_owned();
            let replica_identity = r.u8()?;
            let n = r.u16()? as usize;
            // A column takes at least 10 bytes (flags, NUL, type oid, modifier).
            if n.saturating_mul(10) > r.remaining() {
                return Err(r.err(format!("a relation claims {n} columns in {} bytes", r.remaining())));
            }
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let flags = r.u8()?;
                columns.push(Column {
                    key: flags & 1 == 1,
                    name: r.cstr()?.to_owned(),
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            Message::Relation(Relation { oid, namespace, name, replica_identity, columns })
        }
        b'Y' => Message::Type { oid: r.u32()?, namespace: r.cstr()?.to_owned(), name: r.cstr()?.to_owned() },
        b'I' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'N' => Message::Insert { relation, new: r.tuple()? },
                other => return Err(r.err(format!("expected new tuple N, found {other:#04x}"))),
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut kind = r.u8()?;
            let mut old = None;
            if kind != b'N' {
                let k = r.old_kind(kind)?;
                old = Some((k, r.tuple()?));
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(r.err(format!("expected new tuple N, found {kind:#04x}")));
            }
            Message::Update { relation, old, new: r.tuple()? }
        }
        b'D' => {
            let relation = r.u32()?;
            let b = r.u8()?;
            let k = r.old_kind(b)?;
            Message::Delete { relation, old: (k, r.tuple()?) }
        }
        b'T' => {
            let n = r.u32()? as usize;
            let options = r.u8()?;
            if n.saturating_mul(4) > r.remaining() {
                return Err(r.err(format!("a truncate claims {n} relations in {} bytes", r.remaining())));
            }
            let mut relations = Vec::with_capacity(n);
            for _ in 0..n {
                relations.push(r.u32()?);
            }
            Message::Truncate { options, relations }
        }
        other => return Err(r.err(format!("unknown message type {other:#04x}"))),
    };
    if r.remaining() != 0 {
        return Err(r.err(format!("{} bytes left after the message", r.remaining())));
    }
    Ok(msg)
}

/// Whether `a` comes before `b` in PostgreSQL's circular 32-bit transaction id space
/// (`TransactionIdPrecedes` for normal ids).
pub fn xid_precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds messages the way pgoutput writes them (big-endian, NUL-terminated names).
    #[derive(Default)]
    struct B(Vec<u8>);
    impl B {
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn u16(mut self, v: u16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn s(mut self, v: &str) -> Self {
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, v: &str) -> Self {
            let mut b = self.u8(b't').u32(v.len() as u32);
            b.0.extend_from_slice(v.as_bytes());
            b
        }
    }

    #[test]
    fn begin_and_commit() {
        let b = B::default().u8(b'B').u64(0x1_0000_0010).u64(12345).u32(777).0;
        assert_eq!(decode(&b).unwrap(), Message::Begin { final_lsn: 0x1_0000_0010, commit_ts_us: 12345, xid: 777 });
        let c = B::default().u8(b'C').u8(0).u64(0x10).u64(0x48).u64(99).0;
        assert_eq!(
            decode(&c).unwrap(),
            Message::Commit { flags: 0, commit_lsn: 0x10, end_lsn: 0x48, commit_ts_us: 99 }
        );
    }

    #[test]
    fn relation_type_and_origin() {
        let r = B::default()
            .u8(b'R')
            .u32(16384)
            .s("public")
            .s("users")
            .u8(b'd')
            .u16(2)
            .u8(1)
            .s("id")
            .u32(23)
            .u32(u32::MAX)
            .u8(0)
            .s("name")
            .u32(25)
            .u32(u32::MAX)
            .0;
        let Message::Relation(rel) = decode(&r).unwrap() else { panic!() };
        assert_eq!(
            (rel.oid, rel.namespace.as_str(), rel.name.as_str(), rel.replica_identity),
            (16384, "public", "users", b'd')
        );
        assert_eq!(rel.columns[0], Column { key: true, name: "id".into(), type_oid: 23, type_modifier: -1 });
        assert!(!rel.columns[1].key);
        let y = B::default().u8(b'Y').u32(90000).s("public").s("mood").0;
        assert_eq!(decode(&y).unwrap(), Message::Type { oid: 90000, namespace: "public".into(), name: "mood".into() });
        let o = B::default().u8(b'O').u64(5).s("node1").0;
        assert_eq!(decode(&o).unwrap(), Message::Origin { commit_lsn: 5, name: "node1" });
    }

    #[test]
    fn insert_update_delete_truncate() {
        let i = B::default().u8(b'I').u32(7).u8(b'N').u16(3).text("42").u8(b'n').u8(b'u').0;
        assert_eq!(
            decode(&i).unwrap(),
            Message::Insert { relation: 7, new: Tuple(vec![Datum::Text(b"42"), Datum::Null, Datum::UnchangedToast]) }
        );
        // Update without an old tuple (key unchanged, REPLICA IDENTITY DEFAULT).
        let u = B::default().u8(b'U').u32(7).u8(b'N').u16(1).text("x").0;
        assert_eq!(
            decode(&u).unwrap(),
            Message::Update { relation: 7, old: None, new: Tuple(vec![Datum::Text(b"x")]) }
        );
        // With the old key, and with the full old row.
        for (tag, kind) in [(b'K', OldKind::Key), (b'O', OldKind::Full)] {
            let u = B::default().u8(b'U').u32(7).u8(tag).u16(1).text("1").u8(b'N').u16(1).text("2").0;
            assert_eq!(
                decode(&u).unwrap(),
                Message::Update {
                    relation: 7,
                    old: Some((kind, Tuple(vec![Datum::Text(b"1")]))),
                    new: Tuple(vec![Datum::Text(b"2")])
                }
            );
        }
        let d = B::default().u8(b'D').u32(7).u8(b'K').u16(2).text("1").u8(b'n').0;
        assert_eq!(
            decode(&d).unwrap(),
            Message::Delete { relation: 7, old: (OldKind::Key, Tuple(vec![Datum::Text(b"1"), Datum::Null])) }
        );
        let t = B::default().u8(b'T').u32(2).u8(1).u32(7).u32(8).0;
        assert_eq!(decode(&t).unwrap(), Message::Truncate { options: 1, relations: vec![7, 8] });
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let good = B::default().u8(b'I').u32(7).u8(b'N').u16(2).text("42").u8(b'n').0;
        // Every truncation of a valid message fails cleanly.
        for len in 0..good.len() {
            assert!(decode(&good[..len]).is_err(), "prefix of {len} bytes decoded");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode(&trailing).unwrap_err().reason.contains("left after"));
        // Huge claimed counts are refused before allocating.
        let huge = B::default().u8(b'I').u32(7).u8(b'N').u16(u16::MAX).0;
        assert!(decode(&huge).unwrap_err().reason.contains("claims"));
        let huge_t = B::default().u8(b'T').u32(u32::MAX).u8(0).0;
        assert!(decode(&huge_t).unwrap_err().reason.contains("claims"));
        let huge_len = B::default().u8(b'I').u32(7).u8(b'N').u16(1).u8(b't').u32(u32::MAX).0;
        assert!(decode(&huge_len).is_err());
        assert!(decode(b"Z").unwrap_err().reason.contains("unknown message type"));
        let bad_old = B::default().u8(b'D').u32(7).u8(b'X').0;
        assert!(decode(&bad_old).is_err());
    }

    #[test]
    fn xids_compare_circularly() {
        assert!(xid_precedes(3, 4));
        assert!(!xid_precedes(4, 3));
        assert!(xid_precedes(u32::MAX - 1, 5));
    }
}

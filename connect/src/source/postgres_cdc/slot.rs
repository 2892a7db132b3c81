//! Position logic of the replication slot, sans IO: the source offset (Debezium's shape), the
//! snapshot's visibility filter, and the SQL the task runs.
//!
//! **Why the SQL-level slot functions.** The `postgres`/`tokio-postgres` crates we already use
//! (0.19/0.7) speak neither `replication=database` connections nor CopyBoth, so neither
//! `CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT` nor `START_REPLICATION` is available; the crates
//! that add them are forks or unmaintained. PostgreSQL's SQL functions give the same data over
//! an ordinary connection: `pg_logical_slot_peek_binary_changes` returns pgoutput messages
//! without consuming them, and `pg_replication_slot_advance` moves the slot's confirmed LSN
//! only when the runtime says the events are stored ([`crate::connector::SourceTask::commit`]).
//! The cost: every peek decodes again from the slot's confirmed position, so the task keeps
//! what it emitted in memory and filters it out on the server ([`PEEK_SQL`]), and the
//! unconfirmed range stays short because offsets are committed every
//! `offset.flush.interval.ms`.
//!
//! **Snapshot consistency without an exported snapshot.** The slot is created first (so it
//! holds every transaction that commits afterwards), then the snapshot runs in a
//! `REPEATABLE READ` transaction that records `pg_current_snapshot()` and the WAL insert
//! position. Streaming then skips exactly the transactions that snapshot already saw (xid
//! visible in it) — those are the ones whose changes are in the snapshot rows — and every
//! transaction whose commit is at or after the recorded WAL position is newer than the
//! snapshot, so the filter is dropped from there on. The result is what an exported snapshot
//! gives: each change once, either in the snapshot or in the stream.

use serde_json::{json, Value as Json};

use super::pgoutput::xid_precedes;

/// Peeks pgoutput messages and drops, on the server, whole transactions whose commit ends at
/// or before `$4` (what this task already emitted but the slot has not confirmed yet).
/// Relation and Type messages always come through: a new decoding session sends each once
/// and the changes after it rely on it. Parameters: slot, max changes, publication, emitted
/// end LSN. Columns: lsn, data, total rows peeked. The `lsn` column is what logical decoding
/// reports as the write position: the transaction's first LSN for Begin, the change's own WAL
/// record LSN for a change (observed on PostgreSQL 15: 0/1527AC8, 0/1527B48, 0/1527BC8 for
/// three inserts of one transaction), the commit end for Commit.
pub const PEEK_SQL: &str = "SELECT lsn, data, total FROM (\
    SELECT lsn, data, n, count(*) OVER () AS total, \
    min(CASE WHEN get_byte(data, 0) = 67 THEN lsn END) OVER (ORDER BY n DESC) AS commit_end \
    FROM pg_logical_slot_peek_binary_changes($1, NULL, $2, 'proto_version', '1', 'publication_names', $3) \
    WITH ORDINALITY AS c(lsn, xid, data, n)) s \
    WHERE commit_end IS NULL OR commit_end > $4 OR get_byte(data, 0) IN (82, 89) ORDER BY n";

/// Confirms `$2` on slot `$1` unless it is already there (advancing backwards is an error).
pub const ADVANCE_SQL: &str = "SELECT pg_replication_slot_advance(slot_name, $2) FROM pg_replication_slots \
    WHERE slot_name = $1 AND confirmed_flush_lsn < $2";

/// The slot's confirmed LSN and the bytes of WAL it holds back.
pub const SLOT_SQL: &str = "SELECT confirmed_flush_lsn, \
    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 FROM pg_replication_slots \
    WHERE slot_name = $1 AND database = current_database()";

/// The snapshot: xmin, xmax, in-progress xids (as text: xid8 has no Rust mapping in the
/// crate) and the WAL insert position taken after it.
pub const SNAPSHOT_SQL: &str = "SELECT pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text, \
    coalesce((SELECT string_agg(x::text, ',') FROM pg_snapshot_xip(s) AS x), ''), pg_current_wal_insert_lsn() \
    FROM pg_current_snapshot() AS s";

/// Which transactions the snapshot already contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFilter {
    /// Low 32 bits of the snapshot's xmin/xmax (pgoutput sends 32-bit xids).
    pub xmin: u32,
    pub xmax: u32,
    pub xip: Vec<u32>,
    /// Transactions whose commit record starts at or after this WAL position are newer than
    /// the snapshot.
    pub until_lsn: u64,
}

impl SnapshotFilter {
    /// From the text columns of [`SNAPSHOT_SQL`].
    pub fn parse(xmin: &str, xmax: &str, xip: &str, until_lsn: u64) -> Result<SnapshotFilter, String> {
        // xid8 is epoch << 32 | xid; the 32-bit xid is the low half.
        let low = |s: &str| s.trim().parse::<u64>().map(|v| v as u32).map_err(|_| format!("bad xid {s:?}"));
        Ok(SnapshotFilter {
            xmin: low(xmin)?,
            xmax: low(xmax)?,
            xip: xip.split(',').filter(|s| !s.is_empty()).map(low).collect::<Result<_, _>>()?,
            until_lsn,
        })
    }

    /// Whether the transaction `xid` committing at `commit_lsn` is already in the snapshot.
    pub fn contains(&self, xid: u32, commit_lsn: u64) -> bool {
        if commit_lsn >= self.until_lsn {
            return false;
        }
        xid_precedes(xid, self.xmin) || (xid_precedes(xid, self.xmax) && !self.xip.contains(&xid))
    }

    pub fn to_json(&self) -> Json {
        json!({"xmin": self.xmin, "xmax": self.xmax, "xip": self.xip, "until_lsn": self.until_lsn})
    }

    pub fn from_json(j: &Json) -> Option<SnapshotFilter> {
        let u32_of = |v: &Json| v.as_u64().and_then(|v| u32::try_from(v).ok());
        Some(SnapshotFilter {
            xmin: u32_of(j.get("xmin")?)?,
            xmax: u32_of(j.get("xmax")?)?,
            xip: j.get("xip")?.as_array()?.iter().map(u32_of).collect::<Option<_>>()?,
            until_lsn: j.get("until_lsn")?.as_u64()?,
        })
    }
}

/// The source offset of the one source partition `{"server": <topic.prefix>}`, in Debezium's
/// keys: `lsn` (end of the last emitted transaction's commit record: where the slot may be
/// confirmed), `lsn_commit`, `txId`, `ts_usec`; `snapshot`/`last_snapshot_record` during the
/// snapshot; `snapshot_filter` while the stream may still repeat snapshot rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offset {
    pub lsn: u64,
    pub lsn_commit: Option<u64>,
    pub tx_id: Option<u32>,
    pub ts_usec: Option<i64>,
    /// A snapshot is in progress (its records are being emitted).
    pub snapshot: bool,
    /// This offset ends the snapshot.
    pub last_snapshot_record: bool,
    pub filter: Option<SnapshotFilter>,
}

impl Offset {
    pub fn to_json(&self) -> Json {
        let mut o = json!({"lsn": self.lsn});
        if let Some(c) = self.lsn_commit {
            o["lsn_commit"] = json!(c);
        }
        if let Some(x) = self.tx_id {
            o["txId"] = json!(x);
        }
        if let Some(t) = self.ts_usec {
            o["ts_usec"] = json!(t);
        }
        if self.snapshot {
            o["snapshot"] = json!(true);
        }
        if self.last_snapshot_record {
            o["last_snapshot_record"] = json!(true);
        }
        if let Some(f) = &self.filter {
            o["snapshot_filter"] = f.to_json();
        }
        o
    }

    pub fn from_json(j: &Json) -> Option<Offset> {
        Some(Offset {
            lsn: j.get("lsn")?.as_u64()?,
            lsn_commit: j.get("lsn_commit").and_then(Json::as_u64),
            tx_id: j.get("txId").and_then(Json::as_u64).and_then(|v| u32::try_from(v).ok()),
            ts_usec: j.get("ts_usec").and_then(Json::as_i64),
            snapshot: j.get("snapshot").and_then(Json::as_bool).unwrap_or(false),
            last_snapshot_record: j.get("last_snapshot_record").and_then(Json::as_bool).unwrap_or(false),
            filter: j.get("snapshot_filter").and_then(SnapshotFilter::from_json),
        })
    }

    /// Whether a task resuming from this offset must take the snapshot again (one was under
    /// way and did not finish).
    pub fn snapshot_unfinished(&self) -> bool {
        self.snapshot && !self.last_snapshot_record
    }
}

/// What to do at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPlan {
    /// Snapshot the tables, then stream.
    Snapshot,
    /// Stream from the slot, skipping what the stored offset covers.
    Stream,
}

/// The start decision from `snapshot.mode` and the stored offset.
pub fn start_plan(snapshot_mode: &str, stored: Option<&Offset>) -> StartPlan {
    match (snapshot_mode, stored) {
        ("never", _) => StartPlan::Stream,
        (_, None) => StartPlan::Snapshot,
        (_, Some(o)) if o.snapshot_unfinished() => StartPlan::Snapshot,
        _ => StartPlan::Stream,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_skips_exactly_what_the_snapshot_saw() {
        let f = SnapshotFilter::parse("100", "105", "101,103", 5000).unwrap();
        assert!(f.contains(99, 10), "committed before xmin");
        assert!(f.contains(102, 10), "below xmax and not in progress");
        assert!(!f.contains(101, 10), "in progress at the snapshot");
        assert!(!f.contains(105, 10), "started after the snapshot");
        assert!(!f.contains(99, 5000), "commits at or after until_lsn are newer");
        // Epoch bits of xid8 are dropped.
        let e = SnapshotFilter::parse(&((1u64 << 32) + 7).to_string(), "9", "", 1).unwrap();
        assert_eq!(e.xmin, 7);
        assert!(SnapshotFilter::parse("x", "1", "", 1).is_err());
        assert_eq!(SnapshotFilter::from_json(&f.to_json()), Some(f));
    }

    #[test]
    fn offsets_round_trip_and_decide_the_start() {
        let o = Offset {
            lsn: 123,
            lsn_commit: Some(100),
            tx_id: Some(7),
            ts_usec: Some(5),
            snapshot: false,
            last_snapshot_record: false,
            filter: Some(SnapshotFilter { xmin: 1, xmax: 2, xip: vec![], until_lsn: 9 }),
        };
        let j = o.to_json();
        assert_eq!(j["lsn"], 123);
        assert_eq!(j["txId"], 7);
        assert_eq!(Offset::from_json(&j), Some(o.clone()));
        assert_eq!(start_plan("initial", None), StartPlan::Snapshot);
        assert_eq!(start_plan("never", None), StartPlan::Stream);
        assert_eq!(start_plan("initial", Some(&o)), StartPlan::Stream);
        let mid = Offset { snapshot: true, ..Offset::default() };
        assert_eq!(start_plan("initial", Some(&mid)), StartPlan::Snapshot);
        let done = Offset { snapshot: true, last_snapshot_record: true, ..Offset::default() };
        assert_eq!(start_plan("initial_only", Some(&done)), StartPlan::Stream);
        assert!(Offset::from_json(&json!({"x": 1})).is_none());
    }
}

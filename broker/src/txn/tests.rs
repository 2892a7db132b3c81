//! A partition's transactions end to end (no network): the LSO, aborted-transaction listing,
//! rebuild at open, marker fencing, and compaction removing aborted records.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use spate_client::protocol::compression::Compression;
use spate_client::protocol::record::{decode_records, validate_batches, BatchBuilder, BatchIter, Record};

use crate::config::{BrokerConfig, FlushMode};
use crate::log::{CleanupPolicy, CompactionConfig, LogConfig, OffsetMap};
use crate::partition::{Partition, TopicPartition};
use crate::producer_state::ProducerStateError;
use crate::txn::tracker::AbortedTxn;

fn open(dir: &std::path::Path, config: LogConfig) -> Arc<Partition> {
    let broker = BrokerConfig { log_flush_mode: FlushMode::PageCache, ..BrokerConfig::default() };
    let tp = TopicPartition { topic: "t".into(), partition: 0 };
    Arc::new(
        Partition::open(dir.join("t-0"), tp, config, 1 << 20, &broker, Arc::new(crate::log_dir::LogDir::new(dir)), 0)
            .unwrap(),
    )
}

/// Keyed records `(key, value)`; `txn` = (producer id, epoch, base sequence) for a
/// transactional batch.
fn append(p: &Partition, records: &[(&str, &str)], txn: Option<(i64, i16, i32)>, now_ms: i64) -> i64 {
    let mut b = BatchBuilder::new(Compression::None);
    for (k, v) in records {
        b.push(&Record {
            key: Some(Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: Vec::new(),
            timestamp_ms: now_ms,
        });
    }
    let (pid, epoch, seq) = txn.unwrap_or((-1, -1, -1));
    let batch = b.finish(pid, epoch, seq, txn.is_some()).unwrap();
    let headers = validate_batches(&batch).unwrap();
    p.append(&batch, &headers, now_ms).unwrap().base_offset
}

/// `(key, value)` of every data record in the log, in offset order.
fn contents(p: &Partition) -> Vec<(String, String)> {
    let bytes = p.read(0, 1 << 20, i64::MAX).unwrap();
    let mut out = Vec::new();
    for (position, header) in BatchIter::new(&bytes) {
        if header.is_control() {
            continue;
        }
        let mut records = Vec::new();
        decode_records(&bytes.slice(position..position + header.total_bytes()), 1 << 20, &mut records).unwrap();
        for r in records {
            let text = |b: Option<Bytes>| String::from_utf8(b.unwrap().to_vec()).unwrap();
            out.push((text(r.key), text(r.value)));
        }
    }
    out
}

#[test]
fn the_lso_and_aborted_transactions_follow_markers_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    append(&p, &[("a", "plain")], None, 1);
    let first = append(&p, &[("a", "t7"), ("b", "t7")], Some((7, 0, 0)), 2);
    assert_eq!(first, 1);
    append(&p, &[("c", "plain")], None, 3);
    assert_eq!(p.high_watermark(), 4);
    assert_eq!(p.last_stable_offset(), 1, "the open transaction pins the LSO at its first offset");
    let marker = p.append_marker(7, 0, false, 0, 4).unwrap().base_offset;
    assert_eq!(marker, 4);
    assert_eq!(p.last_stable_offset(), 5);
    assert_eq!(p.aborted_transactions(0, 5), vec![AbortedTxn { producer_id: 7, first_offset: 1, last_offset: 4 }]);
    assert!(p.aborted_transactions(5, 100).is_empty());
    // Another transaction, still open when the partition closes.
    append(&p, &[("d", "t8")], Some((8, 0, 0)), 5);
    assert_eq!(p.last_stable_offset(), 5);
    p.close().unwrap();
    drop(p);

    let p = open(dir.path(), LogConfig::default());
    assert_eq!(p.last_stable_offset(), 5, "the open transaction is rebuilt from the log");
    assert_eq!(p.aborted_transactions(0, 10), vec![AbortedTxn { producer_id: 7, first_offset: 1, last_offset: 4 }]);
    assert!(p.has_ongoing_transaction(8));
    p.append_marker(8, 0, true, 0, 6).unwrap();
    assert_eq!(p.last_stable_offset(), p.high_watermark());
    assert_eq!(p.aborted_transactions(0, 10).len(), 1, "a commit is not an abort");
}

#[test]
fn markers_fence_older_epochs_and_restart_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    append(&p, &[("a", "1")], Some((9, 2, 0)), 1);
    append(&p, &[("a", "2")], Some((9, 2, 1)), 2);
    // A marker of an older epoch is refused (a coordinator that lost track).
    let err = p.append_marker(9, 1, true, 0, 3).unwrap_err();
    assert!(matches!(err, crate::error::BrokerError::ProducerState(ProducerStateError::InvalidProducerEpoch { .. })));
    // A commit in the same epoch keeps the sequence going...
    p.append_marker(9, 2, true, 0, 3).unwrap();
    append(&p, &[("a", "3")], Some((9, 2, 2)), 4);
    // ...an abort that bumped the epoch (fencing) restarts it at 0 and fences the old epoch.
    p.append_marker(9, 3, false, 0, 5).unwrap();
    let mut b = BatchBuilder::new(Compression::None);
    b.push(&Record { key: None, value: Some(Bytes::from_static(b"zombie")), headers: Vec::new(), timestamp_ms: 6 });
    let zombie = b.finish(9, 2, 3, true).unwrap();
    let headers = validate_batches(&zombie).unwrap();
    assert!(p.append(&zombie, &headers, 6).is_err(), "the fenced epoch cannot write");
    append(&p, &[("a", "4")], Some((9, 3, 0)), 7);
}

#[test]
fn compaction_removes_aborted_records_and_never_lets_them_shadow_committed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1 << 20,
        segment_ms: 10,
        retention_ms: -1,
        retention_bytes: -1,
        index_interval_bytes: 64,
        cleanup_policy: CleanupPolicy::COMPACT,
        compaction: CompactionConfig {
            delete_retention_ms: 10_000,
            min_cleanable_dirty_ratio: 0.0,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
        },
    };
    let p = open(dir.path(), config);
    // Every append is 100 ms after the last and segment.ms is 10: each rolls a segment.
    append(&p, &[("k", "committed-1")], None, 100);
    append(&p, &[("k", "aborted"), ("x", "aborted")], Some((5, 0, 0)), 200);
    p.append_marker(5, 0, false, 0, 300).unwrap();
    append(&p, &[("j", "committed-2")], Some((6, 0, 0)), 400);
    p.append_marker(6, 0, true, 0, 500).unwrap();
    append(&p, &[("tail", "active segment")], None, 600);
    let mut map = OffsetMap::new(1 << 20);
    while p.clean(&mut map, 10_000, &AtomicBool::new(false)).unwrap().is_some() {}
    let left = contents(&p);
    assert!(left.contains(&("k".into(), "committed-1".into())), "the aborted value must not shadow it: {left:?}");
    assert!(!left.iter().any(|(_, v)| v == "aborted"), "aborted records are removed: {left:?}");
    assert!(left.contains(&("j".into(), "committed-2".into())));
    // Markers stay, so a reopened partition still knows what was aborted.
    p.close().unwrap();
    drop(p);
    let p = open(dir.path(), LogConfig::default());
    assert_eq!(p.last_stable_offset(), p.high_watermark());
}

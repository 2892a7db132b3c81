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
    // Markers stay, and the cleaned segments carry their .txnindex entries, so a reopened
    // partition still knows what was aborted without reading the log.
    let aborted = p.aborted_transactions(0, i64::MAX);
    assert_eq!(aborted.len(), 1);
    p.close().unwrap();
    drop(p);
    let p = open(dir.path(), LogConfig::default());
    assert_eq!(p.last_stable_offset(), p.high_watermark());
    assert_eq!(p.aborted_transactions(0, i64::MAX), aborted);
    assert_eq!(p.restored_from(), p.high_watermark());
}

/// One append per 100 ms with `segment.ms` 10: every append rolls a segment.
fn rolling_config() -> LogConfig {
    LogConfig { segment_bytes: 1 << 20, segment_ms: 10, retention_ms: -1, retention_bytes: -1, ..LogConfig::default() }
}

/// What a restart must bring back: LSO, aborted transactions, open transactions and
/// idempotent producer state.
fn txn_state(p: &Partition) -> (i64, Vec<AbortedTxn>, Vec<crate::producer_state::ActiveProducer>) {
    (p.last_stable_offset(), p.aborted_transactions(0, i64::MAX), p.describe_producers().unwrap())
}

fn files_with(dir: &std::path::Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(suffix))
        .collect();
    names.sort();
    names
}

#[test]
fn a_restart_restores_transactions_from_a_snapshot_and_txn_indexes_not_the_whole_log() {
    let dir = tempfile::tempdir().unwrap();
    let part_dir = dir.path().join("t-0");
    let p = open(dir.path(), rolling_config());
    let now = std::cell::Cell::new(0);
    let tick = || {
        now.set(now.get() + 100);
        now.get()
    };
    // Aborted transactions in early segments, a commit, an idempotent producer, and a
    // transaction of producer 9 that opens early and is still open at the end.
    append(&p, &[("a", "1")], Some((5, 0, 0)), tick());
    append(&p, &[("o", "open")], Some((9, 0, 0)), tick());
    p.append_marker(5, 0, false, 0, tick()).unwrap();
    append(&p, &[("b", "1")], Some((6, 0, 0)), tick());
    append(&p, &[("b", "2")], Some((6, 0, 1)), tick());
    p.append_marker(6, 0, true, 0, tick()).unwrap();
    append(&p, &[("c", "1")], Some((7, 0, 0)), tick());
    p.append_marker(7, 0, false, 0, tick()).unwrap();
    for i in 0..4 {
        append(&p, &[("plain", "x")], None, tick());
        let mut b = BatchBuilder::new(Compression::None);
        b.push(&Record {
            key: None,
            value: Some(Bytes::from_static(b"idem")),
            headers: Vec::new(),
            timestamp_ms: now.get(),
        });
        let batch = b.finish(11, 0, i, false).unwrap();
        p.append(&batch, &validate_batches(&batch).unwrap(), tick()).unwrap();
    }
    let before = txn_state(&p);
    assert_eq!(before.0, 1, "producer 9's transaction pins the LSO");
    assert_eq!(before.1.len(), 2);
    assert!(before.2.iter().any(|a| a.producer_id == 9 && a.current_txn_start_offset == 1));
    let log_end = p.high_watermark();
    assert!(files_with(&part_dir, ".txnindex").len() >= 10, "closed segments have their .txnindex");
    assert_eq!(files_with(&part_dir, ".snapshot").len(), 3, "the newest three roll snapshots are kept");

    // A crash (no close) after the flusher synced everything: only the active segment is
    // replayed, from its roll snapshot.
    p.flush().unwrap();
    drop(p);
    let p = open(dir.path(), rolling_config());
    assert_eq!(txn_state(&p), before);
    let active_base = p.restored_from();
    assert!(active_base > 1 && active_base < log_end, "replayed from {active_base}, log end {log_end}");

    // A clean close: nothing is replayed.
    p.close().unwrap();
    drop(p);
    let p = open(dir.path(), rolling_config());
    assert_eq!(txn_state(&p), before);
    assert_eq!(p.restored_from(), log_end);
    drop(p);

    // Without snapshots a transactional log is read from its start, to the same state.
    for name in files_with(&part_dir, ".snapshot") {
        std::fs::remove_file(part_dir.join(name)).unwrap();
    }
    let p = open(dir.path(), rolling_config());
    assert_eq!(p.restored_from(), 0);
    assert_eq!(txn_state(&p), before);
    drop(p);

    // A lost .txnindex of an early segment: its aborted transactions are found by replay
    // and the file is written again.
    let lost = files_with(&part_dir, ".txnindex")[2].clone();
    std::fs::remove_file(part_dir.join(&lost)).unwrap();
    let p = open(dir.path(), rolling_config());
    assert_eq!(txn_state(&p), before);
    assert!(files_with(&part_dir, ".txnindex").contains(&lost));

    // The transaction still open is ended by its marker as usual after all this.
    p.append_marker(9, 0, false, 0, tick()).unwrap();
    assert_eq!(p.last_stable_offset(), p.high_watermark());
    assert_eq!(p.aborted_transactions(0, i64::MAX).len(), 3);
}

#[test]
fn a_torn_txnindex_or_snapshot_is_rebuilt_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let part_dir = dir.path().join("t-0");
    let p = open(dir.path(), rolling_config());
    append(&p, &[("a", "1")], Some((5, 0, 0)), 100);
    p.append_marker(5, 0, false, 0, 200).unwrap();
    append(&p, &[("b", "1")], Some((6, 0, 0)), 300);
    append(&p, &[("c", "1")], None, 400);
    let before = txn_state(&p);
    p.close().unwrap();
    drop(p);
    // Empty every .txnindex (created, never synced, then a power loss) and tear every snapshot.
    for name in files_with(&part_dir, ".txnindex") {
        std::fs::write(part_dir.join(name), b"").unwrap();
    }
    for name in files_with(&part_dir, ".snapshot") {
        let path = part_dir.join(name);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    }
    let p = open(dir.path(), rolling_config());
    assert_eq!(p.restored_from(), 0, "nothing damaged is trusted");
    assert_eq!(txn_state(&p), before);
}

#[test]
fn a_snapshot_above_the_recovered_log_end_is_deleted_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let part_dir = dir.path().join("t-0");
    let p = open(dir.path(), rolling_config());
    append(&p, &[("a", "1")], Some((5, 0, 0)), 100);
    p.append_marker(5, 0, true, 0, 200).unwrap();
    let before = txn_state(&p);
    p.close().unwrap();
    drop(p);
    // A snapshot of a longer log that a crash cut (it claims an open transaction).
    let stale = crate::producer_snapshot::ProducerSnapshot { offset: 50, producers: Vec::new(), ongoing: vec![(9, 3)] };
    crate::producer_snapshot::write(&part_dir, &stale, true).unwrap();
    let p = open(dir.path(), rolling_config());
    assert_eq!(txn_state(&p), before);
    assert!(!files_with(&part_dir, ".snapshot").contains(&format!("{:020}.snapshot", 50)));
}

#[test]
fn a_marker_below_the_log_start_is_replayed_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    append(&p, &[("a", "t5"), ("b", "t5")], Some((5, 0, 0)), 100);
    p.append_marker(5, 0, false, 0, 150).unwrap();
    append(&p, &[("c", "plain"), ("d", "plain")], None, 200);
    // DeleteRecords past the ABORT marker at offset 2: the replay from the first segment's
    // base reads it below the log start (it failed the open with OffsetOutOfRange).
    p.delete_records_before(3).unwrap();
    let (lso, _, producers) = txn_state(&p);
    let readable = p.aborted_transactions(3, i64::MAX);
    p.flush().unwrap();
    drop(p);
    let p = open(dir.path(), LogConfig::default());
    assert_eq!(p.restored_from(), 0, "replayed from the first segment's base");
    // The aborted transaction lies wholly below the log start: no fetch needs it any more.
    let (lso_after, _, producers_after) = txn_state(&p);
    assert_eq!((lso_after, producers_after), (lso, producers));
    assert_eq!(p.aborted_transactions(3, i64::MAX), readable);
}

#[test]
fn a_log_start_inside_a_transaction_keeps_it_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    append(&p, &[("a", "t5"), ("b", "t5"), ("c", "t5")], Some((5, 0, 0)), 100);
    append(&p, &[("d", "plain")], None, 200);
    // DeleteRecords up to the middle of producer 5's open transaction.
    p.delete_records_before(1).unwrap();
    let before = txn_state(&p);
    assert_eq!(before.0, 0, "the open transaction still pins the LSO");
    p.flush().unwrap();
    drop(p);
    let p = open(dir.path(), LogConfig::default());
    assert_eq!(txn_state(&p), before);
    p.append_marker(5, 0, false, 0, 300).unwrap();
    assert_eq!(
        p.aborted_transactions(0, i64::MAX),
        vec![AbortedTxn { producer_id: 5, first_offset: 0, last_offset: 4 }]
    );
}

use std::collections::BTreeMap;

use spate_client::protocol::compression::Compression;
use spate_client::protocol::record::{decode_records, validate_batches, validate_stored_batch, BatchBuilder, Record};

use super::*;
use crate::log::{CleanupPolicy, CompactionConfig, LogConfig};

const EPOCH: i32 = 2;
/// Appends are this far apart in time, and `segment.ms` is shorter, so every append after the
/// first rolls a new segment.
const STEP_MS: i64 = 100;

fn compact_config() -> LogConfig {
    LogConfig {
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
    }
}

/// One keyed record: `(key, value)`; `None` values are tombstones.
type Kv<'a> = (&'a str, Option<&'a str>);

fn keyed_batch(records: &[Kv<'_>], timestamp_ms: i64, codec: Compression, producer: Option<(i64, i16, i32)>) -> Bytes {
    let mut builder = BatchBuilder::new(codec);
    for (i, (k, v)) in records.iter().enumerate() {
        builder.push(&Record {
            key: Some(Bytes::copy_from_slice(k.as_bytes())),
            value: v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: Vec::new(),
            timestamp_ms: timestamp_ms + i as i64,
        });
    }
    let (pid, epoch, seq) = producer.unwrap_or((-1, -1, -1));
    builder.finish(pid, epoch, seq, false).unwrap()
}

/// A log under test with its own clock.
struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    log: Log,
    now_ms: i64,
}

impl Fixture {
    fn new(config: LogConfig) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let log = Log::open(path.clone(), config, 1_000).unwrap();
        Fixture { _dir: dir, path, log, now_ms: 1_000 }
    }

    /// Appends one batch, in a segment of its own (after the first).
    fn append(&mut self, records: &[Kv<'_>]) -> i64 {
        self.append_with(records, Compression::None, None)
    }

    fn append_with(&mut self, records: &[Kv<'_>], codec: Compression, producer: Option<(i64, i16, i32)>) -> i64 {
        self.now_ms += STEP_MS;
        let batch = keyed_batch(records, self.now_ms, codec, producer);
        let headers = validate_batches(&batch).unwrap();
        self.log.append(&batch, &headers, EPOCH, self.now_ms).unwrap().base_offset
    }

    fn clean(&mut self) -> Option<CleanStats> {
        let mut map = OffsetMap::new(1 << 20);
        self.log.clean(&mut map, self.now_ms, i64::MAX).unwrap()
    }

    fn reopen(&mut self) {
        let config = *self.log.config();
        let log = Log::open(self.path.clone(), config, self.now_ms).unwrap();
        self.log = log;
    }

    fn files_with_suffix(&self, suffix: &str) -> Vec<String> {
        fs::read_dir(&self.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(suffix))
            .collect()
    }
}

/// Every record in the log as (offset, key, value), read the way a consumer would: fetches
/// from the next offset after the last batch seen. Checks each stored batch on the way.
fn records(log: &Log) -> Vec<(i64, String, Option<String>)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let bytes = log.read(offset, 300, i64::MAX).unwrap().read().unwrap();
        if bytes.is_empty() {
            break;
        }
        let mut position = 0;
        while position < bytes.len() {
            let header = validate_stored_batch(&bytes[position..], position).unwrap();
            assert_eq!(header.partition_leader_epoch, EPOCH);
            let batch = bytes.slice(position..position + header.total_bytes());
            let mut decoded = Vec::new();
            decode_records(&batch, 1 << 20, &mut decoded).unwrap();
            assert_eq!(decoded.len(), header.records_count as usize);
            for r in decoded.into_iter().filter(|r| r.offset >= offset) {
                let text = |b: &Bytes| String::from_utf8(b.to_vec()).unwrap();
                out.push((r.offset, text(r.key.as_ref().unwrap()), r.value.as_ref().map(text)));
            }
            offset = header.last_offset() + 1;
            position += header.total_bytes();
        }
    }
    out
}

/// What compaction must leave of `written` (offset, key, value): the latest per key.
fn latest_per_key(written: &[(i64, String, Option<String>)]) -> Vec<(i64, String, Option<String>)> {
    let mut latest: BTreeMap<&str, &(i64, String, Option<String>)> = BTreeMap::new();
    for r in written {
        latest.insert(&r.1, r);
    }
    let mut out: Vec<_> = latest.into_values().cloned().collect();
    out.sort();
    out
}

/// Writes `rounds` rounds of updates to keys k0..k{keys}, one batch per round.
fn write_updates(f: &mut Fixture, keys: usize, rounds: usize) {
    for round in 0..rounds {
        let values: Vec<(String, String)> = (0..keys).map(|k| (format!("k{k}"), format!("v{round}-{k}"))).collect();
        let kvs: Vec<Kv<'_>> = values.iter().map(|(k, v)| (k.as_str(), Some(v.as_str()))).collect();
        f.append(&kvs);
    }
}

#[test]
fn keeps_the_latest_value_per_key_at_its_original_offset() {
    let mut f = Fixture::new(compact_config());
    write_updates(&mut f, 5, 6);
    f.append(&[("k1", Some("final"))]);
    // The active segment is never cleaned: this batch keeps the one above in a closed one.
    f.append(&[("k2", Some("active"))]);
    let written = records(&f.log);
    let end = f.log.log_end_offset();
    let segments_before = f.log.segment_count();

    let stats = f.clean().expect("a dirty log is cleaned");
    assert!(stats.records_removed > 0);
    let closed: Vec<_> = written.iter().filter(|r| r.0 < end - 1).cloned().collect();
    let mut expected = latest_per_key(&closed);
    expected.push(written.last().unwrap().clone());
    assert_eq!(records(&f.log), expected);
    assert_eq!(f.log.log_end_offset(), end, "the log end offset never moves");
    assert!(f.log.segment_count() < segments_before, "small cleaned segments are merged");
    assert!(f.files_with_suffix(".cleaned").is_empty() && f.files_with_suffix(".swap").is_empty());

    // Durable: a reopen (recovery checks every batch) sees the same, and nothing is due.
    f.reopen();
    assert_eq!(records(&f.log), expected);
    assert_eq!(f.log.log_end_offset(), end);
    assert!(f.clean().is_none(), "a clean log stays clean");
    // Appends continue at the same offsets.
    assert_eq!(f.append(&[("k3", Some("later"))]), end);
}

#[test]
fn tombstones_go_only_after_delete_retention_ms() {
    let mut f = Fixture::new(compact_config());
    f.append(&[("a", Some("1")), ("b", Some("1"))]);
    f.append(&[("a", None)]);
    f.append(&[("c", Some("1"))]);
    let first_clean_ms = f.now_ms;
    f.clean().unwrap();
    assert_eq!(
        records(&f.log),
        vec![(1, "b".into(), Some("1".into())), (2, "a".into(), None), (3, "c".into(), Some("1".into()))],
        "the tombstone outlives the value it deletes"
    );
    // Nothing dirty and the horizon not reached: nothing to do, the tombstone stays.
    f.now_ms = first_clean_ms + f.log.config().compaction.delete_retention_ms - 1;
    assert!(f.clean().is_none());
    f.reopen();
    assert!(f.clean().is_none(), "the horizon survives a restart");
    assert_eq!(records(&f.log).len(), 3);
    // At the horizon the tombstone goes, with no new writes needed to trigger it.
    f.now_ms += 1;
    f.clean().expect("an expired tombstone makes the log due");
    assert_eq!(records(&f.log), vec![(1, "b".into(), Some("1".into())), (3, "c".into(), Some("1".into()))]);
    f.reopen();
    assert_eq!(records(&f.log).len(), 2);
    assert!(f.clean().is_none());
}

#[test]
fn dirty_ratio_and_compaction_lag_decide_when_to_clean() {
    let config = LogConfig {
        compaction: CompactionConfig { min_cleanable_dirty_ratio: 0.5, ..compact_config().compaction },
        ..compact_config()
    };
    let mut f = Fixture::new(config);
    for i in 0..8 {
        f.append(&[(&format!("k{i}"), Some("value"))]);
    }
    f.clean().expect("an uncleaned log is all dirty");
    // One dirty segment against seven clean ones is below the ratio.
    f.append(&[("k0", Some("new"))]);
    f.append(&[("k1", Some("new"))]);
    assert!(f.log.plan_cleaning(f.now_ms, i64::MAX).is_none());
    for i in 2..8 {
        f.append(&[(&format!("k{i}"), Some("new"))]);
    }
    let plan = f.log.plan_cleaning(f.now_ms, i64::MAX).expect("now half the log is dirty");
    assert!(plan.dirty_ratio >= 0.5, "{}", plan.dirty_ratio);
    // Nothing at or above the high watermark is cleaned.
    assert!(f.log.plan_cleaning(f.now_ms, 0).is_none());

    // min.compaction.lag.ms: segments with records younger than the lag wait.
    let lag_ms = 10 * STEP_MS;
    let config = LogConfig {
        compaction: CompactionConfig { min_compaction_lag_ms: lag_ms, ..compact_config().compaction },
        ..compact_config()
    };
    let mut f = Fixture::new(config);
    for _ in 0..4 {
        f.append(&[("k", Some("v"))]);
    }
    assert!(f.clean().is_none(), "every closed segment is younger than the lag");
    f.now_ms += lag_ms - 2 * STEP_MS;
    let stats = f.clean().expect("the oldest segments passed the lag");
    assert_eq!(stats.records_removed, 1, "only the segments older than the lag are compacted");
    assert_eq!(records(&f.log).len(), 3);
    f.now_ms += lag_ms;
    f.clean().unwrap();
    assert_eq!(records(&f.log).iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 3]);
}

#[test]
fn compressed_batches_are_filtered_and_recompressed_with_their_codec() {
    for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
        let mut f = Fixture::new(compact_config());
        f.append_with(&[("a", Some("1")), ("b", Some("1")), ("c", Some("1")), ("a", Some("2"))], codec, None);
        f.append_with(&[("b", Some("2")), ("d", Some("1"))], codec, None);
        f.append(&[("z", Some("active"))]);
        f.clean().unwrap();
        assert_eq!(
            records(&f.log),
            vec![
                (2, "c".into(), Some("1".into())),
                (3, "a".into(), Some("2".into())),
                (4, "b".into(), Some("2".into())),
                (5, "d".into(), Some("1".into())),
                (6, "z".into(), Some("active".into())),
            ],
            "{codec:?}"
        );
        let bytes = f.log.read(0, usize::MAX, i64::MAX).unwrap().read().unwrap();
        let header = BatchHeader::parse(&bytes).unwrap();
        assert_eq!(header.compression().unwrap(), codec);
        assert_eq!((header.base_offset, header.last_offset_delta, header.records_count), (0, 3, 2));
        f.reopen();
        assert_eq!(records(&f.log).len(), 5);
    }
}

#[test]
fn idempotent_batches_keep_their_producer_fields_and_offsets() {
    let mut f = Fixture::new(compact_config());
    f.append_with(&[("a", Some("1")), ("b", Some("1")), ("c", Some("1"))], Compression::None, Some((42, 3, 10)));
    f.append_with(&[("a", Some("2")), ("c", Some("2"))], Compression::None, Some((42, 3, 13)));
    f.append(&[("z", Some("active"))]);
    let before = f.log.batch_headers_from(0).unwrap();
    f.clean().unwrap();
    let after = f.log.batch_headers_from(0).unwrap();
    assert_eq!(after.len(), before.len());
    let first = after[0];
    assert_eq!((first.producer_id, first.producer_epoch, first.base_sequence), (42, 3, 10));
    assert_eq!((first.base_offset, first.last_offset_delta, first.records_count), (0, 2, 1));
    assert_eq!(first.last_sequence(), before[0].last_sequence());
    assert_eq!(after[1], before[1], "an untouched batch is kept byte for byte");
    assert_eq!(records(&f.log).iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 3, 4, 5]);
}

#[test]
fn empty_batches_and_segments_leave_gaps_that_reads_skip() {
    let mut f = Fixture::new(compact_config());
    f.append(&[("a", Some("1")), ("b", Some("1"))]); // 0, 1: both superseded
    f.append(&[("a", Some("2"))]); // 2
    f.append(&[("b", Some("2"))]); // 3
    f.append(&[("c", Some("active"))]); // 4
    f.clean().unwrap();
    assert_eq!(records(&f.log).iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 3, 4]);
    // A fetch at an offset in a gap returns the next batch.
    for offset in [0, 1] {
        let bytes = f.log.read(offset, usize::MAX, i64::MAX).unwrap().read().unwrap();
        assert_eq!(BatchHeader::parse(&bytes).unwrap().base_offset, 2);
    }
    // Headers for producer-state rebuild start after a gap too.
    assert_eq!(f.log.batch_headers_from(1).unwrap()[0].base_offset, 2);
    f.reopen();
    assert_eq!(f.log.log_start_offset(), 0, "compaction never moves the log start offset");
    assert_eq!(records(&f.log).iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 3, 4]);
    // Truncating into a gap keeps what lies below it.
    f.log.truncate_to(1).unwrap();
    assert_eq!(f.log.log_end_offset(), 1);
    assert!(records(&f.log).is_empty());
}

#[test]
fn a_small_dedupe_buffer_cleans_over_several_passes() {
    let mut f = Fixture::new(compact_config());
    write_updates(&mut f, 6, 4);
    f.append(&[("z", Some("active"))]);
    let written = records(&f.log);
    let end = f.log.log_end_offset();
    let mut map = OffsetMap::new(300);
    assert!(map.max_entries() < 12, "{}", map.max_entries());
    let mut passes = 0;
    while let Some(stats) = f.log.clean(&mut map, f.now_ms, i64::MAX).unwrap() {
        passes += 1;
        assert!(map.len() <= map.max_entries());
        assert!(passes < 20, "cleaning must make progress: {stats:?}");
    }
    assert!(passes > 1, "{passes}");
    let mut expected = latest_per_key(&written[..written.len() - 1]);
    expected.push(written.last().unwrap().clone());
    assert_eq!(records(&f.log), expected);
    assert_eq!(f.log.log_end_offset(), end);
}

#[test]
fn reads_during_cleaning_see_a_consistent_log() {
    let mut f = Fixture::new(compact_config());
    write_updates(&mut f, 3, 4);
    f.append(&[("z", Some("active"))]);
    let before = records(&f.log);
    let old_slice = f.log.read(0, usize::MAX, i64::MAX).unwrap();
    let old_bytes = old_slice.read().unwrap();

    let plan = f.log.plan_cleaning(f.now_ms, i64::MAX).unwrap();
    let mut map = OffsetMap::new(1 << 16);
    let never = AtomicBool::new(false);
    let mut cleaned = Vec::new();
    let (_, checkpoint) = clean(&plan, &mut map, f.now_ms, &never, |c| {
        cleaned.push(c);
        Ok(true)
    })
    .unwrap();
    // Written but not swapped: readers still see the whole old log.
    assert_eq!(records(&f.log), before);
    // Appends go on meanwhile.
    f.append(&[("k0", Some("during"))]);
    for c in cleaned {
        assert!(f.log.swap_cleaned(c).unwrap());
    }
    f.log.cleaning_done(checkpoint);
    let after = records(&f.log);
    assert_eq!(after.last().unwrap().2.as_deref(), Some("during"));
    assert!(after.len() < before.len());
    // A slice taken before the swap still reads the old file, whole.
    assert_eq!(old_slice.read().unwrap(), old_bytes);
}

#[test]
fn a_swap_that_no_longer_matches_the_log_is_dropped() {
    let config = LogConfig { cleanup_policy: CleanupPolicy { delete: true, compact: true }, ..compact_config() };
    let mut f = Fixture::new(config);
    write_updates(&mut f, 2, 3);
    f.append(&[("z", Some("active"))]);
    let plan = f.log.plan_cleaning(f.now_ms, i64::MAX).unwrap();
    let mut map = OffsetMap::new(1 << 16);
    let never = AtomicBool::new(false);
    let mut cleaned = Vec::new();
    clean(&plan, &mut map, f.now_ms, &never, |c| {
        cleaned.push(c);
        Ok(true)
    })
    .unwrap();
    // Retention deletes everything closed meanwhile.
    f.log.config.retention_ms = 0;
    f.log.enforce_retention(f.now_ms + 1_000_000, i64::MAX).unwrap();
    for c in cleaned {
        assert!(!f.log.swap_cleaned(c).unwrap());
    }
    assert!(f.files_with_suffix(".cleaned").is_empty());
    f.reopen();
    assert_eq!(f.log.log_start_offset(), f.log.log_end_offset());
}

#[test]
fn retention_applies_only_with_the_delete_policy() {
    for (policy, deletes) in [(CleanupPolicy::COMPACT, false), (CleanupPolicy { delete: true, compact: true }, true)] {
        let config = LogConfig { cleanup_policy: policy, retention_ms: 1, ..compact_config() };
        let mut f = Fixture::new(config);
        f.append(&[("a", Some("1"))]);
        f.append(&[("b", Some("1"))]);
        let outcome = f.log.enforce_retention(f.now_ms + 1_000, i64::MAX).unwrap();
        assert_eq!(outcome.deleted_segments > 0, deletes, "{policy:?}");
    }
}

/// Runs a pass that writes the cleaned files but does not swap them, leaving them as a crash
/// before the commit would. Returns them.
fn clean_without_swapping(f: &mut Fixture) -> Vec<CleanedSegment> {
    let plan = f.log.plan_cleaning(f.now_ms, i64::MAX).unwrap();
    let mut map = OffsetMap::new(1 << 16);
    let never = AtomicBool::new(false);
    let mut cleaned = Vec::new();
    clean(&plan, &mut map, f.now_ms, &never, |c| {
        cleaned.push(c);
        Ok(false)
    })
    .unwrap();
    cleaned
}

fn crash_fixture() -> (Fixture, Vec<(i64, String, Option<String>)>) {
    let config = LogConfig { segment_bytes: 4096, ..compact_config() };
    let mut f = Fixture::new(config);
    write_updates(&mut f, 4, 5);
    f.append(&[("z", Some("active"))]);
    let written = records(&f.log);
    let mut expected = latest_per_key(&written[..written.len() - 1]);
    expected.push(written.last().unwrap().clone());
    (f, expected)
}

#[test]
fn a_crash_before_the_commit_leaves_the_old_segments() {
    let (mut f, _) = crash_fixture();
    let before = records(&f.log);
    let cleaned = clean_without_swapping(&mut f);
    assert_eq!(cleaned.len(), 1);
    assert_eq!(f.files_with_suffix(".cleaned").len(), 4, "log and its three indexes");
    f.reopen();
    assert!(f.files_with_suffix(".cleaned").is_empty(), "recovery removes uncommitted files");
    assert_eq!(records(&f.log), before);
    // And the next pass cleans as if nothing happened.
    f.clean().unwrap();
    assert_eq!(records(&f.log), crash_fixture().1);
}

#[test]
fn a_crash_after_the_commit_finishes_the_swap_at_open() {
    // Crash right after the commit rename, and after part of the old segments were removed.
    for removed_before_crash in [0, 2] {
        let (mut f, expected) = crash_fixture();
        let cleaned = clean_without_swapping(&mut f);
        let c = &cleaned[0];
        let base = c.segment.base_offset;
        assert!(c.replaced.len() > 2);
        let [cleaned_log, _, _, _] = cleaned_paths(&c.segment.path);
        fs::rename(&cleaned_log, f.path.join(swap_name(base, c.next_base))).unwrap();
        for (b, _) in c.replaced.iter().skip(1).take(removed_before_crash) {
            segment::remove_segment_files(&segment::log_path(&f.path, *b)).unwrap();
        }
        drop(cleaned);
        f.reopen();
        assert!(f.files_with_suffix(".swap").is_empty() && f.files_with_suffix(".cleaned").is_empty());
        assert_eq!(records(&f.log), expected, "removed before the crash: {removed_before_crash}");
        // The segment the swap replaced keeps serving appends and further passes.
        f.append(&[("k0", Some("after"))]);
        f.append(&[("z", Some("active2"))]);
        f.clean().unwrap();
        assert!(records(&f.log).iter().any(|r| r.2.as_deref() == Some("after")));
    }
}

#[test]
fn swap_names_round_trip() {
    assert_eq!(parse_swap_name(&swap_name(5, 17)), Some((5, 17)));
    assert_eq!(parse_swap_name("00000000000000000005.swap"), None);
    assert_eq!(parse_swap_name(&swap_name(17, 5)), None);
    let checkpoint = CleanerCheckpoint { first_dirty_offset: 9, next_delete_horizon_ms: Some(3), compacted_below: 7 };
    assert_eq!(CleanerCheckpoint::decode(&checkpoint.encode()), Some(checkpoint));
    let none = CleanerCheckpoint::default();
    assert_eq!(CleanerCheckpoint::decode(&none.encode()), Some(none));
    assert_eq!(CleanerCheckpoint::decode(b"garbage"), None);
}

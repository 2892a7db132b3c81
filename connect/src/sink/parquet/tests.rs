//! Task-level tests: layout, schema growth, routing, and recovery after a kill at every
//! storage operation of the commit protocol.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use bytes::Bytes;
use serde_json::json;

use super::writer::{DurableWrite, LocalStorage, Storage};
use super::*;
use crate::record::KafkaCoordinates;

fn props(dir: &Path, extra: &[(&str, &str)]) -> Props {
    let mut p = Props::new();
    p.insert("path".into(), dir.display().to_string());
    p.insert("topics".into(), "t".into());
    for (k, v) in extra {
        p.insert((*k).into(), (*v).into());
    }
    p
}

fn task(dir: &Path, extra: &[(&str, &str)]) -> ParquetSinkTask {
    let mut t = ParquetSinkTask::default();
    t.start(&props(dir, extra), &SinkTaskContext { connector: "pq".into(), task_id: 0 }).unwrap();
    t
}

fn tp(p: i32) -> TopicPartition {
    TopicPartition::new("t".to_owned(), p)
}

fn rec(partition: i32, offset: i64, value: Option<Value>) -> ConnectRecord {
    let mut r = ConnectRecord::new(Arc::from("t"), value);
    r.kafka = Some(KafkaCoordinates { topic: Arc::from("t"), partition, offset });
    r.partition = Some(partition);
    r.timestamp_ms = Some(1_700_000_000_000 + offset * 1000);
    r
}

fn text(s: String) -> Option<Value> {
    Some(Value::Text(Bytes::from(s)))
}

fn row(partition: i32, offset: i64) -> ConnectRecord {
    rec(partition, offset, text(format!(r#"{{"id":{offset},"name":"n{offset}","v":{}.5}}"#, offset % 7)))
}

/// Every visible `.parquet` file under `dir` (relative), sorted.
fn visible(dir: &Path) -> Vec<PathBuf> {
    let s = LocalStorage::new(dir.to_path_buf());
    let mut v: Vec<PathBuf> = s
        .list_files(Path::new("topics"))
        .unwrap()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    v.sort();
    v
}

fn temps(dir: &Path) -> Vec<PathBuf> {
    let s = LocalStorage::new(dir.to_path_buf());
    s.list_files(Path::new("topics"))
        .unwrap()
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().ends_with(".parquet.tmp"))
        .collect()
}

fn read(path: &Path) -> Vec<RecordBatch> {
    let f = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap().map(|b| b.unwrap()).collect()
}

fn ids(dir: &Path) -> Vec<i64> {
    let mut out = Vec::new();
    for f in visible(dir) {
        for b in read(&dir.join(f)) {
            let c = b.column(b.schema().index_of("id").unwrap());
            out.extend(c.as_primitive::<Int64Type>().values().iter().copied());
        }
    }
    out.sort();
    out
}

#[test]
fn files_per_flush_size_and_pre_commit_offers_only_committed_groups() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = task(dir.path(), &[("flush.size", "4")]);
    assert!(t.open(&[tp(0), tp(1)]).unwrap().is_empty());
    let batch: Vec<ConnectRecord> = (0..10).map(|o| row(0, o)).chain((0..3).map(|o| row(1, o))).collect();
    assert!(t.put(batch).unwrap().is_empty());
    let safe = t.pre_commit(&BTreeMap::new()).unwrap();
    assert_eq!(safe, BTreeMap::from([(tp(0), 8)]), "partition 1 has no complete file yet");
    assert_eq!(
        visible(dir.path()),
        [
            PathBuf::from("topics/t/partition=0/t+0+0000000000.parquet"),
            PathBuf::from("topics/t/partition=0/t+0+0000000004.parquet")
        ]
    );
    assert_eq!(temps(dir.path()).len(), 2, "files of partition 0 from 8 and partition 1 are open");
    let b = read(&dir.path().join("topics/t/partition=0/t+0+0000000004.parquet"));
    assert_eq!(b[0].num_rows(), 4);
    assert_eq!(b[0].column(1).as_string::<i32>().value(0), "n4");
    t.close(&[tp(0), tp(1)]).unwrap();
    assert!(temps(dir.path()).is_empty(), "close drops unfinished files");
}

#[test]
fn new_field_starts_a_new_file_conflicts_and_non_objects_fail_tombstones_skip() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = task(dir.path(), &[("flush.size", "100")]);
    t.open(&[tp(0)]).unwrap();
    let failed = t
        .put(vec![
            rec(0, 0, text(r#"{"id":0,"a":"x"}"#.into())),
            rec(0, 1, text(r#"{"id":1}"#.into())),
            rec(0, 2, None),
            rec(0, 3, text(r#"{"id":"three"}"#.into())),
            rec(0, 4, text("[1,2]".into())),
        ])
        .unwrap();
    // The first batch's schema is the merge of its records; a later new field rotates.
    let failed2 = t
        .put(vec![
            rec(0, 5, text(r#"{"id":5,"a":"y","b":true}"#.into())),
            rec(0, 6, text(r#"{"id":6,"b":false}"#.into())),
            rec(0, 7, text(r#"{"id":7,"#.into())),
            rec(0, 8, Some(Value::Json(json!({"id": 8, "a": "z"})))),
        ])
        .unwrap();
    let failed: Vec<FailedRecord> = failed.into_iter().chain(failed2).collect();
    let failed_offsets: Vec<i64> = failed.iter().map(|f| f.record.kafka.as_ref().unwrap().offset).collect();
    assert_eq!(failed_offsets, [4, 3, 7]);
    assert!(failed.iter().all(|f| f.stage == "TASK_PUT"));
    let err = failed[1].error.to_string();
    assert!(err.contains("field id"), "{err}");
    // The new field b rotated the first file at offset 5.
    assert_eq!(t.pre_commit(&BTreeMap::new()).unwrap(), BTreeMap::from([(tp(0), 5)]));
    t.rotate(&("t".to_owned(), 0)).unwrap();
    assert_eq!(t.pre_commit(&BTreeMap::new()).unwrap(), BTreeMap::from([(tp(0), 9)]));
    let files = visible(dir.path());
    assert_eq!(files.len(), 2);
    let first = read(&dir.path().join(&files[0]));
    assert_eq!(first[0].num_columns(), 2);
    assert_eq!(first[0].num_rows(), 2);
    let second = read(&dir.path().join(&files[1]));
    assert_eq!(second[0].num_columns(), 3);
    assert_eq!(second[0].num_rows(), 3);
    assert_eq!(ids(dir.path()), [0, 1, 5, 6, 8]);
}

#[test]
fn field_partitioner_moves_the_field_into_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut t =
        task(dir.path(), &[("flush.size", "100"), ("partitioner.class", "field"), ("partition.field.name", "country")]);
    t.open(&[tp(2)]).unwrap();
    let countries = ["FR", "DE", "FR", "a/b"];
    let batch = (0..4)
        .map(|o| rec(2, o, text(format!(r#"{{"id":{o},"country":"{}"}}"#, countries[o as usize]))))
        .chain(std::iter::once(rec(2, 4, text(r#"{"id":4}"#.into()))))
        .collect();
    assert!(t.put(batch).unwrap().is_empty());
    t.rotate(&("t".to_owned(), 2)).unwrap();
    let files = visible(dir.path());
    assert_eq!(
        files,
        [
            PathBuf::from("topics/t/country=DE/t+2+0000000001.parquet"),
            PathBuf::from("topics/t/country=FR/t+2+0000000000.parquet"),
            PathBuf::from("topics/t/country=__HIVE_DEFAULT_PARTITION__/t+2+0000000004.parquet"),
            PathBuf::from("topics/t/country=a%2Fb/t+2+0000000003.parquet"),
        ]
    );
    let fr = read(&dir.path().join(&files[1]));
    assert_eq!(fr[0].num_rows(), 2);
    assert!(fr[0].schema().index_of("country").is_err(), "partition columns are not repeated in files");
    assert_eq!(ids(dir.path()), [0, 1, 2, 3, 4]);
}

#[test]
fn time_partitioner_by_record_time_and_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = task(dir.path(), &[("partitioner.class", "time"), ("partition.duration.ms", "3600000")]);
    t.open(&[tp(0)]).unwrap();
    let mut a = row(0, 0);
    a.timestamp_ms = Some(1_709_622_489_000); // 2024-03-05T07:08:09Z
    let mut b = row(0, 1);
    b.timestamp_ms = Some(1_709_622_489_000 + 3_600_000);
    t.put(vec![a, b]).unwrap();
    t.rotate(&("t".to_owned(), 0)).unwrap();
    assert_eq!(
        visible(dir.path()),
        [
            PathBuf::from("topics/t/dt=2024-03-05/hour=07/t+0+0000000000.parquet"),
            PathBuf::from("topics/t/dt=2024-03-05/hour=08/t+0+0000000001.parquet"),
        ]
    );

    let dir = tempfile::tempdir().unwrap();
    let mut t = task(
        dir.path(),
        &[
            ("partitioner.class", "io.confluent.connect.storage.partitioner.TimeBasedPartitioner"),
            ("path.format", "'day'=YYYY-MM-dd"),
            ("partition.duration.ms", "86400000"),
            ("timestamp.extractor", "RecordField"),
            ("timestamp.field", "at"),
        ],
    );
    t.open(&[tp(0)]).unwrap();
    let failed = t
        .put(vec![
            rec(0, 0, text(r#"{"id":0,"at":"2024-03-05T23:59:59Z"}"#.into())),
            rec(0, 1, text(r#"{"id":1,"at":"2024-03-06T00:00:00+00:00"}"#.into())),
            rec(0, 2, text(r#"{"id":2,"at":"yesterday"}"#.into())),
        ])
        .unwrap();
    assert_eq!(failed.len(), 1);
    t.rotate(&("t".to_owned(), 0)).unwrap();
    let files = visible(dir.path());
    assert_eq!(files.len(), 2);
    assert!(files[0].starts_with("topics/t/day=2024-03-05"));
    assert!(files[1].starts_with("topics/t/day=2024-03-06"));
}

#[test]
fn connect_schema_timestamps_are_micros_utc() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = task(dir.path(), &[]);
    t.open(&[tp(0)]).unwrap();
    let schema = Arc::new(json!({"type": "struct", "fields": [
        {"field": "id", "type": "int64"},
        {"field": "at", "type": "int64", "name": "org.apache.kafka.connect.data.Timestamp"}]}));
    let mut r = rec(0, 0, Some(Value::Json(json!({"id": 1, "at": 1_700_000_000_123i64}))));
    r.value_schema = Some(schema);
    let failed = t.put(vec![r]).unwrap();
    assert!(failed.is_empty(), "{:?}", failed.iter().map(|f| f.error.to_string()).collect::<Vec<_>>());
    t.rotate(&("t".to_owned(), 0)).unwrap();
    let b = read(&dir.path().join(&visible(dir.path())[0]));
    let at = b[0].column(1);
    assert_eq!(at.data_type(), &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())));
    assert_eq!(at.as_primitive::<arrow_array::types::TimestampMicrosecondType>().value(0), 1_700_000_000_123_000);
}

#[test]
fn memory_bound_flushes_row_groups_early() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = task(dir.path(), &[("parquet.buffer.max.bytes", "1024"), ("flush.size", "100000")]);
    t.open(&[tp(0)]).unwrap();
    for chunk in 0..5 {
        t.put((chunk * 200..chunk * 200 + 200).map(|o| row(0, o)).collect()).unwrap();
        let used: usize = t.partitions.values().flat_map(|s| s.files.values()).map(|f| f.writer.memory_size()).sum();
        assert!(used <= 1024, "{used} bytes buffered");
    }
    t.rotate(&("t".to_owned(), 0)).unwrap();
    let f = std::fs::File::open(dir.path().join(&visible(dir.path())[0])).unwrap();
    let meta = ParquetRecordBatchReaderBuilder::try_new(f).unwrap().metadata().clone();
    assert!(meta.num_row_groups() >= 5, "{} row groups", meta.num_row_groups());
    assert_eq!(ids(dir.path()), (0..1000).collect::<Vec<_>>());
}

/// Storage that fails every operation from the `n`-th on: a kill -9 at that instant (what
/// was done stays on disk, nothing after it happens).
struct KilledAt {
    inner: LocalStorage,
    left: AtomicUsize,
    /// Fail only that one operation (a transient ENOSPC/EIO), then work again.
    once: bool,
}

impl KilledAt {
    fn tick(&self) -> io::Result<()> {
        if self.left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err() {
            if self.once {
                self.left.store(usize::MAX, Ordering::SeqCst);
            }
            return Err(io::Error::other("killed"));
        }
        Ok(())
    }
}

impl Storage for KilledAt {
    fn create(&self, path: &Path) -> io::Result<Box<dyn DurableWrite>> {
        self.tick()?;
        self.inner.create(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.tick()?;
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.tick()?;
        self.inner.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.tick()?;
        self.inner.remove(path)
    }
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        self.inner.read(path)
    }
    fn list_files(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.inner.list_files(dir)
    }
}

/// Runs a sink over records 0..n of partition 0 (batches of 7, pre_commit after each) the
/// way the runtime does, with storage killed after `ops` operations; returns the offset the
/// consumer group committed.
fn run_until_killed(dir: &Path, extra: &[(&str, &str)], n: i64, ops: usize, committed: i64) -> (i64, bool) {
    let mut t = task(dir, extra);
    t.storage = Some(Arc::new(KilledAt {
        inner: LocalStorage::new(dir.to_path_buf()),
        left: AtomicUsize::new(ops),
        once: false,
    }));
    let mut committed = committed;
    let Ok(seeks) = t.open(&[tp(0)]) else { return (committed, false) };
    // The runtime hands over what the first poll read from the committed offset, then seeks.
    let mut pos = committed;
    let mut first = true;
    while pos < n {
        let batch: Vec<ConnectRecord> = (pos..(pos + 7).min(n)).map(|o| row(0, o)).collect();
        pos += batch.len() as i64;
        if t.put(batch).is_err() {
            return (committed, false);
        }
        if first {
            first = false;
            if let Some(s) = seeks.get(&tp(0)) {
                pos = *s;
            }
        }
        match t.pre_commit(&BTreeMap::new()) {
            Ok(safe) => {
                if let Some(o) = safe.get(&tp(0)) {
                    assert!(*o >= committed, "committed offsets never go back");
                    committed = *o;
                }
            }
            Err(_) => return (committed, false),
        }
    }
    if t.rotate(&("t".to_owned(), 0)).is_err() {
        return (committed, false);
    }
    match t.pre_commit(&BTreeMap::new()) {
        Ok(safe) => (safe.get(&tp(0)).copied().unwrap_or(committed), true),
        Err(_) => (committed, false),
    }
    // Dropped without close or stop: the kill.
}

#[test]
fn a_kill_at_any_storage_operation_leaves_every_offset_in_exactly_one_visible_file() {
    for (label, extra) in [
        ("default", vec![("flush.size", "10")]),
        ("field", vec![("flush.size", "10"), ("partitioner.class", "field"), ("partition.field.name", "v")]),
    ] {
        let n = 45;
        let mut ops = 0;
        loop {
            let dir = tempfile::tempdir().unwrap();
            let (committed, finished) = run_until_killed(dir.path(), &extra, n, ops, 0);
            // Visible files after the kill never hold an offset twice.
            let seen = ids(dir.path());
            let mut dedup = seen.clone();
            dedup.dedup();
            assert_eq!(seen, dedup, "{label}: killed at op {ops}: a duplicate is visible");
            assert!(seen.iter().all(|&i| i < n));
            // Restart (possibly killed again, then once more without kills) from the commit.
            let (committed, _) = run_until_killed(dir.path(), &extra, n, ops / 2, committed);
            let (_, done) = run_until_killed(dir.path(), &extra, n, usize::MAX, committed);
            assert!(done);
            assert_eq!(ids(dir.path()), (0..n).collect::<Vec<_>>(), "{label}: killed at op {ops}");
            assert!(temps(dir.path()).is_empty(), "{label}: killed at op {ops}: temp files left");
            if finished {
                break;
            }
            ops += 1;
        }
        assert!(ops > 20, "{label}: the run used only {ops} storage operations");
    }
}

#[test]
fn config_is_checked() {
    let c = ParquetSinkConnector;
    assert_eq!(c.kind(), ConnectorType::Sink);
    assert_eq!(c.task_configs(&Props::new(), 3).unwrap().len(), 3);
    let dir = tempfile::tempdir().unwrap();
    let bad = |extra: &[(&str, &str)]| SinkConfig::parse(&props(dir.path(), extra)).unwrap_err().to_string();
    assert!(bad(&[("partitioner.class", "hash")]).contains("partitioner.class"));
    assert!(bad(&[("partitioner.class", "field")]).contains("partition.field.name"));
    assert!(bad(&[("compression", "lzo")]).contains("compression"));
    assert!(bad(&[("topics.dir", "../up")]).contains("topics.dir"));
    assert!(bad(&[("partitioner.class", "time"), ("path.format", "EEE")]).contains("path.format"));
    assert!(bad(&[("partitioner.class", "time"), ("timestamp.extractor", "RecordField")]).contains("timestamp.field"));
    assert!(c.validate(&props(dir.path(), &[("partitioner.class", "field")])).len() == 1);
    assert!(bad(&[("parquet.codec", "lzo")]).contains("parquet.codec"));
    let ok = |extra: &[(&str, &str)]| SinkConfig::parse(&props(dir.path(), extra)).unwrap().compression;
    assert_eq!(ok(&[("parquet.codec", "snappy")]), Compression::SNAPPY);
    assert_eq!(ok(&[("compression", "snappy"), ("parquet.codec", "uncompressed")]), Compression::UNCOMPRESSED);
    assert!(bad(&[("partitioner.class", "time"), ("path.format", "'/etc'/YYYY")]).contains("path.format"));
}

#[test]
fn long_field_values_and_out_of_range_times_are_failed_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = task(dir.path(), &[("partitioner.class", "field"), ("partition.field.name", "k")]);
    t.open(&[tp(0)]).unwrap();
    let long = "x".repeat(300);
    let failed = t
        .put(vec![
            rec(0, 0, text(format!(r#"{{"k":"{long}","v":1}}"#))),
            rec(0, 1, text(r#"{"k":"short","v":2}"#.to_owned())),
        ])
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].record.kafka.as_ref().unwrap().offset, 0);
    t.rotate(&("t".to_owned(), 0)).unwrap();
    assert_eq!(ids_of(dir.path(), "v"), vec![2]);

    let dir = tempfile::tempdir().unwrap();
    let extra = [("partitioner.class", "time"), ("timestamp.extractor", "RecordField"), ("timestamp.field", "ts")];
    let mut t = task(dir.path(), &extra);
    t.open(&[tp(0)]).unwrap();
    let failed = t
        .put(vec![
            rec(0, 0, text(format!(r#"{{"ts":{},"v":1}}"#, i64::MIN + 1))),
            rec(0, 1, text(format!(r#"{{"ts":{},"v":2}}"#, i64::MAX))),
            rec(0, 2, text(r#"{"ts":1700000000000,"v":3}"#.to_owned())),
        ])
        .unwrap();
    assert_eq!(failed.len(), 2, "no panic, no wrapped bucket");
    t.rotate(&("t".to_owned(), 0)).unwrap();
    assert_eq!(ids_of(dir.path(), "v"), vec![3]);
}

fn ids_of(dir: &Path, col: &str) -> Vec<i64> {
    let mut v = Vec::new();
    for f in visible(dir) {
        for b in read(&dir.join(f)) {
            let c = b.column(b.schema().index_of(col).unwrap()).as_primitive::<Int64Type>().clone();
            v.extend(c.values().iter().copied());
        }
    }
    v.sort();
    v
}

/// The task alone, without Kafka or the runtime: 1M 10-field records in `put` batches of 500
/// (the consumer's `max.poll.records`), default partitioner, zstd. Run in release:
/// `cargo test --release -p spate-connect --lib sink::parquet::tests::put_throughput -- --ignored --nocapture`
#[test]
#[ignore = "a benchmark; run in release"]
fn put_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = task(dir.path(), &[("flush.size", "250000")]);
    let parts: Vec<TopicPartition> = (0..4).map(tp).collect();
    t.open(&parts).unwrap();
    let n = 1_000_000i64;
    let values: Vec<Bytes> = (0..n)
        .map(|i| {
            Bytes::from(format!(
                r#"{{"id":{i},"user":"u{}","amount":{}.25,"qty":{},"ok":{},"country":"{}","ts":{},"sku":"sku-{}","score":{},"note":"n{}"}}"#,
                i % 1000, i % 997, i % 13, i % 2 == 1, ["FR", "DE", "US"][(i % 3) as usize], 1_709_622_000_000 + i, i % 50, i % 101, i % 7
            ))
        })
        .collect();
    let bytes: usize = values.iter().map(Bytes::len).sum();
    let started = std::time::Instant::now();
    for chunk in 0..n / 2000 {
        // 500 records from each of 4 partitions per put, as a poll over 4 partitions returns them.
        let mut batch = Vec::with_capacity(2000);
        for p in 0..4 {
            for j in 0..500 {
                let offset = chunk * 500 + j;
                let i = (offset * 4 + p as i64) as usize;
                batch.push(rec(p, offset, Some(Value::Text(values[i].clone()))));
            }
        }
        assert!(t.put(batch).unwrap().is_empty());
    }
    let s = started.elapsed().as_secs_f64();
    eprintln!(
        "put: {n} records, {:.1} MB in {s:.2}s: {:.0} records/s, {:.1} MB/s",
        bytes as f64 / 1e6,
        n as f64 / s,
        bytes as f64 / 1e6 / s
    );
    assert_eq!(visible(dir.path()).len(), 4);
}

/// A record read from `from`-`partition` whose topic a transform renamed to `to`.
fn renamed(from: &str, to: &str, partition: i32, offset: i64) -> ConnectRecord {
    let mut r = row(partition, offset);
    r.topic = Arc::from(to);
    r.kafka = Some(KafkaCoordinates { topic: Arc::from(from), partition, offset });
    r
}

#[test]
fn renamed_topics_keep_state_manifests_and_offsets_per_source_partition() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = task(dir.path(), &[("flush.size", "4"), ("topics", "a,b")]);
    let (a, b) = (TopicPartition::new("a".to_owned(), 0), TopicPartition::new("b".to_owned(), 0));
    t.open(&[a.clone(), b.clone()]).unwrap();
    // Interleaved runs of both sources, all renamed to "t".
    let mut batch = Vec::new();
    for o in 0..6 {
        batch.push(renamed("a", "t", 0, o));
        batch.push(renamed("b", "t", 0, 100 + o));
    }
    assert!(t.put(batch).unwrap().is_empty());
    let safe = t.pre_commit(&BTreeMap::new()).unwrap();
    // Each source committed its own first group of 4: offsets never mix.
    assert_eq!(safe.get(&a), Some(&4));
    assert_eq!(safe.get(&b), Some(&104));
    assert_eq!(safe.len(), 2, "{safe:?}");
    let files: Vec<String> = visible(dir.path()).iter().map(|p| p.display().to_string()).collect();
    assert_eq!(
        files,
        vec!["topics/t/partition=0/a+0+0000000000.parquet", "topics/t/partition=0/b+0+0000000100.parquet"]
    );
    // Manifests live under the source topic's directory, where open() looks.
    let mut t2 = task(dir.path(), &[("flush.size", "4"), ("topics", "a,b")]);
    let seeks = t2.open(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(seeks.get(&a), Some(&4));
    assert_eq!(seeks.get(&b), Some(&104));
    // Records of a partition never opened are refused, not written without recovery.
    assert!(t2.put(vec![renamed("c", "t", 0, 0)]).is_err());

    // A kill leaves temp files under the renamed topic's directory: open() finds and drops them.
    let mut t3 = task(dir.path(), &[("flush.size", "4"), ("topics", "a,b")]);
    t3.open(&[a.clone(), b.clone()]).unwrap();
    t3.put(vec![renamed("a", "t", 0, 4), renamed("b", "t", 0, 104)]).unwrap();
    assert_eq!(temps(dir.path()).len(), 2);
    drop(t3);
    let mut t4 = task(dir.path(), &[("flush.size", "4"), ("topics", "a,b")]);
    t4.open(&[a, b]).unwrap();
    assert!(temps(dir.path()).is_empty());
}

#[test]
fn a_storage_error_poisons_the_task_and_a_restart_recovers_exactly_once() {
    let n = 40;
    for fail_at in 0..60 {
        let dir = tempfile::tempdir().unwrap();
        let extra = [("flush.size", "10"), ("partitioner.class", "field"), ("partition.field.name", "v")];
        let mut t = task(dir.path(), &extra);
        t.storage = Some(Arc::new(KilledAt {
            inner: LocalStorage::new(dir.path().to_path_buf()),
            left: AtomicUsize::new(fail_at),
            once: true,
        }));
        let mut committed = 0;
        let mut errored = t.open(&[tp(0)]).is_err();
        let mut pos = 0;
        while pos < n && !errored {
            let batch: Vec<ConnectRecord> = (pos..(pos + 7).min(n)).map(|o| row(0, o)).collect();
            pos += batch.len() as i64;
            match t.put(batch).and_then(|_| t.pre_commit(&BTreeMap::new())) {
                Ok(safe) => committed = safe.get(&tp(0)).copied().unwrap_or(committed),
                Err(_) => errored = true,
            }
        }
        if errored {
            // The runtime retries: the storage works again, but the task must not go on
            // past records it lost.
            for _ in 0..2 {
                let batch: Vec<ConnectRecord> = (pos..(pos + 7).min(n)).map(|o| row(0, o)).collect();
                pos += batch.len() as i64;
                assert!(t.put(batch).is_err(), "fail at {fail_at}: put after an error");
                assert!(t.pre_commit(&BTreeMap::new()).is_err(), "fail at {fail_at}: pre_commit after an error");
            }
        }
        drop(t);
        // A fresh task resumes from its manifest (never behind the committed offset).
        let mut t = task(dir.path(), &extra);
        let seeks = t.open(&[tp(0)]).unwrap();
        let from = seeks.get(&tp(0)).copied().unwrap_or(committed);
        assert!(from >= committed);
        t.put((from..n).map(|o| row(0, o)).collect()).unwrap();
        t.rotate(&("t".to_owned(), 0)).unwrap();
        assert_eq!(ids(dir.path()), (0..n).collect::<Vec<_>>(), "fail at {fail_at}");
        assert!(temps(dir.path()).is_empty(), "fail at {fail_at}");
    }
}

#[test]
fn a_fraction_or_numeric_string_after_an_integer_column_is_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = task(dir.path(), &[]);
    t.open(&[tp(0)]).unwrap();
    let v = |o: i64, x: &str| rec(0, o, text(format!(r#"{{"id":{o},"x":{x},"s":"{o}"}}"#)));
    assert!(t.put(vec![v(0, "1"), v(1, "2")]).unwrap().is_empty());
    // Later put calls: the column is already INT64.
    assert!(t.put(vec![v(2, "2.5"), v(3, "3")]).unwrap().is_empty());
    let failed = t.put(vec![v(4, r#""7""#), v(5, "4e0")]).unwrap();
    assert_eq!(failed.len(), 1, "a numeric string in a number column is a conflict");
    assert_eq!(failed[0].record.kafka.as_ref().unwrap().offset, 4);
    t.rotate(&("t".to_owned(), 0)).unwrap();
    let mut xs = Vec::new();
    for f in visible(dir.path()) {
        for b in read(&dir.path().join(f)) {
            let col = b.column(b.schema().index_of("x").unwrap()).clone();
            for i in 0..b.num_rows() {
                xs.push(match col.data_type() {
                    DataType::Int64 => col.as_primitive::<Int64Type>().value(i) as f64,
                    DataType::Float64 => col.as_primitive::<arrow_array::types::Float64Type>().value(i),
                    other => panic!("x is {other}"),
                });
            }
        }
    }
    assert_eq!(xs, vec![1.0, 2.0, 2.5, 3.0, 4.0]);
    // Numeric text in a text column stays text and needs no slow path.
    let g = schema::Guard::new(&arrow_schema::Schema::new(vec![
        arrow_schema::Field::new("s", DataType::Utf8, true),
        arrow_schema::Field::new("x", DataType::Float64, true),
        arrow_schema::Field::new("i", DataType::Int64, true),
    ]))
    .unwrap();
    assert!(!g.suspect(br#"{"s":"12","x":2.5,"i":3,"t":true}"#));
    assert!(g.suspect(br#"{"s":"12","i":2.5}"#));
    assert!(g.suspect(br#"{"i":"3"}"#));
    assert!(g.suspect(br#"{"i":1e3}"#));
    assert!(!g.suspect(br#"{"s":"a.b \" 1.5 e","i":-3}"#));
}

#[test]
fn open_files_are_capped_and_flush_size_counts_per_kafka_partition() {
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        ("partitioner.class", "field"),
        ("partition.field.name", "k"),
        ("parquet.max.open.files", "2"),
        ("flush.size", "6"),
    ];
    let mut t = task(dir.path(), &extra);
    t.open(&[tp(0), tp(1)]).unwrap();
    let v = |p: i32, o: i64| rec(p, o, text(format!(r#"{{"k":{},"v":{}}}"#, o % 3, p as i64 * 1000 + o)));
    // Partition 1 holds one open file, partition 0 wants three directories.
    t.put(vec![v(1, 0)]).unwrap();
    for o in 0..5 {
        t.put(vec![v(0, o)]).unwrap();
        let open: usize = t.partitions.values().map(|s| s.files.len()).sum();
        assert!(open <= 2, "{open} files open");
    }
    t.put(vec![v(0, 5)]).unwrap();
    t.rotate(&("t".to_owned(), 0)).unwrap();
    t.rotate(&("t".to_owned(), 1)).unwrap();
    assert_eq!(ids_of(dir.path(), "v"), vec![0, 1, 2, 3, 4, 5, 1000]);

    // flush.size counts the partition's rows over its files: the 4th row (2 per directory)
    // commits the group.
    let dir = tempfile::tempdir().unwrap();
    let mut t = task(dir.path(), &[("partitioner.class", "field"), ("partition.field.name", "k"), ("flush.size", "4")]);
    t.open(&[tp(0)]).unwrap();
    let w = |o: i64| rec(0, o, text(format!(r#"{{"k":{},"v":{o}}}"#, o % 2)));
    t.put(vec![w(0), w(1), w(2)]).unwrap();
    assert_eq!(t.partitions[&("t".to_owned(), 0)].files.len(), 2);
    t.put(vec![w(3)]).unwrap();
    assert!(t.partitions[&("t".to_owned(), 0)].files.is_empty());
    assert_eq!(ids_of(dir.path(), "v"), vec![0, 1, 2, 3]);
}

#[test]
fn records_past_the_column_cap_are_failed_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = task(dir.path(), &[]);
    t.open(&[tp(0)]).unwrap();
    let wide: Vec<String> = (0..1200).map(|i| format!(r#""c{i}":1"#)).collect();
    let failed = t
        .put(vec![
            rec(0, 0, text(r#"{"a":1}"#.to_owned())),
            rec(0, 1, text(format!("{{{}}}", wide.join(",")))),
            rec(0, 2, text(r#"{"a":2}"#.to_owned())),
        ])
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].record.kafka.as_ref().unwrap().offset, 1);
}

//! File source tests on real files in temp dirs, driven with an explicit clock.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use super::scan::Tailer;
use super::*;
use crate::connector::{FailedRecord, OffsetReader};
use crate::record::{ConnectRecord, Value};

const SCAN: Duration = Duration::from_millis(1000);

/// Stored offsets, as the runtime would hand them over.
struct FakeOffsets(Mutex<Vec<(Json, Json)>>);

impl OffsetReader for FakeOffsets {
    fn offsets(&self) -> Vec<(Json, Json)> {
        self.0.lock().unwrap().clone()
    }
}

fn props(file: &str, extra: &[(&str, &str)]) -> Props {
    let mut p = Props::new();
    p.insert("file".into(), file.into());
    p.insert("topic".into(), "logs".into());
    p.insert("host".into(), "testhost".into());
    p.insert("scan.interval.ms".into(), SCAN.as_millis().to_string());
    for (k, v) in extra {
        p.insert((*k).into(), (*v).into());
    }
    p
}

/// A tailer plus the offsets store it would have written to.
struct Harness {
    tailer: Tailer,
    now: Instant,
    stored: HashMap<String, Json>,
    partitions: HashMap<String, Json>,
    failed: Vec<FailedRecord>,
}

impl Harness {
    fn new(props: &Props) -> Self {
        Self::resume(props, Vec::new())
    }

    fn resume(props: &Props, stored: Vec<(Json, Json)>) -> Self {
        let cfg = Arc::new(SourceConfig::parse(props).unwrap());
        Harness {
            tailer: Tailer::new(cfg, "test".into(), stored),
            now: Instant::now(),
            stored: HashMap::new(),
            partitions: HashMap::new(),
            failed: Vec::new(),
        }
    }

    /// One poll at the current time; every batch counts as acknowledged.
    fn poll(&mut self) -> Vec<ConnectRecord> {
        let batch = self.tailer.poll_once(self.now).unwrap();
        for (p, o) in batch.offsets {
            let key = p.to_string();
            if o.is_null() {
                self.stored.remove(&key);
            } else {
                self.stored.insert(key.clone(), o);
                self.partitions.insert(key, p);
            }
        }
        self.failed.extend(batch.failed);
        batch.records
    }

    /// Polls, moving the clock past a scan interval each time, until nothing more comes.
    fn drain(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut idle = 0;
        while idle < 3 {
            let records = self.poll();
            if records.is_empty() {
                idle += 1;
            } else {
                idle = 0;
            }
            out.extend(records.iter().map(text));
            self.now += SCAN + Duration::from_millis(1);
        }
        out
    }

    fn stored_offsets(&self) -> Vec<(Json, Json)> {
        self.stored.iter().map(|(k, o)| (self.partitions[k].clone(), o.clone())).collect()
    }
}

fn text(r: &ConnectRecord) -> String {
    match r.value.as_ref().unwrap() {
        Value::Text(b) | Value::Bytes(b) => String::from_utf8_lossy(&b[..]).into_owned(),
        Value::Json(j) => j.to_string(),
    }
}

fn header(r: &ConnectRecord, key: &str) -> String {
    String::from_utf8_lossy(r.header(key).unwrap().value.as_ref().unwrap()).into_owned()
}

fn append(path: &Path, data: &str) {
    OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(data.as_bytes()).unwrap();
}

fn lines(prefix: &str, range: std::ops::Range<usize>) -> String {
    range.map(|i| format!("{prefix} line {i:04} with some padding to make it longer\n")).collect()
}

fn expected(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} line {i:04} with some padding to make it longer")).collect()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn append_reads_new_lines_with_headers() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, "first\r\nsecond\n");
    let mut h = Harness::new(&props(path_str(&log), &[]));
    let records = h.poll();
    assert_eq!(records.iter().map(text).collect::<Vec<_>>(), ["first", "second"]);
    assert_eq!(header(&records[1], "offset"), "7");
    assert_eq!(header(&records[1], "file"), path_str(&log));
    assert_eq!(header(&records[1], "host"), "testhost");
    assert_eq!(&*records[0].topic, "logs");
    append(&log, "third\npart");
    assert_eq!(h.drain(), ["third"]);
    append(&log, "ial\n");
    assert_eq!(h.drain(), ["partial"]);
    let offsets = h.stored_offsets();
    assert_eq!(offsets.len(), 1);
    assert_eq!(offsets[0].1["position"], json!(fs::metadata(&log).unwrap().len()));
    assert!(offsets[0].0["fingerprint"].is_string());
    assert_eq!(offsets[0].0.as_object().unwrap().len(), 1, "the partition holds the fingerprint only");
}

#[test]
fn rename_and_create_reads_the_old_file_to_its_end_then_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, &lines("old", 0..10));
    let mut h = Harness::new(&props(path_str(&log), &[]));
    assert_eq!(h.drain(), expected("old", 0..10));
    // Written before the rotation but not read yet, and written by a writer that has not
    // reopened its path.
    append(&log, &lines("old", 10..15));
    fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    append(&dir.path().join("app.log.1"), &lines("old", 15..17));
    append(&log, &lines("new", 0..5));
    let mut got = h.drain();
    got.sort();
    let mut want = expected("old", 10..17);
    want.extend(expected("new", 0..5));
    want.sort();
    assert_eq!(got, want);
    assert_eq!(h.tailer.open_files(), 1, "the rotated file was let go");
    assert_eq!(h.stored_offsets().len(), 2);
}

#[test]
fn rename_within_the_glob_keeps_the_partition_and_updates_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, &lines("a", 0..10));
    let mut h = Harness::new(&props(&format!("{}/app.log*", dir.path().display()), &[]));
    assert_eq!(h.drain().len(), 10);
    let before = h.stored_offsets();
    let rotated = dir.path().join("app.log.1");
    fs::rename(&log, &rotated).unwrap();
    append(&rotated, &lines("a", 10..12));
    let records = {
        h.now += SCAN;
        h.poll()
    };
    assert_eq!(records.iter().map(text).collect::<Vec<_>>(), expected("a", 10..12));
    assert_eq!(header(&records[0], "file"), path_str(&rotated));
    let after = h.stored_offsets();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].0, before[0].0, "the partition survives the rename");
    assert_eq!(after[0].1["path"], json!(path_str(&rotated)));
}

#[test]
fn rotations_under_a_live_writer_lose_and_repeat_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, "");
    let mut h = Harness::new(&props(path_str(&log), &[("scan.interval.ms", "20"), ("batch.size", "100")]));
    let writer = {
        let dir = dir.path().to_path_buf();
        std::thread::spawn(move || {
            let log = dir.join("app.log");
            for generation in 0..5 {
                let mut f = OpenOptions::new().create(true).append(true).open(&log).unwrap();
                for i in 0..1000 {
                    writeln!(f, "g{generation} line {i:04}").unwrap();
                    if i % 100 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                fs::rename(&log, dir.join(format!("app.log.{generation}"))).unwrap();
                // A writer that has not reopened its path yet.
                writeln!(f, "g{generation} late").unwrap();
            }
        })
    };
    let mut got = Vec::new();
    while !writer.is_finished() {
        got.extend(h.poll().iter().map(text));
        h.now += Duration::from_millis(5);
        std::thread::sleep(Duration::from_millis(1));
    }
    writer.join().unwrap();
    got.extend(h.drain());
    let mut want: Vec<String> = Vec::new();
    for g in 0..5 {
        want.extend((0..1000).map(|i| format!("g{g} line {i:04}")));
        want.push(format!("g{g} late"));
    }
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
}

#[test]
fn copytruncate_starts_over_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, &lines("a", 0..20));
    let mut h = Harness::new(&props(path_str(&log), &[]));
    assert_eq!(h.drain().len(), 20);
    fs::copy(&log, dir.path().join("app.log.1")).unwrap();
    OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
    append(&log, &lines("b", 0..3));
    assert_eq!(h.drain(), expected("b", 0..3));
    // Truncated again and rewritten past the old read position before the next look:
    // the changed first bytes give it away.
    OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
    append(&log, &lines("c", 0..40));
    assert_eq!(h.drain(), expected("c", 0..40));
}

#[test]
fn copytruncate_copy_under_the_glob_continues_at_the_old_position() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, &lines("a", 0..5));
    let pattern = format!("{}/app.log*", dir.path().display());
    let mut h = Harness::new(&props(&pattern, &[]));
    assert_eq!(h.drain(), expected("a", 0..5));
    append(&log, &lines("a", 5..8));
    fs::copy(&log, dir.path().join("app.log.1")).unwrap();
    OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
    append(&log, &lines("b", 0..2));
    let mut got = h.drain();
    got.sort();
    let mut want = expected("a", 5..8);
    want.extend(expected("b", 0..2));
    want.sort();
    assert_eq!(got, want, "the copy continues where the truncated file stopped");
}

#[test]
fn deleted_file_is_read_to_its_end_then_released() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, &lines("a", 0..3));
    let mut h = Harness::new(&props(path_str(&log), &[]));
    assert_eq!(h.drain().len(), 3);
    append(&log, &lines("a", 3..6));
    fs::remove_file(&log).unwrap();
    assert_eq!(h.drain(), expected("a", 3..6));
    assert_eq!(h.tailer.open_files(), 0);
}

#[test]
fn glob_picks_up_new_files() {
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("a.log"), "a1\n");
    append(&dir.path().join("skip.txt"), "no\n");
    let pattern = format!("{}/*.log", dir.path().display());
    let mut h = Harness::new(&props(&pattern, &[("read.from", "end")]));
    assert_eq!(h.drain(), Vec::<String>::new(), "read.from=end skips what the first scan found");
    append(&dir.path().join("a.log"), "a2\n");
    append(&dir.path().join("b.log"), "b1\nb2\n");
    let mut got = h.drain();
    got.sort();
    assert_eq!(got, ["a2", "b1", "b2"], "a file found later is read from its beginning");
}

#[test]
fn read_from_end_keeps_lines_of_a_file_empty_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, "");
    let mut h = Harness::new(&props(path_str(&log), &[("read.from", "end")]));
    assert!(h.drain().is_empty());
    assert!(h.stored_offsets().is_empty(), "nothing to store for a file not identified yet");
    append(&log, "one\ntwo\n");
    assert_eq!(h.drain(), ["one", "two"]);
}

#[test]
fn multiline_events_join_and_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, "E1 boom\n  at a\n  at b\nE2 ok\n");
    let mut h =
        Harness::new(&props(path_str(&log), &[("multiline.start.pattern", r"^\S"), ("multiline.timeout.ms", "100")]));
    let first = h.poll();
    assert_eq!(first.iter().map(text).collect::<Vec<_>>(), ["E1 boom\n  at a\n  at b"]);
    assert_eq!(header(&first[0], "offset"), "0");
    // The stored position stops before the pending event.
    assert_eq!(h.stored_offsets()[0].1["position"], json!(22));
    h.now += Duration::from_millis(50);
    assert!(h.poll().is_empty(), "E2 may still get continuation lines");
    h.now += Duration::from_millis(60);
    assert_eq!(h.poll().iter().map(text).collect::<Vec<_>>(), ["E2 ok"]);
    assert_eq!(h.stored_offsets()[0].1["position"], json!(28));
}

fn ten_mib_line_file(dir: &Path) -> PathBuf {
    let log = dir.join("big.log");
    let mut f = fs::File::create(&log).unwrap();
    f.write_all(b"before\n").unwrap();
    let chunk = vec![b'x'; 1024 * 1024];
    for _ in 0..10 {
        f.write_all(&chunk).unwrap();
    }
    f.write_all(b"\nafter\n").unwrap();
    log
}

#[test]
fn ten_mib_line_is_truncated_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let log = ten_mib_line_file(dir.path());
    let mut h = Harness::new(&props(path_str(&log), &[("max.line.bytes", "1024")]));
    let mut got = Vec::new();
    for _ in 0..5 {
        got.extend(h.poll().iter().map(|r| (text(r), header(r, "offset"))));
        assert!(h.tailer.max_reader_bytes() <= 1024 + 2 * READ_BUF_BYTES + 4096, "{}", h.tailer.max_reader_bytes());
    }
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].0, "before");
    assert_eq!(got[1], ("x".repeat(1024), "7".to_owned()));
    assert_eq!(got[2], ("after".to_owned(), (7 + 10 * 1024 * 1024 + 1).to_string()));
    assert!(h.failed.is_empty());
}

#[test]
fn ten_mib_line_goes_to_the_dlq() {
    let dir = tempfile::tempdir().unwrap();
    let log = ten_mib_line_file(dir.path());
    let mut h = Harness::new(&props(path_str(&log), &[("max.line.bytes", "1024"), ("max.line.action", "dlq")]));
    assert_eq!(h.drain(), ["before", "after"]);
    assert_eq!(h.failed.len(), 1);
    let f = &h.failed[0];
    assert_eq!(f.stage, "TASK_POLL");
    assert_eq!(text(&f.record).len(), 1024);
    assert!(f.error.to_string().contains("max.line.bytes"), "{}", f.error);
    assert!(h.tailer.max_reader_bytes() <= 1024 + 2 * READ_BUF_BYTES + 4096);
}

#[test]
fn identical_first_lines_are_distinct_files() {
    let dir = tempfile::tempdir().unwrap();
    let header_line = "# log format v1\n";
    append(&dir.path().join("a.log"), &format!("{header_line}{}", lines("a", 0..10)));
    append(&dir.path().join("b.log"), &format!("{header_line}{}", lines("b", 0..10)));
    let mut h = Harness::new(&props(&format!("{}/*.log", dir.path().display()), &[]));
    let got = h.drain();
    assert_eq!(got.len(), 22);
    assert_eq!(got.iter().filter(|l| l.starts_with('#')).count(), 2);
    assert_eq!(h.stored_offsets().len(), 2);
}

#[test]
fn recreated_file_with_a_new_first_line_is_new() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, &lines("old", 0..10));
    let p = props(path_str(&log), &[]);
    let mut h = Harness::new(&p);
    assert_eq!(h.drain().len(), 10);
    fs::remove_file(&log).unwrap();
    append(&log, &lines("new", 0..30));
    assert_eq!(h.drain(), expected("new", 0..30));
    // And across a restart: the old offsets do not apply to a new file.
    let stored = h.stored_offsets();
    fs::remove_file(&log).unwrap();
    append(&log, &lines("newer", 0..40));
    let mut h = Harness::resume(&p, stored);
    assert_eq!(h.drain(), expected("newer", 0..40));
}

#[test]
fn resume_from_stored_offsets_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, &lines("a", 0..10));
    let p = props(path_str(&log), &[("batch.size", "3")]);
    let mut h = Harness::new(&p);
    let mut got: Vec<String> = h.poll().iter().map(text).collect();
    got.extend(h.poll().iter().map(text));
    assert_eq!(got.len(), 6);
    // The second batch was never acknowledged: the crash loses its offsets.
    let acknowledged = h.stored_offsets();
    let mut stored_after_first = acknowledged.clone();
    stored_after_first[0].1["position"] = json!((got[..3].iter().map(|l| l.len() + 1).sum::<usize>()));
    let offsets = Arc::new(FakeOffsets(Mutex::new(stored_after_first)));
    let mut task = FileStreamSourceTask::default();
    let context = SourceTaskContext { connector: "test".into(), task_id: 0, offsets };
    task.start(&p, &context).unwrap();
    let mut rest = Vec::new();
    while let Some(batch) = task.poll(Duration::from_millis(100)).unwrap() {
        rest.extend(batch.records.iter().map(text));
    }
    task.stop();
    let mut all = got[..3].to_vec();
    all.extend(rest);
    assert_eq!(all, expected("a", 0..10));
}

#[test]
fn short_file_keeps_its_position_when_its_fingerprint_grows_up() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, "tiny\n");
    let p = props(path_str(&log), &[("fingerprint.bytes", "64")]);
    let mut h = Harness::new(&p);
    assert_eq!(h.drain(), ["tiny"]);
    append(&log, &lines("a", 0..3));
    assert_eq!(h.drain(), expected("a", 0..3));
    assert_eq!(h.stored_offsets().len(), 1, "the first-line partition was deleted");
    // Grown while the task was down: the first-line offset still finds it.
    let dir2 = tempfile::tempdir().unwrap();
    let log2 = dir2.path().join("app.log");
    append(&log2, "tiny\n");
    let p2 = props(path_str(&log2), &[("fingerprint.bytes", "64")]);
    let mut h = Harness::new(&p2);
    assert_eq!(h.drain(), ["tiny"]);
    let stored = h.stored_offsets();
    append(&log2, &lines("b", 0..3));
    let mut h = Harness::resume(&p2, stored);
    assert_eq!(h.drain(), expected("b", 0..3));
}

#[test]
fn small_files_with_the_same_header_line_are_all_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = props(&format!("{}/*.csv", dir.path().display()), &[]);
    let mut h = Harness::new(&p);
    append(&dir.path().join("1.csv"), "id,name\n1,ann\n");
    assert_eq!(h.drain(), ["id,name", "1,ann"]);
    fs::remove_file(dir.path().join("1.csv")).unwrap();
    h.drain();
    // The next one has the same first line, and is as long as the first was read.
    append(&dir.path().join("2.csv"), "id,name\n2,bob\n3,cy\n");
    assert_eq!(h.drain(), ["id,name", "2,bob", "3,cy"]);
    // And after a restart the stored head checksum tells it apart again.
    let stored = h.stored_offsets();
    assert!(stored.iter().all(|(_, o)| o["head_checksum"].is_string()), "{stored:?}");
    fs::remove_file(dir.path().join("2.csv")).unwrap();
    append(&dir.path().join("3.csv"), "id,name\n4,dee\n5,eve\n6,fay\n");
    let mut h = Harness::resume(&p, stored);
    assert_eq!(h.drain(), ["id,name", "4,dee", "5,eve", "6,fay"]);
}

#[test]
fn file_without_a_complete_first_line_waits() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, "no newline yet");
    let mut h = Harness::new(&props(path_str(&log), &[]));
    assert!(h.drain().is_empty());
    append(&log, "\nsecond\n");
    assert_eq!(h.drain(), ["no newline yet", "second"]);
}

#[test]
fn invalid_utf8_is_replaced_and_bytes_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    fs::write(&log, b"ok\n\xff\xfeoops\n").unwrap();
    let mut h = Harness::new(&props(path_str(&log), &[]));
    assert_eq!(h.drain(), ["ok", "\u{fffd}\u{fffd}oops"]);
    let mut h = Harness::new(&props(path_str(&log), &[("encoding", "bytes")]));
    let records = h.poll();
    assert_eq!(records[1].value, Some(Value::Bytes(bytes::Bytes::from_static(b"\xff\xfeoops"))));
}

#[test]
fn truncated_utf8_lines_are_cut_at_a_character_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    fs::write(&log, "aé€z\n").unwrap();
    let mut h = Harness::new(&props(path_str(&log), &[("max.line.bytes", "5")]));
    // "a" + "é" (2 bytes) + 2 of the 3 bytes of "€": the partial character is dropped.
    assert_eq!(h.drain(), ["aé"]);
}

#[test]
fn batches_are_bounded_by_lines_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, &lines("a", 0..100));
    let mut h = Harness::new(&props(path_str(&log), &[("batch.size", "30")]));
    assert_eq!(h.poll().len(), 30);
    let mut h = Harness::new(&props(path_str(&log), &[("batch.max.bytes", "1000")]));
    let n = h.poll().len();
    assert!(n > 1 && n < 30, "{n}");
}

#[test]
fn task_polls_with_a_timeout_and_sees_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, "one\n");
    let mut task = FileStreamSourceTask::default();
    let offsets = Arc::new(FakeOffsets(Mutex::new(Vec::new())));
    let context = SourceTaskContext { connector: "t".into(), task_id: 0, offsets };
    task.start(&props(path_str(&log), &[("scan.interval.ms", "50")]), &context).unwrap();
    let batch = task.poll(Duration::from_millis(200)).unwrap().unwrap();
    assert_eq!(batch.records.iter().map(text).collect::<Vec<_>>(), ["one"]);
    let started = Instant::now();
    assert!(task.poll(Duration::from_millis(100)).unwrap().is_none());
    assert!(started.elapsed() >= Duration::from_millis(100));
    append(&log, "two\n");
    let batch = task.poll(Duration::from_millis(200)).unwrap().unwrap();
    assert_eq!(batch.records.iter().map(text).collect::<Vec<_>>(), ["two"]);
    task.stop();
}

#[test]
fn config_checks_and_task_split() {
    let c = FileStreamSourceConnector;
    assert_eq!(c.class(), "FileStreamSource");
    let mut p = Props::new();
    p.insert("topic".into(), "t".into());
    assert_eq!(c.validate(&p).len(), 1);
    assert!(SourceConfig::parse(&p).is_err());
    p.insert("files".into(), "/a,/b,/c".into());
    p.insert("multiline.start.pattern".into(), "(".into());
    assert!(c.config_def().validate(&p).iter().any(|r| r.name == "multiline.start.pattern" && !r.errors.is_empty()));
    p.remove("multiline.start.pattern");
    assert_eq!(c.task_configs(&p, 1).unwrap().len(), 1);
    let split = c.task_configs(&p, 2).unwrap();
    assert_eq!(split.len(), 2);
    assert_eq!(split[0]["files"], "/a,/c");
    assert_eq!(split[1]["files"], "/b");
    assert_eq!(c.task_configs(&p, 8).unwrap().len(), 3);
    assert_eq!(watch_dir("/var/log/*.log"), PathBuf::from("/var/log"));
    assert_eq!(watch_dir("/var/log/app.log"), PathBuf::from("/var/log"));
}

/// Prints the line throughput of the tailer (no assertion on speed: CI machines vary, and
/// debug builds are much slower; run with `--release` for the real figure).
#[test]
fn throughput_of_100_byte_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("bench.log");
    let line = format!("{}\n", "x".repeat(99));
    let mut f = fs::File::create(&log).unwrap();
    let block: String = line.repeat(10_000);
    let total_bytes: usize = 32 * 1024 * 1024;
    for _ in 0..total_bytes / block.len() {
        f.write_all(block.as_bytes()).unwrap();
    }
    drop(f);
    let size = fs::metadata(&log).unwrap().len();
    let mut h = Harness::new(&props(path_str(&log), &[]));
    let started = Instant::now();
    let cpu_started = thread_cpu_ns();
    let mut n = 0usize;
    loop {
        let batch = h.tailer.poll_once(h.now).unwrap();
        if batch.records.is_empty() {
            break;
        }
        n += batch.records.len();
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(n as u64, size / 100);
    let mib = size as f64 / (1024.0 * 1024.0);
    println!(
        "file source: {n} lines of 100 bytes in {secs:.3} s wall = {:.1} MiB/s, {:.0} lines/s",
        mib / secs,
        n as f64 / secs
    );
    if let (Some(a), Some(b)) = (cpu_started, thread_cpu_ns()) {
        // On a shared machine the thread's CPU time is the fairer figure.
        let cpu = (b - a) as f64 / 1e9;
        println!("file source: {cpu:.3} s on CPU = {:.1} MiB/s per core, {:.0} lines/s", mib / cpu, n as f64 / cpu);
    }
}

/// Nanoseconds this thread has run on a CPU (Linux's schedstat).
fn thread_cpu_ns() -> Option<u64> {
    fs::read_to_string("/proc/thread-self/schedstat").ok()?.split_whitespace().next()?.parse().ok()
}

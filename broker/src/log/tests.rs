use std::fs::OpenOptions;
use std::io::Write;

use proptest::prelude::*;
use spate_client::protocol::compression::Compression;
use spate_client::protocol::record::{validate_batches, BatchBuilder, BatchIter, Record};

use super::*;

const EPOCH: i32 = 5;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 20,
        segment_ms: i64::MAX,
        retention_ms: -1,
        retention_bytes: -1,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

/// A batch of `records` records whose values are `"{first + i}"` padded to `value_bytes`,
/// all stamped `timestamp_ms` (plus `i` ms).
fn batch(first: i64, records: usize, value_bytes: usize, timestamp_ms: i64) -> Bytes {
    let mut builder = BatchBuilder::new(Compression::None);
    for i in 0..records {
        let mut value = format!("{}", first + i as i64).into_bytes();
        value.resize(value_bytes.max(value.len()), b'.');
        builder.push(&Record {
            key: None,
            value: Some(Bytes::from(value)),
            headers: Vec::new(),
            timestamp_ms: timestamp_ms + i as i64,
        });
    }
    builder.finish(-1, -1, -1, false).unwrap()
}

fn append(log: &mut Log, batches: &[Bytes], now_ms: i64) -> AppendInfo {
    let records: Vec<u8> = batches.iter().flat_map(|b| b.iter().copied()).collect();
    let headers = validate_batches(&records).unwrap();
    log.append(&records, &headers, EPOCH, now_ms).unwrap()
}

/// Appends `count` single-batch appends of `records` records each, values numbered by offset.
fn fill(log: &mut Log, count: usize, records: usize, value_bytes: usize, timestamp_ms: i64) {
    for _ in 0..count {
        let first = log.log_end_offset();
        append(log, &[batch(first, records, value_bytes, timestamp_ms)], timestamp_ms);
    }
}

/// One record of a read, as (offset, value).
struct Rec {
    offset: i64,
    value: Vec<u8>,
}

/// Walks the records of uncompressed batches by hand: an independent check of what the log
/// stored, byte for byte.
fn decode(bytes: &Bytes) -> Vec<Rec> {
    fn varint(buf: &mut &[u8]) -> i64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = buf[0];
            *buf = &buf[1..];
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        ((v >> 1) as i64) ^ -((v & 1) as i64)
    }
    let mut out = Vec::new();
    let mut consumed = 0;
    for (position, header) in BatchIter::new(bytes) {
        let batch = &bytes[position..position + header.total_bytes()];
        validate_batches(batch).unwrap();
        assert_eq!(header.partition_leader_epoch, EPOCH);
        let mut rest = &batch[BATCH_HEADER_BYTES..];
        for _ in 0..header.records_count {
            let len = varint(&mut rest) as usize;
            let (mut record, tail) = rest.split_at(len);
            rest = tail;
            record = &record[1..]; // attributes
            varint(&mut record); // timestamp delta
            let offset = header.base_offset + varint(&mut record);
            let key_len = varint(&mut record);
            record = &record[key_len.max(0) as usize..];
            let value_len = varint(&mut record) as usize;
            out.push(Rec { offset, value: record[..value_len].to_vec() });
        }
        assert!(rest.is_empty());
        consumed = position + header.total_bytes();
    }
    assert_eq!(consumed, bytes.len(), "a read returns whole batches only");
    out
}

/// Reads the whole log in small fetches and checks each record's value names its offset.
fn assert_every_offset_reads_back(log: &Log) {
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let bytes = log.read(offset, 700, log.log_end_offset()).unwrap().read().unwrap();
        let records = decode(&bytes);
        assert!(!records.is_empty(), "no records at {offset}");
        assert!(records[0].offset <= offset, "read of {offset} started at {}", records[0].offset);
        for r in &records {
            assert_eq!(r.value.split(|&b| b == b'.').next().unwrap(), r.offset.to_string().as_bytes());
        }
        offset = records.last().unwrap().offset + 1;
    }
    assert_eq!(offset, log.log_end_offset());
}

fn segment_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

fn append_raw(path: &Path, bytes: &[u8]) {
    OpenOptions::new().append(true).open(path).unwrap().write_all(bytes).unwrap();
}

#[test]
fn append_assigns_offsets_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path().to_path_buf(), config(), 0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
    let info = append(&mut log, &[batch(0, 3, 10, 1000), batch(3, 2, 10, 2000)], 10);
    assert_eq!((info.base_offset, info.last_offset), (0, 4));
    assert_eq!((info.max_timestamp, info.offset_of_max_timestamp), (2001, 3));
    let info = append(&mut log, &[batch(5, 4, 10, 500)], 11);
    assert_eq!((info.base_offset, info.last_offset), (5, 8));
    assert_eq!(log.log_end_offset(), 9);

    let bytes = log.read(0, usize::MAX, 9).unwrap().read().unwrap();
    let records = decode(&bytes);
    assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..9).collect::<Vec<_>>());
    let headers: Vec<_> = BatchIter::new(&bytes).map(|(_, h)| (h.base_offset, h.partition_leader_epoch)).collect();
    assert_eq!(headers, vec![(0, EPOCH), (3, EPOCH), (5, EPOCH)]);
    assert_every_offset_reads_back(&log);
    assert_eq!(log.size_bytes(), bytes.len() as u64);
}

#[test]
fn append_rejects_headers_that_do_not_cover_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path().to_path_buf(), config(), 0).unwrap();
    let one = batch(0, 1, 10, 0);
    let headers = validate_batches(&one).unwrap();
    let mut longer = one.to_vec();
    longer.push(0);
    assert!(matches!(log.append(&longer, &headers, 0, 0), Err(LogError::InvalidAppend { .. })));
    assert!(matches!(log.append(&[], &[], 0, 0), Err(LogError::InvalidAppend { .. })));
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(log.size_bytes(), 0);
}

#[test]
fn read_respects_max_bytes_upper_bound_and_kip_74() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path().to_path_buf(), config(), 0).unwrap();
    let batches: Vec<Bytes> = (0..10).map(|i| batch(i * 2, 2, 100, 0)).collect();
    for b in &batches {
        append(&mut log, std::slice::from_ref(b), 0);
    }
    let size = batches[0].len();
    // max_bytes cuts at a whole batch.
    let slice = log.read(0, size * 3 + size / 2, 20).unwrap();
    assert_eq!(slice.len(), size * 3);
    // KIP-74: the first batch comes whole even when larger than max_bytes.
    assert_eq!(log.read(4, 1, 20).unwrap().len(), size);
    assert_eq!(log.read(4, 0, 20).unwrap().len(), size);
    // A read from the middle of a batch starts at that batch.
    let bytes = log.read(5, size, 20).unwrap().read().unwrap();
    assert_eq!(decode(&bytes)[0].offset, 4);
    // Nothing at or beyond the upper bound (the high watermark).
    let bytes = log.read(0, usize::MAX, 7).unwrap().read().unwrap();
    assert_eq!(decode(&bytes).last().unwrap().offset, 7, "the batch holding offset 6 is below the bound");
    assert_eq!(log.read(0, usize::MAX, 6).unwrap().len(), size * 3);
    assert!(log.read(6, usize::MAX, 6).unwrap().is_empty());
    assert!(log.read(8, usize::MAX, 6).unwrap().is_empty());
    assert!(log.read(20, usize::MAX, 20).unwrap().read().unwrap().is_empty());
    assert!(matches!(
        log.read(21, 100, 20),
        Err(LogError::OffsetOutOfRange { offset: 21, log_start_offset: 0, log_end_offset: 20 })
    ));
    assert!(matches!(log.read(-1, 100, 20), Err(LogError::OffsetOutOfRange { .. })));
    // Every read knows the offset just past it: the next batch's, or the log end.
    assert_eq!(log.read(0, size * 3 + size / 2, 20).unwrap().next_offset(), 6, "cut inside the fourth batch");
    assert_eq!(log.read(0, size * 3, 20).unwrap().next_offset(), 6, "cut exactly at a batch boundary");
    assert_eq!(log.read(4, 1, 20).unwrap().next_offset(), 6, "KIP-74's one batch");
    assert_eq!(log.read(0, usize::MAX, 7).unwrap().next_offset(), 8, "stopped by the upper bound");
    assert_eq!(log.read(0, usize::MAX, 20).unwrap().next_offset(), 20, "the log end");
    assert_eq!(log.read(20, usize::MAX, 20).unwrap().next_offset(), 20);
}

#[test]
fn segments_roll_by_bytes_and_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let one = batch(0, 1, 100, 0).len() as u64;
    let cfg = LogConfig { segment_bytes: one * 3, segment_ms: 1000, ..config() };
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    fill(&mut log, 3, 1, 100, 0);
    assert_eq!(log.segment_count(), 1, "three batches fit exactly");
    fill(&mut log, 1, 1, 100, 0);
    assert_eq!(log.segment_count(), 2);
    assert_eq!(segment_files(dir.path(), "log")[1].file_name().unwrap(), "00000000000000000003.log");
    // The rolled segment's indexes are on disk.
    assert_eq!(segment_files(dir.path(), "timeindex").len(), 1);
    // A batch larger than segment.bytes still goes in, alone.
    let big = batch(4, 10, 100, 0);
    append(&mut log, &[big], 0);
    assert_eq!(log.segment_count(), 3);

    // By age: the active segment (rolled at now 0) is older than segment.ms at 1001.
    append(&mut log, &[batch(14, 1, 10, 0)], 1000);
    assert_eq!(log.segment_count(), 4, "a full segment rolls");
    append(&mut log, &[batch(15, 1, 10, 0)], 1000);
    assert_eq!(log.segment_count(), 4);
    append(&mut log, &[batch(16, 1, 10, 0)], 2001);
    assert_eq!(log.segment_count(), 5);
    assert_every_offset_reads_back(&log);
}

#[test]
fn index_lookups_find_every_batch_across_many_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_bytes: 4000, index_interval_bytes: 300, ..config() };
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    for i in 0..200 {
        let records = 1 + (i % 5);
        let first = log.log_end_offset();
        append(&mut log, &[batch(first, records, 20 + i % 70, i as i64)], 0);
    }
    assert!(log.segment_count() > 10);
    let end = log.log_end_offset();
    for offset in 0..end {
        let bytes = log.read(offset, 1, end).unwrap().read().unwrap();
        let records = decode(&bytes);
        assert!(records[0].offset <= offset && offset <= records.last().unwrap().offset, "offset {offset}");
    }
    assert_every_offset_reads_back(&log);
    let headers = log.batch_headers_from(0).unwrap();
    assert_eq!(headers.len(), 200);
    assert!(headers.windows(2).all(|w| w[0].last_offset() + 1 == w[1].base_offset));
    assert_eq!(log.batch_headers_from(end - 1).unwrap().len(), 1);
    assert!(log.batch_headers_from(end).unwrap().is_empty());
}

#[test]
fn reopen_after_close_keeps_offsets_and_uses_the_persisted_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_bytes: 3000, index_interval_bytes: 100, ..config() };
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    fill(&mut log, 50, 3, 50, 1000);
    let end = log.log_end_offset();
    let segments = log.segment_count();
    log.close().unwrap();
    assert_eq!(segment_files(dir.path(), "index").len(), segments);

    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.recovery_point(), end);
    assert_eq!(log.segment_count(), segments);
    // The active segment's indexes are removed: they go stale with the next append.
    assert_eq!(segment_files(dir.path(), "index").len(), segments - 1);
    assert_every_offset_reads_back(&log);
    fill(&mut log, 5, 3, 50, 1000);
    assert_eq!(log.log_end_offset(), end + 15);
    drop(log);
    let log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!(log.log_end_offset(), end + 15);
    assert_every_offset_reads_back(&log);
}

#[test]
fn corrupt_persisted_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_bytes: 2000, index_interval_bytes: 100, ..config() };
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    fill(&mut log, 30, 2, 50, 1000);
    let end = log.log_end_offset();
    log.close().unwrap();
    for path in segment_files(dir.path(), "index") {
        fs::write(path, [0u8; 16]).unwrap();
    }
    for path in segment_files(dir.path(), "timeindex").into_iter().step_by(2) {
        fs::write(path, [7u8; 5]).unwrap();
    }
    let log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!(log.log_end_offset(), end);
    assert_every_offset_reads_back(&log);
    assert_eq!(log.max_timestamp_offset().unwrap(), Some((1, 1001)));
    // The rebuilt indexes of closed segments were written back, so they are trusted next time.
    assert!(log.segments[..log.segments.len() - 1].iter().all(|s| !s.indexes_from_disk));
    drop(log);
    let log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert!(log.segments[..log.segments.len() - 1].iter().all(|s| s.indexes_from_disk));
    assert_every_offset_reads_back(&log);
    assert_eq!(log.max_timestamp_offset().unwrap(), Some((1, 1001)));
}

#[test]
#[ignore = "timing, run by hand"]
fn append_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path().to_path_buf(), LogConfig::default(), 0).unwrap();
    let one = batch(0, 160, 100, 0);
    let headers = validate_batches(&one).unwrap();
    let started = std::time::Instant::now();
    for _ in 0..20_000 {
        log.append(&one, &headers, 0, 0).unwrap();
    }
    let elapsed = started.elapsed();
    let records = 20_000.0 * 160.0;
    println!(
        "{} batches of {} bytes: {:?}, {:.0} records/s",
        20_000,
        one.len(),
        elapsed,
        records / elapsed.as_secs_f64()
    );
}

#[test]
fn recovery_cuts_a_partial_batch_at_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path().to_path_buf(), config(), 0).unwrap();
    fill(&mut log, 10, 4, 30, 0);
    let size = log.size_bytes();
    drop(log); // a crash: no clean close
    let next = batch(40, 4, 30, 0);
    let segment = &segment_files(dir.path(), "log")[0];
    append_raw(segment, &next[..next.len() / 2]);

    let mut log = Log::open(dir.path().to_path_buf(), config(), 0).unwrap();
    assert_eq!(log.log_end_offset(), 40);
    assert_eq!(fs::metadata(segment).unwrap().len(), size);
    assert_eq!(log.recovery_point(), 40);
    assert_every_offset_reads_back(&log);
    // Offsets continue where the intact data ends.
    assert_eq!(append(&mut log, &[next], 0).base_offset, 40);
}

#[test]
fn recovery_cuts_a_batch_with_a_flipped_byte_and_everything_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_bytes: 1000, ..config() };
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    fill(&mut log, 20, 2, 40, 0);
    // Flush the first part: recovery trusts it and checks the rest.
    let flushed = log.flush_target();
    flushed.sync().unwrap();
    log.mark_flushed(flushed.end_offset());
    fill(&mut log, 20, 2, 40, 0);
    let segments_before = log.segment_count();
    let victim = log.read(60, 1, 80).unwrap();
    drop(log);
    // Flip a byte in the records of the batch holding offset 60.
    let path = segment_files(dir.path(), "log")
        .into_iter()
        .rfind(|p| p.file_stem().unwrap().to_str().unwrap().parse::<i64>().unwrap() <= 60)
        .unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let at = victim.position() as usize + victim.len() - 3;
    bytes[at] ^= 0x40;
    fs::write(&path, &bytes).unwrap();

    let log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!(log.log_end_offset(), 60, "the corrupt batch and all later ones are gone");
    assert!(log.segment_count() < segments_before);
    assert_eq!(fs::metadata(&path).unwrap().len(), victim.position());
    assert_every_offset_reads_back(&log);
}

#[test]
fn a_corrupt_length_field_is_cut_without_allocating_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path().to_path_buf(), config(), 0).unwrap();
    fill(&mut log, 3, 1, 10, 0);
    let size = log.size_bytes();
    drop(log);
    let mut header = batch(3, 1, 10, 0).to_vec();
    header[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
    let segment = &segment_files(dir.path(), "log")[0];
    append_raw(segment, &header);
    let log = Log::open(dir.path().to_path_buf(), config(), 0).unwrap();
    assert_eq!(log.log_end_offset(), 3);
    assert_eq!(fs::metadata(segment).unwrap().len(), size);
}

#[test]
fn batches_larger_than_the_recovery_buffer_are_checked_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_bytes: 64 << 20, ..config() };
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    let big = batch(0, 1, 9 << 20, 0);
    append(&mut log, std::slice::from_ref(&big), 0);
    append(&mut log, &[batch(1, 1, 9 << 20, 0)], 0);
    drop(log);
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!(log.log_end_offset(), 2, "intact large batches survive");
    // Opening made them durable; the next one is not checkpointed and gets checked.
    append(&mut log, &[batch(2, 1, 9 << 20, 0)], 0);
    drop(log);
    let path = &segment_files(dir.path(), "log")[0];
    let mut bytes = fs::read(path).unwrap();
    let at = 2 * big.len() + (5 << 20);
    bytes[at] ^= 1;
    fs::write(path, &bytes).unwrap();
    let log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(log.size_bytes(), 2 * big.len() as u64);
}

#[test]
fn a_gap_between_segments_drops_the_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_bytes: 500, ..config() };
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    fill(&mut log, 20, 2, 40, 0);
    drop(log);
    let files = segment_files(dir.path(), "log");
    assert!(files.len() >= 4);
    fs::remove_file(&files[2]).unwrap();
    let second_end: i64 = files[2].file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!(log.log_end_offset(), second_end);
    assert_eq!(segment_files(dir.path(), "log").len(), 2);
    assert_every_offset_reads_back(&log);
}

#[test]
fn flushing_advances_the_recovery_point_and_checkpoints_it_per_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_bytes: 600, ..config() };
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!(log.recovery_point(), 0);
    fill(&mut log, 2, 1, 40, 0);
    let target = log.flush_target();
    assert_eq!(target.end_offset(), 2);
    assert!(!target.is_empty());
    target.sync().unwrap();
    log.mark_flushed(target.end_offset());
    assert_eq!(log.recovery_point(), 2);
    // Still in the first segment: the checkpoint is not rewritten for every flush.
    assert_eq!(Checkpoint::read(dir.path()).unwrap().unwrap().recovery_point, 0);

    fill(&mut log, 20, 1, 40, 0);
    assert!(log.segment_count() > 2);
    let target = log.flush_target();
    target.sync().unwrap();
    log.mark_flushed(target.end_offset());
    assert_eq!(log.recovery_point(), 22);
    assert_eq!(Checkpoint::read(dir.path()).unwrap().unwrap().recovery_point, 22);
    assert!(log.flush_target().is_empty());
    // Marking an older flush changes nothing.
    log.mark_flushed(5);
    assert_eq!(log.recovery_point(), 22);
}

#[test]
fn retention_by_time_deletes_old_segments_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_bytes: 500, retention_ms: 1000, ..config() };
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    fill(&mut log, 10, 2, 40, 0); // old records
    let old_end = log.log_end_offset();
    fill(&mut log, 10, 2, 40, 5000); // new records, in later segments
    let segments = log.segment_count();
    let outcome = log.enforce_retention(5500, i64::MAX).unwrap();
    assert!(outcome.deleted_segments > 0 && outcome.deleted_segments < segments);
    assert!(outcome.log_start_offset <= old_end && outcome.log_start_offset > 0);
    assert_eq!(log.log_start_offset(), outcome.log_start_offset);
    assert!(matches!(log.read(0, 100, 40), Err(LogError::OffsetOutOfRange { .. })));
    assert_every_offset_reads_back(&log);
    // Nothing more to delete.
    assert_eq!(log.enforce_retention(5500, i64::MAX).unwrap().deleted_segments, 0);
    let start = log.log_start_offset();
    drop(log);
    let log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (start, 40));
    assert_every_offset_reads_back(&log);
}

#[test]
fn advancing_the_start_offset_deletes_whole_segments_below_it_durably() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_bytes: 500, ..config() };
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    fill(&mut log, 10, 2, 40, 0); // offsets 0..20 over several segments
    let segments = log.segment_count();
    assert!(segments > 2);
    // Mid-segment: the segment holding offset 9 stays, the ones wholly below go.
    assert!(log.advance_start_offset(9).unwrap());
    assert_eq!(log.log_start_offset(), 9);
    assert!(log.segment_count() < segments);
    assert!(matches!(log.read(8, 1000, 20), Err(LogError::OffsetOutOfRange { .. })));
    assert!(!log.read(9, 1000, 20).unwrap().is_empty());
    // Backwards changes nothing; past the log end is refused.
    assert!(!log.advance_start_offset(3).unwrap());
    assert!(matches!(log.advance_start_offset(21), Err(LogError::OffsetOutOfRange { .. })));
    drop(log);
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (9, 20));
    // Up to the log end: the active segment stays, so the log end offset is kept.
    assert!(log.advance_start_offset(20).unwrap());
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (20, 20));
    assert_eq!(append(&mut log, &[batch(20, 1, 10, 1)], 1).base_offset, 20);
    log.close().unwrap();
    let log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (20, 21));
}

#[test]
fn retention_of_everything_keeps_the_log_end_offset() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_bytes: 500, retention_ms: 1000, ..config() };
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    fill(&mut log, 10, 2, 40, 0);
    let outcome = log.enforce_retention(10_000, i64::MAX).unwrap();
    assert_eq!(outcome.log_start_offset, 20);
    assert_eq!((log.log_start_offset(), log.log_end_offset(), log.size_bytes()), (20, 20, 0));
    assert!(log.read(20, 100, 20).unwrap().is_empty());
    drop(log);
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (20, 20));
    assert_eq!(segment_files(dir.path(), "log").len(), 1);
    assert_eq!(append(&mut log, &[batch(20, 1, 10, 20_000)], 20_000).base_offset, 20);
    log.close().unwrap();
    let log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (20, 21));
}

#[test]
fn retention_never_deletes_past_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_bytes: 500, retention_ms: 1000, ..config() };
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    fill(&mut log, 10, 2, 40, 0); // 20 offsets, every segment expired at 10 s
                                  // Followers have only the first 5 offsets: segments reaching past them stay.
    let outcome = log.enforce_retention(10_000, 5).unwrap();
    assert!(outcome.log_start_offset <= 5, "{outcome:?}");
    assert!(log.read(5, 100, 20).is_ok());
    // Once the high watermark covers everything, everything expired may go.
    let outcome = log.enforce_retention(10_000, 20).unwrap();
    assert_eq!(outcome.log_start_offset, 20);
}

#[test]
fn retention_by_bytes_keeps_the_newest_segments() {
    let dir = tempfile::tempdir().unwrap();
    let one = batch(0, 1, 100, 0).len() as u64;
    let cfg = LogConfig { segment_bytes: one * 2, retention_bytes: (one * 5) as i64, ..config() };
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    fill(&mut log, 11, 1, 100, 0); // six segments: five full, one with one batch
    assert_eq!(log.segment_count(), 6);
    let outcome = log.enforce_retention(0, i64::MAX).unwrap();
    assert_eq!(outcome.deleted_segments, 3);
    assert_eq!(outcome.deleted_bytes, one * 6);
    assert_eq!(log.size_bytes(), one * 5);
    assert_eq!(log.log_start_offset(), 6);
    drop(log);
    let log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (6, 11));
    assert_every_offset_reads_back(&log);
}

#[test]
fn a_crash_between_checkpoint_and_unlink_finishes_the_deletion_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_bytes: 500, ..config() };
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    fill(&mut log, 20, 2, 40, 0);
    drop(log);
    let files = segment_files(dir.path(), "log");
    let start: i64 = files[2].file_stem().unwrap().to_str().unwrap().parse().unwrap();
    Checkpoint { recovery_point: 0, log_start_offset: start }.write(dir.path()).unwrap();
    let log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!(log.log_start_offset(), start);
    assert_eq!(segment_files(dir.path(), "log").len(), files.len() - 2);
    assert_every_offset_reads_back(&log);
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_bytes: 800, index_interval_bytes: 100, ..config() };
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!(log.offset_for_timestamp(0).unwrap(), None);
    assert_eq!(log.max_timestamp_offset().unwrap(), None);
    // Batch i holds records at timestamps 1000 * i + 0..4, offsets 4 * i + 0..4.
    for i in 0..30 {
        let first = log.log_end_offset();
        append(&mut log, &[batch(first, 4, 30, 1000 * i)], 0);
    }
    assert!(log.segment_count() > 3);
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 0)));
    assert_eq!(log.offset_for_timestamp(-5).unwrap(), Some((0, 0)));
    assert_eq!(log.offset_for_timestamp(2).unwrap(), Some((2, 2)));
    assert_eq!(log.offset_for_timestamp(4).unwrap(), Some((4, 1000)));
    assert_eq!(log.offset_for_timestamp(17_001).unwrap(), Some((69, 17_001)));
    assert_eq!(log.offset_for_timestamp(17_500).unwrap(), Some((72, 18_000)));
    assert_eq!(log.offset_for_timestamp(29_003).unwrap(), Some((119, 29_003)));
    assert_eq!(log.offset_for_timestamp(29_004).unwrap(), None);
    assert_eq!(log.max_timestamp_offset().unwrap(), Some((119, 29_003)));
    // An older timestamp later in the log does not change the answers.
    append(&mut log, &[batch(120, 1, 30, 5)], 0);
    assert_eq!(log.offset_for_timestamp(5).unwrap(), Some((4, 1000)));
    assert_eq!(log.max_timestamp_offset().unwrap(), Some((119, 29_003)));
    log.close().unwrap();
    let log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!(log.offset_for_timestamp(17_500).unwrap(), Some((72, 18_000)));
    assert_eq!(log.max_timestamp_offset().unwrap(), Some((119, 29_003)));
}

#[test]
fn max_timestamp_offset_points_at_the_first_record_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path().to_path_buf(), config(), 0).unwrap();
    let mut builder = BatchBuilder::new(Compression::Lz4);
    for ts in [10, 50, 20, 50] {
        builder.push(&Record { value: Some(Bytes::from_static(b"v")), timestamp_ms: ts, ..Default::default() });
    }
    append(&mut log, &[batch(0, 2, 10, 5), builder.finish(-1, -1, -1, false).unwrap()], 0);
    assert_eq!(log.max_timestamp_offset().unwrap(), Some((3, 50)));
    assert_eq!(log.offset_for_timestamp(11).unwrap(), Some((3, 50)));
}

#[test]
fn truncate_to_removes_the_tail_and_offsets_continue() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_bytes: 500, ..config() };
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    fill(&mut log, 30, 2, 40, 0);
    let target = log.flush_target();
    target.sync().unwrap();
    log.mark_flushed(target.end_offset());
    log.truncate_to(60).unwrap();
    assert_eq!(log.log_end_offset(), 60, "at the end: nothing to do");
    // Mid-batch: the batch holding offset 31 goes too.
    log.truncate_to(31).unwrap();
    assert_eq!(log.log_end_offset(), 30);
    assert!(log.recovery_point() <= 30);
    assert_every_offset_reads_back(&log);
    fill(&mut log, 3, 2, 40, 0);
    assert_eq!(log.log_end_offset(), 36);
    assert_every_offset_reads_back(&log);
    drop(log);
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!(log.log_end_offset(), 36);
    assert_every_offset_reads_back(&log);
    // At a segment's base offset the whole segment goes.
    let second_base: i64 = segment_files(dir.path(), "log")[1].file_stem().unwrap().to_str().unwrap().parse().unwrap();
    log.truncate_to(second_base).unwrap();
    assert_eq!(log.log_end_offset(), second_base);
    assert_eq!(segment_files(dir.path(), "log").len(), 1);
    log.truncate_to(0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset(), log.size_bytes()), (0, 0, 0));
    fill(&mut log, 2, 1, 10, 0);
    assert_every_offset_reads_back(&log);
}

#[test]
fn truncate_below_the_log_start_restarts_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_bytes: 500, retention_ms: 10, ..config() };
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    fill(&mut log, 10, 2, 40, 0);
    log.enforce_retention(100, i64::MAX).unwrap();
    assert_eq!(log.log_start_offset(), 20);
    log.truncate_to(7).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (7, 7));
    drop(log);
    let log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (7, 7));
}

#[test]
fn read_slices_stay_readable_after_retention_deletes_their_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_bytes: 300, retention_ms: 10, ..config() };
    let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
    fill(&mut log, 6, 2, 40, 0);
    let slice = log.read(0, 1000, 12).unwrap();
    log.enforce_retention(1000, i64::MAX).unwrap();
    assert_eq!(log.log_start_offset(), 12);
    assert_eq!(decode(&slice.read().unwrap())[0].offset, 0);
}

#[test]
fn delete_removes_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topic-0");
    let mut log = Log::open(path.clone(), config(), 0).unwrap();
    fill(&mut log, 2, 1, 10, 0);
    log.delete().unwrap();
    assert!(!path.exists());
}

#[derive(Debug, Clone)]
enum Step {
    Append { batches: Vec<(usize, usize)> },
    Reopen { clean: bool },
    Flush,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => proptest::collection::vec((1usize..12, 0usize..300), 1..4).prop_map(|batches| Step::Append { batches }),
        1 => any::<bool>().prop_map(|clean| Step::Reopen { clean }),
        1 => Just(Step::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_appends_and_reopens_keep_every_offset(
        steps in proptest::collection::vec(step(), 1..40),
        segment_bytes in 200u64..6000,
        index_interval_bytes in 0u32..2000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig { segment_bytes, index_interval_bytes, ..config() };
        let mut log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
        let mut expected_end = 0;
        for step in steps {
            match step {
                Step::Append { batches } => {
                    let mut built = Vec::new();
                    let mut next = log.log_end_offset();
                    for (records, value_bytes) in batches {
                        built.push(batch(next, records, value_bytes, next));
                        next += records as i64;
                    }
                    let info = append(&mut log, &built, 0);
                    prop_assert_eq!(info.base_offset, expected_end);
                    expected_end = info.last_offset + 1;
                }
                Step::Reopen { clean } => {
                    if clean { log.close().unwrap() } else { drop(log) }
                    log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
                }
                Step::Flush => {
                    let target = log.flush_target();
                    target.sync().unwrap();
                    log.mark_flushed(target.end_offset());
                }
            }
            prop_assert_eq!(log.log_end_offset(), expected_end);
        }
        assert_every_offset_reads_back(&log);
        drop(log);
        let log = Log::open(dir.path().to_path_buf(), cfg, 0).unwrap();
        prop_assert_eq!(log.log_end_offset(), expected_end);
        assert_every_offset_reads_back(&log);
        if expected_end > 0 {
            prop_assert_eq!(log.max_timestamp_offset().unwrap(), Some((expected_end - 1, expected_end - 1)));
        }
    }
}

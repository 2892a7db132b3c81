//! Micro-benchmarks of the log's hot paths: what the produce handler does with a request's
//! records (`validate_batches`, then `Log::append`: one copy, offsets stamped, one `pwrite`,
//! no fsync) and what a fetch does (`Log::read` to locate batches, `ReadSlice::read` to
//! `pread` them). The log lives in a temp dir, so figures are page-cache speed, not disk
//! speed. Run with `cargo bench -p spate-broker --bench append`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spate_broker::log::{Log, LogConfig};
use spate_client::protocol::compression::Compression;
use spate_client::protocol::record::{validate_batches, BatchBuilder, Record};

/// 160 records of 100 bytes: about 16 KiB, Kafka's default `batch.size`.
const RECORDS_PER_BATCH: usize = 160;
const VALUE_BYTES: usize = 100;
const NOW_MS: i64 = 1_700_000_000_000;
const LEADER_EPOCH: i32 = 0;
const READ_BYTES: usize = 1 << 20;

fn batch() -> Bytes {
    let value = Bytes::from(vec![b'x'; VALUE_BYTES]);
    let mut builder = BatchBuilder::new(Compression::None);
    for i in 0..RECORDS_PER_BATCH {
        builder.push(&Record { value: Some(value.clone()), timestamp_ms: NOW_MS + i as i64, ..Record::default() });
    }
    builder.finish(-1, -1, -1, false).expect("batch encodes")
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut log = Log::open(dir.path().join("bench-0"), LogConfig::default(), NOW_MS).expect("log opens");
    let records = batch();

    let mut group = c.benchmark_group("log_append");
    group.throughput(Throughput::Bytes(records.len() as u64));
    // The produce handler's work per partition: validate the request's batches, then append.
    // Each sample starts from an empty log, so the temp dir holds one sample's data at most.
    group.bench_function("validate_and_append_16KiB", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let headers = validate_batches(black_box(&records)).expect("valid batch");
                black_box(log.append(&records, &headers, LEADER_EPOCH, NOW_MS).expect("append"));
            }
            let elapsed = start.elapsed();
            log.truncate_to(0).expect("truncate");
            elapsed
        })
    });
    let headers = validate_batches(&records).expect("valid batch");
    group.bench_function("append_16KiB", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(log.append(black_box(&records), &headers, LEADER_EPOCH, NOW_MS).expect("append"));
            }
            let elapsed = start.elapsed();
            log.truncate_to(0).expect("truncate");
            elapsed
        })
    });
    group.finish();
}

fn read(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut log = Log::open(dir.path().join("bench-0"), LogConfig::default(), NOW_MS).expect("log opens");
    let records = batch();
    let headers = validate_batches(&records).expect("valid batch");
    // Twice what one read takes, so a read of 1 MiB never stops at the log end.
    for _ in 0..(2 * READ_BYTES).div_ceil(records.len()) {
        log.append(&records, &headers, LEADER_EPOCH, NOW_MS).expect("append");
    }
    let high_watermark = log.log_end_offset();
    let slice_len = log.read(0, READ_BYTES, high_watermark).expect("read").len();

    let mut group = c.benchmark_group("log_read");
    group.throughput(Throughput::Bytes(slice_len as u64));
    group.bench_function("read_1MiB", |b| {
        b.iter(|| {
            let slice = log.read(black_box(0), READ_BYTES, high_watermark).expect("read");
            slice.read().expect("pread")
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = append, read
}
criterion_main!(benches);

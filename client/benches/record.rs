//! Micro-benchmarks of the record batch codec on the produce and fetch paths: the producer's
//! `BatchBuilder`, the broker's `validate_batches` (run on every produce request) and the
//! consumer's `decode_records`. Run with `cargo bench -p spate-client --bench record`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use spate_client::protocol::compression::Compression;
use spate_client::protocol::record::{decode_records, validate_batches, BatchBuilder, Record};

/// 160 records of 100 bytes: about 16 KiB, Kafka's default `batch.size`.
const RECORDS_PER_BATCH: usize = 160;
const VALUE_BYTES: usize = 100;
const TIMESTAMP_MS: i64 = 1_700_000_000_000;

/// Values of pseudo-random bytes from a fixed seed, so lz4 does real work and every run
/// measures the same input.
fn records() -> Vec<Record> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..RECORDS_PER_BATCH)
        .map(|i| {
            let value: Vec<u8> = (0..VALUE_BYTES)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // Letters only, like typical payloads, so compression has something to find.
                    b'a' + (state % 26) as u8
                })
                .collect();
            Record { value: Some(Bytes::from(value)), timestamp_ms: TIMESTAMP_MS + i as i64, ..Record::default() }
        })
        .collect()
}

fn build_batch(records: &[Record], compression: Compression) -> Bytes {
    let mut builder = BatchBuilder::with_capacity(compression, RECORDS_PER_BATCH * (VALUE_BYTES + 16));
    for record in records {
        builder.push(record);
    }
    builder.finish(-1, -1, -1, false).expect("batch encodes")
}

fn batch_builder(c: &mut Criterion) {
    let records = records();
    let mut group = c.benchmark_group("batch_builder");
    group.throughput(Throughput::Elements(RECORDS_PER_BATCH as u64));
    for (name, compression) in [("none", Compression::None), ("lz4", Compression::Lz4)] {
        group.bench_function(format!("push_finish_160x100B_{name}"), |b| {
            b.iter(|| build_batch(black_box(&records), compression))
        });
    }
    group.finish();
}

fn validate(c: &mut Criterion) {
    let batch = build_batch(&records(), Compression::None);
    // 1 MiB of produce data: as many 16 KiB batches as fit, back to back as in one request.
    let batches_per_mib = (1 << 20) / batch.len();
    let mib: Vec<u8> = batch.iter().copied().cycle().take(batch.len() * batches_per_mib).collect();
    assert_eq!(validate_batches(&mib).expect("valid batches").len(), batches_per_mib);

    let mut group = c.benchmark_group("validate_batches");
    for (name, bytes) in [("16KiB", &batch[..]), ("1MiB", &mib[..])] {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(name, |b| b.iter(|| validate_batches(black_box(bytes)).expect("valid batches")));
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let batch = build_batch(&records(), Compression::None);
    let mut group = c.benchmark_group("decode_records");
    group.throughput(Throughput::Elements(RECORDS_PER_BATCH as u64));
    group.bench_function("16KiB_none", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(RECORDS_PER_BATCH),
            |out| decode_records(black_box(&batch), 1 << 20, out).expect("batch decodes"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = batch_builder, validate, decode
}
criterion_main!(benches);

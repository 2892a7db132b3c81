//! How long a transactional partition takes to open, three ways: after a crash (the flusher had
//! synced everything; recovery scans the active segment and replays it from its roll snapshot),
//! after a clean shutdown (nothing replayed), and with its producer-state snapshots deleted
//! (what every open did before snapshots and `.txnindex` files: read every batch header of the
//! log to find the open and aborted transactions).
//!
//! ```text
//! cargo run --release -p spate-broker --example txn_recovery -- [segments] [segment_mib] [cold]
//! ```
//!
//! Transactions of 100 records of 100 bytes from 50 producers, one in ten aborted, and one
//! transaction left open from the first offset (so the LSO stays at 0 and the open transaction
//! must be found). Files are in the page cache (the figures are CPU and syscalls), unless `cold`
//! is given: then the page cache is dropped before each open (`/proc/sys/vm/drop_caches`, needs
//! root), so recovery reads from the disk as after a power loss or on a fresh boot.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use spate_broker::config::{BrokerConfig, FlushMode};
use spate_broker::log::LogConfig;
use spate_broker::log_dir::LogDir;
use spate_broker::partition::{Partition, TopicPartition};
use spate_client::protocol::compression::Compression;
use spate_client::protocol::record::{validate_batches, BatchBuilder, Record};

const RECORDS_PER_TXN: i32 = 100;
const PRODUCERS: i64 = 50;

/// Writes dirty pages back and drops the page cache; whether it could.
fn drop_caches() -> bool {
    let synced = std::process::Command::new("sync").status().is_ok_and(|s| s.success());
    synced && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn open(dir: &std::path::Path, config: LogConfig, cold: bool) -> (Arc<Partition>, f64) {
    if cold && !drop_caches() {
        eprintln!("could not drop the page cache (not root?): this open reads cached files");
    }
    let broker = BrokerConfig { log_flush_mode: FlushMode::PageCache, ..BrokerConfig::default() };
    let tp = TopicPartition { topic: "t".into(), partition: 0 };
    let started = Instant::now();
    let p = Partition::open(dir.join("t-0"), tp, config, 8 << 20, &broker, Arc::new(LogDir::new(dir)), 0)
        .expect("open the partition");
    (Arc::new(p), started.elapsed().as_secs_f64() * 1e3)
}

fn batch(producer_id: i64, sequence: i32, records: i32, value: &Bytes) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    for _ in 0..records {
        b.push(&Record { key: None, value: Some(value.clone()), headers: Vec::new(), timestamp_ms: 1 });
    }
    b.finish(producer_id, 0, sequence, true).expect("an uncompressed batch encodes")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let segments: usize = args.next().map_or(200, |a| a.parse().expect("segments: a number"));
    let segment_mib: u64 = args.next().map_or(1, |a| a.parse().expect("segment_mib: a number"));
    let cold = args.next().is_some_and(|a| a == "cold");
    let config =
        LogConfig { segment_bytes: segment_mib << 20, retention_ms: -1, retention_bytes: -1, ..LogConfig::default() };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (p, _) = open(dir.path(), config, false);
    let value = Bytes::from(vec![b'x'; 100]);
    let append = |producer_id: i64, sequence: i32, records: i32| {
        let b = batch(producer_id, sequence, records, &value);
        p.append(&b, &validate_batches(&b).expect("a valid batch"), 1).expect("append");
    };
    // The transaction that stays open, from offset 0.
    append(PRODUCERS, 0, 1);
    let mut sequences = vec![0i32; PRODUCERS as usize];
    let (mut transactions, mut aborted, mut batches) = (0u64, 0u64, 1u64);
    let target_bytes = segments as u64 * (segment_mib << 20);
    while p.size_bytes() < target_bytes {
        let producer_id = (transactions % PRODUCERS as u64) as i64;
        let sequence = &mut sequences[producer_id as usize];
        append(producer_id, *sequence, RECORDS_PER_TXN);
        *sequence += RECORDS_PER_TXN;
        let commit = transactions % 10 != 9;
        p.append_marker(producer_id, 0, commit, 0, 1).expect("marker");
        aborted += u64::from(!commit);
        transactions += 1;
        batches += 2;
    }
    p.flush().expect("flush");
    let lso = p.last_stable_offset();
    let aborted_list = p.aborted_transactions(0, i64::MAX).len();
    let log_end = p.high_watermark();
    let size_mib = p.size_bytes() as f64 / (1 << 20) as f64;
    drop(p);
    println!(
        "log: {size_mib:.0} MiB in {segments} segments of {segment_mib} MiB, {batches} batches, {transactions} \
         transactions ({aborted} aborted), one open from offset 0; page cache {}",
        if cold { "dropped before each open" } else { "warm" }
    );

    let check = |p: &Partition, case: &str, ms: f64| {
        assert_eq!(p.last_stable_offset(), lso, "{case}: the open transaction is found");
        assert_eq!(p.aborted_transactions(0, i64::MAX).len(), aborted_list, "{case}: every aborted one is found");
        println!("{case:<34} open {ms:>8.1} ms   replayed from offset {:>10} of {log_end}", p.restored_from());
    };
    let (p, ms) = open(dir.path(), config, cold);
    check(&p, "after a crash (flushed)", ms);
    p.close().expect("close");
    drop(p);
    let (p, ms) = open(dir.path(), config, cold);
    check(&p, "after a clean shutdown", ms);
    drop(p);
    let part_dir = dir.path().join("t-0");
    for entry in std::fs::read_dir(&part_dir).expect("list the partition") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|e| e == "snapshot") {
            std::fs::remove_file(&path).expect("remove a snapshot");
        }
    }
    let (p, ms) = open(dir.path(), config, cold);
    check(&p, "without snapshots (full replay)", ms);
}

//! State store micro-benchmark: the workload the runtime puts on a store, through the
//! `spate_streams::state` API, for the persistent (redb) and in-memory kinds.
//!
//! Key-value: 1M updates over 100k keys (keys 8–32 bytes, values 8–200 bytes) in write batches of
//! 5,000 (one per record-cache flush), a durable `flush` every 20 batches (as before a
//! checkpoint); then 200k point gets that hit, 200k that miss, and 10k ordered scans of 100
//! entries. Window: 1M puts of 10k keys over 10 minutes of window starts (retention 5 min,
//! segments of 1 min, so segments are dropped as it goes; a flush every 20 batches), then 20k
//! `fetch_range` of one key over
//! 2 minutes. Prints throughputs, the store's size on disk, the process's peak RSS and its thread
//! count.
//!
//! `cargo run --release -p spate-streams --example store_bench`

use std::error::Error;
use std::path::Path;
use std::time::Instant;

use spate_streams::state::{open_key_value, open_window, StoreKind};

const KEYS: u64 = 100_000;
const UPDATES: u64 = 1_000_000;
const BATCH: u64 = 5_000;
const FLUSH_EVERY_BATCHES: u64 = 20;
const GETS: u64 = 200_000;
const SCANS: u64 = 10_000;
const SCAN_LEN: usize = 100;
const WINDOW_KEYS: u64 = 10_000;
const WINDOW_FETCHES: u64 = 20_000;

/// xorshift64: a fixed sequence, so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// 8 to 32 bytes: the id big-endian, then a tail whose length depends on the id.
fn key(i: u64) -> Vec<u8> {
    let mut k = i.to_be_bytes().to_vec();
    k.resize(8 + (i.wrapping_mul(2_654_435_761) % 25) as usize, b'k');
    k
}

fn value(rng: &mut Rng) -> Vec<u8> {
    vec![(rng.next() & 0xFF) as u8; 8 + (rng.next() % 193) as usize]
}

fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

fn disk_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn per_s(n: u64, since: Instant) -> f64 {
    n as f64 / since.elapsed().as_secs_f64()
}

fn key_value(kind: StoreKind, dir: &Path) -> Result<(), Box<dyn Error>> {
    let threads_before = threads();
    let store = open_key_value(kind, "bench-kv", dir)?;
    let threads_open = threads() - threads_before;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut batch = Vec::with_capacity(BATCH as usize);
    let mut done = 0;
    let mut flush_s = 0.0;
    let mut flushes = 0;
    let start = Instant::now();
    while done < UPDATES {
        batch.clear();
        for _ in 0..BATCH {
            // Every key once, then random updates of the same keys.
            let i = if done < KEYS { done } else { rng.next() % KEYS };
            batch.push((key(i), Some(value(&mut rng))));
            done += 1;
        }
        store.write_batch(&batch)?;
        if (done / BATCH).is_multiple_of(FLUSH_EVERY_BATCHES) {
            let f = Instant::now();
            store.flush()?;
            flush_s += f.elapsed().as_secs_f64();
            flushes += 1;
        }
    }
    let upserts = per_s(UPDATES, start);
    let start = Instant::now();
    for _ in 0..GETS {
        if store.get(&key(rng.next() % KEYS))?.is_none() {
            return Err("a written key is missing".into());
        }
    }
    let hits = per_s(GETS, start);
    let start = Instant::now();
    for _ in 0..GETS {
        // A written key plus one byte: never written.
        let k = [key(rng.next() % KEYS), vec![0xFF]].concat();
        if store.get(&k)?.is_some() {
            return Err("an unwritten key is present".into());
        }
    }
    let misses = per_s(GETS, start);
    let start = Instant::now();
    let mut bytes = 0;
    for _ in 0..SCANS {
        let mut n = 0;
        store.range(Some(&key(rng.next() % KEYS)), None, &mut |k, v| {
            bytes += k.len() + v.len();
            n += 1;
            n < SCAN_LEN
        })?;
    }
    std::hint::black_box(bytes);
    let scans = per_s(SCANS * SCAN_LEN as u64, start);
    store.flush()?;
    println!(
        "{kind:?} key-value: upsert {upserts:.0}/s (incl. {flushes} flushes, {:.1} ms each) | get hit {hits:.0}/s | \
         get miss {misses:.0}/s | scan {scans:.0} entries/s | {} entries, {:.1} MiB on disk | +{threads_open} threads per open store",
        flush_s * 1000.0 / f64::from(flushes),
        store.approximate_num_entries()?,
        disk_bytes(dir) as f64 / f64::from(1 << 20),
    );
    Ok(())
}

fn window(kind: StoreKind, dir: &Path) -> Result<(), Box<dyn Error>> {
    const MINUTE_MS: i64 = 60_000;
    let store = open_window(kind, "bench-window", dir, 5 * MINUTE_MS, MINUTE_MS)?;
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut batch = Vec::with_capacity(BATCH as usize);
    let start = Instant::now();
    for b in 0..UPDATES / BATCH {
        batch.clear();
        // Stream time moves 3 s per batch: 10 minutes over the run, with some disorder.
        let base_ms = b as i64 * 3_000;
        for _ in 0..BATCH {
            let t = base_ms - (rng.next() % 10_000) as i64;
            batch.push((key(rng.next() % WINDOW_KEYS), t - t.rem_euclid(1_000), Some(value(&mut rng))));
        }
        store.write_batch(&batch)?;
        if (b + 1).is_multiple_of(FLUSH_EVERY_BATCHES) {
            store.flush()?;
        }
    }
    store.flush()?;
    let puts = per_s(UPDATES, start);
    let now_ms = (UPDATES / BATCH) as i64 * 3_000;
    let start = Instant::now();
    let mut found = 0u64;
    for _ in 0..WINDOW_FETCHES {
        store.fetch_range(&key(rng.next() % WINDOW_KEYS), now_ms - 2 * MINUTE_MS, now_ms, &mut |_, _| {
            found += 1;
            true
        })?;
    }
    println!(
        "{kind:?} window: put {puts:.0}/s ({} puts skipped as expired) | fetch_range {:.0}/s ({:.1} entries each) | {:.1} MiB on disk",
        store.expired_puts_skipped(),
        per_s(WINDOW_FETCHES, start),
        found as f64 / WINDOW_FETCHES as f64,
        disk_bytes(dir) as f64 / f64::from(1 << 20),
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    // Persistent first, so the first peak RSS is the persistent stores' alone.
    for kind in [StoreKind::Persistent, StoreKind::InMemory] {
        key_value(kind, &dir.path().join(format!("{kind:?}-kv")))?;
        window(kind, &dir.path().join(format!("{kind:?}-window")))?;
        println!("peak RSS of the process so far: {} MiB", proc_status_kib("VmHWM:") / 1024);
    }
    Ok(())
}

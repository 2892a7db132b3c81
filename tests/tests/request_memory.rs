//! `queued.max.request.bytes`: many clients that each announce a large request and then stall
//! cannot make the broker hold more request memory than the pool, and once they go away the
//! broker serves everyone again.
#![cfg(target_os = "linux")]

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use spate_e2e::{assert_serves, TestBroker};

const MIB: usize = 1 << 20;
/// The request memory pool of the broker under test, and its largest request.
const POOL_BYTES: usize = 8 * MIB;
/// Stalled clients; each has sent `SENT_BYTES` of a frame announced as `POOL_BYTES`.
const STALLED_CLIENTS: usize = 32;
const SENT_BYTES: usize = 7 * MIB;
/// Without a pool the broker would hold `STALLED_CLIENTS * SENT_BYTES` (224 MiB) of partial
/// requests; with it, about one pool. The bound sits far from both.
const RSS_GROWTH_MAX_BYTES: u64 = 96 * MIB as u64;

/// The broker's process id, found by the data directory on its command line (the helper does
/// not hand out its child).
fn broker_pid(broker: &TestBroker) -> u32 {
    let needle = broker.data_dir.path().to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().any(|a| a == "broker") && args.iter().any(|a| a.starts_with(&needle)) {
            return pid;
        }
    }
    panic!("no broker process with {needle} on its command line");
}

/// Resident set size of a process, from `/proc/<pid>/status`.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/<pid>/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Connects, announces a `POOL_BYTES` frame and sends `SENT_BYTES` of it, then stalls. A write
/// the broker does not read (it has stopped reading this connection) gives up after a while;
/// the connection stays open either way.
fn stalled_client(broker: &TestBroker) -> TcpStream {
    let mut stream = TcpStream::connect(broker.addr).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut bytes = Vec::with_capacity(4 + SENT_BYTES);
    bytes.extend_from_slice(&(POOL_BYTES as i32).to_be_bytes());
    bytes.resize(4 + SENT_BYTES, 0xab);
    let _ = stream.write_all(&bytes);
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_large_requests_hold_at_most_the_pool_and_release_it() {
    let pool = POOL_BYTES.to_string();
    let broker = TestBroker::start(&[
        "--set",
        &format!("queued.max.request.bytes={pool}"),
        "--set",
        &format!("socket.request.max.bytes={pool}"),
    ])
    .unwrap();
    // Warm up (topic creation, a producer, a consumer) so the baseline includes what serving costs.
    assert_serves(&broker, "before", 50).await;
    let pid = broker_pid(&broker);
    let baseline = rss_bytes(pid);

    let stalled = tokio::task::block_in_place(|| {
        let stalled: Vec<TcpStream> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..STALLED_CLIENTS).map(|_| s.spawn(|| stalled_client(&broker))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Give the broker time to take in whatever it is going to read, watching its peak.
        let mut peak = 0;
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            peak = peak.max(rss_bytes(pid));
            std::thread::sleep(Duration::from_millis(100));
        }
        let growth = peak.saturating_sub(baseline);
        assert!(
            growth < RSS_GROWTH_MAX_BYTES,
            "{STALLED_CLIENTS} stalled requests grew the broker by {} MiB (pool {} MiB, bound {} MiB)",
            growth / MIB as u64,
            POOL_BYTES / MIB,
            RSS_GROWTH_MAX_BYTES / MIB as u64
        );
        stalled
    });

    // The stalled clients go away: their memory is released and nothing stays blocked behind it.
    drop(stalled);
    assert_serves(&broker, "after", 50).await;
}

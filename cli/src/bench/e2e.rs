//! `spate bench e2e`: end-to-end latency at a fixed rate, a producer and a consumer in one
//! process.
//!
//! Record `i` is due at `start + i / rate`. It is sent when due, or at once when the producer has
//! fallen behind, never skipped; latency is measured from the *scheduled* instant, so a stall
//! delays every record behind it and shows in the percentiles instead of being hidden
//! (coordinated omission). Each value starts with its scheduled instant as 8 big-endian bytes of
//! nanoseconds since the bench's own monotonic origin, which the consumer reads back.
//!
//! Pacing runs on a blocking-pool thread that sleeps with `std::thread::sleep` rather than on a
//! tokio timer: tokio's timer wheel ticks in whole milliseconds, which at 5,000 msgs/s (one
//! record every 200 µs) would add up to a millisecond of the bench's own delay to every record.
//! A thread sleep wakes within the kernel's timer slack (about 50 µs) and costs one wake-up per
//! record, which keeps CPU use low next to a broker on the same cores.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use serde::Serialize;
use spate_client::admin::AdminConfig;
use spate_client::{
    Admin, AutoOffsetReset, Consumer, ConsumerConfig, DeliveryFuture, Producer, ProducerConfig, ProducerRecord,
    TopicPartition,
};

use super::{broker_rss, ensure_topic, payload, print_rss, spawn_ticker, write_json, LATENCY_US_MAX};
use crate::common::{parse_acks, peak_rss_bytes, per_sec, print_out, progress_bar, BootstrapArgs};

/// Bytes at the start of every value holding its scheduled send instant.
const STAMP_BYTES: usize = 8;

#[derive(clap::Args, Debug)]
pub struct BenchE2eArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// Topic to write and read (created with --partitions if missing).
    #[arg(long, default_value = "spate-bench-e2e")]
    pub topic: String,
    /// Records per second the producer's schedule holds.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Seconds measured after the warm-up (ignored with --records).
    #[arg(long = "duration-s", default_value_t = 10)]
    pub duration_s: u64,
    /// Records measured after the warm-up, instead of --duration-s.
    #[arg(long)]
    pub records: Option<u64>,
    /// Seconds sent at the same rate before measuring, excluded from the figures.
    #[arg(long = "warmup-s", default_value_t = 1)]
    pub warmup_s: u64,
    /// Value size in bytes (at least 8: the scheduled send instant, then letters).
    #[arg(long = "record-size", default_value_t = 100)]
    pub record_size: usize,
    /// Partitions of the topic when it has to be created.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Acknowledgements: 0, 1 or all.
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    pub acks: i16,
    /// `linger.ms` of the producer (0: send each record as soon as it is due).
    #[arg(long = "linger-ms", default_value_t = 0)]
    pub linger_ms: u64,
    /// `fetch.max.wait.ms` of the consumer (the broker answers a fetch as soon as a record
    /// arrives; this bounds an empty fetch).
    #[arg(long = "fetch-max-wait-ms", default_value_t = 10)]
    pub fetch_max_wait_ms: u64,
    /// Give up on records not consumed this long after the last one was acknowledged.
    #[arg(long = "timeout-ms", default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Also report the peak RSS (VmHWM) of this process id, the broker's on this machine.
    #[arg(long = "broker-pid")]
    pub broker_pid: Option<u32>,
    /// Write the figures to this file as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// The broker's data directory (or any directory on its disk): before the run, time 2,000
    /// appends of 4 KiB there, each followed by fdatasync, and print the latencies as multiples
    /// of that floor.
    #[arg(long = "fsync-probe-dir")]
    pub fsync_probe_dir: Option<std::path::PathBuf>,
}

/// Writes timed by `--fsync-probe-dir`.
const FSYNC_PROBE_SAMPLES: u64 = 2_000;
/// Bytes of each probe write: a page, what a small acks=all batch costs the disk.
const FSYNC_PROBE_BYTES: usize = 4096;

/// Percentiles of one latency histogram, in milliseconds.
#[derive(Debug, Serialize)]
struct LatencyFigures {
    samples: u64,
    ms_p50: f64,
    ms_p90: f64,
    ms_p99: f64,
    ms_p999: f64,
    ms_max: f64,
    ms_mean: f64,
}

impl LatencyFigures {
    fn of(us: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        LatencyFigures {
            samples: us.len(),
            ms_p50: ms(us.value_at_quantile(0.50)),
            ms_p90: ms(us.value_at_quantile(0.90)),
            ms_p99: ms(us.value_at_quantile(0.99)),
            ms_p999: ms(us.value_at_quantile(0.999)),
            ms_max: ms(us.max()),
            ms_mean: us.mean() / 1000.0,
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms ({} samples)",
            self.ms_p50, self.ms_p90, self.ms_p99, self.ms_p999, self.ms_max, self.samples
        )
    }
}

#[derive(Debug, Serialize)]
struct E2eFigures {
    topic: String,
    partitions: usize,
    record_size: usize,
    acks: i16,
    linger_ms: u64,
    target_msgs_per_sec: u64,
    warmup_s: u64,
    /// Records sent after the warm-up.
    records: u64,
    /// Of those, records consumed.
    received: u64,
    /// Of those, records whose send failed.
    failed: u64,
    /// From the first measured record's scheduled instant to the last one's actual send.
    elapsed_ms: f64,
    achieved_msgs_per_sec: f64,
    /// Scheduled send instant to the consumer's poll returning the record.
    e2e_latency: LatencyFigures,
    /// Scheduled send instant to the producer's acknowledgement.
    ack_latency: LatencyFigures,
    latency_measured: &'static str,
    peak_rss_bytes: u64,
    broker_peak_rss_bytes: Option<u64>,
    /// 4 KiB append + fdatasync in `--fsync-probe-dir`, timed before the run.
    fsync_floor: Option<LatencyFigures>,
    /// End-to-end p50 and p99 over the floor's.
    e2e_over_fsync_p50: Option<f64>,
    e2e_over_fsync_p99: Option<f64>,
    /// Share of this machine's CPU time the hypervisor gave to others while records were sent
    /// (`steal` in /proc/stat): on a VM, a stall of every vCPU at once shows up in every
    /// latency tail and no program can avoid it.
    cpu_steal_percent: Option<f64>,
}

/// The machine's (steal, total) CPU ticks so far, from the first line of /proc/stat; `None`
/// where there is no such file.
fn cpu_ticks() -> Option<(u64, u64)> {
    parse_cpu_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    let fields: Vec<u64> = line.split_whitespace().skip(1).take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let steal = *fields.get(7)?;
    Some((steal, fields.iter().sum()))
}

/// Steal between two [`cpu_ticks`] readings, as a percentage of all ticks.
fn steal_percent(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((steal0, total0), (steal1, total1)) = (before?, after?);
    let total = total1.checked_sub(total0).filter(|t| *t > 0)?;
    Some(steal1.saturating_sub(steal0) as f64 * 100.0 / total as f64)
}

/// Times [`FSYNC_PROBE_SAMPLES`] 4 KiB appends with an fdatasync after each, in a scratch file
/// in `dir` (removed afterwards): the disk's own durable-write latency, the floor under any
/// acks=all figure.
fn probe_fsync(dir: &std::path::Path) -> Result<Histogram<u64>> {
    use std::io::Write;
    let path = dir.join(format!(".spate-fsync-probe-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let page = vec![0x5a_u8; FSYNC_PROBE_BYTES];
        let mut latency = new_histogram()?;
        for _ in 0..FSYNC_PROBE_SAMPLES {
            let start = Instant::now();
            file.write_all(&page)
                .and_then(|()| file.sync_data())
                .with_context(|| format!("writing {}", path.display()))?;
            latency.saturating_record((start.elapsed().as_micros() as u64).clamp(1, LATENCY_US_MAX));
        }
        Ok(latency)
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// The schedule: which records exist and when each is due, in nanoseconds since the bench's
/// origin.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    start_ns: u64,
    rate: u64,
    warmup_records: u64,
    total_records: u64,
}

impl Schedule {
    fn due_ns(&self, index: u64) -> u64 {
        self.start_ns + (u128::from(index) * 1_000_000_000 / u128::from(self.rate)) as u64
    }

    /// Scheduled instants from here on are measured; earlier ones are the warm-up.
    fn measure_from_ns(&self) -> u64 {
        self.due_ns(self.warmup_records)
    }
}

/// The value of a record due at `due_ns`: the stamp, then `padding` from its 9th byte on.
fn stamped_value(due_ns: u64, padding: &[u8]) -> Bytes {
    let mut value = BytesMut::with_capacity(padding.len().max(STAMP_BYTES));
    value.put_u64(due_ns);
    value.extend_from_slice(padding.get(STAMP_BYTES..).unwrap_or_default());
    value.freeze()
}

/// The scheduled instant a value carries, if it is long enough to carry one.
fn read_stamp(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(..STAMP_BYTES)?.try_into().ok()?))
}

/// Microseconds from `from_ns` to `to_ns`, at least 1 (the histogram's lower bound).
fn latency_us(from_ns: u64, to_ns: u64) -> u64 {
    (to_ns.saturating_sub(from_ns) / 1000).clamp(1, LATENCY_US_MAX)
}

fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).context("latency histogram")
}

/// What the acknowledgement tasks saw, for measured records.
struct AckStats {
    latency_us: Histogram<u64>,
    /// All records, warm-up included.
    failed: u64,
    failed_measured: u64,
    first_error: Option<String>,
}

/// Shared between the consumer task and the rest.
struct Shared {
    origin: Instant,
    /// Records the consumer should see before stopping; `u64::MAX` while sends are going on.
    expected: AtomicU64,
    /// Records consumed, warm-up included.
    received: AtomicU64,
    /// Set when the producer is done and every delivery has settled.
    produced: AtomicBool,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

/// Sends every record of `schedule` when it is due, spawning a task per record that times its
/// acknowledgement. Runs on a blocking-pool thread (see the module docs for why).
struct Pacer {
    handle: tokio::runtime::Handle,
    producer: Producer,
    topic: String,
    partitions: i32,
    schedule: Schedule,
    padding: Bytes,
    origin: Instant,
    acks: Arc<Mutex<AckStats>>,
}

/// Returns when the last record was sent, and the acknowledgement tasks.
fn pace(pacer: Pacer) -> Result<(u64, Vec<tokio::task::JoinHandle<()>>)> {
    let Pacer { handle, producer, topic, partitions, schedule, padding, origin, acks } = pacer;
    let mut settles = Vec::with_capacity(schedule.total_records as usize);
    let mut last_send_ns = schedule.start_ns;
    for i in 0..schedule.total_records {
        let due_ns = schedule.due_ns(i);
        let now_ns = origin.elapsed().as_nanos() as u64;
        if due_ns > now_ns {
            std::thread::sleep(Duration::from_nanos(due_ns - now_ns));
        }
        let record =
            ProducerRecord::new(stamped_value(due_ns, &padding)).with_partition((i % partitions as u64) as i32);
        let delivery: DeliveryFuture = handle.block_on(producer.send(&topic, record))?;
        last_send_ns = origin.elapsed().as_nanos() as u64;
        let measured = i >= schedule.warmup_records;
        let acks = acks.clone();
        settles.push(handle.spawn(async move {
            let result = delivery.await;
            let acked_ns = origin.elapsed().as_nanos() as u64;
            let mut stats = acks.lock().expect("ack stats lock");
            match result {
                Ok(_) if measured => stats.latency_us.saturating_record(latency_us(due_ns, acked_ns)),
                Ok(_) => {}
                Err(e) => {
                    stats.failed += 1;
                    stats.failed_measured += u64::from(measured);
                    if stats.first_error.is_none() {
                        stats.first_error = Some(e.to_string());
                    }
                }
            }
        }));
    }
    Ok((last_send_ns, settles))
}

/// Consumes until `expected` records arrived, or nothing arrived for `timeout` after the
/// producer finished; returns the latency of measured records.
async fn consume(
    consumer: Consumer,
    shared: Arc<Shared>,
    measure_from_ns: u64,
    timeout: Duration,
) -> Result<Histogram<u64>> {
    let mut latency = new_histogram()?;
    let mut last_progress = Instant::now();
    loop {
        let received = shared.received.load(Ordering::Relaxed);
        if received >= shared.expected.load(Ordering::Acquire) {
            break;
        }
        if shared.produced.load(Ordering::Acquire) && last_progress.elapsed() > timeout {
            break;
        }
        let records = consumer.poll(Duration::from_millis(100)).await?;
        let received_ns = shared.now_ns();
        if records.is_empty() {
            continue;
        }
        last_progress = Instant::now();
        for r in &records {
            let Some(due_ns) = r.value.as_deref().and_then(read_stamp) else {
                bail!("record at {}-{} offset {} carries no send stamp", r.topic, r.partition, r.offset);
            };
            if due_ns >= measure_from_ns {
                latency.saturating_record(latency_us(due_ns, received_ns));
            }
        }
        shared.received.fetch_add(records.len() as u64, Ordering::Relaxed);
    }
    consumer.close().await?;
    Ok(latency)
}

pub(super) async fn run(args: BenchE2eArgs) -> Result<()> {
    if args.rate == 0 {
        bail!("--rate must be at least 1");
    }
    if args.record_size < STAMP_BYTES {
        bail!("--record-size must be at least {STAMP_BYTES} (the send stamp)");
    }
    let measured = args.records.unwrap_or(args.rate.saturating_mul(args.duration_s));
    if measured == 0 {
        bail!("nothing to measure: --duration-s or --records must be at least 1");
    }
    let warmup_records = args.rate.saturating_mul(args.warmup_s);

    let fsync_floor = match args.fsync_probe_dir.clone() {
        Some(dir) => {
            let histogram =
                tokio::task::spawn_blocking(move || probe_fsync(&dir)).await.context("fsync probe panicked")??;
            Some(LatencyFigures::of(&histogram))
        }
        None => None,
    };

    let servers = args.bootstrap.servers()?;
    let admin = Admin::new(AdminConfig { bootstrap_servers: servers.clone(), ..AdminConfig::default() })
        .await
        .context("connecting to the cluster")?;
    ensure_topic(&admin, &args.topic, args.partitions).await?;
    let described =
        admin.describe_topics(&[args.topic.as_str()]).await.with_context(|| format!("topic {}", args.topic))?;
    let partitions: Vec<TopicPartition> = described
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| TopicPartition::new(t.name.clone(), p.partition)))
        .collect();
    if partitions.is_empty() {
        bail!("topic {} has no partitions", args.topic);
    }

    let consumer = Consumer::new(ConsumerConfig {
        bootstrap_servers: servers.clone(),
        client_id: "spate-bench-e2e-consumer".into(),
        auto_offset_reset: AutoOffsetReset::Latest,
        fetch_min_bytes: 1,
        fetch_max_wait_ms: args.fetch_max_wait_ms,
        max_poll_records: 100_000,
        ..ConsumerConfig::default()
    })
    .await
    .context("starting the consumer")?;
    consumer.assign(partitions.clone()).await?;
    consumer.seek_to_end(&[]).await?;
    // Resolve the end offsets now, before anything is sent, so no record is skipped.
    for tp in &partitions {
        consumer.position(tp).await?;
    }
    let producer = Producer::new(ProducerConfig {
        bootstrap_servers: servers,
        client_id: "spate-bench-e2e-producer".into(),
        acks: args.acks,
        linger_ms: args.linger_ms,
        ..ProducerConfig::default()
    })
    .await
    .context("starting the producer")?;

    let shared = Arc::new(Shared {
        origin: Instant::now(),
        expected: AtomicU64::new(u64::MAX),
        received: AtomicU64::new(0),
        produced: AtomicBool::new(false),
    });
    let schedule = Schedule {
        // A moment after now, so the first records are not already late.
        start_ns: shared.now_ns() + 10_000_000,
        rate: args.rate,
        warmup_records,
        total_records: warmup_records.saturating_add(measured),
    };
    let consumer_task = tokio::spawn(consume(
        consumer,
        shared.clone(),
        schedule.measure_from_ns(),
        Duration::from_millis(args.timeout_ms),
    ));

    let done = Arc::new(AtomicBool::new(false));
    let bar = progress_bar(Some(schedule.total_records), "{bar:40} {pos}/{len} records consumed, eta {eta}");
    let ticker = {
        let shared = shared.clone();
        spawn_ticker(bar, move || shared.received.load(Ordering::Relaxed), done.clone())
    };

    let acks = Arc::new(Mutex::new(AckStats {
        latency_us: new_histogram()?,
        failed: 0,
        failed_measured: 0,
        first_error: None,
    }));
    let pacer = Pacer {
        handle: tokio::runtime::Handle::current(),
        producer: producer.clone(),
        topic: args.topic.clone(),
        partitions: partitions.len() as i32,
        schedule,
        padding: payload(args.record_size, 0xe2e),
        origin: shared.origin,
        acks: acks.clone(),
    };
    let ticks_before = cpu_ticks();
    let paced = tokio::task::spawn_blocking(move || pace(pacer)).await.context("pacing thread panicked");
    let cpu_steal_percent = steal_percent(ticks_before, cpu_ticks());
    let sent_all = match paced {
        Ok(Ok((last_send_ns, settles))) => {
            for settle in settles {
                settle.await.context("acknowledgement task panicked")?;
            }
            Ok(last_send_ns)
        }
        Ok(Err(e)) | Err(e) => Err(e),
    };
    let (failed_all, failed, first_error, ack_latency) = {
        let stats = acks.lock().expect("ack stats lock");
        (stats.failed, stats.failed_measured, stats.first_error.clone(), LatencyFigures::of(&stats.latency_us))
    };
    let expected = if sent_all.is_ok() { schedule.total_records - failed_all } else { 0 };
    shared.expected.store(expected, Ordering::Release);
    shared.produced.store(true, Ordering::Release);
    let consumed = consumer_task.await.context("consumer task panicked")?;
    done.store(true, Ordering::Relaxed);
    let _ = ticker.await;
    let _ = producer.close().await;
    let last_send_ns = sent_all?;
    let e2e_latency = LatencyFigures::of(&consumed?);

    let elapsed = Duration::from_nanos(last_send_ns.saturating_sub(schedule.measure_from_ns()));
    let ratio = |e2e: f64, floor: f64| (floor > 0.0).then(|| e2e / floor);
    let e2e_over_fsync_p50 = fsync_floor.as_ref().and_then(|f| ratio(e2e_latency.ms_p50, f.ms_p50));
    let e2e_over_fsync_p99 = fsync_floor.as_ref().and_then(|f| ratio(e2e_latency.ms_p99, f.ms_p99));
    let figures = E2eFigures {
        topic: args.topic.clone(),
        partitions: partitions.len(),
        record_size: args.record_size,
        acks: args.acks,
        linger_ms: args.linger_ms,
        target_msgs_per_sec: args.rate,
        warmup_s: args.warmup_s,
        records: measured,
        received: e2e_latency.samples,
        failed,
        elapsed_ms: elapsed.as_secs_f64() * 1000.0,
        achieved_msgs_per_sec: per_sec(measured, elapsed),
        e2e_latency,
        ack_latency,
        latency_measured: "from each record's scheduled send instant (start + i / rate), so a late send counts",
        peak_rss_bytes: peak_rss_bytes(None)?,
        broker_peak_rss_bytes: broker_rss(args.broker_pid),
        fsync_floor,
        e2e_over_fsync_p50,
        e2e_over_fsync_p99,
        cpu_steal_percent,
    };
    print_out(&format!(
        "{} records at {} msgs/s scheduled ({:.1} achieved), acks {}, {} received\n\
         end-to-end (scheduled send to consumed): {}\n\
         produce ack (scheduled send to acknowledged): {}\n",
        figures.records,
        figures.target_msgs_per_sec,
        figures.achieved_msgs_per_sec,
        if figures.acks == -1 { "all".to_string() } else { figures.acks.to_string() },
        figures.received,
        figures.e2e_latency.line(),
        figures.ack_latency.line(),
    ));
    if let (Some(floor), Some(p50), Some(p99)) =
        (&figures.fsync_floor, figures.e2e_over_fsync_p50, figures.e2e_over_fsync_p99)
    {
        print_out(&format!(
            "disk floor (4 KiB append + fdatasync): {}\nend-to-end over the floor: p50 {p50:.1}x, p99 {p99:.1}x\n",
            floor.line()
        ));
    }
    if let Some(steal) = figures.cpu_steal_percent {
        print_out(&format!("CPU steal while sending (hypervisor, /proc/stat): {steal:.2}%\n"));
    }
    print_rss(figures.peak_rss_bytes, figures.broker_peak_rss_bytes);
    write_json(&args.json, &figures)?;
    if failed_all > 0 {
        bail!("{failed_all} records failed; first error: {}", first_error.unwrap_or_default());
    }
    let acknowledged = figures.records - figures.failed;
    if figures.received < acknowledged {
        bail!(
            "{} of {} acknowledged measured records were not consumed",
            acknowledged - figures.received,
            acknowledged
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_pads_to_the_record_size() {
        let padding = payload(100, 1);
        let value = stamped_value(0x0102_0304_0506_0708, &padding);
        assert_eq!(value.len(), 100);
        assert_eq!(&value[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&value[8..], &padding[8..]);
        assert_eq!(read_stamp(&value), Some(0x0102_0304_0506_0708));
        assert_eq!(stamped_value(7, &payload(8, 1)).len(), 8);
        assert_eq!(read_stamp(&[1, 2, 3]), None);
    }

    #[test]
    fn schedule_spaces_records_by_the_rate_and_measures_after_the_warmup() {
        let s = Schedule { start_ns: 1_000, rate: 5_000, warmup_records: 5_000, total_records: 10_000 };
        assert_eq!(s.due_ns(0), 1_000);
        assert_eq!(s.due_ns(1), 1_000 + 200_000);
        assert_eq!(s.due_ns(5_000), 1_000 + 1_000_000_000);
        assert_eq!(s.measure_from_ns(), s.due_ns(5_000));
        // A rate that does not divide a second: no drift, record `rate` is due one second in.
        let s = Schedule { start_ns: 0, rate: 3, warmup_records: 0, total_records: 3 };
        assert_eq!((s.due_ns(1), s.due_ns(2), s.due_ns(3)), (333_333_333, 666_666_666, 1_000_000_000));
    }

    #[test]
    fn steal_is_read_from_the_cpu_line() {
        let stat = "cpu  100 5 50 800 10 0 5 30 7 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 1\n";
        assert_eq!(parse_cpu_ticks(stat), Some((30, 1000)));
        assert_eq!(parse_cpu_ticks("cpu  1 2 3\n"), None, "too few fields");
        assert_eq!(parse_cpu_ticks("intr 1\n"), None);
        assert_eq!(steal_percent(Some((30, 1000)), Some((40, 1500))), Some(2.0));
        assert_eq!(steal_percent(Some((30, 1000)), Some((30, 1000))), None, "no time passed");
        assert_eq!(steal_percent(None, Some((30, 1000))), None);
    }

    #[test]
    fn fsync_probe_times_every_write_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let latency = probe_fsync(dir.path()).unwrap();
        assert_eq!(latency.len(), FSYNC_PROBE_SAMPLES);
        assert!(latency.min() >= 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the scratch file is removed");
        assert!(probe_fsync(&dir.path().join("missing")).is_err(), "a missing directory is an error, not a figure");
    }

    #[test]
    fn latency_is_clamped_to_the_histogram_bounds() {
        assert_eq!(latency_us(5_000, 2_000), 1, "a clock step backwards is not negative latency");
        assert_eq!(latency_us(0, 1_500_000), 1_500);
        assert_eq!(latency_us(0, u64::MAX), LATENCY_US_MAX);
    }
}

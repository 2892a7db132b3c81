//! Group commit. Appends mark their partition dirty; one dedicated thread fsyncs every dirty
//! partition, then publishes the new durable offsets. While it syncs, new appends gather, so one
//! fsync covers every batch that arrived during the previous one.
//!
//! A failed fsync is never retried: [`Partition::flush`] takes the log directory offline (see
//! `log_dir`), because a later fsync that succeeds proves nothing about pages the kernel may
//! have dropped. The partitions' waiting `acks=all` produces get KAFKA_STORAGE_ERROR.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tracing::warn;

use crate::partition::Partition;

#[derive(Default)]
struct Queue {
    /// Each dirty partition, with when it became dirty (for the flush-wait metric).
    dirty: HashMap<usize, (Arc<Partition>, Instant)>,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

pub struct Flusher {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Flusher {
    pub fn start() -> Flusher {
        let shared = Arc::new(Shared { queue: Mutex::new(Queue::default()), wake: Condvar::new() });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("spate-flusher".into())
            .spawn(move || run(&worker))
            .expect("spawning the flusher thread at startup");
        Flusher { shared, thread: Mutex::new(Some(thread)) }
    }

    /// Asks for `partition` to be fsynced soon.
    pub fn mark_dirty(&self, partition: &Arc<Partition>) {
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        let key = Arc::as_ptr(partition) as usize;
        if let std::collections::hash_map::Entry::Vacant(entry) = q.dirty.entry(key) {
            entry.insert((partition.clone(), Instant::now()));
            if q.dirty.len() == 1 {
                self.shared.wake.notify_one();
            }
        }
    }

    /// Flushes what is pending and stops the thread.
    pub fn shutdown(&self) {
        {
            let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.shutdown = true;
            self.shared.wake.notify_one();
        }
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// Upper bound on fsyncs in flight at once.
const FLUSH_PARALLELISM: usize = 8;

/// One round's partitions, shared between the flusher thread and its helpers.
#[derive(Default)]
struct Round {
    batch: Vec<Dirty>,
    /// Index of the next partition nobody has taken yet.
    next: usize,
    /// Partitions taken or not yet taken whose fsync has not returned.
    unfinished: usize,
    shutdown: bool,
}

/// Helper threads for rounds with several dirty partitions. They are started the first time a
/// round needs them and kept: spawning threads every round (thousands a second under load)
/// cost more CPU than the fsyncs themselves on a small machine, and the extra runnable threads
/// showed up as scheduling delay in every acknowledgement.
struct Helpers {
    round: Mutex<Round>,
    /// Helpers wait here for a round.
    work: Condvar,
    /// The flusher thread waits here for the round to finish.
    done: Condvar,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Helpers {
    fn new() -> Arc<Helpers> {
        Arc::new(Helpers {
            round: Mutex::new(Round::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            threads: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Round> {
        self.round.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes sure `wanted` helpers run (fewer if the system is out of threads: the flusher
    /// thread's own share then covers the rest).
    fn ensure(self: &Arc<Self>, wanted: usize) {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        while threads.len() < wanted {
            let helpers = self.clone();
            match std::thread::Builder::new().name("spate-fsync".into()).spawn(move || helpers.help()) {
                Ok(t) => threads.push(t),
                Err(err) => {
                    warn!(error = %err, helpers = threads.len(), "could not start another fsync helper");
                    break;
                }
            }
        }
    }

    /// Takes the next partition of the current round, if any is left.
    fn take(round: &mut Round) -> Option<Dirty> {
        let partition = round.batch.get(round.next).cloned()?;
        round.next += 1;
        Some(partition)
    }

    fn finish_one(&self) {
        let mut round = self.lock();
        round.unfinished -= 1;
        if round.unfinished == 0 {
            self.done.notify_one();
        }
    }

    fn help(&self) {
        loop {
            let partition = {
                let mut round = self.lock();
                loop {
                    if round.shutdown {
                        return;
                    }
                    if let Some(p) = Self::take(&mut round) {
                        break p;
                    }
                    round = self.work.wait(round).unwrap_or_else(|e| e.into_inner());
                }
            };
            flush_one(&partition);
            self.finish_one();
        }
    }

    /// Fsyncs every partition of `batch`, with the helpers, and returns when all are done.
    fn run_round(self: &Arc<Self>, batch: Vec<Dirty>) {
        let wanted = batch.len().min(FLUSH_PARALLELISM) - 1;
        self.ensure(wanted);
        {
            let mut round = self.lock();
            round.unfinished = batch.len();
            round.batch = batch;
            round.next = 0;
        }
        for _ in 0..wanted {
            self.work.notify_one();
        }
        loop {
            let partition = Self::take(&mut self.lock());
            let Some(partition) = partition else { break };
            flush_one(&partition);
            self.finish_one();
        }
        let mut round = self.lock();
        while round.unfinished > 0 {
            round = self.done.wait(round).unwrap_or_else(|e| e.into_inner());
        }
        // Drop the partitions now, not at the next round: a deleted partition's files close.
        round.batch.clear();
        round.next = 0;
    }

    fn shutdown(&self) {
        self.lock().shutdown = true;
        self.work.notify_all();
        for t in self.threads.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = t.join();
        }
    }
}

/// A partition to fsync and when it became dirty.
type Dirty = (Arc<Partition>, Instant);

fn flush_one((partition, dirty_since): &Dirty) {
    let started = Instant::now();
    // From the first append not yet flushed to its fsync's start: the time an acks=all answer
    // waits for the round before (a stage of the durable latency, next to the fsync itself).
    crate::metrics::log_flush_wait_time().record(started.saturating_duration_since(*dirty_since).as_secs_f64());
    let result = partition.flush();
    crate::metrics::log_flush_time().record(started.elapsed().as_secs_f64());
    if let Err(err) = result {
        // The log directory is offline now (logged loudly once by `LogDir`).
        warn!(partition = %partition.tp, error = %err, "not flushed");
    }
}

/// Fsyncs every partition of one round. Several dirty partitions are synced concurrently:
/// each fdatasync mostly waits for the device, and one after another they would add up (six
/// partitions, six device round trips) in every acks=all latency.
fn flush_all(helpers: &Arc<Helpers>, batch: Vec<Dirty>) {
    match batch.len() {
        0 => {}
        1 => flush_one(&batch[0]),
        _ => helpers.run_round(batch),
    }
}

fn run(shared: &Shared) {
    let helpers = Helpers::new();
    loop {
        let batch: Vec<Dirty> = {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            while q.dirty.is_empty() && !q.shutdown {
                q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.dirty.is_empty() && q.shutdown {
                break;
            }
            q.dirty.drain().map(|(_, dirty)| dirty).collect()
        };
        flush_all(&helpers, batch);
    }
    helpers.shutdown();
}

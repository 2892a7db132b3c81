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

use tracing::warn;

use crate::partition::Partition;

#[derive(Default)]
struct Queue {
    dirty: HashMap<usize, Arc<Partition>>,
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
        if q.dirty.insert(key, partition.clone()).is_none() && q.dirty.len() == 1 {
            self.shared.wake.notify_one();
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

/// Fsyncs every partition of one round. Several dirty partitions are synced concurrently:
/// each fdatasync mostly waits for the device, and one after another they would add up (six
/// partitions, six device round trips) in every acks=all latency.
fn flush_all(batch: Vec<Arc<Partition>>) {
    let flush_one = |partition: &Arc<Partition>| {
        if let Err(err) = partition.flush() {
            // The log directory is offline now (logged loudly once by `LogDir`).
            warn!(partition = %partition.tp, error = %err, "not flushed");
        }
    };
    if batch.len() == 1 {
        flush_one(&batch[0]);
        return;
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker = || loop {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(partition) = batch.get(i) else { break };
        flush_one(partition);
    };
    std::thread::scope(|scope| {
        for _ in 1..batch.len().min(FLUSH_PARALLELISM) {
            // Out of threads: this thread's own share below still syncs everything.
            if std::thread::Builder::new().name("spate-fsync".into()).spawn_scoped(scope, worker).is_err() {
                break;
            }
        }
        worker();
    });
}

fn run(shared: &Shared) {
    loop {
        let batch: Vec<Arc<Partition>> = {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            while q.dirty.is_empty() && !q.shutdown {
                q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.dirty.is_empty() && q.shutdown {
                return;
            }
            q.dirty.drain().map(|(_, p)| p).collect()
        };
        flush_all(batch);
    }
}
